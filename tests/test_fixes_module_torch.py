"""nn.Module API behaviours checked against PyTorch: dtype casts, children, zero_grad,
always_call hooks, global hooks, Parameter containers, state-dict loading and metadata,
vector_to_parameters, calculate_gain."""

import math
import warnings

import pytest

import nodegrad as ng
import nodegrad.nn as nn

torch = pytest.importorskip("torch")


def _both(fn):
    return fn(torch), fn(ng)


# --- Module.to / Module.type -------------------------------------------------------------------
@pytest.mark.parametrize("how", ["pos", "kw", "tensor"])
@pytest.mark.parametrize("name", ["int32", "int64", "bool"])
def test_to_refuses_integer_and_bool_dtypes(how, name):
    for T in (torch, ng):
        m = T.nn.Linear(2, 2)
        dt = getattr(T, name)
        with pytest.raises(TypeError, match="nn.Module.to only accepts floating point or complex"):
            if how == "pos":
                m.to(dt)
            elif how == "kw":
                m.to(dtype=dt)
            else:
                m.to(T.zeros(1, dtype=dt))
        assert str(m.weight.dtype).endswith("float32")


def test_type_casts_integer_buffers_too():
    t, n = _both(lambda T: T.nn.BatchNorm1d(2).type(T.float64))
    assert str(t.num_batches_tracked.dtype) == "torch.float64"
    assert n.num_batches_tracked.dtype == ng.float64
    assert n.running_mean.dtype == ng.float64 and n.weight.dtype == ng.float64
    assert isinstance(n.weight, nn.Parameter)


def test_type_casts_gradients():
    for T in (torch, ng):
        m = T.nn.Linear(2, 1)
        m(T.ones(1, 2)).sum().backward()
        m.type(T.float64)
        assert str(m.weight.grad.dtype).endswith("float64")


# --- children ----------------------------------------------------------------------------------
def test_named_children_lists_a_shared_child_once():
    def names(T):
        m = T.nn.Module()
        lin = T.nn.Linear(1, 1)
        m.a = lin
        m.b = lin
        m.c = T.nn.ReLU()
        return [k for k, _ in m.named_children()], len(list(m.children()))

    assert names(torch) == names(ng) == (["a", "c"], 2)


def test_sequential_of_one_layer_twice():
    def go(T):
        lin = T.nn.Linear(1, 1)
        s = T.nn.Sequential(lin, lin)
        return ([k for k, _ in s.named_children()], [k for k, _ in (s * 2).named_children()],
                len(s), len(list(s)))

    assert go(torch) == go(ng) == (["0"], ["0"], 2, 2)


# --- zero_grad ---------------------------------------------------------------------------------
def test_zero_grad_keep_detaches_a_graph_gradient():
    def go(T):
        x = T.nn.Parameter(T.ones(2))
        (x * x).sum().backward(create_graph=True)
        assert x.grad.requires_grad
        g = x.grad
        m = T.nn.Module()
        m.x = x
        m.zero_grad(set_to_none=False)
        assert x.grad is g  # zeroed in place
        return x.grad.requires_grad, x.grad.grad_fn is None, x.grad.tolist()

    assert go(torch) == go(ng) == (False, True, [0.0, 0.0])


# --- always_call forward hooks -----------------------------------------------------------------
def test_always_call_hook_error_is_a_warning_when_forward_fails():
    def go(T):
        class Bad(T.nn.Module):
            def forward(self, x):
                raise ValueError("boom")

        b = Bad()
        seen = []

        def hook(m, a, o):
            raise KeyError("hookerr")

        b.register_forward_hook(hook, always_call=True)
        b.register_forward_hook(lambda m, a, o: seen.append(o), always_call=True)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            with pytest.raises(ValueError, match="boom"):
                b(T.ones(1))
        assert any("always_call=True" in str(x.message) and "hookerr" in str(x.message)
                   for x in w)
        return seen

    assert go(torch) == go(ng) == [None]


# --- global hooks ------------------------------------------------------------------------------
_NAMES = ["register_module_full_backward_hook", "register_module_full_backward_pre_hook",
          "register_module_backward_hook", "register_module_buffer_registration_hook",
          "register_module_parameter_registration_hook",
          "register_module_module_registration_hook"]


@pytest.mark.parametrize("name", _NAMES)
def test_global_registrars_exist(name):
    assert callable(getattr(torch.nn.modules.module, name))
    assert callable(getattr(nn.modules.module, name))


