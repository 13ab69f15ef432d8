"""Shared fixtures. Op-matrix helpers (cases, domains, layouts) live in ``_opcases.py``."""

import numpy as np
import pytest

import nodegrad as ng


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip, with the reason, where CuPy or a CUDA device is missing."""
    if ng.cuda_available():
        return
    skip = pytest.mark.skip(reason="needs CuPy and a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _jit_kernel_cache(tmp_path_factory):
    """One directory of compiled jit kernels for the whole session (not the user's cache)."""
    from nodegrad.jit import fuse

    fuse.set_cache_dir(tmp_path_factory.mktemp("jit-kernels"))


@pytest.fixture
def rng():
    """A NumPy generator with a fixed seed, fresh for each test."""
    return np.random.default_rng(0)


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def float_dtype(request):
    """Each floating dtype nodegrad computes in."""
    return request.param


@pytest.fixture(params=[pytest.param("gpu", marks=pytest.mark.gpu), "stand-in"])
def cuda(request):
    """The name of a CUDA device under test: the GPU (marked ``gpu``) or, in every run, the
    stand-in device of ``_fakecupy`` (NumPy inside, CuPy's refusals outside)."""
    if request.param == "gpu":
        yield "cuda"
    else:
        import _fakecupy

        with _fakecupy.installed():
            yield "cuda"
