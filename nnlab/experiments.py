"""Experiments as the CS236781 course runs them: one configured training run of a CNN or
ResNet per call, its result in a JSON file that holds everything needed to reproduce it,
and families of runs overlaid on one figure.

A configuration is the course's: K (``filters_per_layer``), L (``layers_per_block``), P
(``pool_every``) and H (``hidden_dims``). The convolutions' channels are each K
repeated L times (``K=[32, 64], L=2`` gives 32, 32, 64, 64), a pooling layer follows
every P convolutions, and the dense part has the widths H. ``model_type`` is

* ``"cnn"``: ``nnlab.models.CNN``;
* ``"resnet"``: ``nnlab.models.ResNet``, each group of P convolutions one residual block;
* ``"resnet_bottleneck"``: the same ResNet with ``bottleneck=True``: a group of P >= 3
  convolutions whose input has as many channels as its output becomes a bottleneck
  block (1x1 down, 3x3 inside, 1x1 up). A configuration in which no group can be one
  is refused rather than silently trained as a plain ResNet.

Result files
------------
``cnn_experiment`` writes ``{out_dir}/{run_name}_L{L}_K{K joined by '-'}.json``
(``exp1_1_L2_K32-64.json``) atomically, and never over an existing file unless told
to. It is a JSON object with

* ``"config"``: every argument of ``cnn_experiment``, defaults resolved (the seed
  drawn when none was given, ``bs_test``, the device) and the model keyword arguments,
  so that ``cnn_experiment(**config)`` runs the same experiment again;
* ``"results"``: the ``FitResult`` as a dict (``fit_result._asdict()``, every field);
* ``"environment"``: nnlab, torch and Python versions, the platform and torch's
  thread count (a rerun uses the same count: summation order depends on it);
* ``"data"``: the data set, its sizes and a SHA-256 fingerprint of its content;
* ``"model"``: the model's class, channels, parameter count and layers;
* ``"format"``, ``"started"`` (UTC) and ``"seconds"``.

Floats are written in their shortest exact form, so the numbers read back are the
numbers trained. ``load_experiment`` reads a file back as ``(config, fit_result)`` and
``rerun_experiment`` trains its configuration again and returns the new record: on the
same machine, the same FitResult to the last digit (``fit_differences`` says where two
differ).

Data
----
``data="digits"``: scikit-learn's bundled 8x8 digits (offline), split 80/20 with the
fixed seed ``DIGITS_SPLIT_SEED`` so that every run of a sweep is tested on the same
images. ``data="cifar10"``: the CIFAR-10 python batches in the folder ``root``. Both
are standardized per pixel with the training statistics. The run's ``seed`` seeds
torch and Python's ``random`` before the model is built: it fixes the initial weights,
the batch order and dropout.

Data parallel
-------------
Run in every process of a ``torchrun`` launch after ``nnlab.distributed.setup()``
(``nnlab experiment run ... --distributed``), an experiment trains data-parallel:
``bs_train`` and ``bs_test`` per process, the training order from the run's seed
(a drawn seed is rank 0's), the figures of the global batches; rank 0 locks the
configuration and writes the result file, whose ``environment`` records
``world_size``.
"""

import contextlib
import glob
import inspect
import json
import math
import os
import platform
import random
import re
import time
from datetime import datetime, timezone

import torch

from . import __version__, data, distributed
from .checkpoints import content_digest, write_atomically
from .layers import CrossEntropyLoss, ResidualBottleneckBlock
from .models import CNN, ResNet, check_int_list, check_positive_int
from .optimizers import OPTIMIZERS, make_optimizer
from .training import FitResult, LayerTrainer

try:
    import fcntl
except ImportError:  # not POSIX: runs of one configuration are not locked against each other
    fcntl = None

