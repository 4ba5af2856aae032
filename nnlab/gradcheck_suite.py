"""Every nnlab layer against PyTorch, one row each: the forward pass against its
``torch.nn`` twin, the backward pass against autograd (through the twin and through
the layer's own forward), central finite differences in float64, and the layer
contract (``nnlab.grad_compare.check_layer``). Layers with a kink or a max are checked a
second time on a tie-heavy input (``grad_compare.tie_heavy``).

``nnlab gradcheck`` prints this table; ``nnlab gradcheck --layer pkg.module:Class`` the
same rows for a layer class of the user's (``check_user_layer``).
"""

import ast
import copy
import importlib
from typing import Callable, NamedTuple, Optional

import torch

from . import graph, models
from . import layers as nn
from .grad_compare import FINITE_DIFFERENCE_RTOL, RTOL, backward_before_forward, check_layer, tie_heavy
from .jacobians import same_values
from ._twins import Elementwise, SumOfPaths, TupleOfHeads

__all__ = [
    "CASES",
    "Case",
    "Row",
    "UserLayerError",
    "check",
    "check_user_layer",
    "format_table",
    "load_layer_class",
    "parse_layer_args",
    "parse_shape",
    "run_all",
]


class Case(NamedTuple):
    name: str
    make_layer: Callable
    make_twin: Optional[Callable]  # an independent torch.nn module, or None for nnlab.grad_compare.torch_twin's (if any)
    input_shape: tuple  # a list of shapes for a layer of several inputs (lists nest: an LSTM's (x, (h_0, c_0)))
    make_target: Optional[Callable] = None  # targets for losses, from the input shape
    train: bool = True
    make_input: Optional[Callable] = None  # inputs from the shape; torch.randn when None
    kinked: bool = False  # has a kink or a max: checked on a tie-heavy input too
    ties: bool = False  # this row's input is tie-heavy


class Row(NamedTuple):
    name: str
    forward: Optional[float]  # error of the outputs against the torch.nn twin; None without one
    backward: Optional[float]  # worst gradient error against autograd and the twin (input dtype)
    finite_differences: Optional[float]  # worst gradient error against finite differences, float64
    verdict: Optional[object]  # the grad_compare.Verdict; None when the check could not finish
    failure: str = ""  # what the layer raised when the check could not finish

    @property
    def passed(self):
        return not self.failure and self.verdict.passed


def _labels(shape):
    return torch.randint(0, shape[1], (shape[0],))


def _label_lists(shape):
    """Class-index lists (N, C) padded with -1, with entries after the first -1 (which count for nothing)."""
    return torch.randint(-1, shape[1], shape)


def _probabilities(shape):
    return torch.softmax(torch.randn(shape), dim=1)


def _uniform(shape):
    return torch.rand(shape)


def _inside_0_1(shape):
    """Probabilities away from 0 and 1, where finite differences stay in [0, 1]."""
    return 0.05 + 0.9 * torch.rand(shape)


def _positive(shape):
    """Inputs in [0.5, 1.5]: away from 0, where a power mean's gradient x^(p-1) is smooth."""
    return 0.5 + torch.rand(shape)


def _softmax_rows(shape):
    return torch.softmax(torch.randn(shape), dim=1)


def _two_task_labels(shape):
    """(N, 2) targets: column 0 for a 3-class head, column 1 for a 2-class head."""
    return torch.stack([torch.randint(0, 3, (shape[0],)), torch.randint(0, 2, (shape[0],))], dim=1)


def _small_unet():
    """A graph with a shared layer, a skip concatenated after down and up sampling."""
    x = graph.Input((2, 4, 4))
    shared = nn.Conv2d(2, 2, 3, padding=1)
    skip = nn.Tanh()(shared(x))
    down = nn.Tanh()(shared(nn.AvgPool2d(2)(skip)))
    joined = graph.Concat()(nn.Upsample(scale_factor=2)(down), skip)
    return graph.Model(x, graph.Multiply()(nn.Conv2d(4, 2, 1)(joined), x))


def _labels_some_ignored(shape):
    """Class labels (N, d1, ...) for scores (N, C, d1, ...), with -1 (the rows' ignore_index) at the first."""
    labels = torch.randint(0, shape[1], shape[:1] + shape[2:])
    labels.view(-1)[0] = -1
    return labels


def _signs(shape):
    """Labels +-1 for the first input's shape (a list of shapes for a layer of two inputs)."""
    shape = shape[0] if isinstance(shape, list) else shape
    return torch.randint(0, 2, shape) * 2.0 - 1


def _row_signs(shapes):
    """Labels +-1, one per row of the first input."""
    return _signs(shapes[0][:-1])


def _gaussian_inputs(shapes):
    """Means, targets, and variances in [0.5, 1.5] (away from the clamp at eps)."""
    return torch.randn(shapes[0]), torch.randn(shapes[1]), 0.5 + torch.rand(shapes[2])


def _log_probabilities(shape):
    return torch.log_softmax(torch.randn(shape), dim=-1)


def _class_weight(num_classes):
    return 0.5 + torch.rand(num_classes)


