"""Classic PyTorch programs of 2017-2021, ported by changing only the imports.

Each program is written once against a library ``lib`` (``torch`` or ``nodegrad``) as the widely
copied repositories and tutorials of that era wrote it: pytorch/examples' MNIST (2018 and
current), word-level language model, DCGAN and fast neural style; Variable-era autograd with
updates through ``.data``; optimisers written against the deprecated scalar-first
``add_(-lr, grad)`` / ``addcmul_(1 - b2, g, g)`` forms (PyTorch 0.4's SGD, RAdam's code); the
neural-style, seq2seq-attention, DQN and chatbot tutorials; DDPG's soft updates; the ImageNet
example's checkpoint dicts; yunjey's residual network; mean teacher's EMA; a hand-written
spectral norm under Lookahead. Both runs start from PyTorch's seeded weights and see the same
data (float64 where the program allows), so every loss, prediction and weight must agree.
"""

# the sources' own spellings (super(Cls, self), unused loop names, "%" formatting) are kept
# ruff: noqa: UP004, UP008, UP031, UP032, UP034, B007, B904, E721

from __future__ import annotations

import copy
import io
import math
import os
import random
import re
import shutil
from collections import defaultdict, namedtuple
import warnings

import numpy as np
import pytest

import nodegrad as ng
from _ports import (_one_torch_thread, accuracy, arr, arrays, assert_same,  # noqa: F401
                    draw, float64_one_thread)

torch = pytest.importorskip("torch")

TOL = 1e-10


def both(fn, *args, tol: float = TOL, **kw):
    """``fn`` run with PyTorch and with nodegrad (the deprecation warnings both give for the
    sources' old spellings silenced); their records must agree."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref, got = fn(torch, *args, **kw), fn(ng, *args, **kw)
    assert_same(got, ref, tol)
    return got


def seeded_init(build, *args) -> dict[str, np.ndarray]:
    """``build(torch, *args)``'s seeded initial state as float64 NumPy arrays."""
    torch.manual_seed(0)
    return {k: v.detach().numpy().astype(np.float64) if v.dtype.is_floating_point
            else v.numpy().copy() for k, v in build(torch, *args).state_dict().items()}


def load(lib, model, init: dict, dtype: str = "float64"):
    """``model`` in ``dtype`` holding ``init`` (its keys must be PyTorch's)."""
    model = model.to(getattr(lib, dtype))
    assert list(model.state_dict()) == list(init)
    model.load_state_dict({k: lib.tensor(v).to(getattr(lib, dtype)) if v.dtype.kind == "f"
                           else lib.tensor(v) for k, v in init.items()})
    return model


def variable(lib):
    """``Variable`` where the program imports it (``from torch.autograd import Variable``)."""
    return lib.autograd.Variable


# --- 1. pytorch/examples mnist, 2018 (Variable, .data.max, size_average=False) ---------------

def mnist_net(lib, p: float = 0.0):
    nn, F = lib.nn, lib.nn.functional

    class Net(nn.Module):
        def __init__(self):
            super(Net, self).__init__()
            self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
            self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
            self.conv2_drop = nn.Dropout2d(p)  # the example's default 0.5: off, masks differ
            self.fc1 = nn.Linear(320, 50)
            self.fc2 = nn.Linear(50, 10)

        def forward(self, x):
            x = F.relu(F.max_pool2d(self.conv1(x), 2))
            x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
            x = x.view(-1, 320)
            x = F.relu(self.fc1(x))
            x = F.dropout(x, p=p, training=self.training)
            x = self.fc2(x)
            return F.log_softmax(x, dim=1)

    return Net()


MNIST_X = draw(24, 1, 28, 28, seed=1)
MNIST_Y = draw(24, seed=2, kind="randint", high=10)


def mnist_2018(lib):
    F, optim = lib.nn.functional, lib.optim
    Variable = variable(lib)
    model = load(lib, mnist_net(lib), seeded_init(mnist_net))
    data_all = lib.tensor(MNIST_X)
    target_all = lib.tensor(MNIST_Y)
    train_loader = lib.utils.data.DataLoader(
        lib.utils.data.TensorDataset(data_all[:16], target_all[:16]), batch_size=4,
        shuffle=False)
    test_loader = lib.utils.data.DataLoader(
        lib.utils.data.TensorDataset(data_all[16:], target_all[16:]), batch_size=4)
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    rec = {"loss": [], "test_loss": [], "correct": [], "pred": []}

    def train(epoch):
        model.train()
        for batch_idx, (data, target) in enumerate(train_loader):
            if lib.cuda.is_available() and False:
                data, target = data.cuda(), target.cuda()
            data, target = Variable(data), Variable(target)
            optimizer.zero_grad()
            output = model(data)
            loss = F.nll_loss(output, target)
            loss.backward()
            optimizer.step()
            if batch_idx % 2 == 0:
                rec["loss"].append(loss.item())

    def test():
        model.eval()
        test_loss = 0
        correct = 0
        for data, target in test_loader:
            data, target = Variable(data, volatile=True), Variable(target)
            output = model(data)
            test_loss += F.nll_loss(output, target, size_average=False).item()  # sum up
            pred = output.data.max(1, keepdim=True)[1]  # get the index of the max log-prob
            correct += pred.eq(target.data.view_as(pred)).cpu().sum()
            rec["pred"].append(pred.numpy().copy())
        test_loss /= len(test_loader.dataset)
        rec["test_loss"].append(test_loss)
        rec["correct"].append(float(100. * correct / len(test_loader.dataset)))
        rec["dtype"] = str(correct.dtype).removeprefix("torch.")

    for epoch in range(1, 3):
        train(epoch)
        test()
    rec["w"] = arrays(model.state_dict())
    return rec


def test_mnist_2018_variable_volatile_data_max():
    both(mnist_2018)


# --- 2. pytorch/examples mnist, current (Adadelta, StepLR, argmax, torch.save) ---------------

def mnist_current(lib):
    F, optim = lib.nn.functional, lib.optim
    StepLR = optim.lr_scheduler.StepLR
    device = lib.device("cuda" if lib.cuda.is_available() and False else "cpu")
    model = load(lib, mnist_net(lib), seeded_init(mnist_net)).to(device)
    ds = lib.utils.data.TensorDataset(lib.tensor(MNIST_X), lib.tensor(MNIST_Y))
    train_loader = lib.utils.data.DataLoader(ds, batch_size=8)
    test_loader = lib.utils.data.DataLoader(ds, batch_size=12)
    optimizer = optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.7)
    rec = {"loss": [], "test": [], "lr": []}
    for epoch in range(1, 4):
        model.train()
        for batch_idx, (data, target) in enumerate(train_loader):
            data, target = data.to(device), target.to(device)
            optimizer.zero_grad()
            output = model(data)
            loss = F.nll_loss(output, target)
            loss.backward()
            optimizer.step()
            rec["loss"].append(loss.item())
        model.eval()
        test_loss = 0
        correct = 0
        with lib.no_grad():
            for data, target in test_loader:
                data, target = data.to(device), target.to(device)
                output = model(data)
                test_loss += F.nll_loss(output, target, reduction='sum').item()
                pred = output.argmax(dim=1, keepdim=True)
                correct += pred.eq(target.view_as(pred)).sum().item()
        test_loss /= len(test_loader.dataset)
        rec["test"].append([test_loss, correct, 100. * correct / len(test_loader.dataset)])
        scheduler.step()
        rec["lr"].append(scheduler.get_last_lr())
    buf = io.BytesIO()
    lib.save(model.state_dict(), buf)
    buf.seek(0)
    again = load(lib, mnist_net(lib), seeded_init(mnist_net))
    again.load_state_dict(lib.load(buf))
    rec["w"] = arrays(again.state_dict())
    rec["opt"] = [[k, arr(v)] for s in optimizer.state_dict()["state"].values()
                  for k, v in s.items()][:6]
    return rec


def test_mnist_current_adadelta_steplr_save_load():
    both(mnist_current)


# --- 3. pytorch/examples word_language_model, 2017-2019 ---------------------------------------

TEXT = """the cat sat on the mat <eos>
the dog sat on the log <eos>
a cat and a dog met on the mat <eos>
the log was on the mat and the cat sat on the dog <eos>
""" * 3


def word_lm(lib, rnn_type: str = "LSTM", tie_weights: bool = True):
    nn = lib.nn
    Variable = variable(lib)

    class Dictionary(object):
        def __init__(self):
            self.word2idx = {}
            self.idx2word = []

        def add_word(self, word):
            if word not in self.word2idx:
                self.idx2word.append(word)
                self.word2idx[word] = len(self.idx2word) - 1
            return self.word2idx[word]

        def __len__(self):
            return len(self.idx2word)

    class Corpus(object):
        def __init__(self, text):
            self.dictionary = Dictionary()
            self.train = self.tokenize(text)

        def tokenize(self, text):
            """Tokenizes a text file (2017: an uninitialised LongTensor filled word by word)."""
            tokens = 0
            for line in text.splitlines():
                words = line.split() + ['<eos>']
                tokens += len(words)
                for word in words:
                    self.dictionary.add_word(word)
            ids = lib.LongTensor(tokens)
            token = 0
            for line in text.splitlines():
                words = line.split() + ['<eos>']
                for word in words:
                    ids[token] = self.dictionary.word2idx[word]
                    token += 1
            return ids

    class RNNModel(nn.Module):
        """Container module with an encoder, a recurrent module, and a decoder."""

        def __init__(self, rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.5, tie_weights=False):
            super(RNNModel, self).__init__()
            self.drop = nn.Dropout(dropout)
            self.encoder = nn.Embedding(ntoken, ninp)
            if rnn_type in ['LSTM', 'GRU']:
                self.rnn = getattr(nn, rnn_type)(ninp, nhid, nlayers, dropout=dropout)
            else:
                try:
                    nonlinearity = {'RNN_TANH': 'tanh', 'RNN_RELU': 'relu'}[rnn_type]
                except KeyError:
                    raise ValueError("""An invalid option for `--model` was supplied,
                                     options are ['LSTM', 'GRU', 'RNN_TANH' or 'RNN_RELU']""")
                self.rnn = nn.RNN(ninp, nhid, nlayers, nonlinearity=nonlinearity,
                                  dropout=dropout)
            self.decoder = nn.Linear(nhid, ntoken)
            if tie_weights:
                if nhid != ninp:
                    raise ValueError('When using the tied flag, nhid must be equal to emsize')
                self.decoder.weight = self.encoder.weight
            self.init_weights()
            self.rnn_type = rnn_type
            self.nhid = nhid
            self.nlayers = nlayers

        def init_weights(self):
            initrange = 0.1
            self.encoder.weight.data.uniform_(-initrange, initrange)
            self.decoder.bias.data.zero_()
            self.decoder.weight.data.uniform_(-initrange, initrange)

        def forward(self, input, hidden):
            emb = self.drop(self.encoder(input))
            output, hidden = self.rnn(emb, hidden)
            output = self.drop(output)
            decoded = self.decoder(output.view(output.size(0)*output.size(1), output.size(2)))
            return decoded.view(output.size(0), output.size(1), decoded.size(1)), hidden

        def init_hidden(self, bsz):
            weight = next(self.parameters()).data
            if self.rnn_type == 'LSTM':
                return (Variable(weight.new(self.nlayers, bsz, self.nhid).zero_()),
                        Variable(weight.new(self.nlayers, bsz, self.nhid).zero_()))
            else:
                return Variable(weight.new(self.nlayers, bsz, self.nhid).zero_())

    return Corpus, RNNModel


