"""Max, average and adaptive pooling against torch.nn twins, autograd and finite
differences, with ties routed exactly as PyTorch routes them."""

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from reference import (
    CONV_FORWARD_ATOL,
    GRAD_RTOL,
    check_against_torch,
    check_finite_differences,
    every_window_touches_input,
)

from nnlab.layers import pooling
from nnlab.layers import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d

DTYPES = [torch.float32, torch.float64]


def out_size(size, kernel, stride, padding, dilation=1):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def exact_gradients(layer, module, x, dout):
    """nnlab's and torch's input gradients for the same x and upstream gradient."""
    out = layer(x.clone())
    dx = layer.backward(dout)
    x_ref = x.clone().requires_grad_(True)
    out_ref = module(x_ref)
    (dx_ref,) = torch.autograd.grad(out_ref, x_ref, dout)
    assert torch.equal(out, out_ref.detach()), "forward differs"
    return dx, dx_ref


window_configs = st.fixed_dictionaries(
    {
        "batch": st.sampled_from([1, 2]),
        "channels": st.sampled_from([1, 3]),
        "height": st.integers(1, 9),
        "width": st.integers(1, 9),
        "kernel": st.tuples(st.integers(1, 5), st.integers(1, 5)),
        "stride": st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))),
        "padding": st.tuples(st.integers(0, 2), st.integers(0, 2)),
        "dilation": st.tuples(st.integers(1, 2), st.integers(1, 2)),
        "seed": st.integers(0, 2**16),
    }
)


def valid(config, use_dilation):
    stride = config["kernel"] if config["stride"] is None else config["stride"]
    dilation = config["dilation"] if use_dilation else (1, 1)
    for axis, size in enumerate((config["height"], config["width"])):
        kernel = config["kernel"][axis]
        if config["padding"][axis] > kernel // 2:
            return False
        count = out_size(size, kernel, stride[axis], config["padding"][axis], dilation[axis])
        if count < 1:
            return False
        if not every_window_touches_input(size, count, kernel, stride[axis], config["padding"][axis], dilation[axis]):
            return False
    return True


# MaxPool2d ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@given(config=window_configs)
def test_maxpool_matches_torch(dtype, config):
    c = config
    assume(valid(c, use_dilation=True))
    kwargs = dict(kernel_size=c["kernel"], stride=c["stride"], padding=c["padding"], dilation=c["dilation"])
    torch.manual_seed(c["seed"])
    x = torch.randn(c["batch"], c["channels"], c["height"], c["width"], dtype=dtype)
    check_against_torch(MaxPool2d(**kwargs), torch.nn.MaxPool2d(**kwargs), x, grad_rtol=GRAD_RTOL[dtype])


@given(config=window_configs, high=st.sampled_from([1, 2, 4]))
def test_maxpool_ties_on_small_integers_exactly_like_torch(config, high):
    c = config
    assume(valid(c, use_dilation=True))
    kwargs = dict(kernel_size=c["kernel"], stride=c["stride"], padding=c["padding"], dilation=c["dilation"])
    generator = torch.Generator().manual_seed(c["seed"])
    x = torch.randint(0, high, (c["batch"], c["channels"], c["height"], c["width"]), generator=generator).float()
    layer = MaxPool2d(**kwargs)
    dout = torch.randint(1, 5, layer(x).shape, generator=generator).float()  # integer sums are exact
    dx, dx_ref = exact_gradients(layer, torch.nn.MaxPool2d(**kwargs), x, dout)
    assert torch.equal(dx, dx_ref)


@pytest.mark.parametrize("kernel, stride", [((16, 17), 3), (17, 1)])
def test_maxpool_with_more_than_256_kernel_offsets_exactly_like_torch(kernel, stride):
    # Past 256 offsets the running argmax is int32, not uint8; ties on small integers.
    # An increasing ramp puts every window's maximum at its last offset (past 255).
    generator = torch.Generator().manual_seed(0)
    ties = torch.randint(0, 30, (2, 2, 21, 22), generator=generator).float()
    ramp = torch.arange(2 * 2 * 21 * 22, dtype=torch.float32).reshape(2, 2, 21, 22)
    for x in (ties, ramp):
        layer = MaxPool2d(kernel, stride)
        dout = torch.randint(1, 5, layer(x).shape, generator=generator).float()
        dx, dx_ref = exact_gradients(layer, torch.nn.MaxPool2d(kernel, stride), x, dout)
        assert torch.equal(dx, dx_ref)


