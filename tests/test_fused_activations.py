"""silu, mish and glu as fused primitives: values and gradients against PyTorch in float32 and
float64 on random and special inputs, double backward, forward-mode, vmap, jit's fused kernels
against eager, and ONNX both ways through onnxruntime.

The defect they fix: as compositions (x · sigmoid(x), x · tanh(softplus(x)), a · sigmoid(b))
the backward formed g · x (or g · a) before the slope scaled it, which overflows at the float
extremes for a cotangent above 1 and ends as inf · 0 = NaN where PyTorch's fused rule stays
finite.
"""

import math
import warnings

import numpy as np
import pytest

import nodegrad as ng
import nodegrad.nn.functional as F
from nodegrad import nn

torch = pytest.importorskip("torch")
TF = torch.nn.functional

DTYPES = [np.float32, np.float64]
NAMES = ["silu", "mish"]


def _tol(dt):
    return dict(rtol=2e-5, atol=1e-6) if dt == np.float32 else dict(rtol=1e-12, atol=1e-14)


def _wide(dt, n=400, seed=0):
    """Random values over many magnitudes, both signs, and the ranges where e^±x overflows."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * np.exp(rng.uniform(-8, 5, n))
    x[:20] = rng.uniform(-120, 120, 20)
    return x.astype(dt)


def _ours_and_torch(name, x, cot):
    t = ng.tensor(x, requires_grad=True)
    y = getattr(F, name)(t)
    y.backward(ng.tensor(cot))
    tt = torch.tensor(x, requires_grad=True)
    yt = getattr(TF, name)(tt)
    yt.backward(torch.tensor(cot))
    return y, t.grad, yt.detach().numpy(), tt.grad.numpy()


@pytest.mark.parametrize("dt", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", NAMES)
def test_values_and_gradients_match_pytorch(name, dt):
    x = _wide(dt)
    cot = np.random.default_rng(1).uniform(-3, 3, x.size).astype(dt)
    with np.errstate(all="ignore"):
        y, g, yt, gt = _ours_and_torch(name, x, cot)
    assert y.dtype == dt and g.dtype == dt
    np.testing.assert_allclose(y.numpy(), yt, **_tol(dt))
    np.testing.assert_allclose(g.numpy(), gt, **_tol(dt))


@pytest.mark.parametrize("dt", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", NAMES)
def test_finite_gradient_at_the_float_extremes_with_a_large_cotangent(name, dt):
    """The composite's NaN: g · x overflowed at ±max for |g| > 1."""
    big = np.finfo(dt).max
    x = np.array([big, -big, big / 2, -big / 3], dt)
    cot = np.array([4.0, 4.0, -7.0, 1e3], dt)
    with np.errstate(all="ignore"):
        y, g, yt, gt = _ours_and_torch(name, x, cot)
    assert np.isfinite(g.numpy()).all()
    np.testing.assert_array_equal(g.numpy(), gt)
    np.testing.assert_array_equal(y.numpy(), yt)


