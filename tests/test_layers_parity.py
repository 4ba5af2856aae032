"""Every built-in layer against its torch.nn twin (weights copied) on shapes, options and
values drawn by hypothesis: the output, the input gradient and every parameter gradient
for the same input and the same upstream gradient, in float32 and float64.

The values include batches of 0 and 1, unbatched input, exact ties (small integers, a
constant), ReLU inputs at exactly 0, and NaN, +inf and -inf both in the input and in the
upstream gradient. Non-finite results are compared by position (``reference.assert_close``):
NaN where torch has NaN, the same infinities, the finite entries within the project's
tolerances. Where torch refuses an input, nnlab must refuse it too, with a ValueError
naming the layer.

The budget is fixed: a few dozen examples per test under the derandomized profile of
conftest.py, so the file runs in seconds and the same cases run in every CI run.
"""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from reference import (
    CONV_FORWARD_ATOL,
    FORWARD_ATOL,
    assert_close,
    check_against_autograd,
    check_against_torch,
    every_window_touches_input,
    torch_twin,
)
from special_values import huge_values

from nnlab.layers import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    BCELoss,
    BCEWithLogitsLoss,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    Dropout2d,
    Flatten,
    Heads,
    L1Loss,
    LeakyReLU,
    Linear,
    MaxPool2d,
    MSELoss,
    NLLLoss,
    ReLU,
    Residual,
    Sequential,
    Sigmoid,
    Softmax,
    Tanh,
    Upsample,
)
from nnlab.layers._windows import window_output_size

DTYPES = [torch.float32, torch.float64]
SPECIALS = [math.nan, math.inf, -math.inf]
TORCH_REFUSALS = (RuntimeError, ValueError)

# Batch sizes: empty, one, several; None stands for an unbatched input where a layer takes one.
BATCHES = st.sampled_from([0, 1, 2, 3])
BATCHES_OR_UNBATCHED = st.sampled_from([None, 0, 1, 2])


# Values ------------------------------------------------------------------------------------


@st.composite
def values(draw, shape, dtype, huge=False):
    """A tensor of ``shape``: uniform in [-3, 3]; small integers (ties); one constant
    (0, -0, 1 or -2.5: exact in both dtypes); uniform with NaN, +inf, -inf or 0 (with
    ``huge``, also ``special_values.huge_values``: finite values whose squares, doubles or
    sums overflow) at up to three drawn positions; or uniform with every entry NaN, +inf
    or -inf with probability 0.4 (windows and rows that hold only non-finite values)."""
    kind = draw(st.sampled_from(["uniform", "integers", "constant", "special", "dense_special"]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    if kind == "integers":
        x = torch.randint(-2, 3, shape, generator=generator).to(torch.float64)
    elif kind == "constant":
        x = torch.full(shape, draw(st.sampled_from([0.0, -0.0, 1.0, -2.5])), dtype=torch.float64)
    else:
        x = torch.rand(shape, generator=generator, dtype=torch.float64) * 6 - 3
    if kind == "special":
        x = draw(with_specials(x, huge_values(dtype) if huge else ()))
    if kind == "dense_special":
        replace = torch.rand(shape, generator=generator) < 0.4
        choice = torch.randint(0, len(SPECIALS), shape, generator=generator)
        x = torch.where(replace, torch.tensor(SPECIALS, dtype=torch.float64)[choice], x)
    return x.to(dtype)


@st.composite
def with_specials(draw, x, extra=()):
    """x with NaN, +inf, -inf, 0 or one of ``extra`` written at one to three drawn positions."""
    x = x.clone()
    flat = x.view(-1)
    if flat.numel():
        spots = st.tuples(st.integers(0, flat.numel() - 1), st.sampled_from(SPECIALS + [0.0] + list(extra)))
        for index, value in draw(st.lists(spots, min_size=1, max_size=3)):
            flat[index] = value
    return x


class Upstream:
    """The upstream gradient for a layer's output, whatever its shape: standard normal
    from ``seed``, with NaN, +inf, -inf or 0 at the relative positions ``specials``
    ((fraction of numel, value) pairs); one such gradient per output of a tuple. A value
    given as a string names one of ``special_values.huge_values`` of the output's dtype
    by its index ("huge0" .. "huge3"): finite values whose products overflow."""

    def __init__(self, seed, specials):
        self.seed = seed
        self.specials = specials

    def __repr__(self):
        return f"Upstream(seed={self.seed}, specials={self.specials})"

    def has_nonfinite(self):
        return any(not isinstance(value, str) and not math.isfinite(value) for _, value in self.specials)

    def __call__(self, out):
        if isinstance(out, tuple):
            return tuple(Upstream(self.seed + i, self.specials)(o) for i, o in enumerate(out))
        generator = torch.Generator().manual_seed(self.seed)
        dout = torch.randn(out.shape, generator=generator, dtype=torch.float64)
        flat = dout.view(-1)
        for where, value in self.specials:
            if isinstance(value, str):
                value = huge_values(out.dtype)[int(value[len("huge"):])]
            if flat.numel():
                flat[int(where * flat.numel())] = value
        return dout.to(out.dtype)


upstreams = st.builds(
    Upstream,
    st.integers(0, 2**16),
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.sampled_from(SPECIALS + [0.0])), max_size=3),
)
# The same, with finite values near the largest number too (for the layers whose products
# with dout must not overflow where torch's do not).
huge_upstreams = st.builds(
    Upstream,
    st.integers(0, 2**16),
    st.lists(
        st.tuples(st.floats(0, 1, exclude_max=True), st.sampled_from(SPECIALS + [0.0, "huge0", "huge1", "huge2", "huge3"])),
        max_size=3,
    ),
)


