"""More of PyTorch's names: dtype names and casts, constants, Size, the default dtype, RNG
state, dtype predicates, print options, threads, creation functions, the *_copy forms,
as_strided, real-valued complex views, Tensor metadata, torch.autograd's checks and
torch.func's module ensembling, each against torch 2.13 where torch has it."""

import array
import math
import warnings

import numpy as np
import pytest

import nodegrad as ng
import nodegrad.nn as nn
import nodegrad.nn.functional as F
from nodegrad.errors import ShapeError

torch = pytest.importorskip("torch")

DTYPES = ["bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64"]


def _t(name):
    return getattr(torch, name)


def _n(name):
    return ng.dtype(name)


# --- dtype names, casts, constants, Size --------------------------------------------------------
def test_dtype_names_are_torchs():
    for name in ("float", "double", "half", "long", "int", "short", "bool", "uint8", "int8",
                 "int16", "int32", "int64", "float16", "float32", "float64"):
        assert str(getattr(ng, name)) == str(getattr(torch, name)).replace("torch.", ""), name
    assert str(ng.bfloat16) == str(torch.bfloat16).replace("torch.", "")  # ml_dtypes' dtype
    assert isinstance(1.5, float) and isinstance(3, int)  # the builtins here are untouched
    names: dict = {}
    exec("from nodegrad import *", names)
    assert "tensor" in names and "double" in names and "float" not in names


def test_tensor_casts_match_torch():
    a = np.array([-1.7, 0.0, 2.5, 300.0])
    x, t = ng.tensor(a), torch.tensor(a)
    for name in ("long", "int", "float", "double", "half", "bool", "short", "byte", "char"):
        got, want = getattr(x, name)(), getattr(t, name)()
        assert str(got.dtype) == str(want.dtype).replace("torch.", ""), name
        np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=name)


def test_constants_and_newaxis():
    assert (ng.pi, ng.e, ng.inf) == (torch.pi, torch.e, torch.inf)
    assert math.isnan(ng.nan) and math.isnan(torch.nan)
    x = ng.zeros(2, 3)
    assert x[ng.newaxis].shape == tuple(torch.zeros(2, 3)[torch.newaxis].shape) == (1, 2, 3)


def test_size_is_a_tuple_that_compares_equal():
    s = ng.Size([2, 3])
    assert s == (2, 3) == ng.zeros(2, 3).shape == torch.Size([2, 3])
    assert isinstance(s, tuple) and s.numel() == torch.Size([2, 3]).numel() == 6
    assert ng.Size([]).numel() == 1 and repr(s) == "nodegrad.Size([2, 3])"
    assert ng.zeros(2, 3).new(ng.Size([4, 1])).shape == (4, 1)


# --- the default float dtype --------------------------------------------------------------------
@pytest.fixture
def float64_default():
    ng.set_default_dtype(ng.float64)
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        ng.set_default_dtype(ng.float32)
        torch.set_default_dtype(torch.float32)


def test_default_dtype_float64_everywhere(float64_default):
    assert ng.get_default_dtype() == ng.float64 and str(torch.get_default_dtype()) == \
        "torch.float64"
    makers = [lambda m: m.tensor([1.0]), lambda m: m.zeros(2), lambda m: m.ones(2),
              lambda m: m.randn(2), lambda m: m.rand(2), lambda m: m.arange(0.0, 2.0),
              lambda m: m.linspace(0, 1, 3), lambda m: m.eye(2), lambda m: m.full((2,), 1.5),
              lambda m: m.scalar_tensor(1), lambda m: m.exp(m.tensor([1, 2])),
              lambda m: m.tensor([1, 2]) * 1.5, lambda m: m.tensor([1, 2]) / 2]
    for k, make in enumerate(makers):
        assert str(make(ng).dtype) == str(make(torch).dtype).replace("torch.", ""), k
    assert ng.finfo().eps == torch.finfo().eps
    assert "dtype" not in repr(ng.tensor([1.5])) and "float32" in repr(ng.zeros(1,
                                                                                dtype=ng.float32))


def test_a_float64_model_trains_under_default_float64(float64_default):
    ng.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    assert all(p.dtype == ng.float64 for p in model.parameters())
    ref = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    with torch.no_grad():
        for p, q in zip(ref.parameters(), model.parameters()):
            p.copy_(torch.tensor(q.numpy()))
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((16, 3)), rng.standard_normal((16, 1))
    opt = ng.optim.SGD(model.parameters(), lr=0.1)
    topt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        topt.zero_grad()
        loss = F.mse_loss(model(ng.tensor(x)), ng.tensor(y))
        tloss = torch.nn.functional.mse_loss(ref(torch.tensor(x)), torch.tensor(y))
        loss.backward()
        tloss.backward()
        opt.step()
        topt.step()
    assert loss.dtype == ng.float64
    np.testing.assert_allclose(loss.item(), tloss.item(), rtol=1e-12)
    for p, q in zip(ref.parameters(), model.parameters()):
        np.testing.assert_allclose(q.numpy(), p.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_set_default_dtype_refuses_non_floats():
    with pytest.raises(TypeError, match="floating-point"):
        ng.set_default_dtype(ng.int64)
    assert ng.get_default_dtype() == ng.float32


# --- random state -------------------------------------------------------------------------------
def test_rng_state_round_trips_exactly():
    ng.manual_seed(3)
    ng.randn(5)
    state = ng.get_rng_state()
    assert state.dtype == ng.uint8 and state.ndim == 1
    a = [ng.randn(4).numpy(), ng.rand(3).numpy(), ng.randint(0, 100, (5,)).numpy()]
    ng.set_rng_state(state)
    b = [ng.randn(4).numpy(), ng.rand(3).numpy(), ng.randint(0, 100, (5,)).numpy()]
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], ng.randn(4).numpy())
    with pytest.raises(ValueError, match="bytes"):
        ng.set_rng_state(state[:5])
    with pytest.raises(TypeError, match="uint8"):
        ng.set_rng_state(state.long())


def test_initial_seed_and_seed():
    ng.manual_seed(1234)
    assert ng.initial_seed() == 1234
    s = ng.seed()
    assert isinstance(s, int) and 0 <= s < 2**63 and ng.initial_seed() == s
    a = ng.randn(3).numpy()
    ng.manual_seed(ng.initial_seed())
    np.testing.assert_array_equal(ng.randn(3).numpy(), a)
    gen = ng.Generator()  # unseeded: its entropy is the seed that repeats its stream
    first = gen.normal((3,))
    np.testing.assert_array_equal(ng.Generator(seed=gen.initial_seed()).normal((3,)), first)
    ng.manual_seed(0)


