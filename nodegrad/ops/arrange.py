"""Rearranging ops composed of the shape and index primitives: PyTorch's repeat, tile, roll,
tril/triu, diagonals, meshgrid, narrow/unbind/movedim, rot90, the stacks, block_diag, and pad's
reflect/replicate/circular modes with negative widths (cropping).

Each is an exact composition (reshape and broadcast, slices, fixed index arrays, where), so the
primitives underneath give the VJP, JVP and batching rules; no new primitive is declared here.
"""

from __future__ import annotations

import math

from .. import _backend as B
from ..amp import float32_in_region
from ..dtypes import result_type
from ..errors import DTypeError, ShapeError
from ..tensor import Tensor, tensor
from . import shape as S
from .elementwise import astype, where
from .index import getitem, index_update
from .shape import broadcast_to, concatenate, dim_of, norm_axis, reshape, shape_arg, transpose


def _along(x, ax: int, index):
    """``x[..., index, ...]`` with ``index`` (a slice or an int array) at axis ``ax``."""
    return getitem(x, (slice(None),) * ax + (index,))


# --- repeating -------------------------------------------------------------------------------
def tensor_repeat(x, *sizes):
    """PyTorch's ``Tensor.repeat``: tile ``x`` ``sizes[d]`` times along each dim (extra leading
    sizes add dims). NumPy's ``repeat`` is :func:`repeat_interleave`."""
    sizes = shape_arg(sizes)
    if len(sizes) < x.ndim:
        raise ShapeError(f"repeat: {len(sizes)} repeat sizes for a tensor with {x.ndim} dims; "
                         "expected at least one per dim")
    if any(r < 0 for r in sizes):
        raise ShapeError(f"repeat: sizes must be non-negative, got {sizes}")
    shape = (1,) * (len(sizes) - x.ndim) + tuple(x.shape)
    inter = tuple(v for s in shape for v in (1, s))
    big = tuple(v for r, s in zip(sizes, shape) for v in (r, s))
    return S.fresh(reshape(broadcast_to(reshape(x, inter), big),
                           tuple(r * s for r, s in zip(sizes, shape))), x)


def tile(x, *dims, **kw):
    """``x`` repeated ``dims[d]`` times along each dim (missing leading dims count as 1), as
    torch.tile and np.tile (``dims=`` or ``reps=``); the sizes may come spread
    (``x.tile(2, 1)``), as PyTorch's method takes them."""
    if kw:
        if dims or len(kw) > 1 or not kw.keys() <= {"dims", "reps"}:
            raise TypeError(f"tile: pass the sizes positionally or as dims=, got {sorted(kw)}")
        dims = tuple(kw.values())
    dims = shape_arg(dims)
    return tensor_repeat(x, (1,) * (x.ndim - len(dims)) + dims)


def repeat_interleave(input, repeats=None, dim: int | None = None, *,
                      output_size: int | None = None):
    """Each element (or slice along ``dim``) repeated ``repeats`` times in place; ``dim=None``
    flattens first. ``repeat_interleave(counts)`` alone repeats each index by its count."""
    if repeats is None:  # torch.repeat_interleave(repeats)
        counts = input
        n = counts.shape[0] if counts.ndim else 1
        return repeat_interleave(Tensor._of(counts.backend.xp.arange(n)), counts)
    x = input
    if dim is None:
        x, ax = reshape(x, (-1,)), 0
    else:
        ax = dim_of(x, dim, "repeat_interleave")  # a 0-d input has no dim, as PyTorch's
    n = x.shape[ax]
    if isinstance(repeats, int):
        if repeats < 0:
            raise ShapeError(f"repeat_interleave: repeats must be non-negative, got {repeats}")
        inter = x.shape[:ax + 1] + (1,) + x.shape[ax + 1:]
        big = x.shape[:ax + 1] + (repeats,) + x.shape[ax + 1:]
        out = reshape(broadcast_to(reshape(x, inter), big),
                      x.shape[:ax] + (n * repeats,) + x.shape[ax + 1:])
    else:
        r = repeats.numpy() if isinstance(repeats, Tensor) else B.np.asarray(repeats)
        r = B.np.broadcast_to(r.reshape(-1), (n,)) if r.size == 1 else r.reshape(-1)
        if r.dtype.kind not in "iu" or r.shape[0] != n or (r < 0).any():
            raise ShapeError(f"repeat_interleave: repeats must be one non-negative integer per "
                             f"element along dim {ax} (length {n}), got {r.tolist()}")
        out = _along(x, ax, B.np.repeat(B.np.arange(n), r))
    if output_size is not None and out.shape[ax] != output_size:
        raise ShapeError(f"repeat_interleave: output_size={output_size} but the result has "
                         f"{out.shape[ax]} along dim {ax}")
    return out


