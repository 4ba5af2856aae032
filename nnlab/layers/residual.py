"""Skip connections and multiple heads, and the residual block builders."""

import torch

from .base import Layer, check_input_gradient, recall_call, remember_call
from .containers import (
    ACTIVATIONS,
    DEFAULT_ACTIVATION,
    Builder,
    ChildErrors,
    LayerList,
    Sequential,
    indented,
    make_activation,
)
from .conv import Conv2d
from .norm import BatchNorm2d, Dropout2d

__all__ = [
    "Heads",
    "Residual",
    "ResidualBlock",
    "ResidualBottleneckBlock",
]


class Residual(Layer):
    """A skip connection: ``out = main(x) + shortcut(x)``, with ``shortcut(x) = x`` when
    ``shortcut`` is None.

    Backward: ``dx = main.backward(dout) + shortcut.backward(dout)`` (or ``+ dout`` for
    the identity); both paths add into their own parameter gradients (None after
    ``requires_input_grad(False)``, which both paths get).
    ``main`` and ``shortcut`` may share layers (each call keeps its own cache; see
    Sequential). A path whose backward returns None where a gradient is needed is a
    RuntimeError naming it.
    Shapes: x -> main(x).shape, which must equal shortcut(x).shape (ValueError naming
    both otherwise). Caches: each path's call (its id and attributes); each path caches
    its own tensors.
    Children: "main" and "shortcut" (when not the identity), as state_dict prefixes.
    """

    def __init__(self, main, shortcut=None):
        super().__init__()
        if not isinstance(main, Layer):
            raise TypeError(f"Residual: main must be a Layer, got {type(main).__name__}")
        if shortcut is not None and not isinstance(shortcut, Layer):
            raise TypeError(f"Residual: shortcut must be a Layer or None, got {type(shortcut).__name__}")
        self.main = main
        self.shortcut = shortcut
        self._main_call = None
        self._shortcut_call = None

    def named_children(self):
        children = [("main", self.main)]
        if self.shortcut is not None:
            children.append(("shortcut", self.shortcut))
        return children

    def backward_entry(self):
        return f"Residual.main ({self.main.backward_entry()})"

    def __repr__(self):
        shortcut = "Identity" if self.shortcut is None else indented(repr(self.shortcut))
        return f"Residual\n\tmain: {indented(repr(self.main))}\n\tshortcut: {shortcut}"

    def forward(self, x, **kw):
        with ChildErrors(f"Residual.main ({type(self.main).__name__})"):
            main_out = self.main(x, **kw)
        self._main_call = remember_call(self.main)
        if self.shortcut is None:
            skip = x
        else:
            with ChildErrors(f"Residual.shortcut ({type(self.shortcut).__name__})"):
                skip = self.shortcut(x, **kw)
            self._shortcut_call = remember_call(self.shortcut)
        if main_out.shape != skip.shape:
            raise ValueError(
                f"Residual: the main path gives shape {tuple(main_out.shape)} but the shortcut "
                f"gives {tuple(skip.shape)}; they must match to be added"
            )
        return self.finish_forward(main_out + skip)

    def input_readers(self):
        return [path for _, path in self.named_children()]

    def backward(self, dout):
        self.start_backward(dout)
        if self.shortcut is None:
            dskip = dout
        else:
            where = f"Residual.shortcut ({type(self.shortcut).__name__})"
            with recall_call(self.shortcut, self._shortcut_call), ChildErrors(where):
                dskip = self.shortcut.backward(dout)
            check_input_gradient(where, self.shortcut, dskip)
        where = f"Residual.main ({type(self.main).__name__})"
        with recall_call(self.main, self._main_call), ChildErrors(where):
            dmain = self.main.backward(dout)
        check_input_gradient(where, self.main, dmain)
        if not self.needs_input_grad:
            return None
        return dmain + dskip


