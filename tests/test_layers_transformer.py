"""Transformer encoder and decoder layers and stacks against their torch.nn namesakes
(weights copied both ways, autograd in float64 as the judge), over drawn options and
masks; finite differences in float64; dropout in eval and training mode; positional
encodings; generate_square_subsequent_mask."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import nnlab.layers as nl
from reference import assert_close, check_against_autograd, check_finite_differences, gradient_floor
from test_layers_attention import (
    DTYPES,
    autograd_saved_bytes,
    check_layer_against_module,
    finite_difference_check,
    held_bytes,
    mask_of,
    randomize,
    with_special_entry,
)


def twin_pair(make, dtype, seed):
    """(nnlab layer in ``dtype``, torch module in float64) from ``make(namespace)``, with
    the same random parameters; the state_dict keys must be the same."""
    layer = make(nl).to(dtype=dtype)
    module = make(torch.nn).double()
    assert list(layer.state_dict()) == list(module.state_dict())
    randomize(layer, seed)
    module.load_state_dict({key: value.double() for key, value in layer.state_dict().items()})
    return layer, module


@st.composite
def block_options(draw):
    """Options of an encoder or decoder layer. d_model >= 3: a LayerNorm over 2 entries
    has output +-1 whatever its input and an input gradient made of rounding alone, which
    float32 cannot resolve to 1e-5 (torch's float32 no better)."""
    heads = draw(st.sampled_from([1, 2]))
    return dict(
        d_model=heads * draw(st.integers(2, 3)) if heads == 2 else draw(st.integers(3, 4)),
        nhead=heads,
        dim_feedforward=draw(st.integers(1, 5)),
        dropout=draw(st.sampled_from([0.0, 0.3])),
        activation=draw(st.sampled_from(["relu", "gelu"])),
        batch_first=draw(st.booleans()),
        norm_first=draw(st.booleans()),
        bias=draw(st.booleans()),
    )


@st.composite
def sequence(draw, options, length, batch, dtype):
    shape = (length, options["d_model"])
    if batch is not None:
        shape = (batch, *shape) if options["batch_first"] else (length, batch, options["d_model"])
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    return (torch.rand(shape, generator=generator, dtype=torch.float64) * 4 - 2).to(dtype)


@st.composite
def masks(draw, length, source, batch, dtype, causal_allowed):
    """(attn_mask, key_padding_mask, is_causal) of one kind (bool or float, as torch
    wants them alike), fully masked rows possible."""
    kind = draw(st.sampled_from(["bool", "float"]))
    fully = draw(st.booleans())
    attn_mask, padding, is_causal = None, None, False
    choice = draw(st.sampled_from(["none", "mask", "causal"] if causal_allowed else ["none", "mask"]))
    if choice == "mask":
        attn_mask = draw(mask_of(kind, (length, source), dtype, fully))
    if choice == "causal":
        attn_mask = nl.generate_square_subsequent_mask(length, dtype=dtype)
        attn_mask = attn_mask.isinf() if kind == "bool" else attn_mask
        is_causal = draw(st.booleans())
    if draw(st.booleans()):
        padding = draw(mask_of(kind, (source,) if batch is None else (batch, source), dtype, fully))
    return attn_mask, padding, is_causal


@given(options=block_options(), dtype=DTYPES, batch=st.sampled_from([None, 1, 2]), data=st.data())
def test_encoder_layer_matches_torch(options, dtype, batch, data):
    length = data.draw(st.integers(1, 3))
    layer, module = twin_pair(lambda ns: ns.TransformerEncoderLayer(**options), dtype, data.draw(st.integers(0, 99)))
    layer.eval()
    module.eval()
    src = data.draw(sequence(options, length, batch, dtype))
    # NaN or an infinity in src, with GELU only: nnlab's ReLU sends no gradient through a
    # NaN output (torch.sign(NaN) is 0 on torch 2.13) where torch's sends dout.
    if options["activation"] == "gelu" and data.draw(st.booleans()):
        (src,) = data.draw(with_special_entry((src,)))
    attn_mask, padding, is_causal = data.draw(masks(length, length, batch, dtype, True))
    kwargs = dict(src_mask=attn_mask, src_key_padding_mask=padding, is_causal=is_causal)
    check_layer_against_module(layer, module, (src,), kwargs)


@given(options=block_options(), dtype=DTYPES, batch=st.sampled_from([None, 1, 2]), data=st.data())
def test_decoder_layer_matches_torch(options, dtype, batch, data):
    length, source = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    layer, module = twin_pair(lambda ns: ns.TransformerDecoderLayer(**options), dtype, data.draw(st.integers(0, 99)))
    layer.eval()
    module.eval()
    tgt = data.draw(sequence(options, length, batch, dtype))
    memory = data.draw(sequence(options, source, batch, dtype))
    tgt_mask, tgt_padding, tgt_is_causal = data.draw(masks(length, length, batch, dtype, True))
    memory_mask, memory_padding, _ = data.draw(masks(length, source, batch, dtype, False))
    kwargs = dict(
        tgt_mask=tgt_mask,
        memory_mask=memory_mask,
        tgt_key_padding_mask=tgt_padding,
        memory_key_padding_mask=memory_padding,
        tgt_is_causal=tgt_is_causal,
    )
    check_layer_against_module(layer, module, (tgt, memory), kwargs)


@given(options=block_options(), dtype=DTYPES, layers=st.integers(1, 2), final_norm=st.booleans(), data=st.data())
def test_stacks_match_torch(options, dtype, layers, final_norm, data):
    options["dropout"] = 0.0
    norm = lambda ns: ns.LayerNorm(options["d_model"]) if final_norm else None
    seed = data.draw(st.integers(0, 99))
    encoder, encoder_twin = twin_pair(
        lambda ns: ns.TransformerEncoder(
            ns.TransformerEncoderLayer(**options), layers, norm=norm(ns), enable_nested_tensor=False
        ), dtype, seed
    )
    decoder, decoder_twin = twin_pair(
        lambda ns: ns.TransformerDecoder(ns.TransformerDecoderLayer(**options), layers, norm=norm(ns)), dtype, seed
    )
    length = data.draw(st.integers(1, 3))
    src = data.draw(sequence(options, length, 2, dtype))
    causal = nl.generate_square_subsequent_mask(length, dtype=dtype)
    padding = data.draw(mask_of("float", (2, length), dtype, False))
    memory = check_layer_against_module(encoder, encoder_twin, (src,), dict(mask=causal, src_key_padding_mask=padding))[0]
    check_layer_against_module(decoder, decoder_twin, (src, memory.clone()), dict(tgt_mask=causal))


def test_stacks_hold_deep_copies_under_torchs_keys():
    layer = nl.TransformerEncoderLayer(4, 2, 8)
    encoder = nl.TransformerEncoder(layer, 2, norm=nl.LayerNorm(4))
    assert encoder.layers[0] is not layer and encoder.layers[0].linear1.weight is not encoder.layers[1].linear1.weight
    twin = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(4, 2, 8), 2, norm=torch.nn.LayerNorm(4), enable_nested_tensor=False
    )
    assert list(encoder.state_dict()) == list(twin.state_dict())
    encoder.load_state_dict(twin.state_dict())
    twin.load_state_dict(encoder.state_dict())