def word_language_model(lib, rnn_type: str, tie_weights: bool):
    nn = lib.nn
    Variable = variable(lib)
    Corpus, RNNModel = word_lm(lib)
    corpus = Corpus(TEXT)
    bptt, clip, batch_size, eval_batch_size = 5, 0.25, 4, 2

    def batchify(data, bsz):
        # Work out how cleanly we can divide the dataset into bsz parts.
        nbatch = data.size(0) // bsz
        # Trim off any extra elements that wouldn't cleanly fit (remainders).
        data = data.narrow(0, 0, nbatch * bsz)
        # Evenly divide the data across the bsz batches.
        data = data.view(bsz, -1).t().contiguous()
        return data

    def repackage_hidden(h):
        """Wraps hidden states in new Variables, to detach them from their history."""
        if type(h) == Variable or isinstance(h, lib.Tensor):
            return Variable(h.data)
        else:
            return tuple(repackage_hidden(v) for v in h)

    def get_batch(source, i, evaluation=False):
        seq_len = min(bptt, len(source) - 1 - i)
        data = Variable(source[i:i+seq_len], volatile=evaluation)
        target = Variable(source[i+1:i+1+seq_len].view(-1))
        return data, target

    ntokens = len(corpus.dictionary)
    n = len(corpus.train)
    train_data = batchify(corpus.train[:n * 3 // 4], batch_size)
    val_data = batchify(corpus.train[n * 3 // 4:], eval_batch_size)

    def build(lib_):
        return word_lm(lib_)[1](rnn_type, ntokens, 8, 8, 2, dropout=0.0, tie_weights=tie_weights)

    model = load(lib, build(lib), seeded_init(build))
    criterion = nn.CrossEntropyLoss()

    def evaluate(data_source):
        # Turn on evaluation mode which disables dropout.
        model.eval()
        total_loss = 0
        hidden = model.init_hidden(eval_batch_size)
        for i in range(0, data_source.size(0) - 1, bptt):
            data, targets = get_batch(data_source, i, evaluation=True)
            output, hidden = model(data, hidden)
            output_flat = output.view(-1, ntokens)
            total_loss += len(data) * criterion(output_flat, targets).data
            hidden = repackage_hidden(hidden)
        return total_loss.item() / len(data_source)

    rec = {"loss": [], "val": [], "lr": []}
    lr = 20
    best_val_loss = None

    def train():
        # Turn on training mode which enables dropout.
        model.train()
        total_loss = 0
        hidden = model.init_hidden(batch_size)
        for batch, i in enumerate(range(0, train_data.size(0) - 1, bptt)):
            data, targets = get_batch(train_data, i)
            # Starting each batch, we detach the hidden state from how it was previously
            # produced. If we didn't, the model would try backpropagating all the way to
            # start of the dataset.
            hidden = repackage_hidden(hidden)
            model.zero_grad()
            output, hidden = model(data, hidden)
            loss = criterion(output.view(-1, ntokens), targets)
            loss.backward()

            # `clip_grad_norm` helps prevent the exploding gradient problem in RNNs / LSTMs.
            lib.nn.utils.clip_grad_norm_(model.parameters(), clip)
            for p in model.parameters():
                p.data.add_(-lr, p.grad.data)

            total_loss += loss.data
            rec["loss"].append(total_loss.item())

    for epoch in range(1, 4):
        train()
        val_loss = evaluate(val_data)
        rec["val"].append(val_loss)
        if not best_val_loss or val_loss < best_val_loss:
            best_val_loss = val_loss
        else:
            # Anneal the learning rate if no improvement has been seen in the validation set.
            lr /= 4.0
        rec["lr"].append(lr)
    rec["w"] = arrays(model.state_dict())
    rec["tied"] = model.decoder.weight is model.encoder.weight
    rec["n_params"] = len(list(model.parameters()))
    return rec


@pytest.mark.parametrize("rnn_type, tie_weights", [("LSTM", True), ("GRU", False),
                                                   ("RNN_TANH", True)])
def test_word_language_model_2017(rnn_type, tie_weights):
    both(word_language_model, rnn_type, tie_weights)


# --- 4. Variable-era autograd: updates through .data, FloatTensor / DoubleTensor -------------

def two_layer_variable(lib, dtype_name: str):
    Variable = variable(lib)
    dtype = getattr(lib, dtype_name)
    N, D_in, H, D_out = 16, 10, 12, 3
    x = Variable(lib.from_numpy(draw(N, D_in, seed=3)).type(dtype), requires_grad=False)
    y = Variable(lib.from_numpy(draw(N, D_out, seed=4)).type(dtype), requires_grad=False)
    w1 = Variable(lib.from_numpy(draw(D_in, H, seed=5)).type(dtype), requires_grad=True)
    w2 = Variable(lib.from_numpy(draw(H, D_out, seed=6)).type(dtype), requires_grad=True)
    learning_rate = 1e-3
    rec = {"loss": [], "type": [x.type(), w1.data.type()]}
    for t in range(30):
        y_pred = x.mm(w1).clamp(min=0).mm(w2)
        loss = (y_pred - y).pow(2).sum()
        rec["loss"].append(loss.data.cpu().numpy().copy())
        loss.backward()
        w1.data -= learning_rate * w1.grad.data
        w2.data -= learning_rate * w2.grad.data
        w1.grad.data.zero_()
        w2.grad.data.zero_()
    rec["w"] = [w1.data.cpu().numpy().copy(), w2.data.numpy().copy()]
    rec["leaf"] = [w1.is_leaf, w1.requires_grad, w1.grad.abs().sum().item()]
    rec["type"] = [s.removeprefix("torch.").removeprefix("nodegrad.") for s in rec["type"]]
    return rec


@pytest.mark.parametrize("dtype_name, tol", [("DoubleTensor", TOL), ("FloatTensor", 1e-5)])
def test_variable_two_layer_net_updates_through_data(dtype_name, tol):
    both(two_layer_variable, dtype_name, tol=tol)


# --- 5. optimisers written 2018-2019 style: legacy SGD source, RAdam's official code --------

class _Legacy:
    """The optimisers as their sources wrote them, against ``lib``."""

    def __init__(self, lib):
        import math

        Optimizer = lib.optim.Optimizer
        required = object()

        class SGD(Optimizer):
            """PyTorch 0.4's SGD source, as custom optimisers (LARS and others) copied it."""

            def __init__(self, params, lr=required, momentum=0, dampening=0,
                         weight_decay=0, nesterov=False):
                if lr is not required and lr < 0.0:
                    raise ValueError("Invalid learning rate: {}".format(lr))
                defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                                weight_decay=weight_decay, nesterov=nesterov)
                if nesterov and (momentum <= 0 or dampening != 0):
                    raise ValueError("Nesterov momentum requires a momentum and zero dampening")
                super(SGD, self).__init__(params, defaults)

            def __setstate__(self, state):
                super(SGD, self).__setstate__(state)
                for group in self.param_groups:
                    group.setdefault('nesterov', False)

            def step(self, closure=None):
                loss = None
                if closure is not None:
                    loss = closure()

                for group in self.param_groups:
                    weight_decay = group['weight_decay']
                    momentum = group['momentum']
                    dampening = group['dampening']
                    nesterov = group['nesterov']

                    for p in group['params']:
                        if p.grad is None:
                            continue
                        d_p = p.grad.data
                        if weight_decay != 0:
                            d_p.add_(weight_decay, p.data)
                        if momentum != 0:
                            param_state = self.state[p]
                            if 'momentum_buffer' not in param_state:
                                buf = param_state['momentum_buffer'] = lib.zeros_like(p.data)
                                buf.mul_(momentum).add_(d_p)
                            else:
                                buf = param_state['momentum_buffer']
                                buf.mul_(momentum).add_(1 - dampening, d_p)
                            if nesterov:
                                d_p = d_p.add(momentum, buf)
                            else:
                                d_p = buf

                        p.data.add_(-group['lr'], d_p)

                return loss

        class RAdam(Optimizer):
            """LiyuanLiu/RAdam's radam.py (2019)."""

            def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                         degenerated_to_sgd=True):
                if not 0.0 <= lr:
                    raise ValueError("Invalid learning rate: {}".format(lr))
                if not 0.0 <= eps:
                    raise ValueError("Invalid epsilon value: {}".format(eps))
                if not 0.0 <= betas[0] < 1.0:
                    raise ValueError("Invalid beta parameter at index 0: {}".format(betas[0]))
                if not 0.0 <= betas[1] < 1.0:
                    raise ValueError("Invalid beta parameter at index 1: {}".format(betas[1]))

                self.degenerated_to_sgd = degenerated_to_sgd
                if isinstance(params, (list, tuple)) and len(params) > 0 and \
                        isinstance(params[0], dict):
                    for param in params:
                        if 'betas' in param and (param['betas'][0] != betas[0] or
                                                 param['betas'][1] != betas[1]):
                            param['buffer'] = [[None, None, None] for _ in range(10)]
                defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                buffer=[[None, None, None] for _ in range(10)])
                super(RAdam, self).__init__(params, defaults)

            def __setstate__(self, state):
                super(RAdam, self).__setstate__(state)

            def step(self, closure=None):
                loss = None
                if closure is not None:
                    loss = closure()

                for group in self.param_groups:

                    for p in group['params']:
                        if p.grad is None:
                            continue
                        grad = p.grad.data.float()
                        if grad.is_sparse:
                            raise RuntimeError('RAdam does not support sparse gradients')

                        p_data_fp32 = p.data.float()

                        state = self.state[p]

                        if len(state) == 0:
                            state['step'] = 0
                            state['exp_avg'] = lib.zeros_like(p_data_fp32)
                            state['exp_avg_sq'] = lib.zeros_like(p_data_fp32)
                        else:
                            state['exp_avg'] = state['exp_avg'].type_as(p_data_fp32)
                            state['exp_avg_sq'] = state['exp_avg_sq'].type_as(p_data_fp32)

                        exp_avg, exp_avg_sq = state['exp_avg'], state['exp_avg_sq']
                        beta1, beta2 = group['betas']

                        exp_avg_sq.mul_(beta2).addcmul_(1 - beta2, grad, grad)
                        exp_avg.mul_(beta1).add_(1 - beta1, grad)

                        state['step'] += 1
                        buffered = group['buffer'][int(state['step'] % 10)]
                        if state['step'] == buffered[0]:
                            N_sma, step_size = buffered[1], buffered[2]
                        else:
                            buffered[0] = state['step']
                            beta2_t = beta2 ** state['step']
                            N_sma_max = 2 / (1 - beta2) - 1
                            N_sma = N_sma_max - 2 * state['step'] * beta2_t / (1 - beta2_t)
                            buffered[1] = N_sma

                            # more conservative since it's an approximated value
                            if N_sma >= 5:
                                step_size = math.sqrt(
                                    (1 - beta2_t) * (N_sma - 4) / (N_sma_max - 4) * (N_sma - 2)
                                    / N_sma * N_sma_max / (N_sma_max - 2)) / \
                                    (1 - beta1 ** state['step'])
                            elif self.degenerated_to_sgd:
                                step_size = 1.0 / (1 - beta1 ** state['step'])
                            else:
                                step_size = -1
                            buffered[2] = step_size

                        # more conservative since it's an approximated value
                        if N_sma >= 5:
                            if group['weight_decay'] != 0:
                                p_data_fp32.add_(-group['weight_decay'] * group['lr'],
                                                 p_data_fp32)
                            denom = exp_avg_sq.sqrt().add_(group['eps'])
                            p_data_fp32.addcdiv_(-step_size * group['lr'], exp_avg, denom)
                            p.data.copy_(p_data_fp32)
                        elif step_size > 0:
                            if group['weight_decay'] != 0:
                                p_data_fp32.add_(-group['weight_decay'] * group['lr'],
                                                 p_data_fp32)
                            p_data_fp32.add_(-step_size * group['lr'], exp_avg)
                            p.data.copy_(p_data_fp32)

                return loss

        self.SGD, self.RAdam = SGD, RAdam


def mlp(lib):
    nn = lib.nn
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


XS, YS = draw(32, 6, seed=7), draw(32, seed=8, kind="randint", high=3)


def legacy_optimizer(lib, which: str, dtype: str, resume_at: int | None = 12):
    opts = _Legacy(lib)
    model = load(lib, mlp(lib), seeded_init(mlp), dtype)
    x, y = lib.tensor(XS).to(getattr(lib, dtype)), lib.tensor(YS)

    def make(params):
        if which == "sgd":
            return opts.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True)
        return opts.RAdam(params, lr=0.05, weight_decay=1e-3)

    optimizer = make(model.parameters())
    rec = {"loss": []}
    for step in range(25):
        if step == resume_at:  # a checkpoint of the optimizer: rebuilt, then loaded
            saved = optimizer.state_dict()
            optimizer = make(model.parameters())
            optimizer.load_state_dict(saved)
        optimizer.zero_grad()
        loss = lib.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        rec["loss"].append(loss.item())
    rec["w"] = arrays(model.state_dict())
    state = optimizer.state_dict()["state"]
    rec["state"] = [{k: (v if isinstance(v, int) else arr(v)) for k, v in s.items()}
                    for s in state.values()]
    if which == "radam":
        rec["buffer"] = [b[:2] for b in optimizer.param_groups[0]["buffer"]]
    return rec


@pytest.mark.parametrize("which", ["sgd", "radam"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_legacy_optimizer_sources_scalar_first_overloads(which, dtype):
    # RAdam's source updates a float32 copy (p.data.float()) of float64 weights too
    tol = TOL if (dtype, which) == ("float64", "sgd") else 1e-5
    got = both(legacy_optimizer, which, dtype, tol=tol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_same(legacy_optimizer(ng, which, dtype, resume_at=None), got, 0.0)


# --- 6. pytorch/examples dcgan, 2017 (weights_init, reused resize_ buffers, Variable) --------

def dcgan_nets(lib, ngpu: int = 1):
    nn = lib.nn
    nz, ngf, ndf, nc = 4, 4, 4, 1

    # custom weights initialization called on netG and netD
    def weights_init(m):
        classname = m.__class__.__name__
        if classname.find('Conv') != -1:
            m.weight.data.normal_(0.0, 0.02)
        elif classname.find('BatchNorm') != -1:
            m.weight.data.normal_(1.0, 0.02)
            m.bias.data.fill_(0)

    class _netG(nn.Module):
        def __init__(self, ngpu):
            super(_netG, self).__init__()
            self.ngpu = ngpu
            self.main = nn.Sequential(
                # input is Z, going into a convolution
                nn.ConvTranspose2d(nz, ngf * 2, 4, 1, 0, bias=False),
                nn.BatchNorm2d(ngf * 2),
                nn.ReLU(True),
                # state size. (ngf*2) x 4 x 4
                nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ngf),
                nn.ReLU(True),
                # state size. (ngf) x 8 x 8
                nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),
                nn.Tanh()
                # state size. (nc) x 16 x 16
            )

        def forward(self, input):
            if isinstance(input.data, lib.cuda.FloatTensor) and self.ngpu > 1:
                output = nn.parallel.data_parallel(self.main, input, range(self.ngpu))
            else:
                output = self.main(input)
            return output

    class _netD(nn.Module):
        def __init__(self, ngpu):
            super(_netD, self).__init__()
            self.ngpu = ngpu
            self.main = nn.Sequential(
                # input is (nc) x 16 x 16
                nn.Conv2d(nc, ndf, 4, 2, 1, bias=False),
                nn.LeakyReLU(0.2, inplace=True),
                # state size. (ndf) x 8 x 8
                nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ndf * 2),
                nn.LeakyReLU(0.2, inplace=True),
                # state size. (ndf*2) x 4 x 4
                nn.Conv2d(ndf * 2, 1, 4, 1, 0, bias=False),
                nn.Sigmoid()
            )

        def forward(self, input):
            if isinstance(input.data, lib.cuda.FloatTensor) and self.ngpu > 1:
                output = nn.parallel.data_parallel(self.main, input, range(self.ngpu))
            else:
                output = self.main(input)

            return output.view(-1, 1).squeeze(1)

    netG = _netG(ngpu)
    netG.apply(weights_init)
    netD = _netD(ngpu)
    netD.apply(weights_init)
    return netG, netD, nz


