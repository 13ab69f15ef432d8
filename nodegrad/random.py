"""Random numbers: seeded generators per device and the sampling creation functions.

``manual_seed(s)`` makes every later draw reproducible on a device. Float samples are drawn in
their target dtype (float32 by default) so no float64 temporaries appear.
"""

from __future__ import annotations

import math
import operator
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from . import _backend as B
from .autodiff import creation_site, effect, modes
from .batching import BatchTracer, Level, front, lowered, rebind_batched, refuse_batched_into
from .errors import DeviceError, DTypeError, ShapeError
from .tensor import Tensor, _device, _finish, _shape_arg, check_layout


class Generator:
    """A seeded source of random numbers on one device (PCG64 on the CPU, XORWOW on CUDA)."""

    def __init__(self, device="cpu", seed: int | None = None):
        self.backend = B.get_backend(device)
        self._reseed(seed)  # (not recorded: a generator made while a step is traced)

    @property
    def device(self) -> str:
        return self.backend.name

    @effect  # under nodegrad.jit a step that seeds seeds again on every replay
    def manual_seed(self, seed: int | None) -> Generator:
        """Restart the stream from ``seed``: any integer (NumPy's too) in [-2**63, 2**64), a
        negative one taken mod 2**64 as PyTorch does; None draws a fresh 63-bit seed."""
        self._reseed(seed)
        return self

    def _reseed(self, seed: int | None) -> None:
        seed = _fresh_seed() if seed is None else _seed_value(seed, "manual_seed")
        self._seed = seed
        self.rng = self.backend.generator(seed)

    @effect
    def seed(self) -> int:
        """Restart the stream from a fresh non-deterministic 63-bit seed and return it, as
        ``torch.Generator.seed`` (``manual_seed`` with it later repeats the stream)."""
        s = _fresh_seed()
        self.manual_seed(s)
        return s

    def initial_seed(self) -> int:
        """The seed this stream started from: ``manual_seed``'s (mod 2**64), or the fresh one
        drawn when it was None; seeding with it restarts the same stream."""
        return self._seed

    def get_state(self) -> dict:
        """The generator state as plain data (CPU), for checkpoints. A jitted step that reads it
        runs eagerly: a replay would have the traced call's state."""
        if self.backend.device_id is not None:
            raise NotImplementedError("get_state: only CPU generator state can be exported")
        rec = modes().jit
        if rec is not None and rec.fallback is None:
            rec.fallback = (f"Generator.get_state() reads the generator's state into Python (at "
                            f"{creation_site()}): a replay would reuse the traced call's state")
        return self.rng.bit_generator.state

    @effect  # under nodegrad.jit set again on every replay
    def set_state(self, state: dict) -> None:
        if self.backend.device_id is not None:
            raise NotImplementedError("set_state: only CPU generator state can be imported")
        self.rng.bit_generator.state = state

    # --- samples as raw arrays (used by layers such as dropout) ---------------------------
    def random(self, shape, dtype=None):
        """Uniform samples in [0, 1). The generators draw float32 and float64 only; float16
        samples are float32 draws rounded, those that round up to 1 set to the float below."""
        dt = _float_dtype("Generator.random", dtype)
        with self.backend.scope():
            if dt in _DRAWN:
                return self.rng.random(shape, dtype=dt)
            u = self.rng.random(shape, dtype=B.float32).astype(dt)
            xp = self.backend.xp
            return xp.minimum(u, xp.nextafter(dt.type(1), dt.type(0)), out=u)

    def normal(self, shape, dtype=None):
        """Standard normal samples (float16: float32 draws rounded)."""
        dt = _float_dtype("Generator.normal", dtype)
        with self.backend.scope():
            if dt in _DRAWN:
                return self.rng.standard_normal(shape, dtype=dt)
            return self.rng.standard_normal(shape, dtype=B.float32).astype(dt)

    @effect  # under nodegrad.jit each replay draws afresh, as the eager step would
    def keep_mask(self, shape, dtype, p: float, scale: float = 1.0):
        """A dropout mask: ``scale`` where a uniform sample is >= ``p``, else 0, in ``dtype``."""
        dtype = B.as_dtype(dtype)
        mask = (self.random(shape, dtype) >= dtype.type(p)).astype(dtype)
        if scale != 1.0:
            mask *= dtype.type(scale)
        return mask

    def integers(self, low: int, high: int, shape, dtype=None):
        with self.backend.scope():
            return self.rng.integers(low, high, size=shape, dtype=B.as_dtype(dtype) or B.int64)

    def permutation(self, n: int):
        with self.backend.scope():
            return self.backend.permutation(self.rng, n)


_DRAWN = (B.float32, B.float64)  # the float dtypes NumPy's and CuPy's generators draw


def _float_dtype(op: str, dtype):
    """``dtype`` (the default float when None) for a continuous distribution: a float dtype,
    else a DTypeError naming ``op`` (PyTorch refuses integer and bool dtypes too)."""
    dt = B.as_dtype(dtype) or B.DEFAULT_FLOAT
    if not B.is_float(dt):
        raise DTypeError(f"{op}: expected a floating-point dtype (float16, bfloat16, float32 or "
                         "float64) "
                         f"for a continuous distribution, got {dt}")
    return dt


_SEED_MIN, _SEED_SPAN = -(2 ** 63), 2 ** 64


def _seed_value(seed, op: str) -> int:
    """``seed`` as a non-negative int below 2**64: any integer in [-2**63, 2**64), a negative
    one mapped mod 2**64 (PyTorch's range and rule)."""
    try:
        s = operator.index(seed)
    except TypeError:
        raise TypeError(f"{op}: seed must be an integer, got {type(seed).__name__} "
                        f"{seed!r}") from None
    if not _SEED_MIN <= s < _SEED_SPAN:
        raise ValueError(f"{op}: seed must be in [-2**63, 2**64), got {s}")
    return s % _SEED_SPAN


