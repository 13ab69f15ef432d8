"""nodegrad.lax.cond, switch and while_loop against jax.lax in float64 (values, reverse and
forward derivatives, vmap), by central finite differences, against torch.cond and
torch.while_loop; under jit the branch and the trip count are decided at every replay."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import lax
from nodegrad.errors import DTypeError, GradError, ShapeError
from nodegrad.testing import gradcheck

RNG = np.random.default_rng(0)
X = RNG.standard_normal(4)
W = RNG.standard_normal((4, 4)) * 0.5
XS = RNG.standard_normal((5, 4))
S = ng.tensor(1.3, dtype="float64")


@pytest.fixture(scope="module")
def jx():
    """jax in float64 (the setting is restored afterwards)."""
    jax = pytest.importorskip("jax")
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield jax
    jax.config.update("jax_enable_x64", before)


def _close(a, b, tol=1e-12):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def _branches(np_):
    """Two branches and a third for switch, written once for nodegrad and jax.numpy; the
    second closes over w (a captured input of its branch)."""
    def br(w):
        return [lambda x, y: (np_.sin(x) * y, (x * x).sum()),
                lambda x, y: (np_.tanh(w @ x) + y, np_.exp(x).sum() * 0.5),
                lambda x, y: (x * y * 3.0, (y * y).sum())]
    return br


def _ng_cond(x, y, w, p):
    a, b = lax.cond(p, *reversed(_branches(ng)(w)[:2]), x, y)
    return (a * a).sum() + b


def _jax_cond(jnp, jl):
    def f(x, y, w, p):
        a, b = jl.cond(p, *reversed(_branches(jnp)(w)[:2]), x, y)
        return (a * a).sum() + b
    return f


@pytest.mark.parametrize("pred", [True, False])
def test_cond_values_and_gradients_equal_jax(jx, pred):
    jnp, jl = jx.numpy, jx.lax
    args = (X, XS[0], W)
    ng_args = [ng.tensor(a) for a in args]
    for p in (pred, ng.tensor(pred), ng.tensor(int(pred) * 3)):  # a nonzero number is true
        _close(_ng_cond(*ng_args, p).item(), _jax_cond(jnp, jl)(*args, pred))
    got = ng.grad(_ng_cond, argnums=(0, 1, 2))(*ng_args, ng.tensor(pred))
    want = jx.grad(_jax_cond(jnp, jl), argnums=(0, 1, 2))(*args, pred)
    for g, w in zip(got, want):
        _close(g.numpy(), w)
    # w is read only by true_fun: the other branch gives its captured input a zero cotangent
    assert got[2].numpy().any() == pred
    u = tuple(RNG.standard_normal(a.shape) for a in args)
    _, t = ng.jvp(lambda *a: _ng_cond(*a, pred), tuple(ng_args), tuple(ng.tensor(v) for v in u))
    _, tj = jx.jvp(lambda *a: _jax_cond(jnp, jl)(*a, pred), args, u)
    _close(t.item(), tj)


@pytest.mark.parametrize("pred", [True, False])
def test_cond_gradcheck_first_and_second_order(pred):
    def f(x, y, w):
        return _ng_cond(x, y, w, pred)

    gradcheck(f, X, XS[0], W)
    gradcheck(f, X, XS[0], W, order=2)


def test_switch_clamps_the_index_like_jax(jx):
    jnp, jl = jx.numpy, jx.lax
    args = (X, XS[0], W)

    def f_ng(x, y, w, i):
        a, b = lax.switch(i, _branches(ng)(w), x, y)
        return (a * a).sum() + b

    def f_jax(x, y, w, i):
        a, b = jl.switch(i, _branches(jnp)(w), x, y)
        return (a * a).sum() + b

    ng_args = [ng.tensor(a) for a in args]
    for i in (-3, 0, 1, 2, 7):
        _close(f_ng(*ng_args, ng.tensor(i)).item(), f_jax(*args, i))
        _close(f_ng(*ng_args, i).item(), f_jax(*args, i))
        for g, w in zip(ng.grad(f_ng, argnums=(0, 1, 2))(*ng_args, ng.tensor(i)),
                        jx.grad(f_jax, argnums=(0, 1, 2))(*args, i)):
            _close(g.numpy(), w)
    assert lax.switch(5, [lambda v: v * 2], ng.tensor(1.5)).item() == 3.0  # one branch: called


def test_cond_trees_mixed_dtypes_and_no_operands():
    x = ng.tensor(X, requires_grad=True)
    out = lax.cond(ng.tensor(True), lambda v: {"n": (v > 0).sum(), "v": [v * 2, v.sum()]},
                   lambda v: {"n": (v < 0).sum(), "v": [v, v.sum() * 0]}, x)
    assert out["n"].dtype == np.int64 and out["n"].item() == int((X > 0).sum())
    (out["v"][0].sum() + out["v"][1]).backward()
    _close(x.grad.numpy(), np.full(4, 3.0))
    assert lax.cond(False, lambda: ng.tensor(1.0), lambda: ng.tensor(2.0)).item() == 2.0


def test_cond_errors_name_the_mismatch():
    x = ng.tensor(X)
    with pytest.raises(ShapeError, match=r"cond: output 0 of true_fun has shape \(2, 2\)"):
        lax.cond(True, lambda v: v.reshape(2, 2), lambda v: v, x)
    with pytest.raises(DTypeError, match="output 0 of true_fun .* float32"):
        lax.cond(True, lambda v: v.astype("float32"), lambda v: v, x)
    with pytest.raises(ShapeError, match="true_fun returned a tree of structure"):
        lax.cond(True, lambda v: (v, v), lambda v: v, x)
    with pytest.raises(ShapeError, match=r"cond: pred must be a scalar, got shape \(4,\)"):
        lax.cond(x > 0, lambda v: v, lambda v: v, x)
    with pytest.raises(TypeError, match="switch: index must be an integer, got bool"):
        lax.switch(True, [lambda v: v, lambda v: v], x)
    with pytest.raises(TypeError, match="switch: index must be an integer, got float32"):
        lax.switch(ng.tensor(1.0), [lambda v: v, lambda v: v], x)
    with pytest.raises(TypeError, match="non-empty sequence of callables"):
        lax.switch(0, [], x)


def test_jit_cond_chooses_the_branch_at_every_call():
    w = ng.tensor(W)

    def f(x, y):
        a, b = lax.cond(x.sum() > 0, *reversed(_branches(ng)(w)[:2]), x, y)
        return a * b

    jf = ng.jit(f, fuse=False)
    y = ng.tensor(XS[1])
    for s in (1.0, -1.0, 1.0, -1.0):  # traced on the first call, replayed with both branches
        x = ng.tensor(np.abs(X) * s)
        assert np.array_equal(jf(x, y).numpy(), f(x, y).numpy())
    names = [i.name for i in jf.program.instrs if i.kind == "op"]
    assert names.count("cond") == 1 and "tanh" not in names and "sin" not in names
    # the gradient: a cond of the branches' VJPs, also chosen at replay
    g = ng.jit(ng.grad(lambda x, y: f(x, y).sum()), fuse=False)
    ge = ng.grad(lambda x, y: f(x, y).sum())
    for s in (1.0, -1.0, 1.0):
        x = ng.tensor(np.abs(X) * s)
        _close(g(x, y).numpy(), ge(x, y).numpy())
    assert [i.name for i in g.program.instrs].count("cond") == 2


def test_vmap_cond_selects_per_example_or_stays_a_cond(jx):
    jnp, jl = jx.numpy, jx.lax
    xs, ys = XS, XS[::-1] * 0.5

    def per(np_, lx):
        def f(x, y):
            a, b = lx.cond(x.sum() > 0, *reversed(_branches(np_)(W)[:2]), x, y)
            return a * b
        return f

    got = ng.vmap(per(ng, lax))(ng.tensor(xs), ng.tensor(ys))
    _close(got.numpy(), jx.vmap(per(jnp, jl))(xs, ys))
    # gradients per example through the selected branches
    gs = ng.vmap(ng.grad(lambda x, y: per(ng, lax)(x, y).sum()))(ng.tensor(xs), ng.tensor(ys))
    _close(gs.numpy(), jx.vmap(jx.grad(lambda x, y: per(jnp, jl)(x, y).sum()))(xs, ys))
    # a batched predicate runs both branches (selects); an unbatched one stays one cond
    batched = ng.jit(lambda a, b: ng.vmap(per(ng, lax))(a, b))
    batched(ng.tensor(xs), ng.tensor(ys))
    shared = ng.jit(lambda a, b, p: ng.vmap(lambda x, y, p: lax.switch(
        p, [lambda u, v: u * v, lambda u, v: ng.sin(u) + v], x, y), in_axes=(0, 0, None))(a, b, p))
    for i in (0, 1, 0):
        r = shared(ng.tensor(xs), ng.tensor(ys), ng.tensor(i))
        _close(r.numpy(), xs * ys if i == 0 else np.sin(xs) + ys)
    assert "cond" not in [i.name for i in batched.program.instrs]
    assert [i.name for i in shared.program.instrs].count("cond") == 1


def test_cond_inside_scan_differentiates():
    def f(w, h0, xs):
        def cell(h, x):
            h = lax.cond(x.sum() > 0, lambda a: ng.tanh(a @ w + x), lambda a: a * 0.5 + x, h)
            return h, h.sum()
        c, ys = lax.scan(cell, h0, xs)
        return c.sum() + ys.sum()

    gradcheck(f, W, X, XS)


# --- while_loop ------------------------------------------------------------------------------
def _wl(np_, lx):
    def f(x, s):
        def body(c):
            i, v = c
            return i + 1, np_.sin(v) * s + v * 1.2
        return lx.while_loop(lambda c: (c[1] * c[1]).sum() < 50.0, body, (0, x))
    return f


def test_while_loop_values_and_jvp_equal_jax(jx):
    jnp, jl = jx.numpy, jx.lax
    x, s = X * 0.5, 1.3
    (n, v) = _wl(ng, lax)(ng.tensor(x), S)
    (nj, vj) = _wl(jnp, jl)(x, s)
    assert n.item() == int(nj) > 1 and n.dtype == np.int64
    _close(v.numpy(), vj)
    u = (RNG.standard_normal(4), 0.7)
    _, t = ng.jvp(lambda a, b: _wl(ng, lax)(a, b)[1], (ng.tensor(x), S),
                  tuple(ng.tensor(np.asarray(a, dtype=np.float64)) for a in u))
    _close(t.numpy(), jx.jvp(lambda a, b: _wl(jnp, jl)(a, b)[1], (x, s), u)[1], 1e-10)
    # jacfwd (one tangent per input coordinate) against central differences
    jac = ng.jacfwd(lambda a: _wl(ng, lax)(a, S)[1])(ng.tensor(x)).numpy()
    eps = 1e-6
    for k in range(4):
        d = np.eye(4)[k] * eps
        fd = (_wl(ng, lax)(ng.tensor(x + d), S)[1].numpy()
              - _wl(ng, lax)(ng.tensor(x - d), S)[1].numpy()) / (2 * eps)
        np.testing.assert_allclose(jac[:, k], fd, rtol=1e-6, atol=1e-7)


def test_while_loop_reverse_mode_names_the_fix():
    x = ng.tensor(X, requires_grad=True)
    out = _wl(ng, lax)(x, 1.3)[1].sum()
    with pytest.raises(GradError, match="while_loop: reverse-mode .*fori_loop .*scan"):
        out.backward()
    with pytest.raises(GradError, match="while_loop"):
        ng.grad(lambda a: lax.fori_loop(0, ng.tensor(3), lambda i, v: v * 2, a).sum())(x)
    assert lax.fori_loop(0, 3, lambda i, v: v * 2, x).sum().requires_grad  # scan: differentiable


def test_while_loop_errors():
    x = ng.tensor(X)
    with pytest.raises(TypeError, match="cond_fun must return a boolean scalar, got shape"):
        lax.while_loop(lambda v: v > 0, lambda v: v, x)
    with pytest.raises(ShapeError, match=r"body_fun: output 0 has shape \(2, 2\)"):
        lax.while_loop(lambda v: v.sum() > 0, lambda v: v.reshape(2, 2), x)
    with pytest.raises(DTypeError, match="body_fun: output 0 has shape .* float32"):
        lax.while_loop(lambda v: v.sum() > 0, lambda v: v.astype("float32"), x)
    with pytest.raises(ShapeError, match="body_fun returned a tree of structure"):
        lax.while_loop(lambda c: c[0].sum() > 0, lambda c: c[0], (x, x))


def test_jit_while_loop_trip_count_is_decided_at_replay():
    def f(x, lim):
        return _wl(ng, lax)(x, 1.3)[0] + 0 * lim, lax.fori_loop(
            0, lim, lambda i, v: v * 2.0 + i, x)

    jf = ng.jit(f, fuse=False)
    for x0, lim in ((0.1, 2), (0.01, 5), (1.0, 0), (0.1, 2)):
        x = ng.tensor(X * x0)
        (n, v), (ne, ve) = jf(x, ng.tensor(lim)), f(x, ng.tensor(lim))
        assert n.item() == ne.item()
        assert np.array_equal(v.numpy(), ve.numpy())
        want = X * x0
        for i in range(lim):
            want = want * 2.0 + i
        _close(v.numpy(), want)
    assert [i.name for i in jf.program.instrs].count("while_loop") >= 2


def test_vmap_while_loop_freezes_finished_examples(jx):
    jnp, jl = jx.numpy, jx.lax
    xs, ss = XS * 0.3, np.linspace(0.5, 2.0, 5)
    n, v = ng.vmap(_wl(ng, lax))(ng.tensor(xs), ng.tensor(ss))
    nj, vj = jx.vmap(_wl(jnp, jl))(xs, ss)
    assert len(set(np.asarray(nj).tolist())) > 1  # the examples stop at different steps
    np.testing.assert_array_equal(n.numpy(), nj)
    _close(v.numpy(), vj)
    # an unbatched test: the loop runs once for all, with a batched carry
    lim = ng.tensor(3)
    got = ng.vmap(lambda x: lax.fori_loop(0, lim, lambda i, c: c * 2.0 + i, x))(ng.tensor(xs))
    _close(got.numpy(), xs * 8 + 4)
    # a batched bound, and forward mode inside vmap
    got = ng.vmap(lambda x, k: lax.fori_loop(0, k, lambda i, c: c * 2.0, x))(
        ng.tensor(xs), ng.tensor(np.arange(5)))
    _close(got.numpy(), xs * 2.0 ** np.arange(5)[:, None])
    t = ng.vmap(lambda x: ng.jvp(lambda a: _wl(ng, lax)(a, S)[1], (x,),
                                 (ng.ones_like(x),))[1])(ng.tensor(xs))
    tj = jx.vmap(lambda x: jx.jvp(lambda a: _wl(jnp, jl)(a, 1.3)[1], (x,),
                                  (jnp.ones_like(x),))[1])(xs)
    _close(t.numpy(), tj, 1e-10)


def test_fori_loop_with_tensor_bounds_equals_jax(jx):
    jnp, jl = jx.numpy, jx.lax
    for lo, hi in ((1, 6), (4, 2)):
        got = lax.fori_loop(ng.tensor(lo), hi, lambda i, v: ng.sin(v) + i, ng.tensor(X))
        want = jl.fori_loop(jnp.asarray(lo), hi, lambda i, v: jnp.sin(v) + i, X)
        _close(got.numpy(), want)
    with pytest.raises(TypeError, match="fori_loop: upper must be an integer scalar"):
        lax.fori_loop(0, ng.tensor(2.0), lambda i, v: v, ng.tensor(X))
    with pytest.raises(TypeError, match="fori_loop: upper must be a Python int"):
        lax.fori_loop(0, 2.5, lambda i, v: v, ng.tensor(X))
    assert lax.fori_loop(0, np.int64(3), lambda i, v: v + 1, ng.tensor(0.0)).item() == 3.0


# --- PyTorch's spellings ----------------------------------------------------------------------
def test_torch_cond_and_while_loop_match_pytorch():
    torch = pytest.importorskip("torch")
    for sign in (1.0, -1.0):
        xt = torch.tensor(X * sign, requires_grad=True)
        yt = torch.tensor(XS[0], requires_grad=True)
        rt = torch.cond(xt.sum() > 0, lambda a, b: (a * b).sin(), lambda a, b: a.exp() - b,
                        (xt, yt))
        (rt * rt).sum().backward()
        x, y = ng.tensor(X * sign, requires_grad=True), ng.tensor(XS[0], requires_grad=True)
        r = lax.torch_cond(x.sum() > 0, lambda a, b: (a * b).sin(), lambda a, b: a.exp() - b,
                           (x, y))
        (r * r).sum().backward()
        _close(r.numpy(), rt.detach().numpy())
        _close(x.grad.numpy(), xt.grad.numpy())
        _close(y.grad.numpy(), yt.grad.numpy())
    it, vt = torch.while_loop(lambda i, v: (v * v).sum() < 40.0,
                              lambda i, v: (i + 1, v * 1.5 + 0.1), (torch.tensor(0),
                                                                    torch.tensor(X)))
    i, v = lax.torch_while_loop(lambda i, v: (v * v).sum() < 40.0,
                                lambda i, v: (i + 1, v * 1.5 + 0.1), (ng.tensor(0), ng.tensor(X)))
    assert i.item() == it.item()
    _close(v.numpy(), vt.numpy())
    one = lax.torch_while_loop(lambda v: v.sum() < 30, lambda v: v * 2, (ng.tensor([1.0, 2.0]),))
    assert isinstance(one, ng.Tensor) and one.numpy().tolist() == [16.0, 32.0]  # as PyTorch
    with pytest.raises(TypeError, match="cond: operands must be a tuple or list"):
        lax.torch_cond(True, lambda a: a, lambda a: a, ng.tensor(X))


def test_closed_over_batched_tensors_stay_apart_inside_traced_functions():
    """Two batched tensors of one shape closed over by a branch, a loop test or a scan body
    are two inputs (inside vmap their placeholder arrays are shared)."""
    a, b = ng.tensor(XS), ng.tensor(XS[::-1] * 10)
    want = XS - XS[::-1] * 10
    got = ng.vmap(lambda x, y: lax.cond(True, lambda: x - y, lambda: x + y))(a, b)
    _close(got.numpy(), want)
    got = ng.vmap(lambda x, y: lax.scan(lambda c, _: (c + x - y, None), ng.zeros_like(x), None,
                                        length=1)[0])(a, b)
    _close(got.numpy(), want)
    got = ng.vmap(lambda x, y: lax.while_loop(lambda c: (c[0] < 1) & (x.sum() < y.sum() + 1e9),
                                              lambda c: (c[0] + 1, c[1] + x - y),
                                              (0, ng.zeros_like(x)))[1])(a, b)
    _close(got.numpy(), want)
