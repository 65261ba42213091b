"""Alerts as RFC 5424 syslog messages, to a local socket (/dev/log), or a collector over UDP, TCP or TLS.

``<PRI>1 TIMESTAMP HOSTNAME chainwatch PROCID alert [chainwatch@32473 ...] {the alert as JSON}``: PRI from
the configured facility and the alert's severity; the structured data element carries the ids and names a
collector indexes; the message is the whole alert in the configured format. TCP and TLS frame messages by
octet counting (RFC 6587 3.4.1, as RFC 5425 requires for TLS); UDP (RFC 5426) and unix datagram sockets
carry one message per datagram.

Nothing lost: a connect or send that fails raises, and the delivery spools the alert and retries. Before each
TCP send the connection is checked for an end the collector sent (it restarted), so the message goes on a
fresh connection instead of into a dead one. UDP has no acknowledgement: a connected socket learns of a down
collector from the ICMP error, which on one host arrives before the send returns and is checked right
after it; from a remote collector it arrives later, so the datagram sent before it may be lost. Use tcp or
tls where every alert must arrive. Even TCP has no acknowledgement (RFC 6587; RELP is not implemented):
what the kernel took for a collector whose host then vanished without closing the connection is lost.
"""

from __future__ import annotations

import errno
import json
import os
import re
import select
import socket
import ssl
from typing import Any, Final

from agent.config import SYSLOG_FACILITIES, ConfigError, SyslogConfig, split_host_port
from agent.formats import render
from agent.outputs.common import Summary, decode_alert

APP_NAME: Final = "chainwatch"
MSGID: Final = "alert"
# An SD-ID with "@" is a private one under an enterprise number; 32473 is the number RFC 5612 sets aside
# for examples and documentation, the usual choice for software without an enterprise number of its own.
SD_ID: Final = "chainwatch@32473"
UDP_MAX: Final = 65507  # the largest IPv4 UDP payload
TIMESTAMP: Final = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)$")


def _header_field(value: str, limit: int) -> str:
    """A header field is 1..limit printable US-ASCII characters, "-" when empty (RFC 5424 6.2)."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def _param(value: str) -> str:
    """An SD-PARAM value: '"', '\\' and ']' escaped (RFC 5424 6.3.3)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def format_message(
    alert: dict[str, Any], *, facility: int, fmt: str, procid: int | None = None, max_bytes: int | None = None
) -> bytes:
    """One RFC 5424 message for ``alert``. With ``max_bytes``, a message longer than that is cut (for a
    datagram) and says so in its structured data (``truncated="true"``)."""
    s = Summary.of(alert)
    pri = facility * 8 + s.syslog_severity
    timestamp = s.timestamp if TIMESTAMP.match(s.timestamp) else "-"
    params = [
        ("alert_id", s.alert_id),
        ("rule_id", s.rule_id),
        ("rule_name", s.rule_name),
        ("incident_id", s.incident_id),
        ("severity", s.severity),
        ("score", str(s.score)),
    ]
    params += [
        (k, v)
        for k, v in (
            ("pid", "" if s.pid is None else str(s.pid)),
            ("executable", s.executable),
            ("destination", s.destination),
            ("file", s.file_path),
            ("context", s.context),
            ("format", fmt),
        )
        if v
    ]
    header = (
        f"<{pri}>1 {timestamp} {_header_field(s.hostname, 255)} {APP_NAME} "
        f"{os.getpid() if procid is None else procid} {MSGID} "
    )
    body = _json(render(alert, fmt))

    def message(extra: str = "") -> bytes:
        sd = "[" + SD_ID + "".join(f' {k}="{_param(v)}"' for k, v in params) + extra + "]"
        return (header + sd + " ").encode("utf-8", "surrogateescape")

    head = message()
    if max_bytes is None or len(head) + len(body) <= max_bytes:
        return head + body
    head = message(' truncated="true"')
    return head + body[: max(0, max_bytes - len(head))]


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()  # ASCII: MSG needs no BOM


def frame(message: bytes) -> bytes:
    """Octet-counting framing for stream transports: "LEN SP MSG" (RFC 6587 3.4.1)."""
    return str(len(message)).encode() + b" " + message


