"""PyTorch's keyword argument names on nodegrad's functions and Tensor methods.

The names come from PyTorch's own operator schemas (``aten::mul.Tensor(Tensor self, Tensor
other)``): for each case, every overload whose names PyTorch itself accepts from Python with the
same result is called in nodegrad with those keywords (``self`` is ``input`` for a function, the
bound tensor for a method), once with every argument a keyword and once with the first one
positional, and the result must equal PyTorch's.
"""

from __future__ import annotations

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")

# names PyTorch's schemas carry that are no keywords of the Python call (or not ours to test)
_SKIP = {"out", "memory_format", "layout", "pin_memory"}

_g = torch.Generator().manual_seed(0)


def _r(*shape):
    return torch.randn(*shape, generator=_g, dtype=torch.float64)


A, B, C = _r(3, 4), _r(3, 4), _r(3, 4)
POS = torch.rand(3, 4, generator=_g, dtype=torch.float64) + 0.5
V, W = _r(4), _r(4)
V3, W3 = _r(3), _r(3)
M34, M45, M35 = _r(3, 4), _r(4, 5), _r(3, 5)
B234, B245, B235 = _r(2, 3, 4), _r(2, 4, 5), _r(2, 3, 5)
MASK = A > 0
IDX = torch.tensor([[0, 1], [2, 0], [1, 1]])
IDX_S = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0], [1, 1, 0, 0]])  # a permutation per row
ROWS = torch.tensor([2, 0])
INTS, INTS2 = torch.tensor([[5, 3], [6, 12]]), torch.tensor([[3, 2], [4, 5]])
BOOLS, BOOLS2 = torch.tensor([True, False, True]), torch.tensor([True, True, False])

