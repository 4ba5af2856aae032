"""nnlab.distributed: data-parallel training on 2 gloo processes equals one process trained
on the same global batches; shards equal torch's DistributedSampler's; a killed or hung
process makes the other stop with an error naming it; torchrun runs nnlab train
--distributed; one process alone changes nothing.

The 2-process tests fork their processes from this one (no interpreter start-up, as a
DataLoader's workers) and give each torchrun's environment variables, with the
rendezvous store hosted here on a port the OS picks (port 0: no race for a free port),
as torchrun's agent hosts it (TORCHELASTIC_USE_AGENT_STORE)."""

import datetime
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data.distributed import DistributedSampler

from nnlab import cli, distributed, experiments
from nnlab.classifier import BinaryClassifier
from nnlab.data import Batches
from nnlab.layers import (
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    CrossEntropyLoss,
    Flatten,
    Linear,
    ReLU,
    Sequential,
    Tanh,
)
from nnlab.optimizers import Adam, MomentumSGD
from nnlab.training import Callback, LayerTrainer, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


class Launch:
    """Processes forked from this one, each with torchrun's environment and its output
    in OUT_DIR/rank<r>.log, around a rendezvous store hosted here."""

    def __init__(self, out_dir, worker, *args, world_size=2):
        self.out_dir = Path(out_dir)
        self.store = dist.TCPStore(
            "127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=datetime.timedelta(seconds=60)
        )
        context = multiprocessing.get_context("fork")
        self.processes = [
            context.Process(target=_child, args=(rank, world_size, self.store.port, out_dir, worker, args))
            for rank in range(world_size)
        ]
        for process in self.processes:
            process.start()

    def log(self, rank):
        return (self.out_dir / f"rank{rank}.log").read_text()

    def finish(self, timeout):
        """(exit status, output) of each process; kills what still runs after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        for process in self.processes:
            process.join(max(deadline - time.monotonic(), 0.1))
            if process.is_alive():
                process.kill()
                process.join()
        return [(process.exitcode, self.log(rank)) for rank, process in enumerate(self.processes)]


def _child(rank, world_size, port, out_dir, worker, args):
    log = os.open(Path(out_dir) / f"rank{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        TORCHELASTIC_USE_AGENT_STORE="True",
    )
    worker(out_dir, *args)


# The processes' work ---------------------------------------------------------------------

# Per-process batch 4 on 2 processes: the 45 training samples are padded to 46 (23 per
# process: steps of 4, 4, 4, 4, 4, 3), the 21 test samples split 11 and 10 (keep).
NUM_TRAIN, NUM_TEST, BATCH_SIZE, EPOCHS, SHUFFLE_SEED = 45, 21, 4, 2, 5
CASES = {
    # name: (model kind, dtype, synchronised BatchNorm)
    "mlp-float64": ("mlp", torch.float64, True),
    "mlp-float32": ("mlp", torch.float32, True),
    "cnn-float64": ("cnn", torch.float64, True),
    "cnn-float32": ("cnn", torch.float32, True),
    "cnn-local-bn-float64": ("cnn", torch.float64, False),
}


def case_data(kind, dtype):
    """(x_train, y_train, x_test, y_test), the same in every process."""
    generator = torch.Generator().manual_seed(7)
    shape = (6,) if kind == "mlp" else (1, 6, 6)
    x = torch.randn(NUM_TRAIN + NUM_TEST, *shape, generator=generator, dtype=dtype)
    y = torch.randint(0, 3, (NUM_TRAIN + NUM_TEST,), generator=generator)
    return x[:NUM_TRAIN], y[:NUM_TRAIN], x[NUM_TRAIN:], y[NUM_TRAIN:]


def case_model(kind, dtype, seed):
    torch.manual_seed(seed)
    if kind == "mlp":
        model = Sequential(Linear(6, 8), Tanh(), Linear(8, 3))
    else:
        model = Sequential(
            Conv2d(1, 4, 3, padding=1),
            BatchNorm2d(4),
            ReLU(),
            AvgPool2d(2),
            Flatten(),
            Linear(36, 8),
            BatchNorm1d(8),
            ReLU(),
            Linear(8, 3),
        )
    return model.to(dtype=dtype)


def case_optimizer(model):
    return MomentumSGD(model.params(), learn_rate=0.1, reg=1e-3, momentum=0.9)


def equivalence(out_dir):
    """Trains every case (rank r starts from other weights: seed 100 + r) and saves
    each rank's final state and records, and the collectives of one more step; then
    resumes the first case from its checkpoint after epoch 1 and saves that run's last
    state too; then makes the processes' batches differ."""
    world = distributed.setup(timeout=30)
    for name, (kind, dtype, sync) in CASES.items():
        fit, trainer = _train(kind, dtype, sync, world, EPOCHS)
        result = {"state": trainer.model.state_dict(), "metrics": fit.metrics, "steps": fit.steps}
        result["one_step"] = _collectives_of_one_step(trainer, case_data(kind, dtype)[:2])
        torch.save(result, Path(out_dir) / f"{name}-rank{world.rank}.pt")
    checkpoint = Path(out_dir) / "mlp.ckpt"
    _train("mlp", torch.float64, True, world, 1, checkpoints=checkpoint)
    fit, _ = _train("mlp", torch.float64, True, world, EPOCHS, checkpoints=checkpoint, resume=checkpoint)
    distributed.synchronize()  # rank 0 has written the last checkpoint
    # fit ends on the best epoch's weights; the checkpoint's "model" is the last epoch's.
    result = {"state": load_checkpoint(checkpoint)["model"], "metrics": fit.metrics, "steps": fit.steps}
    torch.save(result, Path(out_dir) / f"resumed-rank{world.rank}.pt")
    (Path(out_dir) / f"unequal-rank{world.rank}.txt").write_text("\n".join(_unequal_batches(world)))
    distributed.synchronize()
    distributed.shutdown()


