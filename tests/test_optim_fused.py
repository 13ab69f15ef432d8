"""The fused optimiser kernels (``fused=``) against the NumPy update: the same bits.

Every algorithm with a kernel, each option that changes its arithmetic, float32 and float64,
gradients as separate arrays (one kernel call per tensor), as views of the flat gradient buffer
(one call per run), transposed, and missing on some steps; then ``fused=`` itself, a missing
numba, checkpoints, ``ng.jit`` and CUDA (``gpu`` marker).
"""

import subprocess
import sys

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad._backend import get_backend
from nodegrad.optim import _fused

pytestmark = pytest.mark.skipif(not _fused.available(get_backend("cpu"), np.dtype("float32")),
                                reason="the CPU kernels need numba")

# gradients under SMALL_GRADIENT elements are gathered in stretches, larger ones read in place
SHAPES = [(37, 29), (130, 130), (29,), (3, 3, 2), (), (0,), (140, 120)]
STEPS = 6

CASES = [
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, amsgrad=True)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, maximize=True)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, amsgrad=True, decoupled_weight_decay=True)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True, maximize=True)),
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, weight_decay=0.1, maximize=True)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.05)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, centered=True, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01, momentum=0.9, maximize=True)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5, eps=1e-6)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.1,
                     maximize=True)),
]
IDS = [f"{c}-{i}" for i, (c, _) in enumerate(CASES)]


def _params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [ng.tensor(rng.standard_normal(s).astype(dtype), requires_grad=True) for s in SHAPES]


def _grad(p, k, i, dtype, layout):
    a = np.random.default_rng(100 * k + i).standard_normal(p.shape).astype(dtype)
    if layout == "transposed" and a.ndim == 2:
        a = np.ascontiguousarray(a.T).T  # same values, not C-contiguous
    return a


def _train(cls, kw, fused, dtype, layout="separate", steps=STEPS, flat=True, state=None):
    """Parameters (and the optimiser) after ``steps`` steps of fixed pseudo-random gradients."""
    ps = _params(dtype)
    opt = getattr(ng.optim, cls)(ps, fused=fused, flat=flat, **kw)
    if state is not None:
        opt.load_state_dict(state)
    if layout == "in_place":
        for p in ps:
            p.grad = ng.zeros(p.shape, dtype=dtype)
        opt.zero_grad(set_to_none=False)
    for k in range(steps):
        for i, p in enumerate(ps):
            g = _grad(p, k, i, dtype, layout)
            if layout == "in_place":
                p.grad.data[...] = g
            elif layout == "skip" and (i + k) % 3 == 0:
                p.grad = None
            else:
                p.grad = ng.tensor(g)
        opt.step()
    return [p.numpy().copy() for p in ps], opt


def _assert_same(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y, err_msg=f"parameter {i}")


