"""agent.recording: a msgpack stream of decoded events, written and read back without root or bcc."""

from __future__ import annotations

import io
from typing import Any

import msgpack
import pytest

from agent import events as ev
from agent.recording import MAGIC, VERSION, RecordingError, RecordingWriter, read_recording

COMMON: dict[str, Any] = {
    "ktime": 5_000,
    "pid": 300,
    "tid": 301,
    "ppid": 1,
    "start_time": 4_000,
    "uid": 0,
    "cgroup_id": 77,
    "comm": "sh",
}

SAMPLES: list[ev.Event] = [
    ev.Exec(**COMMON, filename="/bin/sh", args=("sh", "-c", "id"), env={"GITHUB_RUN_ID": "7", "CI_JOB_ID": "é"}),
    ev.Exec(**COMMON, flags=ev.FLAG_SEEDED | ev.FLAG_ARGS_TRUNCATED, filename="/usr/bin/python3", args=(), env={}),
    ev.Fork(**COMMON, parent_start_time=1_000),
    ev.Exit(**COMMON, exit_code=-9),
    ev.Connect(**COMMON, fd=3, family="ipv4", transport="tcp", daddr="198.51.100.2", dport=4444, result=-115),
    ev.Accept(**COMMON, fd=4, family="ipv6", transport="tcp", saddr="2001:db8::2", sport=50000, lport=8080),
    ev.Listen(**COMMON, fd=5, family="ipv4", transport="tcp", lport=31337, result=0),
    ev.SocketDup(**COMMON, oldfd=3, newfd=1, syscall="dup2", family="unix", transport="stream"),
    ev.FileWrite(**COMMON, path="/etc/cron.d/x", source_path="/tmp/x", operation="rename", flags_open=0, result=0),
    ev.ModuleLoad(**COMMON, source="exec", syscall="execve", filename="/usr/sbin/insmod", args=("insmod", "x.ko")),
    ev.FdOpen(**COMMON, fd=3, kind="fifo", end_id="fifo:42:1234", access="r"),
]
META = {"hostname": "ci-runner-3", "kernel": "6.1.0", "started": 1_700_000_000}


def _write(events: list[ev.Event], meta: dict[str, Any] | None = None) -> bytes:
    buf = io.BytesIO()
    writer = RecordingWriter(buf, META if meta is None else meta)
    for event in events:
        writer.write(event)
    writer.flush()
    assert writer.written == len(events)
    return buf.getvalue()


def test_samples_cover_every_event_type() -> None:
    """The round-trip samples include every event type the sensor has."""
    assert {type(e) for e in SAMPLES} == set(ev.EVENT_TYPES.values())


def test_round_trip_every_type() -> None:
    """Events of every type written with RecordingWriter read back equal, with the meta."""
    rec = read_recording(io.BytesIO(_write(SAMPLES)))
    assert rec.meta == {"format": MAGIC, "version": VERSION, **META}
    back = list(rec.events)
    assert back == SAMPLES
    assert [type(e) for e in back] == [type(e) for e in SAMPLES]
    assert all(isinstance(e.args, tuple) for e in back if isinstance(e, (ev.Exec, ev.ModuleLoad)))
    assert rec.errors == []


def test_empty_recording() -> None:
    """A recording with a header and no events reads as no events and no errors."""
    rec = read_recording(io.BytesIO(_write([], {})))
    assert list(rec.events) == []
    assert rec.errors == []
    assert rec.meta == {"format": MAGIC, "version": VERSION}


def test_truncated_file() -> None:
    """A file cut anywhere inside its last event yields the complete events and reports the truncation."""
    data = _write(SAMPLES)
    last_len = len(msgpack.packb(SAMPLES[-1].to_dict(), use_bin_type=True))
    last_start = len(data) - last_len
    for cut in range(1, last_len):  # every cut point, including ones between the last map's elements
        rec = read_recording(io.BytesIO(data[:-cut]))
        assert list(rec.events) == SAMPLES[:-1], cut
        assert len(rec.errors) == 1, f"cut {cut}: {rec.errors}"
        assert "truncated" in rec.errors[0]
        assert f"item {len(SAMPLES)}:" in rec.errors[0]
        assert f"at byte {last_start} of {len(data) - cut}" in rec.errors[0]


def test_truncated_non_seekable() -> None:
    """A truncated stream that cannot seek (a pipe) still yields the complete events."""

    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes):
            self._data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            chunk = self._data.read(len(b))
            b[: len(chunk)] = chunk
            return len(chunk)

    rec = read_recording(Pipe(_write(SAMPLES)[:-3]))  # type: ignore[arg-type]
    assert list(rec.events) == SAMPLES[:-1]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1\xc1\xc1\xc1",
        b"hello, world",
        b"\x00" * 64,
        b"\xdd\xff\xff\xff\xff",
        b"\x81\xa6format",
        msgpack.packb({"format": "something-else", "version": 1}),
        msgpack.packb(["chainwatch-recording", 1]),
    ],
)
def test_garbage_file(data: bytes) -> None:
    """A file that is not a chainwatch recording raises RecordingError."""
    with pytest.raises(RecordingError):
        read_recording(io.BytesIO(data))


@pytest.mark.parametrize("version", [0, 2, VERSION + 1, "1", None])
def test_wrong_version(version: Any) -> None:
    """A recording whose header has another version raises RecordingError naming it."""
    data = msgpack.packb({"format": MAGIC, "version": version}) + msgpack.packb(SAMPLES[0].to_dict())
    with pytest.raises(RecordingError, match="version"):
        read_recording(io.BytesIO(data))


def test_damaged_items_reported_and_skipped() -> None:
    """Items of unknown type, unknown fields, missing fields or not maps are reported in errors and skipped."""
    bad_items: list[Any] = [
        {"type": "teleport", **COMMON},
        {**SAMPLES[2].to_dict(), "colour": "red"},
        {"type": "exit", "pid": 1},
        [1, 2, 3],
        {"type": ["exec"], **COMMON},  # unhashable type value
        {**SAMPLES[3].to_dict(), 7: "int key"},  # mixed key types
    ]
    buf = io.BytesIO()
    writer = RecordingWriter(buf, META)
    writer.write(SAMPLES[0])
    for item in bad_items:
        buf.write(msgpack.packb(item, use_bin_type=True))
    writer.write(SAMPLES[4])
    rec = read_recording(io.BytesIO(buf.getvalue()))
    assert list(rec.events) == [SAMPLES[0], SAMPLES[4]]
    assert len(rec.errors) == len(bad_items)
    assert "item 2" in rec.errors[0] and "teleport" in rec.errors[0]
    assert "colour" in rec.errors[1]
    assert "incomplete" in rec.errors[2]
    assert "not an event map" in rec.errors[3]


def test_garbage_after_events() -> None:
    """Undecodable bytes after valid events stop reading with an error; earlier events are kept."""
    data = _write(SAMPLES[:3]) + b"\xc1" + _write(SAMPLES[3:4])
    rec = read_recording(io.BytesIO(data))
    assert list(rec.events) == SAMPLES[:3]
    assert len(rec.errors) == 1
    assert "unreadable" in rec.errors[0]