def test_poisson_and_binomial_sample_their_laws():
    ng.manual_seed(0)
    rates = ng.full((20000,), 3.0)
    p = ng.poisson(rates)
    assert p.dtype == ng.float32 and p.shape == (20000,)
    vals = p.numpy()
    assert (vals == np.round(vals)).all() and (vals >= 0).all()
    assert abs(vals.mean() - 3.0) < 0.06 and abs(vals.var() - 3.0) < 0.15
    b = ng.binomial(ng.full((20000,), 10.0), ng.full((20000,), 0.3)).numpy()
    assert abs(b.mean() - 3.0) < 0.05 and abs(b.var() - 2.1) < 0.1 and b.max() <= 10
    ng.manual_seed(5)
    one = ng.poisson(ng.tensor([1.0, 10.0])).numpy()
    ng.manual_seed(5)
    np.testing.assert_array_equal(ng.poisson(ng.tensor([1.0, 10.0])).numpy(), one)
    assert ng.poisson(ng.zeros(3)).numpy().tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="non-negative"):
        ng.poisson(ng.tensor([-1.0]))
    with pytest.raises(ng.DTypeError, match="floating"):
        ng.binomial(ng.tensor([3]), ng.tensor([0.5]))
    # torch's have these arguments too
    torch.poisson(torch.tensor([1.0]), generator=None)
    torch.binomial(torch.tensor([3.0]), torch.tensor([0.5]), generator=None)


# --- predicates and dtype helpers ---------------------------------------------------------------
def test_predicates_match_torch():
    for name in DTYPES:
        x, t = ng.zeros(2, dtype=_n(name)), torch.zeros(2, dtype=_t(name))
        assert ng.is_signed(x) == torch.is_signed(t), name
        assert ng.is_floating_point(x) == torch.is_floating_point(t), name
        assert ng.is_complex(x) == torch.is_complex(t) is False
        assert ng.typename(x) == torch.typename(t).replace("torch.", "nodegrad."), name
        assert x.type() == t.type().replace("torch.", "nodegrad."), name
    assert ng.is_tensor(ng.zeros(1)) and not ng.is_tensor(np.zeros(1))
    assert ng.is_storage(ng.zeros(1)) is torch.is_storage(torch.zeros(1)) is False
    assert ng.is_nonzero(ng.tensor([2.0])) is torch.is_nonzero(torch.tensor([2.0])) is True
    assert ng.is_nonzero(ng.tensor(0)) is torch.is_nonzero(torch.tensor(0)) is False
    with pytest.raises(ValueError):
        ng.is_nonzero(ng.zeros(2))
    assert ng.is_same_size(ng.zeros(2, 3), ng.ones(2, 3)) and not ng.is_same_size(
        ng.zeros(2, 3), ng.zeros(3, 2))
    assert ng.typename(3) == torch.typename(3) == "int"
    assert ng.typename(nn.Linear(1, 1)) == "nodegrad.nn.layers.linear.Linear"
    assert ng.zeros(2).type("nodegrad.DoubleTensor").dtype == ng.float64
    assert ng.zeros(2).type(ng.int64).dtype == ng.int64


def test_promote_types_and_can_cast_match_torch_on_every_pair():
    for a in DTYPES:
        for b in DTYPES:
            want = torch.promote_types(_t(a), _t(b))
            assert str(ng.promote_types(_n(a), _n(b))) == str(want).replace("torch.", ""), (a, b)
            assert ng.can_cast(_n(a), _n(b)) == torch.can_cast(_t(a), _t(b)), (a, b)
    with pytest.raises(TypeError, match="promote_types"):
        ng.promote_types("datetime64[s]", ng.float32)


# --- printing -----------------------------------------------------------------------------------
@pytest.fixture
def print_options():
    try:
        yield
    finally:
        ng.set_printoptions(profile="default")
        torch.set_printoptions(profile="default")


@pytest.mark.parametrize("opts", [{"precision": 2}, {"precision": 6},
                                  {"precision": 2, "sci_mode": True}, {"profile": "short"}])
def test_set_printoptions_matches_torch_repr(print_options, opts):
    ng.set_printoptions(**opts)
    torch.set_printoptions(**opts)
    for values in ([1.23456789, -2.5, 3.0], [1.0, 2.0], [[0.125, 10.5], [3.25, -4.0]]):
        assert repr(ng.tensor(values)) == repr(torch.tensor(values)), values


def test_set_printoptions_summarises_and_resets(print_options):
    before = repr(ng.arange(10.0))
    ng.set_printoptions(threshold=5, edgeitems=2)
    text = repr(ng.arange(10.0))
    assert "..." in text and "0., 1.," in text and "8., 9." in text and "5." not in text
    ng.set_printoptions(sci_mode=False, precision=3)
    assert repr(ng.tensor([1e-6, 1.0])) == "tensor([0.000, 1.000])"
    ng.set_printoptions(profile="default")
    assert repr(ng.arange(10.0)) == before
    with pytest.raises(ValueError, match="profile"):
        ng.set_printoptions(profile="wide")


# --- threads and determinism --------------------------------------------------------------------
def test_num_threads_and_deterministic_flag():
    n = ng.get_num_threads()
    assert n >= 1
    try:
        ng.set_num_threads(1)
        assert ng.get_num_threads() == 1
    finally:
        ng.set_num_threads(n)
    assert ng.get_num_threads() == n
    with pytest.raises(ValueError, match="positive"):
        ng.set_num_threads(0)
    assert ng.are_deterministic_algorithms_enabled() is False
    try:
        ng.use_deterministic_algorithms(True, warn_only=True)
        assert ng.are_deterministic_algorithms_enabled() is True
        assert ng.is_deterministic_algorithms_warn_only_enabled() is True
    finally:
        ng.use_deterministic_algorithms(False)
    assert ng.are_deterministic_algorithms_enabled() is False