LOSS_OPTION_CASES = [
    Case(
        "CrossEntropyLoss (weight, ignore_index, label_smoothing)",
        lambda: nn.CrossEntropyLoss(_class_weight(5), ignore_index=-1, label_smoothing=0.2),
        None,
        (4, 5),
        _labels_some_ignored,
    ),
    Case(
        "CrossEntropyLoss (N, C, d1, d2), sum",
        lambda: nn.CrossEntropyLoss(reduction="sum", ignore_index=-1),
        None,
        (2, 3, 2, 2),
        _labels_some_ignored,
    ),
    Case(
        "CrossEntropyLoss (soft, weight, none)",
        lambda: nn.CrossEntropyLoss(_class_weight(5), reduction="none", label_smoothing=0.1),
        None,
        (4, 5),
        _probabilities,
    ),
    Case("NLLLoss (weight, none)", lambda: nn.NLLLoss(_class_weight(5), reduction="none"), None, (4, 5), _labels),
    Case(
        "ClippedCrossEntropyLoss (sum)",
        lambda: nn.ClippedCrossEntropyLoss(reduction="sum"),
        None,
        (4, 5),
        _labels,
        make_input=_softmax_rows,
    ),
    Case("MSELoss (sum)", lambda: nn.MSELoss(reduction="sum"), None, (4, 3), torch.randn),
    Case("L1Loss (none)", lambda: nn.L1Loss(reduction="none"), None, (4, 3), torch.randn),
    Case(
        "BCELoss (weight, none)",
        lambda: nn.BCELoss(_class_weight(3), reduction="none"),
        None,
        (4, 3),
        _uniform,
        make_input=_inside_0_1,
    ),
    Case(
        "BCEWithLogitsLoss (weight, pos_weight, sum)",
        lambda: nn.BCEWithLogitsLoss(_class_weight(3), reduction="sum", pos_weight=_class_weight(3) * 2),
        None,
        (4, 3),
        _uniform,
    ),
    Case("HuberLoss", lambda: nn.HuberLoss(delta=0.5), None, (4, 3), torch.randn, kinked=True),
    Case(
        "SmoothL1Loss (beta, none)",
        lambda: nn.SmoothL1Loss(reduction="none", beta=0.5),
        None,
        (4, 3),
        torch.randn,
        kinked=True,
    ),
    Case(
        "KLDivLoss (batchmean)",
        lambda: nn.KLDivLoss(reduction="batchmean"),
        None,
        (4, 3),
        _probabilities,
        make_input=_log_probabilities,
    ),
    Case(
        "KLDivLoss (log_target, sum)",
        lambda: nn.KLDivLoss(reduction="sum", log_target=True),
        None,
        (4, 3),
        _log_probabilities,
    ),
    Case("PoissonNLLLoss", nn.PoissonNLLLoss, None, (4, 3), lambda shape: torch.poisson(3 * torch.rand(shape))),
    Case(
        "PoissonNLLLoss (rates, full)",
        lambda: nn.PoissonNLLLoss(log_input=False, full=True),
        None,
        (4, 3),
        lambda shape: torch.poisson(3 * torch.rand(shape)),
        make_input=_positive,
    ),
    Case(
        "GaussianNLLLoss (full)",
        lambda: nn.GaussianNLLLoss(full=True),
        None,
        [(4, 3)] * 3,
        make_input=_gaussian_inputs,
    ),
    Case(
        "GaussianNLLLoss (one var per row, none)",
        lambda: nn.GaussianNLLLoss(reduction="none"),
        None,
        [(4, 3), (4, 3), (4,)],
        make_input=_gaussian_inputs,
    ),
    Case("SoftMarginLoss", nn.SoftMarginLoss, None, (4, 3), _signs),
    Case("MarginRankingLoss", lambda: nn.MarginRankingLoss(0.5), None, [(5,), (5,)], _signs, kinked=True),
    Case("HingeEmbeddingLoss", lambda: nn.HingeEmbeddingLoss(0.5, reduction="sum"), None, (4, 3), _signs, kinked=True),
    # Not checked on tie-heavy inputs: their zero rows make the cosine singular (gradients
    # near 1e5), where finite differences cannot judge.
    Case("CosineEmbeddingLoss", lambda: nn.CosineEmbeddingLoss(0.1), None, [(4, 3), (4, 3)], _row_signs),
    Case(
        "MultiMarginLoss (p=2, weight)",
        lambda: nn.MultiMarginLoss(2, 0.5, _class_weight(5)),
        None,
        (4, 5),
        _labels,
        kinked=True,
    ),
    Case("MultiMarginLoss (none)", lambda: nn.MultiMarginLoss(reduction="none"), None, (4, 5), _labels, kinked=True),
    Case(
        "MultiLabelSoftMarginLoss (weight)",
        lambda: nn.MultiLabelSoftMarginLoss(_class_weight(3)),
        None,
        (4, 3),
        lambda shape: torch.randint(0, 2, shape).float(),
    ),
]


def _attention_inputs_with_padding(shapes):
    """Query, key and value of ``shapes`` (time-major, batch of 2) and a boolean
    key_padding_mask (N, S) hiding the last two keys of sample 0 and the second of sample 1."""
    query, key, value = (torch.randn(shape) for shape in shapes)
    mask = torch.zeros(key.shape[1], key.shape[0], dtype=torch.bool)
    mask[0, -2:] = True
    mask[1, 1] = True
    return query, key, value, mask


