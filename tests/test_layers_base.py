"""The layer contract of nnlab/layers/base.py, for every built-in layer: backward checks
the upstream gradient's shape, catches tensors changed in place between forward and
backward (as torch's version counters do), constructors reject bad numbers, inputs that
are not tensors get a TypeError, and ``to`` keeps tensor identity."""

import math

import pytest
import torch

from nnlab.layers import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    BCEWithLogitsLoss,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    Dropout2d,
    Flatten,
    Heads,
    LeakyReLU,
    Linear,
    MaxPool2d,
    MSELoss,
    ReLU,
    Residual,
    Sequential,
    Sigmoid,
    Softmax,
    Tanh,
)
from nnlab.models import CNN, MLP
from nnlab.optimizers import Adam, MomentumSGD, RMSProp, VanillaSGD

# (layer factory, input shape) for every layer with one tensor output.
LAYERS = [
    (lambda: Linear(4, 3), (2, 4)),
    (ReLU, (2, 3, 4)),
    (LeakyReLU, (2, 3, 4)),
    (Sigmoid, (2, 3)),
    (Tanh, (2, 3)),
    (lambda: Softmax(dim=1), (2, 3)),
    (lambda: Dropout(0.5), (2, 3)),
    (Flatten, (2, 3, 2, 2)),
    (lambda: Conv2d(2, 3, 3, padding=1), (2, 2, 4, 4)),
    (lambda: MaxPool2d(2), (2, 3, 4, 4)),
    (lambda: AvgPool2d(2), (2, 3, 4, 4)),
    (lambda: AvgPool2d(3, stride=1, padding=1), (2, 3, 4, 4)),
    (lambda: AdaptiveMaxPool2d((2, 3)), (2, 3, 5, 4)),
    (lambda: AdaptiveAvgPool2d((2, 3)), (2, 3, 5, 4)),
    (lambda: BatchNorm1d(3), (4, 3)),
    (lambda: BatchNorm2d(3), (2, 3, 2, 2)),
    (lambda: Dropout2d(0.5), (2, 3, 2, 2)),
    (lambda: Sequential(Linear(4, 3), ReLU()), (2, 4)),
    (lambda: Residual(Linear(4, 4)), (2, 4)),
    (lambda: MLP(4, 3, (5,)), (2, 4)),
    (lambda: CNN((1, 4, 4), 2, [2], 1, [3]), (2, 1, 4, 4)),
]


def names(cases):
    return [repr(make()).split("\n")[0].split("(")[0] for make, _ in cases]


# Upstream gradient shapes (item 3) ------------------------------------------------------


def wrong_shapes(shape):
    """Shapes a broadcasting backward would silently accept or mangle."""
    yield shape[:-1] + (shape[-1] + 1,)
    yield (1,) + shape[1:]
    yield shape + (1,)
    yield shape[1:]


@pytest.mark.parametrize("make, shape", LAYERS, ids=names(LAYERS))
def test_backward_rejects_a_wrongly_shaped_dout(make, shape):
    torch.manual_seed(0)
    layer = make()
    out = layer(torch.randn(shape))
    for wrong in wrong_shapes(tuple(out.shape)):
        with pytest.raises(ValueError) as info:
            layer.backward(torch.ones(wrong))
        message = str(info.value)
        assert type(layer).__name__ in message
        assert str(tuple(out.shape)) in message and str(tuple(wrong)) in message
    assert layer.backward(torch.ones_like(out)).shape == shape


def test_avgpool_no_longer_returns_a_plausible_gradient_for_a_wrong_dout():
    layer = AvgPool2d(2)
    layer(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"AvgPool2d.*\(2, 3, 2, 2\).*\(2, 3, 3, 3\)"):
        layer.backward(torch.ones(2, 3, 3, 3))


def test_linear_names_itself_instead_of_a_matmul_error():
    layer = Linear(4, 3)
    layer(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"Linear.*\(2, 3\).*\(2, 4\)"):
        layer.backward(torch.ones(2, 4))


def test_dout_must_be_a_tensor_or_a_number_for_a_loss():
    layer = ReLU()
    layer(torch.randn(3))
    with pytest.raises(TypeError, match="ReLU.*torch.Tensor"):
        layer.backward([1.0, 1.0, 1.0])
    loss = MSELoss()
    loss(torch.randn(3), torch.randn(3))
    assert loss.backward(2.0).shape == (3,)
    assert loss.backward(torch.tensor(2.0)).shape == (3,)
    with pytest.raises(ValueError, match=r"MSELoss.*\(\).*\(1,\)"):
        loss.backward(torch.ones(1))


