"""The training practice on a CUDA GPU, as a user meets it: checkpoints, ``train.fit`` with its
callbacks, schedules and resume, evaluation, diagnostics, pruning, transfer, ONNX export and
region counts, each on the device against the same run on the CPU: on a CUDA GPU (marked
``gpu``: skipped without CuPy and a device) and, everywhere, on the stand-in device of
``_fakecupy``, which catches arrays left on the host."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import diagnostics as D
from nodegrad import nn, prune, train
from nodegrad.data import ArrayDataset, DataLoader

RTOL = 2e-4  # float32, relative to each array's largest magnitude


def _close(got, want, what=""):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, what
    scale = max(float(np.abs(want).max()) if want.size else 0.0, 1.0)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale, err_msg=what)


def _host(a) -> np.ndarray:
    """A tensor's or array's values as a NumPy array."""
    if isinstance(a, ng.Tensor):
        return a.numpy()
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 12)).astype(np.float32)
    y = (x[:, :3].sum(1) > 0).astype(np.int64) + 2 * (x[:, 3] > 0.5)
    return x, y


def _model(seed=0):
    ng.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 4))


def _state(model):
    return {k: v.numpy() for k, v in model.state_dict().items()}


def _fit(device, tmp_path, epochs=3, resume=False, name="run"):
    x, y = _data()
    model = _model().to(device)
    opt = ng.optim.Adam(model.parameters(), lr=1e-2)
    sched = ng.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=18)
    loader = DataLoader(ArrayDataset(x, y), 16, shuffle=True, seed=1, device=device)
    val = DataLoader(ArrayDataset(*_data(32, 1)), 32, device=device)
    hist = train.fit(model, ng.nn.functional.cross_entropy, opt, loader, val, epochs=epochs,
                     scheduler=sched, callbacks=[train.GradientClipping(max_norm=1.0)],
                     run_dir=tmp_path / name, resume=resume, progress=False)
    return model, hist


def test_fit_with_schedule_clipping_and_checkpoints_matches_the_cpu(cuda, tmp_path):
    mc, hc = _fit("cpu", tmp_path / "cpu")
    md, hd = _fit(cuda, tmp_path / "dev")
    assert all(p.device.startswith(cuda) for p in md.parameters())
    for k, v in _state(mc).items():
        _close(_state(md)[k], v, k)
    for key in ("loss", "val_loss", "val_accuracy"):
        _close(np.array(hd[key]), np.array(hc[key]), key)


def test_resume_on_the_device_is_bit_identical(cuda, tmp_path):
    full, _ = _fit(cuda, tmp_path, epochs=3, name="full")
    _fit(cuda, tmp_path, epochs=2, name="cut")
    resumed, _ = _fit(cuda, tmp_path, epochs=3, resume=True, name="cut")
    for k, v in _state(full).items():
        np.testing.assert_array_equal(_state(resumed)[k], v, err_msg=k)


def test_resume_with_dropout_on_the_device_warns(cuda, tmp_path):
    """A device generator's state is not in the checkpoint: resuming a model with dropout
    there says that its masks will differ (without dropout the resume is bit-identical)."""
    x, y = _data()

    def run(epochs, resume):
        ng.manual_seed(0)
        model = nn.Sequential(nn.Linear(12, 16), nn.Dropout(0.2), nn.Linear(16, 4)).to(cuda)
        opt = ng.optim.SGD(model.parameters(), lr=0.1)
        loader = DataLoader(ArrayDataset(x, y), 32, shuffle=True, seed=1, device=cuda)
        train.fit(model, ng.nn.functional.cross_entropy, opt, loader, epochs=epochs,
                  run_dir=tmp_path / "r", resume=resume, progress=False)

    run(1, False)
    with pytest.warns(RuntimeWarning, match="dropout masks from here on differ"):
        run(2, True)


def test_checkpoint_round_trip_from_the_device(cuda, tmp_path):
    model = _model().to(cuda)
    ng.io.save(model.state_dict(), tmp_path / "m.safetensors")
    on_dev = ng.io.load(tmp_path / "m.safetensors", device=cuda)
    on_cpu = ng.io.load(tmp_path / "m.safetensors")
    for k, v in model.state_dict().items():
        assert on_dev[k].device.startswith(cuda) and on_cpu[k].device == "cpu"
        np.testing.assert_array_equal(on_dev[k].numpy(), v.numpy())
        np.testing.assert_array_equal(on_cpu[k].numpy(), v.numpy())


def test_evaluate_and_predict_on_the_device(cuda):
    x, y = _data()
    mc, md = _model(), _model().to(cuda)
    want = train.evaluate(mc, DataLoader(ArrayDataset(x, y), 32),
                          ng.nn.functional.cross_entropy)
    got = train.evaluate(md, DataLoader(ArrayDataset(x, y), 32, device=cuda),
                         ng.nn.functional.cross_entropy)
    assert got["accuracy"] == want["accuracy"]
    _close(got["loss"], want["loss"])
    pd = train.predict(md, ng.tensor(x, device=cuda))
    assert isinstance(pd, np.ndarray)
    _close(pd, train.predict(mc, ng.tensor(x)))


def _same_report(got, want, where):
    """Two JSON-able reports: the same keys and strings, floats within RTOL (histogram counts
    may move by an element whose value sits on a bin edge)."""
    if isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for k in want:
            if k != "hist":
                _same_report(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list | tuple):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _same_report(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        _close(np.float64(got), np.float64(want), where)
    else:
        assert got == want, where


def test_diagnostics_on_the_device_match_the_cpu(cuda):
    x, y = _data(32)
    loss = ng.nn.functional.cross_entropy
    rc = D.layer_stats(_model(), ng.tensor(x), ng.tensor(y), loss)
    rd = D.layer_stats(_model().to(cuda), ng.tensor(x, device=cuda), ng.tensor(y, device=cuda),
                       loss)
    _same_report(rd.to_dict(), rc.to_dict(), "layer_stats")
    ec = D.model_hessian_eigenvalues(_model(), loss, ng.tensor(x), ng.tensor(y), k=2)
    ed = D.model_hessian_eigenvalues(_model().to(cuda), loss, ng.tensor(x, device=cuda),
                                     ng.tensor(y, device=cuda), k=2)
    np.testing.assert_allclose(ed, ec, rtol=1e-3)
    checks = D.check_gradients(_model().to(cuda), loss, ng.tensor(x, device=cuda),
                               ng.tensor(y, device=cuda), max_per_param=5)
    assert checks and all(c["max_rel_error"] < 1e-4 for c in checks)


def test_diagnostics_take_host_arrays_for_a_device_model(cuda):
    """Arrays given to layer_stats and the loss landscape go to the model's device (as they
    do for predict), with the CPU's results."""
    x, y = _data(32)
    loss = ng.nn.functional.cross_entropy
    want = D.layer_stats(_model(), x, y, loss).to_dict()
    _same_report(D.layer_stats(_model().to(cuda), x, y, loss).to_dict(), want, "layer_stats")
    *_, zc = D.surface_2d(_model(), loss, (x, y), n=3)
    *_, zd = D.surface_2d(_model().to(cuda), loss, (x, y), n=3)
    _close(zd, zc, "surface")


