"""Every loss with every option torch has, against its torch.nn namesake under autograd:
``reduction``, class ``weight``, ``pos_weight``, ``ignore_index``, ``label_smoothing``,
spatial and unbatched inputs, probability targets, and the losses of the third wave
(Huber, SmoothL1, KLDiv, PoissonNLL, GaussianNLL, SoftMargin, MarginRanking,
HingeEmbedding, CosineEmbedding, MultiMargin, MultiLabelSoftMargin).

Values come from the parity suite's strategies: batches of 0 and 1, small integers
(which put differences exactly at Huber's delta, SmoothL1's beta and the hinges'
margins), constants, and NaN, +inf, -inf in inputs and upstream gradients. Where torch
refuses an input, nnlab must refuse it with an error naming the loss. Float64 finite
differences judge the new losses a second time, away from their kinks.
"""

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import (
    FORWARD_ATOL,
    GRAD_RTOL,
    assert_close,
    check_against_torch,
    check_finite_differences,
    gradient_floor,
)
from test_layers_parity import huge_upstreams, upstreams, values, with_specials

from nnlab import layers
from nnlab.layers import (
    BCELoss,
    BCEWithLogitsLoss,
    ClippedCrossEntropyLoss,
    CosineEmbeddingLoss,
    CrossEntropyLoss,
    GaussianNLLLoss,
    HingeEmbeddingLoss,
    HuberLoss,
    KLDivLoss,
    L1Loss,
    MarginRankingLoss,
    MSELoss,
    MultiLabelSoftMarginLoss,
    MultiMarginLoss,
    MultiTaskLoss,
    NLLLoss,
    PoissonNLLLoss,
    SmoothL1Loss,
    SoftMarginLoss,
)
from nnlab.grad_compare import torch_twin

DTYPES = [torch.float32, torch.float64]
REDUCTIONS = st.sampled_from(["mean", "sum", "none"])
TORCH_REFUSALS = (RuntimeError, ValueError, IndexError)


# Helpers ---------------------------------------------------------------------------------


@st.composite
def strided(draw, x):
    """x itself, a non-contiguous view holding the same values, or (4-d) channels_last."""
    layout = draw(st.sampled_from(["contiguous", "strided", "channels_last"]))
    if x.dim() == 0 or layout == "contiguous":
        return x
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
    return torch.stack([x, torch.zeros_like(x)], dim=-1)[..., 0]


def refused_by_torch(module, *args):
    """True when the torch module raises on ``args`` (warnings silenced)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module(*args)
    except TORCH_REFUSALS:
        return True
    return False


class Int64Labels(torch.nn.Module):
    """A torch loss given its integer targets as int64 and its input contiguous. nnlab
    reads class labels of every integer dtype exactly; torch takes uint8 in some paths
    only (not for spatial targets, nor with class weights and label smoothing). And
    torch 2.13's NLLLoss backward on a channels_last input raises "grad_input must be
    contiguous"; the same values in the default layout give the reference."""

    def __init__(self, loss):
        super().__init__()
        self.loss = loss

    def forward(self, x, y):
        return self.loss(x.contiguous(), y if y.is_floating_point() else y.long())


def clamp_passes_dout_at_its_bound():
    """True on torch before 2.14, whose clamp_min has the gradient 1 at its bound; from 2.14
    on it is the minimum-norm subgradient 0, the convention nnlab's hinges follow."""
    x = torch.zeros((), requires_grad=True)
    x.clamp_min(0).backward()
    return x.grad.item() == 1.0


OLD_CLAMP = clamp_passes_dout_at_its_bound()


def hinge(h):
    """``h.clamp_min(0)`` with torch 2.14's gradient, ``where(h > 0, dout, 0)``."""
    return torch.where(h > 0, h, h.detach().clamp_min(0))


