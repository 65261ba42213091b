"""journald, syslog and webhook outputs against real receivers the tests start (tests/unit/receivers.py).

Each receiver is down first: every alert is spooled (memory, then the spool file), none is lost; then it
comes up and gets every alert exactly once, in order, followed by the ones sent after. Receivers listen on
127.0.0.1 or on unix sockets in a temporary directory only.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.config import SYSLOG_FACILITIES, Config, ConfigError, WebhookConfig, parse_config
from agent.outputs import build_sink, open_outputs
from agent.outputs.common import Summary
from agent.outputs.journald import JournalOutput, alert_fields, encode_entry
from agent.outputs.syslog import SyslogOutput, format_message, frame
from agent.outputs.webhook import WebhookOutput, read_secret
from agent.sinks import AlertSink, Output, spool_path
from tests.helpers.polling import wait_until
from tests.unit.receivers import (
    HttpsReceiver,
    JournalReceiver,
    Receiver,
    SyslogReceiver,
    make_certificate,
    parse_journal_entry,
    parse_syslog,
    short_tmpdir,
)

SEVERITIES = (21, 47, 73, 99)


def alert(i: int, pad: int = 0) -> dict[str, Any]:
    score = SEVERITIES[i % 4]
    return {
        "@timestamp": f"2026-12-02T10:00:{i % 60:02d}.{i:06d}Z",
        "event": {
            "kind": "alert",
            "id": f"alert-{i}",
            "severity": score,
            "reason": f"bash connected to 198.51.100.2:4444 (#{i})\nwith its stdio on the socket",
            "category": ["process", "network"],
        },
        "rule": {"id": f"rule-{i % 3}", "name": 'Reverse shell "in" [package] install', "ruleset": "chainwatch"},
        "host": {"hostname": "build-7", "id": "h7"},
        "process": {
            "pid": 4000 + i,
            "entity_id": f"e{i}",
            "name": "bash",
            "executable": "/usr/bin/bash",
            "args": ["bash", "-i", "x" * pad],
            "user": {"id": "0"},
        },
        "destination": {"ip": "198.51.100.2", "port": 4444},
        "network": {"transport": "tcp", "type": "ipv4"},
        "threat": {"technique": {"id": ["T1059.004"]}},
        "chainwatch": {
            "severity": {21: "low", 47: "medium", 73: "high", 99: "critical"}[score],
            "incident": {"id": f"inc-{i // 2}"},
            "signals": ["stdio_to_socket"],
            "ancestry": [{"pid": 1, "name": "sshd", "args": ["sshd"]}],
            "response": [],
            "seq": i,
        },
    }


def down_then_up(
    output: Output,
    receiver: Receiver,
    spool_dir: Path,
    seqs: Callable[[], list[int]],
    *,
    down: int = 40,
    after: int = 10,
    memory_spool_bytes: int = 16 * 1024,
) -> AlertSink:
    """Alerts to a down receiver are spooled (past 16 KiB on disk); once it is up it gets them all, once,
    in order, then the later ones. Returns the closed sink (for its stats)."""
    sink = AlertSink(
        [],
        extra=[output],
        spool_dir=spool_dir,
        memory_spool_bytes=memory_spool_bytes,
        retry_min_s=0.02,
        retry_max_s=0.2,
    )
    try:
        for i in range(down):
            sink.put(alert(i))
        wait_until(
            lambda: sink.stats()["alerts_in_spool"] == down and sink.stats()["alert_write_errors"] >= 1,
            "every alert spooled, and a failed attempt, while the receiver is down",
        )
        stats = sink.stats()
        assert stats["alerts_written"] == 0 and stats["alerts_dropped"] == 0
        assert spool_path(spool_dir, output.name).stat().st_size > 0, "past the memory bound, on disk"
        assert receiver.items == []
        receiver.start()
        wait_until(lambda: len(seqs()) >= down, "the spooled alerts to reach the receiver")
        for i in range(down, down + after):
            sink.put(alert(i))
        wait_until(lambda: len(seqs()) >= down + after, "the later alerts")
    finally:
        sink.close()
        receiver.stop()
    assert seqs() == list(range(down + after)), "each alert once, in order"
    assert receiver.errors == []
    stats = sink.stats()
    assert stats["alerts_written"] == down + after and stats["alerts_dropped"] == 0
    assert stats["alerts_spooled"] == stats["alerts_spool_flushed"] >= down
    assert not spool_path(spool_dir, output.name).exists(), "a drained spool leaves no file"
    return sink


@pytest.fixture
def sockdir() -> Iterator[Path]:
    with short_tmpdir() as path:
        yield path


# --- journald ---------------------------------------------------------------------------------------------


def test_journal_native_encoding_round_trips() -> None:
    """KEY=value for plain values, the length-prefixed binary form for values with a newline."""
    entry = encode_entry([("MESSAGE", "one\ntwo"), ("PRIORITY", "3"), ("CHAINWATCH_X", b"\x00bin")])
    assert entry.startswith(b"MESSAGE\n" + struct.pack("<Q", 7) + b"one\ntwo\n")
    assert b"PRIORITY=3\n" in entry
    assert parse_journal_entry(entry) == {"MESSAGE": b"one\ntwo", "PRIORITY": b"3", "CHAINWATCH_X": b"\x00bin"}
    for bad in ("_PID", "lower", "1X", "A" * 65, "A-B"):
        with pytest.raises(ValueError):
            encode_entry([(bad, "v")])


def test_journal_fields_of_an_alert() -> None:
    """PRIORITY follows the severity; the CHAINWATCH_* fields and the whole alert in the chosen format."""
    priorities = {alert(i)["event"]["severity"]: alert_fields(alert(i), "ecs")[1] for i in range(4)}
    assert priorities == {99: ("PRIORITY", "2"), 73: ("PRIORITY", "3"), 47: ("PRIORITY", "4"), 21: ("PRIORITY", "5")}
    fields = dict(alert_fields(alert(2), "ecs"))
    assert fields["SYSLOG_IDENTIFIER"] == "chainwatch"
    assert fields["MESSAGE"].startswith('chainwatch high: Reverse shell "in" [package] install: bash connected')
    assert fields["CHAINWATCH_RULE_ID"] == "rule-2" and fields["CHAINWATCH_INCIDENT_ID"] == "inc-1"
    assert fields["CHAINWATCH_SEVERITY"] == "high" and fields["CHAINWATCH_SEVERITY_SCORE"] == "73"
    assert fields["CHAINWATCH_DESTINATION"] == "198.51.100.2:4444" and fields["CHAINWATCH_TECHNIQUES"] == "T1059.004"
    assert json.loads(fields["CHAINWATCH_ALERT"]) == alert(2)
    ocsf = json.loads(dict(alert_fields(alert(2), "ocsf"))["CHAINWATCH_ALERT"])
    assert ocsf["class_uid"] == 2004 and ocsf["finding_info"]["uid"] == "alert-2"


def journal_seqs(receiver: JournalReceiver) -> list[int]:
    return [json.loads(e["CHAINWATCH_ALERT"])["chainwatch"]["seq"] for e in list(receiver.items)]


def test_journal_down_then_up(sockdir: Path, tmp_path: Path) -> None:
    """No journal socket at first (ENOENT), then the receiver binds it: every alert, once, in order."""
    receiver = JournalReceiver(sockdir / "journal.sock")
    down_then_up(JournalOutput(str(receiver.path)), receiver, tmp_path / "spool", lambda: journal_seqs(receiver))
    entry = receiver.items[3]  # alert 3 is critical
    assert entry["PRIORITY"] == b"2" and entry["SYSLOG_IDENTIFIER"] == b"chainwatch"
    assert entry["MESSAGE"].endswith(b"(#3)\nwith its stdio on the socket")


def test_journal_socket_without_a_reader_then_a_restart(sockdir: Path, tmp_path: Path) -> None:
    """A socket file nobody reads (journald stopped: ECONNREFUSED) spools too; the restarted reader gets all."""
    path = sockdir / "journal.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody behind it
    receiver = JournalReceiver(path)
    original_start = receiver.start

    def start() -> None:
        path.unlink()
        original_start()

    receiver.start = start  # type: ignore[method-assign]
    down_then_up(
        JournalOutput(str(path)),
        receiver,
        tmp_path / "spool",
        lambda: journal_seqs(receiver),
        down=10,
        after=5,
        memory_spool_bytes=2048,
    )


def test_journal_large_entry_goes_by_memfd(sockdir: Path) -> None:
    """An entry larger than a datagram can carry is sent as a sealed memfd, like sd_journal_send does."""
    receiver = JournalReceiver(sockdir / "journal.sock")
    receiver.start()
    output = JournalOutput(str(receiver.path))
    try:
        big = alert(1, pad=4 << 20)
        line = (json.dumps(big, separators=(",", ":")) + "\n").encode()
        assert output.write(line) == len(line)
        wait_until(lambda: len(receiver.items) == 1, "the memfd entry")
    finally:
        output.close()
        receiver.stop()
    assert output.memfd_sends == 1 and receiver.memfd_entries == 1
    assert json.loads(receiver.items[0]["CHAINWATCH_ALERT"]) == big


# --- syslog ---------------------------------------------------------------------------------------------


def test_rfc5424_message() -> None:
    """PRI = facility * 8 + severity; header fields; escaped structured data; the alert as JSON body."""
    message = format_message(alert(3), facility=SYSLOG_FACILITIES["authpriv"], fmt="ecs", procid=77)
    assert message.startswith(b"<82>1 2026-12-02T10:00:03.000003Z build-7 chainwatch 77 alert [chainwatch@32473 ")
    parsed = parse_syslog(message)
    assert parsed["pri"] == 10 * 8 + 2  # authpriv, crit (severity 99)
    assert parsed["params"]["rule_name"] == 'Reverse shell "in" [package] install'
    assert b'rule_name="Reverse shell \\"in\\" [package\\] install"' in message
    assert parsed["params"]["incident_id"] == "inc-1" and parsed["params"]["score"] == "99"
    assert parsed["body"] == alert(3)
    assert parse_syslog(format_message(alert(0), facility=16, fmt="ocsf"))["body"]["class_uid"] == 2004
    assert {parse_syslog(format_message(alert(i), facility=1, fmt="ecs"))["pri"] for i in range(4)} == {13, 12, 11, 10}
    assert frame(b"abc") == b"3 abc"


def test_rfc5424_datagram_cut_says_so() -> None:
    """A message larger than a datagram is cut to fit and marked truncated="true"."""
    message = format_message(alert(1, pad=100_000), facility=1, fmt="ecs", max_bytes=65507)
    assert len(message) == 65507 and b'truncated="true"' in message


def syslog_seqs(receiver: SyslogReceiver) -> list[int]:
    return [m["body"]["chainwatch"]["seq"] for m in list(receiver.items)]


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls", "unix", "unix-stream"])
def test_syslog_down_then_up(transport: str, sockdir: Path, tmp_path: Path) -> None:
    """Collector down (refused), then up: every alert once, in order, on each transport."""
    tls = make_certificate(tmp_path) if transport == "tls" else None
    receiver = SyslogReceiver(transport, path=sockdir / "log.sock", tls=tls)
    output = SyslogOutput(
        "unix" if transport.startswith("unix") else transport,
        receiver.address,
        ca_file=str(tls[0]) if tls else "",
        timeout_s=2.0,
    )
    down_then_up(output, receiver, tmp_path / "spool", lambda: syslog_seqs(receiver))
    if transport in ("tcp", "tls", "unix-stream"):
        assert receiver.connections == 1, "one connection once the collector is up"
    first = receiver.items[0]
    assert first["app"] == "chainwatch" and first["sd_id"] == "chainwatch@32473"
    assert first["pri"] == 10 * 8 + 5 and first["params"]["alert_id"] == "alert-0"


def test_syslog_tcp_collector_restart_loses_nothing(tmp_path: Path) -> None:
    """Up, then the collector restarts (its connection ends): the next alert goes on a new connection after
    the restart instead of into the dead one."""
    receiver = SyslogReceiver("tcp")
    receiver.start()
    sink = AlertSink(
        [],
        extra=[SyslogOutput("tcp", receiver.address, timeout_s=2.0)],
        spool_dir=tmp_path / "spool",
        retry_min_s=0.02,
        retry_max_s=0.2,
    )
    try:
        for i in range(5):
            sink.put(alert(i))
        wait_until(lambda: len(receiver.items) == 5, "the first alerts")
        receiver.stop()
        for i in range(5, 15):
            sink.put(alert(i))
        wait_until(lambda: sink.stats()["alerts_in_spool"] == 10, "the alerts spooled while it is down")
        receiver.start()
        wait_until(lambda: len(receiver.items) >= 15, "the spooled alerts after the restart")
    finally:
        sink.close()
        receiver.stop()
    assert syslog_seqs(receiver) == list(range(15))
    assert receiver.connections == 2


def test_syslog_tls_refuses_an_unknown_certificate(tmp_path: Path) -> None:
    """TLS verifies the collector: a certificate no configured CA signed is a failed send, and the alert
    stays spooled rather than going to an unverified peer."""
    receiver = SyslogReceiver("tls", tls=make_certificate(tmp_path))
    other_ca = make_certificate(tmp_path, "other")[0]
    receiver.start()
    output = SyslogOutput("tls", receiver.address, ca_file=str(other_ca), timeout_s=2.0)
    try:
        with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
            output.write((json.dumps(alert(1)) + "\n").encode())
    finally:
        output.close()
        receiver.stop()
    assert receiver.items == []


# --- webhook ----------------------------------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    return make_certificate(tmp_path)


def webhook_seqs(receiver: HttpsReceiver) -> list[int]:
    return [doc["chainwatch"]["seq"] for batch in list(receiver.items) for doc in batch]


def test_webhook_down_then_up_in_batches(certificate: tuple[Path, Path], tmp_path: Path) -> None:
    """Endpoint down, then up: every alert once, in order, in batches of at most batch_max, with the auth
    header read from its file."""
    secret = tmp_path / "token"
    secret.write_text("Bearer s3cret\n")
    secret.chmod(0o600)
    receiver = HttpsReceiver(*certificate)
    config = WebhookConfig(
        enabled=True, url=receiver.url, ca_file=str(certificate[0]), auth_header_file=str(secret), batch_max=8
    )
    output = WebhookOutput.from_config(config)
    down_then_up(output, receiver, tmp_path / "spool", lambda: webhook_seqs(receiver), down=60, after=10)
    sizes = [len(batch) for batch in receiver.items]
    assert max(sizes) == 8 and len(sizes) < 70, f"batched: {sizes}"
    assert all(h["Authorization"] == "Bearer s3cret" for h in receiver.headers)
    assert receiver.headers[0]["Content-Type"] == "application/json"
    assert receiver.headers[0]["X-Chainwatch-Batch"] == "alert-0..alert-7;8"


def test_webhook_refusals_are_retried_in_order(certificate: tuple[Path, Path], tmp_path: Path) -> None:
    """An endpoint answering 503 fails the batch: it is retried with backoff, nothing is lost or reordered,
    and the log names the status."""
    receiver = HttpsReceiver(*certificate)
    receiver.status = 503
    receiver.start()
    output = WebhookOutput(receiver.url, ca_file=str(certificate[0]), fmt="ocsf", batch_max=5)
    with capture_logs() as logs:
        sink = AlertSink([], extra=[output], retry_min_s=0.02, retry_max_s=0.1)
        try:
            for i in range(12):
                sink.put(alert(i))
            wait_until(lambda: receiver.refused >= 3, "a few refused attempts")
            receiver.status = 200
            wait_until(lambda: sum(len(b) for b in receiver.items) >= 12, "the alerts once it accepts")
        finally:
            sink.close()
            receiver.stop()
    uids = [doc["finding_info"]["uid"] for batch in receiver.items for doc in batch]
    assert uids == [f"alert-{i}" for i in range(12)]
    assert receiver.headers[0]["X-Chainwatch-Format"] == "ocsf"
    spooled = [e for e in logs if e["event"] == "alerts_spooled"]
    assert spooled and "HTTP 503" in spooled[0]["reason"]


def test_webhook_verifies_tls_by_default(certificate: tuple[Path, Path]) -> None:
    """Without the test CA (system CAs only) the self-signed endpoint is refused; nothing is posted."""
    receiver = HttpsReceiver(*certificate)
    receiver.start()
    output = WebhookOutput(receiver.url)
    try:
        with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
            output.write_batch([(json.dumps(alert(1)) + "\n").encode()])
    finally:
        output.close()
        receiver.stop()
    assert receiver.items == []


def test_webhook_secret_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The secret comes from a file or an environment variable; missing or empty stops startup clearly."""
    monkeypatch.setenv("CW_TEST_TOKEN", "Bearer from-env")
    assert read_secret(WebhookConfig(auth_header_env="CW_TEST_TOKEN")) == "Bearer from-env"
    assert read_secret(WebhookConfig()) is None
    with pytest.raises(ConfigError, match="CW_MISSING"):
        read_secret(WebhookConfig(auth_header_env="CW_MISSING"))
    with pytest.raises(ConfigError, match="cannot read"):
        read_secret(WebhookConfig(auth_header_file=str(tmp_path / "absent")))