def test_gradient_check_with_dropout_on_the_device_leaves_the_stream_alone(cuda):
    """Each evaluation draws the same masks (a private stream on a device, whose generator
    state cannot be exported); the user's stream goes on as if the check had not run."""
    ng.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 4)).to(cuda)
    x, y = (ng.tensor(a, device=cuda) for a in _data(16))
    ng.manual_seed(5)
    want = ng.rand(6, device=cuda).numpy()
    ng.manual_seed(5)
    rows = D.check_gradients(model, ng.nn.functional.cross_entropy, x, y, max_per_param=5)
    assert all(r["max_rel_error"] < 1e-4 for r in rows)
    np.testing.assert_array_equal(ng.rand(6, device=cuda).numpy(), want)


def test_pruning_masks_on_the_device_match_the_cpu(cuda):
    mc, md = _model(), _model().to(cuda)
    for m in (mc, md):
        prune.global_magnitude(prune.prunable_weights(m), 0.5)
    masks_c, masks_d = prune.get_masks(mc), prune.get_masks(md)
    assert masks_c.keys() == masks_d.keys()
    for k in masks_c:
        np.testing.assert_array_equal(_host(masks_d[k]), _host(masks_c[k]), err_msg=k)
    x = ng.tensor(_data(8)[0])
    _close(md(x.to(cuda)).numpy(), mc(x).numpy())


