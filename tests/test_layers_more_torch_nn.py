"""Dropout1d/3d, PixelShuffle/Unshuffle, ChannelShuffle, CosineSimilarity,
PairwiseDistance, the Upsample modes, TripletMarginLoss, Fold and Unfold against their
torch.nn namesakes (the same constructor arguments; outputs and every input gradient
under autograd for the same upstream gradient), in float32 and float64, on shapes and
values drawn by hypothesis (batches of 0 and 1, NaN and infinities at drawn positions,
non-contiguous inputs); float64 finite differences; the random layers in distribution.
"""

import inspect
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import (
    FORWARD_ATOL,
    GRAD_RTOL,
    assert_close,
    check_against_autograd,
    check_against_torch,
    check_finite_differences,
    gradient_floor,
    random_tensor,
)
from special_values import tensors
from test_layers_parity import DTYPES, upstreams

import nnlab.layers as nl
from nnlab.layers import Dropout1d, Dropout3d

F64 = torch.float64


def same_signature(layer_class, module_class):
    """The constructor's argument names and defaults, in order, are torch's."""
    ours = inspect.signature(layer_class).parameters
    theirs = inspect.signature(module_class).parameters
    assert [(name, p.default) for name, p in ours.items()] == [(name, p.default) for name, p in theirs.items()]


# Dropout1d, Dropout3d ---------------------------------------------------------------------

CHANNEL_DROPOUTS = [(Dropout1d, torch.nn.Dropout1d, 1), (Dropout3d, torch.nn.Dropout3d, 3)]


@pytest.mark.parametrize("layer_class, module_class, spatial", CHANNEL_DROPOUTS)
@settings(max_examples=15)
@given(batched=st.booleans(), p=st.sampled_from([0.0, 0.25, 0.5, 0.9, 1.0]), seed=st.integers(0, 1000), data=st.data())
def test_channel_dropout_zeroes_whole_channels_and_its_backward_is_autograds(
    layer_class, module_class, spatial, batched, p, seed, data
):
    lead = (data.draw(st.sampled_from([0, 1, 3])),) if batched else ()
    shape = lead + tuple(data.draw(st.lists(st.integers(1, 3), min_size=spatial + 1, max_size=spatial + 1)))
    dtype = data.draw(st.sampled_from(DTYPES))
    x = data.draw(tensors(shape, dtype))
    check_against_autograd(layer_class(p), x, seed=seed)
    torch.manual_seed(seed)
    out = layer_class(p)(x)
    finite = x.isfinite() & (x != 0)
    kept = torch.where(finite, out / torch.where(finite, x, 1.0), math.nan)
    # One ratio, 0 or 1 / (1 - p), per channel across its whole feature map, as in torch.
    ratios = kept.reshape(-1, math.prod(shape[-spatial:]))
    for row in ratios:
        values = row[~row.isnan()].unique()
        assert len(values) <= 1
        allowed = [0.0] if p == 1 else [0.0, pytest.approx(1 / (1 - p))]
        assert values.numel() == 0 or values.item() in allowed
    reference = module_class(p)(torch.ones(shape, dtype=dtype))
    assert reference.shape == out.shape


@pytest.mark.parametrize("layer_class, module_class, spatial", CHANNEL_DROPOUTS)
@pytest.mark.parametrize("batched", [True, False])
def test_channel_dropout_drops_at_torchs_rate(layer_class, module_class, spatial, batched):
    torch.manual_seed(1)
    p = 0.3
    shape = (400, 50) + (2,) * spatial if batched else (20000,) + (2,) * spatial
    x = torch.ones(shape)
    first = (0,) * spatial
    dropped = (layer_class(p)(x)[(..., *first)] == 0).double().mean().item()
    reference = module_class(p)(x)
    # torch's mask is per channel too: every entry of a channel equals its first.
    assert torch.equal(reference, reference[(..., *first)][(...,) + (None,) * spatial].expand(shape))
    dropped_ref = (reference[(..., *first)] == 0).double().mean().item()
    # 20000 Bernoulli(0.3) channels: standard deviation of the rate ~0.0032.
    assert abs(dropped - p) < 0.015
    assert abs(dropped - dropped_ref) < 0.02
    assert abs(layer_class(p)(x).mean().item() - 1.0) < 0.03


@pytest.mark.parametrize("layer_class, module_class, spatial", CHANNEL_DROPOUTS)
def test_channel_dropout_eval_and_p_zero_are_identity_like_torch(layer_class, module_class, spatial):
    x = random_tensor((2, 3) + (2,) * spatial, torch.float32)
    for layer, module in ((layer_class(0.7).eval(), module_class(0.7).eval()), (layer_class(0.0), module_class(0.0))):
        check_against_torch(layer, module, x)
        out = layer(x)
        assert torch.equal(out, x) and out is not x
    check_finite_differences(layer_class(0.4), random_tensor((3, 4) + (2,) * spatial, F64))


@pytest.mark.parametrize("layer_class, module_class, spatial", CHANNEL_DROPOUTS)
def test_channel_dropout_contract_and_errors(layer_class, module_class, spatial):
    name = layer_class.__name__
    same_signature(layer_class, module_class)
    assert repr(layer_class()) == f"{name}(p=0.5)"
    assert layer_class(0.2).params() == [] and layer_class(0.2).state_dict() == {} == module_class(0.2).state_dict()
    x = torch.randn((2, 3) + (2,) * spatial)
    before = x.clone()
    layer_class(0.5, inplace=True)(x)
    assert torch.equal(x, before)
    for bad in (1.5, -0.1, math.nan, "0.5"):
        with pytest.raises(ValueError, match=f"{name}.*p"):
            layer_class(bad)
    with pytest.raises(TypeError, match=f"{name}.*inplace"):
        layer_class(0.5, inplace=None)
    for dims in (spatial, spatial + 3):
        with pytest.raises(ValueError, match=rf"{name}.*got \({', '.join(['2'] * dims)},?\)"):
            layer_class()(torch.randn((2,) * dims))
    with pytest.raises(RuntimeError, match=name):
        layer_class().backward(torch.ones((1, 1) + (1,) * spatial))
    with pytest.raises(TypeError, match=name):
        layer_class()([1.0, 2.0])


def test_dropout1d_refuses_what_torch_refuses():
    with pytest.raises(RuntimeError):
        torch.nn.Dropout1d()(torch.randn(2, 2, 2, 2))
    with pytest.raises(ValueError, match="Dropout1d"):
        Dropout1d()(torch.randn(2, 2, 2, 2))
