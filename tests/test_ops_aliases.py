"""PyTorch's aliases, in-place ``*_`` forms, in-place random fills and tensor metadata, against
PyTorch in float64: values and gradients (through recorded in-place forms too), the version
counter's and the leaf's refusals, dtype and shape refusals, true in-place writes without a
graph, jit replays, the fills' distributions, and strides/offsets/dtypes of views."""

import math

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.errors import DTypeError, GradError, InplaceError, ShapeError
from nodegrad.nn import functional as NF
from nodegrad.testing import compare_with_torch

torch = pytest.importorskip("torch")
F = torch.nn.functional

TOL = {"atol": 1e-10, "rtol": 1e-8}


def compare(f, tf, *arrays, **tol):
    compare_with_torch(f, tf, *arrays, **(tol or TOL))


def _arr(rng, *shape, lo=-2.0, hi=2.0):
    return rng.uniform(lo, hi, shape)


# === aliases ===================================================================================
FUNCS = [  # (name, nodegrad, torch, input domain)
    ("absolute", lambda a, b: ng.absolute(a), lambda a, b: torch.absolute(a), (-2, 2)),
    ("arccos", lambda a, b: ng.arccos(a), lambda a, b: torch.arccos(a), (-0.9, 0.9)),
    ("arccosh", lambda a, b: ng.arccosh(a), lambda a, b: torch.arccosh(a), (1.1, 3)),
    ("arcsin", lambda a, b: ng.arcsin(a), lambda a, b: torch.arcsin(a), (-0.9, 0.9)),
    ("arcsinh", lambda a, b: ng.arcsinh(a), lambda a, b: torch.arcsinh(a), (-2, 2)),
    ("arctan", lambda a, b: ng.arctan(a), lambda a, b: torch.arctan(a), (-2, 2)),
    ("arctan2", ng.arctan2, torch.arctan2, (-2, 2)),
    ("arctanh", lambda a, b: ng.arctanh(a), lambda a, b: torch.arctanh(a), (-0.9, 0.9)),
    ("true_divide", ng.true_divide, torch.true_divide, (0.5, 2)),
    ("mul", ng.mul, torch.mul, (-2, 2)),
    ("sub", lambda a, b: ng.sub(a, b, alpha=2.5), lambda a, b: torch.sub(a, b, alpha=2.5),
     (-2, 2)),
    ("rsub", lambda a, b: ng.rsub(a, b, alpha=0.5), lambda a, b: torch.rsub(a, b, alpha=0.5),
     (-2, 2)),
    ("rsub_number", lambda a, b: ng.rsub(a, 3.0), lambda a, b: torch.rsub(a, 3.0) + 0 * b,
     (-2, 2)),
    ("neg", lambda a, b: ng.neg(a), lambda a, b: torch.neg(a), (-2, 2)),
    ("div", ng.div, torch.div, (0.5, 2)),
    ("div_floor", lambda a, b: ng.div(a, b, rounding_mode="floor"),
     lambda a, b: torch.div(a, b, rounding_mode="floor"), (0.5, 2)),
    ("pow", ng.pow, torch.pow, (0.5, 2)),
    ("pow_number_base", lambda a, b: ng.pow(2.0, a), lambda a, b: torch.pow(2.0, a),
     (-2, 2)),
    ("clamp", lambda a, b: ng.clamp(a, b - 0.5, b), lambda a, b: torch.clamp(a, b - 0.5, b),
     (-2, 2)),
    ("clamp_max_only", lambda a, b: ng.clamp(a, max=0.3), lambda a, b: torch.clamp(a, max=0.3),
     (-2, 2)),
    ("concat", lambda a, b: ng.concat([a, b], dim=1), lambda a, b: torch.concat([a, b], dim=1),
     (-2, 2)),
    ("swapdims", lambda a, b: ng.swapdims(a, 0, 1) * 2,
     lambda a, b: torch.swapdims(a, 0, 1) * 2, (-2, 2)),
    ("fix", lambda a, b: ng.fix(a * 3), lambda a, b: torch.fix(a * 3), (-2, 2)),
    ("positive", lambda a, b: ng.positive(a) * b, lambda a, b: torch.positive(a) * b, (-2, 2)),
    ("adjoint", lambda a, b: ng.adjoint(a) * 2, lambda a, b: torch.adjoint(a) * 2, (-2, 2)),
]


@pytest.mark.parametrize("name,f,tf,dom", FUNCS, ids=[c[0] for c in FUNCS])
def test_alias_functions_match_torch(name, f, tf, dom, rng):
    a, b = rng.uniform(*dom, (2, 3, 4))
    compare(f, tf, a, b)


METHODS = [  # (name, call on both libraries, input domain)
    ("absolute", lambda x, y: x.absolute(), (-2, 2)),
    ("arccos", lambda x, y: x.arccos(), (-0.9, 0.9)),
    ("arccosh", lambda x, y: x.arccosh(), (1.1, 3)),
    ("arcsin", lambda x, y: x.arcsin(), (-0.9, 0.9)),
    ("arcsinh", lambda x, y: x.arcsinh(), (-2, 2)),
    ("arctan", lambda x, y: x.arctan(), (-2, 2)),
    ("arctan2", lambda x, y: x.arctan2(y), (-2, 2)),
    ("arctanh", lambda x, y: x.arctanh(), (-0.9, 0.9)),
    ("multiply", lambda x, y: x.multiply(y), (-2, 2)),
    ("subtract", lambda x, y: x.subtract(y), (-2, 2)),
    ("subtract_alpha", lambda x, y: x.subtract(y, alpha=-1.5), (-2, 2)),
    ("negative", lambda x, y: x.negative(), (-2, 2)),
    ("true_divide", lambda x, y: x.true_divide(y), (0.5, 2)),
    ("swapdims", lambda x, y: x.swapdims(1, 0) * 1.5, (-2, 2)),
    ("fix", lambda x, y: x.fix() * y, (-2, 2)),
    ("positive", lambda x, y: x.positive() * y, (-2, 2)),
    ("where", lambda x, y: x.where(x > 0, y), (-2, 2)),
    ("where_number", lambda x, y: x.where(y > 0, 0.5), (-2, 2)),
    ("type_as", lambda x, y: x.type_as(y) * y, (-2, 2)),
    ("reshape_as", lambda x, y: x.reshape_as(y.reshape(4, 3)) * 2, (-2, 2)),
    ("sum_to_size", lambda x, y: x.sum_to_size(1, 4) * 3, (-2, 2)),
    ("sum_to_size_tuple", lambda x, y: x.sum_to_size((3, 1)) * 3, (-2, 2)),
    ("adjoint", lambda x, y: x.adjoint() * 2, (-2, 2)),
    ("mH", lambda x, y: x.mH * 2, (-2, 2)),
    ("H", lambda x, y: x.H * 2, (-2, 2)),
    ("contiguous", lambda x, y: x.t().contiguous() * 2, (-2, 2)),
]


