"""The recorded graph as the notes' boxes and arrows: Graphviz DOT text, optionally rendered.

Every box is one primitive application (a :class:`~nodegrad.autodiff.Node`) with its output
shape and dtype; leaf tensors that require grad (parameters, named when a ``params`` mapping is
given) and constant inputs are boxes too, and arrows follow the data from inputs to the output.
The walk is iterative (graphs of long recurrences are deep) and stops after ``max_nodes`` boxes.

A node keeps only what its VJP reads, so its shape is read from its consumer (``Node.shapes``)
and its value, with ``values=True``, from wherever the graph kept it: the node's own output
(``saves="out"``) or a consumer's saved inputs. A value no VJP needs shows as "not kept".
With ``grads=True`` ``draw_graph`` runs one extra backward pass itself, on the still-recorded
graph, with temporary hooks that capture the cotangent reaching each node; it touches no
``.grad`` and fires none of the user's hooks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from collections import deque
from collections.abc import Mapping
from pathlib import Path

from .. import _backend as B
from ..autodiff import Node, run_backward
from ..errors import GradError
from ..io import atomic_write
from ..tensor import Tensor

_RENDERED = (".svg", ".png", ".pdf")
_COLOURS = {"op": "#dbe9f6", "param": "#fff2c2", "leaf": "#e8e8e8", "const": "#ffffff",
            "out": "#d5f0d5"}


def draw_graph(output: Tensor, path: str | os.PathLike | None = None, *, values: bool = False,
               grads: bool = False, max_nodes: int = 500,
               params: Mapping[str, Tensor] | None = None) -> str:
    """Draw the graph recorded for ``output`` as DOT text (one box per primitive application).

    ``params`` maps names to leaf tensors (``dict(model.named_parameters())``, or the module
    itself) so parameters are labelled by name. ``values=True`` adds each box's value summary
    (mean/std/min/max, or the number for a scalar), ``grads=True`` the summary of d(output)/d(box)
    (a ones cotangent for a non-scalar output), computed by one extra backward pass on the graph,
    which must not have been freed (call ``backward(retain_graph=True)`` if you ran one).
    With ``path`` ending in ``.dot`` the text is written there; ``.svg``/``.png``/``.pdf`` are
    rendered with Graphviz's ``dot`` program when it is on PATH, else the ``.dot`` file is
    written beside the target and a warning names Graphviz. Returns the DOT text.
    """
    if not isinstance(output, Tensor):
        raise TypeError(f"draw_graph: expected a Tensor output, got {type(output).__name__}")
    if not isinstance(max_nodes, int) or isinstance(max_nodes, bool) or max_nodes < 1:
        raise ValueError(f"draw_graph: max_nodes must be an integer >= 1, got {max_nodes!r}")
    suffix = None if path is None else Path(path).suffix.lower()
    if suffix is not None and suffix not in (".dot", ".gv", *_RENDERED):
        raise ValueError(f"draw_graph: cannot write {os.fspath(path)!r}; expected a path ending "
                         f"in .dot, .gv, {', '.join(_RENDERED)}")
    names = _param_names(params)
    graph = _walk(output, max_nodes)
    gradients = _capture_grads(output, graph) if grads else None
    text = _dot(output, graph, names, values, gradients)
    if path is not None:
        _write(text, Path(path))
    return text


# --- walking the graph ----------------------------------------------------------------------
class _Graph:
    """The vertices near the output (nodes and leaf tensors), in breadth-first order."""

    def __init__(self):
        self.order: list = []          # vertices shown, output first
        self.ids: dict = {}            # vertex -> index in order
        self.hidden = 0                # vertices beyond max_nodes
        self.shape: dict = {}          # vertex -> output shape, read from a consumer
        self.value: dict = {}          # vertex -> array, where the graph kept it
        self.all_nodes: list = []      # every Node reachable (for grads)
        self.leaves: list = []         # every leaf tensor reachable


def _key(t: Tensor):
    return t.node if t.node is not None else t


def _walk(output: Tensor, max_nodes: int) -> _Graph:
    g = _Graph()
    root = _key(output)
    g.shape[root] = tuple(output.shape)
    g.value[root] = output._data
    seen = {root}
    queue = deque([root])
    while queue:
        v = queue.popleft()
        if len(g.order) < max_nodes:
            g.ids[v] = len(g.order)
            g.order.append(v)
        else:
            g.hidden += 1
        if type(v) is not Node:
            g.leaves.append(v)
            continue
        g.all_nodes.append(v)
        if v.out is not None:
            g.value[v] = v.out
        for i, p in enumerate(v.parents):
            if p is None:
                continue
            g.shape.setdefault(p, tuple(v.shapes[i]))
            if v.args is not None and isinstance(v.args[i], Tensor):
                g.value.setdefault(p, v.args[i]._data)
            if type(p) is not Node:
                g.value.setdefault(p, p._data)
            if p not in seen:
                seen.add(p)
                queue.append(p)
    return g


def _dtypes(graph: _Graph) -> dict:
    """Each shown vertex's dtype: from its kept value, else from its inputs (astype: its own)."""
    out: dict = {}
    for v in graph.order:
        _dtype_of(v, graph, out)
    return out


