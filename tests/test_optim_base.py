"""The optimiser base without PyTorch: steps by hand, the flat buffers, state, errors, helpers."""

import math
import tracemalloc

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.optim import SGD, Adam, AdamW, NAdam, Optimizer


def _params(dtype="float64"):
    return [ng.tensor(np.array([[1.0, -2.0], [0.5, 3.0]]), dtype=dtype, requires_grad=True),
            ng.tensor(np.array([0.25, -1.0, 2.0]), dtype=dtype, requires_grad=True)]


def _quad_grads(ps):
    """Gradient of sum(theta^2): 2 theta."""
    for p in ps:
        p.grad = ng.tensor(2 * p.numpy())


def test_exported_as_ng_optim():
    for name in ["Optimizer", "SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "NAdam",
                 "lr_scheduler", "clip_grad_norm_", "clip_grad_value_", "l2_penalty"]:
        assert hasattr(ng.optim, name), name


def test_one_sgd_step_by_hand():
    ps = _params()
    opt = SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.5)
    _quad_grads(ps)
    opt.step()  # theta - 0.1 (2 theta + 0.5 theta) = 0.75 theta
    np.testing.assert_allclose(ps[1].numpy(), 0.75 * np.array([0.25, -1.0, 2.0]), rtol=1e-15)
    _quad_grads(ps)  # b2 = 0.9 b1 + g2, b1 = 2.5 theta0, g2 = 2.5 * 0.75 theta0
    opt.step()
    theta0 = np.array([0.25, -1.0, 2.0])
    b2 = 0.9 * 2.5 * theta0 + 2.5 * 0.75 * theta0
    np.testing.assert_allclose(ps[1].numpy(), 0.75 * theta0 - 0.1 * b2, rtol=1e-15)


def test_one_adam_step_by_hand():
    """First step: m_hat = g, v_hat = g^2, so the step is lr * g / (|g| + eps) ~ lr * sign(g)."""
    ps = _params()
    opt = Adam(ps, lr=0.01, betas=(0.8, 0.9), eps=1e-3)
    theta0 = [p.numpy().copy() for p in ps]
    _quad_grads(ps)
    opt.step()
    for p, t in zip(ps, theta0):
        g = 2 * t
        np.testing.assert_allclose(p.numpy(), t - 0.01 * g / (np.abs(g) + 1e-3), rtol=1e-14)
    _quad_grads(ps)  # second step by the formulas of Kingma & Ba
    opt.step()
    for p, t in zip(ps, theta0):
        g1 = 2 * t
        t1 = t - 0.01 * g1 / (np.abs(g1) + 1e-3)
        g2 = 2 * t1
        m = 0.8 * 0.2 * g1 + 0.2 * g2
        v = 0.9 * 0.1 * g1 ** 2 + 0.1 * g2 ** 2
        mh, vh = m / (1 - 0.8 ** 2), v / (1 - 0.9 ** 2)
        np.testing.assert_allclose(p.numpy(), t1 - 0.01 * mh / (np.sqrt(vh) + 1e-3), rtol=1e-13)


def test_adamw_decay_is_decoupled():
    """With zero gradient, AdamW shrinks theta by (1 - lr wd); Adam's L2 does not act alike."""
    p = ng.tensor(np.array([1.0, -4.0]), requires_grad=True)
    opt = AdamW([p], lr=0.1, weight_decay=0.5)
    p.grad = ng.zeros(2, dtype="float64")
    opt.step()
    np.testing.assert_allclose(p.numpy(), [0.95, -3.8], rtol=1e-15)


