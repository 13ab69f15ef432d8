"""Automatic mixed precision against torch.amp on the CPU: autocast's output and gradient dtypes,
its regions (nesting, turning off, threads, decorator, jit), and GradScaler's scale sequence and
parameters over steps with injected inf and NaN gradients."""

import pickle
import threading

import numpy as np
import pytest

import nodegrad as ng
import nodegrad.nn.functional as F
from nodegrad.autodiff import modes

torch = pytest.importorskip("torch")
TF = torch.nn.functional

RNG = np.random.default_rng(0)
X = RNG.standard_normal((4, 8)).astype(np.float32)
W = RNG.standard_normal((3, 8)).astype(np.float32)
B = RNG.standard_normal(3).astype(np.float32)
X1 = RNG.standard_normal((2, 3, 10)).astype(np.float32)
W1 = RNG.standard_normal((4, 3, 3)).astype(np.float32)
X2 = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)
W2 = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
Y = np.array([0, 1, 2, 0])


def _torch_dtype(t) -> str:
    return str(t.dtype).removeprefix("torch.")


# each case: a function of (lib, F, x, w, b, x1, w1, x2, w2, y) run in both libraries
CASES = {
    "linear": lambda L, F, x, w, b, *_: F.linear(x, w, b),
    "linear_nobias": lambda L, F, x, w, b, *_: F.linear(x, w),
    "matmul": lambda L, F, x, w, b, *_: x @ w.T,
    "matmul_int": lambda L, F, x, w, b, *_: (x > 0).long() @ (w > 0).long().T,
    "einsum": lambda L, F, x, w, b, *_: L.einsum("ij,kj->ik", x, w),
    "conv1d": lambda L, F, x, w, b, x1, w1, *_: F.conv1d(x1, w1),
    "conv2d": lambda L, F, x, w, b, x1, w1, x2, w2, _: F.conv2d(x2, w2, padding=1),
    "conv_transpose1d": lambda L, F, x, w, b, x1, w1, *_: F.conv_transpose1d(
        x1, w1.transpose(0, 1)),
    "softmax_f32": lambda L, F, x, *_: F.softmax(x, dim=-1),
    "softmax_f16": lambda L, F, x, w, b, *_: F.softmax(F.linear(x, w, b), dim=-1),
    "log_softmax": lambda L, F, x, w, b, *_: F.log_softmax(F.linear(x, w, b), dim=-1),
    "cross_entropy": lambda L, F, x, w, b, *r: F.cross_entropy(F.linear(x, w, b), r[-1]),
    "mse_loss_mixed": lambda L, F, x, w, b, *_: F.mse_loss(F.linear(x, w, b), x[:, :3]),
    "bce_logits": lambda L, F, x, w, b, *_: F.binary_cross_entropy_with_logits(
        F.linear(x, w, b), x[:, :3].sigmoid()),
    "layer_norm_f32": lambda L, F, x, *_: F.layer_norm(x, (8,)),
    "layer_norm_f16": lambda L, F, x, w, b, *_: F.layer_norm(F.linear(x, w, b), (3,)),
    "sum": lambda L, F, x, w, b, *_: F.linear(x, w, b).sum(),
    "exp": lambda L, F, x, w, b, *_: F.linear(x, w, b).exp(),
    "prod": lambda L, F, x, w, b, *_: F.linear(x, w, b).prod(),
    "relu": lambda L, F, x, w, b, *_: F.relu(F.linear(x, w, b)),
    "add_mixed": lambda L, F, x, w, b, *_: F.linear(x, w, b) + x[:, :3],
    "cat_mixed": lambda L, F, x, w, b, *_: L.cat([F.linear(x, w, b), x[:, :3]]),
    "stack_mixed": lambda L, F, x, w, b, *_: L.stack([F.linear(x, w, b), x[:, :3]]),
    "linear_f64": lambda L, F, x, w, b, *_: F.linear(x.double(), w.double()),
    "sdpa": lambda L, F, x, *_: F.scaled_dot_product_attention(x[None], x[None], x[None]),
    "mse_loss_f16": lambda L, F, x, w, b, *_: F.mse_loss(F.linear(x, w, b), F.linear(x, w)),
    "l1_loss_f16": lambda L, F, x, w, b, *_: F.l1_loss(F.linear(x, w, b), F.linear(x, w)),
    "huber_loss_f16": lambda L, F, x, w, b, *_: F.huber_loss(F.linear(x, w, b), F.linear(x, w)),
    "smooth_l1_f16": lambda L, F, x, w, b, *_: F.smooth_l1_loss(F.linear(x, w, b),
                                                                 F.linear(x, w)),
    "nll_loss_f16": lambda L, F, x, w, b, *r: F.nll_loss(F.linear(x, w, b), r[-1]),
}


