"""One spelling per option across the subcommands (--checkpoint, --out, --seed default 0,
-q/--quiet, -v/--verbose, --batch-size); the old spellings still parse, hidden from --help."""

import json
import subprocess

import pytest

from nnlab import cli

EXPERIMENT = ["experiment", "run", "-n", "x"]


def parsed(*argv):
    return cli.build_parser().parse_args(list(argv))


def subcommand_help(*names):
    parser = cli.build_parser()
    for name in names:
        parser = next(action for action in parser._actions if action.dest in ("command", "action")).choices[name]
    return parser.format_help()


@pytest.mark.parametrize(
    "new, old, dest, value",
    [
        (["--checkpoint", "c.pt"], ["--checkpoints", "c.pt"], "checkpoints", "c.pt"),
        (["--out", "results2"], ["--out-dir", "results2"], "out_dir", "results2"),
        (["-o", "results2"], ["--out-dir", "results2"], "out_dir", "results2"),
        (["--batch-size", "8"], ["--bs-train", "8"], "bs_train", 8),
    ],
)
def test_experiment_run_takes_the_new_and_the_old_spelling(new, old, dest, value):
    assert getattr(parsed(*EXPERIMENT, *new), dest) == value
    assert getattr(parsed(*EXPERIMENT, *old), dest) == value


@pytest.mark.parametrize("new, old, dest, value", [(["--out", "r"], ["--out-dir", "r"], "out_dir", "r"), (["--batch-size", "8"], ["--bs-train", "8"], "bs_train", 8)])
def test_experiment_sweep_takes_the_new_and_the_old_spelling(new, old, dest, value):
    assert getattr(parsed("experiment", "sweep", "-n", "s", *new), dest) == value
    assert getattr(parsed("experiment", "sweep", "-n", "s", *old), dest) == value


@pytest.mark.parametrize("action", ["run", "sweep"])
def test_help_shows_only_the_new_spellings(action):
    text = subcommand_help("experiment", action)
    assert "--out DIR" in text and "--batch-size N" in text
    for old in ("--out-dir", "--bs-train", "--checkpoints"):
        assert old not in text
    if action == "run":
        assert "--checkpoint FILE" in text


@pytest.mark.parametrize(
    "argv",
    [["train"], ["overfit"], ["gradcheck"], ["binary"], ["generate", "--checkpoint", "m.pt"], EXPERIMENT, ["experiment", "sweep", "-n", "s"]],
)
def test_the_seed_is_0_unless_given(argv):
    args = parsed(*argv)
    # train keeps None for "not given" (a resumed run takes the checkpoint's), and starts at 0.
    from nnlab.cli.train import RUN_DEFAULTS

    assert (args.seed if args.seed is not None else RUN_DEFAULTS["seed"]) == 0
    assert parsed(*argv, "--seed", "5").seed == 5


@pytest.mark.parametrize(
    "argv, flags",
    [
        (["train"], ("-q", "--quiet")),
        (["train"], ("-v", "--verbose")),
        (EXPERIMENT, ("-q", "--quiet", "-v", "--verbose")),
        (["experiment", "rerun", "f.json"], ("-q", "--quiet", "-v", "--verbose")),
        (["gradcheck"], ("-q", "--quiet", "-v", "--verbose")),
        (["overfit"], ("-v", "--verbose")),
    ],
)
def test_quiet_and_verbose_are_spelled_alike(argv, flags):
    for flag in flags:
        args = parsed(*argv, flag)
        name = "quiet" if flag in ("-q", "--quiet") else "verbose"
        assert getattr(args, name) is True


def run_in_process(capsys, *args):
    try:
        status = cli.main(list(args))
    except SystemExit as exit:
        status = exit.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, status, captured.out, captured.err)


def test_experiment_run_with_the_new_spellings_writes_where_they_say_with_seed_0(capsys, tmp_path):
    options = ["-K", "2", "-L", "1", "-P", "1", "-H", "4", "--epochs", "1", "--batches", "1", "-q"]
    result = run_in_process(capsys, "experiment", "run", "-n", "t", *options, "--out", str(tmp_path), "--batch-size", "8", "--checkpoint", str(tmp_path / "c.pt"))
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "t_L1_K2.json").read_text())
    assert record["config"]["seed"] == 0 and record["config"]["bs_train"] == 8
    assert (tmp_path / "c.pt").exists()


def test_gradcheck_quiet_prints_only_the_final_line(capsys, monkeypatch):
    from nnlab import gradcheck_suite

    rows = [gradcheck_suite.check(case, 0) for case in gradcheck_suite.CASES[:2]]
    monkeypatch.setattr(gradcheck_suite, "run_all", lambda seed: rows)
    result = run_in_process(capsys, "gradcheck", "-q")
    assert result.returncode == 0 and result.stdout == "all 2 checks passed\n"
    verbose = run_in_process(capsys, "gradcheck", "-v")
    assert verbose.stdout.count(": ok\n") == 2
