"""Forward-mode AD (nodegrad.autograd.forward_ad) against torch.autograd.forward_ad, and
autograd.Function's jvp under forward_ad and nodegrad.func.jvp."""

import numpy as np
import pytest

import nodegrad as ng
import nodegrad.autograd.forward_ad as fwAD

torch = pytest.importorskip("torch")
tfwAD = torch.autograd.forward_ad

RNG = np.random.default_rng(0)


def _pair(*shape):
    a = RNG.standard_normal(shape)
    return ng.tensor(a), torch.tensor(a)


OPS = {
    "sin_mul": lambda x, y: x.sin() * y,
    "exp_sum": lambda x, y: (x.exp() + y).sum(),
    "div_tanh": lambda x, y: (x / (y * y + 1.0)).tanh(),
    "matmul": lambda x, y: x @ y.T,
    "softmax": lambda x, y: (x * y).softmax(-1),
    "view_slice": lambda x, y: x.reshape(-1)[2:7] * y.reshape(-1)[:5],
    "transpose": lambda x, y: (x.T * 2).sigmoid() + y.T,
    "max_pow": lambda x, y: (x ** 2 + y).max(-1).values,
    "where_abs": lambda x, y: (x.abs() * y).clamp(-0.5, 0.5) + x.mean(0),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_ops_match_torch(name):
    f = OPS[name]
    x, tx = _pair(3, 4)
    y, ty = _pair(3, 4)
    u, tu = _pair(3, 4)
    v, tv = _pair(3, 4)
    with fwAD.dual_level():
        out = f(fwAD.make_dual(x, u), fwAD.make_dual(y, v))
        p, t = fwAD.unpack_dual(out)
    with tfwAD.dual_level():
        tout = f(tfwAD.make_dual(tx, tu), tfwAD.make_dual(ty, tv))
        tp, tt = tfwAD.unpack_dual(tout)
    np.testing.assert_allclose(p.numpy(), tp.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(t.numpy(), tt.numpy(), rtol=1e-12, atol=1e-12)


def test_mlp_matches_torch():
    w1, tw1 = _pair(5, 8)
    w2, tw2 = _pair(8, 3)
    x, tx = _pair(4, 5)
    u1, tu1 = _pair(5, 8)
    u2, tu2 = _pair(8, 3)

    def mlp(mod, w1, w2, x):
        return mod.tanh(x @ w1) @ w2

    with fwAD.dual_level():
        out = mlp(ng, fwAD.make_dual(w1, u1), fwAD.make_dual(w2, u2), x)
        t = fwAD.unpack_dual(out).tangent
    with tfwAD.dual_level():
        tout = mlp(torch, tfwAD.make_dual(tw1, tu1), tfwAD.make_dual(tw2, tu2), tx)
        tt = tfwAD.unpack_dual(tout).tangent
    np.testing.assert_allclose(t.numpy(), tt.numpy(), rtol=1e-12, atol=1e-12)
    # the same tangent as nodegrad.func.jvp gives
    _, jt = ng.func.jvp(lambda a, b: mlp(ng, a, b, x), (w1, w2), (u1, u2))
    np.testing.assert_allclose(t.numpy(), jt.numpy(), rtol=1e-12, atol=1e-12)


def test_unpack_outside_and_of_plain_tensors():
    x, _ = _pair(3)
    p, t = fwAD.unpack_dual(x)
    assert p is x and t is None
    with fwAD.dual_level() as lv:
        assert lv == 0
        assert fwAD.unpack_dual(x).tangent is None
        d = fwAD.make_dual(x, ng.ones_like(x))
        assert isinstance(fwAD.unpack_dual(d), fwAD.UnpackedDualTensor)
        y = d * 2
    assert fwAD.unpack_dual(y).tangent is None  # the level is gone


def test_unpack_memoises_and_primal_has_no_tangent():
    x, _ = _pair(4)
    with fwAD.dual_level():
        d = fwAD.make_dual(x, ng.ones_like(x))
        y = d.exp()
        t1 = fwAD.unpack_dual(y).tangent
        t2 = fwAD.unpack_dual(y).tangent
        assert t1 is t2
        p = fwAD.unpack_dual(y).primal
        assert fwAD.unpack_dual(p * 3).tangent is None
        z = y * y  # a later op reuses y's tangent
        np.testing.assert_allclose(fwAD.unpack_dual(z).tangent.numpy(),
                                   2 * np.exp(2 * x.numpy()), rtol=1e-12)


def test_backward_through_primal():
    xa = RNG.standard_normal(3)
    x = ng.tensor(xa, requires_grad=True)
    w = ng.tensor(RNG.standard_normal(3), requires_grad=True)
    tx = torch.tensor(xa, requires_grad=True)
    tw = torch.tensor(w.numpy(), requires_grad=True)
    with fwAD.dual_level():
        y = (fwAD.make_dual(x, ng.ones_like(x)).sin() * w).sum()
        p, t = fwAD.unpack_dual(y)
        p.backward()
    with tfwAD.dual_level():
        ty = (tfwAD.make_dual(tx, torch.ones_like(tx)).sin() * tw).sum()
        tp, tt = tfwAD.unpack_dual(ty)
        tp.backward()
    np.testing.assert_allclose(t.numpy(), tt.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-12)


def test_reverse_over_forward():
    xa = RNG.standard_normal(3)
    x = ng.tensor(xa, requires_grad=True)
    tx = torch.tensor(xa, requires_grad=True)
    with fwAD.dual_level():
        t = fwAD.unpack_dual(fwAD.make_dual(x, ng.ones_like(x)).sin() ** 2).tangent
        t.sum().backward()
    with tfwAD.dual_level():
        tt = tfwAD.unpack_dual(tfwAD.make_dual(tx, torch.ones_like(tx)).sin() ** 2).tangent
        tt.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-12)


def test_forward_over_reverse_hvp():
    x, tx = _pair(4)
    v, tv = _pair(4)
    with fwAD.dual_level():
        d = fwAD.make_dual(x, v)
        (g,) = ng.autograd.grad((d.sin() * d).sum(), d, create_graph=True)
        hv = fwAD.unpack_dual(g).tangent
    _, ref = ng.func.hvp(lambda a: (a.sin() * a).sum(), (x,), (v,))
    np.testing.assert_allclose(hv.numpy(), ref.numpy(), rtol=1e-12)


def test_tangent_of_tangent_under_jvp():
    x, _ = _pair(3)

    def first(a):  # the forward derivative of sin along ones, by forward_ad
        with fwAD.dual_level():
            return fwAD.unpack_dual(fwAD.make_dual(a, ng.ones_like(a)).sin()).tangent

    _, t2 = ng.func.jvp(first, (x,), (ng.ones_like(x),))
    np.testing.assert_allclose(t2.numpy(), -np.sin(x.numpy()), rtol=1e-12)


def test_inplace_and_views():
    xa = RNG.standard_normal((2, 3))
    x, tx = ng.tensor(xa), torch.tensor(xa)
    u, tu = _pair(2, 3)
    y, ty = _pair(3)
    with fwAD.dual_level():
        d = fwAD.make_dual(x, u)
        d.mul_(3.0)
        row = d[1]
        row.add_(y.exp())
        e = ng.zeros(3, dtype=ng.float64)
        e.add_(d[0] * d[1])  # a plain tensor takes a tangent in place
        res = [fwAD.unpack_dual(a).tangent.numpy() for a in (d, row, e)]
    with tfwAD.dual_level():
        td = tfwAD.make_dual(tx.clone(), tu)
        td.mul_(3.0)
        trow = td[1]
        trow.add_(ty.exp())
        te = torch.zeros(3, dtype=torch.float64)
        te.add_(td[0] * td[1])
        ref = [tfwAD.unpack_dual(a).tangent.numpy() for a in (td, trow, te)]
    for a, b in zip(res, ref):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_no_grad_inside_level_carries_no_tangent():
    # tangents are pushed through the recorded graph, and no_grad records nothing: a result
    # computed under no_grad has no tangent (PyTorch's forward AD runs under no_grad too)
    x, tx = _pair(3)
    with fwAD.dual_level():
        d = fwAD.make_dual(x, ng.ones_like(x))
        with ng.no_grad():
            assert fwAD.unpack_dual(d.sin()).tangent is None
        np.testing.assert_allclose(fwAD.unpack_dual(d.sin()).tangent.numpy(),
                                   np.cos(x.numpy()), rtol=1e-12)


class Cube(ng.autograd.Function):
    @staticmethod
    def forward(ctx, x, k):
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)
        ctx.k = k
        return x ** 3 * k

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * ctx.k * x ** 2 * g, None

    @staticmethod
    def jvp(ctx, t, tk):
        assert tk is None
        (x,) = ctx.saved_tensors
        return 3 * ctx.k * x ** 2 * t