def _fresh_seed() -> int:
    return secrets.randbits(63)


_default: dict[str, Generator] = {}
_seed: list = [None]


def default_generator(device=None) -> Generator:
    """The generator that sampling functions use on ``device`` when none is passed."""
    be = B.get_backend(device)
    g = _default.get(be.name)
    if g is None:  # setdefault: threads meeting here at once share one generator
        g = _default.setdefault(be.name, Generator(be, _seed[0]))
    return g


@effect  # under nodegrad.jit a step that seeds seeds again on every replay
def manual_seed(seed: int) -> Generator:
    """Seed the default generators of every device, for reproducible runs, and return the
    CPU's, as ``torch.manual_seed``. ``seed`` is any integer (NumPy's too) in [-2**63, 2**64);
    a negative one is taken mod 2**64, as PyTorch does."""
    seed = _seed_value(seed, "manual_seed")
    _seed[0] = seed
    for g in _default.values():
        g.manual_seed(seed)
    return default_generator("cpu").manual_seed(seed)


def initial_seed() -> int:
    """The seed of the CPU's default generator (``manual_seed``'s, else the fresh one drawn),
    as ``torch.initial_seed``."""
    return default_generator("cpu").initial_seed()


@effect
def seed() -> int:
    """Seed every device's default generator with a fresh random 63-bit number and return it,
    as ``torch.seed`` (``manual_seed(seed())`` later repeats the stream)."""
    s = _fresh_seed()
    manual_seed(s)
    return s


@contextmanager
def fork_rng(devices: Iterable | None = None, enabled: bool = True, *,
             device_type: str | None = None) -> Iterator[None]:
    """A context in which the CPU default generator may be used freely: on exit its state (and
    initial seed) is put back, so later draws are as if the block had drawn nothing, as
    ``torch.random.fork_rng``. Only the CPU generator is forked: ``devices`` must be None or
    empty (the state of a GPU generator cannot be exported here); ``device_type`` is accepted
    for PyTorch's signature and unused. ``enabled=False`` forks nothing."""
    if not enabled:
        yield
        return
    devs = [] if devices is None else list(devices)
    if devs:
        raise NotImplementedError(f"fork_rng: only the CPU generator can be forked, got "
                                  f"devices={devs}; pass devices=None or devices=[]")
    g = default_generator("cpu")
    saved: list = []
    _fork_save(g, saved)
    try:
        yield
    finally:
        _fork_restore(g, saved)


@effect  # under nodegrad.jit each replay saves the state that call finds
def _fork_save(g: Generator, saved: list) -> None:
    """Keep ``g``'s stream, initial seed and state in ``saved`` (a list the fork holds)."""
    saved[:] = (g.rng, g._seed, g.rng.bit_generator.state)


@effect  # and puts it back
def _fork_restore(g: Generator, saved: list) -> None:
    """Put back what :func:`_fork_save` kept (the stream object too: a manual_seed inside the
    fork replaced it)."""
    g.rng, g._seed = saved[0], saved[1]
    g.rng.bit_generator.state = saved[2]


# The CPU state as bytes: PCG64's 128-bit state and increment, then the cached half-word flag
# and the cached 32-bit word (little-endian), so ``set_rng_state`` restores draws exactly.
_STATE_LAYOUT = (("state", 16), ("inc", 16), ("has_uint32", 1), ("uinteger", 4))
_STATE_BYTES = sum(n for _, n in _STATE_LAYOUT)


def get_rng_state() -> Tensor:
    """The CPU default generator's state as a uint8 tensor (37 bytes of PCG64 state), as
    ``torch.get_rng_state``; :func:`set_rng_state` puts it back and the draws repeat exactly."""
    return Tensor._of(_state_bytes(default_generator("cpu")))


@effect  # under nodegrad.jit read again on every replay: the state that call finds
def _state_bytes(g: Generator):
    """``g``'s PCG64 state as a uint8 array (:data:`_STATE_LAYOUT`)."""
    st = g.get_state()
    if st.get("bit_generator") != "PCG64":
        raise NotImplementedError(f"get_rng_state: the CPU generator is "
                                  f"{st.get('bit_generator')}, only PCG64 state is exported")
    vals = {"state": st["state"]["state"], "inc": st["state"]["inc"],
            "has_uint32": st["has_uint32"], "uinteger": st["uinteger"]}
    raw = b"".join(int(vals[k]).to_bytes(n, "little") for k, n in _STATE_LAYOUT)
    return B.np.frombuffer(raw, dtype=B.np.uint8).copy()


def set_rng_state(new_state: Tensor) -> None:
    """Restore the CPU default generator from a :func:`get_rng_state` tensor."""
    if not isinstance(new_state, Tensor) or new_state.dtype != B.np.uint8:
        got = getattr(new_state, "dtype", type(new_state).__name__)
        raise TypeError(f"set_rng_state: expected a uint8 tensor from get_rng_state, got {got}")
    if new_state.numel() != _STATE_BYTES:
        raise ValueError(f"set_rng_state: expected {_STATE_BYTES} bytes of PCG64 state, got "
                         f"{new_state.numel()}")
    _set_state_bytes(default_generator("cpu"), new_state)


@effect  # under nodegrad.jit set again on every replay, from that call's state tensor
def _set_state_bytes(g: Generator, new_state: Tensor) -> None:
    """Set ``g`` from the bytes of a :func:`get_rng_state` tensor."""
    raw = bytes(B.np.ascontiguousarray(new_state.numpy()).reshape(-1))
    vals, at = {}, 0
    for k, n in _STATE_LAYOUT:
        vals[k] = int.from_bytes(raw[at:at + n], "little")
        at += n
    g.set_state({
        "bit_generator": "PCG64", "state": {"state": vals["state"], "inc": vals["inc"]},
        "has_uint32": vals["has_uint32"], "uinteger": vals["uinteger"]})


