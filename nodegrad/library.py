"""``torch.library``'s Python custom operators: :func:`custom_op` makes an op of a function that
computes outside the library (NumPy, SciPy, a hand-written kernel), with a backward, a fake
(shape and dtype) function, per-device kernels and a vmap rule registered on it.

``nodegrad.ops.<namespace>.<op_name>`` reaches it too, as ``torch.ops`` does. An op is an
:class:`~nodegrad.autograd.Function` underneath: its kernel runs without recording,
and ``register_autograd``'s ``setup_context``/``backward`` are the Function's, so ``grad``,
double backward (when backward uses differentiable ops) and ``vmap`` (``register_vmap``) work.

>>> import numpy as np, nodegrad as ng
>>> @ng.library.custom_op("mylib::numpy_sin", mutates_args=())
... def numpy_sin(x: ng.Tensor) -> ng.Tensor:
...     return ng.from_numpy(np.sin(x.numpy()))
>>> numpy_sin.register_autograd(lambda ctx, g: g * ctx.saved_tensors[0].cos(),
...                             setup_context=lambda ctx, inputs, output:
...                                 ctx.save_for_backward(*inputs))
>>> x = ng.tensor([0.0, 1.0], requires_grad=True)
>>> numpy_sin(x).sum().backward()
>>> x.grad
tensor([1.       , 0.5403023])
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable

from . import ops as _ops_package
from .autodiff import grad, no_grad
from .func.custom import Function
from .func.tree import tree_flatten
from .tensor import Tensor

__all__ = ["custom_op", "CustomOpDef", "register_fake", "register_autograd", "register_kernel",
           "register_vmap", "opcheck", "OpCheckError"]

_OPS: dict[str, CustomOpDef] = {}  # "namespace::name" -> op
_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor",
          "test_aot_dispatch_dynamic")


class OpCheckError(RuntimeError):
    """:func:`opcheck` found the op inconsistent with what it declares (PyTorch's name)."""


def _devices(device_types) -> tuple[str, ...]:
    if device_types is None:
        return ()
    kinds = (device_types,) if isinstance(device_types, str) else tuple(device_types)
    for d in kinds:
        if not isinstance(d, str):
            raise TypeError(f"custom_op: device_types must be strings such as 'cpu' or 'cuda', "
                            f"got {type(d).__name__}")
    return kinds


class CustomOpDef:
    """A custom op made by :func:`custom_op`: call it like the function it wraps."""

    def __init__(self, name: str, fn: Callable, mutates_args, device_types) -> None:
        ns, sep, short = name.partition("::")
        if not (sep and ns.isidentifier() and short.isidentifier()):
            raise ValueError(f"custom_op: the name must be 'namespace::op_name' with two Python "
                             f"identifiers, got {name!r}")
        if mutates_args != "unknown" and (isinstance(mutates_args, str)
                                         or not isinstance(mutates_args, Iterable)):
            raise TypeError(f"custom_op({name!r}): mutates_args must be a tuple of argument "
                            f"names (() when none is changed) or 'unknown', got {mutates_args!r}")
        self._name, self._init_fn = name, fn
        self._sig = inspect.signature(fn)
        params = self._sig.parameters
        self._mutates = tuple(params) if mutates_args == "unknown" else tuple(mutates_args)
        for m in self._mutates:
            if m not in params:
                raise ValueError(f"custom_op({name!r}): mutates_args names {m!r}, which is not "
                                 f"an argument of {fn.__name__}{self._sig}")
        self._keyword_only = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
        self._kernels = {d: fn for d in _devices(device_types)}
        self._default = fn if device_types is None else None
        self._fake: Callable | None = None
        self._backward: Callable | None = None
        self._setup_context: Callable | None = None
        self._vmap: Callable | None = None
        self._fn_class = self._function_class()
        self.__name__ = short
        self.__doc__ = fn.__doc__
        self.default = self  # torch.ops.<ns>.<op>.default: the one overload

    def __repr__(self) -> str:
        return f"<CustomOpDef({self._name})>"

    # --- registration ---------------------------------------------------------------------
    def register_kernel(self, device_types, fn: Callable | None = None):
        """Use ``fn`` for inputs on ``device_types`` ('cpu', 'cuda'); a decorator without it."""
        def register(f: Callable) -> Callable:
            for d in _devices(device_types):
                self._kernels[d] = f
            return f

        return register if fn is None else register(fn)

    def register_fake(self, fn: Callable) -> Callable:
        """The op's shape function: given the inputs, outputs of the right shape and dtype
        without computing values (``empty_like``, ``new_empty``); :func:`opcheck` checks it."""
        self._fake = fn
        return fn

    def register_autograd(self, backward: Callable, /, *,
                          setup_context: Callable | None = None) -> None:
        """``backward(ctx, *grads)`` returns one gradient per input of the op (None for one with
        none); ``setup_context(ctx, inputs, output)`` saves what it needs, as in a Function."""
        if not callable(backward) or (setup_context is not None and not callable(setup_context)):
            raise TypeError(f"{self._name}.register_autograd: expected functions, got "
                            f"{type(backward).__name__} and {type(setup_context).__name__}")
        self._backward, self._setup_context = backward, setup_context

    def register_vmap(self, func: Callable | None = None):
        """``func(info, in_dims, *args) -> (outputs, out_dims)`` batches the op under ``vmap``
        (the Function's ``vmap`` staticmethod); a decorator without ``func``."""
        def register(f: Callable) -> Callable:
            self._vmap = f
            return f

        return register if func is None else register(func)

    # --- calling ------------------------------------------------------------------------------
    def _split(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """The positional arguments (defaults filled in, also those given by keyword) and the
        keyword-only ones, as PyTorch hands them to the kernel and to ``setup_context``."""
        try:
            bound = self._sig.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{self._name}: the arguments do not fit {self._sig}: {e}") from None
        bound.apply_defaults()
        pos = tuple(v for n, v in bound.arguments.items() if n not in self._keyword_only)
        return pos, {n: v for n, v in bound.arguments.items() if n in self._keyword_only}

    def _call_kernel(self, args: tuple, kw: dict):
        """The kernel for the inputs' device, run without recording."""
        leaves = [t for t in tree_flatten([list(args), kw])[0] if isinstance(t, Tensor)]
        device = str(leaves[0].device).split(":")[0] if leaves else "cpu"
        kernel = self._kernels.get(device, self._default)
        if kernel is None:
            raise NotImplementedError(f"{self._name}: no kernel for device {device!r}; register "
                                      "one with register_kernel")
        with no_grad():
            out = kernel(*args, **kw)
        named = dict(zip([n for n in self._sig.parameters if n not in self._keyword_only], args))
        named.update(kw)
        for n in self._mutates:
            for t in tree_flatten([named.get(n)])[0]:
                if isinstance(t, Tensor):
                    t._bump()  # changed in place: a backward that saved it now refuses
        return out

    def _function_class(self) -> type:
        op = self

        def forward(*args):
            return op._call_kernel(args[:-1], args[-1])

        def setup_context(ctx, inputs, output):
            if op._setup_context is None:
                return
            if op._keyword_only:
                op._setup_context(ctx=ctx, inputs=inputs[:-1], keyword_only_inputs=inputs[-1],
                                  output=output)
            else:
                op._setup_context(ctx=ctx, inputs=inputs[:-1], output=output)

        def backward(ctx, *grads):
            if op._backward is None:
                raise RuntimeError(f"Trying to backward through {op._name} but no autograd "
                                   "formula was registered. Please use register_autograd to "
                                   "add one.")
            needs = ctx.needs_input_grad
            ctx.needs_input_grad = needs[:-1]
            try:
                res = op._backward(ctx, *grads)
            finally:
                ctx.needs_input_grad = needs
            return (*res, None) if isinstance(res, tuple) else (res, None)

        def vmap(info, in_dims, *args):
            if op._vmap is None:
                raise NotImplementedError(f"{op._name}: vmap over this custom op needs a rule; "
                                          "register one with register_vmap")
            kw = args[-1]
            return op._vmap(info, in_dims[:-1], *args[:-1], **kw)

        ns = {"forward": staticmethod(forward), "setup_context": staticmethod(setup_context),
              "backward": staticmethod(backward), "vmap": staticmethod(vmap)}
        return type(self._name.replace("::", "_"), (Function,), ns)

    def __call__(self, *args, **kwargs):
        pos, kw = self._split(args, kwargs)
        return self._fn_class.apply(*pos, kw)


class _Namespace:
    """``torch.ops.<namespace>``: the custom ops made under one namespace, by name."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, op: str) -> CustomOpDef:
        found = _OPS.get(f"{self._name}::{op}")
        if found is None:
            raise AttributeError(f"ops.{self._name} has no op {op!r}; make it with "
                                 f"custom_op('{self._name}::{op}', ...)")
        return found


def _publish(name: str) -> None:
    """Make ``nodegrad.ops.<namespace>.<op>`` reach the op, as ``torch.ops`` does."""
    ns = name.partition("::")[0]
    current = getattr(_ops_package, ns, None)
    if current is None:
        setattr(_ops_package, ns, _Namespace(ns))
    elif not isinstance(current, _Namespace):
        raise ValueError(f"custom_op({name!r}): the namespace {ns!r} is the name of "
                         f"nodegrad.ops.{ns}; choose another namespace")


def custom_op(name: str, fn: Callable | None = None, /, *, mutates_args,
              device_types: str | Iterable[str] | None = None, schema: str | None = None):
    """Wrap ``fn`` as the custom op ``name`` ("namespace::op_name"), as
    ``torch.library.custom_op``; a decorator without ``fn``. ``mutates_args`` names the
    arguments ``fn`` changes in place (``()`` for none); ``device_types`` limits ``fn`` to those
    devices (others need :meth:`CustomOpDef.register_kernel`). ``schema`` is accepted and not
    read (the signature comes from ``fn``)."""
    def wrap(f: Callable) -> CustomOpDef:
        if not callable(f):
            raise TypeError(f"custom_op({name!r}): expected a function, got {type(f).__name__}")
        op = CustomOpDef(name, f, mutates_args, device_types)
        _publish(name)
        _OPS[name] = op
        return op

    return wrap if fn is None else wrap(fn)


def _op(op, what: str) -> CustomOpDef:
    if isinstance(op, CustomOpDef):
        return op
    if isinstance(op, str) and op in _OPS:
        return _OPS[op]
    raise ValueError(f"{what}: expected a custom op or the name of one made by custom_op, got "
                     f"{op!r}")


def register_fake(op, func: Callable | None = None, /, **_):
    """``torch.library.register_fake`` for an op made by :func:`custom_op` (or its name)."""
    target = _op(op, "register_fake")
    return target.register_fake if func is None else target.register_fake(func)


def register_autograd(op, backward: Callable, /, *, setup_context: Callable | None = None,
                      **_) -> None:
    """``torch.library.register_autograd`` for an op made by :func:`custom_op` (or its name)."""
    _op(op, "register_autograd").register_autograd(backward, setup_context=setup_context)


def register_kernel(op, device_types, func: Callable | None = None, /, **_):
    """``torch.library.register_kernel`` for an op made by :func:`custom_op` (or its name)."""
    return _op(op, "register_kernel").register_kernel(device_types, func)


def register_vmap(op, func: Callable | None = None, /, **_):
    """``torch.library.register_vmap`` for an op made by :func:`custom_op` (or its name)."""
    return _op(op, "register_vmap").register_vmap(func)


def _tensors(x) -> list:
    return [t for t in tree_flatten(x if isinstance(x, list | tuple) else [x])[0]
            if isinstance(t, Tensor)]


def opcheck(op, args: tuple, kwargs: dict | None = None, *, test_utils=_TESTS,
            raise_exception: bool = True, atol=None, rtol=None) -> dict[str, str]:
    """Check that a custom op behaves as it declares, as ``torch.library.opcheck``: a dict of
    'SUCCESS' (or, with ``raise_exception=False``, the OpCheckError) per test.
    ``test_schema``: only the arguments in ``mutates_args`` change; ``test_faketensor``: the
    fake function's outputs have the real ones' shapes and dtypes (an op returning nothing
    needs none); ``test_aot_dispatch_dynamic``: a second call gives the same values, and where
    inputs require grad the backward runs and gives gradients shaped like them. Gradient
    values are :func:`nodegrad.autograd.gradcheck`'s job."""
    target = _op(op, "opcheck")
    kwargs = dict(kwargs or {})
    tests = (test_utils,) if isinstance(test_utils, str) else tuple(test_utils)
    for t in tests:
        if t not in _TESTS:
            raise ValueError(f"opcheck: unknown test {t!r}; expected some of {_TESTS}")
    results: dict[str, str] = {}
    for t in tests:
        try:
            getattr(_Checks(target, args, kwargs), t)()
            results[t] = "SUCCESS"
        except OpCheckError as e:
            if raise_exception:
                raise
            results[t] = e  # the exception itself, as PyTorch's
    return results


class _Checks:
    def __init__(self, op: CustomOpDef, args: tuple, kwargs: dict) -> None:
        self.op, self.args, self.kwargs = op, args, kwargs

    def _fresh(self) -> tuple[tuple, dict]:
        """Copies of the arguments (tensors cloned, requires_grad kept), so each test starts
        from the same values."""
        def copy(v):
            if isinstance(v, Tensor):
                c = v.detach().clone()
                return c.requires_grad_() if v.requires_grad else c
            if isinstance(v, list | tuple):
                return type(v)(copy(x) for x in v)
            return v

        return tuple(copy(a) for a in self.args), {k: copy(v) for k, v in self.kwargs.items()}

    def test_schema(self) -> None:
        args, kwargs = self._fresh()
        bound = self.op._sig.bind(*args, **kwargs)
        before = {n: [t.numpy().copy() for t in _tensors(v)] for n, v in bound.arguments.items()}
        with no_grad():
            self.op(*args, **kwargs)
        for n, v in bound.arguments.items():
            if n in self.op._mutates:
                continue
            was = before[n]
            for t, w in zip(_tensors(v), was):
                if t.shape != w.shape or not (t.numpy() == w).all():
                    raise OpCheckError(f"opcheck({self.op._name}): argument {n!r} was changed "
                                       "in place but is not in mutates_args")

    def test_autograd_registration(self) -> None:
        """A custom op always has an autograd entry (its Function): whether a backward was
        registered shows when one runs (test_aot_dispatch_dynamic), as in PyTorch."""
        self._fresh()

    def test_faketensor(self) -> None:
        args, kwargs = self._fresh()
        with no_grad():
            real = _tensors(self.op(*args, **kwargs))
            if self.op._fake is None:
                if not real:  # an op that only changes its arguments needs none (PyTorch's)
                    return
                raise OpCheckError(f"opcheck({self.op._name}): no fake function; register one "
                                   "with register_fake")
            fake = _tensors(self.op._fake(*args, **kwargs))
        got = [(tuple(t.shape), t.dtype) for t in fake]
        want = [(tuple(t.shape), t.dtype) for t in real]
        if got != want:
            raise OpCheckError(f"opcheck({self.op._name}): the fake function gives outputs "
                               f"{got}, the op {want} (shape, dtype)")

    def test_aot_dispatch_dynamic(self) -> None:
        args, kwargs = self._fresh()
        with no_grad():
            first = [t.numpy().copy() for t in _tensors(self.op(*args, **kwargs))]
        args, kwargs = self._fresh()
        outs = _tensors(self.op(*args, **kwargs))
        again = [t.detach().numpy() for t in outs]
        if len(first) != len(again) or any(a.shape != b.shape or not ((a == b) | (a != a)).all()
                                           for a, b in zip(first, again)):
            raise OpCheckError(f"opcheck({self.op._name}): two calls on the same inputs gave "
                               "different outputs")
        ins = [t for t in _tensors(list(args) + list(kwargs.values())) if t.requires_grad]
        live = [o for o in outs if o.requires_grad]
        if not ins or not live:
            return
        try:
            grads = grad(live, ins, [o.detach() * 0 + 1 for o in live], allow_unused=True)
        except RuntimeError as e:
            raise OpCheckError(f"opcheck({self.op._name}): the backward failed: {e}") from e
        for t, g in zip(ins, grads):
            if g is not None and tuple(g.shape) != tuple(t.shape):
                raise OpCheckError(f"opcheck({self.op._name}): backward gave a gradient of "
                                   f"shape {tuple(g.shape)} for an input of shape "
                                   f"{tuple(t.shape)}")
