"""The ``nnlab`` command: gradcheck, overfit, train, binary and bench."""

import argparse
import contextlib
import copy
import itertools
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable, NamedTuple, Optional

import numpy
import torch

from . import data, distributed, experiments, gradcheck_suite, training
from .checkpoints import content_digest
from .data import DataError
from .grad_compare import gradient_errors
from .layers import CrossEntropyLoss, Heads, Linear, MSELoss, MultiTaskLoss, ReLU, Sequential
from .models import CNN, MLP
from .optimizers import Adam, MomentumSGD, RMSProp, VanillaSGD

OPTIMIZERS = ("sgd", "momentum", "rmsprop", "adam")
DATASETS = ("digits", "diabetes", "multi-digits", "mnist", "fashion-mnist", "cifar10")
STUDY_EPOCHS = 30  # nnlab binary: enough for every model of the default grid to settle


class UsageError(Exception):
    """A problem with what the user asked for: printed on one line with the usage, exit 2."""


# Argument types: argparse turns their errors into one line with the usage, exit 2.


def positive_int(text):
    return _int_at_least(text, 1)


def non_negative_int(text):
    return _int_at_least(text, 0)


def _int_at_least(text, minimum):
    value = _parsed(int, text, f"an integer >= {minimum}")
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text}")
    return value


def seed(text):
    """What torch.manual_seed takes, without its negative aliases (-1 is 2**64 - 1 there)."""
    value = _parsed(int, text, "an integer from 0 to 2**64 - 1")
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**64 - 1, got {text}")
    return value


def learning_rate(text):
    value = _parsed(float, text, "a finite number >= 0")
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def _parsed(kind, text, expected):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


TRAIN_EPILOG = """\
checkpoints and resuming:
  --checkpoint FILE  saves the run after every epoch (atomically, with a checksum);
                     an existing FILE is refused unless --resume FILE or --overwrite.
  --resume FILE      continues the run exactly where it stopped (bit for bit). The
                     checkpoint records the run; a flag not given comes from it.
    kept:            --data, --model, --optimizer, --batch-size, --seed and the data
                     themselves (the files, the split): a different value is refused.
    may change:      --lr (applied from the next step, and said), --epochs (the whole
                     run's count, at least the epochs done), --root (same data only).
    free:            --plot, --checkpoint (default: FILE itself), --no-verify, --quiet.
    data parallel:   a run of N processes resumes on N processes only.
"""


