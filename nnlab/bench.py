"""nnlab against PyTorch on the same work: time ratios and memory ratios.

Time: every case runs an nnlab callable and its torch twin (torch.nn modules + autograd)
on the same tensors. After a warm-up the two are timed alternately in one process
(nnlab, torch, nnlab, torch, ...), so that drifting machine load hits both alike, and
each side's median over ``--repeats`` runs is reported with the ratio nnlab / torch and
the geometric mean of the ratios. The training steps run through the trainers
(``LayerTrainer`` against ``TorchTrainer``, cross-entropy and SGD), so nnlab's step is
the one ``fit`` takes, input gradient skipped as torch skips it for data.

Memory: for each model of the training steps, and for each grouped, depthwise and
transposed convolution alone (input gradient wanted), the bytes kept between forward and
backward. nnlab's: every tensor the model's layers and the loss hold after forward
(their caches), each storage counted once. torch's: every tensor autograd saves for
backward during the same forward (``torch.autograd.graph.saved_tensors_hooks``), each
storage counted once. Parameters, gradients and buffers are left out on both sides.

``--course`` times instead the workloads of the courses, where per-call overhead decides:
a full training step (forward, cross-entropy, backward, Adam; nnlab's model told its input
needs no gradient) of a digits MLP, a digits CNN and a CIFAR-size CNN at batch 64 on one
thread, the CIFAR-size CNN at batch 256 on two, each against the same torch.nn model with
torch.optim.Adam; and the wall time of ``nnlab train`` against a plain PyTorch script
training the same model on the same data with the same settings (each a fresh process).

A third table times the same layers as a graph ``Model`` against a ``Sequential`` (the
cost of the graph machinery). ``--profile`` adds, per case, the operations that take
the most time on each side (torch.profiler, self CPU time), and a table of Conv2d's
parts (its matrix products alone, its unfold and fold alone) against torch's whole
convolution.

    python -m nnlab.bench --repeats 30 --threads 2
    python -m nnlab bench --cases conv,mlp --json
    python -m nnlab bench --course
    python -m nnlab bench --json > bench.json && python -m nnlab bench --from-json bench.json --markdown

``--markdown`` writes the tables with the date and setting they were measured on, for a
page of the documentation: measured figures live there, not in comments or the README.
"""

import argparse
import json
import contextlib
import math
import sys
import time
from typing import Callable, NamedTuple

import torch

from nnlab import allocator
from nnlab import layers as nnlab_layers
from nnlab.graph import Input, Model
from nnlab.layers import (
    GELU,
    AdaptiveAvgPool2d,
    BatchNorm2d,
    Conv2d,
    ConvTranspose2d,
    CrossEntropyLoss,
    Flatten,
    GroupNorm,
    LayerNorm,
    Linear,
    MaxPool2d,
    MSELoss,
    MultiheadAttention,
    ReLU,
    ResidualBlock,
    Sequential,
    Tanh,
    TransformerEncoderLayer,
)
from nnlab.layers._windows import add_into_windows, window_view
from nnlab.models import MLP
from nnlab.optimizers import Adam, VanillaSGD
from nnlab.training import LayerTrainer, TorchTrainer

from ._bench_report import (
    format_table,
    held_tensors,
    state_storages,
    storage_bytes,
    geometric_mean,
    layer_saved_bytes,
    markdown_report,
    nnlab_saved_bytes,
    print_report,
    profile_line,
    time_cases,
    torch_saved_bytes,
)
from ._bench_train_runs import time_train_runs

__all__ = [
    "QUICK",
    "Case",
    "build_cases",
    "build_graph_cases",
    "format_table",
    "main",
    "measure_memory",
    "nnlab_saved_bytes",
    "parse_args",
    "run",
    "time_cases",
    "torch_saved_bytes",
]


class Case(NamedTuple):
    """Two callables doing the same work: nnlab's (``ours``) and the reference's."""

    name: str
    ours: Callable
    theirs: Callable


