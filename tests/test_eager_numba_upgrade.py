"""Eager work imports numba by itself once it has gone on long enough (a ski-rental rule,
``_backend.note_eager_work``): training counts its optimiser steps, inference the ops that
wanted the one-pass loops. The loops and fused updates then run, with the bits NumPy's
operations gave. Each case runs in a fresh process, where numba is not imported yet."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("numba") is None,
                                reason="numba is not installed")

PROGRAM = r"""
import sys, time
import numpy as np
import nodegrad as ng
from nodegrad import _backend as B, nn
from nodegrad.nn import functional as F

B.EAGER_NUMBA_AFTER_S = float(sys.argv[1])
B.STEP_GAP_S = 0.02
ng.manual_seed(0)
model = nn.Sequential(nn.Conv1d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 40, 5))
opt = ng.optim.Adam(model.parameters(), lr=1e-2)
rng = np.random.default_rng(0)
x = ng.tensor(rng.standard_normal((64, 1, 40)).astype(np.float32))
y = ng.tensor(rng.integers(0, 5, 64))
seen = []
for step in range(40):
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    seen.append("numba" in sys.modules)
    time.sleep(0.01)
print("".join("1" if s else "0" for s in seen))
print(B._EagerClock.spent > 0, B.cpu_kernels() is not None)
np.save(sys.argv[2], np.concatenate([p.detach().numpy().ravel() for p in model.parameters()]))
"""


def _train(after: float, path) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROGRAM, str(after), str(path)],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_training_imports_numba_after_its_time_with_the_same_bits(tmp_path):
    upgraded = _train(0.2, tmp_path / "a.npy")
    seen = upgraded[0]
    assert seen[:5] == "00000"  # a short run pays no import
    assert seen.endswith("1") and "10" not in seen  # imported once the time was spent
    assert upgraded[1:] == ["True", "True"]  # the loops are taken from then on
    never = _train(1e9, tmp_path / "b.npy")
    assert never[0] == "0" * 40 and never[1:] == ["True", "False"]
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert np.array_equal(a, b)  # loops and fused updates give NumPy's bits


def test_pauses_count_at_most_the_step_gap():
    from nodegrad import _backend as B

    c = B._EagerClock
    saved = (c.last, c.spent, c.done)
    try:
        c.last, c.spent, c.done = 0.0, 0.0, False  # the previous step was long ago
        B.note_eager_work()
        assert c.spent == B.STEP_GAP_S and c.last > 0
    finally:
        c.last, c.spent, c.done = saved


INFERENCE = r"""
import sys, time
import numpy as np
import nodegrad as ng
from nodegrad import _backend as B, nn
from nodegrad.nn import functional as F

B.EAGER_NUMBA_AFTER_S = float(sys.argv[1])
B.STEP_GAP_S = 0.02
ng.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.LayerNorm(256), nn.Linear(256, 64))
model.eval()
x = ng.tensor(np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32))
seen, outs = [], []
with ng.no_grad():
    for call in range(40):
        outs.append(F.softmax(model(x), dim=-1).numpy())
        seen.append("numba" in sys.modules)
        time.sleep(0.01)
print("".join("1" if s else "0" for s in seen))
print(B.cpu_kernels() is not None, all(np.array_equal(o, outs[0]) for o in outs))
"""


def _infer(after: float) -> list[str]:
    out = subprocess.run([sys.executable, "-c", INFERENCE, str(after)],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_inference_imports_numba_after_its_time_with_the_same_bits():
    seen, kernels, same = _infer(0.2)
    assert seen[:5] == "00000"  # a short run pays no import
    assert seen.endswith("1") and "10" not in seen  # imported once the time was spent
    assert (kernels, same) == ("True", "True")  # the loops from then on, NumPy's bits
    seen, kernels, same = _infer(1e9)
    assert seen == "0" * 40 and (kernels, same) == ("False", "True")
