"""PyTorch's ``torch.signal.windows``: SciPy-style windows with ``sym=`` (symmetric, for filter
design, the default) or ``sym=False`` (periodic, for spectral analysis: the first M points of a
symmetric window one point longer, except ``cosine``, ``exponential`` and ``gaussian``, which
follow PyTorch's own periodic formulas).

Each window is computed in float64 on the host and cast to ``dtype`` (float32 or float64, as
PyTorch allows), then placed on ``device`` as a leaf tensor (``requires_grad`` as given).
The top-level ``ng.hann_window(M, periodic=True)`` family is the same windows with the opposite
default (periodic)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from .. import _backend as B
from ..dtypes import get_default_dtype
from ..errors import DTypeError, count_arg
from ..tensor import Tensor
from ..tensor import tensor as _tensor

__all__ = ["bartlett", "blackman", "cosine", "exponential", "gaussian", "general_cosine",
           "general_hamming", "hamming", "hann", "kaiser", "nuttall"]


class _WindowDTypeError(DTypeError, ValueError):
    """A window asked for a dtype other than float32/float64 (a ValueError, as PyTorch's)."""


def _length(op: str, M) -> int:
    return count_arg(op, "the window length M", M, 0)


def _dtype(op: str, dtype):
    dt = B.as_dtype(dtype) if dtype is not None else B.as_dtype(get_default_dtype())
    if dt not in (B.np.dtype("float32"), B.np.dtype("float64")):
        raise _WindowDTypeError(f"{op} expects float32 or float64 dtypes, got: {dt}")
    return dt


def _finish(w, dt, device, requires_grad: bool) -> Tensor:
    return _tensor(B.np.asarray(w, dtype=B.np.float64).astype(dt), device=device,
                   requires_grad=requires_grad)


def _grid(start: float, step: float, M: int):
    """start + step * [0, 1, ..., M - 1] in float64 (PyTorch's linspace from start to
    start + (M - 1) step)."""
    return start + step * B.np.arange(M, dtype=B.np.float64)


def general_cosine(M: int, *, a: Iterable[float], sym: bool = True, dtype=None, device=None,
                   requires_grad: bool = False) -> Tensor:
    """sum_i (-1)^i a_i cos(2 pi i n / D), D = M - 1 (``sym``) or M (periodic): the family
    behind hann, hamming, blackman and nuttall."""
    op = "general_cosine"
    M, dt = _length(op, M), _dtype(op, dtype)
    if M <= 1:
        return _finish(B.np.ones(M), dt, device, requires_grad)
    if not isinstance(a, Iterable) or isinstance(a, str):
        raise TypeError(f"{op}: coefficients a must be a list or tuple of numbers, got {a!r}")
    coefs = [float(c) for c in a]
    if not coefs:
        raise ValueError(f"{op}: coefficients a cannot be empty")
    np = B.np
    k = _grid(0.0, 2 * math.pi / (M - 1 if sym else M), M)
    w = sum((-1) ** i * c * np.cos(i * k) for i, c in enumerate(coefs))
    return _finish(w, dt, device, requires_grad)


def general_hamming(M: int, *, alpha: float = 0.54, sym: bool = True, dtype=None, device=None,
                    requires_grad: bool = False) -> Tensor:
    """alpha - (1 - alpha) cos(2 pi n / D): hann is alpha = 0.5, hamming alpha = 0.54."""
    return general_cosine(M, a=[alpha, 1.0 - alpha], sym=sym, dtype=dtype, device=device,
                          requires_grad=requires_grad)


def hann(M: int, *, sym: bool = True, dtype=None, device=None,
         requires_grad: bool = False) -> Tensor:
    """The Hann window 0.5 - 0.5 cos(2 pi n / D)."""
    return general_hamming(M, alpha=0.5, sym=sym, dtype=dtype, device=device,
                           requires_grad=requires_grad)


def hamming(M: int, *, sym: bool = True, dtype=None, device=None,
            requires_grad: bool = False) -> Tensor:
    """The Hamming window 0.54 - 0.46 cos(2 pi n / D)."""
    return general_hamming(M, sym=sym, dtype=dtype, device=device, requires_grad=requires_grad)


def blackman(M: int, *, sym: bool = True, dtype=None, device=None,
             requires_grad: bool = False) -> Tensor:
    """The Blackman window 0.42 - 0.5 cos(2 pi n / D) + 0.08 cos(4 pi n / D)."""
    return general_cosine(M, a=[0.42, 0.5, 0.08], sym=sym, dtype=dtype, device=device,
                          requires_grad=requires_grad)


def nuttall(M: int, *, sym: bool = True, dtype=None, device=None,
            requires_grad: bool = False) -> Tensor:
    """Nuttall's minimum 4-term Blackman-Harris window (coefficients 0.3635819, 0.4891775,
    0.1365995, 0.0106411), with very low side lobes."""
    return general_cosine(M, a=[0.3635819, 0.4891775, 0.1365995, 0.0106411], sym=sym,
                          dtype=dtype, device=device, requires_grad=requires_grad)


def bartlett(M: int, *, sym: bool = True, dtype=None, device=None,
             requires_grad: bool = False) -> Tensor:
    """The triangular window 1 - |2 n / D - 1|."""
    op = "bartlett"
    M, dt = _length(op, M), _dtype(op, dtype)
    if M <= 1:
        return _finish(B.np.ones(M), dt, device, requires_grad)
    k = _grid(-1.0, 2.0 / (M - 1 if sym else M), M)
    return _finish(1 - B.np.abs(k), dt, device, requires_grad)


def cosine(M: int, *, sym: bool = True, dtype=None, device=None,
           requires_grad: bool = False) -> Tensor:
    """The sine window sin(pi (n + 1/2) / D), D = M (``sym``) or M + 1 (periodic, PyTorch's
    formula)."""
    op = "cosine"
    M, dt = _length(op, M), _dtype(op, dtype)
    c = math.pi / (M + 1 if not sym and M > 1 else M) if M else 0.0
    return _finish(B.np.sin(_grid(0.5 * c, c, M)), dt, device, requires_grad)


def exponential(M: int, *, center: float | None = None, tau: float = 1.0, sym: bool = True,
                dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """The Poisson window exp(-|n - center| / tau); ``center`` defaults to (M - 1) / 2
    (``sym``) or M / 2 (periodic) and may be given only for periodic windows."""
    op = "exponential"
    M, dt = _length(op, M), _dtype(op, dtype)
    if not tau > 0:
        raise ValueError(f"{op}: tau must be positive, got {tau}")
    if sym and center is not None:
        raise ValueError(f"{op}: center must be None for symmetric windows (sym=True), "
                         f"got {center}")
    if center is None:
        center = (M if not sym and M > 1 else M - 1) / 2.0
    k = _grid(-center / tau, 1.0 / tau, M)
    return _finish(B.np.exp(-B.np.abs(k)), dt, device, requires_grad)


def gaussian(M: int, *, std: float = 1.0, sym: bool = True, dtype=None, device=None,
             requires_grad: bool = False) -> Tensor:
    """exp(-(n - c)^2 / (2 std^2)), c = (M - 1) / 2 (``sym``) or M / 2 (periodic)."""
    op = "gaussian"
    M, dt = _length(op, M), _dtype(op, dtype)
    if not std > 0:
        raise ValueError(f"{op}: standard deviation std must be positive, got {std}")
    c = 1 / (std * math.sqrt(2))
    start = -(M if not sym and M > 1 else M - 1) / 2.0
    k = _grid(start * c, c, M)
    return _finish(B.np.exp(-(k ** 2)), dt, device, requires_grad)


def kaiser(M: int, *, beta: float = 12.0, sym: bool = True, dtype=None, device=None,
           requires_grad: bool = False) -> Tensor:
    """The Kaiser window I0(beta sqrt(1 - (2 n / D - 1)^2)) / I0(beta), D = M - 1 (``sym``)
    or M (periodic); a larger ``beta`` lowers the side lobes and widens the main lobe."""
    op = "kaiser"
    M, dt = _length(op, M), _dtype(op, dtype)
    if not beta >= 0:
        raise ValueError(f"{op}: beta must be non-negative, got {beta}")
    if M <= 1:
        return _finish(B.np.ones(M), dt, device, requires_grad)
    np = B.np
    beta = float(beta)
    k = np.minimum(_grid(-beta, 2.0 * beta / (M - 1 if sym else M), M), beta)
    w = np.i0(np.sqrt(np.maximum(beta * beta - k * k, 0.0))) / np.i0(beta)
    return _finish(w, dt, device, requires_grad)
