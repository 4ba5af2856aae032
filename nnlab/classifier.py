"""Classifiers on top of nnlab models: class probabilities and labels, a binary
threshold chosen on the ROC curve, decision boundaries, confusion matrices, and the
depth x width study of binary MLPs (the "binary classification" part of CS236781 hw2).

A ``Classifier`` wraps a model that returns class scores (N, C) and is itself a
``Layer``: its forward, backward and ``params()`` are the model's, so it trains with
``LayerTrainer`` and the optimizers like any layer, and the trainer counts its correct
predictions with the classifier's own rule (``classify_scores``).

The plots are headless like ``nnlab.plot``: ``Figure`` objects with an Agg canvas, no
pyplot figure, the backend untouched (scikit-learn's ``ConfusionMatrixDisplay`` imports
pyplot, but draws into the Axes it is given); each plot function takes an optional
``ax`` to draw into and returns ``(fig, ax)``. ``select_roc_thresh`` returns its threshold
alone and, asked to plot without an ``ax``, draws on pyplot's current Axes, as the
course's notebooks expect. Metrics come from scikit-learn (``roc_curve``,
``confusion_matrix``).
"""

import abc
import copy

import numpy as np
import torch

from .layers import CrossEntropyLoss, Layer
from .layers.base import checked_int, checked_real, recall_call, remember_call
from .models import MLP
from .optimizers import Adam
from .plot import new_figure
from .training import LayerTrainer

__all__ = [
    "ArgMaxClassifier", "BinaryClassifier", "Classifier", "accuracy", "mlp_experiment", "plot_confusion",
    "plot_decision_boundary_2d", "select_roc_thresh",
]


class Classifier(Layer):
    """A model that outputs class scores (N, C), with probabilities and labels.

    Forward: ``scores = model(x)``; backward: ``model.backward(dout)``; ``params()``,
    ``state_dict()`` (keys ``model.*``), ``train()``/``eval()`` are the model's.
    Shapes: (N, ...) -> (N, C). Caches: nothing of its own.

    ``predict_proba(x)`` is ``softmax(model(x))`` over the classes, computed in eval
    mode without tracking anything: no autograd graph, and the model keeps both its
    mode (every sub-layer's, as it found them) and what its latest ``forward`` cached
    for ``backward``. Subclasses say how probabilities become labels (``classify_proba``).
    """

    def __init__(self, model):
        super().__init__()
        if not isinstance(model, Layer):
            raise TypeError(f"{type(self).__name__}: model must be an nnlab Layer, got {type(model).__name__}")
        self.model = model

    def named_children(self):
        return [("model", self.model)]

    def backward_entry(self):
        return self.model.backward_entry()

    def input_readers(self):
        return [self.model]

    def forward(self, x, **kw):
        scores = self.model(x, **kw)
        self._model_call = remember_call(self.model)
        return self.finish_forward(scores)

    def backward(self, dout):
        self.start_backward(dout)
        with recall_call(self.model, self._model_call):
            return self.model.backward(dout)

    def predict_proba(self, x):
        """Class probabilities (N, C) for input x: each row sums to 1."""
        return self.predict_proba_scores(self._eval_scores(x))

    def predict_proba_scores(self, z):
        """Class probabilities (N, C) from scores z (N, C): ``softmax(z, dim=1)``."""
        if not isinstance(z, torch.Tensor) or z.dim() != 2:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"{type(self).__name__}: expected class scores of shape (N, C), got {got}")
        return torch.softmax(z, dim=1)

    def classify(self, x):
        """Predicted labels, int32 (N,) (``torch.int``, as the course asserts), for input x."""
        return self.classify_proba(self.predict_proba(x))

    def classify_scores(self, z):
        """Predicted labels, int32 (N,), from scores z (N, C) the model computed."""
        return self.classify_proba(self.predict_proba_scores(z))

    @abc.abstractmethod
    def classify_proba(self, proba):
        """Predicted labels, int32 (N,), from class probabilities (N, C)."""

    def _eval_scores(self, x):
        """The model's scores for x in eval mode, computed by a copy of the model that
        shares its parameters and buffers, so that the model keeps its modes and its
        cache for backward."""
        shared = {id(tensor): tensor for pair in self.model.params() for tensor in pair}
        shared.update({id(tensor): tensor for tensor in self.model.buffers()})
        shadow = copy.deepcopy(self.model, memo=shared)
        shadow.eval()
        with torch.no_grad():
            return shadow(x)

    def __repr__(self):
        return f"{type(self).__name__} of {self.model!r}"


