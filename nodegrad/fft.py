"""Discrete Fourier transforms with PyTorch's ``torch.fft`` signatures, dtypes and gradients.

Three primitives do the work: ``fft_c2c`` (complex to complex, forward or inverse),
``fft_r2c`` (real to complex, the last transformed axis halved to n//2 + 1) and ``fft_c2r``
(its inverse, complex to real). Each is linear, so its JVP is itself; its VJP is its adjoint:
the inverse transform with the dual normalisation ("backward" <-> "forward", "ortho" stays),
and for the halved axis PyTorch's treatment: r2c's adjoint zero-pads the half spectrum and
keeps the real part of the inverse, c2r's adjoint is r2c with the non-edge bins doubled.
Padding and cropping to ``n``/``s`` are separate differentiable ops in front of them. Axes are
kept negative, so a vmap batch axis in front never moves them. ``stft``/``istft`` (PyTorch's
top-level ``torch.stft``/``torch.istft``, exposed as ``ng.stft``/``ng.istft`` and Tensor
methods) frame, window and overlap-add around the same primitives.
"""

from __future__ import annotations

import builtins
import warnings

from . import _backend as B
from .amp import float32_in_region
from .batching import trailing_axes_rule, values
from .errors import DTypeError
from .ops.arrange import pad as _pad
from .ops.complex import conj, real, view_as_real
from .ops.elementwise import astype, multiply
from .ops.index import index_add
from .ops.methods import register
from .ops.shape import concatenate, reshape, swapaxes
from .primitive import primitive
from .tensor import Tensor, take_out, tensor

_NORMS = ("backward", "ortho", "forward")
_DUAL = {"backward": "forward", "ortho": "ortho", "forward": "backward"}


# --- the primitives ---------------------------------------------------------------------------
def _c2c_vjp(g, ans, x, axes, norm, forward):
    return _c2c(g, axes=axes, norm=_DUAL[norm], forward=not forward)


_c2c = primitive(
    "fft_c2c", lambda xp, x, axes, norm, forward: B.fft(xp, "fft" if forward else "ifft", x,
                                                         axes, norm),
    _c2c_vjp, saves="none", kind="fft", jvp="linear", complex=(_c2c_vjp,),
    doc="Complex-to-complex DFT over ``axes`` (forward or inverse).")


def _r2c_vjp(g, ans, x, axes, norm):
    """Zero-pad the half spectrum to the full length, inverse-transform, keep the real part."""
    n = x.shape[axes[-1]]
    m = g.shape[axes[-1]]
    if n > m:
        zshape = list(g.shape)
        zshape[axes[-1]] = n - m
        zeros = Tensor._of(g.backend.xp.zeros(tuple(zshape), g.dtype))
        g = concatenate([g, zeros], axes[-1])
    return real(_c2c(g, axes=axes, norm=_DUAL[norm], forward=False))


_r2c = primitive(
    "fft_r2c", lambda xp, x, axes, norm: B.fft(xp, "rfft", x, axes, norm), _r2c_vjp,
    saves="none", kind="fft", jvp="linear", complex=(_r2c_vjp,),
    doc="Real-to-complex DFT over ``axes``, the last one halved to n//2 + 1.")


def _c2r_vjp(g, ans, x, axes, norm, n):
    """r2c with the dual normalisation, the bins that stand for two (all but 0 and n/2)
    doubled."""
    out = _r2c(g, axes=axes, norm=_DUAL[norm])
    m = out.shape[axes[-1]]
    xp = g.backend.xp
    w = xp.full(m, 2.0, dtype=g.dtype)
    w[0] = 1.0
    if n % 2 == 0:
        w[-1] = 1.0
    shape = [1] * out.ndim
    shape[axes[-1]] = m
    return multiply(out, Tensor._of(w.reshape(shape)))


