"""vmap: for every primitive case of ``_opcases``, vmap(f)(xs) equals stacking f(x) (random
in_axes and out_axes, batched and unbatched operands); per-example gradients (vmap of grad)
against a Python loop; grad of vmap; nesting; modules via functional_call; torch.func."""

import numpy as np
import pytest
from _opcases import CASES, calls, drawn
from hypothesis import strategies as st

import nodegrad as ng
from nodegrad import nn

LAYOUTS = ("matrix", "rank", "noncontig", "scalar")
MATRIX = [pytest.param(c, lay, id=f"{c.name}-{lay}") for c in CASES
          for lay in LAYOUTS if lay in c.layouts]
NB = 3


def test_every_primitive_has_a_batching_rule():
    missing = sorted(n for n, p in ng.primitives.items() if p.batch is None)
    assert not missing, f"primitives without a batching rule: {missing}"


def _examples(call, rng):
    """NB examples of the call's arguments (floats scaled, so domains keep their sign)."""
    arrs = [np.array(a) for a in call.args]
    return [[np.asarray(a * (1 + 0.25 * b), dtype=a.dtype) if a.dtype.kind == "f" else a
             for a in arrs] for b in range(NB)]


def _flat(out):
    return ng.tree_flatten(out)[0]


def _batched_inputs(data, arrs, exs):
    axes, ins = [], []
    for i, a in enumerate(arrs):
        ax = data.draw(st.one_of(st.none(), st.integers(0, a.ndim)), label=f"in_axes[{i}]")
        if ax is None and a.dtype.kind == "f" and not any(x is not None for x in axes):
            ax = 0 if i == len(arrs) - 1 else None
        axes.append(ax)
        ins.append(ng.tensor(a) if ax is None else ng.tensor(np.stack([e[i] for e in exs], ax)))
    if all(ax is None for ax in axes):
        axes[0] = 0
        ins[0] = ng.tensor(np.stack([e[0] for e in exs], 0))
    for i, ax in enumerate(axes):  # an unbatched operand is the same in every example
        if ax is None:
            for e in exs:
                e[i] = arrs[i]
    return tuple(axes), ins


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize(("case", "layout"), MATRIX)
@drawn(2)
def test_vmap_equals_stacking(case, layout, data):
    call = data.draw(calls(case, layout))
    arrs = [np.array(a) for a in call.args]
    exs = _examples(call, np.random.default_rng(0))
    axes, ins = _batched_inputs(data, arrs, exs)
    refs = [_flat(call.fn(*(ng.tensor(a) for a in e))) for e in exs]
    nd = min(r.ndim for r in refs[0])
    oax = data.draw(st.integers(0, nd), label="out_axes")
    got = _flat(ng.vmap(call.fn, in_axes=axes, out_axes=oax)(*ins))
    assert len(got) == len(refs[0])
    for k, g in enumerate(got):
        want = np.stack([r[k].numpy() for r in refs], oax)
        assert g.shape == want.shape and g.dtype == want.dtype
        np.testing.assert_allclose(g.numpy(), want, rtol=1e-6, atol=1e-6, equal_nan=True)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
@drawn(1)
def test_per_example_gradients_equal_a_loop(case, data):
    call = data.draw(calls(case, "matrix"))
    arrs = [np.array(a).astype(np.float64) if np.array(a).dtype.kind == "f" else np.array(a)
            for a in call.args]
    fl = [i for i, a in enumerate(arrs) if a.dtype.kind == "f"]
    exs = _examples(call, None)
    rng = np.random.default_rng(1)
    ws = [ng.tensor(rng.standard_normal(o.shape).astype(o.dtype))
          for o in _flat(call.fn(*map(ng.tensor, arrs)))]

    def loss(*xs):
        full = [ng.tensor(a) for a in arrs]
        for i, x in zip(fl, xs):
            full[i] = x
        return sum(((o * w).sum().astype("float64") for o, w in zip(_flat(call.fn(*full)), ws)),
                   ng.tensor(0.0, dtype=ng.float64))

    nums = tuple(range(len(fl)))
    stacked = [ng.tensor(np.stack([e[i].astype(np.float64) for e in exs])) for i in fl]
    got = ng.vmap(ng.grad(loss, nums))(*stacked)
    for b, e in enumerate(exs):
        want = ng.grad(loss, nums)(*(ng.tensor(e[i].astype(np.float64)) for i in fl))
        for g, w in zip(got, want):
            np.testing.assert_allclose(g.numpy()[b], w.numpy(), rtol=1e-7, atol=1e-9)


