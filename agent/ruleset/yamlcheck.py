"""One YAML reader for ``rules/``: every value keeps its line, and every problem is collected with its file
and line, so one run of ``chainwatch rules check`` shows everything there is to fix.

The YAML is read with PyYAML's compose API rather than ``safe_load``: the node tree keeps the line of
each key, which is what a problem report needs. :class:`Checker` reads one file and checks its values;
the rule and list readers build on it, and the Sigma loader reports through the same :class:`RuleProblem`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Final

# PyYAML ships no type information and the project does not depend on types-PyYAML: without the stubs
# the import is untyped, with them the ignore is unused. Everything from yaml is handled as Any below.
import yaml  # type: ignore[import-untyped, unused-ignore]

# A technique or sub-technique id. [0-9] and not \d: \d also matches non-ASCII digits.
MITRE_ID: Final = re.compile(r"T[0-9]{4}(\.[0-9]{3})?")


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
        super().__init__(
            f"{count} problem{'s' if count != 1 else ''} in the rules:\n" + "\n".join(str(p) for p in self.problems)
        )


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

    def keys(
        self, m: YamlMap, required: Collection[str], optional: Collection[str] = (), hints: dict[str, str] | None = None
    ) -> None:
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

    def get_strs(
        self, m: YamlMap, key: str, check: Callable[[str], str | None] | None = None, min_items: int = 0
    ) -> tuple[str, ...] | None:
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


# --- value checks shared by the rule and list files (each returns why the text is not acceptable, or None)


def check_basename(text: str) -> str | None:
    """An executable's basename."""
    if "/" in text or text != text.strip():
        return f"{text!r} must be an executable's basename (no '/', no surrounding spaces)"
    return None


def check_absolute(text: str) -> str | None:
    """An absolute path."""
    return None if text.startswith("/") else f"{text!r} is not an absolute path"


def check_path_glob(text: str) -> str | None:
    """An fnmatch pattern on a full path."""
    return None if text.startswith(("/", "*")) else f"{text!r} must be an absolute path or start with '*'"
