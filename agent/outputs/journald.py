"""Alerts to systemd-journald as structured entries, over the journal's native protocol.

The native protocol (systemd's "Native Journal Protocol" document): one datagram per entry on the unix
socket /run/systemd/journal/socket, each field ``KEY=value\\n``, or, for a value holding a newline,
``KEY\\n`` + its length as 64-bit little-endian + the value + ``\\n``. An entry too large for a datagram
goes in a sealed memfd whose descriptor is the datagram's only content (SCM_RIGHTS). Datagrams on a unix
socket are never lost in flight: a send either reaches journald's queue or fails (no socket, journald down,
its queue full past the timeout), and then the delivery spools the alert and retries.

Fields: MESSAGE (one human line), PRIORITY (from the severity), SYSLOG_IDENTIFIER=chainwatch, and
CHAINWATCH_* (alert, rule, incident, severity, process, destination, file, context, techniques), with the
whole alert in CHAINWATCH_ALERT in the configured format ("ecs" or "ocsf"), so
``journalctl -o json CHAINWATCH_RULE_NAME=...`` finds and carries everything.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import struct
from typing import Any, Final

from agent.config import DEFAULT_JOURNAL_SOCKET
from agent.formats import render
from agent.outputs.common import Summary, decode_alert

IDENTIFIER: Final = "chainwatch"
TOO_LARGE: Final = (errno.EMSGSIZE, errno.ENOBUFS)
SEALS: Final = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


def valid_field_name(name: str) -> bool:
    """journald takes A-Z, 0-9 and _, not starting with _ (trusted fields) or a digit, up to 64 characters."""
    return (
        0 < len(name) <= 64
        and not name[0].isdigit()
        and name[0] != "_"
        and all(c.isascii() and (c.isupper() or c.isdigit() or c == "_") for c in name)
    )


def encode_entry(fields: list[tuple[str, str | bytes]]) -> bytes:
    """One journal entry in the native protocol. ValueError on a field name journald would refuse."""
    out = bytearray()
    for name, value in fields:
        if not valid_field_name(name):
            raise ValueError(f"not a journal field name: {name!r}")
        raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
        key = name.encode("ascii")
        if b"\n" in raw:
            out += key + b"\n" + struct.pack("<Q", len(raw)) + raw + b"\n"
        else:
            out += key + b"=" + raw + b"\n"
    return bytes(out)


def alert_fields(alert: dict[str, Any], fmt: str) -> list[tuple[str, str | bytes]]:
    """The journal fields of one ECS alert; CHAINWATCH_ALERT holds it whole, in format ``fmt``."""
    s = Summary.of(alert)
    fields: list[tuple[str, str | bytes]] = [
        ("MESSAGE", s.message),
        ("PRIORITY", str(s.syslog_severity)),
        ("SYSLOG_IDENTIFIER", IDENTIFIER),
        ("CHAINWATCH_ALERT_ID", s.alert_id),
        ("CHAINWATCH_RULE_ID", s.rule_id),
        ("CHAINWATCH_RULE_NAME", s.rule_name),
        ("CHAINWATCH_INCIDENT_ID", s.incident_id),
        ("CHAINWATCH_SEVERITY", s.severity),
        ("CHAINWATCH_SEVERITY_SCORE", str(s.score)),
    ]
    optional = [
        ("CHAINWATCH_PROCESS_PID", "" if s.pid is None else str(s.pid)),
        ("CHAINWATCH_PROCESS_EXECUTABLE", s.executable),
        ("CHAINWATCH_DESTINATION", s.destination),
        ("CHAINWATCH_FILE_PATH", s.file_path),
        ("CHAINWATCH_CONTEXT", s.context),
        ("CHAINWATCH_TECHNIQUES", ",".join(s.techniques)),
    ]
    fields += [(k, v) for k, v in optional if v]
    fields.append(("CHAINWATCH_FORMAT", fmt))
    fields.append(("CHAINWATCH_ALERT", json.dumps(render(alert, fmt), separators=(",", ":"))))
    return fields


class JournalOutput:
    """One journal entry per alert, sent to ``socket_path``. ``write`` takes a whole alert line or raises."""

    def __init__(self, socket_path: str = DEFAULT_JOURNAL_SOCKET, *, fmt: str = "ecs", timeout_s: float = 5.0) -> None:
        self.path = socket_path
        self.format = fmt
        self.name = f"journald://{socket_path}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.settimeout(timeout_s)  # journald's queue full: give up and spool, do not hang the thread
        self.memfd_sends = 0

    def write(self, data: bytes) -> int:
        """Send the alert of ``data`` (one spooled line) as a journal entry."""
        alert = decode_alert(data, self.name)
        if alert is None:
            return len(data)
        entry = encode_entry(alert_fields(alert, self.format))
        try:
            self._sock.sendto(entry, self.path)
        except OSError as exc:
            if exc.errno not in TOO_LARGE:
                raise
            self._send_memfd(entry)
        return len(data)

    def _send_memfd(self, entry: bytes) -> None:
        # As sd_journal_sendv does: the entry in a sealed memfd (journald refuses one it could see change).
        fd = os.memfd_create("chainwatch-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(entry)
            while view:
                view = view[os.write(fd, view) :]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
            self._sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))], 0, self.path)
            self.memfd_sends += 1
        finally:
            os.close(fd)

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()
