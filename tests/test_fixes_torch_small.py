"""PyTorch semantics in small places: operands refused by name (never cast silently), chunk of
an empty axis, detect_anomaly's signature."""

import re

import numpy as np
import pytest

import nodegrad as ng


def test_a_complex_python_number_makes_a_real_tensor_complex_as_pytorch():
    z = ng.ones(2) + 1j
    assert z.dtype == np.complex64
    np.testing.assert_array_equal(z.numpy(), np.array([1 + 1j, 1 + 1j], np.complex64))


def test_a_complex_array_with_a_real_tensor_is_never_cast_to_real():
    """NumPy's cast of complex to float dropped the imaginary part (only a ComplexWarning):
    a complex operand makes the result complex, as in PyTorch."""
    z = ng.add(ng.ones(2), np.ones(2, complex))
    assert z.dtype == np.complex128
    np.testing.assert_array_equal(z.numpy(), np.full(2, 2 + 0j))
    z = ng.ones(2) * ng.tensor(np.ones(2, np.complex64))
    assert z.dtype == np.complex64


def test_complex_tensors_are_still_stored_and_computed_among_themselves():
    z = ng.tensor(np.array([1 + 2j, 3j], np.complex64))
    np.testing.assert_array_equal((z * 2).numpy(), np.array([2 + 4j, 6j], np.complex64))


@pytest.mark.parametrize("a", [np.array(["a", "b"]), np.array([1, None], dtype=object),
                               np.array(["2020-01-01"], dtype="datetime64[D]"),
                               np.array([b"x"])])
def test_arrays_of_non_numbers_make_no_tensor(a):
    """PyTorch refuses them; a string tensor only failed later, in an op."""
    with pytest.raises(ng.DTypeError, match=re.escape(
            f"tensor: cannot make a tensor from an array of dtype {a.dtype}")):
        ng.tensor(a)


def test_chunk_of_an_empty_axis_gives_empty_pieces():
    """PyTorch returns ``chunks`` empty pieces; a split size of 0 was refused."""
    parts = ng.chunk(ng.zeros(0, 3), 2)
    assert [p.shape for p in parts] == [(0, 3), (0, 3)]
    assert [p.shape for p in ng.zeros(3, 0).chunk(2, dim=1)] == [(3, 0), (3, 0)]
    with pytest.raises(ValueError, match="chunk: chunks must be a positive int, got 0"):
        ng.chunk(ng.zeros(4), 0)


def test_detect_anomaly_takes_pytorchs_check_nan_positionally():
    """PyTorch's detect_anomaly(check_nan=True): a positional False keeps the mode on without
    the NaN checks (it switched the mode off)."""
    with ng.autograd.detect_anomaly(False):
        assert ng.is_anomaly_enabled() and not ng.is_anomaly_check_nan_enabled()
    assert not ng.is_anomaly_enabled()