DCGAN_REAL = draw(3, 4, 1, 16, 16, seed=9).clip(-1, 1)
DCGAN_Z = draw(3, 4, 4, 1, 1, seed=10)


def dcgan_2017(lib):
    nn, optim = lib.nn, lib.optim
    Variable = variable(lib)
    torch.manual_seed(0)
    init = [{k: v.detach().numpy().copy() for k, v in n.state_dict().items()}
            for n in dcgan_nets(torch)[:2]]
    netG, netD, nz = dcgan_nets(lib)
    netG.load_state_dict({k: lib.tensor(v) for k, v in init[0].items()})
    netD.load_state_dict({k: lib.tensor(v) for k, v in init[1].items()})
    criterion = nn.BCELoss()
    batchSize = 4
    input = lib.FloatTensor(batchSize, 1, 16, 16)
    noise = lib.FloatTensor(batchSize, nz, 1, 1)
    label = lib.FloatTensor(batchSize)
    real_label = 1
    fake_label = 0
    optimizerD = optim.Adam(netD.parameters(), lr=0.0002, betas=(0.5, 0.999))
    optimizerG = optim.Adam(netG.parameters(), lr=0.0002, betas=(0.5, 0.999))
    rec = {"errD": [], "errG": [], "D_x": [], "D_G_z": []}
    for i, data in enumerate(DCGAN_REAL):
        ############################
        # (1) Update D network: maximize log(D(x)) + log(1 - D(G(z)))
        ###########################
        # train with real
        netD.zero_grad()
        real_cpu = lib.from_numpy(data).float()
        batch_size = real_cpu.size(0)
        input.resize_as_(real_cpu).copy_(real_cpu)
        label.resize_(batch_size).fill_(real_label)
        inputv = Variable(input)
        labelv = Variable(label)

        output = netD(inputv)
        errD_real = criterion(output, labelv)
        errD_real.backward()
        D_x = output.data.mean()

        # train with fake (the script's noise.normal_(0, 1), drawn once for both libraries)
        noise.resize_(batch_size, nz, 1, 1).copy_(lib.from_numpy(DCGAN_Z[i]))
        noisev = Variable(noise)
        fake = netG(noisev)
        labelv = Variable(label.fill_(fake_label))
        output = netD(fake.detach())
        errD_fake = criterion(output, labelv)
        errD_fake.backward()
        D_G_z1 = output.data.mean()
        errD = errD_real + errD_fake
        optimizerD.step()

        ############################
        # (2) Update G network: maximize log(D(G(z)))
        ###########################
        netG.zero_grad()
        labelv = Variable(label.fill_(real_label))  # fake labels are real for generator cost
        output = netD(fake)
        errG = criterion(output, labelv)
        errG.backward()
        D_G_z2 = output.data.mean()
        optimizerG.step()
        rec["errD"].append(errD.item())
        rec["errG"].append(errG.item())
        rec["D_x"].append(float(D_x))
        rec["D_G_z"].append([float(D_G_z1), float(D_G_z2)])
    rec["G"] = arrays(netG.state_dict())
    rec["D"] = arrays(netD.state_dict())
    rec["fake"] = fake.data.cpu().numpy().copy()
    return rec


def test_dcgan_2017_weights_init_resize_buffers():
    both(dcgan_2017, tol=1e-5)


def test_dcgan_weights_init_draws_in_place():
    """``m.weight.data.normal_(0.0, 0.02)`` changes the Parameter itself (still a leaf that
    requires grad), BatchNorm's bias ``.data.fill_(0)`` too; statistics as PyTorch's."""
    ng.manual_seed(0)
    netG, netD, _ = dcgan_nets(ng)
    ids = [id(p) for p in netG.parameters()]
    w = ng.nn.ConvTranspose2d(64, 64, 4, bias=False).weight
    w.data.normal_(0.0, 0.02)
    assert abs(w.mean().item()) < 2e-3 and abs(w.std().item() - 0.02) < 1e-3
    bn = netG.main[1]
    assert (bn.bias.numpy() == 0).all() and abs(bn.weight.mean().item() - 1) < 0.05
    assert [id(p) for p in netG.parameters()] == ids
    assert all(p.is_leaf and p.requires_grad and p.grad is None for p in netG.parameters())
    assert not isinstance(ng.zeros(2), ng.cuda.FloatTensor)
    assert isinstance(ng.zeros(2), ng.FloatTensor)
    assert repr(ng.cuda.FloatTensor) == "<class 'nodegrad.cuda.FloatTensor'>"


# --- 7. neural style transfer tutorial (2018): gram matrix, L-BFGS, input_img.data.clamp_ ----

def style_cnn(lib):
    nn = lib.nn
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2, 2), nn.Conv2d(4, 6, 3, padding=1),
                         nn.ReLU(inplace=True), nn.Conv2d(6, 6, 3, padding=1),
                         nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
                         nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(8, 8, 3, padding=1))


STYLE_IMGS = draw(3, 1, 3, 16, 16, seed=11, kind="rand")


def neural_style(lib):
    nn, F, optim = lib.nn, lib.nn.functional, lib.optim
    device = lib.device("cuda" if lib.cuda.is_available() and False else "cpu")
    cnn = load(lib, style_cnn(lib), seeded_init(style_cnn)).to(device).eval()
    cnn_normalization_mean = lib.tensor([0.485, 0.456, 0.406]).to(device)
    cnn_normalization_std = lib.tensor([0.229, 0.224, 0.225]).to(device)
    style_img, content_img, input_img = (lib.tensor(a) for a in STYLE_IMGS)

    def gram_matrix(input):
        a, b, c, d = input.size()  # a=batch size(=1)
        # b=number of feature maps
        # (c,d)=dimensions of a f. map (N=c*d)
        features = input.view(a * b, c * d)  # resise F_XL into \hat F_XL
        G = lib.mm(features, features.t())  # compute the gram product
        # we 'normalize' the values of the gram matrix
        # by dividing by the number of element in each feature maps.
        return G.div(a * b * c * d)

    class ContentLoss(nn.Module):
        def __init__(self, target,):
            super(ContentLoss, self).__init__()
            # we 'detach' the target content from the tree used
            # to dynamically compute the gradient: this is a stated value,
            # not a variable. Otherwise the forward method of the criterion
            # will throw an error.
            self.target = target.detach()

        def forward(self, input):
            self.loss = F.mse_loss(input, self.target)
            return input

    class StyleLoss(nn.Module):
        def __init__(self, target_feature):
            super(StyleLoss, self).__init__()
            self.target = gram_matrix(target_feature).detach()

        def forward(self, input):
            G = gram_matrix(input)
            self.loss = F.mse_loss(G, self.target)
            return input

    # create a module to normalize input image so we can easily put it in a
    # nn.Sequential
    class Normalization(nn.Module):
        def __init__(self, mean, std):
            super(Normalization, self).__init__()
            # .view the mean and std to make them [C x 1 x 1] so that they can
            # directly work with image Tensor of shape [B x C x H x W].
            # B is batch size. C is number of channels. H is height and W is width.
            self.mean = lib.tensor(mean).view(-1, 1, 1)
            self.std = lib.tensor(std).view(-1, 1, 1)

        def forward(self, img):
            # normalize img
            return (img - self.mean) / self.std

    content_layers_default = ['conv_4']
    style_layers_default = ['conv_1', 'conv_2', 'conv_3', 'conv_4', 'conv_5']

    def get_style_model_and_losses(cnn, normalization_mean, normalization_std,
                                   style_img, content_img,
                                   content_layers=content_layers_default,
                                   style_layers=style_layers_default):
        cnn = copy.deepcopy(cnn)

        # normalization module
        normalization = Normalization(normalization_mean, normalization_std).to(device)

        # just in order to have an iterable access to or list of content/syle
        # losses
        content_losses = []
        style_losses = []

        # assuming that cnn is a nn.Sequential, so we make a new nn.Sequential
        # to put in modules that are supposed to be activated sequentially
        model = nn.Sequential(normalization)

        i = 0  # increment every time we see a conv
        for layer in cnn.children():
            if isinstance(layer, nn.Conv2d):
                i += 1
                name = 'conv_{}'.format(i)
            elif isinstance(layer, nn.ReLU):
                name = 'relu_{}'.format(i)
                # The in-place version doesn't play very nicely with the ContentLoss
                # and StyleLoss we insert below. So we replace with out-of-place
                # ones here.
                layer = nn.ReLU(inplace=False)
            elif isinstance(layer, nn.MaxPool2d):
                name = 'pool_{}'.format(i)
            elif isinstance(layer, nn.BatchNorm2d):
                name = 'bn_{}'.format(i)
            else:
                raise RuntimeError('Unrecognized layer: {}'.format(layer.__class__.__name__))

            model.add_module(name, layer)

            if name in content_layers:
                # add content loss:
                target = model(content_img).detach()
                content_loss = ContentLoss(target)
                model.add_module("content_loss_{}".format(i), content_loss)
                content_losses.append(content_loss)

            if name in style_layers:
                # add style loss:
                target_feature = model(style_img).detach()
                style_loss = StyleLoss(target_feature)
                model.add_module("style_loss_{}".format(i), style_loss)
                style_losses.append(style_loss)

        # now we trim off the layers after the last content and style losses
        for i in range(len(model) - 1, -1, -1):
            if isinstance(model[i], ContentLoss) or isinstance(model[i], StyleLoss):
                break

        model = model[:(i + 1)]

        return model, style_losses, content_losses

    def get_input_optimizer(input_img):
        # this line to show that input is a parameter that requires a gradient
        optimizer = optim.LBFGS([input_img.requires_grad_()])
        return optimizer

    rec = {"style": [], "content": []}

    def run_style_transfer(cnn, normalization_mean, normalization_std,
                           content_img, style_img, input_img, num_steps=300,
                           style_weight=1000000, content_weight=1):
        """Run the style transfer."""
        model, style_losses, content_losses = get_style_model_and_losses(
            cnn, normalization_mean, normalization_std, style_img, content_img)
        optimizer = get_input_optimizer(input_img)
        rec["names"] = [n for n, _ in model.named_children()]

        run = [0]
        while run[0] <= num_steps:

            def closure():
                # correct the values of updated input image
                input_img.data.clamp_(0, 1)

                optimizer.zero_grad()
                model(input_img)
                style_score = 0
                content_score = 0

                for sl in style_losses:
                    style_score += sl.loss
                for cl in content_losses:
                    content_score += cl.loss

                style_score *= style_weight
                content_score *= content_weight

                loss = style_score + content_score
                loss.backward()

                run[0] += 1
                rec["style"].append(style_score.item())
                rec["content"].append(content_score.item())
                return style_score + content_score

            optimizer.step(closure)

        # a last correction...
        input_img.data.clamp_(0, 1)

        return input_img

    output = run_style_transfer(cnn, cnn_normalization_mean, cnn_normalization_std,
                                content_img, style_img, input_img, num_steps=25)
    rec["out"] = output.detach().cpu().numpy().copy()
    rec["same"] = output is input_img
    rec["range"] = [output.min().item(), output.max().item()]
    return rec


@pytest.mark.usefixtures("float64_one_thread")  # the tutorial's tensor(list) in float64
def test_neural_style_lbfgs_clamps_through_data():
    both(neural_style)


# --- 8. seq2seq translation with attention (2017 tutorial; its 2018 evaluate) ----------------

PAIRS = [("je suis calme", "i am calm"), ("il est grand", "he is tall"),
         ("nous sommes ici", "we are here"), ("elle est calme", "she is calm"),
         ("je suis ici", "i am here"), ("il est ici", "he is here")]


def seq2seq_classes(lib, MAX_LENGTH: int):
    """The 2017 tutorial's encoder and attention decoder, against ``lib``."""
    nn, F = lib.nn, lib.nn.functional
    Variable = variable(lib)
    use_cuda = lib.cuda.is_available() and False

    class EncoderRNN(nn.Module):
        def __init__(self, input_size, hidden_size, n_layers=1):
            super(EncoderRNN, self).__init__()
            self.n_layers = n_layers
            self.hidden_size = hidden_size

            self.embedding = nn.Embedding(input_size, hidden_size)
            self.gru = nn.GRU(hidden_size, hidden_size)

        def forward(self, input, hidden):
            embedded = self.embedding(input).view(1, 1, -1)
            output = embedded
            for i in range(self.n_layers):
                output, hidden = self.gru(output, hidden)
            return output, hidden

        def initHidden(self):
            result = Variable(lib.zeros(1, 1, self.hidden_size))
            if use_cuda:
                return result.cuda()
            else:
                return result

    class AttnDecoderRNN(nn.Module):
        def __init__(self, hidden_size, output_size, n_layers=1, dropout_p=0.1,
                     max_length=MAX_LENGTH):
            super(AttnDecoderRNN, self).__init__()
            self.hidden_size = hidden_size
            self.output_size = output_size
            self.n_layers = n_layers
            self.dropout_p = dropout_p
            self.max_length = max_length

            self.embedding = nn.Embedding(self.output_size, self.hidden_size)
            self.attn = nn.Linear(self.hidden_size * 2, self.max_length)
            self.attn_combine = nn.Linear(self.hidden_size * 2, self.hidden_size)
            self.dropout = nn.Dropout(self.dropout_p)
            self.gru = nn.GRU(self.hidden_size, self.hidden_size)
            self.out = nn.Linear(self.hidden_size, self.output_size)

        def forward(self, input, hidden, encoder_output, encoder_outputs):
            embedded = self.embedding(input).view(1, 1, -1)
            embedded = self.dropout(embedded)

            attn_weights = F.softmax(
                self.attn(lib.cat((embedded[0], hidden[0]), 1)))
            attn_applied = lib.bmm(attn_weights.unsqueeze(0),
                                   encoder_outputs.unsqueeze(0))

            output = lib.cat((embedded[0], attn_applied[0]), 1)
            output = self.attn_combine(output).unsqueeze(0)

            for i in range(self.n_layers):
                output = F.relu(output)
                output, hidden = self.gru(output, hidden)

            output = F.log_softmax(self.out(output[0]))
            return output, hidden, attn_weights

    return EncoderRNN, AttnDecoderRNN


