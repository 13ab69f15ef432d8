"""Small differences from PyTorch found beside the larger areas, each fixed (compared with
PyTorch 2.13)."""

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("value", [2.5, -2.5, 0.9, 3, True])
@pytest.mark.parametrize("dtypes", [("int64",) * 3, ("int32", "int64", "int16"),
                                    ("float32", "int64", "int64"), ("int64", "float32", "int64")])
def test_addcmul_truncates_a_float_value_on_integer_tensors(value, dtypes):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(-5, 6, (2, 3)).astype(d) for d in dtypes]
    want = torch.addcmul(*(torch.tensor(a) for a in arrays), value=value)
    got = ng.addcmul(*(ng.tensor(a) for a in arrays), value=value)
    assert str(got.dtype) == str(want.dtype).removeprefix("torch.")
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    x = ng.tensor(arrays[0])
    if x.dtype == got.dtype:
        x.addcmul_(ng.tensor(arrays[1]), ng.tensor(arrays[2]), value=value)
        np.testing.assert_array_equal(x.numpy(), want.numpy())


@pytest.mark.parametrize("name", ["median", "nanmedian"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_median_of_no_entries_is_nan_on_the_graph(name, dtype):
    """NaN, and a backward through it gives the empty gradient (it raised: no graph)."""
    t = torch.zeros(0, 2, dtype=getattr(torch, dtype), requires_grad=True)
    want = getattr(t, name)()
    want.backward()
    x = ng.zeros(0, 2, dtype=getattr(ng, dtype), requires_grad=True)
    got = getattr(x, name)()
    assert str(got.dtype) == dtype and np.isnan(got.item()) and got.requires_grad
    got.backward()
    assert x.grad.shape == tuple(t.grad.shape)


def test_a_grad_of_another_shape_is_refused_not_broadcast():
    """``p.data`` given another shape after a backward: the next backward raises, as PyTorch's,
    instead of broadcasting the old ``.grad`` into a gradient of the new shape."""
    t = torch.nn.Parameter(torch.ones(3))
    (t * 2).sum().backward()
    t.data = torch.ones(2, 3)
    with pytest.raises(RuntimeError):
        (t * 2).sum().backward()
    p = ng.nn.Parameter(ng.ones(3))
    (p * 2).sum().backward()
    p.data = ng.ones(2, 3)
    with pytest.raises(ng.errors.GradError, match=r"shape \(3,\)"):
        (p * 2).sum().backward()
    p.grad = None
    (p * 2).sum().backward()
    assert p.grad.shape == (2, 3)
