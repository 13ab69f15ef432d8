"""Tensors: creation, the dtype policy, conversions, DLPack, methods and clear errors."""

import numpy as np
import pytest

import nodegrad as ng


def test_default_dtypes_follow_pytorch():
    assert ng.tensor([1.0, 2.0]).dtype == ng.float32
    assert ng.tensor(3.0).dtype == ng.float32
    assert ng.tensor([1, 2]).dtype == ng.int64
    assert ng.tensor([True]).dtype == ng.bool_
    assert ng.tensor(np.ones(2)).dtype == ng.float64  # NumPy arrays keep their dtype
    assert ng.tensor([1, 2], dtype=ng.float64).dtype == ng.float64
    assert ng.tensor([1, 2], dtype="float32").dtype == ng.float32
    assert ng.zeros(2, 3).dtype == ng.float32 and ng.zeros(2, 3).shape == (2, 3)
    assert ng.ones((2, 3)).shape == (2, 3)
    assert ng.arange(3).dtype == ng.int64 and ng.arange(0.0, 1.0, 0.5).dtype == ng.float32
    assert ng.full((2,), 7).dtype == ng.int64 and ng.full((2,), 0.5).dtype == ng.float32


def test_python_scalars_never_upcast_float32():
    x = ng.ones(3)
    for y in (x + 1.5, x * 2, 1.5 - x, x / 3.0, x ** 2.5, 2.0 ** x, ng.maximum(x, 0.5)):
        assert y.dtype == ng.float32
    i = ng.tensor([1, 2])
    assert (i * 0.5).dtype == ng.float32 and i.mean().dtype == ng.float32
    assert (i / 2).dtype == ng.float32
    assert (i + 1).dtype == ng.int64


def test_mixed_float_precisions_raise():
    with pytest.raises(ng.DTypeError, match="float32 and float64"):
        ng.ones(2) + ng.ones(2, dtype=ng.float64)
    with pytest.raises(ng.DTypeError):
        ng.ones(2, 2) @ ng.tensor(np.ones((2, 2)))
    assert (ng.ones(2) + ng.ones(2, dtype=ng.float64).float()).dtype == ng.float32


def test_tensor_copies_and_as_tensor_shares():
    a = np.ones(3, np.float32)
    t = ng.tensor(a)
    a[0] = 5
    assert t.numpy()[0] == 1
    s = ng.as_tensor(a)
    f = ng.from_numpy(a)
    a[1] = 7
    assert s.numpy()[1] == 7 and f.numpy()[1] == 7


def test_conversions():
    x = ng.tensor([[1.5, 2.0]])
    assert x.item() if x.numel() == 1 else True
    assert ng.tensor(2.5).item() == 2.5 and float(ng.tensor(2.5)) == 2.5
    assert int(ng.tensor(3)) == 3 and x.tolist() == [[1.5, 2.0]]
    assert np.asarray(x).shape == (1, 2)
    assert x.size() == (1, 2) and x.size(1) == 2 and x.numel() == 2 and x.dim() == 2
    assert len(x) == 1 and x.device == "cpu" and not x.is_cuda
    with pytest.raises(ValueError, match="1"):
        x.item()
    with pytest.raises(ValueError, match="ambiguous"):
        bool(ng.ones(2))
    assert [t.item() for t in ng.tensor([1.0, 2.0])] == [1.0, 2.0]


def test_dtype_conversion_is_differentiable():
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    y = x.double()
    assert y.dtype == ng.float64
    (y * y).sum().backward()
    assert x.grad.dtype == ng.float32
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 4.0])
    assert x.to(ng.float64).dtype == ng.float64 and x.to("cpu") is x


def test_dlpack_roundtrip_with_torch():
    torch = pytest.importorskip("torch")
    t = torch.arange(6.0).reshape(2, 3)
    a = ng.from_dlpack(t)
    assert a.shape == (2, 3) and a.dtype == ng.float32
    t[0, 0] = 42.0  # shares memory
    assert a.numpy()[0, 0] == 42.0
    b = torch.from_dlpack(ng.arange(4))
    assert b.tolist() == [0, 1, 2, 3]
    c = ng.from_dlpack(np.ones(3))
    assert c.dtype == ng.float64


def test_dlpack_refuses_a_tensor_that_requires_grad():
    torch = pytest.importorskip("torch")
    w = ng.ones(3, requires_grad=True)
    with pytest.raises(ng.errors.GradError, match="detach"):
        torch.from_dlpack(w)
    assert torch.from_dlpack(w.detach()).tolist() == [1.0, 1.0, 1.0]


def test_repr():
    assert repr(ng.tensor([1.0, 2.0])) == "tensor([1., 2.])"
    assert "requires_grad=True" in repr(ng.ones(1, requires_grad=True))
    assert "grad_fn=<multiply>" in repr(ng.ones(1, requires_grad=True) * 2)
    assert "float64" in repr(ng.ones(1, dtype=ng.float64))


def test_unknown_device_and_missing_cupy():
    with pytest.raises(ng.DeviceError, match="unknown device"):
        ng.zeros(2, device="tpu")
    with pytest.raises(ng.DeviceError):
        ng.zeros(2, device=3)
    if not ng.cuda_available():
        with pytest.raises(ng.DeviceError, match="gpu|CuPy|GPU"):
            ng.zeros(2, device="cuda")


def test_bad_data():
    with pytest.raises(ng.DTypeError):
        ng.tensor(["a", "b"])
    with pytest.raises(TypeError):
        ng.ones(2) + "a"
    with pytest.raises(TypeError):
        ng.from_numpy([1, 2])