# --- config and wiring ----------------------------------------------------------------------------------


def test_outputs_config_keys_and_errors() -> None:
    """The [outputs.*] tables parse; bad values and unknown keys are errors that name the key."""
    config = parse_config(
        '[outputs.syslog]\nenabled = true\ntransport = "tcp"\naddress = "[2001:db8::1]:6514"\n'
        'facility = "local3"\nformat = "ocsf"\n[outputs.webhook]\nbatch_max = 7\n'
    )
    assert config.outputs.syslog.address == "[2001:db8::1]:6514" and config.outputs.syslog.format == "ocsf"
    assert config.outputs.webhook.batch_max == 7 and not config.outputs.webhook.enabled
    bad = {
        '[outputs.journald]\nformat = "xml"\n': "outputs.journald.format",
        '[outputs.syslog]\ntransport = "carrier-pigeon"\n': "outputs.syslog.transport",
        '[outputs.syslog]\nenabled = true\ntransport = "udp"\naddress = "collector"\n': "outputs.syslog.address",
        '[outputs.syslog]\nenabled = true\naddress = "relative/log"\n': "outputs.syslog.address",
        "[outputs.syslog]\ntimeout_s = 0\n": "outputs.syslog.timeout_s",
        '[outputs.webhook]\nenabled = true\nurl = "http://198.51.100.9/a"\n': "https://",
        '[outputs.webhook]\nauth_header_file = "/a"\nauth_header_env = "B"\n': "not both",
        "[outputs.webhook]\nbatch_max = 0\n": "outputs.webhook.batch_max",
        '[outputs.webhook]\nauth_header = "X Bad:"\n': "outputs.webhook.auth_header",
        '[outputs.webhook]\nurl_typo = "x"\n': "unknown key outputs.webhook.'url_typo'",
        '[detection]\nalerts_format = "cef"\n': "detection.alerts_format",
    }
    for text, message in bad.items():
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
            parse_config(text)


