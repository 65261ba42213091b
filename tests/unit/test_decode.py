"""agent.decode: raw ring-buffer records, built by hand with the ctypes classes of agent.abi.layout."""

from __future__ import annotations

import ctypes
from typing import Any

import pytest

from agent import events as ev
from agent.abi import layout
from agent.decode import HEADER_SIZE, DecodeError, decode

OPS = layout.OPS
SC = layout.SYSCALLS
ARGV = b"/bin/sh\0-c\0echo hi\0"
ENV = b"GITHUB_RUN_ID=7\0HOME=/root\0npm_package_name=x\0"


def put_bytes(record: ctypes.Structure, name: str, data: bytes) -> None:
    """Copy raw bytes (NULs included) into a char[]/u8[] field."""
    field = getattr(type(record), name)
    assert len(data) <= field.size
    ctypes.memmove(ctypes.addressof(record) + field.offset, data, len(data))


def _record(op_name: str, **fields: Any) -> Any:
    """A record of kind op_name with a filled header (size = the whole struct) and the given body fields."""
    struct = layout.OP_STRUCT[OPS[op_name]]
    r = struct()
    h = r.hdr
    h.op = OPS[op_name]
    h.flags = 0
    h.size = ctypes.sizeof(struct)
    h.ktime = 1_000_000
    h.tgid = 4242
    h.pid = 4243
    h.ppid = 17
    h.uid = 1000
    h.start_time = 555_000_111
    h.cgroup_id = 9
    h.comm = b"bash"
    for name, value in fields.items():
        if isinstance(value, bytes):
            put_bytes(r, name, value)
        else:
            setattr(r, name, value)
    return r


def _exec_record(argv: bytes = ARGV, env: bytes = ENV, filename: bytes = b"/bin/sh") -> Any:
    return _record(
        "OP_EXEC",
        filename_len=len(filename),
        args_len=len(argv),
        env_len=len(env),
        filename=filename,
        args=argv,
        env=env,
    )


def _cut(record: Any, tail_len: int) -> bytes:
    """The variable-size wire form: the record cut after tail_len bytes of its tail, size set to match."""
    size = layout.min_size(record.hdr.op) + tail_len
    record.hdr.size = size
    return bytes(record)[:size]


def _pad8(raw: bytes) -> bytes:
    return raw + bytes(-len(raw) % 8)


def test_exec_fields() -> None:
    """An exec record decodes to args, filtered env, filename, comm and the header's identity fields."""
    raw = _cut(_exec_record(), len(ENV))
    event = decode(raw)
    assert isinstance(event, ev.Exec)
    assert event.args == ("/bin/sh", "-c", "echo hi")
    assert event.env == {"GITHUB_RUN_ID": "7", "npm_package_name": "x"}
    assert event.filename == "/bin/sh"
    assert event.comm == "bash"
    assert event.pid == 4242  # hdr.tgid
    assert event.tid == 4243  # hdr.pid
    assert event.ppid == 17
    assert event.start_time == 555_000_111
    assert event.uid == 1000
    assert event.cgroup_id == 9
    assert event.ktime == 1_000_000
    assert event.flags == 0


def test_exec_full_size_record() -> None:
    """An exec record sent at its full struct size decodes the same as the cut one."""
    full = bytes(_exec_record())
    assert len(full) == ctypes.sizeof(layout.OP_STRUCT[OPS["OP_EXEC"]])
    assert decode(full) == decode(_cut(_exec_record(), len(ENV)))


def test_exec_cut_after_env_len() -> None:
    """A variable-size exec record cut right after env_len bytes decodes; empty env too."""
    raw = _cut(_exec_record(), len(ENV))
    assert len(raw) == layout.min_size(OPS["OP_EXEC"]) + len(ENV)
    assert decode(raw).env == {"GITHUB_RUN_ID": "7", "npm_package_name": "x"}  # type: ignore[attr-defined]
    empty = decode(_cut(_exec_record(env=b""), 0))
    assert isinstance(empty, ev.Exec)
    assert empty.env == {}
    assert empty.args == ("/bin/sh", "-c", "echo hi")


def test_exec_flags_carried() -> None:
    """Header flags (truncation bits) are carried to the event."""
    r = _exec_record()
    r.hdr.flags = layout.FLAGS["EV_ARGS_TRUNCATED"] | layout.FLAGS["EV_ENV_TRUNCATED"]
    event = decode(_cut(r, len(ENV)))
    assert event.flags == ev.FLAG_ARGS_TRUNCATED | ev.FLAG_ENV_TRUNCATED


def test_ringbuf_padding_accepted() -> None:
    """Up to 7 bytes of ring-buffer round-up padding after hdr.size are accepted and ignored."""
    raw = _cut(_exec_record(), len(ENV) + 1)  # an odd size so the padding is not empty
    padded = _pad8(raw)
    assert len(padded) > len(raw)
    assert decode(padded) == decode(raw)
    for extra in range(1, 8):
        assert decode(raw + b"\xff" * extra) == decode(raw)