__all__ = [
    "DATASETS",
    "DIGITS_SPLIT_SEED",
    "EXPERIMENT_DEFAULTS",
    "EXPERIMENT_KEYS",
    "LETTERS",
    "MODEL_TYPES",
    "RESULT_FORMAT",
    "ExperimentError",
    "channels",
    "cnn_experiment",
    "config_name",
    "configuration_lock",
    "data_parallel_training",
    "differences",
    "environment",
    "experiment_model",
    "fit_differences",
    "load_data",
    "load_experiment",
    "model_options",
    "num_params",
    "plot_exp_results",
    "read_result",
    "rerun_experiment",
    "resolve_config",
    "resolve_device",
    "result_path",
    "run_experiment",
    "save_result",
    "short",
    "show",
    "stem",
]

RESULT_FORMAT = "nnlab-experiment-1"
MODEL_TYPES = ("cnn", "resnet", "resnet_bottleneck")
# The data sets experiments train on, with their image sizes, so that a model is checked
# before any data are loaded.
DATASETS = {name: data.DATASETS[name].sample_shape for name in ("digits", "cifar10")}
NUM_CLASSES = 10
DIGITS_SPLIT_SEED = 0
# Course letters for the configuration keys, in legends and names (in this order, L and K
# as in the file names).
LETTERS = {"layers_per_block": "L", "filters_per_layer": "K", "pool_every": "P", "hidden_dims": "H"}


class ExperimentError(ValueError):
    """A configuration that cannot run, or a file that is not an experiment result."""


# Running -----------------------------------------------------------------------------------


def cnn_experiment(
    run_name,
    out_dir="./results",
    seed=None,
    device=None,
    bs_train=128,
    bs_test=None,
    batches=None,
    epochs=100,
    early_stopping=3,
    checkpoints=None,
    lr=1e-3,
    reg=1e-3,
    filters_per_layer=[64],  # noqa: B006 (the course's signature; never modified)
    layers_per_block=2,
    pool_every=2,
    hidden_dims=[1024],  # noqa: B006
    model_type="cnn",
    data="digits",
    root=None,
    optimizer="adam",
    *,
    overwrite=False,
    verbose=True,
    **kw,
):
    """Trains one configuration and writes its result file; returns the file's path.

    Args:
        run_name: the file's name starts with it (no folder separators).
        out_dir: folder of the result file (created if missing).
        seed: seeds torch and Python's ``random``; None draws one, recorded in the file.
        device: where to train ('cpu', 'cuda', ...); None: 'cuda' if available, else 'cpu'.
        bs_train: training batch size. bs_test: test batch size (None: bs_train // 4,
            at least 1, as the course).
        batches: batches per epoch and phase (None: all).
        epochs: maximal number of epochs. early_stopping: stop after this many epochs
            without a lower test loss (None: never).
        checkpoints: a file path: ``fit``'s checkpoint file (best model and training
            state), refused if it exists unless ``overwrite``.
        lr, reg: the optimizer's learning rate and L2 regularization (weight decay).
        filters_per_layer (K), layers_per_block (L), pool_every (P), hidden_dims (H),
            model_type ('cnn', 'resnet', 'resnet_bottleneck'): the model (see the
            module docstring).
        data: 'digits' (bundled, offline) or 'cifar10' (from the folder ``root``).
        optimizer: 'adam', 'sgd', 'momentum' or 'rmsprop' (nnlab's).
        overwrite: replace an existing result (and checkpoint) file; otherwise one is
            refused before training. Not recorded (it says nothing about the run).
        verbose: fit's progress level on stderr (0, 1 or 2; True is 1). Not recorded.
        kw: keyword arguments of the model builder (``activation_type``,
            ``pooling_type``, ``pooling_params``, ``batchnorm``, ``dropout``,
            ``conv_params``, ...), recorded with the configuration; they must be JSON
            values (a tuple would come back as a list, which the builders read
            differently, so it is refused).

    Raises:
        ExperimentError: a bad argument, a model that cannot be built (pooling shrinks
            the image to nothing), an existing result file, or another process
            running the same configuration; all before any training.
    """
    arguments = {name: value for name, value in locals().items() if name in EXPERIMENT_KEYS}
    config = resolve_config(arguments, kw)
    world = distributed.current_world()
    if seed is None:
        config["seed"] = distributed.from_rank_0(config["seed"])  # one drawn seed for all processes
    distributed.check_same_settings("the experiment's configuration", config)
    path = result_path(config)
    if checkpoints is not None and os.path.realpath(checkpoints) == os.path.realpath(path):
        raise ExperimentError(f"checkpoints {checkpoints}: is the result file; give the checkpoint another name")
    os.makedirs(config["out_dir"], exist_ok=True)
    # In data parallel, rank 0 holds the lock and writes the result.
    with configuration_lock(path) if world.is_main else contextlib.nullcontext():
        if os.path.exists(path) and not overwrite:
            raise ExperimentError(
                f"{path}: the result file exists (an earlier run; its name holds the run name, L and K "
                "only); remove it, choose another run name, or overwrite it"
            )
        if checkpoints is not None and os.path.exists(checkpoints) and not overwrite:
            raise ExperimentError(f"checkpoints {checkpoints}: the file exists; remove it or overwrite it")
        record = run_experiment(config, verbose=verbose)
        if world.is_main:
            save_result(path, record)
    distributed.synchronize("the barrier after writing the result")
    return path


