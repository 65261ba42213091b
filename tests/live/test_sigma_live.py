"""Live: a Sigma process_creation rule (tests/live/sigma) fires on a real exec seen by the real probes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.events import Exec
from tests.helpers.polling import wait_until

MARKER = "chainwatch-sigma-live-7f3a"
RULE = "Test - marker exec of true under bash (live)"
RULE_ID = "7c8d9eaf-b0c1-4d2e-9f3a-6b7c8d9eaf09"
SIGMA_DIR = Path(__file__).resolve().parent / "sigma"
CHAINWATCH = [sys.executable, "-m", "agent"]


def _marker_script() -> list[str]:
    # Two execs of true from one bash: one with the marker (the rule fires), one without (it must not).
    return ["bash", "-c", f"echo $$; /bin/true {MARKER}; /bin/true chainwatch-sigma-live-other; exit 0"]


def test_sigma_process_creation_rule_fires_on_a_real_exec(sensorlab) -> None:
    """bash runs `/bin/true MARKER` and `/bin/true other`: both execs reach the sensor, only the first alerts."""
    mark, alert_mark = sensorlab.mark(), sensorlab.alert_mark()
    shell = int(
        subprocess.run(_marker_script(), capture_output=True, text=True, timeout=20, check=True).stdout.split()[0]
    )

    def is_true(e: object) -> bool:
        return isinstance(e, Exec) and e.filename == "/bin/true" and e.ppid == shell

    execs = sensorlab.wait_for(is_true, count=2, since=mark)
    assert len(execs) == 2, "both execs must reach the sensor before the alerts are judged"
    marked = next(e for e in execs if MARKER in e.args)
    alerts = [a for a in sensorlab.alerts_since(alert_mark) if RULE in a["chainwatch"]["rules"]]
    assert len(alerts) == 1, alerts
    alert = alerts[0]
    assert alert["rule"] == {"id": RULE_ID, "name": RULE, "ruleset": "sigma"}
    assert alert["process"]["pid"] == marked.pid
    assert alert["process"]["args"] == ["/bin/true", MARKER]
    assert alert["process"]["parent"]["pid"] == shell and alert["process"]["parent"]["name"] == "bash"
    assert alert["event"]["severity"] == 47 and alert["chainwatch"]["signals"] == ["sigma_process_creation"]
    assert alert["threat"]["technique"]["id"] == ["T1059.004"]


def _wait_for(path: Path, needle: str, timeout: float) -> bool:
    return wait_until(lambda: path.exists() and needle in path.read_text(), timeout=timeout, interval=0.1)


def test_chainwatch_run_with_sigma_dir_alerts_on_a_real_exec(sensorlab, tmp_path: Path) -> None:
    """`chainwatch run --sigma DIR` loads the rule (sensor_ready counts it) and writes its alert for a real exec."""
    log, alerts_file = tmp_path / "run.log", tmp_path / "alerts.jsonl"
    with log.open("w") as err:
        agent = subprocess.Popen(
            [*CHAINWATCH, "run", "--sigma", str(SIGMA_DIR), "--alerts", str(alerts_file)],
            stderr=err,
            stdout=subprocess.DEVNULL,
        )
    try:
        assert _wait_for(log, '"sensor_ready"', 90), log.read_text()
        shell = int(
            subprocess.run(_marker_script(), capture_output=True, text=True, timeout=20, check=True).stdout.split()[0]
        )
        assert _wait_for(alerts_file, MARKER, 10), log.read_text()
        time.sleep(0.5)
    finally:
        agent.send_signal(signal.SIGINT)
        rc = agent.wait(timeout=30)
    assert rc == 0, log.read_text()
    ready = [json.loads(line) for line in log.read_text().splitlines() if '"sensor_ready"' in line]
    assert ready and ready[0]["sigma_rules"] == 1
    alerts = [json.loads(line) for line in alerts_file.read_text().splitlines()]
    ours = [a for a in alerts if RULE in a["chainwatch"]["rules"]]
    assert len(ours) == 1 and ours[0]["process"]["parent"]["pid"] == shell
    assert ours[0]["process"]["args"] == ["/bin/true", MARKER]
