"""Losses (CrossEntropyLoss, NLLLoss, ClippedCrossEntropyLoss, MSELoss, L1Loss, BCELoss,
BCEWithLogitsLoss, MultiTaskLoss) against the torch.nn twin (or a formula computed here
under autograd), autograd through their own forward, and float64 finite differences."""

import warnings

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nnlab.layers import (
    BCELoss,
    BCEWithLogitsLoss,
    ClippedCrossEntropyLoss,
    CrossEntropyLoss,
    Heads,
    L1Loss,
    Linear,
    MSELoss,
    MultiTaskLoss,
    NLLLoss,
    Sequential,
)
from reference import FORWARD_ATOL, GRAD_RTOL, assert_close, check_against_autograd, check_against_torch, check_finite_differences

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
        CrossEntropyLoss()(torch.zeros(()), torch.tensor(0))
    assert "CrossEntropyLoss" in str(info.value) and "(N, C)" in str(info.value) and "()" in str(info.value)
    # (C,) is one unbatched sample, as in torch: its label is a 0-d tensor.
    with pytest.raises(ValueError) as info:
        CrossEntropyLoss()(torch.zeros(4), torch.tensor([0, 1, 2, 3]))
    assert "CrossEntropyLoss" in str(info.value) and "shape ()" in str(info.value) and "(4,)" in str(info.value)
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


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_with_logits_forward_is_differentiable_at_zero_logits(dtype):
    """Autograd through the forward (how compare_layer_to_torch judges the backward) must
    give sigmoid(0) - y = 0.5 - y at z = 0, where max(z, 0) and |z| have kinks."""
    z = torch.tensor([[0.0, 0.0, 2.0], [0.0, -1.0, 0.0]], dtype=dtype)
    y = torch.tensor([[1.0, 0.0, 0.5], [0.25, 1.0, 0.0]], dtype=dtype)
    check_against_autograd(BCEWithLogitsLoss(), z, y)
    check_against_torch(BCEWithLogitsLoss(), torch.nn.BCEWithLogitsLoss(), z, y)


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


# CrossEntropyLoss on probabilities: a warning -------------------------------------

def test_cross_entropy_warns_on_softmax_outputs_and_keeps_torch_values():
    """A Softmax output into CrossEntropyLoss is legal (torch takes any scores) but is
    softmax applied twice: warned, with torch's numbers unchanged."""
    probs = probabilities((5, 4), 40, torch.float64)
    y = labels(5, 4, 41)
    with pytest.warns(UserWarning, match="softmax twice"):
        check_against_torch(CrossEntropyLoss(), torch.nn.CrossEntropyLoss(), probs, y)


