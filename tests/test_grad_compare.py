"""nnlab.grad_compare: it must pass correct layers, catch wrong ones, and leave
everything it touches as it found it."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nnlab.grad_compare import (
    backward_before_forward,
    check_layer,
    compare_layer_to_torch,
    compare_to_module,
    equivariance_error,
    finite_difference_errors,
    gradcheck,
    gradient_errors,
    rotate90,
    shift,
    tie_heavy,
)
from nnlab import layers as nl
from nnlab._twins import Elementwise
from nnlab.layers import (
    GRU,
    LSTM,
    MLP,
    AvgPool2d,
    BatchNorm1d,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    Embedding,
    Layer,
    Linear,
    MaxPool2d,
    MultiheadAttention,
    ReLU,
    Sequential,
    Tanh,
)


class WrongWeightGradient(Linear):
    """A Linear whose weight gradient is off by 0.1 in one entry."""

    def backward(self, dout):
        dx = super().backward(dout)
        self._grads["weight"][0, 0] += 0.1
        return dx


class WrongInputGradient(Tanh):
    """A Tanh that forgets the derivative: dx = dout."""

    def backward(self, dout):
        self.cached("_out")
        return dout * 1.0


def test_compare_layer_to_torch_passes_a_correct_model_and_prints_one_line_per_tensor(capsys):
    torch.manual_seed(0)
    model = MLP(6, 3, (5, 4), activation="tanh", dropout=0.3)
    diffs = compare_layer_to_torch(model, torch.randn(7, 6))
    assert len(diffs) == 1 + len(model.params())
    assert max(diffs) < 1e-5
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("input    diff=")
    assert lines[1].startswith("param#01 diff=")
    assert len(lines) == len(diffs)


def test_compare_layer_to_torch_catches_a_wrong_backward():
    torch.manual_seed(0)
    diffs = compare_layer_to_torch(WrongWeightGradient(4, 3), torch.randn(5, 4))
    assert diffs[0] < 1e-6
    assert diffs[1] == pytest.approx(0.1, rel=1e-5)
    diffs = compare_layer_to_torch(WrongInputGradient(), torch.randn(5, 4))
    assert diffs[0] > 1e-2


def test_compare_layer_to_torch_leaves_everything_as_it_found_it():
    torch.manual_seed(0)
    model = MLP(6, 3, (5,), dropout=0.5)
    x = torch.randn(4, 6)
    model(x)
    model.backward(torch.ones(4, 3))
    params = [p.clone() for p, _ in model.params()]
    grads = [g.clone() for _, g in model.params()]
    cached_x = model.sequence[0]._x
    cached_mask = model.sequence[2]._mask
    x_before = x.clone()
    rng = torch.get_rng_state()

    compare_layer_to_torch(model, x)

    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(x, x_before) and not x.requires_grad
    for (p, g), p0, g0 in zip(model.params(), params, grads):
        assert torch.equal(p, p0) and torch.equal(g, g0)
        assert not p.requires_grad and not g.requires_grad
    assert model.sequence[0]._x is cached_x
    assert model.sequence[2]._mask is cached_mask
    model.backward(torch.ones(4, 3))  # the forward before the check can still be backpropagated


def test_gradient_errors_are_relative():
    torch.manual_seed(1)
    errors = gradient_errors(Sequential(Linear(5, 4), Tanh(), Linear(4, 2)), torch.randn(3, 5, dtype=torch.float32))
    assert len(errors) == 5 and max(errors) < 1e-5


def test_gradcheck_passes_correct_layers_in_float64_and_leaves_them_float32():
    torch.manual_seed(2)
    model = MLP(4, 3, (5,), activation="sigmoid", dropout=0.4)
    assert gradcheck(model, torch.randn(3, 4))
    assert gradcheck(CrossEntropyLoss(), torch.randn(3, 4), torch.tensor([0, 3, 1]))
    assert gradcheck(Dropout(0.5), torch.randn(3, 4))
    assert all(p.dtype == torch.float32 for p, _ in model.params())


def test_gradcheck_names_the_worst_element_when_it_fails():
    torch.manual_seed(3)
    with pytest.raises(AssertionError, match=r"param#01\[0, 0\]"):
        gradcheck(WrongWeightGradient(3, 2), torch.randn(2, 3))
    with pytest.raises(AssertionError, match="input"):
        gradcheck(WrongInputGradient(), torch.randn(2, 3) * 2)


def test_compare_to_module_copies_weights_and_reports_every_tensor():
    torch.manual_seed(4)
    layer = Linear(6, 3)
    module = torch.nn.Linear(6, 3)
    result = compare_to_module(layer, module, torch.randn(5, 6))
    assert set(result) == {"output", "input", "param#01", "param#02"}
    assert result["output"] < 1e-6
    assert max(result["input"], result["param#01"], result["param#02"]) < 1e-5
    assert torch.equal(module.weight.detach(), layer.weight)


def test_compare_to_module_with_targets_and_a_wrong_layer():
    torch.manual_seed(5)
    scores = torch.randn(4, 3)
    labels = torch.tensor([0, 2, 1, 2])
    result = compare_to_module(CrossEntropyLoss(), torch.nn.CrossEntropyLoss(), scores, labels)
    assert result["output"] < 1e-6 and result["input"] < 1e-5
    result = compare_to_module(WrongWeightGradient(4, 3), torch.nn.Linear(4, 3), torch.randn(5, 4))
    assert result["param#01"] > 1e-3


def test_compare_to_module_rejects_a_module_of_another_shape():
    with pytest.raises(ValueError, match=r"param#01 has shape \(3, 6\)"):
        compare_to_module(Linear(6, 3), torch.nn.Linear(6, 4), torch.randn(2, 6))
    with pytest.raises(ValueError, match="2 parameters"):
        compare_to_module(Linear(6, 3), torch.nn.Linear(6, 3, bias=False), torch.randn(2, 6))


def test_finite_difference_errors_are_small_for_a_correct_layer_and_large_for_a_wrong_one():
    torch.manual_seed(6)
    errors = finite_difference_errors(MLP(4, 3, (5,), activation="tanh"), torch.randn(3, 4))
    assert len(errors) == 5 and max(errors) < 1e-7
    errors = finite_difference_errors(WrongWeightGradient(3, 2), torch.randn(2, 3))
    assert errors[0] < 1e-7 and errors[1] > 1e-2


# Blind spots: a backward that breaks the contract is caught by every checker ------------------


class DoublesDoutInPlace(Linear):
    """Doubles dout in place before using it: 2x wrong, and the mutated dout used to
    become the checkers' reference."""

    def backward(self, dout):
        dout *= 2
        return super().backward(dout)


