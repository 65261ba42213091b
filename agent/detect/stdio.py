"""The stdio graph: who holds each end of every pipe, FIFO, unix socketpair and pty, and who holds a
connection to a remote peer. A reverse shell is a relation, not a process (shared/design/architecture.md,
"Reverse shells are a graph"): a command interpreter reads its commands from a remote peer and sends its
output back, directly (the socket on its stdio) or through a few hops of pipes, FIFOs, socketpairs or a pty.

The kernel reports identities (agent.events.Exec.stdio_ids, FdOpen, the sock_id of connects and accepts);
this module joins them. Pure: no /proc, no clocks. Where an end has no known holder on the other side, the
process that created the shell is presumed to hold it (popen, child_process.spawn and pty.fork create the
pipe, socketpair or pty in the parent and never exec with it on their own stdio).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from agent.context import context_of
from agent.events import FLAG_EXE_DELETED, FLAG_EXE_MEMFD, Accept, Connect, Event, Exec, Exit, FdOpen, Fork, Listen
from agent.lineage.identity import ProcessKey, process_key
from agent.lineage.table import Process, ProcessTable
from agent.ruleset.lists import Lists

MAX_HOPS = 3  # a relay is a few hops: nc -> FIFO -> cat -> pipe -> python -> pty -> sh is three
MAX_VISIT = 64  # bound on the processes one evaluation or one neighbourhood walk looks at
# An end held by more processes than this is a shared output or log pipe (a build's stdout, a terminal), never a
# relay hop: it is skipped, which also keeps every walk short on a busy build host.
MAX_HOLDERS = 8
EXIT_GRACE_NS = 30 * 10**9  # an exited holder's ends stay known this long (events arrive out of order)
ATTEMPTED = (0, -115, -11, -114)  # success, EINPROGRESS, EAGAIN, EALREADY
TEMP_DIRS = ("/tmp/", "/var/tmp/", "/dev/shm/", "/run/user/")
INLINE_FLAGS = {
    "python": ("-c",),
    "perl": ("-e", "-E"),
    "ruby": ("-e",),
    "php": ("-r",),
    "node": ("-e", "--eval", "-p", "--print"),
    "lua": ("-e",),
    "tclsh": (),
    "awk": (),
}


@dataclass(frozen=True)
class Conn:
    """A connection to a remote peer, as the kernel reported it."""

    sock_id: str
    daddr: str  # the remote peer
    dport: int
    laddr: str  # the local end (for a bind shell: the listening address and port)
    lport: int
    family: str
    transport: str
    ingress: bool  # accepted, not connected


@dataclass
class Node:
    """One process's ends and connections."""

    key: ProcessKey
    stdio: tuple[str, ...] = ()  # fd 0, 1, 2 identities at the last exec (or inherited at fork)
    peers: tuple[str, ...] = ()
    opened_reads: set[str] = field(default_factory=set)  # FIFOs opened for reading, pty masters
    opened_writes: set[str] = field(default_factory=set)
    conns: list[Conn] = field(default_factory=list)
    exited_at: int | None = None

    def reads(self) -> set[str]:
        out = set(self.opened_reads)
        if self.stdio and self.stdio[0]:
            out.add(self.stdio[0])
        out.update(e for e in self.stdio[1:] if is_duplex(e))
        return out

    def writes(self) -> set[str]:
        out = set(self.opened_writes)
        out.update(e for e in self.stdio[1:] if e)
        if self.stdio and is_duplex(self.stdio[0]):
            out.add(self.stdio[0])
        return out

    def ends(self) -> set[str]:
        return self.reads() | self.writes()


def is_duplex(end: str) -> bool:
    """Socketpairs, ptys and sockets carry both directions; a pipe or FIFO one."""
    return end.startswith(("unix:", "pty:", "ptm:", "sock:"))


def is_channel(end: str) -> bool:
    """An end that can join two processes (not a file, a tty of a person, or /dev/null)."""
    return end.startswith(("fifo:", "unix:", "pty:", "ptm:", "sock:"))


@dataclass(frozen=True)
class Reach:
    """A remote connection reached from a process's stdio, and how."""

    holder: ProcessKey
    conn: Conn
    hops: int  # 0: the socket is on the process's own stdio
    path: tuple[str, ...]  # the program names along the way, for the alert's reason


