"""The kernel/userspace event layout, declared once.

From this declaration come the C header the probes include (``bpf/include/events.gen.h``, with a
``_Static_assert`` on every size and offset) and the ctypes classes the decoder reads. ctypes lays a
Structure out with the platform C ABI, so the offsets Python computes are the ones the C compiler
must agree with; the asserts make the compiler check it.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any, Final

# Sizes of the variable parts. Powers of two so the BPF side can bound lengths with a mask.
COMM_LEN: Final = 16
FILENAME_MAX: Final = 256
ARGS_MAX: Final = 4096
ENV_MAX: Final = 8192
PATH_MAX: Final = 256

# Record kinds (header.op).
OPS: Final[dict[str, int]] = {
    "OP_EXEC": 1,
    "OP_FORK": 2,
    "OP_EXIT": 3,
    "OP_CONNECT": 4,
    "OP_ACCEPT": 5,
    "OP_LISTEN": 6,
    "OP_SOCKET_DUP": 7,
    "OP_FILE_WRITE": 8,
    "OP_MODULE_LOAD": 9,
    "OP_FD_OPEN": 10,
}

# Header flag bits. agent.events holds the same values for userspace-only flags.
FLAGS: Final[dict[str, int]] = {
    "EV_FILENAME_TRUNCATED": 1 << 0,
    "EV_ARGS_TRUNCATED": 1 << 1,
    "EV_ENV_TRUNCATED": 1 << 2,
    # 1 << 3 is userspace's FLAG_SEEDED (agent.events).
    "EV_IO_URING": 1 << 4,  # submitted through io_uring, not a syscall
    "EV_SOCK_STATE": 1 << 5,  # a TCP connect seen only as a socket entering SYN_SENT (no connect call explains it)
    # exec: the file executed has no name left (unlinked), or is a memfd (fileless execution).
    "EV_EXE_DELETED": 1 << 6,
    "EV_EXE_MEMFD": 1 << 7,
    # connect record: a sendto's destination on an unconnected UDP socket, not a connect(2).
    "EV_SENDTO": 1 << 8,
}

# fd_open_event.kind: the opens the stdio graph needs (a FIFO end, a pty master).
FD_KINDS: Final[dict[str, int]] = {"FD_FIFO": 1, "FD_PTMX": 2}

# Install and CI contexts (header.context). Package installs are below CONTEXT_CI_BASE, CI runners from
# it: a package install may start inside a CI job and takes over there, never the other way round.
CONTEXT_CI_BASE: Final = 64
_PACKAGE_MANAGERS: Final = (
    "npm",
    "yarn",
    "pnpm",
    "bun",
    "pip",
    "uv",
    "poetry",
    "pipx",
    "gem",
    "cargo",
    "composer",
    "dpkg",
    "rpm",
)
_CI_PROVIDERS: Final = ("github_actions", "gitlab", "jenkins", "buildkite")
CONTEXTS: Final[dict[str, int]] = {
    **{f"package_install_{name}": i + 1 for i, name in enumerate(_PACKAGE_MANAGERS)},
    **{f"cicd_runner_{name}": CONTEXT_CI_BASE + i for i, name in enumerate(_CI_PROVIDERS)},
}

# Small enumerations carried in records.
SYSCALLS: Final[dict[str, int]] = {
    "SC_DUP": 1,
    "SC_DUP2": 2,
    "SC_DUP3": 3,
    "SC_FCNTL": 4,
    "SC_OPEN": 5,
    "SC_OPENAT": 6,
    "SC_OPENAT2": 7,
    "SC_CREAT": 8,
    "SC_RENAME": 9,
    "SC_RENAMEAT": 10,
    "SC_RENAMEAT2": 11,
    "SC_LINK": 12,
    "SC_LINKAT": 13,
    "SC_SYMLINK": 14,
    "SC_SYMLINKAT": 15,
    "SC_INIT_MODULE": 16,
    "SC_FINIT_MODULE": 17,
}

u8, u16, u32, u64, s32 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int32

C_TYPE_NAMES: Final[dict[type, str]] = {
    u8: "__u8",
    u16: "__u16",
    u32: "__u32",
    u64: "__u64",
    s32: "__s32",
    ctypes.c_char: "char",
}


@dataclass(frozen=True)
class Record:
    """One C struct: a name, its fields, and (for variable-size records) the trailing field."""

    name: str
    fields: tuple[tuple[str, type, int], ...]  # (name, ctype, array length or 0)
    tail: str | None = None  # a variable-size record is sent cut after tail's used length


HEADER = Record(
    "event_header",
    (
        ("op", u16, 0),
        ("flags", u16, 0),
        ("size", u32, 0),
        ("ktime", u64, 0),
        ("tgid", u32, 0),
        ("pid", u32, 0),  # the calling thread
        ("ppid", u32, 0),
        ("uid", u32, 0),
        ("start_time", u64, 0),
        ("cgroup_id", u64, 0),
        ("comm", ctypes.c_char, COMM_LEN),
        # The install/CI context the kernel holds for this process (CONTEXTS id, 0: none) and its root.
        ("context", u32, 0),
        ("context_root_pid", u32, 0),
        ("context_root_start", u64, 0),
    ),
)

# Kernel maps that userspace writes, keyed and valued as declared here.
CONTEXT_NAME_LEN: Final = 32
MAP_RECORDS: Final[tuple[Record, ...]] = (
    # contexts: tgid -> the process's context. start_time guards against a reused pid.
    Record(
        "context_tag",
        (
            ("context", u32, 0),
            ("root_pid", u32, 0),
            ("root_start", u64, 0),
            ("start_time", u64, 0),
        ),
    ),
    # context_exes: an executable basename (NUL-padded) -> the context its exec starts.
    Record("context_exe", (("name", ctypes.c_char, CONTEXT_NAME_LEN),)),
)

# Socket description shared by the network and fd records: family/type from struct socket, peer and local
# address from sock_common (what the kernel holds after the call, not what the caller passed in).
SOCK_FIELDS: Final = (
    ("sock_ino", u64, 0),  # the socket's inode: the identity the stdio graph joins on
    ("family", u16, 0),
    ("sock_type", u16, 0),
    ("port", u16, 0),  # peer (or connect destination) port, host order
    ("lport", u16, 0),  # local port, host order
    ("addr", u8, 16),  # peer: IPv4 in the first 4 bytes, or IPv6
    ("laddr", u8, 16),  # local address, same encoding
)

RECORDS: Final[dict[str, Record]] = {
    "OP_EXEC": Record(
        "exec_event",
        (
            ("filename_len", u32, 0),
            ("args_len", u32, 0),
            ("env_len", u32, 0),
            ("stdio_sock_fd", s32, 0),  # which of fd 0/1/2 is described by the socket fields, or -1
            ("stdio_mode", u16, 3),  # inode i_mode of fds 0, 1, 2 (0: not open)
            ("_pad", u16, 0),
            # What fds 0, 1, 2 are, as the stdio graph joins them: the inode (pipe, FIFO, socket, file), its
            # superblock's device, the device number of a char device (which pty), the open flags (access mode),
            # and aux: a unix socket's peer inode, or a pty master's index.
            ("stdio_dev", u32, 3),
            ("stdio_rdev", u32, 3),
            ("stdio_fflags", u32, 3),
            ("_pad2", u32, 0),
            ("stdio_ino", u64, 3),
            ("stdio_aux", u64, 3),
            # The file actually executed (mm->exe_file), not the path the caller passed.
            ("exe_ino", u64, 0),
            ("exe_dev", u32, 0),
            ("exe_nlink", u32, 0),
            ("exe_size", u64, 0),
            *SOCK_FIELDS,
            ("filename", ctypes.c_char, FILENAME_MAX),
            ("args", ctypes.c_char, ARGS_MAX),
            ("env", ctypes.c_char, ENV_MAX),
        ),
        tail="env",
    ),
    "OP_FORK": Record("fork_event", (("parent_start_time", u64, 0),)),
    "OP_EXIT": Record(
        "exit_event",
        (
            ("exit_code", s32, 0),
            ("_pad", u32, 0),
        ),
    ),
    "OP_CONNECT": Record(
        "net_event",
        (
            ("fd", s32, 0),
            ("result", s32, 0),
            *SOCK_FIELDS,
        ),
    ),
    "OP_SOCKET_DUP": Record(
        "dup_event",
        (
            ("oldfd", s32, 0),
            ("newfd", s32, 0),
            ("syscall", u32, 0),
            ("_pad", u32, 0),
            *SOCK_FIELDS,
        ),
    ),
    "OP_FILE_WRITE": Record(
        "file_event",
        (
            ("syscall", u32, 0),
            ("open_flags", u32, 0),
            ("result", s32, 0),
            ("path_len", u32, 0),
            ("source_len", u32, 0),
            ("_pad", u32, 0),
            ("path", ctypes.c_char, PATH_MAX),
            ("source", ctypes.c_char, PATH_MAX),
        ),
    ),
    "OP_MODULE_LOAD": Record(
        "module_event",
        (
            ("syscall", u32, 0),
            ("fd", s32, 0),
        ),
    ),
    # A FIFO or a pty master opened: the ends of a relay that need not be on anyone's stdio.
    "OP_FD_OPEN": Record(
        "fd_open_event",
        (
            ("fd", s32, 0),
            ("kind", u32, 0),
            ("fflags", u32, 0),
            ("dev", u32, 0),
            ("ino", u64, 0),
            ("tty_index", u32, 0),
            ("_pad", u32, 0),
        ),
    ),
}
# accept and listen share the connect record's layout.
RECORDS["OP_ACCEPT"] = RECORDS["OP_CONNECT"]
RECORDS["OP_LISTEN"] = RECORDS["OP_CONNECT"]


def _ctypes_fields(record: Record) -> list[tuple[str, Any]]:
    return [(name, ctype * length if length else ctype) for name, ctype, length in record.fields]  # type: ignore[operator]


class EventHeader(ctypes.Structure):
    """The common header, as ctypes."""

    _fields_ = _ctypes_fields(HEADER)


def _body_class(record: Record) -> type[ctypes.Structure]:
    fields = [("hdr", EventHeader), *_ctypes_fields(record)]
    return type(record.name, (ctypes.Structure,), {"_fields_": fields})


STRUCTS: Final[dict[str, type[ctypes.Structure]]] = {}
for _op, _record in RECORDS.items():
    STRUCTS.setdefault(_record.name, _body_class(_record))

MAP_STRUCTS: Final[dict[str, type[ctypes.Structure]]] = {
    record.name: type(record.name, (ctypes.Structure,), {"_fields_": _ctypes_fields(record)}) for record in MAP_RECORDS
}

OP_STRUCT: Final[dict[int, type[ctypes.Structure]]] = {OPS[op]: STRUCTS[record.name] for op, record in RECORDS.items()}
OP_RECORD: Final[dict[int, Record]] = {OPS[op]: record for op, record in RECORDS.items()}


def min_size(op: int) -> int:
    """The smallest valid size of a record of kind ``op``: all of it, or up to its tail field."""
    struct = OP_STRUCT[op]
    tail = OP_RECORD[op].tail
    return getattr(struct, tail).offset if tail else ctypes.sizeof(struct)