_c2r = primitive(
    "fft_c2r", lambda xp, x, axes, norm, n: B.fft(xp, "irfft", x, axes, norm, n), _c2r_vjp,
    saves="none", kind="fft", jvp="linear",
    doc="Complex-to-real inverse DFT over ``axes``, the last one n long from n//2 + 1 bins.")
for _p in (_c2c, _r2c, _c2r):
    _p.batch = trailing_axes_rule(_p)


# --- argument handling --------------------------------------------------------------------------
def _check_norm(op: str, norm) -> str:
    if norm is None:
        return "backward"
    if norm not in _NORMS:
        raise ValueError(f"{op}: Invalid normalization mode: {norm!r} (expected 'backward', "
                         "'ortho', 'forward' or None)")
    return norm


def _as_tensor(op: str, input) -> Tensor:
    if not isinstance(input, Tensor):
        raise TypeError(f"{op}: expected a tensor as input, got {type(input).__name__}")
    return input


def _complex_input(op: str, x: Tensor) -> Tensor:
    """``x`` as complex: floats to their complex width, integers and bools through the
    default float (PyTorch's promotion for the FFTs); lower-precision floats in float32 under
    CPU autocast (PyTorch lists the FFTs as float32 ops)."""
    k = x.dtype.kind
    if k == "c":
        return x
    if k in "biu":
        x = astype(x, B.DEFAULT_FLOAT)
    elif x.dtype.itemsize < 4:
        (x,) = float32_in_region(x, cpu_only=True)
    if x.dtype.itemsize < 4:
        raise DTypeError(f"{op}: unsupported dtype {x.dtype} (float32, float64, complex64, "
                         "complex128, integers)")
    return astype(x, B.np.complex128 if x.dtype.itemsize == 8 else B.np.complex64)


def _real_input(op: str, x: Tensor) -> Tensor:
    k = x.dtype.kind
    if k == "c":
        raise DTypeError(f"{op} expects a real input tensor, but got {x.dtype}")
    if k in "biu":
        return astype(x, B.DEFAULT_FLOAT)
    if x.dtype.itemsize < 4:
        (x,) = float32_in_region(x, cpu_only=True)  # autocast: the FFTs are float32 ops (PyTorch's)
    if x.dtype.itemsize < 4:
        raise DTypeError(f"{op}: unsupported dtype {x.dtype} (float32, float64, integers)")
    return x


def _axes(op: str, x: Tensor, s, dim, default_all: bool, one: bool = False,
          half: bool = False) -> tuple:
    """The (negative) axes and sizes of a transform, PyTorch's rules: ``dim`` defaults to the
    last len(s) axes when ``s`` is given, else to every axis (or the last one). A -1 in an
    n-d ``s`` keeps the axis' size, or at the last axis of a ``half`` (c2r) transform gives
    its default 2*(size - 1); a 1-d ``n`` must be positive."""
    nd = x.ndim
    if one:
        dim = -1 if dim is None else dim
        if not isinstance(dim, int):
            raise TypeError(f"{op}: dim must be an int, got {dim!r}")
        dims = [dim]
        sizes = None if s is None else [s]
    else:
        if isinstance(dim, int):
            dim = (dim,)
        if isinstance(s, int):
            s = (s,)
        if s is not None:
            s = list(s)
            if dim is None:
                dims = list(builtins.range(nd - len(s), nd))
            else:
                dims = list(dim)
                if len(dims) != len(s):
                    raise ValueError(f"{op}: When given, dim and shape arguments must have the "
                                     f"same length (got s={tuple(s)}, dim={tuple(dims)})")
        else:
            dims = list(builtins.range(nd)) if dim is None and default_all else \
                list(builtins.range(nd - 2, nd)) if dim is None else list(dim)
        sizes = s
    if sizes is not None and len(sizes) > nd:
        raise ValueError(f"{op}: Got shape with {len(sizes)} values but input tensor only has "
                         f"{nd} dimensions")
    out = []
    for d in dims:
        if not isinstance(d, int) or not -nd <= d < nd:
            raise IndexError(f"{op}: dimension {d!r} out of range for a tensor of {nd} "
                             "dimensions")
        out.append(d - nd if d >= 0 else d)
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: FFT dims must be unique, got {tuple(dims)}")
    if sizes is not None:
        if not one:
            sizes = [x.shape[a] if n == -1 else n for a, n in zip(out, sizes)]
            if half and sizes and s[-1] == -1:
                sizes[-1] = 2 * (x.shape[out[-1]] - 1)
        for n in sizes:
            if not isinstance(n, int) or n < 1:
                raise ValueError(f"{op}: Invalid number of data points ({n}) specified")
    return tuple(out), sizes


