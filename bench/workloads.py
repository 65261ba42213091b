"""The benchmark's workloads: small C programs, built here with gcc, each doing a fixed count of one operation.

Every program prints one JSON line on stdout when done, ``{"ops": N, "seconds": S, "rate": R}`` (its own
loop only, without process start), and exits non-zero, naming the failing call on stderr, if any operation
fails. Arguments (COUNT is the number of operations):

* ``exec_storm COUNT [RATE_PER_S [JOBS]]``: fork + execve of ``/bin/true`` with the caller's environment.
  RATE_PER_S 0 (default) means as fast as possible, else execs start on a fixed schedule; JOBS children
  may be in flight at once (default 1: fork, exec, wait).
* ``connect_storm COUNT [ADDRESS]``: TCP connect + close to a listener the program opens on ADDRESS
  (numeric IPv4/IPv6, default 127.0.0.1). Use a non-loopback local address (in a network namespace) to
  make connects the sensor reports; loopback ones are dropped in the kernel.
* ``dup_storm COUNT [SOCKET_FD]``: dup2 of a socket onto SOCKET_FD (default 10, not stdio), then of a pipe
  onto fd 1 and back. SOCKET_FD 0-2 makes every round a reported socket-onto-stdio event.
* ``open_storm COUNT DIR``: open-for-write (O_CREAT | O_TRUNC) + close of 16 files in DIR, an existing
  scratch directory outside the persistence paths.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final

SOURCE_DIR: Final = Path(__file__).resolve().parent / "workloads"
NAMES: Final = ("exec_storm", "connect_storm", "dup_storm", "open_storm")
CFLAGS: Final = ("-O2", "-Wall", "-Wextra", "-Werror", "-D_GNU_SOURCE")
GCC_TIMEOUT_S: Final = 60


@dataclass(frozen=True)
class Report:
    """What a workload prints when it finishes."""

    ops: int
    seconds: float
    rate: float


def build(outdir: Path) -> dict[str, Path]:
    """Compile every workload into outdir (skipped when the binary is newer than its sources); name -> binary."""
    outdir.mkdir(parents=True, exist_ok=True)
    header = SOURCE_DIR / "common.h"
    binaries = {}
    for name in NAMES:
        source, binary = SOURCE_DIR / f"{name}.c", outdir / name
        newest_input = max(source.stat().st_mtime, header.stat().st_mtime)
        if not binary.exists() or binary.stat().st_mtime < newest_input:
            subprocess.run(["gcc", *CFLAGS, "-o", str(binary), str(source)], check=True, timeout=GCC_TIMEOUT_S)
        binaries[name] = binary
    return binaries


@dataclass(frozen=True)
class Result:
    """One finished run: the program's own report and its CPU time (user + system, its children included)."""

    report: Report
    cpu_s: float


class WorkloadError(RuntimeError):
    """A workload failed or timed out; the message has its stderr."""


def run(argv: list[str], timeout_s: float) -> Result:
    """Run one workload to completion and measure its CPU time with wait4 (children it reaped included)."""
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        try:
            with proc.stdout:
                stdout = proc.stdout.read().decode(errors="replace")
            # wait4 rather than Popen.wait: it returns the child's rusage.
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            timer.cancel()
        if proc.returncode != 0:
            errors.seek(0)
            raise WorkloadError(
                f"{' '.join(argv)} exited with {proc.returncode} (timeout {timeout_s:.0f} s): "
                f"{errors.read().decode(errors='replace').strip()[-500:]}"
            )
    return Result(parse_report(stdout), usage.ru_utime + usage.ru_stime)


def parse_report(stdout: str) -> Report:
    """The JSON line a workload printed (its last non-empty stdout line)."""
    line = [text for text in stdout.splitlines() if text.strip()][-1]
    data = json.loads(line)
    return Report(int(data["ops"]), float(data["seconds"]), float(data["rate"]))