def _indices(shape):
    """Indices into an embedding of 6 rows: 0, 1, 2, 3, 0, 1, ... (repeated rows add their
    gradients; rows 4 and 5 get none)."""
    return torch.arange(torch.Size(shape).numel()).remainder(4).reshape(shape)


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
    Case("ReLU", nn.ReLU, torch.nn.ReLU, (2, 3, 4), kinked=True),
    Case("LeakyReLU", lambda: nn.LeakyReLU(0.1), lambda: torch.nn.LeakyReLU(0.1), (2, 3, 4), kinked=True),
    Case("Sigmoid", nn.Sigmoid, torch.nn.Sigmoid, (2, 3, 4)),
    Case("Tanh", nn.Tanh, torch.nn.Tanh, (2, 3, 4)),
    Case("Softmax", lambda: nn.Softmax(dim=1), lambda: torch.nn.Softmax(dim=1), (3, 5), kinked=True),
    Case("Dropout", lambda: nn.Dropout(0.4), None, (4, 6)),
    Case("Flatten", nn.Flatten, torch.nn.Flatten, (2, 3, 2, 2)),
    Case("CrossEntropyLoss", nn.CrossEntropyLoss, torch.nn.CrossEntropyLoss, (4, 5), _labels, kinked=True),
    Case("CrossEntropyLoss (soft)", nn.CrossEntropyLoss, torch.nn.CrossEntropyLoss, (4, 5), _probabilities),
    Case("NLLLoss", nn.NLLLoss, torch.nn.NLLLoss, (4, 5), _labels),
    Case("ClippedCrossEntropyLoss", nn.ClippedCrossEntropyLoss, None, (4, 5), _labels, make_input=_softmax_rows),
    Case("MSELoss", nn.MSELoss, torch.nn.MSELoss, (4, 3), torch.randn),
    Case("L1Loss", nn.L1Loss, torch.nn.L1Loss, (4, 3), torch.randn),
    Case("BCELoss", nn.BCELoss, torch.nn.BCELoss, (4, 3), _uniform, make_input=_inside_0_1),
    Case("BCEWithLogitsLoss", nn.BCEWithLogitsLoss, torch.nn.BCEWithLogitsLoss, (4, 3), _uniform, kinked=True),
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
        kinked=True,
    ),
    Case(
        "Conv2d",
        lambda: nn.Conv2d(2, 3, kernel_size=(3, 2), stride=(2, 1), padding=1, dilation=(1, 2)),
        lambda: torch.nn.Conv2d(2, 3, kernel_size=(3, 2), stride=(2, 1), padding=1, dilation=(1, 2)),
        (2, 2, 6, 5),
    ),
    Case(
        "MaxPool2d", lambda: nn.MaxPool2d(3, stride=2, padding=1), lambda: torch.nn.MaxPool2d(3, 2, 1), (2, 2, 7, 6), kinked=True
    ),
    Case("AvgPool2d", lambda: nn.AvgPool2d(2, stride=1, padding=1), lambda: torch.nn.AvgPool2d(2, 1, 1), (2, 2, 5, 4)),
    Case(
        "AdaptiveMaxPool2d",
        lambda: nn.AdaptiveMaxPool2d((3, 2)),
        lambda: torch.nn.AdaptiveMaxPool2d((3, 2)),
        (2, 2, 7, 5),
        kinked=True,
    ),
    Case("AdaptiveAvgPool2d", lambda: nn.AdaptiveAvgPool2d((3, 2)), lambda: torch.nn.AdaptiveAvgPool2d((3, 2)), (2, 2, 7, 5)),
    *[
        Case(name, lambda make=make: make(nn), lambda make=make: make(torch.nn), shape, kinked=kinked)
        for name, make, shape, kinked in [
            ("Conv1d (groups, reflect)", lambda m: m.Conv1d(4, 6, 3, 2, 2, 1, 2, padding_mode="reflect"), (2, 4, 7), False),
            ("Conv2d (same, replicate)", lambda m: m.Conv2d(2, 3, (2, 3), padding="same", padding_mode="replicate"), (2, 2, 5, 4), False),
            ("Conv2d (depthwise, circular)", lambda m: m.Conv2d(3, 6, 3, 2, 1, groups=3, padding_mode="circular"), (2, 3, 5, 5), False),
            ("ConvTranspose1d", lambda m: m.ConvTranspose1d(4, 2, 3, 2, 1, 1, 2, dilation=2), (2, 4, 4), False),
            ("ConvTranspose2d", lambda m: m.ConvTranspose2d(2, 3, (3, 2), (2, 1), (1, 0), (1, 0)), (2, 2, 3, 4), False),
            ("MaxPool1d (ceil_mode, dilation)", lambda m: m.MaxPool1d(3, 2, 1, 2, ceil_mode=True), (2, 3, 8), True),
            ("MaxPool2d (ceil_mode)", lambda m: m.MaxPool2d(3, 2, 1, ceil_mode=True), (2, 2, 6, 5), True),
            ("AvgPool1d (ceil_mode, excl. padding)", lambda m: m.AvgPool1d(3, 2, 1, True, False), (2, 3, 8), False),
            ("AvgPool2d (ceil, divisor_override)", lambda m: m.AvgPool2d(3, 2, 1, True, True, 4), (2, 2, 6, 5), False),
            ("AdaptiveMaxPool1d", lambda m: m.AdaptiveMaxPool1d(3), (2, 3, 7), True),
            ("AdaptiveAvgPool1d", lambda m: m.AdaptiveAvgPool1d(3), (2, 3, 7), False),
            ("LPPool2d", lambda m: m.LPPool2d(2, 2, ceil_mode=True), (2, 2, 5, 5), False),
        ]
    ],
    Case("LPPool1d", lambda: nn.LPPool1d(3, 2, 1), lambda: torch.nn.LPPool1d(3, 2, 1), (2, 3, 7), make_input=_positive),
    Case("BatchNorm1d", lambda: nn.BatchNorm1d(3), lambda: torch.nn.BatchNorm1d(3), (5, 3)),
    Case("BatchNorm2d", lambda: nn.BatchNorm2d(2), lambda: torch.nn.BatchNorm2d(2), (3, 2, 3, 3)),
    Case("BatchNorm2d (eval)", lambda: nn.BatchNorm2d(2), lambda: torch.nn.BatchNorm2d(2), (3, 2, 3, 3), train=False),
    Case(
        "BatchNorm1d (no affine, no stats)",
        lambda: nn.BatchNorm1d(3, affine=False, track_running_stats=False),
        lambda: torch.nn.BatchNorm1d(3, affine=False, track_running_stats=False),
        (5, 3),
        train=False,
    ),
    Case("BatchNorm3d", lambda: nn.BatchNorm3d(2), lambda: torch.nn.BatchNorm3d(2), (2, 2, 2, 3, 2)),
    Case("LayerNorm", lambda: nn.LayerNorm((3, 4)), lambda: torch.nn.LayerNorm((3, 4)), (2, 3, 4)),
    Case(
        "LayerNorm (no affine)",
        lambda: nn.LayerNorm(4, elementwise_affine=False),
        lambda: torch.nn.LayerNorm(4, elementwise_affine=False),
        (2, 3, 4),
    ),
    Case("RMSNorm", lambda: nn.RMSNorm(4), lambda: torch.nn.RMSNorm(4), (2, 3, 4)),
    Case("GroupNorm", lambda: nn.GroupNorm(2, 4), lambda: torch.nn.GroupNorm(2, 4), (2, 4, 3, 3)),
    Case(
        "InstanceNorm2d (affine, stats)",
        lambda: nn.InstanceNorm2d(2, affine=True, track_running_stats=True),
        lambda: torch.nn.InstanceNorm2d(2, affine=True, track_running_stats=True),
        (3, 2, 3, 3),
    ),
    Case(
        "InstanceNorm2d (affine, stats, eval)",
        lambda: nn.InstanceNorm2d(2, affine=True, track_running_stats=True),
        lambda: torch.nn.InstanceNorm2d(2, affine=True, track_running_stats=True),
        (3, 2, 3, 3),
        train=False,
    ),
    Case("InstanceNorm1d", lambda: nn.InstanceNorm1d(3), lambda: torch.nn.InstanceNorm1d(3), (2, 3, 5)),
    Case(
        "LocalResponseNorm",
        lambda: nn.LocalResponseNorm(3, alpha=0.5, beta=0.75, k=2.0),
        lambda: torch.nn.LocalResponseNorm(3, alpha=0.5, beta=0.75, k=2.0),
        (2, 5, 3, 2),
    ),
    Case("RNN", lambda: nn.RNN(3, 4), lambda: torch.nn.RNN(3, 4), (5, 2, 3)),
    Case(
        "RNN (relu, 2 layers, 2 ways)",
        lambda: nn.RNN(3, 4, 2, "relu", bidirectional=True),
        lambda: torch.nn.RNN(3, 4, 2, "relu", bidirectional=True),
        (5, 2, 3),
        kinked=True,
    ),
    Case("GRU", lambda: nn.GRU(3, 4), lambda: torch.nn.GRU(3, 4), (5, 2, 3)),
    Case(
        "GRU (2 layers, 2 ways, no bias)",
        lambda: nn.GRU(3, 4, 2, bias=False, bidirectional=True),
        lambda: torch.nn.GRU(3, 4, 2, bias=False, bidirectional=True),
        (5, 2, 3),
    ),
    Case("RNN (initial state)", lambda: nn.RNN(3, 4), lambda: torch.nn.RNN(3, 4), [(5, 2, 3), (1, 2, 4)]),
    Case("GRU (initial state)", lambda: nn.GRU(3, 4), lambda: torch.nn.GRU(3, 4), [(5, 2, 3), (1, 2, 4)]),
    Case("LSTM", lambda: nn.LSTM(3, 4), lambda: torch.nn.LSTM(3, 4), (5, 2, 3)),
    Case("LSTM (initial state)", lambda: nn.LSTM(3, 4), lambda: torch.nn.LSTM(3, 4), [(5, 2, 3), [(1, 2, 4), (1, 2, 4)]]),
    Case(
        "LSTM (2 layers, 2 ways, initial state)",
        lambda: nn.LSTM(2, 3, 2, bidirectional=True),
        lambda: torch.nn.LSTM(2, 3, 2, bidirectional=True),
        [(3, 2, 2), [(4, 2, 3), (4, 2, 3)]],
    ),
    Case(
        "LSTM (2 layers, 2 ways, batch_first)",
        lambda: nn.LSTM(2, 3, 2, batch_first=True, bidirectional=True),
        lambda: torch.nn.LSTM(2, 3, 2, batch_first=True, bidirectional=True),
        (2, 3, 2),
    ),
    Case("RNNCell", lambda: nn.RNNCell(3, 4), lambda: torch.nn.RNNCell(3, 4), (2, 3)),
    Case("RNNCell (state)", lambda: nn.RNNCell(3, 4), lambda: torch.nn.RNNCell(3, 4), [(2, 3), (2, 4)]),
    Case("GRUCell (state)", lambda: nn.GRUCell(3, 4), lambda: torch.nn.GRUCell(3, 4), [(2, 3), (2, 4)]),
    Case("LSTMCell", lambda: nn.LSTMCell(3, 4), lambda: torch.nn.LSTMCell(3, 4), (2, 3)),
    Case("LSTMCell (state)", lambda: nn.LSTMCell(3, 4), lambda: torch.nn.LSTMCell(3, 4), [(2, 3), [(2, 4), (2, 4)]]),
    Case("GRUCell", lambda: nn.GRUCell(3, 4), lambda: torch.nn.GRUCell(3, 4), (2, 3)),
    Case("Dropout2d", lambda: nn.Dropout2d(0.5), None, (3, 4, 2, 2)),
    Case(
        "Residual",
        lambda: nn.Residual(nn.Sequential(nn.Linear(4, 4), nn.Tanh()), nn.Linear(4, 4)),
        lambda: SumOfPaths(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh()), torch.nn.Linear(4, 4)),
        (3, 4),
    ),
    Case(
        "Heads",
        lambda: nn.Heads(nn.Linear(4, 3), nn.Linear(4, 2)),
        lambda: TupleOfHeads(torch.nn.Linear(4, 3), torch.nn.Linear(4, 2)),
        (3, 4),
    ),
    Case("Upsample", lambda: nn.Upsample(scale_factor=(2, 3)), lambda: torch.nn.Upsample(scale_factor=(2, 3)), (2, 2, 3, 2)),
    Case("Add", nn.Add, lambda: Elementwise(lambda *xs: xs[0] + xs[1] + xs[2]), [(2, 3, 2)] * 3),
    Case("Multiply", nn.Multiply, lambda: Elementwise(lambda *xs: xs[0] * xs[1] * xs[2]), [(2, 3, 2)] * 3),
    Case("Concat", nn.Concat, lambda: Elementwise(lambda *xs: torch.cat(xs, dim=1)), [(2, 3, 2), (2, 1, 2)]),
    Case("Model (graph)", _small_unet, _SmallUNetTwin, (2, 2, 4, 4)),
    Case(
        "ScaledDotProductAttention",
        nn.ScaledDotProductAttention,
        lambda: Elementwise(torch.nn.functional.scaled_dot_product_attention),
        [(2, 2, 3, 4), (2, 2, 5, 4), (2, 2, 5, 3)],
    ),
    Case("MultiheadAttention", lambda: nn.MultiheadAttention(4, 2), None, [(3, 2, 4), (5, 2, 4), (5, 2, 4)]),
    Case(
        "MultiheadAttention (key_padding_mask)",
        lambda: nn.MultiheadAttention(4, 2),
        None,
        [(3, 2, 4), (5, 2, 4), (5, 2, 4)],
        make_input=_attention_inputs_with_padding,
    ),
    Case(
        "MultiheadAttention (kdim, vdim)",
        lambda: nn.MultiheadAttention(4, 2, kdim=3, vdim=5, batch_first=True),
        None,
        [(2, 3, 4), (2, 5, 3), (2, 5, 5)],
    ),
    Case(
        "TransformerEncoderLayer",
        lambda: nn.TransformerEncoderLayer(4, 2, dim_feedforward=6, dropout=0.0),
        None,
        (3, 2, 4),
        kinked=True,
    ),
    Case(
        "TransformerEncoder (gelu, norm)",
        lambda: nn.TransformerEncoder(
            nn.TransformerEncoderLayer(4, 2, 6, 0.0, "gelu", norm_first=True), 1, norm=nn.LayerNorm(4)
        ),
        None,
        (3, 2, 4),
    ),
    Case(
        "TransformerDecoderLayer",
        lambda: nn.TransformerDecoderLayer(4, 2, dim_feedforward=6, dropout=0.0),
        None,
        [(3, 2, 4), (5, 2, 4)],
        kinked=True,
    ),
    Case(
        "TransformerDecoder",
        lambda: nn.TransformerDecoder(nn.TransformerDecoderLayer(4, 2, 6, 0.0, batch_first=True), 1),
        None,
        [(2, 3, 4), (2, 5, 4)],
    ),
    Case("Embedding", lambda: nn.Embedding(6, 3), lambda: torch.nn.Embedding(6, 3), (2, 3), make_input=_indices),
    Case("SinusoidalPositionalEncoding", lambda: nn.SinusoidalPositionalEncoding(4, max_len=8), None, (3, 2, 4)),
    Case("LearnedPositionalEncoding", lambda: nn.LearnedPositionalEncoding(8, 4), None, (3, 2, 4)),
    Case(
        "Conv2d -> ReLU -> MaxPool2d",
        lambda: nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        lambda: torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2)),
        (2, 1, 8, 8),
        kinked=True,
    ),
    Case(
        "CNN",
        lambda: models.CNN((1, 6, 6), 3, channels=[2, 2], pool_every=2, hidden_dims=[4]),
        None,
        (2, 1, 6, 6),
        kinked=True,
    ),
    Case(
        "ResNet",
        lambda: models.ResNet((1, 6, 6), 3, channels=[2, 2, 2], pool_every=3, hidden_dims=[4], batchnorm=True, bottleneck=True),
        None,
        (2, 1, 6, 6),
        kinked=True,
    ),
]


