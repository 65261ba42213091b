"""Install and CI contexts: which package install or CI job each process belongs to, and its labels.

A context starts at a root exec that ``rules/lists/contexts.yaml`` recognises by executable path and
argv (never by comm), and covers every process the root starts. Userspace lineage decides: a forked
child takes its parent's context from the process table, which records the parent at fork, so
``setsid``, double forks and re-parenting to init change nothing. The kernel keeps the same tag per
process (bpf/process.bpf.c: set at exec for roots known by name alone, copied at fork) and reports it
in every event's header. The tagger keeps the two in step: where they differ it writes its decision
into the kernel map, and where it lacks the lineage (a lost fork event) it takes the kernel's.

Nesting: a package install inside a CI job becomes the context (with the job as ``outer``, for
attribution); anything inside a package install stays in that install.

Attribution labels (package name, CI repository, ...) come from the environment captured at exec,
nearest process first. They are labels only: missing or forged values change no decision.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from agent.abi.layout import CONTEXTS
from agent.events import FLAG_SEEDED, Event, Exec, Fork
from agent.lineage.identity import ProcessKey, process_key
from agent.lineage.table import Process, ProcessTable
from agent.ruleset import contexts
from agent.ruleset.contexts import ContextRoot
from agent.ruleset.lists import Lists

TAG: Final = "context"  # Process.tags key
_KERNEL_TAG: Final = "context_kernel"  # what we last wrote into the kernel map for the process

# (pid, start_time, context id, root pid, root start); context id 0 clears.
KernelWriter = Callable[[int, int, int, int, int], None]


@dataclass(frozen=True)
class Context:
    """A process's install or CI context: its name, its root process and the root rule."""

    name: str  # package_install_npm, cicd_runner_gitlab, ...
    root: ProcessKey
    root_start: int  # the root's start time, CLOCK_BOOTTIME ns, as the kernel reports it
    rule: ContextRoot | None = None  # None when only the kernel told us
    operands: tuple[str, ...] = ()  # what the root was asked to install (`npm install ./x.tgz`: ./x.tgz)
    outer: Context | None = None  # the CI job a package install runs in

    @property
    def is_ci(self) -> bool:
        """A CI runner context, not a package install (:func:`agent.ruleset.contexts.is_ci`)."""
        return contexts.is_ci(self.name)

    @property
    def kind(self) -> str:
        """The manager (npm, pip, ...) or provider (github_actions, ...)."""
        return contexts.kind(self.name)

    def ci(self) -> Context | None:
        """The CI context this context is or runs in."""
        return self if self.is_ci else self.outer


def context_of(proc: Process | None) -> Context | None:
    """The context the tagger gave ``proc``."""
    ctx = proc.tags.get(TAG) if proc is not None else None
    return ctx if isinstance(ctx, Context) else None


class ContextTagger:
    """A pipeline stage after the process table: gives each process its context."""

    def __init__(self, lists: Lists, table: ProcessTable, kernel: KernelWriter | None = None):
        self.lists = lists
        self.table = table
        self.kernel = kernel
        self.roots = 0
        self.kernel_writes = 0
        self.kernel_fallbacks = 0

    def __call__(self, event: Event, proc: Process | None) -> None:
        if proc is None:
            return
        if isinstance(event, Fork):
            self._inherit(proc, event)
        elif isinstance(event, Exec):
            self._on_exec(proc, event)
        if self.kernel is not None and proc.exited_at is None:
            self._sync_kernel(proc, event)

    def _parent_context(self, proc: Process) -> Context | None:
        parent = self.table.get(proc.parent_key) if proc.parent_key is not None else None
        return context_of(parent)

    def _inherit(self, proc: Process, event: Event) -> None:
        if TAG in proc.tags:
            return
        parent = self.table.get(proc.parent_key) if proc.parent_key is not None else None
        if parent is not None:
            proc.tags[TAG] = context_of(parent)
        else:
            proc.tags[TAG] = self._from_kernel(event)

    def _from_kernel(self, event: Event) -> Context | None:
        """The kernel's context for a process whose lineage we do not hold."""
        name = contexts.CONTEXT_NAMES.get(event.context)
        if name is None:
            return None
        self.kernel_fallbacks += 1
        root = process_key(event.context_root_pid, event.context_root_start)
        held = context_of(self.table.get(root))
        return held if held is not None and held.name == name else Context(name, root, event.context_root_start)

    def _on_exec(self, proc: Process, event: Exec) -> None:
        current = context_of(proc) if TAG in proc.tags else None
        if TAG not in proc.tags:
            # No fork seen (a seeded process, or a lost event): the parent's, else the kernel's.
            held_parent = proc.parent_key is not None and proc.parent_key in self.table
            current = self._parent_context(proc) if held_parent else self._from_kernel(event)
        found = self.lists.context_root_for(event.filename, event.args)
        if found is not None and (current is None or (current.is_ci and not found[0].is_ci)):
            rule, call = found
            current = Context(
                rule.context,
                proc.key,
                event.start_time,
                rule,
                tuple(rule.operands(call.args)),
                outer=current if current is not None and current.is_ci else None,
            )
            self.roots += 1
            proc.keep = True  # the table evicts a live context root last
        proc.tags[TAG] = current

    def _sync_kernel(self, proc: Process, event: Event) -> None:
        ctx = context_of(proc)
        want = (CONTEXTS[ctx.name], ctx.root.pid, ctx.root_start) if ctx else (0, 0, 0)
        seen = (event.context, event.context_root_pid, event.context_root_start)
        if event.flags & FLAG_SEEDED:
            seen = (-1, 0, 0)  # a snapshot, not the kernel's view: write unless already written
        if want == seen or proc.tags.get(_KERNEL_TAG) == want:
            return
        if seen[0] <= 0 and not want[0]:
            return  # neither side has a context
        assert self.kernel is not None
        self.kernel(proc.pid, proc.start_time, *want)
        proc.tags[_KERNEL_TAG] = want
        self.kernel_writes += 1

    def stats(self) -> dict[str, int]:
        """Counters for the stats line."""
        return {
            "context_roots": self.roots,
            "context_kernel_writes": self.kernel_writes,
            "context_kernel_fallbacks": self.kernel_fallbacks,
        }


