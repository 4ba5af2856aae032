"""nnlab.interop.as_module: gradients are the layers' hand-written backward (never
autograd's derivative of their forward), torch.optim trains the layers' own tensors,
state_dict, modes and .to() as torch.nn users expect, and mixed nnlab / torch.nn models
train step for step like their all-nnlab twins."""

import copy

import pytest
import torch
from reference import GRAD_RTOL, assert_close, random_tensor, randomize_batchnorms

from nnlab.classifier import BinaryClassifier
from nnlab.interop import as_module
from nnlab.layers import (
    Add,
    BatchNorm2d,
    Bilinear,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    Flatten,
    Heads,
    Layer,
    Linear,
    MaxPool2d,
    MSELoss,
    Multiply,
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


def torch_linear_like(layer):
    """A torch.nn.Linear with the nnlab Linear's weight and bias (float64)."""
    module = torch.nn.Linear(layer.in_features, layer.out_features).to(F64)
    with torch.no_grad():
        module.weight.copy_(layer.weight)
        module.bias.copy_(layer.bias)
    return module


def test_backward_through_an_earlier_forward_uses_that_forward():
    """Two calls of one wrapper, then backward of the first: autograd's answer (each
    autograd node keeps its own call of the layer)."""
    torch.manual_seed(0)
    layer = Linear(3, 2).to(dtype=F64)
    module = as_module(layer)
    reference = torch_linear_like(layer)
    x1, x2 = random_tensor((4, 3), F64, seed=1), random_tensor((4, 3), F64, seed=2)
    got = [x.clone().requires_grad_(True) for x in (x1, x2)]
    expected = [x.clone().requires_grad_(True) for x in (x1, x2)]
    first = module(got[0])
    second = module(got[1])
    (first * 2).sum().backward()
    second.sum().backward()
    (reference(expected[0]) * 2).sum().backward()
    reference(expected[1]).sum().backward()
    for name, mine, ref in [
        ("dx1", got[0].grad, expected[0].grad),
        ("dx2", got[1].grad, expected[1].grad),
        ("dweight", module.weight.grad, reference.weight.grad),
        ("dbias", module.bias.grad, reference.bias.grad),
    ]:
        assert_close(name, mine, ref, rtol=1e-12)


def test_a_bare_call_between_the_wrappers_forward_and_backward_keeps_its_own_cache():
    """Forward through the wrapper, a bare call, the wrapper's backward, the bare
    call's backward: each uses its own input, as autograd does."""
    torch.manual_seed(0)
    layer = Linear(3, 2).to(dtype=F64)
    module = as_module(layer)
    reference = torch_linear_like(layer)
    a, b = random_tensor((4, 3), F64, seed=1), random_tensor((4, 3), F64, seed=2)
    dout_b = random_tensor((4, 2), F64, seed=3)
    a_got, a_ref = a.clone().requires_grad_(True), a.clone().requires_grad_(True)
    out = module(a_got)
    layer(b)
    out.sum().backward()
    dx_b = layer.backward(dout_b)
    reference(a_ref).sum().backward()
    assert_close("dx of the wrapped call", a_got.grad, a_ref.grad, rtol=1e-12)
    assert_close("dweight of the wrapped call", module.weight.grad, reference.weight.grad, rtol=1e-12)
    assert_close("dx of the bare call", dx_b, dout_b @ layer.weight, rtol=1e-12)
    assert_close("dweight of the bare call", layer.grad("weight"), dout_b.T @ b, rtol=1e-12)


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


def test_two_wrappers_of_one_tanh_give_autograds_input_gradient():
    a = random_tensor((4, 3), F64, seed=1)
    tanh = Tanh()
    first, second = as_module(tanh), as_module(tanh)
    got, expected = a.clone().requires_grad_(True), a.clone().requires_grad_(True)
    second(first(got)).sum().backward()
    torch.tanh(torch.tanh(expected)).sum().backward()
    assert_close("dx", got.grad, expected.grad, rtol=1e-12)


def test_two_wrappers_of_one_linear_give_each_call_its_own_weight_gradient():
    torch.manual_seed(0)
    layer = Linear(3, 3).to(dtype=F64)
    first, second = as_module(layer), as_module(layer)
    reference = torch_linear_like(layer)
    a = random_tensor((4, 3), F64, seed=1)
    got, expected = a.clone().requires_grad_(True), a.clone().requires_grad_(True)
    (second(torch.tanh(first(got))) ** 2).sum().backward()
    (reference(torch.tanh(reference(expected))) ** 2).sum().backward()
    assert_close("dx", got.grad, expected.grad, rtol=1e-12)
    # One Parameter per layer tensor, as one torch module used twice: torch.optim steps it once.
    assert first.weight is second.weight and first.bias is second.bias
    assert len(list(torch.nn.Sequential(first, second).parameters())) == 2
    assert_close("dweight", first.weight.grad, reference.weight.grad, rtol=1e-12)
    assert_close("dbias", first.bias.grad, reference.bias.grad, rtol=1e-12)


def test_extra_tensor_arguments_that_need_a_gradient_are_refused_not_dropped():
    predictions = random_tensor((4, 3), F64, seed=1).requires_grad_(True)
    targets = random_tensor((4, 3), F64, seed=2).requires_grad_(True)
    loss = as_module(MSELoss())(predictions, targets)
    with pytest.raises(RuntimeError, match=r"as_module\(MSELoss\).*argument 1.*requires grad.*detach"):
        loss.backward()
    with pytest.raises(TypeError, match=r"as_module\(MSELoss\).*keyword argument 'y'.*requires grad"):
        as_module(MSELoss())(predictions, y=targets)


def test_targets_that_need_no_gradient_go_through():
    predictions = random_tensor((4, 3), F64, seed=1)
    targets = random_tensor((4, 3), F64, seed=2)
    got, expected = predictions.clone().requires_grad_(True), predictions.clone().requires_grad_(True)
    as_module(MSELoss())(got, targets).backward()
    torch.nn.functional.mse_loss(expected, targets).backward()
    assert_close("d predictions", got.grad, expected.grad, rtol=1e-12)


def test_a_layer_of_several_inputs_gives_each_its_gradient():
    a, b = random_tensor((4, 3), F64, seed=1), random_tensor((4, 3), F64, seed=2)
    got = [x.clone().requires_grad_(True) for x in (a, b)]
    expected = [x.clone().requires_grad_(True) for x in (a, b)]
    (as_module(Add())(*got) * torch.arange(3.0, dtype=F64)).sum().backward()
    ((expected[0] + expected[1]) * torch.arange(3.0, dtype=F64)).sum().backward()
    assert_close("da", got[0].grad, expected[0].grad, rtol=1e-12)
    assert_close("db", got[1].grad, expected[1].grad, rtol=1e-12)
    got = [x.clone().requires_grad_(True) for x in (a, b)]
    expected = [x.clone().requires_grad_(True) for x in (a, b)]
    as_module(Multiply())(*got).sum().backward()
    (expected[0] * expected[1]).sum().backward()
    assert_close("da of the product", got[0].grad, expected[0].grad, rtol=1e-12)
    assert_close("db of the product", got[1].grad, expected[1].grad, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("needs", [(True, True), (True, False), (False, True)])
def test_bilinear_through_the_wrapper_equals_torchs_bilinear(dtype, bias, needs):
    """Bilinear takes two inputs: each that requires grad gets torch.nn.Bilinear's
    gradient, and so do the weight and the bias (weights copied; leading dimensions (2, 3))."""
    layer = Bilinear(4, 5, 3, bias=bias, dtype=dtype)
    twin = torch.nn.Bilinear(4, 5, 3, bias=bias, dtype=dtype)
    twin.load_state_dict(layer.state_dict())
    module = as_module(layer)
    inputs = [random_tensor((2, 3, 4), dtype, seed=1), random_tensor((2, 3, 5), dtype, seed=2)]
    got = [x.clone().requires_grad_(need) for x, need in zip(inputs, needs)]
    expected = [x.clone().requires_grad_(need) for x, need in zip(inputs, needs)]
    out, twin_out = module(*got), twin(*expected)
    assert_close("output", out, twin_out, atol=1e-6 if dtype == torch.float32 else 1e-12)
    dout = random_tensor(out.shape, dtype, seed=3)
    out.backward(dout)
    twin_out.backward(dout)
    rtol = GRAD_RTOL[dtype]
    for index, (mine, theirs) in enumerate(zip(got, expected)):
        if theirs.requires_grad:
            assert_close(f"d x{index + 1}", mine.grad, theirs.grad, rtol=rtol)
        else:
            assert mine.grad is None
    for name, parameter in twin.named_parameters():
        assert_close(f"d {name}", module.get_parameter(name).grad, parameter.grad, rtol=rtol)


def test_a_deep_copy_is_an_independent_working_module():
    torch.manual_seed(0)
    module = as_module(MLP(3, 2, (4,)).to(dtype=F64))
    clone = copy.deepcopy(module)
    x = random_tensor((5, 3), F64, seed=1)
    assert torch.equal(clone(x), module(x))
    clone(x).sum().backward()
    module(x).sum().backward()
    for (name, mine), (_, theirs) in zip(clone.named_parameters(), module.named_parameters(), strict=True):
        assert mine is not theirs and mine.data_ptr() != theirs.data_ptr(), name
        assert_close(name, mine.grad, theirs.grad, rtol=1e-12)
    with torch.no_grad():
        for parameter in clone.parameters():
            parameter.add_(1.0)
    assert not torch.equal(clone(x), module(x))
    # The copy computes with its own Parameters: the layer inside it holds the same storage.
    assert all(param.data_ptr() == parameter.data_ptr() for (param, _), parameter in zip(clone.layer.params(), clone.parameters()))


def test_swa_averaged_model_over_a_wrapper_averages_and_computes_with_the_average():
    torch.manual_seed(0)
    module = as_module(Linear(3, 2).to(dtype=F64))
    averaged = torch.optim.swa_utils.AveragedModel(module)
    weights = []
    for step in range(3):
        with torch.no_grad():
            for parameter in module.parameters():
                parameter.add_(step + 1.0)
        weights.append(module.weight.detach().clone())
        averaged.update_parameters(module)
    x = random_tensor((4, 3), F64, seed=1)
    mean_weight = torch.stack(weights).mean(0)
    assert_close("averaged weight", averaged.module.weight.detach(), mean_weight, rtol=1e-12)
    expected = x @ mean_weight.T + averaged.module.bias.detach()
    assert_close("averaged model's output", averaged(x).detach(), expected, rtol=1e-12)


def test_a_wrapped_classifier_classifies_as_the_classifier():
    torch.manual_seed(0)
    classifier = BinaryClassifier(MLP(3, 2, (4,)), threshold=0.9)
    module = as_module(classifier)
    x = torch.randn(6, 3)
    assert torch.equal(module.classify(x), classifier.classify(x))
    assert torch.equal(module.predict_proba(x), classifier.predict_proba(x))
    scores = module(x).detach()
    assert torch.equal(module.classify_scores(scores), classifier.classify_scores(scores))
    with pytest.raises(AttributeError, match=r"as_module\(Linear.*classify"):
        as_module(Linear(3, 2)).classify(x)
