"""PyTorch's other names for existing ops, the in-place ``*_`` forms and tensor metadata.

Imported last by :mod:`nodegrad.ops`, so the in-place forms cover every family's methods.
"""

from __future__ import annotations

__all__: list[str] = []