def repeat(a, repeats, axis: int | None = None):
    """NumPy's repeat: each element repeated in place (PyTorch: repeat_interleave)."""
    return repeat_interleave(a, repeats, axis)


def roll(x, shifts, dims=None, *, axis=None):
    """Shift elements along ``dims`` cyclically (flattened when ``dims`` is None); NumPy's
    ``axis=`` names them too."""
    if axis is not None:
        if dims is not None:
            raise TypeError("roll: pass dims (PyTorch) or axis (NumPy), not both")
        dims = axis
    if dims is None:
        if not isinstance(shifts, int | B.np.integer):
            if len(shifts) != 1:
                raise ShapeError(f"roll: with dims=None, expected one shift, got {shifts}")
            shifts = shifts[0]
        return S.fresh(reshape(roll(reshape(x, (-1,)), shifts, 0), x.shape), x)
    shifts = (shifts,) if isinstance(shifts, int | B.np.integer) else tuple(shifts)
    dims = (dims,) if isinstance(dims, int | B.np.integer) else tuple(dims)
    if len(shifts) != len(dims) or not shifts:
        raise ShapeError(f"roll: {len(shifts)} shifts for {len(dims)} dims; expected one each "
                         "(at least one)")
    out = x
    for s, d in zip(shifts, dims):
        ax = norm_axis(d, max(x.ndim, 1), "roll")
        n = x.shape[ax] if x.ndim else 1
        s = s % n if n else 0
        if s and x.ndim:
            out = concatenate([_along(out, ax, slice(n - s, n)),
                               _along(out, ax, slice(0, n - s))], ax)
    return S.fresh(out, x)


# --- triangles and diagonals -----------------------------------------------------------------
def _matrix(x, op: str):
    if x.ndim < 2:
        raise ShapeError(f"{op}: expected a tensor with at least 2 dims, got shape "
                         f"{tuple(x.shape)}")


def _zero(x):
    """The zero that keeps ``x``'s dtype in ``where`` (False for bool: 0 would promote)."""
    return False if x.dtype.kind == "b" else 0


def _offset(op: str, diagonal: int, k) -> int:
    """The diagonal offset from PyTorch's ``diagonal`` or NumPy's and JAX's ``k=``, an int
    (PyTorch refuses a float)."""
    if k is None:
        if isinstance(diagonal, bool) or not isinstance(diagonal, int | B.np.integer):
            raise TypeError(f"{op}: diagonal must be an int, got {type(diagonal).__name__}")
        return int(diagonal)
    if diagonal != 0:
        raise TypeError(f"{op}: give diagonal= (PyTorch) or k= (NumPy), not both")
    if isinstance(k, bool) or not isinstance(k, int | B.np.integer):
        raise TypeError(f"{op}: k must be an int, got {type(k).__name__}")
    return int(k)


def tril(x, diagonal: int = 0, *, k: int | None = None):
    """The lower triangle of the last two dims (on and below ``diagonal``, NumPy's ``k``),
    zeros elsewhere."""
    diagonal = _offset("tril", diagonal, k)
    _matrix(x, "tril")
    m, n = x.shape[-2:]
    return where(Tensor._of(x.backend.asarray(B.np.tri(m, n, diagonal, dtype=bool))), x, _zero(x))