@given(config=window_configs, high=st.sampled_from([1, 2, 4]))
def test_maxpool_forward_under_autograd_routes_ties_like_torch(config, high):
    """compare_layer_to_torch differentiates nnlab's forward with autograd: on tied
    maxima that must send the whole gradient where torch.nn.MaxPool2d sends it (a chain
    of torch.maximum would split it between the tied entries)."""
    c = config
    assume(valid(c, use_dilation=True))
    kwargs = dict(kernel_size=c["kernel"], stride=c["stride"], padding=c["padding"], dilation=c["dilation"])
    generator = torch.Generator().manual_seed(c["seed"])
    x = torch.randint(0, high, (c["batch"], c["channels"], c["height"], c["width"]), generator=generator).float()
    x_ours = x.clone().requires_grad_(True)
    out = MaxPool2d(**kwargs)(x_ours)
    dout = torch.randint(1, 5, out.shape, generator=generator).float()
    (dx_autograd,) = torch.autograd.grad(out, x_ours, dout)
    _, dx_torch = exact_gradients(MaxPool2d(**kwargs), torch.nn.MaxPool2d(**kwargs), x, dout)
    assert torch.equal(dx_autograd, dx_torch)


@pytest.mark.parametrize(
    "kernel, stride, padding, dilation",
    [
        (2, None, 0, 1),  # tiling fast path
        (3, 1, 1, 1),  # overlapping windows with padding
        (3, 2, 1, 2),  # overlapping, padding and dilation
        ((2, 3), (1, 2), (1, 0), (2, 1)),
        (3, 3, 0, 1),  # tiling that drops trailing rows and columns
    ],
)
@pytest.mark.parametrize("value", [0.0, -3.5, 7.0])
def test_maxpool_constant_input_exactly_like_torch(kernel, stride, padding, dilation, value):
    kwargs = dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation)
    x = torch.full((2, 3, 8, 7), value)
    layer = MaxPool2d(**kwargs)
    dout = torch.arange(layer(x).numel(), dtype=torch.float32).reshape(layer(x).shape) % 7 + 1
    dx, dx_ref = exact_gradients(layer, torch.nn.MaxPool2d(**kwargs), x, dout)
    assert torch.equal(dx, dx_ref)


def test_maxpool_tie_goes_to_first_in_row_major_order():
    x = torch.tensor([[[[1.0, 5.0], [5.0, 5.0]]]])
    layer = MaxPool2d(2)
    layer(x)
    dx = layer.backward(torch.ones(1, 1, 1, 1))
    assert torch.equal(dx, torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]]))


@pytest.mark.parametrize("kernel, stride, padding, dilation", [(2, 2, 0, 1), (3, 2, 1, 1), ((3, 2), (2, 3), (1, 1), (1, 2))])
@pytest.mark.parametrize("small_plane_positions", [0, 10**6])
def test_maxpool_window_views_of_small_and_large_planes_exactly_like_torch(
    kernel, stride, padding, dilation, small_plane_positions, monkeypatch
):
    """Both ways of reading the windows (strided views of the input on small planes, column
    sets copied to unit stride on larger ones), forced on one tie-heavy input: outputs,
    indices and integer gradients equal torch's exactly."""
    monkeypatch.setattr(pooling, "SMALL_PLANE_POSITIONS", small_plane_positions)
    generator = torch.Generator().manual_seed(5)
    x = torch.randint(0, 4, (2, 3, 11, 12), generator=generator).float()
    arguments = dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation, return_indices=True)
    layer, module = MaxPool2d(**arguments), torch.nn.MaxPool2d(**arguments)
    out, indices = layer(x)
    x_ref = x.clone().requires_grad_(True)
    out_ref, indices_ref = module(x_ref)
    dout = torch.randint(1, 5, out.shape, generator=generator).float()
    out_ref.backward(dout)
    assert torch.equal(out, out_ref.detach()) and torch.equal(indices, indices_ref)
    assert torch.equal(layer.backward(dout), x_ref.grad)


