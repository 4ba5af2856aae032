"""The registries that the command line, the experiments and the benchmarks share: data
sets (``nnlab.data.DATASETS``, ``load_split``), optimizers (``nnlab.optimizers.OPTIMIZERS``,
``make_optimizer``) and the tasks of ``nnlab train`` (``nnlab.tasks``)."""

import pytest
import torch

from nnlab import data, experiments, optimizers, tasks
from nnlab.data import DATASETS, DataError, load_split
from nnlab.layers import Linear
from nnlab.optimizers import OPTIMIZERS, make_optimizer


@pytest.mark.parametrize("name", [name for name, dataset in DATASETS.items() if not dataset.needs_root])
def test_a_bundled_split_has_the_registered_sample_shape(name):
    x_train, y_train, x_test, y_test = load_split(name, seed=3)
    assert tuple(x_train.shape[1:]) == tuple(x_test.shape[1:]) == DATASETS[name].sample_shape
    assert len(x_train) == len(y_train) > len(x_test) == len(y_test) > 0


def test_the_split_follows_the_seed():
    first, again, other = load_split("digits", seed=1), load_split("digits", seed=1), load_split("digits", seed=2)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_a_data_set_of_files_needs_its_folder_and_an_unknown_one_is_named():
    with pytest.raises(DataError, match="mnist needs root"):
        load_split("mnist")
    with pytest.raises(ValueError, match="unknown data set 'imagenet'"):
        load_split("imagenet")


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_make_optimizer_builds_the_registered_class_with_the_options(name):
    layer = Linear(3, 2)
    optimizer = make_optimizer(name, layer.params(), learn_rate=0.25)
    assert type(optimizer) is OPTIMIZERS[name] and optimizer.learn_rate == 0.25


def test_make_optimizer_names_an_unknown_optimizer():
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'"):
        make_optimizer("lbfgs", Linear(3, 2).params())


def test_experiments_use_the_shared_registries():
    assert experiments.OPTIMIZERS is optimizers.OPTIMIZERS
    assert experiments.DATASETS == {name: data.DATASETS[name].sample_shape for name in ("digits", "cifar10")}


def test_a_regression_problem_refuses_a_cnn():
    split = load_split("diabetes", seed=0)
    with pytest.raises(tasks.TaskError, match="diabetes trains an MLP"):
        tasks.make_problem("cnn", "diabetes", *split)
    problem = tasks.make_problem("mlp", "diabetes", *split)
    assert problem.model(problem.x_test).shape == problem.y_test.shape
