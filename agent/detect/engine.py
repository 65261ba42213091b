"""Detection as a pipeline consumer: event -> signal sources -> correlator -> incident updates out.

The native detectors are always a source; more sources (the loaded Sigma rules, agent/sigma) are handed in.
What an update becomes (the alert document, agent.alerts) is decided above detection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from agent.detect.correlate import Correlator, IncidentUpdate
from agent.detect.detectors import Detectors
from agent.detect.exeid import ExeIdentity
from agent.detect.signals import Signal
from agent.events import Event
from agent.lineage.table import ProcessTable
from agent.ruleset.rules import RuleSet


class SignalSource(Protocol):
    """More signals for each event (after the process table saw it), correlated like the native detectors'."""

    def __call__(self, event: Event) -> list[Signal]: ...

    def stats(self) -> dict[str, int]: ...


class DetectionEngine:
    """Call it with every event (after the process table saw it); incident updates go to ``emit``."""

    def __init__(
        self,
        rules: RuleSet,
        table: ProcessTable,
        emit: Callable[[IncidentUpdate], None],
        *,
        sources: Sequence[SignalSource] = (),
        exe_identity: ExeIdentity | None = None,
    ):
        self.detectors = Detectors(rules, table, exe_identity)
        self.sources = list(sources)
        self.correlator = Correlator(table)
        self.emit = emit
        self.signals = 0
        self.alerts = 0

    def __call__(self, event: Event) -> None:
        signals = self.detectors(event)
        for source in self.sources:
            signals = [*signals, *source(event)]
        for signal in signals:
            self.signals += 1
            update = self.correlator.add(signal)
            if update is not None:
                self.alerts += 1
                self.emit(update)

    def prune(self, now_ktime: int) -> None:
        """Close expired windows and incidents."""
        self.detectors.prune(now_ktime)
        self.correlator.prune(now_ktime)

    def stats(self) -> dict[str, int]:
        """Counters for the stats line."""
        stats = {"signals": self.signals, "alerts": self.alerts, "alerts_suppressed": self.correlator.suppressed}
        for source in self.sources:
            stats.update(source.stats())
        return stats
