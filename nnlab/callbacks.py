"""Callbacks for ``Trainer.fit``: ``Callback`` (hooks at the start and end of a fit and
after every batch and epoch), ``EarlyStopping``, ``ModelCheckpoint``,
``LearningRateScheduler`` and ``CSVLogger``."""

from .training.callbacks import Callback, EarlyStopping, ModelCheckpoint
from .training.csv_logger import CSVLogger
from .training.scheduling import LearningRateScheduler

__all__ = ["CSVLogger", "Callback", "EarlyStopping", "LearningRateScheduler", "ModelCheckpoint"]
