"""Pooling over 1 and 2 spatial axes: max, average and power-average over sliding
windows, and their adaptive forms (max unpooling is in ``unpooling``).

Every 2-d layer takes (N, C, H, W) or unbatched (C, H, W), every 1-d layer (N, C, L) or
(C, L), like torch.nn; a signal is worked on as an image of height 1. Every layer works
on all N * C planes at once (no Python loop over samples, channels or positions).
"""

import math
import numbers

import torch
import torch.nn.functional as F

from .base import Layer, checked_int
from ._windows import (
    as_plane_pair,
    as_planes,
    check_windows_fit,
    from_planes,
    ntuple,
    pool_output_size,
    to_planes,
    window_view,
)

# Up to this many output positions per plane, max pooling reads every window entry through
# strided views of the input (its per-call overhead decides there), rather than first copying
# the column sets to unit stride as it does for larger planes (`nnlab bench --course`, the
# digits CNN).
SMALL_PLANE_POSITIONS = 64

__all__ = [
    "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AvgPool1d",
    "AvgPool2d", "LPPool1d", "LPPool2d", "MaxPool1d", "MaxPool2d", "adaptive_windows",
]


def _check_pool_args(owner, kernel, stride, padding):
    """ValueError unless padding is at most half the kernel (PyTorch's rule)."""
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"{owner}: padding {padding} must be at most half of kernel_size {kernel}")


def _is_tiling(kernel, stride, padding, dilation):
    """True when windows tile the input without overlap or padding (the reshape fast path)."""
    return stride == kernel and padding == (0, 0) and dilation == (1, 1)


def _tiles(x4, kernel, out_h, out_w):
    """x4 viewed as (N, C, H_out, kH, W_out, kW) tiles; rows and columns past the last
    whole window are dropped, as PyTorch does."""
    batch, channels = x4.shape[:2]
    k_h, k_w = kernel
    x_used = x4.narrow(2, 0, out_h * k_h).narrow(3, 0, out_w * k_w)
    return x_used.reshape(batch, channels, out_h, k_h, out_w, k_w)


def _spread_tile_means(dout, kernel, input_hw):
    """The gradient of tile means (``_tiles(x).mean(dim=(3, 5))``): every entry of a tile
    gets its tile's dout / (kH*kW); rows and columns no tile covers get 0."""
    batch, channels, out_h, out_w = dout.shape
    k_h, k_w = kernel
    dshare = (dout / (k_h * k_w)).reshape(batch, channels, out_h, 1, out_w, 1)
    return _untile(dshare.expand(-1, -1, -1, k_h, -1, k_w), input_hw)


def _untile(dtiles, input_hw):
    """Gradient tiles (N, C, H_out, kH, W_out, kW) as (N, C, H, W), with zeros for the
    rows and columns that no window covers."""
    batch, channels, out_h, k_h, out_w, k_w = dtiles.shape
    dx = dtiles.reshape(batch, channels, out_h * k_h, out_w * k_w)
    missing_h = input_hw[0] - out_h * k_h
    missing_w = input_hw[1] - out_w * k_w
    if missing_h or missing_w:
        dx = F.pad(dx, (0, missing_w, 0, missing_h))
    return dx


class _PoolNd(Layer):
    """Shared argument handling of the max, average and power-average pools over 1 or 2
    spatial axes (``SPATIAL``). The work is done on (N, C, H, W) planes, a 1-d signal
    being a plane of height 1, with the per-axis arguments as pairs (``_kernel2``, ...)."""

    SPATIAL = 2

    def __init__(self, kernel_size, stride, padding, dilation, ceil_mode):
        super().__init__()
        name = type(self).__name__
        spatial = self.SPATIAL
        self.kernel_size = ntuple(kernel_size, spatial, "kernel_size", name, 1)
        self.stride = self.kernel_size if stride is None else ntuple(stride, spatial, "stride", name, 1)
        self.padding = ntuple(padding, spatial, "padding", name, 0)
        self.dilation = ntuple(dilation, spatial, "dilation", name, 1)
        if not isinstance(ceil_mode, bool):
            raise ValueError(f"{name}: ceil_mode must be a bool, got {ceil_mode!r}")
        self.ceil_mode = ceil_mode
        self._kernel2 = as_plane_pair(self.kernel_size, spatial, 1)
        self._stride2 = as_plane_pair(self.stride, spatial, 1)
        self._padding2 = as_plane_pair(self.padding, spatial, 0)
        self._dilation2 = as_plane_pair(self.dilation, spatial, 1)
        _check_pool_args(name, self._kernel2, self._stride2, self._padding2)
        self._input_shape = None

    def _describe(self):
        text = f"kernel_size={_show(self.kernel_size)}, stride={_show(self.stride)}, padding={_show(self.padding)}"
        if self.dilation != (1,) * self.SPATIAL:
            text += f", dilation={_show(self.dilation)}"
        if self.ceil_mode:
            text += ", ceil_mode=True"
        return text

    def output_shape(self, shape):
        """(C, *S_out) for an input of shape (C, *S); ValueError if impossible."""
        channels, *spatial = shape
        out_hw = self._output_hw(*as_plane_pair(spatial, self.SPATIAL, 1))
        return (channels, *out_hw[2 - self.SPATIAL :])

    def _output_hw(self, height, width):
        """Output (H, W) (ceil_mode's rounding included); ValueError naming the layer when
        no window fits."""
        sizes = (height, width)
        axes = zip(sizes, self._kernel2, self._stride2, self._padding2, self._dilation2)
        out_hw = tuple(pool_output_size(*axis, self.ceil_mode) for axis in axes)
        if min(out_hw) < 1:
            check_windows_fit(self, height, width, self._kernel2, self._stride2, self._padding2, self._dilation2)
            raise ValueError(f"{self!r}: no window fits in an input of size {sizes}")
        return out_hw

    def _prepare(self, x):
        """x as (N, C, H, W), its layout, the output (H, W), and the padding of each side
        ((top, bottom), (left, right)): ``padding``, and after it the rows and columns that
        ceil_mode's last windows reach beyond the padded input."""
        x4, form = as_planes(self, x, self.SPATIAL)
        out_hw = self._output_hw(x4.shape[2], x4.shape[3])
        sides = []
        for axis in (0, 1):
            pad = self._padding2[axis]
            span = self._dilation2[axis] * (self._kernel2[axis] - 1) + 1
            reach = (out_hw[axis] - 1) * self._stride2[axis] + span
            sides.append((pad, max(pad, reach - x4.shape[2 + axis] - pad)))
        return x4, form, out_hw, tuple(sides)


