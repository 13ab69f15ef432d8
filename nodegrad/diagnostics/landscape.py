r"""Loss landscapes: the loss along a line and over a plane through parameter space.

- :func:`interpolate` evaluates the loss at θ(α) = (1 − α) θ_a + α θ_b, e.g. from the
  initialisation (α = 0) to the trained weights (α = 1) (Goodfellow, Vinyals & Saxe, 2015), or
  between two trained solutions, where a bump in the middle is a barrier between two minima.
- :func:`surface_2d` evaluates L(θ + x δ + y η) on an n × n grid around the current weights θ
  along two random directions δ, η (Li, Xu, Taylor, Studer & Goldstein, 2018). With
  ``filter_normalize`` each filter of a direction (the slice ``d[i]`` along the output axis: a
  row of a Linear weight, an output channel of a convolution) is rescaled to the norm of the
  same filter of θ, ``d_i ← d_i ‖θ_i‖ / ‖d_i‖``. Networks with ReLUs and normalisation are
  invariant to rescaling a filter, so without this a plot of a sharp-looking minimum may only
  be a minimum of small weights; with it, plots of different networks are comparable. As in
  the paper's code (``ignore='biasbn'``), directions are zero on one-dimensional parameters
  (biases and the scales and shifts of norm layers), which are therefore not perturbed;
  ``ignore_bias_bn=False`` perturbs them too, each vector treated as one filter.

Every point is evaluated under ``no_grad`` and in eval mode (dropout off, batch norm on running
statistics) through :func:`~nodegrad.nn.functional_call`: the model's own parameters are never
written, and each module's train/eval mode is restored afterwards. The batches are read once
and reused for every point, so every point sees the same data even from a shuffling loader.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from .. import _backend as B
from ..autodiff import no_grad
from ..errors import ShapeError
from ..nn import Module, functional_call
from ..nn.module import module_device
from ..tensor import Tensor, tensor
from ..train.plots import _plt

np = B.np

__all__ = ["interpolate", "plot_interpolation", "plot_surface", "random_direction",
           "surface_2d"]


# --- inputs -----------------------------------------------------------------------------------
def _as_batch(b, fn: str, device: str) -> tuple:
    if isinstance(b, dict):
        x = b["x"] if "x" in b else b["input"]
        return _as_tensor(x, device), _as_tensor(b.get("y", b.get("target")), device)
    if isinstance(b, list | tuple) and len(b) >= 1:
        return _as_tensor(b[0], device), _as_tensor(b[1], device) if len(b) > 1 else None
    raise TypeError(f"{fn}: a batch must be (x, y) or {{'x': ..., 'y': ...}}, got "
                    f"{type(b).__name__}")


def _as_tensor(a, device: str):
    """A tensor as it is; arrays (and lists) on the model's ``device``."""
    if a is None or isinstance(a, Tensor):
        return a
    if B.is_array(a) and B.backend_of(a) is B.get_backend(device):
        return Tensor._of(a)
    return tensor(B.backend_of(a).to_host(a) if B.is_array(a) else np.asarray(a),
                  device=device)


def _is_single(b) -> bool:
    """(x, y) with arrays/tensors, rather than a sequence of batches."""
    return isinstance(b, tuple) and 1 <= len(b) <= 2 and (
        isinstance(b[0], Tensor) or B.is_array(b[0]))


def _batches(batches, fn: str, device: str = "cpu") -> list[tuple]:
    """The batches as a list of (x, y), read once (a generator or a loader is consumed here);
    arrays go to ``device``, the model's."""
    if isinstance(batches, dict) or _is_single(batches):
        return [_as_batch(batches, fn, device)]
    try:
        it = list(batches)
    except TypeError:
        raise TypeError(f"{fn}: batches must be a DataLoader, an iterable of (x, y) batches or "
                        f"one (x, y) pair, got {type(batches).__name__}") from None
    if not it:
        raise ValueError(f"{fn}: batches is empty")
    return [_as_batch(b, fn, device) for b in it]


def _own(model: Module, fn: str) -> dict[str, Tensor]:
    if not isinstance(model, Module):
        raise TypeError(f"{fn}: model must be a nodegrad Module, got {type(model).__name__}")
    own = dict(model.named_parameters())
    for name, b in model.named_buffers():
        own.setdefault(name, b)
    return own


