"""Learning-rate schedulers: the ``torch.optim.lr_scheduler`` schedules for nnlab's
optimizers, equal to torch's at every step.

A scheduler reads and sets its optimizer's ``learn_rate`` attribute (nnlab optimizers
have one learning rate, where torch's have one per parameter group, so
``get_last_lr()`` is a list of one number). Use it as in torch::

    opt = Adam(model.params(), learn_rate=1e-3)
    sched = CosineAnnealingLR(opt, T_max=30)
    for epoch in range(30):
        ...                      # opt.step() for every batch
        sched.step()             # once per epoch (or per batch, by your choice)

Construction sets the first learning rate, as in torch. The rules are torch's, written
the way torch evaluates them (most are chainable: the next rate is computed from the
optimizer's current one), so float64 rates agree with torch's to rounding, also when
schedules are chained (``SequentialLR``) or the rate is changed by hand between steps.

Like torch, the first scheduler built on an optimizer records the optimizer's rate as
``optimizer.initial_lr`` and every later scheduler starts from it (``base_lr``).
``state_dict()`` / ``load_state_dict()`` save and restore a scheduler's progress; the
optimizer's own ``state_dict`` holds its current ``learn_rate``.

The rates are torch's; the parameters follow torch's too with ``VanillaSGD``, ``Adam``
and ``AdamW``. ``MomentumSGD`` keeps a velocity scaled by the rate it was made with (the
CS231n rule), so under a changing rate it takes other steps than ``torch.optim.SGD``
with momentum, which rescales its whole buffer by the new rate.
"""

import bisect
import collections
import math

from .layers.base import checked_int, checked_real
from .optimizers import Optimizer

__all__ = [
    "CosineAnnealingLR",
    "ExponentialLR",
    "LRScheduler",
    "LinearLR",
    "MultiStepLR",
    "OneCycleLR",
    "ReduceLROnPlateau",
    "SequentialLR",
    "StepLR",
]


def _checked_optimizer(owner, optimizer):
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"{owner}: optimizer must be an nnlab optimizer (nnlab.optimizers), got {type(optimizer).__name__}")
    return optimizer


class _State:
    """``state_dict`` / ``load_state_dict`` for a scheduler whose progress is its plain
    attributes (numbers, lists, dicts): everything but the optimizer."""

    def state_dict(self):
        """A copy of the scheduler's progress and settings (not the optimizer)."""
        return {key: _copied(value) for key, value in vars(self).items() if key != "optimizer"}

    def load_state_dict(self, state):
        """Restores what ``state_dict`` saved; ValueError naming the keys when it is not
        a state of this kind of scheduler (nothing is changed then)."""
        owner = f"{type(self).__name__}.load_state_dict"
        expected = set(self.state_dict())
        if not isinstance(state, dict) or set(state) != expected:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{owner}: expected a dict with keys {sorted(expected)}, got {got}")
        for key, value in state.items():
            setattr(self, key, _copied(value))


