"""
Decision boundary of a binary MLP on moons
==========================================

Trains a small tanh MLP as a ``BinaryClassifier`` on scikit-learn's two moons, picks its
threshold on the validation ROC curve and draws the decision boundary on the test points
with ``nnlab.classifier.plot_decision_boundary_2d``.
"""

import matplotlib.pyplot as plt
import torch

from nnlab.classifier import BinaryClassifier, plot_decision_boundary_2d, select_roc_thresh
from nnlab.data import Batches, load_moons, split
from nnlab.layers import CrossEntropyLoss
from nnlab.models import MLP
from nnlab.optimizers import Adam
from nnlab.training import LayerTrainer

torch.manual_seed(0)
x, y = load_moons(1000, noise=0.2, seed=0)
x_train, y_train, x_test, y_test = split(x, y, 0.7, seed=0)
model = BinaryClassifier(MLP(2, 2, hidden_features=(32, 32), activation="tanh"))
trainer = LayerTrainer(model, CrossEntropyLoss(), Adam(model.params(), learn_rate=1e-2))
trainer.fit(Batches(x_train, y_train, 64, shuffle=True), Batches(x_test, y_test, 512), 15, verbose=False)
model.threshold = select_roc_thresh(model, x_train, y_train)

figure, axes = plt.subplots(figsize=(5, 4.5))
plot_decision_boundary_2d(model, x_test, y_test, ax=axes)
axes.set_title(f"threshold {model.threshold:.2f}")
print(f"test accuracy: {trainer.test_epoch(Batches(x_test, y_test, 512), verbose=False).accuracy:.1f}%")
