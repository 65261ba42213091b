"""Live sensor-core tests: real probes on this kernel, counted workloads, netns lab for traffic."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.events import Connect, Exec, Exit, FileWrite, Fork, ModuleLoad, SocketDup
from agent.lineage.identity import NS_PER_TICK, start_ticks_from_proc


def run(argv: list[str], timeout: float = 20, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=True, **kw)


def test_23_execs_from_a_shell(sensorlab) -> None:
    """exec of /bin/true 23 times from a shell gives exactly 23 exec events whose ppid is that shell."""
    mark = sensorlab.mark()
    out = run(["bash", "-c", "echo $$; for i in $(seq 23); do /bin/true; done"])
    shell = int(out.stdout.split()[0])

    def is_true(e):
        return isinstance(e, Exec) and e.filename == "/bin/true" and e.ppid == shell

    events = sensorlab.wait_for(is_true, count=23, since=mark)
    assert len(events) == 23
    assert len({e.pid for e in events}) == 23


def test_exec_captures_argv_env_and_process_key(sensorlab) -> None:
    """An exec carries argv, the attribution env vars only, and a start time that keys like /proc/<pid>/stat."""
    mark = sensorlab.mark()
    env = {"PATH": "/usr/bin:/bin", "GITHUB_RUN_ID": "4242", "npm_lifecycle_event": "postinstall", "SECRET": "x"}
    proc = subprocess.Popen(["/bin/sleep", "5", "chainwatch-arg"], env=env)
    try:
        events = sensorlab.wait_for(lambda e: isinstance(e, Exec) and e.pid == proc.pid, since=mark)
        assert len(events) == 1
        e = events[0]
        assert e.filename == "/bin/sleep"
        assert e.args == ("/bin/sleep", "5", "chainwatch-arg")
        assert e.env == {"GITHUB_RUN_ID": "4242", "npm_lifecycle_event": "postinstall"}
        assert e.ppid == os.getpid()
        assert e.start_time // NS_PER_TICK == start_ticks_from_proc(proc.pid)
    finally:
        proc.kill()
        proc.wait(timeout=5)


def test_double_fork_setsid_daemon_keeps_ancestry(sensorlab) -> None:
    """A double-forked setsid daemon's ancestry still reaches the shell that started it."""
    mark = sensorlab.mark()
    script = 'echo $$; ( setsid bash -c "sleep 0.3; exec /bin/true cw-daemon-marker" & ); exit 0'
    shell = int(run(["bash", "-c", script]).stdout.split()[0])
    events = sensorlab.wait_for(lambda e: isinstance(e, Exec) and e.args[1:] == ("cw-daemon-marker",), since=mark)
    assert len(events) == 1
    marker = events[0]
    assert marker.ppid != shell  # really detached: the kernel re-parented it or it sits under setsid

    def ancestry_pids(table):
        proc = table.by_pid(marker.pid)
        return [p.pid for p in table.ancestry(proc.key)]

    assert shell in sensorlab.with_table(ancestry_pids)


def test_threads_give_no_per_thread_fork_or_exit(sensorlab) -> None:
    """A program that starts 50 threads gives one fork and one exit, none per thread."""
    code = textwrap.dedent("""
        import os, threading, time
        print(os.getpid(), flush=True)
        ts = [threading.Thread(target=time.sleep, args=(0.05,)) for _ in range(50)]
        [t.start() for t in ts]; [t.join() for t in ts]
    """)
    mark = sensorlab.mark()
    pid = int(run([sys.executable, "-c", code]).stdout.split()[0])
    exits = sensorlab.wait_for(lambda e: isinstance(e, Exit) and e.pid == pid, since=mark)
    forks_of = sensorlab.select(lambda e: isinstance(e, Fork) and e.pid == pid, since=mark)
    forks_by = sensorlab.select(lambda e: isinstance(e, Fork) and e.ppid == pid, since=mark)
    assert len(exits) == 1
    assert len(forks_of) == 1
    assert forks_by == []


CONNECT = textwrap.dedent("""
    import socket, sys
    family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    kind = socket.SOCK_DGRAM if sys.argv[3] == "udp" else socket.SOCK_STREAM
    s = socket.socket(family, kind)
    s.settimeout(5)
    s.connect((sys.argv[1], int(sys.argv[2])))
    s.send(b"chainwatch")
    s.close()
""")


