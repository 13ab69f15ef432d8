"""The CUDA backend (CuPy) against the CPU one (NumPy) on the same drawn inputs: every case of the
primitive matrix (forward values, output dtypes and the vector-Jacobian products of a random
cotangent, float64 and float32; JVPs and batching rules, float64), every primitive without a
gradient, and the zoo's training steps, eager and under the fused jit. The CPU side is checked
against finite differences and PyTorch elsewhere; here the GPU must agree with it. Marked
``gpu``: skipped without a device. The value and VJP matrix (one layout, float64), the
primitives without gradients and the zoo's eager steps also run everywhere on ``_fakecupy``'s
stand-in device, which catches arrays left on the host."""

import _fakecupy
import numpy as np
import pytest
from _opcases import CASES, FORWARD, calls, drawn
from _zoo import train_step

import nodegrad as ng
from nodegrad import models
from nodegrad.autodiff import run_backward

DEV = "cuda"
TOL = {np.float64: 1e-9, np.float32: 2e-4}  # relative to the array's largest magnitude
MATRIX = [pytest.param(c, lay, id=f"{c.name}-{lay}") for c in CASES for lay in c.layouts]
ON_GPU = ng.cuda_available()


def gpu_only(params: list) -> list:
    """``params`` where a GPU is present, else none: one skipped item per test instead of
    thousands (the stand-in device's tests below take the full lists)."""
    return params if ON_GPU else []
DTYPES = [pytest.param(np.float64, id="float64"), pytest.param(np.float32, id="float32")]


@pytest.fixture
def on_device(monkeypatch):
    """Tensors a case makes inside its function (targets, repeats) go to the device in test,
    as its inputs do."""
    real = ng.tensor
    box = {"dev": "cpu"}

    def tensor(data, *args, device=None, **kw):
        return real(data, *args, device=device or box["dev"], **kw)

    monkeypatch.setattr(ng, "tensor", tensor)
    return box


def _vjp(fn, args, device, box):
    """Outputs of ``fn`` on ``device`` and the gradients of ⟨v, outputs⟩ (v drawn per output)."""
    box["dev"] = device
    ins = [ng.tensor(a, device=device, requires_grad=a.dtype.kind == "f") for a in args]
    with ng.enable_grad():
        out = fn(*ins)
    outs = [o for o in (out if isinstance(out, tuple | list) else [out])
            if isinstance(o, ng.Tensor)]
    rng = np.random.default_rng(1)
    cots = [rng.standard_normal(o.shape).astype(str(o.dtype)) if o.dtype.kind == "f" else None
            for o in outs]
    live = [(o, ng.tensor(c, device=device)) for o, c in zip(outs, cots)
            if o.requires_grad and c is not None]
    targets = [t for t in ins if t.requires_grad]
    grads = (run_backward([o for o, _ in live], [c for _, c in live], targets=targets,
                          accumulate=False) if live else [None] * len(targets))
    box["dev"] = "cpu"
    return outs, grads


def _same(got, want, what):
    """``got`` (from the device) equals ``want`` (CPU): exactly for integers and booleans, else
    within the dtype's tolerance of the array's scale; NaN where NaN, infinities where they are."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} on {DEV}, {want.dtype} on cpu"
    assert got.shape == want.shape, f"{what}: shape {got.shape} on {DEV}, {want.shape} on cpu"
    if want.dtype.kind not in "fc":
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    fin = np.isfinite(want)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN")
    np.testing.assert_array_equal(got[~fin & ~np.isnan(want)], want[~fin & ~np.isnan(want)],
                                  err_msg=f"{what}: infinities")
    scale = float(np.abs(want[fin]).max()) if fin.any() else 1.0
    tol = TOL[np.float32 if want.dtype == np.float32 else np.float64]
    np.testing.assert_allclose(got[fin], want[fin], rtol=tol, atol=tol * max(scale, 1.0),
                               err_msg=what)


def _all_same(got: list, want: list, what: str) -> None:
    """Device tensors ``got`` against the CPU's ``want``, one by one: each still on the device,
    each equal within its dtype's tolerance."""
    assert len(got) == len(want), what
    for k, (d, c) in enumerate(zip(got, want)):
        assert d.device.startswith(DEV), f"{what} {k} left the device: {d.device}"
        _same(d.numpy(), c.numpy(), f"{what} {k}")


