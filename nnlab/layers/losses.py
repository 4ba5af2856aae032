"""Losses: layers whose forward takes scores and targets and returns a scalar mean."""

import abc

import torch

from .base import Layer


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
        self.check_input(x, "a tensor", True)
        if not isinstance(y, torch.Tensor) or y.shape != x.shape:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"{self!r}: expected targets y of shape {tuple(x.shape)} (as x), got {got}")


class CrossEntropyLoss(Loss):
    """Mean softmax cross-entropy of scores x (N, C) against targets y.
    Same as ``torch.nn.CrossEntropyLoss()``.

    Forward, with log-softmax computed stably as ``x - max - log sum exp(x - max)``:
    class indices y (N,): ``L = -mean_n log_softmax(x)[n, y_n]``;
    probabilities y (N, C): ``L = -mean_n sum_c y[n, c] log_softmax(x)[n, c]``.

    Backward: ``dx = dout * (softmax(x) * sum_c y - y) / N`` with y as probabilities
    (one-hot for indices), i.e. ``(softmax(x) - y) / N`` when rows of y sum to 1.

    Shapes: x (N, C), y (N,) int64 or (N, C) float -> scalar.
    Caches: softmax(x) and y as probabilities.
    """

    SAVED_TENSORS = ("_probs", "_targets")

    def __init__(self):
        super().__init__()
        self._probs = None
        self._targets = None

    def loss(self, x, y):
        self.check_input(x, "(N, C)", lambda x: x.dim() == 2 and x.shape[1] > 0)
        shifted = x - x.amax(dim=1, keepdim=True)
        log_probs = shifted - torch.log(torch.exp(shifted).sum(dim=1, keepdim=True))
        self._probs = torch.exp(log_probs)
        if self.is_class_labels(x, y):
            labels = y.to(device=x.device, dtype=torch.long).view(-1, 1)
            self._targets = torch.zeros_like(x).scatter_(1, labels, 1.0)
            # Picking the target's log-probability (not summing one-hot * log_probs)
            # keeps a -inf logit of another class (a mask) from making 0 * -inf = NaN.
            return -log_probs.gather(1, labels).sum() / x.shape[0]
        self._targets = y.to(x.dtype)
        return -(self._targets * log_probs).sum() / x.shape[0]

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
            raise ValueError(
                f"{self!r}: expected class labels (an integer tensor of shape ({num_samples},)) or "
                f"probabilities (a float tensor of shape {tuple(x.shape)}), got {y.dtype} of shape {tuple(y.shape)}"
            )
        if num_samples and (y.min() < 0 or y.max() >= num_classes):
            bad = y[(y < 0) | (y >= num_classes)][0].item()
            raise ValueError(f"{self!r}: class labels must be in [0, {num_classes}), got {bad}")
        return True

    def backward(self, dout=1.0):
        self.start_backward(dout)
        probs = self._probs
        targets = self._targets
        grad = probs * targets.sum(dim=1, keepdim=True) - targets
        return grad * self.batch_scale(dout, probs.shape[0])


class MSELoss(Loss):
    """Mean squared error ``L = mean((x - y)^2)``. Same as ``torch.nn.MSELoss()``.

    Backward: ``dx = dout * 2 (x - y) / numel(x)``.
    Shapes: x any, y the same shape -> scalar. Caches: the difference x - y.
    """

    SAVED_TENSORS = ("_diff",)

    def __init__(self):
        super().__init__()
        self._diff = None

    def loss(self, x, y):
        self.check_same_shape(x, y)
        self._diff = x - y
        return (self._diff * self._diff).mean()

    def backward(self, dout=1.0):
        self.start_backward(dout)
        return self._diff * self.batch_scale(2 * dout, self._diff.numel())


class BCEWithLogitsLoss(Loss):
    """Mean binary cross-entropy on logits z with targets y in [0, 1], in the stable
    form ``L = mean(max(z, 0) - z * y + log(1 + exp(-|z|)))`` that stays finite for
    any z. Same as ``torch.nn.BCEWithLogitsLoss()``.

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
        losses = torch.clamp(x, min=0) - x * y + torch.log1p(torch.exp(-x.abs()))
        return losses.mean()

    def backward(self, dout=1.0):
        self.start_backward(dout)
        return (self._probs - self._y) * self.batch_scale(dout, self._probs.numel())
