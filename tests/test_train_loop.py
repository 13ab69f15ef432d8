"""fit / evaluate / predict and the callbacks, on small real and synthetic data."""

import io
import json

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import models, nn, train
from nodegrad.nn import functional as F


@pytest.fixture(scope="module")
def digits():
    return ng.data.datasets.digits()


def _loaders(d, bs=64, seed=0):
    return (ng.data.DataLoader(d.train, batch_size=bs, shuffle=True, seed=seed),
            ng.data.DataLoader(d.test, batch_size=512))


def test_fit_reaches_sane_accuracy_on_digits(digits):
    model = models.create("digits_mlp", seed=0)
    opt = ng.optim.Adam(model.parameters(), lr=1e-2)
    tl, vl = _loaders(digits)
    h = train.fit(model, F.cross_entropy, opt, tl, vl, epochs=8, progress=False)
    assert len(h) == 8 and len(h.steps) == 8 * len(tl)
    assert h.last["val_accuracy"] > 0.93
    assert h["loss"][-1] < h["loss"][0]
    res = train.evaluate(model, vl, F.cross_entropy, ["accuracy", "f1", "top5"])
    assert res["accuracy"] == pytest.approx(h.last["val_accuracy"])
    out = train.predict(model, digits.x_test)
    assert out.shape == (len(digits.x_test), 10)
    assert train.metrics.accuracy(digits.y_test, out) == pytest.approx(res["accuracy"])


def test_digits_cnn_learns(digits):
    model = models.create("digits_cnn", seed=0)
    opt = ng.optim.Adam(model.parameters(), lr=1e-2)
    tl, vl = _loaders(digits)
    h = train.fit(model, F.cross_entropy, opt, tl, vl, epochs=3, progress=False)
    assert h.last["val_accuracy"] > 0.85


class _ModeSpy(train.Callback):
    def __init__(self):
        self.modes = []

    def on_batch_end(self, tr, logs):
        self.modes.append(tr.model.training)


def test_modes_switch_automatically(digits):
    model = models.create("digits_mlp", seed=0, dropout=0.5)
    opt = ng.optim.SGD(model.parameters(), lr=0.1)
    tl, vl = _loaders(digits)
    spy = _ModeSpy()
    train.fit(model, F.cross_entropy, opt, tl, vl, epochs=2, callbacks=[spy], progress=False)
    assert all(spy.modes) and model.training  # fit leaves the mode it found
    a = train.predict(model, digits.x_test[:20])
    b = train.predict(model, digits.x_test[:20])
    assert np.array_equal(a, b)  # eval mode: dropout off


def test_early_stopping_restores_best(digits):
    model = models.create("digits_mlp", seed=0)
    opt = ng.optim.Adam(model.parameters(), lr=0.05)
    tl, vl = _loaders(digits)
    es = train.EarlyStopping(monitor="val_loss", patience=2, min_delta=10.0)  # never improves
    h = train.fit(model, F.cross_entropy, opt, tl, vl, epochs=20, callbacks=[es],
                  progress=False)
    assert len(h) == 3 and es.best_epoch == 0 and "early stopping" in h.stop_reason
    res = train.evaluate(model, vl, F.cross_entropy)
    assert res["loss"] == pytest.approx(h.epochs[0]["val_loss"], rel=1e-6)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_guard_names_step_and_parameter(digits):
    model = models.create("digits_mlp", seed=0)
    opt = ng.optim.SGD(model.parameters(), lr=1e30)
    tl, _ = _loaders(digits)
    with pytest.raises(train.NonFiniteError, match=r"step \d+ .*(loss|parameter '[\w.]+')"):
        train.fit(model, F.cross_entropy, opt, tl, epochs=5, progress=False)


def test_nan_guard_catches_nan_loss():
    model = nn.Linear(2, 1)
    x = np.array([[np.nan, 1.0]] * 8, np.float32)
    tl = ng.data.DataLoader(ng.data.ArrayDataset(x, np.zeros((8, 1), np.float32)), 4)
    opt = ng.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(train.NonFiniteError, match="step 1 .*loss is nan"):
        train.fit(model, F.mse_loss, opt, tl, metrics=(), progress=False)


def test_checkpoints_history_files_and_plots(digits, tmp_path):
    model = models.create("digits_mlp", seed=0)
    opt = ng.optim.Adam(model.parameters(), lr=1e-2)
    sched = ng.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
    tl, vl = _loaders(digits)
    mc = train.ModelCheckpoint(tmp_path)
    h = train.fit(model, F.cross_entropy, opt, tl, vl, epochs=4, scheduler=sched,
                  callbacks=[mc, train.GradientClipping(max_norm=1.0)], run_dir=tmp_path,
                  progress=False)
    for f in ("best.safetensors", "last.safetensors", "checkpoint.safetensors", "history.csv",
              "history.json"):
        assert (tmp_path / f).exists(), f
    saved = json.loads((tmp_path / "history.json").read_text())
    assert len(saved["epochs"]) == 4
    assert [r["epoch"] for r in saved["epochs"]] == [1, 2, 3, 4]
    best = ng.load(tmp_path / "best.safetensors")
    assert set(best) == set(model.state_dict())
    pytest.importorskip("matplotlib")
    from nodegrad.train import plots

    cm = train.metrics.confusion_matrix(digits.y_test, train.predict(model, digits.x_test), 10)
    paths = plots.plot_run(h, tmp_path, cm)
    assert [p.name for p in paths] == ["curves.png", "lr.png", "confusion.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_progress_prints_lines_when_not_a_tty(digits):
    model = models.create("digits_mlp", seed=0)
    opt = ng.optim.Adam(model.parameters(), lr=1e-2)
    tl, vl = _loaders(digits)
    buf = io.StringIO()
    train.fit(model, F.cross_entropy, opt, tl, vl, epochs=3,
              callbacks=[train.ProgressBar(buf)], progress=False)
    lines = buf.getvalue().strip().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("epoch 3/3") and "val_accuracy" in lines[-1]


def test_ensemble_members_and_average(digits):
    ens = train.train_ensemble(lambda: models.DigitsMLP(hidden=32),
                               lambda m: ng.optim.Adam(m.parameters(), lr=1e-2),
                               F.cross_entropy, digits.train, k=3, bootstrap=True,
                               batch_size=64, epochs=3, progress=False)
    res = ens.evaluate(digits.x_test, digits.y_test)
    assert len(res["members"]) == 3 and len(set(res["members"])) > 1
    assert res["ensemble"] > 0.85
    p = ens.predict_proba(digits.x_test)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-6)


