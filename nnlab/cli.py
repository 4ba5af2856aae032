"""The ``nnlab`` command: gradcheck, overfit, train and bench."""

import argparse
import copy
import os
import sys

import torch

from . import data, gradcheck_suite, training
from .data import DataError
from .grad_compare import gradient_errors
from .layers import CrossEntropyLoss, Sequential
from .models import CNN, MLP
from .optimizers import Adam, MomentumSGD, RMSProp, VanillaSGD

OPTIMIZERS = ("sgd", "momentum", "rmsprop", "adam")
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")


class UsageError(Exception):
    """A problem with what the user asked for: printed on one line with the usage, exit 2."""


def build_parser():
    parser = argparse.ArgumentParser(
        prog="nnlab",
        description="Neural-network layers with hand-written backward passes, verified against PyTorch.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    check = commands.add_parser(
        "gradcheck",
        help="check every layer against PyTorch",
        description="Every nnlab layer against PyTorch on random inputs: forward against torch.nn, "
        "backward against autograd, and central finite differences in float64. Exit status 1 if any fails.",
    )
    check.add_argument("--seed", type=int, default=0, help="seed for the random inputs (default 0)")

    overfit = commands.add_parser(
        "overfit",
        help="the overfitting sanity check on a few digits",
        description="Trains a model on a handful of the bundled digits; it must reach 100%% training "
        "accuracy. Exit status 1 if it does not.",
    )
    overfit.add_argument("--model", choices=("mlp", "cnn"), default="mlp", help="model to check (default mlp)")
    overfit.add_argument("--samples", type=int, default=20, help="number of samples (default 20)")
    overfit.add_argument("--max-epochs", type=int, default=20, help="epochs allowed (default 20)")
    overfit.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    train = commands.add_parser(
        "train",
        help="train an MLP or CNN built from nnlab layers",
        description="Trains an nnlab MLP or CNN. Before training, the model's gradients on one batch "
        "are compared with autograd; training is refused if they disagree (--no-verify skips this).",
    )
    train.add_argument("--data", choices=DATASETS, default="digits", help="dataset (default digits, bundled)")
    train.add_argument("--root", help="folder holding the MNIST / Fashion-MNIST / CIFAR-10 files")
    train.add_argument("--model", choices=("mlp", "cnn"), default="mlp", help="model (default mlp)")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="optimizer (default adam)")
    train.add_argument("--lr", type=float, default=None, help="learning rate (default: per optimizer)")
    train.add_argument("--epochs", type=int, default=30, help="epochs (default 30)")
    train.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    train.add_argument("--plot", metavar="FILE.png", help="write the learning curves to this PNG")
    train.add_argument("--checkpoint", metavar="FILE", help="save the best model and training state here")
    train.add_argument("--resume", metavar="FILE", help="continue training from this checkpoint")
    train.add_argument("--no-verify", action="store_true", help="skip the gradient check before training")
    train.add_argument("--quiet", action="store_true", help="no progress bars")

    # The benchmark parses its own options (python -m nnlab.bench), --help included.
    commands.add_parser("bench", help="nnlab against PyTorch on the same work, as ratios", add_help=False)
    for subparser in commands.choices.values():
        subparser.set_defaults(usage=subparser.format_usage, reject=subparser.error)
    return parser


