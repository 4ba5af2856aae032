"""Dropout1d/3d, PixelShuffle/Unshuffle, ChannelShuffle, CosineSimilarity,
PairwiseDistance, the Upsample modes, TripletMarginLoss, Fold and Unfold against their
torch.nn namesakes (the same constructor arguments; outputs and every input gradient
under autograd for the same upstream gradient), in float32 and float64, on shapes and
values drawn by hypothesis (batches of 0 and 1, NaN and infinities at drawn positions,
non-contiguous inputs); float64 finite differences; the random layers in distribution.
"""

import inspect
import math
import re
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import (
    CONV_FORWARD_ATOL,
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
from nnlab.layers import (
    AlphaDropout,
    ChannelShuffle,
    CosineSimilarity,
    Dropout1d,
    Dropout3d,
    FeatureAlphaDropout,
    Fold,
    MultiLabelMarginLoss,
    PairwiseDistance,
    PixelShuffle,
    PixelUnshuffle,
    RReLU,
    TripletMarginLoss,
    Unfold,
    Upsample,
    UpsamplingBilinear2d,
    UpsamplingNearest2d,
)

F64 = torch.float64


def compare(layer, module, inputs, dout, rest=(), forward_atol=None):
    """The layer against the module under autograd on the floating ``inputs`` (then the
    data arguments ``rest``, such as targets) with the upstream gradient ``dout`` (an
    Upstream): the output, then the gradient of each input, non-finite entries by position."""
    dtype = inputs[0].dtype
    out = layer(*[x.clone() for x in inputs], *rest)
    douts = dout(out)
    grads = layer.backward(douts)
    grads = grads if isinstance(grads, tuple) else (grads,)
    leaves = [x.clone().requires_grad_(True) for x in inputs]
    reference = module(*leaves, *rest)
    expected = torch.autograd.grad(reference, leaves, douts, allow_unused=True)
    expected = [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, expected)]
    atol = FORWARD_ATOL[dtype] if forward_atol is None else forward_atol
    assert_close("output", out, reference.detach(), atol=atol)
    floor = gradient_floor(expected)
    assert len(grads) == len(inputs)
    for index, (actual, wanted) in enumerate(zip(grads, expected)):
        assert_close(f"d input {index}", actual, wanted, rtol=GRAD_RTOL[dtype], floor=floor)
    return out


def torch_refuses(module, *args):
    """Whether the torch module raises on ``args`` (the nnlab layer must then raise too)."""
    try:
        module(*args)
    except (RuntimeError, ValueError):
        return True
    return False


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


# PixelShuffle, PixelUnshuffle, ChannelShuffle --------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=30)
@given(
    kind=st.sampled_from(["PixelShuffle", "PixelUnshuffle", "ChannelShuffle"]),
    factor=st.integers(1, 3),
    lead=st.lists(st.sampled_from([0, 1, 2]), max_size=2).map(tuple),
    sizes=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
    dout=upstreams,
    data=st.data(),
)
def test_shuffles_match_torch(dtype, kind, factor, lead, sizes, dout, data):
    channels, height, width = sizes
    if kind == "PixelShuffle":
        shape = lead + (channels * factor * factor, height, width)
    elif kind == "PixelUnshuffle":
        shape = lead + (channels, height * factor, width * factor)
    else:
        shape = (lead + (2,))[:1] + (channels * factor, height, width)
    x = data.draw(tensors(shape, dtype))
    layer = getattr(nl, kind)(factor)
    if x.numel() == 0 and kind != "ChannelShuffle":
        # torch 2.13's pixel_unshuffle returns an empty input as it is, of the wrong shape, and
        # pixel_shuffle's backward fails on it: nnlab keeps the documented shapes.
        expected = ((channels, height * factor, width * factor) if kind == "PixelShuffle"
                    else (channels * factor * factor, height, width))
        out = layer(x)
        assert out.shape == lead + expected and layer.backward(torch.ones_like(out)).shape == x.shape
        return
    compare(layer, getattr(torch.nn, kind)(factor), [x], dout, forward_atol=0.0)


def test_shuffles_finite_differences_and_round_trips():
    x = random_tensor((2, 8, 2, 3), F64)
    check_finite_differences(PixelShuffle(2), x)
    check_finite_differences(PixelUnshuffle(2), random_tensor((2, 2, 4, 6), F64))
    check_finite_differences(ChannelShuffle(4), x)
    assert torch.equal(PixelUnshuffle(2)(PixelShuffle(2)(x)), x)
    assert torch.equal(ChannelShuffle(2)(ChannelShuffle(4)(x)), x)
    # the documented index formulas, written out
    out = PixelShuffle(2)(x)
    assert out[1, 1, 2 * 1 + 1, 2 * 2 + 0] == x[1, 1 * 4 + 1 * 2 + 0, 1, 2]
    # ChannelShuffle(g = 4) of C = 8 (k = 2): out[:, b g + a] = x[:, a k + b] at a = 1, b = 1
    assert torch.equal(ChannelShuffle(4)(x)[:, 1 * 4 + 1], x[:, 1 * 2 + 1])


@pytest.mark.parametrize("kind, argument", [("PixelShuffle", "upscale_factor"), ("PixelUnshuffle", "downscale_factor"),
                                            ("ChannelShuffle", "groups")])
