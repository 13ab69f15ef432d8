"""A scatter-add of whole rows (an embedding's gradient, ``index_add``) by a numba loop: the
bits of ``np.add.at``, which it replaces where numba is loaded."""

import numpy as np
import pytest

import nodegrad as ng
import nodegrad._backend as B

numba = pytest.importorskip("numba")


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("it", [np.int64, np.int32, np.uint8, np.int16])
@pytest.mark.parametrize("out_shape, index_shape", [
    ((65, 128), (12, 64)), ((10,), (5000,)), ((7, 3, 5), (200,)), ((300, 16), (40, 3))])
def test_scatter_rows_is_add_at_to_the_bit(cpu_kernels, dt, it, out_shape, index_shape):
    rng = np.random.default_rng(0)
    lo = 0 if np.dtype(it).kind == "u" else -out_shape[0]
    idx = rng.integers(lo, out_shape[0], index_shape).astype(it)  # repeats, negatives
    vals = rng.standard_normal(index_shape + out_shape[1:]).astype(dt)
    want = rng.standard_normal(out_shape).astype(dt)
    got = want.copy()
    np.add.at(want, (idx,), vals)
    B.CPU.scatter_add(got, (idx,), vals)
    assert got.tobytes() == want.tobytes()
    got2 = np.zeros(out_shape, dt)
    B.CPU.scatter_add(got2, idx, vals)  # the index alone, not in a tuple
    want2 = np.zeros(out_shape, dt)
    np.add.at(want2, idx, vals)
    assert got2.tobytes() == want2.tobytes()
    taken = B._scatter_rows(np.zeros(out_shape, dt), (idx,), vals)
    assert taken == (cpu_kernels == "numba" and vals.size >= B.SCATTER_ROWS_MIN)


def test_scatter_rows_out_of_range_raises_numpys_error(cpu_kernels):
    out = np.zeros((65, 128), np.float32)
    idx = np.full((12, 64), 65)
    idx[0, 0] = 3
    with pytest.raises(IndexError, match="out of bounds"):
        B.CPU.scatter_add(out, (idx,), np.ones((12, 64, 128), np.float32))
    assert not out.any()  # nothing written before the error


def test_scatter_rows_leaves_other_layouts_to_add_at(cpu_kernels):
    rng = np.random.default_rng(1)
    out = np.zeros((128, 65), np.float32).T  # F-ordered: not taken by the loop
    idx = rng.integers(0, 65, 3000)
    vals = rng.standard_normal((3000, 128)).astype(np.float32)
    want = np.zeros((65, 128), np.float32)
    np.add.at(want, idx, vals)
    B.CPU.scatter_add(out, (idx,), vals)
    assert np.array_equal(out, want)
    big = np.zeros((10, 4), np.float32)
    with pytest.raises(IndexError):
        B.CPU.scatter_add(big, (np.array([2**63 - 1] * 600, np.uint64),), np.ones((600, 4),
                                                                                  np.float32))


def test_embedding_gradient_by_the_loop_equals_add_at(cpu_kernels):
    rng = np.random.default_rng(2)
    idx = ng.tensor(rng.integers(0, 65, (12, 64)))
    w = ng.tensor(rng.standard_normal((65, 128)).astype(np.float32), requires_grad=True)
    g = rng.standard_normal((12, 64, 128)).astype(np.float32)
    (ng.nn.functional.embedding(idx, w) * ng.tensor(g)).sum().backward()
    want = np.zeros((65, 128), np.float32)
    np.add.at(want, idx.numpy(), g)
    assert w.grad.numpy().tobytes() == want.tobytes()