def _pool_dout(layer, dout):
    """Checks the dout of a pool whose output may be (out, indices) (``return_indices``):
    dout alone or (dout, None) for such an output. Returns the gradient of ``out`` as
    (N, C, H_out, W_out) planes (zeros for None)."""
    if not getattr(layer, "return_indices", False):
        layer.start_backward(dout)
        return to_planes(dout, layer._input_shape[1])
    if isinstance(dout, torch.Tensor):
        dout = (dout, None)
    layer.start_backward(dout)
    if dout[1] is not None:
        raise ValueError(f"{layer!r}.backward: the indices get no gradient; pass dout or (dout, None)")
    shape, dtype, device = layer._out_like
    dout = torch.zeros(shape, dtype=dtype, device=device) if dout[0] is None else dout[0]
    return to_planes(dout, layer._input_shape[1])


def _show(values):
    """A 1-d layer's one-entry tuple as an int, as torch.nn's 1-d pools show it."""
    return values[0] if len(values) == 1 else values


class _MaxPoolNd(_PoolNd):
    """Max pooling over 1 or 2 spatial axes; see MaxPool2d."""

    SAVED_TENSORS = ("_argmax",)

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode)
        if not isinstance(return_indices, bool):
            raise ValueError(f"{type(self).__name__}: return_indices must be a bool, got {return_indices!r}")
        self.return_indices = return_indices
        self._argmax = None
        self._out_like = None
        self._offsets_for = (None, None, None)

    def __repr__(self):
        return f"{type(self).__name__}({self._describe()})"

    def forward(self, x, **kw):
        x4, form, _, sides = self._prepare(x)
        (top, bottom), (left, right) = sides
        padded = x4
        if top or bottom or left or right:
            padded = F.pad(x4, (left, right, top, bottom), value=float("-inf"))
        views = self._window_views(padded)
        index_dtype = torch.uint8 if len(views) <= 256 else torch.int32
        if len(views) == 1:
            out = views[0].clone()
            index = torch.zeros(out.shape, dtype=index_dtype, device=x4.device)
        else:
            # Two fresh tensors from the first pair; bool viewed as uint8 is offset 0 or 1.
            out = torch.maximum(views[0], views[1])
            index = torch.gt(views[1], views[0]).view(torch.uint8).to(index_dtype)
            for k in range(2, len(views)):
                # k exceeds every earlier offset, so the maximum moves the index to k exactly
                # where this entry is strictly greater (integer passes: where() on a bool
                # mask is slower, `nnlab bench --cases MaxPool2d`).
                greater = torch.gt(views[k], out).view(torch.uint8).to(index_dtype)
                index = torch.maximum(index, greater * k)
                out = torch.maximum(out, views[k])
        index = self._torch_choice_at_nonfinite(views, out, index, x4.shape[2:], sides)
        self._argmax = self._positions(index, padded.shape[3])
        self._input_shape = ((x4.shape, padded.shape[2:], sides), form)
        # The output is read from the input at the argmax rather than taken from the running
        # maximum: the same values, but autograd through this forward then sends the whole
        # gradient to that one entry, ties included, as torch.nn.MaxPool2d does (through a
        # chain of torch.maximum it would split the gradient between tied entries).
        out = padded.flatten(2).gather(2, self._argmax.flatten(2)).reshape(out.shape)
        out = from_planes(out, form)
        self._out_like = (out.shape, out.dtype, out.device)
        if self.return_indices:
            return self.finish_forward((out, from_planes(self._input_indices(x4.shape[3], padded.shape[3], sides), form)))
        return self.finish_forward(out)

    def _input_indices(self, width, padded_w, sides):
        """The argmax positions in the padded planes as torch's indices: flat positions
        h*W + w in the input's plane (in the signal for a 1-d pool)."""
        (top, _), (left, _) = sides
        rows = torch.div(self._argmax, padded_w, rounding_mode="floor") - top
        cols = self._argmax.remainder(padded_w) - left
        return rows * width + cols

    def _torch_choice_at_nonfinite(self, views, out, index, input_hw, sides):
        """The running argmax above, corrected where torch chooses otherwise (each check is
        one pass over the output, the fix-up only runs when needed): torch takes the
        *last* NaN of a window (it moves on ``val > max or isnan(val)``), and for a window
        whose real entries are all -inf its first real entry, never the -inf padding."""
        # A NaN anywhere makes the sum NaN (so may inf - inf: then the fix-up changes nothing).
        maybe_nan = bool(out.sum().isnan())
        if maybe_nan:
            for k, view in enumerate(views):
                index = torch.where(view.isnan(), k, index)
        padded = any(any(side) for side in sides)
        if padded and out.numel() and (maybe_nan or out.amin() == float("-inf")):
            all_minus_inf = out == float("-inf")
            if all_minus_inf.any():
                first, has_real = self._first_real_offsets(out.shape[2], out.shape[3], input_hw, out.device)
                index = torch.where(all_minus_inf & has_real, first.to(index.dtype), index)
        return index

    def _first_real_offsets(self, out_h, out_w, input_hw, device):
        """(H_out, W_out) offsets k = a*kW + b of each window's first non-padding entry in
        row-major order, and whether the window has one at all."""
        windows = list(zip(self._kernel2, self._stride2, self._padding2, self._dilation2))
        rows, rows_ok = _first_real_along(out_h, *windows[0], input_hw[0], device)
        cols, cols_ok = _first_real_along(out_w, *windows[1], input_hw[1], device)
        first = rows.reshape(-1, 1) * self._kernel2[1] + cols.reshape(1, -1)
        return first, rows_ok.reshape(-1, 1) & cols_ok.reshape(1, -1)

    def _window_views(self, padded):
        """The kH*kW views (N, C, H_out, W_out) of the windows' entries, one per kernel
        offset (a, b) in row-major order: ``window_view`` (``Tensor.unfold``, no copy)
        indexed at (a, b). With a column stride > 1 the kW column sets (offset b's
        columns of every window) are first copied to contiguous tensors, so that every
        later pass reads unit-stride rows."""
        (k_h, k_w), (s_h, s_w), (d_h, d_w) = self._kernel2, self._stride2, self._dilation2
        windows = window_view(padded, self._kernel2, self._stride2, self._dilation2)
        if s_w == 1 or windows.shape[4] * windows.shape[5] <= SMALL_PLANE_POSITIONS:
            return [windows[:, :, a, b] for a in range(k_h) for b in range(k_w)]
        column_sets = window_view(padded, (1, k_w), (1, s_w), (1, d_w))
        row_windows = [
            window_view(column_sets[:, :, 0, b].contiguous(), (k_h, 1), (s_h, 1), (d_h, 1)) for b in range(k_w)
        ]
        return [row_windows[b][:, :, a, 0] for a in range(k_h) for b in range(k_w)]

    def _positions(self, index, padded_w):
        """Offset indices (N, C, H_out, W_out) as flat int64 positions in the padded plane."""
        table, starts = self._plane_offsets(padded_w, *index.shape[2:], index.device)
        positions = table.index_select(0, index.reshape(-1).to(torch.int32)).reshape(index.shape)
        return positions.add_(starts)

    def _plane_offsets(self, padded_w, out_h, out_w, device):
        """(table, starts) for planes of width ``padded_w``: the flat position of each kernel
        offset k = a*kW + b in its window, (kH*kW,), and of each window's first entry,
        (H_out, W_out). Kept for the latest plane size: they depend on nothing else, and
        forming them costs more calls than a small plane's whole maximum."""
        key = (padded_w, out_h, out_w, device)
        if self._offsets_for[0] != key:
            (k_h, k_w), (s_h, s_w), (d_h, d_w) = self._kernel2, self._stride2, self._dilation2
            table = [a * d_h * padded_w + b * d_w for a in range(k_h) for b in range(k_w)]
            table = torch.tensor(table, dtype=torch.int64, device=device)
            rows = torch.arange(out_h, device=device).reshape(out_h, 1) * (s_h * padded_w)
            cols = torch.arange(out_w, device=device).reshape(1, out_w) * s_w
            self._offsets_for = (key, table, rows + cols)
        return self._offsets_for[1:]

    def backward(self, dout):
        dout = _pool_dout(self, dout)
        if not self.needs_input_grad:
            return None
        positions = self._argmax
        (shape, (padded_h, padded_w), sides), form = self._input_shape
        batch, channels, height, width = shape
        planes = batch * channels
        outputs = positions.shape[2] * positions.shape[3]
        dpadded = torch.zeros(planes, padded_h * padded_w, dtype=dout.dtype, device=dout.device)
        dpadded.scatter_add_(1, positions.reshape(planes, outputs), dout.reshape(planes, outputs))
        dx = dpadded.reshape(batch, channels, padded_h, padded_w)
        (top, bottom), (left, right) = sides
        if top or bottom or left or right:
            dx = dx[:, :, top : top + height, left : left + width].contiguous()
        return from_planes(dx, form)


