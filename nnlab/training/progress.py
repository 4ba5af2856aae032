"""Progress output of a fit, on ``sys.stderr`` so that stdout holds only results: epoch
headers and messages, and one tqdm bar per epoch and phase with the running figures."""

import sys

from tqdm.auto import tqdm

from .metrics import is_accuracy

__all__ = ["bar_postfix", "epoch_bar", "say"]


def say(verbose, text):
    """Prints ``text`` on stderr when ``verbose``."""
    if verbose:
        print(text, file=sys.stderr, flush=True)


def epoch_bar(total, description, verbose):
    """The bar of one pass over ``total`` batches (a context manager); silent unless ``verbose``."""
    return tqdm(total=total, desc=description, file=sys.stderr, disable=not verbose)


def bar_postfix(values):
    """The bar's running metrics: accuracies in percent, the rest to 3 decimals."""
    return {name: f"{value:.1f}%" if is_accuracy(name) else f"{value:.3f}" for name, value in values.items()}
