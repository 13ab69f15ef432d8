"""Regressions found comparing the optimisers with PyTorch's: a tensor learning rate (PyTorch's
``lr=torch.tensor(...)``), PyTorch's Muon state dict and a state with None buffers loaded,
RMSprop's alpha above 1 refused, and deepcopy / pickle of an optimiser."""

import copy

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")

SHAPES = [(4, 3), (3,), ()]


@pytest.fixture(autouse=True)
def float64_default():
    """PyTorch keeps some optimiser scalars (NAdam's mu product, ASGD's eta) in the default
    dtype: float64 here, as the parameters."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _grads(arrays, k):
    r = np.random.default_rng(100 + k)
    return [np.asarray(1.5 * a + 0.1 * np.sin(3 * a) + 0.1 * r.standard_normal(a.shape))
            for a in arrays]


def _init():
    rng = np.random.default_rng(0)
    return [rng.standard_normal(s) for s in SHAPES]


TENSOR_LR = [("SGD", dict(momentum=0.9, nesterov=True)), ("Adam", dict(amsgrad=True)),
             ("AdamW", dict(weight_decay=0.1)), ("Adamax", {}), ("NAdam", {}), ("RAdam", {}),
             ("RMSprop", dict(centered=True)), ("Adagrad", dict(lr_decay=0.01)),
             ("Adadelta", {}), ("ASGD", dict(t0=2)), ("Rprop", {}), ("Adafactor", {})]


@pytest.mark.parametrize("cls,kw", TENSOR_LR, ids=[c for c, _ in TENSOR_LR])
def test_a_tensor_lr_is_read_each_step_as_in_torch(cls, kw):
    """``lr`` a 0-d tensor: the same trajectory as PyTorch's, and an in-place change of the
    tensor between steps takes effect (it crashed in the update)."""
    ps = [ng.tensor(a.copy(), requires_grad=True) for a in _init()]
    ts = [torch.tensor(a.copy(), requires_grad=True) for a in _init()]
    lr, tlr = ng.tensor(0.05, dtype=ng.float64), torch.tensor(0.05, dtype=torch.float64)
    o = getattr(ng.optim, cls)(ps, lr=lr, **kw)
    to = getattr(torch.optim, cls)(ts, lr=tlr, foreach=False, **kw)
    for k in range(12):
        if k == 6:
            lr.data[...] = 0.02
            tlr.fill_(0.02)
        for p, t, g in zip(ps, ts, _grads([p.numpy() for p in ps], k)):
            p.grad, t.grad = ng.tensor(g), torch.tensor(g)
        o.step()
        to.step()
        for p, t in zip(ps, ts):
            np.testing.assert_allclose(p.numpy(), t.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_a_tensor_lr_with_more_than_one_number_is_refused():
    p = ng.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(ValueError, match=r"invalid lr: a tensor of shape \(2,\)"):
        ng.optim.Adam([p], lr=ng.tensor([0.1, 0.2]))
    o = ng.optim.Adam([p], lr=0.1)
    o.param_groups[0]["lr"] = ng.tensor([0.1, 0.2])
    p.grad = ng.ones(2)
    with pytest.raises(ValueError, match="Adam: hyperparameter 'lr' is a tensor of shape"):
        o.step()


def test_muon_loads_pytorchs_state_dict_and_continues(monkeypatch):
    """PyTorch's Muon has no ``maximize`` (its groups lack it): loading its state dict raised
    'lacks the hyperparameters'. Now it loads and the next steps are PyTorch's."""
    tm = pytest.importorskip("torch.optim._muon")

    def same_dtype_ns(grad, coefficients, steps, eps):  # torch's without its bfloat16 cast
        a, b, c = coefficients
        X = grad.T if grad.size(0) > grad.size(1) else grad.clone()
        X = X / X.norm().clamp(min=eps)
        for _ in range(steps):
            G = X @ X.T
            X = torch.addmm(X, torch.addmm(G, G, G, beta=b, alpha=c), X, beta=a)
        return X.T if grad.size(0) > grad.size(1) else X

    monkeypatch.setattr(tm, "_zeropower_via_newtonschulz", same_dtype_ns)
    rng = np.random.default_rng(1)
    w = [rng.standard_normal(s) for s in [(5, 3), (3, 4)]]
    ts = [torch.tensor(a.copy(), requires_grad=True) for a in w]
    to = torch.optim.Muon([{"params": ts[:1], "lr": 0.02}, {"params": ts[1:]}], lr=0.01)

    def step(opt, ps, lib):
        opt.zero_grad()
        sum((p * p * p).sum() for p in ps).backward()
        opt.step()

    for _ in range(4):
        step(to, ts, torch)
    sd = copy.deepcopy(to.state_dict())
    sd["state"] = {i: {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in e.items()}
                   for i, e in sd["state"].items()}
    ps = [ng.tensor(t.detach().numpy().copy(), requires_grad=True) for t in ts]
    o = ng.optim.Muon([{"params": ps[:1], "lr": 0.02}, {"params": ps[1:]}], lr=0.01)
    o.load_state_dict(sd)
    for _ in range(3):
        step(to, ts, torch)
        step(o, ps, ng)
        for p, t in zip(ps, ts):
            np.testing.assert_allclose(p.numpy(), t.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_rmsprop_refuses_an_alpha_above_one():
    """PyTorch takes alpha > 1 and its steps turn NaN (the running average of g² goes
    negative); here a clear error. alpha = 1 (no averaging) stays legal."""
    p = ng.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(ValueError, match=r"RMSprop: invalid alpha: 1.5 \(expected a value in"):
        ng.optim.RMSprop([p], alpha=1.5)
    ng.optim.RMSprop([p], alpha=1.0)


def test_a_torch_state_with_none_buffers_loads():
    """PyTorch's SGD keeps ``momentum_buffer: None`` for a buffer not made yet (older
    versions save it so with momentum 0); PyTorch loads it, here it was refused as another
    optimiser's state."""
    p = ng.tensor(np.array([1.0, 2.0]), requires_grad=True)
    t = torch.tensor([1.0, 2.0], requires_grad=True)
    o, to = ng.optim.SGD([p], lr=0.1, momentum=0.9), torch.optim.SGD([t], lr=0.1, momentum=0.9)
    sd = copy.deepcopy(to.state_dict())
    sd["state"] = {0: {"momentum_buffer": None}}
    o.load_state_dict(sd)
    to.load_state_dict(sd)
    for _ in range(3):
        p.grad, t.grad = ng.tensor(np.array([0.5, -1.0])), torch.tensor([0.5, -1.0])
        o.step()
        to.step()
    np.testing.assert_allclose(p.numpy(), t.detach().numpy(), rtol=1e-14)


@pytest.mark.parametrize("cls,kw", [("SGD", dict(lr=0.05, momentum=0.9)),
                                    ("Adam", dict(lr=0.01, amsgrad=True)),
                                    ("Adafactor", dict(lr=0.01)), ("LBFGS", dict(max_iter=3))])
def test_deepcopy_and_pickle_of_an_optimizer_continue_as_the_original(cls, kw):
    """``copy.deepcopy((model, opt))`` and pickle, as PyTorch allows: they raised 'cannot pickle
    module object'. The copies step their own copied parameters exactly as the original; the
    hooks stay behind, as PyTorch's."""
    import pickle

    ng.manual_seed(0)
    m = ng.nn.Sequential(ng.nn.Linear(4, 5), ng.nn.Tanh(), ng.nn.Linear(5, 2)).to(ng.float64)
    ps = list(m.parameters())
    opt = getattr(ng.optim, cls)(ps if cls == "LBFGS" else [{"params": ps[:1]},
                                                            {"params": ps[1:]}], **kw)
    x = ng.randn(6, 4).to(ng.float64)

    def step(m, opt):
        def closure():
            opt.zero_grad()
            loss = (m(x) ** 2).mean()
            loss.backward()
            return loss
        opt.step(closure)

    for _ in range(3):
        step(m, opt)
    opt.register_step_post_hook(lambda *a: None)
    copies = [copy.deepcopy((m, opt)), pickle.loads(pickle.dumps((m, opt)))]
    assert all(not o._optimizer_step_post_hooks for _, o in copies)
    for _ in range(3):
        for mm, oo in [(m, opt)] + copies:
            step(mm, oo)
    for mm, _ in copies:
        for a, b in zip(m.parameters(), mm.parameters()):
            assert a is not b and np.array_equal(a.numpy(), b.numpy())


def test_a_scheduler_writes_a_tensor_lr_in_place_as_pytorch():
    """PyTorch fills a tensor lr in place (whoever holds it sees the schedule) and keeps
    initial_lr apart; the schedule replaced the tensor by a new one each step."""
    w = ng.randn(3, requires_grad=True)
    lr = ng.tensor(0.1, dtype=ng.float64)
    opt = ng.optim.SGD([w], lr=lr)
    sched = ng.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    for want in (0.05, 0.025, 0.0125):
        (w * w).sum().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        assert opt.param_groups[0]["lr"] is lr and float(lr) == want
    assert float(opt.param_groups[0]["initial_lr"]) == 0.1
