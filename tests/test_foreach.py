"""``ng._foreach_*`` against ``torch._foreach_*``: every op and operand form, and the code that
calls them (an EMA, gradient clipping, PyTorch's multi-tensor Adam written out)."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.ops import foreach

torch = pytest.importorskip("torch")

SHAPES = [(3, 4), (5,), (), (2, 1, 3)]


def _lists(lib, seed=0, positive=False, unit=False):
    rng = np.random.default_rng(seed)
    out = []
    for s in SHAPES:
        a = rng.standard_normal(s)
        if positive:
            a = np.abs(a) + 0.5
        if unit:
            a = np.tanh(a) * 0.9
        out.append(lib.tensor(a, dtype=lib.float64))
    return out


def _same(a, b, tol=1e-12):
    if isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y, tol)
        return
    x, y = np.asarray(a.detach().numpy()), np.asarray(b.detach().numpy())
    assert x.shape == y.shape and x.dtype == y.dtype
    np.testing.assert_allclose(x, y, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", foreach.UNARY)
def test_unary_ops_match_torch(name):
    domain = dict(positive=name in ("log", "log10", "log2", "sqrt", "rsqrt", "lgamma",
                                    "reciprocal"),
                  unit=name in ("acos", "asin", "log1p"))
    xs, ts = _lists(ng, **domain), _lists(torch, **domain)
    _same(getattr(ng, f"_foreach_{name}")(xs), getattr(torch, f"_foreach_{name}")(ts))
    assert getattr(ng, f"_foreach_{name}_")(xs) is xs  # the list given, as torch 2.13's
    assert getattr(torch, f"_foreach_{name}_")(ts) is ts
    _same(xs, ts)


@pytest.mark.parametrize("name", foreach.BINARY)
@pytest.mark.parametrize("form", ["number", "numbers", "tensor", "tensors"])
def test_binary_ops_match_torch_for_every_operand_form(name, form):
    if form == "tensor" and name in ("clamp_min", "clamp_max", "pow"):
        pytest.skip("torch has no tensor-scalar overload here")
    xs, ts = _lists(ng, positive=True), _lists(torch, positive=True)

    def other(lib):
        if form == "number":
            return 1.5
        if form == "numbers":
            return [0.5, 2.0, -1.0, 3.0]
        if form == "tensor":
            return lib.tensor(1.25, dtype=lib.float64)
        return _lists(lib, seed=3, positive=True)

    _same(getattr(ng, f"_foreach_{name}")(xs, other(ng)),
          getattr(torch, f"_foreach_{name}")(ts, other(torch)))
    getattr(ng, f"_foreach_{name}_")(xs, other(ng))
    getattr(torch, f"_foreach_{name}_")(ts, other(torch))
    _same(xs, ts)
    if name in ("add", "sub") and form == "tensors":  # alpha= with a list of tensors only
        _same(getattr(ng, f"_foreach_{name}")(xs, other(ng), alpha=0.3),
              getattr(torch, f"_foreach_{name}")(ts, other(torch), alpha=0.3))


def test_pointwise_lerp_norm_max_copy_zero_clone_match_torch():
    xs, ts = _lists(ng), _lists(torch)
    a, ta = _lists(ng, 1), _lists(torch, 1)
    b, tb = _lists(ng, 2, positive=True), _lists(torch, 2, positive=True)
    for name in ("addcmul", "addcdiv"):
        for value in (0.5, [0.1, 0.2, 0.3, 0.4]):
            _same(getattr(ng, f"_foreach_{name}")(xs, a, b, value),
                  getattr(torch, f"_foreach_{name}")(ts, ta, tb, value))
        getattr(ng, f"_foreach_{name}_")(xs, a, b, value=0.25)
        getattr(torch, f"_foreach_{name}_")(ts, ta, tb, value=0.25)
        _same(xs, ts)
    for w in (0.3, [0.1, 0.9, 0.5, 0.0]):
        _same(ng._foreach_lerp(xs, a, w), torch._foreach_lerp(ts, ta, w))
    ng._foreach_lerp_(xs, a, 0.2)
    torch._foreach_lerp_(ts, ta, 0.2)
    _same(xs, ts)
    for o in (2, 1, float("inf")):
        _same(ng._foreach_norm(xs, o), torch._foreach_norm(ts, o))
    _same(ng._foreach_max(xs), torch._foreach_max(ts))
    _same(ng._foreach_pow(2.0, xs), torch._foreach_pow(2.0, ts))
    c, tc = ng._foreach_clone(xs), torch._foreach_clone(ts)
    ng._foreach_zero_(xs)
    torch._foreach_zero_(ts)
    _same(xs, ts)
    _same(c, tc)
    ng._foreach_copy_(xs, c)
    torch._foreach_copy_(ts, tc)
    _same(xs, ts)


def _ema_and_adam(lib, steps=4):
    """timm's EMA (``_foreach_lerp_``), gradient clipping with ``_foreach_norm``, and PyTorch's
    multi-tensor Adam step written out with the foreach ops."""
    lib.manual_seed(0)
    model = lib.nn.Sequential(lib.nn.Linear(4, 8), lib.nn.Tanh(), lib.nn.Linear(8, 2))
    rng = np.random.default_rng(0)
    with lib.no_grad():
        for p in model.parameters():
            p.copy_(lib.tensor(rng.standard_normal(tuple(p.shape)) * 0.3, dtype=p.dtype))
    params = list(model.parameters())
    ema = [p.detach().clone() for p in params]
    m = [lib.zeros_like(p) for p in params]
    v = [lib.zeros_like(p) for p in params]
    b1, b2, lr, eps, decay = 0.9, 0.999, 1e-2, 1e-8, 0.9
    x = lib.tensor(rng.standard_normal((16, 4)).astype(np.float32))
    y = lib.tensor(rng.standard_normal((16, 2)).astype(np.float32))
    for step in range(1, steps + 1):
        for p in params:
            p.grad = None
        ((model(x) - y) ** 2).mean().backward()
        grads = [p.grad for p in params]
        norms = lib._foreach_norm(grads)
        total = lib.linalg.vector_norm(lib.stack(norms))
        coef = lib.clamp(0.5 / (total + 1e-6), max=1.0)
        lib._foreach_mul_(grads, coef)
        with lib.no_grad():
            lib._foreach_lerp_(m, grads, 1 - b1)
            lib._foreach_mul_(v, b2)
            lib._foreach_addcmul_(v, grads, grads, 1 - b2)
            bc1, bc2 = 1 - b1 ** step, 1 - b2 ** step
            denom = lib._foreach_sqrt(v)
            lib._foreach_div_(denom, bc2 ** 0.5)
            lib._foreach_add_(denom, eps)
            lib._foreach_addcdiv_(params, m, denom, [-lr / bc1] * len(params))
            lib._foreach_lerp_(ema, params, 1 - decay)
    return [p.detach() for p in params] + ema


def test_ema_clipping_and_multi_tensor_adam_match_torch():
    _same(_ema_and_adam(ng), _ema_and_adam(torch), 1e-6)


def test_bad_arguments_name_the_op():
    xs = _lists(ng)
    with pytest.raises(TypeError, match="_foreach_exp: expected a list or tuple of tensors"):
        ng._foreach_exp(xs[0])
    with pytest.raises(TypeError, match="_foreach_add_: expected a list of tensors"):
        ng._foreach_add_([xs[0], 1.0], 1.0)
    with pytest.raises(ng.ShapeError, match="_foreach_mul: got 4 tensors but 2 second"):
        ng._foreach_mul(xs, [1.0, 2.0])
    with pytest.raises(ng.ShapeError, match="_foreach_copy_: got 4 tensors but 1 sources"):
        ng._foreach_copy_(xs, xs[:1])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_add_sub_with_alpha_and_a_number_keep_a_0d_tensors_dtype(dtype):
    """``x.add(1.5, alpha=0.3)`` of a 0-d float64 tensor was refused (the scaled number became
    a default-float tensor); the number times alpha stays a weak Python number, as PyTorch."""
    x, t = ng.tensor(1.0, dtype=getattr(ng, dtype)), torch.tensor(1.0, dtype=getattr(torch, dtype))
    for got, want in ((x.add(1.5, alpha=0.3), t.add(1.5, alpha=0.3)),
                      (x.sub(0.7, alpha=0.3), t.sub(0.7, alpha=0.3)),
                      (ng.sub(x, 0.7, alpha=0.3), torch.sub(t, 0.7, alpha=0.3)),
                      (ng.rsub(x, 2, alpha=3), torch.rsub(t, 2, alpha=3))):
        assert got.dtype == getattr(ng, dtype)
        assert got.item() == want.item()
