"""The response stage's kernel block list: bpf/block.bpf.c on the root cgroup v2 (imports bcc).

Loaded only when the response config enables blocking (agent.response). The four cgroup sock_addr programs
(connect4/6, sendmsg4/6) are attached with BPF links (BPF_LINK_CREATE) rather than bcc's attach_func
(BPF_PROG_ATTACH): a link detaches when its last fd closes, so if the agent dies, even by SIGKILL, the
kernel drops the block with it. Nothing is pinned; the running agent is the only owner (the CLI reaches
it through the control socket, agent.response.ControlServer).
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import platform
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import resources
from agent.probes.loader import ProbeError, import_bcc

BLOCK_SOURCE = "block.bpf.c"  # in resources.bpf_dir(): the source tree or /usr/share/chainwatch
MAX_ENTRIES = 4096

# enum bpf_cmd / enum bpf_attach_type (include/uapi/linux/bpf.h)
BPF_LINK_CREATE = 28
ATTACH_TYPES = {"block_connect4": 10, "block_connect6": 11, "block_sendmsg4": 14, "block_sendmsg6": 15}
PROG_TYPE_CGROUP_SOCK_ADDR = 18
SYS_BPF = {"x86_64": 321, "aarch64": 280}
AF_INET, AF_INET6 = 2, 10


def find_cgroup2_root(mountinfo: str = "/proc/self/mountinfo") -> str:
    """The mount point of the cgroup v2 hierarchy (``/sys/fs/cgroup`` or, in hybrid mode, ``.../unified``)."""
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError as exc:
        raise ProbeError(f"cannot read {mountinfo} to find the cgroup v2 mount: {exc.strerror}") from exc
    for line in lines:
        pre, sep, post = line.partition(" - ")
        if sep and post.split()[:1] == ["cgroup2"]:
            return pre.split()[4].replace("\\040", " ")
    raise ProbeError(
        "blocking needs the cgroup v2 hierarchy, and none is mounted: mount it "
        "(`mount -t cgroup2 none /sys/fs/cgroup/unified`) or disable the block action"
    )


def _bpf_syscall() -> Any:
    number = SYS_BPF.get(platform.machine())
    if number is None:
        raise ProbeError(f"blocking does not know the bpf() syscall number on {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)

    def call(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
        res = int(libc.syscall(ctypes.c_long(number), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr))))
        if res < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return res

    return call


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    """BPF_LINK_CREATE: attach prog_fd to the cgroup target_fd; returns the link's fd."""
    attr = ctypes.create_string_buffer(64)
    ctypes.memmove(attr, (ctypes.c_uint32 * 4)(prog_fd, target_fd, attach_type, 0), 16)
    fd: int = _bpf_syscall()(BPF_LINK_CREATE, attr)
    return fd


@dataclass(frozen=True)
class BlockEntry:
    """One blocked address (port 0: every port)."""

    address: str
    port: int
    expires_in_s: float
    hits: int

    def describe(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "port": self.port,
            "expires_in_s": round(self.expires_in_s, 1),
            "hits": self.hits,
        }


def _boot_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class Blocker:
    """The loaded block program. Thread-safe: the control socket's thread lists and unblocks."""

    def __init__(self, cgroup_root: str | None = None):
        bcc = import_bcc()
        self.cgroup_root = cgroup_root or find_cgroup2_root()
        self._lock = threading.Lock()
        self._links: list[int] = []
        try:
            self._bpf = bcc.BPF(
                text=(resources.bpf_dir() / BLOCK_SOURCE).read_text().encode(),
                cflags=[f"-DBLOCK_MAX_ENTRIES={MAX_ENTRIES}"],
            )
        except Exception as exc:  # bcc raises bare Exception on compile errors
            raise ProbeError(
                f"the block program failed to build ({exc}); `chainwatch doctor` checks the "
                "kernel, or disable the block action"
            ) from exc
        try:
            cgroup_fd = os.open(self.cgroup_root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            self.close()
            raise ProbeError(f"cannot open the cgroup v2 root {self.cgroup_root}: {exc.strerror}") from exc
        try:
            for name, attach_type in ATTACH_TYPES.items():
                fn = self._bpf.load_func(name.encode(), PROG_TYPE_CGROUP_SOCK_ADDR, attach_type=attach_type)
                self._links.append(link_create(fn.fd, cgroup_fd, attach_type))
        except Exception as exc:
            self.close()
            raise ProbeError(
                f"the block program could not be attached to {self.cgroup_root} ({exc}); "
                "the kernel needs cgroup sock_addr programs and BPF links (5.7+)"
            ) from exc
        finally:
            os.close(cgroup_fd)
        self._table = self._bpf[b"blocked"]

    def _key(self, address: str, port: int) -> Any:
        ip = ipaddress.ip_address(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        key = self._table.Key()
        raw = ip.packed
        ctypes.memmove(ctypes.addressof(key.addr), raw, len(raw))
        key.port = port
        key.family = AF_INET if ip.version == 4 else AF_INET6
        return key

    @staticmethod
    def _address(key: Any) -> str:
        raw = bytes(key.addr)
        return str(ipaddress.ip_address(raw[:4] if key.family == AF_INET else raw))

    def block(self, address: str, port: int, ttl_s: float) -> bool:
        """Block address (and port, 0 = all) for ttl_s; returns False if it was blocked already (TTL renewed)."""
        key = self._key(address, port)
        with self._lock:
            old = self._table.get(key)
            value = self._table.Leaf(int(_boot_ns() + ttl_s * 1e9), old.hits if old is not None else 0)
            self._table[key] = value
            return old is None or old.expires_ns <= _boot_ns()

    def unblock(self, address: str) -> int:
        """Remove every entry for address (any port); returns how many."""
        target = self._key(address, 0)
        removed = 0
        with self._lock:
            for key in list(self._table.keys()):
                if key.family == target.family and bytes(key.addr) == bytes(target.addr):
                    del self._table[key]
                    removed += 1
        return removed

    def entries(self) -> list[BlockEntry]:
        """Every entry, live or expired-but-not-yet-removed."""
        now = _boot_ns()
        with self._lock:
            items = [(k, v) for k, v in self._table.items()]
        return sorted(
            (BlockEntry(self._address(k), int(k.port), (v.expires_ns - now) / 1e9, int(v.hits)) for k, v in items),
            key=lambda e: (e.address, e.port),
        )

    def expire(self) -> list[BlockEntry]:
        """Remove entries past their TTL (the program already ignores them); returns them."""
        gone = [e for e in self.entries() if e.expires_in_s <= 0]
        with self._lock:
            for entry in gone:
                try:
                    del self._table[self._key(entry.address, entry.port)]
                except KeyError:
                    pass
        return gone

    def close(self) -> None:
        """Detach (close the links) and unload. Idempotent."""
        links, self._links = self._links, []
        for fd in links:
            os.close(fd)
        bpf = getattr(self, "_bpf", None)
        self._bpf = None
        if bpf is not None:
            bpf.cleanup()
