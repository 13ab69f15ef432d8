"""What export and import share: the lazy ``onnx`` import and the supported opsets."""

from __future__ import annotations

from ..errors import BackendUnavailable

MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 17, 21, 17


def require_onnx():
    """The ``onnx`` package, or an error naming the extra that installs it."""
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise BackendUnavailable("nodegrad.onnx needs the onnx package: "
                                 "pip install 'nodegrad[onnx]'") from e
    return onnx


class UnsupportedError(NotImplementedError):
    """An operation with no ONNX counterpart here (export) or no nodegrad one (import)."""