def triu(x, diagonal: int = 0, *, k: int | None = None):
    """The upper triangle of the last two dims (on and above ``diagonal``, NumPy's ``k``),
    zeros elsewhere."""
    diagonal = _offset("triu", diagonal, k)
    _matrix(x, "triu")
    m, n = x.shape[-2:]
    return where(Tensor._of(x.backend.asarray(~B.np.tri(m, n, diagonal - 1, dtype=bool))), x,
                 _zero(x))


def _diag_index(m: int, n: int, offset: int):
    np = B.np
    k = max(0, min(m, n - offset) if offset >= 0 else min(m + offset, n))
    i = np.arange(k)
    return (i, i + offset) if offset >= 0 else (i - offset, i)


def diagonal(x, offset: int = 0, dim1: int = 0, dim2: int = 1):
    """The diagonal of the (dim1, dim2) planes, as a last dim (PyTorch and NumPy): a view of
    ``x``, so writing into it writes ``x``'s diagonal, as in PyTorch."""
    _matrix(x, "diagonal")
    a1, a2 = norm_axis(dim1, x.ndim, "diagonal"), norm_axis(dim2, x.ndim, "diagonal")
    if a1 == a2:
        raise ShapeError(f"diagonal: dim1 and dim2 must differ, got {dim1} and {dim2}")
    return S.diagonal_view(x, offset=int(offset), axis1=a1, axis2=a2)


_diagonal = diagonal  # `diag` takes an argument named like the function


def diag_embed(x, offset: int = 0, dim1: int = -2, dim2: int = -1):
    """Matrices whose ``offset`` diagonal (in the dim1, dim2 planes) holds ``x``'s last dim."""
    if x.ndim == 0:
        raise ShapeError("diag_embed: expected a tensor with at least 1 dim, got a 0-d tensor")
    nd = x.ndim + 1
    a1, a2 = norm_axis(dim1, nd, "diag_embed"), norm_axis(dim2, nd, "diag_embed")
    if a1 == a2:
        raise ShapeError(f"diag_embed: dim1 and dim2 must differ, got {dim1} and {dim2}")
    n = x.shape[-1] + abs(offset)
    base = Tensor._of(x.backend.xp.zeros(tuple(x.shape[:-1]) + (n, n), x.dtype))
    out = index_update(base, (Ellipsis,) + _diag_index(n, n, offset), x)
    perm = [0] * nd
    for k, d in enumerate(d for d in range(nd) if d not in (a1, a2)):
        perm[d] = k
    perm[a1], perm[a2] = nd - 2, nd - 1
    return transpose(out, perm)


def diag(x, diagonal: int = 0, *, k: int | None = None):
    """A 1-d ``x``: the square matrix with ``x`` on its ``diagonal`` (NumPy's ``k``); a 2-d
    ``x``: that diagonal (PyTorch and NumPy)."""
    diagonal = _offset("diag", diagonal, k)
    if x.ndim == 1:
        return diag_embed(x, diagonal)
    if x.ndim == 2:
        return _diagonal(x, diagonal)
    raise ShapeError(f"diag: expected a 1-d or 2-d tensor, got shape {tuple(x.shape)}")


def diagflat(x, offset: int = 0):
    """PyTorch's diagflat: a matrix with the flattened ``x`` on diagonal ``offset``."""
    return diag(x.reshape(-1), offset)


def trace(x, offset: int = 0, axis1: int = 0, axis2: int = 1):
    """The sum of the diagonal (of the (axis1, axis2) planes, as NumPy, for more than 2 dims).
    Under CPU autocast a lower-precision input is summed in float32, as PyTorch lists trace."""
    (x,) = float32_in_region(x, cpu_only=True)
    return diagonal(x, offset, axis1, axis2).sum(axis=-1)


# --- grids and products ----------------------------------------------------------------------
def _tensors(tensors) -> list:
    if len(tensors) == 1 and isinstance(tensors[0], list | tuple):
        return list(tensors[0])
    return list(tensors)


