"""Transformer layers built from nnlab's own MultiheadAttention, Linear, LayerNorm and
Dropout: ``TransformerEncoderLayer``, ``TransformerDecoderLayer``, ``TransformerEncoder``,
``TransformerDecoder``, positional encodings and ``generate_square_subsequent_mask``.

Their sub-layers carry torch's names (``self_attn``, ``linear1``, ``norm1``, ...,
``layers.0``), so ``state_dict`` keys and the order of ``params()`` are those of
``torch.nn``'s modules and weights copy across both ways.
"""

import copy
import math

import torch

from .activations import GELU
from .attention import MultiheadAttention
from .base import Layer, checked_bool, checked_int, checked_real
from .dense import Dropout, Linear, ReLU
from .norm import place
from .sample_norm import LayerNorm

__all__ = [
    "LearnedPositionalEncoding",
    "SinusoidalPositionalEncoding",
    "TransformerDecoder",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "generate_square_subsequent_mask",
]


def generate_square_subsequent_mask(size, device=None, dtype=None):
    """(size, size) float mask: 0 on and below the diagonal, -inf above it, so position i
    attends to positions 0..i. Same as ``torch.nn.Transformer.generate_square_subsequent_mask``."""
    size = checked_int("generate_square_subsequent_mask", "size", size, 0)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    return torch.triu(torch.full((size, size), -math.inf, dtype=dtype, device=device), diagonal=1)


def detect_causal(mask, is_causal, size):
    """torch's reading of a stack's ``is_causal=None``: True when ``mask`` is exactly the
    square subsequent mask (float, or bool True above the diagonal)."""
    if is_causal is not None:
        return checked_bool("Transformer", "is_causal", is_causal)
    if mask is None or mask.shape != (size, size):
        return False
    causal = generate_square_subsequent_mask(size, device=mask.device, dtype=torch.float64)
    if mask.dtype == torch.bool:
        return bool(torch.equal(mask, causal.isinf()))
    return bool(torch.equal(mask, causal.to(mask.dtype)))


_ACTIVATIONS = {"relu": ReLU, "gelu": GELU}


def _activation_name(owner, activation):
    """'relu' or 'gelu' for those names or torch.nn.functional's relu and gelu (torch's
    default spelling); None for an nnlab Layer."""
    if activation in (torch.nn.functional.relu, torch.nn.functional.gelu):
        return activation.__name__
    if isinstance(activation, str) and activation in _ACTIVATIONS:
        return activation
    if isinstance(activation, Layer):
        return None
    raise ValueError(f"{owner}: activation must be 'relu', 'gelu' or an nnlab Layer, got {activation!r}")


class _FeedForward:
    """``linear2(dropout(activation(linear1(x))))`` and its backward, over a layer that
    has those four children (torch's names). An idle dropout (eval mode or p = 0) is
    skipped, so that linear2 keeps the activation's output rather than a copy of it."""

    def feed_forward(self, x):
        hidden = self.activation(self.linear1(x))
        self._feed_forward_drops = self.dropout.training and self.dropout.p > 0
        if self._feed_forward_drops:
            hidden = self.dropout(hidden)
        return self.linear2(hidden)

    def feed_forward_vjp(self, dout):
        dhidden = self.linear2.backward(dout)
        if self._feed_forward_drops:
            dhidden = self.dropout.backward(dhidden)
        return self.linear1.backward(self.activation.backward(dhidden))


def _self_attention_vjp(attention, dout):
    """d input of ``attention(x, x, x)[0]``: the sum of dquery, dkey and dvalue."""
    dquery, dkey, dvalue = attention.backward((dout, None))
    return dquery + dkey + dvalue


