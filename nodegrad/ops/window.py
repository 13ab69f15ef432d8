"""Sliding windows: the strided view that convolution and pooling are built on.

``sliding_window_view`` returns, without copying, every window of ``x`` along the chosen axes
(with stride and dilation), window positions first and window offsets appended last. Its VJP,
``fold``, adds each window back where it came from; the Python loop runs over window offsets
(a kernel's few taps), never over positions. Each is the other's VJP.
"""

from __future__ import annotations

import itertools

from .. import _backend as B
from ..batching import front
from ..errors import ShapeError
from ..primitive import primitive
from .shape import norm_axis

_L = "linear"  # linear in its differentiable inputs: the JVP applies the op to the tangents


def _n_windows(length: int, k: int, stride: int, dilation: int) -> int:
    return (length - dilation * (k - 1) - 1) // stride + 1


def _windows_fwd(xp, x, axes, window, stride, dilation):
    shape = list(x.shape)
    strides = list(x.strides)
    for ax, k, s, d in zip(axes, window, stride, dilation):
        shape[ax] = _n_windows(x.shape[ax], k, s, d)
        strides[ax] = x.strides[ax] * s
    shape += list(window)
    strides += [x.strides[ax] * d for ax, d in zip(axes, dilation)]
    return B.backend_of(x).as_strided(x, tuple(shape), tuple(strides))


def _fold_fwd(xp, g, axes, window, stride, dilation, shape):
    m = len(axes)
    lead = g.ndim - m
    rest = tuple(a for a in range(lead) if a not in axes)
    # Work with the windowed axes first and all other axes (batch, channels) innermost, so each
    # tap below adds long contiguous rows instead of many short strided ones.
    gt = xp.ascontiguousarray(xp.transpose(g, tuple(range(lead, g.ndim)) + axes + rest))
    out = xp.zeros(tuple(shape[a] for a in axes) + tuple(shape[r] for r in rest), dtype=g.dtype)
    npos = [g.shape[ax] for ax in axes]
    for taps in itertools.product(*(range(k) for k in window)):
        dst = tuple(slice(t * d, t * d + s * (n - 1) + 1, s)
                    for t, n, s, d in zip(taps, npos, stride, dilation))
        out[dst] += gt[taps]
    perm = axes + rest  # axis i of ``out`` is axis perm[i] of the result
    inv = [0] * len(perm)
    for i, a in enumerate(perm):
        inv[a] = i
    return xp.transpose(out, inv)


_windows = primitive(
    "sliding_window_view", _windows_fwd,
    lambda g, ans, x, axes, window, stride, dilation: _fold(
        g, axes=axes, window=window, stride=stride, dilation=dilation, shape=x.shape),
    saves="none", kind="window", jvp=_L, doc="Strided windows (a view, no copy).",
    batch=lambda v, b, axes, **p: (_windows(front(v[0], b[0]), axes=tuple(a + 1 for a in axes),
                                            **p), 0))
_fold = primitive(
    "fold", _fold_fwd,
    lambda g, ans, v, axes, window, stride, dilation, shape: _windows(
        g, axes=axes, window=window, stride=stride, dilation=dilation),
    saves="none", kind="window", jvp=_L, doc="Add windows back into an array of ``shape``.",
    batch=lambda v, b, axes, shape, **p: (_fold(front(v[0], b[0]), axes=tuple(a + 1 for a in axes),
                                                shape=(v[0].shape[b[0]],) + shape, **p), 0))


def _per_axis(v, n: int, name: str) -> tuple:
    t = (int(v),) * n if isinstance(v, int | B.np.integer) else tuple(int(i) for i in v)
    if len(t) != n or min(t, default=1) < 1:
        raise ShapeError(f"sliding_window_view: {name} {v!r} must be positive, one per axis ({n})")
    return t


def sliding_window_view(x, window_shape, axis=None, *, stride=1, dilation=1):
    """All windows of ``window_shape`` along ``axis`` (default: the last axes), as a view.

    The result has ``x``'s shape with each windowed axis replaced by its number of windows,
    followed by the window axes: for (N, C, L) with a window of 3 on axis 2, (N, C, L - 2, 3).
    """
    window = (window_shape,) if isinstance(window_shape, int | B.np.integer) \
        else tuple(window_shape)
    m = len(window)
    if axis is None:
        axis = tuple(range(x.ndim - m, x.ndim))
    axes = (int(axis),) if isinstance(axis, int | B.np.integer) else tuple(axis)
    axes = tuple(norm_axis(a, x.ndim, "sliding_window_view") for a in axes)
    if len(set(axes)) != len(axes) or len(axes) != m:
        raise ShapeError(f"sliding_window_view: need one distinct axis per window dim, got "
                         f"axes {axis} for window {window}")
    window = _per_axis(window, m, "window_shape")
    stride = _per_axis(stride, m, "stride")
    dilation = _per_axis(dilation, m, "dilation")
    for ax, k, s, d in zip(axes, window, stride, dilation):
        if _n_windows(x.shape[ax], k, s, d) < 1:
            raise ShapeError(
                f"sliding_window_view: a window of {k} (dilation {d}) does not fit axis {ax} of "
                f"length {x.shape[ax]} (shape {tuple(x.shape)})")
    return _windows(x, axes=axes, window=window, stride=stride, dilation=dilation)


def fold_windows(v, shape, axis, *, stride=1, dilation=1):
    """Add every window of ``v`` back into zeros of ``shape`` (col2im): the adjoint of
    ``sliding_window_view`` with the same axes, stride and dilation; windows may overlap."""
    axes = (int(axis),) if isinstance(axis, int | B.np.integer) else tuple(axis)
    m = len(axes)
    shape = tuple(int(s) for s in shape)
    axes = tuple(norm_axis(a, len(shape), "fold_windows") for a in axes)
    window = tuple(v.shape[v.ndim - m:])
    stride = _per_axis(stride, m, "stride")
    dilation = _per_axis(dilation, m, "dilation")
    lead = tuple(v.shape[:v.ndim - m])
    for ax, k, s, d in zip(axes, window, stride, dilation):
        if lead[ax] != _n_windows(shape[ax], k, s, d):
            raise ShapeError(f"fold_windows: {lead[ax]} windows of {k} (stride {s}, dilation {d})"
                             f" do not tile axis {ax} of length {shape[ax]}")
    if len(lead) != len(shape) or any(a != b for i, (a, b) in enumerate(zip(lead, shape))
                                      if i not in axes):
        raise ShapeError(f"fold_windows: windows of shape {tuple(v.shape)} do not fit {shape}")
    return _fold(v, axes=axes, window=window, stride=stride, dilation=dilation, shape=shape)
