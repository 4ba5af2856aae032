"""Max unpooling, the partial inverse of max pooling: each value goes back to the place
its window's maximum came from (the indices of ``MaxPool2d(return_indices=True)``)."""

import torch

from ._windows import as_plane_pair, as_planes, from_planes, ntuple, to_planes
from .base import Layer, describe

__all__ = ["MaxUnpool1d", "MaxUnpool2d"]


class _MaxUnpoolNd(Layer):
    """The partial inverse of max pooling over 1 or 2 spatial axes; see MaxUnpool2d."""

    SAVED_TENSORS = ("_indices",)
    SPATIAL = 2

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = ntuple(kernel_size, self.SPATIAL, "kernel_size", name, 1)
        self.stride = self.kernel_size if stride is None else ntuple(stride, self.SPATIAL, "stride", name, 1)
        self.padding = ntuple(padding, self.SPATIAL, "padding", name, 0)
        self._indices = None
        self._input_shape = None

    def __repr__(self):
        return f"{type(self).__name__}(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding})"

    def _output_hw(self, x, output_size):
        """The output's spatial sizes as a pair: (S - 1)*s + k - 2p, or ``output_size`` (the
        spatial sizes, or with batch and channels in front) within s of it, as torch."""
        spatial = x.shape[x.dim() - self.SPATIAL :]
        default = [(size - 1) * s + k - 2 * p for size, s, k, p in zip(spatial, self.stride, self.kernel_size, self.padding)]
        sizes = default
        if output_size is not None:
            sizes = list(output_size)
            if len(sizes) == self.SPATIAL + 2:
                sizes = sizes[2:]
            if len(sizes) != self.SPATIAL:
                raise ValueError(f"{self!r}: output_size must give {self.SPATIAL} or {self.SPATIAL + 2} sizes, got {output_size!r}")
            for size, usual, stride in zip(sizes, default, self.stride):
                if not usual - stride < size < usual + stride:
                    raise ValueError(
                        f"{self!r}: output_size {tuple(sizes)} must be within the stride of {tuple(default)}"
                    )
        if min(sizes) < 1:
            raise ValueError(f"{self!r}: the output size {tuple(sizes)} of an input of size {tuple(spatial)} is empty")
        return as_plane_pair(sizes, self.SPATIAL, 1)

    def forward(self, x, indices, output_size=None, **kw):
        x4, form = as_planes(self, x, self.SPATIAL)
        if not isinstance(indices, torch.Tensor) or indices.dtype != torch.int64 or indices.shape != x.shape:
            raise ValueError(
                f"{self!r}: expected int64 indices of the input's shape {tuple(x.shape)}, got {describe(indices)}"
                + (f" of dtype {indices.dtype}" if isinstance(indices, torch.Tensor) else "")
            )
        batch, channels = x4.shape[:2]
        out_h, out_w = self._output_hw(x, output_size)
        inputs = x4.shape[2] * x4.shape[3]
        flat = to_planes(indices, form).reshape(batch, channels, inputs)
        if flat.numel() and (flat.min() < 0 or flat.max() >= out_h * out_w):
            raise ValueError(
                f"{self!r}: indices must lie in [0, {out_h * out_w}) (positions in the output plane "
                f"{(out_h, out_w)}), got values from {int(flat.min())} to {int(flat.max())}"
            )
        out = x4.new_zeros(batch, channels, out_h * out_w).scatter(2, flat, x4.reshape(batch, channels, inputs))
        self._indices = flat
        self._input_shape = (x4.shape, form)
        return self.finish_forward(from_planes(out.reshape(batch, channels, out_h, out_w), form))

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        shape, form = self._input_shape
        dout = to_planes(dout, form)
        dx = dout.reshape(shape[0], shape[1], dout.shape[2] * dout.shape[3]).gather(2, self._indices)
        return from_planes(dx.reshape(shape), form)


class MaxUnpool2d(_MaxUnpoolNd):
    """The partial inverse of MaxPool2d: each input value written at its index, zeros
    elsewhere. Same as ``torch.nn.MaxUnpool2d``.

    ``forward(x, indices, output_size=None)``: ``out[n, c].flat[indices[n, c, i, j]] =
    x[n, c, i, j]``, the output plane of size ``(H - 1)*s + k - 2p`` (likewise W), or
    ``output_size`` within the stride of it, as torch. indices are MaxPool2d's
    (return_indices=True): int64, the input's shape, flat positions in the output plane;
    ValueError for one outside it. Where two inputs share an index one of them is kept (as
    torch, which does not say which; max pooling's shared indices carry equal values).
    Backward: ``dx[n, c, i, j] = dout[n, c].flat[indices[n, c, i, j]]`` (a gather); the
    indices get no gradient, so backward returns dx alone.
    Shapes: x and indices (N, C, H, W) or (C, H, W) -> (N, C, H_out, W_out) or unbatched.
    Caches: the indices (flattened per plane) and the input shape.

    Example::

        >>> import torch
        >>> from nnlab.layers import MaxPool2d, MaxUnpool2d
        >>> pool, unpool = MaxPool2d(2, return_indices=True), MaxUnpool2d(2)
        >>> out, indices = pool(torch.arange(16.0).reshape(1, 1, 4, 4))
        >>> unpool(out, indices)                     # each maximum back at its place, zeros elsewhere
        tensor([[[[ 0.,  0.,  0.,  0.],
                  [ 0.,  5.,  0.,  7.],
                  [ 0.,  0.,  0.,  0.],
                  [ 0., 13.,  0., 15.]]]])
    """

    SPATIAL = 2


class MaxUnpool1d(_MaxUnpoolNd):
    """The partial inverse of MaxPool1d: ``out[n, c, indices[n, c, i]] = x[n, c, i]``,
    zeros elsewhere; backward ``dx[n, c, i] = dout[n, c, indices[n, c, i]]``. Same as
    ``torch.nn.MaxUnpool1d`` (see MaxUnpool2d for output_size and the index checks).
    Shapes: x and indices (N, C, L) or (C, L) -> (N, C, (L - 1)*s + k - 2p) or unbatched.
    Caches: the indices and the input shape.
    """

    SPATIAL = 1