@pytest.mark.parametrize("name,call,dom", METHODS, ids=[c[0] for c in METHODS])
def test_alias_methods_match_torch(name, call, dom, rng):
    a, b = rng.uniform(*dom, (2, 3, 4))
    compare(call, call, a, b)


CMP = ["eq", "ne", "lt", "le", "gt", "ge"]
CMP_LONG = ["greater", "greater_equal", "less", "less_equal", "not_equal"]


@pytest.mark.parametrize("name", CMP + CMP_LONG)
def test_comparison_aliases_match_torch(name):
    a = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    b = np.array([2.0, 2.0, 2.0])
    want = getattr(torch.tensor(a), name)(torch.tensor(b)).numpy()
    got = getattr(ng.tensor(a), name)(ng.tensor(b))
    assert got.dtype == np.bool_ and np.array_equal(got.numpy(), want)
    assert np.array_equal(getattr(ng.tensor(a), name)(2.0).numpy(),
                          getattr(torch.tensor(a), name)(2.0).numpy())
    if hasattr(torch, name) and name in CMP:
        assert np.array_equal(getattr(ng, name)(ng.tensor(a), ng.tensor(b)).numpy(), want)


def test_equal_method_is_torch_equal_and_the_function_stays_elementwise():
    a, b = ng.tensor([1.0, 2.0]), ng.tensor([1.0, 3.0])
    cases = [([1.0, 2.0], [1.0, 2.0]), ([1.0, 2.0], [1.0, 3.0]), ([[1.0, 2.0]], [1.0, 2.0]),
             ([1.0, math.nan], [1.0, math.nan]), ([1, 2], [1.0, 2.0]), ([], [])]
    for x, y in cases:
        want = torch.tensor(x).equal(torch.tensor(y))
        got = ng.tensor(x).equal(ng.tensor(y))
        assert type(got) is bool and got == want, (x, y)
    elementwise = ng.equal(a, b)  # NumPy's meaning kept: one bool per element
    assert isinstance(elementwise, ng.Tensor) and elementwise.tolist() == [True, False]
    assert ng.eq(a, b).tolist() == [True, False]
    with pytest.raises(TypeError, match="equal"):
        a.equal([1.0, 2.0])


def test_aliases_refuse_what_torch_refuses():
    with pytest.raises(ValueError, match="clamp: at least one"):
        ng.clamp(ng.tensor([1.0]))
    with pytest.raises(RuntimeError):
        torch.clamp(torch.tensor([1.0]))
    with pytest.raises(DTypeError, match="sub: .*alpha"):
        ng.sub(ng.tensor([1, 2]), 5, alpha=0.5)
    with pytest.raises(RuntimeError, match="alpha"):
        torch.sub(torch.tensor([1, 2]), 5, alpha=0.5)
    with pytest.raises(DTypeError, match="positive"):
        ng.positive(ng.tensor([True]))
    with pytest.raises(ShapeError, match="sum_to_size: size \\[4\\]"):
        ng.ones(2, 3).sum_to_size(4)
    with pytest.raises(ShapeError, match="sum_to_size"):
        ng.ones(2, 3).sum_to_size(2, 3, 1)
    for bad in ("H", "mH"):
        with pytest.raises(ShapeError, match=f"tensor.{bad} is only supported"):
            getattr(ng.ones(3), bad)
        with pytest.raises(RuntimeError):
            getattr(torch.ones(3), bad)
    with pytest.raises(ShapeError, match="adjoint"):
        ng.ones(3).adjoint()


def test_integer_fix_numel_detach_and_int_sub():
    x = ng.tensor([1, -2, 3])
    assert ng.fix(x).dtype == np.int64 and ng.fix(x).tolist() == [1, -2, 3]
    assert ng.sub(x, ng.tensor([1, 1, 1]), alpha=2).tolist() == \
        torch.sub(torch.tensor([1, -2, 3]), torch.tensor([1, 1, 1]), alpha=2).tolist()
    assert ng.numel(ng.ones(2, 3)) == 6 == torch.numel(torch.ones(2, 3))
    y = ng.tensor([1.0, 2.0], requires_grad=True) * 2
    d = ng.detach(y)
    assert d.node is None and not d.requires_grad and d._data is y._data
    assert ng.is_floating_point(y) and not ng.is_complex(y)


def test_existing_names_are_unchanged():
    # names that existed before this family keep their own behaviour
    assert ng.clip(ng.tensor([-2.0, 2.0]), -1.0, 1.0).tolist() == [-1.0, 1.0]
    assert ng.multiply is ng.ops.elementwise.multiply
    assert ng.equal is ng.ops.elementwise.equal
    x = ng.tensor([1.0, 2.0])
    assert x.sub(ng.tensor([0.5, 0.5])).tolist() == [0.5, 1.5]


# === in-place forms: values and gradients through the recorded graph ==========================
def _idx(lib):
    T = ng.tensor if lib is ng else torch.tensor
    return {
        "idx": T(np.array([2, 0])),
        "mask": T(np.array([[True, False, True, False]] * 3)),
        "sidx": T(np.array([[0, 1, 2, 0], [2, 0, 1, 1]])),
        "pidx": T(np.array([0, 5, 11])),
    }


