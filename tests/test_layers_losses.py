"""Losses (CrossEntropyLoss, MSELoss, BCEWithLogitsLoss) against the torch.nn twin,
autograd through their own forward, and float64 finite differences."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nnlab.layers import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from reference import FORWARD_ATOL, check_against_autograd, check_against_torch, check_finite_differences

DTYPES = [torch.float32, torch.float64]


def randn(shape, seed, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)


def labels(num_samples, num_classes, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_classes, (num_samples,), generator=generator)


def probabilities(shape, seed, dtype=torch.float32):
    return torch.softmax(randn(shape, seed, torch.float64) * 2, dim=1).to(dtype)


def uniform(shape, seed, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator, dtype=torch.float64).to(dtype)


CE_SHAPES = [(1, 1), (1, 5), (3, 2), (7, 3), (16, 10)]
ELEMENTWISE_SHAPES = [(1,), (1, 1), (5, 3), (7,), (2, 3, 5), (3, 2, 5, 7)]


# CrossEntropyLoss -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", CE_SHAPES)
def test_cross_entropy_indices(shape, dtype):
    x = randn(shape, 1, dtype) * 2
    y = labels(shape[0], shape[1], 2)
    out = check_against_torch(CrossEntropyLoss(), torch.nn.CrossEntropyLoss(), x, y)
    assert out.shape == () and out.dtype == dtype
    check_against_autograd(CrossEntropyLoss(), x, y)
    check_finite_differences(CrossEntropyLoss(), x.double(), y)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", CE_SHAPES)
def test_cross_entropy_probabilities(shape, dtype):
    x = randn(shape, 3, dtype) * 2
    y = probabilities(shape, 4, dtype)
    check_against_torch(CrossEntropyLoss(), torch.nn.CrossEntropyLoss(), x, y)
    check_against_autograd(CrossEntropyLoss(), x, y)
    check_finite_differences(CrossEntropyLoss(), x.double(), y.double())


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_one_hot_equals_indices(dtype):
    x = randn((6, 4), 5, dtype)
    y = labels(6, 4, 6)
    one_hot = torch.nn.functional.one_hot(y, 4).to(dtype)
    loss = CrossEntropyLoss()
    by_index = loss(x, y)
    dx_index = loss.backward()
    by_prob = loss(x, one_hot)
    dx_prob = loss.backward()
    assert abs(by_index.item() - by_prob.item()) <= FORWARD_ATOL[dtype]
    assert torch.allclose(dx_index, dx_prob, atol=FORWARD_ATOL[dtype], rtol=0)


def test_cross_entropy_unnormalised_targets():
    """Rows of y that do not sum to one: torch's formula, -sum y log softmax."""
    x = randn((4, 3), 7, torch.float64)
    y = uniform((4, 3), 8, torch.float64) * 2
    check_against_torch(CrossEntropyLoss(), torch.nn.CrossEntropyLoss(), x, y)
    check_finite_differences(CrossEntropyLoss(), x, y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_extreme_scores(dtype):
    x = torch.tensor(
        [[1e4, -1e4, 0.0], [-1e4, 1e4, 3.0], [5.0, 1.0, -1e4], [-1e4, -1e4, -1e4]], dtype=dtype
    )
    y = torch.tensor([1, 1, 2, 0])
    loss = CrossEntropyLoss()
    out = check_against_torch(loss, torch.nn.CrossEntropyLoss(), x, y)
    assert torch.isfinite(out)
    loss(x, y)
    dx = loss.backward()
    assert torch.isfinite(dx).all()
    # The first row's correct class is 2e4 below the best: loss 2e4 / 4 from that row alone.
    assert out.item() > 2e4 / 4
    soft = torch.tensor([[0.2, 0.5, 0.3], [0.0, 0.1, 0.9], [0.6, 0.0, 0.4], [1 / 3, 1 / 3, 1 / 3]], dtype=dtype)
    out = check_against_torch(CrossEntropyLoss(), torch.nn.CrossEntropyLoss(), x, soft)
    assert torch.isfinite(out)


@pytest.mark.parametrize("dout", [1.0, 0.5, -3.0])
def test_cross_entropy_backward_scales_with_dout(dout):
    x = randn((5, 4), 9)
    y = labels(5, 4, 10)
    loss = CrossEntropyLoss()
    loss(x, y)
    unit = loss.backward()
    loss(x, y)
    scaled = loss.backward(dout)
    assert torch.allclose(scaled, unit * dout, rtol=1e-6, atol=1e-7)
    assert torch.allclose(loss.backward(torch.tensor(dout)), unit * dout, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bad", [-1, 3, 100])
def test_cross_entropy_label_out_of_range(bad):
    x = torch.zeros(4, 3)
    y = torch.tensor([0, 1, bad, 2])
    with pytest.raises(ValueError) as info:
        CrossEntropyLoss()(x, y)
    message = str(info.value)
    assert "CrossEntropyLoss" in message
    assert "[0, 3)" in message and str(bad) in message


def test_cross_entropy_bad_shapes():
    with pytest.raises(ValueError) as info:
        CrossEntropyLoss()(torch.zeros(4), torch.tensor([0, 1, 2, 3]))
    assert "CrossEntropyLoss" in str(info.value) and "(N, C)" in str(info.value) and "(4,)" in str(info.value)
    with pytest.raises(ValueError) as info:
        CrossEntropyLoss()(torch.zeros(4, 3), torch.tensor([0, 1, 2]))
    assert "(4,)" in str(info.value) and "(3,)" in str(info.value)
    with pytest.raises(ValueError) as info:
        CrossEntropyLoss()(torch.zeros(4, 3), torch.zeros(4, 2))
    assert "(4, 3)" in str(info.value) and "(4, 2)" in str(info.value)


@settings(max_examples=20)
@given(
    num_samples=st.integers(1, 8),
    num_classes=st.integers(1, 8),
    dtype=st.sampled_from(DTYPES),
    soft=st.booleans(),
    data=st.data(),
)
def test_cross_entropy_random(num_samples, num_classes, dtype, soft, data):
    elements = st.floats(-5, 5, allow_nan=False, allow_subnormal=False, width=32)
    x = torch.from_numpy(data.draw(hnp.arrays(np.float32, (num_samples, num_classes), elements=elements)))
    x = x.to(dtype)
    if soft:
        weights = st.floats(0, 1, allow_subnormal=False, width=32)
        y = torch.from_numpy(data.draw(hnp.arrays(np.float32, (num_samples, num_classes), elements=weights)))
        y = y.to(dtype)
    else:
        y = torch.tensor(data.draw(st.lists(st.integers(0, num_classes - 1), min_size=num_samples, max_size=num_samples)))
    check_against_torch(CrossEntropyLoss(), torch.nn.CrossEntropyLoss(), x, y)


# MSELoss ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ELEMENTWISE_SHAPES)
def test_mse(shape, dtype):
    x = randn(shape, 11, dtype)
    y = randn(shape, 12, dtype)
    out = check_against_torch(MSELoss(), torch.nn.MSELoss(), x, y)
    assert out.shape == ()
    check_against_autograd(MSELoss(), x, y)
    check_finite_differences(MSELoss(), x.double(), y.double())


def test_mse_shape_mismatch():
    with pytest.raises(ValueError) as info:
        MSELoss()(torch.zeros(4, 3), torch.zeros(4, 2))
    message = str(info.value)
    assert "MSELoss" in message and "(4, 3)" in message and "(4, 2)" in message


@settings(max_examples=15)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple),
    dtype=st.sampled_from(DTYPES),
    data=st.data(),
)
def test_mse_random(shape, dtype, data):
    elements = st.floats(-3, 3, allow_nan=False, allow_subnormal=False, width=32)
    x = torch.from_numpy(data.draw(hnp.arrays(np.float32, shape, elements=elements))).to(dtype)
    y = torch.from_numpy(data.draw(hnp.arrays(np.float32, shape, elements=elements))).to(dtype)
    check_against_torch(MSELoss(), torch.nn.MSELoss(), x, y)


