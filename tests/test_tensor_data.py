"""``Tensor.data`` as PyTorch's: a tensor of the same memory outside the graph.

Each case runs the same code on ``torch`` and ``nodegrad`` and compares values, flags and what
is shared. Also the memory rule it needs: an in-place op recorded on a tensor that was outside
the graph writes that tensor's memory, so every handle on the memory sees the values.
"""

from __future__ import annotations

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")

LIBS = [torch, ng]


def arr(t):
    return t.detach().numpy().copy()


def linear(lib, seed: int, dtype=None):
    """A Linear(3, 2) with the same generated weights in either library."""
    rng = np.random.default_rng(seed)
    m = lib.nn.Linear(3, 2)
    with lib.no_grad():
        for p in m.parameters():
            p.copy_(lib.tensor(rng.standard_normal(tuple(p.shape)).astype(np.float32)))
    return m if dtype is None else m.to(dtype)


@pytest.mark.parametrize("lib", LIBS, ids=["torch", "nodegrad"])
def test_data_is_a_tensor_of_the_same_memory_outside_the_graph(lib):
    p = lib.nn.Parameter(lib.zeros(2, 3))
    d = p.data
    assert isinstance(d, lib.Tensor) and not isinstance(d, lib.nn.Parameter)
    assert not d.requires_grad and d.is_leaf and d.grad_fn is None
    d.fill_(2.0)
    assert arr(p).tolist() == [[2.0] * 3] * 2 and p.requires_grad and p.is_leaf
    with lib.no_grad():
        p.add_(1.0)
    assert arr(d).tolist() == [[3.0] * 3] * 2  # and the other way round
    y = p * 2  # a non-leaf's .data: detached, the same memory
    yd = y.data
    assert not yd.requires_grad and yd.grad_fn is None and y.grad_fn is not None
    yd.zero_()
    assert arr(y).tolist() == [[0.0] * 3] * 2


def test_pytorch_idioms_through_data_give_pytorch_results():
    """The idioms that read NumPy's methods when ``.data`` was the array: ``max(1)[1]`` is the
    argmax (NumPy's was row 1 of the maxima), ``transpose(0, 1)`` swaps (NumPy's was the
    identity)."""
    vals = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    got = {}
    for lib in LIBS:
        out = lib.tensor(vals, requires_grad=True) * 1.0
        w = lib.nn.Parameter(lib.tensor(vals))
        pred = out.data.max(1, keepdim=True)[1]
        target = lib.tensor([1, 0, 0])
        correct = pred.eq(target.data.view_as(pred)).sum()
        got[lib] = (arr(out.data.max(1)[1]), arr(pred), int(correct), arr(w.data.transpose(0, 1)),
                    arr(w.data.t().contiguous().view(-1)), w.data.size(0), float(w.data.norm()),
                    arr(w.data.clone().clamp_(0.1, 0.5)), arr(w.data.cpu()))
    for a, b in zip(got[torch], got[ng]):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_writes_through_data_reach_the_parameter_as_in_pytorch():
    got = {}
    for lib in LIBS:
        src, tgt, lin = (linear(lib, seed, lib.float64) for seed in range(3))
        for p_t, p in zip(tgt.parameters(), src.parameters()):
            p_t.data.copy_(p.data)  # hard target update
        for p_t, p in zip(tgt.parameters(), lin.parameters()):
            p_t.data.mul_(0.9).add_(p.data, alpha=0.1)  # Polyak
        lin.weight.data.clamp_(-0.1, 0.1)  # WGAN's clipping
        lin.bias.data[0] = 5.0
        lin.bias.data[1:].fill_(-1.0)
        x = lib.ones(4, 3, dtype=lib.float64)
        lin(x).sum().backward()
        for p in lin.parameters():
            p.data.add_(p.grad.data, alpha=-0.5)  # the names tutorial's update
            p.grad.data.zero_()
        got[lib] = [arr(t) for m in (tgt, lin) for t in m.parameters()] + \
            [arr(p.grad) for p in lin.parameters()]
        assert all(p.requires_grad and p.is_leaf for p in lin.parameters())
    for a, b in zip(got[torch], got[ng]):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-15)


