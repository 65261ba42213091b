"""The exact BPF program chainwatch loads: source text, compiler flags and the kernel features they depend on.

Pure: no bcc here, so ``chainwatch bpf dump`` and the tests can show and check what would be loaded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from agent import resources
from agent.config import SensorConfig
from agent.probes.artifact import KFUNC_HELPERS
from agent.probes.offsets import KernelOffsets
from agent.ruleset.persistence import HOME_USER_MAX, PersistencePlaces, Place

MAIN_FILE: Final = "chainwatch.bpf.c"  # the whole program: it includes one file per concern
# The program is compiled in parts, each by its own child at the same time: clang is single-threaded, and the whole
# takes 1.8 s here where the larger part takes 1.1 s. A part is a run of MAIN_FILE's includes, compiled as one
# text; together, in order, the parts are exactly those includes (render_parts checks it). A map or program that
# two parts both define (common.h's maps) must come out the same from each (agent.probes.artifact.merge).
COMPILE_PARTS: Final = (("process.bpf.c", "net.bpf.c"), ("fd.bpf.c", "persistence.bpf.c", "io_uring.bpf.c"))
INCLUDE_DIR: Final = "include"  # bpf/include: shared headers and the ABI's events.gen.h
PERSIST_MATCH_HEADER: Final = "persist_match.gen.h"  # generated at load from the persistence list in use
GENERATED_DIR: Final = "<generated>"  # where the rendered text says generated headers come from
_QUOTE_INCLUDE: Final = re.compile(r'[ \t]*#[ \t]*include[ \t]*"([^"]+)"')
_FILE_START: Final = re.compile(r'^#line 1 "([^"]+)"$', re.M)
# The io_uring submission tracepoint, newest name first (io_uring_submit_sqe until 6.3).
IO_URING_SUBMIT_TRACEPOINTS: Final = ("io_uring_submit_req", "io_uring_submit_sqe")
TRACEFS_CANDIDATES: Final = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


@dataclass(frozen=True)
class Features:
    """Kernel differences the program adapts to, found by looking, never by version number."""

    tracefs: str | None
    exit_group_dead: bool  # sched_process_exit has group_dead (6.16+)
    legacy_syscalls: bool  # open, creat, rename, link, symlink exist (x86_64, not arm64)
    module_tracepoints: bool  # init_module / finit_module (absent when modules are compiled out)
    io_uring_submit: str | None = None  # IO_URING_SUBMIT_TRACEPOINTS entry this kernel has (with io_uring_complete)
    sock_state: bool = False  # sock:inet_sock_set_state

    def describe(self) -> dict[str, object]:
        """For the startup log and doctor."""
        return {
            "tracefs": self.tracefs,
            "exit_filter": "group_dead" if self.exit_group_dead else "leader_exit",
            "legacy_syscalls": self.legacy_syscalls,
            "module_load_source": "tracepoint" if self.module_tracepoints else "exec",
            "io_uring": self.io_uring_submit or "unwatched (no io_uring tracepoints)",
            "tcp_connect_backstop": "inet_sock_set_state" if self.sock_state else None,
        }


def find_tracefs() -> str | None:
    """The mounted tracefs, if any."""
    for path in TRACEFS_CANDIDATES:
        if os.path.isdir(os.path.join(path, "events")):
            return path
    return None


def detect_features(tracefs: str | None = None) -> Features:
    """Look at the tracepoints this kernel has."""
    tracefs = tracefs or find_tracefs()
    if tracefs is None:
        return Features(None, False, False, False)
    events = Path(tracefs) / "events"
    try:
        exit_format = (events / "sched" / "sched_process_exit" / "format").read_text()
    except OSError:
        exit_format = ""
    legacy = all(
        (events / "syscalls" / f"sys_enter_{name}").is_dir() for name in ("open", "creat", "rename", "link", "symlink")
    )
    modules = all((events / "syscalls" / f"sys_enter_{name}").is_dir() for name in ("init_module", "finit_module"))
    uring = None
    if (events / "io_uring" / "io_uring_complete").is_dir():
        uring = next((name for name in IO_URING_SUBMIT_TRACEPOINTS if (events / "io_uring" / name).is_dir()), None)
    sock_state = (events / "sock" / "inet_sock_set_state").is_dir()
    return Features(tracefs, "group_dead" in exit_format, legacy, modules, uring, sock_state)


@dataclass(frozen=True)
class ProbeOptions:
    """What the program is compiled with besides the kernel's own facts: the [sensor] options (declared, with
    their defaults, once in SensorConfig; see SensorConfig.kernel_defines) and the persistence list."""

    sensor: SensorConfig = field(default_factory=SensorConfig)
    persistence: PersistencePlaces | None = None  # the rules' list (None: the bundled one)


def bundled_persistence() -> PersistencePlaces:
    """The bundled list, through the one reader (agent.ruleset.persistence via agent.ruleset.load)."""
    from agent.ruleset.load import load_lists

    return load_lists().persistence


def _c_comment(text: str) -> str:
    # A path may contain "*/" (it must not end the comment) or "/*" (-Wcomment).
    return text.replace("*/", "*\\/").replace("/*", "/\\*")


HOME_OFFSET_C: Final = f"""\
/* Start of the part below /root/ or /home/<user>/ (user of 1-{HOME_USER_MAX} bytes), or 0: see home_offset(). */
static __always_inline u32 persist_home_offset(const char *p, u32 len) {{
    if (len > 6 && p[0] == '/' && p[1] == 'r' && p[2] == 'o' && p[3] == 'o' && p[4] == 't' && p[5] == '/')
        return 6;
    if (len > 7 && p[0] == '/' && p[1] == 'h' && p[2] == 'o' && p[3] == 'm' && p[4] == 'e' && p[5] == '/') {{
        for (u32 i = 7; i < 7 + {HOME_USER_MAX} && i < len; i++)
            if (p[i] == '/')
                return i + 1;
    }}
    return 0;
}}
"""


_WORDS: Final = ((8, "u64", "ULL"), (4, "u32", "U"), (2, "u16", "U"), (1, "u8", "U"))
HEAD_BYTES: Final = 4  # entries are grouped by this many leading bytes of their literal start


def _compare(var: str, offset: str, text: str | bytes) -> list[str]:
    """C conditions that the bytes at var + offset are ``text``: 8, 4, 2 and 1-byte loads against constants
    (a quarter of the instructions of byte compares: the matcher must fit the verifier's 4096 per program).
    Volatile, so that clang does not keep a loaded word for the next entry: a register whose value the
    verifier knows on one path and not on another splits its states at every entry."""
    raw = text if isinstance(text, bytes) else text.encode()
    out, i = [], 0
    while i < len(raw):
        size, ctype, suffix = next(w for w in _WORDS if w[0] <= len(raw) - i)
        value = int.from_bytes(raw[i : i + size], "little")
        out.append(f"*(const volatile {ctype} *)({var} + {offset}{i}) == {value:#x}{suffix}")
        i += size
    return out


def _condition(
    var: str, start: str | bytes, end: str | bytes, base: str = "p", length: str = "len"
) -> tuple[list[str], str]:
    """(setup lines, C condition) for "the string at var starts with start, and the one at base (of length
    ``length``) ends with end".

    No length checks: the NUL at p[len] stops a longer prefix, and a suffix longer than the path is read at
    a wrapped offset inside the record, which can only pass more paths (userspace decides), never fewer.
    A length check per entry would be hoisted by clang into booleans that split the verifier's states."""
    setup = []
    conds = _compare(var, "", start)
    if end:
        setup.append(f"const char *s = {base} + (({length} - {len(end)}) & (PATH_MAX_LEN - 1));")
        conds += _compare("s", "", end)
    return setup, " && ".join(conds) or "1"