def _args(lib):
    t = ng.tensor if lib is ng else torch.tensor
    return [t(a) for a in (X, W, B, X1, W1, X2, W2)] + [t(Y)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_output_dtypes_match_torch_cpu_autocast(name):
    f = CASES[name]
    with torch.autocast("cpu", dtype=torch.float16):
        want = f(torch, TF, *_args(torch))
    with ng.autocast("cpu", dtype=ng.float16):
        got = f(ng, F, *_args(ng))
    assert str(got.dtype) == _torch_dtype(want), name
    tol = 2e-2 if "float16" in (str(got.dtype),) else 1e-2
    np.testing.assert_allclose(got.numpy().astype(np.float64),
                               want.detach().numpy().astype(np.float64), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ["linear", "conv1d", "conv2d", "cross_entropy", "add_mixed",
                                  "softmax_f16", "einsum"])
def test_gradient_dtypes_and_values_match_torch(name):
    f = CASES[name]
    ta = [a.requires_grad_() if a.is_floating_point() else a for a in _args(torch)]
    na = [ng.tensor(a.detach().numpy(), requires_grad=a.requires_grad) for a in ta]
    with torch.autocast("cpu", dtype=torch.float16):
        tout = f(torch, TF, *ta)
    (tout.float() ** 2).sum().backward()
    with ng.autocast("cpu", dtype=ng.float16):
        nout = f(ng, F, *na)
    (nout.float() ** 2).sum().backward()
    for t, n in zip(ta, na):
        if t.grad is None:
            assert n.grad is None or not np.any(n.grad.numpy())
            continue
        assert str(n.grad.dtype) == _torch_dtype(t.grad) == "float32"
        scale = max(1.0, float(np.abs(t.grad.numpy()).max()))
        np.testing.assert_allclose(n.grad.numpy(), t.grad.numpy(), atol=3e-2 * scale, rtol=3e-2)


def test_backward_inside_the_region_keeps_the_forward_dtypes():
    w = ng.tensor(W, requires_grad=True)
    x = ng.tensor(X, requires_grad=True)
    with ng.autocast("cpu", dtype=ng.float16):
        y = F.linear(x, w)
        assert y.dtype == ng.float16
        y.float().sum().backward()
    assert w.grad.dtype == ng.float32 and x.grad.dtype == ng.float32
    np.testing.assert_allclose(w.grad.numpy(), np.tile(X.sum(0), (3, 1)), rtol=1e-2, atol=1e-2)
    # the backward's own products are not autocast: the same bits as a backward outside
    grads = []
    for inside in (True, False):
        w.grad = x.grad = None
        with ng.autocast("cpu", dtype=ng.float16):
            with ng.autocast("cpu", enabled=False):  # a float32 product, whose VJP's
                y = ng.einsum("ij,kj->ik", x, w)  # products (einsums) must stay float32
            y = y + F.linear(x, w).float()
            if inside:
                (y * y).sum().backward()
        if not inside:
            (y * y).sum().backward()
        grads.append((w.grad.numpy(), x.grad.numpy()))
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)


def test_region_state_nesting_and_disable_inside():
    assert not ng.is_autocast_enabled("cpu")
    assert ng.get_autocast_dtype("cpu") == ng.bfloat16  # PyTorch's CPU default
    assert ng.get_autocast_dtype("cuda") == ng.float16
    x, w = ng.tensor(X), ng.tensor(W)
    with ng.autocast("cpu", dtype=ng.float16):
        assert ng.is_autocast_enabled("cpu") and not ng.is_autocast_enabled("cuda")
        with ng.autocast("cpu", enabled=False):
            assert not ng.is_autocast_enabled("cpu")
            assert (x @ w.T).dtype == ng.float32
            with ng.autocast("cpu", dtype=ng.float16):
                assert (x @ w.T).dtype == ng.float16
            assert (x @ w.T).dtype == ng.float32
        assert (x @ w.T).dtype == ng.float16
        with ng.autocast("cpu", dtype=ng.float32):  # an inner region may change the dtype
            assert ng.get_autocast_dtype("cpu") == ng.float32
            assert (x @ w.T).dtype == ng.float32
        assert ng.get_autocast_dtype("cpu") == ng.float16
    assert not ng.is_autocast_enabled("cpu") and modes().autocast is None
    with ng.autocast("cpu"):  # no dtype: bfloat16, as torch.autocast("cpu")
        assert (x @ w.T).dtype == ng.bfloat16
    assert (x @ w.T).dtype == ng.float32


