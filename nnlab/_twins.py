"""The ``torch.nn`` twin of an nnlab layer: an independent module that computes the same
function, with the layer's parameters and buffers copied in and the layer's mode.

The checkers in ``nnlab.grad_compare`` run it under autograd as a second judge of a
layer's backward, beside autograd through the layer's own forward.
"""

import functools

import torch

from . import layers as nn

__all__ = [
    "LOSSES",
    "Chain",
    "Elementwise",
    "SumOfPaths",
    "TupleOfHeads",
    "torch_twin",
]


# The torch losses that take (input, target): a Chain hands them the targets.
LOSSES = (
    torch.nn.CrossEntropyLoss,
    torch.nn.NLLLoss,
    torch.nn.MSELoss,
    torch.nn.L1Loss,
    torch.nn.BCELoss,
    torch.nn.BCEWithLogitsLoss,
    torch.nn.HuberLoss,
    torch.nn.SmoothL1Loss,
    torch.nn.KLDivLoss,
    torch.nn.PoissonNLLLoss,
    torch.nn.SoftMarginLoss,
    torch.nn.HingeEmbeddingLoss,
    torch.nn.MultiMarginLoss,
    torch.nn.MultiLabelMarginLoss,
    torch.nn.MultiLabelSoftMarginLoss,
)


class Chain(torch.nn.Sequential):
    """torch twin of nnlab's Sequential: torch.nn.Sequential, except that the targets y
    reach the losses in it (nnlab's Sequential hands its keyword arguments to every layer,
    so ``Sequential(model, CrossEntropyLoss())(x, y=labels)`` is the loss)."""

    def forward(self, x, y=None):
        for module in self:
            x = module(x, y) if isinstance(module, (Chain, *LOSSES)) else module(x)
        return x


class Elementwise(torch.nn.Module):
    """torch twin of a layer of several inputs: ``function(*xs)`` (Add, Multiply, Concat)."""

    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, *xs):
        return self.function(*xs)


class SumOfPaths(torch.nn.Module):
    """torch twin of nnlab's Residual: ``main(x) + shortcut(x)``."""

    def __init__(self, main, shortcut):
        super().__init__()
        self.main = main
        self.shortcut = shortcut

    def forward(self, x):
        return self.main(x) + self.shortcut(x)


class TupleOfHeads(torch.nn.Module):
    """torch twin of nnlab's Heads: one input, a tuple of outputs."""

    def __init__(self, *heads):
        super().__init__()
        self.heads = torch.nn.ModuleList(heads)

    def forward(self, x):
        return tuple(head(x) for head in self.heads)


def torch_twin(layer):
    """A ``torch.nn`` module computing what ``layer`` computes, with its parameters and
    buffers copied in (same order, dtype and device) and in its mode; None when there
    is none. Only nnlab's own classes have twins (a subclass may compute something else),
    and a Dropout in training mode has none (torch would draw another mask)."""
    module = _twin_structure(layer)
    if module is None:
        return None
    params = [param for param, _ in layer.params()]
    module_params = list(module.parameters())
    module_buffers = list(module.buffers())
    layer_buffers = layer.buffers()
    if [p.shape for p in params] != [p.shape for p in module_params] or len(layer_buffers) != len(module_buffers):
        return None
    if params:
        module.to(device=params[0].device, dtype=params[0].dtype)
    with torch.no_grad():
        for target, source in zip(module_params, params):
            target.copy_(source)
        for target, source in zip(module_buffers, layer_buffers):
            target.copy_(source)
    return module.train(layer.training)


def _twin_structure(layer):
    """The freshly built twin module of ``layer`` (weights not yet copied), or None."""
    kind = type(layer)
    if isinstance(layer, nn.Builder) and kind.forward is nn.Builder.forward and kind.backward is nn.Builder.backward:
        return _twin_structure(layer.sequence)
    if kind is nn.Sequential:
        children = [_twin_structure(child) for child in layer]
        return None if None in children else Chain(*children)
    if kind is nn.Residual:
        main = _twin_structure(layer.main)
        shortcut = torch.nn.Identity() if layer.shortcut is None else _twin_structure(layer.shortcut)
        return None if main is None or shortcut is None else SumOfPaths(main, shortcut)
    if kind is nn.Heads:
        heads = [_twin_structure(head) for head in layer]
        return None if None in heads else TupleOfHeads(*heads)
    if kind in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout):
        return torch.nn.Identity() if not layer.training or layer.p == 0 else None
    make = _LEAF_TWINS.get(kind)
    return None if make is None else make(layer)