@dataclass(frozen=True)
class _Test:
    """One entry of a generated matcher: the string at the matcher's var starts with ``start`` and the whole
    string ends with ``end``; ``where`` is its comment."""

    start: bytes
    end: bytes
    where: str


def _render_test(test: _Test, var: str, base: str, length: str, indent: str) -> list[str]:
    setup, cond = _condition(var, test.start, test.end, base, length)
    if not setup:
        return [f"{indent}if ({cond}) return 1;  /* {_c_comment(test.where)} */"]
    return [
        f"{indent}{{  /* {_c_comment(test.where)} */",
        *(f"{indent}    {line}" for line in setup),
        f"{indent}    if ({cond}) return 1;",
        f"{indent}}}",
    ]


def _render_groups(tests: list[_Test], var: str, indent: str, base: str = "p", length: str = "len") -> list[str]:
    """The tests, grouped so that a string outside every one fails a handful of compares, not one per test.

    Tests whose start has HEAD_BYTES or more go under one test of the string's first HEAD_BYTES ("/etc",
    "/usr"...), tests that only have an end under one test of the last byte, and the rest stay as they are.
    A group test is its own volatile load, like the entries' (see _compare)."""
    by_head: dict[bytes, list[_Test]] = {}
    by_last: dict[bytes, list[_Test]] = {}
    rest: list[_Test] = []
    for test in tests:
        if len(test.start) >= HEAD_BYTES:
            by_head.setdefault(test.start[:HEAD_BYTES], []).append(test)
        elif not test.start and test.end:
            by_last.setdefault(test.end[-1:], []).append(test)
        else:
            rest.append(test)
    lines = []
    groups = [(_compare(var, "", key), f"{key.decode(errors='replace')}...", group) for key, group in by_head.items()]
    groups += [
        (_compare(base, f"(({length} - 1) & (PATH_MAX_LEN - 1)) + ", key), f"...{key.decode(errors='replace')}", group)
        for key, group in by_last.items()
    ]
    for conds, where, group in groups:
        lines.append(f"{indent}if ({' && '.join(conds)}) {{  /* {_c_comment(where)} */")
        for test in group:
            lines += _render_test(test, var, base, length, indent + "    ")
        lines.append(f"{indent}}}")
    for test in rest:
        lines += _render_test(test, var, base, length, indent)
    return lines


