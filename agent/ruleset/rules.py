"""The rule schema: what a detection rule in ``rules/*.yaml`` is, as typed data, and how one file is read.

One rule per file. The schema lives here, in code: :class:`Rule` and :class:`Exceptions` say what a
rule is, and :func:`read_rule` checks a file against them, reporting each problem with its line
(:mod:`agent.ruleset.yamlcheck`); :func:`agent.ruleset.load.load_rules` reads the whole directory.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Final

from agent.ruleset.catalog import DETECTORS
from agent.ruleset.lists import Lists
from agent.ruleset.net import IPNetwork, check_network, in_networks, parse_ip
from agent.ruleset.yamlcheck import MITRE_ID, Checker, RuleProblem, YamlMap


class Severity(IntEnum):
    """Severity names and their scores (Elastic's risk-score numbers): ``Severity["high"] == 73``."""

    low = 21
    medium = 47
    high = 73
    critical = 99


MATURITIES: Final = ("experimental", "test", "stable")

# Where a rule was adapted from, "source:identifier", e.g. "sigma:83dcd9f6-9ca8-4af7-a16e-a1c7a6b51871".
SEED: Final = re.compile(r"[a-z][a-z0-9-]*:\S+")
RULE_FILE_NAME: Final = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*\.ya?ml")

RULE_KEYS: Final = (
    "id",
    "name",
    "description",
    "detector",
    "severity",
    "maturity",
    "mitre",
    "false_positives",
    "exceptions",
)
RULE_OPTIONAL_KEYS: Final = ("references", "seed")
EXCEPTION_KEYS: Final = (
    "process_executables",
    "parent_executables",
    "args_contains",
    "destination_cidrs",
    "destination_ports",
)


@dataclass(frozen=True)
class Exceptions:
    """A rule's tuning hooks: an event that matches ANY of them is suppressed.

    Every hook is empty by default, and an empty hook matches nothing.
    """

    process_executables: tuple[str, ...] = ()
    """fnmatch globs on the full executable path of the process, e.g. ``/usr/bin/python3*``."""
    parent_executables: tuple[str, ...] = ()
    """fnmatch globs on the full executable path of the parent process."""
    args_contains: tuple[str, ...] = ()
    """Substrings of the process's argv joined with single spaces."""
    destination_cidrs: tuple[IPNetwork, ...] = ()
    """Networks of the remote peer."""
    destination_ports: tuple[int, ...] = ()
    """Ports of the remote peer."""

    def matches(self, exe: str, parent_exe: str, args: Sequence[str], daddr: str | None, dport: int | None) -> bool:
        """True when any hook matches this event, which then must not raise an alert."""
        if any(fnmatch.fnmatchcase(exe, glob) for glob in self.process_executables):
            return True
        if any(fnmatch.fnmatchcase(parent_exe, glob) for glob in self.parent_executables):
            return True
        if self.args_contains:
            joined = " ".join(args)
            if any(needle in joined for needle in self.args_contains):
                return True
        if daddr is not None and self.destination_cidrs:
            ip = parse_ip(daddr)
            if ip is not None and in_networks(ip, self.destination_cidrs):
                return True
        return dport is not None and dport in self.destination_ports


@dataclass(frozen=True)
class Rule:
    """One detection rule: which detector raises it, how bad it is, and how to tune it.

    ``severity_score`` is derived from ``severity`` (see :class:`Severity`).
    """

    id: str
    name: str
    description: str
    detector: str
    severity: str
    severity_score: int = field(init=False)
    maturity: str
    mitre: tuple[str, ...]
    false_positives: tuple[str, ...]
    references: tuple[str, ...] = ()
    exceptions: Exceptions = Exceptions()
    source_file: str = ""
    seed: str | None = None
    family: str = ""  # the correlation family when not the detector's (catalog.FAMILIES): Sigma rules set it
    ruleset: str = "chainwatch"  # rule.ruleset in alerts: "chainwatch", or "sigma" for a loaded Sigma rule

    def __post_init__(self) -> None:
        if self.severity not in Severity.__members__:
            raise ValueError(f"unknown severity {self.severity!r}: use one of {', '.join(Severity.__members__)}")
        object.__setattr__(self, "severity_score", int(Severity[self.severity]))


@dataclass(frozen=True)
class RuleSet:
    """Every loaded rule, and the shared lists the detectors match against."""

    rules: tuple[Rule, ...]
    lists: Lists

    def by_detector(self, name: str) -> tuple[Rule, ...]:
        """The rules raised by detector ``name`` (ValueError for a name not in DETECTORS)."""
        if name not in DETECTORS:
            raise ValueError(f"unknown detector {name!r}")
        return tuple(rule for rule in self.rules if rule.detector == name)


def _check_uuid(text: str) -> str | None:
    try:
        canonical = str(uuid.UUID(text))
    except ValueError:
        canonical = None
    if canonical != text:
        return (
            f"{text!r} is not a UUID in lowercase 8-4-4-4-12 form; make one with "
            "python3 -c 'import uuid; print(uuid.uuid4())'"
        )
    return None


def _check_glob_on_path(text: str) -> str | None:
    if not text.startswith(("/", "*", "?", "[")):
        return f"{text!r} is matched against the whole executable path: start it with / or *"
    return None


def _one_of(options: Collection[str]) -> Callable[[str], str | None]:
    def check(text: str) -> str | None:
        return None if text in options else f"{text!r} is not one of: {', '.join(sorted(options))}"

    return check


def _check_mitre(text: str) -> str | None:
    return None if MITRE_ID.fullmatch(text) else f"{text!r} is not a MITRE ATT&CK technique id like T1059 or T1059.004"


def _check_url(text: str) -> str | None:
    return None if text.startswith(("https://", "http://")) and " " not in text else f"{text!r} is not a URL"


def _check_seed(text: str) -> str | None:
    return None if SEED.fullmatch(text) else f"{text!r} is not 'source:identifier', e.g. 'sigma:<rule id>'"


def _read_exceptions(checker: Checker, m: YamlMap) -> Exceptions | None:
    checker.keys(m, (), EXCEPTION_KEYS)
    procs = checker.get_strs(m, "process_executables", _check_glob_on_path)
    parents = checker.get_strs(m, "parent_executables", _check_glob_on_path)
    args = checker.get_strs(m, "args_contains")
    cidrs = checker.get_strs(m, "destination_cidrs", check_network)
    ports = checker.get_ints(m, "destination_ports", 1, 65535)
    if not checker.ok:
        return None
    return Exceptions(
        process_executables=procs or (),
        parent_executables=parents or (),
        args_contains=args or (),
        destination_cidrs=tuple(ipaddress.ip_network(c) for c in cidrs or ()),
        destination_ports=ports or (),
    )


@dataclass(frozen=True)
class ParsedRule:
    """One rule file as read: the rule when it is valid, and its id and name (with lines) for duplicate checks."""

    rule: Rule | None
    id: str | None
    id_line: int
    name: str | None
    name_line: int


def read_rule(path: Path, problems: list[RuleProblem]) -> ParsedRule | None:
    """The rule file at ``path``, checked against the schema (problems appended); None when unreadable."""
    checker = Checker(path, problems)
    if not RULE_FILE_NAME.fullmatch(path.name):
        checker.problem(1, "a rule file name is kebab-case, e.g. shell-network-connection.yaml")
    doc = checker.read()
    if doc is None:
        return None
    m = checker.mapping(doc, "a rule file")
    if m is None:
        return None
    checker.keys(
        m,
        RULE_KEYS,
        RULE_OPTIONAL_KEYS,
        hints={
            "severity_score": "it is derived from 'severity': remove it",
            "source_file": "it is set by the loader: remove it",
        },
    )
    rule_id = checker.get_str(m, "id", _check_uuid)
    name = checker.get_str(m, "name")
    description = checker.get_str(m, "description")
    detector = checker.get_str(m, "detector", _one_of(DETECTORS))
    severity = checker.get_str(m, "severity", _one_of(Severity.__members__))
    maturity = checker.get_str(m, "maturity", _one_of(MATURITIES))
    mitre = checker.get_strs(m, "mitre", _check_mitre, min_items=1)
    false_positives = checker.get_strs(m, "false_positives")
    references = checker.get_strs(m, "references", _check_url)
    seed = checker.get_str(m, "seed", _check_seed)
    exceptions: Exceptions | None = None
    exc_node = m.values.get("exceptions")
    if exc_node is not None:
        exc_map = checker.mapping(exc_node, "'exceptions'")
        if exc_map is not None:
            exceptions = _read_exceptions(checker, exc_map)
    rule = None
    if (
        checker.ok
        and rule_id
        and name
        and description
        and detector
        and severity
        and maturity
        and mitre
        and false_positives is not None
        and exceptions is not None
    ):
        rule = Rule(
            id=rule_id,
            name=name,
            description=description,
            detector=detector,
            severity=severity,
            maturity=maturity,
            mitre=mitre,
            false_positives=false_positives,
            references=references or (),
            exceptions=exceptions,
            source_file=str(path),
            seed=seed,
        )
    return ParsedRule(rule, rule_id, m.key_lines.get("id", 1), name, m.key_lines.get("name", 1))
