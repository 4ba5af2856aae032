"""2-D pooling: max and average over sliding windows, and their adaptive forms.

Every layer takes (N, C, H, W) or unbatched (C, H, W), like torch.nn, and works on all
N * C planes at once (no Python loop over samples, channels or positions).
"""

import torch
import torch.nn.functional as F

from .base import Layer
from .windows import check_2d_input, check_windows_fit, pair, window_view


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


class _Pool2d(Layer):
    """Shared argument handling of MaxPool2d and AvgPool2d."""

    def __init__(self, kernel_size, stride, padding, dilation):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = pair(kernel_size, "kernel_size", name, 1)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", name, 1)
        self.padding = pair(padding, "padding", name, 0)
        self.dilation = pair(dilation, "dilation", name, 1)
        _check_pool_args(name, self.kernel_size, self.stride, self.padding)
        self._input_shape = None

    def _describe(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def output_shape(self, shape):
        """(C, H_out, W_out) for an input of shape (C, H, W); ValueError if impossible."""
        channels, height, width = shape
        windows = (self.kernel_size, self.stride, self.padding, self.dilation)
        out_h, out_w = check_windows_fit(self, height, width, *windows)
        return (channels, out_h, out_w)

    def _prepare(self, x):
        """x as 4-D, whether it was unbatched, and the output (H, W), after the checks."""
        x4, unbatched = check_2d_input(self, x)
        out_h, out_w = check_windows_fit(
            self, x4.shape[2], x4.shape[3], self.kernel_size, self.stride, self.padding, self.dilation
        )
        return x4, unbatched, out_h, out_w

    def _fold(self, dcols, planes_shape):
        """Sums window columns (N*C, kH*kW, L) back into planes (N, C, H, W); fold drops
        what lands on the padding."""
        batch, channels, height, width = planes_shape
        dx = F.fold(
            dcols, (height, width), self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride
        )
        return dx.reshape(batch, channels, height, width)


class MaxPool2d(_Pool2d):
    """Maximum over each (dilated) window, the padding counting as -inf.
    Same as ``torch.nn.MaxPool2d`` (ceil_mode=False).

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
    Backward: the whole ``dout[n, c, i, j]`` goes to the window's argmax, summed where
    windows overlap (one ``scatter_add_``). Ties go where PyTorch sends them: to the first
    maximum in row-major order inside the window (a later offset wins only if strictly
    greater).

    Shapes: (N, C, H, W) or (C, H, W) -> (N, C, H_out, W_out) or (C, H_out, W_out), with
    ``H_out = floor((H + 2p - d(k - 1) - 1) / s) + 1``, likewise W_out.
    Caches: the flat position of every output's argmax in its padded plane (int64, the
    output's shape) and the input shape; not the input.
    """

    SAVED_TENSORS = ("_argmax",)

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1):
        super().__init__(kernel_size, stride, padding, dilation)
        self._argmax = None

    def __repr__(self):
        text = self._describe()
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        return f"MaxPool2d({text})"

    def forward(self, x, **kw):
        x4, unbatched, out_h, out_w = self._prepare(x)
        pad_h, pad_w = self.padding
        padded = x4
        if pad_h or pad_w:
            padded = F.pad(x4, (pad_w, pad_w, pad_h, pad_h), value=float("-inf"))
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
                # mask was several times slower, measured).
                greater = torch.gt(views[k], out).view(torch.uint8).to(index_dtype)
                index = torch.maximum(index, greater * k)
                out = torch.maximum(out, views[k])
        index = self._torch_choice_at_nonfinite(views, out, index, x4.shape[2:])
        self._argmax = self._positions(index, padded.shape[3])
        self._input_shape = (x4.shape, unbatched)
        # The output is read from the input at the argmax rather than taken from the running
        # maximum: the same values, but autograd through this forward then sends the whole
        # gradient to that one entry, ties included, as torch.nn.MaxPool2d does (through a
        # chain of torch.maximum it would split the gradient between tied entries).
        out = padded.flatten(2).gather(2, self._argmax.flatten(2)).reshape(out.shape)
        return self.finish_forward(out[0] if unbatched else out)

    def _torch_choice_at_nonfinite(self, views, out, index, input_hw):
        """The running argmax above, corrected where torch chooses otherwise (each check is
        one pass over the output, the fix-up only runs when needed): torch takes the
        *last* NaN of a window (it moves on ``val > max or isnan(val)``), and for a window
        whose real entries are all -inf its first real entry, never the -inf padding."""
        # A NaN anywhere makes the sum NaN (so may inf - inf: then the fix-up changes nothing).
        maybe_nan = bool(out.sum().isnan())
        if maybe_nan:
            for k, view in enumerate(views):
                index = torch.where(view.isnan(), k, index)
        if self.padding != (0, 0) and out.numel() and (maybe_nan or out.amin() == float("-inf")):
            all_minus_inf = out == float("-inf")
            if all_minus_inf.any():
                first, has_real = self._first_real_offsets(out.shape[2], out.shape[3], input_hw, out.device)
                index = torch.where(all_minus_inf & has_real, first.to(index.dtype), index)
        return index

    def _first_real_offsets(self, out_h, out_w, input_hw, device):
        """(H_out, W_out) offsets k = a*kW + b of each window's first non-padding entry in
        row-major order, and whether the window has one at all."""
        rows, rows_ok = _first_real_along(out_h, self.kernel_size[0], self.stride[0], self.padding[0], self.dilation[0], input_hw[0], device)
        cols, cols_ok = _first_real_along(out_w, self.kernel_size[1], self.stride[1], self.padding[1], self.dilation[1], input_hw[1], device)
        first = rows.reshape(-1, 1) * self.kernel_size[1] + cols.reshape(1, -1)
        return first, rows_ok.reshape(-1, 1) & cols_ok.reshape(1, -1)

    def _window_views(self, padded):
        """The kH*kW views (N, C, H_out, W_out) of the windows' entries, one per kernel
        offset (a, b) in row-major order: ``window_view`` (``Tensor.unfold``, no copy)
        indexed at (a, b). With a column stride > 1 the kW column sets (offset b's
        columns of every window) are first copied to contiguous tensors, so that every
        later pass reads unit-stride rows."""
        (k_h, k_w), (s_h, s_w), (d_h, d_w) = self.kernel_size, self.stride, self.dilation
        if s_w == 1:
            windows = window_view(padded, self.kernel_size, self.stride, self.dilation)
            return [windows[:, :, a, b] for a in range(k_h) for b in range(k_w)]
        column_sets = window_view(padded, (1, k_w), (1, s_w), (1, d_w))
        row_windows = [
            window_view(column_sets[:, :, 0, b].contiguous(), (k_h, 1), (s_h, 1), (d_h, 1)) for b in range(k_w)
        ]
        return [row_windows[b][:, :, a, 0] for a in range(k_h) for b in range(k_w)]

    def _positions(self, index, padded_w):
        """Offset indices (N, C, H_out, W_out) as flat int64 positions in the padded plane."""
        (k_h, k_w), (s_h, s_w), (d_h, d_w) = self.kernel_size, self.stride, self.dilation
        device = index.device
        table = [a * d_h * padded_w + b * d_w for a in range(k_h) for b in range(k_w)]
        table = torch.tensor(table, dtype=torch.int64, device=device)
        positions = table.index_select(0, index.reshape(-1).to(torch.int32)).reshape(index.shape)
        out_h, out_w = index.shape[2:]
        rows = torch.arange(out_h, device=device).reshape(out_h, 1) * (s_h * padded_w)
        cols = torch.arange(out_w, device=device).reshape(1, out_w) * s_w
        return positions.add_(rows + cols)

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        positions = self._argmax
        shape, unbatched = self._input_shape
        if unbatched:
            dout = dout.unsqueeze(0)
        batch, channels, height, width = shape
        pad_h, pad_w = self.padding
        padded_h, padded_w = height + 2 * pad_h, width + 2 * pad_w
        planes = batch * channels
        outputs = positions.shape[2] * positions.shape[3]
        dpadded = torch.zeros(planes, padded_h * padded_w, dtype=dout.dtype, device=dout.device)
        dpadded.scatter_add_(1, positions.reshape(planes, outputs), dout.reshape(planes, outputs))
        dx = dpadded.reshape(batch, channels, padded_h, padded_w)
        if pad_h or pad_w:
            dx = dx[:, :, pad_h : pad_h + height, pad_w : pad_w + width].contiguous()
        return dx[0] if unbatched else dx


