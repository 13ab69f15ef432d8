"""PyTorch's ``torch.special`` namespace: special functions under their SciPy/PyTorch names.

>>> import nodegrad as ng
>>> ng.special.expit(ng.tensor([0.0]))
tensor([0.5])
"""

from __future__ import annotations

from .ops import sigmoid as expit

__all__ = ["expit"]
