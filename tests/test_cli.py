"""The `nodegrad` command: a tiny run, its files, resume after SIGKILL, and bad input refused
with a one-line error and a non-zero exit status (never a traceback)."""

import errno
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.cli import main

# Subprocesses import this checkout's nodegrad whether or not the package is installed.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(pathlib.Path(__file__).parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])])}
TINY = ["--model", "digits_mlp", "--epochs", "2", "--quiet"]


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_tiny_run_and_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "test accuracy" in text and str(out) in text and "curves.png" in text
    for f in ("config.json", "checkpoint.safetensors", "model.safetensors", "history.csv",
              "steps.jsonl", "results.json", "curves.png", "lr.png", "confusion.png"):
        assert (out / f).exists(), f
    res = json.loads((out / "results.json").read_text())
    assert res["test"]["accuracy"] > 0.8
    assert main(["evaluate", str(out)]) == 0
    assert f"{100 * res['test']['accuracy']:.2f} %" in capsys.readouterr().out


def test_device_run_resume_evaluate_export(tmp_path, capsys, cuda):
    """The command on a CUDA device (the GPU, or the stand-in in every run): train, resume,
    an ensemble on bootstrap samples with dropout, evaluate and export, each exiting 0."""
    out = tmp_path / "run"
    assert main(["train", *TINY[:2], "--epochs", "1", "--quiet", "--device", cuda,
                 "--out", str(out)]) == 0
    assert main(["train", "--epochs", "2", "--quiet", "--out", str(out), "--resume"]) == 0
    assert json.loads((out / "results.json").read_text())["test"]["accuracy"] > 0.5
    assert main(["train", *TINY, "--device", cuda, "--ensemble", "2", "--bootstrap",
                 "--dropout", "0.1", "--out", str(tmp_path / "ens")]) == 0
    assert main(["evaluate", str(out)]) == 0
    pytest.importorskip("onnx")
    assert main(["export", str(out), "--out", str(tmp_path / "m.onnx")]) == 0
    assert "ensemble of 2" in capsys.readouterr().out


