"""Raw ring-buffer records -> typed events. Pure: no bcc, no I/O.

Every record is checked against the declared layout before it is read: a short, oversized or
unknown record raises :class:`DecodeError` (the daemon counts and logs it, and carries on).
"""

from __future__ import annotations

import ctypes
import functools
import ipaddress
from collections.abc import Callable
from typing import Any, Final

from agent import events as ev
from agent.abi import layout
from agent.capture import parse_env_block

HEADER_SIZE: Final = ctypes.sizeof(layout.EventHeader)
OP = layout.OPS
SYSCALL_NAMES: Final = {value: name[3:].lower() for name, value in layout.SYSCALLS.items()}
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
FAMILY_NAMES: Final = {AF_UNIX: "unix", AF_INET: "ipv4", AF_INET6: "ipv6"}
INET_TRANSPORTS: Final = {1: "tcp", 2: "udp", 3: "raw"}
UNIX_TRANSPORTS: Final = {1: "stream", 2: "dgram", 5: "seqpacket"}


class DecodeError(ValueError):
    """A record that does not match the declared layout."""


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _argv(block: bytes) -> tuple[str, ...]:
    if not block:
        return ()
    parts = block.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    return tuple(p.decode("utf-8", "replace") for p in parts)


def _addr(family: int, raw: Any) -> str:
    return _addr_text(family, bytes(raw))  # a u8 array: not cut at NUL


@functools.lru_cache(maxsize=4096)  # a busy host talks to few peers; formatting is most of a connect's decode
def _addr_text(family: int, data: bytes) -> str:
    if family == AF_INET:
        return str(ipaddress.IPv4Address(data[:4]))
    if family == AF_INET6:
        v6 = ipaddress.IPv6Address(data[:16])
        # An IPv4 peer of a dual-stack socket is reported as IPv4, as ECS and the rules expect.
        return str(v6.ipv4_mapped) if v6.ipv4_mapped is not None else str(v6)
    return ""


def _header(h: layout.EventHeader) -> dict[str, Any]:
    return {
        "ktime": h.ktime,
        "pid": h.tgid,
        "tid": h.pid,
        "ppid": h.ppid,
        "start_time": h.start_time,
        "uid": h.uid,
        "cgroup_id": h.cgroup_id,
        "comm": _text(h.comm),
        "flags": h.flags,
        "context": h.context,
        "context_root_pid": h.context_root_pid,
        "context_root_start": h.context_root_start,
    }


def _chars(r: Any, name: str, length: int) -> bytes:
    """A char[] field's first ``length`` bytes. Read from the raw record: ctypes cuts char[] at the first NUL,
    and argv and environment blocks are NUL-separated."""
    field = getattr(type(r), name)
    if length > field.size:
        raise DecodeError(f"{type(r).__name__}.{name}: length {length} is past the field's {field.size} bytes")
    return ctypes.string_at(ctypes.addressof(r) + field.offset, length)


S_IFMT: Final = 0o170000
FILE_TYPES: Final = {
    0o140000: "socket",
    0o120000: "lnk",
    0o100000: "reg",
    0o060000: "blk",
    0o040000: "dir",
    0o020000: "chr",
    0o010000: "fifo",
}


ACCESS: Final = ("r", "w", "rw", "rw")
PTY_SLAVE_MAJORS: Final = range(136, 144)  # UNIX98 pty slaves (/dev/pts/N)
PTMX_RDEV: Final = (5 << 20) | 2
UNIX_AUX_FLAG: Final = 1 << 63  # set by the kernel's file_identity() on unix sockets