def _namesake(label, name, args, input_shape, kinked=False, kwargs=None):
    """A row for the nnlab layer ``name`` against the torch.nn module of the same name,
    both built from the same arguments."""
    kwargs = kwargs or {}
    return Case(
        label,
        lambda: getattr(nn, name)(*args, **kwargs),
        lambda: getattr(torch.nn, name)(*args, **kwargs),
        input_shape,
        kinked=kinked,
    )


CASES += [
    _namesake("ELU", "ELU", (0.5,), (2, 3, 4), kinked=True),
    _namesake("CELU", "CELU", (2.0,), (2, 3, 4), kinked=True),
    _namesake("SELU", "SELU", (), (2, 3, 4), kinked=True),
    _namesake("GELU", "GELU", (), (2, 3, 4)),
    _namesake("GELU (tanh)", "GELU", ("tanh",), (2, 3, 4)),
    _namesake("SiLU", "SiLU", (), (2, 3, 4)),
    _namesake("Mish", "Mish", (), (2, 3, 4)),
    _namesake("Softplus", "Softplus", (2.0, 1.0), (2, 3, 4)),
    _namesake("Softsign", "Softsign", (), (2, 3, 4)),
    _namesake("Hardtanh", "Hardtanh", (-0.5, 1.0), (2, 3, 4), kinked=True),
    _namesake("ReLU6", "ReLU6", (), (2, 3, 4), kinked=True),
    _namesake("Hardswish", "Hardswish", (), (2, 3, 4), kinked=True),
    _namesake("Hardsigmoid", "Hardsigmoid", (), (2, 3, 4), kinked=True),
    _namesake("Hardshrink", "Hardshrink", (0.5,), (2, 3, 4), kinked=True),
    _namesake("Softshrink", "Softshrink", (1.0,), (2, 3, 4), kinked=True),
    _namesake("Tanhshrink", "Tanhshrink", (), (2, 3, 4)),
    _namesake("Threshold", "Threshold", (0.1, -2.0), (2, 3, 4), kinked=True),
    _namesake("LogSigmoid", "LogSigmoid", (), (2, 3, 4)),
    _namesake("LogSoftmax", "LogSoftmax", (1,), (2, 3, 4), kinked=True),
    _namesake("Softmin", "Softmin", (0,), (2, 3, 4), kinked=True),
    _namesake("Softmax (dim 2)", "Softmax", (2,), (2, 3, 4), kinked=True),
    _namesake("Softmax2d", "Softmax2d", (), (2, 3, 2, 2), kinked=True),
    _namesake("PReLU", "PReLU", (), (2, 3, 4), kinked=True),
    _namesake("PReLU (per channel)", "PReLU", (3, 0.1), (2, 3, 4), kinked=True),
    _namesake("GLU", "GLU", (1,), (2, 4, 3)),
    _namesake("LeakyReLU (negative_slope)", "LeakyReLU", (-0.2,), (2, 3, 4), kinked=True),
    _namesake("ZeroPad1d", "ZeroPad1d", ((2, -1),), (2, 3, 4)),
    _namesake("ZeroPad2d", "ZeroPad2d", ((1, 0, 2, 1),), (2, 2, 3, 3)),
    _namesake("ZeroPad3d", "ZeroPad3d", (1,), (1, 2, 2, 2)),
    _namesake("ConstantPad1d", "ConstantPad1d", (2, 1.5), (2, 3, 4)),
    _namesake("ConstantPad2d", "ConstantPad2d", ((1, -1, 0, 2), -0.5), (2, 2, 3, 3)),
    _namesake("ConstantPad3d", "ConstantPad3d", ((1, 0, 0, 1, 1, 0), 2.0), (1, 2, 2, 2)),
    _namesake("ReflectionPad1d", "ReflectionPad1d", ((3, 1),), (2, 3, 4)),
    _namesake("ReflectionPad2d", "ReflectionPad2d", ((2, 0, 1, 2),), (2, 2, 3, 3)),
    _namesake("ReflectionPad3d", "ReflectionPad3d", (1,), (1, 2, 2, 2, 3)),
    _namesake("ReplicationPad1d", "ReplicationPad1d", ((3, 1),), (2, 3, 4)),
    _namesake("ReplicationPad2d", "ReplicationPad2d", ((2, 0, -1, 2),), (2, 2, 3, 3)),
    _namesake("ReplicationPad3d", "ReplicationPad3d", (1,), (1, 2, 2, 2, 3)),
    _namesake("CircularPad1d", "CircularPad1d", ((3, 1),), (2, 3, 4)),
    _namesake("CircularPad2d", "CircularPad2d", ((2, -1, 1, 3),), (2, 2, 3, 3)),
    _namesake("CircularPad3d", "CircularPad3d", (1,), (1, 2, 2, 2, 3)),
    _namesake("Bilinear", "Bilinear", (3, 4, 2), [(5, 3), (5, 4)]),
    _namesake("Identity", "Identity", (), (2, 3)),
    _namesake("Unflatten", "Unflatten", (1, (2, -1)), (2, 6, 2)),
]
# torch.nn layers added with issue 24's last group (nnlab.layers.norm, .shuffle, .distance, .upsample, .fold).
CASES += [
    Case("Dropout1d", lambda: nn.Dropout1d(0.5), None, (3, 4, 5)),
    Case("Dropout3d", lambda: nn.Dropout3d(0.5), None, (2, 3, 2, 2, 2)),
    _namesake("PixelShuffle", "PixelShuffle", (2,), (2, 8, 2, 3)),
    _namesake("PixelUnshuffle", "PixelUnshuffle", (2,), (2, 2, 4, 6)),
    _namesake("ChannelShuffle", "ChannelShuffle", (3,), (2, 6, 2, 2)),
    _namesake("CosineSimilarity", "CosineSimilarity", (), [(4, 3, 2), (4, 3, 1)]),
    _namesake("PairwiseDistance", "PairwiseDistance", (), [(4, 3), (3,)]),
    _namesake("PairwiseDistance (p=1, keepdim)", "PairwiseDistance", (1.0, 1e-6, True), [(4, 3), (4, 3)], kinked=True),
    Case("Upsample (nearest, scale 1.5)", lambda: nn.Upsample(scale_factor=1.5), lambda: torch.nn.Upsample(scale_factor=1.5), (2, 2, 3, 2)),
    Case(
        "Upsample (bilinear, size)",
        lambda: nn.Upsample(mode="bilinear", size=(5, 4)),
        lambda: torch.nn.Upsample((5, 4), mode="bilinear"),
        (2, 2, 3, 2),
    ),
    Case(
        "Upsample (linear, align_corners)",
        lambda: nn.Upsample(scale_factor=2.5, mode="linear", align_corners=True),
        lambda: torch.nn.Upsample(scale_factor=2.5, mode="linear", align_corners=True),
        (2, 3, 4),
    ),
    _namesake("UpsamplingNearest2d", "UpsamplingNearest2d", (None, 2), (2, 2, 3, 2)),
    _namesake("UpsamplingBilinear2d", "UpsamplingBilinear2d", ((4, 5),), (2, 2, 3, 2)),
    _namesake("TripletMarginLoss", "TripletMarginLoss", (), [(4, 3), (4, 3), (4, 3)]),
    _namesake("TripletMarginLoss (p=1, swap, sum)", "TripletMarginLoss", (), [(4, 3), (1, 3), (4, 3)],
              kwargs=dict(margin=2.0, p=1.0, swap=True, reduction="sum")),
    _namesake("Unfold", "Unfold", ((2, 3),), (2, 2, 4, 5), kwargs=dict(dilation=(1, 2), padding=1, stride=(2, 1))),
    _namesake("Fold", "Fold", ((4, 5), (2, 3)), (2, 12, 6), kwargs=dict(padding=(0, 1), stride=(2, 2))),
    Case("MultiLabelMarginLoss", nn.MultiLabelMarginLoss, None, (4, 5), _label_lists, kinked=True),
    Case("RReLU", lambda: nn.RReLU(0.1, 0.4), None, (2, 3, 4)),
    Case("RReLU (eval)", lambda: nn.RReLU(0.1, 0.4), None, (2, 3, 4), train=False, kinked=True),
    Case("AlphaDropout", lambda: nn.AlphaDropout(0.3), None, (3, 4)),
    Case("FeatureAlphaDropout", lambda: nn.FeatureAlphaDropout(0.3), None, (2, 3, 2, 2)),
]
# Layers with a kink or a max once more on a tie-heavy input (constant regions, integer
# values, exact zeros), where ties decide where gradients go.
CASES += LOSS_OPTION_CASES
CASES += [case._replace(name=f"{case.name} (ties)", ties=True) for case in CASES if case.kinked]