def test_shuffles_contract_and_errors(kind, argument):
    layer_class = getattr(nl, kind)
    same_signature(layer_class, getattr(torch.nn, kind))
    assert repr(layer_class(2)) == repr(getattr(torch.nn, kind)(2)) == f"{kind}({argument}=2)"
    assert layer_class(2).state_dict() == {} and layer_class(2).params() == []
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match=f"{kind}.*{argument}"):
            layer_class(bad)
    for shape in [(4, 4), (3, 3, 3), (1, 3, 3, 3), (2, 5, 4, 4)]:
        x = torch.randn(shape)
        if torch_refuses(getattr(torch.nn, kind)(2), x):
            with pytest.raises(ValueError, match=rf"{kind}\(.*expected input of shape .*got {re.escape(str(shape))}"):
                layer_class(2)(x)
        else:
            assert layer_class(2)(x).shape == getattr(torch.nn, kind)(2)(x).shape
    layer = layer_class(2).requires_input_grad(False)
    out = layer(torch.randn(2, 4, 4, 4))
    assert layer.backward(torch.ones_like(out)) is None


# CosineSimilarity, PairwiseDistance --------------------------------------------------------


@st.composite
def broadcasting_pair(draw, min_dims=1):
    """Two shapes that broadcast: the second drops some leading sizes and sets others to 1."""
    shape = draw(st.lists(st.integers(1, 3), min_size=min_dims, max_size=3))
    if shape:
        shape[0] = draw(st.sampled_from([2, 0, 1, 3]))
    other = [size if draw(st.booleans()) else 1 for size in shape][draw(st.integers(0, len(shape))):]
    pair = (tuple(shape), tuple(other))
    return pair if draw(st.booleans()) else pair[::-1]


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=40)
@given(shapes=broadcasting_pair(), eps=st.sampled_from([1e-8, 0.5]), dout=upstreams, data=st.data())
def test_cosine_similarity_matches_torch(dtype, shapes, eps, dout, data):
    rank = max(len(shapes[0]), len(shapes[1]))
    dim = data.draw(st.integers(-rank, rank - 1))
    x1, x2 = (data.draw(tensors(shape, dtype)) for shape in shapes)
    if data.draw(st.booleans()) and x1.numel():
        x1 = torch.zeros_like(x1)  # norms of 0, clamped to eps
    compare(CosineSimilarity(dim, eps), torch.nn.CosineSimilarity(dim, eps), [x1, x2], dout)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=40)
@given(
    shapes=broadcasting_pair(),
    p=st.sampled_from([2.0, 1.0, 0.0, 3.0, 1.5, 0.5, -1.0, math.inf, -math.inf]),
    eps=st.sampled_from([1e-6, 0.0]),
    keepdim=st.booleans(),
    dout=upstreams,
    data=st.data(),
)
def test_pairwise_distance_matches_torch(dtype, shapes, p, eps, keepdim, dout, data):
    x1, x2 = (data.draw(tensors(shape, dtype)) for shape in shapes)
    if data.draw(st.booleans()):
        x2 = x1.clone() if x1.shape == x2.shape else x2  # distances of 0
    layer, module = PairwiseDistance(p, eps, keepdim), torch.nn.PairwiseDistance(p, eps, keepdim)
    if torch_refuses(module, x1, x2):
        with pytest.raises(ValueError, match="PairwiseDistance"):
            layer(x1, x2)
        return
    compare(layer, module, [x1, x2], dout)


def test_cosine_similarity_clamps_each_norm_separately():
    """torch 2.13: x1 . x2 / (max(|x1|, eps) max(|x2|, eps)), not / max(|x1| |x2|, eps)."""
    x1 = torch.tensor([[1e-5, 0.0]], dtype=F64)
    x2 = torch.tensor([[1.0, 0.0]], dtype=F64)
    out = CosineSimilarity(dim=1, eps=1e-3)(x1, x2)
    assert out.item() == pytest.approx(1e-5 / (1e-3 * 1.0))


@pytest.mark.parametrize("make", [lambda: CosineSimilarity(1, 1e-3), lambda: CosineSimilarity(-1),
                                  lambda: PairwiseDistance(), lambda: PairwiseDistance(3.0, 1e-6, True),
                                  lambda: PairwiseDistance(0.5)])
def test_distances_finite_differences_of_both_inputs(make):
    layer = make()
    x1 = random_tensor((3, 4), F64, seed=1)
    x2 = random_tensor((4,), F64, seed=2)
    dout = random_tensor(layer(x1, x2).shape, F64, seed=3)
    dx1, dx2 = layer.backward(dout)
    for name, x, grad in (("dx1", x1, dx1), ("dx2", x2, dx2)):
        flat = x.view(-1)
        numeric = torch.empty_like(flat)
        for index in range(flat.numel()):
            original = flat[index].item()
            flat[index] = original + 1e-6
            plus = (layer(x1, x2) * dout).sum().item()
            flat[index] = original - 1e-6
            minus = (layer(x1, x2) * dout).sum().item()
            flat[index] = original
            numeric[index] = (plus - minus) / 2e-6
        assert_close(name, grad.reshape(-1), numeric, rtol=1e-7)