def test_a_recorded_write_into_data_reaches_its_tensor():
    """Wong et al.'s fast adversarial training: ``delta.data[:n] = clamp(delta[:n], lo, hi)``,
    a value that requires grad written into ``.data``, reaches ``delta``'s memory."""
    got = {}
    for lib in LIBS:
        delta = lib.tensor(np.linspace(-2, 2, 12).reshape(4, 3), requires_grad=True)
        lo = lib.full((2, 3), -0.5, dtype=lib.float64)
        delta.data[:2] = lib.max(lib.min(delta[:2], -lo), lo)
        delta.data = (delta * 2).data  # a tensor assigned: its memory
        got[lib] = arr(delta)
        assert delta.requires_grad and delta.is_leaf
    np.testing.assert_array_equal(got[ng], got[torch])


def test_recorded_write_into_a_tensor_outside_the_graph_writes_its_memory():
    """Every handle on the memory sees the values (``numpy()``, a leaf's ``detach()``), and a
    backward that saved the old values refuses, as PyTorch's."""
    seen = {}
    for lib in LIBS:
        y = lib.tensor([1.0, 2.0, 3.0], requires_grad=True)
        a = lib.zeros(3)
        view, handle = a.numpy(), a.detach()
        w = lib.tensor([1.0, 1.0, 1.0], requires_grad=True)
        z = a * w  # saves a for w's gradient
        a[:2] = y[:2] * 2
        seen[lib] = (view.copy(), arr(handle), arr(a))
        assert a.requires_grad and a.grad_fn is not None
        with pytest.raises(RuntimeError, match="modified by an inplace|modified in place"):
            z.sum().backward()
        a.sum().backward()
        assert y.grad.tolist() == [2.0, 2.0, 0.0]
    for u, v in zip(seen[torch], seen[ng]):
        np.testing.assert_array_equal(v, u)


def test_data_of_a_plain_leaf_has_its_own_version_counter():
    """A write through ``.data`` is unseen by autograd, so a backward that saved the leaf
    computes with the new values, as PyTorch's (a Parameter's ``.data`` is seen: see the
    next test)."""
    got = {}
    for lib in LIBS:
        x = lib.tensor([1.0, 2.0], requires_grad=True)
        y = (x * x).sum()
        x.data.mul_(2)
        y.backward()
        got[lib] = arr(x.grad)
    np.testing.assert_array_equal(got[ng], got[torch])


def test_a_parameters_data_write_before_backward_is_refused():
    lin = ng.nn.Linear(3, 2)
    y = lin(ng.ones(4, 3))
    lin.weight.data.mul_(2)
    with pytest.raises(ng.InplaceError, match="modified in place"):
        y.sum().backward()


def test_data_taken_before_the_optimiser_follows_its_flat_buffer():
    got = {}
    for lib in LIBS:
        lin = linear(lib, 0)
        w = lin.weight.data
        opt = lib.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
        for _ in range(2):
            opt.zero_grad()
            lin(lib.ones(2, 3)).sum().backward()
            opt.step()
        w.mul_(0.5)  # a write through the old handle reaches the parameter
        got[lib] = (arr(w), arr(lin.weight))
        np.testing.assert_array_equal(*got[lib])
    np.testing.assert_allclose(got[ng][0], got[torch][0], rtol=1e-6)


def test_assigning_data_takes_memory_shape_and_dtype():
    for lib in LIBS:
        p = lib.nn.Parameter(lib.zeros(2, 2))
        new = lib.arange(6, dtype=lib.float64).reshape(3, 2)
        p.data = new
        assert p.shape == (3, 2) and p.dtype == lib.float64 and p.requires_grad
        new.add_(1)
        assert arr(p)[0].tolist() == [1.0, 2.0]
    with pytest.raises(TypeError, match="data: expected a Tensor"):
        ng.zeros(2).data = "x"