@pytest.mark.parametrize("layer_class", [MaxPool2d, AvgPool2d])
def test_tiling_fast_path_equals_unfold_path(layer_class, monkeypatch):
    torch.manual_seed(11)
    x = torch.randint(0, 3, (2, 3, 9, 8)).double()  # 9 x 8 with k=2 drops the last row
    tiled = layer_class(2)
    out_tiled = tiled(x)
    dout = torch.randn(out_tiled.shape, dtype=torch.float64)
    dx_tiled = tiled.backward(dout)
    monkeypatch.setattr(pooling, "_is_tiling", lambda *args: False)
    general = layer_class(2)
    torch.testing.assert_close(general(x), out_tiled, rtol=0, atol=1e-15)
    torch.testing.assert_close(general.backward(dout), dx_tiled, rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    "kernel, stride, padding, dilation", [(2, None, 0, 1), (3, 2, 1, 2), ((3, 2), 1, (1, 0), 1)]
)
def test_maxpool_finite_differences(kernel, stride, padding, dilation):
    torch.manual_seed(12)
    layer = MaxPool2d(kernel, stride, padding, dilation)
    # Distinct values keep every argmax away from a tie, where max is not differentiable.
    x = torch.randperm(2 * 2 * 7 * 6).double().reshape(2, 2, 7, 6) / 10
    check_finite_differences(layer, x, rtol=1e-7)


def test_maxpool_window_of_only_padding_gives_minus_inf_and_no_gradient():
    # Width 1, kernel 2, dilation 2, padding 1: the only window's taps are columns -1 and 1.
    # (torch.nn.MaxPool2d returns -inf too but its backward corrupts memory here.)
    layer = MaxPool2d((1, 2), padding=(0, 1), dilation=(1, 2))
    out = layer(torch.ones(1, 1, 1, 1))
    assert out.shape == (1, 1, 1, 1) and out.item() == float("-inf")
    assert torch.equal(layer.backward(torch.ones(1, 1, 1, 1)), torch.zeros(1, 1, 1, 1))


def test_maxpool_keeps_indices_not_input():
    layer = MaxPool2d(3, 1, 1)
    layer(torch.randn(1, 2, 5, 5))
    assert getattr(layer, "_argmax").dtype == torch.int64
    assert not any(isinstance(v, torch.Tensor) and v.dtype.is_floating_point for v in vars(layer).values())


# AvgPool2d ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@given(config=window_configs, count_include_pad=st.booleans())
def test_avgpool_matches_torch(dtype, config, count_include_pad):
    c = config
    assume(valid(c, use_dilation=False))
    kwargs = dict(kernel_size=c["kernel"], stride=c["stride"], padding=c["padding"])
    kwargs["count_include_pad"] = count_include_pad
    torch.manual_seed(c["seed"])
    x = torch.randn(c["batch"], c["channels"], c["height"], c["width"], dtype=dtype)
    check_against_torch(
        AvgPool2d(**kwargs), torch.nn.AvgPool2d(**kwargs), x, forward_atol=CONV_FORWARD_ATOL[dtype]
    )


@pytest.mark.parametrize("kernel, stride, padding", [(2, None, 0), (3, 2, 1), ((3, 2), 1, (1, 0))])
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avgpool_finite_differences(kernel, stride, padding, count_include_pad):
    torch.manual_seed(13)
    layer = AvgPool2d(kernel, stride, padding, count_include_pad=count_include_pad)
    check_finite_differences(layer, torch.randn(2, 2, 7, 6, dtype=torch.float64), rtol=1e-7)


def test_avgpool_defaults_equal_torch_defaults():
    layer = AvgPool2d(3, padding=1)
    assert layer.stride == (3, 3) and layer.count_include_pad
    torch.manual_seed(14)
    x = torch.randn(1, 2, 7, 7, dtype=torch.float64)
    check_against_torch(layer, torch.nn.AvgPool2d(3, padding=1), x)


# Adaptive pooling --------------------------------------------------------------------------

