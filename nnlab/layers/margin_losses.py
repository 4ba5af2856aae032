"""Margin and embedding losses: ``SoftMarginLoss``, ``MarginRankingLoss``,
``HingeEmbeddingLoss``, ``CosineEmbeddingLoss``, ``MultiMarginLoss``,
``MultiLabelMarginLoss``, ``MultiLabelSoftMarginLoss`` and ``TripletMarginLoss``, each
torch's namesake.

Targets are data (labels +-1, class indices or 0/1 labels): no gradient. The two losses
of two inputs, MarginRankingLoss and CosineEmbeddingLoss, take ``forward(x1, x2, y)`` and
return ``(dx1, dx2)`` from backward; TripletMarginLoss takes
``forward(anchor, positive, negative)`` and returns the three gradients.
"""

import math
import numbers

import torch
import torch.nn.functional as F

from .base import checked_bool, checked_real
from .distance import check_norm_defined, check_two_inputs, p_norm_backward, pairwise_distance, sum_to
from .loss_base import TORCH_LOSS_EPSILON, Loss, class_weight_for, element_weight, register_weight

__all__ = [
    "CosineEmbeddingLoss",
    "HingeEmbeddingLoss",
    "MarginRankingLoss",
    "MultiLabelMarginLoss",
    "MultiLabelSoftMarginLoss",
    "MultiMarginLoss",
    "SoftMarginLoss",
    "TripletMarginLoss",
]


class SoftMarginLoss(Loss):
    """Logistic loss of a two-class classification with labels y = +-1. Same as
    ``torch.nn.SoftMarginLoss``.

    Forward: ``l = log(1 + exp(-y x))``, computed as torch computes it (``log1p(exp(.))``,
    so ``-y x`` above about 88 in float32 overflows to inf, as in torch); reduced by
    ``reduction``.
    Backward, torch's formula: ``dx = -y z / (1 + z) * dout`` with ``z = exp(-y x)``
    (over numel(x) for the mean; NaN where z overflows, as in torch).
    Shapes: x any, y the same -> scalar (x's shape with 'none'). Caches: y and z.
    """

    SAVED_TENSORS = ("_y", "_z")

    def __init__(self, size_average=None, reduce=None, reduction="mean"):
        super().__init__(reduction, size_average, reduce)
        self._y = None
        self._z = None

    def loss(self, x, y):
        self.check_same_shape(x, y)
        self._y = y.to(x.dtype)
        self._z = torch.exp(-self._y * x)
        return self.reduce(torch.log1p(self._z))

    def backward(self, dout=1.0):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        z = self._z
        return -(self._y * z) / (1 + z) * self.loss_scale(dout, z.numel())


class MarginRankingLoss(Loss):
    """Ranking loss of two scores: y = 1 says x1 should rank above x2, y = -1 below.
    Same as ``torch.nn.MarginRankingLoss``; ``forward(x1, x2, y)``.

    Forward: ``l = max(0, -y (x1 - x2) + margin)``; reduced by ``reduction``.
    Backward returns ``(dx1, dx2)``: with m = dout where ``-y (x1 - x2) + margin > 0``, else
    0 (the kink gets the minimum-norm subgradient 0, as ``torch.clamp`` from torch 2.14 on),
    ``dx1 = -y m = -dx2`` (m over numel for the mean).
    Shapes: x1, x2, y of one shape -> scalar (that shape with 'none').
    Caches: -y and the mask where the hinge is active.
    """

    SAVED_TENSORS = ("_negative_y", "_active")
    REPR_OPTIONS = (("margin", 0.0), ("reduction", "mean"))

    def __init__(self, margin=0.0, size_average=None, reduce=None, reduction="mean"):
        super().__init__(reduction, size_average, reduce)
        self.margin = checked_real("MarginRankingLoss", "margin", margin)
        self._negative_y = None
        self._active = None

    def forward(self, x1, x2=None, y=None, **kw):
        check_pair(self, x1, x2, y)
        self._negative_y = -y.to(x1.dtype)
        hinge = self._negative_y * (x1 - x2) + self.margin
        self._active = hinge > 0
        return self.finish_forward(self.reduce(torch.clamp(hinge, min=0)))

    def backward(self, dout=1.0):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        scale = self.loss_scale(dout, self._active.numel())
        dx1 = torch.where(self._active, scale, 0) * self._negative_y
        return dx1, -dx1