def _mlp():
    ng.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def test_per_example_gradients_of_a_module():
    model = _mlp()
    params = dict(model.named_parameters())
    rng = np.random.default_rng(2)
    xs, ys = ng.tensor(rng.standard_normal((6, 5))), ng.tensor(rng.integers(0, 3, 6))
    params = {k: v.detach().double() for k, v in params.items()}

    def loss(p, x, y):
        logits = ng.func.functional_call(model, p, ng.expand_dims(x, 0))
        return nn.functional.cross_entropy(logits, ng.expand_dims(y, 0))

    per = ng.vmap(ng.grad(loss), in_axes=(None, 0, 0))(params, xs, ys)
    for b in range(6):
        want = ng.grad(loss)(params, xs[b], ys[b])
        for k in params:
            np.testing.assert_allclose(per[k].numpy()[b], want[k].numpy(), rtol=1e-9,
                                       atol=1e-12)
    total = ng.grad(lambda p: ng.vmap(loss, in_axes=(None, 0, 0))(p, xs, ys).sum())(params)
    for k in params:
        np.testing.assert_allclose(total[k].numpy(), per[k].numpy().sum(0), rtol=1e-9,
                                   atol=1e-12)


def test_nested_vmap_and_grad():
    rng = np.random.default_rng(3)
    x = ng.tensor(rng.standard_normal((2, 3, 4)))
    w = ng.tensor(rng.standard_normal((4, 4)))

    def f(v):
        return ng.logsumexp(ng.tanh(w @ v) * v)

    got = ng.vmap(ng.vmap(ng.grad(f)), in_axes=1, out_axes=2)(x)
    assert got.shape == (2, 4, 3)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(got.numpy()[i, :, j], ng.grad(f)(x[i, j]).numpy(),
                                       rtol=1e-10)
    val = ng.vmap(ng.vmap(f))(x)
    np.testing.assert_allclose(val.numpy(), [[float(f(x[i, j])) for j in range(3)]
                                             for i in range(2)], rtol=1e-10)


def test_batch_extension_example_and_errors():
    # the notes: f defined for one sample, vmap extends it to a batch of B samples
    w = ng.tensor(np.arange(6.0).reshape(2, 3))

    def f(x):  # x: (3,) -> (2,)
        return ng.relu(w @ x - 1.0)

    xs = ng.tensor(np.arange(12.0).reshape(4, 3))
    np.testing.assert_array_equal(ng.vmap(f)(xs).numpy(),
                                  np.stack([f(x).numpy() for x in xs]))
    with pytest.raises(ng.ShapeError, match="different sizes"):
        ng.vmap(lambda a, b: a + b)(ng.ones(2), ng.ones(3))
    with pytest.raises(TypeError, match="vmap"):
        ng.vmap(lambda a: a if a.sum() > 0 else -a)(ng.ones((2, 2)))
    picked = ng.vmap(lambda a, i: a[i])(ng.tensor(np.arange(6.0).reshape(2, 3)),
                                        ng.tensor([0, 2]))  # each example's own index
    np.testing.assert_array_equal(picked.numpy(), [0.0, 5.0])
    out = ng.vmap(lambda a: ng.tensor(1.0))(ng.ones(3))  # unbatched output is broadcast
    np.testing.assert_array_equal(out.numpy(), [1.0, 1.0, 1.0])


def test_against_torch_func_per_example_gradients():
    torch = pytest.importorskip("torch")
    from torch.func import grad as tgrad
    from torch.func import vmap as tvmap

    rng = np.random.default_rng(4)
    w1, w2 = rng.standard_normal((8, 5)), rng.standard_normal((3, 8))
    xs, ys = rng.standard_normal((10, 5)), rng.integers(0, 3, 10)

    def nloss(p, x, y):
        h = ng.tanh(p[0] @ x)
        return -ng.where(ng.arange(3) == y, ng.log_softmax(p[1] @ h, axis=0), 0.0).sum()

    def tloss(p, x, y):
        h = torch.tanh(p[0] @ x)
        return -torch.where(torch.arange(3) == y, torch.log_softmax(p[1] @ h, dim=0), 0.0).sum()

    got = ng.vmap(ng.grad(nloss), in_axes=(None, 0, 0))(
        (ng.tensor(w1), ng.tensor(w2)), ng.tensor(xs), ng.tensor(ys))
    want = tvmap(tgrad(tloss), in_dims=(None, 0, 0))(
        (torch.tensor(w1), torch.tensor(w2)), torch.tensor(xs), torch.tensor(ys))
    for g, t in zip(got, want):
        np.testing.assert_allclose(g.numpy(), t.numpy(), rtol=1e-10, atol=1e-12)


