"""2-D nearest-neighbour upsampling, the "up" step of U-Net-style models."""

from .base import Layer
from ._windows import pair

__all__ = [
    "Upsample",
]


class Upsample(Layer):
    """Repeats every pixel ``scale_factor`` times along H and W:
    ``out[n, c, i, j] = x[n, c, i // s_h, j // s_w]``.
    Same as ``torch.nn.Upsample(scale_factor=s, mode='nearest')`` for integer factors.

    Backward: each input pixel receives the sum of dout over the s_h x s_w block it was
    copied to: ``dx = dout.reshape(N, C, H, s_h, W, s_w).sum((3, 5))``.
    Shapes: (N, C, H, W) -> (N, C, H * s_h, W * s_w); batched only, since
    torch.nn.Upsample reads a 3-D input as (N, C, L), not as one (C, H, W) image.
    Caches: nothing (dout's shape tells backward everything).

    Example::

        >>> import torch
        >>> from nnlab.layers import Upsample
        >>> up = Upsample(scale_factor=2)
        >>> up(torch.tensor([[[[1.0, 2.0]]]]))
        tensor([[[[1., 1., 2., 2.],
                  [1., 1., 2., 2.]]]])
        >>> up.backward(torch.ones(1, 1, 2, 4))      # each pixel gathers the gradient of its 2 x 2 copies
        tensor([[[[4., 4.]]]])
    """

    def __init__(self, scale_factor=2):
        super().__init__()
        self.scale_factor = pair(scale_factor, "scale_factor", "Upsample", 1)

    def __repr__(self):
        return f"Upsample(scale_factor={self.scale_factor})"

    def forward(self, x, **kw):
        self.check_input(x, "(N, C, H, W)", lambda x: x.dim() == 4)
        batch, channels, height, width = x.shape
        scale_h, scale_w = self.scale_factor
        blocks = x[:, :, :, None, :, None].expand(batch, channels, height, scale_h, width, scale_w)
        return self.finish_forward(blocks.reshape(batch, channels, height * scale_h, width * scale_w))

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        batch, channels, out_h, out_w = dout.shape
        scale_h, scale_w = self.scale_factor
        blocks = dout.reshape(batch, channels, out_h // scale_h, scale_h, out_w // scale_w, scale_w)
        return blocks.sum(dim=(3, 5))
