"""PyTorch's beginner tutorials (pytorch.org), ported by changing only the imports.

Each program is written once against a library ``lib`` (``torch`` or ``nodegrad``) as the
tutorial writes it, with tiny data and few steps; both runs start from the same float64 weights
and see the same data and the same random choices, so every recorded value agrees to rounding.
"""

# ruff: noqa: UP008, UP031, B007, B008  (the programs keep the tutorials' own spellings)
from __future__ import annotations

import copy
import importlib
import math
import os
import re
from tempfile import TemporaryDirectory

import numpy as np
import pytest

import nodegrad as ng
from _ports import _one_torch_thread, arr, arrays, assert_same  # noqa: F401

torch = pytest.importorskip("torch")

TOL = 1e-10


def both(fn, *args, tol: float = TOL):
    """``fn`` run with PyTorch and with nodegrad; their records must agree."""
    ref, got = fn(torch, *args), fn(ng, *args)
    assert_same(got, ref, tol)
    return got


def printed(line: str) -> list:
    """A printed line as its words and numbers (numbers compared to rounding)."""
    return [float(w) if re.fullmatch(r"-?[\d.]+(e-?\d+)?", w) else w for w in line.split()]


def name(dtype) -> str:
    """A dtype's name: nodegrad's dtypes are NumPy's (``int64``), PyTorch's print
    ``torch.int64``."""
    return str(dtype).removeprefix("torch.")


def init_weights(build, lib, *args, dtype: str = "float64"):
    """``build(lib, *args)`` in ``dtype`` holding PyTorch's seeded initial weights."""
    torch.manual_seed(0)
    init = {k: v.detach().numpy().copy()
            for k, v in build(torch, *args).to(getattr(torch, dtype)).state_dict().items()}
    model = build(lib, *args).to(getattr(lib, dtype))
    mine = model.state_dict()
    assert list(mine) == list(init)
    model.load_state_dict({k: lib.tensor(v) for k, v in init.items()})
    return model


# --- 1. Learning PyTorch with Examples ------------------------------------------------------

ABCD = np.random.default_rng(0).standard_normal(4) * 0.1


def poly_tensors(lib, dtype_name="float64"):
    """Tensors: forward and backward written by hand (the tutorial's ``dtype = torch.float``
    is the float32 run)."""
    dtype = getattr(lib, dtype_name)
    device = lib.device("cpu")
    x = lib.linspace(-math.pi, math.pi, 2000, device=device, dtype=dtype)
    y = lib.sin(x)
    a, b, c, d = (lib.tensor(v, device=device, dtype=dtype) for v in ABCD)
    learning_rate = 1e-6
    losses = []
    for t in range(20):
        y_pred = a + b * x + c * x ** 2 + d * x ** 3
        loss = (y_pred - y).pow(2).sum().item()
        losses.append(loss)
        grad_y_pred = 2.0 * (y_pred - y)
        grad_a = grad_y_pred.sum()
        grad_b = (grad_y_pred * x).sum()
        grad_c = (grad_y_pred * x ** 2).sum()
        grad_d = (grad_y_pred * x ** 3).sum()
        a -= learning_rate * grad_a
        b -= learning_rate * grad_b
        c -= learning_rate * grad_c
        d -= learning_rate * grad_d
    assert isinstance(losses[0], float)
    print_line = f'Result: y = {a.item()} + {b.item()} x + {c.item()} x^2 + {d.item()} x^3'
    return losses, [a, b, c, d], printed(print_line)


def poly_autograd(lib, dtype_name="float64"):
    """Autograd: ``loss.backward()`` and a manual update under ``no_grad``."""
    dtype = getattr(lib, dtype_name)
    x = lib.linspace(-math.pi, math.pi, 2000, dtype=dtype)
    y = lib.sin(x)
    a, b, c, d = (lib.tensor(v, dtype=dtype, requires_grad=True) for v in ABCD)
    learning_rate = 1e-6
    losses = []
    for t in range(20):
        y_pred = a + b * x + c * x ** 2 + d * x ** 3
        loss = (y_pred - y).pow(2).sum()
        losses.append(loss.item())
        loss.backward()
        with lib.no_grad():
            a -= learning_rate * a.grad
            b -= learning_rate * b.grad
            c -= learning_rate * c.grad
            d -= learning_rate * d.grad
            a.grad = None
            b.grad = None
            c.grad = None
            d.grad = None
    assert a.requires_grad and a.is_leaf and a.grad is None
    return losses, [a, b, c, d]


def legendre(lib):
    """A custom autograd Function, P3(x) = (5x^3 - 3x) / 2, used through ``P3.apply``."""

    class LegendrePolynomial3(lib.autograd.Function):
        @staticmethod
        def forward(ctx, input):
            ctx.save_for_backward(input)
            return 0.5 * (5 * input ** 3 - 3 * input)

        @staticmethod
        def backward(ctx, grad_output):
            input, = ctx.saved_tensors
            return grad_output * 1.5 * (5 * input ** 2 - 1)

    dtype = lib.float64
    x = lib.linspace(-math.pi, math.pi, 2000, dtype=dtype)
    y = lib.sin(x)
    a = lib.full((), 0.0, dtype=dtype, requires_grad=True)
    b = lib.full((), -1.0, dtype=dtype, requires_grad=True)
    c = lib.full((), 0.0, dtype=dtype, requires_grad=True)
    d = lib.full((), 0.3, dtype=dtype, requires_grad=True)
    learning_rate = 5e-6
    losses = []
    for t in range(20):
        P3 = LegendrePolynomial3.apply
        y_pred = a + b * P3(c + d * x)
        loss = (y_pred - y).pow(2).sum()
        losses.append(loss.item())
        loss.backward()
        with lib.no_grad():
            a -= learning_rate * a.grad
            b -= learning_rate * b.grad
            c -= learning_rate * c.grad
            d -= learning_rate * d.grad
            a.grad = None
            b.grad = None
            c.grad = None
            d.grad = None
    return losses, [a, b, c, d]


