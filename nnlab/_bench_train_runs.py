"""``nnlab bench --course``'s whole runs: the wall time of ``nnlab train`` on the digits
against a plain PyTorch script with the same data, model and settings, each in a fresh
process."""

import os
import statistics
import subprocess
import sys
import time

from . import allocator

__all__ = ["PLAIN_TORCH_TRAIN", "time_train_runs", "train_commands"]

# A plain PyTorch training script: the digits split, model and settings of `nnlab train`
# (the model is nnlab's torch twin), the usual loop, the test metrics after each epoch.
PLAIN_TORCH_TRAIN = """
import sys
import torch
from nnlab import data
from nnlab.tasks import make_problem
from nnlab.grad_compare import torch_twin

kind, epochs, batch_size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(seed)
problem = make_problem(kind, "digits", *data.load_split("digits", None, seed))
model = torch_twin(problem.model.eval()).train()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
loss_fn = torch.nn.CrossEntropyLoss()
for epoch in range(epochs):
    model.train()
    order = torch.randperm(len(problem.x_train))
    total, correct = 0.0, 0
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        optimizer.zero_grad()
        outputs = model(problem.x_train[index])
        loss = loss_fn(outputs, problem.y_train[index])
        loss.backward()
        optimizer.step()
        total += loss.item() * len(index)
        correct += (outputs.argmax(1) == problem.y_train[index]).sum().item()
    model.eval()
    with torch.no_grad():
        outputs = model(problem.x_test)
        accuracy = (outputs.argmax(1) == problem.y_test).float().mean().item()
    print(epoch, total / len(order), correct / len(order), loss_fn(outputs, problem.y_test).item(), accuracy)
"""


def train_commands(kind, epochs, batch_size=32, seed=0):
    """(nnlab's command, the plain PyTorch script's) training a ``kind`` model on the digits."""
    settings = ["--epochs", str(epochs), "--batch-size", str(batch_size), "--seed", str(seed)]
    nnlab = [sys.executable, "-m", "nnlab", "train", "--data", "digits", "--model", kind, "--optimizer", "adam"]
    nnlab += settings + ["--no-verify", "--quiet"]
    plain = [sys.executable, "-c", PLAIN_TORCH_TRAIN, kind, str(epochs), str(batch_size), str(seed)]
    return nnlab, plain


# glibc's malloc settings that the nnlab command makes for itself (nnlab.allocator), given
# to both processes so that the plain script runs on the same allocator.
KEPT_FREED_MEMORY = {
    "MALLOC_MMAP_THRESHOLD_": str(allocator.LARGEST_MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(allocator.NEVER_TRIM),
}


def _process_seconds(command, threads):
    """Wall seconds of ``command`` in a fresh process with ``threads`` torch threads and
    ``KEPT_FREED_MEMORY``'s allocator, run from the folder holding this nnlab (so that it
    is the one imported)."""
    environment = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), **KEPT_FREED_MEMORY)
    folder = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    start = time.perf_counter()
    subprocess.run(command, cwd=folder, env=environment, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def time_train_runs(sizes, threads=1):
    """[(name, nnlab train median seconds, plain script median seconds)], the two run
    alternately, one fresh process each."""
    epochs, pairs, kinds = sizes.train_runs
    results = []
    for kind in kinds:
        commands = train_commands(kind, epochs)
        seconds = [[_process_seconds(command, threads) for command in commands] for _ in range(pairs)]
        name = f"train --data digits --model {kind} --epochs {epochs}, {threads} thread{'s' * (threads > 1)}"
        results.append((name, statistics.median(s[0] for s in seconds), statistics.median(s[1] for s in seconds)))
    return results
