"""Callbacks: objects that ``fit`` calls at fixed points of a run, so that a trainer's
behaviour grows by adding one rather than a keyword argument (Keras' callbacks).
``Callback`` is the base; ``EarlyStopping`` and ``ModelCheckpoint`` are what ``fit``'s
``early_stopping=``, ``restore_best=`` and ``checkpoints=`` build."""

import math

from ..checkpoints import CheckpointError, check_state_fits
from .metrics import is_accuracy

__all__ = ["Callback", "EarlyStopping", "ModelCheckpoint"]

MODES = ("auto", "min", "max")


class Callback:
    """Hooks ``fit`` calls, so that users log, adjust or stop a run without subclassing
    the trainer (as Keras callbacks): subclass and override, or pass functions,
    ``Callback(on_epoch_end=lambda trainer, epoch, metrics: print(metrics))``.

    ``on_fit_start(trainer)``: before the first epoch, once ``trainer.history`` holds the
    records of the epochs a resumed run already did (none for a new run).
    ``on_batch_end(trainer, phase, batch, result)``: after every batch of training
    (``phase`` 'train') and testing ('test'); ``batch`` is its 1-based number in the
    epoch, ``result`` its ``BatchResult``.
    ``on_epoch_end(trainer, epoch, metrics)``: after every epoch (1-based), trained,
    tested and recorded; ``metrics`` is this epoch's ``{"train_loss": ..., "test_acc":
    ..., ...}``. Every ``ModelCheckpoint`` runs after the other callbacks, so that what
    they change (the optimizer's learning rate, their own state) is saved.
    ``on_fit_end(trainer, result)``: after the last epoch, with the ``FitResult``.

    To stop, set ``trainer.stop_training = True`` or return True from ``on_epoch_end``:
    ``fit`` stops after the current epoch, which is finished, tested and recorded like
    every other. ``trainer.stop_reason`` (a sentence) says why in the progress output.

    State: what ``state_dict()`` returns (None: nothing, the default) goes into every
    checkpoint that ``fit`` writes; ``fit(..., resume=...)`` hands it back to
    ``load_state_dict(state)`` after ``on_fit_start``, so a resumed run continues as an
    uninterrupted one would. A checkpoint tells callbacks apart by class name and order.
    """

    def __init__(self, on_batch_end=None, on_epoch_end=None, on_fit_start=None, on_fit_end=None):
        hooks = {
            "on_batch_end": on_batch_end,
            "on_epoch_end": on_epoch_end,
            "on_fit_start": on_fit_start,
            "on_fit_end": on_fit_end,
        }
        for name, hook in hooks.items():
            if hook is not None:
                setattr(self, name, hook)

    def on_fit_start(self, trainer):
        pass

    def on_batch_end(self, trainer, phase, batch, result):
        pass

    def on_epoch_end(self, trainer, epoch, metrics):
        pass

    def on_fit_end(self, trainer, result):
        pass

    def state_dict(self):
        return None

    def load_state_dict(self, state):
        pass


