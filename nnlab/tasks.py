"""The ready-made training tasks that ``nnlab train`` and ``nnlab overfit`` run and the
benchmarks measure: the default MLP and CNN, each data set's problem (data shaped for
the model, model, loss, final report), and the gradient self-check done before training.
"""

import copy
import math
from typing import Callable, NamedTuple

import torch

from . import data
from .grad_compare import gradient_errors
from .layers import CrossEntropyLoss, Heads, Linear, MSELoss, MultiTaskLoss, ReLU, Sequential
from .models import CNN, MLP

__all__ = [
    "DEFAULT_LEARNING_RATES",
    "MODEL_KINDS",
    "MULTI_DIGIT_TASKS",
    "PROBLEMS",
    "Problem",
    "TaskError",
    "VERIFY_TOLERANCE",
    "build_model",
    "load_dataset",
    "make_problem",
    "own_data_problem",
    "model_input",
    "verify_gradients",
]

MODEL_KINDS = ("mlp", "cnn")
DEFAULT_LEARNING_RATES = {"sgd": 0.05, "momentum": 0.01, "rmsprop": 1e-3, "adam": 1e-3, "adamw": 1e-3}
MULTI_DIGIT_TASKS = ("top-left digit", "bottom-right digit")
VERIFY_TOLERANCE = 1e-10


class TaskError(ValueError):
    """A model kind that a data set's problem cannot use."""


def build_model(kind, in_size, num_classes):
    """The default ``kind`` model ('mlp' or 'cnn') for samples of ``in_size``: (C, H, W)
    images, or (for an MLP) any shape, flattened."""
    if kind == "mlp":
        # Dropout: the digits' test accuracy varies less from seed to seed with it.
        return MLP(math.prod(in_size), num_classes, hidden_features=(256, 128), dropout=0.3)
    # Two conv -> pool stages halve the image twice; an 8x8 digit ends as 2x2.
    return CNN(in_size, num_classes, channels=[16, 32], pool_every=1, hidden_dims=[64])


def model_input(kind, images):
    """MLPs take flat vectors, CNNs take (N, C, H, W) images."""
    return images.flatten(1) if kind == "mlp" else images


def load_dataset(name, root, seed):
    """(x_train, y_train, x_test, y_test, in_size, num_classes) of an image data set,
    standardized with the training statistics; the bundled ones split 80/20 with ``seed``."""
    x_train, y_train, x_test, y_test = data.load_split(name, root, seed)
    x_train, x_test = data.standardize(x_train, x_test)
    return x_train, y_train, x_test, y_test, tuple(x_train.shape[1:]), 10


def verify_gradients(model, loss_fn, x, y):
    """Worst error between the model's backward (through the loss) and autograd (and
    the model's torch.nn twin where it has one), on a float64 copy so that rounding cannot
    hide or fake a bug: ``grad_compare.gradient_errors``' measure, relative to the size of
    the gradients, so that a gradient that is truly 0 (a bias before BatchNorm) passes."""
    model_and_loss = copy.deepcopy(Sequential(model, loss_fn)).to(dtype=torch.float64)
    targets = y.double() if y.is_floating_point() else y
    return max(gradient_errors(model_and_loss, x.double(), targets))


class Problem(NamedTuple):
    """What ``nnlab train`` trains for one data set: the data (standardized, shaped for
    the model), the model and loss, a one-line description, and ``summary(fit)``, the
    final figures as one line."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    model: object
    loss_fn: object
    description: str
    summary: Callable


def classification_problem(kind, name, x_train, y_train, x_test, y_test, classes=range(10)):
    """An MLP or CNN classifier over ``classes`` with CrossEntropyLoss."""
    check_model_input(kind, name, x_train)
    x_train, x_test = data.standardize(x_train, x_test)

    def summary(fit):
        return f"final test accuracy: {fit.test_acc[-1]:.2f}% (best {max(fit.test_acc):.2f}%)"

    return Problem(
        model_input(kind, x_train),
        y_train,
        model_input(kind, x_test),
        y_test,
        build_model(kind, tuple(x_train.shape[1:]), len(classes)),
        CrossEntropyLoss(),
        f"{name}: {len(x_train)} training and {len(x_test)} test samples{class_names(classes)}",
        summary,
    )


def check_model_input(kind, name, x):
    """TaskError unless a ``kind`` model takes samples shaped as ``x``'s."""
    if kind == "cnn" and x.dim() != 4:
        raise TaskError(f"{name}: a cnn takes images (N, C, H, W); the samples have shape {tuple(x.shape[1:])}")


