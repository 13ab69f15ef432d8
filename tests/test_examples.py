"""Each example of the diagnostics, pruning, transfer and landscape docs runs end to end (in a
small configuration) and draws its figures."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MPLBACKEND": "Agg",
       "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}

CASES = {
    "init_activations.py": (["--quick", "--out", "{out}"],
                            ["init_activations_tanh.png", "init_activations_relu.png",
                             "training_flow_grad_norms.png", "training_flow_dead_relus.png"]),
    "autodiff_diagnostics.py": (["--out", "{out}"], ["graph_neuron.svg", "graph_digits_mlp.svg"]),
    "lottery_ticket_mnist1d.py": (["--rounds", "2", "--steps", "80", "--seeds", "1",
                                   "--out-dir", "{out}"],
                                  ["lottery_accuracy.png", "lottery_first_layer.png"]),
    "transfer_learning.py": (["--seeds", "1", "--per-class", "10", "--steps", "20",
                              "--pretrain-epochs", "1", "--figure", "{out}/transfer.png"],
                             ["transfer.png"]),
    "loss_landscape.py": (["--epochs", "1", "--n", "5", "--out", "{out}"],
                          ["landscape_interpolation.png", "landscape_surface.png"]),
    "double_descent_mnist1d.py": (["--widths", "2", "8", "--steps", "50", "--seeds", "1",
                                   "--figure", "{out}/dd.png"], ["dd.png"]),
}


@pytest.mark.parametrize("script", sorted(CASES))
def test_example_runs_and_draws_its_figures(script, tmp_path):
    args, figures = CASES[script]
    cmd = [sys.executable, str(ROOT / "examples" / script),
           *(a.format(out=tmp_path) for a in args)]
    res = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    for f in figures:
        if f.endswith(".svg") and shutil.which("dot") is None:  # no Graphviz: the DOT text
            f = f.replace(".svg", ".dot")
        path = tmp_path / f
        assert path.exists() and path.stat().st_size > 500, f