def test_training_mode_dropout_matches_autograd_through_its_own_forward():
    """Dropout (in attention, the feed-forward and the residual steps) draws its own
    masks, so the judge is autograd through the layer's forward, the seed fixing them."""
    layer = nl.TransformerEncoderLayer(4, 2, 6, dropout=0.4).double()
    randomize(layer, 0)
    check_against_autograd(layer, torch.randn(3, 2, 4, dtype=torch.float64), grad_rtol=1e-10)
    decoder = nl.TransformerDecoderLayer(4, 2, 6, dropout=0.4, norm_first=True).double()
    randomize(decoder, 1)
    tgt, memory = torch.randn(3, 2, 4, dtype=torch.float64), torch.randn(2, 2, 4, dtype=torch.float64)
    torch.manual_seed(5)
    decoder(tgt, memory)
    dtgt, dmemory = decoder.backward(torch.ones(3, 2, 4, dtype=torch.float64))
    params = [p for p, _ in decoder.params()]
    leaves = [tgt.clone().requires_grad_(True), memory.clone().requires_grad_(True)]
    own = [g.clone() for _, g in decoder.params()]
    decoder.zero_grad()
    for p in params:
        p.requires_grad_(True)
    try:
        torch.manual_seed(5)
        refs = torch.autograd.grad(decoder(*leaves).sum(), leaves + params)
    finally:
        for p in params:
            p.requires_grad_(False)
    floor = gradient_floor(refs)
    for index, (ours, ref) in enumerate(zip([dtgt, dmemory] + own, refs)):
        assert_close(f"gradient {index}", ours, ref, rtol=1e-10, floor=floor)