class OverwritesGradients(Linear):
    """Assigns the parameter gradients instead of adding into them."""

    def backward(self, dout):
        x = self.cached("_x")
        self._grads["weight"].copy_(dout.T @ x)
        self._grads["bias"].copy_(dout.sum(dim=0))
        return dout @ self.weight


class ReplacesGradientTensor(Linear):
    """Binds a new tensor as the weight gradient: the tensor an optimizer holds never changes."""

    def backward(self, dout):
        x = self.cached("_x")
        self._grads["weight"] = self._grads["weight"] + dout.T @ x
        self._grads["bias"] += dout.sum(dim=0)
        return dout @ self.weight


class ReturnsNone(Tanh):
    def backward(self, dout):
        self.cached("_out")
        return None


class ReturnsWrongShape(Tanh):
    def backward(self, dout):
        return (dout * (1 - self.cached("_out") ** 2))[:, :-1]


class ChangesInputInPlace(ReLU):
    """The classic ReLU: zero the negative entries of x itself."""

    def forward(self, x, **kw):
        self._out = x
        x[x < 0] = 0
        return x


class GradientOfWrongShape(Linear):
    """params() pairs the weight with a transposed gradient."""

    def __init__(self, in_features, out_features):
        super().__init__(in_features, out_features)
        self._grads["weight"] = torch.zeros(in_features, out_features)

    def backward(self, dout):
        x = self.cached("_x")
        self._grads["weight"] += x.T @ dout
        self._grads["bias"] += dout.sum(dim=0)
        return dout @ self.weight


def failing_verdict(checker, layer, x):
    """The verdict of one checker on a broken layer, asserting it failed."""
    if checker == "gradcheck":
        with pytest.raises(AssertionError, match="gradcheck failed") as failure:
            gradcheck(layer, x)
        return str(failure.value)
    if checker == "compare_to_module":
        result = compare_to_module(layer, torch.nn.Linear(4, 3), x)
    else:
        result = CHECKERS[checker](layer, x)
    assert not result.verdict.passed
    if checker != "compare_layer_to_torch":
        assert max(result.values() if isinstance(result, dict) else result) > 1e-3
    return str(result.verdict)


CHECKERS = {
    "gradient_errors": gradient_errors,
    "finite_difference_errors": finite_difference_errors,
    "compare_layer_to_torch": compare_layer_to_torch,
}


@pytest.mark.parametrize(
    "broken, breach",
    [
        (DoublesDoutInPlace, "backward changes dout"),
        (OverwritesGradients, "gradients do not accumulate"),
        (ReplacesGradientTensor, "gradient tensor replaced"),
        (GradientOfWrongShape, "params() pair of wrong shapes"),
    ],
)
@pytest.mark.parametrize("checker", ["gradient_errors", "finite_difference_errors", "compare_layer_to_torch", "gradcheck", "compare_to_module"])
def test_every_checker_catches_a_backward_that_breaks_the_contract(broken, breach, checker, capsys):
    torch.manual_seed(7)
    layer = broken(4, 3)
    assert breach in failing_verdict(checker, layer, torch.randn(5, 4))


def test_the_doubled_dout_shows_as_a_factor_two_against_the_untouched_reference():
    torch.manual_seed(8)
    verdict = gradient_errors(DoublesDoutInPlace(4, 3), torch.randn(5, 4)).verdict
    worst = verdict.comparison("autograd").worst
    assert worst.actual == pytest.approx(2 * worst.expected)


@pytest.mark.parametrize("broken, breach", [(ReturnsNone, "returned None"), (ReturnsWrongShape, "of shape (3, 3) for an input of shape (3, 4)")])
@pytest.mark.parametrize("checker", ["gradient_errors", "finite_difference_errors", "compare_layer_to_torch", "gradcheck"])
def test_a_missing_or_misshapen_input_gradient_is_a_failing_verdict(broken, breach, checker, capsys):
    torch.manual_seed(9)
    assert breach in failing_verdict(checker, broken(), torch.randn(3, 4))


