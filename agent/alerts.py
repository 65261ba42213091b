"""Alert documents (ECS field names, nested) as shared/design/contracts.md defines them."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from agent.context import Context, attribution
from agent.detect.signals import Signal
from agent.lineage.identity import ProcessKey, entity_id
from agent.lineage.table import Process, ProcessTable

SEVERITY_NAMES = {21: "low", 47: "medium", 73: "high", 99: "critical"}
CATEGORIES = {"shell_network_connection": ["process", "network"], "interpreter_reverse_shell": ["process", "network"],
              "stdio_to_socket": ["process", "network"], "tunnel_tool": ["process", "network"],
              "irc_connection": ["network"], "persistence_write": ["file"], "runner_tracking_tamper": ["process"],
              "reverse_shell": ["process", "network"], "bind_shell": ["process", "network"],
              "download_execute": ["process", "network"], "c2_beacon": ["process", "network"],
              "fileless_exec": ["process"],
              "sigma_process_creation": ["process"], "sigma_network_connection": ["process", "network"],
              "sigma_file_event": ["file"]}


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
    return {"pid": key.pid, "entity_id": entity_id(host.id, key),
            "name": os.path.basename(exe) if exe else comm, "executable": exe}


def build_alert(*, host: Host, table: ProcessTable, incident_id: str, severity: int, signals: list[Signal],
                trigger: Signal, boot_offset_ns: int, context: Context | None = None) -> dict[str, Any]:
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
        "event": {"kind": "alert", "id": str(uuid.uuid4()), "severity": severity, "reason": trigger.reason,
                  "category": sorted({c for s in signals for c in CATEGORIES.get(s.detector, ["process"])})},
        "rule": {"id": lead.id, "name": lead.name, "ruleset": lead.ruleset},
        "host": {"hostname": host.hostname, "id": host.id},
        "process": process,
        "supply_chain": attribution(table, trigger.key, context),
        "threat": {"technique": {"id": sorted({t for r in rules.values() for t in r.mitre})}},
        "chainwatch": {
            "severity": SEVERITY_NAMES[severity],
            "incident": {"id": incident_id},
            "signals": sorted({s.detector for s in signals}),
            "rules": sorted(r.name for r in rules.values()),
            "ancestry": [{"pid": p.pid, "name": os.path.basename(p.filename) or p.comm, "args": list(p.args)}
                         for p in ancestry],
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