@dataclass(frozen=True)
class Verdict:
    """What the graph says about one command process."""

    inputs: tuple[Reach, ...]
    outputs: tuple[Reach, ...]


class StdioGraph:
    """Keeps the graph up to date from events and answers: where do this process's input and output lead?"""

    def __init__(self, lists: Lists, table: ProcessTable):
        self.lists = lists
        self.table = table
        self.nodes: dict[ProcessKey, Node] = {}
        self.holders: dict[str, set[ProcessKey]] = {}  # end id -> processes holding it
        self.unix_peer: dict[str, str] = {}
        self.conn_by_sock: dict[str, Conn] = {}
        self.sock_owner: dict[str, ProcessKey] = {}  # the process that connected or accepted the socket
        self.stdio_owner: dict[ProcessKey, ProcessKey] = {}  # who opened the socket a process exec'd with
        self.listening: set[int] = set()  # local ports some process listens on

    # ------------------------------------------------------------------ updates

    def observe(self, event: Event) -> list[ProcessKey]:
        """Apply one event; returns the processes whose neighbourhood changed (to be judged again)."""
        key = process_key(event.pid, event.start_time)
        if isinstance(event, Exec):
            self._on_exec(key, event)
            return [key]
        if isinstance(event, Fork):
            parent = self.nodes.get(process_key(event.ppid, event.parent_start_time))
            if parent is not None and key not in self.nodes:
                node = self._node(key)
                self._set_stdio(node, parent.stdio, parent.peers)
                node.opened_reads, node.opened_writes = set(parent.opened_reads), set(parent.opened_writes)
                for end in node.opened_reads | node.opened_writes:
                    self.holders.setdefault(end, set()).add(key)
                node.conns = list(parent.conns)  # a forked child holds its parent's sockets
            return []
        if isinstance(event, Exit):
            gone = self.nodes.get(key)
            if gone is not None:
                gone.exited_at = event.ktime
                self._drop_holder(gone)  # an exited holder holds nothing (its pipes' inodes get reused)
            return []
        if isinstance(event, Connect):
            if event.result in ATTEMPTED and self.lists.is_remote(event.daddr):
                self._add_conn(
                    key,
                    Conn(
                        event.sock_id,
                        event.daddr,
                        event.dport,
                        event.laddr,
                        event.lport,
                        event.family,
                        event.transport,
                        ingress=False,
                    ),
                )
                return [key]
            return []
        if isinstance(event, Accept):
            if self.lists.is_remote(event.saddr):
                self._add_conn(
                    key,
                    Conn(
                        event.sock_id,
                        event.saddr,
                        event.sport,
                        event.laddr,
                        event.lport,
                        event.family,
                        event.transport,
                        ingress=True,
                    ),
                )
                return [key]
            return []
        if isinstance(event, Listen):
            if event.result == 0 and event.lport:
                self.listening.add(event.lport)
            return []
        if isinstance(event, FdOpen) and event.end_id:
            node = self._node(key)
            if event.kind == "ptmx" or event.access == "rw":
                node.opened_reads.add(event.end_id)
                node.opened_writes.add(event.end_id)
            elif event.access == "r":
                node.opened_reads.add(event.end_id)
            else:
                node.opened_writes.add(event.end_id)
            self.holders.setdefault(event.end_id, set()).add(key)
            return [key]
        return []

    def _drop_holder(self, node: Node) -> None:
        for end in node.ends():
            holders = self.holders.get(end)
            if holders is not None:
                holders.discard(node.key)
                if not holders:
                    del self.holders[end]
                    self.unix_peer.pop(end, None)

    def _node(self, key: ProcessKey) -> Node:
        node = self.nodes.get(key)
        if node is None:
            node = self.nodes[key] = Node(key)
        return node

    def _set_stdio(self, node: Node, stdio: tuple[str, ...], peers: tuple[str, ...]) -> None:
        for end in node.stdio:
            if end and end not in node.opened_reads | node.opened_writes:
                holders = self.holders.get(end)
                if holders is not None:
                    holders.discard(node.key)
                    if not holders:
                        del self.holders[end]
        node.stdio, node.peers = stdio, peers
        for end, peer in zip(stdio, peers):
            if is_channel(end):
                self.holders.setdefault(end, set()).add(node.key)
            if peer:
                self.unix_peer[end], self.unix_peer[peer] = peer, end

    def _on_exec(self, key: ProcessKey, event: Exec) -> None:
        node = self._node(key)
        node.exited_at = None
        proc = self.table.get(key)
        if proc is not None:
            proc.tags["exe_flags"] = event.flags & (FLAG_EXE_MEMFD | FLAG_EXE_DELETED)
        self._set_stdio(node, event.stdio_ids or ("",) * 3, event.stdio_peers or ("",) * 3)
        # Sockets survive exec only when they are on stdio as far as we can tell (most are close-on-exec).
        conns = []
        self.stdio_owner.pop(key, None)
        if event.stdio_socket_fd >= 0 and self.lists.is_remote(event.stdio_daddr):
            sock_id = event.stdio_ids[event.stdio_socket_fd] if event.stdio_ids else ""
            conn = self.conn_by_sock.get(sock_id) if sock_id else None
            owner = self.sock_owner.get(sock_id) if sock_id else None
            if conn is None:  # not seen by sock_id: the process's own earlier connection to the same peer?
                conn = next(
                    (c for c in node.conns if (c.daddr, c.dport) == (event.stdio_daddr, event.stdio_dport)), None
                )
                owner = key if conn is not None else None
            if owner is not None:
                self.stdio_owner[key] = owner
            if conn is None:
                conn = Conn(
                    sock_id,
                    event.stdio_daddr,
                    event.stdio_dport,
                    event.stdio_laddr,
                    event.stdio_lport,
                    event.stdio_family,
                    event.stdio_transport,
                    ingress=event.stdio_lport in self.listening,
                )
            conns.append(conn)
        node.conns = conns

    def _add_conn(self, key: ProcessKey, conn: Conn) -> None:
        if conn.sock_id:
            self.conn_by_sock[conn.sock_id] = conn
            self.sock_owner[conn.sock_id] = key
        node = self._node(key)
        node.conns.append(conn)
        del node.conns[:-16]  # bounded: a crawler's hundredth connection says nothing new

    def prune(self, now_ktime: int) -> None:
        """Forget processes that exited more than EXIT_GRACE_NS ago."""
        for key, node in list(self.nodes.items()):
            if node.exited_at is not None and now_ktime - node.exited_at > EXIT_GRACE_NS:
                self._drop_holder(node)
                for conn in node.conns:
                    if conn.sock_id and self.sock_owner.get(conn.sock_id) == key:
                        self.conn_by_sock.pop(conn.sock_id, None)
                        del self.sock_owner[conn.sock_id]
                self.stdio_owner.pop(key, None)
                del self.nodes[key]

    # ------------------------------------------------------------------ queries

    def proc(self, key: ProcessKey) -> Process | None:
        return self.table.get(key)

    def name_of(self, proc: Process) -> str:
        """The program ``proc`` runs: what its executed file was identified as by content or inode
        (agent.detect.exeid; a renamed bash is bash), else its basename or multi-call applet."""
        known = proc.tags.get("program")
        return known if isinstance(known, str) else self.lists.program(proc.filename, proc.args)

    def program(self, key: ProcessKey) -> str:
        """The program a process runs, by name (see name_of)."""
        proc = self.table.get(key)
        return self.name_of(proc) if proc else ""

    def is_command_reader(self, key: ProcessKey) -> bool:
        """A shell or an interpreter: a program that runs the commands it reads."""
        proc = self.table.get(key)
        if proc is None:
            return False
        name = self.name_of(proc)
        return self.lists.is_shell(name) or self.lists.is_interpreter(name)

    def reads_commands_from_stdin(self, key: ProcessKey) -> bool:
        """A shell or interpreter that takes its commands from stdin (no -c, no script operand; or -i/-s):
        what a relay feeds. `sh -c CMD` and `bash script.sh` take theirs from argv or a file."""
        proc = self.table.get(key)
        if proc is None:
            return False
        rest = list(proc.args[1:])
        if os.path.basename(proc.filename) in self.lists.multicall:
            rest = rest[1:] if proc.args and os.path.basename(proc.args[0]) in self.lists.multicall else rest
        opts = [a for a in rest if a.startswith("-")]
        if any(
            o in ("-i", "-s") or (len(o) > 1 and o[1] != "-" and ("i" in o or "s" in o) and "c" not in o) for o in opts
        ):
            return True
        if any(o == "-c" or (len(o) > 1 and o[1] != "-" and "c" in o) or o in ("-e", "-E", "-r") for o in opts):
            return False
        return not [a for a in rest if not a.startswith("-")]

    def is_legitimate(self, key: ProcessKey) -> bool:
        """A process whose job is to hand connections or ptys to shells, or the install/CI machinery itself."""
        proc = self.table.get(key)
        if proc is None:
            return False
        if self.lists.is_socket_holder(proc.filename) or proc.filename in self.lists.unpackers:
            return True
        context = context_of(proc)
        while context is not None:
            if context.root == key:
                return True
            context = context.outer
        return False

    def conn(self, sock_id: str) -> Conn | None:
        """The remote connection of a socket, if one was seen."""
        return self.conn_by_sock.get(sock_id) if sock_id else None

    def opener(self, sock_id: str) -> ProcessKey | None:
        """The process that connected or accepted the socket."""
        return self.sock_owner.get(sock_id) if sock_id else None

    def live_conns(self, key: ProcessKey) -> list[Conn]:
        node = self.nodes.get(key)
        return list(node.conns) if node is not None else []

    def neighbourhood(self, key: ProcessKey, *, children: bool = False) -> list[ProcessKey]:
        """Processes within MAX_HOPS of ``key`` through shared ends, ``key`` included (at most MAX_VISIT). With
        ``children``, also ``key``'s live children: a process that just connected may already have spawned the
        shell it feeds through ends it never exec'd with (child_process.spawn before connect)."""
        seen = {key}
        if children:
            kids = self.table.children(key)
            seen.update(c.key for c in kids[-MAX_HOLDERS:] if not c.exited)
        frontier = list(seen)
        for _ in range(MAX_HOPS):
            nxt = []
            for k in frontier:
                for other in self._adjacent(k):
                    if other not in seen:
                        seen.add(other)
                        nxt.append(other)
                        if len(seen) >= MAX_VISIT:
                            return list(seen)
            frontier = nxt
        return list(seen)

    def _adjacent(self, key: ProcessKey) -> Iterator[ProcessKey]:
        node = self.nodes.get(key)
        if node is not None:
            for end in node.ends():
                for far in (end, self._far(end)):
                    holders = self.holders.get(far, ()) if far else ()
                    if len(holders) <= MAX_HOLDERS:
                        yield from holders

    def _alive(self, key: ProcessKey) -> bool:
        node = self.nodes.get(key)
        return node is not None and node.exited_at is None

    def _far(self, end: str) -> str:
        """The id of the other side of a duplex end ("" for a pipe, FIFO or inet socket: the same id)."""
        if end.startswith("unix:"):
            return self.unix_peer.get(end, "")
        if end.startswith("pty:"):
            return "ptm:" + end[4:]
        if end.startswith("ptm:"):
            return "pty:" + end[4:]
        return ""

    def _counterparts(self, key: ProcessKey, end: str, want_writers: bool) -> list[ProcessKey]:
        return self._counterparts_how(key, end, want_writers)[0]

    def _counterparts_how(self, key: ProcessKey, end: str, want_writers: bool) -> tuple[list[ProcessKey], bool]:
        """The processes on the other side of ``end`` from ``key``: for a pipe or FIFO its writers (or
        readers); for a socketpair or pty whoever holds the far end. When none is known, the process that
        created ``key`` holds it, unless that process has the same end on its own stdio (inherited)."""
        far = self._far(end)
        out: list[ProcessKey] = []
        # Only live holders: a freed pipe's inode number is reused, so an exited holder's end may now be
        # another pipe altogether.
        if len(self.holders.get(end, ())) > MAX_HOLDERS or len(self.holders.get(far, ())) > MAX_HOLDERS:
            return [], False  # a shared output pipe or terminal, not a relay hop
        if far:
            out = [k for k in self.holders.get(far, ()) if k != key and self._alive(k)]
        elif end.startswith("fifo:"):
            for k in self.holders.get(end, ()):
                if k == key or not self._alive(k):
                    continue
                other = self.nodes.get(k)
                if other is not None and end in (other.writes() if want_writers else other.reads()):
                    out.append(k)
        if out:
            return out, False
        proc = self.table.get(key)
        parent_key = proc.parent_key if proc else None
        parent = self.nodes.get(parent_key) if parent_key is not None else None
        if parent_key is not None and (parent is None or end not in parent.ends()):
            return [parent_key], True  # the creator made it (pipe2/socketpair/openpty before fork)
        return [], False  # inherited from a creator that does not say where it leads

    def _reach(
        self, key: ProcessKey, outward: bool, hops: int, seen: set[ProcessKey], path: tuple[str, ...]
    ) -> Iterator[Reach]:
        node = self.nodes.get(key)
        if node is None or hops > MAX_HOPS or len(seen) > MAX_VISIT:
            return
        ends = node.writes() if outward else node.reads()
        for end in ends:
            if end.startswith("sock:"):
                conn = self.conn_by_sock.get(end) or next((c for c in node.conns if c.sock_id == end), None)
                if conn is not None:
                    yield Reach(key, conn, hops, path)
                continue
            if not is_channel(end):
                continue
            others, presumed = self._counterparts_how(key, end, want_writers=not outward)
            for other in others:
                if other in seen:
                    continue
                seen.add(other)
                if self.is_legitimate(other):
                    continue  # a login, a terminal, the CI runner: the chain ends there, quietly
                name = self.program(other) or "?"
                conns = self.live_conns(other)
                if conns:
                    yield Reach(other, conns[-1], hops + 1, (*path, name))
                    continue
                if not presumed:  # a presumed holder is believed for its own connection, never walked past
                    yield from self._reach(other, outward, hops + 1, seen, (*path, name))

    def judge(self, key: ProcessKey) -> Verdict:
        """Where the input and the output of process ``key`` lead (remote connections reached)."""
        if self.is_legitimate(key):
            return Verdict((), ())
        inputs = tuple(self._reach(key, outward=False, hops=0, seen={key}, path=()))
        outputs = tuple(self._reach(key, outward=True, hops=0, seen={key}, path=()))
        return Verdict(inputs, outputs)

    def created_ends(self, child: ProcessKey) -> tuple[bool, bool]:
        """(stdin, stdout) of ``child`` lead straight back to its creator: ends the creator made for it."""
        node = self.nodes.get(child)
        proc = self.table.get(child)
        if node is None or proc is None or proc.parent_key is None:
            return False, False
        parent = proc.parent_key

        def back(end: str, want_writers: bool) -> bool:
            return (
                is_channel(end)
                and not end.startswith("sock:")
                and parent in self._counterparts(child, end, want_writers)
            )

        stdin = bool(node.stdio) and back(node.stdio[0], True)
        stdout = any(back(e, False) for e in node.stdio[1:])
        return stdin, stdout

    def suspicious_program(self, key: ProcessKey) -> bool:
        """An interpreter running code given inline, on its stdin or from a temp directory, or a binary run
        from a temp directory, a memfd or a deleted file: what an implant looks like, not an installed tool."""
        proc = self.table.get(key)
        if proc is None:
            return False
        exe_flags = proc.tags.get("exe_flags", 0)
        if proc.filename.startswith(TEMP_DIRS) or (
            isinstance(exe_flags, int) and exe_flags & (FLAG_EXE_MEMFD | FLAG_EXE_DELETED)
        ):
            return True
        name = self.name_of(proc)
        family = next((f for f in INLINE_FLAGS if name.startswith(f) or name.endswith(f)), None)
        if family is None:
            return False
        rest = proc.args[1:]
        if any(a in INLINE_FLAGS[family] for a in rest):
            return True
        scripts = [a for a in rest if not a.startswith("-")]
        if not scripts:
            node = self.nodes.get(key)
            return bool(node and node.stdio and is_channel(node.stdio[0]))  # program read from a pipe
        return scripts[0].startswith(TEMP_DIRS)