def meshgrid(*tensors, indexing: str = "ij") -> tuple:
    """Coordinate grids from 1-d tensors (broadcast views). ``indexing="ij"`` (PyTorch's
    default) or ``"xy"`` (NumPy's default: the first two dims swapped)."""
    ts = _tensors(tensors)
    if indexing not in ("ij", "xy"):
        raise ValueError(f"meshgrid: indexing must be 'ij' or 'xy', got {indexing!r}")
    for t in ts:
        if t.ndim > 1:
            raise ShapeError(f"meshgrid: expected 0-d or 1-d tensors, got shape {tuple(t.shape)}")
    ts = [reshape(t, (1,)) if t.ndim == 0 else t for t in ts]
    pos = list(range(len(ts)))
    if indexing == "xy" and len(ts) >= 2:
        pos[0], pos[1] = 1, 0
    shape = [0] * len(ts)
    for p, t in zip(pos, ts):
        shape[p] = t.shape[0]
    out = []
    for p, t in zip(pos, ts):
        lay = [1] * len(ts)
        lay[p] = -1
        out.append(broadcast_to(reshape(t, tuple(lay)), tuple(shape)))
    return tuple(out)


def cartesian_prod(*tensors):
    """Every combination of the 1-d tensors' elements, one per row (itertools.product order)."""
    ts = _tensors(tensors)
    for t in ts:
        if t.ndim != 1:
            raise ShapeError(f"cartesian_prod: expected 1-d tensors, got shape {tuple(t.shape)}")
    if len(ts) == 1:
        return ts[0]
    return S.stack([reshape(g, (-1,)) for g in meshgrid(*ts, indexing="ij")], 1)


def block_diag(*tensors):
    """A block-diagonal matrix of the 0-d, 1-d or 2-d tensors (a 1-d one is a row); of none,
    an empty (1, 0) one in the default dtype, as PyTorch's."""
    ts = _tensors(tensors)
    if not ts:
        return tensor(B.np.zeros((1, 0)), dtype=B.DEFAULT_FLOAT)
    try:
        target = result_type(*ts)  # PyTorch's promotion: a 0-d tensor counts as a scalar
    except DTypeError as e:
        raise DTypeError(f"block_diag: {e}") from None
    blocks = []
    for t in ts:
        if t.ndim > 2:
            raise ShapeError(f"block_diag: expected tensors with at most 2 dims, got shape "
                             f"{tuple(t.shape)}")
        t = t if t.dtype == target else astype(t, target)
        blocks.append(reshape(t, (1,) * (2 - t.ndim) + tuple(t.shape)))
    total = sum(b.shape[1] for b in blocks)
    rows, left = [], 0
    for b in blocks:
        rows.append(S.pad(b, ((0, 0), (left, total - left - b.shape[1]))))
        left += b.shape[1]
    return concatenate(rows, 0)


