"""Sliding windows as columns and back: ``Unfold`` (im2col) and ``Fold`` (col2im, its
adjoint), each torch's namesake, built from the window helpers the convolutions use."""

import torch
import torch.nn.functional as F

from .base import Layer
from ._windows import add_into_windows, pair, window_output_size, window_view

__all__ = [
    "Fold",
    "Unfold",
]


class _Windows(Layer):
    """The window arguments Fold and Unfold share, each an int or a pair, as torch."""

    def __init__(self, kernel_size, dilation, padding, stride):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = pair(kernel_size, "kernel_size", name, 1)
        self.dilation = pair(dilation, "dilation", name, 1)
        self.padding = pair(padding, "padding", name, 0)
        self.stride = pair(stride, "stride", name, 1)
        self._form = None

    def window_counts(self, height, width):
        """Window positions along H and W of an (H, W) image; ValueError naming the layer
        when there is none."""
        counts = tuple(
            window_output_size(size, k, s, p, d)
            for size, k, s, p, d in zip((height, width), self.kernel_size, self.stride, self.padding, self.dilation)
        )
        if min(counts) < 1:
            raise ValueError(
                f"{self!r}: the dilated kernel {self.kernel_size} (dilation {self.dilation}) does not fit "
                f"in the padded image {(height, width)} (padding {self.padding})"
            )
        return counts

    def columns(self, image):
        """(N, C, H, W) -> (N, C kH kW, L): every window of the zero-padded image as a column."""
        p_h, p_w = self.padding
        padded = F.pad(image, (p_w, p_w, p_h, p_h))
        windows = window_view(padded, self.kernel_size, self.stride, self.dilation)
        batch, channels, k_h, k_w, count_h, count_w = windows.shape
        return windows.reshape(batch, channels * k_h * k_w, count_h * count_w)

    def image(self, columns, channels, height, width):
        """(N, C kH kW, L) -> (N, C, H, W): each column added back at its window's place
        (overlaps sum), the padding cropped: the adjoint of ``columns``."""
        (k_h, k_w), (p_h, p_w) = self.kernel_size, self.padding
        count_h, count_w = self.window_counts(height, width)
        batch = columns.shape[0]
        padded = torch.zeros(
            batch, channels, height + 2 * p_h, width + 2 * p_w, dtype=columns.dtype, device=columns.device
        )
        patches = columns.reshape(batch, channels, k_h, k_w, count_h, count_w)
        add_into_windows(padded, patches, self.kernel_size, self.stride, self.dilation)
        return padded[:, :, p_h : p_h + height, p_w : p_w + width]

    def options(self):
        return (
            f"kernel_size={self.kernel_size}, dilation={self.dilation}, padding={self.padding}, stride={self.stride}"
        )


class Unfold(_Windows):
    """Extracts sliding windows as columns (im2col):
    ``out[n, (c kH + a) kW + b, i W_out + j] = x_pad[n, c, i s_h + a d_h, j s_w + b d_w]``
    with x_pad the input zero-padded by ``padding``. Same as ``torch.nn.Unfold``.

    Backward: the adjoint (col2im, Fold): each column of dout is added back at its
    window's place, overlaps summing, and the padding cropped.
    Shapes: (N, C, H, W) -> (N, C kH kW, L) with L = H_out W_out (the windows' count per
    axis ``floor((H + 2p - d (k - 1) - 1) / s) + 1``); unbatched (C, H, W) -> (C kH kW, L).
    Caches: the input's shape.
    """

    def __init__(self, kernel_size, dilation=1, padding=0, stride=1):
        super().__init__(kernel_size, dilation, padding, stride)

    def __repr__(self):
        return f"Unfold({self.options()})"

    def forward(self, x, **kw):
        self.check_input(x, "(N, C, H, W) or (C, H, W)", lambda x: x.dim() in (3, 4))
        unbatched = x.dim() == 3
        image = x.unsqueeze(0) if unbatched else x
        self.window_counts(image.shape[2], image.shape[3])
        self._form = (unbatched, tuple(image.shape[1:]))
        out = self.columns(image)
        return self.finish_forward(out[0] if unbatched else out)

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        unbatched, (channels, height, width) = self._form
        columns = dout.unsqueeze(0) if unbatched else dout
        dx = self.image(columns, channels, height, width)
        return dx[0] if unbatched else dx


class Fold(_Windows):
    """Adds columns back into an image at their sliding windows' places (col2im), the
    adjoint of Unfold: ``out = sum over windows`` of each column placed at its window,
    overlaps summing, then the padding cropped. Same as ``torch.nn.Fold``.

    Backward: the windows of the zero-padded dout as columns (im2col, Unfold):
    ``dx[n, (c kH + a) kW + b, i W_out + j] = dout_pad[n, c, i s_h + a d_h, j s_w + b d_w]``.
    Shapes: (N, C kH kW, L) -> (N, C, H, W) with (H, W) = ``output_size`` and L the number
    of windows of an (H, W) image; unbatched (C kH kW, L) -> (C, H, W).
    Caches: whether the input was unbatched.
    """

    def __init__(self, output_size, kernel_size, dilation=1, padding=0, stride=1):
        super().__init__(kernel_size, dilation, padding, stride)
        self.output_size = pair(output_size, "output_size", "Fold", 1)

    def __repr__(self):
        return f"Fold(output_size={self.output_size}, {self.options()})"

    def forward(self, x, **kw):
        count_h, count_w = self.window_counts(*self.output_size)
        k_h, k_w = self.kernel_size
        expected = f"(N, C * {k_h * k_w}, {count_h * count_w}) or (C * {k_h * k_w}, {count_h * count_w})"
        self.check_input(
            x,
            expected,
            lambda x: x.dim() in (2, 3) and x.shape[-2] % (k_h * k_w) == 0 and x.shape[-1] == count_h * count_w,
        )
        unbatched = x.dim() == 2
        columns = x.unsqueeze(0) if unbatched else x
        self._form = unbatched
        out = self.image(columns, columns.shape[1] // (k_h * k_w), *self.output_size)
        return self.finish_forward(out[0] if unbatched else out)

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        unbatched = self._form
        image = dout.unsqueeze(0) if unbatched else dout
        dx = self.columns(image)
        return dx[0] if unbatched else dx