def test_padding_of_eight_or_more_rejected() -> None:
    """Eight or more bytes past hdr.size is not padding: DecodeError."""
    raw = _cut(_exec_record(), len(ENV))
    with pytest.raises(DecodeError):
        decode(raw + bytes(8))


def test_size_larger_than_received() -> None:
    """A record whose size field is larger than the bytes received raises DecodeError."""
    raw = _cut(_exec_record(), len(ENV))
    r = _exec_record()
    r.hdr.size = len(raw) + 100
    with pytest.raises(DecodeError, match="header says"):
        decode(bytes(r)[: len(raw)])


def test_size_below_minimum() -> None:
    """An exec record whose size stops before the env field raises DecodeError."""
    r = _exec_record(env=b"")
    size = layout.min_size(OPS["OP_EXEC"]) - 8
    r.hdr.size = size
    with pytest.raises(DecodeError, match="outside"):
        decode(bytes(r)[:size])


def test_fixed_record_must_be_whole() -> None:
    """A fixed-size record (connect) cut short, with a matching size field, raises DecodeError."""
    r = _record("OP_CONNECT", family=2, sock_type=1, port=80)
    size = ctypes.sizeof(r) - 8
    r.hdr.size = size
    with pytest.raises(DecodeError):
        decode(bytes(r)[:size])


