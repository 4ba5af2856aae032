"""2-D convolution by unfold + matmul."""

import math

import torch
import torch.nn.functional as F

from .base import Layer
from .windows import check_2d_input, check_windows_fit, pair

PADDING_MODES = ("zeros", "circular")


class Conv2d(Layer):
    """2-D cross-correlation, as a matrix product over unfolded input patches.
    Same as ``torch.nn.Conv2d`` (groups=1; padding_mode 'zeros' or 'circular').

    Forward: ``cols = unfold(x)`` holds every receptive field as a column,
    (N, C*kH*kW, L) with L = H_out * W_out; ``out = W_2d @ cols + b`` with
    W_2d = weight viewed as (C_out, C*kH*kW), one batched matmul for the whole batch.

    Backward: ``dW += sum_n dout_n @ cols_n.T``; ``db += dout.sum over (n, h, w)``;
    ``dx = fold(W_2d.T @ dout)`` (fold adds each column back where unfold took it, so
    overlapping windows sum their contributions).

    ``padding_mode='circular'``: x is first padded by wrapping around, as
    ``F.pad(x, mode='circular')`` does (the rows above the image repeat its last rows, the
    columns left of it its last columns, and so on), then unfolded without padding. The
    backward folds into the padded shape and adds each padding row and column's gradient
    back into the row or column it repeats. A circularly padded, stride-1 convolution
    commutes exactly with circular shifts of the image.

    Shapes: x (N, C_in, H, W) or unbatched (C_in, H, W) -> (N, C_out, H_out, W_out)
    (or (C_out, H_out, W_out)), with ``H_out = floor((H + 2p - d(k - 1) - 1) / s) + 1``,
    likewise W_out.
    Parameters: ``weight`` (C_out, C_in, kH, kW), ``bias`` (C_out) or None.
    Init: both from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = C_in * kH * kW, as PyTorch.
    Caches: the unfolded input ``cols`` (needed for dW) and the unfolded planes' (H, W)
    and the input's batchedness (for fold); not the input itself.
    """

    SAVED_TENSORS = ("_cols", "weight")

    def __init__(
        self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True, padding_mode="zeros"
    ):
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
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"Conv2d: padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.padding_mode = padding_mode
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
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode}"
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
        windows = (self.kernel_size, self.stride, self.padding, self.dilation)
        out_h, out_w = check_windows_fit(self, x4.shape[2], x4.shape[3], *windows)
        if self.padding_mode == "circular":
            x4 = self._pad_circular(x4)
        batch, _, height, width = x4.shape

        # unfold works plane by plane, so unfolding the N*C planes as one sample gives the
        # same numbers in the same memory order as unfolding N samples of C planes, in one
        # im2col call (one parallel region instead of one per sample). An empty batch has
        # no planes to merge and is unfolded as it is.
        planes = x4.reshape(1, batch * self.in_channels, height, width) if batch else x4
        cols = F.unfold(
            planes, self.kernel_size, dilation=self.dilation, padding=self._unfold_padding(), stride=self.stride
        )
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

    def _unfold_padding(self):
        """The zero padding unfold and fold add: none when the input was padded circularly."""
        return (0, 0) if self.padding_mode == "circular" else self.padding

    def _pad_circular(self, x4):
        """x4 padded by wrapping around (F.pad's 'circular' mode), as torch.nn.Conv2d does."""
        pad_h, pad_w = self.padding
        if pad_h > x4.shape[2] or pad_w > x4.shape[3]:
            raise ValueError(
                f"{self!r}: circular padding {self.padding} would wrap around more than once on an "
                f"input of height and width {tuple(x4.shape[2:])}"
            )
        return F.pad(x4, (pad_w, pad_w, pad_h, pad_h), mode="circular")

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
            padding=self._unfold_padding(),
            stride=self.stride,
        )
        dx = dx.reshape(batch, self.in_channels, *self._input_hw)
        if self.padding_mode == "circular":
            dx = _unwrap_circular(dx, self.padding)
        return dx[0] if self._unbatched else dx


def _unwrap_circular(dpadded, padding):
    """The gradient w.r.t. a circularly padded input (N, C, H + 2p_h, W + 2p_w) as the
    gradient w.r.t. the input (N, C, H, W): the transpose of F.pad(mode='circular'). The
    leading p rows repeat the input's last p rows and the trailing p rows its first p rows,
    so their gradients add there; then the same for the columns."""
    for dim, pad in ((2, padding[0]), (3, padding[1])):
        if pad == 0:
            continue
        size = dpadded.shape[dim] - 2 * pad
        inner = dpadded.narrow(dim, pad, size).clone()
        inner.narrow(dim, size - pad, pad).add_(dpadded.narrow(dim, 0, pad))
        inner.narrow(dim, 0, pad).add_(dpadded.narrow(dim, pad + size, pad))
        dpadded = inner
    return dpadded
