"""Nearest-neighbour Upsample by integer factors against torch.nn.Upsample, autograd and finite
differences (the other modes: tests/test_layers_more_torch_nn.py)."""

import math

import pytest
import torch
from reference import GRAD_RTOL, check_against_torch, check_finite_differences

from nnlab.layers import Upsample

DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "scale, shape",
    [(2, (2, 3, 4, 5)), ((2, 3), (1, 2, 3, 2)), (1, (2, 1, 3, 3)), ((3, 1), (2, 2, 1, 4))],
)
def test_upsample_matches_torch(dtype, scale, shape):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=dtype)
    module = torch.nn.Upsample(scale_factor=scale, mode="nearest")
    # Nearest upsampling copies values, so the forward is exact.
    check_against_torch(Upsample(scale_factor=scale), module, x, forward_atol=0.0, grad_rtol=GRAD_RTOL[dtype])


def test_upsample_finite_differences():
    torch.manual_seed(1)
    check_finite_differences(Upsample(scale_factor=(2, 3)), torch.randn(2, 2, 3, 2, dtype=torch.float64))


def test_upsample_repr_errors_and_contract():
    assert repr(Upsample()) == "Upsample(scale_factor=(2, 2))"
    assert repr(Upsample(scale_factor=(1, 3))) == "Upsample(scale_factor=(1, 3))"
    for bad in (0, -1.5, (2,), True, math.inf):
        with pytest.raises(ValueError, match="Upsample: scale_factor must be an int or a pair"):
            Upsample(scale_factor=bad)
    # Batched only: torch.nn.Upsample reads a 3-D input as (N, C, L), not as (C, H, W).
    for shape in ((2, 3), (3, 4, 5)):
        with pytest.raises(ValueError, match=r"Upsample.*\(N, C, H, W\), got"):
            Upsample()(torch.zeros(shape))
    with pytest.raises(RuntimeError, match="Upsample: backward\\(\\) called before forward"):
        Upsample().backward(torch.zeros(1, 1, 2, 2))
    layer = Upsample()
    layer(torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"expected dout of shape \(1, 1, 4, 4\)"):
        layer.backward(torch.zeros(1, 1, 4, 3))