class MaxPool2d(_MaxPoolNd):
    """Maximum over each (dilated) window, the padding counting as -inf.
    Same as ``torch.nn.MaxPool2d`` (every option: dilation, return_indices, ceil_mode).

    Forward: ``out[n, c, i, j] = max_{a, b} x_pad[n, c, i*s + a*d, j*s + b*d]``, computed
    as a running maximum over the kH*kW strided views ``x_pad[..., a*d::s, b*d::s]``: the
    windows unfolded (``Tensor.unfold``, a view, no copy) and taken at each kernel offset
    (a, b), one elementwise pass per offset, each covering every window at once. With a
    column stride > 1 the kW column sets ``x_pad[..., b*d::s]`` are first copied to
    contiguous tensors, so that every later pass reads unit-stride rows. The running
    argmax is the offset index ``k = a*kW + b`` (uint8, int32 past 256 offsets), updated
    by ``index = max(index, k * (view > out))``; at the end it becomes the flat position in the
    padded plane, ``(i*s_h + a*d_h) * W_pad + j*s_w + b*d_w``, via a kH*kW lookup table,
    and the output is gathered from the padded input at those positions (so that autograd
    through the forward routes gradients as PyTorch does, ties included).
    ``ceil_mode=True`` rounds the output size up (a last window must start inside the input
    or its left padding, as torch's rule): the input is padded with -inf far enough for
    the last windows. ``return_indices=True`` returns ``(out, indices)``, indices being
    the flat position ``h*W + w`` of each maximum in its input plane (torch's, for
    ``MaxUnpool2d``).
    Backward: the whole ``dout[n, c, i, j]`` goes to the window's argmax, summed where
    windows overlap (one ``scatter_add_``). Ties go where PyTorch sends them: to the first
    maximum in row-major order inside the window (a later offset wins only if strictly
    greater). With return_indices, backward takes ``dout`` or ``(dout, None)``.

    Shapes: (N, C, H, W) or (C, H, W) -> (N, C, H_out, W_out) or (C, H_out, W_out), with
    ``H_out = floor((H + 2p - d(k - 1) - 1) / s) + 1`` (ceil with ceil_mode), likewise W_out.
    Caches: the flat position of every output's argmax in its padded plane (int64, the
    output's shape) and the input shape; not the input.

    Example::

        >>> import torch
        >>> from nnlab.layers import MaxPool2d
        >>> pool = MaxPool2d(2)
        >>> pool(torch.arange(16.0).reshape(1, 1, 4, 4))
        tensor([[[[ 5.,  7.],
                  [13., 15.]]]])
        >>> pool.backward(torch.ones(1, 1, 2, 2))    # each window's gradient goes to its maximum
        tensor([[[[0., 0., 0., 0.],
                  [0., 1., 0., 1.],
                  [0., 0., 0., 0.],
                  [0., 1., 0., 1.]]]])
    """

    SPATIAL = 2