@pytest.mark.parametrize("norm_first", [False, True])
def test_finite_differences(norm_first):
    torch.manual_seed(0)
    encoder = nl.TransformerEncoderLayer(4, 2, 3, dropout=0.0, activation="gelu", norm_first=norm_first).double()
    randomize(encoder, 0)
    padding = torch.tensor([[False, False, True], [False, False, False]])
    src = torch.randn(3, 2, 4, dtype=torch.float64)
    finite_difference_check(encoder, (src,), dict(src_key_padding_mask=padding))
    decoder = nl.TransformerDecoderLayer(4, 2, 3, dropout=0.0, norm_first=norm_first, batch_first=True).double()
    randomize(decoder, 1)
    tgt, memory = torch.randn(2, 2, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    causal = nl.generate_square_subsequent_mask(2, dtype=torch.float64)
    finite_difference_check(decoder, (tgt, memory), dict(tgt_mask=causal, memory_key_padding_mask=padding))


def test_gradients_accumulate():
    torch.manual_seed(0)
    decoder = nl.TransformerDecoder(nl.TransformerDecoderLayer(4, 2, 3, dropout=0.0), 2).double()
    tgt, memory = torch.randn(2, 1, 4, dtype=torch.float64), torch.randn(3, 1, 4, dtype=torch.float64)
    dout = torch.randn(2, 1, 4, dtype=torch.float64)
    decoder(tgt, memory)
    decoder.backward(dout)
    once = [g.clone() for _, g in decoder.params()]
    decoder(tgt, memory)
    decoder.backward(dout)
    for (_, grad), single in zip(decoder.params(), once):
        assert_close("accumulated", grad, 2 * single, rtol=1e-12)


def test_generate_square_subsequent_mask_is_torchs():
    for size in (0, 1, 4):
        expected = torch.nn.Transformer.generate_square_subsequent_mask(size)
        assert torch.equal(nl.generate_square_subsequent_mask(size), expected)


def test_sinusoidal_positional_encoding_is_the_formula():
    layer = nl.SinusoidalPositionalEncoding(6, max_len=10, batch_first=True).double()
    x = torch.randn(2, 4, 6, dtype=torch.float64)
    out = layer(x)
    for pos in range(4):
        for i in range(3):
            angle = pos / 10000 ** (2 * i / 6)
            assert abs(out[1, pos, 2 * i].item() - x[1, pos, 2 * i].item() - math.sin(angle)) < 1e-12
            assert abs(out[1, pos, 2 * i + 1].item() - x[1, pos, 2 * i + 1].item() - math.cos(angle)) < 1e-12
    check_against_autograd(layer, x)
    odd = nl.SinusoidalPositionalEncoding(5, max_len=3)
    assert torch.equal(odd(torch.zeros(3, 5))[2, 4], torch.tensor(math.sin(2 / 10000 ** (4 / 5)), dtype=torch.float32))


@pytest.mark.parametrize("shape, batch_first", [((3, 2, 4), False), ((2, 3, 4), True), ((3, 4), False)])
def test_learned_positional_encoding(shape, batch_first):
    layer = nl.LearnedPositionalEncoding(5, 4, batch_first=batch_first).double()
    x = torch.randn(shape, dtype=torch.float64)
    check_against_autograd(layer, x)
    check_finite_differences(layer, x)
    with pytest.raises(ValueError, match="sequence length 3 exceeds max_len=2"):
        nl.LearnedPositionalEncoding(2, 4, batch_first=batch_first).double()(x)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="TransformerEncoderLayer: activation"):
        nl.TransformerEncoderLayer(4, 2, activation="swish")
    with pytest.raises(ValueError, match="TransformerEncoderLayer.*d_model=4"):
        nl.TransformerEncoderLayer(4, 2)(torch.randn(3, 2, 5))
    with pytest.raises(TypeError, match="TransformerDecoder: expected a TransformerDecoderLayer"):
        nl.TransformerDecoder(nl.TransformerEncoderLayer(4, 2), 2)
    with pytest.raises(ValueError, match="max_len=3"):
        nl.SinusoidalPositionalEncoding(4, max_len=3)(torch.zeros(5, 1, 4))


def test_memory_kept_for_backward_is_within_1_2x_of_autograds():
    torch.manual_seed(0)
    layer, module = twin_pair(lambda ns: ns.TransformerEncoderLayer(32, 4, 64, dropout=0.0), torch.float32, 0)
    module.float()
    x = torch.randn(24, 4, 32)
    layer(x)
    theirs = autograd_saved_bytes(module, x.requires_grad_(True))
    assert held_bytes(layer) <= 1.2 * theirs + 1024, (held_bytes(layer), theirs)


def test_save_and_load_rebuild_the_stacks(tmp_path):
    import nnlab

    torch.manual_seed(0)
    encoder = nl.TransformerEncoder(nl.TransformerEncoderLayer(4, 2, 6, activation="gelu"), 2, norm=nl.LayerNorm(4))
    nnlab.save(encoder, tmp_path / "encoder.pt")
    loaded = nnlab.load(tmp_path / "encoder.pt").eval()
    x = torch.randn(3, 2, 4)
    assert torch.equal(loaded(x), encoder.eval()(x))
