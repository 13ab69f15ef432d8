r"""Weight initialisers (in place, like ``torch.nn.init``), with the notes' formulas.

Fans: for a weight of shape (out, in, *kernel), fan_in = in·∏kernel and fan_out = out·∏kernel.
The notes' argument: a layer multiplies the input variance by fan_in·σ², so σ² ≈ 1/fan_in keeps
the forward signal (LeCun / the notes' simple Xavier), σ² = 2/(fan_in + fan_out) balances forward
and backward (Xavier/Glorot), and σ² = 2/fan_in compensates ReLU killing half the signal (He).
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings as _warnings
from collections.abc import Callable

from .. import _backend as B
from ..autodiff import effect, no_grad
from ..errors import DTypeError
from ..random import Generator, check_normal_args, check_uniform_args, default_generator
from ..random import _normal, _uniform
from ..tensor import Tensor

_GAINS = {"linear": 1.0, "identity": 1.0, "sigmoid": 1.0, "tanh": 5.0 / 3, "relu": math.sqrt(2.0),
          "selu": 0.75,
          **{f"conv{k}": 1.0 for k in ("1d", "2d", "3d", "_transpose1d", "_transpose2d",
                                        "_transpose3d")}}


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The factor by which a nonlinearity scales the variance, as PyTorch tabulates it.
    ``param`` is leaky_relu's negative slope (a real number, not a bool; default 0.01) and is
    ignored for the others."""
    if nonlinearity == "leaky_relu":
        if param is None:
            a = 0.01
        elif isinstance(param, numbers.Real) and not isinstance(param, bool):
            a = float(param)
        else:
            raise ValueError(f"calculate_gain: leaky_relu's negative slope must be a number, "
                             f"got {type(param).__name__} {param!r}")
        return math.sqrt(2.0 / (1 + a * a))
    if not isinstance(nonlinearity, str) or nonlinearity not in _GAINS:
        raise ValueError(f"calculate_gain: unknown nonlinearity {nonlinearity!r}; "
                         f"expected one of {sorted(_GAINS) + ['leaky_relu']}")
    return _GAINS[nonlinearity]


