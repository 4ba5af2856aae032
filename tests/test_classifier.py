"""nnlab.classifier: probabilities against torch.softmax and a torch.nn twin, labels
against their definition, the ROC threshold against a brute-force search, the plots'
contents, training with a classifier's own rule, and a tiny mlp_experiment."""

import os
import subprocess
import sys

import numpy as np
import pytest
import sklearn.metrics
import torch

from nnlab.classifier import (
    ArgMaxClassifier,
    BinaryClassifier,
    Classifier,
    accuracy,
    mlp_experiment,
    plot_confusion,
    plot_decision_boundary_2d,
    select_roc_thresh,
)
from nnlab.data import Batches, rotated_moons
from nnlab.layers import CrossEntropyLoss, Dropout, Layer, Linear, Sequential, Tanh
from nnlab.models import MLP
from nnlab.optimizers import VanillaSGD
from nnlab.plot import new_figure
from nnlab.training import LayerTrainer
from reference import copy_params


def dropout_model(seed, classes=2):
    torch.manual_seed(seed)
    return Sequential(Linear(3, 8), Tanh(), Dropout(0.5), Linear(8, classes))


def fixed_scores_classifier(threshold=0.5):
    """A BinaryClassifier whose input is the logit z (N, 1): scores (0, z), so
    P(class 1) = sigmoid(z) and any score, tied or not, is easy to set."""
    linear = Linear(1, 2)
    linear.weight.copy_(torch.tensor([[0.0], [1.0]]))
    linear.bias.zero_()
    return BinaryClassifier(linear, threshold=threshold)


def logits_of(probabilities):
    p = torch.as_tensor(probabilities, dtype=torch.float64)
    return torch.log(p / (1 - p)).to(torch.float32).reshape(-1, 1)


# Probabilities and labels -------------------------------------------------------------------


@pytest.mark.parametrize("classes", [2, 5])
def test_predict_proba_is_the_softmax_of_the_models_eval_scores(classes):
    model = dropout_model(seed=classes, classes=classes)
    classifier = ArgMaxClassifier(model)
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))
    proba = classifier.predict_proba(x)

    assert proba.shape == (64, classes) and proba.dtype == torch.float32
    assert (proba.sum(dim=1) - 1).abs().max().item() <= 1e-6
    expected = torch.softmax(model.eval()(x), dim=1)
    assert (proba - expected).abs().max().item() <= 1e-6
    twin = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Dropout(0.5), torch.nn.Linear(8, classes))
    copy_params(model, twin)
    with torch.no_grad():
        twin_proba = torch.nn.functional.softmax(twin.eval()(x), dim=1)
    assert (proba - twin_proba).abs().max().item() <= 1e-6


def all_modes(layer):
    modes = [layer.training]
    for _, child in layer.named_children():
        modes += all_modes(child)
    return modes


@pytest.mark.parametrize("setup", ["train", "eval", "mixed"])
def test_predict_proba_runs_in_eval_mode_and_leaves_every_mode_as_found(setup):
    model = dropout_model(seed=0)
    if setup == "eval":
        model.eval()
    if setup == "mixed":
        model[2].eval()  # dropout off, the rest training
    classifier = BinaryClassifier(model)
    before = all_modes(classifier)
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(2))

    first = classifier.predict_proba(x)
    second = classifier.predict_proba(x)

    assert all_modes(classifier) == before
    assert torch.equal(first, second), "dropout was active: not in eval mode"


def test_a_classifier_whose_model_is_also_used_elsewhere_backpropagates_its_own_call():
    model = dropout_model(seed=30).eval()
    twin = dropout_model(seed=30).eval()
    classifier = BinaryClassifier(model)
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(31))
    dout = torch.randn(6, 2, generator=torch.Generator().manual_seed(32))
    classifier(x)
    model(torch.randn(6, 3))  # the same model at another place, before the backward
    twin(x)
    assert torch.equal(classifier.backward(dout), twin.backward(dout))
    with pytest.raises(ValueError, match=r"\(6, 2\)"):
        classifier.backward(torch.randn(6, 3))


