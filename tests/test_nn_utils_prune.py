"""``nn.utils.prune`` against PyTorch's: the re-parametrisation (``<name>_orig``, ``<name>_mask``,
the forward pre-hook), masks of every method, iterative pruning, global pruning, ``remove``,
state dicts in both directions; then PyTorch's pruning tutorial and a lottery-ticket loop
(iterative magnitude pruning with rewinding), each written once against ``lib`` and run on both
libraries in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest

import nodegrad as ng
import nodegrad.nn.utils.prune
from _ports import _one_torch_thread, arrays, assert_same, float64_one_thread  # noqa: F401

pytest.importorskip("torch")
import torch  # noqa: E402
import torch.nn.utils.prune  # noqa: E402, F401

pytestmark = pytest.mark.usefixtures("float64_one_thread")


def both(fn, *args, tol: float = 1e-10):
    ref, got = fn(torch, *args), fn(ng, *args)
    assert_same(got, ref, tol)
    return got


def pre_hooks(module):
    """The forward pre-hooks as PyTorch code reads them (``_forward_pre_hooks.values()``)."""
    hooks = module._forward_pre_hooks
    return list(hooks.values() if hasattr(hooks, "values") else hooks)


def distinct(lib, shape, seed):
    """Values with distinct magnitudes (no ties for topk to break)."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    mags = rng.permutation(np.arange(1, n + 1)) / n + rng.uniform(0, 1e-3, n)
    return lib.tensor((mags * rng.choice([-1.0, 1.0], n)).reshape(shape))


def load(lib, model, seed=0):
    with lib.no_grad():
        for i, (_, p) in enumerate(model.named_parameters()):
            p.copy_(distinct(lib, tuple(p.shape), seed + i))
    return model


# 1. the re-parametrisation, every method, iterative pruning and remove

def layers(lib):
    prune, nn = lib.nn.utils.prune, lib.nn
    lin = load(lib, nn.Linear(6, 5))
    conv = load(lib, nn.Conv2d(3, 4, 3), seed=10)
    rec = {}
    prune.l1_unstructured(lin, "weight", amount=0.3)
    rec["keys1"] = list(lin.state_dict())
    rec["params1"] = [n for n, _ in lin.named_parameters()]
    rec["buffers1"] = [n for n, _ in lin.named_buffers()]
    rec["weight_is_param"] = isinstance(lin.weight, nn.Parameter)
    rec["hook"] = type(pre_hooks(lin)[0]).__name__
    prune.l1_unstructured(lin, "weight", amount=4)  # on the 21 still unpruned
    prune.ln_structured(lin, "weight", amount=0.4, n=1, dim=0)  # 2 rows of 5
    prune.ln_structured(lin, "weight", amount=1, n=float("inf"), dim=-1)
    prune.ln_structured(lin, "weight", amount=0, n="fro", dim=1)
    prune.l1_unstructured(lin, "bias", amount=0.4, importance_scores=lin.bias * lin.bias - 0.3)
    rec["history"] = [type(m).__name__ for m in pre_hooks(lin)[0]]
    rec["container_len"] = len(pre_hooks(lin)[0])
    rec["lin_state"] = arrays(lin.state_dict())
    prune.ln_structured(conv, "weight", amount=2, n=2, dim=0)
    prune.ln_structured(conv, "weight", amount=0.34, n=2, dim=1)  # 1 of the 3 in-channels
    prune.ln_structured(conv, "weight", amount=1, n=-math.inf, dim=3)
    prune.custom_from_mask(conv, "bias", lib.tensor([1.0, 0.0, 1.0, 1.0]))
    prune.identity(conv, "bias")
    prune.l1_unstructured(conv, "weight", amount=0.25)
    rec["conv_state"] = arrays(conv.state_dict())
    x = lib.tensor(np.random.default_rng(1).standard_normal((2, 3, 5, 5)))
    out = conv(x).sum() + lin(lib.tensor(np.ones((3, 6)))).pow(2).sum()
    out.backward()
    rec["out"] = out.item()
    rec["grads"] = [arrays({n: p.grad for n, p in m.named_parameters()}) for m in (lin, conv)]
    rec["leaves"] = [lin.weight.is_leaf, lin.weight.requires_grad, lin.weight_orig.is_leaf]
    rec["pruned"] = [prune.is_pruned(lin), prune.is_pruned(nn.Sequential(nn.Tanh(), conv))]
    orig = lin.weight_orig
    prune.remove(lin, "weight")
    rec["after_remove"] = arrays(lin.state_dict())
    rec["same_object"] = lin.weight is orig and isinstance(lin.weight, nn.Parameter)
    rec["hooks_left"] = [m._tensor_name for m in pre_hooks(lin)]
    prune.remove(conv, "weight")
    prune.remove(conv, "bias")
    rec["conv_pruned"] = prune.is_pruned(conv)
    rec["conv_after"] = arrays(conv.state_dict())
    return rec


