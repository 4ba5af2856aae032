"""Losses: layers whose forward takes predictions and targets and returns the loss.

This module holds the classification losses on class scores (CrossEntropyLoss, NLLLoss,
ClippedCrossEntropyLoss), the elementwise losses of the first waves (MSELoss, L1Loss,
BCELoss, BCEWithLogitsLoss) and MultiTaskLoss; ``regression_losses`` and
``margin_losses`` hold the others. Every loss is importable from here.
"""

import numbers
import warnings

import torch

from .base import Layer, checked_real, recall_call, remember_call
from .containers import ChildErrors
from .loss_base import TORCH_LOSS_EPSILON, Loss, class_weight_for, element_weight, register_weight, several_inputs
from .margin_losses import (
    CosineEmbeddingLoss,
    HingeEmbeddingLoss,
    MarginRankingLoss,
    MultiLabelSoftMarginLoss,
    MultiMarginLoss,
    SoftMarginLoss,
)
from .regression_losses import GaussianNLLLoss, HuberLoss, KLDivLoss, PoissonNLLLoss, SmoothL1Loss

__all__ = [
    "BCELoss", "BCEWithLogitsLoss", "ClassificationLoss", "ClippedCrossEntropyLoss", "CosineEmbeddingLoss",
    "CrossEntropyLoss", "GaussianNLLLoss", "HingeEmbeddingLoss", "HuberLoss", "KLDivLoss", "L1Loss", "Loss",
    "MSELoss", "MarginRankingLoss", "MultiLabelSoftMarginLoss", "MultiMarginLoss", "MultiTaskLoss", "NLLLoss",
    "PoissonNLLLoss", "SmoothL1Loss", "SoftMarginLoss",
]


