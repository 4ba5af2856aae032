"""What a fit measures: the task a loss trains (``task_of``) and its figures, the rule
that turns summed batch figures into an epoch's, and gradient norms."""

import torch

from ..layers import MultiTaskLoss

__all__ = ["LOSS_TASKS", "TASKS", "check_task", "grad_norm", "is_accuracy", "metric_values", "task_of"]

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


def check_task(task):
    """``task`` if it is one of ``TASKS`` or a non-empty tuple of them, else ValueError."""
    tasks = task if isinstance(task, tuple) else (task,)
    if not tasks or any(t not in TASKS for t in tasks):
        raise ValueError(f"task must be one of {TASKS} or a tuple of them (one per head), got {task!r}")
    return task


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