def _copied(value):
    if isinstance(value, dict):
        return {key: _copied(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copied(item) for item in value]
    return value


class LRScheduler(_State):
    """Base of the epoch-counting schedulers (torch's ``LRScheduler``).

    ``last_epoch`` counts the steps (0 after construction); ``step()`` adds one and sets
    the optimizer's ``learn_rate`` to ``get_lr()``, the subclass's rule. Subclasses with a
    closed form (the rate as a function of ``last_epoch`` alone) define ``closed_form_lr``,
    which ``SequentialLR`` uses when it hands over to them.
    """

    def __init__(self, optimizer):
        self.optimizer = _checked_optimizer(type(self).__name__, optimizer)
        if getattr(optimizer, "initial_lr", None) is None:
            optimizer.initial_lr = optimizer.learn_rate
        self.base_lr = optimizer.initial_lr
        self.last_epoch = -1
        self._is_initial = False
        self.initial_step()

    def initial_step(self):
        """Sets the schedule's first rate (step 0), as construction does."""
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def get_lr(self):
        """The rate for step ``last_epoch`` (already advanced)."""
        raise NotImplementedError(f"{type(self).__name__} must define get_lr")

    def get_last_lr(self):
        """[the learning rate the latest step set]."""
        return [self._last_lr]

    def step(self):
        """Advances the schedule by one step and sets the optimizer's learning rate."""
        self._step_count += 1
        self.last_epoch += 1
        self._set_lr(self.get_lr())

    def restart_at_zero(self):
        """Sets step 0's rate from the closed form (how SequentialLR hands over)."""
        self.last_epoch = 0
        closed_form = getattr(self, "closed_form_lr", None)
        self._set_lr(self.get_lr() if closed_form is None else closed_form())

    def _set_lr(self, value):
        self.optimizer.learn_rate = value
        self._last_lr = self.optimizer.learn_rate

    def __repr__(self):
        return f"{type(self).__name__}(last_epoch={self.last_epoch}, lr={self._last_lr!r})"


class StepLR(LRScheduler):
    """Multiplies the rate by ``gamma`` every ``step_size`` steps:
    ``lr_t = base_lr * gamma ** (t // step_size)``. Same as ``torch.optim.lr_scheduler.StepLR``.

    Example::

        >>> from nnlab.layers import Linear
        >>> from nnlab.optimizers import VanillaSGD
        >>> from nnlab.schedulers import StepLR
        >>> optimizer = VanillaSGD(Linear(3, 2).params(), learn_rate=0.1)
        >>> scheduler = StepLR(optimizer, step_size=2, gamma=0.5)
        >>> rates = []
        >>> for epoch in range(5):
        ...     rates.append(optimizer.learn_rate)
        ...     scheduler.step()                     # once per epoch, as torch's
        >>> rates
        [0.1, 0.1, 0.05, 0.05, 0.025]
    """

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size = checked_int("StepLR", "step_size", step_size, 1)
        self.gamma = checked_real("StepLR", "gamma", gamma, 0.0)
        super().__init__(optimizer)

    def get_lr(self):
        lr = self.optimizer.learn_rate
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return lr
        return lr * self.gamma

    def closed_form_lr(self):
        return self.base_lr * self.gamma ** (self.last_epoch // self.step_size)


class MultiStepLR(LRScheduler):
    """Multiplies the rate by ``gamma`` at each milestone (a milestone given twice
    multiplies twice): ``lr_t = base_lr * gamma ** (number of milestones <= t)``.
    Same as ``torch.optim.lr_scheduler.MultiStepLR``."""

    def __init__(self, optimizer, milestones, gamma=0.1):
        if isinstance(milestones, (str, bytes)) or not hasattr(milestones, "__iter__"):
            raise ValueError(f"MultiStepLR: milestones must be a list of step numbers, got {milestones!r}")
        milestones = [checked_int("MultiStepLR", "each milestone", value, 0) for value in milestones]
        self.milestones = dict(collections.Counter(milestones))
        self.gamma = checked_real("MultiStepLR", "gamma", gamma, 0.0)
        super().__init__(optimizer)

    def get_lr(self):
        lr = self.optimizer.learn_rate
        if self.last_epoch not in self.milestones:
            return lr
        return lr * self.gamma ** self.milestones[self.last_epoch]

    def closed_form_lr(self):
        passed = sorted(value for value, count in self.milestones.items() for _ in range(count))
        return self.base_lr * self.gamma ** bisect.bisect_right(passed, self.last_epoch)


class ExponentialLR(LRScheduler):
    """Multiplies the rate by ``gamma`` at every step: ``lr_t = base_lr * gamma ** t``.
    Same as ``torch.optim.lr_scheduler.ExponentialLR``."""

    def __init__(self, optimizer, gamma):
        self.gamma = checked_real("ExponentialLR", "gamma", gamma, 0.0)
        super().__init__(optimizer)

    def get_lr(self):
        lr = self.optimizer.learn_rate
        return lr if self._is_initial else lr * self.gamma

    def closed_form_lr(self):
        return self.base_lr * self.gamma**self.last_epoch


class CosineAnnealingLR(LRScheduler):
    """Half a cosine from the base rate down to ``eta_min`` over ``T_max`` steps:
    ``lr_t = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2``, back up
    over the next ``T_max`` steps, and so on. Computed recursively from the current rate,
    as torch does. Same as ``torch.optim.lr_scheduler.CosineAnnealingLR``."""

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max = checked_int("CosineAnnealingLR", "T_max", T_max, 1)
        self.eta_min = checked_real("CosineAnnealingLR", "eta_min", eta_min, 0.0)
        super().__init__(optimizer)

    def get_lr(self):
        lr = self.optimizer.learn_rate
        t, period, eta_min = self.last_epoch, self.T_max, self.eta_min
        if self._is_initial:
            return lr
        if (t - 1 - period) % (2 * period) == 0:
            # At the bottom the ratio below would divide by 1 + cos(pi) = 0.
            return lr + (self.base_lr - eta_min) * (1 - math.cos(math.pi / period)) / 2
        ratio = (1 + math.cos(math.pi * t / period)) / (1 + math.cos(math.pi * (t - 1) / period))
        return ratio * (lr - eta_min) + eta_min

    def closed_form_lr(self):
        cosine = 1 + math.cos(math.pi * self.last_epoch / self.T_max)
        return self.eta_min + (self.base_lr - self.eta_min) * cosine / 2


class LinearLR(LRScheduler):
    """Scales the base rate by a factor going linearly from ``start_factor`` to
    ``end_factor`` over ``total_iters`` steps, then constant:
    ``lr_t = base_lr * (start + (end - start) * min(t, total_iters) / total_iters)``
    (computed recursively, as torch does). Same as ``torch.optim.lr_scheduler.LinearLR``."""

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5):
        self.start_factor = checked_real("LinearLR", "start_factor", start_factor, 0.0, 1.0, low_open=True, high_open=False)
        self.end_factor = checked_real("LinearLR", "end_factor", end_factor, 0.0, 1.0, high_open=False)
        self.total_iters = checked_int("LinearLR", "total_iters", total_iters, 1)
        super().__init__(optimizer)

    def get_lr(self):
        lr = self.optimizer.learn_rate
        if self.last_epoch == 0:
            return lr * self.start_factor
        if self._is_initial or self.last_epoch > self.total_iters:
            return lr
        change = self.end_factor - self.start_factor
        reached = self.total_iters * self.start_factor + (self.last_epoch - 1) * change
        return lr * (1.0 + change / reached)

    def closed_form_lr(self):
        done = min(self.total_iters, self.last_epoch) / self.total_iters
        return self.base_lr * (self.start_factor + (self.end_factor - self.start_factor) * done)


class OneCycleLR(LRScheduler):
    """The 1cycle policy: the rate rises from ``max_lr / div_factor`` to ``max_lr`` over
    the first ``pct_start`` of ``total_steps`` steps, then falls to
    ``max_lr / div_factor / final_div_factor`` (``three_phase``: back to the start
    first), by a cosine (``anneal_strategy='cos'``) or a straight line ('linear'); the
    momentum (MomentumSGD's ``momentum``, Adam's and AdamW's ``betas[0]``) moves the other
    way between ``max_momentum`` and ``base_momentum`` when ``cycle_momentum``. Step once
    per batch, ``total_steps`` times in all: the last step, after the run's last batch
    (torch's loops step there too), extrapolates the last phase as torch does (a
    ValueError where that is no valid setting: a negative rate or a momentum of 1 or
    more, which 'linear' can give, or a last phase of no length, where torch divides by
    zero), and one more is an error, as in torch. ``total_steps`` may be given as
    ``epochs`` and ``steps_per_epoch``. Same as ``torch.optim.lr_scheduler.OneCycleLR``
    (one parameter group; an optimizer without momentum needs ``cycle_momentum=False``).
    """

    def __init__(
        self,
        optimizer,
        max_lr,
        total_steps=None,
        epochs=None,
        steps_per_epoch=None,
        pct_start=0.3,
        anneal_strategy="cos",
        cycle_momentum=True,
        base_momentum=0.85,
        max_momentum=0.95,
        div_factor=25.0,
        final_div_factor=1e4,
        three_phase=False,
    ):
        owner = "OneCycleLR"
        optimizer = _checked_optimizer(owner, optimizer)
        if total_steps is not None:
            self.total_steps = checked_int(owner, "total_steps", total_steps, 1)
        elif epochs is not None and steps_per_epoch is not None:
            epochs = checked_int(owner, "epochs", epochs, 1)
            self.total_steps = epochs * checked_int(owner, "steps_per_epoch", steps_per_epoch, 1)
        else:
            raise ValueError(f"{owner}: give total_steps, or epochs and steps_per_epoch")
        pct_start = checked_real(owner, "pct_start", pct_start, 0.0, 1.0, high_open=False)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"{owner}: anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self.anneal_strategy = anneal_strategy
        if float(pct_start * self.total_steps) - 1 == 0:
            # torch divides 0 by 0 at step 0 then.
            raise ValueError(
                f"{owner}: pct_start * total_steps = 1 leaves the rising phase no length; choose another pct_start"
            )
        self.phases = self._phases(pct_start, three_phase)
        max_lr = checked_real(owner, "max_lr", max_lr, 0.0)
        div_factor = checked_real(owner, "div_factor", div_factor, 0.0, low_open=True)
        final_div_factor = checked_real(owner, "final_div_factor", final_div_factor, 0.0, low_open=True)
        self.lrs = {"initial": max_lr / div_factor, "max": max_lr}
        self.lrs["min"] = self.lrs["initial"] / final_div_factor
        if not isinstance(cycle_momentum, bool):
            raise ValueError(f"{owner}: cycle_momentum must be True or False, got {cycle_momentum!r}")
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            self.momentums = {
                "max": checked_real(owner, "max_momentum", max_momentum, 0.0, 1.0),
                "base": checked_real(owner, "base_momentum", base_momentum, 0.0, 1.0),
            }
            self._set_momentum(optimizer, self.momentums["max"])
        optimizer.initial_lr = self.lrs["initial"]
        super().__init__(optimizer)

    def _phases(self, pct_start, three_phase):
        """[(end step, start and end of the rate, start and end of the momentum)]."""
        rise_end = float(pct_start * self.total_steps) - 1
        if three_phase:
            return [
                (rise_end, "initial", "max", "max", "base"),
                (float(2 * pct_start * self.total_steps) - 2, "max", "initial", "base", "max"),
                (self.total_steps - 1, "initial", "min", "max", "max"),
            ]
        return [(rise_end, "initial", "max", "max", "base"), (self.total_steps - 1, "max", "min", "base", "max")]

    @staticmethod
    def _set_momentum(optimizer, value):
        if "momentum" in optimizer.HYPERPARAMETERS:
            optimizer.momentum = value
        elif "betas" in optimizer.HYPERPARAMETERS:
            optimizer.betas = (value, *optimizer.betas[1:])
        else:
            raise ValueError(
                f"OneCycleLR: {type(optimizer).__name__} has no momentum to cycle; "
                "give cycle_momentum=False or use MomentumSGD, Adam or AdamW"
            )

    def _anneal(self, start, end, fraction):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * fraction) + 1)
        return (end - start) * fraction + start

    def get_lr(self):
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(
                f"OneCycleLR: step {step} is past the schedule, whose total_steps {self.total_steps} rates are "
                f"steps 0 to {self.total_steps - 1} (and step {self.total_steps}, after the last batch, as in torch)"
            )
        start_step = 0.0
        for index, (end_step, lr_from, lr_to, momentum_from, momentum_to) in enumerate(self.phases):
            if step <= end_step or index == len(self.phases) - 1:
                if end_step == start_step:
                    self._refuse_extrapolating(step, "its last phase has no length (torch divides by zero)")
                fraction = (step - start_step) / (end_step - start_step)
                lr = self._anneal(self.lrs[lr_from], self.lrs[lr_to], fraction)
                if lr < 0:
                    self._refuse_extrapolating(step, f"the rate would be {lr}")
                if self.cycle_momentum:
                    momentum = self._anneal(self.momentums[momentum_from], self.momentums[momentum_to], fraction)
                    if not 0 <= momentum < 1:
                        self._refuse_extrapolating(step, f"the momentum would be {momentum}")
                    self._set_momentum(self.optimizer, momentum)
                return lr
            start_step = end_step
        raise AssertionError("unreachable: the last phase always applies")

    def _refuse_extrapolating(self, step, problem):
        """ValueError for the step after the schedule's last (the only one that
        extrapolates), where torch's extrapolation is no valid setting."""
        raise ValueError(
            f"OneCycleLR: step {step}, after the schedule's last, extrapolates its last phase as torch does, but "
            f"{problem}; give total_steps={step + 1} (or anneal_strategy='cos') to step there"
        )