class ClassificationLoss(Loss):
    """Base of the losses on scores or log-probabilities x of shape (N, C), (C,) (one
    sample) or (N, C, d1, ...) (a class score per position), with targets y of class
    indices (N,), () or (N, d1, ...), or probabilities of x's shape (torch tells them
    apart by shape too).

    ``negative_log_likelihood`` and ``log_likelihood_gradient`` hold torch's arithmetic
    for the options (class ``weight``, ``ignore_index``, ``label_smoothing``, the
    reductions); a subclass computes the log-probabilities and their backward.
    """

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, **legacy):
        super().__init__(reduction, **legacy)
        owner = type(self).__name__
        register_weight(self, "weight", weight)
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
            raise ValueError(f"{owner}: ignore_index must be an int, got {ignore_index!r}")
        self.ignore_index = int(ignore_index)
        self.label_smoothing = checked_real(owner, "label_smoothing", label_smoothing, 0, 1, high_open=False)
        self._class_labels = None
        self._targets = None
        self._valid = None
        self._every_label_counts = False
        self._total = None
        self._shape = None
        self._dtype = None
        self._unbatched = None

    def check_rows(self, x):
        self.check_input(x, "(N, C)", lambda x: x.dim() == 2 and x.shape[1] > 0)

    def check_scores(self, x):
        """x of shape (N, C), (C,) or (N, C, d1, ...) with C >= 1."""
        expected = "(N, C), (C,) or (N, C, d1, ...)"
        self.check_input(x, expected, lambda x: x.dim() >= 1 and x.shape[min(1, x.dim() - 1)] > 0)

    def batched(self, x):
        """x with a batch dimension: (C,) becomes (1, C); remembers which it was."""
        self._unbatched = x.dim() == 1
        return x.unsqueeze(0) if self._unbatched else x

    def unbatched(self, value):
        """The inverse of ``batched`` for an output or gradient of the batched form."""
        return value.squeeze(0) if self._unbatched and value.dim() > 0 else value

    def is_class_labels(self, x, y):
        """True for class labels, False for probabilities (y of x's shape); checks shape,
        dtype and label range (ValueError naming the layer)."""
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"{self!r}: expected targets y as a torch.Tensor, got {type(y).__name__}")
        label_shape = x.shape[1:] if x.dim() == 1 else x.shape[:1] + x.shape[2:]
        if y.shape == x.shape and y.is_floating_point():
            if self.ignore_index >= 0:
                raise ValueError(f"{self!r}: ignore_index is not supported with probability targets (as in torch)")
            return False
        # torch takes int64 or uint8 labels; any integer type is read exactly.
        if y.dtype == torch.bool or y.is_floating_point() or y.is_complex() or y.shape != label_shape:
            hint = "; pass y.view(-1)" if x.dim() == 2 and y.numel() == x.shape[0] and y.dim() > 1 else ""
            raise ValueError(
                f"{self!r}: expected class labels (an integer tensor of shape {tuple(label_shape)}) or "
                f"probabilities (a float tensor of shape {tuple(x.shape)}), got {y.dtype} of shape "
                f"{tuple(y.shape)}{hint}"
            )
        num_classes = x.shape[0] if x.dim() == 1 else x.shape[1]
        # One pass finds the usual labels in range; the mask only for those that are not.
        low, high = (extreme.item() for extreme in torch.aminmax(y)) if y.numel() else (0, 0)
        in_range = low >= 0 and high < num_classes
        if not in_range:
            wrong = (y != self.ignore_index) & ((y < 0) | (y >= num_classes))
            if wrong.any():
                raise ValueError(f"{self!r}: class labels must be in [0, {num_classes}), got {y[wrong][0].item()}")
        self._every_label_counts = in_range and not 0 <= self.ignore_index < num_classes
        return True

    def negative_log_likelihood(self, x, log_probs, y):
        """The reduced loss from the log-probabilities (N, C, ...) of x (batched), as torch:
        class labels y: ``l = -w[y] log_probs[y]`` (0 where y is ignore_index), with
        label smoothing e ``(1 - e) l - e / C sum_c w[c] log_probs[c]``; the mean divides
        by the sum of w[y] over the labels not ignored (NaN when all are).
        Probabilities y: ``l = -sum_c w[c] t[c] log_probs[c]`` with t = (1 - e) y + e / C;
        the mean divides by the number of samples (positions).
        Caches the targets (label indices or t), the mask of labels not ignored and the
        divisor of the mean."""
        self._class_labels = self.is_class_labels(x, y)
        y = y.unsqueeze(0) if self._unbatched else y
        self._shape = log_probs.shape
        self._dtype = log_probs.dtype
        num_classes = log_probs.shape[1]
        weight = class_weight_for(self, log_probs, num_classes)
        smoothing = self.label_smoothing
        if not self._class_labels:
            targets = y.to(log_probs.dtype)
            if smoothing > 0:
                targets = targets * (1 - smoothing) + smoothing / num_classes
            self._targets = targets
            self._total = log_probs.numel() // num_classes
            # torch's order: (lp t) w, summed over everything at once for a scalar.
            products = log_probs * targets if weight is None else log_probs * targets * weight
            if self.reduction == "none":
                return self.unbatched(-products.sum(dim=1))
            total = -products.sum()
            return total / self._total if self.reduction == "mean" else total
        labels = y.unsqueeze(1).to(device=x.device, dtype=torch.long)
        # valid: the mask of labels not ignored, None when no label can be (all count).
        valid = None if self._every_label_counts else (y != self.ignore_index).unsqueeze(1)
        if valid is not None:
            labels = torch.where(valid, labels, 0)
        self._targets = labels
        self._valid = valid
        # Picking the target's log-probability (not summing one-hot * log_probs)
        # keeps a -inf log-probability of another class (a mask) from making 0 * -inf = NaN.
        picked = log_probs.gather(1, labels)
        if weight is None:
            losses = -picked
            self._total = labels.numel() if valid is None else valid.sum().to(log_probs.dtype)
        else:
            label_weights = weight.view(-1)[labels]
            losses = -(label_weights * picked)
            self._total = only_valid(label_weights, valid).sum()
        total = self.reduce_labels(only_valid(losses, valid))
        if smoothing > 0:
            spread = log_probs if weight is None else log_probs * weight
            smooth = only_valid(-spread.sum(dim=1, keepdim=True), valid)
            total = (1 - smoothing) * total + self.reduce_labels(smooth) * (smoothing / num_classes)
        return total

    def reduce_labels(self, losses):
        """Per-position losses (N, 1, ...) of class labels reduced; the mean divides by
        the total weight of the labels not ignored."""
        if self.reduction == "mean":
            return losses.sum() / self._total
        return self.unbatched(self.reduce(losses.squeeze(1)))

    def log_likelihood_gradient(self, dout):
        """The gradient of ``negative_log_likelihood`` with respect to the batched
        log-probabilities. For class labels ``-w[y] dout`` (over the mean's
        divisor) is written at each label into zeros, as torch's nll_loss backward does,
        so that an infinite or NaN dout leaves the other classes at 0 (not 0 * inf = NaN);
        label smoothing adds ``-e / C w[c] dout`` to every class where the label is not
        ignored. For probabilities ``-dout w t`` (dout over the number of samples)."""
        if self.reduction == "none":
            dout = dout.unsqueeze(0) if self._unbatched else dout
            dout = dout.unsqueeze(1)
        shape = self._shape
        weight = None if self.weight is None else self.weight.view([1, -1] + [1] * (len(shape) - 2))
        if not self._class_labels:
            scale = -self.loss_scale(dout, self._total)
            return (scale if weight is None else scale * weight) * self._targets
        num_classes = shape[1]
        scale = dout
        if self.reduction == "mean":
            # The divisor is a count (an int) when every label counts, else a tensor.
            counted = isinstance(self._total, int)
            scale = self.batch_scale(dout, self._total) if counted else dout / self._total
        smoothing = self.label_smoothing
        at_labels = -(scale * (1 - smoothing)) if smoothing > 0 else -scale
        if weight is not None:
            at_labels = weight.view(-1)[self._targets] * at_labels
        at_labels = only_valid(at_labels, self._valid)
        grad = torch.zeros(shape, dtype=self._dtype, device=self._targets.device)
        if isinstance(at_labels, torch.Tensor):
            grad.scatter_(1, self._targets, at_labels.to(self._dtype).expand(self._targets.shape))
        else:
            grad.scatter_(1, self._targets, at_labels)
        if smoothing > 0:
            spread = only_valid(-(scale * (smoothing / num_classes)), self._valid)
            grad = grad + (spread if weight is None else spread * weight)
        return grad