# BCEWithLogitsLoss ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ELEMENTWISE_SHAPES)
def test_bce_with_logits(shape, dtype):
    z = randn(shape, 13, dtype) * 3
    y = uniform(shape, 14, dtype)
    out = check_against_torch(BCEWithLogitsLoss(), torch.nn.BCEWithLogitsLoss(), z, y)
    assert out.shape == ()
    check_against_autograd(BCEWithLogitsLoss(), z, y)
    check_finite_differences(BCEWithLogitsLoss(), z.double(), y.double())


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_with_logits_hard_targets(dtype):
    z = randn((6, 2), 15, dtype)
    y = (uniform((6, 2), 16) > 0.5).to(dtype)
    check_against_torch(BCEWithLogitsLoss(), torch.nn.BCEWithLogitsLoss(), z, y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_with_logits_extreme_logits(dtype):
    z = torch.tensor([[1e10, -1e10], [1e10, -1e10], [-1e10, 1e10], [3.0, -2.0]], dtype=dtype)
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.3, 0.7]], dtype=dtype)
    loss = BCEWithLogitsLoss()
    out = check_against_torch(loss, torch.nn.BCEWithLogitsLoss(), z, y)
    assert torch.isfinite(out)
    loss(z, y)
    dz = loss.backward()
    assert torch.isfinite(dz).all()
    # Confidently right: zero loss and zero gradient.
    right = BCEWithLogitsLoss()
    zero = right(z[:1], y[:1])
    assert zero.item() == 0.0
    assert torch.equal(right.backward(), torch.zeros_like(z[:1]))