class SequentialLR(_State):
    """Runs ``schedulers`` one after the other, switching at the steps in
    ``milestones`` (one fewer than schedulers): warm-up then decay is
    ``SequentialLR(opt, [LinearLR(opt, 0.1, total_iters=5), CosineAnnealingLR(opt, 95)], [5])``.
    At a milestone the next scheduler starts from its own step 0 (its closed form).
    Same as ``torch.optim.lr_scheduler.SequentialLR``, whose quirks it keeps: the
    schedulers must be built on ``optimizer``, in order, right before this one.
    """

    def __init__(self, optimizer, schedulers, milestones):
        owner = "SequentialLR"
        self.optimizer = _checked_optimizer(owner, optimizer)
        schedulers = list(schedulers)
        if not schedulers:
            raise ValueError(f"{owner}: expects at least one scheduler, got none")
        for index, scheduler in enumerate(schedulers):
            if not isinstance(scheduler, LRScheduler):
                raise ValueError(
                    f"{owner}: schedulers[{index}] must be an epoch-counting scheduler (not ReduceLROnPlateau "
                    f"or a SequentialLR), got {type(scheduler).__name__}"
                )
            if scheduler.optimizer is not optimizer:
                raise ValueError(f"{owner}: schedulers[{index}] ({type(scheduler).__name__}) belongs to another optimizer")
        milestones = [checked_int(owner, "each milestone", value, 0) for value in milestones]
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(
                f"{owner}: expects one milestone fewer than schedulers, got {len(schedulers)} schedulers "
                f"and {len(milestones)} milestones"
            )
        self._schedulers = schedulers
        self.milestones = milestones
        self.last_epoch = 0
        optimizer.learn_rate = optimizer.initial_lr
        for scheduler in schedulers:
            scheduler.last_epoch -= 1
        first = self._schedulers[bisect.bisect_right(self.milestones, 0)]
        first.initial_step()
        self._last_lr = first.get_last_lr()[0]

    def step(self):
        """Advances by one step: the current scheduler steps, or at a milestone the next
        one starts at its step 0."""
        self.last_epoch += 1
        index = bisect.bisect_right(self.milestones, self.last_epoch)
        scheduler = self._schedulers[index]
        if index > 0 and self.milestones[index - 1] == self.last_epoch:
            scheduler.restart_at_zero()
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()[0]

    def get_last_lr(self):
        return [self._last_lr]

    def state_dict(self):
        state = {key: _copied(value) for key, value in vars(self).items() if key not in ("optimizer", "_schedulers")}
        state["schedulers"] = [scheduler.state_dict() for scheduler in self._schedulers]
        return state

    def load_state_dict(self, state):
        owner = "SequentialLR.load_state_dict"
        expected = set(self.state_dict())
        if not isinstance(state, dict) or set(state) != expected:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{owner}: expected a dict with keys {sorted(expected)}, got {got}")
        if len(state["schedulers"]) != len(self._schedulers):
            raise ValueError(f"{owner}: the state holds {len(state['schedulers'])} schedulers, this has {len(self._schedulers)}")
        for scheduler, saved in zip(self._schedulers, state["schedulers"]):
            scheduler.load_state_dict(saved)
        for key, value in state.items():
            if key != "schedulers":
                setattr(self, key, _copied(value))


