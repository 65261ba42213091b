"""Sigma field names (Sysmon for Linux) -> chainwatch's events, and the pySigma pipeline that maps them.

Each logsource category chainwatch evaluates has a table of the Sysmon-for-Linux field names it can
fill, each mapped to an internal name (``process.executable``, ``destination.ip``...). The pySigma
pipeline renames the fields of a rule to those internal names; a field left with its Sigma name is
one chainwatch cannot fill, and the rule is reported as not evaluable (never silently dropped).

Fields that exist in Sysmon but that chainwatch's events do not carry are listed in ``UNSUPPORTED``
with the reason, so ``rules check`` can say why (CurrentDirectory: the exec event has no cwd).

Values are computed lazily, once per event, only when a rule asks for them (:class:`EventFields`).
"""

from __future__ import annotations

import pwd
from collections.abc import Callable
from functools import lru_cache
from typing import Final

from sigma.processing.conditions import LogsourceCondition
from sigma.processing.pipeline import ProcessingItem, ProcessingPipeline
from sigma.processing.transformations import FieldMappingTransformation

from agent.events import Accept, Connect, Event, Exec, FileWrite
from agent.lineage.table import Process, ProcessTable

Value = str | int | None

# The logsource categories chainwatch evaluates (product: linux, no service). file_create is accepted
# as a synonym of file_event: both are a file created or written.
PROCESS_CREATION: Final = "process_creation"
NETWORK_CONNECTION: Final = "network_connection"
FILE_EVENT: Final = "file_event"
CATEGORIES: Final = {
    PROCESS_CREATION: PROCESS_CREATION,
    NETWORK_CONNECTION: NETWORK_CONNECTION,
    FILE_EVENT: FILE_EVENT,
    "file_create": FILE_EVENT,
}

_PROCESS: Final = {
    "Image": "process.executable",
    "CommandLine": "process.command_line",
    "ProcessId": "process.pid",
    "User": "user.name",
    "ParentImage": "process.parent.executable",
    "ParentCommandLine": "process.parent.command_line",
    "ParentProcessId": "process.parent.pid",
}
FIELDS: Final[dict[str, dict[str, str]]] = {
    PROCESS_CREATION: dict(_PROCESS),
    NETWORK_CONNECTION: {
        **_PROCESS,
        "DestinationIp": "destination.ip",
        "DestinationPort": "destination.port",
        "DestinationIsIpv6": "destination.is_ipv6",
        "SourceIp": "source.ip",
        "SourcePort": "source.port",
        "SourceIsIpv6": "source.is_ipv6",
        "Initiated": "network.initiated",
        "Protocol": "network.transport",
    },
    FILE_EVENT: {**_PROCESS, "TargetFilename": "file.path"},
}

# Sysmon fields a rule may use that chainwatch's events do not carry, and why.
UNSUPPORTED: Final = {
    "CurrentDirectory": "the exec event carries no working directory",
    "DestinationHostname": "chainwatch sees addresses, not the names they were resolved from",
    "SourceHostname": "chainwatch sees addresses, not host names",
    "DestinationPortName": "port names are not resolved",
    "SourcePortName": "port names are not resolved",
    "OriginalFileName": "Windows PE metadata",
    "Hashes": "executables are not hashed",
    "LogonId": "no logon sessions on the events",
    "LogonGuid": "no logon sessions on the events",
    "ProcessGuid": "no Sysmon GUIDs (chainwatch uses process.entity_id)",
    "ParentProcessGuid": "no Sysmon GUIDs (chainwatch uses process.entity_id)",
    "ParentUser": "the parent's user is not kept",
    "CreationUtcTime": "file times are not captured",
}

# The string fields a keyword (a value without a field) is searched in, per category.
KEYWORD_FIELDS: Final = {
    PROCESS_CREATION: (
        "process.executable",
        "process.command_line",
        "process.parent.executable",
        "process.parent.command_line",
    ),
    NETWORK_CONNECTION: ("process.executable", "process.command_line", "destination.ip", "source.ip"),
    FILE_EVENT: ("process.executable", "process.command_line", "file.path"),
}

INTERNAL: Final = frozenset(name for table in FIELDS.values() for name in table.values())


def pipeline() -> ProcessingPipeline:
    """The pySigma pipeline that renames each category's Sysmon fields to chainwatch's internal names."""
    items = []
    for category, canonical in CATEGORIES.items():
        mapping: dict[str | None, str | list[str]] = {k: v for k, v in FIELDS[canonical].items()}
        items.append(
            ProcessingItem(
                identifier=f"chainwatch_{category}",
                transformation=FieldMappingTransformation(mapping),
                rule_conditions=[LogsourceCondition(category=category, product="linux")],
            )
        )
    return ProcessingPipeline(name="chainwatch sysmon-for-linux", items=items)