# top-level functions: (name, positional arguments, keyword-only arguments)
FUNCTIONS = [
    # elementwise math, one input
    *[(n, (A,), {}) for n in (
        "abs", "neg", "negative", "exp", "exp2", "expm1", "sin", "cos", "tan", "tanh", "sinh",
        "cosh", "atan", "asinh", "sigmoid", "floor", "ceil", "trunc", "frac", "sign", "sgn",
        "square", "reciprocal", "erf", "deg2rad", "rad2deg", "isnan", "isinf", "isfinite",
        "relu", "signbit", "positive", "nan_to_num", "logical_not", "fix", "erfc", "sinc",
        "celu", "selu", "hardshrink")],
    *[(n, (POS,), {}) for n in ("log", "log2", "log10", "log1p", "sqrt", "rsqrt", "lgamma",
                                "digamma", "acosh", "logit")],
    ("acos", (POS - 0.6,), {}), ("asin", (POS - 0.6,), {}), ("atanh", (POS - 0.6,), {}),
    ("erfinv", (POS - 0.6,), {}),
    ("round", (A,), {"decimals": 1}),
    ("clamp", (A, -0.5, 0.5), {}), ("clamp", (A, B, C), {}), ("clip", (A, -0.5, 0.5), {}),
    ("clamp_min", (A, 0.1), {}), ("clamp_max", (A, 0.1), {}),
    ("nan_to_num", (A, 0.0, 1.0, -1.0), {}),
    ("logit", (POS / 2, 0.1), {}),
    # elementwise math, two or three inputs
    *[(n, (A, B), {}) for n in (
        "add", "sub", "subtract", "mul", "multiply", "div", "divide", "true_divide", "atan2",
        "arctan2", "maximum", "minimum", "fmax", "fmin", "hypot", "copysign", "fmod",
        "remainder", "floor_divide", "eq", "ne", "lt", "le", "gt", "ge", "greater",
        "greater_equal", "less", "less_equal", "not_equal", "logical_and", "logical_or",
        "logical_xor", "xlogy", "logaddexp", "logaddexp2", "max", "min", "nextafter",
        "heaviside", "dist", "isclose", "allclose")],  # (ng.equal is NumPy's, elementwise)
    ("add", (A, B), {"alpha": 2.0}), ("sub", (A, B), {"alpha": 2.0}),
    ("add", (A, 2.0), {}), ("mul", (A, 3.0), {}), ("div", (A, 3.0), {}),
    ("div", (A, B), {"rounding_mode": "floor"}),
    ("pow", (POS, 2.0), {}), ("pow", (POS, B), {}), ("pow", (2.0, A), {}),
    ("float_power", (POS, 2.0), {}),
    ("lerp", (A, B, 0.5), {}), ("lerp", (A, B, POS), {}),
    ("addcmul", (A, B, C), {"value": 0.5}), ("addcdiv", (A, B, POS), {"value": 0.5}),
    ("where", (MASK, A, B), {}), ("where", (MASK, A, 0.0), {}),
    ("isclose", (A, A + 1e-9), {"rtol": 1e-6, "atol": 0.0, "equal_nan": True}),
    ("allclose", (A, A + 1e-9), {"rtol": 1e-6, "atol": 0.0, "equal_nan": True}),
    ("dist", (A, B, 1.0), {}),
    ("bitwise_and", (INTS, INTS2), {}), ("bitwise_or", (INTS, INTS2), {}),
    ("bitwise_xor", (INTS, INTS2), {}), ("bitwise_not", (INTS,), {}),
    ("bitwise_left_shift", (INTS, INTS2), {}), ("bitwise_right_shift", (INTS, INTS2), {}),
    ("gcd", (INTS, INTS2), {}), ("lcm", (INTS, INTS2), {}),
    ("igamma", (POS, POS + 1), {}), ("igammac", (POS, POS + 1), {}),
    ("logical_and", (BOOLS, BOOLS2), {}),
    # reductions and scans
    # (std and var of one argument are NumPy's here, ddof=0: a NumPy name's meaning)
    *[(n, (A,), {}) for n in (
        "sum", "mean", "prod", "amax", "amin", "argmax", "argmin", "max", "min",
        "norm", "all", "any", "count_nonzero", "median", "nansum", "nanmean", "std_mean",
        "var_mean", "nanmedian", "aminmax")],
    *[(n, (A, 1), {}) for n in (
        "sum", "mean", "prod", "amax", "amin", "argmax", "argmin", "max", "min", "all", "any",
        "logsumexp", "cumsum", "cumprod", "cummax", "cummin", "logcumsumexp", "count_nonzero",
        "median", "mode", "nansum", "nanmean", "softmax", "log_softmax", "argsort", "sort",
        "nanmedian", "std", "var", "std_mean", "var_mean")],
    *[(n, (A, 1, True), {}) for n in (
        "sum", "mean", "prod", "amax", "amin", "argmax", "argmin", "max", "min", "logsumexp",
        "median", "nansum", "nanmean", "all", "any")],
    ("std", (A, 1), {"correction": 0, "keepdim": True}),
    ("var", (A, 1), {"correction": 0, "keepdim": True}),
    ("aminmax", (A,), {"dim": 1, "keepdim": True}),
    ("sum", (A, 1), {"dtype": torch.float32}),
    ("sort", (A, 1, True), {}), ("argsort", (A, 1, True), {}),
    ("topk", (A, 2, 1, False, True), {}), ("kthvalue", (A, 2, 1, True), {}),
    ("norm", (A, 1.0, 1, True), {}),
    ("quantile", (A, 0.3, 1, True), {"interpolation": "lower"}),
    ("nanquantile", (A, 0.3, 1, True), {}),
    ("cumsum", (A, 0), {"dtype": torch.float32}),
    ("diff", (A, 1, 1), {}),
    # shape and rearranging ops
    ("reshape", (A, (4, 3)), {}), ("flatten", (B234, 1, 2), {}),
    ("transpose", (A, 0, 1), {}), ("swapaxes", (A, 0, 1), {}), ("swapdims", (A, 0, 1), {}),
    ("t", (A,), {}), ("permute", (B234, (2, 0, 1)), {}),
    ("squeeze", (A[None],), {}), ("squeeze", (A[None], 0), {}), ("unsqueeze", (A, 1), {}),
    ("cat", ((A, B), 1), {}), ("concat", ((A, B), 1), {}), ("concatenate", ((A, B), 1), {}),
    ("stack", ((A, B), 1), {}), ("hstack", ((A, B),), {}), ("vstack", ((A, B),), {}),
    ("dstack", ((A, B),), {}), ("column_stack", ((A, B),), {}),
    ("chunk", (A, 2, 1), {}),
    ("tensor_split", (A, 3, 1), {}), ("tensor_split", (A, [1, 3], 1), {}),
    ("hsplit", (A, 2), {}), ("vsplit", (A, [1]), {}), ("dsplit", (B234, 2), {}),
    ("unbind", (A, 1), {}), ("unsafe_split", (A, 2, 1), {}), ("split_copy", (A, 2, 1), {}),
    ("narrow", (A, 1, 1, 2), {}), ("select", (A, 1, 2), {}),
    ("flip", (A, (0, 1)), {}), ("fliplr", (A,), {}), ("flipud", (A,), {}),
    ("roll", (A, 1, 1), {}), ("rot90", (A, 1, (0, 1)), {}), ("movedim", (B234, 0, 2), {}),
    ("moveaxis", (B234, 0, 2), {}), ("tile", (A, (2, 1)), {}),
    ("repeat_interleave", (A, 2, 1), {}),
    ("tril", (A, 1), {}), ("triu", (A, -1), {}), ("diagonal", (B234, 1, 1, 2), {}),
    ("diag", (V,), {}), ("diag", (A, 1), {}), ("diag_embed", (A, 1), {}), ("diagflat", (V, 1), {}),
    ("trace", (A,), {}), ("broadcast_to", (V, (3, 4)), {}),
    ("unflatten", (A, 1, (2, 2)), {}), ("ravel", (A,), {}), ("clone", (A,), {}),
    # indexing ops
    ("gather", (A, 1, IDX), {}), ("take_along_dim", (A, IDX, 1), {}),
    ("index_select", (A, 0, ROWS), {}), ("masked_fill", (A, MASK, 0.0), {}),
    ("masked_select", (A, MASK), {}), ("take", (A, ROWS), {}),
    ("scatter", (A, 1, IDX, B), {}), ("scatter", (A, 1, IDX, 2.0), {}),
    ("scatter_add", (A, 1, IDX_S, B), {}),
    ("scatter_reduce", (A, 1, IDX_S, B, "amax"), {"include_self": False}),
    ("index_add", (A, 0, ROWS, B[:2]), {"alpha": 2.0}),
    ("index_copy", (A, 0, ROWS, B[:2]), {}), ("index_fill", (A, 0, ROWS, 1.0), {}),
    ("masked_scatter", (A, MASK, B), {}), ("nonzero", (MASK,), {}), ("argwhere", (MASK,), {}),
    ("searchsorted", (torch.sort(V).values, W), {"right": True}),
    ("bucketize", (W, torch.sort(V).values), {"right": True}),
    # linear algebra basics
    ("matmul", (A, M45), {}), ("mm", (A, M45), {}), ("bmm", (B234, B245), {}),
    ("dot", (V, W), {}), ("vdot", (V, W), {}), ("inner", (V, W), {}), ("outer", (V, W), {}),
    ("ger", (V, W), {}), ("mv", (A, V), {}), ("kron", (A, B), {}),
    ("cross", (A[:, :3], B[:, :3]), {}),
    ("addmm", (M35, M34, M45), {"beta": 0.5, "alpha": 2.0}),
    ("addmv", (V3, A, V), {"beta": 0.5, "alpha": 2.0}),
    ("addr", (A, V3, V), {"beta": 0.5, "alpha": 2.0}),
    ("baddbmm", (B235, B234, B245), {"beta": 0.5, "alpha": 2.0}),
    ("addbmm", (M35, B234, B245), {"beta": 0.5, "alpha": 2.0}),
    ("cdist", (A, B, 2.0), {}), ("cosine_similarity", (A, B, 1), {}),
]