def test_methods_state_and_gradients_match_torch():
    rec = both(layers)
    assert rec["keys1"] == ["bias", "weight_orig", "weight_mask"]
    assert rec["history"] == ["L1Unstructured", "L1Unstructured", "LnStructured",
                              "LnStructured", "LnStructured"]
    m = rec["lin_state"]["weight_mask"]
    assert m.sum() == 11 and m.shape == (5, 6)
    assert rec["weight_is_param"] is False and rec["same_object"] is True


def test_weight_is_recomputed_by_the_hook_as_torch():
    """``module.weight`` is a plain tensor, stale after an optimiser step until the next
    forward (PyTorch's behaviour); gradients reach ``weight_orig`` masked, and weight decay
    moves its pruned entries (they stay out of the forward)."""
    def prog(lib):
        prune = lib.nn.utils.prune
        lin = load(lib, lib.nn.Linear(4, 3))
        prune.l1_unstructured(lin, "weight", amount=5)
        opt = lib.optim.SGD(lin.parameters(), lr=0.1, weight_decay=0.5, momentum=0.9)
        x = lib.tensor(np.random.default_rng(2).standard_normal((8, 4)))
        rec = []
        for _ in range(3):
            opt.zero_grad()
            lin(x).pow(2).mean().backward()
            before = lin.weight.detach().clone()
            opt.step()
            rec.append({"stale": arrays({"w": lin.weight, "before": before}),
                        "orig": lin.weight_orig.detach().clone(),
                        "grad": lin.weight_orig.grad.clone()})
            lin(x)
            rec[-1]["fresh"] = lin.weight.detach().clone()
        return rec

    rec = both(prog)
    for r in rec:
        assert np.array_equal(r["stale"]["w"], r["stale"]["before"])
    mask = rec[-1]["fresh"] != 0
    assert (rec[0]["grad"].numpy()[~mask] == 0).all()
    assert (rec[-1]["orig"].numpy()[~mask] != 0).all()  # decayed, not zero: PyTorch's


def test_global_unstructured_with_importance_scores():
    def prog(lib):
        prune, nn = lib.nn.utils.prune, lib.nn
        model = load(lib, nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)))
        prune.l1_unstructured(model[2], "weight", amount=3)
        params = [(model[0], "weight"), (model[0], "bias"), (model[2], "weight")]
        scores = {(model[0], "bias"): lib.tensor([9.0, 0.001, 9.0, 0.002])}
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured,
                                  importance_scores=scores, amount=0.3)
        prune.global_unstructured(params[::2], prune.RandomUnstructured, amount=0)
        prune.global_unstructured(params, prune.L1Unstructured, amount=5)
        return {"state": arrays(model.state_dict()),
                "hooks": [[type(h).__name__ for h in pre_hooks(m)] for m in model]}

    rec = both(prog)
    assert rec["state"]["0.bias_mask"].tolist() == [0, 0, 1, 0]
    total = sum(rec["state"][k].sum() for k in rec["state"] if k.endswith("_mask"))
    assert total == 36 - 3 - round(0.3 * 33) - 5