class ArgMaxClassifier(Classifier):
    """Predicts the most probable class: ``argmax(proba, dim=1)`` (the first on ties, as
    ``torch.argmax``)."""

    def classify_proba(self, proba):
        return proba.argmax(dim=1).to(torch.int32)


class BinaryClassifier(Classifier):
    """Two classes: predicts class 1 when ``P(class 1) >= threshold``, else class 0.

    ``threshold`` (a number in [0, 1]) is a settable attribute, e.g. to the value
    ``select_roc_thresh`` chooses. The model must output 2 scores per sample.
    """

    def __init__(self, model, threshold=0.5):
        super().__init__(model)
        self.threshold = threshold

    @property
    def threshold(self):
        return self._threshold

    @threshold.setter
    def threshold(self, value):
        self._threshold = checked_real("BinaryClassifier", "threshold", value, 0.0, 1.0, high_open=False)

    def constructor_call(self):
        """The model and the current threshold (which may have been set after construction)."""
        return (self.model,), {"threshold": self.threshold}

    def classify_proba(self, proba):
        if proba.dim() != 2 or proba.shape[1] != 2:
            raise ValueError(f"BinaryClassifier: expected probabilities of 2 classes (N, 2), got {tuple(proba.shape)}")
        return (proba[:, 1] >= self.threshold).to(torch.int32)

    def __repr__(self):
        return f"BinaryClassifier(threshold={self.threshold:g}) of {self.model!r}"


# Thresholds on the ROC curve -------------------------------------------------------------


def select_roc_thresh(classifier, x, y, plot=False, ax=None):
    """The threshold on P(class 1) whose ROC point is nearest the ideal corner
    (FPR 0, TPR 1), by Euclidean distance.

    The candidates are the distinct scores ``classifier.predict_proba(x)[:, 1]``
    (``sklearn.metrics.roc_curve`` with ``drop_intermediate=False``, so that no point of
    the curve is skipped); classifying ``score >= t`` gives each candidate t its point.
    Among equally near points the highest threshold wins. The point (0, 0) of a
    threshold above every score (nothing positive) is drawn but never chosen, so the
    threshold is always one of the scores, a valid ``BinaryClassifier.threshold``.

    Args:
        classifier: a ``Classifier`` with 2 classes (class 1 is positive).
        x: its input (N, ...); y: labels (N,), 0 or 1, both present.
        plot: also draw the ROC curve with the chosen point marked, on pyplot's current
            Axes (``plt.gca()``, as a notebook shows it) unless ``ax`` is given.
        ax: draw into this Axes instead (implies ``plot``; pyplot is not touched).

    Returns:
        the threshold (a float), also when it draws: ``model.threshold =
        select_roc_thresh(model, x, y, plot=True)``.

    Raises:
        ValueError: y not 0/1 labels of x's length, only one class in y, or not 2 classes.
    """
    from sklearn.metrics import roc_curve

    scores = _positive_scores(classifier, x, "select_roc_thresh")
    labels = _binary_labels(y, len(scores), "select_roc_thresh")
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    # Index 0 is roc_curve's threshold above every score; the others are the distinct scores, decreasing.
    squared_distances = fpr[1:] ** 2 + (1 - tpr[1:]) ** 2
    best = 1 + int(np.argmin(squared_distances))
    threshold = float(thresholds[best])
    if plot or ax is not None:
        if ax is None:
            import matplotlib.pyplot as plt

            ax = plt.gca()
        _draw_roc(ax, fpr, tpr, best, threshold)
    return threshold


