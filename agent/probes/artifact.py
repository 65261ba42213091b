"""The compiled probes as data: each map's spec and each program's bytecode, type and attach point.

bcc compiles the BPF C with clang in-process (2.6 s of CPU and a 140 MiB peak here), while loading the
result takes 50 ms. An :class:`Artifact` is what the compile produced, with map references made symbolic,
so that it can be written to the cache (agent.probes.cache) and loaded again without a compiler.

Map references in BPF bytecode are ``ld_imm64`` instructions whose src_reg says "map fd"
(BPF_PSEUDO_MAP_FD) or "address in a map's value" (BPF_PSEUDO_MAP_VALUE), with the fd the compiler saw in
imm. :func:`relocations` turns those into (instruction index, map name) pairs with imm zeroed, and
:func:`patch` writes the fds of the new maps back.

Maps whose key and value bcc described with BTF (the kernel creates some types, such as task storage, only
so) keep their type ids, and the artifact keeps the BTF objects they refer to (one per compiled part: see
:func:`merge`) as raw bytes, loaded again before those maps are created. Pure: no bcc, no kernel.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

FORMAT: Final = 3  # 2: maps' BTF; 3: one BTF per part (part of the cache key: older entries are simply not found)
INSN_SIZE: Final = 8
LD_IMM64: Final = 0x18  # BPF_LD | BPF_IMM | BPF_DW: the only two-slot instruction
PSEUDO_MAP_FD: Final = 1
PSEUDO_MAP_VALUE: Final = 2
MAP_PSEUDOS: Final = (PSEUDO_MAP_FD, PSEUDO_MAP_VALUE)
ATTACH_KINDS: Final = ("tracepoint", "raw_tracepoint", "tail")
# Programs reached only by tail call: the prog array and the order of their slots (bpf/persistence.bpf.c TAIL_*).
TAIL_CALLS: Final = {"file_tail": ("persist_finish", "persist_emit", "persist_dir")}
# Kfuncs the probes call. bcc cannot compile a kfunc call, so the source calls a helper number no kernel has
# (-D<name>_HELPER, agent.probes.source) and kfunc_calls() makes each such call the kfunc's: src_reg
# BPF_PSEUDO_KFUNC_CALL, imm the kfunc's BTF id in vmlinux (agent.probes.offsets.KFUNCS).
KFUNC_HELPERS: Final = {"KFUNC_RDONLY_CAST": 0x7FF0}
CALL: Final = 0x85  # BPF_JMP | BPF_CALL
PSEUDO_KFUNC_CALL: Final = 2
MAX_PROGRAM_INSNS: Final = 1_000_000  # the kernel's BPF_COMPLEXITY_LIMIT_INSNS
U32_MAX: Final = 0xFFFFFFFF
# struct btf_header (uapi/linux/btf.h): magic, version, flags, hdr_len, type_off, type_len, str_off, str_len.
BTF_HEADER: Final = struct.Struct("<HBBIIIII")
BTF_MAGIC: Final = 0xEB9F
BTF_VERSION: Final = 1
BTF_MAX_BYTES: Final = 16 << 20  # the kernel's BTF_MAX_SIZE


class ArtifactError(ValueError):
    """The bytes are not a usable artifact (corrupt, truncated, from another format, or inconsistent)."""


@dataclass(frozen=True)
class MapSpec:
    """One map as the kernel created it at compile time (bpf_map_info); ``name`` is bcc's (not truncated)."""

    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    btf_key_type_id: int = 0  # type ids in the artifact's BTF object number btf; both 0: a map created without BTF
    btf_value_type_id: int = 0
    btf: int = 0  # which of Artifact.btfs the type ids are in

    def same_map(self, other: MapSpec) -> bool:
        """Whether ``other`` describes the same kernel map (its BTF may be another part's copy of the types)."""
        return (self.name, self.type, self.key_size, self.value_size, self.max_entries, self.flags) == (
            other.name,
            other.type,
            other.key_size,
            other.value_size,
            other.max_entries,
            other.flags,
        )

    @property
    def uses_btf(self) -> bool:
        return bool(self.btf_key_type_id or self.btf_value_type_id)


@dataclass(frozen=True)
class ProgramSpec:
    """One program: its bytecode with map fds zeroed, where they go, and how it is attached.

    attach: ("tracepoint", "category:event"), ("raw_tracepoint", name) or ("tail", "prog_array:slot")."""

    name: str
    prog_type: int
    attach_kind: str
    attach_target: str
    insns: bytes
    map_refs: tuple[tuple[int, str], ...]  # (instruction index of the ld_imm64, map name)


