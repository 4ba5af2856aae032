"""The convolution and pooling layers named after torch.nn modules, against those modules
built independently from the same drawn arguments (weights copied): Conv1d/Conv2d with
groups (depthwise included), 'same'/'valid' padding and every padding mode,
ConvTranspose1d/2d, the 1-d and 2-d max, average, adaptive and power-average pools with
ceil_mode, dilation, return_indices, count_include_pad and divisor_override, and
MaxUnpool1d/2d.

Hypothesis draws shapes, options and values (ties, NaN and ±inf in the input and in the
upstream gradient, batches of 0 and 1, unbatched, non-contiguous and channels_last
inputs) as tests/test_layers_parity.py does; where torch refuses an input, nnlab must
refuse it with a ValueError naming the layer.
"""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from reference import (
    CONV_FORWARD_ATOL,
    GRAD_RTOL,
    assert_close,
    check_against_torch,
    check_finite_differences,
    copy_params,
    every_window_touches_input,
    gradient_floor,
)
from test_layers_parity import BATCHES_OR_UNBATCHED, DTYPES, TORCH_REFUSALS, upstreams, values

from nnlab import layers as nl
from nnlab.layers._windows import pool_output_size

CONVS = {1: (nl.Conv1d, torch.nn.Conv1d), 2: (nl.Conv2d, torch.nn.Conv2d)}
TRANSPOSED = {1: (nl.ConvTranspose1d, torch.nn.ConvTranspose1d), 2: (nl.ConvTranspose2d, torch.nn.ConvTranspose2d)}
MAX_POOLS = {1: (nl.MaxPool1d, torch.nn.MaxPool1d), 2: (nl.MaxPool2d, torch.nn.MaxPool2d)}
AVG_POOLS = {1: (nl.AvgPool1d, torch.nn.AvgPool1d), 2: (nl.AvgPool2d, torch.nn.AvgPool2d)}
LP_POOLS = {1: (nl.LPPool1d, torch.nn.LPPool1d), 2: (nl.LPPool2d, torch.nn.LPPool2d)}
UNPOOLS = {1: (nl.MaxUnpool1d, torch.nn.MaxUnpool1d), 2: (nl.MaxUnpool2d, torch.nn.MaxUnpool2d)}
LAYOUTS = ["contiguous", "non_contiguous", "channels_last"]


def per_axis(spatial, values_):
    return st.tuples(*[values_] * spatial)


def shape_of(batch, channels, size):
    return (channels, *size) if batch is None else (batch, channels, *size)


def laid_out(x, layout):
    """x with the same values in another memory layout: a transposed copy's transpose
    (non-contiguous), or channels_last for a 4-d tensor."""
    if layout == "channels_last" and x.dim() == 4:
        return x.to(memory_format=torch.channels_last)
    if layout == "non_contiguous" and x.dim() >= 2:
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    return x


def refused_alike(layer, module, x):
    """When torch refuses x, checks that nnlab refuses it with a ValueError naming the
    layer and returns True; False when torch takes it. A transposed convolution whose
    output would be empty counts as refused: torch's oneDNN path (float32) returns the
    empty output where its other paths raise "Output size is too small"; nnlab refuses
    it on every path."""
    try:
        out = module(x.clone())
    except TORCH_REFUSALS:
        refused = True
    else:
        transposed = isinstance(module, torch.nn.modules.conv._ConvTransposeNd)
        refused = transposed and x.numel() > 0 and out.numel() == 0
    if refused:
        with pytest.raises(ValueError, match=type(module).__name__):
            layer(x)
    return refused


def prepared(layer, module, dtype):
    layer.to(dtype=dtype)
    module.to(dtype)
    copy_params(layer, module)
    return layer, module


# Convolutions ---------------------------------------------------------------------------