class MinimumNormHinges(torch.nn.Module):
    """aten's formulas of HingeEmbeddingLoss, MarginRankingLoss and CosineEmbeddingLoss,
    with ``hinge`` for their ``clamp_min``: the reference on a torch before 2.14. torch's
    own module runs first for its checks, so that what it refuses is still refused."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args):
        self.module(*args)
        margin, reduction = self.module.margin, self.module.reduction
        if isinstance(self.module, torch.nn.HingeEmbeddingLoss):
            x, y = args
            losses = torch.where(y != 1, hinge(margin - x), 0) + torch.where(y != -1, x, 0)
        elif isinstance(self.module, torch.nn.MarginRankingLoss):
            x1, x2, y = args
            losses = hinge(-y * (x1 - x2) + margin)
        else:
            x1, x2, y = args
            epsilon = torch.tensor(1e-12, dtype=torch.float32).item()  # aten's EPSILON, a float
            squares = [(x * x).sum(-1) + epsilon for x in (x1, x2)]
            cos = (x1 * x2).sum(-1) / (squares[0] * squares[1]).sqrt()
            losses = torch.where(y == 1, 1 - cos, 0) + torch.where(y == -1, hinge(cos - margin), 0)
        return {"mean": losses.mean, "sum": losses.sum, "none": lambda: losses}[reduction]()


def torch_reference(layer):
    """The torch module nnlab's ``layer`` is judged against: its twin, or on a torch before
    2.14 the hinges' formulas with the minimum-norm subgradient."""
    module = torch_twin(layer)
    hinges = (torch.nn.HingeEmbeddingLoss, torch.nn.MarginRankingLoss, torch.nn.CosineEmbeddingLoss)
    return MinimumNormHinges(module) if OLD_CLAMP and isinstance(module, hinges) else module


def compare(layer, dtype, x, y, dout):
    """The loss against its twin on (x, y) with the upstream gradient ``dout``; when
    torch refuses the input, nnlab must refuse it too, naming the loss."""
    layer.to(dtype=dtype)
    module = Int64Labels(torch_reference(layer))
    if refused_by_torch(module, x, y):
        with pytest.raises((ValueError, TypeError), match=type(layer).__name__):
            layer(x, y)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # KLDivLoss's reduction='mean' warns in both
        check_against_torch(layer, module, x, y, dout=dout)


def compare_several(layer, dtype, inputs, target, dout):
    """A loss of several differentiable inputs (and data targets, or None) against its
    twin: the output and the gradient of every input, from backward's tuple."""
    layer.to(dtype=dtype)
    module = torch_reference(layer)
    extra = () if target is None else (target,)
    if refused_by_torch(module, *inputs, *extra):
        with pytest.raises((ValueError, TypeError), match=type(layer).__name__):
            layer(*inputs, *extra)
        return
    out = layer(*[x.clone() for x in inputs], *extra)
    upstream = dout(out)
    grads = layer.backward(upstream)
    leaves = [x.clone().requires_grad_(True) for x in inputs]
    expected = module(*leaves, *extra)
    expected_grads = torch.autograd.grad(expected, leaves, upstream)
    assert_close("output", out, expected.detach(), atol=FORWARD_ATOL[dtype])
    assert isinstance(grads, tuple) and len(grads) == len(inputs)
    floor = gradient_floor(expected_grads)
    for index, (grad, reference) in enumerate(zip(grads, expected_grads)):
        assert_close(f"input#{index + 1} gradient", grad, reference, rtol=GRAD_RTOL[dtype], floor=floor)


def class_weight(draw, num_classes, dtype):
    """None, positive class weights, or weights with a 0 (a class left out)."""
    kind = draw(st.sampled_from([None, "positive", "with_zero"]))
    if kind is None:
        return None
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    weight = torch.rand(num_classes, generator=generator, dtype=torch.float64) + 0.25
    if kind == "with_zero":
        weight[0] = 0.0
    return weight.to(dtype)


# Classification: CrossEntropyLoss, NLLLoss ----------------------------------------------------


@st.composite
def classification_case(draw, dtype, allow_probabilities):
    """Scores (N, C, d...), (C,) or (N, C), targets of every form, and the options."""
    batch = draw(st.sampled_from([None, 0, 1, 3]))
    classes = draw(st.integers(1, 4))
    spatial = draw(st.sampled_from([(), (), (2,), (2, 1), (1, 2)])) if batch is not None else ()
    shape = ((classes,) if batch is None else (batch, classes)) + spatial
    x = draw(strided(draw(values(shape, dtype))))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    label_shape = () if batch is None else (batch,) + spatial
    labels = torch.randint(0, classes, label_shape, generator=generator)
    form = draw(st.sampled_from(["int64", "uint8", "probabilities"] if allow_probabilities else ["int64", "uint8"]))
    if form == "probabilities":
        y = torch.softmax(torch.randn(shape, generator=generator, dtype=torch.float64), dim=0 if batch is None else 1)
        y = draw(with_specials(y.to(dtype))) if draw(st.booleans()) else y.to(dtype)
    else:
        y = labels.to(getattr(torch, form))
    options = {
        "weight": class_weight(draw, classes, dtype),
        "ignore_index": draw(st.sampled_from([-100, 0, 1])),
        "reduction": draw(REDUCTIONS),
    }
    return x, y, options


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=80)
@given(smoothing=st.sampled_from([0.0, 0.0, 0.25, 1.0]), dout=upstreams, data=st.data())
def test_cross_entropy_options(dtype, smoothing, dout, data):
    x, y, options = data.draw(classification_case(dtype, allow_probabilities=True))
    compare(CrossEntropyLoss(label_smoothing=smoothing, **options), dtype, x, y, dout)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=50)
