"""vagrant/scenarios/run.py, the Vagrant lab's scenario runner, here in the namespace lab against this
checkout's agent: every attack gives one incident, every benign workload none (after reaching the sensor),
and it leaves the alerts, a recording and the verdicts behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.live

RUNNER = Path(__file__).resolve().parents[2] / "vagrant" / "scenarios" / "run.py"


def test_vagrant_scenarios_pass_in_the_namespace_lab(sensorlab, tmp_path) -> None:
    from scenarios import SCENARIOS

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(RUNNER), "--out", str(out), "--chainwatch",
                           f"{sys.executable} -m agent", "bash_dev_tcp", "benign_http"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    verdicts = json.loads((out / "verdicts.json").read_text())
    assert [v["name"] for v in verdicts] == ["bash_dev_tcp", "benign_http"] and all(v["ok"] for v in verdicts)
    assert (out / "alerts.jsonl").read_text().strip() and (out / "recording.cw").stat().st_size > 0
    assert {s.kind for s in SCENARIOS.values()} == {"attack", "benign"}