@pytest.mark.gpu
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("case", "layout"), gpu_only(MATRIX))
@drawn(1)
def test_primitive_on_the_device_matches_the_cpu(case, layout, dtype, on_device, data):
    call = data.draw(calls(case, layout))
    args = tuple(a.astype(dtype) if a.dtype.kind == "f" else a for a in call.args)
    outs_c, grads_c = _vjp(call.fn, args, "cpu", on_device)
    outs_d, grads_d = _vjp(call.fn, args, DEV, on_device)
    _all_same(outs_d, outs_c, f"{case.name}: output")
    for k, (d, c) in enumerate(zip(grads_d, grads_c)):
        assert (d is None) == (c is None), f"{case.name}: gradient {k} is None on one side only"
        if d is not None:
            assert d.device.startswith(DEV), f"gradient {k} left the device: {d.device}"
            _same(d.numpy(), c.numpy(), f"{case.name}: gradient of input {k}")


def _flat(out) -> list:
    return [o for o in ng.tree_flatten(out)[0] if isinstance(o, ng.Tensor)]


def _jvp(call, device, box):
    """Outputs and output tangents of ``call`` at float64 inputs on ``device``."""
    box["dev"] = device
    arrs = [np.array(a) for a in call.args]
    fl = [i for i, a in enumerate(arrs) if a.dtype.kind == "f"]
    rng = np.random.default_rng(3)

    def f(*xs):
        full = [ng.tensor(a, device=device) for a in arrs]
        for i, x in zip(fl, xs):
            full[i] = x
        return call.fn(*full)

    xs = tuple(ng.tensor(arrs[i].astype(np.float64), device=device) for i in fl)
    us = tuple(ng.tensor(rng.standard_normal(x.shape), device=device) for x in xs)
    out, tout = ng.jvp(f, xs, us)
    box["dev"] = "cpu"
    return _flat(out) + _flat(tout)


JVP_MATRIX = [p for p in MATRIX if p.values[1] in ("matrix", "noncontig")]


@pytest.mark.gpu
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize(("case", "layout"), gpu_only(JVP_MATRIX))
@drawn(1)
def test_jvp_on_the_device_matches_the_cpu(case, layout, on_device, data):
    """Forward mode: outputs and tangents, float64."""
    call = data.draw(calls(case, layout))
    if not any(np.asarray(a).dtype.kind == "f" for a in call.args):
        return
    _all_same(_jvp(call, DEV, on_device), _jvp(call, "cpu", on_device),
              f"{case.name}: jvp result")


@pytest.mark.gpu
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize(("case", "layout"), gpu_only(JVP_MATRIX))
@drawn(1)
def test_vmap_on_the_device_matches_the_cpu(case, layout, on_device, data):
    """Batching rules: ``vmap`` over three scaled copies of every argument (axis 0)."""
    call = data.draw(calls(case, layout))
    arrs = [np.array(a) for a in call.args]
    stacked = [np.stack([a * (1 + 0.25 * b) if a.dtype.kind == "f" else a for b in range(3)])
               .astype(a.dtype) for a in arrs]
    res = []
    for dev in ("cpu", DEV):
        on_device["dev"] = dev
        res.append(_flat(ng.vmap(call.fn)(*(ng.tensor(a, device=dev) for a in stacked))))
    on_device["dev"] = "cpu"
    _all_same(res[1], res[0], f"{case.name}: vmap result")


@pytest.mark.gpu
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("f", gpu_only([pytest.param(f, id=f.name) for f in FORWARD]))
@drawn(5)
def test_primitive_without_gradient_on_the_device_matches_the_cpu(f, on_device, data):
    args, params = f.build(data.draw)
    res = []
    for dev in ("cpu", DEV):
        on_device["dev"] = dev
        res.append(f.fn(*[ng.tensor(np.array(a), device=dev) for a in args], **params))
    on_device["dev"] = "cpu"
    c, d = res
    assert d.device.startswith(DEV)
    if f.rtol:
        _same(d.numpy(), c.numpy(), f.name)
    else:  # rounding, comparisons, indices: the same bits
        np.testing.assert_array_equal(d.numpy(), c.numpy(), err_msg=f.name)
        assert d.dtype == c.dtype


def _batch(spec, rng, n=16):
    width = {"mnist1d": 40, "digits": 64}.get(spec.dataset, 1)
    x = rng.standard_normal((n, width)).astype(np.float32)
    y = (rng.integers(0, 10, n) if spec.task == "classification"
         else rng.standard_normal((n, 1)).astype(np.float32))
    return x, y