def _collectives_of_one_step(trainer, data):
    """(collectives, bytes sent) of one training step on 4 samples per process."""
    x, y = data
    distributed.Traffic.reset()
    trainer.model.train()
    trainer.train_batch((x[:4], y[:4]))
    return distributed.Traffic.calls, distributed.Traffic.bytes


def _unequal_batches(world):
    """The errors of a step whose batches differ in size across processes, of an epoch
    whose loaders differ in length, and of models that differ (every process raises;
    none hangs)."""
    x, y, _, _ = case_data("mlp", torch.float64)
    model = case_model("mlp", torch.float64, seed=0)
    trainer = distributed.DistributedTrainer(model, CrossEntropyLoss(), case_optimizer(model))
    with pytest.raises(ValueError) as unequal_batch:
        trainer.train_batch((x[: 4 + world.rank], y[: 4 + world.rank]))
    num_samples = 8 + 4 * world.rank
    with pytest.raises(ValueError) as unequal_steps:
        trainer.train_epoch(Batches(x[:num_samples], y[:num_samples], 4))
    with pytest.raises(distributed.DistributedError) as unequal_models:
        distributed.DataParallel(Sequential(Linear(6, 8 + world.rank)))
    return [str(unequal_batch.value), str(unequal_steps.value), str(unequal_models.value)]


def _train(kind, dtype, sync, world, epochs, **fit_kw):
    x_train, y_train, x_test, y_test = case_data(kind, dtype)
    model = case_model(kind, dtype, seed=100 + world.rank)
    trainer = distributed.DistributedTrainer(model, CrossEntropyLoss(), case_optimizer(model), sync_batchnorm=sync)
    train = distributed.ShardedBatches(x_train, y_train, BATCH_SIZE, shuffle=True, seed=SHUFFLE_SEED)
    test = distributed.ShardedBatches(x_test, y_test, BATCH_SIZE, uneven="keep")
    return trainer.fit(train, test, epochs, verbose=False, **fit_kw), trainer