def run_experiment(config, root=None, verbose=False):
    """Trains the configuration ``config`` (as ``resolve_config`` returns it) and
    returns its record, the dict a result file holds (``"results"``: the FitResult);
    writes no result file.
    ``root`` (if given) replaces ``config['root']`` as the folder of the data."""
    started = datetime.now(timezone.utc)
    clock = time.perf_counter()
    torch.manual_seed(config["seed"])
    random.seed(config["seed"])
    model = experiment_model(config)
    x_train, y_train, x_test, y_test = load_data(config["data"], config["root"] if root is None else root)
    data_record = {
        "name": config["data"],
        "train_samples": len(x_train),
        "test_samples": len(x_test),
        "in_size": list(x_train.shape[1:]),
        "fingerprint": content_digest([x_train, y_train, x_test, y_test]),
    }
    if tuple(x_train.shape[1:]) != DATASETS[config["data"]]:
        raise ExperimentError(
            f"{config['data']}: expected images of shape {DATASETS[config['data']]}, the files hold {tuple(x_train.shape[1:])}"
        )
    x_train, x_test = data.standardize(x_train, x_test)
    optimizer = make_optimizer(config["optimizer"], model.params(), learn_rate=config["lr"], reg=config["reg"])
    if distributed.current_world().world_size == 1:
        dl_train = data.Batches(x_train, y_train, config["bs_train"], shuffle=True)
        dl_test = data.Batches(x_test, y_test, config["bs_test"])
        trainer = LayerTrainer(model, CrossEntropyLoss(), optimizer, device=config["device"])
    else:
        distributed.check_same(f"the {config['data']} data", data_record["fingerprint"])
        dl_train, dl_test, trainer = data_parallel_training(config, model, optimizer, x_train, y_train, x_test, y_test)
    fit = trainer.fit(
        dl_train,
        dl_test,
        config["epochs"],
        checkpoints=config["checkpoints"],
        early_stopping=config["early_stopping"],
        config=config,
        max_batches=config["batches"],
        verbose=verbose,
    )
    return {
        "format": RESULT_FORMAT,
        "config": config,
        "results": fit,
        "environment": environment(),
        "data": data_record,
        "model": model_record(model),
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - clock, 3),
    }