def test_a_forward_that_changes_its_input_in_place_is_named():
    x = torch.randn(3, 4)
    before = x.clone()
    errors = gradient_errors(ChangesInputInPlace(), x)
    assert torch.equal(x, before)
    assert errors[0] == float("inf")
    assert "forward changes its input x in place" in str(errors.verdict)


# No false alarms ------------------------------------------------------------------------------


def test_a_zero_true_gradient_passes_the_train_commands_self_check():
    """Linear -> BatchNorm1d: the Linear bias has a true gradient of exactly 0 (the batch
    mean removes it); rounding noise against a zero reference is no error."""
    torch.manual_seed(10)
    model = Sequential(Linear(4, 3), BatchNorm1d(3), Tanh(), Linear(3, 2), CrossEntropyLoss()).to(dtype=torch.float64)
    x = torch.randn(6, 4, dtype=torch.float64)
    errors = gradient_errors(model, x, torch.tensor([0, 1, 0, 1, 1, 0]))
    assert max(errors) <= 1e-10
    assert errors.verdict.comparison("torch.nn twin") is not None  # the twin judged it too


def integer_images(seed):
    """Integer-valued 10x10 images with a constant background and a flat bright square."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(3, 1, 10, 10)
    images[:, :, 2:7, 3:8] = 4.0
    images[:, :, 7:, :] = torch.randint(0, 3, (3, 1, 3, 10), generator=generator).float()
    return images


def test_conv_relu_maxpool_on_integer_images_with_ties_agrees_with_autograd_and_torch(capsys):
    torch.manual_seed(11)
    model = Sequential(Conv2d(1, 4, 3, padding=1), ReLU(), MaxPool2d(2))
    x = integer_images(11)
    diffs = compare_layer_to_torch(model, x)
    assert diffs.verdict.passed, str(diffs.verdict)
    assert max(gradient_errors(model, x)) <= 1e-6
    assert diffs[0] <= 1e-6 * diffs.verdict.comparison("autograd").tensors[0].difference_norm + 1e-6


class SplitsTies(MaxPool2d):
    """A MaxPool2d(2) whose backward shares dout equally between tied maxima."""

    def forward(self, x, **kw):
        self._x = x
        return super().forward(x)

    def backward(self, dout):
        windows = self._x.unfold(2, 2, 2).unfold(3, 2, 2)  # (N, C, H/2, W/2, 2, 2)
        winners = (windows == windows.amax(dim=(4, 5), keepdim=True)).to(dout.dtype)
        shares = winners / winners.sum(dim=(4, 5), keepdim=True) * dout[..., None, None]
        return shares.permute(0, 1, 2, 4, 3, 5).reshape(self._x.shape)


class SendsToLastMaximum(SplitsTies):
    """A MaxPool2d(2) whose backward sends dout to the last tied maximum."""

    def backward(self, dout):
        windows = self._x.unfold(2, 2, 2).unfold(3, 2, 2).flatten(4)
        last = 3 - windows.flip(-1).argmax(dim=-1, keepdim=True)
        shares = torch.zeros_like(windows).scatter(-1, last, dout[..., None])
        shares = shares.reshape(*shares.shape[:4], 2, 2)
        return shares.permute(0, 1, 2, 4, 3, 5).reshape(self._x.shape)


@pytest.mark.parametrize("wrong_pool", [SplitsTies, SendsToLastMaximum])
def test_a_maxpool_backward_that_routes_ties_elsewhere_fails(wrong_pool, capsys):
    torch.manual_seed(12)
    model = Sequential(Conv2d(1, 4, 3, padding=1), ReLU(), wrong_pool(2))
    x = integer_images(12)
    verdict = compare_layer_to_torch(model, x).verdict
    assert not verdict.passed
    assert "FAIL" in capsys.readouterr().out
    # The same backward agrees on inputs without ties: only the routing of ties is wrong.
    assert check_layer(model, torch.randn(3, 1, 10, 10)).passed


# Leaving everything as found --------------------------------------------------------------


TWIN = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Dropout(0.5))


@pytest.mark.parametrize(
    "run",
    [
        lambda layer, x: compare_layer_to_torch(layer, x),
        lambda layer, x: gradient_errors(layer, x),
        lambda layer, x: finite_difference_errors(layer, x),
        lambda layer, x: gradcheck(layer, x),
        lambda layer, x: compare_to_module(layer, TWIN, x),
        lambda layer, x: check_layer(layer, x, finite_differences=True),
    ],
    ids=["compare_layer_to_torch", "gradient_errors", "finite_difference_errors", "gradcheck", "compare_to_module", "check_layer"],
)
def test_checkers_restore_the_rng_and_every_requires_grad_flag(run, capsys):
    torch.manual_seed(13)
    model = Sequential(Linear(4, 3), Dropout(0.5))
    x = torch.randn(5, 4)
    model.params()[0][0].requires_grad_(True)  # a user's flag, left as found
    rng = torch.get_rng_state()
    run(model, x)
    assert torch.equal(torch.get_rng_state(), rng)
    assert [p.requires_grad for p, _ in model.params()] == [True, False]
    assert not x.requires_grad


def test_backward_before_forward_names_a_layer_without_a_cache_check():
    class NoCacheCheck(Tanh):
        def __init__(self):
            super().__init__()
            self._out = torch.zeros(())

        def backward(self, dout):
            return dout * (1 - self._out * self._out)

    x = torch.randn(2, 3)
    assert backward_before_forward(Tanh(), x) is None
    assert "backward before forward does not raise" in backward_before_forward(NoCacheCheck(), x)
    assert "raised TypeError" in backward_before_forward(type("Bare", (Tanh,), {"backward": lambda self, d: None * d})(), x)


def test_tie_heavy_inputs_have_ties_zeros_and_a_flat_region():
    x = tie_heavy((2, 3, 6, 8), seed=1)
    assert torch.equal(x, x.round()) and x.abs().max() <= 2
    assert (x[..., :4] == 0).all()
    assert (x[..., 4:] == 0).any() and (x[..., 4:] != 0).any()


# Equivariance ------------------------------------------------------------------------------


def test_shift_and_rotate90_move_the_last_two_dimensions():
    x = torch.arange(12.0).reshape(1, 3, 4)
    assert torch.equal(shift(1, -1)(x), torch.roll(x, (1, -1), dims=(-2, -1)))
    expected = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 0.0], [5.0, 6.0, 7.0, 0.0]]])
    assert torch.equal(shift(1, -1, circular=False)(x), expected)
    assert torch.equal(rotate90(3)(x), torch.rot90(x, 3, dims=(1, 2)))
    assert repr(shift(1, -1, circular=False)) == "shift(1, -1, circular=False)"


def test_circular_conv_commutes_with_circular_shifts_and_zero_padding_only_inside():
    torch.manual_seed(14)
    x = torch.randn(2, 2, 9, 9, dtype=torch.float64)
    circular = Conv2d(2, 3, 3, padding=1, padding_mode="circular").to(dtype=torch.float64)
    zeros = Conv2d(2, 3, 3, padding=1).to(dtype=torch.float64)
    zeros.load_state_dict(circular.state_dict())
    for move in (shift(2, -3), shift(-4, 1), shift(0, 5)):
        assert equivariance_error(circular, x, move) <= 1e-14  # rounding only
        assert equivariance_error(zeros, x, move) > 0.1  # the borders differ
    # Away from the borders (shift + kernel radius), zero padding commutes too.
    for move in (shift(2, -3), shift(2, -3, circular=False)):
        assert equivariance_error(zeros, x, move, margin=4) == 0.0


def test_conv_is_not_rotation_equivariant_unless_its_kernel_is_symmetric():
    torch.manual_seed(15)
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    conv = Conv2d(1, 1, 3, padding=1, padding_mode="circular").to(dtype=torch.float64)
    assert equivariance_error(conv, x, rotate90()) > 0.1
    conv.weight.copy_(torch.tensor([[[[0.5, 1.0, 0.5], [1.0, -2.0, 1.0], [0.5, 1.0, 0.5]]]], dtype=torch.float64))
    assert equivariance_error(conv, x, rotate90()) <= 1e-14


def test_relu_commutes_with_maxpool_exactly():
    torch.manual_seed(16)
    x = torch.randn(1, 100, 100)
    assert equivariance_error(ReLU(), x, MaxPool2d(2)) == 0.0
    assert equivariance_error(MaxPool2d(2), x, ReLU()) == 0.0
    assert equivariance_error(Tanh(), x, AvgPool2d(2)) > 1e-3  # not every pair commutes


def test_equivariance_error_rejects_outputs_of_different_shapes():
    with pytest.raises(ValueError, match=r"layer\(g\(x\)\) has shape \(1, 1, 2, 2\) but g\(layer\(x\)\) \(1, 1, 3, 3\)"):
        equivariance_error(Conv2d(1, 1, 3), torch.randn(1, 1, 8, 8), MaxPool2d(2))


# What a checker prints is what it returns ---------------------------------------------------


class ZeroesDoutInPlace(ReLU):
    """A ReLU whose backward zeroes dout where x < 0 and hands dout itself back: the right
    numbers, but the caller's upstream gradient is destroyed."""

    def backward(self, dout):
        dout[self.cached("_out") <= 0] = 0
        return dout


