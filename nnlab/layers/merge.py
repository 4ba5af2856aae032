"""Layers with several inputs (Keras' merge layers): ``Add``, ``Concat``, ``Multiply``.

A layer with several inputs takes them as positional arguments, ``forward(*xs)``, and
its ``backward(dout)`` returns a tuple with one gradient per input, in the order of the
inputs. That is the whole contract; to write one (say ``out = a - b``)::

    class Subtract(Layer):
        def forward(self, a, b, **kw):
            self.check_input(a, "a tensor", True)
            self.check_input(b, f"{tuple(a.shape)} (a's)", lambda b: b.shape == a.shape)
            return self.finish_forward(a - b)

        def backward(self, dout):
            self.start_backward(dout)
            return dout, -dout          # d/da, d/db

A layer that caches tensors for backward names those attributes in its class's
``SAVED_TENSORS`` (one may hold the tuple of inputs, as ``Multiply``'s ``_xs`` does), so
that an input changed in place before backward is caught.
``Merge`` below adds the checks that most of them share (at least two tensors of one
shape, dtype and device). A graph model (``nnlab.graph``) calls such a layer on several
nodes, ``Add()(h, x)``, and hands each parent node its own gradient.
"""

import torch

from .base import Layer

__all__ = [
    "Add",
    "Concat",
    "Merge",
    "Multiply",
]


class Merge(Layer):
    """Base of the layers that combine two or more tensors of one dtype and device."""

    def check_inputs(self, xs, same_shape=True):
        """TypeError naming this layer unless every input is a tensor; ValueError
        unless there are at least two, all of one dtype and device, and (with
        ``same_shape``) all of one shape."""
        if len(xs) < 2:
            raise ValueError(f"{self!r}: expected at least 2 inputs, got {len(xs)}")
        for index, x in enumerate(xs):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{self!r}: expected a torch.Tensor as input {index}, got {type(x).__name__}")
        first = xs[0]
        if any(x.dtype != first.dtype or x.device != first.device for x in xs):
            kinds = [f"{x.dtype} on {x.device}" for x in xs]
            raise ValueError(f"{self!r}: expected inputs of one dtype and device, got {kinds}")
        if same_shape and any(x.shape != first.shape for x in xs):
            raise ValueError(f"{self!r}: expected inputs of one shape, got {[tuple(x.shape) for x in xs]}")


class Add(Merge):
    """Sum of its inputs: ``out = x_1 + x_2 + ... + x_n``. Same as Keras' ``Add`` (and
    ``x_1 + x_2`` in torch, without broadcasting).

    Backward: ``dx_i = dout`` for every i (the same tensor, n times, as torch's
    autograd passes it; nnlab's containers add gradients out of place).
    Shapes: n >= 2 inputs of one shape -> that shape. Caches: the number of inputs.
    """

    def __init__(self):
        super().__init__()
        self._count = None

    def forward(self, *xs, **kw):
        self.check_inputs(xs)
        self._count = len(xs)
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return self.finish_forward(out)

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        return (dout,) * self._count


class Multiply(Merge):
    """Elementwise product of its inputs: ``out = x_1 * x_2 * ... * x_n``. Same as
    Keras' ``Multiply`` (and ``x_1 * x_2`` in torch, without broadcasting).

    Backward: ``dx_i = dout * prod_{j != i} x_j`` (no division, so exact at zeros).
    Shapes: n >= 2 inputs of one shape -> that shape. Caches: the inputs.
    """

    SAVED_TENSORS = ("_xs",)

    def __init__(self):
        super().__init__()
        self._xs = None

    def forward(self, *xs, **kw):
        self.check_inputs(xs)
        self._xs = xs
        out = xs[0]
        for x in xs[1:]:
            out = out * x
        return self.finish_forward(out)

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        grads = []
        for index in range(len(self._xs)):
            grad = dout
            for other, x in enumerate(self._xs):
                if other != index:
                    grad = grad * x
            grads.append(grad)
        return tuple(grads)


class Concat(Merge):
    """Joins its inputs along ``dim``: ``out = torch.cat(xs, dim)``. Same as ``torch.cat``
    (Keras' ``Concatenate(axis)``); ``dim=1`` is the channels of (N, C, H, W) and the
    features of (N, F).

    Backward: ``dx_i`` is the slice of dout that x_i filled:
    ``dout.split([x_1.shape[dim], ..., x_n.shape[dim]], dim)``.
    Shapes: n >= 2 inputs equal but along ``dim`` -> the sizes along ``dim`` summed.
    Caches: the inputs' sizes along ``dim``.

    Example::

        >>> import torch
        >>> from nnlab.layers import Concat
        >>> concat = Concat(dim=1)
        >>> concat(torch.zeros(2, 3), torch.ones(2, 1)).shape
        torch.Size([2, 4])
        >>> [g.shape for g in concat.backward(torch.ones(2, 4))]   # one gradient per input
        [torch.Size([2, 3]), torch.Size([2, 1])]
    """

    def __init__(self, dim=1):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise ValueError(f"Concat: dim must be an int, got {dim!r}")
        self.dim = dim
        self._sizes = None

    def __repr__(self):
        return f"Concat(dim={self.dim})"

    def forward(self, *xs, **kw):
        self.check_inputs(xs, same_shape=False)
        ndim = xs[0].dim()
        if not -ndim <= self.dim < ndim:
            raise ValueError(f"{self!r}: dim is out of range for inputs of {ndim} dimensions, {tuple(xs[0].shape)}")
        dim = self.dim % ndim
        first = _without(xs[0].shape, dim)
        if any(x.dim() != ndim or _without(x.shape, dim) != first for x in xs):
            raise ValueError(
                f"{self!r}: expected inputs of one shape but along dim {self.dim}, got {[tuple(x.shape) for x in xs]}"
            )
        self._sizes = [x.shape[dim] for x in xs]
        return self.finish_forward(torch.cat(xs, dim=dim))

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        return tuple(dout.split(self._sizes, dim=self.dim))


def _without(shape, dim):
    """``shape`` as a tuple with entry ``dim`` left out."""
    return tuple(size for index, size in enumerate(shape) if index != dim)