def only_valid(values, valid):
    """``values`` where the label counts, 0 where it is ignored (``valid`` False); as they
    are when every label counts (``valid`` None)."""
    return values if valid is None else torch.where(valid, values, 0)


class CrossEntropyLoss(ClassificationLoss):
    """Softmax cross-entropy of scores x against class labels or probabilities y.
    Same as ``torch.nn.CrossEntropyLoss`` (every option).

    Forward, with log-softmax over the class dimension computed stably as
    ``lp = x - max - log sum exp(x - max)``, the negative log-likelihood of lp
    (``ClassificationLoss.negative_log_likelihood``): class labels y:
    ``l = -w[y] lp[y]`` (0 where y == ignore_index), plus with label smoothing e
    ``L = (1 - e) l - e / C sum_c w[c] lp[c]``; probabilities y: ``l = -sum_c w[c] t[c] lp[c]``
    with ``t = (1 - e) y + e / C``. ``reduction='mean'`` divides the sum by the total
    weight of the labels not ignored (NaN when every label is ignored, as in torch), or
    for probabilities by the number of samples; 'sum' sums; 'none' keeps one loss per
    sample (and position).

    Backward, through log-softmax as torch's autograd goes: g = d loss / d lp
    (``log_likelihood_gradient``: ``-w[y] dout / W`` at each label, 0 elsewhere, plus the
    smoothing term; ``-t w dout / N`` for probabilities), then
    ``dx = g - softmax(x) * sum_c g``. The order matters only for a non-finite dout,
    where it gives torch's NaN and infinities.

    Scores (N, C) that look like probabilities (every row in [0, 1] summing to 1, C >= 2)
    get a ``UserWarning``: they are legal scores, and torch takes them silently, but they
    are almost always a ``Softmax`` output, on which this loss applies softmax a second
    time; use ``ClippedCrossEntropyLoss`` on probabilities or ``NLLLoss`` on
    log-probabilities instead.

    Shapes: x (N, C), (C,) or (N, C, d1, ...); y class labels (N,), () or (N, d1, ...),
    int64 (any integer type), or probabilities of x's shape; weight (C,) ->
    a scalar, or with 'none' (N,), () or (N, d1, ...).
    Caches: softmax(x), the targets (labels or t), the mask of labels not ignored and
    the divisor of the mean.

    Example::

        >>> import torch
        >>> from nnlab.layers import CrossEntropyLoss
        >>> loss_fn = CrossEntropyLoss()
        >>> scores, labels = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
        >>> loss = loss_fn(scores, labels)
        >>> torch.allclose(loss, torch.nn.functional.cross_entropy(scores, labels))
        True
        >>> dscores = loss_fn.backward(1.0)          # (softmax(scores) - one_hot(labels)) / N
        >>> expected = (scores.softmax(dim=1) - torch.nn.functional.one_hot(labels, 3)) / 4
        >>> torch.allclose(dscores, expected)
        True
    """

    SAVED_TENSORS = ("_probs", "_targets")
    REPR_OPTIONS = (("weight", None), ("ignore_index", -100), ("reduction", "mean"), ("label_smoothing", 0.0))

    def __init__(
        self, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean", label_smoothing=0.0
    ):
        super().__init__(weight, ignore_index, reduction, label_smoothing, size_average=size_average, reduce=reduce)
        self._probs = None

    def loss(self, x, y):
        self.check_scores(x)
        if x.dim() == 2 and looks_like_probabilities(x):
            warnings.warn(
                f"{self!r}: the scores look like probabilities (rows in [0, 1] summing to 1); "
                "CrossEntropyLoss applies softmax itself, so a Softmax output gets softmax twice. "
                "Feed the scores before Softmax, or use ClippedCrossEntropyLoss on probabilities "
                "(NLLLoss on log-probabilities)",
                stacklevel=4,
            )
        scores = self.batched(x)
        shifted = scores - scores.amax(dim=1, keepdim=True)
        log_probs = shifted - torch.log(torch.exp(shifted).sum(dim=1, keepdim=True))
        self._probs = torch.exp(log_probs)
        return self.negative_log_likelihood(x, log_probs, y)

    def backward(self, dout=1.0):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        dlog_probs = self.log_likelihood_gradient(dout)
        return self.unbatched(dlog_probs - self._probs * dlog_probs.sum(dim=1, keepdim=True))


