"""Model builders: architectures assembled from nnlab layers (MLP, CNN, ResNet), and the
IFT6390 / IFT3395 assignments' ``NetworkConfiguration`` with its ``build``.

They are not layers of their own kind: each builds one ``Sequential`` of layers from
``nnlab.layers`` and forwards to it (see ``nnlab.layers.Builder``). Their code lives in
``nnlab.layers._builders``, so that they stay importable from ``nnlab.layers`` too
without the two modules importing each other.

Every argument is checked when the model is built, and a ValueError names the argument
that is wrong: a builder never builds something other than what was asked. In
particular a *list* inside ``conv_params`` always means one entry per convolution, and a
*tuple* is a (height, width) pair, so ``kernel_size=[4, 5]`` and ``kernel_size=(4, 5)``
never mean the same thing.

The course spellings are accepted as aliases: ``activation_type`` (for ``activation``),
``activation_params`` (keyword arguments of the named activation; torch's
``negative_slope`` is LeakyReLU's ``alpha``), ``pooling_type`` (for ``pooling``),
``pooling_params``; and ``MLP(in_dim, dims, nonlins)``. Giving both spellings of one
argument is an error.

``count_params`` counts the trainable scalars of an nnlab model or of a torch.nn.Module,
so that a model and its torch twin compare; it lives here, not among the layers, since
for a torch module "trainable" is autograd's ``requires_grad``.
"""

import torch

from .layers._builders import (
    ACTIVATION_CHOICES,
    POOLINGS,
    CNN,
    ImageClassifier,
    MLP,
    NetworkConfiguration,
    ResNet,
    build,
    check_int_list,
    check_positive_int,
)
from .layers.base import Layer

__all__ = [
    "ACTIVATION_CHOICES",
    "POOLINGS",
    "CNN",
    "ImageClassifier",
    "MLP",
    "NetworkConfiguration",
    "ResNet",
    "build",
    "check_int_list",
    "check_positive_int",
    "count_params",
]


def count_params(model):
    """Number of trainable scalars: the sum of numel over ``model.params()`` for an
    nnlab Layer, or over the parameters that require grad for a torch.nn.Module."""
    if isinstance(model, Layer):
        return sum(param.numel() for param, _ in model.params())
    if isinstance(model, torch.nn.Module):
        return sum(param.numel() for param in model.parameters() if param.requires_grad)
    raise TypeError(f"count_params: expected an nnlab Layer or a torch.nn.Module, got {type(model).__name__}")