@pytest.mark.parametrize("dt", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", NAMES)
def test_special_values(name, dt):
    """NaN stays NaN (value and gradient); ±0, subnormals and ±max as PyTorch; ±inf give the
    limits (PyTorch: NaN at -inf, and a NaN slope at both)."""
    fi = np.finfo(dt)
    sub = fi.smallest_subnormal
    x = np.array([math.nan, 0.0, -0.0, sub, -sub, fi.tiny, fi.max, -fi.max, -math.inf,
                  math.inf], dt)
    with np.errstate(all="ignore"):
        y, g, yt, gt = _ours_and_torch(name, x, np.full(x.size, 1.5, dt))
    y, g = y.numpy(), g.numpy()
    assert np.isnan(y[0]) and np.isnan(g[0])
    np.testing.assert_allclose(y[1:8], yt[1:8], **_tol(dt))
    np.testing.assert_allclose(g[1:8], gt[1:8], **_tol(dt))
    np.testing.assert_array_equal(np.signbit(y[1:3]), [False, True])
    np.testing.assert_array_equal(y[8:], [-0.0, math.inf])
    np.testing.assert_array_equal(g[8:], [0.0, 1.5])


@pytest.mark.parametrize("dt", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_glu_matches_pytorch_with_extreme_halves(dim, dt):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((4, 6, 8)) * 3).astype(dt)
    big = np.finfo(dt).max
    x[0, 0, 0] = big  # in the first half along every dim: a = max, finite gradients
    x[0, 0, 1] = -big
    cot_shape = list(x.shape)
    cot_shape[dim] //= 2
    cot = rng.uniform(-3, 3, cot_shape).astype(dt)
    with np.errstate(all="ignore"):
        t = ng.tensor(x, requires_grad=True)
        y = F.glu(t, dim)
        y.backward(ng.tensor(cot))
        tt = torch.tensor(x, requires_grad=True)
        yt = TF.glu(tt, dim)
        yt.backward(torch.tensor(cot))
    assert y.dtype == dt and t.grad.dtype == dt
    assert np.isfinite(t.grad.numpy()).all()
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), **_tol(dt))
    np.testing.assert_allclose(t.grad.numpy(), tt.grad.numpy(), **_tol(dt))


def test_one_primitive_each_and_bad_input():
    x = ng.tensor(np.linspace(-2, 2, 8), requires_grad=True)
    assert F.silu(x).node.prim.name == "silu"
    assert F.mish(x).node.prim.name == "mish"
    assert F.glu(x).node.prim.name == "glu"
    assert nn.SiLU()(x).node.prim.name == "silu" and nn.Mish()(x).node.prim.name == "mish"
    assert nn.GLU()(x).node.prim.name == "glu"
    with pytest.raises(ng.ShapeError, match="glu"):
        F.glu(ng.tensor(np.ones((2, 3))), 1)
    with pytest.raises(ng.ShapeError, match="glu"):
        F.glu(ng.tensor(np.ones((2, 4))), 2)
    # integers as float32, as sigmoid takes them
    assert F.silu(ng.tensor(np.arange(3))).dtype == np.float32


