"""Recurrent layers: RNN (tanh or relu), GRU and LSTM, and their single-step cells.

Parameter names, shapes, gate order and results are PyTorch's, so a state dict copied from
``torch.nn.GRU`` reproduces its outputs: per layer k and direction, ``weight_ih_l{k}`` (G·H, I),
``weight_hh_l{k}`` (G·H, H), ``bias_ih_l{k}``, ``bias_hh_l{k}`` (G·H), with ``_reverse`` for the
backward direction; G = 1 (RNN), 3 (GRU: r, z, n) or 4 (LSTM: i, f, g, o). The time loop lives in
``nn.rnn_functional.recurrent_layer``. The layers also take a ``nn.utils.rnn.PackedSequence``.
"""

from __future__ import annotations

import math
import numbers
import warnings

from ... import _backend as B
from ... import ops
from ...amp import current_regions
from ...errors import DTypeError, ShapeError
from ...tensor import Tensor, empty, tensor, zeros
from .. import functional as F
from .. import init as I
from .. import rnn_functional as R
from ..module import Module, Parameter
from ..utils.rnn import PackedSequence, pad_packed_sequence

#: the float dtypes an autocast region mixes in a recurrent layer's input, states and weights
_REGION_FLOATS = (B.np.dtype(B.np.float32), B.np.dtype(B.np.float16), B.bfloat16)


def _reset(module: Module, hidden_size: int, init) -> None:
    """PyTorch's default: every weight and bias ~ U(±1/√hidden_size); otherwise ``init``
    (a name from ``nn.init.SCHEMES`` or a callable) on each weight matrix and zero biases."""
    bound = 1.0 / math.sqrt(hidden_size) if hidden_size > 0 else 0.0
    for name, p in module.named_parameters():
        if init == "default":
            I.uniform_(p, -bound, bound)
        elif name.startswith("weight"):
            I.init_weight(p, init)
        else:
            I.zeros_(p)


