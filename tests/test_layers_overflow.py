"""Layers at finite values whose intermediates overflow (1e30 in float32, 1e155 and
1.7e308 in float64: a square or a sum past the dtype's largest number), each against its
torch.nn namesake run in the same dtype: NaN, +inf and -inf where torch has them, the
same finite values elsewhere. Where nnlab's finite answer is the exact one and torch's a
non-finite artefact of its kernel, the test states the exact value instead (computed in
float64 or by hand)."""

import math
from fractions import Fraction

import pytest
import torch
from reference import FORWARD_ATOL, GRAD_RTOL, assert_close, check_against_torch, gradient_floor

import nnlab.layers as nl
from nnlab._twins import torch_twin

DTYPES = [torch.float32, torch.float64]
# A finite value whose square overflows the dtype.
HUGE = {torch.float32: 1e30, torch.float64: 1e155}


def against_torch(layer, x, dout):
    """The layer (parameters drawn in [0.5, 1.5]) against its torch twin in x's dtype."""
    layer.to(dtype=x.dtype)
    generator = torch.Generator().manual_seed(0)
    for param, _ in layer.params():
        param.copy_(torch.rand(param.shape, generator=generator, dtype=torch.float64) + 0.5)
    module = torch_twin(layer)
    return check_against_torch(
        layer, module, x, dout=dout.to(x.dtype), forward_atol=FORWARD_ATOL[x.dtype], grad_rtol=GRAD_RTOL[x.dtype]
    )


def rows_with(huge, dtype):
    """Three rows of three: one holding ``huge``, one ordinary, one holding ``-huge``."""
    return torch.tensor([[huge, 1.0, -2.0], [0.5, 1.0, -2.0], [3.0, -huge, 0.25]], dtype=torch.float64).to(dtype)


UPSTREAM = torch.tensor([[1.0, -2.0, 0.5], [0.25, 1.5, -1.0], [2.0, 0.5, -0.75]], dtype=torch.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: nl.LayerNorm(3), (3, 3)),
        (lambda: nl.LayerNorm(3, elementwise_affine=False), (3, 3)),
        (lambda: nl.GroupNorm(1, 3), (3, 3)),
        (lambda: nl.GroupNorm(3, 3, affine=False), (1, 3, 3)),
    ],
    ids=["LayerNorm", "LayerNorm-no-affine", "GroupNorm", "GroupNorm-no-affine"],
)
def test_layer_and_group_norm_give_nan_rows_where_the_variance_overflows(make, shape, dtype):
    """torch's moments kernel gives 1 / sigma = NaN for a row whose variance overflows:
    the row's output and input gradient are NaN (not 0), and so is the weight's gradient."""
    x = rows_with(HUGE[dtype], dtype).reshape(shape)
    out = against_torch(make(), x, UPSTREAM.reshape(shape))
    rows = out.reshape(3, 3)
    assert rows[0].isnan().all() and rows[2].isnan().all() and rows[1].isfinite().all()


@pytest.mark.parametrize("make", [lambda: nl.LayerNorm(8), lambda: nl.GroupNorm(1, 8)], ids=["LayerNorm", "GroupNorm"])
def test_layer_and_group_norm_give_nan_where_torchs_kernel_gives_a_wrong_zero(make):
    """Whether torch's kernel gives NaN or 0 for a row whose variance overflows depends
    on the row's length (0 for eight float32 values, for instance); the exact answer is
    neither (x_hat of (0, 1, 2, 3, 1e30, 5, 6, 7) is -1 / sqrt(7) but at 1e30, sqrt(7)
    there, within float32's range). nnlab gives NaN for every length: a flagged result
    rather than a finite wrong one."""
    x = torch.tensor([0.0, 1.0, 2.0, 3.0, 1e30, 5.0, 6.0, 7.0]).reshape(1, 8)
    layer = make()
    x = x if isinstance(layer, nl.LayerNorm) else x.reshape(1, 8, 1)
    torch_out = torch_twin(layer)(x).detach()
    assert torch_out.eq(0).all()
    exact = torch.full((8,), -1 / 7**0.5, dtype=torch.float64)
    exact[4] = 7**0.5
    float64_x_hat = torch.nn.functional.layer_norm(x.double().reshape(1, 8), [8], eps=0.0).reshape(8)
    assert torch.allclose(float64_x_hat, exact, rtol=1e-12, atol=0)
    out = layer(x)
    assert out.isnan().all()
    assert layer.backward(torch.ones_like(out)).isnan().all()


