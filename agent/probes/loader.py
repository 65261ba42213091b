"""Compile, attach and read the probes. The only module that imports bcc.

The ring-buffer callback only copies bytes; decoding happens later, outside bcc (agent.decode).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Any

from agent.abi import layout
from agent.probes.offsets import KernelOffsets, kernel_offsets
from agent.probes.source import Features, ProbeOptions, detect_features, render_cflags, render_source


class ProbeError(RuntimeError):
    """The probes could not be built or attached; the message says what to do."""


COMPILER_LIBS = ("libLLVM", "libclang")  # what bcc compiles with
MADV_PAGEOUT = 21
DROP_REASONS = ("ringbuf_full", "stash_full", "net_ringbuf_full", "file_ringbuf_full",
                "file_unresolved")  # bpf/include/common.h DROP_*


@dataclass(frozen=True)
class BuiltProgram:
    """What gets compiled: the exact text and flags (``chainwatch bpf dump`` prints this)."""

    text: str
    cflags: list[str]
    offsets: KernelOffsets
    features: Features


def build_program(options: ProbeOptions) -> BuiltProgram:
    """Gather offsets and features and render the program. No bcc needed."""
    features = detect_features()
    offsets = kernel_offsets()
    text = render_source(persistence=options.persistence)
    return BuiltProgram(text, render_cflags(offsets, features, options), offsets, features)


def import_bcc() -> Any:
    """bcc's Python module, or a ProbeError saying how to get it."""
    try:
        import bcc
    except ImportError as exc:
        raise ProbeError(
            "bcc's Python bindings are not importable: install the distro package python3-bpfcc "
            "(make setup does it) and run chainwatch with the system Python or a venv made with "
            f"--system-site-packages ({exc})") from exc
    return bcc


_KTIME = layout.EventHeader.ktime.offset


def _ktime(record: bytes) -> int:
    return int.from_bytes(record[_KTIME:_KTIME + 8], "little")


