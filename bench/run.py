#!/usr/bin/env python3
"""`make bench`: overhead, loss, memory, startup, idle and alert latency of chainwatch, in one run.

Phases: (0) cold and warm starts, alternated (the bench keeps its own compile cache; every later start is
warm, as a deployed agent's restarts are); (1) chainwatch starts once and idles (idle CPU, and the list of
tracepoints it attaches, which the floor sensor reuses); (2) every workload under every sensor, interleaved;
(3) the machine's exec rate, then a paced exec storm under chainwatch; (4) bench/latency.py.
Prints the tables and writes them into bench/RESULTS.md with the commit. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the bench package importable
    sys.path.insert(0, str(ROOT))

from bench import report, steady, workloads  # noqa: E402
from bench.overhead import SensorSpec, Workload, foreign_tracing_programs, run_rounds  # noqa: E402
from bench.sensors import CHAINWATCH, Bpftrace, Chainwatch, Floor, Sensor  # noqa: E402

RESULTS: Final = ROOT / "bench" / "RESULTS.md"
BEGIN: Final = "<!-- make bench: begin -->"
END: Final = "<!-- make bench: end -->"
# Operations per run, sized for about a second each with no sensor on this 2-core machine.
OPS: Final = {"exec_storm": 2_000, "connect_storm": 30_000, "dup_storm": 1_000_000, "open_storm": 200_000}
RATE_PROBE_OPS: Final = 4_000


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def suite(binaries: dict[str, Path], scratch: Path, scale: float) -> list[Workload]:
    """The four storms with their argv (see bench/workloads.py for each program's arguments)."""
    extra = {"open_storm": [str(scratch)]}
    out = []
    for name, ops in OPS.items():
        count = max(1, int(ops * scale))
        out.append(Workload(name, count, [str(binaries[name]), str(count), *extra.get(name, [])]))
    return out


def sensor_specs(probes: list[str], chainwatch: Callable[[], Chainwatch]) -> list[SensorSpec]:
    """none, floor (chainwatch's own tracepoints, empty programs), chainwatch, and bpftrace if installed."""
    specs = [
        SensorSpec("none", Sensor),
        SensorSpec("floor", lambda: Floor(probes)),
        SensorSpec("chainwatch", chainwatch),
    ]
    binary = shutil.which("bpftrace")
    if binary is not None:
        specs.append(SensorSpec("bpftrace", lambda: Bpftrace(binary)))
    return specs


def run_latency(n: int, workdir: Path) -> tuple[dict[str, Any] | None, str]:
    """bench/latency.py, as `make bench-latency` runs it; its numbers, or why there are none."""
    out = workdir / "latency.json"
    try:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "latency.py"), "-n", str(n), "--json", str(out)],
            capture_output=True,
            text=True,
            timeout=60 + n * 15,
        )
    except subprocess.TimeoutExpired:
        return None, "bench/latency.py timed out"
    sys.stderr.write(proc.stdout)
    if proc.returncode != 0 or not out.exists():
        return None, f"bench/latency.py failed ({proc.returncode}): {proc.stderr.strip()[-300:]}"
    data: dict[str, Any] = json.loads(out.read_text())
    return data, ""


def commit() -> str:
    """The short commit, and whether the tree differs from it (read-only git commands)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = [line for line in git("status", "--porcelain").splitlines() if line]
    return f"{head} (tree dirty: {len(changed)} changed or untracked paths)" if changed else f"{head} (clean tree)"


def machine() -> str:
    uname = os.uname()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs, kernel {uname.release}, load average at start {load}"


def write_results(text: str) -> None:
    """Replace the make-bench section of RESULTS.md (or append one), keeping everything else."""
    current = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        updated = head + block + rest.split(END, 1)[1]
    else:
        updated = current.rstrip("\n") + "\n\n" + block + "\n"
    RESULTS.write_text(updated)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per workload and sensor")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every workload's operation count")
    parser.add_argument("--idle-s", type=float, default=60.0, help="idle CPU window")
    parser.add_argument("--sustain-s", type=float, default=report.SUSTAIN_S, help="paced exec storm duration")
    parser.add_argument("--latency-n", type=int, default=200, help="reverse shells for the latency bench (0: skip)")
    parser.add_argument("--startups", type=int, default=7, help="cold and warm starts each (at least 1)")
    parser.add_argument(
        "--only-startup",
        action="store_true",
        help="measure only the cold and warm starts, print them, and leave bench/RESULTS.md alone",
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    parser.add_argument(
        "--chainwatch", default=str(CHAINWATCH), help="the chainwatch command to measure (default: %(default)s)"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("make bench needs root: it loads BPF programs and creates network namespaces")
    started = datetime.now(UTC)
    header = [f"Commit {commit()}, {started:%Y-%m-%d %H:%M} UTC; {machine()}."]
    foreign = foreign_tracing_programs()
    program = shlex.split(args.chainwatch)
    workdir = Path(tempfile.mkdtemp(prefix="chainwatch-bench-"))
    try:
        progress(f"{max(1, args.startups)} cold and warm starts each")
        starts = steady.startups(partial(Chainwatch, program), workdir, max(1, args.startups))
        if args.only_startup:
            print(
                "\n".join(
                    f"| {a} | {b} | {c} | {d} |"
                    for a, b, c, d in [*report.startup_rows_of(starts), *report.load_peak_rows_of(starts)]
                )
            )
            return 0
        make_chainwatch = partial(Chainwatch, program, workdir / "cache-warm")  # filled by the startups
        scratch = workdir / "scratch"
        scratch.mkdir()
        binaries = workloads.build(workdir / "bin")
        progress(f"startup and {args.idle_s:.0f} s idle (tracing BPF programs of others loaded: {foreign})")
        idle = steady.startup_and_idle(make_chainwatch, workdir, args.idle_s)
        progress(f"ready in {idle.ready_s:.2f} s; idle CPU {idle.cpu_s:.2f} s; {len(idle.probes)} probes")
        workload_suite = suite(binaries, scratch, args.scale)
        specs = sensor_specs(idle.probes, make_chainwatch)
        samples, unavailable = run_rounds(specs, workload_suite, args.rounds, workdir, progress)
        progress("exec rate with no sensor")
        rates = steady.exec_rates(binaries["exec_storm"], max(100, int(RATE_PROBE_OPS * args.scale)))
        jobs = max(2, max(rates, key=lambda p: p.rate).jobs)
        progress(f"sustained exec storm at {report.SUSTAIN_RATE}/s for {args.sustain_s:.0f} s, {jobs} jobs")
        sustained = steady.sustained(
            make_chainwatch, binaries["exec_storm"], workdir, report.SUSTAIN_RATE, args.sustain_s, jobs
        )
        latency, latency_note = None, "skipped (--latency-n 0)"
        if args.latency_n > 0:
            progress(f"alert latency, {args.latency_n} reverse shells")
            latency, latency_note = run_latency(args.latency_n, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    notes = []
    if foreign > 0:
        notes.append(f"At start, {foreign} tracing BPF programs of other users were loaded on this shared machine.")
    results = report.Results(
        suite=[(w.name, w.ops) for w in workload_suite],
        sensors=[s.name for s in specs],
        rounds=args.rounds,
        samples=samples,
        unavailable=unavailable,
        idle=idle,
        startups=starts,
        rates=rates,
        sustained=sustained,
        latency=latency,
        latency_note=latency_note,
        notes=notes,
    )
    text = "\n\n".join(header + [report.render(results)])
    print(text)
    if not args.no_write:
        write_results(f"## make bench\n\n{text}")
        progress(f"written to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