class Sizes(NamedTuple):
    """The sizes of every case: the full benchmark or the quick check that it runs."""

    convs: list  # (batch, in_channels, height, width, out_channels, kernel, padding)
    maxpool: tuple  # (batch, channels, size, kernel)
    batchnorm: tuple  # (batch, channels, size)
    mlp: tuple  # (batch, in_features, hidden, hidden, classes)
    cnn: tuple  # (batch, size)
    resnet: tuple  # (batch, channels, size)
    graph: tuple  # (batch, size, width)
    sequence: tuple  # (batch, steps, input_size, hidden_size, vocabulary)
    grouped_convs: list  # (batch, in_channels, size, out_channels, kernel, padding, groups)
    transposed_convs: list  # (batch, in_channels, size, out_channels, kernel, stride, padding, output_padding)
    attention: tuple  # (batch, tokens, embed_dim, heads)
    course: list  # (threads, "mlp", (batch, in, hidden, hidden, classes)) or (threads, "cnn", (batch, size, channels))
    train_runs: tuple  # (epochs, timed pairs, models) of `nnlab train` on the digits against plain PyTorch


FULL = Sizes(
    convs=[(64, 3, 32, 32, 32, 3, 1), (64, 32, 16, 16, 64, 3, 1), (128, 1, 28, 28, 16, 3, 0)],
    maxpool=(64, 32, 32, 2),
    batchnorm=(64, 32, 16),
    mlp=(128, 3072, 512, 512, 10),
    cnn=(64, 32),
    resnet=(32, 32, 16),
    graph=(64, 32, 32),
    sequence=(32, 64, 64, 256, 100),
    grouped_convs=[(64, 32, 16, 64, 3, 1, 4), (64, 32, 32, 32, 3, 1, 32), (64, 64, 16, 128, 3, 1, 64)],
    transposed_convs=[(64, 64, 8, 32, 4, 2, 1, 0), (64, 32, 16, 16, 3, 2, 1, 1)],
    attention=(32, 128, 128, 4),
    course=[(1, "mlp", (32, 64, 256, 128, 10)), (1, "cnn", (32, 8, 1)), (1, "cnn", (64, 32, 3)), (2, "cnn", (256, 32, 3))],
    train_runs=(10, 3, ("mlp", "cnn")),
)
QUICK = Sizes(
    convs=[(2, 3, 8, 8, 4, 3, 1), (2, 1, 7, 7, 2, 3, 0)],
    maxpool=(2, 3, 8, 2),
    batchnorm=(2, 3, 4),
    mlp=(4, 48, 16, 16, 10),
    cnn=(2, 8),
    resnet=(2, 4, 4),
    graph=(2, 8, 4),
    sequence=(2, 3, 4, 5, 7),
    grouped_convs=[(2, 4, 6, 8, 3, 1, 2), (2, 4, 6, 4, 3, 1, 4)],
    transposed_convs=[(2, 4, 3, 2, 4, 2, 1, 0)],
    attention=(2, 4, 8, 2),
    course=[(1, "mlp", (4, 16, 8, 8, 10)), (1, "cnn", (2, 8, 1)), (1, "cnn", (2, 8, 3)), (2, "cnn", (4, 8, 3))],
    train_runs=(1, 1, ("mlp",)),
)
CLASSES = 10
LEARN_RATE = 1e-2
REG = 1e-4


# Cases ------------------------------------------------------------------------------------


def forward_backward_case(name, layer, module, x):
    """nnlab layer forward + backward against the torch module's forward + autograd
    backward, on the same input and upstream gradient (the input gradient included)."""
    x_ref = x.clone().requires_grad_(True)
    dout = torch.randn(layer(x).shape)

    def run_nnlab():
        layer(x)
        layer.backward(dout)

    def run_torch():
        x_ref.grad = None
        module(x_ref).backward(dout)

    return Case(name, run_nnlab, run_torch)


def conv_case(batch, in_channels, height, width, out_channels, kernel, padding):
    """Conv2d forward + backward (input, weight and bias gradients) on both sides."""
    layer = Conv2d(in_channels, out_channels, kernel, padding=padding)
    module = torch.nn.Conv2d(in_channels, out_channels, kernel, padding=padding)
    copy_weights(layer, module)
    name = f"Conv2d {batch}x{in_channels}x{height}x{width} -> {out_channels} k{kernel} p{padding}"
    return forward_backward_case(name, layer, module, torch.randn(batch, in_channels, height, width))


