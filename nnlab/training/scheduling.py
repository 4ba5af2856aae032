"""``LearningRateScheduler``: a callback that steps an ``nnlab.schedulers`` scheduler
during ``fit``, after every epoch or every training step."""

from ..schedulers import CosineAnnealingLR, MultiStepLR, OneCycleLR, ReduceLROnPlateau
from .callbacks import Callback

__all__ = ["LR_SCHEDULES", "LearningRateScheduler", "make_schedule"]

INTERVALS = ("epoch", "step")


class LearningRateScheduler(Callback):
    """Steps ``scheduler`` (any of ``nnlab.schedulers``) as torch's training loops do:
    ``interval='epoch'``: ``scheduler.step()`` after every epoch (trained, tested and
    recorded); ``interval='step'``: after every training step (optimizer.step, then
    scheduler.step, as torch asks). A ``ReduceLROnPlateau`` steps once an epoch on the
    recorded figure ``monitor`` ('test_loss', 'test_acc', 'train_loss', ...):
    ``scheduler.step(metrics[monitor])``.

    With ``interval='step'`` the scheduler steps after the fit's last training step too,
    as torch's loops do; a ``OneCycleLR`` of ``total_steps`` = the run's training steps
    takes that step (as torch's does), so its last rate is the one of the last step.

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


LR_SCHEDULES = ("cosine", "step", "onecycle", "plateau")


def make_schedule(name, optimizer, num_epochs, steps_per_epoch):
    """The ``LearningRateScheduler`` of a named schedule over a run of ``num_epochs``
    epochs of ``steps_per_epoch`` training steps (``nnlab train --lr-schedule``), from
    the optimizer's current rate: 'cosine': ``CosineAnnealingLR`` over the run's epochs,
    down to 0; 'step': x0.1 after each third of the run (``MultiStepLR``); 'onecycle':
    ``OneCycleLR`` peaking at that rate, stepped after every training step (cycling the
    momentum of optimizers that have one, as torch does); 'plateau':
    ``ReduceLROnPlateau`` (x0.1) after 3 epochs without a lower test loss."""
    if name == "cosine":
        return LearningRateScheduler(CosineAnnealingLR(optimizer, T_max=num_epochs))
    if name == "step":
        thirds = sorted({max(1, round(num_epochs * k / 3)) for k in (1, 2)})
        return LearningRateScheduler(MultiStepLR(optimizer, milestones=thirds, gamma=0.1))
    if name == "onecycle":
        cycles_momentum = any(name in optimizer.HYPERPARAMETERS for name in ("momentum", "betas"))
        scheduler = OneCycleLR(
            optimizer, max_lr=optimizer.learn_rate, total_steps=num_epochs * steps_per_epoch, cycle_momentum=cycles_momentum
        )
        return LearningRateScheduler(scheduler, interval="step")
    if name == "plateau":
        return LearningRateScheduler(ReduceLROnPlateau(optimizer, patience=3), monitor="test_loss")
    raise ValueError(f"make_schedule: unknown schedule {name!r}; expected one of {LR_SCHEDULES}")
