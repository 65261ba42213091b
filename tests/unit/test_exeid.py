"""Executables by what they are (agent/detect/exeid.py): installed programs by inode, copies by content."""

from __future__ import annotations

import os
from pathlib import Path

from agent.detect.exeid import ExeIdentity, kernel_dev


def _install(tmp_path: Path) -> tuple[Path, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    bash = bin_dir / "bash"
    bash.write_bytes(b"\x7fELF pretend bash " * 100)
    (bin_dir / "socat").write_bytes(b"\x7fELF pretend socat " * 90)
    (bin_dir / "python3.11").write_bytes(b"\x7fELF pretend python " * 80)
    proc = tmp_path / "proc"
    proc.mkdir()
    return bin_dir, proc


def _exec(proc: Path, pid: int, target: Path) -> str:
    (proc / str(pid)).mkdir()
    os.symlink(target, proc / str(pid) / "exe")
    st = os.stat(target)
    return f"{kernel_dev(st.st_dev)}:{st.st_ino}"


def test_installed_program_by_inode_and_copy_by_content(tmp_path: Path) -> None:
    """The installed bash is bash by its inode; a renamed copy elsewhere is bash by its content; another file of
    the same size is nothing; versioned interpreter names come from patterns."""
    bin_dir, proc = _install(tmp_path)
    ident = ExeIdentity.for_patterns({"bash", "socat"}, ["python*"], dirs=[str(bin_dir)], proc=str(proc))
    assert ident.identify(1, _exec(proc, 1, bin_dir / "bash")) == "bash"
    copy = tmp_path / "kworker"
    copy.write_bytes((bin_dir / "bash").read_bytes())
    assert ident.identify(2, _exec(proc, 2, copy)) == "bash"
    same_size = tmp_path / "other"
    same_size.write_bytes(b"x" * len((bin_dir / "bash").read_bytes()))
    assert ident.identify(3, _exec(proc, 3, same_size)) is None
    renamed_socat = tmp_path / "svc"
    renamed_socat.write_bytes((bin_dir / "socat").read_bytes())
    assert ident.identify(4, _exec(proc, 4, renamed_socat)) == "socat"
    assert ident.identify(5, _exec(proc, 5, bin_dir / "python3.11")) == "python3.11"


def test_hashes_once_per_file_and_only_on_a_size_match(tmp_path: Path) -> None:
    """A file is hashed once (cached by device, inode and mtime), and never when no known program has its size."""
    bin_dir, proc = _install(tmp_path)
    ident = ExeIdentity({"bash"}, dirs=[str(bin_dir)], proc=str(proc))
    copy = tmp_path / "x"
    copy.write_bytes((bin_dir / "bash").read_bytes())
    for pid in (10, 11, 12):
        assert ident.identify(pid, _exec(proc, pid, copy)) == "bash"
    assert ident.hashed == 1
    small = tmp_path / "y"
    small.write_bytes(b"tiny")
    assert ident.identify(13, _exec(proc, 13, small)) is None
    assert ident.hashed == 1


def test_gone_process_is_unknown(tmp_path: Path) -> None:
    """A process that exited before the agent looked is simply not identified."""
    bin_dir, proc = _install(tmp_path)
    ident = ExeIdentity({"bash"}, dirs=[str(bin_dir)], proc=str(proc))
    assert ident.identify(99, "1:2") is None


def test_a_reported_size_no_known_program_has_needs_no_look(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """With the size the kernel reported, an exec of a file no known program matches in size is settled without
    a stat of /proc/PID/exe; a copy of bash (its size) is still looked at and named."""
    bin_dir, proc = _install(tmp_path)
    ident = ExeIdentity({"bash"}, dirs=[str(bin_dir)], proc=str(proc))
    other = tmp_path / "true"
    other.write_bytes(b"\x7fELF true")
    copy = tmp_path / "kworker"
    copy.write_bytes((bin_dir / "bash").read_bytes())
    other_id, copy_id = _exec(proc, 20, other), _exec(proc, 21, copy)
    other_size, copy_size = other.stat().st_size, copy.stat().st_size
    looked: list[str] = []
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda path, *a, **k: looked.append(str(path)) or real_stat(path, *a, **k))
    assert ident.identify(20, other_id, size=other_size) is None
    assert looked == []
    assert ident.identify(21, copy_id, size=copy_size) == "bash"
    assert looked == [f"{proc}/21/exe"]
