"""``nnlab experiment run|sweep|plot|rerun``: configured CNN/ResNet runs with JSON result
files; a sweep runs each configuration as ``nnlab experiment run`` in a process of its own."""

import argparse
import itertools
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import NamedTuple, Optional

import torch

from .. import distributed, experiments
from ..optimizers import OPTIMIZERS
from .checks import (
    UsageError,
    add_alias,
    check_output_file,
    check_plot_file,
    learning_rate,
    non_negative_int,
    positive_int,
    probability,
    seed,
)
from .parallel import add_distributed_options, run_data_parallel

__all__ = ["add_parser", "run_experiment_command"]

EXPERIMENT_EPILOG = """\
result files:
  {out}/{name}_L{L}_K{K joined by '-'}.json: every argument of the run (defaults
  resolved), the nnlab and torch versions, and the FitResult. Written atomically; an
  existing one is never replaced silently.

examples (the course's experiment 1.1, on the bundled digits):
  nnlab experiment run -n demo -K 16 32 -L 1 -P 1 -H 64
  nnlab experiment sweep -n exp1_1 -K 32 -K 64 -L 2 4 8 16 -P 8 -H 100 --epochs 20 --jobs 2
  nnlab experiment plot 'results/exp1_1_*.json' --out exp1_1.png
  nnlab experiment rerun results/exp1_1_L2_K32.json
"""


# The options that configure one run besides K, L, P, H and M: (flags, argparse settings).
# The dest is cnn_experiment's argument (or a model keyword argument); the default is
# cnn_experiment's (the seed's is 0, as in every subcommand), so only the options given
# are passed on (and to a sweep's runs).
RUN_OPTIONS = (
    (("-o", "--out"), dict(dest="out_dir", metavar="DIR", help="folder of the result files")),
    (("-s", "--seed"), dict(type=seed, default=0, help="random seed (default 0)")),
    (("-d", "--device"), dict(help="torch device, e.g. cpu or cuda (default: cuda if available)")),
    (("--batch-size",), dict(dest="bs_train", type=positive_int, metavar="N", help="training batch size")),
    (("--bs-test",), dict(type=positive_int, metavar="N", help="test batch size (default: --batch-size // 4)")),
    (("--batches",), dict(type=positive_int, metavar="N", help="batches per epoch and phase (default: all)")),
    (("--epochs",), dict(type=positive_int, metavar="N", help="maximal number of epochs")),
    (("--early-stopping",), dict(type=non_negative_int, metavar="N", help="stop after N epochs without a lower test loss; 0: never")),
    (("--lr",), dict(type=learning_rate, help="learning rate")),
    (("--reg",), dict(type=learning_rate, help="L2 regularization")),
    (("--optimizer",), dict(choices=tuple(OPTIMIZERS), help="nnlab optimizer")),
    (("--data",), dict(choices=tuple(experiments.DATASETS), help="digits (bundled, offline) or cifar10 (from --root)")),
    (("--root",), dict(metavar="DIR", help="folder holding the CIFAR-10 python batches")),
    (("--activation",), dict(dest="activation_type", choices=("relu", "lrelu", "tanh", "sigmoid"), help="activation (default relu)")),
    (("--pooling",), dict(dest="pooling_type", choices=("max", "avg"), help="pooling (default max)")),
    (("--batchnorm",), dict(action="store_true", default=None, help="BatchNorm2d after every convolution")),
    (("--dropout",), dict(type=probability, metavar="RATE", help="Dropout2d probability (default 0)")),
)


