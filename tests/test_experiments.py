"""nnlab.experiments and `nnlab experiment`: configurations as the course builds them,
result files that round-trip and reproduce their run, overlay plots, and sweeps that
resume after being killed."""

import collections
import json
import os
import subprocess
import sys

import matplotlib.image
import pytest
import torch  # noqa: F401  (the skipif conditions)
from test_cli import run_in_process

from nnlab import cli, experiments
from nnlab.cli import experiment as experiment_command
from nnlab.experiments import (
    EXPERIMENT_KEYS,
    ExperimentError,
    cnn_experiment,
    experiment_model,
    fit_differences,
    load_experiment,
    plot_exp_results,
    rerun_experiment,
)
from nnlab.models import CNN, ResNet
from nnlab.training import FitResult

# The cheapest configuration that trains: a few batches of one epoch.
TINY = dict(bs_train=16, batches=2, epochs=2, filters_per_layer=[2], layers_per_block=1, pool_every=1, hidden_dims=[4])


def assert_usage_error(result, *fragments):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1, result.stderr
    assert error_lines[0].startswith("nnlab experiment")
    assert "usage: nnlab experiment" in result.stderr
    for fragment in fragments:
        assert fragment in error_lines[0]


def config_of(**arguments):
    """A resolved configuration, as cnn_experiment builds it."""
    return experiments.resolve_config({**experiments.EXPERIMENT_DEFAULTS, "run_name": "x", "seed": 0, **arguments})


def num_params(model):
    return sum(param.numel() for param, _ in model.params())


# Configurations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_type, ks, layers, pool_every, expected",
    [
        ("cnn", [32, 64], 2, 2, [32, 32, 64, 64]),
        ("cnn", [16, 32], 1, 1, [16, 32]),
        ("resnet", [8], 3, 3, [8, 8, 8]),
        ("resnet_bottleneck", [8], 6, 3, [8] * 6),
    ],
)
def test_the_channels_are_each_k_repeated_l_times(model_type, ks, layers, pool_every, expected):
    config = config_of(model_type=model_type, filters_per_layer=ks, layers_per_block=layers, pool_every=pool_every, hidden_dims=[10])
    model = experiment_model(config)
    assert model.channels == expected
    builder = CNN if model_type == "cnn" else ResNet
    twin = builder((1, 8, 8), 10, expected, pool_every, [10], **({"bottleneck": True} if "bottleneck" in model_type else {}))
    assert num_params(model) == num_params(twin)
    assert str(model.sequence) == str(twin.sequence)


def test_resnet_bottleneck_differs_from_resnet_where_a_block_can_be_one():
    plain = experiment_model(config_of(model_type="resnet", filters_per_layer=[8], layers_per_block=6, pool_every=3))
    bottleneck = experiment_model(config_of(model_type="resnet_bottleneck", filters_per_layer=[8], layers_per_block=6, pool_every=3))
    assert "ResidualBottleneckBlock" in str(bottleneck.sequence) and "ResidualBottleneckBlock" not in str(plain.sequence)


@pytest.mark.parametrize(
    "arguments, fragment",
    [
        (dict(filters_per_layer=[4], layers_per_block=4, pool_every=1), "x_L4_K4: cannot build this cnn"),
        (dict(model_type="resnet", filters_per_layer=[4], layers_per_block=4, pool_every=1), "x_L4_K4: cannot build this resnet"),
        (dict(model_type="resnet_bottleneck", pool_every=2), "no group of P=2 convolutions can be a bottleneck"),
    ],
)
def test_a_configuration_that_cannot_work_is_named(arguments, fragment):
    with pytest.raises(ExperimentError, match=fragment):
        experiment_model(config_of(**arguments))


def test_the_default_configuration_works_on_the_digits():
    model = experiment_model(config_of())
    assert model.channels == [64, 64]


