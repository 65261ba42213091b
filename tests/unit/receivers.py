"""Receivers the output tests start and stop: a journal socket that parses the native protocol, a syslog
listener (unix datagram or stream, UDP, TCP, TLS) that parses RFC 5424 with octet counting, and an HTTPS
server with a certificate made for the test. All listen on loopback or in a temporary directory only, and
each is "down" until start() and again after stop()."""

from __future__ import annotations

import array
import contextlib
import http.server
import json
import os
import re
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def short_tmpdir() -> Iterator[Path]:
    """A directory for unix sockets: pytest's tmp_path can pass the 108-byte limit of a socket path."""
    path = Path(tempfile.mkdtemp(prefix="cw-out-", dir="/tmp"))
    try:
        yield path
    finally:
        for child in sorted(path.rglob("*"), reverse=True):
            child.unlink() if not child.is_dir() else child.rmdir()
        path.rmdir()


def free_port(kind: int) -> int:
    """A loopback port nothing listens on right now (the receiver binds it when it comes up)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


class Receiver:
    """A background thread that collects what arrives; ``items`` in arrival order."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def _add(self, item: Any) -> None:
        with self._lock:
            self.items.append(item)

    def _spawn(self, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _join(self) -> None:
        for thread in self._threads:
            thread.join(5)
        self._threads = []
        self._stop = threading.Event()


# --- journald -------------------------------------------------------------------------------------------


def parse_journal_entry(data: bytes) -> dict[str, bytes]:
    """The fields of one native-protocol datagram (KEY=value lines and the binary KEY\\n<le64><value>\\n
    form). AssertionError on anything malformed: that is the test failing."""
    fields: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        line = data[pos:end]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            pos = end + 1
        else:
            key = line
            (size,) = struct.unpack("<Q", data[end + 1 : end + 9])
            value = data[end + 9 : end + 9 + size]
            assert len(value) == size and data[end + 9 + size : end + 10 + size] == b"\n", "bad binary field"
            pos = end + 10 + size
        name = key.decode("ascii")
        assert re.fullmatch(r"[A-Z0-9][A-Z0-9_]{0,63}", name) and not name[0].isdigit(), f"bad name {name!r}"
        fields[name] = value
    return fields


class JournalReceiver(Receiver):
    """A unix datagram socket at ``path`` that speaks the journal's native protocol, memfd entries included."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.memfd_entries = 0
        self._sock: socket.socket | None = None

    def start(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self.path))
        sock.settimeout(0.05)
        self._sock = sock
        self._spawn(self._loop)

    def _loop(self) -> None:
        assert self._sock is not None
        fds = array.array("i")
        while not self._stop.is_set():
            try:
                data, ancdata, _, _ = self._sock.recvmsg(1 << 20, socket.CMSG_SPACE(4 * fds.itemsize))
            except socket.timeout:  # = TimeoutError from 3.10 on
                continue
            try:
                for level, kind, payload in ancdata:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        fd = struct.unpack("i", payload[:4])[0]
                        with os.fdopen(fd, "rb") as fh:
                            fh.seek(0)  # journald maps the whole memfd; its offset is the sender's end
                            data = fh.read()
                        self.memfd_entries += 1
                self._add(parse_journal_entry(data))
            except Exception as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(repr(exc))

    def stop(self) -> None:
        self._stop.set()
        self._join()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.path.unlink(missing_ok=True)


# --- syslog ---------------------------------------------------------------------------------------------

RFC5424 = re.compile(rb"^<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) (\[.*?(?<!\\)\]) (.*)$", re.S)


def parse_syslog(message: bytes) -> dict[str, Any]:
    """PRI, header, structured data params and the JSON body of one RFC 5424 message."""
    m = RFC5424.match(message)
    assert m, f"not RFC 5424: {message[:120]!r}"
    pri, timestamp, host, app, procid, msgid, sd, msg = m.groups()
    sd_id, _, rest = sd[1:-1].partition(b" ")
    params = {
        k.decode(): re.sub(rb'\\(["\\\]])', rb"\1", v).decode()
        for k, v in re.findall(rb'(\w+)="((?:[^"\\]|\\.)*)"', rest)
    }
    return {
        "pri": int(pri),
        "timestamp": timestamp.decode(),
        "host": host.decode(),
        "app": app.decode(),
        "procid": procid.decode(),
        "msgid": msgid.decode(),
        "sd_id": sd_id.decode(),
        "params": params,
        "body": json.loads(msg),
    }


def read_octet_counted(conn: socket.socket, stop: threading.Event) -> Iterator[bytes]:
    """Messages of one stream connection framed as "LEN SP MSG" (RFC 6587 3.4.1)."""
    buf = b""
    while not stop.is_set():
        while True:
            space = buf.find(b" ")
            if space < 0:
                break
            assert buf[:space].isdigit(), f"not octet counting: {buf[:40]!r}"
            size = int(buf[:space])
            if len(buf) < space + 1 + size:
                break
            yield buf[space + 1 : space + 1 + size]
            buf = buf[space + 1 + size :]
        try:
            chunk = conn.recv(65536)
        except socket.timeout:  # = TimeoutError from 3.10 on
            continue
        except OSError:
            return
        if not chunk:
            assert not buf, f"connection ended inside a frame: {buf[:40]!r}"
            return
        buf += chunk


class SyslogReceiver(Receiver):
    """A syslog listener: transport "udp", "tcp", "tls" on loopback (``port``), or "unix"/"unix-stream" at
    ``path``. ``items`` are parsed messages."""

    def __init__(
        self, transport: str, *, path: Path | None = None, port: int = 0, tls: tuple[Path, Path] | None = None
    ) -> None:
        super().__init__()
        self.transport = transport
        self.path = path
        self.port = port or (
            free_port(socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM)
            if transport in ("udp", "tcp", "tls")
            else 0
        )
        self.tls = tls
        self.connections = 0
        self._sock: socket.socket | None = None
        self._conns: list[socket.socket] = []

    @property
    def address(self) -> str:
        return str(self.path) if self.transport.startswith("unix") else f"{LOOPBACK}:{self.port}"

    def start(self) -> None:
        if self.transport.startswith("unix"):
            assert self.path is not None
            kind = socket.SOCK_STREAM if self.transport == "unix-stream" else socket.SOCK_DGRAM
            sock = socket.socket(socket.AF_UNIX, kind)
            sock.bind(str(self.path))
        else:
            kind = socket.SOCK_DGRAM if self.transport == "udp" else socket.SOCK_STREAM
            sock = socket.socket(socket.AF_INET, kind)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((LOOPBACK, self.port))
        sock.settimeout(0.05)
        self._sock = sock
        if kind == socket.SOCK_DGRAM:
            self._spawn(self._datagrams)
        else:
            sock.listen(8)
            self._spawn(self._accept)

    def _datagrams(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                data = self._sock.recv(1 << 17)
            except socket.timeout:  # = TimeoutError from 3.10 on
                continue
            self._parse(data)

    def _parse(self, data: bytes) -> None:
        try:
            self._add(parse_syslog(data))
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(exc))

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:  # = TimeoutError from 3.10 on
                continue
            except OSError:
                return
            if self.tls is not None:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
                conn.settimeout(5)
                try:
                    conn = context.wrap_socket(conn, server_side=True)
                except (OSError, ssl.SSLError) as exc:
                    self.errors.append(f"TLS handshake: {exc!r}")
                    conn.close()
                    continue
            conn.settimeout(0.05)
            self.connections += 1
            self._conns.append(conn)
            self._spawn(lambda c=conn: self._stream(c))

    def _stream(self, conn: socket.socket) -> None:
        try:
            for message in read_octet_counted(conn, self._stop):
                self._parse(message)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(exc))

    def stop(self) -> None:
        self._stop.set()
        self._join()
        for conn in self._conns:
            conn.close()
        self._conns = []
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)


# --- HTTPS ----------------------------------------------------------------------------------------------


def make_certificate(directory: Path, name: str = "server") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (openssl), as (cert, key)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
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
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


class HttpsReceiver(Receiver):
    """An HTTPS server on loopback; ``items`` are the JSON bodies (arrays) it accepted, ``headers`` their
    headers. ``status`` is what it answers (set it to 503 to refuse)."""

    def __init__(self, cert: Path, key: Path, port: int = 0) -> None:
        super().__init__()
        self.cert, self.key = cert, key
        self.port = port or free_port(socket.SOCK_STREAM)
        self.status = 200
        self.headers: list[dict[str, str]] = []
        self.refused = 0
        self._server: http.server.ThreadingHTTPServer | None = None
        self._conns: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}/alerts"

    def start(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as collectors do

            def setup(self) -> None:
                super().setup()
                receiver._conns.append(self.connection)

            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = receiver.status
                if status == 200:
                    try:
                        receiver._add(json.loads(body))
                        receiver.headers.append(dict(self.headers.items()))
                    except ValueError as exc:
                        receiver.errors.append(repr(exc))
                        status = 400
                else:
                    receiver.refused += 1
                reply = b"{}" if status == 200 else b'{"error":"not now"}'
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *_: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.cert), str(self.key))
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._spawn(lambda: server.serve_forever(poll_interval=0.05))

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for conn in self._conns:  # kept-alive connections too: down means down
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._conns = []
        self._join()