@pytest.mark.parametrize("cls,kw", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_fused_equals_numpy_update(cls, kw, dtype):
    want, ref = _train(cls, kw, False, dtype)
    got, opt = _train(cls, kw, True, dtype)
    _assert_same(got, want)
    assert all(b.fused for bs in opt._buckets for b in bs)
    assert not any(b.fused for bs in ref._buckets for b in bs)
    for sa, sb in zip(opt.state.values(), ref.state.values()):
        assert sa.keys() == sb.keys()
        for k in sa:
            np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


@pytest.mark.parametrize("layout", ["in_place", "transposed", "skip"])
@pytest.mark.parametrize("cls,kw", [CASES[3], CASES[10], CASES[14], CASES[16]],
                         ids=[IDS[3], IDS[10], IDS[14], IDS[16]])
def test_fused_equals_numpy_update_for_other_gradient_layouts(cls, kw, layout):
    """One kernel call over the flat gradient buffer, non-contiguous gradients, split runs."""
    for dtype in (np.float32, np.float64):
        want, _ = _train(cls, kw, False, dtype, layout)
        got, _ = _train(cls, kw, True, dtype, layout)
        _assert_same(got, want)


@pytest.mark.parametrize("cls,kw", [CASES[3], CASES[6], CASES[9], CASES[16]],
                         ids=[IDS[3], IDS[6], IDS[9], IDS[16]])
def test_fused_follows_hyperparameters_changed_between_steps(cls, kw):
    """The kernel's scalars are kept between steps while they hold: a learning rate, weight
    decay or maximize changed in the group (as a scheduler does) takes effect at the next
    step, as in the NumPy update."""
    runs = []
    for fused in (False, True):
        ps = _params(np.float32)
        opt = getattr(ng.optim, cls)(ps, fused=fused, **kw)
        for k in range(STEPS):
            group = opt.param_groups[0]
            group["lr"] = kw["lr"] * (1, 0.5, 0.25, 2, 3, 1.5)[k]
            group["weight_decay"] = (0.0, 0.1, 0.1, 0.2, 0.2, 0.2)[k]
            group["maximize"] = k in (2, 3)
            for i, p in enumerate(ps):
                p.grad = ng.tensor(_grad(p, k, i, np.float32, "separate"))
            opt.step()
        runs.append([p.numpy().copy() for p in ps])
    _assert_same(runs[1], runs[0])


def test_the_shapes_cover_lone_and_gathered_small_gradients_and_large_ones():
    from nodegrad.optim.base import SMALL_GRADIENT

    small = [int(np.prod(s)) < SMALL_GRADIENT for s in SHAPES]
    assert small == [True, False, True, True, True, True, False]


def test_fused_equals_numpy_update_per_tensor_and_with_float64_gradients():
    want, _ = _train("Adam", dict(lr=0.01, amsgrad=True), False, np.float32, flat=False)
    got, _ = _train("Adam", dict(lr=0.01, amsgrad=True), True, np.float32, flat=False)
    _assert_same(got, want)
    # a gradient of another dtype cannot be assigned (PyTorch's check), and backward casts
    # each gradient to its parameter's dtype, so a step only ever sees the parameters' dtype
    p = ng.tensor(np.linspace(-1, 1, 50, dtype=np.float32), requires_grad=True)
    with pytest.raises(ng.errors.DTypeError, match="assigned grad has dtype float64"):
        p.grad = ng.tensor(np.sin(np.arange(50.0)))  # float64


def test_fused_none_uses_the_kernel_when_available_and_false_never(monkeypatch):
    ps = _params(np.float32)
    assert ng.optim.Adam(ps).fused is None
    import numba  # noqa: F401  (imported already: the kernel costs nothing more to use)
    assert all(b.fused for b in ng.optim.Adam(_params(np.float32))._buckets[0])
    # numba not imported yet: a small bucket keeps the NumPy update (numba's import and start-up
    # would cost more than the kernel saves), a large one takes the kernel
    monkeypatch.delitem(sys.modules, "numba")
    assert not any(b.fused for b in ng.optim.Adam(_params(np.float32))._buckets[0])
    big = ng.zeros(_fused.AUTO_MIN_SIZE, requires_grad=True)
    assert ng.optim.Adam([big])._buckets[0][0].fused
    assert all(b.fused for b in ng.optim.Adam(_params(np.float32), fused=True)._buckets[0])
    assert not any(b.fused for b in ng.optim.Adam(_params(np.float32), fused=False)._buckets[0])
    # float16 has no kernel: None falls back, True says why
    h = [ng.tensor(np.ones(3, np.float16), requires_grad=True)]
    assert not ng.optim.SGD(h, lr=0.1)._buckets[0][0].fused
    with pytest.raises(ng.BackendUnavailable, match=r"SGD\(fused=True\).*float16"):
        ng.optim.SGD(h, lr=0.1, fused=True)
    with pytest.raises(TypeError, match="fused must be None, True or False"):
        ng.optim.Adam(_params(np.float32), fused="yes")
    with pytest.raises(TypeError, match="NAdam"):
        ng.optim.NAdam(_params(np.float32), fused=True)


def test_a_small_bucket_takes_the_kernel_once_numba_is_imported(monkeypatch):
    """fused=None left a small bucket to NumPy while numba was not imported; imported later
    (by a compiled program, another optimiser), the bucket switches, with the same bits."""
    import numba

    monkeypatch.delitem(sys.modules, "numba")
    ps = _params(np.float32)
    opt = ng.optim.Adam(ps, lr=0.01)
    bucket = opt._buckets[0][0]
    assert not bucket.fused and bucket.pending and opt._fused_pending()
    want, _ = _train("Adam", dict(lr=0.01), False, np.float32, steps=2 * STEPS)
    for k in range(2 * STEPS):
        if k == STEPS:
            monkeypatch.setitem(sys.modules, "numba", numba)
        for i, p in enumerate(ps):
            p.grad = ng.tensor(_grad(p, k, i, np.float32, "separate"))
        opt.step()
        assert bucket.fused == (k >= STEPS) and bucket.pending == (k < STEPS)
    _assert_same([p.numpy() for p in ps], want)


def test_fused_true_without_numba_names_the_optimiser_and_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "numba", None)  # as if numba were not installed
    with pytest.raises(ng.BackendUnavailable, match=r"AdamW\(fused=True\) on cpu.*numba.*"
                                                    r"nodegrad\[jit\]"):
        ng.optim.AdamW(_params(np.float32), fused=True)
    # the default falls back to the NumPy update, with the same result
    got, opt = _train("AdamW", dict(lr=0.01, weight_decay=0.1), None, np.float32)
    assert not any(b.fused for bs in opt._buckets for b in bs)
    monkeypatch.delitem(sys.modules, "numba")
    want, _ = _train("AdamW", dict(lr=0.01, weight_decay=0.1), True, np.float32)
    _assert_same(got, want)