def test_heads_checks_each_gradient_of_its_tuple():
    heads = Heads(Linear(4, 3), Linear(4, 2))
    heads(torch.randn(5, 4))
    with pytest.raises(ValueError, match=r"\(5, 2\).*\(5, 3\)"):
        heads.backward((torch.ones(5, 3), torch.ones(5, 3)))
    with pytest.raises(ValueError, match="tuple of 2"):
        heads.backward(torch.ones(5, 3))
    assert heads.backward((None, torch.ones(5, 2))).shape == (5, 4)


# Tensors changed in place after forward (item 2) -----------------------------------------


def test_relu_output_changed_in_place_is_caught():
    relu = ReLU()
    h = relu(torch.randn(4, 3))
    h -= 1
    with pytest.raises(RuntimeError, match=r"ReLU.*'_out'.*modified in place"):
        relu.backward(torch.ones(4, 3))


def test_linear_input_changed_in_place_is_caught():
    layer = Linear(3, 2)
    x = torch.randn(4, 3)
    layer(x)
    x[0, 0] = 5.0
    with pytest.raises(RuntimeError, match=r"Linear.*'_x'.*modified in place"):
        layer.backward(torch.ones(4, 2))


def test_a_view_of_the_cached_input_changed_in_place_is_caught():
    layer = Linear(3, 2)
    x = torch.randn(4, 3)
    layer(x[1:])
    x.mul_(2)
    with pytest.raises(RuntimeError, match="modified in place"):
        layer.backward(torch.ones(3, 2))


def test_weights_changed_between_forward_and_backward_are_caught():
    layer = Linear(3, 2)
    layer(torch.randn(4, 3))
    layer.weight.add_(1.0)
    with pytest.raises(RuntimeError, match=r"Linear.*'weight'"):
        layer.backward(torch.ones(4, 2))


def test_a_fresh_forward_after_an_in_place_change_is_fine():
    relu = ReLU()
    x = torch.randn(4, 3)
    h = relu(x)
    h.zero_()
    relu(x)
    assert torch.equal(relu.backward(torch.ones(4, 3)), (x > 0).float())


def test_training_steps_raise_no_false_alarm():
    torch.manual_seed(0)
    model = Sequential(Conv2d(1, 2, 3, padding=1), BatchNorm2d(2), ReLU(), MaxPool2d(2), Flatten(), Linear(8, 3))
    loss_fn = CrossEntropyLoss()
    optimizer = MomentumSGD(model.params(), learn_rate=0.1)
    for _ in range(3):
        loss_fn(model(torch.randn(4, 1, 4, 4)), torch.tensor([0, 1, 2, 0]))
        optimizer.zero_grad()
        model.backward(loss_fn.backward())
        optimizer.step()


# Constructor arguments and inputs --------------------------------------------------------


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda: Linear(4.5, 3), "in_features"),
        (lambda: Linear(True, 3), "in_features"),
        (lambda: Linear("4", 3), "in_features"),
        (lambda: Linear(4, 0), "out_features"),
        (lambda: Linear(4, 3, wstd=math.nan), "wstd"),
        (lambda: Linear(4, 3, wstd=-1.0), "wstd"),
        (lambda: Dropout("0.5"), "p"),
        (lambda: Dropout(1.5), "p"),
        (lambda: Dropout2d(math.nan), "p"),
        (lambda: LeakyReLU("0.1"), "alpha"),
        (lambda: BatchNorm1d(True), "num_features"),
        (lambda: BatchNorm1d(3, eps=math.nan), "eps"),
        (lambda: BatchNorm2d(3, eps=0), "eps"),
        (lambda: BatchNorm2d(3, momentum=2), "momentum"),
        (lambda: Softmax(dim=1.0), "dim"),
        (lambda: Flatten(start_dim="1"), "start_dim"),
    ],
)
def test_constructors_name_the_bad_argument(make, argument):
    with pytest.raises(ValueError, match=argument):
        make()


@pytest.mark.parametrize(
    "make, name, value",
    [
        (VanillaSGD, "reg", -5),
        (VanillaSGD, "learn_rate", math.inf),
        (MomentumSGD, "momentum", 1.5),
        (RMSProp, "decay", "0.9"),
        (Adam, "eps", 0.0),
    ],
)
def test_optimizer_hyperparameters_are_checked_when_set(make, name, value):
    optimizer = make(Linear(2, 2).params())
    before = getattr(optimizer, name)
    with pytest.raises(ValueError, match=name):
        setattr(optimizer, name, value)
    assert getattr(optimizer, name) == before


