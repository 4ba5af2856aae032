"""Progress output of a fit, on ``sys.stderr`` so that stdout holds only results.

``verbose`` levels (``fit(..., verbose=...)``): 0 prints nothing; 1 (the default) shows
one tqdm bar per epoch (``tqdm.auto``: a widget in notebooks) over its training and test
batches, which ends as one line with the epoch's train and test figures; where stderr is
neither a terminal nor a notebook (a pipe, a log file, CI) it prints those lines alone,
without carriage-return refreshes; 2 prints one plain line per epoch everywhere. Every
level but 0 ends the fit with one line naming the best epoch and its figures."""

import sys
import time

from tqdm.auto import tqdm

from .metrics import is_accuracy

__all__ = ["FitProgress", "bar_postfix", "checked_verbose", "epoch_bar", "format_figures", "say", "shows_bars"]

VERBOSE_LEVELS = (0, 1, 2)


def checked_verbose(verbose):
    """``verbose`` as 0, 1 or 2 (False and True are 0 and 1); ValueError otherwise."""
    if verbose in VERBOSE_LEVELS:
        return int(verbose)
    raise ValueError(f"fit: verbose must be 0 (nothing), 1 (a bar per epoch) or 2 (a line per epoch), got {verbose!r}")


def say(verbose, text):
    """Prints ``text`` on stderr when ``verbose``."""
    if verbose:
        print(text, file=sys.stderr, flush=True)


def shows_bars():
    """Whether progress bars can refresh in place: stderr is a terminal, or this runs in
    a notebook (where ``tqdm.auto`` draws widgets)."""
    from tqdm import autonotebook, std

    return autonotebook.tqdm is not std.tqdm or sys.stderr.isatty()


def epoch_bar(total, description, verbose):
    """The bar of one pass over ``total`` batches (a context manager); silent unless ``verbose``."""
    return tqdm(total=total, desc=description, file=sys.stderr, disable=not verbose)


def bar_postfix(values):
    """The bar's running metrics: accuracies in percent, the rest to 3 decimals."""
    return {name: f"{value:.1f}%" if is_accuracy(name) else f"{value:.3f}" for name, value in values.items()}


def format_figures(values, phase):
    """'loss 0.1234, acc 96.10%' of one phase's figures among an epoch's ``values``
    (``{"train_loss": ..., "test_acc": ..., ...}``), the loss first."""
    prefix = f"{phase}_"
    names = sorted((name for name in values if name.startswith(prefix)), key=lambda name: name != f"{phase}_loss")
    shown = []
    for name in names:
        value = values[name]
        shown.append(f"{name[len(prefix):]} {value:.2f}%" if is_accuracy(name) else f"{name[len(prefix):]} {value:.4f}")
    return ", ".join(shown)


class FitProgress:
    """What a fit shows at ``verbose`` (see the module): ``start_epoch`` opens the
    epoch's bar, ``batch`` advances it, ``end_epoch`` closes it and prints the epoch's
    line, ``end_fit`` the summary line."""

    def __init__(self, verbose, num_epochs, print_every=1):
        self.verbose = checked_verbose(verbose)
        self.bars = self.verbose == 1 and shows_bars()
        self.num_epochs = num_epochs
        self.print_every = print_every
        self._bar = None
        self._started = None

    def start_epoch(self, epoch, total_batches):
        self._started = time.perf_counter()
        if self.bars:
            self._bar = tqdm(total=total_batches, desc=f"epoch {epoch}/{self.num_epochs}", file=sys.stderr, leave=False)

    def batch(self, phase, running):
        """One batch of ``phase`` done; ``running`` its pass's figures so far."""
        if self._bar is not None:
            self._bar.set_postfix({f"{phase} {name}": text for name, text in bar_postfix(running).items()}, refresh=False)
            self._bar.update()

    def end_epoch(self, epoch, values):
        """Closes the epoch's bar and prints its line (every ``print_every`` epochs, and
        the last)."""
        self.close()
        shown = self.print_every is not None and (epoch % self.print_every == 0 or epoch == self.num_epochs)
        if self.verbose and shown:
            seconds = time.perf_counter() - self._started
            say(True, f"epoch {epoch}/{self.num_epochs}: {epoch_line(values)} ({seconds:.1f} s)")

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def end_fit(self, history, monitor):
        """The summary: the best epoch by ``monitor`` (test accuracy where recorded, else
        test loss, when None) and its figures."""
        if not self.verbose or not history.num_epochs:
            return
        if monitor is None or monitor not in history.metrics:
            monitor = "test_acc" if "test_acc" in history.metrics else "test_loss"
        values = history.metrics[monitor]
        best = max(values) if is_accuracy(monitor) else min(values)
        epoch = values.index(best) + 1
        say(True, f"best epoch {epoch}/{history.num_epochs} by {monitor.replace('_', ' ')}: {epoch_line(history.epoch(epoch))}")


def epoch_line(values):
    """'train loss 0.1234, acc 96.10% | test loss 0.1456, acc 95.80%'."""
    return f"train {format_figures(values, 'train')} | test {format_figures(values, 'test')}"
