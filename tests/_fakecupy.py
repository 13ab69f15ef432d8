"""A stand-in for CuPy on the CPU, so that CI (which has no GPU) runs the code paths of a second
device: arrays of another type that NumPy will not take implicitly, as CuPy's are.

``installed()`` makes ``nodegrad`` see one CUDA device whose arrays are :class:`ndarray` wrappers
around NumPy arrays. Like CuPy's they refuse implicit conversion (``np.asarray(x)`` raises
TypeError: ``.get()`` copies to the host), refuse to mix with NumPy arrays in one ufunc, give
0-d arrays where NumPy gives scalars (``x.sum()``), and have no ``accumulate`` for maximum,
minimum and logaddexp. They catch what a GPU run would: arrays left on the host, host-only
calls on device arrays. CuPy's kernels (``ElementwiseKernel``, ``ReductionKernel``) raise
NotImplementedError, so programs that would compile them run unfused here, and optimisers take
their update of separate calls.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types

import numpy as np

from nodegrad import _backend as B


def _unwrap(x):
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, tuple):
        return tuple(_unwrap(v) for v in x)
    if isinstance(x, list):
        return [_unwrap(v) for v in x]
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _wrap(x):
    if isinstance(x, np.ndarray | np.generic) and not isinstance(x, np.dtype):
        return ndarray(np.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


def _no_host_arrays(args, what: str) -> None:
    for a in args:
        if isinstance(a, np.ndarray):
            raise TypeError(f"Unsupported type {type(a)} in {what} (a host array on the "
                            "device)")
        if isinstance(a, tuple | list):
            _no_host_arrays(a, what)


class _Context:
    """A context manager that does nothing, with a ``synchronize`` that returns at once."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self) -> None:
        pass


class _Device(_Context):
    id = 0

    def __init__(self, device_id: int = 0):
        self.id = device_id


DEVICE = _Device()


class ndarray:  # CuPy's name
    """A device array: a NumPy array inside, reached only through this type's methods."""

    __slots__ = ("_a",)
    __array_priority__ = 100

    def __init__(self, a: np.ndarray):
        self._a = a

    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use "
                        "`.get()` to construct a NumPy array explicitly.")

    def get(self, stream=None, out=None):
        return np.array(self._a, copy=True)

    @property
    def device(self):
        return DEVICE

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self._a.ctypes.data)

    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T))
    real = property(lambda self: ndarray(self._a.real))
    imag = property(lambda self: ndarray(self._a.imag))
    base = property(lambda self: None if self._a.base is None else ndarray(self._a.base))

    def diagonal(self, offset=0, axis1=0, axis2=1):  # CuPy's diagonal is a writable view
        d = self._a.diagonal(offset, axis1, axis2)
        if self._a.flags.writeable:
            d.flags.writeable = True
        return ndarray(d)

    def __getattr__(self, name):
        attr = getattr(self._a, name)
        if not callable(attr):
            return _wrap(attr)

        def method(*args, **kwargs):
            return _wrap(attr(*_unwrap(args), **_unwrap(kwargs)))

        return method

    def __repr__(self) -> str:
        return f"fakecupy.{self._a!r}"

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self):
        return (_wrap(v) for v in self._a)

    def __bool__(self) -> bool:
        return bool(self._a)

    def __float__(self) -> float:
        return float(self._a)

    def __int__(self) -> int:
        return int(self._a)

    def __complex__(self) -> complex:
        return complex(self._a)

    def item(self):
        return self._a.item()

    def tolist(self):
        return self._a.tolist()

    def __getitem__(self, key):  # host index arrays are taken, as CuPy takes them
        return _wrap(self._a[_unwrap(key)])

    def __setitem__(self, key, value):
        self._a[_unwrap(key)] = _unwrap(value)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        _no_host_arrays(inputs, ufunc.__name__)
        if "out" in kwargs:
            kwargs["out"] = _unwrap(kwargs["out"])
        res = getattr(ufunc, method)(*_unwrap(inputs), **kwargs)
        return _wrap(res)

    def __array_function__(self, func, types_, args, kwargs):
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    def __copy__(self):
        return ndarray(self._a.copy())

    def __deepcopy__(self, memo):
        return ndarray(self._a.copy())

    def __reduce__(self):
        raise TypeError("fake device arrays do not pickle")


