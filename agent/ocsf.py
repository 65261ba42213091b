"""OCSF rendering of an alert: one Detection Finding (class 2004, category Findings) per ECS alert document.

The ECS document (shared/design/contracts.md) stays the agent's own format; this maps it field by field for
SIEMs that take OCSF. The process that triggered the alert is the finding's ``actor.process`` and its first
evidence, with its parent and ancestry; the network peer and the persistence file are evidences of their own.
What OCSF has no attribute for (supply-chain attribution, signals, artifacts, response) is kept under
``unmapped.chainwatch`` so nothing in the alert is lost. Checked against the OCSF schema in
tests/unit/test_ocsf.py.
"""

from __future__ import annotations

import importlib.metadata
import shlex
from datetime import datetime
from typing import Any, Final

OCSF_VERSION: Final = "1.8.0"


def _product_version() -> str:
    try:
        return importlib.metadata.version("chainwatch")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


PRODUCT_VERSION: Final = _product_version()
DETECTION_FINDING: Final = 2004
FINDINGS_CATEGORY: Final = 2
ACTIVITY_CREATE: Final = 1
# chainwatch severities (contracts.md) -> OCSF severity_id and its caption.
SEVERITY_IDS: Final = {21: (2, "Low"), 47: (3, "Medium"), 73: (4, "High"), 99: (5, "Critical")}
FILE_REGULAR: Final = 1
ANALYTIC_RULE: Final = 1
DIRECTION_INBOUND: Final = 1
DIRECTION_OUTBOUND: Final = 2
IP_VERSIONS: Final = {"ipv4": 4, "ipv6": 6}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def epoch_ms(timestamp: Any) -> int:
    """Milliseconds since the epoch from the alert's RFC 3339 UTC ``@timestamp`` (0 when it has none)."""
    if not isinstance(timestamp, str) or not timestamp:
        return 0
    try:
        return int(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return 0


def _file(path: str) -> dict[str, Any]:
    return {"name": path.rsplit("/", 1)[-1] or path, "path": path, "type_id": FILE_REGULAR, "type": "Regular File"}


def _process(proc: dict[str, Any], *, with_lineage: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(proc.get("pid"), int):
        out["pid"] = proc["pid"]
    if proc.get("entity_id"):
        out["uid"] = str(proc["entity_id"])
    if proc.get("name"):
        out["name"] = str(proc["name"])
    executable = proc.get("executable")
    if isinstance(executable, str) and executable:
        out["path"] = executable
        out["file"] = _file(executable)
    args = proc.get("args")
    if isinstance(args, list) and args:
        out["cmd_line"] = shlex.join(str(a) for a in args)
    user = _dict(proc.get("user"))
    if user.get("id") not in (None, ""):
        out["user"] = {"uid": str(user["id"])}
    parent = _dict(proc.get("parent"))
    if parent:
        out["parent_process"] = _process(parent)
    if with_lineage:
        out["ancestry"] = [_ancestor(a) for a in with_lineage]
        out["lineage"] = [str(a.get("name", "")) for a in with_lineage]
    if "pid" not in out and "uid" not in out:
        out["pid"] = 0  # OCSF needs one of them; 0 says "unknown" rather than dropping the process
    return out


def _ancestor(entry: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"pid": entry["pid"] if isinstance(entry.get("pid"), int) else 0}
    if entry.get("name"):
        out["name"] = str(entry["name"])
    args = entry.get("args")
    if isinstance(args, list) and args:
        out["cmd_line"] = shlex.join(str(a) for a in args)
    return out


def _endpoint(value: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if value.get("ip"):
        out["ip"] = str(value["ip"])
    if isinstance(value.get("port"), int):
        out["port"] = value["port"]
    return out


def to_ocsf(alert: dict[str, Any]) -> dict[str, Any]:
    """The OCSF Detection Finding for one ECS alert document."""
    event, rule, cw = _dict(alert.get("event")), _dict(alert.get("rule")), _dict(alert.get("chainwatch"))
    host, proc = _dict(alert.get("host")), _dict(alert.get("process"))
    score = event.get("severity")
    severity_id, severity = SEVERITY_IDS.get(score, (0, "Unknown")) if isinstance(score, int) else (0, "Unknown")
    when = epoch_ms(alert.get("@timestamp"))
    incident = _dict(cw.get("incident")).get("id")
    raw_ancestry = cw.get("ancestry")
    ancestry = [a for a in raw_ancestry if isinstance(a, dict)] if isinstance(raw_ancestry, list) else []
    process = _process(proc, with_lineage=ancestry)

    finding_info: dict[str, Any] = {
        "uid": str(event.get("id") or ""),
        "title": str(rule.get("name") or "chainwatch alert"),
        "created_time": when,
        "analytic": {
            "type_id": ANALYTIC_RULE,
            "type": "Rule",
            "name": str(rule.get("name") or ""),
            **({"uid": str(rule["id"])} if rule.get("id") else {}),
            **({"category": str(rule["ruleset"])} if rule.get("ruleset") else {}),
        },
    }
    if event.get("reason"):
        finding_info["desc"] = str(event["reason"])
    if isinstance(cw.get("signals"), list):
        finding_info["types"] = [str(s) for s in cw["signals"]]
    techniques = _dict(_dict(alert.get("threat")).get("technique")).get("id")
    if isinstance(techniques, list) and techniques:
        finding_info["attacks"] = [{"technique": {"uid": str(t)}} for t in techniques]
    if incident:
        finding_info["related_events_count"] = 1  # this alert; the incident id below groups the rest

    evidences: list[dict[str, Any]] = [{"name": "process", "process": process}]
    destination, source = _dict(alert.get("destination")), _dict(alert.get("source"))
    network = _dict(alert.get("network"))
    if destination or source:
        ingress = network.get("direction") == "ingress"
        connection: dict[str, Any] = {
            "direction_id": DIRECTION_INBOUND if ingress else DIRECTION_OUTBOUND,
            "direction": "Inbound" if ingress else "Outbound",
        }
        if network.get("transport"):
            connection["protocol_name"] = str(network["transport"])
        if network.get("type") in IP_VERSIONS:
            connection["protocol_ver_id"] = IP_VERSIONS[network["type"]]
        net: dict[str, Any] = {"name": "network connection", "connection_info": connection}
        if _endpoint(destination):
            net["dst_endpoint"] = _endpoint(destination)
        if _endpoint(source):
            net["src_endpoint"] = _endpoint(source)
        evidences.append(net)
    path = _dict(alert.get("file")).get("path")
    if isinstance(path, str) and path:
        evidences.append({"name": "file written", "file": _file(path)})

    metadata: dict[str, Any] = {
        "version": OCSF_VERSION,
        "product": {"name": "chainwatch", "vendor_name": "chainwatch", "version": PRODUCT_VERSION},
        "profiles": ["host"],
        "log_name": "alerts",
    }
    if event.get("id"):
        metadata["uid"] = str(event["id"])
    if incident:
        metadata["correlation_uid"] = str(incident)
    if isinstance(alert.get("@timestamp"), str):
        metadata["original_time"] = alert["@timestamp"]

    device: dict[str, Any] = {"type_id": 0, "type": "Unknown"}
    if host.get("hostname"):
        device["hostname"] = str(host["hostname"])
    if host.get("id"):
        device["uid"] = str(host["id"])
    if "hostname" not in device and "uid" not in device:
        device["name"] = "unknown"

    doc: dict[str, Any] = {
        "class_uid": DETECTION_FINDING,
        "class_name": "Detection Finding",
        "category_uid": FINDINGS_CATEGORY,
        "category_name": "Findings",
        "activity_id": ACTIVITY_CREATE,
        "activity_name": "Create",
        "type_uid": DETECTION_FINDING * 100 + ACTIVITY_CREATE,
        "type_name": "Detection Finding: Create",
        "severity_id": severity_id,
        "severity": severity,
        "status_id": 1,
        "status": "New",
        "is_alert": True,
        "time": when,
        "message": str(event.get("reason") or rule.get("name") or ""),
        "metadata": metadata,
        "finding_info": finding_info,
        "actor": {"process": process},
        "device": device,
        "evidences": evidences,
        "unmapped": {"chainwatch": {k: v for k, v in cw.items() if k not in ("ancestry",)}},
    }
    if isinstance(score, int):
        doc["risk_score"] = score
    if "supply_chain" in alert:
        doc["unmapped"]["supply_chain"] = alert["supply_chain"]
    return doc
