"""The shared lists in ``rules/lists/*.yaml`` that detectors match against, as one typed :class:`Lists`.

Each list file is validated like a rule file: every problem is collected with its file and line
(see :class:`agent.detect.rules.Checker`), and :func:`load_lists` raises RuleErrors with all of them.

``persistence_paths.yaml`` is read by :mod:`agent.detect.persistence`; the kernel probe compiler renders its
filter from the same :class:`~agent.detect.persistence.PersistencePlaces` (``Lists.persistence``).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os.path
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from agent.abi.layout import COMM_LEN, CONTEXTS
from agent.capture import env_wanted, looks_secret
from agent.detect.persistence import KINDS as PERSISTENCE_KINDS
from agent.detect.persistence import PersistencePlaces, Place, read_places
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

LIST_FILES: Final = ("stdio.yaml", "shells.yaml", "interpreters.yaml", "tunnels.yaml", "network.yaml",
                     "persistence_paths.yaml", "contexts.yaml")
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


ROOT_MATCH_KEYS: Final = ("executables", "python_modules", "jars", "paths")
ROOT_OPTIONAL_KEYS: Final = (*ROOT_MATCH_KEYS, "subcommands", "bare", "options", "labels")
REMOTE_CACHE_MAX: Final = 4096
PACKAGE_LABELS: Final = ("name", "version", "hook")
CI_LABELS: Final = ("repository", "workflow", "run_id", "job", "job_id")


@dataclass(frozen=True)
class Invocation:
    """What an exec runs, seen through its interpreter: ``node /usr/bin/npm install`` is the script
    ``npm`` with args ``("install",)``; ``python3 -m pip install x`` is the module ``pip``."""

    kind: str  # "executable" | "script" | "module" | "jar"
    name: str
    args: tuple[str, ...]


def invocations(filename: str, argv: Sequence[str], script_interpreters: Sequence[str]) -> list[Invocation]:
    """Every way ``filename`` run with ``argv`` may name a tool: itself, and the script, module or jar it runs."""
    exe = os.path.basename(filename)
    out = [Invocation("executable", exe, tuple(argv[1:]))]
    if not any(fnmatch.fnmatchcase(exe, p) for p in script_interpreters):
        return out
    rest = list(argv[1:])
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg == "-m" and i + 1 < len(rest):
            out.append(Invocation("module", rest[i + 1], tuple(rest[i + 2:])))
            break
        if arg in ("-jar", "-cp", "-classpath", "--class-path") and i + 1 < len(rest):
            out.append(Invocation("jar", os.path.basename(rest[i + 1]), tuple(rest[i + 2:])))
            break
        if arg in ("-c", "-e", "--eval", "-p", "--print", "-r"):
            break  # inline code: no script names the tool
        if not arg.startswith("-"):
            out.append(Invocation("script", os.path.basename(arg), tuple(rest[i + 1:])))
            break
        i += 1
    return out


@dataclass(frozen=True)
class ContextRoot:
    """One way to start an install or CI context (contexts.yaml ``roots``)."""

    context: str
    executables: tuple[str, ...] = ()
    python_modules: tuple[str, ...] = ()
    jars: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    subcommands: tuple[str, ...] = ()
    bare: bool = False
    options: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()  # (attribution field, environment variable)

    @property
    def is_ci(self) -> bool:
        """A CI runner (cicd_runner_*), not a package install."""
        return self.context.startswith("cicd_runner_")

    def kernel_names(self) -> tuple[str, ...]:
        """Executable names the kernel can match on their own: exact names, with no argv condition."""
        if self.subcommands or self.options or self.bare:
            return ()
        return tuple(name for name in self.executables if not any(c in name for c in "*?["))

    def match(self, filename: str, calls: Sequence[Invocation]) -> Invocation | None:
        """The invocation by which the exec of ``filename`` (seen as ``calls``, from :func:`invocations`)
        starts this context, or None."""
        if any(fnmatch.fnmatchcase(filename, p) for p in self.paths):
            return calls[0]
        for call in calls:
            patterns = {"executable": self.executables, "script": self.executables, "module": self.python_modules,
                        "jar": self.jars}[call.kind]
            if any(fnmatch.fnmatchcase(call.name, p) for p in patterns) and self._args_match(call.args):
                return call
        return None

    def operands(self, args: Sequence[str]) -> list[str]:
        """The words after the command in a matched invocation's ``args``: what is being installed."""
        words = [a for a in args if not a.startswith("-")]
        for i, word in enumerate(words[:3]):
            if word in self.subcommands:
                return words[i + 1:]
        return [] if self.subcommands else words

    def _args_match(self, args: Sequence[str]) -> bool:
        if self.options and not any(fnmatch.fnmatchcase(a, p) for a in args for p in self.options):
            return False
        if not self.subcommands:
            return True
        words = [a for a in args if not a.startswith("-")][:3]
        if not words:
            return self.bare
        said = set(words) | {f"{a} {b}" for a, b in zip(words, words[1:])}
        return not said.isdisjoint(self.subcommands)


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
    _remote_cache: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    def context_root_for(self, filename: str, argv: Sequence[str]) -> tuple[ContextRoot, Invocation] | None:
        """The first root that the exec of ``filename`` with ``argv`` is, and how it was invoked; or None."""
        calls = invocations(filename, argv, self.script_interpreters)
        for root in self.context_roots:
            call = root.match(filename, calls)
            if call is not None:
                return root, call
        return None

    def kernel_context_names(self) -> dict[str, int]:
        """comm at exec -> context id, for the exec probe's own matching. exec sets comm to the basename of
        the path it ran, cut to 15 bytes; userspace confirms every such tag on the full path and argv."""
        out: dict[str, int] = {}
        for root in self.context_roots:
            for name in root.kernel_names():
                out.setdefault(name.encode()[:COMM_LEN - 1].decode(errors="ignore"), CONTEXTS[root.context])
        return out

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
        """True when a write to ``path`` (normalised first) means persistence."""
        return self.persistence.place_for(path) is not None

    def persistence_place(self, path: str) -> Place | None:
        """The persistence place (with its ATT&CK technique) a write to ``path`` lands in, or None."""
        return self.persistence.place_for(path)


