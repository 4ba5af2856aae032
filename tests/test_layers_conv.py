"""Conv2d against torch.nn twins, autograd and finite differences."""

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from reference import (
    CONV_FORWARD_ATOL,
    GRAD_RTOL,
    check_against_autograd,
    check_against_torch,
    check_finite_differences,
    copy_params,
    torch_twin,
)

import nnlab.layers.conv as conv_module
from nnlab.layers import (
    Conv2d,
    Flatten,
    MaxPool2d,
    ReLU,
    Sequential,
)

DTYPES = [torch.float32, torch.float64]


def out_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv_pair(
    in_channels, out_channels, kernel, stride=1, padding=0, dilation=1, bias=True, dtype=torch.float32, mode="zeros"
):
    """An nnlab Conv2d and its torch twin with the same weights."""
    layer = Conv2d(in_channels, out_channels, kernel, stride, padding, dilation, bias=bias, padding_mode=mode).to(dtype=dtype)
    module = torch.nn.Conv2d(
        in_channels, out_channels, kernel, stride, padding, dilation, bias=bias, padding_mode=mode
    ).to(dtype)
    copy_params(layer, module)
    return layer, module


# Randomised grid against torch.nn.Conv2d -------------------------------------------------

conv_configs = st.fixed_dictionaries(
    {
        "batch": st.sampled_from([1, 3]),
        "in_channels": st.sampled_from([1, 3]),
        "out_channels": st.sampled_from([1, 4]),
        "height": st.integers(1, 9),
        "width": st.integers(1, 9),
        "kernel": st.tuples(st.integers(1, 5), st.integers(1, 5)),
        "stride": st.tuples(st.integers(1, 3), st.integers(1, 3)),
        "padding": st.tuples(st.integers(0, 2), st.integers(0, 2)),
        "dilation": st.tuples(st.integers(1, 2), st.integers(1, 2)),
        "bias": st.booleans(),
        "seed": st.integers(0, 2**16),
    }
)


@pytest.mark.parametrize("dtype", DTYPES)
@given(config=conv_configs)
def test_conv2d_matches_torch(dtype, config):
    c = config
    for axis, size in enumerate((c["height"], c["width"])):
        assume(out_size(size, c["kernel"][axis], c["stride"][axis], c["padding"][axis], c["dilation"][axis]) >= 1)
    torch.manual_seed(c["seed"])
    layer, module = conv_pair(
        c["in_channels"], c["out_channels"], c["kernel"], c["stride"], c["padding"], c["dilation"], c["bias"], dtype
    )
    x = torch.randn(c["batch"], c["in_channels"], c["height"], c["width"], dtype=dtype)
    out = check_against_torch(layer, module, x, forward_atol=CONV_FORWARD_ATOL[dtype], grad_rtol=GRAD_RTOL[dtype])
    assert out.is_contiguous()


