"""Checks of the namespace lab itself (tests/helpers/netlab.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers.netlab import NetLab
from tests.helpers.polling import wait_until


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=False, capture_output=True, text=True, timeout=10)


def _gone(pid: int) -> bool:
    return wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=5.0)


@pytest.mark.parametrize("family", [4, 6])
def test_tcp_victim_to_attacker_listener(netlab: NetLab, family: int) -> None:
    """Victim connects to an attacker TCP listener; bytes flow both ways."""
    dst = netlab.attacker_ip4 if family == 4 else netlab.attacker_ip6
    src = netlab.victim_ip4 if family == 4 else netlab.victim_ip6
    port = netlab.port()
    listener = netlab.listen_tcp(netlab.attacker_ns, port, family=family, payload=b"hello victim\n", duration=10)
    res = netlab.connect_tcp(netlab.victim_ns, dst, port, b"hello attacker\n", timeout=5)
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"hello victim\n"
    assert listener.wait(timeout=10) == b"hello attacker\n"
    assert listener.peers and listener.peers[0][0] == src
    assert listener.timed_out is False


@pytest.mark.parametrize("family", [4, 6])
def test_udp_datagram_arrives(netlab: NetLab, family: int) -> None:
    """A UDP datagram from the victim reaches an attacker receiver."""
    dst = netlab.attacker_ip4 if family == 4 else netlab.attacker_ip6
    port = netlab.port()
    listener = netlab.listen_udp(netlab.attacker_ns, port, family=family, duration=10)
    res = netlab.send_udp(netlab.victim_ns, dst, port, b"ping-udp")
    assert res.returncode == 0, res.stderr
    assert listener.wait(timeout=10) == b"ping-udp"
    assert listener.chunks == [b"ping-udp"]


def test_no_default_route(netlab: NetLab) -> None:
    """Neither namespace has an IPv4 or IPv6 default route."""
    for ns in (netlab.victim_ns, netlab.attacker_ns):
        for fam in ("-4", "-6"):
            res = _ip("-n", ns, fam, "route", "show", "default")
            assert res.returncode == 0, res.stderr
            assert res.stdout.strip() == "", f"{ns} {fam}: {res.stdout}"
        # The lab subnet itself is routed (so the check above is not vacuous).
        assert netlab.net4 in _ip("-n", ns, "-4", "route", "show").stdout


def test_outside_address_unreachable(netlab: NetLab) -> None:
    """A connect from the victim to an outside address fails with Network is unreachable: there is no route out."""
    res = netlab.connect_tcp(netlab.victim_ns, netlab.outside_ip4, netlab.port(), b"x", timeout=5)
    assert res.returncode == 1
    assert b"Network is unreachable" in res.stderr


def test_spawn_pid_is_command_in_namespace(netlab: NetLab) -> None:
    """spawn() returns the command's own pid, running inside the lab namespace."""
    proc = netlab.spawn(netlab.victim_ns, ["sleep", "30"])
    wait_until(
        lambda: Path(f"/proc/{proc.pid}/comm").read_text().strip() == "sleep",
        "ip netns exec to exec sleep",
        timeout=5,
        interval=0.02,
    )
    ns_ino = os.stat(f"/run/netns/{netlab.victim_ns}").st_ino
    assert os.stat(f"/proc/{proc.pid}/ns/net").st_ino == ns_ino
    assert proc.pid in netlab.pids


def test_run_timeout_kills_command(netlab: NetLab) -> None:
    """run() enforces its timeout and leaves no process behind."""
    with pytest.raises(subprocess.TimeoutExpired):
        netlab.run(netlab.victim_ns, ["sleep", "30"], timeout=1)
    assert netlab.pids == []


def test_close_removes_everything(netlab: NetLab) -> None:
    """close() kills spawned and stray processes and removes namespaces and veth."""
    procs = [netlab.spawn(ns, ["sleep", "60"]) for ns in (netlab.victim_ns, netlab.attacker_ns)]
    # A detached grandchild the lab never saw directly: must be swept too.
    res = netlab.run(
        netlab.victim_ns,
        ["sh", "-c", "setsid sleep 60 >/dev/null 2>&1 </dev/null & echo $!"],
    )
    stray = int(res.stdout)
    listener = netlab.listen_tcp(netlab.attacker_ns, netlab.port(), duration=30)
    pids = [p.pid for p in procs] + [stray, listener.pid]
    assert all(Path(f"/proc/{pid}").exists() for pid in pids)

    names = (netlab.victim_ns, netlab.attacker_ns)
    netlab.close()
    netlab.close()  # idempotent

    listed = _ip("netns", "list").stdout
    for ns in names:
        assert ns not in listed
        assert not Path(f"/run/netns/{ns}").exists()
    for pid in pids:
        assert _gone(pid), f"pid {pid} survived close()"
    for ifname in (netlab.victim_if, netlab.attacker_if):
        assert _ip("link", "show", ifname).returncode != 0
    with pytest.raises(RuntimeError):
        netlab.run(netlab.victim_ns, ["true"])