class Heads(LayerList):
    """Several heads on one input: ``out = (head_0(x), head_1(x), ...)``, a tuple.

    Backward: takes a tuple (or list) of output gradients, one per head, and returns
    ``dx = sum_i head_i.backward(dout_i)`` (None after ``requires_input_grad(False)``,
    which every head gets). A ``None`` entry (a head whose output feeds
    no loss) contributes nothing and leaves that head's parameter gradients alone.
    Heads may share layers (each call keeps its own cache; see Sequential). A head whose
    backward returns None where a gradient is needed is a RuntimeError naming it.
    Shapes: x -> one output per head, each of that head's shape; dx has x's shape.
    Caches: the input x (for a zero gradient when every entry is None) and each head's
    call (its id and attributes).
    Children: "0", "1", ... as state_dict prefixes.
    """

    def __init__(self, *layers):
        if not layers:
            raise ValueError("Heads: need at least one head")
        super().__init__(*layers)
        self._x = None
        self._calls = None

    def forward(self, x, **kw):
        self._x = x
        outputs = []
        calls = []
        for index, layer in enumerate(self.layers):
            with self.child_errors(index):
                outputs.append(layer(x, **kw))
            calls.append(remember_call(layer))
        self._calls = calls
        return self.finish_forward(tuple(outputs))

    def input_readers(self):
        return list(self.layers)

    def backward(self, dout):
        self.start_backward(dout)
        dx = torch.zeros_like(self._x) if self.needs_input_grad else None
        for index in reversed(range(len(self.layers))):
            if dout[index] is None:
                continue
            layer = self.layers[index]
            with recall_call(layer, self._calls[index]), self.child_errors(index):
                dhead = layer.backward(dout[index])
            check_input_gradient(f"Heads[{index}]", layer, dhead)
            if self.needs_input_grad:
                dx = dx + dhead
        return dx


