"""PyTorch's splitting, slicing-scatter and counting ops (tensor_split, select_scatter,
bincount, histc, ...), as functions and Tensor methods.
"""

from __future__ import annotations

__all__: list[str] = []
