"""nn.init and nn.utils against PyTorch: parametrizations, clipping, pruning, fusion."""

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")
pytest.importorskip("torch.nn.utils.prune")  # a submodule torch.nn.utils does not import


def _chain_no_right_inverse(lib):
    """A Linear's weight parametrized twice, the second parametrization's right_inverse
    raising NotImplementedError."""
    P = lib.nn.utils.parametrize

    class Double(lib.nn.Module):
        def forward(self, x):
            return x * 2

    class PlusOne(lib.nn.Module):
        def forward(self, x):
            return x + 1

        def right_inverse(self, a):
            raise NotImplementedError

    m = lib.nn.Linear(3, 2)
    with lib.no_grad():
        m.weight.copy_(lib.tensor(np.arange(6.0, dtype=np.float32).reshape(2, 3)))
    P.register_parametrization(m, "weight", Double())
    P.register_parametrization(m, "weight", PlusOne())
    return m.weight.detach().numpy(), sorted(m.state_dict())


def test_chained_parametrization_without_right_inverse():
    tw, tk = _chain_no_right_inverse(torch)
    nw, nk = _chain_no_right_inverse(ng)
    np.testing.assert_allclose(nw, tw)
    assert nk == tk


def _prune_bias_twice(lib, first_mask, amount, n, dim):
    """A Linear's 1-d bias pruned by a custom mask, then by ln_structured along ``dim``."""
    P = lib.nn.utils.prune
    m = lib.nn.Linear(2, 4)
    with lib.no_grad():
        m.bias.copy_(lib.tensor([0.5, -2.0, 3.0, 1.0]))
    P.custom_from_mask(m, "bias", lib.tensor(first_mask))
    P.ln_structured(m, "bias", amount, n, dim)
    return m.bias_mask.numpy(), m.bias.detach().numpy()


@pytest.mark.parametrize("first_mask, amount, n, dim", [
    ([1.0, 1.0, 1.0, 1.0], 2, 1, -1),
    ([1.0, 0.0, 1.0, 1.0], 1, 1, -1),
    ([1.0, 0.0, 1.0, 1.0], 0.5, 2, -1),
    ([0.0, 0.0, 0.0, 0.0], 1, 2, -1),
])
def test_structured_pruning_of_a_1d_tensor_in_a_container(first_mask, amount, n, dim):
    t_mask, t_val = _prune_bias_twice(torch, first_mask, amount, n, dim)
    n_mask, n_val = _prune_bias_twice(ng, first_mask, amount, n, dim)
    np.testing.assert_array_equal(n_mask, t_mask)
    np.testing.assert_allclose(n_val, t_val)


@pytest.mark.parametrize("dim", [1, 2, -3])
def test_structured_pruning_in_a_container_dim_out_of_range(dim):
    """Stacked on an earlier pruning, a dim past the tensor's axes is an IndexError."""
    for lib in (torch, ng):
        m = lib.nn.Linear(3, 2)
        lib.nn.utils.prune.identity(m, "weight" if dim != 1 else "bias")
        with pytest.raises(IndexError):
            lib.nn.utils.prune.ln_structured(m, "weight" if dim != 1 else "bias", 1, 2, dim)


def _fusion_case(lib, case):
    nn = lib.nn
    if case == "train":
        return lambda: nn.utils.fusion.fuse_conv_bn_eval(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3))
    if case == "no_stats":
        conv, bn = nn.Conv2d(2, 3, 1).eval(), nn.BatchNorm2d(3, track_running_stats=False).eval()
        return lambda: nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
    linear, bn = nn.Linear(2, 3).eval(), nn.BatchNorm1d(2).eval()
    return lambda: nn.utils.fusion.fuse_linear_bn_eval(linear, bn)


@pytest.mark.parametrize("case", ["train", "no_stats", "features"])
def test_fusion_refusals_are_assertion_errors(case):
    """PyTorch refuses these fusions with an AssertionError; code catching it works on both."""
    for lib in (torch, ng):
        with pytest.raises(AssertionError):
            _fusion_case(lib, case)()


@pytest.mark.parametrize("lib", [torch, ng], ids=["torch", "nodegrad"])
def test_get_total_norm_refuses_a_missing_tensor(lib):
    """A None among the tensors (a parameter without a gradient) is the caller's to leave out."""
    with pytest.raises((TypeError, RuntimeError, AttributeError)):
        lib.nn.utils.get_total_norm([lib.ones(2), None])
    assert float(lib.nn.utils.get_total_norm([lib.ones(2) * 2, lib.ones(2)])) == \
        pytest.approx(10 ** 0.5)


@pytest.mark.parametrize("mean, std, a, b", [
    (0.0, 0.02, 0.5, 1.0),     # 25 std above the mean (PyTorch's rejection sampling copes)
    (0.0, 1.0, -9.0, -8.0),
    (0.0, 1.0, 39.0, 40.0),    # past where the normal CDF underflows
    (0.0, -1.0, -1.0, 2.0),    # a negative std acts as its magnitude
    (0.5, 2.0, -1.0, 3.0),
])
def test_trunc_normal_matches_the_truncated_law_in_the_tails(mean, std, a, b):
    """The truncated normal PyTorch samples (its rejection sampling is exact but slow this far
    out, so the law's own moments are the reference)."""
    from scipy.stats import truncnorm

    s = abs(std)
    law = truncnorm((a - mean) / s, (b - mean) / s, loc=mean, scale=s)
    w = ng.nn.init.trunc_normal_(ng.empty(20000, dtype=ng.float64), mean, std, a, b,
                                 generator=ng.random.Generator(seed=0))
    x = w.numpy()
    assert a <= x.min() and x.max() <= b
    assert abs(x.mean() - law.mean()) < 6 * law.std() / np.sqrt(x.size)
    assert abs(x.std() - law.std()) < 0.05 * law.std()


@pytest.mark.parametrize("lib", [torch, ng], ids=["torch", "nodegrad"])
def test_trunc_normal_accepts_equal_bounds_and_a_negative_std(lib):
    w = lib.nn.init.trunc_normal_(lib.empty(1000, dtype=lib.float64), 1.0, 1.0, 1.0, 1.0)
    assert (w.numpy() == 1.0).all()
    w = lib.nn.init.trunc_normal_(lib.empty(1000, dtype=lib.float64), 0.0, -1.0, -1.0, 2.0)
    assert -1.0 <= w.numpy().min() and w.numpy().max() <= 2.0 and w.numpy().std() > 0.5


@pytest.mark.parametrize("lib", [torch, ng], ids=["torch", "nodegrad"])
def test_spectral_norm_of_a_0d_tensor_is_refused_when_registered(lib):
    m = lib.nn.Module()
    m.w = lib.nn.Parameter(lib.tensor(2.0))
    with pytest.raises(IndexError, match="[Dd]im"):
        lib.nn.utils.parametrizations.spectral_norm(m, "w")
