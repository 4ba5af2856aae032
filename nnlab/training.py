"""Training loops: result records, the abstract ``Trainer`` with ``fit`` (progress bars,
task-aware metrics, per-step records, callbacks, the best model in memory, checkpoints,
resuming, early stopping, divergence checks), ``LayerTrainer`` for nnlab layers,
``TorchTrainer`` for ``torch.nn`` modules, ``grad_norm`` and the ``overfit`` sanity check.

Metrics
-------
What a fit measures follows the task, which ``LayerTrainer`` and ``TorchTrainer`` read
from the loss (``task_of``) unless given ``task=``:

* ``"classification"`` (CrossEntropyLoss, NLLLoss, ClippedCrossEntropyLoss): ``loss`` and
  ``acc`` (percent of rows whose argmax is the target class);
* ``"binary"`` (BCELoss on probabilities, threshold 0.5) and ``"binary-logits"``
  (BCEWithLogitsLoss, threshold 0): ``loss`` and ``acc`` over every predicted entry;
* ``"regression"`` (MSELoss, L1Loss): ``loss``, ``mae`` and ``mse``, never an accuracy;
* a ``MultiTaskLoss``: a tuple of those, one per task: ``loss`` (the weighted mean)
  and, for task t, ``task{t}_loss`` and that task's metrics (``task{t}_acc``, ...).

Each batch reports its metrics as sums and counts (``BatchResult``), each epoch adds
them up (``EpochResult.totals``, which processes can add across ranks) and divides
(``EpochResult.metrics``). ``FitResult.metrics`` holds one list per phase and metric,
``"train_loss"``, ``"test_acc"``, ``"test_mae"``, ``"test_task0_acc"``..., one value per
epoch; ``FitResult.steps`` holds the loss and the parameter-gradient norm of every
training step. Both are plain dicts of lists of floats.

Checkpoints
-----------
``fit(..., checkpoints=PATH)`` rewrites PATH after every epoch, atomically (a temporary
file in the same folder, flushed and fsync'ed, then ``os.replace``: a crash while
saving leaves the previous checkpoint intact), with a checksum of its whole content
(``nnlab.checkpoints``). The file is a dict (see ``Trainer.checkpoint``) that holds

* ``"best_model"``: the weights of the best epoch so far: by test accuracy (by test
  loss when the task records no accuracy), or by ``monitor`` with ``restore_best=True``;
  it changes exactly when that metric improves. ``fit`` ends by loading these weights
  into the model, so after ``fit(..., checkpoints=PATH)`` the model is the best one.
* ``"model"``, ``"optimizer"``, ``"epoch"``, ``"rng"``, ``"fit_result"`` (every record,
  per epoch and per step): the state at the end of the last completed epoch, which
  ``fit(..., resume=PATH)`` (or ``Trainer.load_checkpoint(PATH)``) restores, so that
  training continues exactly as an uninterrupted run with the same data would have.
  Loading is all or nothing: everything is checked against the file's checksum, the
  model and the optimizer before anything changes.
* ``"config"``: what the caller passed as ``fit(..., config=...)`` (the data, split
  seed, model, batch size... of the run; None if nothing), for whoever resumes it.
* ``"world_size"``: the number of data-parallel processes that trained the run (1 but
  for ``nnlab.distributed``); a trainer with another number refuses to resume it.

``num_epochs`` counts from the start of the whole run: ``fit(dl, dl_test, 10,
checkpoints=p, resume=p)`` after 4 saved epochs trains epochs 5 to 10 and returns a
``FitResult`` for all 10.
"""

import abc
import contextlib
import math
import sys
from typing import NamedTuple, Optional

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
from .layers import MultiTaskLoss


class BatchResult(NamedTuple):
    """One batch: its loss; how many of its samples were classified correctly (None when
    the task has no accuracy, as in regression); further metrics as sums and counts,
    ``{name: (sum, count)}`` (``{"mae": (sum of |error|, number of errors)}``; an
    ``"acc"`` entry here overrides ``num_correct`` out of the batch size); and for a
    training step, the norm of the parameter gradients before the update."""

    loss: float
    num_correct: Optional[int]
    metrics: Optional[dict] = None
    grad_norm: Optional[float] = None


class _EpochFields(NamedTuple):
    losses: list
    accuracy: Optional[float]


