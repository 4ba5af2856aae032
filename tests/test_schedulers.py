"""nnlab.schedulers against torch.optim.lr_scheduler: the same learning rate (and, for
OneCycleLR, momentum) at every step, in float64 to 1e-12; a state_dict round trip in
the middle of a schedule continues exactly as the uninterrupted run; bad arguments."""

import io
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nnlab import schedulers
from nnlab.optimizers import Adam, MomentumSGD, RMSProp, VanillaSGD

ATOL = 1e-12
STEPS = 60


def optimizer_pair(lr, kind="sgd"):
    """An nnlab optimizer and the torch.optim optimizer it corresponds to, each on its own
    float64 parameter."""
    ours_param = torch.zeros(3, dtype=torch.float64)
    theirs_param = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    if kind == "adam":
        return Adam([ours_param], learn_rate=lr), torch.optim.Adam([theirs_param], lr=lr)
    if kind == "momentum":
        return MomentumSGD([ours_param], learn_rate=lr, momentum=0.9), torch.optim.SGD([theirs_param], lr=lr, momentum=0.9)
    return VanillaSGD([ours_param], learn_rate=lr), torch.optim.SGD([theirs_param], lr=lr)


def make_pair(name, lr, args, kind="sgd"):
    """(ours, theirs): ``name`` built with ``args`` on a fresh optimizer pair."""
    ours_opt, theirs_opt = optimizer_pair(lr, kind)
    ours = getattr(schedulers, name)(ours_opt, **args)
    theirs = getattr(torch.optim.lr_scheduler, name)(theirs_opt, **args)
    return ours, theirs


def assert_same_lr(ours, theirs, where):
    ours_lr = ours.get_last_lr()[0]
    theirs_lr = theirs.get_last_lr()[0]
    assert ours.optimizer.learn_rate == ours_lr, where
    assert abs(ours_lr - theirs_lr) <= ATOL, f"{where}: nnlab {ours_lr!r}, torch {theirs_lr!r}"
    assert abs(theirs.optimizer.param_groups[0]["lr"] - ours_lr) <= ATOL, where


def step_both(ours, theirs, steps, metrics=None):
    for step in range(steps):
        theirs.optimizer.step()  # no gradients: only keeps torch from warning about the order
        if metrics is None:
            ours.step()
            theirs.step()
        else:
            ours.step(metrics[step])
            theirs.step(metrics[step])
        assert_same_lr(ours, theirs, f"step {step + 1}")


lrs = st.sampled_from([0.1, 1.0, 0.0123])
gammas = st.sampled_from([0.1, 0.5, 0.9, 0.99, 1.0, 1.5])

