"""What the message outputs (journald, syslog, webhook) share: reading a spooled line back into the alert,
and the fields every receiver indexes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

import structlog

log = structlog.get_logger()

# chainwatch severity (contracts.md: 21/47/73/99) -> syslog severity (RFC 5424 table 2), which journald's
# PRIORITY also uses: critical -> crit, high -> err, medium -> warning, low -> notice.
SYSLOG_SEVERITY: Final = {99: 2, 73: 3, 47: 4, 21: 5}
DEFAULT_SYSLOG_SEVERITY: Final = 4


def decode_alert(data: bytes, output: str) -> dict[str, Any] | None:
    """The alert of one spooled line; None (logged as dropped) for a line that is not one: sending it again
    and again would block every alert behind it."""
    try:
        alert = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        alert, error = None, str(exc)
    else:
        error = "" if isinstance(alert, dict) else "not a JSON object"
    if error or not isinstance(alert, dict):
        log.error("alert_dropped", output=output, reason=f"the spooled line is not an alert: {error}", bytes=len(data))
        return None
    return alert


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Summary:
    """The fields of an ECS alert that receivers index and people read first."""

    alert_id: str
    rule_id: str
    rule_name: str
    incident_id: str
    severity: str  # low/medium/high/critical
    score: int  # 21/47/73/99
    reason: str
    hostname: str
    timestamp: str
    pid: int | None
    executable: str
    destination: str  # ip:port, or ""
    file_path: str
    context: str  # supply_chain.context, or ""
    techniques: tuple[str, ...]

    @classmethod
    def of(cls, alert: dict[str, Any]) -> Summary:
        """Read it from an ECS alert; fields the alert lacks are empty."""
        event, rule, cw = _dict(alert.get("event")), _dict(alert.get("rule")), _dict(alert.get("chainwatch"))
        process, destination = _dict(alert.get("process")), _dict(alert.get("destination"))
        score = event.get("severity")
        techniques = _dict(_dict(alert.get("threat")).get("technique")).get("id")
        dest = ""
        if destination.get("ip"):
            ip = str(destination["ip"])
            dest = f"[{ip}]:{destination.get('port', '')}" if ":" in ip else f"{ip}:{destination.get('port', '')}"
        return cls(
            alert_id=str(event.get("id") or ""),
            rule_id=str(rule.get("id") or ""),
            rule_name=str(rule.get("name") or ""),
            incident_id=str(_dict(cw.get("incident")).get("id") or ""),
            severity=str(cw.get("severity") or ""),
            score=score if isinstance(score, int) else 0,
            reason=str(event.get("reason") or ""),
            hostname=str(_dict(alert.get("host")).get("hostname") or ""),
            timestamp=str(alert.get("@timestamp") or ""),
            pid=process["pid"] if isinstance(process.get("pid"), int) else None,
            executable=str(process.get("executable") or ""),
            destination=dest,
            file_path=str(_dict(alert.get("file")).get("path") or ""),
            context=str(_dict(alert.get("supply_chain")).get("context") or ""),
            techniques=tuple(str(t) for t in techniques) if isinstance(techniques, list) else (),
        )

    @property
    def syslog_severity(self) -> int:
        """RFC 5424 severity (journald PRIORITY) for this alert."""
        return SYSLOG_SEVERITY.get(self.score, DEFAULT_SYSLOG_SEVERITY)

    @property
    def message(self) -> str:
        """One human line: "chainwatch high: <rule>: <reason>"."""
        head = f"chainwatch {self.severity or 'alert'}: {self.rule_name or 'alert'}"
        return f"{head}: {self.reason}" if self.reason else head