@given(dout=upstreams, data=st.data())
def test_nll_options(dtype, dout, data):
    x, y, options = data.draw(classification_case(dtype, allow_probabilities=False))
    compare(NLLLoss(**options), dtype, x, y, dout)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_every_label_ignored_is_nan_for_the_mean_as_torch(dtype, smoothing, reduction):
    x = torch.randn(3, 4, dtype=dtype)
    y = torch.tensor([2, 2, 2])
    loss = CrossEntropyLoss(torch.rand(4, dtype=dtype), ignore_index=2, reduction=reduction, label_smoothing=smoothing)
    out = check_against_torch(loss, torch_twin(loss), x, y, dout=torch.tensor(1.0, dtype=dtype))
    assert math.isnan(out.item()) if reduction == "mean" else out.item() == 0.0
    loss(x, y)
    assert torch.equal(loss.backward(), torch.zeros_like(x))


@pytest.mark.parametrize("kind", [CrossEntropyLoss, NLLLoss])
def test_classification_errors_name_the_loss(kind):
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=rf"{kind.__name__}.*\(2, 4\)"):
        kind()(x, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=rf"{kind.__name__}.*in \[0, 3\).*7"):
        kind()(x, torch.full((2, 4), 7))
    kind(ignore_index=7)(x, torch.full((2, 4), 7))  # ignored labels may be anything, as in torch
    with pytest.raises(ValueError, match=rf"{kind.__name__}.*weight of shape \(3,\)"):
        kind(torch.ones(4))(x, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=rf"{kind.__name__}.*dtype"):
        kind(torch.ones(3, dtype=torch.float64))(x, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=rf"{kind.__name__}.*reduction"):
        kind(reduction="avg")
    with pytest.raises(TypeError, match=rf"{kind.__name__}.*weight"):
        kind(weight=[1.0, 2.0])


def test_cross_entropy_option_errors():
    with pytest.raises(ValueError, match="CrossEntropyLoss: label_smoothing"):
        CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match="CrossEntropyLoss.*: ignore_index is not supported with probability"):
        CrossEntropyLoss(ignore_index=0)(torch.randn(2, 3), torch.rand(2, 3))
    with pytest.raises(ValueError, match="CrossEntropyLoss.*float tensor"):
        CrossEntropyLoss()(torch.randn(2, 3), torch.ones(2, 3, dtype=torch.long))


# Elementwise losses of one input -----------------------------------------------------------


def elementwise_losses(draw, dtype):
    """A loss of (x, y) of one shape with drawn options, and how to make its targets."""
    reduction = draw(REDUCTIONS)
    kind = draw(
        st.sampled_from(
            ["mse", "l1", "huber", "smooth_l1", "kl", "poisson", "soft_margin", "hinge", "bce_logits", "multilabel"]
        )
    )
    if kind == "mse":
        return MSELoss(reduction=reduction)
    if kind == "l1":
        return L1Loss(reduction=reduction)
    if kind == "huber":
        return HuberLoss(reduction, delta=draw(st.sampled_from([0.5, 1.0, 2.0])))
    if kind == "smooth_l1":
        return SmoothL1Loss(reduction=reduction, beta=draw(st.sampled_from([0.0, 0.5, 1.0])))
    if kind == "kl":
        reduction = draw(st.sampled_from(["mean", "sum", "none", "batchmean"]))
        return KLDivLoss(reduction=reduction, log_target=draw(st.booleans()))
    if kind == "poisson":
        eps = draw(st.sampled_from([1e-8, 0.5]))
        return PoissonNLLLoss(draw(st.booleans()), draw(st.booleans()), eps=eps, reduction=reduction)
    if kind == "soft_margin":
        return SoftMarginLoss(reduction=reduction)
    if kind == "hinge":
        return HingeEmbeddingLoss(draw(st.sampled_from([0.0, 1.0, 2.0])), reduction=reduction)
    return kind, reduction


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=120)
@given(shape=st.lists(st.integers(0, 3), min_size=0, max_size=3), dout=upstreams, data=st.data())
def test_elementwise_losses_options(dtype, shape, dout, data):
    shape = tuple(shape)
    loss = elementwise_losses(data.draw, dtype)
    x = data.draw(strided(data.draw(values(shape, dtype))))
    y = data.draw(values(shape, dtype))
    if isinstance(loss, tuple):  # losses with weight tensors, and labels in [0, 1] (NaN, inf kept)
        kind, reduction = loss
        y = torch.where(y.isfinite(), y.abs() / 3, y)
        weight = data.draw(st.sampled_from([None, shape[-1:], shape[1:]])) if shape else None
        generator = torch.Generator().manual_seed(0)
        make = lambda size: None if size is None else torch.rand(size, generator=generator, dtype=dtype) + 0.5
        if kind == "multilabel":
            if not shape or shape[-1] == 0:
                return
            loss = MultiLabelSoftMarginLoss(make(weight), reduction=reduction)
        else:
            pos_weight = data.draw(st.sampled_from([None, shape[-1:]])) if shape else None
            loss = BCEWithLogitsLoss(make(weight), reduction=reduction, pos_weight=make(pos_weight))
    if isinstance(loss, SoftMarginLoss | HingeEmbeddingLoss) and data.draw(st.booleans()):
        y = torch.where(torch.rand(shape, generator=torch.Generator().manual_seed(1)) < 0.5, 1.0, -1.0).to(dtype)
    compare(loss, dtype, x, y, dout)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=30)