SCHEDULES = {
    "StepLR": st.fixed_dictionaries({"step_size": st.integers(1, 15), "gamma": gammas}),
    "MultiStepLR": st.fixed_dictionaries(
        {"milestones": st.lists(st.integers(0, STEPS), max_size=5), "gamma": gammas}
    ),
    "ExponentialLR": st.fixed_dictionaries({"gamma": gammas}),
    "CosineAnnealingLR": st.fixed_dictionaries(
        {"T_max": st.integers(1, 40), "eta_min": st.sampled_from([0.0, 1e-4, 0.05])}
    ),
    "LinearLR": st.fixed_dictionaries(
        {
            "start_factor": st.sampled_from([1 / 3, 0.01, 0.5, 1.0]),
            "end_factor": st.sampled_from([1.0, 0.0, 0.2]),
            "total_iters": st.integers(1, 30),
        }
    ),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@given(data=st.data(), lr=lrs)
def test_schedule_equals_torch_at_every_step(name, data, lr):
    args = data.draw(SCHEDULES[name])
    ours, theirs = make_pair(name, lr, args)
    assert_same_lr(ours, theirs, "after construction")
    step_both(ours, theirs, STEPS)


@given(
    total_steps=st.integers(2, STEPS),
    pct_start=st.sampled_from([0.3, 0.0, 0.5, 1.0, 0.25]),
    anneal_strategy=st.sampled_from(["cos", "linear"]),
    three_phase=st.booleans(),
    kind=st.sampled_from(["adam", "momentum"]),
)
def test_one_cycle_equals_torch_rates_and_momenta(total_steps, pct_start, anneal_strategy, three_phase, kind):
    args = dict(
        max_lr=0.5, total_steps=total_steps, pct_start=pct_start, anneal_strategy=anneal_strategy, three_phase=three_phase
    )
    if float(pct_start * total_steps) == 1:
        return  # test_one_cycle_refuses_a_rising_phase_of_no_length
    ours, theirs = make_pair("OneCycleLR", 0.01, args, kind)
    for step in range(total_steps):
        assert_same_lr(ours, theirs, f"step {step}")
        assert_same_momentum(ours, theirs, kind, f"step {step}")
        theirs.optimizer.step()
        if step < total_steps - 1:
            ours.step()
            theirs.step()
    check_one_cycle_step_after_the_last(ours, theirs, kind, total_steps)


def assert_same_momentum(ours, theirs, kind, where):
    group = theirs.optimizer.param_groups[0]
    theirs_momentum = group["betas"][0] if kind == "adam" else group["momentum"]
    ours_momentum = ours.optimizer.betas[0] if kind == "adam" else ours.optimizer.momentum
    assert abs(ours_momentum - theirs_momentum) <= ATOL, where


def check_one_cycle_step_after_the_last(ours, theirs, kind, total_steps):
    """torch takes one step more than total_steps (a loop steps after its last batch
    too), extrapolating the last phase, and refuses the next. Where its extrapolation is
    no valid setting (a negative rate, a momentum of 1 or more, a last phase of no
    length, where torch divides by zero), ours is a ValueError naming the step."""
    try:
        theirs.step()
    except ZeroDivisionError:
        with pytest.raises(ValueError, match=f"OneCycleLR: step {total_steps}, after the schedule's last"):
            ours.step()
        return
    group = theirs.optimizer.param_groups[0]
    momentum = group["betas"][0] if kind == "adam" else group["momentum"]
    if group["lr"] < 0 or momentum >= 1:
        with pytest.raises(ValueError, match=f"OneCycleLR: step {total_steps}, after the schedule's last"):
            ours.step()
        return
    ours.step()
    assert_same_lr(ours, theirs, f"step {total_steps}")
    assert_same_momentum(ours, theirs, kind, f"step {total_steps}")
    with pytest.raises(ValueError, match=f"Tried to step {total_steps + 1} times"):
        theirs.step()
    with pytest.raises(ValueError, match=f"OneCycleLR: step {total_steps + 1} is past the schedule"):
        ours.step()


def test_one_cycle_refuses_a_rising_phase_of_no_length():
    ours_opt, theirs_opt = optimizer_pair(0.01)
    with pytest.raises(ZeroDivisionError):
        torch.optim.lr_scheduler.OneCycleLR(theirs_opt, max_lr=0.1, total_steps=4, pct_start=0.25)
    with pytest.raises(ValueError, match=r"pct_start \* total_steps = 1 leaves the rising phase no length"):
        schedulers.OneCycleLR(ours_opt, max_lr=0.1, total_steps=4, pct_start=0.25)


def test_one_cycle_from_epochs_and_steps_per_epoch():
    args = dict(max_lr=0.2, epochs=3, steps_per_epoch=7, cycle_momentum=False)
    ours, theirs = make_pair("OneCycleLR", 0.01, args)
    step_both(ours, theirs, 20)


def test_one_cycle_refuses_cycling_a_missing_momentum():
    with pytest.raises(ValueError, match="RMSProp has no momentum to cycle; give cycle_momentum=False"):
        schedulers.OneCycleLR(RMSProp([torch.zeros(2)]), max_lr=0.1, total_steps=10)


@given(
    metrics=st.lists(st.sampled_from([1.0, 0.9, 0.5, 0.49995, 2.0, math.nan]), min_size=1, max_size=STEPS),
    mode=st.sampled_from(["min", "max"]),
    threshold_mode=st.sampled_from(["rel", "abs"]),
    patience=st.integers(0, 4),
    cooldown=st.integers(0, 3),
    min_lr=st.sampled_from([0.0, 1e-3]),
)
def test_plateau_equals_torch(metrics, mode, threshold_mode, patience, cooldown, min_lr):
    args = dict(mode=mode, factor=0.5, patience=patience, threshold_mode=threshold_mode, cooldown=cooldown, min_lr=min_lr)
    ours, theirs = make_pair("ReduceLROnPlateau", 0.1, args)
    step_both(ours, theirs, len(metrics), metrics)


def warmup_then(decay, opt_kind="sgd"):
    """SequentialLR(LinearLR warm-up for 5 steps, then ``decay``) on nnlab and on torch."""
    pair = []
    for module, opt in zip((schedulers, torch.optim.lr_scheduler), optimizer_pair(0.1, opt_kind)):
        warmup = module.LinearLR(opt, start_factor=0.1, total_iters=5)
        name, args = decay
        pair.append(module.SequentialLR(opt, [warmup, getattr(module, name)(opt, **args)], milestones=[5]))
    return pair


@pytest.mark.parametrize(
    "decay",
    [("CosineAnnealingLR", dict(T_max=20)), ("StepLR", dict(step_size=4, gamma=0.5)),
     ("ExponentialLR", dict(gamma=0.9)), ("MultiStepLR", dict(milestones=[3, 8]))],
)
def test_sequential_warmup_then_decay_equals_torch(decay):
    ours, theirs = warmup_then(decay)
    assert_same_lr(ours, theirs, "after construction")
    step_both(ours, theirs, 40)


def test_three_schedules_in_sequence_equal_torch():
    pair = []
    for module, opt in zip((schedulers, torch.optim.lr_scheduler), optimizer_pair(0.1)):
        parts = [module.ExponentialLR(opt, 0.9), module.StepLR(opt, 3), module.CosineAnnealingLR(opt, 10)]
        pair.append(module.SequentialLR(opt, parts, milestones=[4, 12]))
    step_both(*pair, 30)


def test_hand_set_rate_between_steps_follows_torch():
    """Chainable rules start from the optimizer's current rate, as torch's do."""
    ours, theirs = make_pair("CosineAnnealingLR", 0.1, dict(T_max=10))
    step_both(ours, theirs, 3)
    ours.optimizer.learn_rate = 0.05
    theirs.optimizer.param_groups[0]["lr"] = 0.05
    step_both(ours, theirs, 10)


def round_trip(state):
    """``state`` through torch.save and torch.load(weights_only=True), as a checkpoint."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


CASES = [
    ("StepLR", dict(step_size=3, gamma=0.5), "sgd"),
    ("MultiStepLR", dict(milestones=[2, 5, 5, 9]), "sgd"),
    ("ExponentialLR", dict(gamma=0.95), "sgd"),
    ("CosineAnnealingLR", dict(T_max=7, eta_min=0.01), "sgd"),
    ("LinearLR", dict(start_factor=0.2, total_iters=6), "sgd"),
    ("OneCycleLR", dict(max_lr=0.4, total_steps=30), "adam"),
]


@pytest.mark.parametrize("name, args, kind", CASES)
def test_state_dict_round_trip_mid_schedule(name, args, kind):
    """Stop after 8 steps, save optimizer and scheduler, restore both into fresh ones
    (built with another rate, which the state overrides), go on: every later rate is
    torch's uninterrupted one."""
    ours, theirs = make_pair(name, 0.1, args, kind)
    step_both(ours, theirs, 8)
    saved = round_trip({"optimizer": ours.optimizer.state_dict(), "scheduler": ours.state_dict()})
    fresh_opt, _ = optimizer_pair(0.3, kind)
    resumed = getattr(schedulers, name)(fresh_opt, **args)
    fresh_opt.load_state_dict(saved["optimizer"])
    resumed.load_state_dict(saved["scheduler"])
    assert_same_lr(resumed, theirs, "after loading")
    step_both(resumed, theirs, 20)


def test_state_dict_round_trip_of_sequential_and_plateau():
    ours, theirs = warmup_then(("CosineAnnealingLR", dict(T_max=20)))
    step_both(ours, theirs, 7)
    saved = round_trip({"optimizer": ours.optimizer.state_dict(), "scheduler": ours.state_dict()})
    (resumed, _) = warmup_then(("CosineAnnealingLR", dict(T_max=20)))
    resumed.optimizer.load_state_dict(saved["optimizer"])
    resumed.load_state_dict(saved["scheduler"])
    step_both(resumed, theirs, 20)

    metrics = [1.0, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8]
    ours, theirs = make_pair("ReduceLROnPlateau", 0.1, dict(patience=1, cooldown=1))
    step_both(ours, theirs, 5, metrics)
    saved = round_trip(ours.state_dict())
    resumed, _ = make_pair("ReduceLROnPlateau", 0.1, dict(patience=1, cooldown=1))
    resumed.optimizer.learn_rate = ours.optimizer.learn_rate
    resumed.load_state_dict(saved)
    step_both(resumed, theirs, 5, metrics[5:])


def test_state_dict_is_a_copy_and_a_foreign_state_is_refused():
    sched = schedulers.MultiStepLR(VanillaSGD([torch.zeros(1)], learn_rate=0.1), milestones=[2])
    state = sched.state_dict()
    state["milestones"][2] = 5
    assert sched.milestones == {2: 1}
    other = schedulers.StepLR(VanillaSGD([torch.zeros(1)], learn_rate=0.1), step_size=2)
    with pytest.raises(ValueError, match="StepLR.load_state_dict: expected a dict with keys"):
        other.load_state_dict(sched.state_dict())
    assert other.last_epoch == 0


def opt():
    return VanillaSGD([torch.zeros(1)], learn_rate=0.1)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: schedulers.StepLR(opt(), step_size=0), "StepLR: step_size must be an int >= 1"),
        (lambda: schedulers.StepLR(torch.optim.SGD([torch.zeros(1)], lr=0.1), 2), "optimizer must be an nnlab optimizer"),
        (lambda: schedulers.MultiStepLR(opt(), milestones=3), "MultiStepLR: milestones must be a list"),
        (lambda: schedulers.ExponentialLR(opt(), gamma=-1.0), "ExponentialLR: gamma must be a finite number"),
        (lambda: schedulers.CosineAnnealingLR(opt(), T_max=0), "CosineAnnealingLR: T_max must be an int >= 1"),
        (lambda: schedulers.LinearLR(opt(), start_factor=0.0), "LinearLR: start_factor must be"),
        (lambda: schedulers.OneCycleLR(opt(), max_lr=0.1), "OneCycleLR: give total_steps"),
        (lambda: schedulers.OneCycleLR(opt(), 0.1, 10, anneal_strategy="exp"), "anneal_strategy must be"),
        (lambda: schedulers.ReduceLROnPlateau(opt(), factor=1.0), "ReduceLROnPlateau: factor must be"),
        (lambda: schedulers.ReduceLROnPlateau(opt(), mode="lowest"), "ReduceLROnPlateau: mode must be"),
        (lambda: schedulers.SequentialLR(opt(), [], []), "SequentialLR: expects at least one scheduler"),
        (lambda: schedulers.SequentialLR(opt(), [schedulers.StepLR(opt(), 2)], []), "belongs to another optimizer"),
    ],
)
def test_bad_arguments_name_the_scheduler(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_sequential_needs_one_milestone_fewer_than_schedulers():
    optimizer = opt()
    parts = [schedulers.StepLR(optimizer, 2), schedulers.ExponentialLR(optimizer, 0.9)]
    with pytest.raises(ValueError, match="one milestone fewer than schedulers"):
        schedulers.SequentialLR(optimizer, parts, milestones=[])
    plateau = schedulers.ReduceLROnPlateau(optimizer)
    with pytest.raises(ValueError, match=r"schedulers\[0\] must be an epoch-counting scheduler"):
        schedulers.SequentialLR(optimizer, [plateau], milestones=[])


def test_adamw_under_one_cycle_trains_as_torch():
    """The schedule drives the optimizer: AdamW's rate and beta1 change every step, and the
    parameters follow torch's AdamW under torch's OneCycleLR to 1e-12 (float64)."""
    from nnlab.optimizers import AdamW

    gen = torch.Generator().manual_seed(0)
    start = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    grads = [torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in range(40)]
    ours_param, ours_grad = start.clone(), torch.zeros_like(start)
    ours_opt = AdamW([(ours_param, ours_grad)], lr=0.01, weight_decay=0.1)
    ours = schedulers.OneCycleLR(ours_opt, max_lr=0.1, total_steps=40)
    theirs_param = start.clone().requires_grad_()
    theirs_opt = torch.optim.AdamW([theirs_param], lr=0.01, weight_decay=0.1, foreach=False)
    theirs = torch.optim.lr_scheduler.OneCycleLR(theirs_opt, max_lr=0.1, total_steps=40)
    for step, grad in enumerate(grads):
        ours_grad.copy_(grad)
        theirs_param.grad = grad.clone()
        ours_opt.step()
        theirs_opt.step()
        if step < len(grads) - 1:
            ours.step()
            theirs.step()
    assert (ours_param - theirs_param.detach()).abs().max().item() <= ATOL