def build_parser():
    parser = argparse.ArgumentParser(
        prog="nnlab",
        description="Neural-network layers with hand-written backward passes, verified against PyTorch.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

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

    overfit = commands.add_parser(
        "overfit",
        help="the overfitting sanity check on a few digits",
        description="Trains a model on a handful of the bundled digits; it must reach 100%% training "
        "accuracy. Exit status 1 if it does not.",
    )
    overfit.add_argument("--model", choices=("mlp", "cnn"), default="mlp", help="model to check (default mlp)")
    overfit.add_argument("--samples", type=positive_int, default=20, help="number of samples (default 20)")
    overfit.add_argument("--max-epochs", type=positive_int, default=20, help="epochs allowed (default 20)")
    overfit.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")

    train = commands.add_parser(
        "train",
        help="train an MLP or CNN built from nnlab layers",
        description="Trains an nnlab MLP or CNN: a classifier (digits, MNIST, Fashion-MNIST,\n"
        "CIFAR-10), a regression MLP (diabetes), or a shared encoder with two heads on\n"
        "two-digit images (multi-digits). Before training, the model's gradients on one\n"
        "batch are compared with autograd; training is refused if they disagree\n"
        "(--no-verify skips this). Every output file is checked before training starts.",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument(
        "--data",
        choices=DATASETS,
        help="dataset (default digits; digits, diabetes and multi-digits are bundled, offline)",
    )
    train.add_argument("--root", help="folder holding the MNIST / Fashion-MNIST / CIFAR-10 files")
    train.add_argument("--model", choices=("mlp", "cnn"), help="model (default mlp)")
    train.add_argument("--optimizer", choices=OPTIMIZERS, help="optimizer (default adam)")
    train.add_argument("--lr", type=learning_rate, help="learning rate (default: per optimizer; on --resume, the checkpoint's)")
    train.add_argument("--epochs", type=positive_int, help="epochs of the whole run (default 30)")
    train.add_argument("--batch-size", type=positive_int, help="batch size (default 32)")
    train.add_argument("--seed", type=seed, help="random seed: initial weights and the digits' split (default 0)")
    train.add_argument("--plot", metavar="FILE.png", help="write the learning curves to this image (.png, .pdf, .svg, ...)")
    train.add_argument("--checkpoint", metavar="FILE", help="save the run here after every epoch (best model and training state)")
    train.add_argument("--resume", metavar="FILE", help="continue the run saved in this checkpoint")
    train.add_argument("--overwrite", action="store_true", help="let --checkpoint replace an existing file")
    train.add_argument("--no-verify", action="store_true", help="skip the gradient check before training")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    add_distributed_options(train)

    binary = commands.add_parser(
        "binary",
        help="the depth x width study of binary MLPs on rotated moons",
        description="Trains a binary MLP for every depth and width on rotated_moons, chooses each one's "
        "threshold on the validation ROC curve and prints a table of thresholds and of validation and test "
        "accuracies at that threshold. Offline.",
    )
    binary.add_argument("--depths", type=positive_int, nargs="+", default=[1, 2, 4], metavar="D", help="hidden layers (default 1 2 4)")
    binary.add_argument("--widths", type=positive_int, nargs="+", default=[2, 8, 32, 128], metavar="W", help="units per hidden layer (default 2 8 32 128)")
    binary.add_argument("--epochs", type=positive_int, default=STUDY_EPOCHS, help=f"epochs per model (default {STUDY_EPOCHS})")
    binary.add_argument("--samples", type=positive_int, default=10_000, help="n of rotated_moons, at least 10: 80%% training and validation, 20%% test (default 10000)")
    binary.add_argument("--seed", type=seed, default=0, help="seed of every model's initial weights and shuffling (default 0); the data is always rotated_moons' seed 42")
    binary.add_argument(
        "--plot",
        metavar="FILE.png",
        help="write the grid of decision boundaries on the test data to this file, and the best model's "
        "(by validation accuracy) ROC curve and confusion matrix next to it, as FILE_best.png",
    )

    add_experiment_parser(commands)

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
        print(f"nnlab {args.command}: error: {one_line(error)}", file=sys.stderr)
        print(args.usage().strip(), file=sys.stderr)
        return 2
    except training.TrainingDiverged as error:
        print(f"nnlab {args.command}: {error}", file=sys.stderr)
        return 1
    except distributed.DistributedError as error:  # another process failed, or the group broke: not a usage error
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


def run_gradcheck(args):
    # Every check works on tensors of a few dozen entries, where torch's threads cost more
    # than they save (several-fold on a busy 2-core machine).
    torch.set_num_threads(1)
    if args.layer is None and args.input_shape is None:
        rows = gradcheck_suite.run_all(seed=args.seed)
        print(gradcheck_suite.format_table(rows))
        what = f"{len(rows)} checks"
    else:
        rows = check_user_layer(args)
        print(gradcheck_suite.format_table(rows, details=True))
        what = f"{len(rows)} checks of {args.layer}"
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
        return gradcheck_suite.check_user_layer(cls, layer_args, layer_kwargs, shape, dtype, seed=args.seed)
    except gradcheck_suite.UserLayerError as error:
        raise UsageError(str(error)) from error


def run_overfit(args):
    torch.manual_seed(args.seed)
    x, y, _, _, in_size, num_classes = load_dataset("digits", None, args.seed)
    if args.samples > len(x):
        raise UsageError(f"--samples {args.samples}: the digits' training split has only {len(x)} samples")
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
    x_train, y_train, x_test, y_test = load_split(name, root, seed)
    x_train, x_test = data.standardize(x_train, x_test)
    return x_train, y_train, x_test, y_test, tuple(x_train.shape[1:]), 10


def load_split(name, root, seed):
    """(x_train, y_train, x_test, y_test) as the files hold them (images in [0, 1]);
    the digits and the diabetes patients are split 80/20 with ``seed``; the two-digit
    images are built from the split digits (``multi_digit_split``)."""
    if name == "digits":
        images, labels = data.load_digits()
        x_train, y_train, x_test, y_test = data.split(images, labels, 0.8, seed)
    elif name == "diabetes":
        features, targets = data.load_diabetes()
        x_train, y_train, x_test, y_test = data.split(features, targets, 0.8, seed)
    elif name == "multi-digits":
        x_train, y_train, x_test, y_test = multi_digit_split(seed)
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
    return x_train, y_train, x_test, y_test


MULTI_DIGIT_SAMPLES = {"train": 5000, "test": 1000}
MULTI_DIGIT_TASKS = ("top-left digit", "bottom-right digit")


def multi_digit_split(seed):
    """Two-digit images (``data.multi_digit``): the bundled digits are split 80/20 with
    ``seed`` first, so that no digit image is on both sides, then each side is paired."""
    images, labels = data.load_digits()
    train_images, train_labels, test_images, test_labels = data.split(images, labels, 0.8, seed)
    x_train, y_train = data.multi_digit(train_images, train_labels, MULTI_DIGIT_SAMPLES["train"], seed=seed)
    x_test, y_test = data.multi_digit(test_images, test_labels, MULTI_DIGIT_SAMPLES["test"], seed=seed + 1)
    return x_train, y_train, x_test, y_test


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
    """Worst error between the model's backward (through the loss) and autograd (and
    the model's torch.nn twin where it has one), on a float64 copy so that rounding cannot
    hide or fake a bug: ``grad_compare.gradient_errors``' measure, relative to the size of
    the gradients, so that a gradient that is truly 0 (a bias before BatchNorm) passes."""
    model_and_loss = copy.deepcopy(Sequential(model, loss_fn)).to(dtype=torch.float64)
    targets = y.double() if y.is_floating_point() else y
    return max(gradient_errors(model_and_loss, x.double(), targets))


VERIFY_TOLERANCE = 1e-10


# What determines a run, with its defaults; --resume takes them from the checkpoint.
RUN_DEFAULTS = {"data": "digits", "root": None, "model": "mlp", "optimizer": "adam", "batch_size": 32, "seed": 0, "epochs": 30}
# What a resumed run may not change: it decides what the run has trained on and with.
FIXED_ON_RESUME = ("data", "model", "optimizer", "batch_size", "seed")


def flag(key):
    return "--" + key.replace("_", "-")


def run_settings(args, saved):
    """The run's settings: the flags given, else (on --resume) the checkpoint's, else the
    defaults. A flag that contradicts a FIXED_ON_RESUME setting is refused."""
    if saved is None:
        return {key: default if getattr(args, key) is None else getattr(args, key) for key, default in RUN_DEFAULTS.items()}
    config = saved["config"]
    if not isinstance(config, dict) or not set(RUN_DEFAULTS) | {"data_fingerprint"} <= set(config):
        raise UsageError(
            f"--resume {args.resume}: holds no `nnlab train` run configuration "
            "(saved by fit() without config=...), so this command cannot tell how to continue it"
        )
    settings = {}
    for key in RUN_DEFAULTS:
        given = getattr(args, key)
        if key in FIXED_ON_RESUME and given is not None and given != config[key]:
            raise UsageError(
                f"{flag(key)} {given} contradicts --resume {args.resume}, a run with {flag(key)} {config[key]}: "
                "a resumed run keeps its data, split, model, optimizer and batch size (start a new run instead)"
            )
        settings[key] = config[key] if given is None else given
    if settings["epochs"] < saved["epoch"]:
        raise UsageError(
            f"--epochs {settings['epochs']}: {args.resume} already holds {saved['epoch']} epochs "
            "(--epochs counts the whole run)"
        )
    return settings


def checkpoint_target(args):
    """Where the run saves its checkpoint (a resumed run: into its own file unless
    --checkpoint names another), checked: writable, and not another run's file unless
    --overwrite."""
    target = args.checkpoint if args.checkpoint is not None else args.resume
    if target is None:
        return None
    check_output_file("--checkpoint", target)
    if os.path.exists(target) and not args.overwrite and not continues(target, args.resume):
        raise UsageError(
            f"--checkpoint {target}: the file exists (an earlier run's checkpoint); "
            f"--resume {target} continues that run, --overwrite starts a new one over it"
        )
    return target


def continues(target, resume):
    """Whether the checkpoint ``target`` is the file the run resumes from."""
    return resume is not None and os.path.exists(resume) and os.path.samefile(target, resume)


def check_output_file(option, path):
    """UsageError unless a file can be written at ``path``: a name, not a folder, in a
    folder that exists and takes new files (tried for real)."""
    if path == "":
        raise UsageError(f"{option}: expected a file name, got ''")
    if os.path.isdir(path):
        raise UsageError(f"{option} {path}: is a folder; expected a file name")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".nnlab-write-test-"):
            pass
    except NotADirectoryError:
        raise UsageError(f"{option} {path}: {folder} is not a folder (part of it is a file)") from None
    except FileNotFoundError:
        raise UsageError(f"{option} {path}: no such folder {folder}") from None
    except OSError as error:
        raise UsageError(f"{option} {path}: cannot write in {folder} ({error.strerror})") from None
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UsageError(f"{option} {path}: cannot write the file (it is read-only)")


def check_plot_file(path, option="--plot"):
    check_output_file(option, path)
    from matplotlib.backend_bases import FigureCanvasBase  # matplotlib loads only when a plot is asked for

    formats = FigureCanvasBase.get_supported_filetypes()
    extension = os.path.splitext(path)[1].lstrip(".").lower()
    if extension not in formats:
        raise UsageError(
            f"{option} {path}: not an image format matplotlib writes; expected a name ending in "
            + ", ".join(f".{name}" for name in sorted(formats))
        )


def run_train(args):
    if args.distributed:
        return run_data_parallel(args, train_model)
    return train_model(args, None)


def train_model(args, world):
    """nnlab train in one process (``world`` None), or in this process of a data-parallel
    run (``world``, a ``distributed.World``)."""
    saved = training.load_checkpoint(args.resume) if args.resume is not None else None
    settings = run_settings(args, saved)
    check_world_size(args, saved, world)
    target = checkpoint_target(args)
    if args.plot is not None:
        check_plot_file(args.plot)

    torch.manual_seed(settings["seed"])
    x_train, y_train, x_test, y_test = load_split(settings["data"], settings["root"], settings["seed"])
    config = dict(settings, data_fingerprint=content_digest([x_train, y_train, x_test, y_test]))
    if settings["root"] is not None:
        config["root"] = os.path.abspath(settings["root"])
    if saved is not None and config["data_fingerprint"] != saved["config"]["data_fingerprint"]:
        raise UsageError(
            f"--resume {args.resume}: the {settings['data']} data differ from the ones the run trained on "
            "(other files, or another split); a resumed run must see the same data"
        )
    make_problem = PROBLEMS.get(settings["data"], classification_problem)
    problem = make_problem(settings["model"], settings["data"], x_train, y_train, x_test, y_test)
    model, loss_fn = problem.model, problem.loss_fn
    optimizer = make_optimizer(settings["optimizer"], model.params(), args.lr)
    print(problem.description)
    print(model)

    if not args.no_verify:
        batch_size = settings["batch_size"]
        worst = verify_gradients(model, loss_fn, problem.x_train[:batch_size], problem.y_train[:batch_size])
        print(f"gradient check on one batch: worst relative error {worst:.1e} against autograd (float64)")
        if not worst <= VERIFY_TOLERANCE:
            print(f"refusing to train: the error is above {VERIFY_TOLERANCE:g} (--no-verify skips this check)")
            return 1

    if world is None:
        train_batches = data.Batches(problem.x_train, problem.y_train, settings["batch_size"], shuffle=True)
        test_batches = data.Batches(problem.x_test, problem.y_test, settings["batch_size"])
        trainer = training.LayerTrainer(model, loss_fn, optimizer)
    else:
        train_batches, test_batches, trainer = data_parallel_training(problem, optimizer, config)
    resume = None
    if saved is not None:
        resume = trainer.load_checkpoint(args.resume)
        announce_resume(args, settings, saved, optimizer)
    fit = trainer.fit(
        train_batches,
        test_batches,
        settings["epochs"],
        checkpoints=target,
        resume=resume,
        config=config,
        verbose=not args.quiet,
    )
    if args.plot and (world is None or world.is_main):
        from .plot import plot_fit

        figure, _ = plot_fit(fit, legend=f"{settings['model']}, {settings['optimizer']}")
        figure.savefig(args.plot)
        print(f"learning curves written to {args.plot}")
    problem.report(fit)
    return 0


class Problem(NamedTuple):
    """What ``nnlab train`` trains for one --data: the data (standardized, shaped for the
    model), the model and loss, a one-line description, and ``report(fit)``, which
    prints the final figures."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    model: object
    loss_fn: object
    description: str
    report: Callable


def classification_problem(kind, name, x_train, y_train, x_test, y_test):
    """An MLP or CNN classifier over 10 classes with CrossEntropyLoss."""
    x_train, x_test = data.standardize(x_train, x_test)

    def report(fit):
        print(f"final test accuracy: {fit.test_acc[-1]:.2f}% (best {max(fit.test_acc):.2f}%)")

    return Problem(
        model_input(kind, x_train),
        y_train,
        model_input(kind, x_test),
        y_test,
        build_model(kind, tuple(x_train.shape[1:]), 10),
        CrossEntropyLoss(),
        f"{name}: {len(x_train)} training and {len(x_test)} test samples",
        report,
    )


def diabetes_problem(kind, name, x_train, y_train, x_test, y_test):
    """A regression MLP with MSELoss. Features and targets are standardized with the
    training statistics; the report gives MAE and MSE in the target's own units, next
    to those of predicting the training mean."""
    if kind != "mlp":
        raise UsageError("--data diabetes trains an MLP (its samples are 10 measurements, not images); drop --model cnn")
    x_train, x_test = data.standardize(x_train, x_test)
    mean, std = y_train.mean(), y_train.std(unbiased=False)
    baseline_error = y_test - mean

    def report(fit):
        mae = fit.metrics["test_mae"][-1] * std.item()
        mse = fit.metrics["test_mse"][-1] * std.item() ** 2
        baseline_mae = baseline_error.abs().mean().item()
        baseline_mse = baseline_error.pow(2).mean().item()
        print(
            f"final test MAE {mae:.2f}, MSE {mse:.1f} (in the target's units; predicting the training "
            f"mean: MAE {baseline_mae:.2f}, MSE {baseline_mse:.1f}; MAE ratio {mae / baseline_mae:.3f})"
        )

    return Problem(
        x_train,
        (y_train - mean) / std,
        x_test,
        (y_test - mean) / std,
        MLP(x_train.shape[1], 1, hidden_features=(64,)),
        MSELoss(),
        f"{name}: {len(x_train)} training and {len(x_test)} test patients, 10 features, regression",
        report,
    )


def multi_digits_problem(kind, name, x_train, y_train, x_test, y_test):
    """A shared encoder (the --model, with 128 outputs) followed by ReLU and two
    classification heads, one per digit, trained with MultiTaskLoss."""
    x_train, x_test = data.standardize(x_train, x_test)
    in_size = tuple(x_train.shape[1:])
    features = 128
    encoder = build_model(kind, in_size, features)
    model = Sequential(encoder, ReLU(), Heads(Linear(features, 10), Linear(features, 10)))

    def report(fit):
        accuracies = []
        for index, task in enumerate(MULTI_DIGIT_TASKS):
            values = fit.metrics[f"test_task{index}_acc"]
            accuracies.append(f"{task} {values[-1]:.2f}% (best {max(values):.2f}%)")
        print(f"final test accuracy: {', '.join(accuracies)}")

    height, width = in_size[1:]
    return Problem(
        model_input(kind, x_train),
        y_train,
        model_input(kind, x_test),
        y_test,
        model,
        MultiTaskLoss(CrossEntropyLoss(), CrossEntropyLoss()),
        f"{name}: {len(x_train)} training and {len(x_test)} test {height}x{width} two-digit images; "
        f"two tasks: the {' and the '.join(MULTI_DIGIT_TASKS)}",
        report,
    )


PROBLEMS = {"diabetes": diabetes_problem, "multi-digits": multi_digits_problem}


def announce_resume(args, settings, saved, optimizer):
    """Says where the run continues, and applies (and says) a new learning rate."""
    print(f"resuming {args.resume} after epoch {saved['epoch']} of {settings['epochs']}")
    if settings["epochs"] != saved["config"]["epochs"]:
        print(f"training to {settings['epochs']} epochs (the run was started for {saved['config']['epochs']})")
    if args.lr is not None and args.lr != optimizer.learn_rate:
        print(f"learning rate {args.lr:g} from now on (the run used {optimizer.learn_rate:g})")
        optimizer.learn_rate = args.lr


def run_binary(args):
    if args.samples < 10:
        raise UsageError(f"--samples must be >= 10 (rotated_moons), got {args.samples}")
    if args.plot is not None:
        check_plot_file(args.plot)
        check_output_file("--plot", best_plot_path(args.plot))
    threads = torch.get_num_threads()
    # The study's tensors are tiny (64 points by at most 128 units): a second thread costs
    # more than it saves (one depth-4 width-128 model, 5 epochs, on 2 busy cores: 5 s on
    # one thread, 30 s on two).
    torch.set_num_threads(1)
    try:
        return run_study(args)
    finally:
        torch.set_num_threads(threads)


class StudyRun(NamedTuple):
    """One model of ``nnlab binary``: its shape, what mlp_experiment returned."""

    depth: int
    width: int
    model: object
    threshold: float
    valid_acc: float
    test_acc: float


def run_study(args):
    from . import classifier  # matplotlib and scikit-learn's metrics load only for this command

    torch.manual_seed(args.seed)
    x_train, y_train, x_valid, y_valid, x_test, y_test = data.rotated_moons(args.samples)
    dl_train = data.Batches(x_train, y_train, batch_size=64, shuffle=True)
    dl_valid = data.Batches(x_valid, y_valid, batch_size=1024)
    dl_test = data.Batches(x_test, y_test, batch_size=1024)
    print(f"rotated_moons: {len(x_train)} training, {len(x_valid)} validation, {len(x_test)} test points; {args.epochs} epochs per model")
    print(f"{'depth':>5} {'width':>5} {'threshold':>9} {'valid acc':>9} {'test acc':>8}", flush=True)
    runs = []
    for depth in args.depths:
        for width in args.widths:
            model, threshold, valid_acc, test_acc = classifier.mlp_experiment(
                depth, width, dl_train, dl_valid, dl_test, args.epochs, seed=args.seed
            )
            runs.append(StudyRun(depth, width, model, threshold, valid_acc, test_acc))
            print(f"{depth:5d} {width:5d} {threshold:9.3f} {valid_acc:8.2f}% {test_acc:7.2f}%", flush=True)
    test_accs = [run.test_acc for run in runs]
    print(f"test accuracy: min {min(test_accs):.2f}%, 75th percentile {numpy.percentile(test_accs, 75):.2f}%")
    best = max(runs, key=lambda run: run.valid_acc)
    print(f"best by validation accuracy: depth {best.depth}, width {best.width}")
    if args.plot is not None:
        grid = plot_study_grid(classifier, runs, args.depths, args.widths, x_test, y_test)
        grid.savefig(args.plot)
        best_path = best_plot_path(args.plot)
        plot_best_model(classifier, best, x_valid, y_valid, x_test, y_test).savefig(best_path)
        print(f"decision boundaries written to {args.plot}")
        print(f"ROC curve (validation) and confusion matrix (test) of the best model written to {best_path}")
    return 0


def best_plot_path(path):
    """``grid.png`` -> ``grid_best.png``."""
    stem, extension = os.path.splitext(path)
    return f"{stem}_best{extension}"


def plot_study_grid(classifier, runs, depths, widths, x, y):
    """One decision-boundary panel per (depth, width), on (x, y)."""
    from .plot import new_figure

    fig, axes = new_figure((3.3 * len(widths), 3.1 * len(depths)), len(depths), len(widths))
    for ax, run in zip(axes, runs):  # both row by row: one depth a row
        classifier.plot_decision_boundary_2d(run.model, x, y, ax=ax)
        ax.set_title(
            f"depth {run.depth}, width {run.width}\n"
            f"threshold {run.threshold:.2f}, valid {run.valid_acc:.1f}%, test {run.test_acc:.1f}%",
            fontsize=9,
        )
    fig.suptitle("Decision boundaries on the test data")
    return fig


def plot_best_model(classifier, best, x_valid, y_valid, x_test, y_test):
    """The best model's validation ROC curve, its point marked, and its test confusion matrix."""
    from .plot import new_figure

    fig, (roc_ax, confusion_ax) = new_figure((10, 4.5), 1, 2)
    classifier.select_roc_thresh(best.model, x_valid, y_valid, ax=roc_ax)
    roc_ax.set_title("ROC curve on the validation data")
    classifier.plot_confusion(best.model, x_test, y_test, ax=confusion_ax)
    confusion_ax.set_title("Confusion matrix on the test data (share of all points)")
    fig.suptitle(f"Best model by validation accuracy: depth {best.depth}, width {best.width}")
    return fig


# Data parallel (nnlab train / experiment run --distributed, under torchrun) ---------------

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


def seconds(text):
    value = _parsed(float, text, "a number of seconds > 0")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text}")
    return value


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


