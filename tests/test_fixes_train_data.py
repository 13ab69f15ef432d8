"""Regressions of the data, training and command-line layers: --overwrite never deletes what
is not a run, early stopping keeps the best weights, exact resume with a sampler's own
generator, PyTorch's default batching and collation, binary accuracy, repeated fit calls,
--epochs on resume, the model's mode after fit, samplers whose length disagrees, a truncated
dataset cache, progress without a length, and clear errors for bad seeds and monitors."""

import io
import json
import warnings
from collections import namedtuple

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn, train
from nodegrad import data as nd
from nodegrad.cli import main
from nodegrad.nn import functional as F

TINY = ["--model", "digits_mlp", "--epochs", "2", "--quiet"]


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def _fake_run(path, **extra):
    """A directory as `nodegrad train` leaves it (its config.json and a weights file)."""
    from nodegrad.cli.train import resolve

    path.mkdir(parents=True, exist_ok=True)
    cfg = resolve({"model": "digits_mlp", "epochs": 2, "out": str(path), **extra})
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "model.safetensors").write_bytes(b"weights")
    return path


def _state(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# --- 1. --overwrite deletes only a nodegrad run, and only once every option is checked ------
@pytest.mark.parametrize("out, cwd", [(".", "a/b"), ("..", "a/b"), ("../..", "a/b")])
def test_overwrite_never_deletes_the_current_directory_or_above(out, cwd, tmp_path, capsys,
                                                                 monkeypatch):
    here = tmp_path / cwd
    here.mkdir(parents=True)
    for d in (here, *here.parents):
        if d == tmp_path.parent:
            break
        (d / "keep.txt").write_text("mine")
    _fake_run(here / "run")  # even a run directory below does not make it one
    monkeypatch.chdir(here)
    assert main(["train", *TINY, "--out", out, "--overwrite"]) == 2
    assert "is the current directory or contains it" in _err_line(capsys)
    assert (here / "keep.txt").read_text() == "mine" and (tmp_path / "a" / "keep.txt").exists()
    (here / "config.json").write_text((here / "run" / "config.json").read_text())
    assert main(["train", *TINY, "--out", ".", "--overwrite"]) == 2  # a run as the cwd: kept
    assert (here / "keep.txt").exists()


def test_overwrite_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    stuff = tmp_path / "stuff"
    stuff.mkdir()
    (stuff / "notes.txt").write_text("mine")
    (stuff / "config.json").write_text('{"model_type": "bert"}')  # another tool's config
    assert main(["train", *TINY, "--out", str(stuff), "--overwrite"]) == 2
    line = _err_line(capsys)
    assert f"{stuff} is not a nodegrad run directory" in line and "choose another --out" in line
    assert (stuff / "notes.txt").read_text() == "mine"
    link = tmp_path / "link"
    link.symlink_to(_fake_run(tmp_path / "real"))
    assert main(["train", *TINY, "--out", str(link), "--overwrite"]) == 2
    assert "symbolic link" in _err_line(capsys)
    assert (tmp_path / "real" / "model.safetensors").exists()


def test_overwrite_checks_every_option_before_deleting(tmp_path, capsys):
    run = _fake_run(tmp_path / "run")
    assert main(["train", *TINY, "--out", str(run), "--overwrite",
                 "--val-fraction", "0.0001"]) == 2
    assert "--val-fraction 0.0001" in _err_line(capsys)
    assert (run / "model.safetensors").read_bytes() == b"weights"


# --- 2. EarlyStopping restores the best weights also when patience never runs out ---------
def _spirals_fit(callbacks, epochs=6):
    d = nd.datasets.spirals(n=300, classes=3, noise=0.3, seed=0)
    ng.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 3))
    vl = nd.DataLoader(d.test, batch_size=600)
    h = train.fit(model, F.cross_entropy, ng.optim.Adam(model.parameters(), lr=0.2),
                  nd.DataLoader(d.train, batch_size=32, shuffle=True, seed=1), vl,
                  epochs=epochs, callbacks=callbacks, progress=False)
    return model, vl, h


