"""Optimisers against PyTorch's: argument checks, state before the first step, and steps."""

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")


def _both(name: str, init: list, kw: dict):
    """The same float64 parameters in both libraries and each library's optimiser."""
    ps = [ng.tensor(a.copy(), requires_grad=True) for a in init]
    tps = [torch.nn.Parameter(torch.tensor(a.copy())) for a in init]
    return ps, tps, getattr(ng.optim, name)(ps, **kw), getattr(torch.optim, name)(tps, **kw)


@pytest.mark.parametrize("kw", [dict(lr=0.0), dict(lr=0), dict(lr=-0.0), dict(eps=0.0)])
def test_sparse_adam_refuses_a_zero_lr_or_eps_as_torch(kw):
    with pytest.raises(ValueError):
        torch.optim.SparseAdam([torch.nn.Parameter(torch.ones(2, 2))], **kw)
    with pytest.raises(ValueError, match="SparseAdam: invalid (lr|eps).*expected > 0"):
        ng.optim.SparseAdam([ng.tensor(np.ones((2, 2), np.float32), requires_grad=True)], **kw)


def test_sparse_adam_refuses_complex_parameters_as_torch():
    with pytest.raises(ValueError, match="complex"):
        torch.optim.SparseAdam([torch.nn.Parameter(torch.ones(2, 2, dtype=torch.complex64))])
    with pytest.raises(ValueError, match="SparseAdam does not support complex"):
        ng.optim.SparseAdam([ng.tensor(np.ones((2, 2), np.complex64), requires_grad=True)])


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_adagrad_has_its_state_before_the_first_step_as_torch(dtype):
    init = [np.ones(3, dtype), np.full((2, 2), 2.0, dtype)]
    ps, tps, opt, topt = _both("Adagrad", init, dict(lr=0.1, initial_accumulator_value=0.5))
    for p, tp in zip(ps, tps):
        e, te = opt.state[p], topt.state[tp]
        assert set(e) == set(te) == {"step", "sum"}
        assert e["step"].dtype == np.float32 and e["step"].item() == te["step"].item() == 0
        np.testing.assert_array_equal(e["sum"].numpy(), te["sum"].numpy())
    for e, te in zip(opt.state_dict()["state"].values(), topt.state_dict()["state"].values()):
        np.testing.assert_array_equal(e["sum"].numpy(), te["sum"].numpy())
    # a change made through the state before the first step is what that step reads
    opt.state[ps[1]]["sum"].fill_(4.0)
    topt.state[tps[1]]["sum"].fill_(4.0)
    np.testing.assert_array_equal(opt.state_dict()["state"][1]["sum"].numpy(),
                                  topt.state_dict()["state"][1]["sum"].numpy())
    for p, tp in zip(ps, tps):
        p.grad = ng.ones_like(p)
        tp.grad = torch.ones_like(tp)
    opt.step()
    topt.step()
    for p, tp in zip(ps, tps):
        np.testing.assert_allclose(p.numpy(), tp.detach().numpy(), rtol=1e-14)


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_a_tensor_lr_with_foreach_is_refused_as_torch(name):
    with pytest.raises(ValueError, match="lr as a Tensor is not supported"):
        getattr(torch.optim, name)([torch.nn.Parameter(torch.ones(2))], lr=torch.tensor(0.01),
                                   foreach=True)
    p = ng.tensor(np.ones(2, np.float32), requires_grad=True)
    with pytest.raises(ValueError, match=f"{name}: lr as a Tensor is not supported"):
        getattr(ng.optim, name)([p], lr=ng.tensor(0.01), foreach=True)
    for kw in (dict(foreach=False), dict(foreach=True, capturable=True), dict()):
        getattr(torch.optim, name)([torch.nn.Parameter(torch.ones(2))], lr=torch.tensor(0.01),
                                   **kw)
        getattr(ng.optim, name)([p], lr=ng.tensor(0.01), **kw)


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_lbfgs_state_holds_tensors_as_torch(line_search_fn):
    rng = np.random.default_rng(3)
    a, y = rng.standard_normal((5, 3)), rng.standard_normal(5)
    ps, tps, opt, topt = _both("LBFGS", [rng.standard_normal(3)],
                               dict(max_iter=3, line_search_fn=line_search_fn))

    def loss(lib, w, o):
        o.zero_grad()
        r = lib.tensor(a) @ w - lib.tensor(y)
        out = (r * r).sum()
        out.backward()
        return out

    for _ in range(2):
        opt.step(lambda: loss(ng, ps[0], opt))
        topt.step(lambda: loss(torch, tps[0], topt))
    e, te = opt.state[ps[0]], topt.state[tps[0]]
    assert set(e) == set(te)
    for key in ("d", "prev_flat_grad", "old_dirs", "old_stps"):
        v, tv = e[key], te[key]
        if key.startswith("old"):
            assert len(v) == len(tv) and all(isinstance(x, ng.Tensor) for x in v)
            v, tv = v[-1], tv[-1]
        assert isinstance(v, ng.Tensor), (key, type(v))
        np.testing.assert_allclose(v.numpy(), tv.numpy(), rtol=1e-10, atol=1e-14)
    assert e["n_iter"] == te["n_iter"] and e["func_evals"] == te["func_evals"]
    # the tensors are the state the next step reads, and a name assigned is kept
    e["d"].mul_(0.0)
    assert not opt.state[ps[0]]["d"].numpy().any()
    e["n_iter"] = 0
    assert opt.state[ps[0]]["n_iter"] == 0


