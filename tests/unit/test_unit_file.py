"""packaging/systemd/chainwatch.service: `systemd-analyze verify` is clean and the hardening the package
promises is there."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "systemd" / "chainwatch.service"


def settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_systemd_analyze_verify_is_clean(tmp_path) -> None:
    """Verified as installed, with ExecStart pointing at a stand-in executable (verify checks it exists)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze missing: scripts/setup.sh installs the systemd package")
    stub = tmp_path / "chainwatch"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    unit = tmp_path / "chainwatch.service"
    unit.write_text(UNIT.read_text().replace("/usr/bin/chainwatch", str(stub)))
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), proc.stdout + proc.stderr


def test_hardening_settings() -> None:
    s = settings()
    want = {
        "Type": "notify",
        "Restart": "always",
        "ProtectSystem": "strict",
        "ProtectHome": "read-only",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "UMask": "0077",
        "StateDirectory": "chainwatch",
        "LogsDirectory": "chainwatch",
    }
    for key, value in want.items():
        assert s.get(key) == [value], key
    assert int(s["WatchdogSec"][0]) > 0
    assert "ProtectKernelModules" not in s  # it hides /lib/modules: bcc's headers on kernels without BTF


def test_every_capability_says_why() -> None:
    caps = settings()["CapabilityBoundingSet"][0].split()
    assert caps and all(c.startswith("CAP_") for c in caps)
    text = UNIT.read_text()
    for cap in caps:
        assert re.search(rf"^#\s+{cap}\s+\S", text, re.M), f"{cap} has no comment saying why"