def test_early_stopping_restores_best_weights_without_a_stop():
    es = train.EarlyStopping("val_loss", patience=100)
    model, vl, h = _spirals_fit([es], epochs=8)
    losses = h["val_loss"]
    assert es.stopped_epoch is None and int(np.argmin(losses)) == es.best_epoch != len(losses) - 1
    assert _same(_state(model), es.best_weights)
    assert train.evaluate(model, vl, F.cross_entropy)["loss"] == pytest.approx(es.best,
                                                                               rel=1e-6)
    keep = train.EarlyStopping("val_loss", patience=100, restore_best_weights=False)
    model, vl, h = _spirals_fit([keep])
    assert train.evaluate(model, vl, F.cross_entropy)["loss"] == pytest.approx(
        h["val_loss"][-1], rel=1e-6)


def test_cli_early_stopping_saves_and_reports_the_best_weights(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "digits_mlp", "--epochs", "4", "--quiet", "--lr", "0.3",
                 "--batch-size", "64", "--early-stopping", "50", "--out", str(out)]) == 0
    rows = json.loads((out / "history.json").read_text())["epochs"]
    losses = [r["val_loss"] for r in rows]
    assert len(rows) == 4 and int(np.argmin(losses)) != 3  # the best epoch is not the last
    best = {k: v.numpy() for k, v in ng.load(out / "best.safetensors").items()}
    final = {k: v.numpy() for k, v in ng.load(out / "model.safetensors").items()}
    assert _same(best, final)
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 0  # test metrics of model.safetensors
    res = json.loads((out / "results.json").read_text())["test"]
    assert f"{100 * res['accuracy']:.2f} %" in capsys.readouterr().out


# --- 3. a sampler's own generator is part of the loader's state ----------------------------
_SAMPLERS = {
    "random": lambda ds, g: {"sampler": nd.RandomSampler(ds, generator=g), "batch_size": 4},
    "weighted": lambda ds, g: {"sampler": nd.WeightedRandomSampler(np.arange(1.0, 24.0), 23,
                                                                   generator=g),
                               "batch_size": 4},
    "subset": lambda ds, g: {"sampler": nd.SubsetRandomSampler(range(2, 21), generator=g),
                             "batch_size": 4},
    "batch": lambda ds, g: {"batch_sampler": nd.BatchSampler(nd.RandomSampler(ds, generator=g),
                                                             4, False)},
}


def _ids(loader) -> list:
    return [b[1].numpy().tolist() for b in loader]


@pytest.mark.parametrize("kind", list(_SAMPLERS))
def test_loader_state_restores_the_samplers_generator(kind):
    ds = nd.ArrayDataset(np.zeros((23, 1), np.float32), np.arange(23))
    ref = nd.DataLoader(ds, **_SAMPLERS[kind](ds, ng.Generator(seed=7)))
    epochs = [_ids(ref) for _ in range(3)]
    loader = nd.DataLoader(ds, **_SAMPLERS[kind](ds, ng.Generator(seed=7)))
    _ids(loader)
    it = iter(loader)
    head = [next(it)[1].numpy().tolist() for _ in range(2)]
    state = loader.state_dict()
    fresh = nd.DataLoader(ds, **_SAMPLERS[kind](ds, ng.Generator(seed=7)))
    fresh.load_state_dict(json.loads(json.dumps(state)))  # as plain data, as in a checkpoint
    assert head + _ids(fresh) == epochs[1]
    assert _ids(fresh) == epochs[2]  # the next epoch draws what it drew before


