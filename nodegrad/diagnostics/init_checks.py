r"""Initialisation checks: symmetric units, and signal variance layer by layer.

The notes name two ways an initialisation fails. **Symmetry**: units of a layer with identical
incoming weights and biases compute the same value; if their outgoing weights are identical too,
they also receive the same gradient, so gradient descent moves them together forever (a constant
initialisation makes every hidden layer one unit wide). :func:`symmetric_units` finds them.
**Vanishing/exploding signals**: each layer multiplies the variance by about fan_in·σ² (times
what the activation keeps: 1/2 for ReLU), so across depth the signal dies or blows up unless
σ² ≈ 1/fan_in (Xavier/LeCun, for tanh) or 2/fan_in (He, for ReLU).
:func:`variance_across_depth` measures it on a deep MLP, :func:`layer_variances` on any model.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import _backend as B
from ..autodiff import enable_grad, run_backward
from ..tensor import Tensor

np = B.np


# --- symmetric units --------------------------------------------------------------------------
def _host(t) -> np.ndarray:
    return t.numpy().astype(np.float64)


def _group_rows(rows: np.ndarray, atol: float) -> list[list[int]]:
    """Groups (of two or more) of row indices whose rows agree within ``atol`` (max-abs)."""
    n = rows.shape[0]
    if n < 2:
        return []
    rows = rows.reshape(n, -1) + 0.0  # -0.0 becomes 0.0: equal rows get equal bytes
    if atol == 0.0:
        groups: dict = {}
        for i in range(n):
            groups.setdefault(np.ascontiguousarray(rows[i]).tobytes(), []).append(i)
        found = [g for g in groups.values() if len(g) > 1]
    else:
        # leader clustering, comparing only rows whose sums are within width·atol of each other
        s = rows.sum(axis=1)
        order = np.argsort(s, kind="stable")
        window = atol * rows.shape[1]
        leaders: list = []  # (sum, row index, members)
        for i in order:
            for ls, li, members in reversed(leaders):
                if s[i] - ls > window:
                    break
                if np.abs(rows[i] - rows[li]).max() <= atol:
                    members.append(int(i))
                    break
            else:
                leaders.append((s[i], int(i), [int(i)]))
        found = [sorted(m) for _, _, m in leaders if len(m) > 1]
    return sorted(found, key=lambda g: g[0])


def _unit_layers(model) -> list:
    """(name, module) of the Linear and convolution layers, in registration order."""
    from ..nn.layers.conv import _ConvNd
    from ..nn.layers.linear import Linear

    return [(n, m) for n, m in model.named_modules() if isinstance(m, Linear | _ConvNd)
            and getattr(m, "weight", None) is not None]


def _outgoing(layer, following) -> tuple[str, np.ndarray] | None:
    """The weights leaving each unit of ``layer``: one row per unit, from the next layer that
    reads its output (same number of inputs, or a multiple of it after flattening)."""
    units = layer.weight.shape[0]
    for name, m in following:
        w = _host(m.weight)
        groups = getattr(m, "groups", 1)
        fan = w.shape[1] * groups
        if fan == units and groups == 1:
            cols = np.moveaxis(w, 1, 0)                    # (units, out, *kernel)
        elif w.ndim == 2 and fan % units == 0 and fan > units:
            cols = w.reshape(w.shape[0], units, fan // units).transpose(1, 0, 2)  # flattened
        else:
            continue
        return name + ".weight", cols.reshape(units, -1)
    return None


def symmetric_units(model, atol: float = 0.0) -> list[dict]:
    """Groups of units with identical incoming weights (and biases) in each Linear/Conv layer.

    Each entry: ``param`` and ``bias`` (dotted names), ``units`` (count), ``groups`` (lists of
    unit indices with identical incoming weights), ``outgoing`` (the next layer's weight read,
    or None for the last layer or when no next layer fits), ``stuck_groups`` (the subgroups
    whose outgoing weights are identical as well: gradient descent can never separate them)
    and ``stuck``. Units match when every entry differs by at most ``atol``; the next layer is
    the next Linear/Conv in registration order whose input size matches (after flattening).
    """
    from ..nn.module import Module

    if not isinstance(model, Module):
        raise TypeError(f"symmetric_units: expected an nn.Module, got {type(model).__name__}")
    if not (isinstance(atol, int | float) and atol >= 0):
        raise ValueError(f"symmetric_units: atol must be a number >= 0, got {atol!r}")
    layers = _unit_layers(model)
    found = []
    for k, (name, m) in enumerate(layers):
        w = _host(m.weight)
        rows = w.reshape(w.shape[0], -1)
        bias = getattr(m, "bias", None)
        if bias is not None:
            rows = np.concatenate([rows, _host(bias)[:, None]], axis=1)
        groups = _group_rows(rows, float(atol))
        if not groups:
            continue
        prefix = f"{name}." if name else ""
        out = _outgoing(m, layers[k + 1:])
        stuck = []
        if out is not None:
            for g in groups:
                stuck += [[g[i] for i in sub] for sub in _group_rows(out[1][g], float(atol))]
        found.append({"param": prefix + "weight",
                      "bias": prefix + "bias" if bias is not None else None,
                      "units": int(w.shape[0]), "groups": groups,
                      "outgoing": None if out is None else out[0],
                      "stuck_groups": sorted(stuck, key=lambda g: g[0]),
                      "stuck": bool(stuck)})
    return found


def format_symmetric_units(found: list[dict]) -> str:
    """One line per layer: how many units collapse into how many distinct ones."""
    if not found:
        return "no symmetric units: every unit of every Linear/Conv layer is distinct"
    lines = []
    for f in found:
        sizes = sorted((len(g) for g in f["groups"]), reverse=True)
        distinct = f["units"] - sum(sizes) + len(sizes)
        what = (f"stuck (outgoing {f['outgoing']} identical too)" if f["stuck"] else
                "separable (outgoing weights differ)" if f["outgoing"] else
                "output layer (the loss tells them apart)")
        lines.append(f"{f['param']}: {f['units']} units, {distinct} distinct "
                     f"(groups of {', '.join(map(str, sizes[:5]))}"
                     f"{', ...' if len(sizes) > 5 else ''}); {what}")
    return "\n".join(lines)


# --- variance across depth --------------------------------------------------------------------
def _var(a) -> float:
    h = B.backend_of(a).to_host(a).astype(np.float64)
    return float(h.var()) if h.size else float("nan")


def layer_variances(model, x, *, seed: int = 0) -> list[dict]:
    """Per leaf module call: the variance of its output, of the gradient reaching that output,
    and of its weight's gradient, for one forward pass on ``x`` and one backward pass of a
    unit-variance Gaussian cotangent at the model's output (white noise from the loss)."""
    from ..nn.module import Module

    if not isinstance(model, Module):
        raise TypeError(f"layer_variances: expected an nn.Module, got {type(model).__name__}")
    x = x if isinstance(x, Tensor) else Tensor._of(B.np.asarray(x))
    rows: list = []
    outs: list = []
    handles = []
    names = {id(m): n for n, m in model.named_modules()}

    def hook_for(mod):
        def hook(module, inputs, out):
            if not isinstance(out, Tensor):
                return None
            row = {"name": names.get(id(mod), ""), "type": type(mod).__name__,
                   "shape": tuple(out.shape), "forward_var": _var(out._data),
                   "forward_mean": float(B.backend_of(out._data).to_host(out._data).mean()),
                   "backward_var": None, "weight_grad_var": None}
            rows.append(row)
            outs.append((row, out, mod))
            return None
        return hook

    for m in model.modules():
        if not m._modules:  # leaf modules: layers and activations, not containers
            handles.append(m.register_forward_hook(hook_for(m)))
    try:
        with enable_grad():
            y = model(x)
    finally:
        for h in handles:
            h.remove()
    if not isinstance(y, Tensor):
        raise TypeError(f"layer_variances: the model returned {type(y).__name__}, expected a "
                        "tensor")
    if not y.requires_grad:
        return rows
    rng = np.random.default_rng(seed)
    cot = Tensor._of(y.backend.asarray(rng.standard_normal(y.shape).astype(y.dtype)))
    grads: dict = {}
    for row, out, _ in outs:
        if out.requires_grad:
            def keep(g, row=row):
                grads[id(row)] = g._data
            out.register_hook(keep)
    weights = [(row, mod.weight) for row, _, mod in outs
               if isinstance(getattr(mod, "weight", None), Tensor) and mod.weight.requires_grad]
    uniq = list({id(w): w for _, w in weights}.values())
    res = run_backward([y], [cot], targets=uniq, accumulate=False, allow_unused=True)
    wg = {id(w): g for w, g in zip(uniq, res or [])}
    for row, _, _ in outs:
        g = grads.get(id(row))
        row["backward_var"] = None if g is None else _var(g)
    for row, w in weights:
        g = wg.get(id(w))
        row["weight_grad_var"] = None if g is None else _var(g._data)
    return rows


