"""Similarities and distances of two inputs: ``CosineSimilarity`` and ``PairwiseDistance``,
each torch's namesake. Both inputs broadcast against each other as in torch; ``backward``
returns ``(dx1, dx2)``, each summed back to its input's shape."""

import math
import numbers

import torch

from .base import Layer, checked_bool, checked_real

__all__ = [
    "CosineSimilarity",
    "PairwiseDistance",
    "check_norm_defined",
    "check_two_inputs",
    "pairwise_distance",
    "p_norm_backward",
    "sum_to",
]


def check_two_inputs(layer, x1, x2):
    """Two floating tensors of one dtype whose shapes broadcast; ValueError (TypeError for
    a non-tensor) naming the layer otherwise. Returns the broadcast shape."""
    for name, x in (("x1", x1), ("x2", x2)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{layer!r}: expected {name} as a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"{layer!r}: expected floating-point inputs, got {name} of dtype {x.dtype}")
    if x1.dtype != x2.dtype:
        raise ValueError(f"{layer!r}: expected x1 and x2 of one dtype, got {x1.dtype} and {x2.dtype}")
    try:
        return torch.broadcast_shapes(x1.shape, x2.shape)
    except RuntimeError:
        raise ValueError(
            f"{layer!r}: the shapes of x1 {tuple(x1.shape)} and x2 {tuple(x2.shape)} do not broadcast"
        ) from None


def check_norm_defined(layer, p, shape):
    """ValueError naming the layer for a p-norm that has no value on an empty last
    dimension of the broadcast ``shape`` (p < 0 or infinite: torch refuses it too)."""
    if (p < 0 or math.isinf(p)) and len(shape) > 0 and shape[-1] == 0:
        raise ValueError(f"{layer!r}: a {p} norm of an empty last dimension is undefined, as in torch")


def sum_to(grad, shape):
    """``grad`` summed over the dimensions that broadcasting added or expanded to reach
    its shape from ``shape`` (the backward of a broadcast)."""
    return grad.sum_to_size(shape) if grad.shape != shape else grad


def norm_backward(x, norm, grad):
    """The VJP of ``norm = ||x||_2`` over a kept dimension, as torch writes it:
    ``grad * (x / norm)`` with ``x / norm`` taken as 0 where the norm is 0 (so a NaN or
    infinite grad still spreads there)."""
    return grad * torch.where(norm == 0, 0.0, x / norm)


def pairwise_distance(x1, x2, p, eps):
    """torch's ``pairwise_distance`` without dropping the last dimension: the difference
    ``d = x1 - x2 + eps`` (broadcast) and its p-norm over the last dimension, kept."""
    difference = x1 - x2 + eps
    return difference, torch.linalg.vector_norm(difference, p, dim=-1, keepdim=True)


def p_norm_backward(p, d, n, g):
    """torch's VJP of the p-norm ``n = ||d||_p`` over the last dimension (kept), for the
    upstream gradient g of n (see PairwiseDistance for the formula of each p)."""
    if p == 0:
        return torch.zeros_like(d)
    if p == 1:
        return torch.sign(d) * g
    if p == 2:
        return norm_backward(d, n, g)
    if math.isinf(p):
        magnitude = d.abs()
        mask = (magnitude == n) | magnitude.isnan()
        return torch.sign(d) * ((g / mask.sum(dim=-1, keepdim=True)) * mask)
    if p < 1:
        scaled = torch.sign(d) * torch.where(d == 0, 0.0, d.abs() ** (p - 1))
        return scaled * g * n ** (1 - p)
    scaled = torch.sign(d) * d.abs() ** (p - 1)
    return scaled * torch.where(n == 0, 0.0, g / n ** (p - 1))