def _batchnorm_twin(module_class, layer):
    """The torch batch or instance norm with the layer's options."""
    return module_class(
        layer.num_features,
        layer.eps,
        layer.momentum,
        layer.affine,
        layer.track_running_stats,
        bias=layer.has_bias,
    )


def _recurrent_twin(module_class, layer):
    """The torch RNN, LSTM or GRU with the layer's options."""
    options = dict(
        num_layers=layer.num_layers,
        bias=layer.bias,
        batch_first=layer.batch_first,
        dropout=layer.dropout,
        bidirectional=layer.bidirectional,
    )
    if module_class is torch.nn.RNN:
        options["nonlinearity"] = layer.nonlinearity
    return module_class(layer.input_size, layer.hidden_size, **options)


def _cell_twin(module_class, layer):
    """The torch RNNCell, LSTMCell or GRUCell with the layer's options."""
    if module_class is torch.nn.RNNCell:
        return module_class(layer.input_size, layer.hidden_size, layer.bias, layer.nonlinearity)
    return module_class(layer.input_size, layer.hidden_size, layer.bias)


def _drops(layer):
    """Whether a layer of the attention family draws dropout masks now (torch would draw others)."""
    p = layer.dropout if isinstance(layer, (nn.MultiheadAttention, nn.ScaledDotProductAttention)) else layer.dropout_p
    return layer.training and p > 0


def _attention_twin(layer):
    if _drops(layer):
        return None
    return torch.nn.MultiheadAttention(
        layer.embed_dim,
        layer.num_heads,
        dropout=layer.dropout,
        bias=layer.has_bias,
        kdim=layer.kdim,
        vdim=layer.vdim,
        batch_first=layer.batch_first,
    )


def _transformer_layer_twin(module_class, layer):
    """The torch encoder or decoder layer with the layer's options; None for an
    activation torch's layers do not name, or while dropout draws masks."""
    activation = layer.activation_name
    if activation is None or _drops(layer):
        return None
    return module_class(
        layer.d_model,
        layer.nhead,
        dim_feedforward=layer.dim_feedforward,
        dropout=layer.dropout_p,
        activation=activation,
        layer_norm_eps=layer.layer_norm_eps,
        batch_first=layer.batch_first,
        norm_first=layer.norm_first,
        bias=layer.has_bias,
    )


def _transformer_stack_twin(module_class, layer, **options):
    block = _twin_structure(layer.layers[0])
    norm = None if layer.norm is None else _twin_structure(layer.norm)
    if block is None or (layer.norm is not None and norm is None):
        return None
    return module_class(block, layer.num_layers, norm=norm, **options)


def _padding_twin(kind, layer):
    """The torch.nn padding module of the same name (a constant one with the layer's value)."""
    module = getattr(torch.nn, kind.__name__)
    if kind.__name__.startswith("ConstantPad"):
        return module(layer.padding, layer.value)
    return module(layer.padding)