_ACTS = ("relu", "tanh", "sigmoid", "leaky_relu", "gelu", "linear", "identity")


def _activation(activation):
    from .. import nn

    if isinstance(activation, nn.Module):
        return activation
    if callable(activation):
        class _Fn(nn.Module):
            def forward(self, x):
                return activation(x)
        return _Fn()
    table = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "leaky_relu": nn.LeakyReLU,
             "gelu": nn.GELU, "linear": nn.Identity, "identity": nn.Identity}
    if activation not in table:
        raise ValueError(f"variance_across_depth: unknown activation {activation!r}; expected "
                         f"one of {', '.join(_ACTS)}, a Module or a callable")
    return table[activation]()


def variance_across_depth(init: str | Callable = "he", activation: str | Callable = "relu",
                          depth: int = 10, width: int = 256, n_samples: int = 1000,
                          seed: int = 0) -> list[dict]:
    """Signal variance through a ``depth``-layer MLP of ``width`` units, layer by layer.

    ``init`` is a scheme of ``nn.init.SCHEMES`` (``"he"``, ``"xavier"``, ``"lecun"``,
    ``"small_normal"`` = N(0, 0.01²), ...) or a callable on the weight; biases start at zero
    (the ``"default"`` scheme keeps PyTorch's uniform bias). Inputs are N(0, 1); the backward
    pass starts from a N(0, 1) cotangent. Each row: ``layer`` (1-based), ``preact_var`` and
    ``act_var`` (before/after the activation), ``grad_var`` (of the gradient at the
    pre-activation), ``weight_grad_var``, and ``act_ratio``/``grad_ratio``: the forward variance
    relative to layer 1 and the backward variance relative to the last layer.
    """
    from .. import nn
    from ..random import manual_seed, randn

    op = "variance_across_depth"
    for nm, v, lo in (("depth", depth, 1), ("width", width, 1), ("n_samples", n_samples, 2)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ValueError(f"{op}: {nm} must be an integer >= {lo}, got {v!r}")
    from ..nn.init import SCHEMES

    if not callable(init) and init not in SCHEMES:
        raise ValueError(f"{op}: unknown init {init!r}; expected a callable or one of "
                         f"{', '.join(sorted(SCHEMES))}")
    manual_seed(seed)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width, init=init), _activation(activation)]
    model = nn.Sequential(*layers)
    x = randn(n_samples, width)  # the same stream, after the weights: independent of them
    raw = layer_variances(model, x, seed=seed)
    rows = []
    for i in range(depth):
        lin, act = raw[2 * i], raw[2 * i + 1]
        rows.append({"layer": i + 1, "preact_var": lin["forward_var"],
                     "act_var": act["forward_var"], "grad_var": lin["backward_var"],
                     "weight_grad_var": lin["weight_grad_var"]})
    first, last = rows[0]["act_var"], rows[-1]["grad_var"]
    for r in rows:
        r["act_ratio"] = r["act_var"] / first if first else float("nan")
        g = r["grad_var"]
        r["grad_ratio"] = g / last if g is not None and last else float("nan")
    return rows


