"""Figures for nnlab training runs, drawn headless: learning curves of every recorded
metric (``plot_fit``), per-step loss and gradient norm (``plot_steps``), labelled
image grids (``plot_images``), and a layer's Jacobian (``plot_jacobian``) and
equivariance maps (``plot_equivariance``).

The figures are plain ``matplotlib.figure.Figure`` objects with an Agg canvas: no
pyplot, no window, no change to matplotlib's global backend. Save one with
``save(fig, "curves.png")`` (or ``fig.savefig(path)``); to show it in a notebook,
display ``fig`` itself.
"""

import math

import matplotlib
import numpy
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .grad_compare import equivariance_difference, jacobian, rotate90, shift
from .jacobians import preserved

__all__ = [
    "new_figure",
    "plot_equivariance",
    "plot_fit",
    "plot_images",
    "plot_jacobian",
    "plot_steps",
    "save",
    "smoothed",
]

PHASES = ("train", "test")
METRIC_TITLES = {"loss": "loss", "acc": "accuracy", "mae": "mean absolute error", "mse": "mean squared error"}
METRIC_UNITS = {"acc": "accuracy (%)", "mae": "MAE", "mse": "MSE"}
LINESTYLES = {"train": "-", "test": "--"}
MAX_COLUMNS = 3


def plot_fit(fit_result, fig=None, legend=None, log_loss=False, train_test_overlay=True):
    """Plots every metric a fit recorded against epoch, train and test, for one run:
    loss and accuracy for a classification, loss, MAE and MSE for a regression, the
    total loss and each task's loss and accuracy for a multi-task model.

    Args:
        fit_result: a ``nnlab.training.FitResult``; its ``metrics`` ("train_loss",
            "test_mae", ...: one value per epoch) are drawn, or, for a FitResult built
            from the five classic fields (or anything with ``train_loss``,
            ``train_acc``, ``test_loss``, ``test_acc``), those. Epochs are numbered
            1, 2, ...; an empty list is not drawn, a metric with no values gets no axes.
        fig: None for a new figure, or a figure this function returned earlier for the
            same metrics and layout, to overlay this run on the runs already there.
        legend: name of this run; lines are labelled ``"train (legend)"`` and
            ``"test (legend)"``, or ``"train"`` and ``"test"`` when None.
        log_loss: put the loss axes (total and per task) on a log scale.
        train_test_overlay: True: one axes per metric with train (solid) and test
            (dashed) on it; False: the course layout, a row of train axes above a row of
            test axes, one column per metric, lines labelled by ``legend``.

    Returns:
        ``(fig, axes)``: the figure and its axes as a list, metric by metric (with
        ``train_test_overlay=False``, the train row then the test row). For a
        classification ``axes[0]`` is the loss and ``axes[1]`` the accuracy. Each run
        has its own colour.
    """
    records = _epoch_records(fit_result)
    names = _metric_names(records)
    panels = [(None, name) for name in names] if train_test_overlay else [(p, n) for p in PHASES for n in names]
    titles = [_title(name) if phase is None else f"{phase} {_title(name)}" for phase, name in panels]
    if fig is None:
        rows, columns = _grid(len(names), train_test_overlay)
        fig, axes = _new_figure(rows, columns, len(panels), (6 * columns, 4.5 * rows))
        for ax, (phase, name), title in zip(axes, panels, titles):
            _setup_axes(ax, title, METRIC_UNITS.get(name.rpartition("_")[2], title), "epoch")
    else:
        axes = fig.axes
        existing = [ax.get_title() for ax in axes]
        if existing != titles:
            raise ValueError(
                f"plot_fit: fig must be a figure plot_fit returned for the same metrics and layout "
                f"({len(titles)} axes: {titles}), got one with {len(axes)} axes: {existing}"
            )
    color = _next_color(axes[0])
    for ax, (phase, name) in zip(axes, panels):
        for line_phase in PHASES if phase is None else (phase,):
            values = [float(v) for v in records.get(f"{line_phase}_{name}", [])]
            if not values:
                continue
            if phase is None:
                label = line_phase if legend is None else f"{line_phase} ({legend})"
            else:
                label = line_phase if legend is None else legend
            epochs = range(1, len(values) + 1)
            ax.plot(epochs, values, linestyle=LINESTYLES[line_phase], color=color, label=label)
        if log_loss and _is_loss(name):
            ax.set_yscale("log")
        ax.legend()
    return fig, list(axes)


