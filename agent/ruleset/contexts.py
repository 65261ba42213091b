"""Install and CI contexts as the rules declare them: the context ids, and the roots that start one.

The ids are the kernel's (``agent.abi.layout.CONTEXTS``, also ``CTX_*`` in the generated C header):
package installs below ``CONTEXT_CI_BASE``, CI runners from it. :func:`is_ci` is the one answer to
"is this a CI context?"; the kernel asks the same of the id (``>= CONTEXT_CI_BASE``, bpf/process.bpf.c).

A root (``rules/lists/contexts.yaml`` ``roots``) is recognised by executable path and argv, never by comm;
:func:`kernel_context_names` gives the kernel the roots it can recognise by name alone at exec.
"""

from __future__ import annotations

import fnmatch
import functools
import os.path
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from agent.abi.layout import COMM_LEN, CONTEXT_CI_BASE, CONTEXTS
from agent.capture import env_wanted, looks_secret
from agent.ruleset.yamlcheck import Checker, YamlMap, check_basename, check_path_glob

CONTEXT_NAMES: Final = {value: name for name, value in CONTEXTS.items()}
ROOT_MATCH_KEYS: Final = ("executables", "python_modules", "jars", "paths")
ROOT_OPTIONAL_KEYS: Final = (*ROOT_MATCH_KEYS, "subcommands", "bare", "options", "labels")
PACKAGE_LABELS: Final = ("name", "version", "hook")
CI_LABELS: Final = ("repository", "workflow", "run_id", "job", "job_id")


def is_ci(context: str) -> bool:
    """True when ``context`` (a name in CONTEXTS) is a CI runner, False for a package install."""
    return CONTEXTS[context] >= CONTEXT_CI_BASE


def kind(context: str) -> str:
    """The manager (npm, pip, ...) or CI provider (github_actions, ...) of ``context``."""
    return context.removeprefix("cicd_runner_").removeprefix("package_install_")


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
    if not name_matches(exe, tuple(script_interpreters)):
        return out
    rest = list(argv[1:])
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg == "-m" and i + 1 < len(rest):
            out.append(Invocation("module", rest[i + 1], tuple(rest[i + 2 :])))
            break
        if arg in ("-jar", "-cp", "-classpath", "--class-path") and i + 1 < len(rest):
            out.append(Invocation("jar", os.path.basename(rest[i + 1]), tuple(rest[i + 2 :])))
            break
        if arg in ("-c", "-e", "--eval", "-p", "--print", "-r"):
            break  # inline code: no script names the tool
        if not arg.startswith("-"):
            out.append(Invocation("script", os.path.basename(arg), tuple(rest[i + 1 :])))
            break
        i += 1
    return out


@functools.lru_cache(maxsize=4096)
def name_matches(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether ``name`` matches one of the fnmatch ``patterns``. Memoized, bounded: every exec asks it of its
    program (and of its parent) for several lists."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


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
        """A CI runner, not a package install (:func:`is_ci`)."""
        return is_ci(self.context)

    def kernel_names(self) -> tuple[str, ...]:
        """Executable names the kernel can match on their own: exact names, with no argv condition."""
        if self.subcommands or self.options or self.bare:
            return ()
        return tuple(name for name in self.executables if not any(c in name for c in "*?["))

    def patterns(self, kind: str) -> tuple[str, ...]:
        """The fnmatch patterns that name this root for an invocation ``kind``, or "path" for the exec'd file."""
        return {
            "path": self.paths,
            "executable": self.executables,
            "script": self.executables,
            "module": self.python_modules,
            "jar": self.jars,
        }[kind]

    def match(self, filename: str, calls: Sequence[Invocation]) -> Invocation | None:
        """The invocation by which the exec of ``filename`` (seen as ``calls``, from :func:`invocations`)
        starts this context, or None."""
        if any(fnmatch.fnmatchcase(filename, p) for p in self.patterns("path")):
            return calls[0]
        for call in calls:
            if any(fnmatch.fnmatchcase(call.name, p) for p in self.patterns(call.kind)) and self._args_match(call.args):
                return call
        return None

    def operands(self, args: Sequence[str]) -> list[str]:
        """The words after the command in a matched invocation's ``args``: what is being installed."""
        words = [a for a in args if not a.startswith("-")]
        for i, word in enumerate(words[:3]):
            if word in self.subcommands:
                return words[i + 1 :]
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


def root_for(
    roots: Sequence[ContextRoot], script_interpreters: Sequence[str], filename: str, argv: Sequence[str]
) -> tuple[ContextRoot, Invocation] | None:
    """The first of ``roots`` that the exec of ``filename`` with ``argv`` is, and how it was invoked; or None."""
    calls = invocations(filename, argv, script_interpreters)
    for root in roots:
        call = root.match(filename, calls)
        if call is not None:
            return root, call
    return None


def kernel_context_names(roots: Sequence[ContextRoot]) -> dict[str, int]:
    """comm at exec -> context id, for the exec probe's own matching. exec sets comm to the basename of
    the path it ran, cut to 15 bytes; userspace confirms every such tag on the full path and argv."""
    out: dict[str, int] = {}
    for root in roots:
        for name in root.kernel_names():
            out.setdefault(name.encode()[: COMM_LEN - 1].decode(errors="ignore"), CONTEXTS[root.context])
    return out


def read_roots(checker: Checker, m: YamlMap) -> tuple[ContextRoot, ...] | None:
    """The ``roots`` of an opened contexts.yaml, or None (each problem reported with its line)."""
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
        matchers = {
            key: checker.get_strs(spec, key, check_path_glob if key == "paths" else check_basename)
            for key in ROOT_MATCH_KEYS
        }
        if not any(matchers.values()) and len(checker.problems) == before:
            checker.problem(entry.line, f"a context root needs one of {', '.join(ROOT_MATCH_KEYS)}")
        subcommands = checker.get_strs(spec, "subcommands")
        options = checker.get_strs(spec, "options")
        bare = checker.get_bool(spec, "bare")
        labels = _read_labels(checker, spec, context)
        if len(checker.problems) > before or context is None:
            good = False
            continue
        roots.append(
            ContextRoot(
                context,
                executables=matchers["executables"] or (),
                python_modules=matchers["python_modules"] or (),
                jars=matchers["jars"] or (),
                paths=matchers["paths"] or (),
                subcommands=subcommands or (),
                bare=bool(bare),
                options=options or (),
                labels=labels,
            )
        )
    return tuple(roots) if good else None


def _one_of_contexts(text: str) -> str | None:
    return None if text in CONTEXTS else f"{text!r} is not a context (they are: {', '.join(CONTEXTS)})"


def _check_captured(var: str) -> str | None:
    if looks_secret(var):
        return f"{var} names a credential: chainwatch never captures token, password, secret or key variables"
    if not env_wanted(var):
        return (
            f"{var} is not captured at exec: add it to ENV_CAPTURE_NAMES in agent/capture.py "
            "(attribution labels only, never a secret)"
        )
    return None


def _read_labels(checker: Checker, spec: YamlMap, context: str | None) -> tuple[tuple[str, str], ...]:
    node = spec.values.get("labels")
    if node is None:
        return ()
    labels = checker.mapping(node, "'labels'")
    if labels is None:
        return ()
    fields = CI_LABELS if context is not None and is_ci(context) else PACKAGE_LABELS
    checker.keys(labels, (), fields)
    out = []
    for field_name in labels.values:
        var = checker.get_str(labels, field_name, _check_captured)
        if var is not None and field_name in fields:
            out.append((field_name, var))
    return tuple(out)
