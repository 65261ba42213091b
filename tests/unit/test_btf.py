"""Tests for agent.btf: a hand-built BTF blob and the running kernel's vmlinux BTF."""

from __future__ import annotations

import json
import os
import platform
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from agent.btf import Btf, BtfError, resolve_offsets

# --------------------------------------------------------------------------- builder

K_INT, K_PTR, K_ARRAY, K_STRUCT, K_UNION, K_ENUM, K_FWD, K_TYPEDEF = (
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
)
K_VOLATILE, K_CONST, K_RESTRICT, K_FUNC, K_FUNC_PROTO, K_VAR, K_DATASEC = (
    9,
    10,
    11,
    12,
    13,
    14,
    15,
)
K_FLOAT, K_DECL_TAG, K_TYPE_TAG, K_ENUM64 = 16, 17, 18, 19


class BtfBuilder:
    """Assemble a little-endian BTF blob type by type (ids are assigned 1, 2, ...)."""

    def __init__(self) -> None:
        self.strings = bytearray(b"\0")
        self.types: list[bytes] = []

    def s(self, name: str) -> int:
        """Add ``name`` to the string section (empty -> offset 0) and return its offset."""
        if not name:
            return 0
        off = len(self.strings)
        self.strings += name.encode() + b"\0"
        return off

    def add(
        self,
        kind: int,
        name: str = "",
        size_or_type: int = 0,
        vlen: int = 0,
        kind_flag: int = 0,
        trailing: bytes = b"",
    ) -> int:
        """Append a raw type record and return its type id."""
        info = (kind_flag << 31) | (kind << 24) | vlen
        self.types.append(struct.pack("<III", self.s(name), info, size_or_type) + trailing)
        return len(self.types)

    def int_(self, name: str, size: int, bits: int | None = None, bit_off: int = 0) -> int:
        """Add an INT; ``bits`` < size*8 or ``bit_off`` != 0 makes it a bitfield encoding."""
        nbits = size * 8 if bits is None else bits
        return self.add(K_INT, name, size, trailing=struct.pack("<I", (bit_off << 16) | nbits))

    def composite(
        self,
        kind: int,
        name: str,
        size: int,
        members: list[tuple[str, int, int]],
        kind_flag: int = 0,
    ) -> int:
        """Add a STRUCT/UNION with (name, type_id, raw offset word) members."""
        trailing = b"".join(struct.pack("<III", self.s(n), t, o) for n, t, o in members)
        return self.add(kind, name, size, len(members), kind_flag, trailing)

    def build(self, magic: int = 0xEB9F, version: int = 1) -> bytes:
        """Serialise header + type section + string section."""
        types = b"".join(self.types)
        strs = bytes(self.strings)
        hdr = struct.pack("<HBBIIIII", magic, version, 0, 24, 0, len(types), len(types), len(strs))
        return hdr + types + strs


