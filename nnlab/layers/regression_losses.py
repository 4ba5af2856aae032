"""Losses on real-valued predictions beyond MSE and L1: ``HuberLoss``, ``SmoothL1Loss``,
``KLDivLoss``, ``PoissonNLLLoss`` and ``GaussianNLLLoss``, each torch's namesake.

Predictions and targets have one shape (torch warns and broadcasts; here that is a
ValueError); targets are data (no gradient), except GaussianNLLLoss's, whose backward
returns ``(dinput, dtarget, dvar)`` as torch's autograd differentiates all three.
"""

import math
import numbers
import warnings

import torch

from .base import checked_real, describe
from .loss_base import REDUCTIONS, Loss

__all__ = ["GaussianNLLLoss", "HuberLoss", "KLDivLoss", "PoissonNLLLoss", "SmoothL1Loss"]


class RegressionLoss(Loss):
    """A loss of predictions x against targets y of x's shape, reduced elementwise."""

    def check_targets(self, x, y):
        """x and y of one shape, y a floating tensor used in x's dtype."""
        self.check_same_shape(x, y)
        return y.to(x.dtype)


class HuberLoss(RegressionLoss):
    """Huber loss: quadratic near the target, linear beyond ``delta``. Same as ``torch.nn.HuberLoss``.

    Forward, with d = x - y: ``l = d^2 / 2`` where ``|d| < delta``, else
    ``delta (|d| - delta / 2)``; reduced by ``reduction`` (mean, sum or none).
    Backward: ``dx = clamp(d, -delta, delta) * dout`` (over numel(x) for the mean); the
    two pieces meet at ``|d| = delta``, where both give ``+-delta``, torch's value.
    Shapes: x any, y the same -> scalar (x's shape with 'none'). Caches: d.

    Example::

        >>> import torch
        >>> from nnlab.grad_compare import check_layer
        >>> from nnlab.layers import HuberLoss
        >>> x, y = torch.randn(8, 3), torch.randn(8, 3)
        >>> torch.allclose(HuberLoss(delta=0.5)(x, y), torch.nn.HuberLoss(delta=0.5)(x, y))
        True
        >>> check_layer(HuberLoss(delta=0.5), x, y).passed     # a loss is checked with its targets y
        True
    """

    SAVED_TENSORS = ("_diff",)
    REPR_OPTIONS = (("reduction", "mean"), ("delta", 1.0))

    def __init__(self, reduction="mean", delta=1.0):
        super().__init__(reduction)
        self.delta = checked_real("HuberLoss", "delta", delta, 0, low_open=True)
        self._diff = None

    def loss(self, x, y):
        y = self.check_targets(x, y)
        self._diff = x - y
        size = self._diff.abs()
        losses = torch.where(size < self.delta, 0.5 * self._diff * self._diff, self.delta * (size - 0.5 * self.delta))
        return self.reduce(losses)

    def backward(self, dout=1.0):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        slope = torch.clamp(self._diff, -self.delta, self.delta)
        return slope * self.loss_scale(dout, self._diff.numel())


class SmoothL1Loss(RegressionLoss):
    """Smooth L1 loss: ``HuberLoss`` divided by ``beta``. Same as ``torch.nn.SmoothL1Loss``.

    Forward, with d = x - y: ``l = d^2 / (2 beta)`` where ``|d| < beta``, else
    ``|d| - beta / 2``; ``beta = 0`` is the L1 loss ``|d|`` (as in torch); reduced by
    ``reduction``.
    Backward: ``dx = clamp(d / beta, -1, 1) * dout`` (over numel(x) for the mean);
    ``sign(d) * dout`` for beta = 0 (sign(0) = 0, as torch's L1).
    Shapes: x any, y the same -> scalar (x's shape with 'none'). Caches: d.
    """

    SAVED_TENSORS = ("_diff",)
    REPR_OPTIONS = (("reduction", "mean"), ("beta", 1.0))

    def __init__(self, size_average=None, reduce=None, reduction="mean", beta=1.0):
        super().__init__(reduction, size_average, reduce)
        self.beta = checked_real("SmoothL1Loss", "beta", beta, 0)
        self._diff = None

    def loss(self, x, y):
        y = self.check_targets(x, y)
        self._diff = x - y
        size = self._diff.abs()
        if self.beta == 0:
            return self.reduce(size)
        losses = torch.where(size < self.beta, 0.5 * self._diff * self._diff / self.beta, size - 0.5 * self.beta)
        return self.reduce(losses)

    def backward(self, dout=1.0):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        slope = torch.sign(self._diff) if self.beta == 0 else torch.clamp(self._diff / self.beta, -1, 1)
        return slope * self.loss_scale(dout, self._diff.numel())


