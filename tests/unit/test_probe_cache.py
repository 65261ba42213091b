"""The compile cache: artifact format (map fd relocation, validation), cache keys, and the on-disk store
(modes, atomic writes, symlinks, corruption). No bcc and no root needed, except where said."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import struct
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.probes.artifact import (
    BTF_HEADER,
    FORMAT,
    MAGIC,
    Artifact,
    ArtifactError,
    MapSpec,
    ProgramSpec,
    attach_point,
    cache_key,
    dumps,
    loads,
    merge,
    patch,
    relocations,
)
from agent.probes.cache import ProbeCache
from agent.probes.compile import CompileError, compile_in_children

KEY = "ab" * 32


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def ld_map(dst: int, fd: int, src: int = 1, value_offset: int = 0) -> bytes:
    """ld_imm64 of a map fd (src 1) or of an address in a map's value (src 2): two slots."""
    return insn(0x18, dst, src, 0, fd) + insn(0, 0, 0, 0, value_offset)


MOV_R0_0 = insn(0xB7, 0, 0, 0, 0)
EXIT = insn(0x95)
CALL = insn(0x85, imm=1)  # bpf_map_lookup_elem
COMPILED = ld_map(1, 7) + MOV_R0_0 + ld_map(2, 9, src=2, value_offset=16) + CALL + ld_map(1, 7) + EXIT
FDS = {7: "events", 9: "file_tail"}


# A BTF object with one type, "int" (BTF_KIND_INT, 4 bytes, 32 bits, signed): header, types, strings.
BTF_STRINGS = b"\0int\0"
BTF_TYPES = struct.pack("<IIII", 1, 1 << 24, 4, (1 << 24) | 32)
BTF = (
    BTF_HEADER.pack(0xEB9F, 1, 0, BTF_HEADER.size, 0, len(BTF_TYPES), len(BTF_TYPES), len(BTF_STRINGS))
    + BTF_TYPES
    + BTF_STRINGS
)


def imm(insns: bytes, index: int) -> int:
    value: int = struct.unpack_from("<i", insns, index * 8 + 4)[0]
    return value