# --- creation -----------------------------------------------------------------------------------
def test_scalar_tensor_asarray_empty_strided_frombuffer():
    for s in (3, 2.5, True):
        got, want = ng.scalar_tensor(s), torch.scalar_tensor(s)
        assert got.shape == () and got.item() == want.item()
        assert str(got.dtype) == str(want.dtype).replace("torch.", "")
    a = np.arange(4.0)
    x = ng.asarray(a)
    a[0] = 7.0
    assert x.numpy()[0] == 7.0 and x.dtype == ng.float64  # shares memory, like torch
    with pytest.raises(ValueError, match="copy=False"):
        ng.asarray(a, dtype=ng.float32, copy=False)
    y = ng.asarray(a, copy=True)
    a[1] = 9.0
    assert y.numpy()[1] == 1.0
    assert ng.asarray([1.0, 2.0]).dtype == ng.float32 and ng.asarray(3).dtype == ng.int64
    w = ng.ones(2, requires_grad=True) * 2
    assert ng.asarray(w) is w
    assert not ng.asarray(w, requires_grad=False).requires_grad
    assert ng.asarray(b"\x01\x02", dtype=ng.uint8).tolist() == [1, 2]
    e, te = ng.empty_strided((2, 3), (1, 2)), torch.empty_strided((2, 3), (1, 2))
    assert e.shape == tuple(te.shape) and e.stride() == te.stride() and e.dtype == ng.float32
    buf = bytearray(b"\x01\x02\x03\x04\x05")
    got = ng.frombuffer(buf, dtype=ng.uint8, count=3, offset=1)
    want = torch.frombuffer(bytearray(buf), dtype=torch.uint8, count=3, offset=1)
    assert got.tolist() == want.tolist() == [2, 3, 4]
    buf[2] = 9
    assert got.tolist()[1] == 9  # shares the buffer
    floats = array.array("d", [1.5, 2.5])
    assert ng.frombuffer(floats, dtype=ng.float64).tolist() == [1.5, 2.5]


def test_range_factories_take_requires_grad_as_torch():
    for name, args in (("arange", (3.0,)), ("linspace", (0.0, 1.0, 4)), ("eye", (2,))):
        got = getattr(ng, name)(*args, requires_grad=True)
        want = getattr(torch, name)(*args, requires_grad=True)
        assert got.requires_grad and got.is_leaf and want.requires_grad
        np.testing.assert_allclose(got.numpy(), want.detach().numpy(), rtol=1e-6)
        (got * got).sum().backward()
        np.testing.assert_allclose(got.grad.numpy(), 2 * got.numpy())
    assert not ng.arange(3.0).requires_grad
    with pytest.raises(ng.GradError, match="floating"):
        ng.arange(3, requires_grad=True)


# --- the *_copy forms ---------------------------------------------------------------------------
COPIES = [
    ("view_copy", ((3, 4),)), ("permute_copy", ((2, 0, 1),)), ("transpose_copy", (0, 2)),
    ("unsqueeze_copy", (1,)), ("squeeze_copy", ()), ("expand_copy", ((3, 2, 2, 3),)),
    ("diagonal_copy", (0, 1, 2)), ("select_copy", (1, 0)), ("slice_copy", (2, 0, 3, 2)),
    ("detach_copy", ()), ("alias_copy", ()), ("as_strided_copy", ((2, 2), (1, 3), 1)),
]


@pytest.mark.parametrize("name,args", COPIES)
def test_copy_forms_match_torch_values_and_gradients(name, args):
    a = np.random.default_rng(0).standard_normal((2, 1, 6) if name in (
        "squeeze_copy", "expand_copy") else (2, 2, 3))
    if name == "view_copy":
        a = a.reshape(2, 6)
    x = ng.tensor(a, requires_grad=True)
    t = torch.tensor(a, requires_grad=True)
    if name == "expand_copy":
        a = a.reshape(2, 1, 6)[:, :, :3]
        x, t = ng.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
    got, want = getattr(ng, name)(x, *args), getattr(torch, name)(t, *args)
    np.testing.assert_array_equal(got.numpy(), want.detach().numpy())
    assert not np.shares_memory(got.numpy(), x.numpy())
    if name == "detach_copy":  # torch gives it a grad_fn that raises; a detached copy here
        assert not got.requires_grad
    elif want.requires_grad:
        v = np.random.default_rng(1).standard_normal(tuple(want.shape))
        got.backward(ng.tensor(v))
        want.backward(torch.tensor(v))
        np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-12)


def test_copy_forms_returning_sequences_and_t_copy():
    a = np.arange(12.0).reshape(3, 4)
    x, t = ng.tensor(a), torch.tensor(a)
    for name, args in (("unbind_copy", (1,)), ("split_copy", (2, 1)),
                       ("split_with_sizes_copy", ([1, 3], 1))):
        got, want = getattr(ng, name)(x, *args), getattr(torch, name)(t, *args)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g.numpy(), w.numpy())
            assert not np.shares_memory(g.numpy(), x.numpy())
    np.testing.assert_array_equal(ng.t_copy(x).numpy(), torch.t_copy(t).numpy())
    for args in ((2,), (2, 1)):
        got, want = ng.unsafe_split(x, *args), torch.unsafe_split(t, *args)
        assert [g.tolist() for g in got] == [w.tolist() for w in want]
        assert [g.tolist() for g in x.unsafe_split(*args)] == [w.tolist() for w in want]
    assert [g.tolist() for g in x.unsafe_chunk(2, 1)] == [w.tolist() for w in
                                                          t.unsafe_chunk(2, 1)]


# --- as_strided ---------------------------------------------------------------------------------
@pytest.mark.parametrize("size,stride,offset", [((2, 2), (1, 2), 1), ((3, 3), (1, 1), 0),
                                                 ((2, 3), (3, 1), None), ((4,), (0,), 2)])
def test_as_strided_matches_torch_with_overlaps(size, stride, offset):
    a = np.random.default_rng(2).standard_normal(6)
    x, t = ng.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
    got = x.as_strided(size, stride, offset) if offset is not None else x.as_strided(size,
                                                                                     stride)
    want = t.as_strided(size, stride, offset)
    np.testing.assert_array_equal(got.numpy(), want.detach().numpy())
    v = np.random.default_rng(3).standard_normal(size)
    got.backward(ng.tensor(v))
    want.backward(torch.tensor(v))
    np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-12)


def test_as_strided_reads_the_memory_of_a_view_and_checks_bounds():
    a = np.arange(6.0).reshape(2, 3)
    x, t = ng.tensor(a).t(), torch.tensor(a).t()
    np.testing.assert_array_equal(ng.as_strided(x, (3,), (1,)).numpy(),
                                  torch.as_strided(t, (3,), (1,)).numpy())
    sl, tsl = ng.tensor(a)[1], torch.tensor(a)[1]
    assert sl.storage_offset() == tsl.storage_offset() == 3
    np.testing.assert_array_equal(sl.as_strided((2,), (1,)).numpy(),
                                  tsl.as_strided((2,), (1,)).numpy())
    with pytest.raises(ValueError, match="outside"):
        ng.arange(4.0).as_strided((3,), (2,))
    assert ng.autograd.gradcheck(lambda z: z.as_strided((2, 2), (1, 1), 1),
                                 ng.tensor(np.arange(4.0), requires_grad=True))


