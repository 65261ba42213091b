"""The detectors: pure functions of (event, process table) that return signals.

Each detector matches on the executable path and argv recorded at exec, never on comm alone.
A connect, dup or exec whose peer is local (loopback, link-local, multicast, unspecified) never counts.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from agent.context import context_of
from agent.detect.exeid import ExeIdentity
from agent.detect.signals import Signal
from agent.detect.stdio import Conn, StdioGraph
from agent.events import (
    FLAG_EXE_DELETED,
    FLAG_EXE_MEMFD,
    Accept,
    Connect,
    Event,
    Exec,
    FileWrite,
    Fork,
    ModuleLoad,
    SocketDup,
)
from agent.lineage.identity import ProcessKey, process_key
from agent.lineage.table import Process, ProcessTable
from agent.ruleset import catalog
from agent.ruleset.lists import Lists
from agent.ruleset.rules import Rule, RuleSet

ELASTIC_WINDOW_NS = 1_000_000_000  # the Elastic seed's maxspan=1s between the exec and the connect
TUNNEL_WINDOW_NS = 5_000_000_000  # a tunnel tool's first remote connect names the alert's destination
# Connect results that are attempts (the seed counts connection_attempted): success and in-progress.
ATTEMPTED = (0, -errno.EINPROGRESS, -errno.EAGAIN, -errno.EALREADY)
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
TRACKING_VAR = "RUNNER_TRACKING_ID"
BEACON_WINDOW_NS = 600 * 10**9  # downloads run again from one destination within this window are a beacon


def basename(path: str) -> str:
    """The last path component."""
    return os.path.basename(path)


def _any(args: Sequence[str], *patterns: str) -> bool:
    return any(fnmatchcase(a, p) for a in args for p in patterns)


def _flagged(args: Sequence[str], *flags: str) -> bool:
    return any(a in flags for a in args)


def interpreter_one_liner(name: str, args: Sequence[str]) -> str | None:
    """The Elastic seed's suspicious interpreter invocations, widened to versioned names and common variants.

    Returns a short description of the technique, or None. ``name`` is the program (basename or applet).
    """
    rest = args[1:]
    if fnmatchcase(name, "python*"):
        if _flagged(rest, "-c") and (
            _any(
                rest,
                "*import*pty*spawn*",
                "*import*subprocess*call*",
                "*import*subprocess*Popen*",
                "*import*subprocess*run*",
            )
            or _any(rest, "*socket*")
            and _any(rest, "*dup2*", "*pty*", "*exec*")
        ):
            return "python one-liner spawning a shell"
    elif fnmatchcase(name, "perl*"):
        if _flagged(rest, "-e", "-E") and _any(rest, "*socket*", "*Socket*") and _any(rest, "*exec*", "*system*"):
            return "perl socket one-liner"
    elif fnmatchcase(name, "ruby*"):
        if (_flagged(rest, "-e", "-rsocket") or _any(rest, "-rsocket*")) and _any(
            rest, "*TCPSocket.new*", "*TCPSocket.open*"
        ):
            return "ruby TCPSocket one-liner"
    elif fnmatchcase(name, "lua*"):
        if _flagged(rest, "-e") and _any(rest, "*socket.tcp*") and _any(rest, "*io.popen*", "*os.execute*"):
            return "lua socket one-liner"
    elif fnmatchcase(name, "php*"):
        if _flagged(rest, "-r") and _any(rest, "*fsockopen*") and _any(rest, "*/bin/*sh*"):
            return "php fsockopen one-liner"
    elif name in ("awk", "gawk", "mawk", "nawk"):
        if _any(rest, "*/inet/tcp/*", "*/inet4/tcp/*", "*/inet6/tcp/*", "*/inet/udp/*"):
            return "awk /inet socket"
    elif name in ("nc", "ncat", "netcat", "nc.traditional", "nc.openbsd"):
        if (
            len(args) >= 3
            and not _flagged(rest, "-z")
            and (_flagged(rest, "-e", "-c", "--exec", "--sh-exec", "--lua-exec") or _any(rest, "-*e"))
        ):
            return "netcat executing a program"
    # The seed's telnet and openssl clauses are judged by the stdio graph (detector reverse_shell): only a
    # relay to a shell makes them a reverse shell, not a banner or certificate check through a pipe.
    return None


@dataclass
class _Pending:
    rule: Rule
    exec_event: Exec
    reason: str
    window_ns: int


def _shell_detector(conn: Conn) -> catalog.Detector:
    """A shell given an accepted connection is a bind shell; given one it opened, a reverse shell."""
    return catalog.BIND_SHELL if conn.ingress else catalog.REVERSE_SHELL


class Detectors:
    """Runs every rule's detector on each event. Keeps only the short windows the sequence rules need."""

    def __init__(self, rules: RuleSet, table: ProcessTable, exe_identity: ExeIdentity | None = None):
        self.rules = rules
        self.lists: Lists = rules.lists
        self.table = table
        # process key -> exec waiting for its connect (Elastic sequence, tunnel destination)
        self._pending: dict[ProcessKey, list[_Pending]] = {}
        # GitHub Actions context root -> the RUNNER_TRACKING_ID its runner gave its first step
        self._tracking: dict[ProcessKey, str] = {}
        self.unpacker_writes = 0  # persistence writes by the package manager itself (not signals)
        self.graph = StdioGraph(self.lists, table)
        self.exe_identity = exe_identity
        # The stdio graph's findings, once each: shells judged relays, loop holders, download runs.
        self._judged: set[tuple[str, ProcessKey]] = set()
        # (creator of the shells, destination) -> ktimes of download-and-execute runs, for beacons
        self._downloads: dict[tuple[ProcessKey, str, int], list[int]] = {}
        self._handlers: dict[type, Callable[[Event, Process | None], Iterable[Signal]]] = {
            Exec: self._on_exec,
            Connect: self._on_connect,
            SocketDup: self._on_dup,
            Fork: self._on_fork,
            FileWrite: self._on_file_write,
            ModuleLoad: self._on_module_load,
        }

    def prune(self, now_ktime: int) -> None:
        """Forget windows that have closed (called on the stats tick; bounds memory)."""
        for key in list(self._pending):
            alive = [p for p in self._pending[key] if now_ktime - p.exec_event.ktime <= p.window_ns]
            if alive:
                self._pending[key] = alive
            else:
                del self._pending[key]
        for root in [root for root in self._tracking if root not in self.table]:
            del self._tracking[root]
        self.graph.prune(now_ktime)
        self._judged = {(kind, key) for kind, key in self._judged if key in self.table}
        for k in [k for k, times in self._downloads.items() if now_ktime - times[-1] > BEACON_WINDOW_NS]:
            del self._downloads[k]

    def __call__(self, event: Event) -> list[Signal]:
        """Signals for one event (already applied to the process table)."""
        proc = self.table.lookup_event(event)
        changed = self.graph.observe(event)  # first: the handlers ask the graph about this very event
        handler = self._handlers.get(type(event))
        out = list(handler(event, proc)) if handler is not None else []
        return out + self._judge_graph(event, changed)

    # ---------------------------------------------------------------- helpers

    def _parent(self, proc: Process | None) -> Process | None:
        return self.table.get(proc.parent_key) if proc is not None and proc.parent_key else None

    def _emit(
        self,
        rule: Rule,
        event: Event,
        proc: Process | None,
        reason: str,
        *,
        daddr: str = "",
        dport: int = 0,
        family: str = "",
        transport: str = "",
        path: str = "",
        saddr: str = "",
        sport: int = 0,
        direction: str = "",
    ) -> Signal | None:
        exe = proc.filename if proc else ""
        parent = self._parent(proc)
        args = proc.args if proc else ()
        if rule.exceptions.matches(exe, parent.filename if parent else "", args, daddr or None, dport or None):
            return None
        key = proc.key if proc else process_key(event.pid, event.start_time)
        return Signal(
            rule=rule,
            key=key,
            event=event,
            reason=reason,
            daddr=daddr,
            dport=dport,
            family=family,
            transport=transport,
            path=path,
            context=context_of(proc),
            saddr=saddr,
            sport=sport,
            direction=direction or ("egress" if daddr else ""),
        )

    def _emit_conn(
        self, detector: catalog.Detector, event: Event, proc: Process | None, reason: str, conn: Conn
    ) -> list[Signal]:
        """Signals of ``detector`` about a connection: for an accepted one (a bind shell) the remote peer is
        the source and the local listening address and port the destination."""
        if conn.ingress:
            net: dict[str, Any] = {
                "daddr": conn.laddr,
                "dport": conn.lport,
                "saddr": conn.daddr,
                "sport": conn.dport,
                "direction": "ingress",
            }
        else:
            net = {"daddr": conn.daddr, "dport": conn.dport, "direction": "egress"}
        out = []
        for rule in self.rules.by_detector(detector.name):
            sig = self._emit(rule, event, proc, reason, family=conn.family, transport=conn.transport, **net)
            if sig:
                out.append(sig)
        return out

    def _emit_all(
        self, detector: catalog.Detector, event: Event, proc: Process | None, reason: str, *, path: str = ""
    ) -> list[Signal]:
        out = []
        for rule in self.rules.by_detector(detector.name):
            sig = self._emit(rule, event, proc, reason, path=path)
            if sig:
                out.append(sig)
        return out

    # ---------------------------------------------------------------- handlers

    def _identify(self, event: Exec, proc: Process | None) -> str:
        """The program this exec runs: by the executed file's inode or content when the agent can look
        (agent.detect.exeid: a renamed bash is bash, a memfd socat is socat), else by name."""
        if proc is not None:
            proc.tags.pop("program", None)
            # A script's executed file is its interpreter (binfmt_script puts the script's path in argv[1]):
            # the script is named by its path, as before.
            script = len(event.args) > 1 and event.args[1] == event.filename
            known = (
                self.exe_identity.identify(event.pid, event.exe_id, event.exe_size)
                if self.exe_identity and not script
                else None
            )
            if known is not None and known != self.lists.program(event.filename, event.args):
                proc.tags["program"] = known
            return self.graph.name_of(proc)
        return self.lists.program(event.filename, event.args)

    def _on_exec(self, event: Event, proc: Process | None) -> Iterable[Signal]:
        assert isinstance(event, Exec)
        name = self._identify(event, proc)
        key = process_key(event.pid, event.start_time)
        self._pending.pop(key, None)  # a new program: old windows no longer apply
        out = []
        parent = self._parent(proc)
        parent_name = self.graph.name_of(parent) if parent else ""
        technique = interpreter_one_liner(name, event.args)
        if technique and self.lists.is_reverse_shell_parent(parent_name):
            for rule in self.rules.by_detector(catalog.INTERPRETER_REVERSE_SHELL.name):
                self._pending.setdefault(key, []).append(_Pending(rule, event, technique, ELASTIC_WINDOW_NS))
        tool = self.lists.tunnel_for(
            name if name != self.lists.program(event.filename, event.args) else event.filename, event.args
        )
        if tool is not None:
            for rule in self.rules.by_detector(catalog.TUNNEL_TOOL.name):
                # Signalled at once; its first remote connect adds the destination.
                sig = self._emit(rule, event, proc, f"{tool.name} started: {' '.join(event.args)[:200]}")
                if sig:
                    out.append(sig)
                    self._pending.setdefault(key, []).append(_Pending(rule, event, tool.name, TUNNEL_WINDOW_NS))
        out += self._stdio_socket_at_exec(event, proc, name)
        out += self._fileless(event, proc, name)
        out += self._tracking_tamper(event, proc)
        return out

    def _fileless(self, event: Exec, proc: Process | None, name: str) -> list[Signal]:
        """An exec of a memfd or of a file deleted before it ran: code that never was a file on disk."""
        what = "a memfd" if event.flags & FLAG_EXE_MEMFD else "a deleted file" if event.flags & FLAG_EXE_DELETED else ""
        if not what:
            return []
        known = f" (its content is {name})" if proc is not None and "program" in proc.tags else ""
        return self._emit_all(catalog.FILELESS_EXEC, event, proc, f"{event.filename} runs from {what}{known}")

    def _stdio_socket_at_exec(self, event: Exec, proc: Process | None, name: str) -> list[Signal]:
        """A remote socket on stdin or stdout of a program that runs commands (a shell or an interpreter),
        or of any command a shell runs on the socket that shell opened (`exec 5<>/dev/tcp/H/P; ... >&5`)."""
        if (
            event.stdio_socket_fd not in (0, 1)
            or event.stdio_family not in ("ipv4", "ipv6")
            or not self.lists.is_remote(event.stdio_daddr)
        ):
            return []
        key = process_key(event.pid, event.start_time)
        sock_id = event.stdio_ids[event.stdio_socket_fd] if event.stdio_ids else ""
        conn = next((c for c in self.graph.live_conns(key) if c.sock_id == sock_id), None)
        owner = self.graph.stdio_owner.get(key)
        giver = owner if owner is not None else (proc.parent_key if proc is not None else None)
        if conn is None or self.graph.is_legitimate(key) or (giver is not None and self.graph.is_legitimate(giver)):
            return []  # sshd's re-exec, an inetd or socket-activated service: handed over on purpose
        if not self.graph.is_command_reader(key) and not (
            owner is not None and owner != key and self.graph.is_command_reader(owner)
        ):
            return []
        self._judged.add(("stdio", key))
        return self._socket_on_stdio(event, proc, f"{name} started with fd {event.stdio_socket_fd}", conn, "")

    def _tracking_tamper(self, event: Exec, proc: Process | None) -> list[Signal]:
        """A step whose RUNNER_TRACKING_ID differs from the one its runner gave the job's first step: the
        known way to keep a process alive after the job, because the runner's cleanup looks for that id."""
        ctx = context_of(proc)
        ci = ctx.ci() if ctx else None
        value = event.env.get(TRACKING_VAR)
        if ci is None or ci.kind != "github_actions" or value is None:
            return []
        expected = self._tracking.setdefault(ci.root, value)
        if value == expected:
            return []
        return self._emit_all(
            catalog.RUNNER_TRACKING_TAMPER,
            event,
            proc,
            f"{event.filename} runs with {TRACKING_VAR}={value!r}, not the job's {expected!r}",
        )

    def _on_file_write(self, event: Event, proc: Process | None) -> Iterable[Signal]:
        assert isinstance(event, FileWrite)
        place = self.lists.persistence_place(event.path)
        if place is None:
            return []
        exe = proc.filename if proc else ""
        if exe in self.lists.unpackers:
            self.unpacker_writes += 1  # the package manager putting a packaged file in place
            return []
        what = {"open": "opened for writing", "rename": "renamed", "link": "linked", "symlink": "symlinked"}
        verb = what.get(event.operation, event.operation)
        source = f"{event.source_path} to " if event.source_path else ""
        reason = f"{exe or event.comm} {verb} {source}{event.path} ({place.technique})"
        return self._emit_all(catalog.PERSISTENCE_WRITE, event, proc, reason, path=event.path)

    def _on_module_load(self, event: Event, proc: Process | None) -> Iterable[Signal]:
        assert isinstance(event, ModuleLoad)
        exe = proc.filename if proc else ""
        if exe in self.lists.unpackers:
            return []
        module = next((a for a in event.args[1:] if a.endswith(MODULE_SUFFIXES)), "")
        reason = f"{exe or event.comm} loads a kernel module" + (f" {module}" if module else f" ({event.syscall})")
        return self._emit_all(catalog.PERSISTENCE_WRITE, event, proc, reason, path=module)

    def _on_fork(self, event: Event, proc: Process | None) -> Iterable[Signal]:
        # The Elastic seed also follows a fork of the suspicious process: the child inherits the window.
        assert isinstance(event, Fork)
        parent_key = process_key(event.ppid, event.parent_start_time)
        pending = self._pending.get(parent_key)
        if pending:
            self._pending[process_key(event.pid, event.start_time)] = list(pending)
        return ()

    def _on_connect(self, event: Event, proc: Process | None) -> Iterable[Signal]:
        assert isinstance(event, Connect)
        if event.result not in ATTEMPTED or not self.lists.is_remote(event.daddr):
            return []
        net: dict[str, Any] = {
            "daddr": event.daddr,
            "dport": event.dport,
            "family": event.family,
            "transport": event.transport,
        }
        out = []
        exe = proc.filename if proc else ""
        if proc is not None and self.lists.is_shell(self.graph.name_of(proc)):
            for rule in self.rules.by_detector(catalog.SHELL_NETWORK_CONNECTION.name):
                sig = self._emit(rule, event, proc, f"shell {exe} connected to {event.daddr}:{event.dport}", **net)
                if sig:
                    out.append(sig)
        key = proc.key if proc else process_key(event.pid, event.start_time)
        for pending in self._pending.pop(key, []):
            if event.ktime - pending.exec_event.ktime <= pending.window_ns:
                sig = self._emit(
                    pending.rule,
                    event,
                    proc,
                    f"{pending.reason}, then a connection to {event.daddr}:{event.dport}",
                    **net,
                )
                if sig:
                    out.append(sig)
        if event.dport in self.lists.irc_ports:
            for rule in self.rules.by_detector(catalog.IRC_CONNECTION.name):
                sig = self._emit(
                    rule,
                    event,
                    proc,
                    f"{exe or event.comm} connected to IRC port {event.dport} on {event.daddr}",
                    **net,
                )
                if sig:
                    out.append(sig)
        return out

    def _on_dup(self, event: Event, proc: Process | None) -> Iterable[Signal]:
        """A process that puts a remote socket on its stdin reads its commands from it (or is about to exec
        something that will). A socket on stdout alone is a redirection (`echo > /dev/tcp/db/5432`, a port
        probe) until a command runs on it, which the exec of that command shows; sshd's, inetd's and
        systemd's dups hand a connection over on purpose (lists/stdio.yaml socket_holders)."""
        assert isinstance(event, SocketDup)
        if event.newfd != 0 or event.family not in ("ipv4", "ipv6") or not self.lists.is_remote(event.daddr):
            return []
        key = proc.key if proc else process_key(event.pid, event.start_time)
        if proc is None or self.graph.is_legitimate(key):
            return []
        if self.lists.is_shell(self.graph.name_of(proc)) and any(
            self.graph.opener(c.sock_id) == key or not c.sock_id for c in self.graph.live_conns(key)
        ):
            # A shell's redirection of the socket it opened itself (/dev/tcp) precedes the exec that the
            # exec probe judges (`bash -i >& /dev/tcp/H/P 0>&1`); on its own it is a probe's redirection.
            return []
        conn = self.graph.conn(event.sock_id) or Conn(
            event.sock_id, event.daddr, event.dport, "", event.lport, event.family, event.transport, ingress=False
        )
        return self._socket_on_stdio(
            event, proc, f"{self.graph.program(key) or event.comm} put on fd {event.newfd}", conn, f" ({event.syscall})"
        )

    def _socket_on_stdio(self, event: Event, proc: Process | None, what: str, conn: Conn, how: str) -> list[Signal]:
        """A remote socket on a command reader's stdio: a bind shell when it was accepted, else stdio_to_socket."""
        if conn.ingress:
            return self._emit_conn(
                catalog.BIND_SHELL,
                event,
                proc,
                f"{what} a connection accepted from {conn.daddr}:{conn.dport} on port {conn.lport}{how}",
                conn,
            )
        return self._emit_conn(
            catalog.STDIO_TO_SOCKET, event, proc, f"{what} a socket connected to {conn.daddr}:{conn.dport}{how}", conn
        )

    # ---------------------------------------------------------------- the stdio graph

    def _judge_graph(self, event: Event, changed: list[ProcessKey]) -> list[Signal]:
        """Judge again the processes whose stdio neighbourhood this event changed."""
        if not changed:
            return []
        if isinstance(event, Exec):
            # An exec changes its own process's ends; only a remote socket arriving on stdio can complete
            # someone else's relay, so only then is the neighbourhood walked (execs are the common event).
            candidates = self.graph.neighbourhood(changed[0]) if event.stdio_socket_fd >= 0 else changed
        else:
            candidates = [
                k
                for key in changed
                for k in self.graph.neighbourhood(key, children=isinstance(event, (Connect, Accept)))
            ]
        out: list[Signal] = []
        for key in dict.fromkeys(candidates):
            proc = self.table.get(key)
            if proc is None or proc.exited:
                continue
            if self.graph.is_command_reader(key):
                out += self._judge_shell(event, proc)
            out += self._judge_loop(event, proc)
        return out

    def _judge_shell(self, event: Event, proc: Process) -> list[Signal]:
        key = proc.key
        if ("relay", key) in self._judged:
            return []
        verdict = self.graph.judge(key)
        if not verdict.inputs:
            return []
        name = self.graph.program(key)
        if verdict.outputs and self.graph.reads_commands_from_stdin(key):
            relayed = [r for r in verdict.inputs if r.hops > 0] + [r for r in verdict.outputs if r.hops > 0]
            if not relayed:
                return []  # the socket is on the shell's own stdio: stdio_to_socket at exec says so
            self._judged.add(("relay", key))
            via = next(r for r in (*verdict.inputs, *verdict.outputs) if r.hops > 0)
            into = verdict.inputs[0]
            conn = into.conn
            back = verdict.outputs[0]
            route = " -> ".join((*reversed(into.path), name)) or name
            accepted = "a connection accepted from " if conn.ingress else ""
            reason = (
                f"{name} reads its commands through {route} from {accepted}"
                f"{conn.daddr}:{conn.dport} and its output goes back through "
                f"{' -> '.join(back.path) or name} to {back.conn.daddr}:{back.conn.dport} "
                f"({via.hops} hop{'s' if via.hops > 1 else ''})"
            )
            return self._emit_conn(_shell_detector(conn), event, proc, reason, conn)
        # Input from a download, output stays local: download-and-execute (and a beacon when it repeats).
        if ("download", key) in self._judged or not self.lists.is_shell(name):
            return []
        feeder = next((r for r in verdict.inputs if r.hops == 1 and not r.conn.ingress), None)
        if feeder is None:
            return []
        self._judged.add(("download", key))
        creator = self.table.get(proc.parent_key) if proc.parent_key else None
        anchor = creator or proc
        client = self.graph.program(feeder.holder)
        conn = feeder.conn
        runs = self._downloads.setdefault((anchor.key, conn.daddr, conn.dport), [])
        runs.append(event.ktime)
        del runs[:-16]
        out = self._emit_conn(
            catalog.DOWNLOAD_EXECUTE,
            event,
            anchor,
            f"{name} runs what {client} downloaded from {conn.daddr}:{conn.dport}",
            conn,
        )
        recent = [t for t in runs if event.ktime - t <= BEACON_WINDOW_NS]
        if len(recent) >= 2 and ("beacon", anchor.key) not in self._judged:
            self._judged.add(("beacon", anchor.key))
            out += self._emit_conn(
                catalog.C2_BEACON,
                event,
                anchor,
                f"{self.graph.program(anchor.key) or 'a loop'} ran commands downloaded from "
                f"{conn.daddr}:{conn.dport} {len(recent)} times (a polling beacon)",
                conn,
            )
        return out

    def _judge_loop(self, event: Event, child: Process) -> list[Signal]:
        """A process holding a remote connection that runs commands whose output comes straight back to it."""
        holder_key = child.parent_key
        if holder_key is None or ("loop", holder_key) in self._judged:
            return []
        conns = self.graph.live_conns(holder_key)
        holder = self.table.get(holder_key)
        if not conns or holder is None or self.graph.is_legitimate(holder_key):
            return []
        stdin_back, stdout_back = self.graph.created_ends(child.key)
        if not stdout_back or (stdin_back and self.graph.reads_commands_from_stdin(child.key)):
            return []  # nothing comes back, or a shell fed and read by the holder: a relay, judged as one
        ctx = context_of(holder)
        # Inside a package install, a hook's own script holding a connection and running shell commands back
        # to itself counts too; a downloader running the binary it fetched (esbuild's --version check) does not.
        in_install = ctx is not None and not ctx.is_ci and self.lists.is_shell(self.graph.program(child.key))
        if not (self.graph.suspicious_program(holder_key) or in_install):
            return []
        self._judged.add(("loop", holder_key))
        conn = conns[-1]
        name = self.graph.program(holder_key)
        reason = (
            f"{name} holds a connection {'accepted from' if conn.ingress else 'to'} {conn.daddr}:{conn.dport} "
            f"and runs commands whose output comes back to it ({self.graph.program(child.key)}): "
            f"an interpreter command loop"
        )
        return self._emit_conn(_shell_detector(conn), event, holder, reason, conn)
