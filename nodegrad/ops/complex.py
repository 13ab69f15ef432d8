"""Complex numbers: real and imaginary parts, conjugate, angle, and building complex tensors.

Gradients follow PyTorch's convention: for a real loss L of z = x + iy, ``z.grad`` is
dL/dx + i dL/dy, so a holomorphic f sends back g * conj(f'(z)) and a real-valued function of z
(``abs``, ``real``, ``imag``, ``angle``) turns a real cotangent into a complex one. The engine
applies the conjugation (:func:`nodegrad.autodiff._complex_vjps`) to the primitives listed in
:data:`HOLOMORPHIC`, whose rules are written with f'; the ops here declare rules of their own,
and ``_OWN_RULES`` gives complex rules to ops declared elsewhere whose real rules do not hold for
complex inputs (``sign`` as sgn's z / |z|, ``acosh`` on its principal branch).
``real``, ``imag``, ``view_as_real`` and ``view_as_complex`` are views, as in PyTorch: their
arrays view the input's memory (NumPy's part views and dtype views), so bind shares the version
counter and an in-place write through one reaches the tensor it views, recorded for autograd
(:func:`.index.write_through`, a ``view_put``); ``z.real = x`` and ``z.imag = x`` copy x in.
"""

from __future__ import annotations

import math

from .. import _backend as B
from ..amp import float32_in_region
from ..batching import BatchTracer, elementwise_rule, trailing_axes_rule
from ..errors import DTypeError, ShapeError
from ..primitive import REGISTRY, primitive
from ..tensor import Tensor, zeros_like
from . import shape as S
from .elementwise import astype, cos, isnan, less, multiply, sin, sqrt, where
from .methods import register

# not "elementwise": their dtypes follow other rules than a real op's (complex in, real out);
# their batching rules are still the elementwise one (set below)
_EW = "complex"


def _complex_dtype(dt):
    """The complex dtype of a float dtype's width (complex64 for float16 and float32)."""
    return B.np.dtype(B.np.complex128 if dt.itemsize == 8 else B.np.complex64)


def _real_dtype(dt):
    """The float dtype of a complex dtype's width."""
    return B.np.dtype(B.np.float64 if dt.itemsize == 16 else B.np.float32)


def _need_tensor(op: str, x) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected a tensor, got {type(x).__name__}")
    return x


# --- primitives -------------------------------------------------------------------------------
def _make_complex(xp, re, im):
    out = xp.empty(B.np.broadcast_shapes(re.shape, im.shape), _complex_dtype(re.dtype))
    out.real[...] = re  # through the part views (every backend's arrays have them)
    out.imag[...] = im
    return out


# ops with a complex output see complex cotangents only: their rules are their ``complex`` ones
_complex_rules = (lambda g, ans, re, im: real(g), lambda g, ans, re, im: imag(g))
_complex = primitive(
    "complex", _make_complex, _complex_rules, saves="none", kind=_EW, jvp="linear",
    operands=None, complex=_complex_rules, doc="re + i im, from two float tensors of one dtype.")
_conj = primitive("conj", lambda xp, x: xp.conj(x), lambda g, ans, x: conj(g), saves="none",
                  kind=_EW, jvp="linear", promote=False,
                  complex=(lambda g, ans, x: conj(g),), doc="The complex conjugate.")
_real = primitive("real", lambda xp, x: x.real,
                  lambda g, ans, x: _complex(g, zeros_like(g)), saves="none",
                  kind=_EW, jvp="linear",
                  promote=False, doc="The real part of a complex tensor (a view of it).")
_imag = primitive("imag", lambda xp, x: x.imag,
                  lambda g, ans, x: _complex(zeros_like(g), g), saves="none",
                  kind=_EW, jvp="linear", promote=False,
                  doc="The imaginary part of a complex tensor (a view of it).")


def _angle_vjp(g, ans, x):
    """d angle: g * i z / |z|^2 (0 at z = 0, as PyTorch)."""
    zero = x == 0
    return g * where(zero, 0, x * 1j / where(zero, 1, x * conj(x)))


_angle = primitive("angle", lambda xp, x: xp.angle(x), _angle_vjp, kind=_EW, jvp=(
    lambda t, ans, x: real(conj(_angle_vjp(1, ans, x)) * t),), promote=False,
                   doc="The argument of a complex number, in (-pi, pi].")


def _view_as_real_fwd(xp, x):
    """A view: a trailing axis of size 1 may change its itemsize whatever x's strides."""
    return x[..., None].view(_real_dtype(x.dtype))


