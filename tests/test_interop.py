"""nnlab.interop.as_module: gradients are the layers' hand-written backward (never
autograd's derivative of their forward), torch.optim trains the layers' own tensors,
state_dict, modes and .to() as torch.nn users expect, and mixed nnlab / torch.nn models
train step for step like their all-nnlab twins."""

import copy

import pytest
import torch
from reference import GRAD_RTOL, assert_close, random_tensor, randomize_batchnorms

from nnlab.interop import as_module
from nnlab.layers import (
    BatchNorm2d,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    Flatten,
    Heads,
    Layer,
    Linear,
    MaxPool2d,
    ReLU,
    ResidualBlock,
    Sequential,
    Tanh,
)
from nnlab.models import CNN, MLP
from nnlab.optimizers import Adam, VanillaSGD

F64 = torch.float64


class Doubled(Layer):
    """The identity, with a deliberately different hand-written VJP (2 * dout): what
    comes back through the adapter tells which of the two autograd used."""

    def forward(self, x, **kw):
        self._x = x
        return x.clone()

    def backward(self, dout):
        self.cached("_x")
        return 2 * dout


def test_backward_is_the_hand_written_one_never_autograds():
    x = torch.randn(3, 4, dtype=F64, requires_grad=True)
    as_module(Doubled())(x).sum().backward()
    assert torch.equal(x.grad, torch.full((3, 4), 2.0, dtype=F64))


LAYERS = {
    "Linear": (lambda: Linear(5, 3), (4, 5)),
    "Conv2d": (lambda: Conv2d(2, 3, 3, stride=2, padding=1), (2, 2, 7, 6)),
    "MLP": (lambda: MLP(5, 3, (6, 4), activation="tanh"), (4, 5)),
    "CNN with batch norm": (lambda: CNN((2, 8, 8), 3, [3, 4], 1, [5], batchnorm=True), (3, 2, 8, 8)),
    "ResidualBlock": (lambda: ResidualBlock(2, [3, 2], [3, 1], batchnorm=True), (2, 2, 5, 5)),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_gradients_equal_the_hand_written_backward(name):
    make, shape = LAYERS[name]
    torch.manual_seed(0)
    layer = make().to(dtype=F64)
    randomize_batchnorms(layer)
    by_hand = copy.deepcopy(layer)
    module = as_module(layer)
    x = random_tensor(shape, F64, seed=1)
    dout_seed = torch.Generator().manual_seed(2)

    x_ref = x.clone().requires_grad_(True)
    out = module(x_ref)
    dout = torch.randn(out.shape, generator=dout_seed, dtype=F64)
    out.backward(dout)

    expected_out = by_hand(x.clone())
    expected_dx = by_hand.backward(dout)
    assert_close("output", out.detach(), expected_out, atol=0.0)
    assert_close("input gradient", x_ref.grad, expected_dx, rtol=GRAD_RTOL[F64])
    parameters = list(module.parameters())
    assert len(parameters) == len(by_hand.params())
    for index, (parameter, (_, grad)) in enumerate(zip(parameters, by_hand.params())):
        assert_close(f"param#{index + 1:02d} gradient", parameter.grad, grad, rtol=GRAD_RTOL[F64])
    # The adapter leaves the layer's own gradient tensors as they were.
    assert all(grad.abs().sum() == 0 for _, grad in layer.params())


def test_losses_and_several_outputs_go_through():
    torch.manual_seed(1)
    heads = Heads(Linear(4, 3), Linear(4, 2)).to(dtype=F64)
    by_hand = copy.deepcopy(heads)
    module = as_module(heads)
    loss = as_module(CrossEntropyLoss())
    x = random_tensor((5, 4), F64).requires_grad_(True)
    y = torch.tensor([0, 2, 1, 1, 0])
    scores, other = module(x)
    total = loss(scores, y) + 0.5 * other.square().sum()
    total.backward()

    scores_ref, other_ref = by_hand(x.detach())
    reference_loss = CrossEntropyLoss()
    reference_loss(scores_ref, y)
    dx = by_hand.backward((reference_loss.backward(), other_ref))
    assert_close("input gradient", x.grad, dx, rtol=GRAD_RTOL[F64])
    for parameter, (_, grad) in zip(module.parameters(), by_hand.params(), strict=True):
        assert_close("parameter gradient", parameter.grad, grad, rtol=GRAD_RTOL[F64])


def test_parameters_share_storage_and_state_dict_has_the_layers_keys():
    torch.manual_seed(2)
    layer = CNN((1, 6, 6), 2, [3], 1, [4], batchnorm=True)
    module = as_module(layer)
    assert list(module.state_dict()) == list(layer.state_dict())
    assert [name for name, _ in module.named_parameters()] == [
        key for key in layer.state_dict() if "running" not in key and "num_batches" not in key
    ]
    for parameter, (param, _) in zip(module.parameters(), layer.params(), strict=True):
        assert parameter.data_ptr() == param.data_ptr() and parameter.requires_grad
    with torch.no_grad():
        next(module.parameters()).add_(1.0)  # what torch.optim does
    assert torch.equal(layer.params()[0][0], next(module.parameters()).detach())

    source = CNN((1, 6, 6), 2, [3], 1, [4], batchnorm=True)
    randomize_batchnorms(source, seed=3)
    module.load_state_dict(source.state_dict())
    for key, value in source.state_dict().items():
        assert torch.equal(layer.state_dict()[key], value), key


def test_train_and_eval_reach_the_layer_also_inside_torch_containers():
    dropout = Dropout(0.5)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), as_module(dropout))
    model.eval()
    assert not dropout.training
    x = torch.randn(8, 4)
    assert torch.equal(model(x), model[0](x))
    model.train()
    assert dropout.training
    assert as_module(Dropout(0.5).eval()).training is False


