"""nnlab.plot: learning curves of every metric, overlays, layouts, per-step plots,
image grids, headless PNGs."""

import collections
import os
import subprocess
import sys

import pytest
import torch
from matplotlib.figure import Figure

from nnlab.layers import Conv2d, Linear, ReLU
from nnlab.plot import plot_equivariance, plot_fit, plot_images, plot_jacobian, plot_steps, save, smoothed

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


# Every metric a fit records --------------------------------------------------------------

# A FitResult with records, as nnlab.training builds it (a local twin again).
Recorded = collections.namedtuple("Recorded", list(FitResult._fields) + ["metrics", "steps"])


def recorded(metrics, steps=None):
    return Recorded(
        len(metrics["train_loss"]),
        metrics["train_loss"],
        metrics.get("train_acc", []),
        metrics["test_loss"],
        metrics.get("test_acc", []),
        metrics,
        steps,
    )


REGRESSION = recorded(
    {
        "train_loss": [1.0, 0.5], "train_mae": [0.8, 0.6], "train_mse": [1.0, 0.5],
        "test_loss": [1.1, 0.7], "test_mae": [0.9, 0.7], "test_mse": [1.1, 0.7],
    },
    {"loss": [1.2, 0.9, 0.6, 0.4], "grad_norm": [2.0, 1.5, 1.0, 0.5]},
)
TWO_TASKS = recorded(
    {
        f"{phase}_{name}": [1.0, 2.0]
        for phase in ("train", "test")
        for name in ("loss", "task0_loss", "task0_acc", "task1_loss", "task1_acc")
    }
)


def titles(axes):
    return [ax.get_title() for ax in axes]


def test_a_regression_plot_holds_loss_mae_mse_and_no_accuracy():
    fig, axes = plot_fit(REGRESSION)
    assert titles(axes) == ["loss", "mean absolute error", "mean squared error"]
    assert len(fig.axes) == 3
    text = " ".join(ax.get_title() + ax.get_ylabel() + " ".join(labels(ax)) for ax in fig.axes)
    assert "acc" not in text
    assert list(axes[1].get_lines()[1].get_ydata()) == REGRESSION.metrics["test_mae"]
    assert labels(axes[2]) == ["train", "test"]


def test_a_multi_task_plot_has_each_task_and_log_loss_on_every_loss():
    fig, axes = plot_fit(TWO_TASKS, log_loss=True)
    assert titles(axes) == ["loss", "task 0 loss", "task 0 accuracy", "task 1 loss", "task 1 accuracy"]
    assert [ax.get_yscale() for ax in axes] == ["log", "log", "linear", "log", "linear"]
    assert axes[2].get_ylabel() == "accuracy (%)"


def test_train_test_overlay_false_is_the_course_layout():
    fig, axes = plot_fit(RUN_A, legend="sgd", train_test_overlay=False)
    assert titles(axes) == ["train loss", "train accuracy", "test loss", "test accuracy"]
    plot_fit(RUN_B, fig=fig, legend="adam", train_test_overlay=False)
    for ax in axes:
        assert labels(ax) == ["sgd", "adam"]
    assert list(axes[3].get_lines()[0].get_ydata()) == RUN_A.test_acc
    assert list(axes[0].get_lines()[1].get_ydata()) == RUN_B.train_loss
    with pytest.raises(ValueError, match="same metrics and layout"):
        plot_fit(RUN_A, fig=fig)  # an overlay layout onto the course layout
    with pytest.raises(ValueError, match="same metrics and layout"):
        plot_fit(REGRESSION, fig=plot_fit(RUN_A)[0])


def test_plot_steps_draws_raw_and_smoothed_lines():
    fig, axes = plot_steps(REGRESSION, legend="run", smoothing=0.5)
    assert titles(axes) == ["loss per step", "gradient norm per step"]
    raw, smooth = axes[0].get_lines()
    assert list(raw.get_xdata()) == [1, 2, 3, 4] and list(raw.get_ydata()) == [1.2, 0.9, 0.6, 0.4]
    # bias-corrected EMA, computed here: the first point is the first value
    expected, average = [], 0.0
    for step, value in enumerate([1.2, 0.9, 0.6, 0.4], start=1):
        average = 0.5 * average + 0.5 * value
        expected.append(average / (1 - 0.5**step))
    assert list(smooth.get_ydata()) == pytest.approx(expected)
    assert smooth.get_label() == "run" and smoothed([3.0], 0.9) == pytest.approx([3.0])
    assert list(axes[1].get_lines()[0].get_ydata()) == [2.0, 1.5, 1.0, 0.5]
    plot_steps(REGRESSION, fig=fig, legend="again")
    assert len(axes[0].get_lines()) == 4
    with pytest.raises(ValueError, match="per-step"):
        plot_steps(RUN_A)


def test_plot_images_titles_each_image_with_its_labels():
    images = torch.rand(5, 1, 8, 8)
    fig, axes = plot_images(images, torch.tensor([3, 1, 4, 1, 5]), ncols=3, class_names=list("abcdefghij"))
    assert len(axes) == 5 and len(fig.axes) == 5
    assert titles(axes) == ["d", "b", "e", "b", "f"]
    _, axes = plot_images(images[:2], torch.tensor([[3, 7], [0, 2]]))  # two labels per image
    assert titles(axes) == ["3 | 7", "0 | 2"]
    _, axes = plot_images(torch.rand(2, 3, 4, 4), ["cat", "dog"], title="rgb")
    assert titles(axes) == ["cat", "dog"]
    assert axes[0].get_images()[0].get_array().shape == (4, 4, 3)
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        plot_images(torch.rand(3, 8, 8), [1, 2])
    with pytest.raises(ValueError, match=r"\(N, 1 or 3, H, W\)"):
        plot_images(torch.rand(3, 2, 8, 8))


# Jacobians and equivariance -------------------------------------------------------------------


def test_plot_jacobian_draws_abs_j_with_zeros_blank(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 3)
    fig, ax = plot_jacobian(ReLU(), x)
    image = ax.get_images()[0].get_array()
    expected = torch.diag((x.reshape(-1) > 0).double())
    assert image.shape == (6, 6)
    assert list(image.mask.reshape(-1)) == list((expected == 0).reshape(-1).tolist())  # ReLU: a diagonal
    assert float(image.max()) == 1.0
    assert "of 36 entries nonzero" in ax.get_title()
    assert save(fig, tmp_path / "relu.png").read_bytes()[:4] == b"\x89PNG"

    _, dense = plot_jacobian(Linear(3, 4), x[:1])
    assert not dense.get_images()[0].get_array().mask.any()
    _, band = plot_jacobian(Conv2d(1, 1, 3, padding=1), torch.randn(1, 1, 5, 5))
    rows, cols = (~band.get_images()[0].get_array().mask).nonzero()
    assert abs(rows - cols).max() <= 6


def test_plot_equivariance_shows_input_features_and_one_map_per_transform(tmp_path):
    torch.manual_seed(1)
    conv = Conv2d(1, 2, 3, padding=1, padding_mode="circular")
    fig, axes = plot_equivariance(conv, torch.randn(1, 1, 12, 12))
    assert len(axes) == 4
    assert axes[0].get_title() == "input x" and axes[1].get_title() == "features f(x)\nf = Conv2d"
    shifted, rotated = axes[2].get_images()[0].get_array(), axes[3].get_images()[0].get_array()
    assert shifted.max() < 1e-5 and rotated.max() > 0.1  # commutes with shifts, not rotations
    assert "shift(3, 3, circular=True)" in axes[2].get_title()
    save(fig, tmp_path / "equivariance.png")