def _end_id(mode: int, dev: int, ino: int, rdev: int, aux: int) -> tuple[str, str]:
    """(identity, unix peer identity) of one open file, as the stdio graph joins them (see Exec.stdio_ids)."""
    kind = FILE_TYPES.get(mode & S_IFMT, "") if mode else ""
    if kind == "socket":
        if aux & UNIX_AUX_FLAG:
            peer = aux & ~UNIX_AUX_FLAG
            return f"unix:{ino}", f"unix:{peer}" if peer else ""
        return f"sock:{ino}", ""
    if kind == "fifo":
        return f"fifo:{dev}:{ino}", ""
    if kind == "chr":
        major, minor = rdev >> 20, rdev & 0xFFFFF
        if rdev == PTMX_RDEV:
            return f"ptm:{aux}", ""
        if major in PTY_SLAVE_MAJORS:
            return f"pty:{(major - 136) << 20 | minor}", ""
        if (major, minor) == (1, 3):
            return "null", ""
        return f"chr:{major}:{minor}", ""
    if kind == "reg":
        return f"file:{dev}:{ino}", ""
    return kind, ""


def _exec(r: Any, common: dict[str, Any]) -> ev.Event:
    stdio = tuple(FILE_TYPES.get(mode & S_IFMT, "") if mode else "" for mode in r.stdio_mode)
    ends = [_end_id(r.stdio_mode[i], r.stdio_dev[i], r.stdio_ino[i], r.stdio_rdev[i], r.stdio_aux[i]) for i in range(3)]
    access = tuple(ACCESS[r.stdio_fflags[i] & 3] if r.stdio_mode[i] else "" for i in range(3))
    sock: dict[str, Any] = {}
    if r.stdio_sock_fd in (0, 1, 2):
        s = _sock(r)
        sock = {
            "stdio_socket_fd": r.stdio_sock_fd,
            "stdio_family": s["family"],
            "stdio_transport": s["transport"],
            "stdio_daddr": _addr(r.family, r.addr),
            "stdio_dport": r.port,
            "stdio_laddr": _addr(r.family, r.laddr),
            "stdio_lport": r.lport,
        }
    return ev.Exec(
        **common,
        filename=_text(_chars(r, "filename", r.filename_len)),
        args=_argv(_chars(r, "args", r.args_len)),
        env=parse_env_block(_chars(r, "env", r.env_len)),
        stdio=stdio,
        stdio_ids=tuple(e[0] for e in ends),
        stdio_peers=tuple(e[1] for e in ends),
        stdio_access=access,
        exe_id=f"{r.exe_dev}:{r.exe_ino}" if r.exe_ino else "",
        exe_size=r.exe_size if r.exe_ino else 0,
        **sock,
    )


def _fork(r: Any, common: dict[str, Any]) -> ev.Event:
    return ev.Fork(**common, parent_start_time=r.parent_start_time)


def _exit(r: Any, common: dict[str, Any]) -> ev.Event:
    return ev.Exit(**common, exit_code=r.exit_code)


def _sock(r: Any) -> dict[str, Any]:
    transports = UNIX_TRANSPORTS if r.family == AF_UNIX else INET_TRANSPORTS
    return {"family": FAMILY_NAMES.get(r.family, "other"), "transport": transports.get(r.sock_type, "other")}


def _sock_id(r: Any) -> str:
    return f"sock:{r.sock_ino}" if r.sock_ino else ""


def _connect(r: Any, common: dict[str, Any]) -> ev.Event:
    return ev.Connect(
        **common,
        **_sock(r),
        fd=r.fd,
        daddr=_addr(r.family, r.addr),
        dport=r.port,
        result=r.result,
        laddr=_addr(r.family, r.laddr),
        lport=r.lport,
        sock_id=_sock_id(r),
    )


def _accept(r: Any, common: dict[str, Any]) -> ev.Event:
    return ev.Accept(
        **common,
        **_sock(r),
        fd=r.fd,
        saddr=_addr(r.family, r.addr),
        sport=r.port,
        lport=r.lport,
        laddr=_addr(r.family, r.laddr),
        sock_id=_sock_id(r),
    )


def _listen(r: Any, common: dict[str, Any]) -> ev.Event:
    return ev.Listen(
        **common,
        **_sock(r),
        fd=r.fd,
        lport=r.lport,
        result=r.result,
        laddr=_addr(r.family, r.laddr),
        sock_id=_sock_id(r),
    )