@lru_cache(maxsize=1024)
def user_name(uid: int) -> str:
    """The account name of ``uid`` (Sysmon's User), or the number when it has none. Cached: one lookup per uid."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _cmdline(args: tuple[str, ...]) -> str:
    # Sysmon for Linux joins argv with single spaces.
    return " ".join(args)


class EventFields:
    """The field values of one event, computed on first use. ``get`` takes an internal name."""

    __slots__ = ("event", "proc", "table", "_cache", "_lower")

    def __init__(self, event: Event, proc: Process | None, table: ProcessTable) -> None:
        self.event = event
        self.proc = proc
        self.table = table
        self._cache: dict[str, Value] = {}
        self._lower: dict[str, str | None] = {}

    def get(self, name: str) -> Value:
        """The value of internal field ``name``; None when the event does not have it."""
        try:
            return self._cache[name]
        except KeyError:
            value = self._cache[name] = _EXTRACT[name](self)
            return value

    def text(self, name: str) -> str | None:
        """The value as Sigma compares strings: numbers as decimal text."""
        value = self.get(name)
        return value if value is None or isinstance(value, str) else str(value)

    def lower(self, name: str) -> str | None:
        """:meth:`text`, lower-cased (Sigma strings match case-insensitively)."""
        try:
            return self._lower[name]
        except KeyError:
            text = self.text(name)
            low = self._lower[name] = text.lower() if text is not None else None
            return low

    def parent(self) -> Process | None:
        """The process's parent in the table, if known."""
        proc = self.proc
        return self.table.get(proc.parent_key) if proc is not None and proc.parent_key else None


def _exe(f: EventFields) -> Value:
    if isinstance(f.event, Exec):
        return f.event.filename
    return f.proc.filename if f.proc is not None and f.proc.filename else None


def _args(f: EventFields) -> Value:
    if isinstance(f.event, Exec):
        return _cmdline(f.event.args)
    return _cmdline(f.proc.args) if f.proc is not None and f.proc.args else None


def _parent_exe(f: EventFields) -> Value:
    parent = f.parent()
    return parent.filename if parent is not None and parent.filename else None


def _parent_args(f: EventFields) -> Value:
    parent = f.parent()
    return _cmdline(parent.args) if parent is not None and parent.args else None


def _parent_pid(f: EventFields) -> Value:
    return f.event.ppid


def _daddr(f: EventFields) -> Value:
    return f.event.daddr if isinstance(f.event, Connect) else None


def _dport(f: EventFields) -> Value:
    if isinstance(f.event, Connect):
        return f.event.dport
    return f.event.lport if isinstance(f.event, Accept) else None


def _saddr(f: EventFields) -> Value:
    return f.event.saddr if isinstance(f.event, Accept) else None


def _sport(f: EventFields) -> Value:
    return f.event.sport if isinstance(f.event, Accept) else None


def _family(f: EventFields) -> str:
    return getattr(f.event, "family", "")


def _d_ipv6(f: EventFields) -> Value:
    # Known for outbound connects; an accepted connection's local address is not on the event.
    return ("true" if _family(f) == "ipv6" else "false") if isinstance(f.event, Connect) else None


def _s_ipv6(f: EventFields) -> Value:
    return ("true" if _family(f) == "ipv6" else "false") if isinstance(f.event, Accept) else None


def _initiated(f: EventFields) -> Value:
    return "true" if isinstance(f.event, Connect) else "false"


def _transport(f: EventFields) -> Value:
    return getattr(f.event, "transport", None) or None


def _path(f: EventFields) -> Value:
    return f.event.path if isinstance(f.event, FileWrite) else None


_EXTRACT: Final[dict[str, Callable[[EventFields], Value]]] = {
    "process.executable": _exe,
    "process.command_line": _args,
    "process.pid": lambda f: f.event.pid,
    "user.name": lambda f: user_name(f.event.uid),
    "process.parent.executable": _parent_exe,
    "process.parent.command_line": _parent_args,
    "process.parent.pid": _parent_pid,
    "destination.ip": _daddr,
    "destination.port": _dport,
    "destination.is_ipv6": _d_ipv6,
    "source.ip": _saddr,
    "source.port": _sport,
    "source.is_ipv6": _s_ipv6,
    "network.initiated": _initiated,
    "network.transport": _transport,
    "file.path": _path,
}
assert set(_EXTRACT) == INTERNAL, "every mapped field needs an extractor"
