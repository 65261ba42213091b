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
from agent.detect.lists import Lists
from agent.detect.rules import Rule, RuleSet
from agent.detect.signals import Signal
from agent.events import Connect, Event, Exec, FileWrite, Fork, ModuleLoad, SocketDup
from agent.lineage.identity import ProcessKey, process_key
from agent.lineage.table import Process, ProcessTable

ELASTIC_WINDOW_NS = 1_000_000_000  # the Elastic seed's maxspan=1s between the exec and the connect
TUNNEL_WINDOW_NS = 5_000_000_000  # a tunnel tool's first remote connect names the alert's destination
# Connect results that are attempts (the seed counts connection_attempted): success and in-progress.
ATTEMPTED = (0, -errno.EINPROGRESS, -errno.EAGAIN, -errno.EALREADY)
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
TRACKING_VAR = "RUNNER_TRACKING_ID"


def basename(path: str) -> str:
    """The last path component."""
    return os.path.basename(path)


def _any(args: Sequence[str], *patterns: str) -> bool:
    return any(fnmatchcase(a, p) for a in args for p in patterns)


def _flagged(args: Sequence[str], *flags: str) -> bool:
    return any(a in flags for a in args)


def interpreter_one_liner(name: str, args: Sequence[str], stdio: Sequence[str]) -> str | None:
    """The Elastic seed's suspicious interpreter invocations, widened to versioned names and common variants.

    Returns a short description of the technique, or None. ``name`` is the executable's basename.
    """
    rest = args[1:]
    if fnmatchcase(name, "python*"):
        if _flagged(rest, "-c") and (_any(rest, "*import*pty*spawn*", "*import*subprocess*call*",
                                          "*import*subprocess*Popen*", "*import*subprocess*run*")
                                     or _any(rest, "*socket*") and _any(rest, "*dup2*", "*pty*", "*exec*")):
            return "python one-liner spawning a shell"
    elif fnmatchcase(name, "perl*"):
        if _flagged(rest, "-e", "-E") and _any(rest, "*socket*", "*Socket*") and _any(rest, "*exec*", "*system*"):
            return "perl socket one-liner"
    elif fnmatchcase(name, "ruby*"):
        if (_flagged(rest, "-e", "-rsocket") or _any(rest, "-rsocket*")) and _any(rest, "*TCPSocket.new*",
                                                                                   "*TCPSocket.open*"):
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
    elif name == "openssl":
        # Only a relay: a certificate check (`</dev/null`) or a person at a terminal has a char device on stdio.
        if _flagged(rest, "-connect") and any(kind in ("fifo", "socket") for kind in stdio[:2]):
            return "openssl s_client relay"
    elif name in ("nc", "ncat", "netcat", "nc.traditional", "nc.openbsd"):
        if len(args) >= 3 and not _flagged(rest, "-z") and (
                _flagged(rest, "-e", "-c", "--exec", "--sh-exec", "--lua-exec") or _any(rest, "-*e")):
            return "netcat executing a program"
    elif name == "telnet":
        if len(args) >= 3:
            return "telnet with host and port"
    return None


@dataclass
class _Pending:
    rule: Rule
    exec_event: Exec
    reason: str
    window_ns: int


