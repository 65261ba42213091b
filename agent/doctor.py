"""``chainwatch doctor``: what this machine has and lacks for the sensor, one line per check."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from agent.compat import sigma_missing
from agent.config import Config
from agent.probes.offsets import VMLINUX_BTF, WANTED, headers_dir, resolve_kfuncs
from agent.probes.source import detect_features
from agent.resources import ResourceMissing, share_dir

REQUIRED_TRACEPOINTS = (
    "sched/sched_process_exec",
    "sched/sched_process_fork",
    "sched/sched_process_exit",
    "syscalls/sys_enter_connect",
    "syscalls/sys_exit_connect",
    "syscalls/sys_enter_dup2",
    "syscalls/sys_enter_dup3",
    "syscalls/sys_enter_fcntl",
    "syscalls/sys_enter_openat",
    "syscalls/sys_enter_renameat2",
    "syscalls/sys_enter_linkat",
    "syscalls/sys_exit_accept4",
    "syscalls/sys_enter_listen",
)


@dataclass
class Check:
    """One check's outcome. ``ok`` None means informational (not a failure)."""

    name: str
    ok: bool | None
    detail: str


def cache_check(config: Config) -> Check:
    """Where compiled probes are kept, and whether the next start loads them or compiles (informational)."""
    cache_dir = config.sensor.cache_dir
    if not cache_dir:
        return Check("probe cache", None, "off (sensor.cache_dir is empty): every start compiles the probes")
    from agent.probes.cache import ProbeCache

    cache = ProbeCache(cache_dir)
    state = cache.state()
    if state.problem:
        return Check("probe cache", None, f"{state.directory}: {state.problem}")
    try:
        from agent.daemon import probe_options
        from agent.probes.artifact import cache_key
        from agent.probes.cache import toolchain
        from agent.probes.loader import build_program

        program = build_program(probe_options(config))
        name = cache.file_name(cache_key(program.text, program.cflags, toolchain()))
    except Exception as exc:  # doctor reports; the agent would say the same at startup
        return Check(
            "probe cache",
            None,
            f"{state.directory}: {len(state.entries)} entries (cannot build the "
            f"program here to tell which is current: {exc})",
        )
    current = [size for entry, size in state.entries if entry == name]
    if current:
        return Check(
            "probe cache",
            None,
            f"{state.directory}: warm, the next start loads {name} ({current[0]} bytes) without compiling",
        )
    return Check(
        "probe cache",
        None,
        f"{state.directory}: cold ({len(state.entries)} entries for other sources or "
        "kernels): the next start compiles the probes (a few seconds) and caches them",
    )


def _checks() -> list[Check]:
    out = [Check("kernel", None, os.uname().release)]
    try:
        out.append(Check("data files", True, f"rules and BPF sources in {share_dir()}"))
    except ResourceMissing as exc:
        out.append(Check("data files", False, str(exc)))
    out.append(
        Check(
            "privileges",
            os.geteuid() == 0,
            "root" if os.geteuid() == 0 else "not root: run chainwatch as root to load BPF programs",
        )
    )
    features = detect_features()
    out.append(
        Check(
            "tracefs",
            features.tracefs is not None,
            features.tracefs or "not mounted: mount -t tracefs nodev /sys/kernel/tracing",
        )
    )
    if features.tracefs:
        missing = [tp for tp in REQUIRED_TRACEPOINTS if not os.path.isdir(os.path.join(features.tracefs, "events", tp))]
        out.append(Check("tracepoints", not missing, "all present" if not missing else f"missing: {missing}"))
        out.append(
            Check(
                "exit filter",
                None,
                "sched_process_exit has group_dead"
                if features.exit_group_dead
                else "sched_process_exit lacks group_dead: thread-group exit approximated by leader exit",
            )
        )
        out.append(
            Check(
                "module loads",
                None,
                "init_module/finit_module tracepoints"
                if features.module_tracepoints
                else "no init_module/finit_module tracepoints (modules compiled out?): module_load comes from "
                "the exec of insmod/modprobe/kmod",
            )
        )
        out.append(
            Check(
                "io_uring",
                None,
                f"io_uring requests watched at io_uring:{features.io_uring_submit} and io_uring_complete"
                if features.io_uring_submit
                else "no io_uring submission tracepoint (io_uring_submit_req, io_uring_submit_sqe before 6.4): "
                "connects and file writes through io_uring are not seen",
            )
        )
        out.append(
            Check(
                "tcp connect backstop",
                None,
                "sock:inet_sock_set_state reports TCP connects no connect call explains"
                if features.sock_state
                else "no sock:inet_sock_set_state tracepoint",
            )
        )
    has_btf = os.path.exists(VMLINUX_BTF)
    has_headers = os.path.isdir(os.path.join(headers_dir(), "include"))
    if has_btf:
        from agent.btf import Btf, BtfError, resolve_offsets

        try:
            btf = Btf.from_file(VMLINUX_BTF)
            resolve_offsets(btf, WANTED)
            out.append(Check("struct offsets", True, f"from BTF ({VMLINUX_BTF}), {len(WANTED)} resolved"))
            _, kfuncs = resolve_kfuncs(btf)
            out.append(
                Check(
                    "typed reads",
                    None,
                    "an fd's file is read by loads (kfunc bpf_rdonly_cast)"
                    if "KFUNC_RDONLY_CAST" in kfuncs
                    else "no kfunc bpf_rdonly_cast (before 6.2, or no BPF JIT): an fd's file is read by probe "
                    "reads (slower)",
                )
            )
        except BtfError as exc:
            out.append(Check("struct offsets", False, f"BTF present but unusable: {exc}"))
    else:
        out.append(
            Check(
                "struct offsets",
                has_headers,
                f"no BTF: offsetof() from the headers in {headers_dir()}"
                if has_headers
                else "no BTF and no kernel headers: install linux-headers for this kernel",
            )
        )
    out.append(
        Check(
            "kernel headers",
            has_headers,
            f"{os.path.realpath(headers_dir())} (bcc compiles its helpers against them)"
            if has_headers
            else f"missing at {headers_dir()}: make setup installs and links the nearest",
        )
    )
    try:
        import bcc

        out.append(Check("bcc", True, f"python bindings at {os.path.dirname(bcc.__file__)}"))
    except ImportError:
        out.append(
            Check(
                "bcc",
                False,
                "python3-bpfcc not importable: apt-get install python3-bpfcc and use a venv "
                "made with --system-site-packages",
            )
        )
    missing = sigma_missing()
    out.append(Check("sigma", None, missing or "pySigma importable: detection.sigma_dirs can load Sigma rules"))
    return out


def run_doctor(write: Callable[[str], object] = sys.stdout.write, config: Config | None = None) -> int:
    """Print every check; exit 1 if a required one failed."""
    failed = False
    for check in [*_checks(), cache_check(config or Config())]:
        mark = {True: "ok  ", False: "FAIL", None: "info"}[check.ok]
        failed |= check.ok is False
        write(f"{mark} {check.name}: {check.detail}\n")
    return 1 if failed else 0
