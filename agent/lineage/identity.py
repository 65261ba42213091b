"""Process identity: ``(tgid, start_ticks)``, the same in kernel events and in ``/proc``.

The kernel stamps every event with ``start_time``, the thread-group leader's
``task->start_boottime`` in CLOCK_BOOTTIME nanoseconds. ``/proc/<pid>/stat`` field 22
reports the same instant in clock ticks (USER_HZ): the kernel computes it as
``start_boottime // (10**9 // USER_HZ)``. Dividing the event's nanoseconds the same way
gives a key that matches a process seen only through ``/proc`` (the startup seed), and
that never matches a later process that reuses the pid.

Caveat: inside a time namespace ``/proc/<pid>/stat`` adds the namespace's boottime
offset; the sensor reads ``/proc`` from the initial time namespace, where it is zero.
"""

from __future__ import annotations

import base64
import hashlib
import os
from typing import NamedTuple

__all__ = [
    "NS_PER_TICK",
    "USER_HZ",
    "ProcStat",
    "ProcessKey",
    "entity_id",
    "parse_proc_stat",
    "process_key",
    "read_proc_stat",
    "start_ticks_from_proc",
]


def _user_hz() -> int:
    try:
        hz = os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError):
        return 100
    return hz if hz > 0 else 100


USER_HZ: int = _user_hz()
"""Clock ticks per second of ``/proc`` times (``sysconf(_SC_CLK_TCK)``; 100 on x86 and arm64)."""

NS_PER_TICK: int = 10**9 // USER_HZ
"""Nanoseconds per USER_HZ tick: the kernel's divisor for ``/proc/<pid>/stat`` start time."""

ENTITY_ID_LENGTH = 22
"""Characters in an :func:`entity_id` (22 urlsafe base64 characters = 132 bits)."""


class ProcessKey(NamedTuple):
    """The identity of one process: its tgid and its start time in USER_HZ ticks since boot."""

    pid: int
    start_ticks: int


class ProcStat(NamedTuple):
    """The fields of ``/proc/<pid>/stat`` that lineage needs."""

    pid: int
    comm: str
    state: str
    ppid: int
    start_ticks: int


_tuple_new = tuple.__new__


def process_key(pid: int, start_time_ns: int) -> ProcessKey:
    """The key of process ``pid`` that started at ``start_time_ns`` (CLOCK_BOOTTIME ns)."""
    # ProcessKey(pid, ticks) without the NamedTuple constructor's extra Python frame (hot path).
    return _tuple_new(ProcessKey, (pid, start_time_ns // NS_PER_TICK))


def parse_proc_stat(text: bytes | str) -> ProcStat:
    """Parse the contents of a ``/proc/<pid>/stat`` file.

    ``comm`` may contain spaces and parentheses, so it is everything between the first
    ``(`` and the LAST ``)``; the numbered fields are split after that. Raises ValueError
    on anything malformed.
    """
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    open_at = raw.find(b"(")
    close_at = raw.rfind(b")")
    if open_at < 0 or close_at < open_at:
        raise ValueError("malformed stat line: no (comm)")
    try:
        pid = int(raw[:open_at].strip())
    except ValueError:
        raise ValueError("malformed stat line: bad pid") from None
    comm = raw[open_at + 1 : close_at].decode("utf-8", "replace")
    rest = raw[close_at + 1 :].split()
    # rest[0] is field 3 (state), so field N is rest[N - 3]; start time is field 22.
    if len(rest) < 20:
        raise ValueError(f"malformed stat line: {len(rest) + 2} fields, need at least 22")
    try:
        ppid = int(rest[1])
        start_ticks = int(rest[19])
    except ValueError:
        raise ValueError("malformed stat line: non-numeric ppid or start time") from None
    return ProcStat(pid, comm, rest[0].decode("ascii", "replace"), ppid, start_ticks)


def read_proc_stat(pid: int, proc_root: str | os.PathLike[str] = "/proc") -> ProcStat:
    """Read and parse ``<proc_root>/<pid>/stat``.

    Raises OSError (FileNotFoundError, ProcessLookupError) if the process is gone and
    ValueError if the file is malformed.
    """
    with open(os.path.join(proc_root, str(pid), "stat"), "rb") as fh:
        return parse_proc_stat(fh.read())


def start_ticks_from_proc(pid: int, proc_root: str | os.PathLike[str] = "/proc") -> int:
    """Process ``pid``'s start time in USER_HZ ticks since boot (``/proc/<pid>/stat`` field 22).

    Raises OSError if the process is gone and ValueError if the stat file is malformed.
    """
    return read_proc_stat(pid, proc_root).start_ticks


def entity_id(host_id: str, key: ProcessKey) -> str:
    """A stable, opaque id for process ``key`` on host ``host_id``, unique across pid reuse.

    The first 132 bits of ``sha256("{host_id}:{pid}:{start_ticks}")`` in urlsafe base64
    (22 characters, no padding).
    """
    digest = hashlib.sha256(f"{host_id}:{key[0]}:{key[1]}".encode()).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")[:ENTITY_ID_LENGTH]
