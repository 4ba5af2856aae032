"""nnlab against PyTorch's native ops on the same work, reported as time ratios.

Every case runs an nnlab callable and its torch twin (torch.nn modules + autograd) on
the same tensors. After a warm-up the two are timed alternately in one process
(nnlab, torch, nnlab, torch, ...), so that drifting machine load hits both alike, and
each side's median over ``--repeats`` runs is reported with the ratio nnlab / torch
and the geometric mean of the ratios. A second table times the same layers as a graph
``Model`` against a ``Sequential`` (the cost of the graph machinery).

    python -m nnlab.bench --repeats 30 --threads 2
"""

import argparse
import math
import statistics
import time

import torch

from nnlab.graph import Input, Model
from nnlab.layers import Conv2d, CrossEntropyLoss, Flatten, Linear, MaxPool2d, ReLU, Sequential, Tanh

# (name, batch, in_channels, height, width, out_channels, kernel, padding)
CONV_CASES = [
    ("Conv2d 64x3x32x32 -> 32 k3 p1", 64, 3, 32, 32, 32, 3, 1),
    ("Conv2d 64x32x16x16 -> 64 k3 p1", 64, 32, 16, 16, 64, 3, 1),
    ("Conv2d 128x1x28x28 -> 16 k3 p0", 128, 1, 28, 28, 16, 3, 0),
]
TINY_CONV_CASES = [
    ("Conv2d 2x3x8x8 -> 4 k3 p1", 2, 3, 8, 8, 4, 3, 1),
    ("Conv2d 2x1x7x7 -> 2 k3 p0", 2, 1, 7, 7, 2, 3, 0),
]


def forward_backward_case(layer, module, x):
    """nnlab layer forward + backward against the torch module's forward + autograd
    backward, on the same input and upstream gradient."""
    x_ref = x.clone().requires_grad_(True)
    dout = torch.randn(layer(x).shape)

    def run_nnlab():
        layer(x)
        layer.backward(dout)

    def run_torch():
        x_ref.grad = None
        module(x_ref).backward(dout)

    return run_nnlab, run_torch


def conv_case(batch, in_channels, height, width, out_channels, kernel, padding):
    """Conv2d forward + backward (input, weight and bias gradients) on both sides."""
    layer = Conv2d(in_channels, out_channels, kernel, padding=padding)
    module = torch.nn.Conv2d(in_channels, out_channels, kernel, padding=padding)
    with torch.no_grad():
        module.weight.copy_(layer.weight)
        module.bias.copy_(layer.bias)
    return forward_backward_case(layer, module, torch.randn(batch, in_channels, height, width))


def maxpool_case(batch, channels, size, kernel):
    """MaxPool2d forward + backward on both sides."""
    x = torch.randn(batch, channels, size, size)
    return forward_backward_case(MaxPool2d(kernel), torch.nn.MaxPool2d(kernel), x)


def make_sgd(params, learn_rate, reg):
    """nnlab.optimizers.VanillaSGD (p -= lr * (g + reg * p))."""
    from nnlab.optimizers import VanillaSGD

    return VanillaSGD(params, learn_rate=learn_rate, reg=reg)


def training_case(batch, size, classes=10, learn_rate=1e-2, reg=1e-4):
    """One SGD training step of conv-relu-pool-conv-relu-pool-flatten-linear with
    cross-entropy: nnlab layers + VanillaSGD against torch.nn + autograd + torch.optim.SGD."""
    features = 32 * (size // 4) * (size // 4)
    model = Sequential(*small_cnn_layers(size, classes))
    loss_fn = CrossEntropyLoss()
    optimizer = make_sgd(model.params(), learn_rate, reg)
    twin = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(features, classes),
    )
    with torch.no_grad():
        for target, (source, _) in zip(twin.parameters(), model.params()):
            target.copy_(source)
    twin_loss = torch.nn.CrossEntropyLoss()
    twin_optimizer = torch.optim.SGD(twin.parameters(), lr=learn_rate, weight_decay=reg)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, classes, (batch,))

    def run_nnlab():
        optimizer.zero_grad()
        scores = model(x)
        loss_fn(scores, y)
        model.backward(loss_fn.backward())
        optimizer.step()

    def run_torch():
        twin_optimizer.zero_grad()
        twin_loss(twin(x), y).backward()
        twin_optimizer.step()

    return run_nnlab, run_torch