def test_build_sink_wires_every_enabled_output(sockdir: Path, tmp_path: Path) -> None:
    """The daemon's sink: files plus each enabled output, named by URL; the default config opens none."""
    assert open_outputs(Config().outputs) == []
    config = parse_config(
        f'[detection]\nalerts = ["{tmp_path}/a.jsonl"]\nspool_dir = "{tmp_path}/spool"\n'
        f'[outputs.journald]\nenabled = true\nsocket = "{sockdir}/j.sock"\n'
        f'[outputs.syslog]\nenabled = true\naddress = "{sockdir}/log.sock"\n'
    )
    journal = JournalReceiver(sockdir / "j.sock")
    journal.start()
    sink = build_sink(config)
    try:
        assert sink.names == [
            f"{tmp_path}/a.jsonl",
            f"journald://{sockdir}/j.sock",
            f"syslog+unix://{sockdir}/log.sock",
        ]
        sink.put(alert(1))
        wait_until(lambda: len(journal.items) == 1, "the journal entry")
        wait_until(lambda: sink.stats()["alerts_in_spool"] == 1, "the syslog alert spooled (no socket)")
    finally:
        sink.close()
        journal.stop()
    assert spool_path(tmp_path / "spool", f"syslog+unix://{sockdir}/log.sock").exists(), "kept for the next run"
    assert json.loads((tmp_path / "a.jsonl").read_text()) == alert(1)


