"""Decoded sensor events: frozen dataclasses with a msgpack-friendly dict round trip.

Every event carries the common header the kernel fills for every record. The process it
describes is identified by ``(tgid, start_time)``; see :func:`agent.lineage.identity`.
"""

from __future__ import annotations

import dataclasses
import posixpath
from dataclasses import dataclass, field
from typing import Any, ClassVar

from agent.compat import SLOTS

# Event flags (header.flags). Shared with the kernel through agent.abi.
FLAG_FILENAME_TRUNCATED = 1 << 0
FLAG_ARGS_TRUNCATED = 1 << 1
FLAG_ENV_TRUNCATED = 1 << 2
FLAG_SEEDED = 1 << 3  # synthesised from /proc at startup, not seen by a probe
FLAG_IO_URING = 1 << 4  # submitted through io_uring, not a syscall
FLAG_SOCK_STATE = 1 << 5  # a TCP connect seen only as its socket entering SYN_SENT
FLAG_EXE_DELETED = 1 << 6  # exec of a file that has no name left
FLAG_EXE_MEMFD = 1 << 7  # exec of a memfd: fileless
FLAG_SENDTO = 1 << 8  # a connect record that is an unconnected UDP socket's first sendto to a destination


@dataclass(frozen=True, **SLOTS)
class Event:
    """Fields every event has (the kernel's common header)."""

    type: ClassVar[str] = "event"
    ktime: int  # CLOCK_BOOTTIME ns when the probe fired
    pid: int  # tgid: the process, not the thread
    tid: int  # the thread that made the call
    ppid: int  # the real parent's tgid
    start_time: int  # process start, CLOCK_BOOTTIME ns (task->group_leader->start_boottime)
    uid: int
    cgroup_id: int
    comm: str
    flags: int = 0
    # The install/CI context the kernel held for the process (agent.abi.layout.CONTEXTS id, 0: none)
    # and that context's root process. Userspace's own lineage decides; this is the kernel's view.
    context: int = 0
    context_root_pid: int = 0
    context_root_start: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON and msgpack safe) that :func:`event_from_dict` reverses."""
        out: dict[str, Any] = {"type": self.type}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = (
                list(value) if isinstance(value, tuple) else (dict(value) if isinstance(value, dict) else value)
            )
        return out


@dataclass(frozen=True, **SLOTS)
class Exec(Event):
    """A successful execve/execveat: the process now runs ``filename`` with ``args``."""

    type: ClassVar[str] = "exec"
    filename: str = ""
    args: tuple[str, ...] = ()
    # Only the attribution variables (agent.capture.ENV_CAPTURE_PREFIXES); labels, never trusted.
    env: dict[str, str] = field(default_factory=dict)
    # What fds 0, 1, 2 were at exec: "socket", "fifo", "chr", "reg", "dir", "blk", "lnk" or "" (closed).
    stdio: tuple[str, ...] = ()
    # If stdin or stdout is a socket: which fd, and the socket (family, transport, peer address and port).
    stdio_socket_fd: int = -1
    stdio_family: str = ""
    stdio_transport: str = ""
    stdio_daddr: str = ""
    stdio_dport: int = 0
    stdio_laddr: str = ""
    stdio_lport: int = 0
    # The stdio graph's view of fds 0, 1, 2 (agent.detect.stdio): an identity shared by every holder of the
    # same object ("fifo:DEV:INO", "sock:INO", "unix:INO", "pty:N", "ptm:N", "file:DEV:INO", "null",
    # "chr:MAJ:MIN", or "" when closed), the far end of a unix socketpair ("unix:INO" or ""), and the
    # access mode ("r", "w", "rw").
    stdio_ids: tuple[str, ...] = ()
    stdio_peers: tuple[str, ...] = ()
    stdio_access: tuple[str, ...] = ()
    # The file actually executed, "DEV:INO" (mm->exe_file); FLAG_EXE_MEMFD/FLAG_EXE_DELETED say what it was.
    exe_id: str = ""
    exe_size: int = 0  # its size when it was executed (0: not reported, as in older recordings)


@dataclass(frozen=True, **SLOTS)
class Fork(Event):
    """A new process (not a thread). The header describes the child."""

    type: ClassVar[str] = "fork"
    parent_start_time: int = 0


@dataclass(frozen=True, **SLOTS)
class Exit(Event):
    """The whole thread group has exited."""

    type: ClassVar[str] = "exit"
    exit_code: int = 0


@dataclass(frozen=True, **SLOTS)
class Connect(Event):
    """connect(2) on an AF_INET/AF_INET6 socket, with its result (0 or -errno)."""

    type: ClassVar[str] = "connect"
    fd: int = -1
    family: str = ""  # "ipv4" | "ipv6"
    transport: str = ""  # "tcp" | "udp" | "raw" | "other"
    daddr: str = ""
    dport: int = 0
    result: int = 0
    laddr: str = ""  # the local end the kernel chose
    lport: int = 0
    sock_id: str = ""  # "sock:INO", as in Exec.stdio_ids


@dataclass(frozen=True, **SLOTS)
class Accept(Event):
    """accept/accept4 returned a connected socket: a possible bind shell's peer."""

    type: ClassVar[str] = "accept"
    fd: int = -1
    family: str = ""
    transport: str = ""
    saddr: str = ""  # the peer
    sport: int = 0
    lport: int = 0
    laddr: str = ""  # the local (listening) address
    sock_id: str = ""  # the accepted socket, "sock:INO"