@pytest.mark.parametrize(
    "scores",
    [
        randn((5, 4), 42) * 3,  # ordinary scores
        uniform((5, 4), 43),  # in [0, 1] but rows do not sum to 1
        torch.full((5, 1), 1.0),  # one class: softmax is 1 whatever the input
        torch.tensor([[1.5, -0.5], [0.5, 0.5]]),  # rows sum to 1, entries outside [0, 1]
    ],
)
def test_cross_entropy_does_not_warn_on_scores(scores):
    y = torch.zeros(scores.shape[0], dtype=torch.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CrossEntropyLoss()(scores, y)


# NLLLoss ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", CE_SHAPES)
def test_nll_indices(shape, dtype):
    log_probs = torch.log_softmax(randn(shape, 50, torch.float64) * 2, dim=1).to(dtype)
    y = labels(shape[0], shape[1], 51)
    out = check_against_torch(NLLLoss(), torch.nn.NLLLoss(), log_probs, y)
    assert out.shape == () and out.dtype == dtype
    check_against_autograd(NLLLoss(), log_probs, y)
    check_finite_differences(NLLLoss(), log_probs.double(), y)


class SoftTargetNLL(torch.nn.Module):
    """-mean_n sum_c y[n, c] x[n, c], written here from the definition."""

    def forward(self, x, y):
        return -(y * x).sum(dim=1).mean()


@pytest.mark.parametrize("dtype", DTYPES)
def test_nll_probability_targets(dtype):
    log_probs = torch.log_softmax(randn((6, 3), 52, torch.float64), dim=1).to(dtype)
    y = probabilities((6, 3), 53, dtype)
    check_against_torch(NLLLoss(), SoftTargetNLL(), log_probs, y)
    check_finite_differences(NLLLoss(), log_probs.double(), y.double())


def test_nll_after_log_softmax_equals_cross_entropy():
    x = randn((7, 5), 54, torch.float64)
    y = labels(7, 5, 55)
    nll = NLLLoss()(torch.log_softmax(x, dim=1), y)
    assert abs(nll.item() - CrossEntropyLoss()(x, y).item()) <= 1e-12


# ClippedCrossEntropyLoss --------------------------------------------------------------

class ClippedCrossEntropy(torch.nn.Module):
    """-mean_n sum_c y[n, c] log(clamp(p[n, c], eps, 1 - eps)), y one-hot for labels,
    written here from the definition; autograd through torch.clamp is the judge."""

    def __init__(self, eps):
        super().__init__()
        self.eps = eps

    def forward(self, p, y):
        if not y.is_floating_point():
            y = torch.nn.functional.one_hot(y, p.shape[1]).to(p.dtype)
        return -(y * torch.log(torch.clamp(p, self.eps, 1 - self.eps))).sum(dim=1).mean()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("shape", [shape for shape in CE_SHAPES if shape[1] > 1])  # one class: p = 1, clipped
def test_clipped_cross_entropy(shape, soft, dtype):
    # softmax of unit normals: no probability so small that a 1e-6 step misjudges log p
    p = torch.softmax(randn(shape, 60, torch.float64), dim=1).to(dtype)
    y = probabilities(shape, 61, dtype) if soft else labels(shape[0], shape[1], 61)
    out = check_against_torch(ClippedCrossEntropyLoss(), ClippedCrossEntropy(1e-7), p, y)
    assert out.shape == () and out.dtype == dtype
    check_against_autograd(ClippedCrossEntropyLoss(), p, y)
    check_finite_differences(ClippedCrossEntropyLoss(), p.double(), y.double() if soft else y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_clipped_cross_entropy_at_the_clip(dtype):
    """nnlab's convention at the clip, written out here rather than read from autograd
    through torch.clamp (whose gradient at exactly a bound changed between torch
    releases): p exactly eps or 1 - eps is inside, with the gradient of log p,
    -y / (N p); p beyond a bound gets exactly 0. The value is torch's."""
    eps = 0.01
    p = torch.tensor(
        [[0.0, 1.0, 0.0], [0.001, 0.995, 0.004], [eps, 0.5, 0.49], [0.3, 0.3, 0.4], [1 - eps, 0.2, 0.3]], dtype=dtype
    )
    y = probabilities((5, 3), 62, dtype)
    loss = ClippedCrossEntropyLoss(eps)
    out = loss(p, y)
    assert abs(out.item() - ClippedCrossEntropy(eps)(p, y).item()) <= FORWARD_ATOL[dtype]
    dp = loss.backward()
    # Rows 0 and 1 lie beyond a bound in every entry; rows 2 to 4 inside, bounds included.
    assert torch.equal(dp[:2], torch.zeros_like(dp[:2]))
    assert_close("dp inside", dp[2:], -y[2:] / (5 * p[2:]), rtol=GRAD_RTOL[dtype])
    # Away from the bounds torch's clamp agrees: rows 1 and 3, judged by torch and by
    # one-sided steps of 1e-6, which stay inside [0, 1] and on one side of the clip.
    rows = [1, 3]
    check_against_torch(loss, ClippedCrossEntropy(eps), p[rows], y[rows])
    check_finite_differences(ClippedCrossEntropyLoss(eps), p[rows].double(), y[rows].double())


def test_clipped_cross_entropy_rejects_scores_and_bad_eps():
    with pytest.raises(ValueError, match=r"ClippedCrossEntropyLoss.*probabilities in \[0, 1\].*-2"):
        ClippedCrossEntropyLoss()(torch.tensor([[-2.0, 3.0]]), torch.tensor([1]))
    for eps in (0, -1e-3, 0.5, "1e-7", True):
        with pytest.raises(ValueError, match="eps"):
            ClippedCrossEntropyLoss(eps)


# L1Loss -----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ELEMENTWISE_SHAPES)
def test_l1(shape, dtype):
    x = randn(shape, 70, dtype)
    y = randn(shape, 71, dtype)
    out = check_against_torch(L1Loss(), torch.nn.L1Loss(), x, y)
    assert out.shape == ()
    check_against_autograd(L1Loss(), x, y)
    check_finite_differences(L1Loss(), x.double(), y.double())


@pytest.mark.parametrize("dtype", DTYPES)
def test_l1_at_the_kink(dtype):
    """x == y: torch's subgradient sign(0) = 0, which is also what central differences give."""
    x = torch.tensor([[0.0, 1.5, -2.0], [3.0, 0.25, 0.0]], dtype=dtype)
    y = torch.tensor([[0.0, 1.5, -1.0], [3.0, -0.25, 1.0]], dtype=dtype)
    loss = L1Loss()
    check_against_torch(loss, torch.nn.L1Loss(), x, y)
    loss(x, y)
    dx = loss.backward()
    kink = x == y
    assert torch.equal(dx[kink], torch.zeros_like(dx[kink]))
    check_finite_differences(L1Loss(), x.double(), y.double())


# BCELoss ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ELEMENTWISE_SHAPES)
def test_bce(shape, dtype):
    p = 0.02 + 0.96 * uniform(shape, 80, dtype)
    y = uniform(shape, 81, dtype)
    out = check_against_torch(BCELoss(), torch.nn.BCELoss(), p, y)
    assert out.shape == ()
    check_against_autograd(BCELoss(), p, y)
    check_finite_differences(BCELoss(), p.double(), y.double())


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_at_the_log_floor(dtype):
    """p at 0 and 1 (log floored at -100, as torch), p tiny enough for torch's 1e-12
    floor in the gradient's denominator, hard and soft targets: torch's numbers."""
    tiny = 1e-44 if dtype == torch.float32 else 1e-50  # log(tiny) < -100
    p = torch.tensor([[0.0, 1.0, 0.0, 1.0], [tiny, 1e-13, 0.5, 1 - 1e-7], [0.0, 1.0, 0.3, 0.7]], dtype=dtype)
    y = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 0.3, 0.0], [0.4, 0.6, 1.0, 0.0]], dtype=dtype)
    loss = BCELoss()
    out = check_against_torch(loss, torch.nn.BCELoss(), p, y)
    assert torch.isfinite(out)
    loss(p, y)
    assert torch.isfinite(loss.backward()).all()
    # Confidently right: zero loss, zero gradient.
    right = BCELoss()
    assert right(p[:1, 2:], y[:1, 2:]).item() == 0.0
    assert torch.equal(right.backward(), torch.zeros(1, 2, dtype=dtype))


