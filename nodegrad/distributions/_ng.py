"""The nodegrad names the distributions use, imported from the modules that define them (not
from the ``nodegrad`` package, which imports this one: no import circle)."""

from __future__ import annotations

from .. import linalg, nn  # noqa: F401
from ..autodiff import no_grad  # noqa: F401
from ..dtypes import finfo  # noqa: F401
from ..ops import *  # noqa: F403
from ..random import bernoulli, multinomial, rand, randn  # noqa: F401
from ..tensor import (arange, bool_, eye, float32, float64, full, full_like, int64,  # noqa: F401
                      ones, ones_like, tensor, zeros, zeros_like)
from ..func.grad import grad as func_grad  # noqa: F401