@pytest.mark.parametrize("family,transport", [("ipv4", "tcp"), ("ipv6", "tcp"), ("ipv4", "udp")])
def test_connect_address_and_port(sensorlab, netlab, family, transport) -> None:
    """Connects in the netns lab give the right family, transport, address, port and result."""
    port = netlab.port()
    fam = 6 if family == "ipv6" else 4
    if transport == "tcp":
        listener = netlab.listen_tcp(netlab.attacker_ns, port, family=fam, duration=10)
    else:
        listener = netlab.listen_udp(netlab.attacker_ns, port, family=fam, duration=10)
    dst = netlab.attacker_ip6 if family == "ipv6" else netlab.attacker_ip4
    mark = sensorlab.mark()
    netlab.run(netlab.victim_ns, [sys.executable, "-c", CONNECT, dst, str(port), transport], check=True)
    assert b"chainwatch" in listener.wait(timeout=10)
    events = sensorlab.wait_for(lambda e: isinstance(e, Connect) and e.dport == port, since=mark)
    assert len(events) == 1
    e = events[0]
    assert (e.family, e.transport, e.daddr) == (family, transport, dst)
    assert e.result in (0, -errno.EINPROGRESS)  # python's socket timeout makes connect non-blocking
    assert e.comm.startswith("python")


DUP = textwrap.dedent("""
    import os, socket, sys
    print(os.getpid(), flush=True)
    if sys.argv[1] == "socket":
        s = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=5)
        fd = s.fileno()
    else:
        fd, _ = os.pipe()
    for target in (0, 1, 2):
        os.dup2(fd, target)
""")


def test_socket_dup_onto_stdio_and_not_pipe(sensorlab, netlab) -> None:
    """dup2 of a connected socket onto 0, 1, 2 gives three socket_dup events; a pipe gives none."""
    port = netlab.port()
    listener = netlab.listen_tcp(netlab.attacker_ns, port, duration=10)
    mark = sensorlab.mark()
    sock_pid = int(
        netlab.run(
            netlab.victim_ns, [sys.executable, "-c", DUP, "socket", netlab.attacker_ip4, str(port)], check=True
        ).stdout.split()[0]
    )
    pipe_pid = int(run([sys.executable, "-c", DUP, "pipe"]).stdout.split()[0])
    listener.wait(timeout=10)
    dups = sensorlab.wait_for(lambda e: isinstance(e, SocketDup) and e.pid == sock_pid, count=3, since=mark)
    assert sorted(e.newfd for e in dups) == [0, 1, 2]
    assert {(e.syscall, e.family, e.transport, e.daddr, e.dport) for e in dups} == {
        ("dup2", "ipv4", "tcp", netlab.attacker_ip4, port)
    }
    # The pipe process's exit comes after its dup2 calls: once it is in, any socket_dup of it would be too.
    assert sensorlab.wait_for(lambda e: isinstance(e, Exit) and e.pid == pipe_pid, since=mark), (
        "the sensor never saw the pipe process exit"
    )
    assert sensorlab.select(lambda e: isinstance(e, SocketDup) and e.pid == pipe_pid, since=mark) == []


def test_cron_write_in_private_mount_namespace(sensorlab, tmp_path) -> None:
    """A write to /etc/cron.d/x inside a private mount namespace (overlay on /etc) gives a file_write event."""
    marker = f"cw-{os.getpid()}"
    script = textwrap.dedent(f"""
        set -e
        mount -t tmpfs cwscratch {tmp_path}
        mkdir {tmp_path}/upper {tmp_path}/work
        mount -t overlay overlay -o lowerdir=/etc,upperdir={tmp_path}/upper,workdir={tmp_path}/work /etc
        mkdir -p /etc/cron.d
        echo $$
        echo '* * * * * root /bin/true {marker}' > /etc/cron.d/x
    """)
    mark = sensorlab.mark()
    out = run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script])
    pid = int(out.stdout.split()[0])
    assert not Path("/etc/cron.d/x").exists() or marker not in Path("/etc/cron.d/x").read_text()
    events = sensorlab.wait_for(lambda e: isinstance(e, FileWrite) and e.pid == pid, since=mark)
    assert [(e.path, e.operation) for e in events] == [("/etc/cron.d/x", "open")]
    assert events[0].flags_open & os.O_ACCMODE == os.O_WRONLY  # the opened file's flags (no O_CREAT/O_TRUNC)


def test_insmod_of_a_non_module_gives_module_load(sensorlab, tmp_path) -> None:
    """insmod of a non-module file gives a module_load signal (the attempt counts), from the tracepoint or the exec."""
    bogus = tmp_path / "not-a-module.ko"
    bogus.write_bytes(b"this is not an ELF module\n")
    mark = sensorlab.mark()
    proc = subprocess.Popen(["insmod", str(bogus)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert proc.wait(timeout=10) != 0
    loads = sensorlab.wait_for(lambda e: isinstance(e, ModuleLoad) and e.pid == proc.pid, since=mark)
    assert len(loads) == 1
    expected = "exec" if not sensorlab.sensor.program.features.module_tracepoints else "tracepoint"
    assert loads[0].source == expected