def test_fit_resume_with_a_samplers_generator_is_bit_identical(tmp_path):
    d = nd.datasets.spirals(n=150, classes=3, seed=0)

    def run(run_dir=None, resume=False, kill_at=None):
        ng.manual_seed(0)
        model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))
        opt = ng.optim.SGD(model.parameters(), lr=0.05)
        sampler = nd.RandomSampler(d.train, generator=ng.Generator(seed=7))
        loader = nd.DataLoader(d.train, batch_size=16, sampler=sampler)

        class Kill(train.Callback):
            def on_batch_end(self, tr, logs):
                if tr.step == kill_at:
                    raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt) if kill_at else _nothing():
            train.fit(model, F.cross_entropy, opt, loader, epochs=3, progress=False,
                      callbacks=[Kill()], run_dir=run_dir, checkpoint_every=3, resume=resume)
        return _state(model)

    straight = run()
    run(tmp_path / "run", kill_at=5)
    assert _same(run(tmp_path / "run", resume=True), straight)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --- 4. the loader's default batching has default_collate's structure ----------------------
def _plain(x):
    """Nested lists of values (tuples and lists alike), tensors as lists."""
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, tuple | list):
        return [_plain(v) for v in x]
    return x


_Point = namedtuple("_Point", "x y")


class _Samples:
    def __init__(self, make):
        self.make = make

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return self.make(i)


@pytest.mark.parametrize("make", [
    lambda i: (np.full(3, i, np.float32), (i, 0.5)),  # (x, (label, weight))
    lambda i: np.full(3, i, np.float32),  # a plain array
    lambda i: i,  # a number
    lambda i: {"x": np.full(2, i, np.float32), "meta": (i, [i, 2 * i]), "name": f"s{i}"},
    lambda i: _Point(np.full(2, i, np.float32), i),
    lambda i: [np.full(2, i, np.float32), i],
], ids=["nested-tuple", "array", "number", "dict", "namedtuple", "list"])
def test_default_batching_has_the_structure_of_default_collate(make):
    torch = pytest.importorskip("torch")
    ds = _Samples(make)
    ours = next(iter(nd.DataLoader(ds, batch_size=2)))
    theirs = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert type(ours) is type(theirs) or isinstance(ours, tuple) and isinstance(theirs, list) \
        or isinstance(ours, ng.Tensor) and isinstance(theirs, torch.Tensor)
    assert _plain(ours) == _plain(theirs)
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, ng.Tensor)
    if isinstance(theirs, _Point):  # a transform of the first field keeps the namedtuple
        flipped = next(iter(nd.DataLoader(ds, 2, transform=lambda x, rng: -x)))
        assert isinstance(flipped, _Point) and (flipped.x.numpy() == -ours.x.numpy()).all()
    assert nd.DataLoader(range(5), 2).__iter__().__next__().tolist() == [0, 1]


def test_default_batching_over_a_concatenation_of_plain_datasets():
    a, b = _Samples(lambda i: np.full(2, i, np.float32)), _Samples(lambda i: np.full(2, -i,
                                                                                     np.float32))
    batch = next(iter(nd.DataLoader(nd.ConcatDataset([a, b]), 8)))
    assert isinstance(batch, ng.Tensor) and batch.numpy()[:, 0].tolist() == [0, 1, 2, 3, 0, -1,
                                                                             -2, -3]
    with pytest.raises(RuntimeError, match="equal size"):
        next(iter(nd.DataLoader(_Samples(lambda i: (1,) * (i + 1)), 2)))


# --- 5. default_collate of numbers: torch.tensor's dtype ----------------------------------
@pytest.mark.parametrize("batch", [
    [1, 2.5], [0, 0.9], [2.5, 1], [True, False], [True, 1], [1, True], [True, 2.5], [1.5, True],
    [1, 2], [1.0, 2.0], [np.int64(1), 2.5], [1, np.float32(2.5)], [np.float32(1), 2],
    [np.float64(1), 2], [np.int8(1), np.uint8(2)], [np.float16(1), 2], [np.bool_(True), True],
    [np.bool_(True), 2.5], [np.int32(2), np.float16(1)],
], ids=str)
def test_default_collate_of_numbers_matches_torch(batch):
    torch = pytest.importorskip("torch")
    ours, theirs = nd.default_collate(batch), torch.utils.data.default_collate(batch)
    assert str(ours.dtype) == str(theirs.dtype).removeprefix("torch.")
    assert ours.tolist() == theirs.tolist()


