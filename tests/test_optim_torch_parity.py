"""Optimisers against PyTorch's in what surrounds the update: state dicts in PyTorch's types and
keys that load into either library (and old nodegrad checkpoints that still load), PyTorch's
refusals of bad arguments, parameter lists edited in place, and 16-bit steps bit for bit."""

import warnings

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import _backend as B

torch = pytest.importorskip("torch")

CASES = [("SGD", dict(lr=0.1)), ("SGD", dict(lr=0.1, momentum=0.9)),
         ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
         ("Adam", dict(lr=0.01)), ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
         ("AdamW", dict(lr=0.01)), ("Adagrad", dict(lr=0.1)), ("RMSprop", dict(lr=0.01)),
         ("RMSprop", dict(lr=0.01, momentum=0.9, centered=True)), ("Adadelta", dict()),
         ("Adamax", dict()), ("NAdam", dict()), ("RAdam", dict()), ("ASGD", dict(lr=0.01, t0=2)),
         ("Rprop", dict())]
IDS = [f"{n}-{i}" for i, (n, _) in enumerate(CASES)]
SHAPES = [(3, 4), (5,)]


def _grads(k: int) -> list:
    rng = np.random.default_rng(100 + k)
    return [rng.standard_normal(s) for s in SHAPES]


def _pair(name: str, kw: dict, init: list | None = None):
    """The same parameters in both libraries (float64) and each library's optimiser."""
    init = init or [np.random.default_rng(7).standard_normal(s) for s in SHAPES]
    ps = [ng.tensor(a.copy(), requires_grad=True) for a in init]
    tps = [torch.nn.Parameter(torch.tensor(a.copy())) for a in init]
    return ps, tps, getattr(ng.optim, name)(ps, **kw), getattr(torch.optim, name)(tps, **kw)


def _step(ps, opt, k: int) -> None:
    for p, g in zip(ps, _grads(k)):
        if isinstance(p, ng.Tensor):
            p.grad = ng.tensor(g.astype(p.dtype))
        else:
            p.grad = torch.tensor(g, dtype=p.dtype)
    opt.step()


def to_torch(sd: dict) -> dict:
    """A nodegrad state dict with its tensors as PyTorch's (what torch.optim loads)."""
    state = {i: {k: torch.from_numpy(np.array(v.numpy())) if isinstance(v, ng.Tensor) else v
                 for k, v in e.items()} for i, e in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]}


def to_ng(sd: dict) -> dict:
    """A PyTorch state dict with its tensors as nodegrad's."""
    state = {i: {k: ng.tensor(v.numpy().copy()) if isinstance(v, torch.Tensor) else v
                 for k, v in e.items()} for i, e in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]}


