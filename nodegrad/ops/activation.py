"""More activations (PyTorch's set): hardtanh as a primitive (PyTorch's gradient is 0 on the
bounds), the rest as exact compositions of elementwise primitives. Each also has a function in
``nn.functional`` and a module in ``nn``.
"""

from __future__ import annotations

from ..errors import ShapeError
from ..primitive import primitive
from .elementwise import (abs, clip, expm1, logical_and, logical_or, sigmoid, softplus,
                          tanh, where)
from .nn import softmax
from .shape import norm_axis, split

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _hardtanh_vjp(g, ans, x, min_val, max_val):
    # 0 on and beyond the bounds, else g: a NaN input (NaN out) gets g, as relu's, not a
    # silent 0 (PyTorch's formula; its vectorised loop gives 0 there, its scalar one g)
    outside = logical_or(x <= min_val, x >= max_val)
    return where(outside, 0.0, g)


_hardtanh = primitive(
    "hardtanh", lambda xp, x, min_val, max_val: xp.clip(x, min_val, max_val), _hardtanh_vjp,
    kind="elementwise", jvp="vjp",
    doc="x clipped to [min_val, max_val]; the gradient is 0 on and beyond the bounds, else 1.")


def hardtanh(x, min_val: float = -1.0, max_val: float = 1.0):
    """x clipped to [min_val, max_val] (PyTorch's gradient: 0 on the bounds). An integer x
    stays integer, its bounds truncated toward zero, as PyTorch's."""
    if min_val > max_val:
        raise ValueError(f"hardtanh: min_val {min_val} must not exceed max_val {max_val}")
    if getattr(getattr(x, "dtype", None), "kind", "f") in "iu":
        if x.dtype.kind == "u" and min(min_val, max_val) < 0:
            raise ValueError(f"hardtanh: cannot clip an unsigned tensor ({x.dtype}) to negative "
                             f"bounds [{min_val}, {max_val}]")
        return clip(x, int(min_val), int(max_val))
    return _hardtanh(x, min_val=float(min_val), max_val=float(max_val))


def relu6(x):
    """min(max(x, 0), 6)."""
    return hardtanh(x, 0.0, 6.0)


def hardsigmoid(x):
    """relu6(x + 3) / 6: a piecewise-linear sigmoid."""
    return hardtanh(x + 3.0, 0.0, 6.0) / 6.0


def hardswish(x):
    """x · relu6(x + 3) / 6 (MobileNetV3); x itself from 3 up and 0 from −3 down, so the
    gradient at ±inf is PyTorch's 1 and 0, not inf · 0."""
    inside = where(logical_or(x <= -3.0, x >= 3.0), 0.0, x)  # NaN stays, to propagate
    return where(x >= 3.0, x, inside * (hardtanh(inside + 3.0, 0.0, 6.0) / 6.0))


def nonpositive_part(x):
    """x where x <= 0, else 0: what the exponential branch of elu-like activations sees (no
    overflow), with gradient exactly 1 there (``minimum(x, 0)`` would halve it at 0)."""
    return where(x > 0, 0.0, x)


def _elu(x, alpha):
    return where(x > 0, x, expm1(nonpositive_part(x)) * alpha)


def selu(x):
    """scale · elu(x, alpha) with the self-normalising constants of Klambauer et al."""
    return _elu(x, _SELU_ALPHA) * _SELU_SCALE


def celu(x, alpha: float = 1.0):
    """x for x > 0, else alpha·(exp(x / alpha) − 1)."""
    if alpha == 0:
        raise ValueError("celu: alpha must be nonzero")
    return where(x > 0, x, expm1(nonpositive_part(x) / alpha) * alpha)


def mish(x):
    """x · tanh(softplus(x))."""
    return x * tanh(softplus(x))


def logsigmoid(x):
    """log(sigmoid(x)) = −softplus(−x), finite for large |x|."""
    return -softplus(-x)


def softsign(x):
    """x / (1 + |x|)."""
    return x / (abs(x) + 1.0)


def softmin(x, dim: int = -1, dtype=None):
    """softmax(−x) along ``dim`` (in ``dtype`` when given, as PyTorch's)."""
    return softmax(-x, dim, dtype=dtype)


def tanhshrink(x):
    """x − tanh(x)."""
    return x - tanh(x)


def softshrink(x, lambd: float = 0.5):
    """x − lambd above lambd, x + lambd below −lambd, else 0."""
    if lambd < 0:
        raise ValueError(f"softshrink: lambd must be non-negative, got {lambd}")
    # a NaN input takes the outer branch (NaN out, gradient g, as PyTorch's formula)
    middle = logical_and(x >= -lambd, x <= lambd)
    return where(middle, 0.0, where(x > lambd, x - lambd, x + lambd))


def hardshrink(x, lambd: float = 0.5):
    """x where |x| > lambd, else 0."""
    # a NaN input stays NaN with gradient g (PyTorch's formula), never a silent 0
    return where(abs(x) <= lambd, 0.0, x)


def threshold(x, threshold: float, value: float):
    """x where x > threshold, else ``value`` (cast to an integer x's dtype, as PyTorch's); a
    NaN x stays NaN with gradient 1, as in PyTorch."""
    if getattr(getattr(x, "dtype", None), "kind", "f") in "iu":
        value = int(value)
    return where(x <= threshold, value, x)


def glu(x, dim: int = -1):
    """Gated linear unit: a · sigmoid(b) for the two halves a, b of ``x`` along ``dim``."""
    ax = norm_axis(dim, x.ndim, "glu") if x.ndim else None
    if ax is None or x.shape[ax] % 2:
        raise ShapeError(f"glu: dim {dim} must have even length, got shape {tuple(x.shape)}")
    a, b = split(x, 2, ax)
    return a * sigmoid(b)