@pytest.mark.parametrize("layer_class", [CosineSimilarity, PairwiseDistance])
def test_distances_contract_and_errors(layer_class):
    name = layer_class.__name__
    same_signature(layer_class, getattr(torch.nn, name))
    layer = layer_class()
    assert layer.state_dict() == {} == getattr(torch.nn, name)().state_dict()
    with pytest.raises(ValueError, match=rf"{name}.*\(3, 4\).*\(2, 4\).*do not broadcast"):
        layer(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match=f"{name}.*one dtype"):
        layer(torch.randn(3, 4), torch.randn(3, 4, dtype=F64))
    with pytest.raises(ValueError, match=f"{name}.*floating"):
        layer(torch.ones(3, 4, dtype=torch.long), torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match=f"{name}.*x2"):
        layer(torch.randn(3, 4), [1.0])
    with pytest.raises(ValueError, match=f"{name}.*both inputs"):
        layer(torch.randn(3, 4))
    with pytest.raises(RuntimeError, match=name):
        layer_class().backward(torch.ones(3))
    layer.requires_input_grad(False)
    out = layer(torch.randn(3, 4), torch.randn(3, 4))
    assert layer.backward(torch.ones_like(out)) is None


def test_distance_options_are_checked():
    assert repr(CosineSimilarity()) == "CosineSimilarity(dim=1, eps=1e-08)"
    assert repr(PairwiseDistance(1, keepdim=True)) == "PairwiseDistance(p=1.0, eps=1e-06, keepdim=True)"
    with pytest.raises(ValueError, match="CosineSimilarity.*dim 2 is out of range"):
        CosineSimilarity(2)(torch.randn(3, 4), torch.randn(3, 4))
    for bad in (1.0, True, None):
        with pytest.raises(TypeError, match="CosineSimilarity.*dim"):
            CosineSimilarity(bad)
    with pytest.raises(ValueError, match="CosineSimilarity.*eps"):
        CosineSimilarity(1, math.nan)
    for bad in ("2", math.nan, None):
        with pytest.raises(ValueError, match="PairwiseDistance.*p"):
            PairwiseDistance(bad)
    with pytest.raises(TypeError, match="PairwiseDistance.*keepdim"):
        PairwiseDistance(keepdim="yes")


# Upsample's modes, UpsamplingNearest2d, UpsamplingBilinear2d ----------------------------------

SCALES = st.sampled_from([1.5, 2.5, 0.7, 1.3, 11 / 3, 2.0, 3, 1, (1.7, 2.2), (2, 0.9)])


@st.composite
def upsample_twins(draw):
    """An nnlab upsampling layer, its torch twin built from the same options, and the
    input's spatial shape."""
    mode = draw(st.sampled_from(["nearest", "linear", "bilinear", "UpsamplingNearest2d", "UpsamplingBilinear2d"]))
    spatial = 1 if mode == "linear" else 2
    sizes = tuple(draw(st.lists(st.integers(1, 5), min_size=spatial, max_size=spatial)))
    by_size = draw(st.booleans())
    if by_size:
        size = draw(st.integers(1, 7) | st.tuples(*[st.integers(1, 7)] * spatial))
        what = dict(size=size)
    else:
        scale = draw(SCALES)
        scale = scale[0] if spatial == 1 and isinstance(scale, tuple) else scale
        what = dict(scale_factor=scale)
    if mode.startswith("Upsampling"):
        return getattr(nl, mode)(**what), getattr(torch.nn, mode)(**what), sizes
    align_corners = None if mode == "nearest" else draw(st.sampled_from([None, False, True]))
    recompute = None if by_size else draw(st.sampled_from([None, False, True]))
    options = dict(mode=mode, align_corners=align_corners, recompute_scale_factor=recompute)
    scale_factor = what.pop("scale_factor", None)
    layer = Upsample(what.get("size"), scale_factor, **options)
    return layer, torch.nn.Upsample(what.get("size"), scale_factor, **options), sizes


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60)
@given(twins=upsample_twins(), batch=st.sampled_from([2, 0, 1]), dout=upstreams, data=st.data())
def test_upsample_modes_match_torch(dtype, twins, batch, dout, data):
    layer, module, sizes = twins
    x = data.draw(tensors((batch, 2) + sizes, dtype))
    if torch_refuses(module, x):
        with pytest.raises(ValueError, match="Upsampl"):
            layer(x)
        return
    if rounding_is_ambiguous(layer, sizes, dtype):
        # At a source position within one rounding of an integer torch's compiled kernel rounds
        # either way (docstring of Upsample): a weight of about 1e-16 instead of 0, which only a
        # non-finite value can tell apart.
        x = torch.nan_to_num(x, nan=0.0, posinf=3.0, neginf=-3.0)
        dout = finite(dout)
    compare(layer, module, [x], dout)


def finite(upstream):
    return lambda out: torch.nan_to_num(upstream(out), nan=0.0, posinf=3.0, neginf=-3.0)


def rounding_is_ambiguous(layer, sizes, dtype):
    """Whether some source position of the layer's linear interpolation rounds differently
    as a fused multiply-add (``s (o + 0.5) - 0.5`` rounded once) and as two roundings."""
    if layer.mode == "nearest" or layer.align_corners:
        return False
    outs = layer.size or [math.floor(size * scale) for size, scale in zip(sizes, layer.scale_factor)]
    use_scale = layer.size is None and not layer.recompute_scale_factor
    for axis, (size, out) in enumerate(zip(sizes, outs)):
        if out == size:
            continue
        if use_scale:
            s = torch.tensor(1.0 / layer.scale_factor[axis], dtype=F64).to(dtype)
        else:
            s = torch.tensor(size, dtype=dtype) / out
        rows = torch.arange(out, dtype=dtype)
        twice = s * (rows + 0.5) - 0.5
        exact = [Fraction(s.item()) * (o + Fraction(1, 2)) - Fraction(1, 2) for o in range(out)]
        once = torch.tensor([float(value) for value in exact], dtype=F64).to(dtype)
        if not torch.equal(twice.clamp(min=0), once.clamp(min=0)):
            return True
    return False


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: Upsample(scale_factor=1.5), (2, 2, 3, 2)),
        (lambda: Upsample(size=(4, 5), mode="bilinear"), (2, 2, 3, 2)),
        (lambda: Upsample(None, (2.5, 1.5), "bilinear", True), (1, 2, 3, 3)),
        (lambda: Upsample(scale_factor=1.7, mode="linear", recompute_scale_factor=True), (2, 3, 4)),
        (lambda: UpsamplingBilinear2d(size=5), (1, 2, 2, 3)),
        (lambda: UpsamplingNearest2d(scale_factor=2), (1, 2, 2, 3)),
    ],
)
def test_upsample_modes_finite_differences(make, shape):
    check_finite_differences(make(), random_tensor(shape, F64))