def conv_parts_cases(batch, in_channels, height, width, out_channels, kernel, padding):
    """Where Conv2d's time goes, for one shape: its three matrix products alone (forward
    ``W @ cols`` batched over samples, ``dW += dout_2d @ cols.T``, ``W.T @ dout``), and
    its unfolding and folding alone (the copy into columns in forward and again in
    backward, the fold of the columns' gradient), each against torch's whole
    convolution, forward + backward with every gradient."""
    x = torch.randn(batch, in_channels, height, width)
    module = torch.nn.Conv2d(in_channels, out_channels, kernel, padding=padding)
    torch_case = forward_backward_case("", Conv2d(in_channels, out_channels, kernel, padding=padding), module, x)
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    windows = ((kernel, kernel), (1, 1), (1, 1))
    patches = window_view(padded, *windows)
    rows, positions = in_channels * kernel * kernel, patches.shape[-2] * patches.shape[-1]
    cols = patches.reshape(batch, rows, positions)
    cols_2d = patches.permute(1, 2, 3, 0, 4, 5).reshape(rows, batch * positions)
    weight_2d = module.weight.detach().reshape(out_channels, rows)
    dout = torch.randn(batch, out_channels, positions)
    dout_2d = dout.transpose(0, 1).reshape(out_channels, -1)
    dweight = torch.zeros(out_channels, rows)
    dpatches = torch.randn(patches.shape)

    def products():
        torch.matmul(weight_2d, cols)
        dweight.addmm_(dout_2d, cols_2d.T)
        torch.matmul(weight_2d.T, dout)

    def unfold_and_fold():
        window_view(padded, *windows).reshape(batch, rows, positions)
        window_view(padded, *windows).permute(1, 2, 3, 0, 4, 5).reshape(rows, batch * positions)
        add_into_windows(torch.zeros_like(padded), dpatches, *windows)

    shape = f"{batch}x{in_channels}x{height}x{width} -> {out_channels} k{kernel} p{padding}"
    return [
        Case(f"{shape}: the 3 GEMMs", products, torch_case.theirs),
        Case(f"{shape}: unfold + fold", unfold_and_fold, torch_case.theirs),
    ]


def grouped_conv_pair(batch, in_channels, size, out_channels, kernel, padding, groups):
    """A grouped (depthwise when groups = in_channels) Conv2d, its torch twin and an input."""
    layer = Conv2d(in_channels, out_channels, kernel, padding=padding, groups=groups)
    module = torch.nn.Conv2d(in_channels, out_channels, kernel, padding=padding, groups=groups)
    copy_weights(layer, module)
    kind = "depthwise" if groups == in_channels else f"groups {groups}"
    name = f"Conv2d {kind} {batch}x{in_channels}x{size}x{size} -> {out_channels} k{kernel} p{padding}"
    return name, layer, module, torch.randn(batch, in_channels, size, size)


def transposed_conv_pair(batch, in_channels, size, out_channels, kernel, stride, padding, output_padding):
    """A ConvTranspose2d, its torch twin and an input."""
    arguments = (in_channels, out_channels, kernel, stride, padding, output_padding)
    layer, module = ConvTranspose2d(*arguments), torch.nn.ConvTranspose2d(*arguments)
    copy_weights(layer, module)
    name = (
        f"ConvTranspose2d {batch}x{in_channels}x{size}x{size} -> {out_channels} k{kernel} s{stride} "
        f"p{padding} op{output_padding}"
    )
    return name, layer, module, torch.randn(batch, in_channels, size, size)


def layer_pairs(sizes):
    """(name, nnlab layer, torch twin, input) of the grouped and transposed convolutions."""
    pairs = [grouped_conv_pair(*shape) for shape in sizes.grouped_convs]
    return pairs + [transposed_conv_pair(*shape) for shape in sizes.transposed_convs]


def maxpool_case(batch, channels, size, kernel):
    """MaxPool2d forward + backward on both sides."""
    x = torch.randn(batch, channels, size, size)
    name = f"MaxPool2d({kernel}) {batch}x{channels}x{size}x{size}"
    return forward_backward_case(name, MaxPool2d(kernel), torch.nn.MaxPool2d(kernel), x)


def batchnorm_case(batch, channels, size):
    """BatchNorm2d forward + backward in training mode (batch statistics) on both sides."""
    x = torch.randn(batch, channels, size, size)
    name = f"BatchNorm2d {batch}x{channels}x{size}x{size}"
    return forward_backward_case(name, BatchNorm2d(channels), torch.nn.BatchNorm2d(channels), x)


def norm_pairs(batch, channels, size):
    """(name, nnlab layer, torch twin, input): GroupNorm (8 groups) on (N, C, H, W) and
    LayerNorm over C on (N, H * W, C), from the BatchNorm case's sizes."""
    images = torch.randn(batch, channels, size, size)
    tokens = torch.randn(batch, size * size, channels)
    groups = math.gcd(8, channels)
    return [
        (
            f"GroupNorm({groups}) {batch}x{channels}x{size}x{size}",
            GroupNorm(groups, channels),
            torch.nn.GroupNorm(groups, channels),
            images,
        ),
        (f"LayerNorm({channels}) {batch}x{size * size}x{channels}", LayerNorm(channels), torch.nn.LayerNorm(channels), tokens),
    ]