def _resize(x: Tensor, axes: tuple, sizes) -> Tensor:
    """``x`` cropped or zero-padded at the end of each axis to its size (differentiable)."""
    if sizes is None:
        return x
    for a, n in zip(axes, sizes):
        have = x.shape[a]
        if have > n:
            idx = [slice(None)] * x.ndim
            idx[a] = slice(0, n)
            x = x[tuple(idx)]
        elif have < n:
            zshape = list(x.shape)
            zshape[a] = n - have
            x = concatenate([x, Tensor._of(x.backend.xp.zeros(tuple(zshape), x.dtype))], a)
    return x


def _no_empty(op: str, x: Tensor, axes: tuple) -> None:
    for a in axes:
        if x.shape[a] == 0:
            raise ValueError(f"{op}: Invalid number of data points (0) specified")


# --- complex to complex -------------------------------------------------------------------------
def _cfft(op: str, input, s, dim, norm, forward: bool, default_all: bool, one: bool):
    x = _complex_input(op, _as_tensor(op, input))
    norm = _check_norm(op, norm)
    axes, sizes = _axes(op, x, s, dim, default_all, one)
    x = _resize(x, axes, sizes)
    _no_empty(op, x, axes)
    return _c2c(x, axes=axes, norm=norm, forward=forward)


def fft(input, n: int | None = None, dim: int = -1, norm: str | None = None) -> Tensor:
    """The 1-d DFT along ``dim`` (zero-padded or cropped to ``n``), as ``torch.fft.fft``."""
    return _cfft("fft", input, n, dim, norm, True, False, True)


def ifft(input, n: int | None = None, dim: int = -1, norm: str | None = None) -> Tensor:
    """The 1-d inverse DFT along ``dim``, as ``torch.fft.ifft``."""
    return _cfft("ifft", input, n, dim, norm, False, False, True)


def fft2(input, s=None, dim=(-2, -1), norm: str | None = None) -> Tensor:
    """The 2-d DFT over ``dim``, as ``torch.fft.fft2``."""
    return _cfft("fft2", input, s, dim, norm, True, False, False)


def ifft2(input, s=None, dim=(-2, -1), norm: str | None = None) -> Tensor:
    """The 2-d inverse DFT over ``dim``, as ``torch.fft.ifft2``."""
    return _cfft("ifft2", input, s, dim, norm, False, False, False)


def fftn(input, s=None, dim=None, norm: str | None = None) -> Tensor:
    """The n-d DFT over ``dim`` (every axis by default), as ``torch.fft.fftn``."""
    return _cfft("fftn", input, s, dim, norm, True, True, False)


def ifftn(input, s=None, dim=None, norm: str | None = None) -> Tensor:
    """The n-d inverse DFT over ``dim`` (every axis by default), as ``torch.fft.ifftn``."""
    return _cfft("ifftn", input, s, dim, norm, False, True, False)


# --- real to complex and back ---------------------------------------------------------------------
def _some_axis(op: str, axes: tuple) -> None:
    if not axes:
        raise ValueError(f"{op} must transform at least one axis")