def test_upsample_takes_torchs_positions_a_first_number_is_the_output_size():
    x = torch.randn(1, 2, 3, 5)
    for arguments in [(4,), ((6, 2),), (None, 2), (None, 1.5, "bilinear", True)]:
        torch.testing.assert_close(Upsample(*arguments)(x), torch.nn.Upsample(*arguments)(x), rtol=0, atol=1e-6)
    assert Upsample(4)(x).shape == (1, 2, 4, 4)


def test_upsample_keeps_the_integer_nearest_form_and_checks_options():
    assert repr(Upsample()) == "Upsample(scale_factor=(2, 2))"
    assert repr(Upsample(size=(3, 4), mode="bilinear")) == "Upsample(size=(3, 4), mode='bilinear')"
    assert repr(Upsample(scale_factor=1.5, recompute_scale_factor=True)) == (
        "Upsample(scale_factor=(1.5, 1.5), mode='nearest', recompute_scale_factor=True)"
    )
    assert repr(UpsamplingBilinear2d(scale_factor=2)) == "UpsamplingBilinear2d(scale_factor=(2, 2))"
    assert repr(UpsamplingNearest2d(4)) == "UpsamplingNearest2d(size=(4, 4))"
    same_signature(Upsample, torch.nn.Upsample)
    same_signature(UpsamplingNearest2d, torch.nn.UpsamplingNearest2d)
    same_signature(UpsamplingBilinear2d, torch.nn.UpsamplingBilinear2d)
    with pytest.raises(NotImplementedError, match="Upsample.*mode='bicubic'"):
        Upsample(scale_factor=2, mode="bicubic")
    with pytest.raises(ValueError, match="Upsample.*size or scale_factor, not both"):
        Upsample(3, 2)
    with pytest.raises(ValueError, match="Upsample.*align_corners"):
        Upsample(None, 2, "nearest", True)
    with pytest.raises(ValueError, match="Upsample.*recompute_scale_factor"):
        Upsample(4, None, "bilinear", recompute_scale_factor=True)
    with pytest.raises(TypeError, match="Upsample.*align_corners"):
        Upsample(scale_factor=2, mode="bilinear", align_corners="yes")
    with pytest.raises(ValueError, match="Upsample.*size"):
        Upsample(size=(2, 0))
    with pytest.raises(ValueError, match="Upsample.*scale_factor"):
        Upsample(scale_factor=(1.5, 2.0, 3.0), mode="bilinear")
    for layer_class in (UpsamplingNearest2d, UpsamplingBilinear2d):
        with pytest.raises(ValueError, match=f"{layer_class.__name__}.*size or scale_factor"):
            layer_class()
    with pytest.raises(ValueError, match=r"Upsample.*\(N, C, L\), got \(2, 3, 4, 4\)"):
        Upsample(scale_factor=2, mode="linear")(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"Upsample.*empty axis"):
        Upsample(scale_factor=0.4)(torch.randn(1, 1, 2, 2))


# TripletMarginLoss ----------------------------------------------------------------------------


def triplet_reference(margin, p, eps, swap, reduction):
    """torch's triplet loss written with F.pairwise_distance, torch.minimum and
    torch.clamp, except that the hinge's gradient is 0 where it is exactly 0, nnlab's
    convention (torch 2.13's clamp passes the gradient there, 2.14's does not)."""

    def loss(anchor, positive, negative):
        positive_distance = F.pairwise_distance(anchor, positive, p, eps)
        negative_distance = F.pairwise_distance(anchor, negative, p, eps)
        if swap:
            negative_distance = torch.minimum(negative_distance, F.pairwise_distance(positive, negative, p, eps))
        hinge = margin + positive_distance - negative_distance
        losses = torch.where(hinge == 0, hinge.detach(), torch.clamp(hinge, min=0))
        return {"mean": losses.mean, "sum": losses.sum, "none": lambda: losses}[reduction]()

    return loss


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60)
@given(
    shapes=st.sampled_from([((2, 3),) * 3, ((3, 2), (1, 2), (3, 1)), ((1, 4), (2, 4), (2, 4)), ((3,),) * 3,
                            ((0, 2),) * 3, ((1, 1),) * 3]),
    margin=st.sampled_from([1.0, 0.5, 3.0]),
    p=st.sampled_from([2.0, 1.0, 3.0, 0.5, math.inf]),
    eps=st.sampled_from([1e-6, 0.0]),
    swap=st.booleans(),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    dout=upstreams,
    data=st.data(),
)
def test_triplet_margin_loss_matches_torch(dtype, shapes, margin, p, eps, swap, reduction, dout, data):
    order = data.draw(st.permutations(range(3)))
    xs = [data.draw(tensors(shapes[index], dtype)) for index in order]
    if data.draw(st.booleans()) and xs[1].shape == xs[2].shape:
        xs[2] = xs[1].clone()  # ties of the two distances
    options = dict(margin=margin, p=p, eps=eps, swap=swap, reduction=reduction)
    layer = TripletMarginLoss(**options)
    out = compare(layer, triplet_reference(margin, p, eps, swap, reduction), xs, dout)
    assert_close("torch's output", out, torch.nn.TripletMarginLoss(**options)(*xs), atol=FORWARD_ATOL[dtype])