@pytest.mark.parametrize("dt", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", NAMES + ["glu"])
def test_double_backward_matches_pytorch(name, dt):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((3, 8)) * 3).astype(dt)
    x[0, :4] = [30.0, -30.0, 12.0, -12.0]  # (PyTorch's mish double backward is NaN at 1e4)
    c = rng.standard_normal((3, 4 if name == "glu" else 8)).astype(dt)
    d = rng.standard_normal((3, 8)).astype(dt)

    def inner(t):
        return (getattr(F, name)(t) * ng.tensor(c)).sum()

    hv = ng.grad(lambda t: (ng.grad(inner)(t) * ng.tensor(d)).sum())(ng.tensor(x))
    tt = torch.tensor(x, requires_grad=True)
    (gt,) = torch.autograd.grad((getattr(TF, name)(tt) * torch.tensor(c)).sum(), tt,
                                create_graph=True)
    (ht,) = torch.autograd.grad((gt * torch.tensor(d)).sum(), tt)
    assert hv.dtype == dt
    np.testing.assert_allclose(hv.numpy(), ht.numpy(), rtol=1e-4 if dt == np.float32 else 1e-10,
                               atol=1e-5 if dt == np.float32 else 1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_second_derivative_is_finite_at_the_extremes(name):
    x = np.array([np.finfo(np.float64).max, -np.finfo(np.float64).max, math.inf, -math.inf])

    def slope(t):
        return ng.grad(lambda u: getattr(F, name)(u).sum())(t).sum()

    with np.errstate(all="ignore"):
        h = ng.grad(slope)(ng.tensor(x)).numpy()
    np.testing.assert_array_equal(h, np.zeros(4))


@pytest.mark.parametrize("name", NAMES + ["glu"])
def test_gradcheck_second_order(name):
    x = np.random.default_rng(4).standard_normal((2, 6)) * 2
    assert ng.gradcheck(lambda t: getattr(F, name)(t), x, order=2)


@pytest.mark.parametrize("name", NAMES + ["glu"])
def test_jvp_matches_pytorch(name):
    rng = np.random.default_rng(5)
    x, v = rng.standard_normal((3, 6)) * 2, rng.standard_normal((3, 6))
    out, tan = ng.jvp(lambda t: getattr(F, name)(t), (ng.tensor(x),), (ng.tensor(v),))
    ot, tt = torch.func.jvp(lambda t: getattr(TF, name)(t), (torch.tensor(x),),
                            (torch.tensor(v),))
    np.testing.assert_allclose(out.numpy(), ot.numpy(), rtol=1e-12)
    np.testing.assert_allclose(tan.numpy(), tt.numpy(), rtol=1e-10, atol=1e-12)


def test_vmap_and_per_example_gradients():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 4, 6)).astype(np.float32)
    xt = ng.tensor(x)
    for f in (F.silu, F.mish, lambda t: F.glu(t, 0), lambda t: F.glu(t, -1)):
        want = np.stack([f(ng.tensor(row)).numpy() for row in x])
        np.testing.assert_allclose(ng.vmap(f)(xt).numpy(), want, rtol=1e-6)
        np.testing.assert_allclose(ng.vmap(f, in_axes=1, out_axes=1)(
            ng.tensor(np.ascontiguousarray(x.transpose(1, 0, 2)))).numpy(),
            want.transpose(1, 0, 2), rtol=1e-6)

        def loss(t, f=f):
            return (f(t) ** 2).sum()

        per = ng.vmap(ng.grad(loss))(xt).numpy()
        loop = np.stack([ng.grad(loss)(ng.tensor(row)).numpy() for row in x])
        np.testing.assert_allclose(per, loop, rtol=1e-5, atol=1e-7)


# --- jit: the fused kernels compute what eager computes ----------------------------------------
def _kernel_members(jf):
    return {m.name for i in jf.program.instrs if i.kind == "fused" for m in i.group.members}


@pytest.mark.parametrize("dt", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", NAMES)
def test_jit_fused_equals_eager(name, dt):
    pytest.importorskip("numba")
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((8, 16)) * 4).astype(dt)
    fi = np.finfo(dt)
    x.flat[:9] = [math.nan, math.inf, -math.inf, 0.0, -0.0, fi.max, -fi.max, -100.0, 100.0]
    c = ng.tensor(rng.standard_normal((8, 16)).astype(dt))
    f = getattr(F, name)

    def step(t):  # a chain: the activation between two elementwise ops, forward and backward
        y = f(t * 1.5) * 2.0
        return y, ng.grad(lambda u: (f(u * 1.5) * c).sum())(t)

    with np.errstate(all="ignore"):
        want = step(ng.tensor(x))
        jf = ng.jit(step, fuse=True)
        for _ in range(3):  # trace, then replays
            got = jf(ng.tensor(x))
    assert {name, f"{name}_grad"} <= _kernel_members(jf)
    rtol = 1e-6 if dt == np.float32 else 1e-14  # the C library's exp against NumPy's
    for a, b in zip(got, want):
        assert a.dtype == dt
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=rtol, atol=0, equal_nan=True)
        np.testing.assert_array_equal(np.isnan(a.numpy()), np.isnan(b.numpy()))


def test_jit_unfused_replay_equals_eager_bit_for_bit():
    x = _wide(np.float32, 64)

    def step(t):
        def loss(u):
            return F.silu(u).sum() + F.mish(u).sum() + F.glu(u.reshape(8, 8)).sum()

        return ng.grad(loss)(t)

    with np.errstate(all="ignore"):
        want = step(ng.tensor(x)).numpy()
        jf = ng.jit(step, fuse=False)
        for _ in range(3):
            np.testing.assert_array_equal(jf(ng.tensor(x)).numpy(), want)


