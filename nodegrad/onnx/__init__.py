"""ONNX both ways: :func:`export` a module's forward for deployment (onnxruntime and friends),
:func:`load` an ONNX model as a trainable module (to fine-tune networks trained elsewhere).

Needs the ``onnx`` package (``pip install 'nodegrad[onnx]'``), imported when first used.
"""

from ._common import UnsupportedError
from .export import export
from .load import OnnxModule, load

__all__ = ["OnnxModule", "UnsupportedError", "export", "load"]
