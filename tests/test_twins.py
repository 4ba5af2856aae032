"""nnlab.grad_compare.torch_twin: the torch.nn module that computes what an nnlab layer does."""

import pytest
import torch

from nnlab.gradcheck_suite import CASES
from nnlab.layers import CrossEntropyLoss, Dropout, Dropout2d, Linear, ReLU, Sequential
from nnlab.grad_compare import torch_twin
from reference import flat_tensors

# torch.nn has no module for these (or, for Dropout, none drawing nnlab's mask).
TWINLESS = (
    "Dropout",
    "Dropout2d",
    "Dropout1d",
    "Dropout3d",
    "RReLU",
    "AlphaDropout",
    "FeatureAlphaDropout",
    "Model (graph)",
    "ClippedCrossEntropyLoss",
    "ClippedCrossEntropyLoss (sum)",
    "MultiTaskLoss",
    "SinusoidalPositionalEncoding",
    "LearnedPositionalEncoding",
)
TWINNED = [case for case in CASES if not case.ties and case.name not in TWINLESS]


@pytest.mark.parametrize("case", TWINNED, ids=[case.name for case in TWINNED])
def test_the_twin_computes_what_the_layer_computes(case):
    torch.manual_seed(0)
    layer = case.make_layer().train(case.train)
    if case.make_input is not None:
        made = case.make_input(case.input_shape)
        xs = list(made) if isinstance(made, tuple) else [made]
    else:
        shapes = case.input_shape if isinstance(case.input_shape, list) else [case.input_shape]
        xs = [random_nested(shape) for shape in shapes]
    y = case.make_target(case.input_shape) if case.make_target else None
    twin = torch_twin(layer)
    assert twin is not None and twin.training == layer.training
    ours = layer(*xs) if y is None else layer(*xs, y=y)
    theirs = twin(*xs) if y is None else twin(*xs, y)
    for mine, reference in zip(flat_tensors(ours), flat_tensors(theirs), strict=True):
        assert (mine - reference.detach()).abs().max() <= 1e-5


def random_nested(shape):
    """A random tensor of ``shape``, or a tuple of them for a list of shapes (an LSTM's (h_0, c_0))."""
    if isinstance(shape, list):
        return tuple(random_nested(one) for one in shape)
    return torch.randn(shape)


def test_the_twin_passes_targets_to_a_loss_inside_a_sequential():
    torch.manual_seed(1)
    model = Sequential(Linear(4, 3), ReLU(), CrossEntropyLoss())
    x, y = torch.randn(5, 4), torch.tensor([0, 2, 1, 1, 0])
    assert torch.allclose(torch_twin(model)(x, y).detach(), model(x, y=y))


@pytest.mark.parametrize("case", [case for case in CASES if case.name in TWINLESS], ids=lambda case: case.name)
def test_layers_without_a_twin_get_none(case):
    assert torch_twin(case.make_layer().train(case.train)) is None


def test_no_twin_for_random_masks_subclasses_and_other_layers():
    assert torch_twin(Dropout(0.5)) is None
    assert isinstance(torch_twin(Dropout(0.5).eval()), torch.nn.Identity)
    assert isinstance(torch_twin(Dropout2d(0.0)), torch.nn.Identity)
    assert torch_twin(Sequential(Linear(2, 2), Dropout(0.1))) is None

    class Scaled(Linear):
        def forward(self, x, **kw):
            return 2 * super().forward(x)

    assert torch_twin(Scaled(2, 2)) is None


def test_the_twin_gets_the_layers_dtype_and_a_copy_of_its_weights():
    layer = Linear(3, 2).to(dtype=torch.float64)
    twin = torch_twin(layer)
    assert twin.weight.dtype == torch.float64
    assert torch.equal(twin.weight.detach(), layer.weight)
    twin.weight.data.zero_()
    assert layer.weight.abs().sum() > 0