class MaxPool1d(_MaxPoolNd):
    """Maximum over each (dilated) window of a signal, the padding counting as -inf.
    Same as ``torch.nn.MaxPool1d`` (dilation, return_indices, ceil_mode).

    ``out[n, c, i] = max_a x_pad[n, c, i*s + a*d]``; backward sends ``dout[n, c, i]`` to the
    window's first maximum (its last NaN, as torch), summed where windows overlap; indices
    are positions in the signal. Computed as MaxPool2d on the signal as an image of height 1.
    Shapes: (N, C, L) or (C, L) -> (N, C, L_out) or (C, L_out),
    ``L_out = floor((L + 2p - d(k - 1) - 1) / s) + 1`` (ceil with ceil_mode).
    Caches: the argmax positions (int64, the output's shape) and the input shape.
    """

    SPATIAL = 1


class _AvgPoolNd(_PoolNd):
    """Average pooling over 1 or 2 spatial axes; see AvgPool2d."""

    def __init__(self, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
        super().__init__(kernel_size, stride, padding, 1, ceil_mode)
        name = type(self).__name__
        if not isinstance(count_include_pad, bool):
            raise ValueError(f"{name}: count_include_pad must be a bool, got {count_include_pad!r}")
        self.count_include_pad = count_include_pad
        if divisor_override is not None:
            divisor_override = checked_int(name, "divisor_override", divisor_override, 1)
        self.divisor_override = divisor_override
        self._divisor = None

    def __repr__(self):
        text = self._describe()
        if not self.count_include_pad:
            text += ", count_include_pad=False"
        if self.divisor_override is not None:
            text += f", divisor_override={self.divisor_override}"
        return f"{type(self).__name__}({text})"

    def _tiles_input(self):
        """True when windows tile the input without overlap, padding or partial windows,
        and the divisor is the window's size (the reshape fast path)."""
        plain = self.divisor_override is None and not self.ceil_mode
        return plain and _is_tiling(self._kernel2, self._stride2, self._padding2, self._dilation2)

    def _divisors(self, input_hw, out_hw, like):
        """Divisor per output position (H_out, W_out), torch's: divisor_override, or the
        window's size clipped to the padded input (count_include_pad), or its count of
        input entries; a product of one factor per axis."""
        if self.divisor_override is not None:
            return self.divisor_override
        factors = []
        for axis in (0, 1):
            size, kernel, stride, pad = input_hw[axis], self._kernel2[axis], self._stride2[axis], self._padding2[axis]
            starts = torch.arange(out_hw[axis], device=like.device) * stride - pad
            ends = torch.clamp(starts + kernel, max=size + pad)
            if not self.count_include_pad:
                starts, ends = torch.clamp(starts, min=0), torch.clamp(ends, max=size)
            factors.append((ends - starts).to(like.dtype))
        return factors[0].reshape(-1, 1) * factors[1].reshape(1, -1)

    def forward(self, x, **kw):
        x4, form, out_hw, sides = self._prepare(x)
        batch, channels, height, width = x4.shape
        if self._tiles_input():
            self._divisor = self._kernel2[0] * self._kernel2[1]
            out = _tiles(x4, self._kernel2, *out_hw).mean(dim=(3, 5))
        else:
            (top, bottom), (left, right) = sides
            planes = x4.reshape(batch * channels, 1, height, width)
            planes = F.pad(planes, (left, right, top, bottom))
            cols = F.unfold(planes, self._kernel2, stride=self._stride2)
            self._divisor = self._divisors((height, width), out_hw, x4)
            divisor = self._divisor if isinstance(self._divisor, int) else self._divisor.reshape(-1)
            out = (cols.sum(dim=1) / divisor).reshape(batch, channels, *out_hw)
        self._input_shape = ((x4.shape, sides), form)
        return self.finish_forward(from_planes(out, form))

    def backward(self, dout):
        dout = _pool_dout(self, dout)
        if not self.needs_input_grad:
            return None
        (shape, sides), form = self._input_shape
        batch, channels, height, width = shape
        if self._tiles_input():
            dx = _spread_tile_means(dout, self._kernel2, shape[2:])
        else:
            (top, bottom), (left, right) = sides
            out_h, out_w = dout.shape[2:]
            divisor = self._divisor if isinstance(self._divisor, int) else self._divisor.reshape(-1)
            dshare = dout.reshape(batch * channels, 1, out_h * out_w) / divisor
            window = self._kernel2[0] * self._kernel2[1]
            padded_hw = (height + top + bottom, width + left + right)
            dpadded = F.fold(dshare.expand(-1, window, -1), padded_hw, self._kernel2, stride=self._stride2)
            dx = dpadded.reshape(batch, channels, *padded_hw)[:, :, top : top + height, left : left + width]
        return from_planes(dx, form)


class AvgPool2d(_AvgPoolNd):
    """Mean over each window, the zero padding counted in the divisor by default.
    Same as ``torch.nn.AvgPool2d`` (every option: ceil_mode, count_include_pad,
    divisor_override).

    Forward: ``out[n, c, i, j] = sum_{a, b} x_pad[n, c, i*s + a, j*s + b] / D``, D being
    torch's divisor: ``divisor_override`` when given; else with count_include_pad the
    window's size clipped to the padded input (kH*kW except for ceil_mode's last windows,
    which may reach past it), without it the number of input entries in the window.
    Backward: each window entry gets ``dout[n, c, i, j] / D`` (summed where windows
    overlap; what falls on the padding is dropped).
    When the windows tile the input (stride = kernel, no padding, no ceil_mode or
    divisor_override), forward is a reshape and a mean, and backward spreads dout / (kH*kW).

    Shapes: as MaxPool2d. Caches: the input shape and the divisor of every output
    position ((H_out, W_out), or one number); not the input.
    """

    SPATIAL = 2

    def __init__(
        self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None
    ):
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


class AvgPool1d(_AvgPoolNd):
    """Mean over each window of a signal. Same as ``torch.nn.AvgPool1d`` (ceil_mode,
    count_include_pad; torch's has no divisor_override).

    ``out[n, c, i] = sum_a x_pad[n, c, i*s + a] / D`` with AvgPool2d's divisor D; backward
    gives each window entry ``dout[n, c, i] / D``. Computed as AvgPool2d on the signal as an
    image of height 1.
    Shapes: (N, C, L) or (C, L) -> (N, C, L_out) or (C, L_out). Caches: the input shape and
    the divisors.
    """

    SPATIAL = 1

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad, None)