def stalled(out_dir, how, timeout):
    """Trains a small MLP; rank 1 stops answering at batch 3 of epoch 1 (it writes
    OUT_DIR/stalled, then sleeps, to be killed or to hang, or raises an error). Rank 0
    must stop with an error; it prints it on one line and exits 1, as nnlab train does."""
    world = distributed.setup(timeout=float(timeout))
    x_train, y_train, x_test, y_test = case_data("mlp", torch.float32)
    model = case_model("mlp", torch.float32, seed=0)

    def stall(trainer, phase, batch, result):
        if world.rank == 1 and batch == 3:
            (Path(out_dir) / "stalled").write_text(how)
            if how == "raise":
                raise ArithmeticError("rank 1's own failure")
            time.sleep(600)

    trainer = distributed.DistributedTrainer(model, CrossEntropyLoss(), case_optimizer(model))
    train = distributed.ShardedBatches(x_train, y_train, 2, shuffle=True)
    test = distributed.ShardedBatches(x_test, y_test, 2, uneven="keep")
    try:
        trainer.fit(train, test, 3, verbose=False, callbacks=Callback(on_batch_end=stall))
    except Exception as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr, flush=True)
        os._exit(1)  # leave at once, as a failed torchrun worker does (no group teardown)
    print("finished", flush=True)


def experiment(out_dir):
    """`nnlab experiment run ... --distributed` (no seed: rank 0 draws it), then `nnlab
    experiment rerun` of its result on 2 processes; each exit status into the log."""
    options = ["-K", "4", "-L", "1", "-P", "1", "-H", "8", "--epochs", "2", "--batches", "4", "--bs-train", "16"]
    run = cli.main(["experiment", "run", "-n", "dp", *options, "-o", str(out_dir), "--distributed", "--quiet"])
    print(f"run exit status {run}", flush=True)
    rerun = cli.main(["experiment", "rerun", str(Path(out_dir) / "dp_L1_K4.json"), "--distributed", "--quiet"])
    print(f"rerun exit status {rerun}", flush=True)


def disagreeing(out_dir):
    """Each rank fits with its own learning rate, then with its own optimizer, then for
    its own number of epochs; then runs `nnlab train --distributed` with its own --lr
    and --optimizer. Every error into OUT_DIR/disagree-rank<r>.txt, the command's exit
    status too."""
    world = distributed.setup(timeout=30)
    x_train, y_train, x_test, y_test = case_data("mlp", torch.float32)
    train = distributed.ShardedBatches(x_train, y_train, BATCH_SIZE, shuffle=True)
    test = distributed.ShardedBatches(x_test, y_test, BATCH_SIZE, uneven="keep")
    rules = {
        "lr": (lambda params: MomentumSGD(params, learn_rate=0.1 * (1 + world.rank), momentum=0.9), EPOCHS),
        "optimizer": (lambda params: (MomentumSGD if world.rank == 0 else Adam)(params, learn_rate=0.1), EPOCHS),
        "epochs": (case_optimizer_of_params, EPOCHS + world.rank),
    }
    lines = []
    for name, (make_optimizer, epochs) in rules.items():
        model = case_model("mlp", torch.float32, seed=0)
        trainer = distributed.DistributedTrainer(model, CrossEntropyLoss(), make_optimizer(model.params()))
        try:
            trainer.fit(train, test, epochs, verbose=False)
            lines.append(f"{name}: trained")
        except distributed.DistributedError as error:
            lines.append(f"{name}: {' '.join(str(error).split())}")
    options = [["--lr", "0.01"], ["--lr", "0.02", "--optimizer", "sgd"]][world.rank]
    status = cli.main(["train", "--distributed", "--epochs", "1", "--no-verify", "--quiet", *options])
    lines.append(f"nnlab train exit status {status}")
    (Path(out_dir) / f"disagree-rank{world.rank}.txt").write_text("\n".join(lines))


def case_optimizer_of_params(params):
    return MomentumSGD(params, learn_rate=0.1, reg=1e-3, momentum=0.9)


# Two processes against one -----------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Every case of distributed_CASES trained on 2 processes (one launch)."""
    out_dir = tmp_path_factory.mktemp("equivalence")
    launch = Launch(out_dir, equivalence)
    results = launch.finish(timeout=240)
    for rank, (status, stderr) in enumerate(results):
        assert status == 0, f"rank {rank} failed:\n{stderr}"
    return out_dir


