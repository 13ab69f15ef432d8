"""Shape primitives: reshape, transpose, broadcast and its adjoint sum_to, concatenate, pad, flip,
device moves; and the helpers that normalise axes and shapes for every op family.
"""

from __future__ import annotations

import builtins

from .. import _backend as B
from ..batching import batched, front, size_of
from ..dtypes import result_type
from ..errors import ShapeError
from ..primitive import primitive
from ..tensor import Tensor, check_layout

_L = "linear"  # linear in its differentiable inputs: the JVP applies the op to the tangents
_SH = "shape"


# --- argument normalisation (shared by the op families) --------------------------------------
def norm_axis(axis: int, ndim: int, op: str) -> int:
    """A non-negative axis, or a ShapeError naming the op (a TypeError for a non-integer). A
    0-d tensor takes axis 0 or -1, as PyTorch's dims do."""
    try:
        if 0 <= axis < ndim:
            return axis
    except TypeError:  # a tuple or None where one axis is meant
        raise TypeError(f"{op}: axis must be one int, got {type(axis).__name__} {axis!r}") \
            from None
    if not -builtins.max(ndim, 1) <= axis < builtins.max(ndim, 1):
        raise ShapeError(f"{op}: axis {axis} is out of range for a tensor with {ndim} dims")
    return axis % ndim if ndim else 0


def dim_of(x, dim: int, op: str) -> int:
    """``norm_axis`` of ``dim`` for an op that needs a real dim of ``x`` (narrow, unbind,
    chunk, unflatten): a 0-d tensor, whose 0 or -1 names no dim, raises a ShapeError naming
    the op, as PyTorch refuses it."""
    if getattr(x, "ndim", 1) == 0:
        raise ShapeError(f"{op}: expected a tensor with at least 1 dim, got a 0-d tensor")
    return norm_axis(dim, x.ndim, op)


def norm_axes(axis, ndim: int, op: str):
    """None, or a sorted tuple of distinct non-negative axes."""
    if axis is None:
        return None
    if isinstance(axis, int | B.np.integer | Tensor):  # NumPy's integers are ints, as torch's
        axis = (int(axis),)
    axes = tuple(sorted({norm_axis(int(a), ndim, op) for a in axis}))
    if len(axes) != len(tuple(axis)):
        raise ShapeError(f"{op}: repeated axis in {tuple(axis)}")
    return axes


def scalar_dims(dim, ndim: int, op: str):
    """PyTorch's ``dim`` of a reduction: on a 0-d tensor (``ndim`` 0), 0 or -1 (alone or in a
    tuple) name the whole of it, so it becomes None; other tensors keep ``dim``. NumPy's
    ``axis`` does not pass through here: NumPy rejects any axis of a 0-d array."""
    if ndim or dim is None:
        return dim
    dims = (dim,) if isinstance(dim, int | B.np.integer | Tensor) else tuple(dim)
    for d in dims:
        if int(d) not in (0, -1):
            raise ShapeError(f"{op}: dim {int(d)} is out of range for a 0-d tensor; expected "
                             "0 or -1")
    if len(dims) > 1:
        raise ShapeError(f"{op}: repeated dim in {dims}; a 0-d tensor has one")
    return None


def shape_arg(shape) -> tuple:
    """A shape from ``f(2, 3)`` or ``f((2, 3))`` style arguments."""
    if len(shape) == 1 and isinstance(shape[0], list | tuple):
        shape = shape[0]
    return tuple(int(s) for s in shape)


def keepdims_shape(shape: tuple, axes) -> tuple:
    """``shape`` with the reduced ``axes`` (None: all) set to 1."""
    if axes is None:
        return (1,) * len(shape)
    return tuple(1 if i in axes else s for i, s in enumerate(shape))


# --- reshape and friends ---------------------------------------------------------------------
def _reshape_vjp(g, ans, x, shape):
    return g if g.shape == x.shape else _reshape(g, shape=x.shape)