# Activations ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_softsign_gradient_at_values_whose_square_overflows_is_torchs(dtype):
    """torch's autograd forms the second term as ``-dout * ((x / d) / d)`` (d = 1 + |x|),
    which stays finite where ``dout * x / d^2`` overflows to inf / inf = NaN."""
    big = torch.finfo(dtype).max / 2
    x = torch.tensor([[-big, big, 3.0, -HUGE[dtype], -0.5, 0.0]], dtype=dtype)
    dout = torch.tensor([[1.5, -3.0, big, -2.0, 0.25, 1.0]], dtype=dtype)
    against_torch(nl.Softsign(), x, dout)


# Normalisations ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_local_response_norm_gradient_where_the_window_sum_overflows_is_torchs(dtype):
    """(x / p) / p as torch's autograd divides (p = q^beta): 0 where x^2 overflows, not
    dout * x / p^2 = -inf / inf = NaN when dout * x overflows too."""
    big = torch.finfo(dtype).max / 1.2
    x = torch.tensor([[[-big, 1.0], [2.42, HUGE[dtype]], [-2.32, 0.5], [-0.55, -1.0]]], dtype=dtype)
    dout = torch.tensor([[[-2.4, -2.0], [-2.58, 0.25], [1.0, 2.0], [-0.66, -0.5]]], dtype=dtype)
    against_torch(nl.LocalResponseNorm(3), x, dout)


# Losses --------------------------------------------------------------------------------------


def loss_against_torch(loss, inputs, target, dout):
    """The loss against its torch twin in the inputs' dtype: value and every input's gradient."""
    module = torch_twin(loss)
    dtype = inputs[0].dtype
    out = loss(*inputs, y=target) if target is not None else loss(*inputs)
    grads = loss.backward(dout)
    grads = grads if isinstance(grads, tuple) else (grads,)
    refs = [x.clone().requires_grad_(True) for x in inputs]
    out_ref = module(*refs, target) if target is not None else module(*refs)
    expected = torch.autograd.grad(out_ref, refs, torch.as_tensor(dout, dtype=dtype))
    assert_close("loss", out, out_ref.detach(), atol=FORWARD_ATOL[dtype])
    for index, (grad, ref) in enumerate(zip(grads, expected)):
        assert_close(f"gradient {index}", grad, ref, rtol=GRAD_RTOL[dtype], floor=gradient_floor(expected))


@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_mean_gradient_scales_before_the_upstream_gradient_as_torch(dtype):
    """dx = ((2 / n) (x - y)) dout, torch's order: finite for dout near the largest number
    (2 dout overflowed before)."""
    x = torch.tensor([1.0, -1.5, 0.25], dtype=dtype)
    y = torch.tensor([0.0, 0.0, 0.25], dtype=dtype)
    big = torch.finfo(dtype).max * 0.9
    loss_against_torch(nl.MSELoss(), [x], y, torch.tensor(-big, dtype=dtype))