def _adaptive_size(output_size, spatial, owner):
    """output_size as a pair whose entries are ints >= 1 or None (keep the input's size);
    a 1-d pool's (an int or a 1-tuple) is the width, its height kept (1)."""
    if output_size is None or isinstance(output_size, int):
        output_size = (output_size,) * spatial
    ok = isinstance(output_size, (tuple, list)) and len(output_size) == spatial
    ok = ok and all(s is None or (isinstance(s, int) and not isinstance(s, bool) and s >= 1) for s in output_size)
    if not ok:
        kind = "a pair of them" if spatial == 2 else "a tuple of one"
        raise ValueError(f"{owner}: output_size must be an int >= 1, None, or {kind}, got {output_size!r}")
    return as_plane_pair(tuple(output_size), spatial, None)


def adaptive_windows(size, out_size, device=None):
    """PyTorch's adaptive windows along one axis: window i covers
    [floor(i*size/out), ceil((i+1)*size/out)). Returns (index, lengths): index is
    (out, K) with K the longest window, row i listing window i's positions and then
    repeating its last one; lengths (out,) the true window lengths."""
    i = torch.arange(out_size, device=device)
    starts = (i * size) // out_size
    ends = ((i + 1) * size + out_size - 1) // out_size
    lengths = ends - starts
    longest = int(lengths.max())
    index = starts.unsqueeze(1) + torch.arange(longest, device=device).unsqueeze(0)
    index = torch.minimum(index, (ends - 1).unsqueeze(1))
    return index, lengths