def test_replace_head_stays_on_the_device(cuda):
    model = _model().to(cuda)
    head = train.replace_head(model, 5, seed=0)
    assert all(p.device.startswith(cuda) for p in head.parameters())
    assert model(ng.tensor(_data(4)[0], device=cuda)).shape == (4, 5)


def test_onnx_export_of_a_device_model(cuda, tmp_path):
    pytest.importorskip("onnx")
    x = _data(8)[0]
    model = _model().to(cuda)
    ng.onnx.export(model, ng.tensor(x, device=cuda), tmp_path / "m.onnx")
    back = ng.onnx.load(tmp_path / "m.onnx")
    _close(back(ng.tensor(x)).numpy(), _model()(ng.tensor(x)).numpy())


def test_region_count_on_the_device(cuda):
    ng.manual_seed(0)
    mc = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))
    md = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))
    md.load_state_dict(mc.state_dict())
    md.to(cuda)
    a, b = [-3.0, -2.0], [3.0, 2.5]
    assert (D.regions.count_regions_line(md, a, b, n=2000)
            == D.regions.count_regions_line(mc, a, b, n=2000))


FACTORIES = {
    "tensor": lambda: ng.tensor([1.0, 2.0]), "zeros": lambda: ng.zeros(2, 3),
    "ones": lambda: ng.ones(2), "empty": lambda: ng.empty(2), "full": lambda: ng.full(2, 3.0),
    "arange": lambda: ng.arange(4), "linspace": lambda: ng.linspace(0, 1, 5),
    "eye": lambda: ng.eye(3), "rand": lambda: ng.rand(2), "randn": lambda: ng.randn(2),
    "randint": lambda: ng.randint(0, 5, (3,)), "randperm": lambda: ng.randperm(4),
    "normal": lambda: ng.normal(size=(2,)), "uniform": lambda: ng.uniform(size=(2,)),
    "as_tensor": lambda: ng.as_tensor(np.ones(2)),
}


def test_randperm_on_the_device(cuda):
    """CuPy's generator has no permutation: the device draws one by sorting uniform draws."""
    g = ng.random.Generator(cuda, seed=3)
    perms = [ng.randperm(50, generator=g).numpy() for _ in range(2)]
    for p in perms:
        assert p.dtype == np.int64 and sorted(p.tolist()) == list(range(50))
    assert not np.array_equal(perms[0], perms[1])
    again = ng.random.Generator(cuda, seed=3)
    assert np.array_equal(ng.randperm(50, generator=again).numpy(), perms[0])


