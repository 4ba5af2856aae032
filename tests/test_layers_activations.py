"""The activations named after torch.nn modules (nnlab.layers.activations, and LeakyReLU's
torch spelling) against those modules, built from the same arguments: the output, the
input gradient and the parameter gradients for the same input and upstream gradient, in
float32 and float64, on shapes, options and values drawn by hypothesis.

The values reach each layer's kinks on purpose (the thresholds, bounds and lambd of its
options, written at drawn positions), as well as NaN and +-inf in the input and in the
upstream gradient, batches of 0 and 1 and non-contiguous inputs. Where torch refuses an
input, nnlab must refuse it with a ValueError naming the layer.

Where torch 2.13 answers differently by position (a NaN input to the layers of
NAN_BY_POSITION, GELU at +inf in float32: its vectorised loop and its scalar tail
disagree), the random comparisons leave those values out and ``test_conventions`` pins
nnlab's documented answer: the vectorised loop's, checked against torch on a long tensor.
"""

import inspect
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import assert_close, check_against_torch, check_finite_differences, copy_params
from special_values import shapes, tensors
from test_layers_parity import DTYPES, Upstream, huge_upstreams, upstreams

import nnlab.layers as nl
from nnlab.layers import make_activation

# Elementwise layers: (name, strategy of constructor arguments, the kinks of those arguments).
ELEMENTWISE = [
    ("ELU", st.tuples(st.sampled_from([1.0, 0.5, 2.0])), lambda args: [0.0]),
    ("CELU", st.tuples(st.sampled_from([1.0, 0.5, 2.0])), lambda args: [0.0]),
    ("SELU", st.just(()), lambda args: [0.0]),
    ("GELU", st.tuples(st.sampled_from(["none", "tanh"])), lambda args: [0.0]),
    ("SiLU", st.just(()), lambda args: [0.0]),
    ("Mish", st.just(()), lambda args: [0.0]),
    (
        "Softplus",
        st.tuples(st.sampled_from([0.5, 1.0, 2.0]), st.sampled_from([0.5, 1.0, 20.0])),
        lambda args: [args[1] / args[0]],
    ),
    ("Softsign", st.just(()), lambda args: [0.0]),
    ("Hardtanh", st.tuples(st.sampled_from([-2.0, -1.0, -0.5]), st.sampled_from([0.5, 1.0, 2.5])), list),
    ("ReLU6", st.just(()), lambda args: [0.0, 6.0]),
    ("Hardswish", st.just(()), lambda args: [-3.0, 3.0]),
    ("Hardsigmoid", st.just(()), lambda args: [-3.0, 3.0]),
    ("Hardshrink", st.tuples(st.sampled_from([0.0, 0.5, 1.5])), lambda args: [-args[0], args[0]]),
    ("Softshrink", st.tuples(st.sampled_from([0.0, 0.5, 1.5])), lambda args: [-args[0], args[0]]),
    ("Tanhshrink", st.just(()), lambda args: [0.0]),
    ("Threshold", st.tuples(st.sampled_from([-1.0, 0.0, 0.5]), st.sampled_from([-2.0, 0.0, 7.0])), lambda args: [args[0]]),
    ("LogSigmoid", st.just(()), lambda args: [0.0]),
    ("LeakyReLU", st.tuples(st.sampled_from([0.01, -0.3, 1.5])), lambda args: [0.0]),
]
NAMES = [name for name, _, _ in ELEMENTWISE]
# The layers whose torch module takes inplace=True (nnlab computes it out of place).
# torch's gradient at a NaN input depends on the NaN's position (see test_conventions).
NAN_BY_POSITION = ["ELU", "CELU", "SELU", "Hardtanh", "ReLU6", "Hardswish", "Hardshrink", "Softshrink"]
INPLACE = ["ELU", "CELU", "SELU", "SiLU", "Mish", "Hardtanh", "ReLU6", "Hardswish", "Hardsigmoid", "Threshold", "LeakyReLU"]


