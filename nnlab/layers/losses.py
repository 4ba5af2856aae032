"""Losses: layers whose forward takes predictions and targets and returns a scalar mean."""

import abc
import warnings

import torch

from .base import Layer, checked_real, recall_call, remember_call
from .containers import ChildErrors


class Loss(Layer):
    """A layer ``forward(x, y) -> scalar`` whose ``backward(dout=1.0)`` returns d loss / d x."""

    def forward(self, x, y=None, **kw):
        if y is None:
            raise ValueError(f"{self!r}: forward(x, y) needs targets y; got none")
        return self.finish_forward(self.loss(x, y))

    @staticmethod
    def batch_scale(dout, count):
        """``dout / count`` for the gradient of a mean over ``count`` terms; an empty
        batch (count 0, whose mean is NaN as in torch) has an empty gradient anyway."""
        return dout / max(count, 1)

    @abc.abstractmethod
    def loss(self, x, y):
        """The scalar loss; caches what backward needs."""

    def check_same_shape(self, x, y):
        """Predictions and targets of one shape; never a broadcast (torch warns and
        broadcasts (N, 1) against (N,); here it is a ValueError saying how to reshape)."""
        self.check_input(x, "a tensor", True)
        if not isinstance(y, torch.Tensor):
            raise ValueError(f"{self!r}: expected targets y as a tensor, got {type(y).__name__}")
        if y.shape != x.shape:
            raise ValueError(
                f"{self!r}: expected targets y of shape {tuple(x.shape)} (as the predictions x), "
                f"got {tuple(y.shape)}{reshape_hint(tuple(x.shape), tuple(y.shape))}"
            )


def reshape_hint(x_shape, y_shape):
    """How to give targets of ``y_shape`` the predictions' ``x_shape``, when one is the
    other with a trailing dimension of 1 (the broadcast torch only warns about)."""
    if x_shape == y_shape + (1,):
        return "; reshape the targets with y.unsqueeze(-1) (or the predictions with x.squeeze(-1))"
    if y_shape == x_shape + (1,):
        return "; reshape the targets with y.squeeze(-1)"
    return ""


class ClassificationLoss(Loss):
    """Base of the losses on (N, C) rows with class-index or probability targets."""

    def check_rows(self, x):
        self.check_input(x, "(N, C)", lambda x: x.dim() == 2 and x.shape[1] > 0)

    def is_class_labels(self, x, y):
        """True for class labels (N,), False for probabilities (N, C); checks shape,
        dtype and label range (ValueError naming the layer)."""
        num_samples, num_classes = x.shape
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"{self!r}: expected targets y as a torch.Tensor, got {type(y).__name__}")
        if y.is_floating_point() and y.dim() == 2:
            if y.shape != x.shape:
                raise ValueError(
                    f"{self!r}: expected probability targets of shape {tuple(x.shape)}, got {tuple(y.shape)}"
                )
            return False
        # torch takes int64 or uint8 labels; any integer type is read exactly.
        if y.dtype == torch.bool or y.is_floating_point() or y.is_complex() or y.shape != (num_samples,):
            hint = "; pass y.view(-1)" if y.numel() == num_samples and y.dim() > 1 else ""
            raise ValueError(
                f"{self!r}: expected class labels (an integer tensor of shape ({num_samples},)) or "
                f"probabilities (a float tensor of shape {tuple(x.shape)}), got {y.dtype} of shape "
                f"{tuple(y.shape)}{hint}"
            )
        if num_samples and (y.min() < 0 or y.max() >= num_classes):
            bad = y[(y < 0) | (y >= num_classes)][0].item()
            raise ValueError(f"{self!r}: class labels must be in [0, {num_classes}), got {bad}")
        return True

    def mean_negative_log_likelihood(self, x, log_probs, y):
        """``-mean_n sum_c y[n, c] log_probs[n, c]`` with y as probabilities (one-hot
        rows for class labels), which it caches as ``self._targets`` for backward."""
        self._class_labels = self.is_class_labels(x, y)
        if self._class_labels:
            labels = y.to(device=x.device, dtype=torch.long).view(-1, 1)
            self._targets = torch.zeros_like(x).scatter_(1, labels, 1.0)
            # Picking the target's log-probability (not summing one-hot * log_probs)
            # keeps a -inf log-probability of another class (a mask) from making
            # 0 * -inf = NaN.
            return -log_probs.gather(1, labels).sum() / x.shape[0]
        self._targets = y.to(x.dtype)
        return -(self._targets * log_probs).sum() / x.shape[0]

    def log_likelihood_gradient(self, dout):
        """``-dout * y / N``, the gradient of ``mean_negative_log_likelihood`` with
        respect to the log-probabilities. For class labels ``-dout / N`` is written at
        each target into zeros, as torch's nll_loss backward does, so that an infinite
        or NaN dout leaves the other classes at 0 (not 0 * inf = NaN)."""
        targets = self._targets
        scale = self.batch_scale(dout, targets.shape[0])
        if self._class_labels:
            return torch.zeros_like(targets).masked_fill_(targets == 1, -scale)
        return targets * -scale