class _AdaptivePoolNd(Layer):
    """Shared argument handling of the adaptive pools over 1 or 2 spatial axes
    (``SPATIAL``); the work is done on (N, C, H, W) planes, a signal being of height 1."""

    SPATIAL = 2

    def __init__(self, output_size):
        super().__init__()
        self._output2 = _adaptive_size(output_size, self.SPATIAL, type(self).__name__)
        self.output_size = self._output2 if self.SPATIAL == 2 else output_size
        self._input_shape = None

    def __repr__(self):
        return f"{type(self).__name__}(output_size={self.output_size})"

    def _out_hw(self, height, width):
        out_h = height if self._output2[0] is None else self._output2[0]
        out_w = width if self._output2[1] is None else self._output2[1]
        return out_h, out_w

    def output_shape(self, shape):
        """(C, *S_out) for an input of shape (C, *S)."""
        channels, *spatial = shape
        height, width = as_plane_pair(spatial, self.SPATIAL, 1)
        if height < 1 or width < 1:
            raise ValueError(f"{self!r}: input sizes must be >= 1, got {tuple(spatial)}")
        return (channels, *self._out_hw(height, width)[2 - self.SPATIAL :])

    def _prepare(self, x):
        x4, form = as_planes(self, x, self.SPATIAL)
        self.check_input(x, "non-empty spatial sizes", x4.shape[2] >= 1 and x4.shape[3] >= 1)
        return x4, form, *self._out_hw(x4.shape[2], x4.shape[3])


class _AdaptiveMaxPoolNd(_AdaptivePoolNd):
    """Adaptive max pooling over 1 or 2 spatial axes; see AdaptiveMaxPool2d."""

    SAVED_TENSORS = ("_positions",)

    def __init__(self, output_size, return_indices=False):
        super().__init__(output_size)
        if not isinstance(return_indices, bool):
            raise ValueError(f"{type(self).__name__}: return_indices must be a bool, got {return_indices!r}")
        self.return_indices = return_indices
        self._positions = None
        self._out_like = None

    def forward(self, x, **kw):
        x4, form, out_h, out_w = self._prepare(x)
        batch, channels, height, width = x4.shape
        rows, _ = adaptive_windows(height, out_h, x4.device)
        cols, _ = adaptive_windows(width, out_w, x4.device)
        k_h, k_w = rows.shape[1], cols.shape[1]
        windows = x4[:, :, rows][..., cols]  # (N, C, H_out, Kh, W_out, Kw)
        windows = windows.permute(0, 1, 2, 4, 3, 5).reshape(batch, channels, out_h, out_w, k_h * k_w)
        out, argmax = windows.max(dim=-1)
        if out.isnan().any():
            # torch takes a window's last NaN (torch.max takes its first).
            last_nan = windows.isnan().flip(-1).to(torch.uint8).argmax(dim=-1)
            argmax = torch.where(out.isnan(), k_h * k_w - 1 - last_nan, argmax)

        # Flat input position of every window entry, (H_out, W_out, Kh*Kw).
        table = rows.reshape(out_h, 1, k_h, 1) * width + cols.reshape(1, out_w, 1, k_w)
        table = table.reshape(1, 1, out_h, out_w, k_h * k_w).expand(batch, channels, -1, -1, -1)
        self._positions = torch.gather(table, -1, argmax.unsqueeze(-1)).reshape(batch, channels, out_h, out_w)
        self._input_shape = (x4.shape, form)
        out = from_planes(out, form)
        self._out_like = (out.shape, out.dtype, out.device)
        if self.return_indices:
            return self.finish_forward((out, from_planes(self._positions, form)))
        return self.finish_forward(out)

    def backward(self, dout):
        dout = _pool_dout(self, dout)
        if not self.needs_input_grad:
            return None
        positions = self._positions
        shape, form = self._input_shape
        batch, channels, height, width = shape
        outputs = positions.shape[2] * positions.shape[3]
        dx = torch.zeros(batch, channels, height * width, dtype=dout.dtype, device=dout.device)
        dx.scatter_add_(2, positions.reshape(batch, channels, outputs), dout.reshape(batch, channels, outputs))
        return from_planes(dx.reshape(shape), form)


class AdaptiveMaxPool2d(_AdaptiveMaxPoolNd):
    """Maximum over PyTorch's adaptive windows: output row i covers input rows
    [floor(i*H/H_out), ceil((i+1)*H/H_out)), likewise columns. Same as
    ``torch.nn.AdaptiveMaxPool2d`` (return_indices included).

    Forward: every window is gathered at once as (N, C, H_out, W_out, Kh*Kw) (shorter
    windows repeat their last row/column, which comes after the original in row-major
    order, so the first maximum is always a genuine entry); ``torch.max`` picks it (a
    window's last NaN where it holds NaN, as torch). ``return_indices=True`` returns
    ``(out, indices)``, the flat input positions h*W + w of the maxima.
    Backward: ``dout`` goes to the argmax's input position (scatter-add: adaptive
    windows may overlap). Ties: first maximum in row-major order, as PyTorch. With
    return_indices, backward takes ``dout`` or ``(dout, None)``.

    Shapes: (N, C, H, W) or (C, H, W) -> (N, C, H_out, W_out) or (C, H_out, W_out);
    ``output_size`` an int, a pair, None entries keeping the input's size.
    Caches: the flat input position (h*W + w) of every output's maximum (int64, the
    output's shape) and the input shape; not the input.
    """

    SPATIAL = 2


