"""Bilinear, Identity and Unflatten (nnlab.layers.dense) against their torch.nn namesakes,
built from the same arguments (Bilinear's weights copied): outputs and every gradient for
the same inputs and upstream gradient, in float32 and float64, on shapes and values drawn
by hypothesis (batches of 0 and 1, NaN and infinities at drawn positions of both inputs
and of the upstream gradient, non-contiguous inputs); float64 finite differences for both
of Bilinear's inputs and its parameters; and the contract of a layer of two inputs:
``backward`` returns ``(dx1, dx2)``.
"""

import inspect

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import FORWARD_ATOL, GRAD_RTOL, assert_close, check_against_torch, copy_params, gradient_floor
from special_values import shapes, tensors
from test_layers_parity import DTYPES, upstreams

from nnlab.layers import Bilinear, Identity, Unflatten


def compare_two_inputs(layer, module, x1, x2, dout):
    """The layer against the module under autograd on (x1, x2) with the upstream gradient
    ``dout`` (an Upstream): the output, dx1, dx2, then each parameter's gradient."""
    dtype = x1.dtype
    layer.zero_grad()
    out = layer(x1.clone(), x2.clone())
    douts = dout(out)
    dx1, dx2 = layer.backward(douts)
    leaves = [x1.clone().requires_grad_(True), x2.clone().requires_grad_(True)]
    reference = module(*leaves)
    grads = torch.autograd.grad(reference, leaves + list(module.parameters()), douts)
    assert_close("output", out, reference.detach(), atol=FORWARD_ATOL[dtype])
    floor = gradient_floor(grads)
    mine = [dx1, dx2] + [grad for _, grad in layer.params()]
    for name, actual, expected in zip(["dx1", "dx2", "dweight", "dbias"][: len(mine)], mine, grads, strict=True):
        assert_close(name, actual, expected, rtol=GRAD_RTOL[dtype], floor=floor)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60)
@given(
    in1=st.integers(1, 3),
    in2=st.integers(1, 3),
    out=st.integers(1, 3),
    bias=st.booleans(),
    lead=shapes(max_dims=2),
    dout=upstreams,
    data=st.data(),
)
def test_bilinear_matches_torch(dtype, in1, in2, out, bias, lead, dout, data):
    layer = Bilinear(in1, in2, out, bias=bias).to(dtype=dtype)
    module = torch.nn.Bilinear(in1, in2, out, bias=bias).to(dtype)
    copy_params(layer, module)
    x1 = data.draw(tensors(lead + (in1,), dtype))
    x2 = data.draw(tensors(lead + (in2,), dtype))
    compare_two_inputs(layer, module, x1, x2, dout)


def test_bilinear_finite_differences_for_both_inputs_and_the_parameters():
    torch.manual_seed(0)
    layer = Bilinear(3, 2, 4).to(dtype=torch.float64)
    x1 = torch.randn(5, 3, dtype=torch.float64)
    x2 = torch.randn(5, 2, dtype=torch.float64)
    dout = torch.randn(5, 4, dtype=torch.float64)
    layer(x1, x2)
    analytic = list(layer.backward(dout)) + [grad for _, grad in layer.params()]
    tensors_ = [x1, x2] + [param for param, _ in layer.params()]
    eps = 1e-6
    for name, tensor, grad in zip(["dx1", "dx2", "dweight", "dbias"], tensors_, analytic, strict=True):
        flat = tensor.view(-1)
        numeric = torch.empty_like(flat)
        for index in range(flat.numel()):
            original = flat[index].item()
            flat[index] = original + eps
            plus = (layer(x1, x2) * dout).sum().item()
            flat[index] = original - eps
            minus = (layer(x1, x2) * dout).sum().item()
            flat[index] = original
            numeric[index] = (plus - minus) / (2 * eps)
        assert_close(name, grad.reshape(-1), numeric, rtol=1e-7)


def test_bilinear_contract_parameters_state_dict_accumulation():
    layer = Bilinear(3, 2, 4)
    module = torch.nn.Bilinear(3, 2, 4)
    assert list(layer.state_dict()) == list(module.state_dict()) == ["weight", "bias"]
    assert [p.shape for p, _ in layer.params()] == [p.shape for p in module.parameters()]
    assert list(inspect.signature(Bilinear).parameters) == list(inspect.signature(torch.nn.Bilinear).parameters)
    assert layer.weight.abs().max() <= 1 / 3**0.5
    x1, x2, dout = torch.randn(5, 3), torch.randn(5, 2), torch.randn(5, 4)
    layer(x1, x2)
    layer.backward(dout)
    once = [grad.clone() for _, grad in layer.params()]
    layer(x1, x2)
    layer.backward(dout)
    for (_, grad), first in zip(layer.params(), once):
        assert_close("accumulated", grad, 2 * first, rtol=1e-6)
    layer.requires_input_grad(False)
    layer(x1, x2)
    assert layer.backward(dout) is None
    assert repr(Bilinear(3, 2, 4, bias=False)) == "Bilinear(3, 2, 4, bias=False)"


@pytest.mark.parametrize(
    "x1, x2, message",
    [
        (torch.randn(2, 4), torch.randn(2, 2), r"\(\*, 3\)"),
        (torch.randn(2, 3), torch.randn(3, 2), r"\(2, 2\)"),
        (torch.randn(2, 3), torch.randn(2, 5), r"\(2, 2\)"),
        (torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64), "float32"),
    ],
)
def test_bilinear_refuses_inputs_that_do_not_fit(x1, x2, message):
    with pytest.raises(ValueError, match=f"Bilinear.*{message}"):
        Bilinear(3, 2, 4)(x1, x2)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=30)
@given(shape=shapes(min_dims=1, max_dims=4), dout=upstreams, data=st.data())
def test_unflatten_and_identity_match_torch(dtype, shape, dout, data):
    x = data.draw(tensors(shape, dtype))
    check_against_torch(Identity(54, unused="ignored"), torch.nn.Identity(54, unused="ignored"), x, dout=dout)
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    size = shape[dim]
    sizes = data.draw(st.sampled_from([(size,), (1, size), (size, 1), (-1,), (1, -1), (size, -1), (2, -1)]))
    module = torch.nn.Unflatten(dim, sizes)
    try:
        module(x)
    except RuntimeError:
        with pytest.raises(ValueError, match="Unflatten"):
            Unflatten(dim, sizes)(x)
        return
    check_against_torch(Unflatten(dim, sizes), module, x, dout=dout)


def test_identity_returns_its_input_and_unflatten_refuses_what_torch_refuses():
    x = torch.randn(2, 3)
    assert Identity()(x) is x is torch.nn.Identity()(x)
    for dim, sizes in [(1, (2, 2)), (2, (3,)), (1, (-1, -1))]:
        with pytest.raises((RuntimeError, IndexError)):
            torch.nn.Unflatten(dim, sizes)(x)
        with pytest.raises(ValueError, match="Unflatten"):
            Unflatten(dim, sizes)(x)
    with pytest.raises(ValueError, match="Unflatten.*named"):
        Unflatten("features", (("a", 2),))
    assert list(inspect.signature(Unflatten).parameters) == list(inspect.signature(torch.nn.Unflatten).parameters)
    assert repr(Unflatten(1, [3, 1])) == "Unflatten(dim=1, unflattened_size=(3, 1))"
