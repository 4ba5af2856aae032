"""Data-parallel training on ``torch.distributed``: one nnlab model trained by several
processes, on one machine or many, each on its shard of every global batch; the
hand-written backward makes the gradients and ``torch.distributed`` averages them, as
``torch.nn.parallel.DistributedDataParallel`` does for autograd models.

Launch with ``torchrun`` (never a launcher of nnlab's own)::

    torchrun --nproc-per-node 2 -m nnlab train --distributed

or, in a script that torchrun starts once per process::

    world = distributed.setup()                 # from torchrun's environment
    trainer = distributed.DistributedTrainer(model, loss_fn, optimizer)
    dl_train = distributed.ShardedBatches(x, y, batch_size, shuffle=True, seed=0)
    dl_test = distributed.ShardedBatches(x_test, y_test, batch_size, uneven="keep")
    fit = trainer.fit(dl_train, dl_test, 10, checkpoints="run.ckpt")
    distributed.shutdown()

The design, point by point:

* **Process group.** ``setup`` reads torchrun's environment (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and joins the group: gloo for a model
  on the CPU, NCCL for one on CUDA (one GPU per process, ``cuda:LOCAL_RANK``). Part of
  that environment missing is a ``DistributedError`` saying which variables; none of
  it (not launched by torchrun) is one process alone, with no process group: everything
  below then does exactly what it does without this module.
* **Same start.** ``DataParallel`` checks that every process built the same model
  (names, shapes, dtypes) and broadcasts rank 0's parameters and buffers;
  ``DistributedTrainer.fit`` checks that every process runs the same configuration
  (optimizer and its hyperparameters, loss, epochs, ``fit``'s ``config``...) and
  names each setting that differs, with its value on every process.
* **Shards.** ``ShardedBatches`` gives each process the indices
  ``torch.utils.data.DistributedSampler`` gives it: the permutation of epoch e
  (0-based) is ``torch.randperm(N, generator=torch.Generator().manual_seed(seed + e))``
  on every process, rank r takes entries r, r + W, r + 2W, ... (W processes), and its
  batches are consecutive runs of ``batch_size`` of those, so step k's global batch is
  a contiguous block of W * batch_size entries of the permutation. ``batch_size`` is
  per process, as with a DataLoader under DDP. N not divisible by W (``uneven``):
  ``"pad"`` (DistributedSampler's default) repeats the first W - N mod W entries of
  the permutation, ``"drop"`` (its ``drop_last=True``) leaves out the last N mod W;
  either way every process has the same number of samples, so every step's shards are
  equal and the mean of the processes' gradients is the global batch's gradient.
  ``"keep"`` (for evaluation only) adds nothing and drops nothing: the test figures
  count every sample exactly once.
* **Gradients.** After the model's own backward, ``DataParallel.backward`` adds the
  gradients of all processes with ``all_reduce``, in one flat buffer per dtype and
  device (one collective per step for an ordinary model, however many parameters), and
  divides by W. The same buffer carries each process's batch size: if they differ the
  step raises a ValueError on every process (the mean would weight samples unequally).
* **BatchNorm.** By default (``sync_batchnorm=True``) BatchNorm1d/2d use the statistics
  of the global batch, as ``torch.nn.SyncBatchNorm`` (two small all-reduces in each
  forward, one in each backward): training on W processes then equals training one
  process on the global batches (the test shows it to 1e-10 in float64), and the
  running statistics stay identical on every process. ``sync_batchnorm=False`` is
  DDP's default: each process normalises with its own shard's statistics (no
  communication), and the trainer averages the running statistics over the processes
  at the end of every training epoch, before testing and saving.
* **Metrics.** ``DistributedTrainer`` adds up every epoch's sums and counts across the
  processes and then divides (``training.metric_values``), so every process reports
  the global figures. An epoch's loss is the mean over steps of the global batch's
  loss (each process's batch loss weighted by its batch size), as one process
  trained on the global batches reports it; ``FitResult.steps`` holds the global
  per-step losses and the norm of the averaged gradient.
* **Output.** Only rank 0 prints epoch headers and progress bars (showing its own
  shard's running figures) and writes checkpoints; ``nnlab train`` also writes plots
  and results from rank 0 only. A checkpoint records ``world_size`` and every
  process's RNG state; ``fit(..., resume=...)`` continues it exactly on as many
  processes and refuses another number.
* **Failures.** Every collective waits at most ``timeout`` seconds (the process
  group's). A process that fails publishes its error in the rendezvous store (under
  ``failures_reported``, which ``DistributedTrainer.fit`` uses); a process whose
  collective breaks or times out raises ``DistributedError`` naming the failed rank and
  its error, or a rank on this machine that is no longer running (killed), or the
  timeout. It never hangs.

Layout: this module is built on ``nnlab.training``, ``nnlab.data`` and the layers;
none of them imports it (the BatchNorm layers take a plain function for their sums).
"""

