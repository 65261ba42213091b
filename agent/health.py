"""Sensor health: every loss, eviction and kernel read failure becomes a "Sensor degraded" alert.

A lost event may be a missed attack, so the loss is reported where the attacks are: through the alert sinks
and the spool, not only in the log (shared/design/contracts.md, "Sensor health"). The first loss raises an
alert at once; later ones are gathered and sent at most once per ``interval_s``, each alert carrying the
counts and the time window it covers under ``chainwatch.sensor``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

from agent.alerts import Host, iso
from agent.ruleset.rules import Severity

RULE_NAME: Final = "Sensor degraded"
RULE_ID: Final = str(uuid.uuid5(uuid.NAMESPACE_URL, "https://chainwatch/rules/sensor-degraded"))
SEVERITY: Final = Severity.high
DEFAULT_INTERVAL_S: Final = 60.0
# What each counter means, for the alert's reason.
WHAT: Final = {
    "ringbuf_full": "process/fd events dropped (ring full)",
    "net_ringbuf_full": "network events dropped (ring full)",
    "file_ringbuf_full": "file events dropped (ring full)",
    "stash_full": "syscalls not followed (stash full)",
    "file_unresolved": "file events not resolved (kernel read failed)",
    "decode_errors": "records rejected by the decoder",
    "evicted_live": "live processes evicted from the process table",
}


class SensorHealth:
    """Turns cumulative loss counters into alerts. ``observe`` is called on the agent's 1 s tick."""

    def __init__(
        self,
        host: Host,
        put: Callable[[dict[str, Any]], None],
        boot_offset_ns: int,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
    ) -> None:
        self.host = host
        self.put = put
        self.boot_offset_ns = boot_offset_ns
        self.interval_ns = int(interval_s * 1e9)
        self.alerts = 0
        self._last: dict[str, int] = {}
        self._pending: dict[str, int] = {}
        self._pending_since = 0
        self._last_alert_ns: int | None = None

    def observe(self, counters: Mapping[str, int], now_ns: int) -> dict[str, Any] | None:
        """Take the current cumulative counters at CLOCK_BOOTTIME ``now_ns``; returns the alert sent, if any."""
        for name, value in counters.items():
            new = value - self._last.get(name, 0)
            self._last[name] = value
            if new > 0:
                if not self._pending:
                    self._pending_since = now_ns
                self._pending[name] = self._pending.get(name, 0) + new
        if not self._pending:
            return None
        if self._last_alert_ns is not None and now_ns - self._last_alert_ns < self.interval_ns:
            return None
        alert = self._alert(dict(self._pending), self._pending_since, now_ns)
        self._pending = {}
        self._last_alert_ns = now_ns
        self.alerts += 1
        self.put(alert)
        return alert

    def _alert(self, counts: dict[str, int], start_ns: int, end_ns: int) -> dict[str, Any]:
        start, end = iso(start_ns + self.boot_offset_ns), iso(end_ns + self.boot_offset_ns)
        parts = ", ".join(f"{n} {WHAT.get(name, name)}" for name, n in sorted(counts.items()))
        return {
            "@timestamp": end,
            "event": {
                "kind": "alert",
                "id": str(uuid.uuid4()),
                "severity": int(SEVERITY),
                "category": ["host"],
                "reason": f"The sensor lost sight of events between {start} and {end}: {parts}. "
                "Attacks in that window may have gone unseen; check what ran then and "
                "raise the ring sizes if this repeats.",
            },
            "rule": {"id": RULE_ID, "name": RULE_NAME, "ruleset": "chainwatch"},
            "host": {"hostname": self.host.hostname, "id": self.host.id},
            "chainwatch": {
                "severity": SEVERITY.name,
                "incident": {"id": str(uuid.uuid4())},
                "signals": ["sensor_degraded"],
                "sensor": {"counts": counts, "total": dict(self._last), "window": {"start": start, "end": end}},
                "response": [],
            },
        }