def test_transforms_doc_blocks_run():
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "transforms.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 3
    for code in blocks:
        exec(compile(code, "docs/transforms.md", "exec"), {})


def test_forward_mode_and_jacobians_inside_vmap():
    rng = np.random.default_rng(5)
    xs, us = ng.tensor(rng.standard_normal((4, 3))), ng.tensor(rng.standard_normal((4, 3)))
    w = ng.tensor(rng.standard_normal((3, 3)))

    def f(x):
        return ng.tanh(w @ x) * x

    def g(x):
        return (ng.tanh(w @ x) ** 2).sum()

    _, t = ng.vmap(lambda x, u: ng.jvp(f, (x,), (u,)))(xs, us)
    c = ng.vmap(lambda x, u: ng.vjp(f, x)[1](u))(xs, us)
    for b in range(4):
        np.testing.assert_allclose(t.numpy()[b], ng.jvp(f, (xs[b],), (us[b],))[1].numpy())
        np.testing.assert_allclose(c[0].numpy()[b], ng.vjp(f, xs[b])[1](us[b])[0].numpy())
    for jac in (ng.jacfwd, ng.jacrev, ng.hessian):
        fn = g if jac is ng.hessian else f
        got = ng.vmap(jac(fn))(xs)
        for b in range(4):
            np.testing.assert_allclose(got.numpy()[b], jac(fn)(xs[b]).numpy(), atol=1e-12)
    _, hv = ng.vmap(lambda x, u: ng.hvp(g, (x,), (u,)))(xs, us)
    np.testing.assert_allclose(hv.numpy()[1], ng.hvp(g, (xs[1],), (us[1],))[1].numpy())
    np.testing.assert_allclose(ng.jacfwd(ng.vmap(f))(xs).numpy(),
                               ng.jacrev(ng.vmap(f))(xs).numpy(), atol=1e-12)


def _ints(x):
    return ng.floor(x).astype("int64")


NONDIFF = {
    "floor_divide": lambda x, y: x // y, "sign": ng.sign, "equal": lambda x, y: x == y,
    "not_equal": lambda x, y: x != y, "less": lambda x, y: x < y,
    "less_equal": lambda x, y: x <= y, "greater": lambda x, y: x > y,
    "greater_equal": lambda x, y: x >= y,
    "logical_and": lambda x, y: ng.logical_and(x > 0, y > 0),
    "logical_or": lambda x, y: ng.logical_or(x > 0, y > 0),
    "logical_xor": lambda x, y: ng.logical_xor(x > 0, y > 0),
    "logical_not": lambda x: ng.logical_not(x > 0), "isnan": ng.isnan, "isinf": ng.isinf,
    "isfinite": ng.isfinite, "floor": ng.floor, "ceil": ng.ceil, "round": lambda x: ng.round(x),
    "trunc": ng.trunc, "argmax": lambda x: ng.argmax(x, axis=1),
    "argmin": lambda x: ng.argmin(x, keepdims=True), "any": lambda x: ng.any(x > 1, axis=0),
    "all": lambda x: ng.all(x > -1, axis=(0, 1), keepdims=True),
    "bitwise_and": lambda x, y: _ints(x) & _ints(y), "bitwise_or": lambda x, y: _ints(x) | (y > 0),
    "bitwise_xor": lambda x, y: _ints(x) ^ _ints(y), "bitwise_not": lambda x: ~_ints(x),
    "left_shift": lambda x, y: _ints(x) << ng.abs(_ints(y)),
    "right_shift": lambda x, y: _ints(x) >> ng.abs(_ints(y)),
}
NONDIFF.update({  # the wider operator surface
    "attention_grad": lambda x: ng.primitives["attention_grad"](x, x * 0.5, x, -x, scale=0.7,
                                                                causal=True),
    "layer_norm_grad": lambda x, y: ng.primitives["layer_norm_grad"](
        x * 0.5, x, y[0], k=1, eps=1e-5, want=(True, True, True)),
    "argsort": lambda x: ng.argsort(x, 1, descending=True),
    "cumarg": lambda x: ng.cummax(x, 0).indices,
    "isclose": lambda x, y: ng.isclose(x, y, atol=1.0),
    "searchsorted": lambda x: ng.searchsorted(ng.sort(x).values, x * 0.5, right=True),
    "trunc_divide": lambda x, y: ng.trunc_divide(x, y),
    "cross_entropy_weights": lambda x: ng.primitives["cross_entropy_weights"](
        _ints(x), ignore_index=0, reduction="mean", dtype=np.dtype("float64")),
    # gru_scan's forward and reverse loops, T = 2 steps of one direction, batch 1, H = 1
    "gru_scan_loop": lambda x, y: ng.primitives["gru_scan_loop"](
        x.reshape(1, 3, 2, 1), y[:1].reshape(1, 3, 1), y[1:], ng.tanh(x[:1, :1]).reshape(1, 1, 1)),
    "gru_scan_grad": lambda x, y: ng.primitives["gru_scan_grad"](
        x[:, :1].reshape(2, 1, 1, 1), ng.primitives["gru_scan_loop"](
            ng.tanh(x).reshape(1, 3, 2, 1), y[:1].reshape(1, 3, 1), y[1:],
            ng.tanh(y[:1, 2:]).reshape(1, 1, 1), reverse=(True,)),
        y[:1].reshape(1, 3, 1), reverse=(True,)),
    # special functions and integer arithmetic
    "nextafter": lambda x, y: ng.nextafter(x, y),
    "gcd": lambda x, y: ng.gcd(_ints(x), _ints(y)),
    "lcm": lambda x, y: ng.lcm(_ints(x), _ints(y)),
    "heaviside": lambda x, y: ng.heaviside(ng.round(x), y),
    "frexp_exponent": lambda x: ng.frexp(x).exponent,
    "geqrf": lambda x: ng.geqrf(x)[0],
    # lax.while_loop with a test on a batched value: the examples stop at different steps
    "while_loop": lambda x: ng.lax.while_loop(lambda c: (c * c).sum() < 400.0,
                                              lambda c: c * 1.5 + 0.1, x),
})


