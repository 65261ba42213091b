"""agent.sinks and agent.spool: alerts survive an output that fails (a full disk), in order, exactly once."""

from __future__ import annotations

import errno
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.sinks import AlertSink, Delivery, Output, StreamOutput, spool_path
from agent.spool import Spool
from tests.helpers.polling import wait_until

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


class FakeFile:
    """An output with ``capacity`` bytes of room: short write at the edge, then ENOSPC; ``error`` fails every
    write; ``gate`` (when set) makes writes wait for it."""

    def __init__(self, capacity: int = 1 << 30, name: str = "fake.jsonl") -> None:
        self.name = name
        self.capacity = capacity
        self.data = bytearray()
        self.error: OSError | None = None
        self.gate: threading.Event | None = None
        self.calls = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        self.calls += 1
        if self.gate is not None:
            self.gate.wait()
        if self.error is not None:
            raise self.error
        room = self.capacity - len(self.data)
        if room <= 0:
            raise ENOSPC
        taken = data[:room]
        self.data += taken
        return len(taken)

    def close(self) -> None:
        self.closed = True

    def lines(self) -> list[bytes]:
        return bytes(self.data).splitlines(keepends=True)


def alert(i: int) -> dict[str, Any]:
    return {"event": {"id": f"alert-{i}", "severity": 73}, "rule": {"name": "Test rule"}, "n": i, "pad": "x" * (i % 7)}


def line(i: int) -> bytes:
    return (json.dumps(alert(i), separators=(",", ":")) + "\n").encode()


def sink_with(fake: FakeFile, **kwargs: Any) -> AlertSink:
    def opener(target: str) -> Output:
        assert target == fake.name
        return fake

    return AlertSink([fake.name], opener=opener, **kwargs)


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    with capture_logs() as captured:
        yield captured


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


# --- the spool --------------------------------------------------------------------------------------------


def drain(spool: Spool) -> bytes:
    out = b""
    while (data := spool.peek()) is not None:
        out += data
        assert spool.consume(len(data))
    return out


def test_memory_spool_keeps_order_and_refuses_past_its_bound() -> None:
    """Memory only: lines come out in order; past the bound a line is refused with a reason, not kept."""
    spool = Spool(memory_bytes=len(line(1) + line(2) + line(3)))
    for i in (1, 2, 3):
        assert spool.push(line(i)) is None
    refused = spool.push(line(4))
    assert refused is not None and "memory spool is full" in refused
    assert len(spool) == 3
    assert drain(spool) == line(1) + line(2) + line(3)
    assert len(spool) == 0 and spool.peek() is None


def test_a_line_larger_than_memory_is_kept_when_the_spool_is_empty() -> None:
    """One alert bigger than the whole memory bound still fits an empty spool (it never could otherwise)."""
    spool = Spool(memory_bytes=4)
    assert spool.push(line(1)) is None
    assert spool.push(line(2)) is not None
    assert drain(spool) == line(1)


def test_disk_overflow_keeps_order_and_empties_the_file(tmp_path: Path) -> None:
    """Past memory, lines go to the file; newer lines stay behind them; the file is emptied once drained."""
    path = tmp_path / "spool" / "out.spool"
    spool = Spool(memory_bytes=len(line(0) + line(1)), path=path, disk_bytes=1 << 20)
    for i in range(10):
        assert spool.push(line(i)) is None
    assert spool.on_disk == 8 and path.stat().st_size > 0
    assert (path.parent.stat().st_mode & 0o777) == 0o700 and (path.stat().st_mode & 0o777) == 0o600
    out = b""
    for i in range(10, 20):  # interleave: new lines keep arriving while it drains
        data = spool.peek()
        assert data is not None
        out += data
        spool.consume(len(data))
        assert spool.push(line(i)) is None
    out += drain(spool)
    assert out == b"".join(line(i) for i in range(20))
    assert path.stat().st_size == 0