def default_lists_dir() -> Path:
    """The bundled ``rules/lists`` directory."""
    return default_rules_dir() / "lists"


def _check_basename(text: str) -> str | None:
    if "/" in text or text != text.strip():
        return f"{text!r} must be an executable's basename (no '/', no surrounding spaces)"
    return None


def _check_absolute(text: str) -> str | None:
    return None if text.startswith("/") else f"{text!r} is not an absolute path"


def _open(directory: Path, name: str, problems: list[RuleProblem], keys: Sequence[str],
          optional: Sequence[str] = ()) -> tuple[Checker, YamlMap] | None:
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


def _read_roots(checker: Checker, m: YamlMap) -> tuple[ContextRoot, ...] | None:
    entries = checker.get_list(m, "roots", min_items=1)
    if entries is None:
        return None
    roots: list[ContextRoot] = []
    good = True
    for entry in entries:
        spec = checker.mapping(entry, "a context root")
        if spec is None:
            good = False
            continue
        before = len(checker.problems)
        checker.keys(spec, ("context",), ROOT_OPTIONAL_KEYS)
        context = checker.get_str(spec, "context", _one_of_contexts)
        matchers = {key: checker.get_strs(spec, key, _check_path_glob if key == "paths" else _check_basename)
                    for key in ROOT_MATCH_KEYS}
        if not any(matchers.values()) and len(checker.problems) == before:
            checker.problem(entry.line, f"a context root needs one of {', '.join(ROOT_MATCH_KEYS)}")
        subcommands = checker.get_strs(spec, "subcommands")
        options = checker.get_strs(spec, "options")
        bare = checker.get_bool(spec, "bare")
        labels = _read_labels(checker, spec, context)
        if len(checker.problems) > before or context is None:
            good = False
            continue
        roots.append(ContextRoot(context, executables=matchers["executables"] or (),
                                 python_modules=matchers["python_modules"] or (), jars=matchers["jars"] or (),
                                 paths=matchers["paths"] or (), subcommands=subcommands or (), bare=bool(bare),
                                 options=options or (), labels=labels))
    return tuple(roots) if good else None


def _check_path_glob(text: str) -> str | None:
    return None if text.startswith(("/", "*")) else f"{text!r} must be an absolute path or start with '*'"


def _one_of_contexts(text: str) -> str | None:
    return None if text in CONTEXTS else f"{text!r} is not a context (they are: {', '.join(CONTEXTS)})"


def _check_captured(var: str) -> str | None:
    if looks_secret(var):
        return f"{var} names a credential: chainwatch never captures token, password, secret or key variables"
    if not env_wanted(var):
        return (f"{var} is not captured at exec: add it to ENV_CAPTURE_NAMES in agent/capture.py "
                "(attribution labels only, never a secret)")
    return None


def _read_labels(checker: Checker, spec: YamlMap, context: str | None) -> tuple[tuple[str, str], ...]:
    node = spec.values.get("labels")
    if node is None:
        return ()
    labels = checker.mapping(node, "'labels'")
    if labels is None:
        return ()
    fields = CI_LABELS if context and context.startswith("cicd_runner_") else PACKAGE_LABELS
    checker.keys(labels, (), fields)
    out = []
    for field_name in labels.values:
        var = checker.get_str(labels, field_name, _check_captured)
        if var is not None and field_name in fields:
            out.append((field_name, var))
    return tuple(out)


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
    if opened := _open(directory, "persistence_paths.yaml", problems, ("prefixes",), PERSISTENCE_KINDS[1:]):
        places = read_places(*opened)

    multicall = holders = None
    if opened := _open(directory, "stdio.yaml", problems, ("multicall", "socket_holders")):
        checker, m = opened
        multicall = checker.get_strs(m, "multicall", _check_basename)
        holders = checker.get_strs(m, "socket_holders", _check_path_glob)

    roots: tuple[ContextRoot, ...] | None = None
    script_interpreters = unpackers = None
    if opened := _open(directory, "contexts.yaml", problems, ("roots", "script_interpreters", "unpackers")):
        checker, m = opened
        roots = _read_roots(checker, m)
        script_interpreters = checker.get_strs(m, "script_interpreters", _check_basename, min_items=1)
        unpackers = checker.get_strs(m, "unpackers", _check_absolute)

    if len(problems) > start:
        return None
    assert (shells is not None and interpreters is not None and parents is not None and tunnels is not None
            and cidrs is not None and irc_ports is not None and places is not None
            and roots is not None and script_interpreters is not None and unpackers is not None
            and multicall is not None and holders is not None)
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


def load_lists(directory: Path | str | None = None) -> Lists:
    """Load and validate the lists in ``directory`` (default: the bundled ``rules/lists``).

    Raises RuleErrors with every problem found.
    """
    problems: list[RuleProblem] = []
    lists = read_lists(Path(directory) if directory is not None else default_lists_dir(), problems)
    if lists is None:
        raise RuleErrors(sorted(problems, key=lambda p: (p.file, p.line)))
    return lists