def test_non_differentiable_primitives_batch():
    missing = {n for n, p in ng.primitives.items() if not p.differentiable} - set(NONDIFF)
    assert not missing
    rng = np.random.default_rng(6)
    xs = rng.standard_normal((4, 2, 3)) * 3
    ys = rng.standard_normal((2, 3)) * 3 + 0.5
    for name, fn in NONDIFF.items():
        n = fn.__code__.co_argcount if hasattr(fn, "__code__") else 1
        if n == 2:
            got = ng.vmap(fn, in_axes=(2, None))(ng.tensor(np.moveaxis(xs, 0, 2)), ng.tensor(ys))
            want = [fn(ng.tensor(x), ng.tensor(ys)).numpy() for x in xs]
        else:
            got = ng.vmap(fn, in_axes=1, out_axes=-1)(ng.tensor(np.moveaxis(xs, 0, 1)))
            want = [fn(ng.tensor(x)).numpy() for x in xs]
        want = np.stack(want, 0 if n == 2 else -1)
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got.numpy(), want, err_msg=name)


@pytest.mark.parametrize("bias", [None, "shared", "batched"])
@pytest.mark.parametrize("x_axis", [None, 0, 1])
def test_linear_with_batched_weights_equals_a_loop(bias, x_axis):
    """The batched-weight linear rule (W_i x_i as one product per example) and its per-example
    weight gradients (contiguous outer products) against a loop, in float64."""
    rng = np.random.default_rng(3)
    ws = rng.standard_normal((4, 3, 5))
    xs = rng.standard_normal((4, 5) if x_axis == 0 else (5, 4) if x_axis == 1 else (5,))
    bs = rng.standard_normal((4, 3) if bias == "batched" else (3,))
    x_of = (lambda i: xs[i]) if x_axis == 0 else (lambda i: xs[:, i]) if x_axis == 1 else (
        lambda i: xs)
    b_of = (lambda i: bs[i]) if bias == "batched" else (lambda i: bs)
    args = [ng.tensor(ws), ng.tensor(xs)] + ([] if bias is None else [ng.tensor(bs)])
    axes = (0, x_axis) + (() if bias is None else (0 if bias == "batched" else None,))

    def f(w, x, b=None):
        return ng.tanh(ng.linear(x, w, b))

    out = ng.vmap(f, in_axes=axes)(*args)
    grads = ng.vmap(ng.grad(lambda *a: f(*a).sum(), argnums=(0, 1)), in_axes=axes)(*args)
    for i in range(4):
        one = [ng.tensor(ws[i]), ng.tensor(x_of(i))] + ([] if bias is None
                                                          else [ng.tensor(b_of(i))])
        np.testing.assert_allclose(out.numpy()[i], f(*one).numpy(), rtol=1e-12)
        gw, gx = ng.grad(lambda *a: f(*a).sum(), argnums=(0, 1))(*one)
        np.testing.assert_allclose(grads[0].numpy()[i], gw.numpy(), rtol=1e-12)
        np.testing.assert_allclose(grads[1].numpy()[i], gx.numpy(), rtol=1e-12)
    assert grads[0].numpy().flags.c_contiguous  # per-example weight gradients, (4, 3, 5)


