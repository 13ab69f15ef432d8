"""PyTorch's operator samples (its OpInfo database) under ``ng.vmap``: each float64 sample,
replayed on nodegrad as a function of its input tensors, is run on a batch of two examples
(the sample and a copy of it moved by up to 1e-3) and must equal the two runs stacked (to
1e-10). Operators that cannot run on a batch inside vmap (an output size that depends on the
values, a Python value read from a tensor, an in-place update of unbatched state) must refuse
with a TypeError or ValueError that says so; :data:`REFUSES` lists them with the reason.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _opinfo import replay_program  # noqa: E402
from test_torch_opinfo import _ops  # noqa: E402
from test_torch_opinfo_jit import SIZE_FROM_VALUES, float64_samples  # noqa: E402

import nodegrad as ng  # noqa: E402

SAMPLES = 3
_SIZE = "the output's size depends on the values"
_VALUE = "a Python value is read from a batched tensor"
REFUSES = {
    **{name: _SIZE for name in SIZE_FROM_VALUES},
    **{name: _VALUE for name in ("linalg.pinv", "narrow", "tensor_split",
                                 "linspace.tensor_overload", "logspace.tensor_overload",
                                 "linalg.ldl_factor", "linalg.ldl_factor_ex",
                                 "linalg.ldl_solve")},
    "nn.functional.embedding_bag": "batched offsets (each example's bags)",
    "as_strided": "strides address the whole batch's memory",
    "as_strided_copy": "strides address the whole batch's memory",
}


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("op", list(_ops()))
def test_opinfo_samples_under_vmap_equal_a_loop(op):
    key, samples = float64_samples(op)
    rng = np.random.default_rng(0)
    refused, bad = [], []
    for i, s in enumerate(samples[:SAMPLES]):
        built = replay_program(s, op)
        if built is None or not built[1]:
            continue
        program, first = built
        second = [ng.tensor((v.numpy() + rng.uniform(-1e-3, 1e-3, v.shape)).astype(v.dtype))
                  if v.dtype.kind == "f" else v for v in first]
        try:
            outs = program(*first), program(*second)
        except Exception:  # noqa: BLE001  (test_torch_opinfo reports eager failures)
            continue
        if not outs[0]:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got = ng.vmap(program)(*[ng.stack([a, b]) for a, b in zip(first, second)])
        except (TypeError, ValueError) as e:
            refused.append(f"sample {i}: {type(e).__name__}: {str(e)[:120]}")
            continue
        for a, b, g in zip(*outs, got):
            want = np.stack([np.asarray(a.numpy()), np.asarray(b.numpy())])
            y = np.asarray(g.numpy())
            if want.shape != y.shape or want.dtype != y.dtype or not np.allclose(
                    want, y, rtol=1e-10, atol=1e-10, equal_nan=True):
                bad.append(f"sample {i}: {want.shape} {want.dtype} against {y.shape} "
                           f"{y.dtype}")
                break
    assert not bad, "\n".join(bad)
    if key in REFUSES:
        assert refused, f"{key} now runs under vmap: remove it from REFUSES ({REFUSES[key]})"
    else:
        assert not refused, "\n".join(refused)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("op", [p for p in _ops() if p.values[0].supports_autograd])
def test_opinfo_vjp_fn_under_vmap_equals_a_loop(op):
    """``vmap(vjp_fn)`` over three cotangents (torch.func's Jacobian idiom: the backward pass
    runs inside vmap, on a graph recorded outside it) equals ``vjp_fn`` on each, to 1e-9."""
    key, samples = float64_samples(op)
    rng = np.random.default_rng(0)
    for i, s in enumerate(samples[:SAMPLES]):
        built = replay_program(s, op)
        if built is None or not built[1]:
            continue
        program, vals = built
        fl = [j for j, v in enumerate(vals) if v.dtype == ng.float64]

        def f(*xs, program=program, vals=vals, fl=fl):
            full = list(vals)
            for j, x in zip(fl, xs):
                full[j] = x
            return tuple(o for o in program(*full) if o.dtype.kind == "f")

        try:
            outs, vjp_fn = ng.vjp(f, *[vals[j] for j in fl])
            cts = [ng.tensor(rng.standard_normal((3,) + tuple(o.shape))) for o in outs]
            loop = [vjp_fn(tuple(c[k] for c in cts)) for k in range(3)] if outs else None
        except Exception:  # noqa: BLE001  (eager failures and missing gradients: elsewhere)
            continue
        if not loop:
            continue
        got = ng.vmap(vjp_fn)(tuple(cts))
        for j in range(len(fl)):
            want = np.stack([np.asarray(row[j].numpy()) for row in loop])
            np.testing.assert_allclose(np.asarray(got[j].numpy()), want, rtol=1e-9, atol=1e-9,
                                       err_msg=f"{key} sample {i} input {j}")