INPLACE = [  # (name, call(y, a, b, ix) -> y changed in place, domain of y's input)
    ("abs_", lambda y, a, b, ix: y.abs_(), (-2, 2)),
    ("neg_", lambda y, a, b, ix: y.neg_(), (-2, 2)),
    ("exp_", lambda y, a, b, ix: y.exp_(), (-2, 2)),
    ("log_", lambda y, a, b, ix: y.log_(), (0.5, 2)),
    ("sqrt_", lambda y, a, b, ix: y.sqrt_(), (0.5, 2)),
    ("sin_", lambda y, a, b, ix: y.sin_(), (-2, 2)),
    ("cos_", lambda y, a, b, ix: y.cos_(), (-2, 2)),
    ("tanh_", lambda y, a, b, ix: y.tanh_(), (-2, 2)),
    ("sigmoid_", lambda y, a, b, ix: y.sigmoid_(), (-2, 2)),
    ("relu_", lambda y, a, b, ix: y.relu_(), (-2, 2)),
    ("clamp_", lambda y, a, b, ix: y.clamp_(-0.5, 0.7), (-2, 2)),
    ("clamp_tensor_", lambda y, a, b, ix: y.clamp_(min=a), (-2, 2)),
    ("clamp_min_", lambda y, a, b, ix: y.clamp_min_(0.2), (-2, 2)),
    ("clamp_max_", lambda y, a, b, ix: y.clamp_max_(0.2), (-2, 2)),
    ("clip_", lambda y, a, b, ix: y.clip_(-0.3, 0.3), (-2, 2)),
    ("pow_", lambda y, a, b, ix: y.pow_(2.5), (0.5, 2)),
    ("pow_tensor_", lambda y, a, b, ix: y.pow_(a), (0.5, 2)),
    ("floor_", lambda y, a, b, ix: y.floor_().mul_(a), (-2, 2)),
    ("ceil_", lambda y, a, b, ix: y.ceil_().mul_(a), (-2, 2)),
    ("round_", lambda y, a, b, ix: y.round_().mul_(a), (-2, 2)),
    ("trunc_", lambda y, a, b, ix: y.trunc_().mul_(a), (-2, 2)),
    ("sign_", lambda y, a, b, ix: y.sign_().mul_(a), (-2, 2)),
    ("reciprocal_", lambda y, a, b, ix: y.reciprocal_(), (0.5, 2)),
    ("rsqrt_", lambda y, a, b, ix: y.rsqrt_(), (0.5, 2)),
    ("square_", lambda y, a, b, ix: y.square_(), (-2, 2)),
    ("arccos_", lambda y, a, b, ix: y.arccos_(), (-0.9, 0.9)),
    ("atan2_", lambda y, a, b, ix: y.atan2_(a), (-2, 2)),
    ("multiply_", lambda y, a, b, ix: y.multiply_(a), (-2, 2)),
    ("subtract_", lambda y, a, b, ix: y.subtract_(a, alpha=2.0), (-2, 2)),
    ("true_divide_", lambda y, a, b, ix: y.true_divide_(a), (0.5, 2)),
    ("negative_", lambda y, a, b, ix: y.negative_(), (-2, 2)),
    ("masked_fill_", lambda y, a, b, ix: y.masked_fill_(ix["mask"], 0.25), (-2, 2)),
    ("index_fill_", lambda y, a, b, ix: y.index_fill_(1, ix["idx"], -1.5), (-2, 2)),
    ("index_add_", lambda y, a, b, ix: y.index_add_(0, ix["idx"], b, alpha=2.0), (-2, 2)),
    ("index_copy_", lambda y, a, b, ix: y.index_copy_(0, ix["idx"], b), (-2, 2)),
    ("scatter_", lambda y, a, b, ix: y.scatter_(0, ix["sidx"], b), (-2, 2)),
    ("scatter_add_", lambda y, a, b, ix: y.scatter_add_(0, ix["sidx"], b), (-2, 2)),
    ("scatter_reduce_", lambda y, a, b, ix: y.scatter_reduce_(0, ix["sidx"], b, "amax"),
     (-2, 2)),
    ("masked_scatter_", lambda y, a, b, ix: y.masked_scatter_(ix["mask"], a), (-2, 2)),
    ("put_", lambda y, a, b, ix: y.put_(ix["pidx"], b[0, :3]), (-2, 2)),
    ("lerp_", lambda y, a, b, ix: y.lerp_(a, 0.3), (-2, 2)),
    ("addcmul_", lambda y, a, b, ix: y.addcmul_(a, a, value=0.5), (-2, 2)),
    ("addcdiv_", lambda y, a, b, ix: y.addcdiv_(a, a * a + 1, value=0.5), (-2, 2)),
    ("nan_to_num_", lambda y, a, b, ix: y.log_().nan_to_num_(nan=0.5, neginf=-3.0), (-2, 2)),
    ("cumsum_", lambda y, a, b, ix: y.cumsum_(1), (-2, 2)),
    ("tril_", lambda y, a, b, ix: y.tril_(1), (-2, 2)),
    ("fill_diagonal_", lambda y, a, b, ix: y.fill_diagonal_(0.5), (-2, 2)),
    ("t_", lambda y, a, b, ix: y.t_().mul_(a.t()), (-2, 2)),
    ("transpose_", lambda y, a, b, ix: y.transpose_(0, 1).mul_(a.t()), (-2, 2)),
    ("unsqueeze_", lambda y, a, b, ix: y.unsqueeze_(1).mul_(a.unsqueeze(1)), (-2, 2)),
    ("squeeze_", lambda y, a, b, ix: y.unsqueeze_(0).squeeze_(0).mul_(a), (-2, 2)),
    ("swapdims_", lambda y, a, b, ix: y.swapdims_(0, 1).mul_(a.t()), (-2, 2)),
    ("chain", lambda y, a, b, ix: y.mul_(a).sin_().add_(b[:1]).exp_(), (-2, 2)),
]


