"""The model builders (MLP, CNN, ResNet, NetworkConfiguration and build), public as
``nnlab.models`` and importable from ``nnlab.layers`` too; see ``nnlab.models``."""

import collections
import functools
import inspect
import math
import sys

import torch

from .base import Layer
from .containers import ACTIVATIONS, DEFAULT_ACTIVATION, Builder, DefaultString, Sequential, make_activation
from .conv import Conv2d
from .dense import Dropout, Flatten, LeakyReLU, Linear, Softmax
from .norm import BatchNorm2d, Dropout2d
from .pooling import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d
from .residual import ResidualBlock, ResidualBottleneckBlock

ACTIVATION_CLASSES = {**ACTIVATIONS, "softmax": Softmax}
NO_ACTIVATION = "none"
ACTIVATION_CHOICES = (*sorted(ACTIVATION_CLASSES), NO_ACTIVATION)
POOLING_CLASSES = {"max": MaxPool2d, "avg": AvgPool2d, "adaptive_max": AdaptiveMaxPool2d, "adaptive_avg": AdaptiveAvgPool2d}
POOLINGS = tuple(POOLING_CLASSES)
CONV_KEYS = ("kernel_size", "stride", "padding", "dilation", "bias")
# Keyword arguments course code writes with torch's names (nn.LeakyReLU(negative_slope)).
TORCH_KEYWORDS = {LeakyReLU: {"negative_slope": "alpha"}}


DEFAULT_POOLING = DefaultString("max")


# Argument checks ------------------------------------------------------------------------


def check_positive_int(owner, name, value):
    """ValueError naming ``name`` unless value is an int >= 1 (a bool or a list is not)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner}: {name} must be an int >= 1, got {value!r}")
    return value


def check_int_list(owner, name, value, allow_empty=True):
    """``value`` as a list of ints >= 1; ValueError naming ``name`` otherwise (a single
    int where a list is meant included)."""
    ok = isinstance(value, (list, tuple)) and (allow_empty or len(value) > 0)
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    if not ok:
        need = "a list" if allow_empty else "a non-empty list"
        raise ValueError(f"{owner}: {name} must be {need} of ints >= 1, got {value!r}")
    return list(value)


def check_in_size(owner, in_size):
    """``in_size`` as a (C, H, W) tuple of ints >= 1."""
    if not isinstance(in_size, (list, tuple)) or len(in_size) != 3:
        raise ValueError(f"{owner}: in_size must be (C, H, W), got {in_size!r}")
    return tuple(check_int_list(owner, "in_size", in_size))


def check_probability(owner, name, value):
    """ValueError naming ``name`` unless 0 <= value < 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{owner}: {name} must be in [0, 1), got {value!r}")
    return value


def check_flag(owner, name, value):
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: {name} must be True or False, got {value!r}")
    return value


def keyword_dict(owner, name, params, allowed=None):
    """``params`` as a dict of keyword arguments; ValueError naming ``name`` when it is not
    a dict or (with ``allowed``) has unknown keys."""
    if not isinstance(params, dict):
        raise ValueError(f"{owner}: {name} must be a dict of keyword arguments, got {params!r}")
    unknown = sorted(set(params) - set(allowed)) if allowed is not None else []
    if unknown:
        raise ValueError(f"{owner}: {name} has unknown keys {unknown}; expected some of {list(allowed)}")
    return dict(params)


def reject_lists(owner, name, params):
    """ValueError naming ``name`` for a list value: where one value is meant, a list
    never stands for a pair (a tuple does)."""
    for key, value in params.items():
        if isinstance(value, list):
            raise ValueError(f"{owner}: {name}['{key}'] is a list {value!r}; give an int, or a tuple for a pair")
    return params


def one_spelling(owner, name, value, alias, alias_value, default=None):
    """(the spelling used, its value) for an argument that has a course alias;
    ValueError when both spellings are given."""
    if alias_value is None:
        return name, value
    if value is not default:
        raise ValueError(f"{owner}: give {name} or {alias} (the same argument), not both")
    return alias, alias_value


def construct(owner, name, cls, kwargs):
    """``cls(**kwargs)``, with a wrong keyword or value reported as ValueError naming ``name``."""
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{owner}: {name} {kwargs!r} do not fit {cls.__name__}: {error}") from error


# Activations and pooling ------------------------------------------------------------------