@dataclass(frozen=True)
class Artifact:
    """Everything needed to load the probes without compiling, for one cache key."""

    key: str
    license: str
    kern_version: int
    maps: tuple[MapSpec, ...]
    programs: tuple[ProgramSpec, ...]
    compiler: str = ""  # e.g. "bcc 0.26.0", for doctor and the logs
    btfs: tuple[bytes, ...] = ()  # raw BTF objects (header, types, strings) that the maps' type ids refer to

    def map(self, name: str) -> MapSpec:
        """The map called ``name`` (KeyError when there is none)."""
        for spec in self.maps:
            if spec.name == name:
                return spec
        raise KeyError(name)


def cache_key(text: str, cflags: list[str], toolchain: dict[str, str]) -> str:
    """The key of a compile: the exact source and flags, and whatever else changes its output (the
    compiler's build, the kernel's release and BTF: see agent.probes.cache.toolchain)."""
    material = json.dumps(
        {"format": FORMAT, "text": text, "cflags": list(cflags), "toolchain": toolchain},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(material.encode()).hexdigest()


def attach_point(function: str) -> tuple[str, str]:
    """(kind, target) of a bcc function, by bcc's naming: TRACEPOINT_PROBE(cat, ev) is tracepoint__cat__ev,
    RAW_TRACEPOINT_PROBE(name) is raw_tracepoint__name; tail-called programs are listed in TAIL_CALLS."""
    if function.startswith("tracepoint__"):
        category, sep, event = function[len("tracepoint__") :].partition("__")
        if sep and category and event:
            return "tracepoint", f"{category}:{event}"
    elif function.startswith("raw_tracepoint__") and len(function) > len("raw_tracepoint__"):
        return "raw_tracepoint", function[len("raw_tracepoint__") :]
    for array, names in TAIL_CALLS.items():
        if function in names:
            return "tail", f"{array}:{names.index(function)}"
    raise ArtifactError(
        f"BPF function {function} is neither a TRACEPOINT_PROBE, a RAW_TRACEPOINT_PROBE nor a "
        "tail-called program in agent.probes.artifact.TAIL_CALLS: it would never run"
    )


def _insn(insns: bytes, index: int) -> tuple[int, int, int, int, int]:
    """(code, dst_reg, src_reg, off, imm) of instruction ``index`` (little-endian struct bpf_insn)."""
    code, regs, off, imm = struct.unpack_from("<BBhi", insns, index * INSN_SIZE)
    return code, regs & 0x0F, regs >> 4, off, imm


def _map_loads(insns: bytes) -> list[tuple[int, int, int]]:
    """(index, src_reg, imm) of every ld_imm64 with a pseudo src_reg; ArtifactError for a truncated one."""
    if len(insns) % INSN_SIZE:
        raise ArtifactError(f"bytecode of {len(insns)} bytes is not a whole number of instructions")
    count = len(insns) // INSN_SIZE
    out, index = [], 0
    while index < count:
        code, _, src, _, imm = _insn(insns, index)
        if code == LD_IMM64:
            if index + 1 >= count:
                raise ArtifactError("bytecode ends inside an ld_imm64 instruction")
            if src:
                out.append((index, src, imm))
            index += 2
        else:
            index += 1
    return out


def relocations(insns: bytes, fd_names: dict[int, str]) -> tuple[bytes, tuple[tuple[int, str], ...]]:
    """Bytecode with every map fd zeroed, and (index, map name) for each: ``fd_names`` maps the fds the
    compiler used to the maps' names. ArtifactError for a reference that is not to one of those maps."""
    out = bytearray(insns)
    refs = []
    for index, src, imm in _map_loads(insns):
        if src not in MAP_PSEUDOS:
            raise ArtifactError(
                f"instruction {index} is an ld_imm64 of kind {src}, which the cache cannot "
                "relocate (only map fds and map values)"
            )
        if imm not in fd_names:
            raise ArtifactError(f"instruction {index} refers to fd {imm}, which is none of the program's maps")
        struct.pack_into("<i", out, index * INSN_SIZE + 4, 0)
        refs.append((index, fd_names[imm]))
    return bytes(out), tuple(refs)


def kfunc_ids(btf_ids: Mapping[str, int]) -> dict[int, int]:
    """helper number -> kfunc BTF id, for the KFUNC_HELPERS this kernel has (``btf_ids``: name -> id,
    agent.probes.offsets.KernelOffsets.kfuncs)."""
    return {number: btf_ids[name] for name, number in KFUNC_HELPERS.items() if name in btf_ids}


def kfunc_calls(insns: bytes, ids: Mapping[int, int]) -> bytes:
    """``insns`` with each call of a helper number in ``ids`` made a call of that kfunc. ArtifactError for a call
    of a KFUNC_HELPERS number without an id: the source used a kfunc this kernel lacks."""
    out = bytearray(insns)
    for index in range(len(out) // INSN_SIZE):
        code, regs, _, imm = struct.unpack_from("<BBhi", out, index * INSN_SIZE)
        if code != CALL or regs >> 4 != 0:
            continue
        if imm in ids:
            struct.pack_into("<BBhi", out, index * INSN_SIZE, code, PSEUDO_KFUNC_CALL << 4, 0, ids[imm])
        elif imm in KFUNC_HELPERS.values():
            raise ArtifactError(f"instruction {index} calls a kfunc (helper number {imm:#x}) this kernel does not have")
    return bytes(out)


def patch(program: ProgramSpec, map_fds: dict[str, int]) -> bytes:
    """The program's bytecode with each map reference set to that map's fd in this process."""
    out = bytearray(program.insns)
    for index, name in program.map_refs:
        struct.pack_into("<i", out, index * INSN_SIZE + 4, map_fds[name])
    return bytes(out)


def check_btf(data: bytes) -> None:
    """ArtifactError unless ``data`` is a whole BTF object: its header's sections end exactly where it does
    (what the kernel's BTF_LOAD checks first; the types themselves are the kernel's to verify)."""
    if len(data) < BTF_HEADER.size or len(data) > BTF_MAX_BYTES:
        raise ArtifactError(f"BTF of {len(data)} bytes cannot hold a BTF object")
    magic, version, _, hdr_len, type_off, type_len, str_off, str_len = BTF_HEADER.unpack_from(data)
    if magic != BTF_MAGIC or version != BTF_VERSION or not BTF_HEADER.size <= hdr_len <= len(data):
        raise ArtifactError("BTF has a bad header (magic, version or header length)")
    if hdr_len + max(type_off + type_len, str_off + str_len) != len(data):
        raise ArtifactError(
            f"BTF is {len(data)} bytes, its header says {hdr_len} + sections ending at "
            f"{max(type_off + type_len, str_off + str_len)} (truncated or padded)"
        )


def _validate(artifact: Artifact) -> None:
    names = [m.name for m in artifact.maps]
    if len(set(names)) != len(names):
        raise ArtifactError("two maps have the same name")
    for m in artifact.maps:
        if not m.name or not all(
            0 <= v <= U32_MAX
            for v in (m.type, m.key_size, m.value_size, m.max_entries, m.flags, m.btf_key_type_id, m.btf_value_type_id)
        ):
            raise ArtifactError(f"map {m.name!r} has an out-of-range field")
        if m.uses_btf and not 0 <= m.btf < len(artifact.btfs):
            raise ArtifactError(f"map {m.name!r} has BTF type ids but the artifact has no BTF object {m.btf}")
    for btf in artifact.btfs:
        check_btf(btf)
    seen_programs = set()
    for p in artifact.programs:
        if p.name in seen_programs:
            raise ArtifactError(f"program {p.name} appears twice")
        seen_programs.add(p.name)
        if (p.attach_kind, p.attach_target) != attach_point(p.name):
            raise ArtifactError(
                f"program {p.name} is attached as {p.attach_kind} {p.attach_target}, which its name does not say"
            )
        if p.attach_kind == "tail" and p.attach_target.split(":")[0] not in names:
            raise ArtifactError(f"program {p.name} is tail-called through a map that does not exist")
        if not 0 < len(p.insns) // INSN_SIZE <= MAX_PROGRAM_INSNS:
            raise ArtifactError(f"program {p.name} has {len(p.insns) // INSN_SIZE} instructions")
        loads = _map_loads(p.insns)
        if [index for index, _ in p.map_refs] != [index for index, _, _ in loads]:
            raise ArtifactError(f"program {p.name}: the map references do not match its ld_imm64 instructions")
        for (index, name), (_, src, imm) in zip(p.map_refs, loads):  # equal lengths: checked just above
            if src not in MAP_PSEUDOS or imm != 0 or name not in names:
                raise ArtifactError(
                    f"program {p.name}: instruction {index} is not a relocatable reference to a known map"
                )


def merge(parts: Sequence[Artifact]) -> Artifact:
    """One artifact from the parts of one program compiled apart (agent.probes.source.COMPILE_PARTS), for the
    same key. A map that several parts define (common.h's) is one map and must be the same map in each; a program
    that several define must be the same bytecode. Each part's BTF is kept, and its maps point at it."""
    if not parts:
        raise ArtifactError("no parts to merge")
    first = parts[0]
    maps: dict[str, MapSpec] = {}
    programs: dict[str, ProgramSpec] = {}
    btfs: list[bytes] = []
    for part in parts:
        if (part.key, part.license, part.kern_version, part.compiler) != (
            first.key,
            first.license,
            first.kern_version,
            first.compiler,
        ):
            raise ArtifactError("the parts disagree on the key, license, kernel version or compiler")
        base = len(btfs)
        btfs.extend(part.btfs)
        for spec in part.maps:
            known = maps.get(spec.name)
            if known is None:
                maps[spec.name] = dataclasses.replace(spec, btf=spec.btf + base) if spec.uses_btf else spec
            elif not known.same_map(spec):
                raise ArtifactError(f"map {spec.name} is defined differently by two parts: {known} and {spec}")
        for prog in part.programs:
            seen = programs.setdefault(prog.name, prog)
            if seen != prog:
                raise ArtifactError(f"program {prog.name} is compiled differently by two parts")
    used = sorted({spec.btf for spec in maps.values() if spec.uses_btf})  # a part's BTF no kept map uses goes
    renumber = {old: new for new, old in enumerate(used)}
    return dataclasses.replace(
        first,
        maps=tuple(dataclasses.replace(m, btf=renumber[m.btf]) if m.uses_btf else m for m in maps.values()),
        programs=tuple(sorted(programs.values(), key=lambda p: p.name)),
        btfs=tuple(btfs[old] for old in used),
    )


def dumps(artifact: Artifact) -> bytes:
    """The artifact as bytes: a magic line, the SHA-256 of the body, then the body (JSON)."""
    _validate(artifact)
    body = json.dumps(
        {
            "format": FORMAT,
            "key": artifact.key,
            "license": artifact.license,
            "kern_version": artifact.kern_version,
            "compiler": artifact.compiler,
            "btfs": [base64.b64encode(btf).decode() for btf in artifact.btfs],
            "maps": [vars(m) for m in artifact.maps],
            "programs": [
                {
                    "name": p.name,
                    "prog_type": p.prog_type,
                    "attach_kind": p.attach_kind,
                    "attach_target": p.attach_target,
                    "insns": base64.b64encode(p.insns).decode(),
                    "map_refs": [list(ref) for ref in p.map_refs],
                }
                for p in artifact.programs
            ],
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    return MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body


MAGIC: Final = b"chainwatch-probes 1\n"


def loads(data: bytes, key: str | None = None) -> Artifact:
    """Parse and check bytes from :func:`dumps`; ``key``, when given, must be the one inside.
    ArtifactError for anything else: a corrupt cache entry is recompiled, never trusted."""
    if not data.startswith(MAGIC):
        raise ArtifactError("not a chainwatch probe artifact (bad header)")
    digest, sep, body = data[len(MAGIC) :].partition(b"\n")
    if not sep or hashlib.sha256(body).hexdigest().encode() != digest:
        raise ArtifactError("checksum mismatch (truncated or modified)")
    try:
        doc = json.loads(body)
        if doc["format"] != FORMAT:
            raise ArtifactError(f"format {doc['format']}, expected {FORMAT}")
        artifact = Artifact(
            key=_typed(doc["key"], str),
            license=_typed(doc["license"], str),
            kern_version=_typed(doc["kern_version"], int),
            compiler=_typed(doc["compiler"], str),
            btfs=tuple(base64.b64decode(_typed(btf, str), validate=True) for btf in _typed(doc["btfs"], list)),
            maps=tuple(
                MapSpec(**{f: _typed(m[f], str if f == "name" else int) for f in MAP_FIELDS}) for m in doc["maps"]
            ),
            programs=tuple(
                ProgramSpec(
                    name=_typed(p["name"], str),
                    prog_type=_typed(p["prog_type"], int),
                    attach_kind=_typed(p["attach_kind"], str),
                    attach_target=_typed(p["attach_target"], str),
                    insns=base64.b64decode(_typed(p["insns"], str), validate=True),
                    map_refs=tuple((_typed(i, int), _typed(n, str)) for i, n in p["map_refs"]),
                )
                for p in doc["programs"]
            ),
        )
    except ArtifactError:
        raise
    except (ValueError, KeyError, TypeError) as exc:  # JSON, base64, missing fields, wrong shapes
        raise ArtifactError(f"malformed body ({type(exc).__name__}: {exc})") from exc
    if key is not None and artifact.key != key:
        raise ArtifactError("the artifact is for another source, flags or kernel (key mismatch)")
    _validate(artifact)
    return artifact


MAP_FIELDS: Final = (
    "name",
    "type",
    "key_size",
    "value_size",
    "max_entries",
    "flags",
    "btf_key_type_id",
    "btf_value_type_id",
    "btf",
)


def _typed(value: Any, kind: type) -> Any:
    # bool is an int in Python: refuse it where an int is meant.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ArtifactError(f"expected {kind.__name__}, found {type(value).__name__}")
    return value