def _backward_log(T):
    log = []
    mm = T.nn.modules.module

    def pre(m, go):
        log.append(("gpre", type(m).__name__, [tuple(g.shape) for g in go]))

    def full(m, gi, go):
        log.append(("gfull", type(m).__name__,
                    [None if g is None else tuple(g.shape) for g in gi]))

    lin = T.nn.Linear(3, 2)
    lin.register_full_backward_hook(lambda m, gi, go: log.append(("own", type(m).__name__)))
    h1 = mm.register_module_full_backward_pre_hook(pre)
    h2 = mm.register_module_full_backward_hook(full)
    try:
        x = T.ones(4, 3, requires_grad=True)
        lin(x).sum().backward()
    finally:
        h1.remove()
        h2.remove()
    T.nn.Linear(3, 2)(T.ones(1, 3, requires_grad=True)).sum().backward()  # removed: no calls
    return log


def test_global_full_backward_hooks_run_before_the_modules_own():
    assert _backward_log(torch) == _backward_log(ng) == [
        ("gpre", "Linear", [(4, 2)]), ("gfull", "Linear", [(4, 3)]), ("own", "Linear")]


def test_global_backward_pre_hook_replaces_grad_output():
    def go(T):
        h = T.nn.modules.module.register_module_full_backward_pre_hook(
            lambda m, g: (g[0] * 3,))
        try:
            x = T.ones(2, requires_grad=True)
            T.nn.Identity()(x * 1).sum().backward()
        finally:
            h.remove()
        return x.grad.tolist()

    assert go(torch) == go(ng) == [3.0, 3.0]