def activation_factory(owner, name, spec, params=None):
    """A function returning a fresh activation layer for ``spec`` (a name in
    ACTIVATION_CHOICES, a Layer instance to copy, or a Layer class), or None for 'none'
    (no layer). ``params`` are the named activation's keyword arguments."""
    params = {} if params is None else keyword_dict(owner, "activation_params", params)
    if isinstance(spec, str) and spec in ACTIVATION_CLASSES:
        cls = ACTIVATION_CLASSES[spec]
        renames = TORCH_KEYWORDS.get(cls, {})
        kwargs = {renames.get(key, key): value for key, value in params.items()}
        construct(owner, "activation_params", cls, kwargs)
        return functools.partial(cls, **kwargs)
    if params:
        raise ValueError(f"{owner}: activation_params {params!r} apply to a named activation, not to {spec!r}")
    if isinstance(spec, str) and spec == NO_ACTIVATION:
        return None
    if isinstance(spec, torch.nn.Module):
        return functools.partial(make_activation, from_torch_module(owner, name, spec))
    is_layer_class = isinstance(spec, type) and issubclass(spec, Layer)
    if isinstance(spec, Layer) or is_layer_class:
        return functools.partial(make_activation, spec)
    raise ValueError(
        f"{owner}: {name} must be one of {list(ACTIVATION_CHOICES)}, an nnlab Layer or a torch.nn activation "
        f"module, got {spec!r}"
    )


def from_torch_module(owner, name, module):
    """The nnlab layer of the same name as the torch.nn ``module`` (``nn.LeakyReLU(0.314)``
    -> ``LeakyReLU`` with slope 0.314), built with every constructor setting the module
    holds; ValueError naming ``name`` when there is no such layer or a setting that is not
    torch's default cannot be carried over (``inplace`` is dropped: nnlab computes out of
    place, with the same values)."""
    # nnlab.layers, the package that imports this module, is loaded before any model is
    # built: reading its namespace here needs no import back into it.
    layers = sys.modules[__package__]
    kind = type(module).__name__
    cls = getattr(layers, kind, None) if kind in layers.__all__ else None
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise ValueError(f"{owner}: {name} is torch.nn.{kind}, which has no nnlab layer of that name")
    accepted = inspect.signature(cls).parameters
    renames = TORCH_KEYWORDS.get(cls, {})
    defaults = inspect.signature(type(module)).parameters
    kwargs = {}
    for setting, parameter in defaults.items():
        if setting == "inplace" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        value = getattr(module, setting, parameter.default)
        target = renames.get(setting, setting)
        if target in accepted:
            kwargs[target] = value
        elif value is not parameter.default and value != parameter.default:
            raise ValueError(f"{owner}: {name} is torch.nn.{kind} with {setting}={value!r}, which nnlab's {kind} does not take")
    return construct(owner, name, cls, kwargs)


def fresh(factory):
    """[factory()], or [] for no layer (factory None)."""
    return [] if factory is None else [factory()]


def pooling_factory(owner, name, kind, params_name, params):
    """A function returning a fresh pooling layer of ``kind`` ('max', 'avg',
    'adaptive_max', 'adaptive_avg') with keyword arguments ``params`` (default
    ``dict(kernel_size=2)``, or ``dict(output_size=(4, 4))`` for the adaptive kinds)."""
    if not isinstance(kind, str) or kind not in POOLING_CLASSES:
        raise ValueError(f"{owner}: {name} must be one of {POOLINGS}, got {kind!r}")
    if params is None:
        params = dict(output_size=(4, 4)) if kind.startswith("adaptive") else dict(kernel_size=2)
    params = reject_lists(owner, params_name, keyword_dict(owner, params_name, params))
    construct(owner, params_name, POOLING_CLASSES[kind], params)
    return functools.partial(POOLING_CLASSES[kind], **params)


# Dense and convolutional parts ----------------------------------------------------------------


def dense_layers(widths, activations, dropout=0.0, wstd=None):
    """``Linear(widths[i], widths[i + 1]) -> activations[i]`` for each layer, with
    ``Dropout(dropout)`` after each activation but the last layer's; ``activations``
    holds one factory (or None: no activation) per layer."""
    layers = []
    last = len(activations) - 1
    for index, factory in enumerate(activations):
        layers.append(Linear(widths[index], widths[index + 1], wstd=wstd))
        layers += fresh(factory)
        if dropout > 0 and index < last:
            layers.append(Dropout(dropout))
    return layers