@pytest.mark.parametrize("name,call,dom", INPLACE, ids=[c[0] for c in INPLACE])
def test_inplace_forms_record_torchs_values_and_gradients(name, call, dom, rng):
    x = rng.uniform(*dom, (3, 4))
    a = rng.uniform(0.5, 1.5, (3, 4)) if dom[0] > 0 else rng.uniform(-2, 2, (3, 4))
    b = rng.uniform(-2, 2, (2, 4))
    ix, tix = _idx(ng), _idx(torch)

    def f(x, a, b):
        y = x * 1  # a non-leaf that the in-place form changes
        out = call(y, a, b, ix)
        assert out is y
        return y

    compare(f, lambda x, a, b: call(x * 1, a, b, tix), x, a, b)


@pytest.mark.parametrize("name,call,dom", INPLACE, ids=[c[0] for c in INPLACE])
def test_inplace_forms_without_a_graph_write_into_the_same_array(name, call, dom, rng):
    x = rng.uniform(*dom, (3, 4))
    a = rng.uniform(0.5, 1.5, (3, 4)) if dom[0] > 0 else rng.uniform(-2, 2, (3, 4))
    b = rng.uniform(-2, 2, (2, 4))
    want = call(torch.tensor(x), torch.tensor(a), torch.tensor(b), _idx(torch)).numpy()
    for no_grad in (False, True):
        y = ng.tensor(x, requires_grad=no_grad)
        array = y._data
        with ng.no_grad() if no_grad else ng.enable_grad():
            out = call(y, ng.tensor(a), ng.tensor(b), _idx(ng))
        assert out is y
        np.testing.assert_allclose(y.numpy(), want, **TOL)
        if name not in ("t_", "transpose_", "unsqueeze_", "swapdims_", "squeeze_"):
            assert y._data is array  # written in place
        else:
            assert np.shares_memory(y._data, array)  # a view of the same memory


@pytest.mark.parametrize("name", ["eq_", "ne_", "lt_", "le_", "gt_", "ge_", "greater_",
                                  "less_equal_", "not_equal_", "logical_not_", "logical_and_"])
def test_inplace_comparisons_store_zeros_and_ones_in_the_tensors_dtype(name):
    a = np.array([1.0, 2.0, 3.0, 0.0])
    for dtype in (np.float64, np.int64):
        args = () if name == "logical_not_" else (2.0,)
        tdargs = args if name != "logical_and_" else (torch.tensor([0, 1, 1, 1]),)
        nargs = args if name != "logical_and_" else (ng.tensor([0, 1, 1, 1]),)
        want = getattr(torch.tensor(a.astype(dtype)), name)(*tdargs)
        y = ng.tensor(a.astype(dtype))
        got = getattr(y, name)(*nargs)
        assert got is y and y.dtype == dtype
        assert y.tolist() == want.tolist()


def test_top_level_and_functional_inplace_forms_match_torch(rng):
    x = rng.uniform(-2, 2, (3, 4))
    for name, args in [("exp_", ()), ("relu_", ()), ("clamp_", (-0.5, 0.5)), ("fix_", ()),
                       ("sigmoid_", ()), ("nan_to_num_", ()), ("arctan_", ()),
                       ("celu_", (0.7,)), ("selu_", ()), ("threshold_", (0.3, -9.0)),
                       ("zero_", ()), ("fill_", (2.5,))]:
        y = ng.tensor(x)
        assert getattr(ng, name)(y, *args) is y
        np.testing.assert_allclose(y.numpy(), getattr(torch, name)(torch.tensor(x), *args),
                                   **TOL, err_msg=name)
    for name, args in [("relu_", ()), ("elu_", (0.5,)), ("leaky_relu_", (0.2,)),
                       ("hardtanh_", (-0.4, 0.6)), ("celu_", (1.3,)), ("selu_", ()),
                       ("rrelu_", (0.1, 0.3)), ("threshold_", (0.1, 7.0))]:
        # (celu's gradient differs from PyTorch's by ~4e-8 relative out of place too)
        tol = {"atol": 1e-10, "rtol": 1e-6} if name == "celu_" else TOL
        compare(lambda t: getattr(NF, name)(t * 1, *args),
                lambda t: getattr(F, name)(t * 1, *args), x, **tol)
        y = ng.tensor(x)
        array = y._data
        assert getattr(NF, name)(y, *args) is y and y._data is array


# === in-place forms: refusals ==================================================================
def test_a_value_saved_for_backward_then_changed_in_place_makes_backward_refuse():
    for lib in (ng, torch):
        x = lib.tensor([0.5, 1.0, 2.0], requires_grad=True)
        y = x * 1
        z = y * y  # saves y
        y.exp_()
        with pytest.raises(InplaceError if lib is ng else RuntimeError, match="modified"):
            z.sum().backward()
    # through a write without a graph: the counter still moves on
    x = ng.tensor([0.5, 1.0, 2.0], requires_grad=True)
    y = x * 1
    z = y.sin()
    with ng.no_grad():
        y.sqrt_()
    with pytest.raises(InplaceError):
        z.sum().backward()
    # a recorded form's result (exp saves its output) is watched too after a later write
    for lib in (ng, torch):
        x = lib.tensor([0.5, 1.0, 2.0], requires_grad=True)
        y = x * 1
        y.exp_()
        with lib.no_grad():
            y.add_(1.0)
        with pytest.raises(InplaceError if lib is ng else RuntimeError, match="modified"):
            y.sum().backward()
    # a reshaping form counts as a change too, as in PyTorch
    for lib in (ng, torch):
        x = lib.ones(2, 3, requires_grad=True)
        y = x * 1
        z = y.sin()
        y.t_()
        with pytest.raises(InplaceError if lib is ng else RuntimeError, match="modified"):
            z.sum().backward()


@pytest.mark.parametrize("call", [lambda x: x.exp_(), lambda x: x.clamp_(0, 1),
                                  lambda x: x.t_(), lambda x: x.unsqueeze_(0),
                                  lambda x: x.masked_fill_(x > 0, 0.0),
                                  lambda x: x.fill_diagonal_(1.0), lambda x: ng.relu_(x),
                                  lambda x: NF.elu_(x), lambda x: x.exponential_()])
