"""Jacobians built from the hand-written backward passes, against torch autograd's
Jacobian; Jacobian and gradient norms against their autograd definitions."""

import math

import pytest
import torch

from nnlab import jacobians
from nnlab.gradcheck_suite import CASES
from nnlab.grad_compare import gradient_norm, jacobian, jacobian_norm, tie_heavy
from nnlab.layers import LSTM, BatchNorm1d, Conv2d, Dropout, Embedding, Linear, ReLU, Sequential, Tanh
from reference import flat_tensors



def takes_flat_floating_inputs(case):
    """Whether the case's inputs are floating-point tensors, none nested (what ``jacobian``
    takes; an LSTM's (x, (h_0, c_0)), a mask or indices are not)."""
    if case.make_input is not None:
        made = case.make_input(case.input_shape)
        return all(t.is_floating_point() for t in (made if isinstance(made, tuple) else (made,)))
    shapes = case.input_shape if isinstance(case.input_shape, list) else [case.input_shape]
    return not any(isinstance(shape, list) for shape in shapes)


JACOBIAN_CASES = [case for case in CASES if takes_flat_floating_inputs(case)]
LAYER_CASES = [case for case in JACOBIAN_CASES if not case.ties]


def float64_case(case, seed=0):
    """(layer, x, y) of a gradcheck case in float64; its tie-heavy rows on a tie-heavy
    input (where the Jacobian is the one torch's routing of ties defines)."""
    torch.manual_seed(seed)
    layer = case.make_layer().train(case.train).to(dtype=torch.float64)
    shapes = case.input_shape if isinstance(case.input_shape, list) else [case.input_shape]
    if case.make_input is not None:
        made = case.make_input(case.input_shape)
        xs = tuple(t.double() for t in made) if isinstance(made, tuple) else (made.double(),)
    elif case.ties:
        xs = tuple(tie_heavy(shape, seed, torch.float64) for shape in shapes)
    else:
        xs = tuple(torch.randn(shape, dtype=torch.float64) for shape in shapes)
    x = xs[0] if len(xs) == 1 else xs
    y = case.make_target(case.input_shape) if case.make_target else None
    if y is not None and y.is_floating_point():
        y = y.double()
    return layer, x, y


def autograd_jacobian(layer, x, y, seed):
    """torch.autograd.functional.jacobian of the layer's forward (its output tensors in
    order, nested tuples opened), Dropout's mask fixed by the seed."""

    def forward(*t):
        torch.manual_seed(seed)
        outputs = flat_tensors(layer(*t) if y is None else layer(*t, y=y))
        return outputs[0] if len(outputs) == 1 else outputs

    return torch.autograd.functional.jacobian(forward, x)


def autograd_parameter_jacobians(layer, x, y, seed):
    """d out / d param for each parameter, one autograd.grad per output element."""
    params = [param for param, _ in layer.params()]
    for param in params:
        param.requires_grad_(True)
    try:
        torch.manual_seed(seed)
        out = layer(x) if y is None else layer(x, y=y)
        rows = [torch.autograd.grad(out.reshape(-1)[i], params, retain_graph=True, allow_unused=True) for i in range(out.numel())]
    finally:
        for param in params:
            param.requires_grad_(False)
    return [
        torch.stack([torch.zeros_like(p) if row[k] is None else row[k] for row in rows]).reshape(out.shape + p.shape)
        for k, p in enumerate(params)
    ]


def assert_jacobians_equal(ours, theirs):
    """Equal to 1e-12; nested like autograd's (per output, then per input)."""
    ours = ours if isinstance(ours, tuple) else (ours,)
    theirs = theirs if isinstance(theirs, tuple) else (theirs,)
    assert len(ours) == len(theirs)
    for mine, reference in zip(ours, theirs):
        if isinstance(mine, tuple):
            assert_jacobians_equal(mine, reference)
            continue
        assert mine.shape == reference.shape and mine.dtype == reference.dtype
        assert (mine - reference).abs().max().item() <= 1e-12


@pytest.mark.parametrize("case", JACOBIAN_CASES, ids=[case.name for case in JACOBIAN_CASES])
def test_jacobian_from_the_backward_equals_autograds(case):
    layer, x, y = float64_case(case)
    torch.manual_seed(3)
    ours = jacobian(layer, x, y)
    assert_jacobians_equal(ours, autograd_jacobian(layer, x, y, 3))


PARAMETER_CASES = [case for case in LAYER_CASES if case.name in ("Linear", "Conv2d", "BatchNorm1d", "MLP", "CNN")]


@pytest.mark.parametrize("case", PARAMETER_CASES, ids=[case.name for case in PARAMETER_CASES])
def test_parameter_jacobians_equal_autograds(case):
    layer, x, y = float64_case(case, seed=1)
    ours = jacobian(layer, x, y, wrt="params")
    theirs = autograd_parameter_jacobians(layer, x, y, 0)
    assert len(ours) == len(theirs) == len(layer.params())
    for mine, reference in zip(ours, theirs):
        assert_jacobians_equal(mine, reference)


def counting_backward(layer):
    """Wraps the layer's backward to count its calls."""
    calls = []
    original = layer.backward

    def backward(dout):
        calls.append(1)
        return original(dout)

    layer.backward = backward
    return calls