def test_region_matches_torch_state_functions():
    with torch.autocast("cpu", dtype=torch.float16), ng.autocast("cpu", dtype=ng.float16):
        assert ng.is_autocast_enabled("cpu") == torch.is_autocast_enabled("cpu")
        assert str(ng.get_autocast_dtype("cpu")) == _torch_dtype(
            torch.zeros((), dtype=torch.get_autocast_dtype("cpu")))
        with torch.autocast("cpu", enabled=False), ng.autocast("cpu", enabled=False):
            assert ng.is_autocast_enabled("cpu") == torch.is_autocast_enabled("cpu") is False
    assert ng.amp.is_autocast_available("cpu") and ng.amp.is_autocast_available("cuda")
    assert not ng.amp.is_autocast_available("tpu")
    assert ng.amp.autocast is ng.autocast


def test_region_restored_after_an_exception():
    with pytest.raises(KeyError), ng.autocast("cpu", dtype=ng.float16):
        raise KeyError("x")
    assert modes().autocast is None and not ng.is_autocast_enabled("cpu")


def test_region_is_thread_local():
    x, w = ng.tensor(X), ng.tensor(W)
    seen = {}

    def other():
        seen["enabled"] = ng.is_autocast_enabled("cpu")
        seen["dtype"] = (x @ w.T).dtype
        with ng.autocast("cpu", dtype=ng.float16):
            seen["inner"] = (x @ w.T).dtype
            ev_in.set()
            ev_out.wait(5)

    ev_in, ev_out = threading.Event(), threading.Event()
    with ng.autocast("cpu", dtype=ng.float16):
        th = threading.Thread(target=other)
        th.start()
        assert ev_in.wait(5)
        assert (x @ w.T).dtype == ng.float16
    # the other thread is still inside its region: this one is not
    assert not ng.is_autocast_enabled("cpu") and (x @ w.T).dtype == ng.float32
    ev_out.set()
    th.join(5)
    assert seen == {"enabled": False, "dtype": ng.float32, "inner": ng.float16}


def test_decorator_form():
    @ng.autocast("cpu", dtype=ng.float16)
    def f(x, w):
        assert ng.is_autocast_enabled("cpu")
        return x @ w.T

    @ng.amp.autocast("cpu", enabled=False)
    def g(x, w):
        return x @ w.T

    x, w = ng.tensor(X), ng.tensor(W)
    assert f(x, w).dtype == ng.float16 and f(x, w).dtype == ng.float16
    assert not ng.is_autocast_enabled("cpu")
    with ng.autocast("cpu", dtype=ng.float16):
        assert g(x, w).dtype == ng.float32
    assert f.__name__ == "f"


def test_bad_arguments_raise_clear_errors():
    assert ng.autocast("cpu", dtype="bfloat16").fast_dtype == ng.bfloat16
    assert ng.autocast("cpu", dtype=torch.bfloat16).fast_dtype == ng.bfloat16
    with pytest.raises(ng.DTypeError, match="float64"):
        ng.autocast("cpu", dtype=ng.float64)
    with pytest.raises(ValueError, match="device_type"):
        ng.autocast("tpu")
    with pytest.raises(TypeError, match="device_type"):
        ng.autocast(0)
    with pytest.raises(TypeError, match="decorator"):
        ng.autocast("cpu")(3)
    ng.autocast("cpu", dtype=torch.float16)  # torch's dtype objects are understood


def test_cuda_region_leaves_cpu_tensors_alone():
    x, w = ng.tensor(X), ng.tensor(W)
    if ng.cuda.is_available():
        ctx = ng.autocast("cuda")
    else:
        with pytest.warns(UserWarning, match="CUDA is not available"):
            ctx = ng.autocast("cuda")
    with ctx:
        assert (x @ w.T).dtype == ng.float32
        assert not ng.is_autocast_enabled("cpu")
    with ng.autocast("cpu", dtype=ng.float16):
        assert not ng.is_autocast_enabled("cuda")
    assert ng.cuda.amp.autocast.__mro__[1] is ng.autocast
    from nodegrad.cuda.amp import GradScaler  # torch.cuda.amp's import path
    assert issubclass(GradScaler, ng.amp.GradScaler)


