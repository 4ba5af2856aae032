"""The layer contract of nnlab/layers/base.py, for every built-in layer: backward checks
the upstream gradient's shape, catches tensors changed in place between forward and
backward (as torch's version counters do), constructors reject bad numbers, inputs that
are not tensors get a TypeError, and ``to`` keeps tensor identity."""

import math

import pytest
import torch

from nnlab.classifier import ArgMaxClassifier
from nnlab.layers import (
    BCELoss,
    ClippedCrossEntropyLoss,
    L1Loss,
    NLLLoss,
    ResidualBlock,
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
        (lambda: LeakyReLU("0.1"), "negative_slope"),
        (lambda: LeakyReLU(alpha="0.1"), "alpha"),
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


# requires_input_grad: no input gradient where nobody needs it ------------------------------

# Layers with parameters or children, beyond LAYERS: the merge layers take two inputs.
INPUT_GRAD_LAYERS = LAYERS + [
    (lambda: Heads(Linear(4, 3), Sequential(ReLU(), Linear(4, 2))), (2, 4)),
    (lambda: ResidualBlock(2, [3, 2], [3, 1], batchnorm=True), (2, 2, 4, 4)),
    (lambda: Sequential(Flatten(), Dropout(0.5), Linear(12, 3), ReLU(), Linear(3, 2)), (2, 3, 2, 2)),
]


def _outputs_gradient(out, seed):
    if isinstance(out, tuple):
        return tuple(random_like(item, seed + index) for index, item in enumerate(out))
    return random_like(out, seed)


def random_like(tensor, seed):
    return torch.randn(tensor.shape, generator=torch.Generator().manual_seed(seed))


def _backward_with_flag(layer, x, flag):
    """The layer's backward result and (cloned) parameter gradients, from zero, for one
    forward (same dropout masks every time) and backward with ``requires_input_grad(flag)``."""
    layer.zero_grad()
    torch.manual_seed(3)
    out = layer(x)
    layer.requires_input_grad(flag)
    try:
        dx = layer.backward(_outputs_gradient(out, 5))
    finally:
        layer.requires_input_grad(True)
    return dx, [grad.clone() for _, grad in layer.params()]


@pytest.mark.parametrize("make, shape", INPUT_GRAD_LAYERS, ids=names(INPUT_GRAD_LAYERS))
def test_without_input_grad_backward_returns_none_and_the_same_parameter_gradients(make, shape):
    torch.manual_seed(0)
    layer = make()
    x = torch.randn(shape)
    dx, grads = _backward_with_flag(layer, x, True)
    assert isinstance(dx, torch.Tensor) and dx.shape == shape
    skipped, grads_skipped = _backward_with_flag(layer, x, False)
    assert skipped is None
    for with_dx, without_dx in zip(grads, grads_skipped):
        assert torch.equal(with_dx, without_dx)
    again, _ = _backward_with_flag(layer, x, True)
    assert torch.equal(again, dx)


class _ProductCounter(torch.overrides.TorchFunctionMode):
    """Counts the matrix products torch is asked for (Tensor @ Tensor, mm, matmul, ...)."""

    PRODUCTS = {"__matmul__", "matmul", "mm", "bmm", "addmm", "addmm_", "baddbmm"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.PRODUCTS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _products_in_backward(model, x, flag):
    out = model(x)
    model.requires_input_grad(flag)
    with _ProductCounter() as counter:
        model.backward(torch.ones_like(out))
    model.requires_input_grad(True)
    return counter.count


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: MLP(6, 3, (5, 4)), (2, 6)),
        (lambda: Sequential(Conv2d(2, 3, 3, padding=1), ReLU(), Flatten(), Linear(48, 2)), (2, 2, 4, 4)),
    ],
    ids=["MLP", "Conv2d"],
)
def test_the_first_layers_input_gradient_product_is_not_computed(make, shape):
    model = make()
    x = torch.randn(shape)
    # One product fewer: the first layer's dx = dout @ W (Linear) or W.T @ dout (Conv2d).
    assert _products_in_backward(model, x, False) == _products_in_backward(model, x, True) - 1


def test_sequential_gives_the_flag_to_its_parameter_free_prefix_and_the_first_layer_with_parameters():
    model = Sequential(Flatten(), Dropout(0.5), Linear(12, 3), ReLU(), Linear(3, 2))
    assert model.requires_input_grad(False) is model
    assert [layer.needs_input_grad for layer in model] == [False, False, False, True, True]
    model.requires_input_grad(True)
    assert all(layer.needs_input_grad for layer in model) and model.needs_input_grad


def test_a_shared_layer_keeps_its_input_gradient_where_a_later_use_needs_it():
    torch.manual_seed(0)
    shared = Linear(3, 3)
    model = Sequential(shared, Tanh(), shared)
    x = torch.randn(2, 3)
    _, grads = _backward_with_flag(model, x, True)
    model.requires_input_grad(False)
    assert shared.needs_input_grad
    model.requires_input_grad(True)
    skipped, grads_skipped = _backward_with_flag(model, x, False)
    assert skipped is None
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_skipped))