def to_old(sd: dict) -> dict:
    """The state dict as earlier nodegrad versions wrote it: arrays, an int step, floats."""
    def old(k, v):
        if isinstance(v, list):
            return [old(k, x) for x in v]
        if not isinstance(v, ng.Tensor):
            return v
        if v.ndim:
            return v.numpy().copy()
        return int(v.item()) if k == "step" else float(v.item())

    state = {i: {k: old(k, v) for k, v in e.items()} for i, e in sd["state"].items()}
    return {**sd, "state": state}


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_state_dict_has_torchs_keys_and_types(name, kw):
    ps, tps, opt, topt = _pair(name, kw)
    sd, tsd = opt.state_dict(), topt.state_dict()
    assert sorted(sd["state"]) == sorted(tsd["state"]), "before the first step"
    for k in range(3):
        _step(ps, opt, k)
        _step(tps, topt, k)
    sd, tsd = opt.state_dict(), topt.state_dict()
    assert sorted(sd["state"]) == sorted(tsd["state"])
    for i, te in tsd["state"].items():
        e = sd["state"][i]
        assert sorted(e) == sorted(te), (i, sorted(e), sorted(te))
        for key, tv in te.items():
            v = e[key]
            assert isinstance(v, ng.Tensor) == isinstance(tv, torch.Tensor), (key, v, tv)
            if key == "step":
                assert v.dtype == np.float32 and tv.dtype == torch.float32 and v.shape == ()
                assert v.item() == tv.item() == 3
            elif tv.ndim:
                assert v.shape == tuple(tv.shape) and v.dtype == ps[i].dtype


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_state_dicts_load_into_the_other_library_and_continue_alike(name, kw):
    ps, tps, opt, topt = _pair(name, kw)
    for k in range(3):
        _step(ps, opt, k)
        _step(tps, topt, k)
    # torch's optimiser on nodegrad's state, nodegrad's on torch's
    tps2 = [torch.nn.Parameter(torch.tensor(p.numpy().copy())) for p in ps]
    topt2 = getattr(torch.optim, name)(tps2, **kw)
    topt2.load_state_dict(to_torch(opt.state_dict()))
    ps2 = [ng.tensor(tp.detach().numpy().copy(), requires_grad=True) for tp in tps]
    opt2 = getattr(ng.optim, name)(ps2, **kw)
    opt2.load_state_dict(to_ng(topt.state_dict()))
    ps3 = [ng.tensor(tp.detach().numpy().copy(), requires_grad=True) for tp in tps]
    opt3 = getattr(ng.optim, name)(ps3, **kw)
    opt3.load_state_dict(topt.state_dict())  # PyTorch's tensors as they are
    for k in range(3, 6):
        for ps_, o in ((ps, opt), (tps, topt), (tps2, topt2), (ps2, opt2), (ps3, opt3)):
            _step(ps_, o, k)
    for p, tp, p2, tp2, p3 in zip(ps, tps, ps2, tps2, ps3):
        np.testing.assert_allclose(tp2.detach().numpy(), p.numpy(), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(p2.numpy(), tp.detach().numpy(), rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(p3.numpy(), p2.numpy())


@pytest.mark.parametrize("name,kw", [CASES[1], CASES[4], CASES[7], CASES[11], CASES[13]],
                         ids=[IDS[1], IDS[4], IDS[7], IDS[11], IDS[13]])
@pytest.mark.parametrize("form", ["tensors", "old arrays", "saved file"])
def test_resume_from_a_state_dict_is_bit_identical(name, kw, form, tmp_path):
    """A run resumed from its state dict, from an older nodegrad checkpoint's form (arrays,
    int steps) or through ng.save/ng.load, continues with the same bits (float32)."""
    init = [np.random.default_rng(7).standard_normal(s).astype(np.float32) for s in SHAPES]
    ps = [ng.tensor(a.copy(), requires_grad=True) for a in init]
    opt = getattr(ng.optim, name)(ps, **kw)
    for k in range(3):
        _step(ps, opt, k)
    sd = opt.state_dict()
    if form == "old arrays":
        sd = to_old(sd)
    elif form == "saved file":
        ng.save({"optimizer": sd}, tmp_path / "ckpt.safetensors")
        sd = ng.load(tmp_path / "ckpt.safetensors")["optimizer"]
    ps2 = [ng.tensor(p.numpy().copy(), requires_grad=True) for p in ps]
    opt2 = getattr(ng.optim, name)(ps2, **kw)
    opt2.load_state_dict(sd)
    for k in range(3, 8):
        _step(ps, opt, k)
        _step(ps2, opt2, k)
    for p, p2 in zip(ps, ps2):
        np.testing.assert_array_equal(p2.numpy(), p.numpy())


def _lbfgs_run(lib, x, opt, steps: int) -> None:
    for _ in range(steps):
        def closure():
            opt.zero_grad()
            loss = ((x - 1) ** 4).sum() + (x * x).sum()
            loss.backward()
            return loss

        opt.step(closure)


@pytest.mark.parametrize("form", ["tensors", "old arrays", "saved file", "torch"])
def test_lbfgs_state_dict_has_torchs_types_and_resumes(form, tmp_path):
    init = np.array([1.5, -0.5, 0.25])
    x, tx = ng.tensor(init.copy(), requires_grad=True), torch.nn.Parameter(torch.tensor(init))
    opt, topt = ng.optim.LBFGS([x], max_iter=4), torch.optim.LBFGS([tx], max_iter=4)
    _lbfgs_run(ng, x, opt, 1)
    _lbfgs_run(torch, tx, topt, 1)
    e, te = opt.state_dict()["state"][0], topt.state_dict()["state"][0]
    assert sorted(e) == sorted(te)
    for k, tv in te.items():
        vs, ts = (e[k], tv) if isinstance(tv, list) else ([e[k]], [tv])
        assert len(vs) == len(ts), k
        for v, t in zip(vs, ts):
            assert isinstance(v, ng.Tensor) == isinstance(t, torch.Tensor), (k, v, t)
    sd = {"tensors": lambda: opt.state_dict(), "old arrays": lambda: to_old(opt.state_dict()),
          "torch": lambda: topt.state_dict()}.get(form)
    if sd is None:
        ng.save({"optimizer": opt.state_dict()}, tmp_path / "ckpt.safetensors")
        sd = ng.load(tmp_path / "ckpt.safetensors")["optimizer"]
    else:
        sd = sd()
    src = tx.detach().numpy() if form == "torch" else x.numpy()
    x2 = ng.tensor(src.copy(), requires_grad=True)
    opt2 = ng.optim.LBFGS([x2], max_iter=4)
    opt2.load_state_dict(sd)
    _lbfgs_run(ng, x2, opt2, 2)
    if form == "torch":
        _lbfgs_run(torch, tx, topt, 2)
        np.testing.assert_allclose(x2.numpy(), tx.detach().numpy(), rtol=1e-9, atol=1e-12)
    else:
        _lbfgs_run(ng, x, opt, 2)
        np.testing.assert_array_equal(x2.numpy(), x.numpy())


def test_a_step_count_past_float32s_integers_stays_exact():
    p = ng.tensor(np.ones(2, np.float32), requires_grad=True)
    opt = ng.optim.Adam([p])
    p.grad = ng.tensor(np.ones(2, np.float32))
    opt.step()
    opt.state[p]["step"] = 2 ** 24 + 1
    st = opt.state_dict()["state"][0]["step"]
    assert st.dtype == np.float64 and st.item() == 2 ** 24 + 1


# --- argument checks: PyTorch's refusals, naming the optimiser, what it got and expected -------
REFUSED = [
    ("SGD", dict(lr=-1.0), ValueError, r"SGD: invalid lr: -1.0 \(expected >= 0"),
    ("SGD", dict(lr=0.1, momentum=-0.1), ValueError, r"SGD: invalid momentum: -0.1"),
    ("SGD", dict(lr=0.1, weight_decay=-1.0), ValueError, r"SGD: invalid weight_decay"),
    ("SGD", dict(lr=0.1, nesterov=True), ValueError,
     r"SGD: Nesterov momentum requires a momentum and zero dampening, got momentum=0.0"),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), ValueError,
     r"SGD: Nesterov.*dampening=0.1"),
    ("SGD", dict(lr=None), TypeError, r"SGD: invalid lr: None \(expected a number"),
    ("Adam", dict(lr=-1.0), ValueError, r"Adam: invalid lr"),
    ("Adam", dict(eps=-1.0), ValueError, r"Adam: invalid eps"),
    ("Adam", dict(weight_decay=-1.0), ValueError, r"Adam: invalid weight_decay"),
    ("Adam", dict(betas=(0.9, 1.0)), ValueError, r"Adam: invalid betas\[1\]: 1.0 \(expected \[0"),
    ("Adam", dict(betas=(-0.1, 0.9)), ValueError, r"Adam: invalid betas\[0\]"),
    ("Adam", dict(betas=(0, 0.99)), ValueError,
     r"Adam: betas must be either both floats or both tensors, got \(0, 0.99\) \(betas\[0\] has "
     r"type int; write 0.0\)"),
    ("AdamW", dict(betas=(0.9, 1)), ValueError, r"AdamW: invalid betas\[1\]"),
    ("AdamW", dict(betas=(0.9, 0)), ValueError, r"AdamW: betas must be either both floats"),
    ("Adam", dict(betas=0.9), ValueError, r"Adam: invalid betas: 0.9 \(expected a pair"),
    ("Adam", dict(betas=(0.9,)), ValueError, r"Adam: invalid betas"),
    ("Adagrad", dict(lr_decay=-1.0), ValueError, r"Adagrad: invalid lr_decay"),
    ("Adagrad", dict(initial_accumulator_value=-1.0), ValueError,
     r"Adagrad: invalid initial_accumulator_value"),
    ("Adagrad", dict(eps=-1.0), ValueError, r"Adagrad: invalid eps"),
    ("RMSprop", dict(alpha=-1.0), ValueError, r"RMSprop: invalid alpha"),
    ("RMSprop", dict(momentum=-1.0), ValueError, r"RMSprop: invalid momentum"),
    ("Adadelta", dict(rho=1.5), ValueError, r"Adadelta: invalid rho: 1.5"),
    ("Adadelta", dict(rho=-0.1), ValueError, r"Adadelta: invalid rho"),
    ("Adadelta", dict(eps=-1.0), ValueError, r"Adadelta: invalid eps"),
    ("Adamax", dict(betas=(1.0, 0.9)), ValueError, r"Adamax: invalid betas\[0\]"),
    ("NAdam", dict(momentum_decay=-1.0), ValueError, r"NAdam: invalid momentum_decay"),
    ("RAdam", dict(betas=(0.9, 1.0)), ValueError, r"RAdam: invalid betas\[1\]"),
    ("ASGD", dict(lr=-1.0), ValueError, r"ASGD: invalid lr"),
    ("Rprop", dict(etas=(1.5, 1.2)), ValueError, r"Rprop: invalid etas"),
    ("SparseAdam", dict(eps=-1.0), ValueError, r"SparseAdam: invalid eps"),
    ("Muon", dict(momentum=-1.0), ValueError, r"Muon: invalid momentum"),
]