def _input(shape, ties, seed, dtype=torch.float32):
    """A random or a tie-heavy input of ``shape``; a tuple of them for a list of shapes,
    nested as the lists nest."""
    if isinstance(shape, list):
        return tuple(_input(one, ties, seed + index, dtype) for index, one in enumerate(shape))
    return tie_heavy(shape, seed, dtype) if ties else torch.randn(shape, dtype=dtype)


def check(case, seed=0):
    """Runs one case and returns its Row."""
    torch.manual_seed(seed)
    layer = case.make_layer().train(case.train)
    if case.make_input is not None:
        x = case.make_input(case.input_shape)
    else:
        x = _input(case.input_shape, case.ties, seed)
    y = case.make_target(case.input_shape) if case.make_target else None
    twin = case.make_twin() if case.make_twin else "auto"
    verdict = check_layer(layer, x, y, seed=seed, twin=twin, finite_differences=True)
    breach = backward_before_forward(case.make_layer().train(case.train), x, y)
    if breach:
        verdict.add_problem(None, breach)
    return _row(case.name, verdict)


def _row(name, verdict):
    forward = verdict.comparison("torch.nn twin (forward)")
    backward = [c.worst.error for c in verdict.comparisons if c.reference in ("autograd", "torch.nn twin")]
    finite = verdict.comparison("finite differences")
    return Row(
        name,
        None if forward is None else forward.worst.error,
        max(backward, default=None),
        None if finite is None else finite.worst.error,
        verdict,
    )