def poly_model(lib):
    nn = lib.nn
    return nn.Sequential(nn.Linear(3, 1), nn.Flatten(0, 1))


def poly_nn(lib):
    """nn: ``Sequential(Linear(3, 1), Flatten(0, 1))``, summed MSE, manual parameter update."""
    x = lib.linspace(-math.pi, math.pi, 2000, dtype=lib.float64)
    y = lib.sin(x)
    p = lib.tensor([1, 2, 3])
    xx = x.unsqueeze(-1).pow(p)
    assert xx.shape == (2000, 3) and xx.dtype == lib.float64
    model = init_weights(lambda L: poly_model(L), lib)
    loss_fn = lib.nn.MSELoss(reduction='sum')
    learning_rate = 1e-6
    losses = []
    for t in range(20):
        y_pred = model(xx)
        loss = loss_fn(y_pred, y)
        losses.append(loss.item())
        model.zero_grad()
        loss.backward()
        with lib.no_grad():
            for param in model.parameters():
                param -= learning_rate * param.grad
    linear_layer = model[0]
    line = (f"Result: y = {linear_layer.bias.item()} + {linear_layer.weight[:, 0].item()} x + "
            f"{linear_layer.weight[:, 1].item()} x^2 + {linear_layer.weight[:, 2].item()} x^3")
    return losses, arrays(model.state_dict()), printed(line)


def poly_optim(lib):
    """optim: RMSprop on the same model."""
    x = lib.linspace(-math.pi, math.pi, 2000, dtype=lib.float64)
    y = lib.sin(x)
    p = lib.tensor([1, 2, 3])
    xx = x.unsqueeze(-1).pow(p)
    model = init_weights(lambda L: poly_model(L), lib)
    loss_fn = lib.nn.MSELoss(reduction='sum')
    learning_rate = 1e-3
    optimizer = lib.optim.RMSprop(model.parameters(), lr=learning_rate)
    losses = []
    for t in range(20):
        y_pred = model(xx)
        loss = loss_fn(y_pred, y)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return losses, arrays(model.state_dict()), arrays(optimizer.state_dict()["state"][0])


