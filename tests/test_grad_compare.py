"""nnlab.grad_compare: it must pass correct layers, catch wrong ones, and leave
everything it touches as it found it."""

import pytest
import torch

from nnlab.grad_compare import (
    compare_layer_to_torch,
    compare_to_module,
    finite_difference_errors,
    gradcheck,
    gradient_errors,
)
from nnlab.layers import MLP, CrossEntropyLoss, Dropout, Linear, Sequential, Tanh


class WrongWeightGradient(Linear):
    """A Linear whose weight gradient is off by 0.1 in one entry."""

    def backward(self, dout):
        dx = super().backward(dout)
        self._grads["weight"][0, 0] += 0.1
        return dx


class WrongInputGradient(Tanh):
    """A Tanh that forgets the derivative: dx = dout."""

    def backward(self, dout):
        self.cached("_out")
        return dout * 1.0


def test_compare_layer_to_torch_passes_a_correct_model_and_prints_one_line_per_tensor(capsys):
    torch.manual_seed(0)
    model = MLP(6, 3, (5, 4), activation="tanh", dropout=0.3)
    diffs = compare_layer_to_torch(model, torch.randn(7, 6))
    assert len(diffs) == 1 + len(model.params())
    assert max(diffs) < 1e-5
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("input    diff=")
    assert lines[1].startswith("param#01 diff=")
    assert len(lines) == len(diffs)


def test_compare_layer_to_torch_catches_a_wrong_backward():
    torch.manual_seed(0)
    diffs = compare_layer_to_torch(WrongWeightGradient(4, 3), torch.randn(5, 4))
    assert diffs[0] < 1e-6
    assert diffs[1] == pytest.approx(0.1, rel=1e-5)
    diffs = compare_layer_to_torch(WrongInputGradient(), torch.randn(5, 4))
    assert diffs[0] > 1e-2


def test_compare_layer_to_torch_leaves_everything_as_it_found_it():
    torch.manual_seed(0)
    model = MLP(6, 3, (5,), dropout=0.5)
    x = torch.randn(4, 6)
    model(x)
    model.backward(torch.ones(4, 3))
    params = [p.clone() for p, _ in model.params()]
    grads = [g.clone() for _, g in model.params()]
    cached_x = model.sequence[0]._x
    cached_mask = model.sequence[2]._mask
    x_before = x.clone()
    rng = torch.get_rng_state()

    compare_layer_to_torch(model, x)

    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(x, x_before) and not x.requires_grad
    for (p, g), p0, g0 in zip(model.params(), params, grads):
        assert torch.equal(p, p0) and torch.equal(g, g0)
        assert not p.requires_grad and not g.requires_grad
    assert model.sequence[0]._x is cached_x
    assert model.sequence[2]._mask is cached_mask


def test_gradient_errors_are_relative():
    torch.manual_seed(1)
    errors = gradient_errors(Sequential(Linear(5, 4), Tanh(), Linear(4, 2)), torch.randn(3, 5, dtype=torch.float32))
    assert len(errors) == 5 and max(errors) < 1e-5


def test_gradcheck_passes_correct_layers_in_float64_and_leaves_them_float32():
    torch.manual_seed(2)
    model = MLP(4, 3, (5,), activation="sigmoid", dropout=0.4)
    assert gradcheck(model, torch.randn(3, 4))
    assert gradcheck(CrossEntropyLoss(), torch.randn(3, 4), torch.tensor([0, 3, 1]))
    assert gradcheck(Dropout(0.5), torch.randn(3, 4))
    assert all(p.dtype == torch.float32 for p, _ in model.params())


def test_gradcheck_names_the_worst_element_when_it_fails():
    torch.manual_seed(3)
    with pytest.raises(AssertionError, match=r"param#01\[0, 0\]"):
        gradcheck(WrongWeightGradient(3, 2), torch.randn(2, 3))
    with pytest.raises(AssertionError, match="input"):
        gradcheck(WrongInputGradient(), torch.randn(2, 3) * 2)


def test_compare_to_module_copies_weights_and_reports_every_tensor():
    torch.manual_seed(4)
    layer = Linear(6, 3)
    module = torch.nn.Linear(6, 3)
    result = compare_to_module(layer, module, torch.randn(5, 6))
    assert set(result) == {"output", "input", "param#01", "param#02"}
    assert result["output"] < 1e-6
    assert max(result["input"], result["param#01"], result["param#02"]) < 1e-5
    assert torch.equal(module.weight.detach(), layer.weight)


def test_compare_to_module_with_targets_and_a_wrong_layer():
    torch.manual_seed(5)
    scores = torch.randn(4, 3)
    labels = torch.tensor([0, 2, 1, 2])
    result = compare_to_module(CrossEntropyLoss(), torch.nn.CrossEntropyLoss(), scores, labels)
    assert result["output"] < 1e-6 and result["input"] < 1e-5
    result = compare_to_module(WrongWeightGradient(4, 3), torch.nn.Linear(4, 3), torch.randn(5, 4))
    assert result["param#01"] > 1e-3


def test_compare_to_module_rejects_a_module_of_another_shape():
    with pytest.raises(ValueError, match=r"param#01 has shape \(3, 6\)"):
        compare_to_module(Linear(6, 3), torch.nn.Linear(6, 4), torch.randn(2, 6))
    with pytest.raises(ValueError, match="2 parameters"):
        compare_to_module(Linear(6, 3), torch.nn.Linear(6, 3, bias=False), torch.randn(2, 6))


def test_finite_difference_errors_are_small_for_a_correct_layer_and_large_for_a_wrong_one():
    torch.manual_seed(6)
    errors = finite_difference_errors(MLP(4, 3, (5,), activation="tanh"), torch.randn(3, 4))
    assert len(errors) == 5 and max(errors) < 1e-7
    errors = finite_difference_errors(WrongWeightGradient(3, 2), torch.randn(2, 3))
    assert errors[0] < 1e-7 and errors[1] > 1e-2
