"""ScaledDotProductAttention and MultiheadAttention against torch's function and module
(weights copied, autograd as the judge of backward; in float32 the judge runs in float64),
over drawn options and masks of every kind, fully masked rows included; central finite
differences in float64; the contract (accumulation, state_dict keys, errors) and the
memory kept for backward."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.nn.attention import SDPBackend, sdpa_kernel

from nnlab._bench_report import held_tensors, storage_bytes
from nnlab.layers import MultiheadAttention, ScaledDotProductAttention
from reference import FORWARD_ATOL, GRAD_RTOL, assert_close, gradient_floor

DTYPES = st.sampled_from([torch.float32, torch.float64])


# The judge -----------------------------------------------------------------------------------


def _as_tuple(value):
    return value if isinstance(value, tuple) else (value,)


def upstream_for(outputs, seed):
    """A random upstream gradient for each output (None for an output that is None)."""
    generator = torch.Generator().manual_seed(seed)
    return tuple(
        None if o is None else torch.randn(o.shape, generator=generator, dtype=torch.float64).to(o.dtype)
        for o in outputs
    )


def check_layer_against_module(layer, module, inputs, kwargs, seed=0, module_kwargs=None):
    """Runs the nnlab layer on ``inputs`` (a tuple; one tensor may appear several times,
    as in self-attention) and the torch module, in float64, on copies; compares every
    output, the gradient of each distinct input (the sum of the layer's gradients for an
    input given several times) and every parameter gradient. Returns the layer's outputs."""
    dtype = inputs[0].dtype
    layer.zero_grad()
    outputs = _as_tuple(layer(*inputs, **kwargs))
    douts = upstream_for(outputs, seed)
    grads = _as_tuple(layer.backward(douts if len(douts) > 1 else douts[0]))

    judge = module.double()
    leaves = {}
    for x in inputs:
        leaves.setdefault(id(x), x.double().requires_grad_(True))
    ref_inputs = [leaves[id(x)] for x in inputs]
    # torch's fused CPU attention kernel misses float64 results by ~1e-11; its math kernel
    # (the same function, fully masked rows included) is exact to rounding.
    with sdpa_kernel(SDPBackend.MATH):
        ref_outputs = _as_tuple(judge(*ref_inputs, **in_float64(kwargs if module_kwargs is None else module_kwargs)))
    pairs = [(o, d) for o, d in zip(ref_outputs, douts) if o is not None and d is not None]
    wrt = list(leaves.values()) + list(judge.parameters())
    ref_grads = torch.autograd.grad([o for o, _ in pairs], wrt, [d.double() for _, d in pairs], allow_unused=True)
    ref_grads = [torch.zeros_like(t) if g is None else g for g, t in zip(ref_grads, wrt)]

    assert len(outputs) == len(ref_outputs)
    for index, (out, ref) in enumerate(zip(outputs, ref_outputs)):
        assert (out is None) == (ref is None), f"output[{index}]: {out} against {ref}"
        if out is not None:
            assert_close(f"output[{index}]", out, ref.detach().to(dtype), atol=FORWARD_ATOL[dtype])
    floor = gradient_floor(ref_grads)
    ours = {}
    for x, grad in zip(inputs, grads):
        ours[id(x)] = grad if id(x) not in ours else ours[id(x)] + grad
    input_refs = ref_grads[: len(leaves)]
    for index, (key, ref) in enumerate(zip(leaves, input_refs)):
        assert_close(f"input gradient {index}", ours[key], ref.to(dtype), rtol=GRAD_RTOL[dtype], floor=floor)
    for index, ((_, grad), ref) in enumerate(zip(layer.params(), ref_grads[len(leaves):])):
        assert_close(f"param#{index + 1:02d} gradient", grad, ref.to(dtype), rtol=GRAD_RTOL[dtype], floor=floor)
    return outputs


def in_float64(kwargs):
    """Keyword arguments with floating tensors (float masks) in float64, for the judge."""
    return {
        key: value.double() if isinstance(value, torch.Tensor) and value.is_floating_point() else value
        for key, value in kwargs.items()
    }