def _binary(ufunc, reflected=False, inplace=False):
    def op(self, other):
        _no_host_arrays([other], ufunc.__name__)
        a, b = self._a, _unwrap(other)
        if inplace:
            ufunc(a, b, out=a)
            return self
        return _wrap(ufunc(b, a) if reflected else ufunc(a, b))
    return op


for _name, _uf in [("add", np.add), ("sub", np.subtract), ("mul", np.multiply),
                   ("truediv", np.true_divide), ("floordiv", np.floor_divide),
                   ("mod", np.remainder), ("pow", np.power), ("matmul", np.matmul),
                   ("and", np.bitwise_and), ("or", np.bitwise_or), ("xor", np.bitwise_xor),
                   ("lshift", np.left_shift), ("rshift", np.right_shift)]:
    setattr(ndarray, f"__{_name}__", _binary(_uf))
    setattr(ndarray, f"__r{_name}__", _binary(_uf, reflected=True))
    setattr(ndarray, f"__i{_name}__", _binary(_uf, inplace=True))
for _name, _uf in [("lt", np.less), ("le", np.less_equal), ("gt", np.greater),
                   ("ge", np.greater_equal), ("eq", np.equal), ("ne", np.not_equal)]:
    setattr(ndarray, f"__{_name}__", _binary(_uf))
for _name, _uf in [("neg", np.negative), ("pos", np.positive), ("abs", np.absolute),
                   ("invert", np.invert)]:
    setattr(ndarray, f"__{_name}__", lambda self, _uf=_uf: _wrap(_uf(self._a)))
ndarray.__hash__ = None


class _Ufunc:
    """A NumPy ufunc on device arrays; ``accumulate`` only where CuPy has it."""

    def __init__(self, uf):
        self._uf = uf
        self.__name__ = uf.__name__

    def __call__(self, *args, **kwargs):
        _no_host_arrays(args, self.__name__)
        if "out" in kwargs:
            kwargs["out"] = _unwrap(kwargs["out"])
        return _wrap(self._uf(*_unwrap(args), **kwargs))

    def at(self, a, index, values=None):
        args = (_unwrap(index),) if values is None else (_unwrap(index), _unwrap(values))
        self._uf.at(a._a, *args)

    def reduce(self, *args, **kwargs):
        return _wrap(self._uf.reduce(*_unwrap(args), **_unwrap(kwargs)))

    def accumulate(self, *args, **kwargs):
        if self.__name__ in ("maximum", "minimum", "logaddexp"):
            raise NotImplementedError(f"`cupy_{self.__name__}.accumulate` is not supported yet")
        return _wrap(self._uf.accumulate(*_unwrap(args), **_unwrap(kwargs)))

    def outer(self, *args, **kwargs):
        return _wrap(self._uf.outer(*_unwrap(args), **_unwrap(kwargs)))

    def __getattr__(self, name):
        return getattr(self._uf, name)


class _Namespace(types.ModuleType):
    """NumPy (or one of its submodules) over device arrays."""

    def __init__(self, name: str, inner):
        super().__init__(name)
        self._inner = inner

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if isinstance(attr, np.ufunc):
            return _Ufunc(attr)
        if isinstance(attr, types.ModuleType):
            return _Namespace(f"{self.__name__}.{name}", attr)
        if isinstance(attr, type) or not callable(attr):
            return attr

        def fn(*args, **kwargs):
            _no_host_arrays(args, name)
            return _wrap(attr(*_unwrap(args), **_unwrap(kwargs)))

        fn.__name__ = name
        return fn


def _to_device(x, dtype=None, copy=None):
    if isinstance(x, ndarray):
        return x if dtype is None or x.dtype == dtype else ndarray(x._a.astype(dtype))
    return ndarray(np.array(x, dtype=dtype, copy=True))


class _Stream(_Context):
    ptr = 0

    def __init__(self, non_blocking: bool = False):
        pass


class _Generator:
    """CuPy's generator over device arrays (a NumPy generator underneath)."""

    def __init__(self, seed):
        self._g = np.random.default_rng(seed)

    def __getattr__(self, name):
        if name == "permutation":  # CuPy's generator has none
            raise AttributeError(name)
        attr = getattr(self._g, name)
        if not callable(attr):
            return attr

        def draw(*args, **kwargs):
            return _wrap(np.asarray(attr(*_unwrap(args), **_unwrap(kwargs))))

        return draw


def _unavailable(*args, **kwargs):
    raise NotImplementedError("the fake device compiles no CUDA kernels")