def test_per_example_weight_gradients_are_contiguous():
    """vmap(grad) of an MLP over unbatched parameters: every per-example gradient is a fresh
    C-contiguous (batch, out, in) array (no transposed views), as torch.func gives."""
    rng = np.random.default_rng(0)
    p = {"w": ng.tensor(rng.standard_normal((6, 4)).astype(np.float32)),
         "v": ng.tensor(rng.standard_normal((3, 6)).astype(np.float32))}
    xs = ng.tensor(rng.standard_normal((5, 4)).astype(np.float32))
    ys = ng.tensor(np.array([0, 2, 1, 1, 0]))

    def loss(p, x, y):  # cross-entropy of a two-layer tanh MLP, as benchmark W8
        logits = ng.linear(ng.tanh(ng.linear(x, p["w"])), p["v"])
        return -ng.where(ng.arange(3) == y, ng.log_softmax(logits, axis=-1), 0.0).sum()

    g = ng.vmap(ng.grad(loss), in_axes=(None, 0, 0))(p, xs, ys)
    assert g["w"].shape == (5, 6, 4) and g["v"].shape == (5, 3, 6)
    assert g["w"].numpy().flags.c_contiguous and g["v"].numpy().flags.c_contiguous
    for i in range(5):
        want = ng.grad(loss)(p, xs[i], ys[i])
        np.testing.assert_allclose(g["w"].numpy()[i], want["w"].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g["v"].numpy()[i], want["v"].numpy(), rtol=1e-5, atol=1e-6)


