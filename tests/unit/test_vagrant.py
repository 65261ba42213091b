"""vagrant/Vagrantfile: `vagrant validate` (Debian's vagrant; no VM and no provider needed with
--ignore-provider) accepts it, it defines the promised kernel matrix, and a broken copy is refused."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

VAGRANT_DIR = Path(__file__).resolve().parents[2] / "vagrant"
WANT_BOXES = ("ubuntu2204", "ubuntu2404", "debian12", "debian13", "rocky9", "fedora42")


def validate(directory: Path, home: Path) -> subprocess.CompletedProcess[str]:
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        pytest.fail("vagrant missing: scripts/setup.sh installs Debian's vagrant package")
    env = {**os.environ, "VAGRANT_HOME": str(home), "VAGRANT_CHECKPOINT_DISABLE": "1"}
    return subprocess.run(
        [vagrant, "validate", "--ignore-provider"], cwd=directory, env=env, capture_output=True, text=True, timeout=120
    )


def copy(tmp_path: Path, text: str) -> Path:
    d = tmp_path / "vagrant"
    d.mkdir()
    (d / "Vagrantfile").write_text(text)
    return d


def test_vagrant_validate_accepts_the_matrix(tmp_path) -> None:
    proc = validate(copy(tmp_path, (VAGRANT_DIR / "Vagrantfile").read_text()), tmp_path / "home")
    assert proc.returncode == 0 and "validated successfully" in proc.stdout, proc.stdout + proc.stderr
    for name in WANT_BOXES:
        assert f"==> {name}:" in proc.stdout, name


def test_vagrant_validate_refuses_a_broken_copy(tmp_path) -> None:
    broken = (VAGRANT_DIR / "Vagrantfile").read_text().replace("vm.vm.box = spec[:box]", "vm.vm.boxx = spec[:box]")
    proc = validate(copy(tmp_path, broken), tmp_path / "home")
    assert proc.returncode != 0 and "boxx" in proc.stdout + proc.stderr


def test_matrix_covers_the_promised_distributions() -> None:
    text = (VAGRANT_DIR / "Vagrantfile").read_text()
    for box in ("ubuntu-22.04", "ubuntu-24.04", "debian/bookworm64", "debian/trixie64", "rockylinux/9", "fedora-"):
        assert box in text, box
    assert "/chainwatch/dist/chainwatch_" in text and "/chainwatch/dist/chainwatch-" in text  # installs the package


def test_in_box_script_is_valid_shell() -> None:
    proc = subprocess.run(["sh", "-n", str(VAGRANT_DIR / "scenarios" / "in-box.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
