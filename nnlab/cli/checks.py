"""What the subcommands share: ``UsageError``, the argument types (argparse turns their
errors into one line with the usage, exit 2) and the checks of output files."""

import argparse
import math
import os
import tempfile

__all__ = [
    "UsageError",
    "add_alias",
    "check_output_file",
    "check_plot_file",
    "learning_rate",
    "non_negative_int",
    "positive_int",
    "probability",
    "seconds",
    "seed",
]


class UsageError(Exception):
    """A problem with what the user asked for: printed on one line with the usage, exit 2."""


def add_alias(parser, flag, dest, **settings):
    """An option's old spelling ``flag``: parsed into the same ``dest`` as the one that
    replaced it, so old commands keep working, and left out of --help."""
    parser.add_argument(flag, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **settings)


def positive_int(text):
    return _int_at_least(text, 1)


def non_negative_int(text):
    return _int_at_least(text, 0)


def _int_at_least(text, minimum):
    value = _parsed(int, text, f"an integer >= {minimum}")
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text}")
    return value


def seed(text):
    """What torch.manual_seed takes, without its negative aliases (-1 is 2**64 - 1 there)."""
    value = _parsed(int, text, "an integer from 0 to 2**64 - 1")
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**64 - 1, got {text}")
    return value


def learning_rate(text):
    value = _parsed(float, text, "a finite number >= 0")
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def probability(text):
    value = _parsed(float, text, "a number in [0, 1)")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text}")
    return value


def seconds(text):
    value = _parsed(float, text, "a number of seconds > 0")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text}")
    return value


def _parsed(kind, text, expected):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def check_output_file(option, path):
    """UsageError unless a file can be written at ``path``: a name, not a folder, in a
    folder that exists and takes new files (tried for real)."""
    if path == "":
        raise UsageError(f"{option}: expected a file name, got ''")
    if os.path.isdir(path):
        raise UsageError(f"{option} {path}: is a folder; expected a file name")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".nnlab-write-test-"):
            pass
    except NotADirectoryError:
        raise UsageError(f"{option} {path}: {folder} is not a folder (part of it is a file)") from None
    except FileNotFoundError:
        raise UsageError(f"{option} {path}: no such folder {folder}") from None
    except OSError as error:
        raise UsageError(f"{option} {path}: cannot write in {folder} ({error.strerror})") from None
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UsageError(f"{option} {path}: cannot write the file (it is read-only)")


def check_plot_file(path, option="--plot"):
    check_output_file(option, path)
    from matplotlib.backend_bases import FigureCanvasBase  # matplotlib loads only when a plot is asked for

    formats = FigureCanvasBase.get_supported_filetypes()
    extension = os.path.splitext(path)[1].lstrip(".").lower()
    if extension not in formats:
        raise UsageError(
            f"{option} {path}: not an image format matplotlib writes; expected a name ending in "
            + ", ".join(f".{name}" for name in sorted(formats))
        )
