"""Checkpoints: a run SIGKILLed mid-epoch resumes to bit-identical weights, with its history
neither losing nor duplicating rows; the checkpoint's size does not grow with the steps."""

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


def _steps(run_dir):
    return [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]


def _drop_time(rows):
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


@pytest.mark.parametrize("jit", [0, 1], ids=["eager", "jit"])
def test_sigkill_mid_epoch_resume_is_bit_identical(tmp_path, jit):
    full, broken = tmp_path / "full", tmp_path / "broken"
    assert _run(full, "full", 0, jit).returncode == 0
    r = _run(broken, "kill", 11, jit)  # epoch 2 of 4 (7 batches each); last checkpoint at step 9
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not (broken / "final.safetensors").exists()
    state = json.loads((broken / "history.json").read_text())
    assert len(state["epochs"]) == 1
    assert [s["step"] for s in _steps(broken)] == list(range(1, 12))  # beyond the checkpoint
    assert list(broken.glob(".*.tmp"))
    r = _run(broken, "resume", 0, jit)
    assert r.returncode == 0, r.stderr
    a, b = _weights(full), _weights(broken)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    ha = json.loads((full / "history.json").read_text())
    hb = json.loads((broken / "history.json").read_text())
    assert [r["epoch"] for r in hb["epochs"]] == [1, 2, 3, 4]
    assert [s["step"] for s in _steps(broken)] == list(range(1, 29))
    assert _drop_time(ha["epochs"]) == _drop_time(hb["epochs"])
    assert _steps(full) == _steps(broken)
    assert not list(broken.glob(".*.tmp"))  # the killed write's temporary file is gone
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


def test_checkpoint_size_does_not_grow_with_the_steps(tmp_path):
    import tracemalloc

    from nodegrad.train.checkpoint import load_checkpoint
    from nodegrad.train.history import StepLog

    model, tl = _tiny()
    tr = train.Trainer(model, F.cross_entropy, ng.optim.SGD(model.parameters(), lr=0.1), tl,
                       run_dir=tmp_path, progress=False)
    tr.fit()
    ck = tmp_path / "checkpoint.safetensors"
    small = ck.stat().st_size
    # a million recorded steps, written straight to the log's file
    data = b'{"step": 0}\n' * 1_000_000
    (tmp_path / "steps.jsonl").write_bytes(data)
    tr.history.steps = StepLog(tmp_path / "steps.jsonl", rows=1_000_000, size=len(data))
    tr.step = 1_000_000
    tracemalloc.start()
    try:
        tr.save_checkpoint()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ck.stat().st_size - small < 32  # a few more digits, nothing per step
    assert peak < 1 << 20
    state = load_checkpoint(ck)
    assert state["steps"] == {"rows": 1_000_000, "bytes": len(data)}
    assert "steps" not in state["history"]
    model2, tl2 = _tiny()
    tr2 = train.Trainer(model2, F.cross_entropy, ng.optim.SGD(model2.parameters(), lr=0.1), tl2,
                        run_dir=tmp_path, resume=True, progress=False)
    assert len(tr2.history.steps) == 1_000_000 and tr2.history.steps[-1] == {"step": 0}


def test_step_log_cuts_the_rows_after_the_checkpoint(tmp_path):
    from nodegrad.train.history import StepLog

    log = StepLog(tmp_path / "s.jsonl", buffer=2)
    log.extend({"step": i} for i in range(1, 4))  # two flushed by the buffer, one waiting
    assert len(log) == 3 and log[0] == {"step": 1} and log[2] == {"step": 3}
    at = log.position  # what a checkpoint records
    log.extend({"step": i} for i in range(4, 7))
    log.flush()
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    again = StepLog.resume(tmp_path / "s.jsonl", at["rows"], at["bytes"])
    assert (tmp_path / "s.jsonl").read_text().count("\n") == 3
    again.append({"step": 4})
    assert [r["step"] for r in again] == [1, 2, 3, 4] and again[-1] == {"step": 4}
    (tmp_path / "s.jsonl").write_text('{"step": 1}\n{"step"')  # cut short by hand
    with pytest.warns(RuntimeWarning, match="holds 1 of the 3 steps"):
        cut = StepLog.resume(tmp_path / "s.jsonl", rows=3, size=at["bytes"])
    assert list(cut) == [{"step": 1}]


def _run_tiny(tmp_path, epochs, resume=False, **kw):
    model, tl = _tiny()
    tr = train.Trainer(model, F.cross_entropy, ng.optim.SGD(model.parameters(), lr=0.1), tl,
                       epochs=epochs, run_dir=tmp_path, resume=resume, progress=False, **kw)
    tr.fit()
    return tr


def test_resume_says_where_and_cleans_temporary_files(tmp_path):
    from nodegrad.train import checkpoint as C

    first = _run_tiny(tmp_path, 2)
    assert first.resumed_from is None
    stale = tmp_path / ".checkpoint.safetensors.ab12cd34.tmp"
    stale.write_bytes(b"half")
    state = C.load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert state["threads"] == C.blas_threads() and state["wall_time"] > 0
    tr = _run_tiny(tmp_path, 3, resume=True)
    assert tr.resumed_from == {"epoch": 3, "step": 8, "batch": 0,
                               "wall_time": state["wall_time"]}
    assert not stale.exists()
    assert tr.wall_time >= state["wall_time"]  # the total, not the time since the resume
    assert [r["step"] for r in tr.history.steps] == list(range(1, 13))


def test_resume_warns_when_blas_thread_counts_differ(tmp_path, monkeypatch):
    import warnings

    from nodegrad.train import checkpoint as C

    _run_tiny(tmp_path, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run_tiny(tmp_path, 1, resume=True)  # the same counts: no warning
    monkeypatch.setattr(C, "blas_threads", lambda: {"openblas:lib": 99, "other:lib": 1})
    state = C.load_checkpoint(tmp_path / "checkpoint.safetensors")
    state = {k: v for k, v in state.items() if k != "_weights"}
    C.save_checkpoint(tmp_path / "checkpoint.safetensors", _tiny()[0],
                      {**state, "threads": {"openblas:lib": 3}})
    with pytest.warns(RuntimeWarning, match=r"BLAS thread counts \(openblas:lib 3 then, 99 now"):
        _run_tiny(tmp_path, 1, resume=True)


def test_checkpoint_of_tied_weights_round_trips_and_old_form_loads(tmp_path):
    """A model with tied weights: the checkpoint holds the shared tensor once, loads back into
    a fresh model with the tie kept, and a checkpoint naming it once only (the older form)
    is not taken for another model's."""
    from nodegrad.train.checkpoint import check_compatible, load_checkpoint, save_checkpoint

    def build():
        m = nn.Sequential(nn.Embedding(4, 3), nn.Linear(3, 4, bias=False))
        m[1].weight = m[0].weight
        return m

    a, b = build(), build()
    save_checkpoint(tmp_path / "c.safetensors", a, {"epoch": 1})
    state = load_checkpoint(tmp_path / "c.safetensors", b)
    assert state["epoch"] == 1
    np.testing.assert_array_equal(b[1].weight.numpy(), a[0].weight.numpy())
    assert b[1].weight is b[0].weight
    check_compatible(b, {"0.weight": a[0].weight}, "old")  # the second name may be absent
    with pytest.raises(CheckpointError, match="another model"):
        check_compatible(b, {"1.weight": a[0].weight}, "other")
