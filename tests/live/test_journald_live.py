"""The journald output against a real systemd-journald, read back with journalctl.

This machine's PID 1 is not systemd, so the test runs its own journald in a private mount namespace: a
tmpfs over /run (and /var/log/journal), and a journald.conf of its own bound over /etc/systemd's, all in
that namespace only; the host's /run, /etc and journal are untouched. The agent's side reaches the socket
through /proc/<pid>/root. journald is down first (no socket): alerts are spooled; then it starts, and
journalctl must show every alert once, in order, with its fields.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.outputs.journald import JournalOutput
from agent.sinks import AlertSink
from tests.helpers.live import require_root, skip_or_fail
from tests.helpers.polling import wait_until
from tests.unit.test_outputs import alert

JOURNALD_CONF = """[Journal]
Storage=volatile
ReadKMsg=no
Audit=no
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
"""


def find_journald() -> str | None:
    for path in ("/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald"):
        if os.access(path, os.X_OK):
            return path
    return None


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End a process this test started, by its handle: TERM, then KILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class PrivateJournal:
    """A mount namespace kept by a sleeping holder; journald runs in it once start() is called."""

    def __init__(self, tmp: Path, journald: str) -> None:
        conf = tmp / "journald.conf"
        conf.write_text(JOURNALD_CONF)
        script = (
            "set -e; mount -t tmpfs chainwatch-test-run /run; mkdir -p /run/systemd/journal /run/log; "
            "if [ -d /var/log/journal ]; then mount -t tmpfs chainwatch-test-journal /var/log/journal; fi; "
            f"if [ -e /etc/systemd/journald.conf ]; then mount --bind '{conf}' /etc/systemd/journald.conf; fi; "
            "exec sleep 600"
        )
        self.journald = journald
        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script])
        self.root = Path(f"/proc/{self.holder.pid}/root")
        self.daemon: subprocess.Popen[bytes] | None = None
        wait_until(
            lambda: (self.root / "run/systemd/journal").is_dir() or self.holder.poll() is not None,
            "the private namespace",
        )
        assert self.holder.poll() is None, "could not set up the private mount namespace"

    @property
    def socket(self) -> str:
        return str(self.root / "run/systemd/journal/socket")

    def start(self) -> None:
        self.daemon = subprocess.Popen(
            ["nsenter", "-t", str(self.holder.pid), "-m", "--", self.journald],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def entries(self) -> list[dict[str, Any]]:
        proc = subprocess.run(
            [
                "journalctl",
                "--directory",
                str(self.root / "run/log/journal"),
                "-o",
                "json",
                "--no-pager",
                "SYSLOG_IDENTIFIER=chainwatch",
            ],
            capture_output=True,
            timeout=30,
        )
        return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]

    def close(self) -> None:
        if self.daemon is not None:
            stop(self.daemon)
        stop(self.holder)


@pytest.fixture
def private_journal(tmp_path: Path) -> Iterator[PrivateJournal]:
    require_root("a private mount namespace for journald needs root")
    journald = find_journald()
    if journald is None or not shutil.which("journalctl") or not shutil.which("unshare"):
        skip_or_fail("needs systemd-journald, journalctl, unshare and nsenter (Debian: systemd, util-linux)")
    assert journald is not None
    journal = PrivateJournal(tmp_path, journald)
    try:
        yield journal
    finally:
        journal.close()


def test_real_journald_down_then_up(private_journal: PrivateJournal, tmp_path: Path) -> None:
    """journald down, then up: journalctl shows each alert once, in order, with PRIORITY and the fields."""
    down, after = 20, 5
    sink = AlertSink(
        [],
        extra=[JournalOutput(private_journal.socket)],
        spool_dir=tmp_path / "spool",
        retry_min_s=0.05,
        retry_max_s=0.5,
    )
    try:
        for i in range(down):
            sink.put(alert(i))
        wait_until(lambda: sink.stats()["alerts_in_spool"] == down, "the alerts spooled while journald is down")
        assert sink.stats()["alerts_written"] == 0
        private_journal.start()
        wait_until(lambda: sink.stats()["alerts_written"] == down, "the spool written to journald")
        for i in range(down, down + after):
            sink.put(alert(i))
        wait_until(lambda: len(private_journal.entries()) >= down + after, "journalctl to show every alert")
    finally:
        sink.close()
    entries = private_journal.entries()
    assert [json.loads(e["CHAINWATCH_ALERT"])["chainwatch"]["seq"] for e in entries] == list(range(down + after))
    assert sink.stats()["alerts_dropped"] == 0
    critical = entries[3]
    assert critical["PRIORITY"] == "2" and critical["CHAINWATCH_SEVERITY"] == "critical"
    assert critical["CHAINWATCH_RULE_NAME"] == 'Reverse shell "in" [package] install'
    assert critical["CHAINWATCH_INCIDENT_ID"] == "inc-1" and critical["CHAINWATCH_ALERT_ID"] == "alert-3"
    assert critical["MESSAGE"].endswith("(#3)\nwith its stdio on the socket")
    assert int(critical["_PID"]) == os.getpid(), "journald saw the agent as the sender"
