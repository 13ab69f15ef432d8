"""Random numbers: seeded generators per device and the sampling creation functions.

``manual_seed(s)`` makes every later draw reproducible on a device. Float samples are drawn in
their target dtype (float32 by default) so no float64 temporaries appear.
"""

from __future__ import annotations

from . import _backend as B
from .errors import DeviceError
from .tensor import Tensor, _finish, _shape_arg


class Generator:
    """A seeded source of random numbers on one device (PCG64 on the CPU, XORWOW on CUDA)."""

    def __init__(self, device="cpu", seed: int | None = None):
        self.backend = B.get_backend(device)
        self.manual_seed(seed)

    @property
    def device(self) -> str:
        return self.backend.name

    def manual_seed(self, seed: int | None) -> Generator:
        """Restart the stream from ``seed`` (fresh entropy when None)."""
        if seed is not None and (not isinstance(seed, int) or seed < 0):
            raise ValueError(f"manual_seed: seed must be a non-negative int, got {seed!r}")
        self._seed = seed
        self.rng = self.backend.generator(seed)
        return self

    def initial_seed(self) -> int | None:
        return self._seed

    def get_state(self) -> dict:
        """The generator state as plain data (CPU), for checkpoints."""
        if self.backend.device_id is not None:
            raise NotImplementedError("get_state: only CPU generator state can be exported")
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        if self.backend.device_id is not None:
            raise NotImplementedError("set_state: only CPU generator state can be imported")
        self.rng.bit_generator.state = state

    # --- samples as raw arrays (used by layers such as dropout) ---------------------------
    def random(self, shape, dtype=None):
        """Uniform samples in [0, 1)."""
        with self.backend.scope():
            return self.rng.random(shape, dtype=B.as_dtype(dtype) or B.DEFAULT_FLOAT)

    def normal(self, shape, dtype=None):
        """Standard normal samples."""
        with self.backend.scope():
            return self.rng.standard_normal(shape, dtype=B.as_dtype(dtype) or B.DEFAULT_FLOAT)

    def integers(self, low: int, high: int, shape, dtype=None):
        with self.backend.scope():
            return self.rng.integers(low, high, size=shape, dtype=B.as_dtype(dtype) or B.int64)

    def permutation(self, n: int):
        with self.backend.scope():
            return self.rng.permutation(n)


_default: dict[str, Generator] = {}
_seed: list = [None]


def default_generator(device=None) -> Generator:
    """The generator that sampling functions use on ``device`` when none is passed."""
    be = B.get_backend(device)
    g = _default.get(be.name)
    if g is None:  # setdefault: threads meeting here at once share one generator
        g = _default.setdefault(be.name, Generator(be, _seed[0]))
    return g


def manual_seed(seed: int) -> None:
    """Seed the default generators of every device, for reproducible runs."""
    _seed[0] = seed
    for g in _default.values():
        g.manual_seed(seed)
    default_generator("cpu").manual_seed(seed)


def _gen(generator, device) -> Generator:
    if generator is not None:
        if device is not None and B.get_backend(device) is not generator.backend:
            raise DeviceError(f"generator is on {generator.device} but device={device!r}")
        return generator
    return default_generator(device)


def rand(*shape, dtype=None, device=None, generator: Generator | None = None,
         requires_grad: bool = False) -> Tensor:
    """Uniform samples in [0, 1)."""
    return _finish(_gen(generator, device).random(_shape_arg(shape), dtype), requires_grad)


def randn(*shape, dtype=None, device=None, generator: Generator | None = None,
          requires_grad: bool = False) -> Tensor:
    """Standard normal samples."""
    return _finish(_gen(generator, device).normal(_shape_arg(shape), dtype), requires_grad)


def randint(low: int, high: int | None = None, size=(), dtype=None, device=None,
            generator: Generator | None = None) -> Tensor:
    """Integers in [low, high) (or [0, low) when high is None)."""
    if high is None:
        low, high = 0, low
    if high <= low:
        raise ValueError(f"randint: empty range [{low}, {high})")
    size = (size,) if isinstance(size, int) else tuple(size)
    return Tensor(_gen(generator, device).integers(low, high, size, dtype))


def randperm(n: int, device=None, generator: Generator | None = None) -> Tensor:
    """A random permutation of 0..n-1."""
    return Tensor(_gen(generator, device).permutation(n).astype(B.int64))


def normal(mean: float = 0.0, std: float = 1.0, size=(), dtype=None, device=None,
           generator: Generator | None = None, requires_grad: bool = False) -> Tensor:
    """Samples from N(mean, std²)."""
    size = (size,) if isinstance(size, int) else tuple(size)
    z = _gen(generator, device).normal(size, dtype)
    return _finish(z * z.dtype.type(std) + z.dtype.type(mean), requires_grad)


def uniform(low: float = 0.0, high: float = 1.0, size=(), dtype=None, device=None,
            generator: Generator | None = None, requires_grad: bool = False) -> Tensor:
    """Samples from U[low, high)."""
    size = (size,) if isinstance(size, int) else tuple(size)
    u = _gen(generator, device).random(size, dtype)
    return _finish(u * u.dtype.type(high - low) + u.dtype.type(low), requires_grad)
