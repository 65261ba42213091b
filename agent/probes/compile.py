"""Compile the probes in short-lived child processes and hand back an artifact (agent.probes.artifact).

bcc compiles with clang and LLVM inside the calling process: 2.6 s of CPU here and a 140 MiB peak, and
``import bcc`` alone maps 63 MiB of compiler that a long-running agent never needs again. The agent
therefore runs the compile in children (``python -m agent.probes.compile``), one per part of the program
(agent.probes.source.COMPILE_PARTS), as many at once as there are CPUs. Each reads its part's source and the
flags as JSON on stdin, compiles without loading anything into the kernel, and writes the part's artifact to
stdout; the parts are merged into one (agent.probes.artifact.merge), which the agent loads through libbcc_bpf
(agent.probes.bpflib) like a cached one. A child's maps exist only to learn their specs and the fds the
bytecode refers to; they go when it exits.

Exit status 0: the artifact is on stdout. Otherwise one line on stderr says what went wrong.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from agent.probes.artifact import (
    Artifact,
    ArtifactError,
    MapSpec,
    ProgramSpec,
    attach_point,
    dumps,
    kfunc_calls,
    loads,
    merge,
    relocations,
)

COMPILE_TIMEOUT_S: Final = 600.0
BCC_MISSING: Final = (
    "bcc's Python bindings are not importable: install the distro package python3-bpfcc "
    "(make setup does it) and run chainwatch with the system Python or a venv made with "
    "--system-site-packages"
)
AGENT_ROOT: Final = str(Path(__file__).resolve().parents[2])  # the directory holding the agent package
CHILD: Final = "import sys; sys.path.insert(0, sys.argv[1]); from agent.probes.compile import main; sys.exit(main())"


class CompileError(RuntimeError):
    """The compile failed; the message is the child's explanation."""


@dataclass(frozen=True)
class Compiled:
    """A compile's result and cost, for the startup log."""

    artifact: Artifact
    seconds: float
    peak_rss: int  # the largest child's VmHWM, bytes (0 when unknown)


