"""PyTorch's ``torch.signal``: window functions for spectral analysis in
:mod:`nodegrad.signal.windows` (``ng.signal.windows.hann(10)``).

Imported as ``nodegrad.signal``, it does not hide the standard library's ``signal`` module:
only ``import signal`` at the top level names that, and it stays the standard library's."""

from . import windows

__all__ = ["windows"]
