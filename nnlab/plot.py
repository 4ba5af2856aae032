"""Learning curves for nnlab training runs, drawn headless.

The figures are plain ``matplotlib.figure.Figure`` objects with an Agg canvas: no
pyplot, no window, no change to matplotlib's global backend. Save one with
``save(fig, "curves.png")`` (or ``fig.savefig(path)``); to show it in a notebook,
display ``fig`` itself.
"""

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def plot_fit(fit_result, fig=None, legend=None, log_loss=False):
    """Plots loss and accuracy against epoch, train and test, for one training run.

    Args:
        fit_result: a ``nnlab.training.FitResult`` (or anything with ``train_loss``,
            ``train_acc``, ``test_loss``, ``test_acc``: one value per epoch, accuracy in
            percent). Epochs are numbered 1, 2, ...; an empty list is not drawn.
        fig: None for a new figure, or a figure this function returned earlier to
            overlay this run on the runs already there.
        legend: name of this run; lines are labelled ``"train (legend)"`` and
            ``"test (legend)"``, or ``"train"`` and ``"test"`` when None.
        log_loss: put the loss axis on a log scale.

    Returns:
        ``(fig, axes)``: the figure and its two axes, ``axes[0]`` loss and ``axes[1]``
        accuracy. Each run has its own colour: train solid, test dashed.
    """
    if fig is None:
        fig = Figure(figsize=(12, 4.5), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 2)
        _setup_axes(axes)
    else:
        axes = fig.axes
        if len(axes) != 2:
            raise ValueError(
                f"plot_fit: fig must be a figure plot_fit returned (2 axes), got one with {len(axes)} axes"
            )
    loss_ax, acc_ax = axes
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    runs_so_far = len({line.get_color() for line in loss_ax.get_lines()})
    color = colors[runs_so_far % len(colors)]

    curves = [
        (loss_ax, fit_result.train_loss, "train", "-"),
        (loss_ax, fit_result.test_loss, "test", "--"),
        (acc_ax, fit_result.train_acc, "train", "-"),
        (acc_ax, fit_result.test_acc, "test", "--"),
    ]
    for ax, values, kind, linestyle in curves:
        values = [float(v) for v in values]
        if not values:
            continue
        label = kind if legend is None else f"{kind} ({legend})"
        epochs = range(1, len(values) + 1)
        ax.plot(epochs, values, linestyle=linestyle, color=color, label=label)
    if log_loss:
        loss_ax.set_yscale("log")
    for ax in axes:
        ax.legend()
    return fig, list(axes)


def _setup_axes(axes):
    loss_ax, acc_ax = axes
    loss_ax.set_title("loss")
    loss_ax.set_ylabel("loss")
    acc_ax.set_title("accuracy")
    acc_ax.set_ylabel("accuracy (%)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)


def save(fig, path, dpi=100):
    """Writes ``fig`` to ``path`` (format from the extension, e.g. .png) and returns ``path``."""
    fig.savefig(path, dpi=dpi)
    return path