def per_conv_settings(owner, conv_params, num_convs, batchnorm):
    """One dict of Conv2d keyword arguments per convolution, from ``conv_params``: a dict
    whose list values hold one entry per convolution (other values apply to every one),
    or a list of one dict per convolution. Each needs a kernel_size; bias defaults to
    ``not batchnorm``."""
    if isinstance(conv_params, dict):
        shared = keyword_dict(owner, "conv_params", conv_params, CONV_KEYS)
        settings = [dict(shared) for _ in range(num_convs)]
        for key, values in shared.items():
            if not isinstance(values, list):
                continue
            if len(values) != num_convs:
                raise ValueError(
                    f"{owner}: conv_params['{key}'] is a list of {len(values)} entries, read as one per "
                    f"convolution, but there are {num_convs} convolutions (one per channels entry); "
                    f"for one non-square {key} give a tuple, e.g. (4, 5)"
                )
            for setting, value in zip(settings, values):
                setting[key] = value
    elif isinstance(conv_params, list) and all(isinstance(entry, dict) for entry in conv_params):
        if len(conv_params) != num_convs:
            raise ValueError(
                f"{owner}: conv_params is a list of {len(conv_params)} dicts, one per convolution, "
                f"but there are {num_convs} convolutions (one per channels entry)"
            )
        settings = [keyword_dict(owner, f"conv_params[{i}]", entry, CONV_KEYS) for i, entry in enumerate(conv_params)]
    else:
        raise ValueError(
            f"{owner}: conv_params must be a dict of Conv2d keyword arguments (a list value: one entry "
            f"per convolution) or a list of such dicts, one per convolution; got {conv_params!r}"
        )
    for index, setting in enumerate(settings):
        reject_lists(owner, f"conv_params (convolution {index})", setting)
        if "kernel_size" not in setting:
            raise ValueError(f"{owner}: conv_params for convolution {index} has no kernel_size")
        setting.setdefault("bias", not batchnorm)
    return settings


def feature_shape(owner, in_size, layers):
    """(C, H, W) after ``layers`` for one image of ``in_size``, by each layer's
    output-size formula (nothing is run); ValueError naming in_size when the image
    shrinks to nothing on the way."""
    shape = in_size
    for index, layer in enumerate(layers):
        if not hasattr(layer, "output_shape"):
            continue
        try:
            shape = layer.output_shape(shape)
        except ValueError as error:
            raise ValueError(
                f"{owner}: in_size {in_size} shrinks to nothing at feature layer [{index}]: {error}"
            ) from error
    return shape


# Builders --------------------------------------------------------------------------------------