def test_backward_through_an_earlier_forward_is_refused():
    module = as_module(Linear(3, 2))
    x = torch.randn(4, 3, requires_grad=True)
    first = module(x)
    module(x)
    with pytest.raises(RuntimeError, match="earlier forward"):
        first.sum().backward()


def test_as_module_wants_a_layer():
    with pytest.raises(TypeError, match="as_module"):
        as_module(torch.nn.Linear(2, 2))


def test_to_float64_keeps_the_parameters_an_optimizer_holds():
    torch.manual_seed(3)
    layer = MLP(4, 3, (5,))
    module = as_module(layer)
    parameters = list(module.parameters())
    optimizer = torch.optim.SGD(module.parameters(), lr=0.5)  # built before the move
    module.to(torch.float64)
    assert [id(p) for p in module.parameters()] == [id(p) for p in parameters]
    assert all(p.dtype == F64 for p in parameters) and all(p.dtype == F64 for p, _ in layer.params())
    before = [p.detach().clone() for p in parameters]
    torch.nn.functional.cross_entropy(module(torch.randn(6, 4, dtype=F64)), torch.tensor([0, 1, 2, 0, 1, 2])).backward()
    optimizer.step()
    for (param, _), old in zip(layer.params(), before, strict=True):
        assert not torch.equal(param, old)  # the step reached the layer's own tensors


# Training ---------------------------------------------------------------------------------


def batches(steps, seed=4):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(6, 1, 8, 8, generator=generator, dtype=F64)
        yield x, torch.randint(0, 3, (6,), generator=generator)


def nnlab_step(model, optimizer, x, y):
    loss_fn = CrossEntropyLoss()
    optimizer.zero_grad()
    loss = loss_fn(model(x), y)
    model.backward(loss_fn.backward())
    optimizer.step()
    return loss.item()


def torch_step(model, optimizer, x, y):
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


def test_mixed_model_with_torch_adam_matches_nnlab_adam_step_for_step():
    torch.manual_seed(5)
    conv, head = Conv2d(1, 4, 3, padding=1), Linear(8, 3)
    torch_linear = torch.nn.Linear(4 * 4 * 4, 8)
    mixed = torch.nn.Sequential(
        as_module(conv), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch_linear, torch.nn.Tanh(), as_module(head)
    ).to(F64)
    linear = Linear(4 * 4 * 4, 8)
    ours = Sequential(copy.deepcopy(conv), ReLU(), MaxPool2d(2), Flatten(), linear, Tanh(), copy.deepcopy(head))
    ours.to(dtype=F64)
    with torch.no_grad():
        linear.weight.copy_(torch_linear.weight)
        linear.bias.copy_(torch_linear.bias)
    theirs_optimizer = torch.optim.Adam(mixed.parameters(), lr=0.01)
    ours_optimizer = Adam(ours.params(), learn_rate=0.01)
    for step, (x, y) in enumerate(batches(6)):
        their_loss = torch_step(mixed, theirs_optimizer, x, y)
        our_loss = nnlab_step(ours, ours_optimizer, x, y)
        assert abs(their_loss - our_loss) <= 1e-12 * max(1.0, abs(our_loss)), step
        for index, (theirs, (mine, _)) in enumerate(zip(mixed.parameters(), ours.params(), strict=True)):
            assert_close(f"step {step} parameter {index}", theirs.detach(), mine, rtol=GRAD_RTOL[F64])


def test_torch_sgd_through_the_adapter_equals_nnlab_own_loop():
    torch.manual_seed(6)
    layer = CNN((1, 8, 8), 3, [3], 1, [5], batchnorm=True).to(dtype=F64)
    twin = copy.deepcopy(layer)
    module = as_module(layer)
    torch_optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    nnlab_optimizer = VanillaSGD(twin.params(), learn_rate=0.1, reg=0.0)
    for x, y in batches(5):
        torch_step(module, torch_optimizer, x, y)
        nnlab_step(twin, nnlab_optimizer, x, y)
    for (got, _), (want, _) in zip(layer.params(), twin.params(), strict=True):
        assert_close("parameter", got, want, rtol=GRAD_RTOL[F64])
    for got, want in zip(layer.buffers(), twin.buffers(), strict=True):
        assert_close("buffer", got.double(), want.double(), rtol=GRAD_RTOL[F64])
    assert any(isinstance(sub, BatchNorm2d) for sub in layer.sequence)