def norm_cases(batch, channels, size):
    """GroupNorm and LayerNorm (``norm_pairs``), forward + backward on both sides."""
    return [forward_backward_case(*pair) for pair in norm_pairs(batch, channels, size)]


def recurrent_pair(name, batch, steps, input_size, hidden_size):
    """(nnlab LSTM or GRU, its torch twin with the same weights, an input (T, N, input_size))."""
    module = getattr(torch.nn, name)(input_size, hidden_size)
    layer = getattr(nnlab_layers, name)(input_size, hidden_size)
    layer.load_state_dict(module.state_dict())
    return layer, module, torch.randn(steps, batch, input_size)


class FirstOutput(torch.nn.Module):
    """A torch module's first output alone (a recurrent layer's, without its final state)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)[0]


def sequence_memory(batch, steps, input_size, hidden_size, vocabulary):
    """(name, nnlab bytes, torch bytes) kept between forward and backward by LSTM, GRU and
    Embedding at the sequence cases' sizes."""
    results = []
    for name in ("LSTM", "GRU"):
        layer, module, x = recurrent_pair(name, batch, steps, input_size, hidden_size)
        results.append((f"{name}({input_size}, {hidden_size}) {steps} steps x {batch}", *layer_saved_bytes(layer, FirstOutput(module), x)))
    layer, module = nnlab_layers.Embedding(vocabulary, input_size), torch.nn.Embedding(vocabulary, input_size)
    ids = torch.randint(0, vocabulary, (batch, steps))
    results.append((f"Embedding({vocabulary}, {input_size}) {batch}x{steps}", *layer_saved_bytes(layer, module, ids)))
    return results


def recurrent_case(name, batch, steps, input_size, hidden_size):
    """LSTM or GRU forward + backward through time (output and final state), torch's
    weights copied into nnlab's."""
    layer, module, x = recurrent_pair(name, batch, steps, input_size, hidden_size)
    x_ref = x.clone().requires_grad_(True)
    dout = torch.randn(steps, batch, hidden_size)

    def run_nnlab():
        layer(x)
        layer.backward((dout, None))

    def run_torch():
        x_ref.grad = None
        module(x_ref)[0].backward(dout)

    return Case(f"{name}({input_size}, {hidden_size}) {steps} steps x {batch}", run_nnlab, run_torch)


def embedding_case(batch, steps, dim, vocabulary):
    """Embedding lookup + the table's gradient (index_add) on both sides."""
    ids = torch.randint(0, vocabulary, (batch, steps))
    layer = nnlab_layers.Embedding(vocabulary, dim)
    module = torch.nn.Embedding(vocabulary, dim)
    dout = torch.randn(batch, steps, dim)

    def run_nnlab():
        layer(ids)
        layer.backward(dout)

    def run_torch():
        module(ids).backward(dout)

    return Case(f"Embedding({vocabulary}, {dim}) {batch}x{steps}", run_nnlab, run_torch)


def sequence_cases(batch, steps, input_size, hidden_size, vocabulary):
    return [
        recurrent_case("LSTM", batch, steps, input_size, hidden_size),
        recurrent_case("GRU", batch, steps, input_size, hidden_size),
        embedding_case(batch, steps, input_size, vocabulary),
    ]


def attention_pairs(batch, tokens, embed_dim, heads, encoder_dropout=0.1):
    """(name, nnlab layer, torch twin, input) for self-attention (MultiheadAttention,
    without and with the weights returned) and a TransformerEncoderLayer (feed-forward
    width 4 * embed_dim, dropout torch's default), weights copied; inputs (L, N, E)."""
    x = torch.randn(tokens, batch, embed_dim)
    pairs = []
    for need_weights in (False, True):
        layer = MultiheadAttention(embed_dim, heads)
        twin = torch.nn.MultiheadAttention(embed_dim, heads)
        copy_weights(layer, twin)
        pairs.append((f"MultiheadAttention need_weights={need_weights}", layer, twin, x))
    encoder = TransformerEncoderLayer(embed_dim, heads, 4 * embed_dim, dropout=encoder_dropout)
    encoder_twin = torch.nn.TransformerEncoderLayer(embed_dim, heads, 4 * embed_dim, dropout=encoder_dropout)
    copy_weights(encoder, encoder_twin)
    pairs.append(("TransformerEncoderLayer", encoder, encoder_twin, x))
    return pairs


