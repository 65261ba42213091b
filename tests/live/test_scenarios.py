"""vagrant/scenarios/run.py, the Vagrant lab's scenario runner, here in the namespace lab against this
checkout's agent: every attack gives one incident, every benign workload none (after reaching the sensor),
also as judged from a second agent standing in for the systemd service, and it leaves the alerts, a
recording and the verdicts behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RUNNER = Path(__file__).resolve().parents[2] / "vagrant" / "scenarios" / "run.py"


def test_vagrant_scenarios_pass_in_the_namespace_lab(sensorlab, tmp_path) -> None:
    from tests.helpers.scenarios import SCENARIOS, Agent

    out = tmp_path / "out"
    names = list(SCENARIOS)  # every one, as a Vagrant box runs them
    # The "service": another agent watching the same host, writing its own alerts file.
    with Agent([sys.executable, "-m", "agent"], tmp_path / "service", record=False) as service:
        proc = subprocess.run(
            [
                sys.executable,
                str(RUNNER),
                "--out",
                str(out),
                "--chainwatch",
                f"{sys.executable} -m agent",
                "--service-alerts",
                str(service.alerts),
                *names,
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    verdicts = json.loads((out / "verdicts.json").read_text())
    assert [v["name"] for v in verdicts] == names + [f"service:{n}" for n in names]
    assert all(v["ok"] for v in verdicts), verdicts
    assert (out / "alerts.jsonl").read_text().strip() and (out / "recording.cw").stat().st_size > 0
    assert (out / "service-alerts.jsonl").read_text().strip()
    assert {s.kind for s in SCENARIOS.values()} == {"attack", "benign"}


def test_a_failing_verdict_fails_the_runner(sensorlab, tmp_path) -> None:
    """Judged from a "service" that writes nothing, the attack has no incident: the runner says FAIL, exits 1."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            str(RUNNER),
            "--out",
            str(out),
            "--chainwatch",
            f"{sys.executable} -m agent",
            "--service-alerts",
            str(tmp_path / "silent.jsonl"),
            "bash_dev_tcp",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    assert "PASS bash_dev_tcp" in proc.stdout and "FAIL service:bash_dev_tcp: want one incident" in proc.stdout
