"""Each example of the diagnostics, pruning, transfer and landscape docs runs end to end (in a
small configuration) and draws its figures into its own folder, runs/examples/<name> (ignored
by git), or into --out; never into docs/figures unless asked."""

import hashlib
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MPLBACKEND": "Agg",
       "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}

# script: (small-configuration arguments, the figures it draws)
CASES = {
    "init_activations.py": (["--quick"],
                            ["init_activations_tanh.png", "init_activations_relu.png",
                             "training_flow_grad_norms.png", "training_flow_dead_relus.png"]),
    "autodiff_diagnostics.py": ([], ["graph_neuron.svg", "graph_digits_mlp.svg"]),
    "lottery_ticket_mnist1d.py": (["--rounds", "2", "--steps", "80", "--seeds", "1"],
                                  ["lottery_accuracy.png", "lottery_first_layer.png"]),
    "transfer_learning.py": (["--seeds", "1", "--per-class", "10", "--steps", "20",
                              "--pretrain-epochs", "1"], ["transfer_accuracy.png"]),
    "loss_landscape.py": (["--epochs", "1", "--n", "5"],
                          ["landscape_interpolation.png", "landscape_surface.png"]),
    "double_descent_mnist1d.py": (["--widths", "2", "8", "--steps", "50", "--seeds", "1"],
                                  ["double_descent.png"]),
    "augmentation_grid.py": (["--rows", "2"], ["augmentation_grid.png"]),
}
# these two also write into an explicit --out (as `--out docs/figures` would)
EXPLICIT_OUT = {"autodiff_diagnostics.py", "double_descent_mnist1d.py"}


def _docs_figures() -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((ROOT / "docs" / "figures").iterdir())}


@pytest.mark.parametrize("script", sorted(CASES))
def test_example_runs_and_draws_its_figures(script, tmp_path):
    args, figures = CASES[script]
    explicit = script in EXPLICIT_OUT
    out = tmp_path / "figs" if explicit else tmp_path / "runs" / "examples" / script[:-3]
    before = _docs_figures()
    cmd = [sys.executable, str(ROOT / "examples" / script), *args,
           *(["--out", str(out)] if explicit else [])]
    res = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    for f in figures:
        if f.endswith(".svg") and shutil.which("dot") is None:  # no Graphviz: the DOT text
            f = f.replace(".svg", ".dot")
        path = out / f
        assert path.exists() and path.stat().st_size > 500, f
    assert _docs_figures() == before  # the committed figures are left alone
