"""ctypes bindings to libbcc_bpf, bcc's map, program, attach and ring-buffer calls without its compiler.

libbcc_bpf.so.0 is the half of bcc built on libbpf: it does not link LLVM or clang, so the agent that loads
a cached program through it never maps the compiler (``import bcc`` alone costs 63 MiB of RSS and 0.15 s
here). Each call raises :class:`BpfError` (an OSError with the errno) instead of returning a negative value.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
from collections.abc import Callable
from functools import cache
from typing import Any, Final

LIBRARY: Final = "libbcc_bpf.so.0"
BPF_OBJ_NAME_LEN: Final = 16
BPF_ANY: Final = 0
# libbpf's ring_buffer_sample_fn: int (*)(void *ctx, void *data, size_t size)
RINGBUF_CALLBACK: Final = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


class BpfError(OSError):
    """A bpf() call failed; errno and strerror say why."""


# libbcc_bpf exports no call that loads BTF or creates a map with it (libbpf's are hidden inside it), so those
# go through bpf(2) itself: its commands and union bpf_attr layouts are uapi (linux/bpf.h), stable by rule.
SYS_BPF: Final = {"x86_64": 321, "aarch64": 280}
BPF_MAP_CREATE: Final = 0
BPF_BTF_LOAD: Final = 18
BPF_BTF_GET_FD_BY_ID: Final = 19
U32, U64 = ctypes.c_uint32, ctypes.c_uint64


class MapInfo(ctypes.Structure):
    """The head of the kernel's struct bpf_map_info (uapi/linux/bpf.h); the kernel fills what fits."""

    _fields_ = [
        ("type", U32),
        ("id", U32),
        ("key_size", U32),
        ("value_size", U32),
        ("max_entries", U32),
        ("map_flags", U32),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", U32),
        ("btf_vmlinux_value_type_id", U32),
        ("netns_dev", U64),
        ("netns_ino", U64),
        ("btf_id", U32),
        ("btf_key_type_id", U32),
        ("btf_value_type_id", U32),
    ]


class BtfInfo(ctypes.Structure):
    """The head of struct bpf_btf_info: where to copy the BTF object's raw bytes, and their size."""

    _fields_ = [("btf", U64), ("btf_size", U32), ("id", U32)]