def test_set_default_device_moves_every_factory(cuda):
    """PyTorch's set_default_device: factories without ``device=`` make their tensors there,
    in every thread; an explicit device and the ``*_like`` functions are not affected."""
    import threading

    cpu_t = ng.ones(2)
    ng.set_default_device(cuda)
    try:
        assert ng.get_default_device() == "cuda:0"
        for name, make in FACTORIES.items():
            assert make().device == "cuda:0", name
        assert ng.zeros(2, device="cpu").device == "cpu"
        assert ng.zeros_like(cpu_t).device == "cpu"
        xb, yb = next(iter(DataLoader(ArrayDataset(*_data(8)), 4)))  # batches follow it
        assert xb.device == yb.device == "cuda:0"
        # gradcheck's tensors too, so constants the function makes meet its inputs
        assert ng.gradcheck(lambda a: (a * ng.tensor([2.0, 3.0], dtype=ng.float64)).sum(),
                            np.ones(2))
        seen = []
        th = threading.Thread(target=lambda: seen.append(ng.zeros(1).device))
        th.start()
        th.join()
        assert seen == ["cuda:0"]  # process-wide
    finally:
        ng.set_default_device(None)
    assert ng.get_default_device() == "cpu" and ng.zeros(1).device == "cpu"


def test_default_device_block_builds_and_trains_a_model_there(cuda):
    """``with ng.default_device("cuda"):`` a model's parameters, its inputs and its training
    step are on the device; the same seed gives the same weights twice; other threads and the
    code after the block keep the CPU; blocks nest."""
    import threading

    seen = []
    with ng.default_device(cuda):
        ng.manual_seed(0)
        model = ng.models.create("mnist1d_cnn", seed=0)
        first = _state(model)
        again = ng.models.create("mnist1d_cnn", seed=0)
        x, y = ng.randn(8, 40), ng.randint(0, 10, (8,))
        opt = ng.optim.Adam(model.parameters(), lr=1e-2)
        loss = ng.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        with ng.default_device("cpu"):
            assert ng.zeros(1).device == "cpu"
        th = threading.Thread(target=lambda: seen.append(ng.zeros(1).device))
        th.start()
        th.join()
        assert ng.zeros(1).device == "cuda:0"
    assert all(p.device == "cuda:0" for p in model.parameters()) and x.device == "cuda:0"
    for k, a in again.state_dict().items():
        assert a.device == "cuda:0", k
        np.testing.assert_array_equal(a.numpy(), first[k], err_msg=k)
    assert seen == ["cpu"] and ng.zeros(1).device == "cpu"
    assert np.isfinite(loss.item())


def test_default_device_refuses_an_unknown_device():
    with pytest.raises(ng.DeviceError, match="unknown device"):
        ng.set_default_device("tpu")
    with pytest.raises(ng.DeviceError):
        ng.default_device("gpu:x")
    assert ng.get_default_device() == "cpu"


