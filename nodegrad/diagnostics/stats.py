r"""What happens inside a network on one batch: per-layer statistics of activations, of the
gradients that reach them, and of the parameters and their gradients.

:func:`layer_stats` runs one forward and one backward pass with a forward hook on every leaf
module that computes something (pass-through modules — ``Identity``, ``Flatten``, ``Dropout`` —
are skipped) and a gradient hook (``Tensor.register_hook``) on each layer's output. It returns a
:class:`LayerReport`: one :class:`LayerRecord` per layer in forward order, each with mean, std and
histogram of the layer's output, of d(loss)/d(output), and of every parameter and its gradient.
Parameter gradients are taken with :func:`nodegrad.autodiff.grad`, so no ``.grad`` is touched;
hooks are removed, and the model's modes, buffers (batch-norm statistics) and the CPU random
state are restored afterwards.

Units that a nonlinearity acts on are counted:

- **dead ReLUs** (``relu``, ``leaky_relu``/``PReLU``): a unit — one feature of a linear layer, one
  channel × position of a convolution (every non-batch index of the output) — is dead when it is
  ≤ 0 for *every* sample of the batch: a ReLU then passes no gradient to any of its weights
  (a leaky ReLU only its small slope).
- **saturation** (``tanh``, ``sigmoid``): the share of all (sample, unit) entries where the local
  derivative is nearly zero: |tanh| > 0.99 (derivative < 0.02) and sigmoid < 0.01 or > 0.99
  (derivative < 0.0099).

The nonlinearity is that of the layer itself (an ``nn.ReLU``/``LeakyReLU``/``PReLU``/``Tanh``/
``Sigmoid`` module), or, for a layer whose output feeds a functional ``relu``/``leaky_relu``/
``tanh``/``sigmoid`` directly (``self.fc(x).relu()``, as the model zoo writes it), that function:
the recorded graph tells. The pre-activation z then counts as dead when z ≤ 0 for every sample
and as saturated when |z| > atanh(0.99) ≈ 2.65 (tanh) or |z| > ln 99 ≈ 4.60 (sigmoid).

A module called several times in one forward (a shared layer, a cell in a loop) is recorded at
its first call; ``calls`` says how many there were. A module whose output is a tuple (``nn.GRU``)
is recorded on its first tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import _backend as B
from ..autodiff import Node, enable_grad
from ..autodiff import grad as _grad
from ..nn import Module
from ..nn.layers.dropout import Dropout
from ..nn.layers.linear import Flatten, Identity
from ..nn.module import module_device
from ..tensor import Tensor, as_tensor

np = B.np

TANH_SATURATION = 0.99
"""|tanh(z)| above this counts as saturated (the derivative 1 − tanh² is then below 0.02)."""
SIGMOID_SATURATION = 0.01
"""sigmoid(z) below this or above 1 minus this counts as saturated (derivative < 0.0099)."""

PASS_THROUGH: tuple[type, ...] = (Identity, Flatten, Dropout)
"""Leaf modules that only move or mask values: not recorded as layers."""

_MODULE_KIND = {"ReLU": "relu", "LeakyReLU": "leaky_relu", "PReLU": "leaky_relu",
                "Tanh": "tanh", "Sigmoid": "sigmoid"}
_PRIM_KIND = {"relu": "relu", "leaky_relu": "leaky_relu", "tanh": "tanh", "sigmoid": "sigmoid"}
RECTIFIERS = ("relu", "leaky_relu")
SATURATING = ("tanh", "sigmoid")


# --- summaries ----------------------------------------------------------------------------------
def _host(a) -> np.ndarray:
    if isinstance(a, Tensor):
        a = a._data
    return np.asarray(B.backend_of(a).to_host(a)) if B.is_array(a) else np.asarray(a)


def _num(v: float) -> float | None:
    """A float for JSON: non-finite values become None."""
    v = float(v)
    return v if math.isfinite(v) else None


@dataclass
class Summary:
    """Mean, std (ddof 0), min, max, RMS, L2 norm and a histogram of an array's finite values;
    ``zero_frac`` is the share of exact zeros, ``nonfinite`` the count of NaN/inf entries."""

    n: int
    mean: float
    std: float
    min: float
    max: float
    rms: float
    norm: float
    zero_frac: float
    nonfinite: int = 0
    hist: list[int] | None = None
    edges: list[float] | None = None

    @classmethod
    def of(cls, a, bins: int = 50) -> Summary:
        """Summarise an array or tensor (in float64); ``bins=0`` skips the histogram."""
        v = _host(a).astype(np.float64, copy=False).ravel()
        finite = np.isfinite(v)
        bad = int(v.size - finite.sum())
        if bad:
            v = v[finite]
        if v.size == 0:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan, nan, nan, nan, bad)
        sq = float(np.dot(v, v))
        hist = edges = None
        if bins:
            h, e = np.histogram(v, bins=bins)
            hist, edges = [int(c) for c in h], [float(x) for x in e]
        return cls(int(v.size), float(v.mean()), float(v.std()), float(v.min()), float(v.max()),
                   math.sqrt(sq / v.size), math.sqrt(sq), float(np.mean(v == 0)), bad, hist,
                   edges)

    def to_dict(self) -> dict:
        d = {k: (_num(v) if isinstance(v, float) else v) for k, v in self.__dict__.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Summary:
        nan = float("nan")
        return cls(**{k: (nan if v is None and k not in ("hist", "edges") else v)
                      for k, v in d.items()})


@dataclass
class ParamStats:
    """One parameter of a layer: its values and (when a loss was given) its gradient."""

    name: str
    shape: tuple[int, ...]
    value: Summary
    grad: Summary | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "value": self.value.to_dict(),
                "grad": None if self.grad is None else self.grad.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> ParamStats:
        return cls(d["name"], tuple(d["shape"]), Summary.from_dict(d["value"]),
                   None if d["grad"] is None else Summary.from_dict(d["grad"]))


@dataclass
class LayerRecord:
    """Statistics of one layer: ``activation`` summarises its output, ``grad`` d(loss)/d(output);
    ``nonlinearity`` is the one its units are counted for (``applied="module"``: the layer is
    that nonlinearity; ``"next"``: its output feeds it), with ``dead_frac`` (rectifiers) or
    ``saturated_frac`` (tanh, sigmoid)."""

    index: int
    name: str
    type: str
    shape: tuple[int, ...]
    activation: Summary
    grad: Summary | None = None
    params: list[ParamStats] = field(default_factory=list)
    nonlinearity: str | None = None
    applied: str | None = None
    dead_frac: float | None = None
    saturated_frac: float | None = None
    calls: int = 1

    @property
    def label(self) -> str:
        """How warnings name the layer: ``layer 7 (net.6: ReLU)``."""
        kind = f" → {self.nonlinearity}" if self.applied == "next" else ""
        return f"layer {self.index} ({self.name}: {self.type}{kind})"

    @property
    def param_norm(self) -> float | None:
        """‖θ‖ over all parameters of the layer (None without parameters)."""
        if not self.params:
            return None
        return math.sqrt(sum(p.value.norm ** 2 for p in self.params))

    @property
    def param_grad_norm(self) -> float | None:
        """‖∇θ L‖ over all parameters of the layer that have a gradient."""
        gs = [p.grad.norm for p in self.params if p.grad is not None]
        return math.sqrt(sum(g * g for g in gs)) if gs else None

    @property
    def has_weight(self) -> bool:
        """Whether the layer holds a weight (Linear, Conv, ...), not just an activation."""
        return any(p.name.rsplit(".", 1)[-1].startswith("weight") for p in self.params)

    def to_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "type": self.type,
                "shape": list(self.shape), "activation": self.activation.to_dict(),
                "grad": None if self.grad is None else self.grad.to_dict(),
                "params": [p.to_dict() for p in self.params], "nonlinearity": self.nonlinearity,
                "applied": self.applied, "dead_frac": self.dead_frac,
                "saturated_frac": self.saturated_frac, "calls": self.calls,
                "param_norm": self.param_norm, "param_grad_norm": self.param_grad_norm}

    @classmethod
    def from_dict(cls, d: dict) -> LayerRecord:
        return cls(d["index"], d["name"], d["type"], tuple(d["shape"]),
                   Summary.from_dict(d["activation"]),
                   None if d["grad"] is None else Summary.from_dict(d["grad"]),
                   [ParamStats.from_dict(p) for p in d["params"]], d["nonlinearity"],
                   d["applied"], d["dead_frac"], d["saturated_frac"], d.get("calls", 1))


def _fmt(v: float | None, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if pct:
        return f"{100 * v:.0f}%"
    return f"{v:.3g}"


class LayerReport(Sequence):
    """The per-layer records of :func:`layer_stats`, in forward order. Index by position or by
    layer name; ``table()`` renders them as text, ``to_dict()`` as JSON-able data."""

    def __init__(self, records: Sequence[LayerRecord], loss: float | None = None,
                 batch_size: int | None = None, training: bool = True):
        self.records = list(records)
        self.loss = loss
        self.batch_size = batch_size
        self.training = training

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[LayerRecord]:
        return iter(self.records)

    def __getitem__(self, key):
        if isinstance(key, str):
            for r in self.records:
                if r.name == key:
                    return r
            raise KeyError(f"LayerReport: no layer named {key!r}; layers: "
                           f"{', '.join(r.name for r in self.records)}")
        if isinstance(key, slice):
            return LayerReport(self.records[key], self.loss, self.batch_size, self.training)
        return self.records[key]

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.records]

    def table(self) -> str:
        """Plain text: one row per layer with output shape, activation mean/std, RMS of the
        gradient reaching the output, parameter gradient norm and ‖∇θ‖/‖θ‖, dead and saturated
        shares."""
        head = ["#", "layer", "type", "shape", "act mean", "act std", "grad rms", "|grad W|",
                "|grad W|/|W|", "dead", "sat"]
        rows = []
        for r in self.records:
            pn, gn = r.param_norm, r.param_grad_norm
            ratio = gn / pn if (gn is not None and pn) else None
            typ = r.type + (f"→{r.nonlinearity}" if r.applied == "next" else "")
            rows.append([str(r.index), r.name, typ, "x".join(map(str, r.shape)),
                         _fmt(r.activation.mean), _fmt(r.activation.std),
                         _fmt(None if r.grad is None else r.grad.rms), _fmt(gn), _fmt(ratio),
                         _fmt(r.dead_frac, True), _fmt(r.saturated_frac, True)])
        widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
                  for i, h in enumerate(head)]
        left = {1, 2, 3}

        def line(cells):
            return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
        if self.loss is not None:
            out.append(f"loss {self.loss:.4g} on a batch of {self.batch_size} "
                       f"({'train' if self.training else 'eval'} mode)")
        return "\n".join(out)

    def to_dict(self) -> dict:
        return {"loss": None if self.loss is None else _num(self.loss),
                "batch_size": self.batch_size, "training": self.training,
                "layers": [r.to_dict() for r in self.records]}

    @classmethod
    def from_dict(cls, d: dict) -> LayerReport:
        return cls([LayerRecord.from_dict(r) for r in d["layers"]], d.get("loss"),
                   d.get("batch_size"), d.get("training", True))

    def __repr__(self) -> str:
        return f"LayerReport({len(self)} layers, loss={self.loss})"


# --- what counts as a layer, and which nonlinearity it feeds ------------------------------------
def layer_modules(model: Module) -> list[tuple[str, Module]]:
    """The (name, module) pairs :func:`layer_stats` records: leaf modules that compute something.
    The model itself, when it is a leaf, is named by its type."""
    out = []
    for name, m in model.named_modules():
        if m._modules or isinstance(m, PASS_THROUGH):
            continue
        out.append((name or type(m).__name__, m))
    return out


def first_tensor(out) -> Tensor | None:
    """The tensor a layer's output stands for: itself, or the first tensor of a tuple/list."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, list | tuple):
        for o in out:
            t = first_tensor(o)
            if t is not None:
                return t
    return None


