"""Attention: ``ScaledDotProductAttention`` and ``MultiheadAttention``, with hand-written
backward passes.

Both rest on one pair of functions: ``attend`` (scores, softmax, dropout, weighted sum)
and ``attend_vjp`` (its vector-Jacobian product). ``attend`` keeps q, k, v and the mask,
not the (L, S) matrix of weights; ``attend_vjp`` forms the weights again from them (one
matrix product and a softmax), as torch's own CPU attention kernel does, so that the
memory kept between forward and backward grows with L + S, not L * S (without dropout).

Fully masked rows (a query whose keys are all masked): torch 2.13 answers them in two
ways, and nnlab follows each. ``torch.nn.functional.scaled_dot_product_attention``, and
``torch.nn.MultiheadAttention`` with ``need_weights=False``, give such a row weights 0,
so its attention output is 0 (``MultiheadAttention``'s output is then ``out_proj.bias``)
and no gradient flows through it. ``torch.nn.MultiheadAttention`` with
``need_weights=True`` (its default) takes a plain softmax of a row of -inf: its weights
and its output are NaN, and the NaN reaches the gradients of every parameter and input
that the row touches.
"""

import math

import torch

from .base import Layer, checked_bool, checked_int, checked_real, describe
from .dense import Linear, dropout_mask
from .norm import place

__all__ = ["MultiheadAttention", "ScaledDotProductAttention"]


class AttentionCache:
    """What ``attend`` keeps for ``attend_vjp``: the inputs q, k, v, the additive bias
    (or None), the scale, the rows whose scores are all -inf, set to 0 (a bool tensor
    (*, L, 1), or None), the scaled dropout mask (or None) and, when kept, the weights."""

    def __init__(self, q, k, v, bias, scale, zero_masked_rows):
        self.q = q
        self.k = k
        self.v = v
        self.bias = bias
        self.scale = scale
        self.zero_masked_rows = zero_masked_rows
        self.zeroed_rows = None
        self.drop = None
        self.weights = None

    def tensors(self):
        tensors = (self.q, self.k, self.v, self.bias, self.zeroed_rows, self.drop, self.weights)
        return tuple(t for t in tensors if t is not None)

    def softmax(self):
        """The weights before dropout, ``softmax(scale * q @ k^T + bias)``, with each row
        whose scores are all -inf set to 0 (with ``zero_masked_rows``; NaN, the softmax of
        such a row, without): the kept weights, or formed again (the zeroed rows, found
        in forward, are kept)."""
        if self.weights is not None:
            return self.weights
        scores = torch.matmul(self.q * self.scale, self.k.transpose(-2, -1))
        if self.bias is not None:
            # In place on the product's fresh output, which autograd does not keep.
            scores += self.bias
        if self.zero_masked_rows:
            # A row's max is -inf exactly when all its scores are (NaN gives NaN).
            rows = scores.amax(dim=-1, keepdim=True) == -math.inf if scores.numel() else None
            self.zeroed_rows = rows if rows is not None and rows.any() else None
            self.zero_masked_rows = False
        weights = torch.softmax(scores, dim=-1)
        if self.zeroed_rows is not None:
            weights = weights.masked_fill(self.zeroed_rows, 0.0)
        return weights


def attend(q, k, v, bias, scale, dropout_p, zero_masked_rows, keep_weights=False):
    """``(out, weights, cache)`` with ``weights = dropout(softmax(scale * q @ k^T + bias))``
    and ``out = weights @ v``; q (*, L, E), k (*, S, E), v (*, S, Ev), bias broadcastable
    to (*, L, S) (0 where allowed, -inf where masked) or None. A row whose scores are all
    -inf (a fully masked query) gets weights 0 with ``zero_masked_rows``, NaN without
    (see the module docstring). ``keep_weights``: the cache keeps the weights before
    dropout (for a caller that returns them anyway, as autograd would keep them) rather
    than forming them again in backward."""
    cache = AttentionCache(q, k, v, bias, scale, zero_masked_rows)
    weights = cache.softmax()
    if keep_weights:
        cache.weights = weights
    if dropout_p > 0:
        cache.drop = dropout_mask(weights.shape, dropout_p, weights)
        weights = weights * cache.drop
    out = torch.matmul(weights, v)
    return out, weights, cache