def _draw_roc(ax, fpr, tpr, best, threshold):
    from sklearn.metrics import auc

    ax.plot(fpr, tpr, color="C0", label=f"ROC (AUC = {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="chance")
    ax.plot(
        fpr[best],
        tpr[best],
        "o",
        color="C3",
        markersize=8,
        label=f"threshold {threshold:.3f} (FPR {fpr[best]:.3f}, TPR {tpr[best]:.3f})",
    )
    ax.set_xlabel("false positive rate (FPR)")
    ax.set_ylabel("true positive rate (TPR)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")


def _positive_scores(classifier, x, owner):
    """P(class 1) for every sample, as a numpy array."""
    proba = classifier.predict_proba(x)
    if proba.dim() != 2 or proba.shape[1] != 2:
        raise ValueError(f"{owner}: expected a classifier of 2 classes, got probabilities of shape {tuple(proba.shape)}")
    return proba[:, 1].cpu().numpy()


def _binary_labels(y, num_samples, owner):
    """y as a numpy array of 0/1 labels holding both classes."""
    y = torch.as_tensor(y)
    if y.dim() != 1 or y.shape[0] != num_samples:
        raise ValueError(f"{owner}: expected labels of shape ({num_samples},), got {tuple(y.shape)}")
    labels = y.cpu().numpy()
    present = sorted(set(np.unique(labels).tolist()))
    if not set(present) <= {0, 1}:
        raise ValueError(f"{owner}: expected labels 0 and 1, got values {present}")
    if len(present) < 2:
        raise ValueError(
            f"{owner}: y holds only class {present[0]}; the ROC curve needs samples of both classes"
        )
    return labels


# Plots -----------------------------------------------------------------------------------


def _figure_and_axes(ax, figsize):
    """(ax's figure, ax), or a new headless figure with one Axes when ax is None."""
    if ax is None:
        fig, (ax,) = new_figure(figsize)
    return ax.figure, ax


def plot_decision_boundary_2d(classifier, x, y, dx=0.1, ax=None):
    """The classifier's predicted class over a grid covering 2-D data, with the
    decision boundary drawn as a line and the points on top, coloured by their labels.

    The grid has step ``dx`` and covers the data with a margin of 10% of each
    feature's range; it is classified in one forward pass (``classifier.classify`` on
    every grid point at once).

    Args:
        classifier: a ``Classifier`` taking (N, 2) inputs.
        x: points (N, 2); y: their labels (N,).
        dx: the grid step, > 0.
        ax: an Axes to draw into; None: a new figure.

    Returns:
        ``(fig, ax)``.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != 2 or x.shape[0] == 0:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"plot_decision_boundary_2d: expected points of shape (N, 2), got {got}")
    y = torch.as_tensor(y)
    if y.shape != (x.shape[0],):
        raise ValueError(f"plot_decision_boundary_2d: expected labels of shape ({x.shape[0]},), got {tuple(y.shape)}")
    x1, x2, predicted = _classify_grid(classifier, x, dx)
    num_classes = max(int(predicted.max()), int(y.max())) + 1

    fig, ax = _figure_and_axes(ax, (6, 5))
    cmap = "coolwarm"
    levels = np.arange(num_classes + 1) - 0.5
    ax.contourf(x1.numpy(), x2.numpy(), predicted.numpy(), levels=levels, cmap=cmap, alpha=0.3)
    if len(torch.unique(predicted)) > 1:
        ax.contour(x1.numpy(), x2.numpy(), predicted.numpy(), levels=levels[1:-1], colors="k", linewidths=1)
    points = x.detach().cpu().numpy()
    labels = y.cpu().numpy()
    # The points take the colormap's ends, a darker shade of their class's region.
    ax.scatter(points[:, 0], points[:, 1], c=labels, cmap=cmap, vmin=0, vmax=max(1, num_classes - 1), s=6, alpha=0.8, edgecolors="none")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    return fig, ax


MAX_GRID_POINTS = 4_000_000


def _classify_grid(classifier, x, dx):
    """(x1, x2, predicted): the grid's coordinates and predicted classes, (rows, cols)
    CPU tensors, from one ``classify`` call on every grid point (on x's device)."""
    axis1, axis2 = _grid_axes(x, dx)
    x1, x2 = torch.meshgrid(axis1, axis2, indexing="xy")
    grid = torch.stack([x1.reshape(-1), x2.reshape(-1)], dim=1).to(device=x.device, dtype=x.dtype)
    predicted = classifier.classify(grid).reshape(x1.shape).cpu()
    return x1, x2, predicted


def _grid_axes(x, dx):
    """The two grid axes (float64, CPU): step dx, the data's range plus 10% each side."""
    dx = checked_real("plot_decision_boundary_2d", "dx", dx, 0.0, low_open=True)
    low = x.detach().min(dim=0).values.double().cpu()
    high = x.detach().max(dim=0).values.double().cpu()
    margin = 0.1 * (high - low) + dx
    axes = [torch.arange(low[i] - margin[i], high[i] + margin[i], dx, dtype=torch.float64) for i in range(2)]
    num_points = len(axes[0]) * len(axes[1])
    if num_points > MAX_GRID_POINTS:
        raise ValueError(
            f"plot_decision_boundary_2d: dx={dx} makes a grid of {num_points} points over this data "
            f"(at most {MAX_GRID_POINTS}); use a larger dx"
        )
    return axes


NORMALIZE_CHOICES = ("true", "pred", "all", None)


def plot_confusion(classifier, x, y, normalize="all", ax=None):
    """The confusion matrix of the classifier's predictions on (x, y), drawn by
    scikit-learn's ``ConfusionMatrixDisplay`` (rows: true label, columns: predicted).

    Args:
        normalize: 'true' (each row sums to 1), 'pred' (each column), 'all' (the whole
            matrix, the default) or None (counts), as in ``sklearn.metrics.confusion_matrix``.
        ax: an Axes to draw into; None: a new figure.

    Returns:
        ``(fig, ax)``.
    """
    from sklearn.metrics import ConfusionMatrixDisplay

    if normalize not in NORMALIZE_CHOICES:
        raise ValueError(f"plot_confusion: normalize must be one of {NORMALIZE_CHOICES}, got {normalize!r}")
    proba = classifier.predict_proba(x)
    predicted = classifier.classify_proba(proba).cpu().numpy()
    y = torch.as_tensor(y)
    if y.shape != predicted.shape:
        raise ValueError(f"plot_confusion: expected labels of shape {predicted.shape}, got {tuple(y.shape)}")
    fig, ax = _figure_and_axes(ax, (5, 4.5))
    ConfusionMatrixDisplay.from_predictions(
        y.cpu().numpy(),
        predicted,
        labels=list(range(proba.shape[1])),
        normalize=normalize,
        ax=ax,
        cmap="Blues",
        colorbar=False,
        values_format="d" if normalize is None else ".3f",
    )
    return fig, ax


# The depth x width study -------------------------------------------------------------------

# Chosen on rotated_moons over depths 1, 2, 4 x widths 2..128 (see the README): tanh
# keeps width-2 networks trainable where ReLU units die, and a little weight decay
# smooths the boundary that has to carry over to the shifted test distribution.
STUDY_ACTIVATION = "tanh"
STUDY_LEARNING_RATE = 1e-2
STUDY_REG = 1e-3


def mlp_experiment(
    depth,
    width,
    dl_train,
    dl_valid,
    dl_test,
    n_epochs,
    activation=STUDY_ACTIVATION,
    learn_rate=STUDY_LEARNING_RATE,
    reg=STUDY_REG,
    seed=None,
    verbose=False,
):
    """Trains a binary MLP of ``depth`` hidden layers of ``width`` units, chooses its
    threshold on the validation data and measures it on the test data.

    The model is ``BinaryClassifier(MLP(D, 2, (width,) * depth, activation))``,
    trained with cross-entropy and Adam for ``n_epochs`` epochs by ``LayerTrainer``;
    then ``select_roc_thresh`` on all the validation data sets its threshold.

    Args:
        depth, width: ints >= 1 (hidden layers, units per hidden layer).
        dl_train, dl_valid, dl_test: data loaders of ``(x (N, D), y (N,))`` batches.
        n_epochs: training epochs.
        activation: the hidden layers' activation (an ``MLP`` activation name or Layer).
        learn_rate, reg: Adam's learning rate and weight decay (L2 regularization).
        seed: if not None, ``torch.manual_seed(seed)`` first (initial weights, shuffling).
        verbose: progress bars on stderr.

    Returns:
        ``(model, threshold, valid_acc, test_acc)``: the trained ``BinaryClassifier``
        (its threshold set), the threshold, and the accuracies in percent on the
        validation and test data, both at that threshold.
    """
    depth = checked_int("mlp_experiment", "depth", depth, 1)
    width = checked_int("mlp_experiment", "width", width, 1)
    if seed is not None:
        torch.manual_seed(seed)
    x_valid, y_valid = _gather(dl_valid)
    x_test, y_test = _gather(dl_test)
    model = BinaryClassifier(MLP(x_valid.shape[1], 2, hidden_features=(width,) * depth, activation=activation))
    trainer = LayerTrainer(model, CrossEntropyLoss(), Adam(model.params(), learn_rate=learn_rate, reg=reg))
    trainer.fit(dl_train, dl_valid, n_epochs, print_every=None, verbose=verbose)
    model.threshold = select_roc_thresh(model, x_valid, y_valid)
    return model, model.threshold, accuracy(model, x_valid, y_valid), accuracy(model, x_test, y_test)


def accuracy(classifier, x, y):
    """Percentage of samples whose ``classifier.classify(x)`` is the label y."""
    return 100.0 * (classifier.classify(x) == y).double().mean().item()


def _gather(dl):
    """Every batch of a data loader, concatenated: (x, y)."""
    batches = list(dl)
    if not batches:
        raise ValueError("mlp_experiment: a data loader yielded no batches")
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