def variance_verdict(ratio: float, band: float = 4.0) -> str:
    """'preserved' when ``ratio`` is within [1/band, band], else 'vanishes' or 'explodes'."""
    if not ratio == ratio:  # NaN
        return "undefined"
    if ratio < 1.0 / band:
        return "vanishes"
    if ratio > band:
        return "explodes"
    return "preserved"


def format_variance_table(rows: list[dict]) -> str:
    """The rows of :func:`variance_across_depth` as a text table plus a one-line verdict."""
    head = (f"{'layer':>5}  {'var(z)':>10}  {'var(h)':>10}  {'var(dL/dz)':>11}  "
            f"{'h/h1':>9}  {'g/gL':>9}")
    lines = [head]
    for r in rows:
        lines.append(f"{r['layer']:>5}  {r['preact_var']:>10.3g}  {r['act_var']:>10.3g}  "
                     f"{r['grad_var']:>11.3g}  {r['act_ratio']:>9.3g}  {r['grad_ratio']:>9.3g}")
    f, b = rows[-1]["act_ratio"], rows[0]["grad_ratio"]
    lines.append(f"forward var(h) last/first = {f:.3g} ({variance_verdict(f)}); backward "
                 f"var(dL/dz) first/last = {b:.3g} ({variance_verdict(b)})")
    return "\n".join(lines)


__all__ = ["symmetric_units", "format_symmetric_units", "layer_variances",
           "variance_across_depth", "variance_verdict", "format_variance_table"]