class MLP(Builder):
    """Multi-layer perceptron, in either of two spellings:

    * ``MLP(in_features, num_classes, hidden_features=(), activation='relu', dropout=0.0,
      wstd=None)``: ``Linear -> activation [-> Dropout]`` for each hidden width, then a
      final ``Linear`` to ``num_classes`` scores;
    * ``MLP(in_dim, dims, nonlins)`` (the course's): ``Linear(in, dims[i]) -> nonlins[i]``
      for every layer, the last included, one activation per layer: a name
      ('relu', 'lrelu', 'sigmoid', 'tanh', 'softmax'), 'none' (no activation layer), or
      an nnlab Layer (copied per position). ``dims`` may also come second positionally
      (with ``nonlins`` third): a list there is read as ``dims``, never as a class count.

    ``in_features`` (or ``in_dim``) given as a shape, e.g. ``(1, 28, 28)``, puts a
    ``Flatten`` first, so image batches (N, 1, 28, 28) go in as they are.

    Forward and backward are those of ``.sequence``, its Sequential.
    Shapes: (N, in_features) or (N, *in_shape) -> (N, last width). Caches: nothing of its own.
    """

    def __init__(
        self,
        in_features=None,
        num_classes=None,
        hidden_features=(),
        activation=DEFAULT_ACTIVATION,
        dropout=0.0,
        wstd=None,
        *,
        in_dim=None,
        dims=None,
        nonlins=None,
    ):
        super().__init__()
        _, in_features = one_spelling("MLP", "in_features", in_features, "in_dim", in_dim)
        check_probability("MLP", "dropout", dropout)
        if wstd is not None and (isinstance(wstd, bool) or not isinstance(wstd, (int, float)) or wstd <= 0):
            raise ValueError(f"MLP: wstd must be None (PyTorch's init) or a number > 0, got {wstd!r}")
        if dims is not None or nonlins is not None or isinstance(num_classes, (list, tuple)):
            widths, activations = self.course_layout(num_classes, hidden_features, activation, dropout, dims, nonlins)
        else:
            widths, activations = self.classic_layout(num_classes, hidden_features, activation)
        layers = []
        if isinstance(in_features, (list, tuple)):
            in_shape = check_int_list("MLP", "in_features", in_features, allow_empty=False)
            layers.append(Flatten())
            in_features = math.prod(in_shape)
        self.in_features = check_positive_int("MLP", "in_features", in_features)
        layers += dense_layers([in_features, *widths], activations, dropout, wstd)
        self.sequence = Sequential(*layers)

    @staticmethod
    def classic_layout(num_classes, hidden_features, activation):
        """Widths and activation factories of MLP(in_features, num_classes, hidden_features, activation)."""
        check_positive_int("MLP", "num_classes", num_classes)
        hidden = check_int_list("MLP", "hidden_features", hidden_features)
        if not isinstance(activation, (list, tuple)):
            factory = activation_factory("MLP", "activation", activation)
            return [*hidden, num_classes], [factory] * len(hidden) + [None]
        if len(activation) != len(hidden) + 1:
            raise ValueError(
                f"MLP: activation as a list holds one activation per layer, the output layer's last ('none' for "
                f"none): expected {len(hidden) + 1} entries for {len(hidden)} hidden layers, got {len(activation)}"
            )
        return [*hidden, num_classes], [activation_factory("MLP", f"activation[{i}]", spec) for i, spec in enumerate(activation)]

    @staticmethod
    def course_layout(num_classes, hidden_features, activation, dropout, dims, nonlins):
        """Widths and activation factories of MLP(in_dim, dims, nonlins), where dims and
        nonlins may have come second and third positionally."""
        if isinstance(num_classes, (list, tuple)):
            if dims is not None:
                raise ValueError("MLP: dims given twice: second positionally and as dims=")
            dims, num_classes = num_classes, None
            if nonlins is None:
                nonlins, hidden_features = hidden_features, ()
        no_hidden = isinstance(hidden_features, (list, tuple)) and len(hidden_features) == 0
        if num_classes is not None or not no_hidden or activation is not DEFAULT_ACTIVATION or dropout != 0:
            raise ValueError(
                "MLP: num_classes, hidden_features, activation and dropout belong to MLP(in_features, "
                "num_classes, ...); MLP(in_dim, dims, nonlins) takes one activation per layer in nonlins"
            )
        widths = check_int_list("MLP", "dims", dims, allow_empty=False)
        if not isinstance(nonlins, (list, tuple)) or len(nonlins) != len(widths):
            raise ValueError(f"MLP: nonlins must be a list of one activation per layer ({len(widths)}, as dims), got {nonlins!r}")
        return widths, [activation_factory("MLP", f"nonlins[{i}]", spec) for i, spec in enumerate(nonlins)]


class ImageClassifier(Builder):
    """What CNN and ResNet share: their size arguments checked and kept (``in_size``,
    ``out_classes``, ``channels``, ``pool_every``, ``hidden_dims``), the activation and
    pooling in either spelling, and the dense head."""

    def check_sizes(self, in_size, out_classes, channels, pool_every, hidden_dims, batchnorm, dropout):
        owner = type(self).__name__
        self.in_size = check_in_size(owner, in_size)
        self.out_classes = check_positive_int(owner, "out_classes", out_classes)
        self.channels = check_int_list(owner, "channels", channels, allow_empty=False)
        self.pool_every = check_positive_int(owner, "pool_every", pool_every)
        self.hidden_dims = check_int_list(owner, "hidden_dims", hidden_dims)
        check_flag(owner, "batchnorm", batchnorm)
        check_probability(owner, "dropout", dropout)

    def layer_factories(self, activation, activation_type, activation_params, pooling, pooling_type, pooling_params, output_activation):
        """Factories of the activation, the pooling layer and the output activation (None:
        no layer), from the arguments in either spelling."""
        owner = type(self).__name__
        spelling, activation = one_spelling(owner, "activation", activation, "activation_type", activation_type, DEFAULT_ACTIVATION)
        act = activation_factory(owner, spelling, activation, activation_params)
        spelling, pooling = one_spelling(owner, "pooling", pooling, "pooling_type", pooling_type, DEFAULT_POOLING)
        pool = pooling_factory(owner, spelling, pooling, "pooling_params", pooling_params)
        output = None if output_activation is None else activation_factory(owner, "output_activation", output_activation)
        return act, pool, output

    def head(self, num_features, act, output):
        """``Flatten -> (Linear -> act) per hidden_dims -> Linear(out_classes) [-> output]``."""
        widths = [num_features, *self.hidden_dims, self.out_classes]
        return [Flatten(), *dense_layers(widths, [act] * len(self.hidden_dims) + [output])]


