"""Attention layers: MultiheadAttention and TransformerEncoderLayer, in PyTorch's structure.

Parameter names match ``torch.nn`` (``in_proj_weight``, ``in_proj_bias``, ``out_proj``;
``self_attn``, ``linear1``, ``linear2``, ``norm1``, ``norm2``), so a PyTorch state dict loads and
reproduces the outputs. The math is in ``nn.rnn_functional.multi_head_attention``.
"""

from __future__ import annotations

from collections.abc import Callable

from ... import ops
from ...errors import ShapeError
from ...tensor import Tensor, empty
from .. import functional as F
from .. import init as I
from .. import rnn_functional as R
from ..module import Module, Parameter
from .dropout import Dropout
from .linear import Linear
from .norm import LayerNorm


class MultiheadAttention(Module):
    """Multi-head scaled dot-product attention: heads attend in E/num_heads-dim subspaces.

    ``forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
    average_attn_weights=True, is_causal=False)`` returns (output, weights) as PyTorch: inputs
    (L, N, E) or (N, L, E) with ``batch_first``, or unbatched (L, E); in boolean masks True means
    "may not attend", float masks are added to the scores. Default init as PyTorch: the packed
    in-projection Xavier-uniform, its bias and ``out_proj.bias`` zero, ``out_proj.weight``
    U(±1/√E). With ``kdim``/``vdim`` ≠ E the projections are separate (``q_proj_weight``, ...).
    ``add_bias_kv`` appends a learned key and value (``bias_k``, ``bias_v``, Xavier-normal) to
    every sequence after the projections, ``add_zero_attn`` a zero key and value after the
    heads' split; masks get a column that lets every query attend to each (as PyTorch).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = False, init="default", device=None,
                 dtype=None):
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0 or embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim ({embed_dim}) must be a positive "
                             f"multiple of num_heads ({num_heads})")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"MultiheadAttention: dropout must be in [0, 1], got {dropout}")
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, float(dropout)
        self.head_dim = embed_dim // num_heads
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self.batch_first, self.init = batch_first, init
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        E = embed_dim

        def new(*shape):
            return Parameter(empty(*shape, device=device, dtype=dtype))

        if self._qkv_same_embed_dim:
            self.in_proj_weight = new(3 * E, E)
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.register_parameter("in_proj_weight", None)
            self.q_proj_weight = new(E, E)
            self.k_proj_weight = new(E, self.kdim)
            self.v_proj_weight = new(E, self.vdim)
        if bias:
            self.in_proj_bias = new(3 * E)
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = Linear(E, E, bias=bias, device=device, dtype=dtype)
        if add_bias_kv:  # one learned key and value more for every sequence (after projection)
            self.bias_k, self.bias_v = new(1, 1, E), new(1, 1, E)
        else:
            self.bias_k = self.bias_v = None
        self.add_zero_attn = bool(add_zero_attn)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        ws = [self.in_proj_weight] if self._qkv_same_embed_dim else \
            [self.q_proj_weight, self.k_proj_weight, self.v_proj_weight]
        for w in ws:
            I.xavier_uniform_(w) if self.init == "default" else I.init_weight(w, self.init)
        if self.init != "default":
            I.init_weight(self.out_proj.weight, self.init)
        else:
            self.out_proj.reset_parameters()
        for b in (self.in_proj_bias, self.out_proj.bias):
            if b is not None:
                I.zeros_(b)
        for b in (self.bias_k, self.bias_v):
            if b is not None:
                I.xavier_normal_(b)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask=None,
                need_weights: bool = True, attn_mask=None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        E, name = self.embed_dim, "MultiheadAttention"
        lead = "N, L" if self.batch_first else "L, N"
        for t, what, n in ((query, "query", E), (key, "key", self.kdim),
                           (value, "value", self.vdim)):
            if t.ndim not in (2, 3) or t.shape[-1] != n or t.ndim != query.ndim:
                raise ShapeError(f"{name}(embed_dim={E}, num_heads={self.num_heads}): expected "
                                 f"{what} of shape ({lead}, {n}) or unbatched (L, {n}), got "
                                 f"{tuple(t.shape)} (query {tuple(query.shape)})")
        if self.batch_first and query.ndim == 3:
            same_kv = key is value
            self_attn = query is key and same_kv
            query = ops.swapaxes(query, 0, 1)
            key = query if self_attn else ops.swapaxes(key, 0, 1)
            value = key if same_kv else ops.swapaxes(value, 0, 1)
        out, w = R.multi_head_attention(
            query, key, value, self.num_heads, self.in_proj_weight, self.in_proj_bias,
            self.out_proj.weight, self.out_proj.bias, key_padding_mask=key_padding_mask,
            need_weights=need_weights, attn_mask=attn_mask,
            average_attn_weights=average_attn_weights, is_causal=is_causal,
            dropout_p=self.dropout, training=self.training, q_proj_weight=self.q_proj_weight,
            k_proj_weight=self.k_proj_weight, v_proj_weight=self.v_proj_weight,
            bias_k=self.bias_k, bias_v=self.bias_v, add_zero_attn=self.add_zero_attn)
        if self.batch_first and query.ndim == 3:
            out = ops.swapaxes(out, 0, 1)
        return out, w

    def extra_repr(self) -> str:
        s = f"embed_dim={self.embed_dim}, num_heads={self.num_heads}"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if not self._qkv_same_embed_dim:
            s += f", kdim={self.kdim}, vdim={self.vdim}"
        if self.bias_k is not None:
            s += ", add_bias_kv=True"
        if self.add_zero_attn:
            s += ", add_zero_attn=True"
        return s + (", batch_first=True" if self.batch_first else "")


_ACTIVATIONS: dict[str, Callable] = {"relu": F.relu, "gelu": F.gelu}


class TransformerEncoderLayer(Module):
    """Self-attention then a feed-forward block, each with a residual connection and LayerNorm.

    As PyTorch: post-norm x = norm1(x + sa(x)); x = norm2(x + ff(x)) by default, pre-norm
    x = x + sa(norm1(x)); x = x + ff(norm2(x)) with ``norm_first``; ff = linear2(dropout(act(
    linear1(x)))). Submodules ``self_attn``, ``linear1``, ``dropout``, ``linear2``, ``norm1``,
    ``norm2``, ``dropout1``, ``dropout2`` carry PyTorch's names; default init is PyTorch's
    (see MultiheadAttention and Linear), ``init=`` is passed to the attention and both linears.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1, activation: str | Callable = "relu",
                 layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True, init="default", device=None,
                 dtype=None):
        super().__init__()
        self.d_model = d_model
        if isinstance(activation, str):
            if activation not in _ACTIVATIONS:
                raise ValueError(f"TransformerEncoderLayer: activation must be 'relu', 'gelu' or "
                                 f"a callable, got {activation!r}")
            activation = _ACTIVATIONS[activation]
        kw = dict(device=device, dtype=dtype)
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias,
                                            batch_first=batch_first, init=init, **kw)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, init=init, **kw)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, init=init, **kw)
        self.norm_first = norm_first
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, **kw)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, **kw)
        if not bias:
            self.norm1.bias = None
            self.norm2.bias = None
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.activation = activation

    def forward(self, src: Tensor, src_mask=None, src_key_padding_mask=None,
                is_causal: bool = False) -> Tensor:
        """src (S, N, E) ((N, S, E) with batch_first) or unbatched (S, E); masks as in
        MultiheadAttention."""
        if src.ndim not in (2, 3) or src.shape[-1] != self.d_model:
            lead = "N, S" if self.self_attn.batch_first else "S, N"
            raise ShapeError(f"TransformerEncoderLayer(d_model={self.d_model}): expected src of "
                             f"shape ({lead}, {self.d_model}) or unbatched (S, {self.d_model}), "
                             f"got {tuple(src.shape)}")
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal))
            x = self.norm2(x + self._ff_block(x))
        return x

    def _sa_block(self, x, attn_mask, key_padding_mask, is_causal):
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                           need_weights=False, is_causal=is_causal)[0]
        return self.dropout1(x)

    def _ff_block(self, x):
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))