def _module() -> types.ModuleType:
    m = _Namespace("fakecupy", np)
    m.ndarray = ndarray
    m.asarray = _to_device
    m.array = lambda x, dtype=None, copy=True, **k: ndarray(np.array(_unwrap(x), dtype=dtype,
                                                                     copy=True))
    m.ascontiguousarray = lambda x, dtype=None: ndarray(np.ascontiguousarray(_unwrap(x), dtype))
    m.asnumpy = lambda x: x.get() if isinstance(x, ndarray) else np.asarray(x)
    m.from_dlpack = lambda obj: ndarray(np.from_dlpack(obj))
    m.ElementwiseKernel = m.ReductionKernel = m.RawKernel = _unavailable
    m.get_default_memory_pool = lambda: types.SimpleNamespace(
        total_bytes=lambda: 0, used_bytes=lambda: 0, free_all_blocks=lambda: None)
    m.get_default_pinned_memory_pool = lambda: types.SimpleNamespace(
        free_all_blocks=lambda: None)
    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1, deviceSynchronize=lambda: None,
                                    getDevice=lambda: 0)
    m.cuda = types.SimpleNamespace(Device=_Device, runtime=runtime, Stream=_Stream,
                                   get_current_stream=lambda: _Stream())
    m.random = types.SimpleNamespace(default_rng=_Generator)
    m.__version__ = "fake"
    return m


# the functions of cupyx.scipy.special that nodegrad's special functions call
_SPECIAL_FUNCTIONS = ("gammaln", "digamma", "polygamma", "erfc", "erfcx", "i0", "i0e", "i1",
                      "i1e", "ndtr", "ndtri", "log_ndtr", "entr", "gammainc", "gammaincc",
                      "zeta", "j0", "j1", "y0", "y1", "k0", "k1", "k0e", "k1e")


def _host_function(f):
    """``f`` on the host values of device arrays, its result back on the device."""
    return lambda *args: _wrap(f(*_unwrap(args)))


def _cupyx() -> dict:
    special = types.ModuleType("cupyx.scipy.special")
    import scipy.special as sp

    special.erf = lambda x: _wrap(sp.erf(_unwrap(x)))
    special.erfinv = lambda x: _wrap(sp.erfinv(_unwrap(x)))
    for name in _SPECIAL_FUNCTIONS:
        setattr(special, name, _host_function(getattr(sp, name)))
    scipy_ = types.ModuleType("cupyx.scipy")
    scipy_.special = special
    cupyx = types.ModuleType("cupyx")
    cupyx.scipy = scipy_
    return {"cupyx": cupyx, "cupyx.scipy": scipy_, "cupyx.scipy.special": special}


def _ce_kernels():
    """NumPy forms of ``_backend._ce_cuda_kernels``' three CUDA kernels, with their arguments
    and results (the CUDA sources themselves run only on a GPU)."""
    def sumexp(x, m, axis, keepdims):
        return _wrap(np.exp(x._a - m._a).sum(axis=axis, keepdims=keepdims))

    def rows(x, m, s, t, c, ignore):
        x, m, s, t = (_unwrap(v) for v in (x, m, s, t))
        k = t != ignore
        picked = x.reshape(-1)[np.arange(len(t)) * c + np.where(k, t, 0)]
        loss = np.where(k, np.log(s) + m - picked, 0).astype(x.dtype)
        return _wrap(loss), _wrap(k.astype(x.dtype))

    def grad(x, m, s, t, w, c, ignore):
        x, m, s, t, w = (_unwrap(v) for v in (x, m, s, t, w))
        g = (np.exp(x - m) / s - (np.arange(c) == t)) * w
        return _wrap(np.where(t == ignore, 0, g).astype(x.dtype))

    return sumexp, rows, grad


def _gru_kernel():
    """The NumPy form of ``_backend._gru_cuda_kernel`` (the GRU step's CUDA kernel), writing
    its four outputs in place as the kernel does."""
    def step(gir, giz, ghn, gin, h, r, zc, n, h1):
        gir, giz, ghn, gin, h, r, zc, n, h1 = (
            _unwrap(v) for v in (gir, giz, ghn, gin, h, r, zc, n, h1))
        half = r.dtype.type(0.5)
        a = np.tanh(r + gir) * half + half
        b = np.tanh(zc + giz) * half + half
        c = np.tanh(ghn * a + gin)
        r[...], zc[...], n[...] = a, b, c
        h1[...] = (c - h) * b + h

    return step


