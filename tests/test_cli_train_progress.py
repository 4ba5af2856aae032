"""nnlab train's output (at most 40 lines for 30 epochs at the default, off a terminal;
only the final result with --quiet; every layer and plain epoch lines with -v), and its
--lr-schedule and --clip-grad-norm (recorded, resumed bit for bit, checked)."""

import os
import subprocess
import sys

import pytest

from nnlab import cli
from nnlab.training import load_checkpoint


def run_in_process(capsys, *args):
    try:
        status = cli.main(list(args))
    except SystemExit as exit:
        status = exit.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, status, captured.out, captured.err)


def assert_usage_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in error_lines[0]


FAST = ("--batch-size", "256", "--no-verify")


def test_the_real_command_at_its_default_prints_at_most_40_lines_for_30_epochs():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "nnlab", "train", "--batch-size", "512"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300, env=env,
    )  # fmt: skip
    output = result.stdout
    assert result.returncode == 0, output
    lines = output.splitlines()
    assert len(lines) <= 40, output
    assert "\r" not in output
    assert sum(line.startswith("epoch ") for line in lines) == 30
    assert any(line.startswith("best epoch ") for line in lines)
    assert lines[-1].startswith("final test accuracy: ")


def test_quiet_prints_only_the_final_result(capsys):
    result = run_in_process(capsys, "train", "--epochs", "2", "--batch-size", "256", "-q")
    assert result.returncode == 0
    assert result.stderr == ""
    assert result.stdout.splitlines() == [result.stdout.strip()] and result.stdout.startswith("final test accuracy: ")


def test_verbose_lists_every_layer_and_prints_plain_epoch_lines(capsys):
    result = run_in_process(capsys, "train", "--epochs", "2", *FAST, "-v")
    assert result.returncode == 0
    assert "\t[6] Linear(128, 10)" in result.stdout
    assert [line.split(":")[0] for line in result.stderr.splitlines()[:2]] == ["epoch 1/2", "epoch 2/2"]


def test_a_scheduled_and_clipped_run_records_both(capsys, tmp_path):
    path = tmp_path / "run.pt"
    options = ("--lr-schedule", "onecycle", "--clip-grad-norm", "0.5", "--optimizer", "momentum", *FAST, "-q")
    assert run_in_process(capsys, "train", "--epochs", "2", "--checkpoint", str(path), *options).returncode == 0
    config = load_checkpoint(path)["config"]
    assert config["lr_schedule"] == "onecycle" and config["clip_grad_norm"] == 0.5


def test_a_resumed_scheduled_run_equals_the_uninterrupted_one(capsys, tmp_path, monkeypatch):
    from nnlab.training import base

    whole, part = tmp_path / "whole.pt", tmp_path / "part.pt"
    options = ("--epochs", "4", "--lr-schedule", "step", "--clip-grad-norm", "0.5", *FAST, "-q")
    assert run_in_process(capsys, "train", *options, "--checkpoint", str(whole)).returncode == 0

    stop_after = {"epochs": 2}
    original = base.Trainer.train_epoch

    def interrupted(self, *args, **kw):
        if self.epoch > stop_after["epochs"]:
            raise KeyboardInterrupt
        return original(self, *args, **kw)

    monkeypatch.setattr(base.Trainer, "train_epoch", interrupted)
    assert run_in_process(capsys, "train", *options, "--checkpoint", str(part)).returncode == 130
    monkeypatch.setattr(base.Trainer, "train_epoch", original)
    assert load_checkpoint(part)["epoch"] == 2
    resumed = run_in_process(capsys, "train", "--resume", str(part), "-q")
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_checkpoint(whole), load_checkpoint(part)
    assert a["fit_result"] == b["fit_result"] and a["callbacks"] == b["callbacks"]
    for key in a["model"]:
        assert (a["model"][key] == b["model"][key]).all()


@pytest.mark.parametrize(
    "resume_flags, fragment",
    [
        (("--lr-schedule", "cosine"), "--lr-schedule cosine contradicts --resume"),
        (("--lr", "0.5"), "--lr: "),
        (("--epochs", "6"), "--epochs: "),
    ],
)
def test_a_scheduled_run_resumes_with_its_schedule(capsys, tmp_path, resume_flags, fragment):
    path = tmp_path / "run.pt"
    assert run_in_process(capsys, "train", "--epochs", "2", "--lr-schedule", "step", *FAST, "-q", "--checkpoint", str(path)).returncode == 0
    assert_usage_error(run_in_process(capsys, "train", "--resume", str(path), *resume_flags), fragment)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "x"])
def test_clip_grad_norm_must_be_positive(capsys, value):
    assert_usage_error(run_in_process(capsys, "train", "--clip-grad-norm", value), "--clip-grad-norm")
