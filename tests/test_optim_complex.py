"""Complex parameters in nn.Parameter and the optimisers, against PyTorch (view_as_real updates,
complex state in state dicts)."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import optim

torch = pytest.importorskip("torch")

CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.3)),
    ("Adam", dict(lr=0.1)),
    ("Adam", dict(lr=0.1, amsgrad=True, weight_decay=0.1)),
    ("Adam", dict(lr=0.1, maximize=True, decoupled_weight_decay=True, weight_decay=0.1)),
    ("AdamW", dict(lr=0.1, weight_decay=0.1)),
    ("AdamW", dict(lr=0.1, amsgrad=True)),
    ("Adamax", dict(lr=0.1, weight_decay=0.1)),
    ("NAdam", dict(lr=0.1)),
    ("NAdam", dict(lr=0.1, decoupled_weight_decay=True, weight_decay=0.1)),
    ("RAdam", dict(lr=0.1)),
    ("RAdam", dict(lr=0.1, decoupled_weight_decay=True, weight_decay=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.5)),
    ("Adadelta", dict(lr=1.0, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.9, weight_decay=0.1)),
    ("Rprop", dict(lr=0.01)),
    ("ASGD", dict(lr=0.01, t0=2, weight_decay=0.1)),
]


def _data(dtype, seed=0):
    rng = np.random.default_rng(seed)

    def c(*shape):
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)

    rdt = np.float64 if dtype == np.complex128 else np.float32
    init = [c(3, 4), rng.standard_normal(5).astype(rdt), np.asarray(c())]
    grads = [[c(3, 4), rng.standard_normal(5).astype(rdt), np.asarray(c())] for _ in range(5)]
    return init, grads


@pytest.fixture(autouse=True)
def _torch_float64_scalars():
    """PyTorch keeps scalar state (NAdam's mu product, ASGD's eta) in its default dtype: float64
    makes its results comparable tightly."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _run(name, kw, dtype, which, fused=None, steps=5):
    """nodegrad's and torch's parameters after ``steps`` steps on the same gradients."""
    init, grads = _data(dtype)
    ps = [ng.nn.Parameter(init[i].copy()) for i in which]
    tps = [torch.nn.Parameter(torch.tensor(init[i])) for i in which]
    extra = {} if fused is None else {"fused": fused}
    opt = getattr(optim, name)(ps, **kw, **extra)
    topt = getattr(torch.optim, name)(tps, **kw)
    for g in grads[:steps]:
        for p, tp, i in zip(ps, tps, which):
            p.grad = ng.as_tensor(g[i].copy())
            tp.grad = torch.tensor(g[i])
        opt.step()
        topt.step()
    return ps, tps, opt, topt


@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
@pytest.mark.parametrize("dtype", [np.complex128, np.complex64])
def test_complex_parameter_matches_torch(name, kw, dtype):
    for which in ([0], [0, 1, 2]):  # one complex parameter; a group mixing real and complex
        ps, tps, _, _ = _run(name, kw, dtype, which)
        tol = dict(rtol=1e-11, atol=1e-13) if dtype == np.complex128 else dict(rtol=2e-5,
                                                                                atol=2e-6)
        for p, tp in zip(ps, tps):
            assert p.dtype == tp.detach().numpy().dtype
            np.testing.assert_allclose(p.data, tp.detach().numpy(), **tol)


@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop", "Adagrad"])
def test_complex_fused_and_numpy_paths_agree(name):
    pytest.importorskip("numba")
    kw = dict(lr=0.01, momentum=0.9) if name in ("SGD", "RMSprop") else dict(lr=0.01)
    a, _, _, _ = _run(name, kw, np.complex128, [0, 1, 2], fused=True)
    b, _, _, _ = _run(name, kw, np.complex128, [0, 1, 2], fused=False)
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p.data, q.data)


def _np(v):
    return v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)


def _torch_sd(sd):
    """A nodegrad state dict with torch tensors for its tensors (what torch's optimisers load)."""
    state = {i: {k: torch.tensor(np.asarray(v)) for k, v in e.items()}
             for i, e in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]}


@pytest.mark.parametrize("name,kw", [("Adam", dict(lr=0.1, amsgrad=True)),
                                     ("SGD", dict(lr=0.1, momentum=0.9)),
                                     ("Rprop", dict(lr=0.01)), ("ASGD", dict(lr=0.01))])
