"""A norm of half-precision input with float32 parameters (an autocast region's layers) runs in
float32 and returns the input's dtype, as PyTorch's mixed-dtype norms: values, gradients and
their dtypes against PyTorch."""

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")

RNG = np.random.default_rng(0)
X = RNG.standard_normal((4, 6, 5)).astype(np.float32)
W = RNG.standard_normal(6).astype(np.float32)
B_ = RNG.standard_normal(6).astype(np.float32)
W5 = RNG.standard_normal(5).astype(np.float32)
B5 = RNG.standard_normal(5).astype(np.float32)


def _norms(lib):
    F = lib.nn.functional
    return {
        "layer_norm": lambda x, p: F.layer_norm(x, (5,), p["w5"], p["b5"]),
        "group_norm": lambda x, p: F.group_norm(x, 3, p["w"], p["b"]),
        "batch_norm": lambda x, p: F.batch_norm(x, p["rm"], p["rv"], p["w"], p["b"],
                                                training=True),
        "batch_norm_eval": lambda x, p: F.batch_norm(x, p["rm"], p["rv"], p["w"], p["b"]),
    }


def _run(lib, name, half):
    t = lib.tensor
    x = t(X).to(half).requires_grad_(True) if lib is torch else \
        ng.tensor(X).astype(half).requires_grad_(True)
    p = {"w": t(W), "b": t(B_), "w5": t(W5), "b5": t(B5), "rm": t(np.zeros(6, np.float32)),
         "rv": t(np.ones(6, np.float32))}
    for k in ("w", "b", "w5", "b5"):
        p[k].requires_grad_(True)
    y = _norms(lib)[name](x, p)
    (y.float() * t(np.linspace(-1, 1, y.numel(), dtype=np.float32).reshape(
        tuple(y.shape)))).sum().backward()
    grads = {"x": x.grad, "w": p["w"].grad if "group" in name or "batch" in name
             else p["w5"].grad}
    return y, grads, p["rm"]


@pytest.mark.parametrize("name", ["layer_norm", "group_norm", "batch_norm", "batch_norm_eval"])
@pytest.mark.parametrize("half", ["bfloat16", "float16"])
def test_half_input_with_float32_parameters_as_torch(name, half):
    y, g, rm = _run(ng, name, getattr(ng, half))
    ty, tg, trm = _run(torch, name, getattr(torch, half))
    assert str(y.dtype) == half and str(g["x"].dtype) == half and g["w"].dtype == ng.float32
    np.testing.assert_allclose(y.float().detach().numpy(), ty.float().detach().numpy(),
                               rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(g["w"].numpy(), tg["w"].numpy(), rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(rm.numpy(), trm.numpy(), rtol=1e-3, atol=1e-3)  # float32 stats


def test_under_autocast_the_norm_keeps_the_low_precision_of_its_input():
    lin, ln = ng.nn.Linear(5, 5), ng.nn.LayerNorm(5)
    with ng.autocast("cpu", dtype=ng.bfloat16):
        h = lin(ng.tensor(X))
        assert h.dtype == ng.bfloat16 and ln(h).dtype == ng.bfloat16
        assert ln(ng.tensor(X)).dtype == ng.float32  # float32 input stays float32