def test_parameter_cast_is_cached_and_refreshed_after_an_update():
    lin = ng.nn.Linear(8, 3)
    x = ng.tensor(X)
    with ng.autocast("cpu", dtype=ng.float16):
        a, b = lin(x), lin(x)
        na = a.node.parents
        nb = b.node.parents
        # one cast of the weight serves both calls (PyTorch's autocast cache)
        assert any(p is q for p in na for q in nb if p is not None)
        with ng.no_grad():
            lin.weight.mul_(2.0)  # an in-place change: the next call casts it again
        c = lin(x)
    want = X @ lin.weight.numpy().T + lin.bias.numpy()  # the doubled weight
    np.testing.assert_allclose(c.numpy(), want, rtol=2e-2, atol=2e-2)
    with ng.autocast("cpu", cache_enabled=False):
        a, b = lin(x), lin(x)
        assert not any(p is q for p in a.node.parents for q in b.node.parents
                       if p is not None)


def test_cached_cast_survives_backward_and_accumulation():
    lin = ng.nn.Linear(8, 3)
    x = ng.tensor(X)
    with ng.autocast("cpu", dtype=ng.float16):
        lin(x).float().sum().backward()
        lin(x).float().sum().backward()  # gradient accumulation inside one region
    np.testing.assert_allclose(lin.weight.grad.numpy(), 2 * np.tile(X.sum(0), (3, 1)),
                               rtol=1e-2, atol=1e-2)
    assert lin.weight.grad.dtype == ng.float32


def test_jit_keys_its_cache_on_the_region():
    calls = []

    @ng.jit
    def f(x, w):
        calls.append(1)
        return F.relu(x @ w.T).sum(-1)

    x, w = ng.tensor(X), ng.tensor(W)
    outs = [f(x, w).dtype, f(x, w).dtype]
    with ng.autocast("cpu", dtype=ng.float16):
        outs += [f(x, w).dtype, f(x, w).dtype, f(x, w).dtype]
        with ng.autocast("cpu", enabled=False):
            outs.append(f(x, w).dtype)
    outs += [f(x, w).dtype, f(x, w).dtype]
    assert [str(d) for d in outs] == ["float32"] * 2 + ["float16"] * 3 + ["float32"] * 3
    ref = (np.maximum(X @ W.T, 0)).sum(-1)
    np.testing.assert_allclose(f(x, w).numpy(), ref, rtol=1e-5)


def test_jit_differentiable_replay_under_the_region():
    w = ng.tensor(W, requires_grad=True)
    step = ng.jit(lambda x, w: x @ w.T)
    x = ng.tensor(X)
    grads = []
    for region in (False, True, True, False):
        w.grad = None
        with ng.autocast("cpu", dtype=ng.float16, enabled=region):
            out = step(x, w)
        assert out.dtype == (ng.float16 if region else ng.float32)
        out.float().square().sum().backward()
        assert w.grad.dtype == ng.float32
        grads.append(w.grad.numpy().copy())
    want = 2 * (X @ W.T).T @ X
    for g in grads:
        np.testing.assert_allclose(g, want, rtol=2e-2, atol=2e-1)


def test_custom_fwd_and_bwd():
    class Mul(ng.autograd.Function):
        @staticmethod
        @ng.amp.custom_fwd(device_type="cpu", cast_inputs=ng.float32)
        def forward(ctx, a, b):
            ctx.save_for_backward(a, b)
            ctx.inner = ng.is_autocast_enabled("cpu")
            return a @ b

        @staticmethod
        @ng.amp.custom_bwd(device_type="cpu")
        def backward(ctx, g):
            a, b = ctx.saved_tensors
            return g @ b.T, a.T @ g

    a = ng.tensor(X, requires_grad=True)
    b = ng.tensor(W.T.copy(), requires_grad=True)
    with ng.autocast("cpu", dtype=ng.float16):
        out = Mul.apply(a.half(), b)
    assert out.dtype == ng.float32  # cast_inputs ran it in float32 with autocast off
    out.sum().backward()
    assert a.grad.dtype == ng.float32 and b.grad.dtype == ng.float32

    class Plain(ng.autograd.Function):
        @staticmethod
        @ng.amp.custom_fwd(device_type="cpu")
        def forward(ctx, a, b):
            return a @ b

        @staticmethod
        @ng.amp.custom_bwd(device_type="cpu")
        def backward(ctx, g):
            assert ng.is_autocast_enabled("cpu")  # the forward's state
            return (g @ ng.ones(3, 8)).float(), None

    with ng.autocast("cpu", dtype=ng.float16):
        out = Plain.apply(ng.tensor(X, requires_grad=True), ng.tensor(W.T.copy()))
    assert out.dtype == ng.float16
    out.float().sum().backward()
    with pytest.raises(TypeError, match="device_type"):
        ng.amp.custom_fwd(device_type=3)