# creation functions: (name, positional arguments, keyword-only arguments)
CREATION = [
    ("zeros", ((2, 3),), {}), ("ones", ((2, 3),), {}), ("full", ((2, 3), 1.5), {}),
    ("zeros_like", (A,), {}), ("ones_like", (A,), {}), ("full_like", (A, 2.5), {}),
    ("arange", (1, 7, 2), {}), ("arange", (5,), {}), ("linspace", (0.0, 1.0, 5), {}),
    ("logspace", (0.0, 1.0, 5), {}), ("eye", (3, 4), {}), ("eye", (3,), {}),
    ("empty", ((2, 3),), {}), ("empty_like", (A,), {}),
    ("zeros", ((2, 3),), {"dtype": torch.float64}),
    ("full", ((2, 3), 1.5), {"dtype": torch.float64}),
]

# Tensor methods: (name, receiver, positional arguments, keyword-only arguments)
METHODS = [
    *[(n, A, (B,), {}) for n in (
        "add", "sub", "mul", "div", "true_divide", "atan2", "maximum", "minimum", "fmod",
        "remainder", "eq", "ne", "lt", "le", "gt", "ge", "max", "min", "hypot", "copysign",
        "logical_and", "logical_or", "xlogy", "fmax", "fmin", "isclose", "allclose", "equal",
        "floor_divide", "dist", "logaddexp", "nextafter", "heaviside")],
    ("add", A, (B,), {"alpha": 2.0}), ("div", A, (B,), {"rounding_mode": "trunc"}),
    ("pow", POS, (2.0,), {}), ("pow", POS, (B,), {}), ("lerp", A, (B, 0.5), {}),
    ("addcmul", A, (B, C), {"value": 0.5}), ("addcdiv", A, (B, POS), {"value": 0.5}),
    ("clamp", A, (-0.5, 0.5), {}), ("clip", A, (-0.5, 0.5), {}), ("clamp_min", A, (0.1,), {}),
    ("where", A, (MASK, B), {}), ("masked_fill", A, (MASK, 0.0), {}),
    ("round", A, (), {"decimals": 1}),
    *[(n, A, (1,), {}) for n in (
        "sum", "mean", "prod", "amax", "amin", "argmax", "argmin", "max", "min", "all", "any",
        "logsumexp", "cumsum", "cumprod", "cummax", "cummin", "softmax", "log_softmax", "sort",
        "argsort", "std", "var", "median", "mode", "nansum", "count_nonzero", "unsqueeze",
        "unbind", "tril", "triu", "diff")],
    *[(n, A, (1, True), {}) for n in (
        "sum", "mean", "prod", "amax", "amin", "argmax", "argmin", "max", "min", "logsumexp",
        "median", "all", "any")],
    ("std", A, (1,), {"correction": 0, "keepdim": True}),
    ("topk", A, (2, 1, False, True), {}), ("kthvalue", A, (2, 1, True), {}),
    ("norm", A, (1.0, 1, True), {}), ("quantile", A, (0.3, 1, True), {}),
    ("reshape", A, ((4, 3),), {}), ("view", A, ((4, 3),), {}), ("flatten", B234, (1, 2), {}),
    ("transpose", A, (0, 1), {}), ("swapaxes", A, (0, 1), {}), ("permute", B234, ((2, 0, 1),), {}),
    ("squeeze", A[None], (0,), {}), ("expand", V, ((3, 4),), {}), ("repeat", A, ((2, 1),), {}),
    ("expand_as", V, (A,), {}), ("view_as", A, (B,), {}), ("reshape_as", A, (B,), {}),
    ("type_as", A, (B,), {}), ("split", A, (2, 1), {}), ("chunk", A, (2, 1), {}),
    ("narrow", A, (1, 1, 2), {}), ("select", A, (1, 2), {}), ("roll", A, (1, 1), {}),
    ("movedim", B234, (0, 2), {}), ("flip", A, ((1,),), {}), ("tile", A, ((2, 1),), {}),
    ("unflatten", A, (1, (2, 2)), {}),
    ("tensor_split", A, (3, 1), {}), ("hsplit", A, (2,), {}), ("vsplit", A, ([1],), {}),
    ("unsafe_split", A, (2, 1), {}),
    ("repeat_interleave", A, (2, 1), {}), ("diagonal", B234, (1, 1, 2), {}),
    ("gather", A, (1, IDX), {}), ("index_select", A, (0, ROWS), {}),
    ("masked_select", A, (MASK,), {}), ("take", A, (ROWS,), {}),
    ("scatter", A, (1, IDX, B), {}), ("scatter_add", A, (1, IDX_S, B), {}),
    ("index_add", A, (0, ROWS, B[:2]), {}), ("index_fill", A, (0, ROWS, 1.0), {}),
    ("masked_scatter", A, (MASK, B), {}), ("take_along_dim", A, (IDX, 1), {}),
    ("matmul", A, (M45,), {}), ("mm", A, (M45,), {}), ("bmm", B234, (B245,), {}),
    ("dot", V, (W,), {}), ("outer", V, (W,), {}), ("mv", A, (V,), {}), ("inner", V, (W,), {}),
    ("addmm", M35, (M34, M45), {"beta": 0.5, "alpha": 2.0}),
    ("new_zeros", A, ((2,),), {}), ("new_ones", A, ((2, 3),), {}),
    ("new_full", A, ((2, 3), 1.5), {}), ("new_empty", A, ((2,),), {}),
    # in-place forms (on a copy of the receiver)
    ("fill_", A, (0.5,), {}), ("add_", A, (B,), {"alpha": 2.0}), ("mul_", A, (B,), {}),
    ("div_", A, (B,), {}), ("sub_", A, (B,), {}), ("pow_", POS, (2.0,), {}),
    ("clamp_", A, (-0.5, 0.5), {}), ("masked_fill_", A, (MASK, 0.0), {}),
    ("lerp_", A, (B, 0.5), {}), ("addcmul_", A, (B, C), {"value": 0.5}),
    ("index_fill_", A, (0, ROWS, 1.0), {}), ("scatter_", A, (1, IDX, B), {}),
    ("copy_", A, (B,), {}), ("unsqueeze_", A, (0,), {}), ("transpose_", A, (0, 1), {}),
]

