"""bpf/ as C files: includes and guards, the text the loader hands bcc, and the -D flags that C requires.

gcc only preprocesses here (bcc's dialect is not plain C); tests/live/test_bpf_sources.py compiles each file
alone with bcc itself.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent import resources
from agent.config import SensorConfig
from agent.probes import source
from agent.probes.offsets import TYPE_IDS, WANTED, KernelOffsets
from agent.probes.source import (
    MAIN_FILE,
    PERSIST_MATCH_HEADER,
    Features,
    ProbeOptions,
    render_cflags,
    render_parts,
    render_persist_match_header,
    render_source,
    source_files,
)
from agent.ruleset.persistence import PersistencePlaces, Place

GCC = shutil.which("gcc")
needs_gcc = pytest.mark.skipif(GCC is None, reason="gcc is not installed: cannot preprocess the BPF sources")
CONCERN_FILES = ("process.bpf.c", "net.bpf.c", "fd.bpf.c", "persistence.bpf.c", "io_uring.bpf.c")
LINE_MARKER = re.compile(r'^#line (\d+) "([^"]+)"$', re.M)


def _cflags(kfuncs: bool = False, **sensor: bool | int) -> list[str]:
    """Flags for a kernel with every offset; ``kfuncs``: and bpf_rdonly_cast, as here (typed loads from files)."""
    values = {name: str(8 * i) for i, name in enumerate(sorted(WANTED))}
    offsets = KernelOffsets("btf", values)
    if kfuncs:
        offsets = KernelOffsets("btf", {**values, **{name: "7" for name in TYPE_IDS}}, {"KFUNC_RDONLY_CAST": 9})
    features = Features("/sys/kernel/tracing", exit_group_dead=True, legacy_syscalls=True, module_tracepoints=True)
    return render_cflags(offsets, features, ProbeOptions(SensorConfig(**sensor)))  # type: ignore[arg-type]


def _defined(flags: list[str]) -> dict[str, str]:
    return dict(flag[2:].split("=", 1) for flag in flags if flag.startswith("-D"))


def _preprocess(text: str, flags: list[str]) -> subprocess.CompletedProcess[str]:
    """gcc -E with an #if on an undefined name as an error (what common.h's pragma asks of clang)."""
    assert GCC is not None
    defines = [flag for flag in flags if flag.startswith("-D")]
    return subprocess.run(
        [GCC, "-E", "-P", "-Werror=undef", *defines, "-x", "c", "-"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_main_file_includes_every_concern_file_once() -> None:
    """The program is bpf/chainwatch.bpf.c and everything it includes, each file once and in dependency order."""
    files = source_files(render_source())
    assert files[0] == f"bpf/{MAIN_FILE}"
    assert len(files) == len(set(files))
    assert set(files) == {
        f"bpf/{MAIN_FILE}",
        "bpf/include/common.h",
        "bpf/include/events.gen.h",
        f"<generated>/{PERSIST_MATCH_HEADER}",
        *(f"bpf/{name}" for name in CONCERN_FILES),
    }
    # A file comes after what it includes: persistence uses fd, io_uring uses persistence.
    assert files.index("bpf/fd.bpf.c") < files.index("bpf/persistence.bpf.c") < files.index("bpf/io_uring.bpf.c")
    assert files.index("bpf/include/events.gen.h") < files.index(f"<generated>/{PERSIST_MATCH_HEADER}")


def test_every_included_file_has_a_guard() -> None:
    """Each file that is included somewhere opens with #ifndef/#define of one guard and ends with its #endif,
    so a real compiler given several of them sees each once."""
    bpf = resources.bpf_dir()
    texts = {
        f"bpf/{path.relative_to(bpf).as_posix()}": path.read_text()
        for path in bpf.rglob("*")
        if path.suffix in (".c", ".h") and path.name not in (MAIN_FILE, "block.bpf.c")
    }
    texts[PERSIST_MATCH_HEADER] = render_persist_match_header(PersistencePlaces(()))
    guards = set()
    for name, text in texts.items():
        code = [line for line in re.sub(r"/\*.*?\*/", "", text, flags=re.S).splitlines() if line.strip()]
        guard = re.fullmatch(r"#ifndef (\w+)", code[0])
        assert guard is not None, f"{name} does not open with an include guard"
        assert code[1] == f"#define {guard.group(1)}", name
        assert code[-1].strip() == "#endif", name
        guards.add(guard.group(1))
    assert len(guards) == len(texts)  # one guard name per file


def test_includes_are_put_in_place_with_line_markers() -> None:
    """Every project #include becomes that file's text (or, when it is already above, a comment), and after an
    included file the #line marker returns to the includer at the next line, so compiler messages point into
    the right file and line."""
    text = render_source("io_uring.bpf.c")
    assert not re.search(r'^\s*#\s*include\s*"', text, re.M)
    lines = text.splitlines()
    for index, line in enumerate(lines):
        marker = LINE_MARKER.fullmatch(line)
        if marker is None or marker.group(1) == "1":
            continue
        number, name = int(marker.group(1)), marker.group(2)
        source = (resources.share_dir() / name).read_text().splitlines()
        assert re.match(r'\s*#\s*include\s*"', source[number - 2]), (name, number)  # the line before: an include
        if number - 1 == len(source):
            continue  # the include was the file's last line
        if lines[index + 1].startswith("#line 1 ") or lines[index + 1].endswith(": included above */"):
            assert re.match(r'\s*#\s*include\s*"', source[number - 1]), (name, number)  # another include
        else:
            assert lines[index + 1] == source[number - 1], (name, number)


def test_generated_header_is_searched_before_bpf_include(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Like -I<private dir> ahead of -Ibpf/include: a stale persist_match.gen.h left in bpf/include loses to
    the one rendered from the list in use; a missing project include is an error naming the includer."""
    share = tmp_path / "share"
    shutil.copytree(resources.bpf_dir(), share / "bpf")
    (share / "rules").symlink_to(resources.rules_dir())
    (share / "bpf" / "include" / PERSIST_MATCH_HEADER).write_text("#error stale\n")
    monkeypatch.setenv(resources.SHARE_ENV, str(share))
    places = PersistencePlaces((Place("prefix", "/opt/in-use/", "T1546"),))
    text = render_source(persistence=places)
    assert "#error stale" not in text and "prefix /opt/in-use/" in text
    net = share / "bpf" / "net.bpf.c"
    net.write_text(net.read_text().replace('#include "common.h"', '#include "nowhere.h"'))
    with pytest.raises(FileNotFoundError, match=r'bpf/net.bpf.c:\d+: #include "nowhere.h"'):
        render_source()


def test_sensor_config_declares_each_kernel_option_once() -> None:
    """The kernel-side options are SensorConfig fields: their defaults are the config's and the probe
    options', their -D names and values come from there, and no bpf/ file defines any of them."""
    defines = SensorConfig().kernel_defines()
    assert defines == {
        "CAPTURE_ENV": 1,
        "SKIP_LOOPBACK": 1,
        "RINGBUF_PAGES": 2048,
        "NET_RINGBUF_PAGES": 1024,
        "FILE_RINGBUF_PAGES": 256,
    }
    assert ProbeOptions().sensor == SensorConfig()
    flags = _defined(_cflags())
    for name, value in defines.items():
        assert flags[name] == str(value)
    changed = {
        f.name: (not f.default if isinstance(f.default, bool) else 2 * f.default)
        for f in dataclasses.fields(SensorConfig)
        if f.name.upper() in defines
    }
    flags = _defined(_cflags(**changed))
    for field_name, value in changed.items():
        assert flags[field_name.upper()] == str(int(value))
    # No C default for anything the agent passes (offsets, features, options).
    c_text = "\n".join(path.read_text() for path in resources.bpf_dir().rglob("*") if path.suffix in (".c", ".h"))
    c_defines = set(re.findall(r"^\s*#\s*define\s+(\w+)", c_text, re.M))
    assert not c_defines & set(flags), c_defines & set(flags)


@needs_gcc
@pytest.mark.parametrize("name", (MAIN_FILE, *CONCERN_FILES))
def test_each_file_preprocesses_alone(name: str) -> None:
    """Each file, given alone, resolves its includes, and every #if and value the flags feed is defined."""
    flags = _cflags()
    result = _preprocess(render_source(name), flags)
    assert result.returncode == 0, result.stderr
    assert "SKIP_LOOPBACK" not in result.stdout and "TASK_TGID" not in result.stdout


def test_the_compile_parts_are_the_main_files_includes_each_once() -> None:
    """Compiled apart, the parts hold every concern file exactly once between them (a file one part's files
    include is in that part), and each part has what its files include."""
    parts = render_parts()
    assert len(parts) == len(source.COMPILE_PARTS) > 1
    concern = [[f for f in source_files(part) if f.endswith(".bpf.c")] for part in parts]
    assert sorted(f for files in concern for f in files) == sorted(f"bpf/{name}" for name in CONCERN_FILES)
    assert concern[0][0] == "bpf/process.bpf.c" and "bpf/fd.bpf.c" in concern[1]
    for part in parts:
        assert "bpf/include/common.h" in source_files(part)
    assert f"<generated>/{PERSIST_MATCH_HEADER}" in source_files(parts[1])


def test_compile_parts_that_miss_a_file_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source, "COMPILE_PARTS", (("process.bpf.c", "net.bpf.c"), ("persistence.bpf.c",)))
    with pytest.raises(ValueError, match="are not, in order, the files"):
        render_parts()


@needs_gcc
@pytest.mark.parametrize("kfuncs", (False, True), ids=("probe-reads", "rdonly-cast"))
def test_every_define_is_required(kfuncs: bool) -> None:
    """Without any one of the option or feature defines the program does not build: an #if on it is an error,
    or its name is left in the code for the compiler to refuse. No C default hides a missing flag; with or
    without the kfunc, every define is used."""
    flags = _cflags(kfuncs)
    text = render_source()
    names = [name for name in _defined(flags) if name not in WANTED]
    assert {"CAPTURE_ENV", "RINGBUF_PAGES", "HAVE_SYS_OPEN", "OFFSETS_FROM_HEADERS"} <= set(names)
    for name in names:
        result = _preprocess(text, [flag for flag in flags if not flag.startswith(f"-D{name}=")])
        missed = result.returncode != 0 and f'"{name}" is not defined' in result.stderr
        assert missed or re.search(rf"\b{name}\b", result.stdout), f"{name} has a default or is unused"


def test_bpf_dump_prints_what_is_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`chainwatch bpf dump --rules DIR` prints the flags, the file list and the exact text build_program hands
    bcc, with the matcher generated from DIR's persistence list."""
    from agent import cli
    from agent.probes import loader

    rules = tmp_path / "rules"
    shutil.copytree(resources.rules_dir(), rules)
    (rules / "lists" / "persistence_paths.yaml").write_text(
        "prefixes:\n  - {path: /opt/dumped-list/, technique: T1546}\n"
    )
    offsets = KernelOffsets("btf", {name: "8" for name in WANTED})
    features = Features("/sys/kernel/tracing", exit_group_dead=True, legacy_syscalls=True, module_tracepoints=True)
    monkeypatch.setattr(loader, "kernel_offsets", lambda: offsets)
    monkeypatch.setattr(loader, "detect_features", lambda: features)
    monkeypatch.setattr(cli.logs, "configure", lambda: None)  # it would bind logging to capsys's stdout for good
    assert cli.main(["bpf", "dump", "--rules", str(rules)]) == 0
    out = capsys.readouterr().out
    header, _, text = out.partition("\n#line 1 ")
    text = "#line 1 " + text
    places = PersistencePlaces((Place("prefix", "/opt/dumped-list/", "T1546"),))
    program = loader.build_program(ProbeOptions(persistence=places))
    assert text == program.text
    assert "// cflags: " + " ".join(program.cflags) in header.splitlines()
    assert "// files (each starts at its #line 1): " + " ".join(source_files(text)) in header.splitlines()
    assert "prefix /opt/dumped-list/" in text and "/etc/cron" not in text.split("persist_path_match")[1]