def _gen(generator, device) -> Generator:
    if generator is not None:
        if device is not None and B.get_backend(device) is not generator.backend:
            raise DeviceError(f"generator is on {generator.device} but device={device!r}")
        return generator
    return default_generator(_device(device))


@effect  # under nodegrad.jit each replay draws afresh, as the eager code would
def _draw(make, gen: Generator, *args):
    """``make(gen, *args)``: a sampler's array, drawn from the generator ``gen``. A jitted step
    records the draw and calls it again on every replay, so its numbers are new each time and
    the generator's stream moves on as in eager code (a tensor among ``args`` is fed its
    replayed value)."""
    out = make(gen, *args)
    # NumPy returns a scalar, not a 0-d array, from some 0-d draws (a clipped standard_gamma, a
    # comparison with a 0-d probability): a tensor's data is an array (in-place ops write into
    # it), and a scalar would be a constant of a jitted program, drawn once
    return out if B.is_array(out) else gen.backend.asarray(out)


# --- draws inside vmap: each level's ``randomness`` ------------------------------------------
RANDOMNESS = ("error", "different", "same")
"""``vmap``'s choices for a random draw inside it (``torch.func.vmap``'s): refuse (the
default), draw for each example on its own, or draw once for one example and share it."""


def _sample(what: str, make, gen: Generator, *args, shape_at: int | None = None) -> Tensor:
    """``Tensor(_draw(make, gen, *args))``; inside vmap, by the innermost level's randomness,
    one level peeled per call as ``batching.batch_bind`` does.

    ``'error'`` refuses. ``'same'`` draws one example's numbers, shared by the batch (and
    refuses tensors batched at the level: their examples differ). ``'different'`` gives each
    example its own draw: where no tensor argument is batched at the level and ``args[shape_at]``
    is the shape, one draw of ``(n,) + shape``; else one draw per example from its own tensors,
    stacked."""
    traces = modes().traces
    if not traces or type(traces[-1]) is not Level:
        return Tensor._of(_draw(make, gen, *args))
    top = traces[-1]
    below = len(traces) - 1
    here = [type(a) is BatchTracer and a.level is top for a in args]
    if top.randomness == "error":
        raise RuntimeError(f"{what}: a random draw inside vmap, whose randomness is 'error' (the "
                           "default); pass randomness='different' (each example its own "
                           "numbers) or 'same' (one draw shared by the batch) to vmap, or "
                           "draw outside it")
    if top.randomness == "same":
        if any(here):
            raise RuntimeError(f"{what}: randomness='same' cannot draw from a tensor batched "
                               "inside vmap (its examples differ); use randomness='different'")
        with lowered(below):
            return _sample(what, make, gen, *args, shape_at=shape_at)
    n = top.size
    if not any(here) and shape_at is not None:
        a = list(args)
        a[shape_at] = (n,) + tuple(a[shape_at])
        with lowered(below):
            return BatchTracer(_sample(what, make, gen, *a, shape_at=shape_at), 0, top)
    from .ops.shape import stack

    vals = [front(a.val, a.bdim) if h else a for a, h in zip(args, here)]
    with lowered(below):
        out = stack([_sample(what, make, gen, *[v[k] if h else v for v, h in zip(vals, here)],
                             shape_at=shape_at) for k in range(n)])
    return BatchTracer(out, 0, top)


def _finished(t: Tensor, requires_grad: bool) -> Tensor:
    """:func:`_finish` for a sampled tensor (one batched inside vmap is returned as it is)."""
    if type(t) is BatchTracer:
        if requires_grad:
            raise TypeError("requires_grad=True: a tensor drawn inside vmap is not a leaf; "
                            "draw it outside vmap")
        return t
    return _finish(t._data, requires_grad)


def _keep(gen: Generator, shape: tuple, dtype, p: float, scale: float):
    return gen.keep_mask(shape, dtype, p, scale)


def keep_mask(gen: Generator, shape: tuple, dtype, p: float, scale: float = 1.0) -> Tensor:
    """A dropout mask as a tensor (:meth:`Generator.keep_mask`): inside vmap, one mask per
    example or one shared, by vmap's ``randomness``."""
    if not modes().traces:
        return Tensor._of(gen.keep_mask(shape, dtype, p, scale))
    return _sample("dropout", _keep, gen, tuple(shape), dtype, p, scale, shape_at=0)


def _uniform01(gen: Generator, shape: tuple, dtype):
    if dtype.kind == "c":  # real and imaginary parts uniform on [0, 1) each, as PyTorch's
        return _as_complex(gen.random(tuple(shape) + (2,), _real_of(dtype)), dtype)
    return gen.random(shape, dtype)


def _standard_normal(gen: Generator, shape: tuple, dtype):
    if dtype.kind == "c":  # E|z|^2 = 1: each part of variance 1/2, as PyTorch's
        pair = gen.normal(tuple(shape) + (2,), _real_of(dtype))
        return _as_complex(pair * pair.dtype.type(math.sqrt(0.5)), dtype)
    return gen.normal(shape, dtype)


def _real_of(dtype):
    return B.float32 if dtype.itemsize == 8 else B.float64


def _as_complex(pair, dtype):
    """Fresh (..., 2) real pairs (contiguous) as one complex array of ``dtype``."""
    return pair.view(dtype)[..., 0]


def _continuous_dtype(op: str, dtype):
    """``dtype`` for rand/randn: a float dtype or complex64/complex128 (both parts drawn)."""
    dt = B.as_dtype(dtype)
    return dt if dt is not None and dt.kind == "c" else _float_dtype(op, dt)


def _size_arg(op: str, shape: tuple, size) -> tuple:
    """The shape given positionally (``rand(2, 3)``, ``rand((2, 3))``) or as ``size=``, as
    PyTorch's factories take it; not both."""
    if size is None:
        return _shape_arg(shape)
    if shape:
        raise TypeError(f"{op}: got the shape both positionally {shape} and as size={size!r}; "
                        "pass one")
    return _shape_arg((size,))


