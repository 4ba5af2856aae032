"""``nnlab overfit``: the overfitting sanity check on a few bundled digits."""

import torch

from .. import data, training
from ..layers import CrossEntropyLoss
from ..optimizers import make_optimizer
from ..tasks import MODEL_KINDS, build_model, load_dataset, model_input
from .checks import UsageError, positive_int, seed

__all__ = ["add_parser", "run_overfit"]


def add_parser(commands):
    overfit = commands.add_parser(
        "overfit",
        help="the overfitting sanity check on a few digits",
        description="Trains a model on a handful of the bundled digits; it must reach 100%% training "
        "accuracy. Exit status 1 if it does not.",
    )
    overfit.add_argument("--model", choices=MODEL_KINDS, default="mlp", help="model to check (default mlp)")
    overfit.add_argument("--samples", type=positive_int, default=20, help="number of samples (default 20)")
    overfit.add_argument("--max-epochs", type=positive_int, default=20, help="epochs allowed (default 20)")
    overfit.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    overfit.add_argument("-v", "--verbose", action="store_true", help="a progress bar per epoch")
    overfit.set_defaults(run=run_overfit)


def run_overfit(args):
    torch.manual_seed(args.seed)
    x, y, _, _, in_size, num_classes = load_dataset("digits", None, args.seed)
    if args.samples > len(x):
        raise UsageError(f"--samples {args.samples}: the digits' training split has only {len(x)} samples")
    x, y = x[: args.samples], y[: args.samples]
    model = build_model(args.model, in_size, num_classes)
    optimizer = make_optimizer("adam", model.params(), learn_rate=1e-2)
    batches = data.Batches(model_input(args.model, x), y, batch_size=args.samples)
    result = training.overfit(model, CrossEntropyLoss(), optimizer, batches, max_epochs=args.max_epochs, verbose=args.verbose)
    if result.accuracy < 100.0:
        print(f"overfit: {args.model} reached only {result.accuracy:.1f}% on {args.samples} samples in {args.max_epochs} epochs")
        return 1
    print(f"overfit: {args.model} reached 100% training accuracy on {args.samples} samples in {result.num_epochs} epochs")
    return 0
