r"""Linear regions of a ReLU network: where its activation pattern is constant, it is affine.

A ReLU network is piecewise linear; each piece is the set of inputs that switch the same units on
(one activation pattern, a convex polytope). Counting the distinct patterns met along a line or
over a grid on a 2-D slice of input space therefore counts the linear regions the line or slice
crosses (at the sampling resolution: a region thinner than the grid spacing can be missed, so the
counts are lower bounds that grow to the exact number as ``n`` grows).

>>> import nodegrad as ng
>>> from nodegrad import nn
>>> from nodegrad.diagnostics import regions
>>> net = nn.Sequential(nn.Linear(1, 3), nn.ReLU(), nn.Linear(3, 1))
>>> with ng.no_grad():
...     net[0].weight.data[:] = 1.0
...     net[0].bias.data[:] = ng.tensor([0.5, 0.0, -0.5]).data
>>> regions.count_regions_line(net, [-1.0], [1.0], n=1001)   # kinks at -0.5, 0 and 0.5
4
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import _backend as B
from ..autodiff import no_grad
from ..errors import ShapeError
from ..nn import Module
from ..nn.module import module_device
from ..nn.layers.activation import LeakyReLU, PReLU, ReLU
from ..tensor import Tensor, tensor

np = B.np

PIECEWISE = (ReLU, LeakyReLU, PReLU)


def _sign(a: Any) -> Any:
    """1 where ``a`` > 0, 0 where it is exactly 0, -1 elsewhere (NaN too), as int8."""
    return np.where(a > 0, 1, np.where(a == 0, 0, -1)).astype(np.int8)


def _signs(model: Module, x: Any, fn: str) -> Any:
    """The signs (:func:`_sign`) of the inputs of every ReLU-like module in ``model`` for each
    row of ``x``: (N, units) int8, the modules' units in call order."""
    units = [m for m in model.modules() if isinstance(m, PIECEWISE)]
    if not units:
        raise ValueError(f"{fn}: {type(model).__name__} has no ReLU, LeakyReLU or PReLU module, "
                         "so its activation pattern is undefined")
    seen: list = []
    handles = [m.register_forward_hook(
        lambda mod, inp, out: seen.append(_sign(B.backend_of(inp[0]._data).to_host(inp[0]._data))))
        for m in units]
    try:
        with no_grad():
            model(x if isinstance(x, Tensor) else tensor(np.asarray(x, dtype=np.float32),
                                                         device=module_device(model)))
    finally:
        for h in handles:
            h.remove()
    n = len(seen[0])
    return np.concatenate([s.reshape(n, -1) for s in seen], axis=1)


def activation_patterns(model: Module, x: Any) -> Any:
    """Which units are on (input > 0) at every ReLU-like layer, for each input: (N, units) bool.

    Each ReLU, LeakyReLU and PReLU module in ``model`` contributes its units in call order.
    """
    return _signs(model, x, "activation_patterns") > 0


def _fill_zeros(signs: Any, axis: int) -> Any:
    """``signs`` (-1, 0, 1) with each 0 replaced by the nearest non-zero sign before it along
    ``axis`` (after it for leading zeros; 0 where a whole line is 0). A pre-activation exactly 0
    lies on the boundary of the regions on either side and belongs to both: taken as its own
    pattern it would make a region of zero width."""
    s = np.moveaxis(signs, axis, 0)
    n = s.shape[0]
    out = s
    for flip in (False, True):  # forward fill, then backward fill what leads
        a = out[::-1] if flip else out
        pos = np.arange(n).reshape((n,) + (1,) * (a.ndim - 1))
        idx = np.maximum.accumulate(np.where(a != 0, pos, 0), axis=0)
        a = np.take_along_axis(a, idx, axis=0)
        out = a[::-1] if flip else a
    return np.moveaxis(out, 0, axis)


def pattern_ids(patterns: Any) -> tuple[Any, int]:
    """Label each row by its distinct pattern (0, 1, ... by first appearance), and count them."""
    packed = np.ascontiguousarray(np.packbits(np.asarray(patterns, dtype=bool), axis=1))
    keys = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()  # one bytes key per row
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # relabel by first appearance: stable colours
    return order[inverse.ravel()], len(first)


