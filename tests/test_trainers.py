"""nnlab.training.trainers: LayerTrainer's clip_grad_norm against torch's clip_grad_norm_
in a TorchTrainer twin run, an MLP(3*32*32, ...) fed images, and BatchResult's averages
against figures computed here."""

import pytest
import torch

from nnlab.data import Batches
from nnlab.layers import MLP, CrossEntropyLoss, MSELoss
from nnlab.optimizers import VanillaSGD
from nnlab.training import LayerTrainer, TorchTrainer
from nnlab.grad_compare import torch_twin


def data(seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 6, generator=generator, dtype=torch.float64) * 5
    y = torch.randint(0, 4, (32,), generator=generator)
    return Batches(x, y, 8)


@pytest.mark.parametrize("max_norm", [0.05, 1e6])
def test_clip_grad_norm_equals_torchs_in_a_twin_run(max_norm):
    torch.manual_seed(0)
    model = MLP(6, 4, hidden_features=(7,)).to(dtype=torch.float64)
    twin = torch_twin(model)
    ours = LayerTrainer(model, CrossEntropyLoss(), VanillaSGD(model.params(), learn_rate=0.5, reg=0.0), clip_grad_norm=max_norm)
    theirs = TorchTrainer(twin, torch.nn.CrossEntropyLoss(), torch.optim.SGD(twin.parameters(), lr=0.5), clip_grad_norm=max_norm)
    ours_fit = ours.fit(data(), data(1), 3, verbose=0)
    theirs_fit = theirs.fit(data(), data(1), 3, verbose=0)
    for (param, _), reference in zip(model.params(), twin.parameters()):
        torch.testing.assert_close(param, reference.detach(), rtol=0, atol=1e-12)
    # The recorded norms are those before clipping, and clipping did (or did not) bite.
    torch.testing.assert_close(ours_fit.steps["grad_norm"], theirs_fit.steps["grad_norm"], rtol=1e-12, atol=0)
    assert (max(ours_fit.steps["grad_norm"]) > max_norm) == (max_norm < 1)


def test_clipping_changes_the_run():
    def weights(clip):
        torch.manual_seed(0)
        model = MLP(6, 4, hidden_features=(7,)).to(dtype=torch.float64)
        LayerTrainer(model, CrossEntropyLoss(), VanillaSGD(model.params(), learn_rate=0.5, reg=0.0), clip_grad_norm=clip).fit(
            data(), data(1), 1, verbose=0
        )
        return model.params()[0][0]

    assert not torch.equal(weights(0.05), weights(None))


@pytest.mark.parametrize("value", [-1.0, "1", True, float("nan")])
def test_clip_grad_norm_must_be_a_number_at_least_0(value):
    model = MLP(6, 4)
    with pytest.raises(ValueError, match="clip_grad_norm must be a number >= 0"):
        LayerTrainer(model, CrossEntropyLoss(), VanillaSGD(model.params()), clip_grad_norm=value)


def test_an_mlp_of_flat_size_fed_images_names_the_mlp_that_flattens():
    model = MLP(3 * 4 * 4, 2)
    trainer = LayerTrainer(model, CrossEntropyLoss(), VanillaSGD(model.params()))
    images = Batches(torch.randn(4, 3, 4, 4), torch.tensor([0, 1, 0, 1]), 2)
    with pytest.raises(ValueError, match=r"samples of shape \(3, 4, 4\).*build MLP\(\(3, 4, 4\), \.\.\.\) to flatten them"):
        trainer.fit(images, images, 1, verbose=0)
    flattening = MLP((3, 4, 4), 2)
    LayerTrainer(flattening, CrossEntropyLoss(), VanillaSGD(flattening.params())).fit(images, images, 1, verbose=0)


def test_batch_results_carry_ready_averages():
    torch.manual_seed(0)
    model = MLP(3, 2)
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    result = LayerTrainer(model, MSELoss(), VanillaSGD(model.params())).test_batch((x, y))
    error = model(x) - y
    assert result.averages["mae"] == pytest.approx(error.abs().mean().item(), rel=1e-6)
    assert result.averages["mse"] == pytest.approx(error.pow(2).mean().item(), rel=1e-6)
    assert result.averages["loss"] == result.loss
    classifier = MLP(3, 4)
    labels = torch.tensor([0, 1, 2, 3, 0])
    batch = LayerTrainer(classifier, CrossEntropyLoss(), VanillaSGD(classifier.params())).test_batch((x, labels))
    correct = (classifier(x).argmax(1) == labels).sum().item()
    assert batch.averages["acc"] == 100.0 * correct / 5 and batch.num_correct == correct