def build_fixture() -> bytes:
    """Build the fixture blob exercising every kind and the offset cases under test."""
    b = BtfBuilder()
    int_id = b.int_("int", 4)
    # One record of every kind with trailing data (vlen > 0 where it applies), so that
    # a wrong trailing-size computation shifts every later record and breaks the tests.
    b.add(K_ARRAY, trailing=struct.pack("<III", int_id, int_id, 16))
    b.add(
        K_ENUM,
        "color",
        4,
        vlen=2,
        trailing=struct.pack("<IiIi", b.s("RED"), 0, b.s("BLUE"), 1),
    )
    proto = b.add(
        K_FUNC_PROTO,
        "",
        int_id,
        vlen=2,
        trailing=struct.pack("<IIII", b.s("a"), int_id, b.s("b"), int_id),
    )
    func = b.add(K_FUNC, "do_thing", proto)
    var = b.add(K_VAR, "some_var", int_id, trailing=struct.pack("<I", 1))
    b.add(
        K_DATASEC,
        ".data",
        8,
        vlen=2,
        trailing=struct.pack("<IIIIII", var, 0, 4, var, 4, 4),
    )
    b.add(K_DECL_TAG, "tag", func, trailing=struct.pack("<i", -1))
    b.add(K_ENUM64, "big", 8, vlen=1, trailing=struct.pack("<IIi", b.s("HUGE"), 1, 1))
    b.add(K_FLOAT, "double", 8)
    b.add(K_TYPE_TAG, "user", int_id)
    b.add(K_RESTRICT, "", int_id)
    b.add(K_FWD, "only_fwd")
    b.add(K_FWD, "inner")  # forward declaration before the real definition
    # Duplicate name: an empty definition first, then the real one with members.
    b.composite(K_STRUCT, "dup", 0, [])

    # struct inner { int a; int b; };   (size 8)
    inner = b.composite(K_STRUCT, "inner", 8, [("a", int_id, 0), ("b", int_id, 32)])
    inner_ptr = b.add(K_PTR, "", inner)
    inner_t = b.add(K_TYPEDEF, "inner_t", inner)
    const_inner_t = b.add(K_CONST, "", inner_t)
    vol_const_inner_t = b.add(K_VOLATILE, "", const_inner_t)

    b.composite(K_STRUCT, "dup", 4, [("d", int_id, 0)])

    # struct { int s1; int s2; }  -- anonymous, lives inside the anonymous union below
    anon_struct = b.composite(K_STRUCT, "", 8, [("s1", int_id, 0), ("s2", int_id, 32)])
    # union { int u1; struct { int s1; int s2; }; }
    anon_union = b.composite(K_UNION, "", 8, [("u1", int_id, 0), ("", anon_struct, 0)])
    three_bits = b.int_("int", 4, bits=3)

    # struct outer {
    #   int x;                 // 0
    #   struct inner *p;       // 8
    #   union { ... };         // 16  -> u1 @16, s1 @16, s2 @20
    #   inner_t named;         // 24  -> named.a @24, named.b @28
    #   volatile const inner_t cv; // 32
    #   int legacy_bf;         // 40, INT-encoded 3-bit bitfield (kind_flag = 0)
    # };
    b.composite(
        K_STRUCT,
        "outer",
        48,
        [
            ("x", int_id, 0),
            ("p", inner_ptr, 64),
            ("", anon_union, 128),
            ("named", inner_t, 192),
            ("cv", vol_const_inner_t, 256),
            ("legacy_bf", three_bits, 320),
        ],
    )
    # struct flags (kind_flag=1) { int f0:3; int :5 (padding); int f1; int f2; inner in; }
    b.composite(
        K_STRUCT,
        "flags",
        20,
        [
            ("f0", int_id, (3 << 24) | 0),
            ("", int_id, (5 << 24) | 3),
            ("f1", int_id, 32),
            (
                "f2",
                int_id,
                (32 << 24) | 64,
            ),  # bitfield_size 32: still a bitfield per BTF
            ("in", inner, 96),
        ],
        kind_flag=1,
    )
    return b.build()


@pytest.fixture(scope="module")
def tiny() -> Btf:
    """The fixture blob, parsed."""
    return Btf.from_bytes(build_fixture(), source="tiny.btf")


# --------------------------------------------------------------------------- tiny blob


def test_tiny_counts_every_kind_record() -> None:
    """Every record, including each kind's trailing data, is counted as one type."""
    btf = Btf.from_bytes(build_fixture())
    assert btf.type_count == 26


def test_tiny_plain_and_pointer_members(tiny: Btf) -> None:
    """Plain members report their byte offset; pointer members are ordinary members."""
    assert tiny.offsetof("outer", "x") == 0
    assert tiny.offsetof("outer", "p") == 8
    assert tiny.offsetof("inner", "b") == 4


def test_tiny_anonymous_descent(tiny: Btf) -> None:
    """Members of an anonymous struct inside an anonymous union add up their offsets."""
    assert tiny.offsetof("outer", "u1") == 16
    assert tiny.offsetof("outer", "s1") == 16
    assert tiny.offsetof("outer", "s2") == 20


