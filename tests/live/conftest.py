"""Shared fixtures for live tests (run as root on a real kernel); every test collected here is marked live."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.helpers.live import require_netlab, require_sensor

if TYPE_CHECKING:
    from tests.helpers.netlab import NetLab
    from tests.live.sensorlab import SensorLab

LIVE_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The live marker on every test under tests/live, so `-m "not live"` leaves out exactly this tier."""
    for item in items:
        if LIVE_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.live)


@pytest.fixture
def netlab() -> Iterator[NetLab]:
    """A fresh victim/attacker namespace lab (tests/helpers/netlab.py); always torn down."""
    require_netlab()
    from tests.helpers.netlab import NetLab  # imported only after the checks: it needs pyroute2

    lab = NetLab()
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="session")
def sensorlab() -> Iterator[SensorLab]:
    """One loaded sensor for the whole session (compiling takes seconds); unloaded at the end."""
    require_sensor()
    from tests.live.sensorlab import SensorLab  # imported only after the checks: it needs bcc

    lab = SensorLab()
    try:
        yield lab
    finally:
        lab.close()
