"""``torch.nn.utils.convert_parameters``'s import path: parameters to one flat vector and
back (:func:`nodegrad.nn.utils.parameters_to_vector`, ``vector_to_parameters``)."""

from __future__ import annotations

from . import parameters_to_vector, vector_to_parameters

__all__ = ["parameters_to_vector", "vector_to_parameters"]