def test_tiny_dotted_path_through_typedef(tiny: Btf) -> None:
    """A dotted path follows typedef/const/volatile to the member's struct type."""
    assert tiny.offsetof("outer", "named") == 24
    assert tiny.offsetof("outer", "named.b") == 28
    assert tiny.offsetof("outer", "cv.b") == 36
    assert tiny.offsetof("flags", "in.b") == 16


def test_tiny_dotted_path_refuses_pointer(tiny: Btf) -> None:
    """A dotted path does not follow pointers and says so."""
    with pytest.raises(BtfError, match=r"outer\.p.*cannot follow pointers"):
        tiny.offsetof("outer", "p.a")


def test_tiny_kind_flag_offsets(tiny: Btf) -> None:
    """With kind_flag=1 the member offset is the low 24 bits of the offset word."""
    assert tiny.offsetof("flags", "f1") == 4
    assert tiny.offsetof("flags", "in") == 12


@pytest.mark.parametrize("member", ["f0", "f2"])
def test_tiny_kind_flag_bitfield_rejected(tiny: Btf, member: str) -> None:
    """Bitfield members (kind_flag=1 bitfield_size != 0) raise naming struct and member."""
    with pytest.raises(BtfError, match=rf"flags\.{member} is a bitfield"):
        tiny.offsetof("flags", member)


def test_tiny_kind_flag_bitfield_offset_masked(tiny: Btf) -> None:
    """The reported bit offset of a kind_flag=1 bitfield excludes its bitfield_size bits."""
    with pytest.raises(BtfError, match=r"flags\.f2 is a bitfield \(bit offset 64\)"):
        tiny.offsetof("flags", "f2")


def test_tiny_int_encoded_bitfield_rejected(tiny: Btf) -> None:
    """A kind_flag=0 member whose INT encoding is narrower than its size is a bitfield."""
    with pytest.raises(BtfError, match=r"outer\.legacy_bf is a bitfield"):
        tiny.offsetof("outer", "legacy_bf")


def test_tiny_missing_member_message(tiny: Btf) -> None:
    """A missing member error names the source, the struct and the member."""
    with pytest.raises(BtfError) as exc:
        tiny.offsetof("outer", "nope")
    msg = str(exc.value)
    assert "tiny.btf" in msg and "outer" in msg and "'nope'" in msg


def test_tiny_missing_nested_member_message(tiny: Btf) -> None:
    """A missing member deeper in a dotted path names the path walked so far."""
    with pytest.raises(BtfError, match=r"struct outer\.named has no member 'zz'"):
        tiny.offsetof("outer", "named.zz")


def test_tiny_missing_struct_and_forward_only(tiny: Btf) -> None:
    """Unknown structs and forward-declaration-only structs raise distinct errors."""
    with pytest.raises(BtfError, match="struct nosuch not found"):
        tiny.sizeof("nosuch")
    with pytest.raises(BtfError, match="only_fwd is only forward-declared"):
        tiny.offsetof("only_fwd", "x")


@pytest.mark.parametrize("path", ["", "x.", ".x", "named..a"])
def test_tiny_invalid_member_path(tiny: Btf, path: str) -> None:
    """Empty paths or empty components are rejected."""
    with pytest.raises(BtfError, match="invalid member path"):
        tiny.offsetof("outer", path)


def test_tiny_sizeof_and_duplicate_preference(tiny: Btf) -> None:
    """sizeof works; duplicate names prefer the first definition that has members."""
    assert tiny.sizeof("outer") == 48
    assert tiny.sizeof("struct inner") == 8  # FWD 'inner' before it is ignored
    assert tiny.sizeof("dup") == 4
    assert tiny.offsetof("dup", "d") == 0


def test_resolve_offsets_success(tiny: Btf) -> None:
    """resolve_offsets maps macro names to byte offsets."""
    got = resolve_offsets(tiny, {"OUTER_S2": ("outer", "s2"), "OUTER_NB": ("outer", "named.b")})
    assert got == {"OUTER_S2": 20, "OUTER_NB": 28}