class _Best:
    """The best epoch so far by one recorded metric, and the epochs since it.

    ``monitor`` None: test accuracy when the fit records one, else test loss. ``mode``
    'auto': higher is better for accuracies, lower for everything else. An epoch
    improves on the best by more than ``min_delta``; a tie is no improvement."""

    def __init__(self, owner, monitor, mode, min_delta):
        if monitor is not None and not isinstance(monitor, str):
            raise ValueError(f"{owner}: monitor must be the name of a recorded metric, such as 'test_loss', got {monitor!r}")
        if mode not in MODES:
            raise ValueError(f"{owner}: mode must be one of {MODES}, got {mode!r}")
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not (math.isfinite(min_delta) and min_delta >= 0):
            raise ValueError(f"{owner}: min_delta must be a finite number >= 0, got {min_delta!r}")
        self.requested = monitor
        self.mode = mode
        self.min_delta = float(min_delta)
        self.reset()

    def reset(self):
        self.monitor = self.requested
        self.best_value = None
        self.best_epoch = None
        self.wait = 0

    def update(self, epoch, metrics):
        """Records one epoch's ``{name: value}``; True if the monitored metric improved."""
        if self.monitor is None:
            self.monitor = "test_acc" if "test_acc" in metrics else "test_loss"
        if self.monitor not in metrics:
            raise ValueError(f"fit: monitor '{self.monitor}' is not a recorded metric; this fit records {sorted(metrics)}")
        value = metrics[self.monitor]
        if self.best_value is None or self._better(value):
            self.best_value = value
            self.best_epoch = epoch
            self.wait = 0
            return True
        self.wait += 1
        return False

    def _better(self, value):
        if self.mode == "max" or (self.mode == "auto" and is_accuracy(self.monitor)):
            return value > self.best_value + self.min_delta
        return value < self.best_value - self.min_delta

    def lower_is_better(self):
        return not (self.mode == "max" or (self.mode == "auto" and is_accuracy(self.monitor)))

    def replay(self, history):
        """The state after the epochs ``history`` (a ``History``) recorded."""
        self.reset()
        for epoch in range(1, history.num_epochs + 1):
            self.update(epoch, history.epoch(epoch))


class _Monitoring(Callback):
    """A callback that follows the best epoch by ``monitor`` and may keep its weights
    (``best_weights``, from ``trainer._model_state()``) and load them into the model at
    the end of ``fit`` (``restore_best``).

    Its counters follow from the records, so ``on_fit_start`` recomputes them from
    ``trainer.history`` (a resumed run included); what the records cannot give back,
    the kept weights, a resumed run takes from its checkpoint."""

    def __init__(self, monitor, mode, min_delta, keep_weights, restore_best):
        self._best = _Best(type(self).__name__, monitor, mode, min_delta)
        self._keep_weights = keep_weights or restore_best
        self.restore_best = bool(restore_best)
        self.best_weights = None
        self.weights_epoch = None

    @property
    def monitor(self):
        """The metric followed (the one chosen, once an epoch is recorded, for None)."""
        return self._best.monitor

    @property
    def best_epoch(self):
        """The best epoch (1-based; None before any); with kept weights, theirs."""
        return self.weights_epoch if self._keep_weights else self._best.best_epoch

    def on_fit_start(self, trainer):
        self._best.replay(trainer.history)
        self.best_weights = None
        self.weights_epoch = self._best.best_epoch

    def _record(self, trainer, epoch, metrics, keep_every_epoch=False):
        """Updates the best epoch with this one; keeps its weights if it is the best."""
        improved = self._best.update(epoch, metrics)
        if self._keep_weights and (improved or keep_every_epoch):
            self.best_weights = trainer._model_state()
            self.weights_epoch = epoch
        return improved

    def on_fit_end(self, trainer, result):
        if self.restore_best and self.best_weights is not None:
            trainer.model.load_state_dict(self.best_weights)

    def resume(self, state, checkpoint):
        """Takes the kept weights of a resumed run: from ``state`` (what ``state_dict``
        saved) if it holds them, else the checkpoint's ``best_model``; ValueError if
        those were chosen by another metric or rule."""
        if not self._keep_weights:
            return
        if state is None or "best_weights" not in state:
            state = {
                "monitor": checkpoint.get("best_monitor"),
                "best_epoch": checkpoint.get("best_epoch"),
                "best_weights": checkpoint.get("best_model"),
            }
        saved = state["monitor"]
        if saved is not None and self.monitor is not None and saved != self.monitor:
            raise ValueError(
                f"its best model was chosen by '{saved}', this fit asks for '{self.monitor}'; "
                f"resume with restore_best=True, monitor='{saved}'"
                + (" (or without restore_best)" if saved in ("test_acc", "test_loss") else "")
            )
        if state["best_epoch"] != self.weights_epoch:
            raise ValueError(
                f"it kept the weights of epoch {state['best_epoch']}, this fit's {type(self).__name__} "
                f"keeps those of epoch {self.weights_epoch} (another mode or min_delta?)"
            )
        if state["best_weights"] is not None:
            check_state_fits(f"{type(self).__name__}'s best_weights", state["best_weights"], checkpoint["model"])
        self.best_weights = state["best_weights"]