# --- views of one tensor ---------------------------------------------------------------------
def unflatten(x, dim: int, sizes):
    """Split dim ``dim`` into ``sizes`` (one entry may be -1)."""
    ax = dim_of(x, dim, "unflatten")
    sizes = tuple(sizes)
    if not sizes:
        raise ShapeError("unflatten: sizes must be non-empty, as PyTorch's")
    known = 1
    for s in sizes:
        known *= s if s != -1 else 1
    n = x.shape[ax]
    if sizes.count(-1) > 1 or (-1 not in sizes and known != n) or (
            -1 in sizes and (known == 0 or n % known)):
        raise ShapeError(f"unflatten: sizes {sizes} do not multiply to the length {n} of dim "
                         f"{ax} (shape {tuple(x.shape)})")
    if -1 in sizes:  # from the dim's length: the total may be 0
        sizes = tuple(n // known if s == -1 else s for s in sizes)
    return reshape(x, x.shape[:ax] + sizes + x.shape[ax + 1:])


def narrow(x, dim: int, start: int, length: int):
    """The slice ``start:start + length`` along ``dim`` (a negative start counts back)."""
    ax = dim_of(x, dim, "narrow")
    n = x.shape[ax]
    s = int(start) + n if int(start) < 0 else int(start)
    if not 0 <= s <= n or length < 0 or s + length > n:
        raise IndexError(f"narrow: start {start} and length {length} do not fit dim {ax} of "
                         f"length {n}; expected 0 <= start <= start + length <= {n}")
    return _along(x, ax, slice(s, s + length))


def unbind(x, dim: int = 0) -> tuple:
    """The slices along ``dim``, each without that dim."""
    ax = dim_of(x, dim, "unbind")
    return tuple(_along(x, ax, i) for i in range(x.shape[ax]))


def movedim(x, source, destination):
    """Move dims ``source`` to positions ``destination`` (ints or sequences), the others
    keeping their order (PyTorch; NumPy's moveaxis)."""
    return S.move_dims(x, source, destination, "movedim")


def view_as(x, other):
    """``x`` reshaped to ``other``'s shape."""
    return reshape(x, tuple(other.shape))


def rot90(x, k: int = 1, dims=(0, 1)):
    """Rotate by 90 degrees ``k`` times in the plane ``dims``, from the first towards the
    second (PyTorch and NumPy)."""
    dims = tuple(dims)
    if len(dims) != 2 or x.ndim < 2:
        raise ShapeError(f"rot90: expected two dims of a tensor with at least 2 dims, got dims "
                         f"{dims} for shape {tuple(x.shape)}")
    a, b = norm_axis(dims[0], x.ndim, "rot90"), norm_axis(dims[1], x.ndim, "rot90")
    if a == b:
        raise ShapeError(f"rot90: the two dims must differ, got {dims}")
    if isinstance(k, bool) or not isinstance(k, int | B.np.integer):
        raise TypeError(f"rot90: k must be an int, got {type(k).__name__}")
    k %= 4
    if k == 1:
        return S.swapaxes(S.flip(x, b), a, b)
    if k == 2:
        return S.flip(x, (a, b))
    if k == 3:
        return S.swapaxes(S.flip(x, a), a, b)
    return S.fresh(x, x)


def flipud(x):
    """Reverse the first dim."""
    if x.ndim < 1:
        raise ShapeError("flipud: expected a tensor with at least 1 dim, got a 0-d tensor")
    return S.flip(x, 0)


def fliplr(x):
    """Reverse the second dim."""
    _matrix(x, "fliplr")
    return S.flip(x, 1)


# --- at least n dims, and the stacks ---------------------------------------------------------
def _atleast(ts, lay):
    ts = _tensors(ts)
    out = [reshape(t, lay(t)) if t.ndim < len(lay(t)) else t for t in ts]
    return out[0] if len(out) == 1 else tuple(out)


def atleast_1d(*tensors):
    """Tensors with at least 1 dim (a 0-d one becomes shape (1,))."""
    return _atleast(tensors, lambda t: (1,) if t.ndim == 0 else t.shape)


def atleast_2d(*tensors):
    """Tensors with at least 2 dims (a 1-d one becomes a row)."""
    return _atleast(tensors, lambda t: (1,) * (2 - t.ndim) + t.shape if t.ndim < 2 else t.shape)


def atleast_3d(*tensors):
    """Tensors with at least 3 dims: () -> (1, 1, 1), (n,) -> (1, n, 1), (m, n) -> (m, n, 1)."""
    def lay(t):
        return {0: (1, 1, 1), 1: (1,) + t.shape + (1,), 2: t.shape + (1,)}.get(t.ndim, t.shape)

    return _atleast(tensors, lay)


def _list(op, tensors):
    ts = list(tensors)
    if not ts:
        raise ShapeError(f"{op}: expected at least one tensor")
    return ts


def hstack(tensors):
    """Join along the second dim (the first for 1-d tensors)."""
    ts = [atleast_1d(t) for t in _list("hstack", tensors)]
    return S.cat(ts, 0 if ts[0].ndim == 1 else 1)  # PyTorch's cat, legacy empties left out


def vstack(tensors):
    """Join along the first dim, 1-d tensors as rows."""
    return concatenate([atleast_2d(t) for t in _list("vstack", tensors)], 0)


def dstack(tensors):
    """Join along the third dim (depth), after :func:`atleast_3d`."""
    return concatenate([atleast_3d(t) for t in _list("dstack", tensors)], 2)


# --- padding modes ---------------------------------------------------------------------------
_NP_MODES = ("constant", "reflect", "symmetric", "edge", "wrap")
_TORCH_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge",
                "circular": "wrap"}