class CNN(ImageClassifier):
    """Convolutional classifier:
    ``[(Conv2d -> [BatchNorm2d] -> act [-> Dropout2d]) * pool_every -> pool] * (len(channels) // pool_every)``,
    then the same conv unit for the ``len(channels) % pool_every`` leftover channels,
    then ``Flatten -> (Linear -> act) * len(hidden_dims) -> Linear [-> output_activation]``
    to ``out_classes`` scores.

    ``conv_params`` are the Conv2d keyword arguments (kernel_size, stride, padding,
    dilation, bias; default ``dict(kernel_size=3, padding=1)``): one dict for every conv,
    in which a *list* value holds one entry per convolution (``kernel_size=[4, 5]`` with
    two channels: a 4x4 then a 5x5 kernel) and a tuple is a pair (``kernel_size=(4, 5)``:
    4x5 kernels); or a list of one dict per convolution. A list of another length is a
    ValueError naming the key.

    ``pooling`` (or ``pooling_type``) names the kind of each inner pooling layer: 'max'
    (MaxPool2d), 'avg' (AvgPool2d), 'adaptive_max' or 'adaptive_avg'; ``pooling_params``
    are its keyword arguments (default ``dict(kernel_size=2)``, or
    ``dict(output_size=(4, 4))`` for the adaptive kinds). ``final_pooling`` (a kind, with
    ``final_pooling_params``), when given, follows the last conv instead: it replaces the
    pooling that would follow it, or is added when none would. With 'adaptive_max' there
    the classifier sees ``channels[-1] * 4 * 4`` features whatever the input's height and
    width, so the model accepts several input sizes (the IFT6390 / IFT3395 head).

    ``batchnorm=True`` puts a BatchNorm2d between each conv and its activation (the conv
    then has no bias, unless conv_params says otherwise: BatchNorm's own bias takes its
    place); ``dropout > 0`` puts a Dropout2d(dropout) after each conv's activation, where
    it does not disturb the batch statistics. ``activation`` (or ``activation_type``, with
    ``activation_params``) is a name or Layer, as in MLP; ``output_activation`` (e.g.
    'softmax') ends the classifier.

    The flattened feature count is computed from ``in_size`` = (C, H, W) by the
    output-size formula of each layer (nothing is run), so a configuration that
    shrinks the image to nothing raises ValueError naming in_size at construction.

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
        activation=DEFAULT_ACTIVATION,
        pooling=DEFAULT_POOLING,
        pooling_params=None,
        *,
        activation_type=None,
        activation_params=None,
        pooling_type=None,
        final_pooling=None,
        final_pooling_params=None,
        batchnorm=False,
        dropout=0.0,
        output_activation=None,
    ):
        super().__init__()
        self.check_sizes(in_size, out_classes, channels, pool_every, hidden_dims, batchnorm, dropout)
        act, pool, output = self.layer_factories(
            activation, activation_type, activation_params, pooling, pooling_type, pooling_params, output_activation
        )
        final_pool = None
        if final_pooling is not None:
            final_pool = pooling_factory("CNN", "final_pooling", final_pooling, "final_pooling_params", final_pooling_params)
        elif final_pooling_params is not None:
            raise ValueError("CNN: final_pooling_params given without final_pooling")
        if conv_params is None:
            conv_params = dict(kernel_size=3, padding=1)
        settings = per_conv_settings("CNN", conv_params, len(self.channels), batchnorm)

        layers = []
        width = self.in_size[0]
        last = len(self.channels) - 1
        for index, (out_channels, setting) in enumerate(zip(self.channels, settings)):
            try:
                layers.append(Conv2d(width, out_channels, **setting))
            except ValueError as error:
                raise ValueError(f"CNN: conv_params for convolution {index}: {error}") from error
            if batchnorm:
                layers.append(BatchNorm2d(out_channels))
            layers += fresh(act)
            if dropout > 0:
                layers.append(Dropout2d(dropout))
            if index == last and final_pool is not None:
                layers.append(final_pool())
            elif (index + 1) % self.pool_every == 0:
                layers.append(pool())
            width = out_channels

        channels_out, height, width_out = feature_shape("CNN", self.in_size, layers)
        self.sequence = Sequential(*layers, *self.head(channels_out * height * width_out, act, output))


class ResNet(ImageClassifier):
    """Residual classifier:
    ``[ResidualBlock(pool_every convs) -> pool] * (len(channels) // pool_every)``, then one
    ResidualBlock of the ``len(channels) % pool_every`` leftover convs (no pool after),
    then ``Flatten -> (Linear -> act) * len(hidden_dims) -> Linear [-> output_activation]``
    to ``out_classes``.

    Every conv of a regular block has kernel 3 ('same' padding), so only pooling
    changes the height and width. ``pooling`` (or ``pooling_type``) is 'max', 'avg',
    'adaptive_max' or 'adaptive_avg' with keyword arguments ``pooling_params`` (default
    ``dict(kernel_size=2)``, or ``dict(output_size=(4, 4))`` for the adaptive kinds).
    ``batchnorm``, ``dropout`` and ``conv_bias`` go to every block (there: conv ->
    [Dropout2d] -> [BatchNorm2d] -> act; every conv of a block has a bias unless
    ``conv_bias=False``, which leaves it out before BatchNorm2d). ``activation`` (or ``activation_type`` with
    ``activation_params``) is a name or Layer, as in MLP.

    Bottleneck mapping (``bottleneck=True``): a group of convs with output channels
    c_1..c_p whose input channel count equals c_p, and p >= 3, becomes
    ``ResidualBottleneckBlock(c_p, inner_channels=[c_2..c_{p-1}], inner_kernel_sizes=[3] * (p - 2))``:
    a 1x1 conv down to c_2, 3x3 convs through c_2..c_{p-1}, a 1x1 conv up to c_p, so the
    group still has exactly p convolutions and ends with c_p channels (c_1 only counts the
    position of the 1x1 down-projection). Every other group stays a regular block.

    The flattened feature count comes from running one zero image of ``in_size`` =
    (C, H, W) through the feature part in eval mode (BatchNorm statistics and dropout
    RNG untouched); an image that shrinks to nothing is a ValueError naming in_size.
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
        activation=DEFAULT_ACTIVATION,
        pooling=DEFAULT_POOLING,
        pooling_params=None,
        batchnorm=False,
        dropout=0.0,
        bottleneck=False,
        *,
        activation_type=None,
        activation_params=None,
        pooling_type=None,
        output_activation=None,
        conv_bias=True,
    ):
        super().__init__()
        self.check_sizes(in_size, out_classes, channels, pool_every, hidden_dims, batchnorm, dropout)
        self.bottleneck = check_flag("ResNet", "bottleneck", bottleneck)
        check_flag("ResNet", "conv_bias", conv_bias)
        act, pool, output = self.layer_factories(
            activation, activation_type, activation_params, pooling, pooling_type, pooling_params, output_activation
        )
        if act is None:
            raise ValueError("ResNet: activation 'none' is not possible: a residual block ends in its activation")
        block_options = dict(batchnorm=batchnorm, dropout=dropout, activation=act(), conv_bias=conv_bias)

        features = []
        width = self.in_size[0]
        for start in range(0, len(self.channels), self.pool_every):
            group = self.channels[start : start + self.pool_every]
            if bottleneck and width == group[-1] and len(group) >= 3:
                inner = group[1:-1]
                features.append(ResidualBottleneckBlock(width, inner, [3] * len(inner), **block_options))
            else:
                features.append(ResidualBlock(width, group, [3] * len(group), **block_options))
            if len(group) == self.pool_every:
                features.append(pool())
            width = group[-1]

        num_features = self.feature_count(Sequential(*features))
        self.sequence = Sequential(*features, *self.head(num_features, act, output))

    def feature_count(self, features):
        """Flattened size of the feature part's output for one image of ``in_size``."""
        features.eval()
        try:
            out = features(torch.zeros(1, *self.in_size))
        except ValueError as error:
            raise ValueError(f"ResNet: in_size {self.in_size} shrinks to nothing in the feature layers: {error}") from error
        finally:
            features.train()
        return out[0].numel()