def namesakes(name, args, dtype, **kwargs):
    """The nnlab layer and the torch.nn module called ``name``, built from the same
    arguments, in ``dtype``; nnlab alone gets ``kwargs`` (inplace: torch's in-place
    forward would change the input the reference gradient is taken at)."""
    layer = getattr(nl, name)(*args, **kwargs).to(dtype=dtype)
    if name == "Hardsigmoid" and dtype == torch.float64:
        return layer, ExactHardsigmoid()
    module = getattr(torch.nn, name)(*args).to(dtype)
    return layer, module


class ExactHardsigmoid(torch.nn.Module):
    """torch.nn.Hardsigmoid with the exact slope 1/6 in float64, where torch 2.13's
    derivative kernel multiplies by 1/6 rounded to float32 (0.16666667163, a relative
    error of 3e-8; nnlab's docstring says so): autograd of x / 6 + 0.5 where -3 < x < 3,
    of torch's hardsigmoid elsewhere."""

    def forward(self, x):
        inside = (x > -3) & (x < 3)
        return torch.where(inside, x / 6 + 0.5, torch.nn.functional.hardsigmoid(x))


def compare(layer, module, x, dout):
    """check_against_torch, and the input left as it was (inplace=True included)."""
    before = x.clone()
    check_against_torch(layer, module, x, dout=dout)
    layer(x)
    assert torch.equal(x.nan_to_num(), before.nan_to_num()) and torch.equal(x.isnan(), before.isnan())


# Elementwise layers ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=120)
@given(spec=st.sampled_from(ELEMENTWISE), shape=shapes(), inplace=st.booleans(), dout=huge_upstreams, data=st.data())
def test_elementwise_matches_torch(dtype, spec, shape, inplace, dout, data):
    name, arguments, kinks = spec
    args = data.draw(arguments)
    kwargs = {"inplace": inplace} if name in INPLACE else {}
    layer, module = namesakes(name, args, dtype, **kwargs)
    x = without_convention_points(name, args, data.draw(tensors(shape, dtype, kinks(args), huge=True)))
    compare(layer, module, x, dout)


def without_convention_points(name, args, x):
    """x without the values where torch's answer depends on the position (test_conventions):
    +inf for GELU in float32, NaN for NAN_BY_POSITION (replaced by -inf, another special);
    and GELU's float32 inputs beyond half the largest float, where torch's kernel overflows
    to inf and nnlab gives x (test_gelu_is_exact_at_inf_and_the_largest_floats_in_a_long_tensor)."""
    if name == "GELU" and args in ((), ("none",)) and x.dtype == torch.float32:
        return torch.where(x > torch.finfo(x.dtype).max / 2, -math.inf, x)
    if name in NAN_BY_POSITION:
        return torch.where(x.isnan(), -math.inf, x)
    return x


@pytest.mark.parametrize("name", ["ELU", "Softplus", "Hardtanh", "Hardswish", "Softshrink", "Threshold", "GELU", "LeakyReLU"])
def test_elementwise_at_every_kink_and_special(name):
    """Every kink of the default options times every special upstream value, in one
    tensor long enough for torch's vectorised loops and its scalar tail."""
    args = {"Threshold": (0.5, -2.0)}.get(name, ())
    points = [0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 3.0, -3.0, 20.0, 6.0, math.inf, -math.inf, 2.5]
    douts = [1.0, -2.0, 0.0, math.inf, -math.inf, math.nan]
    for dtype in DTYPES:
        x = torch.tensor(points, dtype=dtype).repeat_interleave(len(douts)).repeat(3)
        dout = torch.tensor(douts, dtype=dtype).repeat(len(points) * 3)
        layer, module = namesakes(name, args, dtype)
        compare(layer, module, without_convention_points(name, args, x), dout)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAN_BY_POSITION)