def _attention_call(name):
    """How the layer or module of ``attention_pairs`` named ``name`` is called on x."""
    if name == "TransformerEncoderLayer":
        return lambda module, x: module(x)
    need_weights = name.endswith("True")
    return lambda module, x: module(x, x, x, need_weights=need_weights)


def attention_cases(batch, tokens, embed_dim, heads):
    """MultiheadAttention self-attention forward + backward (the input's gradient is the
    sum of dquery, dkey and dvalue on nnlab's side; autograd sums them on torch's), a
    TransformerEncoderLayer training step (forward, MSE against a target, backward, SGD),
    and GELU forward + backward on the encoder's feed-forward hidden layer (N, L, 4 E)."""
    shape = f"{batch}x{tokens}x{embed_dim}, {heads} heads"
    pairs = attention_pairs(batch, tokens, embed_dim, heads)
    cases = [self_attention_case(f"{name} {shape}", layer, twin, x) for name, layer, twin, x in pairs[:2]]
    _, encoder, encoder_twin, x = pairs[2]
    cases.append(encoder_step_case(f"train step TransformerEncoderLayer {shape}", encoder, encoder_twin, x))
    hidden = torch.randn(batch, tokens, 4 * embed_dim)
    name = f"GELU {batch}x{tokens}x{4 * embed_dim} (a feed-forward's)"
    cases.append(forward_backward_case(name, GELU(), torch.nn.GELU(), hidden))
    return cases


def self_attention_case(name, layer, twin, x):
    need_weights = name.split()[1] == "need_weights=True"
    x_ref = x.clone().requires_grad_(True)
    dout = torch.randn(x.shape)

    def run_nnlab():
        layer(x, x, x, need_weights=need_weights)
        dquery, dkey, dvalue = layer.backward((dout, None))
        return dquery + dkey + dvalue

    def run_torch():
        x_ref.grad = None
        twin(x_ref, x_ref, x_ref, need_weights=need_weights)[0].backward(dout)

    return Case(name, run_nnlab, run_torch)


def encoder_step_case(name, layer, twin, x):
    """One SGD step on the mean squared error against a fixed target, both sides in
    training mode (dropout drawing its own masks on each side)."""
    target = torch.randn(x.shape)
    loss_fn = MSELoss()
    optimizer = VanillaSGD(layer.params(), learn_rate=LEARN_RATE, reg=REG)
    twin_optimizer = torch.optim.SGD(twin.parameters(), lr=LEARN_RATE, weight_decay=REG)

    def run_nnlab():
        optimizer.zero_grad()
        loss_fn(layer(x), target)
        layer.backward(loss_fn.backward())
        optimizer.step()

    def run_torch():
        twin_optimizer.zero_grad()
        torch.nn.functional.mse_loss(twin(x), target).backward()
        twin_optimizer.step()

    return Case(name, run_nnlab, run_torch)


def attention_memory(sizes):
    """(name, nnlab bytes, torch bytes) kept between forward and backward by the layers of
    the attention cases (the encoder layer without dropout here, whose masks each side
    draws and keeps in its own form)."""
    results = []
    for name, layer, twin, x in attention_pairs(*sizes.attention, encoder_dropout=0.0):
        call = _attention_call(name)
        call(layer, x)
        state = [param for param, _ in layer.params()] + [grad for _, grad in layer.params()]
        ours = storage_bytes(held_tensors(layer), state_storages(state))
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda tensor: saved.append(tensor) or tensor, lambda tensor: tensor):
            call(twin, x.clone().requires_grad_(True))
        theirs = storage_bytes(saved, state_storages(list(twin.parameters())))
        results.append((name, ours, theirs))
    return results


def copy_weights(model, twin):
    """The nnlab model's parameters into its torch twin, matched in order (params() and
    parameters() list them alike for the models here)."""
    pairs = list(zip(model.params(), twin.parameters()))
    if len(pairs) != len(list(twin.parameters())) or any(p.shape != t.shape for (p, _), t in pairs):
        raise ValueError(f"bench: {type(twin).__name__} is not a twin of {type(model).__name__}")
    with torch.no_grad():
        for (param, _), target in pairs:
            target.copy_(param)