# --- real-valued complex views, angle, shifts ---------------------------------------------------
def test_real_imag_conj_and_their_flags_match_torch():
    a = np.array([1.5, -2.0, 0.0])
    x, t = ng.tensor(a), torch.tensor(a)
    assert x.real is x and ng.real(x) is x
    np.testing.assert_array_equal(x.real.numpy(), t.real.numpy())
    for fn in (lambda z: z.imag, lambda z: ng.imag(z) if isinstance(z, ng.Tensor)
               else torch.imag(z)):
        with pytest.raises(TypeError, match="non-complex"):
            fn(x)
        with pytest.raises(RuntimeError, match="non-complex"):
            fn(t)
    for name in ("conj", "resolve_conj", "resolve_neg"):
        assert getattr(x, name)() is x and getattr(ng, name)(x) is x
        np.testing.assert_array_equal(getattr(x, name)().numpy(), getattr(t, name)().numpy())
    for name in ("is_conj", "is_neg"):
        assert getattr(x, name)() is getattr(t, name)() is False
        assert getattr(ng, name)(x) is False


def test_angle_matches_torch_values_dtypes_and_gradient():
    a = np.array([1.0, -2.0, 0.0, -0.0, np.nan, -np.inf, np.inf])
    x, t = ng.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
    got, want = x.angle(), t.angle()
    np.testing.assert_array_equal(got.numpy(), want.detach().numpy())
    got.sum().backward()
    want.sum().backward()
    finite = ~np.isnan(a)
    np.testing.assert_array_equal(x.grad.numpy()[finite], t.grad.numpy()[finite])
    gi, wi = ng.angle(ng.tensor([-3, 0, 4])), torch.angle(torch.tensor([-3, 0, 4]))
    assert str(gi.dtype) == str(wi.dtype).replace("torch.", "")
    np.testing.assert_allclose(gi.numpy(), wi.numpy())


def test_bitwise_shifts_match_torch():
    a, b = np.array([1, -8, 5, 255], dtype=np.int64), np.array([1, 2, 0, 3], dtype=np.int64)
    for name in ("bitwise_left_shift", "bitwise_right_shift"):
        got = getattr(ng, name)(ng.tensor(a), ng.tensor(b))
        want = getattr(torch, name)(torch.tensor(a), torch.tensor(b))
        np.testing.assert_array_equal(got.numpy(), want.numpy())


# --- Tensor metadata and small methods ----------------------------------------------------------
def test_metadata_matches_torch():
    x, t = ng.zeros(2, 3, requires_grad=True), torch.zeros(2, 3, requires_grad=True)
    for name in ("is_pinned", "is_inference"):
        assert getattr(x, name)() is getattr(t, name)() is False
    for name in ("is_sparse", "is_meta", "is_quantized"):
        assert getattr(x, name) is getattr(t, name) is False
    assert repr(x.layout) == repr(t.layout).replace("torch.", "nodegrad.") and \
        x.layout is ng.strided
    assert x.output_nr == t.output_nr == 0 and (x * 2).output_nr == (t * 2).output_nr
    assert x.to_dense() is x and x.pin_memory() is x
    for shape, perm in (((2, 3), (1, 0)), ((2, 3, 4), (2, 0, 1)), ((2, 3, 4), (0, 1, 2))):
        y, u = ng.zeros(*shape).permute(*perm), torch.zeros(*shape).permute(*perm)
        assert y.dim_order() == u.dim_order(), perm


def test_apply_map_map2_match_torch():
    a = np.array([[1.0, -2.0], [3.5, 0.0]])
    x, t = ng.tensor(a), torch.tensor(a)
    x.apply_(lambda v: v * v + 1)
    t.apply_(lambda v: v * v + 1)
    np.testing.assert_array_equal(x.numpy(), t.numpy())
    x.map_(ng.tensor(np.array([10.0, 20.0])), lambda p, q: p - q)
    t.map_(torch.tensor(np.array([10.0, 20.0])), lambda p, q: p - q)
    np.testing.assert_array_equal(x.numpy(), t.numpy())
    x.map2_(ng.tensor(a), ng.tensor(np.array([2.0])), lambda p, q, r: p * q + r)
    t.map2_(torch.tensor(a), torch.tensor(np.array([2.0])), lambda p, q, r: p * q + r)
    np.testing.assert_array_equal(x.numpy(), t.numpy())
    with pytest.raises(ng.GradError, match="requires grad"):
        ng.ones(2, requires_grad=True).apply_(lambda v: v)


def test_resize_and_new_match_torch():
    for sizes in ((2, 2), (3, 2), (6,), (0,)):
        x, t = ng.arange(6.0), torch.arange(6.0)
        x.resize_(*sizes)
        t.resize_(*sizes)
        assert x.shape == tuple(t.shape)
        n = min(t.numel(), 6)
        np.testing.assert_array_equal(x.numpy().reshape(-1)[:n], t.numpy().reshape(-1)[:n])
    x, t = ng.arange(6.0), torch.arange(6.0)
    x.resize_as_(ng.zeros(3, 2))
    t.resize_as_(torch.zeros(3, 2))
    np.testing.assert_array_equal(x.numpy(), t.numpy())
    with pytest.raises(ng.GradError):
        ng.zeros(2, requires_grad=True).resize_(4)
    x, t = ng.arange(4.0), torch.arange(4.0)
    for args in ((), (2, 3), ([1, 2],), ((2, 3),)):
        got, want = x.new(*args), t.new(*args)
        assert got.shape == tuple(want.shape) and got.dtype == ng.float32, args
        if args and not isinstance(args[0], int):
            assert got.tolist() == want.tolist()
    assert x.new(x).numpy() is not None and np.shares_memory(x.new(x).numpy(), x.numpy())
    with pytest.raises(TypeError):
        x.new(ng.arange(3))


