"""The process table: every known process keyed by ``(tgid, start_ticks)``, with lineage.

Fed by :meth:`ProcessTable.apply` with Exec, Fork and Exit events (and the seeded Exec
events of :func:`agent.lineage.seed.seed_events` at startup). Events may arrive out of
order (per-CPU buffers) and pids are reused, so:

* a process is identified by its key, never by its pid alone;
* a process that exited stays resolvable for ``grace_ns`` so late events still find it;
* when a newer process takes a pid, the older holder is presumed to have exited;
* memory is bounded by ``max_entries``.

Pure code: no ``/proc`` access, no clocks. Not thread-safe; use from one thread.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field

from agent.compat import SLOTS
from agent.config import LineageConfig
from agent.events import FLAG_SEEDED, Event, Exec, Exit, Fork
from agent.lineage.identity import ProcessKey, process_key

__all__ = [
    "DEFAULT_GRACE_NS",
    "DEFAULT_MAX_ENTRIES",
    "EARLY_EXIT_CAP",
    "Process",
    "ProcessTable",
]

DEFAULT_GRACE_NS = int(LineageConfig.grace_s * 10**9)
"""How long an exited process stays resolvable before :meth:`ProcessTable.reap` drops it (lineage.grace_s)."""

DEFAULT_MAX_ENTRIES = LineageConfig.max_entries
"""Default bound on the number of processes a :class:`ProcessTable` holds (lineage.max_entries)."""

EARLY_EXIT_CAP = 4096
"""How many Exit events for not-yet-known processes a table remembers (see ``apply``)."""

_COMPACT_SLACK = 1024


@dataclass(**SLOTS)
class Process:
    """One process (a thread group) as the sensor knows it.

    ``ppid``/``parent_key`` name the process that created this one (from its Fork event,
    or failing that the live holder of the Exec's ppid). They are not updated when the
    kernel reparents an orphan, so ancestry survives a double-fork daemon.
    """

    key: ProcessKey
    pid: int
    ppid: int
    parent_key: ProcessKey | None
    start_time: int  # CLOCK_BOOTTIME ns (tick resolution for seeded processes)
    comm: str = ""
    filename: str = ""  # the executable; a forked child starts with its parent's
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # attribution labels only
    uid: int = 0
    cgroup_id: int = 0
    exec_count: int = 0  # Exec events applied (a seeded snapshot counts once)
    exited_at: int | None = None  # CLOCK_BOOTTIME ns; set by Exit, or presumed on pid reuse
    exit_code: int | None = None  # None unless an Exit event was seen
    seeded: bool = False  # first known from the /proc snapshot, not from a probe
    tags: dict[str, object] = field(default_factory=dict)  # free for later stages
    # Evicted by the bound only after every other live process (a context root: losing it would drop the
    # install/CI context of everything it started).
    keep: bool = False

    @property
    def exited(self) -> bool:
        """True once the process has exited (or was presumed exited on pid reuse)."""
        return self.exited_at is not None


class ProcessTable:
    """Known processes keyed by :class:`ProcessKey`, with a pid index and lineage.

    ``grace_ns``: how long exited processes stay after their exit (see :meth:`reap`).
    ``max_entries``: the bound on ``len(table)``; when an insert exceeds it, exited
    processes are evicted oldest-exit first, then the oldest-started live ones, and live ``keep`` ones last.
    Counters: ``reaped`` (removed by :meth:`reap`), ``evicted`` (removed by the bound)
    and ``evicted_live`` (the part of ``evicted`` that had not exited).
    """

    def __init__(self, *, grace_ns: int = DEFAULT_GRACE_NS, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        """Create an empty table. Raises ValueError if ``max_entries < 1`` or ``grace_ns < 0``."""
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if grace_ns < 0:
            raise ValueError("grace_ns must not be negative")
        self.grace_ns = grace_ns
        self.max_entries = max_entries
        self.reaped = 0
        self.evicted = 0
        self.evicted_live = 0
        self._procs: dict[tuple[int, int], Process] = {}
        self._by_pid: dict[int, ProcessKey] = {}  # pid -> its newest known holder
        self._children: dict[tuple[int, int], set[ProcessKey]] = {}
        # Lazy heaps: an entry is stale once its process is gone or its exited_at changed.
        self._exit_heap: list[tuple[int, ProcessKey]] = []
        self._start_heap: list[tuple[int, ProcessKey]] = []
        # Exits that arrived before any other event of their process: key -> (ktime, code).
        self._early_exits: dict[ProcessKey, tuple[int, int]] = {}

    # ------------------------------------------------------------------ queries

    def __len__(self) -> int:
        """The number of processes held, live and exited."""
        return len(self._procs)

    def __contains__(self, key: object) -> bool:
        """True if the process ``key`` is held."""
        return key in self._procs

    def __iter__(self) -> Iterator[Process]:
        """Every held process, in insertion order."""
        return iter(list(self._procs.values()))

    def get(self, key: tuple[int, int]) -> Process | None:
        """The process with this key, if held (exited-but-unreaped processes included)."""
        return self._procs.get(key)

    def by_pid(self, pid: int, *, live_only: bool = False) -> Process | None:
        """The newest known process with this pid; with ``live_only``, only if it has not exited."""
        key = self._by_pid.get(pid)
        if key is None:
            return None
        proc = self._procs[key]
        if live_only and proc.exited_at is not None:
            return None
        return proc

    def lookup_event(self, event: Event) -> Process | None:
        """The process an event belongs to, by ``(event.pid, event.start_time)``, if held."""
        return self._procs.get(process_key(event.pid, event.start_time))

    def ancestry(self, key: tuple[int, int], max_depth: int = 64) -> list[Process]:
        """The held ancestors of ``key``: parent first, then grandparent, and so on.

        Stops at the first ancestor not held (unknown, reaped or evicted), after
        ``max_depth`` ancestors, or when a key repeats (a cycle). Excludes ``key`` itself.
        """
        out: list[Process] = []
        proc = self._procs.get(key)
        if proc is None:
            return out
        seen: set[tuple[int, int]] = {proc.key}
        parent_key = proc.parent_key
        while parent_key is not None and len(out) < max_depth and parent_key not in seen:
            parent = self._procs.get(parent_key)
            if parent is None:
                break
            out.append(parent)
            seen.add(parent_key)
            parent_key = parent.parent_key
        return out

    def children(self, key: tuple[int, int]) -> list[Process]:
        """The held processes whose parent is ``key``, oldest first (``key`` need not be held)."""
        kids = self._children.get(key)
        if not kids:
            return []
        return sorted((self._procs[k] for k in kids), key=lambda p: (p.start_time, p.pid))

    # ------------------------------------------------------------------ updates

    def apply(self, event: Event) -> Process | None:
        """Apply one event and return the process it belongs to (None if unknown).

        Exec, Fork and Exit update the table; any other event only looks its process up.

        * Fork creates the child with the exact parent key from ``parent_start_time``; a
          new child starts with its parent's filename, args and env (what a forked child
          runs). If the child is already held (its Exec came first), only the parent is
          filled in.
        * Exec creates the process (parent: the live holder of ``ppid``, if any) or
          updates it: filename, args, env, comm, uid, cgroup_id, ``exec_count += 1``.
          A seeded Exec (FLAG_SEEDED) only fills a held process that has seen no Exec.
        * Exit marks the process exited (``exited_at``, ``exit_code``); it stays held
          until reaped. An Exit for an unknown process creates nothing, but is
          remembered (up to EARLY_EXIT_CAP) so that if the process's earlier events
          arrive late, it is created already exited.
        """
        if isinstance(event, Exec):
            return self._on_exec(event)
        if isinstance(event, Fork):
            return self._on_fork(event)
        if isinstance(event, Exit):
            return self._on_exit(event)
        return self.lookup_event(event)

    def reap(self, now_ktime: int) -> int:
        """Remove processes with ``exited_at + grace_ns < now_ktime``; return how many.

        ``now_ktime`` is CLOCK_BOOTTIME ns, the clock of event ``ktime``.
        """
        deadline = now_ktime - self.grace_ns
        heap = self._exit_heap
        removed = 0
        while heap and heap[0][0] < deadline:
            exited_at, key = heapq.heappop(heap)
            proc = self._procs.get(key)
            if proc is None or proc.exited_at != exited_at:
                continue  # stale entry
            self._remove(proc)
            removed += 1
        if self._early_exits:
            self._early_exits = {k: v for k, v in self._early_exits.items() if v[0] >= deadline}
        self.reaped += removed
        self._maybe_compact()
        return removed

    # ------------------------------------------------------------------ internals

    def _on_fork(self, event: Fork) -> Process:
        key = process_key(event.pid, event.start_time)
        parent_key: ProcessKey | None
        if event.parent_start_time:
            parent_key = process_key(event.ppid, event.parent_start_time)
        else:
            parent_key = self._live_parent(event.ppid, key)
        if parent_key == key:
            parent_key = None
        proc = self._procs.get(key)
        if proc is not None:
            # Out of order: the Exec (or a duplicate Fork) came first. Keep its data.
            if parent_key is not None:
                proc.ppid = event.ppid
                self._set_parent(proc, parent_key)
            return proc
        proc = Process(
            key=key,
            pid=event.pid,
            ppid=event.ppid,
            parent_key=parent_key,
            start_time=event.start_time,
            comm=event.comm,
            uid=event.uid,
            cgroup_id=event.cgroup_id,
        )
        parent = self._procs.get(parent_key) if parent_key is not None else None
        if parent is not None:
            proc.filename = parent.filename
            proc.args = parent.args
            proc.env = dict(parent.env)
        self._insert(proc, event.ktime)
        return proc

    def _on_exec(self, event: Exec) -> Process:
        key = process_key(event.pid, event.start_time)
        seeded = bool(event.flags & FLAG_SEEDED)
        proc = self._procs.get(key)
        if proc is not None:
            if seeded and proc.exec_count > 0:
                return proc  # a probe already told us more than the snapshot can
            proc.filename = event.filename
            proc.args = event.args
            proc.env = dict(event.env)
            proc.comm = event.comm
            proc.uid = event.uid
            proc.cgroup_id = event.cgroup_id
            proc.exec_count += 1
            return proc
        proc = Process(
            key=key,
            pid=event.pid,
            ppid=event.ppid,
            parent_key=self._live_parent(event.ppid, key),
            start_time=event.start_time,
            comm=event.comm,
            filename=event.filename,
            args=event.args,
            env=dict(event.env),
            uid=event.uid,
            cgroup_id=event.cgroup_id,
            exec_count=1,
            seeded=seeded,
        )
        self._insert(proc, event.ktime)
        return proc

    def _on_exit(self, event: Exit) -> Process | None:
        key = process_key(event.pid, event.start_time)
        proc = self._procs.get(key)
        if proc is None:
            early = self._early_exits
            early.pop(key, None)
            early[key] = (event.ktime, event.exit_code)
            if len(early) > EARLY_EXIT_CAP:
                del early[next(iter(early))]
            return None
        proc.exit_code = event.exit_code
        if proc.exited_at != event.ktime:
            proc.exited_at = event.ktime
            heapq.heappush(self._exit_heap, (event.ktime, key))
        return proc

    def _live_parent(self, ppid: int, child: ProcessKey) -> ProcessKey | None:
        """The live holder of ``ppid`` if it could be ``child``'s parent (started no later)."""
        holder = self._by_pid.get(ppid)
        if holder is None or holder == child or holder.start_ticks > child.start_ticks:
            return None
        if self._procs[holder].exited_at is not None:
            return None
        return holder

    def _set_parent(self, proc: Process, parent_key: ProcessKey) -> None:
        old = proc.parent_key
        if old == parent_key:
            return
        if old is not None:
            self._unlink_child(old, proc.key)
        proc.parent_key = parent_key
        self._children.setdefault(parent_key, set()).add(proc.key)

    def _unlink_child(self, parent_key: ProcessKey, key: ProcessKey) -> None:
        kids = self._children.get(parent_key)
        if kids is not None:
            kids.discard(key)
            if not kids:
                del self._children[parent_key]

    def _mark_exited(self, proc: Process, ktime: int) -> None:
        proc.exited_at = ktime
        heapq.heappush(self._exit_heap, (ktime, proc.key))

    def _insert(self, proc: Process, ktime: int) -> None:
        key = proc.key
        early = self._early_exits.pop(key, None) if self._early_exits else None
        if early is not None:
            proc.exit_code = early[1]
            self._mark_exited(proc, early[0])
        self._procs[key] = proc
        heapq.heappush(self._start_heap, (proc.start_time, key))
        holder_key = self._by_pid.get(proc.pid)
        if holder_key is None:
            self._by_pid[proc.pid] = key
        elif key.start_ticks > holder_key.start_ticks:
            # pid reuse: the newer process means the old holder is gone.
            holder = self._procs[holder_key]
            if holder.exited_at is None:
                self._mark_exited(holder, ktime)
            self._by_pid[proc.pid] = key
        elif proc.exited_at is None:
            # A late first event of an older process: a newer one already holds the pid.
            self._mark_exited(proc, ktime)
        if proc.parent_key is not None:
            self._children.setdefault(proc.parent_key, set()).add(key)
        if len(self._procs) > self.max_entries:
            self._enforce_bound(key)

    def _remove(self, proc: Process) -> None:
        key = proc.key
        del self._procs[key]
        if self._by_pid.get(proc.pid) == key:
            del self._by_pid[proc.pid]
        if proc.parent_key is not None:
            self._unlink_child(proc.parent_key, key)
        self._children.pop(key, None)

    def _enforce_bound(self, protect: ProcessKey) -> None:
        """Evict until within ``max_entries``: exited oldest-exit first, then oldest-started."""
        excess = len(self._procs) - self.max_entries
        held: list[tuple[int, ProcessKey]] = []
        heap = self._exit_heap
        while excess > 0 and heap:
            item = heapq.heappop(heap)
            proc = self._procs.get(item[1])
            if proc is None or proc.exited_at != item[0]:
                continue
            if item[1] == protect:
                held.append(item)
                continue
            self._remove(proc)
            self.evicted += 1
            excess -= 1
        for item in held:
            heapq.heappush(heap, item)
        held = []
        kept: list[tuple[int, ProcessKey]] = []
        heap = self._start_heap
        while excess > 0 and (heap or kept):
            # Ordinary live processes first (oldest start first), then the kept ones in the same order.
            from_kept = not heap
            item = kept.pop(0) if from_kept else heapq.heappop(heap)
            proc = self._procs.get(item[1])
            if proc is None:
                continue
            if item[1] == protect:
                held.append(item)
                continue
            if proc.keep and not from_kept and proc.exited_at is None:
                kept.append(item)
                continue
            self._remove(proc)
            self.evicted += 1
            if proc.exited_at is None:
                self.evicted_live += 1
            excess -= 1
        for item in held + kept:
            heapq.heappush(heap, item)
        self._maybe_compact()

    def _maybe_compact(self) -> None:
        """Rebuild a lazy heap once stale entries outnumber live ones."""
        limit = 2 * len(self._procs) + _COMPACT_SLACK
        if len(self._start_heap) > limit:
            self._start_heap = [(p.start_time, p.key) for p in self._procs.values()]
            heapq.heapify(self._start_heap)
        if len(self._exit_heap) > limit:
            self._exit_heap = [(p.exited_at, p.key) for p in self._procs.values() if p.exited_at is not None]
            heapq.heapify(self._exit_heap)