def train_step_case(name, model, twin, x, y):
    """One training step (forward, cross-entropy, backward, SGD with weight decay) as
    ``fit`` takes it: LayerTrainer.train_batch against TorchTrainer.train_batch."""
    copy_weights(model, twin)
    ours = LayerTrainer(model, CrossEntropyLoss(), VanillaSGD(model.params(), learn_rate=LEARN_RATE, reg=REG))
    twin_optimizer = torch.optim.SGD(twin.parameters(), lr=LEARN_RATE, weight_decay=REG)
    theirs = TorchTrainer(twin, torch.nn.CrossEntropyLoss(), twin_optimizer)
    return Case(name, lambda: ours.train_batch((x, y)), lambda: theirs.train_batch((x, y)))


# The models of the training steps, and their twins.


class TorchResidualBlock(torch.nn.Module):
    """``ResidualBlock(channels, [channels, channels], [3, 3], batchnorm=True, conv_bias=False)`` in
    torch.nn: relu(conv(relu(bn(conv(x)))) + x), parameters in the same order."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm = torch.nn.BatchNorm2d(channels)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        main = self.conv2(torch.relu(self.norm(self.conv1(x))))
        return torch.relu(main + x)


def mlp_models(batch, in_features, hidden_1, hidden_2, classes):
    model = MLP(in_features, classes, (hidden_1, hidden_2))
    twin = torch.nn.Sequential(
        torch.nn.Linear(in_features, hidden_1),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden_1, hidden_2),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden_2, classes),
    )
    name = f"MLP {in_features}-{hidden_1}-{hidden_2}-{classes} batch {batch}"
    return name, model, twin, torch.randn(batch, in_features)


def small_cnn_layers(size, classes=CLASSES, channels=3):
    """conv-relu-pool-conv-relu-pool-flatten-linear for channels x size x size images."""
    features = 32 * (size // 4) * (size // 4)
    return [
        Conv2d(channels, 16, 3, padding=1),
        ReLU(),
        MaxPool2d(2),
        Conv2d(16, 32, 3, padding=1),
        ReLU(),
        MaxPool2d(2),
        Flatten(),
        Linear(features, classes),
    ]


def cnn_models(batch, size, channels=3):
    model = Sequential(*small_cnn_layers(size, channels=channels))
    twin = torch.nn.Sequential(
        torch.nn.Conv2d(channels, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * (size // 4) * (size // 4), CLASSES),
    )
    return f"CNN {batch}x{channels}x{size}x{size}", model, twin, torch.randn(batch, channels, size, size)


def resnet_models(batch, channels, size):
    """A residual block with BatchNorm, then global average pooling and a linear head."""
    block = ResidualBlock(channels, [channels, channels], [3, 3], batchnorm=True, conv_bias=False)
    model = Sequential(block, AdaptiveAvgPool2d(1), Flatten(), Linear(channels, CLASSES))
    twin = torch.nn.Sequential(
        TorchResidualBlock(channels),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(channels, CLASSES),
    )
    name = f"ResNet block {batch}x{channels}x{size}x{size}"
    return name, model, twin, torch.randn(batch, channels, size, size)


def model_sets(sizes):
    """(name, nnlab model, torch twin, input) for the MLP, the CNN and the ResNet block."""
    return [mlp_models(*sizes.mlp), cnn_models(*sizes.cnn), resnet_models(*sizes.resnet)]


def build_cases(sizes=FULL):
    """Every timed case of nnlab against torch."""
    cases = [conv_case(*conv) for conv in sizes.convs]
    cases.append(maxpool_case(*sizes.maxpool))
    cases.append(batchnorm_case(*sizes.batchnorm))
    cases.extend(norm_cases(*sizes.batchnorm))
    cases.extend(sequence_cases(*sizes.sequence))
    cases += [forward_backward_case(name, layer, module, x) for name, layer, module, x in layer_pairs(sizes)]
    cases.extend(attention_cases(*sizes.attention))
    for name, model, twin, x in model_sets(sizes):
        y = torch.randint(0, CLASSES, (x.shape[0],))
        cases.append(train_step_case(f"train step {name}", model, twin, x, y))
    return cases


def graph_against_sequential_case(name, layers, x):
    """Forward + backward of the same layer instances chained as a graph Model and as a
    Sequential, on the same input and upstream gradient."""
    sequential = Sequential(*layers)
    node = graph_input = Input(tuple(x.shape[1:]))
    for layer in layers:
        node = layer(node)
    model = Model(graph_input, node)
    dout = torch.randn(sequential(x).shape)

    def run_graph():
        model(x)
        model.backward(dout)

    def run_sequential():
        sequential(x)
        sequential.backward(dout)

    return Case(name, run_graph, run_sequential)


def build_graph_cases(sizes=FULL):
    """A CNN, where the layers' work dominates, and a deep narrow MLP, where the
    per-node bookkeeping shows most."""
    batch, size, width = sizes.graph
    mlp = []
    for _ in range(8):
        mlp += [Linear(width, width), Tanh()]
    return [
        graph_against_sequential_case(
            f"CNN {batch}x3x{size}x{size}", small_cnn_layers(size), torch.randn(batch, 3, size, size)
        ),
        graph_against_sequential_case(f"MLP 16 layers {batch}x{width}", mlp, torch.randn(batch, width)),
    ]


# The courses' workloads ---------------------------------------------------------------------


def adam_step_case(name, model, twin, x, y):
    """One training step (forward, cross-entropy, backward, Adam) written out on each side,
    nnlab's model told that its input needs no gradient, torch's data needing none."""
    copy_weights(model, twin)
    model.requires_input_grad(False)
    loss_fn, optimizer = CrossEntropyLoss(), Adam(model.params(), learn_rate=1e-3)
    twin_loss, twin_optimizer = torch.nn.CrossEntropyLoss(), torch.optim.Adam(twin.parameters(), lr=1e-3)

    def run_nnlab():
        loss_fn(model(x), y)
        optimizer.zero_grad()
        model.backward(loss_fn.backward())
        optimizer.step()

    def run_torch():
        twin_optimizer.zero_grad()
        twin_loss(twin(x), y).backward()
        twin_optimizer.step()

    return Case(name, run_nnlab, run_torch)


def build_course_cases(sizes=FULL):
    """{threads: [Case]}: the training steps of the courses' models, by thread count."""
    groups = {}
    for threads, kind, shape in sizes.course:
        name, model, twin, x = mlp_models(*shape) if kind == "mlp" else cnn_models(*shape)
        y = torch.randint(0, CLASSES, (x.shape[0],))
        case = adam_step_case(f"Adam step {name}, {threads} thread{'s' * (threads > 1)}", model, twin, x, y)
        groups.setdefault(threads, []).append(case)
    return groups