class KLDivLoss(RegressionLoss):
    """Kullback-Leibler divergence of a target distribution y from log-probabilities x.
    Same as ``torch.nn.KLDivLoss``.

    Forward: ``l = y (log y - x)`` (``xlogy(y, y) - y x``, 0 where y = 0), or with
    ``log_target=True`` (y given as log-probabilities) ``l = exp(y) (y - x)``.
    ``reduction``: 'mean' over every element (torch warns that this is not the KL
    divergence; so does this layer), 'batchmean' (the sum over the batch size x.shape[0],
    the true KL divergence), 'sum', 'none'.
    Backward: ``dx = -y * dout`` (``-exp(y) * dout`` with log_target), over the mean's divisor.
    Shapes: x any, y the same -> scalar (x's shape with 'none'). Caches: y (or exp(y)).
    """

    SAVED_TENSORS = ("_weight",)
    REPR_OPTIONS = (("reduction", "mean"), ("log_target", False))

    def __init__(self, size_average=None, reduce=None, reduction="mean", log_target=False):
        super().__init__(reduction, size_average, reduce, reductions=REDUCTIONS + ("batchmean",))
        if not isinstance(log_target, bool):
            raise ValueError(f"KLDivLoss: log_target must be a bool, got {log_target!r}")
        self.log_target = log_target
        self._weight = None
        self._count = None

    def loss(self, x, y):
        self.check_same_shape(x, y)
        if not y.is_floating_point():
            raise ValueError(f"{self!r}: expected floating-point targets y (torch refuses integers), got {y.dtype}")
        y = y.to(x.dtype)
        if self.reduction == "mean":
            warnings.warn(
                f"{self!r}: reduction 'mean' divides the total loss by both the batch size and the support "
                "size; 'batchmean' divides only by the batch size, as the KL divergence is defined",
                stacklevel=4,
            )
        if self.log_target:
            self._weight = torch.exp(y)
            losses = self._weight * (y - x)
        else:
            self._weight = y
            losses = torch.xlogy(y, y) - y * x
        self._count = x.numel() if self.reduction == "mean" else (x.shape[0] if x.dim() else 1)
        if self.reduction == "batchmean":
            return losses.sum() / self._count if x.dim() else losses.sum()
        return self.reduce(losses)

    def backward(self, dout=1.0):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        if self.reduction == "batchmean":
            dout = dout / self._count
        return self._weight * -self.loss_scale(dout, self._count)


class PoissonNLLLoss(RegressionLoss):
    """Negative log-likelihood of targets y under a Poisson distribution of rate exp(x)
    (or x). Same as ``torch.nn.PoissonNLLLoss``.

    Forward: ``l = exp(x) - y x`` (``log_input=True``), or ``l = x - y log(x + eps)``;
    ``full=True`` adds Stirling's approximation of log(y!),
    ``y log y - y + log(2 pi y) / 2``, where y > 1 (0 elsewhere); reduced by ``reduction``.
    Backward, in autograd's order: ``dx = exp(x) g - y g`` or ``dx = g + (-g y) / (x + eps)``
    with g = dout (over numel(x) for the mean).
    Shapes: x any, y the same -> scalar (x's shape with 'none'). Caches: x, y.
    """

    SAVED_TENSORS = ("_x", "_y")
    REPR_OPTIONS = (("log_input", True), ("full", False), ("eps", 1e-8), ("reduction", "mean"))

    def __init__(self, log_input=True, full=False, size_average=None, eps=1e-8, reduce=None, reduction="mean"):
        super().__init__(reduction, size_average, reduce)
        for name, value in (("log_input", log_input), ("full", full)):
            if not isinstance(value, bool):
                raise ValueError(f"PoissonNLLLoss: {name} must be a bool, got {value!r}")
        self.log_input = log_input
        self.full = full
        self.eps = checked_real("PoissonNLLLoss", "eps", eps)
        self._x = None
        self._y = None

    def loss(self, x, y):
        y = self.check_targets(x, y)
        self._x = x
        self._y = y
        if self.log_input:
            losses = torch.exp(x) - y * x
        else:
            losses = x - y * torch.log(x + self.eps)
        if self.full:
            stirling = y * torch.log(y) - y + 0.5 * torch.log(2 * math.pi * y)
            losses = losses + torch.where(y <= 1, 0, stirling)
        return self.reduce(losses)

    def backward(self, dout=1.0):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        x, y = self._x, self._y
        scale = self.loss_scale(dout, x.numel())
        if self.log_input:
            return torch.exp(x) * scale - y * scale
        return scale + (-scale * y) / (x + self.eps)