def _pairs_viewable(x) -> bool:
    """Whether x's (re, im) pairs can be read in place as complex numbers: adjacent in memory,
    and, in a CUDA array, each at an address a whole complex number aligns to (NumPy reads
    unaligned memory; CUDA kernels do not)."""
    if x.strides[-1] != x.itemsize:
        return False
    cuda = getattr(x, "__cuda_array_interface__", None)
    if cuda is None:
        return True
    step = 2 * x.itemsize
    return cuda["data"][0] % step == 0 and all(
        s % step == 0 for s, n in zip(x.strides[:-1], x.shape[:-1]) if n > 1)


def _view_as_complex_fwd(xp, x):
    """A view where the pairs can be read in place (:func:`view_as_complex` refuses, as
    PyTorch, tensors whose pairs are not adjacent); else (a batched operand laid out otherwise,
    a CUDA array at an address unaligned for complex numbers) a copy."""
    if not _pairs_viewable(x):
        return _make_complex(xp, x[..., 0], x[..., 1])
    return x.view(_complex_dtype(x.dtype))[..., 0]


_view_as_real = primitive(
    "view_as_real", _view_as_real_fwd, lambda g, ans, x: _view_as_complex(g), saves="none",
    kind="shape", jvp="linear", doc="A complex tensor as (..., 2) floats.")
_view_as_complex = primitive(
    "view_as_complex", _view_as_complex_fwd, lambda g, ans, x: _view_as_real(g),
    saves="none", kind="shape", jvp="linear", complex=(lambda g, ans, x: _view_as_real(g),),
    doc="(..., 2) floats as a complex tensor.")


# --- PyTorch's functions ------------------------------------------------------------------------
def real(input) -> Tensor:
    """The real part (PyTorch's ``torch.real``): a view of a complex tensor, whose writes
    change it; a real tensor is returned as it is."""
    x = _need_tensor("real", input)
    return _real(x) if x.dtype.kind == "c" else x


def imag(input) -> Tensor:
    """The imaginary part of a complex tensor, a view whose writes change it (refused for
    real tensors, as PyTorch)."""
    x = _need_tensor("imag", input)
    if x.dtype.kind != "c":
        raise DTypeError(f"imag: imag is not implemented for tensors with non-complex dtypes "
                         f"(got {x.dtype})")
    return _imag(x)


def conj(input) -> Tensor:
    """The complex conjugate; a real tensor is returned as it is (PyTorch's ``conj``)."""
    x = _need_tensor("conj", input)
    return _conj(x) if x.dtype.kind == "c" else x


def conj_physical(input) -> Tensor:
    """The conjugate as a new tensor (a copy for a real tensor), PyTorch's ``conj_physical``."""
    x = _need_tensor("conj_physical", input)
    return _conj(x) if x.dtype.kind == "c" else S.copy(x)


def resolve_conj(input) -> Tensor:
    """``input`` itself: nodegrad conjugates eagerly, so there is no lazy bit to resolve."""
    return _need_tensor("resolve_conj", input)


def is_conj(input) -> bool:
    """False: nodegrad never sets a lazy conjugation bit."""
    _need_tensor("is_conj", input)
    return False


def resolve_neg(input) -> Tensor:
    """``input`` itself: nodegrad negates eagerly, so there is no lazy bit to resolve."""
    return _need_tensor("resolve_neg", input)


def is_neg(input) -> bool:
    """False: nodegrad never sets a lazy negation bit."""
    _need_tensor("is_neg", input)
    return False


def angle(input) -> Tensor:
    """The argument of each element in (-pi, pi] (PyTorch's ``angle``); real tensors give
    pi for negatives and 0 otherwise, NaN kept, integers the default float dtype (their
    gradient is zero away from NaN)."""
    x = _need_tensor("angle", input)
    if x.dtype.kind == "c":
        return _angle(x)
    x = x if B.is_float(x.dtype) else astype(x, B.DEFAULT_FLOAT)
    return where(isnan(x), x, multiply(astype(less(x, 0), x.dtype), math.pi))


def _float_pair(op: str, a, b, names: tuple) -> tuple:
    a, b = _need_tensor(op, a), _need_tensor(op, b)
    for v, n in zip((a, b), names):
        if v.dtype.kind != "f" or v.dtype.itemsize < 4:
            raise DTypeError(f"{op}: expected {n} to be a float32 or float64 tensor, got "
                             f"{v.dtype}")
    if a.dtype != b.dtype:
        raise DTypeError(f"{op}: expected {names[0]} and {names[1]} to have the same dtype, "
                         f"got {a.dtype} and {b.dtype}")
    return a, b


