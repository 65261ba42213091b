"""agent.safefile and its users: private modes, no symlinks, no directories others can write."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.recording import RecordingWriter
from agent.safefile import ALERT_MODE, PRIVATE_MODE, UnsafePath, open_private
from agent.sinks import AlertSink, FileOutput
from agent.spool import Spool


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(autouse=True)
def loose_umask():
    """The modes must come from chainwatch, not from a strict umask of whoever runs the tests."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_created_private_and_parent_created(tmp_path) -> None:
    path = tmp_path / "new" / "dir" / "f"
    os.close(open_private(path, os.O_WRONLY))
    assert mode(path) == PRIVATE_MODE
    assert mode(path.parent) == 0o750


def test_existing_loose_file_is_tightened(tmp_path) -> None:
    path = tmp_path / "alerts.jsonl"
    path.write_text("old\n")
    path.chmod(0o666)
    os.close(open_private(path, os.O_WRONLY | os.O_APPEND, ALERT_MODE))
    assert mode(path) == 0o640 and path.read_text() == "old\n"


def test_symlink_refused_and_target_untouched(tmp_path) -> None:
    target = tmp_path / "shadow"
    target.write_text("root:x:0:0\n")
    target.chmod(0o644)
    link = tmp_path / "alerts.jsonl"
    link.symlink_to(target)
    with pytest.raises(UnsafePath, match="symbolic link"):
        open_private(link, os.O_WRONLY | os.O_APPEND, truncate=True)
    assert target.read_text() == "root:x:0:0\n" and mode(target) == 0o644


@pytest.mark.parametrize("bits", [0o777, 0o1777, 0o757])
def test_world_writable_parent_refused(tmp_path, bits) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(bits)
    with pytest.raises(UnsafePath, match="writable by every user"):
        open_private(shared / "f", os.O_WRONLY)
    assert not (shared / "f").exists()


def test_group_writable_parent_of_another_group_refused(tmp_path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    shared = tmp_path / "grp"
    shared.mkdir()
    os.chown(shared, 0, 4242)
    shared.chmod(0o770)
    with pytest.raises(UnsafePath, match="writable by group 4242"):
        open_private(shared / "f", os.O_WRONLY)


def test_parent_owned_by_another_user_refused(tmp_path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 4242, 4242)
    with pytest.raises(UnsafePath, match="belongs to uid 4242"):
        open_private(theirs / "f", os.O_WRONLY)


def test_file_owned_by_another_user_refused_not_truncated(tmp_path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    path = tmp_path / "planted"
    path.write_text("theirs\n")
    os.chown(path, 4242, 4242)
    with pytest.raises(UnsafePath, match="belongs to uid 4242"):
        open_private(path, os.O_WRONLY, truncate=True)
    assert path.read_text() == "theirs\n"


def test_fifo_refused_without_hanging(tmp_path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError):  # ENXIO (no reader, non-blocking open) or "not a regular file"
        open_private(fifo, os.O_WRONLY)


def test_truncate_after_checks(tmp_path) -> None:
    path = tmp_path / "rec"
    path.write_bytes(b"x" * 100)
    os.close(open_private(path, os.O_WRONLY, truncate=True))
    assert path.read_bytes() == b""


def test_alert_file_output_is_0640_and_refuses_a_link(tmp_path) -> None:
    out = FileOutput(str(tmp_path / "a.jsonl"))
    out.write(b"{}\n")
    out.close()
    assert mode(tmp_path / "a.jsonl") == ALERT_MODE
    (tmp_path / "b.jsonl").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PermissionError, match="symbolic link"):
        AlertSink([str(tmp_path / "b.jsonl")])
    assert not (tmp_path / "elsewhere").exists()


def test_spool_file_is_0600_and_refuses_a_link(tmp_path) -> None:
    spool = Spool(1, tmp_path / "spool" / "out.spool", 1 << 20)
    assert spool.push(b"a\n") is None and spool.push(b"b\n") is None  # the second goes to disk
    assert spool.on_disk == 1
    assert mode(tmp_path / "spool" / "out.spool") == PRIVATE_MODE
    assert spool.persist() == 2
    assert mode(tmp_path / "spool" / "out.spool") == PRIVATE_MODE
    spool.close()
    linked = Spool(1, tmp_path / "spool" / "linked.spool", 1 << 20)
    (tmp_path / "spool" / "linked.spool").symlink_to(tmp_path / "victim")
    linked.push(b"a\n")
    assert linked.push(b"b\n") is not None  # refused with a reason, never written through the link
    assert not (tmp_path / "victim").exists()


def test_record_refuses_a_symlink_with_one_sentence(tmp_path) -> None:
    (tmp_path / "rec.cw").symlink_to(tmp_path / "victim")
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "record", str(tmp_path / "rec.cw")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "symbolic link" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "victim").exists()


def test_replay_refuses_a_world_writable_alerts_directory(tmp_path) -> None:
    """The check runs before anything is written (replay needs no root: this is the same AlertSink as run)."""
    rec = tmp_path / "empty.cw"
    with rec.open("wb") as fh:
        RecordingWriter(fh, {}).flush()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "replay", str(rec), "--alerts", str(shared / "alerts.jsonl")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "writable by every user" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (shared / "alerts.jsonl").exists()
