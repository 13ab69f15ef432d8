"""Function transforms against torch.func / torch.autograd.functional."""

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")
tf = torch.func
AF = torch.autograd.functional


def _np(t):
    return t.detach().numpy() if isinstance(t, torch.Tensor) else np.asarray(t.numpy())


def test_vmap_out_dims_none():
    x, xn = torch.randn(4, 3), ng.randn(4, 3)
    assert tuple(tf.vmap(lambda x: torch.ones(2), out_dims=None)(x).shape) == (2,)
    assert ng.vmap(lambda x: ng.ones(2), out_dims=None)(xn).shape == (2,)
    with pytest.raises(ValueError):
        tf.vmap(lambda x: x * 2, out_dims=None)(x)
    with pytest.raises(ValueError):
        ng.vmap(lambda x: x * 2, out_dims=None)(xn)
    with pytest.raises(ValueError):
        ng.vmap(lambda x: x * 2, in_dims=None)(xn)
    assert ng.vmap(lambda x: ng.ones(2), out_axes=None)(xn).shape == (2,)  # JAX's name


def test_vmap_out_dims_one_tuple():
    x = np.random.randn(4, 3).astype(np.float32)
    want = tf.vmap(lambda x: x.T, out_dims=(1,))(torch.tensor(x))
    got = ng.vmap(lambda x: x.T, out_dims=(1,))(ng.tensor(x))
    np.testing.assert_allclose(_np(got), _np(want))


def test_vmap_same_randomness_chunks():
    z = torch.zeros(5, 3)
    r = tf.vmap(lambda x: x + torch.randn(3), randomness="same", chunk_size=2)(z)
    assert bool((r == r[0]).all())
    rn = ng.vmap(lambda x: x + ng.randn(3), randomness="same", chunk_size=2)(ng.zeros(5, 3))
    assert np.all(_np(rn) == _np(rn)[0])
    rd = ng.vmap(lambda x: x + ng.randn(3), randomness="different", chunk_size=2)(
        ng.zeros(5, 3))
    assert not np.all(_np(rd) == _np(rd)[0])