def test_triplet_margin_loss_kink_and_finite_differences():
    anchor = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=F64)
    positive = torch.tensor([[1.0, 0.0], [1.0, 3.0]], dtype=F64)
    negative = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=F64)
    layer = TripletMarginLoss(margin=1.0, eps=0.0)
    # first triplet: 1 + 1 - 2 = 0 exactly, the kink: no gradient (strict > 0, as HingeEmbeddingLoss)
    assert layer(anchor, positive, negative).item() == pytest.approx((0.0 + (1 + 3 - 1)) / 2)
    danchor, dpositive, dnegative = layer.backward()
    assert torch.equal(danchor[0], torch.zeros(2, dtype=F64)) and torch.equal(dnegative[0], torch.zeros(2, dtype=F64))
    for options in (dict(), dict(p=1.0, swap=True, margin=2.0), dict(p=3.0, reduction="sum")):
        layer = TripletMarginLoss(**options)
        xs = [random_tensor((3, 4), F64, seed=seed) for seed in (1, 2, 3)]
        grads = layer(*xs) and layer.backward()
        for name, x, grad in zip(("danchor", "dpositive", "dnegative"), xs, grads):
            flat = x.view(-1)
            numeric = torch.empty_like(flat)
            for index in range(flat.numel()):
                original = flat[index].item()
                flat[index] = original + 1e-6
                plus = layer(*xs).item()
                flat[index] = original - 1e-6
                minus = layer(*xs).item()
                flat[index] = original
                numeric[index] = (plus - minus) / 2e-6
            assert_close(name, grad.reshape(-1), numeric, rtol=1e-7)


def test_triplet_margin_loss_contract_and_errors():
    same_signature(TripletMarginLoss, torch.nn.TripletMarginLoss)
    assert repr(TripletMarginLoss()) == "TripletMarginLoss"
    shown = repr(TripletMarginLoss(2.0, swap=True, reduction="sum"))
    assert shown == "TripletMarginLoss(margin=2.0, swap=True, reduction='sum')"
    assert TripletMarginLoss().state_dict() == {} == torch.nn.TripletMarginLoss().state_dict()
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="TripletMarginLoss.*margin"):
            TripletMarginLoss(margin=bad)
    with pytest.raises(ValueError, match="TripletMarginLoss.*p"):
        TripletMarginLoss(p="2")
    with pytest.raises(TypeError, match="TripletMarginLoss.*swap"):
        TripletMarginLoss(swap="no")
    with pytest.raises(ValueError, match="TripletMarginLoss.*reduction"):
        TripletMarginLoss(reduction="max")
    loss = TripletMarginLoss()
    with pytest.raises(ValueError, match=r"TripletMarginLoss.*one number of dimensions.*\(2, 3\), \(3,\)"):
        loss(torch.randn(2, 3), torch.randn(3), torch.randn(2, 3))
    with pytest.raises(ValueError, match="TripletMarginLoss.*do not broadcast"):
        loss(torch.randn(2, 3), torch.randn(3, 3), torch.randn(2, 3))
    with pytest.raises(ValueError, match="TripletMarginLoss.*all three"):
        loss(torch.randn(2, 3), torch.randn(2, 3))
    with pytest.raises(ValueError, match="TripletMarginLoss.*one dtype"):
        loss(torch.randn(2, 3), torch.randn(2, 3, dtype=F64), torch.randn(2, 3))
    with pytest.raises(TypeError, match="TripletMarginLoss.*negative"):
        loss(torch.randn(2, 3), torch.randn(2, 3), [1.0])
    with pytest.raises(RuntimeError, match="TripletMarginLoss"):
        TripletMarginLoss().backward()
    loss.requires_input_grad(False)
    loss(torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3))
    assert loss.backward() is None


# Fold, Unfold --------------------------------------------------------------------------------