def test_resolve_offsets_collects_all_missing(tiny: Btf) -> None:
    """resolve_offsets reports every missing member in a single BtfError."""
    wanted = {
        "OK": ("outer", "x"),
        "BAD_MEMBER": ("outer", "missing_one"),
        "BAD_STRUCT": ("ghost", "x"),
        "BITFIELD": ("flags", "f0"),
    }
    with pytest.raises(BtfError) as exc:
        resolve_offsets(tiny, wanted)
    msg = str(exc.value)
    assert "3 of 4" in msg
    for needle in (
        "BAD_MEMBER",
        "missing_one",
        "BAD_STRUCT",
        "ghost",
        "BITFIELD",
        "f0",
    ):
        assert needle in msg
    assert "OK (" not in msg


def test_from_file_reads_blob(tmp_path: Path) -> None:
    """from_file parses a blob on disk and names the file in errors."""
    p = tmp_path / "blob.btf"
    p.write_bytes(build_fixture())
    btf = Btf.from_file(p)
    assert btf.offsetof("outer", "s2") == 20
    with pytest.raises(BtfError, match="blob.btf"):
        btf.offsetof("outer", "nope")


def test_from_file_missing_file(tmp_path: Path) -> None:
    """A missing file raises BtfError naming the path, not a bare OSError."""
    with pytest.raises(BtfError, match="absent.btf"):
        Btf.from_file(tmp_path / "absent.btf")


def _corrupt(data: bytes, **fields: int) -> bytes:
    """Rewrite header fields of a valid blob."""
    names = [
        "magic",
        "version",
        "flags",
        "hdr_len",
        "type_off",
        "type_len",
        "str_off",
        "str_len",
    ]
    values = dict(zip(names, struct.unpack_from("<HBBIIIII", data, 0)))  # 8 names, 8 fields
    values.update(fields)
    return struct.pack("<HBBIIIII", *(values[n] for n in names)) + data[24:]


def _bad_blobs() -> Iterator[tuple[str, bytes, str]]:
    """(id, blob, expected error regex) for malformed inputs."""
    good = build_fixture()
    yield "empty", b"", "truncated BTF header"
    yield "bad_magic", b"\x7fELF" + good[4:], "bad magic"
    yield "garbage", b"garbage!" * 8, "bad magic"
    yield "truncated_header", good[:10], "truncated BTF header"
    yield "bad_version", _corrupt(good, version=2), "unsupported BTF version"
    yield "bad_hdr_len", _corrupt(good, hdr_len=4), "invalid BTF header length"
    yield (
        "types_past_end",
        _corrupt(good, type_len=len(good)),
        "type section .* past end",
    )
    yield (
        "strings_past_end",
        _corrupt(good, str_len=len(good)),
        "string section .* past end",
    )
    yield "blob_cut_short", good[: len(good) // 2], "past end"
    yield "type_len_not_words", _corrupt(good, type_len=14), "not a multiple of 4"
    yield "record_cut", _corrupt(good, type_len=8), "truncated BTF type record"
    yield "trailing_cut", _corrupt(good, type_len=12), "truncated BTF type record"
    unknown = struct.pack("<III", 0, 31 << 24, 0)
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 12, 12, 1)
    yield "unknown_kind", hdr + unknown + b"\0", "unknown BTF kind 31"


@pytest.mark.parametrize(
    ("blob", "pattern"),
    [pytest.param(b, p, id=i) for i, b, p in _bad_blobs()],
)
def test_malformed_blobs_raise_btferror(blob: bytes, pattern: str) -> None:
    """Malformed or truncated blobs raise BtfError with a specific message naming the source."""
    with pytest.raises(BtfError, match=pattern) as exc:
        Btf.from_bytes(blob, source="bad.btf")
    assert str(exc.value).startswith("bad.btf:")