def test_init_functions_fill_data_in_place():
    ng.manual_seed(0)
    m = ng.nn.Conv2d(1, 2, 3)
    ng.nn.init.normal_(m.weight.data, 0.0, 0.02)  # DCGAN's weights_init
    ng.nn.init.constant_(m.bias.data, 0.5)
    m.weight.data.normal_(1.0, 0.02)  # and its other spelling
    assert abs(float(m.weight.mean()) - 1.0) < 0.05 and m.bias.tolist() == [0.5, 0.5]


def test_data_under_transforms():
    """Inside ``vmap`` a batched tensor has no single array: refused by name; under ``jit`` a
    manual SGD step through ``.data`` replays what eager computes, bit for bit."""
    with pytest.raises(TypeError, match="data: inside vmap"):
        ng.vmap(lambda t: t.data * 2)(ng.ones(3, 2))
    x = ng.tensor(np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32))
    y = ng.tensor(np.random.default_rng(1).integers(0, 2, 16))
    runs = []
    for use_jit in (False, True):
        ng.manual_seed(0)
        m = ng.nn.Sequential(ng.nn.Linear(4, 8), ng.nn.ReLU(), ng.nn.Linear(8, 2))

        def step(x, y):
            m.zero_grad()
            loss = ng.nn.functional.cross_entropy(m(x), y)
            loss.backward()
            for p in m.parameters():
                p.data.add_(p.grad.data, alpha=-0.1)
            return loss

        f = ng.jit(step, state=(m,)) if use_jit else step
        runs.append(([float(f(x, y)) for _ in range(4)], [arr(p) for p in m.parameters()]))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(a, b)


def test_a_recorded_write_keeps_what_its_node_saved():
    """The memory of a tensor outside the graph takes the result of a recorded in-place op,
    while the op's node keeps the old values it saved: ``scatter_reduce_`` with ``amax`` and
    ``include_self=True`` reads the input again in its backward (ties with the output)."""
    grads = {}
    for lib in LIBS:
        src = lib.tensor([[1.0, 5.0], [3.0, 2.0], [0.5, 7.0]], requires_grad=True)
        idx = lib.tensor([[0, 1], [0, 1], [1, 0]])
        out = lib.full((2, 2), 3.0, dtype=lib.float32)
        kept = out.numpy()
        out.scatter_reduce_(0, idx, src, reduce="amax", include_self=True)
        (out * lib.tensor([[1.0, 2.0], [3.0, 4.0]])).sum().backward()
        grads[lib] = (arr(src.grad), kept.copy(), arr(out))
    for a, b in zip(grads[torch], grads[ng]):
        np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("flat", [True, False], ids=["flat", "per_tensor"])
def test_an_optimiser_step_leaves_the_memory_a_parameter_gave_up(flat):
    """``a = p.data.numpy()``, then ``p.data = new`` and a step: ``a`` is ``p``'s old memory,
    untouched, as in PyTorch (the optimiser copied ``new`` into its buffer for ``p``, which
    was that memory, so ``a`` showed the new, stepped values)."""
    got = {}
    for lib in LIBS:
        lin = linear(lib, 5, lib.float64)
        kw = {"flat": flat} if lib is ng else {}
        opt = lib.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9, **kw)
        rec = []
        for step in range(3):
            opt.zero_grad()
            lin(lib.ones(1, 3, dtype=lib.float64)).pow(2).sum().backward()
            opt.step()
            kept = lin.weight.data.numpy()
            lin.weight.data = lib.full((2, 3), 0.5 * step, dtype=lib.float64)
            rec += [kept, arr(lin.weight), arr(lin.bias)]
        opt.step()
        got[lib] = [np.array(r) for r in rec] + [arr(lin.weight)]
    for a, b in zip(got[torch], got[ng]):
        np.testing.assert_allclose(b, a, rtol=1e-12)


