"""2-D convolution by unfold + matmul, the shape helpers the 2-D layers share, and the
CNN builder."""

import math

import torch
import torch.nn.functional as F

from .base import Layer
from .containers import Builder, Sequential, make_activation, perceptron_layers
from .dense import Flatten


def pair(value, name, owner, minimum):
    """``value`` (an int or a pair of ints) as a pair; ValueError naming ``owner`` unless
    both entries are ints >= ``minimum``."""
    if isinstance(value, int):
        value = (value, value)
    value = tuple(value) if isinstance(value, (tuple, list)) else value
    ok = isinstance(value, tuple) and len(value) == 2
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value)
    if not ok:
        raise ValueError(f"{owner}: {name} must be an int or a pair of ints >= {minimum}, got {value!r}")
    return value


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
    dilated kernel does not fit in the padded input."""
    out_h = window_output_size(height, kernel[0], stride[0], padding[0], dilation[0])
    out_w = window_output_size(width, kernel[1], stride[1], padding[1], dilation[1])
    if out_h < 1 or out_w < 1:
        span = (dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1)
        padded = (height + 2 * padding[0], width + 2 * padding[1])
        raise ValueError(
            f"{layer!r}: the (dilated) kernel {span} is larger than the padded input {padded} "
            f"(input {(height, width)}, padding {padding})"
        )
    return out_h, out_w


class Conv2d(Layer):
    """2-D cross-correlation, as a matrix product over unfolded input patches.
    Same as ``torch.nn.Conv2d`` (groups=1, zero padding).

    Forward: ``cols = unfold(x)`` holds every receptive field as a column,
    (N, C*kH*kW, L) with L = H_out * W_out; ``out = W_2d @ cols + b`` with
    W_2d = weight viewed as (C_out, C*kH*kW), one batched matmul for the whole batch.

    Backward: ``dW += sum_n dout_n @ cols_n.T``; ``db += dout.sum over (n, h, w)``;
    ``dx = fold(W_2d.T @ dout)`` (fold adds each column back where unfold took it, so
    overlapping windows sum their contributions).

    Shapes: x (N, C_in, H, W) or unbatched (C_in, H, W) -> (N, C_out, H_out, W_out)
    (or (C_out, H_out, W_out)), with ``H_out = floor((H + 2p - d(k - 1) - 1) / s) + 1``,
    likewise W_out.
    Parameters: ``weight`` (C_out, C_in, kH, kW), ``bias`` (C_out) or None.
    Init: both from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = C_in * kH * kW, as PyTorch.
    Caches: the unfolded input ``cols`` (needed for dW) and the input's (H, W) and
    batchedness (for fold); not the input itself.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True):
        super().__init__()
        if not isinstance(in_channels, int) or not isinstance(out_channels, int) or in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"Conv2d: in_channels and out_channels must be ints >= 1, got {in_channels!r}, {out_channels!r}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = pair(kernel_size, "kernel_size", "Conv2d", 1)
        self.stride = pair(stride, "stride", "Conv2d", 1)
        self.padding = pair(padding, "padding", "Conv2d", 0)
        self.dilation = pair(dilation, "dilation", "Conv2d", 1)
        fan_in = in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        self.add_param("weight", torch.empty(out_channels, in_channels, *self.kernel_size).uniform_(-bound, bound))
        if bias:
            self.add_param("bias", torch.empty(out_channels).uniform_(-bound, bound))
        else:
            self.bias = None
        self._cols = None
        self._input_hw = None
        self._unbatched = None

    def __repr__(self):
        text = (
            f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
        )
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.bias is None:
            text += ", bias=False"
        return text + ")"

    def output_shape(self, shape):
        """(C_out, H_out, W_out) for an input of shape (C_in, H, W); ValueError if impossible."""
        channels, height, width = shape
        if channels != self.in_channels:
            raise ValueError(f"{self!r}: expected {self.in_channels} input channels, got {channels}")
        windows = (self.kernel_size, self.stride, self.padding, self.dilation)
        out_h, out_w = check_windows_fit(self, height, width, *windows)
        return (self.out_channels, out_h, out_w)

    def forward(self, x, **kw):
        x4, unbatched = check_2d_input(self, x, self.in_channels)
        self.check_dtype(x4)
        batch, _, height, width = x4.shape
        windows = (self.kernel_size, self.stride, self.padding, self.dilation)
        out_h, out_w = check_windows_fit(self, height, width, *windows)

        # unfold works plane by plane, so unfolding the N*C planes as one sample gives the
        # same numbers in the same memory order as unfolding N samples of C planes, in one
        # im2col call (one parallel region instead of one per sample).
        planes = x4.reshape(1, batch * self.in_channels, height, width)
        cols = F.unfold(planes, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        cols = cols.reshape(batch, -1, out_h * out_w)
        weight_2d = self.weight.reshape(self.out_channels, -1)
        if self.bias is None:
            out = torch.matmul(weight_2d, cols)
        else:
            bias_3d = self.bias.reshape(1, self.out_channels, 1).expand(batch, -1, cols.shape[2])
            out = torch.baddbmm(bias_3d, weight_2d.expand(batch, -1, -1), cols)
        out = out.reshape(batch, self.out_channels, out_h, out_w)

        self._cols = cols
        self._input_hw = (height, width)
        self._unbatched = unbatched
        return out[0] if unbatched else out

    def backward(self, dout):
        cols = self.cached("_cols")
        if self._unbatched:
            dout = dout.unsqueeze(0)
        batch = cols.shape[0]
        dout_3d = dout.reshape(batch, self.out_channels, -1)
        weight_2d = self.weight.reshape(self.out_channels, -1)

        # Parameter gradients accumulate in place.
        dweight = torch.matmul(dout_3d, cols.transpose(1, 2)).sum(dim=0)
        self._grads["weight"] += dweight.reshape(self.weight.shape)
        if self.bias is not None:
            self._grads["bias"] += dout_3d.sum(dim=(0, 2))

        # Input gradient: columns back to image positions.
        dcols = torch.matmul(weight_2d.T, dout_3d)
        # fold sums plane by plane too: one col2im call over all N*C planes.
        dx = F.fold(
            dcols.reshape(1, -1, dcols.shape[2]),
            self._input_hw,
            self.kernel_size,
            dilation=self.dilation,
            padding=self.padding,
            stride=self.stride,
        )
        dx = dx.reshape(batch, self.in_channels, *self._input_hw)
        return dx[0] if self._unbatched else dx


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
    from .pooling import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d

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