def test_every_optimiser_descends():
    for cls, kw in [("SGD", dict(lr=0.1)), ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
                    ("Adagrad", dict(lr=0.5)), ("RMSprop", dict(lr=0.05, centered=True)),
                    ("Adadelta", dict(lr=10.0)), ("Adam", dict(lr=0.1)),
                    ("AdamW", dict(lr=0.1)), ("NAdam", dict(lr=0.1))]:
        ps = _params()
        opt = getattr(ng.optim, cls)(ps, **kw)
        start = sum(float((p * p).sum()) for p in ps)
        for _ in range(50):
            opt.zero_grad()
            loss = sum(((p * p).sum() for p in ps), ng.tensor(0.0, dtype="float64"))
            loss.backward()
            opt.step()
        assert float(loss) < 0.5 * start, (cls, kw)


def test_float32_stays_float32_and_params_share_one_buffer():
    ps = _params("float32")
    opt = Adam(ps, lr=0.1)
    assert ps[0]._data.base is ps[1]._data.base is opt._buckets[0][0].flat
    _quad_grads(ps)
    opt.step()
    assert all(p.dtype == np.float32 for p in ps)
    assert all(a.dtype == np.float32 for a in opt._buckets[0][0].arrays.values())


def test_flat_and_per_tensor_paths_agree():
    out = []
    for flat in (True, False):
        ps = _params()
        opt = NAdam(ps, lr=0.05, weight_decay=0.1, flat=flat)
        for _ in range(20):
            _quad_grads(ps)
            opt.step()
        out.append([p.numpy().copy() for p in ps])
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


def test_step_allocates_nothing_that_grows_with_the_model():
    rng = np.random.default_rng(0)
    ps = [ng.tensor(rng.standard_normal((100, 100)).astype(np.float32), requires_grad=True)
          for _ in range(20)]
    grads = [ng.tensor(rng.standard_normal((100, 100)).astype(np.float32)) for _ in ps]
    opt = Adam(ps, lr=1e-3, weight_decay=1e-2, amsgrad=True)
    for p, g in zip(ps, grads):
        p.grad = g
    opt.step()  # first step allocates state and scratch once
    tracemalloc.start()
    for _ in range(3):
        opt.step()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    model_bytes = 20 * 100 * 100 * 4
    assert peak < model_bytes / 20, peak


def test_zero_grad_in_place_gives_views_of_one_flat_buffer():
    ps = _params()
    opt = SGD(ps, lr=0.1)
    (ps[0].sum() + (ps[1] * ps[1]).sum()).backward()
    opt.step()
    opt.zero_grad(set_to_none=False)
    b = opt._buckets[0][0]
    assert all(p.grad._data.base is b.grad for p in ps)
    assert all(float(abs(p.grad).sum()) == 0 for p in ps)
    before = [p.numpy().copy() for p in ps]
    (ps[0].sum() + (ps[1] * ps[1]).sum()).backward()  # accumulates into the views
    assert all(p.grad._data.base is b.grad for p in ps)
    opt.step()
    np.testing.assert_allclose(ps[1].numpy(), before[1] * 0.8)
    opt.zero_grad()
    assert all(p.grad is None for p in ps)


def test_parameter_data_replaced_is_followed():
    ps = _params()
    opt = SGD(ps, lr=0.1)
    ps[1]._data = np.array([1.0, 1.0, 1.0])  # same shape and dtype: copied into the buffer
    _quad_grads(ps)
    opt.step()
    np.testing.assert_allclose(ps[1].numpy(), [0.8, 0.8, 0.8])
    assert ps[1]._data.base is opt._buckets[0][0].flat
    ps[0]._data = ps[0]._data.astype(np.float32)  # new dtype: the group is rebuilt, state kept
    ps[1]._data = ps[1]._data.astype(np.float32)
    _quad_grads(ps)
    opt.step()
    assert ps[0].dtype == np.float32 and ps[0]._data.base is opt._buckets[0][0].flat
    np.testing.assert_allclose(ps[1].numpy(), [0.64] * 3, rtol=1e-6)


