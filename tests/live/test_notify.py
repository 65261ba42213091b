"""Type=notify and WatchdogSec= as systemd sees them: a NOTIFY_SOCKET of the test's own receives READY=1 once
the sensor is up, WATCHDOG=1 from the event loop at half the watchdog timeout, and STOPPING=1 on SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

from agent.sdnotify import watchdog_interval_s


def test_ready_then_watchdog_pings_then_stopping(sensorlab, tmp_path) -> None:
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(1.0)
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000", "PATH": "/usr/bin:/bin"}
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--alerts", str(tmp_path / "a.jsonl")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    got: list[tuple[float, str]] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and sum(m == "WATCHDOG=1" for _, m in got) < 4:
            try:
                got.append((time.monotonic(), sock.recv(4096).decode()))
            except TimeoutError:
                assert agent.poll() is None, agent.stderr.read().decode()[-3000:] if agent.stderr else ""
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0
        while True:
            try:
                got.append((time.monotonic(), sock.recv(4096).decode()))
            except TimeoutError:
                break
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(timeout=10)
        sock.close()
    messages = [m for _, m in got]
    assert messages[0] == "READY=1", messages
    pings = [t for t, m in got if m == "WATCHDOG=1"]
    assert len(pings) >= 4, messages
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    assert max(gaps) < 1.0, gaps  # every 0.5 s for a 1 s watchdog: never a whole timeout of silence
    assert messages[-1] == "STOPPING=1", messages


def test_watchdog_interval_from_the_environment(monkeypatch) -> None:
    import os

    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    monkeypatch.delenv("WATCHDOG_PID")
    assert watchdog_interval_s() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_interval_s() is None