def test_bce_rejects_values_outside_0_1():
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"BCELoss.*probabilities in \[0, 1\]"):
            BCELoss()(torch.tensor([0.5, bad]), torch.tensor([1.0, 0.0]))


# Shapes torch would broadcast ---------------------------------------------------------

@pytest.mark.parametrize("loss", [MSELoss, L1Loss, BCELoss, BCEWithLogitsLoss])
def test_n_by_1_predictions_against_n_targets_is_an_error_saying_how_to_reshape(loss):
    x = torch.full((4, 1), 0.5)
    with pytest.raises(ValueError) as info:
        loss()(x, torch.zeros(4))
    message = str(info.value)
    assert loss.__name__ in message and "(4, 1)" in message and "(4,)" in message
    assert "y.unsqueeze(-1)" in message
    with pytest.raises(ValueError, match=r"y.squeeze\(-1\)"):
        loss()(torch.full((4,), 0.5), torch.zeros(4, 1))


def test_class_labels_of_shape_n_by_1_say_how_to_reshape():
    with pytest.raises(ValueError, match=r"\(4, 1\).*y.view\(-1\)"):
        NLLLoss()(torch.zeros(4, 3), torch.zeros(4, 1, dtype=torch.int64))


# MultiTaskLoss ------------------------------------------------------------------------

class TorchTwoTasks(torch.nn.Module):
    """Two heads and (w0 CE + w1 MSE) / (w0 + w1), built from torch.nn."""

    def __init__(self, weights):
        super().__init__()
        self.head_a = torch.nn.Linear(4, 3)
        self.head_b = torch.nn.Linear(4, 1)
        self.weights = weights

    def forward(self, x, y):
        labels, values = y
        ce = torch.nn.functional.cross_entropy(self.head_a(x), labels)
        mse = torch.nn.functional.mse_loss(self.head_b(x), values)
        return (self.weights[0] * ce + self.weights[1] * mse) / sum(self.weights)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weights", [None, (2.0, 0.5)])