def test_batch_independent_layers_get_many_rows_per_backward():
    torch.manual_seed(4)
    layer = Sequential(Linear(5, 4), Tanh())
    calls = counting_backward(layer)
    x = torch.randn(3, 5, dtype=torch.float32)
    J = jacobian(layer, x)
    assert J.shape == (3, 4, 3, 5)
    assert len(calls) == 3  # two to check batch independence, one for all 12 rows
    # Samples do not mix: the blocks off the diagonal are exactly 0.
    assert J[0, :, 1:].abs().max() == 0 and J[2, :, :2].abs().max() == 0


@pytest.mark.parametrize(
    "layer",
    [BatchNorm1d(4), Dropout(0.5), Linear(4, 2)],
    ids=["BatchNorm1d (couples samples)", "Dropout (random mask)", "Linear on one sample"],
)
def test_other_layers_get_one_vjp_per_output_element(layer):
    torch.manual_seed(5)
    x = torch.randn(1 if isinstance(layer, Linear) else 3, 4)
    calls = counting_backward(layer)
    out_numel = layer(x).numel()
    J = jacobian(layer, x)
    assert len(calls) >= out_numel
    assert J.shape == layer(x).shape + x.shape


def test_chunks_give_the_same_jacobian(monkeypatch):
    torch.manual_seed(6)
    layer = Conv2d(2, 3, 3, padding=1).to(dtype=torch.float64)
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    whole = jacobian(layer, x)
    monkeypatch.setattr(jacobians, "CHUNK_ELEMENTS", 5 * x.numel())  # 5 rows per backward
    assert torch.equal(jacobian(layer, x), whole)


def test_jacobian_leaves_the_layer_and_rng_as_found():
    torch.manual_seed(7)
    layer = Sequential(Linear(4, 3), Dropout(0.5), BatchNorm1d(3))
    x = torch.randn(5, 4)
    layer(x)
    grads = [grad.clone() for _, grad in layer.params()]
    buffers = [buffer.clone() for buffer in layer.buffers()]
    cached = layer[0]._x
    rng = torch.get_rng_state()
    jacobian(layer, x)
    jacobian(layer, x, wrt="params")
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(g, g0) for (_, g), g0 in zip(layer.params(), grads))
    assert all(torch.equal(b, b0) for b, b0 in zip(layer.buffers(), buffers))
    assert layer[0]._x is cached


def test_sparsity_patterns():
    torch.manual_seed(8)
    x = torch.randn(1, 6)
    relu = jacobian(ReLU(), x).reshape(6, 6)
    assert torch.equal(relu, torch.diag((x[0] > 0).float()))
    assert (jacobian(Linear(6, 4), x).reshape(4, 6) != 0).all()
    conv = jacobian(Conv2d(1, 1, 3, padding=1), torch.randn(1, 1, 5, 5)).reshape(25, 25)
    rows, cols = torch.nonzero(conv, as_tuple=True)
    assert ((rows - cols).abs() <= 6).all()  # a band: 3x3 neighbours are at most 5 + 1 apart


def test_jacobian_norm_of_a_layer_and_of_a_function():
    torch.manual_seed(9)
    layer = Sequential(Linear(3, 4), Tanh()).to(dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64)
    expected = torch.linalg.norm(autograd_jacobian(layer, x, None, 0)).item()
    assert jacobian_norm(layer, x) == pytest.approx(expected, rel=1e-12)
    matrix = torch.randn(3, 3, dtype=torch.float64)
    # The Jacobian of x -> A x is A.
    assert jacobian_norm(lambda v: matrix @ v, torch.randn(3, dtype=torch.float64)) == pytest.approx(
        torch.linalg.norm(matrix).item(), rel=1e-12
    )


def test_gradient_norm_is_the_norm_of_all_gradients_together():
    a = torch.tensor([1.0, -2.0], dtype=torch.float64)
    b = torch.tensor(3.0, dtype=torch.float64)
    # f = sum(a^2) * b: df/da = 2ab, df/db = sum(a^2).
    expected = math.sqrt(((2 * a * b) ** 2).sum().item() + (a**2).sum().item() ** 2)
    assert gradient_norm(lambda u, v: (u**2).sum() * v, a, b) == pytest.approx(expected, rel=1e-12)
    assert not a.requires_grad and not b.requires_grad
    assert gradient_norm(lambda u, v: u.sum(), a, b) == pytest.approx(math.sqrt(2))  # v unused: 0
    with pytest.raises(ValueError, match="scalar"):
        gradient_norm(lambda u: u * 2, a)


def test_jacobian_argument_errors():
    with pytest.raises(ValueError, match="wrt must be 'input' or 'params'"):
        jacobian(ReLU(), torch.randn(2), wrt="weights")
    with pytest.raises(TypeError, match="expected an nnlab Layer"):
        jacobian(torch.nn.ReLU(), torch.randn(2))


def test_jacobian_refuses_nested_inputs_masks_and_indices_by_name():
    x, state = torch.randn(3, 2, 2), (torch.randn(1, 2, 3), torch.randn(1, 2, 3))
    with pytest.raises(TypeError, match=r"jacobian: input 2 is a tuple; expected floating-point tensors"):
        jacobian(LSTM(2, 3), (x, state))
    with pytest.raises(TypeError, match=r"jacobian: input 1 is a torch.int64 tensor"):
        jacobian(Embedding(4, 2), torch.tensor([0, 3]))