class AdaptiveMaxPool1d(_AdaptiveMaxPoolNd):
    """Maximum over PyTorch's adaptive windows of a signal: output i covers
    [floor(i*L/L_out), ceil((i+1)*L/L_out)). Same as ``torch.nn.AdaptiveMaxPool1d``
    (return_indices included).

    ``out[n, c, i] = max of x[n, c, window i]``; backward sends ``dout[n, c, i]`` to the
    window's first maximum (last NaN), summed where windows overlap; indices are positions
    in the signal. Computed as AdaptiveMaxPool2d on the signal as an image of height 1.
    Shapes: (N, C, L) or (C, L) -> (N, C, L_out) or (C, L_out); ``output_size`` an int.
    Caches: the argmax positions (int64, the output's shape) and the input shape.
    """

    SPATIAL = 1


def _window_sums(x, dim, index, valid):
    """Sums of x over adaptive windows along ``dim``: ``index`` and ``valid`` (out, K) from
    ``adaptive_windows``/``_valid_entries``. The repeats of a window's last entry are
    dropped with ``where`` rather than multiplied by 0, so that a NaN or inf stays in the
    windows that hold it (0 * inf is NaN), as in torch."""
    out_size, longest = index.shape
    gathered = x.index_select(dim, index.reshape(-1))
    gathered = gathered.reshape(*x.shape[:dim], out_size, longest, *x.shape[dim + 1 :])
    mask = valid.reshape(out_size, longest, *[1] * (x.dim() - dim - 1))
    return torch.where(mask, gathered, 0).sum(dim=dim + 1)


def _window_spread(grad, dim, index, valid, size):
    """The adjoint of ``_window_sums``: every window's gradient added to each of its
    entries, into a tensor whose ``dim`` has ``size`` entries."""
    out_size, longest = index.shape
    expanded = grad.unsqueeze(dim + 1).expand(*grad.shape[: dim + 1], longest, *grad.shape[dim + 1 :])
    mask = valid.reshape(out_size, longest, *[1] * (grad.dim() - dim - 1))
    spread = torch.where(mask, expanded, 0).reshape(*grad.shape[:dim], out_size * longest, *grad.shape[dim + 1 :])
    result = torch.zeros(*grad.shape[:dim], size, *grad.shape[dim + 1 :], dtype=grad.dtype, device=grad.device)
    return result.index_add_(dim, index.reshape(-1), spread)