_VALUES_UNDEFINED = {"empty", "empty_like", "new_empty"}


def _schemas(name: str) -> list:
    """The arguments of each overload of ``aten::name`` that PyTorch's Python API exposes."""
    found = []
    for s in torch._C._jit_get_schemas_for_operator(f"aten::{name}"):
        args = list(s.arguments)
        if any(a.is_out for a in args):
            continue
        if not any("Tensor" in str(a.type) or a.kwarg_only for a in args):
            continue  # TorchScript's overloads on plain numbers (``exp(Scalar a)``)
        found.append(args)
    return found


def _to_ng(v):
    if isinstance(v, torch.Tensor):
        return ng.tensor(v.numpy())
    if isinstance(v, tuple | list):
        return type(v)(_to_ng(e) for e in v)
    if isinstance(v, torch.dtype):
        return {torch.float32: ng.float32, torch.float64: ng.float64}[v]
    return v


def _same(got, want, shape_only: bool) -> bool:
    if isinstance(want, tuple | list):
        return (isinstance(got, tuple | list) and len(got) == len(want)
                and all(_same(g, w, shape_only) for g, w in zip(got, want, strict=True)))
    if isinstance(want, torch.Tensor):
        w = want.detach().numpy()
        g = got.numpy() if isinstance(got, ng.Tensor) else np.asarray(got)
        if g.shape != w.shape:
            return False
        return shape_only or np.allclose(g, w, rtol=1e-6, atol=1e-9, equal_nan=True)
    return bool(got == want)


