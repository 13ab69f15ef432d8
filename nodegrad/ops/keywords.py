"""PyTorch's keyword names for the arguments of functions and methods that nodegrad writes with
other names (NumPy's ``x, y``, or ``*args``): ``ng.mul(a, other=b)``, ``ng.exp(input=x)``,
``ng.full(size=(2, 3), fill_value=1.0)``, ``x.div(other=y)``, ``x.new_zeros(size=(2,))``.

One table for functions, one for methods, the names taken from PyTorch's operator schemas
(``self`` is ``input`` for a function; tests/test_torch_keywords.py checks them against the
schemas). A keyword is read as the positional argument at its place, so the callable's own
keywords (NumPy's among them) keep working:

- a primitive carries the names as a :class:`Keywords` set, which ``Primitive.__call__`` (and a
  primitive's Tensor method) reads only when keywords are given: a positional call pays nothing;
- a Python function or method that does not take the names already is wrapped once, the
  wrapper looking at its keywords only when there are some (one call frame, ~0.1 µs). The
  operators (``x * y``) take no keywords and are untouched.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

from ..primitive import Primitive


class Keywords(frozenset):
    """The PyTorch names of a callable's leading positional arguments, in order (a place may
    have several names, one per PyTorch overload: ``tensor_split``'s ``sections``/``indices``).
    With ``op`` (a primitive's, which has no keywords of its own for its operands) a name given
    twice or out of order is refused naming ``op``; else it is left to the callable."""

    places: tuple[tuple[str, ...], ...]
    op: str | None

    def __new__(cls, places: tuple, op: str | None = None) -> Keywords:
        places = tuple((p,) if isinstance(p, str) else tuple(p) for p in places)
        self = super().__new__(cls, (n for p in places for n in p))
        self.places, self.op = places, op
        return self

    def bind(self, args: tuple, kwargs: dict, offset: int = 0) -> tuple:
        """``args`` extended by the keywords of ``kwargs`` (popped) that name the next places,
        one after another: the first place without its keyword ends it, and a keyword for a
        place already given positionally is left to the callable (its own name may differ)."""
        given = len(args) - offset
        for place in self.places[given:]:
            for n in place:
                if n in kwargs:
                    args = (*args, kwargs.pop(n))
                    break
            else:
                break
        if self.op is not None and not self.isdisjoint(kwargs):
            self._refuse(given, kwargs)
        return args

    def _refuse(self, given: int, kwargs: dict):
        names = [n for n in kwargs if n in self]
        where = next(i for i, p in enumerate(self.places) if names[0] in p)
        if where < given:
            raise TypeError(f"{self.op}() got multiple values for argument {names[0]!r}")
        missing = next(p[0] for p in self.places[given:] if not any(n in kwargs for n in p))
        raise TypeError(f"{self.op}() missing argument {missing!r} (given {names[0]}=); its "
                        f"arguments are ({', '.join(p[0] for p in self.places)})")


def _wrap(fn: Callable, names: Keywords, offset: int = 0) -> Callable:
    """``fn`` taking ``names`` as keywords for its positional arguments (``offset`` places
    for a method's ``self``)."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        if kwargs and not names.isdisjoint(kwargs):
            args = names.bind(args, kwargs, offset)
        return fn(*args, **kwargs)

    call.torch_keywords = names
    return call


_IN = ("input",)
_IN_OTHER = ("input", "other")

# primitives (and the Python functions with their names): PyTorch's names of their operands
_UNARY = """abs absolute neg negative exp exp2 expm1 sin cos tan tanh sinh cosh asin acos atan
    asinh acosh atanh arcsin arccos arctan arcsinh arccosh arctanh sigmoid floor ceil trunc fix
    frac sign sgn square reciprocal erf erfc erfinv lgamma digamma log log2 log10 log1p sqrt
    rsqrt isnan isinf isfinite isreal isneginf isposinf relu logical_not bitwise_not signbit
    positive sinc i0 deg2rad rad2deg angle conj_physical ravel clone trace fliplr flipud t
    zeros_like ones_like empty_like rand_like randn_like full_like nan_to_num aminmax argsort
    broadcast_to chunk clamp_max clamp_min count_nonzero cummax cummin cumprod cumsum
    logcumsumexp diag diag_embed diagflat diagonal flatten flip kthvalue log_softmax softmax
    median nanmedian mode moveaxis movedim narrow norm permute prod quantile nanquantile reshape
    roll rot90 round sort squeeze std_mean var_mean tile topk tril triu unbind unflatten
    unsqueeze select atleast_1d atleast_2d atleast_3d logit nansum nanmean amax amin sum mean
    argmax argmin logsumexp all any std var repeat_interleave index_select gather scatter
    scatter_add scatter_reduce index_add index_copy index_fill masked_fill masked_select
    masked_scatter take take_along_dim nonzero argwhere diff clamp clip swapdims celu selu
    hardshrink"""
_BINARY = """add sub subtract mul multiply div divide true_divide floor_divide atan2 arctan2
    maximum minimum fmax fmin hypot copysign fmod remainder eq ne lt le gt ge greater
    greater_equal less less_equal not_equal logical_and logical_or logical_xor bitwise_and
    bitwise_or bitwise_xor bitwise_left_shift bitwise_right_shift gcd lcm xlogy logaddexp
    logaddexp2 nextafter isclose allclose dist matmul max min kron
    inner cross ldexp igamma igammac"""
FUNCTIONS: dict[str, tuple] = {
    **{n: _IN for n in _UNARY.split()},
    **{n: _IN_OTHER for n in _BINARY.split()},
    "pow": ("input", "exponent"), "float_power": ("input", "exponent"),
    "heaviside": ("input", "values"),
    "mm": ("input", "mat2"), "bmm": ("input", "mat2"), "mv": ("input", "vec"),
    "lerp": ("input", "end", "weight"),
    "dot": ("input", "tensor"), "vdot": _IN_OTHER,
    "outer": ("input", "vec2"), "ger": ("input", "vec2"),
    "full": ("size", "fill_value"),
    "searchsorted": ("sorted_sequence", "input"),
    "bucketize": ("input", "boundaries"),
    "tensor_split": ("input", ("sections", "indices", "tensor_indices_or_sections"), "dim"),
    **{n: ("input", ("sections", "indices")) for n in ("hsplit", "vsplit", "dsplit")},
    "unsafe_split": ("input", "split_size", "dim"), "split_copy": ("input", "split_size", "dim"),
    "swapaxes": ("input", "axis0", "axis1"),  # NumPy's axis1=/axis2= keep their places
    "transpose": ("input", "dim0", "dim1"),
    "where": ("condition", "input", "other"),
    "addmm": ("input", "mat1", "mat2"), "addmv": ("input", "mat", "vec"),
    "addr": ("input", "vec1", "vec2"), "baddbmm": ("input", "batch1", "batch2"),
    "addbmm": ("input", "batch1", "batch2"),
    "addcmul": ("input", "tensor1", "tensor2"), "addcdiv": ("input", "tensor1", "tensor2"),
}

# Tensor methods that are Python functions: PyTorch's names of the arguments after self
METHODS: dict[str, tuple] = {
    **{n: ("other",) for n in "allclose isclose div div_ max min".split()},
    "dot": ("tensor",), "outer": ("vec2",),
    "fill_": ("value",), "copy_": (("src", "other"),),
    "new_zeros": ("size",), "new_ones": ("size",), "new_empty": ("size",),
    "new_full": ("size", "fill_value"), "view": ("size",), "repeat": ("repeats",),
    "where": ("condition", "other"),
    "swapaxes": ("axis0", "axis1"), "swapaxes_": ("axis0", "axis1"),
    "transpose_": ("dim0", "dim1"),
    "tensor_split": (("sections", "indices", "tensor_indices_or_sections"), "dim"),
    **{n: (("sections", "indices"),) for n in ("hsplit", "vsplit", "dsplit")},
    "unsafe_split": ("split_size", "dim"),
    "pow": ("exponent",), "pow_": ("exponent",),  # a binary operator's method: (self, other)
}

# torch.linalg's functions (nodegrad names their first argument A, x): PyTorch's names
LINALG: dict[str, tuple] = {
    **{n: _IN for n in """cholesky cholesky_ex eigh eigvalsh eig eigvals pinv matrix_rank
        matrix_exp matrix_norm vector_norm norm cond matrix_power ldl_factor ldl_factor_ex
        solve_triangular householder_product""".split()},
    "lstsq": ("input", "b"), "tensorsolve": ("input", "other"),
}


def _takes(fn: Callable, places: tuple, method: bool = False) -> bool:
    """Whether ``fn`` already takes every name of ``places`` as a keyword (then it is not
    wrapped: no call pays for a wrapper it does not need)."""
    if hasattr(fn, "torch_keywords"):
        return True
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    # after *args, a keyword-only name serves the first place only: it cannot follow positional
    # arguments (x.view(size=s) is one call, x.transpose(0, dim1=1) another)
    starred = any(p.kind is p.VAR_POSITIONAL for p in params.values())
    for i, place in enumerate(places):
        for n in (place,) if isinstance(place, str) else place:
            p = params.get(n)
            if p is None and not (method and n == "input"):
                return False
            if p is not None and p.kind is p.KEYWORD_ONLY and starred and i > 0:
                return False
            if p is not None and p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                return False
    return True


def apply(namespace: dict, tensor: type | None, functions: dict | None = None) -> None:
    """Give ``namespace``'s functions of ``functions`` (:data:`FUNCTIONS` by default) and
    ``tensor``'s methods of :data:`METHODS` PyTorch's keyword names (a primitive its
    :class:`Keywords`)."""
    for name, places in (FUNCTIONS if functions is None else functions).items():
        fn = namespace.get(name)
        if fn is None:
            continue
        if isinstance(fn, Primitive):
            names = Keywords(places, name)
            known = getattr(fn, "keywords", None)
            if known is not None and known.places != names.places:
                raise ValueError(f"primitive {fn.name}: PyTorch's names {names.places} and "
                                 f"{known.places} differ")
            fn.keywords = names
        elif callable(fn) and not _takes(fn, places):
            namespace[name] = _wrap(fn, Keywords(places))
    for name, places in METHODS.items() if tensor is not None else ():
        fn = tensor.__dict__.get(name)
        if fn is not None and callable(fn) and not _takes(fn, places, method=True):
            setattr(tensor, name, _wrap(fn, Keywords(places), offset=1))


__all__ = ["FUNCTIONS", "LINALG", "METHODS", "Keywords", "apply"]