def _dtype_of(v, graph: _Graph, memo: dict):
    """Iteratively find a dtype for ``v``: known value, astype's target, else a parent's."""
    chain = []
    cur = v
    while True:
        if cur in memo:
            dt = memo[cur]
            break
        a = graph.value.get(cur)
        if a is not None:
            dt = a.dtype
            break
        if type(cur) is not Node:
            dt = cur.dtype
            break
        if cur.prim.name == "astype":
            dt = B.np.dtype(cur.params["dtype"])
            break
        nxt = next((p for p in cur.parents if p is not None), None)
        if nxt is None:
            dt = None
            break
        chain.append(cur)
        cur = nxt
    for c in chain:
        memo[c] = dt
    memo[v] = dt
    return dt


# --- gradients ------------------------------------------------------------------------------
def _capture_grads(output: Tensor, graph: _Graph) -> dict:
    """d(output)/d(vertex) for every vertex, by one backward pass with capturing hooks."""
    if not output.requires_grad:
        raise GradError("draw_graph(grads=True): the output does not require grad and has no "
                        "graph to differentiate")
    if not B.is_float(output.dtype):
        raise GradError(f"draw_graph(grads=True): the output has dtype {output.dtype}; "
                        "gradients need a float output")
    if any(not n.alive for n in graph.all_nodes):
        raise GradError("draw_graph(grads=True): the graph was freed by a backward pass; call "
                        "backward(retain_graph=True), or draw before calling backward")
    got: dict = {}
    saved_nodes = [(n, n.hooks) for n in graph.all_nodes]
    saved_leaves = [(leaf, leaf._hooks) for leaf in graph.leaves]

    def capture(v):
        def hook(g):
            got[v] = g._data
        return hook

    try:
        for n, _ in saved_nodes:
            n.hooks = [capture(n)]
        for leaf, _ in saved_leaves:
            leaf._hooks = None
        res = run_backward([output], [output.ones_like()], retain_graph=True,
                           targets=graph.leaves, accumulate=False, allow_unused=True)
    finally:
        for n, h in saved_nodes:
            n.hooks = h
        for leaf, h in saved_leaves:
            leaf._hooks = h
    for leaf, g in zip(graph.leaves, res or []):
        if g is not None:
            got[leaf] = g._data
    return got


# --- DOT ----------------------------------------------------------------------------------
def _param_names(params) -> dict:
    if params is None:
        return {}
    if hasattr(params, "named_parameters"):
        params = dict(params.named_parameters())
    if not isinstance(params, Mapping):
        raise TypeError(f"draw_graph: params must be a mapping of names to tensors (e.g. "
                        f"dict(model.named_parameters())) or a Module, got "
                        f"{type(params).__name__}")
    names = {}
    for k, t in params.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"draw_graph: params[{k!r}] is {type(t).__name__}, not a tensor")
        names[id(t)] = str(k)
        names.setdefault(("data", id(t._data)), str(k))  # transforms re-wrap the same array
    return names


def _summary(what: str, a) -> list[str]:
    """Label lines for an array: the number for one element, else mean/std/min/max."""
    if a is None:
        return [f"{what}: not kept" if what == "value" else f"{what}: none"]
    h = B.backend_of(a).to_host(a)
    if h.size == 0:
        return [f"{what}: empty"]
    h = h.astype(B.np.float64)
    if h.size == 1:
        return [f"{what}: {float(h.reshape(())) + 0.0:.4g}"]  # + 0.0: no "-0"
    return [f"{what}: mean {h.mean() + 0.0:.3g}  std {h.std():.3g}",
            f"min {h.min() + 0.0:.3g}  max {h.max() + 0.0:.3g}"]


