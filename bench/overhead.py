"""Workload overhead: each workload under each sensor, interleaved round by round, one fresh sensor per run.

A run (a "cell") starts the sensor, waits until it is idle, runs the workload, waits until the sensor has
drained its backlog, reads the sensor's CPU and memory from /proc, then stops it and reads its counters.
The sensor order rotates every round, so no sensor always runs first or last after another's teardown.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench import procstat, workloads
from bench.sensors import Counts, Sensor, SensorUnavailable

SETTLE_QUIET_S: Final = 0.5  # the sensor used no CPU this long: startup work (seeding, GC) is done
SETTLE_LIMIT_S: Final = 15.0
DRAIN_QUIET_S: Final = 0.3  # ...and after the workload: its ring-buffer backlog is consumed
DRAIN_LIMIT_S: Final = 60.0
WORKLOAD_TIMEOUT_S: Final = 600.0
TRACING_PROG_TYPES: Final = frozenset({"tracepoint", "raw_tracepoint", "kprobe", "tracing", "perf_event"})


@dataclass(frozen=True)
class Workload:
    """One workload as the benchmark runs it: its name, operation count and full argv."""

    name: str
    ops: int
    argv: list[str]


@dataclass(frozen=True)
class Sample:
    """One cell: a workload run under one sensor in one round."""

    workload: str
    sensor: str
    round: int
    ops: int
    wall_s: float  # the workload's own loop time
    cpu_s: float  # the workload's user + system CPU, children included (BPF programs run in its syscalls)
    counts: Counts
    agent_cpu_s: float | None  # the sensor's process, from just before the workload to the end of its drain
    ready_s: float | None  # sensor launch to ready
    load_peak: int | None  # sensor VmHWM at ready: the compile and load peak, bytes
    run_peak: int | None  # sensor VmHWM over the workload (reset at ready), bytes
    steady_rss: int | None  # sensor VmRSS after the drain, bytes
    foreign_progs: int  # tracing BPF programs already loaded by others when the cell started


@dataclass(frozen=True)
class Unavailable:
    """A sensor that could not run here, and why."""

    sensor: str
    reason: str


@dataclass(frozen=True)
class SensorSpec:
    """A sensor by name, and how to make a fresh one."""

    name: str
    make: Callable[[], Sensor]


def foreign_tracing_programs() -> int:
    """Tracing BPF programs loaded right now (by other users of this machine, when no sensor of ours runs)."""
    try:
        out = subprocess.run(
            ["bpftool", "prog", "show", "--json"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return -1
    return sum(1 for prog in json.loads(out) if prog.get("type") in TRACING_PROG_TYPES)


def run_cell(spec: SensorSpec, workload: Workload, round_no: int, workdir: Path) -> Sample:
    """Start a fresh sensor, run the workload under it, stop it; raises SensorUnavailable."""
    foreign = foreign_tracing_programs()
    sensor = spec.make()
    sensor.start(workdir)
    try:
        pid = sensor.pid
        load_peak = None
        if pid is not None:
            procstat.wait_quiet(pid, SETTLE_QUIET_S, SETTLE_LIMIT_S)
            load_peak = procstat.memory(pid).peak
            procstat.reset_peak(pid)
            cpu_before = procstat.cpu_seconds(pid)
        result = workloads.run(workload.argv, WORKLOAD_TIMEOUT_S)
        agent_cpu = run_peak = steady = None
        if pid is not None:
            procstat.wait_quiet(pid, DRAIN_QUIET_S, DRAIN_LIMIT_S)
            agent_cpu = procstat.cpu_seconds(pid) - cpu_before
            mem = procstat.memory(pid)
            run_peak, steady = mem.peak, mem.current
    finally:
        counts = sensor.stop()
    return Sample(
        workload.name,
        sensor.name,
        round_no,
        result.report.ops,
        result.report.seconds,
        result.cpu_s,
        counts,
        agent_cpu,
        sensor.ready_s,
        load_peak,
        run_peak,
        steady,
        foreign,
    )


def run_rounds(
    specs: Sequence[SensorSpec], suite: Sequence[Workload], rounds: int, workdir: Path, progress: Callable[[str], None]
) -> tuple[list[Sample], list[Unavailable]]:
    """Every workload under every sensor, ``rounds`` times, interleaved; a sensor that fails once is dropped."""
    samples: list[Sample] = []
    unavailable: dict[str, Unavailable] = {}
    for round_no in range(rounds):
        shift = round_no % len(specs)
        order = [*specs[shift:], *specs[:shift]]
        for workload in suite:
            for spec in order:
                if spec.name in unavailable:
                    continue
                try:
                    sample = run_cell(spec, workload, round_no, workdir)
                except SensorUnavailable as exc:
                    unavailable[spec.name] = Unavailable(spec.name, str(exc))
                    progress(f"{spec.name}: unavailable: {exc}")
                    continue
                samples.append(sample)
                progress(
                    f"round {round_no + 1}/{rounds} {workload.name:<13} {sample.sensor:<10} "
                    f"wall {sample.wall_s:7.3f} s  cpu {sample.cpu_s:7.3f} s"
                )
    return samples, list(unavailable.values())