def artifact(**changes: object) -> Artifact:
    insns, refs = relocations(COMPILED, FDS)
    base = Artifact(
        key=KEY,
        license="GPL",
        kern_version=0,
        compiler="bcc test",
        maps=(MapSpec("events", 27, 0, 0, 1 << 20, 0), MapSpec("file_tail", 3, 4, 4, 2, 0)),
        programs=(
            ProgramSpec(
                "tracepoint__syscalls__sys_enter_connect", 5, "tracepoint", "syscalls:sys_enter_connect", insns, refs
            ),
            ProgramSpec("persist_emit", 5, "tail", "file_tail:1", insns, refs),
        ),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_relocations_zero_each_map_fd_and_name_its_map() -> None:
    insns, refs = relocations(COMPILED, FDS)
    assert refs == ((0, "events"), (3, "file_tail"), (6, "events"))
    assert [imm(insns, i) for i, _ in refs] == [0, 0, 0]
    assert imm(insns, 4) == 16  # the value offset in the second slot stays
    # Everything but the fds is unchanged.
    assert [insns[i * 8 : i * 8 + 4] for i in range(len(insns) // 8)] == [
        COMPILED[i * 8 : i * 8 + 4] for i in range(len(COMPILED) // 8)
    ]


def test_patch_writes_this_process_fds_back() -> None:
    program = artifact().programs[0]
    patched = patch(program, {"events": 41, "file_tail": 42})
    assert [imm(patched, i) for i in (0, 3, 6)] == [41, 42, 41]
    assert patch(program, {"events": 7, "file_tail": 9}) == COMPILED


@pytest.mark.parametrize(
    "insns, message",
    [
        (ld_map(1, 8) + EXIT, "fd 8"),  # not one of the program's maps
        (insn(0x18, 1, 3, 0, 5) + insn(0) + EXIT, "kind 3"),  # BTF id: the cache cannot relocate it
        (MOV_R0_0 + insn(0x18, 1, 1, 0, 7), "ends inside"),  # truncated two-slot instruction
        (MOV_R0_0 + b"\0" * 4, "whole number"),
    ],
)
def test_relocations_refuse_what_they_cannot_relocate(insns: bytes, message: str) -> None:
    with pytest.raises(ArtifactError, match=message):
        relocations(insns, FDS)


def test_dumps_loads_round_trip() -> None:
    original = artifact()
    assert loads(dumps(original), KEY) == original
    assert loads(dumps(original)) == original


def test_dumps_loads_round_trip_with_btf() -> None:
    """A task-storage map keeps its BTF type ids, and the artifact the BTF object they refer to."""
    stash = MapSpec("stash_slot", 29, 4, 64, 0, 1, btf_key_type_id=1, btf_value_type_id=1)
    original = artifact(maps=(*artifact().maps, stash), btfs=(BTF,))
    again = loads(dumps(original), KEY)
    assert again == original
    assert again.btfs == (BTF,) and again.map("stash_slot").uses_btf and not again.map("events").uses_btf


def test_a_map_index_past_the_btf_objects_is_refused() -> None:
    stash = MapSpec("stash_slot", 29, 4, 64, 0, 1, btf_key_type_id=1, btf_value_type_id=1, btf=1)
    with pytest.raises(ArtifactError, match="no BTF object 1"):
        dumps(artifact(maps=(*artifact().maps, stash), btfs=(BTF,)))


OTHER_BTF = BTF[:-4] + b"unt\0"  # the same layout, another name: a part's own copy of the types


def _part(programs: tuple[ProgramSpec, ...], *maps: MapSpec, btfs: tuple[bytes, ...] = ()) -> Artifact:
    return artifact(maps=(*artifact().maps, *maps), programs=programs, btfs=btfs)


def test_merge_joins_the_parts_maps_once_and_keeps_each_parts_btf() -> None:
    """common.h's maps come from every part and are one map; a map only one part has points at that part's BTF."""
    connect = artifact().programs[0]
    exec_ = dataclasses.replace(
        connect, name="tracepoint__sched__sched_process_exec", attach_target="sched:sched_process_exec"
    )
    stash = MapSpec("stash_slot", 29, 4, 64, 0, 1, btf_key_type_id=1, btf_value_type_id=1)
    jobs = MapSpec("file_jobs", 29, 4, 32, 0, 1, btf_key_type_id=1, btf_value_type_id=1)
    merged = merge([_part((connect,), stash, btfs=(BTF,)), _part((exec_,), stash, jobs, btfs=(OTHER_BTF,))])
    assert [m.name for m in merged.maps] == ["events", "file_tail", "stash_slot", "file_jobs"]
    assert merged.map("stash_slot").btf == 0 and merged.map("file_jobs").btf == 1
    assert merged.btfs == (BTF, OTHER_BTF)
    assert [p.name for p in merged.programs] == sorted([connect.name, exec_.name])
    assert loads(dumps(merged), KEY) == merged
    # A part whose BTF no kept map uses leaves it out, and the indexes follow.
    merged = merge([_part((connect,), stash, btfs=(BTF,)), _part((exec_,), stash, btfs=(OTHER_BTF,))])
    assert merged.btfs == (BTF,) and merged.map("stash_slot").btf == 0


def test_merge_refuses_parts_that_disagree() -> None:
    connect, emit = artifact().programs
    with pytest.raises(ArtifactError, match="map events is defined differently"):
        merge([artifact(), artifact(maps=(MapSpec("events", 27, 0, 0, 1 << 21, 0), artifact().maps[1]))])
    other_code = dataclasses.replace(connect, insns=connect.insns[:-8] + MOV_R0_0 + EXIT)
    with pytest.raises(ArtifactError, match="compiled differently"):
        merge([artifact(), artifact(programs=(other_code, emit))])
    with pytest.raises(ArtifactError, match="disagree"):
        merge([artifact(), artifact(key="cd" * 32)])
    with pytest.raises(ArtifactError, match="no parts"):
        merge([])


def _rewrite_body(data: bytes, edit: object) -> bytes:
    """The artifact with its JSON body changed by ``edit`` and a correct checksum: only validation can refuse."""
    body = json.loads(data[len(MAGIC) :].partition(b"\n")[2])
    edit(body)  # type: ignore[operator]
    raw = json.dumps(body).encode()
    return MAGIC + hashlib.sha256(raw).hexdigest().encode() + b"\n" + raw


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d[:-1], "checksum"),  # truncated
        (lambda d: d[:-3] + bytes([d[-3] ^ 1]) + d[-2:], "checksum"),  # one bit flipped
        (lambda d: b"#" + d[1:], "header"),
        (lambda d: b"", "header"),
        (lambda d: _rewrite_body(d, lambda b: b.update(format=FORMAT + 1)), "format"),
        (lambda d: _rewrite_body(d, lambda b: b.update(format=1)), "format 1"),  # before maps had BTF
        (lambda d: _rewrite_body(d, lambda b: b.update(format=2)), "format 2"),  # one BTF object, one part
        (lambda d: _rewrite_body(d, lambda b: b["maps"][0].update(btf_value_type_id=3)), "has no BTF"),
        (lambda d: _rewrite_body(d, lambda b: b["maps"][0].update(btf_key_type_id=-1)), "out-of-range"),
        (lambda d: _rewrite_body(d, lambda b: b.pop("btfs")), "malformed"),
        (lambda d: _rewrite_body(d, lambda b: b.update(btfs="")), "expected list"),
        (lambda d: _rewrite_body(d, lambda b: b.update(key="cd" * 32)), "key mismatch"),
        (lambda d: _rewrite_body(d, lambda b: b["programs"][0].update(map_refs=[[0, "events"]])), "do not match"),
        (
            lambda d: _rewrite_body(
                d, lambda b: b["programs"][0].update(map_refs=[[0, "nope"], [3, "file_tail"], [6, "events"]])
            ),
            "known map",
        ),
        (
            lambda d: _rewrite_body(d, lambda b: b["programs"][0].update(attach_target="sched:sched_process_exec")),
            "name does not say",
        ),
        (lambda d: _rewrite_body(d, lambda b: b["maps"][0].update(max_entries=True)), "expected int"),
        (lambda d: _rewrite_body(d, lambda b: b["maps"][0].update(max_entries=-1)), "out-of-range"),
        (lambda d: _rewrite_body(d, lambda b: b["maps"].pop()), "known map|does not exist"),
        (lambda d: _rewrite_body(d, lambda b: b["programs"][0].update(insns="!!")), "malformed"),
        (lambda d: _rewrite_body(d, lambda b: b.pop("license")), "malformed"),
    ],
)
def test_loads_refuses_corrupt_or_inconsistent_bytes(mutate: object, message: str) -> None:
    with pytest.raises(ArtifactError, match=message):
        loads(mutate(dumps(artifact())), KEY)  # type: ignore[operator]