# Twins -------------------------------------------------------------------------------------


def twin(layer, dtype):
    """``layer`` in ``dtype``, and its torch.nn twin (same parameters, buffers and mode)."""
    layer.to(dtype=dtype)
    return torch_twin(layer)


WINDOWED = (Conv2d, MaxPool2d, AvgPool2d, AdaptiveMaxPool2d, AdaptiveAvgPool2d)


def forward_atol(layer, dtype):
    """The project's forward tolerance: the convolution one for a windowed layer or a
    container that holds one, the dense one otherwise."""
    if holds_windowed(layer):
        return CONV_FORWARD_ATOL[dtype]
    return FORWARD_ATOL[dtype]


def holds_windowed(layer):
    return isinstance(layer, WINDOWED) or any(holds_windowed(child) for _, child in layer.named_children())


def compare(layer, dtype, x, dout, y=None):
    """The layer against its twin on x (and targets y) with the upstream gradient
    ``dout``; returns the twin."""
    module = twin(layer, dtype)
    check_against_torch(layer, module, x, y=y, dout=dout, forward_atol=forward_atol(layer, dtype))
    return module


def assert_both_refuse(layer, module, x):
    """torch refuses x; nnlab must refuse it with a ValueError naming the layer."""
    with pytest.raises(TORCH_REFUSALS):
        module(x)
    with pytest.raises(ValueError, match=type(layer).__name__):
        layer(x)


def randomize_batchnorm(layer, generator):
    """Gives the parameters of ``layer`` values in [-1, 1] and its running statistics
    means in [-0.5, 0.5] and variances in [1, 2], so that copies are told apart from
    initial values while outputs stay within a few units (where float32's absolute
    forward tolerance of 1e-6 is a few ulps)."""
    for tensor, _ in layer.params():
        tensor.copy_(torch.rand(tensor.shape, generator=generator) * 2 - 1)
    for name, low in (("running_mean", -0.5), ("running_var", 1.0)):
        getattr(layer, name).copy_(torch.rand(layer.num_features, generator=generator) + low)


# Dense layers ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=30)
@given(
    in_features=st.integers(1, 5),
    out_features=st.integers(1, 4),
    lead=st.lists(BATCHES, max_size=2),
    bias=st.booleans(),
    dout=upstreams,
    data=st.data(),
)
def test_linear(dtype, in_features, out_features, lead, bias, dout, data):
    layer = Linear(in_features, out_features, bias=bias)
    x = data.draw(values((*lead, in_features), dtype))
    compare(layer, dtype, x, dout)