@pytest.mark.parametrize("length", [0, 1, HEADER_SIZE // 2, HEADER_SIZE - 1])
def test_shorter_than_header(length: int) -> None:
    """A record shorter than the common header raises DecodeError."""
    with pytest.raises(DecodeError, match="shorter than"):
        decode(bytes(_exec_record())[:length])


@pytest.mark.parametrize("op", [0, max(OPS.values()) + 1, 0xFFFF])
def test_unknown_op(op: int) -> None:
    """A record with an op not in the layout raises DecodeError."""
    r = _record("OP_FORK", parent_start_time=1)
    r.hdr.op = op
    with pytest.raises(DecodeError, match="unknown record op"):
        decode(bytes(r))


@pytest.mark.parametrize(
    "field,value",
    [
        ("args_len", layout.ARGS_MAX + 1),
        ("filename_len", layout.FILENAME_MAX + 1),
        ("env_len", layout.ENV_MAX + 1),
        ("args_len", 0xFFFFFFFF),
    ],
)
def test_length_past_field(field: str, value: int) -> None:
    """A length field larger than its char[] raises DecodeError, not a read past the field."""
    r = _exec_record()
    setattr(r, field, value)
    with pytest.raises(DecodeError, match="past the field"):
        decode(bytes(r))


def test_file_write_path_len_past_field() -> None:
    """A file_write path_len larger than the path field raises DecodeError."""
    r = _record("OP_FILE_WRITE", syscall=SC["SC_OPENAT"], path=b"/etc/cron.d/x", path_len=layout.PATH_MAX + 1)
    with pytest.raises(DecodeError):
        decode(bytes(r))


def test_connect_ipv4_tcp() -> None:
    """connect IPv4/TCP: daddr, dport, transport, family, fd and result."""
    r = _record(
        "OP_CONNECT", fd=3, result=-115, family=2, sock_type=1, port=4444, lport=0, addr=bytes([198, 51, 100, 2])
    )
    event = decode(bytes(r))
    assert isinstance(event, ev.Connect)
    assert event.daddr == "198.51.100.2"
    assert event.dport == 4444
    assert event.transport == "tcp"
    assert event.family == "ipv4"
    assert event.fd == 3
    assert event.result == -115
    assert event.pid == 4242


def test_connect_ipv6_udp() -> None:
    """connect IPv6/UDP: the whole 16-byte address, including zero bytes, is read."""
    addr = bytes.fromhex("20010db8000000000000000000000002")
    event = decode(bytes(_record("OP_CONNECT", fd=5, family=10, sock_type=2, port=53, addr=addr)))
    assert isinstance(event, ev.Connect)
    assert event.daddr == "2001:db8::2"
    assert event.dport == 53
    assert event.transport == "udp"
    assert event.family == "ipv6"


def test_accept_and_listen() -> None:
    """accept and listen share the connect layout: peer address/ports and local port."""
    acc = decode(
        bytes(_record("OP_ACCEPT", fd=4, family=2, sock_type=1, port=51000, lport=8080, addr=bytes([203, 0, 113, 9])))
    )
    assert isinstance(acc, ev.Accept)
    assert (acc.saddr, acc.sport, acc.lport, acc.fd) == ("203.0.113.9", 51000, 8080, 4)
    lis = decode(bytes(_record("OP_LISTEN", fd=6, result=0, family=10, sock_type=1, lport=9999)))
    assert isinstance(lis, ev.Listen)
    assert (lis.lport, lis.family, lis.transport, lis.fd) == (9999, "ipv6", "tcp", 6)


def test_socket_dup() -> None:
    """socket_dup: syscall SC_DUP2 -> "dup2", newfd, and the socket's peer."""
    r = _record(
        "OP_SOCKET_DUP",
        oldfd=3,
        newfd=1,
        syscall=SC["SC_DUP2"],
        family=2,
        sock_type=1,
        port=4444,
        addr=bytes([198, 51, 100, 2]),
    )
    event = decode(bytes(r))
    assert isinstance(event, ev.SocketDup)
    assert event.syscall == "dup2"
    assert (event.oldfd, event.newfd) == (3, 1)
    assert (event.daddr, event.dport, event.family, event.transport) == ("198.51.100.2", 4444, "ipv4", "tcp")


def test_socket_dup_unix() -> None:
    """A unix socket dup has no address and a unix transport name."""
    r = _record("OP_SOCKET_DUP", oldfd=5, newfd=0, syscall=SC["SC_DUP3"], family=1, sock_type=1)
    event = decode(bytes(r))
    assert isinstance(event, ev.SocketDup)
    assert (event.syscall, event.family, event.transport, event.daddr) == ("dup3", "unix", "stream", "")


def test_file_write_rename_with_source() -> None:
    """file_write for renameat2: operation "rename", path and source path."""
    r = _record(
        "OP_FILE_WRITE",
        syscall=SC["SC_RENAMEAT2"],
        open_flags=0,
        result=0,
        path=b"/etc/cron.d/evil",
        path_len=len(b"/etc/cron.d/evil"),
        source=b"/tmp/evil",
        source_len=len(b"/tmp/evil"),
    )
    event = decode(bytes(r))
    assert isinstance(event, ev.FileWrite)
    assert event.operation == "rename"
    assert event.path == "/etc/cron.d/evil"
    assert event.source_path == "/tmp/evil"


def test_file_write_open() -> None:
    """file_write for openat: operation "open", flags, no source."""
    r = _record(
        "OP_FILE_WRITE", syscall=SC["SC_OPENAT"], open_flags=0o1101, path=b"/root/.ssh/authorized_keys", path_len=26
    )
    event = decode(bytes(r))
    assert isinstance(event, ev.FileWrite)
    assert (event.operation, event.flags_open, event.path, event.source_path) == (
        "open",
        0o1101,
        "/root/.ssh/authorized_keys",
        "",
    )


@pytest.mark.parametrize(
    "raw,want",
    [
        (b"/etc/cron.d/../cron.d/x", "/etc/cron.d/x"),  # a relative new name put after its resolved directory
        (b"/var/spool/cron/./crontabs/root", "/var/spool/cron/crontabs/root"),
        (b"/etc//cron.d/x", "/etc/cron.d/x"),
    ],
)
def test_file_write_path_is_normalised(raw: bytes, want: str) -> None:
    """What the kernel could not fold ("..", "." and "//" in a typed new name) is folded on decode."""
    r = _record("OP_FILE_WRITE", syscall=SC["SC_RENAMEAT"], path=raw, path_len=len(raw))
    event = decode(bytes(r))
    assert isinstance(event, ev.FileWrite) and event.path == want


def test_fork_parent_start_time() -> None:
    """fork carries the parent's start time; the header describes the child."""
    event = decode(bytes(_record("OP_FORK", parent_start_time=123_456_789_012)))
    assert isinstance(event, ev.Fork)
    assert event.parent_start_time == 123_456_789_012
    assert (event.pid, event.tid, event.ppid) == (4242, 4243, 17)


@pytest.mark.parametrize("code", [0, 256, -1, 0x7FFFFFFF])
def test_exit_code(code: int) -> None:
    """exit carries the signed exit code."""
    event = decode(bytes(_record("OP_EXIT", exit_code=code)))
    assert isinstance(event, ev.Exit)
    assert event.exit_code == code


def test_module_load() -> None:
    """module_load from the finit_module tracepoint."""
    event = decode(bytes(_record("OP_MODULE_LOAD", syscall=SC["SC_FINIT_MODULE"], fd=3)))
    assert isinstance(event, ev.ModuleLoad)
    assert (event.source, event.syscall) == ("tracepoint", "finit_module")


def test_every_truncation_of_exec_raises_decode_error() -> None:
    """Every prefix of a valid exec record (no padding) raises DecodeError and nothing else."""
    raw = _cut(_exec_record(), len(ENV))
    decode(raw)  # the whole record is valid
    lengths = sorted({*range(0, len(raw), 37), *range(len(raw) - 16, len(raw)), HEADER_SIZE - 1, HEADER_SIZE})
    for length in lengths:
        try:
            decode(raw[:length])
        except DecodeError:
            continue
        except Exception as exc:  # noqa: BLE001 - the point is which type escapes
            pytest.fail(f"prefix of {length} bytes raised {type(exc).__name__}: {exc}")
        pytest.fail(f"prefix of {length} bytes of a {len(raw)}-byte record decoded without error")
