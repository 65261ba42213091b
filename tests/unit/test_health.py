"""agent.health (Sensor degraded alerts), agent.sdnotify's watchdog, and the table keeping context roots."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from agent.alerts import Host
from agent.events import Exec, Fork
from agent.health import RULE_NAME, SensorHealth
from agent.lineage.table import ProcessTable
from agent.sdnotify import Watchdog

S = 1_000_000_000


def test_first_loss_alerts_at_once_then_at_most_once_per_interval() -> None:
    """A loss raises a high ECS host alert at once, with counts and window; later losses gather into the next
    alert once the interval has passed; no loss, no alert."""
    sent: list[dict] = []
    health = SensorHealth(Host("h", "id"), sent.append, 0, interval_s=60)
    assert health.observe({"ringbuf_full": 0, "evicted_live": 0}, 1 * S) is None
    first = health.observe({"ringbuf_full": 5, "evicted_live": 0}, 2 * S)
    assert first is not None and sent == [first]
    assert first["rule"]["name"] == RULE_NAME == "Sensor degraded"
    assert first["event"]["category"] == ["host"] and first["event"]["severity"] == 73
    assert first["event"]["kind"] == "alert" and first["chainwatch"]["severity"] == "high"
    assert first["chainwatch"]["sensor"]["counts"] == {"ringbuf_full": 5}
    assert first["chainwatch"]["sensor"]["window"]["start"] == first["chainwatch"]["sensor"]["window"]["end"]
    assert "5 process/fd events dropped" in first["event"]["reason"]
    assert health.observe({"ringbuf_full": 7, "evicted_live": 1}, 10 * S) is None  # within the interval
    assert health.observe({"ringbuf_full": 9, "evicted_live": 1}, 30 * S) is None
    second = health.observe({"ringbuf_full": 9, "evicted_live": 1}, 62 * S)
    assert second is not None and len(sent) == 2
    assert second["chainwatch"]["sensor"]["counts"] == {"ringbuf_full": 4, "evicted_live": 1}
    assert second["chainwatch"]["sensor"]["window"]["start"] < second["chainwatch"]["sensor"]["window"]["end"]
    assert health.observe({"ringbuf_full": 9, "evicted_live": 1}, 200 * S) is None


def test_watchdog_pings_at_half_the_timeout(tmp_path: Path) -> None:
    """With WATCHDOG_USEC for this pid, WATCHDOG=1 goes to NOTIFY_SOCKET at half the timeout; otherwise never."""
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(address)
        server.settimeout(2)
        old = os.environ.get("NOTIFY_SOCKET")
        os.environ["NOTIFY_SOCKET"] = address
        try:
            dog = Watchdog({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
            assert dog.enabled and dog.interval_s == 2.0
            assert dog.ping(100.0) and server.recv(64) == b"WATCHDOG=1"
            assert not dog.ping(101.0)
            assert dog.ping(102.0) and server.recv(64) == b"WATCHDOG=1"
        finally:
            if old is None:
                del os.environ["NOTIFY_SOCKET"]
            else:
                os.environ["NOTIFY_SOCKET"] = old
    assert not Watchdog({}).enabled
    assert not Watchdog({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid() + 1)}).enabled


def _exec(pid: int, start: int) -> list:
    common = dict(ktime=start, pid=pid, tid=pid, ppid=1, start_time=start, uid=0, cgroup_id=0, comm="x")
    return [Fork(**common, parent_start_time=0), Exec(**common, filename="/bin/x", args=("x",))]


def test_table_evicts_a_live_context_root_last() -> None:
    """Over max_entries, live ordinary processes go (oldest first) before a live context root, even an older one."""
    table = ProcessTable(max_entries=3)
    for event in _exec(100, 1_000):
        table.apply(event)
    root = table.by_pid(100)
    assert root is not None
    root.keep = True
    for pid in range(101, 110):
        for event in _exec(pid, pid * 1_000):
            table.apply(event)
    assert table.by_pid(100) is root  # the oldest, but kept
    assert len(table) == 3 and table.evicted_live == 7
