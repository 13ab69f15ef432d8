"""ng.jit against eager execution: programs that replayed other values than the function
computes, stale programs after a change the signature did not see, and JAX's static arguments."""

import dataclasses

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.errors import JitError


def _same(a, b) -> bool:
    """Equal bit for bit, the sign of zero included."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(
        a, b, equal_nan=True) and np.array_equal(np.signbit(a), np.signbit(b))


# --- tensors made inside the function --------------------------------------------------------
@pytest.mark.parametrize("body", ["add_view", "setitem_then_add", "view_alias", "add_index"])
def test_a_tensor_made_in_the_step_starts_afresh_when_written_through_a_view(body):
    def f(x):
        y = ng.zeros(3)
        if body == "add_view":
            y[0] += x[1]
        elif body == "setitem_then_add":
            y[1:] = x[:2]
            y[0] += x[2]
        elif body == "view_alias":
            t = y[0]
            t += x[2]
        else:
            y[0] = y[0] + x[2]
        return y

    jf = ng.jit(f, fuse=False)
    for v in ([1.0, 2.0, 3.0], [10.0, 20.0, 30.0], [100.0, 200.0, 300.0]):
        x = ng.tensor(v)
        assert _same(jf(x).numpy(), f(x).numpy())


def test_a_returned_tensor_made_in_the_step_is_a_new_array_each_call():
    jf = ng.jit(lambda x: (x * 2.0, ng.zeros(3), ng.ones(2)))
    x = ng.ones(3)
    for _ in range(3):
        _, z, o = jf(x)
        assert _same(z.numpy(), np.zeros(3, np.float32))
        assert _same(o.numpy(), np.ones(2, np.float32))
        z += 1.0  # the caller's own array: the next call must not see it
        o.mul_(5.0)


# --- the signature ----------------------------------------------------------------------------
def test_python_floats_key_the_signature_by_their_bits():
    jf = ng.jit(lambda x, s: x * s)
    x = ng.tensor([1.0, 2.0])
    for s in (0.0, -0.0, 0.0, -0.0):
        assert _same(jf(x, s).numpy(), (x * s).numpy())
    assert jf.traces == 2
    jf(x, float("nan"))
    jf(x, float("nan"))
    assert jf.traces == 3  # NaN is one signature, not a new one on every call


def test_an_unhashable_argument_is_refused_not_keyed_by_identity():
    @dataclasses.dataclass
    class Config:  # eq=True without frozen: not hashable, and may change between calls
        scale: float

    jf = ng.jit(lambda x, c: x * c.scale)
    with pytest.raises(JitError, match="not hashable"):
        jf(ng.ones(2), Config(2.0))

    @dataclasses.dataclass(frozen=True)
    class Frozen:
        scale: float

    jg = ng.jit(lambda x, c: x * c.scale)
    assert _same(jg(ng.ones(2), Frozen(2.0)).numpy(), np.full(2, 2.0, np.float32))
    assert _same(jg(ng.ones(2), Frozen(3.0)).numpy(), np.full(2, 3.0, np.float32))


def test_slices_are_static_by_value():
    jf = ng.jit(lambda x, s: x[s] * 1.0)
    x = ng.arange(6).float()
    for k in (1, 2, 3, 2):
        assert _same(jf(x, slice(0, k)).numpy(), x.numpy()[:k])
    assert jf.traces == 3


def test_static_argnums_and_static_argnames():
    def f(x, n, shape, scale=1.0):
        return x.reshape(shape) * n * scale

    jf = ng.jit(f, static_argnums=1, static_argnames=("shape",))
    x = ng.tensor([1.0, 2.0])
    assert _same(jf(x, 2, (2, 1)).numpy(), (x.reshape((2, 1)) * 2).numpy())
    assert _same(jf(x, 3, shape=(1, 2)).numpy(), (x.reshape((1, 2)) * 3).numpy())
    assert _same(jf(x, 3, shape=(1, 2)).numpy(), (x.reshape((1, 2)) * 3).numpy())
    assert jf.traces == 2
    g = ng.jit(lambda x, y: x * y, static_argnums=(1,))
    with pytest.raises(JitError, match="tensor"):
        g(x, x)
    with pytest.raises(JitError, match="not hashable"):
        ng.jit(lambda x, s: x * len(s), static_argnums=1)(x, [1, 2])
    with pytest.raises(TypeError, match="static_argnums"):
        ng.jit(f, static_argnums=(1.5,))


def test_a_closed_over_module_switched_to_eval_retraces():
    ng.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5))
    jf = ng.jit(lambda x: m(x))
    x = ng.ones(4, 3)
    with ng.no_grad():
        jf(x)
        m.eval()
        assert _same(jf(x).numpy(), m(x).numpy())


# --- gradient hooks ---------------------------------------------------------------------------
def _step(hook_at, kind):
    ng.manual_seed(0)
    m = nn.Linear(3, 1)
    opt = ng.optim.SGD(m.parameters(), lr=0.1)
    calls = []

    def hook():
        if kind == "grad":
            m.weight.register_hook(lambda g: g * 0.0)
        else:
            m.weight.register_post_accumulate_grad_hook(lambda p: calls.append(1))

    def step(x):
        loss = m(x).sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    return m, step, hook, calls, opt


@pytest.mark.parametrize("kind", ["grad", "post"])
@pytest.mark.parametrize("hook_at", [0, 2])
def test_gradient_hooks_hold_under_jit_wherever_they_were_added(kind, hook_at):
    x = ng.ones(2, 3)
    results = []
    for use_jit in (False, True):
        m, step, hook, calls, opt = _step(hook_at, kind)
        run = ng.jit(step, state=(m, opt)) if use_jit else step
        for k in range(4):
            if k == hook_at:
                hook()
            run(x)
        results.append((m.weight.numpy().copy(), len(calls)))
    assert _same(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]


def test_a_tensor_hook_added_after_the_trace_without_state():
    w = ng.randn(3, requires_grad=True)

    def f(x):
        loss = (x * w).sum()
        loss.backward()
        return loss.detach()

    jf = ng.jit(f)
    x = ng.ones(3)
    jf(x)
    jf(x)
    w.grad = None
    h = w.register_hook(lambda g: g * 10.0)
    jf(x)
    assert _same(w.grad.numpy(), np.full(3, 10.0, np.float32))
    h.remove()
    w.grad = None
    jf(x)
    assert _same(w.grad.numpy(), np.ones(3, np.float32))


def test_a_step_without_state_that_returns_its_loss():
    def run(use_jit):
        ng.manual_seed(0)
        m = nn.Linear(3, 1)
        opt = ng.optim.SGD(m.parameters(), lr=0.1)

        def step(x):
            opt.zero_grad()
            loss = m(x).sum()
            loss.backward()
            opt.step()
            return loss

        s = ng.jit(step) if use_jit else step
        losses = [s(ng.ones(2, 3) * k).numpy() for k in range(4)]
        return losses, m.weight.numpy()

    (l0, w0), (l1, w1) = run(False), run(True)
    assert all(_same(a, b) for a, b in zip(l0, l1))
    assert _same(w0, w1)


# --- passes -----------------------------------------------------------------------------------
@pytest.mark.parametrize("fuse", [False, True])
def test_adding_zeros_keeps_the_sign_of_zero(fuse):
    x = ng.tensor(np.array([-0.0, 1.0, -2.0], np.float32))
    for f in (lambda y: y * 1.0 + 0.0, lambda y: 0.0 + y * 1.0,
              lambda y: y * 1.0 + ng.zeros(3), lambda y: y * 1.0 - ng.zeros(3),
              lambda y: y * 1.0 - 0.0, lambda y: ng.maximum(y * 1.0 + 0.0, y - 1.0)):
        jf = ng.jit(f, fuse=fuse)
        jf(x)
        assert _same(jf(x).numpy(), f(x).numpy())


def test_freezing_a_parameter_of_a_step_without_state_retraces():
    def run(use_jit):
        ng.manual_seed(0)
        m = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
        opt = ng.optim.SGD(m.parameters(), lr=0.1)

        def step(x):
            loss = m(x).sum()
            loss.backward()
            opt.step()
            opt.zero_grad()
            return loss.detach()

        s = ng.jit(step) if use_jit else step
        for k in range(5):
            if k == 2:
                m[0].weight.requires_grad_(False)
            s(ng.ones(2, 3) * k)
        return [p.numpy() for p in m.parameters()]

    assert all(_same(a, b) for a, b in zip(run(False), run(True)))


@pytest.mark.parametrize("variant", ["grad", "clone", "param"])
def test_a_step_that_returns_a_gradient_zero_grad_cleared_since(variant):
    def run(use_jit):
        ng.manual_seed(0)
        m = nn.Linear(3, 2)
        opt = ng.optim.Adam(m.parameters(), lr=0.1)

        def step(x):
            loss = (m(x) ** 2).sum()
            loss.backward()
            g = m.weight.grad if variant == "grad" else m.weight.grad.clone()
            opt.step()
            opt.zero_grad()  # .grad is None again; g still holds this step's gradient
            return loss, (m.weight if variant == "param" else g)

        s = ng.jit(step, state=(m, opt)) if use_jit else step
        outs = [s(ng.ones(2, 3) * (k + 1)) for k in range(4)]
        return [(a.numpy().copy(), b.numpy().copy()) for a, b in outs]

    for (l0, g0), (l1, g1) in zip(run(False), run(True)):
        assert _same(l0, l1) and _same(g0, g1)


def test_a_grad_set_to_none_by_python_in_the_step_is_not_lost_on_replay():
    def run(use_jit):
        ng.manual_seed(0)
        m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))

        def step(x):
            loss = (m(x) ** 2).mean()
            loss.backward()
            with ng.no_grad():
                for p in m.parameters():
                    p -= 0.1 * p.grad
                    p.grad = None  # a recorded step: each replay clears it again
            return loss

        s = ng.jit(step, state=(m,)) if use_jit else step
        losses = [s(ng.ones(2, 3) * (k + 1)).numpy() for k in range(4)]
        return losses + [p.numpy() for p in m.parameters()], s

    (a, _), (b, s) = run(False), run(True)
    assert all(_same(p, q) for p, q in zip(a, b))
    assert s.last.program is not None


def test_a_forward_whose_backward_cannot_be_captured_still_runs():
    a = ng.randn(5, 3, requires_grad=True)

    def f(a):  # differentiable only in reduced mode: eagerly an error only on backward
        return ng.linalg.qr(a, mode="complete")[0] * 2.0

    jf = ng.jit(f)
    for _ in range(2):
        assert _same(jf(a).detach().numpy(), f(a).detach().numpy())
    assert "backward could not be captured" in jf.last.reason


def test_the_default_dtype_keys_the_signature():
    def f(x):
        return x * 2.0 + ng.ones(3)  # a factory: the default float dtype

    jf = ng.jit(f)
    x64 = ng.tensor(np.ones(3, np.float64))
    try:
        ng.set_default_dtype("float64")
        assert _same(jf(x64).numpy(), f(x64).numpy())
        jf(x64)  # replayed: the hot path
        ng.set_default_dtype("float32")
        with pytest.raises(ng.errors.DTypeError):  # eager: float64 input, float32 ones
            f(x64)
        with pytest.raises(ng.errors.DTypeError):  # traced again, not the float64 program
            jf(x64)
    finally:
        ng.set_default_dtype("float32")


def test_changing_python_numbers_warn_once_that_each_value_traces():
    import warnings

    from nodegrad.jit.api import RETRACE_WARN

    f = ng.jit(lambda x, s: x * s + 1)
    x = ng.ones(3)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for i in range(3 * RETRACE_WARN):
            np.testing.assert_allclose(f(x, 0.5 * i).numpy(), np.full(3, 0.5 * i + 1))
    msgs = [str(m.message) for m in w if issubclass(m.category, RuntimeWarning)]
    assert len(msgs) == 1 and "Python number argument changed value" in msgs[0]
    assert "ng.tensor(value)" in msgs[0] and w[0].filename == __file__
    # a tensor argument traces once; a repeated number, or new shapes, never warn
    g = ng.jit(lambda x, s: x * s + 1)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for i in range(3 * RETRACE_WARN):
            g(x, ng.tensor(0.5 * i))
            g(x, 2.0)
            g(ng.ones(i + 1), 2.0)
    assert g.traces == 1 + 1 + 3 * RETRACE_WARN - 1 and not [
        m for m in w if issubclass(m.category, RuntimeWarning)]