def test_frozen_parameters_get_their_own_buffer():
    a, b = ng.ones(3, requires_grad=True), ng.ones(2)
    opt = SGD([a, b], lr=0.1)
    assert len(opt._buckets[0]) == 2
    a.grad = ng.ones(3)
    opt.step()
    np.testing.assert_allclose(a.numpy(), 0.9)
    np.testing.assert_allclose(b.numpy(), 1.0)


def test_state_dict_is_a_snapshot_and_round_trips():
    ps = _params()
    opt = Adam(ps, lr=0.1, amsgrad=True)
    _quad_grads(ps)
    opt.step()
    sd = opt.state_dict()
    assert sd["step_count"] == 1 and sorted(sd["state"]) == [0, 1]
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert sd["state"][0]["exp_avg"].shape == (2, 2)
    saved = sd["state"][1]["exp_avg"].copy()
    _quad_grads(ps)
    opt.step()
    np.testing.assert_array_equal(sd["state"][1]["exp_avg"], saved)  # a copy, not a view
    live = opt.state[ps[1]]
    assert live["step"] == 2 and live["exp_avg"]._data.base is not None
    opt2 = Adam(ps, lr=0.5)
    opt2.load_state_dict(opt.state_dict())
    assert opt2.param_groups[0]["lr"] == 0.1 and opt2.step_count == 2
    for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        np.testing.assert_array_equal(opt2.state[ps[0]][k], opt.state[ps[0]][k])


def test_named_parameters_and_strict_error_names_the_parameter():
    ps = _params()
    opt = SGD([("fc.weight", ps[0]), ("fc.bias", ps[1])], lr=0.1, strict=True)
    assert opt.param_groups[0]["param_names"] == ["fc.weight", "fc.bias"]
    ps[0].grad = ng.ones(2, 2, dtype="float64")
    with pytest.raises(ng.GradError, match=r"'fc.bias' \(group 0, index 1, shape \(3,\)\) has no "
                                           "gradient"):
        opt.step()
    lenient = SGD(ps, lr=0.1)
    lenient.step()  # PyTorch's default: skip it
    np.testing.assert_allclose(ps[0].numpy(), [[0.9, -2.1], [0.4, 2.9]])


def test_load_state_dict_errors():
    ps = _params()
    adam = Adam(ps, lr=0.1)
    _quad_grads(ps)
    adam.step()
    sd = adam.state_dict()
    with pytest.raises(ValueError, match=r"lacks the hyperparameters \['dampening', 'momentum'"):
        SGD(ps, lr=0.1, momentum=0.9).load_state_dict(sd)
    sd_ams = Adam(ps, amsgrad=True).state_dict()
    sd_ams["state"] = sd["state"]
    with pytest.raises(ValueError, match=r"missing \['max_exp_avg_sq'\], unexpected \[\]"):
        Adam(ps).load_state_dict(sd_ams)
    with pytest.raises(ValueError, match="1 parameter group.*this optimizer has 2"):
        Adam([{"params": [ps[0]]}, {"params": [ps[1]]}]).load_state_dict(sd)
    with pytest.raises(ValueError, match="group 0 has 2 parameter.*1 here"):
        Adam([ps[0]]).load_state_dict(sd)
    other = [ng.zeros(3, dtype="float64", requires_grad=True),
             ng.zeros(2, 2, dtype="float64", requires_grad=True)]
    with pytest.raises(ng.ShapeError, match=r"'exp_avg' of parameter \(group 0, index 0, "
                                            r"shape \(3,\)\) has shape \(2, 2\)"):
        Adam(other).load_state_dict(sd)
    with pytest.raises(ValueError, match="'state' and 'param_groups'"):
        Adam(ps).load_state_dict({"x": 1})


