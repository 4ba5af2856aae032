"""Tests for nnlab.training: fit, progress output, divergence, early stopping,
max_batches, checkpoints (best, atomic, exact resume), task metrics (classification,
binary, regression, multi-task), per-step records, grad_norm, restore_best, callbacks,
TorchTrainer, overfit."""

import copy
import math
import os
import pickle
import random
import re
import shutil
import struct

import pytest
import torch

import nnlab.layers as layers
from nnlab.data import Batches, load_digits
from nnlab.layers import (
    MLP,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    Heads,
    L1Loss,
    Linear,
    MSELoss,
    MultiTaskLoss,
    ReLU,
    Sequential,
)
from nnlab.optimizers import Adam, MomentumSGD, VanillaSGD
from nnlab.training import (
    BatchResult,
    Callback,
    CheckpointError,
    EpochResult,
    FitResult,
    LayerTrainer,
    OverfitResult,
    TorchTrainer,
    Trainer,
    TrainingDiverged,
    grad_norm,
    load_checkpoint,
    metric_values,
    overfit,
    save_checkpoint,
    task_of,
)


@pytest.fixture(scope="module")
def digits():
    """Flattened digits: 640 training and 256 test samples (fixed order)."""
    images, labels = load_digits()
    x = images.reshape(len(images), -1)
    return x[:640], labels[:640], x[640:896], labels[640:896]


def make_layer_trainer(seed, learn_rate=0.1, dropout=0.0, optimizer=MomentumSGD):
    torch.manual_seed(seed)
    model = MLP(64, 10, hidden_features=(32,), dropout=dropout)
    return LayerTrainer(model, CrossEntropyLoss(), optimizer(model.params(), learn_rate=learn_rate, reg=0.0))


def assert_states_equal(actual, expected):
    assert actual.keys() == expected.keys()
    for key in expected:
        if isinstance(expected[key], torch.Tensor):
            assert torch.equal(actual[key], expected[key]), f"state '{key}' differs"
        else:
            assert actual[key] == expected[key], f"state '{key}' differs"


# fit ---------------------------------------------------------------------------------


def test_fit_improves_accuracy_and_returns_one_value_per_epoch(digits):
    x, y, x_test, y_test = digits
    trainer = make_layer_trainer(seed=0)
    dl_train = Batches(x, y, batch_size=32, shuffle=True)
    dl_test = Batches(x_test, y_test, batch_size=64)
    before = trainer.test_epoch(dl_test, verbose=False)

    result = trainer.fit(dl_train, dl_test, num_epochs=3, verbose=False)

    assert isinstance(result, FitResult)
    assert result.num_epochs == 3
    for values in (result.train_loss, result.train_acc, result.test_loss, result.test_acc):
        assert len(values) == 3
        assert all(isinstance(value, float) for value in values)
    assert before.accuracy < 30
    assert result.test_acc[-1] > 70
    assert result.train_loss[-1] < result.train_loss[0]
    assert len(before.losses) == len(dl_test)


def test_verbose_false_prints_nothing(digits, capfd):
    x, y, x_test, y_test = digits
    trainer = make_layer_trainer(seed=0)
    trainer.fit(Batches(x, y, 64), Batches(x_test, y_test, 64), num_epochs=2, early_stopping=1, verbose=False)
    out, err = capfd.readouterr()
    assert out == ""
    assert err == ""


def test_verbose_1_off_a_terminal_prints_one_plain_line_per_epoch_and_the_best(digits, capfd):
    x, y, x_test, y_test = digits
    trainer = make_layer_trainer(seed=0)
    fit = trainer.fit(Batches(x, y, 64), Batches(x_test, y_test, 64), num_epochs=3, print_every=2)
    out, err = capfd.readouterr()
    assert out == "" and "\r" not in err
    lines = err.splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 2/3", "epoch 3/3", lines[2].split(":")[0]]
    assert lines[2].startswith("best epoch ")
    assert lines[0].startswith(f"epoch 2/3: train loss {fit.train_loss[1]:.4f}, acc {fit.train_acc[1]:.2f}% | test loss {fit.test_loss[1]:.4f}")
    best = fit.test_acc.index(max(fit.test_acc)) + 1
    assert lines[2] == (
        f"best epoch {best}/3 by test acc: train loss {fit.train_loss[best - 1]:.4f}, acc {fit.train_acc[best - 1]:.2f}% "
        f"| test loss {fit.test_loss[best - 1]:.4f}, acc {fit.test_acc[best - 1]:.2f}%"
    )


def test_verbose_2_prints_a_line_per_epoch_even_on_a_terminal(digits, capfd, monkeypatch):
    from nnlab.training import progress

    monkeypatch.setattr(progress, "shows_bars", lambda: True)
    x, y, x_test, y_test = digits
    make_layer_trainer(seed=0).fit(Batches(x, y, 64), Batches(x_test, y_test, 64), num_epochs=2, verbose=2)
    _, err = capfd.readouterr()
    assert "\r" not in err and len(err.splitlines()) == 3


def test_verbose_1_on_a_terminal_draws_one_bar_per_epoch_that_ends_as_its_line(digits, capfd, monkeypatch):
    from nnlab.training import progress

    monkeypatch.setattr(progress, "shows_bars", lambda: True)
    x, y, x_test, y_test = digits
    make_layer_trainer(seed=0).fit(Batches(x, y, 64), Batches(x_test, y_test, 64), num_epochs=2)
    _, err = capfd.readouterr()
    batches = len(Batches(x, y, 64)) + len(Batches(x_test, y_test, 64))
    assert "\repoch 1/2:   0%" in err and "\repoch 2/2:   0%" in err and f"0/{batches}" in err
    # What stays when the bars are gone: one line per epoch and the best.
    kept = [line.rsplit("\r", 1)[-1] for line in err.split("\n") if line.rsplit("\r", 1)[-1].strip()]
    assert [line.split(":")[0] for line in kept[:2]] == ["epoch 1/2", "epoch 2/2"]
    assert len(kept) == 3 and kept[2].startswith("best epoch ")


@pytest.mark.parametrize("verbose", [3, -1, "yes", 1.5])
def test_verbose_must_be_a_level(digits, verbose):
    x, y, x_test, y_test = digits
    with pytest.raises(ValueError, match="verbose must be 0"):
        make_layer_trainer(seed=0).fit(Batches(x, y, 64), Batches(x_test, y_test, 64), num_epochs=1, verbose=verbose)


# divergence --------------------------------------------------------------------------


