"""The event layout (agent.abi.layout) and the C header generated from it (agent.abi.cgen)."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.abi import cgen, layout

GCC = shutil.which("gcc")
needs_gcc = pytest.mark.skipif(GCC is None, reason="gcc is not installed: cannot compile-check the generated header")


def _syntax_check(header_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run gcc -fsyntax-only over the header with <linux/types.h> in front of it."""
    src = tmp_path / "check_events.c"
    src.write_text("#include <linux/types.h>\n" + header_text)
    assert GCC is not None
    return subprocess.run(
        [GCC, "-fsyntax-only", "-Wall", "-x", "c", str(src)], capture_output=True, text=True, timeout=60
    )


def test_committed_header_matches_layout() -> None:
    """bpf/include/events.gen.h is exactly what cgen.render() produces from layout.py."""
    committed = cgen.HEADER_PATH.read_text()
    assert committed == cgen.render(), (
        f"{cgen.HEADER_PATH} is stale: agent/abi/layout.py changed without regenerating the header; "
        "run `python -m agent.abi` (or `make gen`) and commit the result"
    )


def test_render_asserts_every_field_of_every_struct() -> None:
    """The rendered header has a size assert per struct and an offset assert per field."""
    text = cgen.render()
    structs = {"event_header": layout.EventHeader, **layout.STRUCTS}
    for c_name, py_struct in structs.items():
        assert f"sizeof(struct {c_name}) == {ctypes.sizeof(py_struct)}" in text
        for field_name, _ in py_struct._fields_:
            offset = getattr(py_struct, field_name).offset
            assert f"__builtin_offsetof(struct {c_name}, {field_name}) == {offset}, " in text


@needs_gcc
def test_generated_header_compiles(tmp_path: Path) -> None:
    """The generated header compiles with the host C compiler, so every _Static_assert holds."""
    result = _syntax_check(cgen.render(), tmp_path)
    assert result.returncode == 0, f"gcc rejected the generated header:\n{result.stderr}"


@needs_gcc
def test_drifted_header_fails_to_compile(tmp_path: Path) -> None:
    """Editing one offset number in the header makes gcc fail on its _Static_assert (the asserts bite)."""
    text = cgen.render()
    pattern = re.compile(r"(__builtin_offsetof\(struct exec_event, args\) == )(\d+)")
    match = pattern.search(text)
    assert match is not None, "the exec_event.args offset assert is missing from the header"
    drifted = pattern.sub(lambda m: f"{m.group(1)}{int(m.group(2)) + 4}", text, count=1)
    assert drifted != text
    result = _syntax_check(drifted, tmp_path)
    assert result.returncode != 0, "gcc accepted a header whose offset assert is wrong"
    assert "exec_event.args offset drifted" in result.stderr


@needs_gcc
def test_drifted_struct_field_fails_to_compile(tmp_path: Path) -> None:
    """Changing a field's C type (layout drift on the C side) trips the size/offset asserts."""
    text = cgen.render()
    needle = "struct exit_event {\n    struct event_header hdr;\n    __s32 exit_code;\n    __u32 _pad;"
    assert needle in text
    drifted = text.replace(needle, needle.replace("__u32 _pad", "__u64 _pad"))
    result = _syntax_check(drifted, tmp_path)
    assert result.returncode != 0
    assert "exit_event._pad offset drifted" in result.stderr
    assert "struct exit_event size drifted" in result.stderr


@pytest.mark.parametrize("op_name", sorted(layout.OPS))
def test_every_op_has_a_struct(op_name: str) -> None:
    """Every op in layout.OPS has a ctypes struct and a record, and min_size(op) <= sizeof(struct)."""
    op = layout.OPS[op_name]
    assert op in layout.OP_STRUCT, f"{op_name} has no struct"
    assert op in layout.OP_RECORD, f"{op_name} has no record"
    struct = layout.OP_STRUCT[op]
    header_size = ctypes.sizeof(layout.EventHeader)
    assert header_size <= layout.min_size(op) <= ctypes.sizeof(struct)
    assert struct.hdr.offset == 0
    record = layout.OP_RECORD[op]
    if record.tail is None:
        assert layout.min_size(op) == ctypes.sizeof(struct)
    else:
        assert layout.min_size(op) == getattr(struct, record.tail).offset < ctypes.sizeof(struct)


def test_op_values_unique() -> None:
    """Op codes, flag bits and syscall ids are distinct within their tables."""
    for table in (layout.OPS, layout.FLAGS, layout.SYSCALLS):
        assert len(set(table.values())) == len(table)
    assert all(v & (v - 1) == 0 for v in layout.FLAGS.values())