import contextlib
import datetime
import hashlib
import inspect
import json
import os
import socket
import time
import zlib
from typing import NamedTuple, Optional

import torch
import torch.distributed as dist

from .checkpoints import check_rng_state, rng_state, set_rng_state
from .data import Batches
from .layers import Layer
from .layers.base import recall_call, remember_call
from .training import EpochResult, LayerTrainer, metric_values, num_samples

__all__ = [
    "DEFAULT_TIMEOUT",
    "TORCHRUN_VARIABLES",
    "DataParallel",
    "DistributedError",
    "DistributedTrainer",
    "ShardedBatches",
    "TorchrunEnvironmentError",
    "Traffic",
    "World",
    "check_same",
    "current_world",
    "failures_reported",
    "from_rank_0",
    "launched_by_torchrun",
    "setup",
    "shutdown",
    "sum_across_processes",
    "synchronize",
]

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT = 120.0
DIAGNOSIS_SECONDS = 2.0
UNEVEN = ("pad", "drop", "keep")
SEEDS = 2**64  # torch's seeds are 64-bit; epoch e of seed s draws with (s + e) mod SEEDS


class DistributedError(RuntimeError):
    """Data-parallel training cannot go on: torchrun's environment is incomplete, the
    process group cannot be joined, or a collective failed (another process stopped,
    was killed or did not answer within the timeout). The message names the process
    it happened on and, where known, the one that failed."""


class TorchrunEnvironmentError(DistributedError):
    """torchrun's variables are set only in part, or hold invalid values."""


class World(NamedTuple):
    """Where this process stands: ``rank`` (0 to ``world_size`` - 1), ``world_size``,
    ``local_rank`` (on this machine), ``backend`` ('gloo', 'nccl', or None for one
    process alone), ``device`` (the model's) and ``timeout`` (seconds)."""

    rank: int
    world_size: int
    local_rank: int
    backend: Optional[str]
    device: torch.device
    timeout: float

    @property
    def is_main(self):
        """True on rank 0, the process that prints and writes files."""
        return self.rank == 0


class _State:
    """The world this process joined and the store its notes go to (module state, as
    torch.distributed keeps its default group)."""

    world = None
    store = None
    groups = 0  # process groups joined so far: each one's keys in the store are its own


class Traffic:
    """Time spent in the collectives of this module, since the last ``reset``: what
    ``python -m nnlab.distributed_bench`` reports as the communication share."""

    seconds = 0.0
    calls = 0
    bytes = 0

    @classmethod
    def reset(cls):
        cls.seconds, cls.calls, cls.bytes = 0.0, 0, 0


# Joining and leaving ---------------------------------------------------------------------


def launched_by_torchrun(environ=None):
    """True if any of torchrun's variables (``TORCHRUN_VARIABLES``) is set."""
    environ = os.environ if environ is None else environ
    return any(name in environ for name in TORCHRUN_VARIABLES)


def setup(device=None, timeout=DEFAULT_TIMEOUT):
    """Joins the process group torchrun prepared and returns this process's ``World``.

    Not launched by torchrun: a world of one process (rank 0), no process group. With a
    CUDA ``device`` the group uses NCCL and this process's GPU is ``cuda:LOCAL_RANK``;
    otherwise gloo. ``timeout`` (seconds) bounds the rendezvous and every collective.
    Calling it again returns the same world.

    Raises:
        TorchrunEnvironmentError (a DistributedError): torchrun's environment is
            incomplete or invalid.
        DistributedError: the group could not be joined within ``timeout``.
    """
    if _State.world is not None:
        return _State.world
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"setup: timeout must be a number of seconds > 0, got {timeout!r}")
    device = torch.device("cpu" if device is None else device)
    if not launched_by_torchrun():
        _State.world = World(0, 1, 0, None, device, float(timeout))
        return _State.world
    rank, world_size, local_rank = _torchrun_environment(os.environ)
    backend = "gloo"
    if device.type == "cuda":
        backend = "nccl"
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    delta = datetime.timedelta(seconds=timeout)
    # Keys of torchrun's restart and of this process's n-th group: a second setup after
    # shutdown, or a restarted worker, never reads an earlier group's addresses.
    prefix = f"nnlab/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{_State.groups}"
    _State.groups += 1
    try:
        store, _, _ = next(dist.rendezvous("env://", rank, world_size, timeout=delta))
        store.set_timeout(delta)
        group_store = dist.PrefixStore(f"{prefix}/group", store)
        dist.init_process_group(backend, store=group_store, rank=rank, world_size=world_size, timeout=delta)
        notes = dist.PrefixStore(f"{prefix}/notes", store)
        notes.set(f"process/{rank}", f"{socket.gethostname()} {os.getpid()}")
    except (RuntimeError, ValueError, OSError) as error:
        address = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        raise DistributedError(
            f"rank {rank} of {world_size}: could not join the process group at {address} "
            f"within {timeout:g} s: {_one_line(error)}"
        ) from error
    _State.world = World(rank, world_size, local_rank, backend, device, float(timeout))
    _State.store = notes
    return _State.world