def test_default_collate_refuses_what_is_not_a_number():
    with pytest.raises(TypeError, match="default_collate: a batch of numbers holds NoneType"):
        nd.default_collate([1, None])


# --- 6. accuracy of a single-logit binary model --------------------------------------------
def test_accuracy_of_one_logit_per_sample():
    from nodegrad.train import metrics as M

    logits = np.array([[2.0], [-1.0], [0.5], [-3.0]], np.float32)
    assert M.accuracy(np.array([[1.0], [0.0], [1.0], [1.0]], np.float32), logits) == 0.75
    assert M.accuracy(np.array([1, 0, 1, 1]), logits[:, 0]) == 0.75  # (N,) logits
    assert M.accuracy(np.array([1, 0, 1, 1]), np.array([1, 0, 1, 0])) == 0.75  # labels
    assert M.confusion_matrix(np.array([1, 0, 1, 1]), logits).tolist() == [[1, 0], [1, 2]]
    x = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)
    y = (x[:, :1] > 0).astype(np.float32)
    ng.manual_seed(0)
    m = nn.Linear(2, 1)
    loader = nd.DataLoader(nd.ArrayDataset(x, y), 50)
    h = train.fit(m, F.binary_cross_entropy_with_logits, ng.optim.Adam(m.parameters(), lr=0.1),
                  loader, epochs=8, progress=False)
    true = float(((train.predict(m, x) > 0) == (y > 0.5)).mean())
    assert true > 0.95
    assert train.evaluate(m, loader, F.binary_cross_entropy_with_logits)["accuracy"] == true
    assert h.last["accuracy"] > 0.9


# --- 7. fitting again continues the loader's epochs ----------------------------------------
class _Spy(nn.Module):
    def __init__(self, seen):
        super().__init__()
        self.seen, self.lin = seen, nn.Linear(1, 2)

    def forward(self, x):
        self.seen.append(x.numpy()[:, 0].astype(int).tolist())
        return self.lin(x)


def _order_loader():
    x = np.arange(40, dtype=np.float32).reshape(40, 1)
    return nd.DataLoader(nd.ArrayDataset(x, np.arange(40) % 2), 10, shuffle=True, seed=0)


def test_fit_again_continues_the_loaders_epochs():
    ref = _order_loader()
    orders = [[b[0].numpy()[:, 0].astype(int).tolist() for b in ref] for _ in range(3)]
    seen: list = []
    m = _Spy(seen)
    loader = _order_loader()
    opt = ng.optim.SGD(m.parameters(), lr=0.01)
    for k in range(3):
        seen.clear()
        train.fit(m, F.cross_entropy, opt, loader, epochs=1, progress=False, metrics=())
        assert seen == orders[k]


def test_fit_again_then_resume_is_bit_identical(tmp_path):
    def run(run_dir, kill_at=None, resume=False):
        ng.manual_seed(0)
        seen: list = []
        m = _Spy(seen)
        opt = ng.optim.SGD(m.parameters(), lr=0.01)
        loader = _order_loader()
        if not resume:
            train.fit(m, F.cross_entropy, opt, loader, epochs=1, progress=False)

        class Kill(train.Callback):
            def on_batch_end(self, tr, logs):
                if tr.step == kill_at:
                    raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt) if kill_at else _nothing():
            train.fit(m, F.cross_entropy, opt, loader, epochs=2, progress=False, run_dir=run_dir,
                      checkpoint_every=2, resume=resume, callbacks=[Kill()])
        return _state(m), seen

    straight, seen = run(tmp_path / "a")
    assert seen[4:8] != seen[:4]  # the second fit's first epoch is the loader's epoch 1
    run(tmp_path / "b", kill_at=3)  # the checkpoint of step 2, mid-epoch
    resumed, _ = run(tmp_path / "b", resume=True)
    assert _same(resumed, straight)