@pytest.mark.parametrize("reduction", ["sum", "none"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_gradient_is_exact_where_torchs_twice_the_difference_overflows(reduction, dtype):
    """dx = ((x - y) dout) 2, the same values as torch's (2 (x - y)) dout (doubling is
    exact), but finite where 2 (x - y) overflows and the product does not: torch gives
    inf there, nnlab the exact value (checked in float64 arithmetic on the same numbers)."""
    big = torch.finfo(dtype).max * 0.75
    x = torch.tensor([1.0, big, 0.5, 0.5], dtype=dtype)
    y = torch.tensor([-1.0, -big / 3, 0.5, 0.0], dtype=dtype)
    # An upstream gradient near the largest number too, where twice it overflows.
    dout = torch.tensor([0.5, -0.25, 2.0, big], dtype=dtype)
    dout = dout if reduction == "none" else torch.tensor(-0.25, dtype=dtype)
    loss = nl.MSELoss(reduction=reduction)
    loss(x, y=y)
    dx = loss.backward(dout)
    diff = x - y
    assert diff[1].isfinite() and not (2 * diff[1]).isfinite()
    exact = diff.to(torch.float64) * dout.to(torch.float64) * 2
    assert exact.isfinite().all() and torch.equal(dx, exact.to(dtype))
    torch_dx = 2 * diff * dout
    assert torch_dx[1] == -math.inf


@pytest.mark.parametrize("dtype", DTYPES)
def test_gaussian_nll_variance_gradient_where_the_squared_difference_overflows_is_torchs(dtype):
    """dvar = h / v - h ((d^2 / v) / v), as torch's autograd divides: -inf where d^2
    overflows (h d^2 / v^2 gave inf / inf = NaN)."""
    huge = HUGE[dtype]
    big = torch.finfo(dtype).max / 1.2
    x = torch.tensor([huge, 1.0, 0.5], dtype=dtype)
    target = torch.tensor([0.0, -1.0, 0.5], dtype=dtype)
    var = torch.tensor([big, 2.0, big], dtype=dtype)
    loss_against_torch(nl.GaussianNLLLoss(), [x, target, var], None, torch.tensor(1.5, dtype=dtype))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_squared_multi_margin_gradient_scales_before_doubling_as_torch(reduction, dtype):
    """h = (2 g) z with g = 1 / C (1 / (N C) for the mean), torch's kernel: finite where
    2 z overflows (a score near the largest number; inf before)."""
    big = torch.finfo(dtype).max / 1.2
    x = torch.tensor([[-2.0, -0.1, 2.5, -big], [0.5, big, -1.0, 0.25]], dtype=dtype)
    labels = torch.tensor([3, 0])
    dout = torch.tensor([-0.75, 0.5], dtype=dtype) if reduction == "none" else torch.tensor(-0.75, dtype=dtype)
    loss_against_torch(nl.MultiMarginLoss(p=2, reduction=reduction), [x], labels, dout)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cosine_embedding_gradient_adds_the_square_terms_as_torch(dtype):
    """x * s + x * s for the gradient through x * x (autograd's two terms), not 2 x s,
    whose 2 x overflows to inf * 0 = NaN at an entry near the largest number."""
    big = torch.finfo(dtype).max / 1.2
    x1 = torch.tensor([[0.99, -1.03, -2.09, 2.78], [1.0, 2.0, 3.0, -big]], dtype=dtype)
    x2 = torch.tensor([[big, 0.14, 2.1, 1.68], [-0.5, 1.5, 0.25, 2.0]], dtype=dtype)
    labels = torch.tensor([1.0, -1.0], dtype=dtype)
    loss_against_torch(nl.CosineEmbeddingLoss(margin=-0.5), [x1, x2], labels, torch.tensor(0.75, dtype=dtype))


def exact_product(factors, dtype):
    """The product of the float ``factors`` in rational arithmetic, rounded once to ``dtype``."""
    value = Fraction(1)
    for factor in factors:
        value *= Fraction(factor)
    return torch.tensor(float(value), dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_mean_gradient_is_exact_where_torchs_overflows(dtype):
    """nnlab scales dout by 1 / n before the product: finite where torch's
    ``(grad * dout) / n`` overflows to -inf, and equal to the exact value."""
    p = torch.tensor([0.5, 0.25, 0.875, 0.5], dtype=dtype)
    y = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=dtype)
    dout = torch.tensor(-torch.finfo(dtype).max / 5, dtype=dtype)
    loss = nl.BCELoss()
    loss(p, y=y)
    dx = loss.backward(dout)
    # (p - y) / (p (1 - p)) is exact here: -2, 4 / 3 (rounded), 8, -2.
    slopes = [-2.0, (0.25 / 0.1875), 8.0, -2.0]
    exact = torch.stack([exact_product([slope, dout.item(), 0.25], dtype) for slope in slopes])
    assert_close("input gradient", dx, exact, rtol=GRAD_RTOL[dtype])
    p_ref = p.clone().requires_grad_(True)
    torch_dx = torch.autograd.grad(torch.nn.BCELoss()(p_ref, y), p_ref, dout)[0]
    assert torch_dx[2] == -math.inf


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_with_logits_mean_gradient_is_exact_where_torchs_overflows(dtype):
    """With pos_weight q: ``((q y + 1 - y) sigmoid(z) - q y) (dout / n)``, finite where
    torch's product with dout overflows before its division by n."""
    z = torch.zeros(4, dtype=dtype)
    y = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=dtype)
    pos_weight = torch.tensor([3.0, 1.0, 0.5, 2.0], dtype=dtype)
    dout = torch.tensor(torch.finfo(dtype).max * 0.9, dtype=dtype)
    loss = nl.BCEWithLogitsLoss(pos_weight=pos_weight)
    loss(z, y=y)
    dx = loss.backward(dout)
    # sigmoid(0) = 1/2: the bracket is -1.5, 0.5, -0.25, 0.5.
    exact = torch.stack([exact_product([slope, dout.item(), 0.25], dtype) for slope in (-1.5, 0.5, -0.25, 0.5)])
    assert_close("input gradient", dx, exact, rtol=GRAD_RTOL[dtype])
    z_ref = z.clone().requires_grad_(True)
    torch_dx = torch.autograd.grad(torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)(z_ref, y), z_ref, dout)[0]
    assert torch_dx[0] == -math.inf


