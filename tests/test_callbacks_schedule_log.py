"""nnlab.callbacks' LearningRateScheduler (the rates torch's schedulers give, per epoch
and per step, ReduceLROnPlateau on a monitored figure, a resumed run bit for bit) and
CSVLogger (one row per epoch with the right columns, the recorded numbers exactly)."""

import csv

import pytest
import torch

from nnlab.callbacks import CSVLogger, Callback, LearningRateScheduler
from nnlab.data import Batches
from nnlab.layers import MLP, CrossEntropyLoss, MSELoss
from nnlab.optimizers import MomentumSGD
from nnlab.schedulers import OneCycleLR, ReduceLROnPlateau, StepLR
from nnlab.training import EpochResult, LayerTrainer

NUM_BATCHES = 3


def batches(seed=0, regression=False):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(24, 4, generator=generator)
    y = torch.randn(24, 2, generator=generator) if regression else torch.randint(0, 3, (24,), generator=generator)
    return Batches(x, y, 8, shuffle=True)


def trainer(seed=0, regression=False):
    torch.manual_seed(seed)
    model = MLP(4, 2 if regression else 3, hidden_features=(5,))
    loss = MSELoss() if regression else CrossEntropyLoss()
    return LayerTrainer(model, loss, MomentumSGD(model.params(), learn_rate=0.1, reg=0.0))


class RatesUsed(Callback):
    """The optimizer's rate at every training step, read before the scheduler callback
    (listed after this one) changes it: the rate that step used."""

    def __init__(self):
        self.rates = []

    def on_batch_end(self, trainer, phase, batch, result):
        if phase == "train":
            self.rates.append(trainer.optimizer.learn_rate)


