"""Tests for nnlab.callbacks: EarlyStopping (stop epoch, modes, min_delta, restoring the
best weights), ModelCheckpoint (the best epoch in the file, save_best_only), the hooks
on_fit_start / on_fit_end and stopping by returning True, the shorthands of fit, and
callback state in checkpoints (a resumed run equals an uninterrupted one)."""

import pytest
import torch

from nnlab.callbacks import Callback, EarlyStopping, ModelCheckpoint
from nnlab.data import Batches
from nnlab.layers import MLP, CrossEntropyLoss
from nnlab.optimizers import MomentumSGD
from nnlab.training import CheckpointError, EpochResult, LayerTrainer, load_checkpoint


class Scripted(LayerTrainer):
    """Trains for real but reports scripted test figures, and keeps the weights after
    each epoch, so the epoch a callback must pick is known in advance."""

    def __init__(self, losses, accuracies, seed=0):
        torch.manual_seed(seed)
        model = MLP(4, 3, hidden_features=(5,))
        super().__init__(model, CrossEntropyLoss(), MomentumSGD(model.params(), learn_rate=0.1, reg=0.0))
        self.script = list(zip(losses, accuracies))
        self.states = []

    def test_epoch(self, dl, **kw):
        self.states.append(self._model_state())
        loss, accuracy = self.script[len(self.states) - 1]
        return EpochResult([loss], accuracy)


