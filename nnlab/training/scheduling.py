"""``LearningRateScheduler``: a callback that steps an ``nnlab.schedulers`` scheduler
during ``fit``, after every epoch or every training step."""

from ..schedulers import ReduceLROnPlateau
from .callbacks import Callback

__all__ = ["LearningRateScheduler"]

INTERVALS = ("epoch", "step")


class LearningRateScheduler(Callback):
    """Steps ``scheduler`` (any of ``nnlab.schedulers``) as torch's training loops do:
    ``interval='epoch'``: ``scheduler.step()`` after every epoch (trained, tested and
    recorded); ``interval='step'``: after every training step (optimizer.step, then
    scheduler.step, as torch asks). A ``ReduceLROnPlateau`` steps once an epoch on the
    recorded figure ``monitor`` ('test_loss', 'test_acc', 'train_loss', ...):
    ``scheduler.step(metrics[monitor])``.

    With ``interval='step'`` the scheduler steps after the fit's last training step too
    (as torch's loops do), so a ``OneCycleLR`` needs ``total_steps`` = the run's training
    steps + 1 (it refuses a step past its schedule).

    The scheduler's state goes into the fit's checkpoints and comes back on resume, so a
    resumed run follows the same rates bit for bit (the optimizer's current rate is in
    its own state). Same as Keras' ``LearningRateScheduler`` with a torch scheduler.
    """

    def __init__(self, scheduler, interval="epoch", monitor="test_loss"):
        if not hasattr(scheduler, "step") or not hasattr(scheduler, "state_dict"):
            raise TypeError(f"LearningRateScheduler: expected a scheduler of nnlab.schedulers, got {type(scheduler).__name__}")
        if interval not in INTERVALS:
            raise ValueError(f"LearningRateScheduler: interval must be one of {INTERVALS}, got {interval!r}")
        self.on_plateau = isinstance(scheduler, ReduceLROnPlateau)
        if self.on_plateau and interval != "epoch":
            raise ValueError("LearningRateScheduler: ReduceLROnPlateau steps on an epoch's recorded figure; interval must be 'epoch'")
        if not isinstance(monitor, str):
            raise ValueError(f"LearningRateScheduler: monitor must be the name of a recorded figure, such as 'test_loss', got {monitor!r}")
        self.scheduler = scheduler
        self.interval = interval
        self.monitor = monitor

    def on_batch_end(self, trainer, phase, batch, result):
        if self.interval == "step" and phase == "train":
            self.scheduler.step()

    def on_epoch_end(self, trainer, epoch, metrics):
        if self.interval != "epoch":
            return
        if not self.on_plateau:
            self.scheduler.step()
            return
        if self.monitor not in metrics:
            raise ValueError(f"LearningRateScheduler: monitor '{self.monitor}' is not a recorded figure; this fit records {sorted(metrics)}")
        self.scheduler.step(metrics[self.monitor])

    def state_dict(self):
        return self.scheduler.state_dict()

    def load_state_dict(self, state):
        self.scheduler.load_state_dict(state)