def test_unknown_metric_is_refused(digits):
    model = models.create("digits_mlp", seed=0)
    opt = ng.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="unknown metric"):
        train.fit(model, F.cross_entropy, opt, _loaders(digits)[0], metrics=["nope"])


@pytest.mark.parametrize("name", list(models.REGISTRY))
def test_registry_models_run(name):
    spec = models.REGISTRY[name]
    m = models.create(name, seed=0)
    x = {"mnist1d": ng.randn(3, 40), "digits": ng.randn(3, 1, 8, 8),
         "regression1d": ng.randn(3, 1)}[spec.dataset]
    assert m(x).shape == (3, 1 if spec.task == "regression" else 10)


def test_mnist1d_cnn_shapes_follow_the_paper():
    m = models.CNN()
    assert m.num_parameters() == (25 * 5 + 25) + 2 * (25 * 25 * 3 + 25) + 125 * 10 + 10
    assert models.GRU().linear.in_features == 480


def test_reduce_lr_on_plateau_and_step_schedule(digits):
    model = models.create("digits_mlp", seed=0)
    opt = ng.optim.SGD(model.parameters(), lr=0.1)
    sched = ng.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5,
                                                    threshold=100.0, threshold_mode="abs")
    tl, vl = _loaders(digits)
    h = train.fit(model, F.cross_entropy, opt, tl, vl, epochs=3, scheduler=sched,
                  progress=False)
    assert h["lr"] == [0.1, 0.1, 0.05]  # the lr each epoch trained with
    model = models.create("digits_mlp", seed=0)
    opt = ng.optim.SGD(model.parameters(), lr=0.1)
    sched = ng.optim.lr_scheduler.StepLR(opt, step_size=len(tl), gamma=0.1)
    h = train.fit(model, F.cross_entropy, opt, tl, epochs=2, scheduler=sched, progress=False)
    lrs = [s["lr"] for s in h.steps]
    assert lrs[0] == 0.1 and lrs[-1] == pytest.approx(0.01)
    # each epoch's row: the rate its steps trained with, not the next step's (a per-step
    # schedule has already moved on when the epoch ends)
    assert h["lr"] == [0.1, pytest.approx(0.01)]


def test_a_loader_without_batches_is_a_clear_error():
    x, y = np.zeros((10, 2), np.float32), np.zeros(10, np.int64)
    empty = ng.data.DataLoader(ng.data.ArrayDataset(x, y), batch_size=32, drop_last=True)
    model = nn.Linear(2, 2)
    opt = ng.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"fit: the loader yields no batches \(10 samples, "
                                         r"batch_size=32, drop_last=True\); lower batch_size"):
        train.fit(model, F.cross_entropy, opt, empty, progress=False)
    with pytest.raises(ValueError, match="evaluate: the loader yields no batches"):
        train.evaluate(model, empty, F.cross_entropy)
    with pytest.raises(ValueError, match="predict: the loader yields no batches"):
        train.predict(model, empty)
    full = ng.data.DataLoader(ng.data.ArrayDataset(x, y), batch_size=5)
    with pytest.raises(ValueError, match="evaluate: the loader yields no batches"):
        train.fit(model, F.cross_entropy, opt, full, empty, progress=False)  # validation

    class Stream:  # a loader without len() that yields nothing
        def set_epoch(self, epoch):
            pass

        def __iter__(self):
            return iter(())

    with pytest.raises(ValueError, match="fit: the loader yields no batches"):
        train.fit(model, F.cross_entropy, opt, Stream(), progress=False)


def test_fit_trains_on_an_iterable_dataset_of_unknown_length(tmp_path):
    """len(loader) raised TypeError at the start of fit."""
    from nodegrad.data import DataLoader, IterableDataset

    class Stream(IterableDataset):
        def __iter__(self):
            rng = np.random.default_rng(0)
            for _ in range(200):
                x = rng.standard_normal(4).astype(np.float32)
                yield x, int(x.sum() > 0)

    ng.manual_seed(0)
    model = ng.nn.Sequential(ng.nn.Linear(4, 16), ng.nn.ReLU(), ng.nn.Linear(16, 2))
    h = ng.train.fit(model, ng.nn.functional.cross_entropy,
                     ng.optim.Adam(model.parameters(), lr=0.05),
                     DataLoader(Stream(), batch_size=20), epochs=3, progress=False,
                     run_dir=tmp_path / "run", checkpoint_every=5)
    assert h.epochs[-1]["step"] == 30 and h.epochs[-1]["accuracy"] > 0.9
    assert h.epochs[-1]["loss"] < h.epochs[0]["loss"]
