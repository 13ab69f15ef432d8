"""Spatial sampling and the functional forms that go with the layers of ``layers/extra.py``:
``affine_grid`` and ``grid_sample`` (spatial transformers), fractional max pooling, feature
alpha dropout, the ``*_with_indices`` pooling aliases and two losses, in PyTorch's semantics.

``grid_sample`` is a composite: each output point's source coordinate is unnormalised, padded
(clipped or reflected), split into integer corners and fractional weights, and all corners are
read with one gather; the weights carry the gradient to the grid and the gather's adjoint (a
scatter-add) carries it to the input, so gradients of any order, vmap and jit come from the
engine. Clipping follows PyTorch's gradient rule: a coordinate on or beyond a border gets none.
"""

from __future__ import annotations

import itertools
import math

from .. import _backend as B
from .. import ops
from ..amp import float32_in_region
from ..errors import DTypeError, ShapeError
from ..random import Generator, default_generator, keep_mask, rand
from ..tensor import Tensor, _linspace_values
from .conv_functional import (_last_nan, adaptive_max_pool1d, adaptive_max_pool2d,
                              adaptive_max_pool3d, max_pool1d, max_pool2d, max_pool3d)
from .losses import multilabel_margin_loss, triplet_margin_with_distance_loss
from .norm_functional import _SELU_ALPHA_PRIME, _check_p

__all__: list[str] = [
    "affine_grid", "grid_sample", "fractional_max_pool2d", "fractional_max_pool2d_with_indices",
    "fractional_max_pool3d", "fractional_max_pool3d_with_indices",
    "feature_alpha_dropout", "max_pool1d_with_indices", "max_pool2d_with_indices",
    "max_pool3d_with_indices", "adaptive_max_pool1d_with_indices",
    "adaptive_max_pool2d_with_indices", "adaptive_max_pool3d_with_indices",
    "multilabel_margin_loss", "triplet_margin_with_distance_loss",
]


# --- affine_grid ------------------------------------------------------------------------------
def _base_axis(xp, n: int, align_corners: bool, dtype):
    """PyTorch's sampling positions along one axis in [-1, 1]: the pixel centres (corners with
    ``align_corners``); a single pixel sits at 0."""
    if n <= 1:
        return xp.zeros(1, dtype=dtype)
    # PyTorch's linspace to the bit: on the identity map the sampling points then fall exactly
    # where PyTorch's do, on pixel centres, where the bilinear slope switches sides
    r = xp.asarray(_linspace_values(-1, 1, n, dtype), dtype=dtype)
    if not align_corners:
        r = r * dtype.type(n - 1) / dtype.type(n)
    return r


def affine_grid(theta: Tensor, size, align_corners: bool | None = None) -> Tensor:
    """The sampling grid of a batch of affine maps, for ``grid_sample``: theta (N, 2, 3) and
    size (N, C, H, W) give (N, H, W, 2); theta (N, 3, 4) and size (N, C, D, H, W) give
    (N, D, H, W, 3). Each output point's normalised coordinates (x, y[, z], 1) are mapped by
    theta; ``align_corners=None`` is False, as PyTorch's."""
    op = "affine_grid"
    if not isinstance(theta, Tensor):
        raise TypeError(f"{op}: expected a Tensor theta, got {type(theta).__name__}")
    if not B.is_float(theta.dtype):
        raise DTypeError(f"{op}: theta must be floating point, got {theta.dtype}")
    size = tuple(int(s) for s in size)
    if len(size) not in (4, 5):
        raise ShapeError(f"{op}: size must be (N, C, H, W) or (N, C, D, H, W) for 2-D and 3-D "
                         f"affine maps, got {size}")
    if min(size) <= 0:
        raise ShapeError(f"{op}: expected a positive output size, got {size}")
    nd = len(size) - 2
    want = (size[0], nd, nd + 1)
    if tuple(theta.shape) != want:
        raise ShapeError(f"{op}: for size {size} theta must be a batch of {nd}-D affine "
                         f"matrices of shape {want}, got {tuple(theta.shape)}")
    xp = theta.backend.xp
    spatial = size[2:]
    axes = [_base_axis(xp, n, bool(align_corners), theta.dtype) for n in spatial]
    mesh = xp.meshgrid(*axes, indexing="ij")          # per spatial axis, outermost first
    ones = xp.ones(spatial, dtype=theta.dtype)
    base = xp.stack(list(reversed(mesh)) + [ones], axis=-1).reshape(-1, nd + 1)   # (x, y, z, 1)
    grid = Tensor._of(base) @ ops.swapaxes(theta, -1, -2)                              # (N, P, nd)
    return ops.reshape(grid, (size[0],) + spatial + (nd,))


