"""Primitives: one declaration per operation, and ``bind``, which runs and records it.

A primitive carries its name, its forward on backend arrays (it receives ``xp``), its VJP rules
written with differentiable tensor operations (so ``create_graph=True`` gives higher orders and
nothing is recorded otherwise), what its node must keep (``saves``), and slots for a JVP rule
and a batching rule. Parameters such as ``axis`` are keywords, kept hashable where possible.
"""

from __future__ import annotations

from collections.abc import Callable

from . import _backend as B
from .autodiff import Node, anomaly_error, creation_site, mode
from .errors import AnomalyError, DeviceError, DTypeError, ShapeError
from .tensor import Tensor

REGISTRY: dict[str, Primitive] = {}
_SAVES = {"inputs": (True, False), "out": (False, True), "both": (True, True),
          "none": (False, False)}


class Primitive:
    """The record of one operation. Call it like a function: ``exp(x)``."""

    def __init__(self, name, fwd, vjp, vjp_all, jvp, batch, kind, saves, promote, doc):
        self.name = name
        self.fwd = fwd
        self.vjp = vjp
        self.vjp_all = vjp_all
        self.jvp = jvp
        self.batch = batch
        self.kind = kind
        self.save_in, self.save_out = _SAVES[saves]
        self.promote = promote
        self.__doc__ = doc

    @property
    def differentiable(self) -> bool:
        return self.vjp is not None or self.vjp_all is not None

    def __call__(self, *args, **params):
        return bind(self, args, params)

    def __repr__(self) -> str:
        return f"<primitive {self.name}>"


def primitive(name: str, fwd: Callable, vjp=None, *, vjp_all: Callable | None = None,
              saves: str = "inputs", kind: str | None = None, jvp=None, batch=None,
              promote: bool = True, doc: str | None = None) -> Primitive:
    """Declare and register a primitive.

    ``vjp`` is one rule ``(g, ans, *inputs, **params) -> cotangent`` per input (a bare callable
    for a one-input op, None for an input without gradient); ``vjp_all`` instead returns all
    cotangents at once, for variadic ops. ``saves`` names what the VJP reads: ``"inputs"``,
    ``"out"``, ``"both"`` or ``"none"`` (then it receives shape-only specs). ``kind``
    ("elementwise", "reduce", "shape", ...) lets later transforms derive batching rules.
    """
    if name in REGISTRY:
        raise ValueError(f"primitive {name!r} is declared twice")
    if callable(vjp):
        vjp = (vjp,)
    p = Primitive(name, fwd, vjp, vjp_all, jvp, batch, kind, saves, promote, doc)
    REGISTRY[name] = p
    return p


def _device_error(prim, a, b) -> DeviceError:
    return DeviceError(f"{prim.name}: operands are on different devices ({a.name} and {b.name}); "
                       "move them with .to(device) first")


def _shape_error(prim, datas, params, e) -> ShapeError:
    shapes = ", ".join(str(tuple(d.shape)) if hasattr(d, "shape") else repr(d) for d in datas)
    ps = "".join(f", {k}={v!r}" for k, v in params.items() if k != "index")
    return ShapeError(f"{prim.name}: cannot apply to shapes {shapes}{ps}: {e}")


def bind(prim: Primitive, args: tuple, params: dict):
    """Run ``prim`` on ``args`` and, when a gradient may be needed, record a Node for it."""
    backend = None
    fdt = None
    record = False
    datas = []
    for a in args:
        if isinstance(a, Tensor):
            d = a.data
            b = B.CPU if type(d) is B.ndarray else B.backend_of(d)
            if a.requires_grad:
                record = True
        elif a is None or type(a) is float or type(a) is int or type(a) is bool:
            datas.append(a)
            continue
        elif B.is_array(a):
            d = a
            b = B.backend_of(d)
        elif isinstance(a, B.generic):
            datas.append(a.item())
            continue
        else:
            raise TypeError(f"{prim.name}: expected tensors or numbers, got {type(a).__name__}")
        if backend is None:
            backend = b
        elif b is not backend:
            raise _device_error(prim, backend, b)
        dt = d.dtype
        if dt.kind == "f":
            if fdt is None:
                fdt = dt
            elif dt != fdt:
                raise DTypeError(
                    f"{prim.name}: mixed float dtypes {fdt} and {dt}; nodegrad never promotes "
                    "silently, convert one explicitly (x.astype(...), .float(), .double())")
        datas.append(d)
    if backend is None:
        backend = B.CPU
    try:
        out = prim.fwd(backend.xp, *datas, **params)
    except ValueError as e:
        raise _shape_error(prim, datas, params, e) from e
    if type(out) is not backend.array_type and not B.is_array(out):
        out = backend.asarray(out)  # NumPy returns scalars from some 0-d ops
    if prim.promote and fdt is None and out.dtype == B.float64:
        out = out.astype(B.DEFAULT_FLOAT)  # ints and Python floats give float32, as PyTorch
    if mode.anomaly and out.dtype.kind == "f" and not bool(backend.xp.isfinite(out).all()):
        bad = any(d.dtype.kind == "f" and not bool(backend.xp.isfinite(d).all())
                  for d in datas if hasattr(d, "dtype"))
        if not bad:
            if mode.in_backward is not None:
                raise anomaly_error(mode.in_backward, f"'{prim.name}' step")
            raise AnomalyError(f"forward of '{prim.name}' produced NaN/Inf from finite inputs "
                               f"at {creation_site()}")
    if not (record and mode.grad_enabled) or out.dtype.kind != "f" or (
            prim.vjp is None and prim.vjp_all is None):
        return Tensor(out)
    return _record(prim, args, datas, params, out)


def _record(prim: Primitive, args: tuple, datas: list, params: dict, out) -> Tensor:
    parents = []
    shapes = []
    versions = [] if prim.save_in or prim.save_out else None
    for a, d in zip(args, datas):
        if isinstance(a, Tensor):
            parents.append((a.node or a) if a.requires_grad else None)
            shapes.append(d.shape)
            if prim.save_in:
                cell = a._ensure_version()
                versions.append((cell, cell[0]))
        else:
            parents.append(None)
            shapes.append(())
    node = Node(prim, params, tuple(parents), args if prim.save_in else None,
                out if prim.save_out else None, tuple(shapes), versions)
    t = Tensor(out, node, True)
    if prim.save_out:
        cell = t._version = [0]
        versions.append((cell, 0))
    if mode.anomaly:
        node.trace = creation_site()
    return t


__all__ = ["Primitive", "primitive", "bind", "REGISTRY"]
