"""L-BFGS: a quasi-Newton method that builds its curvature model from the last few steps."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from .. import _backend as B
from .._backend import backend_of, is_array
from ..autodiff import creation_site, enable_grad, modes, no_grad
from ..errors import JitError
from ..tensor import Tensor
from .base import (_NOT_HYPER, Optimizer, as_state_array, match_groups, post_step_masks,
                   real_dtype)


class _Step(float):
    """A step length that PyTorch's L-BFGS holds as a 0-d tensor (one computed from tensors).

    It matters in one place: PyTorch divides a Python number by a tensor as the reciprocal
    times the number, which rounds differently from a division, and the cubic fit's
    ``3 (f1 - f2) / (x1 - x2)`` cancels enough to turn that last bit into a different step.
    Tracking which steps are tensors there keeps the line search's steps PyTorch's, bit for bit.
    """


def _step_if(v: float, *like) -> float:
    """``v`` marked as a tensor step when any of ``like`` is one (as PyTorch's result would be)."""
    return _Step(v) if any(isinstance(x, _Step) for x in like) else float(v)


def _cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None) -> float:
    """The minimiser of the cubic through (x1, f1, g1) and (x2, f2, g2), clamped to ``bounds``
    (default: [x1, x2]); their midpoint when the cubic has no minimum."""
    if bounds is not None:
        lo, hi = bounds
    else:
        lo, hi = (x1, x2) if x1 <= x2 else (x2, x1)
    dx, df3 = x1 - x2, 3 * (f1 - f2)
    slope = (1.0 / dx) * df3 if isinstance(x1, _Step) or isinstance(x2, _Step) else df3 / dx
    d1 = g1 + g2 - slope
    d2_square = d1 ** 2 - g1 * g2
    if d2_square >= 0:
        d2 = math.sqrt(d2_square)
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return min(max(_Step(min_pos), lo), hi)  # Python's min/max: which object wins matters
    return _step_if((lo + hi) / 2.0, lo, hi)


def _strong_wolfe(xp, obj_func, x, t, d, f, g, gtd, c1=1e-4, c2=0.9, tolerance_change=1e-9,
                  max_ls=25):
    """A step ``t`` along ``d`` meeting the strong Wolfe conditions: bracketing, then zooming
    with cubic interpolation (minFunc's ``WolfeLineSearch``, as PyTorch ports it). Returns
    (loss, flat gradient, t, evaluations)."""
    d_norm = float(xp.abs(d).max())
    g = g.copy()
    f_new, g_new = obj_func(x, t, d)
    ls_func_evals = 1
    gtd_new = float(xp.dot(g_new, d))

    t_prev, f_prev, g_prev, gtd_prev = 0.0, f, g, gtd
    done = False
    ls_iter = 0
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new.copy()], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new.copy()], [gtd_prev, gtd_new]
            break
        # extrapolate
        min_step = _step_if(t + 0.01 * (t - t_prev), t, t_prev)
        max_step = _step_if(t * 10, t)
        tmp = t
        t = _cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new,
                               bounds=(min_step, max_step))
        t_prev, f_prev, g_prev, gtd_prev = tmp, f_new, g_new.copy(), gtd_new
        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = float(xp.dot(g_new, d))
        ls_iter += 1

    if ls_iter == max_ls:
        bracket, bracket_f, bracket_g = [0.0, t], [f, f_new], [g, g_new]

    # zoom: shrink the bracket until a point meets the conditions
    insuf_progress = False
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = _cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0],
                               bracket[1], bracket_f[1], bracket_gtd[1])
        # too close to an end of the bracket: move 10 % of its length inside
        eps = _step_if(0.1 * (max(bracket) - min(bracket)), *bracket)
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insuf_progress or t >= max(bracket) or t <= min(bracket):
                if abs(t - max(bracket)) < abs(t - min(bracket)):
                    t = _step_if(max(bracket) - eps, max(bracket), eps)
                else:
                    t = _step_if(min(bracket) + eps, min(bracket), eps)
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False

        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = float(xp.dot(g_new, d))
        ls_iter += 1

        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]:
            # Armijo fails or no lower than the low end: the new point is the high end
            bracket[high_pos], bracket_f[high_pos] = t, f_new
            bracket_g[high_pos], bracket_gtd[high_pos] = g_new.copy(), gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                bracket[high_pos], bracket_f[high_pos] = bracket[low_pos], bracket_f[low_pos]
                bracket_g[high_pos] = bracket_g[low_pos]
                bracket_gtd[high_pos] = bracket_gtd[low_pos]
            bracket[low_pos], bracket_f[low_pos] = t, f_new
            bracket_g[low_pos], bracket_gtd[low_pos] = g_new.copy(), gtd_new

    return bracket_f[low_pos], bracket_g[low_pos], bracket[low_pos], ls_func_evals