ELEMENTWISE = {
    "ReLU": ReLU,
    "LeakyReLU(0)": lambda: LeakyReLU(0.0),
    "LeakyReLU(0.01)": lambda: LeakyReLU(0.01),
    "LeakyReLU(0.2)": lambda: LeakyReLU(0.2),
    "Sigmoid": Sigmoid,
    "Tanh": Tanh,
    "Dropout in eval mode": lambda: Dropout(0.5).eval(),
}


# Each layer draws its own examples: drawn from one strategy for all of them, the layer
# that hypothesis tries first (ReLU) met only its simplest values (empty tensors, no NaN).
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ELEMENTWISE))
@settings(max_examples=15)
@given(shape=st.lists(st.integers(0, 4), max_size=4), dout=upstreams, data=st.data())
def test_elementwise(dtype, name, shape, dout, data):
    compare(ELEMENTWISE[name](), dtype, data.draw(values(tuple(shape), dtype)), dout)


@st.composite
def every_special_at_its_own_place(draw, dtype):
    """A non-empty tensor, uniform in [-3, 3], holding NaN, +inf, -inf, 0 and -0 each at
    its own drawn position: where an elementwise layer's answer to them matters, since
    the upstream gradient drawn with it is finite."""
    shape = (draw(st.integers(5, 8)), *draw(st.lists(st.integers(1, 3), max_size=2)))
    x = draw(values(shape, dtype))
    x = torch.where(x.isfinite(), x, torch.ones_like(x))  # the specials go only where drawn below
    specials = [math.nan, math.inf, -math.inf, 0.0, -0.0]
    positions = draw(st.permutations(range(x.numel())))[: len(specials)]
    flat = x.view(-1)
    for position, value in zip(positions, specials):
        flat[position] = value
    return x


finite_upstreams = st.builds(Upstream, st.integers(0, 2**16), st.just([]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ELEMENTWISE))
@settings(max_examples=5)
@given(dout=finite_upstreams, data=st.data())
def test_elementwise_at_every_special_input_with_a_finite_upstream_gradient(dtype, name, dout, data):
    """NaN, +-inf and +-0 in the input where the upstream gradient is finite and nonzero:
    no NaN or inf elsewhere in dout may make a layer take a slower, exact path there."""
    compare(ELEMENTWISE[name](), dtype, data.draw(every_special_at_its_own_place(dtype)), dout)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=25)
@given(shape=st.lists(st.integers(0, 4), max_size=3), dout=upstreams, data=st.data())
def test_softmax(dtype, shape, dout, data):
    ndim = max(len(shape), 1)
    dim = data.draw(st.integers(-ndim, ndim - 1))
    compare(Softmax(dim), dtype, data.draw(values(tuple(shape), dtype)), dout)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=25)
@given(shape=st.lists(st.integers(0, 3), min_size=1, max_size=4), dout=upstreams, data=st.data())
def test_flatten(dtype, shape, dout, data):
    ndim = len(shape)
    start = data.draw(st.integers(-ndim, ndim - 1))
    end = data.draw(st.integers(-ndim, ndim - 1))
    layer = Flatten(start, end)
    x = data.draw(values(tuple(shape), dtype))
    if start % ndim > end % ndim:
        assert_both_refuse(layer, twin(layer, dtype), x)
        return
    compare(layer, dtype, x, dout)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.filterwarnings("ignore:dropout2d")  # torch 2.x reads a 3-D input to Dropout2d as (N, C, L)
@settings(max_examples=30)
@given(
    kind=st.sampled_from([Dropout, Dropout2d]),
    p=st.sampled_from([0.0, 0.2, 0.5, 1.0]),
    training=st.booleans(),
    batch=BATCHES_OR_UNBATCHED,
    dout=upstreams,
    data=st.data(),
)
def test_dropout(dtype, kind, p, training, batch, dout, data):
    layer = kind(p).train(training)
    shape = (2, 3, 2) if batch is None else (batch, 2, 3, 2)
    x = data.draw(values(shape, dtype))
    if training and p > 0:
        # Masks come from different random draws than torch's: autograd through the
        # layer's own forward, under one seed, judges the backward.
        check_against_autograd(layer.to(dtype=dtype), x, dout=dout, seed=data.draw(st.integers(0, 100)))
        return
    compare(layer, dtype, x, dout)