def run_all(seed=0):
    return [check(case, seed) for case in CASES]


def _cell(value, width):
    return f"{'-' if value is None else f'{value:.1e}':>{width}}"


def format_table(rows, details=False):
    """The rows as a table; below it, each failing row's verdict (every row's with
    ``details``), which names the contract breaches and the element of largest error."""
    width = max([34] + [len(row.name) + 2 for row in rows])
    header = f"{'layer':<{width}}{'forward':>10}{'backward':>10}{'finite diff':>13}  result"
    lines = [header, "-" * len(header)]
    for row in rows:
        result = "ok" if row.passed else "FAIL"
        cells = _cell(row.forward, 10) + _cell(row.backward, 10) + _cell(row.finite_differences, 13)
        lines.append(f"{row.name:<{width}}{cells}  {result}")
    lines.append(
        "errors are max |nnlab - reference| / (s + |reference|), s the largest |reference| entry of each tensor "
        "(no less than the reference's own error / tolerance); "
        f"forward and backward against torch.nn and autograd (tolerance {RTOL[torch.float32]:g} in float32, "
        f"{RTOL[torch.float64]:g} in float64), finite diff in float64 (tolerance {FINITE_DIFFERENCE_RTOL:g})"
    )
    for row in rows:
        if details or not row.passed:
            lines.append("")
            verdict = [row.failure] if row.failure else row.verdict.details()
            lines.append(f"{row.name}: {'ok' if row.passed else 'FAIL'}")
            lines += [f"  {line}" for line in verdict]
    return "\n".join(lines)