def test_custom_method_and_prune_as_in_the_tutorial():
    def prog(lib):
        prune = lib.nn.utils.prune

        class FooBarPruningMethod(prune.BasePruningMethod):
            """Prune every other entry in a tensor"""
            PRUNING_TYPE = 'unstructured'

            def compute_mask(self, t, default_mask):
                mask = default_mask.clone()
                mask.view(-1)[::2] = 0
                return mask

        def foobar_unstructured(module, name):
            FooBarPruningMethod.apply(module, name)
            return module

        lin = load(lib, lib.nn.Linear(3, 4))
        foobar_unstructured(lin, name='bias')
        foobar_unstructured(lin, name='bias')  # again: on the 2 still unpruned
        t = distinct(lib, (3, 4), 7)
        p = prune.L1Unstructured(amount=0.5).prune(t)
        s = prune.LnStructured(amount=1, n=2, dim=1).prune(t, default_mask=lib.ones(3, 4),
                                                           importance_scores=t.abs() + 1)
        return [lin.bias_mask, lin.bias, p, s]

    rec = both(prog)
    assert rec[0].tolist() == [0, 0, 0, 1]


def test_ties_go_to_the_lower_indices():
    """Equal magnitudes at the threshold (zeros, rounded weights): the lower indices come first
    (pruned first by the smallest, kept first by the largest; PyTorch's CPU topk leaves the
    choice among them to its selection routine)."""
    prune = ng.nn.utils.prune
    lin = ng.nn.Linear(6, 4)
    with ng.no_grad():
        lin.weight.copy_(ng.tensor([[1.0, -1.0, 2.0, 1.0, 0.0, 3.0]] * 4))
        lin.bias.zero_()
    prune.l1_unstructured(lin, "bias", amount=2)  # all zeros: ties only
    assert lin.bias_mask.tolist() == [0, 0, 1, 1]
    prune.l1_unstructured(lin, "weight", amount=3)  # the zeros of rows 0-2 (ties at 0)
    assert lin.weight_mask[:, 4].tolist() == [0, 0, 0, 1]
    prune.ln_structured(lin, "weight", amount=1, n=1, dim=0)  # all rows' L1 norms tie at 8:
    assert lin.weight_mask.sum(1).tolist() == [5, 5, 5, 0]  # the lower ones are kept


# 2. amounts and errors

@pytest.mark.parametrize("amount,size,expected", [(0.5, 5, 2), (0.7, 5, 4), (0.25, 10, 2),
                                                  (0.35, 10, 4), (1.0, 5, 5), (0, 5, 0),
                                                  (5, 5, 5), (np.float64(0.5), 7, 4)])
def test_amount_rounding_as_torch(amount, size, expected):
    def prog(lib):
        p = lib.nn.utils.prune
        lin = load(lib, lib.nn.Linear(size, 1))
        p.l1_unstructured(lin, "weight", amount=amount)
        return int((lin.weight_mask == 0).sum())

    assert both(prog) == expected


