"""Pruning: masks that keep weights exactly zero through training, magnitude pruning (per layer
or global), a sparsity report, and lottery tickets by iterative magnitude pruning with rewinding.

>>> import nodegrad as ng
>>> from nodegrad import nn, prune
>>> layer = nn.Linear(4, 3)
>>> _ = prune.l1_unstructured(layer, "weight", amount=0.5)   # the 6 smallest |w| of 12
>>> int((layer.weight.numpy() == 0).sum()), sorted(layer.state_dict())
(6, ['bias', 'weight', 'weight_mask'])
>>> opt = ng.optim.AdamW(layer.parameters(), lr=0.1)
>>> for _ in range(5):
...     opt.zero_grad(); (layer(ng.randn(8, 4)) ** 2).sum().backward(); opt.step()
>>> int((layer.weight.numpy() == 0).sum())
6

See ``docs/prune.md`` for the design (why the zeros survive every optimiser) and the MNIST-1D
lottery-ticket experiment.
"""

from .lottery import (IMPResult, IMPRound, RoundContext, expected_fractions,
                      iterative_magnitude_pruning, rewind, snapshot)
from .magnitude import global_magnitude, l1_unstructured, random_unstructured
from .mask import (apply_mask, apply_masks, get_masks, identity, is_pruned, mask_optimizer_state,
                   masked_parameters, prunable_weights, remove, restore_masks)
from .report import SparsityReport, sparsity

__all__ = ["IMPResult", "IMPRound", "RoundContext", "SparsityReport", "apply_mask", "apply_masks",
           "expected_fractions", "get_masks", "global_magnitude", "identity", "is_pruned",
           "iterative_magnitude_pruning", "l1_unstructured", "mask_optimizer_state",
           "masked_parameters", "prunable_weights", "random_unstructured", "remove",
           "restore_masks", "rewind", "snapshot", "sparsity"]
