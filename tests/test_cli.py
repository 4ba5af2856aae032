"""The nnlab command, run for real in a subprocess: its main paths and its error paths
(one-line error and usage, exit status 2, never a traceback)."""

import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nnlab import cli, gradcheck_suite
from nnlab.layers import BatchNorm1d, CrossEntropyLoss, Linear, MSELoss, MultiTaskLoss, ReLU, Sequential
from nnlab.tasks import VERIFY_TOLERANCE, build_model, load_dataset, verify_gradients
from nnlab.training import load_checkpoint, save_checkpoint


def nnlab(*args, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "nnlab", *args], capture_output=True, text=True, timeout=timeout, env=_env()
    )


def _env():
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    return env


def assert_usage_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "usage: nnlab" in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in error_lines[0]


def run_in_process(capsys, *args):
    """(exit status, stdout, stderr) of cli.main, argparse's own exits included."""
    try:
        status = cli.main(list(args))
    except SystemExit as exit:
        status = exit.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, status, captured.out, captured.err)


def test_the_console_script_and_module_both_answer_help():
    result = nnlab("--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: nnlab")
    script = shutil.which("nnlab")
    if script is not None:
        assert subprocess.run([script, "--help"], capture_output=True, text=True).returncode == 0


@pytest.mark.parametrize("command", ["gradcheck", "overfit", "train", "binary", "bench"])
def test_every_command_has_help(capsys, command):
    result = run_in_process(capsys, command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: nnlab {command}")


def test_gradcheck_prints_a_row_per_layer_and_passes():
    result = nnlab("gradcheck")
    assert result.returncode == 0, result.stdout + result.stderr
    names = ["Linear", "Conv2d", "MaxPool2d", "AdaptiveAvgPool2d", "BatchNorm2d", "Residual", "Heads", "ResNet"]
    names += ["NLLLoss", "ClippedCrossEntropyLoss", "L1Loss", "BCELoss", "MultiTaskLoss"]
    names += ["Upsample", "Add", "Multiply", "Concat", "Model (graph)"]
    names += ["LSTM (initial state)", "LSTM (2 layers, 2 ways, initial state)", "LSTMCell (state)"]
    names += ["MultiheadAttention (key_padding_mask)", "Embedding", "RNN (initial state)", "GRU (initial state)"]
    names += ["ReLU (ties)", "MaxPool2d (ties)", "Conv2d -> ReLU -> MaxPool2d (ties)", "CNN (ties)"]
    for name in names:
        assert any(line.startswith(name) and line.endswith("ok") for line in result.stdout.splitlines()), name
    assert f"all {len(gradcheck_suite.CASES)} checks passed" in result.stdout


def test_gradcheck_exits_1_when_a_layer_is_wrong(monkeypatch, capsys):
    def wrong_backward(self, dout):
        return dout @ self.weight * 2

    monkeypatch.setattr(Linear, "backward", wrong_backward)
    assert cli.main(["gradcheck"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "FAILED: Linear" in out


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_overfit_reaches_100_percent(model):
    result = nnlab("overfit", "--model", model)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reached 100% training accuracy on 20 samples" in result.stdout


def test_train_writes_curves_and_checkpoint_then_resumes(tmp_path):
    plot = tmp_path / "curves.png"
    checkpoint = tmp_path / "run.pt"
    result = nnlab("train", "--epochs", "2", "--plot", str(plot), "--checkpoint", str(checkpoint))
    assert result.returncode == 0, result.stderr
    assert "gradient check on one batch: worst relative error" in result.stdout
    assert "final test accuracy" in result.stdout
    assert "epoch 2/2: train loss " in result.stderr  # the progress: a line per epoch off a terminal
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert checkpoint.exists()

    resumed = nnlab("train", "--epochs", "3", "--resume", str(checkpoint), "--quiet", "--model", "mlp")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr == ""
    assert "final test accuracy" in resumed.stdout


def test_train_refuses_a_model_whose_gradients_are_wrong(monkeypatch, capsys):
    original = Linear.backward

    def off_by_a_little(self, dout):
        return original(self, dout) * (1 + 1e-6)

    monkeypatch.setattr(Linear, "backward", off_by_a_little)
    assert cli.main(["train", "--epochs", "1", "--quiet"]) == 1
    assert "refusing to train" in capsys.readouterr().out


def test_verify_gradients_is_tiny_for_the_real_model():
    torch.manual_seed(0)
    x, y, _, _, in_size, classes = load_dataset("digits", None, 0)
    model = build_model("cnn", in_size, classes)
    assert verify_gradients(model, CrossEntropyLoss(), x[:8], y[:8]) < VERIFY_TOLERANCE


def test_train_diabetes_reports_mae_and_mse_and_never_an_accuracy(capsys, tmp_path):
    plot = tmp_path / "regression.png"
    result = run_in_process(capsys, "train", "--data", "diabetes", "--epochs", "2", "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    assert "gradient check on one batch" in result.stdout
    final = result.stdout.splitlines()[-1]
    assert final.startswith("final test MAE") and "MSE" in final and "predicting the training mean" in final
    assert "accuracy" not in result.stdout
    assert "mae " in result.stderr and "acc" not in result.stderr  # the epoch lines
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_diabetes_resumes_from_its_checkpoint(capsys, tmp_path):
    checkpoint = tmp_path / "regression.pt"
    first = run_in_process(capsys, "train", "--data", "diabetes", "--epochs", "1", "--checkpoint", str(checkpoint), "--quiet")
    assert first.returncode == 0, first.stderr
    resumed = run_in_process(capsys, "train", "--resume", str(checkpoint), "--epochs", "2", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and resumed.stdout.splitlines()[-1].startswith("final test MAE")
    records = load_checkpoint(checkpoint)["fit_result"]
    assert len(records["metrics"]["test_mae"]) == 2 and records["test_acc"] == []


def test_train_multi_digits_reports_each_task(capsys):
    result = run_in_process(capsys, "train", "--data", "multi-digits", "--epochs", "1", "-v")
    assert result.returncode == 0, result.stderr
    assert "Heads" in result.stdout and "gradient check on one batch" in result.stdout
    final = result.stdout.splitlines()[-1]
    assert final.startswith("final test accuracy: top-left digit") and "bottom-right digit" in final


def test_train_diabetes_is_an_mlp_only(capsys):
    assert_usage_error(run_in_process(capsys, "train", "--data", "diabetes", "--model", "cnn"), "--data diabetes")


@pytest.mark.parametrize("data, loss", [("diabetes", MSELoss), ("multi-digits", MultiTaskLoss)])
def test_train_refuses_a_regression_or_multi_task_model_whose_gradients_are_wrong(monkeypatch, capsys, data, loss):
    original = loss.backward

    def off_by_a_little(self, dout=1.0):
        grads = original(self, dout)
        return tuple(g * (1 + 1e-6) for g in grads) if isinstance(grads, tuple) else grads * (1 + 1e-6)

    monkeypatch.setattr(loss, "backward", off_by_a_little)
    assert cli.main(["train", "--data", data, "--epochs", "1", "--quiet"]) == 1
    assert "refusing to train" in capsys.readouterr().out


def test_verify_gradients_passes_a_bias_whose_true_gradient_is_zero():
    """Linear -> BatchNorm1d: the batch mean removes the Linear bias, whose gradient is
    exactly 0; the self-check must not refuse such a model."""
    torch.manual_seed(1)
    model = Sequential(Linear(64, 16), BatchNorm1d(16), ReLU(), Linear(16, 10))
    x, y, _, _, _, _ = load_dataset("digits", None, 0)
    assert verify_gradients(model, CrossEntropyLoss(), x[:32].flatten(1), y[:32]) <= VERIFY_TOLERANCE


def test_train_needs_a_root_for_other_datasets():
    assert_usage_error(nnlab("train", "--data", "mnist"), "--root")


def test_train_reports_a_missing_folder(capsys, tmp_path):
    result = run_in_process(capsys, "train", "--data", "mnist", "--root", str(tmp_path / "nowhere"))
    assert_usage_error(result, "no such folder")


def test_train_reports_missing_files_in_a_folder(capsys, tmp_path):
    result = run_in_process(capsys, "train", "--data", "fashion-mnist", "--root", str(tmp_path))
    assert_usage_error(result, "not found")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train", "--bogus"], "unrecognized arguments: --bogus"),
        (["train", "--optimizer", "lbfgs"], "invalid choice"),
        (["train", "--epochs", "0"], "--epochs"),
        (["overfit", "--samples", "0"], "--samples"),
        ([], "required"),
    ],
)
def test_wrong_options_give_usage_and_status_2(capsys, args, fragment):
    assert_usage_error(run_in_process(capsys, *args), fragment)


def test_a_corrupt_checkpoint_is_named(capsys, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert_usage_error(run_in_process(capsys, "train", "--resume", str(bad), "--quiet"), str(bad))


def test_divergence_stops_with_status_1_and_advice(capsys):
    result = run_in_process(capsys, "train", "--optimizer", "sgd", "--lr", "1e6", "--no-verify", "--quiet", "--epochs", "2")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "lower learning rate" in result.stderr


def test_bench_prints_ratios():
    result = nnlab("bench", "--tiny", "--repeats", "1", "--warmup", "0")
    assert result.returncode == 0, result.stderr
    assert "ratio" in result.stdout and "geometric mean" in result.stdout


# Runs, checkpoints and resuming ---------------------------------------------------------

FAST = ("--batch-size", "256", "--no-verify", "--quiet")


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """A checkpoint of `nnlab train --epochs 2` (mlp, adam, seed 0) and its stdout."""
    path = tmp_path_factory.mktemp("run") / "two.pt"
    status = cli.main(["train", "--epochs", "2", *FAST, "--checkpoint", str(path)])
    assert status == 0
    return path


def copied(source, folder, name="run.pt"):
    shutil.copy(source, folder / name)
    return folder / name


def test_train_records_the_run_configuration(two_epochs):
    config = load_checkpoint(two_epochs)["config"]
    expected = {"data": "digits", "model": "mlp", "optimizer": "adam", "batch_size": 256, "seed": 0, "epochs": 2}
    assert {key: config[key] for key in expected} == expected
    assert len(config["data_fingerprint"]) == 64  # a SHA-256 of the split data


def test_resume_takes_the_run_configuration_from_the_checkpoint(capsys, tmp_path):
    path = tmp_path / "cnn.pt"
    first = run_in_process(
        capsys, "train", "--model", "cnn", "--optimizer", "sgd", "--seed", "3", "--epochs", "1", *FAST, "--checkpoint", str(path)
    )
    assert first.returncode == 0, first.stderr
    resumed = run_in_process(capsys, "train", "--resume", str(path), "--epochs", "2", "--no-verify", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    checkpoint = load_checkpoint(path)  # a resumed run goes on saving into its checkpoint
    assert checkpoint["epoch"] == 2
    config = checkpoint["config"]
    assert (config["model"], config["optimizer"], config["seed"], config["batch_size"]) == ("cnn", "sgd", 3, 256)


@pytest.mark.parametrize(
    "flag, value",
    [("--seed", "5"), ("--model", "cnn"), ("--optimizer", "sgd"), ("--batch-size", "64"), ("--data", "mnist")],
)
def test_resume_refuses_a_flag_that_changes_the_run(capsys, tmp_path, two_epochs, flag, value):
    path = copied(two_epochs, tmp_path)
    extra = ["--root", str(tmp_path)] if flag == "--data" else []
    result = run_in_process(capsys, "train", "--resume", str(path), flag, value, *extra, "--quiet")
    assert_usage_error(result, flag, value)
    assert path.read_bytes() == two_epochs.read_bytes()


def test_resume_accepts_flags_that_repeat_the_run_and_can_save_elsewhere(capsys, tmp_path, two_epochs):
    path = copied(two_epochs, tmp_path)
    branch = tmp_path / "branch.pt"
    args = ["--model", "mlp", "--optimizer", "adam", "--seed", "0", "--batch-size", "256", "--data", "digits"]
    result = run_in_process(
        capsys, "train", "--resume", str(path), *args, "--epochs", "3", "--checkpoint", str(branch), "--no-verify", "--quiet"
    )
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(branch)["epoch"] == 3
    assert path.read_bytes() == two_epochs.read_bytes()


def test_resume_with_a_new_learning_rate_applies_it_and_says_so(capsys, tmp_path, two_epochs):
    changed = copied(two_epochs, tmp_path, "changed.pt")
    kept = copied(two_epochs, tmp_path, "kept.pt")
    result = run_in_process(capsys, "train", "--resume", str(changed), "--lr", "0.05", "--epochs", "3", *FAST)
    assert result.returncode == 0, result.stderr
    assert "learning rate 0.05" in result.stdout and "0.001" in result.stdout
    assert run_in_process(capsys, "train", "--resume", str(kept), "--epochs", "3", *FAST).returncode == 0
    changed_run = load_checkpoint(changed)
    kept_run = load_checkpoint(kept)
    assert changed_run["optimizer"]["hyperparameters"]["learn_rate"] == 0.05
    assert kept_run["optimizer"]["hyperparameters"]["learn_rate"] == 0.001
    assert not torch.equal(changed_run["model"]["sequence.0.weight"], kept_run["model"]["sequence.0.weight"])


def test_resume_refuses_fewer_epochs_than_the_checkpoint_holds(capsys, tmp_path, two_epochs):
    path = copied(two_epochs, tmp_path)
    assert_usage_error(run_in_process(capsys, "train", "--resume", str(path), "--epochs", "1", "--quiet"), "--epochs 1")


def test_resume_refuses_a_checkpoint_without_a_run_configuration(capsys, tmp_path, two_epochs):
    path = tmp_path / "bare.pt"
    save_checkpoint(path, dict(load_checkpoint(two_epochs), config=None))
    assert_usage_error(run_in_process(capsys, "train", "--resume", str(path), "--quiet"), str(path), "configuration")


def test_a_new_run_refuses_to_overwrite_a_checkpoint(capsys, tmp_path, two_epochs):
    path = copied(two_epochs, tmp_path)
    result = run_in_process(capsys, "train", "--epochs", "1", *FAST, "--checkpoint", str(path))
    assert_usage_error(result, str(path), "--resume", "--overwrite")
    assert result.stdout == ""
    assert path.read_bytes() == two_epochs.read_bytes()
    other = tmp_path / "other.pt"
    result = run_in_process(capsys, "train", "--resume", str(path), "--checkpoint", str(copied(path, tmp_path, "other.pt")))
    assert_usage_error(result, str(other), "--overwrite")

    result = run_in_process(capsys, "train", "--epochs", "1", *FAST, "--checkpoint", str(path), "--overwrite")
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(path)["epoch"] == 1


def write_idx(path, magic, dims, values):
    path.write_bytes(struct.pack(">I" + "I" * len(dims), magic, *dims) + bytes(values))


def write_tiny_mnist(folder, train_labels):
    rng = np.random.default_rng(0)
    for prefix, labels in [("train", train_labels), ("t10k", list(range(10)))]:
        pixels = rng.integers(0, 256, size=len(labels) * 28 * 28).tolist()
        write_idx(folder / f"{prefix}-images-idx3-ubyte", 0x803, (len(labels), 28, 28), pixels)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", 0x801, (len(labels),), labels)


def test_resume_refuses_data_that_changed_under_the_same_name(capsys, tmp_path):
    labels = [i % 10 for i in range(20)]
    write_tiny_mnist(tmp_path, labels)
    path = tmp_path / "mnist.pt"
    args = ["--data", "mnist", "--root", str(tmp_path), *FAST]
    assert run_in_process(capsys, "train", *args, "--epochs", "1", "--checkpoint", str(path)).returncode == 0
    write_tiny_mnist(tmp_path, labels[::-1])
    result = run_in_process(capsys, "train", *args, "--epochs", "2", "--resume", str(path))
    assert_usage_error(result, "data", str(path))


def test_train_reports_mnist_labels_outside_0_to_9(capsys, tmp_path):
    write_tiny_mnist(tmp_path, [3, 12])
    result = run_in_process(capsys, "train", "--data", "mnist", "--root", str(tmp_path), "--quiet")
    assert_usage_error(result, "train-labels-idx1-ubyte", "12")


BAD_VALUES = [
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--lr", "inf"], "--lr"),
    (["train", "--lr", "-1"], "--lr"),
    (["train", "--seed", str(2**64)], "--seed"),
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--batch-size", "-2"], "--batch-size"),
    (["overfit", "--seed", str(2**64)], "--seed"),
    (["overfit", "--samples", "100000"], "--samples"),
    (["gradcheck", "--seed", str(2**64)], "--seed"),
    (["bench", "--threads", "0"], "--threads"),
    (["bench", "--threads", "-3"], "--threads"),
    (["bench", "--repeats", "-1"], "--repeats"),
]


@pytest.mark.parametrize("args, flag", BAD_VALUES, ids=[" ".join(args) for args, _ in BAD_VALUES])
def test_bad_numbers_give_usage_and_status_2(capsys, args, flag):
    result = run_in_process(capsys, *args)
    assert_usage_error(result, flag)
    assert result.stdout == ""


def test_overfit_names_how_many_samples_there_are(capsys):
    assert_usage_error(run_in_process(capsys, "overfit", "--samples", "100000"), "100000", "1438")


BAD_OUTPUTS = [
    (["--checkpoint", ""], "--checkpoint"),
    (["--checkpoint", "{tmp}"], "folder"),
    (["--checkpoint", "{file}/run.pt"], "not a folder"),
    (["--checkpoint", "{tmp}/missing/run.pt"], "no such folder"),
    (["--plot", "{tmp}/curves.txt"], "--plot"),
    (["--plot", "{tmp}/curves"], "--plot"),
    (["--plot", "{file}/curves.png"], "not a folder"),
    (["--plot", ""], "--plot"),
    (["--plot", "{tmp}"], "folder"),
]


@pytest.mark.parametrize("args, fragment", BAD_OUTPUTS, ids=[" ".join(args) for args, _ in BAD_OUTPUTS])
def test_output_paths_are_checked_before_training(capsys, tmp_path, args, fragment):
    (tmp_path / "file").write_text("a file, not a folder")
    args = [arg.format(tmp=tmp_path, file=tmp_path / "file") for arg in args]
    result = run_in_process(capsys, "train", "--epochs", "1", *FAST, *args)
    assert_usage_error(result, fragment)
    assert result.stdout == ""  # refused before anything ran
    assert sorted(os.listdir(tmp_path)) == ["file"]


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder in which this process cannot create files: a chmod 500 one, or for root
    (who writes into those anyway) sysfs, which takes no new files from anyone."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)
        return
    if not os.access("/sys", os.F_OK) or _can_create_in("/sys"):
        pytest.skip("root, and no sysfs that refuses new files")
    yield Path("/sys")


def _can_create_in(folder):
    try:
        with tempfile.NamedTemporaryFile(dir=folder):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("flag, name", [("--checkpoint", "run.pt"), ("--plot", "curves.png")])
def test_an_output_in_a_read_only_folder_is_refused_before_training(capsys, read_only_folder, flag, name):
    result = run_in_process(capsys, "train", "--epochs", "1", *FAST, flag, str(read_only_folder / name))
    assert_usage_error(result, flag, "cannot write")
    assert result.stdout == ""


DAMAGED = {
    "rng missing": lambda c: c.pop("rng"),
    "optimizer missing": lambda c: c.pop("optimizer"),
    "fit_result missing": lambda c: c.pop("fit_result"),
    "rng tensor": lambda c: c["rng"].update(torch=torch.zeros(3, dtype=torch.uint8)),
    "best_model does not fit": lambda c: c.update(best_model={"sequence.0.weight": torch.zeros(2, 2)}),
}


@pytest.mark.parametrize("damage", DAMAGED)
def test_a_damaged_checkpoint_gives_one_line_and_status_2(capsys, tmp_path, two_epochs, damage):
    checkpoint = torch.load(two_epochs, weights_only=True)
    DAMAGED[damage](checkpoint)
    path = tmp_path / "damaged.pt"
    save_checkpoint(path, checkpoint)
    result = run_in_process(capsys, "train", "--resume", str(path), "--epochs", "3", "--quiet")
    assert_usage_error(result, str(path))


def test_a_flipped_bit_in_a_checkpoint_gives_one_line_and_status_2(capsys, tmp_path, two_epochs):
    weight = load_checkpoint(two_epochs)["model"]["sequence.0.weight"]
    raw = bytearray(two_epochs.read_bytes())
    where = raw.find(weight.numpy().tobytes())
    raw[where + 100] ^= 0x01
    path = tmp_path / "flipped.pt"
    path.write_bytes(bytes(raw))
    assert_usage_error(run_in_process(capsys, "train", "--resume", str(path), "--quiet"), str(path), "checksum")


def test_the_real_command_refuses_a_bad_number_without_a_traceback():
    assert_usage_error(nnlab("train", "--lr", "nan", timeout=60), "--lr")


# Killed for real (SIGKILL) at chosen moments, then resumed ------------------------------

# Runs `python -m nnlab ...` after arranging one pause: at the PAUSE_AT-th training batch
# ("batch:N"), or halfway through writing the checkpoint of epoch N ("save:N"). At the
# pause it creates MARKER and sleeps, so the test's SIGKILL lands exactly there.
KILLABLE = r"""
import io, os, runpy, sys, time
import torch
from nnlab import training

kind, number = os.environ["PAUSE_AT"].split(":")
number = int(number)

def pause():
    open(os.environ["MARKER"], "w").close()
    time.sleep(60)

if kind == "batch":
    train_batch = training.LayerTrainer.train_batch
    calls = []
    def paused_train_batch(self, batch):
        calls.append(1)
        if len(calls) == number:
            pause()
        return train_batch(self, batch)
    training.LayerTrainer.train_batch = paused_train_batch
else:
    save = torch.save
    def half_save(obj, file, *args, **kw):
        if obj.get("epoch") != number:
            return save(obj, file, *args, **kw)
        buffer = io.BytesIO()
        save(obj, buffer, *args, **kw)
        file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        file.flush()
        pause()
    torch.save = half_save

sys.argv = ["nnlab", *sys.argv[1:]]
runpy.run_module("nnlab", run_name="__main__", alter_sys=True)
"""


def kill_when_paused(tmp_path, pause_at, *args):
    marker = tmp_path / "paused"
    env = dict(_env(), PAUSE_AT=pause_at, MARKER=str(marker))
    process = subprocess.Popen([sys.executable, "-c", KILLABLE, *args], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"never reached {pause_at}: {process.communicate()[1]}")
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    marker.unlink()
    assert process.returncode == -signal.SIGKILL


def test_kill_9_during_training_and_during_a_save_then_resume_is_exact(capsys, tmp_path):
    # Only the killed runs need processes of their own; one torch thread everywhere
    # (conftest, OMP_NUM_THREADS=1), so the sums are the same in and out of process.
    run = ["train", "--epochs", "4", "--seed", "1", "--batch-size", "256", "--no-verify", "--quiet"]
    whole = run_in_process(capsys, *run, "--checkpoint", str(tmp_path / "whole.pt"))
    assert whole.returncode == 0, whole.stderr
    path = tmp_path / "part.pt"

    kill_when_paused(tmp_path, "batch:8", *run, "--checkpoint", str(path))  # 6 batches an epoch: in epoch 2
    assert load_checkpoint(path)["epoch"] == 1
    kill_when_paused(tmp_path, "save:3", "train", "--resume", str(path), "--quiet")
    assert load_checkpoint(path)["epoch"] == 2  # the half-written epoch 3 never replaced it
    assert any(name.startswith(".part.pt.") for name in os.listdir(tmp_path))  # its temporary file

    resumed = run_in_process(capsys, "train", "--resume", str(path), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.splitlines()[-1] == whole.stdout.splitlines()[-1]  # the final accuracy line
    assert sorted(os.listdir(tmp_path)) == ["part.pt", "whole.pt"]  # the stale temporary file went
    a = load_checkpoint(path)
    b = load_checkpoint(tmp_path / "whole.pt")
    assert a["fit_result"] == b["fit_result"]
    assert_same(a["model"], b["model"])
    assert_same(a["best_model"], b["best_model"])
    assert_same(a["optimizer"], b["optimizer"])
    assert_same(a["rng"]["torch"], b["rng"]["torch"])


def assert_same(a, b, where="checkpoint"):
    """Bit for bit: tensors with torch.equal, through nested dicts and lists."""
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for index, (item_a, item_b) in enumerate(zip(a, b)):
            assert_same(item_a, item_b, f"{where}[{index}]")
    else:
        assert a == b, where


# nnlab binary ------------------------------------------------------------------------------


def test_binary_prints_the_study_table_and_writes_both_pictures(tmp_path):
    plot = tmp_path / "grid.png"
    result = nnlab("binary", "--depths", "1", "2", "--widths", "3", "--epochs", "2", "--samples", "300", "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    header = lines.index(["depth", "width", "threshold", "valid", "acc", "test", "acc"])
    rows = lines[header + 1 : header + 3]
    assert [row[:2] for row in rows] == [["1", "3"], ["2", "3"]]
    for row in rows:
        threshold = float(row[2])
        valid, test = (float(value.rstrip("%")) for value in row[3:])
        assert 0 <= threshold <= 1 and 0 <= valid <= 100 and 0 <= test <= 100
    assert "test accuracy: min" in result.stdout and "75th percentile" in result.stdout
    best = tmp_path / "grid_best.png"
    for path in (plot, best):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
        assert str(path) in result.stdout


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--depths", "1", "0"], "argument --depths: expected an integer >= 1, got 0"),
        (["--widths", "-4"], "argument --widths: expected an integer >= 1, got -4"),
        (["--widths", "two"], "argument --widths: expected an integer >= 1, got 'two'"),
        (["--epochs", "0"], "argument --epochs: expected an integer >= 1, got 0"),
        (["--samples", "9"], "--samples must be >= 10 (rotated_moons), got 9"),
        (["--seed", "-1"], "argument --seed: expected an integer from 0 to 2**64 - 1, got -1"),
        (["--plot", "grid.xyz"], "--plot grid.xyz: not an image format matplotlib writes"),
        (["--plot", "no/such/folder/grid.png"], "--plot no/such/folder/grid.png: no such folder"),
    ],
)
def test_binary_refuses_bad_options_before_training(capsys, args, fragment):
    assert_usage_error(run_in_process(capsys, "binary", *args), fragment)


# gradcheck --layer: a layer of the user's ----------------------------------------------------

STUDENT_LAYERS = '''
import torch
from nnlab.layers import Layer


class Scale(Layer):
    """out = x * weight, one weight per channel of (N, C, H, W) input. Correct."""

    def __init__(self, channels):
        super().__init__()
        self.add_param("weight", torch.linspace(0.5, 1.5, channels).reshape(channels, 1, 1))
        self._x = None

    def forward(self, x, **kw):
        self._x = x
        return x * self.weight

    def backward(self, dout):
        x = self.cached("_x")
        self._grads["weight"] += (dout * x).sum(dim=(0, 2, 3)).reshape(self.weight.shape)
        return dout * self.weight


class WrongVJP(Scale):
    def backward(self, dout):
        x = self.cached("_x")
        self._grads["weight"] += (dout * x).sum(dim=(0, 2, 3)).reshape(self.weight.shape)
        return dout * x  # should be dout * weight


class ForgetsToAccumulate(Scale):
    def backward(self, dout):
        x = self.cached("_x")
        self._grads["weight"][...] = (dout * x).sum(dim=(0, 2, 3)).reshape(self.weight.shape)
        return dout * self.weight


class ChangesItsInput(Layer):
    """ReLU written the tempting way: zero the negative entries of x itself."""

    def __init__(self):
        super().__init__()
        self._mask = None

    def forward(self, x, **kw):
        self._mask = x > 0
        x[~self._mask] = 0
        return x

    def backward(self, dout):
        return dout * self.cached("_mask")


class NoCacheCheck(Scale):
    def __init__(self, channels):
        super().__init__(channels)
        self._x = torch.zeros(())  # backward before forward quietly uses this

    def backward(self, dout):
        x = self._x
        self._grads["weight"] += (dout * x).sum(dim=(0, 2, 3)).reshape(self.weight.shape)
        return dout * self.weight


class WrongGradientShape(Scale):
    def __init__(self, channels):
        super().__init__(channels)
        self._grads["weight"] = torch.zeros(channels)  # the parameter is (channels, 1, 1)

    def backward(self, dout):
        x = self.cached("_x")
        self._grads["weight"] += (dout * x).sum(dim=(0, 2, 3))
        return dout * self.weight
'''


@pytest.fixture
def student_package(tmp_path):
    """A package of student layers on PYTHONPATH, as a user's own code would be."""
    package = tmp_path / "studentlayers"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "layers.py").write_text(STUDENT_LAYERS)
    (package / "broken.py").write_text("def broken(:\n")
    return tmp_path


def check_student_layer(root, name, *options):
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "nnlab", "gradcheck", "--layer", f"studentlayers.layers:{name}", *options]
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)


def test_gradcheck_layer_passes_a_correct_layer_and_fails_a_wrong_one(student_package):
    """The real command, importing the user's package from PYTHONPATH."""
    result = check_student_layer(student_package, "Scale", "--args", "3", "--input-shape", "2,3,4,4")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Scale (random input)" in result.stdout and "Scale (tie-heavy input)" in result.stdout
    assert "all 2 checks of studentlayers.layers:Scale passed" in result.stdout
    result = check_student_layer(student_package, "WrongVJP", "--args", "3", "--input-shape", "2,3,4,4")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if "autograd: FAIL" in line)
    # The element of largest error, with both values.
    assert re.search(r"wrong gradient \(the backward's VJP\): .* at input\[\d, \d, \d, \d\]: \S+ \(the layer's\) vs \S+ \(autograd\)", line), line


def test_gradcheck_layer_in_float64(student_package, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(student_package))
    options = ["--args", "3", "--input-shape", "1,3,2,5", "--dtype", "float64"]
    result = run_in_process(capsys, "gradcheck", "--layer", "studentlayers.layers:Scale", *options)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tolerance 1e-10" in result.stdout  # float64's


@pytest.mark.parametrize(
    "name, args, named",
    [
        ("WrongVJP", "3", "autograd: FAIL, wrong gradient (the backward's VJP)"),
        ("ForgetsToAccumulate", "channels=3", "gradients do not accumulate"),
        ("ChangesItsInput", "", "forward changes its input x in place"),
        ("NoCacheCheck", "3", "backward before forward does not raise"),
        ("WrongGradientShape", "3", "params() pair of wrong shapes: param#01 has shape (3, 1, 1) but its gradient (3,)"),
    ],
)
def test_gradcheck_layer_names_the_bug_of_each_broken_layer(student_package, capsys, monkeypatch, name, args, named):
    monkeypatch.syspath_prepend(str(student_package))
    options = ["--layer", f"studentlayers.layers:{name}", "--args", args, "--input-shape", "2,3,4,4"]
    result = run_in_process(capsys, "gradcheck", *options)
    assert result.returncode == 1, result.stdout + result.stderr
    assert named in result.stdout
    assert f"FAILED: {name} (random input)" in result.stdout


@pytest.mark.parametrize(
    "options, fragment",
    [
        (["--layer", "studentlayers.layers", "--input-shape", "2,3"], "expected package.module:ClassName"),
        (["--layer", "nosuchpackage.layers:Scale", "--input-shape", "2,3"], "cannot import nosuchpackage.layers"),
        (["--layer", "studentlayers.broken:Scale", "--input-shape", "2,3"], "cannot import studentlayers.broken: SyntaxError"),
        (["--layer", "studentlayers.layers:Missing", "--input-shape", "2,3"], "has no Missing"),
        (["--layer", "studentlayers.layers:torch", "--input-shape", "2,3"], "not a subclass of nnlab.layers.Layer"),
        (["--layer", "studentlayers.layers:Scale", "--args", "3, foo", "--input-shape", "2,3,4,4"], "--args '3, foo'"),
        (["--layer", "studentlayers.layers:Scale", "--args", "__import__('os').getcwd()", "--input-shape", "2,3,4,4"], "Python literals"),
        (["--layer", "studentlayers.layers:Scale", "--args", "3, (", "--input-shape", "2,3,4,4"], "SyntaxError"),
        (["--layer", "studentlayers.layers:Scale", "--args", "3, 4", "--input-shape", "2,3,4,4"], "Scale(3, 4) raised TypeError"),
        (["--layer", "studentlayers.layers:Scale", "--args", "3", "--input-shape", "2,x"], "--input-shape '2,x'"),
        (["--layer", "studentlayers.layers:Scale", "--args", "3", "--input-shape", "2,0,4"], "integers >= 1"),
        (["--layer", "studentlayers.layers:Scale", "--args", "3"], "--layer and --input-shape go together"),
        (["--input-shape", "2,3"], "--layer and --input-shape go together"),
    ],
)
def test_gradcheck_layer_usage_errors(capsys, monkeypatch, student_package, options, fragment):
    monkeypatch.syspath_prepend(str(student_package))
    assert_usage_error(run_in_process(capsys, "gradcheck", *options), fragment)


def test_gradcheck_layer_rejecting_the_input_shape_is_a_usage_error(capsys, monkeypatch, student_package):
    monkeypatch.syspath_prepend(str(student_package))
    result = run_in_process(capsys, "gradcheck", "--layer", "studentlayers.layers:Scale", "--args", "3", "--input-shape", "2,5,4,4")
    assert_usage_error(result, "--input-shape 2,5,4,4: Scale rejects it: RuntimeError: The size of tensor")


# Errors of the machine and of extreme numbers: one line, never a traceback ------------------


def test_a_checkpoint_write_that_finds_the_disk_full_gives_one_line_and_keeps_the_previous_file(
    capsys, tmp_path, two_epochs, monkeypatch
):
    """torch.save into a file path reports ENOSPC as a RuntimeError of its zip writer."""
    path = copied(two_epochs, tmp_path)
    before = path.read_bytes()

    def disk_full(*args, **kw):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", disk_full)
    result = run_in_process(capsys, "train", "--resume", str(path), "--epochs", "3", "--quiet")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if "error:" in line]
    assert error.startswith(f"nnlab train: error: {path}: cannot write the file: ")
    assert "PytorchStreamWriter failed writing file data/0" in error and "the disk may be full" in error
    assert path.read_bytes() == before  # the previous checkpoint is intact
    assert sorted(os.listdir(tmp_path)) == ["run.pt"]  # no temporary file left


def test_a_learning_rate_that_overflows_float32_in_the_step_gives_one_line(capsys):
    result = run_in_process(capsys, "train", "--lr", "1e39", "--epochs", "1", *FAST)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if "error:" in line]
    assert error.startswith("nnlab train: error: Adam: params[0]: the step's learn_rate 1e+39 overflows torch.float32")


def test_clashing_output_paths_are_refused_before_training(capsys, tmp_path, two_epochs):
    same = str(tmp_path / "out.png")
    result = run_in_process(capsys, "train", "--epochs", "1", *FAST, "--checkpoint", same, "--plot", same)
    assert_usage_error(result, f"--plot {same}", "--checkpoint")
    assert result.stdout == "" and os.listdir(tmp_path) == []
    # A resumed run writes its checkpoint back into the --resume file (whatever its name).
    path = copied(two_epochs, tmp_path, "run.png")
    before = path.read_bytes()
    relative = os.path.relpath(path)
    result = run_in_process(capsys, "train", "--resume", str(path), "--epochs", "3", "--quiet", "--plot", relative)
    assert_usage_error(result, f"--plot {relative}", "--resume")
    assert path.read_bytes() == before