def test_predict_proba_tracks_nothing_and_keeps_the_cache_for_backward():
    model = dropout_model(seed=3)
    twin = dropout_model(seed=3)
    classifier = BinaryClassifier(model)
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(4))
    other = torch.randn(16, 3, generator=torch.Generator().manual_seed(5), requires_grad=True)
    dout = torch.randn(16, 2, generator=torch.Generator().manual_seed(6))

    torch.manual_seed(7)
    classifier(x)
    proba = classifier.predict_proba(other)  # between a forward and its backward
    dx = classifier.backward(dout)
    torch.manual_seed(7)
    twin(x)
    expected_dx = twin.backward(dout)

    assert not proba.requires_grad and proba.grad_fn is None
    assert torch.equal(dx, expected_dx)
    for (_, grad), (_, expected) in zip(classifier.params(), twin.params()):
        assert torch.equal(grad, expected)


@pytest.mark.parametrize("threshold", [0.0, 0.2, 0.5, 0.73, 1.0])
def test_binary_classify_is_class_1_where_its_probability_reaches_the_threshold(threshold):
    classifier = BinaryClassifier(dropout_model(seed=8), threshold=0.5)
    classifier.threshold = threshold
    x = torch.randn(200, 3, generator=torch.Generator().manual_seed(9))
    labels = classifier.classify(x)
    assert labels.dtype == torch.int32
    assert torch.equal(labels, (classifier.predict_proba(x)[:, 1] >= threshold).int())


def test_binary_classify_at_a_threshold_equal_to_a_score_says_class_1():
    classifier = fixed_scores_classifier()
    x = logits_of([0.2, 0.6, 0.6, 0.9])
    scores = classifier.predict_proba(x)[:, 1]
    classifier.threshold = float(scores[1])
    assert classifier.classify(x).tolist() == [0, 1, 1, 1]


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), True, "0.5", None])
def test_binary_threshold_outside_0_1_is_refused(bad):
    with pytest.raises(ValueError, match=r"BinaryClassifier: threshold must be a (real number|finite number in \[0, 1\])"):
        BinaryClassifier(Linear(2, 2), threshold=bad)
    classifier = BinaryClassifier(Linear(2, 2))
    with pytest.raises(ValueError, match="threshold"):
        classifier.threshold = bad
    assert classifier.threshold == 0.5


def test_binary_classifier_needs_two_classes():
    with pytest.raises(ValueError, match=r"BinaryClassifier: expected probabilities of 2 classes \(N, 2\), got \(4, 3\)"):
        BinaryClassifier(Linear(2, 3)).classify(torch.randn(4, 2))


def test_argmax_classify_is_the_most_probable_class():
    classifier = ArgMaxClassifier(dropout_model(seed=10, classes=4))
    x = torch.randn(100, 3, generator=torch.Generator().manual_seed(11))
    assert torch.equal(classifier.classify(x), classifier.predict_proba(x).argmax(dim=1))


def test_a_classifier_wraps_only_layers_and_is_abstract():
    with pytest.raises(TypeError, match="BinaryClassifier: model must be an nnlab Layer, got Linear"):
        BinaryClassifier(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError):
        Classifier(Linear(2, 2))


def test_scores_that_are_not_a_matrix_are_refused():
    with pytest.raises(ValueError, match=r"ArgMaxClassifier: expected class scores of shape \(N, C\), got \(5,\)"):
        ArgMaxClassifier(Linear(2, 2)).classify_scores(torch.randn(5))


def test_repr_names_the_rule_and_the_model():
    assert repr(BinaryClassifier(Linear(2, 2), threshold=0.25)) == "BinaryClassifier(threshold=0.25) of Linear(2, 2)"
    assert repr(ArgMaxClassifier(Linear(2, 3))) == "ArgMaxClassifier of Linear(2, 3)"


# A classifier is the model's layer -----------------------------------------------------------