def _im2col_kernel(dtype):
    """The NumPy form of ``_backend._im2col_cuda_kernel``'s raw kernel, called as CuPy calls
    one ((grid), (block), arguments): the same index arithmetic over the raw input's memory."""
    def im2col(grid, block, args):
        x, y, total, kc, c, k1, p0, p1, h, w, s0, s1, q0, q1, d0, d1, sn, sc, sh, sw = (
            _unwrap(a) for a in args)
        i = np.arange(int(total))
        col, row = i % kc, i // kc
        ci, t = col % c, col // c
        kb, ka = t % k1, t // k1
        pj, r2 = row % p1, row // p1
        pi, nn = r2 % p0, r2 // p0
        hh, ww = pi * s0 - q0 + ka * d0, pj * s1 - q1 + kb * d1
        inside = (hh >= 0) & (hh < h) & (ww >= 0) & (ww < w)
        flat = x.reshape(-1)  # C-ordered in some axis order: the flat index is the offset
        at = np.where(inside, nn * sn + ci * sc + hh * sh + ww * sw, 0)
        y.reshape(-1)[...] = np.where(inside, flat[at], 0)

    return im2col


def _targets_kernel():
    """The NumPy form of ``_backend._targets_cuda_kernel`` (a 0-d count, as CuPy's reduction
    gives)."""
    def count(t, c, ignore, skip):
        t = _unwrap(t)
        bad = ((t < 0) | (t >= c)) & ~(skip & (t == ignore))
        return _wrap(np.asarray(bad.sum(), np.int64))

    return count


def _gru_loops(dtype, dh):
    """NumPy forms of ``_backend._gru_loop_kernels``' two CUDA kernels (the GRU's time loops),
    called as CuPy calls a raw kernel: (grid, block, arguments)."""
    def forward(grid, block, args):
        loop, gis, wf, steps, _ = _unwrap(args)
        half = loop.dtype.type(0.5)
        for s in range(int(steps)):
            g3, gi, h = wf @ loop[s, :dh + 1], gis[s].reshape(3, dh, -1), loop[s, :dh]
            a = np.tanh(g3[:dh] + gi[0]) * half + half
            z = np.tanh(g3[dh:2 * dh] + gi[1]) * half + half
            c = np.tanh(g3[2 * dh:] * a + gi[2])
            loop[s, dh + 1:] = np.concatenate([a, z, g3[2 * dh:], c])
            loop[s + 1, :dh] = (c - h) * z + h

    def reverse(grid, block, args):
        o, dh_, m, steps, _ = _unwrap(args)
        for s in reversed(range(int(steps))):
            o[s, 1:] *= dh_
            dh_[...] = m @ o[s, :5].reshape(5 * dh, -1)

    return forward, reverse


@contextlib.contextmanager
def installed():
    """nodegrad with the fake device as its one CUDA device (and CuPy's state restored)."""
    fused = importlib.import_module("nodegrad.optim._fused")
    rnd = importlib.import_module("nodegrad.random")
    generators = dict(rnd._default)  # device generators on each side stay on their side
    saved = B._cupy, dict(B._cuda), {k: sys.modules.get(k) for k in _cupyx()}, fused.available
    for name in [k for k in rnd._default if k != "cpu"]:
        del rnd._default[name]
    B._cupy = _module()
    B._cuda.clear()
    sys.modules.update(_cupyx())
    # the optimisers' CUDA kernels cannot run here: their NumPy-style update instead
    fused.available = lambda backend, dtype: backend.device_id is None and saved[3](backend,
                                                                                    dtype)
    kernels = {"_ce_cuda_kernels": _ce_kernels, "_gru_cuda_kernel": _gru_kernel,
               "_gru_loop_kernels": _gru_loops, "_im2col_cuda_kernel": _im2col_kernel,
               "_targets_cuda_kernel": _targets_kernel}
    saved_kernels = {k: getattr(B, k) for k in kernels}
    for k, form in kernels.items():
        setattr(B, k, form)
    try:
        yield
    finally:
        rnd._default.clear()
        rnd._default.update(generators)
        fused.available = saved[3]
        for k, v in saved_kernels.items():
            setattr(B, k, v)
        B._cupy = saved[0]
        B._cuda.clear()
        B._cuda.update(saved[1])
        for k, v in saved[2].items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v

