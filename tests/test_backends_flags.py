"""ng.backends: PyTorch's cudnn / cuda.matmul / mps switches, their defaults and ties."""

import pytest

import nodegrad as ng
from nodegrad import backends

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def restore_flags():
    saved = {n: getattr(backends.cudnn, n) for n in backends.cudnn._switches}
    mm = {n: getattr(backends.cuda.matmul, n) for n in backends.cuda.matmul._switches}
    prec = ng.get_float32_matmul_precision()
    det = (ng.are_deterministic_algorithms_enabled(),
           ng.is_deterministic_algorithms_warn_only_enabled())
    yield
    for n, v in saved.items():
        setattr(backends.cudnn, n, v)
    for n, v in mm.items():
        setattr(backends.cuda.matmul, n, v)
    ng.set_float32_matmul_precision(prec)
    ng.use_deterministic_algorithms(det[0], warn_only=det[1])


def test_defaults_match_torch():
    for n in ("enabled", "benchmark", "deterministic", "allow_tf32"):
        assert getattr(ng.backends.cudnn, n) == getattr(torch.backends.cudnn, n), n
    assert ng.backends.cuda.matmul.allow_tf32 is False
    assert ng.backends.mps.is_available() is False and ng.backends.mps.is_built() is False
    assert ng.backends.cudnn.is_available() is False and ng.backends.cudnn.version() is None
    assert isinstance(ng.backends.cuda.is_built(), bool)


def test_flags_are_settable_and_read_back():
    ng.backends.cudnn.benchmark = True
    ng.backends.cudnn.enabled = False
    ng.backends.cudnn.allow_tf32 = False
    assert (ng.backends.cudnn.benchmark, ng.backends.cudnn.enabled,
            ng.backends.cudnn.allow_tf32) == (True, False, False)
    assert "benchmark=True" in repr(ng.backends.cudnn)


def test_cudnn_deterministic_is_its_own_flag_as_torch():
    """PyTorch's cudnn.deterministic leaves use_deterministic_algorithms as it was."""
    ng.use_deterministic_algorithms(False)
    ng.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(False)
    with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, deterministic=True):
        assert ng.are_deterministic_algorithms_enabled() is \
            torch.are_deterministic_algorithms_enabled() is False
    assert ng.backends.cudnn.deterministic is True


def test_matmul_allow_tf32_is_the_matmul_precision():
    ng.backends.cuda.matmul.allow_tf32 = True
    assert ng.get_float32_matmul_precision() == "high"
    ng.backends.cuda.matmul.allow_tf32 = False
    assert ng.get_float32_matmul_precision() == "highest"
    ng.set_float32_matmul_precision("medium")
    assert ng.backends.cuda.matmul.allow_tf32 is True


def test_bad_values_and_names():
    with pytest.raises(TypeError, match="cudnn.deterministic: expects a bool"):
        ng.backends.cudnn.deterministic = 1
    with pytest.raises(TypeError, match="allow_tf32: expects a bool"):
        ng.backends.cuda.matmul.allow_tf32 = "yes"
    with pytest.raises(AttributeError, match="no switch 'determinstic'"):
        ng.backends.cudnn.determinstic = True