def _keyword_forms(args, kwargs, names):
    """The calls with PyTorch's keyword ``names`` for ``args``: all keywords, then the first
    argument positional (which of them PyTorch's Python API takes is checked by the caller)."""
    if len(args) > len(names):
        return []
    kw = dict(zip(names, args, strict=False))
    forms = [((), kw)]
    if len(args) > 1:
        forms.append(((args[0],), dict(list(kw.items())[1:])))
    return [(a, {**k, **kwargs}) for a, k in forms]


def _check(label, torch_call, ng_call, args, kwargs, overloads, shape_only=False):
    """Each keyword form PyTorch accepts with its positional result must give it in nodegrad."""
    want = torch_call(*args, **kwargs)
    tried, failures = set(), []
    for names in overloads:
        for pos, kw in _keyword_forms(args, kwargs, names):
            key = (len(pos), tuple(kw))
            if key in tried:
                continue
            try:
                ref = torch_call(*pos, **kw)
            except (TypeError, RuntimeError):
                continue  # not a keyword call PyTorch's Python API takes
            if not _same(ref, want, shape_only):
                continue  # another overload's meaning
            tried.add(key)
            shown = ", ".join(["<pos>"] * len(pos) + [f"{k}=" for k in kw])
            try:
                got = ng_call(*_to_ng(list(pos)), **{k: _to_ng(v) for k, v in kw.items()})
            except Exception as e:  # noqa: BLE001  (reported with the call that raised it)
                failures.append(f"{label}({shown}): {type(e).__name__}: {e}")
                continue
            if not _same(got, want, shape_only):
                failures.append(f"{label}({shown}): a different result")
    assert tried, f"{label}: no keyword form that PyTorch accepts (the case is wrong)"
    assert not failures, "\n".join(failures)