# --- 8. --epochs cannot stretch a schedule laid out for the run's length -------------------
@pytest.mark.parametrize("schedule", ["cosine", "onecycle", "step", "exponential"])
def test_resume_refuses_new_epochs_with_a_length_schedule(schedule, tmp_path, capsys):
    run = _fake_run(tmp_path / "run", schedule=schedule)
    assert main(["train", "--resume", "--epochs", "5", "--out", str(run)]) == 2
    line = _err_line(capsys)
    assert f"cannot change --epochs when resuming a run with --schedule {schedule}" in line
    assert "--epochs 2" in line


def test_resume_keeps_new_epochs_without_a_length_schedule(tmp_path):
    from nodegrad.cli.train import _saved_options

    for schedule in ("none", "plateau"):
        run = _fake_run(tmp_path / schedule, schedule=schedule)
        assert _saved_options(run, {"epochs": 5})["epochs"] == 5
    run = _fake_run(tmp_path / "cos", schedule="cosine")
    assert _saved_options(run, {"epochs": 2})["epochs"] == 2  # the same length is fine


# --- 9. fit leaves the model in the mode it found it in ------------------------------------
@pytest.mark.parametrize("mode", [True, False])
def test_fit_restores_the_models_mode(mode):
    x = np.zeros((8, 2), np.float32)
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    model.train(mode)
    modes = []

    class Spy(train.Callback):
        def on_batch_end(self, tr, logs):
            modes.append(tr.model.training)

    loader = nd.DataLoader(nd.ArrayDataset(x, np.zeros(8, np.int64)), 4)
    train.fit(model, F.cross_entropy, ng.optim.SGD(model.parameters(), lr=0.1), loader,
              epochs=1, progress=False, callbacks=[Spy()])
    assert all(modes) and model.training is mode

    class Boom(train.Callback):
        def on_batch_end(self, tr, logs):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        train.fit(model, F.cross_entropy, ng.optim.SGD(model.parameters(), lr=0.1), loader,
                  epochs=1, progress=False, callbacks=[Boom()])
    assert model.training is mode


# --- 10. the loader iterates what the sampler yields ---------------------------------------
@pytest.mark.parametrize("yields, length", [([0, 1, 2], 8), ([0, 1, 2, 3, 4, 5, 6], 2)])
def test_loader_iterates_what_the_sampler_yields(yields, length):
    torch = pytest.importorskip("torch")

    class Odd(nd.Sampler):
        def __iter__(self):
            return iter(yields)

        def __len__(self):
            return length

    ds = nd.ArrayDataset(np.arange(10, dtype=np.float32)[:, None], np.arange(10))
    tds = torch.utils.data.TensorDataset(torch.arange(10.0)[:, None], torch.arange(10))
    want = [b[1].tolist() for b in torch.utils.data.DataLoader(tds, 2, sampler=Odd())]
    loader = nd.DataLoader(ds, 2, sampler=Odd())
    assert _ids(loader) == want and _ids(loader) == want
    assert loader.state_dict()["batch"] == 0  # the epoch ended: the next one starts afresh


