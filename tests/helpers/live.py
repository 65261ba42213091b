"""What live tests need (root, bcc, tools, modules) and the one way they say it is missing: skipped on a
developer's machine, failed where live tests are required (``make test`` sets CHAINWATCH_REQUIRE_LIVE=1, as CI
and the build machines do: there they must run)."""

from __future__ import annotations

import importlib
import os
import shutil
from typing import NoReturn

import pytest

REQUIRE_LIVE = "CHAINWATCH_REQUIRE_LIVE"


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test with ``reason``, or fail it where live tests are required."""
    if os.environ.get(REQUIRE_LIVE) == "1":
        pytest.fail(f"live test required but cannot run: {reason}")
    pytest.skip(reason)


def require_root(reason: str) -> None:
    if os.geteuid() != 0:
        skip_or_fail(reason)


def require_bcc(
    reason: str = "live sensor tests need the distro's bcc (python3-bpfcc); `make setup` installs it",
) -> None:
    try:
        import bcc  # noqa: F401
    except ImportError:
        skip_or_fail(reason)


def require_module(name: str, reason: str) -> None:
    try:
        importlib.import_module(name)
    except ImportError:
        skip_or_fail(reason)


def require_tools(*tools: str, reason: str | None = None) -> None:
    """Every tool in PATH, or skip_or_fail naming the missing ones."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        skip_or_fail(reason or f"missing tools {missing} (make setup installs them)")


def require_sensor() -> None:
    """What loading the probes needs: root and bcc."""
    require_root("live sensor tests need root to load BPF programs (run `make test` as root)")
    require_bcc()


def require_netlab() -> None:
    """What the namespace lab needs: root, iproute2 and pyroute2."""
    require_root("netlab needs root (network namespaces)")
    require_tools("ip", reason="netlab needs iproute2 'ip' in PATH")
    require_module("pyroute2", "netlab needs pyroute2")
