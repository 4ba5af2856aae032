"""``nnlab train --data text``: a character-level language model (the second main job), and
``nnlab generate``: text sampled from a saved one."""

import argparse
import math
import os

from .. import language
from .checks import UsageError, check_output_file, check_plot_file, non_negative_int

__all__ = ["LANGUAGE_MODELS", "add_generate_parser", "run_generate", "train_text"]

LANGUAGE_MODELS = tuple(language.MODEL_KINDS)
# What `nnlab train --data text` trains when a flag is not given; the epochs, batch size,
# learning rate, window and model size are language.TRAINING_DEFAULTS of the model kind.
TEXT_DEFAULTS = {"model": "lstm", "seed": 0}


def read_text(path):
    """The training text: ``--text FILE`` (UTF-8), else CPython's documentation topics."""
    if path is None:
        return language.python_docs_text(), "the Python documentation topics (pydoc_data)"
    if not os.path.isfile(path):
        raise UsageError(f"--text {path}: no such file")
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except UnicodeDecodeError as error:
        raise UsageError(f"--text {path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    if len(text) < 100:
        raise UsageError(f"--text {path}: holds {len(text)} characters; a language model needs at least 100")
    return text, path


def refuse_image_options(args):
    """Options of `nnlab train` that only image and table data take."""
    for option, value in (("--root", args.root), ("--resume", args.resume), ("--optimizer", args.optimizer)):
        if value is not None:
            raise UsageError(f"{option} is not taken with --data text (the language model trains with Adam, without resuming)")
    if args.distributed:
        raise UsageError("--distributed is not taken with --data text")


def train_text(args):
    """Trains, prints one line per epoch, the final test loss in nats per character and a
    sample; saves the model with its vocabulary to --checkpoint and the curves to --plot."""
    refuse_image_options(args)
    model_kind = args.model or TEXT_DEFAULTS["model"]
    if model_kind not in LANGUAGE_MODELS:
        raise UsageError(f"--model {model_kind}: --data text trains {', '.join(LANGUAGE_MODELS)}")
    if args.checkpoint is not None:
        check_output_file("--checkpoint", args.checkpoint)
        if os.path.exists(args.checkpoint) and not args.overwrite:
            raise UsageError(f"--checkpoint {args.checkpoint}: the file exists; --overwrite replaces it")
    if args.plot is not None:
        check_plot_file(args.plot)
    text, source = read_text(args.text)
    epochs = args.epochs or language.TRAINING_DEFAULTS[model_kind]["epochs"]
    print(f"character-level {model_kind} language model on {source}: {len(text):,} characters, the last 10% for testing")

    def progress(epoch, train_loss, test_loss):
        if not args.quiet:
            print(f"epoch {epoch}/{epochs}: train loss {train_loss:.3f}, test loss {test_loss:.3f} nats per character", flush=True)

    run = language.train_language_model(
        text,
        kind=model_kind,
        epochs=epochs,
        batch_size=args.batch_size,
        learn_rate=args.lr,
        seed=args.seed if args.seed is not None else TEXT_DEFAULTS["seed"],
        progress=progress,
    )
    if args.checkpoint is not None:
        language.save_language_model(run, run.vocabulary, args.checkpoint)
        print(f"model and vocabulary saved to {args.checkpoint}")
    if args.plot is not None:
        figure = language.plot_language_run(run)
        figure.savefig(args.plot)
        print(f"learning curves written to {args.plot}")
    final = run.test_loss[-1]
    print(f"final test loss: {final:.3f} nats per character (perplexity {language.perplexity(final):.2f}), {run.seconds:.0f} s")
    prompt = "The " if not run.vocabulary.unknown("The ") else text[int(len(text) * 0.9):][:16]
    print("sample:")
    print(language.generate(run.model, run.vocabulary, prompt, 300, temperature=0.8, seed=0))
    return 0


def add_generate_parser(commands):
    generate = commands.add_parser(
        "generate",
        help="continue a prompt with a language model saved by `nnlab train --data text`",
        description="Prints the prompt and its continuation, drawn one character at a time from "
        "the model saved by `nnlab train --data text --checkpoint FILE`.",
    )
    generate.add_argument("--checkpoint", required=True, metavar="FILE", help="the saved language model")
    generate.add_argument("--prompt", default="\n", help="the text to continue (default: a new line)")
    generate.add_argument("--length", type=non_negative_int, default=300, help="characters to add (default 300)")
    generate.add_argument("--temperature", type=temperature, default=0.8, help="softmax temperature; 0 picks the likeliest (default 0.8)")
    generate.add_argument("--seed", type=non_negative_int, default=0, help="random seed of the sampling (default 0)")
    generate.set_defaults(run=run_generate)


def temperature(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def run_generate(args):
    if not os.path.isfile(args.checkpoint):
        raise UsageError(f"--checkpoint {args.checkpoint}: no such file")
    try:
        model, vocabulary = language.load_language_model(args.checkpoint)
    except ValueError as error:
        raise UsageError(str(error)) from None
    missing = vocabulary.unknown(args.prompt)
    if missing:
        raise UsageError(
            f"--prompt: characters not in the model's vocabulary: {', '.join(repr(char) for char in missing)}"
        )
    print(language.generate(model, vocabulary, args.prompt, args.length, args.temperature, args.seed))
    return 0