def test_big_endian_blob() -> None:
    """A big-endian blob (magic 0x9feb when read little-endian) parses the same."""
    le = build_fixture()
    _m, ver, flags, hdr_len, toff, tlen, soff, slen = struct.unpack_from("<HBBIIIII", le, 0)
    types = le[hdr_len + toff : hdr_len + toff + tlen]
    words = struct.unpack(f"<{tlen // 4}I", types)
    # ENUM value words are signed in the fixture but bit patterns survive a u32 round-trip.
    be = (
        struct.pack(">HBBIIIII", 0xEB9F, ver, flags, hdr_len, toff, tlen, soff, slen)
        + struct.pack(f">{len(words)}I", *words)
        + le[hdr_len + soff : hdr_len + soff + slen]
    )
    btf = Btf.from_bytes(be)
    assert btf.offsetof("outer", "s2") == 20
    assert btf.offsetof("flags", "in.b") == 16


# --------------------------------------------------------------------------- real vmlinux

VMLINUX = Path("/sys/kernel/btf/vmlinux")
BPFTOOL = shutil.which("bpftool") or ("/usr/sbin/bpftool" if os.access("/usr/sbin/bpftool", os.X_OK) else None)
needs_vmlinux = pytest.mark.skipif(not VMLINUX.exists(), reason="/sys/kernel/btf/vmlinux absent (kernel without BTF)")

REAL_MEMBERS: list[tuple[str, str]] = (
    [
        ("task_struct", m)
        for m in (
            "real_parent",
            "tgid",
            "pid",
            "group_leader",
            "start_boottime",
            "files",
            "mm",
            "exit_code",
            "comm",
        )
    ]
    + [("mm_struct", m) for m in ("arg_start", "arg_end", "env_start", "env_end")]
    + [
        ("files_struct", "fdt"),
        ("fdtable", "fd"),
        ("fdtable", "max_fds"),
        ("file", "f_inode"),
        ("file", "private_data"),
        ("inode", "i_mode"),
        ("socket", "type"),
        ("socket", "sk"),
        ("sock", "__sk_common"),
    ]
    + [
        ("sock_common", m)
        for m in (
            "skc_family",
            "skc_num",
            "skc_dport",
            "skc_daddr",
            "skc_rcv_saddr",
            "skc_v6_daddr",
        )
    ]
)


@pytest.fixture(scope="module")
def vmlinux() -> Btf:
    """The running kernel's BTF."""
    if not VMLINUX.exists():
        pytest.skip("/sys/kernel/btf/vmlinux absent (kernel without BTF)")
    return Btf.from_file(VMLINUX)


class BpftoolBtf:
    """Offsets computed independently by walking `bpftool btf dump -j` output."""

    MODIFIERS: ClassVar[frozenset[str]] = frozenset({"TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"})

    def __init__(self, types: list[dict[str, Any]]) -> None:
        self.by_id = {t["id"]: t for t in types}
        self.by_name: dict[str, dict[str, Any]] = {}
        for t in types:
            if t["kind"] in ("STRUCT", "UNION") and t.get("members"):
                self.by_name.setdefault(t["name"], t)

    def strip(self, type_id: int) -> dict[str, Any]:
        t = self.by_id[type_id]
        while t["kind"] in self.MODIFIERS:
            t = self.by_id[t["type_id"]]
        return t

    def find(self, t: dict[str, Any], name: str) -> tuple[int, dict[str, Any]] | None:
        for m in t["members"]:
            if m["name"] == name:
                return m["bits_offset"], m
        for m in t["members"]:
            if m["name"] == "(anon)" and not m.get("bitfield_size"):
                inner = self.strip(m["type_id"])
                if inner["kind"] in ("STRUCT", "UNION"):
                    hit = self.find(inner, name)
                    if hit is not None:
                        return m["bits_offset"] + hit[0], hit[1]
        return None

    def offsetof(self, struct_name: str, path: str) -> int:
        t = self.by_name[struct_name]
        bits = 0
        for part in path.split("."):
            hit = self.find(t, part)
            assert hit is not None, f"bpftool: {struct_name} has no {part}"
            bits += hit[0]
            assert not hit[1].get("bitfield_size")
            t = self.strip(hit[1]["type_id"])
        assert bits % 8 == 0
        return bits // 8