class TwoOut(ng.autograd.Function):
    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_forward(x, y)
        idx = ng.tensor(np.arange(3))
        ctx.mark_non_differentiable(idx)
        return x * y, x.exp(), idx

    @staticmethod
    def backward(ctx, g1, g2, g3):
        raise AssertionError("not reached")

    @staticmethod
    def jvp(ctx, tx, ty):
        x, y = ctx.saved_tensors
        return tx * y + ty * x, tx * x.exp(), None


def test_function_jvp_under_forward_ad_and_func_jvp():
    x, tx = _pair(3)
    u, _ = _pair(3)
    with fwAD.dual_level():
        t = fwAD.unpack_dual(Cube.apply(fwAD.make_dual(x, u), 2.0)).tangent
    want = 6 * x.numpy() ** 2 * u.numpy()
    np.testing.assert_allclose(t.numpy(), want, rtol=1e-12)
    _, t2 = ng.func.jvp(lambda a: Cube.apply(a, 2.0), (x,), (u,))
    np.testing.assert_allclose(t2.numpy(), want, rtol=1e-12)
    # second order: the jvp rule's own ops are differentiated
    _, t3 = ng.func.jvp(lambda a: ng.func.jvp(lambda b: Cube.apply(b, 2.0), (a,), (u,))[1],
                        (x,), (u,))
    np.testing.assert_allclose(t3.numpy(), 12 * x.numpy() * u.numpy() ** 2, rtol=1e-12)
    # backward still uses backward
    g = ng.func.grad(lambda a: Cube.apply(a, 2.0).sum())(x)
    np.testing.assert_allclose(g.numpy(), 6 * x.numpy() ** 2, rtol=1e-12)