@pytest.mark.parametrize("call,err", [
    (lambda p, m: p.l1_unstructured(m, "weight", amount="0.5"), TypeError),
    (lambda p, m: p.l1_unstructured(m, "weight", amount=-1), ValueError),
    (lambda p, m: p.l1_unstructured(m, "weight", amount=1.5), ValueError),
    (lambda p, m: p.l1_unstructured(m, "weight", amount=-0.1), ValueError),
    (lambda p, m: p.l1_unstructured(m, "weight", amount=13), ValueError),
    (lambda p, m: p.random_unstructured(m, "bias", amount=4), ValueError),
    (lambda p, m: p.ln_structured(m, "bias", amount=1, n=2, dim=0), ValueError),
    (lambda p, m: p.ln_structured(m, "weight", amount=1, n=2, dim=2), IndexError),
    (lambda p, m: p.random_structured(m, "weight", amount=4, dim=0), ValueError),
    (lambda p, m: p.l1_unstructured(m, "weight", 1, importance_scores=m.bias), AssertionError),
    (lambda p, m: p.custom_from_mask(m, "weight", m.bias), AssertionError),
    (lambda p, m: p.remove(m, "weight"), ValueError),
    (lambda p, m: p.global_unstructured((m, "weight"), p.L1Unstructured, amount=1),
     (TypeError, ValueError)),
    (lambda p, m: p.global_unstructured([(m, "weight")], p.L1Unstructured,
                                        importance_scores=[1], amount=1), TypeError),
    (lambda p, m: p.global_unstructured([(m, "weight")], p.LnStructured, amount=1, n=1,
                                        dim=0), TypeError),
    (lambda p, m: p.global_unstructured(3, p.L1Unstructured, amount=1), TypeError),
])
def test_errors_as_torch(call, err):
    for lib in (torch, ng):
        m = load(lib, lib.nn.Linear(4, 3))
        with pytest.raises(err):
            call(lib.nn.utils.prune, m)
    # a failed prune leaves the module as it was (a parameter named weight, no hook)
    m = load(ng, ng.nn.Linear(4, 3))
    with pytest.raises(err):
        call(ng.nn.utils.prune, m)
    assert [n for n, _ in m.named_parameters()] == ["weight", "bias"] and not m._forward_pre_hooks


def test_a_failed_second_prune_keeps_the_first():
    m = load(ng, ng.nn.Linear(4, 3))
    prune = ng.nn.utils.prune
    prune.l1_unstructured(m, "weight", amount=2)
    before = m.weight_mask.numpy().copy()
    with pytest.raises(ValueError, match="amount=11"):
        prune.l1_unstructured(m, "weight", amount=11)  # 10 still unpruned
    assert np.array_equal(m.weight_mask.numpy(), before)
    assert type(pre_hooks(m)[0]).__name__ == "L1Unstructured"
    with pytest.raises(AssertionError, match="importance_scores"):
        prune.l1_unstructured(m, "weight", amount=1, importance_scores=m.bias)
    assert type(pre_hooks(m)[0]).__name__ == "L1Unstructured"
    prune.l1_unstructured(m, "weight", amount=10)
    with pytest.raises(ValueError, match="amount=1 should"):
        prune.l1_unstructured(m, "weight", amount=1)  # none left: the container keeps 2
    assert m.weight_mask.numpy().sum() == 0 and len(pre_hooks(m)[0]) == 2
    assert np.array_equal(m(ng.ones(2, 4)).detach().numpy(), np.tile(m.bias.numpy(), (2, 1)))


def test_errors_name_the_problem():
    m = ng.nn.Linear(4, 3)
    prune = ng.nn.utils.prune
    with pytest.raises(AttributeError, match="no parameter named 'weights'.*weight, bias"):
        prune.l1_unstructured(m, "weights", amount=1)
    with pytest.raises(ValueError, match="L1Unstructured: amount=1.5 should"):
        prune.l1_unstructured(m, "weight", amount=1.5)
    ng.prune.l1_unstructured(m, "weight", amount=2)  # nodegrad's own mechanism holds it
    with pytest.raises(RuntimeError, match="nodegrad.prune"):
        prune.l1_unstructured(m, "weight", amount=1)


# 3. random methods: counts, earlier masks respected, reproducible with manual_seed

