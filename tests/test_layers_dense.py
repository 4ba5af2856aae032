"""Dense layers (Linear, activations, Softmax, Dropout, Flatten) against three judges:
the torch.nn twin, autograd through the layer's own forward, float64 finite differences."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nnlab.layers import Dropout, Flatten, LeakyReLU, Linear, ReLU, Sigmoid, Softmax, Tanh, TanH
from reference import (
    check_against_autograd,
    check_against_torch,
    check_finite_differences,
    copy_params,
)

DTYPES = [torch.float32, torch.float64]

# Shapes for the elementwise layers: batch of one, odd sizes, 1-D to 4-D.
ELEMENTWISE_SHAPES = [(1, 1), (1, 7), (5, 3), (7,), (2, 3, 5), (1, 3, 4, 5), (3, 2, 5, 7)]


def randn(shape, seed, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)


def away_from_zero(x, gap=0.1):
    """x with every entry at least ``gap`` from 0, so finite differences never straddle a kink."""
    return torch.where(x >= 0, x + gap, x - gap)


def elementwise_pair(name):
    """(nnlab layer, torch twin) for the elementwise activations."""
    pairs = {
        "relu": (ReLU(), torch.nn.ReLU()),
        "lrelu": (LeakyReLU(), torch.nn.LeakyReLU()),
        "lrelu0.2": (LeakyReLU(alpha=0.2), torch.nn.LeakyReLU(negative_slope=0.2)),
        "sigmoid": (Sigmoid(), torch.nn.Sigmoid()),
        "tanh": (Tanh(), torch.nn.Tanh()),
    }
    return pairs[name]


ELEMENTWISE = ["relu", "lrelu", "lrelu0.2", "sigmoid", "tanh"]


# Hypothesis strategies ----------------------------------------------------------

def float_arrays(shape, low=-10.0, high=10.0):
    elements = st.floats(low, high, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=32)
    return hnp.arrays(np.float32, shape, elements=elements)


@st.composite
def tensors(draw, min_dims=1, max_dims=4, max_side=5, low=-10.0, high=10.0):
    shape = tuple(draw(st.lists(st.integers(1, max_side), min_size=min_dims, max_size=max_dims)))
    dtype = draw(st.sampled_from(DTYPES))
    values = draw(float_arrays(shape, low, high))
    return torch.from_numpy(values).to(dtype)


# Linear ---------------------------------------------------------------------------

LINEAR_CASES = [
    # (in, out, input shape)
    (1, 1, (1, 1)),
    (3, 5, (1, 3)),
    (7, 3, (5, 7)),
    (4, 9, (2, 3, 4)),
    (5, 2, (2, 3, 1, 5)),
    (6, 4, (6,)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("in_features, out_features, shape", LINEAR_CASES)
def test_linear_against_torch(in_features, out_features, shape, bias, dtype):
    torch.manual_seed(1)
    layer = Linear(in_features, out_features, bias=bias).to(dtype=dtype)
    module = torch.nn.Linear(in_features, out_features, bias=bias).to(dtype)
    copy_params(layer, module)
    check_against_torch(layer, module, randn(shape, 2, dtype))
    check_against_autograd(layer, randn(shape, 3, dtype))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("in_features, out_features, shape", LINEAR_CASES)
def test_linear_finite_differences(in_features, out_features, shape, bias):
    torch.manual_seed(4)
    layer = Linear(in_features, out_features, bias=bias).to(dtype=torch.float64)
    check_finite_differences(layer, randn(shape, 5, torch.float64))


@settings(max_examples=20)
@given(
    in_features=st.integers(1, 8),
    out_features=st.integers(1, 8),
    lead=st.lists(st.integers(1, 5), min_size=0, max_size=2),
    dtype=st.sampled_from(DTYPES),
    bias=st.booleans(),
    data=st.data(),
)
def test_linear_random(in_features, out_features, lead, dtype, bias, data):
    torch.manual_seed(in_features * 10 + out_features)
    layer = Linear(in_features, out_features, bias=bias).to(dtype=dtype)
    module = torch.nn.Linear(in_features, out_features, bias=bias).to(dtype)
    copy_params(layer, module)
    x = torch.from_numpy(data.draw(float_arrays((*lead, in_features)))).to(dtype)
    check_against_torch(layer, module, x)


def test_linear_uses_latest_input():
    torch.manual_seed(0)
    layer = Linear(4, 3)
    first, second = randn((5, 4), 1), randn((5, 4), 2)
    dout = randn((5, 3), 3)
    layer(first)
    layer(second)
    dx = layer.backward(dout)
    assert torch.allclose(layer.dw, dout.T @ second, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(layer.dw, dout.T @ first, rtol=1e-3, atol=1e-3)
    assert torch.allclose(layer.db, dout.sum(0), rtol=1e-6, atol=1e-6)
    assert torch.allclose(dx, dout @ layer.weight, rtol=1e-6, atol=1e-6)


def test_linear_gradients_accumulate_and_zero_grad_clears():
    # float64: the weight gradient accumulates inside the GEMM (addmm_), which rounds the
    # sum once where "single + single" would round twice, so doubling is not bit-exact.
    torch.manual_seed(0)
    layer = Linear(4, 3).to(dtype=torch.float64)
    x, dout = randn((5, 4), 1).double(), randn((5, 3), 2).double()
    layer(x)
    layer.backward(dout)
    once = [grad.clone() for _, grad in layer.params()]
    grad_objects = [grad for _, grad in layer.params()]
    layer(x)
    layer.backward(dout)
    for (_, grad), single in zip(layer.params(), once):
        assert torch.allclose(grad, 2 * single, rtol=1e-12, atol=0)
    layer.zero_grad()
    for (_, grad), same in zip(layer.params(), grad_objects):
        assert grad is same, "zero_grad must clear in place, not reallocate"
        assert torch.count_nonzero(grad) == 0


def test_linear_without_bias():
    layer = Linear(4, 3, bias=False)
    assert layer.bias is None and layer.b is None and layer.db is None
    assert len(layer.params()) == 1
    assert set(layer.state_dict()) == {"weight"}
    assert repr(layer) == "Linear(4, 3, bias=False)"


def test_linear_wstd_init_statistics():
    torch.manual_seed(0)
    wstd = 0.05
    layer = Linear(500, 200, wstd=wstd)
    weight = layer.weight.double()
    n = weight.numel()  # 1e5 samples of N(0, wstd^2)
    # Sample mean has sd wstd/sqrt(n) = 1.6e-4; sample std has sd ~ wstd/sqrt(2n) = 1.1e-4.
    # Both bounds below are > 9 sd, so they only fail if the distribution is wrong.
    assert abs(weight.mean().item()) < 10 * wstd / math.sqrt(n)
    assert abs(weight.std().item() - wstd) < 0.02 * wstd
    assert abs(weight.abs().max().item()) > 3 * wstd  # normal tails, not uniform
    assert torch.count_nonzero(layer.bias) == 0
    assert layer.weight.shape == (200, 500) and layer.bias.shape == (200,)
    assert layer.weight.dtype == torch.float32


def test_linear_default_init_bounds():
    torch.manual_seed(0)
    layer = Linear(400, 300)
    bound = 1 / math.sqrt(400)
    for tensor in (layer.weight, layer.bias):
        assert tensor.abs().max().item() <= bound
    # Uniform on [-bound, bound]: std = bound / sqrt(3); 1.2e5 samples make 3% very loose.
    assert abs(layer.weight.double().std().item() - bound / math.sqrt(3)) < 0.03 * bound / math.sqrt(3)
    assert layer.weight.abs().max().item() > 0.99 * bound
    assert layer.bias.abs().max().item() > 0.9 * bound  # 300 uniform draws reach the edge
    assert torch.count_nonzero(layer.bias) > 0


def test_linear_aliases_are_the_same_tensors():
    layer = Linear(4, 3)
    assert layer.w is layer.weight
    assert layer.b is layer.bias
    assert layer.dw is layer.grad("weight")
    assert layer.db is layer.grad("bias")
    (weight, dweight), (bias, dbias) = layer.params()
    assert weight is layer.weight and dweight is layer.dw
    assert bias is layer.bias and dbias is layer.db
    layer(randn((2, 4), 0))
    layer.backward(randn((2, 3), 1))
    assert layer.dw is dweight and torch.count_nonzero(dweight) > 0
    layer.to(dtype=torch.float64)
    assert layer.w is layer.weight and layer.dw is layer.grad("weight")
    assert layer.w.dtype == torch.float64 and layer.dw.dtype == torch.float64
    assert layer.db.dtype == torch.float64 and torch.count_nonzero(layer.dw) > 0


def test_linear_star_inputs_match_flattened_batch():
    torch.manual_seed(0)
    layer = Linear(5, 3)
    x = randn((2, 4, 5), 1)
    dout = randn((2, 4, 3), 2)
    out = layer(x)
    dx = layer.backward(dout)
    dw = layer.dw.clone()
    layer.zero_grad()
    flat_out = layer(x.reshape(8, 5))
    flat_dx = layer.backward(dout.reshape(8, 3))
    assert out.shape == (2, 4, 3) and dx.shape == (2, 4, 5)
    assert torch.allclose(out.reshape(8, 3), flat_out, atol=1e-6)
    assert torch.allclose(dx.reshape(8, 5), flat_dx, atol=1e-6)
    assert torch.allclose(dw, layer.dw, atol=1e-6)


def test_linear_wrong_shape_names_layer_and_shapes():
    layer = Linear(3, 2)
    with pytest.raises(ValueError) as info:
        layer(torch.zeros(4, 5))
    message = str(info.value)
    assert "Linear(3, 2)" in message
    assert "(*, 3)" in message
    assert "(4, 5)" in message


def test_linear_dtype_mismatch():
    layer = Linear(3, 2)
    with pytest.raises(ValueError) as info:
        layer(torch.zeros(4, 3, dtype=torch.float64))
    message = str(info.value)
    assert "Linear(3, 2)" in message and "float64" in message and "float32" in message


def test_linear_rejects_bad_sizes():
    with pytest.raises(ValueError):
        Linear(0, 3)
    with pytest.raises(ValueError):
        Linear(3, 0)


# Elementwise activations ------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ELEMENTWISE_SHAPES)
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_against_torch(name, shape, dtype):
    layer, module = elementwise_pair(name)
    x = randn(shape, 7, dtype) * 3
    out = check_against_torch(layer, module, x)
    assert out.shape == x.shape
    check_against_autograd(layer, x)


@pytest.mark.parametrize("shape", ELEMENTWISE_SHAPES)
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_finite_differences(name, shape):
    layer, _ = elementwise_pair(name)
    layer.to(dtype=torch.float64)
    check_finite_differences(layer, away_from_zero(randn(shape, 8, torch.float64) * 3))


@settings(max_examples=20)
@given(name=st.sampled_from(ELEMENTWISE), x=tensors())
def test_elementwise_random(name, x):
    layer, module = elementwise_pair(name)
    check_against_torch(layer, module, x)


@settings(max_examples=10)
@given(alpha=st.floats(0.0, 0.99), x=tensors(max_dims=3))
def test_leaky_relu_random_alpha(alpha, x):
    check_against_torch(LeakyReLU(alpha=alpha), torch.nn.LeakyReLU(negative_slope=alpha), x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_exactly_at_zero(dtype):
    x = torch.tensor([[-1.0, 0.0, 1.0], [0.0, -0.0, 2.0]], dtype=dtype)
    layer = ReLU()
    out = layer(x)
    dx = layer.backward(torch.ones_like(x))
    expected = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]], dtype=dtype)
    assert torch.equal(dx, expected)  # torch's subgradient at 0 is 0
    assert torch.equal(out, torch.relu(x))
    check_against_torch(ReLU(), torch.nn.ReLU(), x)
    # The forward's own autograd must agree at 0 too (Dropout2d + BatchNorm feed exact zeros).
    check_against_autograd(ReLU(), x)


@pytest.mark.parametrize("alpha", [0.01, 0.2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_leaky_relu_exactly_at_zero(alpha, dtype):
    # torch's leaky_relu backward is `x > 0 ? dout : alpha * dout`: slope alpha at 0.
    x = torch.tensor([0.0, -0.0, 0.0], dtype=dtype)
    reference = x.clone().requires_grad_(True)
    torch.nn.functional.leaky_relu(reference, alpha).sum().backward()
    layer = LeakyReLU(alpha=alpha)
    layer(x)
    dx = layer.backward(torch.ones_like(x))
    assert torch.equal(dx, reference.grad)
    assert torch.equal(dx, torch.full_like(x, alpha))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_extreme_inputs(dtype):
    x = torch.tensor([[-1e4, -100.0, -30.0, 0.0, 30.0, 100.0, 1e4]], dtype=dtype)
    layer = Sigmoid()
    out = check_against_torch(layer, torch.nn.Sigmoid(), x)
    assert torch.isfinite(out).all()
    layer(x)
    dx = layer.backward(torch.ones_like(x))
    assert torch.isfinite(dx).all()
    assert out[0, 0] == 0 and out[0, -1] == 1
    assert dx[0, 0] == 0 and dx[0, -1] == 0
    assert dx[0, 3] == 0.25


@pytest.mark.parametrize("dtype", DTYPES)
def test_tanh_extreme_inputs(dtype):
    x = torch.tensor([[-1e4, -20.0, 0.0, 20.0, 1e4]], dtype=dtype)
    out = check_against_torch(Tanh(), torch.nn.Tanh(), x)
    assert torch.isfinite(out).all()


# Softmax ----------------------------------------------------------------------------

SOFTMAX_CASES = [
    ((1, 1), -1),
    ((1, 7), -1),
    ((5, 3), 0),
    ((5, 3), 1),
    ((7,), 0),
    ((2, 3, 5), 0),
    ((2, 3, 5), 1),
    ((2, 3, 5), -1),
    ((3, 2, 5, 7), 1),
    ((3, 2, 5, 7), -2),
    ((3, 2, 5, 7), 3),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, dim", SOFTMAX_CASES)
def test_softmax_against_torch(shape, dim, dtype):
    x = randn(shape, 9, dtype) * 3
    out = check_against_torch(Softmax(dim=dim), torch.nn.Softmax(dim=dim), x)
    sums = out.sum(dim=dim)
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-6)
    check_against_autograd(Softmax(dim=dim), x)


@pytest.mark.parametrize("shape, dim", SOFTMAX_CASES)
def test_softmax_finite_differences(shape, dim):
    layer = Softmax(dim=dim).to(dtype=torch.float64)
    check_finite_differences(layer, randn(shape, 10, torch.float64) * 3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_extreme_inputs(dtype):
    x = torch.tensor([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, 3.0]], dtype=dtype)
    out = check_against_torch(Softmax(dim=1), torch.nn.Softmax(dim=1), x)
    assert torch.isfinite(out).all()


@settings(max_examples=20)
@given(data=st.data(), x=tensors())
def test_softmax_random(data, x):
    dim = data.draw(st.integers(-x.dim(), x.dim() - 1))
    check_against_torch(Softmax(dim=dim), torch.nn.Softmax(dim=dim), x)


def test_softmax_wrong_dim():
    layer = Softmax(dim=2)
    with pytest.raises(ValueError) as info:
        layer(torch.zeros(4, 5))
    message = str(info.value)
    assert "Softmax(dim=2)" in message and "(4, 5)" in message and "dimension 2" in message


# Flatten ----------------------------------------------------------------------------

FLATTEN_CASES = [
    ((1, 3, 4, 5), 1, -1),
    ((2, 3, 4, 5), 0, -1),
    ((2, 3, 4, 5), 1, 2),
    ((2, 3, 4, 5), 2, 3),
    ((2, 3, 4, 5), -3, -2),
    ((3, 5), 1, -1),
    ((7,), 0, 0),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, start, end", FLATTEN_CASES)
def test_flatten_against_torch(shape, start, end, dtype):
    layer = Flatten(start_dim=start, end_dim=end)
    x = randn(shape, 11, dtype)
    check_against_torch(layer, torch.nn.Flatten(start, end), x)
    check_against_autograd(layer, x)
    check_finite_differences(Flatten(start, end), randn(shape, 12, torch.float64))


@settings(max_examples=15)
@given(data=st.data(), x=tensors())
def test_flatten_random(data, x):
    start = data.draw(st.integers(0, x.dim() - 1))
    end = data.draw(st.integers(start, x.dim() - 1))
    check_against_torch(Flatten(start, end), torch.nn.Flatten(start, end), x)


def test_flatten_wrong_shape():
    layer = Flatten()
    with pytest.raises(ValueError) as info:
        layer(torch.zeros(5))
    message = str(info.value)
    assert "Flatten" in message and "(5,)" in message and "at least 2 dimensions" in message


# Dropout ----------------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_drop_rate_and_scale(p):
    # Hoeffding: P(|fraction dropped - p| > t) <= 2 exp(-2 n t^2). With n = 2e5 and
    # t = 0.01 the bound is 2 exp(-40) ~ 8e-18, so t = 0.01 never fails by chance.
    n = 200_000
    torch.manual_seed(123)
    layer = Dropout(p)
    x = torch.rand(n) + 0.5  # no zeros in x, so a zero in out means dropped
    out = layer(x)
    dropped = out == 0
    assert abs(dropped.double().mean().item() - p) < 0.01
    kept = ~dropped
    assert torch.equal(out[kept], x[kept] * (1 / (1 - p)))
    # The mean is preserved: E[out] = E[x].
    assert abs(out.double().mean().item() - x.double().mean().item()) < 0.02


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_dropout_eval_is_identity(p):
    layer = Dropout(p).eval()
    assert layer.training is False
    x = randn((4, 5, 3), 0)
    out = layer(x)
    assert torch.equal(out, x)
    dout = randn((4, 5, 3), 1)
    assert torch.equal(layer.backward(dout), dout)
    assert layer.train().training is True


def test_dropout_same_seed_same_mask():
    layer = Dropout(0.5)
    x = randn((6, 7), 0)
    torch.manual_seed(5)
    first = layer(x)
    torch.manual_seed(5)
    second = layer(x)
    third = layer(x)
    assert torch.equal(first, second)
    assert not torch.equal(second, third)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_dropout_gradient_follows_mask(p):
    torch.manual_seed(3)
    layer = Dropout(p)
    x = away_from_zero(randn((5, 4, 3), 1))
    out = layer(x)
    dout = randn((5, 4, 3), 2)
    dx = layer.backward(dout)
    assert torch.allclose(dx, dout * (out / x), rtol=1e-6, atol=0)
    assert torch.equal(dx == 0, out == 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (2, 3, 5), (2, 3, 4, 5)])
def test_dropout_against_autograd(shape, p, dtype):
    check_against_autograd(Dropout(p), randn(shape, 4, dtype))


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_dropout_finite_differences(p):
    check_finite_differences(Dropout(p), randn((3, 4, 5), 6, torch.float64), seed=7)


@settings(max_examples=15)
@given(p=st.floats(0.0, 1.0), x=tensors(), seed=st.integers(0, 2**31 - 1))
def test_dropout_random(p, x, seed):
    check_against_autograd(Dropout(p), x, seed=seed)


def test_dropout_edge_probabilities():
    x = randn((50, 40), 0)
    torch.manual_seed(0)
    keep_all = Dropout(0.0)
    assert torch.equal(keep_all(x), x)
    assert torch.equal(keep_all.backward(torch.ones_like(x)), torch.ones_like(x))
    drop_all = Dropout(1.0)
    out = drop_all(x)
    assert torch.equal(out, torch.zeros_like(x))
    dx = drop_all.backward(torch.ones_like(x))
    assert torch.equal(dx, torch.zeros_like(x))
    assert torch.isfinite(out).all() and torch.isfinite(dx).all()
    with torch.no_grad():
        assert torch.equal(torch.nn.Dropout(1.0)(x), out)


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_dropout_rejects_bad_p(p):
    with pytest.raises(ValueError):
        Dropout(p)


# Contract: repr, backward before forward ---------------------------------------------

def test_reprs():
    assert str(ReLU()).lower() == "relu"
    assert str(Linear(200, 100)) == "Linear(200, 100)"
    assert str(Dropout(0.6)) == "Dropout(p=0.6)"
    assert str(LeakyReLU(alpha=0.01)) == "LeakyReLU(alpha=0.01)"
    assert str(LeakyReLU()) == "LeakyReLU(alpha=0.01)"
    assert str(Sigmoid()) == "Sigmoid"
    assert str(Tanh()) == "Tanh"
    assert TanH is Tanh
    assert str(TanH()) == "Tanh"


@pytest.mark.parametrize(
    "layer, name",
    [
        (Linear(3, 2), "Linear"),
        (ReLU(), "ReLU"),
        (LeakyReLU(), "LeakyReLU"),
        (Sigmoid(), "Sigmoid"),
        (Tanh(), "Tanh"),
        (Softmax(), "Softmax"),
        (Dropout(0.5), "Dropout"),
        (Dropout(0.5).eval(), "Dropout"),
        (Flatten(), "Flatten"),
    ],
)
def test_backward_before_forward(layer, name):
    with pytest.raises(RuntimeError, match=name):
        layer.backward(torch.ones(2, 3))


def test_training_flag_and_modes():
    layer = ReLU()
    assert layer.training is True
    assert layer.eval() is layer and layer.training is False
    assert layer.train() is layer and layer.training is True
    assert layer.train(False).training is False


def test_layers_without_params():
    for layer in (ReLU(), LeakyReLU(), Sigmoid(), Tanh(), Softmax(), Dropout(), Flatten()):
        assert layer.params() == []
        assert layer.state_dict() == {}
        layer.zero_grad()
        assert layer.to(dtype=torch.float64) is layer


def test_outputs_are_fresh_tensors():
    """A later forward must not overwrite an output handed out earlier."""
    x1, x2 = randn((3, 4), 0), randn((3, 4), 1)
    for layer in (ReLU(), LeakyReLU(), Sigmoid(), Tanh(), Softmax(), Dropout(0.0), Linear(4, 4)):
        first = layer(x1)
        kept = first.clone()
        layer(x2)
        assert torch.equal(first, kept), repr(layer)


def test_forward_does_not_modify_input():
    x = randn((3, 4), 0)
    kept = x.clone()
    for layer in (ReLU(), LeakyReLU(), Sigmoid(), Tanh(), Softmax(), Dropout(0.5), Flatten(), Linear(4, 2)):
        layer(x)
        layer.backward(torch.ones_like(layer(x)))
        assert torch.equal(x, kept), repr(layer)


def test_relu_backward_at_nan_input_and_inf_gradient_as_torch():
    x = torch.tensor([float("nan"), -1.0, 0.0, 2.0, float("inf")])
    dout = torch.tensor([1.0, float("inf"), float("inf"), 3.0, 1.0])
    x_ref = x.clone().requires_grad_(True)
    torch.nn.ReLU()(x_ref).backward(dout)
    layer = ReLU()
    layer(x)
    assert torch.equal(layer.backward(dout), x_ref.grad)  # [1, 0, 0, 3, 1]


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_passes_dout_at_a_nan_input_with_finite_dout_everywhere(dtype):
    """A NaN input with nothing else non-finite (no inf in dout to make a NaN elsewhere):
    torch passes dout at the NaN, as at any out > 0."""
    x = torch.tensor([[float("nan"), -1.0, 0.0], [2.0, float("inf"), float("-inf")]], dtype=dtype)
    dout = torch.tensor([[3.0, 5.0, 7.0], [11.0, 13.0, 17.0]], dtype=dtype)
    x_ref = x.clone().requires_grad_(True)
    torch.nn.ReLU()(x_ref).backward(dout)
    layer = ReLU()
    layer(x)
    assert torch.equal(layer.backward(dout), x_ref.grad)  # [[3, 0, 0], [11, 13, 0]]


@pytest.mark.parametrize("shape", [(32, 64, 256), (32, 256, 128), (7, 300, 5)])
def test_linear_forward_on_a_batch_of_rows_has_torchs_exact_bits(shape):
    """For 2-D inputs torch computes addmm(b, x, W.T); so does nnlab, bit for bit."""
    batch, in_features, out_features = shape
    torch.manual_seed(3)
    layer = Linear(in_features, out_features)
    x = torch.randn(batch, in_features)
    assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
