"""The losses of several inputs (MarginRankingLoss, CosineEmbeddingLoss, GaussianNLLLoss)
where other code calls a loss: through ``as_module``, as a graph ``Model``'s node, and in
the places that call a loss as ``loss(outputs, y)`` (Sequential, MultiTaskLoss, the
trainers). Each either gives autograd's numbers on the same torch computation or
refuses with an error that names the loss and says what to do."""

import pytest
import torch
from reference import GRAD_RTOL, assert_close, random_tensor

from nnlab.graph import Input, Model
from nnlab.interop import as_module
from nnlab.layers import (
    CosineEmbeddingLoss,
    CrossEntropyLoss,
    GaussianNLLLoss,
    Linear,
    MarginRankingLoss,
    MultiTaskLoss,
    Sequential,
    Softplus,
)
from nnlab.optimizers import VanillaSGD
from nnlab.training import LayerTrainer, TorchTrainer

F64 = torch.float64
RTOL = GRAD_RTOL[F64]


def signs(shape, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, shape, generator=generator).to(F64) * 2 - 1


# (nnlab loss, torch functional, the inputs' shape, the trailing arguments (targets, var))
CASES = {
    "MarginRankingLoss": (
        lambda: MarginRankingLoss(margin=0.3),
        lambda a, b, y: torch.nn.functional.margin_ranking_loss(a, b, y, margin=0.3),
        (5,),
        lambda: (signs((5,), 3),),
    ),
    "CosineEmbeddingLoss": (
        lambda: CosineEmbeddingLoss(margin=0.1),
        lambda a, b, y: torch.nn.functional.cosine_embedding_loss(a, b, y, margin=0.1),
        (5, 3),
        lambda: (signs((5,), 3),),
    ),
    "GaussianNLLLoss": (
        lambda: GaussianNLLLoss(),
        lambda a, b, var: torch.nn.functional.gaussian_nll_loss(a, b, var),
        (5, 3),
        lambda: (random_tensor((5, 3), F64, seed=3).abs() + 0.1,),
    ),
    "GaussianNLLLoss, var a number": (
        lambda: GaussianNLLLoss(),
        lambda a, b, var: torch.nn.functional.gaussian_nll_loss(a, b, torch.full_like(a, var)),
        (5, 3),
        lambda: (0.7,),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_as_module_gives_autograds_gradients_of_both_inputs(name):
    make_loss, functional, shape, make_rest = CASES[name]
    a, b = random_tensor(shape, F64, seed=1), random_tensor(shape, F64, seed=2)
    rest = make_rest()
    got = [x.clone().requires_grad_(True) for x in (a, b)]
    expected = [x.clone().requires_grad_(True) for x in (a, b)]
    value = as_module(make_loss())(*got, *rest)
    reference = functional(*expected, *rest)
    assert_close("loss", value, reference, atol=1e-12)
    value.backward()
    reference.backward()
    for index in range(2):
        assert_close(f"d argument {index}", got[index].grad, expected[index].grad, rtol=RTOL)


def test_as_module_refuses_targets_that_need_a_gradient_it_does_not_give():
    """torch differentiates MarginRankingLoss's y; the nnlab loss gives (dx1, dx2) only."""
    a, b = random_tensor((5,), F64, seed=1), random_tensor((5,), F64, seed=2)
    y = signs((5,), 3).requires_grad_(True)
    value = as_module(MarginRankingLoss())(a.requires_grad_(True), b, y)
    with pytest.raises(RuntimeError, match=r"as_module\(MarginRankingLoss\).*argument 2 requires grad.*first 2"):
        value.backward()


def ranking_model():
    """Two samples scored by one shared Linear, ranked by a MarginRankingLoss node whose
    targets come when the model runs."""
    first, second = Input(shape=(4,)), Input(shape=(4,))
    score = Linear(4, 1).double()
    loss = MarginRankingLoss(margin=0.2)(score(first), score(second))
    return Model([first, second], loss), score


def test_a_graph_model_ranks_two_node_outputs_with_targets_given_at_run_time():
    model, score = ranking_model()
    a, b = random_tensor((6, 4), F64, seed=1), random_tensor((6, 4), F64, seed=2)
    y = signs((6, 1), 3)
    value = model(a, b, y=y)
    da, db = model.backward(torch.tensor(1.0, dtype=F64))

    weight = score.weight.clone().requires_grad_(True)
    bias = score.bias.clone().requires_grad_(True)
    xa, xb = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    scores = [torch.nn.functional.linear(x, weight, bias) for x in (xa, xb)]
    reference = torch.nn.functional.margin_ranking_loss(*scores, y, margin=0.2)
    reference.backward()
    assert_close("loss", value, reference, atol=1e-12)
    assert_close("d first", da, xa.grad, rtol=RTOL)
    assert_close("d second", db, xb.grad, rtol=RTOL)
    assert_close("d weight", score.grad("weight"), weight.grad, rtol=RTOL)
    assert_close("d bias", score.grad("bias"), bias.grad, rtol=RTOL)


def test_a_graph_model_of_a_gaussian_nll_node_differentiates_mean_target_and_variance():
    features, target = Input(shape=(3,)), Input(shape=(2,))
    mean, spread = Linear(3, 2).double(), Linear(3, 2).double()
    model = Model([features, target], GaussianNLLLoss()(mean(features), target, Softplus()(spread(features))))
    x, t = random_tensor((5, 3), F64, seed=1), random_tensor((5, 2), F64, seed=2)
    value = model(x, t)
    dx, dt = model.backward(torch.tensor(1.0, dtype=F64))

    xr, tr = x.clone().requires_grad_(True), t.clone().requires_grad_(True)
    weights = [tensor.clone().requires_grad_(True) for tensor in (mean.weight, mean.bias, spread.weight, spread.bias)]
    var = torch.nn.functional.softplus(torch.nn.functional.linear(xr, weights[2], weights[3]))
    reference = torch.nn.functional.gaussian_nll_loss(torch.nn.functional.linear(xr, weights[0], weights[1]), tr, var)
    reference.backward()
    assert_close("loss", value, reference, atol=1e-12)
    assert_close("d features", dx, xr.grad, rtol=RTOL)
    assert_close("d target", dt, tr.grad, rtol=RTOL)
    assert_close("d spread weight", spread.grad("weight"), weights[2].grad, rtol=RTOL)


def test_a_graph_loss_fed_its_targets_as_a_node_refuses_backward():
    """The targets would get no gradient (torch differentiates MarginRankingLoss's y):
    an error naming the loss and the way that works, never a zero gradient."""
    first, second, targets = Input(shape=(4,)), Input(shape=(4,)), Input(shape=(1,))
    score = Linear(4, 1).double()
    model = Model([first, second, targets], MarginRankingLoss()(score(first), score(second), targets))
    a, b = random_tensor((6, 4), F64, seed=1), random_tensor((6, 4), F64, seed=2)
    model(a, b, signs((6, 1), 3))
    with pytest.raises(ValueError, match=r"MarginRankingLoss.*first 2 of its 3 input nodes.*y="):
        model.backward(torch.tensor(1.0, dtype=F64))
    labels = Input(shape=(), dtype=torch.long)
    logits = Input(shape=(3,))
    model = Model([logits, labels], CrossEntropyLoss()(logits, labels))
    model(random_tensor((4, 3), F64, seed=1), torch.tensor([0, 2, 1, 0]))
    with pytest.raises(ValueError, match=r"CrossEntropyLoss.*first 1 of its 2 input nodes.*y="):
        model.backward(torch.tensor(1.0, dtype=F64))


@pytest.mark.parametrize("make_loss", [MarginRankingLoss, CosineEmbeddingLoss, GaussianNLLLoss])
def test_one_input_callers_refuse_a_loss_of_several_inputs(make_loss):
    loss = make_loss()
    name = type(loss).__name__
    with pytest.raises(TypeError, match=rf"Sequential\[1\] \({name}\).*inputs.*call it on the"):
        Sequential(Linear(3, 2), loss)
    with pytest.raises(TypeError, match=rf"MultiTaskLoss: loss \[0\] \({name}\).*inputs"):
        MultiTaskLoss(loss)
    model = Linear(3, 2)
    with pytest.raises(ValueError, match=rf"LayerTrainer: {name}.*inputs.*loss_fn\(outputs, y\)"):
        LayerTrainer(model, loss, VanillaSGD(model.params()))
    module = torch.nn.Linear(3, 2)
    torch_loss = getattr(torch.nn, name)()
    with pytest.raises(ValueError, match=rf"TorchTrainer: {name}.*inputs.*loss_fn\(outputs, y\)"):
        TorchTrainer(module, torch_loss, torch.optim.SGD(module.parameters(), lr=0.1))