def _pad_index(n: int, lo: int, hi: int, mode: str, op: str):
    """Positions along an axis of length ``n`` that ``mode`` padding reads (NumPy's rules);
    negative widths crop first, and the cropped axis is what pads (PyTorch's order)."""
    np = B.np
    kept = np.arange(n)[max(-lo, 0):n - max(-hi, 0)]
    if kept.size == 0:
        raise ShapeError(f"{op}: mode {mode!r} cannot pad an empty dim (length {n}, widths "
                         f"{(lo, hi)})")
    return np.pad(kept, (max(lo, 0), max(hi, 0)), mode=mode)


def _pad_axes(x, widths, mode, op):
    for d, (lo, hi) in enumerate(widths):
        if lo or hi:
            x = _along(x, d, _pad_index(x.shape[d], lo, hi, mode, op))
    return x


def pad(x, pad_width, mode: str = "constant", constant_values=0):
    """NumPy's pad: ``pad_width`` an int, a (before, after) pair or one pair per axis; modes
    constant, reflect, symmetric, edge, wrap. (PyTorch's argument order: ``nn.functional.pad``.)"""
    if mode not in _NP_MODES:
        raise ValueError(f"pad: mode {mode!r} is not supported; expected one of {_NP_MODES}")
    if mode == "constant":
        return S.pad(x, pad_width, constant_values=constant_values)
    return _pad_axes(x, S.pad_widths(x, pad_width), mode, "pad")


def _torch_pad_index(n: int, lo: int, hi: int, mode: str):
    """Positions along an axis of length ``n`` that PyTorch's ``mode`` padding by (lo, hi)
    reads. Reflect and replicate measure from the whole input, so a negative width crops what
    the other side reflects or repeats (output j reads reflect(j - lo), clip(j - lo)); circular
    wraps the cropped piece, as PyTorch's copies do."""
    np = B.np
    if mode == "circular":
        return np.pad(np.arange(n)[max(-lo, 0):n - max(-hi, 0)], (max(lo, 0), max(hi, 0)),
                      mode="wrap")
    t = np.arange(n + lo + hi) - lo
    if mode == "replicate":
        return np.clip(t, 0, n - 1)
    return np.where(t < 0, -t, np.where(t >= n, 2 * (n - 1) - t, t))  # one reflection fits


def _check_torch_widths(shape: tuple, widths: list, mode: str, k: int) -> bool:
    """PyTorch's checks of non-constant widths over the last ``k`` dims; True when some of them
    comes out empty. Reflect needs each width below the input's length and circular at most
    that; no output dim may be negative; reflect and replicate need one non-empty among them."""
    outs = []
    for (lo, hi), s in zip(widths[-k:], shape[-k:]):
        outs.append(s + lo + hi)
        if not (lo or hi):
            continue
        limit = s - 1 if mode == "reflect" else s
        if mode != "replicate" and max(lo, hi) > limit:
            raise ShapeError(f"pad: widths {(lo, hi)} do not fit a dim of length {s} in mode "
                             f"{mode!r}; expected each at most {limit}")
        if s == 0:
            raise ShapeError(f"pad: mode {mode!r} cannot pad an empty dim (widths {(lo, hi)})")
        if s + lo + hi < 0:
            raise ShapeError(f"pad: widths {(lo, hi)} crop a dim of length {s} below zero in "
                             f"mode {mode!r}")
    if max(outs) == 0 and mode != "circular":
        raise ShapeError(f"pad: widths {widths[-k:]} leave the padded dims of shape {shape} "
                         f"all empty in mode {mode!r}; expected one of them non-empty")
    return 0 in outs


