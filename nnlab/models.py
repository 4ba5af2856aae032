"""Model builders: architectures assembled from nnlab layers (MLP, CNN, ResNet).

They are not layers of their own kind: each builds one ``Sequential`` of layers from
``nnlab.layers`` and forwards to it (see ``nnlab.layers.Builder``). For existing code
they stay importable from ``nnlab.layers`` too.
"""

import torch

from .layers import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool2d,
    Builder,
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    MaxPool2d,
    ResidualBlock,
    ResidualBottleneckBlock,
    Sequential,
    make_activation,
)


def perceptron_layers(in_features, hidden_features, out_features, activation, dropout=0.0, wstd=None):
    """``Linear -> activation [-> Dropout]`` for each hidden width, then a final
    ``Linear`` to ``out_features``, as a list of fresh layers (the classifier part of
    MLP, CNN and ResNet)."""
    widths = [in_features, *hidden_features]
    layers = []
    for width_in, width_out in zip(widths[:-1], widths[1:]):
        layers.append(Linear(width_in, width_out, wstd=wstd))
        layers.append(make_activation(activation))
        if dropout > 0:
            layers.append(Dropout(dropout))
    layers.append(Linear(widths[-1], out_features, wstd=wstd))
    return layers


class MLP(Builder):
    """Multi-layer perceptron: ``Linear -> activation [-> Dropout]`` for each hidden
    width, then a final ``Linear`` to ``num_classes`` scores.

    Forward and backward are those of ``.sequence``, its Sequential.
    Shapes: (N, in_features) -> (N, num_classes). Caches: nothing of its own.
    """

    def __init__(self, in_features, num_classes, hidden_features=(), activation="relu", dropout=0.0, wstd=None):
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"MLP: dropout must be in [0, 1), got {dropout}")
        self.sequence = Sequential(*perceptron_layers(in_features, hidden_features, num_classes, activation, dropout, wstd))


POOLINGS = ("max", "avg", "adaptive_max", "adaptive_avg")


