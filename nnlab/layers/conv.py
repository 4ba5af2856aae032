"""2-D convolution by unfold + matmul."""

import math

import torch
import torch.nn.functional as F

from .base import Layer
from .windows import add_into_windows, check_2d_input, check_windows_fit, pair, window_view

# From this many multiply-adds in each sample's product (C_out x C*kH*kW) @ (C*kH*kW x L),
# a batched matmul over the samples beats one large matmul over all of them, whose result
# must then be transposed (measured with MKL on the benchmark's shapes; a smaller product
# pays the per-sample call overhead).
PER_SAMPLE_GEMM = 2**18

PADDING_MODES = ("zeros", "circular")


class Conv2d(Layer):
    """2-D cross-correlation, as a matrix product over unfolded input patches.
    Same as ``torch.nn.Conv2d`` (groups=1; padding_mode 'zeros' or 'circular').

    Forward: ``cols = unfold(x)`` holds every receptive field as a column. The windows of
    the padded input are a strided view (``Tensor.unfold`` along H and W, no copy),
    copied once into the GEMM's layout: C*kH*kW rows by L = H_out * W_out columns per
    sample. ``out = W_2d @ cols + b`` with W_2d = weight viewed as (C_out, C*kH*kW): one
    batched matmul over the samples, cols (N, C*kH*kW, L), when each sample's product is
    large enough (``PER_SAMPLE_GEMM``), else one matmul over cols (C*kH*kW, N*L) whose
    (C_out, N*L) result is transposed to (N, C_out, L); whichever was measured faster.

    Backward: ``dW += dout_2d @ cols.T``, one GEMM accumulating into the gradient
    (``addmm_``), with dout_2d = dout as (C_out, N*L) and cols (C*kH*kW, N*L) unfolded
    again from the cached input; ``db += dout.sum over (n, h, w)``;
    ``dx = fold(W_2d.T @ dout)`` (layout as in forward): fold adds each column back where
    unfold took it, as kH*kW strided additions through the same window view of a zero
    padded buffer, so overlapping windows sum their contributions; then the padding is cut
    off. With zero padding, stride 1 and C_out <= C_in, dx is instead the same sum written
    as a correlation of the padded dout with the flipped kernel (unfold + matmul, no
    fold), which is faster there (see ``_input_grad_as_correlation``). dx is skipped after
    ``requires_input_grad(False)``.

    ``padding_mode='circular'``: x is padded by wrapping around, as
    ``F.pad(x, mode='circular')`` does (the rows above the image repeat its last rows, the
    columns left of it its last columns, and so on), then unfolded as above. The
    backward folds into the padded shape and adds each padding row and column's gradient
    back into the row or column it repeats. A circularly padded, stride-1 convolution
    commutes exactly with circular shifts of the image.

    Shapes: x (N, C_in, H, W) or unbatched (C_in, H, W) -> (N, C_out, H_out, W_out)
    (or (C_out, H_out, W_out)), with ``H_out = floor((H + 2p - d(k - 1) - 1) / s) + 1``,
    likewise W_out.
    Parameters: ``weight`` (C_out, C_in, kH, kW), ``bias`` (C_out) or None.
    Init: both from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = C_in * kH * kW, as PyTorch.
    Caches: the input x, as torch's autograd saves it, and whether it was unbatched; not
    the columns, kH*kW times larger than x: backward unfolds x again, one more copy of the
    columns, 5 to 10% of the layer's time (measured).
    """

    SAVED_TENSORS = ("_x", "weight")

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
        self._x = None
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
        batch = x4.shape[0]
        windows = (self.kernel_size, self.stride, self.padding, self.dilation)
        out_h, out_w = check_windows_fit(self, x4.shape[2], x4.shape[3], *windows)
        positions = out_h * out_w
        weight_2d = self.weight.reshape(self.out_channels, -1)

        patches = self._patches(x4)
        if self._per_sample_gemm(positions):
            out = torch.matmul(weight_2d, patches.reshape(batch, self.patch_size(), positions))
            if self.bias is not None:
                out += self.bias.reshape(self.out_channels, 1)
        else:
            cols = _as_columns(patches)
            if self.bias is None:
                out_2d = torch.mm(weight_2d, cols)
            else:
                out_2d = torch.addmm(self.bias.reshape(self.out_channels, 1), weight_2d, cols)
            out = out_2d.reshape(self.out_channels, batch, positions).transpose(0, 1).contiguous()
        out = out.reshape(batch, self.out_channels, out_h, out_w)

        self._x = x4
        self._unbatched = unbatched
        return self.finish_forward(out[0] if unbatched else out)

    def patch_size(self):
        """Rows of an unfolded column: C_in * kH * kW."""
        return self.in_channels * self.kernel_size[0] * self.kernel_size[1]

    def _per_sample_gemm(self, positions):
        """True when each sample's product has PER_SAMPLE_GEMM multiply-adds or more."""
        return self.out_channels * self.patch_size() * positions >= PER_SAMPLE_GEMM

    def _patches(self, x4):
        """Every window of the padded x4, a view (N, C, kH, kW, H_out, W_out)."""
        pad_h, pad_w = self.padding
        if self.padding_mode == "circular":
            padded = self._pad_circular(x4)
        else:
            padded = F.pad(x4, (pad_w, pad_w, pad_h, pad_h)) if pad_h or pad_w else x4
        return window_view(padded, self.kernel_size, self.stride, self.dilation)

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
        x4 = self._x
        if self._unbatched:
            dout = dout.unsqueeze(0)
        batch, _, out_h, out_w = dout.shape
        positions = out_h * out_w
        dout_2d = dout.transpose(0, 1).reshape(self.out_channels, batch * positions)

        # Parameter gradients accumulate in place, dW inside its GEMM.
        cols = _as_columns(self._patches(x4))
        self._grads["weight"].view(self.out_channels, -1).addmm_(dout_2d, cols.T)
        if self.bias is not None:
            self._grads["bias"].add_(dout_2d.sum(dim=1))

        # Input gradient.
        if not self.needs_input_grad:
            return None
        if self._input_grad_by_correlation():
            dx = self._input_grad_as_correlation(dout)
        else:
            dx = self._input_grad_by_fold(dout, dout_2d, x4.shape)
        return dx[0] if self._unbatched else dx

    def _input_grad_by_fold(self, dout, dout_2d, input_shape):
        """dx = fold(W_2d.T @ dout): the columns' gradients added back where unfold took them."""
        batch, _, out_h, out_w = dout.shape
        positions = out_h * out_w
        weight_2d = self.weight.reshape(self.out_channels, -1)
        height, width = input_shape[2:]
        pad_h, pad_w = self.padding
        padded_shape = (batch, self.in_channels, height + 2 * pad_h, width + 2 * pad_w)
        patch_shape = (self.in_channels, *self.kernel_size, out_h, out_w)
        if self._per_sample_gemm(positions):
            dcols = torch.matmul(weight_2d.T, dout.reshape(batch, self.out_channels, positions))
            dpatches = dcols.reshape(batch, *patch_shape)
            dpadded = dout.new_zeros(padded_shape)
        else:
            # Columns ordered (c, a, b) by (n, i, j): viewed with n first, and a buffer
            # of the same memory order, so that the fold's additions run along rows.
            dcols = torch.mm(weight_2d.T, dout_2d)
            dpatches = dcols.reshape(*patch_shape[:3], batch, out_h, out_w).permute(3, 0, 1, 2, 4, 5)
            dpadded = dout.new_zeros(padded_shape[1], batch, *padded_shape[2:]).transpose(0, 1)
        add_into_windows(dpadded, dpatches, self.kernel_size, self.stride, self.dilation)
        if self.padding_mode == "circular":
            return _unwrap_circular(dpadded, self.padding).contiguous()
        return dpadded[:, :, pad_h : pad_h + height, pad_w : pad_w + width].contiguous()

    def _input_grad_by_correlation(self):
        """True when dx is better computed as a correlation of dout (see below) than by
        fold: zero padding of at most the dilated kernel's reach d(k - 1), stride 1, and
        C_out <= C_in, so that dout's unfolded windows are no larger than the columns
        fold would add up (measured: faster there, and no better elsewhere)."""
        reach = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
        small_padding = all(p <= r for p, r in zip(self.padding, reach))
        zero_padding = self.padding_mode == "zeros"
        return zero_padding and small_padding and self.stride == (1, 1) and self.out_channels <= self.in_channels

    def _input_grad_as_correlation(self, dout):
        """With stride 1, ``dx[n, c, y, x] = sum_{o, a, b} dout_q[n, o, y + a*d_h, x + b*d_w]
        * W[o, c, kH-1-a, kW-1-b]``, dout_q being dout zero padded by q = d(k - 1) - p:
        the correlation of dout with the kernel flipped and its channel axes swapped,
        computed as this layer's forward is (unfold + one batched matmul), without fold."""
        reach_h, reach_w = (d * (k - 1) for d, k in zip(self.dilation, self.kernel_size))
        pad_h, pad_w = reach_h - self.padding[0], reach_w - self.padding[1]
        padded = F.pad(dout, (pad_w, pad_w, pad_h, pad_h)) if pad_h or pad_w else dout
        patches = window_view(padded, self.kernel_size, (1, 1), self.dilation)
        batch, channels, k_h, k_w, height, width = patches.shape
        flipped = self.weight.flip(2, 3).transpose(0, 1).reshape(self.in_channels, -1)
        dx = torch.matmul(flipped, patches.reshape(batch, channels * k_h * k_w, height * width))
        return dx.reshape(batch, self.in_channels, height, width)


def _as_columns(patches):
    """Patches (N, C, kH, kW, H_out, W_out) copied into columns (C*kH*kW, N*L), one per
    window of every sample."""
    batch, channels, k_h, k_w, out_h, out_w = patches.shape
    return patches.permute(1, 2, 3, 0, 4, 5).reshape(channels * k_h * k_w, batch * out_h * out_w)


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
