"""The ``nnlab`` command (``python -m nnlab`` too): one module per subcommand, each with
``add_parser(commands)``, which sets the function that runs it. Parses and calls the
library; nothing in the library imports it."""

import argparse
import sys

from .. import distributed, training
from ..allocator import keep_freed_memory
from ..data import DataError
from . import bench, binary, experiment, gradcheck, language, overfit, train
from .checks import UsageError

__all__ = ["build_parser", "main"]

SUBCOMMANDS = (gradcheck, overfit, train, binary, experiment, bench)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="nnlab",
        description="Neural-network layers with hand-written backward passes, verified against PyTorch.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for subcommand in SUBCOMMANDS:
        subcommand.add_parser(commands)
    language.add_generate_parser(commands)
    for subparser in commands.choices.values():
        subparser.set_defaults(usage=subparser.format_usage, reject=subparser.error)
    return parser


def main(argv=None):
    keep_freed_memory()
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command == "bench":
        args.bench_args = unknown
    elif unknown:
        args.reject(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args.run(args)
    except (UsageError, DataError, training.CheckpointError, FileNotFoundError) as error:
        print(f"nnlab {args.command}: error: {one_line(error)}", file=sys.stderr)
        print(args.usage().strip(), file=sys.stderr)
        return 2
    except training.TrainingDiverged as error:
        print(f"nnlab {args.command}: {error}", file=sys.stderr)
        return 1
    # Another process failed, the group broke, or a step's number overflows the model's dtype: not a usage error.
    except (distributed.DistributedError, OverflowError) as error:
        print(f"nnlab {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 1
    except OSError as error:  # the machine failed us mid-run (disk full, ...): not a usage error
        print(f"nnlab {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("nnlab: interrupted", file=sys.stderr)
        return 130


def one_line(error):
    return " ".join(str(error).split())
