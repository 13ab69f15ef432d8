"""optim.Muon against torch.optim.Muon: 20 steps of iterates in float64 (torch's Newton-Schulz
run in the parameter's dtype, as nodegrad's) and float32 against stock torch (bfloat16
iteration) within its rounding, the options, the state dict round trip and the errors."""

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")
TM = pytest.importorskip("torch.optim._muon")


def _same_dtype_ns(grad, coefficients, steps, eps):
    """torch's _zeropower_via_newtonschulz without its bfloat16 cast."""
    a, b, c = coefficients
    X = grad.clone()
    if grad.size(0) > grad.size(1):
        X = X.T
    X.div_(X.norm().clamp(min=eps))
    for _ in range(steps):
        G = X @ X.T
        X = torch.addmm(X, torch.addmm(G, G, G, beta=b, alpha=c), X, beta=a)
    return X.T if grad.size(0) > grad.size(1) else X


SHAPES = [(5, 3), (3, 4), (4, 4)]


def _run(kw, dtype, steps=20, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    W = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    T = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    ps = [ng.tensor(w.copy(), requires_grad=True) for w in W]
    ts = [torch.tensor(w.copy(), requires_grad=True) for w in W]
    o, to = ng.optim.Muon(ps, **kw), torch.optim.Muon(ts, **kw)
    for _ in range(steps):
        o.zero_grad()
        sum((p * p * p).sum() + (p * ng.tensor(t)).sum() for p, t in zip(ps, T)).backward()
        o.step()
        to.zero_grad()
        sum((p * p * p).sum() + (p * torch.tensor(t)).sum() for p, t in zip(ts, T)).backward()
        to.step()
    return ps, ts, o, to


KWS = [{}, {"nesterov": False, "weight_decay": 0.0}, {"lr": 0.02, "momentum": 0.9,
       "adjust_lr_fn": "match_rms_adamw"}, {"adjust_lr_fn": "original", "ns_steps": 3,
                                            "ns_coefficients": (2.0, -1.5, 0.5)}]


@pytest.mark.parametrize("kw", KWS, ids=range(len(KWS)))
def test_twenty_float64_steps_match_torch(monkeypatch, kw):
    monkeypatch.setattr(TM, "_zeropower_via_newtonschulz", _same_dtype_ns)
    ps, ts, o, to = _run(kw, np.float64)
    for p, t in zip(ps, ts):
        np.testing.assert_allclose(p.numpy(), t.detach().numpy(), atol=1e-12, rtol=1e-12)
    for i in range(len(ps)):
        np.testing.assert_allclose(np.asarray(o.state_dict()["state"][i]["momentum_buffer"]),
                                   to.state_dict()["state"][i]["momentum_buffer"].numpy(),
                                   atol=1e-12)


def test_float32_matches_stock_torch_within_bfloat16_rounding():
    ps, ts, _, _ = _run({"lr": 0.01}, np.float32, steps=5)
    for p, t in zip(ps, ts):
        assert p.dtype == np.float32
        np.testing.assert_allclose(p.numpy(), t.detach().numpy(), atol=2e-3, rtol=1e-3)


def test_newton_schulz_orthogonalises():
    from nodegrad.optim.muon import zeropower_via_newtonschulz
    G = np.random.default_rng(1).standard_normal((6, 4))
    s = np.linalg.svd(zeropower_via_newtonschulz(np, G, steps=10), compute_uv=False)
    assert s.min() > 0.5 and s.max() < 1.5  # US'Vᵀ with S' near 1


def test_state_dict_round_trip_continues_the_trajectory():
    rng = np.random.default_rng(2)
    w0, target = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))

    def steps(p, opt, n):
        for _ in range(n):
            opt.zero_grad()
            ((p - ng.tensor(target)) ** 2).sum().backward()
            opt.step()

    a = ng.tensor(w0.copy(), requires_grad=True)
    oa = ng.optim.Muon([a], lr=0.05)
    steps(a, oa, 10)
    b = ng.tensor(a.numpy().copy(), requires_grad=True)
    ob = ng.optim.Muon([b], lr=0.05)
    ob.load_state_dict(oa.state_dict())
    steps(a, oa, 10)
    steps(b, ob, 10)
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_errors():
    with pytest.raises(ValueError, match="Muon only supports 2-d parameters"):
        ng.optim.Muon([ng.zeros(3, requires_grad=True)])
    w = ng.zeros(2, 2, requires_grad=True)
    with pytest.raises(ValueError, match="adjust_lr_fn must be"):
        ng.optim.Muon([w], adjust_lr_fn="sqrt")
    with pytest.raises(ValueError, match="ns_steps must be"):
        ng.optim.Muon([w], ns_steps=100)
    with pytest.raises(ValueError):
        ng.optim.Muon([w], lr=-1.0)