def test_complex_state_dict_round_trips_with_torch(name, kw):
    ps, tps, opt, topt = _run(name, kw, np.complex128, [0, 1, 2], steps=3)
    sd, tsd = opt.state_dict(), topt.state_dict()
    for i in range(3):
        for k, v in tsd["state"][i].items():
            if v.ndim:  # the arrays: complex for a complex parameter, as PyTorch's
                assert _np(sd["state"][i][k]).dtype == _np(v).dtype, (i, k)
            np.testing.assert_allclose(_np(sd["state"][i][k]), _np(v), rtol=1e-11, atol=1e-13)
    init, grads = _data(np.complex128)
    # torch's state into nodegrad, nodegrad's into torch: both continue as the other would
    ps2 = [ng.nn.Parameter(_np(tp.detach()).copy()) for tp in tps]
    opt2 = getattr(optim, name)(ps2, **kw)
    opt2.load_state_dict(tsd)
    tps2 = [torch.nn.Parameter(torch.tensor(p.data.copy())) for p in ps]
    topt2 = getattr(torch.optim, name)(tps2, **kw)
    topt2.load_state_dict(_torch_sd(sd))
    for g in grads[3:]:
        for p, p2, tp, tp2, gi in zip(ps, ps2, tps, tps2, g):
            p.grad, p2.grad = ng.as_tensor(gi.copy()), ng.as_tensor(gi.copy())
            tp.grad, tp2.grad = torch.tensor(gi), torch.tensor(gi)
        for o in (opt, opt2, topt, topt2):
            o.step()
    for p, p2, tp, tp2 in zip(ps, ps2, tps, tps2):
        np.testing.assert_allclose(p2.data, tp.detach().numpy(), rtol=1e-11, atol=1e-13)
        np.testing.assert_allclose(tp2.detach().numpy(), p.data, rtol=1e-11, atol=1e-13)
    arrays = [v for v in opt2.state_dict()["state"][0].values() if np.ndim(v)]
    assert arrays and all(v.dtype == np.complex128 for v in arrays)


def test_complex_zero_grad_views_accumulate_and_step():
    """zero_grad(set_to_none=False) gives complex views of a real gradient buffer; backward adds
    into them and the step reads them as PyTorch's view_as_real."""
    init, _ = _data(np.complex128)
    p = ng.nn.Parameter(init[0].copy())
    tp = torch.nn.Parameter(torch.tensor(init[0]))
    opt, topt = optim.Adam([p], lr=0.1), torch.optim.Adam([tp], lr=0.1)
    for _ in range(3):
        opt.zero_grad(set_to_none=False)
        topt.zero_grad()
        (ng.abs(p * p + 1) ** 2).sum().backward()
        (torch.abs(tp * tp + 1) ** 2).sum().backward()
        assert p.grad.dtype == np.complex128
        np.testing.assert_allclose(p.grad.data, tp.grad.numpy(), rtol=1e-12)
        opt.step()
        topt.step()
    np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12)


def test_complex_parameter_in_module_trains():
    lin = ng.nn.Module()
    lin.w = ng.nn.Parameter(np.array([1 + 2j, -0.5 + 0.1j]))
    assert lin.w.requires_grad and lin.w.dtype == np.complex128
    assert list(lin.parameters())[0] is lin.w
    opt = optim.SGD(lin.parameters(), lr=0.1)
    target = np.array([0.3 - 1j, 2 + 0.5j])
    for _ in range(200):
        opt.zero_grad()
        (ng.abs(lin.w - ng.as_tensor(target)) ** 2).sum().backward()
        opt.step()
    np.testing.assert_allclose(lin.w.data, target, atol=1e-8)


def test_parameter_refuses_integer_data():
    with pytest.raises(TypeError, match="floating and complex"):
        ng.nn.Parameter(np.arange(3))


@pytest.mark.parametrize("name,kw", [("Muon", dict(lr=0.01)), ("Adafactor", dict(lr=0.01))])
def test_refused_where_torch_refuses(name, kw):
    init, _ = _data(np.complex128)
    with pytest.raises(RuntimeError, match=f"{name} does not support complex parameters"):
        getattr(optim, name)([ng.nn.Parameter(init[0])], **kw)
    tp = torch.nn.Parameter(torch.tensor(init[0]))
    tp.grad = torch.ones_like(tp)
    with pytest.raises(RuntimeError, match="does not support complex"):
        getattr(torch.optim, name)([tp], **kw).step()


@pytest.mark.parametrize("name,kw", CASES[::3], ids=[n for n, _ in CASES[::3]])
def test_complex_step_is_the_real_pairs_step_bit_for_bit(name, kw):
    """A complex parameter steps exactly as its real view (view_as_real) would as a real one."""
    init, grads = _data(np.complex128)
    z = ng.nn.Parameter(init[0].copy())
    r = ng.nn.Parameter(init[0].view(np.float64).copy())
    oz, orr = getattr(optim, name)([z], **kw), getattr(optim, name)([r], **kw)
    for g in grads:
        z.grad, r.grad = ng.as_tensor(g[0].copy()), ng.as_tensor(g[0].view(np.float64).copy())
        oz.step()
        orr.step()
    np.testing.assert_array_equal(z.data.view(np.float64), r.data)