def test_disk_bound_refuses_with_a_reason(tmp_path: Path) -> None:
    """The spool file never grows past disk_bytes: the line that would pass it is refused, order kept."""
    path = tmp_path / "out.spool"
    spool = Spool(memory_bytes=1, path=path, disk_bytes=len(line(2) + line(3)))
    assert spool.push(line(1)) is None  # memory: the spool was empty
    assert spool.push(line(2)) is None and spool.push(line(3)) is None  # disk
    refused = spool.push(line(4))
    assert refused is not None and "is full" in refused and str(path) in refused
    assert drain(spool) == line(1) + line(2) + line(3)


def test_unwritable_spool_directory_refuses_with_a_reason(tmp_path: Path) -> None:
    """A spool directory that cannot be made refuses the line (the sink then counts and logs it)."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    spool = Spool(memory_bytes=1, path=blocker / "sub" / "out.spool", disk_bytes=1 << 20)
    assert spool.push(line(1)) is None
    refused = spool.push(line(2))
    assert refused is not None and "cannot write the spool file" in refused


def test_persist_and_recover_resume_mid_line(tmp_path: Path) -> None:
    """At shutdown the rest of a half-written line, memory and disk go to the file in order; the next run
    owes exactly those bytes."""
    path = tmp_path / "out.spool"
    spool = Spool(memory_bytes=2 * len(line(0)), path=path, disk_bytes=1 << 20)
    for i in range(6):
        spool.push(line(i))
    head = spool.peek()
    assert head is not None
    spool.consume(5)  # the output took 5 bytes of line 0
    assert spool.persist() == 6
    again = Spool(memory_bytes=2 * len(line(0)), path=path, disk_bytes=1 << 20)
    assert again.recover() == 6
    assert drain(again) == line(0)[5:] + b"".join(line(i) for i in range(1, 6))


def test_persist_after_partial_drain_from_disk_skips_what_was_written(tmp_path: Path) -> None:
    """Lines already written from the file are not in the persisted file (no duplicate after a clean stop)."""
    path = tmp_path / "out.spool"
    spool = Spool(memory_bytes=1, path=path, disk_bytes=1 << 20)
    for i in range(5):
        spool.push(line(i))
    for _ in range(3):
        data = spool.peek()
        assert data is not None
        spool.consume(len(data))
    assert spool.persist() == 2
    assert path.read_bytes() == line(3) + line(4)


def test_recover_cuts_a_torn_last_line(tmp_path: Path) -> None:
    """A spool file whose last line has no newline (a crash mid-append) loses that fragment only."""
    path = tmp_path / "out.spool"
    path.write_bytes(line(1) + line(2) + b'{"torn')
    spool = Spool(memory_bytes=1 << 20, path=path, disk_bytes=1 << 20)
    assert spool.recover() == 2
    assert spool.recovered_cut_bytes == len(b'{"torn')
    assert drain(spool) == line(1) + line(2)


def test_empty_spool_persists_nothing(tmp_path: Path) -> None:
    """A drained spool leaves no file behind."""
    path = tmp_path / "out.spool"
    spool = Spool(memory_bytes=1, path=path, disk_bytes=1 << 20)
    spool.push(line(1))
    spool.push(line(2))
    drain(spool)
    assert spool.persist() == 0
    assert not path.exists()


def test_memory_only_persist_with_lines_raises() -> None:
    """Without a spool directory, alerts still owed at shutdown cannot be kept: persist says so."""
    spool = Spool(memory_bytes=1 << 20)
    spool.push(line(1))
    with pytest.raises(OSError):
        spool.persist()


# --- one output: Delivery -----------------------------------------------------------------------------------


def test_delivery_spools_on_enospc_and_flushes_in_order(logs: list[dict[str, Any]]) -> None:
    """The disk fills mid-line: the written prefix is not rewritten, later alerts wait, and once space
    returns every alert is in the file exactly once, in order; the log says both."""
    fake = FakeFile(capacity=len(line(0)) + len(line(1)) + 10)
    d = Delivery(fake, Spool(memory_bytes=1 << 20), retry_min_s=1.0, retry_max_s=8.0)
    for i in range(6):
        d.deliver(line(i), alert(i), now=0.0)
    assert d.written == 2 and d.waiting == 4 and d.spooled == 4
    [spooled] = events(logs, "alerts_spooled")
    assert spooled["errno"] == "ENOSPC" and spooled["reason"] == "No space left on device"
    assert spooled["output"] == "fake.jsonl"
    d.retry(now=0.5)  # before the backoff: no attempt
    calls = fake.calls
    d.retry(now=0.9)
    assert fake.calls == calls
    fake.capacity = 1 << 20
    d.retry(now=1.0)
    assert d.waiting == 0 and d.flushed == 4 and d.written == 6
    assert fake.lines() == [line(i) for i in range(6)]
    [flushed] = events(logs, "alerts_spool_flushed")
    assert flushed["alerts"] == 4 and flushed["output"] == "fake.jsonl" and flushed["dropped"] == 0


def test_delivery_backoff_doubles_up_to_the_cap() -> None:
    """Each failed retry doubles the wait, up to retry_max_s; a success resets it."""
    fake = FakeFile(capacity=0)
    d = Delivery(fake, Spool(memory_bytes=1 << 20), retry_min_s=1.0, retry_max_s=4.0)
    d.deliver(line(0), alert(0), now=0.0)
    now, waits = 0.0, []
    for _ in range(5):
        wait = d.due_in(now)
        assert wait is not None
        waits.append(wait)
        now += wait
        d.retry(now)
    assert waits == [1.0, 2.0, 4.0, 4.0, 4.0]
    fake.capacity = 1 << 20
    now += d.due_in(now) or 0.0
    d.retry(now)
    assert d.due_in(now) is None
    fake.capacity = len(fake.data)  # full again: the next episode starts from retry_min_s
    d.deliver(line(1), alert(1), now)
    assert d.due_in(now) == 1.0


def test_delivery_full_spool_drops_with_a_logged_count(logs: list[dict[str, Any]]) -> None:
    """Memory-only spool full: each further alert is dropped, counted and logged with its id and rule."""
    fake = FakeFile(capacity=0)
    d = Delivery(fake, Spool(memory_bytes=len(line(0) + line(1))))
    for i in range(5):
        d.deliver(line(i), alert(i), now=0.0)
    assert d.waiting == 2 and d.dropped == 3
    dropped = events(logs, "alert_dropped")
    assert [e["alert_id"] for e in dropped] == ["alert-2", "alert-3", "alert-4"]
    assert dropped[-1]["total"] == 3 and dropped[-1]["rule"] == "Test rule"
    assert "memory spool is full" in dropped[0]["reason"]
    fake.capacity = 1 << 20
    d.retry(now=100.0)
    assert fake.lines() == [line(0), line(1)]
    assert events(logs, "alerts_spool_flushed")[0]["dropped"] == 3


def test_delivery_other_errors_spool_too(logs: list[dict[str, Any]]) -> None:
    """EIO (a failing disk) spools like ENOSPC, with its own reason."""
    fake = FakeFile()
    fake.error = OSError(errno.EIO, "Input/output error")
    d = Delivery(fake, Spool(memory_bytes=1 << 20))
    d.deliver(line(0), alert(0), now=0.0)
    assert events(logs, "alerts_spooled")[0]["errno"] == "EIO"
    fake.error = None
    d.retry(now=10.0)
    assert fake.lines() == [line(0)]


def test_delivery_shutdown_keeps_the_spool_for_the_next_run(tmp_path: Path, logs: list[dict[str, Any]]) -> None:
    """Still failing at shutdown: the alerts go to the spool file, and the next run writes them first."""
    path = tmp_path / "out.spool"
    fake = FakeFile(capacity=len(line(0)) // 2)
    d = Delivery(fake, Spool(memory_bytes=1 << 20, path=path, disk_bytes=1 << 20))
    for i in range(3):
        d.deliver(line(i), alert(i), now=0.0)
    d.shutdown()
    assert fake.closed and path.exists()
    [kept] = events(logs, "alerts_spool_kept")
    assert kept["alerts"] == 3 and kept["spool_file"] == str(path)

    fake.capacity = 1 << 20
    fake.closed = False
    again = Delivery(fake, Spool(memory_bytes=1 << 20, path=path, disk_bytes=1 << 20))
    again.recover()
    assert events(logs, "alerts_spool_recovered")[0]["alerts"] == 3
    again.deliver(line(3), alert(3), now=0.0)  # behind the recovered ones
    again.retry(now=0.0)
    assert fake.lines() == [line(i) for i in range(4)]
    again.shutdown()
    assert not path.exists()


def test_delivery_shutdown_without_spool_dir_logs_the_loss(logs: list[dict[str, Any]]) -> None:
    """No spool directory and the output still failing at shutdown: the loss is logged and counted."""
    d = Delivery(FakeFile(capacity=0), Spool(memory_bytes=1 << 20))
    d.deliver(line(0), alert(0), now=0.0)
    d.deliver(line(1), alert(1), now=0.0)
    d.shutdown()
    [lost] = events(logs, "alerts_lost")
    assert lost["alerts"] == 2 and d.dropped == 2


# --- the sink ---------------------------------------------------------------------------------------------


def test_sink_full_disk_then_space_returns(tmp_path: Path, logs: list[dict[str, Any]]) -> None:
    """Through the thread: put() returns for every alert while the output is full, the counters show them
    spooled, and once space returns each alert is written exactly once, in order."""
    fake = FakeFile(capacity=3 * len(line(0)))
    sink = sink_with(
        fake, spool_dir=tmp_path / "spool", memory_spool_bytes=4 * len(line(0)), retry_min_s=0.01, retry_max_s=0.05
    )
    n = 50
    returned = 0
    for i in range(n):
        sink.put(alert(i))
        returned += 1
    assert returned == n
    wait_until(lambda: sink.stats()["alerts_written"] + sink.stats()["alerts_in_spool"] == n, "all alerts handled")
    stats = sink.stats()
    assert stats["alerts_in_spool"] > 0 and stats["alerts_spooled"] >= stats["alerts_in_spool"]
    assert stats["alerts_dropped"] == 0 and stats["alert_write_errors"] >= 1
    assert list((tmp_path / "spool").iterdir()), "past the memory bound the spool is on disk"
    fake.capacity = 1 << 30
    wait_until(lambda: sink.stats()["alerts_in_spool"] == 0, "the spool to drain")
    sink.close()
    assert fake.lines() == [line(i) for i in range(n)]
    stats = sink.stats()
    assert stats["alerts_written"] == n and stats["alerts_spool_flushed"] == stats["alerts_spooled"]
    assert events(logs, "alerts_spooled") and events(logs, "alerts_spool_flushed")
    assert not list((tmp_path / "spool").iterdir())


def test_put_never_blocks_on_a_stuck_output(logs: list[dict[str, Any]]) -> None:
    """An output whose write hangs: put() still returns for every alert; past the queue they are dropped
    with a count, and the rest are written once the output moves."""
    fake = FakeFile()
    fake.gate = threading.Event()
    sink = sink_with(fake, max_queue=10)
    sink.put(alert(0))
    wait_until(lambda: fake.calls == 1, "the writer to block")
    for i in range(1, 31):
        sink.put(alert(i))
    assert sink.stats()["alerts_dropped"] == 20
    assert len(events(logs, "alert_dropped")) == 20
    fake.gate.set()
    sink.close()
    assert fake.lines() == [line(i) for i in range(11)]


def test_sink_recovers_a_spool_left_by_the_previous_run(tmp_path: Path) -> None:
    """Alerts kept on disk at one shutdown are written first by the next sink on the same output."""
    spool_dir = tmp_path / "spool"
    fake = FakeFile(capacity=0)
    sink = sink_with(fake, spool_dir=spool_dir)
    for i in range(3):
        sink.put(alert(i))
    sink.close()
    assert spool_path(spool_dir, fake.name).exists()
    fake.capacity = 1 << 20
    sink = sink_with(fake, spool_dir=spool_dir)
    sink.put(alert(3))
    sink.close()
    assert fake.lines() == [line(i) for i in range(4)]
    assert not spool_path(spool_dir, fake.name).exists()


def test_sink_unencodable_alert_is_dropped_and_counted(logs: list[dict[str, Any]]) -> None:
    """An alert JSON cannot encode is dropped with a logged reason; the thread goes on with the next."""
    fake = FakeFile()
    sink = sink_with(fake)
    sink.put({"bad": object()})
    sink.put(alert(1))
    sink.close()
    assert fake.lines() == [line(1)]
    assert sink.stats()["alerts_dropped"] == 1
    assert "cannot encode" in events(logs, "alert_dropped")[0]["reason"]


def test_sink_real_file_and_stats_keys(tmp_path: Path) -> None:
    """A real file output gets one JSON line per alert; stats() has every counter the stats line shows."""
    out = tmp_path / "deep" / "alerts.jsonl"
    sink = AlertSink([str(out)], spool_dir=tmp_path / "spool")
    for i in range(3):
        sink.put(alert(i))
    sink.close()
    assert out.read_bytes() == b"".join(line(i) for i in range(3))
    assert sink.stats() == {
        "alerts_written": 3,
        "alerts_dropped": 0,
        "alert_write_errors": 0,
        "alerts_spooled": 0,
        "alerts_in_spool": 0,
        "alerts_spool_flushed": 0,
        "alerts_spool_dropped": 0,
    }


def test_sink_cannot_open_file_says_what_to_do(tmp_path: Path) -> None:
    """An alerts path that cannot be opened is a PermissionError naming it and --alerts."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(PermissionError, match="--alerts"):
        AlertSink([str(blocker / "alerts.jsonl")])