class CrossEntropyLoss(ClassificationLoss):
    """Mean softmax cross-entropy of scores x (N, C) against targets y.
    Same as ``torch.nn.CrossEntropyLoss()``.

    Forward, with log-softmax computed stably as ``x - max - log sum exp(x - max)``:
    class indices y (N,): ``L = -mean_n log_softmax(x)[n, y_n]``;
    probabilities y (N, C): ``L = -mean_n sum_c y[n, c] log_softmax(x)[n, c]``.

    Backward, through log-softmax as torch's autograd goes: ``g = -dout * y / N``
    (``log_likelihood_gradient``), then ``dx = g - softmax(x) * sum_c g``; that is
    ``dx = dout * (softmax(x) * sum_c y - y) / N`` with y as probabilities (one-hot for
    indices), ``(softmax(x) - y) / N`` when rows of y sum to 1. The order matters only
    for a non-finite dout, where it gives torch's NaN and infinities.

    Scores that look like probabilities (every row in [0, 1] summing to 1, C >= 2) get
    a ``UserWarning``: they are legal scores, and torch takes them silently, but they
    are almost always a ``Softmax`` output, on which this loss applies softmax a second
    time; use ``ClippedCrossEntropyLoss`` on probabilities or ``NLLLoss`` on
    log-probabilities instead.

    Shapes: x (N, C), y (N,) int64 or (N, C) float -> scalar.
    Caches: softmax(x) and y as probabilities.
    """

    SAVED_TENSORS = ("_probs", "_targets")

    def __init__(self):
        super().__init__()
        self._probs = None
        self._targets = None

    def loss(self, x, y):
        self.check_rows(x)
        if looks_like_probabilities(x):
            warnings.warn(
                f"{self!r}: the scores look like probabilities (rows in [0, 1] summing to 1); "
                "CrossEntropyLoss applies softmax itself, so a Softmax output gets softmax twice. "
                "Feed the scores before Softmax, or use ClippedCrossEntropyLoss on probabilities "
                "(NLLLoss on log-probabilities)",
                stacklevel=4,
            )
        shifted = x - x.amax(dim=1, keepdim=True)
        log_probs = shifted - torch.log(torch.exp(shifted).sum(dim=1, keepdim=True))
        self._probs = torch.exp(log_probs)
        return self.mean_negative_log_likelihood(x, log_probs, y)

    def backward(self, dout=1.0):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        dlog_probs = self.log_likelihood_gradient(dout)
        return dlog_probs - self._probs * dlog_probs.sum(dim=1, keepdim=True)


PROBABILITY_ROW_SUM_TOL = 1e-4


def looks_like_probabilities(x):
    """True when x (N, C), C >= 2, has every entry in [0, 1] and every row summing to 1
    within PROBABILITY_ROW_SUM_TOL: what a Softmax outputs."""
    if x.shape[0] == 0 or x.shape[1] < 2:
        return False
    in_range = (x.amin() >= 0) & (x.amax() <= 1)
    sums_to_one = (x.sum(dim=1) - 1).abs().amax() <= PROBABILITY_ROW_SUM_TOL
    return bool(in_range & sums_to_one)


