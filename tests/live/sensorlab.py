"""A running sensor for live tests: real probes, a poll thread, and the same pipeline the daemon uses."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from agent.alerts import Host, boot_to_wall_offset_ns
from agent.assemble import assemble
from agent.events import Event
from agent.lineage.table import ProcessTable
from agent.probes.loader import Sensor, open_sensor
from agent.ruleset.load import default_rules_dir, load_rules
from agent.sigma import load_sigma
from tests.helpers.polling import wait_until

# Sigma rules for the live tests; each matches only its own test's marker (test_sigma_live.py).
SIGMA_DIR = Path(__file__).resolve().parent / "sigma"


class SensorLab:
    """Collects every event the probes (and the pipeline's derived signals) produce, for tests to query."""

    def __init__(self) -> None:
        self.sensor: Sensor = open_sensor()
        self._lock = threading.Lock()
        self.events: list[Event] = []
        self.alerts: list[dict[str, object]] = []
        # A test's response stage (agent.response.Responder), between the correlator and the alert list.
        self.respond: Callable[[dict[str, object]], dict[str, object]] | None = None
        self.pipeline = assemble(
            load_rules(default_rules_dir()),
            ProcessTable(),
            [self._emit],
            host=Host("live-test", "live-test-host"),
            boot_offset_ns=boot_to_wall_offset_ns(),
            kernel=self.sensor,
            module_loads_from_exec=not self.sensor.program.features.module_tracepoints,
            sigma=load_sigma([SIGMA_DIR]),
            exe_identity=True,
            consumers=[self.events.append],
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sensorlab", daemon=True)
        self._thread.start()

    def _emit(self, alert: dict[str, object]) -> None:
        respond = self.respond
        self.alerts.append(respond(alert) if respond is not None else alert)

    def _loop(self) -> None:
        while not self._stop.is_set():
            records = self.sensor.poll(50)
            with self._lock:
                self.pipeline.feed_records(records)

    def mark(self) -> int:
        """A position in the event list; later queries can look only past it."""
        with self._lock:
            return len(self.events)

    def select(self, pred: Callable[[Event], bool], since: int = 0) -> list[Event]:
        """Events past ``since`` that satisfy pred."""
        with self._lock:
            return [e for e in self.events[since:] if pred(e)]

    def wait_for(
        self, pred: Callable[[Event], bool], count: int = 1, since: int = 0, timeout: float = 10.0, settle: float = 0.5
    ) -> list[Event]:
        """Wait until ``count`` matching events arrived (or timeout), then a short settle so extras show up too."""
        wait_until(lambda: len(self.select(pred, since)) >= count, timeout=timeout, interval=0.02)
        time.sleep(settle)
        return self.select(pred, since)

    def alert_mark(self) -> int:
        """A position in the alert list."""
        with self._lock:
            return len(self.alerts)

    def alerts_since(self, since: int, settle: float = 1.0) -> list[dict[str, object]]:
        """Alerts written after ``since``, once the pipeline had time to catch up."""
        time.sleep(settle)
        with self._lock:
            return list(self.alerts[since:])

    def with_table(self, fn: Callable[[ProcessTable], object]) -> object:
        """Run fn on the process table under the lock."""
        with self._lock:
            return fn(self.pipeline.table)

    def close(self) -> None:
        """Stop polling and unload the probes."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.sensor.close()