def batches(seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(24, 4, generator=generator)
    y = torch.randint(0, 3, (24,), generator=generator)
    return Batches(x, y, 8, shuffle=True)


def fit(trainer, epochs, **kw):
    torch.manual_seed(1)  # the shuffling
    return trainer.fit(batches(), batches(), epochs, verbose=False, **kw)


def assert_states_equal(actual, expected):
    assert actual.keys() == expected.keys()
    for key in expected:
        assert torch.equal(actual[key], expected[key]), f"state '{key}' differs"


LOSSES = [1.0, 0.8, 0.9, 0.85, 0.7, 0.95, 0.96, 0.97, 0.98, 0.99]
ACCURACIES = [10.0, 30.0, 20.0, 30.0, 25.0, 40.0, 35.0, 35.0, 35.0, 35.0]


def stop_epoch(values, patience, lower_is_better, min_delta=0.0):
    """The epoch after which early stopping ends a run, written out independently."""
    best = None
    since = 0
    for epoch, value in enumerate(values, start=1):
        if best is None:
            better = True
        elif lower_is_better:
            better = value < best - min_delta
        else:
            better = value > best + min_delta
        if better:
            best, since = value, 0
        else:
            since += 1
        if since >= patience:
            return epoch
    return len(values)


@pytest.mark.parametrize(
    "monitor, patience, min_delta, expected",
    [("test_loss", 1, 0.0, 3), ("test_loss", 2, 0.0, 4), ("test_loss", 3, 0.0, 8), ("test_loss", 2, 0.25, 3),
     ("test_acc", 2, 0.0, 4), ("test_acc", 3, 0.0, 5), ("test_acc", 5, 0.0, 10)],
)
def test_early_stopping_stops_after_patience_epochs_without_improvement(monitor, patience, min_delta, expected):
    values = LOSSES if monitor == "test_loss" else ACCURACIES
    assert stop_epoch(values, patience, monitor == "test_loss", min_delta) == expected
    trainer = Scripted(LOSSES, ACCURACIES)
    result = fit(trainer, 10, callbacks=[EarlyStopping(monitor, patience=patience, min_delta=min_delta)])
    assert result.num_epochs == expected
    assert trainer.stop_training == (expected < 10)


def test_early_stopping_mode_max_on_a_loss_treats_higher_as_better():
    trainer = Scripted(LOSSES, ACCURACIES)
    result = fit(trainer, 10, callbacks=[EarlyStopping("test_loss", patience=2, mode="max")])
    assert result.num_epochs == stop_epoch(LOSSES, 2, lower_is_better=False) == 3


@pytest.mark.parametrize("monitor, patience, best_epoch", [("test_loss", 3, 5), ("test_acc", 4, 6)])
def test_early_stopping_restores_the_best_weights(monitor, patience, best_epoch):
    trainer = Scripted(LOSSES, ACCURACIES)
    result = fit(trainer, 10, callbacks=[EarlyStopping(monitor, patience=patience, restore_best=True)])
    assert result.num_epochs == best_epoch + patience
    assert_states_equal(trainer.model.state_dict(), trainer.states[best_epoch - 1])


def test_early_stopping_without_restore_best_ends_with_the_last_weights():
    trainer = Scripted(LOSSES, ACCURACIES)
    fit(trainer, 10, callbacks=[EarlyStopping("test_loss", patience=2)])
    assert_states_equal(trainer.model.state_dict(), trainer.states[-1])


@pytest.mark.parametrize("monitor, best_epoch", [("test_loss", 5), ("test_acc", 6)])
def test_model_checkpoint_holds_the_best_epoch(tmp_path, monitor, best_epoch):
    path = tmp_path / "best.ckpt"
    trainer = Scripted(LOSSES, ACCURACIES)
    fit(trainer, 8, callbacks=[ModelCheckpoint(path, monitor=monitor)])
    checkpoint = load_checkpoint(path)
    assert checkpoint["epoch"] == 8
    assert (checkpoint["best_epoch"], checkpoint["best_monitor"]) == (best_epoch, monitor)
    assert checkpoint["best_accuracy"] == ACCURACIES[best_epoch - 1]
    assert_states_equal(checkpoint["best_model"], trainer.states[best_epoch - 1])
    assert_states_equal(checkpoint["model"], trainer.states[-1])
    assert_states_equal(trainer.model.state_dict(), trainer.states[-1])  # restore_best=False


def test_model_checkpoint_save_best_only_false_holds_the_last_epoch_and_restore_best_loads_it(tmp_path):
    path = tmp_path / "last.ckpt"
    trainer = Scripted(LOSSES, ACCURACIES)
    fit(trainer, 6, callbacks=[ModelCheckpoint(path, save_best_only=False, restore_best=True)])
    checkpoint = load_checkpoint(path)
    assert checkpoint["best_epoch"] == 6
    assert_states_equal(checkpoint["best_model"], trainer.states[5])


def test_model_checkpoint_saves_what_other_callbacks_changed_in_the_epoch(tmp_path):
    """Listed first, a ModelCheckpoint still runs after the callback that lowers the
    learning rate, so the file holds the lowered one."""
    path = tmp_path / "run.ckpt"
    trainer = Scripted(LOSSES, ACCURACIES)

    def halve(trainer, epoch, metrics):
        trainer.optimizer.learn_rate /= 2

    fit(trainer, 2, callbacks=[ModelCheckpoint(path), Callback(on_epoch_end=halve)])
    assert load_checkpoint(path)["optimizer"]["hyperparameters"]["learn_rate"] == 0.025


def test_fit_start_and_end_hooks_and_returning_true_stops():
    calls = []
    trainer = Scripted(LOSSES, ACCURACIES)
    callback = Callback(
        on_fit_start=lambda trainer: calls.append(("start", trainer.history.num_epochs)),
        on_epoch_end=lambda trainer, epoch, metrics: epoch == 3,
        on_fit_end=lambda trainer, result: calls.append(("end", result.num_epochs)),
    )
    result = fit(trainer, 10, callbacks=callback)
    assert result.num_epochs == 3
    assert calls == [("start", 0), ("end", 3)]


def test_the_shorthands_equal_their_callbacks(tmp_path):
    shorthand = Scripted(LOSSES, ACCURACIES)
    first = fit(shorthand, 10, early_stopping=2, checkpoints=tmp_path / "a.ckpt")
    explicit = Scripted(LOSSES, ACCURACIES)
    second = fit(
        explicit,
        10,
        callbacks=[EarlyStopping("test_loss", patience=2), ModelCheckpoint(tmp_path / "b.ckpt", monitor=None, restore_best=True)],
    )
    assert first == second and first.num_epochs == 4
    assert_states_equal(shorthand.model.state_dict(), explicit.model.state_dict())
    a, b = load_checkpoint(tmp_path / "a.ckpt"), load_checkpoint(tmp_path / "b.ckpt")
    assert (a["best_epoch"], a["best_monitor"]) == (b["best_epoch"], b["best_monitor"]) == (2, "test_acc")


def uninterrupted_and_resumed(tmp_path, make_callbacks, epochs, stop_at):
    """(trainer of an uninterrupted run, result; trainer of a run stopped after
    ``stop_at`` epochs and resumed, result)."""
    whole = Scripted(LOSSES, ACCURACIES)
    whole_result = fit(whole, epochs, callbacks=make_callbacks(tmp_path / "whole.ckpt"))
    path = tmp_path / "part.ckpt"
    fit(Scripted(LOSSES, ACCURACIES), stop_at, callbacks=make_callbacks(path))
    resumed = Scripted(LOSSES, ACCURACIES)
    resumed.script = resumed.script[stop_at:]
    torch.manual_seed(123)  # the checkpoint's RNG state replaces this
    resumed_result = resumed.fit(batches(), batches(), epochs, callbacks=make_callbacks(path), resume=path, verbose=False)
    return whole, whole_result, resumed, resumed_result


def test_a_resumed_run_with_callbacks_equals_an_uninterrupted_one(tmp_path):
    def make_callbacks(path):
        return [EarlyStopping("test_acc", patience=3, restore_best=True), ModelCheckpoint(path)]

    whole, whole_result, resumed, resumed_result = uninterrupted_and_resumed(tmp_path, make_callbacks, 10, stop_at=4)
    assert whole_result.num_epochs == 5  # the best test_acc in epoch 2, then 3 without a higher one
    assert resumed_result == whole_result
    assert_states_equal(resumed.model.state_dict(), whole.model.state_dict())
    assert_states_equal(whole.model.state_dict(), whole.states[1])
    saved = load_checkpoint(tmp_path / "part.ckpt")["callbacks"]["EarlyStopping"]
    assert saved["monitor"] == "test_acc" and saved["best_epoch"] == 2
    assert_states_equal(saved["best_weights"], whole.states[1])


def test_a_checkpoint_out_of_patience_resumes_to_no_more_epochs(tmp_path):
    path = tmp_path / "run.ckpt"
    fit(Scripted(LOSSES, ACCURACIES), 10, early_stopping=2, checkpoints=path)
    again = Scripted(LOSSES, ACCURACIES)
    result = again.fit(batches(), batches(), 10, early_stopping=2, checkpoints=path, resume=path, verbose=False)
    assert result.num_epochs == 4 and again.states == []


def test_resume_refuses_weights_kept_by_another_rule(tmp_path):
    path = tmp_path / "run.ckpt"
    fit(Scripted(LOSSES, ACCURACIES), 4, callbacks=[ModelCheckpoint(path, monitor="test_loss")])
    trainer = Scripted(LOSSES, ACCURACIES)
    with pytest.raises(CheckpointError, match="chosen by 'test_loss'"):
        trainer.fit(batches(), batches(), 6, callbacks=[ModelCheckpoint(path, monitor="test_acc")], resume=path, verbose=False)
    with pytest.raises(CheckpointError, match="epoch 2.*epoch 1"):
        trainer.fit(batches(), batches(), 6, callbacks=[ModelCheckpoint(path, mode="max")], resume=path, verbose=False)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: EarlyStopping(patience=0), "patience"),
        (lambda: EarlyStopping(patience=True), "patience"),
        (lambda: EarlyStopping(mode="up"), "mode"),
        (lambda: EarlyStopping(min_delta=-0.1), "min_delta"),
        (lambda: EarlyStopping(min_delta=float("nan")), "min_delta"),
        (lambda: EarlyStopping(monitor=None), "monitor"),
        (lambda: ModelCheckpoint("x.ckpt", monitor=3), "monitor"),
    ],
)
def test_bad_settings_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_monitor_that_is_not_recorded_is_an_error():
    with pytest.raises(ValueError, match="monitor 'test_mae' is not a recorded metric"):
        fit(Scripted(LOSSES, ACCURACIES), 2, callbacks=[EarlyStopping("test_mae")])