def seq2seq_2017(lib):
    nn, optim = lib.nn, lib.optim
    Variable = variable(lib)
    use_cuda = lib.cuda.is_available() and False
    SOS_token, EOS_token, MAX_LENGTH = 0, 1, 6
    teacher_forcing_ratio = 0.5

    class Lang:
        def __init__(self, name):
            self.name = name
            self.word2index = {}
            self.word2count = {}
            self.index2word = {0: "SOS", 1: "EOS"}
            self.n_words = 2  # Count SOS and EOS

        def addSentence(self, sentence):
            for word in sentence.split(' '):
                self.addWord(word)

        def addWord(self, word):
            if word not in self.word2index:
                self.word2index[word] = self.n_words
                self.word2count[word] = 1
                self.index2word[self.n_words] = word
                self.n_words += 1
            else:
                self.word2count[word] += 1

    input_lang, output_lang = Lang("fra"), Lang("eng")
    for a, b in PAIRS:
        input_lang.addSentence(a)
        output_lang.addSentence(b)

    EncoderRNN, AttnDecoderRNN = seq2seq_classes(lib, MAX_LENGTH)

    def variableFromSentence(lang, sentence):
        indexes = [lang.word2index[word] for word in sentence.split(' ')]
        indexes.append(EOS_token)
        result = Variable(lib.LongTensor(indexes).view(-1, 1))
        if use_cuda:
            return result.cuda()
        else:
            return result

    def variablesFromPair(pair):
        input_variable = variableFromSentence(input_lang, pair[0])
        target_variable = variableFromSentence(output_lang, pair[1])
        return (input_variable, target_variable)

    def train(input_variable, target_variable, encoder, decoder, encoder_optimizer,
              decoder_optimizer, criterion, max_length=MAX_LENGTH):
        encoder_hidden = encoder.initHidden()

        encoder_optimizer.zero_grad()
        decoder_optimizer.zero_grad()

        input_length = input_variable.size()[0]
        target_length = target_variable.size()[0]

        encoder_outputs = Variable(lib.zeros(max_length, encoder.hidden_size))
        encoder_outputs = encoder_outputs.cuda() if use_cuda else encoder_outputs

        loss = 0

        for ei in range(input_length):
            encoder_output, encoder_hidden = encoder(
                input_variable[ei], encoder_hidden)
            encoder_outputs[ei] = encoder_output[0][0]

        decoder_input = Variable(lib.LongTensor([[SOS_token]]))
        decoder_input = decoder_input.cuda() if use_cuda else decoder_input

        decoder_hidden = encoder_hidden

        use_teacher_forcing = True if random.random() < teacher_forcing_ratio else False

        if use_teacher_forcing:
            # Teacher forcing: Feed the target as the next input
            for di in range(target_length):
                decoder_output, decoder_hidden, decoder_attention = decoder(
                    decoder_input, decoder_hidden, encoder_output, encoder_outputs)
                loss += criterion(decoder_output, target_variable[di])
                decoder_input = target_variable[di]  # Teacher forcing

        else:
            # Without teacher forcing: use its own predictions as the next input
            for di in range(target_length):
                decoder_output, decoder_hidden, decoder_attention = decoder(
                    decoder_input, decoder_hidden, encoder_output, encoder_outputs)
                topv, topi = decoder_output.data.topk(1)
                ni = topi[0][0]

                decoder_input = Variable(lib.LongTensor([[ni]]))
                decoder_input = decoder_input.cuda() if use_cuda else decoder_input

                loss += criterion(decoder_output, target_variable[di])
                if ni == EOS_token:
                    break

        loss.backward()

        encoder_optimizer.step()
        decoder_optimizer.step()

        return loss.item() / target_length

    def evaluate(encoder, decoder, sentence, max_length=MAX_LENGTH):
        with lib.no_grad():
            input_tensor = variableFromSentence(input_lang, sentence)
            input_length = input_tensor.size()[0]
            encoder_hidden = encoder.initHidden()

            encoder_outputs = lib.zeros(max_length, encoder.hidden_size)

            for ei in range(input_length):
                encoder_output, encoder_hidden = encoder(input_tensor[ei], encoder_hidden)
                encoder_outputs[ei] += encoder_output[0, 0]

            decoder_input = lib.tensor([[SOS_token]])  # SOS

            decoder_hidden = encoder_hidden

            decoded_words = []
            decoder_attentions = lib.zeros(max_length, max_length)

            for di in range(max_length):
                decoder_output, decoder_hidden, decoder_attention = decoder(
                    decoder_input, decoder_hidden, encoder_output, encoder_outputs)
                decoder_attentions[di] = decoder_attention.data
                topv, topi = decoder_output.data.topk(1)
                if topi.item() == EOS_token:
                    decoded_words.append('<EOS>')
                    break
                else:
                    decoded_words.append(output_lang.index2word[topi.item()])

                decoder_input = topi.squeeze().detach()

            return decoded_words, decoder_attentions[:di + 1]

    hidden_size = 8
    torch_enc, torch_dec = seq2seq_classes(torch, MAX_LENGTH)

    torch.manual_seed(0)
    init = [{k: v.detach().double().numpy() for k, v in m.state_dict().items()}
            for m in (torch_enc(input_lang.n_words, hidden_size),
                      torch_dec(hidden_size, output_lang.n_words, dropout_p=0.0))]
    encoder1 = load(lib, EncoderRNN(input_lang.n_words, hidden_size), init[0])
    attn_decoder1 = load(lib, AttnDecoderRNN(hidden_size, output_lang.n_words, dropout_p=0.0),
                         init[1])

    random.seed(0)
    rec = {"loss": [], "before": [evaluate(encoder1, attn_decoder1, p[0]) for p in PAIRS[3:]]}
    encoder_optimizer = optim.SGD(encoder1.parameters(), lr=0.3)
    decoder_optimizer = optim.SGD(attn_decoder1.parameters(), lr=0.3)
    training_pairs = [variablesFromPair(random.choice(PAIRS)) for i in range(30)]
    criterion = nn.NLLLoss()
    for iter in range(1, 31):
        training_pair = training_pairs[iter - 1]
        input_variable = training_pair[0]
        target_variable = training_pair[1]
        rec["loss"].append(train(input_variable, target_variable, encoder1, attn_decoder1,
                                 encoder_optimizer, decoder_optimizer, criterion))
    rec["eval"] = [evaluate(encoder1, attn_decoder1, p[0]) for p in PAIRS[:3]]
    rec["w"] = [arrays(encoder1.state_dict()), arrays(attn_decoder1.state_dict())]
    return rec


@pytest.mark.usefixtures("float64_one_thread")
def test_seq2seq_attention_2017_data_topk_greedy_decoding():
    both(seq2seq_2017)


# --- 9. DQN tutorial, 2017 (ByteTensor masks, volatile, param.grad.data.clamp_) --------------

ENV_STATES = draw(16, 4, seed=12)


class ToyEnv:
    """A deterministic stand-in for gym's CartPole: states from a fixed table, reward 1 a step,
    done after six steps."""

    def __init__(self):
        self.t = 0

    def reset(self):
        self.t = 0
        return ENV_STATES[0]

    def step(self, action):
        self.t += 1
        return ENV_STATES[(3 * self.t + 5 * action) % 16], 1.0, self.t == 6, {}


def dqn_net(lib):
    nn, F = lib.nn, lib.nn.functional

    class DQN(nn.Module):

        def __init__(self):
            super(DQN, self).__init__()
            self.fc1 = nn.Linear(4, 16)
            self.head = nn.Linear(16, 2)

        def forward(self, x):
            x = F.relu(self.fc1(x))
            return self.head(x.view(x.size(0), -1))

    return DQN()


def dqn_2017(lib):
    F, optim = lib.nn.functional, lib.optim
    Variable = variable(lib)
    random.seed(0)
    env = ToyEnv()
    Transition = namedtuple('Transition', ('state', 'action', 'next_state', 'reward'))

    class ReplayMemory(object):

        def __init__(self, capacity):
            self.capacity = capacity
            self.memory = []
            self.position = 0

        def push(self, *args):
            """Saves a transition."""
            if len(self.memory) < self.capacity:
                self.memory.append(None)
            self.memory[self.position] = Transition(*args)
            self.position = (self.position + 1) % self.capacity

        def sample(self, batch_size):
            return random.sample(self.memory, batch_size)

        def __len__(self):
            return len(self.memory)

    # if gpu is to be used
    use_cuda = lib.cuda.is_available()
    FloatTensor = lib.cuda.FloatTensor if use_cuda else lib.FloatTensor
    LongTensor = lib.cuda.LongTensor if use_cuda else lib.LongTensor
    ByteTensor = lib.cuda.ByteTensor if use_cuda else lib.ByteTensor
    Tensor = FloatTensor

    BATCH_SIZE = 8
    GAMMA = 0.999
    EPS_START = 0.9
    EPS_END = 0.05
    EPS_DECAY = 20

    model = load(lib, dqn_net(lib), seeded_init(dqn_net), "float32")
    if use_cuda:
        model.cuda()

    optimizer = optim.RMSprop(model.parameters())
    memory = ReplayMemory(100)

    steps_done = 0
    rec = {"actions": [], "loss": [], "grad_max": []}

    def select_action(state):
        nonlocal steps_done
        sample = random.random()
        eps_threshold = EPS_END + (EPS_START - EPS_END) * \
            math.exp(-1. * steps_done / EPS_DECAY)
        steps_done += 1
        if sample > eps_threshold:
            return model(
                Variable(state, volatile=True).type(FloatTensor)).data.max(1)[1].view(1, 1)
        else:
            return LongTensor([[random.randrange(2)]])

    last_sync = 0

    def optimize_model():
        nonlocal last_sync
        if len(memory) < BATCH_SIZE:
            return
        transitions = memory.sample(BATCH_SIZE)
        # Transpose the batch (see http://stackoverflow.com/a/19343/3343043 for
        # detailed explanation).
        batch = Transition(*zip(*transitions))

        # Compute a mask of non-final states and concatenate the batch elements
        non_final_mask = ByteTensor(tuple(map(lambda s: s is not None,
                                              batch.next_state)))

        # We don't want to backprop through the expected action values and volatile
        # will save us on temporarily changing the model parameters'
        # requires_grad to False!
        non_final_next_states = Variable(lib.cat([s for s in batch.next_state
                                                  if s is not None]),
                                         volatile=True)
        state_batch = Variable(lib.cat(batch.state))
        action_batch = Variable(lib.cat(batch.action))
        reward_batch = Variable(lib.cat(batch.reward))

        # Compute Q(s_t, a) - the model computes Q(s_t), then we select the
        # columns of actions taken
        state_action_values = model(state_batch).gather(1, action_batch)

        # Compute V(s_{t+1}) for all next states.
        next_state_values = Variable(lib.zeros(BATCH_SIZE).type(Tensor))
        next_state_values[non_final_mask] = model(non_final_next_states).max(1)[0]
        # Now, we don't want to mess up the loss with a volatile flag, so let's
        # clear it. After this, we'll just end up with a Variable that has
        # requires_grad=False
        next_state_values.volatile = False
        # Compute the expected Q values
        expected_state_action_values = (next_state_values * GAMMA) + reward_batch

        # Compute Huber loss
        loss = F.smooth_l1_loss(state_action_values, expected_state_action_values)

        # Optimize the model
        optimizer.zero_grad()
        loss.backward()
        rec["grad_max"].append(max(p.grad.abs().max().item() for p in model.parameters()))
        for param in model.parameters():
            param.grad.data.clamp_(-1, 1)
        optimizer.step()
        rec["loss"].append(loss.item())

    num_episodes = 3
    for i_episode in range(num_episodes):
        # Initialize the environment and state
        state = FloatTensor(env.reset()).unsqueeze(0)
        for t in range(100):
            # Select and perform an action
            action = select_action(state)
            obs, reward, done, _ = env.step(action[0, 0])
            reward = Tensor([reward])

            if not done:
                next_state = FloatTensor(obs).unsqueeze(0)
            else:
                next_state = None

            # Store the transition in memory
            memory.push(state, action, next_state, reward)

            # Move to the next state
            state = next_state

            # Perform one step of the optimization (on the target network)
            optimize_model()
            rec["actions"].append(int(action[0, 0]))
            if done:
                break
    rec["w"] = arrays(model.state_dict())
    return rec


def test_dqn_2017_byte_masks_volatile_clamped_grads():
    both(dqn_2017, tol=1e-5)


# --- 10. DDPG (ikostrikov/pytorch-ddpg-naf, 2018): soft/hard updates through .data ----------

DDPG_STATES = draw(5, 6, 3, seed=13)
DDPG_NOISE = draw(5, 6, 1, seed=14)