def polynomial3_class(lib):
    """The tutorial's custom ``nn.Module``: four scalar Parameters and a ``string()`` method."""

    class Polynomial3(lib.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = lib.nn.Parameter(lib.randn(()))
            self.b = lib.nn.Parameter(lib.randn(()))
            self.c = lib.nn.Parameter(lib.randn(()))
            self.d = lib.nn.Parameter(lib.randn(()))

        def forward(self, x):
            return self.a + self.b * x + self.c * x ** 2 + self.d * x ** 3

        def string(self):
            return (f'y = {self.a.item()} + {self.b.item()} x + {self.c.item()} x^2 + '
                    f'{self.d.item()} x^3')

    return Polynomial3


def polynomial3(lib):
    """The custom Module trained with SGD."""
    x = lib.linspace(-math.pi, math.pi, 2000, dtype=lib.float64)
    y = lib.sin(x)
    model = init_weights(lambda L: polynomial3_class(L)(), lib)
    assert [n for n, _ in model.named_parameters()] == ["a", "b", "c", "d"]
    criterion = lib.nn.MSELoss(reduction='sum')
    optimizer = lib.optim.SGD(model.parameters(), lr=1e-6)
    losses = []
    for t in range(20):
        y_pred = model(x)
        loss = criterion(y_pred, y)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return losses, arrays(model.state_dict()), printed(model.string())


CHOICES = [0, 2, 1, 2, 0, 1, 2, 1, 2, 0]


def dynamic_net_class(lib):
    """DynamicNet: a random number (0..2) of reuses of one weight."""

    class DynamicNet(lib.nn.Module):
        def __init__(self, choices):
            super().__init__()
            self.a = lib.nn.Parameter(lib.randn(()))
            self.b = lib.nn.Parameter(lib.randn(()))
            self.c = lib.nn.Parameter(lib.randn(()))
            self.d = lib.nn.Parameter(lib.randn(()))
            self.e = lib.nn.Parameter(lib.randn(()))
            self.choices = iter(choices)  # stands for random.randint(4, 6) - 4

        def forward(self, x):
            y = self.a + self.b * x + self.c * x ** 2 + self.d * x ** 3
            for exp in range(4, next(self.choices) + 4):
                y = y + self.e * x ** exp
            return y

    return DynamicNet


def dynamic_net(lib):
    """DynamicNet trained with SGD with momentum; the random choices are fixed."""
    x = lib.linspace(-math.pi, math.pi, 200, dtype=lib.float64)
    y = lib.sin(x)
    model = init_weights(lambda L: dynamic_net_class(L)(CHOICES), lib)
    criterion = lib.nn.MSELoss(reduction='sum')
    optimizer = lib.optim.SGD(model.parameters(), lr=1e-8, momentum=0.9)
    losses = []
    for t in range(len(CHOICES)):
        y_pred = model(x)
        loss = criterion(y_pred, y)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        losses.append(None if model.e.grad is None else model.e.grad.item())
        optimizer.step()
    return losses, arrays(model.state_dict())


@pytest.mark.parametrize("program", [poly_tensors, poly_autograd, legendre, poly_nn, poly_optim,
                                     polynomial3, dynamic_net])
def test_learning_pytorch_with_examples(program):
    both(program)


@pytest.mark.parametrize("program", [poly_tensors, poly_autograd])
def test_learning_pytorch_with_examples_float32(program):
    both(program, "float", tol=1e-5)


def test_accelerator():
    """``torch.accelerator``, which the current tutorials ask before choosing a device."""
    accelerator = importlib.import_module("nodegrad.accelerator")  # ng.accelerator
    for lib, acc in ((torch, torch.accelerator), (ng, accelerator)):
        device = acc.current_accelerator().type if acc.is_available() else "cpu"
        assert lib.ones(2, device=device).device.type == device
    if torch.accelerator.is_available() or accelerator.is_available():
        pytest.skip("the answers without an accelerator")
    assert accelerator.is_available() is False and accelerator.device_count() == 0
    assert accelerator.current_accelerator(check_available=True) is None
    for name in ("current_device_index", "synchronize"):
        with pytest.raises(RuntimeError, match="none is available"):
            getattr(torch.accelerator, name)()
        with pytest.raises(ng.DeviceError, match=f"accelerator.{name}: no accelerator"):
            getattr(accelerator, name)()
    with pytest.raises(TypeError, match="check_available must be a bool"):
        accelerator.current_accelerator(check_available="yes")
    built = ng.backends.cuda.is_built()
    assert accelerator.current_accelerator() == ("cuda" if built else None)


# --- 2. Deep Learning with PyTorch: A 60 Minute Blitz --------------------------------------

def blitz_tensors(lib):
    """Tensors: creation, attributes, indexing, cat, item, in-place ops and the NumPy bridge."""
    data = [[1, 2], [3, 4]]
    x_data = lib.tensor(data)
    np_array = np.array(data)
    x_np = lib.from_numpy(np_array)
    x_ones = lib.ones_like(x_data)
    lib.manual_seed(0)
    x_rand = lib.rand_like(x_data, dtype=lib.float)
    assert x_rand.dtype == lib.float32 and x_rand.shape == (2, 2)
    shape = (2, 3,)
    rand_tensor = lib.rand(shape)
    ones_tensor = lib.ones(shape)
    zeros_tensor = lib.zeros(shape)
    tensor = lib.rand(3, 4)
    out = [x_data, x_np, x_ones, name(x_data.dtype), name(x_np.dtype), name(x_rand.dtype),
           list(rand_tensor.shape), ones_tensor, zeros_tensor, list(tensor.shape),
           name(tensor.dtype), str(tensor.device), tensor.device.type]
    if lib.cuda.is_available():  # pragma: no cover - the tutorial's guard
        tensor = tensor.to("cuda")
    tensor = lib.ones(4, 4)
    out += [tensor[0], tensor[:, 0], tensor[..., -1]]
    tensor[:, 1] = 0
    out.append(tensor.clone())
    t1 = lib.cat([tensor, tensor, tensor], dim=1)
    out.append(t1)
    y1 = tensor @ tensor.T
    y2 = tensor.matmul(tensor.T)
    y3 = lib.rand_like(y1)
    lib.matmul(tensor, tensor.T, out=y3)
    z1 = tensor * tensor
    z2 = tensor.mul(tensor)
    z3 = lib.rand_like(tensor)
    lib.mul(tensor, tensor, out=z3)
    out += [y1, y2, y3, z1, z2, z3]
    agg = tensor.sum()
    agg_item = agg.item()
    out += [agg_item, type(agg_item).__name__]
    tensor.add_(5)
    out.append(tensor.clone())
    # the bridge with NumPy: both views share memory
    t = lib.ones(5)
    n = t.numpy()
    t.add_(1)
    out += [n.copy(), t.clone()]
    n = np.ones(5)
    t = lib.from_numpy(n)
    np.add(n, 1, out=n)
    out += [t.clone(), name(t.dtype)]
    return out


def blitz_autograd(lib):
    """Autograd: a vector-valued Q backpropagated with an external gradient."""
    lib.manual_seed(0)
    a = lib.tensor([2., 3.], requires_grad=True)
    b = lib.tensor([6., 4.], requires_grad=True)
    Q = 3 * a ** 3 - b ** 2
    external_grad = lib.tensor([1., 1.])
    Q.backward(gradient=external_grad)
    assert (9 * a ** 2 == a.grad).all()
    assert bool((-2 * b == b.grad).all())
    x = lib.rand(5, 5)
    y = lib.rand(5, 5)
    z = lib.rand((5, 5), requires_grad=True)
    a2 = x + y
    b2 = x + z
    rec = [a.grad, b.grad, a2.requires_grad, b2.requires_grad, Q.grad_fn is not None]
    # "Automatic differentiation with torch.autograd" (Learn the Basics)
    x = lib.ones(5)
    y = lib.zeros(3)
    w = lib.tensor(WB[0], requires_grad=True)
    b = lib.tensor(WB[1], requires_grad=True)
    z = lib.matmul(x, w) + b
    loss = lib.nn.functional.binary_cross_entropy_with_logits(z, y)
    loss.backward()
    rec += [loss, w.grad, b.grad, z.requires_grad]
    with lib.no_grad():
        z = lib.matmul(x, w) + b
    rec.append(z.requires_grad)
    z = lib.matmul(x, w) + b
    z_det = z.detach()
    rec.append(z_det.requires_grad)
    inp = lib.eye(4, 5, requires_grad=True)
    out = (inp + 1).pow(2).t()
    out.backward(lib.ones_like(out), retain_graph=True)
    rec.append(inp.grad.clone())
    out.backward(lib.ones_like(out), retain_graph=True)
    rec.append(inp.grad.clone())  # accumulated
    inp.grad.zero_()
    out.backward(lib.ones_like(out), retain_graph=True)
    rec.append(inp.grad)
    return rec


WB = [np.random.default_rng(7).standard_normal((5, 3)).astype(np.float32),
      np.random.default_rng(8).standard_normal(3).astype(np.float32)]


def lenet_class(lib):
    nn, F = lib.nn, lib.nn.functional

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 6, 5)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1 = nn.Linear(16 * 5 * 5, 120)
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, 10)

        def forward(self, input):
            c1 = F.relu(self.conv1(input))
            s2 = F.max_pool2d(c1, (2, 2))
            c3 = F.relu(self.conv2(s2))
            s4 = F.max_pool2d(c3, 2)
            s4 = lib.flatten(s4, 1)
            f5 = F.relu(self.fc1(s4))
            f6 = F.relu(self.fc2(f5))
            output = self.fc3(f6)
            return output

    return Net


