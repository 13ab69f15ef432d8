"""The nodegrad names the distributions use, imported from the modules that define them (not
from the ``nodegrad`` package, which imports this one: no import circle)."""

from __future__ import annotations

from .. import linalg, nn  # noqa: F401
from ..autodiff import no_grad  # noqa: F401
from ..dtypes import finfo  # noqa: F401
from ..ops import *  # noqa: F403
from ..random import bernoulli, multinomial, rand, randn  # noqa: F401
from ..tensor import (arange, eye, float32, float64, full, int64, tensor, zeros,  # noqa: F401
                      zeros_like)