_reshape = primitive("reshape", lambda xp, x, shape: xp.reshape(x, shape), _reshape_vjp,
                     saves="none", kind=_SH, jvp=_L,
                     batch=lambda v, b, shape: (_reshape(front(v[0], b[0]),
                                                         shape=(v[0].shape[b[0]],) + shape), 0),
                     doc="Same values in a new shape.")


def reshape(x, *dims, shape=None, order: str = "C"):
    """``x`` viewed with a new shape (one entry may be -1), given as ``reshape(2, 3)``,
    ``reshape((2, 3))`` or PyTorch's and NumPy's keyword ``shape=(2, 3)``; with ``x``'s own
    shape, see :func:`_same_view`. NumPy's ``order="F"`` reads and writes the entries first
    index fastest (a copy: the reshape of the reversed axes, reversed back)."""
    if shape is not None:
        if dims:
            raise TypeError(f"reshape: pass the shape positionally or as shape=, not both "
                            f"(got {dims} and shape={shape})")
        dims = (shape,)
    shape = dims
    if order == "F":
        return transpose(reshape(transpose(x), tuple(reversed(shape_arg(shape)))))
    if order not in ("C", "A"):
        raise ValueError(f"reshape: order must be 'C', 'F' or 'A', got {order!r}")
    shape = shape_arg(shape)
    if shape == x.shape:
        return _same_view(x)
    return _reshape(x, shape=shape)


def _same_view(x):
    """What a view op that changes nothing gives (a reshape or expand to x's own shape, an
    identity permutation): for a tensor that requires grad, a new tensor viewing all of ``x``,
    as PyTorch's views, so that it has a node of its own (hooks, ``retain_grad`` and
    ``is_leaf`` see the view, not ``x``) and under ``no_grad`` does not require grad; for any
    other tensor ``x`` itself, which no gradient can tell apart from a view (and the many
    internal no-op reshapes, of gradients in a backward above all, stay free)."""
    return _reshape(x, shape=x.shape) if x.requires_grad else x


def expand_dims(x, axis: int):
    """Insert a length-1 axis at ``axis`` (PyTorch: ``unsqueeze``)."""
    ax = norm_axis(axis, x.ndim + 1, "expand_dims")
    return reshape(x, x.shape[:ax] + (1,) + x.shape[ax:])


unsqueeze = expand_dims


def squeeze(x, axis=None, *, dim=None):
    """Drop length-1 axes: all of them, or those in ``axis`` (NumPy: another length is an
    error), or those in ``dim`` (PyTorch: other lengths stay; a 0-d tensor is returned)."""
    if dim is not None:
        if axis is not None:
            raise TypeError("squeeze: pass either axis= (NumPy) or dim= (PyTorch), not both")
        axes = norm_axes(dim, builtins.max(x.ndim, 1), "squeeze")
        if x.ndim == 0:
            return _same_view(x)
        return reshape(x, tuple(s for i, s in enumerate(x.shape) if i not in axes or s != 1))
    if axis is None:
        return reshape(x, tuple(s for s in x.shape if s != 1))
    axes = norm_axes(axis, x.ndim, "squeeze")
    for a in axes:
        if x.shape[a] != 1:
            raise ShapeError(f"squeeze: axis {a} has length {x.shape[a]}, not 1")
    return reshape(x, tuple(s for i, s in enumerate(x.shape) if i not in axes))


def flatten(x, start_dim: int = 0, end_dim: int = -1):
    """Merge axes ``start_dim..end_dim`` into one (PyTorch's flatten: with nothing to merge,
    ``x`` itself, as PyTorch returns it; ``start_dim`` after ``end_dim`` raises, as PyTorch's)."""
    s = norm_axis(start_dim, x.ndim, "flatten")
    e = norm_axis(end_dim, x.ndim, "flatten")
    if x.ndim == 0:
        return reshape(x, (1,))
    if s > e:
        raise ShapeError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
    if s == e:
        return x
    n = 1
    for d in x.shape[s:e + 1]:
        n *= d
    return reshape(x, x.shape[:s] + (n,) + x.shape[e + 1:])