# Convolution and pooling -------------------------------------------------------------------

pairs = st.tuples


def image_shape(batch, channels, size):
    """(N, C, H, W), or (C, H, W) for an unbatched input (batch None)."""
    return (channels, *size) if batch is None else (batch, channels, *size)


def windows_fit(size, kernel, stride, padding, dilation):
    """Whether at least one window fits along each axis (torch refuses the input otherwise)."""
    axes = zip(size, kernel, stride, padding, dilation)
    return all(window_output_size(*axis) >= 1 for axis in axes)


def some_window_in_padding(size, kernel, stride, padding, dilation):
    """Whether some dilated window holds only padding."""
    for axis in zip(size, kernel, stride, padding, dilation):
        count = window_output_size(*axis)
        if not every_window_touches_input(axis[0], count, *axis[1:]):
            return True
    return False


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60)
@given(
    channels=pairs(st.integers(1, 2), st.integers(1, 3)),
    kernel=pairs(st.integers(1, 3), st.integers(1, 3)),
    stride=pairs(st.integers(1, 2), st.integers(1, 2)),
    padding=pairs(st.integers(0, 2), st.integers(0, 2)),
    dilation=pairs(st.integers(1, 2), st.integers(1, 2)),
    bias=st.booleans(),
    padding_mode=st.sampled_from(["zeros", "circular"]),
    batch=BATCHES_OR_UNBATCHED,
    size=pairs(st.integers(1, 6), st.integers(1, 6)),
    dout=upstreams,
    data=st.data(),
)
def test_conv2d(dtype, channels, kernel, stride, padding, dilation, bias, padding_mode, batch, size, dout, data):
    layer = Conv2d(*channels, kernel, stride, padding, dilation, bias=bias, padding_mode=padding_mode)
    x = data.draw(values(image_shape(batch, channels[0], size), dtype))
    wraps_twice = padding_mode == "circular" and (padding[0] > size[0] or padding[1] > size[1])
    if wraps_twice or not windows_fit(size, kernel, stride, padding, dilation):
        assert_both_refuse(layer, twin(layer, dtype), x)
        return
    # torch gives two answers for a NaN or inf in dout at a window that holds padding:
    # its float32 oneDNN path (batch > 1) leaves the padding taps out of the weight
    # gradient, its float64 path and its float32 path at batch 1 multiply them (0 * inf
    # = NaN in every weight entry such a tap meets), as nnlab's im2col does. Compared
    # in float64 only.
    zero_padding = padding != (0, 0) and padding_mode == "zeros"
    assume(not (dtype == torch.float32 and zero_padding and dout.has_nonfinite()))
    compare(layer, dtype, x, dout)


pool_options = st.fixed_dictionaries(
    {
        "kernel": pairs(st.integers(1, 3), st.integers(1, 3)),
        "stride": st.one_of(st.none(), pairs(st.integers(1, 3), st.integers(1, 3))),
        "padding": pairs(st.integers(0, 1), st.integers(0, 1)),
        "batch": BATCHES_OR_UNBATCHED,
        "channels": st.integers(1, 2),
        "size": pairs(st.integers(1, 6), st.integers(1, 6)),
    }
)


def check_pool(make, torch_class, options, dilation, dtype, dout, data):
    """Compares the pooling layer ``make()`` with its twin, or, where torch refuses the
    arguments or the input, checks that nnlab refuses them with a ValueError too."""
    kernel, padding, size = options["kernel"], options["padding"], options["size"]
    stride = kernel if options["stride"] is None else options["stride"]
    x = data.draw(values(image_shape(options["batch"], options["channels"], size), dtype))
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        with pytest.raises(TORCH_REFUSALS):
            torch_class(kernel, stride, padding)(x)
        with pytest.raises(ValueError, match=torch_class.__name__):
            make()
        return
    layer = make()
    if not windows_fit(size, kernel, stride, padding, dilation):
        assert_both_refuse(layer, twin(layer, dtype), x)
        return
    compare(layer, dtype, x, dout)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60)