def check_pair(layer, x1, x2, y, expected="a tensor", ok=True, target_shape=lambda x1: x1.shape):
    """Two inputs of one shape and dtype, x1 as ``expected`` says when ``ok`` (as in
    ``Layer.check_input``), and targets y of ``target_shape(x1)`` (ValueError naming the layer)."""
    if x2 is None or y is None:
        raise ValueError(f"{layer!r}: forward(x1, x2, y) needs both inputs and the targets y")
    layer.check_input(x1, expected, ok)
    layer.check_input(x2, f"{tuple(x1.shape)} (x1's)", lambda x2: x2.shape == x1.shape and x2.dtype == x1.dtype)
    shape = target_shape(x1)
    if not isinstance(y, torch.Tensor) or y.shape != shape:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"{layer!r}: expected targets y of shape {tuple(shape)}, got {got}")


class HingeEmbeddingLoss(Loss):
    """Hinge loss on distances x with labels y = +-1 (similar or dissimilar pairs).
    Same as ``torch.nn.HingeEmbeddingLoss``.

    Forward, as torch computes it: ``l = [y != 1] max(0, margin - x) + [y != -1] x``, so
    that y = 1 gives x, y = -1 gives the hinge, and any other label both (torch's rule);
    reduced by ``reduction``.
    Backward: ``dx = [y != -1] dout - [y != 1] [margin - x > 0] dout`` (the kink gets the
    minimum-norm subgradient 0, as ``torch.clamp`` from torch 2.14 on; dout over numel for
    the mean).
    Shapes: x any, y the same -> scalar (x's shape with 'none').
    Caches: the masks of the two terms.
    """

    SAVED_TENSORS = ("_similar", "_active")
    REPR_OPTIONS = (("margin", 1.0), ("reduction", "mean"))

    def __init__(self, margin=1.0, size_average=None, reduce=None, reduction="mean"):
        super().__init__(reduction, size_average, reduce)
        self.margin = checked_real("HingeEmbeddingLoss", "margin", margin)
        self._similar = None
        self._active = None

    def loss(self, x, y):
        self.check_same_shape(x, y)
        hinge = self.margin - x
        dissimilar = y != 1
        similar = y != -1
        losses = torch.where(dissimilar, torch.clamp(hinge, min=0), 0) + torch.where(similar, x, 0)
        self._similar = similar
        self._active = dissimilar & (hinge > 0)
        return self.reduce(losses)

    def backward(self, dout=1.0):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        scale = self.loss_scale(dout, self._similar.numel())
        return torch.where(self._similar, scale, 0) - torch.where(self._active, scale, 0)


class CosineEmbeddingLoss(Loss):
    """Embedding loss on the cosine similarity of two vectors: y = 1 pulls them
    together, y = -1 apart. Same as ``torch.nn.CosineEmbeddingLoss``; ``forward(x1, x2, y)``.

    Forward, as torch: ``cos = <x1, x2> / sqrt((|x1|^2 + e)(|x2|^2 + e))`` with e = 1e-12 as a
    float32 number (also in float64);
    ``l = 1 - cos`` where y = 1, ``max(0, cos - margin)`` where y = -1, 0 for any other
    label; reduced by ``reduction``.
    Backward returns ``(dx1, dx2)``, in autograd's order: g = d l / d cos * dout (-1 where
    y = 1, 1 where y = -1 and ``cos > margin``: 0 at the kink, as ``torch.clamp`` from torch
    2.14 on), then with p = <x1, x2>,
    D = sqrt(m1 m2), ``s1 = x1 (-g (p / D) / D) / (2 D) * m2``: ``dx1 = g / D * x2 + (s1 + s1)``,
    and the same with 1 and 2 swapped (s1 + s1 rather than 2 s1, as autograd adds the
    two terms of x1 * x1: finite where 2 x1 would overflow).
    Shapes: x1, x2 (N, D) with y (N,), or (D,) with y () -> scalar ((N,) or () with 'none').
    Caches: x1, x2, the squared norms, D, p and d l / d cos.
    """

    SAVED_TENSORS = ("_xs",)
    REPR_OPTIONS = (("margin", 0.0), ("reduction", "mean"))

    def __init__(self, margin=0.0, size_average=None, reduce=None, reduction="mean"):
        super().__init__(reduction, size_average, reduce)
        self.margin = checked_real("CosineEmbeddingLoss", "margin", margin)
        self._xs = None
        self._cache = None

    def forward(self, x1, x2=None, y=None, **kw):
        check_pair(self, x1, x2, y, "(N, D) or (D,)", lambda x1: x1.dim() in (1, 2), lambda x1: x1.shape[:-1])
        product = (x1 * x2).sum(dim=-1)
        squares = ((x1 * x1).sum(dim=-1) + TORCH_LOSS_EPSILON, (x2 * x2).sum(dim=-1) + TORCH_LOSS_EPSILON)
        denominator = torch.sqrt(squares[0] * squares[1])
        cos = product / denominator
        similar = y == 1
        dissimilar = y == -1
        losses = torch.where(similar, 1 - cos, 0) + torch.where(dissimilar, torch.clamp(cos - self.margin, min=0), 0)
        slope = torch.where(dissimilar & (cos - self.margin > 0), 1.0, 0.0) - similar.to(x1.dtype)
        self._xs = (x1, x2)
        self._cache = (squares, denominator, product, slope.to(x1.dtype))
        return self.finish_forward(self.reduce(losses))

    def backward(self, dout=1.0):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        x1, x2 = self._xs
        (square1, square2), denominator, product, slope = self._cache
        grad = torch.where(slope != 0, self.loss_scale(dout, slope.numel()), 0) * slope
        dproduct = grad / denominator
        dsquares = -grad * ((product / denominator) / denominator) / (2 * denominator)
        # x * s + x * s, autograd's two terms through x * x (2 x would overflow first).
        through_square1 = x1 * (dsquares * square2).unsqueeze(-1)
        through_square2 = x2 * (dsquares * square1).unsqueeze(-1)
        dx1 = dproduct.unsqueeze(-1) * x2 + (through_square1 + through_square1)
        dx2 = dproduct.unsqueeze(-1) * x1 + (through_square2 + through_square2)
        return dx1, dx2


