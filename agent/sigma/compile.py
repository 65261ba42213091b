"""A parsed Sigma condition tree -> one Python predicate over :class:`EventFields`, built once at load.

pySigma has already applied the modifiers: ``contains``/``startswith``/``endswith`` are wildcards in a
SigmaString, ``base64``/``base64offset``/``wide``/``utf16*``/``windash`` are encoded or expanded values,
``cidr``, ``re``, ``gt``/``gte``/``lt``/``lte``/``neq``, ``exists`` and ``fieldref`` are typed values,
``all`` made a value list AND-linked and the item-level ``neq`` a NOT. This module turns each leaf into
a matcher and each AND/OR/NOT into a short-circuiting combination.

Semantics (as the Sigma specification and SigmaHQ's rules use them):

* strings compare case-insensitively (``cased`` makes them case-sensitive); ``*`` and ``?`` are
  wildcards; a plain string compares the whole value;
* ``re`` searches the value (unanchored, case-sensitive unless ``|i``; RE2 syntax); with ``contains``,
  ``startswith`` or ``endswith`` the expression pySigma rewrote must match the whole value;
* numbers compare numerically with numeric fields and as decimal text with string fields;
* ``null`` matches a field the event does not have (or an empty one);
* a keyword (a value with no field) is a full-text term: it matches anywhere in one of the category's
  string fields (fields.KEYWORD_FIELDS).

Anything else raises :class:`Unsupported` with the reason, and the rule is reported.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from sigma.conditions import (
    ConditionAND,
    ConditionFieldEqualsValueExpression,
    ConditionNOT,
    ConditionOR,
    ConditionValueExpression,
)
from sigma.modifiers import (
    SigmaContainsModifier,
    SigmaEndswithModifier,
    SigmaExpandModifier,
    SigmaModifier,
    SigmaStartswithModifier,
    SigmaTimestampModifier,
    reverse_modifier_mapping,
)
from sigma.policy.profiles import SafePolicy
from sigma.rule import SigmaDetection, SigmaDetectionItem, SigmaRule
from sigma.types import (
    CompareOperators,
    Placeholder,
    SigmaBool,
    SigmaCasedString,
    SigmaCIDRExpression,
    SigmaCompareExpression,
    SigmaExists,
    SigmaExpansion,
    SigmaFieldReference,
    SigmaNull,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaRegularExpressionFlag,
    SigmaString,
    SpecialChars,
)

from agent.sigma.fields import FIELDS, INTERNAL, KEYWORD_FIELDS, UNSUPPORTED, EventFields

Matcher = Callable[[EventFields], bool]
TextTest = Callable[[str], bool]

_RE_FLAGS: Final = {
    SigmaRegularExpressionFlag.IGNORECASE: re.IGNORECASE,
    SigmaRegularExpressionFlag.MULTILINE: re.MULTILINE,
    SigmaRegularExpressionFlag.DOTALL: re.DOTALL,
}
_ANCHORING: Final = (SigmaContainsModifier, SigmaStartswithModifier, SigmaEndswithModifier)


class Unsupported(Exception):
    """The rule uses something chainwatch cannot evaluate. ``needle`` is text to find its line by."""

    def __init__(self, reason: str, needle: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.needle = needle


def _items(detection: SigmaDetection) -> Iterable[SigmaDetectionItem]:
    for item in detection.detection_items:
        if isinstance(item, SigmaDetection):
            yield from _items(item)
        else:
            yield item


def _modifier_name(modifier: type[SigmaModifier[Any, Any]]) -> str:
    return reverse_modifier_mapping.get(modifier.__name__, modifier.__name__)


def check_items(rule: SigmaRule, category: str) -> set[int]:
    """Reject fields and modifiers chainwatch cannot evaluate (after the field mapping).

    Returns the ids of the regular expressions that pySigma anchored with contains/startswith/endswith,
    which must match the whole value.
    """
    known = FIELDS[category]
    anchored: set[int] = set()
    for detection in rule.detection.detections.values():
        for item in _items(detection):
            name = item.field
            if name is not None and name not in INTERNAL:
                why = UNSUPPORTED.get(name) or f"chainwatch's {category} events have no such field"
                raise Unsupported(
                    f"field {name!r} is not supported: {why} (supported: {', '.join(sorted(known))})", name
                )
            for modifier in item.modifiers:
                if issubclass(modifier, SigmaExpandModifier):
                    raise Unsupported("the 'expand' modifier (%placeholder% lists) is not supported", "|expand")
                if issubclass(modifier, SigmaTimestampModifier):
                    mod = _modifier_name(modifier)
                    raise Unsupported(f"the timestamp modifier {mod!r} is not supported", f"|{mod}")
            if any(issubclass(m, _ANCHORING) for m in item.modifiers):
                anchored.update(id(v) for v in item.value if isinstance(v, SigmaRegularExpression))
    return anchored


class Compiler:
    """Compiles the condition trees of one rule of one category."""

    def __init__(self, category: str, anchored: set[int]) -> None:
        self.category = category
        self.anchored = anchored
        self.internal = FIELDS[category]

    def compile(self, node: object) -> Matcher:
        """The predicate for a postprocessed condition tree node."""
        if isinstance(node, ConditionAND):
            return _all([self.compile(arg) for arg in node.args])
        if isinstance(node, ConditionOR):
            return self.any_of(node.args)
        if isinstance(node, ConditionNOT):
            inner = self.compile(node.args[0])
            return lambda f: not inner(f)
        if isinstance(node, ConditionFieldEqualsValueExpression):
            return self.field(node.field, node.value)
        if isinstance(node, ConditionValueExpression):
            return self.keyword(node.value)
        raise Unsupported(f"condition element {type(node).__name__} is not supported")

    def any_of(self, args: Iterable[object]) -> Matcher:
        """OR. String values of one field (a Sigma value list, windash and base64offset expansions) become
        one test per field: a set, prefix and suffix tuples and one alternation, evaluated in C."""
        groups: dict[tuple[str, bool], list[tuple[str, str]]] = {}
        rest: list[Matcher] = []
        for arg in args:
            strings = self._strings(arg)
            if strings is None:
                rest.append(self.compile(arg))
                continue
            name, values = strings
            for value in values:
                cased = isinstance(value, SigmaCasedString)
                groups.setdefault((name, cased), []).append(self.classify(value))
        for (name, cased), tests in groups.items():
            rest.insert(0, self._field_text(name, cased, _combine(tests)))
        return _any(rest)

    def _strings(self, node: object) -> tuple[str, list[SigmaString]] | None:
        """(field, plain string values) when ``node`` compares one field with strings only."""
        if not isinstance(node, ConditionFieldEqualsValueExpression):
            return None
        values = node.value.values if isinstance(node.value, SigmaExpansion) else [node.value]
        if all(isinstance(v, SigmaString) for v in values):
            return node.field, [v for v in values if isinstance(v, SigmaString)]
        return None

    @staticmethod
    def _field_text(name: str, cased: bool, test: TextTest) -> Matcher:
        if cased:
            return lambda f: (t := f.text(name)) is not None and test(t)
        return lambda f: (t := f.lower(name)) is not None and test(t)

    # ------------------------------------------------------------ leaves

    def keyword(self, value: object) -> Matcher:
        """A value with no field: true when any of the category's string fields matches it."""
        if isinstance(value, SigmaExpansion):
            return _any([self.keyword(v) for v in value.values])
        fields = KEYWORD_FIELDS[self.category]
        if isinstance(value, SigmaString | SigmaNumber):
            # A keyword is a full-text term: it matches anywhere in a field, as in a SIEM's search.
            term = copy.copy(value) if isinstance(value, SigmaString) else SigmaString(str(value.number))
            term_parts = list(term.s)
            if not term_parts or term_parts[0] is not SpecialChars.WILDCARD_MULTI:
                term_parts.insert(0, SpecialChars.WILDCARD_MULTI)
            if term_parts[-1] is not SpecialChars.WILDCARD_MULTI:
                term_parts.append(SpecialChars.WILDCARD_MULTI)
            term.s = term_parts
            test, cased = self.string(term)
        elif isinstance(value, SigmaRegularExpression):
            test, cased = self.regex(value), True
        else:
            raise Unsupported(f"a keyword of type {type(value).__name__} is not supported")
        if cased:
            return lambda f: any((t := f.text(n)) is not None and test(t) for n in fields)
        return lambda f: any((t := f.lower(n)) is not None and test(t) for n in fields)

    def field(self, name: str, value: object) -> Matcher:
        """``name`` (internal) compared with one Sigma value."""
        if isinstance(value, SigmaExpansion):
            if all(isinstance(v, SigmaString) for v in value.values):
                return self.any_of([ConditionFieldEqualsValueExpression(name, value)])
            return _any([self.field(name, v) for v in value.values])
        if isinstance(value, SigmaNull):
            return lambda f: f.get(name) in (None, "")
        if isinstance(value, SigmaExists):
            want = bool(value.exists)
            return lambda f: (f.get(name) is not None) == want
        if isinstance(value, SigmaBool):
            text = "true" if value.boolean else "false"
            return lambda f: f.lower(name) == text
        if isinstance(value, SigmaNumber):
            number = value.number
            as_text = str(number)
            return lambda f: _number_equals(f.get(name), number, as_text)
        if isinstance(value, SigmaString):
            test, cased = self.string(value)
            if cased:
                return lambda f: (t := f.text(name)) is not None and test(t)
            return lambda f: (t := f.lower(name)) is not None and test(t)
        if isinstance(value, SigmaRegularExpression):
            rtest = self.regex(value)
            return lambda f: (t := f.text(name)) is not None and rtest(t)
        if isinstance(value, SigmaCIDRExpression):
            network = value.network
            return lambda f: _in_network(f.text(name), network)
        if isinstance(value, SigmaCompareExpression):
            return self.compare(name, value)
        if isinstance(value, SigmaFieldReference):
            return self.fieldref(name, value)
        raise Unsupported(f"values of type {type(value).__name__} are not supported")

    def string(self, value: SigmaString) -> tuple[TextTest, bool]:
        """A test on the field's text, and whether it wants the original case (else lower-cased text)."""
        return _combine([self.classify(value)]), isinstance(value, SigmaCasedString)

    @staticmethod
    def classify(value: SigmaString) -> tuple[str, str]:
        """What a Sigma string asks: (eq|starts|ends|contains|any|regex, text or pattern), lower-cased
        unless ``cased``. ``*`` and ``?`` inside the string make it a whole-value regex."""
        cased = isinstance(value, SigmaCasedString)
        parts = list(value.s)
        if any(isinstance(p, Placeholder) for p in parts):
            raise Unsupported("placeholders (%name%) are not supported", "%")

        def norm(s: str) -> str:
            return s if cased else s.lower()

        multi = SpecialChars.WILDCARD_MULTI
        inner = parts[1:-1] if len(parts) > 2 else []
        simple = (
            all(isinstance(p, str) for p in inner)
            and SpecialChars.WILDCARD_SINGLE not in parts
            and sum(1 for p in parts if isinstance(p, str)) <= 1
        )
        if simple:
            text = norm(next((p for p in parts if isinstance(p, str)), ""))
            lead = bool(parts) and parts[0] is multi
            tail = len(parts) > 1 and parts[-1] is multi
            if parts == [multi]:
                return "any", ""
            if lead and tail:
                return "contains", text
            if lead:
                return "ends", text
            if tail:
                return "starts", text
            return "eq", text
        return "regex", "".join(
            re.escape(norm(p)) if isinstance(p, str) else (".*" if p is multi else ".") for p in parts
        )

    def regex(self, value: SigmaRegularExpression) -> TextTest:
        """A ``re`` value: searched, or matched whole when pySigma anchored it (see the module docstring).

        Evaluated with RE2, the engine pySigma validates rules with: linear time whatever the command line,
        so neither a careless rule nor an attacker's argv can stall the agent with backtracking."""
        flags = 0
        for flag in value.flags:
            flags |= _RE_FLAGS[flag]
        source = str(value.regexp)
        engine = SafePolicy.regex_engine
        try:
            compiled = engine.compile(source, flags)
        except engine.error as exc:
            raise Unsupported(f"regular expression {source!r} is not valid for RE2: {exc}", source[:30]) from exc
        if id(value) in self.anchored:
            return lambda t: compiled.fullmatch(t) is not None
        return lambda t: compiled.search(t) is not None

    def compare(self, name: str, value: SigmaCompareExpression) -> Matcher:
        """gt/gte/lt/lte/neq on a numeric value."""
        number = value.number.number
        op = value.op
        tests: dict[CompareOperators, Callable[[float], bool]] = {
            CompareOperators.LT: lambda x: x < number,
            CompareOperators.LTE: lambda x: x <= number,
            CompareOperators.GT: lambda x: x > number,
            CompareOperators.GTE: lambda x: x >= number,
            CompareOperators.NEQ: lambda x: x != number,
        }
        test = tests[op]
        return lambda f: (x := _as_number(f.get(name))) is not None and test(x)

    def fieldref(self, name: str, value: SigmaFieldReference) -> Matcher:
        """``fieldref``: this field's value equals (starts with, ends with, contains) another field's."""
        other = self.internal.get(value.field, value.field)
        if other not in INTERNAL:
            why = UNSUPPORTED.get(value.field) or f"chainwatch's {self.category} events have no such field"
            raise Unsupported(f"field {value.field!r} (fieldref) is not supported: {why}", value.field)
        starts, ends = value.starts_with, value.ends_with

        def match(f: EventFields) -> bool:
            mine, theirs = f.lower(name), f.lower(other)
            if mine is None or theirs is None:
                return False
            if starts and ends:
                return theirs in mine
            if starts:
                return mine.startswith(theirs)
            if ends:
                return mine.endswith(theirs)
            return mine == theirs

        return match


