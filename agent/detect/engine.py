"""Detection as a pipeline consumer: event -> detectors -> correlator -> alert out."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.alerts import Host
from agent.detect.correlate import Correlator
from agent.detect.detectors import Detectors
from agent.detect.exeid import ExeIdentity
from agent.events import Event
from agent.lineage.table import ProcessTable
from agent.ruleset.rules import RuleSet

if TYPE_CHECKING:
    from agent.sigma import SigmaDetector, SigmaRules


class DetectionEngine:
    """Call it with every event (after the process table saw it); alerts go to ``emit``."""

    def __init__(self, rules: RuleSet, table: ProcessTable, host: Host, emit: Callable[[dict[str, Any]], None],
                 boot_offset_ns: int, sigma: SigmaRules | None = None, exe_identity: ExeIdentity | None = None):
        self.detectors = Detectors(rules, table, exe_identity)
        # Loaded Sigma rules (agent/sigma) are one more source of signals, correlated like the rest.
        self.sigma: SigmaDetector | None = None
        if sigma is not None and sigma.rules:
            from agent.sigma import SigmaDetector
            self.sigma = SigmaDetector(sigma, table)
        self.correlator = Correlator(table, host, boot_offset_ns)
        self.emit = emit
        self.signals = 0
        self.alerts = 0

    def __call__(self, event: Event) -> None:
        signals = self.detectors(event)
        if self.sigma is not None:
            signals = [*signals, *self.sigma(event)]
        for signal in signals:
            self.signals += 1
            alert = self.correlator.add(signal)
            if alert is not None:
                self.alerts += 1
                self.emit(alert)

    def prune(self, now_ktime: int) -> None:
        """Close expired windows and incidents."""
        self.detectors.prune(now_ktime)
        self.correlator.prune(now_ktime)

    def stats(self) -> dict[str, int]:
        """Counters for the stats line."""
        stats = {"signals": self.signals, "alerts": self.alerts, "alerts_suppressed": self.correlator.suppressed}
        if self.sigma is not None:
            stats.update(sigma_matches=self.sigma.matches, sigma_rule_errors=self.sigma.errors)
        return stats
