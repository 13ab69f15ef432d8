"""TensorBoard event files: SummaryWriter (PyTorch's surface) read back record by record, the
TensorBoard fit callback, resume without duplicated steps, and the `--tensorboard` flag."""

import io
import json
import os
import re
import shutil
import socket
import struct
import sys

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn, train
from nodegrad.cli import main
from nodegrad.nn import functional as F
from nodegrad.utils.tensorboard import SummaryWriter

tbx = pytest.importorskip("tensorboardX")
from tensorboardX.crc32c import crc32c  # noqa: E402
from tensorboardX.proto import event_pb2, graph_pb2  # noqa: E402


# --- reading event files: length-prefixed records with masked CRC32C checksums -------------------
def _masked(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_file(path) -> list:
    """Every Event of one file, each record's two checksums verified."""
    buf = open(path, "rb").read()
    events, i = [], 0
    while i < len(buf):
        head = buf[i:i + 8]
        (n,) = struct.unpack("<Q", head)
        assert struct.unpack("<I", buf[i + 8:i + 12])[0] == _masked(head)
        data = buf[i + 12:i + 12 + n]
        assert struct.unpack("<I", buf[i + 12 + n:i + 16 + n])[0] == _masked(data)
        events.append(event_pb2.Event.FromString(data))
        i += 16 + n
    return events


def event_files(d) -> list:
    """The event files directly in ``d``, oldest first (by the wall time of their first
    event, as they were opened)."""
    files = [os.path.join(d, f) for f in os.listdir(d) if f.startswith("events.out.tfevents")]
    return sorted(files, key=lambda f: read_file(f)[0].wall_time)


def read_dir(d) -> list:
    """The events of a run directory as TensorBoard shows them: a file that starts with a
    purge (a session START at step T) hides the earlier files' events at steps >= T."""
    out = []
    for f in event_files(d):
        evs = read_file(f)
        starts = [e.step for e in evs if e.HasField("session_log")
                  and e.session_log.status == event_pb2.SessionLog.START]
        if starts:
            out = [e for e in out if e.step < starts[0]]
        out += [e for e in evs if e.HasField("summary")]
    return out


def scalars(d) -> dict:
    """{tag: [(step, value), ...]} of a run directory's scalar summaries."""
    res: dict = {}
    for e in read_dir(d):
        for v in e.summary.value:
            if v.WhichOneof("value") == "simple_value":
                res.setdefault(v.tag, []).append((e.step, v.simple_value))
    return res


def values(d, kind: str) -> dict:
    """{tag: [(step, summary value), ...]} of the summaries holding ``kind``."""
    res: dict = {}
    for e in read_dir(d):
        for v in e.summary.value:
            if v.WhichOneof("value") == kind:
                res.setdefault(v.tag, []).append((e.step, getattr(v, kind)))
    return res


# --- SummaryWriter ---------------------------------------------------------------------------
def test_scalars_of_tensors_arrays_and_numbers(tmp_path):
    with SummaryWriter(tmp_path) as w:
        w.add_scalar("loss", ng.tensor(0.25), 1)
        w.add_scalar("loss", np.float32(0.125), 2)
        w.add_scalar("loss", np.array([0.5]), 3)
        w.add_scalar("acc", 1, global_step=np.int64(4))
        w.add_scalar("x", ng.tensor([[2.5]], requires_grad=True) * 2, 5)
    s = scalars(tmp_path)
    assert s["loss"] == [(1, 0.25), (2, 0.125), (3, 0.5)]
    assert s["acc"] == [(4, 1.0)] and s["x"] == [(5, 5.0)]


def test_new_style_and_double_precision_scalars(tmp_path):
    with SummaryWriter(tmp_path) as w:
        w.add_scalar("f", 0.1, 1, new_style=True)
        w.add_scalar("d", 0.1, 1, new_style=True, double_precision=True)
    t = {tag: v for tag, [(_, v)] in values(tmp_path, "tensor").items()}
    assert t["f"].float_val[0] == np.float32(0.1) and t["d"].double_val[0] == 0.1
    meta = [v.metadata.plugin_data.plugin_name for e in read_dir(tmp_path)
            for v in e.summary.value]
    assert meta == ["scalars", "scalars"]


def test_add_scalars_writes_one_run_per_key_as_pytorch(tmp_path):
    with SummaryWriter(tmp_path) as w:
        w.add_scalars("run/14h", {"sin": 0.5, "cos": ng.tensor(-0.5)}, 7)
    assert scalars(tmp_path / "run_14h_sin") == {"run/14h": [(7, 0.5)]}
    assert scalars(tmp_path / "run_14h_cos") == {"run/14h": [(7, -0.5)]}


def test_histogram_statistics_match_numpy(tmp_path):
    x = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    with SummaryWriter(tmp_path) as w:
        w.add_histogram("w", ng.tensor(x), 3)
        w.add_histogram("auto", x, 4, bins="auto")
        w.add_histogram("ten", x, 5, bins=10)
    h = values(tmp_path, "histo")
    for tag, step in (("w", 3), ("auto", 4), ("ten", 5)):
        [(s, p)] = h[tag]
        x64 = x.astype(np.float64)
        assert s == step and p.num == 1000 and sum(p.bucket) == 1000
        assert p.min == x64.min() and p.max == x64.max()
        assert p.sum == pytest.approx(x64.sum()) and p.sum_squares == pytest.approx(x64 @ x64)
    # the bins that hold samples, and at most one empty bin on each side (as PyTorch trims)
    assert 10 <= len(h["ten"][0][1].bucket) <= 12
    n_auto = len(np.histogram_bin_edges(x, "auto")) - 1
    assert n_auto - 2 <= len(h["auto"][0][1].bucket) <= n_auto + 2


def test_histogram_refuses_nan_and_empty(tmp_path):
    with SummaryWriter(tmp_path) as w:
        with pytest.raises(ValueError, match="add_histogram.*'w'.*1 NaN or infinite"):
            w.add_histogram("w", np.array([1.0, np.nan, 2.0]))
        with pytest.raises(ValueError, match="add_histogram.*empty"):
            w.add_histogram("w", np.zeros(0))


def _png(image_summary) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(image_summary.encoded_image_string)))


def test_images_chw_hwc_and_batches(tmp_path):
    pytest.importorskip("PIL")
    img = np.random.default_rng(1).random((3, 6, 5)).astype(np.float32)
    expected = np.clip(img.transpose(1, 2, 0) * 255 + 0.5, 0, 255).astype(np.uint8)
    with SummaryWriter(tmp_path) as w:
        w.add_image("chw", ng.tensor(img), 0)
        w.add_image("hwc", img.transpose(1, 2, 0), 0, dataformats="HWC")
        w.add_image("u8", (img * 255).astype(np.uint8), 0)
        w.add_images("batch", np.stack([img, img]), 1)
        w.add_image("gray", img[0], 2, dataformats="HW")
    im = values(tmp_path, "image")
    a, b = _png(im["chw"][0][1]), _png(im["hwc"][0][1])
    assert a.shape == (6, 5, 3) and np.array_equal(a, b)
    assert np.abs(a.astype(int) - expected).max() <= 1
    assert im["batch"][0][0] == 1 and im["batch"][0][1].width >= 10
    assert im["gray"][0][1].height == 6


def test_image_refuses_bad_dataformats(tmp_path):
    with SummaryWriter(tmp_path) as w:
        with pytest.raises(ValueError, match="add_image: dataformats 'HWC' names 3 axes, but"):
            w.add_image("x", np.zeros((4, 4)), dataformats="HWC")
        with pytest.raises(ValueError, match="add_image: dataformats must be distinct"):
            w.add_image("x", np.zeros((3, 4, 4)), dataformats="CXW")


def test_figure(tmp_path):
    pytest.importorskip("PIL")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(2, 1), dpi=50)
    plt.plot([0, 1], [1, 0])
    with SummaryWriter(tmp_path) as w:
        w.add_figure("fig", fig, 3)
        with pytest.raises(TypeError, match="add_figure: expected a matplotlib Figure"):
            w.add_figure("fig", np.zeros((2, 2)))
    [(step, im)] = values(tmp_path, "image")["fig"]
    assert step == 3 and (im.height, im.width) == (50, 100)
    assert not plt.fignum_exists(fig.number)  # closed, as PyTorch's close=True


def test_text(tmp_path):
    with SummaryWriter(tmp_path) as w:
        w.add_text("notes", "**lr** 0.1", 2)
        with pytest.raises(TypeError, match="add_text: text_string must be a str"):
            w.add_text("notes", 3)
    [(step, t)] = values(tmp_path, "tensor")["notes/text_summary"]
    assert step == 2 and t.string_val == [b"**lr** 0.1"]


def test_hparams_run_with_metrics_and_domains(tmp_path):
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    with SummaryWriter(tmp_path) as w:
        w.add_hparams({"lr": 0.1, "opt": "adam", "bn": True, "depth": ng.tensor(3)},
                      {"hparam/accuracy": 0.9}, hparam_domain_discrete={"opt": ["adam", "sgd"]},
                      run_name="trial")
        with pytest.raises(ValueError, match="add_hparams: hyperparameter 'x' is list"):
            w.add_hparams({"x": [1]}, {})
        with pytest.raises(TypeError, match="add_hparams: hparam_dict and metric_dict"):
            w.add_hparams([("lr", 1)], {})
    run = tmp_path / "trial"
    assert scalars(run)["hparam/accuracy"] == [(0, pytest.approx(0.9))]
    tags = {v.tag: v for e in read_dir(run) for v in e.summary.value}
    data = {t: HParamsPluginData.FromString(v.metadata.plugin_data.content)
            for t, v in tags.items() if t.startswith("_hparams_")}
    start = data["_hparams_/session_start_info"].session_start_info.hparams
    assert start["lr"].number_value == 0.1 and start["opt"].string_value == "adam"
    # as PyTorch: a bool is the number 0 or 1, a one-element tensor its number
    assert start["bn"].number_value == 1 and start["depth"].number_value == 3
    infos = {i.name: i for i in data["_hparams_/experiment"].experiment.hparam_infos}
    assert list(infos["opt"].domain_discrete.values) and \
        [v.string_value for v in infos["opt"].domain_discrete.values] == ["adam", "sgd"]
    metrics = data["_hparams_/experiment"].experiment.metric_infos
    assert [m.name.tag for m in metrics] == ["hparam/accuracy"]


def test_pr_curve(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(y * 0.6 + rng.random(200) * 0.4, 0, 1)
    with SummaryWriter(tmp_path) as w:
        w.add_pr_curve("pr", ng.tensor(y), ng.tensor(p), 1, num_thresholds=11)
        with pytest.raises(ValueError, match=r"add_pr_curve: predictions must be .* \[0, 1\]"):
            w.add_pr_curve("pr", y, p + 1)
        with pytest.raises(ValueError, match="add_pr_curve: labels and predictions differ"):
            w.add_pr_curve("pr", y[:3], p)
    [(step, t)] = values(tmp_path, "tensor")["pr"]
    data = np.array(t.float_val).reshape(6, 11)  # TP, FP, TN, FN, precision, recall
    assert step == 1 and data[0, 0] == y.sum() and data[1, 0] == (1 - y).sum()
    thr = np.arange(11) / 10
    tp = np.array([((p >= th) & (y == 1)).sum() for th in thr])
    assert np.array_equal(data[0], tp)


def test_embedding(tmp_path):
    with SummaryWriter(tmp_path) as w:
        w.add_embedding(ng.randn(5, 3), metadata=list("abcde"), global_step=0, tag="pts")
        with pytest.raises(ValueError, match="add_embedding: 4 metadata entries for 5"):
            w.add_embedding(np.zeros((5, 3)), metadata=list("abcd"))
    conf = (tmp_path / "projector_config.pbtxt").read_text()
    assert "pts" in conf
    tsv = next(tmp_path.rglob("tensors.tsv")).read_text().splitlines()
    assert len(tsv) == 5 and len(tsv[0].split("\t")) == 3


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.body(x) * 2)


def test_graph_of_recorded_primitives_scoped_by_module(tmp_path):
    ng.manual_seed(0)
    model = _Net()
    model.head.weight.requires_grad_(False)  # frozen parameters are drawn too
    with SummaryWriter(tmp_path) as w:
        w.add_graph(model, ng.randn(5, 4))
        with pytest.raises(ValueError, match="add_graph: input_to_model is needed"):
            w.add_graph(model)
    assert not model.head.weight.requires_grad
    [ev] = [e for f in event_files(tmp_path) for e in read_file(f) if e.graph_def]
    g = graph_pb2.GraphDef.FromString(ev.graph_def)
    nodes = {n.name: n for n in g.node}
    ops = {n.name: n.op for n in g.node}
    assert ops["input/input_0"] == "IO Node" and ops["output/output_0"] == "IO Node"
    assert ops["body/0/linear_0"] == "linear" and ops["body/1/relu_0"] == "relu"
    assert ops["head/linear_0"] == "linear"
    assert list(nodes["body/0/linear_0"].input) == ["input/input_0", "body/0/weight",
                                                     "body/0/bias"]
    assert "head/weight" in nodes and ops["head/weight"] == "Parameter"
    mul = [n for n in g.node if n.op == "multiply"]
    assert len(mul) == 1 and "/" not in mul[0].name  # the model's own op: top level
    assert list(nodes["output/output_0"].input) == ["head/linear_0"]
    shape = nodes["body/0/linear_0"].attr["_output_shapes"].list.shape[0]
    assert [d.size for d in shape.dim] == [5, 8]


def test_purge_step_and_reopen_after_close(tmp_path):
    w = SummaryWriter(tmp_path, purge_step=5)
    w.add_scalar("a", 1.0, 5)
    w.close()
    w.add_scalar("a", 2.0, 6)  # a closed writer reopens: a second file
    w.close()
    first, second = (read_file(f) for f in event_files(tmp_path))
    assert [e.step for e in first if e.HasField("session_log")] == [5]
    assert not any(e.HasField("session_log") for e in second)
    assert scalars(tmp_path)["a"] == [(5, 1.0), (6, 2.0)]


def test_default_log_dir_as_pytorch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with SummaryWriter(comment="_lr0.1") as w:
        d = w.get_logdir()
    host = re.escape(socket.gethostname())
    assert re.fullmatch(rf"runs/[A-Z][a-z]{{2}}\d\d_\d\d-\d\d-\d\d_{host}_lr0\.1", d), d
    assert event_files(tmp_path / d)


def test_tensors_on_a_cuda_device_move_to_the_host(tmp_path, cuda):
    x = ng.tensor(np.arange(6, dtype=np.float32).reshape(1, 2, 3) / 6, device=cuda)
    with SummaryWriter(tmp_path) as w:
        w.add_scalar("s", x.sum(), 1)
        w.add_histogram("h", x, 1)
        w.add_image("i", x, 1)
    assert scalars(tmp_path)["s"] == [(1, pytest.approx(2.5))]
    assert values(tmp_path, "histo")["h"][0][1].num == 6


@pytest.mark.parametrize("value, err, match", [
    (np.ones(3), ValueError, r"add_scalar: the value of 'x' must hold one element, got shape"),
    ("1.0", TypeError, "add_scalar: value must be a Tensor, an array or a number, got str"),
    (1j, TypeError, "add_scalar: the value of 'x' is complex"),
])
def test_scalar_bad_values(tmp_path, value, err, match):
    with SummaryWriter(tmp_path) as w, pytest.raises(err, match=match):
        w.add_scalar("x", value)


def test_bad_step_and_tag(tmp_path):
    with SummaryWriter(tmp_path) as w:
        with pytest.raises(TypeError, match="add_scalar: global_step must be an integer"):
            w.add_scalar("x", 1.0, 1.5)
        with pytest.raises(TypeError, match="add_scalar: tag must be a non-empty string"):
            w.add_scalar("", 1.0)


def test_without_tensorboardx_the_error_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # `import tensorboardX` fails
    with pytest.raises(ImportError, match=re.escape("pip install 'nodegrad[tensorboard]'")):
        SummaryWriter(tmp_path)
    with pytest.raises(ImportError, match="tensorboardX"):
        train.TensorBoard(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--model", "mnist1d_logreg", "--epochs", "1", "--quiet",
                 "--out", str(out), "--tensorboard", str(tmp_path / "tb")]) == 2
    err = capsys.readouterr().err
    assert "--tensorboard" in err and "nodegrad[tensorboard]" in err and not out.exists()


# --- the fit callback ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mnist1d_small():
    d = ng.data.datasets.mnist1d()
    return (ng.data.ArrayDataset(d.x_train[:400], d.y_train[:400]),
            ng.data.ArrayDataset(d.x_test[:200], d.y_test[:200]))


def _fit(data, epochs, callbacks, run_dir=None, resume=False, **kw):
    ng.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = ng.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = ng.optim.lr_scheduler.StepLR(opt, step_size=8, gamma=0.5)
    tl = ng.data.DataLoader(data[0], batch_size=100, shuffle=True, seed=0)
    vl = ng.data.DataLoader(data[1], batch_size=100)
    return train.fit(model, F.cross_entropy, opt, tl, vl, epochs=epochs, callbacks=callbacks,
                     scheduler=sched, progress=False, run_dir=run_dir, resume=resume, **kw)


def test_callback_scalars_equal_the_history(tmp_path, mnist1d_small):
    tb = train.TensorBoard(tmp_path / "tb", histogram_every=2, step_every=3)
    h = _fit(mnist1d_small, 3, [tb])
    s = scalars(tmp_path / "tb")
    assert set(s) >= {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    assert not {"epoch", "step", "time"} & set(s)
    for k in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert s[k] == [(r["epoch"], np.float32(r[k])) for r in h.epochs], k
    assert len({r["lr"] for r in h.epochs}) > 1  # the schedule moved
    hist = values(tmp_path / "tb", "histo")
    assert set(hist) == {f"{w}/{n}" for w in ("weights", "grads")
                         for n in ("0.weight", "0.bias", "2.weight", "2.bias")}
    assert all([s for s, _ in v] == [2] for v in hist.values())
    steps = scalars(tmp_path / "tb" / "steps")
    rows = list(h.steps)
    assert steps["loss"] == [(r["step"], np.float32(r["loss"])) for r in rows
                             if r["step"] % 3 == 0]
    assert steps["lr"] == [(r["step"], np.float32(r["lr"])) for r in rows
                           if r["step"] % 3 == 0]
    assert tb.writer is None  # closed at the end of training


def test_callback_bad_options(tmp_path):
    with pytest.raises(ValueError, match="TensorBoard: histogram_every must be an integer"):
        train.TensorBoard(tmp_path, histogram_every=-1)
    with pytest.raises(TypeError, match="TensorBoard: log_dir must be a path"):
        train.TensorBoard(3)


class _KeepCheckpoint(train.Callback):
    """Copy the run's checkpoint as it was after epoch ``at`` (a crash after it, replayed)."""

    def __init__(self, run_dir, at):
        self.run_dir, self.at = run_dir, at

    def on_epoch_begin(self, tr):
        if tr.epoch == self.at and tr.resumed_from is None:
            shutil.copy(self.run_dir / "checkpoint.safetensors", self.run_dir / "kept")


def test_resume_continues_without_duplicated_steps(tmp_path, mnist1d_small):
    run, tb = tmp_path / "run", tmp_path / "tb"
    # the first session writes epochs 1..3; it "crashes" back to its checkpoint of epoch 2
    _fit(mnist1d_small, 3, [train.TensorBoard(tb, step_every=1), _KeepCheckpoint(run, 2)],
         run_dir=run)
    shutil.copy(run / "kept", run / "checkpoint.safetensors")
    h = _fit(mnist1d_small, 4, [train.TensorBoard(tb, step_every=1), _KeepCheckpoint(run, 2)],
             run_dir=run, resume=True)
    s = scalars(tb)
    assert [e for e, _ in s["val_loss"]] == [1, 2, 3, 4]
    assert s["val_loss"] == [(r["epoch"], np.float32(r["val_loss"])) for r in h.epochs]
    st = scalars(tb / "steps")["loss"]
    assert [e for e, _ in st] == list(range(1, 17))  # 4 steps per epoch, each once
    second = read_file(event_files(tb)[-1])
    purge = [e.step for e in second if e.HasField("session_log")]
    assert purge == [3]


# --- the command -----------------------------------------------------------------------------
def test_cli_flag_and_resume(tmp_path, capsys):
    out, tb = tmp_path / "run", tmp_path / "tb"
    args = ["train", "--model", "mnist1d_logreg", "--quiet", "--out", str(out)]
    assert main([*args, "--epochs", "2", "--tensorboard", str(tb)]) == 0
    assert json.loads((out / "config.json").read_text())["tensorboard"] == str(tb)
    assert main([*args, "--epochs", "3", "--resume"]) == 0  # the saved flag continues
    hist = json.loads((out / "history.json").read_text())["epochs"]
    s = scalars(tb)
    assert s["val_loss"] == [(r["epoch"], np.float32(r["val_loss"])) for r in hist]
    assert [e for e, _ in s["loss"]] == [1, 2, 3]
    assert "--tensorboard DIR" in _help(capsys)


def test_cli_ensemble_members_log_to_their_own_runs(tmp_path, capsys):
    tb = tmp_path / "tb"
    assert main(["train", "--model", "mnist1d_logreg", "--quiet", "--epochs", "1",
                 "--ensemble", "2", "--out", str(tmp_path / "ens"), "--tensorboard",
                 str(tb)]) == 0
    for i in range(2):
        hist = json.loads((tmp_path / "ens" / f"member-{i}" / "history.json").read_text())
        assert scalars(tb / f"member-{i}")["loss"] == [(1, np.float32(hist["epochs"][0]["loss"]))]


def test_importing_nodegrad_does_not_import_tensorboardx():
    import subprocess

    code = "import nodegrad, sys; print('tensorboardX' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                             [os.path.dirname(os.path.dirname(__file__)),
                              os.environ.get("PYTHONPATH", "")])})
    assert out.stdout.strip() == "False", out.stderr


def _help(capsys) -> str:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    return capsys.readouterr().out


# --- against PyTorch's writer (where torch.utils.tensorboard can be imported) ----------------
def _same_calls(w, tensor, rng):
    x = rng.normal(size=500).astype(np.float32)
    img = rng.random((3, 6, 5)).astype(np.float32)
    y = rng.integers(0, 2, 100)
    p = np.clip(y * 0.5 + rng.random(100) * 0.5, 0, 1)
    w.add_scalar("loss", tensor(np.float32(0.75)), 1)
    w.add_scalar("loss", 0.5, 2)
    w.add_scalars("run/a", {"sin": 0.25, "cos": tensor(np.float32(-0.25))}, 3)
    for bins in ("tensorflow", "auto", 10):
        w.add_histogram(f"h/{bins}", tensor(x), 4, bins=bins)
    w.add_image("chw", tensor(img), 5)
    w.add_image("hwc", img.transpose(1, 2, 0), 5, dataformats="HWC")
    w.add_images("batch", tensor(np.stack([img, img[::-1]])), 6)
    w.add_text("note", "*hi*", 7)
    w.add_pr_curve("pr", tensor(y), tensor(p), 8, num_thresholds=21)
    w.add_hparams({"lr": 0.1, "opt": "adam", "bn": False, "n": tensor([3.0])}, {"hp/acc": 0.5},
                  hparam_domain_discrete={"opt": ["adam", "sgd"]}, run_name="hp")


def _summaries(d) -> dict:
    """{(relative run dir, tag, step): summary value} of every run under ``d``."""
    out = {}
    for root, _, files in os.walk(d):
        if any(f.startswith("events.out.tfevents") for f in files):
            rel = os.path.relpath(root, d)
            for e in read_dir(root):
                for v in e.summary.value:
                    out[(rel, v.tag, e.step)] = v
    return out


def test_events_match_pytorch_summary_writer(tmp_path):
    torch = pytest.importorskip("torch")
    tb = pytest.importorskip("torch.utils.tensorboard")
    pytest.importorskip("PIL")
    with tb.SummaryWriter(tmp_path / "torch", purge_step=1) as w:
        _same_calls(w, torch.tensor, np.random.default_rng(0))
    with SummaryWriter(tmp_path / "ng", purge_step=1) as w:
        _same_calls(w, ng.tensor, np.random.default_rng(0))
    ref, got = _summaries(tmp_path / "torch"), _summaries(tmp_path / "ng")
    assert sorted(ref) == sorted(got)
    for key, r in ref.items():
        g = got[key]
        kind = r.WhichOneof("value")
        assert g.WhichOneof("value") == kind, key
        if kind == "image":
            assert np.array_equal(_png(r.image), _png(g.image)), key
        elif key[1].startswith("_hparams_"):
            from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

            a, b = (HParamsPluginData.FromString(v.metadata.plugin_data.content)
                    for v in (r, g))
            assert a == b, key
        elif kind == "tensor":
            np.testing.assert_allclose(np.array(g.tensor.float_val), np.array(r.tensor.float_val),
                                       rtol=1e-6, err_msg=str(key))
            assert g.tensor.string_val == r.tensor.string_val
        else:
            assert getattr(g, kind) == getattr(r, kind), key
    first = [read_file(f)[:3] for f in (event_files(tmp_path / "torch")[0],
                                        event_files(tmp_path / "ng")[0])]
    assert [[e.step for e in f if e.HasField("session_log")] for f in first] == [[1], [1]]