def test_function_several_outputs_matches_torch():
    class TTwoOut(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, y):
            ctx.save_for_forward(x, y)
            idx = torch.arange(3)
            ctx.mark_non_differentiable(idx)
            return x * y, x.exp(), idx

        @staticmethod
        def backward(ctx, g1, g2, g3):
            raise AssertionError

        @staticmethod
        def jvp(ctx, tx, ty):
            x, y = ctx.saved_tensors
            return tx * y + ty * x, tx * x.exp(), None

    x, tx = _pair(3)
    y, ty = _pair(3)
    u, tu = _pair(3)
    with fwAD.dual_level():
        a, b, idx = TwoOut.apply(fwAD.make_dual(x, u), y)
        res = [fwAD.unpack_dual(a).tangent, fwAD.unpack_dual(b).tangent]
        assert fwAD.unpack_dual(idx).tangent is None
    with tfwAD.dual_level():
        ta, tb, _ = TTwoOut.apply(tfwAD.make_dual(tx, tu), ty)
        ref = [tfwAD.unpack_dual(ta).tangent, tfwAD.unpack_dual(tb).tangent]
    for r, e in zip(res, ref):
        np.testing.assert_allclose(r.numpy(), e.numpy(), rtol=1e-12)


def test_function_without_jvp_refuses():
    class NoJvp(ng.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g * 2

    x, _ = _pair(3)
    with pytest.raises(NotImplementedError, match="needs a static jvp"):
        ng.func.jvp(NoJvp.apply, (x,), (x,))
    with fwAD.dual_level():
        y = NoJvp.apply(fwAD.make_dual(x, x))
        with pytest.raises(NotImplementedError, match="needs a static jvp"):
            fwAD.unpack_dual(y)


def test_function_jvp_bad_tangent_shape():
    class Bad(ng.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def jvp(ctx, t):
            return t[:1]

    x, _ = _pair(3)
    with pytest.raises(ng.errors.ShapeError, match="Bad.jvp"):
        ng.func.jvp(Bad.apply, (x,), (x,))


def test_errors():
    x, _ = _pair(3)
    with pytest.raises(RuntimeError, match="no dual level is active"):
        fwAD.make_dual(x, x)
    with pytest.raises(RuntimeError, match="no dual level is active"):
        fwAD.exit_dual_level()
    with fwAD.dual_level():
        with pytest.raises(RuntimeError, match="nested forward mode AD"):
            fwAD.enter_dual_level()
        with pytest.raises(ng.errors.GradError, match="make_dual: tangent shape"):
            fwAD.make_dual(x, ng.ones(4, dtype=ng.float64))
        with pytest.raises(ng.errors.GradError, match="make_dual: tangent dtype"):
            fwAD.make_dual(x, ng.ones(3, dtype=ng.float32))
        with pytest.raises(ValueError, match="primal to be floating point"):
            fwAD.make_dual(ng.tensor([1, 2, 3]), x)
        with pytest.raises(RuntimeError, match="invalid level 1"):
            fwAD.make_dual(x, x, level=1)
        with pytest.raises(RuntimeError, match="invalid level 1"):
            fwAD.unpack_dual(x, level=1)
        with pytest.raises(TypeError, match="make_dual: expected a tensor as the tangent"):
            fwAD.make_dual(x, 1.0)
    lv = fwAD.enter_dual_level()
    with pytest.raises(RuntimeError, match="not the active level"):
        fwAD.exit_dual_level(level=lv + 1)
    fwAD.exit_dual_level(level=lv)


def test_chain_timing_note():
    """A 100-op chain under forward_ad and func.jvp give the same tangent (timed in the
    benchmark note, not asserted)."""
    x, _ = _pair(64)
    u, _ = _pair(64)

    def chain(a):
        for _ in range(50):
            a = (a * 0.9).sin()
        return a

    with fwAD.dual_level():
        t = fwAD.unpack_dual(chain(fwAD.make_dual(x, u))).tangent
    _, t2 = ng.func.jvp(chain, (x,), (u,))
    np.testing.assert_allclose(t.numpy(), t2.numpy(), rtol=1e-12)


def _scale_fn(lib):
    class ScaleInPlace(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):
            x.mul_(w)
            ctx.mark_dirty(x)
            ctx.save_for_backward(x, w)
            ctx.save_for_forward(x, w)
            return x

        @staticmethod
        def backward(ctx, g):
            y, w = ctx.saved_tensors
            return g * w, g * y / w

        @staticmethod
        def jvp(ctx, tx, tw):
            y, w = ctx.saved_tensors
            tx.mul_(w).add_(tw * y / w)
            return tx

    return ScaleInPlace


@pytest.mark.parametrize("view", [False, True])
def test_mark_dirty_matches_torch(view):
    a = RNG.standard_normal((2, 3))
    wa = RNG.standard_normal(3) + 3.0
    res = []
    for lib in (ng, torch):
        x = lib.tensor(a, requires_grad=True)
        w = lib.tensor(wa, requires_grad=True)
        b = x * 1.0
        target = b[1] if view else b
        out = _scale_fn(lib).apply(target, w)
        assert out is target
        (b * b).sum().backward()
        res.append([b.detach().numpy(), x.grad.numpy(), w.grad.numpy()])
    for p, q in zip(*res):
        np.testing.assert_allclose(p, q, rtol=1e-12)


def test_mark_dirty_forward_ad_matches_torch():
    a, wa = RNG.standard_normal(3), RNG.standard_normal(3) + 3.0
    u, v = RNG.standard_normal(3), RNG.standard_normal(3)
    res = []
    for lib, fw in ((ng, fwAD), (torch, tfwAD)):
        with fw.dual_level():
            x = fw.make_dual(lib.tensor(a), lib.tensor(u)) * 1.0
            w = fw.make_dual(lib.tensor(wa), lib.tensor(v))
            out = _scale_fn(lib).apply(x, w)
            assert out is x
            res.append(fw.unpack_dual(x.exp()).tangent.numpy())
    np.testing.assert_allclose(res[0], res[1], rtol=1e-12)


def test_mark_dirty_errors():
    F = _scale_fn(ng)
    w = ng.tensor([2.0, 3.0], requires_grad=True)
    with pytest.raises(ng.errors.GradError, match="leaf tensor that requires grad"):
        F.apply(ng.tensor([1.0, 1.0], requires_grad=True), w)

    class NotReturned(ng.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            x.mul_(2.0)
            ctx.mark_dirty(x)
            return x * 1.0

        @staticmethod
        def backward(ctx, g):
            return g * 2

    with pytest.raises(ng.errors.GradError, match="marked dirty was not returned"):
        NotReturned.apply(ng.tensor([1.0, 1.0]))
    x = ng.tensor([1.0, 2.0])  # no gradient wanted: changed in place all the same
    assert F.apply(x, ng.tensor([3.0, 3.0])) is x
    np.testing.assert_allclose(x.numpy(), [3.0, 6.0])


def test_func_jvp_inside_a_level():
    x, _ = _pair(3)
    u, _ = _pair(3)
    v, _ = _pair(3)
    with fwAD.dual_level():
        d = fwAD.make_dual(x, u)
        _, jt = ng.func.jvp(ng.sin, (d,), (v,))  # cos(x) v, whose tangent along u is
        t = fwAD.unpack_dual(jt).tangent  # -sin(x) u v
    np.testing.assert_allclose(t.numpy(), -np.sin(x.numpy()) * u.numpy() * v.numpy(),
                               rtol=1e-12)


def test_saved_tensors_hooks_inside_a_level():
    graph = pytest.importorskip("nodegrad.autograd.graph")
    x, _ = _pair(3)
    with fwAD.dual_level():
        d = fwAD.make_dual(x, ng.ones_like(x))
        with graph.saved_tensors_hooks(lambda t: t.numpy().copy(), lambda a: ng.tensor(a)):
            y = (d.sin() * d).exp()
        t = fwAD.unpack_dual(y).tangent
    xa = x.numpy()
    want = np.exp(np.sin(xa) * xa) * (np.cos(xa) * xa + np.sin(xa))
    np.testing.assert_allclose(t.numpy(), want, rtol=1e-12)


def test_dual_level_decorator_and_vmap_refusal():
    x, _ = _pair(3)

    @fwAD.dual_level()
    def tangent_of_exp(a):
        return fwAD.unpack_dual(fwAD.make_dual(a, ng.ones_like(a)).exp()).tangent

    np.testing.assert_allclose(tangent_of_exp(x).numpy(), np.exp(x.numpy()), rtol=1e-12)
    with fwAD.dual_level():
        with pytest.raises(NotImplementedError, match="make_dual: dual tensors inside vmap"):
            ng.vmap(lambda a: fwAD.make_dual(a, a))(ng.ones((2, 3), dtype=ng.float64))


def test_unpack_after_backward_freed_the_graph():
    x, _ = _pair(3)
    with fwAD.dual_level():
        y = fwAD.make_dual(x, ng.ones_like(x)).sin() * 2
        y.sum().backward()
        with pytest.raises(ng.errors.GradError, match="unpack before backward"):
            fwAD.unpack_dual(y)


def test_function_jvp_without_materialized_tangents():
    seen = []

    class Mul(ng.autograd.Function):
        @staticmethod
        def forward(ctx, a, b):
            ctx.set_materialize_grads(False)
            ctx.save_for_forward(a, b)
            return a * b

        @staticmethod
        def jvp(ctx, ta, tb):
            seen.append(tb)
            a, b = ctx.saved_tensors
            return ta * b

    x, _ = _pair(3)
    y, _ = _pair(3)
    with fwAD.dual_level():
        t = fwAD.unpack_dual(Mul.apply(fwAD.make_dual(x, ng.ones_like(x)), y)).tangent
    assert seen == [None]  # as PyTorch: no zeros made for the input without a tangent
    np.testing.assert_allclose(t.numpy(), y.numpy(), rtol=1e-12)
