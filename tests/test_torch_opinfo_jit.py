"""PyTorch's operator samples (its OpInfo database) under ``ng.jit``: each sample replayed on
nodegrad as a function of its input tensors, traced, and replayed again, must give what eager
nodegrad gives (float64, to 1e-12), on the traced values and on other values of the same
shapes (so nothing computed from the traced call's values is replayed as a constant).
Operators whose output's size or a Python value depends on their inputs' values cannot be
traced; they must refuse with ``JitError`` (the error names the op, the line and the fix), and
:data:`REFUSES` lists them with the reason.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _opinfo import replay_program  # noqa: E402
from test_torch_opinfo import KNOWN, _ops  # noqa: E402

import nodegrad as ng  # noqa: E402

SAMPLES = 3
_SIZE = "the output's size depends on the input's values"
_VALUE = "a Python value is read from a tensor argument (its value is not known when traced)"
SIZE_FROM_VALUES = ("argwhere", "nonzero", "nonzero_static", "masked_select", "masked_scatter",
                    "unique", "unique_consecutive", "histogramdd", "resize_", "resize_as_")
"""Operators whose output's size depends on their inputs' values (refused by jit and vmap)."""
REFUSES = {
    **{name: _SIZE for name in SIZE_FROM_VALUES},
    **{name: _VALUE for name in ("linalg.pinv", "narrow", "tensor_split",
                                 "linspace.tensor_overload", "logspace.tensor_overload")},
    "item": "it returns a Python number, which a captured step cannot recompute",
    **{name: "LDL's pivots are computed on the host from the values (numpy())" for name in
       ("linalg.ldl_factor", "linalg.ldl_factor_ex", "linalg.ldl_solve")},
}


def _random(key: str) -> bool:
    return any(w in key for w in ("rand", "dropout", "normal", "bernoulli", "multinomial",
                                  "uniform", "cauchy", "exponential", "geometric", "poisson"))


def float64_samples(op) -> tuple[str, list]:
    """``op``'s name and its float64 samples for the transform tests (the test skips ops
    without them, those test_torch_opinfo lists as differing, and random ones)."""
    key = op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")
    if torch.float64 not in op.supported_dtypes("cpu"):
        pytest.skip("no float64 samples")
    if key in KNOWN or _random(key):
        pytest.skip("listed in test_torch_opinfo's KNOWN, or random")
    torch.manual_seed(0)
    try:
        return key, list(op.sample_inputs("cpu", torch.float64, requires_grad=False))
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"PyTorch made no samples: {e}")


def _other_values(values: list, seed: int) -> list:
    """Inputs of the same shapes and dtypes with other values, for a replay that must not reuse
    the traced call's: floats moved by up to 0.5, integer and boolean entries permuted (the
    same values, so indices stay in range)."""
    rng = np.random.default_rng(seed)
    out = []
    for v in values:
        a = v.numpy()
        if a.dtype.kind == "f":
            a = (a + rng.uniform(-0.5, 0.5, a.shape)).astype(a.dtype)
        elif a.size > 1:
            a = rng.permutation(a.reshape(-1)).reshape(a.shape)
        out.append(ng.tensor(a))
    return out


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("op", list(_ops()))
def test_opinfo_samples_under_jit_equal_eager(op):
    key, samples = float64_samples(op)
    refused, bad = [], []
    for i, s in enumerate(samples[:SAMPLES]):
        built = replay_program(s, op)
        if built is None:
            continue
        program, values = built
        try:
            eager = program(*values)
        except Exception:  # noqa: BLE001  (test_torch_opinfo reports eager failures)
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                step = ng.jit(program)
                step(*values)
                got = step(*values)  # the replay, not the trace
        except ng.errors.JitError as e:
            refused.append(f"sample {i}: {str(e)[:120]}")
            continue
        pairs = [("", eager, got)]
        other = _other_values(values, i)
        try:
            pairs.append((" on other values", program(*other), step(*other)))
        except Exception:  # noqa: BLE001  (values outside the op's domain: eager refuses too)
            pass
        for what, want, have in pairs:
            for a, b in zip(want, have):
                x, y = np.asarray(a.numpy()), np.asarray(b.numpy())
                if x.shape != y.shape or x.dtype != y.dtype or not np.allclose(
                        x, y, rtol=1e-12, atol=1e-12, equal_nan=True):
                    bad.append(f"sample {i}{what}: {x.shape} {x.dtype} against {y.shape} "
                               f"{y.dtype}")
                    break
    assert not bad, "\n".join(bad)
    if key in REFUSES:
        assert refused, f"{key} now traces: remove it from REFUSES ({REFUSES[key]})"
    else:
        assert not refused, "\n".join(refused)
