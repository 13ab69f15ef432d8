"""Differential test of memory, view and in-place semantics against PyTorch.

Small random programs, drawn from fixed seeds, build float64 (and complex128) tensors, take
handles on their memory (slices, views, transposes, ``diagonal``, ``unbind``, ``.data``,
``detach()``, ``numpy()``, ...), compute from them, and write through any handle in place,
inside or outside ``no_grad``. Each program runs on ``torch`` and on ``nodegrad``; the values of
every handle and NumPy array, the autograd flags, the errors raised and the gradients of a final
weighted sum must agree. A silent difference (other values or gradients, no error) is the bug
this file exists to catch.
"""

from __future__ import annotations

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")

SHAPES = [(3, 4), (4,), (2, 3, 4), (4, 4), (1, 4), (3, 1, 2)]
INPLACE_UNARY = ["zero_", "relu_", "neg_", "tanh_", "sigmoid_", "exp_", "abs_"]
METADATA = ["t_", "transpose_", "unsqueeze_", "squeeze_"]  # in-place changes of the shape
INPLACE_BINARY = ["add_", "sub_", "mul_", "copy_"]
COMPUTE = ["mul2", "exp", "sin", "clone", "square", "add", "mul"]


def _weights(k: int, shape) -> np.ndarray:
    return np.random.default_rng(1000 + k).standard_normal(shape)


