"""The shared lists in ``rules/lists/*.yaml`` that detectors match against, as one typed :class:`Lists`.

Each list file is validated like a rule file: every problem is collected with its file and line
(see :class:`agent.ruleset.yamlcheck.Checker`), and :func:`agent.ruleset.load.load_lists` raises RuleErrors
with all of them.

``persistence_paths.yaml`` is read by :mod:`agent.ruleset.persistence` and ``contexts.yaml`` by
:mod:`agent.ruleset.contexts`; the kernel probe compiler renders its filter from the same
:class:`~agent.ruleset.persistence.PersistencePlaces` (``Lists.persistence``).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os.path
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from agent.ruleset.contexts import (
    ContextRoot,
    Invocation,
    invocations,
    kernel_context_names,
    name_matches,
    read_roots,
    root_for,
)
from agent.ruleset.net import IPNetwork, check_network, in_networks, parse_ip
from agent.ruleset.persistence import KINDS as PERSISTENCE_KINDS
from agent.ruleset.persistence import PersistencePlaces, Place, read_places
from agent.ruleset.yamlcheck import Checker, RuleProblem, YamlMap, check_absolute, check_basename, check_path_glob

LIST_FILES: Final = (
    "stdio.yaml",
    "shells.yaml",
    "interpreters.yaml",
    "tunnels.yaml",
    "network.yaml",
    "persistence_paths.yaml",
    "contexts.yaml",
)
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


REMOTE_CACHE_MAX: Final = 4096
ROOT_NAME_CACHE_MAX: Final = 4096


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
    persistence: PersistencePlaces
    """Places where a write means persistence (persistence_paths.yaml)."""
    context_roots: tuple[ContextRoot, ...] = ()
    """Execs that start an install or CI context (contexts.yaml)."""
    script_interpreters: tuple[str, ...] = ()
    """fnmatch patterns on interpreters whose script names the tool (contexts.yaml)."""
    unpackers: frozenset[str] = frozenset()
    """Package-manager executables whose own persistence writes are unpacking a package (contexts.yaml)."""
    multicall: frozenset[str] = frozenset({"busybox", "toybox"})
    """Multi-call binaries that run the applet argv names (stdio.yaml)."""
    socket_holders: tuple[str, ...] = ()
    """fnmatch patterns on the full executable paths that legitimately give a connection or pty to a shell
    (stdio.yaml)."""
    _remote_cache: dict[str, bool] = field(default_factory=dict, init=False, compare=False, repr=False)
    _root_name_cache: dict[tuple[str, str], bool] = field(default_factory=dict, init=False, compare=False, repr=False)

    def context_root_for(self, filename: str, argv: Sequence[str]) -> tuple[ContextRoot, Invocation] | None:
        """The first root that the exec of ``filename`` with ``argv`` is, and how it was invoked; or None."""
        calls = invocations(filename, argv, self.script_interpreters)
        if not any(
            self._names_a_root(kind, name)
            for kind, name in [("path", filename)] + [(call.kind, call.name) for call in calls]
        ):
            return None  # the common case, decided without a pattern once the name has been seen
        return root_for(self.context_roots, self.script_interpreters, filename, argv)

    def _names_a_root(self, kind: str, name: str) -> bool:
        """Whether some root's ``kind`` patterns match ``name`` (before any argv condition). Memoized: every exec
        asks, and matching each root's patterns cost ~60 us per exec (bench/RESULTS.md, exec storm)."""
        cache = self._root_name_cache
        known = cache.get((kind, name))
        if known is None:
            known = any(fnmatch.fnmatchcase(name, p) for root in self.context_roots for p in root.patterns(kind))
            if len(cache) >= ROOT_NAME_CACHE_MAX:
                cache.clear()  # bounded: a spray of names costs matching again, never memory
            cache[(kind, name)] = known
        return known

    def kernel_context_names(self) -> dict[str, int]:
        """comm at exec -> context id, for the exec probe's own matching (:func:`contexts.kernel_context_names`)."""
        return kernel_context_names(self.context_roots)

    def is_remote(self, addr: str) -> bool:
        """True when ``addr`` is an IP address outside ``local_cidrs`` (False when it does not parse)."""
        cache = self._remote_cache
        known = cache.get(addr)
        if known is None:
            ip = parse_ip(addr)
            known = ip is not None and not in_networks(ip, self.local_cidrs)
            if len(cache) >= REMOTE_CACHE_MAX:
                cache.clear()  # bounded: an address spray costs parsing again, never memory
            cache[addr] = known
        return known

    def is_shell(self, exe: str) -> bool:
        """True when the basename of ``exe`` is a shell."""
        return os.path.basename(exe) in self.shells

    def program(self, exe: str, argv: Sequence[str]) -> str:
        """What ``exe`` run as ``argv`` is, by name: its basename, or a multi-call binary's applet
        (`busybox wget` is "wget", `/bin/sh -> busybox` run as "sh" is "sh")."""
        name = os.path.basename(exe)
        if name not in self.multicall:
            return name
        for arg in argv[:2]:
            applet = os.path.basename(arg)
            if applet and applet not in self.multicall:
                return applet
        return name

    def is_socket_holder(self, exe: str) -> bool:
        """True when ``exe`` (a full path) legitimately hands connections or ptys to shells (stdio.yaml)."""
        return bool(exe) and any(fnmatch.fnmatchcase(exe, pattern) for pattern in self.socket_holders)

    def is_interpreter(self, exe: str) -> bool:
        """True when the basename of ``exe`` matches an interpreter pattern."""
        return name_matches(os.path.basename(exe), self.interpreters)

    def is_reverse_shell_parent(self, exe: str) -> bool:
        """True when the basename of ``exe`` matches a reverse-shell parent pattern."""
        return name_matches(os.path.basename(exe), self.reverse_shell_parents)

    def tunnel_for(self, exe: str, argv: Sequence[str]) -> TunnelTool | None:
        """The first tunnel tool that ``exe`` with ``argv`` is, or None."""
        name = os.path.basename(exe)
        if not any(name in tool.executables for tool in self.tunnels):
            return None  # the common case: one pass over the names, without argv
        return next((tool for tool in self.tunnels if tool.matches(exe, argv)), None)

    def is_persistence_path(self, path: str) -> bool:
        """True when a write to ``path`` (normalised first) means persistence."""
        return self.persistence.place_for(path) is not None

    def persistence_place(self, path: str) -> Place | None:
        """The persistence place (with its ATT&CK technique) a write to ``path`` lands in, or None."""
        return self.persistence.place_for(path)