def ravel(x):
    return reshape(x, (-1,))


# --- axis order ------------------------------------------------------------------------------
_transpose = primitive("transpose", lambda xp, x, axes: xp.transpose(x, axes),
                       lambda g, ans, x, axes: _transpose(g, axes=_inverse(axes)),
                       saves="none", kind=_SH, jvp=_L, doc="Permute the axes.",
                       batch=lambda v, b, axes: (_transpose(front(v[0], b[0]), axes=(0,) + tuple(
                           a + 1 for a in axes)), 0))


def _inverse(perm: tuple) -> tuple:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def transpose(x, axes=None):
    """Permute axes (NumPy: reverse them when ``axes`` is None)."""
    if axes is None:
        axes = tuple(range(x.ndim - 1, -1, -1))
    axes = tuple(norm_axis(int(a), x.ndim, "transpose") for a in axes)
    if sorted(axes) != list(range(x.ndim)):
        raise ShapeError(f"transpose: axes {axes} are not a permutation of {x.ndim} dims")
    if axes == tuple(range(x.ndim)):
        return _same_view(x)
    return _transpose(x, axes=axes)


def permute(x, *dims, **kw):
    """PyTorch's name for :func:`transpose` with explicit axes: positionally, as one sequence
    or as ``dims=`` (``torch.permute(x, dims=(0, 2, 1))``)."""
    if "dims" in kw:
        if dims or len(kw) > 1:
            raise TypeError("permute: pass the dims positionally or as dims=, not both")
        dims = (kw["dims"],)
    elif kw:
        raise TypeError(f"permute: unexpected keyword arguments {sorted(kw)}")
    return transpose(x, shape_arg(dims))


def swapaxes(x, axis1: int, axis2: int):
    """Exchange two axes."""
    nd = x.ndim
    a, b = norm_axis(axis1, nd, "swapaxes"), norm_axis(axis2, nd, "swapaxes")
    if a == b:
        return _same_view(x)
    perm = list(range(nd))
    perm[a], perm[b] = b, a
    return _transpose(x, axes=tuple(perm))


def moveaxis(x, source, destination):
    """Move axes ``source`` to positions ``destination`` (ints or sequences, as NumPy's and
    PyTorch's), the others keeping their order; a 0-d tensor takes 0 or -1, as PyTorch's."""
    return move_dims(x, source, destination, "moveaxis")


def move_dims(x, source, destination, name: str):
    """``moveaxis``/``movedim`` (``name``, and the word its errors use)."""
    what = "dim" if name == "movedim" else "axis"
    src = (source,) if isinstance(source, int | B.np.integer) else tuple(source)
    dst = (destination,) if isinstance(destination, int | B.np.integer) else tuple(destination)
    if len(src) != len(dst):
        raise ShapeError(f"{name}: {len(src)} source {'dims' if what == 'dim' else 'axes'} "
                         f"but {len(dst)} destinations")
    src = tuple(norm_axis(a, x.ndim, name) for a in src)
    dst = tuple(norm_axis(a, x.ndim, name) for a in dst)
    if len(set(src)) != len(src) or len(set(dst)) != len(dst):
        raise ShapeError(f"{name}: repeated {what} in source {source} or destination "
                         f"{destination}")
    if x.ndim == 0:  # PyTorch's 0-d rule: dim 0 or -1 names the tensor itself
        return _same_view(x)
    perm = [None] * x.ndim
    for a, b in zip(src, dst):
        perm[b] = a
    rest = iter(a for a in range(x.ndim) if a not in src)
    return transpose(x, [p if p is not None else next(rest) for p in perm])


# --- broadcasting ----------------------------------------------------------------------------
def _sum_to_fwd(xp, x, shape):
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, s in enumerate(shape) if s == 1 and x.shape[lead + i] != 1)
    out = xp.sum(x, axis=axes, keepdims=True) if axes else x
    return out.reshape(shape)


def _broadcast_batch(v, b, shape):
    x = front(v[0], b[0])
    ex = x.shape[1:]
    x = reshape(x, x.shape[:1] + (1,) * (len(shape) - len(ex)) + ex)
    return _broadcast_to(x, shape=x.shape[:1] + shape), 0