@given(
    shape=st.lists(st.integers(0, 3), min_size=1, max_size=3),
    reduction=REDUCTIONS,
    weighted=st.booleans(),
    dout=upstreams,
    data=st.data(),
)
def test_bce_options(dtype, shape, reduction, weighted, dout, data):
    p = torch.clamp(data.draw(values(tuple(shape), dtype)).abs() / 2, max=1)
    y = data.draw(values(tuple(shape), dtype)).abs() / 3
    weight = torch.rand(shape[-1:], generator=torch.Generator().manual_seed(2), dtype=dtype) if weighted else None
    compare(BCELoss(weight, reduction=reduction), dtype, p, y, dout)


def test_huber_and_smooth_l1_at_the_kink():
    """|x - y| exactly at delta (beta): the two pieces' common slope +-delta (+-1), as torch."""
    x = torch.tensor([1.0, -1.0, 0.5, -0.5, 0.0, 2.0], dtype=torch.float64)
    y = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    for loss in (HuberLoss(delta=1.0), HuberLoss(delta=0.5), SmoothL1Loss(beta=0.5), SmoothL1Loss(beta=0.0)):
        check_against_torch(loss, torch_twin(loss), x, y, dout=torch.tensor(1.0, dtype=torch.float64))


def test_hinge_losses_at_the_margin():
    """Exactly at the margin the hinges take the minimum-norm subgradient 0, as torch's
    clamp from 2.14 on (and ReLU always): HingeEmbeddingLoss gives 0 there, MarginRankingLoss
    0 and 0, and a NaN upstream gradient stays out; MultiMarginLoss's z = 0 gives 0 (its
    kernel tests z > 0)."""
    x = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    y = torch.tensor([-1.0, -1.0, -1.0], dtype=torch.float64)
    hinge_loss = HingeEmbeddingLoss(1.0, reduction="none")
    hinge_loss(x, y)
    assert hinge_loss.backward(torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)).tolist() == [0.0, -1.0, 0.0]
    assert hinge_loss.backward(torch.tensor([math.nan, 1.0, 1.0], dtype=torch.float64)).tolist() == [0.0, -1.0, 0.0]
    check_against_torch(hinge_loss, torch_reference(hinge_loss), x, y, dout=torch.ones(3, dtype=torch.float64))
    ranking = MarginRankingLoss(0.5, reduction="sum")
    inputs = (torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.0]))
    compare_several(ranking, torch.float64, inputs, torch.tensor([-1.0, 1.0]), lambda out: torch.ones_like(out))
    ranking(torch.tensor([1.0, 0.0]), torch.tensor([0.5, 1.0]), torch.tensor([1.0, -1.0]))
    assert [grad.tolist() for grad in ranking.backward()] == [[0.0, 0.0], [0.0, 0.0]]
    ranking(torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([1.0]))
    assert ranking.backward() == (torch.tensor([-1.0]), torch.tensor([1.0]))
    cosine = CosineEmbeddingLoss(0.0, reduction="sum")
    cosine(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([-1.0]))
    assert [grad.tolist() for grad in cosine.backward()] == [[[0.0, 0.0]], [[0.0, 0.0]]]
    multi = MultiMarginLoss(reduction="sum")
    x = torch.tensor([[1.0, 0.0, 0.5]], dtype=torch.float64)
    multi(x, torch.tensor([0]))
    assert multi.backward().tolist() == [[-1 / 3, 0.0, 1 / 3]]
    check_against_torch(multi, torch_twin(multi), x, torch.tensor([0]), dout=torch.tensor(1.0, dtype=torch.float64))