@pytest.fixture(scope="module")
def bpftool_btf() -> BpftoolBtf:
    """bpftool's JSON dump of the running kernel's BTF."""
    if not VMLINUX.exists():
        pytest.skip("/sys/kernel/btf/vmlinux absent (kernel without BTF)")
    if BPFTOOL is None:
        pytest.skip("bpftool not installed; cannot cross-check offsets")
    out = subprocess.run(
        [BPFTOOL, "btf", "dump", "file", str(VMLINUX), "-j"],
        check=True,
        capture_output=True,
        timeout=120,
    ).stdout
    return BpftoolBtf(json.loads(out)["types"])


@needs_vmlinux
@pytest.mark.parametrize(("struct_name", "member"), REAL_MEMBERS)
def test_vmlinux_offset_matches_bpftool(vmlinux: Btf, bpftool_btf: BpftoolBtf, struct_name: str, member: str) -> None:
    """Each sensor-relevant offset on this kernel equals the one derived from bpftool's dump."""
    assert vmlinux.offsetof(struct_name, member) == bpftool_btf.offsetof(struct_name, member)


@needs_vmlinux
def test_vmlinux_offsets_sane(vmlinux: Btf) -> None:
    """Real offsets resolve, lie inside their struct, and have the expected layout relations."""
    wanted = {f"{s}.{m}": (s, m) for s, m in REAL_MEMBERS}
    got = resolve_offsets(vmlinux, wanted)
    for key, (s, _m) in wanted.items():
        assert 0 <= got[key] < vmlinux.sizeof(s), key
    assert got["sock.__sk_common"] == 0
    assert got["mm_struct.arg_start"] < got["mm_struct.arg_end"]
    assert got["mm_struct.env_start"] < got["mm_struct.env_end"]
    assert vmlinux.offsetof("sock", "__sk_common.skc_family") == got["sock_common.skc_family"]


@needs_vmlinux
@pytest.mark.skipif(
    platform.release() != "6.18.44-fc-v657",
    reason="reference offsets were recorded on kernel 6.18.44-fc-v657 only",
)
def test_vmlinux_known_reference_offsets(vmlinux: Btf) -> None:
    """Offsets match values recorded by hand for this exact kernel build."""
    assert vmlinux.offsetof("task_struct", "real_parent") == 1280
    assert vmlinux.offsetof("task_struct", "tgid") == 1268
    assert vmlinux.offsetof("task_struct", "start_boottime") == 1560
    assert vmlinux.offsetof("task_struct", "files") == 1824
    assert vmlinux.offsetof("task_struct", "mm") == 1136


@needs_vmlinux
def test_vmlinux_bitfield_and_missing(vmlinux: Btf) -> None:
    """Real bitfields and missing members raise BtfError naming struct and member."""
    with pytest.raises(BtfError, match=r"sock_common\.skc_reuse is a bitfield"):
        vmlinux.offsetof("sock_common", "skc_reuse")
    with pytest.raises(BtfError, match=r"task_struct has no member 'no_such_member'"):
        vmlinux.offsetof("task_struct", "no_such_member")


@needs_vmlinux
def test_find_func_gives_the_kfunc_bpftool_names(vmlinux: Btf, bpftool_btf: BpftoolBtf) -> None:
    """The kfunc id the probes call bpf_rdonly_cast by is bpftool's FUNC of that name; a struct's name or an
    unknown name is no function."""
    funcs = {t["name"]: t["id"] for t in bpftool_btf.by_id.values() if t["kind"] == "FUNC"}
    if "bpf_rdonly_cast" not in funcs:
        pytest.skip("this kernel has no bpf_rdonly_cast (before 6.2)")
    assert vmlinux.find_func("bpf_rdonly_cast") == funcs["bpf_rdonly_cast"]
    assert vmlinux.find_func("bpf_cast_to_kern_ctx") == funcs.get("bpf_cast_to_kern_ctx")
    assert vmlinux.find_func("task_struct") is None
    assert vmlinux.find_func("chainwatch_no_such_function") is None