def test_conventions(dtype, name):
    """nnlab's documented answers where torch 2.13's depend on the position: at a NaN
    input, the gradient of torch's vectorised loop (the start of a long tensor), at every
    position, also in a tensor of one entry; GELU(+inf) = +inf in both dtypes, as torch's
    float64 (its float32 gives NaN in the vectorised loop)."""
    douts = torch.tensor([1.0, -2.0, 0.0, math.inf, -math.inf, math.nan], dtype=dtype)
    x = torch.full((64,), math.nan, dtype=dtype, requires_grad=True)
    vectorised = torch.autograd.grad(getattr(torch.nn, name)()(x), x, douts.repeat(11)[:64])[0][:6]
    for position in range(6):
        layer = getattr(nl, name)()
        layer(torch.tensor([math.nan], dtype=dtype))
        dx = layer.backward(douts[position : position + 1])
        assert_close(f"{name} at NaN, dout {douts[position].item()}", dx, vectorised[position : position + 1], rtol=0)
    assert nl.GELU()(torch.tensor([math.inf], dtype=dtype)).item() == math.inf
    assert torch.nn.GELU()(torch.tensor([math.inf], dtype=torch.float64)).item() == math.inf


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_is_exact_at_inf_and_the_largest_floats_in_a_long_tensor(dtype, approximate):
    """GELU(x) = x * Phi(x) = x for x = +inf and for the largest finite floats (Phi = 1
    there), at every position of a tensor long enough for torch's vectorised loop (whose
    float32 kernel gives NaN at +inf and overflows to inf at 3e38); the finite entries
    beside them as torch's. The exact values are x itself: no reference kernel needed."""
    largest = torch.finfo(dtype).max
    x = torch.linspace(-4, 4, 64, dtype=dtype)
    x[[3, 17, 40]] = math.inf
    x[[5, 33]] = largest
    x[[6, 50]] = -math.inf
    out = nl.GELU(approximate)(x)
    huge = torch.zeros(64, dtype=torch.bool)
    huge[[3, 17, 40, 5, 33]] = True
    assert torch.equal(out[huge], x[huge])
    assert out[[6, 50]].isnan().all()  # -inf * Phi(-inf) = -inf * 0, as torch
    finite = torch.isfinite(x) & ~huge
    atol = 1e-6 if dtype == torch.float32 else 1e-12
    assert_close("finite entries", out[finite], torch.nn.GELU(approximate)(x[finite]), atol=atol)


def test_torchs_float64_hardsigmoid_slope_is_rounded_to_float32():
    x = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(torch.nn.Hardsigmoid()(x), x, torch.ones_like(x))
    assert slope.item() == float(torch.tensor(1 / 6, dtype=torch.float32))
    layer = nl.Hardsigmoid()
    layer(x.detach())
    assert layer.backward(torch.ones_like(x)).item() == 1 / 6


@pytest.mark.parametrize("dtype", DTYPES)
def test_hardswish_bounds_as_torch_2_13(dtype):
    """torch 2.13's open interval: slope 0 at exactly -3 and 1 at exactly 3 (torch 1.x had
    -0.5 and 1.5 there)."""
    layer = nl.Hardswish()
    layer(torch.tensor([-3.0, 3.0], dtype=dtype))
    assert layer.backward(torch.ones(2, dtype=dtype)).tolist() == [0.0, 1.0]


@pytest.mark.parametrize("name", NAMES)
def test_elementwise_finite_differences(name):
    """Central differences in float64 away from the kinks (a standard normal input moved
    off the kinks of the default options)."""
    args = {"Threshold": (0.5, -2.0)}.get(name, ())
    layer = getattr(nl, name)(*args).to(dtype=torch.float64)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2
    x = torch.where((x.abs() - 0.5).abs() < 0.05, x + 0.2, x)  # off lambd = 0.5 and threshold 0.5
    x = torch.where(x.abs() < 0.05, x + 0.2, x)
    check_finite_differences(layer, x)


def test_dropouts_accept_inplace_and_leave_the_input_unchanged():
    x = torch.randn(4, 3, 2, 2)
    before = x.clone()
    for layer in (nl.Dropout(0.5, inplace=True), nl.Dropout2d(0.5, True), nl.ReLU(inplace=True)):
        out = layer(x)
        assert torch.equal(x, before) and out.shape == x.shape and layer.inplace


@pytest.mark.parametrize("name", INPLACE)
def test_inplace_true_is_computed_out_of_place(name):
    args = {"Threshold": (0.5, -2.0)}.get(name, ())
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    before = x.clone()
    out = getattr(nl, name)(*args, inplace=True)(x)
    assert torch.equal(x, before)
    assert_close("output", out, getattr(torch.nn, name)(*args, inplace=True)(before.clone()), atol=1e-6)


