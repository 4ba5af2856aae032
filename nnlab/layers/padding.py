"""Padding layers, as ``torch.nn`` has them: constant (and zero), reflection, replication
and circular padding of the last 1, 2 or 3 dimensions.

A padding is written as torch writes it: ``(left, right)`` for the last dimension, then
``(top, bottom)`` for the one before, then ``(front, back)``; an int pads every side by
that much. A negative entry crops that side instead.

Reflection, replication and circular padding are each an index map: output position o
along a padded dimension reads input position ``source(o - before)``. Forward gathers
along each padded dimension in turn (``index_select``); backward is the transpose, the
upstream gradient scattered back and summed where several outputs read one input
(``index_add_``), one padded dimension at a time in reverse order.
"""

import numbers

import torch

from .base import Layer, checked_real

__all__ = [
    "CircularPad1d", "CircularPad2d", "CircularPad3d", "ConstantPad1d", "ConstantPad2d", "ConstantPad3d",
    "ReflectionPad1d", "ReflectionPad2d", "ReflectionPad3d", "ReplicationPad1d", "ReplicationPad2d",
    "ReplicationPad3d", "ZeroPad1d", "ZeroPad2d", "ZeroPad3d",
]


def padding_tuple(owner, padding, dims):
    """``padding`` as a tuple of 2 * dims ints (an int repeated); ValueError naming owner."""
    if isinstance(padding, numbers.Integral) and not isinstance(padding, bool):
        return (int(padding),) * (2 * dims)
    if (
        isinstance(padding, (tuple, list))
        and len(padding) == 2 * dims
        and all(isinstance(p, numbers.Integral) and not isinstance(p, bool) for p in padding)
    ):
        return tuple(int(p) for p in padding)
    raise ValueError(f"{owner}: padding must be an int or a tuple of {2 * dims} ints, got {padding!r}")


def source_index(size, before, after, mode, device):
    """For each output position along a dimension of ``size`` entries padded by ``before``
    and ``after``, the input position it reads: mirrored at the edges without repeating
    them ('reflect'), the edge entry ('replicate'), or wrapped around ('circular')."""
    if mode == "circular":
        # As torch: the negative paddings crop first, the positive ones wrap what is left.
        start = max(-before, 0)
        kept = size - start - max(-after, 0)
        position = torch.arange(-max(before, 0), kept + max(after, 0), device=device)
        return start + position.remainder(kept)
    position = torch.arange(-before, size + after, device=device)
    if mode == "replicate":
        return position.clamp(0, size - 1)
    last = size - 1
    return last - (last - position.abs()).abs()


def gather(x, sources):
    """``x`` gathered along each ``(dim, index)`` of ``sources`` in turn (``index`` from
    ``source_index``): x padded by the index maps."""
    for dim, index in sources:
        x = x.index_select(dim, index)
    return x


def gather_backward(grad, sources, shape):
    """The gradient w.r.t. ``gather``'s input of ``shape`` from ``grad``, that w.r.t. its
    output: the transpose, each output's gradient added into the entry it read
    (``index_add_``), one dimension at a time in reverse order."""
    for dim, index in reversed(sources):
        sizes = list(grad.shape)
        sizes[dim] = shape[dim]
        grad = grad.new_zeros(sizes).index_add_(dim, index, grad)
    return grad