@st.composite
def conv_setups(draw, spatial):
    groups = draw(st.sampled_from([1, 2, "depthwise"]))
    per_group_in = 1 if groups == "depthwise" else draw(st.integers(1, 2))
    groups = draw(st.integers(2, 3)) if groups == "depthwise" else groups
    return {
        "in_channels": groups * per_group_in,
        "out_channels": groups * draw(st.integers(1, 2)),
        "groups": groups,
        "kernel_size": draw(per_axis(spatial, st.integers(1, 3))),
        "stride": draw(per_axis(spatial, st.integers(1, 2))),
        "dilation": draw(per_axis(spatial, st.integers(1, 2))),
        "bias": draw(st.booleans()),
    }


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spatial", [1, 2])
@settings(max_examples=20)
@given(
    padding=st.one_of(st.sampled_from(["same", "valid"]), st.integers(0, 2)),
    padding_mode=st.sampled_from(["zeros", "reflect", "replicate", "circular"]),
    batch=BATCHES_OR_UNBATCHED,
    layout=st.sampled_from(LAYOUTS),
    dout=upstreams,
    data=st.data(),
)
def test_conv_matches_torch(dtype, spatial, padding, padding_mode, batch, layout, dout, data):
    setup = data.draw(conv_setups(spatial))
    if padding == "same":
        setup["stride"] = (1,) * spatial
    size = data.draw(per_axis(spatial, st.integers(1, 6)))
    ours, theirs = CONVS[spatial]
    layer, module = prepared(
        ours(**setup, padding=padding, padding_mode=padding_mode), theirs(**setup, padding=padding, padding_mode=padding_mode), dtype
    )
    x = laid_out(data.draw(values(shape_of(batch, setup["in_channels"], size), dtype)), layout)
    if refused_alike(layer, module, x):
        return
    # torch's float32 oneDNN path leaves zero-padding taps out of the weight gradient
    # where dout is NaN or inf (see test_layers_parity.test_conv2d): float64 only there.
    zero_padded = padding_mode == "zeros" and padding not in (0, "valid")
    assume(not (dtype == torch.float32 and zero_padded and dout.has_nonfinite()))
    out = check_against_torch(layer, module, x, dout=dout, forward_atol=CONV_FORWARD_ATOL[dtype])
    assert out.is_contiguous()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spatial", [1, 2])
@settings(max_examples=20)
@given(
    padding=st.integers(0, 2),
    output_padding=st.integers(0, 2),
    batch=BATCHES_OR_UNBATCHED,
    layout=st.sampled_from(LAYOUTS),
    dout=upstreams,
    data=st.data(),
)
def test_conv_transpose_matches_torch(dtype, spatial, padding, output_padding, batch, layout, dout, data):
    setup = data.draw(conv_setups(spatial))
    setup.update(padding=padding, output_padding=output_padding)
    size = data.draw(per_axis(spatial, st.integers(1, 4)))
    ours, theirs = TRANSPOSED[spatial]
    module = theirs(**setup).to(dtype)
    x = laid_out(data.draw(values(shape_of(batch, setup["in_channels"], size), dtype)), layout)
    if any(output_padding >= max(s, d) for s, d in zip(setup["stride"], setup["dilation"])):
        if x.numel():  # torch checks output_padding on a non-empty input only
            with pytest.raises(TORCH_REFUSALS):
                module(x)
        with pytest.raises(ValueError, match=f"{ours.__name__}: output_padding"):
            ours(**setup)
        return
    layer, module = prepared(ours(**setup), module, dtype)
    if refused_alike(layer, module, x):
        return
    check_against_torch(layer, module, x, dout=dout, forward_atol=CONV_FORWARD_ATOL[dtype])


@pytest.mark.parametrize("spatial", [1, 2])
@pytest.mark.parametrize("extra", [0, 1, 2])
def test_conv_transpose_output_size_like_torch(spatial, extra):
    torch.manual_seed(extra)
    ours, theirs = TRANSPOSED[spatial]
    layer, module = prepared(ours(2, 4, 3, stride=3, padding=1), theirs(2, 4, 3, stride=3, padding=1), torch.float64)
    x = torch.randn((2, 2) + (3,) * spatial, dtype=torch.float64)
    wanted = [(3 - 1) * 3 - 2 + 3 + extra] * spatial
    for output_size in (wanted, [2, 4] + wanted):
        x_ref = x.clone().requires_grad_(True)
        expected = module(x_ref, output_size)
        out = layer(x, output_size=output_size)
        assert_close("output", out, expected.detach(), atol=1e-12)
        dout = torch.randn(expected.shape, dtype=torch.float64)
        expected.backward(dout)
        assert_close("input gradient", layer.backward(dout), x_ref.grad, rtol=1e-10)
    with pytest.raises(TORCH_REFUSALS):
        module(x, [w + 3 for w in wanted])
    with pytest.raises(ValueError, match=f"{ours.__name__}.*output_size"):
        layer(x, output_size=[w + 3 for w in wanted])