@pytest.mark.parametrize(
    "layer, failing",
    [
        (OverwritesGradients(4, 3), [False, True, True]),
        (ChangesInputInPlace(), [True]),
        (ZeroesDoutInPlace(), [True]),
    ],
    ids=["gradients do not accumulate", "forward edits x", "backward edits dout"],
)
def test_compare_layer_to_torch_returns_inf_for_every_part_it_prints_as_failing(layer, failing, capsys):
    torch.manual_seed(17)
    diffs = compare_layer_to_torch(layer, torch.randn(5, 4))
    assert not diffs.verdict.passed
    assert [d == float("inf") for d in diffs] == failing
    lines = capsys.readouterr().out.splitlines()[: len(diffs)]
    assert [line.endswith("FAIL") for line in lines] == failing
    assert all("diff=inf" in line for line, fails in zip(lines, failing) if fails)


# A nondeterministic forward ------------------------------------------------------------------


class NumpyDropout(Dropout):
    """A correct dropout whose mask comes from numpy's RNG, which the checkers do not seed."""

    def forward(self, x, **kw):
        keep = np.random.rand(*x.shape) >= self.p
        self._mask = torch.from_numpy(keep).to(x.dtype) / (1 - self.p)
        return self.finish_forward(x * self._mask)


class NumpyDropoutWrongBackward(NumpyDropout):
    def backward(self, dout):
        return dout * 3.0


