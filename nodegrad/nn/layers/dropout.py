"""Dropout: inverted (PyTorch's, the default) or classic (the notes': scale at test time).

``inplace=True`` is accepted for PyTorch's API; the result is a new tensor, the input is left
as it was."""

from __future__ import annotations

from ...random import Generator
from .. import functional as F
from ..module import Module


class Dropout(Module):
    """Zero units with probability ``p`` while training; see ``nn.functional.dropout``."""

    def __init__(self, p: float = 0.5, mode: str = "inverted", generator: Generator | None = None,
                 *, inplace: bool = False):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        if isinstance(mode, bool):  # PyTorch's Dropout(p, inplace): no mode is a bool
            mode, inplace = "inverted", mode
        if mode not in ("inverted", "classic"):
            raise ValueError(f"Dropout: mode must be 'inverted' or 'classic', got {mode!r}")
        _check_generator(self, generator)
        self.p, self.mode, self.generator, self.inplace = p, mode, generator, bool(inplace)

    def forward(self, x):
        return F.dropout(x, self.p, self.training, mode=self.mode, generator=self.generator)

    def extra_repr(self) -> str:
        mode = "" if self.mode == "inverted" else f", mode={self.mode!r}"
        return f"p={self.p}, inplace={self.inplace}{mode}"  # PyTorch's, and the notes' mode


def _check_generator(m: Module, generator) -> None:
    if generator is not None and not isinstance(generator, Generator):
        raise TypeError(f"{type(m).__name__}: generator must be a nodegrad.random.Generator, "
                        f"got {type(generator).__name__} (PyTorch's inplace goes second, "
                        "Dropout(p, True), or as inplace=True)")


# --- channel and alpha dropout ----------------------------------------------------------------
class _DropoutVariant(Module):
    fn: str = ""

    def __init__(self, p: float = 0.5, generator: Generator | None = None, *,
                 inplace: bool = False):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{type(self).__name__}: p must be in [0, 1], got {p}")
        if isinstance(generator, bool):  # PyTorch's (p, inplace): no generator is a bool
            generator, inplace = None, generator
        _check_generator(self, generator)
        self.p, self.generator, self.inplace = p, generator, bool(inplace)

    def forward(self, x):
        return getattr(F, self.fn)(x, self.p, self.training, generator=self.generator)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


class Dropout1d(_DropoutVariant):
    """Zero whole channels of (N, C, L) while training (neighbouring steps are correlated)."""

    fn = "dropout1d"


class Dropout2d(_DropoutVariant):
    """Zero whole feature maps of (N, C, H, W) while training."""

    fn = "dropout2d"


class Dropout3d(_DropoutVariant):
    """Zero whole feature volumes of (N, C, D, H, W) while training."""

    fn = "dropout3d"


class AlphaDropout(_DropoutVariant):
    """Dropout that keeps SELU's zero mean and unit variance (see F.alpha_dropout)."""

    fn = "alpha_dropout"


class FeatureAlphaDropout(_DropoutVariant):
    """Alpha dropout of whole channels, for SELU networks (see F.feature_alpha_dropout)."""

    def forward(self, x):
        return F.feature_alpha_dropout(x, self.p, self.training, generator=self.generator)
