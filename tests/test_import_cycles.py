"""No import cycles among the package's modules at import time.

A module's top-level imports (not those inside functions, which run later) define an edge
`module -> imported module`; `from transmamba.a import b` counts as an edge to `transmamba.a.b` when that
is a module, else to `transmamba.a`. Importing a package runs its `__init__`, so an edge into a package's
submodule also implies an edge to each enclosing package. The graph must have no cycle (a package's
`__init__` importing its own submodules is not a cycle: submodules do not need their package's
`__init__` to have finished).

Beyond that, one layering rule is checked at every level (imports inside functions included): `inference`
(cache bookkeeping, generation, CUDA-graph capture) never imports `models`; it drives any model through its
decode interface (`step`, `layer_modes`, `step_constants`). `models` may import `inference` only inside
functions (`init_cache`, `generate`), so neither direction can close a cycle at run time."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def top_level_imports(path: Path, modules: set[str]) -> set[str]:
    """Modules of the package imported at the top level of `path` (type-checking blocks excluded)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        nodes = [node] + (list(ast.walk(node)) if isinstance(node, (ast.If, ast.Try)) else [])
        for n in nodes:
            if isinstance(n, ast.Import):
                out.update(a.name for a in n.names)
            elif isinstance(n, ast.ImportFrom):
                base = n.module or ""
                if n.level:
                    keep = package.split(".")[: len(package.split(".")) - n.level + 1]
                    base = ".".join(keep + ([base] if base else []))
                for a in n.names:
                    sub = f"{base}.{a.name}"
                    out.add(sub if sub in modules else base)
    return {m for m in out if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    files = sorted(SRC.rglob("*.py"))
    modules = {_module_name(f) for f in files}
    graph: dict[str, set[str]] = {}
    for f in files:
        name = _module_name(f)
        edges = set()
        for target in top_level_imports(f, modules):
            edges.add(target)
            parts = target.split(".")
            for i in range(1, len(parts)):  # importing a.b.c runs a/__init__ and a/b/__init__ first
                parent = ".".join(parts[:i])
                if parent in modules and not name.startswith(parent + ".") and name != parent:
                    edges.add(parent)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_graph_sees_the_package():
    graph = import_graph()
    assert len(graph) > 50
    assert {"transmamba.layers.norm", "transmamba.models.config"} <= graph["transmamba.models.lm"]
    assert "transmamba.ops.backend" in graph["transmamba.ops.ssd"]  # `from transmamba.ops import backend`


def test_cycle_finder_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, f"import cycles among top-level imports: {cycles}"


def imports_anywhere(path: Path) -> set[str]:
    """Every absolute `transmamba...` module name imported anywhere in `path` (functions included)."""
    out: set[str] = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import):
            out.update(a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom) and n.module and not n.level:
            out.update(f"{n.module}.{a.name}" for a in n.names)
    return {m for m in out if m.startswith("transmamba")}


def test_inference_never_imports_models():
    files = sorted((SRC / "transmamba" / "inference").rglob("*.py"))
    assert files
    bad = {str(f.relative_to(SRC)): sorted(m for m in imports_anywhere(f)
                                           if m.startswith("transmamba.models")) for f in files}
    assert not any(bad.values()), f"inference modules importing models: {bad}"


def test_models_import_inference_only_inside_functions():
    graph = import_graph()
    bad = {m: sorted(e for e in edges if e.startswith("transmamba.inference"))
           for m, edges in graph.items() if m.startswith("transmamba.models")}
    assert not any(bad.values()), f"models modules importing inference at import time: {bad}"
