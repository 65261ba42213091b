"""Minimal, fast reader of Linux kernel BTF blobs (e.g. ``/sys/kernel/btf/vmlinux``).

The format is documented in the kernel's ``Documentation/bpf/btf.rst``.  The
blob starts with a header::

    u16 magic (0xeB9F)  u8 version  u8 flags  u32 hdr_len
    u32 type_off  u32 type_len  u32 str_off  u32 str_len

followed (at ``hdr_len``) by the type section and the string section, whose
offsets are relative to the end of the header.  The type section is a
sequence of ``struct btf_type {u32 name_off; u32 info; u32 size_or_type}``
records, each followed by kind-specific trailing data.  Type ids are
1-based positions in that sequence; id 0 is ``void``.

Loading only scans the type section once to record where each record starts
(every record is a whole number of 32-bit words, so the section is viewed as
an array of u32).  Names are decoded lazily and STRUCT/UNION/FWD types are
indexed by name on the first by-name lookup.  This keeps loading the ~6 MB
vmlinux BTF well under a second.

Only what the sensor needs is implemented: member byte offsets
(:meth:`Btf.offsetof`) and struct sizes (:meth:`Btf.sizeof`).  Split BTF
(kernel modules, whose type ids continue those of vmlinux) is not supported.
"""

from __future__ import annotations

import bisect
import os
import struct
import sys
from array import array
from collections.abc import Mapping

__all__ = ["Btf", "BtfError", "resolve_offsets"]

BTF_MAGIC = 0xEB9F
BTF_VERSION = 1
_HEADER_MIN_LEN = 24

# BTF kinds (info bits 24-28).
KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_FLOAT = 16
KIND_DECL_TAG = 17
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19

_KIND_NAMES: dict[int, str] = {
    0: "UNKNOWN",
    KIND_INT: "INT",
    KIND_PTR: "PTR",
    KIND_ARRAY: "ARRAY",
    KIND_STRUCT: "STRUCT",
    KIND_UNION: "UNION",
    KIND_ENUM: "ENUM",
    KIND_FWD: "FWD",
    KIND_TYPEDEF: "TYPEDEF",
    KIND_VOLATILE: "VOLATILE",
    KIND_CONST: "CONST",
    KIND_RESTRICT: "RESTRICT",
    KIND_FUNC: "FUNC",
    KIND_FUNC_PROTO: "FUNC_PROTO",
    KIND_VAR: "VAR",
    KIND_DATASEC: "DATASEC",
    KIND_FLOAT: "FLOAT",
    KIND_DECL_TAG: "DECL_TAG",
    KIND_TYPE_TAG: "TYPE_TAG",
    KIND_ENUM64: "ENUM64",
}

# Trailing data per kind, in 32-bit words: (fixed, per vlen entry).
# INT +4 bytes, ARRAY +12, STRUCT/UNION +12*vlen, ENUM +8*vlen,
# FUNC_PROTO +8*vlen, VAR +4, DATASEC +12*vlen, DECL_TAG +4, ENUM64 +12*vlen.
_TRAILING_WORDS: dict[int, tuple[int, int]] = {
    0: (0, 0),
    KIND_INT: (1, 0),
    KIND_PTR: (0, 0),
    KIND_ARRAY: (3, 0),
    KIND_STRUCT: (0, 3),
    KIND_UNION: (0, 3),
    KIND_ENUM: (0, 2),
    KIND_FWD: (0, 0),
    KIND_TYPEDEF: (0, 0),
    KIND_VOLATILE: (0, 0),
    KIND_CONST: (0, 0),
    KIND_RESTRICT: (0, 0),
    KIND_FUNC: (0, 0),
    KIND_FUNC_PROTO: (0, 2),
    KIND_VAR: (1, 0),
    KIND_DATASEC: (0, 3),
    KIND_FLOAT: (0, 0),
    KIND_DECL_TAG: (1, 0),
    KIND_TYPE_TAG: (0, 0),
    KIND_ENUM64: (0, 3),
}

# Kinds that only qualify another type; offsetof/dotted paths look through them.
_MODIFIER_KINDS = frozenset({KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG})
_COMPOSITE_KINDS = frozenset({KIND_STRUCT, KIND_UNION})

# Guards against reference cycles / absurd nesting in corrupt blobs.
_MAX_DEPTH = 64


class BtfError(Exception):
    """Raised for malformed BTF data or for queries BTF cannot answer."""


