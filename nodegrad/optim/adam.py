"""Adam: momentum on the gradient, RMSprop on its scale, both bias-corrected."""

from __future__ import annotations

from collections.abc import Iterable

from .. import _backend as B
from ..tensor import Tensor
from .base import Optimizer, alpha_of, check_betas, check_named, rounded


def update_moments(xp, m, v, g, tmp, b1: float, b2: float) -> None:
    """Adam's moments in place: m += (1 - β₁)(g - m) (PyTorch's lerp), v = β₂ v + (1 - β₂) g²,
    with ``tmp`` as scratch (shared by Adam, NAdam and RAdam: the same bits)."""
    xp.subtract(g, m, out=tmp)
    tmp *= 1 - b1
    m += tmp
    v *= b2
    xp.multiply(g, g, out=tmp)
    tmp *= 1 - b2
    v += tmp


class Adam(Optimizer):
    r"""Adam (Kingma & Ba, 2015), with optional AMSGrad and L2 weight decay.

    With gradient ``g_t`` (negated if ``maximize``; plus ``λ θ_{t-1}`` for ``weight_decay`` λ,
    the L2 form), betas (β₁, β₂) and learning rate η::

        m_t = β₁ m_{t-1} + (1 - β₁) g_t          m̂_t = m_t / (1 - β₁ᵗ)
        v_t = β₂ v_{t-1} + (1 - β₂) g_t²         v̂_t = v_t / (1 - β₂ᵗ)
        v̂_t ← max(v̂_{t-1}, v̂_t)                  (amsgrad, Reddi et al. 2018)
        θ_t = θ_{t-1} - η m̂_t / (√v̂_t + ε)

    One of the lecture notes writes the last line with ``g_t`` in place of ``m̂_t``; that is a
    typo (it would make Adam RMSprop with bias correction). This implements the published
    algorithm of Kingma & Ba, with ε added after the square root as PyTorch does, so its
    trajectory matches ``torch.optim.Adam``. ``decoupled_weight_decay=True`` gives AdamW.
    ``fused`` (see :class:`Optimizer`): None, the default, runs the step as one compiled kernel
    where numba (CPU) or CuPy (CUDA) is there (on the CPU for large models, or once numba is
    imported); unlike PyTorch's CPU default, since it is faster and gives the same bits.
    ``foreach``, ``capturable`` and ``differentiable``: PyTorch's, see :class:`Optimizer`.
    """

    def __init__(self, params: Iterable, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0.0, amsgrad: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False, differentiable: bool = False,
                 fused: bool | None = None, decoupled_weight_decay: bool = False,
                 strict: bool = False, flat: bool = True):
        name = type(self).__name__
        if isinstance(lr, Tensor) and foreach and not capturable:  # PyTorch's refusal
            raise ValueError(f"{name}: lr as a Tensor is not supported for capturable=False and "
                             "foreach=True (pass a float lr, or leave foreach=None)")
        for key, v in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
            check_named(name, key, v)
        betas = check_betas(name, betas, floats=True)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize,
                                      decoupled_weight_decay=decoupled_weight_decay),
                         strict=strict, flat=flat, fused=fused, foreach=foreach,
                         capturable=capturable, differentiable=differentiable)

    def state_init(self, h: dict) -> dict[str, float]:
        init = {"exp_avg": 0.0, "exp_avg_sq": 0.0}
        if h["amsgrad"]:
            init["max_exp_avg_sq"] = 0.0
        return init

    def update(self, xp, p, g, st, h) -> None:
        b1, b2 = h["betas"]
        m, v, tmp, t = st["exp_avg"], st["exp_avg_sq"], st.tmp(0), st.t
        update_moments(xp, m, v, g, tmp, b1, b2)
        if h["amsgrad"]:
            vmax = st["max_exp_avg_sq"]
            xp.maximum(vmax, v, out=vmax)
            v = vmax
        # eta m_hat / (sqrt(v_hat) + eps) = (eta s / (1 - b1^t)) m / (sqrt(v) + eps s),
        # s = sqrt(1 - b2^t): the bias corrections fold into two scalars (one pass fewer)
        s = (1 - b2 ** t) ** 0.5
        xp.sqrt(v, out=tmp)
        tmp += h["eps"] * s
        xp.divide(m, tmp, out=tmp)
        tmp *= h["lr"] * s / (1 - b1 ** t)
        p -= tmp

    def update_half(self, xp, p, g, st, h, decoupled: bool) -> None:
        """PyTorch's step on float16/bfloat16 parameters, op by op as its ``_single_tensor_adam``
        rounds: each in float32, rounded once to the parameters' dtype."""
        (b1, b2), lr, t = h["betas"], h["lr"], st.t
        dt, f32 = p.dtype, B.np.float32
        gr = g.astype(f32)
        if h["maximize"]:
            xp.negative(gr, out=gr)
        wd = h["weight_decay"]
        if wd and decoupled:  # param.mul_(1 - lr * weight_decay)
            p[...] = p.astype(f32) * f32(1 - lr * wd)
        elif wd:  # grad.add(param, alpha=weight_decay)
            gr = rounded(gr + alpha_of(dt, wd) * p.astype(f32), dt)
        m, v = st["exp_avg"], st["exp_avg_sq"]
        # exp_avg.lerp_(grad, 1 - beta1): base + coeff (grad - exp_avg) as one fused
        # multiply-add (float64 holds the float32 product exactly)
        m32, w = m.astype(f32), f32(1 - b1)
        base, coeff = (m32, w) if abs(w) < 0.5 else (gr, w - f32(1))
        m[...] = ((gr - m32).astype(B.np.float64) * coeff + base).astype(f32)
        v2 = rounded(v.astype(f32) * f32(b2), dt)  # exp_avg_sq.mul_(beta2)
        v[...] = v2 + f32(1 - b2) * gr * gr  # .addcmul_(grad, grad, value=1 - beta2)
        if h["amsgrad"]:
            vmax = st["max_exp_avg_sq"]
            xp.maximum(vmax, v, out=vmax)
            v = vmax
        bc2_sqrt = (1 - b2 ** t) ** 0.5
        d = rounded(xp.sqrt(v.astype(f32)), dt)  # (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps)
        d = rounded(d / f32(bc2_sqrt), dt)
        d = rounded(d + f32(h["eps"]), dt)
        step_size = lr / (1 - b1 ** t)  # param.addcdiv_(exp_avg, denom, value=-step_size)
        p[...] = p.astype(f32) + f32(-step_size) * (m.astype(f32) / d)

    def fused_args(self, st, h) -> tuple[str, tuple, tuple, tuple]:
        b1, b2 = h["betas"]
        t, ams = st.t, bool(h["amsgrad"])
        s = (1 - b2 ** t) ** 0.5
        return ("adam", ("exp_avg", "exp_avg_sq", "max_exp_avg_sq" if ams else "exp_avg_sq"),
                (1 - b1, b2, 1 - b2, h["eps"] * s, h["lr"] * s / (1 - b1 ** t)), (ams,))
