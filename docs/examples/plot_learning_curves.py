"""
Learning curves of an MLP on the bundled digits
===============================================

Trains a small MLP from nnlab layers on scikit-learn's 8x8 digits with ``LayerTrainer``
and draws the loss and accuracy per epoch with ``nnlab.plot.plot_fit``.
"""

import torch

from nnlab import data
from nnlab.layers import CrossEntropyLoss
from nnlab.models import MLP
from nnlab.optimizers import Adam
from nnlab.plot import plot_fit
from nnlab.training import LayerTrainer

torch.manual_seed(0)
images, labels = data.load_digits()
x = images.reshape(len(images), -1)
x_train, y_train, x_test, y_test = data.split(x, labels, 0.2, seed=0)
model = MLP(64, 10, (64,))
trainer = LayerTrainer(model, CrossEntropyLoss(), Adam(model.params(), learn_rate=1e-2))
fit = trainer.fit(data.Batches(x_train, y_train, 32, shuffle=True), data.Batches(x_test, y_test, 256), 8, verbose=False)
figure, axes = plot_fit(fit, legend="MLP 64-64-10")
print(f"test accuracy after {fit.num_epochs} epochs: {fit.test_acc[-1]:.1f}%")