def test_constructor_errors():
    x = ng.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(TypeError, match="wrap it in a list"):
        SGD(x, lr=0.1)
    with pytest.raises(TypeError, match="only optimize Tensors.*ndarray"):
        SGD([np.ones(2)], lr=0.1)
    with pytest.raises(ValueError, match="non-leaf"):
        SGD([x * 2], lr=0.1)
    with pytest.raises(ValueError, match="more than once"):
        SGD([{"params": [x]}, {"params": [x]}], lr=0.1)
    with pytest.raises(ValueError, match="invalid lr"):
        Adam([x], lr=-1.0)
    with pytest.raises(ValueError, match=r"invalid betas\[1\]"):
        Adam([x], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="Nesterov"):
        SGD([x], lr=0.1, nesterov=True)
    with pytest.raises(TypeError, match="dtype int64"):
        SGD([ng.tensor([1, 2])], lr=0.1)


def test_hyperparameter_callables_of_the_step():
    p = ng.tensor(np.array([1.0]), requires_grad=True)
    seen = []

    def lr(t):
        seen.append(t)
        return 0.1 / math.sqrt(t)

    opt = SGD([p], lr=lr)
    for _ in range(3):
        p.grad = ng.ones(1, dtype="float64")
        opt.step()
    assert seen == [1, 2, 3] and opt.step_count == 3
    np.testing.assert_allclose(p.numpy(), 1 - 0.1 * (1 + 1 / math.sqrt(2) + 1 / math.sqrt(3)))


def test_closure_and_add_param_group():
    a, b = ng.ones(2, requires_grad=True), ng.ones(2, requires_grad=True)
    opt = SGD([a], lr=0.1)
    opt.add_param_group({"params": [b], "lr": 0.5})

    def closure():
        opt.zero_grad()
        loss = (a * a).sum() + (b * b).sum()
        loss.backward()
        return loss

    assert float(opt.step(closure)) == 4.0
    np.testing.assert_allclose(a.numpy(), 0.8)
    np.testing.assert_allclose(b.numpy(), 0.0)


def test_l2_penalty_equals_sgd_weight_decay():
    """A loss term gamma ||theta||^2 is SGD weight_decay = 2 gamma (its gradient: 2 gamma theta)."""
    ps1, ps2 = _params(), _params()
    o1, o2 = SGD(ps1, lr=0.1), SGD(ps2, lr=0.1, weight_decay=2 * 0.05)
    for _ in range(10):
        for ps, opt, penalty in ((ps1, o1, True), (ps2, o2, False)):
            opt.zero_grad()
            loss = ps[0].sum() + ps[1].sum()
            if penalty:
                loss = loss + ng.optim.l2_penalty(ps, 0.05)
            loss.backward()
            opt.step()
    for a, b in zip(ps1, ps2):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-14)
    val = ng.optim.l2_penalty(_params(), 0.5)
    assert float(val) == pytest.approx(0.5 * (1 + 4 + 0.25 + 9 + 0.0625 + 1 + 4))


def test_clip_without_torch():
    a, b = ng.zeros(2, requires_grad=True), ng.zeros(1, requires_grad=True)
    a.grad, b.grad = ng.tensor([3.0, 0.0]), ng.tensor([4.0])
    n = ng.optim.clip_grad_norm_([a, b], 1.0)
    assert float(n) == pytest.approx(5.0)
    np.testing.assert_allclose(a.grad.numpy(), [0.6, 0.0], rtol=1e-5)
    a.grad = ng.tensor([np.inf, 0.0])
    with pytest.raises(RuntimeError, match="non-finite"):
        ng.optim.clip_grad_norm_([a, b], 1.0, error_if_nonfinite=True)
    a.grad = ng.tensor([3.0, -7.0])
    ng.optim.clip_grad_value_(a, 2.0)
    np.testing.assert_array_equal(a.grad.numpy(), [2.0, -2.0])
    assert float(ng.optim.clip_grad_norm_([ng.zeros(1, requires_grad=True)], 1.0)) == 0.0


