"""PyTorch's "Extending PyTorch" programs, ported by changing only the imports.

Each program is written once against a library ``lib`` (``torch`` or ``nodegrad``): custom
``autograd.Function`` subclasses (both forward styles, ``needs_input_grad``,
``mark_non_differentiable``, ``mark_dirty``, ``set_materialize_grads``, ``once_differentiable``,
double backward, ``vmap`` by a generated rule or a ``vmap`` staticmethod), ``gradcheck`` and
``gradgradcheck`` as users call them, the "What is torch.nn really?" progression, module and
tensor hooks, buffers and extra state in state dicts, and ``nn.utils.parametrize``. Both runs see
the same data and weights; the records agree in float64 to 1e-10.
"""

import copy
import math

import numpy as np
import pytest

import nodegrad as ng
from _ports import _one_torch_thread, arr, assert_same  # noqa: F401

torch = pytest.importorskip("torch")

TOL = 1e-10
RNG = np.random.default_rng(0)
X = RNG.standard_normal((5, 4))
W = RNG.standard_normal((3, 4))
BIAS = RNG.standard_normal(3)


def both(fn, *args):
    """``fn`` run with PyTorch and with nodegrad; their records must agree."""
    ref, got = fn(torch, *args), fn(ng, *args)
    assert_same(ref, got)
    return got


# 1. the "Extending torch.autograd" Functions ---------------------------------------------------