def test_a_leaf_that_requires_grad_refuses_while_recording(call):
    x = ng.ones(2, 2, requires_grad=True)
    with pytest.raises(GradError, match=r"_: a leaf tensor that requires grad"):
        call(x)
    with pytest.raises(RuntimeError, match="leaf Variable"):
        torch.ones(2, 2, requires_grad=True).exp_()
    with ng.no_grad():  # an update outside recording is allowed
        call(x)
    assert x.node is None and x.requires_grad


def test_int_dtype_refusals_match_torch():
    for name, args in [("sqrt_", ()), ("exp_", ()), ("true_divide_", (2,)), ("pow_", (0.5,)),
                       ("clamp_", (0.5, 1.5)), ("sigmoid_", ())]:
        with pytest.raises(RuntimeError, match="can't be cast"):
            getattr(torch.tensor([1, 2]), name)(*args)
        with pytest.raises(DTypeError, match=f"{name}: result type float32 can't be cast to "
                                             "the desired output type int64"):
            getattr(ng.tensor([1, 2]), name)(*args)
    # what an int tensor can hold stays in place, as in PyTorch
    for name, args in [("abs_", ()), ("neg_", ()), ("pow_", (2,)), ("clamp_", (0, 1)),
                       ("square_", ())]:
        y = ng.tensor([1, -2])
        getattr(y, name)(*args)
        assert y.dtype == np.int64
        assert y.tolist() == getattr(torch.tensor([1, -2]), name)(*args).tolist()
    with pytest.raises(DTypeError, match="float_power_"):
        ng.tensor([1.0, 2.0]).float_power_(2)


def test_an_operand_cannot_grow_the_tensor_changed_in_place():
    for call in (lambda y, o: y.lerp_(o, 0.5), lambda y, o: y.atan2_(o),
                 lambda y, o: y.clamp_(min=o), lambda y, o: y.multiply_(o)):
        with pytest.raises(RuntimeError):
            call(torch.zeros(3), torch.ones(2, 3))
        with pytest.raises(ShapeError, match=r"_: .*shape \(2, 3\).*\(3,\)"):
            call(ng.zeros(3), ng.ones(2, 3))
        x = ng.tensor([1.0, 2.0, 3.0], requires_grad=True)
        with pytest.raises(ShapeError):  # while recording too
            call(x * 1, ng.ones(2, 3))
    y = ng.zeros(2, 3)
    y.lerp_(ng.ones(3), 0.5)  # a smaller operand broadcasts
    assert y.tolist() == [[0.5] * 3] * 2


def test_a_broadcast_view_refuses_a_write():
    view = ng.ones(3).expand(2, 3)
    with pytest.raises(ValueError, match="exp_: cannot write"):
        view.exp_()


def test_in_place_ops_on_a_batched_tensor_change_each_example_as_torch_func():
    xs = np.arange(6.0).reshape(2, 3) / 5

    def f(x):
        y = x * 1
        y.add_(1)
        y.mul_(x)
        y.exp_()
        y.clamp_(max=5.0)
        y += x
        return y

    want = torch.func.vmap(f)(torch.tensor(xs)).numpy()
    np.testing.assert_allclose(ng.vmap(f)(ng.tensor(xs)).numpy(), want, rtol=1e-14)
    grads = ng.vmap(ng.grad(lambda x: f(x).sum()))(ng.tensor(xs))
    plain = ng.vmap(ng.grad(lambda x: (ng.clip(ng.exp((x + 1) * x), None, 5.0) + x).sum()))
    np.testing.assert_array_equal(grads.numpy(), plain(ng.tensor(xs)).numpy())
    with pytest.raises(ng.errors.ShapeError, match="add_: the result has shape"):
        ng.vmap(lambda t: t.add_(ng.ones(2, 3, dtype=ng.float64)))(ng.tensor(xs))
    with pytest.raises(ng.errors.DTypeError, match="sqrt_"):
        ng.vmap(lambda t: t.sqrt_())(ng.tensor(np.arange(4).reshape(2, 2)))


def test_inplace_forms_are_attached_wherever_the_base_method_exists():
    from nodegrad.ops import aliases

    names = aliases._TORCH_INPLACE + tuple(aliases._RESHAPE_INPLACE)
    missing = [n for n in names if hasattr(ng.Tensor, n[:-1]) and not hasattr(ng.Tensor, n)]
    assert missing == []
    for n in ("abs_", "addcmul_", "cumsum_", "index_put_" if hasattr(ng.Tensor, "index_put")
              else "put_", "masked_scatter_", "t_", "squeeze_", "fill_diagonal_"):
        assert callable(getattr(ng.Tensor, n)), n
    assert ng.Tensor.add_ is ng.ops.methods._methods["add_"] or hasattr(ng.Tensor, "add_")


@pytest.mark.parametrize("shape,wrap", [((7, 3), True), ((7, 3), False), ((3, 7), True),
                                        ((3, 3), False), ((3, 3, 3), False), ((2, 2, 2, 2),
                                                                              True)])
def test_fill_diagonal_matches_torch(shape, wrap):
    want = torch.zeros(shape).fill_diagonal_(5.0, wrap=wrap).numpy()
    got = ng.zeros(shape).fill_diagonal_(5.0, wrap=wrap).numpy()
    assert np.array_equal(got, want)
    got = ng.zeros(shape, dtype=ng.int64).fill_diagonal_(2.7, wrap=wrap)
    assert got.dtype == np.int64
    assert got.tolist() == torch.zeros(shape, dtype=torch.int64).fill_diagonal_(
        2.7, wrap=wrap).tolist()
    with pytest.raises(ShapeError, match="fill_diagonal_: all dimensions"):
        ng.zeros(3, 4, 3).fill_diagonal_(1.0)
    with pytest.raises(ShapeError, match="fill_diagonal_: expected at least 2"):
        ng.zeros(3).fill_diagonal_(1.0)