WINDOW_SIDES = st.tuples(st.integers(1, 3), st.integers(1, 2), st.integers(0, 1), st.integers(1, 2))


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60)
@given(
    sides=st.tuples(WINDOW_SIDES, WINDOW_SIDES),
    image=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    channels=st.integers(1, 2),
    batch=st.sampled_from([2, 0, 1, None]),
    fold=st.booleans(),
    dout=upstreams,
    data=st.data(),
)
def test_fold_and_unfold_match_torch(dtype, sides, image, channels, batch, fold, dout, data):
    kernel, dilation, padding, stride = (tuple(side[index] for side in sides) for index in range(4))
    lead = () if batch is None else (batch,)
    if fold:
        options = (kernel, dilation, padding, stride)
        layer, module = Fold(image, *options), torch.nn.Fold(image, *options)
        counts = [(size + 2 * p - d * (k - 1) - 1) // s + 1 for size, k, d, p, s in zip(image, *options)]
        shape = lead + (channels * kernel[0] * kernel[1], max(counts[0], 0) * max(counts[1], 0))
    else:
        layer, module = Unfold(kernel, dilation, padding, stride), torch.nn.Unfold(kernel, dilation, padding, stride)
        shape = lead + (channels,) + image
    x = data.draw(tensors(shape, dtype))
    if torch_refuses(module, x):
        with pytest.raises(ValueError, match="Fold" if fold else "Unfold"):
            layer(x)
        return
    compare(layer, module, [x], dout, forward_atol=CONV_FORWARD_ATOL[dtype])


def test_fold_is_unfolds_adjoint_and_finite_differences():
    unfold = Unfold((2, 3), dilation=(1, 2), padding=1, stride=(2, 1))
    fold = Fold((4, 5), (2, 3), dilation=(1, 2), padding=1, stride=(2, 1))
    x = random_tensor((2, 2, 4, 5), F64, seed=1)
    columns = random_tensor(unfold(x).shape, F64, seed=2)
    # <unfold(x), c> = <x, fold(c)>
    assert (unfold(x) * columns).sum().item() == pytest.approx((x * fold(columns)).sum().item(), rel=1e-12)
    check_finite_differences(unfold, x)
    check_finite_differences(fold, columns)
    check_finite_differences(Unfold(2), random_tensor((3, 3, 3), F64))


def test_fold_and_unfold_contract_and_errors():
    same_signature(Fold, torch.nn.Fold)
    same_signature(Unfold, torch.nn.Unfold)
    assert repr(Unfold(2)) == "Unfold(kernel_size=(2, 2), dilation=(1, 1), padding=(0, 0), stride=(1, 1))"
    assert repr(Fold(4, (2, 1), stride=2)).startswith("Fold(output_size=(4, 4), kernel_size=(2, 1),")
    assert Unfold(2).state_dict() == {} == torch.nn.Unfold(2).state_dict()
    for make, name in ((lambda: Unfold(0), "kernel_size"), (lambda: Unfold(2, padding=-1), "padding"),
                       (lambda: Unfold(2, stride=1.5), "stride"), (lambda: Fold((2, 0), 2), "output_size"),
                       (lambda: Fold(3, 2, dilation=(1, 2, 3)), "dilation")):
        with pytest.raises(ValueError, match=f"(Un)?[Ff]old.*{name}"):
            make()
    with pytest.raises(ValueError, match=r"Unfold.*\(N, C, H, W\) or \(C, H, W\), got \(2, 3\)"):
        Unfold(2)(torch.randn(2, 3))
    with pytest.raises(ValueError, match="Unfold.*does not fit"):
        Unfold(3)(torch.randn(1, 1, 2, 4))
    with pytest.raises(ValueError, match=r"Fold.*\(N, C \* 4, 9\).*got \(1, 4, 8\)"):
        Fold(4, 2)(torch.randn(1, 4, 8))
    with pytest.raises(ValueError, match=r"Fold.*got \(1, 3, 9\)"):
        Fold(4, 2)(torch.randn(1, 3, 9))
    layer = Unfold(2).requires_input_grad(False)
    out = layer(torch.randn(1, 2, 3, 3))
    assert layer.backward(torch.ones_like(out)) is None


# MultiLabelMarginLoss -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60)
@given(
    shape=st.sampled_from([(3, 4), (1, 3), (2, 1), (4,), (), (0, 3)]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    dout=upstreams,
    data=st.data(),
)
def test_multilabel_margin_loss_matches_torch(dtype, shape, reduction, dout, data):
    if shape and shape[0] == 0:
        reduction = "none"  # torch 2.13 reduces an empty batch to an uninitialised value
    classes = shape[-1] if shape else 1
    x = data.draw(tensors(shape, dtype))
    # Class lists padded with -1, with entries after the first -1 (torch ignores them) and repeats.
    y = torch.tensor(data.draw(st.lists(st.integers(-1, classes - 1), min_size=math.prod(shape),
                                        max_size=math.prod(shape))), dtype=torch.long).reshape(shape)
    compare(MultiLabelMarginLoss(reduction=reduction), torch.nn.MultiLabelMarginLoss(reduction=reduction), [x], dout,
            rest=(y,))


def test_multilabel_margin_loss_counts_targets_before_the_first_minus_one_and_finite_differences():
    x = torch.tensor([[0.1, 0.2, 0.4, 0.8]], dtype=F64)
    y = torch.tensor([[3, 0, -1, 1]])
    # targets {3, 0}; non-targets {1, 2}: (1-0.8+0.2) + (1-0.8+0.4) + (1-0.1+0.2) + (1-0.1+0.4), over 4 classes
    expected = (0.4 + 0.6 + 1.1 + 1.3) / 4
    assert MultiLabelMarginLoss()(x, y).item() == pytest.approx(expected, rel=1e-15)
    # The kink: 1 - x[0] + x[1] = 0 exactly gives no gradient (strict > 0, as HingeEmbeddingLoss).
    layer = MultiLabelMarginLoss(reduction="sum")
    layer(torch.tensor([2.0, 1.0], dtype=F64), torch.tensor([0, -1]))
    assert torch.equal(layer.backward(), torch.zeros(2, dtype=F64))
    for reduction in ("mean", "sum"):
        x = random_tensor((3, 5), F64, seed=4)
        y = torch.tensor([[4, 1, -1, 0, 2], [0, 1, 2, 3, -1], [-1, 2, 3, 4, 0]])
        check_finite_differences(MultiLabelMarginLoss(reduction=reduction), x, y)


def test_multilabel_margin_loss_contract_and_errors():
    same_signature(MultiLabelMarginLoss, torch.nn.MultiLabelMarginLoss)
    assert repr(MultiLabelMarginLoss()) == "MultiLabelMarginLoss"
    assert repr(MultiLabelMarginLoss(reduction="sum")) == "MultiLabelMarginLoss(reduction='sum')"
    with pytest.raises(ValueError, match="MultiLabelMarginLoss.*reduction"):
        MultiLabelMarginLoss(reduction="max")
    loss = MultiLabelMarginLoss()
    x = torch.randn(2, 3)
    for y, message in ((torch.tensor([[0, 3, -1], [0, 1, 2]]), r"\[-1, 3\).*3"),
                       (torch.tensor([[0, -2, -1], [0, 1, 2]]), r"\[-1, 3\).*-2"),
                       (torch.tensor([[0, 1, 2], [0, 1, 2]], dtype=torch.int32), "int64.*int32"),
                       (torch.tensor([0, 1, 2]), r"shape \(2, 3\)")):
        assert torch_refuses(torch.nn.MultiLabelMarginLoss(), x, y)
        with pytest.raises(ValueError, match=f"MultiLabelMarginLoss.*{message}"):
            loss(x, y)
    with pytest.raises(ValueError, match=r"MultiLabelMarginLoss.*\(N, C\), \(C,\) or \(\)"):
        loss(torch.randn(2, 3, 4), torch.zeros(2, 3, 4, dtype=torch.long))
    with pytest.raises(RuntimeError, match="MultiLabelMarginLoss"):
        MultiLabelMarginLoss().backward()
    loss.requires_input_grad(False)
    loss(x, torch.zeros(2, 3, dtype=torch.long))
    assert loss.backward() is None


# RReLU -------------------------------------------------------------------------------------

RRELU_BOUNDS = st.sampled_from([(1 / 8, 1 / 3), (0.1, 0.1), (-0.5, 0.7), (0.0, 2.0)])


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=40)
@given(bounds=RRELU_BOUNDS, shape=st.sampled_from([(2, 3), (0, 2), (1,), (), (3, 1, 2)]), dout=upstreams,
       data=st.data())
def test_rrelu_in_eval_mode_matches_torch(dtype, bounds, shape, dout, data):
    x = data.draw(tensors(shape, dtype, points=(0.0,)))
    compare(RReLU(*bounds).eval(), torch.nn.RReLU(*bounds).eval(), [x], dout)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=20)
