"""Load Sigma rules (YAML as published) from directories: parse with pySigma, map fields, compile.

Every file under each directory (recursively, ``*.yml``/``*.yaml``, hidden directories skipped) ends
in one of three places:

* **loaded**: a rule chainwatch evaluates (:class:`SigmaRules.rules`);
* **unsupported**: a valid rule chainwatch cannot evaluate: another logsource (auditd, builtin
  syslog, Windows...), a field its events do not carry, a modifier it does not implement, a
  correlation document (and the rules only it uses), or a deprecated rule. Filter documents in a
  rule's own file are applied by pySigma. Reported with file, line and reason
  (:class:`SigmaRules.unsupported`); the agent still starts;
* **problems**: a file that is not a valid Sigma rule (YAML or pySigma errors, no id, a duplicate
  id). Like a bad native rule, these stop startup (:class:`RuleErrors`).

A loaded rule becomes a chainwatch :class:`Rule`: id, title as name, level as severity
(informational and low 21, medium 47, high 73, critical 99), ``attack.tNNNN`` tags as MITRE ids, and
a correlation family from its tags (see :func:`family_of`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml  # type: ignore[import-untyped, unused-ignore]
from sigma.collection import SigmaCollection
from sigma.exceptions import SigmaError
from sigma.rule import SigmaRule
from sigma.rule.attributes import SigmaLevel, SigmaStatus

from agent import resources
from agent.ruleset.catalog import SIGMA_DETECTORS
from agent.ruleset.rules import Rule
from agent.ruleset.yamlcheck import RuleErrors, RuleProblem
from agent.sigma.compile import Gate, Matcher, Unsupported, compile_rule
from agent.sigma.fields import CATEGORIES, pipeline

LEVELS: Final = {"informational": "low", "low": "low", "medium": "medium", "high": "high", "critical": "critical"}
MATURITIES: Final = {"stable": "stable", "test": "test", "experimental": "experimental"}
TECHNIQUE: Final = re.compile(r"t[0-9]{4}(\.[0-9]{3})?")


def default_sigma_dir() -> Path:
    """The bundled ``rules/sigma`` directory (the seed rule, verbatim from SigmaHQ), found like every resource."""
    return resources.rules_dir() / "sigma"


@dataclass(frozen=True)
class SigmaRuleEntry:
    """A loaded Sigma rule: chainwatch's view of it, its logsource category and its compiled predicate."""

    rule: Rule
    category: str  # process_creation | network_connection | file_event
    matcher: Matcher
    gate: Gate | None = None  # a necessary condition on the executable (agent.sigma.compile.Gate)


@dataclass(frozen=True)
class SigmaRules:
    """The Sigma rules chainwatch evaluates, and the ones it cannot (with why)."""

    rules: tuple[SigmaRuleEntry, ...] = ()
    unsupported: tuple[RuleProblem, ...] = ()
    by_category: dict[str, tuple[SigmaRuleEntry, ...]] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        grouped: dict[str, list[SigmaRuleEntry]] = {}
        for entry in self.rules:
            grouped.setdefault(entry.category, []).append(entry)
        object.__setattr__(self, "by_category", {k: tuple(v) for k, v in grouped.items()})


def family_of(tactics: Iterable[str], category: str) -> str:
    """The correlation family (agent.detect.correlate) of a Sigma rule.

    From its ATT&CK tactic tags first: command-and-control is c2, persistence is persistence,
    defense-evasion is evasion. Otherwise a network_connection rule is c2 (a connection a rule calls
    suspicious is a possible command channel, like the seed's bash to a remote address), and any other
    rule is "other": it alerts on its own level and joins incidents, without the amplification.
    """
    names = {t.replace("_", "-") for t in tactics}
    if "command-and-control" in names:
        return "c2"
    if "persistence" in names:
        return "persistence"
    if "defense-evasion" in names:
        return "evasion"
    return "c2" if category == "network_connection" else "other"


def _line(text: str, needle: str) -> int:
    """The 1-based line of the first occurrence of ``needle`` in ``text`` (1 when absent)."""
    if needle:
        index = text.find(needle)
        if index >= 0:
            return text.count("\n", 0, index) + 1
    return 1


def _error_line(exc: BaseException, text: str) -> int:
    source = getattr(exc, "source", None)
    line = getattr(source, "line", None)
    if isinstance(line, int) and line > 0:
        return line
    mark = getattr(exc, "problem_mark", None)
    return int(mark.line) + 1 if mark is not None else 1


def sigma_files(directory: Path) -> list[Path]:
    """Every ``*.yml``/``*.yaml`` under ``directory``, sorted, outside hidden directories (.git, .github)."""
    out = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(root) / f for f in files if f.endswith((".yml", ".yaml")) and not f.startswith(".")]
    return sorted(out)


