"""The shared lists in ``rules/lists/*.yaml`` that detectors match against, as one typed :class:`Lists`.

Each list file is validated like a rule file: every problem is collected with its file and line
(see :class:`agent.detect.rules.Checker`), and :func:`load_lists` raises RuleErrors with all of them.

``persistence_paths.yaml`` is also read by the kernel probe compiler
(``agent.probes.source.load_persistence_list``); this module only reads it.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os.path
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agent.detect.rules import (
    Checker,
    IPNetwork,
    RuleErrors,
    RuleProblem,
    YamlMap,
    check_network,
    default_rules_dir,
    in_networks,
    parse_ip,
)

LIST_FILES: Final = ("shells.yaml", "interpreters.yaml", "tunnels.yaml", "network.yaml", "persistence_paths.yaml")
TUNNEL_OPTIONAL_KEYS: Final = ("args_any", "args_prefix_any", "args_prefix_ignore_case")


@dataclass(frozen=True)
class TunnelTool:
    """A tunnelling or reverse-proxy tool: its executable names and the argv that means a tunnel.

    With neither ``args_any`` nor ``args_prefix_any``, any invocation counts. Otherwise an argv element
    must equal one of ``args_any`` or start with one of ``args_prefix_any`` (ignoring case when
    ``args_prefix_ignore_case``: socat's address types are case-insensitive, but ssh's -w and -W are not).
    """

    name: str
    executables: tuple[str, ...]
    args_any: tuple[str, ...] = ()
    args_prefix_any: tuple[str, ...] = ()
    args_prefix_ignore_case: bool = False

    def matches(self, exe: str, argv: Sequence[str]) -> bool:
        """True when ``exe`` (a path or basename) is this tool and ``argv`` opens a tunnel.

        Every argv element is tried, argv[0] included: it is the program name, which never looks like
        a tunnel argument, and so callers may pass argv with or without it.
        """
        if os.path.basename(exe) not in self.executables:
            return False
        if not self.args_any and not self.args_prefix_any:
            return True
        if any(arg in self.args_any for arg in argv):
            return True
        if self.args_prefix_ignore_case:
            prefixes = tuple(p.casefold() for p in self.args_prefix_any)
            return any(arg.casefold().startswith(prefixes) for arg in argv)
        return any(arg.startswith(self.args_prefix_any) for arg in argv)


@dataclass(frozen=True)
class Lists:
    """Every shared list, validated."""

    shells: frozenset[str]
    """Shell executable basenames (shells.yaml)."""
    interpreters: tuple[str, ...]
    """fnmatch patterns on interpreter basenames (interpreters.yaml)."""
    reverse_shell_parents: tuple[str, ...]
    """fnmatch patterns on the parent basenames of the Elastic reverse-shell rule (interpreters.yaml)."""
    tunnels: tuple[TunnelTool, ...]
    """Tunnel tools (tunnels.yaml)."""
    local_cidrs: tuple[IPNetwork, ...]
    """Networks that are not "remote": loopback, unspecified, link-local, multicast (network.yaml)."""
    irc_ports: frozenset[int]
    """Ports that mean IRC (network.yaml)."""
    persistence_prefixes: tuple[str, ...]
    """Path prefixes where a write means persistence (persistence_paths.yaml)."""
    persistence_suffixes: tuple[str, ...]
    """Path suffixes where a write means persistence (persistence_paths.yaml)."""

    def is_remote(self, addr: str) -> bool:
        """True when ``addr`` is an IP address outside ``local_cidrs`` (False when it does not parse)."""
        ip = parse_ip(addr)
        return ip is not None and not in_networks(ip, self.local_cidrs)

    def is_shell(self, exe: str) -> bool:
        """True when the basename of ``exe`` is a shell."""
        return os.path.basename(exe) in self.shells

    def is_interpreter(self, exe: str) -> bool:
        """True when the basename of ``exe`` matches an interpreter pattern."""
        name = os.path.basename(exe)
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.interpreters)

    def is_reverse_shell_parent(self, exe: str) -> bool:
        """True when the basename of ``exe`` matches a reverse-shell parent pattern."""
        name = os.path.basename(exe)
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.reverse_shell_parents)

    def tunnel_for(self, exe: str, argv: Sequence[str]) -> TunnelTool | None:
        """The first tunnel tool that ``exe`` with ``argv`` is, or None."""
        return next((tool for tool in self.tunnels if tool.matches(exe, argv)), None)

    def is_persistence_path(self, path: str) -> bool:
        """True when a write to ``path`` means persistence."""
        return path.startswith(self.persistence_prefixes) or path.endswith(self.persistence_suffixes)


def default_lists_dir() -> Path:
    """The bundled ``rules/lists`` directory."""
    return default_rules_dir() / "lists"


def _check_basename(text: str) -> str | None:
    if "/" in text or text != text.strip():
        return f"{text!r} must be an executable's basename (no '/', no surrounding spaces)"
    return None


def _check_absolute(text: str) -> str | None:
    return None if text.startswith("/") else f"{text!r} is not an absolute path"


def _open(directory: Path, name: str, problems: list[RuleProblem], keys: Sequence[str]
          ) -> tuple[Checker, YamlMap] | None:
    checker = Checker(directory / name, problems)
    if not checker.path.is_file():
        checker.problem(1, "the list file is missing")
        return None
    doc = checker.read()
    if doc is None:
        return None
    m = checker.mapping(doc, "a list file")
    if m is None:
        return None
    checker.keys(m, keys)
    return checker, m


def _read_tunnels(checker: Checker, m: YamlMap) -> tuple[TunnelTool, ...] | None:
    entries = checker.get_list(m, "tunnels", min_items=1)
    if entries is None:
        return None
    tools: list[TunnelTool] = []
    names: dict[str, int] = {}
    for entry in entries:
        spec = checker.mapping(entry, "a tunnel entry")
        if spec is None:
            continue
        checker.keys(spec, ("name", "executables"), TUNNEL_OPTIONAL_KEYS)
        name = checker.get_str(spec, "name")
        executables = checker.get_strs(spec, "executables", _check_basename, min_items=1)
        args_any = checker.get_strs(spec, "args_any")
        args_prefix_any = checker.get_strs(spec, "args_prefix_any")
        ignore_case = checker.get_bool(spec, "args_prefix_ignore_case")
        if name is None:
            continue
        if name in names:
            checker.problem(spec.key_lines["name"], f"duplicate tunnel {name!r} (first on line {names[name]})")
            continue
        names[name] = spec.key_lines["name"]
        if executables is not None:
            tools.append(TunnelTool(name, executables, args_any or (), args_prefix_any or (), bool(ignore_case)))
    return tuple(tools)


def _read_irc_ports(checker: Checker, m: YamlMap) -> frozenset[int] | None:
    entries = checker.get_list(m, "irc_ports", min_items=1)
    if entries is None:
        return None
    ports: set[int] = set()
    for entry in entries:
        value = entry.value
        if isinstance(value, int) and not isinstance(value, bool):
            lo = hi = value
        elif isinstance(value, str) and value.count("-") == 1 and all(
                part.strip().isascii() and part.strip().isdigit() for part in value.split("-")):
            lo, hi = (int(part) for part in value.split("-"))
        else:
            checker.problem(entry.line, f"'irc_ports': {value!r} is not a port or a range like 6660-6669")
            continue
        if not 1 <= lo <= hi <= 65535:
            checker.problem(entry.line, f"'irc_ports': {value!r} is not a port range within 1..65535")
            continue
        ports.update(range(lo, hi + 1))
    return frozenset(ports)


def read_lists(directory: Path, problems: list[RuleProblem]) -> Lists | None:
    """The lists in ``directory``, or None when they have problems (appended to ``problems``)."""
    start = len(problems)
    if not directory.is_dir():
        problems.append(RuleProblem(str(directory), 1, "not a directory of list files"))
        return None
    for path in sorted(directory.iterdir()):
        if path.suffix in (".yaml", ".yml") and path.name not in LIST_FILES:
            problems.append(RuleProblem(str(path), 1, f"unknown list file (the lists are: {', '.join(LIST_FILES)})"))

    shells = interpreters = parents = prefixes = suffixes = cidrs = None
    tunnels: tuple[TunnelTool, ...] | None = None
    irc_ports: frozenset[int] | None = None
    if opened := _open(directory, "shells.yaml", problems, ("shells",)):
        checker, m = opened
        shells = checker.get_strs(m, "shells", _check_basename, min_items=1)
    if opened := _open(directory, "interpreters.yaml", problems, ("interpreters", "reverse_shell_parents")):
        checker, m = opened
        interpreters = checker.get_strs(m, "interpreters", _check_basename, min_items=1)
        parents = checker.get_strs(m, "reverse_shell_parents", _check_basename, min_items=1)
    if opened := _open(directory, "tunnels.yaml", problems, ("tunnels",)):
        tunnels = _read_tunnels(*opened)
    if opened := _open(directory, "network.yaml", problems, ("local_cidrs", "irc_ports")):
        checker, m = opened
        cidrs = checker.get_strs(m, "local_cidrs", check_network, min_items=1)
        irc_ports = _read_irc_ports(checker, m)
    if opened := _open(directory, "persistence_paths.yaml", problems, ("prefixes", "suffixes")):
        checker, m = opened
        prefixes = checker.get_strs(m, "prefixes", _check_absolute, min_items=1)
        suffixes = checker.get_strs(m, "suffixes")

    if len(problems) > start:
        return None
    assert (shells is not None and interpreters is not None and parents is not None and tunnels is not None
            and cidrs is not None and irc_ports is not None and prefixes is not None and suffixes is not None)
    return Lists(
        shells=frozenset(shells),
        interpreters=interpreters,
        reverse_shell_parents=parents,
        tunnels=tunnels,
        local_cidrs=tuple(ipaddress.ip_network(c) for c in cidrs),
        irc_ports=irc_ports,
        persistence_prefixes=prefixes,
        persistence_suffixes=suffixes,
    )


def load_lists(directory: Path | str | None = None) -> Lists:
    """Load and validate the lists in ``directory`` (default: the bundled ``rules/lists``).

    Raises RuleErrors with every problem found.
    """
    problems: list[RuleProblem] = []
    lists = read_lists(Path(directory) if directory is not None else default_lists_dir(), problems)
    if lists is None:
        raise RuleErrors(sorted(problems, key=lambda p: (p.file, p.line)))
    return lists