class MultiMarginLoss(Loss):
    """Multi-class hinge loss of scores x against class labels y. Same as ``torch.nn.MultiMarginLoss``.

    Forward, per sample, with z_c = margin - x[y] + x[c]:
    ``l = sum_{c != y, z_c > 0} w[y] z_c^p / C`` (p = 1 or 2); a NaN z_c fails ``z_c > 0``
    and adds nothing, as in torch's kernel; reduced by ``reduction`` (the mean of an
    empty batch is NaN here, where torch 2.13 returns an uninitialised value).
    Backward, torch's kernel: ``h_c = w[y] (g or (2 g) z_c)`` with g = 1 / C (1 / (N C) for
    the mean) where ``z_c > 0`` (0 at the kink z_c = 0), ``dx[c] = h_c``, ``dx[y] = -sum_c
    h_c``, then times dout, so that an infinite dout makes 0 entries NaN, as in torch (and
    h is finite for z_c near the dtype's largest number, where 2 z_c overflows).
    Shapes: x (N, C) or (C,), y (N,) or () integer labels in [0, C); weight (C,) ->
    scalar ((N,) or () with 'none'). Caches: the gradient for dout = 1 (of the reduced loss).

    Example::

        >>> import torch
        >>> from nnlab.grad_compare import check_layer
        >>> from nnlab.layers import MultiMarginLoss
        >>> scores, labels = torch.randn(5, 4), torch.tensor([0, 3, 1, 1, 2])
        >>> torch.allclose(MultiMarginLoss()(scores, labels), torch.nn.MultiMarginLoss()(scores, labels))
        True
        >>> check_layer(MultiMarginLoss(margin=0.5), scores, labels).passed
        True
    """

    SAVED_TENSORS = ("_unit_grad",)
    REPR_OPTIONS = (("p", 1), ("margin", 1.0), ("weight", None), ("reduction", "mean"))

    def __init__(self, p=1, margin=1.0, weight=None, size_average=None, reduce=None, reduction="mean"):
        super().__init__(reduction, size_average, reduce)
        if p not in (1, 2) or isinstance(p, bool) or not isinstance(p, numbers.Integral):
            raise ValueError(f"MultiMarginLoss: p must be 1 or 2 (as in torch), got {p!r}")
        self.p = int(p)
        self.margin = checked_real("MultiMarginLoss", "margin", margin)
        register_weight(self, "weight", weight)
        self._unit_grad = None
        self._unbatched = None

    def loss(self, x, y):
        self.check_input(x, "(N, C) or (C,)", lambda x: x.dim() in (1, 2) and x.shape[-1] > 0)
        self._unbatched = x.dim() == 1
        scores = x.unsqueeze(0) if self._unbatched else x
        labels = check_labels(self, y, scores.shape[1], x.shape[:-1]).view(-1, 1)
        num_classes = scores.shape[1]
        margins = self.margin - scores.gather(1, labels) + scores
        others = torch.ones_like(scores, dtype=torch.bool).scatter_(1, labels, False)
        active = others & (margins > 0)
        # torch's g: 1 / C, and 1 / (N C) for the mean, applied before doubling z.
        samples = scores.shape[0] if self.reduction == "mean" else 1
        g = 1.0 / (num_classes * max(samples, 1))
        slope = torch.full_like(scores, g) if self.p == 1 else 2 * g * margins
        powered = margins if self.p == 1 else margins * margins
        weight = class_weight_for(self, scores, num_classes)
        if weight is not None:
            label_weights = weight.view(-1)[labels]
            powered = powered * label_weights
            slope = slope * label_weights
        losses = torch.where(active, powered, 0).sum(dim=1) / num_classes
        unit = torch.where(active, slope, 0)
        self._unit_grad = unit.scatter(1, labels, -unit.sum(dim=1, keepdim=True))
        losses = losses.squeeze(0) if self._unbatched else losses
        return self.reduce(losses)

    def backward(self, dout=1.0):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        # The mean's 1 / N is in the cached gradient already (torch's g).
        scale = dout.reshape(-1, 1) if self.reduction == "none" else dout
        grad = self._unit_grad * scale
        return grad.squeeze(0) if self._unbatched else grad