LENET_IN = np.random.default_rng(1).standard_normal((1, 1, 32, 32))
LENET_G = np.random.default_rng(2).standard_normal((1, 10))
LENET_T = np.random.default_rng(3).standard_normal(10)


def blitz_lenet(lib):
    """Neural networks: LeNet, zero_grad, backward with a random gradient, MSELoss, SGD."""
    nn, optim = lib.nn, lib.optim
    net = init_weights(lambda L: lenet_class(L)(), lib)
    params = list(net.parameters())
    rec = [len(params), list(params[0].size())]
    input = lib.tensor(LENET_IN)
    out = net(input)
    rec.append(out)
    net.zero_grad()
    out.backward(lib.tensor(LENET_G))
    rec.append(net.conv1.bias.grad.clone())
    output = net(input)
    target = lib.tensor(LENET_T)
    target = target.view(1, -1)
    criterion = nn.MSELoss()
    loss = criterion(output, target)
    rec.append(loss)
    assert loss.grad_fn is not None
    assert loss.grad_fn.next_functions[0][0] is not None
    net.zero_grad()
    rec.append(net.conv1.bias.grad)  # None after zero_grad() (set_to_none)
    loss.backward()
    rec.append(net.conv1.bias.grad)
    learning_rate = 0.01
    with lib.no_grad():
        for f in net.parameters():
            f.sub_(f.grad * learning_rate)
    optimizer = optim.SGD(net.parameters(), lr=0.01)
    for _ in range(3):
        optimizer.zero_grad()
        output = net(input)
        loss = criterion(output, target)
        loss.backward()
        optimizer.step()
        rec.append(loss.item())
    return rec, arrays(net.state_dict())


def cifar_class(lib):
    nn, F = lib.nn, lib.nn.functional

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 5)
            self.pool = nn.MaxPool2d(2, 2)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1 = nn.Linear(16 * 5 * 5, 120)
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, 10)

        def forward(self, x):
            x = self.pool(F.relu(self.conv1(x)))
            x = self.pool(F.relu(self.conv2(x)))
            x = lib.flatten(x, 1)
            x = F.relu(self.fc1(x))
            x = F.relu(self.fc2(x))
            x = self.fc3(x)
            return x

    return Net