def plot_steps(fit_result, fig=None, legend=None, smoothing=0.9, log_loss=False):
    """Plots the loss of every training step, and the parameter-gradient norm of every
    step when the fit recorded it: the raw values as a faint line and a smoothed line
    over them (an exponential moving average with TensorBoard's bias correction,
    ``s_t = (smoothing s_{t-1} + (1 - smoothing) v_t)`` divided by ``1 - smoothing^t``).

    Args:
        fit_result: a ``FitResult`` from ``fit`` (its ``steps``).
        fig: None, or a figure this function returned, to overlay another run.
        legend: name of this run, for the smoothed lines.
        smoothing: in [0, 1); 0 draws the raw values only.
        log_loss: put the loss axes on a log scale.

    Returns:
        ``(fig, axes)``: ``axes[0]`` loss per step, ``axes[1]`` gradient norm per step
        (when recorded).
    """
    steps = getattr(fit_result, "steps", None) or {}
    if not steps.get("loss"):
        raise ValueError("plot_steps: fit_result has no per-step records (a FitResult returned by fit has them)")
    if not 0 <= smoothing < 1:
        raise ValueError(f"plot_steps: smoothing must be in [0, 1), got {smoothing!r}")
    panels = [("loss", "loss")]
    if steps.get("grad_norm"):
        panels.append(("grad_norm", "gradient norm"))
    if fig is None:
        fig, axes = _new_figure(1, len(panels), len(panels), (6 * len(panels), 4.5))
        for ax, (_, quantity) in zip(axes, panels):
            _setup_axes(ax, f"{quantity} per step", quantity, "step")
    else:
        axes = fig.axes
        if len(axes) < len(panels):
            raise ValueError(f"plot_steps: fig must be a figure plot_steps returned with {len(panels)} axes, got {len(axes)}")
    color = _next_color(axes[0])
    for ax, (name, _) in zip(axes, panels):
        values = [float(v) for v in steps[name]]
        positions = range(1, len(values) + 1)
        label = name if legend is None else legend
        if smoothing > 0:
            ax.plot(positions, values, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(positions, smoothed(values, smoothing), color=color, label=label)
        else:
            ax.plot(positions, values, color=color, label=label)
        if log_loss and name == "loss":
            ax.set_yscale("log")
        ax.legend()
    return fig, list(axes)


def smoothed(values, smoothing):
    """The exponential moving average of ``values`` with weight ``smoothing`` on the
    past, bias-corrected so that the first points are not pulled towards 0."""
    average = 0.0
    result = []
    for step, value in enumerate(values, start=1):
        average = smoothing * average + (1 - smoothing) * value
        result.append(average / (1 - smoothing**step))
    return result


def plot_images(images, labels=None, ncols=8, class_names=None, normalize=True, title=None):
    """A grid of images with their labels as titles.

    Args:
        images: (N, C, H, W) with C 1 (grey) or 3 (RGB), or (N, H, W); a tensor or array.
        labels: None, or one per image: class indices (N,), several labels per image
            (N, T) (shown "3 | 7"), numbers (regression targets), or strings.
        ncols: images per row.
        class_names: names for class indices (a list or dict), e.g. CIFAR-10's classes.
        normalize: stretch each image to its own [min, max] for display (standardized
            images); False shows values in [0, 1] as they are.
        title: a title over the whole grid.

    Returns:
        ``(fig, axes)``, one axes per image.
    """
    images = torch.as_tensor(images).detach().cpu()
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"plot_images: expected images (N, 1 or 3, H, W) or (N, H, W), got {tuple(images.shape)}")
    if labels is not None and len(labels) != images.shape[0]:
        raise ValueError(f"plot_images: {images.shape[0]} images but {len(labels)} labels")
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"plot_images: ncols must be an int >= 1, got {ncols!r}")
    count = images.shape[0]
    columns = min(ncols, count)
    rows = math.ceil(count / columns)
    fig, axes = _new_figure(rows, columns, count, (1.6 * columns, 1.8 * rows + (0.4 if title else 0)))
    for index, ax in enumerate(axes):
        image = images[index].double()
        if normalize:
            low, high = image.min(), image.max()
            image = (image - low) / (high - low) if high > low else torch.zeros_like(image)
        image = image.clamp(0, 1)
        if image.shape[0] == 1:
            ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(image.permute(1, 2, 0).numpy())
        ax.set_xticks([])
        ax.set_yticks([])
        if labels is not None:
            ax.set_title(_label_text(labels[index], class_names), fontsize=9)
    if title:
        fig.suptitle(title)
    return fig, axes


def _label_text(label, class_names):
    if isinstance(label, str):
        return label
    label = torch.as_tensor(label)
    if label.dim() > 0:
        return " | ".join(_label_text(part, class_names) for part in label)
    if label.is_floating_point():
        return f"{label.item():.3g}"
    value = int(label.item())
    return str(class_names[value]) if class_names is not None else str(value)