def copy_into(module, layer):
    """The layer's parameters into the module, made float64 first (the judge's dtype)."""
    module.double()
    with torch.no_grad():
        for target, (source, _) in zip(module.parameters(), layer.params(), strict=True):
            target.copy_(source)


def randomize(layer, seed):
    """Nonzero biases (torch starts them at 0) and fresh weights, the same scale."""
    generator = torch.Generator().manual_seed(seed)
    for param, _ in layer.params():
        param.copy_(torch.rand(param.shape, generator=generator, dtype=torch.float64).to(param.dtype) - 0.5)


# Masks ---------------------------------------------------------------------------------------


@st.composite
def boolean_mask(draw, shape, fully_masked_row):
    """A random bool mask (True = masked, as MultiheadAttention reads it); with
    ``fully_masked_row`` one drawn row (last dim) is masked entirely."""
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    mask = torch.rand(shape, generator=generator) < draw(st.sampled_from([0.0, 0.3, 0.6]))
    if fully_masked_row:
        rows = mask.view(-1, shape[-1])
        rows[draw(st.integers(0, rows.shape[0] - 1))] = True
    return mask


@st.composite
def float_mask(draw, shape, dtype, fully_masked_row):
    """A float mask: random values, -inf where a bool mask is True."""
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    values = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
    return values.masked_fill(draw(boolean_mask(shape, fully_masked_row)), -math.inf)


@st.composite
def mask_of(draw, kind, shape, dtype, fully_masked_row):
    if kind == "bool":
        return draw(boolean_mask(shape, fully_masked_row))
    return draw(float_mask(shape, dtype, fully_masked_row))


# MultiheadAttention --------------------------------------------------------------------------


@st.composite
def with_special_entry(draw, inputs):
    """``inputs`` with NaN, +inf or -inf written at one drawn entry of one drawn input
    (the same tensor stays the same object where it appears several times)."""
    index = draw(st.integers(0, len(inputs) - 1))
    target = inputs[index]
    if target.numel() == 0:
        return inputs
    changed = target.clone()
    changed.view(-1)[draw(st.integers(0, target.numel() - 1))] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    return tuple(changed if x is target else x for x in inputs)


@st.composite
def attention_setups(draw):
    """(layer options, inputs, forward keyword arguments) for MultiheadAttention."""
    dtype = draw(DTYPES)
    heads = draw(st.sampled_from([1, 2]))
    embed = heads * draw(st.integers(1, 3))
    separate = draw(st.booleans())
    kdim, vdim = (draw(st.integers(1, 4)), draw(st.integers(1, 4))) if separate else (None, None)
    options = dict(
        embed_dim=embed,
        num_heads=heads,
        dropout=draw(st.sampled_from([0.0, 0.5])),  # compared in eval mode
        bias=draw(st.booleans()),
        kdim=kdim,
        vdim=vdim,
        batch_first=draw(st.booleans()),
    )
    batch = draw(st.sampled_from([None, 0, 1, 2]))
    self_attention = not separate and draw(st.booleans())
    length = draw(st.integers(1, 3))
    source = length if self_attention else draw(st.integers(1, 4))

    def shaped(sequence, features):
        if batch is None:
            return (sequence, features)
        return (batch, sequence, features) if options["batch_first"] else (sequence, batch, features)

    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    rand = lambda shape: (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1).to(dtype)
    query = rand(shaped(length, embed))
    if self_attention:
        inputs = (query, query, query)
    else:
        inputs = (query, rand(shaped(source, kdim or embed)), rand(shaped(source, vdim or embed)))

    if draw(st.booleans()):
        inputs = draw(with_special_entry(inputs))
    need_weights = draw(st.booleans())
    kwargs = dict(need_weights=need_weights, average_attn_weights=draw(st.booleans()))
    fully_masked = draw(st.booleans())
    mask_kind = draw(st.sampled_from([None, "bool", "float"]))
    if mask_kind is not None:
        # torch cannot view a 3-d mask of an empty batch (batch 0) on its fused path.
        three_d = bool(batch) and draw(st.booleans())
        shape = (batch * heads, length, source) if three_d else (length, source)
        kwargs["attn_mask"] = draw(mask_of(mask_kind, shape, dtype, fully_masked))
        if length == source and not three_d and draw(st.booleans()):
            causal = torch.ones(length, length, dtype=torch.bool).triu(1)
            kwargs["attn_mask"] = causal if mask_kind == "bool" else torch.zeros(causal.shape, dtype=dtype).masked_fill(causal, -math.inf)
            kwargs["is_causal"] = True
    # torch cannot view a key padding mask of an empty batch on its fused path.
    if batch != 0 and draw(st.booleans()):
        kind = mask_kind or draw(st.sampled_from(["bool", "float"]))
        shape = (source,) if batch is None else (batch, source)
        kwargs["key_padding_mask"] = draw(mask_of(kind, shape, dtype, fully_masked))
    return options, inputs, kwargs, draw(st.integers(0, 100))