def test_multi_task_loss_through_heads(dtype, weights):
    torch.manual_seed(0)
    loss = MultiTaskLoss(CrossEntropyLoss(), MSELoss(), weights=weights)
    model = Sequential(Heads(Linear(4, 3), Linear(4, 1)), loss).to(dtype=dtype)
    twin = TorchTwoTasks(weights or (1.0, 1.0)).to(dtype)
    copy_into = [twin.head_a.weight, twin.head_a.bias, twin.head_b.weight, twin.head_b.bias]
    with torch.no_grad():
        for target, (param, _) in zip(copy_into, model.params()):
            target.copy_(param)
    x = randn((5, 4), 90, dtype)
    y = (labels(5, 3, 91), randn((5, 1), 92, dtype))
    check_against_torch(model, twin, x, y)
    check_finite_differences(model.to(dtype=torch.float64), x.double(), (y[0], y[1].double()))
    assert [value.item() for value in loss.task_losses] == pytest.approx(
        [torch.nn.functional.cross_entropy(twin.head_a(x), y[0]).item(), torch.nn.functional.mse_loss(twin.head_b(x), y[1]).item()]
    )


def test_multi_task_loss_backward_is_the_tuple_heads_takes():
    a, b = randn((3, 4), 93), randn((3, 2), 94)
    y = torch.stack([labels(3, 4, 95), labels(3, 2, 96)], dim=1)  # (N, T): column t is task t
    loss = MultiTaskLoss(CrossEntropyLoss(), CrossEntropyLoss(), weights=(3, 1))
    total = loss((a, b), y)
    da, db = loss.backward(2.0)
    ce_a, ce_b = CrossEntropyLoss(), CrossEntropyLoss()
    expected = (3 * ce_a(a, y[:, 0]) + ce_b(b, y[:, 1])) / 4
    assert abs(total.item() - expected.item()) <= 1e-6
    assert torch.allclose(da, ce_a.backward(2.0 * 3 / 4), rtol=1e-6, atol=0)
    assert torch.allclose(db, ce_b.backward(2.0 / 4), rtol=1e-6, atol=0)
    assert loss((a, b), (y[:, 0], y[:, 1])).item() == total.item()  # a tuple of targets too


def test_multi_task_loss_with_one_loss_instance_for_both_tasks():
    """One CrossEntropyLoss serving both tasks: each task's backward uses its own call."""
    a, b = randn((3, 4), 97), randn((3, 2), 98)
    y = torch.stack([labels(3, 4, 99), labels(3, 2, 100)], dim=1)
    shared = CrossEntropyLoss()
    separate = MultiTaskLoss(CrossEntropyLoss(), CrossEntropyLoss())
    expected = separate((a, b), y), separate.backward()
    loss = MultiTaskLoss(shared, shared)
    assert loss((a, b), y).item() == expected[0].item()
    for got, want in zip(loss.backward(), expected[1]):
        assert torch.equal(got, want)