def ddpg_nets(lib):
    nn, F = lib.nn, lib.nn.functional

    class Actor(nn.Module):
        def __init__(self, hidden_size, num_inputs, action_space):
            super(Actor, self).__init__()
            self.action_space = action_space
            num_outputs = action_space

            self.linear1 = nn.Linear(num_inputs, hidden_size)
            self.ln1 = nn.LayerNorm(hidden_size)

            self.linear2 = nn.Linear(hidden_size, hidden_size)
            self.ln2 = nn.LayerNorm(hidden_size)

            self.mu = nn.Linear(hidden_size, num_outputs)
            self.mu.weight.data.mul_(0.1)
            self.mu.bias.data.mul_(0.1)

        def forward(self, inputs):
            x = inputs
            x = self.linear1(x)
            x = self.ln1(x)
            x = F.relu(x)
            x = self.linear2(x)
            x = self.ln2(x)
            x = F.relu(x)
            mu = F.tanh(self.mu(x))
            return mu

    class Critic(nn.Module):
        def __init__(self, hidden_size, num_inputs, action_space):
            super(Critic, self).__init__()
            self.action_space = action_space
            num_outputs = action_space

            self.linear1 = nn.Linear(num_inputs, hidden_size)
            self.ln1 = nn.LayerNorm(hidden_size)

            self.linear2 = nn.Linear(hidden_size+num_outputs, hidden_size)
            self.ln2 = nn.LayerNorm(hidden_size)

            self.V = nn.Linear(hidden_size, 1)
            self.V.weight.data.mul_(0.1)
            self.V.bias.data.mul_(0.1)

        def forward(self, inputs, actions):
            x = inputs
            x = self.linear1(x)
            x = self.ln1(x)
            x = F.relu(x)

            x = lib.cat((x, actions), 1)
            x = self.linear2(x)
            x = self.ln2(x)
            x = F.relu(x)
            V = self.V(x)
            return V

    return Actor(8, 3, 1), Actor(8, 3, 1), Critic(8, 3, 1), Critic(8, 3, 1)


def ddpg_2018(lib):
    F = lib.nn.functional
    Variable = variable(lib)
    Adam = lib.optim.Adam

    def soft_update(target, source, tau):
        for target_param, param in zip(target.parameters(), source.parameters()):
            target_param.data.copy_(target_param.data * (1.0 - tau) + param.data * tau)

    def hard_update(target, source):
        for target_param, param in zip(target.parameters(), source.parameters()):
            target_param.data.copy_(param.data)

    torch.manual_seed(0)
    init = [{k: v.detach().double().numpy() for k, v in m.state_dict().items()}
            for m in ddpg_nets(torch)]
    nets = [load(lib, m, i) for m, i in zip(ddpg_nets(lib), init)]

    class DDPG(object):
        def __init__(self, gamma, tau, hidden_size, num_inputs, action_space):
            self.num_inputs = num_inputs
            self.action_space = action_space

            self.actor, self.actor_target, self.critic, self.critic_target = nets
            self.actor_optim = Adam(self.actor.parameters(), lr=1e-3)
            self.critic_optim = Adam(self.critic.parameters(), lr=1e-2)

            self.gamma = gamma
            self.tau = tau

            hard_update(self.actor_target, self.actor)  # Make sure target is with the same weight
            hard_update(self.critic_target, self.critic)

        def select_action(self, state, action_noise=None, param_noise=None):
            self.actor.eval()
            mu = self.actor((Variable(state)))

            self.actor.train()
            mu = mu.data

            if action_noise is not None:
                mu += lib.Tensor(action_noise)

            return mu.clamp(-1, 1)

        def update_parameters(self, batch):
            state_batch = Variable(lib.cat(batch["state"]))
            action_batch = Variable(lib.cat(batch["action"]))
            reward_batch = Variable(lib.cat(batch["reward"]))
            mask_batch = Variable(lib.cat(batch["mask"]))
            next_state_batch = Variable(lib.cat(batch["next_state"]))

            next_action_batch = self.actor_target(next_state_batch)
            next_state_action_values = self.critic_target(next_state_batch, next_action_batch)

            reward_batch = reward_batch.unsqueeze(1)
            mask_batch = mask_batch.unsqueeze(1)
            expected_state_action_batch = reward_batch + (self.gamma * mask_batch *
                                                          next_state_action_values)

            self.critic_optim.zero_grad()

            state_action_batch = self.critic((state_batch), (action_batch))

            value_loss = F.mse_loss(state_action_batch, expected_state_action_batch)
            value_loss.backward()
            self.critic_optim.step()

            self.actor_optim.zero_grad()

            policy_loss = -self.critic((state_batch), self.actor((state_batch)))

            policy_loss = policy_loss.mean()
            policy_loss.backward()
            self.actor_optim.step()

            soft_update(self.actor_target, self.actor, self.tau)
            soft_update(self.critic_target, self.critic, self.tau)

            return value_loss.item(), policy_loss.item()

    agent = DDPG(gamma=0.99, tau=0.1, hidden_size=8, num_inputs=3, action_space=1)
    rec = {"actions": [], "losses": []}
    for it in range(5):
        states = lib.tensor(DDPG_STATES[it])
        actions = lib.cat([agent.select_action(states[i:i + 1], DDPG_NOISE[it, i:i + 1] * 0.3)
                           for i in range(6)])
        rec["actions"].append(actions.numpy().copy())
        batch = {"state": [states[:5]], "action": [actions[:5]],
                 "reward": [actions[:5, 0] * -2.0 + states[:5, 0]],
                 "mask": [lib.tensor([1.0, 1.0, 0.0, 1.0, 1.0])],
                 "next_state": [states[1:]]}
        rec["losses"].append(agent.update_parameters(batch))
    rec["nets"] = [arrays(m.state_dict()) for m in nets]
    # what the targets' parameters collected (expected_state_action_batch was not detached)
    rec["target_grads"] = [arr(p.grad) for p in agent.critic_target.parameters()]
    rec["training"] = [m.training for m in nets]
    return rec


@pytest.mark.usefixtures("float64_one_thread")
def test_ddpg_2018_soft_hard_updates_through_data():
    both(ddpg_2018)


# --- 11. the ImageNet example's checkpoints (2017-2019): save_checkpoint, resume ----------------

CLS_X, CLS_Y = draw(48, 6, seed=15), draw(48, seed=16, kind="randint", high=6)


def cls_net(lib):
    nn = lib.nn
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(inplace=True), nn.Linear(16, 6))