# --- grid_sample ------------------------------------------------------------------------------
_SAMPLE_MODES = ("bilinear", "nearest", "bicubic")
_PADDING_MODES = ("zeros", "border", "reflection")


def _unnormalize(g: Tensor, n: int, align_corners: bool, fused: bool = False) -> Tensor:
    """[-1, 1] -> pixel coordinates: -1 and 1 are the corner pixels' centres with
    ``align_corners``, else the image's outer edges. ``fused`` rounds (g + 1)·n/2 - 1/2 once
    (exactly so near integers), as PyTorch's 2-D CPU kernel does with a fused multiply-add: the
    pixel centres of an identity grid then fall on the same side of an integer as there, so
    the one-sided bilinear slope (the grid's gradient) is the same."""
    if align_corners:
        return (g + 1.0) * ((n - 1) / 2)
    s = g + 1.0
    if not fused or g.dtype not in (B.np.float32, B.np.float64):
        return s * (n / 2) - 0.5
    if g.dtype == B.np.float32:  # exact in float64, then rounded once
        return ops.astype(ops.astype(s, "float64") * (n / 2) - 0.5, "float32")
    p = s * (n / 2)
    err = _product_error(s.detach(), n / 2, p.detach())  # NaN at ±inf, whose sign must stay
    return (p - 0.5) + ops.where(ops.isfinite(err), err, 0.0)


def _product_error(x: Tensor, a: float, p: Tensor) -> Tensor:
    """x·a - p exactly, for p = x·a rounded in float64 (Dekker's product: each factor split
    into halves of 26 bits whose products are exact); constant, so it carries no gradient."""
    def split(v):
        t = 134217729.0 * v
        hi = t - (t - v)
        return hi, v - hi

    (xh, xl), (ah, al) = split(x), split(a)
    return ((xh * ah - p) + xh * al + xl * ah) + xl * al


def _clip_coordinates(c: Tensor, n: int, nan_to: float) -> Tensor:
    """c clipped to [0, n - 1] (±inf onto the borders, NaN onto ``nan_to``, as PyTorch's
    kernels); on or beyond a border the gradient is 0 (PyTorch's rule: there the bilinear
    slope would see a missing neighbour)."""
    hi = float(n - 1)
    inside = (c > 0.0) & (c < hi)
    d = c.detach()
    return ops.where(inside, c, ops.where(ops.isnan(d), nan_to, ops.clip(d, 0.0, hi)))


def _reflect_coordinates(c: Tensor, n: int, align_corners: bool) -> Tensor:
    """c reflected off the borders (pixel centres with ``align_corners``, else the image edges)
    until it falls inside; the gradient is ±1 by the parity of the reflections."""
    span = float(n - 1) if align_corners else float(n)
    if span == 0:
        return c * 0.0
    lo = 0.0 if align_corners else -0.5
    d = c - lo
    a = ops.where(d < 0.0, -d, d)
    period = 2 * span
    e = a - ops.floor(a / period) * period
    return ops.where(e > span, period - e, e) + lo


def _pad_coordinates(c: Tensor, n: int, padding_mode: str, align_corners: bool,
                     nd: int) -> Tensor:
    """c moved inside by ``padding_mode``. A coordinate that is NaN there (a NaN one, or ±inf
    reflected) lands on index 0 in 2-D and on n - 1 in 3-D, where PyTorch's kernels put it."""
    nan_to = 0.0 if nd == 2 else float(n - 1)
    if padding_mode == "border":
        return _clip_coordinates(c, n, nan_to)
    if padding_mode == "reflection":
        return _clip_coordinates(_reflect_coordinates(c, n, align_corners), n, nan_to)
    return c


def _cubic_weights(t: Tensor) -> list[Tensor]:
    """Keys' cubic-convolution weights (A = -0.75, PyTorch's) of the taps at -1, 0, 1, 2 around
    a point at fraction ``t`` past tap 0."""
    a = -0.75

    def near(u):
        return ((a + 2) * u - (a + 3)) * u * u + 1

    def far(u):
        return ((a * u - 5 * a) * u + 8 * a) * u - 4 * a

    s = 1.0 - t
    return [far(t + 1.0), near(t), near(s), far(s + 1.0)]