class CosineSimilarity(Layer):
    """Cosine similarity of two inputs along ``dim``, computed as torch 2.13 computes it:
    ``out = sum_dim (x1 / c1) (x2 / c2)`` with ``c_i = max(||x_i||, eps)``, each norm
    clamped separately. Same as ``torch.nn.CosineSimilarity``.

    Backward, as autograd differentiates torch's graph (the clamp is outside it, so the
    norm's own derivative is used even where the clamp holds), with u_i = x_i / c_i and
    g = dout broadcast along dim: ``du1 = g u2``,
    ``dx1 = du1 / c1 + x1 * [||x1|| > 0] (-sum_dim(du1 u1 / c1)) / ||x1||``, the same with
    1 and 2 swapped; each summed back to its input's shape.
    Both inputs have one floating dtype (torch would promote two; here it is an error).
    Shapes: x1, x2 broadcasting to (*, D, *) (D at ``dim`` of the broadcast shape) ->
    (*, *). Caches: both inputs (broadcast views), their norms, the clamped norms and the
    inputs' shapes.
    """

    SAVED_TENSORS = ("_xs",)

    def __init__(self, dim=1, eps=1e-8):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
            raise TypeError(f"CosineSimilarity: dim must be an int, got {dim!r}")
        self.dim = int(dim)
        self.eps = checked_real("CosineSimilarity", "eps", eps)
        self._xs = None
        self._norms = None
        self._shapes_in = None

    def __repr__(self):
        return f"CosineSimilarity(dim={self.dim}, eps={self.eps})"

    def forward(self, x1, x2=None, **kw):
        if x2 is None:
            raise ValueError(f"{self!r}: forward(x1, x2) needs both inputs")
        shape = check_two_inputs(self, x1, x2)
        rank = max(len(shape), 1)
        if not -rank <= self.dim < rank:
            raise ValueError(f"{self!r}: dim {self.dim} is out of range for inputs broadcast to {tuple(shape)}")
        self._shapes_in = (x1.shape, x2.shape)
        x1, x2 = torch.broadcast_tensors(x1, x2)
        norms = [torch.linalg.vector_norm(x, 2, dim=self.dim, keepdim=True) for x in (x1, x2)]
        clamped = [torch.clamp(norm, min=self.eps) for norm in norms]
        self._xs = (x1, x2)
        self._norms = (norms, clamped)
        out = ((x1 / clamped[0]) * (x2 / clamped[1])).sum(dim=self.dim)
        return self.finish_forward(out)

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        x1, x2 = self._xs
        norms, clamped = self._norms
        g = dout.unsqueeze(self.dim) if dout.dim() < x1.dim() else dout
        units = (x1 / clamped[0], x2 / clamped[1])
        grads = []
        for x, unit, other, norm, clamp in zip((x1, x2), units, units[::-1], norms, clamped):
            dunit = g * other
            dclamp = (-dunit * (unit / clamp)).sum(dim=self.dim, keepdim=True)
            grads.append(dunit / clamp + norm_backward(x, norm, dclamp))
        return tuple(sum_to(grad, shape) for grad, shape in zip(grads, self._shapes_in))


class PairwiseDistance(Layer):
    """p-norm distance of two inputs along their last dimension, as torch computes it:
    ``out = ||x1 - x2 + eps||_p`` (eps added to the difference, not to the norm), over
    the last dimension of the broadcast shape. Same as ``torch.nn.PairwiseDistance``.

    Backward, torch's VJP of the p-norm, with d = x1 - x2 + eps, n = out (kept) and
    g = dout: p = 2: ``g (d / n)`` (d / n taken as 0 where n = 0); p = 1: ``g sign(d)``;
    p = 0: 0 (even where g is NaN: torch's graph has no edge there);
    p = +-inf: ``g sign(d) [|d| = n or NaN] / count``; 1 < p: ``g sign(d) |d|^(p-1) / n^(p-1)``
    (0 where n = 0); p < 1: ``g sign(d) |d|^(p-1) n^(1-p)`` (0 where d = 0);
    ``dx1 = dd``, ``dx2 = -dd``, each summed back to its input's shape.
    Both inputs have one floating dtype (torch would promote two; here it is an error).
    Shapes: x1, x2 broadcasting to (*, D) -> (*) ((*, 1) with ``keepdim``).
    Caches: the difference d, the distance and the inputs' shapes.
    """

    SAVED_TENSORS = ("_difference", "_distance")

    def __init__(self, p=2.0, eps=1e-6, keepdim=False):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or math.isnan(p):
            raise ValueError(f"PairwiseDistance: p must be a real number, got {p!r}")
        self.norm = float(p)
        self.eps = checked_real("PairwiseDistance", "eps", eps)
        self.keepdim = checked_bool("PairwiseDistance", "keepdim", keepdim)
        self._difference = None
        self._distance = None
        self._shapes_in = None

    def __repr__(self):
        return f"PairwiseDistance(p={self.norm}, eps={self.eps}, keepdim={self.keepdim})"

    def forward(self, x1, x2=None, **kw):
        if x2 is None:
            raise ValueError(f"{self!r}: forward(x1, x2) needs both inputs")
        check_norm_defined(self, self.norm, check_two_inputs(self, x1, x2))
        self._shapes_in = (x1.shape, x2.shape)
        self._difference, self._distance = pairwise_distance(x1, x2, self.norm, self.eps)
        out = self._distance if self.keepdim else self._distance.squeeze(-1)
        return self.finish_forward(out)

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        g = dout if self.keepdim else dout.unsqueeze(-1)
        dd = p_norm_backward(self.norm, self._difference, self._distance, g)
        shape1, shape2 = self._shapes_in
        return sum_to(dd, shape1), sum_to(-dd, shape2)