@pytest.mark.parametrize("name,kw,err,msg", REFUSED,
                         ids=[f"{n}-{i}" for i, (n, *_) in enumerate(REFUSED)])
def test_bad_arguments_are_refused_as_torch_refuses_them(name, kw, err, msg):
    with pytest.raises(Exception):  # noqa: B017 (PyTorch's own wording differs)
        getattr(torch.optim, name)([torch.nn.Parameter(torch.ones(2, 2))], **kw)
    with pytest.raises(err, match=msg):
        getattr(ng.optim, name)([ng.tensor(np.ones((2, 2), np.float32), requires_grad=True)],
                                **kw)


@pytest.mark.parametrize("name,kw", [("Adamax", dict(betas=(0, 0.99))),
                                     ("NAdam", dict(betas=(0, 0.99))),
                                     ("RAdam", dict(betas=(0, 0.99))),
                                     ("Adam", dict(betas=(0.0, 0.99))),
                                     ("SGD", dict(lr=0.1, momentum=1.5, dampening=-1.0))])
def test_arguments_torch_takes_are_taken(name, kw):
    getattr(torch.optim, name)([torch.nn.Parameter(torch.ones(2))], **kw)
    getattr(ng.optim, name)([ng.tensor(np.ones(2, np.float32), requires_grad=True)], **kw)