def _sum_to_batch(v, b, shape):
    x = front(v[0], b[0])
    lead = x.ndim - 1 - len(shape)
    if lead:
        x = x.sum(axis=tuple(range(1, lead + 1)))  # a method: reduce sits above shape
    return sum_to(x, x.shape[:1] + shape), 0


_broadcast_to = primitive("broadcast_to", lambda xp, x, shape: xp.broadcast_to(x, shape),
                          lambda g, ans, x, shape: sum_to(g, x.shape), saves="none",
                          kind=_SH, jvp=_L, batch=_broadcast_batch,
                          doc="A read-only broadcast view.")
_sum_to = primitive("sum_to", _sum_to_fwd, lambda g, ans, x, shape: broadcast_to(g, x.shape),
                    saves="none", kind=_SH, jvp=_L, batch=_sum_to_batch,
                    doc="Sum over broadcast axes to reach ``shape`` (the adjoint of broadcast_to).")


def broadcast_to(x, shape=None, *, size=None):
    """``x`` broadcast to ``shape`` (a read-only view); to its own shape, a new (writable) view
    of it, as PyTorch's ``expand``. ``size=`` is PyTorch's name for ``shape``."""
    if (shape is None) == (size is None):
        raise TypeError("broadcast_to: pass the shape once, as shape (NumPy) or size= (PyTorch)")
    shape = tuple(shape if size is None else size)
    if -1 in shape:  # PyTorch's -1 keeps a size, as in expand
        return expand(x, shape)
    if x.shape == shape:
        return _same_view(x)
    lead = len(shape) - x.ndim
    if lead > 0 and shape[lead:] == x.shape and builtins.all(s == 1 for s in shape[:lead]):
        return reshape(x, shape)  # only new length-1 dims: a writable view, as PyTorch's
    return _broadcast_to(x, shape=shape)


def sum_to(x, shape):
    """Sum ``x`` over the axes that broadcasting added or stretched, to get ``shape``."""
    shape = tuple(shape)
    return x if x.shape == shape else _sum_to(x, shape=shape)


def expand(x, *sizes, size=None):
    """PyTorch's expand: broadcast to ``sizes`` (-1 keeps a size; also as ``size=``)."""
    if size is not None:
        if sizes:
            raise TypeError("expand: pass the sizes positionally or as size=, not both")
        sizes = (size,)
    sizes = shape_arg(sizes)
    lead = len(sizes) - x.ndim
    if lead < 0:
        raise ShapeError(f"expand: {len(sizes)} sizes {tuple(sizes)} for a tensor with "
                         f"{x.ndim} dims; give at least one size per dim")
    if -1 in sizes[:lead]:
        raise ShapeError(f"expand: size -1 is not allowed in a new leading dim "
                         f"({sizes.index(-1)}), as PyTorch's; sizes {tuple(sizes)}")
    shape = tuple(x.shape[i - lead] if s == -1 else s for i, s in enumerate(sizes))
    return broadcast_to(x, shape)


# --- joining and splitting -------------------------------------------------------------------
def _concat_vjp(needs, g, ans, *xs, axis):
    out, start = [], 0
    for need, x in zip(needs, xs):
        n = x.shape[axis]
        if need:
            idx = (slice(None),) * axis + (slice(start, start + n),)
            out.append(g[idx])
        else:
            out.append(None)
        start += n
    return out


def _concat_batch(vals, bdims, axis):
    n = size_of(vals, bdims)
    return _concatenate(*(batched(v, b, n) for v, b in zip(vals, bdims)), axis=axis + 1), 0


_concatenate = primitive("concatenate", lambda xp, *xs, axis: xp.concatenate(xs, axis=axis),
                         vjp_all=_concat_vjp, saves="none", kind=_SH, jvp=_L,
                         batch=_concat_batch, operands="all",
                         doc="Join tensors along an existing axis.")