class LBFGS(Optimizer):
    r"""L-BFGS (Liu & Nocedal, 1989) as PyTorch implements it (after minFunc).

    Each :meth:`step` runs up to ``max_iter`` iterations (``max_eval`` loss evaluations,
    default ``max_iter * 5 // 4``) on the loss that ``closure`` computes: the direction is the
    two-loop recursion over the last ``history_size`` pairs (s, y) of steps and gradient
    changes, scaled by ``sᵀy / yᵀy``; the step is ``lr`` (the first ever
    ``min(1, 1/‖g‖₁) lr``), or the strong-Wolfe line search with cubic interpolation when
    ``line_search_fn='strong_wolfe'``. It stops early when ``max|g| <= tolerance_grad``, or
    when the step, the directional derivative or the change of the loss falls below
    ``tolerance_change``. Pairs with ``sᵀy <= 1e-10`` are not stored (the model stays
    positive definite).

    ``closure`` must zero the gradients, compute the loss, call ``backward`` and return the
    loss; it is called with gradients enabled. ``step`` returns the loss of its first call.
    One parameter group only, as in PyTorch (all parameters on one device); the state (the
    history, counters, last direction and step) lives in ``state`` under the first parameter
    and in ``state_dict()``, as PyTorch's. A step cannot run under :func:`nodegrad.jit`: its
    loop count and line search depend on the loss values.

    A parameter that does not require grad (frozen) or has no gradient after the step's first
    closure call does not move, as with the other optimisers: its part of every direction is
    zero, also where the history holds pairs from before it was frozen (PyTorch's L-BFGS would
    move it along them). A pruned parameter (:mod:`nodegrad.prune`) moves only at its kept
    entries. Otherwise the steps are PyTorch's, bit for bit.
    """

    def __init__(self, params: Iterable, lr=1, max_iter: int = 20, max_eval: int | None = None,
                 tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9,
                 history_size: int = 100, line_search_fn: str | None = None):
        if not callable(lr) and not lr >= 0.0:
            raise ValueError(f"LBFGS: invalid lr {lr} (expected >= 0)")
        if not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"LBFGS: invalid max_iter {max_iter!r} (expected an int >= 1)")
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        if not isinstance(max_eval, int) or max_eval < 1:
            raise ValueError(f"LBFGS: invalid max_eval {max_eval!r} (expected an int >= 1)")
        if not isinstance(history_size, int) or history_size < 1:
            raise ValueError(f"LBFGS: invalid history_size {history_size!r} (expected an int "
                             ">= 1)")
        for name, v in (("tolerance_grad", tolerance_grad),
                        ("tolerance_change", tolerance_change)):
            if not v >= 0:
                raise ValueError(f"LBFGS: invalid {name} {v} (expected >= 0)")
        if line_search_fn not in (None, "strong_wolfe"):
            raise ValueError(f"LBFGS: invalid line_search_fn {line_search_fn!r} (expected None "
                             "or 'strong_wolfe')")
        super().__init__(params, dict(lr=lr, max_iter=max_iter, max_eval=max_eval,
                                      tolerance_grad=tolerance_grad,
                                      tolerance_change=tolerance_change,
                                      history_size=history_size,
                                      line_search_fn=line_search_fn))
        ps = self._params = self.param_groups[0]["params"]
        devices = {backend_of(p._data) for p in ps}
        if len(devices) > 1:
            raise ValueError(f"LBFGS: all parameters must be on one device, got "
                             f"{sorted(str(d) for d in devices)}")
        self._lstate: dict[str, Any] = {}
        self._held: list[bool] = []  # per parameter: this step must not move it
        self._fixed: list[tuple[int, int]] = []  # their flat ranges
        self._masks: list[tuple[int, int, Any]] = []  # flat ranges with a pruning mask

    def add_param_group(self, param_group: dict) -> None:
        if self.param_groups:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups): "
                             "it has one group already, expected no more")
        super().add_param_group(param_group)

    # --- flat views of the parameters and gradients --------------------------------------------
    def _xp(self):
        return backend_of(self._params[0]._data).xp

    def _gather_flat_grad(self):
        xp = self._xp()
        return xp.concatenate([xp.zeros(_size(p), _real_dtype(p._data.dtype))
                               if p.grad is None or not p.requires_grad else
                               _as_real(xp, p.grad._data, p._data.dtype) for p in self._params])

    def _constraints(self) -> None:
        """Which flat ranges this step must hold fixed (parameters that are frozen or have no
        gradient) and which carry a pruning mask; read after the step's first closure call."""
        self._held = [not p.requires_grad or p.grad is None for p in self._params]
        self._fixed, self._masks = [], []
        offset = 0
        for p, held in zip(self._params, self._held):
            n = _size(p)
            if held:
                self._fixed.append((offset, offset + n))
            else:
                self._masks += [(offset, offset + n, m.reshape(-1) if n == p._data.size else
                                 backend_of(m).xp.repeat(m.reshape(-1), 2))
                                for m in post_step_masks(p)]
            offset += n

    def _constrain(self, d) -> None:
        """Zero direction ``d`` (in place) where the step must not move a parameter."""
        for lo, hi in self._fixed:
            d[lo:hi] = 0
        for lo, hi, m in self._masks:
            d[lo:hi] *= m

    def _add_grad(self, step: float, update) -> None:
        offset = 0
        held = self._held if self._fixed else ()
        for k, p in enumerate(self._params):
            a, n = p._data, _size(p)
            if not (held and held[k]):
                if a.dtype.kind == "c":  # the real view (a view: the buffer is contiguous)
                    a = a.reshape(-1).view(_real_dtype(a.dtype))
                a += step * update[offset:offset + n].reshape(a.shape)
                p._bump()
            offset += n

    def _clone_param(self) -> list:
        return [p._data.copy() for p in self._params]

    def _set_param(self, arrays: list) -> None:
        for p, a in zip(self._params, arrays):
            p._data[...] = a
            p._bump()

    def _directional_evaluate(self, closure, x, t, d):
        self._add_grad(t, d)
        with enable_grad():
            loss = float(closure())
        flat_grad = self._gather_flat_grad()
        self._set_param(x)
        return loss, flat_grad

    # --- the step -------------------------------------------------------------------------------
    def step(self, closure: Callable[[], Any] | None = None):  # type: ignore[override]
        """Run up to ``max_iter`` L-BFGS iterations; returns the loss of the first closure call."""
        if modes().jit is not None:
            raise JitError("LBFGS.step cannot be captured by nodegrad.jit (at "
                           f"{creation_site()}): it calls the closure a data-dependent number "
                           "of times (its iterations and line search depend on the loss "
                           "values); run it eagerly, or jit the closure's loss computation "
                           "instead")
        if closure is None:
            raise TypeError("LBFGS.step needs a closure that zeroes the gradients, computes the "
                            "loss, calls backward and returns the loss; got None")
        self._sync(0)
        with no_grad():
            return self._run(closure)

    def _run(self, closure):
        xp = self._xp()
        self.step_count += 1
        h = self._hyper(self.param_groups[0], self.step_count)
        lr, max_iter, max_eval = float(h["lr"]), h["max_iter"], h["max_eval"]
        tolerance_grad, tolerance_change = h["tolerance_grad"], h["tolerance_change"]
        line_search_fn, history_size = h["line_search_fn"], h["history_size"]

        state = self._lstate
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)

        with enable_grad():
            orig_loss = closure()
        loss = float(orig_loss)
        current_evals = 1
        state["func_evals"] += 1

        flat_grad = self._gather_flat_grad()
        if float(xp.abs(flat_grad).max()) <= tolerance_grad:
            return orig_loss
        self._constraints()
        constrained = bool(self._fixed or self._masks)

        d, t = state.get("d"), state.get("t")
        old_dirs, old_stps, ro = state.get("old_dirs"), state.get("old_stps"), state.get("ro")
        H_diag, prev_flat_grad = state.get("H_diag"), state.get("prev_flat_grad")
        prev_loss = state.get("prev_loss")

        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1

            # the direction
            if state["n_iter"] == 1:
                d = -flat_grad
                old_dirs, old_stps, ro = [], [], []
                H_diag = 1.0
            else:
                y = flat_grad - prev_flat_grad
                s = d * t
                ys = float(xp.dot(y, s))
                if ys > 1e-10:
                    if len(old_dirs) == history_size:  # forget the oldest pair
                        old_dirs.pop(0)
                        old_stps.pop(0)
                        ro.pop(0)
                    old_dirs.append(y)
                    old_stps.append(s)
                    ro.append(1.0 / ys)
                    H_diag = ys / float(xp.dot(y, y))
                num_old = len(old_dirs)
                if "al" not in state:
                    state["al"] = [None] * history_size
                al = state["al"]
                # the two-loop recursion: d = -H g
                q = -flat_grad
                for i in range(num_old - 1, -1, -1):
                    al[i] = float(xp.dot(old_stps[i], q)) * ro[i]
                    q -= al[i] * old_dirs[i]
                d = r = q * H_diag
                for i in range(num_old):
                    be_i = float(xp.dot(old_dirs[i], r)) * ro[i]
                    r += (al[i] - be_i) * old_stps[i]
            if constrained:
                self._constrain(d)

            if prev_flat_grad is None:
                prev_flat_grad = flat_grad.copy()
            else:
                prev_flat_grad[...] = flat_grad
            prev_loss = loss

            # the step length
            if state["n_iter"] == 1:
                m = min(1.0, _Step(1.0 / float(xp.abs(flat_grad).sum())))
                t = _step_if(m * lr, m)
            else:
                t = lr
            gtd = float(xp.dot(flat_grad, d))
            if gtd > -tolerance_change:  # not a descent direction (any more)
                break

            ls_func_evals = 0
            if line_search_fn is not None:
                x_init = self._clone_param()

                def obj_func(x, t, d):
                    return self._directional_evaluate(closure, x, t, d)

                loss, flat_grad, t, ls_func_evals = _strong_wolfe(
                    xp, obj_func, x_init, t, d, loss, flat_grad, gtd,
                    max_ls=max_eval - current_evals)
                self._add_grad(t, d)
                opt_cond = float(xp.abs(flat_grad).max()) <= tolerance_grad
            else:
                self._add_grad(t, d)
                opt_cond = False
                if n_iter != max_iter:  # the last iteration's loss is the next step's first
                    with enable_grad():
                        loss = float(closure())
                    flat_grad = self._gather_flat_grad()
                    opt_cond = float(xp.abs(flat_grad).max()) <= tolerance_grad
                    ls_func_evals = 1

            current_evals += ls_func_evals
            state["func_evals"] += ls_func_evals

            # stopping rules
            if n_iter == max_iter or current_evals >= max_eval or opt_cond:
                break
            if float(xp.abs(d * t).max()) <= tolerance_change:
                break
            if abs(loss - prev_loss) < tolerance_change:
                break

        state.update(d=d, t=t, old_dirs=old_dirs, old_stps=old_stps, ro=ro, H_diag=H_diag,
                     prev_flat_grad=prev_flat_grad, prev_loss=prev_loss)
        return orig_loss

    # --- state ----------------------------------------------------------------------------------
    @property
    def state(self) -> dict:
        """``{first parameter: {"func_evals", "n_iter", "d", "t", "old_dirs", ...}}`` (live), as
        PyTorch keeps the global state of L-BFGS under its first parameter; its vectors are
        tensors on the state's memory, as PyTorch's."""
        return {self._params[0]: _LiveState(self._lstate)} if self._lstate else {}

    def _extract(self, gi: int) -> list:
        entries: list = [None] * len(self._params)
        if self._lstate:
            entries[0] = _copy_state(self._lstate)
        return entries

    def _saved_entry(self, e: dict) -> dict:
        """The global state in PyTorch's types: flat vectors (and lists of them) as tensors,
        ``ro``, ``al`` and ``H_diag`` as 0-d float64 tensors (exact, for a bit-identical
        resume), the counts, ``t`` and ``prev_loss`` as numbers."""
        def saved(k: str, v):
            if is_array(v):
                return Tensor._of(v)
            if k in ("ro", "al", "H_diag") and isinstance(v, float | int):
                return Tensor._of(B.np.asarray(v, B.np.float64))
            return v

        return {k: [saved(k, x) for x in v] if isinstance(v, list) else saved(k, v)
                for k, v in e.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a :meth:`state_dict`; a clear error when it does not fit these parameters."""
        saved_groups, state, where = match_groups(self, state_dict)
        like = self._params[0]._data
        if like.dtype.kind == "c":  # the flat vectors are real (see _size)
            like = like.reshape(-1).view(real_dtype(like.dtype))
        n = sum(_size(p) for p in self._params)
        new: dict = {}
        for idx, e in state.items():
            if where[idx] != (0, 0):
                raise ValueError(f"LBFGS.load_state_dict: state for parameter index {idx}; "
                                 "L-BFGS keeps its state under the first parameter only")
            missing = sorted({"func_evals", "n_iter"} - set(e))
            if missing:
                raise ValueError(f"LBFGS.load_state_dict: the state lacks {missing} (was it "
                                 "saved by another optimiser?)")
            for k, v in e.items():
                if k in ("old_dirs", "old_stps"):  # lists of flat vectors
                    v = [_load_vec(x, like, n, k) for x in v]
                elif k in ("ro", "al"):  # lists of numbers
                    v = [None if x is None else _number(x) for x in v]
                elif k in ("d", "prev_flat_grad"):
                    v = None if v is None else _load_vec(v, like, n, k)
                elif k in ("func_evals", "n_iter"):
                    v = int(_number(v))
                elif v is not None:  # t, H_diag, prev_loss (PyTorch may keep 0-d tensors)
                    v = _number(v)
                new[k] = v
        self.param_groups[0].update({k: v for k, v in saved_groups[0].items()
                                     if k not in _NOT_HYPER})
        if "param_names" in saved_groups[0]:  # PyTorch's: the saved names replace these
            self.param_groups[0]["param_names"] = list(saved_groups[0]["param_names"])
        self.step_count = int(state_dict.get("step_count", 0))
        self._lstate = new


def _real_dtype(dt):
    """A complex dtype's float dtype of its width; a float dtype itself."""
    return real_dtype(dt) if dt.kind == "c" else dt


def _size(p: Tensor) -> int:
    """How many real numbers ``p`` holds: a complex parameter counts as its real view, as in
    PyTorch's L-BFGS (whose flat vectors are real)."""
    return p._data.size * 2 if p._data.dtype.kind == "c" else p._data.size


def _as_real(xp, g, dt):
    """Gradient ``g`` of a parameter of dtype ``dt`` as a flat real vector (``view_as_real``)."""
    if dt.kind != "c":
        return g.reshape(-1)
    return xp.ascontiguousarray(g.reshape(-1), dtype=dt).view(real_dtype(dt))


def _number(v) -> float:
    """A saved number (a float, or a 0-d array or tensor) as a Python float."""
    if isinstance(v, Tensor):
        v = v._data
    return float(v.item()) if hasattr(v, "item") else float(v)


def _as_tensor(v):
    """A state value with its arrays (alone or in a list) as tensors on the same memory."""
    if isinstance(v, list):
        return [_as_tensor(x) for x in v]
    return Tensor._of(v) if is_array(v) else v


def _as_array(v):
    """:func:`_as_tensor` undone: tensors (alone or in a list) as their arrays."""
    if isinstance(v, list):
        return [_as_array(x) for x in v]
    return v._data if isinstance(v, Tensor) else v


class _LiveState(dict):
    """L-BFGS's state as ``optimizer.state`` shows it: the vectors as tensors (PyTorch's
    types) on the state's own arrays; assigning a name sets the state the next step reads."""

    __slots__ = ("_st",)

    def __init__(self, st: dict):
        super().__init__({k: _as_tensor(v) for k, v in st.items()})
        self._st = st

    def __setitem__(self, k, v) -> None:
        super().__setitem__(k, v)
        self._st[k] = _as_array(v)

    def __delitem__(self, k) -> None:
        super().__delitem__(k)
        del self._st[k]


def _copy_state(st: dict) -> dict:
    out = {}
    for k, v in st.items():
        if isinstance(v, list):
            out[k] = [x.copy() if is_array(x) else x for x in v]
        else:
            out[k] = v.copy() if is_array(v) else v
    return out


def _load_vec(v, like, n: int, key: str):
    """A saved flat vector of the state as an array like ``like``; an error if it has not the
    parameters' total size."""
    a = as_state_array(v, like)
    if a.shape != (n,):
        raise ValueError(f"LBFGS.load_state_dict: state '{key}' has shape {a.shape}, expected "
                         f"({n},) (the parameters' total size)")
    return a
