"""The gradient problem the optimiser tests feed to nodegrad and PyTorch alike: parameters of
several shapes, a non-quadratic gradient field of the current values plus seeded noise that
depends only on the step, and PyTorch's side of a run (with a state_dict round trip)."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

SHAPES = [(4, 3), (3,), (2, 2, 2), ()]
RTOL = 1e-10


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    init = [np.asarray(rng.standard_normal(s), np.float64) for s in SHAPES]
    c = [np.asarray(rng.uniform(0.5, 2.0, s)) for s in SHAPES]
    target = [np.asarray(rng.standard_normal(s)) for s in SHAPES]
    return init, c, target


INIT, C, TARGET = _problem()


def grads_at(arrays, k):
    """A non-quadratic gradient field plus noise that depends only on the step."""
    r = np.random.default_rng(1000 + k)
    return [np.asarray(c * (a - t) + 0.1 * np.sin(3 * a) + 0.1 * r.standard_normal(a.shape),
                       np.float64) for a, c, t in zip(arrays, C, TARGET)]


def groups_of(params, groups):
    """``groups``: None (one group), or a list of (indices, overrides) dicts."""
    if groups is None:
        return params
    return [{"params": [params[i] for i in idx], **over} for idx, over in groups]


def run_torch(cls, kw, groups=None, skip=None, steps=80, roundtrip=40):
    """PyTorch's trajectory (the parameters after every step), its optimiser and parameters;
    at step ``roundtrip`` the state goes through state_dict into a fresh optimiser."""
    ps = [torch.tensor(a.copy(), requires_grad=True) for a in INIT]
    opt = getattr(torch.optim, cls)(groups_of(ps, groups), foreach=False, **kw)
    traj = []
    for k in range(steps):
        for i, (p, g) in enumerate(zip(ps, grads_at([p.detach().numpy() for p in ps], k))):
            p.grad = None if skip is not None and skip(i, k) else torch.from_numpy(g)
        opt.step()
        if k == roundtrip:
            sd = copy.deepcopy(opt.state_dict())
            opt = getattr(torch.optim, cls)(groups_of(ps, groups), foreach=False, **kw)
            opt.load_state_dict(sd)
        traj.append([p.detach().numpy().copy() for p in ps])
    return traj, opt, ps


def assert_same_trajectory(a, b, rtol=RTOL):
    """Every parameter at every step within ``rtol`` (relative to its largest entry); returns
    the worst difference."""
    assert len(a) == len(b)
    worst = 0.0
    for k, (xs, ys) in enumerate(zip(a, b)):
        for i, (x, y) in enumerate(zip(xs, ys)):
            err = np.abs(x - y).max() / max(np.abs(y).max(), 1e-300)
            worst = max(worst, err)
            assert err <= rtol, f"step {k}, parameter {i}: relative difference {err:.2e}"
    return worst


@pytest.fixture(autouse=True)
def float64_default():
    """PyTorch keeps some optimiser scalars (NAdam's mu product, ASGD's eta and mu) in the
    default dtype: make that float64 too."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