def plot_jacobian(layer, x, y=None, ax=None):
    """Heat map of |J|, the Jacobian of ``layer`` at x built from its hand-written backward
    (``nnlab.grad_compare.jacobian``), as an (output entries) x (input entries) matrix in
    row-major order; exact zeros are left white, so the sparsity pattern shows: dense for
    Linear, a diagonal for ReLU, a band for Conv2d. A layer with several outputs stacks
    their rows. Use small inputs: the matrix has out.numel() * x.numel() entries.

    Returns ``(fig, ax)``; pass ``ax`` to draw into an axes of your own figure.
    """
    jacobians = jacobian(layer, x, y)
    jacobians = jacobians if isinstance(jacobians, tuple) else (jacobians,)
    matrix = torch.cat([j.detach().reshape(-1, x.numel()) for j in jacobians]).abs().double().cpu()
    if ax is None:
        _, (ax,) = new_figure((6, 5))
    fig = ax.figure
    magnitudes = numpy.ma.masked_equal(matrix.numpy(), 0.0)
    image = ax.imshow(magnitudes, cmap="viridis", interpolation="nearest", aspect="auto")
    fig.colorbar(image, ax=ax, label="|d out_i / d x_j|")
    nonzero = int((matrix != 0).sum())
    ax.set_title(f"|J| of {repr(layer).splitlines()[0]}\n{nonzero} of {matrix.numel()} entries nonzero", fontsize=9)
    ax.set_xlabel(f"input entry j (x: {tuple(x.shape)})")
    ax.set_ylabel("output entry i")
    return fig, ax


def plot_equivariance(layer, x, transforms=None):
    """Whether ``layer`` commutes with image transforms g, drawn: the input, the layer's
    features, and for each g the map |layer(g(x)) - g(layer(x))| (zero where they
    commute), each of the first sample and channel. ``transforms`` defaults to
    ``(shift(3, 3), rotate90())`` of ``nnlab.grad_compare``; any function of tensors works.

    Returns ``(fig, axes)``.
    """
    transforms = (shift(3, 3), rotate90()) if transforms is None else tuple(transforms)
    with preserved(layer):
        features = layer(x)
    panels = [("input x", x), (f"features f(x)\nf = {type(layer).__name__}", features)]
    for transform in transforms:
        difference = equivariance_difference(layer, x, transform).abs()
        title = f"|f(g(x)) - g(f(x))|\ng = {transform!r}\nmax {difference.max().item():.2g}"
        panels.append((title, difference))
    fig, axes = _new_figure(1, len(panels), len(panels), (3.2 * len(panels), 3.4))
    for ax, (title, image) in zip(axes, panels):
        shown = ax.imshow(_first_plane(image), cmap="viridis", interpolation="nearest")
        fig.colorbar(shown, ax=ax, shrink=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def _first_plane(tensor):
    """The (H, W) image of the first sample and channel."""
    plane = tensor.detach()
    while plane.dim() > 2:
        plane = plane[0]
    return plane.double().cpu().numpy()


def _epoch_records(fit_result):
    """{"train_loss": [...], ...}: a FitResult's metrics, or its four classic fields."""
    metrics = getattr(fit_result, "metrics", None)
    if metrics:
        return metrics
    return {f"{phase}_{name}": getattr(fit_result, f"{phase}_{name}") for phase in PHASES for name in ("loss", "acc")}


def _metric_names(records):
    """The metrics (without the phase) that have values, in the order recorded."""
    names = []
    for key, values in records.items():
        phase, _, name = key.partition("_")
        if phase in PHASES and len(values) and name not in names:
            names.append(name)
    return names


def _title(name):
    """'acc' -> 'accuracy', 'task0_mae' -> 'task 0 mean absolute error'."""
    task, _, metric = name.rpartition("_")
    text = METRIC_TITLES.get(metric, metric)
    return f"{task.replace('task', 'task ')} {text}" if task else text


def _is_loss(name):
    return name == "loss" or name.endswith("_loss")


def _grid(num_metrics, overlay):
    if not overlay:
        return 2, num_metrics
    columns = min(num_metrics, MAX_COLUMNS)
    return math.ceil(num_metrics / columns), columns


def _new_figure(rows, columns, count, figsize):
    """A headless figure with a rows x columns grid of axes, keeping the first ``count``."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(rows, columns, squeeze=False).reshape(-1))
    for ax in axes[count:]:
        fig.delaxes(ax)
    return fig, axes[:count]


def _setup_axes(ax, title, ylabel, xlabel):
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)


def _next_color(ax):
    """The colour of the next run on a figure: one per run, in matplotlib's cycle."""
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    runs_so_far = len({line.get_color() for line in ax.get_lines()})
    return colors[runs_so_far % len(colors)]


def new_figure(figsize, nrows=1, ncols=1):
    """A headless figure (Agg canvas, no pyplot) laid out with ``layout="constrained"``
    and its ``nrows`` x ``ncols`` axes, as a flat list row by row: ``(fig, axes)``."""
    return _new_figure(nrows, ncols, nrows * ncols, figsize)


def save(fig, path, dpi=100):
    """Writes ``fig`` to ``path`` (format from the extension, e.g. .png) and returns ``path``."""
    fig.savefig(path, dpi=dpi)
    return path