adaptive_configs = st.fixed_dictionaries(
    {
        "batch": st.sampled_from([1, 2]),
        "channels": st.sampled_from([1, 3]),
        "height": st.integers(1, 11),
        "width": st.integers(1, 11),
        "output": st.one_of(
            st.integers(1, 6),
            st.tuples(st.integers(1, 6), st.integers(1, 6)),
            st.tuples(st.none(), st.integers(1, 4)),
        ),
        "seed": st.integers(0, 2**16),
    }
)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("output, shape", [(1, (2, 3, 4, 6)), ((2, 3), (2, 3, 4, 6)), ((4, 1), (3, 8, 2))])
def test_adaptive_avg_pool_on_equal_tiles_matches_torch(dtype, output, shape):
    # H_out divides H and W_out divides W: the tile-mean path (global pooling included).
    torch.manual_seed(4)
    x = torch.randn(shape, dtype=dtype)
    x.view(-1)[5] = float("nan")  # stays in its own tile, as in torch
    layer, module = AdaptiveAvgPool2d(output), torch.nn.AdaptiveAvgPool2d(output)
    out = layer(x)
    assert_same_with_nonfinite(out, module(x))
    check_against_torch(layer, module, torch.randn(shape, dtype=dtype), grad_rtol=GRAD_RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["AdaptiveMaxPool2d", "AdaptiveAvgPool2d"])
@given(config=adaptive_configs)
def test_adaptive_matches_torch(dtype, kind, config):
    c = config
    layer = {"AdaptiveMaxPool2d": AdaptiveMaxPool2d, "AdaptiveAvgPool2d": AdaptiveAvgPool2d}[kind](c["output"])
    module = getattr(torch.nn, kind)(c["output"])
    torch.manual_seed(c["seed"])
    x = torch.randn(c["batch"], c["channels"], c["height"], c["width"], dtype=dtype)
    check_against_torch(layer, module, x, forward_atol=CONV_FORWARD_ATOL[dtype])


@given(config=adaptive_configs, high=st.sampled_from([1, 2, 3]))
def test_adaptive_max_ties_exactly_like_torch(config, high):
    c = config
    generator = torch.Generator().manual_seed(c["seed"])
    x = torch.randint(0, high, (c["batch"], c["channels"], c["height"], c["width"]), generator=generator).float()
    layer = AdaptiveMaxPool2d(c["output"])
    dout = torch.randint(1, 5, layer(x).shape, generator=generator).float()
    dx, dx_ref = exact_gradients(layer, torch.nn.AdaptiveMaxPool2d(c["output"]), x, dout)
    assert torch.equal(dx, dx_ref)


@pytest.mark.parametrize("output", [(3, 4), 5, (7, 2)])
def test_adaptive_max_constant_input_exactly_like_torch(output):
    x = torch.full((2, 2, 7, 9), 1.5)
    layer = AdaptiveMaxPool2d(output)
    dout = torch.arange(layer(x).numel(), dtype=torch.float32).reshape(layer(x).shape) % 5 + 1
    dx, dx_ref = exact_gradients(layer, torch.nn.AdaptiveMaxPool2d(output), x, dout)
    assert torch.equal(dx, dx_ref)


@pytest.mark.parametrize("layer_class", [AdaptiveMaxPool2d, AdaptiveAvgPool2d])
@pytest.mark.parametrize("output", [(3, 4), (4, None), 8])
def test_adaptive_finite_differences(layer_class, output):
    x = torch.randperm(2 * 2 * 7 * 6).double().reshape(2, 2, 7, 6) / 10
    check_finite_differences(layer_class(output), x, rtol=1e-7)


def test_adaptive_output_size_forms():
    assert AdaptiveMaxPool2d(4).output_size == (4, 4)
    assert AdaptiveAvgPool2d((None, 3))(torch.randn(1, 2, 5, 7)).shape == (1, 2, 5, 3)
    assert repr(AdaptiveMaxPool2d((4, 4))) == "AdaptiveMaxPool2d(output_size=(4, 4))"
    assert repr(AdaptiveAvgPool2d(2)) == "AdaptiveAvgPool2d(output_size=(2, 2))"


# Every pooling layer: unbatched input, reprs, errors --------------------------------------