def rand(*shape, size=None, dtype=None, device=None, generator: Generator | None = None,
         requires_grad: bool = False) -> Tensor:
    """Uniform samples in [0, 1) of a float dtype (of each part, for a complex one); the shape
    positionally or as ``size=``."""
    shape = _size_arg("rand", shape, size)
    return _finished(_sample("rand", _uniform01, _gen(generator, device), shape,
                             _continuous_dtype("rand", dtype), shape_at=0), requires_grad)


def randn(*shape, size=None, dtype=None, device=None, generator: Generator | None = None,
          requires_grad: bool = False) -> Tensor:
    """Standard normal samples of a float dtype (a complex one: E|z|² = 1, each part of
    variance 1/2, as PyTorch's); the shape positionally or as ``size=``."""
    shape = _size_arg("randn", shape, size)
    return _finished(_sample("randn", _standard_normal, _gen(generator, device), shape,
                             _continuous_dtype("randn", dtype), shape_at=0), requires_grad)


def randint(low: int = 0, high: int | None = None, size=None, dtype=None, device=None,
            generator: Generator | None = None, *, layout=None,
            requires_grad: bool = False) -> Tensor:
    """Integers in [low, high), as PyTorch's ``randint(low, high, size)`` and
    ``randint(high, size)`` ([0, high)); ``size`` defaults to () (one number)."""
    if size is None and isinstance(high, list | tuple):  # randint(high, size)
        low, high, size = 0, low, high
    if high is None:
        low, high = 0, low
    try:
        if isinstance(low, bool) or isinstance(high, bool):
            raise TypeError
        low, high = operator.index(low), operator.index(high)
    except TypeError:
        raise TypeError(f"randint: low and high must be ints, got {low!r} and {high!r}") from None
    if high <= low:
        raise ValueError(f"randint: empty range [{low}, {high})")
    if layout is not None:
        check_layout("randint", layout)
    size = () if size is None else (size,) if isinstance(size, int) else tuple(size)
    dt = B.as_dtype(dtype)
    if dt is not None and B.is_float(dt):  # integer values in a float dtype, as PyTorch's
        out = _sample("randint", _integers, _gen(generator, device), low, high, size, None,
                      shape_at=2).astype(dt)
        return _finished(out, requires_grad)
    if requires_grad:
        raise TypeError(f"randint: only floating dtypes can require grad, got "
                        f"{dt or 'int64'}")
    return _sample("randint", _integers, _gen(generator, device), low, high, size, dtype,
                   shape_at=2)


def _integers(gen: Generator, low: int, high: int, size: tuple, dtype):
    return gen.integers(low, high, size, dtype)


def _permutation(gen: Generator, n: int, dtype=B.int64):
    return gen.permutation(n).astype(dtype, copy=False)


def randperm(n: int, device=None, generator: Generator | None = None, *, dtype=None,
             layout=None, requires_grad: bool = False) -> Tensor:
    """A random permutation of 0..n-1 in ``dtype`` (int64 by default; any integer or float
    dtype that holds n - 1 exactly, as PyTorch's). Only a float dtype can require grad."""
    if isinstance(n, bool):
        raise TypeError("randperm: n must be an int, got bool")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"randperm: n must be an int, got {type(n).__name__} {n!r}") from None
    if n < 0:
        raise ValueError(f"randperm: n must be non-negative, got {n}")
    dt = B.as_dtype(dtype) or B.int64
    if dt.kind not in "iu" and not B.is_float(dt):
        raise DTypeError(f"randperm: expected an integer or floating dtype, got {dt}")
    top = _exact_range(dt)[1]
    if n - 1 > top:
        raise ValueError(f"randperm: n={n} is too large for dtype {dt}, which holds the "
                         f"integers up to {top} exactly")
    if requires_grad and not B.is_float(dt):
        raise DTypeError(f"randperm: only floating dtypes can require grad, got {dt}")
    if layout is not None:
        check_layout("randperm", layout)
    return _finished(_sample("randperm", _permutation, _gen(generator, device), n, dt),
                     requires_grad)


def _normal(gen: Generator, size: tuple, dtype, mean: float, std: float):
    if dtype.kind == "c":  # PyTorch's: N(mean, std²/2) in each part, so E|z - m|² = std²
        pair = _normal(gen, tuple(size) + (2,), _real_of(dtype), mean, std * math.sqrt(0.5))
        return _as_complex(pair, dtype)
    z = gen.normal(size, dtype)
    return z * z.dtype.type(std) + z.dtype.type(mean)


def _uniform(gen: Generator, size: tuple, dtype, low: float, high: float):
    if dtype.kind == "c":  # PyTorch's: each part uniform on [low, high)
        return _as_complex(_uniform(gen, tuple(size) + (2,), _real_of(dtype), low, high), dtype)
    u = gen.random(size, dtype)
    return u * u.dtype.type(high - low) + u.dtype.type(low)


def _normal_like(gen: Generator, mean, std, shape: tuple, dtype):
    """N(mean, std²) samples of ``shape`` for tensor (or number) mean and std."""
    m = mean._data if isinstance(mean, Tensor) else mean
    sd = std._data if isinstance(std, Tensor) else std
    if isinstance(std, Tensor):
        if std._data.size and not bool((sd >= 0).all()):
            raise ValueError("normal: expects all elements of std >= 0")
    z = gen.normal(shape, dtype)
    return (z * sd + m).astype(dtype, copy=False)


