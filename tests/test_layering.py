"""The package's import graph: no circles, and the file format below the techniques.

Every ``import`` / ``from ... import`` of ``nncompress`` modules counts, at module level or
inside a function (a lazy import is still a dependency). A package ``__init__`` is the
package's own node."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
TECHNIQUES = ("quantize", "prune", "decompose", "distill", "models", "sparse", "recipes")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(target: str, modules: set[str]) -> str | None:
    """The longest known module that ``target`` names (``a.b.c`` -> ``a.b`` for a name)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def import_graph() -> dict[str, set[str]]:
    files = sorted((SRC / "nncompress").rglob("*.py"))
    modules = {_module_name(f) for f in files}
    graph: dict[str, set[str]] = {}
    for f in files:
        name = _module_name(f)
        package = name if f.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(f.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for t in targets:
                if t.startswith("nncompress"):
                    hit = _resolve(t, modules)
                    if hit and hit != name:
                        edges.add(hit)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
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


def _package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    def pkg(m):
        return ".".join(m.split(".")[:2])

    out: dict[str, set[str]] = {}
    for a, bs in graph.items():
        out.setdefault(pkg(a), set()).update(pkg(b) for b in bs if pkg(b) != pkg(a))
    return out


def test_no_import_cycles_between_packages():
    assert _cycles(_package_graph(import_graph())) == []


def test_no_import_cycles_between_modules():
    graph = import_graph()
    # A package __init__ re-exports its modules, and a module importing a sibling through
    # the package name would make every such pair a cycle; drop edges into a package's own
    # __init__ from inside that package.
    pruned = {a: {b for b in bs if not a.startswith(b + ".")} for a, bs in graph.items()}
    assert _cycles(pruned) == []


def test_format_imports_no_technique():
    graph = import_graph()
    bad = sorted((m, d) for m, deps in graph.items() if m.startswith("nncompress.format")
                 for d in deps if d.split(".")[1:2] and d.split(".")[1] in TECHNIQUES)
    assert bad == []


def test_graph_walker_sees_lazy_imports():
    graph = import_graph()
    assert "nncompress.format.records" in graph["nncompress.format.model_io"]
    assert "nncompress.format.records" in graph["nncompress.models.registry"]  # a lazy import