_LEAF_TWINS = {
    nn.Linear: lambda layer: torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None),
    nn.ReLU: lambda layer: torch.nn.ReLU(),
    nn.LeakyReLU: lambda layer: torch.nn.LeakyReLU(layer.alpha),
    nn.Sigmoid: lambda layer: torch.nn.Sigmoid(),
    nn.Tanh: lambda layer: torch.nn.Tanh(),
    nn.Softmax: lambda layer: torch.nn.Softmax(dim=layer.dim),
    nn.LogSoftmax: lambda layer: torch.nn.LogSoftmax(dim=layer.dim),
    nn.Softmin: lambda layer: torch.nn.Softmin(dim=layer.dim),
    nn.Softmax2d: lambda layer: torch.nn.Softmax2d(),
    nn.GLU: lambda layer: torch.nn.GLU(layer.dim),
    nn.PReLU: lambda layer: torch.nn.PReLU(layer.num_parameters),
    nn.ELU: lambda layer: torch.nn.ELU(layer.alpha),
    nn.CELU: lambda layer: torch.nn.CELU(layer.alpha),
    nn.SELU: lambda layer: torch.nn.SELU(),
    nn.GELU: lambda layer: torch.nn.GELU(layer.approximate),
    nn.SiLU: lambda layer: torch.nn.SiLU(),
    nn.Mish: lambda layer: torch.nn.Mish(),
    nn.Softplus: lambda layer: torch.nn.Softplus(layer.beta, layer.threshold),
    nn.Softsign: lambda layer: torch.nn.Softsign(),
    nn.Hardtanh: lambda layer: torch.nn.Hardtanh(layer.min_val, layer.max_val),
    nn.ReLU6: lambda layer: torch.nn.ReLU6(),
    nn.Hardswish: lambda layer: torch.nn.Hardswish(),
    nn.Hardsigmoid: lambda layer: torch.nn.Hardsigmoid(),
    nn.Hardshrink: lambda layer: torch.nn.Hardshrink(layer.lambd),
    nn.Softshrink: lambda layer: torch.nn.Softshrink(layer.lambd),
    nn.Tanhshrink: lambda layer: torch.nn.Tanhshrink(),
    nn.Threshold: lambda layer: torch.nn.Threshold(layer.threshold, layer.value),
    nn.LogSigmoid: lambda layer: torch.nn.LogSigmoid(),
    nn.Identity: lambda layer: torch.nn.Identity(),
    nn.Unflatten: lambda layer: torch.nn.Unflatten(layer.dim, layer.unflattened_size),
    nn.Bilinear: lambda layer: torch.nn.Bilinear(
        layer.in1_features, layer.in2_features, layer.out_features, bias=layer.bias is not None
    ),
    nn.Flatten: lambda layer: torch.nn.Flatten(layer.start_dim, layer.end_dim),
    nn.Conv1d: lambda layer: _conv_twin(torch.nn.Conv1d, layer),
    nn.Conv2d: lambda layer: _conv_twin(torch.nn.Conv2d, layer),
    nn.ConvTranspose1d: lambda layer: _conv_transpose_twin(torch.nn.ConvTranspose1d, layer),
    nn.ConvTranspose2d: lambda layer: _conv_transpose_twin(torch.nn.ConvTranspose2d, layer),
    nn.MaxPool1d: lambda layer: _max_pool_twin(torch.nn.MaxPool1d, layer),
    nn.MaxPool2d: lambda layer: _max_pool_twin(torch.nn.MaxPool2d, layer),
    nn.AvgPool1d: lambda layer: torch.nn.AvgPool1d(
        layer.kernel_size, layer.stride, layer.padding, layer.ceil_mode, layer.count_include_pad
    ),
    nn.AvgPool2d: lambda layer: torch.nn.AvgPool2d(
        layer.kernel_size, layer.stride, layer.padding, layer.ceil_mode, layer.count_include_pad, layer.divisor_override
    ),
    # torch's lp_pool1d multiplies by kernel_size, so it takes an int only.
    nn.LPPool1d: lambda layer: torch.nn.LPPool1d(
        layer.norm_type, layer.kernel_size[0], layer.stride[0], layer.ceil_mode
    ),
    nn.LPPool2d: lambda layer: torch.nn.LPPool2d(layer.norm_type, layer.kernel_size, layer.stride, layer.ceil_mode),
    nn.AdaptiveMaxPool1d: lambda layer: torch.nn.AdaptiveMaxPool1d(layer.output_size, layer.return_indices),
    nn.AdaptiveMaxPool2d: lambda layer: torch.nn.AdaptiveMaxPool2d(layer.output_size, layer.return_indices),
    nn.AdaptiveAvgPool1d: lambda layer: torch.nn.AdaptiveAvgPool1d(layer.output_size),
    nn.AdaptiveAvgPool2d: lambda layer: torch.nn.AdaptiveAvgPool2d(layer.output_size),
    nn.MaxUnpool1d: lambda layer: torch.nn.MaxUnpool1d(layer.kernel_size, layer.stride, layer.padding),
    nn.MaxUnpool2d: lambda layer: torch.nn.MaxUnpool2d(layer.kernel_size, layer.stride, layer.padding),
    nn.BatchNorm1d: lambda layer: _batchnorm_twin(torch.nn.BatchNorm1d, layer),
    nn.BatchNorm2d: lambda layer: _batchnorm_twin(torch.nn.BatchNorm2d, layer),
    nn.BatchNorm3d: lambda layer: _batchnorm_twin(torch.nn.BatchNorm3d, layer),
    nn.InstanceNorm1d: lambda layer: _batchnorm_twin(torch.nn.InstanceNorm1d, layer),
    nn.InstanceNorm2d: lambda layer: _batchnorm_twin(torch.nn.InstanceNorm2d, layer),
    nn.InstanceNorm3d: lambda layer: _batchnorm_twin(torch.nn.InstanceNorm3d, layer),
    nn.RNN: lambda layer: _recurrent_twin(torch.nn.RNN, layer),
    nn.LSTM: lambda layer: _recurrent_twin(torch.nn.LSTM, layer),
    nn.GRU: lambda layer: _recurrent_twin(torch.nn.GRU, layer),
    nn.RNNCell: lambda layer: _cell_twin(torch.nn.RNNCell, layer),
    nn.LSTMCell: lambda layer: _cell_twin(torch.nn.LSTMCell, layer),
    nn.GRUCell: lambda layer: _cell_twin(torch.nn.GRUCell, layer),
    nn.Embedding: lambda layer: torch.nn.Embedding(
        layer.num_embeddings,
        layer.embedding_dim,
        layer.padding_idx,
        layer.max_norm,
        layer.norm_type,
        layer.scale_grad_by_freq,
    ),
    nn.LayerNorm: lambda layer: torch.nn.LayerNorm(
        layer.normalized_shape, layer.eps, layer.elementwise_affine, bias=layer.has_bias
    ),
    nn.RMSNorm: lambda layer: torch.nn.RMSNorm(layer.normalized_shape, layer.eps, layer.elementwise_affine),
    nn.GroupNorm: lambda layer: torch.nn.GroupNorm(
        layer.num_groups, layer.num_channels, layer.eps, layer.affine, bias=layer.has_bias
    ),
    nn.LocalResponseNorm: lambda layer: torch.nn.LocalResponseNorm(layer.size, layer.alpha, layer.beta, layer.k),
    nn.PixelShuffle: lambda layer: torch.nn.PixelShuffle(layer.upscale_factor),
    nn.PixelUnshuffle: lambda layer: torch.nn.PixelUnshuffle(layer.downscale_factor),
    nn.ChannelShuffle: lambda layer: torch.nn.ChannelShuffle(layer.groups),
    nn.Fold: lambda layer: torch.nn.Fold(
        layer.output_size, layer.kernel_size, layer.dilation, layer.padding, layer.stride
    ),
    nn.Unfold: lambda layer: torch.nn.Unfold(layer.kernel_size, layer.dilation, layer.padding, layer.stride),
    nn.CosineSimilarity: lambda layer: torch.nn.CosineSimilarity(layer.dim, layer.eps),
    nn.PairwiseDistance: lambda layer: torch.nn.PairwiseDistance(layer.norm, layer.eps, layer.keepdim),
    nn.Upsample: lambda layer: torch.nn.Upsample(
        layer.size, layer.scale_factor, layer.mode, layer.align_corners, layer.recompute_scale_factor
    ),
    nn.UpsamplingNearest2d: lambda layer: torch.nn.UpsamplingNearest2d(layer.size, layer.scale_factor),
    nn.UpsamplingBilinear2d: lambda layer: torch.nn.UpsamplingBilinear2d(layer.size, layer.scale_factor),
    nn.Add: lambda layer: Elementwise(lambda *xs: functools.reduce(torch.add, xs)),
    nn.Multiply: lambda layer: Elementwise(lambda *xs: functools.reduce(torch.mul, xs)),
    nn.Concat: lambda layer: Elementwise(lambda *xs: torch.cat(xs, dim=layer.dim)),
    nn.ScaledDotProductAttention: lambda layer: None if _drops(layer) else Elementwise(
        torch.nn.functional.scaled_dot_product_attention
    ),
    nn.MultiheadAttention: _attention_twin,
    nn.TransformerEncoderLayer: lambda layer: _transformer_layer_twin(torch.nn.TransformerEncoderLayer, layer),
    nn.TransformerDecoderLayer: lambda layer: _transformer_layer_twin(torch.nn.TransformerDecoderLayer, layer),
    nn.TransformerEncoder: lambda layer: _transformer_stack_twin(
        torch.nn.TransformerEncoder, layer, enable_nested_tensor=False
    ),
    nn.TransformerDecoder: lambda layer: _transformer_stack_twin(torch.nn.TransformerDecoder, layer),
    nn.CrossEntropyLoss: lambda layer: torch.nn.CrossEntropyLoss(
        _copy(layer.weight),
        ignore_index=layer.ignore_index,
        reduction=layer.reduction,
        label_smoothing=layer.label_smoothing,
    ),
    nn.NLLLoss: lambda layer: torch.nn.NLLLoss(
        _copy(layer.weight), ignore_index=layer.ignore_index, reduction=layer.reduction
    ),
    nn.MSELoss: lambda layer: torch.nn.MSELoss(reduction=layer.reduction),
    nn.L1Loss: lambda layer: torch.nn.L1Loss(reduction=layer.reduction),
    nn.BCELoss: lambda layer: torch.nn.BCELoss(_copy(layer.weight), reduction=layer.reduction),
    nn.BCEWithLogitsLoss: lambda layer: torch.nn.BCEWithLogitsLoss(
        _copy(layer.weight), reduction=layer.reduction, pos_weight=_copy(layer.pos_weight)
    ),
    nn.HuberLoss: lambda layer: torch.nn.HuberLoss(layer.reduction, layer.delta),
    nn.SmoothL1Loss: lambda layer: torch.nn.SmoothL1Loss(reduction=layer.reduction, beta=layer.beta),
    nn.KLDivLoss: lambda layer: torch.nn.KLDivLoss(reduction=layer.reduction, log_target=layer.log_target),
    nn.PoissonNLLLoss: lambda layer: torch.nn.PoissonNLLLoss(
        layer.log_input, layer.full, eps=layer.eps, reduction=layer.reduction
    ),
    nn.GaussianNLLLoss: lambda layer: torch.nn.GaussianNLLLoss(
        full=layer.full, eps=layer.eps, reduction=layer.reduction
    ),
    nn.SoftMarginLoss: lambda layer: torch.nn.SoftMarginLoss(reduction=layer.reduction),
    nn.MarginRankingLoss: lambda layer: torch.nn.MarginRankingLoss(layer.margin, reduction=layer.reduction),
    nn.HingeEmbeddingLoss: lambda layer: torch.nn.HingeEmbeddingLoss(layer.margin, reduction=layer.reduction),
    nn.CosineEmbeddingLoss: lambda layer: torch.nn.CosineEmbeddingLoss(layer.margin, reduction=layer.reduction),
    nn.TripletMarginLoss: lambda layer: torch.nn.TripletMarginLoss(
        layer.margin, layer.p, layer.eps, layer.swap, reduction=layer.reduction
    ),
    nn.MultiMarginLoss: lambda layer: torch.nn.MultiMarginLoss(
        layer.p, layer.margin, _copy(layer.weight), reduction=layer.reduction
    ),
    # Training mode draws its slopes from the RNG, as torch's: no twin computes the same numbers.
    nn.RReLU: lambda layer: None if layer.training else torch.nn.RReLU(layer.lower, layer.upper),
    nn.MultiLabelMarginLoss: lambda layer: torch.nn.MultiLabelMarginLoss(reduction=layer.reduction),
    nn.MultiLabelSoftMarginLoss: lambda layer: torch.nn.MultiLabelSoftMarginLoss(
        _copy(layer.weight), reduction=layer.reduction
    ),
    **{kind: functools.partial(_padding_twin, kind) for kind in (
        nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d,
        nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d,
        nn.ReplicationPad3d, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d,
    )},
}


def _conv_twin(module_class, layer):
    return module_class(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        layer.stride,
        layer.padding,
        layer.dilation,
        layer.groups,
        bias=layer.bias is not None,
        padding_mode=layer.padding_mode,
    )


def _conv_transpose_twin(module_class, layer):
    return module_class(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        layer.stride,
        layer.padding,
        layer.output_padding,
        layer.groups,
        layer.bias is not None,
        layer.dilation,
    )


def _max_pool_twin(module_class, layer):
    return module_class(
        layer.kernel_size, layer.stride, layer.padding, layer.dilation, layer.return_indices, layer.ceil_mode
    )


def _copy(weight):
    """A loss's weight buffer for its twin: a copy (torch keeps the tensor it is given), or None."""
    return None if weight is None else weight.clone()