def test_summary_of_an_empty_alert() -> None:
    """A document missing every field still summarises (empty strings), never raises."""
    s = Summary.of({})
    assert s.message == "chainwatch alert: alert" and s.syslog_severity == 4 and s.pid is None


def test_unreadable_spooled_line_is_dropped_not_retried_forever(sockdir: Path) -> None:
    """A line that is not an alert (a damaged spool) is logged as dropped; it does not block the rest."""
    receiver = JournalReceiver(sockdir / "journal.sock")
    receiver.start()
    output = JournalOutput(str(receiver.path))
    with capture_logs() as logs:
        assert output.write(b"{not json\n") == len(b"{not json\n")
    output.close()
    receiver.stop()
    assert [e["event"] for e in logs] == ["alert_dropped"] and receiver.items == []
    assert os.path.exists(sockdir)


def test_webhook_down_at_shutdown_keeps_the_spool_for_the_next_run(
    certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    """Still down at shutdown: the alerts stay in the spool file (a failing network output gets no last try
    that could outlast the stop);
    the next run sends them first, then its own."""
    receiver = HttpsReceiver(*certificate)
    spool_dir = tmp_path / "spool"

    def sink() -> AlertSink:
        output = WebhookOutput(receiver.url, ca_file=str(certificate[0]), timeout_s=2.0)
        return AlertSink([], extra=[output], spool_dir=spool_dir, retry_min_s=0.02, retry_max_s=0.1)

    first = sink()
    for i in range(5):
        first.put(alert(i))
    wait_until(lambda: first.stats()["alerts_in_spool"] == 5, "the alerts spooled")
    errors_before = first.stats()["alert_write_errors"]
    first.close()
    assert first.stats()["alert_write_errors"] <= errors_before + 1
    assert spool_path(spool_dir, receiver.url).stat().st_size > 0
    receiver.start()
    second = sink()
    try:
        second.put(alert(5))
        wait_until(lambda: len(webhook_seqs(receiver)) >= 6, "the kept alerts and the new one")
    finally:
        second.close()
        receiver.stop()
    assert webhook_seqs(receiver) == list(range(6))
    assert not spool_path(spool_dir, receiver.url).exists()
