"""PyTorch's ``torch.version``, as environment reports read it: the package's version and the
CUDA runtime version CuPy runs on (None without CuPy or a GPU, as a CPU build of PyTorch)."""

from __future__ import annotations

from . import _backend as B

__version__ = "0.1.0"
git_version = None
hip = None
debug = False


def __getattr__(name: str):
    if name == "cuda":  # asked lazily: finding it imports CuPy
        return B.cuda_version()
    raise AttributeError(f"module 'nodegrad.version' has no attribute {name!r}")
