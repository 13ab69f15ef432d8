"""PyTorch's module samples (its ModuleInfo database) on nodegrad's layers: each torch module is
built from the sample's constructor arguments, its state dict loaded into the nodegrad layer of
the same name and arguments, and both run on the sample's inputs in float64, in training and
in eval mode.
Outputs, the input gradients and every parameter's gradient (of a random projection of the
outputs) must agree. :data:`KNOWN` lists the differences left, with their reasons.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _opinfo import _array, _compare, _dtype, _flat, _to_ng, pytorch_database  # noqa: E402

import nodegrad as ng  # noqa: E402

module_db = pytorch_database("common_modules", "module_db")

INPUTS = 40  # the first inputs of each module (most have fewer)
KNOWN = {
    # the samples pass PyTorch objects nodegrad cannot take
    **{name: "the sample builds the module from PyTorch objects (a layer, torch's gelu)" for name
       in ("TransformerEncoder", "TransformerEncoderLayer", "TransformerDecoderLayer")},
    **{name: "PyTorch's lazy parameters cannot be copied before its first call" for name in (
        "LazyConv1d", "LazyConv2d", "LazyConv3d", "LazyConvTranspose1d",
        "LazyConvTranspose2d", "LazyConvTranspose3d")},
    "KLDivLoss": "its samples pass one tensor as both input and target",
    "CTCLoss": "nodegrad's gradient is the exact one in log_probs (documented)",
    "FractionalMaxPool3d": "_random_samples for more samples than an unbatched input has: "
                           "nodegrad refuses them, PyTorch reads the first",
}


def _replay(mi, inp, training: bool = True) -> str | None:
    """None when the torch module and nodegrad's layer agree on this sample, else why not."""
    ca, ck = inp.constructor_input.args, inp.constructor_input.kwargs
    fa, fk = inp.forward_input.args, inp.forward_input.kwargs
    try:
        torch.manual_seed(0)
        mt = mi.module_cls(*ca, **ck).double()
    except Exception:  # noqa: BLE001  (PyTorch rejects its own sample)
        return None
    name = mi.module_cls.__name__
    try:
        mn = getattr(ng.nn, name)(*_to_ng(ca), **_to_ng(ck))
        mn = mn.double()  # parameters and float buffers (running statistics) alike
        mn.load_state_dict({k: ng.tensor(v.detach().numpy().copy())
                            for k, v in mt.state_dict().items()}, strict=False)
        mt.train(training)
        mn.train(training)
        nfa, nfk = _to_ng(fa), _to_ng(fk)
        tout, nout = mt(*fa, **fk), mn(*nfa, **nfk)
    except Exception as e:  # noqa: BLE001  (the outcome names it)
        return f"call: {type(e).__name__}: {str(e)[:200]}"
    if len(_flat(tout)) != len(_flat(nout)):
        return f"{len(_flat(tout))} outputs against {len(_flat(nout))}"
    bad = _compare(tout, nout, 1e-6)
    if bad is not None:
        return f"{bad.kind}: {bad.detail}"
    pairs = [(a, b) for a, b in zip(_flat(tout), _flat(nout))
             if isinstance(a, torch.Tensor) and a.requires_grad]
    if not pairs:
        return None
    rng = np.random.default_rng(0)
    cots = [rng.standard_normal(a.shape) for a, _ in pairs]
    leaves = [a for a in _flat(list(fa)) if isinstance(a, torch.Tensor) and a.requires_grad]
    named = dict(mt.named_parameters())
    want = torch.autograd.grad([a for a, _ in pairs], leaves + list(named.values()),
                               [torch.tensor(c) for c in cots], allow_unused=True)
    try:
        total = None
        for c, (_, b) in zip(cots, pairs):
            term = (b * ng.tensor(c)).sum()
            total = term if total is None else total + term
        total.backward()
    except Exception as e:  # noqa: BLE001
        return f"backward: {type(e).__name__}: {str(e)[:200]}"
    mine = dict(mn.named_parameters())
    got = [x.grad for x in _flat(list(nfa)) if isinstance(x, ng.Tensor) and x.requires_grad]
    labels = ["input"] * len(got) + list(named)
    got += [mine[k].grad if k in mine else f"no parameter {k}" for k in named]
    for label, w, g in zip(labels, want, got):
        if isinstance(g, str):
            return g
        if w is None and g is None:
            continue
        e = np.zeros(1) if w is None else w.numpy()
        h = np.zeros(1) if g is None else _array(g)
        if e.shape != h.shape or not np.allclose(e, h, rtol=1e-6, atol=1e-6, equal_nan=True):
            return f"gradient of {label} differs"
    return None