def _valid_entries(lengths, longest):
    """(out, K) True for the first lengths[i] entries of row i (the window's own)."""
    return torch.arange(longest, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


class _AdaptiveAvgPoolNd(_AdaptivePoolNd):
    """Adaptive average pooling over 1 or 2 spatial axes; see AdaptiveAvgPool2d."""

    def __init__(self, output_size):
        super().__init__(output_size)
        self._tile = None
        self._windows = None

    def forward(self, x, **kw):
        x4, form, out_h, out_w = self._prepare(x)
        height, width = x4.shape[2:]
        self._input_shape = (x4.shape, form)
        if height % out_h == 0 and width % out_w == 0:
            # Windows of one size that tile the input (global average pooling among them):
            # plain tile means, as AvgPool2d's fast path.
            self._tile = (height // out_h, width // out_w)
            out = _tiles(x4, self._tile, out_h, out_w).mean(dim=(3, 5))
            return self.finish_forward(from_planes(out, form))
        self._tile = None
        rows, row_lengths = adaptive_windows(height, out_h, x4.device)
        cols, col_lengths = adaptive_windows(width, out_w, x4.device)
        rows_valid = _valid_entries(row_lengths, rows.shape[1])
        cols_valid = _valid_entries(col_lengths, cols.shape[1])
        area = (row_lengths.unsqueeze(1) * col_lengths.unsqueeze(0)).to(x4.dtype)
        sums = _window_sums(_window_sums(x4, 2, rows, rows_valid), 3, cols, cols_valid)
        self._windows = (rows, rows_valid, cols, cols_valid, area)
        out = sums / area
        return self.finish_forward(from_planes(out, form))

    def backward(self, dout):
        dout = _pool_dout(self, dout)
        if not self.needs_input_grad:
            return None
        shape, form = self._input_shape
        if self._tile is not None:
            dx = _spread_tile_means(dout, self._tile, shape[2:])
        else:
            rows, rows_valid, cols, cols_valid, area = self._windows
            by_columns = _window_spread(dout / area, 3, cols, cols_valid, shape[3])
            dx = _window_spread(by_columns, 2, rows, rows_valid, shape[2])
        return from_planes(dx, form)


class AdaptiveAvgPool2d(_AdaptiveAvgPoolNd):
    """Mean over PyTorch's adaptive windows (rows [floor(i*H/H_out), ceil((i+1)*H/H_out)),
    likewise columns). Same as ``torch.nn.AdaptiveAvgPool2d``.

    The window sums are separable: with R_i the rows of window i and C_j the columns of
    window j, forward is ``out[i, j] = sum_{r in R_i} sum_{c in C_j} x[r, c] / (|R_i| |C_j|)``,
    summed over rows and then columns (every plane at once); backward gives each input
    entry ``dx[r, c] = sum_{i: r in R_i} sum_{j: c in C_j} dout[i, j] / (|R_i| |C_j|)``.
    A NaN or inf reaches only the windows that hold it, as in torch.

    Shapes: (N, C, H, W) or (C, H, W) -> (N, C, H_out, W_out) or (C, H_out, W_out);
    ``output_size`` an int, a pair, None entries keeping the input's size.
    When H_out divides H and W_out divides W, the windows are equal tiles and the output
    is their mean (the reshape of AvgPool2d's fast path; global average pooling is one).

    Caches: the window indices and masks along both axes (small: (H_out, Kh) and
    (W_out, Kw)) and the window areas (H_out, W_out), or the tile size; the input shape
    and its layout; not the input.
    """

    SPATIAL = 2


class AdaptiveAvgPool1d(_AdaptiveAvgPoolNd):
    """Mean over PyTorch's adaptive windows of a signal: output i covers
    [floor(i*L/L_out), ceil((i+1)*L/L_out)). Same as ``torch.nn.AdaptiveAvgPool1d``.

    ``out[n, c, i] = sum_{l in W_i} x[n, c, l] / |W_i|``; backward gives each entry
    ``sum_{i: l in W_i} dout[n, c, i] / |W_i|``. Computed as AdaptiveAvgPool2d on the signal
    as an image of height 1 (equal tiles when L_out divides L).
    Shapes: (N, C, L) or (C, L) -> (N, C, L_out) or (C, L_out); ``output_size`` an int.
    Caches: the window indices, masks and lengths (or the tile size) and the input shape.
    """

    SPATIAL = 1


def _first_real_along(out_size, kernel, stride, padding, dilation, size, device):
    """For each window along one axis, the offset a of its first entry past the padding,
    ``max(0, ceil((padding - i*stride) / dilation))``, and whether that entry lies inside
    the input at all."""
    starts = torch.arange(out_size, device=device) * stride
    offsets = torch.clamp((padding - starts + dilation - 1) // dilation, min=0)
    inside = (offsets < kernel) & (starts + offsets * dilation < padding + size)
    return offsets, inside


class _LPPoolNd(_AvgPoolNd):
    """Power-average pooling over 1 or 2 spatial axes; see LPPool2d."""

    SAVED_TENSORS = ("_x", "_mean")

    def __init__(self, norm_type, kernel_size, stride=None, ceil_mode=False):
        name = type(self).__name__
        if isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real) or norm_type != norm_type:
            raise ValueError(f"{name}: norm_type must be a real number, got {norm_type!r}")
        if math.isinf(norm_type) or norm_type == 0:
            raise NotImplementedError(f"{name}: norm_type {norm_type!r} is not supported (a finite, non-zero p is)")
        super().__init__(kernel_size, stride, 0, ceil_mode, True, None)
        self.norm_type = norm_type
        self._x = None
        self._mean = None

    def __repr__(self):
        return (
            f"{type(self).__name__}(norm_type={self.norm_type}, kernel_size={_show(self.kernel_size)}, "
            f"stride={_show(self.stride)}, ceil_mode={self.ceil_mode})"
        )

    def forward(self, x, **kw):
        self.check_input(x, "a floating-point tensor", lambda x: x.is_floating_point())
        mean = super().forward(x.pow(self.norm_type))
        window = self._kernel2[0] * self._kernel2[1]
        out = (torch.sign(mean) * torch.relu(mean.abs())).mul(window).pow(1.0 / self.norm_type)
        self._x = x
        self._mean = mean
        return self.finish_forward(out)

    def backward(self, dout):
        self.start_backward(dout)
        p, mean = self.norm_type, self._mean
        window = self._kernel2[0] * self._kernel2[1]
        # Each step is the VJP autograd takes through torch's formula, in its order.
        clipped = torch.relu(mean.abs())
        scaled = (torch.sign(mean) * clipped).mul(window)
        dscaled = dout * ((1.0 / p) * scaled.pow(1.0 / p - 1))
        dclipped = dscaled.mul(window) * torch.sign(mean)
        dabs = torch.where(clipped <= 0, 0, dclipped)
        dmean = dabs * torch.sgn(mean)
        dpowered = super().backward(dmean)
        if dpowered is None:
            return None
        return dpowered * (p * self._x.pow(p - 1))


class LPPool2d(_LPPoolNd):
    """Power-average pooling: the p-norm of each window. Same as ``torch.nn.LPPool2d``
    (finite, non-zero norm_type; torch's ±inf, a max of |x|, is refused).

    Forward, torch's formula: ``m = avg_pool(x^p)`` (windows without padding, ceil_mode as
    AvgPool2d's), ``out = (sign(m) * relu(|m|) * kH*kW)^(1/p)``, i.e. ``(sum_window x^p)^(1/p)``.
    Backward, the chain of that formula's derivatives as autograd takes them:
    ``ds = dout * (1/p) s^(1/p - 1)`` with s = sign(m) relu(|m|) kH*kW,
    ``dm = [relu(|m|) > 0 or NaN] * ds * kH*kW * sign(m) * sign(m)`` (so 0 where the window's
    sum is 0), ``dx = avg_pool_backward(dm) * p x^(p - 1)``.
    Shapes: as AvgPool2d with padding 0. Caches: the input x and the window means m.
    """

    SPATIAL = 2


class LPPool1d(_LPPoolNd):
    """Power-average pooling of a signal: ``out = (sum_window x^p)^(1/p)`` by torch's formula
    (see LPPool2d for it and its VJP). Same as ``torch.nn.LPPool1d`` (finite, non-zero
    norm_type). Shapes: (N, C, L) or (C, L) -> (N, C, L_out) or (C, L_out).
    Caches: the input x and the window means.
    """

    SPATIAL = 1
