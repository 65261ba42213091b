"""The one place the pipeline is put together: ruleset + process table + alert sinks (+ kernel handles).

decode -> process table -> context tagger -> taps -> consumers -> detection -> alert builder -> response -> sinks.
The daemon, replay and the tests all call :func:`assemble`, so a new stage is one edit here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from agent.alerts import AlertBuilder, Host
from agent.context import ContextTagger
from agent.detect.engine import DetectionEngine, SignalSource
from agent.detect.exeid import for_lists
from agent.lineage.table import ProcessTable
from agent.pipeline import Consumer, Pipeline
from agent.ruleset.rules import RuleSet

if TYPE_CHECKING:
    from agent.sigma import SigmaRules

AlertOut = Callable[[dict[str, Any]], None]


class KernelContexts(Protocol):
    """The kernel's side of context tagging (agent.probes.loader.Sensor): the root names it matches at exec,
    and the per-process tag the tagger corrects."""

    def set_context_executables(self, names: dict[str, int]) -> None: ...

    def write_context(self, pid: int, start_time: int, context: int, root_pid: int, root_start: int) -> None: ...


def assemble(
    ruleset: RuleSet | None,
    table: ProcessTable,
    sinks: Sequence[AlertOut] = (),
    *,
    host: Host,
    boot_offset_ns: int = 0,
    kernel: KernelContexts | None = None,
    module_loads_from_exec: bool = False,
    sigma: SigmaRules | None = None,
    exe_identity: bool = False,
    respond: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    taps: Iterable[Consumer] = (),
    consumers: Iterable[Consumer] = (),
) -> Pipeline:
    """The pipeline for ``table``: with a ruleset, context tagging and detection whose alerts (``host``'s, at
    ``boot_offset_ns`` from CLOCK_BOOTTIME to Unix time) go through ``respond`` to every sink; without one, only
    the process table, ``taps`` and ``consumers`` (replay without --alerts).

    ``kernel`` keeps the kernel's context tags in step; ``exe_identity`` names programs by the executed file
    (live only: a recording replayed on another host has other inodes); ``module_loads_from_exec`` derives module
    loads from insmod/modprobe execs when the kernel has no module tracepoints.
    """
    if ruleset is None:
        return Pipeline(table, module_loads_from_exec=module_loads_from_exec, taps=taps, consumers=consumers)
    outs = list(sinks)

    def deliver(alert: dict[str, Any]) -> None:
        alert = respond(alert) if respond is not None else alert
        for out in outs:
            out(alert)

    sources: list[SignalSource] = []
    if sigma is not None and sigma.rules:
        from agent.sigma import SigmaDetector  # pySigma is imported only when Sigma rules are loaded

        sources.append(SigmaDetector(sigma, table))
    engine = DetectionEngine(
        ruleset,
        table,
        AlertBuilder(host, table, boot_offset_ns, deliver),
        sources=sources,
        exe_identity=for_lists(ruleset.lists) if exe_identity else None,
    )
    if kernel is not None:
        kernel.set_context_executables(ruleset.lists.kernel_context_names())
    tagger = ContextTagger(ruleset.lists, table, kernel.write_context if kernel is not None else None)
    return Pipeline(
        table,
        module_loads_from_exec=module_loads_from_exec,
        taps=taps,
        consumers=consumers,
        tagger=tagger,
        detection=engine,
    )
