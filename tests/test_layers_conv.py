"""Conv2d and the CNN builder against torch.nn twins, autograd and finite differences."""

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
)

from nnlab.layers import (
    CNN,
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool2d,
    Conv2d,
    Flatten,
    LeakyReLU,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
    Sigmoid,
    Tanh,
)

DTYPES = [torch.float32, torch.float64]


def out_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv_pair(in_channels, out_channels, kernel, stride=1, padding=0, dilation=1, bias=True, dtype=torch.float32):
    """An nnlab Conv2d and its torch twin with the same weights."""
    layer = Conv2d(in_channels, out_channels, kernel, stride, padding, dilation, bias).to(dtype=dtype)
    module = torch.nn.Conv2d(in_channels, out_channels, kernel, stride, padding, dilation, bias=bias).to(dtype)
    copy_params(layer, module)
    return layer, module


def torch_twin(layers):
    """A torch.nn.Sequential mirroring nnlab layers (parameters copied by copy_params)."""
    modules = []
    for layer in layers:
        if isinstance(layer, Conv2d):
            modules.append(
                torch.nn.Conv2d(
                    layer.in_channels,
                    layer.out_channels,
                    layer.kernel_size,
                    layer.stride,
                    layer.padding,
                    layer.dilation,
                    bias=layer.bias is not None,
                )
            )
        elif isinstance(layer, MaxPool2d):
            modules.append(torch.nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding, layer.dilation))
        elif isinstance(layer, AvgPool2d):
            modules.append(torch.nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding))
        elif isinstance(layer, AdaptiveMaxPool2d):
            modules.append(torch.nn.AdaptiveMaxPool2d(layer.output_size))
        elif isinstance(layer, AdaptiveAvgPool2d):
            modules.append(torch.nn.AdaptiveAvgPool2d(layer.output_size))
        elif isinstance(layer, Linear):
            modules.append(torch.nn.Linear(layer.in_features, layer.out_features))
        elif isinstance(layer, Flatten):
            modules.append(torch.nn.Flatten())
        elif isinstance(layer, LeakyReLU):
            modules.append(torch.nn.LeakyReLU(layer.alpha))
        elif isinstance(layer, ReLU):
            modules.append(torch.nn.ReLU())
        elif isinstance(layer, Sigmoid):
            modules.append(torch.nn.Sigmoid())
        elif isinstance(layer, Tanh):
            modules.append(torch.nn.Tanh())
        else:
            raise AssertionError(f"no twin for {layer!r}")
    return torch.nn.Sequential(*modules)


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
def test_conv2d_finite_differences(kernel, stride, padding, dilation, bias):
    torch.manual_seed(1)
    layer = Conv2d(2, 3, kernel, stride, padding, dilation, bias).to(dtype=torch.float64)
    x = torch.randn(2, 2, 7, 6, dtype=torch.float64)
    check_finite_differences(layer, x, rtol=1e-7)


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


# CNN builder ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pooling, activation, channels, pool_every, hidden_dims",
    [
        ("max", "relu", [4, 6], 1, [12]),
        ("avg", "tanh", [4, 4, 6], 2, [10, 8]),
        ("max", "lrelu", [3, 5, 5], 3, []),
        ("avg", "sigmoid", [4], 1, [6]),
    ],
)
def test_cnn_matches_torch_twin(pooling, activation, channels, pool_every, hidden_dims):
    torch.manual_seed(8)
    model = CNN((3, 12, 10), 5, channels, pool_every, hidden_dims, activation=activation, pooling=pooling)
    model.to(dtype=torch.float64)
    twin = torch_twin(model.sequence).to(torch.float64)
    copy_params(model, twin)
    out = check_against_torch(model, twin, torch.randn(3, 3, 12, 10, dtype=torch.float64))
    assert out.shape == (3, 5)


def test_cnn_layer_layout():
    model = CNN((1, 16, 16), 10, [4, 8, 8], 2, [20], pooling_params=dict(kernel_size=2))
    kinds = [type(layer).__name__ for layer in model]
    assert kinds == [
        "Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d",
        "Conv2d", "ReLU",  # leftover conv: 3 channels, pool every 2
        "Flatten", "Linear", "ReLU", "Linear",
    ]  # fmt: skip
    assert model[8].in_features == 8 * 8 * 8
    first_line = "\t[0] Conv2d(1, 4, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))"
    assert repr(model).startswith("CNN, Sequential\n" + first_line)


@pytest.mark.parametrize("pooling", ["adaptive_max", "adaptive_avg"])
def test_cnn_ending_in_adaptive_pooling_accepts_several_sizes(pooling):
    torch.manual_seed(9)
    model = CNN(
        (2, 16, 16),
        4,
        [3, 5],
        2,
        [7],
        conv_params=dict(kernel_size=3, padding=1),
        pooling=pooling,
        pooling_params=dict(output_size=(4, 4)),
    ).to(dtype=torch.float64)
    assert repr(model[4]) in ("AdaptiveMaxPool2d(output_size=(4, 4))", "AdaptiveAvgPool2d(output_size=(4, 4))")
    twin = torch_twin(model.sequence).to(torch.float64)
    copy_params(model, twin)
    for height, width in [(16, 16), (11, 9), (28, 28), (4, 5)]:
        out = check_against_torch(model, twin, torch.randn(2, 2, height, width, dtype=torch.float64))
        assert out.shape == (2, 4)


def test_cnn_with_custom_conv_and_pool_params_and_activation_layer():
    torch.manual_seed(10)
    model = CNN(
        (1, 28, 28),
        10,
        [8, 8],
        1,
        [16],
        conv_params=dict(kernel_size=3, stride=1, padding=0),
        activation=LeakyReLU(0.2),
        pooling="max",
        pooling_params=dict(kernel_size=3, stride=2, padding=1),
    )
    twin = torch_twin(model.sequence)
    copy_params(model, twin)
    check_against_torch(model, twin, torch.randn(2, 1, 28, 28), forward_atol=CONV_FORWARD_ATOL[torch.float32])


def test_cnn_errors():
    with pytest.raises(ValueError, match="CNN: pooling"):
        CNN((1, 8, 8), 2, [4], 1, [], pooling="min")
    with pytest.raises(ValueError, match="pool_every"):
        CNN((1, 8, 8), 2, [4], 0, [])
    with pytest.raises(ValueError, match="in_size"):
        CNN((8, 8), 2, [4], 1, [])
    with pytest.raises(ValueError, match="MaxPool2d.*larger than the padded input"):
        CNN((1, 4, 4), 2, [4, 4, 4], 1, [])  # 4 -> 2 -> 1 -> nothing
    model = CNN((1, 8, 8), 2, [4], 1, [])
    with pytest.raises(ValueError, match=r"Sequential\[0\] \(Conv2d\)"):
        model(torch.randn(1, 2, 8, 8))
    with pytest.raises(RuntimeError, match="before forward"):
        CNN((1, 8, 8), 2, [4], 1, []).backward(torch.randn(1, 2))