def fan_in_and_fan_out(t: Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of shape (out, in, *kernel)."""
    if t.ndim < 2:
        raise ValueError(f"fan_in_and_fan_out: need a weight with at least 2 dims, got shape "
                         f"{tuple(t.shape)}")
    k = math.prod(t.shape[2:])
    return t.shape[1] * k, t.shape[0] * k


_calculate_fan_in_and_fan_out = fan_in_and_fan_out  # PyTorch's private name, used by copied code


def _check_mode(op: str, mode: str) -> str:
    if not isinstance(mode, str) or mode.lower() not in ("fan_in", "fan_out"):
        raise ValueError(f"{op}: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    return mode.lower()


def _calculate_correct_fan(tensor: Tensor, mode: str) -> int:
    """The fan_in or fan_out of ``tensor`` by ``mode`` (PyTorch's private helper, case
    insensitive as there); a ValueError for another mode or fewer than 2 dims."""
    fi, fo = fan_in_and_fan_out(tensor)
    return fi if _check_mode("_calculate_correct_fan", mode) == "fan_in" else fo


def _need_float(t: Tensor, op: str, complex_ok: bool = False) -> None:
    """Random fills are continuous distributions: refuse an integer or bool tensor (PyTorch
    does too) instead of truncating the samples. The normal and uniform families also fill
    complex tensors (PyTorch's), part by part."""
    if not (B.is_float(t.dtype) or (complex_ok and t.dtype.kind == "c")):
        raise DTypeError(f"{op}: expected a floating-point tensor to fill with random samples, "
                         f"got {t.dtype}")


@effect  # under nodegrad.jit each replay draws and writes again
def _fill(t: Tensor, sample: Callable, generator: Generator | None) -> Tensor:
    gen = generator or default_generator(t.device)
    with no_grad():
        t._data[...] = sample(gen).astype(t.dtype, copy=False)
        t._bump()
    return t


def _also_arrays(init: Callable) -> Callable:
    """``init`` that also fills a raw backend array in place and returns it: code written for
    NumPy passes arrays, and PyTorch's ``m.weight.data`` (DCGAN's
    ``nn.init.normal_(m.weight.data, 0.0, 0.02)``) is a tensor of the parameter's memory."""
    @functools.wraps(init)
    def fill(tensor, *args, **kwargs):
        if not isinstance(tensor, Tensor) and B.is_array(tensor):
            init(Tensor._of(tensor), *args, **kwargs)  # a view on the same memory
            return tensor
        return init(tensor, *args, **kwargs)
    return fill


@_also_arrays
@effect  # under nodegrad.jit each replay writes again
def constant_(tensor: Tensor, val: float) -> Tensor:
    with no_grad():
        tensor._data[...] = val
        tensor._bump()
    return tensor


@_also_arrays
def zeros_(tensor: Tensor) -> Tensor:
    return constant_(tensor, 0.0)


@_also_arrays
def ones_(tensor: Tensor) -> Tensor:
    return constant_(tensor, 1.0)


def _normal_fill(op: str, tensor: Tensor, mean: float, std: float,
                 generator: Generator | None) -> Tensor:
    check_normal_args(op, std)
    _need_float(tensor, op, complex_ok=True)
    return _fill(tensor, lambda g: _normal(g, tensor.shape, tensor.dtype, mean, std), generator)


def _uniform_fill(op: str, tensor: Tensor, a: float, b: float,
                  generator: Generator | None) -> Tensor:
    check_uniform_args(op, a, b)
    _need_float(tensor, op, complex_ok=True)
    return _fill(tensor, lambda g: _uniform(g, tensor.shape, tensor.dtype, a, b), generator)


@_also_arrays
def normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0,
            generator: Generator | None = None) -> Tensor:
    """N(mean, std²), std >= 0. The notes' small random init is ``normal_(w, std=0.01)``."""
    return _normal_fill("normal_", tensor, mean, std, generator)


@_also_arrays
def uniform_(tensor: Tensor, a: float = 0.0, b: float = 1.0,
             generator: Generator | None = None) -> Tensor:
    """U[a, b), a <= b."""
    return _uniform_fill("uniform_", tensor, a, b, generator)


@_also_arrays
def xavier_uniform_(tensor: Tensor, gain: float = 1.0,
                    generator: Generator | None = None) -> Tensor:
    r"""Glorot: U(±gain·√(6 / (fan_in + fan_out))); a zero-element tensor is left as it is."""
    fi, fo = fan_in_and_fan_out(tensor)
    _need_float(tensor, "xavier_uniform_", complex_ok=True)
    if tensor.numel() == 0:
        return tensor
    bound = gain * math.sqrt(6.0 / (fi + fo))
    return _uniform_fill("xavier_uniform_", tensor, -bound, bound, generator)


@_also_arrays
def xavier_normal_(tensor: Tensor, gain: float = 1.0, generator: Generator | None = None) -> Tensor:
    r"""Glorot: N(0, gain²·2 / (fan_in + fan_out)), the notes' Xavier; a zero-element tensor is
    left as it is."""
    fi, fo = fan_in_and_fan_out(tensor)
    _need_float(tensor, "xavier_normal_", complex_ok=True)
    if tensor.numel() == 0:
        return tensor
    return _normal_fill("xavier_normal_", tensor, 0.0, gain * math.sqrt(2.0 / (fi + fo)),
                        generator)


@_also_arrays
def lecun_normal_(tensor: Tensor, generator: Generator | None = None) -> Tensor:
    r"""N(0,1)·√(1/fan_in): the notes' simple Xavier (LeCun normal); a zero-element tensor is
    left as it is."""
    fi, _ = fan_in_and_fan_out(tensor)
    _need_float(tensor, "lecun_normal_", complex_ok=True)
    if tensor.numel() == 0:
        return tensor
    return _normal_fill("lecun_normal_", tensor, 0.0, math.sqrt(1.0 / fi), generator)


simple_xavier_normal_ = lecun_normal_


def _kaiming_std(op: str, t: Tensor, a, mode, nonlinearity) -> float | None:
    """The He standard deviation for ``t``, or None for a zero-element tensor (which has a
    zero fan): as PyTorch, that warns and is left as it is."""
    mode = _check_mode(op, mode)
    gain = calculate_gain(nonlinearity, a)
    _need_float(t, op, complex_ok=True)
    if t.numel() == 0:
        _warnings.warn("Initializing zero-element tensors is a no-op", stacklevel=3)
        return None
    fi, fo = fan_in_and_fan_out(t)
    return gain / math.sqrt(fi if mode == "fan_in" else fo)


@_also_arrays
def kaiming_normal_(tensor: Tensor, a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu", generator: Generator | None = None) -> Tensor:
    r"""He ("Xavier2"): N(0,1)·gain/√fan; for ReLU gain = √2, so σ² = 2/fan_in. A zero-element
    tensor warns and is left as it is (PyTorch's)."""
    std = _kaiming_std("kaiming_normal_", tensor, a, mode, nonlinearity)
    if std is None:
        return tensor
    return _normal_fill("kaiming_normal_", tensor, 0.0, std, generator)


@_also_arrays
def kaiming_uniform_(tensor: Tensor, a: float = 0.0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu",
                     generator: Generator | None = None) -> Tensor:
    r"""He uniform: U(±gain·√(3/fan)), the same variance as :func:`kaiming_normal_`. A
    zero-element tensor warns and is left as it is (PyTorch's)."""
    std = _kaiming_std("kaiming_uniform_", tensor, a, mode, nonlinearity)
    if std is None:
        return tensor
    bound = math.sqrt(3.0) * std
    return _uniform_fill("kaiming_uniform_", tensor, -bound, bound, generator)


@_also_arrays
def orthogonal_(tensor: Tensor, gain: float = 1.0, generator: Generator | None = None) -> Tensor:
    """A (semi-)orthogonal matrix from the QR decomposition of a Gaussian one, times ``gain``."""
    if tensor.ndim < 2:
        raise ValueError(f"orthogonal_: need at least 2 dims, got shape {tuple(tensor.shape)}")
    _need_float(tensor, "orthogonal_")
    rows, cols = tensor.shape[0], math.prod(tensor.shape[1:])

    def sample(g):
        a = B.backend_of(tensor._data).to_host(g.normal((max(rows, cols), min(rows, cols)),
                                                       B.float64))
        q, r = B.np.linalg.qr(a)
        q = q * B.np.sign(B.np.diag(r))
        q = q if rows >= cols else q.T
        return B.backend_of(tensor._data).asarray((gain * q).reshape(tensor.shape))

    return _fill(tensor, sample, generator)


@_also_arrays
def trunc_normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0,
                  b: float = 2.0, generator: Generator | None = None) -> Tensor:
    """N(mean, std²) truncated to [a, b] (absolute bounds, as PyTorch's; a == b fills with a,
    and a negative std acts as its magnitude, as there): uniform draws between the bounds'
    normal CDFs mapped back through the inverse CDF, then clipped against rounding. The bounds
    are taken in the lower tail (the interval mirrored when it lies mostly above the mean),
    where the CDF keeps its precision, so a window many std from the mean is still sampled
    from the right shape. The init of vision transformers (``std=0.02``)."""
    if not a <= b or std == 0:
        raise ValueError(f"trunc_normal_: expected a < b (or a == b, a constant fill) and "
                         f"std != 0, got a={a}, b={b}, std={std}")
    _need_float(tensor, "trunc_normal_")
    be = B.backend_of(tensor._data)
    std = abs(std)
    lo_z, hi_z = (a - mean) / std, (b - mean) / std
    flip = lo_z + hi_z > 0  # mostly above the mean: sample its mirror image below it
    if flip:
        lo_z, hi_z = -hi_z, -lo_z
    lo, hi = (math.erfc(-z / math.sqrt(2)) / 2 for z in (lo_z, hi_z))

    def sample(g):
        u = _uniform(g, tensor.shape, B.float64, 0.0, 1.0)
        if hi > 1e-300:
            z = be.special("ndtri", lo + u * (hi - lo))
        else:  # past ~37 std the CDF underflows: the density there is exp(t·z), t = -hi_z
            t = -hi_z
            z = hi_z + be.xp.log1p(u * math.expm1(-t * (hi_z - lo_z))) / t
        z = be.xp.clip(z, lo_z, hi_z)
        return be.xp.clip(mean + std * (-z if flip else z), a, b)

    return _fill(tensor, sample, generator)


@_also_arrays
def eye_(tensor: Tensor) -> Tensor:
    """The identity matrix (ones on the diagonal of a 2-d tensor), as PyTorch's."""
    if tensor.ndim != 2:
        raise ValueError(f"eye_: expected a 2-d tensor, got shape {tuple(tensor.shape)}")
    xp = B.backend_of(tensor._data).xp
    return _fill(tensor, lambda g: xp.eye(*tensor.shape), None)


@_also_arrays
def dirac_(tensor: Tensor, groups: int = 1) -> Tensor:
    """A convolution kernel (3-5 dims) that passes its input through: in each of ``groups``
    groups, output channel i has a one at the centre of input channel i, as PyTorch's."""
    if tensor.ndim not in (3, 4, 5):
        raise ValueError(f"dirac_: expected a 3-, 4- or 5-d tensor, got shape "
                         f"{tuple(tensor.shape)}")
    out_per_group = tensor.shape[0] // groups
    if tensor.shape[0] % groups:
        raise ValueError(f"dirac_: {tensor.shape[0]} output channels do not divide into {groups} "
                         "groups")
    xp = B.backend_of(tensor._data).xp

    def sample(g):
        w = xp.zeros(tensor.shape)
        centre = tuple(k // 2 for k in tensor.shape[2:])
        for grp in range(groups):
            for i in range(min(out_per_group, tensor.shape[1])):
                w[(grp * out_per_group + i, i) + centre] = 1
        return w

    return _fill(tensor, sample, None)


@_also_arrays
def sparse_(tensor: Tensor, sparsity: float, std: float = 0.01,
            generator: Generator | None = None) -> Tensor:
    """Martens' (2010) sparse init of a 2-d weight: N(0, std²), then in every column
    ⌈sparsity · rows⌉ entries at random rows set to zero, as PyTorch's."""
    if tensor.ndim != 2:
        raise ValueError(f"sparse_: only 2-d tensors are supported, got shape "
                         f"{tuple(tensor.shape)}")
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparse_: sparsity must be in [0, 1], got {sparsity}")
    _need_float(tensor, "sparse_")
    rows, cols = tensor.shape
    n_zero = math.ceil(sparsity * rows)

    def sample(g):
        w = g.normal(tensor.shape, tensor.dtype) * std
        xp = B.backend_of(w).xp
        order = xp.argsort(g.random(tensor.shape, B.float64), axis=0)  # a permutation per column
        xp.put_along_axis(w, order[:n_zero], 0, axis=0)
        return w

    return _fill(tensor, sample, generator)


def _deprecated(new: Callable) -> Callable:
    """PyTorch's old name for ``new`` (without the trailing underscore): warns, then calls it."""
    old = new.__name__[:-1]

    def deprecated_init(*args, **kwargs):
        _warnings.warn(f"`nn.init.{old}` is now deprecated in favor of `nn.init.{new.__name__}`.",
                       FutureWarning, stacklevel=2)
        return new(*args, **kwargs)

    deprecated_init.__name__ = deprecated_init.__qualname__ = old
    deprecated_init.__doc__ = f"Deprecated alias of :func:`{new.__name__}` (warns, as PyTorch)."
    return deprecated_init


uniform = _deprecated(uniform_)
normal = _deprecated(normal_)
constant = _deprecated(constant_)
eye = _deprecated(eye_)
dirac = _deprecated(dirac_)
xavier_uniform = _deprecated(xavier_uniform_)
xavier_normal = _deprecated(xavier_normal_)
kaiming_uniform = _deprecated(kaiming_uniform_)
kaiming_normal = _deprecated(kaiming_normal_)
orthogonal = _deprecated(orthogonal_)
sparse = _deprecated(sparse_)


def default_bound(fan_in: int) -> float:
    """PyTorch's default for Linear/Conv weights and biases: U(±1/√fan_in)."""
    return 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0


# init= choices that layers accept (a callable taking the weight also works)
SCHEMES: dict[str, Callable] = {
    "default": lambda w: uniform_(w, -default_bound(fan_in_and_fan_out(w)[0]),
                                  default_bound(fan_in_and_fan_out(w)[0])),
    "he": lambda w: kaiming_normal_(w, nonlinearity="relu"),
    "kaiming": lambda w: kaiming_normal_(w, nonlinearity="relu"),
    "he_uniform": lambda w: kaiming_uniform_(w, nonlinearity="relu"),
    "xavier": xavier_normal_,
    "xavier_uniform": xavier_uniform_,
    "lecun": lecun_normal_,
    "small_normal": lambda w: normal_(w, 0.0, 0.01),
    "orthogonal": orthogonal_,
    "zeros": zeros_,
}


def init_weight(w: Tensor, scheme) -> Tensor:
    """Apply an ``init=`` choice: a name from :data:`SCHEMES` or a callable."""
    if callable(scheme):
        scheme(w)
        return w
    if scheme not in SCHEMES:
        raise ValueError(f"init: unknown scheme {scheme!r}; expected a callable or one of "
                         f"{sorted(SCHEMES)}")
    SCHEMES[scheme](w)
    return w