def _check_pad_value(x, value) -> None:
    """PyTorch refuses a constant that overflows the dtype (NaN and ±inf fit the floats)."""
    if value is None or not isinstance(value, int | float | complex | B.np.number):
        return
    kind = B.np.dtype(x.dtype).kind
    if kind == "b":
        return
    parts = (value.real, value.imag) if isinstance(value, complex | B.np.complexfloating) \
        else (value,)
    if kind in "iu":
        info = B.np.iinfo(x.dtype)
        ok = all(math.isfinite(v) and info.min <= int(v) <= info.max for v in parts)
    else:
        real = B.np.dtype(x.dtype) if kind != "c" else B.np.empty(0, x.dtype).real.dtype
        top = float(B.finfo(real).max)
        ok = all(not math.isfinite(v) or abs(v) <= top for v in parts)
    if not ok:
        raise OverflowError(f"pad: value {value} does not fit the input's dtype {x.dtype}")


def torch_pad(input, pad, mode: str = "constant", value=None):
    """PyTorch's ``nn.functional.pad``: ``pad`` lists (left, right) widths from the last dim
    backwards; modes constant, reflect, replicate, circular; negative widths crop."""
    pad = tuple(int(p) for p in pad)
    nd = input.ndim
    if len(pad) % 2 or len(pad) // 2 > nd:
        raise ShapeError(f"pad: {len(pad)} widths for a tensor with {nd} dims; expected an "
                         "even number, at most two per dim")
    if mode not in _TORCH_MODES:
        raise ValueError(f"pad: mode {mode!r} is not supported; expected one of "
                         f"{tuple(_TORCH_MODES)}")
    k = len(pad) // 2
    widths = [(0, 0)] * nd
    for i in range(k):
        widths[nd - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    if mode == "constant":
        for d, ((lo, hi), s) in enumerate(zip(widths, input.shape)):
            if s + min(lo, 0) + min(hi, 0) < 0:  # PyTorch crops before it pads
                raise ShapeError(f"pad: widths {(lo, hi)} crop more than dim {d} holds "
                                 f"(length {s})")
        _check_pad_value(input, value)
        crop = tuple(slice(max(-lo, 0), s - max(-hi, 0)) for (lo, hi), s in zip(widths,
                                                                               input.shape))
        x = getitem(input, crop) if any(lo < 0 or hi < 0 for lo, hi in widths) else input
        pos = tuple((max(lo, 0), max(hi, 0)) for lo, hi in widths)
        if any(lo or hi for lo, hi in pos):
            x = S.pad(x, pos, constant_values=0 if value is None else value)
        return S.fresh(x, input)  # a crop or no padding: new memory, as PyTorch's
    if value is not None and value != 0:
        raise ValueError(f"pad: mode {mode!r} takes no value (got {value})")
    if not 1 <= k <= 3 or nd not in (k + 1, k + 2):
        raise ShapeError(f"pad: mode {mode!r} pads the last 1 to 3 dims of a batched or "
                         f"unbatched input; got {k} dims to pad for shape {tuple(input.shape)}")
    shape = tuple(input.shape)
    if _check_torch_widths(shape, widths, mode, k):  # an empty result: nothing to read
        x = input
        for d, (lo, hi) in enumerate(widths):
            if lo or hi:
                x = _along(x, d, B.np.zeros(shape[d] + lo + hi, dtype=B.np.int64))
        return x
    for d, ((lo, hi), s) in enumerate(zip(widths, shape)):
        if mode == "circular" and (lo or hi) and s + min(lo, 0) + min(hi, 0) <= 0:
            raise ShapeError(f"pad: widths {(lo, hi)} crop dim {d} (length {s}) to nothing, "
                             "leaving nothing to wrap around in mode 'circular'")
    x = input
    for d, (lo, hi) in enumerate(widths):
        if lo or hi:
            x = _along(x, d, _torch_pad_index(shape[d], lo, hi, mode))
    return S.fresh(x, input)