def _param_set(model: Module, params, fn: str, label: str) -> dict:
    """``params`` (a Module or name -> tensor/array) as backend arrays in the model's dtypes."""
    own = _own(model, fn)
    if isinstance(params, Module):
        params = params.state_dict()
    if not isinstance(params, Mapping):
        raise TypeError(f"{fn}: {label} must be a Module or a mapping of parameter name -> "
                        f"tensor (e.g. model.state_dict()), got {type(params).__name__}")
    unknown = [k for k in params if k not in own]
    if unknown:
        raise KeyError(f"{fn}: {label} has names that {type(model).__name__} does not: "
                       f"{', '.join(map(str, unknown))}")
    out = {}
    for k, v in params.items():
        t = own[k]
        if not B.is_float(t.dtype):
            continue  # counters such as num_batches_tracked are not coordinates of the loss
        a = v._data if isinstance(v, Tensor) else v
        if not B.is_array(a):
            a = np.asarray(a)
        if tuple(a.shape) != tuple(t.shape):
            raise ShapeError(f"{fn}: {label}[{k!r}] has shape {tuple(a.shape)}, the model's "
                             f"has {tuple(t.shape)}")
        be = B.backend_of(t._data)
        if B.backend_of(a) is not be:
            a = B.backend_of(a).to_host(a)
        out[k] = be.asarray(a, dtype=t.dtype)
    return out


class _Eval:
    """Evaluates the loss (and accuracy) at given parameter values, in eval mode, no_grad."""

    def __init__(self, model: Module, loss_fn: Callable, batches, fn: str):
        if not callable(loss_fn):
            raise TypeError(f"{fn}: loss_fn must be callable (outputs, targets) -> scalar, got "
                            f"{type(loss_fn).__name__}")
        self.model, self.loss_fn, self.fn = model, loss_fn, fn
        self.batches = _batches(batches, fn, module_device(model))

    def __enter__(self) -> _Eval:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self

    def __exit__(self, *exc) -> None:
        for m, mode in self.modes:
            object.__setattr__(m, "training", mode)

    def __call__(self, arrays: dict) -> tuple[float, float]:
        """Mean loss over all samples (batch means weighted by batch size), and accuracy."""
        tensors = {k: Tensor._of(a) for k, a in arrays.items()}
        total, n, right, counted = 0.0, 0, 0, 0
        with no_grad():
            for x, y in self.batches:
                out = functional_call(self.model, tensors, x)
                loss = self.loss_fn(out, y)
                if not isinstance(loss, Tensor) or loss.numel() != 1:
                    raise ValueError(f"{self.fn}: loss_fn must return a scalar tensor, got "
                                     f"{getattr(loss, 'shape', type(loss).__name__)}")
                total += float(loss.item()) * len(x)
                n += len(x)
                if y is not None and out.ndim == 2 and y.ndim == 1 and y.dtype.kind in "iu":
                    pred = B.backend_of(out._data).to_host(out._data).argmax(-1)
                    right += int((pred == B.backend_of(y._data).to_host(y._data)).sum())
                    counted += len(y)
        return total / max(n, 1), (right / counted if counted else float("nan"))


# --- 1D: linear interpolation -----------------------------------------------------------------
def interpolate(model: Module, loss_fn: Callable, batches, params_a, params_b,
                alphas: Iterable[float] | None = None, *, with_accuracy: bool = False):
    """Loss along the line θ(α) = (1 − α) θ_a + α θ_b; returns ``(alphas, losses)`` as float64
    arrays, plus ``accuracies`` with ``with_accuracy`` (NaN when the targets are not labels).

    ``params_a``/``params_b``: Modules or mappings name -> tensor (``model.state_dict()``,
    copies taken with ``{k: v.clone() ...}``) with the same names, all of them the model's;
    parameters named in neither keep the model's values. At α = 0 and α = 1 the parameters are
    exactly θ_a and θ_b. ``alphas`` defaults to −0.25 … 1.25 in steps of 0.05.
    """
    fn = "interpolate"
    a = _param_set(model, params_a, fn, "params_a")
    b = _param_set(model, params_b, fn, "params_b")
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise ValueError(f"{fn}: params_a and params_b must name the same tensors; only in "
                         f"params_a: {only_a or 'none'}; only in params_b: {only_b or 'none'}")
    if not a:
        raise ValueError(f"{fn}: params_a names no floating parameter of the model")
    al = np.arange(-5, 26) / 20 if alphas is None else np.asarray(list(alphas), dtype=np.float64)
    if al.ndim != 1 or al.size == 0 or not np.isfinite(al).all():
        raise ValueError(f"{fn}: alphas must be a non-empty 1-d sequence of finite numbers, got "
                         f"{al!r}")
    losses, accs = np.empty(al.size), np.empty(al.size)
    with _Eval(model, loss_fn, batches, fn) as ev:
        for i, t in enumerate(al.tolist()):  # Python floats: they never upcast float32
            if t == 0.0:
                arrays = a
            elif t == 1.0:
                arrays = b
            else:
                arrays = {k: a[k] * (1.0 - t) + b[k] * t for k in a}
            losses[i], accs[i] = ev(arrays)
    return (al, losses, accs) if with_accuracy else (al, losses)


