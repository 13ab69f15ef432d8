"""How sparse a model is: per parameter and in total, from its masks (and its exact zeros)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import _backend as B
from ..nn import Module
from .mask import SUFFIX, _check_module, masked_parameters

np = B.np


@dataclass
class SparsityReport:
    """One row per parameter (``name, shape, numel, pruned, zeros, sparsity``) and totals.

    ``pruned`` counts mask zeros, ``zeros`` exact zeros of the weight (equal to ``pruned`` for a
    masked parameter unless a kept weight happens to be exactly 0). ``sparsity`` is over all
    parameters; ``masked_sparsity`` and ``fraction_remaining`` only over masked ones.
    """

    rows: list[dict] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(r["numel"] for r in self.rows)

    @property
    def pruned(self) -> int:
        return sum(r["pruned"] for r in self.rows)

    @property
    def sparsity(self) -> float:
        return self.pruned / max(self.total, 1)

    @property
    def masked_total(self) -> int:
        return sum(r["numel"] for r in self.rows if r["masked"])

    @property
    def masked_sparsity(self) -> float:
        return self.pruned / max(self.masked_total, 1)

    @property
    def fraction_remaining(self) -> float:
        """Kept fraction of the masked parameters (1.0 when nothing is masked)."""
        return 1.0 - self.masked_sparsity if self.masked_total else 1.0

    def __getitem__(self, name: str) -> dict:
        for r in self.rows:
            if r["name"] == name:
                return r
        raise KeyError(f"SparsityReport: no parameter {name!r}")

    def to_dict(self) -> dict:
        return {"rows": [dict(r, shape=list(r["shape"])) for r in self.rows],
                "total": self.total, "pruned": self.pruned, "sparsity": self.sparsity,
                "masked_sparsity": self.masked_sparsity}

    def __str__(self) -> str:
        w = max([len(r["name"]) for r in self.rows] + [9])
        lines = [f"{'parameter':<{w}}  {'shape':<14}{'numel':>9}{'pruned':>9}{'sparsity':>10}"]
        for r in self.rows:
            shape = "x".join(map(str, r["shape"])) or "()"
            flag = "" if r["masked"] else "  (no mask)"
            lines.append(f"{r['name']:<{w}}  {shape:<14}{r['numel']:>9}{r['pruned']:>9}"
                         f"{100 * r['sparsity']:>9.1f}%{flag}")
        lines.append(f"{'total':<{w}}  {'':<14}{self.total:>9}{self.pruned:>9}"
                     f"{100 * self.sparsity:>9.1f}%")
        if self.masked_total:
            lines.append(f"masked parameters: {100 * self.masked_sparsity:.1f}% pruned, "
                         f"{100 * self.fraction_remaining:.1f}% remaining")
        return "\n".join(lines)

    __repr__ = __str__


def sparsity(model: Module) -> SparsityReport:
    """A :class:`SparsityReport` of ``model``: what its masks prune, parameter by parameter."""
    _check_module(model, "sparsity")
    owners = {full: (m, n) for full, m, n in masked_parameters(model)}
    rows = []
    for name, p in model.named_parameters():
        a = p.numpy()
        zeros = int(a.size - np.count_nonzero(a))
        if name in owners:
            m, n = owners[name]
            mk = m._buffers[n + SUFFIX].numpy()
            pruned = int(mk.size - np.count_nonzero(mk))
        else:
            pruned = 0
        rows.append({"name": name, "shape": tuple(p.shape), "numel": int(a.size),
                     "pruned": pruned, "zeros": zeros, "masked": name in owners,
                     "sparsity": pruned / max(int(a.size), 1)})
    return SparsityReport(rows)
