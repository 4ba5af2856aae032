"""Upsampling of (N, C, H, W) images and (N, C, L) signals: nearest-neighbour (any
scale), linear and bilinear interpolation, as ``torch.nn.Upsample``,
``UpsamplingNearest2d`` and ``UpsamplingBilinear2d`` compute them."""

import math
import numbers

import torch

from .base import Layer, checked_bool
from ._windows import pair

__all__ = [
    "Upsample",
    "UpsamplingBilinear2d",
    "UpsamplingNearest2d",
]

# The number of spatial dimensions each mode works on.
MODES = {"nearest": 2, "linear": 1, "bilinear": 2}
SHAPES = {1: "(N, C, L)", 2: "(N, C, H, W)"}


def source_scale(in_size, out_size, scale, dtype):
    """torch's ``compute_scales_value``: 1 / scale_factor when one is used, else
    in_size / out_size, as a number of ``dtype`` (torch computes the indices in it)."""
    if scale is not None and scale > 0:
        return torch.tensor(1.0 / scale, dtype=torch.float64).to(dtype)
    return torch.tensor(in_size, dtype=dtype) / out_size


def nearest_indices(in_size, out_size, scale):
    """torch's ``nearest_idx``: the source row of each output row, ``min(floor(o s),
    in - 1)`` with s in float32 (and o itself, or o // 2, for sizes kept or doubled)."""
    rows = torch.arange(out_size)
    if out_size == in_size:
        return rows
    if out_size == 2 * in_size:
        return rows // 2
    s = source_scale(in_size, out_size, scale, torch.float32)
    return torch.floor(rows.to(torch.float32) * s).long().clamp(max=in_size - 1)


def linear_indices(in_size, out_size, scale, align_corners, dtype):
    """torch's source indices and weights of linear interpolation along one axis, in
    ``dtype``: the source position ``src = s o`` (align_corners) or
    ``max(s (o + 0.5) - 0.5, 0)``, its two neighbours i0 = floor(src) (at most in - 1) and
    i1 = i0 + 1 (i0 at the last row), and weights ``l1 = src - i0``, ``l0 = 1 - l1``."""
    rows = torch.arange(out_size, dtype=dtype)
    if out_size == in_size:
        # torch keeps such an axis whatever the scale, as 1 * x[o] + 0 * x[o] (an infinity becomes NaN)
        same = torch.arange(out_size)
        return same, same, torch.ones(out_size, dtype=dtype), torch.zeros(out_size, dtype=dtype)
    if align_corners:
        s = torch.tensor(in_size - 1, dtype=dtype) / (out_size - 1) if out_size > 1 else torch.tensor(0, dtype=dtype)
        source = s * rows
    else:
        s = source_scale(in_size, out_size, scale, dtype)
        source = torch.clamp(fused_source(s.item(), out_size, dtype), min=0)
    first = torch.floor(source).long().clamp(max=in_size - 1)
    second = first + (first < in_size - 1).long()
    weight = torch.clamp(source - first, 0, 1)
    return first, second, 1 - weight, weight


def fused_source(s, out_size, dtype):
    """``s (o + 0.5) - 0.5`` for every output row o, rounded once to ``dtype``, as torch's
    compiled kernel computes it (a fused multiply-add). In float32 the product is exact in
    float64; in float64 s is split into two halves of 26 bits (Veltkamp), whose products
    with o + 0.5 are exact, so that only the final sum rounds."""
    shifted = torch.arange(out_size, dtype=torch.float64) + 0.5
    if dtype != torch.float64:
        return (s * shifted - 0.5).to(dtype)
    spread = 134217729.0 * s  # 2^27 + 1
    high = spread - (spread - s)
    low = s - high
    return (high * shifted - 0.5) + low * shifted


def along(weights, dim, ndim):
    """``weights`` (one per row of axis ``dim``) shaped to broadcast along that axis."""
    shape = [1] * ndim
    shape[dim] = -1
    return weights.reshape(shape)