class AvgPool2d(_Pool2d):
    """Mean over each window, the zero padding counted in the divisor by default.
    Same as ``torch.nn.AvgPool2d`` (ceil_mode=False, divisor_override=None).

    Forward: ``out[n, c, i, j] = sum_{a, b} x_pad[n, c, i*s + a, j*s + b] / D`` with
    D = kH*kW, or (``count_include_pad=False``) the number of non-padding entries.
    Backward: each window entry gets ``dout[n, c, i, j] / D`` (summed where windows
    overlap; what falls on the padding is dropped).

    Shapes: as MaxPool2d. Caches: the input shape (and, with count_include_pad=False,
    the divisor of every output position, (H_out*W_out,)); not the input.
    """

    def __init__(self, kernel_size, stride=None, padding=0, count_include_pad=True):
        super().__init__(kernel_size, stride, padding, 1)
        self.count_include_pad = bool(count_include_pad)
        self._divisor = None

    def __repr__(self):
        text = self._describe()
        if not self.count_include_pad:
            text += ", count_include_pad=False"
        return f"AvgPool2d({text})"

    def _divisors(self, height, width, like):
        """Divisor per output position, (1, L): kH*kW, or the count of real entries."""
        window = self.kernel_size[0] * self.kernel_size[1]
        if self.count_include_pad or self.padding == (0, 0):
            return window
        ones = torch.ones(1, 1, height, width, dtype=like.dtype, device=like.device)
        return F.unfold(ones, self.kernel_size, padding=self.padding, stride=self.stride).sum(dim=1)

    def forward(self, x, **kw):
        x4, unbatched, out_h, out_w = self._prepare(x)
        batch, channels, height, width = x4.shape
        if _is_tiling(self.kernel_size, self.stride, self.padding, self.dilation):
            self._divisor = self.kernel_size[0] * self.kernel_size[1]
            out = _tiles(x4, self.kernel_size, out_h, out_w).mean(dim=(3, 5))
        else:
            planes = x4.reshape(batch * channels, 1, height, width)
            cols = F.unfold(planes, self.kernel_size, padding=self.padding, stride=self.stride)
            self._divisor = self._divisors(height, width, x4)
            out = (cols.sum(dim=1) / self._divisor).reshape(batch, channels, out_h, out_w)
        self._input_shape = (x4.shape, unbatched)
        return self.finish_forward(out[0] if unbatched else out)

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        shape, unbatched = self._input_shape
        if unbatched:
            dout = dout.unsqueeze(0)
        window = self.kernel_size[0] * self.kernel_size[1]
        if _is_tiling(self.kernel_size, self.stride, self.padding, self.dilation):
            dx = _spread_tile_means(dout, self.kernel_size, shape[2:])
        else:
            batch, channels, out_h, out_w = dout.shape
            dshare = dout.reshape(batch * channels, 1, out_h * out_w) / self._divisor
            dx = self._fold(dshare.expand(-1, window, -1), shape)
        return dx[0] if unbatched else dx


