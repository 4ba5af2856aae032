"""Layers that only move entries: ``PixelShuffle``, ``PixelUnshuffle`` (channels to and
from space) and ``ChannelShuffle``, each torch's namesake. Every one is a reshape, a
permutation and a reshape; its backward is the inverse permutation of dout."""

from .base import Layer, checked_int

__all__ = [
    "ChannelShuffle",
    "PixelShuffle",
    "PixelUnshuffle",
]


def depth_to_space(x, r):
    """(*, C r^2, H, W) -> (*, C, H r, W r): ``out[..., c, h r + i, w r + j] =
    x[..., c r^2 + i r + j, h, w]``."""
    *lead, channels, height, width = x.shape
    blocks = x.reshape(*lead, channels // (r * r), r, r, height, width)
    k = len(lead)
    # (..., c, i, j, h, w) -> (..., c, h, i, w, j)
    order = list(range(k)) + [k, k + 3, k + 1, k + 4, k + 2]
    return blocks.permute(order).reshape(*lead, channels // (r * r), height * r, width * r)


def space_to_depth(x, r):
    """(*, C, H r, W r) -> (*, C r^2, H, W), the inverse of ``depth_to_space``."""
    *lead, channels, height, width = x.shape
    blocks = x.reshape(*lead, channels, height // r, r, width // r, r)
    k = len(lead)
    # (..., c, h, i, w, j) -> (..., c, i, j, h, w)
    order = list(range(k)) + [k, k + 2, k + 4, k + 1, k + 3]
    return blocks.permute(order).reshape(*lead, channels * r * r, height // r, width // r)


class PixelShuffle(Layer):
    """Rearranges channels into space: ``out[..., c, h r + i, w r + j] =
    x[..., c r^2 + i r + j, h, w]`` with r = upscale_factor (sub-pixel convolution's
    last step). Same as ``torch.nn.PixelShuffle``.

    Backward: the inverse rearrangement, ``dx = PixelUnshuffle(r)(dout)``.
    Shapes: (*, C r^2, H, W) -> (*, C, H r, W r), with any number of leading dimensions
    (none: an unbatched (C r^2, H, W) image). Caches: nothing.
    """

    def __init__(self, upscale_factor):
        super().__init__()
        self.upscale_factor = checked_int("PixelShuffle", "upscale_factor", upscale_factor, 1)

    def __repr__(self):
        return f"PixelShuffle(upscale_factor={self.upscale_factor})"

    def forward(self, x, **kw):
        r = self.upscale_factor
        expected = f"(*, C, H, W) with C divisible by upscale_factor ** 2 = {r * r}"
        self.check_input(x, expected, lambda x: x.dim() >= 3 and x.shape[-3] % (r * r) == 0)
        return self.finish_forward(depth_to_space(x, r))

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        return space_to_depth(dout, self.upscale_factor)


class PixelUnshuffle(Layer):
    """Rearranges space into channels: ``out[..., c r^2 + i r + j, h, w] =
    x[..., c, h r + i, w r + j]`` with r = downscale_factor, the inverse of PixelShuffle.
    Same as ``torch.nn.PixelUnshuffle``.

    Backward: the inverse rearrangement, ``dx = PixelShuffle(r)(dout)``.
    Shapes: (*, C, H r, W r) -> (*, C r^2, H, W), with any number of leading dimensions.
    Caches: nothing.
    """

    def __init__(self, downscale_factor):
        super().__init__()
        self.downscale_factor = checked_int("PixelUnshuffle", "downscale_factor", downscale_factor, 1)

    def __repr__(self):
        return f"PixelUnshuffle(downscale_factor={self.downscale_factor})"

    def forward(self, x, **kw):
        r = self.downscale_factor
        expected = f"(*, C, H, W) with H and W divisible by downscale_factor = {r}"
        self.check_input(x, expected, lambda x: x.dim() >= 3 and x.shape[-2] % r == 0 and x.shape[-1] % r == 0)
        return self.finish_forward(space_to_depth(x, r))

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        return depth_to_space(dout, self.downscale_factor)


def shuffle_channels(x, groups, per_group):
    """(N, g k, *) -> (N, k g, *) with g = groups, k = per_group: channel ``a k + b``
    moves to ``b g + a``."""
    batch, _, *rest = x.shape
    return x.reshape(batch, groups, per_group, *rest).transpose(1, 2).reshape(x.shape)


class ChannelShuffle(Layer):
    """Interleaves the channels of ``groups`` groups (ShuffleNet): with C = g k,
    ``out[:, b g + a] = x[:, a k + b]`` for a < g, b < k. Same as ``torch.nn.ChannelShuffle``.

    Backward: the inverse interleaving, a channel shuffle with C / g groups:
    ``dx[:, a k + b] = dout[:, b g + a]``.
    Shapes: (N, C, *) -> same, with at least one dimension after C (torch's rule).
    Caches: nothing.
    """

    def __init__(self, groups):
        super().__init__()
        self.groups = checked_int("ChannelShuffle", "groups", groups, 1)

    def __repr__(self):
        return f"ChannelShuffle(groups={self.groups})"

    def forward(self, x, **kw):
        expected = f"(N, C, *) with at least 3 dimensions and C divisible by groups = {self.groups}"
        self.check_input(x, expected, lambda x: x.dim() >= 3 and x.shape[1] % self.groups == 0)
        return self.finish_forward(shuffle_channels(x, self.groups, x.shape[1] // self.groups))

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        return shuffle_channels(dout, dout.shape[1] // self.groups, self.groups)