class Upsample(Layer):
    """Upsamples (N, C, H, W) images ('nearest', 'bilinear') or (N, C, L) signals
    ('linear') to ``size`` or by ``scale_factor``. Same as ``torch.nn.Upsample``, with the
    same arguments in the same order (``Upsample(2)`` is an output of size 2, as in torch;
    write ``Upsample(scale_factor=2)`` for twice the size); without either, the scale is 2
    (torch refuses to run).

    Forward, per spatial axis (W, then H), with out = size or floor(in * scale_factor):
    - 'nearest', integer scales: ``out[.., i, j] = x[.., i // s_h, j // s_w]``;
    - 'nearest', otherwise: row ``o`` copies row ``min(floor(o * t), in - 1)`` with
      t = 1 / scale_factor (in/out with ``size`` or ``recompute_scale_factor=True``), in
      float32, torch's formula;
    - 'linear', 'bilinear': ``out[o] = l0 x[i0] + l1 x[i1]`` at the source position
      ``src = t o`` (``align_corners=True``, t = (in - 1) / (out - 1)) or
      ``max(t (o + 1/2) - 1/2, 0)``, i0 = floor(src), i1 = i0 + 1 (i0 at the edge),
      l1 = src - i0, l0 = 1 - l1, in the input's dtype (src rounded once, as torch's fused
      multiply-add); bilinear is this along W and then along H, torch's grouping; along an
      axis whose size stays, whatever the scale, ``out[o] = 1 x[o] + 0 x[o]`` as in torch
      (an infinity there becomes NaN). Where s (o + 1/2) - 1/2 lies within one rounding of
      an integer, torch 2.13's compiled kernel rounds it once at some rows and twice at
      others; nnlab always once: a weight of about 1e-16 where torch's is 0 (or the reverse),
      which changes only what an infinite input or dout gives there (inf or NaN).
    Each axis is gathered by index (``index_select``) rather than multiplied by an
    (out, in) weight matrix, so that a NaN or an infinity reaches the outputs that read
    it, and only those, as in torch.
    Backward, per axis in the reverse order: each output row's gradient, times its
    weight, is added into the input rows it read (``index_add``): ``dx[i0] += l0 dout[o]``,
    ``dx[i1] += l1 dout[o]`` (nearest: weight 1); for integer nearest scales, the sum of
    dout over each s_h x s_w block.
    Shapes: (N, C, H, W) -> (N, C, H_out, W_out) ('nearest', 'bilinear'), or (N, C, L) ->
    (N, C, L_out) ('linear'); batched only, as torch reads a 3-D input as (N, C, L). A 1-d
    or 3-d nearest upsampling, and the modes 'bicubic', 'trilinear', 'area' and
    'nearest-exact', are refused with an error.
    Caches: the input's spatial shape and each axis' indices and weights.

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

    def __init__(self, size=None, scale_factor=None, mode="nearest", align_corners=None, recompute_scale_factor=None):
        super().__init__()
        if mode not in MODES:
            raise NotImplementedError(
                f"Upsample: mode={mode!r} is not supported; supported: {', '.join(map(repr, MODES))}"
            )
        self.mode = mode
        spatial = MODES[mode]
        if size is not None and scale_factor is not None:
            raise ValueError("Upsample: give size or scale_factor, not both (as torch)")
        if mode == "nearest" and align_corners is not None:
            raise ValueError("Upsample: align_corners applies to 'linear' and 'bilinear' only (as torch)")
        self.align_corners = None if align_corners is None else checked_bool("Upsample", "align_corners", align_corners)
        if recompute_scale_factor is not None:
            recompute_scale_factor = checked_bool("Upsample", "recompute_scale_factor", recompute_scale_factor)
            if recompute_scale_factor and size is not None:
                raise ValueError("Upsample: recompute_scale_factor is not meaningful with an explicit size (as torch)")
        self.recompute_scale_factor = recompute_scale_factor
        self.size = None if size is None else _sizes(size, spatial)
        if size is None:
            scale_factor = 2 if scale_factor is None else scale_factor
            self.scale_factor = _scale_factors(scale_factor, spatial)
        else:
            self.scale_factor = None
        self._cache = None

    def __repr__(self):
        if self._integer_nearest():
            return f"Upsample(scale_factor={self.scale_factor})"
        what = f"size={self.size}" if self.size is not None else f"scale_factor={self.scale_factor}"
        options = [what, f"mode={self.mode!r}"]
        if self.align_corners is not None:
            options.append(f"align_corners={self.align_corners}")
        if self.recompute_scale_factor is not None:
            options.append(f"recompute_scale_factor={self.recompute_scale_factor}")
        return f"{type(self).__name__}({', '.join(options)})"

    def _integer_nearest(self):
        return (
            self.mode == "nearest"
            and self.size is None
            and all(isinstance(s, int) for s in self.scale_factor)
        )

    def forward(self, x, **kw):
        spatial = MODES[self.mode]
        self.check_input(x, SHAPES[spatial], lambda x: x.dim() == spatial + 2)
        in_sizes = tuple(x.shape[2:])
        if self._integer_nearest():
            self._cache = (in_sizes, None)
            return self.finish_forward(_repeat_blocks(x, self.scale_factor))
        out_sizes = self._output_sizes(in_sizes)
        scales = self.scale_factor if self.size is None and not self.recompute_scale_factor else (None,) * spatial
        steps = []
        out = x
        for axis in reversed(range(spatial)):
            dim = axis + 2
            if self.mode == "nearest":
                step = (dim, nearest_indices(in_sizes[axis], out_sizes[axis], scales[axis]).to(x.device))
                out = out.index_select(dim, step[1])
            else:
                first, second, weight0, weight1 = linear_indices(
                    in_sizes[axis], out_sizes[axis], scales[axis], bool(self.align_corners), x.dtype
                )
                step = (dim, first.to(x.device), second.to(x.device), weight0.to(x.device), weight1.to(x.device))
                out = out.index_select(dim, step[1]) * along(step[3], dim, x.dim()) + out.index_select(
                    dim, step[2]
                ) * along(step[4], dim, x.dim())
            steps.append(step)
        self._cache = (in_sizes, steps)
        return self.finish_forward(out)

    def _output_sizes(self, in_sizes):
        """size, or floor(in * scale_factor) per axis (torch's, in double precision);
        ValueError naming the layer when one is 0."""
        if self.size is not None:
            return self.size
        out_sizes = tuple(math.floor(float(size) * scale) for size, scale in zip(in_sizes, self.scale_factor))
        if min(out_sizes) < 1 <= min(in_sizes):
            raise ValueError(
                f"{self!r}: the output size {out_sizes} of the input size {in_sizes} has an empty axis "
                "(as torch refuses)"
            )
        return out_sizes

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        in_sizes, steps = self.cached("_cache")
        if steps is None:
            return _sum_blocks(dout, self.scale_factor)
        grad = dout
        for step in reversed(steps):
            dim = step[0]
            shape = list(grad.shape)
            shape[dim] = in_sizes[dim - 2]
            into = torch.zeros(shape, dtype=grad.dtype, device=grad.device)
            if len(step) == 2:
                grad = into.index_add_(dim, step[1], grad)
            else:
                _, first, second, weight0, weight1 = step
                into.index_add_(dim, first, grad * along(weight0, dim, grad.dim()))
                grad = into.index_add_(dim, second, grad * along(weight1, dim, grad.dim()))
        return grad


def _repeat_blocks(x, scale):
    """Integer nearest upsampling: every pixel copied into an s_h x s_w block."""
    batch, channels, height, width = x.shape
    scale_h, scale_w = scale
    blocks = x[:, :, :, None, :, None].expand(batch, channels, height, scale_h, width, scale_w)
    return blocks.reshape(batch, channels, height * scale_h, width * scale_w)


def _sum_blocks(dout, scale):
    """The adjoint of ``_repeat_blocks``: dout summed over each s_h x s_w block."""
    batch, channels, out_h, out_w = dout.shape
    scale_h, scale_w = scale
    return dout.reshape(batch, channels, out_h // scale_h, scale_h, out_w // scale_w, scale_w).sum(dim=(3, 5))


def _sizes(size, spatial):
    """An output size per spatial axis from an int or a tuple of ``spatial`` ints >= 1."""
    sizes = (size,) * spatial if isinstance(size, numbers.Integral) and not isinstance(size, bool) else size
    if not (isinstance(sizes, (tuple, list)) and len(sizes) == spatial and all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in sizes
    )):
        raise ValueError(f"Upsample: size must be an int or {spatial} ints >= 1, got {size!r}")
    return tuple(int(s) for s in sizes)


def _scale_factors(scale_factor, spatial):
    """A scale per spatial axis from a number or a tuple of ``spatial`` positive finite
    numbers; integers stay ints (the integer nearest path), other numbers become floats."""
    if spatial == 2 and isinstance(scale_factor, numbers.Integral) and not isinstance(scale_factor, bool):
        return pair(scale_factor, "scale_factor", "Upsample", 1)
    scales = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor,) * spatial

    def valid(s):
        return isinstance(s, numbers.Real) and not isinstance(s, bool) and math.isfinite(s) and s > 0

    if len(scales) != spatial or not all(valid(s) for s in scales):
        raise ValueError(
            f"Upsample: scale_factor must be an int or a pair of ints >= 1, or positive numbers "
            f"({spatial} for mode {'linear' if spatial == 1 else 'nearest or bilinear'}), got {scale_factor!r}"
        )
    return tuple(int(s) if isinstance(s, numbers.Integral) else float(s) for s in scales)


class UpsamplingNearest2d(Upsample):
    """Nearest-neighbour upsampling of (N, C, H, W) images to ``size`` or by
    ``scale_factor``: ``Upsample(size, scale_factor, mode='nearest')`` (see Upsample
    for the forward and backward formulas, shapes and cache). Same as
    ``torch.nn.UpsamplingNearest2d``, arguments in torch's positions; one of the two is
    required (torch refuses the call without either).
    """

    def __init__(self, size=None, scale_factor=None):
        if size is None and scale_factor is None:
            raise ValueError("UpsamplingNearest2d: give size or scale_factor (as torch)")
        super().__init__(size, scale_factor, "nearest")

    def __repr__(self):
        return f"UpsamplingNearest2d({_size_or_scale(self)})"


class UpsamplingBilinear2d(Upsample):
    """Bilinear upsampling of (N, C, H, W) images with aligned corners to ``size`` or by
    ``scale_factor``: ``Upsample(size, scale_factor, mode='bilinear', align_corners=True)``
    (see Upsample for the forward and backward formulas, shapes and cache).
    Same as ``torch.nn.UpsamplingBilinear2d``, arguments in torch's positions; one of the
    two is required (torch refuses the call without either).
    """

    def __init__(self, size=None, scale_factor=None):
        if size is None and scale_factor is None:
            raise ValueError("UpsamplingBilinear2d: give size or scale_factor (as torch)")
        super().__init__(size, scale_factor, "bilinear", True)

    def __repr__(self):
        return f"UpsamplingBilinear2d({_size_or_scale(self)})"


def _size_or_scale(layer):
    return f"size={layer.size}" if layer.size is not None else f"scale_factor={layer.scale_factor}"