def count_regions_line(model: Module, a: Sequence[float], b: Sequence[float],
                       n: int = 10_000) -> int:
    """Linear pieces along the segment from ``a`` to ``b``, sampled at ``n`` points.

    A line meets each convex region at most once, so the count is 1 + the pattern changes
    between neighbouring samples. A sample where a pre-activation is exactly 0 lies on a
    region boundary and takes that unit's state from its neighbours (no zero-width regions).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"count_regions_line: a and b must be 1-D points of the same size, got "
                         f"shapes {a.shape} and {b.shape}")
    t = np.linspace(0.0, 1.0, n)[:, None]
    p = _fill_zeros(_signs(model, (1 - t) * a + t * b, "count_regions_line"), 0)
    return 1 + int((p[1:] != p[:-1]).any(axis=1).sum())


@dataclass
class RegionMap:
    """Regions over an n × n grid of a 2-D slice: ``labels[i, j]`` at ``(xs[j], ys[i])``."""

    labels: Any
    count: int
    xs: Any
    ys: Any


def region_map(model: Module, extent: float | Sequence[float] = 1.0, n: int = 200,
               origin: Sequence[float] | None = None, u: Sequence[float] | None = None,
               v: Sequence[float] | None = None) -> RegionMap:
    """Distinct activation patterns on the grid ``origin + s·u + t·v``, s, t in [-extent, extent].

    For a network with two inputs the defaults (origin 0, u, v the unit axes) slice its whole
    input plane; for more inputs pass the plane's origin and two directions. A grid point
    where a pre-activation is exactly 0 lies on a region boundary and joins a neighbour's
    region (no zero-width regions).
    """
    fn = "region_map"
    lo, hi = ((-extent, extent) if isinstance(extent, int | float) else tuple(extent))
    s = np.linspace(lo, hi, n)
    default = u is None or v is None
    if default:
        if origin is not None and len(origin) != 2:
            raise ValueError(f"{fn}: origin has {len(origin)} numbers; the default slice (the "
                             "unit axes) is for 2 inputs: pass u and v, two directions of "
                             f"{len(origin)} numbers, to choose the plane")
        u, v = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    origin = np.zeros_like(u) if origin is None else np.asarray(origin, dtype=np.float64)
    if u.ndim != 1 or u.shape != v.shape or u.shape != origin.shape:
        raise ValueError(f"{fn}: origin, u and v must be 1-D points of one size, got shapes "
                         f"{origin.shape}, {u.shape} and {v.shape}")
    gx, gy = np.meshgrid(s, s)
    pts = origin + gx.reshape(-1, 1) * u + gy.reshape(-1, 1) * v
    try:
        signs = _signs(model, pts, fn)
    except ShapeError as e:
        if not default:
            raise
        why = str(e).splitlines()[0]
        raise ValueError(f"{fn}: the default slice (the unit axes) feeds "
                         f"{type(model).__name__} 2 inputs, which it does not take ({why}); "
                         "pass u and v, two directions of its input size, and optionally "
                         "origin, to choose the plane") from None
    signs = signs.reshape(n, n, -1)
    on = _fill_zeros(_fill_zeros(signs, 1), 0) > 0  # along x, then whole zero rows along y
    ids, count = pattern_ids(on.reshape(n * n, -1))
    return RegionMap(ids.reshape(n, n), count, s, s)


def count_regions_2d(model: Module, extent: float | Sequence[float] = 1.0, n: int = 200,
                     **slice_kw: Any) -> int:
    """The number of linear regions :func:`region_map` finds on the slice."""
    return region_map(model, extent, n, **slice_kw).count


def plot_region_map(rm: RegionMap, ax: Any, title: str = "", seed: int = 0) -> Any:
    """Colour each region of ``rm`` at random (neighbours differ) on a matplotlib axis."""
    colours = np.random.default_rng(seed).random((rm.count, 3)) * 0.8 + 0.2
    ax.imshow(colours[rm.labels], origin="lower", interpolation="nearest",
              extent=(rm.xs[0], rm.xs[-1], rm.ys[0], rm.ys[-1]))
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax
