"""Checkpoints: a run SIGKILLed mid-epoch resumes to bit-identical weights, with its history
neither losing nor duplicating rows."""

import json
import pathlib
import signal
import subprocess
import os
import sys

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn, train
from nodegrad.io import CheckpointError
from nodegrad.nn import functional as F

WORKER = pathlib.Path(__file__).with_name("_train_worker.py")
# The worker imports this checkout's nodegrad whether or not the package is installed.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(WORKER.parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])])}


def _run(*args):
    return subprocess.run([sys.executable, str(WORKER), *map(str, args)], capture_output=True,
                          text=True, timeout=120, env=ENV)


def _weights(run_dir):
    return {k: v.numpy() for k, v in ng.load(run_dir / "final.safetensors").items()}


def _drop_time(rows):
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


def test_sigkill_mid_epoch_resume_is_bit_identical(tmp_path):
    full, broken = tmp_path / "full", tmp_path / "broken"
    assert _run(full, "full").returncode == 0
    r = _run(broken, "kill", 11)  # epoch 2 of 4 (7 batches each); last checkpoint at step 9
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not (broken / "final.safetensors").exists()
    state = json.loads((broken / "history.json").read_text())
    assert len(state["epochs"]) == 1
    r = _run(broken, "resume")
    assert r.returncode == 0, r.stderr
    a, b = _weights(full), _weights(broken)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    ha = json.loads((full / "history.json").read_text())
    hb = json.loads((broken / "history.json").read_text())
    assert [r["epoch"] for r in hb["epochs"]] == [1, 2, 3, 4]
    assert [s["step"] for s in hb["steps"]] == list(range(1, 29))
    assert _drop_time(ha["epochs"]) == _drop_time(hb["epochs"])
    assert ha["steps"] == hb["steps"]
    csv_rows = (broken / "history.csv").read_text().strip().splitlines()
    assert len(csv_rows) == 5  # header + 4 epochs


def _tiny(seed=0):
    ng.manual_seed(seed)
    d = ng.data.datasets.blobs(n=64, classes=2, dim=2, seed=0, n_test=32)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
    tl = ng.data.DataLoader(d.train, batch_size=16, shuffle=True, seed=0)
    return model, tl


def test_resume_without_checkpoint_and_other_model_refused(tmp_path):
    model, tl = _tiny()
    opt = ng.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train.fit(model, F.cross_entropy, opt, tl, run_dir=tmp_path, resume=True,
                  progress=False)
    train.fit(model, F.cross_entropy, opt, tl, run_dir=tmp_path, progress=False)
    other = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))
    opt2 = ng.optim.SGD(other.parameters(), lr=0.1)
    with pytest.raises(CheckpointError, match="another model"):
        train.fit(other, F.cross_entropy, opt2, tl, run_dir=tmp_path, resume=True,
                  progress=False)


def test_finished_run_resumes_to_nothing(tmp_path):
    model, tl = _tiny()
    opt = ng.optim.Adam(model.parameters(), lr=0.01)
    h = train.fit(model, F.cross_entropy, opt, tl, epochs=2, run_dir=tmp_path, progress=False)
    w = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    model2, tl2 = _tiny(seed=5)
    opt2 = ng.optim.Adam(model2.parameters(), lr=0.01)
    h2 = train.fit(model2, F.cross_entropy, opt2, tl2, epochs=2, run_dir=tmp_path, resume=True,
                   progress=False)
    assert len(h2) == len(h) == 2
    for k, v in model2.state_dict().items():
        assert np.array_equal(v.numpy(), w[k])
