"""``CSVLogger``: a callback that keeps a CSV file of a fit's figures, one row per epoch."""

import csv
import io

from ..checkpoints import write_atomically
from .callbacks import Callback

__all__ = ["CSVLogger"]

FIRST_COLUMNS = ("epoch", "train_loss", "test_loss")


class CSVLogger(Callback):
    """Writes ``path`` after every epoch: a header row, then one row per epoch of the run:
    ``epoch``, ``train_loss``, ``test_loss``, then every other recorded figure in the
    order the fit records them (``train_acc``, ``test_acc``, ``test_mae``...). Numbers are
    written in their shortest exact form (``repr``), so reading them back gives the
    recorded floats.

    The file is rewritten whole from the fit's records (``trainer.history``), atomically:
    a resumed run's file holds every epoch of the run, the earlier ones included, and a
    crash leaves the previous file. Same as Keras' ``CSVLogger`` with ``append=True``
    across resumes.
    """

    def __init__(self, path):
        self.path = path

    def on_fit_start(self, trainer):
        if trainer.history.num_epochs:
            self._write(trainer.history)

    def on_epoch_end(self, trainer, epoch, metrics):
        self._write(trainer.history)

    def _write(self, history):
        names = [name for name in history.metrics if name not in FIRST_COLUMNS]
        columns = [*FIRST_COLUMNS[1:], *names]
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(FIRST_COLUMNS[:1] + tuple(columns))
        for epoch in range(1, history.num_epochs + 1):
            values = history.epoch(epoch)
            writer.writerow([epoch, *(repr(values[name]) for name in columns)])
        content = text.getvalue().encode("utf-8")
        write_atomically(self.path, lambda file: file.write(content))