class EarlyStopping(_Monitoring):
    """Stops ``fit`` after ``patience`` epochs in a row without improving ``monitor``
    (a recorded metric: 'test_loss', 'test_acc', 'test_mae', 'train_loss',
    'test_task0_acc', ...) by more than ``min_delta``. ``mode`` 'min' or 'max' says
    which way is better; 'auto': higher for accuracies, lower for everything else.
    ``patience`` None: never stops (with ``restore_best``, only keeps the best model).

    ``restore_best``: keep the weights of the best epoch in memory and load them into
    the model at the end of ``fit`` (stopped early or not). Same as Keras'
    ``EarlyStopping(restore_best_weights=...)``; ``fit(early_stopping=k)`` is
    ``EarlyStopping('test_loss', patience=k)``.

    Example::

        >>> import torch
        >>> from nnlab.callbacks import EarlyStopping
        >>> from nnlab.data import Batches
        >>> from nnlab.layers import CrossEntropyLoss, Linear
        >>> from nnlab.optimizers import Adam
        >>> from nnlab.training import LayerTrainer
        >>> _ = torch.manual_seed(0)
        >>> x, y = torch.randn(96, 8), torch.randint(0, 3, (96,))   # random labels: nothing to learn
        >>> model = Linear(8, 3)
        >>> trainer = LayerTrainer(model, CrossEntropyLoss(), Adam(model.params(), learn_rate=0.1))
        >>> stop = EarlyStopping("test_loss", patience=2, restore_best=True)
        >>> fit = trainer.fit(Batches(x[:64], y[:64], 16), Batches(x[64:], y[64:], 32), 100, callbacks=[stop], print_every=None)
        >>> fit.num_epochs < 100, trainer.stop_reason
        (True, 'Early stopping: no lower test loss in the last 2 epochs')
    """

    def __init__(self, monitor="test_loss", patience=3, min_delta=0.0, mode="auto", restore_best=False):
        if monitor is None:
            raise ValueError("EarlyStopping: monitor must be the name of a recorded metric, such as 'test_loss', got None")
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
            raise ValueError(f"EarlyStopping: patience must be an int >= 1 or None, got {patience!r}")
        super().__init__(monitor, mode, min_delta, keep_weights=False, restore_best=restore_best)
        self.patience = patience

    def on_fit_start(self, trainer):
        super().on_fit_start(trainer)
        self._stop_when_out_of_patience(trainer)

    def on_epoch_end(self, trainer, epoch, metrics):
        self._record(trainer, epoch, metrics)
        self._stop_when_out_of_patience(trainer)

    def _stop_when_out_of_patience(self, trainer):
        if self.patience is not None and self._best.wait >= self.patience:
            trainer.stop_training = True
            better = "lower" if self._best.lower_is_better() else "higher"
            what = self.monitor.replace("_", " ")
            trainer.stop_reason = f"Early stopping: no {better} {what} in the last {self.patience} epochs"

    def state_dict(self):
        state = {"monitor": self.monitor, "best_epoch": self.best_epoch}
        if self._keep_weights:
            state["best_weights"] = self.best_weights
        return state


