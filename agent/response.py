"""Opt-in response: kill the incident's process tree, block its C2 address in the kernel, quarantine its
persistence file. Sits between the correlator and the sinks: an alert dict in, the same dict out with
``chainwatch.response`` listing each action (shared/design/contracts.md), every one also logged.

Off by default. An alert is acted on when ``response.enabled`` and its severity reaches
``response.min_severity`` or its ``rule.id`` is in ``response.rules``. In dry-run nothing is touched:
each action is planned exactly as it would be, and recorded with result ``dry_run``.

Safety rules (README, "Response"):

* kill: only the incident's processes and their descendants, each by (pid, start time): a pidfd is opened,
  then /proc/<pid>/stat must show the start time the sensor recorded, so a reused pid is never signalled.
  The tree is stopped (SIGSTOP) and re-read until it stops growing, then killed. Never pid 1, kernel threads,
  the agent or its ancestors, ancestors of the install/CI context root, or a protected executable
  (/proc/<pid>/exe), nor anything below those.
* block: only the incident's remote address (the source of an accepted connection, never a local address),
  never one in ``response.protected_networks``; a TTL enforced both in the kernel and by the agent.
* quarantine: only files under ``response.quarantine_prefixes`` and not under ``response.protected_paths``;
  read in the writer's mount namespace (/proc/<pid>/root of a live incident process), opened without
  following links, and only if it changed after the incident began.
"""

from __future__ import annotations

import importlib
import ipaddress
import json
import os
import signal
import socket
import stat
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

import structlog

from agent.config import RESPONSE_SEVERITIES, ResponseConfig, path_under
from agent.lineage.identity import ProcessKey, entity_id, parse_proc_stat
from agent.lineage.table import ProcessTable
from agent.quarantine import QuarantineError, QuarantineStore, open_no_follow, parent_fd

log = structlog.get_logger()

PF_KTHREAD = 0x00200000  # task flags (stat field 9)
MAX_INCIDENTS = 4096  # incidents remembered (their processes and what was already done)
KILL_ROUNDS = 8  # stop, re-read the tree, stop the newcomers... at most this often before the kill
CTIME_SLACK_NS = 2 * 10**9  # clock conversion slack when comparing a file's ctime to the incident's start
CONTROL_MAX_BYTES = 1 << 16


class ResponseError(RuntimeError):
    """The response stage cannot start or a control request failed; the message says what to do."""


def action(kind: str, target: str, result: str, reason: str) -> dict[str, str]:
    """One ``chainwatch.response`` entry."""
    return {"action": kind, "target": target, "result": result, "reason": reason}


# ------------------------------------------------------------------------------------------- gating


def selected(config: ResponseConfig, alert: dict[str, Any]) -> str | None:
    """Why the response applies to ``alert`` (a sentence), or None when it does not."""
    if not config.enabled:
        return None
    rule_id = str((alert.get("rule") or {}).get("id", ""))
    if rule_id and rule_id in config.rules:
        return f"rule {rule_id} is listed in response.rules"
    severity = int((alert.get("event") or {}).get("severity") or 0)
    if config.min_severity and severity >= RESPONSE_SEVERITIES[config.min_severity]:
        return f"severity {severity} reaches response.min_severity {config.min_severity}"
    return None


# ------------------------------------------------------------------------------------------- block