class Btf:
    """Parsed BTF type information.

    Create instances with :meth:`from_file` or :meth:`from_bytes`.
    """

    def __init__(
        self,
        words: array[int],
        strings: bytes,
        type_offsets: list[int],
        composite_ids: list[int],
        source: str,
    ) -> None:
        """Store pre-validated sections; use :meth:`from_file`/:meth:`from_bytes`."""
        self._words = words
        self._strings = strings
        # _type_offsets[type_id] = word index of that record (index 0 = void).
        self._type_offsets = type_offsets
        self._composite_ids = composite_ids
        self.source = source
        self._name_cache: dict[int, str] = {}
        self._by_name: dict[str, list[int]] | None = None

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_file(cls, path: str | os.PathLike[str] = "/sys/kernel/btf/vmlinux") -> Btf:
        """Read and parse the BTF blob at ``path`` (default: the running kernel's)."""
        source = os.fspath(path)
        try:
            with open(source, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise BtfError(f"{source}: cannot read BTF: {exc.strerror or exc}") from exc
        return cls.from_bytes(data, source=source)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> Btf:
        """Parse an in-memory BTF blob; ``source`` names it in error messages."""
        if len(data) < 4:
            raise BtfError(f"{source}: truncated BTF header ({len(data)} bytes, need {_HEADER_MIN_LEN})")
        (magic_le,) = struct.unpack_from("<H", data, 0)
        if magic_le == BTF_MAGIC:
            endian = "<"
        elif magic_le == 0x9FEB:
            endian = ">"
        else:
            raise BtfError(f"{source}: not a BTF blob (bad magic 0x{magic_le:04x}, expected 0x{BTF_MAGIC:04x})")
        if len(data) < _HEADER_MIN_LEN:
            raise BtfError(f"{source}: truncated BTF header ({len(data)} bytes, need {_HEADER_MIN_LEN})")
        _magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            endian + "HBBIIIII", data, 0
        )
        if version != BTF_VERSION:
            raise BtfError(f"{source}: unsupported BTF version {version} (expected {BTF_VERSION})")
        if hdr_len < _HEADER_MIN_LEN or hdr_len > len(data):
            raise BtfError(f"{source}: invalid BTF header length {hdr_len} (blob is {len(data)} bytes)")
        type_start = hdr_len + type_off
        type_end = type_start + type_len
        str_start = hdr_len + str_off
        str_end = str_start + str_len
        if type_end > len(data):
            raise BtfError(
                f"{source}: BTF type section [{type_start}, {type_end}) extends past end of data ({len(data)} bytes)"
            )
        if str_end > len(data):
            raise BtfError(
                f"{source}: BTF string section [{str_start}, {str_end}) extends past end of data ({len(data)} bytes)"
            )
        if type_len % 4:
            raise BtfError(f"{source}: BTF type section length {type_len} is not a multiple of 4")

        words: array[int] = array("I")
        if words.itemsize != 4:  # pragma: no cover - every mainstream platform has 4-byte "I"
            words = array("L")
            if words.itemsize != 4:
                raise BtfError(f"{source}: no 32-bit unsigned array type on this platform")
        words.frombytes(data[type_start:type_end])
        if (endian == "<") != (sys.byteorder == "little"):
            words.byteswap()

        type_offsets, composite_ids = _scan_types(words, source)
        return cls(words, bytes(data[str_start:str_end]), type_offsets, composite_ids, source)

    # ------------------------------------------------------------------ basics

    @property
    def type_count(self) -> int:
        """Number of types in the blob, not counting the implicit ``void`` (id 0)."""
        return len(self._type_offsets) - 1

    def _record(self, type_id: int) -> int:
        """Word index of type ``type_id``'s record; raises for void/out-of-range ids."""
        if type_id <= 0 or type_id >= len(self._type_offsets):
            raise BtfError(f"{self.source}: reference to type id {type_id} outside 1..{self.type_count}")
        return self._type_offsets[type_id]

    def _kind(self, type_id: int) -> int:
        """Kind of ``type_id`` (void counts as kind 0)."""
        if type_id == 0:
            return 0
        return (self._words[self._record(type_id) + 1] >> 24) & 0x1F

    def _name(self, name_off: int) -> str:
        """Decode (and cache) the string at ``name_off`` in the string section."""
        cached = self._name_cache.get(name_off)
        if cached is not None:
            return cached
        strings = self._strings
        if name_off >= len(strings):
            raise BtfError(f"{self.source}: string offset {name_off} outside string section ({len(strings)} bytes)")
        end = strings.find(b"\0", name_off)
        if end < 0:
            raise BtfError(f"{self.source}: unterminated string at offset {name_off}")
        name = strings[name_off:end].decode("utf-8", errors="replace")
        self._name_cache[name_off] = name
        return name

    def type_name(self, type_id: int) -> str:
        """Name of ``type_id`` ("" for anonymous types and void)."""
        if type_id == 0:
            return ""
        return self._name(self._words[self._record(type_id)])

    def _describe(self, type_id: int) -> str:
        """Human-readable ``KIND name`` for error messages."""
        kind = self._kind(type_id)
        name = self.type_name(type_id) or "(anon)"
        return f"{_KIND_NAMES.get(kind, str(kind))} {name}"

    def _strip_modifiers(self, type_id: int) -> int:
        """Follow typedef/const/volatile/restrict/type_tag chains to the underlying type."""
        words = self._words
        for _ in range(_MAX_DEPTH):
            if type_id == 0:
                return 0
            off = self._record(type_id)
            if (words[off + 1] >> 24) & 0x1F not in _MODIFIER_KINDS:
                return type_id
            type_id = words[off + 2]
        raise BtfError(f"{self.source}: modifier chain too deep (cycle?) at type id {type_id}")

    # ------------------------------------------------------------------ lookup

    def _name_index(self) -> dict[str, list[int]]:
        """Lazily build ``name -> [type ids]`` for STRUCT/UNION/FWD types."""
        if self._by_name is None:
            index: dict[str, list[int]] = {}
            words = self._words
            offsets = self._type_offsets
            for type_id in self._composite_ids:
                name_off = words[offsets[type_id]]
                if name_off:
                    index.setdefault(self._name(name_off), []).append(type_id)
            self._by_name = index
        return self._by_name

    def find_struct(self, name: str) -> int:
        """Type id of the struct/union called ``name``.

        A leading ``"struct "``/``"union "`` is accepted.  When the name occurs
        several times, the first definition with members wins, then the first
        definition at all; forward declarations alone are an error.
        """
        bare = name.strip()
        for prefix in ("struct ", "union "):
            if bare.startswith(prefix):
                bare = bare[len(prefix) :].strip()
        candidates = self._name_index().get(bare, [])
        words = self._words
        offsets = self._type_offsets
        first_def: int | None = None
        saw_fwd = False
        for type_id in candidates:
            info = words[offsets[type_id] + 1]
            if (info >> 24) & 0x1F == KIND_FWD:
                saw_fwd = True
                continue
            if info & 0xFFFF:
                return type_id
            if first_def is None:
                first_def = type_id
        if first_def is not None:
            return first_def
        if saw_fwd:
            raise BtfError(f"{self.source}: struct {bare} is only forward-declared in BTF")
        raise BtfError(f"{self.source}: struct {bare} not found in BTF")

    def find_func(self, name: str) -> int | None:
        """Type id of the function called ``name`` (BTF_KIND_FUNC: a kfunc, for a call to it), or None."""
        key = b"\0" + name.encode() + b"\0"
        pos = self._strings.find(key)
        if pos < 0:
            return None
        # A FUNC record starts with the word name_off: find that word in the type section (bytes.find, as array.index
        # takes no start before Python 3.10), at a record's start, with the FUNC kind.
        needle = array(self._words.typecode, [pos + 1]).tobytes()
        data = self._words.tobytes()
        offsets = self._type_offsets
        at = data.find(needle)
        size = self._words.itemsize
        while at >= 0:
            word = at // size
            type_id = bisect.bisect_left(offsets, word, 1)  # offsets[0] is void's placeholder
            if at % size == 0 and type_id < len(offsets) and offsets[type_id] == word:
                if (self._words[word + 1] >> 24) & 0x1F == KIND_FUNC:
                    return type_id
            at = data.find(needle, at + 1)
        return None

    def sizeof(self, struct: str) -> int:
        """Size in bytes of the struct/union called ``struct``."""
        return self._words[self._record(self.find_struct(struct)) + 2]

    def _find_member(self, comp_id: int, member: str, depth: int = 0) -> tuple[int, int, int] | None:
        """Find ``member`` in composite ``comp_id``, descending into anonymous members.

        Returns ``(bit_offset, bitfield_size, member_type_id)`` with the bit
        offset accumulated across anonymous levels, or ``None`` if absent.
        """
        if depth > _MAX_DEPTH:
            raise BtfError(f"{self.source}: anonymous member nesting too deep at type id {comp_id}")
        words = self._words
        off = self._record(comp_id)
        info = words[off + 1]
        vlen = info & 0xFFFF
        kind_flag = info >> 31
        anonymous: list[tuple[int, int]] = []
        pos = off + 3
        for _ in range(vlen):
            name_off = words[pos]
            m_type = words[pos + 1]
            m_off = words[pos + 2]
            pos += 3
            if kind_flag:
                bits, bitfield = m_off & 0xFFFFFF, m_off >> 24
            else:
                bits, bitfield = m_off, 0
            if name_off == 0 or not self._name(name_off):
                if bitfield == 0:
                    anonymous.append((bits, m_type))
                continue
            if self._name(name_off) == member:
                return bits, bitfield, m_type
        for bits, m_type in anonymous:
            inner = self._strip_modifiers(m_type)
            if inner and self._kind(inner) in _COMPOSITE_KINDS:
                found = self._find_member(inner, member, depth + 1)
                if found is not None:
                    return bits + found[0], found[1], found[2]
        return None

    def _is_int_bitfield(self, type_id: int) -> bool:
        """True if ``type_id`` is an INT whose encoding makes it a bitfield."""
        type_id = self._strip_modifiers(type_id)
        if self._kind(type_id) != KIND_INT:
            return False
        off = self._record(type_id)
        size = self._words[off + 2]
        encoding = self._words[off + 3]
        nr_bits = encoding & 0xFF
        int_bit_off = (encoding >> 16) & 0xFF
        return int_bit_off != 0 or nr_bits != size * 8

    def offsetof(self, struct: str, member_path: str) -> int:
        """Byte offset of member_path (dotted, e.g. "sk.__sk_common" or just "real_parent") in `struct`.

        Descends into ANONYMOUS struct/union members transparently (in this kernel
        mm_struct.arg_start sits inside an anonymous struct member, and
        sock_common.skc_daddr inside anonymous unions/structs) and adds their
        offsets. A dotted path follows named members through
        typedefs/const/volatile to the member's struct type (not through
        pointers). Raises BtfError naming struct and member when missing, and
        for bitfield members.
        """
        parts = member_path.split(".")
        if not member_path or any(not p.strip() for p in parts):
            raise BtfError(f"{self.source}: invalid member path {member_path!r} for struct {struct}")
        comp_id = self.find_struct(struct)
        where = struct
        total_bits = 0
        member_type = comp_id
        for i, raw in enumerate(parts):
            part = raw.strip()
            if i > 0:
                prev_type = self._strip_modifiers(member_type)
                prev_kind = self._kind(prev_type)
                if prev_kind not in _COMPOSITE_KINDS:
                    hint = " (cannot follow pointers)" if prev_kind == KIND_PTR else ""
                    raise BtfError(
                        f"{self.source}: {struct}.{'.'.join(parts[:i])} is "
                        f"{self._describe(prev_type) if prev_type else 'void'}, not a "
                        f"struct/union{hint}; cannot resolve {struct}.{member_path}"
                    )
                comp_id = prev_type
            found = self._find_member(comp_id, part)
            if found is None:
                raise BtfError(
                    f"{self.source}: struct {where} has no member {part!r} (resolving {struct}.{member_path})"
                )
            bits, bitfield, member_type = found
            if bitfield or self._is_int_bitfield(member_type) or bits % 8:
                raise BtfError(
                    f"{self.source}: {struct}.{'.'.join(parts[: i + 1])} is a bitfield "
                    f"(bit offset {total_bits + bits}); it has no byte offset"
                )
            total_bits += bits
            where = f"{struct}.{'.'.join(parts[: i + 1])}"
        return total_bits // 8


