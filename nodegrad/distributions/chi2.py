"""The chi-squared distribution: Gamma(df / 2, 1 / 2)."""

from __future__ import annotations

from nodegrad.tensor import Tensor

from . import constraints
from .distribution import _shape, broadcast_all
from .gamma import Gamma


class Chi2(Gamma):
    """Chi-squared with ``df`` degrees of freedom; reparameterised samples (through Gamma's
    implicit gradient)."""

    arg_constraints = {"df": constraints.positive}

    def __init__(self, df: Tensor | float, validate_args: bool | None = None):
        (df,) = broadcast_all(df)
        super().__init__(0.5 * df, 0.5, validate_args=validate_args)

    @property
    def df(self) -> Tensor:
        return self.concentration * 2

    def expand(self, batch_shape, _instance=None) -> Chi2:
        batch_shape = _shape(batch_shape)
        new = type(self).__new__(type(self)) if _instance is None else _instance
        new.__dict__.update(self.__dict__)
        new.concentration = self.concentration.expand(*batch_shape)
        new.rate = self.rate.expand(*batch_shape)
        new._batch_shape = batch_shape
        return new
