"""Measurements of chainwatch left running: startup and idle CPU, the machine's exec rate, sustained execs.

* startup: launch to the ``sensor_ready`` line, cold (an empty compile cache: the probes are compiled in a
  child process) and warm (loaded from the cache), alternated; the agent's VmHWM at ready for each;
* idle: the agent's CPU over a window with no workload (the machine may not be idle: say so);
* exec rate: the fastest exec storm here with no sensor, over a few levels of parallelism;
* sustained: an exec storm paced at a fixed rate under chainwatch; losses from its own counters, and the
  exec events it saw against the execs done.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bench import procstat, workloads
from bench.sensors import Chainwatch, Counts

QUIET_S: Final = 0.5
QUIET_LIMIT_S: Final = 15.0
DRAIN_LIMIT_S: Final = 120.0
JOBS_LEVELS: Final = (1, 2, 4, 8)


@dataclass(frozen=True)
class Idle:
    """One chainwatch start, then a window with no workload."""

    ready_s: float
    probes: list[str]
    load_peak: int  # VmHWM at ready (compile and load), bytes
    window_s: float
    cpu_s: float  # agent CPU over the window
    rss: int  # VmRSS at the end of the window, bytes
    counts: Counts  # everything it saw: on a shared machine, other people's work


@dataclass(frozen=True)
class Start:
    """One start: launch to sensor_ready, the agent's VmHWM then, and what its sensor_ready line says about
    the steps (compile: cached or compiled; compile_s, compile_peak_mib, load_s, attach_s, startup_s)."""

    ready_s: float
    peak: int
    ready: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Startups:
    cold: list[Start]
    warm: list[Start]


@dataclass(frozen=True)
class RatePoint:
    """Exec storm throughput with JOBS children in flight, no sensor."""

    jobs: int
    rate: float


@dataclass(frozen=True)
class Sustained:
    """A paced exec storm under chainwatch."""

    requested_rate: int
    jobs: int
    ops: int
    seconds: float
    achieved_rate: float
    agent_cpu_s: float
    run_peak: int  # VmHWM over the storm (reset at ready), bytes
    rss: int  # VmRSS after the drain, bytes
    counts: Counts


def startup_and_idle(make: Callable[[], Chainwatch], workdir: Path, window_s: float) -> Idle:
    """Start chainwatch, let it settle, and measure its CPU over window_s with no workload."""
    sensor = make()
    sensor.start(workdir)
    try:
        assert sensor.pid is not None and sensor.ready_s is not None
        procstat.wait_quiet(sensor.pid, QUIET_S, QUIET_LIMIT_S)
        load_peak, probes = procstat.memory(sensor.pid).peak, sensor.probes()
        cpu_before, started = procstat.cpu_seconds(sensor.pid), time.monotonic()
        time.sleep(window_s)
        cpu_s, window = procstat.cpu_seconds(sensor.pid) - cpu_before, time.monotonic() - started
        rss = procstat.memory(sensor.pid).current
    finally:
        counts = sensor.stop()
    return Idle(sensor.ready_s, probes, load_peak, window, cpu_s, rss, counts)


def startups(make: Callable[[Path | None], Chainwatch], workdir: Path, count: int) -> Startups:
    """``count`` cold and ``count`` warm starts, alternated (the first cold one fills the warm cache)."""
    warm_dir = workdir / "cache-warm"
    cold: list[Start] = []
    warm: list[Start] = []
    for index in range(count):
        cold.append(_one_start(make(warm_dir if index == 0 else workdir / f"cache-cold-{index}"), workdir))
        warm.append(_one_start(make(warm_dir), workdir))
    return Startups(cold, warm)


def _one_start(sensor: Chainwatch, workdir: Path) -> Start:
    sensor.start(workdir)
    try:
        assert sensor.pid is not None and sensor.ready_s is not None
        peak = procstat.memory(sensor.pid).peak
        ready = sensor.ready_line(sensor.stderr_path.read_text(errors="replace")) or {}
    finally:
        sensor.stop()
    return Start(sensor.ready_s, peak, {k: v for k, v in ready.items() if k in READY_FIELDS})


READY_FIELDS: Final = ("compile", "compile_s", "compile_peak_mib", "load_s", "attach_s", "startup_s")


def exec_rates(exec_storm: Path, count: int) -> list[RatePoint]:
    """Unpaced exec storms with no sensor, at each parallelism level."""
    points = []
    for jobs in JOBS_LEVELS:
        result = workloads.run([str(exec_storm), str(count), "0", str(jobs)], timeout_s=600)
        points.append(RatePoint(jobs, result.report.rate))
    return points


def sustained(
    make: Callable[[], Chainwatch], exec_storm: Path, workdir: Path, rate: int, seconds: float, jobs: int
) -> Sustained:
    """An exec storm of rate * seconds execs, paced at rate, under a fresh chainwatch."""
    sensor = make()
    sensor.start(workdir)
    try:
        assert sensor.pid is not None
        procstat.wait_quiet(sensor.pid, QUIET_S, QUIET_LIMIT_S)
        procstat.reset_peak(sensor.pid)
        cpu_before = procstat.cpu_seconds(sensor.pid)
        ops = int(rate * seconds)
        result = workloads.run([str(exec_storm), str(ops), str(rate), str(jobs)], timeout_s=seconds * 20 + 60)
        procstat.wait_quiet(sensor.pid, QUIET_S, DRAIN_LIMIT_S)
        agent_cpu = procstat.cpu_seconds(sensor.pid) - cpu_before
        mem = procstat.memory(sensor.pid)
    finally:
        counts = sensor.stop()
    report = result.report
    return Sustained(rate, jobs, report.ops, report.seconds, report.rate, agent_cpu, mem.peak, mem.current, counts)