# --- GradScaler against torch.amp.GradScaler ----------------------------------------------------
SIZES = [(6, 5), (6,), (3, 6), (3,)]
INIT = [RNG.standard_normal(s).astype(np.float32) * 0.5 for s in SIZES]
XS = RNG.standard_normal((16, 5)).astype(np.float32)
YS = RNG.standard_normal((16, 3)).astype(np.float32)
BAD = {2: np.inf, 5: np.nan, 6: -np.inf}  # step -> the value put into one gradient


def _loss(lib, ps, x, y):
    h = (x @ ps[0].T + ps[1]).tanh()
    return ((h @ ps[2].T + ps[3] - y) ** 2).mean()


def _run(lib, opt_name, opt_kw, clip, steps=9, roundtrip=4):
    mk = (lambda a: ng.tensor(a.copy(), requires_grad=True)) if lib is ng else (
        lambda a: torch.tensor(a.copy(), requires_grad=True))
    ps = [mk(a) for a in INIT]
    opt = getattr(lib.optim, opt_name)(ps, **opt_kw)
    amp = ng.amp if lib is ng else torch.amp
    kw = dict(init_scale=2.0 ** 10, growth_factor=2.0, backoff_factor=0.25, growth_interval=2)
    scaler = amp.GradScaler("cpu", **kw)
    x, y = (ng.tensor(XS), ng.tensor(YS)) if lib is ng else (torch.tensor(XS), torch.tensor(YS))
    scales, trackers, rets = [], [], []
    for k in range(steps):
        opt.zero_grad()
        scaler.scale(_loss(lib, ps, x, y)).backward()
        if k in BAD:
            if lib is ng:
                ps[2].grad.data[1, 2] = BAD[k]
            else:
                ps[2].grad[1, 2] = BAD[k]
        if clip:
            scaler.unscale_(opt)
            clip_fn = ng.nn.utils.clip_grad_norm_ if lib is ng else torch.nn.utils.clip_grad_norm_
            clip_fn(ps, 0.5)
        rets.append(scaler.step(opt))
        scaler.update()
        scales.append(scaler.get_scale())
        trackers.append(scaler.state_dict()["_growth_tracker"])
        if k == roundtrip:
            sd = scaler.state_dict()
            scaler = amp.GradScaler("cpu", **kw)
            scaler.load_state_dict(sd)
    return scales, trackers, [p.detach().numpy().copy() for p in ps]


OPTIMIZERS = [("SGD", {"lr": 0.05}), ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
              ("Adam", {"lr": 0.01}), ("AdamW", {"lr": 0.01, "weight_decay": 0.1}),
              ("RMSprop", {"lr": 0.01}), ("Adagrad", {"lr": 0.1}), ("Adadelta", {"lr": 1.0}),
              ("Adamax", {"lr": 0.01}), ("NAdam", {"lr": 0.01}), ("RAdam", {"lr": 0.01}),
              ("ASGD", {"lr": 0.01}), ("Rprop", {"lr": 0.01}), ("Adafactor", {"lr": 0.01})]


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("name,kw", OPTIMIZERS, ids=[f"{n}{i}" for i, (n, _) in
                                                     enumerate(OPTIMIZERS)])
def test_grad_scaler_matches_torch(name, kw, clip):
    ns, nt, nps = _run(ng, name, kw, clip)
    ts, tt, tps = _run(torch, name, kw, clip)
    assert ns == ts  # the same scale sequence, exactly
    assert nt == tt
    assert ns[2] < ns[1] and ns[5] < ns[4]  # the injected infs and NaN backed the scale off
    for a, b in zip(nps, tps):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