def test_config_file_and_flag_override(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('model = "digits_mlp"\nepochs = 1\nbatch_size = 128\nquiet = true\n'
                   'schedule = "cosine"\n')
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--epochs", "2", "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["epochs"] == 2 and saved["batch_size"] == 128 and saved["schedule"] == "cosine"


def test_ensemble_run(tmp_path, capsys):
    out = tmp_path / "ens"
    assert main(["train", *TINY, "--ensemble", "2", "--bootstrap", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "member 2:" in text and "ensemble of 2" in text
    assert main(["evaluate", str(out)]) == 0


@pytest.mark.parametrize("args, needle", [
    (["--model", "nope"], "choose from mnist1d_logreg"),
    (["--dataset", "cifar"], "choose from mnist1d"),
    (["--optimizer", "lbfgs"], "choose from sgd"),
    (["--schedule", "warp"], "unknown schedule"),
    (["--lr", "abc"], "expected a number"),
    (["--lr", "-1"], "expected a number in"),
    (["--epochs", "0"], ">= 1"),
    (["--epochs", "1.5"], "expected an integer"),
    (["--dropout", "2"], "[0.0, 1.0]"),
    (["--model", "digits_mlp", "--dataset", "mnist1d"], "made for digits"),
    (["--model", "mnist1d_logreg", "--dropout", "0.2"], "has no dropout"),
    (["--bogus"], "unrecognized arguments"),
    (["--resume"], "--resume needs --out"),
])
def test_bad_input_one_line_error(args, needle, capsys):
    rc = main(["train", *args])
    assert rc != 0
    assert needle in _err_line(capsys)


@pytest.mark.parametrize("device, needle", [("foo", "unknown device 'foo'"),
                                            ("cuda:x", "unknown device")])
def test_bad_device_one_line_error_and_no_run_dir(device, needle, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--device", device, "--out", str(out)]) == 1
    assert needle in _err_line(capsys)
    assert not out.exists()


@pytest.mark.skipif(ng.cuda_available(), reason="needs a machine without CUDA")
def test_cuda_without_cupy_one_line_error(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--device", "cuda", "--out", str(out)]) == 1
    assert "CUDA" in _err_line(capsys)
    assert not out.exists()


def test_bad_config_refused(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("epochz = 3\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert "unknown key 'epochz'" in _err_line(capsys)
    cfg.write_text("lr = 'fast'\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert "expected a number" in _err_line(capsys)
    cfg.write_text("lr = [\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert "not valid TOML" in _err_line(capsys)
    assert main(["train", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "not found" in _err_line(capsys)


def test_existing_dir_other_model_and_missing_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["train", *TINY, "--out", str(out)]) == 2
    assert "--resume" in _err_line(capsys)
    assert main(["train", "--model", "digits_cnn", "--resume", "--out", str(out)]) == 1
    assert "holds a run of digits_mlp" in _err_line(capsys)
    assert main(["train", "--resume", "--lr", "0.5", "--out", str(out)]) == 2
    assert "cannot change --lr" in _err_line(capsys)
    assert main(["train", *TINY, "--overwrite", "--out", str(out)]) == 0
    capsys.readouterr()
    # a checkpoint whose weights belong to another model
    ng.save({"w": ng.zeros(3)}, out / "model.safetensors")
    assert main(["evaluate", str(out)]) == 1
    assert "another model" in _err_line(capsys)
    assert main(["evaluate", str(tmp_path / "nothing")]) == 2
    assert "not a nodegrad run directory" in _err_line(capsys)
    assert main(["train", "--resume", "--out", str(tmp_path / "nothing")]) == 2
    assert "cannot resume" in _err_line(capsys)


def test_default_run_directory_never_collides(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    quick = ["--model", "digits_mlp", "--epochs", "1", "--quiet"]
    assert main(["train", *quick]) == 0
    assert main(["train", *quick]) == 0  # the same command again: a new directory
    base = tmp_path / "runs" / "digits_mlp-digits-s0"
    assert (base / "model.safetensors").exists()
    assert (base.with_name(base.name + "-2") / "model.safetensors").exists()
    assert "runs/digits_mlp-digits-s0-2" in capsys.readouterr().out
    # --overwrite without --out replaces the latest of them, not the first
    assert main(["train", *quick, "--overwrite"]) == 0
    assert not base.with_name(base.name + "-3").exists()


def test_help_lists_choices_and_info(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for word in ("mnist1d_gru", "digits", "adamw", "plateau", "--early-stopping", "--config",
                 "kaiming"):
        assert word in text
    assert main(["info"]) == 0
    assert "numpy" in capsys.readouterr().out


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "nodegrad", "train", *args], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)


def _weights(path):
    return {k: v.numpy() for k, v in ng.load(path).items()}


def test_cli_resume_after_sigkill_is_bit_identical(tmp_path):
    args = ["--model", "digits_mlp", "--epochs", "6", "--batch-size", "16",
            "--checkpoint-every", "7", "--dropout", "0.2", "--augment", "--quiet"]
    full, broken = tmp_path / "full", tmp_path / "broken"
    p = _cli(*args, "--out", str(full))
    q = _cli(*args, "--out", str(broken))
    ckpt = broken / "checkpoint.safetensors"
    deadline = time.time() + 60
    while not ckpt.exists() and q.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    assert q.poll() is None, "the run ended before it could be killed"
    os.kill(q.pid, signal.SIGKILL)
    assert q.wait() == -signal.SIGKILL
    done = json.loads((broken / "config.json").read_text())["epochs"]
    assert done == 6 and not (broken / "model.safetensors").exists()
    assert p.wait(timeout=120) == 0, p.stderr.read()
    r = subprocess.run([sys.executable, "-m", "nodegrad", "train", "--resume", "--quiet",
                        "--out", str(broken)], capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode == 0, r.stderr
    assert f"resuming {broken} at epoch " in r.stdout
    a, b = _weights(full / "model.safetensors"), _weights(broken / "model.safetensors")
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    rows = json.loads((broken / "history.json").read_text())["epochs"]
    assert [r["epoch"] for r in rows] == list(range(1, 7))


def test_out_under_a_file_or_a_file_is_one_line(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("not a folder")
    assert main(["train", *TINY, "--out", str(f / "run")]) == 2
    assert f"is under {f}, which is a file" in _err_line(capsys)
    assert main(["train", *TINY, "--out", str(f)]) == 2
    assert "is a file, not a folder" in _err_line(capsys)


class _FullFile:
    """A file on a full disk: every write fails (the error names no file, as the real one)."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _fail(monkeypatch, name: str, err: int, at: str = "create"):
    """Make writing ``name`` fail with ``err`` when its temporary file is created or written
    (a read-only or full file system, a permission error; as root chmod would not stop it)."""
    import tempfile

    import nodegrad.io as io

    failing: set[int] = set()
    mkstemp, fdopen = tempfile.mkstemp, os.fdopen

    def fake_mkstemp(dir=None, prefix=None, suffix=None, **kw):
        if prefix == f".{name}." and at == "create":
            raise OSError(err, os.strerror(err), os.path.join(dir, f"{prefix}abcdefgh{suffix}"))
        fd, tmp = mkstemp(dir=dir, prefix=prefix, suffix=suffix, **kw)
        if prefix == f".{name}.":
            failing.add(fd)
        return fd, tmp

    def fake_fdopen(fd, *a, **kw):
        f = fdopen(fd, *a, **kw)
        return _FullFile(f) if fd in failing else f

    monkeypatch.setattr(io.tempfile, "mkstemp", fake_mkstemp)
    monkeypatch.setattr(io.os, "fdopen", fake_fdopen)


@pytest.mark.parametrize("name, err, at, needle", [
    ("config.json", errno.EROFS, "create", "read-only file system (choose --out on a writable"),
    ("config.json", errno.EACCES, "create", "permission denied (choose --out where you may"),
    ("checkpoint.safetensors", errno.ENOSPC, "write",
     "checkpoint.safetensors: no space left on device (free some space"),
    ("results.json", errno.EDQUOT, "create", "disk quota exceeded"),
])
def test_os_errors_are_one_line(name, err, at, needle, tmp_path, capsys, monkeypatch):
    _fail(monkeypatch, name, err, at)
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 1
    line = _err_line(capsys)
    assert line.startswith("nodegrad: error: ") and needle in line, line
    assert not list(out.glob(".*.tmp"))  # a failed write leaves no temporary file


def test_os_errors_outside_atomic_writes_are_one_line(tmp_path, capsys, monkeypatch):
    import pathlib as pl

    from nodegrad.train import history

    real_open = open

    def full_open(path, mode="r", *a, **kw):
        f = real_open(path, mode, *a, **kw)
        return _FullFile(f) if pl.Path(path).name == "steps.jsonl" else f

    monkeypatch.setattr(history, "open", full_open, raising=False)
    assert main(["train", *TINY, "--out", str(tmp_path / "run")]) == 1
    assert "steps.jsonl: no space left on device" in _err_line(capsys)
    monkeypatch.undo()
    real_mkdir = pl.Path.mkdir

    def denied(self, *a, **kw):
        if self.name == "run2":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(pl.Path, "mkdir", denied)
    assert main(["train", *TINY, "--out", str(tmp_path / "run2")]) == 1
    assert f"{tmp_path / 'run2'}: permission denied" in _err_line(capsys)


def test_resume_without_checkpoint_and_where_a_resume_continues(tmp_path, capsys, monkeypatch):
    from nodegrad import models
    from nodegrad.train import checkpoint as C

    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    for p in out.iterdir():  # as a run killed before its first checkpoint leaves it
        if p.name != "config.json":
            p.unlink()
    (out / ".checkpoint.safetensors.q1w2e3r4.tmp").write_bytes(b"half")
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"resuming {out}: no checkpoint yet" in text and "from the start" in text
    assert not list(out.glob(".*.tmp"))
    # a real resume says where it continues, and results.json keeps the total wall time
    state = C.load_checkpoint(out / "checkpoint.safetensors")
    steps = state["step"]
    model = models.create("digits_mlp", seed=0)
    model.load_state_dict(state.pop("_weights"))
    C.save_checkpoint(out / "checkpoint.safetensors", model, {**state, "wall_time": 1000.0})
    (out / ".results.json.a1b2c3d4.tmp").write_bytes(b"half")
    assert main(["train", "--resume", "--epochs", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"resuming {out} at epoch 3/3, step {steps} (the last checkpoint)" in text
    assert json.loads((out / "results.json").read_text())["wall_time_s"] >= 1000.0
    assert not list(out.glob(".*.tmp"))
    assert main(["train", "--resume", "--epochs", "3", "--out", str(out)]) == 0
    assert "the run had finished (epoch 3" in capsys.readouterr().out
    # other BLAS thread counts: one warning line
    monkeypatch.setattr(C, "blas_threads", lambda: {k: v + 1 if isinstance(v, int) else v
                                                    for k, v in state["threads"].items()})
    assert main(["train", "--resume", "--epochs", "4", "--out", str(out)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nodegrad: warning: resuming") \
        and "BLAS thread counts" in err[0], err