@pytest.mark.parametrize(
    "arguments, fragment",
    [
        (dict(bs_train=0), "bs_train must be an int >= 1"),
        (dict(filters_per_layer=32), "filters_per_layer must be a non-empty list"),
        (dict(model_type="vgg"), "model_type must be one of"),
        (dict(data="cifar10"), "needs root"),
        (dict(run_name="a/b"), "run_name must be a file name"),
        (dict(lr=float("nan")), "lr must be a finite number"),
        (dict(seed=-1), "seed must be None or an int"),
        (dict(device="gpu9"), "not a torch device"),
        pytest.param(dict(device="cuda"), "no CUDA device", marks=pytest.mark.skipif("torch.cuda.is_available()")),
        (dict(conv_params=dict(kernel_size=(3, 3))), "cannot be recorded exactly in JSON"),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(tmp_path, arguments, fragment):
    arguments = {"run_name": "x", "out_dir": str(tmp_path), **arguments}
    with pytest.raises(ExperimentError, match=fragment):
        cnn_experiment(**arguments)
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.parametrize(
    "model_type, ks, layers, pool_every",
    [  # the course's experiments 1.1 to 1.4, as its notebook configures them
        ("cnn", [32], 16, 4),
        ("cnn", [64], 16, 8),
        ("cnn", [256], 8, 4),
        ("cnn", [64, 128, 256], 4, 4),
        ("resnet", [32], 32, 8),
        ("resnet", [64, 128, 256], 8, 8),
    ],
)
def test_the_course_configurations_build_on_cifar10(model_type, ks, layers, pool_every):
    config = config_of(data="cifar10", root="unused", model_type=model_type, filters_per_layer=ks, layers_per_block=layers, pool_every=pool_every, hidden_dims=[100])
    model = experiment_model(config)
    assert model.in_size == (3, 32, 32) and len(model.channels) == len(ks) * layers


def test_a_cifar10_run_from_root_and_its_rerun_from_a_moved_root(tmp_path):
    from test_data import write_cifar

    write_cifar(str(tmp_path / "data" / "cifar-10-batches-py"), n_per_batch=3)
    path = cnn_experiment(
        "c", out_dir=str(tmp_path), data="cifar10", root=str(tmp_path / "data"), verbose=False, seed=3,
        bs_train=5, epochs=2, filters_per_layer=[2], layers_per_block=2, pool_every=2, hidden_dims=[4],
    )
    config, fit = load_experiment(path)
    with open(path) as file:
        assert json.load(file)["data"]["train_samples"] == 15
    os.rename(tmp_path / "data", tmp_path / "moved")
    with pytest.raises(FileNotFoundError):
        rerun_experiment(path)
    assert rerun_experiment(path, root=str(tmp_path / "moved"))["results"] == fit


# Result files -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    """One tiny run's result file, with the seed drawn (seed=None)."""
    folder = tmp_path_factory.mktemp("results")
    return cnn_experiment("tiny", out_dir=str(folder), verbose=False, **TINY)


def test_the_result_file_holds_the_whole_configuration_and_round_trips(tiny_result):
    assert os.path.basename(tiny_result) == "tiny_L1_K2.json"
    config, fit = load_experiment(tiny_result)
    assert set(EXPERIMENT_KEYS) <= set(config)
    assert isinstance(config["seed"], int)  # drawn, and recorded
    assert config["bs_test"] == 4 and config["device"] == "cpu" and config["batches"] == 2
    assert isinstance(fit, FitResult) and fit.num_epochs == 2
    with open(tiny_result) as file:
        record = json.load(file)
    assert record["environment"]["torch"] and record["environment"]["nnlab"]
    assert record["results"] == fit._asdict()
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tiny_result).st_mode & 0o777 == 0o666 & ~umask  # a plain file, not mkstemp's 0600
    # the configuration re-creates the model that was trained
    assert num_params(experiment_model(config)) == record["model"]["num_params"]


def test_the_file_holds_the_numbers_trained_float_for_float(tmp_path):
    config = config_of(out_dir=str(tmp_path), **TINY)
    record = experiments.run_experiment(config)
    path = tmp_path / "x.json"
    experiments.save_result(path, record)
    _, fit = load_experiment(path)
    assert fit == record["results"]
    assert [value.hex() for value in fit.test_loss] == [value.hex() for value in record["results"].test_loss]


def test_rerun_reproduces_the_fit_result_to_the_last_digit(capsys, tiny_result):
    _, saved = load_experiment(tiny_result)
    new = rerun_experiment(tiny_result)
    assert new["results"] == saved and fit_differences(saved, new["results"]) == []
    result = run_in_process(capsys, "experiment", "rerun", tiny_result, "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reproduced: the same FitResult to the last digit" in result.stdout


def test_rerun_says_where_a_result_differs(capsys, tiny_result, tmp_path):
    with open(tiny_result) as file:
        record = json.load(file)
    record["results"]["test_acc"][1] += 1e-9
    altered = tmp_path / "altered.json"
    altered.write_text(json.dumps(record))
    result = run_in_process(capsys, "experiment", "rerun", str(altered), "--quiet")
    assert result.returncode == 1
    assert "NOT reproduced" in result.stdout and "test_acc[2]" in result.stdout


def test_fit_differences_name_the_first_difference_of_every_record():
    saved = FitResult(2, [1.0, 0.5], [10.0, 20.0], [1.5, 0.75], [5.0, 6.0])
    assert fit_differences(saved, saved) == []
    new = saved._replace(test_loss=[1.5, 0.7500000000000001], train_acc=[10.0])
    assert fit_differences(saved, new) == ["test_loss[2]: 0.75 != 0.7500000000000001", "train_acc: [10.0, 20.0] != [10.0]"]


def test_rerun_refuses_other_data(monkeypatch, tiny_result):
    original = experiments.load_data

    def other_digits(name, root):
        x_train, y_train, x_test, y_test = original(name, root)
        return x_train.flip(-1), y_train, x_test, y_test

    monkeypatch.setattr(experiments, "load_data", other_digits)
    with pytest.raises(ExperimentError, match="data differ"):
        rerun_experiment(tiny_result)


def test_fit_result_fields_added_later_survive_the_file(monkeypatch, tmp_path):
    defaults = (None,) * (len(FitResult._field_defaults) + 1)
    LaterFitResult = collections.namedtuple("LaterFitResult", (*FitResult._fields, "later"), defaults=defaults)
    monkeypatch.setattr(experiments, "FitResult", LaterFitResult)
    fit = LaterFitResult(1, [0.5], [50.0], [0.25], [75.0], later={"test_mae": [0.125]})
    path = tmp_path / "later.json"
    experiments.save_result(path, {"format": experiments.RESULT_FORMAT, "config": {"run_name": "later"}, "results": fit})
    assert load_experiment(path)[1] == fit


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "expected a JSON object with 'config' and 'results'"),
        ('{"config": {}}', "expected a JSON object with 'config' and 'results'"),
        ('{"config": {}, "results": {"num_epochs": 1}}', "do not make a FitResult"),
        ('{"config": {}, "results": {"num_epochs": 1, "train_loss": [1], "train_acc": "x", "test_loss": [], "test_acc": []}}', "train_acc must be a list of numbers"),
        ('{"format": "other-9", "config": {}, "results": {}}', "result format 'other-9'"),
    ],
)
def test_a_file_that_is_not_a_result_is_named(tmp_path, content, fragment):
    path = tmp_path / "notes.json"
    path.write_text(content)
    with pytest.raises(ExperimentError, match=fragment) as error:
        load_experiment(path)
    assert str(path) in str(error.value)