def test_nonzero_static_matches_torch():
    cases = [(np.array([[1, 0], [2, 3]]), 5, -1), (np.array([1, 0, 2, 3]), 2, 9),
             (np.zeros(3), 2, -1)]
    for a, size, fill in cases:
        got = ng.nonzero_static(ng.tensor(a), size=size, fill_value=fill)
        want = torch.nonzero_static(torch.tensor(a), size=size, fill_value=fill)
        np.testing.assert_array_equal(got.numpy(), want.numpy())
        assert got.dtype == ng.int64
        np.testing.assert_array_equal(ng.tensor(a).nonzero_static(size=size).numpy(),
                                      torch.tensor(a).nonzero_static(size=size).numpy())


# --- top-level names with torch's own arguments -------------------------------------------------
def test_torch_level_functional_names():
    rng = np.random.default_rng(4)
    z, y = rng.standard_normal((4, 3)), rng.random((4, 3))
    w, pw = rng.random((4, 3)), rng.random(3) + 0.5
    for red in (0, 1, 2):
        got = ng.binary_cross_entropy_with_logits(ng.tensor(z), ng.tensor(y), ng.tensor(w),
                                                  ng.tensor(pw), red)
        want = torch.binary_cross_entropy_with_logits(torch.tensor(z), torch.tensor(y),
                                                      torch.tensor(w), torch.tensor(pw), red)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="reduction"):
        ng.binary_cross_entropy_with_logits(ng.tensor(z), ng.tensor(y), reduction=3)
    x = rng.standard_normal((2, 3, 8))
    vals, idx = ng.adaptive_max_pool1d(ng.tensor(x), 3)
    tv, ti = torch.adaptive_max_pool1d(torch.tensor(x), 3)
    np.testing.assert_array_equal(vals.numpy(), tv.numpy())
    np.testing.assert_array_equal(idx.numpy(), ti.numpy())
    np.testing.assert_allclose(ng.adaptive_avg_pool1d(ng.tensor(x), 3).numpy(),
                               torch.adaptive_avg_pool1d(torch.tensor(x), 3).numpy(),
                               rtol=1e-12)
    wt = np.array([0.25, 0.5, 0.1])
    np.testing.assert_allclose(ng.tensor(x).prelu(ng.tensor(wt)).numpy(),
                               torch.tensor(x).prelu(torch.tensor(wt)).numpy(), rtol=1e-12)