# --- 2D: random-direction surface -------------------------------------------------------------
def random_direction(model: Module, seed: int = 0, filter_normalize: bool = True,
                     ignore_bias_bn: bool = True) -> dict[str, Tensor]:
    """A Gaussian direction in the model's parameter space, name -> tensor (see the module
    docstring for filter normalisation and ``ignore_bias_bn``)."""
    fn = "random_direction"
    _own(model, fn)
    rng = np.random.default_rng(seed)
    out = {}
    for k, p in model.named_parameters():
        if not B.is_float(p.dtype):
            continue
        d = rng.standard_normal(tuple(p.shape))
        theta = B.backend_of(p._data).to_host(p._data).astype(np.float64)
        if p.ndim <= 1 and ignore_bias_bn:
            d = np.zeros_like(d)
        elif filter_normalize:
            rows = d.reshape(d.shape[0], -1) if p.ndim >= 2 else d.reshape(1, -1)
            w = theta.reshape(rows.shape)
            dn = np.linalg.norm(rows, axis=1, keepdims=True)
            wn = np.linalg.norm(w, axis=1, keepdims=True)
            rows = rows * np.divide(wn, dn, out=np.zeros_like(dn), where=dn > 0)
            d = rows.reshape(p.shape)
        out[k] = Tensor._of(B.backend_of(p._data).asarray(d, dtype=p.dtype))
    return out


def _grid(n: int, span: float) -> np.ndarray:
    """n points from −span to span, symmetric, with an exact 0 in the middle when n is odd."""
    half = (n - 1) / 2
    return span * ((np.arange(n) - half) / half)


def surface_2d(model: Module, loss_fn: Callable, batches, n: int = 21, span: float = 1.0,
               seed: int = 0, filter_normalize: bool = True, *,
               directions: tuple | None = None, ignore_bias_bn: bool = True,
               with_accuracy: bool = False):
    """Loss on the plane θ + x δ + y η around the model's current parameters θ.

    Returns ``(xs, ys, losses)`` (plus ``accuracies`` with ``with_accuracy``): ``xs = ys``,
    ``n`` points from −``span`` to ``span`` (0 exactly in the middle when ``n`` is odd, where
    the loss is the model's own), and ``losses[i, j]`` at ``(xs[j], ys[i])``. The directions
    are :func:`random_direction` with seeds ``seed`` and ``seed + 1`` unless given as a pair
    of mappings name -> tensor. Costs n² evaluations over ``batches``.
    """
    fn = "surface_2d"
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"{fn}: n must be an int >= 2 (points per axis), got {n!r}")
    if not (isinstance(span, int | float) and span > 0 and np.isfinite(span)):
        raise ValueError(f"{fn}: span must be a positive number, got {span!r}")
    theta = _param_set(model, dict(model.named_parameters()), fn, "the model's parameters")
    if directions is None:
        directions = (random_direction(model, seed, filter_normalize, ignore_bias_bn),
                      random_direction(model, seed + 1, filter_normalize, ignore_bias_bn))
    if not isinstance(directions, tuple | list) or len(directions) != 2:
        raise ValueError(f"{fn}: directions must be a pair (d1, d2) of mappings name -> tensor, "
                         f"got {type(directions).__name__}")
    d1 = _param_set(model, directions[0], fn, "directions[0]")
    d2 = _param_set(model, directions[1], fn, "directions[1]")
    if set(d1) != set(d2):
        raise ValueError(f"{fn}: the two directions name different tensors: "
                         f"{sorted(set(d1) ^ set(d2))}")
    xs = _grid(n, float(span))
    losses, accs = np.empty((n, n)), np.empty((n, n))
    with _Eval(model, loss_fn, batches, fn) as ev:
        for i, y in enumerate(xs.tolist()):  # Python floats: they never upcast float32
            for j, x in enumerate(xs.tolist()):
                if x == 0.0 and y == 0.0:
                    arrays = theta
                else:
                    arrays = dict(theta)
                    for k in d1:
                        arrays[k] = theta[k] + d1[k] * x + d2[k] * y
                losses[i, j], accs[i, j] = ev(arrays)
    ys = xs.copy()
    return (xs, ys, losses, accs) if with_accuracy else (xs, ys, losses)


