"""Alert documents as tests read them: grouped into incidents, tied to a process tree, summarised for a failure
message, and waited for on the session's sensor."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tests.helpers.polling import wait_until

Alert = dict[str, Any]


def incidents(alerts: Iterable[Mapping[str, Any]]) -> dict[str, list[Alert]]:
    """Alert lines grouped by chainwatch.incident.id, in arrival order."""
    out: dict[str, list[Alert]] = {}
    for a in alerts:
        out.setdefault(a["chainwatch"]["incident"]["id"], []).append(dict(a))
    return out


def tagged(command: str) -> tuple[str, str]:
    """``command`` with a unique marker comment, and the marker: the sensor is host-wide, so a test looks only at
    alerts whose process or ancestry carries its marker (the bash -c argv is in every descendant's ancestry)."""
    token = f"cw-test-{uuid.uuid4().hex[:12]}"
    return f"{command} # {token}", token


def mine(alerts: Iterable[Mapping[str, Any]], token: str) -> list[Alert]:
    """The alerts whose process or an ancestor carries ``token`` in its argv (see tagged)."""
    return [dict(a) for a in alerts if token in json.dumps([a["process"].get("args"), a["chainwatch"]["ancestry"]])]


def tree_pids(events: Iterable[Any], root: int) -> set[int]:
    """Pids of ``root`` and every process it created, from the sensor's fork events (in order; the fork
    records the creator, so daemons re-parented to init still count)."""
    pids = {root}
    for e in events:
        if getattr(e, "type", "") == "fork" and e.ppid in pids:
            pids.add(e.pid)
    return pids


def alert_pids(alert: Mapping[str, Any]) -> set[int]:
    """The alert's process and every ancestor it lists."""
    pids = {alert.get("process", {}).get("pid")}
    pids |= {a.get("pid") for a in alert.get("chainwatch", {}).get("ancestry", [])}
    return {p for p in pids if isinstance(p, int)}


def alerts_for(
    alerts: Iterable[Mapping[str, Any]],
    pids: set[int],
    destination: tuple[str, int] | None = None,
    path_prefix: str | None = None,
) -> list[Alert]:
    """Alerts that belong to the tree ``pids`` (their process or an ancestor is in it), or that name our
    own destination or file path. Other test sessions may run attacks on this machine at the same time."""
    out = []
    for a in alerts:
        dest = a.get("destination") or {}
        path = (a.get("file") or {}).get("path") or ""
        if (
            alert_pids(a) & pids
            or (destination is not None and (dest.get("ip"), dest.get("port")) == destination)
            or (path_prefix is not None and path.startswith(path_prefix))
        ):
            out.append(dict(a))
    return out


def summary(alerts: Iterable[Mapping[str, Any]]) -> str:
    """The fields a reader needs to see why an assertion about alerts failed."""
    rows = []
    for a in alerts:
        rows.append(
            json.dumps(
                {
                    "incident": a["chainwatch"]["incident"]["id"][:8],
                    "severity": a["event"]["severity"],
                    "rule": a["rule"]["name"],
                    "signals": a["chainwatch"].get("signals"),
                    "process": [a["process"].get("pid"), a["process"].get("name"), a["process"].get("args")],
                    "destination": a.get("destination"),
                    "file": a.get("file"),
                    "supply_chain": a.get("supply_chain"),
                    "ancestry": [[p.get("pid"), p.get("name")] for p in a["chainwatch"].get("ancestry", [])],
                },
                default=str,
            )
        )
    return "\n".join(rows) or "(no alerts)"


def wait_alerts(
    sensorlab: Any,
    since: int,
    select: Callable[[list[Alert]], list[Alert]],
    done: Callable[[list[Alert]], bool],
    timeout: float = 15.0,
    settle: float = 1.0,
) -> list[Alert]:
    """Poll the sensor's alerts past ``since`` until ``done(select(alerts))`` or ``timeout``; then wait
    ``settle`` seconds more so late updates (escalations, extra lines) show up too, and return the selection."""
    wait_until(lambda: done(select(sensorlab.alerts_since(since, settle=0))), timeout=timeout, interval=0.1)
    return select(sensorlab.alerts_since(since, settle=settle))