def add_parser(commands):
    """``nnlab experiment run|sweep|plot|rerun``."""
    experiment = commands.add_parser(
        "experiment",
        help="configured CNN/ResNet runs (K, L, P, H), JSON results, sweeps, overlay plots",
        description="The course's experiments: a CNN or ResNet built from K (filters per layer), "
        "L (layers per block), P (pool every) and H (hidden dims), each run saved in a JSON "
        "file that reproduces it.",
        epilog=EXPERIMENT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = experiment.add_subparsers(dest="action", metavar="ACTION", required=True)
    run = actions.add_parser(
        "run",
        help="train one configuration and write its result file",
        description="Trains one configuration and writes {out}/{name}_L{L}_K{K}.json.",
        epilog=EXPERIMENT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_configuration_options(run, sweep=False)
    run.add_argument("--checkpoint", dest="checkpoints", metavar="FILE", help="save the best model and training state here")
    add_alias(run, "--checkpoints", dest="checkpoints")
    run.add_argument("--overwrite", action="store_true", help="replace an existing result (and checkpoint) file")
    add_verbosity_options(run)
    add_distributed_options(run)

    sweep = actions.add_parser(
        "sweep",
        help="run the cross product of configurations, each in its own process",
        description="Runs every combination of the -K, -L, -P, -H and -M values, each configuration in its "
        "own process (its output in {out}/logs/), --jobs at a time. A configuration whose result "
        "file holds its run is skipped, so an interrupted sweep resumes where it stopped; a result file "
        "run with other options (another --epochs, --lr, ...) stops the sweep before it runs anything, "
        "naming the options, unless --overwrite, which reruns those configurations. One that cannot "
        "work is reported by name and the sweep goes on; one that another sweep on the same folder is "
        "running is left to it. Exit status 1 if any configuration failed.",
        epilog=EXPERIMENT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_configuration_options(sweep, sweep=True)
    sweep.add_argument("-j", "--jobs", type=positive_int, default=1, help="configurations run at once (default 1)")
    sweep.add_argument("--overwrite", action="store_true", help="rerun configurations whose result files were run with other options")

    plot = actions.add_parser(
        "plot",
        help="overlay result files on one figure",
        description="Overlays every result file matching the patterns (train and test loss and accuracy), "
        "one legend entry per run.",
    )
    plot.add_argument("patterns", nargs="+", metavar="PATTERN", help="result files or glob patterns (quote them)")
    plot.add_argument("--out", required=True, metavar="FILE.png", help="the image to write (.png, .pdf, .svg, ...)")
    plot.add_argument(
        "--legend-key",
        nargs="+",
        metavar="KEY",
        help="configuration keys naming each run, e.g. layers_per_block (default: the keys that differ)",
    )
    plot.add_argument("--log-loss", action="store_true", help="loss on a log scale")

    rerun = actions.add_parser(
        "rerun",
        help="train a result file's configuration again and compare",
        description="Trains the configuration recorded in FILE again (same seed, same thread count) and "
        "compares the FitResult with the recorded one. Exit status 0 if identical to the last digit, 1 if not.",
    )
    rerun.add_argument("file", metavar="FILE", help="a result file")
    rerun.add_argument("--root", metavar="DIR", help="the data's folder, if it moved (the data must be the same)")
    rerun.add_argument("--out", metavar="FILE.json", help="also write the rerun's result here")
    add_verbosity_options(rerun)
    add_distributed_options(rerun)
    for parser in actions.choices.values():
        parser.set_defaults(usage=parser.format_usage, reject=parser.error)
    experiment.set_defaults(run=run_experiment_command)


def add_verbosity_options(parser):
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress, only the result")
    parser.add_argument("-v", "--verbose", action="store_true", help="one plain line per epoch even on a terminal")


def verbosity(args):
    """fit's verbose level of -q and -v: 0, 2, else the default 1."""
    return 0 if args.quiet else 2 if args.verbose else 1


def add_configuration_options(parser, sweep):
    """-n and the run options; K, L, P, H and M take one configuration each (run) or
    the values to combine (sweep: ``-K 32 -K 64`` is two K configurations)."""
    parser.add_argument("-n", "--run-name", required=True, metavar="NAME", help="name of the run and its result file")
    defaults = experiments.EXPERIMENT_DEFAULTS
    many = dict(action="append") if sweep else dict(action=GivenOnce)
    each = " (repeat for more configurations)" if sweep else ""
    values = "+" if sweep else None
    # A sweep adds up the values of a repeated -L, -P or -M (-L 1 -L 2 is -L 1 2).
    several = dict(action="extend") if sweep else dict(action=GivenOnce)
    parser.add_argument(
        "-K", "--filters-per-layer", type=positive_int, nargs="+", metavar="K", **many,
        help=f"filters per conv layer in each block (default {defaults['filters_per_layer']}){each}",
    )
    parser.add_argument(
        "-L", "--layers-per-block", type=positive_int, nargs=values, metavar="L", **several,
        help=f"conv layers per block, each K repeated L times (default {defaults['layers_per_block']})",
    )
    parser.add_argument(
        "-P", "--pool-every", type=positive_int, nargs=values, metavar="P", **several,
        help=f"a pooling layer after every P convs (default {defaults['pool_every']})",
    )
    parser.add_argument(
        "-H", "--hidden-dims", type=positive_int, nargs="+", metavar="H", **many,
        help=f"widths of the hidden dense layers (default {defaults['hidden_dims']}){each}",
    )
    parser.add_argument(
        "-M", "--model-type", choices=experiments.MODEL_TYPES, nargs=values, **several,
        help=f"model (default {defaults['model_type']})",
    )
    threads = "the CPU count divided by --jobs" if sweep else "torch's, the CPU count"
    parser.add_argument(
        "--threads", type=positive_int, metavar="N",
        help=f"torch threads per run (default: 1 on the digits, whose tensors are too small for threads to pay; else {threads})",
    )
    for flags, settings in RUN_OPTIONS:
        settings = dict(settings)
        dest = settings.get("dest", flags[-1].lstrip("-").replace("-", "_"))
        if defaults.get(dest) is not None and "(default" not in settings["help"]:
            settings["help"] += f" (default {defaults[dest]})"
        parser.add_argument(*flags, **settings)
    add_alias(parser, "--out-dir", dest="out_dir")
    add_alias(parser, "--bs-train", dest="bs_train", type=positive_int)


class GivenOnce(argparse.Action):
    """Stores an option of one run's configuration, refusing it a second time (argparse
    would keep the last silently)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest) is not None:
            parser.error(
                f"{option_string} is given twice; a run takes one configuration (-K 4 8 is one K list, "
                "experiment sweep -K 4 -K 8 runs one configuration per -K)"
            )
        setattr(namespace, self.dest, values)


def run_experiment_command(args):
    actions = {"run": experiment_run, "sweep": experiment_sweep, "plot": experiment_plot, "rerun": experiment_rerun}
    try:
        if getattr(args, "distributed", False):
            device = experiments.resolve_device(args.device if args.action == "run" else None)
            return run_data_parallel(args, lambda args, world: actions[args.action](args), device)
        return actions[args.action](args)
    except experiments.ExperimentError as error:
        raise UsageError(str(error)) from None


def run_option_values(args):
    """{dest: value} of the RUN_OPTIONS given on the command line."""
    values = {}
    for flags, settings in RUN_OPTIONS:
        dest = settings.get("dest", flags[-1].lstrip("-").replace("-", "_"))
        if getattr(args, dest) is not None:
            values[dest] = getattr(args, dest)
    if values.get("early_stopping") == 0:
        values["early_stopping"] = None
    return values


def experiment_run(args):
    arguments = run_option_values(args)
    given = ("filters_per_layer", "layers_per_block", "pool_every", "hidden_dims", "model_type", "checkpoints")
    arguments.update({key: getattr(args, key) for key in given if getattr(args, key) is not None})
    if args.checkpoints is not None:
        check_output_file("--checkpoint", args.checkpoints)
    threads = run_threads(args, torch.get_num_threads())
    torch.set_num_threads(threads)
    path = experiments.cnn_experiment(args.run_name, **arguments, overwrite=args.overwrite, verbose=verbosity(args))
    if distributed.current_world().is_main:  # the process that wrote it
        print(f"{path}: {run_summary(experiments.read_result(path))}")
    return 0


def run_threads(args, otherwise):
    """torch threads for a run: --threads, else 1 on the digits (8x8 images: every
    operation is so small that threads cost more than they save), else ``otherwise``."""
    if args.threads is not None:
        return args.threads
    return 1 if (args.data or experiments.EXPERIMENT_DEFAULTS["data"]) == "digits" else otherwise


def run_summary(record):
    fit = record["results"]
    seconds = record.get("seconds")
    accuracy = f"test accuracy {fit.test_acc[-1]:.2f}% (best {max(fit.test_acc):.2f}%)" if fit.test_acc else "no test accuracy"
    timing = f" in {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
    return f"{accuracy} after {fit.num_epochs} epochs{timing}, seed {record['config'].get('seed')}"


def experiment_plot(args):
    check_plot_file(args.out, option="--out")
    fig, _ = experiments.plot_exp_results(args.patterns, legend_key=args.legend_key, log_loss=args.log_loss)
    fig.savefig(args.out)
    runs = len(fig.axes[0].get_lines())
    print(f"{runs} runs plotted to {args.out}")
    return 0


def experiment_rerun(args):
    if args.out is not None:
        check_output_file("--out", args.out)
        if os.path.exists(args.out):
            raise UsageError(f"--out {args.out}: the file exists; choose another name")
    record = experiments.read_result(args.file)
    new = experiments.rerun_experiment(args.file, root=args.root, verbose=verbosity(args))
    for key in ("nnlab", "torch", "threads", "platform"):
        then, now = record["environment"].get(key), new["environment"].get(key)
        if then != now:
            print(f"note: the run had {key} {then}, this rerun {now}: the numbers may differ in the last digits")
    if args.out is not None and distributed.current_world().is_main:
        experiments.save_result(args.out, new)
        print(f"rerun written to {args.out}")
    differences = experiments.fit_differences(record["results"], new["results"])
    if not differences:
        print(f"{args.file}: reproduced: the same FitResult to the last digit ({run_summary(new)})")
        return 0
    print(f"{args.file}: NOT reproduced: {len(differences)} fields differ, first at")
    for line in differences:
        print(f"  {line}")
    return 1


# Sweeps: each configuration is `nnlab experiment run` in a process of its own.


def experiment_sweep(args):
    if args.data == "cifar10" and (args.root is None or not os.path.isdir(args.root)):
        raise UsageError(f"--data cifar10 needs --root DIR, an existing folder (got {args.root})")
    configurations = sweep_configurations(args)
    stale = stale_results(configurations, args.overwrite)
    os.makedirs(os.path.join(args.out_dir or experiments.EXPERIMENT_DEFAULTS["out_dir"], "logs"), exist_ok=True)
    total = len(configurations)
    print(f"sweep {args.run_name}: {total} configurations, {args.jobs} at a time")
    progress = SweepProgress(total)
    pending = []
    for item in configurations:
        if item.problem is not None:
            progress.report(item, f"cannot work: {item.problem}", failed=True)
        elif item.name in stale:
            pending.append(item._replace(argv=item.argv + ["--overwrite"]))
        elif os.path.exists(item.path):
            progress.report(item, f"done already ({item.path}), skipped")
        else:
            pending.append(item)
    running, waiting = {}, []
    previous_handler = signal.signal(signal.SIGTERM, interrupt)
    try:
        while pending or running or waiting:
            while pending and len(running) < args.jobs:
                item = pending.pop(0)
                if holds_its_run(item):  # another sweep on the same folder finished it meanwhile
                    progress.report(item, f"done already ({item.path}), skipped")
                    continue
                running[start_run(item)] = item
            for item in [item for item in waiting if not experiments.configuration_busy(item.path)]:
                waiting.remove(item)
                if holds_its_run(item):
                    progress.report(item, f"done by another process ({item.path})")
                else:
                    pending.append(item)  # the other process failed: run it here
            process = finished_run(running)
            if process is None:
                time.sleep(0.05)
                continue
            item = running.pop(process)
            if process.returncode != 0 and experiments.configuration_busy(item.path):
                waiting.append(item)  # another sweep runs it now; its outcome decides
            elif process.returncode != 0 and holds_its_run(item):
                progress.report(item, f"done by another process ({item.path})")
            else:
                report_run(progress, item, process.returncode)
    except KeyboardInterrupt:
        stop_runs(running)
        missing = [item for item in configurations if item.problem is None and not os.path.exists(item.path)]
        print(
            f"sweep {args.run_name} interrupted: {len(missing)} configurations have no result yet; "
            "the same command runs them (the others are skipped)"
        )
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    print(f"sweep {args.run_name}: {progress.summary()}")
    return 1 if progress.failed else 0


def stale_results(configurations, overwrite):
    """The names of the configurations whose result files hold runs of other options:
    to rerun with ``overwrite``, else a UsageError naming each file and option."""
    reasons = {item.name: recorded_otherwise(item) for item in configurations if item.problem is None and os.path.exists(item.path)}
    stale = [item for item in configurations if reasons.get(item.name)]
    if stale and not overwrite:
        raise UsageError(
            f"{len(stale)} result file(s) hold runs of other options (recorded != this sweep's): "
            + "; ".join(f"{item.path}: {reasons[item.name]}" for item in stale)
            + ". --overwrite reruns those configurations, replacing their files; or choose another -n or -o"
        )
    return {item.name for item in stale}


def recorded_otherwise(item):
    """Why the result file of ``item`` is not its run: the options it was run with
    otherwise, or why it is no result; '' when it holds the run."""
    try:
        return ", ".join(experiments.recorded_differences(item.path, item.config))
    except experiments.ExperimentError as error:
        return str(error).removeprefix(f"{item.path}: ")


def holds_its_run(item):
    return os.path.exists(item.path) and not recorded_otherwise(item)


class SweepItem(NamedTuple):
    name: str  # the result file's name without .json
    path: str
    argv: list  # `nnlab experiment run` arguments
    log: str
    problem: Optional[str]  # why the configuration cannot work; None if it can
    config: dict  # the configuration its result file must record


def sweep_configurations(args):
    """One SweepItem per combination of the -K, -L, -P, -H and -M values, in that
    nesting order (K outermost). A dimension with several values other than K and L
    adds itself to the run name (``exp_P2``), so every configuration has its own file."""
    defaults = experiments.EXPERIMENT_DEFAULTS
    dimensions = {
        "filters_per_layer": args.filters_per_layer or [defaults["filters_per_layer"]],
        "layers_per_block": args.layers_per_block or [defaults["layers_per_block"]],
        "pool_every": args.pool_every or [defaults["pool_every"]],
        "hidden_dims": args.hidden_dims or [defaults["hidden_dims"]],
        "model_type": args.model_type or [defaults["model_type"]],
    }
    options = run_option_values(args)
    threads = run_threads(args, max(1, (os.cpu_count() or 1) // args.jobs))
    items = []
    for combination in itertools.product(*dimensions.values()):
        values = dict(zip(dimensions, combination))
        run_name = args.run_name
        for key in ("model_type", "pool_every", "hidden_dims"):
            if len(dimensions[key]) > 1:
                run_name += f"_{experiments.LETTERS.get(key, '')}{experiments.show(values[key])}"
        arguments = dict(options, run_name=run_name, **values)
        config = experiments.resolve_config({**defaults, **arguments}, model_options(options))
        name = experiments.config_name(config)
        if any(item.name == name for item in items):
            raise UsageError(f"configuration {name} is given twice")
        try:
            experiments.experiment_model(config)
            problem = None
        except experiments.ExperimentError as error:
            problem = str(error).removeprefix(f"{name}: ")
        argv = ["experiment", "run", "-n", run_name, "-M", values["model_type"]]
        argv += ["-K", *map(str, values["filters_per_layer"]), "-L", str(values["layers_per_block"])]
        argv += ["-P", str(values["pool_every"]), "-H", *map(str, values["hidden_dims"])]
        argv += option_arguments(args) + ["--threads", str(threads), "--quiet"]
        log = os.path.join(config["out_dir"], "logs", name + ".log")
        items.append(SweepItem(name, experiments.result_path(config), argv, log, problem, config))
    return items


def model_options(values):
    """The model keyword arguments among run option values."""
    return {key: value for key, value in values.items() if key not in experiments.EXPERIMENT_KEYS}


def option_arguments(args):
    """The RUN_OPTIONS given on the command line, as arguments again."""
    arguments = []
    for flags, settings in RUN_OPTIONS:
        value = getattr(args, settings.get("dest", flags[-1].lstrip("-").replace("-", "_")))
        if value is None:
            continue
        arguments.append(flags[-1])
        if value is not True:
            arguments.append(str(value))
    return arguments


class SweepProgress:
    """Numbers the lines of finished configurations and counts the outcomes."""

    def __init__(self, total):
        self.total = total
        self.lines = 0
        self.failed = 0
        self.skipped = 0
        self.ran = 0

    def report(self, item, text, failed=False, ran=False):
        self.lines += 1
        self.failed += failed
        self.ran += ran
        self.skipped += not (failed or ran)
        print(f"[{self.lines}/{self.total}] {item.name}: {text}", flush=True)

    def summary(self):
        return f"{self.ran} run, {self.skipped} skipped (done before), {self.failed} failed"


def interrupt(signum, frame):
    raise KeyboardInterrupt


def start_run(item):
    """``nnlab experiment run`` for one configuration in a child process, its output
    appended to the configuration's log. On Linux the child is killed with its parent
    (PR_SET_PDEATHSIG), so a sweep killed outright leaves no run behind."""
    with open(item.log, "ab") as log:
        log.write(f"$ nnlab {shlex.join(item.argv)}\n".encode())
        log.flush()
        return subprocess.Popen(
            [sys.executable, "-m", "nnlab", *item.argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent(),
        )


def die_with_parent():
    """A preexec_fn that asks Linux to SIGKILL the child when this process dies (None
    elsewhere). prctl is looked up here, in the parent, so the child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()
    set_parent_death_signal = 1  # PR_SET_PDEATHSIG

    def setup():
        prctl(set_parent_death_signal, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return setup


def finished_run(running):
    """One of the running processes that has finished; None if none has."""
    for process in running:
        if process.poll() is not None:
            return process
    return None


def report_run(progress, item, status):
    if status == 0 and os.path.exists(item.path):
        progress.report(item, f"{run_summary(experiments.read_result(item.path))} -> {item.path}", ran=True)
    else:
        progress.report(item, f"FAILED (exit status {status}): {last_error(item.log)}; log {item.log}", failed=True)


def last_error(log):
    """The error line of a failed run's log (its last line if it has none)."""
    with open(log, encoding="utf-8", errors="replace") as file:
        lines = [line.strip() for line in file if line.strip()]
    errors = [line for line in lines if line.startswith("nnlab ")]
    return errors[-1] if errors else (lines[-1] if lines else "no output")


def stop_runs(running):
    """Ends the running configurations (a result file is written atomically, so a run
    ended early leaves none) and waits for them."""
    for process in running:
        process.terminate()
    for process in running:
        process.wait()