def test_soft_margin_overflows_as_torch():
    """torch computes log1p(exp(-y x)): inf loss and a NaN gradient beyond float32's exp range."""
    x = torch.tensor([100.0, -100.0, 3.0])
    y = torch.tensor([-1.0, 1.0, 1.0])
    loss = SoftMarginLoss(reduction="none")
    out = check_against_torch(loss, torch_twin(loss), x, y, dout=torch.ones(3))
    assert torch.isinf(out[:2]).all()


# Several inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=40)
@given(
    shape=st.sampled_from([(), (0,), (1,), (4,), (2, 3)]),
    margin=st.sampled_from([0.0, 0.5, 1.0]),
    reduction=REDUCTIONS,
    signs=st.booleans(),
    dout=huge_upstreams,
    data=st.data(),
)
def test_margin_ranking(dtype, shape, margin, reduction, signs, dout, data):
    x1 = data.draw(strided(data.draw(values(shape, dtype, huge=True))))
    x2 = data.draw(values(shape, dtype, huge=True))
    y = data.draw(values(shape, dtype, huge=True))
    if signs:
        y = torch.where(y > 0, 1.0, -1.0).to(dtype)
    compare_several(MarginRankingLoss(margin, reduction=reduction), dtype, (x1, x2), y, dout)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=40)
@given(
    batch=st.sampled_from([None, 0, 1, 3]),
    features=st.integers(1, 4),
    margin=st.sampled_from([-0.5, 0.0, 0.5]),
    reduction=REDUCTIONS,
    dout=huge_upstreams,
    data=st.data(),
)
def test_cosine_embedding(dtype, batch, features, margin, reduction, dout, data):
    shape = (features,) if batch is None else (batch, features)
    x1 = data.draw(strided(data.draw(values(shape, dtype, huge=True))))
    x2 = data.draw(values(shape, dtype, huge=True))
    count = 1 if batch is None else batch
    labels = data.draw(st.lists(st.sampled_from([1, -1, 1, -1, 0]), min_size=count, max_size=count))
    y = torch.tensor(labels, dtype=dtype).reshape(shape[:-1])
    compare_several(CosineEmbeddingLoss(margin, reduction=reduction), dtype, (x1, x2), y, dout)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=40)
@given(
    shape=st.sampled_from([(0, 2), (1,), (3,), (2, 3), (2, 1, 3)]),
    var_form=st.sampled_from(["same", "one_per_row", "size_1", "number"]),
    full=st.booleans(),
    eps=st.sampled_from([1e-6, 0.5]),
    reduction=REDUCTIONS,
    dout=huge_upstreams,
    data=st.data(),
)
def test_gaussian_nll(dtype, shape, var_form, full, eps, reduction, dout, data):
    mean = data.draw(strided(data.draw(values(shape, dtype, huge=True))))
    target = data.draw(values(shape, dtype, huge=True))
    var_shape = {"same": shape, "one_per_row": shape[:-1], "size_1": shape[:-1] + (1,), "number": shape}[var_form]
    var = data.draw(values(var_shape, dtype, huge=True))
    if data.draw(st.booleans()):
        var = var.abs()  # mostly valid variances, 0 included (clamped to eps)
    layer = GaussianNLLLoss(full=full, eps=eps, reduction=reduction)
    if var_form == "number":
        number = data.draw(st.sampled_from([0.0, 0.25, 2.0]))
        twin = torch_twin(layer.to(dtype=dtype))
        out = layer(mean, target, number)
        upstream = dout(out)
        dmean, dtarget = layer.backward(upstream)
        leaves = [mean.clone().requires_grad_(True), target.clone().requires_grad_(True)]
        expected = twin(*leaves, number)
        grads = torch.autograd.grad(expected, leaves, upstream)
        assert_close("output", out, expected.detach(), atol=FORWARD_ATOL[dtype])
        floor = gradient_floor(grads)
        assert_close("input gradient", dmean, grads[0], rtol=GRAD_RTOL[dtype], floor=floor)
        assert_close("target gradient", dtarget, grads[1], rtol=GRAD_RTOL[dtype], floor=floor)
        return
    compare_several(layer, dtype, (mean, target, var), None, dout)