class NLLLoss(ClassificationLoss):
    """Mean negative log-likelihood of log-probabilities x (N, C) (a log-softmax output)
    against targets y. Same as ``torch.nn.NLLLoss()`` for class indices.

    Forward: class indices y (N,): ``L = -mean_n x[n, y_n]``;
    probabilities y (N, C): ``L = -mean_n sum_c y[n, c] x[n, c]`` (torch's NLLLoss takes
    indices only; this is the same formula with one-hot rows replaced by y).

    Backward: ``dx = -dout * y / N`` with y as probabilities (for indices ``-dout / N``
    at each target, 0 elsewhere, whatever dout is: ``log_likelihood_gradient``).
    Shapes: x (N, C), y (N,) int64 or (N, C) float -> scalar.
    Caches: y as probabilities.
    """

    SAVED_TENSORS = ("_targets",)

    def __init__(self):
        super().__init__()
        self._targets = None

    def loss(self, x, y):
        self.check_rows(x)
        return self.mean_negative_log_likelihood(x, x, y)

    def backward(self, dout=1.0):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        return self.log_likelihood_gradient(dout)


class ClippedCrossEntropyLoss(ClassificationLoss):
    """Mean cross-entropy of probabilities p (N, C) (a Softmax output) against targets
    y, with p clipped to [eps, 1 - eps] before the log, as the courses whose networks
    end in Softmax compute it (and Keras' categorical cross-entropy on probabilities).

    Forward: ``L = -mean_n sum_c y[n, c] log(clip(p[n, c], eps, 1 - eps))``, with y
    as probabilities (one-hot for class indices).

    Backward: the exact gradient of that clipped formula,
    ``dp = -dout * y / (N * clip(p))`` where ``eps <= p <= 1 - eps`` and exactly 0 where
    the clip is active (p < eps or p > 1 - eps). At the bounds themselves, a kink, this
    is nnlab's convention, not torch's (``torch.clamp``'s gradient there changed between
    releases): p exactly eps or 1 - eps counts as inside, so a target class whose
    probability sits exactly at eps is still pushed up.

    Probabilities outside [0, 1] raise ValueError: they are scores, for
    ``CrossEntropyLoss`` (the clip would silently zero their gradients).
    Shapes: p (N, C), y (N,) int64 or (N, C) float -> scalar.
    Caches: clip(p), the mask where it is not active, y as probabilities.
    """

    SAVED_TENSORS = ("_clipped", "_inside", "_targets")

    def __init__(self, eps=1e-7):
        super().__init__()
        self.eps = checked_real("ClippedCrossEntropyLoss", "eps", eps, 0, 0.5, low_open=True)
        self._clipped = None
        self._inside = None
        self._targets = None

    def __repr__(self):
        return f"ClippedCrossEntropyLoss(eps={self.eps:g})"

    def loss(self, x, y):
        self.check_rows(x)
        check_probabilities(self, x)
        low, high = self.eps, 1 - self.eps
        self._clipped = torch.clamp(x, low, high)
        self._inside = (x >= low) & (x <= high)
        return self.mean_negative_log_likelihood(x, torch.log(self._clipped), y)

    def backward(self, dout=1.0):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        clipped = self._clipped
        grad = torch.where(self._inside, -self._targets / clipped, torch.zeros_like(clipped))
        return grad * self.batch_scale(dout, clipped.shape[0])


SCORES_ADVICE = " (a Sigmoid or Softmax output); for scores use the loss on logits"


def check_probabilities(layer, p, what="probabilities", advice=SCORES_ADVICE):
    """ValueError naming ``layer`` and ``what`` unless every entry of p is in [0, 1]
    (NaN is not); ``advice`` ends the message."""
    if p.numel() and not bool(((p >= 0) & (p <= 1)).all()):
        raise ValueError(
            f"{layer!r}: expected {what} in [0, 1], got values from {p.amin().item():.4g} "
            f"to {p.amax().item():.4g}{advice}"
        )


class MSELoss(Loss):
    """Mean squared error ``L = mean((x - y)^2)``. Same as ``torch.nn.MSELoss()``.

    Backward: ``dx = dout * 2 (x - y) / numel(x)``.
    Shapes: x any, y the same shape -> scalar. Targets of another floating dtype: the
    loss has the wider dtype and dx the predictions' dtype, as in torch.
    Caches: the difference x - y and x's dtype.
    """

    SAVED_TENSORS = ("_diff",)

    def __init__(self):
        super().__init__()
        self._diff = None
        self._x_dtype = None

    def loss(self, x, y):
        self.check_same_shape(x, y)
        self._diff = x - y
        self._x_dtype = x.dtype
        return (self._diff * self._diff).mean()

    def backward(self, dout=1.0):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        return (self._diff * self.batch_scale(2 * dout, self._diff.numel())).to(self._x_dtype)