# Along a dimension ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60)
@given(
    name=st.sampled_from(["Softmax", "LogSoftmax", "Softmin", "GLU", "Softmax2d"]),
    shape=shapes(max_dims=5),
    dout=upstreams,
    data=st.data(),
)
def test_along_dim_matches_torch(dtype, name, shape, dout, data):
    ndim = max(len(shape), 1)
    args = () if name == "Softmax2d" else (data.draw(st.integers(-ndim, ndim - 1)),)
    if name == "GLU" and shape:
        shape = list(shape)
        shape[args[0]] = 2 * data.draw(st.integers(1, 2)) + data.draw(st.sampled_from([0, 0, 1]))
    layer, module = namesakes(name, args, dtype)
    x = data.draw(tensors(tuple(shape), dtype))
    if refuses(module, x):
        with pytest.raises(ValueError, match=name):
            layer(x)
        return
    compare(layer, module, x, dout)


def refuses(module, x):
    try:
        module(x)
    except (RuntimeError, ValueError, IndexError):
        return True
    return False


@pytest.mark.parametrize("name, args", [("LogSoftmax", (1,)), ("Softmin", (0,)), ("Softmax2d", ()), ("GLU", (1,))])
def test_along_dim_finite_differences(name, args):
    layer = getattr(nl, name)(*args).to(dtype=torch.float64)
    check_finite_differences(layer, torch.randn(2, 4, 2, 3, dtype=torch.float64))


# PReLU ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=50)
@given(
    per_channel=st.booleans(),
    channels=st.integers(1, 3),
    batch=st.sampled_from([None, 2, 0, 1]),
    spatial=st.lists(st.integers(1, 3), max_size=2),
    dout=upstreams,
    data=st.data(),
)
def test_prelu_matches_torch(dtype, per_channel, channels, batch, spatial, dout, data):
    num_parameters = channels if per_channel else 1
    layer, module = namesakes("PReLU", (num_parameters,), dtype)
    layer.weight.copy_(torch.linspace(-1.5, 2.0, num_parameters))
    copy_params(layer, module)
    shape = ((channels,) if batch is None else (batch, channels)) + tuple(spatial)
    x = data.draw(tensors(shape, dtype))
    if refuses(module, x):
        with pytest.raises(ValueError, match="PReLU"):
            layer(x)
        return
    compare(layer, module, x, dout)


@pytest.mark.parametrize("shape", [(), (5,), (2, 3)])
def test_prelu_single_slope_takes_any_shape(shape):
    layer, module = namesakes("PReLU", (), torch.float64)
    x = torch.randn(shape, dtype=torch.float64)
    compare(layer, module, x, Upstream(0, []))
    check_finite_differences(layer, x + 0.1 * (x == 0))


def test_prelu_gradients_accumulate_parameters_and_state_dict_keys_as_torch():
    layer = nl.PReLU(3, init=0.1)
    module = torch.nn.PReLU(3, init=0.1)
    assert list(layer.state_dict()) == list(module.state_dict()) == ["weight"]
    assert [p.shape for p, _ in layer.params()] == [p.shape for p in module.parameters()]
    assert torch.equal(layer.weight, module.weight.detach())
    x = torch.randn(4, 3, 2)
    dout = torch.randn(4, 3, 2)
    layer(x)
    layer.backward(dout)
    once = layer.grad("weight").clone()
    layer(x)
    layer.backward(dout)
    assert_close("accumulated weight gradient", layer.grad("weight"), 2 * once, rtol=1e-6)
    layer.zero_grad()
    assert not layer.grad("weight").any()


def test_prelu_float64_finite_differences_for_the_slopes():
    layer = nl.PReLU(3, init=0.3).to(dtype=torch.float64)
    check_finite_differences(layer, torch.randn(2, 3, 4, dtype=torch.float64))


# Constructors ----------------------------------------------------------------------------------

