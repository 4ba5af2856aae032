"""``--distributed``: the options of a data-parallel run and the launch of one process's
part of it under torchrun (``nnlab train`` and ``nnlab experiment run|rerun``)."""

import contextlib
import os
import sys

from .. import distributed
from .checks import UsageError, seconds

__all__ = ["add_distributed_options", "run_data_parallel"]

DISTRIBUTED_HELP = """\
train data-parallel on the processes torchrun started: each process trains on its shard
of every global batch (the batch size is per process: N processes make global batches N
times as large) and the gradients are averaged; BatchNorm uses the global batch's
statistics; the figures are those of the global batches; rank 0 prints and writes the
files. Without torchrun, trains in this one process as without --distributed
"""


def add_distributed_options(train):
    group = train.add_argument_group("data parallel (torchrun --nproc-per-node N -m nnlab train --distributed ...)")
    group.add_argument("--distributed", action="store_true", help=DISTRIBUTED_HELP)
    group.add_argument(
        "--distributed-timeout",
        type=seconds,
        default=distributed.DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"how long a process waits for the others before stopping with an error (default {distributed.DEFAULT_TIMEOUT:g})",
    )


def run_data_parallel(args, train, device=None):
    """Runs ``train(args, world)`` in this process of a torchrun launch: joins the
    process group (NCCL for a CUDA ``device``, else gloo), keeps stdout for rank 0,
    publishes a failure for the others to name, and ends together (a barrier) before
    leaving the group. Not under torchrun: ``train(args, None)``, one process as usual."""
    if not distributed.launched_by_torchrun():
        print(f"nnlab {args.command}: --distributed without torchrun: training in this one process", file=sys.stderr)
        return train(args, None)
    try:
        world = distributed.setup(device=device, timeout=args.distributed_timeout)
    except distributed.TorchrunEnvironmentError as error:
        raise UsageError(f"--distributed: {error}") from error
    try:
        with distributed.failures_reported():
            with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(sys.stdout if world.is_main else devnull):
                status = train(args, world)
            distributed.synchronize("the barrier at the end of the run")
        return status
    finally:
        distributed.shutdown()
