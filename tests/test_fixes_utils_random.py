"""Gradient clipping by any norm (and in float16), random sampling dtypes and seeds, init
argument checks and zero-element tensors, randperm, fork_rng, PackedSequence casts, and the
nn.utils import paths PyTorch code uses."""

import math
import warnings

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.errors import DTypeError
from nodegrad.nn import init


def _with_grads(*grads, dtype=np.float32):
    ps = []
    for g in grads:
        p = ng.zeros(len(g), dtype=dtype, requires_grad=True)
        p.grad = ng.tensor(np.array(g, dtype))
        ps.append(p)
    return ps


# --- 1. clip_grad_norm_ on float16 gradients ------------------------------------------------
def test_clip_grad_norm_float16_does_not_overflow():
    (p,) = _with_grads([300.0, 400.0], dtype=np.float16)
    total = nn.utils.clip_grad_norm_([p], 1000.0)
    assert total.dtype == ng.float16 and float(total) == 500.0  # PyTorch: 500 in float16
    np.testing.assert_array_equal(p.grad.numpy(), [300.0, 400.0])
    (p,) = _with_grads([3000.0, 4000.0], dtype=np.float16)
    assert float(nn.utils.clip_grad_norm_([p], 1000.0)) == 5000.0
    np.testing.assert_allclose(p.grad.numpy().astype(np.float32), [600.0, 800.0], rtol=2e-3)


def test_clip_grad_norm_promotes_mixed_dtypes():
    a, = _with_grads([3.0, 4.0], dtype=np.float16)
    b, = _with_grads([3.0, 4.0])
    total = nn.utils.clip_grad_norm_([a, b], 100.0)
    assert total.dtype == ng.float32 and float(total) == pytest.approx(math.sqrt(50), rel=1e-6)
    c, = _with_grads([3.0, 4.0], dtype=np.float64)
    assert nn.utils.clip_grad_norm_([b, c], 100.0).dtype == ng.float64


# --- 2. every norm_type, and no gradients ---------------------------------------------------
def _expected_norm(grads, p):
    def norm(v):
        v = np.abs(np.asarray(v, np.float64))
        if p == math.inf:
            return v.max()
        if p == -math.inf:
            return v.min()
        if p == 0:
            return float(np.count_nonzero(v))
        with np.errstate(divide="ignore"):
            return np.sum(v ** p) ** (1.0 / p)
    return norm([norm(g) for g in grads])


@pytest.mark.parametrize("p", [0, 0.5, 1, 2, 3, math.inf, -math.inf, -1])
@pytest.mark.parametrize("grads", [[[0.5, 1.0, -2.0], [1.0, 3.0]], [[0.5, 0.0, -2.0], [1.0, 3.0]]])
def test_clip_grad_norm_every_norm_type(p, grads):
    ps = _with_grads(*grads)
    want = _expected_norm(grads, p)
    same = float(nn.utils.get_total_norm([q.grad for q in ps], p))
    total = nn.utils.clip_grad_norm_(ps, 0.1, norm_type=p)
    assert total.dtype == ng.float32
    assert float(total) == pytest.approx(want, rel=1e-5) and same == pytest.approx(want, rel=1e-5)
    coef = min(0.1 / (want + 1e-6), 1.0)
    for q, g in zip(ps, grads):
        np.testing.assert_allclose(q.grad.numpy(), np.array(g) * coef, rtol=1e-5)


def test_clip_grad_norm_minus_inf_is_the_smallest_magnitude():
    (p,) = _with_grads([0.5, -2.0])
    assert float(nn.utils.clip_grad_norm_([p], 0.1, norm_type=-math.inf)) == 0.5
    np.testing.assert_allclose(p.grad.numpy(), [0.1, -0.4], rtol=1e-5)