@pytest.mark.parametrize(
    "kernel, stride, padding, dilation, bias",
    [
        (3, 1, 1, 1, True),
        ((2, 3), (2, 1), (0, 2), (1, 2), False),
        (1, 3, 0, 1, True),  # padding 0 with stride > 1 drops trailing rows
        (4, 2, 2, 2, True),
    ],
)
@pytest.mark.parametrize("channels", [(2, 3), (3, 2)], ids=["C_out > C_in", "C_out <= C_in"])
def test_conv2d_finite_differences(kernel, stride, padding, dilation, bias, channels):
    torch.manual_seed(1)
    layer = Conv2d(*channels, kernel, stride, padding, dilation, bias=bias).to(dtype=torch.float64)
    x = torch.randn(2, channels[0], 7, 6, dtype=torch.float64)
    check_finite_differences(layer, x, rtol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
@given(config=conv_configs)
def test_conv2d_circular_padding_matches_torch(dtype, config):
    c = config
    for axis, size in enumerate((c["height"], c["width"])):
        assume(c["padding"][axis] <= size)  # torch: circular padding wraps around at most once
        assume(out_size(size, c["kernel"][axis], c["stride"][axis], c["padding"][axis], c["dilation"][axis]) >= 1)
    torch.manual_seed(c["seed"])
    layer, module = conv_pair(
        c["in_channels"], c["out_channels"], c["kernel"], c["stride"], c["padding"], c["dilation"], c["bias"], dtype,
        mode="circular",
    )
    x = torch.randn(c["batch"], c["in_channels"], c["height"], c["width"], dtype=dtype)
    check_against_torch(layer, module, x, forward_atol=CONV_FORWARD_ATOL[dtype], grad_rtol=GRAD_RTOL[dtype])


@pytest.mark.parametrize("padding, shape", [(1, (2, 2, 5, 4)), ((2, 1), (1, 2, 2, 3)), ((1, 3), (2, 2, 4, 3))])
def test_conv2d_circular_padding_finite_differences_and_unbatched(padding, shape):
    torch.manual_seed(3)
    layer = Conv2d(2, 3, (3, 2), padding=padding, padding_mode="circular").to(dtype=torch.float64)
    x = torch.randn(shape, dtype=torch.float64)
    check_finite_differences(layer, x, rtol=1e-7)
    check_against_autograd(layer, x[0])


def test_conv2d_padding_mode_errors_and_repr():
    with pytest.raises(ValueError, match=r"Conv2d: padding_mode must be one of \('zeros', 'reflect', 'replicate', 'circular'\), got 'mirror'"):
        Conv2d(1, 1, 3, padding_mode="mirror")
    layer = Conv2d(1, 1, 3, padding=3, padding_mode="circular")
    with pytest.raises(ValueError, match=r"Conv2d\(1, 1, .*padding_mode=circular\): circular padding \(3, 3\) would wrap"):
        layer(torch.randn(1, 1, 2, 5))
    assert repr(Conv2d(2, 4, 3, padding=1, padding_mode="circular")) == (
        "Conv2d(2, 4, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), padding_mode=circular)"
    )
    assert repr(Conv2d(2, 4, 3, padding=1, padding_mode="circular")) == repr(
        torch.nn.Conv2d(2, 4, 3, padding=1, padding_mode="circular")
    )


def test_conv2d_backward_matches_autograd_through_own_forward():
    torch.manual_seed(2)
    layer = Conv2d(3, 5, 3, stride=2, padding=1).to(dtype=torch.float64)
    check_against_autograd(layer, torch.randn(4, 3, 9, 8, dtype=torch.float64))


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_unbatched_input(dtype):
    torch.manual_seed(3)
    layer, module = conv_pair(3, 4, (3, 2), stride=(1, 2), padding=1, dtype=dtype)
    x = torch.randn(3, 7, 5, dtype=dtype)
    out = check_against_torch(layer, module, x, forward_atol=CONV_FORWARD_ATOL[dtype])
    assert out.shape == (4, 7, 3)
    assert layer.backward(torch.ones_like(out)).shape == x.shape


def test_conv2d_gradients_accumulate_and_zero():
    torch.manual_seed(4)
    layer = Conv2d(2, 3, 3, padding=1).to(dtype=torch.float64)
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    dout = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    layer(x)
    layer.backward(dout)
    once = [grad.clone() for _, grad in layer.params()]
    layer(x)
    layer.backward(dout)
    for first, (_, twice) in zip(once, layer.params()):
        torch.testing.assert_close(twice, 2 * first)
    layer.zero_grad()
    assert all(torch.all(grad == 0) for _, grad in layer.params())


def test_conv2d_forward_is_differentiable_and_leaves_input_alone():
    layer = Conv2d(2, 3, 3)
    x = torch.randn(1, 2, 5, 5)
    before = x.clone()
    x_ref = x.clone().requires_grad_(True)
    layer(x_ref).sum().backward()
    assert x_ref.grad is not None and x_ref.grad.shape == x.shape
    layer(x)
    assert torch.equal(x, before)


CONV_LAYOUT_CASES = [
    # (batch or None for unbatched, in_channels, out_channels, kernel, stride, padding, dilation, bias, H, W)
    (3, 2, 4, 3, 1, 1, 1, True, 8, 7),
    (2, 3, 2, (3, 2), (2, 1), (1, 2), (2, 1), False, 9, 6),
    (None, 2, 3, 2, 2, 0, 1, True, 7, 7),
    (0, 2, 3, 3, 1, 1, 1, True, 5, 5),
    (2, 1, 5, 1, 3, 0, 1, True, 7, 8),
    # C_out <= C_in with stride 1: dx as a correlation of dout, no fold.
    (2, 4, 3, 3, 1, 1, 2, True, 9, 8),
    (2, 3, 3, (3, 1), 1, (2, 0), 1, False, 6, 5),
    (None, 3, 2, 2, 1, 1, (1, 2), True, 5, 6),
    (0, 3, 3, 3, 1, 1, 1, True, 5, 5),
    # ... except where the padding exceeds the kernel's reach (k = 1, p = 1).
    (2, 3, 2, 1, 1, 1, 1, True, 5, 5),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["zeros", "circular"])
@pytest.mark.parametrize("per_sample", [True, False], ids=["batched GEMM", "one large GEMM"])
@pytest.mark.parametrize("case", CONV_LAYOUT_CASES)
def test_conv2d_both_gemm_layouts_match_torch(dtype, mode, per_sample, case, monkeypatch):
    # The layout follows the size of each sample's product; force each one in turn.
    monkeypatch.setattr(conv_module, "PER_SAMPLE_GEMM", 0 if per_sample else math.inf)
    batch, in_channels, out_channels, kernel, stride, padding, dilation, bias, height, width = case
    torch.manual_seed(5)
    layer, module = conv_pair(in_channels, out_channels, kernel, stride, padding, dilation, bias, dtype, mode)
    shape = (in_channels, height, width) if batch is None else (batch, in_channels, height, width)
    x = torch.randn(shape, dtype=dtype)
    out = check_against_torch(layer, module, x, forward_atol=CONV_FORWARD_ATOL[dtype], grad_rtol=GRAD_RTOL[dtype])
    assert out.is_contiguous() and layer.backward(torch.ones_like(out)).is_contiguous()


def test_conv2d_keeps_its_input_not_the_columns():
    layer = Conv2d(4, 8, 3, padding=1)
    x = torch.randn(2, 4, 6, 6)
    layer(x)
    state = {id(param) for param, _ in layer.params()}
    held = [value for value in vars(layer).values() if isinstance(value, torch.Tensor) and id(value) not in state]
    assert len(held) == 1 and held[0].untyped_storage().data_ptr() == x.untyped_storage().data_ptr()


def test_conv2d_init_like_pytorch():
    torch.manual_seed(5)
    layer = Conv2d(8, 16, (3, 5))
    bound = 1 / math.sqrt(8 * 3 * 5)
    assert layer.weight.shape == (16, 8, 3, 5) and layer.bias.shape == (16,)
    assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
    # U(-b, b) has standard deviation b / sqrt(3).
    assert abs(layer.weight.std().item() - bound / math.sqrt(3)) < 0.1 * bound


def test_conv2d_attributes_and_repr():
    layer = Conv2d(3, 16, 3)
    assert (layer.kernel_size, layer.stride, layer.padding, layer.dilation) == ((3, 3), (1, 1), (0, 0), (1, 1))
    assert repr(layer) == "Conv2d(3, 16, kernel_size=(3, 3), stride=(1, 1), padding=(0, 0))"
    assert repr(Conv2d(3, 16, (3, 1), 2, 1, 2, bias=False)) == (
        "Conv2d(3, 16, kernel_size=(3, 1), stride=(2, 2), padding=(1, 1), dilation=(2, 2), bias=False)"
    )
    assert Conv2d(1, 1, 1, bias=False).params()[0][0].shape == (1, 1, 1, 1)


def test_conv2d_state_dict_round_trip():
    first = Conv2d(2, 3, 3)
    second = Conv2d(2, 3, 3)
    second.load_state_dict(first.state_dict())
    x = torch.randn(1, 2, 4, 4)
    assert torch.equal(first(x), second(x))
    assert set(first.state_dict()) == {"weight", "bias"}


# Errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=0),
        dict(kernel_size=(3, 0)),
        dict(kernel_size=3, stride=0),
        dict(kernel_size=3, padding=-1),
        dict(kernel_size=3, dilation=0),
        dict(kernel_size=(1, 2, 3)),
    ],
)
def test_conv2d_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="Conv2d"):
        Conv2d(2, 3, **kwargs)