def module_kind(m: Module) -> str | None:
    """The nonlinearity a module is (``relu``, ``leaky_relu``, ``tanh``, ``sigmoid``) or None."""
    return _MODULE_KIND.get(type(m).__name__)


def graph_kinds(output: Tensor | None, layer_nodes: dict, exclude: set) -> dict[str, str]:
    """For each layer (``layer_nodes``: output Node -> name) whose output feeds a functional
    nonlinearity directly in the graph recorded for ``output``, that nonlinearity's kind.
    Consumers in ``exclude`` (the output nodes of activation modules) do not count."""
    kinds: dict[str, str] = {}
    if output is None or output.node is None or not layer_nodes:
        return kinds
    seen = {output.node}
    stack = [output.node]
    while stack:
        n = stack.pop()
        for p in n.parents:
            if type(p) is not Node:
                continue
            name = layer_nodes.get(p)
            kind = _PRIM_KIND.get(n.prim.name)
            if name is not None and kind is not None and n not in exclude:
                kinds.setdefault(name, kind)
            if p not in seen:
                seen.add(p)
                stack.append(p)
    return kinds


def unit_fractions(a, kind: str | None, applied: str | None) -> tuple[float | None, float | None]:
    """(dead share, saturated share) of the output array ``a`` of a layer whose units feed
    (``applied="next"``: ``a`` is the pre-activation) or are (``"module"``) nonlinearity ``kind``.
    Axis 0 is the batch; every other index is a unit."""
    if kind is None or a.ndim == 0 or a.shape[0] == 0:
        return None, None
    xp = B.backend_of(a).xp
    if kind in RECTIFIERS:
        units = a.reshape(a.shape[0], -1)
        return float(xp.mean(xp.all(units <= 0, axis=0))), None
    if kind == "tanh":
        cut = math.atanh(TANH_SATURATION) if applied == "next" else TANH_SATURATION
        return None, float(xp.mean(xp.abs(a) > cut))
    if applied == "next":
        cut = math.log((1 - SIGMOID_SATURATION) / SIGMOID_SATURATION)
        return None, float(xp.mean(xp.abs(a) > cut))
    return None, float(xp.mean((a < SIGMOID_SATURATION) | (a > 1 - SIGMOID_SATURATION)))


