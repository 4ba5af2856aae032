"""Checkpoint files: written atomically, with a checksum of their whole content, and
checked completely when read.

A checkpoint is a dict of tensors, numbers, strings, lists, dicts and None (see
``Trainer.checkpoint`` in ``nnlab.training`` for what ``fit`` puts in it).

* ``save_checkpoint`` writes it to a temporary file in the same folder (flushed and
  fsync'ed) and moves that over the target with ``os.replace``, so a crash at any moment
  leaves the previous checkpoint intact. It first removes the temporary files that
  earlier, killed saves of the same checkpoint left behind.
* The file holds ``"checksum"``: the SHA-256 of everything else in it (``content_digest``),
  so one flipped bit in a stored weight or number is caught.
* ``load_checkpoint`` verifies the format tag, the checksum and the structure (every key,
  the RNG state, the history, a ``best_model`` that fits ``model``) and raises
  ``CheckpointError`` naming the file for anything wrong, before anyone uses the content.
"""

import hashlib
import os
import random
import re
import tempfile

import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "check_checkpoint",
    "check_rng_state",
    "check_state_fits",
    "content_digest",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "write_atomically",
]

CHECKPOINT_FORMAT = "nnlab-checkpoint-2"

HISTORY_KEYS = ("train_loss", "train_acc", "test_loss", "test_acc")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or that does not fit the model or optimizer."""


class WriteError(OSError):
    """A file could not be written (a full disk, a lost device): names the file and the
    cause; what was at the path before is intact (``write_atomically``)."""


# Checksums ------------------------------------------------------------------------------


def content_digest(value):
    """The SHA-256 (hex) of ``value``'s content: every tensor's dtype, shape and bytes,
    every number, string and key, and the nesting of dicts and lists (a tuple counts as
    a list, since a saved tuple may come back as either). Equal contents give equal
    digests on any machine and device."""
    hasher = hashlib.sha256()
    _feed(hasher, value)
    return hasher.hexdigest()


def _feed(hasher, value):
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        _feed_text(hasher, f"tensor {value.dtype} {tuple(value.shape)}")
        hasher.update(data.numpy())
    elif isinstance(value, dict):
        _feed_text(hasher, f"dict {len(value)}")
        for key, item in value.items():
            _feed(hasher, key)
            _feed(hasher, item)
    elif isinstance(value, (list, tuple)):
        _feed_text(hasher, f"list {len(value)}")
        for item in value:
            _feed(hasher, item)
    elif value is None or isinstance(value, (bool, int, float, str)):
        # repr is exact for floats (shortest round-trip form) and tells types apart.
        _feed_text(hasher, f"{type(value).__name__} {value!r}")
    else:
        raise TypeError(f"a checkpoint holds tensors, numbers, strings, lists and dicts, got a {type(value).__name__}")


def _feed_text(hasher, text):
    """Length first, so that no two sequences of texts hash alike."""
    data = text.encode()
    hasher.update(f"{len(data)}:".encode())
    hasher.update(data)


def _with_checksum(checkpoint):
    content = {key: value for key, value in checkpoint.items() if key != "checksum"}
    return {**content, "checksum": content_digest(content)}


def _verify_checksum(path, checkpoint):
    if "checksum" not in checkpoint:
        raise CheckpointError(f"{path}: has no checksum, so its content cannot be trusted (it was not saved by this nnlab)")
    content = {key: value for key, value in checkpoint.items() if key != "checksum"}
    if content_digest(content) != checkpoint["checksum"]:
        raise CheckpointError(
            f"{path}: checksum mismatch: the content changed after it was saved (a damaged copy or a flipped bit)"
        )


# Writing ------------------------------------------------------------------------------


def save_checkpoint(path, checkpoint):
    """Writes ``checkpoint`` (a dict of tensors, numbers, strings, lists, dicts) to
    ``path`` atomically (``write_atomically``), with its ``"checksum"``
    (``content_digest`` of the rest)."""
    content = _with_checksum(checkpoint)
    write_atomically(path, lambda file: torch.save(content, file))


def write_atomically(path, write):
    """Calls ``write(file)`` on a temporary binary file in ``path``'s folder, flushes and
    fsyncs it, then moves it over ``path`` with ``os.replace``: readers see the old
    content or the new, never a part. If anything fails (or the process is
    interrupted), the temporary file is removed and whatever was at ``path`` before is
    left untouched. Temporary files of ``path`` that killed writes left behind are
    removed first (one process writes a given path at a time).

    Raises:
        WriteError (an OSError): writing failed, naming ``path`` and the cause (torch's
            writer reports a full disk as a RuntimeError, Python's file as an OSError).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    prefix, suffix = _temporary_affixes(path)
    _remove_stale_temporaries(folder, prefix, suffix)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=suffix)
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0600 is for secrets; give the usual mode
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        if os.path.exists(temporary):
            os.remove(temporary)
        if isinstance(error, (OSError, RuntimeError)) and not isinstance(error, WriteError):
            cause = " ".join(str(error).split())
            raise WriteError(f"{path}: cannot write the file: {cause} (the disk may be full); it is left as it was") from error
        raise
    _fsync_folder(folder)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temporary_affixes(path):
    """The prefix and suffix of ``path``'s temporary files: ``.NAME.XXXXXXXX.tmp``."""
    return "." + os.path.basename(path) + ".", ".tmp"


