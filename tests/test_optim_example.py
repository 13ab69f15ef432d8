"""The optimiser example's claims at small scale: GD needs O(κ) iterations, momentum O(√κ)."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _example():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import optimizers_on_quadratic
    finally:
        sys.path.pop(0)
    return optimizers_on_quadratic


def test_gd_scales_with_kappa_and_momentum_with_its_root():
    ex = _example()
    kappas = [10, 100]
    its = {m: [ex.best_lr(m, ex.quadratic(k), [])[1] for k in kappas]
           for m in ("GD", "Momentum", "Nesterov")}
    slope = {m: np.log(b / a) / np.log(10) for m, (a, b) in its.items()}
    assert 0.9 < slope["GD"] < 1.1, its
    assert 0.4 < slope["Momentum"] < 0.65 and 0.4 < slope["Nesterov"] < 0.65, its


def test_adam_reaches_rosenbrock_minimum():
    ex = _example()
    lr, its = ex.best_lr("Adam", ex.rosenbrock(tol=1e-2, cap=3000), [1.0, 0.5, 0.25])
    assert its is not None and its < 3000


def test_inverse_sqrt_decay_slows_deterministic_gd():
    """SGD with the notes' η/√t reaches the minimum, but later than constant-step GD does."""
    ex = _example()
    prob = ex.quadratic(10, tol=1e-3)
    lr = 2 / 11
    gd, _ = ex.run("GD", prob, lr, 20000)
    decayed, path = ex.run("SGD 1/√t", prob, lr, 20000, record=True)
    assert gd is not None and decayed is not None and decayed > 3 * gd, (gd, decayed)
    # the first update takes the full step: x1 = x0 - lr A x0, as GD's does
    _, gd_path = ex.run("GD", prob, lr, 1, record=True)
    np.testing.assert_allclose(path[1], gd_path[1], rtol=1e-6)


def test_adadelta_joins_the_comparison():
    ex = _example()
    assert "Adadelta" in ex.METHODS and "SGD 1/√t" in ex.METHODS
    lr, its = ex.best_lr("Adadelta", ex.quadratic(10, tol=1e-3, cap=3000), [4.0, 2.0])
    assert its is not None and its < 3000


def test_jitted_steps_follow_the_eager_path():
    """The example runs its steps under ng.jit; the iterates equal eager ones, schedule included."""
    ex = _example()
    prob = ex.quadratic(10, tol=1e-3)
    paths = {}
    for jit in (False, True):
        ex.JIT = jit
        try:
            for m in ("SGD 1/√t", "Adadelta"):
                paths[jit, m] = ex.run(m, prob, 0.1, 60, record=True)[1]
        finally:
            ex.JIT = True
    for m in ("SGD 1/√t", "Adadelta"):
        np.testing.assert_array_equal(np.array(paths[True, m]), np.array(paths[False, m]))


@pytest.mark.slow
def test_the_whole_quick_comparison_runs(tmp_path):
    """`--quick` end to end (about 40 s): every method's table row and the figure."""
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "optimizers_on_quadratic.py"),
                          "--quick", "--out", str(tmp_path)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    for method in ("SGD 1/√t", "Adadelta", "Adam"):
        assert method in out.stdout
    assert list(tmp_path.glob("*.png"))
