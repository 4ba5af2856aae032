"""nnlab layers: every layer, loss and container, with hand-written backward passes.

The layers live in modules by family; every public name is importable from here. The
model builders (``MLP``, ``CNN``, ``ResNet``, public as ``nnlab.models``) are importable
from here too.
"""

from ._builders import CNN, MLP, ResNet, count_params
from .attention import MultiheadAttention, ScaledDotProductAttention
from .base import Layer
from .containers import ACTIVATIONS, Builder, Sequential, make_activation
from .conv import Conv1d, Conv2d, ConvTranspose1d, ConvTranspose2d
from .dense import Dropout, Flatten, LeakyReLU, Linear, ReLU, Sigmoid, Softmax, Tanh, TanH
from .losses import (
    BCELoss,
    BCEWithLogitsLoss,
    ClippedCrossEntropyLoss,
    CosineEmbeddingLoss,
    CrossEntropyLoss,
    GaussianNLLLoss,
    HingeEmbeddingLoss,
    HuberLoss,
    KLDivLoss,
    L1Loss,
    Loss,
    MarginRankingLoss,
    MSELoss,
    MultiLabelSoftMarginLoss,
    MultiMarginLoss,
    MultiTaskLoss,
    NLLLoss,
    PoissonNLLLoss,
    SmoothL1Loss,
    SoftMarginLoss,
)
from .embedding import Embedding
from .merge import Add, Concat, Merge, Multiply
from .norm import BatchNorm1d, BatchNorm2d, BatchNorm3d, Dropout2d
from .pooling import (
    AdaptiveAvgPool1d,
    AdaptiveAvgPool2d,
    AdaptiveMaxPool1d,
    AdaptiveMaxPool2d,
    AvgPool1d,
    AvgPool2d,
    LPPool1d,
    LPPool2d,
    MaxPool1d,
    MaxPool2d,
)
from .unpooling import MaxUnpool1d, MaxUnpool2d
from .sample_norm import (
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    LayerNorm,
    LocalResponseNorm,
    RMSNorm,
)
from .recurrent import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from .residual import Heads, Residual, ResidualBlock, ResidualBottleneckBlock
from .transformer import (
    LearnedPositionalEncoding,
    SinusoidalPositionalEncoding,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
    generate_square_subsequent_mask,
)
from .upsample import Upsample

__all__ = [
    "ACTIVATIONS", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "Add",
    "AvgPool1d", "AvgPool2d", "BCELoss", "BCEWithLogitsLoss", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
    "Builder", "CNN", "ClippedCrossEntropyLoss", "Concat", "Conv1d", "Conv2d", "ConvTranspose1d",
    "ConvTranspose2d", "CosineEmbeddingLoss", "CrossEntropyLoss", "Dropout", "Dropout2d", "Embedding",
    "Flatten", "GRU", "GRUCell", "GaussianNLLLoss", "GroupNorm", "Heads", "HingeEmbeddingLoss", "HuberLoss",
    "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "KLDivLoss", "L1Loss", "LPPool1d", "LPPool2d", "LSTM",
    "LSTMCell", "Layer", "LayerNorm", "LeakyReLU", "Linear", "LocalResponseNorm", "Loss", "MLP", "MSELoss",
    "MarginRankingLoss", "MaxPool1d", "MaxPool2d", "MaxUnpool1d", "MaxUnpool2d", "Merge",
    "MultiLabelSoftMarginLoss", "MultiMarginLoss", "MultiTaskLoss", "Multiply", "NLLLoss", "PoissonNLLLoss",
    "RMSNorm", "RNN", "RNNCell", "ReLU", "ResNet", "Residual", "ResidualBlock", "ResidualBottleneckBlock",
    "Sequential", "Sigmoid", "SmoothL1Loss", "SoftMarginLoss", "Softmax", "TanH", "Tanh", "Upsample",
    "count_params", "make_activation",
    "LearnedPositionalEncoding", "MultiheadAttention", "ScaledDotProductAttention", "SinusoidalPositionalEncoding",
    "TransformerDecoder", "TransformerDecoderLayer", "TransformerEncoder", "TransformerEncoderLayer",
    "generate_square_subsequent_mask",
]
