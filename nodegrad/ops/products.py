"""PyTorch's matrix-product family (mm, bmm, addmm, ...), linear-algebra methods, and
numerical calculus and statistics (diff, trapezoid, cov, ...), as functions and Tensor methods.
"""

from __future__ import annotations

__all__: list[str] = []
