"""AdamW: Adam with weight decay applied to the parameters, not added to the gradient."""

from __future__ import annotations

from collections.abc import Iterable

from .adam import Adam


class AdamW(Adam):
    r"""AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay.

    Before the Adam step (see :class:`Adam`, computed from the raw gradient ``g_t``)::

        θ_{t-1} ← (1 - η λ) θ_{t-1}

    With L2 decay (``Adam(weight_decay=λ)``) the term λθ enters ``g_t`` and is then divided by
    √v̂_t, so parameters with large gradients are barely decayed; decoupling shrinks every
    weight by the same factor, which is what "weight decay" means for SGD. ``fused``,
    ``foreach``, ``capturable`` and ``differentiable``: see :class:`Optimizer`.
    """

    def __init__(self, params: Iterable, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None, strict: bool = False,
                 flat: bool = True):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, strict=strict, flat=flat)
