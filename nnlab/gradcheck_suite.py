"""Every nnlab layer against PyTorch, one row each: the forward pass against its
``torch.nn`` twin, the backward pass against autograd (through the twin and through
the layer's own forward), and central finite differences in float64.

``nnlab gradcheck`` prints this table.
"""

from typing import Callable, NamedTuple, Optional

import torch

from . import graph, models
from . import layers as nn
from .grad_compare import compare_to_module, finite_difference_errors, gradient_errors

FORWARD_TOL = 1e-5
BACKWARD_TOL = 1e-5
FINITE_DIFFERENCE_TOL = 1e-6


class Case(NamedTuple):
    name: str
    make_layer: Callable
    make_twin: Optional[Callable]  # an independent torch.nn module, or None
    input_shape: tuple  # a list of shapes for a layer of several inputs
    make_target: Optional[Callable] = None  # targets for losses, from the input shape
    train: bool = True
    make_input: Optional[Callable] = None  # inputs from the shape; torch.randn when None


class Row(NamedTuple):
    name: str
    forward: Optional[float]  # max |nnlab - torch.nn| over the outputs; None without a twin
    backward: float  # worst relative gradient error against autograd, float32
    finite_differences: float  # worst relative gradient error against finite differences, float64

    @property
    def passed(self):
        forward_ok = self.forward is None or self.forward <= FORWARD_TOL
        return forward_ok and self.backward <= BACKWARD_TOL and self.finite_differences <= FINITE_DIFFERENCE_TOL


def _labels(shape):
    return torch.randint(0, shape[1], (shape[0],))


def _probabilities(shape):
    return torch.softmax(torch.randn(shape), dim=1)


def _uniform(shape):
    return torch.rand(shape)


def _inside_0_1(shape):
    """Probabilities away from 0 and 1, where finite differences stay in [0, 1]."""
    return 0.05 + 0.9 * torch.rand(shape)


def _softmax_rows(shape):
    return torch.softmax(torch.randn(shape), dim=1)


def _two_task_labels(shape):
    """(N, 2) targets: column 0 for a 3-class head, column 1 for a 2-class head."""
    return torch.stack([torch.randint(0, 3, (shape[0],)), torch.randint(0, 2, (shape[0],))], dim=1)


class _SumOfPaths(torch.nn.Module):
    """torch twin of nnlab's Residual: main(x) + shortcut(x)."""

    def __init__(self, main, shortcut):
        super().__init__()
        self.main = main
        self.shortcut = shortcut

    def forward(self, x):
        return self.main(x) + self.shortcut(x)


class _TupleOfHeads(torch.nn.Module):
    """torch twin of nnlab's Heads: one input, a tuple of outputs."""

    def __init__(self, *heads):
        super().__init__()
        self.heads = torch.nn.ModuleList(heads)

    def forward(self, x):
        return tuple(head(x) for head in self.heads)


class _TorchOp(torch.nn.Module):
    """torch twin of a layer of several inputs: ``function(*xs)``."""

    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, *xs):
        return self.function(*xs)


def _small_unet():
    """A graph with a shared layer, a skip concatenated after down and up sampling."""
    x = graph.Input((2, 4, 4))
    shared = nn.Conv2d(2, 2, 3, padding=1)
    skip = nn.Tanh()(shared(x))
    down = nn.Tanh()(shared(nn.AvgPool2d(2)(skip)))
    joined = graph.Concat()(nn.Upsample(2)(down), skip)
    return graph.Model(x, graph.Multiply()(nn.Conv2d(4, 2, 1)(joined), x))


class _SmallUNetTwin(torch.nn.Module):
    """torch twin of ``_small_unet`` (parameters in the same order)."""

    def __init__(self):
        super().__init__()
        self.shared = torch.nn.Conv2d(2, 2, 3, padding=1)
        self.mix = torch.nn.Conv2d(4, 2, 1)

    def forward(self, x):
        skip = torch.tanh(self.shared(x))
        down = torch.tanh(self.shared(torch.nn.functional.avg_pool2d(skip, 2)))
        joined = torch.cat([torch.nn.functional.interpolate(down, scale_factor=2), skip], dim=1)
        return self.mix(joined) * x