def test_a_missing_file_or_a_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_experiment(tmp_path / "missing.json")
    with pytest.raises(ExperimentError, match="is a folder"):
        load_experiment(tmp_path)


def test_the_course_files_are_read_too(tmp_path):
    path = tmp_path / "exp1_1_L2_K32.json"
    fit = FitResult(1, [1.0], [10.0], [2.0], [20.0])
    path.write_text(json.dumps({"config": {"layers_per_block": 2}, "results": fit._asdict()}))
    assert load_experiment(path) == ({"layers_per_block": 2}, fit)


def test_an_existing_result_is_never_replaced_silently(tiny_result):
    folder = os.path.dirname(tiny_result)
    before = os.stat(tiny_result).st_mtime_ns
    with pytest.raises(ExperimentError, match="the result file exists"):
        cnn_experiment("tiny", out_dir=folder, verbose=False, **TINY)
    assert os.stat(tiny_result).st_mtime_ns == before


def test_a_configuration_running_elsewhere_is_refused(tmp_path):
    path = os.path.join(tmp_path, "busy_L1_K2.json")
    with experiments.configuration_lock(path):
        with pytest.raises(ExperimentError, match=r"another process \(pid \d+\) is running this configuration"):
            cnn_experiment("busy", out_dir=str(tmp_path), verbose=False, **TINY)
    assert not os.path.exists(path)