@pytest.mark.parametrize("layer", [NumpyDropout(0.5), NumpyDropoutWrongBackward(0.5)], ids=["right", "wrong"])
def test_a_forward_random_from_numpy_fails_every_checker_as_nondeterministic(layer, capsys):
    torch.manual_seed(18)
    x = torch.randn(4, 5, dtype=torch.float64)
    with pytest.raises(AssertionError, match="nondeterministic forward"):
        gradcheck(layer, x)
    for checker in (finite_difference_errors, gradient_errors, compare_layer_to_torch):
        result = checker(layer, x)
        assert result[0] == float("inf")
        assert "nondeterministic forward" in str(result.verdict)
    verdict = check_layer(layer, x, finite_differences=True)
    assert not verdict.passed
    assert "nondeterministic forward" in str(verdict) and "wrong gradient" not in str(verdict)


class ConstantGradient(ReLU):
    """A ReLU whose backward returns dout everywhere: wrong wherever x < 0."""

    def backward(self, dout):
        self.cached("_out")
        return dout * 1.0


def test_finite_differences_that_judged_no_entry_fail():
    """ReLU at x = 0 exactly: every entry is a kink, so finite differences judge nothing."""
    x = torch.zeros(3, 4, dtype=torch.float64)
    with pytest.raises(AssertionError, match="every entry is at a kink"):
        gradcheck(ConstantGradient(), x)
    errors = finite_difference_errors(ConstantGradient(), x)
    assert errors[0] == float("inf") and "every entry is at a kink" in str(errors.verdict)


# No false alarms on correct layers ----------------------------------------------------------


def test_compare_to_module_pairs_each_running_statistic_with_its_own():
    """Two BatchNorms in eval mode: num_batches_tracked (an integer buffer) must not shift
    the second one's running statistics onto the wrong module buffers."""
    torch.manual_seed(19)
    layer = Sequential(Linear(3, 4), BatchNorm1d(4), ReLU(), Linear(4, 2), BatchNorm1d(2))
    for _ in range(3):
        layer(torch.randn(8, 3) * 2 + 1)
    module = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(), torch.nn.Linear(4, 2), torch.nn.BatchNorm1d(2)
    )
    result = compare_to_module(layer.eval(), module, torch.randn(5, 3))
    assert result.verdict.passed, str(result.verdict)
    assert torch.equal(module[4].running_var, layer[4].running_var)
    assert max(result.values()) <= 1e-5


def test_compare_to_module_rejects_a_module_with_other_running_statistics():
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4, track_running_stats=False))
    with pytest.raises(ValueError, match=r"(?s)buffers \(running statistics\).*\[\(4,\), \(4,\)\] but.*\[\]"):
        compare_to_module(Sequential(Linear(3, 4), BatchNorm1d(4)), module, torch.randn(5, 3))


def test_check_layer_calls_a_correct_numpy_dropout_nondeterministic_not_wrong():
    verdict = check_layer(NumpyDropout(0.3), torch.randn(6, 5))
    assert "nondeterministic forward" in str(verdict)
    assert "wrong gradient" not in str(verdict)


# Each tensor on its own scale -----------------------------------------------------------------


class BatchNormWithEvalBackward(BatchNorm1d):
    """Training-mode forward, but the eval-mode input gradient dout * weight / sigma (the
    batch statistics treated as constants): wrong by about 1 / sigma, tiny when x is large."""

    def backward(self, dout):
        self.start_backward(dout)
        x_hat = self._centered * self._inv_std
        self._grads["weight"] += (dout * x_hat).sum(dim=0)
        self._grads["bias"] += dout.sum(dim=0)
        return dout * self.weight * self._inv_std


class ForgetsBiasGradient(Linear):
    def backward(self, dout):
        x = self.cached("_x")
        self._grads["weight"] += dout.T @ x
        return dout @ self.weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("broken, wrong", [(BatchNormWithEvalBackward(3), "input"), (ForgetsBiasGradient(3, 2), "param#02")])
