"""Throw-away two-namespace network lab for live tests.

``NetLab`` creates a *victim* and an *attacker* network namespace joined by a
veth pair and nothing else:

* victim   198.51.100.1/24, 2001:db8::1/64
* attacker 198.51.100.2/24, 2001:db8::2/64

and, on request (``add_attacker_addresses``), more attacker addresses from 203.0.113.0/24 and
2001:db8:c0de::/64, routed on-link from the victim (tests/helpers/addresses.py). Tests take addresses from the
lab and ports from ``NetLab.port()``, never as literals.

Only documentation addresses are used, ``lo`` is up, IPv6 addresses are added
with ``nodad`` (usable at once), router advertisements are ignored and there is
no default route in either namespace (checked after setup), so nothing sent
inside the lab can leave it.

Every command is bounded by a timeout.  ``close()`` (idempotent, also run by the
context manager and by the ``netlab`` fixture) kills every process the lab
started and anything else still running inside its namespaces, then removes
the namespaces (which destroys the veth pair) and verifies that they are gone.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import random
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, NetNS, netns

from tests.helpers.addresses import (
    ATTACKER_IP4,
    ATTACKER_IP6,
    EXTRA_NET4,
    EXTRA_NET6,
    LAB_NET4,
    LAB_NET6,
    OUTSIDE_IP4,
    VICTIM_IP4,
    VICTIM_IP6,
)
from tests.helpers.polling import wait_until

NETNS_DIR = Path("/run/netns")
IFA_F_NODAD = 0x02

SETUP_TIMEOUT = 10.0  # seconds for any single setup step / helper command
TERM_GRACE = 1.0  # seconds between SIGTERM and SIGKILL at close
READY_TIMEOUT = 10.0  # seconds for a listener to report that it is bound

# Ports for lab listeners: one counter for the whole test process, from an offset of its own. The sensor is
# host-wide and tests pick their events and alerts by port, so sessions running at once should not share them.
_PORTS = itertools.count(40000 + os.getpid() % 100 * 200)

# Bounded TCP/UDP listener, run as ``python -c LISTENER proto family bind port
# duration payload_hex max_count max_bytes``.  Prints "READY" once bound, then
# (on exit) one JSON line with what it received.
_LISTENER = r"""
import json, socket, sys, time
proto, fam, addr, port, duration, payload_hex, max_count, max_bytes = sys.argv[1:]
port, max_count, max_bytes = int(port), int(max_count), int(max_bytes)
payload = bytes.fromhex(payload_hex)
deadline = time.monotonic() + float(duration)
af = socket.AF_INET6 if fam == "6" else socket.AF_INET
tcp = proto == "tcp"
s = socket.socket(af, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if af == socket.AF_INET6:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
s.bind((addr, port))
if tcp:
    s.listen(8)
sys.stdout.write("READY\n")
sys.stdout.flush()
data, chunks, peers, timed_out = bytearray(), [], [], False
def left():
    return deadline - time.monotonic()
try:
    while len(peers) < max_count:
        if left() <= 0:
            timed_out = True
            break
        s.settimeout(left())
        if tcp:
            conn, peer = s.accept()
            peers.append(list(peer[:2]))
            with conn:
                if payload:
                    conn.settimeout(max(left(), 0.01))
                    conn.sendall(payload)
                got = bytearray()
                while len(data) + len(got) < max_bytes:
                    if left() <= 0:
                        timed_out = True
                        break
                    conn.settimeout(left())
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    got += chunk
                chunks.append(bytes(got))
                data += got
        else:
            chunk, peer = s.recvfrom(65536)
            peers.append(list(peer[:2]))
            chunks.append(chunk)
            data += chunk
            if payload:
                s.sendto(payload, peer)
except socket.timeout:
    timed_out = True
except OSError as e:
    sys.stderr.write("listener: %s\n" % e)
sys.stdout.write(json.dumps({"data": bytes(data).hex(), "chunks": [c.hex() for c in chunks],
                             "peers": peers, "timed_out": timed_out}) + "\n")
sys.stdout.flush()
"""

# Bounded client, run as ``python -c CLIENT proto host port timeout data_hex``.
# Writes what it got back to stdout; on failure "ERRNAME: strerror" to stderr
# and exit status 1.
_CLIENT = r"""
import errno, socket, sys
proto, host, port, timeout, data_hex = sys.argv[1:]
data = bytes.fromhex(data_hex)
af = socket.AF_INET6 if ":" in host else socket.AF_INET
tcp = proto == "tcp"
s = socket.socket(af, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
s.settimeout(float(timeout))
try:
    s.connect((host, int(port)))
    if tcp:
        if data:
            s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = bytearray()
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except socket.timeout:
            pass
        sys.stdout.buffer.write(out)
    else:
        s.send(data)
except socket.timeout:
    sys.stderr.write("ETIMEDOUT: timed out\n")
    sys.exit(1)
except OSError as e:
    sys.stderr.write("%s: %s\n" % (errno.errorcode.get(e.errno, e.errno), e.strerror))
    sys.exit(1)
"""


class NetLabError(RuntimeError):
    """Setup, teardown or a lab helper failed."""


class Listener:
    """A bounded TCP/UDP listener process started by ``NetLab.listen_tcp/udp``."""

    def __init__(
        self,
        proc: subprocess.Popen,
        *,
        ns: str,
        proto: str,
        family: int,
        port: int,
        duration: float,
    ) -> None:
        self.proc = proc
        self.ns = ns
        self.proto = proto
        self.family = family
        self.port = port
        self.duration = duration
        self.peers: list[list[Any]] = []
        self.chunks: list[bytes] = []
        self.timed_out: bool | None = None
        self._buf = b""
        self._data: bytes | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait_ready(self, timeout: float) -> None:
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NetLabError(f"{self.proto} listener in {self.ns} not ready after {timeout}s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    err = _bounded_stderr(self.proc)
                    raise NetLabError(f"{self.proto} listener in {self.ns} exited early: {err}")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        if line != b"READY":
            raise NetLabError(f"unexpected listener output: {line!r}")

    def wait(self, timeout: float | None = None) -> bytes:
        """Wait for the listener to exit; return all bytes it received.

        ``timeout`` defaults to the listener's duration plus 5 s.  On timeout
        the listener is killed and ``subprocess.TimeoutExpired`` is raised.
        """
        if self._data is not None:
            return self._data
        if timeout is None:
            timeout = self.duration + 5
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(self.proc, grace=0)
            raise
        lines = (self._buf + (out or b"")).strip().splitlines()
        if not lines:
            raise NetLabError(f"listener exited {self.proc.returncode} without result: {err!r}")
        result = json.loads(lines[-1])
        self.peers = result["peers"]
        self.chunks = [bytes.fromhex(c) for c in result["chunks"]]
        self.timed_out = result["timed_out"]
        self._data = bytes.fromhex(result["data"])
        return self._data


def _bounded_stderr(proc: subprocess.Popen, timeout: float = 2.0) -> bytes:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        return b"(no stderr: process still running)"
    return err or b""


def _kill_group(proc: subprocess.Popen, grace: float = TERM_GRACE) -> None:
    """SIGTERM, then SIGKILL, the process group led by ``proc`` and reap it.

    Processes are always started with ``start_new_session=True`` so their pgid
    is their pid; the group id cannot be reused while any member lives.
    """
    # Only signal while the leader is unreaped: then its pid (== pgid) cannot
    # have been reused.  Stragglers of an already-reaped group are found by
    # the namespace sweep in NetLab.close().
    if grace > 0 and proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass


def _netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def _is_up(ns: str, ifname: str) -> bool:
    with NetNS(ns) as ipr:
        (link,) = ipr.get_links(ifname=ifname)
        return link.get_attr("IFLA_OPERSTATE") == "UP"


def _default_routes(ns: str) -> list[str]:
    found = []
    with NetNS(ns) as ipr:
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.route("dump", family=family):
                if route.get("dst_len") == 0:
                    found.append(f"family={family} table={route.get_attr('RTA_TABLE')}")
    return found


class NetLab:
    """A victim and an attacker namespace joined by one veth pair."""

    victim_ip4 = VICTIM_IP4
    attacker_ip4 = ATTACKER_IP4
    victim_ip6 = VICTIM_IP6
    attacker_ip6 = ATTACKER_IP6
    prefix4 = 24
    prefix6 = 64
    net4 = LAB_NET4
    net6 = LAB_NET6
    outside_ip4 = OUTSIDE_IP4

    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise PermissionError("NetLab needs root")
        ip = shutil.which("ip")
        if ip is None:
            raise NetLabError("iproute2 'ip' not found")
        self.ip = ip
        tag = secrets.token_hex(4)
        self.tag = tag
        self.victim_ns = f"cw-victim-{tag}"
        self.attacker_ns = f"cw-attacker-{tag}"
        self.victim_if = f"cwv{tag}"
        self.attacker_if = f"cwa{tag}"
        self._procs: list[subprocess.Popen] = []
        self._created_ns: list[str] = []
        self._extra_routes: set[str] = set()
        self._closed = False
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- setup
    def _setup(self) -> None:
        for ns in (self.victim_ns, self.attacker_ns):
            if _netns_exists(ns):
                raise NetLabError(f"namespace {ns} already exists")
            netns.create(ns)
            self._created_ns.append(ns)
            # Ignore router advertisements so no default route can appear.
            self._sysctl(
                ns,
                {
                    "net.ipv6.conf.all.accept_ra": "0",
                    "net.ipv6.conf.default.accept_ra": "0",
                    "net.ipv4.ip_forward": "0",
                },
            )

        with NetNS(self.victim_ns) as ipr:
            ipr.link(
                "add",
                ifname=self.victim_if,
                kind="veth",
                peer={"ifname": self.attacker_if, "net_ns_fd": self.attacker_ns},
            )

        for ns, ifname, ip4, ip6 in (
            (self.victim_ns, self.victim_if, self.victim_ip4, self.victim_ip6),
            (self.attacker_ns, self.attacker_if, self.attacker_ip4, self.attacker_ip6),
        ):
            with NetNS(ns) as ipr:
                (lo,) = ipr.link_lookup(ifname="lo")
                (idx,) = ipr.link_lookup(ifname=ifname)
                ipr.link("set", index=lo, state="up")
                ipr.addr("add", index=idx, address=ip4, prefixlen=self.prefix4)
                ipr.addr(
                    "add",
                    index=idx,
                    address=ip6,
                    prefixlen=self.prefix6,
                    flags=IFA_F_NODAD,
                )
                ipr.link("set", index=idx, state="up")

        self._wait_carrier()
        for ns in (self.victim_ns, self.attacker_ns):
            default = _default_routes(ns)
            if default:
                raise NetLabError(f"default route present in {ns}: {default}")

    def _sysctl(self, ns: str, values: dict[str, str]) -> None:
        script = (
            "import sys\n"
            "for kv in sys.argv[1:]:\n"
            "    k, v = kv.split('=', 1)\n"
            "    open('/proc/sys/' + k.replace('.', '/'), 'w').write(v)\n"
        )
        res = self.run(
            ns,
            [sys.executable, "-c", script, *(f"{k}={v}" for k, v in values.items())],
            timeout=SETUP_TIMEOUT,
        )
        if res.returncode != 0:
            raise NetLabError(f"sysctl in {ns} failed: {res.stderr.decode(errors='replace')}")

    def _wait_carrier(self) -> None:
        pending = {
            (self.victim_ns, self.victim_if),
            (self.attacker_ns, self.attacker_if),
        }

        def all_up() -> bool:
            pending.difference_update([(ns, ifname) for ns, ifname in pending if _is_up(ns, ifname)])
            return not pending

        if not wait_until(all_up, timeout=SETUP_TIMEOUT):
            raise NetLabError(f"veth never came up: {sorted(pending)}")

    # --------------------------------------------------------------- helpers
    def _ns(self, ns: str) -> str:
        """Resolve 'victim'/'attacker' or a full name; refuse foreign namespaces."""
        if self._closed:
            raise NetLabError("lab is closed")
        names = {"victim": self.victim_ns, "attacker": self.attacker_ns}
        if ns in names:
            return names[ns]
        if ns in names.values():
            return ns
        raise ValueError(f"{ns!r} is not a namespace of this lab")

    def _env(self, env: dict[str, str] | None) -> dict[str, str] | None:
        return None if env is None else {**os.environ, **env}

    def run(
        self,
        ns: str,
        argv: list[str],
        *,
        timeout: float = 10,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` in namespace ``ns`` and capture stdout/stderr as bytes.

        ``env`` is merged over ``os.environ``.  On timeout the whole process
        group is killed and ``subprocess.TimeoutExpired`` is raised.
        """
        ns = self._ns(ns)
        cmd = [self.ip, "netns", "exec", ns, *argv]
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self._env(env),
            start_new_session=True,
        )
        self._procs.append(proc)
        try:
            out, err = proc.communicate(input=input, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            _kill_group(proc, grace=0)
            raise subprocess.TimeoutExpired(cmd, timeout, exc.output, exc.stderr) from None
        except BaseException:
            _kill_group(proc, grace=0)
            raise
        finally:
            if proc.returncode is not None:
                self._procs.remove(proc)
        result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
        if check:
            result.check_returncode()
        return result

    def spawn(self, ns: str, argv: list[str], **popen_kwargs: Any) -> subprocess.Popen:
        """Start ``argv`` in the background in ``ns``; killed at ``close()``.

        ``ip netns exec`` execs the command, so ``Popen.pid`` is the command's
        pid.  It always gets its own session/process group.  ``env`` is merged
        over ``os.environ``; stdin defaults to /dev/null.
        """
        ns = self._ns(ns)
        for key in ("start_new_session", "process_group", "preexec_fn"):
            if key in popen_kwargs:
                raise ValueError(f"spawn() manages {key} itself")
        popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        popen_kwargs["env"] = self._env(popen_kwargs.get("env"))
        proc = subprocess.Popen(
            [self.ip, "netns", "exec", ns, *argv],
            start_new_session=True,
            **popen_kwargs,
        )
        self._procs.append(proc)
        return proc

    @staticmethod
    def port() -> int:
        """A port no other test of this process has used (see _PORTS)."""
        return next(_PORTS)

    def add_attacker_addresses(self, count: int, *, family: int = 4) -> list[str]:
        """``count`` random addresses from EXTRA_NET4 (or EXTRA_NET6) on the attacker's veth, routed on-link
        from the victim (a route to that network only, never a default route)."""
        if family == 4:
            net, prefixlen, flags = EXTRA_NET4, 32, 0
            hosts = random.sample(range(10, 250), count)
        elif family == 6:
            net, prefixlen, flags = EXTRA_NET6, 128, IFA_F_NODAD
            hosts = random.sample(range(16, 4000), count)
        else:
            raise ValueError("family must be 4 or 6")
        addresses = [str(ipaddress.ip_network(net)[n]) for n in hosts]
        with NetNS(self._ns("attacker")) as ipr:
            (idx,) = ipr.link_lookup(ifname=self.attacker_if)
            for address in addresses:
                ipr.addr("add", index=idx, address=address, prefixlen=prefixlen, flags=flags)
        if net not in self._extra_routes:
            with NetNS(self._ns("victim")) as ipr:
                (idx,) = ipr.link_lookup(ifname=self.victim_if)
                ipr.route("add", dst=net, oif=idx, family=socket.AF_INET if family == 4 else socket.AF_INET6)
            self._extra_routes.add(net)
        return addresses

    @property
    def pids(self) -> list[int]:
        """Pids of every process started by ``spawn``/``listen_*`` so far."""
        return [p.pid for p in self._procs]

    def _listen(
        self,
        proto: str,
        ns: str,
        port: int,
        family: int,
        bind: str | None,
        payload: bytes,
        duration: float,
        max_count: int,
        max_bytes: int,
    ) -> Listener:
        if family not in (4, 6):
            raise ValueError("family must be 4 or 6")
        if bind is None:
            bind = "::" if family == 6 else "0.0.0.0"
        argv = [
            sys.executable,
            "-c",
            _LISTENER,
            proto,
            str(family),
            bind,
            str(port),
            str(duration),
            payload.hex(),
            str(max_count),
            str(max_bytes),
        ]
        proc = self.spawn(ns, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        listener = Listener(
            proc,
            ns=self._ns(ns),
            proto=proto,
            family=family,
            port=port,
            duration=duration,
        )
        try:
            listener._wait_ready(READY_TIMEOUT)
        except BaseException:
            _kill_group(proc, grace=0)
            raise
        return listener

    def listen_tcp(
        self,
        ns: str,
        port: int,
        *,
        family: int = 4,
        bind: str | None = None,
        payload: bytes = b"",
        duration: float = 15,
        max_conns: int = 1,
        max_bytes: int = 1 << 20,
    ) -> Listener:
        """Start a TCP listener in ``ns``; returns once it is bound.

        For each accepted connection (up to ``max_conns``) it sends ``payload``,
        then reads until EOF; it exits after ``max_conns`` connections or
        ``duration`` seconds, whichever comes first.
        """
        return self._listen("tcp", ns, port, family, bind, payload, duration, max_conns, max_bytes)

    def listen_udp(
        self,
        ns: str,
        port: int,
        *,
        family: int = 4,
        bind: str | None = None,
        payload: bytes = b"",
        duration: float = 15,
        max_datagrams: int = 1,
        max_bytes: int = 1 << 20,
    ) -> Listener:
        """Start a UDP receiver in ``ns``; returns once it is bound.

        Collects up to ``max_datagrams`` datagrams (replying ``payload`` to each
        if given) for at most ``duration`` seconds.
        """
        return self._listen("udp", ns, port, family, bind, payload, duration, max_datagrams, max_bytes)

    def connect_tcp(
        self, ns: str, host: str, port: int, data: bytes = b"", *, timeout: float = 5
    ) -> subprocess.CompletedProcess:
        """Connect from ``ns`` to host:port, send ``data``, half-close, read to EOF.

        returncode 0 on success (stdout = bytes received); 1 on failure with
        stderr like ``b"ENETUNREACH: Network is unreachable"``.
        """
        return self.run(
            ns,
            [
                sys.executable,
                "-c",
                _CLIENT,
                "tcp",
                host,
                str(port),
                str(timeout),
                data.hex(),
            ],
            timeout=timeout + 10,
        )

    def send_udp(
        self, ns: str, host: str, port: int, data: bytes, *, timeout: float = 5
    ) -> subprocess.CompletedProcess:
        """Send one UDP datagram from ``ns`` (same result convention as connect_tcp)."""
        return self.run(
            ns,
            [
                sys.executable,
                "-c",
                _CLIENT,
                "udp",
                host,
                str(port),
                str(timeout),
                data.hex(),
            ],
            timeout=timeout + 10,
        )

    # -------------------------------------------------------------- teardown
    def _ns_pids(self, ns: str) -> list[int]:
        """Pids of all live processes whose network namespace is ``ns``."""
        try:
            st = os.stat(NETNS_DIR / ns)
        except OSError:
            return []
        key = (st.st_dev, st.st_ino)
        pids = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                pst = os.stat(f"/proc/{entry.name}/ns/net")
            except OSError:
                continue
            if (pst.st_dev, pst.st_ino) == key:
                pids.append(int(entry.name))
        return pids

    def close(self) -> None:
        """Kill lab processes, remove namespaces and veth.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []

        # 1. Everything we started: SIGTERM the groups, short grace, SIGKILL.
        procs, self._procs = self._procs, []
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + TERM_GRACE
        for proc in procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                pass
        for proc in procs:
            try:
                _kill_group(proc, grace=0)
            except Exception as exc:  # noqa: BLE001 - keep cleaning up
                errors.append(exc)

        # 2. Anything else still inside our namespaces (daemonised children...).
        for ns in self._created_ns:
            deadline = time.monotonic() + 5
            while pids := self._ns_pids(ns):
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                if time.monotonic() > deadline:
                    errors.append(NetLabError(f"processes left in {ns}: {pids}"))
                    break
                time.sleep(0.05)

        # 3. Namespaces (removing them destroys the veth pair).
        for ns in self._created_ns:
            try:
                if _netns_exists(ns):
                    netns.remove(ns)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        # 4. A veth end can only be in the root namespace if setup broke midway.
        try:
            with IPRoute() as ipr:
                for ifname in (self.victim_if, self.attacker_if):
                    for idx in ipr.link_lookup(ifname=ifname):
                        ipr.link("del", index=idx)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

        left = [ns for ns in self._created_ns if _netns_exists(ns)]
        if left:
            errors.append(NetLabError(f"namespaces left behind: {left}"))
        if errors:
            raise NetLabError(f"NetLab cleanup problems: {errors!r}") from errors[0]

    def __enter__(self) -> NetLab:  # not typing.Self: the Vagrant boxes run this on Python 3.9
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<NetLab {self.victim_ns} <-> {self.attacker_ns} ({state})>"


__all__ = ["Listener", "NetLab", "NetLabError"]