@given(setup=attention_setups())
def test_multihead_attention_matches_torch(setup):
    options, inputs, kwargs, seed = setup
    dtype = inputs[0].dtype
    layer = MultiheadAttention(**options).to(dtype=dtype).eval()
    randomize(layer, seed)
    module = torch.nn.MultiheadAttention(**options).eval()
    copy_into(module, layer)
    check_layer_against_module(layer, module, inputs, kwargs, seed=seed)


def test_state_dict_keys_and_parameter_order_are_torchs():
    for options in (dict(), dict(kdim=3, vdim=5), dict(bias=False)):
        layer = MultiheadAttention(4, 2, **options)
        module = torch.nn.MultiheadAttention(4, 2, **options)
        assert list(layer.state_dict()) == list(module.state_dict())
        assert [p.shape for p, _ in layer.params()] == [p.shape for p in module.parameters()]
        layer.load_state_dict(module.state_dict())
        module.load_state_dict(layer.state_dict())


def test_fresh_layer_initialises_as_torch():
    """Zero biases, Xavier-uniform projections (bound sqrt(6 / (fan_in + fan_out)))."""
    layer = MultiheadAttention(8, 2, kdim=4)
    assert not layer.in_proj_bias.any() and not layer.out_proj.bias.any()
    assert layer.k_proj_weight.abs().max() <= math.sqrt(6 / (8 + 4))
    assert layer.out_proj.weight.abs().max() <= 1 / math.sqrt(8)


def test_fully_masked_rows_are_nan_with_weights_and_out_proj_bias_without():
    """torch 2.13: its explicit-softmax path (need_weights=True) gives NaN for a query whose
    keys are all masked; its fused path (need_weights=False) gives the row weights 0."""
    torch.manual_seed(0)
    layer = MultiheadAttention(4, 2)
    randomize(layer, 1)
    x = torch.randn(3, 2, 4)
    mask = torch.zeros(3, 3, dtype=torch.bool)
    mask[1] = True
    out, weights = layer(x, x, x, attn_mask=mask)
    assert out[1].isnan().all() and weights[:, 1].isnan().all() and not out[0].isnan().any()
    out, weights = layer(x, x, x, attn_mask=mask, need_weights=False)
    assert weights is None
    assert torch.equal(out[1], layer.out_proj.bias.expand(2, 4))
    module = torch.nn.MultiheadAttention(4, 2)
    copy_into(module, layer)
    check_layer_against_module(layer, module, (x, x, x), dict(attn_mask=mask, need_weights=False))


