"""``nnlab gradcheck``: every layer (or the user's --layer) against PyTorch."""

import os
import sys

import torch

from .. import gradcheck_suite
from .checks import UsageError, seed

__all__ = ["add_parser", "run_gradcheck"]


def add_parser(commands):
    check = commands.add_parser(
        "gradcheck",
        help="check every layer (or one of yours) against PyTorch",
        description="Every nnlab layer against PyTorch on random and tie-heavy inputs: forward against "
        "torch.nn, backward against autograd, central finite differences in float64, and the layer "
        "contract. With --layer, the same checks for a Layer class of yours. Exit status 1 if any fails.",
    )
    check.add_argument("--seed", type=seed, default=0, help="seed for the random inputs (default 0)")
    check.add_argument(
        "--layer", metavar="PKG.MODULE:CLASS", help="check this Layer subclass instead (importable from the current folder or PYTHONPATH)"
    )
    check.add_argument(
        "--args",
        default="",
        metavar="ARGS",
        help="its constructor arguments as written between the parentheses, Python literals only, e.g. '3, 16, kernel_size=3'",
    )
    check.add_argument("--input-shape", metavar="N,C,...", help="shape of the input to check it on, e.g. 2,3,8,8")
    check.add_argument(
        "--dtype", choices=("float32", "float64"), default="float32", help="dtype of the layer and input (default float32)"
    )
    check.add_argument("-q", "--quiet", action="store_true", help="print only the final line (what passed, or what failed)")
    check.add_argument("-v", "--verbose", action="store_true", help="below the table, every check's verdict, not only the failures'")
    check.set_defaults(run=run_gradcheck)


def run_gradcheck(args):
    # Every check works on tensors of a few dozen entries, where torch's threads cost more
    # than they save.
    torch.set_num_threads(1)
    if args.layer is None and args.input_shape is None:
        rows = gradcheck_suite.run_all(seed=args.seed)
        what = f"{len(rows)} checks"
    else:
        rows = check_user_layer(args)
        what = f"{len(rows)} checks of {args.layer}"
    if not args.quiet:
        print(gradcheck_suite.format_table(rows, details=args.verbose or args.layer is not None))
    failed = [row.name for row in rows if not row.passed]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    print(f"all {what} passed")
    return 0


def check_user_layer(args):
    """The gradcheck rows of the --layer class; UsageError for unusable options."""
    if args.layer is None or args.input_shape is None:
        raise UsageError("--layer and --input-shape go together: --layer pkg.module:Class --input-shape 2,3,8,8")
    # The current folder is importable, as with python -m.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        cls = gradcheck_suite.load_layer_class(args.layer)
        layer_args, layer_kwargs = gradcheck_suite.parse_layer_args(args.args)
        shape = gradcheck_suite.parse_shape(args.input_shape)
        dtype = getattr(torch, args.dtype)
        return gradcheck_suite.check_user_layer(cls, layer_args, layer_kwargs, shape, dtype, args.seed, progress=print_progress)
    except gradcheck_suite.UserLayerError as error:
        raise UsageError(str(error)) from error


def print_progress(line):
    print(f"gradcheck: {line}", file=sys.stderr, flush=True)
