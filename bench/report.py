"""The benchmark's tables, in Markdown: overhead per workload and sensor, then the agent's other numbers.

Every target is checked here and marked met or missed; nothing is asserted. Ratios are paired by round
(a sensor's run against the ``none`` or ``floor`` run of the same workload in the same round), then
summarised as median [min–max].
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from bench.overhead import Sample, Unavailable
from bench.procstat import MIB
from bench.steady import Idle, RatePoint, Start, Startups, Sustained

EXEC_X_FLOOR: Final = 1.25
OTHER_X_FLOOR: Final = 1.5
RSS_MIB: Final = 150
STARTUP_S: Final = 2.0  # issue 12: sensor_ready within 2 s of launch
IDLE_PCT: Final = 1.0
SUSTAIN_RATE: Final = 5000
SUSTAIN_S: Final = 30.0
LATENCY_MEDIAN_MS: Final = 50.0
LATENCY_P99_MS: Final = 250.0
REACHED: Final = 0.95  # a paced storm that reaches 95% of its rate counts as running at that rate


@dataclass(frozen=True)
class Results:
    """Everything one `make bench` run measured."""

    suite: list[tuple[str, int]]  # (workload, ops) in run order
    sensors: list[str]
    rounds: int
    samples: list[Sample]
    unavailable: list[Unavailable]
    idle: Idle
    startups: Startups
    rates: list[RatePoint]
    sustained: Sustained
    latency: dict[str, Any] | None
    latency_note: str = ""
    notes: list[str] = field(default_factory=list)


def spread(values: Sequence[float], fmt: str = "{:.3f}", unit: str = "") -> str:
    """median [min–max] of values."""
    if not values:
        return "—"
    median = statistics.median(values)
    return f"{fmt.format(median)}{unit} [{fmt.format(min(values))}–{fmt.format(max(values))}]"


def mark(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def cells(samples: Sequence[Sample], workload: str, sensor: str) -> dict[int, Sample]:
    """The samples of one workload under one sensor, by round."""
    return {s.round: s for s in samples if s.workload == workload and s.sensor == sensor}


def paired_ratios(mine: dict[int, Sample], base: dict[int, Sample], attr: str) -> list[float]:
    """mine / base for every round both ran."""
    return [
        getattr(mine[r], attr) / getattr(base[r], attr)
        for r in sorted(mine)
        if r in base and getattr(base[r], attr) > 0
    ]


def overhead_table(results: Results) -> str:
    """One row per workload and sensor."""
    head = (
        "| workload (ops) | sensor | wall s | wall ×none | wall ×floor | CPU s | CPU ×none | CPU ×floor "
        "| +ns/op wall | +ns/op CPU | events seen/run | lost kernel/user | agent CPU s | agent CPU ns/op "
        "| agent RSS MiB peak / steady | target (wall ×floor) |"
    )
    columns = head.count("|") - 1
    lines = [head, "|" + "---|" * columns]
    for workload, ops in results.suite:
        none = cells(results.samples, workload, "none")
        floor = cells(results.samples, workload, "floor")
        for sensor in results.sensors:
            mine = cells(results.samples, workload, sensor)
            if not mine:
                continue
            runs = list(mine.values())
            x_floor = paired_ratios(mine, floor, "wall_s")
            added_wall = [(mine[r].wall_s - none[r].wall_s) / ops * 1e9 for r in mine if r in none]
            added_cpu = [(mine[r].cpu_s - none[r].cpu_s) / ops * 1e9 for r in mine if r in none]
            agent_cpu = [s.agent_cpu_s for s in runs if s.agent_cpu_s is not None]
            seen = [s.counts.seen for s in runs if s.counts.seen is not None]
            lost_k = [s.counts.lost_kernel for s in runs if s.counts.lost_kernel is not None]
            lost_u = [s.counts.lost_user for s in runs if s.counts.lost_user is not None]
            peaks = [s.load_peak for s in runs if s.load_peak is not None]
            steady = [s.steady_rss for s in runs if s.steady_rss is not None]
            target = ""
            if sensor == "chainwatch" and x_floor:
                limit = EXEC_X_FLOOR if workload == "exec_storm" else OTHER_X_FLOOR
                target = f"≤{limit}×: {mark(statistics.median(x_floor) <= limit)}"
            lines.append(
                "| "
                + " | ".join(
                    [
                        f"{workload} ({ops:,})",
                        sensor,
                        spread([s.wall_s for s in runs]),
                        spread(paired_ratios(mine, none, "wall_s"), "{:.2f}", "×") if sensor != "none" else "1",
                        spread(x_floor, "{:.2f}", "×") if sensor not in ("none", "floor") else "—",
                        spread([s.cpu_s for s in runs]),
                        spread(paired_ratios(mine, none, "cpu_s"), "{:.2f}", "×") if sensor != "none" else "1",
                        spread(paired_ratios(mine, floor, "cpu_s"), "{:.2f}", "×")
                        if sensor not in ("none", "floor")
                        else "—",
                        f"{statistics.median(added_wall):,.0f}" if sensor != "none" and added_wall else "—",
                        f"{statistics.median(added_cpu):,.0f}" if sensor != "none" and added_cpu else "—",
                        f"{statistics.median(seen):,.0f}" if seen else "—",
                        f"{sum(lost_k):,}/{sum(lost_u):,}" if lost_k else "—",
                        spread(agent_cpu, "{:.2f}") if agent_cpu else "—",
                        f"{statistics.median(agent_cpu) / ops * 1e9:,.0f}" if agent_cpu else "—",
                        f"{max(peaks) / MIB:.0f} / {statistics.median(steady) / MIB:.0f}" if peaks and steady else "—",
                        target or "—",
                    ]
                )
                + " |"
            )
    for item in results.unavailable:
        lines.append(f"| all | {item.sensor} | not run: {item.reason} |" + " |" * (columns - 3))
    return "\n".join(lines)


Row = tuple[str, str, str, str]  # measure, value, target, verdict


def _steps(starts: Sequence[Start]) -> str:
    """Median of each step the sensor_ready lines report."""
    out = []
    for key, label in (("compile_s", "compile (children)"), ("load_s", "load+verify"), ("attach_s", "attach")):
        values = [float(v) for s in starts if isinstance(v := s.ready.get(key), int | float)]
        if values:
            out.append(f"{label} {statistics.median(values):.2f} s")
    inner = [float(v) for s in starts if isinstance(v := s.ready.get("startup_s"), int | float)]
    if inner:
        launch = statistics.median(
            [
                s.ready_s - float(s.ready["startup_s"])
                for s in starts  # type: ignore[arg-type]
                if "startup_s" in s.ready
            ]
        )
        out.append(
            f"Agent.start {statistics.median(inner):.2f} s, before it (interpreter, imports, rules) {launch:.2f} s"
        )
    return "; ".join(out)


def startup_rows_of(startups: Startups) -> list[Row]:
    rows = []
    for kind, starts in (
        ("warm: probes loaded from the compile cache", startups.warm),
        ("cold: empty cache, probes compiled in child processes, one per part", startups.cold),
    ):
        if not starts:
            continue
        median = statistics.median([s.ready_s for s in starts])
        rows.append(
            (
                f"startup, launch to sensor_ready ({kind}; {len(starts)} starts)",
                f"{spread([s.ready_s for s in starts], '{:.2f}', ' s')} ({_steps(starts)})",
                f"≤ {STARTUP_S:.0f} s",
                mark(median <= STARTUP_S),
            )
        )
    return rows


def load_peak_rows_of(startups: Startups) -> list[Row]:
    """The agent's VmHWM at sensor_ready on each path, and the largest compile child's own peak."""
    rows = []
    for kind, starts in (("warm", startups.warm), ("cold", startups.cold)):
        if starts:
            rows.append(
                (
                    f"agent RSS, load peak (VmHWM at sensor_ready), {kind} start",
                    spread([s.peak / MIB for s in starts], "{:.0f}", " MiB"),
                    "report",
                    "—",
                )
            )
    child = [float(v) for s in startups.cold if isinstance(v := s.ready.get("compile_peak_mib"), int)]
    if child:
        rows.append(
            (
                "compile children's peak RSS (the largest; their own processes, gone once the cache is written)",
                spread(child, "{:.0f}", " MiB"),
                "report",
                "—",
            )
        )
    return rows


def idle_rows(results: Results) -> list[Row]:
    idle = results.idle
    pct = idle.cpu_s / idle.window_s * 100
    return [
        (
            f"idle CPU over {idle.window_s:.0f} s ({idle.counts.seen or 0:,} background events seen)",
            f"{pct:.2f}% of one CPU ({idle.cpu_s:.2f} s)",
            f"≤ {IDLE_PCT:.0f}%",
            mark(pct <= IDLE_PCT),
        )
    ]


def rss_rows(results: Results) -> list[Row]:
    cw = [s for s in results.samples if s.sensor == "chainwatch"]
    steady = [s.steady_rss for s in cw if s.steady_rss is not None] + [results.idle.rss]
    sus = results.sustained
    worst = max([*steady, sus.rss])
    return [
        (
            "agent RSS after load, idle and each overhead run (steady, after the drain)",
            spread([m / MIB for m in steady], "{:.0f}", " MiB"),
            f"≤ {RSS_MIB} MiB steady",
            mark(worst / MIB <= RSS_MIB) + " (worst of these and the sustained storm)",
        ),
        (
            "agent RSS after the sustained exec storm (peak during it)",
            f"{sus.rss / MIB:.0f} MiB ({sus.run_peak / MIB:.0f} MiB)",
            f"≤ {RSS_MIB} MiB steady",
            "see above",
        ),
        *load_peak_rows_of(results.startups),
    ]


def exec_rate_rows(results: Results) -> list[Row]:
    best = max(results.rates, key=lambda p: p.rate)
    sus = results.sustained
    lost = (sus.counts.lost_kernel or 0) + (sus.counts.lost_user or 0)
    execs_seen = sus.counts.by_type.get("exec", 0)
    reached = sus.achieved_rate >= REACHED * SUSTAIN_RATE and sus.seconds >= REACHED * SUSTAIN_S
    verdict = mark(lost == 0 and execs_seen >= sus.ops)
    if not reached:
        verdict = (
            f"not testable here: the storm reached {sus.achieved_rate:,.0f}/s; "
            f"{'0 lost' if lost == 0 else f'{lost:,} lost'} at that rate"
        )
    return [
        (
            "max exec rate here, no sensor (fork+exec+wait of /bin/true)",
            ", ".join(f"{p.rate:,.0f}/s @{p.jobs} job{'s' if p.jobs > 1 else ''}" for p in results.rates),
            "report",
            f"best {best.rate:,.0f}/s",
        ),
        (
            f"sustained exec storm under chainwatch: {sus.ops:,} execs paced at {sus.requested_rate:,}/s, "
            f"{sus.jobs} jobs",
            f"ran {sus.seconds:.1f} s at {sus.achieved_rate:,.0f}/s; lost kernel/user "
            f"{sus.counts.lost_kernel}/{sus.counts.lost_user}; exec events seen {execs_seen:,} "
            f"(incl. background); agent CPU {sus.agent_cpu_s:.1f} s",
            f"0 lost at {SUSTAIN_RATE:,}/s for {SUSTAIN_S:.0f} s",
            verdict,
        ),
    ]


def latency_rows(results: Results) -> list[Row]:
    target = f"median ≤ {LATENCY_MEDIAN_MS:.0f} ms, p99 ≤ {LATENCY_P99_MS:.0f} ms"
    lat = results.latency
    if lat is None:
        return [("alert latency (bench/latency.py)", results.latency_note or "not run", target, "not measured")]
    return [
        (
            f"alert latency, connect → alert line ({lat['incidents']} incidents from {lat['shells']} "
            "reverse shells; the agent sees the whole machine)",
            f"median {lat['median_ms']:.2f} ms, p90 {lat['p90_ms']:.2f}, p99 {lat['p99_ms']:.2f}, "
            f"max {lat['max_ms']:.2f}",
            target,
            mark(lat["median_ms"] <= LATENCY_MEDIAN_MS and lat["p99_ms"] <= LATENCY_P99_MS),
        )
    ]


def summary_table(results: Results) -> str:
    lines = ["| measure | value | target | verdict |", "|---|---|---|---|"]
    rows = [
        *startup_rows_of(results.startups),
        *idle_rows(results),
        *rss_rows(results),
        *exec_rate_rows(results),
        *latency_rows(results),
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def render(results: Results) -> str:
    """Both tables and the notes that qualify them."""
    foreign = [s.foreign_progs for s in results.samples]
    notes = list(results.notes)
    notes.append(
        f"{results.rounds} rounds, sensors interleaved with the order rotated each round; each run "
        "starts a fresh sensor, waits for it to be idle, runs the workload, waits for the sensor to "
        "drain, then stops it. Wall time is the workload's own loop; CPU is its user+system time "
        "(children included), which also holds the BPF programs' time. Agent CPU is utime+stime "
        "from /proc/<pid>/stat (10 ms ticks)."
    )
    notes.append(
        "Events seen are chainwatch's own counters (final stats line, minus the /proc seed), so they "
        "include whatever else ran on the machine. exec storm: 3 events per op (fork, exec, exit); "
        "the other storms send nothing by design (loopback connects, dups onto fd ≥ 3 or of pipes, "
        "and writes outside persistence paths are dropped in the kernel)."
    )
    busy = sum(1 for n in foreign if n > 0)
    if busy:
        notes.append(
            f"Shared machine: in {busy} of {len(foreign)} runs, another user's tracing BPF programs "
            f"were loaded (up to {max(foreign)}); they slow every sensor, none included."
        )
    return "\n\n".join([overhead_table(results), summary_table(results), "\n".join(f"* {note}" for note in notes)])
