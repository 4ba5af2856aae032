"""Measures data-parallel training on this machine or cluster: run it alone (one process)
and under torchrun with as many processes as you mean to train with, and compare.

    python -m nnlab.distributed_bench --model cnn
    torchrun --nproc-per-node 2 -m nnlab.distributed_bench --model cnn

Trains the model of ``nnlab train --model ...`` on the digits (``--batch-size`` per
process) through ``DistributedTrainer.train_batch`` and prints, from rank 0: global
samples per second, the time per step (and rank 0's CPU time per step: on a machine
shared with other work, the difference is time spent waiting for a CPU), the share of
it spent in collectives (which includes waiting for the slowest process), and the time of an all-reduce of one float
and of 0.25 to 16 MB: the fixed cost, and the cost per MB (between 4 and 16 MB). Those
two numbers, with a model's gradient size, give the expected scaling (see the README,
"Scaling out").
"""

import argparse
import time

import torch

from . import distributed
from .layers import CrossEntropyLoss
from .optimizers import make_optimizer
from .tasks import build_model, load_dataset, model_input

__all__ = [
    "ALL_REDUCE_MEGABYTES",
    "all_reduce_cost",
    "main",
    "measure_all_reduce",
    "measure_training",
]

ALL_REDUCE_MEGABYTES = (4 / 2**20, 0.25, 1, 4, 16)  # one float first: the fixed cost


def measure_training(model_kind, batch_size, steps, warmup):
    """(global samples per second, seconds per step, CPU seconds per step of this
    process, communication share, gradient MB)."""
    torch.manual_seed(0)
    x_train, y_train, _, _, in_size, num_classes = load_dataset("digits", None, 0)
    model = build_model(model_kind, in_size, num_classes)
    trainer = distributed.DistributedTrainer(model, CrossEntropyLoss(), make_optimizer("adam", model.params()))
    batches = distributed.ShardedBatches(model_input(model_kind, x_train), y_train, batch_size, shuffle=True)
    model.train()
    world = distributed.current_world()
    for step in range(warmup + steps):
        if step == warmup:
            distributed.synchronize()
            distributed.Traffic.reset()
            start = time.perf_counter()
            start_cpu = time.process_time()
        trainer.train_batch(batches[step % len(batches)])
    distributed.synchronize()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - start_cpu
    gradient_megabytes = sum(param.numel() * param.element_size() for param, _ in model.params()) / 2**20
    share = distributed.Traffic.seconds / elapsed
    return steps * batch_size * world.world_size / elapsed, elapsed / steps, cpu / steps, share, gradient_megabytes


def measure_all_reduce(repeats):
    """{megabytes: median seconds of one all-reduce of that many float32 MB}."""
    seconds = {}
    for megabytes in ALL_REDUCE_MEGABYTES:
        buffer = torch.ones(int(megabytes * 2**20 / 4))
        times = []
        for _ in range(repeats):
            distributed.synchronize()
            start = time.perf_counter()
            distributed.sum_across_processes(buffer)
            times.append(time.perf_counter() - start)
        seconds[megabytes] = sorted(times)[len(times) // 2]
    return seconds


def all_reduce_cost(seconds):
    """(seconds per MB, fixed seconds): the slope between the two largest sizes, and
    the time of the one-float all-reduce."""
    (small, small_time), (large, large_time) = list(seconds.items())[-2:]
    return (large_time - small_time) / (large - small), seconds[ALL_REDUCE_MEGABYTES[0]]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nnlab.distributed_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("mlp", "cnn"), default="cnn", help="the nnlab train model (default cnn)")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per process and step (default 32)")
    parser.add_argument("--steps", type=int, default=200, help="timed steps (default 200)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    parser.add_argument("--repeats", type=int, default=20, help="all-reduce timings per size (default 20)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    world = distributed.setup()
    try:
        rate, step_seconds, cpu_seconds, share, gradient_megabytes = measure_training(
            args.model, args.batch_size, args.steps, warmup=10
        )
        seconds = measure_all_reduce(args.repeats) if world.world_size > 1 else {}
        distributed.synchronize()
    finally:
        distributed.shutdown()
    if not world.is_main:
        return 0
    print(
        f"{args.model}, {world.world_size} process(es), {args.threads} thread(s) each, batch {args.batch_size} per process: "
        f"{rate:.0f} samples/s, {1e3 * step_seconds:.2f} ms per step ({1e3 * cpu_seconds:.2f} ms of CPU in rank 0), "
        f"{100 * share:.1f}% of it in collectives (gradients {gradient_megabytes:.3f} MB)"
    )
    if seconds:
        for megabytes, duration in seconds.items():
            print(f"all-reduce of {megabytes:.3g} MB: {1e3 * duration:.3f} ms")
        per_megabyte, fixed = all_reduce_cost(seconds)
        print(f"all-reduce cost: {1e3 * per_megabyte:.2f} ms per MB + {1e3 * fixed:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