@given(options=pool_options, dilation=pairs(st.integers(1, 2), st.integers(1, 2)), dout=upstreams, data=st.data())
def test_maxpool2d(dtype, options, dilation, dout, data):
    stride = options["kernel"] if options["stride"] is None else options["stride"]
    window = (options["size"], options["kernel"], stride, options["padding"], dilation)
    # torch's max_pool2d writes out of bounds when a dilated window holds only padding
    # (nnlab gives -inf and no gradient there: test_layers_pooling); no comparison.
    assume(not windows_fit(*window) or not some_window_in_padding(*window))

    def make():
        return MaxPool2d(options["kernel"], options["stride"], options["padding"], dilation)

    check_pool(make, torch.nn.MaxPool2d, options, dilation, dtype, dout, data)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=40)
@given(options=pool_options, count_include_pad=st.booleans(), dout=upstreams, data=st.data())
def test_avgpool2d(dtype, options, count_include_pad, dout, data):
    def make():
        return AvgPool2d(options["kernel"], options["stride"], options["padding"], count_include_pad=count_include_pad)

    check_pool(make, torch.nn.AvgPool2d, options, (1, 1), dtype, dout, data)


output_sizes = st.one_of(
    st.integers(1, 4),
    pairs(st.one_of(st.none(), st.integers(1, 4)), st.one_of(st.none(), st.integers(1, 4))),
)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60)
@given(
    kind=st.sampled_from([AdaptiveMaxPool2d, AdaptiveAvgPool2d]),
    output_size=output_sizes,
    batch=BATCHES_OR_UNBATCHED,
    size=pairs(st.integers(0, 6), st.integers(1, 6)),
    dout=upstreams,
    data=st.data(),
)
def test_adaptive_pools(dtype, kind, output_size, batch, size, dout, data):
    layer = kind(output_size)
    x = data.draw(values(image_shape(batch, 2, size), dtype))
    if 0 in size:
        if kind is AdaptiveAvgPool2d and layer._out_hw(*size) == (1, 1):
            # torch's output-(1, 1) shortcut (a mean) gives NaN for an empty plane where
            # its general path refuses it; nnlab refuses it always (no guess).
            with pytest.raises(ValueError, match="AdaptiveAvgPool2d"):
                layer(x)
            return
        assert_both_refuse(layer, twin(layer, dtype), x)
        return
    compare(layer, dtype, x, dout)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=25)
@given(
    scale=pairs(st.integers(1, 3), st.integers(1, 3)),
    batch=BATCHES,
    size=pairs(st.integers(1, 4), st.integers(1, 4)),
    dout=upstreams,
    data=st.data(),
)
def test_upsample(dtype, scale, batch, size, dout, data):
    x = data.draw(values((batch, 2, *size), dtype))
    compare(Upsample(scale_factor=scale), dtype, x, dout)


# Batch normalisation ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60)
@given(
    kind=st.sampled_from([BatchNorm1d, BatchNorm2d]),
    channels=st.integers(1, 3),
    batch=BATCHES,
    spatial=st.lists(st.integers(0, 3), max_size=2),
    training=st.booleans(),
    eps=st.sampled_from([1e-5, 1e-3]),
    momentum=st.sampled_from([0.1, 0.5, None]),
    seed=st.integers(0, 2**16),
    dout=upstreams,
    data=st.data(),
)
def test_batchnorm(dtype, kind, channels, batch, spatial, training, eps, momentum, seed, dout, data):
    if kind is BatchNorm1d:
        spatial = spatial[:1]
    else:
        spatial = (spatial + [2, 2])[:2]
    layer = kind(channels, eps=eps, momentum=momentum).train(training)
    randomize_batchnorm(layer, torch.Generator().manual_seed(seed))
    x = data.draw(values((batch, channels, *spatial), dtype))
    module = twin(layer, dtype)
    if training and x.numel() == channels:
        # One value per channel: torch refuses to train on it.
        assert_both_refuse(layer, module, x)
        return
    if training and dtype == torch.float32:
        # A channel of equal values has variance 0: torch's float32 mean (the sum times
        # 1/n) is off by an ulp, which 1/sqrt(eps) makes ~1e-5 in its output, where
        # nnlab's mean of equal values is exact; nothing to compare at float32's 1e-6.
        assume(not has_constant_channel(x))
    check_against_torch(layer, module, x, dout=dout)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert_close(name, getattr(layer, name), getattr(module, name), atol=FORWARD_ATOL[dtype])


