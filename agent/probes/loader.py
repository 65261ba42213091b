"""Build, load, attach and read the probes.

The program is compiled by bcc in a child process (agent.probes.compile) or taken from the compile cache
(agent.probes.cache), then loaded here through libbcc_bpf (agent.probes.bpflib): the agent never maps the
compiler. The ring-buffer callback only copies bytes; decoding happens later (agent.decode).
"""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass
from typing import Any, Final

import structlog

from agent.abi import layout
from agent.probes import bpflib
from agent.probes.artifact import Artifact, cache_key, kfunc_ids, patch
from agent.probes.cache import ProbeCache, toolchain
from agent.probes.compile import BCC_MISSING, CompileError, compile_in_children
from agent.probes.offsets import KernelOffsets, kernel_offsets
from agent.probes.source import Features, ProbeOptions, detect_features, render_cflags, render_parts

log = structlog.get_logger()


class ProbeError(RuntimeError):
    """The probes could not be built or attached; the message says what to do."""


DROP_REASONS = (
    "ringbuf_full",
    "stash_full",
    "net_ringbuf_full",
    "file_ringbuf_full",
    "file_unresolved",
)  # bpf/include/common.h DROP_*
RINGS: Final = ("events", "net_events", "file_events")
BPF_MAP_TYPE_PROG_ARRAY: Final = 3
BPF_MAP_TYPE_PERCPU_ARRAY: Final = 6
BPF_MAP_TYPE_RINGBUF: Final = 27


@dataclass(frozen=True)
class BuiltProgram:
    """What gets compiled: the exact parts and flags (``chainwatch bpf dump`` prints them)."""

    parts: tuple[str, ...]  # agent.probes.source.COMPILE_PARTS, rendered
    cflags: list[str]
    offsets: KernelOffsets
    features: Features

    @property
    def kfuncs(self) -> dict[int, int]:
        """helper number -> kfunc BTF id, for the compile (agent.probes.artifact.kfunc_calls)."""
        return kfunc_ids(self.offsets.kfuncs)

    @property
    def text(self) -> str:
        """The whole program: the parts joined, which compiles as one (every file has an include guard)."""
        return "\n".join(self.parts)


def build_program(options: ProbeOptions) -> BuiltProgram:
    """Gather offsets and features and render the program. No bcc needed."""
    features = detect_features()
    offsets = kernel_offsets()
    parts = render_parts(persistence=options.persistence)
    return BuiltProgram(parts, render_cflags(offsets, features, options), offsets, features)


def import_bcc() -> Any:
    """bcc's Python module, or a ProbeError saying how to get it (the block program compiles in-process)."""
    try:
        import bcc
    except ImportError as exc:
        raise ProbeError(f"{BCC_MISSING} ({exc})") from exc
    return bcc


_KTIME = layout.EventHeader.ktime.offset


def _ktime(record: bytes) -> int:
    return int.from_bytes(record[_KTIME : _KTIME + 8], "little")


def _expect(
    artifact: Artifact,
    name: str,
    map_type: int | None = None,
    key_size: int | None = None,
    value_size: int | None = None,
) -> None:
    """The maps this class reads and writes are there with the layout agent.abi says."""
    try:
        spec = artifact.map(name)
    except KeyError:
        raise ProbeError(f"the BPF program has no map {name}") from None
    for what, want, have in (
        ("type", map_type, spec.type),
        ("key size", key_size, spec.key_size),
        ("value size", value_size, spec.value_size),
    ):
        if want is not None and want != have:
            raise ProbeError(f"map {name} has {what} {have}, the agent expects {want} (agent/abi out of date?)")


