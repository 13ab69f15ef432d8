"""The engine's import graph: no circles, and lower layers never import higher ones.

Every ``import`` counts, also those inside functions (a lazy import hides a circle, it does
not remove it)."""

import ast
import pathlib

PKG = pathlib.Path(__file__).resolve().parents[1] / "nodegrad"
CORE = ("errors", "_backend", "autodiff", "tensor", "batching", "primitive")


def _module(path: pathlib.Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: pathlib.Path) -> set:
    """Modules of the package that ``path`` imports, resolved to absolute names."""
    mod = _module(path)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("nodegrad"):
                continue
            for alias in node.names:  # `from . import shape` names a module
                sub = f"{target}.{alias.name}"
                out.add(sub if (PKG.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                        else target)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("nodegrad")}
    return out


def _graph(files) -> dict:
    return {_module(f): _imports(f) - {_module(f)} for f in files}


def test_engine_and_ops_have_no_import_circle():
    files = [PKG / f"{m}.py" for m in CORE] + sorted((PKG / "ops").glob("*.py"))
    graph = _graph(files)
    graph["nodegrad.ops"] -= {m for m in graph if m.startswith("nodegrad.ops.")}  # re-exports
    state: dict = {}

    def visit(m, path):
        state[m] = "open"
        for d in sorted(graph.get(m, ())):
            if d not in graph:
                continue
            assert state.get(d) != "open", "import circle: " + " -> ".join(path + [d])
            if d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_core_layers_import_only_lower_ones():
    graph = _graph([PKG / f"{m}.py" for m in CORE])
    for i, m in enumerate(CORE):
        higher = {f"nodegrad.{h}" for h in CORE[i + 1:]}
        bad = graph[f"nodegrad.{m}"] & (higher | {"nodegrad.ops"})
        bad |= {d for d in graph[f"nodegrad.{m}"] if d.startswith("nodegrad.ops.")}
        assert not bad, f"nodegrad.{m} imports higher layers {sorted(bad)}"