def test_clip_grad_norm_without_gradients_is_float32_zero():
    total = nn.utils.clip_grad_norm_([ng.zeros(2, requires_grad=True)], 1.0)
    assert total.dtype == ng.float32 and float(total) == 0.0


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    for p in (0, 0.5, 2, math.inf, -math.inf):
        ours = _with_grads([0.5, 1.0, -2.0], [1.0, 3.0])
        theirs = [torch.zeros(n, requires_grad=True) for n in (3, 2)]
        for t, g in zip(theirs, ([0.5, 1.0, -2.0], [1.0, 3.0])):
            t.grad = torch.tensor(g)
        a = nn.utils.clip_grad_norm_(ours, 0.1, norm_type=p)
        b = torch.nn.utils.clip_grad_norm_(theirs, 0.1, norm_type=p)
        assert float(a) == pytest.approx(float(b), rel=1e-6)
        for x, y in zip(ours, theirs):
            np.testing.assert_allclose(x.grad.numpy(), y.grad.numpy(), rtol=1e-5)
    q = torch.zeros(2, dtype=torch.float16, requires_grad=True)
    q.grad = torch.tensor([300.0, 400.0], dtype=torch.float16)
    assert str(torch.nn.utils.clip_grad_norm_([q], 1000.0).dtype) == "torch.float16"


# --- 3. continuous samplers refuse integer dtypes -------------------------------------------
@pytest.mark.parametrize("op,call", [
    ("randn", lambda: ng.randn(6, dtype=ng.int64)),
    ("rand", lambda: ng.rand(3, dtype=ng.int64)),
    ("rand", lambda: ng.rand(3, dtype=ng.bool_)),
    ("normal", lambda: ng.normal(0.0, 10.0, (6,), dtype=ng.int64)),
    ("uniform", lambda: ng.uniform(0.0, 10.0, (6,), dtype=ng.int32)),
    ("randn_like", lambda: ng.randn_like(ng.zeros(6, dtype=ng.int64))),
    ("rand_like", lambda: ng.rand_like(ng.zeros(6, dtype=ng.int64))),
    ("Generator.normal", lambda: ng.Generator(seed=0).normal((3,), ng.int64)),
    ("Generator.random", lambda: ng.Generator(seed=0).random((3,), ng.int64)),
])
def test_continuous_samplers_refuse_integer_dtypes(op, call):
    with pytest.raises(DTypeError, match=rf"^{op}: expected a floating-point dtype.*got "
                                         r"(int64|int32|bool)"):
        call()


@pytest.mark.parametrize("name,fill", [
    ("normal_", lambda t: init.normal_(t, 0.0, 10.0)),
    ("uniform_", lambda t: init.uniform_(t, 0.0, 10.0)),
    ("xavier_normal_", init.xavier_normal_),
    ("xavier_uniform_", init.xavier_uniform_),
    ("kaiming_normal_", init.kaiming_normal_),
    ("kaiming_uniform_", init.kaiming_uniform_),
    ("lecun_normal_", init.lecun_normal_),
    ("trunc_normal_", init.trunc_normal_),
    ("orthogonal_", init.orthogonal_),
    ("sparse_", lambda t: init.sparse_(t, 0.5)),
])
def test_random_inits_refuse_integer_tensors(name, fill):
    t = ng.full((3, 4), 7, dtype=ng.int64)
    with pytest.raises(DTypeError, match=rf"^{name}: expected a floating-point tensor.*int64"):
        fill(t)
    assert (t.numpy() == 7).all()


def test_deterministic_inits_still_take_integer_tensors():
    np.testing.assert_array_equal(init.eye_(ng.zeros(2, 2, dtype=ng.int64)).numpy(), np.eye(2))
    assert (init.constant_(ng.zeros(2, dtype=ng.int64), 3).numpy() == 3).all()


# --- 4. nn.init argument checks shared with Tensor.uniform_/normal_ ---------------------------
def test_init_uniform_and_normal_check_their_arguments():
    t = ng.zeros(3)
    with pytest.raises(ValueError, match=r"^uniform_: from 5.0 must not exceed to 1.0"):
        init.uniform_(t, 5.0, 1.0)
    with pytest.raises(ValueError, match=r"^normal_: std must be non-negative, got -1.0"):
        init.normal_(t, 0.0, -1.0)
    assert (t.numpy() == 0).all()
    with pytest.raises(ValueError, match=r"^uniform_: from 5.0 must not exceed to 1.0"):
        t.uniform_(5.0, 1.0)
    with pytest.raises(ValueError, match=r"^normal_: std must be non-negative"):
        t.normal_(0.0, -1.0)
    assert (init.normal_(ng.ones(3), 2.0, 0.0).numpy() == 2.0).all()  # std 0 is allowed
    assert (init.uniform_(ng.ones(3), 2.0, 2.0).numpy() == 2.0).all()