def small_cnn_layers(size, classes=10):
    """conv-relu-pool-conv-relu-pool-flatten-linear for 3 x size x size images."""
    features = 32 * (size // 4) * (size // 4)
    return [
        Conv2d(3, 16, 3, padding=1),
        ReLU(),
        MaxPool2d(2),
        Conv2d(16, 32, 3, padding=1),
        ReLU(),
        MaxPool2d(2),
        Flatten(),
        Linear(features, classes),
    ]


def graph_against_sequential_case(layers, x):
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

    return run_graph, run_sequential


def build_graph_cases(tiny=False):
    """(name, graph callable, Sequential callable): a CNN, where the layers' work
    dominates, and a deep narrow MLP, where the per-node bookkeeping shows most."""
    batch, size, width = (2, 8, 4) if tiny else (64, 32, 32)
    mlp = []
    for _ in range(8):
        mlp += [Linear(width, width), Tanh()]
    cnn = small_cnn_layers(size)
    return [
        (f"CNN {batch}x3x{size}x{size}", *graph_against_sequential_case(cnn, torch.randn(batch, 3, size, size))),
        (f"MLP 16 layers {batch}x{width}", *graph_against_sequential_case(mlp, torch.randn(batch, width))),
    ]


def build_cases(tiny=False):
    """(name, nnlab callable, torch callable) for every case; ``tiny`` shrinks the sizes."""
    cases = []
    for name, *sizes in TINY_CONV_CASES if tiny else CONV_CASES:
        cases.append((name, *conv_case(*sizes)))
    if tiny:
        cases.append(("MaxPool2d(2) 2x3x8x8", *maxpool_case(2, 3, 8, 2)))
        cases.append(("train step CNN 2x3x8x8", *training_case(2, 8)))
    else:
        cases.append(("MaxPool2d(2) 64x32x32x32", *maxpool_case(64, 32, 32, 2)))
        cases.append(("train step CNN 64x3x32x32", *training_case(64, 32)))
    return cases


def _seconds(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def time_cases(cases, repeats, warmup):
    """Median seconds per case for each side, the two timed alternately after a warm-up.
    Returns a list of (name, nnlab seconds, torch seconds)."""
    for _, run_nnlab, run_torch in cases:
        for _ in range(warmup):
            run_nnlab()
            run_torch()
    samples = {name: ([], []) for name, _, _ in cases}
    for _ in range(repeats):
        for name, run_nnlab, run_torch in cases:
            samples[name][0].append(_seconds(run_nnlab))
            samples[name][1].append(_seconds(run_torch))
    return [(name, statistics.median(ours), statistics.median(theirs)) for name, (ours, theirs) in samples.items()]


def format_table(results, sides=("nnlab", "torch")):
    """The results as a text table with a ratio column and the geometric mean; ``sides``
    names the two timed columns."""
    width = max(len(name) for name, _, _ in results)
    columns = [f"{side + ' ms':>9}" for side in sides]
    lines = [f"{'case':<{width}}  {columns[0]}  {columns[1]}  {'ratio':>6}"]
    ratios = []
    for name, ours, theirs in results:
        ratio = ours / theirs
        ratios.append(ratio)
        times = f"{ours * 1e3:{len(columns[0])}.3f}  {theirs * 1e3:{len(columns[1])}.3f}"
        lines.append(f"{name:<{width}}  {times}  {ratio:6.2f}")
    geomean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    lines.append(f"{'geometric mean':<{width}}  {'':>{len(columns[0])}}  {'':>{len(columns[1])}}  {geomean:6.2f}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="nnlab bench", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per case and side (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per case and side first")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, to check that it runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if not 0 <= args.seed < 2**64:
        parser.error(f"--seed must be from 0 to 2**64 - 1, got {args.seed}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cases = build_cases(tiny=args.tiny)
    results = time_cases(cases, args.repeats, args.warmup)
    graph_results = time_cases(build_graph_cases(tiny=args.tiny), args.repeats, args.warmup)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats} runs")
    print(format_table(results))
    print()
    print("The same layers as a graph Model and as a Sequential, forward + backward:")
    print(format_table(graph_results, sides=("Model", "Sequential")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