def reference_fit(kind, dtype, sync):
    """One process trained on the global batches: step k's batch is the union of the
    two ranks' k-th batches under torch's own DistributedSampler (padded, shuffled with
    the seed plus the 0-based epoch). Without synchronised BatchNorm, each rank's shard
    is normalised by its own statistics ("ghost batches"): its forward and backward run
    separately, with its own running statistics, and the gradients add up with weight
    1/2; the running statistics are averaged after each epoch."""
    x_train, y_train, x_test, y_test = case_data(kind, dtype)
    model = case_model(kind, dtype, seed=100)
    loss_fn = CrossEntropyLoss()
    optimizer = case_optimizer(model)
    size = BATCH_SIZE
    world_size = 2
    per_rank_state = [_batchnorm_state(model)] * world_size
    step_losses, train_losses = [], []
    for epoch in range(EPOCHS):
        shards = []
        for rank in range(world_size):
            sampler = DistributedSampler(
                range(NUM_TRAIN), world_size, rank, shuffle=True, seed=SHUFFLE_SEED
            )
            sampler.set_epoch(epoch)
            shards.append(torch.tensor(list(sampler)))
        model.train()
        losses = []
        for start in range(0, len(shards[0]), size):
            batches = [shard[start : start + size] for shard in shards]
            optimizer.zero_grad()
            if sync:
                indices = torch.cat(batches)
                loss = loss_fn(model(x_train[indices]), y_train[indices])
                model.backward(loss_fn.backward())
            else:
                loss = 0.0
                for rank, indices in enumerate(batches):
                    model.load_state_dict(dict(model.state_dict(), **per_rank_state[rank]))
                    shard_loss = loss_fn(model(x_train[indices]), y_train[indices])
                    model.backward(loss_fn.backward() / world_size)
                    per_rank_state[rank] = _batchnorm_state(model)
                    loss += float(shard_loss) / world_size
            optimizer.step()
            losses.append(float(loss))
        if not sync:
            # The running statistics are averaged; the counts are equal.
            averaged = {
                key: sum(state[key] for state in per_rank_state) / world_size if value.is_floating_point() else value
                for key, value in per_rank_state[0].items()
            }
            model.load_state_dict(dict(model.state_dict(), **averaged))
            per_rank_state = [averaged] * world_size
        step_losses += losses
        train_losses.append(sum(losses) / len(losses))
    model.eval()
    test_losses, correct = [], 0
    for start in range(0, NUM_TEST, size * world_size):
        scores = model(x_test[start : start + size * world_size])
        labels = y_test[start : start + size * world_size]
        test_losses.append(float(loss_fn(scores, labels)))
        correct += int((scores.argmax(dim=1) == labels).sum())
    records = {
        "steps": step_losses,
        "train_loss": train_losses,
        "test_loss": sum(test_losses) / len(test_losses),
        "test_acc": 100.0 * correct / NUM_TEST,
    }
    return model.state_dict(), records


def _batchnorm_state(model):
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return {key: value for key, value in model.state_dict().items() if key.endswith(buffers)}


TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-5}


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_equal_one_process_on_the_global_batches(trained, case):
    kind, dtype, sync = CASES[case]
    tolerance = TOLERANCES[dtype]
    rank0, rank1 = (torch.load(trained / f"{case}-rank{rank}.pt") for rank in range(2))
    # Both processes hold exactly the same model (started from other weights: broadcast).
    for key, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][key]), f"{key} differs between the ranks"
    assert rank0["metrics"] == rank1["metrics"] and rank0["steps"] == rank1["steps"]

    reference_state, reference = reference_fit(kind, dtype, sync)
    assert set(rank0["state"]) == set(reference_state)
    for key, expected in reference_state.items():
        found = rank0["state"][key]
        assert found.dtype == expected.dtype, key
        if not found.is_floating_point():
            assert torch.equal(found, expected), key
            continue
        torch.testing.assert_close(found, expected, rtol=tolerance, atol=tolerance, msg=lambda m: f"{case} {key}: {m}")
    # The figures are the global batches' figures.
    loss_tolerance = dict(rtol=tolerance, atol=tolerance)
    assert len(rank0["steps"]["loss"]) == len(reference["steps"]) == 12
    torch.testing.assert_close(torch.tensor(rank0["steps"]["loss"]), torch.tensor(reference["steps"]), **loss_tolerance)
    torch.testing.assert_close(
        torch.tensor(rank0["metrics"]["train_loss"]), torch.tensor(reference["train_loss"]), **loss_tolerance
    )
    torch.testing.assert_close(rank0["metrics"]["test_loss"][-1], reference["test_loss"], **loss_tolerance)
    assert rank0["metrics"]["test_acc"][-1] == pytest.approx(reference["test_acc"], abs=1e-9)