# The IFT6390 / IFT3395 assignments ---------------------------------------------------------------

_CONFIG_FIELDS = ("n_channels", "kernel_sizes", "strides", "paddings", "dense_hiddens")


class NetworkConfiguration(collections.namedtuple("NetworkConfiguration", _CONFIG_FIELDS)):
    """The assignments' named tuple: ``n_channels``, ``kernel_sizes``, ``strides`` (one
    entry per convolution), ``paddings`` (one per convolution; zeros when not given, as
    in IFT6390, whose tuple has no paddings) and ``dense_hiddens`` (the hidden widths of
    the dense part). The defaults are the handouts'.

    ``paddings`` and ``dense_hiddens`` are keyword-only: the two courses put different
    fields fourth, so a fourth positional value could only be a guess.
    """

    __slots__ = ()

    def __new__(cls, n_channels=(16, 32, 48), kernel_sizes=(3, 3, 3), strides=(1, 1, 1), *, paddings=None, dense_hiddens=(256, 256)):
        if paddings is None and isinstance(n_channels, (list, tuple)):
            paddings = (0,) * len(n_channels)
        return super().__new__(cls, n_channels, kernel_sizes, strides, paddings, dense_hiddens)

    def __getnewargs_ex__(self):
        """Arguments that rebuild this tuple through ``__new__`` (for pickle and copy)."""
        return tuple(self[:3]), {"paddings": self.paddings, "dense_hiddens": self.dense_hiddens}


