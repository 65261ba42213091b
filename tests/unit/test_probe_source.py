"""agent.probes.source: the persistence path matcher, the persistence list, feature detection and cflags."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent import resources
from agent.config import SensorConfig
from agent.probes import source
from agent.probes.offsets import WANTED, KernelOffsets
from agent.probes.source import (
    Features,
    ProbeOptions,
    bundled_persistence,
    detect_features,
    render_cflags,
    render_path_matcher,
    render_persist_match_header,
)
from agent.ruleset.persistence import PersistencePlaces, Place

GCC = shutil.which("gcc")
needs_gcc = pytest.mark.skipif(GCC is None, reason="gcc is not installed: cannot compile the matcher harness")

# The generated header is compiled as the BPF program gets it: #include "persist_match.gen.h" with -I<its
# directory> ahead of -Ibpf/include, where it finds the real events.gen.h (PATH_MAX_LEN).
HARNESS_PRELUDE = """\
#include <stdio.h>
#include <string.h>
#include <linux/types.h>
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
#undef __always_inline /* glibc's cdefs.h has one */
#define __always_inline inline
#include "persist_match.gen.h"
"""

# The handful of paths the brief names, plus a few edges. Expected values are checked against the list, below.
KNOWN_PATHS = {
    "/etc/cron.d/x": 1,
    "/etc/crontab": 1,
    "/home/u/.ssh/authorized_keys": 1,
    "/home/u/.ssh/authorized_keys2": 1,
    "/root/.bashrc": 1,
    "/etc/ld.so.preload": 1,
    "/etc/systemd/system/evil.service": 1,
    "/tmp/x": 0,
    "/etc/passwd": 0,
    "/etc/cro": 0,
    "/home/u/.ssh/authorized_keys.bak": 0,
    "/home/u/.ssh/known_hosts": 0,
    "/": 0,
    "/home/u/.config/systemd/user/x.service": 1,
    "/home/u/.config/fish/config.fish": 1,
    "/home/u/.bash_logout": 1,
    "/usr/lib/python3/dist-packages/x.pth": 1,
    "/usr/lib/python3/dist-packages/x.py": 0,
    "/home/" + "u" * 40 + "/.config/autostart/x.desktop": 0,  # not a home the kernel knows (user > 32 bytes)
    "/root/.config/autostart/x.desktop": 1,
    "/home//.config/autostart/x.desktop": 0,
}


def _places(prefixes: list[str], suffixes: list[str]) -> PersistencePlaces:
    return PersistencePlaces(
        tuple([Place("prefix", p, "T1546") for p in prefixes] + [Place("suffix", x, "T1546") for x in suffixes])
    )


def _comments(text: str) -> list[str]:
    return re.findall(r"/\*(.*?)\*/", text, flags=re.S)


def _strip_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/", " ", text, flags=re.S)


def _c_string(text: str) -> str:
    out = []
    for byte in text.encode():
        ch = chr(byte)
        out.append(ch if 32 <= byte < 127 and ch not in '"\\?' else f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _reference(path: str, places: PersistencePlaces) -> int:
    """What the kernel filter means (Place.kernel_matches, the Python side of the same rule)."""
    return int(any(place.kernel_matches(path) for place in places.places))


def _compile_and_run(
    tmp_path: Path, places: PersistencePlaces, cases: dict[str, int]
) -> subprocess.CompletedProcess[str]:
    open_filter = places.open_filter()
    checks = "\n".join(
        f"    bad += check({_c_string(path)}, {want}, {int(open_filter.may_match(path))});"
        for path, want in cases.items()
    )
    generated = tmp_path / "generated"
    generated.mkdir()
    (generated / source.PERSIST_MATCH_HEADER).write_text(render_persist_match_header(places))
    program = (
        HARNESS_PRELUDE
        + f"""
static int check(const char *path, int want, int want_filter) {{
    /* the kernel's buffers are followed by more of the map value: wrapped suffix reads stay inside */
    static char buf[600], name[600], dir[600];
    size_t n = strlen(path), cut = (size_t)(strrchr(path, '/') - path) + 1;
    memset(buf, 0, sizeof(buf));
    memcpy(buf, path, n);
    memset(name, 0, sizeof(name));
    memcpy(name, path + cut, n - cut);
    memset(dir, 0, sizeof(dir));
    memcpy(dir, path, cut);
    u32 h = persist_home_offset(buf, (u32)n);
    int got = persist_path_match(buf, (u32)n, h);
    int filter = persist_name_hot(name, (u32)(n - cut)) || persist_dir_hot(dir, h);
    if (got != want || filter != want_filter) {{
        printf("MISMATCH %s: got %d, want %d; open filter %d, want %d\\n", path, got, want, filter, want_filter);
        return 1;
    }}
    return 0;
}}