@pytest.mark.parametrize("name,key", [("NAdam", "mu_product"), ("ASGD", "eta"), ("ASGD", "mu")])
def test_per_parameter_numbers_in_the_state_are_tensors_as_torch(name, key):
    ps, tps, opt, topt = _both(name, [np.ones(3)], dict(lr=0.1, t0=1.0) if name == "ASGD"
                               else dict(lr=0.1))
    for _ in range(3):
        ps[0].grad = ng.ones_like(ps[0])
        tps[0].grad = torch.ones_like(tps[0])
        opt.step()
        topt.step()
    v, tv = opt.state[ps[0]][key], topt.state[tps[0]][key]
    assert isinstance(v, ng.Tensor) and v.shape == () and isinstance(tv, torch.Tensor)
    assert v.dtype == np.float32 and tv.dtype == torch.float32
    np.testing.assert_allclose(v.item(), tv.item(), rtol=1e-7)
    # assigning one is what the next step reads
    opt.state[ps[0]][key] = ng.tensor(0.5)
    topt.state[tps[0]][key].fill_(0.5)
    ps[0].grad = ng.ones_like(ps[0])
    tps[0].grad = torch.ones_like(tps[0])
    opt.step()
    topt.step()
    np.testing.assert_allclose(ps[0].numpy(), tps[0].detach().numpy(), rtol=1e-7)


@pytest.mark.parametrize("name", ["Adam", "NAdam", "ASGD", "Adagrad"])
def test_zero_d_state_follows_a_float64_default_dtype_as_torch(name):
    torch.set_default_dtype(torch.float64)
    ng.set_default_dtype(ng.float64)
    try:
        ps, tps, opt, topt = _both(name, [np.ones(2)], {})
        ps[0].grad = ng.ones_like(ps[0])
        tps[0].grad = torch.ones_like(tps[0])
        opt.step()
        topt.step()
        for e, te in ((opt.state[ps[0]], topt.state[tps[0]]),
                      (opt.state_dict()["state"][0], topt.state_dict()["state"][0])):
            zero_d = {k: str(v.dtype) for k, v in e.items() if v.ndim == 0}
            assert zero_d == {k: str(v.dtype).replace("torch.", "") for k, v in te.items()
                              if v.ndim == 0}
            assert zero_d["step"] == "float64"
    finally:
        torch.set_default_dtype(torch.float32)
        ng.set_default_dtype(ng.float32)


@pytest.mark.parametrize("name", ["Adam", "LBFGS"])
@pytest.mark.parametrize("saved,here", [("w", "v"), ("w", None), (None, "v")])
def test_param_names_never_refuse_a_load_and_saved_ones_win_as_torch(name, saved, here):
    def make(lib, names):
        p = (ng.tensor(np.ones(2), requires_grad=True) if lib is ng
             else torch.nn.Parameter(torch.ones(2, dtype=torch.float64)))
        return getattr(lib.optim, name)([(names, p)] if names else [p])

    for lib in (torch, ng):
        src, dst = make(lib, saved), make(lib, here)
        dst.load_state_dict(src.state_dict())
        assert dst.param_groups[0].get("param_names") == ([saved] if saved else [here])


@pytest.mark.parametrize("first,added", [("named", "plain"), ("plain", "named")])
def test_groups_with_and_without_names_are_not_mixed_as_torch(first, added):
    for lib in (torch, ng):
        def mk(named, lib=lib):
            p = (torch.nn.Parameter(torch.ones(2)) if lib is torch
                 else ng.tensor(np.ones(2, np.float32), requires_grad=True))
            return [("w", p)] if named == "named" else [p]

        opt = lib.optim.SGD(mk(first), lr=0.1)
        with pytest.raises(ValueError, match="all optimizer param groups should be with/without"):
            opt.add_param_group({"params": mk(added)})
        with pytest.raises(ValueError, match="(?i)some param names are missing"):
            lib.optim.SGD(mk("named") + mk("plain"), lr=0.1)