def _shape_str(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + (",)" if len(shape) == 1 else ")")


def _param_str(params: dict) -> str:
    parts = []
    for k, v in params.items():
        if v is None or k in ("src",):
            continue
        r = repr(v)
        if len(r) > 24:
            r = r[:21] + "..."
        parts.append(f"{k}={r}")
    return ", ".join(parts)


def _label(rows: list[str]) -> str:
    """Lines joined into a DOT double-quoted label (each line escaped)."""
    return "\\n".join(r.replace("\\", "\\\\").replace('"', '\\"') for r in rows)


def _dot(output: Tensor, graph: _Graph, names: dict, values: bool, grads: dict | None) -> str:
    dtypes = _dtypes(graph)
    lines = ["digraph nodegrad {", "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
             '  edge [color="#555555", arrowsize=0.7];']
    root = graph.order[0]
    edges = []
    consts = 0
    for v in graph.order:
        i = graph.ids[v]
        shape = graph.shape.get(v)
        dt = dtypes.get(v)
        meta = (_shape_str(shape) if shape is not None else "(?)") + (f" {dt}" if dt else "")
        if type(v) is Node:
            rows = [v.prim.name]
            ps = _param_str(v.params)
            if ps:
                rows.append(ps)
            rows.append(meta)
            fill = _COLOURS["out"] if v is root else _COLOURS["op"]
        else:
            name = names.get(id(v)) or names.get(("data", id(v._data)))
            rows = [name if name is not None else "leaf (requires grad)", meta]
            fill = _COLOURS["param" if name is not None else "leaf"]
        if values:
            rows += _summary("value", graph.value.get(v))
        if grads is not None:
            rows += _summary("grad", grads.get(v))
        extra = ", penwidth=2" if v is root else ""
        lines.append(f'  n{i} [label="{_label(rows)}", fillcolor="{fill}"{extra}];')
        if type(v) is not Node:
            continue
        for k, p in enumerate(v.parents):
            if p is not None:
                src = f"n{graph.ids[p]}" if p in graph.ids else "more"
                edges.append(f"  {src} -> n{i};")
                continue
            # an input that needs no gradient: drawn when it was a tensor (known from the saved
            # inputs, or from a non-scalar shape when the node kept none)
            const = v.args[k] if v.args is not None else None
            cshape = tuple(v.shapes[k])
            if not (isinstance(const, Tensor) or (const is None and cshape != ())):
                continue
            crows = ["constant", _shape_str(cshape)]
            if isinstance(const, Tensor):
                crows[1] += f" {const.dtype}"
                name = names.get(id(const)) or names.get(("data", id(const._data)))
                if name is not None:
                    crows[0] = name
                if values:
                    crows += _summary("value", const._data)
            lines.append(f'  c{consts} [label="{_label(crows)}", fillcolor="{_COLOURS["const"]}", '
                         'style="rounded,dashed", fontcolor="#555555"];')
            edges.append(f"  c{consts} -> n{i} [style=dashed];")
            consts += 1
    if graph.hidden:
        lines.append(f'  more [label="\u2026 {graph.hidden} more nodes", shape=plaintext, '
                     'style=""];')
    lines += edges
    lines.append("}")
    return "\n".join(lines) + "\n"


def _write(text: str, path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix in (".dot", ".gv"):
        atomic_write(path, text.encode())
        return
    dot = shutil.which("dot")
    if dot is None:
        side = path.with_suffix(".dot")
        atomic_write(side, text.encode())
        warnings.warn(f"draw_graph: Graphviz's 'dot' program is not on PATH, so {path} was not "
                      f"rendered; wrote the DOT text to {side} instead (install Graphviz, e.g. "
                      f"'apt-get install graphviz' or 'brew install graphviz', then run "
                      f"'dot -T{suffix[1:]} {side} -o {path}')", RuntimeWarning, stacklevel=3)
        return
    res = subprocess.run([dot, f"-T{suffix[1:]}"], input=text.encode(), capture_output=True,
                         timeout=120)
    if res.returncode != 0:
        msg = res.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"draw_graph: Graphviz 'dot -T{suffix[1:]}' failed: "
                           f"{msg[0] if msg else 'exit ' + str(res.returncode)}")
    atomic_write(path, res.stdout)


__all__ = ["draw_graph"]