# nnlab's documented departures from torch's signatures: the course's alpha beside
# negative_slope; dim=-1 instead of torch's deprecated implicit dim.
SIGNATURE_EXTRAS = {"LeakyReLU": {"alpha"}}
DIM_DEFAULT = ("Softmax", "LogSoftmax", "Softmin")


@pytest.mark.parametrize(
    "name", NAMES + ["PReLU", "GLU", "Softmax", "LogSoftmax", "Softmin", "Softmax2d", "ReLU", "Dropout", "Dropout2d"]
)
def test_constructor_takes_torchs_arguments_in_torchs_positions(name):
    ours = inspect.signature(getattr(nl, name)).parameters
    theirs = inspect.signature(getattr(torch.nn, name)).parameters
    assert [p for p in ours if p not in SIGNATURE_EXTRAS.get(name, ())] == list(theirs)
    for parameter, expected in theirs.items():
        if name in DIM_DEFAULT and parameter == "dim":
            assert ours[parameter].default == -1
        else:
            assert ours[parameter].default == expected.default, parameter


@pytest.mark.parametrize(
    "make, name, argument",
    [
        (lambda: nl.CELU(0.0), "CELU", "alpha"),
        (lambda: nl.ELU("1"), "ELU", "alpha"),
        (lambda: nl.Softplus(beta=0), "Softplus", "beta"),
        (lambda: nl.Softplus(threshold=math.nan), "Softplus", "threshold"),
        (lambda: nl.Hardtanh(1.0, 1.0), "Hardtanh", "max_val"),
        (lambda: nl.Softshrink(-0.5), "Softshrink", "lambd"),
        (lambda: nl.GELU("fast"), "GELU", "approximate"),
        (lambda: nl.LogSoftmax(dim=None), "LogSoftmax", "dim"),
        (lambda: nl.Softmin(dim=1.0), "Softmin", "dim"),
        (lambda: nl.Softmax(dim=None), "Softmax", "dim"),
        (lambda: nl.GLU(dim="1"), "GLU", "dim"),
        (lambda: nl.PReLU(0), "PReLU", "num_parameters"),
        (lambda: nl.PReLU(init=math.inf), "PReLU", "init"),
        (lambda: nl.Threshold(0.5, "x"), "Threshold", "value"),
        (lambda: nl.SELU(inplace="no"), "SELU", "inplace"),
        (lambda: nl.Dropout2d(inplace=None), "Dropout2d", "inplace"),
        (lambda: nl.LeakyReLU(0.2, alpha=0.3), "LeakyReLU", "alpha"),
    ],
)
def test_bad_options_raise_naming_the_layer_and_option(make, name, argument):
    with pytest.raises((ValueError, TypeError), match=f"{name}.*{argument}"):
        make()


def test_leaky_relu_takes_torchs_negative_slope_and_keeps_the_course_alpha():
    assert nl.LeakyReLU(0.2).alpha == nl.LeakyReLU(negative_slope=0.2).alpha == nl.LeakyReLU(alpha=0.2).alpha == 0.2
    assert nl.LeakyReLU(alpha=0.2).negative_slope == 0.2
    assert repr(nl.LeakyReLU(negative_slope=0.3)) == "LeakyReLU(alpha=0.3)"
    with pytest.warns(DeprecationWarning, match="min_value"):
        assert nl.Hardtanh(min_value=-2.0).min_val == -2.0


def test_reprs_state_dicts_and_activation_names():
    assert repr(nl.GELU("tanh")) == "GELU(approximate='tanh')"
    assert repr(nl.Softplus()) == "Softplus(beta=1.0, threshold=20.0)"
    assert repr(nl.ReLU6()) == "ReLU6"
    assert repr(nl.LogSoftmax(1)) == "LogSoftmax(dim=1)"
    for name in NAMES + ["GLU", "Softmax2d", "Softmin", "LogSoftmax"]:
        args = {"Threshold": (0.5, -2.0)}.get(name, ())
        assert getattr(nl, name)(*args).state_dict() == {} == getattr(torch.nn, name)(*args).state_dict()
    for activation, kind in [("gelu", nl.GELU), ("silu", nl.SiLU), ("elu", nl.ELU), ("mish", nl.Mish)]:
        assert type(make_activation(activation)) is kind