def test_a_classifier_is_its_model_forward_backward_and_params():
    model = dropout_model(seed=12)
    twin = dropout_model(seed=12)
    classifier = BinaryClassifier(model)
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(13))
    dout = torch.randn(8, 2, generator=torch.Generator().manual_seed(14))
    assert [id(p) for p, _ in classifier.params()] == [id(p) for p, _ in model.params()]
    assert [id(g) for _, g in classifier.params()] == [id(g) for _, g in model.params()]
    assert set(classifier.state_dict()) == {f"model.{key}" for key in model.state_dict()}

    torch.manual_seed(15)
    out = classifier(x)
    dx = classifier.backward(dout)
    torch.manual_seed(15)
    assert torch.equal(out, twin(x))
    assert torch.equal(dx, twin.backward(dout))
    for (_, grad), (_, expected) in zip(classifier.params(), twin.params()):
        assert torch.equal(grad, expected)
    assert classifier.eval() is classifier and not model.training and not model[2].training


def test_training_a_binary_classifier_counts_correct_predictions_at_its_threshold():
    x = torch.randn(90, 3, generator=torch.Generator().manual_seed(15))
    y = (x[:, 0] > 0.3).long()
    classifier = BinaryClassifier(dropout_model(seed=16))
    trainer = LayerTrainer(classifier, CrossEntropyLoss(), VanillaSGD(classifier.params(), learn_rate=0.1))
    batches = Batches(x, y, batch_size=32)
    for threshold in [0.0, 1.0, 0.5]:
        classifier.threshold = threshold
        result = trainer.test_epoch(batches, verbose=False)
        expected = 100.0 * (classifier.classify(x) == y).double().mean().item()
        assert result.accuracy == pytest.approx(expected, abs=1e-9)
    assert trainer.test_epoch(batches, verbose=False).accuracy == pytest.approx(accuracy(classifier, x, y))
    classifier.threshold = 0.0  # every prediction is class 1
    assert trainer.train_epoch(batches, verbose=False).accuracy == pytest.approx(100.0 * y.double().mean().item())


# select_roc_thresh ---------------------------------------------------------------------------------


def brute_force_threshold(scores, y):
    """Tries every distinct score t as 'class 1 when score >= t' and keeps the one whose
    (FPR, TPR) is nearest (0, 1); on equal distances, the highest t."""
    scores = scores.tolist()
    y = y.tolist()
    positives = sum(y)
    negatives = len(y) - positives
    best = None
    for t in sorted(set(scores), reverse=True):
        tp = sum(1 for s, label in zip(scores, y) if s >= t and label == 1)
        fp = sum(1 for s, label in zip(scores, y) if s >= t and label == 0)
        fpr = fp / negatives
        tpr = tp / positives
        distance = fpr**2 + (1 - tpr) ** 2
        if best is None or distance < best[0]:
            best = (distance, t, fpr, tpr)
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_select_roc_thresh_equals_a_brute_force_search_over_every_score(seed, ties):
    generator = torch.Generator().manual_seed(seed)
    n = 60
    logits = torch.randint(-3, 4, (n, 1), generator=generator).float() if ties else torch.randn(n, 1, generator=generator)
    y = ((logits[:, 0] + 1.5 * torch.randn(n, generator=generator)) > 0).long()
    classifier = fixed_scores_classifier()
    scores = classifier.predict_proba(logits)[:, 1]
    if ties:
        assert len(torch.unique(scores)) < n // 4
    assert select_roc_thresh(classifier, logits, y) == brute_force_threshold(scores, y)[1]


def test_select_roc_thresh_prefers_the_highest_of_equally_near_thresholds():
    # scikit-learn's roc_curve example: 0.8 and 0.35 are both at distance 0.5 from (0, 1).
    classifier = fixed_scores_classifier()
    x = logits_of([0.1, 0.4, 0.35, 0.8])
    y = torch.tensor([0, 0, 1, 1])
    scores = classifier.predict_proba(x)[:, 1]
    assert select_roc_thresh(classifier, x, y) == float(scores[3])
    assert brute_force_threshold(scores, y)[1] == float(scores[3])