class EpochResult(_EpochFields):
    """One pass over a data loader: the loss of every batch and the accuracy in percent
    (None when the task records no accuracy).

    These two fields are the tuple (unpacking and ``==`` use them alone); the pass's
    other records are attributes:

    * ``metrics``: ``{name: value}``, every metric of the pass: ``"loss"`` (the mean
      batch loss), ``"acc"`` (percent), ``"mae"``, ``"task0_acc"``...; by default the
      loss and the accuracy.
    * ``totals``: ``{name: (sum, count)}``, the sums behind ``metrics`` (value = sum /
      count, times 100 for accuracies): what data-parallel processes add up. None when
      the result was built from the two fields alone.
    * ``grad_norms``: the parameter-gradient norm of every training step (empty when
      none was reported, and for a test pass).
    """

    def __new__(cls, losses, accuracy, metrics=None, totals=None, grad_norms=None):
        result = super().__new__(cls, losses, accuracy)
        if metrics is None:
            metrics = {"loss": sum(losses) / len(losses)} if losses else {}
            if accuracy is not None:
                metrics["acc"] = accuracy
        result.metrics = metrics
        result.totals = totals
        result.grad_norms = [] if grad_norms is None else grad_norms
        return result


class FitResult(NamedTuple):
    """A whole fit: one value per epoch (loss = the epoch's mean batch loss, accuracy in
    percent; ``train_acc`` and ``test_acc`` are empty when the task records no accuracy).

    ``metrics``: every per-epoch record, ``{"train_loss": [...], "test_acc": [...],
    "test_mae": [...], "test_task0_acc": [...], ...}`` (the four fields above are its
    entries). ``steps``: every training step, ``{"loss": [...], "grad_norm": [...]}``
    (``grad_norm`` empty for trainers that report none). Both are None in a FitResult
    built from the first five fields alone.
    """

    num_epochs: int
    train_loss: list
    train_acc: list
    test_loss: list
    test_acc: list
    metrics: Optional[dict] = None
    steps: Optional[dict] = None


def _fit_result(metrics, steps):
    """A FitResult holding copies of the records (later epochs do not change it)."""
    metrics = {name: list(values) for name, values in metrics.items()}
    steps = {name: list(values) for name, values in steps.items()}
    return FitResult(
        len(metrics.get("train_loss", [])),
        metrics.get("train_loss", []),
        metrics.get("train_acc", []),
        metrics.get("test_loss", []),
        metrics.get("test_acc", []),
        metrics,
        steps,
    )


def _records(fit_result):
    """(metrics, steps) as lists to extend, from a FitResult's dict; one from a
    checkpoint without them gets its metrics from the four classic fields."""
    metrics = fit_result.get("metrics")
    if metrics is None:
        classic = ("train_loss", "train_acc", "test_loss", "test_acc")
        metrics = {name: fit_result[name] for name in classic if fit_result.get(name)}
    steps = fit_result.get("steps") or {}
    return (
        {name: list(values) for name, values in metrics.items()},
        {name: list(steps.get(name, [])) for name in STEP_RECORDS},
    )


STEP_RECORDS = ("loss", "grad_norm")


def is_accuracy(name):
    """Accuracies are percentages and higher is better; every other metric (loss, mae,
    mse) is lower-is-better. The rule is Keras' 'auto' mode: by the name."""
    return name == "acc" or name.endswith("_acc")


def metric_values(totals):
    """``{name: sum / count}`` from ``{name: (sum, count)}`` (an ``EpochResult.totals``,
    possibly added up across processes first), accuracies in percent."""
    return {
        name: 100.0 * total / count if is_accuracy(name) else total / count
        for name, (total, count) in totals.items()
    }