def _place_tests(places: list[Place]) -> list[_Test]:
    tests = []
    for place in places:
        start, end = place.kernel_filter()
        tests.append(_Test(start.encode(), end.encode(), f"{place.kind} {place.path}"))
    return tests


def _home_block(base: str, tests: list[_Test]) -> list[str]:
    """The tests on the part of ``base`` below its home directory (at offset h), when it is in one."""
    if not tests:
        return []
    return [
        "    if (h) {  /* below a home directory */",
        f"        const char *r = {base} + (h & (PATH_MAX_LEN - 1));",
        *_render_groups(tests, "r", "        ", base),
        "    }",
    ]


def render_path_matcher(places: PersistencePlaces) -> str:
    """C for persist_path_match(p, len, h): word compares at constant offsets, which the verifier likes.

    The kernel's coarse filter: each entry's literal start and end (Place.kernel_filter), at the path's start
    or below its home directory. Userspace then decides on the whole entry."""
    lines = [
        HOME_OFFSET_C,
        "#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__",
        "#error the persistence matcher compares little-endian words",
        "#endif",
        "#ifndef cw_opaque  /* hide a value's range from the compiler: the verifier needs each mask kept */",
        '#define cw_opaque(v) __asm__ __volatile__("" : "+r"(v))',
        "#endif",
        "/* h: persist_home_offset(p, len), which the caller passes through memory (see persist_emit). */",
        "static __always_inline int persist_path_match(const char *p, u32 len, u32 h) {",
        "    cw_opaque(len);",
    ]
    lines += _render_groups(_place_tests([place for place in places.places if not place.in_home]), "p", "    ")
    lines += _home_block("p", _place_tests([place for place in places.places if place.in_home]))
    lines.append("    return 0;")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_open_filter(places: PersistencePlaces) -> str:
    """C for persist_name_hot(n, nl) and persist_dir_hot(d, h): PersistencePlaces.open_filter() in the kernel.

    A name test compares the name with its NUL (so no length check), a name end is read at nl - its length;
    a directory test is a start, or the whole directory with its NUL. It follows render_path_matcher in the
    header, which defines cw_opaque."""
    f = places.open_filter()
    names = [_Test(name.encode() + b"\0", b"", f"name {name}") for name in f.names]
    names += [_Test(b"", end.encode(), f"name ends {end}") for end in f.name_ends]

    def dir_tests(starts: tuple[str, ...], dirs: tuple[str, ...]) -> list[_Test]:
        tests = [_Test(start.encode(), b"", f"dir starts {start}") for start in starts]
        return tests + [_Test(d.encode() + b"\0", b"", f"dir is {d or '~/'}") for d in dirs if d not in starts]

    lines = [
        "/* n: a file's name (NUL-terminated; the buffer goes on for PATH_MAX_LEN more bytes), nl its length. */",
        "static __always_inline int persist_name_hot(const char *n, u32 nl) {",
        "    cw_opaque(nl);",
        *_render_groups(names, "n", "    ", "n", "nl"),
        "    return 0;",
        "}",
        "/* d: a directory's path with its final '/', NUL-terminated; h: persist_home_offset() of a path in it. */",
        "static __always_inline int persist_dir_hot(const char *d, u32 h) {",
        *_render_groups(dir_tests(f.dir_starts, f.dirs), "d", "    ", "d"),
        *_home_block("d", dir_tests(f.home_dir_starts, f.home_dirs)),
        "    return 0;",
        "}",
    ]
    return "\n".join(lines) + "\n"