def complex(real, imag) -> Tensor:  # noqa: A001  (PyTorch's name)
    """``real + i imag`` from two float tensors of one dtype (float32 gives complex64, float64
    complex128), broadcasting, as ``torch.complex``."""
    re, im = _float_pair("complex", real, imag, ("real", "imag"))
    return _complex(re, im)


def polar(abs, angle) -> Tensor:  # noqa: A002  (PyTorch's names)
    """``abs * (cos(angle) + i sin(angle))``, as ``torch.polar`` (in float32 under CPU
    autocast, PyTorch's list)."""
    abs, angle = float32_in_region(abs, angle, cpu_only=True)  # noqa: A001
    r, th = _float_pair("polar", abs, angle, ("abs", "angle"))
    return _complex(multiply(r, cos(th)), multiply(r, sin(th)))


def view_as_real(input) -> Tensor:
    """A complex tensor as a float tensor with a last axis of 2 (real, imaginary), as
    ``torch.view_as_real``: a view (writes into it change ``input``), differentiable."""
    x = _need_tensor("view_as_real", input)
    if x.dtype.kind != "c":
        raise DTypeError(f"view_as_real: expected a complex tensor, got {x.dtype}")
    return _view_as_real(x)


def view_as_complex(input) -> Tensor:
    """A float tensor whose last axis has size 2 as a complex tensor, as
    ``torch.view_as_complex``: a view (writes into it change ``input``), differentiable. As
    PyTorch, the pairs must be adjacent in memory (the last axis of stride 1)."""
    x = _need_tensor("view_as_complex", input)
    (x,) = float32_in_region(x)  # autocast: a float32 op (PyTorch's)
    if x.dtype.kind != "f" or x.dtype.itemsize < 4:
        raise DTypeError(f"view_as_complex: expected a float32 or float64 tensor, got "
                         f"{x.dtype}")
    if x.ndim == 0 or x.shape[-1] != 2:
        raise ShapeError(f"view_as_complex: the last dimension must have size 2, got shape "
                         f"{tuple(x.shape)}")
    d = x._data
    if type(x) is not BatchTracer and B.is_array(d):
        _check_strides(d)
    return _view_as_complex(x)


