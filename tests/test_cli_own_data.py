"""``nnlab train --data FILE.npz|FILE.csv``: the user's own arrays on the command line,
their task (inferred or --task), resuming, and one line naming the file for a bad one."""

import subprocess
import sys

import numpy as np
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
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in error_lines[0]


FAST = ("--epochs", "2", "--batch-size", "16", "--quiet")


@pytest.fixture
def species_csv(tmp_path):
    """Three well separated string classes, 60 samples, with a header line."""
    rng = np.random.default_rng(0)
    names = np.array(["virginica", "setosa", "versicolor"])
    classes = rng.integers(0, 3, 60)
    features = rng.normal(size=(60, 2)) * 0.1 + classes[:, None] * 3.0
    lines = ["petal,sepal,species"] + [f"{a},{b},{names[k]}" for (a, b), k in zip(features, classes)]
    path = tmp_path / "species.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_train_on_a_csv_learns_its_string_classes(capsys, species_csv):
    result = run_in_process(capsys, "train", "--data", str(species_csv), "--epochs", "15", "--batch-size", "16", "-v")
    assert result.returncode == 0, result.stderr
    assert "48 training and 12 test samples, 3 classes (setosa, versicolor, virginica)" in result.stdout
    assert "Linear(128, 3)" in result.stdout
    assert "final test accuracy: 100.00%" in result.stdout


def test_train_on_an_npz_of_continuous_labels_is_a_regression(capsys, tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 3))
    np.savez(tmp_path / "r.npz", x=x, y=x.sum(1) * 10 + 0.123)
    result = run_in_process(capsys, "train", "--data", str(tmp_path / "r.npz"), *FAST[:-1])
    assert result.returncode == 0, result.stderr
    assert "40 training and 10 test samples, regression" in result.stdout
    assert "final test MAE" in result.stdout and "accuracy" not in result.stdout


def test_task_overrides_the_inferred_one_and_is_kept_on_resume(capsys, tmp_path):
    x = np.arange(40.0).reshape(20, 2)
    np.savez(tmp_path / "c.npz", x=x, y=np.arange(20) % 4)
    checkpoint = tmp_path / "run.pt"
    result = run_in_process(capsys, "train", "--data", str(tmp_path / "c.npz"), "--task", "regression", *FAST[:-1], "--checkpoint", str(checkpoint))
    assert result.returncode == 0, result.stderr
    assert "regression" in result.stdout
    assert load_checkpoint(checkpoint)["config"]["task"] == "regression"
    resumed = run_in_process(capsys, "train", "--resume", str(checkpoint), "--epochs", "3", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "final test MAE" in resumed.stdout


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("1,2,0\n3,4\n5,6,1\n", "line 2 has 2 columns, the first line 3"),
        ("1,2,0\n3,x,1\n5,6,1\n", "line 2, column 2: 'x' is not a finite number"),
        ("", "is empty"),
    ],
)
def test_a_malformed_file_is_one_line_naming_it_and_status_2(capsys, tmp_path, content, fragment):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    result = run_in_process(capsys, "train", "--data", str(path), *FAST)
    assert_usage_error(result, str(path), fragment)


def test_the_real_command_names_a_missing_array_without_a_traceback(tmp_path):
    np.savez(tmp_path / "only_x.npz", x=np.zeros((5, 2)))
    result = subprocess.run(
        [sys.executable, "-m", "nnlab", "train", "--data", str(tmp_path / "only_x.npz")], capture_output=True, text=True, timeout=120
    )
    assert_usage_error(result, "only_x.npz: has no array y")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--data", "data.txt"], "or a data file ending in .npz or .csv, got 'data.txt'"),
        (["--data", "digits", "--task", "regression"], "--task regression: for a data file"),
        (["--data", "{csv}", "--model", "cnn"], "a cnn takes images (N, C, H, W); the samples have shape (2,)"),
        (["--data", "{csv}", "--root", "."], "--data {csv} is a file; --root is for"),
        (["--data", "{csv}", "--task", "ranking"], "invalid choice: 'ranking'"),
    ],
)
def test_own_data_usage_errors(capsys, species_csv, args, fragment):
    args = [arg.format(csv=species_csv) for arg in args]
    result = run_in_process(capsys, "train", *args, *FAST)
    assert_usage_error(result, fragment.format(csv=species_csv))