# Plots --------------------------------------------------------------------------------------------


def write_result(folder, run_name, layers, ks, test_acc, **config):
    fit = FitResult(len(test_acc), [1.0] * len(test_acc), test_acc, [0.5] * len(test_acc), test_acc)
    arguments = {**experiments.EXPERIMENT_DEFAULTS, "run_name": run_name, "layers_per_block": layers, "filters_per_layer": ks, **config}
    path = os.path.join(folder, experiments.config_name(arguments) + ".json")
    experiments.save_result(path, {"format": experiments.RESULT_FORMAT, "config": arguments, "results": fit})
    return path


def legend_texts(ax):
    return [text.get_text() for text in ax.get_legend().get_texts()]


def test_plot_exp_results_overlays_every_matching_run_with_one_legend_entry_each(tmp_path):
    write_result(tmp_path, "exp1_1", 2, [32], [50.0, 60.0])
    write_result(tmp_path, "exp1_1", 4, [32], [55.0, 65.0, 70.0])
    write_result(tmp_path, "exp1_1", 2, [64], [40.0])
    write_result(tmp_path, "other", 2, [32], [10.0])
    fig, axes = plot_exp_results(str(tmp_path / "exp1_1_*.json"))
    assert [ax.get_title() for ax in axes] == ["train loss", "train accuracy", "test loss", "test accuracy"]
    expected = ["L=2, K=32", "L=2, K=64", "L=4, K=32"]  # in the order of the file names
    for ax in axes:
        assert legend_texts(ax) == expected
    test_acc = axes[3].get_lines()
    assert [list(line.get_ydata()) for line in test_acc] == [[50.0, 60.0], [40.0], [55.0, 65.0, 70.0]]
    _, axes = plot_exp_results("exp1_1_L2*.json", results_dir=str(tmp_path), legend_key="filters_per_layer")
    assert legend_texts(axes[0]) == ["K=32", "K=64"]


def test_runs_with_the_same_legend_get_their_file_names(tmp_path):
    write_result(tmp_path, "a", 2, [32], [1.0], pool_every=2)
    write_result(tmp_path, "b", 2, [32], [2.0], pool_every=4)
    _, axes = plot_exp_results(str(tmp_path / "*.json"), legend_key="layers_per_block")
    assert legend_texts(axes[0]) == ["L=2 (a_L2_K32)", "L=2 (b_L2_K32)"]
    _, axes = plot_exp_results(str(tmp_path / "*.json"))
    assert legend_texts(axes[0]) == ["P=2", "P=4"]


def test_plot_exp_results_names_what_it_cannot_plot(tmp_path):
    with pytest.raises(ExperimentError, match="no result file matches"):
        plot_exp_results(str(tmp_path / "nothing_*.json"))
    write_result(tmp_path, "a", 2, [32], [1.0])
    with pytest.raises(ExperimentError, match="no 'colour'"):
        plot_exp_results(str(tmp_path / "*.json"), legend_key="colour")


