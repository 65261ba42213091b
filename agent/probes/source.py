"""The exact BPF program chainwatch loads: source text, compiler flags and the kernel features they depend on.

Pure: no bcc here, so ``chainwatch bpf dump`` and the tests can show and check what would be loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml

from agent import resources
from agent.probes.offsets import KernelOffsets

PERSISTENCE_LIST: Final = Path("lists") / "persistence_paths.yaml"  # under the rules directory
# Order matters: the generated layout, then shared helpers, then one file per concern.
SOURCE_FILES: Final = ("include/events.gen.h", "include/common.h", "process.bpf.c", "net.bpf.c", "fd.bpf.c",
                       "persistence.bpf.c")
TRACEFS_CANDIDATES: Final = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


@dataclass(frozen=True)
class Features:
    """Kernel differences the program adapts to, found by looking, never by version number."""

    tracefs: str | None
    exit_group_dead: bool  # sched_process_exit has group_dead (6.16+)
    legacy_syscalls: bool  # open, creat, rename, link, symlink exist (x86_64, not arm64)
    module_tracepoints: bool  # init_module / finit_module (absent when modules are compiled out)

    def describe(self) -> dict[str, object]:
        """For the startup log and doctor."""
        return {
            "tracefs": self.tracefs,
            "exit_filter": "group_dead" if self.exit_group_dead else "leader_exit",
            "legacy_syscalls": self.legacy_syscalls,
            "module_load_source": "tracepoint" if self.module_tracepoints else "exec",
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
    legacy = all((events / "syscalls" / f"sys_enter_{name}").is_dir()
                 for name in ("open", "creat", "rename", "link", "symlink"))
    modules = all((events / "syscalls" / f"sys_enter_{name}").is_dir() for name in ("init_module", "finit_module"))
    return Features(tracefs, "group_dead" in exit_format, legacy, modules)


@dataclass(frozen=True)
class ProbeOptions:
    """Compile-time options: the kernel filters on these constants."""

    capture_env: bool = True
    skip_loopback: bool = True
    ringbuf_pages: int = 2048
    net_ringbuf_pages: int = 1024


def load_persistence_list(path: Path | None = None) -> tuple[list[str], list[str]]:
    """(prefixes, suffixes) from the shared persistence list (default: the bundled one)."""
    path = path if path is not None else resources.rules_dir() / PERSISTENCE_LIST
    data = yaml.safe_load(path.read_text()) or {}
    out: dict[str, list[str]] = {"prefixes": [], "suffixes": []}
    for kind, entries in out.items():
        for entry in data.get(kind) or []:
            # The kernel compares bytes at constant offsets: entries must be non-empty ASCII strings.
            if not isinstance(entry, str) or not entry or not entry.isascii():
                raise ValueError(f"{path}: {kind} entry {entry!r} must be a non-empty ASCII string")
            if kind == "prefixes" and not entry.startswith("/"):
                raise ValueError(f"{path}: prefix {entry!r} is not an absolute path")
            entries.append(entry)
    return out["prefixes"], out["suffixes"]


def _c_char(ch: str) -> str:
    return repr(ch) if ch not in "'\\" else "'\\" + ch + "'"


def _c_comment(text: str) -> str:
    # A path may contain "*/" (it must not end the comment) or "/*" (-Wcomment).
    return text.replace("*/", "*\\/").replace("/*", "/\\*")


def render_path_matcher(prefixes: list[str], suffixes: list[str]) -> str:
    """C for persist_path_match(p, len): byte compares at constant offsets, which the verifier likes."""
    lines = ["static __always_inline int persist_path_match(const char *p, u32 len) {"]
    for prefix in prefixes:
        cond = " && ".join(f"p[{i}] == {_c_char(c)}" for i, c in enumerate(prefix))
        lines.append(f"    if (len >= {len(prefix)} && {cond}) return 1;  /* {_c_comment(prefix)} */")
    for suffix in suffixes:
        cond = " && ".join(f"s[{i}] == {_c_char(c)}" for i, c in enumerate(suffix))
        lines.append(f"    if (len >= {len(suffix)}) {{  /* ends with {_c_comment(suffix)} */")
        lines.append(f"        const char *s = p + ((len - {len(suffix)}) & (PATH_MAX_LEN - 1));")
        lines.append(f"        if ({cond}) return 1;")
        lines.append("    }")
    lines.append("    return 0;")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_source(headers_for_offsets: bool = False) -> str:
    """The whole program as one text (includes inlined), exactly as compiled."""
    parts = []
    if headers_for_offsets:
        # Only without BTF: the offset macros expand to offsetof() over the kernel's own headers.
        parts.append("#include <linux/sched.h>\n#include <linux/fdtable.h>\n#include <linux/fs.h>\n"
                     "#include <linux/mm_types.h>\n#include <linux/net.h>\n#include <net/sock.h>\n")
    bpf = resources.bpf_dir()
    for name in SOURCE_FILES:
        text = (bpf / name).read_text()
        parts.append(f"/* ---- bpf/{name} ---- */\n{text}")
        if name == "include/common.h":
            parts.append("/* ---- generated from rules/lists/persistence_paths.yaml ---- */\n"
                         + render_path_matcher(*load_persistence_list()))
    return "\n".join(parts)


def render_cflags(offsets: KernelOffsets, features: Features, options: ProbeOptions) -> list[str]:
    """Every -D the program is built with."""
    flags = offsets.cflags()
    flags += [
        f"-DHAVE_EXIT_GROUP_DEAD={int(features.exit_group_dead)}",
        f"-DHAVE_SYS_OPEN={int(features.legacy_syscalls)}",
        f"-DHAVE_MODULE_TRACEPOINTS={int(features.module_tracepoints)}",
        f"-DCAPTURE_ENV={int(options.capture_env)}",
        f"-DSKIP_LOOPBACK={int(options.skip_loopback)}",
        f"-DRINGBUF_PAGES={options.ringbuf_pages}",
        f"-DNET_RINGBUF_PAGES={options.net_ringbuf_pages}",
        "-Wno-unused-function",
    ]
    return flags