def _remove_stale_temporaries(folder, prefix, suffix):
    # tempfile.mkstemp puts 8 characters from [a-z0-9_] between prefix and suffix.
    pattern = re.compile(re.escape(prefix) + "[a-z0-9_]{8}" + re.escape(suffix))
    for name in os.listdir(folder):
        if pattern.fullmatch(name):
            try:
                os.remove(os.path.join(folder, name))
            except FileNotFoundError:
                pass


def _fsync_folder(folder):
    """Makes the rename itself durable where the platform allows it (POSIX)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


# Reading ------------------------------------------------------------------------------


def load_checkpoint(path, map_location="cpu"):
    """The checkpoint dict that ``fit`` saved at ``path``, loaded with
    ``weights_only=True`` (no arbitrary code runs) and checked completely: format tag,
    checksum, and the structure ``check_checkpoint`` describes.

    Raises:
        CheckpointError (a ValueError) naming the file: not an nnlab checkpoint, damaged,
            or incomplete.
        FileNotFoundError: there is no such file.
    """
    path = os.fspath(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable nnlab checkpoint (torch.load: {type(error).__name__})") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        found = checkpoint.get("format") if isinstance(checkpoint, dict) else None
        detail = f", found '{found}'" if isinstance(found, str) else ""
        raise CheckpointError(f"{path}: not an nnlab checkpoint (expected format '{CHECKPOINT_FORMAT}'{detail})")
    _verify_checksum(path, checkpoint)
    try:
        check_checkpoint(checkpoint)
    except ValueError as error:
        raise CheckpointError(f"{path}: incomplete checkpoint: {error}") from error
    return checkpoint


REQUIRED_KEYS = ("epoch", "model", "optimizer", "rng", "fit_result", "best_model", "best_epoch", "best_accuracy", "config")


def check_checkpoint(checkpoint):
    """Checks the structure that ``fit`` saves; ValueError saying what is wrong.

    ``epoch`` (completed epochs), ``model`` (name -> tensor), ``optimizer`` (a state
    dict or None), ``rng`` (as ``rng_state`` gives), ``fit_result`` (one value per
    epoch in each history list), ``best_model`` (None or the same names and shapes as
    ``model``), ``best_epoch``, ``best_accuracy`` and ``config`` (a dict or None)."""
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise ValueError(f"missing {missing}")
    epoch = checkpoint["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"'epoch' must be an int >= 0, got {epoch!r}")
    _check_tensor_dict("model", checkpoint["model"])
    if checkpoint["best_model"] is not None:
        check_state_fits("best_model", checkpoint["best_model"], checkpoint["model"])
    if checkpoint["optimizer"] is not None and not isinstance(checkpoint["optimizer"], dict):
        raise ValueError(f"'optimizer' must be a state dict or None, got {type(checkpoint['optimizer']).__name__}")
    _check_history(checkpoint["fit_result"], epoch)
    check_rng_state(checkpoint["rng"])
    if checkpoint["config"] is not None and not isinstance(checkpoint["config"], dict):
        raise ValueError(f"'config' must be a dict or None, got {type(checkpoint['config']).__name__}")


def _check_tensor_dict(name, state):
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ValueError(f"'{name}' must be a dict of tensors")


def check_state_fits(name, state, reference):
    """ValueError unless ``state`` has exactly ``reference``'s keys, each a tensor of the
    same shape (what ``load_state_dict`` needs to succeed)."""
    _check_tensor_dict(name, state)
    missing = sorted(set(reference) - set(state))
    unexpected = sorted(set(state) - set(reference))
    if missing or unexpected:
        raise ValueError(f"'{name}' does not fit: missing keys {missing}, unexpected keys {unexpected}")
    for key, target in reference.items():
        if state[key].shape != target.shape:
            raise ValueError(
                f"'{name}' does not fit: '{key}' has shape {tuple(state[key].shape)}, expected {tuple(target.shape)}"
            )


def _check_history(fit_result, epoch):
    """The FitResult dict: one value per epoch in each history list (the accuracies may
    be empty: a task without accuracy) and in each list of ``metrics``, whose entries
    the history lists must equal; ``steps`` holds lists of numbers. ``metrics`` and
    ``steps`` may be absent or None (a FitResult built from the classic fields)."""
    if not isinstance(fit_result, dict) or not set(HISTORY_KEYS) <= set(fit_result):
        raise ValueError(f"'fit_result' must be a dict with 'num_epochs' and {list(HISTORY_KEYS)}")
    if fit_result.get("num_epochs") != epoch:
        raise ValueError(f"'fit_result' has num_epochs {fit_result.get('num_epochs')!r}, but 'epoch' is {epoch}")
    for key in HISTORY_KEYS:
        _check_numbers(key, fit_result[key], (epoch, 0) if key.endswith("_acc") else (epoch,))
    for records, lengths in (("metrics", (epoch,)), ("steps", None)):
        entries = fit_result.get(records)
        if entries is None:
            continue
        if not isinstance(entries, dict):
            raise ValueError(f"'fit_result' '{records}' must be a dict of lists, got {type(entries).__name__}")
        for key, values in entries.items():
            _check_numbers(f"{records}.{key}", values, lengths)
    metrics = fit_result.get("metrics")
    for key in HISTORY_KEYS if metrics is not None else ():
        if list(fit_result[key]) != list(metrics.get(key, [])):
            raise ValueError(f"'fit_result' '{key}' disagrees with its 'metrics' entry")


def _check_numbers(name, values, lengths):
    """ValueError unless ``values`` is a list of numbers with one of ``lengths`` (any
    length when None)."""
    if not isinstance(values, (list, tuple)) or (lengths is not None and len(values) not in lengths):
        got = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
        raise ValueError(f"'fit_result' '{name}' must hold one value per epoch ({lengths[0]}), got {got}")
    if not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values):
        raise ValueError(f"'fit_result' '{name}' must hold numbers")


# RNG state ----------------------------------------------------------------------------


def rng_state():
    """torch's CPU (and, if initialized, CUDA) RNG state and Python's ``random`` state."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return {"torch": torch.get_rng_state(), "cuda": cuda, "python": random.getstate()}


