"""Shared fixtures. Op-matrix helpers (cases, domains, layouts) live in ``_opcases.py``."""

import sys

import numpy as np
import pytest

import nodegrad as ng


# the longest cases of tests whose other cases stay in the default run (or whose guarantee a
# shorter test there also checks): they run with ``pytest -m slow``
_SLOW_CASES = {
    "tests/test_distributed.py::test_killed_rank_ends_the_job_and_the_run_resumes",
    "tests/test_distributed.py::test_mid_epoch_checkpoint_resumes_on_another_number_of_ranks"
    "[before2-after2]",
    "tests/test_distributed.py::test_ranks_match_one_process_on_the_full_batch[4]",
    "tests/test_torch_opinfo.py::test_opinfo_samples_match_pytorch[grid_sampler_3d-float64]",
    "tests/test_torch_opinfo.py::test_opinfo_samples_match_pytorch[grid_sampler_3d-float16]",
    "tests/test_examples.py::test_example_runs_and_draws_its_figures[lottery_ticket_mnist1d.py]",
    "tests/test_examples.py::test_example_runs_and_draws_its_figures[init_activations.py]",
    "tests/test_ports_gpt.py::test_nanogpt_training_matches_torch[True-False-tanh-True]",
    "tests/test_memory.py::test_memory_flat_over_training[grad]",
    "tests/test_benchmarks.py::test_workload_runs_and_frameworks_agree[J5]",
}


@pytest.hookimpl(tryfirst=True)  # before ``-m 'not slow'`` deselects
def pytest_collection_modifyitems(config, items):
    """The cases in ``_SLOW_CASES`` are marked ``slow``; tests marked ``gpu`` skip, with the
    reason, where CuPy or a CUDA device is missing."""
    slow = pytest.mark.slow
    for item in items:
        if item.nodeid in _SLOW_CASES:
            item.add_marker(slow)
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


@pytest.fixture(autouse=True)
def _torch_distributions_validate():
    """PyTorch's distributions check their arguments by default, but the first use of
    torch._dynamo (a test that calls torch.compile as a reference) switches that off for the
    rest of the process; tests that compare refusals with PyTorch's need it on, whatever ran
    before them in the worker."""
    yield
    dists = sys.modules.get("torch.distributions")
    if dists is not None and not dists.Distribution._validate_args:
        dists.Distribution.set_default_validate_args(True)


@pytest.fixture(params=["numpy", "numba"])
def cpu_kernels(request, monkeypatch):
    """Runs a test with _backend's numba loops off, then on (as where numba is imported)."""
    from nodegrad import _backend as B

    if request.param == "numpy":
        monkeypatch.setattr(B, "_kernels", False)
    else:
        pytest.importorskip("numba")
        monkeypatch.setattr(B, "_kernels", None)
        assert B.cpu_kernels() is not None
    return request.param


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
