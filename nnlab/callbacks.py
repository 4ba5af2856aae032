"""Callbacks for ``Trainer.fit``: ``Callback`` (hooks at the start and end of a fit and
after every batch and epoch), ``EarlyStopping`` and ``ModelCheckpoint``."""

from .training.callbacks import Callback, EarlyStopping, ModelCheckpoint

__all__ = ["Callback", "EarlyStopping", "ModelCheckpoint"]