CLASSES = ('plane', 'car', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
_R = np.random.default_rng(4)
CIFAR_X = _R.standard_normal((4, 4, 3, 32, 32))  # four batches of four images
CIFAR_Y = _R.integers(0, 10, (4, 4))


def blitz_cifar(lib, tmp_path, dtype):
    """Training a classifier: CrossEntropyLoss, SGD with momentum, running loss, accuracy,
    per-class accuracy, save and load the state dict into a new Net."""
    nn, optim = lib.nn, lib.optim
    Net = cifar_class(lib)
    net = init_weights(lambda L: cifar_class(L)(), lib, dtype=dtype)
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    trainloader = [(lib.tensor(x, dtype=getattr(lib, dtype)), lib.tensor(y))
                   for x, y in zip(CIFAR_X, CIFAR_Y)]
    printed_lines = []
    for epoch in range(2):
        running_loss = 0.0
        for i, data in enumerate(trainloader, 0):
            inputs, labels = data
            optimizer.zero_grad()
            outputs = net(inputs)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            if i % 2 == 1:
                printed_lines.append(printed(
                    f'[{epoch + 1}, {i + 1:5d}] loss: {running_loss / 2:.3f}'))
                running_loss = 0.0
    PATH = str(tmp_path / f'cifar_net_{lib.__name__}.pth')
    lib.save(net.state_dict(), PATH)
    images, labels = trainloader[0]
    net = Net().to(getattr(lib, dtype))
    net.load_state_dict(lib.load(PATH, weights_only=True))
    outputs = net(images)
    _, predicted = lib.max(outputs, 1)
    pred_names = ' '.join(f'{CLASSES[predicted[j]]:5s}' for j in range(4))
    correct = 0
    total = 0
    with lib.no_grad():
        for data in trainloader:
            images, labels = data
            outputs = net(images)
            _, predicted = lib.max(outputs.data, dim=1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
    correct_pred = {classname: 0 for classname in CLASSES}
    total_pred = {classname: 0 for classname in CLASSES}
    with lib.no_grad():
        for data in trainloader:
            images, labels = data
            outputs = net(images)
            _, predictions = lib.max(outputs, 1)
            for label, prediction in zip(labels, predictions):
                if label == prediction:
                    correct_pred[CLASSES[label]] += 1
                total_pred[CLASSES[label]] += 1
    accuracy = {c: 100 * float(correct_pred[c]) / n for c, n in total_pred.items() if n}
    return (printed_lines, arrays(net.state_dict()), pred_names, correct, total,
            correct_pred, total_pred, accuracy, outputs)


@pytest.mark.parametrize("program", [blitz_tensors, blitz_autograd, blitz_lenet])
def test_sixty_minute_blitz(program):
    both(program, tol=1e-6 if program is blitz_autograd else TOL)  # float32 there


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sixty_minute_blitz_classifier(tmp_path, dtype):
    both(blitz_cifar, tmp_path, dtype, tol=TOL if dtype == "float64" else 1e-5)


def test_max_positional_dim():
    """The classifier tutorial's ``torch.max(outputs, 1)`` is PyTorch's (values, indices) in
    nodegrad too, as ``dim=1`` and ``outputs.max(1)``; ``axis=1`` is NumPy's values."""
    x = np.random.default_rng(5).standard_normal((4, 10))
    ref = torch.max(torch.tensor(x), 1)
    assert_same(ng.max(ng.tensor(x), axis=1), ref.values)
    for got in (ng.max(ng.tensor(x), 1), ng.max(ng.tensor(x), dim=1), ng.tensor(x).max(1)):
        assert_same(list(got), list(ref))
        assert_same(list(got[1]), list(ref.indices))


# --- 3. NLP From Scratch: classifying and generating names with a character-level RNN ------

ALL_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,;'"
N_LETTERS = len(ALL_LETTERS) + 1  # the generator's EOS marker; the classifier uses one fewer
CATEGORY_LINES = {"Scottish": ["Smith", "Brown"], "Italian": ["Rossi", "Bianchi"],
                  "Greek": ["Papadopoulos", "Nikolaidis"]}
ALL_CATEGORIES = list(CATEGORY_LINES)


def rnn_class(lib):
    nn = lib.nn

    class RNN(nn.Module):
        def __init__(self, input_size, hidden_size, output_size):
            super(RNN, self).__init__()
            self.hidden_size = hidden_size
            self.i2h = nn.Linear(input_size + hidden_size, hidden_size)
            self.h2o = nn.Linear(input_size + hidden_size, output_size)
            self.softmax = nn.LogSoftmax(dim=1)

        def forward(self, input, hidden):
            combined = lib.cat((input, hidden), 1)
            hidden = self.i2h(combined)
            output = self.h2o(combined)
            output = self.softmax(output)
            return output, hidden

        def initHidden(self):
            return lib.zeros(1, self.hidden_size, dtype=lib.float64)

    return RNN


def classify_names(lib, update: str):
    n_letters = N_LETTERS - 1

    def letterToIndex(letter):
        return ALL_LETTERS.find(letter)

    def letterToTensor(letter):
        tensor = lib.zeros(1, n_letters)
        tensor[0][letterToIndex(letter)] = 1
        return tensor

    def lineToTensor(line):
        tensor = lib.zeros(len(line), 1, n_letters, dtype=lib.float64)
        for li, letter in enumerate(line):
            tensor[li][0][letterToIndex(letter)] = 1
        return tensor

    rec = [letterToTensor('J'), list(lineToTensor('Jones').size())]
    n_hidden = 16
    n_categories = len(ALL_CATEGORIES)
    rnn = init_weights(lambda L: rnn_class(L)(n_letters, n_hidden, n_categories), lib)

    def categoryFromOutput(output):
        top_n, top_i = output.topk(1)
        category_i = top_i[0].item()
        return ALL_CATEGORIES[category_i], category_i

    input = lineToTensor('Albert')
    hidden = lib.zeros(1, n_hidden, dtype=lib.float64)
    output, next_hidden = rnn(input[0], hidden)
    rec += [output, categoryFromOutput(output)]

    criterion = lib.nn.NLLLoss()
    learning_rate = 0.005

    def train(category_tensor, line_tensor):
        hidden = rnn.initHidden()
        rnn.zero_grad()
        for i in range(line_tensor.size()[0]):
            output, hidden = rnn(line_tensor[i], hidden)
        loss = criterion(output, category_tensor)
        loss.backward()
        if update == "data":  # the tutorial's update
            for p in rnn.parameters():
                p.data.add_(p.grad.data, alpha=-learning_rate)
        else:
            with lib.no_grad():
                for p in rnn.parameters():
                    p.add_(p.grad, alpha=-learning_rate)
        return output, loss.item()

    samples = [(c, line) for _ in range(2) for c in ALL_CATEGORIES for line in CATEGORY_LINES[c]]
    current_loss = 0
    for category, line in samples:
        category_tensor = lib.tensor([ALL_CATEGORIES.index(category)], dtype=lib.long)
        line_tensor = lineToTensor(line)
        output, loss = train(category_tensor, line_tensor)
        current_loss += loss
        guess, guess_i = categoryFromOutput(output)
        correct = '✓' if guess == category else '✗ (%s)' % category
        rec.append(printed('%.4f %s / %s %s' % (loss, line, guess, correct)))
    rec.append(current_loss)

    def evaluate(line_tensor):
        hidden = rnn.initHidden()
        for i in range(line_tensor.size()[0]):
            output, hidden = rnn(line_tensor[i], hidden)
        return output

    confusion = lib.zeros(n_categories, n_categories)
    for category, line in samples:
        output = evaluate(lineToTensor(line))
        guess, guess_i = categoryFromOutput(output)
        category_i = ALL_CATEGORIES.index(category)
        confusion[category_i][guess_i] += 1
    for i in range(n_categories):
        confusion[i] = confusion[i] / confusion[i].sum()
    rec.append(confusion)

    def predict(input_line, n_predictions=2):
        predictions = []
        with lib.no_grad():
            output = evaluate(lineToTensor(input_line))
            topv, topi = output.topk(n_predictions, 1, True)
            for i in range(n_predictions):
                value = topv[0][i].item()
                category_index = topi[0][i].item()
                predictions.append([value, ALL_CATEGORIES[category_index]])
        return predictions

    rec.append(predict('Dovesky'))
    return rec, arrays(rnn.state_dict())


def test_classifying_names():
    both(classify_names, "no_grad")


def test_classifying_names_data_update():
    """The tutorial's own update, ``p.data.add_(p.grad.data, alpha=-lr)``, runs as written."""
    both(classify_names, "data")


def generator_class(lib, n_categories):
    nn = lib.nn

    class RNN(nn.Module):
        def __init__(self, input_size, hidden_size, output_size):
            super(RNN, self).__init__()
            self.hidden_size = hidden_size
            self.i2h = nn.Linear(n_categories + input_size + hidden_size, hidden_size)
            self.i2o = nn.Linear(n_categories + input_size + hidden_size, output_size)
            self.o2o = nn.Linear(hidden_size + output_size, output_size)
            self.dropout = nn.Dropout(0.0)  # the tutorial's 0.1, off so both runs agree
            self.softmax = nn.LogSoftmax(dim=1)

        def forward(self, category, input, hidden):
            input_combined = lib.cat((category, input, hidden), 1)
            hidden = self.i2h(input_combined)
            output = self.i2o(input_combined)
            output_combined = lib.cat((hidden, output), 1)
            output = self.o2o(output_combined)
            output = self.dropout(output)
            output = self.softmax(output)
            return output, hidden

        def initHidden(self):
            return lib.zeros(1, self.hidden_size, dtype=lib.float64)

    return RNN


def generate_names(lib, loss_start: str):
    n_letters = N_LETTERS
    all_categories = ALL_CATEGORIES
    n_categories = len(all_categories)
    rnn = init_weights(lambda L: generator_class(L, n_categories)(n_letters, 16, n_letters), lib)

    def categoryTensor(category):
        li = all_categories.index(category)
        tensor = lib.zeros(1, n_categories, dtype=lib.float64)
        tensor[0][li] = 1
        return tensor

    def inputTensor(line):
        tensor = lib.zeros(len(line), 1, n_letters, dtype=lib.float64)
        for li in range(len(line)):
            letter = line[li]
            tensor[li][0][ALL_LETTERS.find(letter)] = 1
        return tensor

    def targetTensor(line):
        letter_indexes = [ALL_LETTERS.find(line[li]) for li in range(1, len(line))]
        letter_indexes.append(n_letters - 1)  # EOS
        return lib.LongTensor(letter_indexes)

    criterion = lib.nn.NLLLoss()
    learning_rate = 0.1

    def train(category_tensor, input_line_tensor, target_line_tensor):
        target_line_tensor.unsqueeze_(-1)
        hidden = rnn.initHidden()
        rnn.zero_grad()
        if loss_start == "tensor":
            loss = lib.Tensor([0])  # float32: each float64 term is added in place
        else:
            loss = 0  # the tutorial's alternative to torch.Tensor([0])
        for i in range(input_line_tensor.size(0)):
            output, hidden = rnn(category_tensor, input_line_tensor[i], hidden)
            l = criterion(output, target_line_tensor[i])  # noqa: E741
            loss += l
        loss.backward()
        with lib.no_grad():
            for p in rnn.parameters():
                p.add_(p.grad, alpha=-learning_rate)
        return output, loss.item() / input_line_tensor.size(0)

    rec = []
    total_loss = 0
    for _ in range(3):
        for category in all_categories:
            for line in CATEGORY_LINES[category]:
                output, loss = train(categoryTensor(category), inputTensor(line),
                                     targetTensor(line))
                total_loss += loss
                rec.append(loss)
    rec.append(total_loss)

    max_length = 8

    def sample(category, start_letter='A'):
        with lib.no_grad():
            category_tensor = categoryTensor(category)
            input = inputTensor(start_letter)
            hidden = rnn.initHidden()
            output_name = start_letter
            for i in range(max_length):
                output, hidden = rnn(category_tensor, input[0], hidden)
                topv, topi = output.topk(1)
                topi = topi[0][0]
                if topi == n_letters - 1:
                    break
                else:
                    letter = ALL_LETTERS[topi]
                    output_name += letter
                input = inputTensor(letter)
            return output_name

    def samples(category, start_letters='ABC'):
        return [sample(category, start_letter) for start_letter in start_letters]

    rec += [samples(c, 'SRP') for c in all_categories]
    return rec, arrays(rnn.state_dict())


@pytest.mark.parametrize("loss_start", ["tensor", "int"])
def test_generating_names(loss_start):
    both(generate_names, loss_start)


# --- 4. Transfer learning: a frozen backbone, a new head, StepLR, train/eval phases ---------

def backbone_class(lib):
    nn = lib.nn

    class TinyResNet(nn.Module):
        """A pretrained-style backbone (conv, batch norm, one residual block) and a head."""

        def __init__(self, num_classes=5):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(4)
            self.relu = nn.ReLU(inplace=True)
            self.layer1 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False),
                                        nn.BatchNorm2d(4), nn.ReLU(inplace=True))
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(4, num_classes)

        def forward(self, x):
            x = self.relu(self.bn1(self.conv1(x)))
            x = x + self.layer1(x)
            x = lib.flatten(self.avgpool(x), 1)
            return self.fc(x)

    return TinyResNet