def _all(parts: list[Matcher]) -> Matcher:
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        a, b = parts
        return lambda f: a(f) and b(f)

    def match(f: EventFields) -> bool:
        for p in parts:
            if not p(f):
                return False
        return True

    return match


def _any(parts: list[Matcher]) -> Matcher:
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        a, b = parts
        return lambda f: a(f) or b(f)

    def match(f: EventFields) -> bool:
        for p in parts:
            if p(f):
                return True
        return False

    return match


def _combine(tests: list[tuple[str, str]]) -> TextTest:
    """One text test for string tests OR-ed together (see :meth:`Compiler.classify`)."""
    kinds: dict[str, list[str]] = {}
    for kind, text in tests:
        kinds.setdefault(kind, []).append(text)
    if "any" in kinds:
        return lambda t: True
    checks: list[TextTest] = []
    if "eq" in kinds:
        equal = frozenset(kinds["eq"])
        checks.append(equal.__contains__)
    if "starts" in kinds:
        prefixes = tuple(kinds["starts"])
        checks.append(lambda t: t.startswith(prefixes))
    if "ends" in kinds:
        suffixes = tuple(kinds["ends"])
        checks.append(lambda t: t.endswith(suffixes))
    if "contains" in kinds:
        needles = kinds["contains"]
        if len(needles) == 1:
            needle = needles[0]
            checks.append(lambda t: needle in t)
        else:
            search = re.compile("|".join(re.escape(n) for n in needles), re.DOTALL).search
            checks.append(lambda t: search(t) is not None)
    if "regex" in kinds:
        whole = re.compile("|".join(f"(?:{p})" for p in kinds["regex"]), re.DOTALL).fullmatch
        checks.append(lambda t: whole(t) is not None)
    if len(checks) == 1:
        return checks[0]

    def match(t: str) -> bool:
        for check in checks:
            if check(t):
                return True
        return False

    return match