def _torchrun_environment(environ):
    """(rank, world size, local rank) from torchrun's variables, checked."""
    missing = [name for name in TORCHRUN_VARIABLES if not environ.get(name)]
    if missing:
        present = [name for name in TORCHRUN_VARIABLES if environ.get(name)]
        raise TorchrunEnvironmentError(
            f"incomplete torchrun environment: {', '.join(present)} set but {', '.join(missing)} missing; "
            f"launch with torchrun (e.g. torchrun --nproc-per-node 2 -m nnlab train --distributed), "
            f"which sets all of {', '.join(TORCHRUN_VARIABLES)}, or unset them to run one process"
        )
    numbers = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        try:
            numbers[name] = int(environ[name])
        except ValueError:
            raise TorchrunEnvironmentError(f"torchrun environment: {name} must be an integer, got {environ[name]!r}") from None
    rank, world_size, local_rank = numbers["RANK"], numbers["WORLD_SIZE"], numbers["LOCAL_RANK"]
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise TorchrunEnvironmentError(
            f"torchrun environment: expected WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0, "
            f"got RANK={rank}, WORLD_SIZE={world_size}, LOCAL_RANK={local_rank}"
        )
    if not 0 < numbers["MASTER_PORT"] < 2**16:
        raise TorchrunEnvironmentError(f"torchrun environment: MASTER_PORT must be a port (1-65535), got {numbers['MASTER_PORT']}")
    return rank, world_size, local_rank


def current_world():
    """The ``World`` that ``setup`` joined; a world of one process if it was not called."""
    if _State.world is None:
        return World(0, 1, 0, None, torch.device("cpu"), DEFAULT_TIMEOUT)
    return _State.world


def synchronize(what="a barrier"):
    """Waits until every process gets here (a barrier, bounded by the timeout)."""
    if current_world().world_size > 1:
        with _talking(what):
            dist.barrier()