@given(bounds=RRELU_BOUNDS, seed=st.integers(0, 1000), data=st.data())
def test_rrelu_in_training_mode_scales_what_torch_scales_and_its_backward_is_autograds(dtype, bounds, seed, data):
    x = data.draw(tensors((3, 4), dtype, points=(0.0,)))
    check_against_autograd(RReLU(*bounds), x, seed=seed)
    layer = RReLU(*bounds)
    out = layer(x)
    grad = layer.backward(torch.ones_like(x))
    leaf = x.clone().requires_grad_(True)
    reference = torch.nn.RReLU(*bounds)(leaf)
    (expected,) = torch.autograd.grad(reference, leaf, torch.ones_like(x))
    # Where torch keeps x (x > 0, NaN), so does the layer, with gradient dout; elsewhere both
    # draw a slope in [lower, upper].
    kept = ~(x <= 0)
    assert (grad[kept] == 1).all() and (expected[kept] == 1).all()
    assert torch.allclose(out[kept], x[kept], rtol=0, atol=0, equal_nan=True)
    scaled = ~kept
    for slopes in (grad[scaled], expected[scaled]):
        assert ((slopes >= bounds[0]) & (slopes <= bounds[1])).all()
    assert_close("output", out[scaled], (x * grad)[scaled], atol=FORWARD_ATOL[dtype])


def test_rrelu_draws_its_slopes_as_torch_does_and_finite_differences():
    torch.manual_seed(2)
    x = -torch.rand(20000) - 0.1
    lower, upper = 0.1, 0.4
    ours = RReLU(lower, upper)(x) / x
    theirs = torch.nn.RReLU(lower, upper)(x) / x
    # Uniform on [0.1, 0.4]: mean 0.25, standard deviation 0.3 / sqrt(12) ~ 0.087 (of the mean ~0.0006).
    for slopes in (ours, theirs):
        assert abs(slopes.mean().item() - 0.25) < 0.004
        assert abs(slopes.std().item() - 0.3 / math.sqrt(12)) < 0.004
        assert slopes.min().item() >= lower and slopes.max().item() <= upper
    check_finite_differences(RReLU(0.2, 0.6), random_tensor((3, 4), F64))
    check_finite_differences(RReLU(0.2, 0.6).eval(), random_tensor((3, 4), F64))


def test_rrelu_contract_and_errors():
    same_signature(RReLU, torch.nn.RReLU)
    assert repr(RReLU()) == repr(torch.nn.RReLU()) and repr(RReLU(0.1, 0.2)) == repr(torch.nn.RReLU(0.1, 0.2))
    assert RReLU().state_dict() == {} == torch.nn.RReLU().state_dict()
    with pytest.raises(ValueError, match="RReLU: lower must be at most upper"):
        RReLU(0.5, 0.1)
    for bad in (math.nan, math.inf, "0.1"):
        with pytest.raises(ValueError, match="RReLU: lower"):
            RReLU(bad)
    with pytest.raises(TypeError, match="RReLU.*inplace"):
        RReLU(inplace="yes")
    x = -torch.ones(3)
    assert torch.equal(RReLU(0.2, 0.2, inplace=True)(x), torch.full((3,), -0.2)) and torch.equal(x, -torch.ones(3))
    with pytest.raises(RuntimeError, match="RReLU"):
        RReLU().backward(torch.ones(3))