def _with_btf(data: bytes) -> bytes:
    """A well-formed artifact (correct checksum) whose BTF is ``data``: only the BTF check can refuse it."""
    encoded = base64.b64encode(data).decode()
    return _rewrite_body(dumps(artifact()), lambda b: b.update(btfs=[encoded]))


@pytest.mark.parametrize(
    "data, message",
    [
        (BTF[:-1], "truncated or padded"),  # the string section cut short
        (BTF + b"\0", "truncated or padded"),
        (BTF[: BTF_HEADER.size - 1], "cannot hold"),
        (b"\xeb\x9f" + BTF[2:], "bad header"),  # big-endian magic
        (BTF[:4] + struct.pack("<I", len(BTF) + 1) + BTF[8:], "bad header"),  # header longer than the object
    ],
)
def test_loads_refuses_a_btf_object_of_the_wrong_length(data: bytes, message: str) -> None:
    assert loads(_with_btf(BTF), KEY).btfs == (BTF,)
    with pytest.raises(ArtifactError, match=message):
        loads(_with_btf(data), KEY)


def test_the_key_changes_with_text_flags_and_toolchain() -> None:
    tools = {"kernel": "6.18 #1", "btf": "x", "compiler": "libbcc 0.26", "headers": "/usr/src/h"}
    key = cache_key("int x;", ["-DA=1"], tools)
    assert key == cache_key("int x;", ["-DA=1"], dict(tools))
    others = {
        cache_key("int x; ", ["-DA=1"], tools),
        cache_key("int x;", ["-DA=2"], tools),
        cache_key("int x;", ["-DA=1", "-DB"], tools),
        cache_key("int x;", [], tools),
        cache_key("int x;", ["-DA=1"], {**tools, "kernel": "6.18 #2"}),
        cache_key("int x;", ["-DA=1"], {**tools, "btf": "y"}),
        cache_key("int x;", ["-DA=1"], {**tools, "compiler": "libbcc 0.27"}),
    }
    assert key not in others and len(others) == 7


