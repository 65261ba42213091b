"""Alert documents (ECS field names, nested) as shared/design/contracts.md defines them.

Built above detection: the correlator says which incident update is due (agent.detect.correlate), and
:class:`AlertBuilder` turns it into the document the sinks write.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from agent.context import Context, attribution
from agent.detect.correlate import IncidentUpdate
from agent.detect.signals import Signal
from agent.lineage.identity import ProcessKey, entity_id
from agent.lineage.table import Process, ProcessTable
from agent.ruleset.catalog import CATEGORIES
from agent.ruleset.rules import Severity


@dataclass(frozen=True)
class Host:
    """The host fields of every alert."""

    hostname: str
    id: str


def boot_to_wall_offset_ns() -> int:
    """Add to a CLOCK_BOOTTIME timestamp to get Unix time."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def iso(ns: int) -> str:
    """RFC 3339 UTC with microseconds."""
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _process_fields(host: Host, proc: Process | None, key: ProcessKey, comm: str) -> dict[str, Any]:
    exe = proc.filename if proc else ""
    return {
        "pid": key.pid,
        "entity_id": entity_id(host.id, key),
        "name": os.path.basename(exe) if exe else comm,
        "executable": exe,
    }


def build_alert(
    *,
    host: Host,
    table: ProcessTable,
    incident_id: str,
    severity: int,
    signals: Sequence[Signal],
    trigger: Signal,
    boot_offset_ns: int,
    context: Context | None = None,
) -> dict[str, Any]:
    """One alert line for an incident, focused on the process of ``trigger``, in install/CI ``context``."""
    proc = table.get(trigger.key)
    process = _process_fields(host, proc, trigger.key, trigger.event.comm)
    process["args"] = list(proc.args) if proc else []
    process["user"] = {"id": str(trigger.event.uid)}
    ancestry = table.ancestry(trigger.key) if proc else []
    if ancestry:
        parent = ancestry[0]
        process["parent"] = _process_fields(host, parent, parent.key, parent.comm)
    # By ruleset and id: a native rule may keep the id of the Sigma rule it adapts (shell-network-connection).
    rules = {(s.rule.ruleset, s.rule.id): s.rule for s in signals}
    lead = max(signals, key=lambda s: s.rule.severity_score).rule
    doc: dict[str, Any] = {
        "@timestamp": iso(trigger.event.ktime + boot_offset_ns),
        "event": {
            "kind": "alert",
            "id": str(uuid.uuid4()),
            "severity": severity,
            "reason": trigger.reason,
            "category": sorted({c for s in signals for c in CATEGORIES.get(s.detector, ("process",))}),
        },
        "rule": {"id": lead.id, "name": lead.name, "ruleset": lead.ruleset},
        "host": {"hostname": host.hostname, "id": host.id},
        "process": process,
        "supply_chain": attribution(table, trigger.key, context),
        "threat": {"technique": {"id": sorted({t for r in rules.values() for t in r.mitre})}},
        "chainwatch": {
            "severity": Severity(severity).name,
            "incident": {"id": incident_id},
            "signals": sorted({s.detector for s in signals}),
            "rules": sorted(r.name for r in rules.values()),
            "ancestry": [
                {"pid": p.pid, "name": os.path.basename(p.filename) or p.comm, "args": list(p.args)} for p in ancestry
            ],
            "event_ktime": trigger.event.ktime,
            # Every C2 endpoint and persistence file of the incident so far, for IOC tracking and cleanup.
            "artifacts": {
                "destinations": sorted({f"{s.daddr}:{s.dport}" for s in signals if s.daddr}),
                "files": sorted({s.path for s in signals if s.path}),
            },
            "response": [],
        },
    }
    if context is not None and "root" in doc["supply_chain"]:
        doc["supply_chain"]["root"]["entity_id"] = entity_id(host.id, context.root)  # the correlation key
    # The trigger's own artefact when it has one: a line written for a new destination or file names it.
    network = trigger if trigger.daddr else next((s for s in reversed(signals) if s.daddr), None)
    if network is not None:
        doc["destination"] = {"ip": network.daddr, "port": network.dport}
        doc["network"] = {"transport": network.transport, "type": network.family}
        if network.direction:
            doc["network"]["direction"] = network.direction
        if network.saddr:
            doc["source"] = {"ip": network.saddr, "port": network.sport}
    path = trigger.path or next((s.path for s in reversed(signals) if s.path), "")
    if path:
        doc["file"] = {"path": path}
    return doc


class AlertBuilder:
    """Turns each incident update that detection emits into its alert document and hands it to ``out``."""

    def __init__(
        self, host: Host, table: ProcessTable, boot_offset_ns: int, out: Callable[[dict[str, Any]], None]
    ) -> None:
        self.host = host
        self.table = table
        self.boot_offset_ns = boot_offset_ns
        self.out = out

    def __call__(self, update: IncidentUpdate) -> None:
        self.out(
            build_alert(
                host=self.host,
                table=self.table,
                incident_id=update.incident_id,
                severity=update.severity,
                signals=update.signals,
                trigger=update.trigger,
                boot_offset_ns=self.boot_offset_ns,
                context=update.context,
            )
        )
