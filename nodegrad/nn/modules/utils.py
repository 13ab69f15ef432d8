"""``torch.nn.modules.utils``: ``_single``, ``_pair``, ``_triple``, ``_quadruple`` and
``_ntuple``, which layers written for PyTorch use to widen a size argument to one per axis."""

from collections.abc import Callable, Iterable
from itertools import repeat


def _ntuple(n: int, name: str = "parse") -> Callable:
    """A function giving a tuple of ``n``: an iterable as a tuple, anything else repeated."""
    def parse(x):
        if isinstance(x, Iterable) and not isinstance(x, str):
            return tuple(x)
        return tuple(repeat(x, n))

    parse.__name__ = name
    return parse


_single = _ntuple(1, "_single")
_pair = _ntuple(2, "_pair")
_triple = _ntuple(3, "_triple")
_quadruple = _ntuple(4, "_quadruple")