def check_rng_state(state):
    """ValueError unless ``set_rng_state(state)`` would succeed; changes no RNG."""
    if not isinstance(state, dict) or "torch" not in state:
        raise ValueError("'rng' must be a dict with 'torch', 'cuda' and 'python' states")
    expected = torch.get_rng_state()
    found = state["torch"]
    if not isinstance(found, torch.Tensor) or found.dtype != torch.uint8 or found.shape != expected.shape:
        got = f"{found.dtype} {tuple(found.shape)}" if isinstance(found, torch.Tensor) else type(found).__name__
        raise ValueError(f"'rng' 'torch' must be a uint8 tensor of shape {tuple(expected.shape)}, got {got}")
    cuda = state.get("cuda")
    if cuda is not None and not (
        isinstance(cuda, (list, tuple)) and all(isinstance(s, torch.Tensor) and s.dtype == torch.uint8 for s in cuda)
    ):
        raise ValueError("'rng' 'cuda' must be None or a list of uint8 tensors")
    if state.get("python") is not None:
        try:
            random.Random().setstate(_as_tuples(state["python"]))
        except (TypeError, ValueError, OverflowError) as error:
            raise ValueError(f"'rng' 'python' is not a state of Python's random module ({error})") from error


def set_rng_state(state):
    """Restores what ``rng_state`` returned (check it first with ``check_rng_state``)."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if state.get("python") is not None:
        random.setstate(_as_tuples(state["python"]))


def _as_tuples(value):
    """Python's random state with its nested lists turned back into tuples."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(item) for item in value)
    return value