def test_conv2d_bad_channel_counts():
    with pytest.raises(ValueError, match="Conv2d"):
        Conv2d(0, 3, 3)


def test_conv2d_kernel_larger_than_padded_input():
    layer = Conv2d(1, 1, 5, padding=1)
    with pytest.raises(ValueError, match=r"Conv2d.*larger than the padded input"):
        layer(torch.randn(1, 1, 2, 6))
    with pytest.raises(ValueError, match="Conv2d"):
        Conv2d(1, 1, 3, dilation=3)(torch.randn(1, 1, 6, 6))
    assert layer(torch.randn(1, 1, 3, 3)).shape == (1, 1, 1, 1)


def test_conv2d_channel_mismatch():
    with pytest.raises(ValueError, match=r"Conv2d\(3, .*\(N, 3, H, W\).*\(2, 2, 5, 5\)"):
        Conv2d(3, 4, 3)(torch.randn(2, 2, 5, 5))


@pytest.mark.parametrize("shape", [(5, 5), (1, 1, 1, 5, 5), (3,)])
def test_conv2d_wrong_ndim(shape):
    with pytest.raises(ValueError, match="Conv2d"):
        Conv2d(1, 1, 1)(torch.randn(*shape))


def test_conv2d_wrong_dtype():
    with pytest.raises(ValueError, match="Conv2d"):
        Conv2d(1, 1, 1)(torch.randn(1, 1, 3, 3, dtype=torch.float64))