def render_persist_match_header(places: PersistencePlaces) -> str:
    """persist_match.gen.h: the matcher for ``places`` as a header of its own (persistence.bpf.c includes it)."""
    return (
        "/* GENERATED at load by agent/probes/source.py from the persistence list in use\n"
        " * (lists/persistence_paths.yaml of the rules directory). Do not edit. */\n"
        "#ifndef CHAINWATCH_PERSIST_MATCH_GEN_H\n#define CHAINWATCH_PERSIST_MATCH_GEN_H\n\n"
        '#include "events.gen.h" /* PATH_MAX_LEN */\n\n'
        + render_path_matcher(places)
        + render_open_filter(places)
        + "\n#endif /* CHAINWATCH_PERSIST_MATCH_GEN_H */\n"
    )


class _Inliner:
    """Puts each project file a file includes in place of its ``#include "..."``, once (every one has an
    include guard), with ``#line`` markers so that compiler messages name the file and line it came from.

    bcc rewrites its map syntax (``map.lookup()``, ``TRACEPOINT_PROBE``'s args) only in the main file it is
    given, not in included files, so the program reaches it as one text. A name is searched for as clang
    searches a quote include with ``-I<generated> -Ibpf/include``: next to the includer, then among the
    generated headers, then in bpf/include. ``#if`` is not evaluated, so a project include is never made
    conditional; ``#include <...>`` (the kernel's headers, without BTF) is left to the compiler."""

    def __init__(self, bpf: Path, generated: dict[str, str]):
        self.bpf, self.generated = bpf.resolve(), generated
        self.seen: set[str] = set()
        self.out: list[str] = []

    def label(self, path: Path) -> str:
        """How the text names a project file (in #line markers): bpf/include/common.h."""
        return f"bpf/{path.relative_to(self.bpf).as_posix()}"

    def read(self, path: Path) -> tuple[str, str, Path | None]:
        """(label, text, directory to search first for its own includes) of a project file."""
        path = path.resolve()
        return self.label(path), path.read_text(encoding="utf-8"), path.parent

    def _find(self, name: str, here: Path | None, where: str) -> tuple[str, str, Path | None]:
        if here is not None and (here / name).is_file():
            return self.read(here / name)
        if name in self.generated:
            return f"{GENERATED_DIR}/{name}", self.generated[name], None
        if (self.bpf / INCLUDE_DIR / name).is_file():
            return self.read(self.bpf / INCLUDE_DIR / name)
        raise FileNotFoundError(
            f'{where}: #include "{name}" is neither next to it, generated, nor in {self.bpf / INCLUDE_DIR}'
        )

    def inline(self, label: str, text: str, here: Path | None) -> None:
        self.seen.add(label)
        self.out.append(f'#line 1 "{label}"')
        for number, line in enumerate(text.splitlines(), 1):
            include = _QUOTE_INCLUDE.match(line)
            if include is None:
                self.out.append(line)
                continue
            name, text_of, directory = self._find(include.group(1), here, f"{label}:{number}")
            if name in self.seen:
                self.out.append(f"/* {_c_comment(name)}: included above */")
                continue
            self.inline(name, text_of, directory)
            self.out.append(f'#line {number + 1} "{label}"')