def _normal_tensors(mean, std, generator: Generator | None) -> Tensor:
    """``normal(mean, std)`` with a tensor mean or std: one sample per element of their
    broadcast shape, in the tensor's dtype (mean's when both are tensors). As in PyTorch the
    samples stay in the graph with zero gradient for mean and std."""
    ref = mean if isinstance(mean, Tensor) else std
    if not B.is_float(ref.dtype):
        raise DTypeError(f"normal: expected floating-point mean and std, got {ref.dtype}")
    if not isinstance(std, Tensor) and std < 0:
        raise ValueError(f"normal: expects std >= 0, got {std}")
    shapes = [tuple(t.shape) for t in (mean, std) if isinstance(t, Tensor)]
    try:
        shape = tuple(B.np.broadcast_shapes(*shapes))
    except ValueError:
        raise ShapeError(f"normal: mean and std of shapes {shapes[0]} and {shapes[-1]} do not "
                         "broadcast") from None
    sample = _sample("normal", _normal_like, _gen(generator, ref.device), mean, std, shape,
                     ref.dtype, shape_at=2)
    return _zero_grad_from(sample, (mean, std), ref)


def _zero_grad_from(sample: Tensor, sources: tuple, ref: Tensor) -> Tensor:
    """``sample`` tied into the graph of those ``sources`` that require grad, with a zero
    gradient for each, as PyTorch's samplers built from tensors are (``sample`` itself when
    none requires grad or grad is off)."""
    srcs = [t for t in sources if isinstance(t, Tensor) and t.requires_grad]
    if not (srcs and modes().grad_enabled):
        return sample
    from .ops.elementwise import astype, where

    be = ref.backend
    with be.scope():
        keep = Tensor._of(be.xp.ones((), dtype=B.bool_))
    tied = sample
    for t in srcs:  # where(True, sample, t): sample's values, a zero gradient for t
        tied = where(keep, tied, astype(t, ref.dtype))
    return tied


def normal(mean: float | Tensor = 0.0, std: float | Tensor = 1.0, size=None, dtype=None,
           device=None, generator: Generator | None = None, requires_grad: bool = False, *,
           layout=None, pin_memory: bool = False) -> Tensor:
    """Samples from N(mean, std²): numbers with ``size`` (default (), one sample), or PyTorch's
    tensor forms ``normal(mean, std)`` with a tensor mean and/or std, one sample per element
    of their broadcast shape (zero gradient for them, as PyTorch's)."""
    if isinstance(mean, Tensor) or isinstance(std, Tensor):
        if size is not None or dtype is not None or requires_grad or layout is not None:
            raise TypeError("normal: with a tensor mean or std the shape and dtype come from "
                            "them; size=, dtype=, layout= and requires_grad= are for number "
                            "mean and std")
        return _normal_tensors(mean, std, generator)
    if std < 0:
        raise ValueError(f"normal: expects std >= 0, got {std}")
    if layout is not None:
        check_layout("normal", layout)
    dt = _float_dtype("normal", dtype)
    size = () if size is None else (size,) if isinstance(size, int) else tuple(size)
    return _finished(_sample("normal", _normal, _gen(generator, device), size, dt, mean, std,
                             shape_at=0), requires_grad)


def uniform(low: float = 0.0, high: float = 1.0, size=(), dtype=None, device=None,
            generator: Generator | None = None, requires_grad: bool = False) -> Tensor:
    """Samples from U[low, high) of a float dtype."""
    dt = _float_dtype("uniform", dtype)
    size = (size,) if isinstance(size, int) else tuple(size)
    return _finished(_sample("uniform", _uniform, _gen(generator, device), size, dt, low,
                             high, shape_at=0), requires_grad)


# === sampling from tensors: bernoulli, multinomial, *_like, in-place normal_ / uniform_ ========
def _check_finite_probs(p, op: str, what: str) -> None:
    xp = B.backend_of(p).xp
    if p.size and not bool(((p >= 0) & (p <= 1)).all()):
        raise ValueError(f"{op}: {what} must lie in [0, 1]")
    if B.is_float(p.dtype) and not bool(xp.isfinite(p).all()):
        raise ValueError(f"{op}: {what} must be finite")


def bernoulli(input: Tensor, p: float | None = None, *,
              generator: Generator | None = None) -> Tensor:
    """0/1 samples, 1 with probability ``input`` (or the number ``p``), in input's dtype. As
    PyTorch's, the samples stay in the graph of an ``input`` that requires grad, with a zero
    gradient for it."""
    if not B.is_float(input.dtype):
        raise DTypeError(f"bernoulli: expected floating-point probabilities, got {input.dtype}")
    sample = _sample("bernoulli", _bernoulli, _gen(generator, input.device), input, p)
    return _zero_grad_from(sample, (input,), input)


def _bernoulli(gen: Generator, input: Tensor, p: float | None):
    probs = input._data if p is None else B.backend_of(input._data).xp.asarray(p, input.dtype)
    _check_finite_probs(probs, "bernoulli", "probabilities" if p is None else "p")
    u = gen.random(tuple(input.shape), input.dtype)
    return (u < probs).astype(input.dtype)


def multinomial(input: Tensor, num_samples: int, replacement: bool = False, *,
                generator: Generator | None = None) -> Tensor:
    """Category indices drawn from the (unnormalised) weights in each row of ``input`` (1-d or
    2-d); without replacement by exponential races (each category at most once)."""
    if not B.is_float(input.dtype):
        raise DTypeError(f"multinomial: expected floating-point weights, got {input.dtype}")
    if input.ndim not in (1, 2):
        raise ShapeError(f"multinomial: weights must be 1-d or 2-d, got shape "
                         f"{tuple(input.shape)}")
    if num_samples <= 0:
        raise ValueError(f"multinomial: num_samples must be positive, got {num_samples}")
    return _sample("multinomial", _multinomial, _gen(generator, input.device), input,
                   num_samples, replacement)