class _Block(Layer, _FeedForward):
    """What the encoder and decoder layers share: torch's constructor ``(d_model, nhead,
    dim_feedforward=2048, dropout=0.1, activation='relu', layer_norm_eps=1e-5,
    batch_first=False, norm_first=False, bias=True, device=None, dtype=None)``, the
    feed-forward part, one LayerNorm and one Dropout per residual step (``STEPS``), and
    the children in torch's order (``CHILDREN``)."""

    CHILDREN = ()
    STEPS = 0

    def __init__(
        self,
        d_model,
        nhead,
        dim_feedforward=2048,
        dropout=0.1,
        activation="relu",
        layer_norm_eps=1e-5,
        batch_first=False,
        norm_first=False,
        bias=True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        owner = type(self).__name__
        self.d_model = checked_int(owner, "d_model", d_model, 1)
        self.nhead = checked_int(owner, "nhead", nhead, 1)
        self.dim_feedforward = checked_int(owner, "dim_feedforward", dim_feedforward, 1)
        self.dropout_p = checked_real(owner, "dropout", dropout, 0.0, 1.0)
        self.layer_norm_eps = checked_real(owner, "layer_norm_eps", layer_norm_eps, 0.0)
        self.batch_first = checked_bool(owner, "batch_first", batch_first)
        self.norm_first = checked_bool(owner, "norm_first", norm_first)
        self.has_bias = checked_bool(owner, "bias", bias)
        self.activation_name = _activation_name(owner, activation)
        self.self_attn = self.attention()
        if "multihead_attn" in self.CHILDREN:
            self.multihead_attn = self.attention()
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias)
        if self.activation_name is None:
            self.activation = copy.deepcopy(activation)
        else:
            self.activation = _ACTIVATIONS[self.activation_name]()
        for step in range(1, self.STEPS + 1):
            setattr(self, f"norm{step}", self.layer_norm())
            setattr(self, f"dropout{step}", Dropout(dropout))
        place(self, device, dtype)

    def attention(self):
        return MultiheadAttention(self.d_model, self.nhead, dropout=self.dropout_p, bias=self.has_bias, batch_first=self.batch_first)

    def layer_norm(self):
        return LayerNorm(self.d_model, eps=self.layer_norm_eps, bias=self.has_bias)

    def named_children(self):
        return [(name, getattr(self, name)) for name in self.CHILDREN]

    def __repr__(self):
        return (
            f"{type(self).__name__}(d_model={self.d_model}, nhead={self.nhead}, dim_feedforward={self.dim_feedforward}, "
            f"dropout={self.dropout_p}, norm_first={self.norm_first}, batch_first={self.batch_first})"
        )

    def check_model_input(self, name, x):
        ok = lambda x: x.dim() in (2, 3) and x.shape[-1] == self.d_model
        expected = "(N, L, d_model)" if self.batch_first else "(L, N, d_model)"
        self.check_input(x, f"{expected} or (L, d_model) for {name}, d_model={self.d_model}", ok)
        self.check_dtype(x)

    def sublayer(self, x, block, norm, drop):
        """One residual step: ``x + drop(block(norm(x)))`` (norm_first) or
        ``norm(x + drop(block(x)))``."""
        if self.norm_first:
            return x + drop(block(norm(x)))
        return norm(x + drop(block(x)))

    def sublayer_vjp(self, dout, block_vjp, norm, drop):
        """The VJP of ``sublayer``: d x, where ``block_vjp`` maps d block-output to d block-input."""
        if self.norm_first:
            return dout + norm.backward(block_vjp(drop.backward(dout)))
        dsum = norm.backward(dout)
        return dsum + block_vjp(drop.backward(dsum))


