"""The abstract ``Trainer``: epochs of batches with progress output, task-aware metrics,
per-step records, callbacks, checkpoints and resuming, and divergence checks."""

import abc
import math

import torch

from ..checkpoints import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    check_rng_state,
    check_state_fits,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .callbacks import call_each, callback_states, fit_callbacks, resume_callbacks
from .metrics import check_task, metric_values
from .progress import FitProgress, bar_postfix, checked_verbose, epoch_bar, say
from .records import BatchResult, EpochResult, History, add_sums, batch_sums, num_samples

__all__ = ["Trainer", "TrainingDiverged", "check_count"]


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


def check_count(owner, name, value, allow_none=True, minimum=1):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an int >= {minimum}{' or None' if allow_none else ''}, got {value!r}")


class Trainer(abc.ABC):
    """Trains and evaluates a model, one batch at a time.

    Subclasses implement ``train_batch`` (forward, loss, backward, optimizer step) and
    ``test_batch`` (forward and loss only), each returning a ``BatchResult``; this class
    runs the epochs. A data loader is any iterable of ``(x, y)`` batches with ``len()``
    (a ``torch.utils.data.DataLoader`` or ``nnlab.data.Batches``); y may be a tuple
    (one target per task).

    Progress (``fit``'s ``verbose``: one tqdm bar per epoch that ends as the epoch's
    line, or plain lines; see ``nnlab.training.progress``) goes to ``sys.stderr``, so
    that stdout holds only results; ``verbose=0`` prints nothing at all.

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
        self.task = check_task(task)
        self.epoch = None  # the epoch fit is running (1-based); None outside fit
        self.history = History()  # the records of the latest fit, as callbacks see them
        self.config = None  # fit's config, saved in its checkpoints
        self.stop_training = False  # a callback sets it to end fit after the current epoch
        self.stop_reason = None  # and may say why
        self._phase = "train"
        self._batch = 0
        self._restored = None  # the checkpoint load_checkpoint restored last, for fit(resume=...)
        self._callbacks = []
        self._progress = None  # the running fit's FitProgress, which draws its epochs' bars

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
                atomically (see ``nnlab.training``); its ``best_model`` changes
                whenever the best epoch changes, and at the end of ``fit`` the model
                is loaded with those best weights. Short for the callback
                ``ModelCheckpoint(checkpoints, monitor=None, restore_best=True)``
                (``monitor=monitor`` with ``restore_best``).
            early_stopping: k: stop after k epochs in a row without a lower test
                loss. Short for ``EarlyStopping("test_loss", patience=k)``.
            print_every: print the line of every this many epochs (and of the
                last); None: none.
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
                model at the end of ``fit``. Without ``checkpoints``, short for
                ``EarlyStopping(monitor, patience=None, restore_best=True)``.
            monitor: the recorded metric that picks the best epoch with
                ``restore_best``: "test_loss", "test_acc", "test_mae", "train_loss",
                "test_task0_acc", ...; accuracies are better higher, everything else
                lower. A tie keeps the earlier epoch.
            callbacks: a ``nnlab.callbacks.Callback`` or a list of them, called at the
                start and end of the fit and after every batch and epoch; they run
                after the shorthands' EarlyStopping and before every ModelCheckpoint.
            kw: ``max_batches`` (per epoch and phase), passed to ``train_epoch`` and
                ``test_epoch``, and ``verbose``: 0 prints nothing; 1 (default) one
                progress bar per epoch that ends as one line with the epoch's train and
                test figures (the lines alone where stderr is not a terminal or a
                notebook); 2 one plain line per epoch, for logs. Both end with a line
                naming the best epoch. False and True are 0 and 1.

        Raises:
            TrainingDiverged: a loss became NaN or infinite (names epoch and batch).
            CheckpointError: ``resume`` is damaged or does not fit this model and
                optimizer (nothing is changed then).

        Example::

            >>> import torch
            >>> from nnlab.callbacks import CSVLogger
            >>> from nnlab.data import Batches
            >>> from nnlab.layers import CrossEntropyLoss, Linear
            >>> from nnlab.optimizers import Adam
            >>> from nnlab.training import LayerTrainer
            >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
            >>> train, test = Batches(x[:48], y[:48], 16, shuffle=True), Batches(x[48:], y[48:], 16)
            >>> model = Linear(4, 3)
            >>> trainer = LayerTrainer(model, CrossEntropyLoss(), Adam(model.params()))
            >>> fit = trainer.fit(train, test, 2, checkpoints="run.pt", callbacks=[CSVLogger("run.csv")], print_every=None)
            >>> fit = trainer.fit(train, test, 4, resume="run.pt", print_every=None)   # epochs 3 and 4
            >>> fit.num_epochs, len(fit.test_loss)
            (4, 4)
        """
        check_count("fit", "num_epochs", num_epochs, allow_none=False, minimum=0)
        check_count("fit", "early_stopping", early_stopping)
        check_count("fit", "print_every", print_every)
        if not isinstance(monitor, str):
            raise ValueError(f"fit: monitor must be the name of a recorded metric, such as 'test_loss', got {monitor!r}")
        callbacks = fit_callbacks(callbacks, checkpoints, early_stopping, restore_best, monitor)
        verbose = kw["verbose"] = checked_verbose(kw.get("verbose", 1))
        progress = FitProgress(verbose, num_epochs, print_every)
        checkpoint = self._checkpoint_to_resume(resume) if resume is not None else None
        self.history = History.from_fit_result(checkpoint["fit_result"]) if checkpoint is not None else History()
        self.config = config
        self.stop_training = False
        self.stop_reason = None
        self._callbacks = callbacks
        self._progress = progress
        try:
            call_each(callbacks, "on_fit_start", self)
            if checkpoint is not None:
                resume_callbacks(callbacks, checkpoint, "the checkpoint" if isinstance(resume, dict) else resume)
            for epoch in range(self.history.num_epochs + 1, num_epochs + 1):
                if self.stop_training:
                    say(verbose, self.stop_reason or f"Stopped by a callback after epoch {epoch - 1}")
                    break
                self.epoch = epoch
                progress.start_epoch(epoch, _batches_per_pass(dl_train, kw) + _batches_per_pass(dl_test, kw))
                train = self.train_epoch(dl_train, **kw)
                test = self.test_epoch(dl_test, **kw)
                values = self.history.record_epoch(train, test)
                progress.end_epoch(epoch, values)
                if call_each(callbacks, "on_epoch_end", self, epoch, values):
                    self.stop_training = True
            self.epoch = None
            result = self.history.fit_result()
            call_each(callbacks, "on_fit_end", self, result)
            progress.end_fit(self.history, monitor if restore_best else None)
        finally:
            progress.close()
            self.epoch = None
            self._callbacks = []
            self._progress = None
        return result

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
            return BatchResult(loss, sums["acc"][0], sums, grad_norm)
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
            return {"acc": (self.count_correct(outputs, y), num_samples(y))}
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
        (the test accuracy of that epoch; None without one), ``config`` (``fit``'s),
        ``world_size`` and ``callbacks`` (the state of every callback of the running
        fit that has one, by ``Callback``'s keys). ``progress`` is the callback that
        keeps the best model (a ``ModelCheckpoint``: its ``best_epoch`` and
        ``monitor``). ``save_checkpoint`` adds its ``checksum``."""
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
            "callbacks": callback_states(self._callbacks),
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

    def _foreach_batch(self, dl, forward_fn, phase, max_batches=None, verbose=True):
        check_count(f"{phase}_epoch", "max_batches", max_batches)
        num_batches = len(dl)
        if max_batches is not None:
            num_batches = min(num_batches, max_batches)
        losses = []
        grad_norms = []
        totals = {}
        samples_seen = 0
        self._phase = phase
        description = phase if self.epoch is None else f"{phase} {self.epoch}"
        # Inside fit, the fit's progress shows the epoch; a pass run alone has its own bar.
        with epoch_bar(num_batches, description, verbose and self._progress is None) as bar:
            # range first: zip stops without drawing a batch past max_batches.
            for index, batch in zip(range(num_batches), dl):
                self._batch = index + 1
                result = forward_fn(batch)
                loss = self.check_loss(result.loss)
                losses.append(loss)
                if result.grad_norm is not None:
                    grad_norms.append(float(result.grad_norm))
                batch_size = num_samples(batch[1])
                samples_seen += batch_size
                add_sums(totals, batch_sums(result, loss, batch_size))
                running = metric_values(totals)
                bar.set_postfix(bar_postfix(running), refresh=False)
                bar.update()
                if self._progress is not None:
                    self._progress.batch(phase, running)
                call_each(self._callbacks, "on_batch_end", self, phase, index + 1, result)
        if samples_seen == 0:
            raise ValueError(f"{phase}_epoch: the data loader yielded no samples")
        metrics = metric_values(totals)
        return EpochResult(losses, metrics.get("acc"), metrics=metrics, totals=totals, grad_norms=grad_norms)


def _batches_per_pass(dl, kw):
    """How many batches a pass over ``dl`` runs, with fit's ``max_batches``."""
    max_batches = kw.get("max_batches")
    return len(dl) if max_batches is None else min(len(dl), max_batches)


def _processes(count):
    return f"{count} process" + ("" if count == 1 else "es")


def _move(tensors, device):
    if isinstance(tensors, (tuple, list)):
        return type(tensors)(_move(tensor, device) for tensor in tensors)
    return tensors.to(device)