class Run:
    """Interprets a program (a list of steps) against ``lib`` and records what it sees."""

    def __init__(self, lib):
        self.lib = lib
        self.h: list = []          # handles: tensors
        self.readonly: list = []   # handle views an expand (never written)
        self.arrays: list = []     # numpy() arrays of handles
        self.leaves: list = []     # tensors whose .grad is compared
        self.alias: list = []      # per handle, then per array: made by .data/detach/numpy()
        self.of_data: list = []    # per handle: made from a .data
        self.wrote_data = False    # whether a write went through a handle made from .data

    def tensor(self, a, requires_grad=False):
        return self.lib.tensor(a, requires_grad=requires_grad)

    def value(self, spec):
        kind = spec[0]
        if kind == "scalar":
            return spec[1]
        if kind == "const":
            return self.tensor(spec[1])
        if kind == "leaf":
            v = self.tensor(spec[1], requires_grad=True)
            self.leaves.append(v)
            return v
        return self.h[spec[1]]  # "handle"

    def base(self, kind, a):
        lib = self.lib
        if kind == "param":
            t = lib.nn.Parameter(self.tensor(a))
        elif kind == "graph":
            leaf = self.tensor(a, requires_grad=True)
            self.leaves.append(leaf)
            t = leaf * 1.5
        elif kind == "complex":
            t = self.tensor(a[0] + 1j * a[1])
        elif kind == "complex_rg":
            t = self.tensor(a[0] + 1j * a[1], requires_grad=True)
        else:
            t = self.tensor(a, requires_grad=kind == "rg")
        if t.is_leaf and t.requires_grad:
            self.leaves.append(t)
        return t

    def view(self, x, name, args):
        lib = self.lib
        if name == "index":
            return x[args]
        if name == "unbind":
            return x.unbind(args[0])[args[1]]
        if name == "split":
            return x.split(args[0], args[1])[args[2]]
        if name == "chunk":
            return x.chunk(args[0], args[1])[args[2]]
        if name == "data":
            return x.data
        if name == "view_as_real":
            return lib.view_as_real(x)
        if name == "real":
            return x.real
        if name == "imag":
            return x.imag
        if name == "expand":
            return x.unsqueeze(0).expand(2, *x.shape)
        if name == "view_shape":
            return x.view(*args)
        if name == "reshape":
            return x.reshape(*args)
        return getattr(x, name)(*args)

    def compute(self, x, name, j):
        if name == "mul2":
            return x * 1.5
        if name == "exp":
            return x.exp()
        if name == "sin":
            return x.sin()
        if name == "clone":
            return x.clone()
        if name == "square":
            return x * x
        if name == "add":
            return x + self.h[j]
        return x * self.h[j]  # "mul"

    def inplace(self, x, name, args):
        lib = self.lib
        if name in INPLACE_UNARY:
            getattr(x, name)()
        elif name in INPLACE_BINARY:
            getattr(x, name)(self.value(args[0]))
        elif name == "div_":
            x.div_(args[0])
        elif name == "fill_":
            x.fill_(args[0])
        elif name == "clamp_":
            x.clamp_(min=-0.5, max=0.5)
        elif name == "setitem":
            idx, spec = args
            x[lib.tensor(idx) if isinstance(idx, np.ndarray) else idx] = self.value(spec)
        elif name == "index_add_":
            dim, idx, spec = args
            x.index_add_(dim, lib.tensor(idx), self.value(spec))
        elif name == "scatter_":
            dim, idx, spec = args
            x.scatter_(dim, lib.tensor(idx), self.value(spec))
        elif name == "masked_fill_":
            mask, v = args
            x.masked_fill_(lib.tensor(mask), v)
        elif name == "index_fill_":
            dim, idx, v = args
            x.index_fill_(dim, lib.tensor(idx), v)
        elif name == "index_copy_":
            dim, idx, spec = args
            x.index_copy_(dim, lib.tensor(idx), self.value(spec))
        elif name == "addcmul_":
            x.addcmul_(self.value(args[0]), self.value(args[1]), value=args[2])
        elif name == "lerp_":
            x.lerp_(self.value(args[0]), args[1])
        elif name == "pow_":
            x.pow_(2)
        elif name == "iadd_item":  # x[idx] += v: x[idx].__iadd__(v), then x[idx] = that
            idx, spec = args
            x[idx] += self.value(spec)
        elif name == "set_data":  # x.data = a new tensor of another memory
            x.data = self.tensor(args[0])
        elif name in METADATA:
            getattr(x, name)(*args)
        else:
            raise AssertionError(name)

    def step(self, st):
        kind = st[0]
        if kind == "base":
            self.h.append(self.base(st[1], st[2]))
            self.readonly.append(False)
            self.alias.append(False)
            self.of_data.append(False)
        elif kind == "view":
            _, i, name, args = st
            x_shape = tuple(self.h[i].shape)
            self.h.append(self.view(self.h[i], name, args))
            # nodegrad's documented choice (README, "When things go wrong"): an unfold is
            # writable only where its windows tile the dim; others are not written here
            tiles = name != "unfold" or (args[1] == args[2] and x_shape[args[0]] % args[1] == 0)
            self.readonly.append(self.readonly[i] or name == "expand" or not tiles)
            self.alias.append(self.alias[i] or name in ("data", "detach"))
            self.of_data.append(self.of_data[i] or name == "data")
        elif kind == "numpy":
            self.arrays.append(self.h[st[1]].numpy())
        elif kind == "compute":
            _, i, name, j = st
            self.h.append(self.compute(self.h[i], name, j))
            self.readonly.append(False)
            self.alias.append(False)
            self.of_data.append(False)
        else:  # "inplace"
            _, i, name, args, nograd = st
            self.wrote_data |= self.of_data[i]
            if nograd:
                with self.lib.no_grad():
                    self.inplace(self.h[i], name, args)
            else:
                self.inplace(self.h[i], name, args)

    def run(self, prog) -> dict:
        """Runs ``prog``; returns the error (step, type), every handle's state and the grads."""
        out: dict = {"error": None, "backward_error": None}
        for n, st in enumerate(prog):
            try:
                self.step(st)
                for t in self.h:  # PyTorch regenerates a view's grad_fn when it is read; a
                    _flags(t)  # view not read since its base changed may be refused as a leaf
            except Exception as e:  # noqa: BLE001 - the type is compared
                out["error"] = (n, type(e), str(e).splitlines()[0][:160])
                break
        out["handles"] = [(tuple(t.shape), str(t.dtype).split(".")[-1],
                           t.detach().numpy().copy(), _flags(t)) for t in self.h]
        out["arrays"] = [a.copy() for a in self.arrays]
        mem = [(t.detach().numpy() if self.lib is torch else t._data) for t in self.h]
        mem += self.arrays
        out["shares"] = [[np.may_share_memory(a, b) for b in mem] for a in mem]
        out["alias"] = self.alias[:len(self.h)] + [True] * len(self.arrays)
        out["wrote_data"] = self.wrote_data
        lib = self.lib
        try:
            terms = []
            for k, t in enumerate(self.h):
                if t.requires_grad:
                    r = lib.view_as_real(t) if t.is_complex() else t
                    terms.append((r * lib.tensor(_weights(k, tuple(r.shape)))).sum())
            if terms:
                sum(terms).backward()
        except Exception as e:  # noqa: BLE001
            out["backward_error"] = (type(e), str(e))
        out["grads"] = [None if v.grad is None else v.grad.detach().numpy().copy()
                        for v in self.leaves]
        return out