def _names(name: str, method: bool) -> list[list[str]]:
    """PyTorch's positional argument names of each overload of ``name`` (``self`` as
    ``input`` for the function, left out for the method)."""
    out = []
    for args in _schemas(name):
        names = [a.name for a in args if not a.kwarg_only and a.name not in _SKIP]
        if method:
            if "self" not in names:
                continue
            names = [n for n in names if n != "self"]
        else:
            names = ["input" if n == "self" else n for n in names]
        if names not in out:
            out.append(names)
    return out


def _id(case) -> str:
    return f"{case[0]}-{len(case[1]) if isinstance(case[1], tuple) else len(case[2])}"


@pytest.mark.parametrize("case", FUNCTIONS + CREATION, ids=[_id(c) for c in FUNCTIONS + CREATION])
def test_function_keywords(case):
    name, args, kwargs = case
    _check(f"torch.{name}", getattr(torch, name), getattr(ng, name), args, kwargs,
           _names(name, method=False), shape_only=name in _VALUES_UNDEFINED)


def _method(name, receiver):
    def call(*args, **kwargs):
        t = receiver.clone()
        return getattr(t, name)(*args, **kwargs)
    return call


@pytest.mark.parametrize("case", METHODS, ids=[_id(c) for c in METHODS])
def test_method_keywords(case):
    name, receiver, args, kwargs = case
    x = _to_ng(receiver)

    def ng_call(*a, **k):
        return getattr(ng.tensor(x.numpy().copy()), name)(*a, **k)

    _check(f"Tensor.{name}", _method(name, receiver), ng_call, args, kwargs,
           _names(name, method=True), shape_only=name in _VALUES_UNDEFINED)


def test_keyword_table_names_are_pytorchs():
    """Every name the keyword table gives a function is one of PyTorch's for that place."""
    from nodegrad.ops.keywords import FUNCTIONS, METHODS

    wrong = []
    for table, method in ((FUNCTIONS, False), (METHODS, True)):
        for name, places in table.items():
            overloads = _names(name, method)
            assert overloads, f"{name}: no schema of PyTorch's"
            for i, place in enumerate(places):
                place = {place} if isinstance(place, str) else set(place)
                known = {o[i] for o in overloads if i < len(o)}
                if not place <= known:
                    wrong.append(f"{name}: place {i} is {sorted(known)}, not {sorted(place)}")
    assert not wrong, "\n".join(wrong)


def test_numpy_keywords_still_work():
    """NumPy's keyword names keep NumPy's meaning where the function is also NumPy's."""
    x = np.arange(12.0).reshape(3, 4)
    t = ng.tensor(x)
    np.testing.assert_array_equal(ng.swapaxes(t, axis1=0, axis2=1).numpy(),
                                  np.swapaxes(x, axis1=0, axis2=1))
    np.testing.assert_array_equal(ng.swapaxes(t, 0, axis2=1).numpy(), np.swapaxes(x, 0, 1))
    np.testing.assert_array_equal(ng.sum(t, axis=1, keepdims=True).numpy(),
                                  np.sum(x, axis=1, keepdims=True))
    np.testing.assert_array_equal(ng.clip(t, a_min=2, a_max=5).numpy(), np.clip(x, 2, 5))
    np.testing.assert_array_equal(ng.cumsum(t, axis=0).numpy(), np.cumsum(x, axis=0))
    np.testing.assert_array_equal(ng.diagonal(t, offset=1).numpy(), np.diagonal(x, offset=1))
    np.testing.assert_array_equal(ng.round(t / 7, decimals=2).numpy(),
                                  np.round(x / 7, decimals=2))
    np.testing.assert_array_equal(ng.moveaxis(t, source=0, destination=1).numpy(),
                                  np.moveaxis(x, 0, 1))
    np.testing.assert_array_equal(ng.searchsorted(ng.tensor([1.0, 3.0]), ng.tensor([2.0]),
                                                  side="right").numpy(), [1])


def test_keywords_refused_clearly():
    """A keyword for an operand given positionally too, or one without those before it, is
    refused naming the operation and its arguments."""
    a, b = ng.tensor([1.0, 2.0]), ng.tensor([3.0, 4.0])
    with pytest.raises(TypeError, match="multiple values for argument 'input'"):
        ng.mul(a, input=b)
    with pytest.raises(TypeError, match=r"missing argument 'input' \(given other=\)"):
        ng.mul(other=b)
    with pytest.raises(TypeError, match="missing argument 'end'"):
        ng.lerp(a, weight=0.5)
    with pytest.raises(TypeError):
        ng.exp(a, x=a)  # a name of neither library
    with pytest.raises(TypeError):
        a.div(other=b, x=b)
    with pytest.raises(TypeError, match="elementwise form takes one tensor"):
        a.max(other=1)  # not a dim: PyTorch's other= is a tensor