# Multi-class margins ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=50)
@given(
    batch=st.sampled_from([None, 1, 3]),
    classes=st.integers(1, 4),
    p=st.sampled_from([1, 2]),
    margin=st.sampled_from([0.0, 1.0, 2.0]),
    reduction=REDUCTIONS,
    dout=huge_upstreams,
    data=st.data(),
)
def test_multi_margin(dtype, batch, classes, p, margin, reduction, dout, data):
    shape = (classes,) if batch is None else (batch, classes)
    x = data.draw(strided(data.draw(values(shape, dtype, huge=True))))
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    y = torch.randint(0, classes, () if batch is None else (batch,), generator=generator)
    loss = MultiMarginLoss(p, margin, class_weight(data.draw, classes, dtype), reduction=reduction)
    compare(loss, dtype, x, y, dout)


def test_multi_margin_on_an_empty_batch():
    """torch 2.13's mean and sum over no samples are uninitialised values; nnlab's are
    NaN (the mean of nothing) and 0; 'none' agrees with torch."""
    x = torch.zeros(0, 3)
    y = torch.zeros(0, dtype=torch.long)
    assert math.isnan(MultiMarginLoss()(x, y).item())
    assert MultiMarginLoss(reduction="sum")(x, y).item() == 0.0
    loss = MultiMarginLoss(reduction="none")
    check_against_torch(loss, torch_twin(loss), x, y, dout=lambda out: torch.ones_like(out))


def test_margin_loss_errors_name_the_loss():
    with pytest.raises(ValueError, match="MultiMarginLoss: p must be 1 or 2"):
        MultiMarginLoss(p=3)
    with pytest.raises(ValueError, match=r"MultiMarginLoss.*in \[0, 3\).*3"):
        MultiMarginLoss()(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="MultiMarginLoss.*integer class labels"):
        MultiMarginLoss()(torch.zeros(2, 3), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"CosineEmbeddingLoss.*\(N, D\)"):
        CosineEmbeddingLoss()(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.ones(2))
    with pytest.raises(ValueError, match=r"CosineEmbeddingLoss.*targets y of shape \(2,\)"):
        CosineEmbeddingLoss()(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3))
    with pytest.raises(ValueError, match=r"MarginRankingLoss.*\(3,\)"):
        MarginRankingLoss()(torch.zeros(3), torch.zeros(2), torch.ones(3))
    with pytest.raises(ValueError, match="MarginRankingLoss.*needs both inputs"):
        MarginRankingLoss()(torch.zeros(3), y=torch.ones(3))
    with pytest.raises(ValueError, match="GaussianNLLLoss.*negative"):
        GaussianNLLLoss()(torch.zeros(3), torch.zeros(3), -torch.ones(3))
    with pytest.raises(ValueError, match=r"GaussianNLLLoss.*var of the input's shape"):
        GaussianNLLLoss()(torch.zeros(3, 2), torch.zeros(3, 2), torch.ones(2, 2))
    with pytest.raises(ValueError, match="HuberLoss: delta"):
        HuberLoss(delta=0.0)
    with pytest.raises(ValueError, match="SmoothL1Loss: beta"):
        SmoothL1Loss(beta=-1.0)
    with pytest.raises(ValueError, match="KLDivLoss.*floating-point targets"):
        KLDivLoss(reduction="sum")(torch.zeros(3), torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"BCEWithLogitsLoss.*pos_weight broadcastable.*\(2, 3, 4\)"):
        BCEWithLogitsLoss(pos_weight=torch.ones(2, 3, 4))(torch.zeros(3, 4), torch.zeros(3, 4))


# Finite differences in float64 ---------------------------------------------------------------

