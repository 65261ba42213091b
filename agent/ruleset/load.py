"""Loading ``rules/`` from disk: every rule file and the shared lists, validated as a whole into a RuleSet.

Every problem in the directory (each with its file, line and reason) is collected before loading fails.
"""

from __future__ import annotations

from pathlib import Path

from agent import resources
from agent.ruleset.lists import Lists, read_lists
from agent.ruleset.rules import Rule, RuleSet, read_rule
from agent.ruleset.yamlcheck import RuleErrors, RuleProblem


def default_rules_dir() -> Path:
    """The bundled ``rules/`` directory (source tree or /usr/share/chainwatch: :mod:`agent.resources`)."""
    return resources.rules_dir()


def default_lists_dir() -> Path:
    """The bundled ``rules/lists`` directory."""
    return default_rules_dir() / "lists"


def rule_files(directory: Path) -> list[Path]:
    """The rule files directly in ``directory`` (``*.yaml`` and ``*.yml``), sorted by name."""
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def _load(directory: Path | str | None, lists_dir: Path | str | None) -> tuple[RuleSet | None, list[RuleProblem]]:
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
        parsed = read_rule(path, problems)
        if parsed is None:
            continue
        for value, line, seen, what in (
            (parsed.id, parsed.id_line, ids, "id"),
            (parsed.name, parsed.name_line, names, "name"),
        ):
            if value is None:
                continue
            if value in seen:
                first_file, first_line = seen[value]
                problems.append(
                    RuleProblem(str(path), line, f"duplicate {what} {value!r} (also in {first_file}:{first_line})")
                )
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


def load_lists(directory: Path | str | None = None) -> Lists:
    """Load and validate the lists in ``directory`` (default: the bundled ``rules/lists``).

    Raises RuleErrors with every problem found.
    """
    problems: list[RuleProblem] = []
    lists = read_lists(Path(directory) if directory is not None else default_lists_dir(), problems)
    if lists is None:
        raise RuleErrors(sorted(problems, key=lambda p: (p.file, p.line)))
    return lists