# --- 5. zero-element tensors ----------------------------------------------------------------
@pytest.mark.parametrize("fn", [init.kaiming_uniform_, init.kaiming_normal_])
@pytest.mark.parametrize("shape", [(4, 0), (0, 4), (0, 0), (4, 3, 0), (0,)])
def test_kaiming_on_zero_elements_warns_and_is_a_no_op(fn, shape):
    t = ng.empty(*shape)
    with pytest.warns(UserWarning, match="Initializing zero-element tensors is a no-op"):
        assert fn(t) is t
    with pytest.warns(UserWarning, match="zero-element"):
        assert fn(t, mode="fan_out") is t
    with pytest.raises(ValueError, match="mode must be 'fan_in' or 'fan_out'"):
        fn(t, mode="fan_x")


@pytest.mark.parametrize("fn", [init.xavier_uniform_, init.xavier_normal_, init.lecun_normal_])
@pytest.mark.parametrize("shape", [(4, 0), (0, 4), (0, 0)])
def test_fan_inits_on_zero_elements_are_no_ops(fn, shape):
    t = ng.empty(*shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fn(t) is t


# --- 6. seeding -------------------------------------------------------------------------------
def test_manual_seed_takes_numpy_and_negative_ints_and_returns_the_generator():
    g = ng.manual_seed(np.int64(5))
    assert g is ng.default_generator("cpu") and g.initial_seed() == 5
    a = ng.randn(4).numpy()
    ng.manual_seed(5)
    np.testing.assert_array_equal(ng.randn(4).numpy(), a)
    assert ng.manual_seed(-1).initial_seed() == 2 ** 64 - 1  # PyTorch: mod 2**64
    a = ng.rand(3).numpy()
    ng.manual_seed(2 ** 64 - 1)
    np.testing.assert_array_equal(ng.rand(3).numpy(), a)
    assert ng.manual_seed(-2 ** 63).initial_seed() == 2 ** 63
    for bad in (2 ** 64, -2 ** 63 - 1):
        with pytest.raises(ValueError, match=r"manual_seed: seed must be in \[-2\*\*63, 2\*\*64\)"):
            ng.manual_seed(bad)
    with pytest.raises(TypeError, match="manual_seed: seed must be an integer, got float"):
        ng.manual_seed(1.5)
    ng.manual_seed(0)


def test_generator_manual_seed_and_seed():
    g = ng.Generator()
    assert g.manual_seed(np.int32(7)) is g and g.initial_seed() == 7
    assert g.manual_seed(-2).initial_seed() == 2 ** 64 - 2
    s = g.seed()
    assert isinstance(s, int) and 0 <= s < 2 ** 63 and g.initial_seed() == s
    a = g.normal((3,))
    np.testing.assert_array_equal(ng.Generator(seed=s).normal((3,)), a)
    fresh = ng.Generator()  # unseeded: its drawn seed repeats its stream
    assert isinstance(fresh.initial_seed(), int)
    b = fresh.random((3,))
    np.testing.assert_array_equal(ng.Generator(seed=fresh.initial_seed()).random((3,)), b)


# --- 7. calculate_gain ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["conv1d", "conv2d", "conv3d", "conv_transpose1d",
                                  "conv_transpose2d", "conv_transpose3d"])
def test_calculate_gain_of_every_conv_is_one(name):
    assert init.calculate_gain(name) == 1.0


