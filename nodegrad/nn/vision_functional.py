"""Spatial sampling and its layers' functions: affine_grid, grid_sample, ...
"""

from __future__ import annotations

__all__: list[str] = []