@pytest.mark.parametrize(
    "case, collectives",
    # The MLP: one all-reduce of all 4 gradients. The CNN: per BatchNorm layer, two in
    # forward and one in backward, then the gradients'; per-process BatchNorm: none.
    [("mlp-float64", 1), ("mlp-float32", 1), ("cnn-float64", 7), ("cnn-local-bn-float64", 1)],
)
def test_one_step_averages_all_gradients_in_one_flat_all_reduce(trained, case, collectives):
    kind, dtype, sync = CASES[case]
    calls, sent = torch.load(trained / f"{case}-rank0.pt")["one_step"]
    model = case_model(kind, dtype, seed=0)
    gradient_bytes = sum(param.numel() for param, _ in model.params()) * dtype.itemsize
    batch_size_bytes = 2 * dtype.itemsize  # each process's batch size, in the same buffer
    assert calls == collectives
    if not sync or kind == "mlp":
        assert sent == gradient_bytes + batch_size_bytes


def test_unequal_batches_step_counts_or_models_stop_every_process_with_a_clear_error(trained):
    for rank in range(2):
        batch_error, steps_error, model_error = (trained / f"unequal-rank{rank}.txt").read_text().splitlines()
        assert "the processes' batches differ in size at this step ([4, 5] by rank)" in batch_error
        assert "different numbers of batches ({0: 2, 1: 3} by rank)" in steps_error
        assert model_error == (
            f"rank {rank} of 2: DataParallel: the model (names, shapes and dtypes of its parameters and buffers) "
            "on rank 1 differs from rank 0's; every process must have the same"
        )


def test_a_resumed_two_process_run_equals_the_uninterrupted_one(trained):
    """Epoch 1 saved, then a fresh trainer on each process resumed it to epoch 2."""
    for rank in range(2):
        resumed = torch.load(trained / f"resumed-rank{rank}.pt")
        straight = torch.load(trained / f"mlp-float64-rank{rank}.pt")
        for key, value in straight["state"].items():
            assert torch.equal(resumed["state"][key], value), key
        assert resumed["metrics"] == straight["metrics"] and resumed["steps"] == straight["steps"]
    checkpoint = load_checkpoint(trained / "mlp.ckpt")
    assert checkpoint["world_size"] == 2 and len(checkpoint["rank_rng"]) == 2


def test_a_two_process_checkpoint_is_refused_by_one_process(trained):
    kind, dtype, _ = CASES["mlp-float64"]
    model = case_model(kind, dtype, seed=0)
    trainer = LayerTrainer(model, CrossEntropyLoss(), case_optimizer(model))
    before = model.state_dict()
    with pytest.raises(ValueError, match="trained by 2 processes in data parallel, this trainer has 1 process"):
        trainer.load_checkpoint(trained / "mlp.ckpt")
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