@pytest.mark.parametrize("hidden,bidirectional", [(6, True), (20, True), (40, False)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gru_layer_on_the_device(cuda, hidden, bidirectional, dtype):
    """A GRU layer's output, final state and gradients on the device against the CPU. A layer of
    up to 32 state rows runs each time loop as one kernel (``B.gru_loops_cuda``), a larger one a
    product and one kernel a step (``B.gru_step_kernel``)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 9, 3)).astype(dtype)
    h0 = rng.standard_normal((1 + bidirectional, 5, hidden)).astype(dtype)
    res = []
    for device in ("cpu", cuda):
        ng.manual_seed(0)
        gru = nn.GRU(3, hidden, batch_first=True, bidirectional=bidirectional,
                     dtype=getattr(ng, dtype)).to(device)
        xt = ng.tensor(x, device=device, requires_grad=True)
        y, hn = gru(xt, ng.tensor(h0, device=device))
        ((y * y).sum() + hn.sum()).backward()
        res.append([y, hn, xt.grad] + [p.grad for p in gru.parameters()])
    tol = 2e-4 if dtype == "float32" else 1e-9
    for k, (got, want) in enumerate(zip(res[1], res[0])):
        assert got.device == "cuda:0" and got.dtype == want.dtype
        g, w = got.numpy(), want.numpy()
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol * max(1.0, np.abs(w).max()),
                                   err_msg=f"array {k}")


def test_cross_entropy_targets_are_checked_on_the_device(cuda):
    """Out-of-range class targets on the device raise as on the CPU (one reduction there,
    ``B.count_bad_targets``); ignored ones and valid ones pass."""
    from nodegrad.nn import functional as F

    x = ng.tensor(np.zeros((4, 3), np.float32), device=cuda)
    for t, kw in (([0, 1, 2, 5], {}), ([0, -1, 2, 1], {}), ([0, -2, 2, 1], {"ignore_index": -1})):
        with pytest.raises(IndexError, match=r"cross_entropy: target (5|-1|-2) is out of range "
                                             r"for 3 classes"):
            F.cross_entropy(x, ng.tensor(np.array(t), device=cuda), **kw)
    ok = F.cross_entropy(x, ng.tensor(np.array([0, -1, 2, 1]), device=cuda), ignore_index=-1)
    assert abs(float(ok.item()) - np.log(3)) < 1e-6


def test_the_cuda_namespace_on_the_device(cuda):
    """``torch.cuda``'s everyday calls: availability, count, seeding, synchronising, memory."""
    assert ng.cuda.is_available() and ng.cuda.device_count() >= 1
    assert ng.cuda.current_device() == 0
    ng.cuda.manual_seed(5)
    a = ng.randn(4, device="cuda").numpy()
    ng.cuda.manual_seed_all(5)
    np.testing.assert_array_equal(ng.randn(4, device="cuda").numpy(), a)
    x = ng.ones(1000, device="cuda")
    ng.cuda.synchronize()
    ng.cuda.synchronize(0)
    assert ng.cuda.memory_reserved() >= ng.cuda.memory_allocated() >= 0
    del x
    ng.cuda.empty_cache()
    with pytest.raises(ng.DeviceError, match="expected a CUDA device"):
        ng.cuda.synchronize("cpu")
    with pytest.raises(ng.DeviceError, match="does not exist"):
        ng.cuda.synchronize(ng.cuda.device_count())


def test_the_cuda_namespace_without_a_device(monkeypatch):
    monkeypatch.setattr(ng._backend, "cuda_available", lambda: False)
    monkeypatch.setattr(ng._backend, "cuda_device_count", lambda: 0)
    assert not ng.cuda.is_available() and ng.cuda.device_count() == 0
    ng.cuda.manual_seed(0)  # nothing to seed: no error, as PyTorch's
    ng.cuda.empty_cache()
    with pytest.raises(ng.DeviceError, match="no GPU is available"):
        ng.cuda.synchronize()
    with pytest.raises(ng.DeviceError, match="no GPU is available"):
        ng.cuda.memory_allocated()


def test_data_parallel_on_one_device(cuda):
    """``nn.DataParallel``: PyTorch's state-dict prefix; one device moves the inputs there."""
    ng.manual_seed(0)
    inner = nn.Linear(3, 2).to(cuda)
    model = nn.DataParallel(inner, device_ids=[0])
    assert list(model.state_dict()) == ["module.weight", "module.bias"]
    x = ng.randn(4, 3)
    out = model(x)
    assert out.device == inner.weight.device
    np.testing.assert_allclose(out.numpy(), inner(x.to(cuda)).numpy(), rtol=1e-6)
    out.sum().backward()
    assert inner.weight.grad is not None


def test_data_parallel_without_devices_and_its_errors():
    torch = pytest.importorskip("torch")
    ng.manual_seed(0)
    model = nn.DataParallel(nn.Linear(3, 2))
    theirs = torch.nn.DataParallel(torch.nn.Linear(3, 2))
    assert list(model.state_dict()) == list(theirs.state_dict())
    x = ng.randn(4, 3)
    np.testing.assert_array_equal(model(x).numpy(), model.module(x).numpy())
    with pytest.raises(NotImplementedError, match="DistributedDataParallel"):
        nn.DataParallel(nn.Linear(3, 2), device_ids=[0, 1])
    with pytest.raises(TypeError, match="expected a Module"):
        nn.DataParallel(lambda x: x)
