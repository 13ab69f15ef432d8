"""The LKJ distribution over Cholesky factors of correlation matrices (Lewandowski, Kurowicka
and Joe, 2009), sampled by their onion method."""

from __future__ import annotations

import math
import numbers

from nodegrad.tensor import Tensor

from . import _ng as ng
from . import constraints
from .beta import Beta
from .distribution import Distribution, _shape, broadcast_all


class LKJCholesky(Distribution):
    """LKJ over lower Cholesky factors L of ``dim`` x ``dim`` correlation matrices: the density
    of M = L Lᵀ is proportional to det(M) ** (concentration - 1), so ``concentration`` 1 is
    uniform over correlation matrices and larger values favour the identity.

    Samples are drawn by the onion method (vectorised over the rows, as PyTorch and NumPyro
    do): row i is sqrt(y_i) times a uniform direction in its first i coordinates, with
    y_i ~ Beta, and the diagonal entry completes it to unit norm. Not reparameterised."""

    arg_constraints = {"concentration": constraints.positive}
    support = constraints.corr_cholesky

    def __init__(self, dim: int, concentration: Tensor | float = 1.0,
                 validate_args: bool | None = None):
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 2:
            raise ValueError(f"LKJCholesky: dim must be an integer greater than or equal to 2, "
                             f"got dim={dim!r}")
        self.dim = int(dim)
        (self.concentration,) = broadcast_all(concentration)
        super().__init__(tuple(self.concentration.shape), (self.dim, self.dim),
                         validate_args=validate_args)
        self._beta = self._make_beta(self.concentration)

    def _make_beta(self, concentration: Tensor) -> Beta:
        """The Beta laws of the squared off-diagonal norms y_i of rows 0..dim-1 (the onion
        method, Sec. 3.2 of Lewandowski et al.; row 0's draw is unused): Beta(i/2,
        c + (dim - 1 - i)/2) for row i >= 1, over ``batch_shape + (dim,)``.

        PyTorch's first parameter is i - 1/2 instead of i/2 (it halves the offset in the
        second parameter only), which agrees for dim 2 but for rows i >= 2 draws from a law
        other than the one ``log_prob`` describes; this follows the paper (and NumPyro)."""
        c = concentration
        half = 0.5 * ng.arange(self.dim - 1, dtype=c.dtype, device=c.device)
        offset = ng.concatenate([ng.zeros(1, dtype=c.dtype, device=c.device), half])
        marginal = c + 0.5 * (self.dim - 2)
        conc1 = (offset + 0.5).expand(*(tuple(c.shape) + (self.dim,)))
        conc0 = marginal[..., None] - offset
        return Beta(conc1, conc0, validate_args=False)

    def expand(self, batch_shape, _instance=None) -> LKJCholesky:
        new = super().expand(batch_shape, _instance)
        new._beta = self._beta.expand(_shape(batch_shape) + (self.dim,))
        return new

    def sample(self, sample_shape=(), *, generator=None) -> Tensor:
        shape = self._extended_shape(_shape(sample_shape))
        with ng.no_grad():
            y = self._beta.sample(sample_shape, generator=generator)[..., None]
            c = self.concentration
            u = ng.tril(ng.randn(shape, dtype=c.dtype, device=c.device, generator=generator),
                        -1)
            norm = ng.linalg.norm(u, dim=-1, keepdim=True)
            row = ng.arange(self.dim, device=c.device)[:, None]
            # row 0 has no off-diagonal entries: a zero direction, not 0 / 0
            u = ng.where(row > 0, u / ng.where(row > 0, norm, 1.0), 0.0)
            w = ng.sqrt(y) * u
            tiny = float(ng.finfo(w.dtype).tiny)
            diag = ng.sqrt(ng.clamp(1 - ng.sum(w * w, -1), min=tiny))
            return w + ng.diag_embed(diag)

    def log_prob(self, value: Tensor) -> Tensor:
        """log density of L: prod_i L_ii ** (2 (c - 1) + dim - i) over rows i = 2..dim (one
        based; the power dim - i is the Jacobian of L -> L Lᵀ), with the LKJ normaliser."""
        if self._validate_args:
            self._validate_sample(value)
        c = self.concentration
        log_diag = ng.log(ng.diagonal(value, 0, -2, -1)[..., 1:])
        jacobian_power = self.dim - ng.arange(2, self.dim + 1, dtype=log_diag.dtype,
                                              device=log_diag.device)
        unnormalized = (ng.sum(jacobian_power * log_diag, -1)
                        + 2 * (c - 1) * ng.sum(log_diag, -1))
        dm1 = self.dim - 1
        alpha = c + 0.5 * dm1
        # the normaliser of LKJ's paper (p. 1999) in terms of mvlgamma, whose pi constant
        # (dm1 (dm1 - 1) / 4 log pi) falls short of the paper's by dm1 / 2 log pi
        normalizer = (0.5 * dm1 * math.log(math.pi) + ng.mvlgamma(alpha - 0.5, dm1)
                      - dm1 * ng.lgamma(alpha))
        return unnormalized - normalizer
