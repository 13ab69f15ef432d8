"""Data augmentation for batches of 1D signals and 2D images, vectorised over the batch.

Every augmentation is called as ``aug(x, rng=None)`` on a host batch: 1D signals of shape
(N, L) or (N, C, L), images of shape (N, H, W) or (N, C, H, W). Each sample draws its own
parameters from ``rng`` (an int seed, a NumPy Generator or an ng.Generator; None uses ng's
default generator), all N at once; the warp is then one gather (and, for geometric ones, one
linear/bilinear interpolation) over the whole batch. Output shape and dtype equal the input's.
``p`` is the probability that a sample is augmented at all (the others pass unchanged).
As a DataLoader ``transform`` the loader supplies a generator seeded by (seed, epoch, batch).

Boundary ``mode`` for samples read outside the signal: ``"zeros"`` (fill 0), ``"edge"``
(repeat the border value) or ``"wrap"`` (periodic).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .. import _backend as B
from ..errors import ShapeError
from .dataset import _host, _rng

np = B.np
_MODES = ("zeros", "edge", "wrap")


def _cast(out: np.ndarray, dtype) -> np.ndarray:
    """``out`` in ``dtype``; integer dtypes are rounded and clipped to their range, bool (a
    mask) to the nearer of 0 and 1 (a cast alone would make every interpolated value True)."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    elif dtype.kind == "b" and out.dtype.kind != "b":
        out = out >= 0.5
    return out.astype(dtype, copy=False)


def _work_dtype(x: np.ndarray):
    """float64 stays float64; everything else is computed in float32."""
    return B.float64 if x.dtype == B.float64 else B.float32


def _pad(x: np.ndarray, mode: str) -> np.ndarray:
    """(N, C, *spatial) padded so every neighbour an index helper returns is in range.

    zeros: one zero before and two after each spatial axis; edge and wrap: one copy of the
    last (edge) or first (wrap) position after it. Then a clipped or wrapped index and its
    successor always read the right value, and one gather serves every boundary mode.
    """
    lo, hi = (1, 2) if mode == "zeros" else (0, 1)
    out = np.zeros(x.shape[:2] + tuple(d + lo + hi for d in x.shape[2:]), x.dtype)
    inner = tuple(slice(lo, lo + d) for d in x.shape[2:])
    out[(slice(None), slice(None)) + inner] = x
    if mode != "zeros":
        for ax in range(2, x.ndim):
            last = [slice(None)] * x.ndim
            first = list(last)
            last[ax], first[ax] = x.shape[ax], (x.shape[ax] - 1 if mode == "edge" else 0)
            out[tuple(last)] = out[tuple(first)]
    return out