def test_a_missing_input_gradient_that_is_needed_is_an_error_not_a_silent_zero():
    model = Sequential(Linear(3, 4), ReLU(), Linear(4, 2))
    out = model(torch.randn(2, 3))
    model[2].requires_input_grad(False)  # the first Linear's parameters need its dx
    with pytest.raises(RuntimeError, match=r"Sequential\[2\] \(Linear\).*Sequential\[0\]"):
        model.backward(torch.ones_like(out))
    model = Sequential(ReLU(), Linear(3, 2))
    out = model(torch.randn(2, 3))
    model[1].requires_input_grad(False)  # the Sequential itself must return dx
    with pytest.raises(RuntimeError, match=r"Sequential\[1\] \(Linear\).*the caller"):
        model.backward(torch.ones_like(out))


def test_requires_input_grad_takes_a_bool():
    with pytest.raises(TypeError, match="Linear.*bool.*'no'"):
        Linear(2, 2).requires_input_grad("no")


PROBABILITIES = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
SCORES = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.2, -1.0]])


@pytest.mark.parametrize(
    "loss, x, y",
    [
        (CrossEntropyLoss(), SCORES, torch.tensor([0, 2])),
        (NLLLoss(), PROBABILITIES.log(), torch.tensor([0, 2])),
        (ClippedCrossEntropyLoss(), PROBABILITIES, torch.tensor([0, 2])),
        (MSELoss(), SCORES, PROBABILITIES),
        (L1Loss(), SCORES, PROBABILITIES),
        (BCELoss(), PROBABILITIES, PROBABILITIES.flip(1)),
        (BCEWithLogitsLoss(), SCORES, PROBABILITIES),
    ],
    ids=lambda value: type(value).__name__ if not isinstance(value, torch.Tensor) else "",
)
def test_losses_without_input_grad_return_none(loss, x, y):
    loss(x, y)
    assert loss.backward().shape == x.shape
    loss.requires_input_grad(False)
    assert loss.backward() is None


def test_classifier_passes_the_flag_to_its_model():
    model = ArgMaxClassifier(MLP(4, 3, (5,)))
    model.requires_input_grad(False)
    assert not model.model.needs_input_grad and not model.model[0].needs_input_grad
    out = model(torch.randn(2, 4))
    assert model.backward(torch.ones_like(out)) is None


# torch.nn.Module's spellings: parameters(), to(dtype), double(), float() ---------------------


def test_parameters_are_torchs():
    """The same tensors, in the same order, as the torch twin's parameters() (by state_dict
    key), and a shared layer's once."""
    torch.manual_seed(0)
    model = MLP(4, 3, (5, 6))
    twin = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 6), torch.nn.ReLU(),
                               torch.nn.Linear(6, 3))
    ours = list(model.parameters())
    assert [tuple(p.shape) for p in ours] == [tuple(p.shape) for p in twin.parameters()]
    assert all(a is b for a, (b, _) in zip(ours, model.params(), strict=True))
    shared = Linear(3, 3)
    assert len(list(Sequential(shared, ReLU(), shared).parameters())) == 2


@pytest.mark.parametrize("cls", [VanillaSGD, Adam])
def test_optimizer_on_parameters_trains_as_on_params(cls):
    x, y = torch.randn(8, 4, generator=torch.Generator().manual_seed(1)), torch.arange(8) % 3
    results = []
    for source in ("params", "parameters"):
        torch.manual_seed(0)
        model = MLP(4, 3, (5,))
        opt = cls(getattr(model, source)(), lr=0.1)
        loss_fn = CrossEntropyLoss()
        for _ in range(3):
            opt.zero_grad()
            loss_fn(model(x), y)
            model.backward(loss_fn.backward())
            opt.step()
        results.append(model.state_dict())
    for key, value in results[0].items():
        assert torch.equal(value, results[1][key]), key
    assert not torch.equal(results[0]["sequence.0.weight"], MLP(4, 3, (5,)).state_dict()["sequence.0.weight"])


def test_to_takes_a_dtype_first_and_double_float_exist():
    model = MLP(4, 3, (5,))
    before = list(model.parameters())
    opt = Adam(model.parameters())
    assert model.to(torch.float64) is model
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert all(p.dtype == torch.float64 for _, p in model.params())
    assert all(a is b for a, b in zip(before, model.parameters()))
    assert model.float() is model and all(p.dtype == torch.float32 for p in model.parameters())
    assert model.double() is model and all(p.dtype == torch.float64 for p in model.parameters())
    assert opt.params[0][1] is model.params()[0][1]  # the optimizer still finds the moved gradients
    with pytest.raises(TypeError, match=r"\.to: two dtypes given"):
        model.to(torch.float32, torch.float64)
    with pytest.raises(ValueError, match="dtype must be floating point"):
        model.to(torch.int64)


def test_parameters_taken_before_a_move_still_find_their_gradients():
    model = MLP(4, 3, (5,))
    tensors = list(model.parameters())
    model.double()
    opt = VanillaSGD(tensors, lr=1.0, reg=0.0)
    for (_, grad) in model.params():
        grad.fill_(1.0)
    before = [p.clone() for p in tensors]
    opt.step()
    assert all(torch.equal(after, old - 1.0) for after, old in zip(tensors, before))