class Callback:
    """Hooks ``fit`` calls, so that users log, adjust or stop a run without subclassing
    the trainer (as Keras callbacks): subclass and override, or pass functions,
    ``Callback(on_epoch_end=lambda trainer, epoch, metrics: print(metrics))``.

    ``on_batch_end(trainer, phase, batch, result)``: after every batch of training
    (``phase`` 'train') and testing ('test'); ``batch`` is its 1-based number in the
    epoch, ``result`` its ``BatchResult``.
    ``on_epoch_end(trainer, epoch, metrics)``: after every epoch, trained, tested and
    recorded (before its checkpoint is written, so changes a callback makes to the
    optimizer are saved); ``metrics`` is this epoch's ``{"train_loss": ..., "test_acc":
    ..., ...}``.

    To stop, set ``trainer.stop_training = True``: ``fit`` stops after the current epoch,
    which is finished, tested and recorded like every other.
    """

    def __init__(self, on_batch_end=None, on_epoch_end=None):
        if on_batch_end is not None:
            self.on_batch_end = on_batch_end
        if on_epoch_end is not None:
            self.on_epoch_end = on_epoch_end

    def on_batch_end(self, trainer, phase, batch, result):
        pass

    def on_epoch_end(self, trainer, epoch, metrics):
        pass


def _check_callbacks(callbacks):
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback):
        callbacks = [callbacks]
    callbacks = list(callbacks)
    for index, callback in enumerate(callbacks):
        if not (hasattr(callback, "on_batch_end") or hasattr(callback, "on_epoch_end")):
            raise TypeError(
                f"fit: callbacks[{index}] must have on_batch_end or on_epoch_end (a nnlab.training.Callback), "
                f"got {type(callback).__name__}"
            )
    return callbacks


def _call_each(callbacks, hook, *args):
    for callback in callbacks:
        method = getattr(callback, hook, None)
        if method is not None:
            method(*args)


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
    """Early stopping (on the test loss) and the best epoch by one recorded metric,
    replayable from the records. ``monitor`` None: test accuracy when the task records
    one, else test loss (the rule for checkpoints without ``restore_best``)."""

    def __init__(self, monitor=None):
        self.monitor = monitor
        self.best_test_loss = None
        self.epochs_without_improvement = 0
        self.best_value = None
        self.best_epoch = None

    def update(self, epoch, values):
        """Records one epoch's ``{name: value}``; True if the monitored metric improved
        (a new best model; a tie is no improvement)."""
        test_loss = values["test_loss"]
        if self.best_test_loss is None or test_loss < self.best_test_loss:
            self.best_test_loss = test_loss
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
        if self.monitor is None:
            self.monitor = "test_acc" if "test_acc" in values else "test_loss"
        if self.monitor not in values:
            raise ValueError(f"fit: monitor '{self.monitor}' is not a recorded metric; this fit records {sorted(values)}")
        value = values[self.monitor]
        if self.best_value is None:
            improved = True
        elif is_accuracy(self.monitor):
            improved = value > self.best_value
        else:
            improved = value < self.best_value
        if improved:
            self.best_value = value
            self.best_epoch = epoch
        return improved