def _int_index(i: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Integer positions of the signal mapped to positions in ``_pad``'s output."""
    if mode == "zeros":
        return np.clip(i, -1, size) + 1
    return np.clip(i, 0, size - 1) if mode == "edge" else i % size


def _real_index(c: np.ndarray, size: int, mode: str):
    """Real positions -> (lower neighbour in ``_pad``'s output, weight of the upper one)."""
    if mode == "zeros":
        c = np.clip(c, -1, size) + 1
    elif mode == "edge":
        c = np.clip(c, 0, size - 1)
    else:
        c = np.mod(c, size)
    i = np.floor(c)
    if mode == "wrap":
        i = np.minimum(i, size - 1)  # mod can round up to size
    return i.astype(np.intp), c - i


def _offsets(src: np.ndarray) -> np.ndarray:
    """Flat offsets (N, C, 1) of each sample's channel planes in ``src.ravel()``."""
    n, c = src.shape[:2]
    return ((np.arange(n)[:, None] * c + np.arange(c)) * src[0, 0].size)[..., None]


def _shift(x: np.ndarray, pos: np.ndarray, mode: str) -> np.ndarray:
    """Signals x (N, C, L) read at integer positions pos (N, L): exact, no interpolation."""
    src = _pad(x, mode)
    return np.take(src.ravel(), _int_index(pos, x.shape[-1], mode)[:, None, :] + _offsets(src))


def _sample_1d(x: np.ndarray, pos: np.ndarray, mode: str) -> np.ndarray:
    """Linear interpolation of signals x (N, C, L) at real positions pos (N, L)."""
    src = _pad(x, mode)
    i, w = _real_index(pos, x.shape[-1], mode)
    flat, lin = src.ravel(), i[:, None, :] + _offsets(src)
    v0, v1 = np.take(flat, lin), np.take(flat, lin + 1)
    return v0 + (v1 - v0) * w.astype(x.dtype)[:, None, :]


def _sample_2d(x: np.ndarray, sy: np.ndarray, sx: np.ndarray, mode: str) -> np.ndarray:
    """Bilinear interpolation of images x (N, C, H, W) at rows sy, columns sx (N, H, W)."""
    n, c, h, w = x.shape
    src = _pad(x, mode)
    wp = src.shape[-1]
    iy, wy = _real_index(sy.reshape(n, 1, h * w), h, mode)
    ix, wx = _real_index(sx.reshape(n, 1, h * w), w, mode)
    wy, wx = wy.astype(x.dtype), wx.astype(x.dtype)
    flat, lin = src.ravel(), iy * wp + ix + _offsets(src)  # top-left corners (N, C, H*W)
    v00, v01 = np.take(flat, lin), np.take(flat, lin + 1)
    v10, v11 = np.take(flat, lin + wp), np.take(flat, lin + (wp + 1))
    top = v00 + (v01 - v00) * wx
    bottom = v10 + (v11 - v10) * wx
    return (top + (bottom - top) * wy).reshape(n, c, h, w)


class Augmentation:
    """Base class: draws per-sample parameters from ``rng`` and warps the batch at once."""

    spatial_ndim = 0  # 1 for signals, 2 for images, 0 for any shape
    p: float = 1.0

    def __call__(self, x, rng=None) -> np.ndarray:
        x = _host(x)
        need = self.spatial_ndim + 1
        if x.ndim < need or x.ndim > need + 1:
            layout = {1: "(N, L) or (N, C, L)", 2: "(N, H, W) or (N, C, H, W)"}
            raise ShapeError(f"{type(self).__name__}: expected a batch "
                             f"{layout.get(self.spatial_ndim, '(N, ...)')}, got {x.shape}")
        if len(x) == 0:
            return x.copy()
        return _cast(self._apply(x, _rng(rng)), x.dtype)

    def _apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def _chosen(self, n: int, rng) -> np.ndarray:
        """Which samples are augmented (each with probability ``p``)."""
        return rng.random(n) < self.p

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def _check_mode(mode: str) -> str:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    return mode


def _range(v, owner: str = "augmentation", name: str = "range") -> tuple[float, float]:
    """``v`` (>= 0) as (-v, v), or a given (lo, hi) pair with lo <= hi."""
    if isinstance(v, tuple | list):
        lo, hi = (float(a) for a in v)
        if not lo <= hi:
            raise ValueError(f"{owner}: {name} range must have lo <= hi, got {tuple(v)}")
        return lo, hi
    return -_nonneg(owner, name, v), float(v)


def _nonneg(owner: str, name: str, v) -> float:
    """``v`` as a float, refusing a negative (or NaN) value with a clear error."""
    if not float(v) >= 0:
        raise ValueError(f"{owner}: {name} must be >= 0, got {v!r}")
    return float(v)


def _count(owner: str, name: str, v) -> int:
    """``v`` as an int >= 0 (a shift or padding in whole positions)."""
    if isinstance(v, bool) or int(v) != v or v < 0:
        raise ValueError(f"{owner}: {name} must be an int >= 0, got {v!r}")
    return int(v)


def _prob(owner: str, v) -> float:
    """``v`` as a probability in [0, 1]."""
    if not 0 <= float(v) <= 1:
        raise ValueError(f"{owner}: p must be a probability in [0, 1], got {v!r}")
    return float(v)


def _factors(owner: str, v) -> tuple[float, float]:
    """A (lo, hi) range of scale factors with 0 < lo <= hi (a factor 0 would divide by 0)."""
    lo, hi = (float(a) for a in v)
    if not 0 < lo <= hi or not np.isfinite(hi):
        raise ValueError(f"{owner}: scale must be a range (lo, hi) of factors with "
                         f"0 < lo <= hi, got {tuple(v)}")
    return lo, hi


def _as_channels(x: np.ndarray, spatial: int) -> np.ndarray:
    """View as (N, C, *spatial) in the working dtype."""
    x = x.astype(_work_dtype(x), copy=False)
    return x if x.ndim == spatial + 2 else x[:, None]


# --- any shape ---------------------------------------------------------------------------------
class GaussianNoise(Augmentation):
    """Adds ``std * N(0, 1)`` noise to every value of a chosen sample (any shape)."""

    def __init__(self, std: float = 0.1, p: float = 1.0):
        self.std, self.p = _nonneg("GaussianNoise", "std", std), _prob("GaussianNoise", p)

    def __call__(self, x, rng=None) -> np.ndarray:
        x = _host(x)
        if x.ndim < 1 or len(x) == 0:
            return x.copy()
        return _cast(self._apply(x, _rng(rng)), x.dtype)

    def _apply(self, x, rng):
        dt = _work_dtype(x)
        noise = rng.standard_normal(x.shape, dtype=dt) * dt.type(self.std)
        noise *= self._chosen(len(x), rng).reshape((-1,) + (1,) * (x.ndim - 1))
        return x + noise


class Compose:
    """Applies ``transforms`` in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, x, rng=None) -> np.ndarray:
        rng = _rng(rng)
        for t in self.transforms:
            x = t(x, rng=rng)
        return x

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(map(repr, self.transforms)) + "])"


# --- 1D signals --------------------------------------------------------------------------------
class RandomShift1d(Augmentation):
    """Shifts each signal by a whole number of positions in [-max_shift, max_shift].

    ``mode="wrap"`` rolls the signal (no values lost); ``"zeros"``/``"edge"`` fill the gap.
    """

    spatial_ndim = 1

    def __init__(self, max_shift: int, mode: str = "wrap", p: float = 1.0):
        owner = type(self).__name__
        self.max_shift = _count(owner, "padding" if owner == "RandomCrop1d" else "max_shift",
                                max_shift)
        self.mode, self.p = _check_mode(mode), _prob(owner, p)

    def _apply(self, x, rng):
        xc = _as_channels(x, 1)
        n, length = len(x), x.shape[-1]
        s = rng.integers(-self.max_shift, self.max_shift + 1, n) * self._chosen(n, rng)
        return _shift(xc, np.arange(length) - s[:, None], self.mode).reshape(x.shape)


class RandomCrop1d(RandomShift1d):
    """Pads ``padding`` positions at both ends, then crops a random window of the old length.

    Equivalent to a random shift in [-padding, padding] that fills with ``mode`` (zeros).
    """

    def __init__(self, padding: int, mode: str = "zeros", p: float = 1.0):
        super().__init__(padding, mode, p)


class RandomFlip1d(Augmentation):
    """Reverses a signal (left-right) with probability ``p``."""

    spatial_ndim = 1

    def __init__(self, p: float = 0.5):
        self.p = _prob(type(self).__name__, p)

    def _apply(self, x, rng):
        flip = self._chosen(len(x), rng).reshape((-1,) + (1,) * (x.ndim - 1))
        return np.where(flip, x[..., ::-1], x)


class RandomScale1d(Augmentation):
    """Stretches each signal about its centre by a factor ``s ~ U[scale]`` (linear interp.).

    ``s > 1`` zooms in (the signal looks wider); positions read outside follow ``mode``.
    """

    spatial_ndim = 1

    def __init__(self, scale: tuple[float, float] = (0.8, 1.25), mode: str = "edge",
                 p: float = 1.0):
        owner = type(self).__name__
        self.scale, self.mode = _factors(owner, scale), _check_mode(mode)
        self.p = _prob(owner, p)

    def _apply(self, x, rng):
        xc = _as_channels(x, 1)
        n, length = len(x), x.shape[-1]
        s = rng.uniform(*self.scale, n)
        s = np.where(self._chosen(n, rng), s, 1.0)
        c = (length - 1) / 2
        src = c + (np.arange(length) - c) / s[:, None]
        return _sample_1d(xc, src, self.mode).reshape(x.shape)


class RandomShear1d(Augmentation):
    """MNIST-1D's shear: adds a ramp ``a * t`` (t from -1 to 1), ``a ~ U(±max_slope)``.

    (A 1D signal has no second axis to shear along; this tilts its baseline instead.)
    """

    spatial_ndim = 1

    def __init__(self, max_slope: float = 0.5, p: float = 1.0):
        owner = type(self).__name__
        self.max_slope, self.p = _nonneg(owner, "max_slope", max_slope), _prob(owner, p)

    def _apply(self, x, rng):
        dt = _work_dtype(x)
        n = len(x)
        a = rng.uniform(-self.max_slope, self.max_slope, n) * self._chosen(n, rng)
        ramp = np.linspace(-1.0, 1.0, x.shape[-1])
        shape = (n,) + (1,) * (x.ndim - 2) + (x.shape[-1],)
        return x.astype(dt, copy=False) + (a[:, None] * ramp).astype(dt).reshape(shape)


# --- 2D images ---------------------------------------------------------------------------------
class RandomFlip2d(Augmentation):
    """Mirrors images left-right with probability ``horizontal``, upside-down with ``vertical``."""

    spatial_ndim = 2

    def __init__(self, horizontal: float = 0.5, vertical: float = 0.0):
        for name, v in (("horizontal", horizontal), ("vertical", vertical)):
            if not 0 <= float(v) <= 1:
                raise ValueError(f"RandomFlip2d: {name} must be a probability in [0, 1], "
                                 f"got {v!r}")
        self.horizontal, self.vertical = float(horizontal), float(vertical)

    def _apply(self, x, rng):
        shape = (-1,) + (1,) * (x.ndim - 1)
        h = (rng.random(len(x)) < self.horizontal).reshape(shape)
        v = (rng.random(len(x)) < self.vertical).reshape(shape)
        x = np.where(h, x[..., ::-1], x)
        return np.where(v, x[..., ::-1, :], x)


class RandomCrop2d(Augmentation):
    """Pads ``padding`` pixels on every side, then crops a random window of the old size.

    A whole-pixel translation by up to ``padding`` in each direction (no interpolation).
    """

    spatial_ndim = 2

    def __init__(self, padding: int, mode: str = "zeros", p: float = 1.0):
        owner = type(self).__name__
        self.padding, self.mode = _count(owner, "padding", padding), _check_mode(mode)
        self.p = _prob(owner, p)

    def _apply(self, x, rng):
        xc = _as_channels(x, 2)
        n, c, h, w = xc.shape
        keep = self._chosen(n, rng)
        dy = rng.integers(-self.padding, self.padding + 1, n) * keep
        dx = rng.integers(-self.padding, self.padding + 1, n) * keep
        src = _pad(xc, self.mode)
        rows = _int_index(np.arange(h) - dy[:, None], h, self.mode)  # (N, H)
        cols = _int_index(np.arange(w) - dx[:, None], w, self.mode)  # (N, W)
        lin = (rows[:, :, None] * src.shape[-1] + cols[:, None, :]).reshape(n, 1, h * w)
        return np.take(src.ravel(), lin + _offsets(src)).reshape(x.shape)


class RandomAffine2d(Augmentation):
    """Rotation, scaling, shear and translation about the image centre, drawn per sample.

    Args:
        degrees: rotation angle ~ U(-degrees, degrees), counter-clockwise as displayed (row 0
            at the top); a pair (lo, hi) gives the range itself.
        translate: shift in pixels ~ U(-translate, translate) along each axis (a pair for
            (rows, columns)); fractional shifts interpolate.
        scale: zoom factor ~ U(scale[0], scale[1]) (> 1 enlarges the content).
        shear: horizontal shear angle in degrees ~ U(-shear, shear) (or a pair (lo, hi)).
        mode: boundary handling (default zeros); ``p``: probability per sample.
    All are combined into one 2x2 matrix per sample and applied with one bilinear sampling.
    """

    spatial_ndim = 2

    def __init__(self, degrees: float = 0.0, translate: float | tuple[float, float] = 0.0,
                 scale: tuple[float, float] = (1.0, 1.0), shear: float = 0.0,
                 mode: str = "zeros", p: float = 1.0):
        owner = type(self).__name__
        self.degrees = _range(degrees, owner, "degrees")
        self.scale = _factors(owner, scale)
        self.shear = _range(shear, owner, "shear")
        t = translate if isinstance(translate, tuple | list) else (translate, translate)
        self.translate = tuple(_nonneg(owner, "translate", v) for v in t)
        self.mode, self.p = _check_mode(mode), _prob(owner, p)

    def _apply(self, x, rng):
        xc = _as_channels(x, 2)
        n, _, h, w = xc.shape
        theta = -np.deg2rad(rng.uniform(*self.degrees, n))  # rows grow downwards
        s = rng.uniform(*self.scale, n)
        phi = np.deg2rad(rng.uniform(*self.shear, n))
        ty = rng.uniform(-self.translate[0], self.translate[0], n)
        tx = rng.uniform(-self.translate[1], self.translate[1], n)
        keep = self._chosen(n, rng)
        theta, phi, ty, tx = theta * keep, phi * keep, ty * keep, tx * keep
        s = np.where(keep, s, 1.0)
        # forward map of (x, y) offsets from the centre: A = s R(theta) [[1, k], [0, 1]],
        # k = tan(phi); each output pixel reads the input at A^-1 (offset - t), where
        # A^-1 = [[1, -k], [0, 1]] R(-theta) / s = [[c + k s_, s_ - k c], [-s_, c]] / s
        c, s_, k = np.cos(theta), np.sin(theta), np.tan(phi)
        wd = xc.dtype  # sampling positions in the working dtype: float64 stays exact
        i00, i01, i10, i11 = ((v / s).astype(wd)[:, None, None]
                              for v in (c + k * s_, s_ - k * c, -s_, c))
        cy, cx = (h - 1) / 2, (w - 1) / 2
        oy = (np.arange(h, dtype=wd) - cy)[None, :, None] - ty.astype(wd)[:, None, None]
        ox = (np.arange(w, dtype=wd) - cx)[None, None, :] - tx.astype(wd)[:, None, None]
        sx = i00 * ox + i01 * oy + cx
        sy = i10 * ox + i11 * oy + cy
        return _sample_2d(xc, sy, sx, self.mode).reshape(x.shape)


class RandomRotate2d(RandomAffine2d):
    """Rotates each image about its centre by an angle ~ U(-degrees, degrees) (bilinear)."""

    def __init__(self, degrees: float = 15.0, mode: str = "zeros", p: float = 1.0):
        super().__init__(degrees=degrees, mode=mode, p=p)


class RandomTranslate2d(RandomAffine2d):
    """Shifts each image by up to ``max_shift`` pixels per axis (fractional, bilinear)."""

    def __init__(self, max_shift: float | tuple[float, float] = 1.0, mode: str = "zeros",
                 p: float = 1.0):
        super().__init__(translate=max_shift, mode=mode, p=p)


class RandomShear2d(RandomAffine2d):
    """Shears each image horizontally by an angle ~ U(-degrees, degrees) (bilinear)."""

    def __init__(self, degrees: float = 10.0, mode: str = "zeros", p: float = 1.0):
        super().__init__(shear=degrees, mode=mode, p=p)


class RandomScale2d(RandomAffine2d):
    """Zooms each image about its centre by a factor ~ U(scale[0], scale[1]) (bilinear)."""

    def __init__(self, scale: tuple[float, float] = (0.9, 1.1), mode: str = "zeros",
                 p: float = 1.0):
        super().__init__(scale=scale, mode=mode, p=p)
