"""PyTorch's ``torch.quasirandom``: :class:`SobolEngine`, low-discrepancy points in [0, 1)^d.

The unscrambled sequence is Sobol's with Joe and Kuo's direction numbers and 30 bits, the
sequence PyTorch draws: the points are identical, element for element. Scrambling (Owen-type
linear matrix scrambling plus a digital shift, as PyTorch's) keeps the sequence's balance
properties, but the random scramble comes from NumPy's generator, so a scrambled stream for a
given ``seed`` differs from PyTorch's for the same seed.
"""

from __future__ import annotations

import operator
import warnings

from . import _backend as B
from .dtypes import get_default_dtype
from .errors import DTypeError, count_arg
from .tensor import Tensor, get_default_device
from .tensor import tensor as _tensor

__all__ = ["SobolEngine"]


def _count(op: str, n, name: str) -> int:
    return count_arg(f"SobolEngine.{op}", name, n, 0)


class SobolEngine:
    """Draws from a (scrambled) Sobol sequence of ``dimension`` coordinates, as PyTorch's:
    ``draw(n)`` gives the next n points as an (n, dimension) tensor, ``draw_base2(m)`` the
    next 2**m (keeping the total a power of two), ``fast_forward(n)`` skips n, ``reset()``
    starts over (with the same scramble). ``seed`` fixes the scramble; None draws one."""

    MAXBIT = 30
    MAXDIM = 21201

    def __init__(self, dimension: int, scramble: bool = False, seed: int | None = None) -> None:
        try:
            dimension = operator.index(dimension)
        except TypeError:
            raise TypeError(f"SobolEngine: dimension must be an int, got {dimension!r}") from None
        if not 1 <= dimension <= self.MAXDIM:
            raise ValueError(f"Supported range of dimensionality for SobolEngine is "
                             f"[1, {self.MAXDIM}], got {dimension}")
        if seed is not None:
            seed = operator.index(seed)
        self.dimension, self.scramble, self.seed = dimension, bool(scramble), seed
        self._engine = B.sobol(dimension, self.scramble, seed)
        self.num_generated = 0

    def draw(self, n: int = 1, out: Tensor | None = None, dtype=None) -> Tensor:
        """The next ``n`` points, (n, dimension), in ``dtype`` (default: the default float
        dtype); into ``out`` (resized) when given."""
        n = _count("draw", n, "n")
        dt = B.as_dtype(dtype) if dtype is not None else B.as_dtype(get_default_dtype())
        if dt.kind != "f":
            raise DTypeError(f"SobolEngine.draw: dtype must be a floating dtype, got {dt}"
                             + (" (bfloat16 is not supported, as in PyTorch)"
                                if dt == B.bfloat16 else ""))
        with warnings.catch_warnings():  # a count that is no power of two is allowed, as torch
            warnings.simplefilter("ignore", UserWarning)
            pts = self._engine.random(n)
        self.num_generated += n
        device = out.device if out is not None else get_default_device()
        result = _tensor(pts.astype(dt), device=device)
        if out is None:
            return result
        if not isinstance(out, Tensor):
            raise TypeError(f"SobolEngine.draw: out must be a Tensor, got {type(out).__name__}")
        out.resize_(result.shape)
        out.copy_(result.astype(out.dtype))
        return out

    def draw_base2(self, m: int, out: Tensor | None = None, dtype=None) -> Tensor:
        """The next 2**m points; the total drawn must stay a power of two (Sobol's balance
        properties hold only for such blocks)."""
        m = _count("draw_base2", m, "m")
        n = 2 ** m
        total = self.num_generated + n
        if total & (total - 1):
            raise ValueError(f"The balance properties of Sobol' points require n to be a power "
                             f"of 2. {self.num_generated} points have been previously generated, "
                             f"then: n={self.num_generated}+2**{m}={total}. If you still want "
                             f"to do this, please use 'SobolEngine.draw()' instead.")
        return self.draw(n, out=out, dtype=dtype)

    def reset(self) -> SobolEngine:
        """Start the sequence over (the scramble stays the same)."""
        self._engine.reset()
        self.num_generated = 0
        return self

    def fast_forward(self, n: int) -> SobolEngine:
        """Skip the next ``n`` points."""
        n = _count("fast_forward", n, "n")
        self._engine.fast_forward(n)
        self.num_generated += n
        return self

    def __repr__(self) -> str:
        parts = [f"dimension={self.dimension}"]
        if self.scramble:
            parts.append("scramble=True")
        if self.seed is not None:
            parts.append(f"seed={self.seed}")
        return f"{type(self).__name__}({', '.join(parts)})"
