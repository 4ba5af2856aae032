"""nnlab layers: every layer, loss and container, with hand-written backward passes.

The layers live in modules by family; every public name is importable from here.
"""

from .base import Layer
from .containers import ACTIVATIONS, MLP, Builder, Sequential, make_activation
from .conv import CNN, Conv2d
from .dense import Dropout, Flatten, LeakyReLU, Linear, ReLU, Sigmoid, Softmax, Tanh, TanH
from .losses import BCEWithLogitsLoss, CrossEntropyLoss, Loss, MSELoss
from .norm import BatchNorm1d, BatchNorm2d, Dropout2d
from .pooling import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d
from .residual import Heads, Residual, ResidualBlock, ResidualBottleneckBlock, ResNet, count_params

__all__ = [
    "ACTIVATIONS", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "AvgPool2d", "BCEWithLogitsLoss",
    "BatchNorm1d", "BatchNorm2d", "Builder", "CNN", "Conv2d", "CrossEntropyLoss", "Dropout",
    "Dropout2d", "Flatten", "Heads", "Layer", "LeakyReLU", "Linear", "Loss", "MLP", "MSELoss",
    "MaxPool2d", "ReLU", "ResNet", "Residual", "ResidualBlock", "ResidualBottleneckBlock",
    "Sequential", "Sigmoid", "Softmax", "Tanh", "TanH", "count_params", "make_activation",
]