@contextlib.contextmanager
def torch_threads(count):
    """torch's intra-op thread count set to ``count`` for the block, then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# Memory -------------------------------------------------------------------------------------


def measure_memory(sizes=FULL):
    """(name, nnlab bytes, torch bytes) for each model of the training steps, then for
    each grouped and transposed convolution, normalisation and sequence layer alone, then
    for the attention layers."""
    results = []
    for name, model, twin, x in model_sets(sizes):
        copy_weights(model, twin)
        y = torch.randint(0, CLASSES, (x.shape[0],))
        ours = nnlab_saved_bytes(model, CrossEntropyLoss(), x, y)
        theirs = torch_saved_bytes(twin, torch.nn.CrossEntropyLoss(), x, y)
        results.append((name, ours, theirs))
    pairs = layer_pairs(sizes) + norm_pairs(*sizes.batchnorm)
    results += [(name, *layer_saved_bytes(layer, module, x)) for name, layer, module, x in pairs]
    return results + sequence_memory(*sizes.sequence) + attention_memory(sizes)


# Command line -------------------------------------------------------------------------------


def selected(cases, patterns):
    """The cases whose name contains one of ``patterns`` (case-insensitive); all for None."""
    if patterns is None:
        return cases
    return [case for case in cases if any(pattern in case.name.lower() for pattern in patterns)]


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="nnlab bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed runs per case and side, median reported (default 30; --quick 1)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs per case and side first (default 3; --quick 0)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--cases", default=None, help="comma-separated parts of case names to run, e.g. conv,mlp")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--markdown", action="store_true", help="print the results as dated Markdown tables, for a documentation page")
    parser.add_argument(
        "--from-json", metavar="FILE", help="print the results saved by --json in FILE (with --markdown: as Markdown) instead of measuring"
    )
    parser.add_argument("--profile", action="store_true", help="add each side's top operations per case")
    parser.add_argument(
        "--course", action="store_true", help="the courses' workloads instead: small models' Adam steps, nnlab train"
    )
    parser.add_argument("--quick", "--tiny", action="store_true", help="tiny sizes, to check that it runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.repeats = args.repeats if args.repeats is not None else (1 if args.quick else 30)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.quick else 3)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if not 0 <= args.seed < 2**64:
        parser.error(f"--seed must be from 0 to 2**64 - 1, got {args.seed}")
    if args.cases is not None:
        args.cases = [pattern.strip().lower() for pattern in args.cases.split(",") if pattern.strip()]
        if not args.cases:
            parser.error("--cases needs at least one part of a case name, e.g. --cases conv,mlp")
    if args.json and args.markdown:
        parser.error("--json and --markdown are two formats of one report; choose one")
    args.usage_error = parser.error
    return args


def run(args):
    """The results as a dict (what --json prints)."""
    sizes = QUICK if args.quick else FULL
    torch.manual_seed(args.seed)
    if args.course:
        return run_course(args, sizes)
    all_cases = build_cases(sizes)
    all_graph_cases = build_graph_cases(sizes)
    cases = selected(all_cases, args.cases)
    graph_cases = selected(all_graph_cases, args.cases)
    if not cases and not graph_cases:
        names = [case.name for case in all_cases + all_graph_cases]
        args.usage_error(f"--cases {','.join(args.cases)} matches no case; the cases are: {'; '.join(names)}")
    report = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "allocator": allocator.describe(),
        "date": time.strftime("%Y-%m-%d"),
        "cases": _timed(cases, args),
        "memory": [
            {"model": name, "nnlab_bytes": ours, "torch_bytes": theirs, "ratio": ours / theirs}
            for name, ours, theirs in measure_memory(sizes)
        ],
        "graph": _timed(graph_cases, args),
    }
    if args.profile:
        batch, channels, size = sizes.resnet
        shapes = sizes.convs + [(batch, channels, size, size, channels, 3, 1)]  # the ResNet block's convs
        parts = [part for shape in shapes for part in conv_parts_cases(*shape)]
        report["conv_parts"] = _timed(parts, args, profile=False)
    for part in ("cases", "memory", "graph"):  # not conv_parts: its rows are parts of cases
        if report[part]:
            report[f"{part}_geometric_mean"] = geometric_mean([entry["ratio"] for entry in report[part]])
    return report


def run_course(args, sizes):
    """The --course results as a dict: the Adam steps, each thread count's cases timed
    together, then the `nnlab train` runs (one thread, or --threads)."""
    groups = {threads: selected(cases, args.cases) for threads, cases in build_course_cases(sizes).items()}
    if not any(groups.values()):
        names = [case.name for cases in build_course_cases(sizes).values() for case in cases]
        args.usage_error(f"--cases {','.join(args.cases)} matches no case; the course cases are: {'; '.join(names)}")
    entries = []
    for threads, cases in groups.items():
        with torch_threads(threads):
            entries += _timed(cases, args)
    train = [
        {"name": name, "ours_ms": ours * 1e3, "theirs_ms": theirs * 1e3, "ratio": ours / theirs}
        for name, ours, theirs in time_train_runs(sizes, args.threads or 1)
    ]
    report = {
        "torch": torch.__version__,
        "threads": "per case (in its name)",
        "repeats": args.repeats,
        "allocator": allocator.describe(),
        "date": time.strftime("%Y-%m-%d"),
        "course": entries,
        "train": train,
    }
    for part in ("course", "train"):
        report[f"{part}_geometric_mean"] = geometric_mean([entry["ratio"] for entry in report[part]])
    return report


def _timed(cases, args, profile=None):
    profile = args.profile if profile is None else profile
    results = time_cases(cases, args.repeats, args.warmup) if cases else []
    entries = []
    for case, (name, ours, theirs) in zip(cases, results):
        entry = {"name": name, "ours_ms": ours * 1e3, "theirs_ms": theirs * 1e3, "ratio": ours / theirs}
        if profile:
            entry["ours_profile"] = profile_line(case.ours)
            entry["theirs_profile"] = profile_line(case.theirs)
        entries.append(entry)
    return entries


def main(argv=None):
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    report = read_report(args.from_json, args.usage_error) if args.from_json is not None else run(args)
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        print()
    elif args.markdown:
        print(markdown_report(report), end="")
    else:
        print_report(report)
    return 0


def read_report(path, usage_error):
    """The report that --json wrote to ``path``; a usage error for a file that is not one."""
    try:
        with open(path, encoding="utf-8") as file:
            report = json.load(file)
    except (OSError, ValueError) as error:
        usage_error(f"--from-json {path}: cannot read a report ({error})")
    keys = ("torch", "threads", "repeats", "date", "cases", "memory")
    missing = [key for key in keys if key not in report] if isinstance(report, dict) else list(keys)
    if missing:
        usage_error(f"--from-json {path}: not a report of nnlab bench --json (no {', '.join(missing)})")
    return report


if __name__ == "__main__":
    raise SystemExit(main())