def test_backward_takes_dout_alone_or_with_none():
    torch.manual_seed(0)
    layer = MultiheadAttention(4, 2).double()
    q, k = torch.randn(3, 2, 4, dtype=torch.float64), torch.randn(5, 2, 4, dtype=torch.float64)
    dout = torch.randn(3, 2, 4, dtype=torch.float64)
    layer(q, k, k)
    first = layer.backward((dout, None))
    layer(q, k, k)
    second = layer.backward(dout)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_gradients_accumulate_until_zero_grad():
    torch.manual_seed(0)
    layer = MultiheadAttention(4, 2, kdim=3).double()
    inputs = (torch.randn(2, 1, 4), torch.randn(3, 1, 3), torch.randn(3, 1, 4))
    inputs = tuple(x.double() for x in inputs)
    dout = torch.randn(2, 1, 4, dtype=torch.float64)
    layer(*inputs)
    layer.backward(dout)
    once = [grad.clone() for _, grad in layer.params()]
    layer(*inputs)
    layer.backward(dout)
    for grad, single in zip((g for _, g in layer.params()), once):
        assert_close("accumulated", grad, 2 * single, rtol=1e-12)
    layer.zero_grad()
    assert all(not grad.any() for _, grad in layer.params())


def finite_difference_check(layer, inputs, kwargs, seed=0, eps=1e-6, rtol=1e-7):
    """Central differences of sum over outputs of <output, upstream> in float64 against
    the layer's backward, for every input entry and every parameter entry."""
    douts = upstream_for(_as_tuple(layer(*inputs, **kwargs)), seed)

    def objective():
        outs = _as_tuple(layer(*inputs, **kwargs))
        return sum((o * d).sum().item() for o, d in zip(outs, douts) if o is not None)

    layer.zero_grad()
    layer(*inputs, **kwargs)
    grads = list(_as_tuple(layer.backward(douts if len(douts) > 1 else douts[0])))
    analytic = grads + [grad.clone() for _, grad in layer.params()]
    tensors = list(inputs) + [param for param, _ in layer.params()]
    for index, (tensor, grad) in enumerate(zip(tensors, analytic)):
        flat = tensor.view(-1)
        numeric = torch.empty(flat.numel(), dtype=torch.float64)
        for j in range(flat.numel()):
            original = flat[j].item()
            flat[j] = original + eps
            plus = objective()
            flat[j] = original - eps
            minus = objective()
            flat[j] = original
            numeric[j] = (plus - minus) / (2 * eps)
        assert_close(f"tensor {index} finite differences", grad.reshape(-1), numeric, rtol=rtol)


@pytest.mark.parametrize("need_weights, average", [(True, True), (True, False), (False, True)])
def test_multihead_attention_finite_differences(need_weights, average):
    torch.manual_seed(0)
    layer = MultiheadAttention(4, 2, kdim=3, vdim=2, batch_first=True).double()
    randomize(layer, 2)
    inputs = tuple(torch.randn(shape, dtype=torch.float64) for shape in ((2, 2, 4), (2, 3, 3), (2, 3, 2)))
    mask = torch.tensor([[0.0, -math.inf, 0.5], [0.2, 0.0, -1.0]], dtype=torch.float64)
    padding = torch.tensor([[False, False, True], [False, False, False]])
    kwargs = dict(attn_mask=mask, key_padding_mask=padding, need_weights=need_weights, average_attn_weights=average)
    finite_difference_check(layer, inputs, kwargs)