@dataclass(frozen=True, **SLOTS)
class Listen(Event):
    """listen(2) on an inet socket."""

    type: ClassVar[str] = "listen"
    fd: int = -1
    family: str = ""
    transport: str = ""
    lport: int = 0
    result: int = 0
    laddr: str = ""
    sock_id: str = ""


@dataclass(frozen=True, **SLOTS)
class SocketDup(Event):
    """An inet or unix socket was duplicated onto fd 0, 1 or 2 (dup, dup2, dup3, fcntl F_DUPFD)."""

    type: ClassVar[str] = "socket_dup"
    oldfd: int = -1
    newfd: int = -1
    syscall: str = ""
    family: str = ""  # "ipv4" | "ipv6" | "unix" | "other"
    transport: str = ""
    daddr: str = ""  # the socket's peer, when connected
    dport: int = 0
    lport: int = 0
    sock_id: str = ""


@dataclass(frozen=True, **SLOTS)
class FileWrite(Event):
    """An open for write/create/truncate/append, or a rename/link, whose target is a persistence path."""

    type: ClassVar[str] = "file_write"
    path: str = ""  # resolved and normalised: the file written, within the process's root
    source_path: str = ""  # rename/link: where it came from, as typed
    operation: str = ""  # "open" | "rename" | "link"
    flags_open: int = 0  # the opened file's f_flags: access mode, O_APPEND... (the kernel drops O_CREAT/O_TRUNC)
    result: int = 0


def normalize_path(path: str) -> str:
    """The absolute path with ``.``, ``..`` and repeated slashes folded (no symlinks are followed): the form of
    ``FileWrite.path`` and of the paths the persistence list is matched against."""
    out = posixpath.normpath("/" + path.lstrip("/"))
    return "/" + out.lstrip("/")  # normpath keeps a leading "//"


@dataclass(frozen=True, **SLOTS)
class ModuleLoad(Event):
    """An attempt to load a kernel module (init_module/finit_module, or an insmod/modprobe exec)."""

    type: ClassVar[str] = "module_load"
    source: str = ""  # "tracepoint" | "exec"
    syscall: str = ""
    filename: str = ""
    args: tuple[str, ...] = ()


@dataclass(frozen=True, **SLOTS)
class FdOpen(Event):
    """A FIFO or a pty master was opened (the kernel's file, whatever path the caller used)."""

    type: ClassVar[str] = "fd_open"
    fd: int = -1
    kind: str = ""  # "fifo" | "ptmx"
    end_id: str = ""  # "fifo:DEV:INO" or "ptm:N", as in Exec.stdio_ids
    access: str = ""  # "r" | "w" | "rw"


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls for cls in (Exec, Fork, Exit, Connect, Accept, Listen, SocketDup, FileWrite, ModuleLoad, FdOpen)
}


def event_from_dict(data: dict[str, Any]) -> Event:
    """Rebuild an event from :meth:`Event.to_dict` output. Raises ValueError on unknown types or fields."""
    kind = data.get("type")
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None  # a damaged item may hold any value
    if cls is None:
        raise ValueError(f"unknown event type {kind!r}")
    kwargs = {k: v for k, v in data.items() if k != "type"}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(kwargs) - names
    if unknown:
        raise ValueError(f"{kind} event has unknown fields: {sorted(unknown, key=repr)}")
    for f in dataclasses.fields(cls):
        if f.name in kwargs and isinstance(kwargs[f.name], list):
            kwargs[f.name] = tuple(kwargs[f.name])
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"{kind} event is incomplete: {exc}") from exc