def check_labels(layer, y, num_classes, shape):
    """Integer class labels y of ``shape`` in [0, num_classes) (ValueError naming the layer)."""
    if not isinstance(y, torch.Tensor) or y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        got = f"{y.dtype} tensor" if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"{layer!r}: expected integer class labels y of shape {tuple(shape)}, got a {got}")
    if y.shape != shape:
        raise ValueError(f"{layer!r}: expected class labels y of shape {tuple(shape)}, got {tuple(y.shape)}")
    wrong = (y < 0) | (y >= num_classes)
    if wrong.any():
        raise ValueError(f"{layer!r}: class labels must be in [0, {num_classes}), got {y[wrong][0].item()}")
    return y.long()


class MultiLabelMarginLoss(Loss):
    """Multi-label hinge loss of scores x against a list of target classes per sample.
    Same as ``torch.nn.MultiLabelMarginLoss``.

    Targets y have x's shape and hold class indices; only the entries before the first -1
    count (torch's rule: the rest of the row is ignored, whatever it holds), and a class
    listed twice counts twice. Forward, per sample, with T its targets and
    z_jc = 1 - x[j] + x[c]:
    ``l = sum_{j in T} sum_{c not in T, z_jc > 0} z_jc / C``; a NaN z fails ``z > 0`` and
    adds nothing, as in torch's kernel; reduced by ``reduction`` (the mean of an empty
    batch is NaN here, where torch 2.13 returns an uninitialised value).
    Backward, torch's kernel: with g = 1 / C (1 / (N C) for the mean), each active pair
    (z_jc > 0; 0 at the kink z_jc = 0) adds g to ``dx[c]`` and -g to ``dx[j]``; then times
    dout, so that an infinite dout makes 0 entries NaN, as in torch.
    Shapes: x (N, C), (C,) or () with y of the same shape, int64 in [-1, C) -> scalar
    ((N,) or () with 'none'). Caches: the gradient for dout = 1 (of the reduced loss).
    """

    SAVED_TENSORS = ("_unit_grad",)

    def __init__(self, size_average=None, reduce=None, reduction="mean"):
        super().__init__(reduction, size_average, reduce)
        self._unit_grad = None
        self._unbatched = None
        self._shape = None

    def loss(self, x, y):
        self.check_input(x, "(N, C), (C,) or ()", lambda x: x.dim() <= 2 and (x.dim() < 2 or x.shape[1] > 0))
        self.check_same_shape(x, y)
        if y.dtype != torch.int64:
            raise ValueError(f"{self!r}: expected int64 class indices y (as torch), got {y.dtype}")
        self._unbatched = x.dim() < 2
        self._shape = x.shape
        scores = x.reshape(1, -1) if self._unbatched else x
        num_classes = scores.shape[1]
        targets = y.reshape(scores.shape)
        wrong = (targets < -1) | (targets >= num_classes)
        if wrong.any():
            raise ValueError(f"{self!r}: targets must be in [-1, {num_classes}), got {targets[wrong][0].item()}")
        listed = (targets == -1).cumsum(dim=1) == 0
        indices = torch.where(listed, targets, 0)
        counts = torch.zeros_like(targets).scatter_add(1, indices, listed.long())
        margins = 1 - scores.gather(1, indices).unsqueeze(2) + scores.unsqueeze(1)
        active = listed.unsqueeze(2) & (counts == 0).unsqueeze(1) & (margins > 0)
        losses = torch.where(active, margins, 0).sum(dim=(1, 2)) / num_classes
        # torch's g: 1 / C, and 1 / (N C) for the mean.
        samples = scores.shape[0] if self.reduction == "mean" else 1
        g = 1.0 / (num_classes * max(samples, 1))
        pushed_up = active.sum(dim=1).to(x.dtype) * g
        pushed_down = torch.zeros_like(scores).scatter_add(1, indices, active.sum(dim=2).to(x.dtype) * g)
        self._unit_grad = pushed_up - pushed_down
        return self.reduce(losses.squeeze(0) if self._unbatched else losses)

    def backward(self, dout=1.0):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        # The mean's 1 / N is in the cached gradient already (torch's g).
        scale = dout.reshape(-1, 1) if self.reduction == "none" else dout
        return (self._unit_grad * scale).reshape(self._shape)


