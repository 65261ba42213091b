"""Benign live tests assert silence only after proving the sensor saw their workload: no alert from a sensor
that never saw the workload proves nothing."""

from __future__ import annotations

import os
from typing import Any

from agent.events import Connect, Event, Exec

WAIT = 10.0  # bound on waiting for the workload's events (polling; never asserted as a time)


def assert_sensor_saw(
    sensorlab: Any, since: int, *, exe: str | None = None, argv_has: str | None = None, port: int | None = None
) -> None:
    """Fail unless the session's sensor saw, past event mark ``since``: an exec of a file named ``exe`` and/or
    whose argv contains ``argv_has``, and a connect to ``port`` (when given). Call it before asserting silence."""
    if exe is not None or argv_has is not None:

        def is_workload(e: Event) -> bool:
            return (
                isinstance(e, Exec)
                and (exe is None or os.path.basename(e.filename) == exe)
                and (argv_has is None or argv_has in " ".join(e.args))
            )

        what = " ".join(filter(None, [exe, f"with {argv_has!r} in its argv" if argv_has else None]))
        assert sensorlab.wait_for(is_workload, since=since, timeout=WAIT), f"the sensor never saw the exec of {what}"
    if port is not None:
        assert sensorlab.wait_for(lambda e: isinstance(e, Connect) and e.dport == port, since=since, timeout=WAIT), (
            f"the sensor never saw the connect to port {port}"
        )
