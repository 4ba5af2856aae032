"""Training loops: result records, the abstract ``Trainer`` with ``fit`` (progress bars,
checkpoints, resuming, early stopping, divergence checks), ``LayerTrainer`` for nnlab
layers, ``TorchTrainer`` for ``torch.nn`` modules, and the ``overfit`` sanity check.

Checkpoints
-----------
``fit(..., checkpoints=PATH)`` rewrites PATH after every epoch, atomically (a temporary
file in the same folder, flushed and fsync'ed, then ``os.replace``: a crash while
saving leaves the previous checkpoint intact), with a checksum of its whole content
(``nnlab.checkpoints``). The file is a dict (see ``Trainer.checkpoint``) that holds

* ``"best_model"``: the weights of the epoch with the best test accuracy so far; it
  changes exactly when test accuracy improves. ``fit`` ends by loading these weights
  into the model, so after ``fit(..., checkpoints=PATH)`` the model is the best one.
* ``"model"``, ``"optimizer"``, ``"epoch"``, ``"rng"``, ``"fit_result"``: the state at
  the end of the last completed epoch, which ``fit(..., resume=PATH)`` (or
  ``Trainer.load_checkpoint(PATH)``) restores, so that training continues exactly as
  an uninterrupted run with the same data would have. Loading is all or nothing:
  everything is checked against the file's checksum, the model and the optimizer
  before anything changes.
* ``"config"``: what the caller passed as ``fit(..., config=...)`` (the data, split
  seed, model, batch size... of the run; None if nothing), for whoever resumes it.

``num_epochs`` counts from the start of the whole run: ``fit(dl, dl_test, 10,
checkpoints=p, resume=p)`` after 4 saved epochs trains epochs 5 to 10 and returns a
``FitResult`` for all 10.
"""

