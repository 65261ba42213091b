"""The one poll loop of the tests: wait for a condition, bounded."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    check: Callable[[], T],
    what: str | None = None,
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    detail: Callable[[], object] | None = None,
) -> T:
    """Call ``check`` every ``interval`` seconds until it returns a true value or ``timeout`` seconds have
    passed; return its last value. With ``what``, running out of time fails ("gave up waiting for WHAT", and
    ``detail()`` when given). The bound only stops a hang: tests never assert how long anything took."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() >= end:
            break
        time.sleep(interval)
    if not value and what is not None:
        # AssertionError, not pytest.fail: scenarios.py runs this outside pytest too.
        raise AssertionError(f"gave up waiting for {what}" + (f": {detail()}" if detail is not None else ""))
    return value