FINITE_DIFFERENCE_CASES = {
    # name: (loss, input, targets), smooth where the loss is (no kink within 1e-6)
    "huber_none": (lambda: HuberLoss("none", delta=0.7), (3, 4), "randn"),
    "smooth_l1_sum": (lambda: SmoothL1Loss(reduction="sum", beta=0.7), (3, 4), "randn"),
    "kl_batchmean": (lambda: KLDivLoss(reduction="batchmean"), (3, 4), "probabilities"),
    "kl_log_target": (lambda: KLDivLoss(reduction="none", log_target=True), (3, 4), "randn"),
    "poisson_log": (lambda: PoissonNLLLoss(reduction="sum"), (3, 4), "counts"),
    "poisson_rates_full": (lambda: PoissonNLLLoss(False, True), (3, 4), "counts"),
    "soft_margin": (lambda: SoftMarginLoss(reduction="none"), (3, 4), "signs"),
    "hinge_embedding": (lambda: HingeEmbeddingLoss(0.3), (3, 4), "signs"),
    "multi_margin_p2": (lambda: MultiMarginLoss(2, 0.7, torch.rand(4, dtype=torch.float64) + 0.5), (3, 4), "labels"),
    "multi_label_soft_margin": (
        lambda: MultiLabelSoftMarginLoss(torch.rand(4, dtype=torch.float64), reduction="none"),
        (3, 4),
        "binary",
    ),
    "cross_entropy_spatial_options": (
        lambda: CrossEntropyLoss(torch.rand(4, dtype=torch.float64) + 0.5, ignore_index=1, label_smoothing=0.3),
        (2, 4, 3),
        "spatial_labels",
    ),
    "cross_entropy_soft_none": (
        lambda: CrossEntropyLoss(reduction="none", label_smoothing=0.2),
        (3, 4),
        "probabilities",
    ),
    "nll_weighted_sum": (lambda: NLLLoss(torch.rand(4, dtype=torch.float64) + 0.5, reduction="sum"), (3, 4), "labels"),
    "bce_logits_weights": (
        lambda: BCEWithLogitsLoss(
            torch.rand(4, dtype=torch.float64), pos_weight=torch.rand(4, dtype=torch.float64) * 3
        ),
        (3, 4),
        "binary",
    ),
    "bce_weight_none": (lambda: BCELoss(torch.rand(4, dtype=torch.float64), reduction="none"), (3, 4), "binary"),
    "clipped_cross_entropy_none": (lambda: ClippedCrossEntropyLoss(reduction="none"), (3, 4), "labels"),
}


def finite_difference_targets(kind, shape, generator):
    if kind == "randn":
        return torch.randn(shape, generator=generator, dtype=torch.float64)
    if kind == "probabilities":
        return torch.softmax(torch.randn(shape, generator=generator, dtype=torch.float64), dim=1)
    if kind == "counts":
        return torch.randint(0, 5, shape, generator=generator).double()
    if kind == "signs":
        return torch.randint(0, 2, shape, generator=generator).double() * 2 - 1
    if kind == "binary":
        return torch.randint(0, 2, shape, generator=generator).double()
    if kind == "labels":
        return torch.randint(0, shape[1], shape[:1], generator=generator)
    return torch.randint(0, shape[1], shape[:1] + shape[2:], generator=generator)


@pytest.mark.parametrize("name", sorted(FINITE_DIFFERENCE_CASES))
def test_finite_differences(name):
    make, shape, targets = FINITE_DIFFERENCE_CASES[name]
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    if isinstance(make(), (BCELoss, ClippedCrossEntropyLoss)):
        x = torch.softmax(x, dim=1)
    if isinstance(make(), PoissonNLLLoss) and not make().log_input:
        x = x.abs() + 0.5
    if isinstance(make(), KLDivLoss) and not make().log_target:
        x = torch.log_softmax(x, dim=1)
    check_finite_differences(make(), x, finite_difference_targets(targets, shape, generator))


def several_input_finite_differences(layer, inputs, target, eps=1e-6):
    """Central differences of sum(loss * dout) in every input against backward's tuple."""
    extra = () if target is None else (target,)
    out = layer(*inputs, *extra)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grads = layer.backward(dout)
    for index, (tensor, grad) in enumerate(zip(inputs, grads)):
        numeric = torch.empty_like(tensor)
        for position in range(tensor.numel()):
            flat = tensor.view(-1)
            original = flat[position].item()
            flat[position] = original + eps
            plus = (layer(*inputs, *extra) * dout).sum().item()
            flat[position] = original - eps
            minus = (layer(*inputs, *extra) * dout).sum().item()
            flat[position] = original
            numeric.view(-1)[position] = (plus - minus) / (2 * eps)
        assert_close(f"input#{index + 1} finite differences", grad, numeric, rtol=1e-7)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_several_inputs_finite_differences(reduction):
    generator = torch.Generator().manual_seed(4)
    randn = lambda *shape: torch.randn(shape, generator=generator, dtype=torch.float64)
    signs = torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    several_input_finite_differences(MarginRankingLoss(0.3, reduction=reduction), (randn(5), randn(5)), signs)
    several_input_finite_differences(CosineEmbeddingLoss(-0.9, reduction=reduction), (randn(5, 3), randn(5, 3)), signs)
    variances = torch.rand(4, 3, generator=generator, dtype=torch.float64) + 0.5
    heteroscedastic = (randn(4, 3), randn(4, 3), variances)
    several_input_finite_differences(GaussianNLLLoss(full=True, reduction=reduction), heteroscedastic, None)
    one_per_row = (randn(4, 3), randn(4, 3), variances[:, 0])
    several_input_finite_differences(GaussianNLLLoss(reduction=reduction), one_per_row, None)