class ResidualBlock(Builder):
    """A residual block: ``out = activation(main(x) + shortcut(x))``.

    ``main`` is, for each (channels[i], kernel_sizes[i]), a Conv2d with 'same' padding
    (k // 2; odd kernels only) followed, except after the last one, by
    ``[Dropout2d if dropout > 0] -> [BatchNorm2d if batchnorm] -> activation``.
    Every conv of ``main`` has a bias (``conv_bias=True``, as in the CS236781 blocks);
    with ``conv_bias=False`` a conv followed by BatchNorm2d has none (BatchNorm's own bias
    takes its place: a conv bias there is removed by the batch mean and gets a zero
    gradient in training mode), as torchvision does.
    ``shortcut`` is a bias-free 1x1 Conv2d when in_channels != channels[-1], else the
    identity. ``activation`` (or ``activation_type``, with ``activation_params`` its
    keyword arguments) is a name in ACTIVATIONS, a Layer class or a Layer (copied per
    position), as in the builders. Built as ``Sequential(Residual(main, shortcut),
    activation)``, so forward and backward are those of ``.sequence`` (backward: see
    Residual and Sequential).
    Shapes: (N, in_channels, H, W) -> (N, channels[-1], H, W).
    Caches: nothing of its own.

    Example::

        >>> import torch
        >>> from nnlab.grad_compare import check_layer
        >>> from nnlab.layers import ResidualBlock
        >>> block = ResidualBlock(in_channels=3, channels=[4, 4], kernel_sizes=[3, 3])
        >>> x = torch.randn(2, 3, 6, 6)
        >>> block(x).shape                           # main path + 1x1 conv shortcut (3 -> 4 channels)
        torch.Size([2, 4, 6, 6])
        >>> check_layer(block, x).passed
        True
    """

    def __init__(
        self,
        in_channels,
        channels,
        kernel_sizes,
        batchnorm=False,
        dropout=0.0,
        activation=DEFAULT_ACTIVATION,
        *,
        activation_type=None,
        activation_params=None,
        conv_bias=True,
    ):
        super().__init__()
        name = type(self).__name__
        channels = list(channels)
        kernel_sizes = list(kernel_sizes)
        if not channels or len(channels) != len(kernel_sizes):
            raise ValueError(
                f"{name}: channels and kernel_sizes must be non-empty and of equal length, "
                f"got {channels} and {kernel_sizes}"
            )
        for kernel in kernel_sizes:
            if not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
                raise ValueError(f"{name}: kernel sizes must be odd positive ints ('same' padding), got {kernel_sizes}")
        if not 0 <= dropout < 1:
            raise ValueError(f"{name}: dropout must be in [0, 1), got {dropout}")
        if not isinstance(conv_bias, bool):
            raise ValueError(f"{name}: conv_bias must be True or False, got {conv_bias!r}")
        activation = _block_activation(name, activation, activation_type, activation_params)
        self.in_channels = in_channels
        self.channels = channels
        self.kernel_sizes = kernel_sizes

        main = []
        width = in_channels
        for index, (out_channels, kernel) in enumerate(zip(channels, kernel_sizes)):
            followed_by_batchnorm = batchnorm and index < len(channels) - 1
            bias = conv_bias or not followed_by_batchnorm
            main.append(Conv2d(width, out_channels, kernel, padding=kernel // 2, bias=bias))
            if index < len(channels) - 1:
                if dropout > 0:
                    main.append(Dropout2d(dropout))
                if batchnorm:
                    main.append(BatchNorm2d(out_channels))
                main.append(make_activation(activation))
            width = out_channels
        shortcut = None
        if in_channels != channels[-1]:
            shortcut = Conv2d(in_channels, channels[-1], 1, bias=False)
        self.sequence = Sequential(Residual(Sequential(*main), shortcut), make_activation(activation))


def _block_activation(owner, activation, activation_type, activation_params):
    """The activation to copy at each position: a name, Layer class or Layer, given as
    ``activation`` or ``activation_type`` (not both), built with ``activation_params``
    when they are given (a named activation's keyword arguments)."""
    if activation_type is not None:
        if activation is not DEFAULT_ACTIVATION:
            raise ValueError(f"{owner}: give activation or activation_type (the same argument), not both")
        activation = activation_type
    if activation_params is None:
        make_activation(activation)  # checks it now, naming it
        return activation
    if not isinstance(activation_params, dict):
        raise ValueError(f"{owner}: activation_params must be a dict of keyword arguments, got {activation_params!r}")
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"{owner}: activation_params {activation_params!r} apply to a named activation, not to {activation!r}")
    try:
        return ACTIVATIONS[activation](**activation_params)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{owner}: activation_params {activation_params!r} do not fit '{activation}': {error}") from error


class ResidualBottleneckBlock(ResidualBlock):
    """A bottleneck residual block: ``out = activation(main(x) + x)`` where ``main`` is a
    1x1 Conv2d from in_out_channels down to inner_channels[0], then a Conv2d of
    inner_kernel_sizes[i] to inner_channels[i] for each i, then a 1x1 Conv2d back up to
    in_out_channels; i.e. ``ResidualBlock(in_out_channels, [inner_channels[0],
    *inner_channels, in_out_channels], [1, *inner_kernel_sizes, 1], ...)`` (so every
    conv but the last is followed by [Dropout2d] -> [BatchNorm2d] -> activation; the
    keyword arguments are ResidualBlock's).
    Forward and backward are those of ``.sequence``.
    Shapes: (N, in_out_channels, H, W) -> same. Caches: nothing of its own.
    """

    def __init__(
        self,
        in_out_channels,
        inner_channels,
        inner_kernel_sizes,
        batchnorm=False,
        dropout=0.0,
        activation=DEFAULT_ACTIVATION,
        *,
        activation_type=None,
        activation_params=None,
        conv_bias=True,
    ):
        inner_channels = list(inner_channels)
        inner_kernel_sizes = list(inner_kernel_sizes)
        if not inner_channels or len(inner_channels) != len(inner_kernel_sizes):
            raise ValueError(
                "ResidualBottleneckBlock: inner_channels and inner_kernel_sizes must be non-empty "
                f"and of equal length, got {inner_channels} and {inner_kernel_sizes}"
            )
        super().__init__(
            in_out_channels,
            [inner_channels[0], *inner_channels, in_out_channels],
            [1, *inner_kernel_sizes, 1],
            batchnorm=batchnorm,
            dropout=dropout,
            activation=activation,
            activation_type=activation_type,
            activation_params=activation_params,
            conv_bias=conv_bias,
        )
        self.in_out_channels = in_out_channels
        self.inner_channels = inner_channels
        self.inner_kernel_sizes = inner_kernel_sizes
