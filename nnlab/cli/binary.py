"""``nnlab binary``: the depth x width study of binary MLPs on rotated moons."""

import os
from typing import NamedTuple

import numpy
import torch

from .. import data
from .checks import UsageError, check_output_file, check_plot_file, positive_int, seed

__all__ = ["add_parser", "run_binary"]

STUDY_EPOCHS = 30  # nnlab binary: enough for every model of the default grid to settle


def add_parser(commands):
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
    binary.set_defaults(run=run_binary)


def run_binary(args):
    if args.samples < 10:
        raise UsageError(f"--samples must be >= 10 (rotated_moons), got {args.samples}")
    if args.plot is not None:
        check_plot_file(args.plot)
        check_output_file("--plot", best_plot_path(args.plot))
    threads = torch.get_num_threads()
    # The study's tensors are tiny (64 points by at most 128 units): a second thread costs
    # more than it saves.
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
    from .. import classifier  # matplotlib and scikit-learn's metrics load only for this command

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
    from ..plot import new_figure

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
    from ..plot import new_figure

    fig, (roc_ax, confusion_ax) = new_figure((10, 4.5), 1, 2)
    classifier.select_roc_thresh(best.model, x_valid, y_valid, ax=roc_ax)
    roc_ax.set_title("ROC curve on the validation data")
    classifier.plot_confusion(best.model, x_test, y_test, ax=confusion_ax)
    confusion_ax.set_title("Confusion matrix on the test data (share of all points)")
    fig.suptitle(f"Best model by validation accuracy: depth {best.depth}, width {best.width}")
    return fig