def in_unit_interval(x):
    return bool(((x >= 0) & (x <= 1)).all())


def has_constant_channel(x):
    """Whether some channel (dimension 1) of x holds one finite value over and over."""
    if x.numel() == 0:
        return False
    per_channel = x.transpose(0, 1).reshape(x.shape[1], -1)
    constant = (per_channel.amax(dim=1) == per_channel.amin(dim=1)) & per_channel[:, 0].isfinite()
    return bool(constant.any())


# Losses ---------------------------------------------------------------------------------------


@st.composite
def class_targets(draw, logits):
    """Class-index targets for ``logits`` (N, C), int64 or uint8, or probabilities;
    and the logits with -inf (a mask) on some non-target classes when drawn."""
    num_samples, num_classes = logits.shape
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    form = draw(st.sampled_from(["int64", "uint8", "probabilities"]))
    labels = torch.randint(0, num_classes, (num_samples,), generator=generator)
    if form == "probabilities":
        scores = torch.randn(num_samples, num_classes, generator=generator, dtype=torch.float64)
        target = torch.softmax(scores, dim=1).to(logits.dtype)
        if draw(st.booleans()):
            target = torch.nn.functional.one_hot(labels, num_classes).to(logits.dtype)
    else:
        target = labels.to(getattr(torch, form))
    if draw(st.booleans()):
        others = torch.rand(num_samples, num_classes, generator=generator) < 0.5
        others[torch.arange(num_samples), labels] = False
        logits = logits.masked_fill(others, -math.inf)
    return logits, target


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60)
@given(
    kind=st.sampled_from([CrossEntropyLoss, NLLLoss]),
    batch=BATCHES,
    classes=st.integers(1, 4),
    dout=upstreams,
    data=st.data(),
)
def test_cross_entropy(dtype, kind, batch, classes, dout, data):
    logits = data.draw(values((batch, classes), dtype))
    logits, target = data.draw(class_targets(logits))
    # torch's NLLLoss takes class indices only (nnlab's also probabilities).
    assume(kind is CrossEntropyLoss or not target.is_floating_point())
    compare(kind(), dtype, logits, dout, y=target)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=40)
@given(
    kind=st.sampled_from([MSELoss, L1Loss, BCEWithLogitsLoss, BCELoss]),
    shape=st.lists(st.integers(0, 3), min_size=1, max_size=3),
    dout=upstreams,
    data=st.data(),
)
def test_elementwise_losses(dtype, kind, shape, dout, data):
    x = data.draw(values(tuple(shape), dtype))
    y = data.draw(values(tuple(shape), dtype))
    if kind in (BCEWithLogitsLoss, BCELoss):
        # Targets in [0, 1]; NaN and inf stay (BCEWithLogitsLoss takes them, as torch).
        y = torch.where(y.isfinite(), y.abs() / 3, y)
    if kind is BCELoss:
        # Probabilities, 0 and 1 included (from integer inputs); NaN stays.
        x = torch.clamp(x.abs() / 2, max=1)
        if not (in_unit_interval(x) and in_unit_interval(y)):
            layer = kind()
            with pytest.raises(TORCH_REFUSALS):
                twin(layer, dtype)(x, y)
            with pytest.raises(ValueError, match="BCELoss"):
                layer(x, y=y)
            return
    compare(kind(), dtype, x, dout, y=y)


