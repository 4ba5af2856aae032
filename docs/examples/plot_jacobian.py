"""
The Jacobian of a layer, from its hand-written backward
=======================================================

``nnlab.plot.plot_jacobian`` builds the full Jacobian of a layer from its backward (one
vector-Jacobian product per output element) and draws it: dense for ``Linear``, a
diagonal for ``ReLU``, a band for ``Conv2d``.
"""

import matplotlib.pyplot as plt
import torch

from nnlab.layers import Conv2d, Linear, ReLU
from nnlab.plot import plot_jacobian

torch.manual_seed(0)
figure, axes = plt.subplots(1, 3, figsize=(12, 4))
plot_jacobian(Linear(6, 4), torch.randn(1, 6), ax=axes[0])
plot_jacobian(ReLU(), torch.randn(1, 8), ax=axes[1])
plot_jacobian(Conv2d(1, 1, 3, padding=1), torch.randn(1, 1, 4, 4), ax=axes[2])
for ax, title in zip(axes, ["Linear(6, 4)", "ReLU", "Conv2d(1, 1, 3, padding=1) on 4x4"]):
    ax.set_title(title)