def _taps(c: Tensor, n: int):
    """An axis's integer tap coordinate as an index (0 where outside) and its in-range mask."""
    valid = (c >= 0.0) & (c <= float(n - 1))
    return ops.astype(ops.where(valid, c, 0.0), "int64"), valid


def _check_sample(input, grid, mode: str, padding_mode: str, op: str) -> int:
    for t, name in ((input, "input"), (grid, "grid")):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: expected a Tensor {name}, got {type(t).__name__}")
    if mode not in _SAMPLE_MODES:
        raise ValueError(f"{op}: mode must be one of {_SAMPLE_MODES}, got {mode!r}")
    if padding_mode not in _PADDING_MODES:
        raise ValueError(f"{op}: padding_mode must be one of {_PADDING_MODES}, got "
                         f"{padding_mode!r}")
    shp, gshp = tuple(input.shape), tuple(grid.shape)
    if input.ndim not in (4, 5) or grid.ndim != input.ndim:
        raise ShapeError(f"{op}: expected a 4-D (N, C, H, W) or 5-D (N, C, D, H, W) input and a "
                         f"grid with as many dims, got input {shp} and grid {gshp}")
    nd = input.ndim - 2
    if gshp[-1] != nd or gshp[0] != shp[0]:
        raise ShapeError(f"{op}: for input {shp} the grid must be (N={shp[0]}, ..., {nd}), got "
                         f"{gshp}")
    if min(shp[2:]) < 1:
        raise ShapeError(f"{op}: expected non-empty spatial dims, got input {shp}")
    if mode == "bicubic" and nd != 2:
        raise ShapeError(f"{op}: bicubic interpolation only takes 4-D input, got {shp}")
    if not B.is_float(input.dtype) or grid.dtype != input.dtype:
        raise DTypeError(f"{op}: expected floating input and grid of the same dtype, got "
                         f"{input.dtype} and {grid.dtype}")
    return nd


def grid_sample(input: Tensor, grid: Tensor, mode: str = "bilinear",
                padding_mode: str = "zeros", align_corners: bool | None = None) -> Tensor:
    """Sample ``input`` (N, C, H, W) at the grid's points (N, Ho, Wo, 2), as PyTorch: grid
    (x, y) in [-1, 1] spans the image (x along W); (N, C, D, H, W) with (N, Do, Ho, Wo, 3)
    grids (x, y, z) for 'bilinear' (trilinear) and 'nearest'. ``padding_mode`` reads points
    outside as 0 ('zeros'), the nearest border value ('border') or the mirrored image
    ('reflection'). Differentiable in the input and the grid ('nearest' gives the grid a zero
    gradient); ``align_corners=None`` is False. In float32 under CPU autocast (PyTorch's
    list)."""
    op = "grid_sample"
    input, grid = float32_in_region(input, grid, cpu_only=True)
    nd = _check_sample(input, grid, mode, padding_mode, op)
    ac = bool(align_corners)
    n, c = input.shape[:2]
    sizes = tuple(input.shape[2:])
    out_sp = tuple(grid.shape[1:-1])
    p = math.prod(out_sp)
    g = ops.reshape(grid, (n, 1, p, nd))
    # grid component k addresses spatial axis nd-1-k: x is the last axis (W)
    src = [_unnormalize(g[..., nd - 1 - a], sizes[a], ac, fused=nd == 2) for a in range(nd)]
    landed = None
    if nd == 3 and padding_mode == "zeros":
        # PyTorch's 3-D kernel skips the corners outside, weights and all: a non-finite
        # coordinate reads nothing (0, and zero gradients) where 2-D's weights give NaN
        src = [ops.where(ops.isfinite(s), s, -2.0) for s in src]
    elif nd == 3 and mode != "bicubic":
        # where its backward finds the coordinate NaN (a NaN one; ±inf reflected), PyTorch's
        # 3-D kernel gives the point no gradient at all, though the forward reads the border
        test = ops.isnan if padding_mode == "border" else (lambda s: ~ops.isfinite(s))
        for s in src:
            landed = test(s) if landed is None else landed | test(s)
        src = [ops.where(landed, s.detach(), s) for s in src]
    axes = []  # per spatial axis: [(integer coordinate, weight or None), ...]
    if mode == "bicubic":
        for a in range(nd):
            lo = ops.floor(src[a])
            w = _cubic_weights(src[a] - lo)
            taps = [_pad_coordinates(lo + float(j - 1), sizes[a], padding_mode, ac, nd)
                    for j in range(4)]
            axes.append(list(zip(taps, w)))
    else:
        for a in range(nd):
            s = _pad_coordinates(src[a], sizes[a], padding_mode, ac, nd)
            if mode == "nearest":
                # weight 1 whose gradient is zero: the grid stays in the graph, so it gets a
                # zero gradient (PyTorch's) rather than none; where() keeps NaNs out of it
                never = Tensor._of(s.backend.xp.zeros((), dtype=bool))
                axes.append([(ops.round(s), ops.where(never, s, 1.0))])
            else:
                lo = ops.floor(s)
                frac = s - lo
                axes.append([(lo, 1.0 - frac), (lo + 1.0, frac)])
    strides = [math.prod(sizes[a + 1:]) for a in range(nd)]
    index, weight = [], []
    for corner in itertools.product(*axes):
        flat, valid, w = None, None, None
        for a, (coord, wa) in enumerate(corner):
            i, ok = _taps(coord, sizes[a])
            flat = i * strides[a] if flat is None else flat + i * strides[a]
            valid = ok if valid is None else valid & ok
            if wa is not None:
                w = wa if w is None else w * wa
        index.append(flat)
        mask = ops.astype(valid, input.dtype)
        weight.append(mask if w is None else w * mask)
    k = len(index)
    idx = index[0] if k == 1 else ops.concatenate(index, axis=-1)             # (N, 1, K·P)
    wts = weight[0] if k == 1 else ops.concatenate(weight, axis=-1)
    whole = (n, c, math.prod(sizes))  # (not -1: N or C may be 0)
    vals = ops.take_along_axis(ops.reshape(input, whole), idx, 2)  # (N, C, K·P)
    if landed is not None:
        landed = landed if k == 1 else ops.concatenate([landed] * k, axis=-1)
        vals = ops.where(landed, vals.detach(), vals)
    vals = vals * wts
    if k > 1:
        vals = ops.sum(ops.reshape(vals, (n, c, k, p)), axis=2)
    return ops.reshape(vals, (n, c) + out_sp)


