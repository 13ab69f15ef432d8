"""Op-matrix cases of :mod:`nodegrad.ops.slicing` (appended to ``_opcases.CASES``)."""

from __future__ import annotations
