"""The nnlab command, run for real in a subprocess: its main paths and its error paths
(one-line error and usage, exit status 2, never a traceback)."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from nnlab import cli
from nnlab.layers import Linear


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


@pytest.mark.parametrize("command", ["gradcheck", "overfit", "train", "bench"])
def test_every_command_has_help(capsys, command):
    result = run_in_process(capsys, command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: nnlab {command}")


def test_gradcheck_prints_a_row_per_layer_and_passes():
    result = nnlab("gradcheck")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ["Linear", "Conv2d", "MaxPool2d", "AdaptiveAvgPool2d", "BatchNorm2d", "Residual", "Heads", "ResNet"]:
        assert any(line.startswith(name) and line.endswith("ok") for line in result.stdout.splitlines()), name
    assert "all 27 layers passed" in result.stdout


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
    assert "train 2" in result.stderr  # the progress bars
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
    x, y, _, _, in_size, classes = cli.load_dataset("digits", None, 0)
    model = cli.build_model("cnn", in_size, classes)
    assert cli.verify_gradients(model, cli.CrossEntropyLoss(), x[:8], y[:8]) < cli.VERIFY_TOLERANCE


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