def shutdown():
    """Leaves the process group (no barrier: call ``synchronize`` first to end together)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _State.world = None
    _State.store = None


# Failures ------------------------------------------------------------------------------


@contextlib.contextmanager
def failures_reported():
    """Publishes an error raised inside (but a ``DistributedError``, a consequence of
    another process's failure) in the rendezvous store, so that the other processes
    name this rank and its error when their collectives break; then re-raises it."""
    try:
        yield
    except DistributedError:
        raise
    except BaseException as error:
        _publish_failure(error)
        raise


def _publish_failure(error):
    world = current_world()
    if _State.store is None or world.world_size == 1:
        return
    text = _one_line(error) or "interrupted"
    try:
        _State.store.set(f"failed/{world.rank}", f"{type(error).__name__}: {text}")
    except Exception:  # the store may be gone with its host; the error itself still propagates
        pass


@contextlib.contextmanager
def _talking(what, tensor=None):
    """Runs one collective: times it (``Traffic``) and turns its failure into a
    ``DistributedError`` naming what failed."""
    start = time.perf_counter()
    try:
        yield
    except RuntimeError as error:  # gloo and NCCL errors (DistBackendError) are RuntimeErrors
        raise DistributedError(_diagnosis(what, error)) from error
    Traffic.seconds += time.perf_counter() - start
    Traffic.calls += 1
    if tensor is not None:
        Traffic.bytes += tensor.numel() * tensor.element_size()


def _diagnosis(what, error):
    """Why ``what`` failed on this process, from the notes of the other processes (given
    a moment: a killed process's connections close just before it is seen gone)."""
    world = current_world()
    causes = []
    deadline = time.monotonic() + DIAGNOSIS_SECONDS
    try:
        _State.store.set_timeout(datetime.timedelta(seconds=DIAGNOSIS_SECONDS))
        while not causes and time.monotonic() < deadline:
            causes = [cause for cause in map(_cause, range(world.world_size)) if cause is not None]
            time.sleep(0.05)
    except Exception:
        causes.append("the rendezvous store does not answer either (its host, rank 0 or the torchrun agent, may be gone)")
    if not causes:
        causes.append(
            f"no other process reported an error: one stopped, or did not answer within the {world.timeout:g} s timeout"
        )
    backend_error = _one_line(error)
    if len(backend_error) > 300:
        backend_error = backend_error[:300] + "..."
    return f"rank {world.rank} of {world.world_size}: {what} failed: {'; '.join(causes)} ({backend_error})"


def _cause(rank):
    """What the notes say happened to ``rank``; None if it looks fine (or is this one)."""
    if rank == current_world().rank:
        return None
    store = _State.store
    if store.check([f"failed/{rank}"]):
        return f"rank {rank} failed: {store.get(f'failed/{rank}').decode()}"
    if store.check([f"process/{rank}"]):
        host, pid = store.get(f"process/{rank}").decode().rsplit(" ", 1)
        if host == socket.gethostname() and _process_gone(int(pid)):
            return f"rank {rank} (pid {pid}) is no longer running (killed, or crashed without a word)"
    return None


def _process_gone(pid):
    """True if no process ``pid`` runs on this machine; a zombie (dead, not yet reaped by
    its parent) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _one_line(error):
    return " ".join(str(error).split())


# Collectives on flat buffers ---------------------------------------------------------


def _all_reduce(tensor, what):
    with _talking(what, tensor):
        dist.all_reduce(tensor)


def _all_gather(values, what):
    """Every process's ``values`` (a list of integers), by rank."""
    world = current_world()
    local = torch.tensor(values, dtype=torch.int64, device=world.device)
    gathered = [torch.empty_like(local) for _ in range(world.world_size)]
    with _talking(what, local):
        dist.all_gather(gathered, local)
    return [tensor.tolist() for tensor in gathered]


def _in_flat_buffers(tensors, communicate):
    """Runs ``communicate(flat)`` on one flat copy of ``tensors`` per (device, dtype),
    then copies the result back into each tensor in place."""
    groups = {}
    for tensor in tensors:
        groups.setdefault((tensor.device, tensor.dtype), []).append(tensor)
    for group in groups.values():
        flat = torch.cat([tensor.reshape(-1) for tensor in group])
        communicate(flat)
        offset = 0
        for tensor in group:
            tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()


def check_same(what, description):
    """DistributedError, on every process, naming the ranks whose ``description`` (a
    string: a model's layout, a dataset's digest) differs from rank 0's."""
    world = current_world()
    if world.world_size == 1:
        return
    digest = int(hashlib.sha256(description.encode()).hexdigest()[:15], 16)
    digests = [value for (value,) in _all_gather([digest], f"the check of {what}")]
    differ = [rank for rank, value in enumerate(digests) if value != digests[0]]
    if differ:
        raise DistributedError(
            f"rank {world.rank} of {world.world_size}: {what} on rank{'s' if len(differ) > 1 else ''} "
            f"{', '.join(map(str, differ))} differ{'' if len(differ) > 1 else 's'} from rank 0's; every process must have the same"
        )


def check_same_settings(what, settings):
    """DistributedError, on every process, naming each setting whose value differs
    between the processes, with its value on each: ``settings`` is ``{name: value}``
    of plain values (numbers, strings, lists...) that every process must share (a
    learning rate, a number of epochs). One gather of every process's settings."""
    world = current_world()
    if world.world_size == 1:
        return
    shown = {name: _shown(value) for name, value in settings.items()}
    every = [None] * world.world_size
    with _talking(f"the check of {what}"):
        dist.all_gather_object(every, shown)
    names = sorted(set().union(*every))
    differ = [name for name in names if len({process.get(name) for process in every}) > 1]
    if differ:
        details = "; ".join(
            f"{name}: " + ", ".join(f"{process.get(name, 'none')} on rank {rank}" for rank, process in enumerate(every))
            for name in differ
        )
        raise DistributedError(
            f"rank {world.rank} of {world.world_size}: {what} differs between the processes: {details}; "
            "every process must run with the same"
        )


def _shown(value):
    """A setting as text that is equal exactly when the values are."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=repr)


def _is_plain(value):
    """A number, string, bool or None, or a list or tuple of them: a setting to compare."""
    if isinstance(value, (list, tuple)):
        return all(map(_is_plain, value))
    return value is None or isinstance(value, (bool, int, float, str))


def from_rank_0(value):
    """Rank 0's ``value`` (any picklable object), on every process: for what one
    process draws and all must share (a seed drawn at random)."""
    if current_world().world_size == 1:
        return value
    values = [value]
    with _talking("the broadcast of a value from rank 0"):
        dist.broadcast_object_list(values, src=0)
    return values[0]


def sum_across_processes(tensor):
    """A new tensor: ``tensor`` summed over every process (an all-reduce); ``tensor``
    itself after ``shutdown`` (one process again). The BatchNorm layers of a
    ``DataParallel`` model call it for their synchronised statistics."""
    total = tensor.detach().clone()
    if dist.is_initialized():
        _all_reduce(total, "a synchronised BatchNorm all-reduce")
    return total


# The model ----------------------------------------------------------------------------


class DataParallel(Layer):
    """Wraps an nnlab model for data-parallel training, as
    ``torch.nn.parallel.DistributedDataParallel`` wraps a torch.nn module.

    At construction, on W > 1 processes: checks that every process built the same
    model (the names, shapes and dtypes of its parameters and buffers; a
    DistributedError names the processes that differ) and copies rank 0's parameters
    and buffers to all (one broadcast per dtype and device). With ``sync_batchnorm``
    (default), its BatchNorm layers use the statistics of the global batch (see the
    module docstring).

    ``forward`` is the model's. ``backward(dout)`` runs the model's backward, then
    replaces every parameter gradient by its mean over the processes (one all-reduce of
    a flat buffer per dtype and device), so the optimizer of every process takes the
    same step. Gradients accumulated over several backward calls average correctly
    too (the mean of a gradient already equal everywhere is itself).

    Everything else (``params``, ``buffers``, ``state_dict`` and its keys,
    ``load_state_dict``, ``train``, ``to``) is the wrapped model's, so a checkpoint of a
    data-parallel run loads into the bare model; so is ``classify_scores``, the rule a
    trainer counts correct predictions with, where the model has one (a
    ``BinaryClassifier`` predicts by its threshold, not by the argmax). On one process
    it changes nothing.
    """

    def __init__(self, module, sync_batchnorm=True):
        super().__init__()
        if not isinstance(module, Layer) or isinstance(module, DataParallel):
            raise TypeError(f"DataParallel: expected an nnlab Layer (not already wrapped), got {type(module).__name__}")
        self.module = module
        self.sync_batchnorm = bool(sync_batchnorm)
        self.world = current_world()
        self._batch_size = 0
        self._module_call = (None, {})  # remember_call's record of the latest forward
        if self.world.world_size > 1:
            self._check_same_model()
            tensors = [param for param, _ in module.params()] + module.buffers()
            _in_flat_buffers(tensors, self._broadcast_from_rank_0)
            if self.sync_batchnorm:
                for layer in _layers(module):
                    if hasattr(layer, "sum_across_processes"):
                        layer.sum_across_processes = sum_across_processes

    def __repr__(self):
        header = f"DataParallel(world_size={self.world.world_size}, sync_batchnorm={self.sync_batchnorm})"
        return header + "\n" + repr(self.module)

    def _check_same_model(self):
        described = ";".join(f"{key} {tuple(t.shape)} {t.dtype}" for key, t in self.module.named_tensors())
        check_same("DataParallel: the model (names, shapes and dtypes of its parameters and buffers)", described)

    @staticmethod
    def _broadcast_from_rank_0(flat):
        with _talking("the broadcast of rank 0's parameters and buffers", flat):
            dist.broadcast(flat, src=0)

    def forward(self, *args, **kw):
        first = args[0] if args else None
        self._batch_size = first.shape[0] if isinstance(first, torch.Tensor) and first.dim() > 0 else 0
        out = self.module(*args, **kw)
        self._module_call = remember_call(self.module)
        return out

    def input_readers(self):
        return [self.module]

    def backward(self, dout):
        with recall_call(self.module, self._module_call):
            dx = self.module.backward(dout)
        self.reduce_gradients()
        return dx

    def reduce_gradients(self):
        """Every parameter gradient becomes its mean over the processes (one all-reduce
        per dtype and device; nothing on one process). ValueError, on every process
        alike, if their latest batches differed in size."""
        world = self.world
        grads = [grad for _, grad in self.module.params()]
        if world.world_size == 1 or not grads:
            return
        # Each process writes its batch size at its rank: after the sum all are known.
        # float32 and float64 hold them exactly (below 2**24).
        size_dtype = torch.float64 if grads[0].dtype == torch.float64 else torch.float32
        sizes = torch.zeros(world.world_size, dtype=size_dtype, device=grads[0].device)
        sizes[world.rank] = self._batch_size
        _in_flat_buffers(grads + [sizes], lambda flat: _all_reduce(flat, "the gradient all-reduce"))
        for grad in grads:
            grad.div_(world.world_size)
        if not bool((sizes == sizes[0]).all()):
            raise ValueError(
                f"DataParallel: the processes' batches differ in size at this step ({[int(n) for n in sizes.tolist()]} "
                "by rank): the mean of their gradients would weight samples unequally. Give every process equal shards "
                "(ShardedBatches with uneven='pad' or 'drop', or DistributedSampler)"
            )

    def average_buffers(self):
        """Every floating-point buffer (BatchNorm's running statistics) becomes its mean
        over the processes; integer buffers (counts) are equal everywhere already."""
        world = self.world
        buffers = [buffer for buffer in self.module.buffers() if buffer.is_floating_point()]
        if world.world_size == 1 or not buffers:
            return
        _in_flat_buffers(buffers, lambda flat: _all_reduce(flat, "the running-statistics all-reduce"))
        for buffer in buffers:
            buffer.div_(world.world_size)

    # The wrapped model's state and modes.

    def params(self):
        return self.module.params()

    def buffers(self):
        return self.module.buffers()

    def named_tensors(self, prefix=""):
        return self.module.named_tensors(prefix)

    def train(self, training_mode=True):
        self.training = bool(training_mode)
        self.module.train(training_mode)
        return self

    def to(self, device=None, dtype=None):
        self.module.to(device=device, dtype=dtype)
        return self

    @property
    def classify_scores(self):
        """The wrapped model's rule from scores to labels (``nnlab.classifier``);
        AttributeError, as for the model, when it has none."""
        return self.module.classify_scores


def _layers(layer):
    """``layer`` and every layer inside it."""
    yield layer
    for _, child in layer.named_children():
        yield from _layers(child)


# The data --------------------------------------------------------------------------------


class ShardedBatches(Batches):
    """This process's batches of a dataset that every process holds whole:
    ``torch.utils.data.DistributedSampler``'s indices in batches of ``batch_size``
    (see the module docstring; ``batch_size`` is per process).

    ``set_epoch(e)`` (0-based; ``DistributedTrainer`` calls it before every epoch) picks
    the permutation of ``seed + e`` (modulo 2**64, torch's seed range) when
    ``shuffle``; without shuffle the order is 0, 1, ..., N - 1. ``uneven``: "pad" (default) or "drop" make every shard the same
    size (training); "keep" gives ranks below N mod W one sample more and counts every
    sample once (evaluation).

    ``num_samples`` is the size of this process's shard; ``dataset_size`` the whole
    dataset's; ``rank`` and ``world_size`` default to the current world's.
    """

    def __init__(self, samples, labels, batch_size, shuffle=False, seed=0, uneven="pad", rank=None, world_size=None):
        super().__init__(samples, labels, batch_size, shuffle=False)
        world = current_world()
        self.rank = world.rank if rank is None else rank
        self.world_size = world.world_size if world_size is None else world_size
        if isinstance(self.world_size, bool) or not isinstance(self.world_size, int) or self.world_size < 1:
            raise ValueError(f"ShardedBatches: world_size must be an int >= 1, got {self.world_size!r}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or not 0 <= self.rank < self.world_size:
            raise ValueError(f"ShardedBatches: rank must be an int from 0 to {self.world_size - 1}, got {self.rank!r}")
        if uneven not in UNEVEN:
            raise ValueError(f"ShardedBatches: uneven must be one of {UNEVEN}, got {uneven!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEEDS:
            raise ValueError(f"ShardedBatches: seed must be an int from 0 to 2**64 - 1, got {seed!r}")
        self.dataset_size = self.num_samples
        if self.dataset_size < self.world_size:
            raise ValueError(
                f"ShardedBatches: {self.dataset_size} samples cannot give each of {self.world_size} processes one"
            )
        self.reshuffle = bool(shuffle)
        self.seed = seed
        self.uneven = uneven
        self.set_epoch(0)

    def set_epoch(self, epoch):
        """Takes this process's shard of epoch ``epoch``'s order."""
        self.epoch = epoch
        size, world = self.dataset_size, self.world_size
        if self.reshuffle:
            generator = torch.Generator()
            generator.manual_seed((self.seed + epoch) % SEEDS)
            order = torch.randperm(size, generator=generator)
        else:
            order = torch.arange(size)
        if self.uneven == "pad":
            per_process = -(-size // world)
            order = order.repeat(-(-per_process * world // size))[: per_process * world]
        elif self.uneven == "drop":
            order = order[: size // world * world]
        self._order = order[self.rank :: world]
        self.num_samples = len(self._order)

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]

    def shuffle(self):
        raise TypeError("ShardedBatches: the order comes from set_epoch (shared by every process), not shuffle()")

    def __repr__(self):
        return (
            f"ShardedBatches(num_samples={self.num_samples} of {self.dataset_size}, batch_size={self.batch_size}, "
            f"shuffle={self.reshuffle}, uneven={self.uneven!r}, rank={self.rank}, world_size={self.world_size})"
        )


def _set_epoch(loader, epoch):
    """Tells a loader (ShardedBatches, or a DataLoader with a DistributedSampler) the
    0-based epoch, so every process draws that epoch's permutation."""
    for target in (loader, getattr(loader, "sampler", None)):
        if hasattr(target, "set_epoch"):
            target.set_epoch(epoch)
            return


# The trainer ------------------------------------------------------------------------------


class DistributedTrainer(LayerTrainer):
    """A ``LayerTrainer`` for data-parallel training: run one in every process that
    torchrun started (after ``setup``), each with its own shard of the data
    (``ShardedBatches``, or a DataLoader with a ``DistributedSampler``).

    The model is wrapped in ``DataParallel`` (unless it already is), which makes every
    process start from rank 0's weights and step with the mean gradient. Each epoch
    tells the loaders the epoch (``set_epoch``), checks that every process takes the same
    number of training steps, and reduces the metrics across processes (see the module
    docstring); ``train_epoch``, ``test_epoch`` and ``fit`` return the global figures on
    every process. With ``sync_batchnorm=False`` the running statistics are averaged at
    the end of each training epoch. Only rank 0 prints and writes checkpoints; the
    checkpoint holds every process's RNG state and the world size, and resuming needs
    the same world size.

    Callbacks run on every process with the same (global) epoch figures; a callback that
    stops training must decide alike everywhere. On one process it trains exactly as a
    ``LayerTrainer`` does.
    """

    def __init__(self, model, loss_fn, optimizer, device=None, task=None, sync_batchnorm=True, clip_grad_norm=None):
        super().__init__(model, loss_fn, optimizer, device, task, clip_grad_norm)
        self.world = current_world()
        self.world_size = self.world.world_size
        if not isinstance(self.model, DataParallel):
            self.model = DataParallel(self.model, sync_batchnorm)
        self._batch_sizes = []

    def fit(self, *args, **kw):
        """``LayerTrainer.fit``, once every process is found to run the same
        configuration (``run_settings``): a DistributedError on every process names
        each setting that differs, before any training."""
        kw["verbose"] = kw.get("verbose", 1) if self.world.is_main else 0
        fit_arguments = inspect.signature(super().fit).bind(*args, **kw)
        fit_arguments.apply_defaults()
        with failures_reported():
            check_same_settings("the run's configuration", self.run_settings(fit_arguments.arguments))
            return super().fit(*args, **kw)

    def run_settings(self, fit_arguments):
        """``{name: value}`` of everything in a run that must be the same on every
        process: the optimizer (its kind and each hyperparameter), the loss, the task,
        the number of epochs and ``fit``'s other choices (``fit_arguments``, by name),
        and each entry of ``fit``'s ``config``. (The model is checked by
        ``DataParallel``, the data by the caller: ``check_same`` on its fingerprint.)"""
        hyperparameters = getattr(self.optimizer, "hyperparameters", dict)()
        settings = {"optimizer": type(self.optimizer).__name__, "loss": repr(self.loss_fn), "task": self.task}
        settings.update({f"optimizer.{name}": value for name, value in hyperparameters.items()})
        loss_options = {name: value for name, value in vars(self.loss_fn).items() if not name.startswith("_")}
        settings.update({f"loss.{name}": value for name, value in loss_options.items() if _is_plain(value)})
        for name in ("num_epochs", "early_stopping", "restore_best", "monitor"):
            settings[name] = fit_arguments[name]
        settings["max_batches"] = fit_arguments["kw"].get("max_batches")
        settings["checkpoints"] = "saved" if fit_arguments["checkpoints"] is not None else "not saved"
        settings["resume"] = "resumed" if fit_arguments["resume"] is not None else "not resumed"
        config = fit_arguments["config"]
        if isinstance(config, dict):
            settings.update({f"config.{name}": value for name, value in config.items()})
        else:
            settings["config"] = config
        return settings

    def train_epoch(self, dl_train, **kw):
        if self.epoch is not None:
            _set_epoch(dl_train, self.epoch - 1)
        self._check_same_steps(dl_train, kw.get("max_batches"))
        result = self._global_epoch(super().train_epoch, dl_train, kw)
        if not self.model.sync_batchnorm:
            self.model.average_buffers()
        return result

    def test_epoch(self, dl_test, **kw):
        if self.epoch is not None:
            _set_epoch(dl_test, self.epoch - 1)
        return self._global_epoch(super().test_epoch, dl_test, kw)

    def train_batch(self, batch):
        self._batch_sizes.append(num_samples(batch[1]))
        return super().train_batch(batch)

    def test_batch(self, batch):
        self._batch_sizes.append(num_samples(batch[1]))
        return super().test_batch(batch)

    def _check_same_steps(self, loader, max_batches):
        if self.world_size == 1:
            return
        steps = len(loader) if max_batches is None else min(len(loader), max_batches)
        counts = [count for (count,) in _all_gather([steps], "the step-count check")]
        if len(set(counts)) > 1:
            raise ValueError(
                f"train_epoch: the processes have different numbers of batches ({dict(enumerate(counts))} by rank); "
                "every training step averages the gradients of all, so they must take the same number of steps: "
                "give them equal shards (ShardedBatches with uneven='pad' or 'drop', or DistributedSampler)"
            )

    def _global_epoch(self, run_epoch, loader, kw):
        """Runs one pass on this process's shard, then returns its global EpochResult:
        every sum and count added up across processes, the loss of each step the
        batch-size-weighted mean of the processes' batch losses."""
        kw = dict(kw, verbose=kw.get("verbose", 1) if self.world.is_main else 0)
        self._batch_sizes = []
        local = run_epoch(loader, **kw)
        if self.world_size == 1:
            return local
        names = sorted(name for name in local.totals if name != "loss")
        steps = len(self._batch_sizes)
        signature = zlib.crc32(" ".join(names).encode())
        gathered = _all_gather([steps, signature], "the metrics check")
        if len({signature for _, signature in gathered}) > 1:
            raise DistributedError(
                f"rank {self.world.rank} of {self.world_size}: the processes record different metrics; "
                "every process must train the same model on the same task"
            )
        num_steps = max(count for count, _ in gathered)
        values = [value for name in names for value in local.totals[name]]
        weighted_losses = [loss * size for loss, size in zip(local.losses, self._batch_sizes)]
        padding = [0.0] * (num_steps - steps)
        flat = torch.tensor(
            values + weighted_losses + padding + self._batch_sizes + padding, dtype=torch.float64, device=self.world.device
        )
        _all_reduce(flat, "the metrics all-reduce")
        flat = flat.tolist()
        totals = {name: (flat[2 * index], flat[2 * index + 1]) for index, name in enumerate(names)}
        losses_start = 2 * len(names)
        step_losses = [
            total / count
            for total, count in zip(flat[losses_start : losses_start + num_steps], flat[losses_start + num_steps :])
        ]
        totals["loss"] = (sum(step_losses), len(step_losses))
        metrics = metric_values(totals)
        return EpochResult(step_losses, metrics.get("acc"), metrics=metrics, totals=totals, grad_norms=local.grad_norms)

    # Checkpoints: rank 0 writes; every process's RNG state goes in.

    def checkpoint(self, fit_result, best_state, progress=None, config=None):
        content = super().checkpoint(fit_result, best_state, progress, config)
        content["rank_rng"] = self._every_rng_state()
        return content

    def _every_rng_state(self):
        if self.world_size == 1:
            return [rng_state()]
        states = [None] * self.world_size
        with _talking("the gathering of the RNG states"):
            dist.all_gather_object(states, rng_state())
        return states

    def write_checkpoint(self, path, checkpoint):
        if self.world.is_main:
            super().write_checkpoint(path, checkpoint)

    def check_resumable(self, checkpoint):
        super().check_resumable(checkpoint)
        states = checkpoint.get("rank_rng")
        if states is None:
            return  # a single-process run's checkpoint: its 'rng' is the one state
        if not isinstance(states, (list, tuple)) or len(states) != self.world_size:
            raise ValueError(f"'rank_rng' must hold one RNG state per process ({self.world_size})")
        check_rng_state(states[self.world.rank])

    def load_checkpoint(self, path):
        checkpoint = super().load_checkpoint(path)
        if checkpoint.get("rank_rng") is not None:
            set_rng_state(checkpoint["rank_rng"][self.world.rank])
        return checkpoint
