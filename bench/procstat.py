"""What /proc says about one process: CPU seconds (utime + stime, all threads) and memory (VmHWM, VmRSS)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Final

CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
MIB: Final = 1024 * 1024


@dataclass(frozen=True)
class Memory:
    """Resident memory in bytes: the peak since start (or the last reset) and now."""

    peak: int
    current: int


def cpu_seconds(pid: int) -> float:
    """User + system CPU of every thread of pid, in seconds (tick resolution)."""
    stat = open(f"/proc/{pid}/stat").read()
    # comm (field 2) may hold spaces and parentheses: split after its closing parenthesis.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory(pid: int) -> Memory:
    """VmHWM and VmRSS of pid."""
    values = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(rest.split()[0]) * 1024
    return Memory(values["VmHWM"], values["VmRSS"])


def reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS, so a later peak excludes what came before (e.g. the BPF compile)."""
    with open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")


def wait_quiet(pid: int, quiet_s: float, limit_s: float) -> float:
    """Wait until pid has used no CPU for quiet_s (it has drained its backlog); returns seconds waited."""
    started = time.monotonic()
    last, last_change = cpu_seconds(pid), started
    while time.monotonic() - started < limit_s:
        time.sleep(0.05)
        now_cpu = cpu_seconds(pid)
        if now_cpu != last:
            last, last_change = now_cpu, time.monotonic()
        elif time.monotonic() - last_change >= quiet_s:
            break
    return time.monotonic() - started