def main(argv=None):
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command == "bench":
        args.bench_args = unknown
    elif unknown:
        args.reject(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return COMMANDS[args.command](args)
    except (UsageError, DataError, training.CheckpointError, FileNotFoundError) as error:
        one_line = " ".join(str(error).split())
        print(f"nnlab {args.command}: error: {one_line}", file=sys.stderr)
        print(args.usage().strip(), file=sys.stderr)
        return 2
    except training.TrainingDiverged as error:
        print(f"nnlab {args.command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("nnlab: interrupted", file=sys.stderr)
        return 130


def run_gradcheck(args):
    rows = gradcheck_suite.run_all(seed=args.seed)
    print(gradcheck_suite.format_table(rows))
    failed = [row.name for row in rows if not row.passed]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    print(f"all {len(rows)} layers passed")
    return 0


def run_overfit(args):
    if args.samples < 1 or args.max_epochs < 1:
        raise UsageError(f"--samples and --max-epochs must be >= 1, got {args.samples} and {args.max_epochs}")
    torch.manual_seed(args.seed)
    x, y, _, _, in_size, num_classes = load_dataset("digits", None, args.seed)
    x, y = x[: args.samples], y[: args.samples]
    model = build_model(args.model, in_size, num_classes)
    optimizer = make_optimizer("adam", model.params(), 1e-2)
    batches = data.Batches(model_input(args.model, x), y, batch_size=args.samples)
    result = training.overfit(model, CrossEntropyLoss(), optimizer, batches, max_epochs=args.max_epochs)
    if result.accuracy < 100.0:
        print(f"overfit: {args.model} reached only {result.accuracy:.1f}% on {args.samples} samples in {args.max_epochs} epochs")
        return 1
    print(f"overfit: {args.model} reached 100% training accuracy on {args.samples} samples in {result.num_epochs} epochs")
    return 0


def load_dataset(name, root, seed):
    """(x_train, y_train, x_test, y_test, in_size, num_classes), standardized with the
    training statistics; the digits are split 80/20 with ``seed``."""
    if name == "digits":
        images, labels = data.load_digits()
        x_train, y_train, x_test, y_test = data.split(images, labels, 0.8, seed)
    else:
        if root is None:
            raise UsageError(f"--data {name} needs --root DIR, the folder that holds its files")
        if not os.path.isdir(root):
            raise UsageError(f"--root {root}: no such folder")
        if name == "cifar10":
            x_train, y_train = data.load_cifar10(root, train=True)
            x_test, y_test = data.load_cifar10(root, train=False)
        else:
            fashion = name == "fashion-mnist"
            x_train, y_train = data.load_mnist(root, fashion=fashion, train=True)
            x_test, y_test = data.load_mnist(root, fashion=fashion, train=False)
    x_train, x_test = data.standardize(x_train, x_test)
    return x_train, y_train, x_test, y_test, tuple(x_train.shape[1:]), 10


def model_input(kind, images):
    """MLPs take flat vectors, CNNs take (N, C, H, W) images."""
    return images.flatten(1) if kind == "mlp" else images


def build_model(kind, in_size, num_classes):
    channels, height, width = in_size
    if kind == "mlp":
        # Dropout keeps test accuracy >= 97% on the digits across seeds (96-98.6% without).
        return MLP(channels * height * width, num_classes, hidden_features=(256, 128), dropout=0.3)
    # Two conv -> pool stages halve the image twice; an 8x8 digit ends as 2x2.
    return CNN(in_size, num_classes, channels=[16, 32], pool_every=1, hidden_dims=[64])


DEFAULT_LEARNING_RATES = {"sgd": 0.05, "momentum": 0.01, "rmsprop": 1e-3, "adam": 1e-3}


def make_optimizer(name, params, learn_rate=None):
    learn_rate = DEFAULT_LEARNING_RATES[name] if learn_rate is None else learn_rate
    kinds = {"sgd": VanillaSGD, "momentum": MomentumSGD, "rmsprop": RMSProp, "adam": Adam}
    return kinds[name](params, learn_rate=learn_rate)


def verify_gradients(model, loss_fn, x, y):
    """Worst relative error between the model's backward (through the loss) and
    autograd, on a float64 copy so that rounding cannot hide or fake a bug."""
    model_and_loss = copy.deepcopy(Sequential(model, loss_fn)).to(dtype=torch.float64)
    return max(gradient_errors(model_and_loss, x.double(), y))


VERIFY_TOLERANCE = 1e-10


def run_train(args):
    if args.epochs < 1 or args.batch_size < 1:
        raise UsageError(f"--epochs and --batch-size must be >= 1, got {args.epochs} and {args.batch_size}")
    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test, in_size, num_classes = load_dataset(args.data, args.root, args.seed)
    x_train = model_input(args.model, x_train)
    x_test = model_input(args.model, x_test)
    model = build_model(args.model, in_size, num_classes)
    loss_fn = CrossEntropyLoss()
    optimizer = make_optimizer(args.optimizer, model.params(), args.lr)
    print(f"{args.data}: {len(x_train)} training and {len(x_test)} test samples")
    print(model)

    if not args.no_verify:
        worst = verify_gradients(model, loss_fn, x_train[: args.batch_size], y_train[: args.batch_size])
        print(f"gradient check on one batch: worst relative error {worst:.1e} against autograd (float64)")
        if not worst <= VERIFY_TOLERANCE:
            print(f"refusing to train: the error is above {VERIFY_TOLERANCE:g} (--no-verify skips this check)")
            return 1

    train_batches = data.Batches(x_train, y_train, args.batch_size, shuffle=True)
    test_batches = data.Batches(x_test, y_test, args.batch_size)
    trainer = training.LayerTrainer(model, loss_fn, optimizer)
    fit = trainer.fit(
        train_batches,
        test_batches,
        args.epochs,
        checkpoints=args.checkpoint,
        resume=args.resume,
        verbose=not args.quiet,
    )
    if args.plot:
        from .plot import plot_fit  # matplotlib loads only when a plot is asked for

        figure, _ = plot_fit(fit, legend=f"{args.model}, {args.optimizer}")
        figure.savefig(args.plot)
        print(f"learning curves written to {args.plot}")
    print(f"final test accuracy: {fit.test_acc[-1]:.2f}% (best {max(fit.test_acc):.2f}%)")
    return 0


def run_bench(args):
    from . import bench

    return bench.main(args.bench_args)


COMMANDS = {"gradcheck": run_gradcheck, "overfit": run_overfit, "train": run_train, "bench": run_bench}


if __name__ == "__main__":
    sys.exit(main())