def _socket_dup(r: Any, common: dict[str, Any]) -> ev.Event:
    return ev.SocketDup(
        **common,
        **_sock(r),
        oldfd=r.oldfd,
        newfd=r.newfd,
        syscall=SYSCALL_NAMES.get(r.syscall, "unknown"),
        daddr=_addr(r.family, r.addr),
        dport=r.port,
        lport=r.lport,
        sock_id=_sock_id(r),
    )


_FILE_OPERATIONS: Final = {
    "rename": "rename",
    "renameat": "rename",
    "renameat2": "rename",
    "link": "link",
    "linkat": "link",
    "symlink": "symlink",
    "symlinkat": "symlink",
}


def _file_write(r: Any, common: dict[str, Any]) -> ev.Event:
    syscall = SYSCALL_NAMES.get(r.syscall, "unknown")
    # The kernel resolved the path, or put a typed new name after its resolved directory: fold "." and "..".
    path = _text(_chars(r, "path", r.path_len))
    return ev.FileWrite(
        **common,
        path=ev.normalize_path(path) if path.startswith("/") else path,
        source_path=_text(_chars(r, "source", r.source_len)),
        operation=_FILE_OPERATIONS.get(syscall, "open"),
        flags_open=r.open_flags,
        result=r.result,
    )


def _module_load(r: Any, common: dict[str, Any]) -> ev.Event:
    return ev.ModuleLoad(**common, source="tracepoint", syscall=SYSCALL_NAMES.get(r.syscall, "unknown"))


FD_KIND_NAMES: Final = {layout.FD_KINDS["FD_FIFO"]: "fifo", layout.FD_KINDS["FD_PTMX"]: "ptmx"}


def _fd_open(r: Any, common: dict[str, Any]) -> ev.Event:
    kind = FD_KIND_NAMES.get(r.kind, "other")
    end = f"fifo:{r.dev}:{r.ino}" if kind == "fifo" else f"ptm:{r.tty_index}" if kind == "ptmx" else ""
    return ev.FdOpen(**common, fd=r.fd, kind=kind, end_id=end, access=ACCESS[r.fflags & 3])


_BUILDERS: Final[dict[int, Callable[[Any, dict[str, Any]], ev.Event]]] = {
    OP["OP_EXEC"]: _exec,
    OP["OP_FORK"]: _fork,
    OP["OP_EXIT"]: _exit,
    OP["OP_CONNECT"]: _connect,
    OP["OP_ACCEPT"]: _accept,
    OP["OP_LISTEN"]: _listen,
    OP["OP_SOCKET_DUP"]: _socket_dup,
    OP["OP_FILE_WRITE"]: _file_write,
    OP["OP_MODULE_LOAD"]: _module_load,
    OP["OP_FD_OPEN"]: _fd_open,
}


def decode(raw: bytes) -> ev.Event:
    """Decode one record. Raises DecodeError when it does not match the declared layout."""
    if len(raw) < HEADER_SIZE:
        raise DecodeError(f"record of {len(raw)} bytes is shorter than the {HEADER_SIZE}-byte header")
    header = layout.EventHeader.from_buffer_copy(raw[:HEADER_SIZE])
    struct = layout.OP_STRUCT.get(header.op)
    if struct is None:
        raise DecodeError(f"unknown record op {header.op}")
    full = ctypes.sizeof(struct)
    if header.size != len(raw) and not (header.size <= len(raw) < header.size + 8):
        # The ring buffer rounds records up to 8 bytes; anything else is a torn or foreign record.
        raise DecodeError(f"op {header.op}: header says {header.size} bytes, record has {len(raw)}")
    if not layout.min_size(header.op) <= header.size <= full:
        raise DecodeError(f"op {header.op}: size {header.size} outside [{layout.min_size(header.op)}, {full}]")
    body = raw[: header.size]
    if len(body) < full:
        body = body + bytes(full - len(body))  # a variable record was cut after its tail's used part
    record = struct.from_buffer_copy(body)
    return _BUILDERS[header.op](record, _header(header))