class RNNBase(Module):
    """Shared by RNN, GRU and LSTM: the parameters, the shape checks and the layer loop.

    As ``torch.nn.RNNBase`` it is their common class (``isinstance(lstm, nn.RNNBase)``) and
    can be built directly with a mode first: ``RNNBase("LSTM", input_size, hidden_size, ...)``
    or ``RNNBase(mode="LSTM", ...)`` (modes "RNN_TANH", "RNN_RELU", "GRU", "LSTM").
    """

    mode = "RNN_TANH"

    def __init__(self, *args, **kwargs):
        super().__init__()
        mode = None
        if args and isinstance(args[0], str):  # PyTorch's RNNBase(mode, input_size, ...)
            mode, args = args[0], args[1:]
        elif type(self) is RNNBase and "mode" in kwargs:
            mode = kwargs.pop("mode")
        if mode is not None:
            if mode not in R._GATES:
                raise ValueError(f"RNNBase: mode must be one of {sorted(R._GATES)}, got "
                                 f"{mode!r}")
            self.mode = mode
        self._build(*args, **kwargs)

    def _build(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
               batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
               proj_size: int = 0, init="default", device=None, dtype=None):
        name = type(self).__name__
        if hidden_size <= 0 or num_layers <= 0 or input_size <= 0:
            raise ValueError(f"{name}: input_size, hidden_size and num_layers must be positive, "
                             f"got {input_size}, {hidden_size}, {num_layers}")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) \
                or not 0.0 <= dropout <= 1.0:  # as PyTorch: a bool is no probability
            raise ValueError(f"{name}: dropout must be a number in [0, 1], got {dropout!r}")
        if dropout > 0 and num_layers == 1:  # as PyTorch: it would never act
            warnings.warn(f"{name}: dropout acts between recurrent layers, after all but the "
                          f"last, so with num_layers=1 dropout={dropout} has no effect",
                          UserWarning, stacklevel=3)
        if not isinstance(proj_size, int) or proj_size < 0 or (proj_size and (
                proj_size >= hidden_size or self.mode != "LSTM")):
            raise ValueError(f"{name}: proj_size must be an int in [0, hidden_size) and only an "
                             f"LSTM has one, got {proj_size!r} (hidden_size {hidden_size})")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size = bidirectional, proj_size
        self.init = init
        gh = R._GATES[self.mode] * hidden_size
        n_out = proj_size or hidden_size  # h's features (the output's, per direction)
        dirs = 2 if bidirectional else 1

        def new(*shape):
            return Parameter(empty(*shape, device=device, dtype=dtype))

        for layer in range(num_layers):
            n_in = input_size if layer == 0 else n_out * dirs
            for sfx in ("", "_reverse")[:dirs]:
                setattr(self, f"weight_ih_l{layer}{sfx}", new(gh, n_in))
                setattr(self, f"weight_hh_l{layer}{sfx}", new(gh, n_out))
                if bias:
                    setattr(self, f"bias_ih_l{layer}{sfx}", new(gh))
                    setattr(self, f"bias_hh_l{layer}{sfx}", new(gh))
                if proj_size:
                    setattr(self, f"weight_hr_l{layer}{sfx}", new(proj_size, hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset(self, self.hidden_size, self.init)

    def flatten_parameters(self) -> None:
        """Nothing to do: PyTorch packs the weights into one cuDNN buffer here, while these
        layers read each parameter as it is. Ported code calls it after ``.to()`` or in
        ``forward``."""

    @property
    def _all_weights(self) -> list[list[str]]:
        """The parameter names per layer and direction, in PyTorch's order (w_ih, w_hh,
        b_ih, b_hh, w_hr)."""
        names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if self.bias else []) + \
            (["weight_hr"] if self.proj_size else [])
        sfxs = ("", "_reverse") if self.bidirectional else ("",)
        return [[f"{k}_l{layer}{s}" for k in names] for layer in range(self.num_layers)
                for s in sfxs]

    @property
    def all_weights(self) -> list[list[Parameter]]:
        """The parameters per layer and direction, as ``_all_weights`` names them."""
        return [[getattr(self, k) for k in names] for names in self._all_weights]

    @property
    def _flat_weights_names(self) -> list[str]:
        """``_all_weights`` as one list, PyTorch's name that ported code (weight drop) reads."""
        return [k for names in self._all_weights for k in names]

    @property
    def _flat_weights(self) -> list[Parameter]:
        """The tensors ``_flat_weights_names`` names, read afresh, so a replaced weight shows."""
        return [getattr(self, k) for k in self._flat_weights_names]

    def _weights(self, layer: int) -> list[tuple]:
        sfxs = ("", "_reverse") if self.bidirectional else ("",)
        return [tuple(getattr(self, f"{k}_l{layer}{s}") if self.bias or k.startswith("weight")
                      else None for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
                for s in sfxs]

    def _projections(self, layer: int) -> list | None:
        """The layer's w_hr per direction (``proj_size``), else None."""
        if not self.proj_size:
            return None
        return [getattr(self, f"weight_hr_l{layer}{s}")
                for s in (("", "_reverse") if self.bidirectional else ("",))]

    def _state_shapes(self, n: int) -> tuple[tuple, tuple]:
        """The shapes of h0 and c0 for a batch of ``n``: (num_layers·D, n, P or H), (…, H)."""
        lead = (self.num_layers * (2 if self.bidirectional else 1), n)
        return lead + (self.proj_size or self.hidden_size,), lead + (self.hidden_size,)

    def _check_state(self, h, want: tuple, what: str, unbatched: bool):
        name = type(self).__name__
        shape = want[::2] if unbatched else want
        if not isinstance(h, Tensor) or tuple(h.shape) != shape:
            got = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
            raise ShapeError(f"{name}: expected {what} of shape {shape} "
                             f"(num_layers * num_directions, {'' if unbatched else 'N, '}"
                             f"hidden_size), got {got}")
        return ops.reshape(h, want) if unbatched else h

    def _initial(self, hx, n: int, like: Tensor, unbatched: bool):
        """(h0, c0) for a batch of ``n`` from the caller's ``hx`` (None: zeros; c0 None unless
        LSTM)."""
        name = type(self).__name__
        want, want_c = self._state_shapes(n)
        if hx is None:
            h0 = zeros(*want, dtype=like.dtype, device=like.device)
            if self.mode != "LSTM":
                return h0, None
            return h0, h0 if want_c == want else zeros(*want_c, dtype=like.dtype,
                                                        device=like.device)
        if self.mode == "LSTM":
            if not isinstance(hx, tuple | list) or len(hx) != 2:
                raise ValueError(f"{name}: the initial state must be a pair (h0, c0)")
            return (self._check_state(hx[0], want, "h0", unbatched),
                    self._check_state(hx[1], want_c, "c0", unbatched))
        return self._check_state(hx, want, "h0", unbatched), None

    def _check_dtypes(self, x: Tensor, h0: Tensor, c0) -> None:
        """The input and initial states must have the weights' dtype (as PyTorch, nothing is
        converted): one clear error here, not a mixed-dtype one from inside the time loop. In
        an autocast region float32, float16 and bfloat16 mix, as PyTorch's check is off there
        (a Linear's bfloat16 output feeds an LSTM; the layer runs in the region's precision)."""
        w = next(self.parameters(), None)
        low = _REGION_FLOATS if x.device.type in current_regions() else ()
        for t, what in ((x, "input"), (h0, "h0"), (c0, "c0")):
            if t is not None and w is not None and t.dtype != w.dtype \
                    and not (t.dtype in low and w.dtype in low):
                raise DTypeError(f"{type(self).__name__}: the {what} has dtype {t.dtype} but "
                                 f"the layer's weights are {w.dtype}; convert the {what} (or "
                                 f"the layer, with .to(dtype)) first")

    def _layers(self, x: Tensor, h0: Tensor, c0, batch_first: bool):
        """Every layer over ``x`` (L, N, I) from (h0, c0): the output (L, N, D·H), h_n, c_n."""
        dirs = 2 if self.bidirectional else 1
        hs, cs = [], []
        for layer in range(self.num_layers):
            if layer and self.dropout and self.training:
                x = F.dropout(x, self.dropout, True)
            sl = slice(layer * dirs, (layer + 1) * dirs)
            h0l = h0 if self.num_layers == 1 else h0[sl]
            c0l = None if c0 is None else c0 if self.num_layers == 1 else c0[sl]
            x, h, c = R.recurrent_layer(x, h0l, c0l, self._weights(layer), self.mode,
                                        batch_first=batch_first,
                                        proj=self._projections(layer))
            hs.append(h)
            cs.append(c)
        h_n = hs[0] if len(hs) == 1 else ops.concatenate(hs, 0)
        c_n = (cs[0] if len(cs) == 1 else ops.concatenate(cs, 0)) if c0 is not None else None
        return x, h_n, c_n

    def forward(self, input: Tensor | PackedSequence, hx=None):
        """input (L, N, I) ((N, L, I) with batch_first), unbatched (L, I) or a PackedSequence;
        returns the output (…, D·H) (a PackedSequence for a packed input) and h_n
        (num_layers·D, N, H) — for LSTM (h_n, c_n) — as PyTorch."""
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx)
        name = type(self).__name__
        lead = "(N, L, " if self.batch_first else "(L, N, "
        if not isinstance(input, Tensor) or input.ndim not in (2, 3) \
                or input.shape[-1] != self.input_size:
            got = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
            raise ShapeError(f"{name}(input_size={self.input_size}): expected input of shape "
                             f"{lead}{self.input_size}) or unbatched (L, {self.input_size}), "
                             f"got {got}")
        unbatched = input.ndim == 2
        x = ops.expand_dims(input, 1) if unbatched else \
            ops.swapaxes(input, 0, 1) if self.batch_first else input
        if x.shape[0] == 0:
            raise ShapeError(f"{name}: expected a sequence length greater than 0, got input "
                             f"of shape {tuple(input.shape)}")
        h0, c0 = self._initial(hx, x.shape[1], x, unbatched)
        self._check_dtypes(input, h0, c0)
        x, h_n, c_n = self._layers(x, h0, c0, self.batch_first and not unbatched)
        if unbatched:
            x = ops.reshape(x, (x.shape[0], x.shape[2]))
            h_n = ops.reshape(h_n, (h_n.shape[0], h_n.shape[2]))
            c_n = None if c_n is None else ops.reshape(c_n, (c_n.shape[0], c_n.shape[2]))
        elif self.batch_first:
            x = ops.swapaxes(x, 0, 1)
        return (x, (h_n, c_n)) if self.mode == "LSTM" else (x, h_n)

    def _forward_packed(self, packed: PackedSequence, hx):
        """A packed batch: the sequences of each length run together through every layer, so
        each one's final state (and, bidirectional, the start of its reverse pass) is at its
        own last step, as PyTorch; ``hx`` and h_n are in the caller's batch order."""
        name = type(self).__name__
        data = packed.data
        if data.ndim != 2 or data.shape[-1] != self.input_size:
            raise ShapeError(f"{name}(input_size={self.input_size}): expected packed data of "
                             f"shape (sum of lengths, {self.input_size}), got "
                             f"{tuple(data.shape)}")
        padded, lengths = pad_packed_sequence(packed)                     # (T, N, I)
        np = B.np
        lens = lengths.numpy()
        n = lens.size
        h0, c0 = self._initial(hx, n, data, False)
        self._check_dtypes(data, h0, c0)
        groups = [np.flatnonzero(lens == k) for k in np.unique(lens)[::-1]]
        ys, hs, cs = [], [], []
        group, place, start, width = (np.empty(n, np.int64) for _ in range(4))
        offset = 0
        for g, idx in enumerate(groups):
            steps = int(lens[idx[0]])
            one = len(groups) == 1
            sel = None if one else tensor(idx).to(data.device)
            x = padded[:steps] if steps < padded.shape[0] else padded
            x = x if one else ops.index_select(x, 1, sel)
            h0g = h0 if one else ops.index_select(h0, 1, sel)
            c0g = c0 if one or c0 is None else ops.index_select(c0, 1, sel)
            y, h, c = self._layers(x, h0g, c0g, False)
            ys.append(ops.reshape(y, (-1, y.shape[-1])))
            hs.append(h)
            cs.append(c)
            group[idx], place[idx], start[idx], width[idx] = g, np.arange(idx.size), offset, \
                idx.size
            offset += steps * idx.size
        # packed row (t, s) holds sequence b = sorted_indices[s] at step t: row t·n_g + p of
        # its group's output, p its place in the group
        bs = packed.batch_sizes.numpy()
        perm = np.arange(n) if packed.sorted_indices is None else \
            packed.sorted_indices.numpy()
        t = np.repeat(np.arange(bs.size), bs)
        b = perm[np.arange(t.size) - np.repeat(np.cumsum(bs) - bs, bs)]
        rows = tensor(start[b] + t * width[b] + place[b]).to(data.device)
        out = ops.index_select(ys[0] if len(ys) == 1 else ops.concatenate(ys, 0), 0, rows)
        out = PackedSequence(out, packed.batch_sizes, packed.sorted_indices,
                             packed.unsorted_indices)
        back = None if len(groups) == 1 else \
            tensor(np.argsort(np.concatenate(groups), kind="stable")).to(data.device)

        def join(ts):
            t = ts[0] if len(ts) == 1 else ops.concatenate(ts, 1)
            return t if back is None else ops.index_select(t, 1, back)

        h_n = join(hs)
        return (out, (h_n, join(cs))) if self.mode == "LSTM" else (out, h_n)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:  # (second, as PyTorch prints it)
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for k, default in (("bias", True), ("batch_first", False), ("dropout", 0.0),
                           ("bidirectional", False)):
            if getattr(self, k) != default:
                s += f", {k}={getattr(self, k)}"
        return s


class RNN(RNNBase):
    """Elman RNN: h_t = act(x_t Wᵢₕᵀ + bᵢₕ + h_{t-1} Wₕₕᵀ + bₕₕ), act ``"tanh"`` or ``"relu"``.

    Default init as PyTorch: every weight and bias ~ U(±1/√hidden_size).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, init="default", device=None,
                 dtype=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, init=init, device=device, dtype=dtype)
        self.nonlinearity = nonlinearity
        self.mode = "RNN_RELU" if nonlinearity == "relu" else "RNN_TANH"  # one gate either way

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (", nonlinearity='relu'" if self.nonlinearity == "relu" else "")


class GRU(RNNBase):
    """Gated recurrent unit, PyTorch's gates (r, z, n):
    r, z = σ(Wᵢx + bᵢ + Wₕh + bₕ), n = tanh(Wᵢₙx + bᵢₙ + r ⊙ (Wₕₙh + bₕₙ)), h' = (1-z) n + z h.

    Default init as PyTorch: every weight and bias ~ U(±1/√hidden_size).
    """

    mode = "GRU"


class LSTM(RNNBase):
    """Long short-term memory, PyTorch's gates (i, f, g, o): c' = f c + i g, h' = o tanh(c').

    ``forward`` returns (output, (h_n, c_n)) and takes ``(h0, c0)``. Default init as PyTorch:
    every weight and bias ~ U(±1/√hidden_size).
    """

    mode = "LSTM"


# --- cells ------------------------------------------------------------------------------------
class RNNCellBase(Module):
    """Shared by RNNCell, GRUCell and LSTMCell (``torch.nn.RNNCellBase``): the parameters
    (``num_chunks`` blocks of hidden_size rows, one per gate; the cell's own count when None)
    and the input check."""

    gates = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 num_chunks: int | None = None, init="default", device=None, dtype=None):
        super().__init__()
        if num_chunks is not None:
            if isinstance(num_chunks, bool) or not isinstance(num_chunks, int) or num_chunks < 1:
                raise ValueError(f"{type(self).__name__}: num_chunks must be a positive int, got "
                                 f"{num_chunks!r}")
            if num_chunks != self.gates and type(self) is not RNNCellBase:
                raise ValueError(f"{type(self).__name__} has {self.gates} gate(s), got "
                                 f"num_chunks={num_chunks}")
            self.gates = num_chunks
        self.input_size, self.hidden_size, self.init = input_size, hidden_size, init
        self.bias = bias
        g = self.gates * hidden_size
        self.weight_ih = Parameter(empty(g, input_size, device=device, dtype=dtype))
        self.weight_hh = Parameter(empty(g, hidden_size, device=device, dtype=dtype))
        self.bias_ih = Parameter(empty(g, device=device, dtype=dtype)) if bias else None
        self.bias_hh = Parameter(empty(g, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset(self, self.hidden_size, self.init)

    def _args(self):
        return self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh

    def _check(self, x: Tensor) -> None:
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise ShapeError(f"{type(self).__name__}(input_size={self.input_size}): expected "
                             f"input of shape (N, {self.input_size}) or ({self.input_size},), "
                             f"got {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + (
            "" if self.bias_ih is not None else ", bias=False")


class RNNCell(RNNCellBase):
    """One Elman step (``nn.functional.rnn_cell``); default init U(±1/√hidden_size)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", init="default", device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, 1, init, device, dtype)
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNNCell: nonlinearity must be 'tanh' or 'relu', got "
                             f"{nonlinearity!r}")
        self.nonlinearity = nonlinearity

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        self._check(input)
        return R.rnn_cell(input, hx, *self._args(), nonlinearity=self.nonlinearity)


class GRUCell(RNNCellBase):
    """One GRU step (``nn.functional.gru_cell``); default init U(±1/√hidden_size)."""

    gates = 3

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, init="default",
                 device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, 3, init, device, dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        self._check(input)
        return R.gru_cell(input, hx, *self._args())


class LSTMCell(RNNCellBase):
    """One LSTM step (``nn.functional.lstm_cell``) returning (h', c'); default init
    U(±1/√hidden_size)."""

    gates = 4

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, init="default",
                 device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, 4, init, device, dtype)

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None):
        self._check(input)
        return R.lstm_cell(input, hx, *self._args())