def test_conv2d_backward_before_forward():
    with pytest.raises(RuntimeError, match="Conv2d.*before forward"):
        Conv2d(1, 1, 1).backward(torch.randn(1, 1, 3, 3))


# The seed-assignment network --------------------------------------------------------------


def seed_network():
    """Two blocks Conv2d(k=3, padding 2) -> MaxPool2d(3) -> ReLU: 28 -> 30 -> 10 -> 12 -> 4,
    then Conv2d(k=4) to 1x1 and Flatten: (B, 1, 28, 28) -> (B, 64, 4, 4) -> (B, 10)."""
    features = Sequential(
        Conv2d(1, 32, 3, padding=2),
        MaxPool2d(3),
        ReLU(),
        Conv2d(32, 64, 3, padding=2),
        MaxPool2d(3),
        ReLU(),
    )
    head = Sequential(Conv2d(64, 10, 4), Flatten())
    return features, head


@pytest.mark.parametrize("batch", [1, 3])
def test_seed_network_shapes_outputs_and_gradients(batch):
    torch.manual_seed(6)
    features, head = seed_network()
    x = torch.randn(batch, 1, 28, 28)
    assert features(x).shape == (batch, 64, 4, 4)
    assert head[0](features(x)).shape == (batch, 10, 1, 1)
    network = Sequential(*features, *head)
    twin = torch_twin(network)
    copy_params(network, twin)
    out = check_against_torch(network, twin, x, forward_atol=CONV_FORWARD_ATOL[torch.float32])
    assert out.shape == (batch, 10)


def test_seed_network_float64():
    torch.manual_seed(7)
    features, head = seed_network()
    network = Sequential(*features, *head).to(dtype=torch.float64)
    twin = torch_twin(network).to(torch.float64)
    copy_params(network, twin)
    check_against_torch(network, twin, torch.randn(2, 1, 28, 28, dtype=torch.float64))


