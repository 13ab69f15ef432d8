"""The exceptions nodegrad raises, so callers can catch each failure by kind.

Each subclasses the builtin a NumPy or PyTorch user would expect (ValueError for shapes,
TypeError for dtypes, RuntimeError for autodiff), so generic handlers keep working.
"""


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