class TransformerEncoderLayer(_Block):
    """Self-attention and a feed-forward network, each in a residual step with a
    LayerNorm. Same as ``torch.nn.TransformerEncoderLayer``, with its constructor
    ``(d_model, nhead, dim_feedforward=2048, dropout=0.1, activation='relu', layer_norm_eps=1e-5,
    batch_first=False, norm_first=False, bias=True, device=None, dtype=None)``.

    Forward ``(src, src_mask=None, src_key_padding_mask=None, is_causal=False)``, with
    ``sa(x) = self_attn(x, x, x, attn_mask=src_mask, key_padding_mask=..., need_weights=False,
    is_causal=is_causal)[0]`` and ``ff(x) = linear2(dropout(activation(linear1(x))))``:
        post-norm (default): ``x = norm1(x + dropout1(sa(x)))``; ``x = norm2(x + dropout2(ff(x)))``;
        ``norm_first``: ``x = x + dropout1(sa(norm1(x)))``; ``x = x + dropout2(ff(norm2(x)))``.
    Backward ``dout`` -> ``dsrc``, the chain rule through those steps: a residual step
    passes dout on and adds the block's VJP; self-attention's input gradient is
    dquery + dkey + dvalue.
    Shapes: src (L, N, d_model) (``batch_first``: (N, L, d_model); unbatched (L, d_model)) -> same.
    Children (torch's names and order): ``self_attn``, ``linear1``, ``dropout``, ``linear2``,
    ``norm1``, ``norm2``, ``dropout1``, ``dropout2``, ``activation`` ('relu', 'gelu' or an nnlab
    Layer). Masks as ``MultiheadAttention`` takes them; a query whose keys are all masked
    gives weights 0 there (need_weights=False), as torch.
    Caches: nothing itself; each child caches its own (see theirs). torch's inference
    fast path (eval, no autograd, nested tensors) is not reproduced: padded positions
    keep the values computed here rather than torch's zeros there.

    Example::

        >>> import torch
        >>> from nnlab.grad_compare import check_layer
        >>> from nnlab.layers import TransformerEncoderLayer
        >>> layer = TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0, batch_first=True)
        >>> x = torch.randn(2, 5, 8)
        >>> layer(x).shape
        torch.Size([2, 5, 8])
        >>> check_layer(layer, x).passed             # against autograd and torch.nn.TransformerEncoderLayer
        True
    """

    CHILDREN = ("self_attn", "linear1", "dropout", "linear2", "norm1", "norm2", "dropout1", "dropout2", "activation")
    STEPS = 2

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False, **kw):
        self.check_model_input("src", src)
        masks = {"attn_mask": src_mask, "key_padding_mask": src_key_padding_mask, "is_causal": is_causal}
        attend = lambda x: self.self_attn(x, x, x, need_weights=False, **masks)[0]
        x = self.sublayer(src, attend, self.norm1, self.dropout1)
        x = self.sublayer(x, self.feed_forward, self.norm2, self.dropout2)
        return self.finish_forward(x)

    def backward(self, dout):
        self.start_backward(dout)
        dx = self.sublayer_vjp(dout, self.feed_forward_vjp, self.norm2, self.dropout2)
        return self.sublayer_vjp(dx, lambda d: _self_attention_vjp(self.self_attn, d), self.norm1, self.dropout1)