def functions(lib):
    once_differentiable = lib.autograd.function.once_differentiable

    class LinearFunction(lib.autograd.Function):
        @staticmethod
        def forward(input, weight, bias=None):
            output = input.mm(weight.t())
            if bias is not None:
                output += bias.unsqueeze(0).expand_as(output)
            return output

        @staticmethod
        def setup_context(ctx, inputs, output):
            input, weight, bias = inputs
            ctx.save_for_backward(input, weight, bias)

        @staticmethod
        def backward(ctx, grad_output):
            input, weight, bias = ctx.saved_tensors
            grad_input = grad_weight = grad_bias = None
            if ctx.needs_input_grad[0]:
                grad_input = grad_output.mm(weight)
            if ctx.needs_input_grad[1]:
                grad_weight = grad_output.t().mm(input)
            if bias is not None and ctx.needs_input_grad[2]:
                grad_bias = grad_output.sum(0)
            return grad_input, grad_weight, grad_bias

    class MulConstant(lib.autograd.Function):
        @staticmethod
        def forward(tensor, constant):
            return tensor * constant

        @staticmethod
        def setup_context(ctx, inputs, output):
            _, constant = inputs
            ctx.constant = constant

        @staticmethod
        def backward(ctx, grad_output):
            return grad_output * ctx.constant, None

    class MyExp(lib.autograd.Function):
        @staticmethod
        def forward(ctx, i):
            result = i.exp()
            ctx.save_for_backward(result)
            return result

        @staticmethod
        def backward(ctx, grad_output):
            (result,) = ctx.saved_tensors
            return grad_output * result

    class Sort(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            values, idx = x.sort()
            ctx.mark_non_differentiable(idx)
            ctx.save_for_backward(x, idx)
            return values, idx

        @staticmethod
        def backward(ctx, g1, g2):
            x, idx = ctx.saved_tensors
            grad_input = lib.zeros_like(x)
            grad_input.index_add_(0, idx, g1)
            return grad_input

    class SimpleFunc(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.set_materialize_grads(False)
            ctx.save_for_backward(x)
            return x.clone(), x.clone()

        @staticmethod
        @once_differentiable
        def backward(ctx, g1, g2):
            (x,) = ctx.saved_tensors
            grad_input = lib.zeros_like(x)
            if g1 is not None:
                grad_input += g1
            if g2 is not None:
                grad_input += g2
            return grad_input

    class AddOneInplace(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            x.add_(1)
            ctx.mark_dirty(x)
            return x

        @staticmethod
        def backward(ctx, g):
            return g

    class Scale(lib.autograd.Function):  # non-tensor arguments, keyword defaults, None grads
        @staticmethod
        def forward(ctx, x, factor, mode="mul", offset=None):
            ctx.factor, ctx.mode = factor, mode
            y = x * factor if mode == "mul" else x / factor
            return y if offset is None else y + offset

        @staticmethod
        def backward(ctx, g):
            gx = g * ctx.factor if ctx.mode == "mul" else g / ctx.factor
            return gx, None, None, (g if ctx.needs_input_grad[3] else None)

    rec = {}
    x = lib.tensor(X, requires_grad=True)
    w = lib.tensor(W, requires_grad=True)
    b = lib.tensor(BIAS, requires_grad=True)
    out = LinearFunction.apply(x, w, b)
    (out ** 2).sum().backward()
    rec["linear"] = [arr(out), arr(x.grad), arr(w.grad), arr(b.grad)]
    x2 = lib.tensor(X, requires_grad=True)
    out = LinearFunction.apply(x2, w)
    out.sum().backward()
    rec["linear_no_bias"] = [arr(out), arr(x2.grad)]
    rec["gradcheck_linear"] = lib.autograd.gradcheck(LinearFunction.apply, (x, w, b), eps=1e-6,
                                                     atol=1e-4)
    x.grad = None
    MulConstant.apply(x, 5.5).sum().backward()
    rec["mul_constant"] = arr(x.grad)
    x.grad = None
    (MyExp.apply(x) * x).sum().backward()
    rec["exp"] = arr(x.grad)
    rec["gradcheck_exp"] = lib.autograd.gradcheck(MyExp.apply, x)

    xs = lib.tensor(X[1], requires_grad=True)
    s, idx = Sort.apply(xs)
    rec["sort_requires_grad"] = [idx.requires_grad, s.requires_grad]
    (s * lib.arange(4.0, dtype=lib.float64)).sum().backward()
    rec["sort"] = [arr(s), arr(idx), arr(xs.grad)]

    xm = lib.tensor(X[2], requires_grad=True)
    a1, _ = SimpleFunc.apply(xm)
    a1.sum().backward()  # the second output gets None, not zeros
    rec["materialize"] = arr(xm.grad)

    xi = lib.tensor(X[3], requires_grad=True)
    z = xi.clone()
    z2 = AddOneInplace.apply(z)
    rec["dirty_same"] = z2 is z
    (z2 * z2).sum().backward()
    rec["dirty"] = [arr(z), arr(xi.grad)]

    seen = []

    class Probe(lib.autograd.Function):
        @staticmethod
        def forward(ctx, a, b, k):
            seen.append(ctx.needs_input_grad)
            return a * b * k

        @staticmethod
        def backward(ctx, g):
            seen.append(ctx.needs_input_grad)
            return g, None, None  # wrong on purpose: gradcheck says False

    pa = lib.tensor(X[0], requires_grad=True)
    Probe.apply(pa, lib.tensor(X[1]), 3).sum().backward()
    rec["needs_input_grad"] = [[bool(v) for v in s] for s in seen]
    rec["gradcheck_false"] = lib.autograd.gradcheck(
        lambda t: Probe.apply(t, t, 1.0), (lib.tensor(X[0], requires_grad=True),),
        raise_exception=False)

    x3 = lib.tensor(X[:3, :3], requires_grad=True)
    off = lib.tensor(X[0, :3], requires_grad=True)
    (Scale.apply(x3, 2.5, "div", off) ** 2).sum().backward()
    rec["scale"] = [arr(x3.grad), arr(off.grad)]
    rec["gradcheck_scale"] = lib.autograd.gradcheck(
        lambda a, o: Scale.apply(a, 3.0, "mul", o), (x3, off), eps=1e-6, atol=1e-5, rtol=1e-3,
        nondet_tol=0.0, check_undefined_grad=True, fast_mode=False)
    return rec


def test_extending_autograd_functions():
    got = both(functions)
    assert got["gradcheck_false"] is False and got["gradcheck_linear"] is True


def test_gradcheck_failure_is_a_runtime_error():
    for lib in (torch, ng):
        class Wrong(lib.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x * 2

            @staticmethod
            def backward(ctx, g):
                return g * 3

        with pytest.raises(RuntimeError, match="(?i)jacobian|gradcheck"):
            lib.autograd.gradcheck(Wrong.apply, (lib.tensor(X, requires_grad=True),))


# 2. double backward ("Double Backward with Custom Functions") ---------------------------------

def double_backward(lib):
    class Square(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x ** 2

        @staticmethod
        def backward(ctx, grad_out):
            (x,) = ctx.saved_tensors
            return grad_out * 2 * x

    class Exp(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            result = lib.exp(x)
            ctx.save_for_backward(result)
            return result

        @staticmethod
        def backward(ctx, grad_out):
            (result,) = ctx.saved_tensors
            return result * grad_out

    class Sinh(lib.autograd.Function):  # intermediates returned as outputs, so saved in graph
        @staticmethod
        def forward(ctx, x):
            expx = lib.exp(x)
            expnegx = lib.exp(-x)
            ctx.save_for_backward(expx, expnegx)
            return (expx - expnegx) / 2, expx, expnegx

        @staticmethod
        def backward(ctx, grad_out, _grad_out_exp, _grad_out_negexp):
            expx, expnegx = ctx.saved_tensors
            grad_input = grad_out * (expx + expnegx) / 2
            grad_input += _grad_out_exp * expx
            grad_input -= _grad_out_negexp * expnegx
            return grad_input

    class SinhBad(lib.autograd.Function):  # intermediates on ctx: the second derivative is wrong
        @staticmethod
        def forward(ctx, x):
            ctx.expx = lib.exp(x)
            ctx.expnegx = lib.exp(-x)
            return (ctx.expx - ctx.expnegx) / 2

        @staticmethod
        def backward(ctx, grad_out):
            return grad_out * (ctx.expx + ctx.expnegx) / 2

    class Cube(lib.autograd.Function):
        @staticmethod
        def forward(x):
            return x ** 3, 3 * x ** 2

        @staticmethod
        def setup_context(ctx, inputs, output):
            (x,) = inputs
            _, dx = output
            ctx.save_for_backward(x, dx)

        @staticmethod
        def backward(ctx, grad_output, grad_dx):
            x, dx = ctx.saved_tensors
            return grad_output * dx + grad_dx * 6 * x

    class OnceExp(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = x.exp()
            ctx.save_for_backward(y)
            return y

        @staticmethod
        @lib.autograd.function.once_differentiable
        def backward(ctx, grad_out):
            (y,) = ctx.saved_tensors
            return grad_out * y

    class NumpyExp(lib.autograd.Function):  # computed outside the library: once differentiable
        @staticmethod
        def forward(ctx, x):
            r = lib.from_numpy(np.exp(x.detach().numpy()))
            ctx.save_for_backward(r)
            return r

        @staticmethod
        @lib.autograd.function.once_differentiable
        def backward(ctx, g):
            (r,) = ctx.saved_tensors
            return lib.from_numpy(g.numpy() * r.numpy())

    def sinh(x):
        return Sinh.apply(x)[0]

    rec = {}
    x = lib.tensor(X[:3, :3], requires_grad=True)
    for name, f in [("square", Square.apply), ("exp", Exp.apply), ("sinh", sinh),
                    ("cube", lambda t: Cube.apply(t)[0])]:
        rec[name] = [lib.autograd.gradcheck(f, x), lib.autograd.gradgradcheck(f, x)]
        g, = lib.autograd.grad(f(x).sum(), x, create_graph=True)
        gg, = lib.autograd.grad(g.pow(2).sum(), x)
        rec[name + "_gg"] = arr(gg)
    rec["sinh_bad"] = [lib.autograd.gradcheck(SinhBad.apply, x),
                       lib.autograd.gradgradcheck(SinhBad.apply, x, raise_exception=False)]
    xc = lib.tensor(X[0], requires_grad=True)
    r, dx = Cube.apply(xc)
    (r.sum() + (dx ** 2).sum()).backward()
    rec["cube_both_outputs"] = arr(xc.grad)
    rec["once_gradcheck"] = lib.autograd.gradcheck(OnceExp.apply, x)
    with pytest.raises(RuntimeError):
        lib.autograd.gradgradcheck(OnceExp.apply, x)
    NumpyExp.apply(x).sum().backward()
    rec["numpy_exp"] = [arr(x.grad), lib.autograd.gradcheck(NumpyExp.apply, (x,))]
    return rec


def test_double_backward_functions():
    got = both(double_backward)
    assert got["sinh_bad"] == [True, False]


# 3. autograd.Function under torch.func: generate_vmap_rule and the vmap staticmethod ----------

def func_transforms(lib):
    class MyCube(lib.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(x):
            return x ** 3, 3 * x ** 2

        @staticmethod
        def setup_context(ctx, inputs, output):
            (x,) = inputs
            _, dx = output
            ctx.save_for_backward(x, dx)

        @staticmethod
        def backward(ctx, grad_output, grad_dx):
            x, dx = ctx.saved_tensors
            return grad_output * dx + grad_dx * 6 * x

    class Take(lib.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(x, ind, ind_inv, dim):
            return x.gather(dim, ind)

        @staticmethod
        def setup_context(ctx, inputs, output):
            _, ind, ind_inv, dim = inputs
            ctx.save_for_backward(ind, ind_inv)
            ctx.dim = dim

        @staticmethod
        def backward(ctx, grad_output):
            ind, ind_inv = ctx.saved_tensors
            return Take.apply(grad_output, ind_inv, ind, ctx.dim), None, None, None

    def my_cube(x):
        result, _ = MyCube.apply(x)
        return result

    fn = lib.func
    rec = {}
    x = lib.tensor(X)
    cube_sum = fn.grad(lambda t: my_cube(t).sum())
    rec["vmap"] = arr(fn.vmap(my_cube)(x))
    rec["grad"] = arr(cube_sum(x))
    rec["grad_grad"] = arr(fn.grad(lambda t: cube_sum(t).sum())(x))
    rec["vmap_grad"] = arr(fn.vmap(cube_sum)(x))
    rec["jacrev"] = arr(fn.jacrev(my_cube)(x[0]))
    rec["vmap_jacrev"] = arr(fn.vmap(fn.jacrev(my_cube))(x))
    ind = lib.tensor(np.argsort(X, axis=1))
    ind_inv = lib.tensor(np.argsort(np.argsort(X, axis=1), axis=1))
    weights = lib.arange(4.0, dtype=lib.float64)

    def row(t, i, ii):
        return Take.apply(t, i, ii, 0)

    rec["take_grad"] = arr(fn.grad(lambda t: (Take.apply(t, ind, ind_inv, 1) * weights).sum())(x))
    rec["take_vmap"] = arr(fn.vmap(row)(x, ind, ind_inv))
    rec["take_vmap_grad"] = arr(fn.vmap(fn.grad(lambda t, i, ii: (row(t, i, ii) ** 2).sum()))(
        x, ind, ind_inv))
    return rec


def test_function_generated_vmap_rule():
    both(func_transforms)


CUBE = RNG.standard_normal((2, 3, 4))


def vmap_staticmethod(lib):
    calls = []

    class NumpySort(lib.autograd.Function):
        @staticmethod
        def forward(x, dim):
            idx = lib.tensor(np.argsort(x.detach().numpy(), axis=dim))
            ind_inv = lib.tensor(np.argsort(idx.numpy(), axis=dim))
            return x.gather(dim, idx), idx, ind_inv

        @staticmethod
        def setup_context(ctx, inputs, output):
            _, dim = inputs
            _, ind, ind_inv = output
            ctx.mark_non_differentiable(ind, ind_inv)
            ctx.save_for_backward(ind, ind_inv)
            ctx.dim = dim

        @staticmethod
        def backward(ctx, grad_output, _0, _1):
            _, ind_inv = ctx.saved_tensors
            return grad_output.gather(ctx.dim, ind_inv), None

        @staticmethod
        def vmap(info, in_dims, x, dim):
            calls.append((info.batch_size, info.randomness, in_dims))
            x_bdim, _ = in_dims
            x = x.movedim(x_bdim, 0)
            dim = dim if dim >= 0 else dim + x.dim() - 1
            return NumpySort.apply(x, dim + 1), (0, 0, 0)

    fn = lib.func
    rec = {}
    x = lib.tensor(X)
    rec["vmap"] = [arr(o) for o in fn.vmap(NumpySort.apply, in_dims=(1, None))(x, 0)]
    ramp = lib.arange(5.0, dtype=lib.float64)
    sorted_sum = fn.grad(lambda t: (NumpySort.apply(t, 0)[0] * ramp).sum())
    rec["vmap_grad"] = arr(fn.vmap(sorted_sum, in_dims=1, out_dims=1)(x))
    cubes = fn.grad(lambda t: (fn.vmap(NumpySort.apply, in_dims=(0, None))(t, -1)[0] ** 3).sum())
    rec["grad_vmap"] = arr(cubes(x))
    nested = fn.vmap(fn.vmap(lambda t: NumpySort.apply(t, 0)[0]), randomness="same")
    rec["nested"] = arr(nested(lib.tensor(CUBE)))
    # (where the batch axis sits under grad is the library's choice: in_dims of the first only)
    rec["calls"] = [[c[0], c[1]] for c in calls] + [list(calls[0][2])]
    return rec


def test_function_vmap_staticmethod():
    both(vmap_staticmethod)


def test_function_vmap_staticmethod_errors():
    class Both(ng.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(x):
            return x * 2

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, g):
            return g * 2

        @staticmethod
        def vmap(info, in_dims, x):
            return x * 2, in_dims[0]

    class Good(Both):
        generate_vmap_rule = False

        @staticmethod
        def vmap(info, in_dims, x):
            return x * 2, in_dims[0]

    class BadDims(Good):
        @staticmethod
        def vmap(info, in_dims, x):
            return x * 2, 3

    class NotAPair(Good):
        @staticmethod
        def vmap(info, in_dims, x):
            return x * 2

    x = ng.tensor(X)
    with pytest.raises(RuntimeError, match="generate_vmap_rule=True and a vmap staticmethod"):
        ng.func.vmap(Both.apply)(x)
    with pytest.raises(ValueError, match=r"BadDims.vmap: out_dims\[0\] = 3"):
        ng.func.vmap(BadDims.apply)(x)
    with pytest.raises(TypeError, match=r"NotAPair.vmap: expected it to return \(outputs"):
        ng.func.vmap(NotAPair.apply)(x)
    assert_same(arr(ng.func.vmap(Good.apply, in_dims=1)(ng.tensor(X[:2]))), 2 * X[:2].T)


# 4. a Function whose outputs differ in dtype --------------------------------------------------

def mixed_dtypes(lib):
    seen = []

    class Mixed(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            a, b = x.float() * 2, x * 3
            ctx.save_for_backward(a, b)
            return a, b, 7

        @staticmethod
        def backward(ctx, g1, g2, g3):
            a, b = ctx.saved_tensors
            seen.append([str(t.dtype).removeprefix("torch.") for t in (g1, g2, a, b)])
            return g1.double() * 2 + g2 * b.detach()

    x = lib.tensor(X[0], requires_grad=True)
    a, b, c = Mixed.apply(x)
    (a.double().sum() + (b ** 2).sum()).backward()
    return {"grad": arr(x.grad), "dtypes": [str(t.dtype).removeprefix("torch.") for t in (a, b)],
            "seen": seen, "c": c}


def test_function_outputs_of_two_dtypes():
    got = both(mixed_dtypes)
    assert got["seen"] == [["float32", "float64", "float32", "float64"]]


# 5. "What is torch.nn really?": from manual weights to Sequential and DataLoader ------------

N_PIX = 196  # 14 x 14 images keep it small
XT = RNG.standard_normal((48, N_PIX)) * 0.5
YT = RNG.integers(0, 10, 48)
XV = RNG.standard_normal((24, N_PIX)) * 0.5
YV = RNG.integers(0, 10, 24)
W0 = RNG.standard_normal((N_PIX, 10)) / math.sqrt(N_PIX)


def build_cnn(lib, lam):
    nn = lib.nn
    return nn.Sequential(
        lam(lambda x: x.view(-1, 1, 14, 14)),
        nn.Conv2d(1, 4, kernel_size=3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 10, kernel_size=3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        lam(lambda x: x.view(x.size(0), -1)),
    )


def nn_tutorial(lib):
    nn, F, optim = lib.nn, lib.nn.functional, lib.optim
    data = lib.utils.data
    rec = {}
    x_train, y_train, x_valid, y_valid = map(lib.tensor, (XT, YT, XV, YV))
    n, c = x_train.shape
    bs, lr, epochs = 16, 0.5, 2

    # from scratch: manual weights, updates under no_grad
    weights = lib.tensor(W0)
    weights.requires_grad_()
    bias = lib.zeros(10, requires_grad=True, dtype=lib.float64)

    def log_softmax(x):
        return x - x.exp().sum(-1).log().unsqueeze(-1)

    def model(xb):
        return log_softmax(xb @ weights + bias)

    def nll(input, target):
        return -input[range(target.shape[0]), target].mean()

    def accuracy(out, yb):
        preds = lib.argmax(out, dim=1)
        return (preds == yb).float().mean()

    losses = []
    for _epoch in range(epochs):
        for i in range((n - 1) // bs + 1):
            start_i = i * bs
            end_i = start_i + bs
            xb, yb = x_train[start_i:end_i], y_train[start_i:end_i]
            loss = nll(model(xb), yb)
            loss.backward()
            with lib.no_grad():
                weights -= weights.grad * lr
                bias -= bias.grad * lr
                weights.grad.zero_()
                bias.grad.zero_()
            losses.append(loss.item())
    rec["scratch"] = losses
    rec["accuracy"] = accuracy(model(x_valid), y_valid).item()
    loss_func = F.cross_entropy
    rec["cross_entropy"] = loss_func(x_valid @ weights + bias, y_valid).item()

    # nn.Module with nn.Parameter, updates over model.parameters()
    class Mnist_Logistic(nn.Module):
        def __init__(self):
            super().__init__()
            self.weights = nn.Parameter(lib.tensor(W0))
            self.bias = nn.Parameter(lib.zeros(10, dtype=lib.float64))

        def forward(self, xb):
            return xb @ self.weights + self.bias

    m = Mnist_Logistic()
    losses = []
    for _epoch in range(epochs):
        for i in range((n - 1) // bs + 1):
            xb, yb = x_train[i * bs:i * bs + bs], y_train[i * bs:i * bs + bs]
            loss = loss_func(m(xb), yb)
            loss.backward()
            with lib.no_grad():
                for p in m.parameters():
                    p -= p.grad * lr
                m.zero_grad()
            losses.append(loss.item())
    rec["module"] = losses

    # nn.Linear, optim.SGD, TensorDataset and DataLoader, validation under no_grad
    class Mnist_Linear(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(N_PIX, 10)

        def forward(self, xb):
            return self.lin(xb)

    model = Mnist_Linear().double()
    with lib.no_grad():
        model.lin.weight.copy_(lib.tensor(W0.T))
        model.lin.bias.zero_()
    opt = optim.SGD(model.parameters(), lr=lr)
    train_dl = data.DataLoader(data.TensorDataset(x_train, y_train), batch_size=bs)
    valid_dl = data.DataLoader(data.TensorDataset(x_valid, y_valid), batch_size=bs * 2)
    losses = []
    for _epoch in range(epochs):
        model.train()
        for xb, yb in train_dl:
            loss = loss_func(model(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        model.eval()
        with lib.no_grad():
            valid_loss = sum(loss_func(model(xb), yb) for xb, yb in valid_dl)
        losses.append(float(valid_loss / len(valid_dl)))
    rec["linear_dataloader"] = losses

    # fit() and loss_batch(), a Lambda module, nn.Sequential with view, momentum
    def loss_batch(model, loss_func, xb, yb, opt=None):
        loss = loss_func(model(xb), yb)
        if opt is not None:
            loss.backward()
            opt.step()
            opt.zero_grad()
        return loss.item(), len(xb)

    def fit(epochs, model, loss_func, opt, train_dl, valid_dl):
        hist = []
        for _epoch in range(epochs):
            model.train()
            for xb, yb in train_dl:
                loss_batch(model, loss_func, xb, yb, opt)
            model.eval()
            with lib.no_grad():
                losses, nums = zip(*[loss_batch(model, loss_func, xb, yb) for xb, yb in valid_dl])
            hist.append(np.sum(np.multiply(losses, nums)) / np.sum(nums))
        return hist

    class Lambda(nn.Module):
        def __init__(self, func):
            super().__init__()
            self.func = func

        def forward(self, x):
            return self.func(x)

    torch.manual_seed(0)
    ref = build_cnn(torch, lambda f: torch.nn.Identity()).double()
    init = {k: v.numpy().copy() for k, v in ref.state_dict().items()}
    model = build_cnn(lib, Lambda).to(lib.float64)
    model.load_state_dict({k: lib.tensor(v) for k, v in init.items()})
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rec["cnn"] = fit(epochs, model, loss_func, opt, train_dl, valid_dl)
    rec["cnn_weights"] = [arr(p) for p in model.parameters()]
    return rec


def test_nn_tutorial_progression():
    both(nn_tutorial)


# 6. hooks ---------------------------------------------------------------------------------------

def small_mlp(lib):
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    init = {k: v.numpy().copy() for k, v in ref.double().state_dict().items()}
    nn = lib.nn
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(lib.float64)
    model.load_state_dict({k: lib.tensor(v) for k, v in init.items()})
    return model


def hooks(lib):
    model = small_mlp(lib)
    rec, log = {}, []

    def pre(mod, args, kwargs):
        log.append(["pre", type(mod).__name__, len(args), sorted(kwargs)])
        return (args[0] * 2,), kwargs

    def pre_first(mod, args):
        log.append(["pre_first", type(mod).__name__])

    def fwd(mod, args, kwargs, output):
        log.append(["fwd", type(mod).__name__])
        return output + 1

    def fwd_first(mod, args, output):
        log.append(["fwd_first"])
        return output * 3

    handles = [model[0].register_forward_pre_hook(pre, with_kwargs=True),
               model[0].register_forward_pre_hook(pre_first, prepend=True),
               model[2].register_forward_hook(fwd, with_kwargs=True),
               model[2].register_forward_hook(fwd_first, prepend=True)]
    x = lib.tensor(X[:4, :3], requires_grad=True)
    rec["hooked_out"] = arr(model(x))
    rec["log"] = log
    grads_seen = []

    def bwd(mod, grad_input, grad_output):
        grads_seen.append([arr(g) for g in grad_input if g is not None])
        grads_seen.append([arr(g) for g in grad_output])
        return (grad_input[0] * 0.5,)

    def bwd_pre(mod, grad_output):
        grads_seen.append([arr(g) for g in grad_output])
        return (grad_output[0] * 10,)

    handles += [model[1].register_full_backward_hook(bwd),
                model[1].register_full_backward_pre_hook(bwd_pre)]
    model(x).sum().backward()
    rec["grads_seen"] = grads_seen
    rec["grads"] = [arr(x.grad)] + [arr(p.grad) for p in model.parameters()]
    for h in handles:
        h.remove()
    handles[0].remove()  # removing twice does nothing
    rec["plain_out"] = arr(model(x))

    # Tensor.register_hook: changing, observing, removing
    x.grad = None
    y = x * 2
    hy = y.register_hook(lambda g: g * 3)
    y.register_hook(lambda g: g + 1)
    (y ** 2).sum().backward()
    rec["tensor_hooks"] = arr(x.grad)
    x.grad = None
    hy.remove()
    (x * 2).pow(2).sum().backward()
    rec["after_remove"] = arr(x.grad)
    x.grad = None
    hx = x.register_hook(lambda g: g.clamp(min=0))
    (x ** 3 - x).sum().backward()
    rec["leaf_hook"] = arr(x.grad)
    hx.remove()
    x.grad = None
    seen = []
    y = x.exp()
    y.register_hook(lambda g: seen.append(g.sum().item()))
    y.retain_grad()
    (y * x).sum().backward()
    rec["observed"] = [seen, arr(y.grad)]

    # a forward hook that runs even when forward raises
    class Boom(lib.nn.Module):
        def forward(self, x):
            raise ValueError("boom")

    calls = []
    boom = Boom()
    boom.register_forward_hook(lambda m, i, o: calls.append("always"), always_call=True)
    with pytest.raises(ValueError):
        boom(x)
    rec["always_call"] = calls
    return rec


def test_module_and_tensor_hooks():
    both(hooks)


def optimizer_in_backward(lib):
    """The tutorial that fuses the optimizer step into backward with post-accumulate hooks."""
    model = small_mlp(lib)
    optimizer_dict = {p: lib.optim.Adam([p], lr=0.05, foreach=False) for p in model.parameters()}

    def optimizer_hook(parameter) -> None:
        optimizer_dict[parameter].step()
        optimizer_dict[parameter].zero_grad()

    handles = [p.register_post_accumulate_grad_hook(optimizer_hook) for p in model.parameters()]
    x = lib.tensor(X[:4, :3])
    losses = []
    for _ in range(4):
        loss = (model(x) ** 2).mean()
        loss.backward()
        losses.append(loss.item())
    for h in handles:
        h.remove()
    return {"loss": losses, "w": [arr(p) for p in model.parameters()],
            "grads": [p.grad is None for p in model.parameters()]}


def test_optimizer_step_in_backward_hooks():
    both(optimizer_in_backward)


# 7. buffers, extra state and state-dict hooks --------------------------------------------------

def module_state(lib):
    nn = lib.nn

    class Running(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3, dtype=lib.float64)
            self.register_buffer("mean", lib.zeros(3, dtype=lib.float64))
            self.register_buffer("scratch", lib.ones(3, dtype=lib.float64), persistent=False)
            self.register_buffer("nothing", None)
            self.note = "v1"
            self.calls = 0

        def forward(self, x):
            if self.training:
                with lib.no_grad():
                    self.mean.mul_(0.9).add_(0.1 * x.mean(0))
            self.calls += 1
            return self.lin(x - self.mean) * self.scratch

        def get_extra_state(self):
            return {"note": self.note, "calls": self.calls}

        def set_extra_state(self, state):
            self.note = state["note"]
            self.calls = state["calls"]

    rec = {}
    m = Running()
    with lib.no_grad():
        m.lin.weight.copy_(lib.tensor(np.eye(3) + 0.1))
        m.lin.bias.fill_(0.5)
    x = lib.tensor(X[:4, :3])
    m(x)
    m(x)
    sd = m.state_dict()
    rec["keys"] = list(sd.keys())
    rec["buffers"] = [n for n, _ in m.named_buffers()]
    rec["extra"] = sd["_extra_state"]
    m2 = Running()
    m2.note = "fresh"
    res = m2.load_state_dict(sd)
    rec["incompatible"] = [list(res.missing_keys), list(res.unexpected_keys)]
    rec["loaded"] = [m2.note, m2.calls, arr(m2.mean)]
    m2.eval()
    rec["out"] = arr(m2(x))
    sd2 = dict(sd)
    sd2["bogus"] = lib.zeros(1)
    del sd2["lin.bias"], sd2["_extra_state"]
    res = m2.load_state_dict(sd2, strict=False)
    rec["non_strict"] = [list(res.missing_keys), list(res.unexpected_keys)]
    with pytest.raises(RuntimeError):
        m2.load_state_dict(sd2)
    plain = nn.Linear(3, 3, dtype=lib.float64)  # no set_extra_state: the entry is unexpected
    res = plain.load_state_dict({k.removeprefix("lin."): v for k, v in sd.items()}, strict=False)
    rec["unexpected_extra"] = [list(res.missing_keys), list(res.unexpected_keys)]

    log = []

    def sd_pre(module, prefix, keep_vars):
        log.append(["state_dict_pre", prefix, keep_vars])

    def load_post(module, incompatible_keys):
        log.append(["load_post", len(incompatible_keys.missing_keys),
                    len(incompatible_keys.unexpected_keys)])

    def load_pre(module, state_dict, prefix, local_metadata, strict, missing_keys,
                 unexpected_keys, error_msgs):
        log.append(["load_pre", prefix, strict])

    handles = [m.register_state_dict_pre_hook(sd_pre),
               m.register_load_state_dict_post_hook(load_post),
               m.lin.register_load_state_dict_pre_hook(load_pre)]
    sd3 = m.state_dict(prefix="model.", keep_vars=True)
    rec["prefixed"] = list(sd3.keys())
    rec["keep_vars"] = [sd3["model.lin.weight"].requires_grad, sd["lin.weight"].requires_grad]
    m.load_state_dict(sd, strict=True)
    rec["log"] = log
    for h in handles:
        h.remove()
    return rec


def test_buffers_extra_state_and_state_dict_hooks():
    got = both(module_state)
    assert got["extra"] == {"note": "v1", "calls": 2}
    assert got["keys"] == ["mean", "_extra_state", "lin.weight", "lin.bias"]


def test_extra_state_of_submodules_round_trips():
    class Counter(ng.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = ng.nn.Linear(2, 2)
            self.seen = 0

        def get_extra_state(self):
            return self.seen

        def set_extra_state(self, state):
            self.seen = state

    outer = ng.nn.Sequential(Counter(), ng.nn.ReLU(), Counter())
    outer[0].seen, outer[2].seen = 3, 5
    sd = outer.state_dict()
    assert list(sd) == ["0._extra_state", "0.lin.weight", "0.lin.bias", "2._extra_state",
                        "2.lin.weight", "2.lin.bias"]  # a module's own state before its children
    fresh = ng.nn.Sequential(Counter(), ng.nn.ReLU(), Counter())
    fresh.load_state_dict(sd)
    assert (fresh[0].seen, fresh[2].seen) == (3, 5)
    del sd["2._extra_state"]
    res = fresh.load_state_dict(sd, strict=False)
    assert res.missing_keys == ["2._extra_state"] and res.unexpected_keys == []
    with pytest.raises(RuntimeError, match="missing: 2._extra_state"):
        fresh.load_state_dict(sd)
    with pytest.raises(RuntimeError, match="get_extra_state"):
        ng.nn.Linear(2, 2).get_extra_state()


def renamed_checkpoint(lib):
    """Loading a checkpoint with old key names through a load pre-hook, and a state-dict
    post-hook adding a version entry per block."""
    nn = lib.nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(2, 2, dtype=lib.float64)
            self.register_load_state_dict_pre_hook(self._rename)
            self.register_state_dict_post_hook(self._version)

        @staticmethod
        def _rename(module, state_dict, prefix, local_metadata, strict, missing_keys,
                    unexpected_keys, error_msgs):
            for old in list(state_dict):
                if old.startswith(prefix + "fc."):
                    state_dict[prefix + "proj." + old[len(prefix) + 3:]] = state_dict.pop(old)

        @staticmethod
        def _version(module, state_dict, prefix, local_metadata):
            state_dict[prefix + "version"] = lib.tensor(2)

    model = nn.Sequential(Block(), Block())
    old = {f"{i}.fc.{k}": lib.full(shape, i + 1.0, dtype=lib.float64)
           for i in range(2) for k, shape in (("weight", (2, 2)), ("bias", (2,)))}
    res = model.load_state_dict(old)
    sd = model.state_dict()
    with pytest.raises(RuntimeError):
        model.load_state_dict(sd)  # the version entries are unexpected
    return {"result": str(res), "keys": list(sd.keys()), "weights": [arr(p) for p in
                                                                      model.parameters()]}


def test_renamed_checkpoint_and_state_dict_post_hook_order():
    got = both(renamed_checkpoint)
    assert got["result"] == "<All keys matched successfully>"


def module_structure(lib):
    nn = lib.nn
    rec = {}

    def init_weights(mod):
        if isinstance(mod, nn.Linear):
            nn.init.constant_(mod.weight, 0.25)
            mod.bias.data.fill_(0.01)

    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(),
                        nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)))
    rec["apply_returns_self"] = net.apply(init_weights) is net
    rec["applied"] = [arr(p) for p in net.parameters()]
    rec["named_children"] = [n for n, _ in net.named_children()]
    rec["named_modules_prefix"] = [n for n, _ in net.named_modules(prefix="net")]

    shared = nn.Linear(2, 2)
    seq = nn.Sequential(shared, nn.ReLU(), shared)
    rec["named_modules"] = [n for n, _ in seq.named_modules()]
    rec["named_modules_dup"] = [n for n, _ in seq.named_modules(remove_duplicate=False)]
    rec["named_parameters"] = [n for n, _ in seq.named_parameters()]
    rec["named_parameters_dup"] = [n for n, _ in seq.named_parameters(remove_duplicate=False)]
    rec["n_parameters"] = len(list(seq.parameters()))
    rec["state_dict_shared"] = list(seq.state_dict().keys())

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5, 3, dtype=lib.float64)
            self.out = nn.Linear(3, 5, bias=False, dtype=lib.float64)
            self.out.weight = self.emb.weight

        def forward(self, idx):
            return self.out(self.emb(idx))

    t = Tied()
    with lib.no_grad():
        t.emb.weight.copy_(lib.tensor(np.arange(15.0).reshape(5, 3) / 10))
    t(lib.tensor([0, 3, 4])).logsumexp(-1).sum().backward()
    rec["tied"] = [arr(t.emb.weight.grad), t.out.weight is t.emb.weight,
                   [n for n, _ in t.named_parameters()], list(t.state_dict().keys())]

    m = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Sequential(nn.Linear(2, 1)))
    sd = {k: v for k, v in m.state_dict().items() if "bias" not in k and "running_var" not in k}
    for k in ("1.junk", "zz", "2.0.x.y", "0.weight.t", "2.junk"):
        sd[k] = lib.zeros(1)
    res = m.load_state_dict(dict(reversed(list(sd.items()))), strict=False)
    rec["key_order"] = [res.missing_keys, res.unexpected_keys]  # by module, as PyTorch lists

    m = nn.Module()
    m.add_module("a", nn.Linear(2, 2))
    m.register_module("b", nn.ReLU())
    m.register_parameter("p", None)
    m.register_buffer("buf", lib.zeros(2))
    rec["registered"] = [[n for n, _ in m.named_children()], [n for n, _ in m.named_parameters()],
                         list(m.state_dict().keys()), m.p is None]
    return rec


def test_module_structure_apply_and_sharing():
    both(module_structure)


# 8. nn.utils.parametrize ------------------------------------------------------------------------

A = RNG.standard_normal((3, 3)) * 0.3
WIDE = RNG.standard_normal((3, 4))


def parametrize(lib):
    nn = lib.nn
    P = nn.utils.parametrize

    class Symmetric(nn.Module):
        def forward(self, X):
            return X.triu() + X.triu(1).transpose(-1, -2)

    class SymmetricInv(Symmetric):
        def right_inverse(self, A):
            return A.triu()

    class Skew(nn.Module):
        def forward(self, X):
            A = X.triu(1)
            return A - A.transpose(-1, -2)

    class MatrixExponential(nn.Module):
        def forward(self, X):
            return lib.matrix_exp(X)

    def layer():
        lin = nn.Linear(3, 3, dtype=lib.float64)
        with lib.no_grad():
            lin.weight.copy_(lib.tensor(A))
            lin.bias.fill_(0.1)
        return lin

    rec = {}
    x = lib.tensor(X[:4, :3])
    lin = layer()
    P.register_parametrization(lin, "weight", Symmetric())
    rec["symmetric"] = arr(lin.weight)
    rec["is_parametrized"] = [P.is_parametrized(lin), P.is_parametrized(lin, "weight"),
                              P.is_parametrized(lin, "bias")]
    rec["names"] = [[n for n, _ in lin.named_parameters()], list(lin.state_dict().keys()),
                    type(lin).__name__, P.type_before_parametrizations(lin).__name__]
    rec["original"] = arr(lin.parametrizations.weight.original)
    opt = lib.optim.SGD(lin.parameters(), lr=0.1)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = (lin(x) ** 2).sum()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    rec["train"] = [losses, arr(lin.weight)]

    lin = layer()
    P.register_parametrization(lin, "weight", Skew())
    P.register_parametrization(lin, "weight", MatrixExponential())
    rec["orthogonal"] = [arr(lin.weight.T @ lin.weight), len(lin.parametrizations.weight)]
    with P.cached():
        out = lin(x) + lin(x)
    out.sum().backward()
    rec["cached"] = [arr(out), arr(lin.parametrizations.weight.original.grad)]

    lin = layer()
    P.register_parametrization(lin, "weight", SymmetricInv())
    lin.weight = lib.tensor(A + A.T)
    rec["right_inverse"] = [arr(lin.weight), arr(lin.parametrizations.weight.original)]
    copied = copy.deepcopy(lin)
    rec["deepcopy"] = [P.is_parametrized(copied), arr(copied.weight)]
    other = layer()
    P.register_parametrization(other, "weight", SymmetricInv())
    other.load_state_dict(lin.state_dict())
    rec["state_dict"] = arr(other.weight)

    for leave in (True, False):
        lin = layer()
        P.register_parametrization(lin, "weight", Symmetric())
        P.remove_parametrizations(lin, "weight", leave_parametrized=leave)
        rec[f"removed_{leave}"] = [arr(lin.weight), P.is_parametrized(lin),
                                   isinstance(lin.weight, nn.Parameter),
                                   [n for n, _ in lin.named_parameters()]]

    class Flatten(nn.Module):
        def forward(self, X):
            return X.reshape(-1)

    lin = nn.Linear(3, 2)
    P.register_parametrization(lin, "weight", Flatten(), unsafe=True)
    rec["unsafe"] = list(lin.weight.shape)
    with pytest.raises(ValueError):
        P.register_parametrization(nn.Linear(3, 2), "weight", Flatten())
    return rec


def test_parametrize_tutorial():
    both(parametrize)


def parametrizations(lib):
    nn = lib.nn
    from_p = nn.utils.parametrizations
    rec = {}
    x = lib.tensor(X)

    def wide():
        lin = nn.Linear(4, 3, dtype=lib.float64)
        with lib.no_grad():
            lin.weight.copy_(lib.tensor(WIDE))
            lin.bias.fill_(0.2)
        return lin

    ref_state = {}
    for orthogonal_map in ("matrix_exp", "cayley", "householder"):
        lin = wide()
        from_p.orthogonal(lin, orthogonal_map=orthogonal_map)
        if lib is torch:  # the wide case completes its base with random columns: shared
            ref_state[orthogonal_map] = {k: arr(v) for k, v in lin.state_dict().items()}
        else:
            lin.load_state_dict({k: ng.tensor(v) for k, v in
                                 REF_ORTHOGONAL[orthogonal_map].items()})
        (lin(x) ** 2).sum().backward()
        rec[orthogonal_map] = [arr(lin.weight), arr(lin.weight @ lin.weight.T),
                               arr(lin.parametrizations.weight.original.grad)]
    if lib is torch:
        REF_ORTHOGONAL.update(ref_state)

    lin = wide()
    from_p.weight_norm(lin, name="weight", dim=0)
    (lin(x) ** 2).sum().backward()
    orig = lin.parametrizations.weight
    rec["weight_norm"] = [sorted(n for n, _ in lin.named_parameters()), arr(lin.weight),
                          arr(orig.original0), arr(orig.original0.grad), arr(orig.original1.grad)]

    torch.manual_seed(0)  # the power iteration's start vectors: PyTorch's, through the state
    ref = torch.nn.utils.parametrizations.spectral_norm(torch.nn.Linear(4, 3).double(),
                                                        n_power_iterations=2)
    lin = from_p.spectral_norm(nn.Linear(4, 3, dtype=lib.float64), n_power_iterations=2)
    lin.load_state_dict({k: lib.tensor(arr(v)) for k, v in ref.state_dict().items()})
    outs = []
    for _ in range(3):
        y = lin(x)
        (y ** 2).sum().backward()
        outs.append(arr(y))
    lin.eval()
    rec["spectral_norm"] = [sorted(lin.state_dict().keys()), outs,
                            arr(lin.parametrizations.weight.original.grad), arr(lin(x)),
                            float(np.linalg.svd(arr(lin.weight))[1].max())]
    return rec


REF_ORTHOGONAL: dict = {}


def test_parametrizations_orthogonal_weight_and_spectral_norm():
    got = both(parametrizations)
    assert_same(got["spectral_norm"][-1], 1.0, 1e-6)


# 9. Python custom operators (torch.library.custom_op) ------------------------------------------

def custom_ops(lib):
    """The "Python Custom Operators" tutorial: a NumPy kernel made an op with a fake function,
    a backward, an in-place variant, keyword-only arguments and a vmap rule."""
    Tensor = lib.Tensor
    ns = "nodegrad_ports_" + lib.__name__  # op names are global: one namespace per library

    @lib.library.custom_op(f"{ns}::numpy_sin", mutates_args=())
    def numpy_sin(x: Tensor) -> Tensor:
        x_np = x.cpu().numpy()
        y_np = np.sin(x_np)
        return lib.from_numpy(y_np).to(device=x.device)

    @numpy_sin.register_fake
    def _(x):
        return lib.empty_like(x)

    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)

    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * x.cos()

    numpy_sin.register_autograd(backward, setup_context=setup_context)

    @lib.library.custom_op(f"{ns}::numpy_sin_", mutates_args={"out"}, device_types="cpu")
    def numpy_sin_(x: Tensor, out: Tensor) -> None:
        out_np = out.numpy()
        np.sin(x.numpy(), out=out_np)

    @lib.library.custom_op(f"{ns}::scale", mutates_args=())
    def scale(x: Tensor, k: float, *, shift: float = 0.0) -> Tensor:
        return lib.from_numpy(x.numpy() * k + shift)

    def scale_setup(ctx, inputs, keyword_only_inputs, output):
        ctx.k = inputs[1]
        ctx.shift = keyword_only_inputs["shift"]

    def scale_backward(ctx, g):
        return g * ctx.k, None

    scale.register_autograd(scale_backward, setup_context=scale_setup)

    @scale.register_vmap
    def _(info, in_dims, x, k, shift=0.0):
        return scale(x, k, shift=shift), in_dims[0]

    @lib.library.custom_op(f"{ns}::no_backward", mutates_args=())
    def no_backward(x: Tensor) -> Tensor:
        return lib.from_numpy(np.cos(x.detach().numpy()))

    no_backward.register_fake(lambda x: lib.empty(2))  # wrong on purpose

    rec = {}
    x = lib.tensor(X, requires_grad=True)
    y = numpy_sin(x)
    y.pow(2).sum().backward()
    rec["sin"] = [arr(y), arr(x.grad), lib.autograd.gradcheck(numpy_sin, (x,)),
                  lib.autograd.gradgradcheck(numpy_sin, (x,))]
    rec["opcheck"] = lib.library.opcheck(numpy_sin, (x,))
    rec["via_ops"] = [arr(getattr(lib.ops, ns).numpy_sin(x)),
                      arr(getattr(lib.ops, ns).numpy_sin.default(x))]
    out = lib.empty(5, 4, dtype=lib.float64)
    rec["inplace"] = [numpy_sin_(lib.tensor(X), out), arr(out),
                      lib.library.opcheck(numpy_sin_, (lib.tensor(X), out))]
    x.grad = None
    y = scale(x, 3.0, shift=1.0)
    y.sum().backward()
    rec["scale"] = [arr(y), arr(x.grad),
                    arr(lib.func.vmap(lambda t: scale(t, 2.0, shift=0.5))(lib.tensor(X)))]
    y = no_backward(lib.tensor(X, requires_grad=True))
    with pytest.raises(RuntimeError, match="no autograd formula was registered"):
        y.sum().backward()
    checks = lib.library.opcheck(no_backward, (lib.tensor(X, requires_grad=True),),
                                 raise_exception=False)
    rec["failing_checks"] = sorted(k for k, v in checks.items() if v != "SUCCESS")
    return rec


def test_python_custom_operators():
    got = both(custom_ops)
    assert got["failing_checks"] == ["test_aot_dispatch_dynamic", "test_faketensor"]


def test_custom_op_errors_and_checks():
    lib = ng.library
    with pytest.raises(ValueError, match="namespace::op_name"):
        lib.custom_op("no_namespace", lambda x: x, mutates_args=())
    with pytest.raises(TypeError, match="mutates_args must be a tuple"):
        lib.custom_op("nodegrad_ports::bad", lambda x: x, mutates_args="x")
    with pytest.raises(ValueError, match="'y', which is not an argument"):
        lib.custom_op("nodegrad_ports::bad", lambda x: x, mutates_args=("y",))
    with pytest.raises(ValueError, match="the name of nodegrad.ops.linalg"):
        lib.custom_op("linalg::mine", lambda x: x, mutates_args=())

    @lib.custom_op("nodegrad_ports::sneaky", mutates_args=())
    def sneaky(x: ng.Tensor) -> ng.Tensor:
        x.numpy()[0, 0] = 100.0  # changes its input without saying so
        return x.clone()

    sneaky.register_fake(lambda x: ng.empty_like(x))
    assert ng.ops.nodegrad_ports.sneaky is sneaky
    with pytest.raises(AttributeError, match="make it with custom_op"):
        ng.ops.nodegrad_ports.missing  # noqa: B018
    with pytest.raises(lib.OpCheckError, match="'x' was changed in place"):
        lib.opcheck(sneaky, (ng.tensor(X),))

    @lib.custom_op("nodegrad_ports::gpu_only", mutates_args=(), device_types="cuda")
    def gpu_only(x: ng.Tensor) -> ng.Tensor:
        return x * 2

    with pytest.raises(NotImplementedError, match="no kernel for device 'cpu'"):
        gpu_only(ng.tensor(X))
    lib.register_kernel("nodegrad_ports::gpu_only", "cpu", lambda x: x * 3)
    assert_same(arr(gpu_only(ng.tensor(X))), 3 * X)
    with pytest.raises(NotImplementedError, match="register_vmap"):
        ng.func.vmap(gpu_only)(ng.tensor(X))


# 10. torch.nn.modules paths: custom losses on _Loss, _BatchNorm checks, _pair, global hooks -----

def nn_modules_paths(lib):
    nn, F = lib.nn, lib.nn.functional
    from_loss, from_bn, from_utils = nn.modules.loss, nn.modules.batchnorm, nn.modules.utils

    class FocalLoss(from_loss._Loss):
        def __init__(self, gamma=2.0, reduction="mean"):
            super().__init__(reduction=reduction)
            self.gamma = gamma

        def forward(self, input, target):
            logp = F.log_softmax(input, -1).gather(1, target[:, None]).squeeze(1)
            loss = -(1 - logp.exp()) ** self.gamma * logp
            return loss.mean() if self.reduction == "mean" else loss.sum()

    class Patchify(nn.Module):
        def __init__(self, patch):
            super().__init__()
            self.patch = from_utils._pair(patch)

        def forward(self, x):
            ph, pw = self.patch
            b, c, h, w = x.shape
            x = x.reshape(b, c, h // ph, ph, w // pw, pw).permute(0, 2, 4, 1, 3, 5)
            return x.reshape(b, (h // ph) * (w // pw), c * ph * pw)

    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(8, 6), torch.nn.BatchNorm1d(4),
                              torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(24, 3)).double()
    init = {k: arr(v) for k, v in ref.state_dict().items()}
    model = nn.Sequential(Patchify(2), nn.Linear(8, 6), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(24, 3)).to(lib.float64)
    model.load_state_dict({k: lib.tensor(v) for k, v in init.items()})
    decay, no_decay = [], []  # the usual split: no weight decay on norms and biases
    for m in model.modules():
        for name, p in m.named_parameters(recurse=False):
            (no_decay if isinstance(m, from_bn._BatchNorm) or name == "bias" else decay).append(p)
    opt = lib.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                           {"params": no_decay, "weight_decay": 0.0}], lr=0.01)
    shapes = []
    handles = [nn.modules.module.register_module_forward_hook(
                   lambda m, args, out: shapes.append([type(m).__name__, list(out.shape)])),
               nn.modules.module.register_module_forward_pre_hook(
                   lambda m, args: shapes.append(["pre", type(m).__name__]))]
    x, y = lib.tensor(IMAGES), lib.tensor(np.array([0, 2, 1]))
    crit = FocalLoss(gamma=2.0)
    losses = []
    for step in range(3):
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step == 0:
            for h in handles:
                h.remove()
    return {"loss": losses, "shapes": shapes, "sizes": [len(decay), len(no_decay)],
            "w": [arr(p) for p in model.parameters()], "pair": [from_utils._pair(3),
                                                                 from_utils._triple((1, 2, 3))]}


IMAGES = RNG.standard_normal((3, 2, 4, 4))


def test_nn_modules_paths_custom_loss_and_global_hooks():
    got = both(nn_modules_paths)
    assert len(got["shapes"]) == 16  # one step: 7 layers and the loss, a pre-hook and a hook each


def test_module_share_memory_moves_parameters_and_buffers_as_torch():
    m = ng.nn.BatchNorm1d(3)
    before = {k: v.detach().numpy().copy() for k, v in m.state_dict().items()}
    assert not m.weight.is_shared()
    assert m.share_memory() is m
    assert all(t.is_shared() for t in [*m.parameters(), *m.buffers()])
    assert all(np.array_equal(v.detach().numpy(), before[k]) for k, v in m.state_dict().items())