class _Loader:
    def __init__(self) -> None:
        self.pipeline = pipeline()
        self.entries: list[SigmaRuleEntry] = []
        self.unsupported: list[RuleProblem] = []
        self.problems: list[RuleProblem] = []
        self.ids: dict[str, str] = {}

    def directory(self, directory: Path) -> None:
        if not directory.is_dir():
            self.problems.append(RuleProblem(str(directory), 1, "not a directory of Sigma rules"))
            return
        for path in sigma_files(directory):
            self.file(path)

    def file(self, path: Path) -> None:
        where = str(path)
        try:
            text = path.read_bytes().decode("utf-8")
        except OSError as exc:
            self.problems.append(RuleProblem(where, 1, f"cannot read the file: {exc.strerror or exc}"))
            return
        except UnicodeDecodeError:
            self.problems.append(RuleProblem(where, 1, "the file is not UTF-8 text"))
            return
        try:
            collection = SigmaCollection.from_yaml(text, collect_errors=True)
        except (SigmaError, yaml.YAMLError, ValueError, TypeError, AttributeError, RecursionError) as exc:
            self.problems.append(RuleProblem(where, _error_line(exc, text), f"not a Sigma rule: {exc}"))
            return
        # pySigma lists a rule's errors both on the rule and on its collection: report each once.
        rule_errors = {str(e) for item in collection.rules for e in item.errors}
        for error in collection.errors:
            if str(error) not in rule_errors:
                self.problems.append(RuleProblem(where, _error_line(error, text), f"invalid Sigma: {error}"))
        if not collection.rules and not collection.errors:
            self.problems.append(RuleProblem(where, 1, "the file holds no Sigma rule"))
        output = {id(item) for item in collection.get_output_rules()}
        for item in collection.rules:
            if not isinstance(item, SigmaRule):
                kind = type(item).__name__.removeprefix("Sigma")
                self.unsupported.append(
                    RuleProblem(
                        where,
                        _line(text, "correlation:") if kind == "CorrelationRule" else 1,
                        f"{kind} documents are not evaluated by chainwatch",
                    )
                )
            elif id(item) not in output:
                # Alone it would alert on every event the correlation only counts.
                self.unsupported.append(
                    RuleProblem(
                        where,
                        _line(text, item.title),
                        f"rule {item.title!r} only feeds a correlation (generate: false), which is not evaluated",
                    )
                )
            else:
                self.rule(item, where, text)

    def rule(self, rule: SigmaRule, where: str, text: str) -> None:
        if rule.errors:
            for error in rule.errors:
                self.problems.append(RuleProblem(where, _error_line(error, text), f"invalid Sigma rule: {error}"))
            return
        if rule.id is None:
            self.problems.append(RuleProblem(where, 1, "a Sigma rule needs an id: alerts carry it as rule.id"))
            return
        rule_id = str(rule.id)
        if rule_id in self.ids:
            self.problems.append(
                RuleProblem(
                    where, _line(text, rule_id), f"duplicate Sigma rule id {rule_id} (also in {self.ids[rule_id]})"
                )
            )
            return
        self.ids[rule_id] = where
        status = str(rule.status) if rule.status is not None else ""
        if rule.status in (SigmaStatus.DEPRECATED, SigmaStatus.UNSUPPORTED):
            self.unsupported.append(RuleProblem(where, _line(text, "status:"), f"status {status}: not loaded"))
            return
        source = rule.logsource
        category = CATEGORIES.get(source.category or "")
        if source.product != "linux" or source.service is not None or category is None:
            described = ", ".join(
                f"{k}={v}"
                for k, v in (("product", source.product), ("category", source.category), ("service", source.service))
                if v
            )
            self.unsupported.append(
                RuleProblem(
                    where,
                    _line(text, "logsource:"),
                    f"logsource {described} is not evaluated: chainwatch evaluates product=linux with category "
                    f"{', '.join(sorted(CATEGORIES))}",
                )
            )
            return
        try:
            self.pipeline.apply(rule)
            matcher, gate = compile_rule(rule, category)
        except Unsupported as exc:
            self.unsupported.append(RuleProblem(where, _line(text, exc.needle), exc.reason))
            return
        except SigmaError as exc:
            self.problems.append(RuleProblem(where, _error_line(exc, text), f"invalid Sigma rule: {exc}"))
            return
        self.entries.append(SigmaRuleEntry(self.convert(rule, category, where, status), category, matcher, gate))

    def convert(self, rule: SigmaRule, category: str, where: str, status: str) -> Rule:
        tags = [(t.namespace, t.name.lower()) for t in rule.tags]
        techniques = tuple(dict.fromkeys(n.upper() for ns, n in tags if ns == "attack" and TECHNIQUE.fullmatch(n)))
        tactics = [n for ns, n in tags if ns == "attack" and not TECHNIQUE.fullmatch(n)]
        level = str(rule.level) if isinstance(rule.level, SigmaLevel) else "medium"
        return Rule(
            id=str(rule.id),
            name=rule.title or str(rule.id),
            description=rule.description or rule.title,
            detector=SIGMA_DETECTORS[category],
            severity=LEVELS.get(level, "medium"),
            maturity=MATURITIES.get(status, "experimental"),
            mitre=techniques,
            false_positives=tuple(str(f) for f in rule.falsepositives),
            references=tuple(str(r) for r in rule.references),
            source_file=where,
            family=family_of(tactics, category),
            ruleset="sigma",
        )


def read_sigma(directories: Sequence[str | Path]) -> tuple[SigmaRules, list[RuleProblem]]:
    """Every Sigma rule under ``directories``, the unsupported ones, and the problems (errors)."""
    loader = _Loader()
    for directory in directories:
        loader.directory(Path(directory))
    key: Any = lambda p: (p.file, p.line)  # noqa: E731
    return (
        SigmaRules(tuple(loader.entries), tuple(sorted(loader.unsupported, key=key))),
        sorted(loader.problems, key=key),
    )


def load_sigma(directories: Sequence[str | Path]) -> SigmaRules:
    """Load the Sigma rules under ``directories``; raises RuleErrors when any file is not a valid rule."""
    rules, problems = read_sigma(directories)
    if problems:
        raise RuleErrors(problems)
    return rules
