"""Op-matrix cases of :mod:`nodegrad.ops.products` (appended to ``_opcases.CASES``)."""

from __future__ import annotations