# A layer of the user's ---------------------------------------------------------------------


class UserLayerError(ValueError):
    """A --layer, --args or --input-shape that cannot be used: a one-line explanation."""


def load_layer_class(spec):
    """The class named by ``package.module:ClassName``; it must be an nnlab Layer."""
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name.isidentifier():
        raise UserLayerError(f"--layer {spec!r}: expected package.module:ClassName")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # whatever importing the user's module raised
        raise UserLayerError(f"--layer {spec!r}: cannot import {module_name}: {type(error).__name__}: {error}")
    cls = getattr(module, class_name, None)
    if cls is None:
        raise UserLayerError(f"--layer {spec!r}: module {module_name} has no {class_name}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Layer)):
        raise UserLayerError(f"--layer {spec!r}: {class_name} is not a subclass of nnlab.layers.Layer")
    return cls


def parse_layer_args(text):
    """(args, kwargs) from what one would write between the parentheses of
    ``ClassName(...)``, e.g. ``"3, 16, kernel_size=3"``: Python literals only (numbers,
    strings, tuples, lists, dicts, True/False/None), read with ast.literal_eval, never eval."""
    try:
        call = ast.parse(f"f({text})", mode="eval").body
        if not isinstance(call, ast.Call) or any(isinstance(a, ast.Starred) for a in call.args):
            raise ValueError("not plain arguments")
        if any(keyword.arg is None for keyword in call.keywords):
            raise ValueError("** is not allowed")
        args = tuple(ast.literal_eval(arg) for arg in call.args)
        kwargs = {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords}
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as error:
        raise UserLayerError(
            f"--args {text!r}: expected constructor arguments made of Python literals, such as "
            f"'3, 16, kernel_size=3' ({type(error).__name__}: {error})"
        )
    return args, kwargs


def parse_shape(text):
    """``"2,3,8,8"`` as (2, 3, 8, 8): one or more integers >= 1."""
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise UserLayerError(f"--input-shape {text!r}: expected integers >= 1 separated by commas, such as 2,3,8,8")
    return shape


# Finite differences of a user's layer at this many entries of each tensor, drawn at random:
# every entry of a (16, 3, 32, 32) input would take two forward passes each.
USER_LAYER_ENTRIES = 256


def check_user_layer(cls, args, kwargs, input_shape, dtype=torch.float32, seed=0, progress=None):
    """Rows for ``cls(*args, **kwargs)`` on a random and on a tie-heavy input of
    ``input_shape``: autograd through its forward, finite differences in float64 (at
    ``USER_LAYER_ENTRIES`` entries of each tensor drawn at random, all of a smaller one)
    and the contract (the first row also checks that backward before forward raises).
    In training mode, and in eval mode too when the two modes differ (in the output or
    in the gradients, for the same input, seed and upstream gradient): those rows' names
    end in ", eval mode". ``progress``, if given, is called with one line per step.
    UserLayerError when the class cannot be built or rejects an input of that shape."""
    layer = _build(cls, args, kwargs, dtype)
    _probe_forward(layer, torch.randn(input_shape, dtype=dtype))
    report = progress or (lambda line: None)
    modes = [True] + ([False] if _modes_differ(cls, args, kwargs, dtype, input_shape, seed) else [])
    rows = []
    for training in modes:
        for ties in (False, True):
            name = f"{cls.__name__} ({'tie-heavy' if ties else 'random'} input{'' if training else ', eval mode'})"
            report(f"{name}: the contract")
            torch.manual_seed(seed)
            x = _input(input_shape, ties, seed, dtype)
            rows.append(_user_row(name, cls, args, kwargs, dtype, x, seed, training, first=not ties, report=report))
    return rows


def _user_row(name, cls, args, kwargs, dtype, x, seed, training, first, report):
    """One row of ``check_user_layer``: the check of a fresh layer in the mode given."""
    def fresh():
        return _build(cls, args, kwargs, dtype).train(training)

    def step(line):
        report(f"{name}: {line}")

    try:
        verdict = check_layer(fresh(), x, seed=seed, finite_differences=True, entries=USER_LAYER_ENTRIES, progress=step)
        breach = backward_before_forward(fresh(), x) if first else None
    except Exception as error:  # the user's code: what it raised is the result
        return Row(name, None, None, None, None, f"the check stopped: {type(error).__name__}: {error}")
    if breach:
        verdict.add_problem(None, breach)
    return _row(name, verdict)


def _modes_differ(cls, args, kwargs, dtype, input_shape, seed):
    """True when a layer in eval mode gives another output or other gradients than in
    training mode (fresh layers built alike, the same input, seed and upstream
    gradient), or when either raises (the check of each mode then says what)."""
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    results = []
    with torch.random.fork_rng(devices=[]):
        for training in (True, False):
            torch.manual_seed(seed)
            try:
                layer = _build(cls, args, kwargs, dtype).train(training)
                out = layer(x.clone())
                dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
                dx = layer.backward(dout)
                results.append([out, dx] + [grad for _, grad in layer.params()])
            except Exception:  # the user's code: the check of each mode reports what it raises
                return True
    return not all(_same(a, b) for a, b in zip(*results))


def _same(a, b):
    """Both None, or tensors of the same shape and values."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return same_values(a, b)
    return a is None and b is None


def _build(cls, args, kwargs, dtype):
    try:
        layer = cls(*args, **kwargs)
    except Exception as error:  # the user's constructor: what it raised, on one line
        call = ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()])
        raise UserLayerError(f"{cls.__name__}({call}) raised {type(error).__name__}: {error}")
    return layer.to(dtype=dtype)


def _probe_forward(layer, x):
    """A forward on a copy of the layer first: if it cannot run on an input of the shape
    given, that is said on one line as a usage error, not reported as a failed check."""
    try:
        with torch.random.fork_rng(devices=[]):
            copy.deepcopy(layer)(x)
    except Exception as error:  # the user's forward: what it raised, on one line
        shape = ",".join(str(n) for n in x.shape)
        raise UserLayerError(f"--input-shape {shape}: {type(layer).__name__} rejects it: {type(error).__name__}: {error}")