def test_nll_with_a_masked_class_as_torch():
    """A -inf log-probability of a class that is not the target stays out of the sum."""
    x = torch.tensor([[-0.5, float("-inf"), -1.0], [-2.0, -0.1, float("-inf")]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    check_against_torch(NLLLoss(), torch.nn.NLLLoss(), x, y)


@pytest.mark.parametrize("loss", [L1Loss, BCELoss, NLLLoss, ClippedCrossEntropyLoss, MultiTaskLoss])
def test_new_losses_reject_a_dout_that_is_not_a_scalar(loss):
    x = uniform((3, 2), 101)
    y = torch.tensor([0, 1, 1]) if loss in (NLLLoss, ClippedCrossEntropyLoss) else uniform((3, 2), 102)
    if loss is MultiTaskLoss:
        layer, x, y = MultiTaskLoss(MSELoss()), (x,), (y,)
    else:
        layer = loss()
    layer(x, y)
    with pytest.raises(ValueError, match=loss.__name__):
        layer.backward(torch.ones(3))


def test_bce_catches_its_input_changed_in_place():
    """BCELoss keeps p itself (the others keep tensors they made)."""
    p = uniform((3, 2), 103)
    loss = BCELoss()
    loss(p, uniform((3, 2), 104))
    p.mul_(0.5)
    with pytest.raises(RuntimeError, match="BCELoss.*in place"):
        loss.backward()


def test_multi_task_loss_errors_name_the_task():
    loss = MultiTaskLoss(CrossEntropyLoss(), MSELoss())
    outputs = (torch.zeros(4, 3), torch.zeros(4, 1))
    with pytest.raises(ValueError, match="tuple of 2 outputs"):
        loss(torch.zeros(4, 3), (torch.zeros(4), torch.zeros(4, 1)))
    with pytest.raises(ValueError, match="expected 2 targets"):
        loss(outputs, (torch.zeros(4, dtype=torch.int64),))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        loss(outputs, torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"task 1 \(MSELoss\).*unsqueeze"):
        loss(outputs, (torch.zeros(4, dtype=torch.int64), torch.zeros(4)))
    for weights in [(1.0,), (-1.0, 1.0), (0, 0), ("a", 1)]:
        with pytest.raises(ValueError, match="weights"):
            MultiTaskLoss(CrossEntropyLoss(), MSELoss(), weights=weights)
    with pytest.raises(ValueError, match="at least one"):
        MultiTaskLoss()
    assert repr(MultiTaskLoss(L1Loss(), MSELoss(), weights=(1, 2))) == "MultiTaskLoss(L1Loss, MSELoss, weights=(1.0, 2.0))"


# Contract ---------------------------------------------------------------------------

SINGLE_LOSSES = [CrossEntropyLoss, NLLLoss, ClippedCrossEntropyLoss, MSELoss, L1Loss, BCELoss, BCEWithLogitsLoss]
CLASS_LOSSES = (CrossEntropyLoss, NLLLoss, ClippedCrossEntropyLoss)


@pytest.mark.parametrize("loss", SINGLE_LOSSES + [MultiTaskLoss])
def test_loss_backward_before_forward(loss):
    layer = loss(MSELoss()) if loss is MultiTaskLoss else loss()
    with pytest.raises(RuntimeError, match=loss.__name__):
        layer.backward()


@pytest.mark.parametrize("loss", SINGLE_LOSSES)
def test_loss_needs_targets(loss):
    with pytest.raises(ValueError, match=loss.__name__):
        loss()(torch.zeros(3, 2))


@pytest.mark.parametrize("loss", SINGLE_LOSSES)
def test_loss_contract(loss):
    layer = loss()
    assert repr(layer) == ("ClippedCrossEntropyLoss(eps=1e-07)" if loss is ClippedCrossEntropyLoss else loss.__name__)
    assert layer.params() == [] and layer.state_dict() == {}
    x = uniform((3, 2), 0)  # probabilities too, for the losses that need them
    y = torch.tensor([0, 1, 1]) if loss in CLASS_LOSSES else uniform((3, 2), 1)
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


@pytest.mark.parametrize(
    "make, twin", [(MSELoss, torch.nn.functional.mse_loss), (L1Loss, torch.nn.functional.l1_loss)]
)
@pytest.mark.parametrize("x_dtype, y_dtype", [(torch.float32, torch.float64), (torch.float64, torch.float32)])
def test_targets_of_another_float_dtype_give_torchs_promoted_loss_and_the_predictions_dtype_gradient(
    make, twin, x_dtype, y_dtype
):
    """torch promotes the loss to the wider dtype and gives the predictions a gradient of
    their own dtype; so must the loss, or the layer before it gets a dout of another dtype."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, generator=generator, dtype=torch.float64).to(x_dtype)
    y = torch.randn(4, 3, generator=generator, dtype=torch.float64).to(y_dtype)
    model = Sequential(Linear(3, 3).to(dtype=x_dtype), make())
    module = torch.nn.Linear(3, 3).to(x_dtype)
    with torch.no_grad():
        module.weight.copy_(model[0].weight)
        module.bias.copy_(model[0].bias)
    x_ref = x.clone().requires_grad_(True)
    expected = twin(module(x_ref), y)
    expected.backward()
    loss = model(x, y=y)
    dx = model.backward(1.0)
    assert loss.dtype == expected.dtype == torch.float64
    assert dx.dtype == x_ref.grad.dtype == x_dtype
    torch.testing.assert_close(loss, expected.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(dx, x_ref.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(model[0].grad("weight"), module.weight.grad, rtol=1e-5, atol=1e-7)