def check_world_size(args, saved, world):
    """UsageError, before any work, unless the checkpoint to resume was trained by as
    many processes as this run has (the trainer would refuse it too, later)."""
    if saved is None:
        return
    trained_by = saved.get("world_size", 1)
    running = 1 if world is None else world.world_size
    if trained_by != running:
        how = f"torchrun --nproc-per-node {trained_by} -m nnlab train --distributed --resume {args.resume}"
        raise UsageError(
            f"--resume {args.resume}: the run was trained by {trained_by} process{'es' if trained_by > 1 else ''} "
            f"in data parallel, this run has {running}; resume it with as many ({how if trained_by > 1 else 'without torchrun'})"
        )


def data_parallel_training(problem, optimizer, config):
    """This process's training shards (a shared permutation per epoch, padded to equal
    shards), its test shard (every test sample counted once) and a DistributedTrainer,
    once every process is found to hold the same data."""
    distributed.check_same(f"the {config['data']} data (files, split)", config["data_fingerprint"])
    batch_size = config["batch_size"]
    train_batches = distributed.ShardedBatches(problem.x_train, problem.y_train, batch_size, shuffle=True, seed=config["seed"])
    test_batches = distributed.ShardedBatches(problem.x_test, problem.y_test, batch_size, uneven="keep")
    trainer = distributed.DistributedTrainer(problem.model, problem.loss_fn, optimizer)
    return train_batches, test_batches, trainer