PROBABILITY_ROW_SUM_TOL = 1e-4


def looks_like_probabilities(x):
    """True when x (N, C), C >= 2, has every entry in [0, 1] and every row summing to 1
    within PROBABILITY_ROW_SUM_TOL: what a Softmax outputs."""
    if x.shape[0] == 0 or x.shape[1] < 2:
        return False
    # Scores almost always have a negative entry: one pass decides most calls.
    low, high = (extreme.item() for extreme in torch.aminmax(x))
    if not (low >= 0 and high <= 1):
        return False
    return bool((x.sum(dim=1) - 1).abs().amax() <= PROBABILITY_ROW_SUM_TOL)


class NLLLoss(ClassificationLoss):
    """Negative log-likelihood of log-probabilities x (a log-softmax output) against
    class labels or probabilities y. Same as ``torch.nn.NLLLoss`` (every option) for
    class labels.

    Forward: class labels y: ``l = -w[y] x[y]``, 0 where y == ignore_index; the mean
    divides the sum by the total weight of the labels not ignored (NaN when all are).
    Probabilities y (torch's NLLLoss takes labels only; this is the same formula with
    one-hot rows replaced by y): ``l = -sum_c w[c] y[c] x[c]``, the mean over samples.

    Backward: ``dx = -w[y] dout / W`` at each label, 0 elsewhere, whatever dout is
    (``log_likelihood_gradient``); ``-w y dout / N`` for probabilities.
    Shapes: x (N, C), (C,) or (N, C, d1, ...); y class labels (N,), () or (N, d1, ...),
    int64 (any integer type), or probabilities of x's shape; weight (C,) ->
    a scalar, or with 'none' (N,), () or (N, d1, ...).
    Caches: the targets (labels or y), the mask of labels not ignored, the divisor of the mean.
    """

    SAVED_TENSORS = ("_targets",)
    REPR_OPTIONS = (("weight", None), ("ignore_index", -100), ("reduction", "mean"))

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean"):
        super().__init__(weight, ignore_index, reduction, size_average=size_average, reduce=reduce)

    def loss(self, x, y):
        self.check_scores(x)
        return self.negative_log_likelihood(x, self.batched(x), y)

    def backward(self, dout=1.0):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        return self.unbatched(self.log_likelihood_gradient(dout))


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

    ``reduction``: 'mean' (above), 'sum' (no 1 / N), 'none' (one loss per sample).
    Probabilities outside [0, 1] raise ValueError: they are scores, for
    ``CrossEntropyLoss`` (the clip would silently zero their gradients).
    Shapes: p (N, C), y (N,) int64 or (N, C) float -> scalar ((N,) with 'none').
    Caches: clip(p), the mask where it is not active, the targets (labels or probabilities).
    """

    SAVED_TENSORS = ("_clipped", "_inside", "_targets")

    def __init__(self, eps=1e-7, reduction="mean"):
        super().__init__(reduction=reduction)
        self.eps = checked_real("ClippedCrossEntropyLoss", "eps", eps, 0, 0.5, low_open=True)
        self._clipped = None
        self._inside = None

    def __repr__(self):
        reduction = "" if self.reduction == "mean" else f", reduction={self.reduction!r}"
        return f"ClippedCrossEntropyLoss(eps={self.eps:g}{reduction})"

    def loss(self, x, y):
        self.check_rows(x)
        self.batched(x)
        check_probabilities(self, x)
        low, high = self.eps, 1 - self.eps
        self._clipped = torch.clamp(x, low, high)
        self._inside = (x >= low) & (x <= high)
        return self.negative_log_likelihood(x, torch.log(self._clipped), y)

    def backward(self, dout=1.0):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        return torch.where(self._inside, self.log_likelihood_gradient(dout) / self._clipped, 0)


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
    """Squared error ``l = (x - y)^2``, reduced: ``L = mean(l)`` by default, ``sum(l)``
    or l itself (``reduction``). Same as ``torch.nn.MSELoss``.

    Backward: ``dx = ((2 / numel(x)) (x - y)) dout`` for the mean, torch's order;
    ``dx = ((x - y) dout) 2`` for 'sum' and 'none': the values of torch's ``(2 (x - y)) dout``
    (doubling is exact), but finite where ``2 (x - y)`` overflows and the result does not
    (torch gives inf there: x - y beyond half the dtype's largest number).
    Shapes: x any, y the same shape -> scalar (x's shape with 'none'). Targets of another
    floating dtype: the loss has the wider dtype and dx the predictions' dtype, as in torch.
    Caches: the difference x - y and x's dtype.
    """

    SAVED_TENSORS = ("_diff",)

    def __init__(self, size_average=None, reduce=None, reduction="mean"):
        super().__init__(reduction, size_average, reduce)
        self._diff = None
        self._x_dtype = None

    def loss(self, x, y):
        self.check_same_shape(x, y)
        self._diff = x - y
        self._x_dtype = x.dtype
        return self.reduce(self._diff * self._diff)

    def backward(self, dout=1.0):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        if self.reduction == "mean":
            dx = self._diff * self.batch_scale(2.0, self._diff.numel()) * dout
        else:
            dx = self._diff * dout * 2
        return dx.to(self._x_dtype)


class L1Loss(Loss):
    """Absolute error ``l = |x - y|``, reduced: ``L = mean(l)`` by default, ``sum(l)`` or
    l itself (``reduction``). Same as ``torch.nn.L1Loss``.

    Backward: ``dx = dout * sign(x - y) / numel(x)`` (no 1 / numel for 'sum' and
    'none'), with sign(0) = 0 at the kink (the subgradient torch uses).
    Shapes: x any, y the same shape -> scalar (x's shape with 'none'). Targets of another
    floating dtype: the loss has the wider dtype and dx the predictions' dtype, as in torch.
    Caches: sign(x - y), in x's dtype (exact: -1, 0, 1 or NaN).
    """

    SAVED_TENSORS = ("_sign",)

    def __init__(self, size_average=None, reduce=None, reduction="mean"):
        super().__init__(reduction, size_average, reduce)
        self._sign = None

    def loss(self, x, y):
        self.check_same_shape(x, y)
        diff = x - y
        self._sign = torch.sign(diff).to(x.dtype)
        return self.reduce(diff.abs())

    def backward(self, dout=1.0):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        return (self._sign * self.loss_scale(dout, self._sign.numel())).to(self._sign.dtype)


BCE_LOG_FLOOR = -100.0
# torch floors the gradient's denominator at its float32 constant 1e-12, in every dtype.
BCE_GRAD_EPSILON = TORCH_LOSS_EPSILON


class BCELoss(Loss):
    """Mean binary cross-entropy of probabilities p (a Sigmoid output) with targets y in
    [0, 1]. Same as ``torch.nn.BCELoss()``, whose clamps it copies.

    Forward: ``L = -mean(y * max(log p, -100) + (1 - y) * max(log(1 - p), -100))``: the
    log is floored at -100, so p = 0 or 1 gives a finite loss.

    Backward, torch's formula: ``dp = dout * (p - y) / (max(p (1 - p), 1e-12) * numel(p))``
    (1e-12 as the float32 constant torch uses, also in float64),
    the derivative of the unclamped formula with its denominator floored (this is not the
    derivative of the floored log: where the floor is active it stays large, so
    confidently wrong predictions keep a strong gradient). It is computed as
    ``(p - y) / max(...) * (dout / numel(p))``: for dout near the dtype's largest number
    finite and exact where torch's ``((p - y) / max(...) * dout) / numel(p)`` overflows
    to inf first.

    ``weight`` (broadcastable to p's shape, a buffer as in torch) multiplies each
    element's loss and gradient; ``reduction`` 'sum' and 'none' drop the 1 / numel.
    Probabilities or targets outside [0, 1] (NaN included) raise ValueError (torch
    raises too).
    Shapes: p any, y the same shape -> scalar (p's shape with 'none').
    Caches: p, y and the weight broadcast to p's shape.
    """

    SAVED_TENSORS = ("_p", "_y")
    REPR_OPTIONS = (("weight", None), ("reduction", "mean"))

    def __init__(self, weight=None, size_average=None, reduce=None, reduction="mean"):
        super().__init__(reduction, size_average, reduce)
        register_weight(self, "weight", weight)
        self._p = None
        self._y = None
        self._weight = None

    def loss(self, x, y):
        self.check_same_shape(x, y)
        check_probabilities(self, x)
        check_probabilities(self, y, "targets y", advice="")
        y = y.to(x.dtype)
        self._weight = element_weight(self, "weight", x)
        log_p = torch.clamp(torch.log(x), min=BCE_LOG_FLOOR)
        log_not_p = torch.clamp(torch.log(1 - x), min=BCE_LOG_FLOOR)
        self._p = x
        self._y = y
        losses = -(y * log_p + (1 - y) * log_not_p)
        return self.reduce(losses if self._weight is None else losses * self._weight)

    def backward(self, dout=1.0):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        p = self._p
        denominator = torch.clamp(p * (1 - p), min=BCE_GRAD_EPSILON)
        grad = (p - self._y) / denominator * self.loss_scale(dout, p.numel())
        return grad if self._weight is None else grad * self._weight


class BCEWithLogitsLoss(Loss):
    """Mean binary cross-entropy on logits z with targets y in [0, 1], in the stable
    form ``L = mean((1 - y) * z + log(1 + exp(-z)))`` with ``log(1 + exp(-z)) =
    logaddexp(0, -z) = max(-z, 0) + log(1 + exp(-|z|))``, finite for any finite z, and
    grouped as torch groups it, so that an infinite z gives torch's inf (z = +inf, y < 1)
    or NaN (z = -inf). Same as ``torch.nn.BCEWithLogitsLoss`` (every option).

    ``pos_weight`` q (broadcastable to z's shape, typically one per class) weighs the
    positive term: ``l = (1 - y) z + (1 + (q - 1) y) log(1 + exp(-z))``; ``weight`` w
    multiplies each element's loss; ``reduction`` 'sum' and 'none' drop the 1 / numel.

    Backward, in torch's order: ``dz = ((q y + 1 - y) sigmoid(z) - q y) * dout * w / numel(z)``,
    which is ``(sigmoid(z) - y) * dout / numel(z)`` without weights; but dout / numel(z)
    first, so that for dout near the dtype's largest number dz is finite and exact where
    torch's product with dout overflows to inf before its division (with pos_weight > 1).
    Shapes: z any, y the same shape -> scalar (z's shape with 'none').
    Caches: sigmoid(z), y and the weights broadcast to z's shape.
    """

    SAVED_TENSORS = ("_probs", "_y")
    REPR_OPTIONS = (("weight", None), ("reduction", "mean"), ("pos_weight", None))

    def __init__(self, weight=None, size_average=None, reduce=None, reduction="mean", pos_weight=None):
        super().__init__(reduction, size_average, reduce)
        register_weight(self, "weight", weight)
        register_weight(self, "pos_weight", pos_weight)
        self._probs = None
        self._y = None
        self._weight = None
        self._pos_weight = None

    def loss(self, x, y):
        self.check_same_shape(x, y)
        y = y.to(x.dtype)
        self._weight = element_weight(self, "weight", x)
        self._pos_weight = element_weight(self, "pos_weight", x)
        self._probs = torch.sigmoid(x)
        self._y = y
        # logaddexp rather than max(-z, 0) + log1p(exp(-|z|)) written out: the same values,
        # but autograd through it gives sigmoid(z) - y at z = 0 too (through clamp and abs
        # it would give -y there), so checking this forward with autograd is sound.
        softplus = torch.logaddexp(torch.zeros_like(x), -x)
        if self._pos_weight is not None:
            softplus = softplus * ((self._pos_weight - 1) * y + 1)
        losses = (1 - y) * x + softplus
        return self.reduce(losses if self._weight is None else losses * self._weight)

    def backward(self, dout=1.0):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        if self._pos_weight is None:
            grad = self._probs - self._y
        else:
            weighted_y = self._pos_weight * self._y
            grad = (weighted_y + 1 - self._y) * self._probs - weighted_y
        grad = grad * self.loss_scale(dout, self._probs.numel())
        return grad if self._weight is None else grad * self._weight


class MultiTaskLoss(Loss):
    """The weighted mean of one loss per task, for a model with several outputs (a
    ``Heads`` model): ``L = sum_t w_t L_t(x_t, y_t) / sum_t w_t``, all w_t = 1 by default.

    ``forward(x, y)``: x is the tuple of the T outputs; y is one target per task, a tuple
    (or list) of T targets, or a tensor (N, T, ...) whose column ``y[:, t]`` holds task
    t's targets (e.g. (N, 2) class labels for two classification heads).

    Backward: ``backward(dout=1.0)`` returns the tuple ``(dx_0, ..., dx_{T-1})`` with
    ``dx_t = loss_t.backward(dout * w_t / sum_t w_t)``, the tuple ``Heads.backward``
    takes. One loss may serve several tasks (each call keeps its own cache, as in
    Sequential).

    ``reduction='sum'`` gives ``sum_t w_t L_t`` (no division), 'none' the tensor (T,) of
    the ``w_t L_t``, whose backward takes a dout (T,) and hands ``dout[t] * w_t`` to task
    t. Every task loss must give a scalar (its own reduction not 'none').
    Shapes: x a tuple of T tensors, each as its loss expects -> scalar ((T,) with 'none').
    Caches: ``task_losses``, the T scalar losses of the latest forward, and each task
    loss's call (its id and attributes; each loss caches what its own backward needs).
    """

    def __init__(self, *losses, weights=None, reduction="mean"):
        super().__init__(reduction)
        if not losses:
            raise ValueError("MultiTaskLoss: needs at least one loss, one per task")
        for index, loss in enumerate(losses):
            if not isinstance(loss, Layer):
                raise TypeError(f"MultiTaskLoss: loss [{index}] must be an nnlab loss, got {type(loss).__name__}")
            if several_inputs(loss) is not None:
                raise TypeError(
                    f"MultiTaskLoss: loss [{index}] ({type(loss).__name__}) takes several inputs "
                    f"({several_inputs(loss)}); a task loss takes one output and its targets"
                )
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
        if any(w != 1.0 for w in self.weights):
            names += f", weights={self.weights}"
        if self.reduction != "mean":
            names += f", reduction={self.reduction!r}"
        return f"MultiTaskLoss({names})"

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
            if task_losses[-1].dim() != 0:
                raise ValueError(
                    f"{self!r}: task {index} ({loss!r}) gave a loss of shape {tuple(task_losses[-1].shape)}; "
                    "every task loss must be a scalar (reduction 'mean' or 'sum')"
                )
            calls.append(remember_call(loss))
        self.task_losses = tuple(task_losses)
        self._calls = calls
        weighted = [weight * value for weight, value in zip(self.weights, task_losses)]
        if self.reduction == "none":
            return torch.stack(weighted)
        total = sum(weighted)
        return total / sum(self.weights) if self.reduction == "mean" else total

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
        total_weight = sum(self.weights) if self.reduction == "mean" else 1.0
        douts = []
        for index, (loss, weight) in enumerate(zip(self.losses, self.weights)):
            where = f"MultiTaskLoss task {index} ({type(loss).__name__})"
            task_dout = dout[index] if self.reduction == "none" else dout
            with recall_call(loss, self._calls[index]), ChildErrors(where):
                douts.append(loss.backward(task_dout * (weight / total_weight)))
        return tuple(douts)
