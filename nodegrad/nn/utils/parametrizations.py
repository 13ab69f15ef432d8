"""``nn.utils.parametrizations`` as PyTorch users know it: weight normalisation and spectral
normalisation as parametrizations (:mod:`.parametrize`), with PyTorch's names, buffers and
results."""

from __future__ import annotations

import math

from ... import _backend as B
from ... import linalg, ops
from ...autodiff import no_grad
from ...random import randn
from ...tensor import Tensor, eye, tensor
from .. import functional as F
from ..module import Module
from .parametrize import register_parametrization

__all__ = ["weight_norm", "spectral_norm", "orthogonal"]


def _norm_except_dim(v: Tensor, dim: int) -> Tensor:
    """The 2-norm of ``v`` over every axis but ``dim``, keeping the axes (PyTorch's
    ``norm_except_dim``); ``dim`` -1 means the norm of the whole tensor, a 0-d result."""
    if dim == -1:
        return ops.vector_norm(v, 2)
    d = dim + v.ndim if dim < 0 else dim
    axes = tuple(a for a in range(v.ndim) if a != d)
    return ops.vector_norm(v, 2, dim=axes, keepdim=True) if axes else ops.abs(v)


def _check_dim(fn: str, dim: int, weight: Tensor) -> None:
    if dim != -1 and not -weight.ndim <= dim < weight.ndim:
        raise IndexError(f"{fn}: dim {dim} is out of range for a weight of shape "
                         f"{tuple(weight.shape)}")


def _weight_norm(v: Tensor, g: Tensor, dim: int) -> Tensor:
    return v * (g / _norm_except_dim(v, dim))