@pytest.mark.parametrize("make, shape", LAYERS, ids=names(LAYERS))
def test_a_python_list_is_a_type_error_asking_for_a_tensor(make, shape):
    layer = make()
    with pytest.raises(TypeError, match="torch.Tensor"):
        layer(torch.randn(shape).tolist())


def test_cross_entropy_label_dtypes_as_torch():
    x = torch.randn(3, 4)
    labels = torch.tensor([0, 3, 1])
    expected = torch.nn.functional.cross_entropy(x, labels)
    assert torch.allclose(CrossEntropyLoss()(x, labels.to(torch.uint8)), expected)
    for bad in (labels.bool(), labels.half(), labels.float()):
        with pytest.raises(ValueError, match=f"class labels.*{bad.dtype}"):
            CrossEntropyLoss()(x, bad)


# Empty batches, as torch.nn takes them ------------------------------------------------


@pytest.mark.parametrize(
    "layer, module, shape",
    [
        (Linear(4, 3), torch.nn.Linear(4, 3), (0, 4)),
        (Conv2d(2, 3, 3, padding=1), torch.nn.Conv2d(2, 3, 3, padding=1), (0, 2, 5, 5)),
        (MaxPool2d(2), torch.nn.MaxPool2d(2), (0, 2, 4, 4)),
        (MaxPool2d(3, 1, 1), torch.nn.MaxPool2d(3, 1, 1), (0, 2, 4, 4)),
        (AvgPool2d(2), torch.nn.AvgPool2d(2), (0, 2, 4, 4)),
        (AvgPool2d(3, 1, 1), torch.nn.AvgPool2d(3, 1, 1), (0, 2, 4, 4)),
        (AdaptiveMaxPool2d(2), torch.nn.AdaptiveMaxPool2d(2), (0, 2, 5, 5)),
        (AdaptiveAvgPool2d(2), torch.nn.AdaptiveAvgPool2d(2), (0, 2, 5, 5)),
        (BatchNorm2d(2).eval(), torch.nn.BatchNorm2d(2).eval(), (0, 2, 3, 3)),
        (BatchNorm2d(2), torch.nn.BatchNorm2d(2), (0, 2, 3, 3)),
        (BatchNorm1d(2), torch.nn.BatchNorm1d(2), (0, 2)),
    ],
)
def test_an_empty_batch_works_as_in_torch(layer, module, shape):
    x = torch.zeros(shape)
    out = layer(x)
    expected = module(x)
    assert out.shape == expected.shape
    assert layer.backward(torch.zeros(out.shape)).shape == shape
    for _, grad in layer.params():
        assert not grad.any()
    for mine, theirs in zip(layer.buffers(), module.buffers()):
        assert torch.equal(mine, theirs)


@pytest.mark.parametrize(
    "loss, module, target",
    [
        (CrossEntropyLoss(), torch.nn.CrossEntropyLoss(), torch.zeros(0, dtype=torch.long)),
        (CrossEntropyLoss(), torch.nn.CrossEntropyLoss(), torch.zeros(0, 3)),
        (MSELoss(), torch.nn.MSELoss(), torch.zeros(0, 3)),
        (BCEWithLogitsLoss(), torch.nn.BCEWithLogitsLoss(), torch.zeros(0, 3)),
    ],
)
def test_an_empty_batch_loss_is_nan_as_in_torch(loss, module, target):
    x = torch.zeros(0, 3)
    assert math.isnan(module(x, target).item())
    assert math.isnan(loss(x, target).item())
    assert loss.backward().shape == (0, 3)


# to() keeps identity -----------------------------------------------------------------------


def test_to_keeps_every_tensor_object():
    model = Sequential(Linear(3, 4), BatchNorm1d(4))
    before = [(param, grad) for param, grad in model.params()] + [(buffer, None) for buffer in model.buffers()]
    model.to(dtype=torch.float64)
    after = [(param, grad) for param, grad in model.params()] + [(buffer, None) for buffer in model.buffers()]
    for (old, old_grad), (new, new_grad) in zip(before, after):
        assert old is new and old_grad is new_grad
    assert model[0].weight.dtype == torch.float64 and model[0].dw.dtype == torch.float64
    assert model[1].num_batches_tracked.dtype == torch.int64