class Pad(Layer):
    """Base of the padding layers: ``DIMS`` trailing dimensions padded in ``MODE``.

    Forward: constant mode writes x into a tensor full of ``value``; the other modes
    gather x along each padded dimension through ``source_index``.
    Backward: constant mode, ``dx`` is the part of dout that x filled; the other modes,
    ``dx[i] = sum of dout[o] over the outputs o that read input i``.
    Caches: the input shape (and, for the gathering modes, the index map of each dimension).
    """

    DIMS = 1
    MODE = "constant"
    LIMIT = "a negative padding may crop at most the entries there are"

    def __init__(self, padding, value=0.0):
        super().__init__()
        name = type(self).__name__
        self.padding = padding_tuple(name, padding, self.DIMS)
        self.value = checked_real(name, "value", value)
        self._shape = None
        self._indices = None

    def __repr__(self):
        value = f", value={self.value}" if self.MODE == "constant" else ""
        return f"{type(self).__name__}(padding={self.padding}{value})"

    def _sides(self, ndim):
        """(dim, before, after) for each padded dimension, the last one first."""
        return [(ndim - 1 - k, self.padding[2 * k], self.padding[2 * k + 1]) for k in range(self.DIMS)]

    def forward(self, x, **kw):
        self.check_shape(x)
        self._shape = x.shape
        if self.MODE == "constant":
            return self.finish_forward(self._constant_pad(x))
        self._indices = [
            (dim, source_index(x.shape[dim], before, after, self.MODE, x.device))
            for dim, before, after in self._sides(x.dim())
        ]
        return self.finish_forward(gather(x, self._indices))

    def check_shape(self, x):
        """TypeError unless x is a tensor; ValueError unless it has the dimensions this
        layer pads and each padded dimension's size admits its padding (``fits``)."""
        self.check_input(x, f"at least {self.DIMS} dimensions", lambda x: x.dim() >= self.DIMS)
        self.check_sizes(x)

    def check_sizes(self, x):
        for dim, before, after in self._sides(x.dim()):
            size = x.shape[dim]
            if not self.fits(size, before, after):
                raise ValueError(
                    f"{self!r}: padding {self.padding} does not fit dim {dim} of size {size} of an input of shape "
                    f"{tuple(x.shape)} ({self.LIMIT})"
                )

    def fits(self, size, before, after):
        """Whether a dimension of ``size`` entries can take the padding (before, after)."""
        cropped = size + min(before, 0)
        return cropped >= 0 and cropped + min(after, 0) >= 0

    def _windows(self, shape):
        """For each padded dimension, (dim, start in x, start in out, length) of the part
        of x that lands in the output (all of it, unless a negative padding crops)."""
        windows = []
        for dim, before, after in self._sides(len(shape)):
            size = shape[dim]
            length = max(size - max(-before, 0) - max(-after, 0), 0)
            # A window of length 0 may start anywhere; its starts are kept inside both tensors.
            x_start = min(max(-before, 0), size)
            out_start = min(max(before, 0), size + before + after)
            windows.append((dim, x_start, out_start, length))
        return windows

    def _out_shape(self, shape):
        out = list(shape)
        for dim, before, after in self._sides(len(shape)):
            out[dim] += before + after
        return out

    def _constant_pad(self, x):
        out = x.new_full(self._out_shape(x.shape), self.value)
        out_view, x_view = out, x
        for dim, x_start, out_start, length in self._windows(x.shape):
            out_view = out_view.narrow(dim, out_start, length)
            x_view = x_view.narrow(dim, x_start, length)
        out_view.copy_(x_view)
        return out

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        if self.MODE == "constant":
            dx = dout.new_zeros(self._shape)
            dx_view, dout_view = dx, dout
            for dim, x_start, out_start, length in self._windows(self._shape):
                dx_view = dx_view.narrow(dim, x_start, length)
                dout_view = dout_view.narrow(dim, out_start, length)
            dx_view.copy_(dout_view)
            return dx
        return gather_backward(dout, self._indices, self._shape)


class ConstantPad(Pad):
    """Base of the constant padding layers: ``DIMS`` trailing dimensions of any input of at
    least that many dimensions padded with ``value``."""

    def __init__(self, padding, value):
        super().__init__(padding, value)


class ConstantPad1d(ConstantPad):
    """Constant padding of the last dimension. Same as ``torch.nn.ConstantPad1d``.

    Shapes: (*, W) -> (*, W + left + right).
    Forward, backward and cache: see ``Pad``.
    """

    DIMS = 1


class ConstantPad2d(ConstantPad):
    """Constant padding of the last two dimensions. Same as ``torch.nn.ConstantPad2d``.

    Shapes: (*, H, W) -> (*, H + top + bottom, W + left + right).
    Forward, backward and cache: see ``Pad``.
    """

    DIMS = 2


class ConstantPad3d(ConstantPad):
    """Constant padding of the last three dimensions. Same as ``torch.nn.ConstantPad3d``.

    Shapes: (*, D, H, W) -> (*, D + front + back, H + top + bottom, W + left + right).
    Forward, backward and cache: see ``Pad``.
    """

    DIMS = 3


class ZeroPad(Pad):
    """Base of the zero padding layers: constant padding with 0."""

    def __init__(self, padding):
        super().__init__(padding, 0.0)

    def __repr__(self):
        return f"{type(self).__name__}(padding={self.padding})"


class ZeroPad1d(ZeroPad):
    """Zero padding of the last dimension. Same as ``torch.nn.ZeroPad1d``.

    Shapes: (*, W) -> (*, W + left + right).
    Forward, backward and cache: see ``Pad``.
    """

    DIMS = 1


class ZeroPad2d(ZeroPad):
    """Zero padding of the last two dimensions. Same as ``torch.nn.ZeroPad2d``.

    Shapes: (*, H, W) -> (*, H + top + bottom, W + left + right).
    Forward, backward and cache: see ``Pad``.

    Example::

        >>> import torch
        >>> from nnlab.layers import ZeroPad2d
        >>> pad = ZeroPad2d((1, 0, 0, 1))            # (left, right, top, bottom), as torch
        >>> pad(torch.ones(1, 1, 2, 2))
        tensor([[[[0., 1., 1.],
                  [0., 1., 1.],
                  [0., 0., 0.]]]])
        >>> pad.backward(torch.arange(9.0).reshape(1, 1, 3, 3))   # the gradient of the kept entries
        tensor([[[[1., 2.],
                  [4., 5.]]]])
    """

    DIMS = 2


class ZeroPad3d(ZeroPad):
    """Zero padding of the last three dimensions. Same as ``torch.nn.ZeroPad3d``.

    Shapes: (*, D, H, W) -> (*, D + front + back, H + top + bottom, W + left + right).
    Forward, backward and cache: see ``Pad``.
    """

    DIMS = 3