def attend_vjp(cache, dout, dweights=None):
    """(dq, dk, dv) of ``attend`` given dout (*, L, Ev) and, when the caller handed the
    weights on, their gradient dweights (broadcastable to (*, L, S)) or None. With P the
    softmax (formed again), D the dropout mask and ``W = P * D``: ``dv = W^T @ dout``,
    ``dW = dout @ v^T + dweights``, ``dP = dW * D``, ``dscores = P * dP - P * rowsum(P * dP)``,
    ``dq = scale * dscores @ k``, ``dk = scale * dscores^T @ q``. A zeroed row has P = 0
    and so no gradient."""
    weights = cache.softmax()
    dropped = weights if cache.drop is None else weights * cache.drop
    dv = torch.matmul(dropped.transpose(-2, -1), dout)
    dweights_total = torch.matmul(dout, cache.v.transpose(-2, -1))
    if dweights is not None:
        dweights_total = dweights_total + dweights
    if cache.drop is not None:
        dweights_total = dweights_total * cache.drop
    weighted = weights * dweights_total
    dscores = torch.addcmul(weighted, weights, weighted.sum(dim=-1, keepdim=True), value=-1)
    dq = torch.matmul(dscores, cache.k) * cache.scale
    dk = torch.matmul(dscores.transpose(-2, -1), cache.q) * cache.scale
    return dq, dk, dv


def causal_bias(query_len, key_len, like):
    """(L, S) additive mask: 0 on and below the diagonal, -inf above (query i sees keys
    0..i), as torch's ``is_causal``."""
    allowed = torch.ones(query_len, key_len, dtype=torch.bool, device=like.device).tril()
    return mask_to_bias(allowed.logical_not(), like)


def mask_to_bias(masked, like):
    """A boolean mask (True = masked) as an additive float mask in ``like``'s dtype."""
    zeros = torch.zeros(masked.shape, dtype=like.dtype, device=like.device)
    return zeros.masked_fill(masked, -math.inf)


def _check_tensor(owner, name, value):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{owner}: expected {name} as a torch.Tensor, got {describe(value)}")


def _check_mask(owner, name, mask, like):
    """TypeError/ValueError naming ``owner`` unless ``mask`` is a bool or floating tensor
    (floating in ``like``'s dtype)."""
    _check_tensor(owner, name, mask)
    if mask.dtype != torch.bool and mask.dtype != like.dtype:
        raise ValueError(f"{owner}: {name} must be a bool tensor or a {like.dtype} tensor, got {mask.dtype}")


class ScaledDotProductAttention(Layer):
    """Scaled dot-product attention: ``out = dropout(softmax(q k^T * scale + mask)) v``.
    Same as ``torch.nn.functional.scaled_dot_product_attention`` (torch has no module of it),
    with ``dropout_p`` a constructor argument (``dropout``) applied in training mode only.

    Forward ``(query, key, value, attn_mask=None, is_causal=False, scale=None)``:
    query (*, L, E), key (*, S, E), value (*, S, Ev) with the same leading dims (the
    batch and heads, or none); ``scale`` defaults to 1 / sqrt(E). ``attn_mask``
    broadcastable to (*, L, S) (a 2-d (L, S) mask serves every batch and head): a bool
    mask says where attention is *allowed* (True takes part, as in torch's function; the
    opposite of ``MultiheadAttention``'s masks), a float mask is added to the scores.
    ``is_causal``: query i sees keys 0..i (torch refuses it with a mask, and so does this).
    A query whose keys are all masked gets weights 0 and an output of 0, as torch's
    function gives it.
    Backward ``dout`` (*, L, Ev) -> ``(dquery, dkey, dvalue)``: with P the softmax, D the
    dropout mask, W = P * D: ``dvalue = W^T dout``, ``dP = (dout value^T) * D``,
    ``dscores = P * (dP - rowsum(dP * P))``, ``dquery = scale * dscores key``,
    ``dkey = scale * dscores^T query``. The mask gets no gradient.
    Caches: query, key, value, the mask (as an additive float tensor), which rows are
    fully masked and the dropout mask (training with dropout > 0); the weights are formed
    again in backward.
    """

    SAVED_TENSORS = ("_saved",)

    def __init__(self, dropout=0.0):
        super().__init__()
        self.dropout = checked_real("ScaledDotProductAttention", "dropout", dropout, 0.0, 1.0)
        self._cache = None
        self._saved = ()

    def __repr__(self):
        return f"ScaledDotProductAttention(dropout={self.dropout})"

    def forward(self, query, key, value, attn_mask=None, is_causal=False, scale=None, **kw):
        owner = repr(self)
        for name, tensor in (("query", query), ("key", key), ("value", value)):
            _check_tensor(owner, name, tensor)
        self._check_shapes(query, key, value)
        is_causal = checked_bool(owner, "is_causal", is_causal)
        bias = None
        if attn_mask is not None:
            if is_causal:
                raise ValueError(f"{owner}: give attn_mask or is_causal=True, not both (as torch)")
            _check_mask(owner, "attn_mask", attn_mask, query)
            bias = mask_to_bias(attn_mask.logical_not(), query) if attn_mask.dtype == torch.bool else attn_mask
            self._check_broadcast(bias, query, key)
        elif is_causal:
            bias = causal_bias(query.shape[-2], key.shape[-2], query)
        if scale is None:
            scale = 1.0 / math.sqrt(query.shape[-1])
        else:
            scale = checked_real(owner, "scale", scale)
        dropout_p = self.dropout if self.training else 0.0
        out, _, self._cache = attend(query, key, value, bias, scale, dropout_p, zero_masked_rows=True)
        self._saved = self._cache.tensors()
        return self.finish_forward(out)

    def _check_shapes(self, query, key, value):
        if query.dim() < 2 or key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(
                f"{self!r}: expected query (*, L, E), key (*, S, E) and value (*, S, Ev) with as many "
                f"dims, got {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
            )
        if (
            key.shape[-1] != query.shape[-1]
            or value.shape[-2] != key.shape[-2]
            or key.shape[:-2] != query.shape[:-2]
            or value.shape[:-2] != query.shape[:-2]
        ):
            raise ValueError(
                f"{self!r}: expected query (*, L, E), key (*, S, E), value (*, S, Ev) with the same "
                f"leading dims, got {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
            )
        if len({query.dtype, key.dtype, value.dtype}) != 1 or not query.is_floating_point():
            raise ValueError(
                f"{self!r}: expected floating query, key and value of one dtype, "
                f"got {query.dtype}, {key.dtype}, {value.dtype}"
            )

    def _check_broadcast(self, bias, query, key):
        target = (*query.shape[:-1], key.shape[-2])
        try:
            fits = torch.broadcast_shapes(bias.shape, target) == torch.Size(target)
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"{self!r}: attn_mask of shape {tuple(bias.shape)} does not broadcast to {target}")

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        return attend_vjp(self._cache, dout)