class Sensor:
    """The loaded BPF program: ``poll()`` returns the raw records seen since the last call."""

    def __init__(self, program: BuiltProgram):
        if program.features.tracefs is None:
            raise ProbeError("tracefs is not mounted: run `mount -t tracefs nodev /sys/kernel/tracing` "
                             "(make setup does it)")
        bcc = import_bcc()
        self.program = program
        self._pending: list[bytes] = []
        try:
            # bcc attaches every TRACEPOINT_PROBE / RAW_TRACEPOINT_PROBE while loading.
            self._bpf = bcc.BPF(text=program.text.encode(), cflags=program.cflags)
        except Exception as exc:  # bcc raises bare Exception on compile and attach errors
            raise ProbeError(f"the BPF program failed to build or attach ({exc}); "
                             "`chainwatch doctor` checks the kernel and headers") from exc
        try:
            # Reached by tail call from the file probes (bpf/persistence.bpf.c TAIL_*), in this order.
            for index, name in enumerate((b"persist_finish", b"persist_emit")):
                func = self._bpf.load_func(name, bcc.BPF.TRACEPOINT)
                self._bpf[b"file_tail"][ctypes.c_int(index)] = ctypes.c_int(func.fd)
        except Exception as exc:
            self._bpf.cleanup()
            raise ProbeError(f"the file probes' resolver failed to load ({exc})") from exc
        for ring in (b"events", b"net_events", b"file_events"):
            self._bpf[ring].open_ring_buffer(self._on_record)
        self._drops = self._bpf[b"drops"]
        # bcc attached the file probes before their tail-called programs were in place: the write-opens of
        # those few milliseconds counted as file_unresolved. Nothing is watched before this point (the /proc
        # seed covers processes), so the loss counters start here.
        self._drops.clear()

    def _on_record(self, _ctx: Any, data: Any, size: int) -> None:
        # Copy only: the buffer is the kernel's and is reused once we return.
        self._pending.append(ctypes.string_at(data, size))

    def _take(self) -> list[bytes]:
        # Two rings are read one after the other; put the batch back in kernel time order (header.ktime),
        # so that a process's exec still comes before its connect.
        out, self._pending = self._pending, []
        out.sort(key=_ktime)
        return out

    def poll(self, timeout_ms: int) -> list[bytes]:
        """Wait up to timeout_ms for records, then return every record that arrived, oldest first."""
        self._bpf.ring_buffer_poll(timeout_ms)
        # Lifecycle records are queued without a wakeup (bpf/include/common.h): collect them too.
        self._bpf.ring_buffer_consume()
        return self._take()

    def drain(self) -> list[bytes]:
        """Everything already in the ring buffers, without waiting, oldest first."""
        self._bpf.ring_buffer_consume()
        return self._take()

    def set_context_executables(self, names: dict[str, int]) -> None:
        """Fill the exec probe's table of executable basenames that start a context by themselves."""
        table = self._bpf[b"context_exes"]
        for name, context in names.items():
            raw = name.encode()
            if len(raw) >= layout.CONTEXT_NAME_LEN:
                continue  # cannot be matched in the kernel; userspace still recognises it
            key = table.Key()
            ctypes.memmove(ctypes.addressof(key), raw, len(raw))
            table[key] = ctypes.c_uint32(context)

    def write_context(self, pid: int, start_time: int, context: int, root_pid: int, root_start: int) -> None:
        """Set (context != 0) or clear the kernel's context of process ``pid`` started at ``start_time``."""
        table = self._bpf[b"contexts"]
        key = ctypes.c_uint32(pid)
        if not context:
            try:
                del table[key]
            except KeyError:
                pass
            return
        value = layout.MAP_STRUCTS["context_tag"](context=context, root_pid=root_pid, root_start=root_start,
                                                   start_time=start_time)
        table[key] = table.Leaf.from_buffer_copy(bytes(value))

    def release_compiler(self) -> int:
        """Page out LLVM's and clang's code once the program is loaded; returns the mappings paged out.

        They are most of the agent's resident memory (about 80 MiB) and never run again: the ring buffer and
        map calls live in libbcc. MADV_PAGEOUT (Linux 5.4+) only reclaims; nothing is lost if a page is
        needed after all. Read-only and executable mappings only, so no written data is involved.
        """
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        done = 0
        with open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                fields = line.split()
                if len(fields) < 6 or "w" in fields[1] or not any(lib in fields[5] for lib in COMPILER_LIBS):
                    continue
                start, end = (int(x, 16) for x in fields[0].split("-"))
                if libc.madvise(start, end - start, MADV_PAGEOUT) == 0:
                    done += 1
        return done

    def kernel_drops(self) -> dict[str, int]:
        """Loss counters from the kernel, summed over CPUs."""
        out = {}
        for index, reason in enumerate(DROP_REASONS):
            values = self._drops[ctypes.c_int(index)]
            out[reason] = int(sum(values))
        return out

    def attached(self) -> list[str]:
        """Names of the attached tracepoints (for the startup log)."""
        names = [tp.decode() if isinstance(tp, bytes) else str(tp) for tp in self._bpf.tracepoint_fds]
        names += [f"raw:{tp.decode() if isinstance(tp, bytes) else tp}" for tp in self._bpf.raw_tracepoint_fds]
        return sorted(names)

    def close(self) -> None:
        """Detach and unload everything."""
        bpf, self._bpf = getattr(self, "_bpf", None), None
        if bpf is not None:
            bpf.cleanup()


def open_sensor(options: ProbeOptions | None = None) -> Sensor:
    """Build and load the probes; raises ProbeError with a clear message."""
    if os.geteuid() != 0:
        raise ProbeError("chainwatch must run as root to load BPF programs: run it with sudo or as a root service")
    return Sensor(build_program(options or ProbeOptions()))