def test_custom_optimizer_writes_only_its_update():
    class SignSGD(Optimizer):
        def __init__(self, params, lr=0.01):
            super().__init__(params, dict(lr=lr))

        def update(self, xp, p, g, st, h):
            tmp = st.tmp(0)
            xp.sign(g, out=tmp)
            tmp *= h["lr"]
            p -= tmp

    ps = _params()
    _quad_grads(ps)
    SignSGD(ps, lr=0.5).step()
    np.testing.assert_allclose(ps[1].numpy(), [-0.25, -0.5, 1.5])


def test_with_nn_modules_named_parameters_and_dtype_change():
    nn = getattr(ng, "nn", None)
    if nn is None or not hasattr(nn, "Linear"):
        pytest.skip("nodegrad.nn not available")
    ng.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    decay = [p for p in model.parameters() if p.ndim > 1]  # no decay on biases: one group each
    rest = [p for p in model.parameters() if p.ndim <= 1]
    opt = AdamW([{"params": decay}, {"params": rest, "weight_decay": 0.0}], lr=1e-2)
    x, y = ng.randn(16, 3), ng.randn(16, 2)

    def train(n, x, y):
        for _ in range(n):
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
        return float(loss)

    first = float(((model(x) - y) ** 2).mean())
    assert train(60, x, y) < first
    model.load_state_dict(model.state_dict())  # in place: the parameters stay flat views
    assert all(p._data.base is opt._buckets[0][0].flat for p in decay)
    model.double()  # p.data replaced by float64 arrays: the optimizer follows, state kept
    before = opt.state[decay[0]]["exp_avg"].numpy().copy()
    train(1, x.double(), y.double())
    assert opt.state[decay[0]]["exp_avg"].dtype == np.float64
    assert opt.state[decay[0]]["step"] == 61
    after = opt.state[decay[0]]["exp_avg"].numpy()
    assert np.abs(after - before).max() < 0.5 * np.abs(before).max()


def test_an_eps_that_is_zero_in_the_parameters_dtype_warns_at_the_callers_line():
    """Adam's default 1e-8 is 0 in float16: where a gradient's square underflows the update
    divides by zero (PyTorch's too). The warning names the fix and points at the user's line."""
    import warnings

    import numpy as np

    half = ng.nn.Parameter(ng.full((4,), 1e-3, dtype=ng.float16))
    with pytest.warns(RuntimeWarning, match=r"AdamW: eps=1e-08 is 0 in float16.*eps=1e-4") as w:
        opt = ng.optim.AdamW([half])
    assert w[0].filename == __file__
    half.grad = ng.full((4,), 1e-3, dtype=ng.float16)  # its square underflows to 0
    with np.errstate(divide="ignore", invalid="ignore"):
        opt.step()
    assert not np.isfinite(half.numpy()).all()  # what the warning foretold
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ng.optim.Adam([ng.nn.Parameter(ng.ones(4, dtype=ng.float16))], eps=1e-4)
        ng.optim.Adam([ng.nn.Parameter(ng.ones(4))])
        ng.optim.SGD([half], lr=0.1)


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_views_taken_before_the_optimiser_follow_its_steps(name):
    """The optimiser gathers its parameters into one buffer; a view taken before (an expand a
    distribution keeps, a slice, a view of a view, a detach()) must see every step and carry
    gradients, as views of PyTorch's parameters do."""
    torch = pytest.importorskip("torch")
    recs = []
    for lib in (torch, ng):
        a = lib.nn.Parameter(lib.tensor([1.0, -2.0]))
        s = lib.nn.Parameter(lib.tensor([0.5, 3.0, 1.0]))
        v, sl, d = a.expand(3, 2), s[1:], a.detach()
        vv = v[1]
        opt = getattr(lib.optim, name)([a, s], lr=0.1)
        rec = []
        for _ in range(3):
            opt.zero_grad()
            ((v * v).sum() + (sl * vv.sum()).sum()).backward()
            opt.step()
            rec.append([x.detach().numpy().copy() for x in (a, s, v, sl, d, vv, a.grad)])
        recs.append(rec)
    for got, want in zip(recs[1], recs[0]):
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
