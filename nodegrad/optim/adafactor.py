"""Adafactor: Adam-like steps whose second moment of a matrix is stored as row and column means."""

from __future__ import annotations

from collections.abc import Iterable

from .._backend import backend_of, finfo, is_array
from ..errors import GradError, ShapeError
from .base import Optimizer, _describe, as_state_array, lerp_, match_groups


class Adafactor(Optimizer):
    r"""Adafactor (Shazeer & Stern, 2018) as PyTorch defines it (``torch.optim.Adafactor``).

    For a parameter of two or more dimensions the second moment is kept as its row means
    ``R`` (shape ``(..., n, 1)``) and column means ``C`` (``(..., 1, m)``), memory O(n + m)
    instead of O(nm); a vector keeps the full ``V``. With gradient ``G_t`` (negated if
    ``maximize``), β̂₂ = 1 - t^τ (τ = ``beta2_decay``), ε₁ (default: the dtype's eps), ε₂::

        ρ_t = min(lr, 1/√t),   α_t = max(ε₂, RMS(θ_{t-1})) ρ_t
        θ ← (1 - lr λ) θ                                     (decoupled weight decay)
        R_t = β̂₂ R + (1 - β̂₂) mean_cols(G²),  C_t = β̂₂ C + (1 - β̂₂) mean_rows(G²)
        V̂_t = R_t C_t / max(mean(R_t), ε₁)      (vectors: V_t = β̂₂ V + (1 - β̂₂) G²)
        U_t = G_t / max(√V̂_t, ε₁),   Û_t = U_t / max(1, RMS(U_t) / d)
        θ_t = θ - α_t Û_t

    The step is relative to the parameter's own RMS, so ``lr`` (PyTorch's reading) only
    caps ρ_t and scales the weight decay. ``foreach`` is accepted for PyTorch's signature and
    changes nothing. State per parameter (PyTorch's names): ``step``, ``row_var`` and
    ``col_var``, or ``variance``.
    """

    supports_complex = False  # its factored second moment is real, as PyTorch's

    def __init__(self, params: Iterable, lr=1e-2, beta2_decay: float = -0.8,
                 eps: tuple[float | None, float] = (None, 1e-3), d: float = 1.0,
                 weight_decay: float = 0.0, *, foreach: bool | None = None,
                 maximize: bool = False, strict: bool = False):
        if not callable(lr) and not lr >= 0.0:
            raise ValueError(f"Adafactor: invalid lr {lr} (expected >= 0)")
        if not beta2_decay <= 0.0:
            raise ValueError(f"Adafactor: invalid beta2_decay {beta2_decay} (expected <= 0)")
        if not isinstance(eps, tuple | list) or len(eps) != 2:
            raise ValueError(f"Adafactor: invalid eps {eps!r} (expected (eps1 or None, eps2))")
        if eps[0] is not None and not eps[0] >= 0.0:
            raise ValueError(f"Adafactor: invalid eps[0] {eps[0]} (expected None or >= 0)")
        if not eps[1] >= 0.0:
            raise ValueError(f"Adafactor: invalid eps[1] {eps[1]} (expected >= 0)")
        if not d >= 1.0:
            raise ValueError(f"Adafactor: invalid clipping threshold d {d} (expected >= 1)")
        if not weight_decay >= 0.0:
            raise ValueError(f"Adafactor: invalid weight_decay {weight_decay} (expected >= 0)")
        self._fstate: list[list[dict | None]] = []  # per group, per parameter (None: fresh)
        super().__init__(params, dict(lr=lr, beta2_decay=beta2_decay, eps=tuple(eps), d=d,
                                      weight_decay=weight_decay, foreach=foreach,
                                      maximize=maximize), strict=strict, flat=False)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        self._fstate.append([None] * len(self.param_groups[-1]["params"]))

    # --- the step: per tensor, since the state's shapes are not the parameters' ---------------
    def _step(self, grads: list | None) -> None:
        self.step_count += 1
        for gi, group in enumerate(self.param_groups):
            self._sync(gi)
            h = self._hyper(group, self.step_count)
            for k, p in enumerate(group["params"]):
                if grads is not None:
                    g = grads[gi][k]
                else:
                    g = None if p.grad is None else p.grad._data
                if g is None:
                    if self.strict:
                        raise GradError(f"Adafactor.step: {_describe(group, gi, k, p)} has no "
                                        "gradient (was it used in the loss, and did backward "
                                        "run?); strict=False skips such parameters")
                    continue
                if g.shape != p._data.shape:
                    raise ShapeError(f"the gradient of {_describe(group, gi, k, p)} has shape "
                                     f"{g.shape}")
                be = backend_of(p._data)
                with be.scope():
                    self._update_one(be.xp, p._data, g, gi, k, h)
                p._bump()

    def _update_one(self, xp, a, g, gi: int, k: int, h: dict) -> None:
        st = self._fstate[gi][k]
        if st is None:
            shape = a.shape
            if a.ndim > 1:
                st = {"step": 0,
                      "row_var": xp.zeros(shape[:-1] + (1,), a.dtype),
                      "col_var": xp.zeros(shape[:-2] + (1,) + shape[-1:], a.dtype)}
            else:
                st = {"step": 0, "variance": xp.zeros(shape, a.dtype)}
            self._fstate[gi][k] = st
        lr, wd = h["lr"], h["weight_decay"]
        eps1, eps2 = h["eps"]
        if eps1 is None:
            eps1 = float(finfo(a.dtype).eps)
        if h["maximize"]:
            g = -g
        st["step"] += 1
        t = float(st["step"])
        w = t ** h["beta2_decay"]                  # 1 - β̂₂
        rho = min(lr, 1 / t ** 0.5)
        alpha = max(eps2, _norm(xp, a) / a.size ** 0.5) * rho
        if wd != 0:
            a *= 1 - lr * wd
        if g.ndim > 1:
            row, col = st["row_var"], st["col_var"]
            sq = g * g
            # PyTorch's norm(dim).square() / n: the root and its square round like it does
            lerp_(row, xp.sqrt(sq.sum(axis=-1, keepdims=True)) ** 2 / g.shape[-1], w)
            lerp_(col, xp.sqrt(sq.sum(axis=-2, keepdims=True)) ** 2 / g.shape[-2], w)
            u = xp.matmul(row, col)
            u /= xp.maximum(row.mean(axis=-2, keepdims=True), eps1)
        else:
            v = st["variance"]
            lerp_(v, g * g, w)
            u = v.copy()
        xp.maximum(u, eps1 * eps1, out=u)
        xp.sqrt(u, out=u)
        xp.divide(1, u, out=u)
        u *= g
        denom = max(1.0, _norm(xp, u) / (u.size ** 0.5 * h["d"]))
        u *= alpha / denom
        a -= u

    # --- state --------------------------------------------------------------------------------
    @property
    def state(self) -> dict:
        """Per-parameter state, ``{param: {"step": t, "row_var": ..., ...}}`` (live arrays)."""
        return {p: st for g, sts in zip(self.param_groups, self._fstate)
                for p, st in zip(g["params"], sts) if st is not None}

    def _extract(self, gi: int) -> list:
        return [None if st is None else
                {k: (v.copy() if is_array(v) else v) for k, v in st.items()}
                for st in self._fstate[gi]]

    def _install(self, gi: int, entries: list) -> None:
        """Set group ``gi``'s state from per-parameter entries, on each parameter's device and
        in its dtype."""
        ps = self.param_groups[gi]["params"]
        self._fstate[gi] = [None if e is None else
                            {k: (as_state_array(v, p._data) if k != "step" else int(v))
                             for k, v in e.items()} for p, e in zip(ps, entries)]

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a :meth:`state_dict`; a clear error when it does not fit these parameters."""
        saved_groups, state, where = match_groups(self, state_dict)
        entries = [[None] * len(g["params"]) for g in self.param_groups]
        for idx, e in state.items():
            gi, pos = where[idx]
            group = self.param_groups[gi]
            p = group["params"][pos]
            desc = _describe(group, gi, pos, p)
            shape = tuple(p.shape)
            if len(shape) > 1:
                want = {"row_var": shape[:-1] + (1,), "col_var": shape[:-2] + (1,) + shape[-1:]}
            else:
                want = {"variance": shape}
            if set(e) != {"step", *want}:
                raise ValueError(f"Adafactor.load_state_dict: the state of {desc} has keys "
                                 f"{sorted(e)}, expected {sorted({'step', *want})} (was it saved "
                                 "by another optimiser?)")
            for key, s in want.items():
                if tuple(e[key].shape) != s:
                    raise ShapeError(f"Adafactor.load_state_dict: state '{key}' of {desc} has "
                                     f"shape {tuple(e[key].shape)}, expected {s}")
            entries[gi][pos] = e
        self._finish_load(saved_groups, entries, state_dict)


def _norm(xp, a) -> float:
    """The 2-norm of an array of any shape, as a Python float."""
    r = a.reshape(-1)
    return float(xp.sqrt(xp.dot(r, r)))
