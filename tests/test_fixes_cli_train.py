"""Regressions of the training loop and the ``nodegrad`` command: batches of several inputs
count their samples, models that return a tuple, ``epochs`` checked, the early-stopping reason
in history.json, 1-based epochs in ModelCheckpoint's files, plain lists of batches (with an
exact resume), F1 and R² of the whole epoch, gradient accumulation (fit's ``accumulate``, the
CLI's ``--accumulate``), ensemble members in run directories of their own, one-line errors for
mistyped config values, a damaged config.json, a dict batch without inputs and an empty
validation loader (before training)."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from safetensors import safe_open

import nodegrad as ng
from nodegrad import nn, train
from nodegrad import data as nd
from nodegrad.cli import main
from nodegrad.nn import functional as F

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(pathlib.Path(__file__).parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])])}
RNG = np.random.default_rng(0)
X = RNG.standard_normal((103, 5)).astype(np.float32)
Y = (X[:, 0] > 0).astype(np.int64)


def _net(seed: int = 0) -> nn.Module:
    ng.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))


class _Pair(nn.Module):
    """The same network on a batch given as a dict or a tuple of two inputs."""

    def __init__(self):
        super().__init__()
        self.net = _net()

    def forward(self, x):
        a, b = (x["a"], x["b"]) if isinstance(x, dict) else x
        return self.net(a + b)


class _DictSet(nd.Dataset):
    def __len__(self):
        return len(X)

    def __getitem__(self, i):
        return {"a": X[i] / 2, "b": X[i] / 2}, Y[i]


class _TupleSet(_DictSet):
    def __getitem__(self, i):
        return (X[i] / 2, X[i] / 2), Y[i]


def _fit(model, loader, val=None, **kw):
    return train.fit(model, F.cross_entropy, ng.optim.SGD(model.parameters(), lr=0.1), loader,
                     val, progress=False, **kw)


@pytest.mark.parametrize("dataset", [_DictSet, _TupleSet])
def test_batches_of_several_inputs_weight_by_samples(dataset):
    # batches of 50, 50 and 3 samples: len() of a dict or tuple batch is 2, not the batch size
    plain = _fit(_net(), nd.DataLoader(nd.ArrayDataset(X, Y), 50),
                 nd.DataLoader(nd.ArrayDataset(X, Y), 50))
    pair = _Pair()
    h = _fit(pair, nd.DataLoader(dataset(), 50), nd.DataLoader(dataset(), 50))
    for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(h[k], plain[k], rtol=1e-6, err_msg=k)
    ev = train.evaluate(pair, nd.DataLoader(dataset(), 50), F.cross_entropy)
    np.testing.assert_allclose(ev["loss"], h["val_loss"][0], rtol=1e-6)


class _WithAux(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _net()

    def forward(self, x):
        out = self.net(x)
        return out, out.sum()


def test_model_returning_a_tuple():
    model = _WithAux()
    loss = lambda out, y: F.cross_entropy(out[0], y) + 0.0 * out[1]  # noqa: E731
    h = train.fit(model, loss, ng.optim.SGD(model.parameters(), lr=0.1),
                  nd.DataLoader(nd.ArrayDataset(X, Y), 50),
                  nd.DataLoader(nd.ArrayDataset(X, Y), 50), progress=False)
    ref = _fit(_net(), nd.DataLoader(nd.ArrayDataset(X, Y), 50),
               nd.DataLoader(nd.ArrayDataset(X, Y), 50))
    np.testing.assert_allclose(h["accuracy"], ref["accuracy"])
    np.testing.assert_allclose(h["val_accuracy"], ref["val_accuracy"])
    logits, aux = train.predict(model, X, batch_size=50)
    assert logits.shape == (103, 2) and aux.shape == (3,)
    res = train.evaluate(model, nd.DataLoader(nd.ArrayDataset(X, Y), 50), loss)
    assert res["accuracy"] == pytest.approx(float((logits.argmax(1) == Y).mean()))


@pytest.mark.parametrize("epochs", [-1, 1.5, True, "2"])
def test_fit_refuses_bad_epochs(epochs):
    with pytest.raises(ValueError, match="epochs must be an integer >= 0"):
        _fit(_net(), nd.DataLoader(nd.ArrayDataset(X, Y), 50), epochs=epochs)


def test_history_json_names_the_early_stop(tmp_path):
    model = _net()
    es = train.EarlyStopping("val_loss", patience=1)
    h = train.fit(model, F.cross_entropy, ng.optim.SGD(model.parameters(), lr=20.0),
                  nd.DataLoader(nd.ArrayDataset(X, Y), 10, shuffle=True, seed=0),
                  nd.DataLoader(nd.ArrayDataset(X, Y), 103), epochs=30, callbacks=[es],
                  run_dir=tmp_path, progress=False)
    assert h.stop_reason and len(h) < 30
    doc = json.loads((tmp_path / "history.json").read_text())
    assert doc["stop_reason"] == h.stop_reason
    assert len(doc["epochs"]) == len(h)


def test_model_checkpoint_epochs_are_one_based(tmp_path):
    model = _net()
    h = _fit(model, nd.DataLoader(nd.ArrayDataset(X, Y), 50),
             nd.DataLoader(nd.ArrayDataset(X, Y), 103), epochs=2,
             callbacks=[train.ModelCheckpoint(tmp_path)])
    with safe_open(str(tmp_path / "last.safetensors"), "np") as f:
        meta = json.loads(f.metadata()["nodegrad"])
    assert meta["epoch"] == h.epochs[-1]["epoch"] == 2 and meta["step"] == 6
    with safe_open(str(tmp_path / "best.safetensors"), "np") as f:
        meta = json.loads(f.metadata()["nodegrad"])
    assert meta["epoch"] == h.best()["epoch"]


def test_list_of_batches_trains_and_resumes_exactly(tmp_path):
    batches = [(ng.tensor(X[i:i + 20]), ng.tensor(Y[i:i + 20])) for i in range(0, 100, 20)]

    def run(resume=False, callbacks=()):
        model = _net()
        h = train.fit(model, F.cross_entropy, ng.optim.Adam(model.parameters(), lr=0.1),
                      batches, batches, epochs=3, progress=False, run_dir=tmp_path / "r",
                      checkpoint_every=3, resume=resume, callbacks=callbacks)
        return model, h

    class Stop(train.Callback):
        def on_batch_end(self, tr, logs):
            if tr.step == 7:
                raise KeyboardInterrupt

    ref = _net()
    ref_h = train.fit(ref, F.cross_entropy, ng.optim.Adam(ref.parameters(), lr=0.1), batches,
                      batches, epochs=3, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run(callbacks=[Stop()])
    model, h = run(resume=True)
    for k, v in ref.state_dict().items():
        assert np.array_equal(model.state_dict()[k].numpy(), v.numpy()), k
    assert h["val_loss"] == ref_h["val_loss"]
    assert [r["loss"] for r in h.steps] == [r["loss"] for r in ref_h.steps]


class _Recorder(train.Callback):
    """Keeps the outputs of every training step (a forward hook on the model)."""

    def __init__(self, model):
        self.outs = []
        model.register_forward_hook(
            lambda mod, inp, out: self.outs.append(out.numpy().copy()) if mod.training else None)


def test_training_r2_and_f1_score_the_whole_epoch():
    sk = pytest.importorskip("sklearn.metrics")
    yr = (X @ RNG.standard_normal((5, 1))).astype(np.float32)
    ng.manual_seed(0)
    model = nn.Linear(5, 1)
    rec = _Recorder(model)
    h = train.fit(model, F.mse_loss, ng.optim.SGD(model.parameters(), lr=0.01),
                  nd.DataLoader(nd.ArrayDataset(X, yr), 16), epochs=1, metrics=["mse", "r2"],
                  callbacks=[rec], progress=False)
    outs = np.concatenate(rec.outs)
    assert h["r2"][0] == pytest.approx(sk.r2_score(yr, outs), rel=1e-6)
    assert h["mse"][0] == pytest.approx(sk.mean_squared_error(yr, outs), rel=1e-6)
    model = _net()
    rec = _Recorder(model)
    h = _fit(model, nd.DataLoader(nd.ArrayDataset(X, Y), 8), epochs=1, callbacks=[rec],
             metrics=["accuracy", "f1", "balanced_accuracy"])
    pred = np.concatenate(rec.outs).argmax(1)
    assert h["f1"][0] == pytest.approx(sk.f1_score(Y, pred, average="macro"))
    assert h["balanced_accuracy"][0] == pytest.approx(sk.balanced_accuracy_score(Y, pred))
    assert h["accuracy"][0] == pytest.approx(sk.accuracy_score(Y, pred))


def test_whole_epoch_metrics_resume_mid_epoch_exactly(tmp_path):
    class Stop(train.Callback):
        def on_batch_end(self, tr, logs):
            if tr.step == 9:
                raise KeyboardInterrupt

    def run(**kw):
        model = _net()
        return train.fit(model, F.cross_entropy, ng.optim.Adam(model.parameters(), lr=0.05),
                         nd.DataLoader(nd.ArrayDataset(X, Y), 10, shuffle=True, seed=0),
                         epochs=2, metrics=["f1"], progress=False, **kw)

    ref = run()
    with pytest.raises(KeyboardInterrupt):
        run(run_dir=tmp_path, checkpoint_every=4, callbacks=[Stop()])
    assert ref["f1"] == run(run_dir=tmp_path, checkpoint_every=4, resume=True)["f1"]


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("text, says", [('augment = "yes"', 'augment must be true or false'),
                                        ("epochs = true", "epochs must be a value")])
def test_config_values_of_the_wrong_kind(tmp_path, capsys, text, says):
    cfg = tmp_path / "run.toml"
    cfg.write_text(text + "\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    assert says in _err_line(capsys)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("text, says", [("{bad", "not valid JSON"),
                                        ("[1, 2]", "a JSON list"),
                                        ("{}", "no model, dataset, epochs, seed")])
def test_damaged_config_json_is_one_line(tmp_path, capsys, text, says):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text(text)
    for argv in (["train", "--out", str(run), "--resume"], ["evaluate", str(run)],
                 ["export", str(run)]):
        assert main(argv) == 1
        err = _err_line(capsys)
        assert "config.json is not a run's config" in err and says in err, err



def test_python_m_nodegrad_config_error_exit_status(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text("jit = 1\n")
    res = subprocess.run([sys.executable, "-m", "nodegrad", "train", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=120, env=ENV, cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip() == (f"nodegrad: error: config file {cfg}: jit must be true or "
                                  "false, got 1")
    assert not (tmp_path / "runs").exists()


def _f64_net():
    ng.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(ng.float64)


def _f64_loader(batch_size):
    y3 = (np.arange(len(X)) % 3).astype(np.int64)
    return nd.DataLoader(nd.ArrayDataset(X.astype(np.float64), y3), batch_size,
                         dtype=ng.float64)


@pytest.mark.parametrize("small, k, big", [(10, 4, 40), (30, 2, 60)])
def test_accumulate_steps_as_one_larger_batch(small, k, big):
    # 103 samples: windows of k small batches hold the samples of one big batch, the last
    # one fewer (uneven batches are weighted by their samples)
    runs = []
    for bs, acc in ((small, k), (big, 1)):
        model = _f64_net()
        h = train.fit(model, F.cross_entropy,
                      ng.optim.SGD(model.parameters(), lr=0.5, momentum=0.9), _f64_loader(bs),
                      epochs=2, accumulate=acc, progress=False,
                      callbacks=[train.GradientClipping(max_norm=0.5)])
        runs.append((model, h))
    (a, ha), (b, hb) = runs
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=0, atol=1e-13)
    assert len(ha.steps) == len(hb.steps) == 2 * -(-103 // big)
    np.testing.assert_allclose([r["loss"] for r in ha.steps], [r["loss"] for r in hb.steps],
                               rtol=1e-13)
    np.testing.assert_allclose(ha["loss"], hb["loss"], rtol=1e-13)


@pytest.mark.parametrize("kw", [{"accumulate": 0}, {"accumulate": 2.0},
                                {"accumulate": 2, "jit": True}])
def test_accumulate_refuses_bad_values(kw):
    with pytest.raises(ValueError, match="accumulate"):
        _fit(_net(), nd.DataLoader(nd.ArrayDataset(X, Y), 50), **kw)


def test_accumulate_resumes_mid_epoch_exactly(tmp_path):
    class Stop(train.Callback):
        def on_batch_end(self, tr, logs):
            if tr.step == 5:
                raise KeyboardInterrupt

    def run(**kw):
        model = _net()
        opt = ng.optim.Adam(model.parameters(), lr=0.05)
        sched = ng.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8)
        h = train.fit(model, F.cross_entropy, opt,
                      nd.DataLoader(nd.ArrayDataset(X, Y), 10, shuffle=True, seed=0),
                      epochs=2, accumulate=3, scheduler=sched, progress=False, **kw)
        return model, h

    ref, ref_h = run()
    with pytest.raises(KeyboardInterrupt):
        run(run_dir=tmp_path, checkpoint_every=2, callbacks=[Stop()])
    model, h = run(run_dir=tmp_path, checkpoint_every=2, resume=True)
    for k, v in ref.state_dict().items():
        assert np.array_equal(model.state_dict()[k].numpy(), v.numpy()), k
    assert list(h.steps) == list(ref_h.steps) and h["loss"] == ref_h["loss"]


def test_cli_accumulate(tmp_path, capsys):
    out = tmp_path / "r"
    argv = ["train", "--model", "digits_mlp", "--epochs", "1", "--quiet", "--out", str(out)]
    assert main([*argv, "--accumulate", "3", "--schedule", "cosine"]) == 0
    steps = (out / "steps.jsonl").read_text().splitlines()
    assert main([*argv[:-1], str(tmp_path / "plain")]) == 0
    batches = len((tmp_path / "plain" / "steps.jsonl").read_text().splitlines())
    assert len(steps) == -(-batches // 3)
    assert json.loads(steps[-1])["lr"] > 0 and json.loads((out / "config.json").read_text())[
        "accumulate"] == 3
    capsys.readouterr()
    assert main([*argv[:-2], "--out", str(out), "--resume", "--accumulate", "2"]) == 2
    assert "cannot change --accumulate" in _err_line(capsys)
    assert main([*argv, "--accumulate", "2", "--jit", "--overwrite"]) == 2
    assert "--accumulate" in _err_line(capsys)


def test_dict_batch_without_inputs_names_the_keys():
    class Labels(nd.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {"pixels": X[i], "label": Y[i]}

    with pytest.raises(ValueError, match=r"'x' or 'input'.*\['label', 'pixels'\]"):
        _fit(_net(), nd.DataLoader(Labels(), 4))


def test_train_ensemble_members_keep_their_own_run_dirs(tmp_path):
    def build():
        return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))

    def opt(m):
        return ng.optim.Adam(m.parameters(), lr=0.05)

    kw = dict(k=2, epochs=1, batch_size=50, progress=False, run_dir=tmp_path)
    first = train.train_ensemble(build, opt, F.cross_entropy, nd.ArrayDataset(X, Y), **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["member-0", "member-1"]
    again = train.train_ensemble(build, opt, F.cross_entropy, nd.ArrayDataset(X, Y),
                                 resume=True, **kw)
    for a, b in zip(first.members, again.members):  # each resumes its own finished run
        for p, q in zip(a.parameters(), b.parameters()):
            assert np.array_equal(p.numpy(), q.numpy())


def test_empty_val_loader_fails_before_training():
    model = _net()
    before = [p.numpy().copy() for p in model.parameters()]
    empty = nd.DataLoader(nd.ArrayDataset(X, Y), 200, drop_last=True)
    with pytest.raises(ValueError, match=r"evaluate: the loader yields no batches"):
        _fit(model, nd.DataLoader(nd.ArrayDataset(X, Y), 50), empty)
    assert all(np.array_equal(a, p.numpy()) for a, p in zip(before, model.parameters()))


def test_history_json_is_strict_json_when_a_value_is_not_finite(tmp_path):
    """Python writes NaN as a bare ``NaN`` token, which is not JSON (JavaScript, jq and other
    readers refuse it): history.json holds null there; history.csv keeps nan."""
    from nodegrad.train.callbacks import write_history
    from nodegrad.train.history import History

    h = History()
    h.epochs.append({"epoch": 1, "loss": float("nan"), "val_loss": float("inf"), "lr": 0.1})
    h.stop_reason = "the loss is not finite"
    write_history(h, tmp_path)
    text = (tmp_path / "history.json").read_text()
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON token {c}"))
    assert doc["epochs"][0] == {"epoch": 1, "loss": None, "val_loss": None, "lr": 0.1}
    assert "nan" in (tmp_path / "history.csv").read_text()