# A process that fails -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["kill", "hang", "raise"])
def test_a_failed_killed_or_hung_process_stops_the_other_with_an_error_naming_it(tmp_path, how):
    """Rank 1 stops answering in the middle of epoch 1. Killed, its connections close
    and rank 0 names it at once; failed with an error, rank 0 names it and its error;
    hung, rank 0 gives up after the 3 s timeout."""
    timeout = 3
    launch = Launch(tmp_path, stalled, how, timeout)
    rank0, rank1 = launch.processes
    marker = tmp_path / "stalled"
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline and rank0.is_alive(), launch.finish(timeout=1)
        time.sleep(0.02)
    stalled_at = time.monotonic()
    if how == "kill":
        rank1.kill()
        rank1.join()
    rank0.join(timeout + 20)
    waited = time.monotonic() - stalled_at
    (status, log), _ = launch.finish(timeout=0.1)
    assert status == 1, log
    (error,) = [line for line in log.splitlines() if line.startswith("error:")]
    assert "rank 0 of 2: the gradient all-reduce failed" in error
    if how == "kill":
        assert f"rank 1 (pid {rank1.pid}) is no longer running" in error
    elif how == "raise":
        assert "rank 1 failed: ArithmeticError: rank 1's own failure" in error
    else:
        assert "did not answer within the 3 s timeout" in error
        assert waited >= timeout - 0.5
    assert waited < timeout + 20


# Shards -----------------------------------------------------------------------------------