class TransformerDecoderLayer(_Block):
    """Self-attention, attention over the encoder's output (memory) and a feed-forward
    network, each in a residual step with a LayerNorm. Same as
    ``torch.nn.TransformerDecoderLayer``; its constructor is ``TransformerEncoderLayer``'s.

    Forward ``(tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
    memory_key_padding_mask=None, tgt_is_causal=False, memory_is_causal=False)``, with sa and
    ff as in ``TransformerEncoderLayer`` and ``mha(x) = multihead_attn(x, memory, memory,
    attn_mask=memory_mask, ...)[0]``:
        post-norm: ``x = norm1(x + dropout1(sa(x)))``, ``x = norm2(x + dropout2(mha(x)))``,
        ``x = norm3(x + dropout3(ff(x)))``; ``norm_first``: ``x = x + dropout1(sa(norm1(x)))``, ...
    Backward ``dout`` -> ``(dtgt, dmemory)``: the chain rule through those steps; dmemory is
    the cross-attention's dkey + dvalue.
    Shapes: tgt (T, N, d_model), memory (S, N, d_model) (``batch_first``: batch first;
    unbatched: no batch dim) -> like tgt.
    Children (torch's names and order): ``self_attn``, ``multihead_attn``, ``linear1``,
    ``dropout``, ``linear2``, ``norm1``, ``norm2``, ``norm3``, ``dropout1``, ``dropout2``,
    ``dropout3``, ``activation``.
    Caches: nothing itself; each child caches its own.
    """

    CHILDREN = (
        "self_attn", "multihead_attn", "linear1", "dropout", "linear2",
        "norm1", "norm2", "norm3", "dropout1", "dropout2", "dropout3", "activation",
    )
    STEPS = 3

    def forward(
        self,
        tgt,
        memory,
        tgt_mask=None,
        memory_mask=None,
        tgt_key_padding_mask=None,
        memory_key_padding_mask=None,
        tgt_is_causal=False,
        memory_is_causal=False,
        **kw,
    ):
        self.check_model_input("tgt", tgt)
        self.check_model_input("memory", memory)
        if memory.dim() != tgt.dim():
            raise ValueError(f"{self!r}: tgt and memory must both be batched or both unbatched, got {tuple(tgt.shape)} and {tuple(memory.shape)}")
        self_masks = {"attn_mask": tgt_mask, "key_padding_mask": tgt_key_padding_mask, "is_causal": tgt_is_causal}
        memory_masks = {"attn_mask": memory_mask, "key_padding_mask": memory_key_padding_mask, "is_causal": memory_is_causal}
        attend_self = lambda x: self.self_attn(x, x, x, need_weights=False, **self_masks)[0]
        attend_memory = lambda x: self.multihead_attn(x, memory, memory, need_weights=False, **memory_masks)[0]
        x = self.sublayer(tgt, attend_self, self.norm1, self.dropout1)
        x = self.sublayer(x, attend_memory, self.norm2, self.dropout2)
        x = self.sublayer(x, self.feed_forward, self.norm3, self.dropout3)
        return self.finish_forward(x)

    def _memory_attention_vjp(self, dout):
        dquery, dkey, dvalue = self.multihead_attn.backward((dout, None))
        self._dmemory = dkey + dvalue
        return dquery

    def backward(self, dout):
        self.start_backward(dout)
        dx = self.sublayer_vjp(dout, self.feed_forward_vjp, self.norm3, self.dropout3)
        dx = self.sublayer_vjp(dx, self._memory_attention_vjp, self.norm2, self.dropout2)
        dx = self.sublayer_vjp(dx, lambda d: _self_attention_vjp(self.self_attn, d), self.norm1, self.dropout1)
        return dx, self._dmemory


class _Stack(Layer):
    """``num_layers`` deep copies of one layer (children ``layers.0``, ``layers.1``, ...)
    and an optional final ``norm``, as torch's encoder and decoder hold them."""

    def __init__(self, owner, layer, layer_class, num_layers, norm):
        super().__init__()
        if not isinstance(layer, layer_class):
            raise TypeError(f"{owner}: expected a {layer_class.__name__}, got {type(layer).__name__}")
        num_layers = checked_int(owner, "num_layers", num_layers, 1)
        if norm is not None and not isinstance(norm, Layer):
            raise TypeError(f"{owner}: norm must be an nnlab Layer or None, got {type(norm).__name__}")
        self.layers = [copy.deepcopy(layer) for _ in range(num_layers)]
        self.num_layers = num_layers
        self.norm = norm

    def named_children(self):
        children = [(f"layers.{index}", layer) for index, layer in enumerate(self.layers)]
        return children + ([("norm", self.norm)] if self.norm is not None else [])

    def __repr__(self):
        return f"{type(self).__name__}({self.layers[0]!r}, num_layers={self.num_layers}, norm={self.norm!r})"

    def final_norm(self, x):
        return x if self.norm is None else self.norm(x)

    def final_norm_vjp(self, dout):
        return dout if self.norm is None else self.norm.backward(dout)

    def sequence_length(self, x):
        batched_first = self.layers[0].batch_first and x.dim() == 3
        return x.shape[1] if batched_first else x.shape[0]