class SyslogOutput:
    """One transport's connection to one collector; ``write`` sends a whole alert or raises OSError."""

    def __init__(
        self,
        transport: str,
        address: str,
        *,
        fmt: str = "ecs",
        facility: str = "authpriv",
        ca_file: str = "",
        timeout_s: float = 5.0,
    ) -> None:
        self.transport = transport
        self.address = address
        self.format = fmt
        self.facility = SYSLOG_FACILITIES[facility]
        self.timeout_s = timeout_s
        self.name = f"syslog+{transport}://{address}"
        self.remote = transport != "unix"  # a last try at shutdown could wait out the timeout
        self._ssl: ssl.SSLContext | None = None
        if transport == "tls":
            try:  # verifies the certificate and the name
                self._ssl = ssl.create_default_context(cafile=ca_file or None)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load outputs.syslog.ca_file {ca_file}: {exc}") from exc
        self._sock: socket.socket | None = None
        self._stream = transport in ("tcp", "tls")  # a unix socket may turn out to be a stream one

    @classmethod
    def from_config(cls, config: SyslogConfig) -> SyslogOutput:
        """The output ``[outputs.syslog]`` describes."""
        return cls(
            config.transport,
            config.address,
            fmt=config.format,
            facility=config.facility,
            ca_file=config.ca_file,
            timeout_s=config.timeout_s,
        )

    def write(self, data: bytes) -> int:
        """Send the alert of ``data`` (one spooled line) as one syslog message."""
        alert = decode_alert(data, self.name)
        if alert is None:
            return len(data)
        datagram = not self._stream
        message = format_message(
            alert, facility=self.facility, fmt=self.format, max_bytes=UDP_MAX if datagram else None
        )
        try:
            self._send(message)
        except OSError:
            self._drop_connection()
            raise
        return len(data)

    def _send(self, message: bytes) -> None:
        sock = self._connected()
        if self._stream:
            sock.sendall(frame(message))
            return
        try:
            sock.send(message)
        except OSError as exc:
            if exc.errno != errno.EMSGSIZE:
                raise
            # A unix datagram socket takes less than UDP: cut the message to what the kernel allows.
            limit = max(1024, sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2 - 1024)
            sock.send(message[:limit])
        if self.transport == "udp":
            # The ICMP "port unreachable" of a down collector on this host is already here: this datagram
            # was not received (see the module docstring for remote collectors).
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, os.strerror(error))

    def _connected(self) -> socket.socket:
        if self._sock is not None and self._stream and _peer_closed(self._sock):
            self._drop_connection()
        if self._sock is None:
            self._sock = self._connect()
        return self._sock

    def _connect(self) -> socket.socket:
        if self.transport == "unix":
            return self._connect_unix()
        hostport = split_host_port(self.address)
        if hostport is None:  # config validation checked it
            raise OSError(errno.EINVAL, f"not host:port: {self.address}")
        host, port = hostport
        kind = socket.SOCK_DGRAM if self.transport == "udp" else socket.SOCK_STREAM
        last: OSError = OSError(errno.EHOSTUNREACH, f"{host} has no address")
        for family, _, proto, _, addr in socket.getaddrinfo(host, port, type=kind):
            sock = socket.socket(family, kind | socket.SOCK_CLOEXEC, proto)
            sock.settimeout(self.timeout_s)
            try:
                sock.connect(addr)
                if self._ssl is not None:
                    sock = self._ssl.wrap_socket(sock, server_hostname=host)
                return sock
            except OSError as exc:
                sock.close()
                last = exc
        raise last

    def _connect_unix(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout_s)
        try:
            sock.connect(self.address)
            self._stream = False
            return sock
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EPROTOTYPE:
                raise
        # A stream socket (rsyslog's imuxsock can be either): octet-counted frames, like TCP.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout_s)
        try:
            sock.connect(self.address)
        except OSError:
            sock.close()
            raise
        self._stream = True
        return sock

    def _drop_connection(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def close(self) -> None:
        """Close the connection."""
        self._drop_connection()


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the collector ended the connection (or reset it). Syslog collectors send nothing, so anything
    readable is the end; stray bytes are read and ignored."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        if isinstance(sock, ssl.SSLSocket):
            return _tls_peer_closed(sock)
        return sock.recv(4096, socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


def _tls_peer_closed(sock: ssl.SSLSocket) -> bool:
    # TLS 1.3 servers send session tickets after the handshake: readable, yet no application data and no end.
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return sock.recv(4096) == b""
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return False
    except OSError:  # ssl.SSLError included
        return True
    finally:
        sock.settimeout(timeout)