# --- 11. a truncated cache file is made again ----------------------------------------------
def test_truncated_cache_is_regenerated(tmp_path, monkeypatch):
    import importlib

    from nodegrad.data.datasets import base

    mnist1d = importlib.import_module("nodegrad.data.datasets.mnist1d")

    arrays = {"x": np.zeros((4, 40), np.float32), "y": np.arange(4),
              "x_test": np.zeros((2, 40), np.float32), "y_test": np.arange(2),
              "t": np.zeros(40, np.float32), "perm": np.arange(40)}
    calls = []
    monkeypatch.setattr(mnist1d, "_generate", lambda: calls.append(1) or dict(arrays))
    assert mnist1d.mnist1d(root=tmp_path).x_train.shape == (4, 40) and len(calls) == 1
    path = tmp_path / mnist1d._cache_name()
    raw = path.read_bytes()
    assert base.load_npz(path, mnist1d._KEYS) is not None
    for cut in (len(raw) // 2, 10, 0):
        path.write_bytes(raw[:cut])
        assert base.load_npz(path, mnist1d._KEYS) is None
    path.write_bytes(raw[:len(raw) // 2])
    assert mnist1d.mnist1d(root=tmp_path).x_test.shape == (2, 40) and len(calls) == 2
    assert base.load_npz(path, mnist1d._KEYS) is not None  # written again


# --- 12. progress over a stream without a length ----------------------------------------------
class _Stream(nd.IterableDataset):
    def __iter__(self):
        for i in range(20):
            yield np.float32([i, -i]), i % 2


@pytest.mark.parametrize("interactive, tqdm", [(False, True), (True, True), (True, False)])
def test_progress_over_a_stream_without_length(interactive, tqdm, monkeypatch):
    import sys

    if not tqdm:
        monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # the bar without tqdm
    out = io.StringIO()
    m = nn.Linear(2, 2)
    h = train.fit(m, F.cross_entropy, ng.optim.SGD(m.parameters(), lr=0.01),
                  nd.DataLoader(_Stream(), 5), epochs=2, progress=False,
                  callbacks=[train.ProgressBar(out, interactive=interactive)])
    text = out.getvalue()
    assert h.last["step"] == 8 and "ETA" not in text
    if not interactive:
        assert "epoch 2/2  step 8" in text


def test_default_progress_over_a_stream_without_length(capsys):
    m = nn.Linear(2, 2)
    train.fit(m, F.cross_entropy, ng.optim.SGD(m.parameters(), lr=0.01),
              nd.DataLoader(_Stream(), 5), epochs=1)
    assert "step 4" in capsys.readouterr().out


# --- 13. seed and generator are checked when the loader is made ----------------------------
def test_loader_refuses_bad_seeds_and_generators():
    ds = nd.ArrayDataset(np.zeros((10, 1), np.float32), np.arange(10))
    with pytest.raises(ValueError, match="DataLoader: seed must be a non-negative int or None, "
                                         "got -1"):
        nd.DataLoader(ds, 4, shuffle=True, seed=-1)
    for bad in (1.5, True, "3"):
        with pytest.raises(TypeError, match="DataLoader: seed must be a non-negative int"):
            nd.DataLoader(ds, 4, shuffle=True, seed=bad)
    with pytest.raises(TypeError, match=r"generator must be an ng.Generator or None, got "
                                        r"builtins.int \(an int seed goes in seed=\)"):
        nd.DataLoader(ds, 4, shuffle=True, generator=3)
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="generator must be an ng.Generator or None, got torch"):
        nd.DataLoader(ds, 4, shuffle=True, generator=torch.Generator())
    a = nd.DataLoader(ds, 4, shuffle=True, seed=np.int64(3))
    assert a.seed == 3 and _ids(a) == _ids(nd.DataLoader(ds, 4, shuffle=True, seed=3))


# --- 14. a monitor that is not logged: a warning once, or a clear error -------------------
def test_unlogged_monitor_warns_once_or_fails_clearly(tmp_path):
    from nodegrad.train.callbacks import MonitorError

    ds = nd.ArrayDataset(np.zeros((8, 2), np.float32), np.zeros(8, np.int64))
    m = nn.Linear(2, 2)

    def fit(cb):
        return train.fit(m, F.cross_entropy, ng.optim.SGD(m.parameters(), lr=0.1),
                         nd.DataLoader(ds, 4), epochs=3, progress=False, callbacks=[cb])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(train.ModelCheckpoint(tmp_path, monitor="val_accuracy"))
    msgs = [str(w.message) for w in caught if "ModelCheckpoint" in str(w.message)]
    assert len(msgs) == 1, msgs
    assert "monitor 'val_accuracy' is not logged" in msgs[0] and "accuracy, epoch, loss" \
        in msgs[0] and "pass a val_loader" in msgs[0]
    assert (tmp_path / "last.safetensors").exists()
    with pytest.raises(MonitorError, match="EarlyStopping: monitor 'val_accuracy' is not "
                                           "logged; the logged metrics are accuracy") as e:
        fit(train.EarlyStopping("val_accuracy"))
    assert isinstance(e.value, KeyError) and isinstance(e.value, ValueError)
    assert str(e.value).startswith("EarlyStopping:")  # no quotes around the message
