"""The agent's import graph: no circles, and no import that runs up the layers declared here.

Every import statement in agent/**/*.py counts, wherever it is (module level, inside a function, under
TYPE_CHECKING): a type-only or deferred import still couples the two modules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

AGENT = Path(__file__).resolve().parents[2] / "agent"

# Bottom to top: a module may import from its own layer and the layers below it, never above. A module
# belongs to the layer of the longest name below that is it or a package holding it; "agent" names only the
# package itself (agent/__init__.py), so a new module that no layer names has none.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "abi",
        (
            "agent",
            "agent.abi",
            "agent.events",
            "agent.capture",
            "agent.resources",
            "agent.decode",
            "agent.recording",
            "agent.config",
            "agent.logs",
            "agent.safefile",
            "agent.btf",
            "agent.sdnotify",
            "agent.compat",
        ),
    ),
    ("ruleset", ("agent.ruleset",)),
    ("probes", ("agent.probes",)),
    ("lineage", ("agent.lineage",)),
    ("pipeline", ("agent.pipeline",)),
    ("context", ("agent.context",)),
    ("detect", ("agent.detect",)),
    ("sigma", ("agent.sigma",)),
    ("alerts", ("agent.alerts",)),
    (
        "outputs",
        (
            "agent.ocsf",
            "agent.formats",
            "agent.spool",
            "agent.sinks",
            "agent.outputs",
            "agent.health",
            "agent.quarantine",
            "agent.response",
        ),
    ),
    ("assemble", ("agent.assemble",)),
    ("commands", ("agent.daemon", "agent.doctor", "agent.cli", "agent.__main__")),
)


def modules(root: Path = AGENT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under ``root`` (a package is named without __init__)."""
    out = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph(mods: Mapping[str, Path]) -> dict[str, set[str]]:
    """module -> the agent modules it imports (``from p import m`` counts m when m is a module)."""
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            graph[name].update(t for t in targets if t in mods and t != name)
    return graph


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_of(module: str) -> int | None:
    """The index in LAYERS of ``module``'s layer, or None when no layer names it."""
    best: tuple[int, int] | None = None  # (length of the matching name, layer)
    for rank, (_, names) in enumerate(LAYERS):
        for name in names:
            inside = module == name or (name != "agent" and module.startswith(name + "."))
            if inside and (best is None or len(name) > best[0]):
                best = (len(name), rank)
    return best[1] if best is not None else None


GRAPH = import_graph(modules())


def test_the_graph_is_read() -> None:
    """The checker sees the imports it must judge (else every check below would pass on nothing)."""
    assert len(GRAPH) > 40
    assert "agent.ruleset.rules" in GRAPH["agent.ruleset.load"]
    assert "agent.detect.engine" in GRAPH["agent.assemble"]


def test_no_import_cycles() -> None:
    assert cycles(GRAPH) == []


def test_every_module_has_a_layer() -> None:
    assert [m for m in sorted(GRAPH) if layer_of(m) is None] == []


def test_no_import_runs_up_the_layers() -> None:
    upward = []
    for src, targets in sorted(GRAPH.items()):
        for dst in sorted(targets):
            src_layer, dst_layer = layer_of(src), layer_of(dst)
            if src_layer is not None and dst_layer is not None and dst_layer > src_layer:
                upward.append(f"{src} ({LAYERS[src_layer][0]}) imports {dst} ({LAYERS[dst_layer][0]})")
    assert upward == []


def test_the_checks_can_fail() -> None:
    """A circle, an upward import and a relative import are found in a made-up graph."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert layer_of("agent.ruleset.rules") == 1 and layer_of("agent.detect.engine") == 6
    assert layer_of("agent.ruleset.rules") < layer_of("agent.context")  # type: ignore[operator]
    assert layer_of("agentx") is None
    assert layer_of("agent.a_module_no_layer_names") is None and layer_of("agent") == 0


def test_relative_imports_are_resolved(tmp_path: Path) -> None:
    pkg = tmp_path / "agent" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "agent" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from . import one\n")
    (pkg / "one.py").write_text("from .two import x\nfrom .. import top\n")
    (pkg / "two.py").write_text("x = 1\n")
    (tmp_path / "agent" / "top.py").write_text("import agent.sub.one\n")
    graph = import_graph(modules(tmp_path / "agent"))
    assert graph["agent.sub"] == {"agent.sub.one"}
    assert graph["agent.sub.one"] == {"agent.sub.two", "agent", "agent.top"}
    assert cycles(graph) == [["agent.sub.one", "agent.top"]]