class MapCreateAttr(ctypes.Structure):
    """union bpf_attr for BPF_MAP_CREATE, up to btf_value_type_id (the kernel zeroes the rest)."""

    _fields_ = [
        ("map_type", U32),
        ("key_size", U32),
        ("value_size", U32),
        ("max_entries", U32),
        ("map_flags", U32),
        ("inner_map_fd", U32),
        ("numa_node", U32),
        ("map_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("map_ifindex", U32),
        ("btf_fd", U32),
        ("btf_key_type_id", U32),
        ("btf_value_type_id", U32),
    ]


class BtfLoadAttr(ctypes.Structure):
    """union bpf_attr for BPF_BTF_LOAD."""

    _fields_ = [("btf", U64), ("btf_log_buf", U64), ("btf_size", U32), ("btf_log_size", U32), ("btf_log_level", U32)]


class GetFdByIdAttr(ctypes.Structure):
    """union bpf_attr for BPF_*_GET_FD_BY_ID."""

    _fields_ = [("id", U32), ("next_id", U32), ("open_flags", U32)]


@cache
def library() -> Any:
    """libbcc_bpf, with the prototypes of the calls used here; OSError when it is not installed."""
    lib = ctypes.CDLL(LIBRARY, use_errno=True)
    c_int, c_uint, c_char_p, c_void_p = ctypes.c_int, ctypes.c_uint, ctypes.c_char_p, ctypes.c_void_p
    signatures: dict[str, tuple[Any, list[Any]]] = {
        "bcc_create_map": (c_int, [c_int, c_char_p, c_int, c_int, c_int, c_int]),
        "bcc_prog_load": (c_int, [c_int, c_char_p, c_void_p, c_int, c_char_p, c_uint, c_int, c_char_p, c_uint]),
        "bpf_attach_tracepoint": (c_int, [c_int, c_char_p, c_char_p]),
        "bpf_attach_raw_tracepoint": (c_int, [c_int, c_char_p]),
        "bpf_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
        "bpf_update_elem": (c_int, [c_int, c_void_p, c_void_p, ctypes.c_ulonglong]),
        "bpf_delete_elem": (c_int, [c_int, c_void_p]),
        "bpf_obj_get_info": (c_int, [c_int, c_void_p, ctypes.POINTER(ctypes.c_uint32)]),
        "bpf_new_ringbuf": (c_void_p, [c_int, RINGBUF_CALLBACK, c_void_p]),
        "bpf_add_ringbuf": (c_int, [c_void_p, c_int, RINGBUF_CALLBACK, c_void_p]),
        "bpf_poll_ringbuf": (c_int, [c_void_p, c_int]),
        "bpf_consume_ringbuf": (c_int, [c_void_p]),
        "bpf_free_ringbuf": (None, [c_void_p]),
    }
    for name, (restype, argtypes) in signatures.items():
        func = getattr(lib, name)
        func.restype, func.argtypes = restype, argtypes
    return lib


@cache
def _libc() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _bpf(cmd: int, attr: ctypes.Structure, what: str) -> int:
    """bpf(cmd, &attr, sizeof attr): the new fd (BpfError on failure)."""
    number = SYS_BPF.get(platform.machine())
    if number is None:
        raise BpfError(errno.ENOSYS, f"{what}: no bpf(2) syscall number known for {platform.machine()}")
    ctypes.set_errno(0)
    result = _libc().syscall(
        ctypes.c_long(number), ctypes.c_int(cmd), ctypes.byref(attr), ctypes.c_uint(ctypes.sizeof(attr))
    )
    return _check(int(result), what)


def _check(result: int, what: str) -> int:
    if result >= 0:
        return result
    # libbpf returns -errno and sets errno; older paths only set errno.
    code = ctypes.get_errno() or -result
    raise BpfError(code, f"{what}: {os.strerror(code)}")


def create_map(map_type: int, name: str, key_size: int, value_size: int, max_entries: int, flags: int) -> int:
    """A new map's fd."""
    return _check(
        library().bcc_create_map(
            map_type, name.encode()[: BPF_OBJ_NAME_LEN - 1], key_size, value_size, max_entries, flags
        ),
        f"creating map {name}",
    )


def create_map_with_btf(
    map_type: int,
    name: str,
    key_size: int,
    value_size: int,
    max_entries: int,
    flags: int,
    btf_fd: int,
    key_type_id: int,
    value_type_id: int,
) -> int:
    """A new map's fd, its key and value described by types of a loaded BTF object (some map types, such as
    task storage, exist only so: the kernel checks the value's layout for them)."""
    attr = MapCreateAttr(
        map_type=map_type,
        key_size=key_size,
        value_size=value_size,
        max_entries=max_entries,
        map_flags=flags,
        map_name=name.encode()[: BPF_OBJ_NAME_LEN - 1],
        btf_fd=btf_fd,
        btf_key_type_id=key_type_id,
        btf_value_type_id=value_type_id,
    )
    return _bpf(BPF_MAP_CREATE, attr, f"creating map {name}")


def load_btf(data: bytes) -> int:
    """The fd of a BTF object loaded from its raw bytes (as :func:`btf_bytes` read them). On failure the
    error carries the tail of the kernel's BTF log."""
    buf = ctypes.create_string_buffer(data, len(data))
    attr = BtfLoadAttr(btf=ctypes.addressof(buf), btf_size=len(data))
    try:
        return _bpf(BPF_BTF_LOAD, attr, "loading BTF")
    except BpfError as exc:
        log = ctypes.create_string_buffer(1 << 20)
        attr = BtfLoadAttr(
            btf=ctypes.addressof(buf),
            btf_size=len(data),
            btf_log_buf=ctypes.addressof(log),
            btf_log_size=ctypes.sizeof(log),
            btf_log_level=1,
        )
        with contextlib.suppress(BpfError):
            os.close(_bpf(BPF_BTF_LOAD, attr, "loading BTF"))
        tail = log.value.decode(errors="replace").strip().splitlines()[-4:]
        code = exc.errno or errno.EINVAL
        raise BpfError(code, f"loading BTF: {os.strerror(code)}; log: {' | '.join(tail)}") from None


def _held_btf_fd(btf_id: int) -> int | None:
    """A new fd on BTF object ``btf_id`` when this process already holds one (bcc keeps the BTF it loaded
    open). Reading that needs only the fd; opening an object by id needs CAP_SYS_ADMIN, which the unit's
    capability set leaves out."""
    lib = library()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") != "anon_inode:btf":
                continue
        except OSError:
            continue  # the listing's own fd, closed by now
        info = BtfInfo()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        if lib.bpf_obj_get_info(int(name), ctypes.byref(info), ctypes.byref(size)) == 0 and info.id == btf_id:
            return os.dup(int(name))
    return None


def btf_bytes(btf_id: int) -> bytes:
    """The raw bytes of the loaded BTF object ``btf_id`` (header, types, strings), which :func:`load_btf`
    takes back. Read through an fd this process holds when there is one (no CAP_SYS_ADMIN needed)."""
    fd = _held_btf_fd(btf_id)
    if fd is None:
        fd = _bpf(BPF_BTF_GET_FD_BY_ID, GetFdByIdAttr(id=btf_id), f"opening BTF object {btf_id}")
    try:
        lib, info = library(), BtfInfo()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        _check(lib.bpf_obj_get_info(fd, ctypes.byref(info), ctypes.byref(size)), "reading BTF info")
        # Asked again with a buffer of the size the first call reported: the kernel copies the bytes into it.
        buf = ctypes.create_string_buffer(info.btf_size)
        info = BtfInfo(btf=ctypes.addressof(buf), btf_size=ctypes.sizeof(buf))
        size = ctypes.c_uint32(ctypes.sizeof(info))
        _check(lib.bpf_obj_get_info(fd, ctypes.byref(info), ctypes.byref(size)), "reading BTF bytes")
        return buf.raw[: info.btf_size]
    finally:
        os.close(fd)


def load_program(prog_type: int, name: str, insns: bytes, license: str, kern_version: int) -> int:
    """A verified program's fd. On failure the error carries the tail of the verifier's log."""
    lib = library()
    buf = ctypes.create_string_buffer(insns, len(insns))
    fd = lib.bcc_prog_load(prog_type, name.encode(), buf, len(insns), license.encode(), kern_version, 0, None, 0)
    if fd >= 0:
        return int(fd)
    code = ctypes.get_errno() or -fd
    log = ctypes.create_string_buffer(1 << 22)
    lib.bcc_prog_load(
        prog_type, name.encode(), buf, len(insns), license.encode(), kern_version, 1, log, ctypes.sizeof(log)
    )
    tail = log.value.decode(errors="replace").strip().splitlines()[-8:]
    raise BpfError(code, f"loading program {name}: {os.strerror(code)}; verifier: {' | '.join(tail)}")


def attach_tracepoint(prog_fd: int, category: str, event: str) -> int:
    """The perf event fd that keeps the program attached to category:event (closing it detaches)."""
    return _check(
        library().bpf_attach_tracepoint(prog_fd, category.encode(), event.encode()),
        f"attaching tracepoint {category}:{event}",
    )


def attach_raw_tracepoint(prog_fd: int, name: str) -> int:
    """The fd that keeps the program attached to raw tracepoint ``name`` (closing it detaches)."""
    return _check(library().bpf_attach_raw_tracepoint(prog_fd, name.encode()), f"attaching raw tracepoint {name}")


def lookup(fd: int, key: ctypes.Array[ctypes.c_char] | Any, value: Any) -> bool:
    """Fill ``value`` with the entry at ``key``; False when there is none."""
    if library().bpf_lookup_elem(fd, ctypes.byref(key), ctypes.byref(value)) == 0:
        return True
    code = ctypes.get_errno()
    if code == errno.ENOENT:
        return False
    raise BpfError(code, f"map lookup: {os.strerror(code)}")


def update(fd: int, key: Any, value: Any) -> None:
    """Set the entry at ``key``."""
    _check(library().bpf_update_elem(fd, ctypes.byref(key), ctypes.byref(value), BPF_ANY), "map update")


def delete(fd: int, key: Any) -> bool:
    """Remove the entry at ``key``; False when there was none."""
    if library().bpf_delete_elem(fd, ctypes.byref(key)) == 0:
        return True
    code = ctypes.get_errno()
    if code == errno.ENOENT:
        return False
    raise BpfError(code, f"map delete: {os.strerror(code)}")


def map_info(fd: int) -> MapInfo:
    """What the kernel says about a map: type, sizes, max_entries, flags, BTF (the compile step records these)."""
    info = MapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(library().bpf_obj_get_info(fd, ctypes.byref(info), ctypes.byref(size)), "reading map info")
    return info


def possible_cpus() -> int:
    """How many values a per-CPU map returns (the kernel sizes them by possible CPUs, not online ones)."""
    with open("/sys/devices/system/cpu/possible", encoding="ascii") as f:
        text = f.read().strip()
    count = 0
    for part in text.split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


class RingReader:
    """Ring-buffer maps read through one libbpf ring_buffer; ``on_record(data, size)`` gets each record."""

    def __init__(self, fds: list[int], on_record: Callable[[int, int], None]):
        def deliver(_ctx: int, data: int, size: int) -> int:
            on_record(data, size)
            return 0

        # ctypes passes the C pointer as an int; the callback object must live as long as the ring.
        self._callback = RINGBUF_CALLBACK(deliver)
        lib = library()
        self._ring: int | None = lib.bpf_new_ringbuf(fds[0], self._callback, None)
        if not self._ring:
            raise BpfError(ctypes.get_errno() or errno.EINVAL, "opening the ring buffer")
        for fd in fds[1:]:
            _check(lib.bpf_add_ringbuf(self._ring, fd, self._callback, None), "adding a ring buffer")

    def poll(self, timeout_ms: int) -> None:
        """Wait up to timeout_ms for a wakeup, then deliver what is there."""
        if self._ring:
            library().bpf_poll_ringbuf(self._ring, timeout_ms)

    def consume(self) -> None:
        """Deliver every record already there, without waiting."""
        if self._ring:
            library().bpf_consume_ringbuf(self._ring)

    def close(self) -> None:
        ring, self._ring = self._ring, None
        if ring:
            library().bpf_free_ringbuf(ring)