# === in-place forms under jit ===================================================================
def test_jit_replays_the_inplace_forms_in_place():
    def f(x, b):
        h = x * 2.0
        h.exp_()
        h.clamp_(max=5.0)
        h.masked_fill_(b > 0, 0.5)
        h.fill_diagonal_(-1.0)
        h.eq_(0.5).logical_not_()
        x.sin_()  # the caller's tensor changes, as in eager
        return h * b

    jf = ng.jit(f)
    rng = np.random.default_rng(1)
    for _ in range(4):
        a, b = rng.standard_normal((2, 3, 3)).astype(np.float32)
        xe, xj = ng.tensor(a), ng.tensor(a)
        want = f(xe, ng.tensor(b)).numpy()
        assert np.array_equal(jf(xj, ng.tensor(b)).numpy(), want)
        assert np.array_equal(xj.numpy(), xe.numpy())
    assert jf.traces == 1 and jf.program is not None


def test_jit_runs_a_reshaping_form_on_an_input_eagerly():
    def f(x):
        x.t_()
        y = x * 1.0
        y.unsqueeze_(0)  # made inside the step: fine to replay
        return y

    jf = ng.jit(f)
    for _ in range(3):
        x = ng.ones(2, 3)
        out = jf(x)
        assert x.shape == (3, 2) and out.shape == (1, 3, 2)


# === in-place random fills ======================================================================
N = 200_000


def _filled(name, *args, dtype=ng.float32, **kw):
    t = ng.zeros(N, dtype=dtype)
    assert getattr(t, name)(*args, **kw) is t
    return t.numpy().astype(np.float64)


def test_exponential_fill_has_rate_lambd():
    ng.manual_seed(0)
    s = _filled("exponential_", 4.0)
    assert s.min() >= 0
    assert abs(s.mean() - 0.25) < 0.005  # sd of the mean 0.00056
    assert abs(s.std() - 0.25) < 0.005
    assert abs(np.mean(s > 0.25) - math.exp(-1)) < 0.01


def test_cauchy_fill_has_median_and_scale():
    ng.manual_seed(0)
    s = _filled("cauchy_", 1.5, 0.5)
    q25, q50, q75 = np.quantile(s, [0.25, 0.5, 0.75])
    assert abs(q50 - 1.5) < 0.01 and abs(q25 - 1.0) < 0.015 and abs(q75 - 2.0) < 0.015
    assert np.isfinite(s).all()


def test_geometric_fill_counts_trials_to_the_first_success():
    ng.manual_seed(0)
    for dtype in (ng.float32, ng.int64):
        s = _filled("geometric_", 0.3, dtype=dtype)
        assert s.min() == 1 and np.array_equal(s, np.round(s))
        assert abs(s.mean() - 1 / 0.3) < 0.03  # sd of the mean 0.0062
        assert abs(s.var() - 0.7 / 0.09) < 0.25
        assert abs(np.mean(s == 1) - 0.3) < 0.005


def test_log_normal_fill_is_exp_of_a_normal():
    ng.manual_seed(0)
    s = _filled("log_normal_", 0.5, 0.25, dtype=ng.float64)
    assert s.min() > 0
    assert abs(np.log(s).mean() - 0.5) < 0.003 and abs(np.log(s).std() - 0.25) < 0.003
    assert abs(s.mean() - math.exp(0.5 + 0.25 ** 2 / 2)) < 0.01