def _scan_types(words: array[int], source: str) -> tuple[list[int], list[int]]:
    """Walk the type section once, returning record word offsets and STRUCT/UNION/FWD ids."""
    trailing = [_TRAILING_WORDS.get(k) for k in range(32)]
    offsets = [0]  # id 0 = void, no record
    composite: list[int] = []
    append = offsets.append
    n = len(words)
    pos = 0
    type_id = 0
    while pos < n:
        if pos + 3 > n:
            raise BtfError(
                f"{source}: truncated BTF type record at type section offset {pos * 4} (type id {type_id + 1})"
            )
        info = words[pos + 1]
        kind = (info >> 24) & 0x1F
        sizes = trailing[kind]
        if sizes is None:
            raise BtfError(
                f"{source}: unknown BTF kind {kind} for type id {type_id + 1} at type section offset {pos * 4}"
            )
        type_id += 1
        append(pos)
        if kind == KIND_STRUCT or kind == KIND_UNION or kind == KIND_FWD:
            composite.append(type_id)
        pos += 3 + sizes[0] + sizes[1] * (info & 0xFFFF)
    if pos != n:
        raise BtfError(
            f"{source}: truncated BTF type record for type id {type_id} "
            f"(needs {(pos - n) * 4} more bytes than the type section holds)"
        )
    return offsets, composite


def resolve_offsets(btf: Btf, wanted: Mapping[str, tuple[str, str]]) -> dict[str, int]:
    """wanted maps a macro name like "TASK_REAL_PARENT" -> ("task_struct", "real_parent"); returns name -> byte offset.

    Collects ALL missing members and raises one BtfError listing them.
    """
    result: dict[str, int] = {}
    problems: list[str] = []
    prefix = f"{btf.source}: "
    for macro, (struct_name, member_path) in wanted.items():
        try:
            result[macro] = btf.offsetof(struct_name, member_path)
        except BtfError as exc:
            msg = str(exc).removeprefix(prefix)
            problems.append(f"{macro} ({struct_name}.{member_path}): {msg}")
    if problems:
        raise BtfError(
            f"{btf.source}: cannot resolve {len(problems)} of {len(wanted)} offsets:\n  " + "\n  ".join(problems)
        )
    return result