@given(
    num_samples=st.integers(1, 40),
    world_size=st.integers(1, 5),
    batch_size=st.integers(1, 7),
    shuffle=st.booleans(),
    drop=st.booleans(),
    epoch=st.integers(0, 3),
)
def test_shards_are_distributed_samplers_indices(num_samples, world_size, batch_size, shuffle, drop, epoch):
    if num_samples < world_size:
        return
    samples = torch.arange(num_samples)
    for rank in range(world_size):
        sampler = DistributedSampler(range(num_samples), world_size, rank, shuffle=shuffle, seed=3, drop_last=drop)
        sampler.set_epoch(epoch)
        batches = distributed.ShardedBatches(
            samples, samples, batch_size, shuffle=shuffle, seed=3, uneven="drop" if drop else "pad", rank=rank, world_size=world_size
        )
        batches.set_epoch(epoch)
        drawn = torch.cat([x for x, _ in batches]).tolist()
        assert drawn == list(sampler)
        assert len(batches) == -(-len(sampler) // batch_size)


@given(num_samples=st.integers(1, 40), world_size=st.integers(1, 5), batch_size=st.integers(1, 7))
def test_keep_shards_count_every_sample_once(num_samples, world_size, batch_size):
    if num_samples < world_size:
        return
    samples = torch.arange(num_samples)
    shards = [
        distributed.ShardedBatches(samples, samples, batch_size, uneven="keep", rank=rank, world_size=world_size)
        for rank in range(world_size)
    ]
    drawn = sorted(int(i) for shard in shards for x, _ in shard for i in x)
    assert drawn == list(range(num_samples))
    assert max(s.num_samples for s in shards) - min(s.num_samples for s in shards) <= 1


def test_sharded_batches_refuse_bad_arguments():
    samples = torch.arange(5)
    with pytest.raises(ValueError, match="uneven must be one of"):
        distributed.ShardedBatches(samples, samples, 2, uneven="repeat")
    with pytest.raises(ValueError, match="rank must be an int from 0 to 1"):
        distributed.ShardedBatches(samples, samples, 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="3 samples cannot give each of 4 processes one"):
        distributed.ShardedBatches(samples[:3], samples[:3], 2, rank=0, world_size=4)
    with pytest.raises(TypeError, match="set_epoch"):
        distributed.ShardedBatches(samples, samples, 2).shuffle()


# One process, and torchrun's environment ------------------------------------------------


def test_without_torchrun_one_process_trains_exactly_as_without_this_module(monkeypatch):
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    world = distributed.setup()
    assert (world.rank, world.world_size, world.backend) == (0, 1, None)
    fits = []
    for trainer_class in (LayerTrainer, distributed.DistributedTrainer):
        x_train, y_train, x_test, y_test = case_data("cnn", torch.float64)
        model = case_model("cnn", torch.float64, seed=1)
        trainer = trainer_class(model, CrossEntropyLoss(), case_optimizer(model))
        fit = trainer.fit(Batches(x_train, y_train, 8), Batches(x_test, y_test, 8), 2, verbose=False)
        fits.append((fit, model.state_dict()))
    distributed.shutdown()
    (plain, plain_state), (parallel, parallel_state) = fits
    assert plain == parallel and plain.metrics == parallel.metrics and plain.steps == parallel.steps
    for key, value in plain_state.items():
        assert torch.equal(parallel_state[key], value)


def test_an_incomplete_torchrun_environment_is_a_clear_error(monkeypatch, capsys):
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(distributed.TorchrunEnvironmentError, match="RANK, WORLD_SIZE set but LOCAL_RANK, MASTER_ADDR, MASTER_PORT missing"):
        distributed.setup()
    status = cli.main(["train", "--distributed", "--epochs", "1", "--quiet"])
    error = capsys.readouterr().err
    assert status == 2 and "nnlab train: error: --distributed: incomplete torchrun environment" in error
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(distributed.TorchrunEnvironmentError, match="0 <= RANK < WORLD_SIZE"):
        distributed.setup()


# The commands under torchrun ---------------------------------------------------------------


def test_experiment_run_and_rerun_distributed_on_two_processes(tmp_path, capsys, monkeypatch):
    """Forked with torchrun's environment, each process runs the command's main()."""
    launch = Launch(tmp_path, experiment)
    (status0, log0), (status1, log1) = launch.finish(timeout=120)
    assert status0 == status1 == 0, log0 + log1
    assert "run exit status 0" in log0 and "run exit status 0" in log1
    # The rerun on 2 processes reproduces the 2-process run to the last digit.
    assert "rerun exit status 0" in log0 and "rerun exit status 0" in log1
    assert "reproduced: the same FitResult to the last digit" in log0
    (summary,) = [line for line in log0.splitlines() if line.startswith(f"{tmp_path / 'dp_L1_K4.json'}: test accuracy")]
    assert "after 2 epochs" in summary
    assert "dp_L1_K4.json" not in log1  # rank 1 prints nothing
    assert [path.name for path in tmp_path.glob("*.json")] == ["dp_L1_K4.json"]  # no rerun file, no stray copy
    record = experiments.read_result(tmp_path / "dp_L1_K4.json")
    assert record["environment"]["world_size"] == 2
    assert record["results"].steps["loss"] and len(record["results"].steps["loss"]) == 2 * 4

    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    status = cli.main(["experiment", "rerun", str(tmp_path / "dp_L1_K4.json"), "--quiet"])
    error = capsys.readouterr().err
    assert status == 2, error
    assert "trained by 2 data-parallel process(es), this rerun has 1" in error





def test_torchrun_runs_nnlab_train_distributed_and_only_rank_0_writes(tmp_path, capsys, monkeypatch):
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    checkpoint, plot = tmp_path / "run.ckpt", tmp_path / "curves.png"
    command = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "nnlab", "train"]
    options = ["--distributed", "--epochs", "1", "--batch-size", "64"]
    result = subprocess.run(
        [sys.executable, *command, *options, "--checkpoint", str(checkpoint), "--plot", str(plot)],
        cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg"),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("final test accuracy") == 1  # rank 0's stdout only
    assert result.stdout.count("gradient check on one batch") == 1
    assert result.stderr.count("epoch 1/1: train loss") == 1  # rank 0's progress only
    saved = load_checkpoint(checkpoint)
    assert saved["world_size"] == 2 and saved["config"]["batch_size"] == 64
    assert plot.stat().st_size > 0
    assert sorted(os.listdir(tmp_path)) == ["curves.png", "run.ckpt"]

    # One process cannot continue a 2-process run, with or without --distributed.
    for extra in ([], ["--distributed"]):
        status = cli.main(["train", "--resume", str(checkpoint), "--epochs", "2", "--quiet", *extra])
        error = capsys.readouterr().err
        assert status == 2, error
        assert "the run was trained by 2 processes in data parallel, this run has 1" in error
        assert "torchrun --nproc-per-node 2 -m nnlab train --distributed --resume" in error


def test_data_parallel_passes_requires_input_grad_to_its_model(monkeypatch):
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    model = Sequential(Linear(6, 4), ReLU(), Linear(4, 2))
    parallel = distributed.DataParallel(model)
    out = parallel(torch.randn(3, 6))
    parallel.requires_input_grad(False)
    assert not model.needs_input_grad and not model[0].needs_input_grad
    assert parallel.backward(torch.ones_like(out)) is None
    parallel.requires_input_grad(True)
    assert parallel.backward(torch.ones_like(out)).shape == (3, 6)


def test_distributed_trainer_counts_with_the_models_own_classification_rule(monkeypatch):
    """A BinaryClassifier predicts class 1 when P(class 1) >= its threshold; the
    wrapper must not hide that rule behind an argmax."""
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    torch.manual_seed(3)
    x = torch.randn(40, 6, dtype=torch.float64)
    y = torch.randint(0, 2, (40,))
    classifier = BinaryClassifier(Sequential(Linear(6, 8), Tanh(), Linear(8, 2)).to(dtype=torch.float64), threshold=0.9)
    trainer = distributed.DistributedTrainer(classifier, CrossEntropyLoss(), case_optimizer(classifier))
    accuracy = trainer.test_epoch(Batches(x, y, 8), verbose=False).accuracy
    with torch.no_grad():
        probability_of_1 = torch.softmax(classifier.model(x), dim=1)[:, 1]
    thresholded = 100.0 * float(((probability_of_1 >= 0.9).long() == y).double().mean())
    argmax = 100.0 * float(((probability_of_1 >= 0.5).long() == y).double().mean())
    assert thresholded != argmax  # the data tell the two rules apart
    assert accuracy == pytest.approx(thresholded, abs=1e-12)
    assert trainer.model.classify_scores == classifier.classify_scores
    assert not hasattr(distributed.DataParallel(Sequential(Linear(6, 2))), "classify_scores")


def test_processes_that_disagree_on_the_run_configuration_stop_with_an_error_naming_it(tmp_path):
    """Other learning rates, optimizers or epoch counts on two processes would train a
    model that neither configuration describes: every process refuses before training."""
    launch = Launch(tmp_path, disagreeing)
    for rank, (status, log) in enumerate(launch.finish(timeout=120)):
        assert status == 0, log
        lines = (tmp_path / f"disagree-rank{rank}.txt").read_text().splitlines()
        lr, optimizer, epochs, command = lines
        assert lr.startswith(f"lr: rank {rank} of 2: the run's configuration differs between the processes:"), lr
        assert "optimizer.learn_rate: 0.1 on rank 0, 0.2 on rank 1" in lr
        assert "optimizer: MomentumSGD on rank 0, Adam on rank 1" in optimizer
        assert "num_epochs: 2 on rank 0, 3 on rank 1" in epochs
        assert command == "nnlab train exit status 1"
    error = launch.log(0).splitlines()[-1]
    assert error.startswith("nnlab train: error: rank 0 of 2: the run's configuration differs"), error
    assert "optimizer: Adam on rank 0, VanillaSGD on rank 1" in error and "optimizer.learn_rate: 0.01 on rank 0, 0.02 on rank 1" in error


def test_the_largest_seed_shards_every_epoch_and_wraps_around_as_torch_seeds_do():
    """Epoch e draws the permutation of seed + e, taken modulo 2**64 (torch's seeds are
    64-bit: manual_seed(-1) is manual_seed(2**64 - 1)); an epoch past the largest seed
    must not overflow."""
    samples = torch.arange(10)
    shards = distributed.ShardedBatches(samples, samples, 10, shuffle=True, seed=2**64 - 1, rank=0, world_size=1)
    shards.set_epoch(1)
    (x, _), = list(shards)
    assert torch.equal(x, torch.randperm(10, generator=torch.Generator().manual_seed(0)))
    for seed in (-1, 2**64, 0.5, True):
        with pytest.raises(ValueError, match="seed must be an int from 0 to 2\\*\\*64 - 1"):
            distributed.ShardedBatches(samples, samples, 2, shuffle=True, seed=seed, rank=0, world_size=1)
