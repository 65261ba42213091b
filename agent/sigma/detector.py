"""Sigma rules on chainwatch's events: which events feed which logsource, and the signals they raise.

* ``process_creation``: every exec the sensor saw (not the /proc snapshot taken at startup);
* ``network_connection``: a connect() that succeeded or is under way (``Initiated: 'true'``), and an
  accepted connection (``Initiated: 'false'``, the peer as ``SourceIp``/``SourcePort``, the
  listening port as ``DestinationPort``). A refused or failed connect() is no connection, as in
  Sysmon. With ``sensor.skip_loopback`` (the default) the kernel drops loopback connects before
  any rule sees them;
* ``file_event``: a write, create, rename or link the sensor reports, which is only into the
  persistence locations the kernel watches (rules/lists/persistence_paths.yaml).
"""

from __future__ import annotations

import errno
from typing import Final

import structlog

from agent.context import context_of
from agent.detect.signals import Signal
from agent.events import FLAG_SEEDED, Accept, Connect, Event, Exec, FileWrite
from agent.lineage.identity import process_key
from agent.lineage.table import Process, ProcessTable
from agent.sigma.fields import FILE_EVENT, NETWORK_CONNECTION, PROCESS_CREATION, EventFields
from agent.sigma.load import SigmaRuleEntry, SigmaRules

log = structlog.get_logger()

# A connection made or under way (non-blocking sockets); anything else is a failed connect().
CONNECTED: Final = (0, -errno.EINPROGRESS)


def category_of(event: Event) -> str | None:
    """The Sigma logsource category an event belongs to, or None."""
    if isinstance(event, Exec):
        return None if event.flags & FLAG_SEEDED else PROCESS_CREATION
    if isinstance(event, Connect):
        return NETWORK_CONNECTION if event.result in CONNECTED else None
    if isinstance(event, Accept):
        return NETWORK_CONNECTION
    if isinstance(event, FileWrite):
        return FILE_EVENT
    return None


class _Index:
    """A category's rules, with the executable gates indexed: an event is tested only against the rules
    without a gate and those whose gate its executable passes (exact names, then each suffix length)."""

    def __init__(self, entries: tuple[SigmaRuleEntry, ...]) -> None:
        self.entries = entries
        self.always = [i for i, e in enumerate(entries) if e.gate is None]
        self.equal: dict[str, list[int]] = {}
        self.suffix: dict[str, list[int]] = {}
        for i, entry in enumerate(entries):
            if entry.gate is not None:
                for text in entry.gate.equal:
                    self.equal.setdefault(text, []).append(i)
                for text in entry.gate.suffixes:
                    self.suffix.setdefault(text, []).append(i)
        self.lengths = sorted({len(text) for text in self.suffix})

    def candidates(self, exe: str | None) -> list[SigmaRuleEntry]:
        """The rules that can match an event whose lower-cased executable is ``exe``, in load order."""
        if len(self.always) == len(self.entries):
            return list(self.entries)
        hits = set(self.always)
        if exe is not None:
            hits.update(self.equal.get(exe, ()))
            for n in self.lengths:
                if n > len(exe):
                    break
                hits.update(self.suffix.get(exe[-n:], ()))
        return [self.entries[i] for i in sorted(hits)]


def _what(event: Event, fields: EventFields) -> str:
    exe = fields.text("process.executable") or event.comm
    if isinstance(event, Exec):
        return f"exec of {event.filename}: {' '.join(event.args)[:200]}"
    if isinstance(event, Connect):
        return f"{exe} connected to {event.daddr}:{event.dport}"
    if isinstance(event, Accept):
        return f"{exe} accepted a connection from {event.saddr}:{event.sport} on port {event.lport}"
    if isinstance(event, FileWrite):
        return f"{exe} wrote {event.path}"
    return exe


class SigmaDetector:
    """Evaluates the loaded Sigma rules on each event (after the process table saw it)."""

    def __init__(self, rules: SigmaRules, table: ProcessTable) -> None:
        self.by_category = {category: _Index(entries) for category, entries in rules.by_category.items()}
        self.table = table
        self.matches = 0
        self.errors = 0
        self._failed: set[str] = set()

    def __call__(self, event: Event) -> list[Signal]:
        """The signals of every Sigma rule that matches ``event``."""
        category = category_of(event)
        index = self.by_category.get(category) if category else None
        if index is None:
            return []
        proc = self.table.lookup_event(event)
        fields = EventFields(event, proc, self.table)
        out = []
        for entry in index.candidates(fields.lower("process.executable")):
            try:
                matched = entry.matcher(fields)
            except Exception:  # a bug in one rule's matcher must not hide the other rules' matches
                self.errors += 1
                if entry.rule.id not in self._failed:
                    self._failed.add(entry.rule.id)
                    log.exception("sigma_rule_failed", rule=entry.rule.id, file=entry.rule.source_file)
                continue
            if matched:
                self.matches += 1
                out.append(self._signal(entry, event, proc, fields))
        return out

    def stats(self) -> dict[str, int]:
        """Counters for the stats line."""
        return {"sigma_matches": self.matches, "sigma_rule_errors": self.errors}

    def _signal(self, entry: SigmaRuleEntry, event: Event, proc: Process | None, fields: EventFields) -> Signal:
        key = proc.key if proc is not None else process_key(event.pid, event.start_time)
        reason = f"Sigma rule '{entry.rule.name}' matched: {_what(event, fields)}"
        if isinstance(event, Connect):
            return Signal(
                rule=entry.rule,
                key=key,
                event=event,
                reason=reason,
                daddr=event.daddr,
                dport=event.dport,
                family=event.family,
                transport=event.transport,
                context=context_of(proc),
            )
        path = event.path if isinstance(event, FileWrite) else ""
        return Signal(rule=entry.rule, key=key, event=event, reason=reason, path=path, context=context_of(proc))
