"""2-D convolution by unfold + matmul."""

import math

import torch
import torch.nn.functional as F

from .base import Layer
from .windows import check_2d_input, check_windows_fit, pair


class Conv2d(Layer):
    """2-D cross-correlation, as a matrix product over unfolded input patches.
    Same as ``torch.nn.Conv2d`` (groups=1, zero padding).

    Forward: ``cols = unfold(x)`` holds every receptive field as a column,
    (N, C*kH*kW, L) with L = H_out * W_out; ``out = W_2d @ cols + b`` with
    W_2d = weight viewed as (C_out, C*kH*kW), one batched matmul for the whole batch.

    Backward: ``dW += sum_n dout_n @ cols_n.T``; ``db += dout.sum over (n, h, w)``;
    ``dx = fold(W_2d.T @ dout)`` (fold adds each column back where unfold took it, so
    overlapping windows sum their contributions).

    Shapes: x (N, C_in, H, W) or unbatched (C_in, H, W) -> (N, C_out, H_out, W_out)
    (or (C_out, H_out, W_out)), with ``H_out = floor((H + 2p - d(k - 1) - 1) / s) + 1``,
    likewise W_out.
    Parameters: ``weight`` (C_out, C_in, kH, kW), ``bias`` (C_out) or None.
    Init: both from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = C_in * kH * kW, as PyTorch.
    Caches: the unfolded input ``cols`` (needed for dW) and the input's (H, W) and
    batchedness (for fold); not the input itself.
    """

    SAVED_TENSORS = ("_cols", "weight")

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True):
        super().__init__()
        if not isinstance(in_channels, int) or not isinstance(out_channels, int) or in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"Conv2d: in_channels and out_channels must be ints >= 1, got {in_channels!r}, {out_channels!r}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = pair(kernel_size, "kernel_size", "Conv2d", 1)
        self.stride = pair(stride, "stride", "Conv2d", 1)
        self.padding = pair(padding, "padding", "Conv2d", 0)
        self.dilation = pair(dilation, "dilation", "Conv2d", 1)
        fan_in = in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        self.add_param("weight", torch.empty(out_channels, in_channels, *self.kernel_size).uniform_(-bound, bound))
        if bias:
            self.add_param("bias", torch.empty(out_channels).uniform_(-bound, bound))
        else:
            self.bias = None
        self._cols = None
        self._input_hw = None
        self._unbatched = None

    def __repr__(self):
        text = (
            f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
        )
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.bias is None:
            text += ", bias=False"
        return text + ")"

    def output_shape(self, shape):
        """(C_out, H_out, W_out) for an input of shape (C_in, H, W); ValueError if impossible."""
        channels, height, width = shape
        if channels != self.in_channels:
            raise ValueError(f"{self!r}: expected {self.in_channels} input channels, got {channels}")
        windows = (self.kernel_size, self.stride, self.padding, self.dilation)
        out_h, out_w = check_windows_fit(self, height, width, *windows)
        return (self.out_channels, out_h, out_w)

    def forward(self, x, **kw):
        x4, unbatched = check_2d_input(self, x, self.in_channels)
        self.check_dtype(x4)
        batch, _, height, width = x4.shape
        windows = (self.kernel_size, self.stride, self.padding, self.dilation)
        out_h, out_w = check_windows_fit(self, height, width, *windows)

        # unfold works plane by plane, so unfolding the N*C planes as one sample gives the
        # same numbers in the same memory order as unfolding N samples of C planes, in one
        # im2col call (one parallel region instead of one per sample). An empty batch has
        # no planes to merge and is unfolded as it is.
        planes = x4.reshape(1, batch * self.in_channels, height, width) if batch else x4
        cols = F.unfold(planes, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        cols = cols.reshape(batch, self.patch_size(), out_h * out_w)
        weight_2d = self.weight.reshape(self.out_channels, -1)
        if self.bias is None:
            out = torch.matmul(weight_2d, cols)
        else:
            bias_3d = self.bias.reshape(1, self.out_channels, 1).expand(batch, -1, cols.shape[2])
            out = torch.baddbmm(bias_3d, weight_2d.expand(batch, -1, -1), cols)
        out = out.reshape(batch, self.out_channels, out_h, out_w)

        self._cols = cols
        self._input_hw = (height, width)
        self._unbatched = unbatched
        return self.finish_forward(out[0] if unbatched else out)

    def patch_size(self):
        """Rows of an unfolded column: C_in * kH * kW."""
        return self.in_channels * self.kernel_size[0] * self.kernel_size[1]

    def backward(self, dout):
        self.start_backward(dout)
        cols = self._cols
        if self._unbatched:
            dout = dout.unsqueeze(0)
        batch = cols.shape[0]
        dout_3d = dout.reshape(batch, self.out_channels, cols.shape[2])
        weight_2d = self.weight.reshape(self.out_channels, -1)

        # Parameter gradients accumulate in place.
        dweight = torch.matmul(dout_3d, cols.transpose(1, 2)).sum(dim=0)
        self._grads["weight"] += dweight.reshape(self.weight.shape)
        if self.bias is not None:
            self._grads["bias"] += dout_3d.sum(dim=(0, 2))

        # Input gradient: columns back to image positions.
        dcols = torch.matmul(weight_2d.T, dout_3d)
        # fold sums plane by plane too: one col2im call over all N*C planes.
        merged = dcols.reshape(1, -1, dcols.shape[2]) if batch else dcols
        dx = F.fold(
            merged,
            self._input_hw,
            self.kernel_size,
            dilation=self.dilation,
            padding=self.padding,
            stride=self.stride,
        )
        dx = dx.reshape(batch, self.in_channels, *self._input_hw)
        return dx[0] if self._unbatched else dx
