"""``nn.utils.stateless`` as PyTorch users know it: run a module with other tensors in place
of its parameters and buffers (PyTorch deprecates it for ``func.functional_call``)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

from ..module import Module

__all__ = ["functional_call"]


def functional_call(module: Module, parameter_and_buffer_dicts: Mapping | Sequence[Mapping],
                    args=None, kwargs: dict | None = None, *, tie_weights: bool = True,
                    strict: bool = False):
    """``module(*args, **kwargs)`` with the tensors of ``parameter_and_buffer_dicts`` (dotted
    name -> tensor; one dict or several, which must not share names) in place of its own,
    which are restored afterwards. ``args`` that is not a tuple is the one argument. With
    ``strict`` every parameter and buffer must be given. A parametrized tensor given under its
    own name (``"weight"``) is used as it is, its parametrizations not run (as PyTorch); give
    ``"parametrizations.weight.original"`` to run them on another original."""
    warnings.warn("nn.utils.stateless.functional_call is deprecated (as in PyTorch); use "
                  "nodegrad.func.functional_call", FutureWarning, stacklevel=2)
    from ...func.module_state import functional_call as call  # (func imports nn lazily)

    return call(module, parameter_and_buffer_dicts, args, kwargs, tie_weights=tie_weights,
                strict=strict)