def imagenet_resume(lib, folder, stop_at: int | None):
    """Epochs with AverageMeter, accuracy on ``output.data``, adjust_learning_rate, a
    checkpoint dict each epoch; with ``stop_at`` the run stops there and a fresh model and
    optimizer resume from ``checkpoint.pth.tar``."""
    nn = lib.nn
    if lib.cuda.is_available() and False:
        lib.set_default_tensor_type('torch.cuda.FloatTensor')
    else:
        lib.set_default_tensor_type('torch.DoubleTensor')
    base_lr, start_epoch, epochs, best_prec1 = 0.1, 0, 6, 0

    class AverageMeter(object):
        """Computes and stores the average and current value"""
        def __init__(self):
            self.reset()

        def reset(self):
            self.val = 0
            self.avg = 0
            self.sum = 0
            self.count = 0

        def update(self, val, n=1):
            self.val = val
            self.sum += val * n
            self.count += n
            self.avg = self.sum / self.count

    def adjust_learning_rate(optimizer, epoch):
        """Sets the learning rate to the initial LR decayed by 10 every 2 epochs"""
        lr = base_lr * (0.1 ** (epoch // 2))
        for param_group in optimizer.param_groups:
            param_group['lr'] = lr

    def save_checkpoint(state, is_best, filename='checkpoint.pth.tar'):
        lib.save(state, os.path.join(folder, filename))
        if is_best:
            shutil.copyfile(os.path.join(folder, filename),
                            os.path.join(folder, 'model_best.pth.tar'))

    def make():
        model = nn.DataParallel(load(lib, cls_net(lib), seeded_init(cls_net)))
        criterion = nn.CrossEntropyLoss()
        optimizer = lib.optim.SGD(model.parameters(), base_lr, momentum=0.9, weight_decay=1e-4)
        return model, criterion, optimizer

    model, criterion, optimizer = make()
    x, y = lib.tensor(CLS_X), lib.tensor(CLS_Y)
    rec = {"train": [], "val": []}
    epoch = start_epoch
    while epoch < epochs:
        if epoch == stop_at:  # a new process: `python main.py --resume checkpoint.pth.tar`
            model, criterion, optimizer = make()
            checkpoint = lib.load(os.path.join(folder, 'checkpoint.pth.tar'),
                                  map_location='cpu')
            start_epoch = checkpoint['epoch']
            best_prec1 = checkpoint['best_prec1']
            model.load_state_dict(checkpoint['state_dict'])
            optimizer.load_state_dict(checkpoint['optimizer'])
            rec["resumed"] = [start_epoch, float(best_prec1), checkpoint['arch']]
            stop_at = None
            epoch = start_epoch
        adjust_learning_rate(optimizer, epoch)

        # train for one epoch
        losses, top1, top5 = AverageMeter(), AverageMeter(), AverageMeter()
        model.train()
        for i in range(0, 32, 8):
            input, target = x[i:i + 8], y[i:i + 8]
            input_var = lib.autograd.Variable(input)
            target_var = lib.autograd.Variable(target)
            output = model(input_var)
            loss = criterion(output, target_var)
            prec1, prec5 = accuracy(lib, output.data, target, topk=(1, 5))
            losses.update(loss.item(), input.size(0))
            top1.update(prec1[0], input.size(0))
            top5.update(prec5[0], input.size(0))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        rec["train"].append([losses.avg, float(top1.avg), float(top5.avg)])

        # evaluate on validation set
        model.eval()
        with lib.no_grad():
            output = model(x[32:])
            prec1 = accuracy(lib, output, y[32:], topk=(1,))[0][0]
        rec["val"].append([criterion(output, y[32:]).item(), float(prec1)])

        # remember best prec@1 and save checkpoint
        is_best = prec1 > best_prec1
        best_prec1 = max(prec1, best_prec1)
        save_checkpoint({
            'epoch': epoch + 1,
            'arch': 'mlp',
            'state_dict': model.state_dict(),
            'best_prec1': best_prec1,
            'optimizer': optimizer.state_dict(),
        }, is_best)
        epoch += 1
    rec["w"] = arrays(model.module.state_dict())
    rec["best"] = float(best_prec1)
    rec["files"] = sorted(os.listdir(folder))
    return rec


@pytest.mark.parametrize("stop_at", [None, 3])
def test_imagenet_checkpoint_dict_resume(tmp_path, stop_at):
    try:
        got = {}
        for lib in (torch, ng):
            (tmp_path / lib.__name__).mkdir()
            got[lib.__name__] = imagenet_resume(lib, str(tmp_path / lib.__name__), stop_at)
    finally:
        for lib in (torch, ng):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lib.set_default_tensor_type('torch.FloatTensor')
    assert_same(got["nodegrad"], got["torch"])
    assert ng.get_default_dtype() == ng.float32


# --- 12. yunjey/pytorch-tutorial: deep residual network (update_lr, `if self.downsample:`) ----

def yunjey_resnet(lib):
    nn = lib.nn

    # 3x3 convolution
    def conv3x3(in_channels, out_channels, stride=1):
        return nn.Conv2d(in_channels, out_channels, kernel_size=3,
                         stride=stride, padding=1, bias=False)

    # Residual block
    class ResidualBlock(nn.Module):
        def __init__(self, in_channels, out_channels, stride=1, downsample=None):
            super(ResidualBlock, self).__init__()
            self.conv1 = conv3x3(in_channels, out_channels, stride)
            self.bn1 = nn.BatchNorm2d(out_channels)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = conv3x3(out_channels, out_channels)
            self.bn2 = nn.BatchNorm2d(out_channels)
            self.downsample = downsample

        def forward(self, x):
            residual = x
            out = self.conv1(x)
            out = self.bn1(out)
            out = self.relu(out)
            out = self.conv2(out)
            out = self.bn2(out)
            if self.downsample:
                residual = self.downsample(x)
            out += residual
            out = self.relu(out)
            return out

    # ResNet
    class ResNet(nn.Module):
        def __init__(self, block, layers, num_classes=10):
            super(ResNet, self).__init__()
            self.in_channels = 4
            self.conv = conv3x3(3, 4)
            self.bn = nn.BatchNorm2d(4)
            self.relu = nn.ReLU(inplace=True)
            self.layer1 = self.make_layer(block, 4, layers[0])
            self.layer2 = self.make_layer(block, 8, layers[1], 2)
            self.layer3 = self.make_layer(block, 8, layers[2], 2)
            self.avg_pool = nn.AvgPool2d(4)
            self.fc = nn.Linear(8, num_classes)

        def make_layer(self, block, out_channels, blocks, stride=1):
            downsample = None
            if (stride != 1) or (self.in_channels != out_channels):
                downsample = nn.Sequential(
                    conv3x3(self.in_channels, out_channels, stride=stride),
                    nn.BatchNorm2d(out_channels))
            layers = []
            layers.append(block(self.in_channels, out_channels, stride, downsample))
            self.in_channels = out_channels
            for i in range(1, blocks):
                layers.append(block(out_channels, out_channels))
            return nn.Sequential(*layers)

        def forward(self, x):
            out = self.conv(x)
            out = self.bn(out)
            out = self.relu(out)
            out = self.layer1(out)
            out = self.layer2(out)
            out = self.layer3(out)
            out = self.avg_pool(out)
            out = out.view(out.size(0), -1)
            out = self.fc(out)
            return out

    return ResNet(ResidualBlock, [2, 1, 1])


RES_X, RES_Y = draw(16, 3, 16, 16, seed=17), draw(16, seed=18, kind="randint", high=10)


def yunjey_resnet_main(lib):
    nn = lib.nn
    device = lib.device('cuda' if lib.cuda.is_available() and False else 'cpu')
    num_epochs, learning_rate = 3, 0.001
    model = load(lib, yunjey_resnet(lib), seeded_init(yunjey_resnet)).to(device)
    ds = lib.utils.data.TensorDataset(lib.tensor(RES_X), lib.tensor(RES_Y))
    train_loader = lib.utils.data.DataLoader(dataset=ds, batch_size=4, shuffle=False)
    test_loader = lib.utils.data.DataLoader(dataset=ds, batch_size=8, shuffle=False)

    # Loss and optimizer
    criterion = nn.CrossEntropyLoss()
    optimizer = lib.optim.Adam(model.parameters(), lr=learning_rate)

    # For updating learning rate
    def update_lr(optimizer, lr):
        for param_group in optimizer.param_groups:
            param_group['lr'] = lr

    # Train the model
    rec = {"loss": [], "lr": []}
    total_step = len(train_loader)
    curr_lr = learning_rate
    for epoch in range(num_epochs):
        for i, (images, labels) in enumerate(train_loader):
            images = images.to(device)
            labels = labels.to(device)

            # Forward pass
            outputs = model(images)
            loss = criterion(outputs, labels)

            # Backward and optimize
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

            if (i+1) % 2 == 0:
                rec["loss"].append("Epoch [{}/{}], Step [{}/{}] Loss: {:.4f}".format(
                    epoch+1, num_epochs, i+1, total_step, loss.item()))
                rec["loss"].append(loss.item())

        # Decay learning rate
        if (epoch+1) % 1 == 0:
            curr_lr /= 3
            update_lr(optimizer, curr_lr)
        rec["lr"].append(optimizer.param_groups[0]["lr"])

    # Test the model
    model.eval()
    with lib.no_grad():
        correct = 0
        total = 0
        for images, labels in test_loader:
            images = images.to(device)
            labels = labels.to(device)
            outputs = model(images)
            _, predicted = lib.max(outputs.data, 1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
        rec["acc"] = 'Accuracy of the model on the test images: {} %'.format(
            100 * correct / total)
        rec["out"] = outputs
    rec["w"] = arrays(model.state_dict())
    return rec


def test_yunjey_deep_residual_network_update_lr():
    both(yunjey_resnet_main)


# --- 13. mean teacher (CuriousAI, 2017): EMA through .data, detach_, ignore_index=-1 ---------

def mt_net(lib, ema: bool = False):
    nn = lib.nn

    class Net(nn.Module):
        def __init__(self, num_classes=5):
            super(Net, self).__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4),
                                          nn.LeakyReLU(0.1), nn.MaxPool2d(2, 2),
                                          nn.Dropout(0.0))
            self.fc = nn.Linear(4 * 4 * 4, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                    m.weight.data.normal_(0, math.sqrt(2. / n))
                elif isinstance(m, nn.BatchNorm2d):
                    m.weight.data.fill_(1)
                    m.bias.data.zero_()
                elif isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight.data)
                    m.bias.data.zero_()

        def forward(self, x):
            x = self.features(x)
            return self.fc(x.view(x.size(0), -1))

    model = Net()
    if ema:
        for param in model.parameters():
            param.detach_()
    return model


MT_X = draw(6, 8, 1, 8, 8, seed=19)
MT_NOISE = draw(6, 2, 8, 1, 8, 8, seed=20) * 0.1
MT_Y = draw(6, 8, seed=21, kind="randint", high=5)
MT_Y[:, ::2] = -1  # half the batch unlabeled


def mean_teacher(lib):
    nn, F = lib.nn, lib.nn.functional
    Variable = variable(lib)
    NO_LABEL = -1
    init = seeded_init(mt_net)
    model = load(lib, mt_net(lib), init)
    ema_model = load(lib, mt_net(lib, ema=True), init)

    def softmax_mse_loss(input_logits, target_logits):
        """Takes softmax on both sides and returns MSE loss

        Note:
        - Returns the sum over all examples. Divide by the batch size afterwards
          if you want the mean.
        - Sends gradients to inputs but not the targets.
        """
        assert input_logits.size() == target_logits.size()
        input_softmax = F.softmax(input_logits, dim=1)
        target_softmax = F.softmax(target_logits, dim=1)
        num_classes = input_logits.size()[1]
        return F.mse_loss(input_softmax, target_softmax, size_average=False) / num_classes

    def sigmoid_rampup(current, rampup_length):
        """Exponential rampup from https://arxiv.org/abs/1610.02242"""
        if rampup_length == 0:
            return 1.0
        else:
            current = np.clip(current, 0.0, rampup_length)
            phase = 1.0 - current / rampup_length
            return float(np.exp(-5.0 * phase * phase))

    def update_ema_variables(model, ema_model, alpha, global_step):
        # Use the true average until the exponential average is more correct
        alpha = min(1 - 1 / (global_step + 1), alpha)
        for ema_param, param in zip(ema_model.parameters(), model.parameters()):
            ema_param.data.mul_(alpha).add_(1 - alpha, param.data)

    optimizer = lib.optim.SGD(model.parameters(), 0.05, momentum=0.9, weight_decay=2e-4,
                              nesterov=True)
    class_criterion = nn.CrossEntropyLoss(size_average=False, ignore_index=NO_LABEL)
    consistency_criterion = softmax_mse_loss
    global_step = 0
    rec = {"class": [], "cons": [], "labeled": [], "ema_acc": []}
    for epoch in range(2):
        # switch to train mode
        model.train()
        ema_model.train()
        for i in range(3):
            input = lib.tensor(MT_X[3 * epoch + i] + MT_NOISE[3 * epoch + i, 0])
            ema_input = lib.tensor(MT_X[3 * epoch + i] + MT_NOISE[3 * epoch + i, 1])
            target = lib.tensor(MT_Y[3 * epoch + i])
            input_var = Variable(input)
            ema_input_var = Variable(ema_input, volatile=True)
            target_var = Variable(target)

            minibatch_size = len(target_var)
            labeled_minibatch_size = target_var.data.ne(NO_LABEL).sum()
            assert labeled_minibatch_size > 0

            ema_model_out = ema_model(ema_input_var)
            model_out = model(input_var)
            logit1 = model_out
            ema_logit = ema_model_out
            ema_logit = Variable(ema_logit.detach().data, requires_grad=False)
            class_logit, cons_logit = logit1, logit1

            class_loss = class_criterion(class_logit, target_var) / minibatch_size
            consistency_weight = 10.0 * sigmoid_rampup(epoch + i / 3, 2)
            consistency_loss = consistency_weight * \
                consistency_criterion(cons_logit, ema_logit) / minibatch_size
            loss = class_loss + consistency_loss
            assert not (np.isnan(loss.item()) or loss.item() > 1e5), \
                'Loss explosion: {}'.format(loss.item())

            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            global_step += 1
            update_ema_variables(model, ema_model, 0.99, global_step)
            rec["class"].append(class_loss.item())
            rec["cons"].append(consistency_loss.item())
            rec["labeled"].append(int(labeled_minibatch_size))

        # validate: the evaluation mode as the sources of that time set it
        ema_model.train(False)
        with lib.no_grad():
            out = ema_model(lib.tensor(MT_X[0]))
            rec["ema_acc"].append(out.data.max(1)[1].eq(lib.tensor(MT_Y[0])).sum().item())
            rec["ema_out"] = out
    rec["model"] = arrays(model.state_dict())
    rec["ema"] = arrays(ema_model.state_dict())
    rec["ema_grads"] = [p.grad is None and not p.requires_grad for p in ema_model.parameters()]
    rec["training"] = [m.training for m in ema_model.modules()]
    return rec


def test_mean_teacher_ema_through_data_detach_ignore_index():
    both(mean_teacher)


def test_torchvision_02_init_loop_draws_in_place():
    """The init loop of torchvision 0.2's models and of many repositories since
    (``m.weight.data.normal_(0, sqrt(2/n))``, ``xavier_uniform_(m.weight.data)``,
    ``.data.fill_(1)`` / ``.data.zero_()``) changes the parameters themselves."""
    ng.manual_seed(0)
    model = mt_net(ng)
    conv, bn, fc = model.features[0], model.features[1], model.fc
    assert abs(conv.weight.std().item() - math.sqrt(2 / 36)) < 0.06
    bound = math.sqrt(6 / (64 + 5))
    assert fc.weight.abs().max().item() <= bound and fc.weight.abs().max().item() > bound / 2
    assert bn.weight.tolist() == [1.0] * 4 and fc.bias.tolist() == [0.0] * 5
    assert all(p.requires_grad and p.is_leaf for p in model.parameters())
    ema = mt_net(ng, ema=True)
    assert not any(p.requires_grad for p in ema.parameters())
    assert all(isinstance(p, ng.nn.Parameter) for p in ema.parameters())


# --- 14. pytorch/examples fast_neural_style (2017 and 2018 utils): gram by bmm, div_ ------------

def fns_transformer(lib, c1: int = 4, c2: int = 6, c3: int = 8):
    torch_ = lib  # the source's module-qualified spelling: torch.nn.Conv2d

    class ConvLayer(torch_.nn.Module):
        def __init__(self, in_channels, out_channels, kernel_size, stride):
            super(ConvLayer, self).__init__()
            reflection_padding = kernel_size // 2
            self.reflection_pad = torch_.nn.ReflectionPad2d(reflection_padding)
            self.conv2d = torch_.nn.Conv2d(in_channels, out_channels, kernel_size, stride)

        def forward(self, x):
            out = self.reflection_pad(x)
            out = self.conv2d(out)
            return out

    class ResidualBlock(torch_.nn.Module):
        """ResidualBlock
        introduced in: https://arxiv.org/abs/1512.03385
        recommended architecture: http://torch.ch/blog/2016/02/04/resnets.html
        """

        def __init__(self, channels):
            super(ResidualBlock, self).__init__()
            self.conv1 = ConvLayer(channels, channels, kernel_size=3, stride=1)
            self.in1 = torch_.nn.InstanceNorm2d(channels, affine=True)
            self.conv2 = ConvLayer(channels, channels, kernel_size=3, stride=1)
            self.in2 = torch_.nn.InstanceNorm2d(channels, affine=True)
            self.relu = torch_.nn.ReLU()

        def forward(self, x):
            residual = x
            out = self.relu(self.in1(self.conv1(x)))
            out = self.in2(self.conv2(out))
            out = out + residual
            return out

    class UpsampleConvLayer(torch_.nn.Module):
        """UpsampleConvLayer
        Upsamples the input and then does a convolution. This method gives better results
        compared to ConvTranspose2d.
        ref: http://distill.pub/2016/deconv-checkerboard/
        """

        def __init__(self, in_channels, out_channels, kernel_size, stride, upsample=None):
            super(UpsampleConvLayer, self).__init__()
            self.upsample = upsample
            if upsample:
                self.upsample_layer = torch_.nn.Upsample(scale_factor=upsample)
            reflection_padding = kernel_size // 2
            self.reflection_pad = torch_.nn.ReflectionPad2d(reflection_padding)
            self.conv2d = torch_.nn.Conv2d(in_channels, out_channels, kernel_size, stride)

        def forward(self, x):
            x_in = x
            if self.upsample:
                x_in = self.upsample_layer(x_in)
            out = self.reflection_pad(x_in)
            out = self.conv2d(out)
            return out

    class TransformerNet(torch_.nn.Module):
        def __init__(self):
            super(TransformerNet, self).__init__()
            # Initial convolution layers
            self.conv1 = ConvLayer(3, c1, kernel_size=9, stride=1)
            self.in1 = torch_.nn.InstanceNorm2d(c1, affine=True)
            self.conv2 = ConvLayer(c1, c2, kernel_size=3, stride=2)
            self.in2 = torch_.nn.InstanceNorm2d(c2, affine=True)
            self.conv3 = ConvLayer(c2, c3, kernel_size=3, stride=2)
            self.in3 = torch_.nn.InstanceNorm2d(c3, affine=True)
            # Residual layers
            self.res1 = ResidualBlock(c3)
            self.res2 = ResidualBlock(c3)
            # Upsampling Layers
            self.deconv1 = UpsampleConvLayer(c3, c2, kernel_size=3, stride=1, upsample=2)
            self.in4 = torch_.nn.InstanceNorm2d(c2, affine=True)
            self.deconv2 = UpsampleConvLayer(c2, c1, kernel_size=3, stride=1, upsample=2)
            self.in5 = torch_.nn.InstanceNorm2d(c1, affine=True)
            self.deconv3 = ConvLayer(c1, 3, kernel_size=9, stride=1)
            # Non-linearities
            self.relu = torch_.nn.ReLU()

        def forward(self, X):
            y = self.relu(self.in1(self.conv1(X)))
            y = self.relu(self.in2(self.conv2(y)))
            y = self.relu(self.in3(self.conv3(y)))
            y = self.res1(y)
            y = self.res2(y)
            y = self.relu(self.in4(self.deconv1(y)))
            y = self.relu(self.in5(self.deconv2(y)))
            y = self.deconv3(y)
            return y

    return TransformerNet()


FNS_CONTENT = draw(2, 2, 3, 16, 16, seed=23, kind="rand") * 255
FNS_STYLE = draw(1, 3, 16, 16, seed=24, kind="rand") * 255


def fast_neural_style(lib, utils_year: str):
    Variable = variable(lib)
    device = lib.device("cuda" if lib.cuda.is_available() and False else "cpu")

    def gram_matrix(y):
        (b, ch, h, w) = y.size()
        features = y.view(b, ch, w * h)
        features_t = features.transpose(1, 2)
        gram = features.bmm(features_t) / (ch * h * w)
        return gram

    def normalize_batch_2017(batch):
        # normalize using imagenet mean and std
        mean = batch.data.new(batch.data.size())
        std = batch.data.new(batch.data.size())
        mean[:, 0, :, :] = 0.485
        mean[:, 1, :, :] = 0.456
        mean[:, 2, :, :] = 0.406
        std[:, 0, :, :] = 0.229
        std[:, 1, :, :] = 0.224
        std[:, 2, :, :] = 0.225
        batch = lib.div(batch, 255.0)
        batch -= Variable(mean)
        batch = batch / Variable(std)
        return batch

    def normalize_batch_2018(batch):
        # normalize using imagenet mean and std
        mean = batch.new_tensor([0.485, 0.456, 0.406]).view(-1, 1, 1)
        std = batch.new_tensor([0.229, 0.224, 0.225]).view(-1, 1, 1)
        batch = batch.div_(255.0)
        return (batch - mean) / std

    normalize_batch = normalize_batch_2017 if utils_year == "2017" else normalize_batch_2018

    class Vgg16(lib.nn.Module):
        def __init__(self, requires_grad=False):
            super(Vgg16, self).__init__()
            vgg_pretrained_features = load(lib, style_cnn(lib), seeded_init(style_cnn))
            self.slice1 = lib.nn.Sequential()
            self.slice2 = lib.nn.Sequential()
            self.slice3 = lib.nn.Sequential()
            self.slice4 = lib.nn.Sequential()
            for x in range(4):
                self.slice1.add_module(str(x), vgg_pretrained_features[x])
            for x in range(4, 9):
                self.slice2.add_module(str(x), vgg_pretrained_features[x])
            for x in range(9, 12):
                self.slice3.add_module(str(x), vgg_pretrained_features[x])
            for x in range(12, 13):
                self.slice4.add_module(str(x), vgg_pretrained_features[x])
            if not requires_grad:
                for param in self.parameters():
                    param.requires_grad = False

        def forward(self, X):
            h = self.slice1(X)
            h_relu1_2 = h
            h = self.slice2(h)
            h_relu2_2 = h
            h = self.slice3(h)
            h_relu3_3 = h
            h = self.slice4(h)
            h_relu4_3 = h
            vgg_outputs = namedtuple("VggOutputs", ['relu1_2', 'relu2_2', 'relu3_3', 'relu4_3'])
            out = vgg_outputs(h_relu1_2, h_relu2_2, h_relu3_3, h_relu4_3)
            return out

    content_weight, style_weight, lr, batch_size = 1e5, 1e10, 1e-3, 2
    transformer = load(lib, fns_transformer(lib), seeded_init(fns_transformer)).to(device)
    optimizer = lib.optim.Adam(transformer.parameters(), lr)
    mse_loss = lib.nn.MSELoss()
    vgg = Vgg16(requires_grad=False).to(device)
    style = lib.tensor(FNS_STYLE)[0]
    style = style.repeat(batch_size, 1, 1, 1).to(device)
    features_style = vgg(normalize_batch(style))
    gram_style = [gram_matrix(y) for y in features_style]
    train_dataset = lib.utils.data.TensorDataset(lib.tensor(FNS_CONTENT.reshape(4, 3, 16, 16)),
                                                 lib.zeros(4))
    train_loader = lib.utils.data.DataLoader(train_dataset, batch_size=batch_size)
    rec = {"msg": [], "loss": []}
    for e in range(2):
        transformer.train()
        agg_content_loss = 0.
        agg_style_loss = 0.
        count = 0
        for batch_id, (x, _) in enumerate(train_loader):
            n_batch = len(x)
            count += n_batch
            optimizer.zero_grad()

            x = x.to(device)
            y = transformer(x)

            y = normalize_batch(y)
            x = normalize_batch(x)

            features_y = vgg(y)
            features_x = vgg(x)

            content_loss = content_weight * mse_loss(features_y.relu2_2, features_x.relu2_2)

            style_loss = 0.
            for ft_y, gm_s in zip(features_y, gram_style):
                gm_y = gram_matrix(ft_y)
                style_loss += mse_loss(gm_y, gm_s[:n_batch, :, :])
            style_loss *= style_weight

            total_loss = content_loss + style_loss
            total_loss.backward()
            optimizer.step()

            agg_content_loss += content_loss.item()
            agg_style_loss += style_loss.item()
            rec["loss"].append([content_loss.item(), style_loss.item()])
            mesg = "Epoch {}:\t[{}/{}]\tcontent: {:.6f}\tstyle: {:.6f}\ttotal: {:.6f}".format(
                e + 1, count, len(train_dataset),
                agg_content_loss / (batch_id + 1),
                agg_style_loss / (batch_id + 1),
                (agg_content_loss + agg_style_loss) / (batch_id + 1)
            )
            rec["msg"].append(mesg)

    # save model
    transformer.eval().cpu()
    buf = io.BytesIO()
    lib.save(transformer.state_dict(), buf)

    # stylize: a checkpoint of the InstanceNorm layers' old running buffers, dropped on loading
    with lib.no_grad():
        style_model = fns_transformer(lib).double()
        buf.seek(0)
        state_dict = dict(lib.load(buf))
        state_dict["in1.running_mean"] = lib.zeros(4, dtype=lib.float64)
        state_dict["res1.in2.running_var"] = lib.ones(8, dtype=lib.float64)
        # remove saved deprecated running_* keys in InstanceNorm from the checkpoint
        for k in list(state_dict.keys()):
            if re.search(r'in\d+\.running_(mean|var)$', k):
                del state_dict[k]
        style_model.load_state_dict(state_dict)
        style_model.to(device)
        content_image = lib.tensor(FNS_CONTENT[0, 0]).unsqueeze(0).to(device)
        output = style_model(content_image).cpu()
    data = output[0]
    img = data.clone().clamp(0, 255).numpy()
    img = img.transpose(1, 2, 0).astype("uint8")
    rec["img"] = img.astype(np.float64)
    rec["out"] = output
    return rec


@pytest.mark.parametrize("utils_year", ["2017", "2018"])
def test_fast_neural_style_gram_bmm_normalize_in_place(utils_year):
    both(fast_neural_style, utils_year)


# --- 15. spectral norm by hand (2018 SN-GAN code) and the Lookahead wrapper (2019) -----------

def sn_classes(lib):
    nn = lib.nn
    Parameter = nn.Parameter

    def l2normalize(v, eps=1e-12):
        return v / (v.norm() + eps)

    class SpectralNorm(nn.Module):
        def __init__(self, module, name='weight', power_iterations=1):
            super(SpectralNorm, self).__init__()
            self.module = module
            self.name = name
            self.power_iterations = power_iterations
            if not self._made_params():
                self._make_params()

        def _update_u_v(self):
            u = getattr(self.module, self.name + "_u")
            v = getattr(self.module, self.name + "_v")
            w = getattr(self.module, self.name + "_bar")

            height = w.data.shape[0]
            for _ in range(self.power_iterations):
                v.data = l2normalize(lib.mv(lib.t(w.view(height, -1).data), u.data))
                u.data = l2normalize(lib.mv(w.view(height, -1).data, v.data))

            # sigma = torch.dot(u.data, torch.mv(w.view(height,-1).data, v.data))
            sigma = u.dot(w.view(height, -1).mv(v))
            setattr(self.module, self.name, w / sigma.expand_as(w))

        def _made_params(self):
            try:
                u = getattr(self.module, self.name + "_u")  # noqa: F841
                v = getattr(self.module, self.name + "_v")  # noqa: F841
                w = getattr(self.module, self.name + "_bar")  # noqa: F841
                return True
            except AttributeError:
                return False

        def _make_params(self):
            w = getattr(self.module, self.name)

            height = w.data.shape[0]
            width = w.view(height, -1).data.shape[1]

            u = Parameter(w.data.new(height).normal_(0, 1), requires_grad=False)
            v = Parameter(w.data.new(width).normal_(0, 1), requires_grad=False)
            u.data = l2normalize(u.data)
            v.data = l2normalize(v.data)
            w_bar = Parameter(w.data)

            del self.module._parameters[self.name]

            self.module.register_parameter(self.name + "_u", u)
            self.module.register_parameter(self.name + "_v", v)
            self.module.register_parameter(self.name + "_bar", w_bar)

        def forward(self, *args):
            self._update_u_v()
            return self.module.forward(*args)

    class Discriminator(nn.Module):
        def __init__(self):
            super(Discriminator, self).__init__()
            self.conv1 = SpectralNorm(nn.Conv2d(1, 4, 3, stride=1, padding=(1, 1)))
            self.conv2 = SpectralNorm(nn.Conv2d(4, 8, 4, stride=2, padding=(1, 1)))
            self.fc = SpectralNorm(nn.Linear(4 * 4 * 8, 1))

        def forward(self, x):
            m = x
            m = nn.LeakyReLU(0.1)(self.conv1(m))
            m = nn.LeakyReLU(0.1)(self.conv2(m))
            return self.fc(m.view(-1, 4 * 4 * 8))

    class Lookahead(object):  # an Optimizer subclass once; PyTorch 2's step hooks need more
        def __init__(self, optimizer, k=5, alpha=0.5):
            self.optimizer = optimizer
            self.k = k
            self.alpha = alpha
            self.param_groups = self.optimizer.param_groups
            self.defaults = self.optimizer.defaults
            self.state = defaultdict(dict)
            self.fast_state = self.optimizer.state
            for group in self.param_groups:
                group["counter"] = 0

        def update(self, group):
            for fast in group["params"]:
                param_state = self.state[fast]
                if "slow_param" not in param_state:
                    param_state["slow_param"] = lib.zeros_like(fast.data)
                    param_state["slow_param"].copy_(fast.data)
                slow = param_state["slow_param"]
                slow += (fast.data - slow) * self.alpha
                fast.data.copy_(slow)

        def zero_grad(self):
            self.optimizer.zero_grad()

        def update_lookahead(self):
            for group in self.param_groups:
                self.update(group)

        def step(self, closure=None):
            loss = self.optimizer.step(closure)
            for group in self.param_groups:
                if group["counter"] == 0:
                    self.update(group)
                group["counter"] += 1
                if group["counter"] >= self.k:
                    group["counter"] = 0
            return loss

    return Discriminator, Lookahead


SN_X = draw(4, 4, 1, 8, 8, seed=25)


def sn_gan_lookahead(lib, two_forwards: bool):
    Discriminator, Lookahead = sn_classes(lib)
    torch.manual_seed(0)
    init = {k: v.detach().double().numpy() for k, v in
            sn_classes(torch)[0]().state_dict().items()}
    disc = load(lib, Discriminator(), init)
    base = lib.optim.Adam(filter(lambda p: p.requires_grad, disc.parameters()), lr=2e-3,
                          betas=(0.0, 0.9))
    optim_disc = Lookahead(base, k=3, alpha=0.5)
    rec = {"loss": [], "names": [k for k, _ in disc.named_parameters()]}
    for i in range(4):
        real = lib.tensor(SN_X[i])
        optim_disc.zero_grad()
        if two_forwards:  # the SN-GAN script's form: D on real and on fake, one backward
            disc_loss = nn_relu(lib, 1.0 - disc(real)).mean() + \
                nn_relu(lib, 1.0 + disc(-real)).mean()
        else:
            out = disc(lib.cat([real, -real]))
            disc_loss = nn_relu(lib, 1.0 - out[:4]).mean() + nn_relu(lib, 1.0 + out[4:]).mean()
        disc_loss.backward()
        optim_disc.step()
        rec["loss"].append(disc_loss.item())
    rec["w"] = arrays(disc.state_dict())
    rec["uv"] = [disc.conv1.module.weight_u.requires_grad, disc.fc.module.weight_v.grad is None]
    rec["counter"] = optim_disc.param_groups[0]["counter"]
    rec["slow"] = [arr(s["slow_param"]) for s in optim_disc.state.values()]
    return rec


def nn_relu(lib, x):
    return lib.nn.ReLU()(x)


def test_spectral_norm_by_hand_and_lookahead_wrapper():
    both(sn_gan_lookahead, False)


@pytest.mark.xfail(strict=True, reason="PyTorch's `u.data = new` swaps the memory under the "
                   "values the first forward's graph saved, so its backward reads the new u, v; "
                   "nodegrad's graph keeps the values it computed with (relative 2e-4 apart)")
def test_spectral_norm_two_forwards_then_backward():
    both(sn_gan_lookahead, True)


# --- 16. the chatbot tutorial (2018): packed bidirectional GRU, Luong attention, masked NLL --

def chatbot_classes(lib):
    nn, F = lib.nn, lib.nn.functional

    class EncoderRNN(nn.Module):
        def __init__(self, hidden_size, embedding, n_layers=1, dropout=0):
            super(EncoderRNN, self).__init__()
            self.n_layers = n_layers
            self.hidden_size = hidden_size
            self.embedding = embedding
            self.gru = nn.GRU(hidden_size, hidden_size, n_layers,
                              dropout=(0 if n_layers == 1 else dropout), bidirectional=True)

        def forward(self, input_seq, input_lengths, hidden=None):
            # Convert word indexes to embeddings
            embedded = self.embedding(input_seq)
            # Pack padded batch of sequences for RNN module
            packed = nn.utils.rnn.pack_padded_sequence(embedded, input_lengths)
            # Forward pass through GRU
            outputs, hidden = self.gru(packed, hidden)
            # Unpack padding
            outputs, _ = nn.utils.rnn.pad_packed_sequence(outputs)
            # Sum bidirectional GRU outputs
            outputs = outputs[:, :, :self.hidden_size] + outputs[:, :, self.hidden_size:]
            # Return output and final hidden state
            return outputs, hidden

    # Luong attention layer
    class Attn(nn.Module):
        def __init__(self, method, hidden_size):
            super(Attn, self).__init__()
            self.method = method
            if self.method not in ['dot', 'general', 'concat']:
                raise ValueError(self.method, "is not an appropriate attention method.")
            self.hidden_size = hidden_size
            if self.method == 'general':
                self.attn = nn.Linear(self.hidden_size, hidden_size)

        def general_score(self, hidden, encoder_output):
            energy = self.attn(encoder_output)
            return lib.sum(hidden * energy, dim=2)

        def forward(self, hidden, encoder_outputs):
            attn_energies = self.general_score(hidden, encoder_outputs)
            # Transpose max_length and batch_size dimensions
            attn_energies = attn_energies.t()
            # Return the softmax normalized probability scores (with added dimension)
            return F.softmax(attn_energies, dim=1).unsqueeze(1)

    class LuongAttnDecoderRNN(nn.Module):
        def __init__(self, attn_model, embedding, hidden_size, output_size, n_layers=1,
                     dropout=0.1):
            super(LuongAttnDecoderRNN, self).__init__()
            self.attn_model = attn_model
            self.hidden_size = hidden_size
            self.output_size = output_size
            self.n_layers = n_layers
            self.dropout = dropout
            self.embedding = embedding
            self.embedding_dropout = nn.Dropout(dropout)
            self.gru = nn.GRU(hidden_size, hidden_size, n_layers,
                              dropout=(0 if n_layers == 1 else dropout))
            self.concat = nn.Linear(hidden_size * 2, hidden_size)
            self.out = nn.Linear(hidden_size, output_size)
            self.attn = Attn(attn_model, hidden_size)

        def forward(self, input_step, last_hidden, encoder_outputs):
            # Note: we run this one step (word) at a time
            # Get embedding of current input word
            embedded = self.embedding(input_step)
            embedded = self.embedding_dropout(embedded)
            # Forward through unidirectional GRU
            rnn_output, hidden = self.gru(embedded, last_hidden)
            # Calculate attention weights from the current GRU output
            attn_weights = self.attn(rnn_output, encoder_outputs)
            # Multiply attention weights to encoder outputs to get new "weighted sum" vector
            context = attn_weights.bmm(encoder_outputs.transpose(0, 1))
            # Concatenate weighted context vector and GRU output using Luong eq. 5
            rnn_output = rnn_output.squeeze(0)
            context = context.squeeze(1)
            concat_input = lib.cat((rnn_output, context), 1)
            concat_output = lib.tanh(self.concat(concat_input))
            # Predict next word using Luong eq. 6
            output = self.out(concat_output)
            output = F.softmax(output, dim=1)
            # Return output and final hidden state
            return output, hidden

    def build():
        embedding = nn.Embedding(9, 6)
        return (EncoderRNN(6, embedding), LuongAttnDecoderRNN('general', embedding, 6, 9, 1,
                                                              dropout=0.0))

    return build


# (word ids, padded with 0) of a batch sorted by length, targets with their mask
CB_INPUT = [[3, 4, 5, 6], [7, 3, 2, 0], [5, 2, 0, 0]]
CB_TARGET = [[4, 5, 2], [6, 2, 0], [8, 2, 0]]


def chatbot(lib):
    nn = lib.nn
    SOS_token, clip, teacher_forcing_ratio = 1, 50.0, 0.5
    torch.manual_seed(0)
    init = [{k: v.detach().double().numpy() for k, v in m.state_dict().items()}
            for m in chatbot_classes(torch)()]
    encoder, decoder = (load(lib, m, i) for m, i in zip(chatbot_classes(lib)(), init))

    def maskNLLLoss(inp, target, mask):
        nTotal = mask.sum()
        crossEntropy = -lib.log(lib.gather(inp, 1, target.view(-1, 1)).squeeze(1))
        loss = crossEntropy.masked_select(mask).mean()
        return loss, nTotal.item()

    def train(input_variable, lengths, target_variable, mask, max_target_len, encoder, decoder,
              encoder_optimizer, decoder_optimizer, batch_size, clip):
        # Zero gradients
        encoder_optimizer.zero_grad()
        decoder_optimizer.zero_grad()

        # Initialize variables
        loss = 0
        print_losses = []
        n_totals = 0

        # Forward pass through encoder
        encoder_outputs, encoder_hidden = encoder(input_variable, lengths)

        # Create initial decoder input (start with SOS tokens for each sentence)
        decoder_input = lib.LongTensor([[SOS_token for _ in range(batch_size)]])

        # Set initial decoder hidden state to the encoder's final hidden state
        decoder_hidden = encoder_hidden[:decoder.n_layers]

        # Determine if we are using teacher forcing this iteration
        use_teacher_forcing = True if random.random() < teacher_forcing_ratio else False

        # Forward batch of sequences through decoder one time step at a time
        if use_teacher_forcing:
            for t in range(max_target_len):
                decoder_output, decoder_hidden = decoder(
                    decoder_input, decoder_hidden, encoder_outputs
                )
                # Teacher forcing: next input is current target
                decoder_input = target_variable[t].view(1, -1)
                # Calculate and accumulate loss
                mask_loss, nTotal = maskNLLLoss(decoder_output, target_variable[t], mask[t])
                loss += mask_loss
                print_losses.append(mask_loss.item() * nTotal)
                n_totals += nTotal
        else:
            for t in range(max_target_len):
                decoder_output, decoder_hidden = decoder(
                    decoder_input, decoder_hidden, encoder_outputs
                )
                # No teacher forcing: next input is decoder's own current output
                _, topi = decoder_output.topk(1)
                decoder_input = lib.LongTensor([[topi[i][0] for i in range(batch_size)]])
                # Calculate and accumulate loss
                mask_loss, nTotal = maskNLLLoss(decoder_output, target_variable[t], mask[t])
                loss += mask_loss
                print_losses.append(mask_loss.item() * nTotal)
                n_totals += nTotal

        # Perform backpropatation
        loss.backward()

        # Clip gradients: gradients are modified in place
        _ = nn.utils.clip_grad_norm_(encoder.parameters(), clip)
        _ = nn.utils.clip_grad_norm_(decoder.parameters(), clip)

        # Adjust model weights
        encoder_optimizer.step()
        decoder_optimizer.step()

        return sum(print_losses) / n_totals

    random.seed(1)
    encoder.train()
    decoder.train()
    encoder_optimizer = lib.optim.Adam(encoder.parameters(), lr=0.01)
    decoder_optimizer = lib.optim.Adam(decoder.parameters(), lr=0.05)
    input_variable = lib.LongTensor(CB_INPUT).t()
    lengths = lib.tensor([len([w for w in s if w]) for s in CB_INPUT])
    target_variable = lib.LongTensor(CB_TARGET).t()
    mask = lib.ByteTensor(CB_TARGET).t().bool()
    rec = {"loss": []}
    for iteration in range(4):
        rec["loss"].append(train(input_variable, lengths, target_variable, mask, 3, encoder,
                                 decoder, encoder_optimizer, decoder_optimizer, 3, clip))
    rec["w"] = [arrays(encoder.state_dict()), arrays(decoder.state_dict())]
    rec["shared"] = encoder.embedding is decoder.embedding
    return rec


def test_chatbot_packed_bigru_luong_attention_masked_nll():
    both(chatbot)


# --- regression tests: the old spellings these programs use -----------------------------------

def test_scalar_first_overloads_as_torch():
    """``add_(alpha, other)``, ``sub(alpha, other)``, ``torch.add(x, alpha, other)``,
    ``addcmul_(value, t1, t2)``, ``addcdiv(value, t1, t2)``: PyTorch's deprecated overloads
    (still accepted, with a warning), which code written before PyTorch 1.5 uses throughout;
    values and gradients as PyTorch's."""
    a0, b0, c0 = draw(3, 4, seed=20), draw(3, 4, seed=21), draw(3, 4, seed=22).__abs__() + 1

    def forms(lib):
        a, b, c = (lib.tensor(v, requires_grad=True) for v in (a0, b0, c0))
        outs = [a.add(-0.5, b), a.sub(2, b), lib.add(a, -0.5, b), lib.sub(a, 2, b),
                lib.addcmul(a, 0.3, b, c), a.addcmul(0.3, b, c),
                lib.addcdiv(a, -0.7, b, c), a.addcdiv(-0.7, b, c)]
        with lib.no_grad():
            d = a.detach().clone()
            d.add_(-0.1, b).sub_(3, c).addcmul_(0.5, b, c).addcdiv_(2, b, c)
            d.mul_(0.9).add_(1 - 0.9, b)
        sum(o.sum() * (i + 1) for i, o in enumerate(outs)).backward()
        return {"outs": outs, "inplace": d, "grads": [a.grad, b.grad, c.grad]}

    both(forms)
    a = ng.ones(2)
    with pytest.warns(UserWarning, match="add_.*deprecated"):
        a.add_(2, ng.ones(2))
    with pytest.warns(UserWarning, match="addcmul.*deprecated"):
        ng.addcmul(a, 2, a, a)
    assert a.tolist() == [3.0, 3.0]


def test_scalar_first_overloads_refuse_bad_calls():
    a = ng.ones(2)
    with pytest.raises(TypeError, match="add: takes the scale as the keyword alpha="):
        a.add(a, a)
    with pytest.raises(TypeError, match=r"sub_: expected \(other, \*, alpha=1\)"):
        a.sub_(2, a, alpha=3)
    with pytest.raises(TypeError, match="mul_: takes 1 positional operand"):
        a.mul_(a, a)
    with pytest.raises(TypeError, match="addcdiv: takes the scale as the keyword value="):
        a.addcdiv(a, a, a)
    with pytest.raises(TypeError, match="addcmul: expected"):
        ng.addcmul(a, 2, a, a, value=3)


def test_volatile_is_gone_as_in_torch():
    """``v.volatile = False`` (the 2017 DQN tutorial) warns and does nothing; reading it gives
    False, as PyTorch's."""
    x = ng.zeros(3)
    with pytest.warns(UserWarning, match="volatile was removed"):
        x.volatile = True
    with pytest.warns(UserWarning, match="always False"):
        assert x.volatile is False
    assert not x.requires_grad
    for lib in (torch, ng):  # Variable(..., volatile=True) warns too; volatile=False does not
        with pytest.warns(UserWarning, match="volatile was removed"):
            v = lib.autograd.Variable(lib.ones(2), volatile=True)
        assert not v.requires_grad
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            lib.autograd.Variable(lib.ones(2), volatile=False)


def test_set_default_tensor_type_as_torch():
    """``torch.set_default_tensor_type('torch.DoubleTensor')`` (or the type) sets the default
    float dtype, with PyTorch's deprecation warning; other types are refused."""
    try:
        for arg in ("torch.DoubleTensor", ng.DoubleTensor):
            with pytest.warns(UserWarning, match="deprecated"):
                ng.set_default_tensor_type(arg)
            assert ng.zeros(1).dtype == ng.float64 and ng.Tensor([1]).dtype == ng.float64
            with pytest.warns(UserWarning):
                ng.set_default_tensor_type(ng.FloatTensor)
            assert ng.zeros(1).dtype == ng.float32
        with pytest.raises(TypeError, match="only floating-point types"):
            ng.set_default_tensor_type(ng.LongTensor)
        with pytest.raises(TypeError, match="only floating-point types"):
            ng.set_default_tensor_type("torch.IntTensor")
        assert ng.cuda.FloatTensor.is_cuda and not getattr(ng.FloatTensor, "is_cuda", False)
    finally:
        ng.set_default_dtype(ng.float32)
        ng.set_default_device("cpu")


def test_range_as_torch_and_zero_d_index_names_item():
    """``torch.range`` (deprecated: the end included, the default float dtype), kept out of
    ``from nodegrad import *``; ``loss.data[0]`` on a 0-d loss names ``.item()``."""
    cases = [((1, 4), {}), ((0, 1, 0.25), {}), ((1, 4.5), {}), ((4, 1, -1), {}),
             ((1, 4), {"dtype": "int64"})]
    for args, kw in cases:
        with pytest.warns(UserWarning, match="range is deprecated"):
            got = ng.range(*args, **{k: getattr(ng, v) for k, v in kw.items()})
        with pytest.warns(UserWarning, match="range is deprecated"):
            want = torch.range(*args, **{k: getattr(torch, v) for k, v in kw.items()})
        assert got.tolist() == want.tolist() and str(got.dtype) == str(want.dtype)[6:]
    with pytest.raises(ValueError, match="inconsistent with the step"):
        ng.range(4, 1)
    assert "range" not in ng.__all__
    loss = ng.tensor(2.5)
    with pytest.raises(IndexError, match=r"use tensor.item\(\)"):
        loss.data[0]


def test_nn_parallel_names():
    """``torch.nn.parallel``'s names: ``data_parallel`` (the functional form) runs the module
    on one device or none, as ``DataParallel`` does without GPUs (PyTorch's functional form
    raises there: "device type could not be determined"), ``DataParallel`` is nn's, and
    ``DistributedDataParallel`` is ``ng.distributed``'s, loaded on first use."""
    import nodegrad.nn.parallel as P

    w = np.arange(6.0).reshape(2, 3)
    outs = []
    for lib in (torch, ng):
        m = lib.nn.Linear(3, 2).double()
        with lib.no_grad():
            m.weight.copy_(lib.tensor(w))
            m.bias.zero_()
        x = lib.ones(4, 3, dtype=lib.float64)
        run = lib.nn.parallel.DataParallel(m) if lib is torch else (
            lambda x, m=m: lib.nn.parallel.data_parallel(m, x))
        outs.append(run(x).detach().numpy())
    np.testing.assert_array_equal(outs[1], outs[0])
    assert P.DataParallel is ng.nn.DataParallel
    assert P.DistributedDataParallel is ng.distributed.DistributedDataParallel
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        P.nope