def _adaptive_size(output_size, owner):
    """output_size as a pair whose entries are ints >= 1 or None (keep the input's size)."""
    if output_size is None or isinstance(output_size, int):
        output_size = (output_size, output_size)
    ok = isinstance(output_size, (tuple, list)) and len(output_size) == 2
    ok = ok and all(s is None or (isinstance(s, int) and s >= 1) for s in output_size)
    if not ok:
        raise ValueError(f"{owner}: output_size must be an int >= 1, None, or a pair of them, got {output_size!r}")
    return tuple(output_size)


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


class _AdaptivePool2d(Layer):
    """Shared argument handling of the adaptive pools."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = _adaptive_size(output_size, type(self).__name__)

    def __repr__(self):
        return f"{type(self).__name__}(output_size={self.output_size})"

    def _out_hw(self, height, width):
        out_h = height if self.output_size[0] is None else self.output_size[0]
        out_w = width if self.output_size[1] is None else self.output_size[1]
        return out_h, out_w

    def output_shape(self, shape):
        """(C, H_out, W_out) for an input of shape (C, H, W)."""
        channels, height, width = shape
        if height < 1 or width < 1:
            raise ValueError(f"{self!r}: input height and width must be >= 1, got {(height, width)}")
        return (channels, *self._out_hw(height, width))

    def _prepare(self, x):
        x4, unbatched = check_2d_input(self, x)
        self.check_input(x, "non-empty height and width", x4.shape[2] >= 1 and x4.shape[3] >= 1)
        return x4, unbatched, *self._out_hw(x4.shape[2], x4.shape[3])


class AdaptiveMaxPool2d(_AdaptivePool2d):
    """Maximum over PyTorch's adaptive windows: output row i covers input rows
    [floor(i*H/H_out), ceil((i+1)*H/H_out)), likewise columns. Same as
    ``torch.nn.AdaptiveMaxPool2d``.

    Forward: every window is gathered at once as (N, C, H_out, W_out, Kh*Kw) (shorter
    windows repeat their last row/column, which comes after the original in row-major
    order, so the first maximum is always a genuine entry); ``torch.max`` picks it.
    Backward: ``dout`` goes to the argmax's input position (scatter-add: adaptive
    windows may overlap). Ties: first maximum in row-major order, as PyTorch.

    Shapes: (N, C, H, W) or (C, H, W) -> (N, C, H_out, W_out) or (C, H_out, W_out);
    ``output_size`` an int, a pair, None entries keeping the input's size.
    Caches: the flat input position (h*W + w) of every output's maximum (int64, the
    output's shape) and the input shape; not the input.
    """

    SAVED_TENSORS = ("_positions",)

    def __init__(self, output_size):
        super().__init__(output_size)
        self._positions = None
        self._input_shape = None

    def forward(self, x, **kw):
        x4, unbatched, out_h, out_w = self._prepare(x)
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
        self._input_shape = (x4.shape, unbatched)
        return self.finish_forward(out[0] if unbatched else out)

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        positions = self._positions
        shape, unbatched = self._input_shape
        if unbatched:
            dout = dout.unsqueeze(0)
        batch, channels, height, width = shape
        outputs = positions.shape[2] * positions.shape[3]
        dx = torch.zeros(batch, channels, height * width, dtype=dout.dtype, device=dout.device)
        dx.scatter_add_(2, positions.reshape(batch, channels, outputs), dout.reshape(batch, channels, outputs))
        dx = dx.reshape(shape)
        return dx[0] if unbatched else dx


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


class AdaptiveAvgPool2d(_AdaptivePool2d):
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
    and whether it was unbatched; not the input.
    """

    def __init__(self, output_size):
        super().__init__(output_size)
        self._tile = None
        self._windows = None
        self._input_shape = None

    def forward(self, x, **kw):
        x4, unbatched, out_h, out_w = self._prepare(x)
        height, width = x4.shape[2:]
        self._input_shape = (x4.shape, unbatched)
        if height % out_h == 0 and width % out_w == 0:
            # Windows of one size that tile the input (global average pooling among them):
            # plain tile means, as AvgPool2d's fast path.
            self._tile = (height // out_h, width // out_w)
            out = _tiles(x4, self._tile, out_h, out_w).mean(dim=(3, 5))
            return self.finish_forward(out[0] if unbatched else out)
        self._tile = None
        rows, row_lengths = adaptive_windows(height, out_h, x4.device)
        cols, col_lengths = adaptive_windows(width, out_w, x4.device)
        rows_valid = _valid_entries(row_lengths, rows.shape[1])
        cols_valid = _valid_entries(col_lengths, cols.shape[1])
        area = (row_lengths.unsqueeze(1) * col_lengths.unsqueeze(0)).to(x4.dtype)
        sums = _window_sums(_window_sums(x4, 2, rows, rows_valid), 3, cols, cols_valid)
        self._windows = (rows, rows_valid, cols, cols_valid, area)
        out = sums / area
        return self.finish_forward(out[0] if unbatched else out)

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        shape, unbatched = self._input_shape
        if unbatched:
            dout = dout.unsqueeze(0)
        if self._tile is not None:
            dx = _spread_tile_means(dout, self._tile, shape[2:])
        else:
            rows, rows_valid, cols, cols_valid, area = self._windows
            by_columns = _window_spread(dout / area, 3, cols, cols_valid, shape[3])
            dx = _window_spread(by_columns, 2, rows, rows_valid, shape[2])
        return dx[0] if unbatched else dx


def _first_real_along(out_size, kernel, stride, padding, dilation, size, device):
    """For each window along one axis, the offset a of its first entry past the padding,
    ``max(0, ceil((padding - i*stride) / dilation))``, and whether that entry lies inside
    the input at all."""
    starts = torch.arange(out_size, device=device) * stride
    offsets = torch.clamp((padding - starts + dilation - 1) // dilation, min=0)
    inside = (offsets < kernel) & (starts + offsets * dilation < padding + size)
    return offsets, inside