def test_global_backward_hooks_of_both_kinds_refused():
    # ng's flag is process-global like PyTorch's: test it in a fresh interpreter
    import subprocess
    import sys

    code = ("import nodegrad.nn as nn\n"
            "mm = nn.modules.module\n"
            "mm.register_module_full_backward_hook(lambda *a: None)\n"
            "try:\n"
            "    mm.register_module_backward_hook(lambda *a: None)\n"
            "except RuntimeError as e:\n"
            "    assert 'Cannot use both' in str(e)\n"
            "    print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.stdout.strip() == "ok", out.stderr


def _registration_log(T):
    log = []
    mm = T.nn.modules.module

    def on_param(m, name, p):
        log.append(("param", type(m).__name__, name))

    def on_buffer(m, name, b):
        log.append(("buffer", type(m).__name__, name))
        return None if b is None else b + 1

    def on_module(m, name, sub):
        log.append(("module", type(m).__name__, name))

    hs = [mm.register_module_parameter_registration_hook(on_param),
          mm.register_module_buffer_registration_hook(on_buffer),
          mm.register_module_module_registration_hook(on_module)]
    try:
        m = T.nn.Module()
        m.w = T.nn.Parameter(T.zeros(1))
        m.register_buffer("b", T.zeros(1))
        m.sub = T.nn.Module()
        m.add_module("other", T.nn.Module())
        m.register_parameter("v", T.nn.Parameter(T.zeros(1)))
        b = m.b.tolist()
    finally:
        for h in hs:
            h.remove()
    m.z = T.nn.Parameter(T.zeros(1))  # removed: not seen
    return log, b


def test_global_registration_hooks():
    assert _registration_log(torch) == _registration_log(ng)


# --- Parameter and its containers --------------------------------------------------------------
def test_parameter_with_no_argument():
    t, n = _both(lambda T: T.nn.Parameter())
    assert tuple(t.shape) == tuple(n.shape) == (0,)
    assert t.requires_grad and n.requires_grad and n.dtype == ng.float32


def test_parameter_list_keeps_other_values():
    def go(T):
        pl = T.nn.ParameterList([T.ones(2), "x", 3, None])
        pl.append({"k": 1})
        return (type(pl[0]).__name__, pl[1], pl[2], pl[3], pl[4], len(pl),
                [type(v).__name__ for v in pl], list(pl.state_dict()),
                len(list(pl.parameters())))

    assert go(torch) == go(ng)


def test_parameter_list_set_and_slice():
    def go(T):
        pl = T.nn.ParameterList([T.ones(1), "a"])
        pl[-1] = "s"
        pl[0] = T.zeros(3)
        return (type(pl[0]).__name__, tuple(pl[0].shape), pl[1], len(pl[0:1]),
                list(pl.state_dict()))

    assert go(torch) == go(ng)


def test_parameter_dict_keeps_other_values():
    def go(T):
        pd = T.nn.ParameterDict({"n": 3, "t": T.ones(1), "s": "x"})
        return (pd["n"], pd["s"], type(pd["t"]).__name__, list(pd.keys()),
                list(pd.state_dict()), len(pd), "n" in pd)

    assert go(torch) == go(ng)


def test_parameter_dict_methods():
    def go(T):
        a, b = T.nn.Parameter(T.ones(1)), T.nn.Parameter(T.zeros(2))
        pd = T.nn.ParameterDict([("a", a), ("b", b), ("c", 1)])
        cp = pd.copy()
        out = [list(cp.keys()), cp["a"] is a, list(reversed(pd))]
        fk = pd.fromkeys(["x", "y"], 5)
        out += [type(fk).__name__, list(fk.items())]
        other = T.nn.ParameterDict({"d": T.ones(3)})
        out += [list((pd | other).keys()), list(other.__ror__(pd).keys())]
        pd |= other
        out += [list(pd.keys())]
        k, v = pd.popitem()
        out += [k, tuple(v.shape), list(pd.keys()), pd.popitem()[1], list(pd.keys())]
        return out

    assert go(torch) == go(ng)


# --- load_state_dict ---------------------------------------------------------------------------
def test_load_state_dict_non_tensor_value_is_a_runtime_error():
    for T in (torch, ng):
        m = T.nn.Linear(2, 1)
        m.bias.data.fill_(0.5)
        with pytest.raises(RuntimeError, match="expected .*Tensor or Tensor-like object"):
            m.load_state_dict({"weight": [[1.0, 2.0]], "bias": T.ones(1)})
        if T is ng:  # nothing copied (PyTorch copies the valid entries before raising)
            assert m.bias.tolist() == [0.5]


def test_state_dict_metadata():
    def go(T):
        m = T.nn.Sequential(T.nn.Linear(1, 1), T.nn.BatchNorm1d(1))
        return (dict(m.state_dict()._metadata), dict(m.state_dict(prefix="p.")._metadata))

    assert go(torch) == go(ng)


def test_batch_norm_version_2_counter_is_required():
    def go(T):
        bn = T.nn.BatchNorm1d(2)
        sd = bn.state_dict()
        del sd["num_batches_tracked"]
        with_meta = bn.load_state_dict(sd, strict=False).missing_keys
        plain = bn.load_state_dict(dict(sd), strict=False).missing_keys
        sd._metadata[""] = {"version": 1}
        old = bn.load_state_dict(sd, strict=False).missing_keys
        return with_meta, plain, old

    assert go(torch) == go(ng) == (["num_batches_tracked"], [], [])


def test_load_passes_local_metadata():
    def go(T):
        seen = []

        class M(T.nn.Module):
            _version = 3

            def __init__(self):
                super().__init__()
                self.lin = T.nn.Linear(1, 1)

            def _load_from_state_dict(self, sd, prefix, local_metadata, *a):
                seen.append((prefix, dict(local_metadata)))
                super()._load_from_state_dict(sd, prefix, local_metadata, *a)

        m = M()
        m.load_state_dict(m.state_dict())
        m.load_state_dict(dict(m.state_dict()))
        return seen

    assert go(torch) == go(ng) == [("", {"version": 3}), ("", {})]


# --- utilities ---------------------------------------------------------------------------------
def test_vector_to_parameters_aliases_the_vector():
    def go(T):
        ps = [T.nn.Parameter(T.zeros(2)), T.nn.Parameter(T.zeros(1, 2))]
        v = T.arange(4.0)
        T.nn.utils.vector_to_parameters(v, ps)
        v.add_(10)
        return [p.tolist() for p in ps], [type(p).__name__ for p in ps]

    assert go(torch) == go(ng) == ([[10.0, 11.0], [[12.0, 13.0]]], ["Parameter", "Parameter"])


def test_calculate_gain_gelu_unsupported():
    for T in (torch, ng):
        with pytest.raises(ValueError):
            T.nn.init.calculate_gain("gelu")
        with pytest.raises(ValueError):
            T.nn.init.kaiming_normal_(T.zeros(2, 2), nonlinearity="gelu")
    assert ng.nn.init.calculate_gain("relu") == pytest.approx(math.sqrt(2.0))