def split_endpoint(text: str) -> tuple[str, int]:
    """``1.2.3.4:80`` or ``2001:db8::2:4444`` (as chainwatch.artifacts writes them) -> (address, port)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else 0


def block_targets(config: ResponseConfig, alert: dict[str, Any]) -> list[tuple[str, int, str | None]]:
    """(address, port or 0 for all ports, refusal sentence or None) for each remote address of the incident."""
    network = alert.get("network") or {}
    found: list[tuple[str, int]] = []
    if network.get("direction") == "ingress":
        # A bind shell: destination is our own listening address, the attacker is the source.
        source = alert.get("source") or {}
        if source.get("ip"):
            found.append((str(source["ip"]), int(source.get("port") or 0)))
    else:
        destination = alert.get("destination") or {}
        if destination.get("ip"):
            found.append((str(destination["ip"]), int(destination.get("port") or 0)))
        artifacts = (alert.get("chainwatch") or {}).get("artifacts") or {}
        found += [split_endpoint(str(d)) for d in artifacts.get("destinations") or []]
    networks = [ipaddress.ip_network(n, strict=False) for n in config.protected_networks]
    out: list[tuple[str, int, str | None]] = []
    seen: set[tuple[str, int]] = set()
    for address, port in found:
        port = port if config.block_port else 0
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            if (address, port) not in seen:
                seen.add((address, port))
                out.append((address, port, f"{address!r} is not an IP address"))
            continue
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if (str(ip), port) in seen:
            continue
        seen.add((str(ip), port))
        hit = next((n for n in networks if ip.version == n.version and ip in n), None)
        out.append((str(ip), port, f"{ip} is in response.protected_networks ({hit})" if hit else None))
    return out


def endpoint(address: str, port: int) -> str:
    """How a block target is written: the address, or address:port ([v6]:port)."""
    if not port:
        return address
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


# --------------------------------------------------------------------------------------- quarantine


def quarantine_refusal(config: ResponseConfig, path: str) -> str | None:
    """Why ``path`` must not be quarantined, or None."""
    if not path.startswith("/") or os.path.normpath(path) != path:
        return f"{path!r} is not an absolute, normalised path"
    protected = next((p for p in config.protected_paths if path_under(path, p)), None)
    if protected is not None:
        return f"{path} is protected (response.protected_paths {protected})"
    if not any(path_under(path, p) for p in config.quarantine_prefixes):
        return f"{path} is outside response.quarantine_prefixes"
    return None


def quarantine_paths(alert: dict[str, Any]) -> list[str]:
    """Every persistence file of the incident the alert names, in order."""
    paths = [str((alert.get("file") or {}).get("path") or "")]
    artifacts = (alert.get("chainwatch") or {}).get("artifacts") or {}
    paths += [str(p) for p in artifacts.get("files") or []]
    return list(dict.fromkeys(p for p in paths if p))


# --------------------------------------------------------------------------------------------- kill


@dataclass(frozen=True)
class Live:
    """A running process as /proc shows it."""

    pid: int
    ppid: int
    start_ticks: int
    flags: int
    comm: str

    @property
    def key(self) -> ProcessKey:
        return ProcessKey(self.pid, self.start_ticks)


def parse_live(raw: bytes) -> Live:
    """A ``/proc/<pid>/stat`` line -> Live (flags is field 9)."""
    st = parse_proc_stat(raw)
    rest = raw[raw.rfind(b")") + 1 :].split()
    return Live(st.pid, st.ppid, st.start_ticks, int(rest[6]), st.comm)


def read_live(proc_root: str = "/proc") -> dict[int, Live]:
    """Every running process, by pid."""
    out: dict[int, Live] = {}
    for name in os.listdir(proc_root):
        if not name.isdigit():
            continue
        try:
            with open(f"{proc_root}/{name}/stat", "rb") as fh:
                out[int(name)] = parse_live(fh.read())
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
    return out


def read_exe(pid: int, proc_root: str = "/proc") -> str:
    """/proc/<pid>/exe, or "" when unreadable (exited, kernel thread)."""
    try:
        return os.readlink(f"{proc_root}/{pid}/exe").removesuffix(" (deleted)")
    except OSError:
        return ""


@dataclass
class KillPlan:
    """Which processes to signal and which were left alone, with why."""

    targets: list[Live] = field(default_factory=list)
    refused: list[tuple[Live, str]] = field(default_factory=list)


def kill_plan(
    incident: Iterable[ProcessKey],
    table: ProcessTable,
    live: dict[int, Live],
    *,
    agent_pid: int,
    protected_executables: Iterable[str],
    exe: Callable[[int], str],
    context_root: ProcessKey | None = None,
) -> KillPlan:
    """The incident's live processes and their live descendants, minus what must never be killed.

    A process counts only if /proc shows it with the start time the sensor recorded. Descendants come from
    /proc (ppid, started no earlier than the parent) and from the sensor's table (which still links a
    daemon that was re-parented to init). A protected process is not killed and neither is anything below
    it. Pure apart from ``exe``: the tests give it a fake /proc.
    """

    def alive(key: ProcessKey) -> Live | None:
        proc = live.get(key.pid)
        return proc if proc is not None and proc.start_ticks == key.start_ticks else None

    never: dict[ProcessKey, str] = {}
    pid: int | None = agent_pid
    while pid and pid in live:  # the agent and every ancestor it has right now
        never.setdefault(live[pid].key, "it is the agent or one of its ancestors")
        pid = live[pid].ppid
    if context_root is not None:
        for ancestor in table.ancestry(context_root):
            never.setdefault(ancestor.key, "it is an ancestor of the install/CI context root, outside the incident")
    protected_exes = set(protected_executables)
    kids: dict[int, list[Live]] = {}
    for proc in live.values():
        kids.setdefault(proc.ppid, []).append(proc)

    plan = KillPlan()
    seen: set[ProcessKey] = set()
    queue = [p for p in (alive(k) for k in incident) if p is not None]
    while queue:
        proc = queue.pop(0)
        if proc.key in seen:
            continue
        seen.add(proc.key)
        why = None
        if proc.pid <= 2:
            why = f"pid {proc.pid} is never killed"
        elif proc.flags & PF_KTHREAD:
            why = "it is a kernel thread"
        elif proc.key in never:
            why = never[proc.key]
        else:
            path = exe(proc.pid)
            if path in protected_exes:
                why = f"{path} is in response.protected_executables"
        if why is not None:
            plan.refused.append((proc, why))
            continue
        plan.targets.append(proc)
        children = [c for c in kids.get(proc.pid, []) if c.start_ticks >= proc.start_ticks]
        children += [c for c in (alive(p.key) for p in table.children(proc.key)) if c is not None]
        queue += children
    return plan


def describe(proc: Live) -> str:
    return f"pid {proc.pid} {proc.comm} (start {proc.start_ticks})"


def open_verified(key: ProcessKey, proc_root: str = "/proc") -> int | None:
    """A pidfd for process ``key``, or None if that process is gone (its pid free or reused).

    The start time is read after the pidfd is open: if it still matches, the pidfd is that process."""
    try:
        fd = os.pidfd_open(key.pid)
    except (ProcessLookupError, OSError):
        return None
    try:
        with open(f"{proc_root}/{key.pid}/stat", "rb") as fh:
            ticks = parse_proc_stat(fh.read()).start_ticks
    except (OSError, ValueError):
        ticks = -1
    if ticks != key.start_ticks:
        os.close(fd)
        return None
    return fd


# ---------------------------------------------------------------------------------------- responder


class BlockList(Protocol):
    """What the responder needs of agent.probes.block.Blocker (the tests can pass a fake)."""

    def block(self, address: str, port: int, ttl_s: float) -> bool: ...
    def unblock(self, address: str) -> int: ...
    def entries(self) -> list[Any]: ...
    def expire(self) -> list[Any]: ...
    def close(self) -> None: ...


@dataclass
class IncidentMemory:
    """What the responder knows of one incident across its alert lines."""

    keys: list[ProcessKey] = field(default_factory=list)
    first_wall_ns: int = 0
    reported: set[tuple[str, str]] = field(default_factory=set)


def _wall_ns(timestamp: str) -> int:
    try:
        return int(datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp() * 1e9)
    except (TypeError, ValueError):
        return time.time_ns()


class Responder:
    """Call it with each alert; returns the alert with ``chainwatch.response`` filled in."""

    def __init__(
        self,
        config: ResponseConfig,
        table: ProcessTable,
        *,
        blocker: BlockList | None = None,
        store: QuarantineStore | None = None,
        agent_pid: int | None = None,
        proc_root: str = "/proc",
    ):
        self.config = config
        self.table = table
        self.blocker = blocker
        self.store = store
        self.agent_pid = agent_pid or os.getpid()
        self.proc_root = proc_root
        self.control: ControlServer | None = None
        self._incidents: OrderedDict[str, IncidentMemory] = OrderedDict()
        self.counts = {"responses": 0, "actions_done": 0, "actions_failed": 0, "actions_dry_run": 0}

    # -- bookkeeping
    def _key_of(self, host_id: str, doc: dict[str, Any]) -> ProcessKey | None:
        """The table's key for a process object of the alert (pid + entity_id)."""
        pid, eid = doc.get("pid"), doc.get("entity_id")
        if not isinstance(pid, int):
            return None
        proc = self.table.by_pid(pid)
        if proc is not None and (eid is None or entity_id(host_id, proc.key) == eid):
            return proc.key
        return None

    def _remember(self, alert: dict[str, Any]) -> IncidentMemory:
        incident = str(((alert.get("chainwatch") or {}).get("incident") or {}).get("id", ""))
        memory = self._incidents.get(incident)
        if memory is None:
            memory = self._incidents[incident] = IncidentMemory(first_wall_ns=_wall_ns(alert.get("@timestamp", "")))
            while len(self._incidents) > MAX_INCIDENTS:
                self._incidents.popitem(last=False)
        self._incidents.move_to_end(incident)
        host_id = str((alert.get("host") or {}).get("id", ""))
        key = self._key_of(host_id, alert.get("process") or {})
        if key is not None and key not in memory.keys:
            memory.keys.append(key)
        return memory

    def __call__(self, alert: dict[str, Any]) -> dict[str, Any]:
        if not self.config.enabled:
            return alert
        memory = self._remember(alert)  # even when not acted on: a later line of the incident may be
        why = selected(self.config, alert)
        if why is None:
            return alert
        self.counts["responses"] += 1
        entries: list[dict[str, str]] = []
        steps: dict[str, Callable[[], list[dict[str, str]]]] = {
            "kill": lambda: self._kill(alert, memory),
            "block": lambda: self._block(alert),
            "quarantine": lambda: self._quarantine(alert, memory),
        }
        for kind in self.config.actions:
            try:
                entries += steps[kind]()
            except Exception as exc:  # a bug here must never cost the alert itself
                log.exception("response_error", action=kind)
                entries.append(action(kind, "-", "failed", f"internal error: {exc!r}"))
        fresh = [e for e in entries if (e["action"], e["target"]) not in memory.reported]
        memory.reported.update((e["action"], e["target"]) for e in fresh if e["result"] != "failed")
        chainwatch = alert.setdefault("chainwatch", {})
        chainwatch.setdefault("response", []).extend(fresh)
        incident = str((chainwatch.get("incident") or {}).get("id", ""))
        for e in fresh:
            self.counts[f"actions_{e['result']}"] += 1
            level = log.warning if e["result"] == "failed" else log.info
            level("response", incident=incident, rule=(alert.get("rule") or {}).get("id"), why=why, **e)
        return alert

    # -- kill
    def _context_root(self, alert: dict[str, Any]) -> ProcessKey | None:
        root = (alert.get("supply_chain") or {}).get("root") or {}
        return self._key_of(str((alert.get("host") or {}).get("id", "")), root) if root else None

    def _plan(self, memory: IncidentMemory, context_root: ProcessKey | None) -> KillPlan:
        return kill_plan(
            memory.keys,
            self.table,
            read_live(self.proc_root),
            agent_pid=self.agent_pid,
            protected_executables=self.config.protected_executables,
            exe=lambda pid: read_exe(pid, self.proc_root),
            context_root=context_root,
        )

    def _kill(self, alert: dict[str, Any], memory: IncidentMemory) -> list[dict[str, str]]:
        context_root = self._context_root(alert)
        plan = self._plan(memory, context_root)
        refused = [action("kill", describe(p), "failed", f"not killed: {why}") for p, why in plan.refused]
        if self.config.dry_run:
            return [
                action("kill", describe(p), "dry_run", "would stop the tree and send SIGKILL by pidfd")
                for p in plan.targets
            ] + refused
        stopped: dict[ProcessKey, tuple[Live, int]] = {}
        out: list[dict[str, str]] = []
        try:
            for _ in range(KILL_ROUNDS):
                new = [p for p in plan.targets if p.key not in stopped]
                if not new:
                    break
                for proc in new:
                    fd = open_verified(proc.key, self.proc_root)
                    if fd is None:
                        continue  # exited meanwhile: nothing to do
                    stopped[proc.key] = (proc, fd)
                    try:
                        signal.pidfd_send_signal(fd, signal.SIGSTOP)  # no forking while we finish the walk
                    except OSError:
                        pass  # exited; or the SIGKILL below reports the error
                plan = self._plan(memory, context_root)  # children forked before the stop
                refused = [action("kill", describe(p), "failed", f"not killed: {why}") for p, why in plan.refused]
            refused += [
                action(
                    "kill", describe(p), "failed", f"not killed: the tree was still growing after {KILL_ROUNDS} rounds"
                )
                for p in plan.targets
                if p.key not in stopped
            ]
        finally:
            # Whatever happened above, nothing is left stopped: every process stopped is killed.
            for proc, fd in stopped.values():
                try:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                    out.append(
                        action("kill", describe(proc), "done", "stopped, then SIGKILL by pidfd (start time verified)")
                    )
                except ProcessLookupError:
                    out.append(action("kill", describe(proc), "done", "exited before the SIGKILL"))
                except OSError as exc:
                    out.append(action("kill", describe(proc), "failed", f"SIGKILL failed: {exc.strerror}"))
                finally:
                    os.close(fd)
        return out + refused

    # -- block
    def _block(self, alert: dict[str, Any]) -> list[dict[str, str]]:
        out = []
        ttl = self.config.block_ttl_s
        for address, port, refusal in block_targets(self.config, alert):
            target = endpoint(address, port)
            if refusal is not None:
                out.append(action("block", target, "failed", f"not blocked: {refusal}"))
            elif self.config.dry_run:
                out.append(
                    action(
                        "block",
                        target,
                        "dry_run",
                        f"would refuse connects and UDP sends to {target} from every process on the host for {ttl:g} s",
                    )
                )
            elif self.blocker is None:
                out.append(action("block", target, "failed", "the block program is not loaded"))
            else:
                try:
                    new = self.blocker.block(address, port, ttl)
                except Exception as exc:  # a full map, a failing syscall: recorded, never fatal
                    out.append(action("block", target, "failed", f"the kernel block list refused it: {exc}"))
                    continue
                out.append(
                    action(
                        "block",
                        target,
                        "done",
                        (
                            f"connects and UDP sends to {target} refused in the kernel for {ttl:g} s"
                            if new
                            else "already blocked; TTL renewed"
                        )
                        + f"; `chainwatch response unblock {address}` lifts it",
                    )
                )
        return out

    # -- quarantine
    def _root_for(self, alert: dict[str, Any], memory: IncidentMemory) -> tuple[str, list[int]]:
        """Where the incident's paths resolve: the root of the writer's mount namespace, taken from the alert's
        process, else the incident's others, else their ancestors (the first still running), so a file written
        in a container or a private mount namespace is the one moved. Returns (label, [root fd, mount
        namespace fd]): holding the namespace keeps its mounts in place even if its processes exit meanwhile.
        """
        host_id = str((alert.get("host") or {}).get("id", ""))
        first = self._key_of(host_id, alert.get("process") or {})
        candidates = ([first] if first else []) + list(reversed(memory.keys))
        for key in list(candidates):
            candidates += [p.key for p in self.table.ancestry(key)]
        for key in candidates:
            pidfd = open_verified(key, self.proc_root)
            if pidfd is None:
                continue
            fds: list[int] = []
            try:
                fds.append(os.open(f"{self.proc_root}/{key.pid}/root", os.O_RDONLY | os.O_DIRECTORY))
                fds.append(os.open(f"{self.proc_root}/{key.pid}/ns/mnt", os.O_RDONLY))
                signal.pidfd_send_signal(pidfd, 0)  # still alive after the opens: they are its, not a reuser's
                return f"{self.proc_root}/{key.pid}/root", fds
            except OSError:
                for fd in fds:
                    os.close(fd)
            finally:
                os.close(pidfd)
        return "/", [os.open("/", os.O_RDONLY | os.O_DIRECTORY)]

    def _quarantine(self, alert: dict[str, Any], memory: IncidentMemory) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        paths = [p for p in quarantine_paths(alert) if ("quarantine", p) not in memory.reported]
        if not paths:
            return out
        label, fds = self._root_for(alert, memory)
        try:
            for path in paths:
                out.append(self._quarantine_path(alert, memory, label, fds[0], path))
        finally:
            for fd in fds:
                os.close(fd)
        return out

    def _quarantine_path(
        self, alert: dict[str, Any], memory: IncidentMemory, label: str, root: int, path: str
    ) -> dict[str, str]:
        refusal = quarantine_refusal(self.config, path)
        if refusal is not None:
            return action("quarantine", path, "failed", f"not quarantined: {refusal}")
        try:
            return self._quarantine_one(alert, memory, label, root, path)
        except (QuarantineError, OSError) as exc:
            return action("quarantine", path, "failed", f"not quarantined: {exc}")

    def _quarantine_one(
        self, alert: dict[str, Any], memory: IncidentMemory, label: str, root: int, path: str
    ) -> dict[str, str]:
        try:
            fd, st = open_no_follow(root, path)
        except QuarantineError as exc:
            if "No such file" in str(exc):
                raise QuarantineError(f"{path} no longer exists (in {label})") from None
            raise
        try:
            if not stat.S_ISREG(st.st_mode):
                raise QuarantineError(f"{path} is not a regular file")
            if st.st_ctime_ns < memory.first_wall_ns - CTIME_SLACK_NS:
                raise QuarantineError(
                    f"{path} (in {label}) has not changed since the incident began, so it is not "
                    "the file the incident wrote"
                )
            if self.config.dry_run:
                return action(
                    "quarantine", path, "dry_run", f"would move it (in {label}) to {self.config.quarantine_dir}"
                )
            if self.store is None:
                raise QuarantineError("the quarantine directory is not set up")
            meta = self.store.put(
                fd,
                st,
                original_path=path,
                resolved_in=label,
                incident_id=str(alert["chainwatch"]["incident"]["id"]),
                alert_id=str((alert.get("event") or {}).get("id", "")),
            )
        finally:
            os.close(fd)
        dirfd, name = parent_fd(root, path)
        try:
            now = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                self.store.discard(meta.id)
                raise QuarantineError(f"{path} was replaced while being quarantined; left in place")
            os.unlink(name, dir_fd=dirfd)
        finally:
            os.close(dirfd)
        return action(
            "quarantine",
            path,
            "done",
            f"moved to {self.store.dir / meta.id} (sha256 {meta.sha256}); "
            f"`chainwatch response restore {meta.id}` puts it back",
        )

    # -- lifecycle
    def tick(self) -> None:
        """Drop blocks past their TTL (the kernel already ignores them)."""
        if self.blocker is not None:
            for entry in self.blocker.expire():
                log.info("response_block_expired", address=entry.address, port=entry.port, hits=entry.hits)

    def stats(self) -> dict[str, int]:
        return dict(self.counts)

    def close(self) -> None:
        """Stop the control socket and detach the block program."""
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.blocker is not None:
            self.blocker.close()
            self.blocker = None


