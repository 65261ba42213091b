"""CLI behaviour that needs neither root nor bcc."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent.probes import offsets

CHAINWATCH = [sys.executable, "-m", "agent"]


def test_unknown_config_key_is_one_clear_error(tmp_path) -> None:
    """An unknown config key exits non-zero with one sentence naming the key and the file."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("[sensor]\nring_pages = 4\n")
    proc = subprocess.run([*CHAINWATCH, "run", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "ring_pages" in proc.stderr and str(cfg) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_replay_of_a_non_recording_fails_clearly(tmp_path) -> None:
    """Replaying a file that is not a recording exits non-zero and says so."""
    bad = tmp_path / "bad.cw"
    bad.write_bytes(b"\x00\x01garbage")
    proc = subprocess.run([*CHAINWATCH, "replay", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "not a chainwatch recording" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_no_btf_and_no_headers_is_a_clear_error(tmp_path, monkeypatch) -> None:
    """Without BTF and without kernel headers, offsets are unavailable with advice on what to install."""
    monkeypatch.setattr(offsets, "headers_dir", lambda: str(tmp_path / "none"))
    with pytest.raises(offsets.OffsetsUnavailable, match="install the kernel headers"):
        offsets.kernel_offsets(str(tmp_path / "no-vmlinux"))


def test_headers_fallback_uses_offsetof(tmp_path, monkeypatch) -> None:
    """Without BTF but with headers, every offset becomes an offsetof() over the kernel's own structs."""
    (tmp_path / "build").mkdir()
    monkeypatch.setattr(offsets, "headers_dir", lambda: str(tmp_path / "build"))
    got = offsets.kernel_offsets(str(tmp_path / "no-vmlinux"))
    assert got.source == "headers"
    assert got.values["TASK_REAL_PARENT"] == "offsetof(struct task_struct, real_parent)"
    assert set(got.values) == set(offsets.WANTED)
