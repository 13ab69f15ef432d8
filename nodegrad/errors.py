"""The exceptions nodegrad raises, so callers can catch each failure by kind.

Each subclasses the builtin a NumPy or PyTorch user would expect (ValueError for shapes,
TypeError for dtypes, RuntimeError for autodiff), so generic handlers keep working.
"""

import operator


class ShapeError(ValueError):
    """Operands whose shapes do not fit the operation (message names the op and the shapes)."""


class DTypeError(TypeError):
    """A dtype the operation cannot take, e.g. mixed float precisions or a float index."""


class DeviceError(RuntimeError):
    """An unknown device, or operands on different devices."""


class BackendUnavailable(DeviceError, ImportError):
    """A device whose array library (CuPy) is not installed."""


class GradError(RuntimeError):
    """Autodiff misuse: non-scalar backward without a gradient, grad of integers, a freed graph."""


class InplaceError(GradError):
    """A value that a pending backward needs was modified in place."""


class AnomalyError(FloatingPointError):
    """NaN or Inf produced while ``detect_anomaly()`` is active."""


class LinAlgError(RuntimeError):
    """A matrix a decomposition or solve cannot take: singular, not positive definite (as
    ``torch.linalg.LinAlgError``, a RuntimeError)."""


class JitError(RuntimeError):
    """A function that ``nodegrad.jit`` cannot capture (Python reading a traced value, ...)."""


def count_arg(op: str, name: str, value, minimum: int = 0) -> int:
    """``value`` as an int of at least ``minimum`` (a size, a count): a TypeError for what is
    not an integer (a float is refused, not truncated), a ValueError below ``minimum``."""
    if isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be an int, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{op}: {name} must be an int, got {value!r}") from None
    if value < minimum:
        need = "positive" if minimum == 1 else "non-negative" if minimum == 0 else \
            f"at least {minimum}"
        raise ValueError(f"{op}: {name} must be {need}, got {value}")
    return value
