"""``nnlab train``: trains the default MLP or CNN (or the data set's problem) on a named
data set, with checkpoints, resuming and data parallel."""

import argparse
import os

import torch

from .. import data, distributed, training
from ..checkpoints import content_digest
from ..data import DATASETS
from ..optimizers import OPTIMIZERS, make_optimizer
from ..training.scheduling import LR_SCHEDULES, make_schedule
from ..tasks import DEFAULT_LEARNING_RATES, MODEL_KINDS, VERIFY_TOLERANCE, TaskError, make_problem, own_data_problem, verify_gradients
from .checks import UsageError, check_output_file, check_plot_file, learning_rate, positive_int, seed
from .language import LANGUAGE_MODELS, train_text
from .parallel import add_distributed_options, run_data_parallel

__all__ = ["add_parser", "run_train"]

TRAIN_EPILOG = """\
checkpoints and resuming:
  --checkpoint FILE  saves the run after every epoch (atomically, with a checksum);
                     an existing FILE is refused unless --resume FILE or --overwrite.
  --resume FILE      continues the run exactly where it stopped (bit for bit). The
                     checkpoint records the run; a flag not given comes from it.
    kept:            --data, --model, --optimizer, --batch-size, --seed, --lr-schedule
                     and the data themselves (the files, the split): a different value
                     is refused.
    may change:      --lr (applied from the next step, and said), --epochs (the whole
                     run's count, at least the epochs done), --root (same data only),
                     --clip-grad-norm; with --lr-schedule, --lr and --epochs are kept.
    free:            --plot, --checkpoint (default: FILE itself), --no-verify, -q, -v.
    data parallel:   a run of N processes resumes on N processes only.
"""


def data_source(text):
    """A data set's name, or a data file's path (.npz or .csv)."""
    if text in DATASETS or text == "text" or data.is_data_file(text):
        return text
    raise argparse.ArgumentTypeError(
        f"expected one of {', '.join(DATASETS)}, text, or a data file ending in .npz or .csv, got {text!r}"
    )


def add_parser(commands):
    train = commands.add_parser(
        "train",
        help="train an MLP or CNN built from nnlab layers",
        description="Trains an nnlab MLP or CNN: a classifier (digits, MNIST, Fashion-MNIST,\n"
        "CIFAR-10), a regression MLP (diabetes), or a shared encoder with two heads on\n"
        "two-digit images (multi-digits). Before training, the model's gradients on one\n"
        "batch are compared with autograd; training is refused if they disagree\n"
        "(--no-verify skips this). Every output file is checked before training starts.",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument(
        "--data",
        type=data_source,
        metavar="{" + ",".join(DATASETS) + ",text} or FILE.npz|FILE.csv",
        help="dataset (default digits; digits, diabetes and multi-digits are bundled, offline; "
        "text: a character-level language model, see --text), or your own file: .npz with arrays "
        "x (N, ...) and y (N,), or .csv with the features, then the label, one sample a line (a header "
        "line allowed); split 80/20 with --seed",
    )
    train.add_argument(
        "--text",
        metavar="FILE",
        help="with --data text: the UTF-8 text to model (default: the Python documentation that ships with CPython)",
    )
    train.add_argument(
        "--task",
        choices=("classification", "regression"),
        help="what a data file's labels are (default: classification when they are strings, or whole "
        f"numbers with at most {data.MAX_CLASSES} values; else regression)",
    )
    train.add_argument("--root", help="folder holding the MNIST / Fashion-MNIST / CIFAR-10 files")
    train.add_argument(
        "--model", choices=MODEL_KINDS + LANGUAGE_MODELS, help=f"model (default mlp; {', '.join(LANGUAGE_MODELS)} with --data text, default lstm)"
    )
    train.add_argument("--optimizer", choices=tuple(OPTIMIZERS), help="optimizer (default adam)")
    train.add_argument("--lr", type=learning_rate, help="learning rate (default: per optimizer; on --resume, the checkpoint's)")
    train.add_argument(
        "--epochs", type=positive_int, help="epochs of the whole run (default 30; with --data text 5, the transformer 6)"
    )
    train.add_argument(
        "--batch-size", type=positive_int, help="batch size (default 32; with --data text --model transformer, 16)"
    )
    train.add_argument("--seed", type=seed, help="random seed: initial weights and the digits' split (default 0)")
    train.add_argument("--plot", metavar="FILE.png", help="write the learning curves to this image (.png, .pdf, .svg, ...)")
    train.add_argument("--checkpoint", metavar="FILE", help="save the run here after every epoch (best model and training state)")
    train.add_argument("--resume", metavar="FILE", help="continue the run saved in this checkpoint")
    train.add_argument("--overwrite", action="store_true", help="let --checkpoint replace an existing file")
    train.add_argument("--no-verify", action="store_true", help="skip the gradient check before training")
    train.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        help="learning-rate schedule: cosine (down to 0 over the run's epochs), step (x0.1 after each third "
        "of the run), onecycle (up to --lr and down, per step), plateau (x0.1 after 3 epochs without a lower "
        "test loss); default: a constant rate",
    )
    train.add_argument(
        "--clip-grad-norm", type=max_norm, metavar="X", help="clip the gradients to this total 2-norm before every step"
    )
    train.add_argument("-q", "--quiet", action="store_true", help="print only the final result")
    train.add_argument(
        "-v", "--verbose", action="store_true", help="one plain line per epoch even on a terminal, and every layer of the model"
    )
    add_distributed_options(train)
    train.set_defaults(run=run_train)


