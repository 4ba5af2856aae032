"""nnlab.plot: learning curves, overlays, headless PNGs."""

import collections
import os
import subprocess
import sys

import pytest
from matplotlib.figure import Figure

from nnlab.plot import plot_fit, save

# The fields of nnlab.training.FitResult; a local twin keeps this test independent of it.
FitResult = collections.namedtuple("FitResult", ["num_epochs", "train_loss", "train_acc", "test_loss", "test_acc"])

RUN_A = FitResult(3, [2.0, 1.0, 0.5], [40.0, 70.0, 90.0], [2.1, 1.2, 0.8], [38.0, 65.0, 80.0])
RUN_B = FitResult(4, [2.5, 1.5, 0.9, 0.4], [30.0, 50.0, 75.0, 95.0], [2.6, 1.7, 1.1, 0.9], [28.0, 45.0, 70.0, 85.0])


def labels(ax):
    return [line.get_label() for line in ax.get_lines()]


def test_plot_fit_two_axes_with_train_and_test():
    fig, axes = plot_fit(RUN_A)
    assert isinstance(fig, Figure)
    assert len(axes) == 2 and len(fig.axes) == 2
    loss_ax, acc_ax = axes
    assert labels(loss_ax) == ["train", "test"]
    assert labels(acc_ax) == ["train", "test"]
    train_loss, test_loss = loss_ax.get_lines()
    assert list(train_loss.get_xdata()) == [1, 2, 3]
    assert list(train_loss.get_ydata()) == RUN_A.train_loss
    assert list(test_loss.get_ydata()) == RUN_A.test_loss
    train_acc, test_acc = acc_ax.get_lines()
    assert list(train_acc.get_ydata()) == RUN_A.train_acc
    assert list(test_acc.get_ydata()) == RUN_A.test_acc
    assert loss_ax.get_yscale() == "linear"
    assert loss_ax.get_xlabel() == "epoch" and "accuracy" in acc_ax.get_ylabel()


def test_plot_fit_overlay_with_legends():
    fig, axes = plot_fit(RUN_A, legend="sgd")
    fig2, axes2 = plot_fit(RUN_B, fig=fig, legend="adam")
    assert fig2 is fig and axes2[0] is axes[0] and axes2[1] is axes[1]
    expected = ["train (sgd)", "test (sgd)", "train (adam)", "test (adam)"]
    assert labels(axes[0]) == expected
    assert labels(axes[1]) == expected
    legend_texts = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert legend_texts == expected
    lines = axes[0].get_lines()
    assert lines[0].get_color() == lines[1].get_color()  # one colour per run
    assert lines[0].get_color() != lines[2].get_color()
    assert list(lines[2].get_xdata()) == [1, 2, 3, 4]


def test_plot_fit_log_loss_and_empty_test():
    no_test = FitResult(2, [1.0, 0.1], [50.0, 90.0], [], [])
    fig, axes = plot_fit(no_test, log_loss=True)
    assert axes[0].get_yscale() == "log"
    assert axes[1].get_yscale() == "linear"
    assert labels(axes[0]) == ["train"]


def test_plot_fit_rejects_foreign_figure():
    fig = Figure()
    fig.subplots(1, 3)
    with pytest.raises(ValueError, match="3 axes"):
        plot_fit(RUN_A, fig=fig)


def test_plot_fit_with_nnlab_fit_result(tmp_path):
    training = pytest.importorskip("nnlab.training")
    result = training.FitResult(*RUN_A)
    fig, axes = plot_fit(result)
    assert labels(axes[0]) == ["train", "test"]


def test_save_png(tmp_path):
    fig, _ = plot_fit(RUN_A, legend="a")
    plot_fit(RUN_B, fig=fig, legend="b")
    path = tmp_path / "curves.png"
    assert save(fig, path) == path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_headless_without_pyplot(tmp_path):
    """In a fresh interpreter with no display: no pyplot imported, the backend untouched."""
    path = tmp_path / "headless.png"
    code = (
        "import sys, matplotlib\n"
        "from nnlab.plot import plot_fit, save\n"
        "import collections\n"
        "R = collections.namedtuple('R', 'num_epochs train_loss train_acc test_loss test_acc')\n"
        "fig, axes = plot_fit(R(2, [1.0, 0.5], [50.0, 60.0], [1.1, 0.7], [45.0, 55.0]), log_loss=True)\n"
        f"save(fig, {str(path)!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
    assert path.read_bytes()[:4] == b"\x89PNG"
