"""nnlab layers: every layer, loss and container, with hand-written backward passes."""

from .base import Layer
from .containers import ACTIVATIONS, MLP, Builder, Sequential, make_activation
from .dense import Dropout, Flatten, LeakyReLU, Linear, ReLU, Sigmoid, Softmax, Tanh, TanH
from .losses import BCEWithLogitsLoss, CrossEntropyLoss, Loss, MSELoss
from .norm import BatchNorm1d, BatchNorm2d, Dropout2d
from .residual import Heads, Residual, ResidualBlock, ResidualBottleneckBlock, ResNet, count_params
from .conv import CNN, Conv2d
from .pooling import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d