class Detectors:
    """Runs every rule's detector on each event. Keeps only the short windows the sequence rules need."""

    def __init__(self, rules: RuleSet, table: ProcessTable):
        self.rules = rules
        self.lists: Lists = rules.lists
        self.table = table
        # process key -> exec waiting for its connect (Elastic sequence, tunnel destination)
        self._pending: dict[ProcessKey, list[_Pending]] = {}
        # GitHub Actions context root -> the RUNNER_TRACKING_ID its runner gave its first step
        self._tracking: dict[ProcessKey, str] = {}
        self.unpacker_writes = 0  # persistence writes by the package manager itself (not signals)
        self._handlers: dict[type, Callable[[Event, Process | None], Iterable[Signal]]] = {
            Exec: self._on_exec, Connect: self._on_connect, SocketDup: self._on_dup, Fork: self._on_fork,
            FileWrite: self._on_file_write, ModuleLoad: self._on_module_load,
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

    def __call__(self, event: Event) -> list[Signal]:
        """Signals for one event (already applied to the process table)."""
        handler = self._handlers.get(type(event))
        if handler is None:
            return []
        return list(handler(event, self.table.lookup_event(event)))

    # ---------------------------------------------------------------- helpers

    def _parent(self, proc: Process | None) -> Process | None:
        return self.table.get(proc.parent_key) if proc is not None and proc.parent_key else None

    def _emit(self, rule: Rule, event: Event, proc: Process | None, reason: str, *, daddr: str = "",
              dport: int = 0, family: str = "", transport: str = "", path: str = "") -> Signal | None:
        exe = proc.filename if proc else ""
        parent = self._parent(proc)
        args = proc.args if proc else ()
        if rule.exceptions.matches(exe, parent.filename if parent else "", args, daddr or None, dport or None):
            return None
        key = proc.key if proc else process_key(event.pid, event.start_time)
        return Signal(rule=rule, key=key, event=event, reason=reason, daddr=daddr, dport=dport, family=family,
                      transport=transport, path=path, context=context_of(proc))

    def _emit_all(self, detector: str, event: Event, proc: Process | None, reason: str, *,
                  path: str = "") -> list[Signal]:
        out = []
        for rule in self.rules.by_detector(detector):
            sig = self._emit(rule, event, proc, reason, path=path)
            if sig:
                out.append(sig)
        return out

    # ---------------------------------------------------------------- handlers

    def _on_exec(self, event: Event, proc: Process | None) -> Iterable[Signal]:
        assert isinstance(event, Exec)
        name = basename(event.filename)
        key = process_key(event.pid, event.start_time)
        self._pending.pop(key, None)  # a new program: old windows no longer apply
        out = []
        parent = self._parent(proc)
        parent_name = basename(parent.filename) if parent else ""
        technique = interpreter_one_liner(name, event.args, event.stdio)
        if technique and any(fnmatchcase(parent_name, p) for p in self.lists.reverse_shell_parents):
            for rule in self.rules.by_detector("interpreter_reverse_shell"):
                self._pending.setdefault(key, []).append(_Pending(rule, event, technique, ELASTIC_WINDOW_NS))
        tool = self.lists.tunnel_for(event.filename, event.args)
        if tool is not None:
            for rule in self.rules.by_detector("tunnel_tool"):
                # Signalled at once; its first remote connect adds the destination.
                sig = self._emit(rule, event, proc, f"{tool.name} started: {' '.join(event.args)[:200]}")
                if sig:
                    out.append(sig)
                    self._pending.setdefault(key, []).append(_Pending(rule, event, tool.name, TUNNEL_WINDOW_NS))
        if (name in self.lists.shells and event.stdio_socket_fd in (0, 1)
                and event.stdio_family in ("ipv4", "ipv6") and self.lists.is_remote(event.stdio_daddr)):
            for rule in self.rules.by_detector("stdio_to_socket"):
                sig = self._emit(rule, event, proc,
                                 f"shell {event.filename} started with fd {event.stdio_socket_fd} connected to "
                                 f"{event.stdio_daddr}:{event.stdio_dport}",
                                 daddr=event.stdio_daddr, dport=event.stdio_dport, family=event.stdio_family,
                                 transport=event.stdio_transport)
                if sig:
                    out.append(sig)
        out += self._tracking_tamper(event, proc)
        return out

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
        return self._emit_all("runner_tracking_tamper", event, proc,
                              f"{event.filename} runs with {TRACKING_VAR}={value!r}, not the job's {expected!r}")

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
        return self._emit_all("persistence_write", event, proc, reason, path=event.path)

    def _on_module_load(self, event: Event, proc: Process | None) -> Iterable[Signal]:
        assert isinstance(event, ModuleLoad)
        exe = proc.filename if proc else ""
        if exe in self.lists.unpackers:
            return []
        module = next((a for a in event.args[1:] if a.endswith(MODULE_SUFFIXES)), "")
        reason = f"{exe or event.comm} loads a kernel module" + (f" {module}" if module else f" ({event.syscall})")
        return self._emit_all("persistence_write", event, proc, reason, path=module)

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
        net: dict[str, Any] = {"daddr": event.daddr, "dport": event.dport, "family": event.family,
                               "transport": event.transport}
        out = []
        exe = proc.filename if proc else ""
        if basename(exe) in self.lists.shells:
            for rule in self.rules.by_detector("shell_network_connection"):
                sig = self._emit(rule, event, proc, f"shell {exe} connected to {event.daddr}:{event.dport}", **net)
                if sig:
                    out.append(sig)
        key = proc.key if proc else process_key(event.pid, event.start_time)
        for pending in self._pending.pop(key, []):
            if event.ktime - pending.exec_event.ktime <= pending.window_ns:
                sig = self._emit(pending.rule, event, proc, f"{pending.reason}, then a connection to "
                                 f"{event.daddr}:{event.dport}", **net)
                if sig:
                    out.append(sig)
        if event.dport in self.lists.irc_ports:
            for rule in self.rules.by_detector("irc_connection"):
                sig = self._emit(rule, event, proc, f"{exe or event.comm} connected to IRC port {event.dport} "
                                 f"on {event.daddr}", **net)
                if sig:
                    out.append(sig)
        return out

    def _on_dup(self, event: Event, proc: Process | None) -> Iterable[Signal]:
        assert isinstance(event, SocketDup)
        if event.family not in ("ipv4", "ipv6") or not self.lists.is_remote(event.daddr):
            return []
        out = []
        for rule in self.rules.by_detector("stdio_to_socket"):
            sig = self._emit(rule, event, proc, f"{proc.filename if proc else event.comm} put a socket connected to "
                             f"{event.daddr}:{event.dport} on fd {event.newfd} ({event.syscall})",
                             daddr=event.daddr, dport=event.dport, family=event.family, transport=event.transport)
            if sig:
                out.append(sig)
        return out
