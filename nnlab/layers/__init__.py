"""nnlab layers: every layer, loss and container, with hand-written backward passes.

The layers live in modules by family; every public name is importable from here. The
model builders (``MLP``, ``CNN``, ``ResNet``) live in ``nnlab.models``, a module above
this package; they are importable from here too, looked up on first use so that this
package never imports the modules built on it.
"""

from .base import Layer
from .containers import ACTIVATIONS, Builder, Sequential, make_activation
from .conv import Conv1d, Conv2d, ConvTranspose1d, ConvTranspose2d
from .dense import Dropout, Flatten, LeakyReLU, Linear, ReLU, Sigmoid, Softmax, Tanh, TanH
from .losses import (
    BCELoss,
    BCEWithLogitsLoss,
    ClippedCrossEntropyLoss,
    CrossEntropyLoss,
    L1Loss,
    Loss,
    MSELoss,
    MultiTaskLoss,
    NLLLoss,
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
    MaxUnpool1d,
    MaxUnpool2d,
)
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
from .upsample import Upsample

_MODEL_NAMES = ("MLP", "CNN", "ResNet", "count_params")


def __getattr__(name):
    if name in _MODEL_NAMES:
        from .. import models

        return getattr(models, name)
    raise AttributeError(f"module 'nnlab.layers' has no attribute '{name}'")


__all__ = [
    "Embedding", "GRU", "GRUCell", "LSTM", "LSTMCell", "RNN", "RNNCell",
    "AdaptiveAvgPool1d", "AdaptiveMaxPool1d", "AvgPool1d", "Conv1d", "ConvTranspose1d", "ConvTranspose2d",
    "LPPool1d", "LPPool2d", "MaxPool1d", "MaxUnpool1d", "MaxUnpool2d",
    "ACTIVATIONS", "Add", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "AvgPool2d", "BCELoss", "BCEWithLogitsLoss",
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "Builder", "CNN", "ClippedCrossEntropyLoss", "Concat", "Conv2d",
    "CrossEntropyLoss", "Dropout", "Dropout2d", "Flatten", "GroupNorm", "Heads", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "L1Loss",
    "LayerNorm", "LocalResponseNorm", "Layer", "LeakyReLU", "Linear",
    "Loss", "MLP", "MSELoss", "MaxPool2d", "Merge", "MultiTaskLoss", "Multiply", "NLLLoss", "RMSNorm", "ReLU", "ResNet",
    "Residual", "ResidualBlock", "ResidualBottleneckBlock", "Sequential", "Sigmoid", "Softmax", "Tanh", "TanH",
    "Upsample", "count_params", "make_activation",
]
