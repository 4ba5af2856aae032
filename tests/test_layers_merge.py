"""Add, Multiply and Concat (several inputs, one gradient per input) against torch
autograd on the same ops and against finite differences, their checks, and the
documented way to write a layer of several inputs."""

import itertools
import textwrap

import pytest
import torch
from reference import FORWARD_ATOL, GRAD_RTOL, assert_close

from nnlab.grad_compare import gradcheck
from nnlab.layers import Add, Concat, Layer, Multiply, merge

DTYPES = [torch.float32, torch.float64]


def check_against_autograd_op(layer, op, xs, seed=0):
    """The layer's forward and per-input gradients against ``op(*xs)`` under autograd,
    for the same random upstream gradient."""
    out = layer(*[x.clone() for x in xs])
    generator = torch.Generator().manual_seed(seed)
    dout = torch.randn(out.shape, generator=generator, dtype=out.dtype)
    dxs = layer.backward(dout.clone())
    refs = [x.clone().requires_grad_(True) for x in xs]
    out_ref = op(*refs)
    grads = torch.autograd.grad(out_ref, refs, dout)
    assert_close("output", out, out_ref.detach(), atol=FORWARD_ATOL[out.dtype])
    assert isinstance(dxs, tuple) and len(dxs) == len(xs), f"expected {len(xs)} gradients, got {dxs!r}"
    for index, (dx, grad) in enumerate(zip(dxs, grads)):
        assert_close(f"input {index} gradient", dx, grad, rtol=GRAD_RTOL[out.dtype])


def _sum(*xs):
    return sum(xs[1:], xs[0])


def _product(*xs):
    out = xs[0]
    for x in xs[1:]:
        out = out * x
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 4, 4), (1, 1)])
def test_add_and_multiply_against_autograd(dtype, count, shape):
    torch.manual_seed(count)
    xs = [torch.randn(shape, dtype=dtype) for _ in range(count)]
    check_against_autograd_op(Add(), _sum, xs)
    check_against_autograd_op(Multiply(), _product, xs)


def test_multiply_gradient_is_exact_at_zeros():
    a = torch.tensor([[0.0, 2.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[3.0, 0.0, 0.0]], dtype=torch.float64)
    layer = Multiply()
    layer(a, b)
    da, db = layer.backward(torch.ones(1, 3, dtype=torch.float64))
    assert torch.equal(da, b) and torch.equal(db, a)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "dim, shapes",
    [
        (1, [(2, 3, 4, 4), (2, 5, 4, 4)]),
        (1, [(3, 2), (3, 1), (3, 4)]),
        (0, [(2, 3), (4, 3)]),
        (-1, [(2, 3, 1), (2, 3, 2)]),
        (2, [(1, 2, 3, 2), (1, 2, 1, 2)]),
    ],
)
def test_concat_against_autograd(dtype, dim, shapes):
    torch.manual_seed(len(shapes))
    xs = [torch.randn(shape, dtype=dtype) for shape in shapes]
    check_against_autograd_op(Concat(dim), lambda *ts: torch.cat(ts, dim=dim), xs)


@pytest.mark.parametrize("layer", [Add(), Multiply(), Concat()], ids=repr)
def test_merge_layers_pass_gradcheck(layer):
    torch.manual_seed(0)
    xs = (torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3))
    assert gradcheck(layer, xs)


def test_concat_repr_and_dim_check():
    assert repr(Concat()) == "Concat(dim=1)"
    assert repr(Concat(-1)) == "Concat(dim=-1)"
    with pytest.raises(ValueError, match="Concat: dim must be an int"):
        Concat(1.0)
    with pytest.raises(ValueError, match=r"Concat\(dim=2\): dim is out of range"):
        Concat(2)(torch.zeros(2, 3), torch.zeros(2, 3))


@pytest.mark.parametrize("layer", [Add(), Multiply(), Concat()], ids=repr)
def test_merge_layers_reject_bad_inputs(layer):
    name = repr(layer).split("(")[0]
    with pytest.raises(ValueError, match=f"{name}.*at least 2 inputs, got 1"):
        layer(torch.zeros(2, 3))
    with pytest.raises(TypeError, match=f"{name}.*input 1, got list"):
        layer(torch.zeros(2, 3), [1.0])
    with pytest.raises(ValueError, match=f"{name}.*one dtype and device"):
        layer(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=rf"{name}.*\[\(2, 3\), \(3, 4\)\]"):
        layer(torch.zeros(2, 3), torch.zeros(3, 4))


@pytest.mark.parametrize("layer", [Add(), Multiply(), Concat()], ids=repr)
def test_merge_layers_follow_the_backward_contract(layer):
    with pytest.raises(RuntimeError, match="before forward"):
        type(layer)().backward(torch.zeros(2, 3))
    out = layer(torch.ones(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="expected dout of shape"):
        layer.backward(torch.zeros(out.shape[0], out.shape[1] + 1))


def test_multiply_detects_an_input_changed_in_place():
    a = torch.ones(2, 3)
    layer = Multiply()
    layer(a, torch.ones(2, 3))
    a.mul_(2)
    with pytest.raises(RuntimeError, match="modified in place"):
        layer.backward(torch.ones(2, 3))


# The documented way to write a layer of several inputs (nnlab/layers/merge.py) ----------


def documented_subtract():
    """The ``Subtract`` class exactly as nnlab.layers.merge's docstring writes it."""
    after = merge.__doc__.split("::\n", 1)[1].splitlines()
    # the indented block that follows "::", up to the first line of prose
    block = itertools.takewhile(lambda line: not line or line.startswith("    "), after)
    namespace = {"Layer": Layer}
    exec(textwrap.dedent("\n".join(block)), namespace)  # our own docstring, run as written
    return namespace["Subtract"]


def test_documented_subtract_example_is_right():
    subtract = documented_subtract()
    torch.manual_seed(1)
    xs = [torch.randn(3, 4, dtype=torch.float64) for _ in range(2)]
    check_against_autograd_op(subtract(), torch.sub, xs)
    assert gradcheck(subtract(), tuple(xs))
    with pytest.raises(ValueError, match=r"Subtract: expected input of shape \(3, 4\) \(a's\), got \(2,\)"):
        subtract()(xs[0], torch.zeros(2))
