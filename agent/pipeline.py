"""One straight path from raw records to consumers: decode -> process table -> derived signals -> consumers.

Live and replay both enter here: the daemon with raw ring-buffer records (:meth:`Pipeline.feed_records`),
replay with decoded events (:meth:`Pipeline.feed`).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Final, Protocol

import structlog

from agent.decode import DecodeError, decode
from agent.events import FLAG_SEEDED, Event, Exec, ModuleLoad
from agent.lineage.table import Process, ProcessTable

log = structlog.get_logger()

# Executables whose exec is a module-load attempt, for kernels without init_module/finit_module
# tracepoints. kmod is multi-call: its argv[0] says which tool it is.
MODULE_LOADERS: Final = frozenset({"insmod", "modprobe"})
MULTICALL: Final = frozenset({"kmod", "busybox"})

Consumer = Callable[[Event], None]


class Tagger(Protocol):
    """Runs right after the process table, before any consumer: the context tagger (agent.context)."""

    def __call__(self, event: Event, proc: Process | None, /) -> None: ...

    def stats(self) -> dict[str, int]: ...


class Detection(Protocol):
    """The last consumer: detection (agent.detect.engine), with windows to close and counters to report."""

    def __call__(self, event: Event, /) -> None: ...

    def prune(self, now_ktime: int, /) -> None: ...

    def stats(self) -> dict[str, int]: ...


def module_load_from_exec(event: Exec) -> ModuleLoad | None:
    """A module_load signal for an exec of insmod/modprobe (or kmod/busybox invoked as one)."""
    name = os.path.basename(event.filename)
    if name in MULTICALL and event.args:
        name = os.path.basename(event.args[0])
    if name not in MODULE_LOADERS:
        return None
    if name == "modprobe" and any(
        a in ("-r", "--remove", "-n", "--dry-run", "-c", "--showconfig") for a in event.args[1:]
    ):
        return None  # removal or a dry run loads nothing
    return ModuleLoad(
        ktime=event.ktime,
        pid=event.pid,
        tid=event.tid,
        ppid=event.ppid,
        start_time=event.start_time,
        uid=event.uid,
        cgroup_id=event.cgroup_id,
        comm=event.comm,
        flags=event.flags,
        source="exec",
        syscall="execve",
        filename=event.filename,
        args=event.args,
    )


class Pipeline:
    """Feeds events through the process table and on to consumers, counting everything it sees.

    ``taps`` see only the primary events (what the kernel or the /proc seed produced): the recorder is one.
    ``consumers`` see primary and derived events (the replay dump, a test's event list), then ``detection``.
    agent.assemble builds the daemon's, replay's and the tests' pipelines.
    """

    def __init__(
        self,
        table: ProcessTable,
        *,
        module_loads_from_exec: bool,
        taps: Iterable[Consumer] = (),
        consumers: Iterable[Consumer] = (),
        tagger: Tagger | None = None,
        detection: Detection | None = None,
    ):
        self.table = table
        self.tagger = tagger
        self.detection = detection
        self.module_loads_from_exec = module_loads_from_exec
        self.taps = list(taps)
        self.consumers: list[Consumer] = [*consumers, *([detection] if detection is not None else [])]
        self.counts: Counter[str] = Counter()
        self.decode_errors = 0
        self.consumer_errors = 0

    def feed_records(self, records: Iterable[bytes]) -> None:
        """Decode and feed raw records. A bad record is counted and logged, never fatal."""
        for raw in records:
            try:
                event = decode(raw)
            except DecodeError as exc:
                self.decode_errors += 1
                log.warning("record_rejected", reason=str(exc), size=len(raw), total=self.decode_errors)
                continue
            self.feed(event)

    def feed(self, event: Event) -> None:
        """Feed one decoded event."""
        self.counts[event.type] += 1
        proc = self.table.apply(event)
        if self.tagger is not None:
            self.tagger(event, proc)
        for tap in self.taps:
            tap(event)
        self._deliver(event)
        if self.module_loads_from_exec and isinstance(event, Exec) and not event.flags & FLAG_SEEDED:
            derived = module_load_from_exec(event)
            if derived is not None:
                self.counts[derived.type] += 1
                self._deliver(derived)

    def _deliver(self, event: Event) -> None:
        for consumer in self.consumers:
            try:
                consumer(event)
            except Exception:  # one bad consumer must not stop the sensor; it is counted and logged
                self.consumer_errors += 1
                log.exception(
                    "consumer_failed", consumer=getattr(consumer, "__qualname__", repr(consumer)), event_type=event.type
                )

    def prune(self, now_ktime: int) -> None:
        """Close detection's expired windows and incidents (on the stats tick)."""
        if self.detection is not None:
            self.detection.prune(now_ktime)

    def detection_stats(self) -> dict[str, int]:
        """Detection's and the tagger's counters for the stats line."""
        out = self.detection.stats() if self.detection is not None else {}
        return {**out, **(self.tagger.stats() if self.tagger is not None else {})}

    def stats(self) -> dict[str, object]:
        """Counters for the periodic stats line."""
        return {
            "events": dict(self.counts),
            "decode_errors": self.decode_errors,
            "consumer_errors": self.consumer_errors,
            "processes": len(self.table),
            "reaped": self.table.reaped,
            "evicted": self.table.evicted,
        }
