"""nnlab.gradcheck_suite's check of a user's layer: both modes where they differ, and a
line of progress per step."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nnlab import gradcheck_suite
from nnlab.layers import LSTM, BatchNorm1d, Linear

USER_LAYERS = '''
from nnlab.layers import BatchNorm1d


class EvalWrongBatchNorm(BatchNorm1d):
    """Right in training mode; in eval mode the backward halves the input gradient."""

    def backward(self, dout):
        dx = super().backward(dout)
        return dx if self.training else 0.5 * dx
'''


class EvalWrongBatchNorm(BatchNorm1d):
    def backward(self, dout):
        dx = super().backward(dout)
        return dx if self.training else 0.5 * dx


def test_a_layer_whose_modes_differ_is_checked_in_both_and_fails_in_eval_mode():
    lines = []
    rows = gradcheck_suite.check_user_layer(EvalWrongBatchNorm, (3,), {}, (4, 3), progress=lines.append)
    names = [row.name for row in rows]
    assert names == [
        "EvalWrongBatchNorm (random input)",
        "EvalWrongBatchNorm (tie-heavy input)",
        "EvalWrongBatchNorm (random input, eval mode)",
        "EvalWrongBatchNorm (tie-heavy input, eval mode)",
    ]
    assert [row.passed for row in rows] == [True, True, False, False]
    assert "wrong gradient" in rows[2].verdict.details()[0]
    assert "EvalWrongBatchNorm (random input, eval mode): finite differences of input: 12 of 12 entries" in lines


def test_a_layer_alike_in_both_modes_is_checked_once():
    rows = gradcheck_suite.check_user_layer(Linear, (3, 2), {}, (4, 3))
    assert [row.name for row in rows] == ["Linear (random input)", "Linear (tie-heavy input)"]
    assert all(row.passed for row in rows)


def test_finite_differences_of_a_large_tensor_take_a_sample():
    rows = gradcheck_suite.check_user_layer(Linear, (600, 2), {}, (2, 600))
    finite = rows[0].verdict.comparison("finite differences")
    assert finite.passed
    # input: 1200 entries, weight: 1200, bias: 2; each large one differenced at a sample
    assert finite.left_out == 2 * (1200 - gradcheck_suite.USER_LAYER_ENTRIES)
    assert "entries not differenced" in finite.describe()


def test_the_command_shows_progress_on_stderr_and_fails_a_backward_wrong_in_eval_mode_only(tmp_path):
    (tmp_path / "userlayers.py").write_text(USER_LAYERS)
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(root)]), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "nnlab", "gradcheck", "--layer", "userlayers:EvalWrongBatchNorm", "--args", "3"]
    result = subprocess.run(command + ["--input-shape", "4,3"], capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "FAILED: EvalWrongBatchNorm (random input, eval mode), EvalWrongBatchNorm (tie-heavy input, eval mode)" in result.stdout
    progress = result.stderr.splitlines()
    assert progress and all(line.startswith("gradcheck: EvalWrongBatchNorm (") for line in progress)
    assert "gradcheck: EvalWrongBatchNorm (random input): autograd through the forward" in progress


class Verdict:
    """A grad_compare.Verdict's face: whether it passed and its lines of detail."""

    def __init__(self, passed, name):
        self.passed = passed
        self.name = name

    def details(self):
        return [f"{self.name}'s detail"]


def test_the_table_shows_the_verdicts_of_failing_rows_only():
    rows = [
        gradcheck_suite.Row("Broken", 1.0, 1.0, 1.0, Verdict(False, "Broken")),
        gradcheck_suite.Row("Fine", 0.0, 0.0, 0.0, Verdict(True, "Fine")),
        gradcheck_suite.Row("Crashed", None, None, None, None, failure="Crashed raised"),
        gradcheck_suite.Row("AlsoFine", 0.0, 0.0, 0.0, Verdict(True, "AlsoFine")),
    ]
    table = gradcheck_suite.format_table(rows)
    below = table.split("\n\n", 1)[1].splitlines()
    assert below == ["Broken: FAIL", "  Broken's detail", "", "Crashed: FAIL", "  Crashed raised"]
    detailed = gradcheck_suite.format_table(rows, details=True).split("\n\n", 1)[1]
    assert "Fine: ok\n  Fine's detail" in detailed and "AlsoFine: ok\n  AlsoFine's detail" in detailed


def case_named(name):
    return next(case for case in gradcheck_suite.CASES if case.name == name)


# Every row passes in test_cli's run of `nnlab gradcheck`; these show what each of the rows
# of nested, masked and integer inputs compares.
@pytest.mark.parametrize(
    "name, inputs",
    [
        ("LSTM (initial state)", ["input#1", "input#2.1", "input#2.2"]),
        ("MultiheadAttention (key_padding_mask)", ["input#1", "input#2", "input#3"]),
        ("Embedding", []),
    ],
)
def test_rows_of_nested_states_masks_and_indices_compare_each_floating_input_with_every_reference(name, inputs):
    row = gradcheck_suite.check(case_named(name))
    assert row.passed, row.verdict
    references = [c.reference for c in row.verdict.comparisons]
    assert references == ["autograd", "torch.nn twin (forward)", "torch.nn twin", "finite differences"]
    assert [n for n in row.verdict.tensor_names if n.startswith("input")] == inputs


class LSTMWrongInitialCellGradient(LSTM):
    """dc_0 scaled by 0.5; dx, dh_0 and the parameter gradients right."""

    def backward(self, dout):
        dx, (dh_0, dc_0) = super().backward(dout)
        return dx, (dh_0, 0.5 * dc_0)


def test_the_initial_state_rows_fail_an_lstm_wrong_in_dc_0_only(monkeypatch):
    monkeypatch.setattr(gradcheck_suite.nn, "LSTM", LSTMWrongInitialCellGradient)
    for name in ("LSTM (initial state)", "LSTM (2 layers, 2 ways, initial state)"):
        row = gradcheck_suite.check(case_named(name))
        assert not row.passed
        for reference in ("autograd", "torch.nn twin", "finite differences"):
            assert row.verdict.comparison(reference).worst.name == "input#2.2", (name, reference)