def compile_in_children(
    parts: Sequence[str], cflags: list[str], key: str, kfuncs: Mapping[int, int] | None = None
) -> Compiled:
    """Compile each part of the program in a child, as many at once as there are CPUs, and merge them;
    CompileError with the first failing part's message. ``kfuncs``: helper number -> kfunc BTF id
    (agent.probes.artifact.kfunc_ids), for the calls the children make kfunc calls."""
    started = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    workers = max(1, min(len(parts), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="compile") as pool:
        results = list(pool.map(lambda text: _compile_part(text, cflags, key, kfuncs or {}), parts))
    try:
        artifact = merge(results)
    except ArtifactError as exc:
        raise CompileError(f"the compiled parts do not fit together ({exc})") from exc
    # ru_maxrss of children is the largest of any waited-for child (KiB): ours unless an earlier one was bigger.
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return Compiled(artifact, time.monotonic() - started, after * 1024 if after > before else 0)


def _compile_part(text: str, cflags: list[str], key: str, kfuncs: Mapping[int, int]) -> Artifact:
    """Run the compile of one text in a child process; CompileError with its message when it fails."""
    request = json.dumps({"text": text, "cflags": cflags, "key": key, "kfuncs": list(kfuncs.items())}).encode()
    # The same interpreter and isolation as ours (the packaged agent runs -I), with the agent importable.
    argv = [sys.executable, *(["-I"] if sys.flags.isolated else []), "-c", CHILD, AGENT_ROOT]
    try:
        proc = subprocess.run(argv, input=request, capture_output=True, timeout=COMPILE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise CompileError(f"the compile did not finish in {COMPILE_TIMEOUT_S:.0f} s") from exc
    except OSError as exc:
        raise CompileError(f"cannot start the compile ({exc})") from exc
    if proc.returncode != 0:
        # The child's own explanation is its last line; clang's diagnostics, if any, come before it.
        lines = [line for line in proc.stderr.decode(errors="replace").splitlines() if line.strip()]
        if not lines:
            raise CompileError(f"the compile exited with status {proc.returncode}")
        message = " | ".join([lines[-1], *lines[-12:-1]])
        if "Operation not permitted" in message:  # bcc creates the maps while it compiles
            message = f"creating BPF maps was refused: the agent needs CAP_BPF and CAP_PERFMON | {message}"
        raise CompileError(message)
    try:
        return loads(proc.stdout, key)
    except ArtifactError as exc:
        raise CompileError(f"the compile returned an unusable artifact ({exc})") from exc


def compile_artifact(text: str, cflags: list[str], key: str, kfuncs: Mapping[int, int] | None = None) -> Artifact:
    """bcc compiles ``text`` (nothing is loaded into the kernel); its functions and maps become an Artifact, with
    the calls of ``kfuncs``' helper numbers made kfunc calls."""
    try:
        import bcc
        from bcc.libbcc import lib
    except ImportError as exc:
        raise CompileError(f"{BCC_MISSING} ({exc})") from exc
    from agent.probes.bpflib import btf_bytes, map_info

    class CompileOnly(bcc.BPF):  # type: ignore[misc,name-defined]
        def _trace_autoload(self) -> None:
            """bcc would load and attach the probes here: the agent does that, from the artifact."""

    try:
        bpf = CompileOnly(text=text.encode(), cflags=cflags)
    except Exception as exc:  # bcc raises bare Exception on compile errors (clang's output went to stderr)
        raise CompileError(
            f"the BPF program failed to compile ({exc}); `chainwatch doctor` checks the kernel and headers"
        ) from exc
    module = bpf.module
    # bcc's Python bindings leave these two libbcc calls without prototypes (bcc_common.h declares them).
    lib.bpf_num_tables.restype, lib.bpf_num_tables.argtypes = ctypes.c_size_t, [ctypes.c_void_p]
    lib.bpf_table_name.restype, lib.bpf_table_name.argtypes = ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_size_t]
    fd_names: dict[int, str] = {}
    maps = []
    btf_ids = set()
    for index in range(lib.bpf_num_tables(module)):
        name = lib.bpf_table_name(module, index)
        fd = lib.bpf_table_fd(module, name)
        info = map_info(fd)
        fd_names[fd] = name.decode()
        if info.btf_id:
            btf_ids.add(info.btf_id)
        maps.append(
            MapSpec(
                name.decode(),
                info.type,
                info.key_size,
                info.value_size,
                info.max_entries,
                info.map_flags,
                info.btf_key_type_id if info.btf_id else 0,
                info.btf_value_type_id if info.btf_id else 0,
            )
        )
    # bcc loads one BTF object per module and creates every described map with it: the artifact keeps that one.
    if len(btf_ids) > 1:
        raise CompileError(f"the maps refer to {len(btf_ids)} BTF objects; a compiled part keeps one")
    btf = btf_bytes(btf_ids.pop()) if btf_ids else b""
    programs = []
    for index in range(lib.bpf_num_functions(module)):
        raw_name = lib.bpf_function_name(module, index)
        name = raw_name.decode()
        kind, target = attach_point(name)
        insns, refs = relocations(bpf.dump_func(raw_name), fd_names)
        insns = kfunc_calls(insns, kfuncs or {})
        prog_type = bcc.BPF.RAW_TRACEPOINT if kind == "raw_tracepoint" else bcc.BPF.TRACEPOINT
        programs.append(ProgramSpec(name, prog_type, kind, target, insns, refs))
    license = lib.bpf_module_license(module)
    artifact = Artifact(
        key=key,
        license=license.decode() if license else "GPL",
        kern_version=int(lib.bpf_module_kern_version(module)),
        maps=tuple(maps),
        programs=tuple(sorted(programs, key=lambda p: p.name)),
        compiler=f"bcc {getattr(bcc, '__version__', '?')}",
        btfs=(btf,) if btf else (),
    )
    bpf.cleanup()
    return artifact


def main() -> int:
    """The child: request on stdin, artifact on stdout."""
    try:
        request: dict[str, Any] = json.loads(sys.stdin.buffer.read())
        kfuncs = {int(number): int(btf_id) for number, btf_id in request["kfuncs"]}
        artifact = compile_artifact(request["text"], list(request["cflags"]), request["key"], kfuncs)
        data = dumps(artifact)
    except (CompileError, ArtifactError, OSError, ValueError, KeyError) as exc:
        sys.stderr.write(f"{str(exc).replace(chr(10), ' ')}\n")
        return 2
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