class NaNOnCall(CrossEntropyLoss):
    """Cross-entropy that returns NaN on its ``bad_call``-th forward."""

    def __init__(self, bad_call):
        super().__init__()
        self.calls = 0
        self.bad_call = bad_call

    def loss(self, x, y):
        self.calls += 1
        value = super().loss(x, y)
        return value * float("nan") if self.calls == self.bad_call else value


def test_nan_loss_stops_at_once_naming_epoch_and_batch(digits):
    x, y, x_test, y_test = digits
    torch.manual_seed(0)
    model = MLP(64, 10, hidden_features=(16,))
    # 4 train + 2 test batches per epoch: call 9 is epoch 2, training batch 3.
    trainer = LayerTrainer(model, NaNOnCall(bad_call=9), VanillaSGD(model.params(), learn_rate=0.1, reg=0.0))
    dl_train = Batches(x[:256], y[:256], 64)
    dl_test = Batches(x_test[:128], y_test[:128], 64)
    before_bad_batch = {}

    original = trainer.train_batch

    def recording_train_batch(batch):
        before_bad_batch.update(model.state_dict())
        return original(batch)

    trainer.train_batch = recording_train_batch

    with pytest.raises(TrainingDiverged, match=r"epoch 2, batch 3.*lower learning rate") as info:
        trainer.fit(dl_train, dl_test, num_epochs=5, verbose=False)
    assert (info.value.epoch, info.value.batch, info.value.phase) == (2, 3, "train")
    assert isinstance(info.value, RuntimeError)
    assert_states_equal(model.state_dict(), before_bad_batch)  # no step was taken on the NaN


@pytest.mark.parametrize("framework", ["nnlab", "torch"])
def test_huge_learning_rate_diverges_with_an_error(digits, framework):
    x, y, x_test, y_test = digits
    torch.manual_seed(0)
    if framework == "nnlab":
        model = MLP(64, 10, hidden_features=(32,))
        trainer = LayerTrainer(model, CrossEntropyLoss(), VanillaSGD(model.params(), learn_rate=1e12, reg=0.0))
    else:
        model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
        trainer = TorchTrainer(model, torch.nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=1e12))
    with pytest.raises(TrainingDiverged, match=r"epoch \d+, batch \d+.*lower learning rate"):
        trainer.fit(Batches(x, y, 32), Batches(x_test, y_test, 64), num_epochs=20, verbose=False)


# early stopping and max_batches --------------------------------------------------------


@pytest.mark.parametrize("patience", [1, 3])
def test_early_stopping_after_k_epochs_without_lower_test_loss(digits, patience):
    x, y, x_test, y_test = digits
    trainer = make_layer_trainer(seed=0, learn_rate=0.0)  # the test loss never changes
    result = trainer.fit(
        Batches(x[:128], y[:128], 64), Batches(x_test, y_test, 128), 10, early_stopping=patience, verbose=False
    )
    assert result.num_epochs == patience + 1
    assert len(result.test_loss) == patience + 1
    assert len(set(result.test_loss)) == 1


class CountingTrainer(Trainer):
    """Counts calls; 'correct' means label 0, so the expected accuracy is easy to compute."""

    def __init__(self):
        super().__init__(torch.nn.Identity())
        self.calls = {"train": 0, "test": 0}

    def train_batch(self, batch):
        self.calls["train"] += 1
        return BatchResult(1.0, int((batch[1] == 0).sum()))

    def test_batch(self, batch):
        self.calls["test"] += 1
        return BatchResult(2.0, int((batch[1] == 0).sum()))


def test_max_batches_limits_batches_and_accuracy_counts_samples_seen():
    labels = torch.tensor([0, 0, 0, 1, 0, 1, 1, 1, 0, 0])
    dl = Batches(torch.zeros(10, 2), labels, batch_size=4)  # batches of 4, 4, 2
    trainer = CountingTrainer()

    result = trainer.fit(dl, dl, num_epochs=2, max_batches=2, verbose=False)

    assert trainer.calls == {"train": 4, "test": 4}
    assert result.train_acc == [50.0, 50.0]  # 4 of the 8 samples seen are label 0
    assert result.test_loss == [2.0, 2.0]
    full = trainer.test_epoch(dl, verbose=False)
    assert full == EpochResult([2.0, 2.0, 2.0], 60.0)
    assert trainer.test_epoch(dl, max_batches=100, verbose=False) == full


@pytest.mark.parametrize(
    "kw", [dict(num_epochs=-1), dict(num_epochs=2, early_stopping=0), dict(num_epochs=2, max_batches=0)]
)
def test_fit_rejects_bad_counts(kw):
    dl = Batches(torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64), 2)
    with pytest.raises(ValueError):
        CountingTrainer().fit(dl, dl, verbose=False, **kw)


# checkpoints -------------------------------------------------------------------------


class ScriptedAccuracy(LayerTrainer):
    """Trains for real but reports scripted test accuracies, recording the weights
    after each epoch, so the best epoch is known in advance."""

    def __init__(self, accuracies, *args):
        super().__init__(*args)
        self.accuracies = list(accuracies)
        self.states = []

    def test_epoch(self, dl, **kw):
        self.states.append(self._model_state())
        return EpochResult([float(len(self.states))], self.accuracies[len(self.states) - 1])


def test_checkpoint_keeps_the_best_model_and_fit_ends_with_it(digits, tmp_path):
    x, y, x_test, y_test = digits
    torch.manual_seed(0)
    model = MLP(64, 10, hidden_features=(16,))
    trainer = ScriptedAccuracy(
        [50.0, 80.0, 60.0, 80.0], model, CrossEntropyLoss(), VanillaSGD(model.params(), learn_rate=0.1, reg=0.0)
    )
    path = tmp_path / "model.ckpt"

    result = trainer.fit(Batches(x, y, 64), Batches(x_test, y_test, 64), 4, checkpoints=path, verbose=False)

    checkpoint = load_checkpoint(path)
    assert checkpoint["epoch"] == 4
    assert checkpoint["best_epoch"] == 2  # 80 again in epoch 4 is no improvement
    assert checkpoint["best_accuracy"] == 80.0
    assert_states_equal(checkpoint["best_model"], trainer.states[1])
    assert_states_equal(checkpoint["model"], trainer.states[3])  # the last epoch, for resuming
    assert checkpoint["fit_result"] == result._asdict()
    assert_states_equal(model.state_dict(), trainer.states[1])  # fit ends with the best weights