def test_grad_scaler_skips_the_step_on_inf_and_returns_steps_value():
    p = ng.tensor([1.0, 2.0], requires_grad=True)
    opt = ng.optim.SGD([p], lr=0.1)
    scaler = ng.amp.GradScaler(init_scale=4.0)
    scaler.scale((p * p).sum()).backward()
    np.testing.assert_allclose(p.grad.numpy(), [8.0, 16.0])
    p.grad.data[0] = np.inf
    scaler.step(opt)
    np.testing.assert_allclose(p.numpy(), [1.0, 2.0])  # skipped
    scaler.update()
    assert scaler.get_scale() == 2.0
    opt.zero_grad()
    scaler.scale((p * p).sum()).backward()
    scaler.step(opt)
    scaler.update()
    np.testing.assert_allclose(p.numpy(), [0.8, 1.6], rtol=1e-6)


def test_grad_scaler_stage_errors():
    p = ng.tensor([1.0, 2.0], requires_grad=True)
    opt = ng.optim.SGD([p], lr=0.1)
    scaler = ng.amp.GradScaler()
    with pytest.raises(RuntimeError, match="scale"):
        scaler.step(opt)  # nothing scaled yet
    scaler.scale((p * p).sum()).backward()
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="already called"):
        scaler.unscale_(opt)
    scaler.step(opt)
    with pytest.raises(RuntimeError, match="after step"):
        scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="already called"):
        scaler.step(opt)
    with pytest.raises(RuntimeError, match="closure"):
        scaler.step(opt, closure=lambda: None)
    scaler.update()
    with pytest.raises(RuntimeError, match="no inf checks"):
        scaler.update()
    with pytest.raises(ValueError, match="iterable of Tensors"):
        scaler.scale(3.0)
    assert isinstance(scaler.scale([p, (p,)]), list)
    with pytest.raises(ValueError, match="growth_factor"):
        ng.amp.GradScaler(growth_factor=1.0)
    with pytest.raises(ValueError, match="backoff_factor"):
        ng.amp.GradScaler(backoff_factor=1.5)
    with pytest.raises(ValueError, match="device"):
        ng.amp.GradScaler("tpu")
    h = ng.tensor([1.0], dtype=ng.float16, requires_grad=True)
    hopt = ng.optim.SGD([h], lr=0.1)
    scaler.scale((h * h).sum()).backward()
    with pytest.raises(ValueError, match="float16"):
        scaler.unscale_(hopt)


def test_grad_scaler_state_dict_and_disabled_match_torch():
    n = ng.amp.GradScaler(init_scale=8.0, growth_interval=3)
    t = torch.amp.GradScaler("cpu", init_scale=8.0, growth_interval=3)
    assert n.state_dict() == t.state_dict()
    assert n.get_scale() == t.get_scale() == 8.0
    p = ng.tensor([1.0], requires_grad=True)
    opt = ng.optim.SGD([p], lr=0.1)
    n.scale(p.sum()).backward()
    n.step(opt)
    n.update(new_scale=3.0)
    assert n.get_scale() == 3.0
    m = ng.amp.GradScaler()
    m.load_state_dict(n.state_dict())
    assert m.state_dict() == n.state_dict()
    assert pickle.loads(pickle.dumps(n)).state_dict() == n.state_dict()
    off = ng.amp.GradScaler(enabled=False)
    toff = torch.amp.GradScaler("cpu", enabled=False)
    assert not off.is_enabled() and off.state_dict() == toff.state_dict() == {}
    assert off.get_scale() == toff.get_scale() == 1.0
    loss = p.sum()
    assert off.scale(loss) is loss
    with pytest.raises(RuntimeError, match="empty"):
        n.load_state_dict({})
    for g, s in ((n.get_growth_factor, n.set_growth_factor),
                 (n.get_backoff_factor, n.set_backoff_factor),
                 (n.get_growth_interval, n.set_growth_interval)):
        s(7)
        assert g() == 7


def test_cuda_grad_scaler_without_a_gpu_is_disabled():
    if ng.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.warns(UserWarning, match="CUDA is not available"):
        s = ng.cuda.amp.GradScaler()
    assert not s.is_enabled()


def test_mlp_trains_with_autocast_and_grad_scaler():
    # MNIST-1D-like: 40-sample signals, 10 classes, random templates plus noise
    rng = np.random.default_rng(1)
    templates = rng.standard_normal((10, 40)).astype(np.float32)
    labels = rng.integers(0, 10, 512)
    data = templates[labels] + 0.5 * rng.standard_normal((512, 40)).astype(np.float32)
    ng.manual_seed(0)
    model = ng.nn.Sequential(ng.nn.Linear(40, 64), ng.nn.ReLU(), ng.nn.Linear(64, 10))
    opt = ng.optim.Adam(model.parameters(), lr=1e-2)
    scaler = ng.amp.GradScaler(init_scale=2.0 ** 16, growth_interval=5)
    x, y = ng.tensor(data), ng.tensor(labels)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        with ng.autocast("cpu", dtype=ng.float16):
            logits = model(x)
            assert logits.dtype == ng.float16
            loss = F.cross_entropy(logits, y)
            assert loss.dtype == ng.float32
        scaler.scale(loss).backward()
        assert all(p.grad.dtype == ng.float32 for p in model.parameters())
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.3 * losses[0]
    assert all(np.all(np.isfinite(p.numpy())) for p in model.parameters())