def test_keywords_keep_gradients():
    """A keyword operand is the same operand: it gets its gradient (first and second order)."""
    a = ng.tensor([0.5, 2.0], requires_grad=True)
    b = ng.tensor([1.5, -1.0], requires_grad=True)
    ta = torch.tensor([0.5, 2.0], requires_grad=True)
    tb = torch.tensor([1.5, -1.0], requires_grad=True)
    ng.lerp(a, end=b, weight=0.25).mul(other=b).pow(exponent=2).sum().backward()
    torch.lerp(ta, end=tb, weight=0.25).mul(other=tb).pow(exponent=2).sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), ta.grad.numpy(), rtol=1e-6)
    np.testing.assert_allclose(b.grad.numpy(), tb.grad.numpy(), rtol=1e-6)


_I = np.int64


@pytest.mark.parametrize("make", [
    lambda nn: nn.Conv1d(_I(2), _I(3), _I(3), stride=_I(2), padding=_I(1), dilation=_I(1)),
    lambda nn: nn.Conv2d(2, 3, kernel_size=_I(3), stride=(_I(1), _I(2)), padding=_I(1)),
    lambda nn: nn.Conv2d(2, 3, _I(3), padding=_I(1), padding_mode="reflect"),
    lambda nn: nn.ConvTranspose1d(_I(2), _I(3), _I(3), stride=_I(2), padding=_I(1),
                                  output_padding=_I(1)),
    lambda nn: nn.ConvTranspose2d(2, 3, _I(3), stride=_I(2), dilation=(_I(1), _I(2))),
    lambda nn: nn.RMSNorm(_I(5)),
    lambda nn: nn.RMSNorm((_I(4), _I(5))),
    lambda nn: nn.GroupNorm(_I(1), _I(2)),
    lambda nn: nn.LocalResponseNorm(_I(2)),
], ids=["conv1d", "conv2d", "conv2d-reflect", "convT1d", "convT2d", "rmsnorm", "rmsnorm-2",
        "groupnorm", "lrn"])
def test_numpy_integer_settings(make):
    """NumPy integers where a layer takes ints (sizes computed with NumPy), as PyTorch takes
    them: the same settings (as Python ints) and the same output shape."""
    layer, ref = make(ng.nn), make(torch.nn)
    for attr in ("kernel_size", "stride", "padding", "dilation", "output_padding",
                 "normalized_shape"):
        if hasattr(ref, attr):
            got = getattr(layer, attr)
            assert got == tuple(int(v) for v in getattr(ref, attr)), attr
            assert all(type(v) is int for v in got), attr
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 5)[:2 + len(
        getattr(ref, "kernel_size", (0, 0)))] if hasattr(ref, "kernel_size") else (3, 2, 4, 5))
    if isinstance(ref, torch.nn.RMSNorm):
        x = x.reshape(-1, 4, 5) if len(ref.normalized_shape) == 2 else x
    assert layer(ng.tensor(x, dtype=ng.float32)).shape == \
        tuple(ref(torch.tensor(x, dtype=torch.float32)).shape)


def test_numpy_integer_rms_norm_and_windows():
    x = np.random.default_rng(1).standard_normal((2, 6))
    want = torch.nn.functional.rms_norm(torch.tensor(x), (6,), eps=1e-6).numpy()
    for ns in (_I(6), (_I(6),)):
        got = ng.nn.functional.rms_norm(ng.tensor(x), ns, eps=1e-6).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-12)
    with pytest.raises(TypeError, match="rms_norm: normalized_shape"):
        ng.nn.functional.rms_norm(ng.tensor(x), 6.0)
    w = ng.sliding_window_view(ng.tensor(x), _I(3), axis=_I(1), stride=_I(2), dilation=_I(1))
    np.testing.assert_array_equal(
        w.numpy(), np.lib.stride_tricks.sliding_window_view(x, 3, axis=1)[:, ::2])
