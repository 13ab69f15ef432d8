"""Special functions and integer arithmetic (lgamma, digamma, erfinv, gcd, ...), as functions
and Tensor methods.
"""

from __future__ import annotations

__all__: list[str] = []