def concatenate(tensors, axis: int | None = 0):
    """Join tensors along ``axis`` (PyTorch: ``cat``); ``axis=None`` joins them flattened,
    as NumPy's."""
    tensors = list(tensors)
    if not tensors:
        raise ShapeError("concatenate: expected at least one tensor")
    if axis is None:
        tensors, axis = [reshape(t, (-1,)) for t in tensors], 0
    ax = norm_axis(axis, tensors[0].ndim, "concatenate")
    return _concatenate(*tensors, axis=ax)


def cat(tensors, axis: int = 0):
    """PyTorch's cat: ``concatenate``, where a 1-d empty tensor (shape (0,)) among tensors of
    another rank is left out, as PyTorch does for its legacy empty tensors: it takes no part in
    the shapes or the range of ``axis``, only in the result's dtype."""
    tensors = list(tensors)
    try:
        return concatenate(tensors, axis)
    except ShapeError:  # only then: tensors of several ranks never concatenate otherwise
        kept = [t for t in tensors if t.ndim != 1 or t.shape[0] != 0]
        if not kept and isinstance(axis, int | B.np.integer):
            return concatenate(tensors, 0)  # all legacy empties: any dim, as PyTorch's
        if len(kept) == len(tensors) or not builtins.any(t.ndim != 1 for t in tensors):
            raise
    out = concatenate(kept, axis)
    dt = result_type(*tensors)
    return out if out.dtype == dt else out.astype(dt)


def stack(tensors, axis: int = 0):
    """Join tensors of one shape along a new axis."""
    tensors = list(tensors)
    if not tensors:
        raise ShapeError("stack: expected at least one tensor")
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise ShapeError(f"stack: all tensors must have one shape, got {sorted(shapes)}")
    ax = norm_axis(axis, tensors[0].ndim + 1, "stack")
    return concatenate([expand_dims(t, ax) for t in tensors], axis=ax)


