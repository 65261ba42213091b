"""Lifecycle of ``chainwatch run``/``record``: config -> probes -> seed the process table -> read loop -> shutdown."""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import socket
import time
from typing import IO, TYPE_CHECKING, Any

import structlog

from agent.alerts import Host, boot_to_wall_offset_ns
from agent.assemble import assemble
from agent.compat import sigma_missing
from agent.config import Config, ConfigError
from agent.events import Event
from agent.health import SensorHealth
from agent.lineage.seed import seed_events
from agent.lineage.table import ProcessTable
from agent.outputs import build_sink
from agent.pipeline import Consumer, Pipeline
from agent.probes.loader import Sensor, open_sensor
from agent.probes.source import ProbeOptions
from agent.recording import RecordingWriter
from agent.response import Responder, check_rule_ids, open_responder
from agent.ruleset.load import default_rules_dir, load_rules
from agent.ruleset.rules import RuleSet
from agent.sdnotify import Watchdog, sd_notify
from agent.sinks import AlertSink

if TYPE_CHECKING:
    from agent.sigma import SigmaRules

log = structlog.get_logger()

DROP_CHECK_INTERVAL_S = 1.0


def host_meta() -> dict[str, Any]:
    """Identifies the host in recordings and alerts."""
    try:
        machine_id = open("/etc/machine-id").read().strip()
    except OSError:
        machine_id = ""
    return {"hostname": socket.gethostname(), "host_id": machine_id, "kernel": os.uname().release}


def settle_memory() -> None:
    """After loading and seeding. Full (generation-2) collections scan the whole process table for
    cycles it does not make, pausing the loop for hundreds of ms as it grows (bench/RESULTS.md): freeze
    what exists and leave full collections to the table's own bound. Then hand the heap the startup
    freed back to the kernel."""
    gc.freeze()
    gen0, gen1, _ = gc.get_threshold()
    gc.set_threshold(gen0, gen1, 1_000_000)
    trim_heap()