def test_dropout_in_training_matches_autograd_through_its_own_forward_and_draws_as_torch():
    """Dropout on the weights: the backward against autograd through the layer's own
    forward (the seed fixes the mask), and the share of dropped weights near p."""
    layer = MultiheadAttention(4, 2, dropout=0.5).double()
    inputs = tuple(torch.randn(shape, dtype=torch.float64) for shape in ((3, 2, 4), (5, 2, 4), (5, 2, 4)))
    torch.manual_seed(3)
    out, weights = layer(*inputs, average_attn_weights=False)
    douts = upstream_for((out, weights), 0)
    grads = layer.backward(douts)
    params = [p for p, _ in layer.params()]
    leaves = [x.clone().requires_grad_(True) for x in inputs]
    for p in params:
        p.requires_grad_(True)
    try:
        torch.manual_seed(3)
        ref_out, ref_weights = layer(*leaves, average_attn_weights=False)
        refs = torch.autograd.grad((ref_out, ref_weights), leaves + params, douts)
    finally:
        for p in params:
            p.requires_grad_(False)
    floor = gradient_floor(refs)
    for index, (ours, ref) in enumerate(zip(list(grads) + [g for _, g in layer.params()], refs)):
        assert_close(f"gradient {index}", ours, ref, rtol=1e-10, floor=floor)

    layer.train()
    big = torch.randn(16, 8, 4, dtype=torch.float64)
    _, weights = layer(big, big, big, average_attn_weights=False)
    assert abs((weights == 0).double().mean().item() - 0.5) < 0.03
    layer.eval()
    _, eval_weights = layer(big, big, big, average_attn_weights=False)
    kept = weights != 0
    assert_close("kept weights", weights[kept], 2 * eval_weights[kept], rtol=1e-12)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(add_bias_kv=True), "add_bias_kv"),
        (dict(add_zero_attn=True), "add_zero_attn"),
    ],
)
def test_unsupported_options_are_refused(options, message):
    with pytest.raises(NotImplementedError, match=message):
        MultiheadAttention(4, 2, **options)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="divisible"):
        MultiheadAttention(5, 2)
    layer = MultiheadAttention(4, 2)
    x = torch.randn(3, 2, 4)
    with pytest.raises(ValueError, match="MultiheadAttention.*got \\(3, 2, 5\\)"):
        layer(torch.randn(3, 2, 5), x, x)
    with pytest.raises(ValueError, match="attn_mask of shape"):
        layer(x, x, x, attn_mask=torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="is_causal"):
        layer(x, x, x, is_causal=True)
    with pytest.raises(ValueError, match="key_padding_mask of shape"):
        layer(x, x, x, key_padding_mask=torch.zeros(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool tensor or a torch.float32"):
        layer(x, x, x, attn_mask=torch.zeros(3, 3, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="before forward"):
        MultiheadAttention(4, 2).backward(torch.zeros(3, 2, 4))


# ScaledDotProductAttention -------------------------------------------------------------------


class TorchFunction(torch.nn.Module):
    """torch's scaled_dot_product_attention as a module, for the judge."""

    def forward(self, *args, **kwargs):
        return torch.nn.functional.scaled_dot_product_attention(*args, **kwargs)


@st.composite
def sdpa_setups(draw):
    dtype = draw(DTYPES)
    lead = draw(st.sampled_from([(), (1,), (2,), (2, 2)]))
    length, source = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    features, value_features = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    rand = lambda shape: (torch.rand(shape, generator=generator, dtype=torch.float64) * 4 - 2).to(dtype)
    inputs = (rand((*lead, length, features)), rand((*lead, source, features)), rand((*lead, source, value_features)))
    if draw(st.booleans()):
        inputs = draw(with_special_entry(inputs))
    kwargs = {}
    kind = draw(st.sampled_from([None, "bool", "float", "causal"]))
    if kind == "causal":
        kwargs["is_causal"] = True
    elif kind is not None:
        shape = draw(st.sampled_from([(length, source), (*lead, length, source)]))
        mask = draw(mask_of(kind, shape, dtype, draw(st.booleans())))
        # torch's function reads a bool mask as True = takes part.
        kwargs["attn_mask"] = mask.logical_not() if kind == "bool" else mask
    if draw(st.booleans()):
        kwargs["scale"] = draw(st.sampled_from([0.3, 1.0, 2.5]))
    return inputs, kwargs, draw(st.integers(0, 100))


@given(setup=sdpa_setups())
def test_scaled_dot_product_attention_matches_torchs_function(setup):
    inputs, kwargs, seed = setup
    check_layer_against_module(ScaledDotProductAttention(), TorchFunction(), inputs, kwargs, seed=seed)


def test_scaled_dot_product_attention_fully_masked_row_is_zero_with_zero_gradients():
    q, k, v = (torch.randn(2, 3, 4, dtype=torch.float64) for _ in range(3))
    allowed = torch.ones(3, 3, dtype=torch.bool)
    allowed[2] = False
    layer = ScaledDotProductAttention()
    out = layer(q, k, v, attn_mask=allowed)
    assert not out[:, 2].any()
    dq, _, _ = layer.backward(torch.randn(2, 3, 4, dtype=torch.float64))
    assert not dq[:, 2].any()
    check_layer_against_module(layer, TorchFunction(), (q, k, v), dict(attn_mask=allowed))


def test_scaled_dot_product_attention_finite_differences():
    torch.manual_seed(0)
    inputs = tuple(torch.randn(shape, dtype=torch.float64) for shape in ((2, 3, 2), (2, 4, 2), (2, 4, 3)))
    mask = torch.tensor([[0.0, -math.inf, 0.3, 1.0]] * 3, dtype=torch.float64)
    finite_difference_check(ScaledDotProductAttention(), inputs, dict(attn_mask=mask))
    square = tuple(torch.randn(shape, dtype=torch.float64) for shape in ((2, 3, 2), (2, 3, 2), (2, 3, 3)))
    finite_difference_check(ScaledDotProductAttention(), square, dict(is_causal=True, scale=0.7))


def test_scaled_dot_product_attention_refuses_mask_with_causal_and_bad_shapes():
    layer = ScaledDotProductAttention()
    q = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="not both"):
        layer(q, q, q, attn_mask=torch.ones(3, 3, dtype=torch.bool), is_causal=True)
    with pytest.raises(ValueError, match="does not broadcast"):
        layer(q, q, q, attn_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="same leading dims"):
        layer(q, torch.randn(3, 3, 4), torch.randn(3, 3, 4))


# Memory --------------------------------------------------------------------------------------


def held_bytes(layer):
    """Bytes of the tensors the layer and its children hold after forward, besides state."""
    state = [p for p, _ in layer.params()] + [g for _, g in layer.params()] + layer.buffers()
    return storage_bytes(held_tensors(layer), {t.untyped_storage().data_ptr() for t in state})


def autograd_saved_bytes(module, *inputs, **kwargs):
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        module(*inputs, **kwargs)
    state = list(module.parameters()) + list(module.buffers())
    return storage_bytes(saved, {t.untyped_storage().data_ptr() for t in state})


@pytest.mark.parametrize("need_weights", [False, True])
def test_memory_kept_for_backward_is_within_1_2x_of_autograds(need_weights):
    """Self-attention, 4 heads: the input counts on both sides (autograd saves it too)."""
    torch.manual_seed(0)
    layer = MultiheadAttention(32, 4)
    module = torch.nn.MultiheadAttention(32, 4)
    copy_into(module, layer)
    module.float()
    x = torch.randn(24, 4, 32)
    layer(x, x, x, need_weights=need_weights)
    ours = held_bytes(layer)
    theirs = autograd_saved_bytes(module, *(x.requires_grad_(True),) * 3, need_weights=need_weights)
    assert ours <= 1.2 * theirs + 1024, (ours, theirs)


def test_backward_with_the_weights_gradient_alone():
    """dout None means zero: only the weights' gradient flows back."""
    torch.manual_seed(0)
    layer = MultiheadAttention(4, 2).double()
    randomize(layer, 0)
    module = torch.nn.MultiheadAttention(4, 2)
    copy_into(module, layer)
    q, k = torch.randn(3, 2, 4, dtype=torch.float64), torch.randn(5, 2, 4, dtype=torch.float64)
    _, weights = layer(q, k, k)
    dweights = torch.randn(weights.shape, dtype=torch.float64)
    dquery, dkey, dvalue = layer.backward((None, dweights))
    leaves = [q.clone().requires_grad_(True), k.clone().requires_grad_(True)]
    _, ref_weights = module(leaves[0], leaves[1], leaves[1])
    ref_query, ref_key = torch.autograd.grad(ref_weights, leaves, dweights)
    assert_close("dquery", dquery, ref_query, rtol=1e-10)
    assert_close("dkey + dvalue", dkey + dvalue, ref_key, rtol=1e-10)
    assert not dvalue.any()