def test_calculate_gain_checks_the_slope_and_the_name():
    for bad in (True, "x", [0.1]):
        with pytest.raises(ValueError, match="calculate_gain: leaky_relu's negative slope must "
                                             "be a number"):
            init.calculate_gain("leaky_relu", bad)
    assert init.calculate_gain("leaky_relu", 0) == pytest.approx(math.sqrt(2))
    assert init.calculate_gain("leaky_relu", np.float32(0.2)) == pytest.approx(
        math.sqrt(2 / 1.04))
    for bad in ("x", None):
        with pytest.raises(ValueError, match="calculate_gain: unknown nonlinearity"):
            init.calculate_gain(bad)


# --- 8. PyTorch's private fan helpers ---------------------------------------------------------
def test_private_fan_helpers():
    assert init._calculate_fan_in_and_fan_out(ng.empty(4, 3, 2)) == (6, 8)
    assert init._calculate_fan_in_and_fan_out(ng.empty(4, 0)) == (0, 4)
    assert init._calculate_correct_fan(ng.empty(4, 3), "fan_in") == 3
    assert init._calculate_correct_fan(ng.empty(4, 3), "FAN_OUT") == 4
    with pytest.raises(ValueError, match="at least 2 dims"):
        init._calculate_fan_in_and_fan_out(ng.empty(4))
    with pytest.raises(ValueError, match="mode must be 'fan_in' or 'fan_out', got 'fan_x'"):
        init._calculate_correct_fan(ng.empty(4, 3), "fan_x")


# --- 9. randperm's dtype / requires_grad / n, and size= for rand and randn --------------------
def test_randperm_dtype_requires_grad_and_n():
    g = ng.Generator(seed=0)
    p = ng.randperm(5, generator=g, dtype=ng.int32)
    assert p.dtype == ng.int32 and sorted(p.tolist()) == list(range(5))
    f = ng.randperm(5, dtype=ng.float32, requires_grad=True)
    assert f.dtype == ng.float32 and f.requires_grad and sorted(f.tolist()) == list(range(5))
    assert ng.randperm(2049, dtype=ng.float16).numpy().max() == 2048
    with pytest.raises(ValueError, match="randperm: n=2050 is too large for dtype float16"):
        ng.randperm(2050, dtype=ng.float16)
    with pytest.raises(ValueError, match="too large for dtype int8"):
        ng.randperm(129, dtype=np.int8)
    with pytest.raises(DTypeError, match="randperm: only floating dtypes can require grad, got "
                                         "int64"):
        ng.randperm(4, requires_grad=True)
    with pytest.raises(DTypeError, match="randperm: expected an integer or floating dtype"):
        ng.randperm(2, dtype=ng.bool_)
    with pytest.raises(ValueError, match="randperm: n must be non-negative, got -1"):
        ng.randperm(-1)
    with pytest.raises(TypeError, match="randperm: n must be an int, got float"):
        ng.randperm(2.0)
    e = ng.randperm(np.int64(0))
    assert e.shape == (0,) and e.dtype == ng.int64


def test_rand_and_randn_take_size_keyword():
    assert ng.rand(size=(2, 3)).shape == (2, 3)
    assert ng.randn(size=[4]).shape == (4,)
    assert ng.randn(size=()).shape == ()
    ng.manual_seed(3)
    a = ng.randn(size=(2, 2)).numpy()
    ng.manual_seed(3)
    np.testing.assert_array_equal(ng.randn(2, 2).numpy(), a)
    with pytest.raises(TypeError, match="rand: got the shape both positionally"):
        ng.rand(2, size=(2, 3))


# --- 10. fork_rng -----------------------------------------------------------------------------
def test_fork_rng_restores_the_cpu_generator():
    ng.manual_seed(11)
    after = ng.rand(3).numpy()
    ng.manual_seed(11)
    with ng.random.fork_rng():
        ng.rand(5)
        ng.manual_seed(99)
        ng.randn(2)
    assert ng.initial_seed() == 11
    np.testing.assert_array_equal(ng.rand(3).numpy(), after)
    ng.manual_seed(11)
    with pytest.raises(RuntimeError, match="inside"), ng.random.fork_rng(devices=[]):
        ng.rand(4)
        raise RuntimeError("inside")
    np.testing.assert_array_equal(ng.rand(3).numpy(), after)
    ng.manual_seed(11)
    with ng.random.fork_rng(enabled=False):
        ng.rand(4)
    assert not np.array_equal(ng.rand(3).numpy(), after)
    with pytest.raises(NotImplementedError, match=r"fork_rng: only the CPU generator.*\[0\]"):
        with ng.random.fork_rng(devices=[0]):
            pass