class TransformerEncoder(_Stack):
    """A stack of ``num_layers`` copies of a ``TransformerEncoderLayer`` and an optional
    final norm. Same as ``torch.nn.TransformerEncoder`` (``enable_nested_tensor`` and
    ``mask_check`` steer torch's inference fast path only, and are accepted and unused).

    Forward ``(src, mask=None, src_key_padding_mask=None, is_causal=None)``: ``x = src``;
    ``x = layer_i(x, mask, src_key_padding_mask, is_causal)`` for each layer; ``norm(x)``.
    ``is_causal=None`` is read from the mask as torch reads it (True when it is exactly
    ``generate_square_subsequent_mask``).
    Backward ``dout`` -> ``dsrc``: the layers' backward in reverse.
    Shapes: as ``TransformerEncoderLayer``. Caches: nothing itself.
    """

    def __init__(self, encoder_layer, num_layers, norm=None, enable_nested_tensor=True, mask_check=True):
        super().__init__("TransformerEncoder", encoder_layer, TransformerEncoderLayer, num_layers, norm)

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None, **kw):
        is_causal = detect_causal(mask, is_causal, self.sequence_length(src) if isinstance(src, torch.Tensor) else 0)
        x = src
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=is_causal)
        return self.finish_forward(self.final_norm(x))

    def backward(self, dout):
        self.start_backward(dout)
        dx = self.final_norm_vjp(dout)
        for layer in reversed(self.layers):
            dx = layer.backward(dx)
        return dx


class TransformerDecoder(_Stack):
    """A stack of ``num_layers`` copies of a ``TransformerDecoderLayer`` and an optional
    final norm. Same as ``torch.nn.TransformerDecoder``.

    Forward ``(tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
    memory_key_padding_mask=None, tgt_is_causal=None, memory_is_causal=False)``: every layer
    gets the same memory and masks; ``tgt_is_causal=None`` is read from tgt_mask as torch does.
    Backward ``dout`` -> ``(dtgt, dmemory)``: the layers' backward in reverse, dmemory
    summed over the layers.
    Shapes: as ``TransformerDecoderLayer``. Caches: nothing itself.
    """

    def __init__(self, decoder_layer, num_layers, norm=None):
        super().__init__("TransformerDecoder", decoder_layer, TransformerDecoderLayer, num_layers, norm)

    def forward(
        self,
        tgt,
        memory,
        tgt_mask=None,
        memory_mask=None,
        tgt_key_padding_mask=None,
        memory_key_padding_mask=None,
        tgt_is_causal=None,
        memory_is_causal=False,
        **kw,
    ):
        tgt_is_causal = detect_causal(tgt_mask, tgt_is_causal, self.sequence_length(tgt) if isinstance(tgt, torch.Tensor) else 0)
        x = tgt
        for layer in self.layers:
            x = layer(
                x,
                memory,
                tgt_mask=tgt_mask,
                memory_mask=memory_mask,
                tgt_key_padding_mask=tgt_key_padding_mask,
                memory_key_padding_mask=memory_key_padding_mask,
                tgt_is_causal=tgt_is_causal,
                memory_is_causal=memory_is_causal,
            )
        return self.finish_forward(self.final_norm(x))

    def backward(self, dout):
        self.start_backward(dout)
        dx = self.final_norm_vjp(dout)
        dmemory = None
        for layer in reversed(self.layers):
            dx, dlayer_memory = layer.backward(dx)
            dmemory = dlayer_memory if dmemory is None else dmemory + dlayer_memory
        return dx, dmemory


def sinusoids(length, d_model, dtype, device=None):
    """(length, d_model) table: ``[pos, 2i] = sin(pos / 10000^(2i / d_model))``,
    ``[pos, 2i + 1] = cos(pos / 10000^(2i / d_model))``, computed in float64."""
    position = torch.arange(length, dtype=torch.float64, device=device).unsqueeze(1)
    exponents = torch.arange(0, d_model, 2, dtype=torch.float64, device=device) / d_model
    angles = position / torch.pow(10000.0, exponents)
    table = torch.zeros(length, d_model, dtype=torch.float64, device=device)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : d_model // 2])
    return table.to(dtype)