class L1Loss(Loss):
    """Mean absolute error ``L = mean(|x - y|)``. Same as ``torch.nn.L1Loss()``.

    Backward: ``dx = dout * sign(x - y) / numel(x)``, with sign(0) = 0 at the kink
    (the subgradient torch uses).
    Shapes: x any, y the same shape -> scalar. Targets of another floating dtype: the
    loss has the wider dtype and dx the predictions' dtype, as in torch.
    Caches: sign(x - y), in x's dtype (exact: -1, 0, 1 or NaN).
    """

    SAVED_TENSORS = ("_sign",)

    def __init__(self):
        super().__init__()
        self._sign = None

    def loss(self, x, y):
        self.check_same_shape(x, y)
        diff = x - y
        self._sign = torch.sign(diff).to(x.dtype)
        return diff.abs().mean()

    def backward(self, dout=1.0):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        return self._sign * self.batch_scale(dout, self._sign.numel())


BCE_LOG_FLOOR = -100.0
# torch floors the gradient's denominator at its float32 constant 1e-12, in every dtype.
BCE_GRAD_EPSILON = torch.tensor(1e-12, dtype=torch.float32).item()


class BCELoss(Loss):
    """Mean binary cross-entropy of probabilities p (a Sigmoid output) with targets y in
    [0, 1]. Same as ``torch.nn.BCELoss()``, whose clamps it copies.

    Forward: ``L = -mean(y * max(log p, -100) + (1 - y) * max(log(1 - p), -100))``: the
    log is floored at -100, so p = 0 or 1 gives a finite loss.

    Backward, torch's formula: ``dp = dout * (p - y) / (max(p (1 - p), 1e-12) * numel(p))``
    (1e-12 as the float32 constant torch uses, also in float64),
    the derivative of the unclamped formula with its denominator floored (this is not the
    derivative of the floored log: where the floor is active it stays large, so
    confidently wrong predictions keep a strong gradient).

    Probabilities or targets outside [0, 1] (NaN included) raise ValueError (torch
    raises too).
    Shapes: p any, y the same shape -> scalar. Caches: p and y.
    """

    SAVED_TENSORS = ("_p", "_y")

    def __init__(self):
        super().__init__()
        self._p = None
        self._y = None

    def loss(self, x, y):
        self.check_same_shape(x, y)
        check_probabilities(self, x)
        check_probabilities(self, y, "targets y", advice="")
        y = y.to(x.dtype)
        log_p = torch.clamp(torch.log(x), min=BCE_LOG_FLOOR)
        log_not_p = torch.clamp(torch.log(1 - x), min=BCE_LOG_FLOOR)
        self._p = x
        self._y = y
        return -(y * log_p + (1 - y) * log_not_p).mean()

    def backward(self, dout=1.0):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        p = self._p
        denominator = torch.clamp(p * (1 - p), min=BCE_GRAD_EPSILON)
        return (p - self._y) / denominator * self.batch_scale(dout, p.numel())


class BCEWithLogitsLoss(Loss):
    """Mean binary cross-entropy on logits z with targets y in [0, 1], in the stable
    form ``L = mean((1 - y) * z + log(1 + exp(-z)))`` with ``log(1 + exp(-z)) =
    logaddexp(0, -z) = max(-z, 0) + log(1 + exp(-|z|))``, finite for any finite z, and
    grouped as torch groups it, so that an infinite z gives torch's inf (z = +inf, y < 1)
    or NaN (z = -inf). Same as ``torch.nn.BCEWithLogitsLoss()``.

    Backward: ``dz = dout * (sigmoid(z) - y) / numel(z)``.
    Shapes: z any, y the same shape -> scalar. Caches: sigmoid(z) and y.
    """

    SAVED_TENSORS = ("_probs", "_y")

    def __init__(self):
        super().__init__()
        self._probs = None
        self._y = None

    def loss(self, x, y):
        self.check_same_shape(x, y)
        y = y.to(x.dtype)
        self._probs = torch.sigmoid(x)
        self._y = y
        # logaddexp rather than max(-z, 0) + log1p(exp(-|z|)) written out: the same values,
        # but autograd through it gives sigmoid(z) - y at z = 0 too (through clamp and abs
        # it would give -y there), so checking this forward with autograd is sound.
        losses = (1 - y) * x + torch.logaddexp(torch.zeros_like(x), -x)
        return losses.mean()

    def backward(self, dout=1.0):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        return (self._probs - self._y) * self.batch_scale(dout, self._probs.numel())