@pytest.mark.parametrize("bad", [1.5, -0.25, math.nan, math.inf])
@pytest.mark.parametrize("where", ["probabilities", "targets"])
def test_bce_loss_refuses_values_outside_unit_interval_as_torch(where, bad):
    p = torch.tensor([0.25, 0.5])
    y = torch.tensor([1.0, 0.0])
    if where == "probabilities":
        p[0] = bad
    else:
        y[0] = bad
    with pytest.raises(TORCH_REFUSALS):
        torch.nn.BCELoss()(p, y)
    with pytest.raises(ValueError, match=f"BCELoss: expected {where}"):
        BCELoss()(p, y=y)


# Compositions -----------------------------------------------------------------------------


def shared_activation():
    act = ReLU()
    return Sequential(Linear(4, 4), act, Linear(4, 4), act)


def tied_weights():
    linear = Linear(4, 4)
    return Sequential(linear, Tanh(), linear)


def small_cnn():
    # No convolution bias: on a zero input it would make each BatchNorm channel a
    # constant b, whose normalised value nnlab computes as exactly 0 and torch as
    # rounding noise around 0, on which the ReLU after it then routes the gradient.
    return Sequential(
        Conv2d(4, 3, 3, padding=1, bias=False), BatchNorm2d(3), ReLU(), MaxPool2d(2), Flatten(), Linear(3, 2)
    )