def test_attach_points_follow_bccs_names() -> None:
    assert attach_point("tracepoint__syscalls__sys_exit_openat2") == ("tracepoint", "syscalls:sys_exit_openat2")
    assert attach_point("raw_tracepoint__sched_process_fork") == ("raw_tracepoint", "sched_process_fork")
    assert attach_point("persist_finish") == ("tail", "file_tail:0")
    assert attach_point("persist_emit") == ("tail", "file_tail:1")
    with pytest.raises(ArtifactError, match="never run"):
        attach_point("helper_that_nothing_attaches")


def test_store_then_load_with_private_modes(tmp_path: Path) -> None:
    cache = ProbeCache(str(tmp_path / "cache"))
    assert cache.load(KEY) is None  # no directory yet: a plain miss
    assert cache.store(artifact())
    assert loads((tmp_path / "cache" / cache.file_name(KEY)).read_bytes()) == artifact()
    assert cache.load(KEY) == artifact()
    assert os.stat(tmp_path / "cache").st_mode & 0o777 == 0o700
    assert os.stat(tmp_path / "cache" / cache.file_name(KEY)).st_mode & 0o777 == 0o600
    assert cache.load("cd" * 32) is None
    assert sorted(os.listdir(tmp_path / "cache")) == [cache.file_name(KEY)]  # no temp file left


def test_store_keeps_only_the_current_entry(tmp_path: Path) -> None:
    cache = ProbeCache(str(tmp_path))
    assert cache.store(artifact(key="cd" * 32))
    assert cache.store(artifact())
    assert os.listdir(tmp_path) == [cache.file_name(KEY)]
    assert [name for name, _ in cache.state().entries] == [cache.file_name(KEY)]


def test_a_corrupt_entry_is_logged_removed_and_missed(tmp_path: Path) -> None:
    cache = ProbeCache(str(tmp_path))
    cache.store(artifact())
    path = tmp_path / cache.file_name(KEY)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with capture_logs() as logs:
        assert cache.load(KEY) is None
    assert [entry["event"] for entry in logs] == ["probe_cache_invalid"]
    assert "checksum" in logs[0]["reason"] and logs[0]["action"] == "recompiling"
    assert not path.exists()


def test_an_entry_for_another_key_under_this_name_is_refused(tmp_path: Path) -> None:
    cache = ProbeCache(str(tmp_path))
    cache.store(artifact(key="cd" * 32))
    os.rename(tmp_path / cache.file_name("cd" * 32), tmp_path / cache.file_name(KEY))
    with capture_logs() as logs:
        assert cache.load(KEY) is None
    assert "key mismatch" in logs[0]["reason"]


def test_links_are_never_followed(tmp_path: Path) -> None:
    real = tmp_path / "real"
    cache = ProbeCache(str(real))
    cache.store(artifact())
    # A symlinked entry: refused, and its target is neither read as an entry nor removed.
    linked = ProbeCache(str(tmp_path / "other"))
    (tmp_path / "other").mkdir(mode=0o700)
    (tmp_path / "other" / linked.file_name(KEY)).symlink_to(real / cache.file_name(KEY))
    with capture_logs() as logs:
        assert linked.load(KEY) is None
    assert logs[0]["event"] == "probe_cache_unusable"
    assert (real / cache.file_name(KEY)).exists()
    # A symlinked directory: refused for reading and writing.
    (tmp_path / "dirlink").symlink_to(real)
    through = ProbeCache(str(tmp_path / "dirlink"))
    with capture_logs() as logs:
        assert through.load(KEY) is None
        assert not through.store(artifact())
    assert [entry["event"] for entry in logs] == ["probe_cache_unusable", "probe_cache_not_written"]