# ------------------------------------------------------------------------------------ control socket


class ControlServer:
    """``chainwatch response list`` / ``unblock`` reach the running agent through a root-only unix socket.

    A socket rather than a pinned map: the block links live and die with the agent, so there is nothing to
    unblock without it, no bpffs mount is needed, and each request is checked (SO_PEERCRED: root only)."""

    def __init__(self, path: str, responder: Responder):
        self.path = path
        self.responder = responder
        self._stop = threading.Event()
        directory = os.path.dirname(path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if os.path.exists(path):
            try:
                control_request(path, {"cmd": "ping"}, timeout=1.0)
            except ResponseError:
                os.unlink(path)  # left by an agent that died
            else:
                raise ResponseError(
                    f"another chainwatch agent answers on {path}: stop it first, or set "
                    "response.control_socket to another path"
                )
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self._sock.bind(path)
        except OSError as exc:
            self._sock.close()
            raise ResponseError(f"cannot create the control socket {path}: {exc.strerror}") from exc
        finally:
            os.umask(old)
        self._sock.listen(8)
        self._sock.settimeout(0.5)
        self._thread = threading.Thread(target=self._serve, name="chainwatch-control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:  # TimeoutError from 3.10 on; before, an OSError that is not one
                continue
            except OSError:
                break
            with conn:
                try:
                    self._handle(conn)
                except (OSError, ValueError) as exc:
                    log.warning("control_request_failed", error=str(exc))

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5.0)
        uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
        if uid not in (0, os.geteuid()):
            conn.sendall(json.dumps({"ok": False, "error": "only root may control chainwatch"}).encode() + b"\n")
            return
        data = b""
        while b"\n" not in data and len(data) < CONTROL_MAX_BYTES:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        request = json.loads(data.decode())
        conn.sendall(json.dumps(self.answer(request)).encode() + b"\n")

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        """One control request -> its reply."""
        blocker = self.responder.blocker
        cmd = request.get("cmd")
        if cmd == "ping":
            return {"ok": True}
        if cmd == "list":
            blocks = [e.describe() for e in blocker.entries()] if blocker is not None else []
            return {
                "ok": True,
                "blocks": blocks,
                "dry_run": self.responder.config.dry_run,
                "blocking": blocker is not None,
            }
        if cmd == "unblock":
            address = str(request.get("address", ""))
            try:
                ipaddress.ip_address(address)
            except ValueError:
                return {"ok": False, "error": f"{address!r} is not an IP address"}
            if blocker is None:
                return {"ok": False, "error": "blocking is not enabled in this agent"}
            removed = blocker.unblock(address)
            log.info("response_unblocked", address=address, entries=removed, by="control socket")
            return {"ok": True, "removed": removed}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def control_request(path: str, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one request to the agent's control socket; raises ResponseError when no agent answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while b"\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        raise ResponseError(
            f"no chainwatch agent answers on {path} ({exc.strerror or exc}): blocks exist only "
            "while the agent runs, so with it stopped nothing is blocked"
        ) from exc
    try:
        reply: dict[str, Any] = json.loads(data.decode())
    except ValueError as exc:
        raise ResponseError(f"the agent on {path} sent a reply that is not JSON: {data[:200]!r}") from exc
    return reply


# ------------------------------------------------------------------------------------------- set-up


def open_responder(config: ResponseConfig, table: ProcessTable, *, control: bool = True) -> Responder | None:
    """The response stage for the daemon, or None when disabled: loads the block program (unless dry-run),
    prepares the quarantine directory and opens the control socket. Raises ResponseError or ProbeError
    with a sentence that says what to fix."""
    if not config.enabled:
        return None
    blocker = None
    if "block" in config.actions and not config.dry_run:
        # bcc, only when blocking is on (and by name, so mypy's strict list does not pull in agent.probes)
        blocker = importlib.import_module("agent.probes.block").Blocker()
    store = None
    if "quarantine" in config.actions:
        store = QuarantineStore(config.quarantine_dir)
        if not config.dry_run:
            try:
                store.prepare()
            except QuarantineError as exc:
                if blocker is not None:
                    blocker.close()
                raise ResponseError(str(exc)) from exc
    responder = Responder(config, table, blocker=blocker, store=store)
    if control:
        try:
            responder.control = ControlServer(config.control_socket, responder)
        except BaseException:
            responder.close()
            raise
    log.info(
        "response_ready",
        dry_run=config.dry_run,
        actions=list(config.actions),
        min_severity=config.min_severity or None,
        rules=list(config.rules),
        blocking=blocker is not None,
        control_socket=config.control_socket if control else None,
    )
    return responder


def check_rule_ids(config: ResponseConfig, known: Iterable[str], source: str = "config") -> None:
    """response.rules must name loaded rules: a typo would silently never respond."""
    known_ids = set(known)
    unknown = [r for r in config.rules if r not in known_ids]
    if unknown:
        raise ResponseError(
            f"{source}: response.rules names {unknown[0]!r}, which is not the id of any loaded rule "
            "(`chainwatch rules check` lists them)"
        )


def quarantine_listing(directory: str) -> list[dict[str, Any]]:
    """The quarantine entries, for `chainwatch response list`."""
    return [
        {
            "id": m.id,
            "path": m.original_path,
            "sha256": m.sha256,
            "incident": m.incident_id,
            "quarantined_at": m.quarantined_at,
            "resolved_in": m.resolved_in,
        }
        for m in QuarantineStore(directory).entries()
    ]


__all__ = [
    "ControlServer",
    "Responder",
    "ResponseError",
    "block_targets",
    "check_rule_ids",
    "control_request",
    "kill_plan",
    "open_responder",
    "quarantine_refusal",
    "selected",
]