def test_detach_inside_vmap_keeps_the_batch_and_stops_the_gradient():
    xs = ng.tensor([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(ng.vmap(lambda x: x.detach() * 2)(xs).numpy(),
                                  [[2.0, 4.0], [6.0, 8.0]])
    g = ng.vmap(ng.grad(lambda x: (x * x.detach()).sum()))(xs)  # d/dx of x * stop(x) is x
    np.testing.assert_array_equal(g.numpy(), xs.numpy())


def test_setitem_on_a_batched_tensor_updates_each_example():
    def f(x):
        x = x * 1
        x[0] = 1.0
        x[1:] = x[1:] * 2
        return x

    xs = ng.tensor(np.arange(6.0).reshape(2, 3))
    want = np.stack([f(x).numpy() for x in xs])
    np.testing.assert_array_equal(ng.vmap(f)(xs).numpy(), want)
    g = ng.vmap(ng.grad(lambda x: (f(x) ** 2).sum()))(xs)
    np.testing.assert_array_equal(
        g.numpy(), np.stack([ng.grad(lambda x: (f(x) ** 2).sum())(x).numpy() for x in xs]))


@pytest.mark.parametrize("name,f", [
    ("add_", lambda x: ng.zeros(3).add_(x)),
    ("copy_", lambda x: ng.zeros(3).copy_(x)),
    ("fill_", lambda x: ng.zeros(3).fill_(x.sum())),
    ("lerp_", lambda x: ng.zeros(3).lerp_(x, 0.5)),
    ("masked_fill_", lambda x: ng.zeros(3).masked_fill_(x > 2, 1.0)),
    ("setitem", lambda x: ng.zeros(3).__setitem__(1, x.sum())),
])
def test_an_unbatched_tensor_refuses_a_batched_value_in_place(name, f):
    """It stored the tracer's poison: NaN, silently."""
    with pytest.raises(TypeError, match=f"{name}: inside vmap an unbatched tensor"):
        ng.vmap(f)(ng.tensor(np.arange(6.0).reshape(2, 3), dtype=ng.float32))


def test_conversions_of_a_batched_tensor_keep_the_batch_or_refuse():
    xs = ng.tensor(np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(ng.vmap(ng.from_dlpack)(xs).numpy(), xs.numpy())
    assert ng.vmap(lambda x: ng.as_tensor(x, dtype=ng.float64))(xs).dtype == ng.float64
    with pytest.raises(TypeError, match="use x.clone"):  # it copied the tracer's NaN poison
        ng.vmap(ng.tensor)(xs)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_vmap_of_cross_entropy_on_one_examples_logits(reduction):
    """Per-example (C,) logits and a 0-d target, the usual per-example loss: vmap and
    vmap(grad) equal the loop (the batching rule merged (B, C) into B·C logits before)."""
    x = ng.randn(3, 5, dtype=ng.float64)
    t = ng.tensor([1, 3, 0])

    def f(xi, ti):
        return ng.nn.functional.cross_entropy(xi, ti, reduction=reduction).sum()

    want = np.array([float(f(x[i], t[i])) for i in range(3)])
    np.testing.assert_allclose(ng.vmap(f)(x, t).numpy(), want, rtol=1e-12)
    g = ng.vmap(ng.grad(f))(x, t)
    loop = np.stack([ng.grad(lambda xi: f(xi, t[i]))(x[i]).numpy() for i in range(3)])
    np.testing.assert_allclose(g.numpy(), loop, rtol=1e-12)


def test_vmap_refuses_to_update_running_statistics():
    """Inside vmap the running statistics cannot take each example's statistics in place:
    a TypeError naming the fixes, not NaN stored (the tracer's poison)."""
    F = ng.nn.functional
    x = ng.randn(2, 4, 3)
    rm, rv = ng.zeros(3), ng.ones(3)
    with pytest.raises(TypeError, match="running statistics.*replace_all_batch_norm_modules_"):
        ng.vmap(lambda xi: F.batch_norm(xi, rm, rv, training=True))(x)
    np.testing.assert_array_equal(rm.numpy(), 0.0)
    np.testing.assert_array_equal(rv.numpy(), 1.0)
    assert ng.vmap(lambda xi: F.batch_norm(xi, rm, rv, training=False))(x).shape == (2, 4, 3)
    m = ng.nn.BatchNorm1d(3)
    ng.func.replace_all_batch_norm_modules_(m)
    assert ng.vmap(m)(x).shape == (2, 4, 3)


def test_zero_fill_and_copy_of_a_batched_tensor_inside_vmap():
    """Each example takes the value, as torch.func allows (they raised before), NaN and inf
    entries included; a batched source is copied example by example."""
    x = ng.tensor([[float("nan"), 1.0], [2.0, float("inf")], [3.0, 4.0]])
    assert not ng.vmap(lambda r: r.clone().zero_())(x).numpy().any()
    np.testing.assert_array_equal(ng.vmap(lambda r: r.clone().fill_(7))(x).numpy(), 7.0)
    y = ng.randn(3, 2)
    np.testing.assert_array_equal(ng.vmap(lambda r, s: r.clone().copy_(s))(x, y).numpy(),
                                  y.numpy())
    v = ng.tensor([5.0, 6.0])
    np.testing.assert_array_equal(ng.vmap(lambda r: r.clone().copy_(v))(x).numpy(),
                                  np.tile(v.numpy(), (3, 1)))
    g = ng.vmap(ng.grad(lambda r: (r.clone().fill_(2.0) * r).sum()))(y)
    np.testing.assert_array_equal(g.numpy(), 2.0)


def test_backward_and_autograd_grad_inside_vmap_name_the_transforms():
    """PyTorch-style differentiation of a batched value inside vmap has no graph to walk: the
    error says so and names the transforms that work there (it said "does not require grad")."""
    xs = ng.randn(3, 4)

    def penalty(x):
        (g,) = ng.autograd.grad((ng.sin(x) ** 2).sum(), x, create_graph=True)
        return (g ** 2).sum()

    with pytest.raises(ng.GradError, match="inside vmap.*ng.grad"):
        ng.vmap(ng.grad(penalty))(xs)
    with pytest.raises(ng.GradError, match="backward: inside vmap"):
        ng.vmap(lambda x: (x * 2).sum().backward())(xs)
    per = ng.vmap(ng.grad(lambda x: (ng.grad(lambda v: (ng.sin(v) ** 2).sum())(x) ** 2).sum()))(xs)
    assert per.shape == (3, 4)  # the same penalty with the transforms