def _multinomial(gen: Generator, input: Tensor, num_samples: int, replacement: bool):
    w = input._data.reshape(-1, input.shape[-1]).astype(B.float64)
    xp = B.backend_of(w).xp
    n = w.shape[1]
    if n == 0 or not bool(xp.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("multinomial: weights must be finite, non-negative and not empty")
    total = w.sum(1)
    if bool((total <= 0).any()):
        raise ValueError("multinomial: every row of weights needs a positive sum")
    rows = w.shape[0]
    if not replacement:
        if num_samples > int((w > 0).sum(1).min()):
            raise ValueError(f"multinomial: cannot draw {num_samples} samples without "
                             "replacement from a row with fewer nonzero weights")
        e = -xp.log1p(-gen.random((rows, n), B.float64))  # Exp(1); the smallest e / w wins
        with B.np.errstate(divide="ignore"):
            keys = xp.where(w > 0, e / xp.where(w > 0, w, 1), xp.inf)
        out = xp.argsort(keys, axis=1, kind="stable")[:, :num_samples]
    else:  # inverse CDF; each row shifted by its index so one searchsorted serves all rows
        cdf = xp.cumsum(w, 1)
        cdf = cdf / cdf[:, -1:]
        shift = xp.arange(rows, dtype=B.float64)[:, None]
        u = gen.random((rows, num_samples), B.float64)
        flat = xp.searchsorted((cdf + shift).ravel(), (u + shift).ravel(), side="right")
        out = flat.reshape(rows, num_samples) - (xp.arange(rows) * n)[:, None]
        out = xp.minimum(out, n - 1)
    out = out.astype(B.int64)
    return out if input.ndim == 2 else out[0]


def poisson(input: Tensor, generator: Generator | None = None) -> Tensor:
    """Poisson counts with rates ``input`` (non-negative floats), in input's dtype, as
    ``torch.poisson``; not differentiable."""
    if not isinstance(input, Tensor) or not B.is_float(input.dtype):
        raise DTypeError(f"poisson: expected a floating tensor of rates, got "
                         f"{getattr(input, 'dtype', type(input).__name__)}")
    return _sample("poisson", _poisson, _gen(generator, input.device), input)


def _poisson(gen: Generator, input: Tensor):
    lam = input._data
    if lam.size and not bool((lam >= 0).all()):
        raise ValueError("poisson: rates must be non-negative (and not NaN)")
    with gen.backend.scope():
        return gen.rng.poisson(lam.astype(B.float64), size=lam.shape).astype(input.dtype)


def binomial(count: Tensor, prob: Tensor, generator: Generator | None = None) -> Tensor:
    """Binomial counts of successes in ``count`` trials of probability ``prob`` (float tensors
    that broadcast), in their dtype, as ``torch.binomial``; not differentiable."""
    for name, t in (("count", count), ("prob", prob)):
        if not isinstance(t, Tensor) or not B.is_float(t.dtype):
            raise DTypeError(f"binomial: expected a floating tensor for {name}, got "
                             f"{getattr(t, 'dtype', type(t).__name__)}")
    if count.dtype != prob.dtype:
        raise DTypeError(f"binomial: count and prob must have one dtype, got {count.dtype} and "
                         f"{prob.dtype}")
    if count.dtype == B.bfloat16:
        raise DTypeError("binomial: bfloat16 is not supported (as torch.binomial); pass "
                         "float32 count and prob")
    return _sample("binomial", _binomial, _gen(generator, count.device), count, prob)


def _binomial(gen: Generator, count: Tensor, prob: Tensor):
    n, p = count._data, prob._data
    if n.size and not bool((n >= 0).all()):
        raise ValueError("binomial: count must be non-negative")
    _check_finite_probs(p, "binomial", "prob")
    xp = B.backend_of(n).xp
    with gen.backend.scope():
        out = gen.rng.binomial(xp.floor(n).astype(B.int64), p.astype(B.float64))
    return out.astype(count.dtype)


def rand_like(input: Tensor, *, dtype=None, generator: Generator | None = None,
              requires_grad: bool = False, device=None, layout=None,
              memory_format=None) -> Tensor:
    """Uniform [0, 1) samples shaped (and typed, and placed) like ``input``."""
    if layout is not None or memory_format is not None:
        check_layout("rand_like", layout, memory_format)
    _continuous_dtype("rand_like", dtype or input.dtype)
    return rand(tuple(input.shape), dtype=dtype or input.dtype, device=device or input.device,
                generator=generator, requires_grad=requires_grad)


def randn_like(input: Tensor, *, dtype=None, generator: Generator | None = None,
               requires_grad: bool = False, device=None, layout=None,
               memory_format=None) -> Tensor:
    """Standard normal samples shaped (and typed, and placed) like ``input``."""
    if layout is not None or memory_format is not None:
        check_layout("randn_like", layout, memory_format)
    _continuous_dtype("randn_like", dtype or input.dtype)
    return randn(tuple(input.shape), dtype=dtype or input.dtype,
                 device=device or input.device, generator=generator,
                 requires_grad=requires_grad)


def randint_like(input: Tensor, low: int = 0, high: int | None = None, *, dtype=None,
                 generator: Generator | None = None, device=None, layout=None,
                 requires_grad: bool = False, memory_format=None) -> Tensor:
    """Integers in [low, high) (``randint_like(x, high)`` for [0, high)) shaped like
    ``input``, in its dtype and on its device unless given."""
    if high is None:
        low, high = 0, low
    if high <= low:
        raise ValueError(f"randint_like: empty range [{low}, {high})")
    if layout is not None or memory_format is not None:
        check_layout("randint_like", layout, memory_format)
    return _finished(_sample("randint_like", _integers_as, _gen(generator, device or input.device),
                             low, high, tuple(input.shape), B.as_dtype(dtype) or input.dtype,
                             shape_at=2), requires_grad)


def _integers_as(gen: Generator, low: int, high: int, shape: tuple, dtype):
    return gen.integers(low, high, shape).astype(dtype)


# === in-place fills: PyTorch's distributions, drawn through _draw (a jit replay draws afresh) ====
def _write_(t: Tensor, what: str, make, *args) -> Tensor:
    """Fill ``t`` in place with the array ``make(*args)`` draws, and return ``t``.

    A leaf that requires grad refuses while recording (as PyTorch). A tensor inside a recorded
    graph is rebound instead of written: its new values depend on nothing, so what it was
    computed from gets a zero gradient (PyTorch's). Under a jit trace the write is recorded, so
    each replay draws afresh and writes in place."""
    t._check_inplace(what)
    m = modes()
    if m.traces:  # inside vmap: vmap's randomness decides; a batched tensor is rebound
        drawn = _sample(what, make, *args, shape_at=0)
        if type(t) is BatchTracer:
            from .ops.elementwise import where

            with t.backend.scope():
                keep = Tensor._of(t.backend.xp.ones((), dtype=B.bool_))
            return rebind_batched(what, t, where(keep, drawn, t))
        refuse_batched_into(what, drawn)
        sample = drawn._data
    else:
        sample = _draw(make, *args)
    if m.grad_enabled and t.requires_grad:
        from .ops.elementwise import where

        be = t.backend
        with be.scope():
            keep = Tensor._of(be.xp.ones((), dtype=B.bool_))
        res = where(keep, Tensor._of(sample), Tensor._of(t._data, t.node, True))
        t._bump()  # a backward that saved the old value refuses
        t._data, t.node, t.requires_grad = res._data, res.node, res.requires_grad
        return t
    rec = m.jit
    if rec is not None:  # under a jit trace: replayed in place on the same array
        rec.mutate(what, _assign, t, Tensor._of(sample))
    else:
        t._data[...] = sample
    t._bump()
    return t


def _assign(a, sample) -> None:
    a[...] = sample


def _floating(t: Tensor, what: str, complex_ok: bool = False) -> None:
    if not (B.is_float(t.dtype) or (complex_ok and t.dtype.kind == "c")):
        raise DTypeError(f"{what}: expected a floating-point tensor (a continuous "
                         f"distribution), got {t.dtype}")


def _positive(what: str, name: str, v: float) -> None:
    if not v > 0:
        raise ValueError(f"{what}: expects {name} > 0, got {name}={v}")


def _sample_dtype(dtype):
    """The dtype uniform draws for a ``dtype`` tensor are made in: its own for float32 and
    float64 (no float64 temporaries for float32), float32 for float16, float64 for integers."""
    if dtype == B.float32 or dtype == B.float64:
        return dtype
    return B.float32 if B.is_float(dtype) else B.float64


def check_normal_args(op: str, std: float) -> None:
    """Refuse a negative ``std`` for ``op`` (``normal_`` and ``nn.init``'s normal fills)."""
    if not std >= 0:
        raise ValueError(f"{op}: std must be non-negative, got {std}")


def check_uniform_args(op: str, low: float, high: float) -> None:
    """Refuse ``low > high`` for ``op`` (``uniform_`` and ``nn.init``'s uniform fills): the
    samples lie in [low, high)."""
    if low > high:
        raise ValueError(f"{op}: from {low} must not exceed to {high} (samples lie in [from, "
                         "to))")


def normal_(t: Tensor, mean: float = 0.0, std: float = 1.0, *,
            generator: Generator | None = None) -> Tensor:
    """Fill ``t`` in place with samples from N(mean, std²); a complex ``t`` gets N(mean, std²/2)
    in each part, as PyTorch's."""
    check_normal_args("normal_", std)
    _floating(t, "normal_", complex_ok=True)
    return _write_(t, "normal_", _normal, _gen(generator, t.device), tuple(t.shape), t.dtype,
                   mean, std)


def uniform_(t: Tensor, from_: float = 0.0, to: float = 1.0, *,
             generator: Generator | None = None) -> Tensor:
    """Fill ``t`` in place with samples from U[from_, to) (each part of a complex ``t``)."""
    check_uniform_args("uniform_", from_, to)
    _floating(t, "uniform_", complex_ok=True)
    return _write_(t, "uniform_", _uniform, _gen(generator, t.device), tuple(t.shape), t.dtype,
                   from_, to)


def bernoulli_(t: Tensor, p: float | Tensor = 0.5, *,
               generator: Generator | None = None) -> Tensor:
    """Fill ``t`` (any dtype) in place with 0/1 draws, 1 with probability ``p``: a number, or a
    floating tensor of probabilities that broadcasts to ``t``'s shape."""
    if isinstance(p, Tensor):
        if not B.is_float(p.dtype):
            raise DTypeError(f"bernoulli_: expected floating-point probabilities, got {p.dtype}")
        if p.backend is not t.backend:
            raise DeviceError(f"bernoulli_: p is on {p.device} but the tensor on {t.device}")
        try:
            fits = B.np.broadcast_shapes(tuple(p.shape), tuple(t.shape)) == tuple(t.shape)
        except ValueError:
            fits = False
        if not fits:
            raise ShapeError(f"bernoulli_: p of shape {tuple(p.shape)} does not broadcast to the "
                             f"tensor's shape {tuple(t.shape)}")
    elif not 0 <= p <= 1:
        raise ValueError(f"bernoulli_: expects p in [0, 1], got p={p}")
    return _write_(t, "bernoulli_", _bernoulli_fill, _gen(generator, t.device), tuple(t.shape),
                   t.dtype, p)


def _bernoulli_fill(gen: Generator, shape: tuple, dtype, p):
    if isinstance(p, Tensor):
        probs = p._data
        _check_finite_probs(probs, "bernoulli_", "p")
        u = gen.random(shape, _sample_dtype(probs.dtype))
    else:
        u = gen.random(shape, _sample_dtype(dtype))
        probs = u.dtype.type(p)
    return (u < probs).astype(dtype)


def cauchy_(t: Tensor, median: float = 0.0, sigma: float = 1.0, *,
            generator: Generator | None = None) -> Tensor:
    """Fill ``t`` in place with Cauchy(median, sigma) samples: median + sigma·tan(π(u − ½))."""
    _floating(t, "cauchy_")
    _positive("cauchy_", "sigma", sigma)
    return _write_(t, "cauchy_", _cauchy_fill, _gen(generator, t.device), tuple(t.shape),
                   t.dtype, median, sigma)


def _cauchy_fill(gen: Generator, shape: tuple, dtype, median: float, sigma: float):
    u = gen.random(shape, _sample_dtype(dtype))
    f = u.dtype.type
    xp = B.backend_of(u).xp
    return (xp.tan(f(math.pi) * (u - f(0.5))) * f(sigma) + f(median)).astype(dtype)


def exponential_(t: Tensor, lambd: float = 1.0, *,
                 generator: Generator | None = None) -> Tensor:
    """Fill ``t`` in place with Exponential(rate ``lambd``) samples (mean 1 / lambd)."""
    _floating(t, "exponential_")
    _positive("exponential_", "lambd", lambd)
    return _write_(t, "exponential_", _exponential_fill, _gen(generator, t.device),
                   tuple(t.shape), t.dtype, lambd)


def _exponential_fill(gen: Generator, shape: tuple, dtype, lambd: float):
    u = gen.random(shape, _sample_dtype(dtype))
    xp = B.backend_of(u).xp
    return (-xp.log1p(-u) / u.dtype.type(lambd)).astype(dtype)


def geometric_(t: Tensor, p: float, *, generator: Generator | None = None) -> Tensor:
    """Fill ``t`` (float or integer) in place with Geometric(p) samples: the number of Bernoulli
    trials up to the first success, 1, 2, ... (mean 1 / p)."""
    if t.dtype.kind not in "iu" and not B.is_float(t.dtype):
        raise DTypeError(f"geometric_: expected a float or integer tensor, got {t.dtype}")
    if not 0 < p < 1:
        raise ValueError(f"geometric_: expects p in (0, 1), got p={p}")
    return _write_(t, "geometric_", _geometric_fill, _gen(generator, t.device), tuple(t.shape),
                   t.dtype, p)


def _geometric_fill(gen: Generator, shape: tuple, dtype, p: float):
    u = gen.random(shape, _sample_dtype(dtype))
    xp = B.backend_of(u).xp
    k = xp.floor(xp.log1p(-u) / u.dtype.type(math.log1p(-p))) + 1
    if dtype.kind in "iu":  # a count past the dtype's range saturates instead of wrapping
        k = xp.minimum(k, float(B.np.iinfo(dtype).max))
    return k.astype(dtype)


def log_normal_(t: Tensor, mean: float = 1.0, std: float = 2.0, *,
                generator: Generator | None = None) -> Tensor:
    """Fill ``t`` in place with exp(N(mean, std²)) samples."""
    _floating(t, "log_normal_")
    _positive("log_normal_", "std", std)
    return _write_(t, "log_normal_", _log_normal_fill, _gen(generator, t.device),
                   tuple(t.shape), t.dtype, mean, std)


def _log_normal_fill(gen: Generator, shape: tuple, dtype, mean: float, std: float):
    z = gen.normal(shape, _sample_dtype(dtype))
    f = z.dtype.type
    return B.backend_of(z).xp.exp(z * f(std) + f(mean)).astype(dtype)


_I64_MIN, _I64_MAX = -(2 ** 63), 2 ** 63 - 1


def _exact_range(dtype) -> tuple:
    """The integers a ``dtype`` tensor holds exactly, as (lowest, highest)."""
    if dtype.kind == "b":
        return 0, 1
    if B.is_float(dtype):
        top = 2 ** (B.finfo(dtype).nmant + 1)
        return -top, top
    info = B.np.iinfo(dtype)
    return int(info.min), int(info.max)


def random_(t: Tensor, from_: int | None = None, to: int | None = None, *,
            generator: Generator | None = None) -> Tensor:
    """Fill ``t`` in place with integers drawn uniformly, as PyTorch's ``random_``:
    ``random_(from_, to)`` from [from_, to), ``random_(to)`` from [0, to), and ``random_()``
    from 0 to the largest integer the dtype holds exactly (2**24 for float32, the maximum for
    an integer dtype). A range a float dtype cannot hold exactly raises instead of rounding."""
    dtype = t.dtype
    if (dtype.kind not in "biu" and not B.is_float(dtype)) or dtype == B.np.dtype("uint64"):
        raise DTypeError(f"random_: expected a bool, integer (not uint64) or float tensor, got "
                         f"{dtype}")
    low, high = _exact_range(dtype)
    for name, v in (("from", from_), ("to", to)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise TypeError(f"random_: {name} must be an int, got {type(v).__name__}")
    if from_ is None and to is None:
        lo, hi = 0, high
    else:
        lo, hi = (0, from_ - 1) if to is None else (from_ or 0, to - 1)
        if lo > hi:
            raise ValueError(f"random_: expects 'from' to be less than 'to', got from={lo} >= "
                             f"to={hi + 1}")
        if lo < low or hi > high:
            raise ValueError(f"random_: the range [{lo}, {hi + 1}) is out of the integers that "
                             f"dtype {dtype} holds exactly, [{low}, {high}]")
    return _write_(t, "random_", _random_fill, _gen(generator, t.device), tuple(t.shape),
                   dtype, lo, hi)


def _random_fill(gen: Generator, shape: tuple, dtype, lo: int, hi: int):
    """Integers uniform on [lo, hi] (both included), drawn as int64."""
    if hi < _I64_MAX:
        v = gen.integers(lo, hi + 1, shape, B.int64)
    elif lo > _I64_MIN:  # hi + 1 overflows int64: draw [lo - 1, hi) and shift
        v = gen.integers(lo - 1, hi, shape, B.int64) + 1
    else:  # every int64: a 63-bit half and one bit
        v = gen.integers(_I64_MIN // 2, _I64_MAX // 2 + 1, shape, B.int64) * 2 + gen.integers(
            0, 2, shape, B.int64)
    return v.astype(dtype)