def test_checkpoint_saves_only_after_improvement_updates_best(digits, tmp_path):
    x, y, x_test, y_test = digits
    torch.manual_seed(0)
    model = MLP(64, 10)
    trainer = ScriptedAccuracy([30.0, 20.0], model, CrossEntropyLoss(), VanillaSGD(model.params(), learn_rate=0.1))
    path = tmp_path / "model.ckpt"
    trainer.fit(Batches(x, y, 128), Batches(x_test, y_test, 128), 1, checkpoints=path, verbose=False)
    after_first = load_checkpoint(path)
    trainer.fit(Batches(x, y, 128), Batches(x_test, y_test, 128), 2, checkpoints=path, resume=path, verbose=False)
    after_second = load_checkpoint(path)
    assert after_second["epoch"] == 2
    assert after_second["best_epoch"] == 1
    assert_states_equal(after_second["best_model"], after_first["best_model"])


def partial_save(obj, file):
    file.write(b"PK\x03\x04 half a checkpoint")
    raise OSError("disk full")


def failing_replace(source, target):
    raise OSError("power cut")


@pytest.mark.parametrize("failure", ["torch.save", "os.replace"])
def test_a_failed_save_leaves_the_previous_checkpoint_intact(digits, tmp_path, monkeypatch, failure):
    x, y, x_test, y_test = digits
    trainer = make_layer_trainer(seed=0)
    path = tmp_path / "model.ckpt"
    dl_train = Batches(x, y, 64)
    dl_test = Batches(x_test, y_test, 128)
    trainer.fit(dl_train, dl_test, 1, checkpoints=path, verbose=False)
    saved_bytes = path.read_bytes()

    if failure == "torch.save":
        monkeypatch.setattr(torch, "save", partial_save)
    else:
        monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        trainer.fit(dl_train, dl_test, 2, checkpoints=path, resume=path, verbose=False)
    monkeypatch.undo()

    assert path.read_bytes() == saved_bytes
    assert sorted(os.listdir(tmp_path)) == ["model.ckpt"]  # no temporary file left behind
    assert load_checkpoint(path)["epoch"] == 1


def test_save_checkpoint_replaces_and_load_rejects_other_files(tmp_path):
    path = tmp_path / "c.pt"
    empty = make_layer_trainer(seed=0).checkpoint(FitResult(0, [], [], [], []), None)
    save_checkpoint(path, dict(empty, config={"run": 1}))
    save_checkpoint(path, dict(empty, config={"run": 2}))
    assert load_checkpoint(path)["config"] == {"run": 2}
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt.*not an nnlab checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("loader", ["Batches", "DataLoader"])
def test_stop_and_resume_equals_an_uninterrupted_run(digits, tmp_path, loader):
    x, y, x_test, y_test = digits
    if loader == "Batches":
        dl_train = Batches(x[:320], y[:320], 32, shuffle=True)
    else:
        dataset = torch.utils.data.TensorDataset(x[:320], y[:320])
        dl_train = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True)
    dl_test = Batches(x_test, y_test, 128)

    def run(num_epochs, path, resume=None, seed=0):
        trainer = make_layer_trainer(seed=seed, learn_rate=0.01, dropout=0.3, optimizer=Adam)
        result = trainer.fit(dl_train, dl_test, num_epochs, checkpoints=path, resume=resume, verbose=False)
        return trainer, result

    whole, whole_result = run(5, tmp_path / "whole.ckpt")
    whole_rng = torch.get_rng_state()
    run(2, tmp_path / "part.ckpt")
    resumed, resumed_result = run(5, tmp_path / "part.ckpt", resume=tmp_path / "part.ckpt", seed=123)

    assert resumed_result == whole_result
    assert_states_equal(resumed.model.state_dict(), whole.model.state_dict())  # the best weights
    a = load_checkpoint(tmp_path / "part.ckpt")
    b = load_checkpoint(tmp_path / "whole.ckpt")
    assert_states_equal(a["model"], b["model"])  # the last epoch's weights
    assert_states_equal(a["best_model"], b["best_model"])
    for state_a, state_b in zip(a["optimizer"]["state"], b["optimizer"]["state"]):
        assert_states_equal(state_a, state_b)
    assert torch.equal(torch.get_rng_state(), whole_rng)


def test_trainer_load_checkpoint_restores_the_last_epoch(digits, tmp_path):
    x, y, x_test, y_test = digits
    path = tmp_path / "model.ckpt"
    first = make_layer_trainer(seed=0)
    first.fit(Batches(x, y, 64), Batches(x_test, y_test, 128), 2, checkpoints=path, verbose=False)
    second = make_layer_trainer(seed=1)
    checkpoint = second.load_checkpoint(path)
    assert checkpoint["epoch"] == 2
    assert_states_equal(second.model.state_dict(), checkpoint["model"])


@pytest.fixture(scope="module")
def saved(digits, tmp_path_factory):
    """Checkpoint files of one short epoch each, by optimizer: {"momentum": path, "adam": path}."""
    x, y, x_test, y_test = digits
    folder = tmp_path_factory.mktemp("saved")
    paths = {}
    for name, optimizer in [("momentum", MomentumSGD), ("adam", Adam)]:
        paths[name] = folder / f"{name}.ckpt"
        trainer = make_layer_trainer(seed=0, optimizer=optimizer)
        trainer.fit(Batches(x[:128], y[:128], 32), Batches(x_test, y_test, 128), 1, checkpoints=paths[name], verbose=False)
    return paths


def rewritten(source, target, change):
    """``source``'s checkpoint dict, changed by ``change`` and saved (a valid file) at ``target``."""
    checkpoint = torch.load(source, weights_only=True)
    change(checkpoint)
    save_checkpoint(target, checkpoint)
    return target


def first_tensor_in_state(checkpoint):
    return next(key for key, value in checkpoint["optimizer"]["state"][0].items() if isinstance(value, torch.Tensor))


def swap_in_adam_state(checkpoint, source):
    checkpoint["optimizer"] = torch.load(source, weights_only=True)["optimizer"]


DAMAGES = {
    "model key missing": lambda c: c["model"].pop(next(iter(c["model"]))),
    "model shape": lambda c: c["model"].update({next(iter(c["model"])): torch.zeros(3, 3)}),
    "optimizer of another kind": None,  # an Adam state into MomentumSGD (see the test)
    "optimizer state shape": lambda c: c["optimizer"]["state"][0].update({first_tensor_in_state(c): torch.zeros(1)}),
    "optimizer hyperparameter": lambda c: c["optimizer"]["hyperparameters"].update(learn_rate=float("nan")),
    "optimizer missing": lambda c: c.pop("optimizer"),
    "optimizer state none": lambda c: c.update(optimizer=None),
    "rng missing": lambda c: c.pop("rng"),
    "rng torch tensor": lambda c: c["rng"].update(torch=torch.zeros(5, dtype=torch.uint8)),
    "rng torch dtype": lambda c: c["rng"].update(torch=c["rng"]["torch"].float()),
    "rng python": lambda c: c["rng"].update(python=(3, (1, 2, 3), None)),
    "fit_result missing": lambda c: c.pop("fit_result"),
    "fit_result lengths": lambda c: c["fit_result"].update(test_acc=[]),
    "fit_result epochs": lambda c: c.update(epoch=7),
    "best_model does not fit": lambda c: c.update(best_model={"weight": torch.zeros(2)}),
}