COMPOSITIONS = {
    # name: (builder, input shape after the batch dimension)
    "mlp": (lambda: Sequential(Linear(4, 5), ReLU(), Linear(5, 3), Softmax()), (4,)),
    "shared_activation": (shared_activation, (4,)),
    "tied_weights": (tied_weights, (4,)),
    "residual": (lambda: Residual(Sequential(Linear(4, 4), Tanh())), (4,)),
    "residual_shortcut": (lambda: Residual(Sequential(Linear(4, 3), Sigmoid()), Linear(4, 3)), (4,)),
    "heads": (lambda: Heads(Linear(4, 2), Sequential(Linear(4, 3), LeakyReLU(0.2))), (4,)),
    "cnn": (small_cnn, (4, 2, 2)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=30)
@given(
    name=st.sampled_from(sorted(COMPOSITIONS)),
    batch=BATCHES,
    seed=st.integers(0, 2**16),
    dout=upstreams,
    data=st.data(),
)
def test_compositions(dtype, name, batch, seed, dout, data):
    build, features = COMPOSITIONS[name]
    torch.manual_seed(seed)
    layer = build()
    x = data.draw(values((batch, *features), dtype))
    compare(layer, dtype, x, dout)


# Pinned cases ------------------------------------------------------------------------------
# The cases issue 9 found, written out so that they stay whatever hypothesis draws:
# (layer factory, input, targets or None, upstream gradient or None for a random one).

NAN, INF = math.nan, math.inf
LABELS = torch.tensor([0, 0])

PINNED = {
    # Subgradient 0 at +-0; a NaN input passes dout; dout +-inf or NaN at x <= 0 gives 0.
    "relu_at_zero_and_nonfinite": (
        ReLU,
        [0.0, -0.0, 0.0, NAN, NAN, -1.0, -INF, INF, 2.0],
        None,
        [1.0, 1.0, INF, 3.0, INF, -INF, NAN, 4.0, NAN],
    ),
    # torch takes a window's last NaN.
    "maxpool_last_nan": (lambda: MaxPool2d(2), [[[[NAN, 1.0], [NAN, 2.0]]]], None, None),
    # Windows whose real entries are all -inf: torch picks the first real one, never padding.
    "maxpool_minus_inf_beside_padding": (
        lambda: MaxPool2d(2, stride=1, padding=1),
        [[[[-INF, -INF, 1.0], [-INF, -INF, 2.0], [3.0, 4.0, 5.0]]]],
        None,
        None,
    ),
    "adaptive_max_last_nan": (lambda: AdaptiveMaxPool2d(1), [[[[NAN, 1.0, NAN], [2.0, NAN, 0.0]]]], None, None),
    # One NaN in x, one inf in dout: each stays in the windows that hold it.
    "adaptive_avg_nonfinite_stays_local": (
        lambda: AdaptiveAvgPool2d(2),
        [[[[NAN, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0], [8.0, 9.0, 1.0, 2.0], [3.0, 4.0, 5.0, 6.0]]]],
        None,
        [[[[1.0, INF], [2.0, 3.0]]]],
    ),
    # -inf logits on other classes (a mask): a finite loss (log 2 for the first row).
    "cross_entropy_masked_logits": (CrossEntropyLoss, [[0.0, -INF, 0.0], [1.0, -INF, -INF]], LABELS, 1.0),
    "cross_entropy_infinite_dout": (CrossEntropyLoss, [[0.5, 1.0, 2.0], [0.0, 0.0, 0.0]], LABELS, INF),
    # torch's nll_loss backward writes -dout / N at the targets only: 0 elsewhere.
    "nll_infinite_dout": (NLLLoss, [[0.5, 1.0, 2.0], [0.0, 0.0, 0.0]], LABELS, -INF),
    # torch: inf at z = +inf (y < 1), NaN at z = -inf.
    "bce_infinite_logits": (BCEWithLogitsLoss, [INF, 1.0], torch.tensor([0.5, 0.5]), None),
    "bce_minus_infinite_logits": (BCEWithLogitsLoss, [-INF, 1.0], torch.tensor([0.5, 0.5]), None),
    # A 0-d tensor has dimensions 0 and -1.
    "softmax_0d": (Softmax, 2.0, None, None),
}

# Empty batches, wherever torch takes them (a loss over nothing is NaN).
EMPTY = {
    "linear": (lambda: Linear(3, 2), (0, 3)),
    "softmax": (lambda: Softmax(0), (0, 3)),
    "flatten": (Flatten, (0, 2, 3)),
    "conv2d": (lambda: Conv2d(2, 3, 3, padding=1), (0, 2, 4, 4)),
    "maxpool2d": (lambda: MaxPool2d(2, padding=1), (0, 2, 4, 4)),
    "avgpool2d": (lambda: AvgPool2d(3, stride=2, padding=1, count_include_pad=False), (0, 2, 4, 4)),
    "adaptive_max": (lambda: AdaptiveMaxPool2d(3), (0, 2, 4, 4)),
    "adaptive_avg": (lambda: AdaptiveAvgPool2d(3), (0, 2, 4, 4)),
    "batchnorm1d_train": (lambda: BatchNorm1d(2), (0, 2)),
    "batchnorm1d_train_length_0": (lambda: BatchNorm1d(2), (3, 2, 0)),
    "batchnorm2d_train": (lambda: BatchNorm2d(2), (0, 2, 3, 3)),
    "dropout2d": (lambda: Dropout2d(0.0), (0, 2, 3, 3)),
}
for name, (factory, shape) in EMPTY.items():
    PINNED[f"empty_{name}"] = (factory, torch.zeros(shape), None, None)
PINNED["empty_cross_entropy"] = (CrossEntropyLoss, torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), None)
PINNED["empty_cross_entropy_probabilities"] = (CrossEntropyLoss, torch.zeros(0, 3), torch.zeros(0, 3), None)
PINNED["empty_mse"] = (MSELoss, torch.zeros(0, 3), torch.zeros(0, 3), None)
PINNED["empty_bce"] = (BCEWithLogitsLoss, torch.zeros(0, 3), torch.zeros(0, 3), None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(PINNED))
def test_pinned(case, dtype):
    factory, x, y, dout = PINNED[case]
    x = torch.as_tensor(x, dtype=dtype)
    if y is not None and y.is_floating_point():
        y = y.to(dtype)
    if dout is not None:
        dout = torch.as_tensor(dout, dtype=dtype)
    layer = factory()
    module = compare(layer, dtype, x, dout, y=y)
    if isinstance(layer, (BatchNorm1d, BatchNorm2d)):
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            assert_close(name, getattr(layer, name), getattr(module, name), atol=0.0)

