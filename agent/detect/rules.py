"""Detection rules as typed data, loaded from ``rules/*.yaml`` and validated as a whole.

One rule per file. The schema lives here, in code: :class:`Rule` and :class:`Exceptions` say what a
rule is, and :func:`load_rules` checks every file against them. It collects *every* problem in the
directory (each with its file, line and reason) before it fails, so one run of
``chainwatch rules check`` shows everything there is to fix.

The YAML is read with PyYAML's compose API rather than ``safe_load``: the node tree keeps the line of
each key, which is what a problem report needs.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import date
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Union

# PyYAML ships no type information and the project does not depend on types-PyYAML: without the stubs
# the import is untyped, with them the ignore is unused. Everything from yaml is handled as Any below.
import yaml  # type: ignore[import-untyped, unused-ignore]

from agent import resources
from agent.detect.catalog import DETECTORS

if TYPE_CHECKING:
    from agent.detect.lists import Lists

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]  # a runtime alias: `|` on types needs 3.10
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


class Severity(IntEnum):
    """Severity names and their scores (Elastic's risk-score numbers): ``Severity["high"] == 73``."""

    low = 21
    medium = 47
    high = 73
    critical = 99


MATURITIES: Final = ("experimental", "test", "stable")

# A technique or sub-technique id. [0-9] and not \d: \d also matches non-ASCII digits.
MITRE_ID: Final = re.compile(r"T[0-9]{4}(\.[0-9]{3})?")
# Where a rule was adapted from, "source:identifier", e.g. "sigma:83dcd9f6-9ca8-4af7-a16e-a1c7a6b51871".
SEED: Final = re.compile(r"[a-z][a-z0-9-]*:\S+")
RULE_FILE_NAME: Final = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*\.ya?ml")

RULE_KEYS: Final = ("id", "name", "description", "detector", "severity", "maturity", "mitre", "false_positives",
                    "exceptions")
RULE_OPTIONAL_KEYS: Final = ("references", "seed")
EXCEPTION_KEYS: Final = ("process_executables", "parent_executables", "args_contains", "destination_cidrs",
                         "destination_ports")


def parse_ip(addr: str) -> IPAddress | None:
    """The address in ``addr``, or None when it is not an IP address."""
    try:
        return ipaddress.ip_address(addr)
    except ValueError:
        return None


def in_networks(ip: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    """True when ``ip`` is in one of ``networks``; an IPv4-mapped IPv6 address is also tried as IPv4."""
    # A dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d; it is the same host.
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return any(ip in net or (mapped is not None and mapped in net) for net in networks)


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

    def matches(self, exe: str, parent_exe: str, args: Sequence[str], daddr: str | None,
                dport: int | None) -> bool:
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
class RuleProblem:
    """One thing wrong in a rule or list file: where (file, 1-based line) and why."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


class RuleErrors(Exception):
    """The rules could not be loaded; ``problems`` holds every problem that was found."""

    def __init__(self, problems: Sequence[RuleProblem]) -> None:
        self.problems: list[RuleProblem] = list(problems)
        count = len(self.problems)
        super().__init__(f"{count} problem{'s' if count != 1 else ''} in the rules:\n"
                         + "\n".join(str(p) for p in self.problems))


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


# --- YAML with line numbers -------------------------------------------------------------------------------

class _Invalid:
    """The value of a node that was already reported as broken; checks skip it silently."""

    def __repr__(self) -> str:
        return "<invalid>"


INVALID: Final = _Invalid()


@dataclass(frozen=True)
class YamlMap:
    """A YAML mapping with string keys; ``key_lines`` keeps the 1-based line of each key."""

    line: int
    values: dict[str, Located]
    key_lines: dict[str, int]


@dataclass(frozen=True)
class Located:
    """A YAML value and the 1-based line it starts on.

    ``value`` is a scalar (str, int, float, bool, None, date, ...), a ``tuple[Located, ...]`` for a
    sequence, a :class:`YamlMap` for a mapping, or ``INVALID``.
    """

    value: object
    line: int


_MAP_TAG: Final = "tag:yaml.org,2002:map"
_SEQ_TAG: Final = "tag:yaml.org,2002:seq"
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
_MAX_DEPTH: Final = 50
_MAX_NODES: Final = 100_000


def _mark_line(exc: Any, text: str) -> int:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        return int(mark.line) + 1
    position = getattr(exc, "position", None)  # a ReaderError: a bad character
    if isinstance(position, int):
        return text.count("\n", 0, position) + 1
    return 1


def _yaml_detail(exc: Any) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        parts = [str(p) for p in (exc.context, exc.problem) if p]
        return ", ".join(parts) if parts else "cannot parse"
    if isinstance(exc, yaml.reader.ReaderError):
        return f"{exc.reason} ({exc.character!r})"
    return str(exc)


class _Converter:
    """Turns a composed node tree into Located values, reporting what cannot be represented."""

    def __init__(self, checker: Checker) -> None:
        self.checker = checker
        self.nodes = 0
        self.too_big = False

    def convert(self, node: Any, depth: int = 0) -> Located:
        line = int(node.start_mark.line) + 1
        self.nodes += 1
        if self.too_big:
            return Located(INVALID, line)
        if self.nodes > _MAX_NODES:
            self.too_big = True
            self.checker.problem(line, f"the document has more than {_MAX_NODES} values (alias expansion?)")
            return Located(INVALID, line)
        if depth > _MAX_DEPTH:
            self.checker.problem(line, f"nested more than {_MAX_DEPTH} levels deep (a recursive alias?)")
            return Located(INVALID, line)
        if isinstance(node, yaml.ScalarNode):
            return Located(self._scalar(node), line)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ_TAG:
                self.checker.problem(line, f"unsupported YAML tag {node.tag}")
                return Located(INVALID, line)
            return Located(tuple(self.convert(item, depth + 1) for item in node.value), line)
        if isinstance(node, yaml.MappingNode):
            if node.tag != _MAP_TAG:
                self.checker.problem(line, f"unsupported YAML tag {node.tag}")
                return Located(INVALID, line)
            return Located(self._mapping(node, line, depth), line)
        self.checker.problem(line, "unsupported YAML node")
        return Located(INVALID, line)

    def _scalar(self, node: Any) -> object:
        try:
            value: object = yaml.constructor.SafeConstructor().construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self.checker.problem(int(node.start_mark.line) + 1, f"unsupported value: {_yaml_detail(exc)}")
            return INVALID
        except (ValueError, TypeError, OverflowError) as exc:  # e.g. a timestamp like 2021-13-45
            self.checker.problem(int(node.start_mark.line) + 1, f"cannot read the value {node.value!r}: {exc}")
            return INVALID
        return value

    def _mapping(self, node: Any, line: int, depth: int) -> YamlMap:
        values: dict[str, Located] = {}
        key_lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            key_line = int(key_node.start_mark.line) + 1
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _MERGE_TAG:
                self.checker.problem(key_line, "merge keys (<<) are not supported: write the keys out")
                continue
            key = self._scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else INVALID
            if key is INVALID:
                if not isinstance(key_node, yaml.ScalarNode):
                    self.checker.problem(key_line, "a key must be a plain string")
                continue
            if not isinstance(key, str):
                self.checker.problem(key_line, f"the key {key!r} must be a string, not {kind(key)}")
                continue
            if key in values:
                self.checker.problem(key_line, f"duplicate key {key!r} (first on line {key_lines[key]})")
                continue
            key_lines[key] = key_line
            values[key] = self.convert(value_node, depth + 1)
        return YamlMap(line, values, key_lines)


def kind(value: object) -> str:
    """How a YAML value's type is named in a problem report."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, tuple):
        return "a list"
    if isinstance(value, YamlMap):
        return "a mapping"
    if isinstance(value, date):
        return "a date"
    if isinstance(value, bytes):
        return "binary data"
    return type(value).__name__


class Checker:
    """Reads and checks one YAML file, recording each problem with the file and line.

    Every ``get_*`` method returns None when the value is absent or wrong; a wrong value has then
    been reported (an absent one is reported by :meth:`keys`).
    """

    def __init__(self, path: Path, problems: list[RuleProblem]) -> None:
        self.path = path
        self.problems = problems
        self.start = len(problems)

    @property
    def ok(self) -> bool:
        """True while no problem has been found in this file."""
        return len(self.problems) == self.start

    def problem(self, line: int, reason: str) -> None:
        """Record a problem at ``line`` of this file."""
        self.problems.append(RuleProblem(str(self.path), max(1, line), reason))

    def read(self) -> Located | None:
        """The file's single YAML document, or None (reported) if it is unreadable, broken or empty."""
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            self.problem(1, f"cannot read the file: {exc.strerror or exc}")
            return None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.problem(raw.count(b"\n", 0, exc.start) + 1, "the file is not UTF-8 text")
            return None
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            self.problem(_mark_line(exc, text), f"YAML syntax error: {_yaml_detail(exc)}")
            return None
        except RecursionError:
            self.problem(1, "YAML syntax error: nested too deeply to parse")
            return None
        if node is None:
            self.problem(1, "the file is empty")
            return None
        return _Converter(self).convert(node)

    def mapping(self, node: Located, what: str) -> YamlMap | None:
        """``node`` as a mapping, or None (reported as ``what`` must be a mapping)."""
        if isinstance(node.value, YamlMap):
            return node.value
        if node.value is not INVALID:
            self.problem(node.line, f"{what} must be a mapping, not {kind(node.value)}")
        return None

    def keys(self, m: YamlMap, required: Collection[str], optional: Collection[str] = (),
             hints: dict[str, str] | None = None) -> None:
        """Report keys of ``m`` that are unknown (at the key's line) and required keys that are missing."""
        known = [*required, *optional]
        for key, line in m.key_lines.items():
            if key not in known:
                hint = (hints or {}).get(key) or f"expected one of: {', '.join(known)}"
                self.problem(line, f"unknown key {key!r} ({hint})")
        missing = [repr(key) for key in required if key not in m.values]
        if missing:
            self.problem(m.line, f"missing key{'s' if len(missing) > 1 else ''} {', '.join(missing)}")

    def _wrong(self, m: YamlMap, key: str, node: Located, wanted: str) -> None:
        if node.value is not INVALID:
            self.problem(m.key_lines[key], f"{key!r} must be {wanted}, not {kind(node.value)}")

    def get_str(self, m: YamlMap, key: str, check: Callable[[str], str | None] | None = None) -> str | None:
        """The non-empty string at ``key``; ``check`` returns a reason when the string is not acceptable."""
        node = m.values.get(key)
        if node is None:
            return None
        if not isinstance(node.value, str):
            self._wrong(m, key, node, "a string")
            return None
        if not node.value.strip():
            self.problem(m.key_lines[key], f"{key!r} must not be empty")
            return None
        reason = check(node.value) if check else None
        if reason:
            self.problem(m.key_lines[key], f"{key!r}: {reason}")
            return None
        return node.value

    def get_bool(self, m: YamlMap, key: str) -> bool | None:
        """The boolean at ``key``."""
        node = m.values.get(key)
        if node is None:
            return None
        if not isinstance(node.value, bool):
            self._wrong(m, key, node, "true or false")
            return None
        return node.value

    def get_list(self, m: YamlMap, key: str, min_items: int = 0) -> tuple[Located, ...] | None:
        """The list at ``key`` (``[]`` for an empty one; null is not a list)."""
        node = m.values.get(key)
        if node is None:
            return None
        if not isinstance(node.value, tuple):
            self._wrong(m, key, node, "a list")
            return None
        if len(node.value) < min_items:
            self.problem(m.key_lines[key], f"{key!r} needs at least {min_items} entr{'y' if min_items == 1 else 'ies'}")
            return None
        return node.value

    def get_strs(self, m: YamlMap, key: str, check: Callable[[str], str | None] | None = None,
                 min_items: int = 0) -> tuple[str, ...] | None:
        """The list of non-empty, distinct strings at ``key``; ``check`` returns a reason for a bad entry."""
        items = self.get_list(m, key, min_items)
        if items is None:
            return None
        out: list[str] = []
        good = True
        for item in items:
            value = item.value
            if value is INVALID:
                good = False
                continue
            if not isinstance(value, str):
                reason: str | None = f"an entry must be a string, not {kind(value)}"
            elif not value.strip():
                reason = "an entry must not be empty"
            elif value in out:
                reason = f"duplicate entry {value!r}"
            else:
                reason = check(value) if check else None
                if reason is None:
                    out.append(value)
                    continue
            self.problem(item.line, f"{key!r}: {reason}")
            good = False
        return tuple(out) if good else None

    def get_ints(self, m: YamlMap, key: str, lo: int, hi: int) -> tuple[int, ...] | None:
        """The list of distinct integers in [lo, hi] at ``key``."""
        items = self.get_list(m, key)
        if items is None:
            return None
        out: list[int] = []
        good = True
        for item in items:
            value = item.value
            if value is INVALID:
                good = False
            elif isinstance(value, bool) or not isinstance(value, int):
                self.problem(item.line, f"{key!r}: an entry must be an integer, not {kind(value)}")
                good = False
            elif not lo <= value <= hi:
                self.problem(item.line, f"{key!r}: {value} is not in {lo}..{hi}")
                good = False
            elif value in out:
                self.problem(item.line, f"{key!r}: duplicate entry {value}")
                good = False
            else:
                out.append(value)
        return tuple(out) if good else None


def check_network(text: str) -> str | None:
    """Why ``text`` is not a network in CIDR notation (a bare address is a /32 or /128), or None."""
    try:
        ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        return f"{exc}"
    return None


# --- rules ------------------------------------------------------------------------------------------------

def default_rules_dir() -> Path:
    """The bundled ``rules/`` directory (source tree or /usr/share/chainwatch: :mod:`agent.resources`)."""
    return resources.rules_dir()


def _check_uuid(text: str) -> str | None:
    try:
        canonical = str(uuid.UUID(text))
    except ValueError:
        canonical = None
    if canonical != text:
        return (f"{text!r} is not a UUID in lowercase 8-4-4-4-12 form; make one with "
                "python3 -c 'import uuid; print(uuid.uuid4())'")
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
class _Parsed:
    rule: Rule | None
    id: str | None
    id_line: int
    name: str | None
    name_line: int


def _read_rule(path: Path, problems: list[RuleProblem]) -> _Parsed | None:
    checker = Checker(path, problems)
    if not RULE_FILE_NAME.fullmatch(path.name):
        checker.problem(1, "a rule file name is kebab-case, e.g. shell-network-connection.yaml")
    doc = checker.read()
    if doc is None:
        return None
    m = checker.mapping(doc, "a rule file")
    if m is None:
        return None
    checker.keys(m, RULE_KEYS, RULE_OPTIONAL_KEYS, hints={
        "severity_score": "it is derived from 'severity': remove it",
        "source_file": "it is set by the loader: remove it",
    })
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
    if (checker.ok and rule_id and name and description and detector and severity and maturity and mitre
            and false_positives is not None and exceptions is not None):
        rule = Rule(id=rule_id, name=name, description=description, detector=detector, severity=severity,
                    maturity=maturity, mitre=mitre, false_positives=false_positives, references=references or (),
                    exceptions=exceptions, source_file=str(path), seed=seed)
    return _Parsed(rule, rule_id, m.key_lines.get("id", 1), name, m.key_lines.get("name", 1))


def rule_files(directory: Path) -> list[Path]:
    """The rule files directly in ``directory`` (``*.yaml`` and ``*.yml``), sorted by name."""
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def _load(directory: Path | str | None, lists_dir: Path | str | None) -> tuple[RuleSet | None, list[RuleProblem]]:
    # Imported here because lists.py builds on this module's Checker and RuleProblem.
    from agent.detect.lists import default_lists_dir, read_lists

    base = Path(directory) if directory is not None else default_rules_dir()
    problems: list[RuleProblem] = []
    if not base.is_dir():
        return None, [RuleProblem(str(base), 1, "not a directory of rule files")]
    files = rule_files(base)
    if not files:
        problems.append(RuleProblem(str(base), 1, "no rule files (*.yaml, *.yml) in this directory"))
    rules: list[Rule] = []
    ids: dict[str, tuple[str, int]] = {}
    names: dict[str, tuple[str, int]] = {}
    for path in files:
        parsed = _read_rule(path, problems)
        if parsed is None:
            continue
        for value, line, seen, what in ((parsed.id, parsed.id_line, ids, "id"),
                                        (parsed.name, parsed.name_line, names, "name")):
            if value is None:
                continue
            if value in seen:
                first_file, first_line = seen[value]
                problems.append(RuleProblem(str(path), line,
                                            f"duplicate {what} {value!r} (also in {first_file}:{first_line})"))
            else:
                seen[value] = (str(path), line)
        if parsed.rule is not None:
            rules.append(parsed.rule)
    if lists_dir is None:
        # A rule directory of its own may reuse the bundled lists.
        lists_dir = base / "lists" if (base / "lists").is_dir() else default_lists_dir()
    lists = read_lists(Path(lists_dir), problems)
    problems.sort(key=lambda p: (p.file, p.line))
    if problems or lists is None:
        return None, problems
    return RuleSet(tuple(rules), lists), problems


def load_rules(directory: Path | str | None = None, lists_dir: Path | str | None = None) -> RuleSet:
    """Load and validate every rule in ``directory`` (default: :func:`default_rules_dir`).

    The lists come from ``lists_dir``, else ``directory/lists``, else the bundled ``rules/lists``.
    Raises RuleErrors with every problem found, in file and line order.
    """
    ruleset, problems = _load(directory, lists_dir)
    if ruleset is None:
        raise RuleErrors(problems)
    return ruleset


def check_rules(directory: Path | str | None = None, lists_dir: Path | str | None = None) -> list[RuleProblem]:
    """Every problem in the rules and lists of ``directory``; empty when they load."""
    return _load(directory, lists_dir)[1]