CASES = [
    Case("Linear", lambda: nn.Linear(5, 4), lambda: torch.nn.Linear(5, 4), (3, 5)),
    Case("ReLU", nn.ReLU, torch.nn.ReLU, (2, 3, 4)),
    Case("LeakyReLU", lambda: nn.LeakyReLU(0.1), lambda: torch.nn.LeakyReLU(0.1), (2, 3, 4)),
    Case("Sigmoid", nn.Sigmoid, torch.nn.Sigmoid, (2, 3, 4)),
    Case("Tanh", nn.Tanh, torch.nn.Tanh, (2, 3, 4)),
    Case("Softmax", lambda: nn.Softmax(dim=1), lambda: torch.nn.Softmax(dim=1), (3, 5)),
    Case("Dropout", lambda: nn.Dropout(0.4), None, (4, 6)),
    Case("Flatten", nn.Flatten, torch.nn.Flatten, (2, 3, 2, 2)),
    Case("CrossEntropyLoss", nn.CrossEntropyLoss, torch.nn.CrossEntropyLoss, (4, 5), _labels),
    Case("CrossEntropyLoss (soft)", nn.CrossEntropyLoss, torch.nn.CrossEntropyLoss, (4, 5), _probabilities),
    Case("NLLLoss", nn.NLLLoss, torch.nn.NLLLoss, (4, 5), _labels),
    Case("ClippedCrossEntropyLoss", nn.ClippedCrossEntropyLoss, None, (4, 5), _labels, make_input=_softmax_rows),
    Case("MSELoss", nn.MSELoss, torch.nn.MSELoss, (4, 3), torch.randn),
    Case("L1Loss", nn.L1Loss, torch.nn.L1Loss, (4, 3), torch.randn),
    Case("BCELoss", nn.BCELoss, torch.nn.BCELoss, (4, 3), _uniform, make_input=_inside_0_1),
    Case("BCEWithLogitsLoss", nn.BCEWithLogitsLoss, torch.nn.BCEWithLogitsLoss, (4, 3), _uniform),
    Case(
        "MultiTaskLoss",
        lambda: nn.Sequential(
            nn.Heads(nn.Linear(4, 3), nn.Linear(4, 2)),
            nn.MultiTaskLoss(nn.CrossEntropyLoss(), nn.CrossEntropyLoss(), weights=(2.0, 1.0)),
        ),
        None,
        (3, 4),
        _two_task_labels,
    ),
    Case(
        "Sequential",
        lambda: nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3), nn.Sigmoid()),
        lambda: torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3), torch.nn.Sigmoid()),
        (3, 4),
    ),
    Case(
        "MLP",
        lambda: models.MLP(4, 3, (6, 5), activation="lrelu"),
        lambda: torch.nn.Sequential(
            torch.nn.Linear(4, 6), torch.nn.LeakyReLU(), torch.nn.Linear(6, 5), torch.nn.LeakyReLU(), torch.nn.Linear(5, 3)
        ),
        (3, 4),
    ),
    Case(
        "Conv2d",
        lambda: nn.Conv2d(2, 3, kernel_size=(3, 2), stride=(2, 1), padding=1, dilation=(1, 2)),
        lambda: torch.nn.Conv2d(2, 3, kernel_size=(3, 2), stride=(2, 1), padding=1, dilation=(1, 2)),
        (2, 2, 6, 5),
    ),
    Case("MaxPool2d", lambda: nn.MaxPool2d(3, stride=2, padding=1), lambda: torch.nn.MaxPool2d(3, 2, 1), (2, 2, 7, 6)),
    Case("AvgPool2d", lambda: nn.AvgPool2d(2, stride=1, padding=1), lambda: torch.nn.AvgPool2d(2, 1, 1), (2, 2, 5, 4)),
    Case("AdaptiveMaxPool2d", lambda: nn.AdaptiveMaxPool2d((3, 2)), lambda: torch.nn.AdaptiveMaxPool2d((3, 2)), (2, 2, 7, 5)),
    Case("AdaptiveAvgPool2d", lambda: nn.AdaptiveAvgPool2d((3, 2)), lambda: torch.nn.AdaptiveAvgPool2d((3, 2)), (2, 2, 7, 5)),
    Case("BatchNorm1d", lambda: nn.BatchNorm1d(3), lambda: torch.nn.BatchNorm1d(3), (5, 3)),
    Case("BatchNorm2d", lambda: nn.BatchNorm2d(2), lambda: torch.nn.BatchNorm2d(2), (3, 2, 3, 3)),
    Case("BatchNorm2d (eval)", lambda: nn.BatchNorm2d(2), lambda: torch.nn.BatchNorm2d(2), (3, 2, 3, 3), train=False),
    Case("Dropout2d", lambda: nn.Dropout2d(0.5), None, (3, 4, 2, 2)),
    Case(
        "Residual",
        lambda: nn.Residual(nn.Sequential(nn.Linear(4, 4), nn.Tanh()), nn.Linear(4, 4)),
        lambda: _SumOfPaths(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh()), torch.nn.Linear(4, 4)),
        (3, 4),
    ),
    Case(
        "Heads",
        lambda: nn.Heads(nn.Linear(4, 3), nn.Linear(4, 2)),
        lambda: _TupleOfHeads(torch.nn.Linear(4, 3), torch.nn.Linear(4, 2)),
        (3, 4),
    ),
    Case("Upsample", lambda: nn.Upsample((2, 3)), lambda: torch.nn.Upsample(scale_factor=(2, 3)), (2, 2, 3, 2)),
    Case("Add", nn.Add, lambda: _TorchOp(lambda *xs: xs[0] + xs[1] + xs[2]), [(2, 3, 2)] * 3),
    Case("Multiply", nn.Multiply, lambda: _TorchOp(lambda *xs: xs[0] * xs[1] * xs[2]), [(2, 3, 2)] * 3),
    Case("Concat", nn.Concat, lambda: _TorchOp(lambda *xs: torch.cat(xs, dim=1)), [(2, 3, 2), (2, 1, 2)]),
    Case("Model (graph)", _small_unet, _SmallUNetTwin, (2, 2, 4, 4)),
    Case(
        "CNN",
        lambda: models.CNN((1, 6, 6), 3, channels=[2, 2], pool_every=2, hidden_dims=[4]),
        None,
        (2, 1, 6, 6),
    ),
    Case(
        "ResNet",
        lambda: models.ResNet((1, 6, 6), 3, channels=[2, 2, 2], pool_every=3, hidden_dims=[4], batchnorm=True, bottleneck=True),
        None,
        (2, 1, 6, 6),
    ),
]