class Trainer(abc.ABC):
    """Trains and evaluates a model, one batch at a time.

    Subclasses implement ``train_batch`` (forward, loss, backward, optimizer step) and
    ``test_batch`` (forward and loss only), each returning a ``BatchResult``; this class
    runs the epochs. A data loader is any iterable of ``(x, y)`` batches with ``len()``
    (a ``torch.utils.data.DataLoader`` or ``nnlab.data.Batches``); y may be a tuple
    (one target per task).

    Progress (epoch headers and one tqdm bar per epoch and phase, showing the running
    loss and the task's metrics) goes to ``sys.stderr``, so that stdout holds only
    results; ``verbose=False`` prints nothing at all.

    ``task`` ("classification" by default; see the module docstring) says which metrics
    ``batch_result`` measures.

    ``world_size``: how many data-parallel processes train together (1 here;
    ``nnlab.distributed.DistributedTrainer`` sets it). A checkpoint records it, and only
    a trainer with the same ``world_size`` resumes it.
    """

    world_size = 1

    def __init__(self, model, device=None, task="classification"):
        self.model = model
        self.device = torch.device(device) if device is not None else None
        self.task = _check_task(task)
        self.epoch = None  # the epoch fit is running (1-based); None outside fit
        self.stop_training = False  # a callback sets it to end fit after the current epoch
        self._phase = "train"
        self._batch = 0
        self._restored = None  # the checkpoint load_checkpoint restored last, for fit(resume=...)
        self._callbacks = []

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
        restore_best=False,
        monitor="test_loss",
        callbacks=None,
        **kw,
    ):
        """Trains for ``num_epochs`` epochs, testing after each, and returns a ``FitResult``.

        Args:
            dl_train, dl_test: data loaders.
            num_epochs: the total number of epochs of the run (counting those a
                resumed checkpoint already did).
            checkpoints: a file path. After every epoch the file is rewritten
                atomically (see the module docstring); its ``best_model`` changes
                whenever the best epoch changes, and at the end of ``fit`` the model
                is loaded with those best weights.
            early_stopping: k: stop after k epochs in a row without a lower test loss.
            print_every: print an epoch header every this many epochs (and for the
                last); None: never.
            resume: a checkpoint path: restore the model, optimizer, RNG state and
                records saved there and continue from the epoch after it. Or the
                dict that this trainer's ``load_checkpoint`` just returned, to change
                something between restoring and training (as with PyTorch's
                ``optimizer.load_state_dict`` followed by a new learning rate):
                ``c = trainer.load_checkpoint(p); trainer.optimizer.learn_rate = 0.01;
                trainer.fit(..., resume=c)``.
            config: a dict of plain values describing the run (data, split seed,
                model, batch size, ...), saved in every checkpoint as ``"config"``;
                ``fit`` does not interpret it.
            restore_best: keep the weights of the best epoch by ``monitor`` in memory
                (and in the checkpoint, with ``checkpoints``) and load them into the
                model at the end of ``fit``.
            monitor: the recorded metric that picks the best epoch with
                ``restore_best``: "test_loss", "test_acc", "test_mae", "train_loss",
                "test_task0_acc", ...; accuracies are better higher, everything else
                lower. A tie keeps the earlier epoch.
            callbacks: a ``Callback`` or a list of them, called after every batch and
                every epoch.
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
        if not isinstance(monitor, str):
            raise ValueError(f"fit: monitor must be the name of a recorded metric, such as 'test_loss', got {monitor!r}")
        callbacks = _check_callbacks(callbacks)
        verbose = kw.get("verbose", True)
        keep_best = bool(restore_best) or checkpoints is not None
        metrics, steps = {}, {name: [] for name in STEP_RECORDS}
        progress = _Progress(monitor if restore_best else None)
        best_state = None
        if resume is not None:
            checkpoint = self._checkpoint_to_resume(resume)
            metrics, steps = _records(checkpoint["fit_result"])
            for epoch in range(1, len(metrics.get("train_loss", [])) + 1):
                progress.update(epoch, {name: values[epoch - 1] for name, values in metrics.items()})
            _check_same_monitor(resume, checkpoint, progress)
            best_state = checkpoint["best_model"]
        first_epoch = len(metrics.get("train_loss", [])) + 1

        self.stop_training = False
        self._callbacks = callbacks
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
                values = _record_epoch(metrics, steps, train, test)
                if progress.update(epoch, values) and keep_best:
                    best_state = self._model_state()
                _call_each(callbacks, "on_epoch_end", self, epoch, values)
                if checkpoints is not None:
                    result = _fit_result(metrics, steps)
                    self.write_checkpoint(checkpoints, self.checkpoint(result, best_state, progress, config))
                if self.stop_training:
                    self._say(verbose, f"Stopped by a callback after epoch {epoch}")
                    break
        finally:
            self.epoch = None
            self._callbacks = []

        if keep_best and best_state is not None:
            self.model.load_state_dict(best_state)
        return _fit_result(metrics, steps)

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
        """The batch's ``(x, y)`` moved to ``self.device`` (unchanged when it is None);
        a tuple of targets is moved entry by entry."""
        x, y = batch
        if self.device is not None:
            x = _move(x, self.device)
            y = _move(y, self.device)
        return x, y

    def count_correct(self, scores, y):
        """How many rows of ``scores`` (N, C) predict the target class; ``y`` is class
        indices (N,) or one-hot / probabilities (N, C). The prediction is the model's
        own ``classify_scores(scores)`` when it has one (an ``nnlab.classifier``
        classifier, so a ``BinaryClassifier`` counts with its threshold), else the
        argmax. Override for other kinds of predictions."""
        labels = y.argmax(dim=1) if y.dim() == 2 else y
        classify_scores = getattr(self.model, "classify_scores", None)
        predictions = scores.argmax(dim=1) if classify_scores is None else classify_scores(scores)
        return int((predictions == labels).sum().item())

    def batch_result(self, loss, outputs, y, grad_norm=None):
        """The ``BatchResult`` of one batch for ``self.task``: the number correct for a
        classification, ``{"mae", "mse"}`` sums for a regression, and for a multi-task
        model (``self.loss_fn`` a ``MultiTaskLoss`` that has just run) each task's loss
        and metrics as ``task{t}_...``."""
        with torch.no_grad():
            if isinstance(self.task, tuple):
                return BatchResult(loss, None, self._multi_task_sums(outputs, y), grad_norm)
            sums = self._task_sums(self.task, outputs, y)
        if self.task == "classification":
            return BatchResult(loss, sums["acc"][0], None, grad_norm)
        return BatchResult(loss, sums["acc"][0] if "acc" in sums else None, sums, grad_norm)

    def _task_sums(self, task, outputs, y):
        """{name: (sum, count)} of one task's metrics on one batch."""
        if task != "classification" and outputs.shape != y.shape:
            raise ValueError(
                f"{type(self).__name__}: {task} metrics need predictions and targets of one shape, got "
                f"{tuple(outputs.shape)} and {tuple(y.shape)} (a broadcast would measure the wrong errors)"
            )
        if task == "regression":
            error = outputs - y
            return {
                "mae": (error.abs().sum().item(), error.numel()),
                "mse": (error.pow(2).sum().item(), error.numel()),
            }
        if task == "classification":
            return {"acc": (self.count_correct(outputs, y), _num_samples(y))}
        threshold = 0.5 if task == "binary" else 0.0
        correct = (outputs > threshold) == (y > 0.5)
        return {"acc": (int(correct.sum().item()), correct.numel())}

    def _multi_task_sums(self, outputs, y):
        sums = {}
        targets = self.loss_fn.split_targets(y)
        task_losses = self.loss_fn.task_losses
        for index, (task, output, target) in enumerate(zip(self.task, outputs, targets)):
            sums[f"task{index}_loss"] = (float(task_losses[index]), 1)
            for name, value in self._task_sums(task, output, target).items():
                sums[f"task{index}_{name}"] = value
        return sums

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
        FitResult so far, as a dict, its records included), ``best_model``,
        ``best_epoch``, ``best_monitor`` (the metric that chose it), ``best_accuracy``
        (the test accuracy of that epoch; None without one), ``config`` (``fit``'s) and
        ``world_size``. ``save_checkpoint`` adds its ``checksum``."""
        optimizer = self._optimizer_with_state()
        best_epoch = progress.best_epoch if progress is not None else None
        best_accuracy = None
        if best_epoch is not None and fit_result.test_acc:
            best_accuracy = fit_result.test_acc[best_epoch - 1]
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": fit_result.num_epochs,
            "model": self._model_state(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "rng": rng_state(),
            "fit_result": fit_result._asdict(),
            "best_model": best_state,
            "best_epoch": best_epoch,
            "best_monitor": progress.monitor if progress is not None else None,
            "best_accuracy": best_accuracy,
            "config": config,
            "world_size": self.world_size,
        }

    def write_checkpoint(self, path, checkpoint):
        """Saves what ``checkpoint`` returned to ``path`` (atomically, with its checksum);
        a data-parallel trainer writes from its first process only."""
        save_checkpoint(path, checkpoint)

    def check_resumable(self, checkpoint):
        """ValueError unless this trainer can continue the run of ``checkpoint`` (beyond
        its model and optimizer fitting): trained by as many processes as this one has
        (its global batches, data shards and random streams depend on that number)."""
        saved = checkpoint.get("world_size", 1)
        if saved != self.world_size:
            raise ValueError(
                f"the run was trained by {_processes(saved)} in data parallel, this trainer has "
                f"{_processes(self.world_size)}; resume it with {saved} (torchrun --nproc-per-node "
                f"{saved} ... for a run of {saved} processes on one machine)"
            )

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
        try:
            self.check_resumable(checkpoint)
        except ValueError as error:
            raise CheckpointError(f"{path}: cannot continue here: {error}") from error
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
        grad_norms = []
        totals = {}
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
                if result.grad_norm is not None:
                    grad_norms.append(float(result.grad_norm))
                batch_size = _num_samples(batch[1])
                num_samples += batch_size
                _add_sums(totals, _batch_sums(result, loss, batch_size))
                bar.set_postfix(_postfix(metric_values(totals)), refresh=False)
                bar.update()
                _call_each(self._callbacks, "on_batch_end", self, phase, index + 1, result)
        if num_samples == 0:
            raise ValueError(f"{phase}_epoch: the data loader yielded no samples")
        metrics = metric_values(totals)
        return EpochResult(losses, metrics.get("acc"), metrics=metrics, totals=totals, grad_norms=grad_norms)


def _processes(count):
    return f"{count} process" + ("" if count == 1 else "es")


def _batch_sums(result, loss, batch_size):
    """A BatchResult as {name: (sum, count)}: the loss counts once per batch (an epoch's
    loss is its mean batch loss), num_correct out of the batch size."""
    sums = {"loss": (loss, 1)}
    if result.num_correct is not None:
        sums["acc"] = (int(result.num_correct), batch_size)
    for name, (total, count) in (result.metrics or {}).items():
        sums[name] = (total, count)
    return sums


def _add_sums(totals, sums):
    for name, (total, count) in sums.items():
        old_total, old_count = totals.get(name, (0, 0))
        totals[name] = (old_total + total, old_count + count)


def _postfix(values):
    """The progress bar's running metrics: accuracies in percent, the rest to 3 decimals."""
    return {name: f"{value:.1f}%" if is_accuracy(name) else f"{value:.3f}" for name, value in values.items()}


def _record_epoch(metrics, steps, train, test):
    """Appends one epoch's train and test results to the records; returns the epoch's
    ``{"train_loss": ..., "test_acc": ..., ...}``."""
    values = {}
    for phase, result in (("train", train), ("test", test)):
        for name, value in result.metrics.items():
            values[f"{phase}_{name}"] = value
    for name, value in values.items():
        metrics.setdefault(name, []).append(value)
    steps["loss"].extend(train.losses)
    steps["grad_norm"].extend(train.grad_norms)
    return values


def _check_same_monitor(resume, checkpoint, progress):
    """A resumed run must pick its best model by the metric the checkpoint's best model
    was picked by: the weights of a best epoch by another metric were never kept."""
    saved = checkpoint.get("best_monitor")
    if saved is not None and progress.monitor is not None and saved != progress.monitor:
        where = "the checkpoint" if isinstance(resume, dict) else resume
        raise CheckpointError(
            f"{where}: its best model was chosen by '{saved}', this fit asks for '{progress.monitor}'; "
            f"resume with restore_best=True, monitor='{saved}'"
            + (" (or without restore_best)" if saved in ("test_acc", "test_loss") else "")
        )


def _num_samples(y):
    """The batch size, from the targets (the first of a tuple of targets)."""
    if isinstance(y, (tuple, list)):
        return _num_samples(y[0])
    return y.shape[0]


def _move(tensors, device):
    if isinstance(tensors, (tuple, list)):
        return type(tensors)(_move(tensor, device) for tensor in tensors)
    return tensors.to(device)


# Tasks and gradient norms ---------------------------------------------------------------

TASKS = ("classification", "binary", "binary-logits", "regression")

# By class name, so that torch.nn's losses (for TorchTrainer) and subclasses are known too.
LOSS_TASKS = {
    "CrossEntropyLoss": "classification",
    "NLLLoss": "classification",
    "ClippedCrossEntropyLoss": "classification",
    "BCELoss": "binary",
    "BCEWithLogitsLoss": "binary-logits",
    "MSELoss": "regression",
    "L1Loss": "regression",
    "SmoothL1Loss": "regression",
    "HuberLoss": "regression",
}


def task_of(loss_fn):
    """The task a loss trains, for the metrics ``fit`` records: one of ``TASKS`` (by the
    class name of the loss or of a class it derives from: nnlab's and torch.nn's losses),
    a tuple of them for a ``MultiTaskLoss``, and "classification" for a loss it does not
    know (what every fit recorded before tasks existed)."""
    if isinstance(loss_fn, MultiTaskLoss):
        return tuple(task_of(loss) for loss in loss_fn.losses)
    for cls in type(loss_fn).__mro__:
        if cls.__name__ in LOSS_TASKS:
            return LOSS_TASKS[cls.__name__]
    return "classification"


def _check_task(task):
    tasks = task if isinstance(task, tuple) else (task,)
    if not tasks or any(t not in TASKS for t in tasks):
        raise ValueError(f"task must be one of {TASKS} or a tuple of them (one per head), got {task!r}")
    return task


def grad_norm(model_or_params):
    """The Euclidean norm of all parameter gradients, ``sqrt(sum_p ||grad_p||^2)``, as a
    float computed in float64 (IFT3395's ``compute_gradient_norm``; torch's
    ``torch.nn.utils.get_total_norm`` of the gradients).

    Takes an nnlab ``Layer`` or optimizer (the gradients of ``params()``), a
    ``torch.nn.Module`` (each parameter's ``.grad``; None counts as 0), or a list of
    ``(param, grad)`` pairs or of tensors whose ``.grad`` is used. A gradient listed
    twice (one layer at two places) counts once.
    """
    unique = {id(grad): grad for grad in _gradients(model_or_params)}
    if not unique:
        return 0.0
    norms = torch.stack([torch.linalg.vector_norm(grad, dtype=torch.float64) for grad in unique.values()])
    return float(torch.linalg.vector_norm(norms))


def _gradients(model_or_params):
    if isinstance(model_or_params, torch.nn.Module):
        return [param.grad for param in model_or_params.parameters() if param.grad is not None]
    params = getattr(model_or_params, "params", model_or_params)
    if callable(params):
        params = params()
    grads = []
    for index, item in enumerate(params):
        if isinstance(item, torch.Tensor):
            if item.grad is not None:
                grads.append(item.grad)
        elif isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], torch.Tensor):
            grads.append(item[1])
        else:
            raise TypeError(
                f"grad_norm: expected a model, an optimizer, or (param, grad) pairs / tensors; "
                f"entry {index} is a {type(item).__name__}"
            )
    return grads