class SinusoidalPositionalEncoding(Layer):
    """Adds the fixed sinusoidal position code of "Attention is all you need":
    ``out[pos] = x[pos] + pe[pos]`` with ``pe[pos, 2i] = sin(pos / 10000^(2i / d_model))``,
    ``pe[pos, 2i + 1] = cos(pos / 10000^(2i / d_model))``. (torch.nn has no such module; this
    is the code of PyTorch's Transformer tutorial, without its dropout and its buffer: the
    table is formed in float64 at each call, so it is exact in any dtype.)

    Backward: ``dx = dout``. Shapes: (L, N, d_model) (``batch_first``: (N, L, d_model);
    unbatched (L, d_model)) -> same, L <= max_len. No parameters. Caches: nothing.
    """

    def __init__(self, d_model, max_len=5000, batch_first=False):
        super().__init__()
        self.d_model = checked_int("SinusoidalPositionalEncoding", "d_model", d_model, 1)
        self.max_len = checked_int("SinusoidalPositionalEncoding", "max_len", max_len, 1)
        self.batch_first = checked_bool("SinusoidalPositionalEncoding", "batch_first", batch_first)

    def __repr__(self):
        return f"SinusoidalPositionalEncoding({self.d_model}, max_len={self.max_len})"

    def forward(self, x, **kw):
        positions = _positions(self, x)
        length = self._length(x)
        return self.finish_forward(x + positions(sinusoids(length, self.d_model, x.dtype, x.device)))

    def _length(self, x):
        return x.shape[1] if self.batch_first and x.dim() == 3 else x.shape[0]

    def backward(self, dout):
        self.start_backward(dout)
        return dout if self.needs_input_grad else None


class LearnedPositionalEncoding(Layer):
    """Adds a trained vector per position: ``out[pos] = x[pos] + weight[pos]`` (an
    embedding of the positions, as GPT and BERT learn them).

    Backward: ``dx = dout``; ``dweight[pos] += sum of dout[pos]`` over the batch.
    Shapes: (L, N, d_model) (``batch_first``: (N, L, d_model); unbatched (L, d_model)) -> same,
    L <= max_len.
    Parameter: ``weight`` (max_len, d_model) ~ N(0, 1), as ``torch.nn.Embedding``'s.
    Caches: the input's shape.
    """

    def __init__(self, max_len, d_model, batch_first=False, device=None, dtype=None):
        super().__init__()
        self.max_len = checked_int("LearnedPositionalEncoding", "max_len", max_len, 1)
        self.d_model = checked_int("LearnedPositionalEncoding", "d_model", d_model, 1)
        self.batch_first = checked_bool("LearnedPositionalEncoding", "batch_first", batch_first)
        self.add_param("weight", torch.randn(max_len, d_model))
        place(self, device, dtype)
        self._shape = None

    def __repr__(self):
        return f"LearnedPositionalEncoding({self.max_len}, {self.d_model})"

    def forward(self, x, **kw):
        positions = _positions(self, x)
        self.check_dtype(x)
        self._shape = x.shape
        return self.finish_forward(x + positions(self.weight))

    def backward(self, dout):
        self.start_backward(dout)
        length = self._sequence_length()
        if dout.dim() == 3:
            per_position = dout.sum(dim=0 if self.batch_first else 1)
        else:
            per_position = dout
        self._grads["weight"][:length] += per_position
        return dout if self.needs_input_grad else None

    def _sequence_length(self):
        return self._shape[1] if self.batch_first and len(self._shape) == 3 else self._shape[0]


def _positions(layer, x):
    """Checks x (L, N, d_model), (N, L, d_model) or (L, d_model) against ``layer``'s
    max_len and d_model; returns a function that lays a (max_len, d_model) table over x."""
    ok = lambda x: x.dim() in (2, 3) and x.shape[-1] == layer.d_model
    layout = "(N, L, d_model)" if layer.batch_first else "(L, N, d_model)"
    layer.check_input(x, f"{layout} or (L, d_model) with d_model={layer.d_model}", ok)
    batch_first = layer.batch_first and x.dim() == 3
    length = x.shape[1] if batch_first else x.shape[0]
    if length > layer.max_len:
        raise ValueError(f"{layer!r}: sequence length {length} exceeds max_len={layer.max_len}")
    if x.dim() == 2:
        return lambda table: table[:length]
    if batch_first:
        return lambda table: table[:length].unsqueeze(0)
    return lambda table: table[:length].unsqueeze(1)
