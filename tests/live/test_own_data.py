"""The agent's own data, end to end: a CI step with every usual credential in its environment opens a reverse
shell; the alert carries the job's labels, and no credential reaches the alerts file or the recording, which
are created 0640 and 0600."""

from __future__ import annotations

import os
import stat
import sys


def test_ci_credentials_never_reach_alerts_or_recording(sensorlab, tmp_path) -> None:
    from tests.helpers.scenarios import Agent, play

    old = os.umask(0o022)  # the modes must come from chainwatch, not from a strict umask
    try:
        agent = Agent([sys.executable, "-m", "agent"], tmp_path / "out")
        verdicts = play(agent, ["ci_step_with_secrets", "benign_http"], tmp_path / "work")
    finally:
        os.umask(old)
    assert all(v.ok for v in verdicts), [(v.name, v.detail) for v in verdicts]
    assert stat.S_IMODE(os.stat(agent.alerts).st_mode) == 0o640
    assert agent.recording is not None and stat.S_IMODE(os.stat(agent.recording).st_mode) == 0o600


def test_agent_refuses_a_world_writable_alerts_directory(sensorlab, tmp_path) -> None:
    """A directory anyone can write is refused at startup with one sentence, and nothing is created there."""
    import subprocess

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--alerts", str(shared / "alerts.jsonl")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "writable by every user" in proc.stderr and "Traceback" not in proc.stderr
    assert not (shared / "alerts.jsonl").exists()