def test_tensor_betas_must_both_be_tensors():
    p = ng.tensor(np.ones(2, np.float32), requires_grad=True)
    with pytest.raises(ValueError, match=r"Adam: betas must be either both floats or both"):
        ng.optim.Adam([p], betas=(ng.tensor(0.9), 0.99))
    opt = ng.optim.Adam([p], betas=(ng.tensor(0.9), ng.tensor(0.99)))
    assert opt.param_groups[0]["betas"] == (0.8999999761581421, 0.9900000095367432)


# --- a parameter list edited in place is followed ----------------------------------------------
@pytest.mark.parametrize("edit", ["setitem", "pop-append", "slice"])
def test_an_item_replaced_in_a_groups_list_is_followed_as_in_torch(edit):
    init = [np.full(3, float(i)) for i in range(3)]
    ps, tps, opt, topt = _pair("SGD", dict(lr=0.1, momentum=0.9),
                               init=[init[0], init[1]])
    q, tq = ng.tensor(init[2].copy(), requires_grad=True), torch.nn.Parameter(
        torch.tensor(init[2].copy()))
    for lib_ps, o, new in ((ps, opt, q), (tps, topt, tq)):
        for _ in range(2):
            for p in (*lib_ps, new):
                p.grad = (ng.tensor(np.ones(3)) if isinstance(p, ng.Tensor)
                          else torch.ones(3, dtype=torch.float64))
            o.step()
        lst = o.param_groups[0]["params"]
        if edit == "setitem":
            lst[1] = new
        elif edit == "pop-append":
            lst.pop()
            lst.append(new)
        else:
            lst[1:2] = [new]
        o.step()
        o.step()
    for a, b in zip((*ps, q), (*tps, tq)):
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=1e-12)
    assert not np.array_equal(q.numpy(), init[2])  # the new parameter moved