def check(case, seed=0):
    """Runs one case and returns its Row."""
    torch.manual_seed(seed)
    layer = case.make_layer().train(case.train)
    if case.make_input is not None:
        x = case.make_input(case.input_shape)
    elif isinstance(case.input_shape, list):
        x = tuple(torch.randn(shape) for shape in case.input_shape)
    else:
        x = torch.randn(case.input_shape)
    y = case.make_target(case.input_shape) if case.make_target else None
    forward = None
    backward = max(gradient_errors(layer, x, y, seed=seed))
    if case.make_twin is not None:
        result = compare_to_module(layer, case.make_twin(), x, y, seed=seed)
        forward = result.pop("output")
        backward = max(backward, *result.values())
    finite = max(finite_difference_errors(layer, x, y, seed=seed))
    return Row(case.name, forward, backward, finite)


def run_all(seed=0):
    return [check(case, seed) for case in CASES]


def format_table(rows):
    header = f"{'layer':<26}{'forward':>12}{'backward':>12}{'finite diff':>13}  result"
    lines = [header, "-" * len(header)]
    for row in rows:
        forward = "-" if row.forward is None else f"{row.forward:.1e}"
        result = "ok" if row.passed else "FAIL"
        lines.append(f"{row.name:<26}{forward:>12}{row.backward:>12.1e}{row.finite_differences:>13.1e}  {result}")
    lines.append(
        f"forward: max |nnlab - torch.nn| (tol {FORWARD_TOL:g}); backward: worst relative error against "
        f"autograd, float32 (tol {BACKWARD_TOL:g}); finite diff: worst relative error, float64 "
        f"(tol {FINITE_DIFFERENCE_TOL:g})"
    )
    return "\n".join(lines)