def test_pytorch_style_methods():
    x = ng.arange(24).reshape(2, 3, 4).float()
    assert x.transpose(0, 2).shape == (4, 3, 2)  # swaps two dims, as in PyTorch
    assert ng.transpose(x).shape == (4, 3, 2)  # NumPy: reverse
    assert x.permute(2, 0, 1).shape == (4, 2, 3)
    assert x.view(6, 4).shape == (6, 4) and x.flatten(1).shape == (2, 12)
    assert x.unsqueeze(0).shape == (1, 2, 3, 4) and x[:, :1].squeeze(1).shape == (2, 4)
    assert x.sum(dim=1, keepdim=True).shape == (2, 1, 4)
    assert x.sum(axis=(0, 2)).shape == (3,)
    vals, idx = x.max(dim=2)
    np.testing.assert_array_equal(idx.numpy(), np.full((2, 3), 3))
    assert x.max(axis=2).shape == (2, 3)
    assert [c.shape for c in x.split(2, dim=2)] == [(2, 3, 2), (2, 3, 2)]
    assert [c.shape for c in ng.split(x, [1], axis=1)] == [(2, 1, 4), (2, 2, 4)]
    assert x.T.shape == (4, 3, 2) and x.mT.shape == (2, 4, 3)
    assert x.var(dim=2, correction=1).shape == (2, 3)
    assert x.expand(3, 2, 3, 4).shape == (3, 2, 3, 4)
    assert x.clamp(min=2.0, max=5.0).max().item() == 5.0


def test_shape_errors_name_the_op():
    with pytest.raises(ng.ShapeError, match=r"add.*\(2, 3\).*\(4,\)"):
        ng.ones(2, 3) + ng.ones(4)
    with pytest.raises(ng.ShapeError, match="matmul"):
        ng.ones(2, 3) @ ng.ones(4, 2)
    with pytest.raises(ng.ShapeError, match="axis 3"):
        ng.ones(2, 3).sum(axis=3)
    with pytest.raises(ng.ShapeError, match="reshape"):
        ng.ones(2, 3).reshape(4, 2)
    with pytest.raises(ng.ShapeError, match="stack"):
        ng.stack([ng.ones(2), ng.ones(3)])
    with pytest.raises(IndexError, match="getitem"):
        ng.ones(2, 3)[5]


def test_zero_like_and_friends():
    x = ng.ones(2, 3, dtype=ng.float64)
    assert ng.zeros_like(x).dtype == ng.float64 and ng.ones_like(x).shape == (2, 3)
    assert ng.full_like(x, 3.0).numpy().max() == 3.0
    assert ng.eye(3).numpy().trace() == 3 and ng.linspace(0, 1, 5).shape == (5,)


def test_setitem_and_indexing_without_grad():
    x = ng.zeros(3, 3)
    x[1] = 2.0
    x[ng.tensor([0, 2]), 0] = ng.tensor([5.0, 6.0])
    assert x.numpy()[1].tolist() == [2.0, 2.0, 2.0]
    assert x.numpy()[:, 0].tolist() == [5.0, 2.0, 6.0]
    assert x[x > 1.0].shape == (5,)


def test_numpy_of_a_tensor_in_the_graph_is_read_only():
    """A write through ``.numpy()`` would change a value the graph saved, unseen by the version
    counter (here the gradient would be -1,999,800 instead of 0.64): it raises instead."""
    x = ng.tensor([0.5, -1.0], dtype=ng.float64, requires_grad=True)
    y = ng.tanh(x)
    z = (y * y).sum()
    view = y.numpy()
    assert view[0] == np.tanh(0.5)  # reading keeps working, without a copy
    assert np.shares_memory(view, y.data)
    with pytest.raises(ValueError, match="read-only"):
        view[0] = 100
    with pytest.raises(ValueError, match="read-only"):
        x.numpy()[...] = 0  # a leaf that requires grad too
    with pytest.raises(ValueError, match="read-only"):
        np.asarray(y)[0] = 100
    z.backward()
    t = np.tanh([0.5, -1.0])
    np.testing.assert_allclose(x.grad.numpy(), 2 * t * (1 - t * t))
    # the writable ways out, as in PyTorch: detach() (shares memory) or a copy
    d = y.detach().numpy()
    d[0] = 100
    assert y.numpy()[0] == 100
    c = np.array(x)
    c[0] = 7
    assert x.numpy()[0] == 0.5
    # a tensor that needs no gradient hands out a writable view sharing its memory (PyTorch)
    plain = ng.tensor([1.0, 2.0])
    plain.numpy()[0] = 5
    assert plain.tolist() == [5.0, 2.0]
    g = x.grad.numpy()
    g[0] = 0.0  # gradients do not require grad: writable
    assert x.grad.numpy()[0] == 0.0


def test_numpy_scalars_keep_their_dtype_python_floats_become_float32():
    assert ng.tensor(np.float64(1.5)).dtype == ng.float64  # as torch.tensor(np.float64(1.5))
    assert ng.tensor(np.float32(1.5)).dtype == ng.float32
    assert ng.tensor(np.int64(3)).dtype == ng.int64
    assert ng.tensor(1.5).dtype == ng.float32 and ng.tensor([1.5]).dtype == ng.float32


def test_in_tests_for_an_equal_entry_as_torch():
    x = ng.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert 3.0 in x and 5.0 not in x and ng.tensor([3.0, 4.0]) in x and 2 in ng.tensor([1, 2])
    with pytest.raises(TypeError, match="__contains__"):
        "a" in x  # noqa: B015