class ReduceLROnPlateau(_State):
    """Multiplies the rate by ``factor`` when a metric has not improved for more than
    ``patience`` steps: ``step(metric)`` once per epoch, e.g. with the test loss.
    ``mode='min'`` (a lower metric is better) or 'max'; an improvement beats the best by
    more than ``threshold`` (relative: ``best * (1 - threshold)`` in min mode, or absolute
    with ``threshold_mode='abs'``); ``cooldown`` steps after a reduction ignore bad epochs;
    the rate never goes below ``min_lr``, and a change of ``eps`` or less is skipped.
    Same as ``torch.optim.lr_scheduler.ReduceLROnPlateau``.
    """

    def __init__(
        self,
        optimizer,
        mode="min",
        factor=0.1,
        patience=10,
        threshold=1e-4,
        threshold_mode="rel",
        cooldown=0,
        min_lr=0.0,
        eps=1e-8,
    ):
        owner = "ReduceLROnPlateau"
        self.optimizer = _checked_optimizer(owner, optimizer)
        if mode not in ("min", "max"):
            raise ValueError(f"{owner}: mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"{owner}: threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.mode = mode
        self.threshold_mode = threshold_mode
        self.factor = checked_real(owner, "factor", factor, 0.0, 1.0)
        self.patience = checked_int(owner, "patience", patience, 0)
        self.threshold = checked_real(owner, "threshold", threshold, 0.0)
        self.cooldown = checked_int(owner, "cooldown", cooldown, 0)
        self.min_lr = checked_real(owner, "min_lr", min_lr, 0.0)
        self.eps = checked_real(owner, "eps", eps, 0.0)
        self.last_epoch = 0
        self._last_lr = optimizer.learn_rate
        self.best = math.inf if mode == "min" else -math.inf
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    def is_better(self, value):
        """Whether ``value`` improves on the best metric so far by more than the threshold."""
        if self.mode == "min" and self.threshold_mode == "rel":
            return value < self.best * (1.0 - self.threshold)
        if self.mode == "min":
            return value < self.best - self.threshold
        if self.threshold_mode == "rel":
            return value > self.best * (self.threshold + 1.0)
        return value > self.best + self.threshold

    def step(self, metric):
        """Records one epoch's ``metric`` (a number) and reduces the rate after more than
        ``patience`` bad epochs."""
        current = float(metric)
        self.last_epoch += 1
        if self.is_better(current):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self._reduce_lr()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = self.optimizer.learn_rate

    def _reduce_lr(self):
        old_lr = float(self.optimizer.learn_rate)
        new_lr = max(old_lr * self.factor, self.min_lr)
        if old_lr - new_lr > self.eps:
            self.optimizer.learn_rate = new_lr

    def get_last_lr(self):
        return [self._last_lr]

    def __repr__(self):
        return f"ReduceLROnPlateau(mode={self.mode!r}, best={self.best!r}, lr={self._last_lr!r})"