# Pools ----------------------------------------------------------------------------------


@st.composite
def pool_setups(draw, spatial, dilation=True):
    kernel = draw(per_axis(spatial, st.integers(1, 3)))
    return {
        "kernel_size": kernel,
        "stride": draw(st.one_of(st.none(), per_axis(spatial, st.integers(1, 3)))),
        "padding": tuple(draw(st.integers(0, k // 2)) for k in kernel),
        "dilation": draw(per_axis(spatial, st.integers(1, 2))) if dilation else (1,) * spatial,
        "ceil_mode": draw(st.booleans()),
    }


def only_padding_somewhere(size, setup):
    """Whether some (dilated) window holds only padding: torch's max pooling then writes
    out of bounds (test_layers_parity), so no comparison."""
    stride = setup["stride"] or setup["kernel_size"]
    for axis in range(len(size)):
        window = (setup["kernel_size"][axis], stride[axis], setup["padding"][axis], setup["dilation"][axis])
        count = pool_output_size(size[axis], *window, setup["ceil_mode"])
        if count >= 1 and not every_window_touches_input(size[axis], count, *window):
            return True
    return False


def check_with_indices(layer, module, x, dout):
    """A pool with return_indices: the same values and indices as torch's, and backward
    from dout alone and from (dout, None) equal to autograd's through torch's output."""
    x_ref = x.clone().requires_grad_(True)
    out_ref, indices_ref = module(x_ref)
    out, indices = layer(x.clone())
    assert_close("output", out, out_ref.detach(), atol=CONV_FORWARD_ATOL[x.dtype])
    assert indices.dtype == torch.int64 and torch.equal(indices, indices_ref)
    gradient = dout(out)
    (expected,) = torch.autograd.grad(out_ref, x_ref, gradient)
    floor = gradient_floor([expected])
    for upstream in (gradient, (gradient, None)):
        layer(x.clone())
        assert_close("input gradient", layer.backward(upstream), expected, rtol=GRAD_RTOL[x.dtype], floor=floor)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spatial", [1, 2])
@settings(max_examples=20)
@given(return_indices=st.booleans(), batch=BATCHES_OR_UNBATCHED, layout=st.sampled_from(LAYOUTS), dout=upstreams, data=st.data())
def test_max_pool_matches_torch(dtype, spatial, return_indices, batch, layout, dout, data):
    setup = data.draw(pool_setups(spatial))
    size = data.draw(per_axis(spatial, st.integers(1, 6)))
    assume(not only_padding_somewhere(size, setup))
    ours, theirs = MAX_POOLS[spatial]
    layer = ours(**setup, return_indices=return_indices)
    module = theirs(**setup, return_indices=return_indices)
    x = laid_out(data.draw(values(shape_of(batch, 2, size), dtype)), layout)
    if refused_alike(layer, module, x):
        return
    if return_indices:
        check_with_indices(layer, module, x, dout)
    else:
        check_against_torch(layer, module, x, dout=dout, forward_atol=CONV_FORWARD_ATOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spatial", [1, 2])
@settings(max_examples=20)
@given(
    count_include_pad=st.booleans(),
    divisor_override=st.one_of(st.none(), st.integers(1, 5)),
    batch=BATCHES_OR_UNBATCHED,
    layout=st.sampled_from(LAYOUTS),
    dout=upstreams,
    data=st.data(),
)
def test_avg_pool_matches_torch(dtype, spatial, count_include_pad, divisor_override, batch, layout, dout, data):
    setup = data.draw(pool_setups(spatial, dilation=False))
    del setup["dilation"]
    setup["count_include_pad"] = count_include_pad
    if spatial == 2:
        setup["divisor_override"] = divisor_override
    size = data.draw(per_axis(spatial, st.integers(1, 6)))
    ours, theirs = AVG_POOLS[spatial]
    layer, module = ours(**setup), theirs(**setup)
    x = laid_out(data.draw(values(shape_of(batch, 2, size), dtype)), layout)
    if refused_alike(layer, module, x):
        return
    check_against_torch(layer, module, x, dout=dout, forward_atol=CONV_FORWARD_ATOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=20)
@given(
    kind=st.sampled_from(["max", "max_indices", "avg"]),
    output_size=st.integers(1, 4),
    batch=BATCHES_OR_UNBATCHED,
    length=st.integers(1, 7),
    dout=upstreams,
    data=st.data(),
)
def test_adaptive_1d_pools_match_torch(dtype, kind, output_size, batch, length, dout, data):
    x = data.draw(values(shape_of(batch, 2, (length,)), dtype))
    if kind == "avg":
        check_against_torch(
            nl.AdaptiveAvgPool1d(output_size), torch.nn.AdaptiveAvgPool1d(output_size), x, dout=dout,
            forward_atol=CONV_FORWARD_ATOL[dtype],
        )
        return
    indices = kind == "max_indices"
    layer, module = nl.AdaptiveMaxPool1d(output_size, indices), torch.nn.AdaptiveMaxPool1d(output_size, indices)
    if indices:
        check_with_indices(layer, module, x, dout)
    else:
        check_against_torch(layer, module, x, dout=dout, forward_atol=CONV_FORWARD_ATOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=15)
@given(output_size=st.integers(1, 3), batch=BATCHES_OR_UNBATCHED, dout=upstreams, data=st.data())
def test_adaptive_max_pool2d_indices_match_torch(dtype, output_size, batch, dout, data):
    x = data.draw(values(shape_of(batch, 2, (5, 4)), dtype))
    check_with_indices(nl.AdaptiveMaxPool2d(output_size, True), torch.nn.AdaptiveMaxPool2d(output_size, True), x, dout)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spatial", [1, 2])
@settings(max_examples=20)
@given(
    norm_type=st.sampled_from([1, 2, 3, 1.5]),
    positive=st.booleans(),
    batch=BATCHES_OR_UNBATCHED,
    dout=upstreams,
    data=st.data(),
)
def test_lp_pool_matches_torch(dtype, spatial, norm_type, positive, batch, dout, data):
    setup = data.draw(pool_setups(spatial, dilation=False))
    del setup["dilation"], setup["padding"]
    if spatial == 1:
        # torch's lp_pool1d multiplies by kernel_size: it takes ints only.
        setup["kernel_size"] = setup["kernel_size"][0]
        setup["stride"] = None if setup["stride"] is None else setup["stride"][0]
    size = data.draw(per_axis(spatial, st.integers(1, 6)))
    ours, theirs = LP_POOLS[spatial]
    layer, module = ours(norm_type, **setup), theirs(norm_type, **setup)
    x = data.draw(values(shape_of(batch, 2, size), dtype))
    if positive:
        # Away from 0, where x^(p - 1) and s^(1/p - 1) are finite for every p.
        x = torch.where(x.isfinite(), x.abs() + 0.5, x)
    if refused_alike(layer, module, x):
        return
    check_against_torch(layer, module, x, dout=dout, forward_atol=CONV_FORWARD_ATOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spatial", [1, 2])
@settings(max_examples=15)
@given(
    kernel=st.integers(1, 3),
    stride=st.one_of(st.none(), st.integers(1, 3)),
    sized=st.booleans(),
    batch=BATCHES_OR_UNBATCHED,
    dout=upstreams,
    data=st.data(),
)
def test_max_unpool_matches_torch(dtype, spatial, kernel, stride, sized, batch, dout, data):
    size = data.draw(per_axis(spatial, st.integers(kernel, 6)))
    pool_class, _ = MAX_POOLS[spatial]
    x = data.draw(values(shape_of(batch, 2, size), dtype))
    pooled, indices = pool_class(kernel, stride, return_indices=True)(x)
    ours, theirs = UNPOOLS[spatial]
    layer, module = ours(kernel, stride), theirs(kernel, stride)
    output_size = list(size) if sized else None
    pooled_ref = pooled.clone().requires_grad_(True)
    try:
        expected = module(pooled_ref, indices, output_size)
    except TORCH_REFUSALS:
        with pytest.raises(ValueError, match=ours.__name__):
            layer(pooled, indices, output_size)
        return
    out = layer(pooled, indices, output_size)
    if torch.isnan(pooled).any() and (stride or kernel) < kernel:
        # Overlapping windows may share an index with a NaN and another value: which one
        # an unpooling keeps is not defined (torch's docs); compare the gradients only.
        out = expected.detach()
    assert_close("output", out, expected.detach(), atol=0.0)
    gradient = dout(expected)
    (reference,) = torch.autograd.grad(expected, pooled_ref, gradient)
    assert_close("input gradient", layer.backward(gradient), reference, rtol=0.0, atol=0.0)


def test_max_unpool_refuses_bad_indices():
    layer = nl.MaxUnpool2d(2)
    x = torch.randn(1, 1, 2, 2)
    with pytest.raises(ValueError, match=r"MaxUnpool2d.*indices must lie in \[0, 16\)"):
        layer(x, torch.tensor([[[[0, 1], [2, 16]]]]))
    with pytest.raises(ValueError, match="MaxUnpool2d.*int64 indices"):
        layer(x, torch.zeros(1, 1, 2, 2, dtype=torch.int32))


# Finite differences, the layer contract, errors ----------------------------------------

FINITE_DIFFERENCE_CASES = {
    "conv1d_groups_reflect": (lambda: nl.Conv1d(4, 6, 3, 2, 2, 1, 2, padding_mode="reflect"), (2, 4, 7)),
    "conv2d_same_replicate": (lambda: nl.Conv2d(2, 3, (2, 3), padding="same", dilation=(2, 1), padding_mode="replicate"), (2, 2, 5, 4)),
    "conv2d_depthwise_circular": (lambda: nl.Conv2d(3, 6, 3, 2, 1, groups=3, padding_mode="circular"), (2, 3, 5, 5)),
    "conv2d_same_zeros": (lambda: nl.Conv2d(3, 2, 4, padding="same"), (2, 3, 5, 4)),
    "conv_transpose1d": (lambda: nl.ConvTranspose1d(4, 2, 3, 2, 1, 1, 2, dilation=2), (2, 4, 4)),
    "conv_transpose2d": (lambda: nl.ConvTranspose2d(2, 3, (3, 2), (2, 1), (1, 0), (1, 0)), (2, 2, 3, 4)),
    "max_pool1d_ceil": (lambda: nl.MaxPool1d(3, 2, 1, 2, ceil_mode=True), (2, 3, 8)),
    "max_pool2d_ceil": (lambda: nl.MaxPool2d(3, 2, 1, ceil_mode=True), (2, 2, 6, 5)),
    "avg_pool1d_ceil": (lambda: nl.AvgPool1d(3, 2, 1, True, False), (2, 3, 8)),
    "avg_pool2d_divisor": (lambda: nl.AvgPool2d(3, 2, 1, True, True, 4), (2, 2, 6, 5)),
    "adaptive_max1d": (lambda: nl.AdaptiveMaxPool1d(3), (2, 3, 7)),
    "adaptive_avg1d": (lambda: nl.AdaptiveAvgPool1d(3), (2, 3, 7)),
    "lp_pool1d": (lambda: nl.LPPool1d(3, 2, 1), (2, 3, 7)),
    "lp_pool2d": (lambda: nl.LPPool2d(1.5, 2, ceil_mode=True), (2, 2, 5, 5)),
}


@pytest.mark.parametrize("name", sorted(FINITE_DIFFERENCE_CASES))
def test_finite_differences(name):
    make, shape = FINITE_DIFFERENCE_CASES[name]
    torch.manual_seed(5)
    layer = make().to(dtype=torch.float64)
    x = torch.rand(shape, dtype=torch.float64) + 0.5 if "lp_pool" in name else torch.randn(shape, dtype=torch.float64)
    check_finite_differences(layer, x, rtol=1e-7)


PARAMETRISED = {
    "conv1d": (lambda m: m.Conv1d(4, 6, 3, 2, 1, 1, 2, False, "circular")),
    "conv2d": (lambda m: m.Conv2d(4, 6, (3, 2), 1, "same", 2, 2, True, "reflect")),
    "conv_transpose1d": (lambda m: m.ConvTranspose1d(4, 6, 3, 2, 1, 1, 2, True, 1)),
    "conv_transpose2d": (lambda m: m.ConvTranspose2d(4, 6, 3, 2, 1, 1, 2, False, 2)),
}


@pytest.mark.parametrize("name", sorted(PARAMETRISED))
def test_parameters_state_dict_and_accumulation_like_torch(name):
    torch.manual_seed(0)
    layer, module = PARAMETRISED[name](nl), PARAMETRISED[name](torch.nn)
    assert list(layer.state_dict()) == list(module.state_dict())
    assert [tuple(t.shape) for t in layer.state_dict().values()] == [tuple(t.shape) for t in module.state_dict().values()]
    assert [tuple(p.shape) for p, _ in layer.params()] == [tuple(p.shape) for p in module.parameters()]
    assert repr(layer) == repr(module)
    layer.to(dtype=torch.float64)
    x = torch.randn((2, 4) + (5,) * (layer.weight.dim() - 2), dtype=torch.float64)
    dout = torch.randn(layer(x).shape, dtype=torch.float64)
    layer.backward(dout)
    once = [grad.clone() for _, grad in layer.params()]
    layer(x)
    layer.backward(dout)
    for first, (_, twice) in zip(once, layer.params()):
        torch.testing.assert_close(twice, 2 * first)


def test_depthwise_and_grouped_convolutions_keep_the_input_not_columns():
    x = torch.randn(2, 4, 6, 6)
    for layer in (nl.Conv2d(4, 4, 3, groups=4), nl.ConvTranspose2d(4, 4, 3, groups=2)):
        layer(x)
        params = {id(param) for param, _ in layer.params()}
        held = [value for value in vars(layer).values() if isinstance(value, torch.Tensor) and id(value) not in params]
        assert sum(t.numel() for t in held) == x.numel()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: nl.Conv2d(3, 4, 3, groups=2), r"Conv2d: in_channels \(3\) and out_channels \(4\) must both be divisible by groups \(2\)"),
        (lambda: nl.Conv1d(2, 2, 3, stride=2, padding="same"), r"Conv1d: padding='same' needs stride 1"),
        (lambda: nl.Conv2d(2, 2, 3, padding="full"), r"Conv2d: padding must be 'same', 'valid'"),
        (lambda: nl.Conv2d(2, 2, 3, 1, 0, 1, True), r"Conv2d: groups must be an int >= 1, got True"),
        (lambda: nl.ConvTranspose2d(2, 2, 3, padding="same"), r"ConvTranspose2d: padding must be an int"),
        (lambda: nl.ConvTranspose2d(2, 2, 3, padding_mode="reflect"), r"ConvTranspose2d: padding_mode must be 'zeros'"),
        (lambda: nl.ConvTranspose1d(2, 2, 3, stride=2, output_padding=2), r"ConvTranspose1d: output_padding \(2,\) must be smaller"),
        (lambda: nl.MaxPool1d(2, padding=2), r"MaxPool1d: padding"),
        (lambda: nl.AvgPool2d(2, divisor_override=0), r"AvgPool2d: divisor_override must be an int >= 1"),
        (lambda: nl.MaxPool2d(2, return_indices=1), r"MaxPool2d: return_indices must be a bool"),
        (lambda: nl.AdaptiveAvgPool1d((2, 2)), r"AdaptiveAvgPool1d: output_size"),
    ],
)
def test_bad_arguments_name_layer_and_option(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("norm_type", [math.inf, -math.inf, 0])
def test_lp_pool_refuses_what_it_does_not_compute(norm_type):
    with pytest.raises(NotImplementedError, match="LPPool2d: norm_type"):
        nl.LPPool2d(norm_type, 2)


def test_pool_with_indices_refuses_a_gradient_for_the_indices():
    layer = nl.MaxPool2d(2, return_indices=True)
    out, indices = layer(torch.randn(1, 1, 4, 4))
    with pytest.raises(ValueError, match="MaxPool2d.*indices get no gradient"):
        layer.backward((torch.ones_like(out), torch.ones_like(out)))
    assert torch.equal(layer.backward((None, None)), torch.zeros(1, 1, 4, 4))


@pytest.mark.parametrize("name", sorted(PARAMETRISED))
def test_factory_arguments_like_torch(name):
    torch.manual_seed(0)
    layer = PARAMETRISED[name](nl).__class__
    module = PARAMETRISED[name](torch.nn).__class__
    made = layer(4, 6, 3, dtype=torch.float64, device="cpu")
    assert made.weight.dtype == module(4, 6, 3, dtype=torch.float64).weight.dtype == torch.float64
    assert made.grad("weight").dtype == torch.float64
