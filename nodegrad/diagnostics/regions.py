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
from ..nn import Module
from ..nn.module import module_device
from ..nn.layers.activation import LeakyReLU, PReLU, ReLU
from ..tensor import Tensor, tensor

np = B.np

PIECEWISE = (ReLU, LeakyReLU, PReLU)


def activation_patterns(model: Module, x: Any) -> Any:
    """Which units are on (input > 0) at every ReLU-like layer, for each input: (N, units) bool.

    Each ReLU, LeakyReLU and PReLU module in ``model`` contributes its units in call order.
    """
    units = [m for m in model.modules() if isinstance(m, PIECEWISE)]
    if not units:
        raise ValueError(f"activation_patterns: {type(model).__name__} has no ReLU, LeakyReLU or "
                         "PReLU module, so its activation pattern is undefined")
    seen: list = []
    handles = [m.register_forward_hook(
        lambda mod, inp, out: seen.append(B.backend_of(inp[0].data).to_host(inp[0].data) > 0))
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
    between neighbouring samples.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"count_regions_line: a and b must be 1-D points of the same size, got "
                         f"shapes {a.shape} and {b.shape}")
    t = np.linspace(0.0, 1.0, n)[:, None]
    p = activation_patterns(model, (1 - t) * a + t * b)
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
    input plane; for more inputs pass the plane's origin and two directions.
    """
    lo, hi = ((-extent, extent) if isinstance(extent, int | float) else tuple(extent))
    s = np.linspace(lo, hi, n)
    if u is None or v is None:
        if origin is not None and len(origin) != 2:
            raise ValueError("region_map: pass u and v for a slice of more than 2 inputs")
        u, v = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    origin = np.zeros_like(u) if origin is None else np.asarray(origin, dtype=np.float64)
    gx, gy = np.meshgrid(s, s)
    pts = origin + gx.reshape(-1, 1) * u + gy.reshape(-1, 1) * v
    ids, count = pattern_ids(activation_patterns(model, pts))
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
