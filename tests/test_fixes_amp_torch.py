"""Mixed precision against PyTorch's CPU autocast and GradScaler."""

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")

_DT = {"f32": (torch.float32, ng.float32), "f64": (torch.float64, ng.float64),
       "bf16": (torch.bfloat16, ng.bfloat16), "f16": (torch.float16, ng.float16)}


def _pair(shape, dt, seed):
    a = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return torch.tensor(a).to(_DT[dt][0]), ng.tensor(a).astype(_DT[dt][1])


def _check(t, n, tol):
    assert str(n.dtype) == str(t.dtype).removeprefix("torch.")
    np.testing.assert_allclose(n.detach().astype(ng.float64).numpy(),
                               t.detach().double().numpy(), rtol=tol, atol=tol)


_MIXED = {
    "add": lambda L, a, b: a + b,
    "mul": lambda L, a, b: a * b,
    "cat": lambda L, a, b: L.cat([a, b]),
    "stack": lambda L, a, b: L.stack([a, b]),
    "where": lambda L, a, b: L.where(a > 0, a, b),
    "maximum": lambda L, a, b: L.maximum(a, b),
    "addcmul": lambda L, a, b: L.addcmul(a, b, b),
    "atan2": lambda L, a, b: L.atan2(a, b),
}


@pytest.mark.parametrize("region", ["bf16", "f16"])
@pytest.mark.parametrize("dts", [("f64", "f32"), ("f32", "f64"), ("bf16", "f16"),
                                 ("f16", "f32"), ("f32", "f16"), ("bf16", "f64")])
@pytest.mark.parametrize("op", sorted(_MIXED))
def test_mixed_floats_promote_in_region(region, dts, op):
    (ta, na), (tb, nb) = _pair((3, 3), dts[0], 0), _pair((3, 3), dts[1], 1)
    try:
        with torch.autocast("cpu", dtype=_DT[region][0]):
            t = _MIXED[op](torch, ta, tb)
    except RuntimeError:  # its promote list refuses a half type other than the region's
        pytest.skip("PyTorch refuses this mix")
    with ng.autocast("cpu", dtype=_DT[region][1]):
        n = _MIXED[op](ng, na, nb)
    _check(t, n, 2e-2)


@pytest.mark.parametrize("region", ["bf16", "f16"])
@pytest.mark.parametrize("dts", [("f32", "bf16"), ("bf16", "f16"), ("f16", "f32")])
@pytest.mark.parametrize("op", ["mm", "bmm"])
def test_mm_bmm_lower_mixed_operands(region, dts, op):
    shape = (3, 3) if op == "mm" else (2, 3, 3)
    (ta, na), (tb, nb) = _pair(shape, dts[0], 2), _pair(shape, dts[1], 3)
    with torch.autocast("cpu", dtype=_DT[region][0]):
        t = getattr(torch, op)(ta, tb)
    with ng.autocast("cpu", dtype=_DT[region][1]):
        n = getattr(ng, op)(na, nb)
    _check(t, n, 5e-2)


def test_nested_region_without_dtype_keeps_enclosing_dtype():
    ta, na = _pair((3, 3), "f32", 4)
    with torch.autocast("cpu", dtype=torch.float16), torch.autocast("cpu"):
        t = ta @ ta
        tdt = torch.get_autocast_dtype("cpu")
    with ng.autocast("cpu", dtype=ng.float16), ng.autocast("cpu"):
        n = na @ na
        ndt = ng.amp.get_autocast_dtype("cpu")
    assert str(ndt) == str(tdt).removeprefix("torch.") == "float16"
    _check(t, n, 1e-2)


def test_decorator_takes_dtype_where_made():
    ta, na = _pair((3, 3), "f32", 5)
    with torch.autocast("cpu", dtype=torch.float16):
        tf = torch.autocast("cpu")(lambda x: x @ x)
    with ng.autocast("cpu", dtype=ng.float16):
        nf = ng.autocast("cpu")(lambda x: x @ x)
    _check(tf(ta), nf(na), 1e-2)


def test_scaler_load_state_dict_before_first_scale_keeps_tracker():
    sd = {"scale": 32.0, "growth_factor": 3.0, "backoff_factor": 0.25, "growth_interval": 3,
          "_growth_tracker": 2}
    st, sn = torch.amp.GradScaler("cpu"), ng.amp.GradScaler("cpu")
    st.load_state_dict(dict(sd))
    sn.load_state_dict(dict(sd))
    assert sn.state_dict() == st.state_dict()
    pt, pn = torch.nn.Parameter(torch.ones(2)), ng.nn.Parameter(ng.ones(2))
    ot, on = torch.optim.SGD([pt], lr=0.1), ng.optim.SGD([pn], lr=0.1)
    st.scale(pt.sum()).backward()
    sn.scale(pn.sum()).backward()
    st.step(ot)
    sn.step(on)
    st.update()
    sn.update()
    assert sn.state_dict() == st.state_dict()
    assert sn.get_scale() == st.get_scale() == 96.0