_R = np.random.default_rng(6)
TL_DATA = {"train": [(_R.standard_normal((4, 3, 8, 8)), _R.integers(0, 2, 4)) for _ in range(3)],
           "val": [(_R.standard_normal((4, 3, 8, 8)), _R.integers(0, 2, 4)) for _ in range(2)]}


def transfer(lib, mode: str):
    """``mode``: "head" (the fixed feature extractor, the head's parameters optimised), "all"
    (the autograd blitz: everything frozen but the new head, all parameters handed to SGD) or
    "finetune" (the first convolution frozen, the rest trained)."""
    fixed_feature_extractor = mode != "finetune"
    nn, optim = lib.nn, lib.optim
    lr_scheduler = optim.lr_scheduler
    cudnn = importlib.import_module(f"{lib.__name__}.backends.cudnn")  # import ... as cudnn
    benchmark, cudnn.benchmark = cudnn.benchmark, True
    device = lib.device("cuda:0" if lib.cuda.is_available() else "cpu")
    dataloaders = {x: [(lib.tensor(i), lib.tensor(t)) for i, t in TL_DATA[x]]
                   for x in ['train', 'val']}
    dataset_sizes = {x: sum(len(t) for _, t in TL_DATA[x]) for x in ['train', 'val']}
    rec = []

    def train_model(model, criterion, optimizer, scheduler, num_epochs=25):
        best_model_wts = copy.deepcopy(model.state_dict())
        # the tutorial's current form keeps the best weights in a file instead
        best_model_params_path = os.path.join(tempdir, 'best_model_params.pt')
        lib.save(model.state_dict(), best_model_params_path)
        best_acc = 0.0
        for epoch in range(num_epochs):
            for phase in ['train', 'val']:
                if phase == 'train':
                    model.train()
                else:
                    model.eval()
                running_loss = 0.0
                running_corrects = 0
                for inputs, labels in dataloaders[phase]:
                    inputs = inputs.to(device)
                    labels = labels.to(device)
                    optimizer.zero_grad()
                    with lib.set_grad_enabled(phase == 'train'):
                        outputs = model(inputs)
                        _, preds = lib.max(outputs, 1)
                        loss = criterion(outputs, labels)
                        if phase == 'train':
                            loss.backward()
                            optimizer.step()
                    running_loss += loss.item() * inputs.size(0)
                    running_corrects += lib.sum(preds == labels.data)
                if phase == 'train':
                    scheduler.step()
                epoch_loss = running_loss / dataset_sizes[phase]
                epoch_acc = running_corrects.double() / dataset_sizes[phase]
                rec.append(printed(f'{phase} Loss: {epoch_loss:.4f} Acc: {epoch_acc:.4f}'))
                rec.append([epoch_loss, epoch_acc, optimizer.param_groups[0]['lr']])
                if phase == 'val' and epoch_acc > best_acc:
                    best_acc = epoch_acc
                    best_model_wts = copy.deepcopy(model.state_dict())
                    lib.save(model.state_dict(), best_model_params_path)
        rec.append(printed(f'Best val Acc: {best_acc:4f}'))
        if mode == "finetune":
            model.load_state_dict(lib.load(best_model_params_path, weights_only=True))
        else:
            model.load_state_dict(best_model_wts)
        return model

    model_conv = init_weights(lambda L: backbone_class(L)(), lib)
    if fixed_feature_extractor:
        for param in model_conv.parameters():
            param.requires_grad = False
    else:
        model_conv.conv1.requires_grad_(False)
    num_ftrs = model_conv.fc.in_features
    torch.manual_seed(1)
    head = {k: v.detach().double().numpy().copy()
            for k, v in torch.nn.Linear(num_ftrs, 2).state_dict().items()}
    model_conv.fc = nn.Linear(num_ftrs, 2).double()
    model_conv.fc.load_state_dict({k: lib.tensor(v) for k, v in head.items()})
    model_conv = model_conv.to(device)
    criterion = nn.CrossEntropyLoss()
    if mode == "all":
        params = model_conv.parameters()
    elif fixed_feature_extractor:
        params = model_conv.fc.parameters()
    else:
        params = filter(lambda p: p.requires_grad, model_conv.parameters())
    optimizer_conv = optim.SGD(params, lr=0.1, momentum=0.9)
    exp_lr_scheduler = lr_scheduler.StepLR(optimizer_conv, step_size=2, gamma=0.1)
    trainable = [n for n, p in model_conv.named_parameters() if p.requires_grad]
    with TemporaryDirectory() as tempdir:
        model_conv = train_model(model_conv, criterion, optimizer_conv, exp_lr_scheduler,
                                 num_epochs=4)
    was_training = model_conv.training
    model_conv.eval()
    with lib.no_grad():
        outputs = model_conv(dataloaders['val'][0][0])
    model_conv.train(mode=was_training)
    rec.append([was_training, model_conv.training, model_conv.bn1.training])
    cudnn.benchmark = benchmark
    return rec, trainable, arrays(model_conv.state_dict()), outputs


