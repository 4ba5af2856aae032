"""
A graph model and its diagram
=============================

``nnlab.graph`` wires layers into any directed acyclic graph. ``Model.summary()`` lists
the nodes; ``to_dot`` gives the diagram as Graphviz DOT text, which ``plot_graph`` renders
to .png/.svg/.pdf when Graphviz's ``dot`` program is installed (the text is shown here, so
the example runs without it).
"""

import shutil

import torch

from nnlab.graph import Concat, Input, Model, plot_graph, to_dot
from nnlab.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Upsample

torch.manual_seed(0)
x = Input(shape=(1, 8, 8), name="image")
skip = ReLU()(Conv2d(1, 8, 3, padding=1)(x))
down = ReLU()(Conv2d(8, 16, 3, padding=1)(MaxPool2d(2)(skip)))
joined = Concat(dim=1)(Upsample(scale_factor=2)(down), skip)
scores = Linear(24 * 4 * 4, 10)(Flatten()(MaxPool2d(2)(joined)), name="scores")
model = Model(x, scores)
model.summary()
print(to_dot(model))
if shutil.which("dot"):
    plot_graph(model, "unet.png")