def test_integer_parameter_still_refused():
    p = ng.as_tensor(np.arange(3))
    with pytest.raises(TypeError, match="only floating and complex"):
        optim.SGD([p], lr=0.1)


@pytest.mark.parametrize("ls", [None, "strong_wolfe"])
def test_lbfgs_complex_matches_torch(ls):
    init, _ = _data(np.complex128)
    target = init[0][::-1].copy()
    w = init[1]
    p, q = ng.nn.Parameter(init[0].copy()), ng.nn.Parameter(w.copy())
    tp, tq = torch.nn.Parameter(torch.tensor(init[0])), torch.nn.Parameter(torch.tensor(w))
    opt = optim.LBFGS([p, q], lr=0.5, max_iter=6, line_search_fn=ls)
    topt = torch.optim.LBFGS([tp, tq], lr=0.5, max_iter=6, line_search_fn=ls)

    def closure():
        opt.zero_grad()
        loss = (ng.abs(p * p - ng.as_tensor(target)) ** 2).sum() + ((q - 1) ** 4).sum()
        loss.backward()
        return loss

    def tclosure():
        topt.zero_grad()
        loss = (torch.abs(tp * tp - torch.tensor(target)) ** 2).sum() + ((tq - 1) ** 4).sum()
        loss.backward()
        return loss

    for _ in range(2):
        opt.step(closure)
        topt.step(tclosure)
    np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(q.data, tq.detach().numpy(), rtol=1e-9, atol=1e-11)
    opt2 = optim.LBFGS([ng.nn.Parameter(p.data.copy()), ng.nn.Parameter(q.data.copy())],
                       lr=0.5, max_iter=6, line_search_fn=ls)
    opt2.load_state_dict(topt.state_dict())
    assert opt2.state_dict()["state"][0]["d"].dtype == np.float64


def test_jit_step_with_complex_parameter():
    init, _ = _data(np.complex128)
    p = ng.nn.Parameter(init[0].copy())
    tp = torch.nn.Parameter(torch.tensor(init[0]))
    opt, topt = optim.Adam([p], lr=0.1), torch.optim.Adam([tp], lr=0.1)

    @ng.jit
    def step():
        opt.zero_grad()
        loss = (ng.abs(p * p + 1) ** 2).sum()
        loss.backward()
        opt.step()
        return loss

    for _ in range(4):
        step()
        topt.zero_grad()
        (torch.abs(tp * tp + 1) ** 2).sum().backward()
        topt.step()
    np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-11)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, np.inf, -np.inf, 0.0, 3.0])
def test_clip_grad_norm_complex_gradients_as_torch(norm_type):
    """The norm of a complex gradient is that of |g| (real), as torch.linalg.vector_norm's."""
    init, grads = _data(np.complex128)
    ps = [ng.nn.Parameter(a.copy()) for a in init]
    tps = [torch.nn.Parameter(torch.tensor(a)) for a in init]
    for p, tp, g in zip(ps, tps, grads[0]):
        p.grad, tp.grad = ng.as_tensor(np.asarray(3 * g)), torch.tensor(3 * g)
    n = ng.nn.utils.clip_grad_norm_(ps, 1.0, norm_type)
    tn = torch.nn.utils.clip_grad_norm_(tps, 1.0, norm_type)
    assert n.dtype == np.float64
    np.testing.assert_allclose(n.data, tn.item(), rtol=1e-13)
    for p, tp in zip(ps, tps):
        np.testing.assert_allclose(p.grad.data, tp.grad.numpy(), rtol=1e-13)


def test_clip_grad_value_refuses_complex_gradients():
    p = ng.nn.Parameter(np.array([1 + 2j]))
    p.grad = ng.as_tensor(np.array([3 - 1j]))
    with pytest.raises(NotImplementedError, match="clip_grad_value_: .* complex128"):
        ng.nn.utils.clip_grad_value_([p], 0.5)
    np.testing.assert_array_equal(p.grad.data, [3 - 1j])  # left as it was


def test_parameters_to_vector_complex_as_torch():
    init, _ = _data(np.complex128)
    v = ng.nn.utils.parameters_to_vector([ng.nn.Parameter(a) for a in init])
    tv = torch.nn.utils.parameters_to_vector([torch.tensor(a) for a in init])
    assert v.dtype == np.complex128
    np.testing.assert_array_equal(v.data, tv.numpy())