# --- plots ------------------------------------------------------------------------------------
def _curves(c) -> dict:
    if c is None:
        return {}
    if isinstance(c, Mapping):
        return {str(k): np.asarray(v, dtype=np.float64) for k, v in c.items()}
    return {"": np.asarray(c, dtype=np.float64)}


def plot_interpolation(alphas, losses, path: str | os.PathLike, accuracies=None,
                       title: str | None = None,
                       endpoints: tuple[str, str] = ("θ_a", "θ_b")) -> Path:
    """Loss (left axis, log scale) and optionally accuracy (right axis) against α, with α = 0
    and α = 1 marked. ``losses``/``accuracies``: an array or a mapping label -> array."""
    plt = _plt()
    al = np.asarray(alphas, dtype=np.float64)
    ls, acs = _curves(losses), _curves(accuracies)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, v) in enumerate(ls.items()):
        ax.plot(al, v, color=colors[i % len(colors)], marker=".",
                label=f"{label} loss".strip())
    ax.set_yscale("log")
    ax.set_xlabel("α  (θ = (1 − α) θ_a + α θ_b)")
    ax.set_ylabel("loss")
    for x0, name in zip((0.0, 1.0), endpoints):
        ax.axvline(x0, color="k", lw=0.8, ls=":")
        ax.annotate(name, (x0, 1.0), xycoords=("data", "axes fraction"), ha="center",
                    va="bottom", fontsize=9)
    handles, labels = ax.get_legend_handles_labels()
    if acs:
        ax2 = ax.twinx()
        for i, (label, v) in enumerate(acs.items()):
            ax2.plot(al, v, color=colors[i % len(colors)], ls="--",
                     label=f"{label} accuracy".strip())
        ax2.set_ylabel("accuracy (dashed)")
        ax2.set_ylim(0, 1)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16),
              ncol=min(len(labels), 4), frameon=False)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10, pad=16)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_surface(xs, ys, losses, path: str | os.PathLike, title: str | None = None,
                 levels: int = 25, log: bool = True) -> Path:
    """The surface as contour lines (left, the centre marked) and in 3D (right); with ``log``
    both show log10 of the loss, which keeps the basin visible beside the steep walls."""
    plt = _plt()
    xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    z = np.asarray(losses, dtype=np.float64)
    if z.shape != (len(ys), len(xs)):
        raise ShapeError(f"plot_surface: losses has shape {z.shape}, expected "
                         f"({len(ys)}, {len(xs)}) for {len(ys)} ys and {len(xs)} xs")
    zz = np.log10(np.maximum(z, 1e-12)) if log else z
    zlabel = "log10 loss" if log else "loss"
    X, Y = np.meshgrid(xs, ys)
    fig = plt.figure(figsize=(9, 3.9))
    ax = fig.add_subplot(1, 2, 1)
    cs = ax.contour(X, Y, zz, levels=levels, cmap="viridis", linewidths=0.9)
    ax.clabel(cs, cs.levels[::4], fontsize=7, fmt="%.2f")
    ax.plot([0], [0], "r+", ms=10, mew=2)
    ax.set_xlabel("direction 1")
    ax.set_ylabel("direction 2")
    ax.set_aspect("equal")
    ax.set_title(f"contours of {zlabel}", fontsize=10)
    ax3 = fig.add_subplot(1, 2, 2, projection="3d")
    ax3.plot_surface(X, Y, zz, cmap="viridis", linewidth=0, antialiased=True,
                     rstride=1, cstride=1)
    ax3.set_xlabel("direction 1")
    ax3.set_ylabel("direction 2")
    ax3.set_zlabel(zlabel)
    ax3.view_init(elev=35, azim=-60)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)  # a 3D surface makes a busy PNG: keep it small
    plt.close(fig)
    return Path(path)