# --- 11. PackedSequence casts, and float lengths ----------------------------------------------
def test_packed_sequence_casts_and_moves():
    ps = nn.utils.rnn.pack_sequence([ng.ones(3, 2), ng.ones(2, 2)])
    for name, dt in [("half", ng.float16), ("float", ng.float32), ("double", ng.float64),
                     ("long", ng.int64), ("int", ng.int32), ("short", np.int16),
                     ("char", np.int8), ("byte", np.uint8)]:
        out = getattr(ps, name)()
        assert isinstance(out, nn.utils.rnn.PackedSequence) and out.data.dtype == dt
        assert out.batch_sizes.tolist() == ps.batch_sizes.tolist()
    assert ps.cpu() is ps and ps.to("cpu") is ps and ps.float() is ps
    assert ps.is_pinned() is False and ps.pin_memory().data is ps.data


def test_pack_padded_sequence_takes_whole_float_lengths():
    x = ng.arange(6, dtype=ng.float32).reshape(3, 2, 1)
    want = nn.utils.rnn.pack_padded_sequence(x, [3, 2])
    for lengths in ([3.0, 2.0], ng.tensor([3.0, 2.0]), np.array([3.0, 2.0])):
        got = nn.utils.rnn.pack_padded_sequence(x, lengths)
        assert got.batch_sizes.tolist() == [2, 2, 1]
        np.testing.assert_array_equal(got.data.numpy(), want.data.numpy())
    with pytest.raises(ValueError, match=r"pack_padded_sequence: lengths must be whole numbers, "
                                         r"got \[2.5, 2.0\]"):
        nn.utils.rnn.pack_padded_sequence(x, [2.5, 2.0])


# --- 12. bernoulli in the graph; nn.utils import paths ----------------------------------------
def test_bernoulli_keeps_requires_grad_with_zero_gradient():
    p = ng.tensor([0.5, 0.2], requires_grad=True)
    b = ng.bernoulli(p)
    assert b.requires_grad
    b.sum().backward()
    np.testing.assert_array_equal(p.grad.numpy(), [0.0, 0.0])
    with ng.no_grad():
        assert not ng.bernoulli(p).requires_grad
    assert not ng.bernoulli(ng.tensor([0.5])).requires_grad


def test_nn_utils_submodule_import_paths():
    from nodegrad.nn.utils.clip_grad import clip_grad_norm_, clip_grad_value_, get_total_norm
    from nodegrad.nn.utils.convert_parameters import parameters_to_vector, vector_to_parameters

    assert clip_grad_norm_ is nn.utils.clip_grad_norm_ and clip_grad_value_ is (
        nn.utils.clip_grad_value_) and get_total_norm is nn.utils.get_total_norm
    assert nn.utils.convert_parameters.parameters_to_vector is parameters_to_vector
    assert vector_to_parameters is nn.utils.vector_to_parameters
    assert nn.utils.clip_grad.clip_grads_with_norm_ is nn.utils.clip_grads_with_norm_


def test_get_total_norm_promotes_mixed_float_dtypes():
    """It raised a DTypeError; PyTorch promotes the per-tensor norms."""
    import torch

    for a, b in ((ng.float32, ng.float64), (ng.float16, ng.float32)):
        ta, tb = (getattr(torch, str(d)) for d in (a, b))
        got = nn.utils.get_total_norm([ng.ones(2, dtype=a), ng.ones(3, dtype=b)])
        want = torch.nn.utils.get_total_norm([torch.ones(2, dtype=ta), torch.ones(3, dtype=tb)])
        assert got.item() == want.item() and str(got.dtype) == str(want.dtype)[6:]
