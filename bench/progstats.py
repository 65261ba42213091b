#!/usr/bin/env python3
"""Per-program BPF cost of chainwatch under each bench workload: ns per call and ns per workload op.

Wall time on a shared machine moves with everyone else's load; the kernel's own accounting of each program
(``kernel.bpf_stats_enabled=1``: run_time_ns and run_cnt per program) does not. One sensor is started, each
workload runs against it, and the counters of the sensor's programs are diffed around each run. A program's
time includes the programs it tail-calls (their own counters stay at 0). Programs are named by the tracepoint
they are attached to (``bpftool perf show``). Needs root; restores bpf_stats_enabled on exit.

usage: progstats.py [--floor] [--chainwatch CMD] [--scale F] [--rounds N] [WORKLOAD...]
  --floor  measure the floor sensor instead (chainwatch's tracepoints, empty programs): the fixed cost of a call
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import procstat, workloads  # noqa: E402
from bench.run import OPS  # noqa: E402
from bench.sensors import CHAINWATCH, Chainwatch, DaemonSensor, Floor  # noqa: E402

STATS_SYSCTL: Final = Path("/proc/sys/kernel/bpf_stats_enabled")


def bpftool(*args: str) -> Any:
    return json.loads(
        subprocess.run(["bpftool", *args, "--json"], capture_output=True, text=True, timeout=60, check=True).stdout
    )


def programs(pid: int) -> dict[int, str]:
    """prog id -> the tracepoint it is attached to, for the programs pid attached."""
    out = {}
    for row in bpftool("perf", "show"):
        if row.get("pid") == pid:
            out[int(row["prog_id"])] = str(row.get("tracepoint") or row.get("fd_type"))
    return out


def counters(ids: dict[int, str]) -> dict[str, tuple[int, int]]:
    """name -> (run_time_ns, run_cnt)."""
    out = {}
    for prog in bpftool("prog", "show"):
        name = ids.get(int(prog["id"]))
        if name is not None:
            out[name] = (int(prog.get("run_time_ns", 0)), int(prog.get("run_cnt", 0)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.5, help="multiply each workload's bench op count")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--floor", action="store_true", help="measure the floor sensor instead")
    parser.add_argument(
        "--chainwatch",
        default=str(CHAINWATCH),
        help="the chainwatch command to measure, e.g. another checkout's (default: %(default)s)",
    )
    parser.add_argument("names", nargs="*", default=list(workloads.NAMES))
    args = parser.parse_args()
    previous = STATS_SYSCTL.read_text().strip()
    workdir = Path(tempfile.mkdtemp(prefix="chainwatch-progstats-"))
    scratch = workdir / "scratch"
    scratch.mkdir()
    binaries = workloads.build(workdir / "bin")
    sensor: DaemonSensor = Chainwatch(shlex.split(args.chainwatch))
    sensor.start(workdir)
    if args.floor:
        probes = sensor.probes()
        sensor.stop()
        sensor = Floor(probes)
        sensor.start(workdir)
    STATS_SYSCTL.write_text("1")
    try:
        assert sensor.pid is not None
        procstat.wait_quiet(sensor.pid, 0.5, 15.0)
        ids = programs(sensor.pid)
        for name in args.names:
            ops = max(1, int(OPS[name] * args.scale))
            argv = [str(binaries[name]), str(ops), *([str(scratch)] if name == "open_storm" else [])]
            for round_no in range(args.rounds):
                before = counters(ids)
                result = workloads.run(argv, 600)
                after = counters(ids)
                rows = []
                for prog, (ns, cnt) in after.items():
                    d_ns, d_cnt = ns - before[prog][0], cnt - before[prog][1]
                    if d_cnt >= ops // 2:
                        rows.append((d_ns / ops, prog, d_ns / d_cnt, d_cnt / ops))
                total = sum(r[0] for r in rows)
                print(
                    f"{name} round {round_no + 1}: {ops} ops, wall {result.report.seconds:.3f} s, "
                    f"BPF {total:,.0f} ns/op"
                )
                for per_op, prog, per_call, calls in sorted(rows, reverse=True):
                    print(f"  {prog:<28} {per_call:8,.0f} ns/call  x{calls:5.2f}/op  = {per_op:8,.0f} ns/op")
    finally:
        STATS_SYSCTL.write_text(previous)
        sensor.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
