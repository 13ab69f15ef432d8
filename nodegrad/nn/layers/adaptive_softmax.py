"""The adaptive softmax (Grave et al.): a shortlist of frequent classes in the head, rarer
ones in smaller clusters, for outputs over very many classes (PyTorch's
``AdaptiveLogSoftmaxWithLoss``)."""

from __future__ import annotations

from collections import namedtuple

from ... import ops
from ...autodiff import computes_with_values
from ...batching import values
from ...errors import DTypeError, ShapeError
from ...tensor import Tensor
from .. import functional as F
from ..module import Module
from .container import ModuleList, Sequential
from .linear import Linear

_ASMoutput = namedtuple("_ASMoutput", ["output", "loss"])


class AdaptiveLogSoftmaxWithLoss(Module):
    """Grave et al.'s adaptive softmax for many classes: a head over the ``cutoffs[0]`` most
    frequent classes plus one logit per tail cluster, each cluster a low-rank projection
    (in_features // div_value**(i+1) wide) and its own softmax. ``forward(input, target)``
    returns (output, loss): each target's log-probability and the mean negative of it."""

    def __init__(self, in_features: int, n_classes: int, cutoffs, div_value: float = 4.0,
                 head_bias: bool = False, device=None, dtype=None):
        super().__init__()
        cutoffs = list(cutoffs)
        if len(cutoffs) == 0:
            raise ValueError("AdaptiveLogSoftmaxWithLoss: cutoffs should be a sequence of "
                             "length larger than 0")
        if (cutoffs != sorted(cutoffs) or min(cutoffs) <= 0 or max(cutoffs) > n_classes - 1
                or len(set(cutoffs)) != len(cutoffs) or any(int(c) != c for c in cutoffs)):
            raise ValueError("AdaptiveLogSoftmaxWithLoss: cutoffs should be a sequence of "
                             "unique, positive integers sorted in an increasing order, where "
                             f"each value is between 1 and n_classes-1, got {cutoffs}")
        self.in_features, self.n_classes = in_features, n_classes
        self.cutoffs = cutoffs + [n_classes]
        self.div_value, self.head_bias = div_value, head_bias
        self.shortlist_size = self.cutoffs[0]
        self.n_clusters = len(self.cutoffs) - 1
        self.head_size = self.shortlist_size + self.n_clusters
        kw = {"device": device, "dtype": dtype}
        self.head = Linear(in_features, self.head_size, bias=head_bias, **kw)
        self.tail = ModuleList()
        for i in range(self.n_clusters):
            hsz = int(in_features // (div_value ** (i + 1)))
            osz = self.cutoffs[i + 1] - self.cutoffs[i]
            self.tail.append(Sequential(Linear(in_features, hsz, bias=False, **kw),
                                        Linear(hsz, osz, bias=False, **kw)))

    def reset_parameters(self) -> None:
        self.head.reset_parameters()
        for i2h, h2o in self.tail:
            i2h.reset_parameters()
            h2o.reset_parameters()

    def forward(self, input: Tensor, target: Tensor) -> _ASMoutput:
        name = type(self).__name__
        if target.dtype.kind not in "iu":
            raise DTypeError(f"{name}: target must hold integer classes, got {target.dtype}")
        if target.ndim > 1 or input.ndim != target.ndim + 1 or (
                target.ndim == 1 and input.shape[0] != target.shape[0]):
            raise ShapeError(f"{name}: expected input (N, in_features) with target (N,), or "
                             f"(in_features,) with a 0-d target, got {tuple(input.shape)} and "
                             f"{tuple(target.shape)}")
        batched = target.ndim == 1
        x = input if batched else ops.expand_dims(input, 0)
        t = target if batched else ops.expand_dims(target, 0)
        computes_with_values(t, f"{name}: routing rows to clusters")  # under jit: eager
        tv = x.backend.to_host(values(t))
        if tv.size and (tv.min() < 0 or tv.max() >= self.n_classes):
            raise IndexError(f"{name}: target values should be in [0, {self.n_classes - 1}], "
                             f"but values in range [{tv.min()}, {tv.max()}] were found")
        xp = x.backend.xp
        output = Tensor._of(xp.zeros(tv.shape[0], dtype=x.dtype))
        gather = tv.copy()
        for i in range(1, self.n_clusters + 1):
            lo, hi = self.cutoffs[i - 1], self.cutoffs[i]
            rows = ((tv >= lo) & (tv < hi)).nonzero()[0]
            if rows.size == 0:
                continue
            r = Tensor._of(xp.asarray(rows))
            logp = F.log_softmax(self.tail[i - 1](x[r]), 1)
            rel = Tensor._of(xp.asarray(tv[rows] - lo)[:, None])
            local = ops.squeeze(ops.take_along_axis(logp, rel, 1), 1)
            output = ops.index_add(output, 0, r, local)
            gather[rows] = self.shortlist_size + i - 1
        head = F.log_softmax(self.head(x), 1)
        g = Tensor._of(xp.asarray(gather)[:, None])
        output = output + ops.squeeze(ops.take_along_axis(head, g, 1), 1)
        loss = ops.mean(-output)
        return _ASMoutput(output if batched else output[0], loss)

    def _full_log_prob(self, x: Tensor, head_output: Tensor) -> Tensor:
        head = F.log_softmax(head_output, 1)
        parts = [head[:, :self.shortlist_size]]
        for i in range(self.n_clusters):
            k = self.shortlist_size + i
            parts.append(F.log_softmax(self.tail[i](x), 1) + head[:, k:k + 1])
        return ops.concatenate(parts, axis=1)

    def _check_batch(self, x: Tensor, op: str) -> None:
        if not isinstance(x, Tensor) or x.ndim != 2:
            raise ShapeError(f"{type(self).__name__}.{op}: expected input (N, in_features), got "
                             f"{getattr(x, 'shape', type(x).__name__)}")

    def log_prob(self, input: Tensor) -> Tensor:
        """Log-probabilities of all ``n_classes`` classes: (N, in_features) -> (N, n_classes)."""
        self._check_batch(input, "log_prob")
        return self._full_log_prob(input, self.head(input))

    def predict(self, input: Tensor) -> Tensor:
        """The most probable class of each row, log_prob(input).argmax(1), computing the tail
        clusters only for rows whose best head entry is a cluster."""
        self._check_batch(input, "predict")
        head = self.head(input)
        best = ops.argmax(head, axis=1)
        computes_with_values(best, f"{type(self).__name__}.predict: routing rows to clusters")
        xp = input.backend.xp
        out = xp.array(values(best))
        rows = (out >= self.shortlist_size).nonzero()[0]
        if rows.size:
            r = Tensor._of(rows)
            full = self._full_log_prob(input[r], head[r])
            out[rows] = values(ops.argmax(full, axis=1))
        return Tensor._of(out)