class GatherPad(Pad):
    """Base of the reflection, replication and circular padding layers: (N, C, *spatial)
    or unbatched (C, *spatial) inputs, as torch takes them, with ``DIMS`` spatial dimensions;
    ``fits`` says which paddings a dimension's size allows (``LIMIT`` in words)."""

    # Whether every dimension but the batch must hold entries (torch's rule for reflection
    # and replication, not for circular padding).
    NONEMPTY = True

    def __init__(self, padding):
        super().__init__(padding)

    def check_shape(self, x):
        dims = self.DIMS
        self.check_input(x, f"{dims + 1} or {dims + 2} dimensions", lambda x: x.dim() in (dims + 1, dims + 2))
        batched = x.dim() == dims + 2
        if self.NONEMPTY and 0 in x.shape[int(batched):]:
            raise ValueError(
                f"{self!r}: expected (N, C, ...) or (C, ...) with every dimension but the batch non-empty, got "
                f"{tuple(x.shape)}"
            )
        self.check_sizes(x)


class ReflectionPad(GatherPad):
    """Base of the reflection padding layers: x mirrored at its edges, the edge entry not
    repeated."""

    MODE = "reflect"
    LIMIT = "each padding must be smaller than the size, the padded size at least 1"

    def fits(self, size, before, after):
        return max(before, after) < size and size + before + after >= 1


class ReflectionPad1d(ReflectionPad):
    """Reflection padding of the last dimension. Same as ``torch.nn.ReflectionPad1d``.

    Shapes: (N, C, W) or (C, W) -> the same with W + left + right.
    Forward, backward and cache: see ``Pad``.
    """

    DIMS = 1


class ReflectionPad2d(ReflectionPad):
    """Reflection padding of the last two dimensions. Same as ``torch.nn.ReflectionPad2d``.

    Shapes: (N, C, H, W) or (C, H, W) -> the same with H + top + bottom, W + left + right.
    Forward, backward and cache: see ``Pad``.
    """

    DIMS = 2


class ReflectionPad3d(ReflectionPad):
    """Reflection padding of the last three dimensions. Same as ``torch.nn.ReflectionPad3d``.

    Shapes: (N, C, D, H, W) or (C, D, H, W) -> the same with D + front + back, H + top + bottom, W + left + right.
    Forward, backward and cache: see ``Pad``.
    """

    DIMS = 3


class ReplicationPad(GatherPad):
    """Base of the replication padding layers: the edge entries repeated."""

    MODE = "replicate"
    LIMIT = "the padded size must be at least 1"

    def fits(self, size, before, after):
        return size + before + after >= 1


class ReplicationPad1d(ReplicationPad):
    """Replication padding of the last dimension. Same as ``torch.nn.ReplicationPad1d``.

    Shapes: (N, C, W) or (C, W) -> the same with W + left + right.
    Forward, backward and cache: see ``Pad``.
    """

    DIMS = 1


class ReplicationPad2d(ReplicationPad):
    """Replication padding of the last two dimensions. Same as ``torch.nn.ReplicationPad2d``.

    Shapes: (N, C, H, W) or (C, H, W) -> the same with H + top + bottom, W + left + right.
    Forward, backward and cache: see ``Pad``.
    """

    DIMS = 2


class ReplicationPad3d(ReplicationPad):
    """Replication padding of the last three dimensions. Same as ``torch.nn.ReplicationPad3d``.

    Shapes: (N, C, D, H, W) or (C, D, H, W) -> the same with D + front + back, H + top + bottom, W + left + right.
    Forward, backward and cache: see ``Pad``.
    """

    DIMS = 3


class CircularPad(GatherPad):
    """Base of the circular padding layers: x wrapped around (the left padding repeats the
    last entries)."""

    MODE = "circular"
    LIMIT = "negative paddings crop at most the size; each positive one wraps at most once around what is left"
    NONEMPTY = False

    def fits(self, size, before, after):
        kept = size - max(-before, 0) - max(-after, 0)
        return kept >= 0 and max(before, after) <= kept


class CircularPad1d(CircularPad):
    """Circular padding of the last dimension. Same as ``torch.nn.CircularPad1d``.

    Shapes: (N, C, W) or (C, W) -> the same with W + left + right.
    Forward, backward and cache: see ``Pad``.
    """

    DIMS = 1


class CircularPad2d(CircularPad):
    """Circular padding of the last two dimensions. Same as ``torch.nn.CircularPad2d``.

    Shapes: (N, C, H, W) or (C, H, W) -> the same with H + top + bottom, W + left + right.
    Forward, backward and cache: see ``Pad``.
    """

    DIMS = 2


class CircularPad3d(CircularPad):
    """Circular padding of the last three dimensions. Same as ``torch.nn.CircularPad3d``.

    Shapes: (N, C, D, H, W) or (C, D, H, W) -> the same with D + front + back, H + top + bottom, W + left + right.
    Forward, backward and cache: see ``Pad``.
    """

    DIMS = 3