def split(x, indices_or_sections, axis: int = 0) -> list:
    """NumPy's split: ``n`` equal sections, or cut before each index in a list."""
    ax = norm_axis(axis, x.ndim, "split")
    n = x.shape[ax]
    if isinstance(indices_or_sections, int | B.np.integer):
        k = int(indices_or_sections)
        if k <= 0 or n % k:
            raise ShapeError(f"split: axis {ax} of length {n} does not split into {k} "
                             f"equal sections (NumPy's split; for PyTorch's parts of size {k} "
                             f"pass dim={ax})")
        cuts = [n // k * i for i in range(1, k)]
    else:
        cuts = [int(i) for i in indices_or_sections]
    bounds = [0] + cuts + [n]
    pre = (slice(None),) * ax
    return [x[pre + (slice(a, b),)] for a, b in zip(bounds[:-1], bounds[1:])]


def split_sizes(x, split_size_or_sections, dim: int = 0) -> list:
    """PyTorch's split: chunks of ``split_size`` (the last may be smaller), or listed sizes."""
    ax = norm_axis(dim, x.ndim, "split")
    n = x.shape[ax]
    if isinstance(split_size_or_sections, B.np.integer) or (
            isinstance(split_size_or_sections, Tensor) and split_size_or_sections.ndim == 0):
        split_size_or_sections = int(split_size_or_sections)  # as PyTorch takes a 0-d tensor
    if isinstance(split_size_or_sections, int):
        s = split_size_or_sections
        if s < 0 or (s == 0 and n):
            raise ShapeError(f"split: split_size must be positive (or 0 for an empty axis), "
                             f"got {s}")
        if n == 0:  # an empty axis is one empty piece, as PyTorch's
            return [x[(slice(None),) * ax + (slice(0, 0),)]]
        sizes = [builtins.min(s, n - i) for i in range(0, n, s)]
    else:
        sizes = [int(s) for s in split_size_or_sections]
        if builtins.min(sizes, default=0) < 0:
            raise ShapeError(f"split: sizes {sizes} must not be negative")
        if builtins.sum(sizes) != n:
            raise ShapeError(f"split: sizes {sizes} do not add up to {n} (axis {ax})")
        if not sizes:  # no sizes for an empty axis: no pieces, as PyTorch's
            return []
    cuts, acc = [], 0
    for s in sizes[:-1]:
        acc += s
        cuts.append(acc)
    return split(x, cuts, ax)


def chunk(x, chunks: int, dim: int = 0) -> list:
    """PyTorch's chunk: ``chunks`` pieces of size ceil(n / chunks); an empty axis gives
    ``chunks`` empty pieces, as PyTorch's."""
    if isinstance(chunks, B.np.integer) or (isinstance(chunks, Tensor) and chunks.ndim == 0
                                              and chunks.dtype.kind in "iu"):
        chunks = int(chunks)  # a NumPy integer or a 0-d integer tensor, as PyTorch takes
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks <= 0:
        raise ValueError(f"chunk: chunks must be a positive int, got {chunks!r}")
    ax = dim_of(x, dim, "chunk")
    n = x.shape[ax]
    if n == 0:
        return [x[(slice(None),) * ax + (slice(0, 0),)] for _ in range(chunks)]
    return split_sizes(x, -(-n // chunks), dim)


# --- padding and flipping --------------------------------------------------------------------
def _pad_vjp(g, ans, x, pad_width, value):
    return g[tuple(slice(lo, lo + s) for (lo, _), s in zip(pad_width, x.shape))]


def _pad_fwd(xp, x, pad_width, value):
    # one allocation and one strided copy: a fraction of xp.pad's Python-level cost, which
    # showed in every padded convolution's step
    if xp.ndim(value) != 0:  # a value per axis and side, as NumPy allows
        return xp.pad(x, pad_width, constant_values=value)
    shape = tuple(s + lo + hi for s, (lo, hi) in zip(x.shape, pad_width))
    out = xp.zeros(shape, x.dtype) if value == 0 else xp.full(shape, value, x.dtype)
    out[tuple(slice(lo, lo + s) for (lo, _), s in zip(pad_width, x.shape))] = x
    return out


_pad = primitive("pad", _pad_fwd, _pad_vjp, saves="none", kind=_SH, doc="Pad with a constant.",
                 jvp=lambda ts, ans, x, pad_width, value: _pad(ts[0], pad_width=pad_width,
                                                                value=0),
                 batch=lambda v, b, pad_width, value: (_pad(front(v[0], b[0]), value=value,
                                                            pad_width=((0, 0),) + pad_width), 0))


def pad(x, pad_width, mode: str = "constant", constant_values=0):
    """NumPy's constant-mode pad; ``pad_width``: an int, a (before, after) pair or one per axis."""
    if mode != "constant":
        raise ValueError(f"pad: mode {mode!r} is not supported; only 'constant'")
    return _pad(x, pad_width=pad_widths(x, pad_width), value=constant_values)


def pad_widths(x, pad_width) -> tuple:
    """NumPy's ``pad_width`` (an int, a (before, after) pair or one pair per axis) as one
    non-negative (before, after) pair per axis of ``x``."""
    if isinstance(pad_width, int | B.np.integer):
        pw = ((pad_width, pad_width),) * x.ndim
    else:
        pw = tuple(pad_width)
        if len(pw) == 2 and all(isinstance(p, int | B.np.integer) for p in pw):
            pw = (tuple(pw),) * x.ndim
        pw = tuple((int(a), int(b)) for a, b in pw)
    if len(pw) != x.ndim or builtins.min((v for p in pw for v in p), default=0) < 0:
        raise ShapeError(f"pad: pad_width {pad_width} does not fit a tensor of shape {x.shape}")
    return pw


_flip = primitive("flip", lambda xp, x, axis: xp.flip(x, axis),
                  lambda g, ans, x, axis: _flip(g, axis=axis), saves="none", kind=_SH, jvp=_L,
                  batch=lambda v, b, axis: (_flip(front(v[0], b[0]), axis=tuple(
                      range(1, v[0].ndim)) if axis is None else tuple(a + 1 for a in axis)), 0),
                  doc="Reverse the order along axes.")


def _diag_put_fwd(xp, v, shape, offset, axis1, axis2):
    out = xp.zeros(shape, v.dtype)
    B.diagonal_view(out, offset, axis1, axis2)[...] = v
    return out


def _diag_batch(v, b, offset, axis1, axis2):
    return diagonal_view(front(v[0], b[0]), offset=offset, axis1=axis1 + 1, axis2=axis2 + 1), 0


diagonal_view = primitive(
    "diagonal", lambda xp, x, offset, axis1, axis2: B.diagonal_view(x, offset, axis1, axis2),
    lambda g, ans, x, offset, axis1, axis2: _diag_put(g, shape=tuple(x.shape), offset=offset,
                                                      axis1=axis1, axis2=axis2),
    saves="none", kind=_SH, jvp=_L, batch=_diag_batch,
    doc="The offset diagonal of the (axis1, axis2) planes as a last axis: a view of x.")
_diag_put = primitive(
    "diagonal_put", _diag_put_fwd,
    lambda g, ans, v, shape, offset, axis1, axis2: diagonal_view(g, offset=offset, axis1=axis1,
                                                             axis2=axis2),
    saves="none", kind=_SH, jvp=_L,
    batch=lambda v, b, shape, offset, axis1, axis2: (_diag_put(
        front(v[0], b[0]), shape=(size_of(v, b),) + shape, offset=offset, axis1=axis1 + 1,
        axis2=axis2 + 1), 0),
    doc="zeros(shape) with v on the offset diagonal of its (axis1, axis2) planes.")


def flip(x, axis=None):
    """Reverse the order of elements along ``axis`` (all axes when None), in new memory as
    PyTorch's ``flip`` (NumPy's is a view)."""
    axes = norm_axes(axis, x.ndim, "flip")
    if x.ndim == 0:  # PyTorch's 0-d rule: dim 0 or -1 names the tensor itself, all of it
        axes = None
    return fresh(_flip(x, axis=axes), x)


copy = primitive("copy", lambda xp, x: x.copy(), lambda g, ans, x: g, saves="none", kind=_SH,
                 jvp=_L, batch=lambda v, b: (copy(v[0]), b[0]),
                 doc="A copy that stays in the graph (PyTorch: clone).")


def fresh(out, x):
    """``out``, copied where it is ``x`` itself or a view of ``x``'s array: for the ops that
    PyTorch documents as returning new memory (flip, roll, repeat, tile, rot90), whose NumPy
    forms or identity cases (no shift, one repeat) give a view, so that a later in-place
    change of either tensor does not show in the other."""
    if out is x:
        return copy(x)
    if isinstance(out, Tensor) and isinstance(x, Tensor):  # a Parameter or Buffer too
        a, b = out._data, x._data
        if (a.base if a.base is not None else a) is (b.base if b.base is not None else b):
            return copy(out)
    return out


def clone(x, *, memory_format=None):
    """A copy that stays in the graph (PyTorch's clone; ``memory_format`` is accepted, the
    values are the same in every layout)."""
    if memory_format is not None:
        check_layout("clone", memory_format=memory_format)
    return copy(x)


# --- devices ---------------------------------------------------------------------------------
_to_device = primitive(
    "to_device", lambda xp, x, dst, src: B.get_backend(dst).asarray(B.backend_of(x).to_host(x))
    if B.get_backend(dst).device_id is None or B.backend_of(x).device_id is None
    else B.get_backend(dst).asarray(x),
    lambda g, ans, x, dst, src: _to_device(g, dst=src, src=dst), saves="none", kind=_SH, jvp=_L,
    batch=lambda v, b, dst, src: (_to_device(v[0], dst=dst, src=src), b[0]),
    doc="Move to another device (the gradient moves back).")


def to_device(x, device):
    """``x`` on ``device`` (the same tensor if it is already there)."""
    dst = B.get_backend(device)
    src = B.backend_of(x._data)
    if dst is src:
        return x
    return _to_device(x, dst=dst.name, src=src.name)