import abc
import math
import sys
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from .checkpoints import (  # noqa: F401  (CHECKPOINT_FORMAT, save_checkpoint: public names of this module too)
    CHECKPOINT_FORMAT,
    CheckpointError,
    check_rng_state,
    check_state_fits,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


class BatchResult(NamedTuple):
    """One batch: its loss and how many of its samples were classified correctly."""

    loss: float
    num_correct: int


class EpochResult(NamedTuple):
    """One pass over a data loader: the loss of every batch and the accuracy in percent."""

    losses: list
    accuracy: float


class FitResult(NamedTuple):
    """A whole fit: one value per epoch (loss = the epoch's mean batch loss, accuracy in percent)."""

    num_epochs: int
    train_loss: list
    train_acc: list
    test_loss: list
    test_acc: list


class OverfitResult(EpochResult):
    """What ``overfit`` returns: the last epoch's ``EpochResult`` (same fields, same
    positions, ``isinstance(r, EpochResult)``) plus ``num_epochs``, the number of
    epochs it trained."""

    def __new__(cls, losses, accuracy, num_epochs):
        result = super().__new__(cls, losses, accuracy)
        result.num_epochs = num_epochs
        return result

    def __getnewargs__(self):
        return (self.losses, self.accuracy, self.num_epochs)

    def __repr__(self):
        return f"OverfitResult(losses={self.losses!r}, accuracy={self.accuracy!r}, num_epochs={self.num_epochs!r})"


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite. ``epoch`` (None outside ``fit``) and ``batch`` are
    1-based; ``phase`` is 'train' or 'test'."""

    def __init__(self, loss, epoch, batch, phase):
        where = f"epoch {epoch}, batch {batch}" if epoch is not None else f"batch {batch}"
        super().__init__(
            f"training diverged: the {phase} loss is {loss} at {where}; "
            "try a lower learning rate (or check the data and the loss)"
        )
        self.loss = loss
        self.epoch = epoch
        self.batch = batch
        self.phase = phase


def _check_count(owner, name, value, allow_none=True, minimum=1):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an int >= {minimum}{' or None' if allow_none else ''}, got {value!r}")


# The trainers -------------------------------------------------------------------------


class _Progress:
    """Early-stopping and best-model bookkeeping, replayable from a FitResult."""

    def __init__(self):
        self.best_test_loss = None
        self.epochs_without_improvement = 0
        self.best_acc = None
        self.best_epoch = None

    def update(self, epoch, test_loss, test_acc):
        """Records one epoch; True if test accuracy improved (a new best model)."""
        if self.best_test_loss is None or test_loss < self.best_test_loss:
            self.best_test_loss = test_loss
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
        if self.best_acc is None or test_acc > self.best_acc:
            self.best_acc = test_acc
            self.best_epoch = epoch
            return True
        return False


class Trainer(abc.ABC):
    """Trains and evaluates a model, one batch at a time.

    Subclasses implement ``train_batch`` (forward, loss, backward, optimizer step) and
    ``test_batch`` (forward and loss only), each returning a ``BatchResult``; this class
    runs the epochs. A data loader is any iterable of ``(x, y)`` batches with ``len()``
    (a ``torch.utils.data.DataLoader`` or ``nnlab.data.Batches``).

    Progress (epoch headers and one tqdm bar per epoch and phase, showing the running
    loss and accuracy) goes to ``sys.stderr``, so that stdout holds only results;
    ``verbose=False`` prints nothing at all.
    """

    def __init__(self, model, device=None):
        self.model = model
        self.device = torch.device(device) if device is not None else None
        self.epoch = None  # the epoch fit is running (1-based); None outside fit
        self._phase = "train"
        self._batch = 0
        self._restored = None  # the checkpoint load_checkpoint restored last, for fit(resume=...)

    # Whole runs ---------------------------------------------------------------------

    def fit(
        self,
        dl_train,
        dl_test,
        num_epochs,
        checkpoints=None,
        early_stopping=None,
        print_every=1,
        resume=None,
        config=None,
        **kw,
    ):
        """Trains for ``num_epochs`` epochs, testing after each, and returns a ``FitResult``.

        Args:
            dl_train, dl_test: data loaders.
            num_epochs: the total number of epochs of the run (counting those a
                resumed checkpoint already did).
            checkpoints: a file path. After every epoch the file is rewritten
                atomically (see the module docstring); its ``best_model`` changes
                whenever test accuracy improves, and at the end of ``fit`` the model
                is loaded with those best weights.
            early_stopping: k: stop after k epochs in a row without a lower test loss.
            print_every: print an epoch header every this many epochs (and for the
                last); None: never.
            resume: a checkpoint path: restore the model, optimizer, RNG state and
                history saved there and continue from the epoch after it. Or the
                dict that this trainer's ``load_checkpoint`` just returned, to change
                something between restoring and training (as with PyTorch's
                ``optimizer.load_state_dict`` followed by a new learning rate):
                ``c = trainer.load_checkpoint(p); trainer.optimizer.learn_rate = 0.01;
                trainer.fit(..., resume=c)``.
            config: a dict of plain values describing the run (data, split seed,
                model, batch size, ...), saved in every checkpoint as ``"config"``;
                ``fit`` does not interpret it.
            kw: ``max_batches`` (per epoch and phase) and ``verbose`` (default True),
                passed to ``train_epoch`` and ``test_epoch``.

        Raises:
            TrainingDiverged: a loss became NaN or infinite (names epoch and batch).
            CheckpointError: ``resume`` is damaged or does not fit this model and
                optimizer (nothing is changed then).
        """
        _check_count("fit", "num_epochs", num_epochs, allow_none=False, minimum=0)
        _check_count("fit", "early_stopping", early_stopping)
        _check_count("fit", "print_every", print_every)
        verbose = kw.get("verbose", True)
        history = {"train_loss": [], "train_acc": [], "test_loss": [], "test_acc": []}
        progress = _Progress()
        best_state = None
        if resume is not None:
            checkpoint = self._checkpoint_to_resume(resume)
            history = {key: list(values) for key, values in checkpoint["fit_result"].items() if key in history}
            for epoch, (loss, acc) in enumerate(zip(history["test_loss"], history["test_acc"]), start=1):
                progress.update(epoch, loss, acc)
            best_state = checkpoint["best_model"]
        first_epoch = len(history["train_loss"]) + 1

        try:
            for epoch in range(first_epoch, num_epochs + 1):
                if early_stopping is not None and progress.epochs_without_improvement >= early_stopping:
                    self._say(
                        verbose,
                        f"Early stopping: no lower test loss in the last {early_stopping} epochs",
                    )
                    break
                self.epoch = epoch
                if print_every is not None and (epoch % print_every == 0 or epoch == num_epochs):
                    self._say(verbose, f"--- EPOCH {epoch}/{num_epochs} ---")
                train = self.train_epoch(dl_train, **kw)
                test = self.test_epoch(dl_test, **kw)
                history["train_loss"].append(sum(train.losses) / len(train.losses))
                history["train_acc"].append(train.accuracy)
                history["test_loss"].append(sum(test.losses) / len(test.losses))
                history["test_acc"].append(test.accuracy)
                if progress.update(epoch, history["test_loss"][-1], test.accuracy) and checkpoints is not None:
                    best_state = self._model_state()
                if checkpoints is not None:
                    result = FitResult(len(history["train_loss"]), **history)
                    save_checkpoint(checkpoints, self.checkpoint(result, best_state, progress, config))
        finally:
            self.epoch = None

        if checkpoints is not None and best_state is not None:
            self.model.load_state_dict(best_state)
        return FitResult(len(history["train_loss"]), **history)

    def train_epoch(self, dl_train, **kw):
        """One pass over ``dl_train`` in training mode, updating the model; an ``EpochResult``."""
        self.model.train(True)
        return self._foreach_batch(dl_train, self.train_batch, "train", **kw)

    def test_epoch(self, dl_test, **kw):
        """One pass over ``dl_test`` in evaluation mode, without updates; an ``EpochResult``."""
        self.model.train(False)
        return self._foreach_batch(dl_test, self.test_batch, "test", **kw)

    @abc.abstractmethod
    def train_batch(self, batch) -> BatchResult:
        """Forward, loss, backward and an optimizer step on one ``(x, y)`` batch."""

    @abc.abstractmethod
    def test_batch(self, batch) -> BatchResult:
        """Forward and loss on one ``(x, y)`` batch, without changing the model."""

    # Helpers for subclasses -------------------------------------------------------------

    def to_device(self, batch):
        """The batch's ``(x, y)`` moved to ``self.device`` (unchanged when it is None)."""
        x, y = batch
        if self.device is not None:
            x = x.to(self.device)
            y = y.to(self.device)
        return x, y

    def count_correct(self, scores, y):
        """How many rows of ``scores`` (N, C) have their argmax at the target class;
        ``y`` is class indices (N,) or one-hot / probabilities (N, C). Override for
        other kinds of predictions."""
        labels = y.argmax(dim=1) if y.dim() == 2 else y
        return int((scores.argmax(dim=1) == labels).sum().item())

    def check_loss(self, loss):
        """``loss`` as a float; ``TrainingDiverged`` naming the epoch and batch if it is
        NaN or infinite. ``train_batch`` calls this before any update."""
        value = float(loss)
        if not math.isfinite(value):
            raise TrainingDiverged(value, self.epoch, self._batch, self._phase)
        return value

    # Checkpoints -------------------------------------------------------------------------

    def checkpoint(self, fit_result, best_state, progress=None, config=None):
        """The dict that ``fit`` saves: ``format``, ``epoch`` (completed epochs),
        ``model`` and ``optimizer`` (their state_dicts now; ``optimizer`` is None
        without one), ``rng`` (torch's and Python's RNG state), ``fit_result`` (the
        FitResult so far, as a dict), ``best_model``, ``best_epoch``, ``best_accuracy``
        and ``config`` (``fit``'s). ``save_checkpoint`` adds its ``checksum``."""
        optimizer = self._optimizer_with_state()
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": fit_result.num_epochs,
            "model": self._model_state(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "rng": rng_state(),
            "fit_result": fit_result._asdict(),
            "best_model": best_state,
            "best_epoch": progress.best_epoch if progress is not None else None,
            "best_accuracy": progress.best_acc if progress is not None else None,
            "config": config,
        }

    def load_checkpoint(self, path):
        """Restores what a ``fit`` checkpoint saved for the last completed epoch (model,
        optimizer, RNG state) and returns the checkpoint dict; a following
        ``fit(..., resume=path)`` does this itself. For the best weights instead:
        ``model.load_state_dict(load_checkpoint(path)["best_model"])``.

        All or nothing: the file (checksum, structure), the model's names and shapes,
        the optimizer's kind, hyperparameters and per-parameter state, and the RNG
        state are all checked before anything changes; ``CheckpointError`` naming the
        file leaves model, optimizer and RNGs as they were."""
        checkpoint = load_checkpoint(path, map_location=self._model_device())
        optimizer = self._optimizer_with_state()
        try:
            check_state_fits("model", checkpoint["model"], self.model.state_dict())
            if (checkpoint["optimizer"] is None) != (optimizer is None):
                saved = "no optimizer state" if checkpoint["optimizer"] is None else "an optimizer state"
                here = "one" if optimizer is not None else "none"
                raise ValueError(f"the checkpoint holds {saved}, this trainer has {here}")
            check_rng_state(checkpoint["rng"])
            # The optimizer's load_state_dict checks everything before it changes
            # anything, so it goes first; the model and RNG states were checked above.
            if optimizer is not None:
                optimizer.load_state_dict(checkpoint["optimizer"])
        except ValueError as error:
            raise CheckpointError(f"{path}: does not fit this model and optimizer: {error}") from error
        self.model.load_state_dict(checkpoint["model"])
        set_rng_state(checkpoint["rng"])
        self._restored = checkpoint
        return checkpoint

    def _checkpoint_to_resume(self, resume):
        """The checkpoint ``fit(..., resume=...)`` continues, restored into this trainer."""
        if not isinstance(resume, dict):
            return self.load_checkpoint(resume)
        if resume is not self._restored:
            raise ValueError(
                "fit: resume takes a checkpoint path, or the dict that this trainer's "
                "load_checkpoint just returned (its state is then in the model); got another dict"
            )
        self._restored = None
        return resume

    def _optimizer_with_state(self):
        """The trainer's optimizer if it has one that saves its state, else None."""
        optimizer = getattr(self, "optimizer", None)
        return optimizer if optimizer is not None and hasattr(optimizer, "state_dict") else None

    def _model_state(self):
        """A copy of the model's state_dict that later training does not change."""
        return {key: value.detach().clone() for key, value in self.model.state_dict().items()}

    def _model_device(self):
        if self.device is not None:
            return self.device
        for value in self.model.state_dict().values():
            return value.device
        return torch.device("cpu")

    # The loop ------------------------------------------------------------------------------

    def _say(self, verbose, text):
        if verbose:
            print(text, file=sys.stderr, flush=True)

    def _foreach_batch(self, dl, forward_fn, phase, max_batches=None, verbose=True):
        _check_count(f"{phase}_epoch", "max_batches", max_batches)
        num_batches = len(dl)
        if max_batches is not None:
            num_batches = min(num_batches, max_batches)
        losses = []
        num_correct = 0
        num_samples = 0
        self._phase = phase
        description = phase if self.epoch is None else f"{phase} {self.epoch}"
        with tqdm(total=num_batches, desc=description, file=sys.stderr, disable=not verbose) as bar:
            # range first: zip stops without drawing a batch past max_batches.
            for index, batch in zip(range(num_batches), dl):
                self._batch = index + 1
                result = forward_fn(batch)
                loss = self.check_loss(result.loss)
                losses.append(loss)
                num_correct += int(result.num_correct)
                num_samples += batch[1].shape[0]
                bar.set_postfix(
                    loss=f"{sum(losses) / len(losses):.3f}",
                    acc=f"{100.0 * num_correct / num_samples:.1f}%",
                    refresh=False,
                )
                bar.update()
        if num_samples == 0:
            raise ValueError(f"{phase}_epoch: the data loader yielded no samples")
        return EpochResult(losses=losses, accuracy=100.0 * num_correct / num_samples)


class LayerTrainer(Trainer):
    """Trains an nnlab ``Layer`` model with a hand-written backward pass:
    ``scores = model(x)``, ``loss = loss_fn(scores, y)``, ``optimizer.zero_grad()``,
    ``model.backward(loss_fn.backward())``, ``optimizer.step()``.

    Predictions are ``scores.argmax(dim=1)``. With ``device`` the model is moved there
    (``model.to(device)``, which keeps every parameter's identity, so an optimizer built
    before the move keeps working) and every batch too.
    """

    def __init__(self, model, loss_fn, optimizer, device=None):
        super().__init__(model, device)
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        if self.device is not None:
            model.to(self.device)

    def train_batch(self, batch):
        x, y = self.to_device(batch)
        scores = self.model(x)
        loss = self.check_loss(self.loss_fn(scores, y))
        self.optimizer.zero_grad()
        dout = self.loss_fn.backward()
        self.model.backward(dout)
        self.optimizer.step()
        return BatchResult(loss, self.count_correct(scores, y))

    def test_batch(self, batch):
        x, y = self.to_device(batch)
        scores = self.model(x)
        loss = self.check_loss(self.loss_fn(scores, y))
        return BatchResult(loss, self.count_correct(scores, y))


class TorchTrainer(Trainer):
    """Trains a ``torch.nn.Module`` with autograd, the same way ``LayerTrainer`` trains
    nnlab layers, for side-by-side comparison: ``optimizer.zero_grad()``,
    ``loss_fn(model(x), y).backward()``, ``optimizer.step()``.

    ``optimizer``: any ``torch.optim`` optimizer, or an nnlab optimizer over
    ``model.parameters()``. ``loss_fn``: a callable such as ``torch.nn.CrossEntropyLoss()``.
    """

    def __init__(self, model, loss_fn, optimizer, device=None):
        super().__init__(model, device)
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        if self.device is not None:
            model.to(self.device)

    def train_batch(self, batch):
        x, y = self.to_device(batch)
        self.optimizer.zero_grad()
        scores = self.model(x)
        loss_tensor = self.loss_fn(scores, y)
        loss = self.check_loss(loss_tensor.item())
        loss_tensor.backward()
        with torch.no_grad():
            self.optimizer.step()
        return BatchResult(loss, self.count_correct(scores.detach(), y))

    def test_batch(self, batch):
        x, y = self.to_device(batch)
        with torch.no_grad():
            scores = self.model(x)
            loss = self.check_loss(self.loss_fn(scores, y).item())
        return BatchResult(loss, self.count_correct(scores, y))


def overfit(model, loss_fn, optimizer, batches, max_epochs=100, device=None, verbose=False):
    """The overfitting sanity check: trains on ``batches`` (a few, e.g. 20 samples)
    epoch after epoch until the training accuracy reaches 100% or ``max_epochs``.

    Accuracy is that of the training pass (predictions made before each step).
    Dispatches to ``TorchTrainer`` for a ``torch.nn.Module``, else ``LayerTrainer``.

    Returns:
        an ``OverfitResult``: the last epoch's ``EpochResult`` (losses, accuracy) with
        ``num_epochs``, the number of epochs trained.
    """
    _check_count("overfit", "max_epochs", max_epochs, allow_none=False)
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
