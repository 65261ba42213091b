"""Startup seeding: synthetic Exec events for the processes that were running before the probes.

Apply the result of :func:`seed_events` to a :class:`~agent.lineage.table.ProcessTable`
(in order: parents come first) so events from pre-existing processes resolve to a process
with a name, an executable and an ancestry.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

import psutil  # type: ignore[import-untyped]

from agent.capture import parse_env_block
from agent.events import FLAG_SEEDED, Exec
from agent.lineage.identity import NS_PER_TICK, read_proc_stat, start_ticks_from_proc

__all__ = ["seed_events"]

_T = TypeVar("_T")


def _or_default(getter: Callable[[], _T], default: _T) -> _T:
    """``getter()``, or ``default`` when psutil may not read it (permissions, kernel threads)."""
    try:
        return getter()
    except psutil.AccessDenied:
        return default


def _read_env(pid: int, proc_root: str) -> dict[str, str]:
    """The wanted variables of ``<proc_root>/<pid>/environ``; empty if unreadable."""
    try:
        with open(os.path.join(proc_root, str(pid), "environ"), "rb") as fh:
            return parse_env_block(fh.read())
    except OSError:
        return {}


def _seed_one(pid: int, proc_root: str) -> Exec | None:
    """The seeded Exec event for ``pid``, or None if it vanished, is a zombie or is unreadable."""
    try:
        stat = read_proc_stat(pid, proc_root)
        if stat.state in ("Z", "X"):
            return None  # already exited; only its reaping is pending
        proc = psutil.Process(pid)
        with proc.oneshot():
            ppid = int(proc.ppid())
            uid = int(proc.uids().real)
            exe = str(_or_default(proc.exe, ""))
            argv: list[str] = _or_default(proc.cmdline, [])
            cmdline = tuple(str(arg) for arg in argv)
        env = _read_env(pid, proc_root)
        # The pid may have been reused while we read: then these fields mix two processes.
        if start_ticks_from_proc(pid, proc_root) != stat.start_ticks:
            return None
    except (psutil.NoSuchProcess, psutil.AccessDenied, OSError, ValueError):
        return None  # NoSuchProcess covers ZombieProcess
    return Exec(
        ktime=time.clock_gettime_ns(time.CLOCK_BOOTTIME),
        pid=pid,
        tid=pid,
        ppid=ppid,
        start_time=stat.start_ticks * NS_PER_TICK,
        uid=uid,
        cgroup_id=0,
        comm=stat.comm,
        flags=FLAG_SEEDED,
        filename=exe,
        args=cmdline,
        env=env,
    )


def seed_events(proc_root: str = "/proc") -> list[Exec]:
    """Synthetic Exec events (flags=FLAG_SEEDED) for every live process, oldest first.

    Each event's ``start_time`` is ``/proc/<pid>/stat`` field 22 times NS_PER_TICK, so its
    key equals the kernel's key for the same process; ``ktime`` is the CLOCK_BOOTTIME time
    of the snapshot. ``comm`` is the kernel's (from ``stat``, at most 15 characters, as in
    probe events), ``filename`` the executable ("" for kernel threads or when
    unreadable), ``args`` the command line, ``env`` the captured attribution variables,
    ``uid`` the real uid, ``cgroup_id`` 0 and ``tid`` the pid. Processes that vanish,
    zombies and unreadable processes are skipped. ``proc_root`` also redirects psutil
    (``psutil.PROCFS_PATH``) for the duration of the call.
    """
    saved = psutil.PROCFS_PATH
    psutil.PROCFS_PATH = proc_root
    try:
        events = [ev for ev in (_seed_one(pid, proc_root) for pid in psutil.pids()) if ev is not None]
    finally:
        psutil.PROCFS_PATH = saved
    events.sort(key=lambda ev: (ev.start_time, ev.pid))
    return events