def test_w5_chain_is_unchanged_outside_a_region():
    # the W5 benchmark's chain: after a region the thread's rule is gone again (bind's fast
    # path), and the chain gives the same values and gradients as before it
    def chain():
        h = ng.tensor(X[:, :4].copy(), requires_grad=True)
        w = ng.tensor(W[0, :4].copy(), requires_grad=True)
        b = ng.tensor(B[:1].copy(), requires_grad=True)
        y = h
        for _ in range(20):
            y = ng.sin(ng.tanh(y * w + b) * 0.5)
        y.sum().backward()
        return y.numpy(), w.grad.numpy()

    before = chain()
    with ng.autocast("cpu", dtype=ng.float16):
        pass
    assert modes().autocast is None
    after = chain()
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.float32


def test_vmap_and_grad_inside_a_region():
    x, w = ng.tensor(X), ng.tensor(W)
    with ng.autocast("cpu", dtype=ng.float16):
        y = ng.vmap(lambda row: row @ w.T)(x)
        g = ng.grad(lambda w: (x @ w.T).float().sum())(w)
    assert y.dtype == ng.float16 and y.shape == (4, 3)
    np.testing.assert_allclose(y.numpy(), X @ W.T, rtol=2e-2, atol=2e-2)
    assert g.dtype == ng.float32
    np.testing.assert_allclose(g.numpy(), np.tile(X.sum(0), (3, 1)), rtol=1e-2, atol=1e-2)


def test_float32_in_region_for_composite_float32_ops():
    h = ng.tensor(X).half()
    assert ng.amp.float32_in_region(h)[0].dtype == ng.float16  # outside: unchanged
    with ng.autocast("cpu", dtype=ng.float16):
        a, i, n = ng.amp.float32_in_region(h, ng.tensor(Y), 3)
        assert a.dtype == ng.float32 and i.dtype == ng.int64 and n == 3
        with ng.autocast("cpu", enabled=False):
            assert ng.amp.float32_in_region(h)[0].dtype == ng.float16


def test_one_region_object_used_by_two_threads():
    ctx = ng.autocast("cpu", dtype=ng.float16)
    x, w = ng.tensor(X), ng.tensor(W)
    inside, leave = threading.Event(), threading.Event()
    seen = []

    def other():
        with ctx:
            inside.set()
            leave.wait(5)
            seen.append((x @ w.T).dtype)
        seen.append((x @ w.T).dtype)

    th = threading.Thread(target=other)
    th.start()
    assert inside.wait(5)
    with ctx:
        assert (x @ w.T).dtype == ng.float16
    leave.set()
    th.join(5)
    assert (x @ w.T).dtype == ng.float32
    assert seen == [ng.float16, ng.float32]


def test_grad_scaler_step_without_gradients_raises():
    p = ng.tensor([1.0], requires_grad=True)
    q = ng.tensor([1.0], requires_grad=True)
    opt = ng.optim.SGD([q], lr=0.1)
    scaler = ng.amp.GradScaler()
    scaler.scale(p.sum()).backward()
    with pytest.raises(RuntimeError, match="no inf checks"):
        scaler.step(opt)


def test_cuda_region_on_the_device(cuda):
    x, w = ng.tensor(X, device=cuda), ng.tensor(W, device=cuda, requires_grad=True)
    xc, wc = ng.tensor(X), ng.tensor(W)
    with ng.autocast("cuda"):
        assert ng.is_autocast_enabled("cuda") and not ng.is_autocast_enabled("cpu")
        y = x @ w.T
        assert y.dtype == ng.float16 and y.device.startswith("cuda")
        assert (xc @ wc.T).dtype == ng.float32  # CPU tensors: not this region's
        # PyTorch's CUDA list runs softmax, sum and exp in float32 (its CPU list does not)
        assert F.softmax(y, dim=-1).dtype == ng.float32
        assert y.sum().dtype == ng.float32 and y.exp().dtype == ng.float32
        with ng.autocast("cpu", dtype=ng.float16):
            assert (xc @ wc.T).dtype == ng.float16 and (x @ w.T).dtype == ng.float16
    y.float().sum().backward()
    assert w.grad.dtype == ng.float32 and w.grad.device.startswith("cuda")
    np.testing.assert_allclose(w.grad.numpy(), np.tile(X.sum(0), (3, 1)), rtol=1e-2, atol=1e-2)


