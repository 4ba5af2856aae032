"""The trainers: ``LayerTrainer`` for nnlab layers (hand-written backward passes),
``TorchTrainer`` for ``torch.nn`` modules (autograd, for side-by-side comparison), and
the ``overfit`` sanity check."""

import contextlib
import math

import torch

from ..layers import MLP, Linear, MultiTaskLoss
from ..layers.loss_base import several_inputs
from ..optimizers import clip_grad_norm_
from .base import Trainer, check_count
from .metrics import grad_norm, task_of
from .records import OverfitResult

__all__ = ["LayerTrainer", "TorchTrainer", "overfit"]


@contextlib.contextmanager
def _without_input_grad(model):
    """The model's backward inside skips the gradient w.r.t. its input (the data, which
    nobody needs); afterwards the model returns it again, as by default."""
    model.requires_input_grad(False)
    try:
        yield
    finally:
        model.requires_input_grad(True)


class _LossTrainer(Trainer):
    """What both trainers keep: the loss (called as ``loss_fn(outputs, y)``, so a loss
    of several inputs is a ValueError), the optimizer, gradient clipping, and the model
    moved to ``device``."""

    def __init__(self, model, loss_fn, optimizer, device=None, task=None, clip_grad_norm=None):
        call = several_inputs(loss_fn)
        if call is not None:
            raise ValueError(
                f"{type(self).__name__}: {call} takes several inputs, and a trainer calls loss_fn(outputs, y); "
                "train it with a loop of your own (forward, the loss on the outputs, backward, optimizer.step())"
            )
        super().__init__(model, device, _loss_task(loss_fn, task))
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.clip_grad_norm = _checked_clip(clip_grad_norm)
        if self.device is not None:
            model.to(self.device)


class LayerTrainer(_LossTrainer):
    """Trains an nnlab ``Layer`` model with a hand-written backward pass:
    ``outputs = model(x)``, ``loss = loss_fn(outputs, y)``, ``optimizer.zero_grad()``,
    ``model.backward(loss_fn.backward())``, ``optimizer.step()``; each step records the
    gradient norm (``grad_norm(model)``) before the update.

    ``task`` (default: ``task_of(loss_fn)``) picks the metrics; for classification the
    predictions are ``outputs.argmax(dim=1)``, or the model's ``classify_scores`` (see
    ``count_correct``). The gradient w.r.t. the data is not computed: the backward runs
    with ``model.requires_input_grad(False)``, and the model gets
    ``requires_input_grad(True)`` back afterwards. With ``device`` the model is moved there
    (``model.to(device)``, which keeps every parameter's identity, so an optimizer built
    before the move keeps working) and every batch too.

    Example::

        >>> import torch
        >>> from nnlab.data import Batches
        >>> from nnlab.layers import CrossEntropyLoss
        >>> from nnlab.models import MLP
        >>> from nnlab.optimizers import Adam
        >>> from nnlab.training import LayerTrainer
        >>> x = torch.randn(200, 2)
        >>> y = (x[:, 0] * x[:, 1] > 0).long()       # which pair of quadrants
        >>> model = MLP(2, 2, hidden_features=(16,))
        >>> trainer = LayerTrainer(model, CrossEntropyLoss(), Adam(model.params(), learn_rate=0.05))
        >>> train, test = Batches(x[:150], y[:150], 32, shuffle=True), Batches(x[150:], y[150:], 50)
        >>> fit = trainer.fit(train, test, 20, print_every=None)
        >>> len(fit.train_loss), fit.train_loss[-1] < fit.train_loss[0]
        (20, True)
    """

    def train_batch(self, batch):
        x, y = self.to_device(batch)
        outputs = self.model(_check_flat_input(self.model, x))
        loss = self.check_loss(self.loss_fn(outputs, y))
        self.optimizer.zero_grad()
        dout = self.loss_fn.backward()
        with _without_input_grad(self.model):
            self.model.backward(dout)
        norm = grad_norm(self.model)
        if self.clip_grad_norm is not None:
            clip_grad_norm_(self.model, self.clip_grad_norm)
        self.optimizer.step()
        return self.batch_result(loss, outputs, y, norm)

    def test_batch(self, batch):
        x, y = self.to_device(batch)
        outputs = self.model(_check_flat_input(self.model, x))
        loss = self.check_loss(self.loss_fn(outputs, y))
        return self.batch_result(loss, outputs, y)


def _checked_clip(max_norm):
    """``max_norm`` as a float (None: no clipping); ValueError unless a number >= 0."""
    if max_norm is None:
        return None
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or not max_norm >= 0:
        raise ValueError(f"clip_grad_norm must be a number >= 0 or None, got {max_norm!r}")
    return float(max_norm)