# The contract -----------------------------------------------------------------------------------

NEW_LOSSES = [
    HuberLoss, SmoothL1Loss, KLDivLoss, PoissonNLLLoss, GaussianNLLLoss, SoftMarginLoss, MarginRankingLoss,
    HingeEmbeddingLoss, CosineEmbeddingLoss, MultiMarginLoss, MultiLabelSoftMarginLoss,
]


@pytest.mark.parametrize("kind", NEW_LOSSES)
def test_new_losses_are_importable_and_registered(kind):
    from nnlab.layers import losses

    assert getattr(losses, kind.__name__) is kind and kind.__name__ in layers.__all__
    assert kind.__name__ in losses.__all__
    assert torch_twin(kind()).__class__ is getattr(torch.nn, kind.__name__)
    assert repr(kind()) == kind.__name__


@pytest.mark.parametrize(
    "layer, module",
    [
        (lambda w: CrossEntropyLoss(w), lambda w: torch.nn.CrossEntropyLoss(w)),
        (lambda w: NLLLoss(w), lambda w: torch.nn.NLLLoss(w)),
        (lambda w: BCELoss(w), lambda w: torch.nn.BCELoss(w)),
        (lambda w: BCEWithLogitsLoss(w, pos_weight=w), lambda w: torch.nn.BCEWithLogitsLoss(w, pos_weight=w)),
        (lambda w: MultiMarginLoss(weight=w), lambda w: torch.nn.MultiMarginLoss(weight=w)),
        (lambda w: MultiLabelSoftMarginLoss(w), lambda w: torch.nn.MultiLabelSoftMarginLoss(w)),
        (lambda w: CrossEntropyLoss(), lambda w: torch.nn.CrossEntropyLoss()),
    ],
)
def test_weights_are_buffers_with_torch_state_dict_keys(layer, module):
    weight = torch.rand(3)
    ours, theirs = layer(weight), module(weight)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert ours.params() == []
    ours.to(dtype=torch.float64)
    assert all(tensor.dtype == torch.float64 for tensor in ours.state_dict().values())


@pytest.mark.parametrize("legacy, reduction", [((False, None), "sum"), ((None, False), "none"), ((True, True), "mean")])
def test_deprecated_size_average_and_reduce_as_torch(legacy, reduction):
    with pytest.warns(UserWarning, match=f"reduction='{reduction}'"):
        ours = MSELoss(*legacy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = torch.nn.MSELoss(*legacy)
    assert ours.reduction == theirs.reduction == reduction
    with pytest.warns(UserWarning):
        assert CrossEntropyLoss(None, legacy[0], -100, legacy[1]).reduction == reduction


def test_reduction_none_needs_its_dout():
    loss = L1Loss(reduction="none")
    loss(torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(TypeError, match="L1Loss.backward"):
        loss.backward()
    with pytest.raises(ValueError, match=r"L1Loss.backward.*\(2, 3\)"):
        loss.backward(torch.ones(3))
    assert torch.equal(loss.backward(torch.full((2, 3), 2.0)), torch.full((2, 3), -2.0))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_multi_task_loss_reductions(reduction):
    a = torch.randn(3, 4, generator=torch.Generator().manual_seed(6))
    b = torch.randn(3, 2, generator=torch.Generator().manual_seed(7))
    y = (torch.tensor([0, 3, 1]), torch.randn(3, 2, generator=torch.Generator().manual_seed(8)))
    loss = MultiTaskLoss(CrossEntropyLoss(), MSELoss(), weights=(3.0, 1.0), reduction=reduction)
    out = loss((a, b), y)
    ce, mse = CrossEntropyLoss()(a, y[0]), MSELoss()(b, y[1])
    weighted = torch.stack([3 * ce, mse])
    expected = {"mean": weighted.sum() / 4, "sum": weighted.sum(), "none": weighted}[reduction]
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=0)
    dout = torch.tensor([2.0, 5.0]) if reduction == "none" else 2.0
    da, db = loss.backward(dout)
    ce_scale, mse_scale = {"mean": (1.5, 0.5), "sum": (6.0, 2.0), "none": (6.0, 5.0)}[reduction]
    reference_ce, reference_mse = CrossEntropyLoss(), MSELoss()
    reference_ce(a, y[0])
    reference_mse(b, y[1])
    torch.testing.assert_close(da, reference_ce.backward(ce_scale), rtol=1e-6, atol=0)
    torch.testing.assert_close(db, reference_mse.backward(mse_scale), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="task 0.*scalar"):
        MultiTaskLoss(MSELoss(reduction="none"))((a,), (a,))