def data_parallel_training(config, model, optimizer, x_train, y_train, x_test, y_test):
    """(training shards, test shards, DistributedTrainer) of this process of a
    data-parallel run (``nnlab.distributed``): ``bs_train`` and ``bs_test`` per process,
    the training permutation drawn from the run's seed, each process on its own GPU
    when the run is on CUDA."""
    world = distributed.current_world()
    device = world.device if config["device"].startswith("cuda") else config["device"]
    dl_train = distributed.ShardedBatches(x_train, y_train, config["bs_train"], shuffle=True, seed=config["seed"])
    dl_test = distributed.ShardedBatches(x_test, y_test, config["bs_test"], uneven="keep")
    trainer = distributed.DistributedTrainer(model, CrossEntropyLoss(), optimizer, device=device)
    return dl_train, dl_test, trainer


def environment():
    """The versions and settings a rerun needs to match to give the same numbers (the
    number of data-parallel processes too: ``bs_train`` is per process)."""
    return {
        "nnlab": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "world_size": distributed.current_world().world_size,
    }


def model_record(model):
    return {
        "class": type(model).__name__,
        "channels": list(model.channels),
        "num_params": num_params(model),
        "layers": str(model.sequence).splitlines(),
    }


def num_params(model):
    """How many numbers the model trains (a shared parameter counts once)."""
    return sum(param.numel() for param, _ in model.params())


# Configurations ------------------------------------------------------------------------------