def test_bernoulli_fill_with_a_number_or_a_tensor_of_probabilities():
    ng.manual_seed(0)
    for dtype in (ng.float32, ng.int64, ng.bool_):
        s = _filled("bernoulli_", 0.3, dtype=dtype)
        assert set(np.unique(s)) <= {0.0, 1.0} and abs(s.mean() - 0.3) < 0.005
    t = ng.zeros(N // 4, 4)
    t.bernoulli_(ng.tensor([0.0, 0.2, 0.7, 1.0]))
    m = t.numpy().mean(0)
    assert m[0] == 0 and m[3] == 1 and abs(m[1] - 0.2) < 0.01 and abs(m[2] - 0.7) < 0.01


@pytest.mark.parametrize("dtype,args,lo,hi", [
    (ng.float32, (), 0, 2 ** 24), (ng.float64, (), 0, 2 ** 53), (ng.int32, (), 0, 2 ** 31 - 1),
    (ng.int64, (), 0, 2 ** 63 - 1), (np.uint8, (), 0, 255), (np.int8, (), 0, 127),
    (ng.bool_, (), 0, 1), (ng.float32, (5,), 0, 4), (ng.float32, (-3, 5), -3, 4),
    (ng.int64, (10, 13), 10, 12), (np.int16, (-7, -2), -7, -3)])
def test_random_fill_draws_uniform_integers(dtype, args, lo, hi):
    ng.manual_seed(0)
    t = ng.zeros(N, dtype=dtype)
    t.random_(*args)
    s = t.numpy()
    assert s.min() >= lo and s.max() <= hi and np.array_equal(s, np.round(s))
    v = s.astype(np.float64)
    n = hi - lo + 1
    assert abs(v.mean() - (lo + hi) / 2) < 0.01 * n + 0.01  # sd of the mean ~0.0007 n
    if n <= 16:
        counts = np.bincount((s.astype(np.int64) - lo), minlength=n)
        assert len(counts) == n and np.all(np.abs(counts / N - 1 / n) < 0.006)


def test_random_fills_refuse_bad_parameters_and_dtypes():
    z = ng.zeros(3)
    for call, match in [(lambda: z.exponential_(0), "lambd > 0"),
                        (lambda: z.cauchy_(0, 0), "sigma > 0"),
                        (lambda: z.log_normal_(1, -1), "std > 0"),
                        (lambda: z.geometric_(1.0), "p in \\(0, 1\\)"),
                        (lambda: z.bernoulli_(1.5), "p in \\[0, 1\\]"),
                        (lambda: z.random_(5, 5), "'from' to be less than 'to'"),
                        (lambda: ng.zeros(3, dtype=np.uint8).random_(-1, 5), "out of"),
                        (lambda: ng.zeros(3, dtype=np.uint8).random_(0, 300), "out of"),
                        (lambda: z.random_(0, 2 ** 30), "holds exactly")]:
        with pytest.raises(ValueError, match=match):
            call()
    for name in ("exponential_", "cauchy_", "log_normal_", "normal_", "uniform_"):
        with pytest.raises(DTypeError, match=f"{name}: expected a floating-point tensor"):
            getattr(ng.zeros(3, dtype=ng.int64), name)()
    with pytest.raises(ShapeError, match="bernoulli_: p of shape"):
        z.bernoulli_(ng.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="bernoulli_: p must lie in"):
        z.bernoulli_(ng.tensor([0.5, 1.5, 0.5]))


def test_random_fills_are_reproducible_and_jit_draws_afresh():
    def step(x):
        h = x * 1.0
        h.exponential_(2.0)
        h.add_(ng.zeros(4).bernoulli_(0.5))
        x.normal_()
        x.random_(10)
        return h

    jstep = ng.jit(step)
    xe, xj = ng.zeros(4), ng.zeros(4)
    ng.manual_seed(7)
    eager = [(step(xe).numpy(), xe.numpy().copy()) for _ in range(3)]
    ng.manual_seed(7)
    jitted = [(jstep(xj).numpy(), xj.numpy().copy()) for _ in range(3)]
    for (a, xa), (b, xb) in zip(eager, jitted):
        assert np.array_equal(a, b) and np.array_equal(xa, xb)
    assert not np.array_equal(eager[0][0], eager[1][0])  # new numbers each call
    assert jstep.traces == 1 and jstep.program is not None


def test_random_fill_of_a_graph_tensor_gives_a_zero_gradient_as_torch():
    for lib in (ng, torch):
        x = lib.ones(3, requires_grad=True)
        y = x * 2
        y.exponential_()
        (y * 3).sum().backward()
        assert x.grad.tolist() == [0.0, 0.0, 0.0]
    x = ng.ones(3, requires_grad=True)
    with pytest.raises(GradError, match="random_: a leaf"):
        x.random_(5)
    with ng.no_grad():
        x.random_(5)
    assert set(x.tolist()) <= {0.0, 1.0, 2.0, 3.0, 4.0}


# === metadata ===================================================================================
def _views(lib):
    base = lib.arange(120, dtype=lib.float32).reshape(4, 5, 6)
    return {
        "base": base, "t": base[0].t(), "transpose": base.transpose(0, 2),
        "permute": base.permute(2, 0, 1), "slice": base[1:, 2:, ::2], "row": base[2],
        "col": base[:, 1], "expand": lib.ones(1, 3).expand(4, 3), "mT": base.mT,
        "unsqueeze": base[1:3].unsqueeze(1),
    }


@pytest.mark.parametrize("view", ["base", "t", "transpose", "permute", "slice", "row", "col",
                                  "expand", "mT", "unsqueeze"])
def test_strides_offsets_and_contiguity_match_torch(view):
    a, b = _views(ng)[view], _views(torch)[view]
    assert a.stride() == b.stride()
    for d in range(-a.ndim, a.ndim):
        assert a.stride(d) == b.stride(d)
    assert a.storage_offset() == b.storage_offset()
    assert a.is_contiguous() == b.is_contiguous()
    assert a.nbytes == b.nbytes and a.nelement() == b.nelement()
    assert a.ndimension() == b.ndimension() and a.element_size() == b.element_size()
    c = a.contiguous()
    assert c.is_contiguous() and c.stride() == b.contiguous().stride()
    assert np.array_equal(c.numpy(), b.contiguous().numpy())
    assert (c is a) == a.is_contiguous()
    with pytest.raises(IndexError):
        a.stride(a.ndim)


def test_data_ptr_and_offset_follow_the_memory():
    for lib in (ng, torch):
        x = lib.zeros(4, 5, dtype=lib.float64)
        assert x[1:].data_ptr() - x.data_ptr() == 5 * 8
        assert x[:, 3:].data_ptr() - x.data_ptr() == 3 * 8
        assert x[2:, 1:].storage_offset() == 11
    y = ng.zeros(3)
    assert y.data_ptr() == y.numpy().ctypes.data


DTYPES = [("bool", ng.bool_, torch.bool), ("uint8", np.uint8, torch.uint8),
          ("int8", np.int8, torch.int8), ("int16", np.int16, torch.int16),
          ("int32", ng.int32, torch.int32), ("int64", ng.int64, torch.int64),
          ("float16", ng.float16, torch.float16), ("float32", ng.float32, torch.float32),
          ("float64", ng.float64, torch.float64)]


@pytest.mark.parametrize("name,nd,td", DTYPES, ids=[d[0] for d in DTYPES])
def test_dtype_predicates_and_sizes_match_torch(name, nd, td):
    a, b = ng.zeros(2, 3, dtype=nd), torch.zeros(2, 3, dtype=td)
    assert a.is_floating_point() == b.is_floating_point()
    assert a.is_complex() == b.is_complex() is False
    assert a.is_signed() == b.is_signed()
    assert a.element_size() == b.element_size() and a.itemsize == b.itemsize
    assert a.nbytes == b.nbytes


def test_casts_and_devices_match_torch():
    x = ng.tensor([1.7, -2.2, 300.0])
    for name in ("byte", "char", "short"):
        assert str(getattr(x, name)().dtype) == str(getattr(torch.tensor([1.0]), name)().dtype
                                                    ).replace("torch.", "")
    assert x.short().tolist() == torch.tensor([1.7, -2.2, 300.0]).short().tolist()
    b = x.bfloat16()  # rounded to 8 bits of precision, as torch's
    assert b.dtype == ng.bfloat16
    assert b.tolist() == torch.tensor([1.7, -2.2, 300.0]).bfloat16().tolist()
    assert x.is_cpu and x.get_device() == -1 == torch.zeros(1).get_device()


def test_new_constructors_follow_the_tensors_dtype():
    for lib in (ng, torch):
        x = lib.tensor([1, 2], dtype=lib.int32)
        f = lib.tensor([1.0, 2.0], dtype=lib.float64)
        assert x.new_zeros(2, 3).shape == (2, 3) and str(x.new_zeros(2, 3).dtype).endswith(
            "int32")
        assert x.new_zeros((2, 3)).shape == (2, 3)
        assert x.new_ones(3).tolist() == [1, 1, 1] and str(x.new_ones(3).dtype).endswith("int32")
        assert f.new_full((2,), 7).tolist() == [7.0, 7.0] and str(f.new_full(
            (2,), 7).dtype).endswith("float64")
        assert x.new_tensor([1.5, 2.5]).tolist() == [1, 2]
        assert str(f.new_tensor([1, 2]).dtype).endswith("float64")
        assert str(x.new_ones(3, dtype=lib.float32).dtype).endswith("float32")
        assert x.new_empty(4).shape == (4,) and str(x.new_empty(4).dtype).endswith("int32")
        assert f.new_zeros(2, requires_grad=True).requires_grad
    with pytest.raises(TypeError, match="new_full: size must be a tuple"):
        ng.ones(2).new_full(2, 7)
    with pytest.raises(GradError):
        ng.tensor([1, 2]).new_zeros(2, requires_grad=True)


def test_retains_grad_like_torch():
    for lib in (ng, torch):
        x = lib.tensor([1.0, 2.0], requires_grad=True)
        y = x * 2
        assert not y.retains_grad and not x.retains_grad
        y.retain_grad()
        y.retain_grad()  # a second call changes nothing
        assert y.retains_grad and not x.retains_grad
        (y * 3).sum().backward()
        assert y.grad.tolist() == [3.0, 3.0]


def test_post_accumulate_grad_hook_sees_the_accumulated_grad_like_torch():
    seen = {}
    for lib in (ng, torch):
        x = lib.tensor([1.0, 2.0], requires_grad=True)
        calls = seen[lib] = []
        h = x.register_post_accumulate_grad_hook(lambda t: calls.append(t.grad.tolist()))
        (x * 3).sum().backward()
        (x * x).sum().backward()
        h.remove()
        (x * 5).sum().backward()
    assert seen[ng] == seen[torch] == [[3.0, 3.0], [5.0, 7.0]]
    with pytest.raises(GradError, match="only a leaf"):
        (ng.ones(2, requires_grad=True) * 2).register_post_accumulate_grad_hook(print)
    with pytest.raises(GradError, match="does not require grad"):
        ng.ones(2).register_post_accumulate_grad_hook(print)


def test_post_accumulate_grad_hook_runs_on_each_jit_replay():
    seen = []
    for jitted in (False, True):
        w = ng.tensor([1.0, -1.0], requires_grad=True)
        calls = []
        seen.append(calls)
        w.register_post_accumulate_grad_hook(lambda t, calls=calls: calls.append(t.grad.tolist()))

        def step(x, w=w):
            (w * x).sum().backward()

        run = ng.jit(step, state=(w,)) if jitted else step
        for k in range(3):
            run(ng.tensor([float(k), 1.0]))
    assert seen[0] == seen[1] == [[0.0, 1.0], [1.0, 2.0], [3.0, 3.0]]


def test_metadata_on_another_device(cuda):
    x = ng.ones(2, 3, device=cuda)
    assert not x.is_cpu and x.get_device() == 0
    assert x.new_zeros(4).device == x.device and x.new_tensor([1.0]).device == x.device
    assert x.t().stride() == (1, 3) and not x.t().is_contiguous()
    c = x.t().contiguous()
    assert c.is_contiguous() and c.device == x.device
    assert x[1:].data_ptr() - x.data_ptr() == 12 and x[1:].storage_offset() == 3
    y = x * 1
    y.exp_()
    np.testing.assert_allclose(y.cpu().numpy(), np.full((2, 3), np.e, np.float32), rtol=1e-6)


def test_a_recorded_add_then_a_write_under_no_grad_is_caught_at_backward():
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    y = x * 1
    y.mul_(x)  # recorded: y's new value is the product's output
    z = y * y  # saves that value
    with ng.no_grad():
        y.add_(1)  # changes it behind the graph's back
    with pytest.raises(ng.errors.InplaceError, match="modified in place"):
        z.sum().backward()


def _view_program(lib):
    """In-place changes of slices of a recorded tensor, and of whole tensors by zero_, fill_
    and copy_: values and gradients."""
    out = []
    x = lib.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    y = x * 2
    v = y[1:]
    v.mul_(3)  # y changes too
    v[1:].add_(x[:2] * 10)  # a slice of a slice: both change
    y[0] += 1.0
    out += [y.tolist(), v.tolist()]
    (y * lib.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    out.append(x.grad.tolist())
    x = lib.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    y = x + 0
    y[0].zero_()
    y[1, :1].fill_(7.0)
    y[:, 1].sigmoid_()
    y.sum().backward()
    out.append([round(a, 6) for a in x.grad.flatten().tolist()])
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    s = lib.tensor([5.0, 6.0], requires_grad=True)
    y = x * 2
    y.copy_(s * s)
    (y * x).sum().backward()
    out += [x.grad.tolist(), s.grad.tolist()]
    x = lib.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = x * 1
    y[[0, 1]].mul_(5)  # an advanced index gives a copy: y stays
    out.append(y.tolist())
    return out


def test_in_place_changes_of_slices_reach_their_base_as_pytorch_views():
    """A basic slice of a recorded tensor is a view, as in PyTorch: an in-place op on it (or a
    slice of it) changes the base's values and gradients; zero_/fill_/copy_ are recorded (they
    wrote the array behind the graph's back: gradients flowed to overwritten values)."""
    want, got = _view_program(torch), _view_program(ng)
    for w, g in zip(want, got):
        np.testing.assert_allclose(np.array(g, dtype=float), np.array(w, dtype=float), rtol=1e-6)
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(ng.GradError, match="view of a leaf"):
        x[0].add_(1.0)


def test_in_place_changes_of_slices_reach_their_base_under_vmap_and_grad_too():
    def f(x):
        y = x * 2
        y[1:].mul_(3)
        y[0:2][1:] += 100
        y[2] = -1.0
        return y

    x = ng.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    want = [f(x[i]).numpy() for i in range(2)]
    assert want[0].tolist() == [2.0, 112.0, -1.0]
    np.testing.assert_array_equal(ng.vmap(f)(x).numpy(), np.stack(want))
    g = ng.vmap(ng.grad(lambda a: f(a).sum()))(x).numpy()
    np.testing.assert_array_equal(g, [[2.0, 6.0, 0.0]] * 2)