class MultiLabelSoftMarginLoss(Loss):
    """Binary cross-entropy of logits x with 0/1 labels y in each class, averaged over
    the classes (the last dimension). Same as ``torch.nn.MultiLabelSoftMarginLoss``.

    Forward, as torch: ``l = sum_c -w[c] (y log sigmoid(x) + (1 - y) log sigmoid(-x)) / C``
    per sample; reduced by ``reduction``.
    Backward, in autograd's order: with q = -w dout / C (dout over N for the mean),
    ``dx = q y sigmoid(-x) - q (1 - y) sigmoid(x)``.
    Shapes: x (N, C), (C,) or (N, ..., C); y the same; weight broadcastable to x's
    shape -> scalar (x's shape without the last dimension with 'none').
    Caches: x, y and the weight broadcast to x's shape.
    """

    SAVED_TENSORS = ("_x", "_y")
    REPR_OPTIONS = (("weight", None), ("reduction", "mean"))

    def __init__(self, weight=None, size_average=None, reduce=None, reduction="mean"):
        super().__init__(reduction, size_average, reduce)
        register_weight(self, "weight", weight)
        self._x = None
        self._y = None
        self._weight = None

    def loss(self, x, y):
        self.check_input(x, "(N, C), (C,) or (N, ..., C)", lambda x: x.dim() >= 1 and x.shape[-1] > 0)
        self.check_same_shape(x, y)
        y = y.to(x.dtype)
        self._weight = element_weight(self, "weight", x)
        self._x = x
        self._y = y
        losses = -(y * F.logsigmoid(x) + (1 - y) * F.logsigmoid(-x))
        if self._weight is not None:
            losses = losses * self._weight
        return self.reduce(losses.sum(dim=-1) / x.shape[-1])

    def backward(self, dout=1.0):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        x, y = self._x, self._y
        num_classes = x.shape[-1]
        scale = self.loss_scale(dout, x.numel() // num_classes)
        if self.reduction == "none":
            scale = scale.unsqueeze(-1)
        grad = -(scale / num_classes)
        if self._weight is not None:
            grad = grad * self._weight
        return grad * y * torch.sigmoid(-x) - grad * (1 - y) * torch.sigmoid(x)


class TripletMarginLoss(Loss):
    """Triplet loss of embeddings: an anchor should be nearer its positive than its
    negative by ``margin``. Same as ``torch.nn.TripletMarginLoss``;
    ``forward(anchor, positive, negative)``.

    Forward, as torch computes it: ``d(x, y) = ||x - y + eps||_p`` over the last dimension
    (PairwiseDistance), ``d_neg = d(a, n)``, or ``min(d(a, n), d(p, n))`` with ``swap``;
    ``l = max(0, margin + d(a, p) - d_neg)``; reduced by ``reduction``.
    Backward returns ``(danchor, dpositive, dnegative)``: with g = dout where
    ``margin + d(a, p) - d_neg > 0``, else 0 (the kink gets the minimum-norm subgradient 0,
    as ``torch.clamp`` from torch 2.14 on; dout over numel for the mean), each distance's
    gradient (+g for d(a, p), -g for d_neg; with swap, -g goes to the smaller of the two
    negative distances, half to each on a tie, as ``torch.minimum``) goes through the
    p-norm's VJP to the difference x - y, and from it +1 to x and -1 to y; each input's
    gradient summed back to its shape.
    Shapes: anchor, positive, negative (N, D) or (D,), of one number of dimensions,
    broadcasting -> scalar ((N,) or () with 'none').
    Caches: each pair's difference and distance, and the masks of the hinge and the minimum.
    """

    SAVED_TENSORS = ("_differences", "_distances")
    REPR_OPTIONS = (("margin", 1.0), ("p", 2.0), ("eps", 1e-6), ("swap", False), ("reduction", "mean"))

    def __init__(self, margin=1.0, p=2.0, eps=1e-6, swap=False, size_average=None, reduce=None, reduction="mean"):
        super().__init__(reduction, size_average, reduce)
        self.margin = checked_real("TripletMarginLoss", "margin", margin, 0.0, low_open=True)
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or math.isnan(p):
            raise ValueError(f"TripletMarginLoss: p must be a real number, got {p!r}")
        self.p = float(p)
        self.eps = checked_real("TripletMarginLoss", "eps", eps)
        self.swap = checked_bool("TripletMarginLoss", "swap", swap)
        self._differences = None
        self._distances = None
        self._masks = None
        self._shapes = None

    def forward(self, anchor, positive=None, negative=None, **kw):
        inputs = (anchor, positive, negative)
        self._check_triplet(inputs)
        pairs = [(anchor, positive), (anchor, negative)] + ([(positive, negative)] if self.swap else [])
        computed = [pairwise_distance(x, y, self.p, self.eps) for x, y in pairs]
        self._differences = tuple(difference for difference, _ in computed)
        self._distances = tuple(distance for _, distance in computed)
        negative_distance = self._distances[1]
        if self.swap:
            negative_distance = torch.minimum(self._distances[1], self._distances[2])
        hinge = self.margin + self._distances[0] - negative_distance
        self._masks = (hinge > 0, hinge.shape)
        self._shapes = tuple(x.shape for x in inputs)
        return self.finish_forward(self.reduce(torch.clamp(hinge, min=0).squeeze(-1)))

    def _check_triplet(self, inputs):
        names = ("anchor", "positive", "negative")
        if inputs[1] is None or inputs[2] is None:
            raise ValueError(f"{self!r}: forward(anchor, positive, negative) needs all three inputs")
        for name, x in zip(names, inputs):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{self!r}: expected {name} as a torch.Tensor, got {type(x).__name__}")
        dims = [x.dim() for x in inputs]
        if len(set(dims)) != 1 or dims[0] not in (1, 2):
            raise ValueError(
                f"{self!r}: expected anchor, positive and negative of shape (N, D) or (D,), all of one "
                f"number of dimensions, got {', '.join(str(tuple(x.shape)) for x in inputs)}"
            )
        check_two_inputs(self, inputs[0], inputs[1])
        check_two_inputs(self, inputs[0], inputs[2])
        try:
            shape = torch.broadcast_shapes(*(x.shape for x in inputs))
        except RuntimeError:
            raise ValueError(
                f"{self!r}: the shapes {', '.join(str(tuple(x.shape)) for x in inputs)} do not broadcast"
            ) from None
        check_norm_defined(self, self.p, shape)

    def backward(self, dout=1.0):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        active, hinge_shape = self._masks
        scale = self.loss_scale(dout, active.numel())
        if isinstance(scale, torch.Tensor) and scale.dim() > 0:
            scale = scale.unsqueeze(-1)
        grad = torch.where(active, scale, 0).to(self._distances[0].dtype)
        grads = [sum_to(grad, self._distances[0].shape)] + self._negative_grads(-grad)
        dd = [p_norm_backward(self.p, d, n, g) for d, n, g in zip(self._differences, self._distances, grads)]
        shape_a, shape_p, shape_n = self._shapes
        danchor = dd[0] + dd[1]
        dpositive = -dd[0]
        dnegative = -dd[1]
        if self.swap:
            dpositive = dpositive + dd[2]
            dnegative = dnegative - dd[2]
        return sum_to(danchor, shape_a), sum_to(dpositive, shape_p), sum_to(dnegative, shape_n)

    def _negative_grads(self, grad):
        """The gradient of d(a, n) (and of d(p, n) with swap) from that of d_neg: all of it
        without swap; as ``torch.minimum``'s backward with it."""
        if not self.swap:
            return [sum_to(grad, self._distances[1].shape)]
        first, second = self._distances[1], self._distances[2]
        shared = torch.where(first == second, grad / 2, grad)
        return [
            sum_to(shared.masked_fill(first > second, 0), first.shape),
            sum_to(shared.masked_fill(first < second, 0), second.shape),
        ]
