"""Op-matrix cases of :mod:`nodegrad.ops.special` (appended to ``_opcases.CASES``)."""

from __future__ import annotations