def _as_number(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return value
    try:
        return float(str(value))
    except ValueError:
        return None


def _number_equals(value: object, number: float, as_text: str) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return value == number
    return value is not None and str(value) == as_text


def _in_network(text: str | None, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    if not text:
        return False
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    # A dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d; it is the same host.
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return ip in network or (mapped is not None and mapped in network)


@dataclass(frozen=True)
class Gate:
    """A necessary condition on the executable, lower-cased: it equals one of ``equal`` or ends with one of
    ``suffixes``. Lets the detector skip, with a few dict lookups, the rules an exec cannot match."""

    equal: frozenset[str]
    suffixes: frozenset[str]


GATE_FIELD: Final = "process.executable"


def _gate_values(node: object) -> list[SigmaString] | None:
    """The plain string values of ``node`` when it tests only the executable (one value or a value list)."""
    if isinstance(node, ConditionOR):
        out: list[SigmaString] = []
        for arg in node.args:
            values = _gate_values(arg)
            if values is None:
                return None
            out += values
        return out
    if isinstance(node, ConditionFieldEqualsValueExpression) and node.field == GATE_FIELD:
        leaves = node.value.values if isinstance(node.value, SigmaExpansion) else [node.value]
        if all(isinstance(v, SigmaString) and not isinstance(v, SigmaCasedString) for v in leaves):
            return [v for v in leaves if isinstance(v, SigmaString)]
    return None


def gate_of(tree: object) -> Gate | None:
    """A Gate from a top-level AND conjunct (or the whole tree) that is an Image equals/endswith list."""
    for node in tree.args if isinstance(tree, ConditionAND) else [tree]:
        values = _gate_values(node)
        if not values:
            continue
        tests = [Compiler.classify(v) for v in values]
        if all(kind in ("eq", "ends") and text for kind, text in tests):
            return Gate(frozenset(t for k, t in tests if k == "eq"), frozenset(t for k, t in tests if k == "ends"))
    return None


def compile_rule(rule: SigmaRule, category: str) -> tuple[Matcher, Gate | None]:
    """The predicate of a whole (field-mapped) rule, its conditions OR-ed, and its executable gate if it has
    one (a single condition only). Raises Unsupported."""
    anchored = check_items(rule, category)
    compiler = Compiler(category, anchored)
    parts = []
    trees = []
    for condition in rule.detection.parsed_condition:
        tree = condition.parsed
        if tree is None:
            raise Unsupported("the condition selects nothing")
        trees.append(tree)
        parts.append(compiler.compile(tree))
    if not parts:
        raise Unsupported("the rule has no condition")
    return _any(parts), gate_of(trees[0]) if len(trees) == 1 else None