def test_stdout_output(capsys: pytest.CaptureFixture[str]) -> None:
    """ "-" writes the lines to standard output."""
    sink = AlertSink(["-"])
    sink.put(alert(1))
    sink.close()
    assert capsys.readouterr().out.encode() == line(1)


def test_stream_output_closed_is_an_oserror() -> None:
    """A closed stdout is an OSError (spooled, counted), not a ValueError that would kill the thread."""
    import io

    stream = io.StringIO()
    stream.close()
    with pytest.raises(OSError):
        StreamOutput(stream).write(b"x\n")


def test_spool_path_is_per_output(tmp_path: Path) -> None:
    """Two outputs with the same file name get different spool files, each named after its output."""
    a, b = spool_path(tmp_path, "/a/alerts.jsonl"), spool_path(tmp_path, "/b/alerts.jsonl")
    assert a != b and a.name.startswith("alerts.jsonl-") and a.parent == tmp_path


def test_an_output_that_raises_a_non_oserror_backs_off(logs: list[dict[str, Any]]) -> None:
    """A bug in an output (an exception that is not OSError) is logged and treated as a failed write: the
    alert is spooled and retried with backoff (not in a tight loop), and written once the output works."""
    fake = FakeFile()
    fake.error = ValueError("a bug")  # type: ignore[assignment]
    sink = sink_with(fake, retry_min_s=0.2, retry_max_s=0.2)
    sink.put(alert(0))
    time.sleep(0.5)
    calls = fake.calls
    fake.error = None
    wait_until(lambda: fake.lines() == [line(0)], "the alert once the output works")
    sink.close()
    assert 1 <= calls <= 5, f"{calls} attempts in 0.5 s: the thread spun"
    assert events(logs, "alert_output_error") and events(logs, "alerts_spool_flushed")