def test_a_small_gradient_is_judged_on_its_own_scale_not_the_checks_largest(broken, wrong, dtype):
    """x ~ 1e6: the wrong tensor is a millionth of the check's largest gradient."""
    torch.manual_seed(20)
    x = torch.randn(6, 3, dtype=dtype) * 1e6
    layer = broken.to(dtype=dtype)
    verdict = check_layer(layer, x, finite_differences=True)
    assert not verdict.passed
    assert verdict.comparison("finite differences").worst.name == wrong
    assert finite_difference_errors(layer, x)[verdict.tensor_names.index(wrong)] > 1e-6
    if dtype == torch.float64:
        assert gradient_errors(layer, x)[verdict.tensor_names.index(wrong)] > 1e-10


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [1e-6, 1e6])
def test_correct_layers_pass_at_tiny_and_huge_input_scales(size, dtype):
    torch.manual_seed(21)
    # BatchNorm first: its input gradient is about 1 / size, the Linears' gradients are not.
    model = Sequential(BatchNorm1d(3), Linear(3, 4), Tanh(), Linear(4, 2)).to(dtype=dtype)
    for layer, shape in ((model, (6, 3)), (Linear(3, 2).to(dtype=dtype), (6, 3)), (Conv2d(2, 3, 3).to(dtype=dtype), (2, 2, 5, 5))):
        verdict = check_layer(layer, torch.randn(shape, dtype=dtype) * size, finite_differences=True)
        assert verdict.passed, str(verdict)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("exponent", [-6, -3, 0, 3, 6, 8])
def test_a_forgotten_bias_gradient_fails_and_a_correct_linear_passes_at_every_input_scale(exponent, dtype):
    torch.manual_seed(22)
    x = torch.randn(4, 3, dtype=dtype) * 10.0**exponent
    correct = Linear(3, 2).to(dtype=dtype)
    assert check_layer(correct, x, finite_differences=True).passed
    wrong = ForgetsBiasGradient(3, 2).to(dtype=dtype)
    wrong.load_state_dict(correct.state_dict())
    verdict = check_layer(wrong, x, finite_differences=True)
    assert not verdict.passed
    assert verdict.comparison("finite differences").worst.name == "param#02"


class LSTMWrongOnFinalState(LSTM):
    """An LSTM whose backward reads the upstream gradient of h_n as 1.5 times what it is."""

    def backward(self, dout):
        doutput, (dh_n, dc_n) = dout
        return super().backward((doutput, (1.5 * dh_n, dc_n)))


class GRUWrongInitialStateGradient(GRU):
    """A GRU whose gradient w.r.t. the initial state h_0 is scaled by 0.5."""

    def backward(self, dout):
        dx, dh_0 = super().backward(dout)
        return dx, 0.5 * dh_0