# --- ONNX ------------------------------------------------------------------------------------
class _Acts(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 8)
        self.silu, self.mish, self.glu = nn.SiLU(), nn.Mish(), nn.GLU()

    def forward(self, x):
        h = self.lin(x)
        return self.glu(self.mish(self.silu(h)) * 3.0)


@pytest.mark.parametrize("opset", [17, 18])
def test_onnx_round_trip_through_onnxruntime(opset):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from nodegrad.onnx import export, load

    ng.manual_seed(0)
    model = _Acts()
    x = ng.tensor(np.random.default_rng(8).standard_normal((5, 6)).astype(np.float32) * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = export(model, x, opset=opset)
    ops = {n.op_type for n in proto.graph.node}
    assert ("Mish" in ops) == (opset >= 18)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    back = load(proto.SerializeToString())
    np.testing.assert_array_equal(back(x).numpy(), want)  # the same operations: exact


@pytest.mark.parametrize("dt", DTYPES, ids=lambda d: d.__name__)
def test_hardswish_is_one_primitive_matching_pytorch(dt):
    x = np.concatenate([_wide(dt, 200), np.array([3.0, -3.0, 2.9, -2.9, 0.0], dt)])
    cot = np.random.default_rng(9).uniform(-3, 3, x.size).astype(dt)
    t = ng.tensor(x, requires_grad=True)
    y = F.hardswish(t)
    assert y.node.prim.name == "hardswish"
    y.backward(ng.tensor(cot))
    tt = torch.tensor(x, requires_grad=True)
    TF.hardswish(tt).backward(torch.tensor(cot))
    np.testing.assert_allclose(y.numpy(), TF.hardswish(torch.tensor(x)).numpy(), **_tol(dt))
    np.testing.assert_allclose(t.grad.numpy(), tt.grad.numpy(), **_tol(dt))
    big = np.finfo(dt).max
    with np.errstate(all="ignore"):
        t = ng.tensor(np.array([big, -big, math.inf, -math.inf, math.nan], dt),
                      requires_grad=True)
        y = F.hardswish(t)
        y.backward(ng.tensor(np.full(5, 4.0, dt)))
    np.testing.assert_array_equal(y.numpy(), [big, 0.0, math.inf, 0.0, math.nan])
    np.testing.assert_array_equal(t.grad.numpy(), [4.0, 0.0, 4.0, 0.0, math.nan])


def test_hardswish_jit_and_onnx():
    pytest.importorskip("numba")
    x = np.concatenate([_wide(np.float64, 60), [3.0, -3.0, math.nan, math.inf, -math.inf]])

    def step(t):
        return F.hardswish(t * 1.5) * 2.0

    with np.errstate(all="ignore"):
        want = step(ng.tensor(x)).numpy()
        jf = ng.jit(step, fuse=True)
        for _ in range(3):
            got = jf(ng.tensor(x)).numpy()
    assert "hardswish" in _kernel_members(jf)
    np.testing.assert_array_equal(got, want)  # no transcendental: the same bits

    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from nodegrad.onnx import export, load

    class M(nn.Module):
        def forward(self, t):
            return F.hardswish(t * 2.0)

    for dt in DTYPES:
        xt = ng.tensor(np.random.default_rng(10).standard_normal((4, 5)).astype(dt) * 3)
        proto = export(M(), xt)
        assert ("HardSwish" in {n.op_type for n in proto.graph.node}) == (dt == np.float32)
        sess = ort.InferenceSession(proto.SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        (o,) = sess.run(None, {sess.get_inputs()[0].name: xt.numpy()})
        np.testing.assert_allclose(o, M()(xt).numpy(), **_tol(dt))
        np.testing.assert_array_equal(load(proto.SerializeToString())(xt).numpy(),
                                      M()(xt).numpy())