# --- pooling ----------------------------------------------------------------------------------
def max_pool1d_with_indices(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,
                            ceil_mode: bool = False, return_indices: bool = False):
    """``max_pool1d`` with its indices, always (``return_indices`` is ignored, as PyTorch's)."""
    return max_pool1d(input, kernel_size, stride, padding, dilation, ceil_mode, True)


def max_pool2d_with_indices(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,
                            ceil_mode: bool = False, return_indices: bool = False):
    """``max_pool2d`` with its indices, always (``return_indices`` is ignored, as PyTorch's)."""
    return max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, True)


def max_pool3d_with_indices(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,
                            ceil_mode: bool = False, return_indices: bool = False):
    """``max_pool3d`` with its indices, always (``return_indices`` is ignored, as PyTorch's)."""
    return max_pool3d(input, kernel_size, stride, padding, dilation, ceil_mode, True)


def adaptive_max_pool1d_with_indices(input: Tensor, output_size, return_indices: bool = False):
    """``adaptive_max_pool1d`` with its indices, always."""
    return adaptive_max_pool1d(input, output_size, True)


def adaptive_max_pool2d_with_indices(input: Tensor, output_size, return_indices: bool = False):
    """``adaptive_max_pool2d`` with its indices, always."""
    return adaptive_max_pool2d(input, output_size, True)


def adaptive_max_pool3d_with_indices(input: Tensor, output_size, return_indices: bool = False):
    """``adaptive_max_pool3d`` with its indices, always."""
    return adaptive_max_pool3d(input, output_size, True)


def _tuple(v, name: str, op: str, d: int = 2) -> tuple:
    t = (v,) * d if isinstance(v, int | float) else tuple(v)
    if len(t) != d:
        raise ValueError(f"{op}: {name} must be a number or a {'pair' if d == 2 else 'triple'}, "
                         f"got {v!r}")
    return t


def _pair(v, name: str, op: str) -> tuple:
    return _tuple(v, name, op, 2)


