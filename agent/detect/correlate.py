"""Signals -> incidents -> updates due as alert lines. One attack gives one incident, updated, never a storm.

Grouping (the Datadog seed): a signal from a process in an install or CI context joins the open
incident of that context, keyed by the context root's entity, so a postinstall's reverse shell and
the cron entry its daemonised child writes later are one incident. Outside any context, a signal joins
the open incident of its own process or of its nearest ancestor that has one, so a python one-liner
and the shell it forks onto the socket are one incident.

Severity: the highest rule severity among the incident's signals, raised by what they mean together.
Inside a context, a C2 signal (reverse shell, tunnel, IRC) makes it at least high and persistence or
evasion at least medium. C2 plus persistence makes it critical, inside a context or not: a reverse
shell that then installs a cron entry is a durable foothold wherever it happens.

A new line is written only when an incident opens, its severity rises, it gains a new kind of
signal, or it learns a new destination or a new persistence file (so a decoy shell cannot hide the real
C2 address and a SIEM sees every file written); repeats of the same signal on the same target only count
as suppressed. The alert document itself is built above detection, from the :class:`IncidentUpdate`
(:mod:`agent.alerts`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from agent.context import Context
from agent.detect.signals import Signal
from agent.lineage.identity import ProcessKey
from agent.lineage.table import ProcessTable
from agent.ruleset.rules import Severity

INCIDENT_WINDOW_NS = 600 * 10**9  # an incident stays open this long after its last signal


@dataclass
class Incident:
    """An open incident: its signals so far and what the last line said."""

    id: str
    root: ProcessKey
    context: Context | None = None
    signals: list[Signal] = field(default_factory=list)
    severity: int = 0
    detectors: frozenset[str] = frozenset()
    destinations: frozenset[tuple[str, int]] = frozenset()
    files: frozenset[str] = frozenset()
    last_ktime: int = 0
    suppressed: int = 0


@dataclass(frozen=True)
class IncidentUpdate:
    """An incident whose alert line is due: its signals so far, the one that made the line due, and its context."""

    incident_id: str
    severity: int
    signals: tuple[Signal, ...]
    trigger: Signal
    context: Context | None


def incident_severity(signals: list[Signal], context: Context | None) -> int:
    """The severity of an incident with these signals, in this context (see the module docstring)."""
    score = max(s.rule.severity_score for s in signals)
    families = {s.role for s in signals}
    if context is not None:
        if "c2" in families:
            score = max(score, Severity.high)
        if families & {"persistence", "evasion", "download"}:
            score = max(score, Severity.medium)
    if {"c2", "persistence"} <= families:
        score = Severity.critical
    return int(score)


class Correlator:
    """Groups signals into incidents and decides which produce an alert line."""

    def __init__(self, table: ProcessTable):
        self.table = table
        self._by_process: dict[ProcessKey, Incident] = {}
        self._by_context: dict[ProcessKey, Incident] = {}
        self.suppressed = 0

    def _open(self, incident: Incident | None, now: int) -> Incident | None:
        return incident if incident is not None and now - incident.last_ktime <= INCIDENT_WINDOW_NS else None

    def _find(self, signal: Signal, now: int) -> Incident | None:
        if signal.context is not None:
            return self._open(self._by_context.get(signal.context.root), now)
        key = signal.key
        candidates = [key] + [p.key for p in self.table.ancestry(key)] if key in self.table else [key]
        for k in candidates:
            incident = self._open(self._by_process.get(k), now)
            if incident is not None:
                return incident
        return None

    def add(self, signal: Signal) -> IncidentUpdate | None:
        """Take one signal; returns the incident's update when an alert line is due."""
        now = signal.event.ktime
        incident = self._find(signal, now)
        new = incident is None
        if incident is None:
            root = signal.context.root if signal.context else signal.key
            incident = Incident(id=str(uuid.uuid4()), root=root, context=signal.context)
        if signal.context is not None:
            self._by_context[signal.context.root] = incident
        else:
            self._by_process[signal.key] = incident
        incident.signals.append(signal)
        incident.last_ktime = max(incident.last_ktime, now)
        severity = max(incident.severity, incident_severity(incident.signals, incident.context))
        detectors = incident.detectors | {signal.detector}
        destinations = incident.destinations | ({(signal.daddr, signal.dport)} if signal.daddr else set())
        files = incident.files | ({signal.path} if signal.path else set())
        if not (
            new
            or severity > incident.severity
            or detectors != incident.detectors
            or destinations != incident.destinations
            or files != incident.files
        ):
            incident.suppressed += 1
            self.suppressed += 1
            return None
        incident.severity, incident.detectors = severity, detectors
        incident.destinations, incident.files = destinations, files
        return IncidentUpdate(incident.id, severity, tuple(incident.signals), signal, incident.context)

    def prune(self, now_ktime: int) -> int:
        """Close incidents idle past the window; returns how many links were dropped."""
        dropped = 0
        for index in (self._by_process, self._by_context):
            stale = [k for k, inc in index.items() if now_ktime - inc.last_ktime > INCIDENT_WINDOW_NS]
            for k in stale:
                del index[k]
            dropped += len(stale)
        return dropped