def _flags(t) -> tuple:
    """(requires_grad, is_leaf, grad_fn is None), or None where PyTorch refuses to say: an
    output of ``unbind``/``split``/``chunk`` whose memory was changed in place (reading its
    ``grad_fn`` raises; nodegrad answers, and the comparison skips those flags)."""
    try:
        return bool(t.requires_grad), bool(t.is_leaf), t.grad_fn is None
    except RuntimeError:
        return None


# ----------------------------------------------------------------------------- the generator


def _basic_index(rng, shape):
    idx = []
    for n in shape:
        r = rng.random()
        if r < 0.2:
            idx.append(int(rng.integers(-n, n)))
        elif r < 0.7 and n > 1:
            a = int(rng.integers(0, n - 1))
            b = int(rng.integers(a + 1, n + 1))
            idx.append(slice(a, b, int(rng.integers(1, 3))))
        else:
            idx.append(slice(None))
    return tuple(idx[: int(rng.integers(1, len(shape) + 1))]) if shape else ()


def _value_spec(rng, run, i, shape, allow_handle=True):
    """A value for an in-place op on a tensor of ``shape``."""
    r = rng.random()
    if r < 0.3:
        return ("scalar", float(np.round(rng.standard_normal(), 3)))
    if r < 0.55:
        s = shape[-1:] if (shape and rng.random() < 0.3) else shape
        return ("const", rng.standard_normal(s))
    if r < 0.8 or not allow_handle:
        return ("leaf", rng.standard_normal(shape))
    same = [j for j, t in enumerate(run.h)
            if tuple(t.shape) == tuple(shape) and not t.is_complex() and j != i]
    if not same:
        return ("leaf", rng.standard_normal(shape))
    return ("handle", int(rng.choice(same)))


