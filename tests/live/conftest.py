"""Shared fixtures for live tests (run as root on a real kernel)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from netlab import NetLab


@pytest.fixture
def netlab() -> Iterator[NetLab]:
    """A fresh victim/attacker namespace lab (see netlab.py); always torn down."""
    if os.geteuid() != 0:
        pytest.skip("netlab needs root (network namespaces)")
    if shutil.which("ip") is None:
        pytest.skip("netlab needs iproute2 'ip' in PATH")
    pytest.importorskip("pyroute2", reason="netlab needs pyroute2")
    from netlab import NetLab  # imported only after the skips

    lab = NetLab()
    try:
        yield lab
    finally:
        lab.close()