def test_select_roc_thresh_finds_a_point_inside_a_straight_stretch_of_the_curve():
    # 5 negatives, 10 positives: 5 positives on top, then 5 tied (negative, positive)
    # pairs that walk the straight line from (0, 0.5) to (1, 1) in equal steps. The
    # nearest point to (0, 1) is the first step, (0.2, 0.6), which roc_curve's default
    # drop_intermediate=True would drop.
    probabilities = [0.95] * 5 + [p for p in (0.8, 0.7, 0.6, 0.5, 0.4) for _ in range(2)]
    y = torch.tensor([1] * 5 + [0, 1] * 5)
    classifier = fixed_scores_classifier()
    x = logits_of(probabilities)
    scores = classifier.predict_proba(x)[:, 1]
    first_step = float(scores[5])

    assert select_roc_thresh(classifier, x, y) == first_step == brute_force_threshold(scores, y)[1]
    _, _, kept = sklearn.metrics.roc_curve(y.numpy(), scores.numpy())
    assert first_step not in kept.tolist()


@pytest.mark.parametrize("only", [0, 1])
def test_select_roc_thresh_refuses_a_single_class(only):
    classifier = fixed_scores_classifier()
    with pytest.raises(ValueError, match=f"select_roc_thresh: y holds only class {only}; the ROC curve needs samples of both classes"):
        select_roc_thresh(classifier, torch.randn(10, 1), torch.full((10,), only))


@pytest.mark.parametrize(
    "y, message",
    [
        (torch.tensor([0, 1, 2, 1]), r"expected labels 0 and 1, got values \[0, 1, 2\]"),
        (torch.tensor([0, 1, 1]), r"expected labels of shape \(4,\), got \(3,\)"),
        (torch.tensor([[0, 1, 1, 0]]), r"expected labels of shape \(4,\), got \(1, 4\)"),
    ],
)
def test_select_roc_thresh_refuses_bad_labels(y, message):
    with pytest.raises(ValueError, match="select_roc_thresh: " + message):
        select_roc_thresh(fixed_scores_classifier(), torch.randn(4, 1), y)


def test_select_roc_thresh_needs_two_classes_of_probabilities():
    with pytest.raises(ValueError, match=r"select_roc_thresh: expected a classifier of 2 classes, got probabilities of shape \(4, 3\)"):
        select_roc_thresh(ArgMaxClassifier(Linear(1, 3)), torch.randn(4, 1), torch.tensor([0, 1, 0, 1]))


def test_select_roc_thresh_plot_marks_the_chosen_point_on_the_curve():
    generator = torch.Generator().manual_seed(20)
    logits = torch.randn(50, 1, generator=generator)
    y = ((logits[:, 0] + torch.randn(50, generator=generator)) > 0).long()
    classifier = fixed_scores_classifier()
    _, expected_threshold, fpr, tpr = brute_force_threshold(classifier.predict_proba(logits)[:, 1], y)

    fig, (ax,) = new_figure((5, 4))
    threshold = select_roc_thresh(classifier, logits, y, ax=ax)

    assert isinstance(threshold, float) and threshold == expected_threshold
    assert ax.get_xlabel() == "false positive rate (FPR)" and ax.get_ylabel() == "true positive rate (TPR)"
    curve, _, marker = ax.get_lines()
    assert marker.get_xdata().tolist() == [fpr] and marker.get_ydata().tolist() == [tpr]
    assert fpr in curve.get_xdata().tolist()
    assert f"threshold {threshold:.3f}" in [text.get_text() for text in ax.get_legend().get_texts()][2]

    _, axes = new_figure((8, 4), 1, 2)
    assert select_roc_thresh(classifier, logits, y, ax=axes[1]) == threshold
    assert len(axes[1].get_lines()) == 3 and not axes[0].get_lines()