def _default_loss(out: Tensor, y: Tensor) -> Tensor:
    from ..nn import functional as F

    if y.dtype.kind in "iu":
        return F.cross_entropy(out, y)
    return F.mse_loss(out, y)


class _Snapshot:
    """Modes, buffers and the CPU random state of a model, to put back afterwards."""

    def __init__(self, model: Module):
        from ..random import default_generator

        self.modes = [(m, m.training) for m in model.modules()]
        self.buffers = [(b, b._data.copy()) for b in model.buffers()]
        self.gen = default_generator("cpu")
        self.rng = self.gen.get_state()

    def restore(self) -> None:
        for m, mode in self.modes:
            object.__setattr__(m, "training", mode)
        for b, data in self.buffers:
            b._data[...] = data
        self.gen.set_state(self.rng)


def layer_stats(model: Module, x, y=None, loss_fn: Callable | None = None, bins: int = 50, *,
                train: bool = True) -> LayerReport:
    """Per-layer activation, activation-gradient and parameter statistics on one batch.

    ``loss_fn(model(x), y)`` (or ``loss_fn(model(x))`` without ``y``) is differentiated; with
    ``y`` but no ``loss_fn``, cross-entropy for integer ``y`` and MSE otherwise; with neither,
    only forward statistics are taken. ``train=True`` runs the model in training mode (dropout
    and batch statistics as the optimiser sees them); afterwards every module's mode, the
    buffers and the CPU random state are as before, hooks are removed and no ``.grad`` changed.
    ``bins`` is the number of histogram bins (0: none).
    """
    if not isinstance(model, Module):
        raise TypeError(f"layer_stats: expected an nn.Module, got {type(model).__name__}")
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 0:
        raise ValueError(f"layer_stats: bins must be an integer >= 0, got {bins!r}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"layer_stats: loss_fn must be callable, got {type(loss_fn).__name__}")
    device = module_device(model)  # arrays go where the model is
    x = x if isinstance(x, Tensor) else as_tensor(x, device=device)
    if y is not None and not isinstance(y, Tensor):
        y = as_tensor(y, device=device)
    layers = layer_modules(model)
    seen: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    handles = []

    def hook_for(name: str, m: Module):
        def fwd(mod, inputs, out):
            if name in seen:
                seen[name]["calls"] += 1
                return None
            t = first_tensor(out)
            if t is None:
                return None
            # the node now: an in-place op on the output (F.relu_) rebinds t.node later
            entry = {"module": m, "node": t.node, "data": t._data, "calls": 1, "grad": None}
            seen[name] = entry
            order.append(name)
            if t.requires_grad and t.node is not None:
                def keep(g):
                    gd = g._data if isinstance(g, Tensor) else g
                    entry["grad"] = gd if entry["grad"] is None else entry["grad"] + gd
                handles.append(t.register_hook(keep))
            return None
        return fwd

    snap = _Snapshot(model)
    loss_value = None
    param_grads: dict[int, Any] = {}
    try:
        model.train(train)
        for name, m in layers:
            handles.append(m.register_forward_hook(hook_for(name, m)))
        with enable_grad():
            out = model(x)
            nodes = {e["node"]: n for n, e in seen.items() if e["node"] is not None}
            exclude = {e["node"] for e in seen.values()
                       if module_kind(e["module"]) is not None and e["node"] is not None}
            kinds = graph_kinds(first_tensor(out), nodes, exclude)
            for e in seen.values():
                e["node"] = None  # the graph keeps what backward needs; we keep the arrays
            if loss_fn is not None or y is not None:
                fn = loss_fn or _default_loss
                loss = fn(out, y) if y is not None else fn(out)
                if not isinstance(loss, Tensor) or loss.numel() != 1:
                    raise ValueError(f"layer_stats: the loss must be a scalar tensor, got "
                                     f"{getattr(loss, 'shape', type(loss).__name__)}")
                loss_value = float(loss.item())
                params = [p for p in model.parameters() if p.requires_grad]
                if params and loss.requires_grad:
                    grads = _grad(loss, params, allow_unused=True)
                    param_grads = {id(p): g for p, g in zip(params, grads)}
    finally:
        for h in handles:
            h.remove()
        snap.restore()

    records = []
    for i, name in enumerate(order, 1):
        e = seen[name]
        m = e["module"]
        kind, applied = module_kind(m), "module"
        if kind is None:
            kind = kinds.get(name)
            applied = "next" if kind is not None else None
        dead, sat = unit_fractions(e["data"], kind, applied)
        ps = []
        prefix = "" if name == type(model).__name__ and m is model else name
        for pname, p in m.named_parameters():
            g = param_grads.get(id(p))
            ps.append(ParamStats(f"{prefix}.{pname}" if prefix else pname, tuple(p.shape),
                                 Summary.of(p, bins),
                                 None if g is None else Summary.of(g, bins)))
        records.append(LayerRecord(
            i, name, type(m).__name__, tuple(e["data"].shape), Summary.of(e["data"], bins),
            None if e["grad"] is None else Summary.of(e["grad"], bins), ps, kind, applied, dead,
            sat, e["calls"]))
    return LayerReport(records, loss_value, int(x.shape[0]) if x.ndim else None, train)


# --- warnings -----------------------------------------------------------------------------------
def _pow10(r: float) -> str:
    """``10^4.3``: a factor as a power of ten (``r`` > 0)."""
    return "infinitely" if math.isinf(r) else f"10^{round(math.log10(r), 1):g}"


def _signal_layers(report: LayerReport) -> list[LayerRecord]:
    """The layers whose activation std tracks the signal through depth, all of one kind: the
    nonlinearity modules' outputs when there are two or more (a pre-activation's scale is not
    comparable with a bounded tanh output), else the weighted layers' outputs, without the
    read-out."""
    post = [r for r in report if r.applied == "module"]
    if len(post) >= 2:
        return post
    pre = [r for r in report if r.has_weight and r.applied != "module"]
    if pre and pre[-1] is report[-1] and pre[-1].nonlinearity is None:
        pre = pre[:-1]  # the read-out's scale is the loss's business, not the signal's
    return pre


def warnings(report: LayerReport, *, dead: float = 0.25, saturated: float = 0.1,
             grad_ratio: float = 1e3, act_ratio: float = 10.0) -> list[str]:
    """Plain-language problems in ``report``, each naming the layer:

    - a share of dead ReLUs of at least ``dead``, or of saturated tanh/sigmoid entries of at
      least ``saturated``;
    - the RMS of the gradient reaching the weighted layers' outputs changing by more than
      ``grad_ratio`` from the last such layer (output side) to the first (input side):
      vanishing or exploding gradients;
    - activation std of a hidden layer falling below 1/``act_ratio`` of the first such layer's
      (the signal collapses with depth) or rising above ``act_ratio`` times it (exploding
      activations), like compared with like: the outputs of the nonlinearity modules when there
      are two or more, else the weighted layers' outputs (pre-activations); the read-out layer
      is left out. And any NaN or infinity.
    """
    if not isinstance(report, LayerReport):
        raise TypeError(f"warnings: expected a LayerReport, got {type(report).__name__}")
    out: list[str] = []
    for r in report:
        bad = r.activation.nonfinite + (r.grad.nonfinite if r.grad else 0)
        if bad:
            out.append(f"{r.label}: {bad} non-finite values in its output or gradient")
        if r.dead_frac is not None and r.dead_frac >= dead:
            what = "dead ReLUs" if r.nonlinearity == "relu" else "units in the negative regime"
            out.append(f"{r.label}: {100 * r.dead_frac:.0f}% {what} (no positive output for "
                       f"any of the {report.batch_size} samples)")
        if r.saturated_frac is not None and r.saturated_frac >= saturated:
            cut = (f"|tanh| > {TANH_SATURATION}" if r.nonlinearity == "tanh" else
                   f"sigmoid < {SIGMOID_SATURATION} or > {1 - SIGMOID_SATURATION}")
            out.append(f"{r.label}: {100 * r.saturated_frac:.0f}% of {r.nonlinearity} outputs "
                       f"saturated ({cut}): their gradient almost vanishes")
    weighted = [r for r in report if r.has_weight]
    with_grad = [r for r in weighted if r.grad is not None and r.grad.n]
    if len(with_grad) >= 2:
        first, last = with_grad[0], with_grad[-1]
        if last.grad.rms > 0 and math.isfinite(first.grad.rms):
            ratio = first.grad.rms / last.grad.rms
            if ratio < 1 / grad_ratio:
                shrink = _pow10(1 / ratio) if ratio > 0 else "infinitely"
                out.append(f"gradient norm shrinks {shrink} from output to input: "
                           f"RMS {last.grad.rms:.3g} at {last.label}, {first.grad.rms:.3g} at "
                           f"{first.label} (vanishing gradients)")
            elif ratio > grad_ratio:
                out.append(f"gradient norm grows {_pow10(ratio)} from output to input: "
                           f"RMS {last.grad.rms:.3g} at {last.label}, {first.grad.rms:.3g} at "
                           f"{first.label} (exploding gradients)")
    signal = _signal_layers(report)
    if len(signal) >= 2 and signal[0].activation.std > 0:
        s0 = signal[0].activation.std
        low = min(signal[1:], key=lambda r: r.activation.std)
        high = max(signal[1:], key=lambda r: r.activation.std)
        if low.activation.std < s0 / act_ratio:
            out.append(f"activations collapse: std {s0:.3g} at {signal[0].label}, "
                       f"{low.activation.std:.3g} at {low.label}")
        if high.activation.std > s0 * act_ratio:
            out.append(f"exploding activations: std {s0:.3g} at {signal[0].label}, "
                       f"{high.activation.std:.3g} at {high.label}")
    return out
