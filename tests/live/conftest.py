"""Shared fixtures for live tests (run as root on a real kernel)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from netlab import NetLab


def skip_or_fail(reason: str) -> None:
    """Skip a live test with its reason, or fail it where live tests are required (make test sets
    CHAINWATCH_REQUIRE_LIVE=1: on the build machines and in CI they must run)."""
    if os.environ.get("CHAINWATCH_REQUIRE_LIVE") == "1":
        pytest.fail(f"live test required but cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture
def netlab() -> Iterator[NetLab]:
    """A fresh victim/attacker namespace lab (see netlab.py); always torn down."""
    if os.geteuid() != 0:
        skip_or_fail("netlab needs root (network namespaces)")
    if shutil.which("ip") is None:
        skip_or_fail("netlab needs iproute2 'ip' in PATH")
    pytest.importorskip("pyroute2", reason="netlab needs pyroute2")
    from netlab import NetLab  # imported only after the skips

    lab = NetLab()
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="session")
def sensorlab() -> Iterator[object]:
    """One loaded sensor for the whole session (compiling takes seconds); unloaded at the end."""
    if os.geteuid() != 0:
        skip_or_fail("live sensor tests need root to load BPF programs (run `make test` as root)")
    try:
        import bcc  # noqa: F401
    except ImportError:
        skip_or_fail("live sensor tests need the distro's bcc (python3-bpfcc); `make setup` installs it")
    from sensorlab import SensorLab

    lab = SensorLab()
    try:
        yield lab
    finally:
        lab.close()