def test_select_roc_thresh_plot_returns_the_threshold_and_draws_on_the_current_axes():
    """The course writes ``model.threshold = select_roc_thresh(model, x, y, plot=True)``."""
    import matplotlib.pyplot as plt

    classifier = BinaryClassifier(Linear(2, 2))
    x, y = torch.randn(30, 2, generator=torch.Generator().manual_seed(21)), torch.arange(30) % 2
    fig = plt.figure()
    try:
        threshold = select_roc_thresh(classifier, x, y, plot=True)
        assert threshold == select_roc_thresh(classifier, x, y)
        assert len(plt.gca().get_lines()) == 3 and plt.gca().figure is fig
        classifier.threshold = threshold
    finally:
        plt.close(fig)


@pytest.mark.parametrize("make", [lambda: BinaryClassifier(Linear(3, 2)), lambda: ArgMaxClassifier(Linear(3, 4))])
def test_every_classifier_labels_are_int32(make):
    classifier = make()
    x = torch.randn(5, 3)
    assert classifier.classify(x).dtype == torch.int32
    assert classifier.classify_scores(classifier(x)).dtype == torch.int32


# Plots ------------------------------------------------------------------------------------------


class CountingLayer(Layer):
    """Identity that records the batch size of every forward (class-level, so that the
    copies predict_proba makes record too)."""

    batch_sizes = []

    def forward(self, x, **kw):
        CountingLayer.batch_sizes.append(x.shape[0])
        return x

    def backward(self, dout):
        return dout


def test_plot_decision_boundary_classifies_the_whole_grid_in_one_forward_pass():
    x, y, *_ = rotated_moons(n=100, seed=0)
    classifier = BinaryClassifier(Sequential(CountingLayer(), Linear(2, 2)))
    CountingLayer.batch_sizes.clear()
    fig, ax = plot_decision_boundary_2d(classifier, x, y, dx=0.25)

    assert len(CountingLayer.batch_sizes) == 1
    low, high = x.min(dim=0).values, x.max(dim=0).values
    expected_points = 1
    for i in range(2):
        margin = 0.1 * (high[i] - low[i]).item() + 0.25
        expected_points *= len(np.arange(low[i].item() - margin, high[i].item() + margin, 0.25))
    assert CountingLayer.batch_sizes[0] == expected_points
    assert ax.figure is fig
    assert ax.get_xlabel() == "$x_1$" and ax.get_ylabel() == "$x_2$"
    assert ax.collections[-1].get_offsets().shape == (len(x), 2)  # the points, on top


def test_plot_decision_boundary_colours_each_region_with_the_predicted_class():
    # A linear classifier: class 1 exactly where x1 > 0.
    linear = Linear(2, 2)
    linear.weight.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0]]))
    linear.bias.zero_()
    x = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-0.5, 0.5], [0.5, -0.5]])
    y = torch.tensor([0, 1, 0, 1])
    _, ax = plot_decision_boundary_2d(BinaryClassifier(linear), x, y, dx=0.05)
    boundary = ax.collections[1]  # the line between the regions
    vertices = np.concatenate([path.vertices for path in boundary.get_paths()])
    assert np.abs(vertices[:, 0]).max() <= 0.05


@pytest.mark.parametrize("dx", [0, -0.1, float("nan"), 1e-5])
def test_plot_decision_boundary_refuses_a_bad_step(dx):
    x, y, *_ = rotated_moons(n=100, seed=0)
    with pytest.raises(ValueError, match="plot_decision_boundary_2d: dx"):
        plot_decision_boundary_2d(BinaryClassifier(Linear(2, 2)), x, y, dx=dx)


def test_plot_decision_boundary_needs_2d_points():
    with pytest.raises(ValueError, match=r"plot_decision_boundary_2d: expected points of shape \(N, 2\), got \(5, 3\)"):
        plot_decision_boundary_2d(BinaryClassifier(Linear(3, 2)), torch.randn(5, 3), torch.zeros(5))


