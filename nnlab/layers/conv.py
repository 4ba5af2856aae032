"""Convolutions by unfold + matmul: ``Conv1d`` and ``Conv2d`` (groups, every padding
mode, 'same' padding), and the transposed ``ConvTranspose1d`` and ``ConvTranspose2d``
(whose forward is a convolution's input gradient: a matmul, then fold)."""

import math

import torch
import torch.nn.functional as F

from .base import Layer, checked_int
from .norm import place
from .padding import gather, gather_backward, source_index
from ._windows import (
    add_into_windows,
    as_plane_pair,
    as_planes,
    check_windows_fit,
    from_planes,
    ntuple,
    to_planes,
    window_view,
)

__all__ = ["Conv1d", "Conv2d", "ConvTranspose1d", "ConvTranspose2d"]

# From this many multiply-adds in each sample's product (C_out x C*kH*kW) @ (C*kH*kW x L),
# a batched matmul over the samples beats one large matmul over all of them, whose result
# must then be transposed; a smaller product pays the per-sample call overhead
# (`nnlab bench --cases Conv2d`).
PER_SAMPLE_GEMM = 2**18

# Up to this many output positions per plane, the input gradient's fold is torch's col2im
# (``F.fold``, one call) rather than one strided addition per kernel offset, whose rows are
# then too short to pay for their calls (`nnlab bench --course`, the digits CNN).
SMALL_PLANE_POSITIONS = 64

# Below this many rows in a column (C*kH*kW: an input of one to three channels), the
# weight gradient is computed as its transpose, cols @ dout_2d.T (C*kH*kW x C_out), whose
# long reduction BLAS runs faster in that orientation than dout_2d @ cols.T accumulated in
# place (`nnlab bench --course`, the CIFAR-size CNN's first layer).
FEW_PATCH_ROWS = 32

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
PADDING_STRINGS = ("same", "valid")


class _ConvBase(Layer):
    """What every convolution shares: the arguments as torch.nn checks them, the
    parameters and their init, the repr. ``SPATIAL`` is the number of spatial axes (1 or
    2); the work is done on (N, C, H, W) planes, a 1-d signal being a plane of height 1,
    with the per-axis arguments as pairs (``_kernel2``, ``_stride2``, ``_dilation2``)."""

    SAVED_TENSORS = ("_x", "weight")
    SPATIAL = 2

    def _set_arguments(self, in_channels, out_channels, kernel_size, stride, dilation, groups):
        name = type(self).__name__
        spatial = self.SPATIAL
        self.in_channels = checked_int(name, "in_channels", in_channels, 1)
        self.out_channels = checked_int(name, "out_channels", out_channels, 1)
        self.groups = checked_int(name, "groups", groups, 1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"{name}: in_channels ({in_channels}) and out_channels ({out_channels}) must both be "
                f"divisible by groups ({groups})"
            )
        self.kernel_size = ntuple(kernel_size, spatial, "kernel_size", name, 1)
        self.stride = ntuple(stride, spatial, "stride", name, 1)
        self.dilation = ntuple(dilation, spatial, "dilation", name, 1)
        self._kernel2 = as_plane_pair(self.kernel_size, spatial, 1)
        self._stride2 = as_plane_pair(self.stride, spatial, 1)
        self._dilation2 = as_plane_pair(self.dilation, spatial, 1)
        self._x = None
        self._form = None

    def _add_parameters(self, weight_shape, bias):
        """``weight`` and ``bias`` (or None) from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in
        being the weight's size over its first axis, as torch.nn's init."""
        fan_in = math.prod(weight_shape[1:])
        bound = 1.0 / math.sqrt(fan_in)
        self.add_param("weight", torch.empty(weight_shape).uniform_(-bound, bound))
        if bias:
            self.add_param("bias", torch.empty(self.out_channels).uniform_(-bound, bound))
        else:
            self.bias = None

    def __repr__(self):
        text = (
            f"{type(self).__name__}({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={_show(self.padding)}"
        )
        if self.dilation != (1,) * self.SPATIAL:
            text += f", dilation={self.dilation}"
        if getattr(self, "output_padding", (0,) * self.SPATIAL) != (0,) * self.SPATIAL:
            text += f", output_padding={self.output_padding}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode}"
        return text + ")"

    def _kernel_offsets(self):
        return self._kernel2[0] * self._kernel2[1]


def _show(padding):
    """A padding as torch.nn's repr shows it: a tuple, or 'same' / 'valid' unquoted."""
    return padding if isinstance(padding, str) else str(padding)