def trainer_state(trainer):
    """Copies of everything loading a checkpoint could change: model, optimizer, RNGs."""
    return {
        "model": {key: value.clone() for key, value in trainer.model.state_dict().items()},
        "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
        "torch rng": torch.get_rng_state(),
        "python rng": random.getstate(),
    }


def assert_trainer_state_equal(actual, expected):
    assert_states_equal(actual["model"], expected["model"])
    assert actual["optimizer"]["hyperparameters"] == expected["optimizer"]["hyperparameters"]
    for state_a, state_b in zip(actual["optimizer"]["state"], expected["optimizer"]["state"], strict=True):
        assert_states_equal(state_a, state_b)
    assert torch.equal(actual["torch rng"], expected["torch rng"])
    assert actual["python rng"] == expected["python rng"]


def a_trained_trainer(digits):
    """A MomentumSGD trainer one step into its own run, with fresh RNG states."""
    x, y, _, _ = digits
    trainer = make_layer_trainer(seed=5)
    trainer.train_batch((x[:32], y[:32]))
    torch.manual_seed(8)
    random.seed(7)
    return trainer


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_checkpoint_that_does_not_fit_changes_nothing(digits, saved, tmp_path, damage):
    path = tmp_path / "damaged.ckpt"
    if damage == "optimizer of another kind":
        rewritten(saved["momentum"], path, lambda c: swap_in_adam_state(c, saved["adam"]))
    else:
        rewritten(saved["momentum"], path, DAMAGES[damage])
    trainer = a_trained_trainer(digits)
    before = trainer_state(trainer)

    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        trainer.load_checkpoint(path)

    assert_trainer_state_equal(trainer_state(trainer), before)


def test_fit_resuming_from_a_checkpoint_that_does_not_fit_changes_nothing(digits, saved, tmp_path):
    x, y, x_test, y_test = digits
    path = rewritten(saved["momentum"], tmp_path / "damaged.ckpt", lambda c: swap_in_adam_state(c, saved["adam"]))
    trainer = a_trained_trainer(digits)
    before = trainer_state(trainer)
    with pytest.raises(CheckpointError, match="damaged.ckpt"):
        trainer.fit(Batches(x, y, 64), Batches(x_test, y_test, 64), 2, resume=path, verbose=False)
    assert_trainer_state_equal(trainer_state(trainer), before)


def test_a_checkpoint_that_fits_is_loaded_whole(digits, saved):
    trainer = a_trained_trainer(digits)
    checkpoint = trainer.load_checkpoint(saved["momentum"])
    assert_states_equal(trainer.model.state_dict(), checkpoint["model"])
    for state_a, state_b in zip(trainer.optimizer.state_dict()["state"], checkpoint["optimizer"]["state"], strict=True):
        assert_states_equal(state_a, state_b)
    assert torch.equal(torch.get_rng_state(), checkpoint["rng"]["torch"])