def _intervals(s: Tensor, n: int, out: int, k: int) -> Tensor:
    """Graham's pseudo-random window starts along one axis for a sample u in [0, 1) per plane
    (PyTorch's sequence): ⌊(i + u)·α⌋ − ⌊u·α⌋ with α = (n − k) / (out − 1), the last window
    flush with the end. Computed in the input's dtype, as PyTorch does."""
    xp = s.backend.xp
    last = Tensor._of(xp.full(tuple(s.shape) + (1,), n - k, dtype=xp.int64))
    if out == 1:
        return last
    alpha = s.dtype.type(n - k) / s.dtype.type(out - 1)
    i = Tensor._of(xp.arange(out - 1, dtype=s.dtype))
    u = ops.expand_dims(s, -1)
    starts = ops.astype((i + u) * alpha, "int64") - ops.astype(u * alpha, "int64")
    return ops.concatenate([starts, last], axis=-1)


# PyTorch's sample per spatial axis: 2-d takes (W, H) = samples[0], [1]; 3-d (T, H, W) = 0, 1, 2
_SAMPLE_AXIS = {2: (1, 0), 3: (0, 1, 2)}


def _fractional_max_pool(op: str, d: int, input: Tensor, kernel_size, output_size,
                         output_ratio, _random_samples, generator):
    """Fractional max pooling over the last ``d`` axes of (N, C, *S) or unbatched (C, *S):
    (values, flat indices into prod(S)); in float32 under CPU autocast (PyTorch's list)."""
    input, _random_samples = float32_in_region(input, _random_samples, cpu_only=True)
    names = "(N, C, H, W) or unbatched (C, H, W)" if d == 2 else \
        "(N, C, T, H, W) or unbatched (C, T, H, W)"
    if not isinstance(input, Tensor) or input.ndim not in (d + 1, d + 2):
        raise ShapeError(f"{op}: expected {names} input, got "
                         f"{getattr(input, 'shape', type(input).__name__)}")
    if not B.is_float(input.dtype):
        raise DTypeError(f"{op}: expected a floating input, got {input.dtype}")
    if output_size is None and output_ratio is None:
        raise ValueError(f"{op}: give either an output_size or an output_ratio")
    unbatched = input.ndim == d + 1
    x = ops.expand_dims(input, 0) if unbatched else input
    n, c = x.shape[:2]
    size = tuple(x.shape[2:])
    ks = tuple(int(v) for v in _tuple(kernel_size, "kernel_size", op, d))
    if output_size is None:
        ratio = _tuple(output_ratio, "output_ratio", op, d)
        outs = tuple(int(s * r) for s, r in zip(size, ratio))
    else:
        outs = tuple(int(v) for v in _tuple(output_size, "output_size", op, d))
    if min(ks + outs) < 1:
        raise ValueError(f"{op}: kernel_size and output size must be positive, got {ks} and "
                         f"{outs}")
    if any(o + k - 1 > s for o, k, s in zip(outs, ks, size)):
        raise ShapeError(f"{op}: kernel {ks} is too large for output {outs} from input {size} "
                         f"(need output + kernel - 1 <= input on each axis)")
    if _random_samples is None:
        samples = rand(n, c, d, dtype=x.dtype, device=x.device,
                       generator=generator or default_generator(x.device))
    else:
        samples = _random_samples
        if not isinstance(samples, Tensor) or tuple(samples.shape) != (n, c, d):
            raise ShapeError(f"{op}: _random_samples must have shape (N, C, {d}) = {(n, c, d)}, "
                             f"got {getattr(samples, 'shape', type(samples).__name__)}")
        samples = ops.astype(samples, x.dtype)
    xp = x.backend.xp
    flat, stride = None, 1
    for a in reversed(range(d)):  # input positions (N, C, *outs, *ks), row-major over S
        starts = _intervals(samples[..., _SAMPLE_AXIS[d][a]], size[a], outs[a], ks[a])
        pos = ops.expand_dims(starts, -1) + Tensor._of(xp.arange(ks[a], dtype=xp.int64))
        shape = [n, c] + [1] * (2 * d)
        shape[2 + a], shape[2 + d + a] = outs[a], ks[a]
        term = ops.reshape(pos, tuple(shape)) * stride
        flat = term if flat is None else flat + term
        stride *= size[a]
    kk = math.prod(ks)
    flat = ops.reshape(flat, (n, c) + outs + (kk,))
    win = ops.take_along_axis(ops.reshape(x, (n, c, math.prod(size))),  # (N may be 0)
                              ops.reshape(flat, (n, c, math.prod(outs) * kk)), 2)
    win = ops.reshape(win, (n, c) + outs + (kk,))
    # the first maximum (the last NaN), as PyTorch's scan
    arg = _last_nan(x, win, ops.argmax(win, axis=-1, keepdims=True))
    y = ops.squeeze(ops.take_along_axis(win, arg, -1), -1)
    idx = ops.squeeze(ops.take_along_axis(flat, arg, -1), -1).detach()
    if unbatched:
        y, idx = y[0], idx[0]
    return y, idx