def resolve_config(arguments, kw=None):
    """The full configuration: ``arguments`` (cnn_experiment's, by name) checked, with the
    seed drawn if None, ``bs_test`` and ``device`` resolved, lists as lists, and the
    model keyword arguments ``kw`` after them. ExperimentError names a bad argument."""
    config = dict(arguments)
    run_name = config["run_name"]
    if not isinstance(run_name, str) or not run_name or os.sep in run_name or (os.altsep or os.sep) in run_name:
        raise ExperimentError(f"cnn_experiment: run_name must be a file name (no folders), got {run_name!r}")
    try:
        for name in ("bs_train", "epochs", "layers_per_block", "pool_every"):
            check_positive_int("cnn_experiment", name, config[name])
        for name in ("bs_test", "batches", "early_stopping"):
            if config[name] is not None:
                check_positive_int("cnn_experiment", name, config[name])
        config["filters_per_layer"] = check_int_list("cnn_experiment", "filters_per_layer", config["filters_per_layer"], allow_empty=False)
        config["hidden_dims"] = check_int_list("cnn_experiment", "hidden_dims", config["hidden_dims"])
    except ValueError as error:
        raise ExperimentError(str(error)) from None
    for name in ("lr", "reg"):
        value = config[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
            raise ExperimentError(f"cnn_experiment: {name} must be a finite number >= 0, got {value!r}")
    for name, choices in (("model_type", MODEL_TYPES), ("data", tuple(DATASETS)), ("optimizer", tuple(OPTIMIZERS))):
        if config[name] not in choices:
            raise ExperimentError(f"cnn_experiment: {name} must be one of {list(choices)}, got {config[name]!r}")
    if config["data"] != "digits" and config["root"] is None:
        raise ExperimentError(f"cnn_experiment: data {config['data']!r} needs root, the folder that holds its files")
    seed = config["seed"]
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little") >> 1  # from the OS: the seeded RNGs stay untouched
    elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ExperimentError(f"cnn_experiment: seed must be None or an int from 0 to 2**64 - 1, got {seed!r}")
    config["seed"] = seed
    if config["bs_test"] is None:
        config["bs_test"] = max(config["bs_train"] // 4, 1)
    config["device"] = resolve_device(config["device"])
    for name, what in (("out_dir", "a folder path"), ("checkpoints", "a file path"), ("root", "a folder path")):
        if config[name] is not None:
            if not isinstance(config[name], (str, os.PathLike)):
                raise ExperimentError(f"cnn_experiment: {name} must be {what} (a string) or None, got {config[name]!r}")
            config[name] = os.fspath(config[name])
    kw = dict(kw or {})
    clashes = sorted(set(kw) & set(EXPERIMENT_KEYS))
    if clashes:
        raise ExperimentError(f"cnn_experiment: {clashes} given twice")
    for name, value in kw.items():
        if json.loads(json.dumps(value)) != value:
            raise ExperimentError(
                f"cnn_experiment: model argument {name}={value!r} cannot be recorded exactly in JSON "
                "(tuples come back as lists, which the builders read differently); give JSON values"
            )
    config.update(kw)
    return config


def resolve_device(device):
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ExperimentError(f"cnn_experiment: device {device!r} is not a torch device ({error})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ExperimentError(f"cnn_experiment: device {device!r}: this machine's torch has no CUDA device")
    return str(resolved)


def model_options(config):
    """The model builder's keyword arguments recorded in ``config``."""
    return {name: value for name, value in config.items() if name not in EXPERIMENT_KEYS}


def channels(config):
    """Each of K repeated L times, as the course builds the conv channels."""
    return [k for k in config["filters_per_layer"] for _ in range(config["layers_per_block"])]


def experiment_model(config):
    """The model a configuration describes (a resolved config, or ``config`` from
    ``load_experiment``), built with torch's current RNG for the initial weights.
    ExperimentError naming the configuration if it cannot be built."""
    options = model_options(config)
    builder = CNN if config["model_type"] == "cnn" else ResNet
    if config["model_type"] == "resnet_bottleneck":
        if "bottleneck" in options:
            raise ExperimentError(f"{config_name(config)}: model_type 'resnet_bottleneck' already sets bottleneck")
        options["bottleneck"] = True
    in_size = DATASETS[config["data"]]
    try:
        model = builder(in_size, NUM_CLASSES, channels(config), config["pool_every"], config["hidden_dims"], **options)
    except (ValueError, TypeError) as error:
        raise ExperimentError(f"{config_name(config)}: cannot build this {config['model_type']}: {error}") from None
    if options.get("bottleneck") and not any(isinstance(layer, ResidualBottleneckBlock) for layer in model.sequence):
        raise ExperimentError(
            f"{config_name(config)}: no group of P={config['pool_every']} convolutions can be a bottleneck block "
            "(one needs P >= 3 and as many input channels as output channels); use model_type 'resnet'"
        )
    return model


def config_name(config):
    """``{run_name}_L{L}_K{K joined by '-'}``: the result file's name without '.json'."""
    ks = "-".join(str(k) for k in config["filters_per_layer"])
    return f"{config['run_name']}_L{config['layers_per_block']}_K{ks}"


def result_path(config):
    return os.path.join(config["out_dir"], config_name(config) + ".json")


@contextlib.contextmanager
def configuration_lock(path):
    """Holds an exclusive lock on ``path``'s configuration while it runs (an advisory
    ``flock`` on the hidden file ``.NAME.lock`` next to it, released by the OS if the
    process dies); ExperimentError if another process holds it."""
    if fcntl is None:
        yield
        return
    folder, name = os.path.split(path)
    with open(os.path.join(folder, f".{name}.lock"), "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise ExperimentError(f"{path}: another process (pid {holder}) is running this configuration now") from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        yield


def configuration_busy(path):
    """True while another process holds ``path``'s configuration lock (runs it now)."""
    if fcntl is None:
        return False
    folder, name = os.path.split(path)
    try:
        handle = open(os.path.join(folder, f".{name}.lock"))
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


# Files ----------------------------------------------------------------------------------------


# A JSON list of numbers that indent=2 spreads over lines (a string holds no newline): put on one line.
NUMBER = r"-?(?:[0-9.eE+-]+|NaN|Infinity)"
NUMBER_LIST = re.compile(rf"\[\n\s*((?:{NUMBER},\n\s*)*{NUMBER})\n\s*\]")


def save_result(path, record):
    """Writes ``record`` (what ``run_experiment`` returns) to ``path`` as JSON,
    atomically; its FitResult as a dict of every field."""
    text = json.dumps({**record, "results": record["results"]._asdict()}, indent=2)
    text = NUMBER_LIST.sub(lambda match: "[" + ", ".join(re.split(r"\s*,\s*", match.group(1))) + "]", text)
    write_atomically(path, lambda file: file.write(text.encode() + b"\n"))


def read_result(path):
    """The whole record in the result file ``path``, checked: a JSON object with a
    ``config`` dict and ``results`` that make a FitResult. Files of the course's own
    ``save_experiment`` (``config`` and ``results`` only) are read too.

    Raises:
        FileNotFoundError: no such file.
        ExperimentError: naming the file, when it is not an experiment result.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as file:
            record = json.load(file)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ExperimentError(f"{path}: not an experiment result (not JSON: {error})") from None
    except IsADirectoryError:
        raise ExperimentError(f"{path}: is a folder, not an experiment result file") from None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict) or not isinstance(record.get("results"), dict):
        raise ExperimentError(f"{path}: not an experiment result (expected a JSON object with 'config' and 'results')")
    if record.get("format", RESULT_FORMAT) != RESULT_FORMAT:
        raise ExperimentError(f"{path}: result format {record['format']!r}, this nnlab reads {RESULT_FORMAT!r}")
    record["results"] = fit_result_from(path, record["results"])
    if "environment" in record:
        check_environment(path, record["environment"])
    return record


def check_environment(path, environment):
    """ExperimentError naming the file and the field unless ``environment`` is a JSON
    object whose ``threads`` and ``world_size`` (where present) are ints >= 1."""
    if not isinstance(environment, dict):
        raise ExperimentError(f"{path}: environment must be a JSON object, got {json_kind(environment)}")
    for name in ("threads", "world_size"):
        value = environment.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ExperimentError(f"{path}: environment.{name} must be an int >= 1, got {value!r}")


def json_kind(value):
    """What a JSON value is, for error messages: 'a list', 'a string', ..."""
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")


def is_number_list(values):
    return isinstance(values, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def fit_result_from(path, results):
    """``FitResult(**results)``, with every field the file holds (fields added to
    FitResult later keep their defaults); ExperimentError naming the file otherwise."""
    try:
        fit = FitResult(**results)
    except TypeError as error:
        raise ExperimentError(f"{path}: its 'results' do not make a FitResult ({error})") from None
    count = fit.num_epochs
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ExperimentError(f"{path}: 'results' has num_epochs {count!r}, expected an int >= 0")
    for name in ("train_loss", "train_acc", "test_loss", "test_acc"):
        if not is_number_list(getattr(fit, name)):
            raise ExperimentError(f"{path}: results.{name} must be a list of numbers")
    for name in ("metrics", "steps"):
        records = getattr(fit, name)
        if records is None:
            continue
        if not isinstance(records, dict):
            raise ExperimentError(f"{path}: results.{name} must be a JSON object of lists of numbers, got {json_kind(records)}")
        for key, values in records.items():
            if not is_number_list(values):
                raise ExperimentError(f"{path}: results.{name}[{key!r}] must be a list of numbers, got {short(values)}")
    return fit


def load_experiment(path):
    """``(config, fit_result)`` from a result file that ``cnn_experiment`` wrote.

    ``config`` holds every argument of the run (``cnn_experiment(**config)`` runs it
    again; ``experiment_model(config)`` builds its model); ``fit_result`` is a
    ``nnlab.training.FitResult`` equal, float for float, to the one trained.

    Raises:
        FileNotFoundError: no such file.
        ExperimentError: naming the file, when it is not an experiment result.
    """
    record = read_result(path)
    return record["config"], record["results"]


def rerun_experiment(path, root=None, verbose=False):
    """Trains the configuration in the result file ``path`` again (same seed, same
    thread count) and returns the new record; ``fit_differences(old, new['results'])``
    is empty when it reproduced the run. ``root`` replaces the recorded data folder
    (the data must still be the same: their fingerprint is compared). The rerun writes
    no file, not even the run's checkpoint (``checkpoints`` is None in its config).

    A run trained by N data-parallel processes reruns on N processes only.

    Raises:
        ExperimentError: the file is not a complete nnlab result, the data differ, or
            the number of processes does.
    """
    record = read_result(path)
    for key in ("format", "environment", "data"):
        if key not in record:
            raise ExperimentError(f"{path}: records no {key!r}, so it cannot be rerun (not written by nnlab's cnn_experiment)")
    config = record["config"]
    missing = sorted(set(EXPERIMENT_KEYS) - set(config))
    if missing:
        raise ExperimentError(f"{path}: its config lacks {missing}")
    if not isinstance(record["data"], dict) or not isinstance(record["data"].get("fingerprint"), str):
        raise ExperimentError(f"{path}: data.fingerprint must be a string (the SHA-256 of the data trained on)")
    if "threads" not in record["environment"]:
        raise ExperimentError(f"{path}: records no environment.threads, so it cannot be rerun with the run's thread count")
    trained_by = record["environment"].get("world_size", 1)
    running = distributed.current_world().world_size
    if trained_by != running:
        raise ExperimentError(
            f"{path}: the run was trained by {trained_by} data-parallel process(es), this rerun has {running}; "
            f"rerun it with as many (torchrun --nproc-per-node {trained_by} -m nnlab experiment rerun {path} "
            "--distributed, or without torchrun for 1)"
        )
    arguments = {key: config[key] for key in EXPERIMENT_KEYS}
    arguments["checkpoints"] = None
    threads = torch.get_num_threads()
    torch.set_num_threads(record["environment"]["threads"])
    try:
        resolved = resolve_config(arguments, model_options(config))
    except ExperimentError as error:
        raise ExperimentError(f"{path}: its config: {str(error).removeprefix('cnn_experiment: ')}") from None
    try:
        new = run_experiment(resolved, root, verbose)
    finally:
        torch.set_num_threads(threads)
    if new["data"]["fingerprint"] != record["data"]["fingerprint"]:
        raise ExperimentError(f"{path}: the {config['data']} data differ from those the run was trained on")
    return new


# Where a run's files go: no option of the run itself.
LOCATION_KEYS = ("out_dir", "checkpoints", "root")


def recorded_differences(path, config, ignore=()):
    """Where the result file ``path`` records another configuration than ``config`` (a
    resolved one, whose result would go to ``path``): one line per option,
    ``"epochs: 2 != 3"`` (recorded, then wanted; None for an option one of them lacks),
    the folders of its files and the keys ``ignore`` (a seed each run draws) aside;
    empty when the file holds this configuration's run. ExperimentError naming the
    file if it is not a result."""
    recorded = read_result(path)["config"]
    keys = sorted((recorded.keys() | config.keys()) - set(LOCATION_KEYS) - set(ignore))
    return differences("", {key: recorded.get(key) for key in keys}, {key: config.get(key) for key in keys})


def fit_differences(saved, new):
    """Where two FitResults differ, one line per record, at its first difference:
    ``"test_loss[3]: 0.25 != 0.2500001"``, ``"steps.grad_norm[17]: ..."`` (epochs and
    steps counted from 1); empty when they are equal float for float."""
    return differences("", saved._asdict(), new._asdict())


def differences(name, a, b):
    if a == b:
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        for key in sorted(a.keys() | b.keys()):
            found += differences(f"{name}.{key}" if name else key, a.get(key), b.get(key))
        return found
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        index = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        return [f"{name}[{index + 1}]: {a[index]!r} != {b[index]!r}"]
    return [f"{name}: {short(a)} != {short(b)}"]


def short(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_data(name, root):
    """(x_train, y_train, x_test, y_test) of a data set, images in [0, 1]; the digits
    split with ``DIGITS_SPLIT_SEED``."""
    return data.load_split(name, root, DIGITS_SPLIT_SEED)


# Plots ------------------------------------------------------------------------------------------


def plot_exp_results(pattern, fig=None, legend_key=None, results_dir=None, log_loss=False):
    """Overlays every result file matching the glob ``pattern`` (in natural order by name:
    L2 before L16) on one
    figure in the course's layout (train loss, train accuracy, test loss, test
    accuracy), one line and one legend entry per run.

    Args:
        pattern: a glob pattern, e.g. ``"results/exp1_1_*.json"``, or a list of them.
        fig: a figure this function (or ``plot_fit(..., train_test_overlay=False)``)
            returned, to add the runs to.
        legend_key: the configuration key (or list of keys) whose values name each run:
            ``"layers_per_block"`` gives ``L=2``, ``["model_type", "pool_every"]`` gives
            ``model_type=cnn, P=2``. None: the keys whose values differ between the
            runs (the seed and paths aside), or the file name when none does. Runs
            whose names would coincide get their file name added.
        results_dir: a folder the pattern is relative to (the course's argument).
        log_loss: loss axes on a log scale.

    Returns:
        ``(fig, axes)``, as ``plot_fit`` returns them.

    Raises:
        ExperimentError: a pattern matches no file, a file is not a result, or a run
            lacks a legend key.
    """
    from .plot import plot_fit  # matplotlib loads only when a plot is asked for

    patterns = [pattern] if isinstance(pattern, (str, os.PathLike)) else list(pattern)
    if results_dir is not None:
        patterns = [os.path.join(results_dir, p) for p in patterns]
    paths = set()
    for p in patterns:
        matches = glob.glob(os.fspath(p))
        if not matches:
            raise ExperimentError(f"plot_exp_results: no result file matches {os.fspath(p)}")
        paths.update(matches)
    paths = sorted(paths, key=natural_order)
    runs = [(path, *load_experiment(path)) for path in paths]
    labels = run_labels(runs, legend_key)
    axes = None
    for (_, _, fit), label in zip(runs, labels):
        fig, axes = plot_fit(fit, fig=fig, legend=label, log_loss=log_loss, train_test_overlay=False)
    return fig, axes


# Keys that differ between runs without describing what was compared.
INCIDENTAL_KEYS = ("run_name", "out_dir", "seed", "device", "checkpoints", "root")


def run_labels(runs, legend_key):
    """One legend label per ``(path, config, fit)`` run; see plot_exp_results."""
    if legend_key is None:
        keys = sorted({key for _, config, _ in runs for key in config} - set(INCIDENTAL_KEYS))
        keys = [key for key in keys if len({json.dumps(config.get(key)) for _, config, _ in runs}) > 1]
        keys = [key for key in LETTERS if key in keys] + [key for key in keys if key not in LETTERS]
    else:
        keys = [legend_key] if isinstance(legend_key, str) else list(legend_key)
    labels = []
    for path, config, _ in runs:
        missing = [key for key in keys if key not in config]
        if missing:
            raise ExperimentError(f"{path}: its config has no {missing[0]!r} (legend_key)")
        labels.append(", ".join(f"{LETTERS.get(key, key)}={show(config[key])}" for key in keys) or stem(path))
    shared = {label for label in labels if labels.count(label) > 1}
    return [f"{label} ({stem(path)})" if label in shared else label for label, (path, _, _) in zip(labels, runs)]


def show(value):
    """A configuration value in a legend: lists joined by '-' as in file names."""
    if isinstance(value, list):
        return "-".join(str(item) for item in value)
    return str(value)


def natural_order(path):
    """A sort key that orders the numbers in a name by value (exp_L2 before exp_L16)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", path)]


def stem(path):
    return re.sub(r"\.json$", "", os.path.basename(path))


# Every named argument of cnn_experiment that a configuration records.
EXPERIMENT_KEYS = tuple(
    name
    for name, parameter in inspect.signature(cnn_experiment).parameters.items()
    if parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
)
EXPERIMENT_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(cnn_experiment).parameters.items()
    if name in EXPERIMENT_KEYS and parameter.default is not inspect.Parameter.empty
}