def _draw_view(rng, x, i):
    shape = tuple(x.shape)
    nd = len(shape)
    names = ["index", "data", "detach", "expand", "reshape", "view_shape"]
    if nd:
        names += ["unsqueeze", "narrow", "select", "unbind", "split", "chunk", "transpose",
                  "movedim", "unfold"]
    if nd >= 2:
        names += ["t", "permute", "diagonal", "diagonal"]
    if 1 in shape:
        names.append("squeeze")
    if x.is_complex():
        names += ["view_as_real", "view_as_real", "real", "imag"]
    name = str(rng.choice(names))
    d = int(rng.integers(0, nd)) if nd else 0
    n = shape[d] if nd else 1
    if name == "index":
        args = _basic_index(rng, shape)
    elif name in ("data", "detach", "expand", "view_as_real", "real", "imag"):
        args = ()
    elif name == "movedim":
        args = (d, int(rng.integers(0, nd)))
    elif name == "unfold":  # windows that tile the dim (a writable view) or overlap
        size = int(rng.integers(1, n + 1))
        args = (d, size, int(rng.integers(1, size + 1)))
    elif name == "reshape":
        args = (-1,) if rng.random() < 0.5 or not nd else (*shape[:-1], 1, shape[-1])
    elif name == "view_shape":
        args = (-1,) if rng.random() < 0.5 or not nd else (1, *shape)
    elif name == "unsqueeze":
        args = (int(rng.integers(0, nd + 1)),)
    elif name == "narrow":
        s = int(rng.integers(0, n))
        args = (d, s, int(rng.integers(1, n - s + 1)))
    elif name == "select":
        args = (d, int(rng.integers(-n, n)))
    elif name == "unbind":
        args = (d, int(rng.integers(0, n)))
    elif name == "split":
        size = int(rng.integers(1, n + 1))
        args = (size, d, int(rng.integers(0, -(-n // size))))
    elif name == "chunk":
        c = int(rng.integers(1, n + 1))
        args = (c, d, int(rng.integers(0, len(range(0, n, -(-n // c))))))
    elif name == "transpose":
        args = (d, int(rng.integers(0, nd)))
    elif name == "t":
        if nd != 2:
            name, args = "transpose", (0, 1)
        else:
            args = ()
    elif name == "permute":
        args = tuple(int(p) for p in rng.permutation(nd))
    elif name == "diagonal":
        a, b = rng.choice(nd, 2, replace=False)
        args = (int(rng.integers(-1, 2)), int(a), int(b))
    else:  # squeeze
        args = (shape.index(1),)
    return ("view", i, name, args)


def _draw_inplace(rng, run, i):
    x = run.h[i]
    shape = tuple(x.shape)
    nd = len(shape)
    nograd = bool(rng.random() < 0.35)
    if x.is_complex():
        name = str(rng.choice(["zero_", "fill_", "mul_", "add_"]))
        v = float(np.round(rng.standard_normal(), 3))
        args = () if name == "zero_" else ((v,) if name == "fill_" else (("scalar", v),))
        return ("inplace", i, name, args, nograd)
    names = INPLACE_UNARY + INPLACE_BINARY * 3 + ["div_", "fill_", "clamp_", "masked_fill_"] \
        + ["setitem"] * 4 + ["addcmul_", "lerp_", "pow_", "iadd_item", "set_data"]
    if nd:
        names += ["index_add_", "scatter_", "index_fill_", "index_copy_", "unsqueeze_"] * 2
    if nd == 2:
        names += ["t_"]
    if nd >= 2:
        names += ["transpose_"]
    if 1 in shape:
        names += ["squeeze_"]
    name = str(rng.choice(names))
    if name in INPLACE_UNARY or name in ("pow_", "t_"):
        args = ()
    elif name == "transpose_":
        args = tuple(int(a) for a in rng.choice(nd, 2, replace=False))
    elif name == "unsqueeze_":
        args = (int(rng.integers(0, nd + 1)),)
    elif name == "squeeze_":
        args = (shape.index(1),)
    elif name == "set_data":  # another shape: only for a tensor outside the graph
        f = _flags(x)
        other = f is not None and f[2] and not x.requires_grad and rng.random() < 0.3
        args = (rng.standard_normal((2, *shape) if other else shape),)

    elif name == "addcmul_":
        args = (_value_spec(rng, run, i, shape, allow_handle=True),
                _value_spec(rng, run, i, shape, allow_handle=True),
                float(np.round(rng.standard_normal(), 3)))
        args = tuple(("const", np.full(shape, a[1])) if a[0] == "scalar" else a
                     for a in args[:2]) + args[2:]
    elif name == "lerp_":
        spec = _value_spec(rng, run, i, shape)
        if spec[0] == "scalar":
            spec = ("const", np.full(shape, spec[1]))
        args = (spec, float(np.round(rng.uniform(0, 1), 3)))
    elif name == "iadd_item":
        idx = _basic_index(rng, shape)
        args = (idx, _value_spec(rng, run, i, tuple(torch.zeros(shape)[idx].shape),
                                 allow_handle=False))
    elif name in ("index_fill_", "index_copy_"):
        d = int(rng.integers(0, nd))
        k = int(rng.integers(1, shape[d] + 1))
        idx = rng.permutation(shape[d])[:k]  # distinct: index_copy_'s result is defined
        if name == "index_fill_":
            args = (d, idx, float(np.round(rng.standard_normal(), 3)))
        else:
            src = list(shape)
            src[d] = k
            spec = _value_spec(rng, run, i, tuple(src), allow_handle=False)
            if spec[0] == "scalar":
                spec = ("const", np.full(src, spec[1]))
            args = (d, idx, spec)
    elif name in INPLACE_BINARY:
        spec = _value_spec(rng, run, i, shape)
        if name == "copy_" and spec[0] == "scalar":
            spec = ("const", np.full(shape, spec[1]))
        args = (spec,)
    elif name in ("div_", "fill_"):
        args = (float(np.round(rng.uniform(0.5, 2.0), 3)),)
    elif name == "clamp_":
        args = ()
    elif name == "masked_fill_":
        args = (rng.random(shape) < 0.5, float(np.round(rng.standard_normal(), 3)))
    elif name == "setitem":
        if nd and rng.random() < 0.3:  # advanced: a list of rows or a mask
            if rng.random() < 0.5:
                idx = [int(k) for k in rng.choice(shape[0], int(rng.integers(1, shape[0] + 1)),
                                                  replace=False)]
                sub = (len(idx), *shape[1:])
            else:
                idx = rng.random(shape) < 0.5
                sub = (int(idx.sum()),)
        else:
            idx = _basic_index(rng, shape)
            sub = tuple(torch.zeros(shape)[idx].shape)
        if isinstance(idx, np.ndarray):
            spec = ("scalar", float(np.round(rng.standard_normal(), 3)))
        else:
            spec = _value_spec(rng, run, i, sub, allow_handle=False)
        args = (idx, spec)
    elif name == "index_add_":
        d = int(rng.integers(0, nd))
        idx = rng.integers(0, shape[d], int(rng.integers(1, shape[d] + 2)))
        src = list(shape)
        src[d] = len(idx)
        spec = _value_spec(rng, run, i, tuple(src), allow_handle=False)
        if spec[0] == "scalar":
            spec = ("const", np.full(src, spec[1]))
        args = (d, idx, spec)
    else:  # scatter_: indices unique along the dim, so the result is defined
        d = int(rng.integers(0, nd))
        k = int(rng.integers(1, shape[d] + 1))
        order = np.argsort(rng.random(shape), axis=d)
        idx = np.take(order, np.arange(k), axis=d)
        spec = _value_spec(rng, run, i, idx.shape, allow_handle=False)
        if spec[0] == "scalar":
            spec = ("const", np.full(idx.shape, spec[1]))
        args = (d, idx, spec)
    return ("inplace", i, name, args, nograd)


def _pytorch_only_refusal(e: Exception) -> bool:
    """PyTorch's own restriction, which nodegrad does not have: an output of ``unbind``,
    ``split`` or ``chunk`` (or a view made under ``no_grad``) may not be changed in place
    while recording, nor used after its base was (nodegrad's views regenerate and give the
    right gradient); an in-place op whose operand overlaps the tensor it writes is refused
    (nodegrad computes it from a copy: ``x.add_(x.t())`` is ``x + x.t()``). Programs are
    drawn without such steps."""
    m = str(e)
    return ("returns multiple views" in m or "A view was created in no_grad mode" in m
            or "refer to a single memory location" in m)


def _replay(prog) -> tuple:
    """The program so far on PyTorch, and on nodegrad (None once nodegrad raised)."""
    run, mirror = Run(torch), Run(ng)
    for st in prog:
        run.step(st)
        if mirror is not None:
            try:
                mirror.step(st)
            except Exception:  # noqa: BLE001  (the comparison reports it)
                mirror = None
    return run, mirror


def make_program(seed: int):
    """A program of 2-3 tensors and 4-10 steps; drawn with PyTorch as the shape oracle. Steps
    that PyTorch refuses are dropped, except in-place ops (kept at times: then the program ends
    there and nodegrad must refuse too)."""
    rng = np.random.default_rng(seed)
    prog = []
    for _ in range(int(rng.integers(2, 4))):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        kind = str(rng.choice(["rg", "plain", "param", "graph", "rg", "plain", "complex",
                               "complex_rg"]))
        a = rng.standard_normal((2, *shape) if kind.startswith("complex") else shape)
        prog.append(("base", kind, a))
    run, mirror = _replay(prog)
    for _ in range(int(rng.integers(4, 11))):
        for _try in range(6):
            i = int(rng.integers(len(run.h)))
            x = run.h[i]
            if x.numel() == 0 or _flags(x) is None:  # (PyTorch refuses to say: not drawn)
                continue
            r = rng.random()
            if r < 0.35:
                st = _draw_view(rng, x, i)
            elif r < 0.45:
                if x.requires_grad:
                    continue
                st = ("numpy", i)
            elif r < 0.6:
                name = str(rng.choice(COMPUTE if not x.is_complex() else ["mul2", "clone"]))
                same = [j for j, t in enumerate(run.h) if t.shape == x.shape
                        and t.dtype == x.dtype]
                st = ("compute", i, name, int(rng.choice(same)))
            else:
                if run.readonly[i]:
                    continue
                st = _draw_inplace(rng, run, i)
                if st is None:
                    continue
                if (st[2] in METADATA or st[2] == "set_data") and (
                        mirror is None or sum(h is mirror.h[i] for h in mirror.h) > 1):
                    # nodegrad's choice (ops/shape.py, _same_view): a view op that changes
                    # nothing (transpose(1, 1), a reshape to the same shape) of a tensor that
                    # needs no gradient gives the tensor itself, so changing the shape or
                    # memory of one changes the other; not drawn
                    continue
                if st[2] == "set_data" and (x._base is not None or any(
                        t._base is x for t in run.h)):
                    # ``v.data = t`` with views about: PyTorch's values follow the memory and
                    # its gradients the view relation, which then disagree; nodegrad follows
                    # the memory (test_a_view_given_other_memory_by_data_...); not drawn
                    continue
            if st[0] == "view" and st[2] == "reshape":
                y = run.view(x, "reshape", st[3])
                if y.data_ptr() != x.data_ptr() or y._base is None:
                    continue  # only reshapes that are views
            try:
                run.step(st)
                if mirror is not None and st[0] == "inplace" and st[2] in METADATA:
                    mirror.step(st)
            except Exception as e:  # noqa: BLE001
                refused = isinstance(e, ng.errors.GradError) and "change the shape" in str(e)
                if (st[0] == "inplace" and rng.random() < 0.3 and not refused
                        and not _pytorch_only_refusal(e)):
                    prog.append(st)
                    return prog
                run, mirror = _replay(prog)
                continue
            if mirror is not None and not (st[0] == "inplace" and st[2] in METADATA):
                try:
                    mirror.step(st)
                except Exception:  # noqa: BLE001  (the comparison reports it)
                    mirror = None
            prog.append(st)
            break
    return prog


# ----------------------------------------------------------------------------- comparison


def _close(a, b) -> bool:
    return a.shape == b.shape and np.allclose(a, b, rtol=1e-9, atol=1e-12, equal_nan=True)


def compare(prog) -> list[str]:
    """The differences between the two runs of ``prog`` (empty when they agree)."""
    ref, got = Run(torch).run(prog), Run(ng).run(prog)
    be = ref["backward_error"]
    if be is not None and got["backward_error"] is None:
        if "returns multiple views" in be[1] or "A view was created in no_grad" in be[1]:
            ref["backward_error"], ref["grads"] = None, got["grads"]  # see _pytorch_only_refusal
        elif "modified by an inplace operation" in be[1]:
            # nodegrad's tested choice (tests/test_tensor_views.py): an in-place op recorded
            # on a tensor with views points it at a new array, so what a node saved of the
            # views stays valid and the gradient is right where PyTorch refuses. Checked
            # against PyTorch keeping the saved values (allow_mutation_on_saved_tensors).
            with torch.autograd.graph.allow_mutation_on_saved_tensors():
                ref = Run(torch).run(prog)
    ge = got["backward_error"]
    if (ref["backward_error"] is None and ge is not None and got["wrote_data"]
            and issubclass(ge[0], ng.errors.InplaceError)):
        # nodegrad's documented choice (Tensor.data): the .data of a tensor in the graph
        # shares its version counter, so a write through it that changes a saved value is an
        # error, where PyTorch computes silently with the new value
        return []
    if ref["backward_error"] is None and got["backward_error"] is None and not _same_grads(
            ref["grads"], got["grads"]):
        # nodegrad's nodes keep what they saved as it was then: memory changed under a saved
        # tensor without its counter moving (a write through ``.data``, PyTorch's documented
        # hazard) changes PyTorch's gradient only. Checked against PyTorch saving copies.
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
            ref = Run(torch).run(prog)
    e = got["error"]
    if ref["error"] is None and e is not None and e[1] is ng.errors.GradError and (
            "cannot change the shape of a" in e[2]):
        return []  # refused on purpose: test_shape_changes_in_place_that_views_could_not_...
    diffs = []
    if (ref["error"] is None) != (got["error"] is None) or (
            ref["error"] and ref["error"][0] != got["error"][0]):
        return [f"error: torch {ref['error']} nodegrad {got['error']}"]
    nh = len(ref["handles"])
    lost = set()
    alias = ref["alias"]
    for k, (a, b) in enumerate(zip(ref["shares"], got["shares"], strict=True)):
        if any(x and not y and (alias[k] or alias[j])
               for j, (x, y) in enumerate(zip(a, b, strict=True))):
            lost.add(k)  # memory left behind with a .data/detach()/numpy() handle
    for k, (a, b) in enumerate(zip(ref["handles"], got["handles"], strict=True)):
        if a[:2] != b[:2]:
            diffs.append(f"handle {k}: shape/dtype {a[:2]} vs {b[:2]}")
        elif not _close(a[2], b[2]):
            diffs.append(f"handle {k}: values differ" + (" (memory left)" if k in lost else ""))
        if a[3] is not None and a[3] != b[3]:
            diffs.append(f"handle {k}: (requires_grad, is_leaf, grad_fn is None) {a[3]} vs "
                         f"{b[3]}")
    for k, (a, b) in enumerate(zip(ref["arrays"], got["arrays"], strict=True)):
        if not _close(a, b):
            diffs.append(f"numpy array {k}: values differ"
                         + (" (memory left)" if nh + k in lost else ""))
    if (ref["backward_error"] is None) != (got["backward_error"] is None):
        diffs.append(f"backward error: torch {ref['backward_error']} "
                     f"nodegrad {got['backward_error']}")
    elif ref["backward_error"] is None and not _same_grads(ref["grads"], got["grads"]):
        diffs.append("grads differ")
    return diffs


def _same_grads(ga, gb) -> bool:
    return all((a is None) == (b is None) and (a is None or _close(a, b))
               for a, b in zip(ga, gb, strict=True))


def _known(diff: str) -> bool:
    """The difference left open (see the xfail tests below): a tensor that a recorded
    in-place op moved to new memory leaves handles that PyTorch keeps on it (``numpy()``,
    ``.data``, ``detach()``, or the base of a ``detach()`` changed through it)."""
    return diff.endswith("(memory left)")


SEEDS = range(600)
CHUNKS = 10


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_random_programs_agree_with_pytorch(chunk):
    bad = {}
    for seed in SEEDS[chunk::CHUNKS]:
        d = compare(make_program(seed))
        if any(x.endswith("(memory left)") for x in d):
            continue  # what is computed from a handle left behind differs too
        d = [x for x in d if not _known(x)]
        if d:
            bad[seed] = d
    assert not bad, bad


def test_the_generator_covers_every_handle_and_write():
    """The programs take every kind of handle and make every kind of write, recorded and not."""
    seen = set()
    for seed in SEEDS:
        for st in make_program(seed):
            if st[0] == "view":
                seen.add(st[2])
            elif st[0] == "inplace":
                seen.add((st[2], st[4]))
            else:
                seen.add(st[0] if st[0] != "base" else st[1])
    views = {"index", "data", "detach", "expand", "reshape", "view_shape", "unsqueeze", "narrow",
             "select", "unbind", "split", "chunk", "transpose", "t", "permute", "diagonal",
             "squeeze", "view_as_real", "real"}
    views |= {"movedim", "unfold", "imag"}
    writes = {(n, g) for n in INPLACE_UNARY + INPLACE_BINARY + METADATA + [
        "div_", "fill_", "clamp_", "masked_fill_", "setitem", "index_add_", "scatter_",
        "index_fill_", "index_copy_", "addcmul_", "lerp_", "pow_", "iadd_item", "set_data"]
        for g in (False, True)}
    assert views | writes | {"numpy", "compute", "rg", "plain", "param", "graph", "complex",
                             "complex_rg"} <= seen


# --- regression tests for what the programs found -------------------------------------------


@pytest.mark.parametrize("lib", [torch, ng], ids=["torch", "nodegrad"])
def test_a_view_changed_in_place_while_recording_stays_a_view_of_its_base(lib):
    """``v = x.unsqueeze(1); v.mul_(2)`` while recording, then a write through ``v`` under
    ``no_grad``: ``x`` shows it. The recorded op pointed ``v`` at its result's own array, so
    later writes through ``v`` (or ``x``) no longer reached the other: a silent wrong value."""
    x = lib.zeros(4)
    x.add_(lib.ones(4, requires_grad=True))
    v = x.unsqueeze(1)
    v.mul_(2.0)
    with lib.no_grad():
        v.copy_(lib.full((4, 1), -1.0))
    assert x.detach().numpy().tolist() == [-1.0] * 4
    y = lib.ones(2, 3, requires_grad=True) * 1.0
    s = y[:, 1:]
    s.mul_(3.0)
    with lib.no_grad():
        y.fill_(5.0)
    assert s.detach().numpy().tolist() == [[5.0, 5.0]] * 2
    w = lib.ones(2, 3, requires_grad=True)
    z = w * 1.0
    t = z.t()
    t.mul_(lib.full((3, 2), 2.0, requires_grad=True))
    (t * lib.tensor([[1.0, 2.0]] * 3, dtype=t.dtype)).sum().backward()
    assert w.grad.numpy().tolist() == [[2.0] * 3, [4.0] * 3]


@pytest.mark.parametrize("lib", [torch, ng], ids=["torch", "nodegrad"])
def test_a_view_given_other_memory_by_data_no_longer_follows_its_base(lib):
    """``v.data = t`` gives ``v`` other memory (PyTorch's); an in-place op recorded on its old
    base then made it a view of the base again, dropping ``t``'s values (a silent change)."""
    g = lib.ones(2, 3, requires_grad=True) * 1.0
    v = g[0]
    v.data = lib.zeros(3)
    g.neg_()
    assert v.detach().numpy().tolist() == [0.0] * 3
    assert g.detach().numpy().tolist() == [[-1.0] * 3] * 2
    g = lib.ones(2, 3, requires_grad=True) * 1.0  # and the other way round: its old views
    v = g[1]  # stay on the old memory
    g.data = lib.zeros(2, 3)
    v.mul_(lib.full((3,), 5.0, requires_grad=True))
    assert g.detach().numpy().tolist() == [[0.0] * 3] * 2
    assert v.detach().numpy().tolist() == [5.0] * 3


def test_shape_changes_in_place_that_views_could_not_follow_are_refused():
    """``x.t_()`` while a view of ``x`` made from its old shape is alive, or ``v.unsqueeze_()``
    of a view while recording: an in-place op recorded later on ``x`` rebuilds its views by
    the op that made them, now from the new shape (``x.select(1, 3)`` became a row of the
    transpose: silently other values; the unsqueeze was dropped: another shape). Where a
    recorded graph is involved nodegrad refuses both with a GradError naming the out-of-place
    op (PyTorch allows them); outside it the views keep their memory and stop following."""
    x = ng.zeros(4, 4)
    x.add_(ng.ones(4, 4, requires_grad=True))
    col = x.select(1, 3)
    with pytest.raises(ng.errors.GradError, match="t_: .*views of it are alive.*t\\(\\)"):
        x.t_()
    del col
    x.t_()  # no view alive: allowed, as before
    y = ng.ones(2, 3, requires_grad=True) * 1.0
    v = y[0:1]
    with pytest.raises(ng.errors.GradError, match="unsqueeze_: .*view.*unsqueeze\\(\\)"):
        v.unsqueeze_(1)
    base = ng.zeros(3, 1, 2)  # outside autograd (a dataset's row): allowed, as PyTorch's; the
    d = base.diagonal(0, 1, 2)  # view keeps the memory, and writes into the base reach it
    d.squeeze_(1)
    base.fill_(5.0)
    assert tuple(d.shape) == (3,) and d.tolist() == [5.0, 5.0, 5.0]
    rows = ng.arange(6.0).reshape(2, 3)
    first = rows[0]
    rows.t_()  # a plain tensor with a live view: allowed; the view keeps its memory
    assert first.tolist() == [0.0, 1.0, 2.0] and tuple(rows.shape) == (3, 2)
    z = ng.zeros(3)
    z.unsqueeze_(0)  # a tensor without views, as before
    assert tuple(z.shape) == (1, 3)


@pytest.mark.xfail(strict=False, reason="a recorded in-place op on a tensor in the graph points "
                   "it at new memory; NumPy arrays and detached handles of the old stay behind")
@pytest.mark.parametrize("case", ["numpy_after_two_ops", "data_numpy", "detach_base"])
def test_memory_handles_follow_recorded_inplace_ops(case):
    """As in PyTorch, every handle on a tensor's memory sees each in-place change."""
    if case == "numpy_after_two_ops":
        x = ng.zeros(2)
        a = x.numpy()
        x.copy_(ng.ones(2, requires_grad=True))  # the first: written into a (correct)
        x.mul_(ng.full((2,), 3.0, requires_grad=True))  # the second: a stays at 1
        assert a.tolist() == [3.0, 3.0]
    elif case == "data_numpy":
        y = ng.zeros(2, requires_grad=True) * 1.0
        a = y.data.numpy()
        y.add_(1.0)
        assert a.tolist() == [1.0, 1.0]
    else:
        g = ng.ones(2, requires_grad=True) * 1.5
        d = g.detach()
        d.sub_(ng.ones(2, requires_grad=True))  # g shows 0.5 (correct)
        d[:] = ng.full((2,), 7.0, requires_grad=True)  # g stays at 0.5
        assert g.detach().numpy().tolist() == [7.0, 7.0]


def test_changing_an_operand_of_a_product_by_a_constant_is_allowed():
    """``w = c * 1.5; c.mul_(2)``: the gradient of ``w`` reads only 1.5, so PyTorch saves
    nothing of ``c`` and allows it (nodegrad refused it: ``multiply`` checked both operands);
    an operand a gradient does read is still checked."""
    z = ng.ones(3, requires_grad=True)
    c = z * 1.0
    w = c * 1.5
    c.mul_(-0.5)
    (w.sum() + c.sum()).backward()
    assert z.grad.numpy().tolist() == [1.0] * 3
    y = ng.ones(3, requires_grad=True)
    a = y * 1.0
    b = a * y  # b's gradient for y reads a
    with ng.no_grad():
        a.mul_(2)
    with pytest.raises(ng.InplaceError, match="multiply"):
        b.sum().backward()