def class_names(classes):
    """', 3 classes (a, b, c)' for a file's classes (the first few named); '' for the data
    sets' digits."""
    if isinstance(classes, range):
        return ""
    shown = ", ".join(str(label) for label in classes[:10])
    return f", {len(classes)} classes ({shown}{', ...' if len(classes) > 10 else ''})"


def diabetes_problem(kind, name, x_train, y_train, x_test, y_test):
    """The diabetes regression: an MLP (``regression_problem``) on its patients."""
    if kind != "mlp":
        raise TaskError(f"{name} trains an MLP (its samples are 10 measurements, not images)")
    return regression_problem(kind, name, x_train, y_train, x_test, y_test, "patients, 10 features")


def regression_problem(kind, name, x_train, y_train, x_test, y_test, samples="samples"):
    """A regression MLP with MSELoss on flattened samples. Features and targets are
    standardized with the training statistics; the summary gives MAE and MSE in the
    target's own units, next to those of predicting the training mean."""
    if kind != "mlp":
        raise TaskError(f"{name}: a regression trains an MLP")
    x_train, x_test = data.standardize(model_input(kind, x_train), model_input(kind, x_test))
    mean, std = y_train.mean(), y_train.std(unbiased=False)
    if std == 0:  # every training target the same: only centred, as standardize does
        std = torch.ones_like(std)
    baseline_error = y_test - mean

    def summary(fit):
        mae = fit.metrics["test_mae"][-1] * std.item()
        mse = fit.metrics["test_mse"][-1] * std.item() ** 2
        baseline_mae = baseline_error.abs().mean().item()
        baseline_mse = baseline_error.pow(2).mean().item()
        return (
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
        f"{name}: {len(x_train)} training and {len(x_test)} test {samples}, regression",
        summary,
    )


def multi_digits_problem(kind, name, x_train, y_train, x_test, y_test):
    """A shared encoder (the ``kind`` model, with 128 outputs) followed by ReLU and two
    classification heads, one per digit, trained with MultiTaskLoss."""
    x_train, x_test = data.standardize(x_train, x_test)
    in_size = tuple(x_train.shape[1:])
    features = 128
    encoder = build_model(kind, in_size, features)
    model = Sequential(encoder, ReLU(), Heads(Linear(features, 10), Linear(features, 10)))

    def summary(fit):
        accuracies = []
        for index, task in enumerate(MULTI_DIGIT_TASKS):
            values = fit.metrics[f"test_task{index}_acc"]
            accuracies.append(f"{task} {values[-1]:.2f}% (best {max(values):.2f}%)")
        return f"final test accuracy: {', '.join(accuracies)}"

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
        summary,
    )


PROBLEMS = {"diabetes": diabetes_problem, "multi-digits": multi_digits_problem}


def own_data_problem(kind, name, own):
    """The Problem of a data file (``data.load_data_file``'s ``OwnData``): a classifier over
    its classes, or a regression MLP."""
    split = own[:4]
    if own.task == "classification":
        return classification_problem(kind, name, *split, classes=own.classes)
    return regression_problem(kind, name, *split)


def make_problem(kind, name, x_train, y_train, x_test, y_test):
    """The Problem of the data set ``name`` (its split as ``data.load_split`` returns it)
    for a ``kind`` model: a classifier unless ``PROBLEMS`` names another."""
    return PROBLEMS.get(name, classification_problem)(kind, name, x_train, y_train, x_test, y_test)
