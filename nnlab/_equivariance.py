"""Equivariance of a layer under a transform of its input (a shift, a rotation, another
layer): public as ``nnlab.grad_compare.equivariance_error`` and friends."""

import torch

from .jacobians import preserved

__all__ = ["equivariance_difference", "equivariance_error", "rotate90", "shift"]


class _Transform:
    """A named function of tensors acting on their last two dimensions."""

    def __init__(self, function, name):
        self.function = function
        self.name = name

    def __call__(self, x):
        return self.function(x)

    def __repr__(self):
        return self.name


def shift(dy, dx, circular=True):
    """The transform moving an image (the last two dimensions) down by dy and right by
    dx: ``circular`` wraps what leaves one edge around to the other (``torch.roll``);
    otherwise the rows and columns shifted in are 0."""
    def move(x):
        moved = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
        if circular:
            return moved
        rows = torch.arange(x.shape[-2], device=x.device).reshape(-1, 1) - dy
        cols = torch.arange(x.shape[-1], device=x.device).reshape(1, -1) - dx
        inside = (rows >= 0) & (rows < x.shape[-2]) & (cols >= 0) & (cols < x.shape[-1])
        return moved * inside.to(x.dtype)

    return _Transform(move, f"shift({dy}, {dx}, circular={circular})")


def rotate90(k=1):
    """The transform rotating an image (the last two dimensions) by k * 90 degrees,
    counter-clockwise (``torch.rot90``)."""
    return _Transform(lambda x: torch.rot90(x, k, dims=(-2, -1)), f"rotate90({k})")


def equivariance_error(layer, x, transform, margin=0):
    """``max |layer(g(x)) - g(layer(x))|`` for the transform g, any function of tensors:
    ``shift(dy, dx, circular)``, ``rotate90(k)``, or another layer (ReLU commutes with
    MaxPool2d: ``equivariance_error(ReLU(), x, MaxPool2d(2))`` is 0). 0 means layer and
    g commute on x. ``margin`` leaves out that many rows and columns at each edge of the
    last two dimensions (a zero-padded convolution is equivariant to shifts only away
    from the borders). Leaves the layer as found. Returns a float."""
    difference = equivariance_difference(layer, x, transform)
    if margin:
        height, width = difference.shape[-2:]
        difference = difference[..., margin : height - margin, margin : width - margin]
    return difference.abs().max().item() if difference.numel() else 0.0


def equivariance_difference(layer, x, transform):
    """``layer(g(x)) - g(layer(x))`` for the transform g (see ``equivariance_error``):
    zero where layer and g commute. Leaves the layer as found."""
    with preserved(layer):
        transformed_first = layer(transform(x))
        transformed_after = transform(layer(x))
    if transformed_first.shape != transformed_after.shape:
        raise ValueError(
            f"equivariance_error: layer(g(x)) has shape {tuple(transformed_first.shape)} but g(layer(x)) "
            f"{tuple(transformed_after.shape)}"
        )
    return transformed_first - transformed_after