class MultiTaskLoss(Loss):
    """The weighted mean of one loss per task, for a model with several outputs (a
    ``Heads`` model): ``L = sum_t w_t L_t(x_t, y_t) / sum_t w_t``, all w_t = 1 by default.

    ``forward(x, y)``: x is the tuple of the T outputs; y is one target per task, a tuple
    (or list) of T targets, or a tensor (N, T, ...) whose column ``y[:, t]`` holds task
    t's targets (e.g. (N, 2) class labels for two classification heads).

    Backward: ``backward(dout=1.0)`` returns the tuple ``(dx_0, ..., dx_{T-1})`` with
    ``dx_t = loss_t.backward(dout * w_t / sum_t w_t)``, the tuple ``Heads.backward``
    takes. One loss may serve several tasks (each call keeps its own cache, as in
    Sequential). Shapes: x a tuple of T tensors, each as its loss expects -> scalar.
    Caches: ``task_losses``, the T scalar losses of the latest forward, and each task
    loss's call (its id and attributes; each loss caches what its own backward needs).
    """

    def __init__(self, *losses, weights=None):
        super().__init__()
        if not losses:
            raise ValueError("MultiTaskLoss: needs at least one loss, one per task")
        for index, loss in enumerate(losses):
            if not isinstance(loss, Layer):
                raise TypeError(f"MultiTaskLoss: loss [{index}] must be an nnlab loss, got {type(loss).__name__}")
        self.losses = list(losses)
        self.weights = self._check_weights(weights, len(losses))
        self.task_losses = None
        self._calls = None

    @staticmethod
    def _check_weights(weights, num_tasks):
        if weights is None:
            return (1.0,) * num_tasks
        weights = tuple(weights)
        numbers = all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights)
        if len(weights) != num_tasks or not numbers or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(
                f"MultiTaskLoss: weights must be {num_tasks} numbers >= 0 with a positive sum "
                f"(one per loss), got {weights!r}"
            )
        return tuple(float(w) for w in weights)

    def named_children(self):
        return [(str(index), loss) for index, loss in enumerate(self.losses)]

    def __repr__(self):
        names = ", ".join(repr(loss) for loss in self.losses)
        if all(w == 1.0 for w in self.weights):
            return f"MultiTaskLoss({names})"
        return f"MultiTaskLoss({names}, weights={self.weights})"

    def loss(self, x, y):
        num_tasks = len(self.losses)
        if not isinstance(x, (tuple, list)) or len(x) != num_tasks:
            got = f"a {type(x).__name__} of {len(x)}" if isinstance(x, (tuple, list)) else type(x).__name__
            raise ValueError(f"{self!r}: expected a tuple of {num_tasks} outputs (a Heads model's), got {got}")
        targets = self.split_targets(y)
        task_losses = []
        calls = []
        for index, (loss, output, target) in enumerate(zip(self.losses, x, targets)):
            with ChildErrors(f"MultiTaskLoss task {index} ({type(loss).__name__})"):
                task_losses.append(loss(output, target))
            calls.append(remember_call(loss))
        self.task_losses = tuple(task_losses)
        self._calls = calls
        total = sum(weight * value for weight, value in zip(self.weights, task_losses))
        return total / sum(self.weights)

    def split_targets(self, y):
        """One target per task: the tuple itself, or the columns ``y[:, t]`` of a tensor."""
        num_tasks = len(self.losses)
        if isinstance(y, (tuple, list)):
            if len(y) != num_tasks:
                raise ValueError(f"{self!r}: expected {num_tasks} targets (one per task), got {len(y)}")
            return tuple(y)
        if isinstance(y, torch.Tensor) and y.dim() >= 2 and y.shape[1] == num_tasks:
            return tuple(y[:, task] for task in range(num_tasks))
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(
            f"{self!r}: expected {num_tasks} targets: a tuple, or a tensor (N, {num_tasks}) whose "
            f"column t is task t's targets; got {got}"
        )

    def backward(self, dout=1.0):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        total_weight = sum(self.weights)
        douts = []
        for index, (loss, weight) in enumerate(zip(self.losses, self.weights)):
            where = f"MultiTaskLoss task {index} ({type(loss).__name__})"
            with recall_call(loss, self._calls[index]), ChildErrors(where):
                douts.append(loss.backward(dout * (weight / total_weight)))
        return tuple(douts)