def _check_strides(d) -> None:
    """PyTorch's stride conditions for a complex view: each pair adjacent in memory, and the
    other strides (of dims longer than 1) whole complex numbers. Its storage-offset condition
    is not checked: a parameter kept in an optimiser's flat buffer may start at an odd offset
    there, where PyTorch's would have storage of its own (the forward copies where the
    address does not suit the device)."""
    st = tuple(s // d.itemsize for s in d.strides)
    why = ("a last dimension with stride 1" if st[-1] != 1
           else "a stride divisible by 2 for all but the last dimension"
           if any(s % 2 for s, n in zip(st[:-1], d.shape[:-1]) if n > 1) else None)
    if why is not None:
        raise ShapeError(f"view_as_complex: the tensor must have {why} (got strides {st}); "
                         f"call .contiguous() first")


def _matrix_adjoint(x, what: str) -> Tensor:
    if x.ndim < 2:
        raise ShapeError(f"tensor.{what} is only supported on matrices or batches of "
                         f"matrices; got shape {tuple(x.shape)}")
    return conj(x.swapaxes(-1, -2))


def adjoint(input) -> Tensor:
    """The conjugate transpose of the last two axes (PyTorch's ``adjoint``)."""
    return _matrix_adjoint(_need_tensor("adjoint", input), "adjoint")


def _H(self) -> Tensor:
    if self.ndim == 0:
        return self
    if self.ndim != 2:
        raise ShapeError(f"tensor.H is only supported on matrices (2-D tensors); got shape "
                         f"{tuple(self.shape)}")
    return conj(self.swapaxes(0, 1))


# --- the primitives whose rules hold for complex numbers as written (see the docstring) -------
#: primitives whose VJP rules, written with f', serve complex inputs as conj(rule(conj(g)))
HOLOMORPHIC = (
    "add", "subtract", "multiply", "divide", "negative", "power", "square", "reciprocal",
    "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sqrt", "rsqrt",
    "sin", "cos", "tan", "sinh", "cosh", "tanh", "sin_grad", "cos_grad", "tanh_grad",
    "sigmoid", "sigmoid_grad",
    "where", "sum", "mean", "cumsum", "matmul", "einsum",
    "reshape", "transpose", "broadcast_to", "sum_to", "concatenate", "getitem", "flip",
    "diagonal", "copy", "alias", "take_along_axis", "setitem", "to_device",
    "pad", "scatter_add", "scatter_add_along_axis", "scatter_along_axis",
    "sliding_window_view", "fold",
    "asin", "acos", "atan", "asinh", "atanh", "lerp", "prod", "cumprod", "logsumexp",
    "logaddexp",
)


def _sgn_cvjp(g, ans, x):
    """The VJP of z / |z| (``sgn``; the ``sign`` primitive of a complex z): with s = z / |z|,
    (g - Re(g conj(s)) s) / |z|, and 0 at z = 0, as PyTorch's."""
    r = x.abs()
    zero = r == 0
    safe = where(zero, 1, r)
    s = x / safe
    return where(zero, 0, (g - real(g * conj(s)) * s) / safe)


def _acosh_d(x):
    """d acosh(z)/dz = 1 / (sqrt(z - 1) sqrt(z + 1)): on the principal branch for every z
    (1 / sqrt(z² - 1), the real rule, has the wrong sign where Re z < 0)."""
    return 1 / (sqrt(x - 1) * sqrt(x + 1))


#: primitives declared elsewhere whose complex rules are not their real ones: (VJP, JVP) of one
#: complex input, used when that input is complex
_OWN_RULES = {
    "sign": (_sgn_cvjp, _sgn_cvjp),  # sgn: z / |z|, a self-adjoint real-linear derivative
    "acosh": (lambda g, ans, x: g * conj(_acosh_d(x)), lambda t, ans, x: t * _acosh_d(x)),
}


def _complex_jvp(real_rule, complex_rule):
    """A one-input JVP: ``real_rule`` for real x, ``complex_rule(t, ans, x)`` for complex x."""
    def rule(ts, ans, x):
        if x.dtype.kind != "c" or ts[0] is None:
            return real_rule(ts, ans, x)
        return complex_rule(ts[0], ans, x)
    return rule


for _p in (_complex, _conj, _real, _imag, _angle):
    _p.batch = elementwise_rule(_p)
for _p in (_view_as_real, _view_as_complex):
    _p.batch = trailing_axes_rule(_p)
for _name in HOLOMORPHIC:
    if _name in REGISTRY:
        REGISTRY[_name].complex = "holomorphic"
for _name, (_vjp, _jvp) in _OWN_RULES.items():
    if _name in REGISTRY:
        REGISTRY[_name].complex = (_vjp,)
        REGISTRY[_name].jvp = _complex_jvp(REGISTRY[_name].jvp, _jvp)
# a write through a view (view_put): its rules pick elements or parts of g, and a part of g is
# already that part's gradient by the convention above (imag(g) for a write into z.imag); the
# holomorphic rule, conj(imag(conj(g))), would send -imag(g)
if "view_put" in REGISTRY:
    REGISTRY["view_put"].complex = REGISTRY["view_put"].vjp


def _set_real(self, value) -> None:
    """``z.real = value``: value copied into the real part (PyTorch's setter)."""
    real(self).copy_(value)


def _set_imag(self, value) -> None:
    """``z.imag = value``: value copied into the imaginary part (PyTorch's setter)."""
    imag(self).copy_(value)


_METHODS = {"conj": conj, "conj_physical": conj_physical, "resolve_conj": resolve_conj,
            "resolve_neg": resolve_neg, "is_conj": is_conj, "is_neg": is_neg, "angle": angle,
            "adjoint": adjoint,
            "cfloat": lambda self, memory_format=None: astype(self, B.np.complex64),
            "cdouble": lambda self, memory_format=None: astype(self, B.np.complex128)}
register(_METHODS)
_PROPERTIES = {
    "real": property(real, _set_real,
                     doc="The real part (a view for a complex tensor; itself if real)."),
    "imag": property(imag, _set_imag, doc="The imaginary part of a complex tensor (a view)."),
    "H": property(_H, doc="The conjugate transpose of a matrix (0-d: itself)."),
    "mH": property(lambda self: _matrix_adjoint(self, "mH"),
                   doc="The conjugate transpose of the last two axes."),
}
for _k, _v in _PROPERTIES.items():
    setattr(Tensor, _k, _v)

__all__ = ["real", "imag", "conj", "conj_physical", "resolve_conj", "resolve_neg", "is_conj",
           "is_neg", "angle", "complex", "polar", "view_as_real", "view_as_complex", "adjoint"]