def test_functional_call_unknown_key_restores():
    x = np.random.randn(4, 3).astype(np.float32)
    lt, ln = torch.nn.Linear(3, 2), ng.nn.Linear(3, 2)
    w0 = ln.weight
    want = tf.functional_call(lt, {"weight": torch.zeros(2, 3), "foo": torch.ones(1)},
                              (torch.tensor(x),))
    got = ng.func.functional_call(ln, {"weight": ng.zeros(2, 3), "foo": ng.ones(1)},
                                  (ng.tensor(x),))
    np.testing.assert_allclose(_np(got), _np(want) - _np(lt.bias) + _np(ln.bias), rtol=1e-6)
    assert ln.weight is w0 and not hasattr(ln, "foo") and not hasattr(lt, "foo")

    class M(ng.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = ng.nn.Linear(2, 2)

        def forward(self, x):
            return x @ self.a.newthing

    m = M()
    out = ng.func.functional_call(m, {"a.newthing": ng.ones(2, 2)}, ng.ones(1, 2))
    np.testing.assert_allclose(_np(out), [[2.0, 2.0]])
    assert not hasattr(m.a, "newthing")

    def boom(x):
        raise RuntimeError("boom")

    ln.forward = boom
    with pytest.raises(RuntimeError):
        ng.func.functional_call(ln, {"weight": ng.zeros(2, 3)}, ng.ones(1, 3))
    assert ln.weight is w0


class _TiedT(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(1, 1, bias=False)
        self.b = self.a

    def forward(self, x):
        return self.a(x) + 10 * self.b(x)


class _TiedN(ng.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = ng.nn.Linear(1, 1, bias=False)
        self.b = self.a

    def forward(self, x):
        return self.a(x) + 10 * self.b(x)


def test_functional_call_tied():
    with pytest.raises(ValueError, match="tied"):
        tf.functional_call(_TiedT(), {"a.weight": torch.ones(1, 1),
                                      "b.weight": torch.ones(1, 1)}, (torch.ones(1, 1),))
    with pytest.raises(ValueError, match="tied"):
        ng.func.functional_call(_TiedN(), {"a.weight": ng.ones(1, 1),
                                           "b.weight": ng.ones(1, 1)}, (ng.ones(1, 1),))
    w, wn = torch.ones(1, 1), ng.ones(1, 1)  # the same object twice is accepted
    want = tf.functional_call(_TiedT(), {"a.weight": w, "b.weight": w}, (torch.ones(1, 1),))
    got = ng.func.functional_call(_TiedN(), {"a.weight": wn, "b.weight": wn}, (ng.ones(1, 1),))
    np.testing.assert_allclose(_np(got), _np(want))
    want = tf.functional_call(_TiedT(), {"b.weight": w}, (torch.ones(1, 1),), strict=True)
    got = ng.func.functional_call(_TiedN(), {"b.weight": wn}, (ng.ones(1, 1),), strict=True)
    np.testing.assert_allclose(_np(got), _np(want))
    want = tf.functional_call(_TiedT(), {"a.weight": w, "b.weight": 2 * w},
                              (torch.ones(1, 1),), tie_weights=False)
    got = ng.func.functional_call(_TiedN(), {"a.weight": wn, "b.weight": 2 * wn},
                                  (ng.ones(1, 1),), tie_weights=False)
    np.testing.assert_allclose(_np(got), _np(want))


@pytest.mark.parametrize("shape", [(1,), (1, 1)])
@pytest.mark.parametrize("name", ["hvp", "vhp"])
def test_hvp_single_element_outputs(shape, name):
    x = np.random.randn(3)
    def f(x):
        return (x * x * x).sum().reshape(shape)

    want = getattr(AF, name)(f, torch.tensor(x), torch.tensor(x))
    got = getattr(ng.autograd.functional, name)(f, ng.tensor(x), ng.tensor(x))
    assert got[0].shape == tuple(want[0].shape)
    np.testing.assert_allclose(_np(got[1]), _np(want[1]), rtol=1e-10)


def test_batchnorm_ensemble_train_under_vmap():
    ms = [torch.nn.BatchNorm1d(4) for _ in range(3)]
    nms = [ng.nn.BatchNorm1d(4) for _ in range(3)]
    p, b = tf.stack_module_state(ms)
    pn, bn = ng.func.stack_module_state(nms)
    for x in (np.random.randn(5, 4).astype(np.float32),
              np.random.randn(3, 5, 4).astype(np.float32)):
        dims = (0, 0, None) if x.ndim == 2 else (0, 0, 0)
        want = tf.vmap(lambda p, b, x: tf.functional_call(ms[0], (p, b), (x,)),
                       in_dims=dims)(p, b, torch.tensor(x))
        got = ng.vmap(lambda p, b, x: ng.func.functional_call(nms[0], (p, b), (x,)),
                      in_dims=dims)(pn, bn, ng.tensor(x))
        np.testing.assert_allclose(_np(got), _np(want), rtol=1e-4, atol=1e-5)
        for k in b:
            np.testing.assert_allclose(_np(bn[k]), _np(b[k]), rtol=1e-4, atol=1e-6)
    assert tuple(got.shape) == (3, 5, 4)


def test_jacobian_forward_mode_limits():
    x = np.random.randn(3)
    for mod, m in ((AF, torch), (ng.autograd.functional, ng)):
        t = m.tensor(x)
        with pytest.raises(NotImplementedError):
            mod.jacobian(m.sin, t, strategy="forward-mode")
        with pytest.raises(NotImplementedError):
            mod.jacobian(m.sin, t, strategy="forward-mode", vectorize=True, create_graph=True)
        with pytest.raises(NotImplementedError):
            mod.hessian(lambda x: (x ** 3).sum(), t, outer_jacobian_strategy="forward-mode")
        with pytest.raises(NotImplementedError):
            mod.hessian(lambda x: (x ** 3).sum(), t, outer_jacobian_strategy="forward-mode",
                        vectorize=True, create_graph=True)
    want = AF.jacobian(torch.sin, torch.tensor(x), strategy="forward-mode", vectorize=True)
    got = ng.autograd.functional.jacobian(ng.sin, ng.tensor(x), strategy="forward-mode",
                                          vectorize=True)
    np.testing.assert_allclose(_np(got), _np(want), rtol=1e-10)


def test_integer_and_non_tensor_outputs():
    x = np.random.randn(3)
    t, tn = torch.tensor(x), ng.tensor(x)
    with pytest.raises(RuntimeError):
        tf.jacrev(lambda x: (x > 0).long())(t)
    with pytest.raises(RuntimeError, match="jacrev"):
        ng.func.jacrev(lambda x: (x > 0).long())(tn)
    with pytest.raises(RuntimeError):
        tf.vjp(lambda x: (x, (x > 0).long()), t)
    with pytest.raises(RuntimeError, match="vjp"):
        ng.func.vjp(lambda x: (x, (x > 0).long()), tn)
    with pytest.raises(RuntimeError):
        tf.vjp(lambda x: (x, 3), t)
    with pytest.raises(RuntimeError, match="vjp.*int"):
        ng.func.vjp(lambda x: (x, 3), tn)
    with pytest.raises(RuntimeError, match="jacrev.*float"):
        ng.func.jacrev(lambda x: 3.0)(tn)
    # torch.autograd.functional keeps zeros for an integer output
    want = AF.jacobian(lambda x: (x > 0).long(), t)
    got = ng.autograd.functional.jacobian(lambda x: (x > 0).long(), tn)
    np.testing.assert_array_equal(_np(got), _np(want))
    want = AF.vjp(lambda x: (x > 0).long(), t, torch.ones(3, dtype=torch.long))[1]
    got = ng.autograd.functional.vjp(lambda x: (x > 0).long(), tn,
                                     ng.ones(3, dtype=ng.int64))[1]
    np.testing.assert_array_equal(_np(got), _np(want))