# ---------------------------------------------------------------------- attribution

# pip unpacks a requirement from an index into /tmp/pip-install-<random>/<name>_<32 hex>/. (A local sdist
# goes to /tmp/pip-req-build-<random>/, which names nothing: the sdist's own name is used then.)
_PIP_BUILD_DIR: Final = re.compile(r"/pip-install-[^/]+/([A-Za-z0-9_.\-]+?)_[0-9a-f]{32}/")
# An archive named <name>-<version>.<ext>: sdists, npm tarballs, gems.
_SDIST: Final = re.compile(
    r"^([A-Za-z0-9_.\-]+?)-(\d[A-Za-z0-9_.+!\-]*)\.(?:tar\.gz|tgz|zip|tar\.bz2|whl|gem|deb|rpm)$"
)
_PIP_HOOKS: Final = (
    "get_requires_for_build_wheel",
    "prepare_metadata_for_build_wheel",
    "build_wheel",
    "get_requires_for_build_editable",
    "build_editable",
    "build_sdist",
)


def _chain(table: ProcessTable, key: ProcessKey, ctx: Context) -> list[Process]:
    """The alerting process and its ancestors up to the context root (nearest first)."""
    proc = table.get(key)
    chain = [proc] if proc is not None else []
    for ancestor in table.ancestry(key):
        chain.append(ancestor)
        if ancestor.key == ctx.root:
            break
    return chain


def _labels(chain: list[Process], rule: ContextRoot | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for field, var in rule.labels if rule else ():
        value = next((p.env[var] for p in chain if p.env.get(var)), "")
        if value:
            out[field] = value
    return out


def _requirement(operands: tuple[str, ...]) -> dict[str, str]:
    """Name and version from the first thing an installer was asked for (``./pkg``, ``pkg-1.0.tar.gz``, ``pkg==1``)."""
    for word in operands[:1]:
        base = os.path.basename(word.rstrip("/"))
        if m := _SDIST.match(base):
            return {"name": m.group(1), "version": m.group(2)}
        if "==" in word:
            name, _, version = word.partition("==")
            return {"name": name, "version": version}
        if base and base not in (".", ".."):
            return {"name": base}
    return {}


def _from_argv(chain: list[Process], ctx: Context) -> dict[str, str]:
    """Package name and hook from build directories and scripts in argv (pip, gem, ...), nearest first."""
    out: dict[str, str] = {}
    for proc in chain:
        for arg in proc.args:
            if "name" not in out and (m := _PIP_BUILD_DIR.search(arg)):
                out["name"] = m.group(1)
            if "hook" not in out:
                base = os.path.basename(arg)
                if base in ("setup.py", "extconf.rb", "build.rs") or arg in _PIP_HOOKS:
                    out["hook"] = arg if arg in _PIP_HOOKS else base
    for field, value in _requirement(ctx.operands).items():
        out.setdefault(field, value)
    return out


def attribution(table: ProcessTable, key: ProcessKey, ctx: Context | None) -> dict[str, Any]:
    """The alert's ``supply_chain`` object for a signal of process ``key`` in context ``ctx``."""
    if ctx is None:
        return {"context": None}
    chain = _chain(table, key, ctx)
    out: dict[str, Any] = {"context": ctx.name}
    root = table.get(ctx.root)
    if root is not None:
        out["root"] = {"pid": root.pid, "executable": root.filename, "args": list(root.args)}
    if not ctx.is_ci:
        package = {"manager": ctx.kind, **_labels(chain, ctx.rule)}
        for field, value in _from_argv(chain, ctx).items():
            package.setdefault(field, value)
        out["package"] = package
    ci = ctx.ci()
    if ci is not None:
        ci_chain = chain if ci is ctx else _chain(table, key, ci)
        out["ci"] = {"provider": ci.kind, **_labels(ci_chain, ci.rule)}
    return out