def build(network_type, config, in_size, num_classes, activation="relu", output_activation=None):
    """The assignments' networks from a ``NetworkConfiguration`` (or any object with its
    fields; ``paddings`` may be missing), for images of ``in_size`` = (C, H, W):

    * 'mlp': ``Flatten -> (Linear -> activation) per dense_hiddens -> Linear(num_classes)``;
    * 'cnn': for each convolution i, ``Conv2d(kernel_sizes[i], strides[i], paddings[i]) ->
      activation``, followed by ``MaxPool2d(2)`` for every convolution but the last and by
      ``AdaptiveMaxPool2d((4, 4))`` for the last (so several image sizes go through), then
      ``Flatten -> (Linear -> activation) per dense_hiddens -> Linear(num_classes)``;

    then ``output_activation`` when given (IFT3395 ends in 'softmax'). ``activation`` is a
    name or an nnlab Layer. Returns an ``MLP`` or a ``CNN``.
    """
    in_size = check_in_size("build", in_size)
    dense_hiddens = check_int_list("build", "config.dense_hiddens", getattr(config, "dense_hiddens", None))
    if network_type == "mlp":
        nonlins = [activation] * len(dense_hiddens) + [NO_ACTIVATION if output_activation is None else output_activation]
        return MLP(in_size, dims=[*dense_hiddens, num_classes], nonlins=nonlins)
    if network_type != "cnn":
        raise ValueError(f"build: network_type must be 'mlp' or 'cnn', got {network_type!r}")
    channels = check_int_list("build", "config.n_channels", getattr(config, "n_channels", None), allow_empty=False)
    conv_params = {}
    for key, field in (("kernel_size", "kernel_sizes"), ("stride", "strides"), ("padding", "paddings")):
        values = getattr(config, field, None)
        if values is None and field == "paddings":
            values = (0,) * len(channels)
        if not isinstance(values, (list, tuple)) or len(values) != len(channels):
            raise ValueError(
                f"build: config.{field} must hold one entry per convolution ({len(channels)}, as "
                f"config.n_channels), got {values!r}"
            )
        conv_params[key] = list(values)
    return CNN(
        in_size,
        num_classes,
        channels,
        pool_every=1,
        hidden_dims=dense_hiddens,
        conv_params=conv_params,
        activation=activation,
        pooling="max",
        pooling_params=dict(kernel_size=2),
        final_pooling="adaptive_max",
        final_pooling_params=dict(output_size=(4, 4)),
        output_activation=output_activation,
    )
