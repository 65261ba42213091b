"""The alert sink on a really full filesystem: a 64 KiB tmpfs mounted on a scratch directory (root only).

Counts, not times: put() must return for every alert while the disk is full, the spool must hold them
all, and once space returns the alerts file must hold each alert exactly once, in order.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.sinks import AlertSink, spool_path
from tests.helpers.live import require_root, require_tools
from tests.helpers.polling import wait_until


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs on a scratch directory; unmounted at the end whatever happens."""
    require_root("mounting a tmpfs needs root (run `make test` as root)")
    require_tools("mount", "umount", reason="needs mount and umount in PATH")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "chainwatch-test", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no block left; returns it (delete it to free the space)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        chunk = b"\0" * 4096
        while True:
            try:
                if os.write(fd, chunk) == 0:
                    break
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    finally:
        os.close(fd)
    return filler


WAIT = 60.0  # bound on waiting for the sink (polling; never asserted as a time)


def alert(i: int) -> dict[str, Any]:
    return {
        "event": {"id": f"spool-test-{i}", "kind": "alert", "severity": 73},
        "rule": {"name": "spool test"},
        "seq": i,
        "reason": "x" * (20 + i % 37),
    }


def test_full_tmpfs_spools_then_writes_every_alert_once_in_order(small_fs: Path, tmp_path: Path) -> None:
    """Alerts file on a full 64 KiB tmpfs: every put() returns, the alerts are spooled (memory, then the spool
    file on another filesystem), the log says why; after space returns each is written once, in order."""
    alerts_file = small_fs / "alerts.jsonl"
    spool_dir = tmp_path / "spool"
    assert os.stat(tmp_path).st_dev != os.stat(small_fs).st_dev
    before, during = 5, 150
    total = before + during
    size = sum(len(json.dumps(alert(i), separators=(",", ":"))) + 1 for i in range(total))
    assert 8 * 1024 < size < 40 * 1024, "the alerts must overflow the memory spool and fit the 64 KiB fs"
    with capture_logs() as logs:
        sink = AlertSink(
            [str(alerts_file)], spool_dir=spool_dir, memory_spool_bytes=8 * 1024, retry_min_s=0.01, retry_max_s=0.2
        )
        try:
            for i in range(before):
                sink.put(alert(i))
            wait_until(lambda: sink.stats()["alerts_written"] == before, "the first alerts to be written", timeout=WAIT)
            filler = fill(small_fs)
            st = os.stat(alerts_file)
            room = st.st_blocks * 512 - st.st_size  # the rest of the file's last page: still writable

            returned = 0
            for i in range(before, total):
                sink.put(alert(i))
                returned += 1
            assert returned == during
            wait_until(
                lambda: sink.stats()["alerts_written"] + sink.stats()["alerts_in_spool"] == total,
                "every alert written or spooled",
                timeout=WAIT,
            )
            stats = sink.stats()
            assert stats["alerts_dropped"] == 0 and stats["alerts_spool_dropped"] == 0
            shortest = min(len(json.dumps(alert(i), separators=(",", ":"))) + 1 for i in range(before, total))
            assert stats["alerts_in_spool"] >= during - room // shortest - 1  # the page's rest took a few lines
            assert stats["alerts_spooled"] == stats["alerts_in_spool"]
            assert stats["alert_write_errors"] >= 1
            assert spool_path(spool_dir, str(alerts_file)).stat().st_size > 0, "past 8 KiB the spool is on disk"

            filler.unlink()
            wait_until(
                lambda: sink.stats()["alerts_in_spool"] == 0, "the spool to drain once space returns", timeout=WAIT
            )
        finally:
            sink.close()

    lines = alerts_file.read_bytes().split(b"\n")
    assert lines[-1] == b"", "the file ends with a whole line"
    assert [json.loads(raw)["seq"] for raw in lines[:-1]] == list(range(total))
    stats = sink.stats()
    assert stats["alerts_written"] == total and stats["alerts_spool_flushed"] == stats["alerts_spooled"]
    assert stats["alerts_dropped"] == 0
    spooled = [e for e in logs if e["event"] == "alerts_spooled"]
    assert spooled and spooled[0]["errno"] == "ENOSPC" and spooled[0]["output"] == str(alerts_file)
    flushed = [e for e in logs if e["event"] == "alerts_spool_flushed"]
    assert flushed and flushed[-1]["alerts"] == stats["alerts_spooled"]
    assert not list(spool_dir.iterdir()), "a drained spool leaves no file"


def test_still_full_at_shutdown_keeps_the_spool_for_the_next_run(small_fs: Path, tmp_path: Path) -> None:
    """Closed while the tmpfs is still full: the alerts stay in the spool file; the next sink on the same file
    writes them first, then its own."""
    alerts_file = small_fs / "alerts.jsonl"
    spool_dir = tmp_path / "spool"
    sink = AlertSink([str(alerts_file)], spool_dir=spool_dir, retry_min_s=0.01, retry_max_s=0.2)
    filler = fill(small_fs)
    for i in range(50):
        sink.put(alert(i))
    sink.close()
    assert sink.stats()["alerts_dropped"] == 0
    kept = spool_path(spool_dir, str(alerts_file))
    assert kept.stat().st_size > 0

    filler.unlink()
    sink = AlertSink([str(alerts_file)], spool_dir=spool_dir, retry_min_s=0.01, retry_max_s=0.2)
    sink.put(alert(50))
    sink.close()
    seqs = [json.loads(raw)["seq"] for raw in alerts_file.read_bytes().splitlines()]
    assert seqs == list(range(51))
    assert not kept.exists()
