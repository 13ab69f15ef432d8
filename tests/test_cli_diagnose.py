"""`nodegrad diagnose`: the report's files, the training record, --graph and --curvature, and
bad input refused with one line and a non-zero exit status (never a traceback)."""

import json
import math

import pytest

from nodegrad.cli import main

SMALL = ["--model", "deep_mlp", "--depth", "3", "--width", "16", "--batch-size", "64"]


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_report_files_table_and_warnings(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["diagnose", *SMALL, "--init", "small_normal", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for name in ("fc1", "tanh3", "out", "warnings:", "gradient norm shrinks", "report.json"):
        assert name in text, name
    for f in ("report.txt", "report.json", "activations.png", "profile.png"):
        assert (out / f).exists(), f
    assert not (out / "gradient_flow.json").exists()
    res = json.loads((out / "report.json").read_text())
    layers = res["report"]["layers"]
    assert [r["name"] for r in layers] == ["fc1", "tanh1", "fc2", "tanh2", "fc3", "tanh3", "out"]
    assert layers[0]["shape"] == [64, 16] and res["report"]["batch_size"] == 64
    # N(0, 0.01²) weights, 40 inputs of std ~1: fc1 has std about 0.01·√40 ≈ 0.063, and every
    # 16-wide layer after it multiplies the std by about 0.01·√16 = 0.04
    s = [r["activation"]["std"] for r in layers if r["type"] == "Linear"]
    assert 0.03 < s[0] < 0.12 and all(0.01 < b / a < 0.1 for a, b in zip(s, s[1:3]))
    assert res["warnings"] and res["options"]["init"] == "small_normal"
    saved = (out / "report.txt").read_text()
    assert "fc1" in saved and "warnings:" in saved


def test_steps_record_gradient_flow(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["diagnose", *SMALL, "--activation", "relu", "--init", "he", "--steps", "6",
                 "--every", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "training 6 steps (sgd lr 0.05, batch 64), recording every 2 steps" in text
    assert "after 6 steps" in text
    rec = json.loads((out / "gradient_flow.json").read_text())
    assert rec["steps"] == [1, 3, 5] and rec["layers"]["relu1"]["nonlinearity"] == "relu"
    for f in ("grad_norms.png", "dead_relus.png", "update_ratios.png", "report_after.txt"):
        assert (out / f).exists(), f
    res = json.loads((out / "report.json").read_text())
    assert res["training"]["steps"] == 6 and res["training"]["recorded_steps"] == [1, 3, 5]


def test_zoo_model_and_functional_relus(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["diagnose", "--model", "digits_mlp", "--batch-size", "32",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "linear1" in text and "Linear→relu" in text and "digits" in text
    # --overwrite replaces the report; without it the directory is refused
    assert main(["diagnose", "--model", "digits_mlp", "--out", str(out)]) == 2
    assert "exists; pass --overwrite" in _err_line(capsys)
    assert main(["diagnose", "--model", "digits_mlp", "--batch-size", "16", "--out", str(out),
                 "--overwrite"]) == 0
    capsys.readouterr()
    assert json.loads((out / "report.json").read_text())["report"]["batch_size"] == 16


def test_graph_and_curvature(tmp_path, capsys):
    pytest.importorskip("nodegrad.diagnostics.graph")
    pytest.importorskip("nodegrad.diagnostics.curvature")
    out = tmp_path / "d"
    assert main(["diagnose", *SMALL, "--graph", "--curvature", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "largest-magnitude Hessian eigenvalues of the loss: " in text
    assert (out / "graph.dot").read_text().lstrip().startswith("digraph")
    eig = json.loads((out / "report.json").read_text())["hessian_eigenvalues"]
    assert len(eig) == 3 and all(math.isfinite(v) for v in eig)
    assert abs(eig[0]) >= abs(eig[-1]) - 1e-6


@pytest.mark.parametrize("argv, msg", [
    (["--model", "nope"], "unknown model 'nope'"),
    (["--model", "digits_mlp", "--depth", "3"], "--depth applies only to --model deep_mlp"),
    (["--width", "0"], "expected an integer >= 1, got 0"),
    (["--activation", "elu"], "unknown activation 'elu'"),
    (["--init", "big"], "unknown init 'big'"),
    (["--every", "3"], "--every needs --steps N"),
    (["--model", "digits_mlp", "--dataset", "mnist1d"], "model digits_mlp is made for digits"),
    (["--steps", "-1"], "expected an integer >= 0, got -1"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--device", "foo"], "--device: unknown device 'foo'"),
])
def test_bad_input_is_one_line(argv, msg, capsys, tmp_path):
    assert main(["diagnose", *argv, "--out", str(tmp_path / "d")]) == 2
    err = _err_line(capsys)
    assert err.startswith("nodegrad: error: ") and msg in err, err
    assert not (tmp_path / "d").exists()


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["diagnose", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--curvature" in text and "--depth" in text and "deep_mlp" in text
    assert main([]) == 0 and "diagnose" in capsys.readouterr().out
