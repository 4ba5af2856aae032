"""nnlab layers: every layer, loss and container, with hand-written backward passes."""

from .base import Layer
from .containers import ACTIVATIONS, MLP, Builder, Sequential, make_activation
from .dense import Dropout, Flatten, LeakyReLU, Linear, ReLU, Sigmoid, Softmax, Tanh, TanH
from .losses import BCEWithLogitsLoss, CrossEntropyLoss, Loss, MSELoss