def _check_flat_input(model, x):
    """``x``, unless ``model`` is an ``MLP`` that takes flat vectors and ``x`` holds
    samples of several dimensions with as many numbers (images for ``MLP(3*32*32, ...)``):
    then a ValueError that says how to build the MLP that flattens them."""
    layers = getattr(model, "sequence", None)
    first = layers[0] if isinstance(model, MLP) and len(layers) else None
    if isinstance(first, Linear) and x.dim() > 2 and math.prod(x.shape[1:]) == first.in_features:
        sample = tuple(x.shape[1:])
        raise ValueError(
            f"LayerTrainer: the batches hold samples of shape {sample}, and MLP({first.in_features}, ...) takes "
            f"flat vectors (N, {first.in_features}); build MLP({sample}, ...) to flatten them, or flatten the batches"
        )
    return x


def _loss_task(loss_fn, task):
    """``task``, or the loss's; a per-head tuple needs a MultiTaskLoss to split the targets."""
    task = task_of(loss_fn) if task is None else task
    if isinstance(task, tuple) and not isinstance(loss_fn, MultiTaskLoss):
        raise ValueError(f"a task per head {task!r} needs a MultiTaskLoss, got {type(loss_fn).__name__}")
    return task


class TorchTrainer(_LossTrainer):
    """Trains a ``torch.nn.Module`` with autograd, the same way ``LayerTrainer`` trains
    nnlab layers, for side-by-side comparison: ``optimizer.zero_grad()``,
    ``loss_fn(model(x), y).backward()``, ``optimizer.step()``, recording the same
    metrics and gradient norms.

    ``optimizer``: any ``torch.optim`` optimizer, or an nnlab optimizer over
    ``model.parameters()``. ``loss_fn``: a callable such as ``torch.nn.CrossEntropyLoss()``;
    ``task`` and ``clip_grad_norm`` (with ``torch.nn.utils.clip_grad_norm_``) as for
    ``LayerTrainer``.

    Example::

        >>> import torch
        >>> from nnlab.data import Batches
        >>> from nnlab.training import TorchTrainer
        >>> x = torch.randn(200, 2)
        >>> y = (x[:, 0] * x[:, 1] > 0).long()
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        >>> trainer = TorchTrainer(model, torch.nn.CrossEntropyLoss(), torch.optim.Adam(model.parameters(), lr=0.05))
        >>> fit = trainer.fit(Batches(x[:150], y[:150], 32), Batches(x[150:], y[150:], 50), 20, print_every=None)
        >>> sorted(fit.metrics)                      # the same records as LayerTrainer's
        ['test_acc', 'test_loss', 'train_acc', 'train_loss']
    """

    def train_batch(self, batch):
        x, y = self.to_device(batch)
        self.optimizer.zero_grad()
        outputs = self.model(x)
        loss_tensor = self.loss_fn(outputs, y)
        loss = self.check_loss(loss_tensor.item())
        loss_tensor.backward()
        norm = grad_norm(self.model)
        if self.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        with torch.no_grad():
            self.optimizer.step()
        return self.batch_result(loss, outputs.detach(), y, norm)

    def test_batch(self, batch):
        x, y = self.to_device(batch)
        with torch.no_grad():
            outputs = self.model(x)
            loss = self.check_loss(self.loss_fn(outputs, y).item())
        return self.batch_result(loss, outputs, y)


def overfit(model, loss_fn, optimizer, batches, max_epochs=100, device=None, verbose=False):
    """The overfitting sanity check: trains on ``batches`` (a few, e.g. 20 samples)
    epoch after epoch until the training accuracy reaches 100% or ``max_epochs``.

    Accuracy is that of the training pass (predictions made before each step).
    Dispatches to ``TorchTrainer`` for a ``torch.nn.Module``, else ``LayerTrainer``.

    Returns:
        an ``OverfitResult``: the last epoch's ``EpochResult`` (losses, accuracy) with
        ``num_epochs``, the number of epochs trained.
    """
    check_count("overfit", "max_epochs", max_epochs, allow_none=False)
    trainer_class = TorchTrainer if isinstance(model, torch.nn.Module) else LayerTrainer
    trainer = trainer_class(model, loss_fn, optimizer, device=device)
    result = None
    for epoch in range(1, max_epochs + 1):
        trainer.epoch = epoch
        try:
            result = trainer.train_epoch(batches, verbose=verbose)
        finally:
            trainer.epoch = None
        if result.accuracy >= 100.0:
            break
    return OverfitResult(result.losses, result.accuracy, epoch)