def _rfft(op: str, input, s, dim, norm, default_all: bool, one: bool):
    x = _real_input(op, _as_tensor(op, input))
    norm = _check_norm(op, norm)
    axes, sizes = _axes(op, x, s, dim, default_all, one)
    _some_axis(op, axes)
    x = _resize(x, axes, sizes)
    _no_empty(op, x, axes)
    return _r2c(x, axes=axes, norm=norm)


def _irfft(op: str, input, s, dim, norm, default_all: bool, one: bool):
    x = _complex_input(op, _as_tensor(op, input))
    norm = _check_norm(op, norm)
    axes, sizes = _axes(op, x, s, dim, default_all, one, half=True)
    _some_axis(op, axes)
    if sizes is None:
        sizes = [x.shape[a] for a in axes]
        sizes[-1] = 2 * (x.shape[axes[-1]] - 1)
        if sizes[-1] < 1:
            raise ValueError(f"{op}: Invalid number of data points ({sizes[-1]}) specified")
    n = sizes[-1]
    x = _resize(x, axes, sizes[:-1] + [n // 2 + 1])
    _no_empty(op, x, axes)
    return _c2r(x, axes=axes, norm=norm, n=n)


def rfft(input, n: int | None = None, dim: int = -1, norm: str | None = None) -> Tensor:
    """The 1-d DFT of a real tensor, n//2 + 1 bins, as ``torch.fft.rfft``."""
    return _rfft("rfft", input, n, dim, norm, False, True)


def irfft(input, n: int | None = None, dim: int = -1, norm: str | None = None) -> Tensor:
    """The inverse of rfft: a real signal of length ``n`` (default 2*(bins - 1)), as
    ``torch.fft.irfft``."""
    return _irfft("irfft", input, n, dim, norm, False, True)


def rfft2(input, s=None, dim=(-2, -1), norm: str | None = None) -> Tensor:
    """The 2-d DFT of a real tensor, the last axis halved, as ``torch.fft.rfft2``."""
    return _rfft("rfft2", input, s, dim, norm, False, False)


def irfft2(input, s=None, dim=(-2, -1), norm: str | None = None) -> Tensor:
    """The inverse of rfft2, as ``torch.fft.irfft2``."""
    return _irfft("irfft2", input, s, dim, norm, False, False)


def rfftn(input, s=None, dim=None, norm: str | None = None) -> Tensor:
    """The n-d DFT of a real tensor, the last axis halved, as ``torch.fft.rfftn``."""
    return _rfft("rfftn", input, s, dim, norm, True, False)


def irfftn(input, s=None, dim=None, norm: str | None = None) -> Tensor:
    """The inverse of rfftn, as ``torch.fft.irfftn``."""
    return _irfft("irfftn", input, s, dim, norm, True, False)


def hfft(input, n: int | None = None, dim: int = -1, norm: str | None = None) -> Tensor:
    """The DFT of a Hermitian-symmetric signal given by its first half: a real result of
    length ``n`` (default 2*(len - 1)), as ``torch.fft.hfft`` (irfft of the conjugate)."""
    norm = _check_norm("hfft", norm)
    x = _complex_input("hfft", _as_tensor("hfft", input))
    return _irfft("hfft", conj(x), n, dim, _DUAL[norm], False, True)


def ihfft(input, n: int | None = None, dim: int = -1, norm: str | None = None) -> Tensor:
    """The inverse of hfft: n//2 + 1 bins of a real signal, as ``torch.fft.ihfft``."""
    norm = _check_norm("ihfft", norm)
    return conj(_rfft("ihfft", input, n, dim, _DUAL[norm], False, True))


def _hfft(op: str, input, s, dim, norm, default_all: bool) -> Tensor:
    norm = _check_norm(op, norm)
    x = _complex_input(op, _as_tensor(op, input))
    return _irfft(op, conj(x), s, dim, _DUAL[norm], default_all, False)


def _ihfft(op: str, input, s, dim, norm, default_all: bool) -> Tensor:
    norm = _check_norm(op, norm)
    return conj(_rfft(op, input, s, dim, _DUAL[norm], default_all, False))


def hfft2(input, s=None, dim=(-2, -1), norm: str | None = None) -> Tensor:
    """The 2-d DFT of a Hermitian-symmetric signal given by its half (last axis), a real
    result, as ``torch.fft.hfft2`` (irfft2 of the conjugate, dual normalisation)."""
    return _hfft("hfft2", input, s, dim, norm, False)


def hfftn(input, s=None, dim=None, norm: str | None = None) -> Tensor:
    """The n-d DFT of a Hermitian-symmetric signal given by its half (last axis; every axis by
    default), a real result, as ``torch.fft.hfftn``."""
    return _hfft("hfftn", input, s, dim, norm, True)


def ihfft2(input, s=None, dim=(-2, -1), norm: str | None = None) -> Tensor:
    """The inverse of hfft2: the half spectrum of a real signal, as ``torch.fft.ihfft2``."""
    return _ihfft("ihfft2", input, s, dim, norm, False)


def ihfftn(input, s=None, dim=None, norm: str | None = None) -> Tensor:
    """The inverse of hfftn, as ``torch.fft.ihfftn``."""
    return _ihfft("ihfftn", input, s, dim, norm, True)


# --- frequencies and shifts ---------------------------------------------------------------------
def _freq(op: str, n: int, d: float, onesided: bool, dtype, device, requires_grad: bool):
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{op}: n must be a non-negative int, got {n!r}")
    dt = B.DEFAULT_FLOAT if dtype is None else B.as_dtype(dtype)
    if not B.is_inexact(dt):
        raise DTypeError(f"{op}: expected a floating dtype, got {dt}")
    xp = B.get_backend("cpu" if device is None else device).xp
    data = B.fftfreq(xp, n, d, onesided, dt)
    return tensor(data, dtype=dt, device=device, requires_grad=requires_grad)


def fftfreq(n: int, d: float = 1.0, *, dtype=None, device=None,
            requires_grad: bool = False) -> Tensor:
    """The sample frequencies of an ``n``-point DFT (spacing ``d``), as ``torch.fft.fftfreq``:
    [0, 1, ..., -n//2, ..., -1] / (d n) in the default float dtype."""
    return _freq("fftfreq", n, d, False, dtype, device, requires_grad)


def rfftfreq(n: int, d: float = 1.0, *, dtype=None, device=None,
             requires_grad: bool = False) -> Tensor:
    """The n//2 + 1 non-negative sample frequencies of rfft, as ``torch.fft.rfftfreq``."""
    return _freq("rfftfreq", n, d, True, dtype, device, requires_grad)


def _shift(op: str, input, dim, inverse: bool) -> Tensor:
    x = _as_tensor(op, input)
    if dim is None:
        dims = tuple(builtins.range(x.ndim))
    elif isinstance(dim, int):
        dims = (dim,)
    else:
        dims = tuple(dim)
    if not dims:
        return x
    for d in dims:
        if not -x.ndim <= d < builtins.max(x.ndim, 1):
            raise IndexError(f"{op}: dimension {d} out of range for a tensor of {x.ndim} "
                             "dimensions")
    shifts = tuple(-(x.shape[d] // 2) if inverse else x.shape[d] // 2 for d in dims)
    return x.roll(shifts, dims)


def fftshift(input, dim=None) -> Tensor:
    """The zero frequency moved to the centre (roll by n//2 along ``dim``, every axis by
    default), as ``torch.fft.fftshift``."""
    return _shift("fftshift", input, dim, False)


def ifftshift(input, dim=None) -> Tensor:
    """The inverse of fftshift (roll by -(n//2)), as ``torch.fft.ifftshift``."""
    return _shift("ifftshift", input, dim, True)


# --- short-time Fourier transforms (torch.stft / torch.istft) ----------------------------------
_PAD_MODES = {"reflect": "reflect", "constant": "constant", "replicate": "edge",
              "circular": "wrap"}


def _stft_sizes(op: str, n_fft, hop_length, win_length) -> tuple:
    if isinstance(n_fft, bool) or not isinstance(n_fft, int) or n_fft < 1:
        raise ValueError(f"{op}: expected n_fft to be a positive int, got {n_fft!r}")
    hop = n_fft // 4 if hop_length is None else hop_length
    win = n_fft if win_length is None else win_length
    if isinstance(hop, bool) or not isinstance(hop, int) or hop < 1:
        raise ValueError(f"{op}: expected hop_length > 0, got {hop!r}")
    if isinstance(win, bool) or not isinstance(win, int) or not 0 < win <= n_fft:
        raise ValueError(f"{op}: expected 0 < win_length <= n_fft, but got win_length={win!r} "
                         f"and n_fft={n_fft}")
    return hop, win


def _stft_window(op: str, window, win: int, n_fft: int, like: Tensor) -> Tensor | None:
    """The window zero-padded on both sides to n_fft (None: a rectangular one, no product)."""
    if window is None:
        if win == n_fft:
            return None
        window = Tensor._of(like.backend.xp.ones(win, _real_dtype_of(like.dtype)))
    window = _as_tensor(op, window)
    if window.ndim != 1 or window.shape[0] != win:
        raise ValueError(f"{op}: expected a 1D window tensor of size equal to win_length={win}, "
                         f"but got window with size {tuple(window.shape)}")
    if window.dtype.kind not in "fc" or _real_dtype_of(window.dtype) != _real_dtype_of(
            like.dtype):
        raise DTypeError(f"{op}: expected the window to have the input's precision "
                         f"({like.dtype}), got {window.dtype}")
    left = (n_fft - win) // 2
    if left or n_fft - win - left:
        window = _pad(window, ((left, n_fft - win - left),))
    return window


def _real_dtype_of(dt):
    dt = B.np.dtype(dt)
    if dt.kind == "c":
        return B.np.dtype(B.np.float64 if dt.itemsize == 16 else B.np.float32)
    return dt


def _frame_index(xp, n_frames: int, n_fft: int, hop: int):
    """(n_frames, n_fft) positions of each frame's samples in the signal."""
    return (xp.arange(n_frames)[:, None] * hop + xp.arange(n_fft)[None, :]).astype("int64")


def stft(input, n_fft: int, hop_length: int | None = None, win_length: int | None = None,
         window=None, center: bool = True, pad_mode: str = "reflect", normalized: bool = False,
         onesided: bool | None = None, return_complex: bool | None = None,
         align_to_window: bool | None = None) -> Tensor:
    """The short-time Fourier transform, as ``torch.stft``: frames of ``n_fft`` samples every
    ``hop_length`` (default n_fft // 4), each multiplied by ``window`` (``win_length`` long,
    centred in n_fft; default rectangular) and transformed. A 1-d (L) or 2-d (B, L) input
    gives (…, n_fft // 2 + 1 or n_fft bins, frames). ``center`` pads n_fft // 2 on both sides
    in ``pad_mode``; ``normalized`` scales by n_fft^-1/2; ``onesided`` (default for real input
    and window) keeps the non-negative frequencies. ``return_complex`` must be given for real
    inputs (False, deprecated in PyTorch, returns the real view with a warning).
    ``align_to_window`` (with ``center=False`` only): frames start where their window starts,
    not where their n_fft span does. Differentiable in the input and the window."""
    op = "stft"
    x = _as_tensor(op, input)
    x, window = float32_in_region(x, window, cpu_only=True)  # autocast: a float32 op (PyTorch's)
    if x.ndim not in (1, 2):
        raise ValueError(f"{op}: expected a 1D or 2D tensor, got shape {tuple(x.shape)}")
    if x.dtype.kind in "biu":
        x = astype(x, B.DEFAULT_FLOAT)
    elif x.dtype.kind not in "fc" or x.dtype.itemsize < 4:
        raise DTypeError(f"{op}: expected a float32, float64, complex64 or complex128 input, got "
                         f"{x.dtype}")
    cwin = isinstance(window, Tensor) and window.dtype.kind == "c"
    if return_complex is None:
        if x.dtype.kind != "c" and not cwin:
            raise ValueError("stft requires the return_complex parameter be given for real "
                             "inputs, and will further require that return_complex=True in a "
                             "future PyTorch release.")
        return_complex = True
    hop, win = _stft_sizes(op, n_fft, hop_length, win_length)
    if align_to_window is not None and center:
        raise ValueError(f"{op}: align_to_window should only be set when center = false")
    if align_to_window and win < n_fft:  # the window's zero margins reach outside the signal
        left = (n_fft - win) // 2
        x = _pad(x, ((0, 0),) * (x.ndim - 1) + ((left, n_fft - win - left),))
    if center:
        if pad_mode not in _PAD_MODES:
            raise ValueError(f"{op}: pad_mode must be 'reflect', 'constant', 'replicate' or "
                             f"'circular', got {pad_mode!r}")
        p = n_fft // 2
        if pad_mode == "reflect" and p >= x.shape[-1]:
            raise ValueError(f"{op}: reflect padding of {p} needs a signal longer than it, got "
                             f"length {x.shape[-1]}")
        x = _pad(x, ((0, 0),) * (x.ndim - 1) + ((p, p),), mode=_PAD_MODES[pad_mode])
    length = x.shape[-1]
    if n_fft > length:
        raise ValueError(f"{op}: expected 0 < n_fft <= {length} (the padded signal's length), "
                         f"but got n_fft={n_fft}")
    w = _stft_window(op, window, win, n_fft, x)
    complex_in = x.dtype.kind == "c" or (w is not None and w.dtype.kind == "c")
    if onesided is None:
        onesided = not complex_in
    elif onesided and complex_in:
        raise RuntimeError(f"{op}: Cannot have onesided output if window or input is complex")
    n_frames = 1 + (length - n_fft) // hop
    frames = x[..., Tensor._of(_frame_index(x.backend.xp, n_frames, n_fft, hop))]
    if w is not None:
        frames = frames * w
    norm = "ortho" if normalized else "backward"
    if onesided:
        out = _r2c(frames, axes=(-1,), norm=norm)
    else:
        out = _c2c(_complex_input(op, frames), axes=(-1,), norm=norm, forward=True)
    out = swapaxes(out, -1, -2)
    if not return_complex:
        warnings.warn("stft with return_complex=False is deprecated (as in PyTorch): the "
                      "real view of the complex result is returned; pass return_complex=True "
                      "and use view_as_real", UserWarning, stacklevel=2)
        return view_as_real(out)
    return out


def istft(input, n_fft: int, hop_length: int | None = None, win_length: int | None = None,
          window=None, center: bool = True, normalized: bool = False,
          onesided: bool | None = None, length: int | None = None,
          return_complex: bool = False) -> Tensor:
    """The inverse of :func:`stft`, as ``torch.istft``: each frame inverse-transformed, windowed
    and overlap-added, divided by the overlap-added squared window (which must not vanish
    anywhere in the kept span); ``center`` trims n_fft // 2 from both ends, ``length`` sets the
    result's length (cropped or zero-padded). Input (…, bins, frames), complex. Differentiable
    in the input and the window."""
    op = "istft"
    x = _as_tensor(op, input)
    if x.dtype.kind != "c":
        raise DTypeError(f"{op} requires a complex-valued input tensor, got {x.dtype}")
    if x.ndim not in (2, 3):
        raise ValueError(f"{op}: expected a tensor with 2 or 3 dimensions of complex, got shape "
                         f"{tuple(x.shape)}")
    hop, win = _stft_sizes(op, n_fft, hop_length, win_length)
    n_freq, n_frames = x.shape[-2], x.shape[-1]
    if n_frames < 1:
        raise ValueError(f"{op}: expected at least one frame, got shape {tuple(x.shape)}")
    if onesided is None:
        onesided = n_freq != n_fft
    if onesided:
        if n_freq != n_fft // 2 + 1:
            raise ValueError(f"{op}: expected the frequency dimension (2nd to last) of the input "
                             f"tensor to match n_fft / 2 + 1 = {n_fft // 2 + 1} when onesided="
                             f"True, but got {n_freq}")
    elif n_freq != n_fft:
        raise ValueError(f"{op}: expected the frequency dimension (2nd to last) of the input "
                         f"tensor to match n_fft = {n_fft} when onesided=False, but got {n_freq}")
    if return_complex and onesided:
        raise RuntimeError(f"{op}: cannot have onesided output if return_complex is True")
    w = _stft_window(op, window, win, n_fft, x)
    if not return_complex and w is not None and w.dtype.kind == "c":
        raise RuntimeError(f"{op}: Complex windows are incompatible with return_complex=False")
    norm = "ortho" if normalized else "backward"
    frames = swapaxes(x, -1, -2)  # (..., frames, bins)
    if return_complex:
        frames = _c2c(frames, axes=(-1,), norm=norm, forward=False)
    else:
        if not onesided:  # a real result: the non-negative frequencies stand for all
            frames = frames[..., :n_fft // 2 + 1]
        frames = _c2r(frames, axes=(-1,), norm=norm, n=n_fft)
    xp = x.backend.xp
    if w is None:
        w = Tensor._of(xp.ones(n_fft, _real_dtype_of(x.dtype)))
    frames = frames * w
    total = n_fft + hop * (n_frames - 1)
    idx = Tensor._of(_frame_index(xp, n_frames, n_fft, hop).reshape(-1))
    lead = tuple(frames.shape[:-2])
    y = Tensor._of(xp.zeros(lead + (total,), frames.dtype))
    y = index_add(y, -1, idx, reshape(frames, lead + (n_frames * n_fft,)))
    sq = w * w if w.dtype.kind != "c" else w * conj(w)
    env = index_add(Tensor._of(xp.zeros(total, sq.dtype)), 0, idx,
                    reshape(sq.expand(n_frames, n_fft), (n_frames * n_fft,)))
    start = n_fft // 2 if center else 0
    if length is not None:
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise ValueError(f"{op}: length must be a non-negative int, got {length!r}")
        end = start + length
    else:
        end = total - n_fft // 2 if center else total
    stop = builtins.min(end, total)
    y, env = y[..., start:stop], env[start:stop]
    ev = env.backend.to_host(values(env))
    if ev.size and float(abs(ev).min()) < 1e-11:
        raise RuntimeError(f"{op}: window overlap add min: {float(ev.min()):g} (the squared "
                           "window overlap-added over the frames vanishes somewhere in the "
                           "result: the signal is not recoverable; use a window and hop_length "
                           "whose overlap covers every sample, e.g. hop_length <= win_length / 2)")
    y = y / env
    if end > total:
        zs = Tensor._of(xp.zeros(lead + (end - builtins.max(total, start),), y.dtype))
        y = concatenate([y, zs], -1)
    return y


register({"stft": stft, "istft": istft})

__all__ = ["fft", "ifft", "fft2", "ifft2", "fftn", "ifftn", "rfft", "irfft", "rfft2", "irfft2",
           "rfftn", "irfftn", "hfft", "ihfft", "hfft2", "hfftn", "ihfft2", "ihfftn", "fftfreq",
           "rfftfreq", "fftshift", "ifftshift"]


take_out(globals(), """
    fft fft2 fftfreq fftn hfft hfft2 hfftn ifft ifft2 ifftn ihfft ihfft2 ihfftn irfft irfft2
    irfftn rfft rfft2 rfftfreq rfftn
""", "fft.")