def torch_rates(make_scheduler, epochs, per_step, metrics=None):
    """The rate of every step of a torch optimizer driven by torch's scheduler."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    scheduler = make_scheduler(optimizer)
    rates = []
    for epoch in range(epochs):
        for _ in range(NUM_BATCHES):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if per_step:
                scheduler.step()
        if not per_step:
            scheduler.step() if metrics is None else scheduler.step(metrics[epoch])
    return rates


def test_an_epoch_scheduler_gives_torchs_rate_at_every_step():
    model_trainer = trainer()
    used = RatesUsed()
    callback = LearningRateScheduler(StepLR(model_trainer.optimizer, step_size=2, gamma=0.5))
    model_trainer.fit(batches(), batches(1), 7, callbacks=[used, callback], verbose=0)
    expected = torch_rates(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5), 7, per_step=False)
    assert used.rates == expected
    assert len(set(expected)) == 4


def test_a_step_scheduler_gives_torchs_rate_at_every_step():
    model_trainer = trainer()
    used = RatesUsed()
    total = 5 * NUM_BATCHES  # the run's steps: the callback's step after the last one is torch's extra step
    callback = LearningRateScheduler(OneCycleLR(model_trainer.optimizer, max_lr=0.3, total_steps=total), interval="step")
    model_trainer.fit(batches(), batches(1), 5, callbacks=[used, callback], verbose=0)
    expected = torch_rates(lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.3, total_steps=total), 5, per_step=True)
    torch.testing.assert_close(used.rates, expected, rtol=0, atol=1e-15)
    assert len(set(used.rates)) == total
    assert used.rates[-1] == pytest.approx(0.3 / 25 / 1e4, rel=1e-12)  # the schedule's last rate, on the run's last step


class ScriptedTest(LayerTrainer):
    """Reports scripted test losses, so the plateau is known in advance."""

    def __init__(self, losses):
        base = trainer()
        super().__init__(base.model, base.loss_fn, base.optimizer)
        self.script = list(losses)

    def test_epoch(self, dl, **kw):
        return EpochResult([self.script[self.epoch - 1]], 50.0)


def test_reduce_on_plateau_follows_the_monitored_figure_as_torchs_does():
    losses = [1.0, 0.9, 0.95, 0.97, 0.96, 0.5, 0.6, 0.7, 0.8]
    model_trainer = ScriptedTest(losses)
    used = RatesUsed()
    callback = LearningRateScheduler(ReduceLROnPlateau(model_trainer.optimizer, factor=0.5, patience=1), monitor="test_loss")
    model_trainer.fit(batches(), batches(1), len(losses), callbacks=[used, callback], verbose=0)
    expected = torch_rates(lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=1), len(losses), False, losses)
    assert used.rates == expected
    assert min(expected) < 0.1 / 3


def test_a_resumed_run_with_a_scheduler_equals_an_uninterrupted_one_bit_for_bit(tmp_path):
    def run(epochs, resume=None, path=None):
        model_trainer = trainer()
        schedule = LearningRateScheduler(OneCycleLR(model_trainer.optimizer, max_lr=0.3, total_steps=6 * NUM_BATCHES), interval="step")
        plateau = LearningRateScheduler(ReduceLROnPlateau(model_trainer.optimizer, factor=0.5, patience=0), monitor="train_loss")
        torch.manual_seed(7)
        fit = model_trainer.fit(batches(), batches(1), epochs, checkpoints=path, resume=resume, callbacks=[schedule, plateau], verbose=0)
        return fit, model_trainer

    whole, whole_trainer = run(6, path=tmp_path / "whole.pt")  # both end on the best epoch's weights
    path = tmp_path / "run.pt"
    run(3, path=path)
    resumed, resumed_trainer = run(6, resume=path, path=path)
    assert resumed == whole and resumed.metrics == whole.metrics and resumed.steps == whole.steps
    for (a, _), (b, _) in zip(whole_trainer.model.params(), resumed_trainer.model.params()):
        assert torch.equal(a, b)
    assert resumed_trainer.optimizer.learn_rate == whole_trainer.optimizer.learn_rate


def test_scheduler_callback_errors():
    optimizer = trainer().optimizer
    with pytest.raises(ValueError, match="interval must be one of"):
        LearningRateScheduler(StepLR(optimizer, step_size=1), interval="batch")
    with pytest.raises(ValueError, match="interval must be 'epoch'"):
        LearningRateScheduler(ReduceLROnPlateau(optimizer), interval="step")
    with pytest.raises(TypeError, match="expected a scheduler"):
        LearningRateScheduler(0.1)
    model_trainer = trainer()
    callback = LearningRateScheduler(ReduceLROnPlateau(model_trainer.optimizer), monitor="test_mae")
    with pytest.raises(ValueError, match="monitor 'test_mae' is not a recorded figure"):
        model_trainer.fit(batches(), batches(1), 1, callbacks=[callback], verbose=0)


def read_csv(path):
    with open(path, newline="") as file:
        return list(csv.reader(file))


@pytest.mark.parametrize(
    "regression, columns",
    [
        (False, ["epoch", "train_loss", "test_loss", "train_acc", "test_acc"]),
        (True, ["epoch", "train_loss", "test_loss", "train_mae", "train_mse", "test_mae", "test_mse"]),
    ],
)
def test_csv_logger_writes_one_row_per_epoch_with_every_figure(tmp_path, regression, columns):
    path = tmp_path / "log.csv"
    fit = trainer(regression=regression).fit(batches(regression=regression), batches(1, regression), 4, callbacks=CSVLogger(path), verbose=0)
    rows = read_csv(path)
    assert rows[0] == columns
    assert [row[0] for row in rows[1:]] == ["1", "2", "3", "4"]
    for index, name in enumerate(columns[1:], 1):
        assert [float(row[index]) for row in rows[1:]] == fit.metrics[name]


def test_csv_logger_of_a_resumed_run_holds_every_epoch(tmp_path):
    path, checkpoint = tmp_path / "log.csv", tmp_path / "run.pt"
    trainer().fit(batches(), batches(1), 2, checkpoints=checkpoint, callbacks=CSVLogger(path), verbose=0)
    assert len(read_csv(path)) == 3
    fit = trainer().fit(batches(), batches(1), 5, checkpoints=checkpoint, resume=checkpoint, callbacks=CSVLogger(path), verbose=0)
    rows = read_csv(path)
    assert len(rows) == 6
    assert [float(row[1]) for row in rows[1:]] == fit.train_loss


@pytest.mark.parametrize(
    "name, make_torch, per_step",
    [
        ("cosine", lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=6), False),
        ("step", lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[2, 4], gamma=0.1), False),
        ("onecycle", lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=6 * NUM_BATCHES), True),
    ],
)
def test_the_named_schedules_of_nnlab_train_give_torchs_rates(name, make_torch, per_step):
    from nnlab.training.scheduling import make_schedule

    model_trainer = trainer()
    used = RatesUsed()
    callback = make_schedule(name, model_trainer.optimizer, 6, NUM_BATCHES)
    model_trainer.fit(batches(), batches(1), 6, callbacks=[used, callback], verbose=0)
    torch.testing.assert_close(used.rates, torch_rates(make_torch, 6, per_step), rtol=0, atol=1e-15)


def test_the_plateau_schedule_waits_3_epochs_on_the_test_loss():
    from nnlab.training.scheduling import make_schedule

    losses = [1.0, 0.9, 0.95, 0.97, 0.96, 0.99, 0.5, 0.6]
    model_trainer = ScriptedTest(losses)
    used = RatesUsed()
    model_trainer.fit(batches(), batches(1), len(losses), callbacks=[used, make_schedule("plateau", model_trainer.optimizer, 8, 3)], verbose=0)
    expected = torch_rates(lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=3), len(losses), False, losses)
    assert used.rates == expected and expected[-1] == pytest.approx(0.01)


def test_the_documented_example_of_schedules_and_logs_runs(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "training.md").read_text()
    section = page.split("## Progress, schedules and logs during fit", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "docs/training.md", "exec"), namespace)
    assert len(read_csv(tmp_path / "run.csv")) == 6
    assert len(capsys.readouterr().err.splitlines()) == 6