# --- 16-bit parameters: PyTorch's roundings, bit for bit ---------------------------------------
HALF = [("SGD", dict(lr=0.1)), ("SGD", dict(lr=0.1, momentum=0.9)),
        ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
        ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1, maximize=True)),
        ("Adam", dict(lr=0.01)), ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
        ("AdamW", dict(lr=0.01)), ("Adam", dict(lr=0.01, betas=(0.3, 0.99), eps=1e-3))]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("name,kw", HALF, ids=[f"{n}-{i}" for i, (n, _) in enumerate(HALF)])
def test_sixteen_bit_steps_match_torch_bit_for_bit(name, kw, dtype):
    """Ten steps of pure 16-bit parameters (no float32 master copy) give PyTorch's bits: each
    op in float32, rounded once; ``add``'s alpha in the parameters' dtype. The size is a
    multiple of 64 elements: PyTorch's vectorised loop covers it all (its scalar remainder
    rounds ``alpha * other`` first, so a few elements of other sizes may differ by an ulp)."""
    dt = B.bfloat16 if dtype == "bfloat16" else np.dtype(np.float16)
    tdt = getattr(torch, dtype)
    rng = np.random.default_rng(5)
    tp = torch.nn.Parameter(torch.tensor(rng.standard_normal((16, 64)), dtype=torch.float32)
                            .to(tdt))
    p = ng.tensor(tp.detach().float().numpy().astype(dt), requires_grad=True)
    with warnings.catch_warnings():  # Adam's eps=1e-8 is 0 in float16 (PyTorch's too)
        warnings.simplefilter("ignore", RuntimeWarning)
        opt = getattr(ng.optim, name)([p], **kw)
    topt = getattr(torch.optim, name)([tp], **kw)
    for _ in range(10):
        tp.grad = torch.tensor(rng.standard_normal((16, 64)), dtype=torch.float32).to(tdt)
        p.grad = ng.tensor(tp.grad.float().numpy().astype(dt))
        topt.step()
        opt.step()
        np.testing.assert_array_equal(p.numpy().astype(np.float32),
                                      tp.detach().float().numpy())
    assert p.dtype == dt