ALL_POOLS = [
    (lambda: MaxPool2d(3, 2, 1), torch.nn.MaxPool2d(3, 2, 1)),
    (lambda: MaxPool2d(2), torch.nn.MaxPool2d(2)),
    (lambda: AvgPool2d(3, 1, 1), torch.nn.AvgPool2d(3, 1, 1)),
    (lambda: AvgPool2d(2), torch.nn.AvgPool2d(2)),
    (lambda: AdaptiveMaxPool2d((3, 2)), torch.nn.AdaptiveMaxPool2d((3, 2))),
    (lambda: AdaptiveAvgPool2d((3, 2)), torch.nn.AdaptiveAvgPool2d((3, 2))),
]
POOL_IDS = [repr(module) for _, module in ALL_POOLS]


@pytest.mark.parametrize("make, module", ALL_POOLS, ids=POOL_IDS)
def test_pooling_unbatched_input(make, module):
    torch.manual_seed(15)
    x = torch.randn(3, 7, 6, dtype=torch.float64)
    out = check_against_torch(make(), module, x)
    assert out.dim() == 3 and out.shape[0] == 3


@pytest.mark.parametrize("make, module", ALL_POOLS, ids=POOL_IDS)
def test_pooling_backward_before_forward(make, module):
    layer = make()
    with pytest.raises(RuntimeError, match=f"{type(layer).__name__}.*before forward"):
        layer.backward(torch.randn(1, 3, 2, 2))


@pytest.mark.parametrize("make, module", ALL_POOLS, ids=POOL_IDS)
@pytest.mark.parametrize("shape", [(7, 6), (1, 1, 1, 7, 6)])
def test_pooling_wrong_ndim(make, module, shape):
    layer = make()
    with pytest.raises(ValueError, match=type(layer).__name__):
        layer(torch.randn(*shape))


def test_pooling_reprs():
    assert repr(MaxPool2d(2)) == "MaxPool2d(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0))"
    assert repr(MaxPool2d(3, 1, 1, 2)) == (
        "MaxPool2d(kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(2, 2))"
    )
    assert repr(AvgPool2d((2, 3), 1)) == "AvgPool2d(kernel_size=(2, 3), stride=(1, 1), padding=(0, 0))"
    assert repr(AvgPool2d(3, padding=1, count_include_pad=False)) == (
        "AvgPool2d(kernel_size=(3, 3), stride=(3, 3), padding=(1, 1), count_include_pad=False)"
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: MaxPool2d(0),
        lambda: MaxPool2d(2, stride=0),
        lambda: MaxPool2d(2, padding=-1),
        lambda: MaxPool2d(2, padding=2),  # more than half the kernel, as torch refuses
        lambda: MaxPool2d((3, 2), padding=(1, 2)),
        lambda: MaxPool2d(2, dilation=0),
        lambda: AvgPool2d(3, padding=2),
        lambda: AvgPool2d((2, 2, 2)),
        lambda: AdaptiveMaxPool2d(0),
        lambda: AdaptiveAvgPool2d((2, 2, 2)),
        lambda: AdaptiveAvgPool2d("4"),
    ],
)
def test_pooling_bad_arguments(make):
    with pytest.raises(ValueError, match="Pool2d"):
        make()


def test_pooling_kernel_larger_than_padded_input():
    with pytest.raises(ValueError, match="MaxPool2d.*larger than the padded input"):
        MaxPool2d(5, padding=1)(torch.randn(1, 1, 2, 8))
    with pytest.raises(ValueError, match="MaxPool2d.*larger than the padded input"):
        MaxPool2d(3, dilation=3)(torch.randn(1, 1, 6, 6))
    with pytest.raises(ValueError, match="AvgPool2d.*larger than the padded input"):
        AvgPool2d(4)(torch.randn(2, 3, 3))


# Non-finite values route as in torch (issue 9, item 4) -----------------------------------


def assert_same_with_nonfinite(actual, expected):
    """NaN where torch has NaN, the same infinities, finite entries within 1e-6."""
    assert torch.equal(actual.isnan(), expected.isnan())
    assert torch.equal(actual.isinf(), expected.isinf())
    finite = ~(expected.isnan() | expected.isinf())
    assert torch.equal(actual[expected.isinf()], expected[expected.isinf()])
    torch.testing.assert_close(actual[finite], expected[finite], rtol=0, atol=1e-6)