def test_random_methods():
    prune = ng.nn.utils.prune
    conv = load(ng, ng.nn.Conv2d(4, 6, 3))
    ng.manual_seed(3)
    prune.random_unstructured(conv, "weight", amount=0.3)
    first = conv.weight_mask.numpy().copy()
    assert (first == 0).sum() == round(0.3 * 216)
    prune.random_structured(conv, "weight", amount=2, dim=0)
    m = conv.weight_mask.numpy()
    assert ((m == 0) | (first == 1)).all()  # pruned stays pruned
    assert (m.reshape(6, -1).sum(1) == 0).sum() == 2
    prune.random_unstructured(conv, "weight", amount=10)
    assert (conv.weight_mask.numpy() == 0).sum() == (m == 0).sum() + 10
    again = load(ng, ng.nn.Conv2d(4, 6, 3))
    ng.manual_seed(3)
    prune.random_unstructured(again, "weight", amount=0.3)
    assert np.array_equal(again.weight_mask.numpy(), first)


# 4. state dicts in both directions

def test_pruned_state_dicts_move_between_libraries(tmp_path):
    def pruned(lib):
        nn, prune = lib.nn, lib.nn.utils.prune
        model = load(lib, nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)))
        prune.l1_unstructured(model[0], "weight", amount=0.5)
        prune.ln_structured(model[2], "weight", amount=1, n=2, dim=0)
        return model

    def fresh(lib):
        nn, prune = lib.nn, lib.nn.utils.prune
        model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).to(lib.float64)
        prune.identity(model[0], "weight")
        prune.identity(model[2], "weight")
        return model

    x = np.random.default_rng(4).standard_normal((3, 4))
    for src, dst in ((torch, ng), (ng, torch)):
        state = pruned(src).state_dict()
        model = fresh(dst)
        assert list(model.state_dict()) == list(state)
        model.load_state_dict({k: dst.tensor(v.detach().numpy()) for k, v in state.items()})
        assert_same(model(dst.tensor(x)), pruned(src)(src.tensor(x)))
    path = str(tmp_path / "m.safetensors")
    ng.save(pruned(ng).state_dict(), path)
    model = fresh(ng)
    model.load_state_dict(ng.load(path))
    assert_same(arrays(model.state_dict()), arrays(pruned(ng).state_dict()), 0.0)
    st = pytest.importorskip("safetensors.torch")  # a file PyTorch wrote, read by ng.load
    st.save_file({k: v.contiguous() for k, v in pruned(torch).state_dict().items()}, path)
    model = fresh(ng)
    model.load_state_dict(ng.load(path))
    assert_same(model(ng.tensor(x)), pruned(torch)(torch.tensor(x)))