def run_bench(args):
    from . import bench

    return bench.main(args.bench_args)


# nnlab experiment ------------------------------------------------------------------------------

EXPERIMENT_EPILOG = """\
result files:
  {out_dir}/{name}_L{L}_K{K joined by '-'}.json: every argument of the run (defaults
  resolved, the seed drawn when --seed is not given), the nnlab and torch versions,
  and the FitResult. Written atomically; an existing one is never replaced silently.

examples (the course's experiment 1.1, on the bundled digits):
  nnlab experiment run -n demo -K 16 32 -L 1 -P 1 -H 64
  nnlab experiment sweep -n exp1_1 -K 32 -K 64 -L 2 4 8 16 -P 8 -H 100 --epochs 20 --jobs 2
  nnlab experiment plot 'results/exp1_1_*.json' --out exp1_1.png
  nnlab experiment rerun results/exp1_1_L2_K32.json
"""


def probability(text):
    value = _parsed(float, text, "a number in [0, 1)")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text}")
    return value


# The options that configure one run besides K, L, P, H and M: (flags, argparse settings).
# The dest is cnn_experiment's argument (or a model keyword argument); the default is
# cnn_experiment's, so only the options given are passed on (and to a sweep's runs).
RUN_OPTIONS = (
    (("-o", "--out-dir"), dict(metavar="DIR", help="folder of the result files")),
    (("-s", "--seed"), dict(type=seed, help="random seed (default: drawn, and recorded in the result)")),
    (("-d", "--device"), dict(help="torch device, e.g. cpu or cuda (default: cuda if available)")),
    (("--bs-train",), dict(type=positive_int, metavar="N", help="training batch size")),
    (("--bs-test",), dict(type=positive_int, metavar="N", help="test batch size (default: bs-train // 4)")),
    (("--batches",), dict(type=positive_int, metavar="N", help="batches per epoch and phase (default: all)")),
    (("--epochs",), dict(type=positive_int, metavar="N", help="maximal number of epochs")),
    (("--early-stopping",), dict(type=non_negative_int, metavar="N", help="stop after N epochs without a lower test loss; 0: never")),
    (("--lr",), dict(type=learning_rate, help="learning rate")),
    (("--reg",), dict(type=learning_rate, help="L2 regularization")),
    (("--optimizer",), dict(choices=tuple(experiments.OPTIMIZERS), help="nnlab optimizer")),
    (("--data",), dict(choices=tuple(experiments.DATASETS), help="digits (bundled, offline) or cifar10 (from --root)")),
    (("--root",), dict(metavar="DIR", help="folder holding the CIFAR-10 python batches")),
    (("--activation",), dict(dest="activation_type", choices=("relu", "lrelu", "tanh", "sigmoid"), help="activation (default relu)")),
    (("--pooling",), dict(dest="pooling_type", choices=("max", "avg"), help="pooling (default max)")),
    (("--batchnorm",), dict(action="store_true", default=None, help="BatchNorm2d after every convolution")),
    (("--dropout",), dict(type=probability, metavar="RATE", help="Dropout2d probability (default 0)")),
)