def run_both(layer, module, x, dout):
    x_ref = x.clone().requires_grad_(True)
    expected = module(x_ref)
    expected.backward(dout)
    out = layer(x.clone())
    dx = layer.backward(dout.clone())
    assert_same_with_nonfinite(out, expected.detach())
    assert_same_with_nonfinite(dx, x_ref.grad)


def test_adaptive_avg_pool_keeps_a_nan_in_its_own_window():
    x = torch.randn(1, 2, 6, 5)
    x[0, 0, 1, 1] = float("nan")
    x[0, 1, 4, 0] = float("inf")
    run_both(AdaptiveAvgPool2d((3, 2)), torch.nn.AdaptiveAvgPool2d((3, 2)), x, torch.randn(1, 2, 3, 2))


def test_adaptive_avg_pool_keeps_an_inf_gradient_in_its_window():
    dout = torch.randn(1, 2, 3, 2)
    dout[0, 1, 0, 0] = float("inf")
    run_both(AdaptiveAvgPool2d((3, 2)), torch.nn.AdaptiveAvgPool2d((3, 2)), torch.randn(1, 2, 7, 5), dout)


def test_max_pool_sends_no_gradient_into_padding_when_a_window_is_all_minus_inf():
    x = torch.full((1, 1, 3, 3), float("-inf"))
    run_both(MaxPool2d(2, 2, 1), torch.nn.MaxPool2d(2, 2, 1), x, torch.ones(1, 1, 2, 2))
    x = torch.randn(2, 3, 6, 6)
    x[0, 1, :3, :3] = float("-inf")
    run_both(MaxPool2d(3, 2, 1), torch.nn.MaxPool2d(3, 2, 1), x, torch.randn(2, 3, 3, 3))


@pytest.mark.parametrize(
    "layer, module",
    [
        (MaxPool2d(2), torch.nn.MaxPool2d(2)),
        (MaxPool2d(3, 1, 1), torch.nn.MaxPool2d(3, 1, 1)),
        (AdaptiveMaxPool2d((2, 3)), torch.nn.AdaptiveMaxPool2d((2, 3))),
    ],
)
def test_max_pools_send_the_gradient_to_the_last_nan_as_torch(layer, module):
    x = torch.randn(2, 2, 4, 6)
    x[0, 0, 0, 0] = x[0, 0, 1, 1] = float("nan")
    x[1, 1, 2, 3] = float("nan")
    out_shape = module(x).shape
    run_both(layer, module, x, torch.randn(out_shape))


@pytest.mark.parametrize(
    "layer, module, shape",
    [
        (MaxPool2d(2, return_indices=True), torch.nn.MaxPool2d(2, return_indices=True), (2, 3, 5, 7)),
        (MaxPool2d((2, 3), return_indices=True), torch.nn.MaxPool2d((2, 3), return_indices=True), (3, 4, 8)),
        (pooling.MaxPool1d(3, return_indices=True), torch.nn.MaxPool1d(3, return_indices=True), (2, 2, 10)),
    ],
)
def test_tiling_max_pool_indices_ties_and_nans_as_torch(layer, module, shape):
    """Windows that tile the input (stride = kernel, ``MaxPool2d(2)``, the courses' pool):
    small integers make ties (torch takes the first maximal entry), a window with two NaN
    takes the last, a window of -inf its first entry; rows and columns past the last window
    get no gradient; the indices are torch's, batched and unbatched."""
    x = torch.randint(0, 3, shape).float()
    x.view(-1)[[0, 1, 5]] = float("nan")
    x.view(-1)[-4:] = float("-inf")
    x_ref = x.clone().requires_grad_(True)
    expected, expected_indices = module(x_ref)
    dout = torch.randn(expected.shape)
    expected.backward(dout)
    out, indices = layer(x.clone())
    assert torch.equal(indices, expected_indices)
    assert_same_with_nonfinite(out, expected.detach())
    assert_same_with_nonfinite(layer.backward((dout.clone(), None)), x_ref.grad)