class ModelCheckpoint(_Monitoring):
    """Saves the run to ``path`` after every epoch, atomically and with a checksum
    (``Trainer.checkpoint`` says what the file holds), so that ``fit(..., resume=path)``
    continues it exactly; its ``best_model`` is the best epoch's weights by ``monitor``
    (``mode`` as for ``EarlyStopping``; None: test accuracy where the fit records one,
    else test loss), or with ``save_best_only=False`` the last epoch's.

    ``restore_best``: load those weights into the model at the end of ``fit``.
    ``fit(checkpoints=path)`` is ``ModelCheckpoint(path, monitor=None, restore_best=True)``
    (with ``restore_best=True, monitor=m``: ``monitor=m``). It runs after every other
    callback, so the file holds what they changed in the epoch.
    """

    def __init__(self, path, monitor="test_loss", mode="auto", save_best_only=True, restore_best=False):
        super().__init__(monitor, mode, 0.0, keep_weights=True, restore_best=restore_best)
        self.path = path
        self.save_best_only = bool(save_best_only)

    def on_fit_start(self, trainer):
        super().on_fit_start(trainer)
        if not self.save_best_only and trainer.history.num_epochs:
            self.weights_epoch = trainer.history.num_epochs

    def on_epoch_end(self, trainer, epoch, metrics):
        self._record(trainer, epoch, metrics, keep_every_epoch=not self.save_best_only)
        content = trainer.checkpoint(trainer.history.fit_result(), self.best_weights, self, trainer.config)
        trainer.write_checkpoint(self.path, content)


def fit_callbacks(callbacks, checkpoints, early_stopping, restore_best, monitor):
    """The callbacks of one ``fit``: those its shorthands build, then ``callbacks`` (a
    Callback or a list), every ModelCheckpoint last. TypeError for a callback without
    hooks."""
    built = []
    if early_stopping is not None:
        built.append(EarlyStopping("test_loss", patience=early_stopping))
    if restore_best and checkpoints is None:
        built.append(EarlyStopping(monitor, patience=None, restore_best=True))
    built.extend(_checked(callbacks))
    if checkpoints is not None:
        built.append(ModelCheckpoint(checkpoints, monitor=monitor if restore_best else None, restore_best=True))
    return [c for c in built if not isinstance(c, ModelCheckpoint)] + [c for c in built if isinstance(c, ModelCheckpoint)]


def _checked(callbacks):
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback):
        callbacks = [callbacks]
    callbacks = list(callbacks)
    for index, callback in enumerate(callbacks):
        if not (hasattr(callback, "on_batch_end") or hasattr(callback, "on_epoch_end")):
            raise TypeError(
                f"fit: callbacks[{index}] must have on_batch_end or on_epoch_end (a nnlab.callbacks.Callback), "
                f"got {type(callback).__name__}"
            )
    return callbacks


def call_each(callbacks, hook, *args):
    """Calls ``hook`` of every callback that has it; True if any returned True."""
    stop = False
    for callback in callbacks:
        method = getattr(callback, hook, None)
        if method is not None:
            returned = method(*args)
            stop = stop or returned is True
    return stop


def callback_states(callbacks):
    """``{key: state}`` of the callbacks with a state to save, keyed by ``state_keys``."""
    states = {}
    for key, callback in zip(state_keys(callbacks), callbacks):
        state_dict = getattr(callback, "state_dict", None)
        state = state_dict() if state_dict is not None else None
        if state is not None:
            states[key] = state
    return states


def resume_callbacks(callbacks, checkpoint, where):
    """Hands each callback its state saved in ``checkpoint`` (``where`` names the
    checkpoint in errors); CheckpointError if a callback cannot continue it."""
    saved = checkpoint.get("callbacks") or {}
    for key, callback in zip(state_keys(callbacks), callbacks):
        try:
            if isinstance(callback, _Monitoring):
                callback.resume(saved.get(key), checkpoint)
            elif key in saved and hasattr(callback, "load_state_dict"):
                callback.load_state_dict(saved[key])
        except ValueError as error:
            raise CheckpointError(f"{where}: {error}") from error


def state_keys(callbacks):
    """One key per callback: its class name, with '#2', '#3'... for the later ones of a class."""
    keys = []
    seen = {}
    for callback in callbacks:
        name = type(callback).__name__
        seen[name] = seen.get(name, 0) + 1
        keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return keys