def _samples(mi, training: bool) -> list:
    """PyTorch's float64 samples of module ``mi`` (the test skips when it makes none)."""
    try:
        return mi.module_inputs_func(mi, device="cpu", dtype=torch.float64, requires_grad=True,
                                     training=training)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"PyTorch made no samples: {e}")


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("mi", [pytest.param(m, id=m.module_cls.__name__) for m in module_db])
def test_moduleinfo_samples_match_pytorch(mi, training):
    """In training mode and in eval mode (running statistics, no dropout)."""
    name = mi.module_cls.__name__
    if not hasattr(ng.nn, name):
        pytest.fail(f"nn.{name} is missing")
    inputs = _samples(mi, training)
    bad = [f"sample {i}: {why}" for i, inp in enumerate(inputs[:INPUTS])
           if (why := _replay(mi, inp, training)) is not None]
    if name in KNOWN:
        assert bad, f"{name} now agrees with PyTorch: remove it from KNOWN ({KNOWN[name]})"
        return
    assert not bad, "\n".join(bad)


LOW = {"float32": 1e-4, "float16": 2e-2}  # tolerances of the outputs in the lower precisions
LOW_SAMPLES = 6


def _low(v, dtype):
    """Sample values in ``dtype`` (float tensors only; they keep requires_grad)."""
    if isinstance(v, torch.Tensor) and v.is_floating_point():
        return v.detach().to(dtype).requires_grad_(v.requires_grad)
    if isinstance(v, (list, tuple)):
        return type(v)(_low(a, dtype) for a in v)
    if isinstance(v, dict):
        return {k: _low(a, dtype) for k, a in v.items()}
    return v


def _replay_low(mi, inp, name: str) -> str | None:
    """The torch module and nodegrad's layer in float32 or float16 (``name``): the outputs'
    dtypes and values, and a backward that keeps every gradient in its parameter's dtype."""
    tdt, ndt = getattr(torch, name), getattr(ng, name)
    fa, fk = _low(inp.forward_input.args, tdt), _low(inp.forward_input.kwargs, tdt)
    ca, ck = inp.constructor_input.args, inp.constructor_input.kwargs
    try:
        torch.manual_seed(0)
        mt = mi.module_cls(*ca, **ck).to(tdt)
        tout = mt(*fa, **fk)
    except Exception:  # noqa: BLE001  (PyTorch rejects its own sample in this dtype)
        return None
    try:
        mn = getattr(ng.nn, mi.module_cls.__name__)(*_to_ng(ca), **_to_ng(ck)).to(ndt)
        mn.load_state_dict({k: ng.tensor(v.detach().numpy().copy())
                            for k, v in mt.state_dict().items()}, strict=False)
        nout = mn(*_to_ng(fa), **_to_ng(fk))
    except Exception as e:  # noqa: BLE001  (the outcome names it)
        return f"call: {type(e).__name__}: {str(e)[:200]}"
    tol = LOW[name]
    for a, b in zip(_flat(tout), _flat(nout)):
        if not isinstance(a, torch.Tensor):
            continue
        if not isinstance(b, ng.Tensor) or _dtype(a) != _dtype(b):
            return f"output {_dtype(a)} against {type(b).__name__} {getattr(b, 'dtype', '')}"
        e, h = _array(a).astype(np.float64), _array(b).astype(np.float64)
        if e.shape != h.shape or (a.is_floating_point() and not np.allclose(
                e, h, rtol=tol, atol=tol, equal_nan=True)):
            return f"outputs differ (shapes {e.shape}, {h.shape})"
    outs = [b for b in _flat(nout) if isinstance(b, ng.Tensor) and b.requires_grad]
    if outs:
        try:
            sum((o.sum() for o in outs[1:]), outs[0].sum()).backward()
        except Exception as e:  # noqa: BLE001
            return f"backward: {type(e).__name__}: {str(e)[:200]}"
        for k, p in mn.named_parameters():
            if p.grad is not None and p.grad.dtype != p.dtype:
                return f"the gradient of {k} is {p.grad.dtype}, the parameter {p.dtype}"
    return None


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("mi", [pytest.param(m, id=m.module_cls.__name__) for m in module_db])
def test_moduleinfo_samples_in_lower_precision(mi, dtype):
    """The same samples in float32 and float16: layers built and run in that dtype (``.to``),
    outputs in it and close to PyTorch's, gradients in the parameters' dtype."""
    name = mi.module_cls.__name__
    if not hasattr(ng.nn, name):
        pytest.skip(f"nn.{name} is missing (the float64 test fails for it)")
    inputs = _samples(mi, True)
    bad = [f"sample {i}: {why}" for i, inp in enumerate(inputs[:LOW_SAMPLES])
           if (why := _replay_low(mi, inp, dtype)) is not None]
    if name in KNOWN:
        if not bad:
            pytest.skip(f"listed in KNOWN for float64 ({KNOWN[name]}); these samples agree")
        return
    assert not bad, "\n".join(bad)