def _train(name, device, jit=False, steps=5):
    spec = models.REGISTRY[name]
    lossf = (ng.nn.functional.cross_entropy if spec.task == "classification"
             else ng.nn.functional.mse_loss)
    model = models.create(name, seed=0).to(device)
    opt = ng.optim.Adam(model.parameters(), lr=1e-2)
    step = train_step(model, opt, lossf)
    run = ng.jit(step, state=(model, opt), fuse=True) if jit else step
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(steps):
        x, y = _batch(spec, rng)
        losses.append(run(ng.tensor(x, device=device), ng.tensor(y, device=device)).numpy())
    return np.array(losses), {k: v.numpy() for k, v in model.state_dict().items()}, model


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(models.REGISTRY))
def test_zoo_model_trains_the_same_on_the_device(name):
    lc, pc, _ = _train(name, "cpu")
    ld, pd, model = _train(name, DEV)
    assert all(p.device.startswith(DEV) for p in model.parameters())
    _same(ld, lc, f"{name}: losses")
    for k in pc:
        _same(pd[k], pc[k], f"{name}: {k}")


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(models.REGISTRY))
def test_zoo_model_trains_the_same_under_jit_on_the_device(name):
    le, pe, _ = _train(name, DEV)
    lj, pj, _ = _train(name, DEV, jit=True)
    _same(lj, le, f"{name}: losses")
    for k in pe:
        _same(pj[k], pe[k], f"{name}: {k}")


# --- the same checks on the stand-in device (every run, CI included) ---------------------------
@pytest.fixture
def fake():
    with _fakecupy.installed():
        yield


def test_stand_in_leaves_no_device_state_behind():
    """What the stand-in device made (its backend, its default generator) goes with it, so
    a real GPU's tests in the same process never meet its arrays."""
    import importlib

    from nodegrad import _backend as B

    R = importlib.import_module("nodegrad.random")

    before = (B._cupy, dict(B._cuda), dict(R._default))
    with _fakecupy.installed():
        ng.manual_seed(1)
        assert isinstance(ng.randn(3, device="cuda")._data, _fakecupy.ndarray)
    assert (B._cupy, dict(B._cuda), dict(R._default)) == before


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize(("case", "layout"), [p for p in MATRIX if p.values[1] == "matrix"])
@drawn(1)
def test_primitive_on_the_stand_in_device(case, layout, fake, on_device, data):
    test_primitive_on_the_device_matches_the_cpu.__wrapped__(case, layout, np.float64,
                                                             on_device, data=data)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("f", [pytest.param(f, id=f.name) for f in FORWARD])
@drawn(2)
def test_primitive_without_gradient_on_the_stand_in_device(f, fake, on_device, data):
    test_primitive_without_gradient_on_the_device_matches_the_cpu.__wrapped__(
        f, on_device, data=data)


@pytest.mark.parametrize("name", list(models.REGISTRY))
def test_zoo_model_trains_on_the_stand_in_device(name, fake):
    test_zoo_model_trains_the_same_on_the_device(name)


@pytest.mark.filterwarnings("ignore:nodegrad.jit. fusion failed:RuntimeWarning")
@pytest.mark.parametrize("name", list(models.REGISTRY))
def test_zoo_model_trains_under_jit_on_the_stand_in_device(name, fake):
    """The jit's replay on a device (its kernels cannot compile there: it replays unfused)."""
    test_zoo_model_trains_the_same_under_jit_on_the_device(name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("ignored", [0, 3, 7])
def test_cross_entropy_rows_on_the_device(dtype, reduction, ignored, cuda):
    """The device's few-kernel cross-entropy (B.ce_rows_cuda) against the CPU: values and the
    logits' gradient, with none, some and all (NaN for a mean) of the targets ignored."""
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((7, 5)) * 3).astype(dtype)
    t = rng.integers(0, 5, 7)
    t[:ignored] = -100
    res = []
    for dev in ("cpu", DEV):
        xt = ng.tensor(x, device=dev, requires_grad=True)
        loss = ng.nn.functional.cross_entropy(xt, ng.tensor(t, device=dev), reduction=reduction)
        loss.backward()
        res.append((loss.numpy(), xt.grad.numpy()))
    (lc, gc), (ld, gd) = res
    if reduction == "mean" and ignored == 7:
        assert np.isnan(lc) and np.isnan(ld)
        return
    _same(ld, lc, "loss")
    _same(gd, gc, "gradient")