@settings(max_examples=15)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple),
    dtype=st.sampled_from(DTYPES),
    data=st.data(),
)
def test_bce_with_logits_random(shape, dtype, data):
    logits = st.floats(-20, 20, allow_nan=False, allow_subnormal=False, width=32)
    targets = st.floats(0, 1, allow_subnormal=False, width=32)
    z = torch.from_numpy(data.draw(hnp.arrays(np.float32, shape, elements=logits))).to(dtype)
    y = torch.from_numpy(data.draw(hnp.arrays(np.float32, shape, elements=targets))).to(dtype)
    check_against_torch(BCEWithLogitsLoss(), torch.nn.BCEWithLogitsLoss(), z, y)


def test_bce_shape_mismatch():
    with pytest.raises(ValueError) as info:
        BCEWithLogitsLoss()(torch.zeros(5), torch.zeros(4))
    message = str(info.value)
    assert "BCEWithLogitsLoss" in message and "(5,)" in message and "(4,)" in message


# Contract ---------------------------------------------------------------------------

@pytest.mark.parametrize("loss", [CrossEntropyLoss, MSELoss, BCEWithLogitsLoss])
def test_loss_backward_before_forward(loss):
    with pytest.raises(RuntimeError, match=loss.__name__):
        loss().backward()


@pytest.mark.parametrize("loss", [CrossEntropyLoss, MSELoss, BCEWithLogitsLoss])
def test_loss_needs_targets(loss):
    with pytest.raises(ValueError, match=loss.__name__):
        loss()(torch.zeros(3, 2))


@pytest.mark.parametrize("loss", [CrossEntropyLoss, MSELoss, BCEWithLogitsLoss])
def test_loss_contract(loss):
    layer = loss()
    assert repr(layer) == loss.__name__
    assert layer.params() == [] and layer.state_dict() == {}
    x = randn((3, 2), 0)
    y = torch.tensor([0, 1, 1]) if loss is CrossEntropyLoss else uniform((3, 2), 1)
    assert torch.equal(layer(x, y), layer.forward(x, y=y))
    assert torch.equal(layer(x, y), layer(x, y=y, unused_keyword=3))


def test_cross_entropy_with_a_masked_class_as_torch():
    """A -inf logit on a class that is not the target (masking) is finite in torch."""
    x = torch.tensor([[0.0, float("-inf"), 0.0], [1.0, 2.0, float("-inf")]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    x_ref = x.clone().requires_grad_(True)
    expected = torch.nn.functional.cross_entropy(x_ref, y)
    expected.backward()
    loss = CrossEntropyLoss()
    value = loss(x, y)
    assert math.isfinite(value.item())
    torch.testing.assert_close(value, expected.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(loss.backward(), x_ref.grad, rtol=1e-12, atol=0)
