"""Lazy layers: sizes read from the first input (or a state dict), as PyTorch's Lazy* layers."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.errors import ShapeError
from nodegrad.nn.layers import lazy

torch = pytest.importorskip("torch")
nn = ng.nn

CASES = [  # lazy layer, its concrete twin built with the size, input shape
    (lambda: lazy.LazyLinear(5), lambda n: nn.Linear(n, 5), "Linear", (4, 7)),
    (lambda: lazy.LazyConv1d(4, 3, padding=1), lambda n: nn.Conv1d(n, 4, 3, padding=1),
     "Conv1d", (2, 3, 9)),
    (lambda: lazy.LazyConv2d(4, 3, groups=2), lambda n: nn.Conv2d(n, 4, 3, groups=2), "Conv2d",
     (2, 6, 5, 5)),
    (lambda: lazy.LazyConv3d(2, 2), lambda n: nn.Conv3d(n, 2, 2), "Conv3d", (1, 3, 3, 3, 3)),
    (lambda: lazy.LazyConvTranspose1d(4, 3, stride=2), lambda n: nn.ConvTranspose1d(n, 4, 3, 2),
     "ConvTranspose1d", (2, 3, 5)),
    (lambda: lazy.LazyConvTranspose2d(2, 2), lambda n: nn.ConvTranspose2d(n, 2, 2),
     "ConvTranspose2d", (2, 3, 4, 4)),
    (lambda: lazy.LazyConvTranspose3d(2, 2), lambda n: nn.ConvTranspose3d(n, 2, 2),
     "ConvTranspose3d", (1, 3, 2, 2, 2)),
    (lambda: lazy.LazyBatchNorm1d(), lambda n: nn.BatchNorm1d(n), "BatchNorm1d", (4, 3, 5)),
    (lambda: lazy.LazyBatchNorm2d(momentum=0.3), lambda n: nn.BatchNorm2d(n, momentum=0.3),
     "BatchNorm2d", (2, 3, 4, 4)),
    (lambda: lazy.LazyBatchNorm3d(), lambda n: nn.BatchNorm3d(n), "BatchNorm3d",
     (2, 3, 2, 2, 2)),
    (lambda: lazy.LazyInstanceNorm1d(track_running_stats=False),  # affine: True, as PyTorch's
     lambda n: nn.InstanceNorm1d(n, affine=True), "InstanceNorm1d", (3, 6)),
    (lambda: lazy.LazyInstanceNorm2d(affine=False, track_running_stats=False),
     lambda n: nn.InstanceNorm2d(n), "InstanceNorm2d", (2, 3, 4, 4)),
    (lambda: lazy.LazyInstanceNorm3d(),  # PyTorch's code: affine and running stats by default
     lambda n: nn.InstanceNorm3d(n, affine=True, track_running_stats=True), "InstanceNorm3d",
     (2, 3, 2, 2, 2)),
]
IDS = [c[2] for c in CASES]


def _size(shape, name):
    if name == "Linear":
        return shape[-1]
    unbatched = name.startswith("Instance") and len(shape) == int(name[-2]) + 1
    return shape[0 if unbatched else 1]


@pytest.mark.parametrize("make,twin,name,shape", CASES, ids=IDS)
def test_first_call_builds_the_concrete_layer_with_its_initial_values(make, twin, name, shape):
    x = ng.tensor(np.random.default_rng(0).standard_normal(shape), dtype=ng.float32)
    ng.manual_seed(5)
    m = make()
    held = dict(m.named_parameters())
    assert all(isinstance(p, lazy.UninitializedParameter) for p in held.values())
    y = m(x)
    ng.manual_seed(5)
    ref = twin(_size(shape, name))
    assert type(m).__name__ == name and repr(m) == repr(ref)
    np.testing.assert_array_equal(y.numpy(), ref(x).numpy())
    for k, p in m.named_parameters():
        assert p is held[k] and type(p) is nn.Parameter  # the same objects, now built
    assert list(m.state_dict()) == list(ref.state_dict())
    twin_args = {"Linear": (5,), "Conv1d": (4, 3), "BatchNorm1d": ()}
    if name in twin_args:  # torch's lazy twin names the same state
        t = getattr(torch.nn, "Lazy" + name)(*twin_args[name])
        t(torch.tensor(x.numpy()))
        assert list(t.state_dict()) == list(m.state_dict())


def test_dtype_moves_before_the_first_call_are_kept():
    m = lazy.LazyLinear(3).double()
    m(ng.ones(2, 4, dtype=ng.float64))
    assert m.weight.dtype == ng.float64 and m.weight.shape == (3, 4)


def test_optimisers_refuse_until_a_dry_run_and_then_train():
    m = nn.Sequential(lazy.LazyConv1d(4, 3), nn.ReLU(), nn.Flatten(), lazy.LazyLinear(2))
    with pytest.raises(ValueError, match="dry run"):
        ng.optim.Adam(m.parameters())
    x = ng.randn(8, 1, 10)
    m(x)
    opt = ng.optim.Adam(m.parameters(), lr=0.05)
    y = ng.randint(0, 2, (8,))
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first


def test_a_state_dict_sets_the_sizes_before_any_call():
    src = nn.Sequential(nn.Conv2d(3, 4, 3, groups=1), nn.BatchNorm2d(4), nn.Flatten(),
                        nn.Linear(4 * 4 * 4, 5))
    src.eval()
    dst = nn.Sequential(lazy.LazyConv2d(4, 3), lazy.LazyBatchNorm2d(), nn.Flatten(),
                        lazy.LazyLinear(5))
    dst.load_state_dict(src.state_dict())
    dst.eval()
    x = ng.randn(2, 3, 6, 6)
    np.testing.assert_array_equal(dst(x).numpy(), src(x).numpy())
    assert repr(dst) == repr(src)


def test_torch_lazy_state_dict_loads_into_a_lazy_model_and_agrees():
    t = torch.nn.Sequential(torch.nn.LazyConv1d(4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                            torch.nn.LazyLinear(3)).double()
    x = np.random.default_rng(1).standard_normal((2, 2, 8))
    want = t(torch.tensor(x)).detach().numpy()
    m = nn.Sequential(lazy.LazyConv1d(4, 3), nn.ReLU(), nn.Flatten(), lazy.LazyLinear(3)).double()
    m.load_state_dict({k: v.numpy() for k, v in t.state_dict().items()})
    np.testing.assert_allclose(m(ng.tensor(x)).numpy(), want, rtol=1e-12)


def test_inputs_without_the_size_axis_are_refused_naming_the_layer():
    with pytest.raises(ShapeError, match="LazyBatchNorm2d: expected 4-d input"):
        lazy.LazyBatchNorm2d()(ng.ones(3, 4))
    with pytest.raises(ShapeError, match="LazyConv2d: expected 3-d or 4-d"):
        lazy.LazyConv2d(2, 3)(ng.ones(3, 4))
    with pytest.raises(ShapeError, match="LazyLinear"):
        lazy.LazyLinear(2)(ng.tensor(1.0))


def test_hooks_and_mode_survive_the_first_call():
    m = lazy.LazyLinear(2)
    seen = []
    m.register_forward_hook(lambda mod, a, out: seen.append(out.shape))
    m.eval()
    m(ng.ones(3, 4))
    m(ng.ones(1, 4))
    assert seen == [(3, 2), (1, 2)] and not m.training
    assert "uninitialized" in repr(lazy.LazyConv1d(2, 3))