# What determines a run, with its defaults; --resume takes them from the checkpoint.
RUN_DEFAULTS = {"data": "digits", "root": None, "model": "mlp", "optimizer": "adam", "batch_size": 32, "seed": 0, "epochs": 30}
# What a resumed run may not change: it decides what the run has trained on and with.
FIXED_ON_RESUME = ("data", "model", "optimizer", "batch_size", "seed")
# Settings later versions added, absent from older checkpoints' configurations (None).
LATER_SETTINGS = ("lr_schedule", "clip_grad_norm")


def silent(*args):
    pass


def model_line(model):
    """'model: MLP, 7 layers, 50,890 parameters (-v lists them)'."""
    layers = len(getattr(model, "sequence", ()))
    count = sum(param.numel() for param, _ in model.params())
    size = f", {layers} layers" if layers else ""
    return f"model: {type(model).__name__}{size}, {count:,} parameters (-v lists them)"


def max_norm(text):
    value = learning_rate(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def schedule_of(config, optimizer, steps_per_epoch):
    """The --lr-schedule's LearningRateScheduler callback over the run, or None."""
    if config["lr_schedule"] is None:
        return None
    return make_schedule(config["lr_schedule"], optimizer, config["epochs"], steps_per_epoch)


def flag(key):
    return "--" + key.replace("_", "-")


def run_settings(args, saved):
    """The run's settings: the flags given, else (on --resume) the checkpoint's, else the
    defaults. A flag that contradicts a FIXED_ON_RESUME setting is refused."""
    if saved is None:
        settings = {key: default if getattr(args, key) is None else getattr(args, key) for key, default in RUN_DEFAULTS.items()}
        return dict(settings, **{key: getattr(args, key) for key in LATER_SETTINGS})
    config = saved["config"]
    if not isinstance(config, dict) or not set(RUN_DEFAULTS) | {"data_fingerprint"} <= set(config):
        raise UsageError(
            f"--resume {args.resume}: holds no `nnlab train` run configuration "
            "(saved by fit() without config=...), so this command cannot tell how to continue it"
        )
    settings = {}
    for key in RUN_DEFAULTS:
        given = getattr(args, key)
        if key in FIXED_ON_RESUME and given is not None and given != config[key]:
            raise UsageError(
                f"{flag(key)} {given} contradicts --resume {args.resume}, a run with {flag(key)} {config[key]}: "
                "a resumed run keeps its data, split, model, optimizer and batch size (start a new run instead)"
            )
        settings[key] = config[key] if given is None else given
    if settings["epochs"] < saved["epoch"]:
        raise UsageError(
            f"--epochs {settings['epochs']}: {args.resume} already holds {saved['epoch']} epochs "
            "(--epochs counts the whole run)"
        )
    settings["lr_schedule"] = scheduled = config.get("lr_schedule")
    if args.lr_schedule is not None and args.lr_schedule != scheduled:
        raise UsageError(f"--lr-schedule {args.lr_schedule} contradicts --resume {args.resume}, a run with --lr-schedule {scheduled}")
    if scheduled is not None and (args.lr is not None or settings["epochs"] != config["epochs"]):
        what = "--lr" if args.lr is not None else "--epochs"
        raise UsageError(f"{what}: {args.resume} runs the {scheduled} schedule, which sets the rate for its epochs; resume it as it was")
    settings["clip_grad_norm"] = config.get("clip_grad_norm") if args.clip_grad_norm is None else args.clip_grad_norm
    return settings


def checkpoint_target(args):
    """Where the run saves its checkpoint (a resumed run: into its own file unless
    --checkpoint names another), checked: writable, and not another run's file unless
    --overwrite."""
    target = args.checkpoint if args.checkpoint is not None else args.resume
    if target is None:
        return None
    check_output_file("--checkpoint", target)
    if os.path.exists(target) and not args.overwrite and not continues(target, args.resume):
        raise UsageError(
            f"--checkpoint {target}: the file exists (an earlier run's checkpoint); "
            f"--resume {target} continues that run, --overwrite starts a new one over it"
        )
    return target


def continues(target, resume):
    """Whether the checkpoint ``target`` is the file the run resumes from."""
    return resume is not None and os.path.exists(resume) and os.path.samefile(target, resume)


def run_train(args):
    if args.data == "text" and args.task is not None:
        raise UsageError(f"--task {args.task}: for a data file (--data FILE.npz or FILE.csv); --data text models text")
    if args.data == "text":
        return train_text(args)
    if args.text is not None:
        raise UsageError("--text is taken with --data text only")
    if args.model in LANGUAGE_MODELS:
        raise UsageError(f"--model {args.model} is a language model: it takes --data text")
    if args.distributed:
        return run_data_parallel(args, train_model)
    return train_model(args, None)


def check_not_the_checkpoint(args, target):
    """UsageError if --plot names the file the run saves its checkpoint in."""
    if target is not None and os.path.realpath(args.plot) == os.path.realpath(target):
        source = "--checkpoint" if args.checkpoint is not None else "--resume"
        raise UsageError(f"--plot {args.plot}: is the run's checkpoint ({source} {target}); give the picture another name")


def train_model(args, world):
    """nnlab train in one process (``world`` None), or in this process of a data-parallel
    run (``world``, a ``distributed.World``)."""
    saved = training.load_checkpoint(args.resume) if args.resume is not None else None
    settings = run_settings(args, saved)
    check_world_size(args, saved, world)
    target = checkpoint_target(args)
    if args.plot is not None:
        check_plot_file(args.plot)
        check_not_the_checkpoint(args, target)

    torch.manual_seed(settings["seed"])
    task = args.task if args.task is not None or saved is None else saved["config"].get("task")
    split, own = checked_split(settings["data"], settings["root"], settings["seed"], task)
    config = dict(settings, data_fingerprint=content_digest(list(split)))
    if own is not None:
        config["task"] = own.task
    if settings["root"] is not None:
        config["root"] = os.path.abspath(settings["root"])
    if saved is not None and config["data_fingerprint"] != saved["config"]["data_fingerprint"]:
        raise UsageError(
            f"--resume {args.resume}: the {settings['data']} data differ from the ones the run trained on "
            "(other files, or another split); a resumed run must see the same data"
        )
    problem = problem_for(settings["model"], settings["data"], split, own)
    model, loss_fn = problem.model, problem.loss_fn
    learn_rate = DEFAULT_LEARNING_RATES[settings["optimizer"]] if args.lr is None else args.lr
    optimizer = make_optimizer(settings["optimizer"], model.params(), learn_rate=learn_rate)
    say = print if not args.quiet else silent
    say(problem.description)
    say(model if args.verbose else model_line(model))

    if not args.no_verify:
        batch_size = settings["batch_size"]
        worst = verify_gradients(model, loss_fn, problem.x_train[:batch_size], problem.y_train[:batch_size])
        say(f"gradient check on one batch: worst relative error {worst:.1e} against autograd (float64)")
        if not worst <= VERIFY_TOLERANCE:
            print(f"refusing to train: the error is above {VERIFY_TOLERANCE:g} (--no-verify skips this check)")
            return 1

    if world is None:
        train_batches = data.Batches(problem.x_train, problem.y_train, settings["batch_size"], shuffle=True)
        test_batches = data.Batches(problem.x_test, problem.y_test, settings["batch_size"])
        trainer = training.LayerTrainer(model, loss_fn, optimizer, clip_grad_norm=config["clip_grad_norm"])
    else:
        train_batches, test_batches, trainer = data_parallel_training(problem, optimizer, config)
    schedule = schedule_of(config, optimizer, len(train_batches))
    resume = None
    if saved is not None:
        resume = trainer.load_checkpoint(args.resume)
        announce_resume(args, settings, saved, optimizer)
    fit = trainer.fit(
        train_batches,
        test_batches,
        settings["epochs"],
        checkpoints=target,
        resume=resume,
        config=config,
        callbacks=schedule,
        verbose=0 if args.quiet else 2 if args.verbose else 1,
    )
    if args.plot and (world is None or world.is_main):
        from ..plot import plot_fit

        figure, _ = plot_fit(fit, legend=f"{settings['model']}, {settings['optimizer']}")
        figure.savefig(args.plot)
        print(f"learning curves written to {args.plot}")
    print(problem.summary(fit))
    return 0


def checked_split(name, root, seed, task):
    """``(split, own)``: the data set's split (``data.load_split``), its --root checked
    first, and None; or a data file's (``data.load_data_file``) and its ``OwnData``."""
    if data.is_data_file(name):
        if root is not None:
            raise UsageError(f"--root {root}: --data {name} is a file; --root is for MNIST, Fashion-MNIST and CIFAR-10")
        own = data.load_data_file(name, seed, task)
        return own[:4], own
    if task is not None:
        raise UsageError(f"--task {task}: for a data file (--data FILE.npz or FILE.csv); --data {name} has its own task")
    if DATASETS[name].needs_root:
        if root is None:
            raise UsageError(f"--data {name} needs --root DIR, the folder that holds its files")
        if not os.path.isdir(root):
            raise UsageError(f"--root {root}: no such folder")
    return data.load_split(name, root, seed), None


def problem_for(kind, name, split, own):
    """The data set's (or file's ``own`` data's) Problem for a ``kind`` model; UsageError
    if it cannot use one."""
    try:
        return own_data_problem(kind, name, own) if own is not None else make_problem(kind, name, *split)
    except TaskError as error:
        raise UsageError(f"--data {error}; drop --model {kind}") from None


def announce_resume(args, settings, saved, optimizer):
    """Says where the run continues, and applies (and says) a new learning rate."""
    print(f"resuming {args.resume} after epoch {saved['epoch']} of {settings['epochs']}")
    if settings["epochs"] != saved["config"]["epochs"]:
        print(f"training to {settings['epochs']} epochs (the run was started for {saved['config']['epochs']})")
    if args.lr is not None and args.lr != optimizer.learn_rate:
        print(f"learning rate {args.lr:g} from now on (the run used {optimizer.learn_rate:g})")
        optimizer.learn_rate = args.lr


def check_world_size(args, saved, world):
    """UsageError, before any work, unless the checkpoint to resume was trained by as
    many processes as this run has (the trainer would refuse it too, later)."""
    if saved is None:
        return
    trained_by = saved.get("world_size", 1)
    running = 1 if world is None else world.world_size
    if trained_by != running:
        how = f"torchrun --nproc-per-node {trained_by} -m nnlab train --distributed --resume {args.resume}"
        raise UsageError(
            f"--resume {args.resume}: the run was trained by {trained_by} process{'es' if trained_by > 1 else ''} "
            f"in data parallel, this run has {running}; resume it with as many ({how if trained_by > 1 else 'without torchrun'})"
        )


def data_parallel_training(problem, optimizer, config):
    """This process's training shards (a shared permutation per epoch, padded to equal
    shards), its test shard (every test sample counted once) and a DistributedTrainer,
    once every process is found to hold the same data."""
    distributed.check_same(f"the {config['data']} data (files, split)", config["data_fingerprint"])
    batch_size = config["batch_size"]
    train_batches = distributed.ShardedBatches(problem.x_train, problem.y_train, batch_size, shuffle=True, seed=config["seed"])
    test_batches = distributed.ShardedBatches(problem.x_test, problem.y_test, batch_size, uneven="keep")
    trainer = distributed.DistributedTrainer(problem.model, problem.loss_fn, optimizer, clip_grad_norm=config["clip_grad_norm"])
    return train_batches, test_batches, trainer