def trim_heap() -> None:
    """Give free heap back to the kernel (after startup, and after reaping a burst of processes)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to trim


def probe_options(config: Config, rules: RuleSet | None = None) -> ProbeOptions:
    """The kernel-side options from the config; the persistence filter from the rules in use (loaded from the
    config's rules directory when not given)."""
    rules = rules or load_rules(config.detection.rules_dir or default_rules_dir())
    return ProbeOptions(sensor=config.sensor, persistence=rules.lists.persistence)


class Agent:
    """The running sensor. ``run()`` blocks until ``stop()`` (or SIGTERM/SIGINT) and then flushes."""

    def __init__(self, config: Config, *, record: IO[bytes] | None = None):
        self.config = config
        # Rules first: a bad rule stops startup with its file and line, before anything is loaded.
        self.rules: RuleSet = load_rules(config.detection.rules_dir or default_rules_dir())
        self.sigma = load_sigma_dirs(config.detection.sigma_dirs)
        if config.response.enabled:
            check_rule_ids(config.response, (rule.id for rule in self.rules.rules))
        self.responder: Responder | None = None
        self.sink: AlertSink | None = None
        self._record_fh = record
        self._stopping = False
        self.sensor: Sensor | None = None
        self.pipeline: Pipeline | None = None
        self.writer: RecordingWriter | None = None
        self._last_drops: dict[str, int] = {}
        self.health: SensorHealth | None = None
        self.watchdog = Watchdog()

    def stop(self, *_: object) -> None:
        """Ask the loop to finish (signal-safe)."""
        self._stopping = True

    def start(self) -> Pipeline:
        """Load the probes, seed the process table and log sensor_ready."""
        started = time.monotonic()
        self.sensor = open_sensor(probe_options(self.config, self.rules), self.config.sensor.cache_dir)
        features = self.sensor.program.features
        table = ProcessTable(
            grace_ns=int(self.config.lineage.grace_s * 1e9), max_entries=self.config.lineage.max_entries
        )
        taps: list[Consumer] = []
        meta = host_meta()
        boot_offset = boot_to_wall_offset_ns()
        if self._record_fh is not None:
            self.writer = RecordingWriter(
                self._record_fh, {**meta, "features": features.describe(), "boot_offset_ns": boot_offset}
            )
            taps.append(self.writer.write)
        self.sink = build_sink(self.config)
        # Response (off by default) sits between the correlator's alert and the sinks.
        self.responder = open_responder(self.config.response, table)
        host = Host(meta["hostname"], meta["host_id"])
        self.pipeline = assemble(
            self.rules,
            table,
            [self.sink.put],
            host=host,
            boot_offset_ns=boot_offset,
            kernel=self.sensor,
            module_loads_from_exec=not features.module_tracepoints,
            sigma=self.sigma,
            exe_identity=True,
            respond=self.responder,
            taps=taps,
        )
        self.health = SensorHealth(host, self.sink.put, boot_offset)
        # Seed after attaching, so a process born in between is seen by one or both; the table merges them.
        seeded = seed_events()
        for event in seeded:
            self.pipeline.feed(event)
        settle_memory()
        log.info(
            "sensor_ready",
            rules=len(self.rules.rules),
            alerts=self.sink.names,
            sigma_rules=len(self.sigma.rules) if self.sigma else 0,
            probes=self.sensor.attached(),
            offsets=self.sensor.program.offsets.source,
            features=features.describe(),
            seeded_processes=len(seeded),
            startup_s=round(time.monotonic() - started, 3),
            **self.sensor.startup,
            pid=os.getpid(),
        )
        self._last_drops = self.sensor.kernel_drops()
        sd_notify("READY=1")
        return self.pipeline

    def run(self) -> int:
        """Run until stopped; returns the exit code."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        try:
            pipeline = self.start()
            assert self.sensor is not None
            interval = self.config.sensor.stats_interval_s
            next_stats = time.monotonic() + interval
            next_drop_check = time.monotonic() + DROP_CHECK_INTERVAL_S
            while not self._stopping:
                pipeline.feed_records(self.sensor.poll(self.config.sensor.poll_timeout_ms))
                self.watchdog.ping()
                now = time.monotonic()
                if now >= next_drop_check:
                    self._check_drops()
                    # Reap on this 1 s tick, not the stats tick: exited processes must leave within grace_s
                    # whatever the logging interval (with stats_interval_s = 3600 they stayed an hour).
                    pipeline.table.reap(time.clock_gettime_ns(time.CLOCK_BOOTTIME))
                    if self.responder is not None:
                        self.responder.tick()
                    if self.writer is not None:
                        self.writer.flush()
                    next_drop_check = now + DROP_CHECK_INTERVAL_S
                if now >= next_stats:
                    ktime = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
                    pipeline.prune(ktime)
                    trim_heap()
                    self.log_stats()
                    next_stats = now + interval
            sd_notify("STOPPING=1")
            pipeline.feed_records(self.sensor.drain())
            self._check_drops()
            self.log_stats(final=True)
        finally:
            if self.responder is not None:
                self.responder.close()  # detaches the block program
            if self.sink is not None:
                self.sink.close()
            if self.writer is not None:
                self.writer.flush()
            if self.sensor is not None:
                self.sensor.close()
        return 0

    def _check_drops(self) -> None:
        assert self.sensor is not None and self.pipeline is not None
        drops = self.sensor.kernel_drops()
        if self.health is not None:
            # Every loss, eviction and read failure is an alert too (agent.health), not only a log line.
            self.health.observe(
                {
                    **drops,
                    "decode_errors": self.pipeline.decode_errors,
                    "evicted_live": self.pipeline.table.evicted_live,
                },
                time.clock_gettime_ns(time.CLOCK_BOOTTIME),
            )
        if any(v > self._last_drops.get(k, 0) for k, v in drops.items()):
            new = {k: v - self._last_drops.get(k, 0) for k, v in drops.items() if v != self._last_drops.get(k, 0)}
            log.warning(
                "events_lost",
                where="kernel",
                new=new,
                total=drops,
                hint="raise sensor.ringbuf_pages (net_ringbuf_pages for net_ringbuf_full, "
                "file_ringbuf_pages for file_ringbuf_full), or the agent is starved of CPU",
            )
            self._last_drops = drops

    def log_stats(self, final: bool = False) -> None:
        """The periodic stats line: event counts, losses (kernel and userspace), table size."""
        assert self.pipeline is not None and self.sensor is not None
        stats = self.pipeline.stats()
        detection = {**self.pipeline.detection_stats(), **(self.sink.stats() if self.sink else {})}
        if self.responder is not None:
            detection.update(self.responder.stats())
        log.info(
            "stats",
            final=final,
            **stats,
            **detection,
            kernel_drops=self.sensor.kernel_drops(),
            userspace_drops=stats["decode_errors"],
            recorded=self.writer.written if self.writer else None,
        )


def load_sigma_dirs(directories: list[str]) -> SigmaRules | None:
    """The Sigma rules of ``detection.sigma_dirs`` (None when there are none). Invalid rules raise RuleErrors;
    rules chainwatch cannot evaluate are logged, in one line, with file, line and reason."""
    if not directories:
        return None
    missing = sigma_missing()
    if missing is not None:
        raise ConfigError(f"detection.sigma_dirs = {directories}: {missing}")
    from agent.sigma import load_sigma

    sigma = load_sigma(directories)
    if sigma.unsupported:
        log.warning(
            "sigma_rules_unsupported",
            count=len(sigma.unsupported),
            loaded=len(sigma.rules),
            hint="run `chainwatch rules check --sigma DIR` for the list",
            rules=[str(p) for p in sigma.unsupported],
        )
    return sigma


def dump_event(out: IO[str]) -> Consumer:
    """A consumer printing each event as one JSON line (replay --dump)."""
    import json

    def write(event: Event) -> None:
        out.write(json.dumps(event.to_dict(), separators=(",", ":")) + "\n")

    return write