def test_grad_scaler_on_the_device_matches_the_cpu(cuda):
    def run(device):
        p = ng.tensor(INIT[0], device=device, requires_grad=True)
        opt = ng.optim.SGD([p], lr=0.1, momentum=0.9)
        scaler = ng.amp.GradScaler(device, init_scale=2.0 ** 8, growth_interval=2)
        x = ng.tensor(XS, device=device)
        scales = []
        for k in range(5):
            opt.zero_grad()
            with ng.autocast(device, dtype=ng.float16):
                loss = (x @ p.T).float().square().mean()
            scaler.scale(loss).backward()
            if k == 2:
                p.grad.data[0, 0] = np.inf
            scaler.step(opt)
            scaler.update()
            scales.append(scaler.get_scale())
        return scales, p.numpy()

    s_dev, p_dev = run(cuda)
    s_cpu, p_cpu = run("cpu")
    assert s_dev == s_cpu == [256.0, 512.0, 256.0, 256.0, 512.0]
    np.testing.assert_allclose(p_dev, p_cpu, rtol=1e-3, atol=1e-4)


def test_current_regions_and_regions_replay_a_forwards_state():
    x, w = ng.tensor(X), ng.tensor(W, requires_grad=True)
    assert ng.amp.current_regions() == {}
    with ng.autocast("cpu", dtype=ng.float16):
        state = ng.amp.current_regions()
    assert state == {"cpu": ng.float16}
    with ng.amp.regions(state):
        assert ng.is_autocast_enabled("cpu") and (x @ w.T).dtype == ng.float16
    with ng.amp.regions({"cpu": "float16"}):  # dtype names are understood
        assert (x @ w.T).dtype == ng.float16 and ng.get_autocast_dtype("cpu") == ng.float16
    assert not ng.is_autocast_enabled("cpu")
    seen = []

    def hook(g):  # runs inside the backward: a region entered there casts there
        with ng.amp.regions(state):
            seen.append((g @ w).dtype)
        with ng.autocast("cpu", dtype=ng.float16):
            seen.append((g @ w).dtype)
        return g

    y = (x @ w.T)
    y.register_hook(hook)
    y.sum().backward()
    assert seen == [ng.float16, ng.float16]
    with ng.amp.regions({"cpu": "bfloat16"}):
        assert (x @ w.T).dtype == ng.bfloat16


def test_jitted_training_step_with_a_region_inside_matches_eager():
    def run(jit):
        ng.manual_seed(0)
        model = ng.nn.Linear(8, 3)
        opt = ng.optim.SGD(model.parameters(), lr=0.1)
        x, y = ng.tensor(XS[:, :4].repeat(2, 1)), ng.tensor(np.arange(16) % 3)

        def step(x, y):
            opt.zero_grad()
            with ng.autocast("cpu", dtype=ng.float16):
                out = model(x)
                loss = F.cross_entropy(out, y)
            loss.backward()
            opt.step()
            return loss, out

        f = ng.jit(step) if jit else step
        res = [f(x, y) for _ in range(5)]
        assert all(o.dtype == ng.float16 for _, o in res)
        return [loss.item() for loss, _ in res], model.weight.numpy()

    eager, jitted = run(False), run(True)
    assert eager[0] == jitted[0]
    np.testing.assert_array_equal(eager[1], jitted[1])


def test_checkpoint_recomputes_in_the_forwards_autocast_state():
    from nodegrad.utils.checkpoint import checkpoint
    ng.manual_seed(0)
    block = ng.nn.Sequential(ng.nn.Linear(8, 16), ng.nn.Tanh(), ng.nn.Linear(16, 3))
    x = ng.tensor(X)
    grads = []
    for wrap in (False, True):
        block.zero_grad()
        with ng.autocast("cpu", dtype=ng.float16):
            y = checkpoint(block, x) if wrap else block(x)
            loss = y.float().square().sum()
        loss.backward()
        grads.append([p.grad.numpy().copy() for p in block.parameters()])
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)