def _open(
    directory: Path, name: str, problems: list[RuleProblem], keys: Sequence[str], optional: Sequence[str] = ()
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
    checker.keys(m, keys, optional)
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
        executables = checker.get_strs(spec, "executables", check_basename, min_items=1)
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
        elif (
            isinstance(value, str)
            and value.count("-") == 1
            and all(part.strip().isascii() and part.strip().isdigit() for part in value.split("-"))
        ):
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

    shells = interpreters = parents = cidrs = None
    places: PersistencePlaces | None = None
    tunnels: tuple[TunnelTool, ...] | None = None
    irc_ports: frozenset[int] | None = None
    if opened := _open(directory, "shells.yaml", problems, ("shells",)):
        checker, m = opened
        shells = checker.get_strs(m, "shells", check_basename, min_items=1)
    if opened := _open(directory, "interpreters.yaml", problems, ("interpreters", "reverse_shell_parents")):
        checker, m = opened
        interpreters = checker.get_strs(m, "interpreters", check_basename, min_items=1)
        parents = checker.get_strs(m, "reverse_shell_parents", check_basename, min_items=1)
    if opened := _open(directory, "tunnels.yaml", problems, ("tunnels",)):
        tunnels = _read_tunnels(*opened)
    if opened := _open(directory, "network.yaml", problems, ("local_cidrs", "irc_ports")):
        checker, m = opened
        cidrs = checker.get_strs(m, "local_cidrs", check_network, min_items=1)
        irc_ports = _read_irc_ports(checker, m)
    if opened := _open(directory, "persistence_paths.yaml", problems, ("prefixes",), PERSISTENCE_KINDS[1:]):
        places = read_places(*opened)

    multicall = holders = None
    if opened := _open(directory, "stdio.yaml", problems, ("multicall", "socket_holders")):
        checker, m = opened
        multicall = checker.get_strs(m, "multicall", check_basename)
        holders = checker.get_strs(m, "socket_holders", check_path_glob)

    roots: tuple[ContextRoot, ...] | None = None
    script_interpreters = unpackers = None
    if opened := _open(directory, "contexts.yaml", problems, ("roots", "script_interpreters", "unpackers")):
        checker, m = opened
        roots = read_roots(checker, m)
        script_interpreters = checker.get_strs(m, "script_interpreters", check_basename, min_items=1)
        unpackers = checker.get_strs(m, "unpackers", check_absolute)

    if len(problems) > start:
        return None
    assert (
        shells is not None
        and interpreters is not None
        and parents is not None
        and tunnels is not None
        and cidrs is not None
        and irc_ports is not None
        and places is not None
        and roots is not None
        and script_interpreters is not None
        and unpackers is not None
        and multicall is not None
        and holders is not None
    )
    return Lists(
        shells=frozenset(shells),
        interpreters=interpreters,
        reverse_shell_parents=parents,
        tunnels=tunnels,
        local_cidrs=tuple(ipaddress.ip_network(c) for c in cidrs),
        irc_ports=irc_ports,
        persistence=places,
        context_roots=roots,
        script_interpreters=script_interpreters,
        unpackers=frozenset(unpackers),
        multicall=frozenset(multicall),
        socket_holders=holders,
    )