def test_kernels_that_fail_to_load_fall_back_or_raise(monkeypatch):
    """E.g. numba with no writable cache directory: None warns and runs NumPy, True raises."""
    def broken(backend):
        raise RuntimeError("cannot cache function 'adam': no locator available")

    monkeypatch.setattr(_fused, "load", broken)
    want, _ = _train("Adam", dict(lr=0.01), False, np.float32)
    with pytest.warns(RuntimeWarning, match="Adam: the fused kernels on cpu failed to load"):
        got, opt = _train("Adam", dict(lr=0.01), None, np.float32)
    _assert_same(got, want)
    assert not any(b.fused for bs in opt._buckets for b in bs)
    with pytest.raises(ng.BackendUnavailable, match="no locator available"):
        _train("Adam", dict(lr=0.01), True, np.float32)


@pytest.mark.parametrize("cls,kw", [CASES[1], CASES[9], CASES[14]], ids=[IDS[1], IDS[9], IDS[14]])
def test_resume_from_a_state_dict_is_bit_identical(cls, kw):
    """A fused run resumed from its state dict (fused or not) continues with the same bits."""
    want, _ = _train(cls, kw, True, np.float32, steps=2 * STEPS)
    _, opt = _train(cls, kw, True, np.float32, steps=STEPS)
    sd = opt.state_dict()
    for fused in (True, False):
        ps = _params(np.float32)
        # parameters as they were after STEPS steps, then STEPS more steps from the loaded state
        mid, _ = _train(cls, kw, True, np.float32, steps=STEPS)
        for p, m in zip(ps, mid):
            p.data[...] = m
        o = getattr(ng.optim, cls)(ps, fused=fused, **kw)
        o.load_state_dict(sd)
        for k in range(STEPS, 2 * STEPS):
            for i, p in enumerate(ps):
                p.grad = ng.tensor(_grad(p, k, i, np.float32, "separate"))
            o.step()
        _assert_same([p.numpy() for p in ps], want)


@pytest.mark.parametrize("cls,kw", [("Adam", dict(lr=1e-2, amsgrad=True)),
                                    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True))])
def test_jitted_step_with_a_fused_optimiser_equals_eager(cls, kw):
    rng = np.random.default_rng(0)
    batches = [(ng.tensor(rng.standard_normal((8, 6)).astype(np.float32)),
                ng.tensor(rng.integers(0, 3, 8))) for _ in range(8)]

    def run(fused, jit, set_to_none):
        ng.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
        opt = getattr(ng.optim, cls)(model.parameters(), fused=fused, **kw)

        def train_step(x, y):
            opt.zero_grad(set_to_none=set_to_none)
            loss = ng.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss

        step = ng.jit(train_step, state=(model, opt)) if jit else train_step
        losses = [step(x, y).item() for x, y in batches]
        return losses, [p.numpy().copy() for p in model.parameters()]

    for set_to_none in (True, False):
        le, pe = run(False, False, set_to_none)
        for fused, jit in ((True, False), (True, True)):
            lj, pj = run(fused, jit, set_to_none)
            assert lj == le
            _assert_same(pj, pe)


def test_importing_nodegrad_does_not_import_numba():
    code = ("import sys, nodegrad as ng\n"
            "p = ng.ones(3, requires_grad=True)\n"
            "opt = ng.optim.Adam([p], fused=True)\n"
            "assert 'numba' not in sys.modules\n"
            "(p * p).sum().backward(); opt.step()\n"
            "assert 'numba' in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("cls,kw", CASES, ids=IDS)
def test_cuda_fused_equals_numpy_update(cls, kw):
    """On CUDA the CuPy kernel against CuPy's separate calls (and the CPU's NumPy update)."""
    res = {}
    for fused in (False, True):
        ps = [ng.tensor(p.numpy(), device="cuda", requires_grad=True)
              for p in _params(np.float32)]
        opt = getattr(ng.optim, cls)(ps, fused=fused, **kw)
        assert all(b.fused == fused for bs in opt._buckets for b in bs)
        for k in range(STEPS):
            for i, p in enumerate(ps):
                p.grad = ng.tensor(_grad(p, k, i, np.float32, "separate"), device="cuda")
            opt.step()
        res[fused] = [p.numpy() for p in ps]
    cpu, _ = _train(cls, kw, False, np.float32)
    for a, b, c in zip(res[True], res[False], cpu):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-7)