def flip_a_bit(path, target, content):
    """Copies ``path`` to ``target`` with one bit flipped inside the first place where the
    bytes ``content`` are stored."""
    raw = bytearray(path.read_bytes())
    where = raw.find(content)
    assert where >= 0, "the content is not stored verbatim in the file"
    raw[where + len(content) // 2] ^= 0x04
    target.write_bytes(bytes(raw))


def test_a_flipped_bit_in_a_stored_weight_is_caught(digits, saved, tmp_path):
    checkpoint = load_checkpoint(saved["momentum"])
    weight = checkpoint["model"][next(iter(checkpoint["model"]))]
    flipped = tmp_path / "flipped.ckpt"
    flip_a_bit(saved["momentum"], flipped, weight.numpy().tobytes())
    assert torch.load(flipped, weights_only=True)["format"] == checkpoint["format"]  # torch.load itself sees nothing
    with pytest.raises(CheckpointError, match=r"flipped\.ckpt.*checksum"):
        load_checkpoint(flipped)
    trainer = a_trained_trainer(digits)
    before = trainer_state(trainer)
    with pytest.raises(CheckpointError, match=r"flipped\.ckpt.*checksum"):
        trainer.load_checkpoint(flipped)
    assert_trainer_state_equal(trainer_state(trainer), before)


def test_a_flipped_bit_in_a_stored_number_is_caught(saved, tmp_path):
    loss = load_checkpoint(saved["momentum"])["fit_result"]["train_loss"][0]
    flipped = tmp_path / "flipped.ckpt"
    flip_a_bit(saved["momentum"], flipped, struct.pack(">d", loss))  # pickle stores floats big-endian
    assert torch.load(flipped, weights_only=True)["fit_result"]["train_loss"][0] != loss
    with pytest.raises(CheckpointError, match=r"flipped\.ckpt.*checksum"):
        load_checkpoint(flipped)


def test_a_checkpoint_without_a_checksum_is_refused(saved, tmp_path):
    checkpoint = torch.load(saved["momentum"], weights_only=True)
    checkpoint.pop("checksum", None)
    torch.save(checkpoint, tmp_path / "unsummed.ckpt")
    with pytest.raises(CheckpointError, match=r"unsummed\.ckpt.*checksum"):
        load_checkpoint(tmp_path / "unsummed.ckpt")


def test_a_save_removes_stale_temporary_files_of_that_checkpoint_only(saved, tmp_path):
    stale = [".model.ckpt.k2j4_x9a.tmp", ".model.ckpt.00000000.tmp"]
    others = [
        ".other.ckpt.k2j4_x9a.tmp",  # another checkpoint's
        ".model.ckpt.k2j4_x9a.tmp.keep",
        "model.ckpt.k2j4_x9a.tmp",
        ".model.ckpt.notes",
        ".model.ckpt.toolongname.tmp",
    ]
    for name in stale + others:
        (tmp_path / name).write_bytes(b"half a checkpoint")
    save_checkpoint(tmp_path / "model.ckpt", load_checkpoint(saved["momentum"]))
    assert sorted(os.listdir(tmp_path)) == sorted(others + ["model.ckpt"])


def test_fit_saves_the_run_configuration_it_is_given(digits, tmp_path):
    x, y, x_test, y_test = digits
    path = tmp_path / "model.ckpt"
    config = {"data": "digits", "seed": 3, "batch_size": 64, "hidden": [32]}
    trainer = make_layer_trainer(seed=0)
    trainer.fit(Batches(x[:128], y[:128], 64), Batches(x_test, y_test, 128), 1, checkpoints=path, config=config, verbose=False)
    assert load_checkpoint(path)["config"] == config


def test_resume_from_a_restored_checkpoint_keeps_a_changed_learning_rate(digits, tmp_path):
    x, y, x_test, y_test = digits
    dl_train = Batches(x[:256], y[:256], 32, shuffle=True)
    dl_test = Batches(x_test, y_test, 128)
    path = tmp_path / "model.ckpt"
    make_layer_trainer(seed=0, learn_rate=1e-3, optimizer=Adam).fit(dl_train, dl_test, 1, checkpoints=path, verbose=False)
    shutil.copy(path, tmp_path / "epoch1.ckpt")

    trainer = make_layer_trainer(seed=1, learn_rate=1e-3, optimizer=Adam)
    checkpoint = trainer.load_checkpoint(path)
    trainer.optimizer.learn_rate = 0.05
    result = trainer.fit(dl_train, dl_test, 2, checkpoints=path, resume=checkpoint, verbose=False)

    reference = make_layer_trainer(seed=2, learn_rate=1e-3, optimizer=Adam)
    reference.load_checkpoint(tmp_path / "epoch1.ckpt")
    reference.optimizer.learn_rate = 0.05
    reference.train_epoch(dl_train, verbose=False)
    final = load_checkpoint(path)
    assert final["optimizer"]["hyperparameters"]["learn_rate"] == 0.05
    assert_states_equal(final["model"], reference.model.state_dict())
    assert result.num_epochs == 2
    assert result.train_loss[0] == checkpoint["fit_result"]["train_loss"][0]


def test_resume_refuses_a_checkpoint_dict_this_trainer_did_not_restore(digits, saved):
    x, y, x_test, y_test = digits
    trainer = make_layer_trainer(seed=0)
    with pytest.raises(ValueError, match="resume"):
        trainer.fit(Batches(x, y, 64), Batches(x_test, y_test, 64), 2, resume=load_checkpoint(saved["momentum"]), verbose=False)


# TorchTrainer ------------------------------------------------------------------------


def torch_twin(mlp):
    """A torch.nn.Sequential with the nnlab MLP's Linear weights copied."""
    modules = []
    for layer in mlp:
        if isinstance(layer, layers.Linear):
            linear = torch.nn.Linear(layer.weight.shape[1], layer.weight.shape[0])
            with torch.no_grad():
                linear.weight.copy_(layer.weight)
                linear.bias.copy_(layer.bias)
            modules.append(linear)
        else:
            modules.append(torch.nn.ReLU())
    return torch.nn.Sequential(*modules)


@pytest.mark.parametrize("optimizer", ["torch.optim", "nnlab"])
def test_torch_trainer_matches_layer_trainer_on_a_twin(digits, optimizer):
    x, y, x_test, y_test = digits
    torch.manual_seed(0)
    mlp = MLP(64, 10, hidden_features=(32,))
    twin = torch_twin(mlp)
    dl_train = Batches(x, y, 32)
    dl_test = Batches(x_test, y_test, 128)

    ours = LayerTrainer(mlp, CrossEntropyLoss(), VanillaSGD(mlp.params(), learn_rate=0.1, reg=0.0))
    if optimizer == "nnlab":
        torch_optimizer = VanillaSGD(twin.parameters(), learn_rate=0.1, reg=0.0)
    else:
        torch_optimizer = torch.optim.SGD(twin.parameters(), lr=0.1)
    theirs = TorchTrainer(twin, torch.nn.CrossEntropyLoss(), torch_optimizer)

    ours_result = ours.fit(dl_train, dl_test, 3, verbose=False)
    theirs_result = theirs.fit(dl_train, dl_test, 3, verbose=False)

    assert theirs_result.test_acc[-1] > 60
    assert abs(ours_result.test_acc[-1] - theirs_result.test_acc[-1]) <= 2.0
    for ours_loss, theirs_loss in zip(ours_result.train_loss, theirs_result.train_loss):
        assert ours_loss == pytest.approx(theirs_loss, rel=1e-3)
    assert not twin.training  # test_epoch leaves eval mode


def test_an_optimizer_built_before_to_updates_the_moved_parameters():
    torch.manual_seed(0)
    model = MLP(4, 2, hidden_features=(3,))
    optimizer = VanillaSGD(model.params(), learn_rate=0.5, reg=0.0)
    before = [param.double().clone() for param, _ in model.params()]
    trainer = LayerTrainer(model.to(dtype=torch.float64), CrossEntropyLoss(), optimizer, device="cpu")
    x = torch.randn(6, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    trainer.train_batch((x, y))
    for (param, _), old in zip(model.params(), before):
        assert param.dtype == torch.float64
        assert not torch.equal(param, old)  # the step reached the model's own tensors
    assert [p for p, _ in optimizer.params] == [p for p, _ in model.params()]


# overfit -----------------------------------------------------------------------------


def twenty_samples():
    images, labels = load_digits()
    return images[:20], labels[:20]


def test_overfit_an_mlp_reaches_100_percent_on_20_samples():
    images, labels = twenty_samples()
    torch.manual_seed(0)
    model = MLP(64, 10, hidden_features=(64,))
    batches = Batches(images.reshape(20, -1), labels, 10)
    result = overfit(model, CrossEntropyLoss(), Adam(model.params(), learn_rate=1e-2), batches, max_epochs=20)
    assert isinstance(result, EpochResult)
    assert result.accuracy == 100.0
    assert result.num_epochs <= 20
    losses, accuracy = result
    assert len(losses) == 2 and accuracy == 100.0


def test_overfit_a_cnn_reaches_100_percent_on_20_samples():
    if not hasattr(layers, "CNN"):
        pytest.skip("nnlab.layers.CNN is not available yet")
    images, labels = twenty_samples()
    torch.manual_seed(0)
    model = layers.CNN((1, 8, 8), 10, channels=[8, 8], pool_every=2, hidden_dims=[32])
    batches = Batches(images, labels, 10)
    result = overfit(model, CrossEntropyLoss(), Adam(model.params(), learn_rate=1e-2), batches, max_epochs=20)
    assert result.accuracy == 100.0
    assert result.num_epochs <= 20


def test_overfit_a_torch_module_and_the_result_round_trips():
    images, labels = twenty_samples()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    batches = Batches(images, labels, 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    result = overfit(model, torch.nn.CrossEntropyLoss(), optimizer, batches, max_epochs=20)
    assert result.accuracy == 100.0
    copy = pickle.loads(pickle.dumps(result))
    assert isinstance(copy, OverfitResult)
    assert copy == result and copy.num_epochs == result.num_epochs
    assert f"num_epochs={result.num_epochs}" in repr(result)


def test_overfit_stops_at_max_epochs():
    images, labels = twenty_samples()
    torch.manual_seed(0)
    model = MLP(64, 10)
    batches = Batches(images.reshape(20, -1), labels, 10)
    result = overfit(model, CrossEntropyLoss(), VanillaSGD(model.params(), learn_rate=0.0), batches, max_epochs=3)
    assert result.num_epochs == 3
    assert result.accuracy < 100.0


# task metrics ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def regression():
    """y = x w + noise, (N, 1) targets: 96 training and 64 test samples."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(160, 3, generator=generator)
    y = x @ torch.tensor([[1.5], [-2.0], [0.5]]) + 0.1 * torch.randn(160, 1, generator=generator)
    return x[:96], y[:96], x[96:], y[96:]


def make_regression_trainer(seed, loss_fn=None, learn_rate=0.01):
    torch.manual_seed(seed)
    model = MLP(3, 1, hidden_features=(16,))
    return LayerTrainer(model, loss_fn or MSELoss(), Adam(model.params(), learn_rate=learn_rate))


def test_regression_records_mae_and_mse_and_never_an_accuracy(regression, capfd):
    x, y, x_test, y_test = regression
    trainer = make_regression_trainer(seed=0)
    result = trainer.fit(Batches(x, y, 32, shuffle=True), Batches(x_test, y_test, 25), 3)

    assert result.train_acc == [] and result.test_acc == []
    assert set(result.metrics) == {f"{p}_{m}" for p in ("train", "test") for m in ("loss", "mae", "mse")}
    assert all(len(values) == 3 for values in result.metrics.values())
    assert result.metrics["train_loss"] is result.train_loss
    _, err = capfd.readouterr()
    assert "mae " in err and "mse " in err and "acc" not in err  # the epoch lines, no accuracy
    # The last epoch's test metrics, computed here from the model's predictions.
    error = trainer.model.eval()(x_test) - y_test
    assert result.metrics["test_mae"][-1] == pytest.approx(error.abs().mean().item(), rel=1e-6)
    assert result.metrics["test_mse"][-1] == pytest.approx(error.pow(2).mean().item(), rel=1e-6)
    assert result.metrics["test_mse"][-1] < result.metrics["test_mse"][0]


def test_task_of_reads_nnlab_and_torch_losses():
    assert task_of(CrossEntropyLoss()) == "classification"
    assert task_of(torch.nn.CrossEntropyLoss()) == "classification"
    assert task_of(MSELoss()) == task_of(L1Loss()) == task_of(torch.nn.L1Loss()) == "regression"
    assert task_of(BCEWithLogitsLoss()) == "binary-logits"
    assert task_of(torch.nn.BCELoss()) == "binary"
    assert task_of(MultiTaskLoss(CrossEntropyLoss(), MSELoss())) == ("classification", "regression")
    assert task_of(NaNOnCall(0)) == "classification"  # a subclass
    model = MLP(2, 1)
    with pytest.raises(ValueError, match="task"):
        LayerTrainer(model, MSELoss(), VanillaSGD(model.params()), task="ranking")
    with pytest.raises(ValueError, match="MultiTaskLoss"):
        LayerTrainer(model, MSELoss(), VanillaSGD(model.params()), task=("regression", "regression"))


def test_torch_trainer_records_regression_metrics(regression):
    x, y, x_test, y_test = regression
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    trainer = TorchTrainer(model, torch.nn.L1Loss(), torch.optim.SGD(model.parameters(), lr=0.05))
    result = trainer.fit(Batches(x, y, 32), Batches(x_test, y_test, 64), 2, verbose=False)
    assert result.test_acc == [] and "test_mae" in result.metrics
    with torch.no_grad():
        mae = (model(x_test) - y_test).abs().mean().item()
    assert result.metrics["test_mae"][-1] == pytest.approx(mae, rel=1e-6)
    assert result.metrics["test_loss"][-1] == pytest.approx(mae, rel=1e-6)  # one batch: L1 is the MAE


def test_regression_metrics_refuse_shapes_that_would_broadcast():
    trainer = make_regression_trainer(seed=0)
    with pytest.raises(ValueError, match=r"\(4, 1\) and \(4,\)"):
        trainer.batch_result(0.0, torch.zeros(4, 1), torch.zeros(4))


def test_binary_accuracy_thresholds_the_logit():
    """A (N, 1) logit column: accuracy is sign agreement (argmax of one column would
    call every prediction right)."""
    torch.manual_seed(0)
    model = Linear(2, 1)
    x = torch.randn(40, 2)
    y = (x[:, :1] > 0).to(torch.float32)
    trainer = LayerTrainer(model, BCEWithLogitsLoss(), VanillaSGD(model.params(), learn_rate=0.0))
    result = trainer.test_epoch(Batches(x, y, 16), verbose=False)
    expected = 100.0 * ((model(x) > 0) == (y > 0.5)).float().mean().item()
    assert result.accuracy == pytest.approx(expected)
    assert result.accuracy < 100.0
    assert result.totals["acc"] == (round(expected * 40 / 100), 40)


def two_task_digits(digits):
    """Digits with two labels per image: (N, 2), the digit and its parity."""
    x, y, x_test, y_test = digits
    return x, torch.stack([y, y % 2], dim=1), x_test, torch.stack([y_test, y_test % 2], dim=1)


def make_two_task_trainer(seed):
    torch.manual_seed(seed)
    model = Sequential(Linear(64, 32), ReLU(), Heads(Linear(32, 10), Linear(32, 2)))
    loss = MultiTaskLoss(CrossEntropyLoss(), CrossEntropyLoss(), weights=(1.0, 0.5))
    return LayerTrainer(model, loss, Adam(model.params(), learn_rate=0.01))


def test_multi_task_records_each_task(digits):
    x, y, x_test, y_test = two_task_digits(digits)
    trainer = make_two_task_trainer(seed=0)
    result = trainer.fit(Batches(x, y, 64), Batches(x_test, y_test, 256), 2, verbose=False)

    phases = ("train", "test")
    expected = {f"{p}_{m}" for p in phases for m in ("loss", "task0_loss", "task0_acc", "task1_loss", "task1_acc")}
    assert set(result.metrics) == expected
    assert result.test_acc == []  # no single accuracy for two tasks
    digit_scores, parity_scores = trainer.model(x_test)  # one test batch: the epoch's values
    assert result.metrics["test_task0_acc"][-1] == pytest.approx(
        100.0 * (digit_scores.argmax(1) == y_test[:, 0]).float().mean().item()
    )
    assert result.metrics["test_task1_acc"][-1] == pytest.approx(
        100.0 * (parity_scores.argmax(1) == y_test[:, 1]).float().mean().item()
    )
    ce = torch.nn.functional.cross_entropy
    task_losses = [ce(digit_scores, y_test[:, 0]).item(), ce(parity_scores, y_test[:, 1]).item()]
    assert result.metrics["test_task0_loss"][-1] == pytest.approx(task_losses[0], rel=1e-6)
    assert result.metrics["test_task1_loss"][-1] == pytest.approx(task_losses[1], rel=1e-6)
    assert result.test_loss[-1] == pytest.approx((task_losses[0] + 0.5 * task_losses[1]) / 1.5, rel=1e-6)
    assert result.metrics["test_task0_acc"][-1] > 60 and result.metrics["test_task1_acc"][-1] > 70


def test_multi_task_with_a_tuple_of_targets_per_batch(digits):
    x, y, x_test, y_test = two_task_digits(digits)
    as_tuples = [(x[i : i + 64], (y[i : i + 64, 0], y[i : i + 64, 1])) for i in range(0, 256, 64)]
    by_tuple = make_two_task_trainer(seed=0).fit(as_tuples, as_tuples[:1], 1, verbose=False)
    as_columns = [(bx, torch.stack(by, dim=1)) for bx, by in as_tuples]
    by_column = make_two_task_trainer(seed=0).fit(as_columns, as_columns[:1], 1, verbose=False)
    assert by_tuple == by_column


# per-step records and grad_norm --------------------------------------------------------


def test_steps_record_every_training_step(digits):
    x, y, x_test, y_test = digits
    trainer = make_layer_trainer(seed=0, learn_rate=0.0)  # the weights stay: one gradient to check
    first_batch = (x[:64], y[:64])
    reference = copy.deepcopy(trainer.model)
    loss_fn = CrossEntropyLoss()
    loss = loss_fn(reference(first_batch[0]), first_batch[1])
    reference.backward(loss_fn.backward())
    expected_norm = math.sqrt(sum((grad.double() ** 2).sum().item() for _, grad in reference.params()))

    result = trainer.fit(Batches(x[:192], y[:192], 64), Batches(x_test, y_test, 128), 2, verbose=False)

    assert len(result.steps["loss"]) == len(result.steps["grad_norm"]) == 6
    assert result.steps["loss"][0] == loss.item()
    assert result.steps["grad_norm"][0] == pytest.approx(expected_norm, rel=1e-12)
    assert result.steps["loss"][:3] == result.steps["loss"][3:]  # lr 0: the same three batches again
    assert sum(result.steps["loss"][3:]) / 3 == result.train_loss[1]


def test_grad_norm_against_torch(digits):
    x, y, _, _ = digits
    torch.manual_seed(0)
    model = MLP(64, 10, hidden_features=(16,))
    twin = torch_twin(model)
    loss_fn = CrossEntropyLoss()
    loss_fn(model(x[:32]), y[:32])
    model.backward(loss_fn.backward())
    torch.nn.functional.cross_entropy(twin(x[:32]), y[:32]).backward()
    expected = torch.nn.utils.clip_grad_norm_(twin.parameters(), max_norm=float("inf")).item()
    optimizer = VanillaSGD(model.params())
    for source in (model, model.params(), optimizer, twin, list(twin.parameters())):
        assert grad_norm(source) == pytest.approx(expected, rel=1e-5)
    pairs = model.params()
    assert grad_norm(pairs + pairs) == grad_norm(pairs)  # a gradient listed twice counts once
    assert grad_norm([]) == 0.0
    with pytest.raises(TypeError, match="grad_norm"):
        grad_norm([1.0, 2.0])


# restore_best and monitor --------------------------------------------------------------------


@pytest.mark.parametrize("monitor", ["test_loss", "test_acc"])
def test_restore_best_loads_the_best_epoch_and_evaluates_to_the_record(digits, monitor):
    x, y, x_test, y_test = digits
    trainer = make_layer_trainer(seed=0, learn_rate=0.05, optimizer=Adam)
    dl_test = Batches(x_test, y_test, 256)
    # 64 samples at a high learning rate: the test loss is lowest in epoch 4, then rises.
    result = trainer.fit(Batches(x[:64], y[:64], 16, shuffle=True), dl_test, 8, restore_best=True, monitor=monitor, verbose=False)

    records = result.metrics[monitor]
    best = min(records) if monitor == "test_loss" else max(records)
    assert records.index(best) + 1 < result.num_epochs  # the best is not the last epoch
    again = trainer.test_epoch(dl_test, verbose=False)
    assert again.metrics[monitor.removeprefix("test_")] == best


def test_restore_best_on_a_regression_metric(regression):
    x, y, x_test, y_test = regression
    trainer = make_regression_trainer(seed=0, learn_rate=0.05)
    dl_test = Batches(x_test, y_test, 64)
    result = trainer.fit(Batches(x, y, 8, shuffle=True), dl_test, 4, restore_best=True, monitor="test_mae", verbose=False)
    assert trainer.test_epoch(dl_test, verbose=False).metrics["mae"] == min(result.metrics["test_mae"])


def test_monitor_must_be_a_recorded_metric(regression):
    x, y, x_test, y_test = regression
    trainer = make_regression_trainer(seed=0)
    with pytest.raises(ValueError, match=r"monitor 'test_acc' is not a recorded metric.*test_mae"):
        trainer.fit(Batches(x, y, 32), Batches(x_test, y_test, 64), 2, restore_best=True, monitor="test_acc", verbose=False)
    with pytest.raises(ValueError, match="monitor"):
        trainer.fit(Batches(x, y, 32), Batches(x_test, y_test, 64), 2, restore_best=True, monitor=None, verbose=False)


def test_without_restore_best_fit_ends_with_the_last_weights(digits):
    x, y, x_test, y_test = digits
    trainer = make_layer_trainer(seed=0, learn_rate=0.05, optimizer=Adam)
    dl_test = Batches(x_test, y_test, 256)
    result = trainer.fit(Batches(x[:64], y[:64], 16, shuffle=True), dl_test, 6, verbose=False)
    assert trainer.test_epoch(dl_test, verbose=False).losses[0] == result.test_loss[-1]


def test_resume_refuses_a_best_model_chosen_by_another_metric(digits, tmp_path):
    x, y, x_test, y_test = digits
    path = tmp_path / "run.ckpt"
    dl, dl_test = Batches(x[:128], y[:128], 64), Batches(x_test, y_test, 128)
    make_layer_trainer(seed=0).fit(dl, dl_test, 1, checkpoints=path, verbose=False)  # best by test accuracy
    assert load_checkpoint(path)["best_monitor"] == "test_acc"
    with pytest.raises(CheckpointError, match="chosen by 'test_acc'"):
        make_layer_trainer(seed=0).fit(dl, dl_test, 2, checkpoints=path, resume=path, restore_best=True, verbose=False)


# callbacks --------------------------------------------------------------------------------


class Recorder(Callback):
    def __init__(self, stop_after=None):
        super().__init__()
        self.batches = []
        self.epochs = []
        self.stop_after = stop_after

    def on_batch_end(self, trainer, phase, batch, result):
        self.batches.append((trainer.epoch, phase, batch, result.loss))

    def on_epoch_end(self, trainer, epoch, metrics):
        self.epochs.append((epoch, dict(metrics)))
        if epoch == self.stop_after:
            trainer.stop_training = True


def test_callbacks_see_every_batch_and_epoch_and_can_stop(digits):
    x, y, x_test, y_test = digits
    recorder = Recorder(stop_after=2)
    seen = []
    printer = Callback(on_epoch_end=lambda trainer, epoch, metrics: seen.append(metrics["test_acc"]))
    trainer = make_layer_trainer(seed=0)
    result = trainer.fit(Batches(x[:192], y[:192], 64), Batches(x_test, y_test, 128), 5, callbacks=[recorder, printer], verbose=False)

    assert result.num_epochs == 2  # stopped after epoch 2, which was finished and recorded
    assert [(epoch, phase, batch) for epoch, phase, batch, _ in recorder.batches] == [
        (epoch, phase, batch) for epoch in (1, 2) for phase, n in (("train", 3), ("test", 2)) for batch in range(1, n + 1)
    ]
    assert [loss for _, phase, _, loss in recorder.batches if phase == "train"] == result.steps["loss"]
    assert [metrics for _, metrics in recorder.epochs] == [
        {name: values[epoch] for name, values in result.metrics.items()} for epoch in range(2)
    ]
    assert seen == result.test_acc
    assert trainer.stop_training  # fit starts each run with it cleared
    trainer.fit(Batches(x[:64], y[:64], 64), Batches(x_test, y_test, 128), 1, verbose=False)
    assert not trainer.stop_training
    with pytest.raises(TypeError, match=r"callbacks\[0\]"):
        trainer.fit(Batches(x[:64], y[:64], 64), Batches(x_test, y_test, 128), 1, callbacks=[print], verbose=False)


def test_resume_after_a_callback_stop_equals_an_uninterrupted_run_with_every_record(regression, tmp_path):
    x, y, x_test, y_test = regression
    dl_train = Batches(x, y, 16, shuffle=True)
    dl_test = Batches(x_test, y_test, 32)

    whole = make_regression_trainer(seed=0)
    whole_result = whole.fit(dl_train, dl_test, 4, checkpoints=tmp_path / "whole.ckpt", verbose=False)
    stopped = make_regression_trainer(seed=0)
    stopped.fit(dl_train, dl_test, 4, checkpoints=tmp_path / "part.ckpt", callbacks=Recorder(stop_after=2), verbose=False)
    resumed = make_regression_trainer(seed=7)
    path = tmp_path / "part.ckpt"
    resumed_result = resumed.fit(dl_train, dl_test, 4, checkpoints=path, resume=path, verbose=False)

    assert len(whole_result.steps["grad_norm"]) == 4 * 6 and len(whole_result.metrics["test_mae"]) == 4
    assert resumed_result == whole_result  # every field: per-epoch metrics and per-step records
    assert load_checkpoint(path)["fit_result"] == whole_result._asdict()
    assert_states_equal(resumed.model.state_dict(), whole.model.state_dict())


# records ----------------------------------------------------------------------------------


def test_epoch_result_keeps_its_two_fields_and_carries_the_rest():
    plain = EpochResult([1.0, 3.0], 50.0)
    assert plain.metrics == {"loss": 2.0, "acc": 50.0} and plain.totals is None and plain.grad_norms == []
    rich = EpochResult([1.0, 3.0], None, metrics={"loss": 2.0, "mae": 0.5}, totals={"loss": (4.0, 2), "mae": (3.0, 6)}, grad_norms=[0.1, 0.2])
    losses, accuracy = rich
    assert (losses, accuracy) == ([1.0, 3.0], None)
    copy_ = pickle.loads(pickle.dumps(rich))
    assert copy_ == rich and copy_.metrics == rich.metrics and copy_.totals == rich.totals and copy_.grad_norms == rich.grad_norms
    assert FitResult(1, [1.0], [50.0], [1.0], [40.0]).metrics is None  # the five classic fields still build one
    # totals add up across processes, then divide: accuracies in percent
    assert metric_values({"loss": (4.0, 2), "acc": (3, 4), "task1_acc": (1, 4), "mae": (3.0, 6)}) == {
        "loss": 2.0, "acc": 75.0, "task1_acc": 25.0, "mae": 0.5
    }


def test_layer_trainer_skips_the_data_gradient_and_restores_the_flag():
    torch.manual_seed(0)
    model = MLP(6, 3, hidden_features=(5,))
    same = copy.deepcopy(model)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    seen = []
    first = model[0]
    original_backward = first.backward

    def recording_backward(dout):
        result = original_backward(dout)
        seen.append((first.needs_input_grad, result))
        return result

    first.backward = recording_backward
    trainer = LayerTrainer(model, CrossEntropyLoss(), VanillaSGD(model.params(), learn_rate=0.1, reg=0.0))
    trainer.train_batch((x, y))
    assert seen == [(False, None)]
    assert all(layer.needs_input_grad for layer in model) and model.needs_input_grad

    # The same step by hand, with the input gradient computed: the same parameters.
    loss_fn = CrossEntropyLoss()
    optimizer = VanillaSGD(same.params(), learn_rate=0.1, reg=0.0)
    loss_fn(same(x), y)
    optimizer.zero_grad()
    assert same.backward(loss_fn.backward()).shape == x.shape
    optimizer.step()
    for (mine, _), (theirs, _) in zip(model.params(), same.params()):
        assert torch.equal(mine, theirs)