@pytest.mark.parametrize("normalize", ["all", "true", "pred", None])
def test_plot_confusion_shows_scikit_learns_matrix_of_the_classifiers_labels(normalize):
    generator = torch.Generator().manual_seed(21)
    logits = torch.randn(80, 1, generator=generator)
    y = ((logits[:, 0] + torch.randn(80, generator=generator)) > 0).long()
    classifier = fixed_scores_classifier(threshold=0.4)
    predicted = (torch.sigmoid(logits[:, 0]) >= 0.4).long()  # by the rule, not by classify
    expected = sklearn.metrics.confusion_matrix(y.numpy(), predicted.numpy(), normalize=normalize)

    fig, ax = plot_confusion(classifier, logits, y, normalize=normalize)

    assert ax.figure is fig
    np.testing.assert_allclose(ax.images[0].get_array(), expected, atol=1e-12)
    assert ax.get_xlabel() == "Predicted label" and ax.get_ylabel() == "True label"


def test_plot_confusion_refuses_an_unknown_normalization():
    with pytest.raises(ValueError, match="plot_confusion: normalize must be one of"):
        plot_confusion(fixed_scores_classifier(), torch.randn(4, 1), torch.tensor([0, 1, 0, 1]), normalize="rows")


# The study ----------------------------------------------------------------------------------------


def tiny_study_loaders():
    x_train, y_train, x_valid, y_valid, x_test, y_test = rotated_moons(n=300, seed=1)
    return Batches(x_train, y_train, 32, shuffle=True), Batches(x_valid, y_valid, 64), Batches(x_test, y_test, 64)


def test_mlp_experiment_trains_sets_the_roc_threshold_and_measures_at_it():
    dl_train, dl_valid, dl_test = tiny_study_loaders()
    model, threshold, valid_acc, test_acc = mlp_experiment(2, 4, dl_train, dl_valid, dl_test, n_epochs=10, seed=0)

    assert isinstance(model, BinaryClassifier) and isinstance(model.model, MLP)
    assert [tuple(p.shape) for p, _ in model.params()] == [(4, 2), (4,), (4, 4), (4,), (2, 4), (2,)]
    assert model.threshold == threshold == select_roc_thresh(model, dl_valid.samples, dl_valid.labels)
    for acc, dl in [(valid_acc, dl_valid), (test_acc, dl_test)]:
        predicted = (model.predict_proba(dl.samples)[:, 1] >= threshold).long()
        assert acc == pytest.approx(100.0 * (predicted == dl.labels).double().mean().item())
    assert valid_acc > 65.0  # learned something: the classes are balanced

    again = mlp_experiment(2, 4, *tiny_study_loaders(), n_epochs=10, seed=0)
    assert again[1:] == (threshold, valid_acc, test_acc)


@pytest.mark.parametrize("depth, width", [(0, 4), (2, 0), (1.5, 4)])
def test_mlp_experiment_refuses_a_bad_shape(depth, width):
    with pytest.raises(ValueError, match="mlp_experiment: (depth|width) must be an int >= 1"):
        mlp_experiment(depth, width, *tiny_study_loaders(), n_epochs=1)


def test_the_plots_are_headless(tmp_path):
    """In a fresh interpreter with no display: no pyplot figure, the backend never chosen;
    only scikit-learn's confusion-matrix display imports pyplot (and draws into our Axes)."""
    code = f"""
import sys, torch, matplotlib
from nnlab.classifier import BinaryClassifier, plot_confusion, plot_decision_boundary_2d, select_roc_thresh
from nnlab.layers import Linear
classifier = BinaryClassifier(Linear(2, 2))
x, y = torch.randn(40, 2), torch.arange(40) % 2
plot_decision_boundary_2d(classifier, x, y)[0].savefig({str(tmp_path / "boundary.png")!r})
fig, ax = plot_decision_boundary_2d(classifier, x, y)
select_roc_thresh(classifier, x, y, ax=ax)
fig.savefig({str(tmp_path / "roc.png")!r})
assert 'matplotlib.pyplot' not in sys.modules
plot_confusion(classifier, x, y)[0].savefig({str(tmp_path / "confusion.png")!r})
import matplotlib.pyplot as plt
assert plt.get_fignums() == []
assert matplotlib.rcParams._get_backend_or_none() is None
"""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    for name in ("boundary", "roc", "confusion"):
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