int main(void) {{
    int bad = 0;
{checks}
    printf("%d mismatches\\n", bad);
    return bad != 0;
}}
"""
    )
    src = tmp_path / "matcher.c"
    exe = tmp_path / "matcher"
    src.write_text(program)
    assert GCC is not None
    build = subprocess.run(
        [
            GCC,
            "-std=c11",
            "-Wall",
            "-Werror",
            f"-I{generated}",
            f"-I{resources.bpf_dir() / source.INCLUDE_DIR}",
            "-o",
            str(exe),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert build.returncode == 0, f"the rendered matcher does not compile:\n{build.stderr}"
    return subprocess.run([str(exe)], capture_output=True, text=True, timeout=30)


def test_matcher_shape() -> None:
    """A prefix renders as little-endian word compares on p, a suffix on s at len - n, home entries in one
    block on r; no per-entry length checks (they would split the verifier's states)."""
    places = PersistencePlaces(
        (
            Place("prefix", "/etc/cron", "T1053.003"),
            Place("suffix", "/.zshrc", "T1546.004"),
            Place("home", ".config/fish/", "T1546.004"),
        )
    )
    text = render_path_matcher(places)
    assert "static __always_inline int persist_path_match(const char *p, u32 len, u32 h) {" in text
    # "/etc/cro" as one little-endian u64, then "n"
    assert (
        "if (*(const volatile u64 *)(p + 0) == 0x6f72632f6374652fULL && *(const volatile u8 *)(p + 8) == 0x6eU)"
        " return 1;"
    ) in text
    assert "const char *s = p + ((len - 7) & (PATH_MAX_LEN - 1));" in text
    assert "*(const volatile u32 *)(s + 0) == 0x737a2e2fU" in text  # "/.zs"
    assert "if (h) {" in text and "const char *r = p + (h & (PATH_MAX_LEN - 1));" in text
    assert "*(const volatile u64 *)(r + 0) == 0x2f6769666e6f632eULL" in text  # ".config/"
    assert "len >=" not in text.split("int persist_path_match")[1]
    assert text.rstrip().endswith("return 0;\n}")
    code = _strip_comments(text)
    assert code.count("{") == code.count("}")


def test_matcher_empty_lists() -> None:
    """With no prefixes or suffixes the matcher matches nothing."""
    text = render_path_matcher(_places([], []))
    assert "return 1" not in text.split("persist_path_match")[1]
    assert "return 0;" in text


def test_matcher_comments_do_not_close_early() -> None:
    """Each comment in the matcher for the real list closes exactly once, at its end (no premature `*/`)."""
    places = bundled_persistence()
    text = render_path_matcher(places)
    for line in text.splitlines():
        opens, closes = line.count("/*"), line.count("*/")
        assert opens == closes <= 1, f"unbalanced comment in: {line}"
        if opens:
            assert line.rstrip().endswith("*/"), f"code after a comment: {line}"
    code = _strip_comments(text)
    for place in places.places:  # every listed path appears only inside comments and char constants
        assert place.path not in code


def test_matcher_comment_injection() -> None:
    """An entry containing `*/` cannot close the comment early and turn the rest of the entry into C."""
    text = render_path_matcher(_places(["/x*/ return 1; /*"], ["/y*/.bashrc"]))
    code = _strip_comments(text.split("persist_path_match")[1])
    assert code.count("return 1;") == 2  # one per entry, none smuggled out of a comment
    assert "/*" not in code and "*/" not in code
    assert ".bashrc" not in code


def test_real_persistence_list() -> None:
    """The shared persistence list has the cron, ld.so.preload and authorized_keys entries, each with a technique."""
    places = bundled_persistence()
    prefixes = [p.path for p in places.of_kind("prefix")]
    suffixes = [p.path for p in places.of_kind("suffix")]
    assert "/etc/cron" in prefixes
    assert "/etc/ld.so.preload" in prefixes
    assert "/.ssh/authorized_keys" in suffixes
    assert all(p.startswith("/") for p in prefixes)
    assert all(place.technique.startswith("T1") for place in places.places)
    assert all(len(place.path) < 256 for place in places.places)


def test_known_paths_agree_with_list() -> None:
    """The expected results in KNOWN_PATHS are what the list means (so the C harness checks the right thing)."""
    places = bundled_persistence()
    for path, want in KNOWN_PATHS.items():
        assert _reference(path, places) == want, path


@needs_gcc
def test_matcher_compiles_and_matches(tmp_path: Path) -> None:
    """The matcher rendered from the real list compiles and gives the right answer for known paths."""
    result = _compile_and_run(tmp_path, bundled_persistence(), KNOWN_PATHS)
    assert result.returncode == 0, result.stdout
    assert "0 mismatches" in result.stdout


@needs_gcc
def test_matcher_agrees_with_reference(tmp_path: Path) -> None:
    """Over many generated paths (up to 255 bytes) the C matcher equals startswith/endswith over the list."""
    places = bundled_persistence()
    rng = random.Random(20240607)
    pieces = [
        "/",
        "etc",
        "cron",
        ".d",
        "home",
        "u",
        ".ssh",
        "authorized_keys",
        ".bashrc",
        "x",
        "systemd",
        "system",
        ".service",
        ".timer",
        "tmp",
        "ld.so.preload",
        "lib",
        "modules",
        "..",
        "a" * 40,
        "root",
        ".config",
        "user",
        "fish",
        "python3",
        "dist-packages",
        "x.pth",
        "usr",
        "security",
        "pam_x.so",
    ]
    cases: dict[str, int] = {}
    for place in places.places:
        entry = place.path.replace("*", "x3").replace("~/", "/home/u/")
        for variant in (
            entry,
            entry[:-1],
            entry + "x",
            "/home/u" + entry,
            "/home/u/" + entry,
            "/root/" + entry,
            "/q" + entry[1:],
            entry * 3,
        ):
            if variant.startswith("/") and len(variant) < 256:
                cases[variant] = _reference(variant, places)
    while len(cases) < 600:
        path = "/" + "/".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        path = path[:255]
        cases[path] = _reference(path, places)
    long_key = "/home/" + "u" * (255 - len("/home//.ssh/authorized_keys")) + "/.ssh/authorized_keys"
    assert len(long_key) == 255
    cases[long_key] = 1
    assert {0, 1} <= set(cases.values())
    # The open filter passes every path the matcher passes, and turns away most of the others.
    open_filter = places.open_filter()
    assert all(open_filter.may_match(path) for path, want in cases.items() if want)
    turned_away = [path for path, want in cases.items() if not open_filter.may_match(path)]
    assert len(turned_away) > len(cases) // 4, len(turned_away)
    result = _compile_and_run(tmp_path, places, cases)
    assert result.returncode == 0, result.stdout


@needs_gcc
def test_injected_entry_compiles_as_data(tmp_path: Path) -> None:
    """An entry with `*/` in it still renders C that compiles and matches only that literal path."""
    evil = "/x*/ return 1; /*"
    cases = {evil: 1, "/tmp/x": 0, "/x": 0, "/home/y*/.bashrc": 1}
    result = _compile_and_run(tmp_path, _places([evil], ["/y*/.bashrc"]), cases)
    assert result.returncode == 0, result.stdout


def _tracefs(root: Path, *, group_dead: bool, modules: bool, legacy: bool) -> Path:
    exit_dir = root / "events" / "sched" / "sched_process_exit"
    exit_dir.mkdir(parents=True)
    fields = [
        "field:char comm[16];\toffset:8;\tsize:16;\tsigned:0;",
        "field:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;",
    ]
    if group_dead:
        fields.append("field:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;")
    (exit_dir / "format").write_text("name: sched_process_exit\nID: 312\nformat:\n\t" + "\n\t".join(fields) + "\n")
    names = ["openat", "renameat", "execve"]
    if modules:
        names += ["init_module", "finit_module"]
    if legacy:
        names += ["open", "creat", "rename", "link", "symlink"]
    for name in names:
        (root / "events" / "syscalls" / f"sys_enter_{name}").mkdir(parents=True)
    return root


@pytest.mark.parametrize("group_dead", [True, False])
@pytest.mark.parametrize("modules", [True, False])
@pytest.mark.parametrize("legacy", [True, False])
def test_detect_features(tmp_path: Path, group_dead: bool, modules: bool, legacy: bool) -> None:
    """detect_features reads group_dead from the exit format and looks for module/legacy syscall tracepoints."""
    root = _tracefs(tmp_path, group_dead=group_dead, modules=modules, legacy=legacy)
    features = detect_features(str(root))
    assert features == Features(str(root), group_dead, legacy, modules)
    described = features.describe()
    assert described["exit_filter"] == ("group_dead" if group_dead else "leader_exit")
    assert described["module_load_source"] == ("tracepoint" if modules else "exec")


def test_detect_features_partial_module_tracepoints(tmp_path: Path) -> None:
    """Only init_module without finit_module is not enough for module tracepoints."""
    root = _tracefs(tmp_path, group_dead=True, modules=False, legacy=False)
    (root / "events" / "syscalls" / "sys_enter_init_module").mkdir()
    assert detect_features(str(root)).module_tracepoints is False


def test_detect_features_missing_exit_format(tmp_path: Path) -> None:
    """A tracefs without sched_process_exit/format gives exit_group_dead False, not an error."""
    (tmp_path / "events" / "syscalls" / "sys_enter_init_module").mkdir(parents=True)
    (tmp_path / "events" / "syscalls" / "sys_enter_finit_module").mkdir(parents=True)
    features = detect_features(str(tmp_path))
    assert features == Features(str(tmp_path), False, False, True)


def test_detect_features_without_tracefs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With no tracefs mounted every feature is off."""
    monkeypatch.setattr(source, "TRACEFS_CANDIDATES", (str(tmp_path / "nope"),))
    assert detect_features() == Features(None, False, False, False)


def test_render_cflags() -> None:
    """render_cflags defines every offset macro in WANTED and every feature/option flag."""
    values = {name: str(8 * i + 3) for i, name in enumerate(sorted(WANTED))}
    offsets = KernelOffsets("btf", values)
    features = Features("/sys/kernel/tracing", exit_group_dead=True, legacy_syscalls=False, module_tracepoints=True)
    options = ProbeOptions(SensorConfig(capture_env=False, skip_loopback=True, ringbuf_pages=512))
    flags = render_cflags(offsets, features, options)
    for name, value in values.items():
        assert f"-D{name}={value}" in flags, name
    defined = {f[2:].split("=", 1)[0] for f in flags if f.startswith("-D")}
    assert set(WANTED) <= defined
    for flag in (
        "-DHAVE_EXIT_GROUP_DEAD=1",
        "-DHAVE_SYS_OPEN=0",
        "-DHAVE_MODULE_TRACEPOINTS=1",
        "-DCAPTURE_ENV=0",
        "-DSKIP_LOOPBACK=1",
        "-DRINGBUF_PAGES=512",
        "-DNET_RINGBUF_PAGES=1024",
        "-DFILE_RINGBUF_PAGES=256",
        "-DOFFSETS_FROM_HEADERS=0",
    ):
        assert flag in flags
    assert len(flags) == len(set(flags))


def test_render_cflags_headers_fallback() -> None:
    """Header-fallback offsets (offsetof expressions) are passed through as macro values."""
    values = {name: f"offsetof(struct {s}, {m})" for name, (s, m) in WANTED.items()}
    flags = render_cflags(KernelOffsets("headers", values), Features(None, False, True, False), ProbeOptions())
    assert "-DTASK_TGID=offsetof(struct task_struct, tgid)" in flags
    assert "-DHAVE_SYS_OPEN=1" in flags and "-DHAVE_EXIT_GROUP_DEAD=0" in flags
    assert "-DCAPTURE_ENV=1" in flags and "-DRINGBUF_PAGES=2048" in flags
    assert "-DOFFSETS_FROM_HEADERS=1" in flags  # common.h then includes the kernel's headers


def test_render_source_includes_matcher() -> None:
    """render_source inlines the ABI header and the generated matcher header for the real list."""
    text = source.render_source()
    assert "#define OP_EXEC 1" in text
    assert render_path_matcher(bundled_persistence()) in text
    header = render_persist_match_header(bundled_persistence())
    assert header.startswith("/* GENERATED") and '#include "events.gen.h"' in header
    assert '#line 1 "<generated>/persist_match.gen.h"\n' + header.split("#include")[0] in text


@pytest.mark.parametrize(
    "names,want",
    [
        (["io_uring_submit_req", "io_uring_complete"], "io_uring_submit_req"),
        (["io_uring_submit_sqe", "io_uring_complete"], "io_uring_submit_sqe"),  # 5.x-6.3
        (["io_uring_submit_req"], None),  # completions are needed for opens
        ([], None),
    ],
)
def test_detect_io_uring_tracepoint(tmp_path: Path, names: list[str], want: str | None) -> None:
    """The io_uring submission tracepoint is found by name (doctor and the startup log say which); the
    probe's cflags follow it, and only when the kernel's BTF has io_uring's structs."""
    root = _tracefs(tmp_path, group_dead=True, modules=False, legacy=False)
    for name in names:
        (root / "events" / "io_uring" / name).mkdir(parents=True)
    features = detect_features(str(root))
    assert features.io_uring_submit == want
    assert (want or "unwatched") in str(features.describe()["io_uring"])
    from agent.probes.offsets import OPTIONAL

    values = {name: "8" for name in WANTED}
    with_uring = KernelOffsets("btf", {**values, **{name: "8" for name in OPTIONAL["io_uring"]}})
    flags = render_cflags(with_uring, features, ProbeOptions())
    assert f"-DHAVE_IO_URING_SUBMIT_REQ={int(want == 'io_uring_submit_req')}" in flags
    assert f"-DHAVE_IO_URING_SUBMIT_SQE={int(want == 'io_uring_submit_sqe')}" in flags
    assert "-DHAVE_IO_URING_SUBMIT_REQ=0" in render_cflags(KernelOffsets("btf", values), features, ProbeOptions())