@contextlib.contextmanager
def _without_input_grad(model):
    """The model's backward inside skips the gradient w.r.t. its input (the data, which
    nobody needs); afterwards the model returns it again, as by default."""
    model.requires_input_grad(False)
    try:
        yield
    finally:
        model.requires_input_grad(True)


class LayerTrainer(Trainer):
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
    """

    def __init__(self, model, loss_fn, optimizer, device=None, task=None):
        super().__init__(model, device, _loss_task(loss_fn, task))
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        if self.device is not None:
            model.to(self.device)

    def train_batch(self, batch):
        x, y = self.to_device(batch)
        outputs = self.model(x)
        loss = self.check_loss(self.loss_fn(outputs, y))
        self.optimizer.zero_grad()
        dout = self.loss_fn.backward()
        with _without_input_grad(self.model):
            self.model.backward(dout)
        norm = grad_norm(self.model)
        self.optimizer.step()
        return self.batch_result(loss, outputs, y, norm)

    def test_batch(self, batch):
        x, y = self.to_device(batch)
        outputs = self.model(x)
        loss = self.check_loss(self.loss_fn(outputs, y))
        return self.batch_result(loss, outputs, y)


def _loss_task(loss_fn, task):
    """``task``, or the loss's; a per-head tuple needs a MultiTaskLoss to split the targets."""
    task = task_of(loss_fn) if task is None else task
    if isinstance(task, tuple) and not isinstance(loss_fn, MultiTaskLoss):
        raise ValueError(f"a task per head {task!r} needs a MultiTaskLoss, got {type(loss_fn).__name__}")
    return task


class TorchTrainer(Trainer):
    """Trains a ``torch.nn.Module`` with autograd, the same way ``LayerTrainer`` trains
    nnlab layers, for side-by-side comparison: ``optimizer.zero_grad()``,
    ``loss_fn(model(x), y).backward()``, ``optimizer.step()``, recording the same
    metrics and gradient norms.

    ``optimizer``: any ``torch.optim`` optimizer, or an nnlab optimizer over
    ``model.parameters()``. ``loss_fn``: a callable such as ``torch.nn.CrossEntropyLoss()``;
    ``task`` as for ``LayerTrainer``.
    """

    def __init__(self, model, loss_fn, optimizer, device=None, task=None):
        super().__init__(model, device, _loss_task(loss_fn, task))
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        if self.device is not None:
            model.to(self.device)

    def train_batch(self, batch):
        x, y = self.to_device(batch)
        self.optimizer.zero_grad()
        outputs = self.model(x)
        loss_tensor = self.loss_fn(outputs, y)
        loss = self.check_loss(loss_tensor.item())
        loss_tensor.backward()
        norm = grad_norm(self.model)
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