def test_the_plot_command_writes_a_png_whose_legend_names_each_run(capsys, tmp_path):
    for layers in (2, 4, 8, 16):
        write_result(tmp_path, "exp1_1", layers, [32], [10.0 * layers, 11.0 * layers])
    out = tmp_path / "exp1_1.png"
    result = run_in_process(capsys, "experiment", "plot", str(tmp_path / "exp1_1_*.json"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "4 runs plotted" in result.stdout
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 400 and image.shape[1] > 800
    assert image[..., :3].std() > 0.05  # not blank
    fig, axes = plot_exp_results(str(tmp_path / "exp1_1_*.json"))
    assert legend_texts(axes[0]) == ["L=2", "L=4", "L=8", "L=16"]  # in natural order


# The command's errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["run", "-n", "x", "-K", "4", "-L", "4", "-P", "1"], "x_L4_K4: cannot build this cnn"),
        (["run", "-n", "x", "-K", "0"], "expected an integer >= 1"),
        (["run", "-K", "4"], "the following arguments are required: -n"),
        (["run", "-n", "x", "--data", "cifar10"], "needs root"),
        (["run", "-n", "x", "-M", "vgg"], "invalid choice: 'vgg'"),
        (["rerun", "missing.json"], "missing.json"),
        (["plot", "nothing_*.json", "--out", "x.png"], "no result file matches nothing_*.json"),
        (["plot", "a.json", "--out", "x.unknown"], "not an image format"),
        (["sweep", "-n", "x", "-L", "2", "2"], "configuration x_L2_K64 is given twice"),
        (["sweep", "-n", "x", "--data", "cifar10"], "needs --root"),
    ],
)
def test_command_errors_are_one_line_with_status_2(capsys, tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    result = run_in_process(capsys, "experiment", *args)
    assert_usage_error(result, fragment)
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").glob("*.json"))


@pytest.mark.parametrize("action", [[], ["run"], ["sweep"], ["plot"], ["rerun"]])
def test_every_experiment_action_has_help(capsys, action):
    result = run_in_process(capsys, "experiment", *action, "--help")
    assert result.returncode == 0 and result.stdout.startswith(f"usage: nnlab experiment {' '.join(action)}".rstrip())


def test_an_existing_result_is_an_error_of_the_command(capsys, tiny_result):
    folder = os.path.dirname(tiny_result)
    result = run_in_process(capsys, "experiment", "run", "-n", "tiny", "-o", folder, "-K", "2", "-L", "1", "-P", "1", "-H", "4")
    assert_usage_error(result, "the result file exists")


def write_sweep_result(folder, **options):
    """The result file of the configuration that `experiment sweep -n s -K 2 -L 1 -P 1
    -H 4 -o FOLDER` and ``options`` run (seed 0, as a sweep's runs), with made-up figures."""
    config = config_of(run_name="s", out_dir=str(folder), filters_per_layer=[2], layers_per_block=1, pool_every=1, hidden_dims=[4], **options)
    path = experiments.result_path(config)
    fit = FitResult(1, [1.0], [10.0], [0.5], [10.0])
    experiments.save_result(path, {"format": experiments.RESULT_FORMAT, "config": config, "results": fit})
    return path


def test_a_sweep_reports_what_cannot_work_and_what_is_done_without_running_them(capsys, tmp_path, monkeypatch):
    write_sweep_result(tmp_path)
    monkeypatch.setattr(experiment_command, "start_run", lambda item: pytest.fail(f"{item.name} should not run"))
    result = run_in_process(capsys, "experiment", "sweep", "-n", "s", "-K", "2", "-L", "1", "5", "-P", "1", "-H", "4", "-o", str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "sweep s: 2 configurations, 1 at a time"
    assert lines[1] == f"[1/2] s_L1_K2: done already ({tmp_path / 's_L1_K2.json'}), skipped"
    assert lines[2].startswith("[2/2] s_L5_K2: cannot work: cannot build this cnn:") and "shrinks to nothing" in lines[2]
    assert lines[3] == "sweep s: 0 run, 1 skipped (done before), 1 failed"


def test_sweep_names_runs_by_the_dimensions_that_vary():
    args = cli.build_parser().parse_args(
        ["experiment", "sweep", "-n", "e", "-K", "8", "-K", "8", "16", "-L", "1", "-P", "1", "2", "-H", "4", "-M", "cnn", "resnet"]
    )
    names = [item.name for item in experiment_command.sweep_configurations(args)]
    assert names == [
        f"e_{model}_P{pool}_L1_K{ks}" for ks in ("8", "8-16") for pool in (1, 2) for model in ("cnn", "resnet")
    ]


# A sweep killed and restarted ----------------------------------------------------------------------


def test_a_killed_sweep_resumes_and_runs_each_configuration_exactly_once(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("children die with the sweep through Linux's PR_SET_PDEATHSIG")
    args = [sys.executable, "-m", "nnlab", "experiment", "sweep", "-n", "tiny", "-K", "2", "-K", "3", "-L", "1", "2"]
    args += ["-P", "2", "-H", "4", "--epochs", "1", "--batches", "1", "--bs-train", "8", "-s", "0", "-o", str(tmp_path), "--jobs", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    names = {"tiny_L1_K2", "tiny_L2_K2", "tiny_L1_K3", "tiny_L2_K3"}

    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    finished_first = []
    for line in first.stdout:  # the marker: the first finished run's progress line
        if " -> " in line:
            finished_first.append(line.split("] ")[1].split(":")[0])
            break
    first.kill()  # the sweep alone, outright: its running configuration must die with it
    first.communicate(timeout=60)
    assert len(finished_first) == 1, "no run finished before the kill"
    done_before = {path.stem: path.read_bytes() for path in tmp_path.glob("*.json")}
    assert finished_first[0] in done_before and set(done_before) < names

    second = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    progress = [line for line in second.stdout.splitlines() if line.startswith("[")]
    skipped = {line.split("] ")[1].split(":")[0] for line in progress if "skipped" in line}
    ran = {line.split("] ")[1].split(":")[0] for line in progress if " -> " in line}
    assert skipped == set(done_before) and ran == names - skipped and len(progress) == 4
    for name in names:
        config, fit = load_experiment(tmp_path / f"{name}.json")
        assert name == experiments.config_name(config) and fit.num_epochs == 1
    for name, content in done_before.items():
        assert (tmp_path / f"{name}.json").read_bytes() == content  # never rewritten
    assert not list(tmp_path.glob(".*.tmp"))


def _set(record, where, value):
    """``record`` with the entry at the dotted path ``where`` set to ``value`` (or
    removed, for ``REMOVED``)."""
    *parents, last = where.split(".")
    target = record
    for key in parents:
        target = target[key]
    if value is REMOVED:
        del target[last]
    else:
        target[last] = value


class _Removed:
    def __repr__(self):
        return "removed"


REMOVED = _Removed()
# (entry, tampered value, the field the error names, whether `experiment plot` reads it)
TAMPERED = [
    ("environment.threads", 0, "environment.threads must be an int >= 1, got 0", True),
    ("environment.threads", -3, "environment.threads must be an int >= 1, got -3", True),
    ("environment.threads", "2", "environment.threads must be an int >= 1, got '2'", True),
    ("environment.threads", REMOVED, "records no environment.threads", False),
    ("environment.world_size", 0, "environment.world_size must be an int >= 1, got 0", True),
    ("environment", [], "environment must be a JSON object, got a list", True),
    ("config.out_dir", 5, "its config: out_dir must be a folder path (a string) or None, got 5", False),
    ("config.seed", "7", "its config: seed must be None or an int from 0 to 2**64 - 1, got '7'", False),
    ("data.fingerprint", 5, "data.fingerprint must be a string", False),
    ("results.metrics", [1, 2], "results.metrics must be a JSON object of lists of numbers, got a list", True),
    ("results.metrics.test_acc", [50.0, "x"], "results.metrics['test_acc'] must be a list of numbers", True),
    ("results.steps", {"loss": 3}, "results.steps['loss'] must be a list of numbers", True),
]


@pytest.mark.parametrize(
    "where, value, named, read_by_plot", TAMPERED, ids=[f"{where}={value!r}" for where, value, _, _ in TAMPERED]
)
def test_rerun_and_plot_of_a_tampered_file_name_the_file_and_the_field(capsys, tmp_path, tiny_result, where, value, named, read_by_plot):
    with open(tiny_result) as file:
        record = json.load(file)
    _set(record, where, value)
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(record))
    assert_usage_error(run_in_process(capsys, "experiment", "rerun", str(path), "--quiet"), f"{path}: ", named)
    plot = run_in_process(capsys, "experiment", "plot", str(path), "--out", str(tmp_path / "runs.png"))
    if read_by_plot:
        assert_usage_error(plot, f"{path}: ", named)
    else:
        assert plot.returncode == 0, plot.stderr


def test_recorded_differences_name_every_option_a_result_file_was_run_with_otherwise(tmp_path):
    wanted = config_of(out_dir=str(tmp_path), epochs=3, lr=0.01)
    path = experiments.result_path(wanted)
    fit = FitResult(1, [1.0], [10.0], [0.5], [10.0])
    experiments.save_result(path, {"format": experiments.RESULT_FORMAT, "config": dict(wanted, epochs=2), "results": fit})
    assert experiments.recorded_differences(path, wanted) == ["epochs: 2 != 3"]
    elsewhere = dict(wanted, out_dir="./elsewhere", checkpoints="run.ckpt")  # where files go is no option of the run
    assert experiments.recorded_differences(path, dict(elsewhere, epochs=2)) == []
    assert experiments.recorded_differences(path, dict(wanted, lr=0.1, dropout=0.5)) == ["dropout: None != 0.5", "epochs: 2 != 3", "lr: 0.01 != 0.1"]


def test_a_checkpoint_file_that_is_the_result_file_is_refused_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(experiments, "run_experiment", lambda *args, **kw: pytest.fail("trained"))
    with pytest.raises(ExperimentError, match="checkpoints x_L1_K2.json: is the result file; give the checkpoint another name"):
        cnn_experiment("x", out_dir=".", checkpoints="x_L1_K2.json", verbose=False, **TINY)
    assert os.listdir(tmp_path) == []


class FinishedRun:
    """What start_run returns, for a run that has ended with ``status``."""

    def __init__(self, status):
        self.returncode = status

    def poll(self):
        return self.returncode


SWEEP = ("experiment", "sweep", "-n", "s", "-K", "2", "-L", "1", "-P", "1", "-H", "4")


def test_a_sweep_over_results_of_other_options_names_them_and_overwrite_reruns_those(capsys, tmp_path, monkeypatch):
    path = write_sweep_result(tmp_path, epochs=2, lr=0.01)
    before = open(path, "rb").read()
    monkeypatch.setattr(experiment_command, "start_run", lambda item: pytest.fail(f"{item.name} should not run"))
    result = run_in_process(capsys, *SWEEP, "-o", str(tmp_path), "--epochs", "3", "--lr", "0.01")
    assert_usage_error(result, f"{path}: epochs: 2 != 3. --overwrite reruns")  # the same lr is no difference
    assert open(path, "rb").read() == before

    started = []

    def rerun(item):
        started.append(item.argv)
        write_sweep_result(tmp_path, epochs=3, lr=0.01)
        return FinishedRun(0)

    monkeypatch.setattr(experiment_command, "start_run", rerun)
    result = run_in_process(capsys, *SWEEP, "-o", str(tmp_path), "--epochs", "3", "--lr", "0.01", "--overwrite")
    assert result.returncode == 0, result.stdout + result.stderr
    (argv,) = started
    assert "--overwrite" in argv and argv[argv.index("--epochs") + 1] == "3"
    assert "1 run, 0 skipped (done before), 0 failed" in result.stdout
    assert experiments.recorded_differences(path, load_experiment(path)[0]) == []


def test_a_run_that_another_sweep_is_running_is_reported_done_by_it_not_failed(capsys, tmp_path, monkeypatch):
    """Two sweeps on one folder: this one's run of s_L1_K2 finds the other's running
    (and exits 2); when the other's has written the result, the configuration is done."""
    import threading

    path = os.path.join(tmp_path, "s_L1_K2.json")
    lock = experiments.configuration_lock(path)
    lock.__enter__()

    def the_other_sweep_finishes():
        write_sweep_result(tmp_path)
        lock.__exit__(None, None, None)

    def busy(item):
        threading.Timer(0.3, the_other_sweep_finishes).start()
        return FinishedRun(2)

    monkeypatch.setattr(experiment_command, "start_run", busy)
    result = run_in_process(capsys, *SWEEP, "-o", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"[1/1] s_L1_K2: done by another process ({path})" in result.stdout
    assert "FAILED" not in result.stdout and "0 failed" in result.stdout


def test_a_repeated_configuration_option_of_one_run_is_refused_and_a_sweep_adds_them_up(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for option, values in (("-K", ("4", "8")), ("-L", ("1", "2")), ("-H", ("4", "8")), ("-M", ("cnn", "resnet"))):
        result = run_in_process(capsys, "experiment", "run", "-n", "x", "--epochs", "1", "--batches", "1", option, values[0], option, values[1])
        assert_usage_error(result, f"{option} is given twice", "one configuration")
    assert not (tmp_path / "results").exists()
    args = cli.build_parser().parse_args(["experiment", "sweep", "-n", "e", "-K", "8", "-L", "1", "-L", "2", "3", "-P", "1", "-P", "2"])
    assert args.layers_per_block == [1, 2, 3] and args.pool_every == [1, 2]
