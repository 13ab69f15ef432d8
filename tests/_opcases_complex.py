"""Op-matrix cases of :mod:`nodegrad.ops.complex` and :mod:`nodegrad.fft` (appended to
``_opcases.CASES``): real inputs and real outputs around the complex ops, so the float64
gradcheck covers their VJPs on both parts."""

from __future__ import annotations

from _opcases import Call, arr, case, shapes

import nodegrad as ng

_LAST = ("vector", "matrix", "3d", "size1", "noncontig")  # at least one axis, none empty
_PAIR = ("scalar", "vector", "matrix", "3d", "size1", "noncontig")


def _pair(fn):
    def build(draw, layout):
        s = draw(shapes(layout, 1))[0]
        return Call(fn, (arr(draw, s), arr(draw, s, "pos")))
    return build


def _one(fn):
    def build(draw, layout):
        return Call(fn, (arr(draw, draw(shapes(layout, 1))[0]),))
    return build


def _parts(x, y):
    z = ng.complex(x, y)
    w = ng.conj(z) * ng.complex(y, x)
    return ng.real(w) + ng.imag(z * z) + ng.angle(ng.complex(y, x))


case("complex_parts", _pair(_parts), prims=("complex", "conj", "real", "imag", "angle"),
     layouts=_PAIR, has_torch=False)
case("view_as_real_complex", _one(lambda x: ng.view_as_real(
    ng.view_as_complex(ng.stack([x, x * x], -1)) ** 2)),
     prims=("view_as_real", "view_as_complex"), layouts=_PAIR, has_torch=False)
case("fft_c2c", _one(lambda x: ng.view_as_real(ng.fft.ifft(ng.fft.fft(x) * x, norm="ortho"))),
     prims=("fft_c2c",), layouts=_LAST, has_torch=False)
case("fft_r2c_c2r", _one(lambda x: ng.fft.irfft(ng.fft.rfft(x) * ng.fft.rfft(x * x),
                                                n=x.shape[-1])),
     prims=("fft_r2c", "fft_c2r"), layouts=_LAST, has_torch=False)
