"""What every loss shares: ``Loss``, the base class (targets, the ``reduction`` option,
shape checks), and the checks of the options the losses have in common (torch's legacy
``size_average``/``reduce``, class weights)."""

import warnings

import torch

from .base import Layer, describe

__all__ = ["Loss", "REDUCTIONS", "SEVERAL_INPUTS", "several_inputs"]

REDUCTIONS = ("mean", "sum", "none")

# torch's EPSILON of its loss kernels (BCELoss's gradient floor, CosineEmbeddingLoss's
# norms): 1e-12 as a float32 constant, whatever the dtype computed in.
TORCH_LOSS_EPSILON = torch.tensor(1e-12, dtype=torch.float32).item()

# The losses whose forward takes more than (input, targets), nnlab's and torch.nn's, by
# class name (as the trainers know losses), with their call: the code that calls a loss
# as ``loss(outputs, y)`` refuses them rather than hand their second input the targets.
SEVERAL_INPUTS = {
    "MarginRankingLoss": "forward(x1, x2, y)",
    "CosineEmbeddingLoss": "forward(x1, x2, y)",
    "GaussianNLLLoss": "forward(input, target, var)",
    "TripletMarginLoss": "forward(anchor, positive, negative)",
    "TripletMarginWithDistanceLoss": "forward(anchor, positive, negative)",
    "CTCLoss": "forward(log_probs, targets, input_lengths, target_lengths)",
}


def several_inputs(loss):
    """``'Name.forward(...)'`` when ``loss`` (an nnlab or torch.nn loss, or any object)
    is one of ``SEVERAL_INPUTS`` or derives from one, else None."""
    for cls in type(loss).__mro__:
        if cls.__name__ in SEVERAL_INPUTS:
            return f"{type(loss).__name__}.{SEVERAL_INPUTS[cls.__name__]}"
    return None


class Loss(Layer):
    """A layer ``forward(x, y) -> loss`` whose ``backward(dout=1.0)`` returns d loss / d x.

    ``reduction`` is torch's: ``'mean'`` (the default) and ``'sum'`` give a scalar,
    ``'none'`` the loss of every element (every sample, for the losses whose loss is a
    sum over classes), whose backward needs a ``dout`` of that shape.
    """

    # (name, default) of the constructor options that repr shows when they differ from the default.
    REPR_OPTIONS = (("reduction", "mean"),)

    def __init__(self, reduction="mean", size_average=None, reduce=None, reductions=REDUCTIONS):
        super().__init__()
        self.reduction = checked_reduction(type(self).__name__, reduction, size_average, reduce, reductions)

    def __repr__(self):
        shown = []
        for name, default in self.REPR_OPTIONS:
            value = getattr(self, name)
            if isinstance(value, torch.Tensor):
                shown.append(f"{name}=<tensor {tuple(value.shape)}>")
            elif value != default:
                shown.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})" if shown else type(self).__name__

    def forward(self, x, y=None, **kw):
        if y is None:
            raise ValueError(f"{self!r}: forward(x, y) needs targets y; got none")
        return self.finish_forward(self.loss(x, y))

    def loss(self, x, y):
        """The loss (reduced as ``reduction`` says); caches what backward needs."""
        raise NotImplementedError(f"{type(self).__name__} must define loss or forward")

    @staticmethod
    def batch_scale(dout, count):
        """``dout / count`` for the gradient of a mean over ``count`` terms; an empty
        batch (count 0, whose mean is NaN as in torch) has an empty gradient anyway."""
        return dout / max(count, 1)

    def reduce(self, losses):
        """``losses`` reduced as ``reduction`` says: their mean, their sum, or themselves."""
        if self.reduction == "mean":
            return losses.mean()
        if self.reduction == "sum":
            return losses.sum()
        return losses

    def loss_scale(self, dout, count):
        """d reduced / d losses, times dout, for ``count`` losses: ``dout / count`` for the
        mean, ``dout`` for the sum and for 'none' (where dout has the losses' shape)."""
        if self.reduction == "mean":
            return self.batch_scale(dout, count)
        return dout

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


def checked_reduction(owner, reduction, size_average=None, reduce=None, allowed=REDUCTIONS):
    """The reduction ``owner`` computes. torch's deprecated ``size_average`` and ``reduce``
    win when either is given, as in torch (with torch's warning): ``reduce=False`` is
    'none', else ``size_average=False`` is 'sum', else 'mean'. ValueError naming
    ``owner`` for a reduction not in ``allowed``."""
    if size_average is not None or reduce is not None:
        average = True if size_average is None else size_average
        reduced = True if reduce is None else reduce
        reduction = "mean" if average and reduced else "sum" if reduced else "none"
        warnings.warn(
            f"{owner}: size_average and reduce args will be deprecated, please use reduction='{reduction}' instead.",
            stacklevel=4,
        )
    if reduction not in allowed:
        raise ValueError(f"{owner}: reduction must be one of {', '.join(map(repr, allowed))}, got {reduction!r}")
    return reduction


def checked_weight(owner, name, weight):
    """``weight`` (None or a floating tensor); TypeError naming ``owner`` and ``name`` otherwise."""
    if weight is not None and not (isinstance(weight, torch.Tensor) and weight.is_floating_point()):
        raise TypeError(f"{owner}: {name} must be None or a floating-point tensor, got {describe(weight)}")
    return weight


def register_weight(layer, name, weight):
    """Makes ``weight`` the buffer ``layer.<name>`` (in the state_dict, as torch's
    ``register_buffer``), or sets the attribute to None (not in the state_dict, as in torch)."""
    weight = checked_weight(type(layer).__name__, name, weight)
    if weight is None:
        setattr(layer, name, None)
    else:
        layer.add_buffer(name, weight)


def class_weight_for(layer, x, num_classes, class_dim=1):
    """``layer.weight`` shaped to broadcast against x along ``class_dim``, or None;
    ValueError naming the layer unless it has ``num_classes`` entries and x's dtype
    (torch refuses another dtype for class weights too)."""
    weight = layer.weight
    if weight is None:
        return None
    if weight.dim() != 1 or weight.shape[0] != num_classes:
        raise ValueError(
            f"{layer!r}: expected weight of shape ({num_classes},), one per class, got {tuple(weight.shape)}"
        )
    if weight.dtype != x.dtype or weight.device != x.device:
        raise ValueError(
            f"{layer!r}: expected weight of the input's dtype and device ({x.dtype} on {x.device}), got "
            f"{weight.dtype} on {weight.device}; use loss.to(...)"
        )
    shape = [1] * x.dim()
    shape[class_dim] = num_classes
    return weight.view(shape)


def element_weight(layer, name, x):
    """The weight buffer ``layer.<name>`` broadcast to x's shape in x's dtype (torch
    converts it too), or None; ValueError naming the layer unless it broadcasts to
    x's shape without growing it (torch refuses that too)."""
    weight = getattr(layer, name)
    if weight is None:
        return None
    try:
        grown = torch.broadcast_shapes(weight.shape, x.shape) != x.shape
    except RuntimeError:
        grown = True
    if grown:
        raise ValueError(
            f"{layer!r}: expected {name} broadcastable to the input's shape {tuple(x.shape)}, got {tuple(weight.shape)}"
        )
    return weight.to(device=x.device, dtype=x.dtype).expand(x.shape)