class MultiheadAttention(Layer):
    """Multi-head attention. Same as ``torch.nn.MultiheadAttention``.

    Forward ``(query, key, value, key_padding_mask=None, need_weights=True,
    attn_mask=None, average_attn_weights=True, is_causal=False)``, per head h of
    ``head_dim = embed_dim / num_heads``:
        ``q = query W_q^T + b_q``, ``k = key W_k^T + b_k``, ``v = value W_v^T + b_v``;
        ``A_h = dropout(softmax(q_h k_h^T / sqrt(head_dim) + mask))``, ``o_h = A_h v_h``;
        ``out = concat_h(o_h) W_o^T + b_o``.
    ``attn_mask`` (L, S) or (N * num_heads, L, S), ``key_padding_mask`` (N, S) (or (S,)
    unbatched): bool True = masked, float added to the scores; both are added together.
    ``is_causal`` is a hint, as in torch: it needs ``attn_mask`` (RuntimeError-like
    ValueError otherwise), and with no key_padding_mask and ``need_weights=False`` the
    causal mask replaces ``attn_mask``. Returns ``(out, weights)``: the weights (after
    dropout) averaged over heads (N, L, S) with ``average_attn_weights``, else
    (N, num_heads, L, S); None when ``need_weights=False``. A query whose keys are all
    masked: NaN with ``need_weights=True``, weights 0 (output ``b_o``) with
    ``need_weights=False``, as torch 2.13 (the module docstring says more).
    Backward ``(dout, dweights)`` (dweights may be None, or the tuple may be dout alone)
    -> ``(dquery, dkey, dvalue)`` (self-attention: pass one tensor three times and add
    the three): ``attend``'s VJP per head (see ``ScaledDotProductAttention``), through the
    projections: ``dquery = dq W_q``, ``dW_q += dq^T query``, ``db_q += sum(dq)``, and so for
    k, v; ``out_proj`` is a ``Linear``.

    Shapes: query (L, N, E) (``batch_first``: (N, L, E); unbatched (L, E)), key (S, N, kdim),
    value (S, N, vdim) -> out like query.
    Parameters (torch's names and order): ``in_proj_weight`` (3E, E) when kdim = vdim = E,
    else ``q_proj_weight`` (E, E), ``k_proj_weight`` (E, kdim), ``v_proj_weight`` (E, vdim);
    ``in_proj_bias`` (3E) (bias=True); ``out_proj.weight``, ``out_proj.bias``. Init as
    torch: Xavier-uniform projections, zero biases, out_proj weight U(+-1/sqrt(E)).
    ``add_bias_kv`` and ``add_zero_attn`` are refused (NotImplementedError).
    Caches: query, key, value; the projected q, k, v (one head after another), the mask,
    which rows are fully masked and the dropout mask (see ``attend``), and with
    ``need_weights=True`` the weights before dropout (formed again in backward otherwise);
    out_proj caches its input.

    Example::

        >>> import torch
        >>> from nnlab.grad_compare import check_layer
        >>> from nnlab.layers import MultiheadAttention
        >>> attention = MultiheadAttention(8, num_heads=2, batch_first=True)
        >>> x = torch.randn(3, 5, 8)                 # (batch, length, embed_dim)
        >>> out, weights = attention(x, x, x)
        >>> out.shape, weights.shape                 # weights averaged over the heads
        (torch.Size([3, 5, 8]), torch.Size([3, 5, 5]))
        >>> dquery, dkey, dvalue = attention.backward((torch.ones_like(out), None))
        >>> check_layer(attention, (x, x, x)).passed   # three inputs: query, key, value
        True
    """

    SAVED_TENSORS = ("_saved",)

    def __init__(
        self,
        embed_dim,
        num_heads,
        dropout=0.0,
        bias=True,
        add_bias_kv=False,
        add_zero_attn=False,
        kdim=None,
        vdim=None,
        batch_first=False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        owner = "MultiheadAttention"
        self.embed_dim = checked_int(owner, "embed_dim", embed_dim, 1)
        self.num_heads = checked_int(owner, "num_heads", num_heads, 1)
        if self.embed_dim % self.num_heads:
            raise ValueError(f"{owner}: embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.head_dim = self.embed_dim // self.num_heads
        self.dropout = checked_real(owner, "dropout", dropout, 0.0, 1.0)
        self.has_bias = checked_bool(owner, "bias", bias)
        for name, value in (("add_bias_kv", add_bias_kv), ("add_zero_attn", add_zero_attn)):
            if checked_bool(owner, name, value):
                raise NotImplementedError(f"{owner}: {name}=True is not supported")
        self.kdim = self.embed_dim if kdim is None else checked_int(owner, "kdim", kdim, 1)
        self.vdim = self.embed_dim if vdim is None else checked_int(owner, "vdim", vdim, 1)
        self.batch_first = checked_bool(owner, "batch_first", batch_first)
        self.packed = self.kdim == self.embed_dim and self.vdim == self.embed_dim
        self._init_params()
        self.out_proj = Linear(self.embed_dim, self.embed_dim, bias=self.has_bias)
        if self.has_bias:
            self.out_proj.bias.zero_()
        place(self, device, dtype)
        self._cache = None
        self._saved = ()

    def _init_params(self):
        e = self.embed_dim
        if self.packed:
            self.add_param("in_proj_weight", _xavier_uniform(3 * e, e))
        else:
            self.add_param("q_proj_weight", _xavier_uniform(e, e))
            self.add_param("k_proj_weight", _xavier_uniform(e, self.kdim))
            self.add_param("v_proj_weight", _xavier_uniform(e, self.vdim))
        if self.has_bias:
            self.add_param("in_proj_bias", torch.zeros(3 * e))

    def named_children(self):
        return [("out_proj", self.out_proj)]

    def __repr__(self):
        options = "" if self.packed else f", kdim={self.kdim}, vdim={self.vdim}"
        return f"MultiheadAttention({self.embed_dim}, {self.num_heads}, dropout={self.dropout}{options})"

    # Projections ---------------------------------------------------------------------

    def projection(self, index):
        """(weight, bias or None, weight's gradient, bias's gradient or None) of q (0), k (1)
        or v (2): rows of the packed tensors, or the separate weights; None: all three
        packed rows."""
        e = self.embed_dim
        rows = slice(None) if index is None else slice(index * e, (index + 1) * e)
        if self.packed:
            weight, dweight = self.in_proj_weight[rows], self._grads["in_proj_weight"][rows]
        else:
            name = ("q_proj_weight", "k_proj_weight", "v_proj_weight")[index]
            weight, dweight = getattr(self, name), self._grads[name]
        if not self.has_bias:
            return weight, None, dweight, None
        return weight, self.in_proj_bias[rows], dweight, self._grads["in_proj_bias"][rows]

    def project(self, x, index):
        weight, bias, _, _ = self.projection(index)
        out = x @ weight.T
        return out if bias is None else out + bias

    def add_projection_grads(self, x, d, index):
        """dW += d^T x and db += sum(d) for projection ``index`` (see ``projection``)."""
        _, _, dweight, dbias = self.projection(index)
        x_rows = x.reshape(-1, x.shape[-1])
        d_rows = d.reshape(-1, d.shape[-1])
        dweight.addmm_(d_rows.T, x_rows)
        if dbias is not None:
            dbias.add_(d_rows.sum(dim=0))

    def project_vjp(self, x, d, index):
        """Adds the projection's parameter gradients; returns dx = d W (None after
        ``requires_input_grad(False)``)."""
        self.add_projection_grads(x, d, index)
        return d @ self.projection(index)[0] if self.needs_input_grad else None

    def fused_projection_vjp(self, x, d):
        """``project_vjp`` of the three packed projections of one input x, given their
        gradients side by side, d (..., 3E): one product for the weight's gradient;
        returns (dquery, dkey, dvalue), each ``d_i W_i`` (None after
        ``requires_input_grad(False)``)."""
        self.add_projection_grads(x, d, None)
        if not self.needs_input_grad:
            return None
        e = self.embed_dim
        return tuple(d[..., i * e : (i + 1) * e] @ self.in_proj_weight[i * e : (i + 1) * e] for i in range(3))

    def split_heads(self, x, parts=1):
        """(L, N, parts * E) (or (N, L, parts * E) with batch_first) -> (parts, N, heads,
        L, head_dim), contiguous: one copy, after which every product over the heads
        reads memory in order."""
        order = (2, 0, 3, 1, 4) if self.batch_first else (2, 1, 3, 0, 4)
        return x.reshape(x.shape[0], x.shape[1], parts, self.num_heads, self.head_dim).permute(*order).contiguous()

    def merge_heads(self, x):
        """(parts, N, heads, L, head_dim) -> (L, N, parts * E) (or (N, L, parts * E) with
        batch_first): ``split_heads`` undone."""
        order = (1, 3, 0, 2, 4) if self.batch_first else (3, 1, 0, 2, 4)
        x = x.permute(*order)
        return x.reshape(x.shape[0], x.shape[1], x.shape[2] * self.embed_dim)

    # Forward -------------------------------------------------------------------------

    def forward(
        self,
        query,
        key,
        value,
        key_padding_mask=None,
        need_weights=True,
        attn_mask=None,
        average_attn_weights=True,
        is_causal=False,
        **kw,
    ):
        owner = repr(self)
        need_weights = checked_bool(owner, "need_weights", need_weights)
        average_attn_weights = checked_bool(owner, "average_attn_weights", average_attn_weights)
        is_causal = checked_bool(owner, "is_causal", is_causal)
        batched = self._check_inputs(query, key, value)
        if not batched:
            query, key, value = (t.unsqueeze(0 if self.batch_first else 1) for t in (query, key, value))
            if key_padding_mask is not None:
                _check_tensor(owner, "key_padding_mask", key_padding_mask)
                key_padding_mask = key_padding_mask.unsqueeze(0)
        self._batched = batched
        bias = self._bias(query, key, key_padding_mask, attn_mask, is_causal, need_weights)

        self._inputs = (query, key, value)
        # Self-attention with the packed weight: one product for q, k and v, as torch's.
        self._fused = self.packed and query is key and key is value
        if self._fused:
            heads = self.split_heads(self.project(query, None), parts=3).unbind(0)
        else:
            heads = (self.split_heads(self.project(x, index))[0] for index, x in enumerate(self._inputs))
        dropout_p = self.dropout if self.training else 0.0
        scale = 1.0 / math.sqrt(self.head_dim)
        # With the weights returned, keep them, as autograd does: faster, still no more memory.
        out, weights, self._cache = attend(*heads, bias, scale, dropout_p, not need_weights, keep_weights=need_weights)
        out = self.out_proj(self.merge_heads(out.unsqueeze(0)))
        self._saved = self._inputs + self._cache.tensors()
        self._need_weights = need_weights
        self._average = average_attn_weights
        if need_weights:
            weights = weights.mean(dim=1) if average_attn_weights else weights
            if not batched:
                weights = weights.squeeze(0)
        else:
            weights = None
        if not batched:
            out = out.squeeze(0 if self.batch_first else 1)
        return self.finish_forward((out, weights))

    def _check_inputs(self, query, key, value):
        """Type, dtype and shape checks; returns whether the inputs are batched (3-d)."""
        owner = repr(self)
        for name, tensor in (("query", query), ("key", key), ("value", value)):
            _check_tensor(owner, name, tensor)
            self.check_dtype(tensor)
        batched = query.dim() == 3
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(
                f"{owner}: expected query, key and value all 3-d (batched) or all 2-d (unbatched), "
                f"got {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
            )
        seq, batch = (1, 0) if self.batch_first and batched else (0, 1)
        layout = "(N, L, E)" if self.batch_first else "(L, N, E)"
        ok = (
            query.shape[-1] == self.embed_dim
            and key.shape[-1] == self.kdim
            and value.shape[-1] == self.vdim
            and key.shape[seq] == value.shape[seq]
            and (not batched or query.shape[batch] == key.shape[batch] == value.shape[batch])
        )
        if not ok:
            raise ValueError(
                f"{owner}: expected query {layout} with E={self.embed_dim}, key and value with one sequence "
                f"length and batch and last dims {self.kdim} and {self.vdim}, got {tuple(query.shape)}, "
                f"{tuple(key.shape)}, {tuple(value.shape)}"
            )
        return batched

    def _bias(self, query, key, key_padding_mask, attn_mask, is_causal, need_weights):
        """The additive mask broadcastable to (N, heads, L, S), or None."""
        owner = repr(self)
        seq, batch = (1, 0) if self.batch_first else (0, 1)
        length, n, source = query.shape[seq], query.shape[batch], key.shape[seq]
        if is_causal and attn_mask is None:
            raise ValueError(f"{owner}: is_causal=True is a hint and needs attn_mask, as in torch")
        bias = None
        if attn_mask is not None:
            _check_mask(owner, "attn_mask", attn_mask, query)
            if attn_mask.shape == (length, source):
                bias = attn_mask
            elif attn_mask.shape == (n * self.num_heads, length, source):
                bias = attn_mask.view(n, self.num_heads, length, source)
            else:
                raise ValueError(
                    f"{owner}: expected attn_mask of shape {(length, source)} or "
                    f"{(n * self.num_heads, length, source)}, got {tuple(attn_mask.shape)}"
                )
            if is_causal and key_padding_mask is None and not need_weights:
                # torch then trusts the hint and attends causally, whatever attn_mask holds.
                bias = causal_bias(length, source, query)
            elif bias.dtype == torch.bool:
                bias = mask_to_bias(bias, query)
        if key_padding_mask is not None:
            _check_mask(owner, "key_padding_mask", key_padding_mask, query)
            if key_padding_mask.shape != (n, source):
                raise ValueError(
                    f"{owner}: expected key_padding_mask of shape {(n, source)}, got {tuple(key_padding_mask.shape)}"
                )
            padding = key_padding_mask
            if padding.dtype == torch.bool:
                padding = mask_to_bias(padding, query)
            padding = padding.view(n, 1, 1, source)
            bias = padding if bias is None else bias + padding
        return bias

    # Backward ------------------------------------------------------------------------

    def backward(self, dout):
        if isinstance(dout, torch.Tensor):
            dout = (dout, None)
        self.start_backward(dout)
        dout, dweights = dout
        if dout is None:
            dout = torch.zeros(self._output_shapes[0], dtype=self._inputs[0].dtype, device=self._inputs[0].device)
        if not self._batched:
            dout = dout.unsqueeze(0 if self.batch_first else 1)
        if dweights is not None:
            if not self._batched:
                dweights = dweights.unsqueeze(0)
            if self._average:
                dweights = (dweights / self.num_heads).unsqueeze(1)
        dheads = self.split_heads(self.out_proj.backward(dout))[0]
        dq, dk, dv = attend_vjp(self._cache, dheads, dweights)
        if self._fused:
            grads = self.fused_projection_vjp(self._inputs[0], self.merge_heads(torch.stack((dq, dk, dv))))
        else:
            dprojected = (self.merge_heads(d.unsqueeze(0)) for d in (dq, dk, dv))
            grads = tuple(self.project_vjp(x, d, index) for index, (x, d) in enumerate(zip(self._inputs, dprojected)))
        if not self.needs_input_grad:
            return None
        if not self._batched:
            grads = tuple(g.squeeze(0 if self.batch_first else 1) for g in grads)
        return grads


def _xavier_uniform(fan_out, fan_in):
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return torch.empty(fan_out, fan_in).uniform_(-bound, bound)