def fractional_max_pool2d_with_indices(input: Tensor, kernel_size, output_size=None,
                                       output_ratio=None, return_indices: bool = False,
                                       _random_samples: Tensor | None = None, *,
                                       generator: Generator | None = None):
    """``fractional_max_pool2d`` with its indices, always."""
    return _fractional_max_pool("fractional_max_pool2d", 2, input, kernel_size, output_size,
                                output_ratio, _random_samples, generator)


def fractional_max_pool2d(input: Tensor, kernel_size, output_size=None, output_ratio=None,
                          return_indices: bool = False, _random_samples: Tensor | None = None,
                          *, generator: Generator | None = None):
    """Fractional max pooling (Graham, 2014): max over kh×kw windows whose starts step by a
    pseudo-random 1 or 2 pixels so that (H, W) shrinks to ``output_size`` (or
    ``output_ratio`` times the input). One uniform sample per plane and axis sets the steps:
    ``_random_samples`` (N, C, 2) (W's, then H's), as PyTorch's, else drawn from
    ``generator`` (the default one). With ``return_indices`` also the flat H·W indices."""
    y, idx = fractional_max_pool2d_with_indices(input, kernel_size, output_size, output_ratio,
                                                True, _random_samples, generator=generator)
    return (y, idx) if return_indices else y


def fractional_max_pool3d_with_indices(input: Tensor, kernel_size, output_size=None,
                                       output_ratio=None, return_indices: bool = False,
                                       _random_samples: Tensor | None = None, *,
                                       generator: Generator | None = None):
    """``fractional_max_pool3d`` with its indices, always."""
    return _fractional_max_pool("fractional_max_pool3d", 3, input, kernel_size, output_size,
                                output_ratio, _random_samples, generator)


def fractional_max_pool3d(input: Tensor, kernel_size, output_size=None, output_ratio=None,
                          return_indices: bool = False, _random_samples: Tensor | None = None,
                          *, generator: Generator | None = None):
    """Fractional max pooling over (T, H, W) of (N, C, T, H, W): the 2-d scheme on three axes,
    ``_random_samples`` (N, C, 3) in PyTorch's order (T's, H's, W's). With ``return_indices``
    also the flat T·H·W indices."""
    y, idx = fractional_max_pool3d_with_indices(input, kernel_size, output_size, output_ratio,
                                                True, _random_samples, generator=generator)
    return (y, idx) if return_indices else y


# --- dropout ----------------------------------------------------------------------------------
def feature_alpha_dropout(input: Tensor, p: float = 0.5, training: bool = False,
                          inplace: bool = False, generator: Generator | None = None) -> Tensor:
    """Alpha dropout of whole channels: while training each channel of each sample (axes 0 and
    1) is set, with probability ``p``, to SELU's negative saturation −λα, and an affine map
    a·x + b restores zero mean and unit variance (PyTorch's a and b). With ``inplace`` the
    result is stored into ``input``. Input of any rank passes through when nothing is dropped
    (not training, or p = 0), as PyTorch's."""
    op = "feature_alpha_dropout"
    if inplace:
        from .functional import _stored

        return _stored(input, inplace, op, feature_alpha_dropout, p, training,
                       generator=generator)
    _check_p(p, op)
    if not isinstance(input, Tensor):
        raise TypeError(f"{op}: expected a Tensor input, got {type(input).__name__}")
    if not training or p == 0:
        return input
    if p == 1:
        return input * 0.0
    if input.ndim < 2:
        raise ShapeError(f"{op}: feature dropout needs at least 2 dims (N, C, ...), got "
                         f"{tuple(input.shape)}")
    dt = input.dtype
    al = _SELU_ALPHA_PRIME
    a = 1.0 / math.sqrt((al * al * p + 1) * (1 - p))
    gen = generator or default_generator(input.device)
    keep = keep_mask(gen, tuple(input.shape[:2]) + (1,) * (input.ndim - 2), dt, p)
    b = (keep - 1) * dt.type(al * a) + dt.type(al * a * p)
    return input * (keep * dt.type(a)) + b