def check_builder_args(owner, in_size, pool_every, pooling, pooling_params):
    """Checks the arguments CNN and ResNet share (ValueError naming ``owner``) and returns
    ``pooling_params`` or its default: ``dict(kernel_size=2)``, or
    ``dict(output_size=(4, 4))`` for the adaptive kinds."""
    if len(in_size) != 3:
        raise ValueError(f"{owner}: in_size must be (C, H, W), got {in_size!r}")
    if not isinstance(pool_every, int) or pool_every < 1:
        raise ValueError(f"{owner}: pool_every must be an int >= 1, got {pool_every!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"{owner}: pooling must be one of {POOLINGS}, got {pooling!r}")
    if pooling_params is not None:
        return pooling_params
    return dict(output_size=(4, 4)) if pooling.startswith("adaptive") else dict(kernel_size=2)


def make_pooling(kind, params):
    """A fresh pooling layer of ``kind`` ('max', 'avg', 'adaptive_max', 'adaptive_avg')
    built with the keyword arguments ``params``."""
    classes = {"max": MaxPool2d, "avg": AvgPool2d, "adaptive_max": AdaptiveMaxPool2d, "adaptive_avg": AdaptiveAvgPool2d}
    if kind not in classes:
        raise ValueError(f"CNN: pooling must be one of {POOLINGS}, got {kind!r}")
    return classes[kind](**params)


class CNN(Builder):
    """Convolutional classifier:
    ``[(Conv2d -> act) * pool_every -> pool] * (len(channels) // pool_every)``, then
    ``Conv2d -> act`` for the ``len(channels) % pool_every`` leftover channels, then
    ``Flatten -> (Linear -> act) * len(hidden_dims) -> Linear`` to ``out_classes`` scores.

    ``conv_params`` are the keyword arguments of every Conv2d (default
    ``dict(kernel_size=3, padding=1)``). ``pooling`` names the kind of every pooling
    layer: 'max' (MaxPool2d), 'avg' (AvgPool2d), 'adaptive_max' (AdaptiveMaxPool2d) or
    'adaptive_avg' (AdaptiveAvgPool2d); ``pooling_params`` are its keyword arguments
    (default ``dict(kernel_size=2)`` for 'max'/'avg', ``dict(output_size=(4, 4))`` for
    the adaptive kinds). With an adaptive kind and ``pool_every == len(channels)`` the
    feature extractor ends in e.g. ``AdaptiveMaxPool2d((4, 4))``, so the classifier
    sees ``channels[-1] * 4 * 4`` features whatever the input's height and width: the
    model accepts several input sizes. ``activation`` is a name or Layer, as in MLP.

    The flattened feature count is computed from ``in_size`` = (C, H, W) by the
    output-size formula of each layer (nothing is run), so a configuration that
    shrinks the image to nothing raises ValueError at construction.

    Forward and backward are those of ``.sequence``, its Sequential.
    Shapes: (N, C, H, W) -> (N, out_classes). Caches: nothing of its own.
    """

    def __init__(
        self,
        in_size,
        out_classes,
        channels,
        pool_every,
        hidden_dims,
        conv_params=None,
        activation="relu",
        pooling="max",
        pooling_params=None,
    ):
        super().__init__()
        pooling_params = check_builder_args("CNN", in_size, pool_every, pooling, pooling_params)
        if conv_params is None:
            conv_params = dict(kernel_size=3, padding=1)
        self.in_size = tuple(in_size)
        self.out_classes = out_classes
        self.channels = list(channels)
        self.pool_every = pool_every
        self.hidden_dims = list(hidden_dims)

        layers = []
        width = in_size[0]
        for index, out_channels in enumerate(self.channels):
            layers.append(Conv2d(width, out_channels, **conv_params))
            layers.append(make_activation(activation))
            if (index + 1) % pool_every == 0:
                layers.append(make_pooling(pooling, pooling_params))
            width = out_channels

        shape = self.in_size
        for layer in layers:
            if hasattr(layer, "output_shape"):
                shape = layer.output_shape(shape)
        features = shape[0] * shape[1] * shape[2]

        layers.append(Flatten())
        layers += perceptron_layers(features, self.hidden_dims, out_classes, activation)
        self.sequence = Sequential(*layers)


class ResNet(Builder):
    """Residual classifier:
    ``[ResidualBlock(pool_every convs) -> pool] * (len(channels) // pool_every)``, then one
    ResidualBlock of the ``len(channels) % pool_every`` leftover convs (no pool after),
    then ``Flatten -> (Linear -> act) * len(hidden_dims) -> Linear`` to ``out_classes``.

    Every conv of a regular block has kernel 3 ('same' padding), so only pooling
    changes the height and width. ``pooling`` is 'max', 'avg', 'adaptive_max' or
    'adaptive_avg' with keyword arguments ``pooling_params`` (default
    ``dict(kernel_size=2)``, or ``dict(output_size=(4, 4))`` for the adaptive kinds).
    ``batchnorm`` and ``dropout`` go to every block.

    Bottleneck mapping (``bottleneck=True``): a group of convs with output channels
    c_1..c_p whose input channel count equals c_p, and p >= 3, becomes
    ``ResidualBottleneckBlock(c_p, inner_channels=[c_2..c_{p-1}], inner_kernel_sizes=[3] * (p - 2))``:
    a 1x1 conv down to c_2, 3x3 convs through c_2..c_{p-1}, a 1x1 conv up to c_p, so the
    group still has exactly p convolutions and ends with c_p channels (c_1 only counts the
    position of the 1x1 down-projection). Every other group stays a regular block.

    The flattened feature count comes from running one zero image of ``in_size`` =
    (C, H, W) through the feature part in eval mode (BatchNorm statistics and dropout
    RNG untouched).
    Forward and backward are those of ``.sequence``, its Sequential.
    Shapes: (N, C, H, W) -> (N, out_classes). Caches: nothing of its own.
    """

    def __init__(
        self,
        in_size,
        out_classes,
        channels,
        pool_every,
        hidden_dims,
        activation="relu",
        pooling="max",
        pooling_params=None,
        batchnorm=False,
        dropout=0.0,
        bottleneck=False,
    ):
        super().__init__()
        pooling_params = check_builder_args("ResNet", in_size, pool_every, pooling, pooling_params)
        if not channels:
            raise ValueError("ResNet: channels must not be empty")
        self.in_size = tuple(in_size)
        self.out_classes = out_classes
        self.channels = list(channels)
        self.pool_every = pool_every
        self.hidden_dims = list(hidden_dims)
        self.bottleneck = bottleneck
        block_options = dict(batchnorm=batchnorm, dropout=dropout, activation=activation)

        features = []
        width = in_size[0]
        for start in range(0, len(self.channels), pool_every):
            group = self.channels[start : start + pool_every]
            if bottleneck and width == group[-1] and len(group) >= 3:
                inner = group[1:-1]
                features.append(ResidualBottleneckBlock(width, inner, [3] * len(inner), **block_options))
            else:
                features.append(ResidualBlock(width, group, [3] * len(group), **block_options))
            if len(group) == pool_every:
                features.append(make_pooling(pooling, pooling_params))
            width = group[-1]

        num_features = self.feature_count(Sequential(*features))
        layers = [*features, Flatten(), *perceptron_layers(num_features, self.hidden_dims, out_classes, activation)]
        self.sequence = Sequential(*layers)

    def feature_count(self, features):
        """Flattened size of the feature part's output for one image of ``in_size``."""
        features.eval()
        try:
            out = features(torch.zeros(1, *self.in_size))
        except ValueError as error:
            raise ValueError(f"ResNet: the feature layers cannot take an input of size {self.in_size}: {error}") from error
        finally:
            features.train()
        return out[0].numel()
