"""systemd notifications: READY/STOPPING, and the watchdog ping from the event loop.

With ``WatchdogSec=`` in the unit, systemd sets ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``) and restarts the
service when no ``WATCHDOG=1`` arrives in time: a stopped (SIGSTOP) or wedged agent is restarted instead of
leaving the host silently unwatched. The ping is sent from the read loop itself, so it proves the loop runs.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


def sd_notify(message: str) -> bool:
    """Tell systemd (Type=notify) something, when running under it. Returns whether it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """How often to send WATCHDOG=1 when systemd watches this process (WatchdogSec=): half its timeout, as
    sd_watchdog_enabled(3) advises; None when there is no watchdog (or it is for another process)."""
    env = os.environ if environ is None else environ
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


class Watchdog:
    """Pings systemd's watchdog at half its timeout; does nothing when the watchdog is off or not ours."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        self.interval_s = watchdog_interval_s(environ) or 0.0
        self._next = 0.0
        self.pings = 0

    @property
    def enabled(self) -> bool:
        """True when systemd expects pings from this process."""
        return self.interval_s > 0

    def ping(self, now: float | None = None) -> bool:
        """Send WATCHDOG=1 if it is due; call it on every loop turn. Returns whether one was sent."""
        if not self.enabled:
            return False
        now = time.monotonic() if now is None else now
        if now < self._next:
            return False
        self._next = now + self.interval_s
        try:
            sent = sd_notify("WATCHDOG=1")
        except OSError:
            return False  # systemd went away: nothing to tell
        self.pings += sent
        return sent
