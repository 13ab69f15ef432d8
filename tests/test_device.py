"""ng.device: PyTorch's torch.device as a device name (a str with .type and .index)."""

import json
import pickle

import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("args", [("cpu",), ("cuda",), ("cuda:1",), ("cuda", 2), ("CUDA:3",)])
def test_type_index_and_name_match_torch(args):
    d, t = ng.device(*args), torch.device(*[a.lower() if isinstance(a, str) else a
                                             for a in args])
    assert (d.type, d.index, str(d)) == (t.type, t.index, str(t))
    assert d == str(t)


def test_keywords_and_idempotence():
    assert ng.device(type="cuda", index=0) == "cuda:0"
    d = ng.device("cuda:1")
    assert ng.device(d) is d


def test_tensor_and_module_devices_read_as_torch():
    x = ng.ones(2)
    assert x.device == "cpu" and x.device.type == "cpu" and x.device.index is None
    assert isinstance(x.device, ng.device)
    m = ng.nn.Linear(2, 2).to(ng.device("cpu"))
    assert m.weight.device.type == "cpu"
    assert x.to(ng.device("cpu")).device == "cpu"
    assert json.loads(json.dumps({"d": x.device})) == {"d": "cpu"}
    assert pickle.loads(pickle.dumps(x.device)).type == "cpu"


@pytest.mark.parametrize("args,err,match", [
    (("tpu",), ValueError, "unknown device 'tpu'"),
    (("cuda:x",), ValueError, "unknown device"),
    (("cuda:0", 1), ValueError, "already names an index"),
    (("cuda", -1), ValueError, "index must be an int >= 0"),
    (("cpu", 1), ValueError, "index 0 only"),
    ((3,), TypeError, "expected a string"),
])
def test_bad_devices_raise_clear_errors(args, err, match):
    with pytest.raises(err, match=match):
        ng.device(*args)
    if args != ("cpu", 1):  # torch keeps "cpu:1", a name no CPU tensor has: refused here
        with pytest.raises(RuntimeError):
            torch.device(*args)  # torch refuses the others too


def test_a_tensor_assigned_to_data_takes_its_memory():
    # PyTorch's p.data = other: the tensor takes other's memory, shape and dtype
    p = ng.nn.Linear(2, 2).weight
    p.data = ng.zeros(2, 2)
    assert (p * 2).tolist() == [[0.0, 0.0], [0.0, 0.0]] and p.requires_grad
    t = ng.ones(2, 2)
    z = ng.zeros(3)
    t.data = z
    assert t.shape == (3,) and (t * 2).tolist() == [0.0, 0.0, 0.0]
    z.add_(1.0)
    assert t.tolist() == [1.0, 1.0, 1.0]  # the same memory
    with pytest.raises(TypeError, match=r"data: expected a Tensor"):
        t.data = [1.0, 2.0]
