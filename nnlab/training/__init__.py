"""Training loops: result records (``records``), what a fit measures (``metrics``),
progress output (``progress``), callbacks (``callbacks``, also ``nnlab.callbacks``), the
abstract ``Trainer`` with ``fit`` (``base``), and ``LayerTrainer`` for nnlab layers,
``TorchTrainer`` for ``torch.nn`` modules and the ``overfit`` sanity check (``trainers``).

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
``fit(..., checkpoints=PATH)`` (a ``ModelCheckpoint``) rewrites PATH after every epoch, atomically (a temporary
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
* ``"callbacks"``: the state of the fit's callbacks (``Callback.state_dict``), handed
  back to them when the run resumes.

``num_epochs`` counts from the start of the whole run: ``fit(dl, dl_test, 10,
checkpoints=p, resume=p)`` after 4 saved epochs trains epochs 5 to 10 and returns a
``FitResult`` for all 10.
"""

from ..checkpoints import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint, save_checkpoint
from .base import Trainer, TrainingDiverged
from .callbacks import Callback, EarlyStopping, ModelCheckpoint
from .metrics import LOSS_TASKS, TASKS, grad_norm, is_accuracy, metric_values, task_of
from .records import STEP_RECORDS, BatchResult, EpochResult, FitResult, History, OverfitResult, num_samples
from .trainers import LayerTrainer, TorchTrainer, overfit

__all__ = [
    "CHECKPOINT_FORMAT",
    "LOSS_TASKS",
    "STEP_RECORDS",
    "TASKS",
    "BatchResult",
    "Callback",
    "CheckpointError",
    "EarlyStopping",
    "EpochResult",
    "FitResult",
    "History",
    "LayerTrainer",
    "ModelCheckpoint",
    "OverfitResult",
    "TorchTrainer",
    "Trainer",
    "TrainingDiverged",
    "grad_norm",
    "is_accuracy",
    "load_checkpoint",
    "metric_values",
    "num_samples",
    "overfit",
    "save_checkpoint",
    "task_of",
]