def sequence_and_state(seed, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(4, 2, 3, generator=generator, dtype=dtype), torch.randn(1, 2, 5, generator=generator, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_an_lstms_nested_output_is_compared_tensor_by_tensor_and_a_correct_lstm_passes(dtype):
    torch.manual_seed(0)
    lstm = LSTM(3, 5, num_layers=2).to(dtype=dtype)
    x, _ = sequence_and_state(1, dtype)
    verdict = check_layer(lstm, x, finite_differences=True)
    assert verdict.passed, verdict
    assert [c.reference for c in verdict.comparisons] == ["autograd", "torch.nn twin (forward)", "torch.nn twin", "finite differences"]
    assert [t.name for t in verdict.comparison("torch.nn twin (forward)").tensors] == ["output[0]", "output[1]", "output[2]"]


def test_an_lstm_that_misreads_the_final_states_gradient_fails_every_reference():
    torch.manual_seed(0)
    x, _ = sequence_and_state(2)
    verdict = check_layer(LSTMWrongOnFinalState(3, 5), x, twin=torch.nn.LSTM(3, 5), finite_differences=True)
    assert not verdict.passed
    for reference in ("autograd", "torch.nn twin", "finite differences"):
        assert verdict.comparison(reference).worst.error > 1e-3, reference


def test_a_gru_with_a_wrong_initial_state_gradient_fails_on_that_input_only():
    torch.manual_seed(0)
    gru = GRUWrongInitialStateGradient(3, 5)
    verdict = check_layer(gru, sequence_and_state(3), twin=torch.nn.GRU(3, 5), finite_differences=True)
    assert not verdict.passed
    for reference in ("autograd", "torch.nn twin", "finite differences"):
        errors = {t.name: t.error for t in verdict.comparison(reference).tensors}
        assert errors["input#2"] > 0.1, reference
        assert max(error for name, error in errors.items() if name != "input#2") < 1e-5, reference


def test_gradcheck_and_backward_before_forward_hand_an_lstm_nested_gradients():
    torch.manual_seed(0)
    x, _ = sequence_and_state(4)
    assert gradcheck(LSTM(3, 5), x)
    with pytest.raises(AssertionError, match="LSTMWrongOnFinalState"):
        gradcheck(LSTMWrongOnFinalState(3, 5), x)
    assert backward_before_forward(LSTM(3, 5), x) is None


def test_an_output_that_is_not_tensors_in_tuples_is_named():
    class ListOutput(Tanh):
        def forward(self, x, **kw):
            return [super().forward(x)]

    with pytest.raises(TypeError, match=r"ListOutput.forward returned list; expected a tensor or a tuple of tensors"):
        check_layer(ListOutput(), torch.randn(2, 3))


# Nested inputs: an LSTM's (x, (h_0, c_0)), masks and indices among the inputs ---------------------


class LSTMWrongInitialStateGradient(LSTM):
    """An LSTM whose gradient w.r.t. one part of its initial state (h_0: 0, c_0: 1) is
    scaled by 0.5; everything else right."""

    def __init__(self, *args, wrong_part, **kwargs):
        super().__init__(*args, **kwargs)
        self.wrong_part = wrong_part

    def backward(self, dout):
        dx, state = super().backward(dout)
        state = tuple(0.5 * d if part == self.wrong_part else d for part, d in enumerate(state))
        return dx, state


class LastStateGradientHalved:
    """Mixed into a recurrent layer: the gradient of the last tensor of its initial state
    (an LSTM's c_0, an RNN's or GRU's h_0) is halved; everything else right."""

    def backward(self, dout):
        dx, state = super().backward(dout)
        if isinstance(state, tuple):
            return dx, state[:-1] + (0.5 * state[-1],)
        return dx, 0.5 * state


@settings(max_examples=10)
@given(
    name=st.sampled_from(["RNN", "LSTM", "GRU"]),
    num_layers=st.integers(1, 2),
    bidirectional=st.booleans(),
    batch_first=st.booleans(),
    length=st.sampled_from([1, 3]),
    batch=st.sampled_from([None, 1, 2]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_recurrent_initial_states_are_judged_whatever_the_options(name, num_layers, bidirectional, batch_first, length, batch, dtype, seed):
    options = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    generator = torch.Generator().manual_seed(seed)
    shape = (length, 2) if batch is None else ((batch, length, 2) if batch_first else (length, batch, 2))
    x = torch.randn(shape, generator=generator, dtype=dtype)
    state_shape = (num_layers * (1 + bidirectional),) + (() if batch is None else (batch,)) + (3,)
    states = tuple(torch.randn(state_shape, generator=generator, dtype=dtype) for _ in range(2 if name == "LSTM" else 1))
    inputs = (x, states if name == "LSTM" else states[0])
    last = "input#2.2" if name == "LSTM" else "input#2"
    torch.manual_seed(seed)
    right = getattr(nl, name)(2, 3, **options).to(dtype=dtype)
    verdict = check_layer(right, inputs)
    assert verdict.passed, verdict
    assert [c.reference for c in verdict.comparisons] == ["autograd", "torch.nn twin (forward)", "torch.nn twin"]
    wrong = type("Wrong" + name, (LastStateGradientHalved, type(right)), {})(2, 3, **options).to(dtype=dtype)
    wrong.load_state_dict(right.state_dict())
    verdict = check_layer(wrong, inputs, twin=getattr(torch.nn, name)(2, 3, **options).to(dtype))
    for reference in ("autograd", "torch.nn twin"):
        assert verdict.comparison(reference).worst.name == last, reference


class LSTMFlatStateGradient(LSTM):
    """An LSTM whose backward returns (dx, dh_0, dc_0), not nested like its inputs."""

    def backward(self, dout):
        dx, (dh_0, dc_0) = super().backward(dout)
        return dx, dh_0, dc_0


def sequence_and_lstm_state(seed, dtype=torch.float32, layers=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 2, 3, generator=generator, dtype=dtype)
    h_0, c_0 = (torch.randn(layers, 2, 4, generator=generator, dtype=dtype) for _ in range(2))
    return x, (h_0, c_0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_an_lstm_with_an_initial_state_passes_against_torchs_lstm_with_its_weights_copied(dtype):
    torch.manual_seed(0)
    lstm = LSTM(3, 4, num_layers=2).to(dtype=dtype)
    twin = torch.nn.LSTM(3, 4, num_layers=2).to(dtype=dtype)
    verdict = check_layer(lstm, sequence_and_lstm_state(1, dtype, layers=2), twin=twin, finite_differences=True)
    assert verdict.passed, verdict
    names = ["input#1", "input#2.1", "input#2.2"] + [f"param#{i:02d}" for i in range(1, 9)]
    for reference in ("autograd", "torch.nn twin", "finite differences"):
        assert [t.name for t in verdict.comparison(reference).tensors] == names, reference
    # The twin got the layer's weights and ran on the same initial state.
    assert all(torch.equal(mine, theirs.detach()) for (mine, _), theirs in zip(lstm.params(), twin.parameters()))
    assert verdict.comparison("torch.nn twin (forward)").passed


@pytest.mark.parametrize("wrong_part, name", [(0, "input#2.1"), (1, "input#2.2")], ids=["h_0", "c_0"])
def test_an_lstm_wrong_in_one_initial_state_gradient_fails_every_reference_on_that_tensor_only(wrong_part, name):
    torch.manual_seed(0)
    lstm = LSTMWrongInitialStateGradient(3, 4, wrong_part=wrong_part)
    verdict = check_layer(lstm, sequence_and_lstm_state(2), twin=torch.nn.LSTM(3, 4), finite_differences=True)
    assert not verdict.passed
    for reference in ("autograd", "torch.nn twin", "finite differences"):
        errors = {t.name: t.error for t in verdict.comparison(reference).tensors}
        assert errors[name] > 0.1, reference
        assert max(error for other, error in errors.items() if other != name) < 1e-5, reference


def test_every_checker_names_the_wrong_initial_state_gradient(capsys):
    torch.manual_seed(0)
    x = sequence_and_lstm_state(3)
    with pytest.raises(AssertionError, match=r"input#2\.2\["):
        gradcheck(LSTMWrongInitialStateGradient(3, 4, wrong_part=1), x)
    assert gradcheck(LSTM(3, 4), x)
    diffs = compare_layer_to_torch(LSTMWrongInitialStateGradient(3, 4, wrong_part=0), x)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("input#2.1 diff=") and lines[1].endswith("FAIL")
    assert diffs[1] > 0.1 and max(diffs[:1] + diffs[2:]) < 1e-5
    errors = compare_to_module(LSTM(3, 4), torch.nn.LSTM(3, 4), x)
    assert sorted(errors)[:4] == ["input#1", "input#2.1", "input#2.2", "output"]
    assert max(errors.values()) <= 1e-5
    assert backward_before_forward(LSTM(3, 4), x) is None


def test_gradients_not_nested_like_the_inputs_are_a_breach():
    torch.manual_seed(0)
    verdict = check_layer(LSTMFlatStateGradient(3, 4), sequence_and_lstm_state(4))
    assert not verdict.passed
    assert "backward returned a tuple of 3, not a tuple of 2 gradients, one per input" in verdict.details()

    class OneStateGradient(LSTM):
        def backward(self, dout):
            dx, (dh_0, _) = super().backward(dout)
            return dx, (dh_0,)

    verdict = check_layer(OneStateGradient(3, 4), sequence_and_lstm_state(4))
    assert "backward returned a tuple of 1 for its input#2, not a tuple of 2 gradients, one per input" in verdict.details()


class ScaleAndShift(Layer):
    """out = x * parts[0] + parts[1] for parts a list [scale, shift]; backward returns
    (dx, [dscale, dshift]), nested like the inputs."""

    def forward(self, x, parts, **kw):
        self._x, self._scale = x, parts[0]
        return self.finish_forward(x * parts[0] + parts[1])

    def backward(self, dout):
        self.start_backward(dout)
        return dout * self._scale, [dout * self._x, dout]


class ScaleAndShiftWrongShift(ScaleAndShift):
    def backward(self, dout):
        dx, (dscale, dshift) = super().backward(dout)
        return dx, [dscale, -dshift]


def test_a_list_inside_the_inputs_is_handed_on_as_a_list_and_judged():
    generator = torch.Generator().manual_seed(5)
    x, scale, shift = (torch.randn(2, 3, generator=generator) for _ in range(3))
    twin = Elementwise(lambda x, parts: x * parts[0] + parts[1])
    verdict = check_layer(ScaleAndShift(), (x, [scale, shift]), twin=twin, finite_differences=True)
    assert verdict.passed, verdict
    assert verdict.tensor_names == ["input#1", "input#2.1", "input#2.2"]
    verdict = check_layer(ScaleAndShiftWrongShift(), (x, [scale, shift]), twin=twin, finite_differences=True)
    for reference in ("autograd", "torch.nn twin", "finite differences"):
        assert verdict.comparison(reference).worst.name.startswith("input#2.2"), reference


def test_an_input_that_is_not_tensors_in_tuples_or_lists_is_named():
    x, (h_0, _) = sequence_and_lstm_state(6)
    with pytest.raises(TypeError, match=r"check_layer: input#2\.2 is a NoneType; expected a tensor"):
        check_layer(LSTM(3, 4), (x, (h_0, None)))


def attention_with_padding(seed):
    generator = torch.Generator().manual_seed(seed)
    query, key, value = (torch.randn(shape, generator=generator) for shape in [(3, 2, 4), (5, 2, 4), (5, 2, 4)])
    mask = torch.tensor([[False, False, False, True, True], [False, True, False, False, False]])
    return query, key, value, mask


class AttentionWithMaskGradient(MultiheadAttention):
    """Returns a fourth 'gradient', for its boolean key_padding_mask, which has none."""

    def backward(self, dout):
        return super().backward(dout) + (torch.zeros(2, 5),)


def test_a_mask_among_the_inputs_gets_no_gradient_and_the_mask_reaches_the_twin():
    torch.manual_seed(0)
    inputs = attention_with_padding(7)
    verdict = check_layer(MultiheadAttention(4, 2), inputs, finite_differences=True)
    assert verdict.passed, verdict
    assert verdict.tensor_names[:4] == ["input#1", "input#2", "input#3", "param#01"]
    # The mask changes the output, and the twin's output agrees: the mask reached it too.
    layer = MultiheadAttention(4, 2)
    assert not torch.allclose(layer(*inputs)[0], layer(*inputs[:3])[0])
    assert verdict.comparison("torch.nn twin (forward)").passed
    verdict = check_layer(AttentionWithMaskGradient(4, 2), inputs)
    assert "backward returned a tuple of 4, not a tuple of 3 gradients, one per input" in verdict.details()


class EmbeddingReturningAGradient(Embedding):
    def backward(self, dout):
        super().backward(dout)
        return torch.zeros(2, 3)


def test_a_layer_of_indices_returns_none_and_its_weight_gradient_is_judged():
    torch.manual_seed(0)
    indices = torch.tensor([[0, 1, 2], [3, 0, 1]])
    verdict = check_layer(Embedding(6, 3).to(dtype=torch.float64), indices, finite_differences=True)
    assert verdict.passed, verdict
    assert verdict.tensor_names == ["param#01"]
    assert verdict.comparison("autograd").tolerance == 1e-10
    verdict = check_layer(EmbeddingReturningAGradient(6, 3), indices)
    assert "backward returned a Tensor, not None: the layer has no floating-point input" in verdict.details()