class GaussianNLLLoss(Loss):
    """Negative log-likelihood of targets under a Gaussian of mean ``input`` and
    variance ``var``. Same as ``torch.nn.GaussianNLLLoss``; ``forward(input, target, var)``.

    Forward, with v = max(var, eps): ``l = (log v + (input - target)^2 / v) / 2``, plus
    ``log(2 pi) / 2`` with ``full=True``; reduced by ``reduction``. var has input's shape,
    or one entry for a whole last dimension (input's shape without its last dimension,
    or with one dimension of size 1); a Python number is one variance for every element.
    Negative variances raise ValueError (as in torch).
    Backward returns ``(dinput, dtarget, dvar)`` (``(dinput, dtarget)`` when var is a
    number): with h = dout / 2 (over numel for the mean) and d = input - target,
    ``dinput = 2 d h / v = -dtarget``, ``dvar = h / v - h ((d^2 / v) / v)`` summed over the
    entries var was broadcast to. The clamp at eps passes the gradient through unchanged,
    as torch clamps var without recording it for autograd.
    Shapes: input any, target the same, var as above -> scalar (input's shape with 'none').
    Caches: d, v, and var's shape.
    """

    SAVED_TENSORS = ("_diff", "_var")
    REPR_OPTIONS = (("full", False), ("eps", 1e-6), ("reduction", "mean"))

    def __init__(self, *, full=False, eps=1e-6, reduction="mean"):
        super().__init__(reduction)
        if not isinstance(full, bool):
            raise ValueError(f"GaussianNLLLoss: full must be a bool, got {full!r}")
        self.full = full
        self.eps = checked_real("GaussianNLLLoss", "eps", eps)
        self._diff = None
        self._var = None
        self._var_shape = None

    def forward(self, input, target=None, var=None, **kw):
        if target is None or var is None:
            raise ValueError(f"{self!r}: forward(input, target, var) needs target and var")
        self.check_same_shape(input, target)
        var, self._var_shape = self.broadcast_var(input, var)
        self._diff = input - target.to(input.dtype)
        self._var = torch.clamp(var, min=self.eps)
        losses = 0.5 * (torch.log(self._var) + self._diff * self._diff / self._var)
        if self.full:
            losses = losses + 0.5 * math.log(2 * math.pi)
        return self.finish_forward(self.reduce(losses))

    def broadcast_var(self, input, var):
        """var as a tensor that broadcasts against input, and var's own shape (None for a number)."""
        if isinstance(var, numbers.Real) and not isinstance(var, bool):
            if var < 0:
                raise ValueError(f"{self!r}: var must be >= 0, got {var!r}")
            return torch.full_like(input, float(var)), None
        if not isinstance(var, torch.Tensor) or not var.is_floating_point():
            raise TypeError(f"{self!r}: expected var as a floating-point tensor or a number, got {describe(var)}")
        if bool((var < 0).any()):
            raise ValueError(f"{self!r}: var has negative entries (variances are >= 0)")
        shape = var.shape
        if var.shape == input.shape[:-1] and input.dim() > 0:
            var = var.unsqueeze(-1)
        elif var.shape != input.shape:
            mismatched = [v for i, v in zip(input.shape, var.shape) if i != v]
            if var.dim() != input.dim() or sum(mismatched) != 1:
                raise ValueError(
                    f"{self!r}: expected var of the input's shape {tuple(input.shape)}, of "
                    f"{tuple(input.shape[:-1])}, or with one dimension of size 1; got {tuple(var.shape)}"
                )
        return var.to(input.dtype), shape

    def backward(self, dout=1.0):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        diff, var = self._diff, self._var
        half = 0.5 * self.loss_scale(dout, diff.numel())
        dinput = half / var * (2 * diff)
        if self._var_shape is None:
            return dinput, -dinput
        # (d^2 / v) / v as torch's autograd divides: -inf where d^2 overflows, not inf / inf.
        dvar = half / var - half * (diff * diff / var / var)
        dvar = sum_to_shape(dvar.expand(diff.shape), self._var_shape)
        return dinput, -dinput, dvar


def sum_to_shape(grad, shape):
    """``grad`` summed over the dimensions that ``shape`` broadcast to grad's shape (a
    trailing dimension it lacks, or a dimension of size 1)."""
    if len(shape) < grad.dim():
        return grad.sum(dim=-1)
    dims = tuple(i for i, (size, full) in enumerate(zip(shape, grad.shape)) if size != full)
    return grad.sum(dim=dims, keepdim=True) if dims else grad
