#!/usr/bin/env python3
"""Two chainwatch trees side by side: the storms' wall time under each, interleaved with none and the floor.

A single `make bench` ratio moves by several percent from one run to the next on a shared machine; a change is
judged against the tree before it in the same run. Each named command is a sensor; rounds rotate the order.
The floor is this checkout's tracepoints with empty programs. A command that does not accept
``sensor.cache_dir`` (an older tree) runs without the compile cache (it compiles at each start; only its
startup is slower, and the bench waits for that).

usage: compare.py [--rounds N] [--scale F] [--no-cache NAME] NAME=CMD... [WORKLOAD...]
  e.g. compare.py --no-cache old new=/work/main/.venv/bin/chainwatch \\
         "old=env -C /work/old /work/main/.venv/bin/python -m agent" open_storm
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import workloads  # noqa: E402
from bench.overhead import SensorSpec, run_cell  # noqa: E402
from bench.run import suite  # noqa: E402
from bench.sensors import CHAINWATCH, Chainwatch, Floor, Sensor  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply each workload's bench op count")
    parser.add_argument("--no-cache", action="append", default=[], metavar="NAME", help="run NAME without a cache")
    parser.add_argument("items", nargs="+", metavar="NAME=CMD | WORKLOAD", help="sensors, then workloads (default all)")
    args = parser.parse_args()
    commands = dict(item.split("=", 1) for item in args.items if "=" in item)
    names = [item for item in args.items if "=" not in item]
    unknown = sorted(set(names) - set(workloads.NAMES))
    if unknown or not commands:
        parser.error(f"unknown workloads {unknown}" if unknown else "name at least one sensor, NAME=CMD")
    workdir = Path(tempfile.mkdtemp(prefix="chainwatch-compare-"))
    try:
        return compare(args, names, commands, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def compare(args: argparse.Namespace, names: list[str], commands: dict[str, str], workdir: Path) -> int:
    scratch = workdir / "scratch"
    scratch.mkdir()
    binaries = workloads.build(workdir / "bin")
    chosen = [w for w in suite(binaries, scratch, args.scale) if not names or w.name in names]
    this = Chainwatch([str(CHAINWATCH)], workdir / "cache-probes")
    this.start(workdir)
    probes = this.probes()
    this.stop()
    specs = [SensorSpec("none", Sensor), SensorSpec("floor", lambda: Floor(probes))]
    for name, command in commands.items():
        cache = None if name in args.no_cache else workdir / f"cache-{name}"
        specs.append(SensorSpec(name, partial(Chainwatch, shlex.split(command), cache)))
    walls: dict[tuple[str, str], list[float]] = {}
    for round_no in range(args.rounds):
        for workload in chosen:
            shift = round_no % len(specs)
            for spec in specs[shift:] + specs[:shift]:
                sample = run_cell(spec, workload, round_no, workdir)
                walls.setdefault((workload.name, spec.name), []).append(sample.wall_s)
                print(f"round {round_no + 1} {workload.name} {spec.name} {sample.wall_s:.3f} s", file=sys.stderr)
    print("| workload | sensor | wall s, median [min–max] | × floor |")
    print("|---|---|---|---|")
    for workload in chosen:
        floor = statistics.median(walls[(workload.name, "floor")])
        for spec in specs:
            values = walls[(workload.name, spec.name)]
            median = statistics.median(values)
            print(
                f"| {workload.name} | {spec.name} | {median:.3f} [{min(values):.3f}–{max(values):.3f}] "
                f"| {median / floor:.3f}× |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
