"""Signals -> incidents -> alert lines. One attack gives one incident, updated, never a storm.

A signal joins the open incident of its own process or of its nearest ancestor that has one, so a
python one-liner and the shell it forks onto the socket are one incident. A new line is written only
when an incident opens, its severity rises, it gains a new kind of signal, or it first learns its
destination; anything else only counts as suppressed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from agent.alerts import Host, build_alert
from agent.detect.signals import Signal
from agent.lineage.identity import ProcessKey
from agent.lineage.table import ProcessTable

INCIDENT_WINDOW_NS = 600 * 10**9  # an incident stays open this long after its last signal


@dataclass
class Incident:
    """An open incident: its signals so far and what the last line said."""

    id: str
    root: ProcessKey
    signals: list[Signal] = field(default_factory=list)
    severity: int = 0
    detectors: frozenset[str] = frozenset()
    has_destination: bool = False
    last_ktime: int = 0
    suppressed: int = 0


class Correlator:
    """Groups signals into incidents and decides which produce an alert line."""

    def __init__(self, table: ProcessTable, host: Host, boot_offset_ns: int):
        self.table = table
        self.host = host
        self.boot_offset_ns = boot_offset_ns
        self._by_process: dict[ProcessKey, Incident] = {}
        self.suppressed = 0

    def _find(self, key: ProcessKey, now: int) -> Incident | None:
        candidates = [key] + [p.key for p in self.table.ancestry(key)] if key in self.table else [key]
        for k in candidates:
            incident = self._by_process.get(k)
            if incident is not None and now - incident.last_ktime <= INCIDENT_WINDOW_NS:
                return incident
        return None

    def add(self, signal: Signal) -> dict[str, Any] | None:
        """Take one signal; returns an alert document when a line is due."""
        now = signal.event.ktime
        incident = self._find(signal.key, now)
        new = incident is None
        if incident is None:
            incident = Incident(id=str(uuid.uuid4()), root=signal.key)
        self._by_process[signal.key] = incident
        incident.signals.append(signal)
        incident.last_ktime = max(incident.last_ktime, now)
        severity = max(incident.severity, signal.rule.severity_score)
        detectors = incident.detectors | {signal.detector}
        destination = incident.has_destination or bool(signal.daddr)
        if not (new or severity > incident.severity or detectors != incident.detectors
                or destination != incident.has_destination):
            incident.suppressed += 1
            self.suppressed += 1
            return None
        incident.severity, incident.detectors, incident.has_destination = severity, detectors, destination
        return build_alert(host=self.host, table=self.table, incident_id=incident.id, severity=severity,
                           signals=incident.signals, trigger=signal, boot_offset_ns=self.boot_offset_ns)

    def prune(self, now_ktime: int) -> int:
        """Close incidents idle past the window; returns how many process links were dropped."""
        stale = [k for k, inc in self._by_process.items() if now_ktime - inc.last_ktime > INCIDENT_WINDOW_NS]
        for k in stale:
            del self._by_process[k]
        return len(stale)