def test_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    cache = ProbeCache(str(tmp_path / "c"))
    cache.store(artifact())
    os.chmod(tmp_path / "c", 0o770)
    with capture_logs() as logs:
        assert cache.load(KEY) is None
    assert logs[0]["event"] == "probe_cache_unusable" and "writable" in logs[0]["reason"]
    assert "writable" in cache.state().problem


def test_a_group_writable_entry_is_refused(tmp_path: Path) -> None:
    cache = ProbeCache(str(tmp_path))
    cache.store(artifact())
    os.chmod(tmp_path / cache.file_name(KEY), 0o660)
    with capture_logs() as logs:
        assert cache.load(KEY) is None
    assert "another user" in logs[0]["reason"]


def test_compile_child_reports_missing_bcc_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child's explanation reaches the caller (here: bcc hidden, as test_cli_live does for the CLI)."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "bcc.py").write_text("raise ImportError('bcc hidden by the test')\n")
    monkeypatch.setenv("PYTHONPATH", str(shadow))
    with pytest.raises(CompileError, match="python3-bpfcc") as caught:
        compile_in_children(["int x;"], [], KEY)
    assert "Traceback" not in str(caught.value) and sys.executable


def test_doctor_says_whether_the_next_start_is_warm(tmp_path: Path) -> None:
    from agent.config import Config, SensorConfig
    from agent.daemon import probe_options
    from agent.doctor import cache_check
    from agent.probes.cache import toolchain
    from agent.probes.loader import build_program

    assert "off" in cache_check(Config(sensor=SensorConfig(cache_dir=""))).detail
    config = Config(sensor=SensorConfig(cache_dir=str(tmp_path / "cache")))
    assert "does not exist yet" in cache_check(config).detail
    ProbeCache(str(tmp_path / "cache")).store(artifact())
    assert "cold (1 entries" in cache_check(config).detail
    program = build_program(probe_options(config))
    current = cache_key(program.text, program.cflags, toolchain())
    ProbeCache(str(tmp_path / "cache")).store(artifact(key=current))
    check = cache_check(config)
    assert check.ok is None and "warm" in check.detail and current in check.detail


def test_doctor_says_whether_files_are_read_by_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent import doctor
    from agent.btf import Btf

    if not os.path.exists(doctor.VMLINUX_BTF):
        pytest.skip("no vmlinux BTF: doctor reports struct offsets from headers instead")
    if Btf.from_file(doctor.VMLINUX_BTF).find_func("bpf_rdonly_cast") is None:
        pytest.skip("this kernel has no bpf_rdonly_cast (before 6.2)")
    lines: list[str] = []
    doctor.run_doctor(lines.append)
    assert "info typed reads: an fd's file is read by loads (kfunc bpf_rdonly_cast)\n" in lines
    monkeypatch.setattr(doctor, "resolve_kfuncs", lambda btf: ({}, {}))
    lines.clear()
    doctor.run_doctor(lines.append)
    assert any(line.startswith("info typed reads: no kfunc bpf_rdonly_cast") for line in lines)


def test_no_kfunc_is_called_without_the_bpf_jit(tmp_path: Path) -> None:
    """The kernel runs kfunc calls only from JIT-compiled code: without the JIT the probes read files by probe
    reads (the type ids stay, the kfunc goes)."""
    from agent.btf import Btf
    from agent.probes.offsets import VMLINUX_BTF, bpf_jit_enabled, resolve_kfuncs

    sysctl = tmp_path / "bpf_jit_enable"
    for value, enabled in (("0\n", False), ("1\n", True), ("2\n", True)):
        sysctl.write_text(value)
        assert bpf_jit_enabled(str(sysctl)) is enabled
    assert bpf_jit_enabled(str(tmp_path / "absent")) is False
    if not os.path.exists(VMLINUX_BTF):
        pytest.skip("no vmlinux BTF")
    btf = Btf.from_file(VMLINUX_BTF)
    type_ids, kfuncs = resolve_kfuncs(btf, jit=False)
    assert kfuncs == {} and set(type_ids) == {"BTF_ID_FILE", "BTF_ID_TASK"}
    if btf.find_func("bpf_rdonly_cast") is not None:
        assert resolve_kfuncs(btf, jit=True)[1] == {"KFUNC_RDONLY_CAST": btf.find_func("bpf_rdonly_cast")}