def test_instance_norm_gradient_of_a_row_whose_variance_overflows_is_zero_where_torchs_is_nan():
    """1 / sigma = 0 for a row whose variance overflows (as torch's batch-norm kernel has
    it): out = 0 and dx = 0, within 1.3e-38 of the exact dx (float64 autograd below).
    torch's backward gives NaN for the whole row here, from sum(dout * (x - mean)) = inf
    times its 1 / sigma = 0."""
    x = torch.tensor([[[-3e38, -0.0, 1.78]]])
    dout = torch.tensor([[[1.45, -2.97, 0.5]]])
    layer = nl.InstanceNorm1d(1)
    out = layer(x)
    dx = layer.backward(dout)
    x_ref = x.double().requires_grad_(True)
    exact = torch.autograd.grad(torch.nn.functional.instance_norm(x_ref), x_ref, dout.double())[0]
    assert exact.abs().max() < 1.3e-38 and torch.equal(dx, torch.zeros_like(dx))
    assert torch.equal(out, torch.zeros_like(out))
    x_torch = x.clone().requires_grad_(True)
    assert torch.autograd.grad(torch.nn.InstanceNorm1d(1)(x_torch), x_torch, dout)[0].isnan().all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_gradient_at_an_entry_past_half_the_largest_number_is_exact_where_torchs_is_nan(dtype):
    """mean(x^2) overflows: r = 0, out = 0 and dx = r (g - x_hat mean(g x_hat)) = 0, as
    torch's forward and its dx elsewhere; at |x| beyond half the largest number torch's
    autograd forms 2 x = inf and gives inf * 0 = NaN. The exact dx there is 6.5e-55 for
    the float32 input (float64 autograd below), which rounds to 0."""
    big = 3e38 if dtype == torch.float32 else 1.7e308
    x = torch.tensor([[big, 1.0, 2.0]], dtype=dtype)
    dout = torch.tensor([[1.0, -2.0, 0.5]], dtype=dtype)
    layer = nl.RMSNorm(3).to(dtype=dtype)
    out = layer(x)
    dx = layer.backward(dout)
    assert torch.equal(out, torch.zeros_like(out)) and dx[0, 0] == 0
    if dtype == torch.float32:
        x_ref = x.double().requires_grad_(True)
        exact = torch.autograd.grad(torch.nn.RMSNorm(3).double()(x_ref), x_ref, dout.double())[0]
        assert abs(exact[0, 0].item() - 6.5253e-55) < 1e-58
    x_torch = x.clone().requires_grad_(True)
    torch_dx = torch.autograd.grad(torch.nn.RMSNorm(3).to(dtype)(x_torch), x_torch, dout)[0]
    assert torch_dx[0, 0].isnan() and torch.equal(torch_dx[0, 1:], dx[0, 1:])


def test_batch_norm_channel_whose_sum_overflows_is_nan_not_a_wrong_zero():
    """The exact x_hat of (-2.5, 3e38, 3e38, 2) is (-1, 1, 1, -1). nnlab sums in the
    input's dtype: the mean overflows and the channel is NaN, as torch's CPU kernel gives
    at one thread; with two threads torch's kernel sums in float64, gets a finite mean and
    a variance that overflows, and gives 0 (a wrong finite number), which nnlab does not
    copy. The other channel is normalised as usual."""
    x = torch.tensor([[-2.5, 1.0], [3e38, 2.0], [3e38, 3.0], [2.0, 4.0]])
    exact = torch.nn.functional.batch_norm(x.double(), None, None, training=True)
    assert torch.allclose(exact[:, 0], torch.tensor([-1.0, 1.0, 1.0, -1.0], dtype=torch.float64), rtol=1e-12)
    out = nl.BatchNorm1d(2)(x)
    assert out[:, 0].isnan().all()
    assert torch.allclose(out[:, 1], exact[:, 1].float(), atol=1e-6)
    assert torch.nn.BatchNorm1d(2)(x)[:, 0].isnan().all()  # torch at one thread (conftest)