# --- torch.autograd -----------------------------------------------------------------------------
class _WrongCube(ng.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x ** 2 * g  # should be 3 x^2


def test_gradcheck_with_torch_signature():
    x = ng.tensor(np.array([0.5, -1.2, 2.0]), requires_grad=True)
    c = ng.tensor(np.array([1.0, 2.0, 3.0]))  # not requiring grad: held fixed
    assert ng.autograd.gradcheck(lambda a, b: (a * b).sin(), (x, c), eps=1e-6, atol=1e-5,
                                 rtol=1e-3, raise_exception=True)
    assert ng.autograd.gradcheck(lambda a: a.exp(), x)
    assert ng.autograd.gradcheck(_WrongCube.apply, (x,), raise_exception=False) is False
    with pytest.raises(ng.autograd.GradcheckError, match="analytic"):
        ng.autograd.gradcheck(_WrongCube.apply, (x,))
    with pytest.raises(ValueError, match="requires grad"):
        ng.autograd.gradcheck(lambda a: a, (c,))
    with pytest.raises(NotImplementedError, match="check_forward_ad"):
        ng.autograd.gradcheck(lambda a: a, (x,), check_forward_ad=True)
    tx = torch.tensor(x.numpy(), requires_grad=True)  # torch agrees on the same call
    assert torch.autograd.gradcheck(lambda a: a.exp(), tx, eps=1e-6, atol=1e-5, rtol=1e-3,
                                    raise_exception=True)


class _FirstOrderOnly(ng.autograd.Function):
    """x^3 whose backward is right but not itself differentiable correctly (uses a constant)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x.detach() ** 2 * g


def test_gradgradcheck():
    x = ng.tensor(np.array([0.5, -1.2, 2.0]), requires_grad=True)
    assert ng.autograd.gradgradcheck(lambda a: (a * a).sin(), (x,))
    v = ng.tensor(np.array([1.0, -1.0, 0.5]))
    assert ng.autograd.gradgradcheck(lambda a: a.tanh() * a, (x,), (v,))
    assert ng.autograd.gradcheck(_FirstOrderOnly.apply, (x,))
    assert ng.autograd.gradgradcheck(_FirstOrderOnly.apply, (x,), raise_exception=False) is False
    tx = torch.tensor(x.numpy(), requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a: (a * a).sin(), (tx,))


def test_anomaly_switches_variable_and_inference_mode():
    assert not ng.is_anomaly_enabled()
    with ng.autograd.set_detect_anomaly(True):
        assert ng.is_anomaly_enabled()
        x = ng.tensor([-1.0], requires_grad=True)
        with pytest.raises(ng.AnomalyError):
            ng.sqrt(x).sum().backward()
    assert not ng.is_anomaly_enabled()
    ng.autograd.set_detect_anomaly(True)  # as a call: stays on
    try:
        assert ng.is_anomaly_enabled()
    finally:
        ng.set_anomaly_enabled(False)
    assert not ng.is_anomaly_enabled()
    ng.set_anomaly_enabled(True)
    assert ng.autograd.is_anomaly_enabled()
    ng.set_anomaly_enabled(False)
    t = ng.zeros(2)
    v = ng.autograd.Variable(t, requires_grad=True)  # t.detach(), as PyTorch's
    assert v is not t and v.requires_grad and not t.requires_grad
    assert isinstance(t, ng.autograd.Variable)
    assert not isinstance(np.zeros(1), ng.autograd.Variable)
    assert isinstance(torch.zeros(1), torch.autograd.Variable)  # torch's meaning
    with ng.autograd.inference_mode():
        assert not ng.is_grad_enabled() and ng.is_inference_mode_enabled()
    assert ng.autograd.inference_mode is ng.inference_mode


# --- torch.func ---------------------------------------------------------------------------------
def test_grad_and_value_matches_torch_func():
    a = np.array([0.3, -1.0, 2.0])
    g, v = ng.func.grad_and_value(lambda x: (x.sin() * x).sum())(ng.tensor(a))
    tg, tv = torch.func.grad_and_value(lambda x: (x.sin() * x).sum())(torch.tensor(a))
    np.testing.assert_allclose(g.numpy(), tg.numpy(), rtol=1e-12)
    assert v.item() == pytest.approx(tv.item(), rel=1e-12)
    g, (v, aux) = ng.func.grad_and_value(lambda x: ((x * x).sum(), x.mean()), has_aux=True)(
        ng.tensor(a))
    tg, (tv, taux) = torch.func.grad_and_value(lambda x: ((x * x).sum(), x.mean()),
                                               has_aux=True)(torch.tensor(a))
    np.testing.assert_allclose(g.numpy(), tg.numpy())
    assert aux.item() == pytest.approx(taux.item())


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)
        self.register_buffer("shift", ng.randn(2))

    def forward(self, x):
        return self.fc2(self.fc1(x).tanh()) + self.shift


def test_stack_module_state_vmaps_an_ensemble_of_three_mlps():
    ng.manual_seed(0)
    models = [_MLP() for _ in range(3)]
    params, buffers = ng.func.stack_module_state(models)
    assert set(params) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert params["fc1.weight"].shape == (3, 6, 4) and buffers["shift"].shape == (3, 2)
    assert params["fc1.weight"].is_leaf and params["fc1.weight"].requires_grad
    assert not buffers["shift"].requires_grad
    x = ng.randn(5, 4)

    def run(p, b, xs):
        return ng.func.functional_call(models[0], (p, b), xs)

    out = ng.vmap(run, in_axes=(0, 0, None))(params, buffers, x)
    assert out.shape == (3, 5, 2)
    for k, m in enumerate(models):
        np.testing.assert_allclose(out.numpy()[k], m(x).detach().numpy(), rtol=1e-5,
                                   atol=1e-6)
    out.sum().backward()  # gradients reach the stacked leaves, one slice per model
    for k, m in enumerate(models):
        m(x).sum().backward()
        np.testing.assert_allclose(params["fc2.weight"].grad.numpy()[k],
                                   m.fc2.weight.grad.numpy(), rtol=1e-5, atol=1e-6)
    # torch.func agrees on the same stacked state and ensemble
    tmodels = [torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(),
                                   torch.nn.Linear(6, 2)) for _ in range(3)]
    tp, _ = torch.func.stack_module_state(tmodels)
    assert {k: tuple(v.shape) for k, v in tp.items()} == {
        "0.weight": (3, 6, 4), "0.bias": (3, 6), "2.weight": (3, 2, 6), "2.bias": (3, 2)}
    with pytest.raises(ValueError, match="at least one"):
        ng.func.stack_module_state([])
    with pytest.raises(ValueError, match="one type"):
        ng.func.stack_module_state([_MLP(), nn.Linear(4, 2)])
    models[1].eval()
    with pytest.raises(ValueError, match="same mode"):
        ng.func.stack_module_state(models)


def test_functionalize_and_replace_all_batch_norm_modules():
    def f(x):
        y = x.clone()
        y.add_(1.0)
        return y * 2

    a = ng.tensor([1.0, 2.0])
    np.testing.assert_array_equal(ng.func.functionalize(f)(a).numpy(), f(a).numpy())
    tf = torch.func.functionalize(lambda x: x.clone().add_(1.0) * 2)
    np.testing.assert_array_equal(tf(torch.tensor([1.0, 2.0])).numpy(), f(a).numpy())
    with pytest.raises(ValueError, match="remove"):
        ng.func.functionalize(f, remove="views")
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    tnet = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    assert ng.func.replace_all_batch_norm_modules_(net) is net
    torch.func.replace_all_batch_norm_modules_(tnet)
    bn, tbn = net[1], tnet[1]
    assert bn.running_mean is tbn.running_mean is None
    assert bn.running_var is None and bn.track_running_stats is tbn.track_running_stats is False
    assert dict(net.named_buffers()) == {} and dict(tnet.named_buffers()) == {}
    x = ng.randn(8, 3)
    net.eval()
    out = net(x).numpy()  # batch statistics even in eval mode, as torch
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-5)


# --- histogramdd and the randomised low-rank factorisations -------------------------------------
@pytest.mark.parametrize("kwargs", [{"bins": [2, 3]}, {"bins": 2, "range": [0.0, 2.0, 0.0, 4.0],
                                                       "density": True},
                                    {"bins": 4, "weight": True}])
def test_histogramdd_matches_torch(kwargs):
    pts = np.random.default_rng(5).random((50, 2)) * [2.0, 4.0]
    ng_kw, t_kw = dict(kwargs), dict(kwargs)
    if kwargs.get("weight"):
        w = np.random.default_rng(6).random(50)
        ng_kw["weight"], t_kw["weight"] = ng.tensor(w), torch.tensor(w)
    got, want = ng.histogramdd(ng.tensor(pts), **ng_kw), torch.histogramdd(torch.tensor(pts),
                                                                            **t_kw)
    np.testing.assert_allclose(got.hist.numpy(), want.hist.numpy(), rtol=1e-12)
    assert len(got.bin_edges) == len(want.bin_edges) == 2
    for g, w in zip(got.bin_edges, want.bin_edges):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-12)
    edges = [ng.tensor([0.0, 1.0, 3.0]), ng.tensor([0.0, 5.0])]
    got = ng.histogramdd(ng.tensor([[1.0, 1.0], [1.0, 2.0]]), bins=edges)
    want = torch.histogramdd(torch.tensor([[1.0, 1.0], [1.0, 2.0]]),
                             bins=[torch.tensor([0.0, 1.0, 3.0]), torch.tensor([0.0, 5.0])])
    np.testing.assert_array_equal(got.hist.numpy(), want.hist.numpy())


@pytest.mark.parametrize("shape", [(8, 6), (6, 8)])
def test_svd_lowrank_and_pca_lowrank_match_torch(shape):
    rng = np.random.default_rng(7)
    a = rng.standard_normal((shape[0], 3)) @ rng.standard_normal((3, shape[1]))  # rank 3
    U, S, V = ng.svd_lowrank(ng.tensor(a), q=4)
    tU, tS, tV = torch.svd_lowrank(torch.tensor(a), q=4)
    assert U.shape == tuple(tU.shape) and S.shape == tuple(tS.shape) and \
        V.shape == tuple(tV.shape)
    np.testing.assert_allclose(S.numpy()[:3], tS.numpy()[:3], rtol=1e-10)
    np.testing.assert_allclose(((U * S) @ V.T).numpy(), a, atol=1e-10)
    np.testing.assert_allclose((U.T @ U).numpy(), np.eye(4), atol=1e-10)
    P, PS, PV = ng.pca_lowrank(ng.tensor(a))
    tP, tPS, tPV = torch.pca_lowrank(torch.tensor(a))
    assert PS.shape == tuple(tPS.shape)
    np.testing.assert_allclose(PS.numpy()[:3], tPS.numpy()[:3], rtol=1e-10)
    centred = a - a.mean(0)
    np.testing.assert_allclose(((P * PS) @ PV.T).numpy(), centred, atol=1e-10)


def test_svd_lowrank_is_differentiable():
    a = np.random.default_rng(8).standard_normal((5, 3))

    def top_values(x):  # a fixed sketch, so finite differences see one function
        return ng.svd_lowrank(x, q=3, niter=1, generator=ng.Generator(seed=0))[1]

    assert ng.autograd.gradcheck(top_values, ng.tensor(a, requires_grad=True))
    x, t = ng.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
    top_values(x).sum().backward()
    torch.svd_lowrank(t, q=3, niter=1)[1].sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-8, atol=1e-10)


def test_top_level_functions_take_pytorchs_dim_forms():
    """ng.sum(x, dim=1), ng.max(x, dim=1) (values, indices), ng.max(a, b), ng.cat(ts, dim=1),
    ng.transpose(x, 0, 1), ng.split(x, 3, dim=1) as PyTorch's, NumPy's forms unchanged."""
    x = np.random.default_rng(0).standard_normal((3, 4))
    n, t = ng.tensor(x), torch.tensor(x)
    pairs = [
        (ng.sum(n, dim=1, keepdim=True), torch.sum(t, dim=1, keepdim=True)),
        (ng.mean(n, dim=(0, 1)), torch.mean(t, dim=(0, 1))),
        (ng.max(n, dim=1).values, torch.max(t, dim=1).values),
        (ng.min(n, dim=0).indices, torch.min(t, dim=0).indices),
        (ng.max(n, n * 2), torch.max(t, t * 2)), (ng.min(n, -n), torch.min(t, -t)),
        (ng.argmax(n, dim=1), torch.argmax(t, dim=1)), (ng.std(n, dim=1), torch.std(t, dim=1)),
        (ng.cat([n, n], dim=1), torch.cat([t, t], dim=1)),
        (ng.stack([n, n], dim=2), torch.stack([t, t], dim=2)),
        (ng.unsqueeze(n, dim=1), torch.unsqueeze(t, dim=1)),
        (ng.transpose(n, 0, 1), torch.transpose(t, 0, 1)),
        (ng.split(n, 3, dim=1)[1], torch.split(t, 3, dim=1)[1]),
        (ng.flip(n, dims=(0,)), torch.flip(t, dims=(0,))),
        (ng.logsumexp(n, dim=0), torch.logsumexp(t, dim=0)),
        (ng.all(n > 0, dim=1), torch.all(t > 0, dim=1)),
    ]
    for got, want in pairs:
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ng.std(n, 1).numpy(), np.std(x, 1), rtol=1e-12)  # NumPy's
    assert [p.shape for p in ng.split(n, 2, 1)] == [(3, 2), (3, 2)]  # NumPy's sections
    with pytest.raises(TypeError, match="not both"):
        ng.sum(n, 1, dim=1)


def test_version_module_reads_as_torch_version():
    """``torch.version.cuda`` (None on a CPU build) and ``__version__``, as environment
    reports print them; the version is the package's."""
    import importlib.metadata

    assert ng.version.__version__ == ng.__version__ == importlib.metadata.version("nodegrad")
    assert ng.version.cuda == (None if not ng.cuda.is_available() else ng.version.cuda)
    assert ng.version.cuda is None or ng.version.cuda.count(".") == 1
    assert ng.version.hip is None and ng.version.debug is False
    with pytest.raises(AttributeError, match="no attribute 'nccl'"):
        ng.version.nccl


def test_size_is_torch_size_and_tensor_of_a_size_is_its_shape():
    """``x.size()`` is a Size (a tuple); legacy ``Tensor(x.size()).normal_()`` makes a tensor of
    that shape, as PyTorch's (a plain tuple stays data, as in PyTorch)."""
    x, t = ng.ones(3, 2), torch.ones(3, 2)
    assert isinstance(x.size(), ng.Size) and x.size() == (3, 2) == tuple(t.size())
    assert repr(x.size()) == "nodegrad.Size([3, 2])"
    assert ng.Tensor(x.size()).shape == tuple(torch.Tensor(t.size()).shape) == (3, 2)
    assert ng.Tensor(x.size()).normal_().shape == (3, 2)
    np.testing.assert_array_equal(ng.Tensor((3, 2)).numpy(), torch.Tensor((3, 2)).numpy())
    assert x.size(1) == 2 and type(x.size(1)) is int
    with pytest.raises(TypeError, match="no further arguments"):
        ng.Tensor(x.size(), 4)


@pytest.mark.parametrize("dtype", ["uint8", "int64", "bool", "float16", "float32", "float64"])
def test_tensor_of_an_array_is_pytorchs_default_float_tensor(dtype):
    """``Tensor(ndarray)`` is PyTorch's: the default float dtype whatever the array's (an image's
    uint8 less 128 is negative, not wrapped around), its memory shared where it already has
    that dtype; ``tensor``/``as_tensor``/``from_numpy`` keep the array's dtype."""
    a = (np.arange(6).reshape(2, 3) * 50 % 256).astype(dtype)
    x, t = ng.Tensor(a), torch.Tensor(a)
    assert str(x.dtype) == str(t.dtype).split(".")[-1] == "float32"
    np.testing.assert_array_equal((x - 128).numpy(), (t - 128).numpy())
    a[0, 0] = 1
    assert x[0, 0].item() == t[0, 0].item()  # shared only where no conversion was needed
    assert ng.as_tensor(a).dtype == ng.from_numpy(a).dtype == ng.tensor(a).dtype == ng.dtype(dtype)


def test_tensor_of_an_array_follows_the_default_dtype_and_refuses_scalars():
    ng.set_default_dtype(ng.float64)
    try:
        assert ng.Tensor(np.ones(2, np.float32)).dtype == ng.float64
    finally:
        ng.set_default_dtype(ng.float32)
    with pytest.warns(UserWarning, match="discards the imaginary part"):
        x = ng.Tensor(np.array([3 - 1j]))
    assert x.dtype == ng.float32 and x.item() == 3
    with pytest.raises(TypeError, match="float64"):
        ng.Tensor(np.float64(3.0))  # PyTorch: "data must be a sequence"
    p = ng.nn.Parameter(ng.zeros(2, dtype=ng.float64))
    assert p.dtype == ng.float64  # a Parameter keeps its tensor's dtype, as PyTorch's


def test_wide_unsigned_dtype_names_are_pytorchs():
    """torch.uint16/uint32/uint64: creation, conversion and PyTorch's refusal of a mix."""
    for name in ("uint16", "uint32", "uint64"):
        v = np.array([0, 7, 65535], dtype=name)
        n, t = ng.tensor(v, dtype=getattr(ng, name)), torch.tensor(v.astype(np.int64)).to(
            getattr(torch, name))
        assert str(n.dtype) == str(t.dtype).removeprefix("torch.") == name
        np.testing.assert_array_equal(n.float().numpy(), t.float().numpy())
        assert ng.zeros(2, dtype=getattr(ng, name)).dtype == v.dtype
    with pytest.raises(TypeError, match="no integer dtype holds both uint64 and int64"):
        ng.ones(2, dtype=ng.uint64) + ng.ones(2, dtype=ng.int64)


def test_split_warns_where_a_list_reads_as_pytorchs_sizes():
    """``ng.split`` is NumPy's; a list that adds up to the axis length (PyTorch's part sizes, as
    ``torch.split(out, [n_users, n_items])``) splits as NumPy's with a warning naming dim=."""
    n = ng.tensor(np.arange(20.0).reshape(10, 2))
    with pytest.warns(UserWarning, match=r"pass dim=0 for PyTorch's split \(2 parts\)"):
        parts = ng.split(n, [3, 7])
    assert [p.shape for p in parts] == [(3, 2), (4, 2), (3, 2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [p.shape for p in ng.split(n, [3, 7], axis=0)] == [(3, 2), (4, 2), (3, 2)]
        assert [p.shape for p in ng.split(n, [3, 7], dim=0)] == [(3, 2), (7, 2)]
        assert [p.shape for p in ng.split(n, [2, 5])] == [(2, 2), (3, 2), (5, 2)]
        assert [p.shape for p in ng.split(n, [1], 1)] == [(10, 1), (10, 1)]
    with pytest.warns(UserWarning, match="axis 1"):
        ng.split(n, [1, 1], 1)
    with pytest.raises(ShapeError, match="pass dim=0"):
        ng.split(n, 3)
    with pytest.raises(TypeError, match="once"):
        ng.split(n, 2, axis=0, dim=0)


def test_torch_fill_pad_and_layout_names_match_torch():
    x = np.arange(6.0).reshape(2, 3)
    v = ng.tensor(2.5, requires_grad=True)
    a = ng.tensor(x, requires_grad=True)
    f = ng.fill(a, v)
    f.sum().backward()
    np.testing.assert_array_equal(f.numpy(), torch.fill(torch.tensor(x), 2.5).numpy())
    assert v.grad.item() == 6.0 and not a.grad.numpy().any()
    with pytest.raises(ng.ShapeError, match="fill: value must be a number or a 0-d tensor"):
        ng.fill(a, ng.ones(2))
    np.testing.assert_array_equal(
        ng.constant_pad_nd(ng.tensor(x), (1, -1), 7.0).numpy(),
        torch.constant_pad_nd(torch.tensor(x), (1, -1), 7.0).numpy())
    np.testing.assert_array_equal(ng.unfold_copy(ng.tensor(x), 1, 2, 1).numpy(),
                                  torch.unfold_copy(torch.tensor(x), 1, 2, 1).numpy())
    assert ng.empty_permuted((2, 3, 4), (2, 0, 1)).shape == (2, 3, 4)
    with pytest.raises(ValueError, match="empty_permuted: physical_layout must be a permutation"):
        ng.empty_permuted((2, 3), (0, 0))
    assert ng.tensor(x).new_empty_strided((3, 2), (2, 1)).shape == (3, 2)
    with pytest.raises(ng.ShapeError, match="new_empty_strided: 2 dims but 1 strides"):
        ng.tensor(x).new_empty_strided((3, 2), (1,))
    c = ng.conj_physical(a)
    assert c is not a and np.array_equal(c.numpy(), x) and a.conj_physical().shape == (2, 3)
    r = ng.zeros(1)
    assert ng.resize_as_(r, ng.tensor(x)) is r and r.shape == (2, 3)


def test_pytorch_signatures_of_autograd_init_clip_and_random_split():
    """PyTorch's parameter names and order where nodegrad's differed: autograd.grad and
    backward positionally (materialize_grads, grad_variables), detect_anomaly(check_nan=),
    nn.init's ``tensor=``, clip_grad_*(foreach=) and random_split(generator=)."""
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    unused = ng.tensor([3.0], requires_grad=True)
    tx = torch.tensor([1.0, 2.0], requires_grad=True)
    tu = torch.tensor([3.0], requires_grad=True)
    got = ng.autograd.grad((x * x).sum(), [x, unused], None, False, False,
                           materialize_grads=True)
    want = torch.autograd.grad((tx * tx).sum(), [tx, tu], None, False, False,
                               materialize_grads=True)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.numpy(), w.numpy())
    with pytest.raises(ng.errors.GradError, match="leading batch axis"):
        ng.autograd.grad((x * x).sum(), x, is_grads_batched=True)
    ng.autograd.backward(x * 3, None, False, False, ng.ones(2))  # grad_variables, positionally
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 3.0])
    with ng.autograd.detect_anomaly(check_nan=False):  # on, without the NaN checks (PyTorch's)
        assert ng.autograd.is_anomaly_enabled()
        assert not ng.is_anomaly_check_nan_enabled()
    with ng.autograd.detect_anomaly():
        assert ng.autograd.is_anomaly_enabled()
    w = ng.empty(3, 4)
    ng.nn.init.constant_(tensor=w, val=0.5)
    ng.nn.init.xavier_uniform_(tensor=w, gain=0.1)
    assert float(abs(w).max()) <= 0.1 * (6 / 7) ** 0.5
    p = ng.nn.Parameter(ng.ones(4))
    p.grad = ng.full((4,), 3.0)
    norm = ng.nn.utils.clip_grad_norm_([p], 1.0, 2.0, False, True)  # foreach, positionally
    assert float(norm) == 6.0 and np.allclose(p.grad.numpy(), 0.5, atol=1e-6)
    ng.nn.utils.clip_grad_value_([p], 0.1, foreach=False)
    assert float(p.grad.max()) == pytest.approx(0.1)
    a = ng.data.random_split(list(range(10)), [6, 4], generator=ng.Generator().manual_seed(3))
    b = ng.data.random_split(list(range(10)), [6, 4], seed=ng.Generator().manual_seed(3))
    assert [list(s.indices) for s in a] == [list(s.indices) for s in b]
