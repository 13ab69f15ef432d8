"""The `nodegrad` command: a tiny run, its files, resume after SIGKILL, and bad input refused
with a one-line error and a non-zero exit status (never a traceback)."""

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
              "results.json", "curves.png", "lr.png", "confusion.png"):
        assert (out / f).exists(), f
    res = json.loads((out / "results.json").read_text())
    assert res["test"]["accuracy"] > 0.8
    assert main(["evaluate", str(out)]) == 0
    assert f"{100 * res['test']['accuracy']:.2f} %" in capsys.readouterr().out


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
    a, b = _weights(full / "model.safetensors"), _weights(broken / "model.safetensors")
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    rows = json.loads((broken / "history.json").read_text())["epochs"]
    assert [r["epoch"] for r in rows] == list(range(1, 7))
