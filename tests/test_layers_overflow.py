"""Layers at finite values whose intermediates overflow (1e30 in float32, 1e155 and
1.7e308 in float64: a square or a sum past the dtype's largest number), each against its
torch.nn namesake run in the same dtype: NaN, +inf and -inf where torch has them, the
same finite values elsewhere. Where nnlab's finite answer is the exact one and torch's a
non-finite artefact of its kernel, the test states the exact value instead (computed in
float64 or by hand)."""

import pytest
import torch
from reference import FORWARD_ATOL, GRAD_RTOL, check_against_torch

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