def render_source(main: str = MAIN_FILE, persistence: PersistencePlaces | None = None) -> str:
    """The program exactly as compiled: bpf/``main`` with the project files it includes put in place (see
    _Inliner), persist_match.gen.h among them, rendered from ``persistence`` (the rules in use), else from the
    bundled list. Any concern file can be ``main``: each stands alone."""
    bpf = resources.bpf_dir()
    generated = {PERSIST_MATCH_HEADER: render_persist_match_header(persistence or bundled_persistence())}
    inliner = _Inliner(bpf, generated)
    inliner.inline(*inliner.read(bpf / main))
    return "\n".join(inliner.out) + "\n"


def main_includes(main: str = MAIN_FILE) -> list[str]:
    """The project files ``main`` includes, in order."""
    text = (resources.bpf_dir() / main).read_text(encoding="utf-8")
    return [m.group(1) for m in map(_QUOTE_INCLUDE.match, text.splitlines()) if m]


def render_parts(persistence: PersistencePlaces | None = None) -> tuple[str, ...]:
    """The program as COMPILE_PARTS: each part rendered as render_source renders a file, its concern files in
    place in order. The parts joined compile as the whole (every file has an include guard)."""
    if [name for part in COMPILE_PARTS for name in part] != main_includes():
        raise ValueError(
            f"agent.probes.source.COMPILE_PARTS {COMPILE_PARTS} are not, in order, the files bpf/{MAIN_FILE} includes"
        )
    bpf = resources.bpf_dir()
    generated = {PERSIST_MATCH_HEADER: render_persist_match_header(persistence or bundled_persistence())}
    parts = []
    for part in COMPILE_PARTS:
        inliner = _Inliner(bpf, generated)
        for name in part:
            if inliner.label(bpf / name) not in inliner.seen:  # one file of a part may include another
                inliner.inline(*inliner.read(bpf / name))
        parts.append("\n".join(inliner.out) + "\n")
    return tuple(parts)


def source_files(text: str) -> list[str]:
    """The files a rendered program is made of, in order: each begins at its ``#line 1 "name"``."""
    return _FILE_START.findall(text)


def render_cflags(offsets: KernelOffsets, features: Features, options: ProbeOptions) -> list[str]:
    """Every -D the program is built with."""
    uring = features.io_uring_submit if offsets.has("io_uring") else None
    flags = offsets.cflags()
    flags += [
        f"-DOFFSETS_FROM_HEADERS={int(offsets.source == 'headers')}",
        f"-DHAVE_EXIT_GROUP_DEAD={int(features.exit_group_dead)}",
        f"-DHAVE_SYS_OPEN={int(features.legacy_syscalls)}",
        f"-DHAVE_MODULE_TRACEPOINTS={int(features.module_tracepoints)}",
        f"-DHAVE_IO_URING_SUBMIT_REQ={int(uring == 'io_uring_submit_req')}",
        f"-DHAVE_IO_URING_SUBMIT_SQE={int(uring == 'io_uring_submit_sqe')}",
        f"-DHAVE_SOCK_STATE={int(features.sock_state)}",
        # A kfunc the kernel has: HAVE_<name>, and the helper number the source calls it by (artifact.kfunc_calls).
        *(f"-DHAVE_{name}={int(offsets.kfunc(name) is not None)}" for name in KFUNC_HELPERS),
        *(f"-D{name}_HELPER={number:#x}" for name, number in KFUNC_HELPERS.items() if offsets.kfunc(name)),
        *(f"-D{name}={value}" for name, value in options.sensor.kernel_defines().items()),
        "-Wno-unused-function",
    ]
    return flags