class _WeightNorm(Module):
    """weight = g · v / ‖v‖ (the norm over every axis but ``dim``), from (g, v)."""

    def __init__(self, dim: int | None = 0):
        super().__init__()
        self.dim = -1 if dim is None else dim

    def forward(self, weight_g: Tensor, weight_v: Tensor) -> Tensor:
        return _weight_norm(weight_v, weight_g, self.dim)

    def right_inverse(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        return _norm_except_dim(weight, self.dim), weight


def weight_norm(module: Module, name: str = "weight", dim: int | None = 0) -> Module:
    """Re-parametrise ``module.<name>`` as g · v / ‖v‖, training magnitude g
    (``parametrizations.<name>.original0``) and direction v (``original1``) apart, as
    PyTorch. The norm is over every axis but ``dim`` (one g per output unit with 0); ``dim``
    None or -1 takes the norm of the whole tensor. A state dict with the older ``<name>_g`` /
    ``<name>_v`` keys still loads."""
    w = module._parameters.get(name, module._buffers.get(name))
    if isinstance(w, Tensor):
        _check_dim("weight_norm", -1 if dim is None else dim, w)
    register_parametrization(module, name, _WeightNorm(dim), unsafe=True)

    def compat(mod, state_dict, prefix, *_):
        g, v = f"{prefix}{name}_g", f"{prefix}{name}_v"
        if g in state_dict and v in state_dict:
            state_dict[f"{prefix}parametrizations.{name}.original0"] = state_dict.pop(g)
            state_dict[f"{prefix}parametrizations.{name}.original1"] = state_dict.pop(v)

    module.register_load_state_dict_pre_hook(compat)
    return module


class _SpectralNorm(Module):
    """weight / σ, σ the largest singular value of the weight as a matrix (axis ``dim`` first,
    the rest flattened), estimated by power iteration with the buffers ``_u`` and ``_v``, which
    each forward in training mode refines by ``n_power_iterations`` steps (PyTorch's)."""

    def __init__(self, weight: Tensor, n_power_iterations: int = 1, dim: int = 0,
                 eps: float = 1e-12):
        super().__init__()
        nd = weight.ndim
        if not -nd <= dim < nd:
            raise IndexError(f"spectral_norm: dim {dim} is out of range for a weight of shape "
                             f"{tuple(weight.shape)}")
        if n_power_iterations <= 0:
            raise ValueError(f"spectral_norm: n_power_iterations must be positive, got "
                             f"{n_power_iterations}")
        self.dim = dim + nd if dim < 0 else dim
        self.eps = eps
        self.n_power_iterations = n_power_iterations
        if nd > 1:
            with no_grad():
                mat = self._matrix(weight)
                h, w = mat.shape
                kw = {"dtype": weight.dtype, "device": weight.device}
                self.register_buffer("_u", F.normalize(randn(h, **kw), dim=0, eps=eps))
                self.register_buffer("_v", F.normalize(randn(w, **kw), dim=0, eps=eps))
            self._power_method(mat, 15)

    def _matrix(self, weight: Tensor) -> Tensor:
        if self.dim:
            weight = ops.moveaxis(weight, self.dim, 0)
        return ops.reshape(weight, (weight.shape[0], -1))

    def _power_method(self, mat: Tensor, n: int) -> None:
        """``n`` steps u ← normalize(W v), v ← normalize(Wᵀ u), written into the buffers."""
        with no_grad():
            mat = mat.detach()
            for _ in range(n):
                for buf, new in (("_u", lambda: mat @ self._v), ("_v", lambda: self._u @ mat)):
                    t = getattr(self, buf)
                    t.copy_(F.normalize(new(), dim=0, eps=self.eps))  # jit replays it too

    def forward(self, weight: Tensor) -> Tensor:
        if weight.ndim == 1:
            return F.normalize(weight, dim=0, eps=self.eps)
        mat = self._matrix(weight)
        if self.training:
            self._power_method(mat, self.n_power_iterations)
        u, v = ops.copy(self._u), ops.copy(self._v)  # later updates must not touch the graph
        return weight / ops.sum(u * (mat @ v))

    def right_inverse(self, value: Tensor) -> Tensor:
        return value


def spectral_norm(module: Module, name: str = "weight", n_power_iterations: int = 1,
                  eps: float = 1e-12, dim: int | None = None) -> Module:
    """Re-parametrise ``module.<name>`` as W / σ(W), σ its spectral norm, as PyTorch: σ comes
    from power iteration whose vectors are the buffers ``parametrizations.<name>.0._u`` and
    ``_v``, refined at each access in training mode and frozen in eval mode. ``dim`` (default
    0, or 1 for transposed convolutions) is the output axis."""
    from ..layers.conv_transpose import ConvTranspose1d, ConvTranspose2d, ConvTranspose3d

    w = getattr(module, name, None)  # an already parametrised tensor too (a stack, as PyTorch)
    if not isinstance(w, Tensor):
        raise ValueError(f"spectral_norm: {type(module).__name__} has no parameter or buffer "
                         f"named {name!r}")
    if dim is None:
        dim = 1 if isinstance(module, ConvTranspose1d | ConvTranspose2d | ConvTranspose3d) else 0
    register_parametrization(module, name, _SpectralNorm(w, n_power_iterations, dim, eps))
    return module


# --- orthogonal ---------------------------------------------------------------------------------
_MAPS = ("matrix_exp", "cayley", "householder")


def _mT(x: Tensor) -> Tensor:
    return ops.swapaxes(x, -1, -2)


def _is_orthogonal(Q: Tensor) -> bool:
    """QᵀQ = I to 10·n·eps, PyTorch's test (absolute tolerance, rtol 1e-5)."""
    n, k = Q.shape[-2], Q.shape[-1]
    eps = 10.0 * n * float(B.finfo(Q.dtype).eps)
    err = (_mT(Q) @ Q - eye(k, dtype=Q.dtype, device=Q.device)).numpy()
    return bool((B.np.abs(err) <= eps + 1e-5 * B.np.eye(k)).all())


def _make_orthogonal(A: Tensor) -> Tensor:
    """The Q of A = QR (A tall) with R's diagonal made non-negative, as PyTorch's."""
    Q, R = linalg.qr(A)
    return Q * ops.expand_dims(ops.sign(ops.diagonal(R, 0, -2, -1)), -2)


def _geqrf(a):
    """LAPACK's geqrf on the host: R above the diagonal and on it, the Householder vectors
    (unit first entry implied) below, and their tau."""
    np = B.np
    a = np.array(a, dtype=a.dtype)
    m, n = a.shape[-2:]
    flat = a.reshape((-1, m, n))
    taus = np.zeros((flat.shape[0], min(m, n)), a.dtype)
    for b, x in enumerate(flat):
        for j in range(min(m, n)):
            alpha, rest = x[j, j], x[j + 1:, j]
            xnorm = np.linalg.norm(rest)
            if xnorm == 0:
                continue  # H = I, tau = 0
            beta = -math.copysign(math.hypot(alpha, xnorm), alpha)
            tau = (beta - alpha) / beta
            v = np.concatenate([[1.0], rest / (alpha - beta)])
            x[j + 1:, j] = v[1:]
            x[j, j] = beta
            x[j:, j + 1:] -= tau * np.outer(v, v @ x[j:, j + 1:])
            taus[b, j] = tau
    return flat.reshape(a.shape), taus.reshape(a.shape[:-2] + (min(m, n),))


class _Orthogonal(Module):
    """An orthogonal matrix (orthonormal columns, or rows when wide) from an unconstrained one
    X, PyTorch's maps: exp(A) or the Cayley transform of the skew-symmetric A = L - Lᵀ (L the
    lower triangle of X, padded square), or the product of the Householder reflectors stored
    below X's diagonal. With ``use_trivialization`` the result is multiplied by the buffer
    ``base``, which ``right_inverse`` sets (so the original starts at -I and training moves
    near the base)."""

    def __init__(self, weight: Tensor, orthogonal_map: str, *,
                 use_trivialization: bool = True):
        super().__init__()
        self.shape = tuple(weight.shape)
        self.orthogonal_map = orthogonal_map
        self.use_trivialization = use_trivialization
        if use_trivialization:
            self.register_buffer("base", None)

    def forward(self, X: Tensor) -> Tensor:
        n, k = X.shape[-2], X.shape[-1]
        transposed = n < k
        if transposed:
            X, n, k = _mT(X), k, n
        if self.orthogonal_map in ("matrix_exp", "cayley"):
            X = ops.tril(X)
            if n != k:
                pad = ((0, 0),) * (X.ndim - 1) + ((0, n - k),)
                X = ops.pad(X, pad)
            A = X - _mT(X)
            if self.orthogonal_map == "matrix_exp":
                Q = linalg.matrix_exp(A)
            else:
                Id = eye(n, dtype=A.dtype, device=A.device)
                Q = linalg.solve(Id - A * 0.5, Id + A * 0.5)
            if n != k:
                Q = Q[..., :k]
        else:
            A = ops.tril(X, -1)
            tau = 2.0 / (1.0 + ops.sum(A * A, axis=-2))
            Q = linalg.householder_product(A, tau)
            signs = ops.astype(ops.astype(ops.diagonal(X, 0, -2, -1), "int32"), X.dtype)
            Q = Q * ops.expand_dims(signs, -2)
        if self.use_trivialization:
            Q = self.base @ Q
        return _mT(Q) if transposed else Q

    def right_inverse(self, Q: Tensor) -> Tensor:
        """The original that gives ``Q``: -I with ``base`` = Q orthogonalised (completed to
        a square one with Gaussian columns when Q is not square), or without trivialization
        (householder only) Q's Householder vectors with its R's signs on the diagonal."""
        if tuple(Q.shape) != self.shape:
            raise ValueError(f"orthogonal: expected a matrix or batch of matrices of shape "
                             f"{self.shape}, got {tuple(Q.shape)}")
        with no_grad():
            Q_init = Q
            n, k = Q.shape[-2], Q.shape[-1]
            transpose = n < k
            if transpose:
                Q, n, k = _mT(Q), k, n
            if not self.use_trivialization:
                if self.orthogonal_map != "householder":
                    raise NotImplementedError(
                        "orthogonal: it is not possible to assign to the matrix exponential or "
                        "the Cayley parametrizations when use_trivialization=False")
                a, tau = _geqrf(Q.numpy())
                d = B.np.arange(min(n, k))
                diag = B.np.sign(a[..., d, d])
                a[..., d, d] = B.np.where(tau == 0.0, -diag, diag)
                A = tensor(a, device=Q.device)
                return _mT(A) if transpose else A
            if n == k:
                Q = ops.copy(Q) if _is_orthogonal(Q) else _make_orthogonal(Q)
            else:
                N = randn(*(tuple(Q.shape[:-2]) + (n, n - k)), dtype=Q.dtype, device=Q.device)
                Q = _make_orthogonal(ops.concatenate([Q, N], axis=-1))
            self.base = Q.detach()
            m = min(Q_init.shape[-2:])
            neg = ops.pad(-eye(m, dtype=Q.dtype, device=Q.device),
                          ((0, Q_init.shape[-2] - m), (0, Q_init.shape[-1] - m)))
            return ops.copy(ops.broadcast_to(neg, tuple(Q_init.shape)))


def orthogonal(module: Module, name: str = "weight", orthogonal_map: str | None = None, *,
               use_trivialization: bool = True) -> Module:
    """Keep ``module.<name>`` (a matrix or a batch of them) orthogonal while training, as
    PyTorch: ``orthogonal_map`` "matrix_exp" or "cayley" of a skew-symmetric matrix, or
    "householder" reflectors (default: matrix_exp for square weights, householder otherwise).
    With ``use_trivialization`` (default) the weight is ``base @ map(original)``, the buffer
    ``base`` starting at the weight made orthogonal (by QR unless it already is)."""
    weight = getattr(module, name, None)
    if not isinstance(weight, Tensor):
        raise ValueError(f"orthogonal: {type(module).__name__} has no parameter or buffer "
                         f"named {name!r}")
    if weight.ndim < 2:
        raise ValueError(f"orthogonal: expected a matrix or batch of matrices, got a tensor of "
                         f"{weight.ndim} dimensions")
    if orthogonal_map is None:
        orthogonal_map = "matrix_exp" if weight.shape[-2] == weight.shape[-1] else "householder"
    if orthogonal_map not in _MAPS:
        raise ValueError(f'orthogonal: orthogonal_map has to be one of "matrix_exp", "cayley", '
                         f'"householder", got {orthogonal_map!r}')
    orth = _Orthogonal(weight, orthogonal_map, use_trivialization=use_trivialization)
    register_parametrization(module, name, orth, unsafe=True)
    return module
