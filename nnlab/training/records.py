"""What a fit records: ``BatchResult`` for a batch, ``EpochResult`` for a pass over a
data loader, ``FitResult`` for a whole fit, and ``History``, the records of a fit while
it runs (what callbacks read, and what a checkpoint saves and a resumed fit continues)."""

from typing import NamedTuple, Optional

from .metrics import metric_values

__all__ = [
    "STEP_RECORDS",
    "BatchResult",
    "EpochResult",
    "FitResult",
    "History",
    "OverfitResult",
    "add_sums",
    "batch_sums",
    "num_samples",
]

STEP_RECORDS = ("loss", "grad_norm")


class BatchResult(NamedTuple):
    """One batch: its loss; how many of its samples were classified correctly (None when
    the task has no accuracy, as in regression); further metrics as sums and counts,
    ``{name: (sum, count)}`` (``{"mae": (sum of |error|, number of errors)}``; an
    ``"acc"`` entry here overrides ``num_correct`` out of the batch size); and for a
    training step, the norm of the parameter gradients before the update.

    ``averages``: the batch's figures as numbers, ``{"loss": ..., "acc": percent, "mae":
    mean |error|, ...}`` (each sum over its count), beside the sums and counts that
    epochs and data-parallel processes add up."""

    loss: float
    num_correct: Optional[int]
    metrics: Optional[dict] = None
    grad_norm: Optional[float] = None

    @property
    def averages(self):
        values = {"loss": float(self.loss)}
        values.update(metric_values(self.metrics or {}))
        return values


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


class History:
    """The records of a fit so far: ``metrics``, ``{"train_loss": [...], "test_acc":
    [...], ...}`` with one value per completed epoch, and ``steps``, ``{"loss": [...],
    "grad_norm": [...]}`` with one value per training step."""

    def __init__(self, metrics=None, steps=None):
        self.metrics = {name: list(values) for name, values in (metrics or {}).items()}
        steps = steps or {}
        self.steps = {name: list(steps.get(name, [])) for name in STEP_RECORDS}

    @classmethod
    def from_fit_result(cls, fit_result):
        """The History of a FitResult's dict (as a checkpoint holds it); one without
        ``metrics`` gets them from the four classic fields."""
        metrics = fit_result.get("metrics")
        if metrics is None:
            classic = ("train_loss", "train_acc", "test_loss", "test_acc")
            metrics = {name: fit_result[name] for name in classic if fit_result.get(name)}
        return cls(metrics, fit_result.get("steps"))

    @property
    def num_epochs(self):
        return len(self.metrics.get("train_loss", []))

    def epoch(self, number):
        """``{name: value}`` of the epoch ``number`` (1-based)."""
        return {name: values[number - 1] for name, values in self.metrics.items()}

    def record_epoch(self, train, test):
        """Appends one epoch's train and test EpochResults; returns the epoch's
        ``{"train_loss": ..., "test_acc": ..., ...}``."""
        values = {}
        for phase, result in (("train", train), ("test", test)):
            for name, value in result.metrics.items():
                values[f"{phase}_{name}"] = value
        for name, value in values.items():
            self.metrics.setdefault(name, []).append(value)
        self.steps["loss"].extend(train.losses)
        self.steps["grad_norm"].extend(train.grad_norms)
        return values

    def fit_result(self):
        """A FitResult holding copies of the records (later epochs do not change it)."""
        metrics = {name: list(values) for name, values in self.metrics.items()}
        steps = {name: list(values) for name, values in self.steps.items()}
        return FitResult(
            len(metrics.get("train_loss", [])),
            metrics.get("train_loss", []),
            metrics.get("train_acc", []),
            metrics.get("test_loss", []),
            metrics.get("test_acc", []),
            metrics,
            steps,
        )


def num_samples(y):
    """The batch size, from the targets (the first of a tuple of targets)."""
    if isinstance(y, (tuple, list)):
        return num_samples(y[0])
    return y.shape[0]


def batch_sums(result, loss, batch_size):
    """A BatchResult as {name: (sum, count)}: the loss counts once per batch (an epoch's
    loss is its mean batch loss), num_correct out of the batch size."""
    sums = {"loss": (loss, 1)}
    if result.num_correct is not None:
        sums["acc"] = (int(result.num_correct), batch_size)
    for name, (total, count) in (result.metrics or {}).items():
        sums[name] = (total, count)
    return sums


def add_sums(totals, sums):
    """Adds ``{name: (sum, count)}`` into ``totals``, in place."""
    for name, (total, count) in sums.items():
        old_total, old_count = totals.get(name, (0, 0))
        totals[name] = (old_total + total, old_count + count)
