"""Replaying PyTorch's own operator samples (its OpInfo database) on nodegrad.

PyTorch's test suite describes ~700 operators with sample inputs that exercise their call forms:
positional and keyword arguments, 0-d and empty tensors, broadcasting, options. :func:`replay`
runs one sample in PyTorch under a ``TorchFunctionMode`` that records every PyTorch function
the sample calls (the OpInfo's ``op`` is often a lambda around the real call), replays the same
calls on nodegrad with the tensors translated, and compares results and, in float64, the
gradients of a random projection of the outputs. Each outcome is one of
:data:`OUTCOMES`; ``"ok"`` when everything agrees.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

import nodegrad as ng

OUTCOMES = ("ok", "skip", "missing", "callfail", "value", "dtype", "shape", "struct",
            "gradfail", "grad")
def pytorch_database(module: str, name: str):
    """``torch.testing._internal.<module>.<name>`` (PyTorch's sample database), or a skip of
    the calling test module when PyTorch's test helpers cannot be imported (they need
    ``expecttest``)."""
    try:
        db = getattr(importlib.import_module(f"torch.testing._internal.{module}"), name)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"PyTorch's {name} is not importable: {e}", allow_module_level=True)
    # Importing them freezes torch.backends' global flags (PyTorch's own suite wants its
    # flags() context manager); other tests in this process set them plainly (the GPU
    # benchmark turns TF32 off), so thaw them again.
    torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True
    _sample_cheaply()
    return db


def _sample_cheaply() -> None:
    """The same samples at a fraction of their cost. Every ``sample_inputs`` call looks for a
    ``unittest.TestCase`` up the stack with ``inspect.stack()`` (tens of ms: it reads every
    frame's source file), which a pytest function never has, and every sample reseeds through
    ``torch.manual_seed``, which also queues a seed for each absent accelerator with a
    formatted stack trace. Seeding the CPU generator (and Python's and NumPy's) alone draws
    the same numbers; together this was half the time of the OpInfo test files."""
    from torch.testing._internal import common_utils
    from torch.testing._internal.opinfo import core

    def no_test_case():
        return None

    def set_rng_seed(seed=None):
        seed = common_utils.SEED if seed is None else seed
        torch.default_generator.manual_seed(seed)
        common_utils.random.seed(seed)
        np.random.seed(seed)

    common_utils.extract_test_fn = core.extract_test_fn = no_test_case
    common_utils.set_rng_seed = set_rng_seed


# Whole families nodegrad does not have: complex numbers (fft, view_as_complex), sparse and
# masked tensors, PyTorch's internal and CUDA-only ops.
SKIP_PREFIXES = ("fft.", "masked.", "sparse.", "signal.", "_", "__", "jiterator_", "native_",
                 "torch.ops.")

_DUNDERS = {"__getitem__", "__setitem__", "__add__", "__radd__", "__sub__", "__rsub__",
            "__mul__", "__rmul__", "__truediv__", "__rtruediv__", "__matmul__", "__rmatmul__",
            "__pow__", "__rpow__", "__mod__", "__rmod__", "__floordiv__", "__rfloordiv__",
            "__and__", "__or__", "__xor__", "__rand__", "__ror__", "__rxor__", "__neg__",
            "__invert__", "__abs__", "__lshift__", "__rshift__", "__eq__", "__ne__", "__lt__",
            "__le__", "__gt__", "__ge__"}


class _Record(TorchFunctionMode):
    """Records the outermost PyTorch calls (nested ones run with the mode popped)."""

    def __init__(self):
        super().__init__()
        self.calls: list = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if not name.startswith("__") or name in _DUNDERS or name == "__get__":
            self.calls.append((func, args, kwargs or {}, out))
        return out


def _target(func):
    """The nodegrad twin of a PyTorch function: ``(callable or method name, kind)``."""
    name = getattr(func, "__name__", "")
    if name == "__get__":  # a property such as x.mT
        return getattr(getattr(func, "__self__", None), "__name__", None), "property"
    name = _RENAMED.get(name, name)
    module = getattr(func, "__module__", None) or ""
    qual = getattr(func, "__qualname__", "") or ""
    if qual.startswith(("TensorBase.", "Tensor.")) or module == "torch._tensor":
        return name, "method"
    if module in ("torch.nn.functional", "torch._C._nn"):
        return getattr(ng.nn.functional, name, None), "function"
    if module in ("torch._C._linalg", "torch.linalg"):
        return getattr(ng.linalg, name.removeprefix("linalg_"), None), "function"
    if module in ("torch._C._special", "torch.special"):
        return getattr(ng.special, name.removeprefix("special_"), None), "function"
    if module.startswith("torch"):
        return getattr(ng, name, None), "function"
    return None, None


# PyTorch's internal names of public functions, as its wrappers call them
_RENAMED = {"log_sigmoid": "logsigmoid", "_threshold": "threshold"}


class _Complex(Exception):
    pass


def _to_ng(v):
    if isinstance(v, torch.Tensor):
        if v.is_complex():
            raise _Complex
        return ng.tensor(v.detach().numpy().copy(), requires_grad=v.requires_grad)
    if isinstance(v, torch.dtype):
        name = str(v).split(".")[1]
        if v.is_complex:
            raise _Complex
        return getattr(ng, name)
    if isinstance(v, torch.Size):
        return tuple(v)
    if isinstance(v, torch.device):
        return "cpu"
    if isinstance(v, (list, tuple)):
        return type(v)(_to_ng(x) for x in v) if not hasattr(v, "_fields") else tuple(
            _to_ng(x) for x in v)
    if isinstance(v, dict):
        return {k: _to_ng(x) for k, x in v.items()}
    return v


def _flat(o) -> list:
    if isinstance(o, (list, tuple)):
        return [y for x in o for y in _flat(x)]
    return [o]


def _array(o):
    if isinstance(o, torch.Tensor):
        o = o.detach()
        return (o.float() if o.dtype == torch.bfloat16 else o).numpy()
    if isinstance(o, ng.Tensor):
        a = np.asarray(o.numpy())
        return a.astype(np.float32) if o.dtype == ng.bfloat16 else a
    return np.asarray(o)


def _dtype(o) -> str:
    if isinstance(o, torch.Tensor):
        return str(o.dtype).split(".")[1]
    return str(o.dtype).rsplit(".", 1)[-1]


@dataclass
class Outcome:
    kind: str
    detail: str = ""


def _compare(ref, got, rtol: float) -> Outcome | None:
    for a, b in zip(_flat(ref), _flat(got)):
        if not isinstance(a, torch.Tensor):
            if isinstance(a, (bool, int, float)):
                bv = b.item() if isinstance(b, ng.Tensor) else b
                same = (a == bv or (isinstance(a, float) and math.isnan(a)
                                    and isinstance(bv, float) and math.isnan(bv)))
                if not same and not (isinstance(a, float) and isinstance(bv, (int, float))
                                     and math.isclose(a, bv, rel_tol=rtol, abs_tol=rtol)):
                    return Outcome("value", f"{a!r} vs {bv!r}")
            continue
        if not isinstance(b, ng.Tensor):
            return Outcome("struct", f"a tensor against {type(b).__name__}")
        x, y = _array(a), _array(b)
        if x.shape != y.shape:
            return Outcome("shape", f"{x.shape} vs {y.shape}")
        if _dtype(a) != _dtype(b):
            return Outcome("dtype", f"{_dtype(a)} vs {_dtype(b)}")
        if x.dtype.kind in "biu":
            if not np.array_equal(x, y):
                return Outcome("value", "integers differ")
        elif not np.allclose(x, y, rtol=rtol, atol=rtol, equal_nan=True):
            err = np.nanmax(np.abs(x - y)) if x.size else 0.0
            return Outcome("value", f"max abs error {err:.3g}")
    return None


def _translator(shadow: dict):
    """``tr(v)``: PyTorch argument ``v`` as nodegrad's, a tensor seen before as its nodegrad
    counterpart in ``shadow`` (by id), containers item by item."""
    def tr(v):
        if isinstance(v, torch.Tensor):
            return shadow[id(v)] if id(v) in shadow else _to_ng(v)
        if isinstance(v, (list, tuple)) and not isinstance(v, torch.Size):
            items = [tr(x) for x in v]
            return tuple(items) if hasattr(v, "_fields") or isinstance(v, tuple) else items
        if isinstance(v, dict):
            return {k: tr(x) for k, x in v.items()}
        return _to_ng(v)

    return tr


def replay(sample, op, grads: bool, rtol: float) -> Outcome:
    """Run ``sample`` of OpInfo ``op`` in PyTorch and nodegrad and compare."""
    try:
        with _Record() as rec:
            ref = op.op(sample.input, *sample.args, **sample.kwargs)
    except Exception:  # PyTorch rejects its own sample (dtype not supported, ...)
        return Outcome("skip", "torch raised")
    if not rec.calls:
        return Outcome("skip", "no PyTorch call recorded")
    inputs = _flat([sample.input, list(sample.args), list(sample.kwargs.values())])
    shadow: dict[int, object] = {}
    try:
        for t in inputs:
            if isinstance(t, torch.Tensor):
                shadow[id(t)] = _to_ng(t)
    except _Complex:
        return Outcome("skip", "complex")

    leaves = {id(t) for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad}
    tr = _translator(shadow)

    try:
        for func, args, kwargs, out in rec.calls:
            fn, kind = _target(func)
            if fn is None:
                return Outcome("missing", f"{getattr(func, '__module__', '')}."
                                          f"{getattr(func, '__name__', func)}")
            a, k = tr(args), tr(kwargs)
            if kind == "property":
                if not hasattr(a[0], fn):
                    return Outcome("missing", f"Tensor.{fn}")
                res = getattr(a[0], fn)
            elif kind == "method":
                method = getattr(a[0], fn, None)
                if method is None:
                    return Outcome("missing", f"Tensor.{fn}")
                res = method(*a[1:], **k)
            else:
                res = fn(*a, **k)
            for x, y in zip(_flat(out), _flat(res)):
                if isinstance(x, torch.Tensor) and id(x) not in leaves:  # an op may return
                    shadow[id(x)] = y  # its input itself (conj_physical of a real tensor)
        if isinstance(ref, torch.Tensor) and id(ref) not in shadow:
            return Outcome("skip", "output made outside the recorded calls")
        got = tr(ref)
    except _Complex:
        return Outcome("skip", "complex")
    except Exception as e:  # noqa: BLE001  (the outcome names it)
        return Outcome("callfail", f"{type(e).__name__}: {str(e)[:200]}")
    if len(_flat(ref)) != len(_flat(got)):
        return Outcome("struct", f"{len(_flat(ref))} outputs vs {len(_flat(got))}")
    bad = _compare(ref, got, rtol)
    if bad is not None or not grads or not op.supports_autograd:
        return bad or Outcome("ok")
    return _gradients(ref, got, inputs, shadow, rtol)


def _gradients(ref, got, inputs, shadow, rtol: float) -> Outcome:
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    pairs = [(a, b) for a, b in zip(_flat(ref), _flat(got)) if isinstance(a, torch.Tensor)
             and a.requires_grad and a.dtype.is_floating_point]
    if not leaves or not pairs:
        return Outcome("ok")
    rng = np.random.default_rng(0)
    cots = [rng.standard_normal(a.shape) for a, _ in pairs]
    try:
        want = torch.autograd.grad([a for a, _ in pairs], leaves,
                                   [torch.tensor(c, dtype=a.dtype) for c, (a, _) in
                                    zip(cots, pairs)], allow_unused=True)
    except Exception:  # PyTorch has no derivative here
        return Outcome("ok")
    ng_leaves = [shadow[id(t)] for t in leaves]
    try:
        total = None
        for c, (_, b) in zip(cots, pairs):
            term = (b * ng.tensor(c).astype(b.dtype)).sum()
            total = term if total is None else total + term
        total.backward()
    except Exception as e:  # noqa: BLE001
        return Outcome("gradfail", f"{type(e).__name__}: {str(e)[:200]}")
    for i, (w, leaf) in enumerate(zip(want, ng_leaves)):
        expect = np.zeros(leaf.shape) if w is None else w.numpy(force=True)  # (ZeroTensor)
        have = np.zeros(leaf.shape) if leaf.grad is None else _array(leaf.grad)
        if expect.shape != have.shape or not np.allclose(expect, have, rtol=rtol, atol=rtol,
                                                          equal_nan=True):
            return Outcome("grad", f"input {i}")
    return Outcome("ok")


def replay_program(sample, op):
    """``(program, values)``: sample ``sample`` of OpInfo ``op`` as a function of its input
    tensors (``program(*values)`` replays PyTorch's recorded calls on nodegrad, as
    :func:`replay` does, and returns the nodegrad tensors of the output), for transforms such as
    ``ng.jit`` to run; None when PyTorch rejects the sample or records no call."""
    try:
        with _Record() as rec:
            ref = op.op(sample.input, *sample.args, **sample.kwargs)
    except Exception:  # noqa: BLE001
        return None
    if not rec.calls:
        return None
    tensors = [t for t in _flat([sample.input, list(sample.args), list(sample.kwargs.values())])
               if isinstance(t, torch.Tensor)]
    ids = [id(t) for t in tensors]
    inputs = set(ids)

    def program(*values):
        shadow = dict(zip(ids, values))
        tr = _translator(shadow)

        for func, args, kwargs, out in rec.calls:
            fn, kind = _target(func)
            if fn is None:
                raise LookupError(f"nodegrad has no {getattr(func, '__name__', func)}")
            a, k = tr(args), tr(kwargs)
            if kind == "property":
                res = getattr(a[0], fn)
            elif kind == "method":
                res = getattr(a[0], fn)(*a[1:], **k)
            else:
                res = fn(*a, **k)
            for x, y in zip(_flat(out), _flat(res)):
                if isinstance(x, torch.Tensor) and id(x) not in inputs:
                    shadow[id(x)] = y
        return [y for y in _flat(tr(ref)) if isinstance(y, ng.Tensor)]

    try:
        return program, [_to_ng(t) for t in tensors]
    except _Complex:
        return None