def test_import_backends_cudnn():
    """``import torch.backends.cudnn as cudnn`` (the tutorial's spelling) finds the switches."""
    space: dict = {}
    exec("import nodegrad.backends.cudnn as cudnn\nimport nodegrad.backends.cuda", space)
    assert space["cudnn"] is ng.backends.cudnn and space["cudnn"].is_available() is False
    before = ng.backends.cudnn.benchmark
    space["cudnn"].benchmark = True
    assert ng.backends.cudnn.benchmark is True
    ng.backends.cudnn.benchmark = before


@pytest.mark.parametrize("mode", ["head", "all", "finetune"])
def test_transfer_learning(mode):
    both(transfer, mode)


def char_rnn_2024(lib):
    """The tutorial's current form: a Dataset of names, ``nn.RNN``, mini-batches of summed
    losses, gradient clipping, SGD; the split and the shuffles are fixed index lists."""
    nn = lib.nn
    n_letters = N_LETTERS - 1

    def letterToIndex(letter):
        return ALL_LETTERS.find(letter)

    def lineToTensor(line):
        tensor = lib.zeros(len(line), 1, n_letters, dtype=lib.float64)
        for li, letter in enumerate(line):
            tensor[li][0][letterToIndex(letter)] = 1
        return tensor

    class NamesDataset(lib.utils.data.Dataset):
        def __init__(self, lines):
            self.data = []
            self.data_tensors = []
            self.labels = []
            self.labels_tensors = []
            labels_set = set()
            for label, names in lines.items():
                for name in names:
                    self.data.append(name)
                    self.data_tensors.append(lineToTensor(name))
                    self.labels.append(label)
                    labels_set.add(label)
            self.labels_uniq = sorted(labels_set)
            for idx in range(len(self.labels)):
                temp_tensor = lib.tensor([self.labels_uniq.index(self.labels[idx])],
                                         dtype=lib.long)
                self.labels_tensors.append(temp_tensor)

        def __len__(self):
            return len(self.data)

        def __getitem__(self, idx):
            data_item = self.data[idx]
            data_label = self.labels[idx]
            data_tensor = self.data_tensors[idx]
            label_tensor = self.labels_tensors[idx]
            return label_tensor, data_tensor, data_label, data_item

    lines = dict(CATEGORY_LINES, Czech=["Novak", "Dvorak"])
    alldata = NamesDataset(lines)
    train_set = lib.utils.data.Subset(alldata, [5, 0, 3, 7, 1, 6])
    test_set = lib.utils.data.Subset(alldata, [2, 4])

    class CharRNN(nn.Module):
        def __init__(self, input_size, hidden_size, output_size):
            super(CharRNN, self).__init__()
            self.rnn = nn.RNN(input_size, hidden_size)
            self.h2o = nn.Linear(hidden_size, output_size)
            self.softmax = nn.LogSoftmax(dim=1)

        def forward(self, line_tensor):
            rnn_out, hidden = self.rnn(line_tensor)
            output = self.h2o(hidden[0])
            output = self.softmax(output)
            return output

    classes = alldata.labels_uniq
    torch.manual_seed(0)
    init = {k: v.detach().double().numpy().copy()
            for k, v in _torch_char_rnn(n_letters, 8, len(classes)).state_dict().items()}
    rnn = CharRNN(n_letters, 8, len(classes)).double()
    rnn.load_state_dict({k: lib.tensor(v) for k, v in init.items()})

    def label_from_output(output, output_labels):
        top_n, top_i = output.topk(1)
        label_i = top_i[0].item()
        return output_labels[label_i], label_i

    shuffles = [[3, 0, 5, 1, 4, 2], [1, 5, 2, 0, 3, 4], [0, 4, 1, 5, 2, 3]]

    def train(rnn, training_data, n_epoch=3, n_batch_size=2, learning_rate=0.2,
              criterion=nn.NLLLoss()):
        current_loss = 0
        all_losses = []
        rnn.train()
        optimizer = lib.optim.SGD(rnn.parameters(), lr=learning_rate)
        for iter in range(1, n_epoch + 1):
            rnn.zero_grad()
            batches = shuffles[iter - 1]  # list(range(len(training_data))); random.shuffle
            batches = np.array_split(batches, len(batches) // n_batch_size)
            for idx, batch in enumerate(batches):
                batch_loss = 0
                for i in batch:
                    (label_tensor, text_tensor, label, text) = training_data[i]
                    output = rnn.forward(text_tensor)
                    loss = criterion(output, label_tensor)
                    batch_loss += loss
                batch_loss.backward()
                nn.utils.clip_grad_norm_(rnn.parameters(), 3)
                optimizer.step()
                optimizer.zero_grad()
                current_loss += batch_loss.item() / len(batch)
            all_losses.append(current_loss / len(batches))
            current_loss = 0
        return all_losses

    all_losses = train(rnn, train_set)
    confusion = lib.zeros(len(classes), len(classes))
    rnn.eval()
    with lib.no_grad():
        for i in range(len(test_set)):
            (label_tensor, text_tensor, label, text) = test_set[i]
            output = rnn(text_tensor)
            guess, guess_i = label_from_output(output, classes)
            label_i = classes.index(label)
            confusion[label_i][guess_i] += 1
    for i in range(len(classes)):
        denom = confusion[i].sum()
        if denom > 0:
            confusion[i] = confusion[i] / denom
    return all_losses, confusion, arrays(rnn.state_dict()), len(alldata), classes


def _torch_char_rnn(n_in, n_hidden, n_out):
    """PyTorch's ``CharRNN`` parameters, in its state-dict order (the initial weights)."""
    m = torch.nn.Module()
    m.rnn = torch.nn.RNN(n_in, n_hidden)
    m.h2o = torch.nn.Linear(n_hidden, n_out)
    return m


def test_classifying_names_current():
    both(char_rnn_2024)