# AlphaDropout, FeatureAlphaDropout ---------------------------------------------------------------

ALPHA_DROPOUTS = [(AlphaDropout, torch.nn.AlphaDropout, False), (FeatureAlphaDropout, torch.nn.FeatureAlphaDropout, True)]
SELU_SATURATION = 1.0507009873554804934193349852946 * 1.6732632423543772848170429916717


def alpha_dropout_values(p):
    """torch's a and the outputs of a kept and of a dropped zero input, from SELU's constants."""
    a = ((SELU_SATURATION**2 * p + 1) * (1 - p)) ** -0.5
    return a, SELU_SATURATION * a * p, SELU_SATURATION * a * (p - 1)


@pytest.mark.parametrize("layer_class, module_class, feature", ALPHA_DROPOUTS)
@settings(max_examples=15)
@given(p=st.sampled_from([0.2, 0.5, 0.9]), seed=st.integers(0, 1000), data=st.data())
def test_alpha_dropout_is_torchs_affine_map_and_its_backward_is_autograds(layer_class, module_class, feature, p, seed,
                                                                          data):
    shape = data.draw(st.sampled_from([(3, 4), (2, 3, 2), (1, 2, 2, 2)]))
    dtype = data.draw(st.sampled_from(DTYPES))
    x = data.draw(tensors(shape, dtype))
    check_against_autograd(layer_class(p), x, seed=seed)
    torch.manual_seed(seed)
    shifts = layer_class(p)(torch.zeros(shape, dtype=dtype))
    torch.manual_seed(seed)
    out = layer_class(p)(x)
    a, kept_value, dropped_value = alpha_dropout_values(p)
    kept = shifts > 0
    ones = torch.ones(shape, dtype=F64)
    expected = x.double() * torch.where(kept, a * ones, 0.0) + torch.where(kept, kept_value * ones, dropped_value)
    assert_close("output", out, expected.to(dtype), atol=FORWARD_ATOL[dtype])
    torch_shifts = module_class(p)(torch.zeros(shape, dtype=dtype))
    for values in (shifts, torch_shifts):
        assert_close("shifts", values, torch.where(values > 0, kept_value * ones, dropped_value).to(dtype),
                     atol=FORWARD_ATOL[dtype])
        if feature and len(shape) > 2:  # one mask entry per channel, as torch's
            maps = values.flatten(2)
            assert torch.equal(maps, maps[..., :1].expand(maps.shape))


@pytest.mark.parametrize("layer_class, module_class, feature", ALPHA_DROPOUTS)
def test_alpha_dropout_drops_at_torchs_rate_and_keeps_mean_and_variance(layer_class, module_class, feature):
    torch.manual_seed(3)
    p = 0.3
    x = torch.randn(200, 100, 2) if feature else torch.randn(40000)
    _, _, dropped_value = alpha_dropout_values(p)
    for out in (layer_class(p)(x), module_class(p)(x)):
        dropped = (out - dropped_value).abs() < 1e-6
        # 20000 (or 40000) Bernoulli(0.3) entries: standard deviation of the rate below 0.0033.
        assert abs(dropped.double().mean().item() - p) < 0.015
        assert abs(out.mean().item()) < 0.03 and abs(out.std().item() - 1) < 0.03


@pytest.mark.parametrize("layer_class, module_class, feature", ALPHA_DROPOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=10)
@given(dout=upstreams, data=st.data())
def test_alpha_dropout_eval_p_zero_and_p_one_match_torch(layer_class, module_class, feature, dtype, dout, data):
    x = data.draw(tensors((2, 3, 2), dtype))
    for layer, module in ((layer_class(0.7).eval(), module_class(0.7).eval()), (layer_class(0.0), module_class(0.0)),
                          (layer_class(1.0), module_class(1.0))):
        out = compare(layer, module, [x], dout)
        assert out is not x


@pytest.mark.parametrize("layer_class, module_class, feature", ALPHA_DROPOUTS)
def test_alpha_dropout_contract_and_errors(layer_class, module_class, feature):
    same_signature(layer_class, module_class)
    for p, inplace in ((0.5, False), (0.2, True)):
        assert repr(layer_class(p, inplace)) == repr(module_class(p, inplace))
    name = layer_class.__name__
    for bad in (-0.1, 1.5, math.nan, "0.5"):
        with pytest.raises(ValueError, match=f"{name}: p"):
            layer_class(bad)
    with pytest.raises(TypeError, match=f"{name}.*inplace"):
        layer_class(inplace="yes")
    x = torch.randn(4)
    assert torch_refuses(module_class(0.5), x) == feature
    if feature:
        with pytest.raises(ValueError, match=r"FeatureAlphaDropout.*at least 2 dimensions"):
            layer_class(0.5)(x)
        assert torch.equal(layer_class(0.5).eval()(x), module_class(0.5).eval()(x))
    check_finite_differences(layer_class(0.4), random_tensor((3, 4, 2), F64))
    with pytest.raises(RuntimeError, match=name):
        layer_class().backward(torch.ones(3))