class Sensor:
    """The loaded BPF program: ``poll()`` returns the raw records seen since the last call.

    ``startup`` says how it was obtained (``compile``: cached or compiled) and what each step took."""

    def __init__(self, program: BuiltProgram, cache: ProbeCache | None = None):
        if program.features.tracefs is None:
            raise ProbeError(
                "tracefs is not mounted: run `mount -t tracefs nodev /sys/kernel/tracing` (make setup does it)"
            )
        try:
            bpflib.library()
        except OSError as exc:
            raise ProbeError(
                f"bcc's libbcc_bpf.so.0 cannot be loaded ({exc}): install the distro package "
                "python3-bpfcc (it brings libbpfcc; make setup does it)"
            ) from exc
        self.program = program
        self._pending: list[bytes] = []
        self._maps: dict[str, int] = {}
        self._programs: dict[str, int] = {}
        self._links: dict[str, int] = {}  # attach point -> the fd that keeps the program attached
        self._ring: bpflib.RingReader | None = None
        self._cpus = bpflib.possible_cpus()
        key = cache_key(program.text, program.cflags, toolchain())
        self.startup: dict[str, Any] = {"compile": "cached"}
        artifact = cache.load(key) if cache is not None else None
        if artifact is not None:
            try:
                self._load(artifact)
                return
            except ProbeError as exc:
                # Same key, so the same compile: a kernel or libbcc change the key missed. Compile afresh.
                log.warning("probe_cache_load_failed", reason=str(exc), action="recompiling")
                self.close()
                assert cache is not None
                cache.remove(key)
        try:
            compiled = compile_in_children(program.parts, program.cflags, key, program.kfuncs)
        except CompileError as exc:
            raise ProbeError(str(exc)) from exc
        self.startup = {
            "compile": "compiled",
            "compile_s": round(compiled.seconds, 3),
            "compile_peak_mib": compiled.peak_rss >> 20,
        }
        self._load(compiled.artifact)
        if cache is not None:
            cache.store(compiled.artifact)  # only what loaded: a bad compile is never cached

    def _load(self, artifact: Artifact) -> None:
        """Create the maps, load (verify) every program, fill the tail-call slots, then attach: no probe runs
        before the programs it tail-calls are in place. ProbeError, with everything closed, on failure."""
        _expect(artifact, "contexts", key_size=4, value_size=ctypes.sizeof(layout.MAP_STRUCTS["context_tag"]))
        _expect(artifact, "context_exes", key_size=ctypes.sizeof(layout.MAP_STRUCTS["context_exe"]), value_size=4)
        _expect(artifact, "drops", BPF_MAP_TYPE_PERCPU_ARRAY, key_size=4, value_size=8)
        for ring in RINGS:
            _expect(artifact, ring, BPF_MAP_TYPE_RINGBUF)
        started = time.monotonic()
        try:
            self._create_maps(artifact)
            for prog in artifact.programs:
                self._programs[prog.name] = bpflib.load_program(
                    prog.prog_type, prog.name, patch(prog, self._maps), artifact.license, artifact.kern_version
                )
            loaded = time.monotonic()
            for prog in artifact.programs:
                if prog.attach_kind == "tail":
                    array, slot = prog.attach_target.split(":")
                    bpflib.update(
                        self._maps[array], ctypes.c_uint32(int(slot)), ctypes.c_uint32(self._programs[prog.name])
                    )
            for prog in artifact.programs:
                fd = self._programs[prog.name]
                if prog.attach_kind == "tracepoint":
                    category, event = prog.attach_target.split(":")
                    self._links[prog.attach_target] = bpflib.attach_tracepoint(fd, category, event)
                elif prog.attach_kind == "raw_tracepoint":
                    self._links[f"raw:{prog.attach_target}"] = bpflib.attach_raw_tracepoint(fd, prog.attach_target)
            self._ring = bpflib.RingReader([self._maps[ring] for ring in RINGS], self._on_record)
        except OSError as exc:
            self.close()
            raise ProbeError(
                f"the BPF program failed to load or attach ({exc}); `chainwatch doctor` checks the kernel"
            ) from exc
        self.startup.update(
            load_s=round(loaded - started, 3), attach_s=round(time.monotonic() - loaded, 3), compiler=artifact.compiler
        )

    def _create_maps(self, artifact: Artifact) -> None:
        """Every map of the artifact, those with BTF type ids against their BTF object, each loaded once (the maps
        keep a reference to it: our fd goes once they exist)."""
        btf_fds: dict[int, int] = {}
        try:
            for spec in artifact.maps:
                if spec.uses_btf:
                    if spec.btf not in btf_fds:
                        btf_fds[spec.btf] = bpflib.load_btf(artifact.btfs[spec.btf])
                    fd = bpflib.create_map_with_btf(
                        spec.type,
                        spec.name,
                        spec.key_size,
                        spec.value_size,
                        spec.max_entries,
                        spec.flags,
                        btf_fds[spec.btf],
                        spec.btf_key_type_id,
                        spec.btf_value_type_id,
                    )
                else:
                    fd = bpflib.create_map(
                        spec.type, spec.name, spec.key_size, spec.value_size, spec.max_entries, spec.flags
                    )
                self._maps[spec.name] = fd
        finally:
            for btf_fd in btf_fds.values():
                os.close(btf_fd)

    def _on_record(self, data: int, size: int) -> None:
        # Copy only: the buffer is the kernel's and is reused once we return.
        self._pending.append(ctypes.string_at(data, size))

    def _take(self) -> list[bytes]:
        # Three rings are read one after the other; put the batch back in kernel time order (header.ktime),
        # so that a process's exec still comes before its connect.
        out, self._pending = self._pending, []
        out.sort(key=_ktime)
        return out

    def poll(self, timeout_ms: int) -> list[bytes]:
        """Wait up to timeout_ms for records, then return every record that arrived, oldest first."""
        assert self._ring is not None
        self._ring.poll(timeout_ms)
        # Lifecycle records are queued without a wakeup (bpf/include/common.h): collect them too.
        self._ring.consume()
        return self._take()

    def drain(self) -> list[bytes]:
        """Everything already in the ring buffers, without waiting, oldest first."""
        assert self._ring is not None
        self._ring.consume()
        return self._take()

    def set_context_executables(self, names: dict[str, int]) -> None:
        """Fill the exec probe's table of executable basenames that start a context by themselves."""
        fd = self._maps["context_exes"]
        for name, context in names.items():
            raw = name.encode()
            if len(raw) >= layout.CONTEXT_NAME_LEN:
                continue  # cannot be matched in the kernel; userspace still recognises it
            key = layout.MAP_STRUCTS["context_exe"]()
            ctypes.memmove(ctypes.addressof(key), raw, len(raw))
            bpflib.update(fd, key, ctypes.c_uint32(context))

    def write_context(self, pid: int, start_time: int, context: int, root_pid: int, root_start: int) -> None:
        """Set (context != 0) or clear the kernel's context of process ``pid`` started at ``start_time``."""
        fd, key = self._maps["contexts"], ctypes.c_uint32(pid)
        if not context:
            bpflib.delete(fd, key)
            return
        value = layout.MAP_STRUCTS["context_tag"](
            context=context, root_pid=root_pid, root_start=root_start, start_time=start_time
        )
        bpflib.update(fd, key, value)

    def kernel_drops(self) -> dict[str, int]:
        """Loss counters from the kernel, summed over CPUs."""
        fd, out = self._maps["drops"], {}
        values = (ctypes.c_uint64 * self._cpus)()  # a per-CPU lookup returns one slot per possible CPU
        for index, reason in enumerate(DROP_REASONS):
            out[reason] = sum(values) if bpflib.lookup(fd, ctypes.c_uint32(index), values) else 0
        return out

    def attached(self) -> list[str]:
        """Names of the attached tracepoints (for the startup log): category:event, raw:name."""
        return sorted(self._links)

    def program_tags(self) -> dict[str, str]:
        """The kernel's tag of each loaded program (a hash of its instructions with map fds left out, from
        /proc/self/fdinfo): equal tags mean the same bytecode, however it was loaded."""
        out = {}
        for name, fd in self._programs.items():
            with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as info:
                out[name] = next((line.split()[1] for line in info if line.startswith("prog_tag:")), "")
        return out

    def close(self) -> None:
        """Detach and unload everything (safe to call twice)."""
        ring, self._ring = getattr(self, "_ring", None), None
        if ring is not None:
            ring.close()
        for table in ("_links", "_programs", "_maps"):  # detach first, then what was attached, then the maps
            fds: dict[str, int] = getattr(self, table, {})
            for fd in fds.values():
                try:
                    os.close(fd)
                except OSError:
                    pass
            fds.clear()


def open_sensor(options: ProbeOptions | None = None, cache_dir: str | None = None) -> Sensor:
    """Build and load the probes, through the compile cache in ``cache_dir`` if given; raises ProbeError
    with a clear message."""
    if os.geteuid() != 0:
        raise ProbeError("chainwatch must run as root to load BPF programs: run it with sudo or as a root service")
    return Sensor(build_program(options or ProbeOptions()), ProbeCache(cache_dir) if cache_dir else None)