class _ConvNd(_ConvBase):
    """Convolution (cross-correlation) over 1 or 2 spatial axes; see Conv2d."""

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
        padding_mode="zeros",
        device=None,
        dtype=None,
    ):
        super().__init__()
        name = type(self).__name__
        self._set_arguments(in_channels, out_channels, kernel_size, stride, dilation, groups)
        self.padding = self._checked_padding(padding)
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"{name}: padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        self._pads = self._side_pads()
        weight_shape = (out_channels, in_channels // groups, *self.kernel_size)
        self._add_parameters(weight_shape, bias)
        place(self, device, dtype)

    def _checked_padding(self, padding):
        """padding as torch.nn keeps it: 'same', 'valid', or a tuple of ints >= 0."""
        name = type(self).__name__
        if isinstance(padding, str):
            if padding not in PADDING_STRINGS:
                raise ValueError(f"{name}: padding must be 'same', 'valid', an int or a tuple of ints, got {padding!r}")
            if padding == "same" and self.stride != (1,) * self.SPATIAL:
                raise ValueError(f"{name}: padding='same' needs stride 1 (as torch.nn), got stride {self.stride}")
            return padding
        return ntuple(padding, self.SPATIAL, "padding", name, 0)

    def _side_pads(self):
        """(before, after) padding along H and along W. 'same' pads d(k - 1) in all, the
        odd one on the after side, as torch does."""
        if self.padding == "valid":
            sides = [(0, 0)] * self.SPATIAL
        elif self.padding == "same":
            totals = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            sides = [(total // 2, total - total // 2) for total in totals]
        else:
            sides = [(p, p) for p in self.padding]
        return as_plane_pair(sides, self.SPATIAL, (0, 0))

    def output_shape(self, shape):
        """(C_out, *S_out) for an input of shape (C_in, *S); ValueError if impossible."""
        channels, *spatial = shape
        if channels != self.in_channels:
            raise ValueError(f"{self!r}: expected {self.in_channels} input channels, got {channels}")
        height, width = as_plane_pair(spatial, self.SPATIAL, 1)
        out_hw = check_windows_fit(self, height, width, self._kernel2, self._stride2, self._pads, self._dilation2)
        return (self.out_channels, *out_hw[2 - self.SPATIAL :])

    def patch_size(self):
        """Rows of an unfolded column: C_in / groups * kH * kW."""
        return self.in_channels // self.groups * self._kernel_offsets()

    def forward(self, x, **kw):
        x4, form = as_planes(self, x, self.SPATIAL, self.in_channels)
        self.check_dtype(x4)
        out_h, out_w = check_windows_fit(
            self, x4.shape[2], x4.shape[3], self._kernel2, self._stride2, self._pads, self._dilation2
        )
        patches = self._patches(x4)
        if self.groups == 1:
            out = self._dense_forward(patches, out_h * out_w)
        elif self._depthwise():
            out = self._depthwise_forward(patches)
        else:
            out = self._grouped_forward(patches)
        out = out.reshape(x4.shape[0], self.out_channels, out_h, out_w)
        self._x = x4
        self._form = form
        return self.finish_forward(from_planes(out, form))

    def _dense_forward(self, patches, positions):
        """out (N, C_out, L) = W_2d @ cols + b, in the GEMM layout faster for the size (``PER_SAMPLE_GEMM``)."""
        batch = patches.shape[0]
        weight_2d = self.weight.reshape(self.out_channels, -1)
        if self._per_sample_gemm(positions):
            out = torch.matmul(weight_2d, patches.reshape(batch, self.patch_size(), positions))
            if self.bias is not None:
                out += self.bias.reshape(self.out_channels, 1)
            return out
        cols = _as_columns(patches)
        if self.bias is None:
            out_2d = torch.mm(weight_2d, cols)
        else:
            out_2d = torch.addmm(self.bias.reshape(self.out_channels, 1), weight_2d, cols)
        return out_2d.reshape(self.out_channels, batch, positions).transpose(0, 1).contiguous()

    def _grouped_forward(self, patches):
        """out_g = W_g @ cols_g + b_g for each group g: cols in the 2-D layout (C*kH*kW, N*L),
        whose rows split by group for free, and one matmul batched over the groups
        (batching over samples and groups instead makes N*G small products: slower,
        ``nnlab bench --cases groups``)."""
        batch, _, _, _, out_h, out_w = patches.shape
        groups, positions = self.groups, out_h * out_w
        cols = _as_columns(patches).reshape(groups, self.patch_size(), batch * positions)
        out = torch.bmm(self._grouped_weight(), cols)
        if self.bias is not None:
            out += self.bias.reshape(groups, -1, 1)
        return out.reshape(self.out_channels, batch, positions).transpose(0, 1).contiguous()

    def _depthwise(self):
        """True for one input channel per group (depthwise convolution)."""
        return self.groups == self.in_channels

    def _depthwise_weight(self):
        """weight as (C_in, m, kH*kW), m = C_out / C_in filters per input channel (a view)."""
        return self.weight.reshape(self.in_channels, -1, self._kernel_offsets())

    def _offsets(self):
        """The kernel offsets (a, b) in row-major order, k = a*kW + b."""
        return [(a, b) for a in range(self._kernel2[0]) for b in range(self._kernel2[1])]

    def _depthwise_forward(self, patches):
        """out[n, c*m + j] = b[c*m + j] + sum_k window_k[n, c] * W[c*m + j, 0, k]: one
        multiply-add over every window per kernel offset k, reading the window view (no
        columns copied; faster than the grouped matmul here: ``nnlab bench --cases depthwise``)."""
        weight = self._depthwise_weight()
        windows = self._multiplier_windows(patches, weight.shape[1])
        out = windows(0) * self._multiplier_weight(weight, 0)
        if self.bias is not None:
            out += self._multiplier_weight(self.bias.reshape(weight.shape[:2] + (1,)), 0)
        for k in range(1, weight.shape[2]):
            out.addcmul_(windows(k), self._multiplier_weight(weight, k))
        return out.contiguous()  # a non-contiguous input gives its strides to the products

    def _multiplier_windows(self, patches, multiplier):
        """Offset k's windows, (N, C, H_out, W_out), or (N, C, 1, H_out, W_out) to meet m > 1
        filters per channel (4-d where it can: elementwise passes on the 5-d form are
        slower, ``nnlab bench --cases depthwise``)."""
        offsets = self._offsets()

        def window(k):
            a, b = offsets[k]
            return patches[:, :, a, b] if multiplier == 1 else patches[:, :, a, b].unsqueeze(2)

        return window

    def _multiplier_weight(self, weight, k):
        """Offset k's weights broadcastable against ``_multiplier_windows``' windows."""
        channels, multiplier = weight.shape[:2]
        return weight[:, :, k].reshape(channels, 1, 1) if multiplier == 1 else weight[:, :, k].reshape(channels, -1, 1, 1)

    def _depthwise_backward(self, x4, dout):
        """Per kernel offset k: ``dW[c*m + j, 0, k] += sum_{n, i, l} dout[n, c*m + j, i, l] *
        window_k[n, c, i, l]`` and ``window_k(dx_pad) += sum_j dout[:, c*m + j] * W[c*m + j, 0, k]``
        (fold as one strided addition per offset); then ``unpad``."""
        batch, _, out_h, out_w = dout.shape
        channels = self.in_channels
        weight = self._depthwise_weight()
        multiplier = weight.shape[1]
        dout_c = dout if multiplier == 1 else dout.reshape(batch, channels, multiplier, out_h, out_w)
        windows = self._multiplier_windows(self._patches(x4), multiplier)
        dweight = self._grads["weight"].view(weight.shape)
        spatial = (-2, -1)
        for k in range(weight.shape[2]):
            products = (dout_c * windows(k)).sum(dim=spatial).sum(dim=0)
            dweight[:, :, k] += products.reshape(channels, multiplier)
        if self.bias is not None:
            self._grads["bias"].add_(dout.sum(dim=(0, 2, 3)))
        if not self.needs_input_grad:
            return None
        (top, bottom), (left, right) = self._pads
        height, width = x4.shape[2:]
        dpadded = dout.new_zeros(batch, channels, height + top + bottom, width + left + right)
        dwindows = window_view(dpadded, self._kernel2, self._stride2, self._dilation2)
        for k, (a, b) in enumerate(self._offsets()):
            if multiplier == 1:
                dwindows[:, :, a, b].addcmul_(dout, self._multiplier_weight(weight, k))
            else:
                dwindows[:, :, a, b].add_((dout_c * self._multiplier_weight(weight, k)).sum(dim=2))
        return self._unpad(dpadded, x4)

    def _grouped_weight(self):
        """weight as (G, C_out/G, C_in/G*kH*kW), a view."""
        return self.weight.reshape(self.groups, self.out_channels // self.groups, self.patch_size())

    def _per_sample_gemm(self, positions):
        """True when each sample's product has PER_SAMPLE_GEMM multiply-adds or more."""
        return self.out_channels * self.patch_size() * positions >= PER_SAMPLE_GEMM

    def _patches(self, x4):
        """Every window of the padded x4, a view (N, C, kH, kW, H_out, W_out)."""
        return window_view(self._pad(x4), self._kernel2, self._stride2, self._dilation2)

    def _pad(self, x4):
        """x4 padded as torch.nn pads it: zeros, or by repeating entries of x4 (the
        'reflect', 'replicate' and 'circular' modes, as F.pad's), gathered by index."""
        (top, bottom), (left, right) = self._pads
        if not (top or bottom or left or right):
            return x4
        if self.padding_mode == "zeros":
            return F.pad(x4, (left, right, top, bottom))
        return gather(x4, self._padding_sources(x4))

    def _padding_sources(self, x4):
        """(dim, index) for each padded axis: which entry of x4 along ``dim`` each
        position of the padded input repeats, for the padding mode."""
        sources = []
        for dim, (before, after) in zip((2, 3), self._pads):
            if before or after:
                size = x4.shape[dim]
                self._check_mode_padding(size, before, after)
                sources.append((dim, source_index(size, before, after, self.padding_mode, x4.device)))
        return sources

    def _check_mode_padding(self, size, before, after):
        """ValueError where torch's F.pad refuses the padding mode on an axis of ``size``."""
        mode = self.padding_mode
        if mode == "reflect" and max(before, after) >= size:
            raise ValueError(f"{self!r}: reflect padding {(before, after)} must be less than the input size {size}")
        if mode == "circular" and max(before, after) > size:
            raise ValueError(
                f"{self!r}: circular padding {(before, after)} would wrap around more than once on an input "
                f"of size {size}"
            )
        if size == 0:
            raise ValueError(f"{self!r}: {mode} padding needs a non-empty input along every padded axis")

    def _unpad(self, dpadded, x4):
        """The gradient w.r.t. x4 from the gradient w.r.t. its padded form (``_pad``'s
        adjoint): the padding cut off, or (repeating modes) each padded position's
        gradient added into the entry it repeats."""
        (top, bottom), (left, right) = self._pads
        height, width = x4.shape[2:]
        if self.padding_mode == "zeros":
            return dpadded[:, :, top : top + height, left : left + width].contiguous()
        return gather_backward(dpadded, self._padding_sources(x4), x4.shape)

    def backward(self, dout):
        self.start_backward(dout)
        x4 = self._x
        dout = to_planes(dout, self._form)
        if self.groups == 1:
            dx = self._dense_backward(x4, dout)
        elif self._depthwise():
            dx = self._depthwise_backward(x4, dout)
        else:
            dx = self._grouped_backward(x4, dout)
        return None if dx is None else from_planes(dx, self._form)

    def _dense_backward(self, x4, dout):
        batch, _, out_h, out_w = dout.shape
        dout_2d = dout.transpose(0, 1).reshape(self.out_channels, batch * out_h * out_w)

        # Parameter gradients accumulate in place, dW inside its GEMM.
        cols = _as_columns(self._patches(x4))
        weight_grad = self._grads["weight"].view(self.out_channels, -1)
        if self.patch_size() < FEW_PATCH_ROWS:
            weight_grad.add_(torch.mm(cols, dout_2d.T).T)
        else:
            weight_grad.addmm_(dout_2d, cols.T)
        if self.bias is not None:
            self._grads["bias"].add_(dout_2d.sum(dim=1))

        # Input gradient.
        if not self.needs_input_grad:
            return None
        if self._input_grad_by_correlation():
            return self._input_grad_as_correlation(dout)
        return self._input_grad_by_fold(dout, dout_2d, x4)

    def _grouped_backward(self, x4, dout):
        """dW_g += dout_g @ cols_g.T and dx = fold(W_g.T @ dout_g), one matmul batched over
        the groups each, in the 2-D layout of ``_grouped_forward``."""
        batch, _, out_h, out_w = dout.shape
        groups, rows, columns = self.groups, self.patch_size(), batch * out_h * out_w
        dout_2d = dout.transpose(0, 1).reshape(self.out_channels, columns)
        dout_g = dout_2d.reshape(groups, self.out_channels // groups, columns)

        cols = _as_columns(self._patches(x4)).reshape(groups, rows, columns)
        self._grads["weight"].view(groups, -1, rows).baddbmm_(dout_g, cols.transpose(1, 2))
        if self.bias is not None:
            self._grads["bias"].add_(dout_2d.sum(dim=1))

        if not self.needs_input_grad:
            return None
        dcols = torch.bmm(self._grouped_weight().transpose(1, 2), dout_g)
        return self._fold_columns(dcols.reshape(groups * rows, columns), batch, out_h, out_w, x4)

    def _fold_into_input(self, dpatches, x4, dpadded=None):
        """fold: the windows' gradients (N, C, kH, kW, H_out, W_out) added back where the
        windows lie in the padded input, then ``_unpad``."""
        if dpadded is None:
            (top, bottom), (left, right) = self._pads
            height, width = x4.shape[2:]
            dpadded = dpatches.new_zeros(x4.shape[0], self.in_channels, height + top + bottom, width + left + right)
        add_into_windows(dpadded, dpatches, self._kernel2, self._stride2, self._dilation2)
        return self._unpad(dpadded, x4)

    def _input_grad_by_fold(self, dout, dout_2d, x4):
        """dx = fold(W_2d.T @ dout): the columns' gradients added back where unfold took them."""
        batch, _, out_h, out_w = dout.shape
        positions = out_h * out_w
        weight_2d = self.weight.reshape(self.out_channels, -1)
        if self._fold_by_col2im(positions):
            dcols = torch.matmul(weight_2d.T, dout.reshape(batch, self.out_channels, positions))
            (top, _), (left, _) = self._pads
            return F.fold(dcols, x4.shape[2:], self._kernel2, self._dilation2, (top, left), self._stride2)
        if not self._per_sample_gemm(positions):
            return self._fold_columns(torch.mm(weight_2d.T, dout_2d), batch, out_h, out_w, x4)
        dcols = torch.matmul(weight_2d.T, dout.reshape(batch, self.out_channels, positions))
        dpatches = dcols.reshape(batch, self.in_channels, *self._kernel2, out_h, out_w)
        return self._fold_into_input(dpatches, x4)

    def _fold_by_col2im(self, positions):
        """True for small planes (``SMALL_PLANE_POSITIONS``) with zero padding alike on
        both sides of each axis, what ``F.fold`` takes."""
        symmetric = all(before == after for before, after in self._pads)
        return positions <= SMALL_PLANE_POSITIONS and self.padding_mode == "zeros" and symmetric

    def _fold_columns(self, dcols, batch, out_h, out_w, x4):
        """fold of column gradients in the 2-D layout (C*kH*kW, N*L), ordered (c, a, b) by
        (n, i, j): viewed with n first, into a buffer of the same memory order, so that the
        fold's additions run along rows."""
        (top, bottom), (left, right) = self._pads
        height, width = x4.shape[2:]
        dpatches = dcols.reshape(self.in_channels, *self._kernel2, batch, out_h, out_w).permute(3, 0, 1, 2, 4, 5)
        padded_hw = (height + top + bottom, width + left + right)
        dpadded = dcols.new_zeros(self.in_channels, batch, *padded_hw).transpose(0, 1)
        return self._fold_into_input(dpatches, x4, dpadded)

    def _reach(self):
        """The dilated kernel's reach d(k - 1) along H and W."""
        return [d * (k - 1) for d, k in zip(self._dilation2, self._kernel2)]

    def _input_grad_by_correlation(self):
        """True when dx is better computed as a correlation of dout (see below) than by
        fold: zero padding of at most the dilated kernel's reach d(k - 1) on each side,
        stride 1, and C_out <= C_in, so that dout's unfolded windows are no larger than the
        columns fold would add up (faster there, no better elsewhere: ``nnlab bench --cases Conv2d``)."""
        small_padding = all(max(sides) <= reach for sides, reach in zip(self._pads, self._reach()))
        zero_padding = self.padding_mode == "zeros"
        unit_stride = self._stride2 == (1, 1)
        return zero_padding and small_padding and unit_stride and self.out_channels <= self.in_channels

    def _input_grad_as_correlation(self, dout):
        """With stride 1, ``dx[n, c, y, x] = sum_{o, a, b} dout_q[n, o, y + a*d_h, x + b*d_w]
        * W[o, c, kH-1-a, kW-1-b]``, dout_q being dout zero padded by q = d(k - 1) - p on
        each side: the correlation of dout with the kernel flipped and its channel axes
        swapped, computed as this layer's forward is (unfold + one batched matmul), without
        fold."""
        (reach_h, reach_w) = self._reach()
        (top, bottom), (left, right) = self._pads
        pads = (reach_w - left, reach_w - right, reach_h - top, reach_h - bottom)
        padded = F.pad(dout, pads) if any(pads) else dout
        patches = window_view(padded, self._kernel2, (1, 1), self._dilation2)
        batch, channels, k_h, k_w, height, width = patches.shape
        weight_4d = self.weight.reshape(self.out_channels, self.in_channels, k_h, k_w)
        flipped = weight_4d.flip(2, 3).transpose(0, 1).reshape(self.in_channels, -1)
        dx = torch.matmul(flipped, patches.reshape(batch, channels * k_h * k_w, height * width))
        return dx.reshape(batch, self.in_channels, height, width)


def _as_columns(patches):
    """Patches (N, C, kH, kW, H_out, W_out) copied into columns (C*kH*kW, N*L), one per
    window of every sample."""
    batch, channels, k_h, k_w, out_h, out_w = patches.shape
    return patches.permute(1, 2, 3, 0, 4, 5).reshape(channels * k_h * k_w, batch * out_h * out_w)


class Conv2d(_ConvNd):
    """2-D cross-correlation, as a matrix product over unfolded input patches.
    Same as ``torch.nn.Conv2d`` (every padding, padding_mode, dilation and groups).

    Forward: ``cols = unfold(x_pad)`` holds every receptive field as a column. The windows
    of the padded input are a strided view (``Tensor.unfold`` along H and W, no copy),
    copied once into the GEMM's layout: C*kH*kW rows by L = H_out * W_out columns per
    sample. ``out = W_2d @ cols + b`` with W_2d = weight viewed as (C_out, C*kH*kW): one
    batched matmul over the samples, cols (N, C*kH*kW, L), when each sample's product is
    large enough (``PER_SAMPLE_GEMM``), else one matmul over cols (C*kH*kW, N*L) whose
    (C_out, N*L) result is transposed to (N, C_out, L); whichever is faster for the size.
    With ``groups`` G > 1 the channels split into G groups, each convolved with its own
    C_out/G filters of C_in/G channels: cols in the (C*kH*kW, N*L) layout, whose rows
    split by group, and one matmul batched over the groups, ``out_g = W_g @ cols_g + b_g``.
    Depthwise (G = C_in, m = C_out/C_in filters per channel) copies no columns: forward
    is one multiply-add over the window view per kernel offset k,
    ``out[:, c*m + j] += window_k[:, c] * W[c*m + j, 0, k]``.

    Backward: ``dW += dout_2d @ cols.T``, one GEMM accumulating into the gradient
    (``addmm_``; per group ``baddbmm_``; depthwise, per offset k, ``dW[:, :, k] +=
    sum_{n, i, j} dout * window_k``), with dout_2d = dout as (C_out, N*L) and cols
    unfolded again from the cached input; ``db += dout.sum over (n, h, w)``;
    ``dx = unpad(fold(W_2d.T @ dout))`` (layout as in forward): fold adds each column
    back where unfold took it, as kH*kW strided additions through the same window view
    of a zero buffer of the padded shape, so overlapping windows sum their contributions.
    With zero padding of at most d(k - 1), stride 1, groups 1 and C_out <= C_in, dx is
    instead the same sum written as a correlation of the padded dout with the flipped
    kernel (unfold + matmul, no fold), which is faster there (see
    ``_input_grad_as_correlation``). dx is skipped after ``requires_input_grad(False)``.

    Padding: ``padding`` an int or a pair (both sides), ``'valid'`` (none) or ``'same'``
    (stride 1 only: d(k - 1) in all, the odd one after, so that the output has the input's
    size). ``padding_mode='zeros'`` pads with zeros and ``unpad`` cuts the padding off;
    'reflect', 'replicate' and 'circular' pad as ``F.pad`` does in those modes (mirror
    without repeating the edge, the edge repeated, wrap around), computed by gathering
    entries along H then W (``index_select``); their ``unpad`` adds each padded position's
    gradient into the entry it repeats (``index_add_``). A circularly padded, stride-1
    convolution commutes exactly with circular shifts of the image.

    Shapes: x (N, C_in, H, W) or unbatched (C_in, H, W) -> (N, C_out, H_out, W_out)
    (or (C_out, H_out, W_out)), with ``H_out = floor((H + p_before + p_after - d(k - 1)
    - 1) / s) + 1``, likewise W_out.
    Parameters: ``weight`` (C_out, C_in/G, kH, kW), ``bias`` (C_out) or None.
    Init: both from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = C_in/G * kH * kW, as PyTorch.
    ``device`` and ``dtype``: torch's factory arguments, where and how the parameters are made.
    Caches: the input x, as torch's autograd saves it, and its layout; not the columns,
    kH*kW times larger than x: backward unfolds x again, one more copy of the columns (its
    share of the time: ``nnlab bench --profile --cases Conv2d``).

    Example::

        >>> import torch
        >>> from nnlab.grad_compare import check_layer
        >>> from nnlab.layers import Conv2d
        >>> conv = Conv2d(3, 8, kernel_size=3, stride=2, padding=1)
        >>> x = torch.randn(2, 3, 8, 8)
        >>> conv(x).shape
        torch.Size([2, 8, 4, 4])
        >>> print(check_layer(conv, x))      # dx, dW, db against autograd and torch.nn.Conv2d
        Conv2d(...): ok
        ...
    """

    SPATIAL = 2


class Conv1d(_ConvNd):
    """1-D cross-correlation by unfold + matmul. Same as ``torch.nn.Conv1d`` (every
    padding, padding_mode, dilation and groups).

    ``out[n, o, i] = b[o] + sum_{c in group(o), a} W[o, c, a] * x_pad[n, c, i*s + a*d]``;
    backward: ``dW[o, c, a] += sum_{n, i} dout[n, o, i] * x_pad[n, c, i*s + a*d]``,
    ``db[o] += sum_{n, i} dout[n, o, i]``, ``dx = unpad(fold(W.T @ dout))``. Computed as
    Conv2d computes it, on the signal as an image of height 1 (see ``Conv2d`` for the GEMM
    layouts, groups, padding modes and 'same').

    Shapes: x (N, C_in, L) or unbatched (C_in, L) -> (N, C_out, L_out) or (C_out, L_out),
    ``L_out = floor((L + p_before + p_after - d(k - 1) - 1) / s) + 1``.
    Parameters: ``weight`` (C_out, C_in/G, k), ``bias`` (C_out) or None; init as torch's.
    Caches: the input x and its layout; not the columns.
    """

    SPATIAL = 1


class _ConvTransposeNd(_ConvBase):
    """Transposed convolution over 1 or 2 spatial axes; see ConvTranspose2d."""

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        output_padding=0,
        groups=1,
        bias=True,
        dilation=1,
        padding_mode="zeros",
        device=None,
        dtype=None,
    ):
        super().__init__()
        name = type(self).__name__
        self._set_arguments(in_channels, out_channels, kernel_size, stride, dilation, groups)
        if isinstance(padding, str):
            raise ValueError(f"{name}: padding must be an int or a tuple of ints (no 'same' or 'valid'), got {padding!r}")
        self.padding = ntuple(padding, self.SPATIAL, "padding", name, 0)
        self.output_padding = ntuple(output_padding, self.SPATIAL, "output_padding", name, 0)
        for extra, stride_, dilation_ in zip(self.output_padding, self.stride, self.dilation):
            if extra >= stride_ and extra >= dilation_:
                raise ValueError(
                    f"{name}: output_padding {self.output_padding} must be smaller than either stride "
                    f"{self.stride} or dilation {self.dilation}"
                )
        if padding_mode != "zeros":
            raise ValueError(f"{name}: padding_mode must be 'zeros' (as torch.nn's), got {padding_mode!r}")
        self.padding_mode = padding_mode
        self._padding2 = as_plane_pair(self.padding, self.SPATIAL, 0)
        weight_shape = (in_channels, out_channels // groups, *self.kernel_size)
        self._add_parameters(weight_shape, bias)
        place(self, device, dtype)

    def _full_size(self, size, axis):
        """Length along ``axis`` (0: H, 1: W) that the windows of an input of ``size``
        cover: (size - 1) * s + d(k - 1) + 1."""
        return (size - 1) * self._stride2[axis] + self._dilation2[axis] * (self._kernel2[axis] - 1) + 1

    def _output_padding(self, x, output_size):
        """output_padding as a pair: the layer's, or what makes the output ``output_size``
        (its spatial sizes, or with the batch and channel sizes in front, as torch takes
        it); ValueError outside torch's range [min, min + s - 1]."""
        if output_size is None:
            return as_plane_pair(self.output_padding, self.SPATIAL, 0)
        sizes = list(output_size)
        if len(sizes) == x.dim():
            sizes = sizes[x.dim() - self.SPATIAL :]
        if len(sizes) != self.SPATIAL or not all(isinstance(s, int) for s in sizes):
            raise ValueError(f"{self!r}: output_size must give the {self.SPATIAL} spatial sizes, got {output_size!r}")
        spatial = as_plane_pair(x.shape[x.dim() - self.SPATIAL :], self.SPATIAL, 1)
        wanted = as_plane_pair(sizes, self.SPATIAL, 1)
        extras = []
        for axis in (0, 1):
            smallest = self._full_size(spatial[axis], axis) - 2 * self._padding2[axis]
            largest = smallest + self._stride2[axis] - 1
            if not smallest <= wanted[axis] <= largest:
                raise ValueError(
                    f"{self!r}: output_size {tuple(sizes)} is out of reach: sizes from "
                    f"{smallest} to {largest} along each axis are possible for this input"
                )
            extras.append(wanted[axis] - smallest)
        return tuple(extras)

    def output_shape(self, shape):
        """(C_out, *S_out) for an input of shape (C_in, *S); ValueError if impossible."""
        channels, *spatial = shape
        if channels != self.in_channels:
            raise ValueError(f"{self!r}: expected {self.in_channels} input channels, got {channels}")
        height, width = as_plane_pair(spatial, self.SPATIAL, 1)
        out_hw = self._output_hw(height, width, as_plane_pair(self.output_padding, self.SPATIAL, 0))
        return (self.out_channels, *out_hw[2 - self.SPATIAL :])

    def _output_hw(self, height, width, output_padding):
        out_hw = tuple(
            self._full_size(size, axis) + output_padding[axis] - 2 * self._padding2[axis]
            for axis, size in enumerate((height, width))
        )
        if min(out_hw) < 1:
            raise ValueError(f"{self!r}: the output of an input of size {(height, width)} would be {out_hw}: too small")
        return out_hw

    def forward(self, x, output_size=None, **kw):
        x4, form = as_planes(self, x, self.SPATIAL, self.in_channels)
        self.check_dtype(x4)
        output_padding = self._output_padding(x, output_size)
        batch, _, height, width = x4.shape
        out_h, out_w = self._output_hw(height, width, output_padding)
        full_h, full_w = self._full_size(height, 0), self._full_size(width, 1)
        groups, in_per_group = self.groups, self.in_channels // self.groups

        # cols_g = W_g.T @ x_g: what each input entry sends to each kernel offset, in the 2-D
        # layout (C_out*kH*kW, N*H*W), one matmul batched over the groups (per sample and
        # group it makes N*G small products: slower, `nnlab bench --cases ConvTranspose2d`).
        weight_t = self.weight.reshape(groups, in_per_group, -1).transpose(1, 2)
        cols = torch.bmm(weight_t, self._input_rows(x4))
        patches = cols.reshape(self.out_channels, *self._kernel2, batch, height, width).permute(3, 0, 1, 2, 4, 5)
        # A buffer of the columns' memory order (channels, then samples), so that the
        # fold's additions run along rows.
        full_shape = (self.out_channels, batch, full_h + output_padding[0], full_w + output_padding[1])
        buffer = x4.new_zeros(full_shape).transpose(0, 1)
        add_into_windows(buffer[:, :, :full_h, :full_w], patches, self._kernel2, self._stride2, self._dilation2)
        pad_h, pad_w = self._padding2
        out = buffer[:, :, pad_h : pad_h + out_h, pad_w : pad_w + out_w].contiguous()
        if self.bias is not None:
            out += self.bias.reshape(-1, 1, 1)
        self._x = x4
        self._form = form
        return self.finish_forward(from_planes(out, form))

    def backward(self, dout):
        self.start_backward(dout)
        x4 = self._x
        dout = to_planes(dout, self._form)
        batch, _, height, width = x4.shape
        groups, in_per_group = self.groups, self.in_channels // self.groups
        positions = height * width

        # The windows of the padded dout that the input entries wrote to, as columns in the
        # 2-D layout (C_out*kH*kW, N*H*W).
        pad_h, pad_w = self._padding2
        padded = F.pad(dout, (pad_w, pad_w, pad_h, pad_h)) if pad_h or pad_w else dout
        windows = window_view(padded, self._kernel2, self._stride2, self._dilation2)[..., :height, :width]
        column = self.out_channels // groups * self._kernel_offsets()
        dcols = _as_columns(windows).reshape(groups, column, batch * positions)

        self._grads["weight"].view(groups, in_per_group, -1).baddbmm_(self._input_rows(x4), dcols.transpose(1, 2))
        if self.bias is not None:
            self._grads["bias"].add_(dout.sum(dim=(0, 2, 3)))

        if not self.needs_input_grad:
            return None
        dx = torch.bmm(self.weight.reshape(groups, in_per_group, -1), dcols)
        dx = dx.reshape(self.in_channels, batch, height, width).transpose(0, 1).contiguous()
        return from_planes(dx, self._form)

    def _input_rows(self, x4):
        """x4 (N, C_in, H, W) copied into (G, C_in/G, N*H*W), a row per input channel."""
        batch, _, height, width = x4.shape
        return x4.transpose(0, 1).reshape(self.groups, self.in_channels // self.groups, batch * height * width)


class ConvTranspose2d(_ConvTransposeNd):
    """2-D transposed convolution (the adjoint of Conv2d's input gradient), by matmul +
    fold. Same as ``torch.nn.ConvTranspose2d`` (padding_mode 'zeros', the only one torch has).

    Forward: every input entry scatters its kernel-weighted value into the output:
    ``y_full[n, o, i*s + a*d, j*s + b*d] += sum_c x[n, c, i, j] * W[c, o, a, b]`` (c in o's
    group), computed as ``cols_g = W_g.T @ x_g`` (one matmul batched over the groups, x
    copied into rows (C_in, N*H*W), columns (C_out*kH*kW, N*H*W)) and fold: kH*kW strided
    additions into a zero
    buffer of the full size (H - 1)*s + d(k - 1) + 1 plus output_padding (zeros at the
    end); then ``padding`` is cut from both sides and the bias added.
    Backward: ``dcols = unfold(pad(dout))``, the windows of dout padded back by ``padding``
    (a strided view, copied once into columns); ``dx_g = W_g @ dcols_g``,
    ``dW_g += x_g @ dcols_g.T`` (``baddbmm_``), ``db += dout.sum over (n, h, w)``.

    ``forward(x, output_size=None)``: as torch, ``output_size`` (the spatial sizes, or the
    whole output shape) picks the output padding in [0, s - 1] that gives that size;
    ValueError when no output padding does.
    Shapes: x (N, C_in, H, W) or (C_in, H, W) -> (N, C_out, H_out, W_out) or unbatched, with
    ``H_out = (H - 1)*s - 2p + d(k - 1) + output_padding + 1``, likewise W_out.
    Parameters: ``weight`` (C_in, C_out/G, kH, kW), ``bias`` (C_out) or None.
    Init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = C_out/G * kH * kW (torch's).
    ``device`` and ``dtype``: torch's factory arguments, as Conv2d's.
    Caches: the input x (as torch's autograd saves it) and its layout; backward unfolds
    dout, nothing else is kept.
    """

    SPATIAL = 2


class ConvTranspose1d(_ConvTransposeNd):
    """1-D transposed convolution by matmul + fold. Same as ``torch.nn.ConvTranspose1d``
    (padding_mode 'zeros', the only one torch has).

    ``y_full[n, o, i*s + a*d] += sum_c x[n, c, i] * W[c, o, a]``, then ``padding`` cut from
    both ends (output_padding extends the end); backward ``dx_g = W_g @ unfold(pad(dout))_g``,
    ``dW_g += x_g @ unfold(pad(dout))_g.T``, ``db += dout.sum over (n, l)``: ConvTranspose2d's
    computation on the signal as an image of height 1.
    Shapes: x (N, C_in, L) or (C_in, L) -> (N, C_out, L_out) or (C_out, L_out),
    ``L_out = (L - 1)*s - 2p + d(k - 1) + output_padding + 1``; ``forward(x, output_size)``
    as ConvTranspose2d's.
    Parameters: ``weight`` (C_in, C_out/G, k), ``bias`` (C_out) or None; init as torch's.
    Caches: the input x and its layout.
    """

    SPATIAL = 1