def add_experiment_parser(commands):
    """``nnlab experiment run|sweep|plot|rerun``."""
    experiment = commands.add_parser(
        "experiment",
        help="configured CNN/ResNet runs (K, L, P, H), JSON results, sweeps, overlay plots",
        description="The course's experiments: a CNN or ResNet built from K (filters per layer), "
        "L (layers per block), P (pool every) and H (hidden dims), each run saved in a JSON "
        "file that reproduces it.",
        epilog=EXPERIMENT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = experiment.add_subparsers(dest="action", metavar="ACTION", required=True)
    run = actions.add_parser(
        "run",
        help="train one configuration and write its result file",
        description="Trains one configuration and writes {out_dir}/{name}_L{L}_K{K}.json.",
        epilog=EXPERIMENT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_configuration_options(run, sweep=False)
    run.add_argument("--checkpoints", metavar="FILE", help="save the best model and training state here")
    run.add_argument("--overwrite", action="store_true", help="replace an existing result (and checkpoint) file")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    add_distributed_options(run)

    sweep = actions.add_parser(
        "sweep",
        help="run the cross product of configurations, each in its own process",
        description="Runs every combination of the -K, -L, -P, -H and -M values, each configuration in its "
        "own process (its output in {out_dir}/logs/), --jobs at a time. A configuration whose result "
        "file exists is skipped, so an interrupted sweep resumes where it stopped; one that cannot "
        "work is reported by name and the sweep goes on. Exit status 1 if any configuration failed.",
        epilog=EXPERIMENT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_configuration_options(sweep, sweep=True)
    sweep.add_argument("-j", "--jobs", type=positive_int, default=1, help="configurations run at once (default 1)")

    plot = actions.add_parser(
        "plot",
        help="overlay result files on one figure",
        description="Overlays every result file matching the patterns (train and test loss and accuracy), "
        "one legend entry per run.",
    )
    plot.add_argument("patterns", nargs="+", metavar="PATTERN", help="result files or glob patterns (quote them)")
    plot.add_argument("--out", required=True, metavar="FILE.png", help="the image to write (.png, .pdf, .svg, ...)")
    plot.add_argument(
        "--legend-key",
        nargs="+",
        metavar="KEY",
        help="configuration keys naming each run, e.g. layers_per_block (default: the keys that differ)",
    )
    plot.add_argument("--log-loss", action="store_true", help="loss on a log scale")

    rerun = actions.add_parser(
        "rerun",
        help="train a result file's configuration again and compare",
        description="Trains the configuration recorded in FILE again (same seed, same thread count) and "
        "compares the FitResult with the recorded one. Exit status 0 if identical to the last digit, 1 if not.",
    )
    rerun.add_argument("file", metavar="FILE", help="a result file")
    rerun.add_argument("--root", metavar="DIR", help="the data's folder, if it moved (the data must be the same)")
    rerun.add_argument("--out", metavar="FILE.json", help="also write the rerun's result here")
    rerun.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    add_distributed_options(rerun)
    for parser in actions.choices.values():
        parser.set_defaults(usage=parser.format_usage, reject=parser.error)


def add_configuration_options(parser, sweep):
    """-n and the run options; K, L, P, H and M take one configuration each (run) or
    the values to combine (sweep: ``-K 32 -K 64`` is two K configurations)."""
    parser.add_argument("-n", "--run-name", required=True, metavar="NAME", help="name of the run and its result file")
    defaults = experiments.EXPERIMENT_DEFAULTS
    many = dict(action="append") if sweep else {}
    each = " (repeat for more configurations)" if sweep else ""
    values = "+" if sweep else None
    parser.add_argument(
        "-K", "--filters-per-layer", type=positive_int, nargs="+", metavar="K", **many,
        help=f"filters per conv layer in each block (default {defaults['filters_per_layer']}){each}",
    )
    parser.add_argument(
        "-L", "--layers-per-block", type=positive_int, nargs=values, metavar="L",
        help=f"conv layers per block, each K repeated L times (default {defaults['layers_per_block']})",
    )
    parser.add_argument(
        "-P", "--pool-every", type=positive_int, nargs=values, metavar="P",
        help=f"a pooling layer after every P convs (default {defaults['pool_every']})",
    )
    parser.add_argument(
        "-H", "--hidden-dims", type=positive_int, nargs="+", metavar="H", **many,
        help=f"widths of the hidden dense layers (default {defaults['hidden_dims']}){each}",
    )
    parser.add_argument(
        "-M", "--model-type", choices=experiments.MODEL_TYPES, nargs=values,
        help=f"model (default {defaults['model_type']})",
    )
    threads = "the CPU count divided by --jobs" if sweep else "torch's, the CPU count"
    parser.add_argument(
        "--threads", type=positive_int, metavar="N",
        help=f"torch threads per run (default: 1 on the digits, whose tensors are too small for threads to pay; else {threads})",
    )
    for flags, settings in RUN_OPTIONS:
        settings = dict(settings)
        dest = settings.get("dest", flags[-1].lstrip("-").replace("-", "_"))
        if defaults.get(dest) is not None and "(default" not in settings["help"]:
            settings["help"] += f" (default {defaults[dest]})"
        parser.add_argument(*flags, **settings)


def run_experiment_command(args):
    actions = {"run": experiment_run, "sweep": experiment_sweep, "plot": experiment_plot, "rerun": experiment_rerun}
    try:
        if getattr(args, "distributed", False):
            device = experiments.resolve_device(args.device if args.action == "run" else None)
            return run_data_parallel(args, lambda args, world: actions[args.action](args), device)
        return actions[args.action](args)
    except experiments.ExperimentError as error:
        raise UsageError(str(error)) from None


def run_option_values(args):
    """{dest: value} of the RUN_OPTIONS given on the command line."""
    values = {}
    for flags, settings in RUN_OPTIONS:
        dest = settings.get("dest", flags[-1].lstrip("-").replace("-", "_"))
        if getattr(args, dest) is not None:
            values[dest] = getattr(args, dest)
    if values.get("early_stopping") == 0:
        values["early_stopping"] = None
    return values


def experiment_run(args):
    arguments = run_option_values(args)
    given = ("filters_per_layer", "layers_per_block", "pool_every", "hidden_dims", "model_type", "checkpoints")
    arguments.update({key: getattr(args, key) for key in given if getattr(args, key) is not None})
    if args.checkpoints is not None:
        check_output_file("--checkpoints", args.checkpoints)
    threads = run_threads(args, torch.get_num_threads())
    torch.set_num_threads(threads)
    path = experiments.cnn_experiment(args.run_name, **arguments, overwrite=args.overwrite, verbose=not args.quiet)
    if distributed.current_world().is_main:  # the process that wrote it
        print(f"{path}: {run_summary(experiments.read_result(path))}")
    return 0


def run_threads(args, otherwise):
    """torch threads for a run: --threads, else 1 on the digits (8x8 images: every
    operation is so small that threads cost more than they save, several times more
    on a busy machine), else ``otherwise``."""
    if args.threads is not None:
        return args.threads
    return 1 if (args.data or experiments.EXPERIMENT_DEFAULTS["data"]) == "digits" else otherwise


def run_summary(record):
    fit = record["results"]
    seconds = record.get("seconds")
    accuracy = f"test accuracy {fit.test_acc[-1]:.2f}% (best {max(fit.test_acc):.2f}%)" if fit.test_acc else "no test accuracy"
    timing = f" in {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
    return f"{accuracy} after {fit.num_epochs} epochs{timing}, seed {record['config'].get('seed')}"


def experiment_plot(args):
    check_plot_file(args.out, option="--out")
    fig, _ = experiments.plot_exp_results(args.patterns, legend_key=args.legend_key, log_loss=args.log_loss)
    fig.savefig(args.out)
    runs = len(fig.axes[0].get_lines())
    print(f"{runs} runs plotted to {args.out}")
    return 0


def experiment_rerun(args):
    if args.out is not None:
        check_output_file("--out", args.out)
        if os.path.exists(args.out):
            raise UsageError(f"--out {args.out}: the file exists; choose another name")
    record = experiments.read_result(args.file)
    new = experiments.rerun_experiment(args.file, root=args.root, verbose=not args.quiet)
    for key in ("nnlab", "torch", "threads", "platform"):
        then, now = record["environment"].get(key), new["environment"].get(key)
        if then != now:
            print(f"note: the run had {key} {then}, this rerun {now}: the numbers may differ in the last digits")
    if args.out is not None and distributed.current_world().is_main:
        experiments.save_result(args.out, new)
        print(f"rerun written to {args.out}")
    differences = experiments.fit_differences(record["results"], new["results"])
    if not differences:
        print(f"{args.file}: reproduced: the same FitResult to the last digit ({run_summary(new)})")
        return 0
    print(f"{args.file}: NOT reproduced: {len(differences)} fields differ, first at")
    for line in differences:
        print(f"  {line}")
    return 1


# Sweeps: each configuration is `nnlab experiment run` in a process of its own.


def experiment_sweep(args):
    if args.data == "cifar10" and (args.root is None or not os.path.isdir(args.root)):
        raise UsageError(f"--data cifar10 needs --root DIR, an existing folder (got {args.root})")
    configurations = sweep_configurations(args)
    os.makedirs(os.path.join(args.out_dir or experiments.EXPERIMENT_DEFAULTS["out_dir"], "logs"), exist_ok=True)
    total = len(configurations)
    print(f"sweep {args.run_name}: {total} configurations, {args.jobs} at a time")
    progress = SweepProgress(total)
    pending = []
    for item in configurations:
        if item.problem is not None:
            progress.report(item, f"cannot work: {item.problem}", failed=True)
        elif os.path.exists(item.path):
            progress.report(item, f"done already ({item.path}), skipped")
        else:
            pending.append(item)
    running = {}
    previous_handler = signal.signal(signal.SIGTERM, interrupt)
    try:
        while pending or running:
            while pending and len(running) < args.jobs:
                item = pending.pop(0)
                if os.path.exists(item.path):  # another sweep on the same folder finished it meanwhile
                    progress.report(item, f"done already ({item.path}), skipped")
                    continue
                running[start_run(item)] = item
            process = wait_for_any(running)
            item = running.pop(process)
            report_run(progress, item, process.returncode)
    except KeyboardInterrupt:
        stop_runs(running)
        missing = [item for item in configurations if item.problem is None and not os.path.exists(item.path)]
        print(
            f"sweep {args.run_name} interrupted: {len(missing)} configurations have no result yet; "
            "the same command runs them (the others are skipped)"
        )
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    print(f"sweep {args.run_name}: {progress.summary()}")
    return 1 if progress.failed else 0


class SweepItem(NamedTuple):
    name: str  # the result file's name without .json
    path: str
    argv: list  # `nnlab experiment run` arguments
    log: str
    problem: Optional[str]  # why the configuration cannot work; None if it can


def sweep_configurations(args):
    """One SweepItem per combination of the -K, -L, -P, -H and -M values, in that
    nesting order (K outermost). A dimension with several values other than K and L
    adds itself to the run name (``exp_P2``), so every configuration has its own file."""
    defaults = experiments.EXPERIMENT_DEFAULTS
    dimensions = {
        "filters_per_layer": args.filters_per_layer or [defaults["filters_per_layer"]],
        "layers_per_block": args.layers_per_block or [defaults["layers_per_block"]],
        "pool_every": args.pool_every or [defaults["pool_every"]],
        "hidden_dims": args.hidden_dims or [defaults["hidden_dims"]],
        "model_type": args.model_type or [defaults["model_type"]],
    }
    options = run_option_values(args)
    threads = run_threads(args, max(1, (os.cpu_count() or 1) // args.jobs))
    items = []
    for combination in itertools.product(*dimensions.values()):
        values = dict(zip(dimensions, combination))
        run_name = args.run_name
        for key in ("model_type", "pool_every", "hidden_dims"):
            if len(dimensions[key]) > 1:
                run_name += f"_{experiments.LETTERS.get(key, '')}{experiments.show(values[key])}"
        arguments = dict(options, run_name=run_name, seed=options.get("seed", 0), **values)
        config = experiments.resolve_config({**defaults, **arguments}, model_options(options))
        name = experiments.config_name(config)
        if any(item.name == name for item in items):
            raise UsageError(f"configuration {name} is given twice")
        try:
            experiments.experiment_model(config)
            problem = None
        except experiments.ExperimentError as error:
            problem = str(error).removeprefix(f"{name}: ")
        argv = ["experiment", "run", "-n", run_name, "-M", values["model_type"]]
        argv += ["-K", *map(str, values["filters_per_layer"]), "-L", str(values["layers_per_block"])]
        argv += ["-P", str(values["pool_every"]), "-H", *map(str, values["hidden_dims"])]
        argv += option_arguments(args) + ["--threads", str(threads), "--quiet"]
        log = os.path.join(config["out_dir"], "logs", name + ".log")
        items.append(SweepItem(name, experiments.result_path(config), argv, log, problem))
    return items


def model_options(values):
    """The model keyword arguments among run option values."""
    return {key: value for key, value in values.items() if key not in experiments.EXPERIMENT_KEYS}


def option_arguments(args):
    """The RUN_OPTIONS given on the command line, as arguments again."""
    arguments = []
    for flags, settings in RUN_OPTIONS:
        value = getattr(args, settings.get("dest", flags[-1].lstrip("-").replace("-", "_")))
        if value is None:
            continue
        arguments.append(flags[-1])
        if value is not True:
            arguments.append(str(value))
    return arguments


class SweepProgress:
    """Numbers the lines of finished configurations and counts the outcomes."""

    def __init__(self, total):
        self.total = total
        self.lines = 0
        self.failed = 0
        self.skipped = 0
        self.ran = 0

    def report(self, item, text, failed=False, ran=False):
        self.lines += 1
        self.failed += failed
        self.ran += ran
        self.skipped += not (failed or ran)
        print(f"[{self.lines}/{self.total}] {item.name}: {text}", flush=True)

    def summary(self):
        return f"{self.ran} run, {self.skipped} skipped (done before), {self.failed} failed"


def interrupt(signum, frame):
    raise KeyboardInterrupt


def start_run(item):
    """``nnlab experiment run`` for one configuration in a child process, its output
    appended to the configuration's log. On Linux the child is killed with its parent
    (PR_SET_PDEATHSIG), so a sweep killed outright leaves no run behind."""
    with open(item.log, "ab") as log:
        log.write(f"$ nnlab {shlex.join(item.argv)}\n".encode())
        log.flush()
        return subprocess.Popen(
            [sys.executable, "-m", "nnlab", *item.argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent(),
        )


def die_with_parent():
    """A preexec_fn that asks Linux to SIGKILL the child when this process dies (None
    elsewhere). prctl is looked up here, in the parent, so the child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()
    set_parent_death_signal = 1  # PR_SET_PDEATHSIG

    def setup():
        prctl(set_parent_death_signal, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return setup


def wait_for_any(running):
    """The first of the running processes to finish."""
    while True:
        for process in running:
            if process.poll() is not None:
                return process
        time.sleep(0.05)


def report_run(progress, item, status):
    if status == 0 and os.path.exists(item.path):
        progress.report(item, f"{run_summary(experiments.read_result(item.path))} -> {item.path}", ran=True)
    else:
        progress.report(item, f"FAILED (exit status {status}): {last_error(item.log)}; log {item.log}", failed=True)


def last_error(log):
    """The error line of a failed run's log (its last line if it has none)."""
    with open(log, encoding="utf-8", errors="replace") as file:
        lines = [line.strip() for line in file if line.strip()]
    errors = [line for line in lines if line.startswith("nnlab ")]
    return errors[-1] if errors else (lines[-1] if lines else "no output")


def stop_runs(running):
    """Ends the running configurations (a result file is written atomically, so a run
    ended early leaves none) and waits for them."""
    for process in running:
        process.terminate()
    for process in running:
        process.wait()


COMMANDS = {
    "gradcheck": run_gradcheck,
    "overfit": run_overfit,
    "train": run_train,
    "binary": run_binary,
    "bench": run_bench,
    "experiment": run_experiment_command,
}


if __name__ == "__main__":
    sys.exit(main())