@pytest.mark.parametrize("flat", [True, False], ids=["flat", "per_tensor"])
def test_handles_on_the_old_memory_keep_it_when_data_is_replaced(flat):
    """``w = p.data`` (or ``p.detach()``) taken before ``p.data = new`` still holds the old
    memory and values after the optimiser steps ``p``, as PyTorch's old storage does; the
    optimiser's buffer for ``p`` was that memory, and must not be written with ``new``."""
    got = {}
    for lib in LIBS:
        lin = linear(lib, 4, lib.float64)
        kw = {"flat": flat} if lib is ng else {}
        opt = lib.optim.SGD(lin.parameters(), lr=0.1, **kw)
        opt.zero_grad()
        lin(lib.ones(1, 3, dtype=lib.float64)).sum().backward()
        opt.step()  # the parameters live in the optimiser's buffer now
        w, d = lin.weight.data, lin.weight.detach()
        lin.weight.data = lib.full((2, 3), 5.0, dtype=lib.float64)
        opt.zero_grad()
        lin(lib.ones(1, 3, dtype=lib.float64)).sum().backward()
        opt.step()
        got[lib] = (arr(w), arr(d), arr(lin.weight), arr(lin.bias))
    for a, b in zip(got[torch], got[ng]):
        np.testing.assert_allclose(b, a, rtol=1e-12)


@pytest.mark.parametrize("flat", [True, False], ids=["flat", "per_tensor"])
def test_a_tensor_given_as_data_shares_the_parameters_memory_through_steps(flat):
    """SAM's ``p.data = old_p`` before ``base_optimizer.step()``: ``old_p`` is the parameter's
    memory from then on, so the step moves it too (it kept the values it was given when the
    optimiser gathered the parameter into a new buffer)."""
    got = {}
    for lib in LIBS:
        lin = linear(lib, 3, lib.float64)
        kw = {"flat": flat} if lib is ng else {}
        opt = lib.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9, **kw)
        rec = []
        for _ in range(3):
            opt.zero_grad()
            lin(lib.ones(2, 3, dtype=lib.float64)).pow(2).sum().backward()
            with lib.no_grad():
                old = {p: p.data.clone() for p in lin.parameters()}
                for p in lin.parameters():
                    p.add_(0.05 * p.grad)  # "w + e(w)"
                    p.data = old[p]  # back to "w"
            opt.step()
            rec += [arr(old[lin.weight]), arr(lin.weight), arr(old[lin.bias]), arr(lin.bias)]
        got[lib] = rec
    for a, b in zip(got[torch], got[ng]):
        np.testing.assert_allclose(b, a, rtol=1e-12)


def test_set_shares_memory_as_pytorchs():
    """``set_``: the tensor takes the source's memory and shape (writes reach both), a strided
    window of it with size/stride/offset, or nothing; a parameter set under no_grad keeps
    training; the refusals are PyTorch's."""
    def run(lib):
        a, b = lib.zeros(3), lib.arange(6.0).reshape(2, 3)
        a.set_(b)
        b[0, 0] = 9.0
        s = lib.arange(10.0)
        d = lib.zeros(0)
        d.set_(s, 2, (2, 2), (3, 1))
        s[2] = -1.0
        m = linear(lib, 0)
        opt = lib.optim.SGD(m.parameters(), lr=0.1)
        m(lib.ones(1, 3)).sum().backward()
        opt.step()
        with lib.no_grad():
            m.bias.set_(lib.zeros(2))
        opt.zero_grad()
        m(lib.ones(1, 3)).sum().backward()
        opt.step()
        return [arr(a), arr(d), tuple(lib.ones(2).set_().shape), arr(m.bias), arr(m.weight)]

    for x, y in zip(run(torch), run(ng)):
        np.testing.assert_allclose(x, y, rtol=1e-6)
    w = ng.zeros(2, requires_grad=True)
    with pytest.raises(ng.GradError, match="set_: a leaf"):
        w.set_(ng.ones(2))
    with pytest.raises(ng.DTypeError, match="set_: cannot set a float32"):
        ng.zeros(2).set_(ng.zeros(2, dtype=ng.float64))
    with pytest.raises(ng.GradError, match="recorded graph"):
        (w * 2).set_(ng.ones(2))
    with pytest.raises(ValueError, match="reach memory outside"):
        ng.zeros(0).set_(ng.arange(4.0), 2, (3,), (1,))
