"""Hand-built event streams for unit and replay tests: a few processes by pid, each event at ``t`` seconds after
the stream's boot time, with the header (start time, parent, comm) the kernel would give it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from agent.events import Accept, Connect, Event, Exec, FileWrite, Fork, SocketDup
from agent.recording import RecordingWriter
from tests.helpers.addresses import ATTACKER_IP4, VICTIM_IP4

S = 10**9  # ns per second
# The two ends of hand-built streams are the lab's victim and attacker.
LOCAL = VICTIM_IP4
REMOTE = ATTACKER_IP4


class EventStream:
    """Builds the events of a few processes and hands each to :meth:`feed` (by default: kept in ``events``).
    ``start``, ``ppid`` and ``comm`` hold each pid's start time, parent and command name as the kernel reports
    them; a test may set them directly to make up a process whose fork was never seen."""

    def __init__(self, *, t0: int = 1_000 * S, cgroup_id: int = 7, uid: int = 1000) -> None:
        self.t0, self.cgroup_id, self.uid = t0, cgroup_id, uid
        self.events: list[Event] = []
        self.start: dict[int, int] = {}
        self.ppid: dict[int, int] = {}
        self.comm: dict[int, str] = {}

    def feed(self, event: Event) -> None:
        self.events.append(event)

    def header(self, pid: int, t: float) -> dict[str, Any]:
        """The fields every event of ``pid`` at ``t`` carries."""
        return {
            "ktime": int(self.t0 + t * S),
            "pid": pid,
            "tid": pid,
            "ppid": self.ppid[pid],
            "start_time": self.start[pid],
            "uid": self.uid,
            "cgroup_id": self.cgroup_id,
            "comm": self.comm[pid],
        }

    def fork(self, pid: int, parent: int, t: float) -> None:
        """Only a Fork: the child runs its parent's program."""
        self.start[pid], self.ppid[pid], self.comm[pid] = int(self.t0 + t * S), parent, self.comm[parent]
        self.feed(Fork(**self.header(pid, t), parent_start_time=self.start[parent]))

    def spawn(
        self,
        pid: int,
        parent: int | None,
        filename: str,
        args: tuple[str, ...],
        t: float = 0.0,
        stdio: tuple[str, ...] = ("chr", "chr", "chr"),
        **exec_fields: Any,
    ) -> None:
        """Fork (when there is a parent; else a process of init's) and Exec of ``filename`` in ``pid`` at ``t``."""
        if parent is not None:
            self.fork(pid, parent, t)
        else:
            self.start[pid], self.ppid[pid] = int(self.t0 + t * S), 1
        self.exec(pid, filename, args, t + 0.001, stdio=stdio, **exec_fields)

    def exec(
        self,
        pid: int,
        filename: str,
        args: tuple[str, ...],
        t: float,
        stdio: tuple[str, ...] = ("chr", "chr", "chr"),
        **exec_fields: Any,
    ) -> None:
        """An Exec in an existing process (a new program in place, e.g. `bash -c` running its only command)."""
        self.comm[pid] = os.path.basename(filename)[:15]
        self.feed(Exec(**self.header(pid, t), filename=filename, args=args, stdio=stdio, **exec_fields))

    def connect(self, pid: int, daddr: str, dport: int, t: float, result: int = 0, **fields: Any) -> None:
        family = "ipv6" if ":" in daddr else "ipv4"
        self.feed(
            Connect(
                **self.header(pid, t),
                fd=3,
                family=family,
                transport="tcp",
                daddr=daddr,
                dport=dport,
                result=result,
                **fields,
            )
        )

    def dup(self, pid: int, newfd: int, t: float, daddr: str = REMOTE, dport: int = 4444, family: str = "ipv4") -> None:
        """dup2 of a connected socket (fd 3) onto ``newfd``."""
        self.feed(
            SocketDup(
                **self.header(pid, t),
                oldfd=3,
                newfd=newfd,
                syscall="dup2",
                family=family,
                transport="tcp" if family != "unix" else "stream",
                daddr=daddr,
                dport=dport,
            )
        )

    def accept(self, pid: int, saddr: str, sport: int, lport: int, t: float, **fields: Any) -> None:
        self.feed(
            Accept(
                **self.header(pid, t),
                fd=4,
                family="ipv4",
                transport="tcp",
                saddr=saddr,
                sport=sport,
                lport=lport,
                **fields,
            )
        )

    def file_write(self, pid: int, path: str, t: float, flags_open: int = 0o1101, **fields: Any) -> None:
        """An open for writing (O_WRONLY|O_CREAT|O_TRUNC unless told) of ``path``."""
        self.feed(FileWrite(**self.header(pid, t), path=path, operation="open", flags_open=flags_open, **fields))

    def write_recording(self, path: Path, meta: dict[str, Any]) -> None:
        """The events kept so far as a recording file (what `chainwatch replay` reads)."""
        with open(path, "wb") as fh:
            writer = RecordingWriter(fh, meta)
            for event in self.events:
                writer.write(event)
            writer.flush()