def test_training_step_under_jit_as_eager():
    """A jitted training step recomputes the pruned weight on every replay, as eager runs."""
    prune = ng.nn.utils.prune
    rng = np.random.default_rng(9)
    x, y = ng.tensor(rng.standard_normal((16, 4))), ng.tensor(rng.standard_normal((16, 2)))
    runs = []
    for use_jit in (False, True):
        m = load(ng, ng.nn.Sequential(ng.nn.Linear(4, 8), ng.nn.Tanh(), ng.nn.Linear(8, 2)))
        prune.l1_unstructured(m[0], "weight", amount=0.5)
        prune.ln_structured(m[2], "weight", amount=1, n=2, dim=0)
        opt = ng.optim.Adam(m.parameters(), lr=0.01)

        def step(x, y):
            opt.zero_grad()
            loss = ((m(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
            return loss

        f = ng.jit(step, state=(m, opt), fuse=False) if use_jit else step
        runs.append({"loss": [float(f(x, y)) for _ in range(4)],
                     "state": arrays(m.state_dict())})
    assert_same(runs[1], runs[0], 0.0)


# 5. PyTorch's pruning tutorial (LeNet)

def lenet(lib):
    nn = lib.nn
    F = nn.functional

    class LeNet(nn.Module):
        def __init__(self):
            super(LeNet, self).__init__()  # noqa: UP008 (the tutorial's)
            # 1 input image channel, 6 output channels, 5x5 square conv kernel
            self.conv1 = nn.Conv2d(1, 6, 5)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1 = nn.Linear(16 * 5 * 5, 120)  # 5x5 image dimension
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            x = x.view(-1, int(x.nelement() / x.shape[0]))
            x = F.relu(self.fc1(x))
            x = F.relu(self.fc2(x))
            x = self.fc3(x)
            return x

    model = LeNet()
    model.load_state_dict({k: lib.tensor(v) for k, v in _torch_lenet_state().items()})
    return model, LeNet


_STATE: dict = {}


def _torch_lenet_state():
    """PyTorch's seeded LeNet weights in float64 (the same for both runs)."""
    if not _STATE:
        nn = torch.nn
        torch.manual_seed(0)
        layers = {"conv1": nn.Conv2d(1, 6, 5), "conv2": nn.Conv2d(6, 16, 5),
                  "fc1": nn.Linear(400, 120), "fc2": nn.Linear(120, 84), "fc3": nn.Linear(84, 10)}
        for name, layer in layers.items():
            for k, v in layer.state_dict().items():
                _STATE[f"{name}.{k}"] = v.double().numpy().copy()
    return _STATE


def tutorial(lib, conv1_mask=None):
    prune = lib.nn.utils.prune
    model, LeNet = lenet(lib)
    rec = {}
    module = model.conv1
    rec["params0"] = [n for n, _ in module.named_parameters()]
    rec["buffers0"] = list(module.named_buffers())
    prune.random_unstructured(module, name="weight", amount=0.3)
    rec["params1"] = [n for n, _ in module.named_parameters()]
    rec["buffers1"] = [n for n, _ in module.named_buffers()]
    rec["random_pruned"] = int((module.weight_mask == 0).sum())
    if conv1_mask is not None:  # the random choice differs: continue with PyTorch's mask
        module.weight_mask.copy_(lib.tensor(conv1_mask))
        model(lib.zeros(1, 1, 32, 32))  # the hook recomputes module.weight
    rec["weight"] = module.weight
    rec["hooks1"] = [type(h).__name__ for h in pre_hooks(module)]
    prune.l1_unstructured(module, name="bias", amount=3)
    rec["params2"] = [n for n, _ in module.named_parameters()]
    rec["buffers2"] = [n for n, _ in module.named_buffers()]
    rec["bias"] = module.bias
    # Iterative Pruning
    prune.ln_structured(module, name="weight", amount=0.5, n=2, dim=0)
    rec["weight2"] = module.weight
    for hook in pre_hooks(module):
        if hook._tensor_name == "weight":  # select out the correct hook
            break
    rec["history"] = [type(h).__name__ for h in hook]
    # Serializing a pruned model
    rec["keys"] = list(model.state_dict().keys())
    # Remove pruning re-parametrization
    prune.remove(module, 'weight')
    rec["params3"] = [n for n, _ in module.named_parameters()]
    rec["buffers3"] = [n for n, _ in module.named_buffers()]
    rec["removed"] = module.weight

    # Pruning multiple parameters in a model
    new_model, _ = lenet(lib)
    for name, module in new_model.named_modules():  # noqa: B007
        # prune 20% of connections in all 2D-conv layers
        if isinstance(module, lib.nn.Conv2d):
            prune.l1_unstructured(module, name='weight', amount=0.2)
        # prune 40% of connections in all linear layers
        elif isinstance(module, lib.nn.Linear):
            prune.l1_unstructured(module, name='weight', amount=0.4)
    rec["mask_names"] = list(dict(new_model.named_buffers()).keys())
    rec["masks"] = arrays(dict(new_model.named_buffers()))

    # Global pruning
    model, _ = lenet(lib)
    parameters_to_prune = (
        (model.conv1, 'weight'),
        (model.conv2, 'weight'),
        (model.fc1, 'weight'),
        (model.fc2, 'weight'),
        (model.fc3, 'weight'),
    )
    prune.global_unstructured(
        parameters_to_prune,
        pruning_method=prune.L1Unstructured,
        amount=0.2,
    )
    sparsity = {}
    for name in ("conv1", "conv2", "fc1", "fc2", "fc3"):
        w = getattr(model, name).weight
        sparsity[name] = "{:.2f}%".format(  # noqa: UP032
            100. * float(lib.sum(w == 0)) / float(w.nelement()))
    ws = [m.weight for m, _ in parameters_to_prune]
    sparsity["global"] = "{:.2f}%".format(  # noqa: UP032
        100. * float(sum(lib.sum(w == 0) for w in ws)) / float(sum(w.nelement() for w in ws)))
    rec["sparsity"] = sparsity
    x = lib.tensor(np.random.default_rng(5).standard_normal((2, 1, 32, 32)))
    out = model(x)
    out.pow(2).sum().backward()
    rec["out"] = out
    rec["grad"] = model.fc1.weight_orig.grad
    return rec


def test_pruning_tutorial():
    ref = tutorial(torch)
    got = tutorial(ng, conv1_mask=ref["weight"].detach().numpy() != 0)
    assert got["random_pruned"] == ref["random_pruned"] == 45  # round(0.3 * 150)
    got["random_pruned"] = ref["random_pruned"]
    assert_same(got, ref)
    assert got["sparsity"]["global"] == "20.00%"
    assert got["history"] == ["RandomUnstructured", "LnStructured"]
    assert got["keys"][:4] == ["conv1.weight_orig", "conv1.bias_orig", "conv1.weight_mask",
                               "conv1.bias_mask"]
    assert got["mask_names"] == [f"{n}.weight_mask" for n in
                                 ("conv1", "conv2", "fc1", "fc2", "fc3")]


# 6. lottery tickets: iterative magnitude pruning with rewinding to the initial weights

def lottery(lib, scope):
    nn, prune = lib.nn, lib.nn.utils.prune
    F = nn.functional
    rng = np.random.default_rng(6)
    X = lib.tensor(rng.standard_normal((64, 8)))
    Y = lib.tensor(rng.integers(0, 3, 64))
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 3))
    load(lib, model, seed=20)
    parameters_to_prune = [(m, "weight") for m in model if isinstance(m, nn.Linear)]
    for m, name in parameters_to_prune:  # the re-parametrisation from the start
        prune.identity(m, name)
    initial = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("_orig")}

    def train(steps=6):
        opt = lib.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        losses = []
        for i in range(steps):
            xb, yb = X[16 * (i % 4):16 * (i % 4) + 16], Y[16 * (i % 4):16 * (i % 4) + 16]
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    rounds = []
    for _ in range(3):
        losses = train()
        if scope == "layer":
            for m, name in parameters_to_prune:
                prune.l1_unstructured(m, name, amount=0.2)
        else:
            prune.global_unstructured(parameters_to_prune, pruning_method=prune.L1Unstructured,
                                      amount=0.2)
        with lib.no_grad():  # rewind the surviving weights to their initial values
            for k, v in initial.items():
                model.get_parameter(k).copy_(v)
        kept = [float(m.weight_mask.sum()) / m.weight_mask.numel() for m, _ in
                parameters_to_prune]
        rounds.append({"loss": losses, "kept": kept,
                       "masks": arrays({k: v for k, v in model.named_buffers()})})
    final = train()
    for m, name in parameters_to_prune:
        prune.remove(m, name)
    return {"rounds": rounds, "final": final, "state": arrays(model.state_dict())}


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_lottery_ticket_rewinding(scope):
    rec = both(lottery, scope)
    if scope == "layer":
        assert [r["kept"][0] for r in rec["rounds"]] == [0.796875, 0.640625, 0.515625]
    else:
        total = sum(16 * 8 + 16 * 16 + 16 * 3 for _ in [0])
        kept = [sum(k * n for k, n in zip(r["kept"], (128, 256, 48))) for r in rec["rounds"]]
        assert [round(k) for k in kept] == [round(total * 0.8), 277, 222]
    assert all((v == 0).sum() > 0 for k, v in rec["state"].items() if k.endswith("weight"))
