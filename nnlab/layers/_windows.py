"""What the windowed layers share: per-axis arguments, the sliding-window output size
(pooling's ceil_mode included), the input checks and the layouts (a 1-d signal (N, C, L)
worked on as an (N, C, 1, L) image, an unbatched input as a batch of one), and the
windows themselves as a strided view (unfold) with its adjoint (fold)."""

import torch

__all__ = [
    "add_into_windows", "as_plane_pair", "as_planes", "check_2d_input", "check_windows_fit", "from_planes",
    "ntuple", "pair", "pool_output_size", "to_planes", "window_output_size", "window_view",
]

def pair(value, name, owner, minimum):
    """``value`` (an int or a pair of ints) as a pair; ValueError naming ``owner`` unless
    both entries are ints >= ``minimum``."""
    return ntuple(value, 2, name, owner, minimum)


def window_output_size(size, kernel, stride, padding, dilation):
    """Number of window positions along one axis: ``floor((size + 2p - d(k - 1) - 1) / s) + 1``
    (0 or less when the dilated kernel is larger than the padded input)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def check_2d_input(layer, x, channels=None):
    """Checks x is (N, C, H, W) or unbatched (C, H, W), with ``channels`` channels when
    given; returns (x as 4-D, whether it was unbatched)."""
    expected = "(N, C, H, W) or (C, H, W)" if channels is None else f"(N, {channels}, H, W) or ({channels}, H, W)"
    ok = isinstance(x, torch.Tensor) and x.dim() in (3, 4)
    if ok and channels is not None:
        ok = x.shape[-3] == channels
    layer.check_input(x, expected, ok)
    if x.dim() == 3:
        return x.unsqueeze(0), True
    return x, False


def check_windows_fit(layer, height, width, kernel, stride, padding, dilation):
    """Output (height, width) of a sliding window; ValueError naming the layer when the
    dilated kernel does not fit in the padded input. ``padding`` holds one int per axis
    (both sides), or a (before, after) pair per axis."""
    sides = [p if isinstance(p, tuple) else (p, p) for p in padding]
    padded = (height + sum(sides[0]), width + sum(sides[1]))
    out_h = window_output_size(padded[0], kernel[0], stride[0], 0, dilation[0])
    out_w = window_output_size(padded[1], kernel[1], stride[1], 0, dilation[1])
    if out_h < 1 or out_w < 1:
        span = (dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1)
        raise ValueError(
            f"{layer!r}: the (dilated) kernel {span} is larger than the padded input {padded} "
            f"(input {(height, width)}, padding {tuple(padding)})"
        )
    return out_h, out_w


def window_view(padded, kernel, stride, dilation):
    """Every sliding window of ``padded`` (N, C, H, W), as a view (no copy) of shape
    (N, C, kH, kW, H_out, W_out): entry [n, c, a, b, i, j] is
    ``padded[n, c, i*s_h + a*d_h, j*s_w + b*d_w]``. ``Tensor.unfold`` along H and W gives
    the windows of the dilated kernel's span; every d-th entry of a span is the kernel's."""
    (k_h, k_w), (s_h, s_w), (d_h, d_w) = kernel, stride, dilation
    spans = padded.unfold(2, d_h * (k_h - 1) + 1, s_h).unfold(3, d_w * (k_w - 1) + 1, s_w)
    return spans[..., ::d_h, ::d_w].permute(0, 1, 4, 5, 2, 3)


def add_into_windows(dpadded, dpatches, kernel, stride, dilation):
    """The adjoint of ``window_view`` (fold): adds ``dpatches`` (N, C, kH, kW, H_out, W_out)
    into ``dpadded`` (N, C, H, W) at the positions the windows cover, one strided
    addition per kernel offset (a, b), each covering every window at once; where windows
    overlap their contributions sum."""
    windows = window_view(dpadded, kernel, stride, dilation)
    for a in range(kernel[0]):
        for b in range(kernel[1]):
            windows[:, :, a, b].add_(dpatches[:, :, a, b])


def ntuple(value, size, name, owner, minimum):
    """``value`` (an int or ``size`` ints) as a tuple of ``size`` ints; ValueError naming
    ``owner`` unless every entry is an int (not a bool) >= ``minimum``."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * size
    value = tuple(value) if isinstance(value, (tuple, list)) else value
    ok = isinstance(value, tuple) and len(value) == size
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value)
    if not ok:
        kind = "an int or a pair of ints" if size == 2 else f"an int or a tuple of {size} ints"
        raise ValueError(f"{owner}: {name} must be {kind} >= {minimum}, got {value!r}")
    return value


def as_plane_pair(values, spatial, fill):
    """A per-axis tuple of a 1-d (``spatial`` 1) or 2-d layer as the pair the 2-d code
    works with: a 1-d layer's single axis is the width, its height the trivial ``fill``."""
    return tuple(values) if spatial == 2 else (fill, values[0])


def as_planes(layer, x, spatial, channels=None):
    """Checks x is (N, C, *S) or unbatched (C, *S) with ``spatial`` axes S (1 or 2), with
    ``channels`` channels when given; returns (x as (N, C, H, W), its form), a 1-d
    signal (N, C, L) becoming (N, C, 1, L). ``from_planes`` and ``to_planes`` convert
    between the two layouts with the form."""
    if spatial == 2:
        x4, unbatched = check_2d_input(layer, x, channels)
        return x4, (unbatched, False)
    expected = "(N, C, L) or (C, L)" if channels is None else f"(N, {channels}, L) or ({channels}, L)"
    ok = isinstance(x, torch.Tensor) and x.dim() in (2, 3)
    if ok and channels is not None:
        ok = x.shape[-2] == channels
    layer.check_input(x, expected, ok)
    unbatched = x.dim() == 2
    x3 = x.unsqueeze(0) if unbatched else x
    return x3.unsqueeze(2), (unbatched, True)


def from_planes(t4, form):
    """A tensor (N, C, H, W) in the layout of the input whose form ``as_planes`` gave."""
    unbatched, one_d = form
    t = t4.squeeze(2) if one_d else t4
    return t[0] if unbatched else t


def to_planes(t, form):
    """The inverse of ``from_planes``: a tensor in the input's layout as (N, C, H, W)."""
    unbatched, one_d = form
    t = t.unsqueeze(0) if unbatched else t
    return t.unsqueeze(2) if one_d else t


def pool_output_size(size, kernel, stride, padding, dilation, ceil_mode):
    """Window positions of a pooling layer along one axis: ``window_output_size``, or
    with ``ceil_mode`` the count rounded up, less a last window that would start past the
    input and its left padding (PyTorch's rule)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if not ceil_mode:
        return span // stride + 1
    count = -(-span // stride) + 1
    if (count - 1) * stride >= size + padding:
        count -= 1
    return count
