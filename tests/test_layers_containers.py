"""Sequential and make_activation: gradients against torch.nn.Sequential twins,
the container contract (kw, order, indexing, modes, dtype), state_dict and errors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nnlab.layers import (
    ACTIVATIONS,
    MLP,
    BatchNorm1d,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    Dropout,
    Flatten,
    Heads,
    Layer,
    LeakyReLU,
    Linear,
    MSELoss,
    ReLU,
    Residual,
    Sequential,
    Sigmoid,
    Softmax,
    Tanh,
    make_activation,
)
from nnlab.optimizers import VanillaSGD
from reference import check_against_autograd, check_against_torch, check_finite_differences, copy_params, rel_error

DTYPES = [torch.float32, torch.float64]


def randn(shape, seed, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)


def twin(layer):
    """The torch.nn module equivalent to an nnlab layer (parameters not yet copied)."""
    if isinstance(layer, MLP):
        return twin(layer.sequence)
    if isinstance(layer, Sequential):
        return torch.nn.Sequential(*[twin(child) for child in layer])
    if isinstance(layer, Linear):
        return torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    if isinstance(layer, LeakyReLU):
        return torch.nn.LeakyReLU(layer.alpha)
    if isinstance(layer, Dropout):
        return torch.nn.Dropout(layer.p)
    if isinstance(layer, Softmax):
        return torch.nn.Softmax(layer.dim)
    if isinstance(layer, Flatten):
        return torch.nn.Flatten(layer.start_dim, layer.end_dim)
    simple = {ReLU: torch.nn.ReLU, Sigmoid: torch.nn.Sigmoid, Tanh: torch.nn.Tanh}
    return simple[type(layer)]()


def twin_of(layer, dtype):
    module = twin(layer).to(dtype)
    module.train(layer.training)
    copy_params(layer, module)
    return module


def twelve_layers():
    """A 12-layer Sequential of every dense kind, ending in a Sigmoid."""
    return Sequential(
        Linear(6, 9),
        ReLU(),
        Linear(9, 7),
        LeakyReLU(alpha=0.1),
        Linear(7, 8),
        Tanh(),
        Linear(8, 5),
        Softmax(dim=1),
        Linear(5, 5),
        Sigmoid(),
        Linear(5, 3),
        Sigmoid(),
    )


# Gradients against torch twins ---------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 5])
def test_twelve_layer_sequential_against_torch(batch, dtype):
    torch.manual_seed(0)
    model = twelve_layers().to(dtype=dtype)
    assert len(model) == 12 and isinstance(model[-1], Sigmoid)
    module = twin_of(model, dtype)
    x = randn((batch, 6), 1, dtype)
    check_against_torch(model, module, x)
    check_against_autograd(model, x)


def test_twelve_layer_sequential_finite_differences():
    torch.manual_seed(0)
    model = twelve_layers().to(dtype=torch.float64)
    # Through Softmax and two Sigmoids the input gradient has norm ~1e-4 while the
    # objective is O(1): with eps=1e-6 the rounding error of a central difference
    # (~1e-16 / eps per entry) alone is ~1e-6 relative. eps=1e-4 keeps both rounding
    # (~1e-12) and truncation (~eps^2) far below the unchanged rtol of 1e-7.
    check_finite_differences(model, randn((3, 6), 2, torch.float64), eps=1e-4, max_elements=25)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sequential_with_flatten_on_4d_input(dtype):
    torch.manual_seed(0)
    model = Sequential(Flatten(), Linear(2 * 3 * 5, 4), Tanh(), Linear(4, 3)).to(dtype=dtype)
    x = randn((3, 2, 3, 5), 1, dtype)
    check_against_torch(model, twin_of(model, dtype), x)
    check_finite_differences(model.to(dtype=torch.float64), x.double(), max_elements=20)


@settings(max_examples=10)
@given(
    kinds=st.lists(st.sampled_from(["relu", "lrelu", "sigmoid", "tanh", "softmax"]), min_size=1, max_size=5),
    width=st.integers(1, 5),
    batch=st.integers(1, 4),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 1000),
)
def test_sequential_random(kinds, width, batch, dtype, seed):
    makers = {"relu": ReLU, "lrelu": LeakyReLU, "sigmoid": Sigmoid, "tanh": Tanh, "softmax": Softmax}
    torch.manual_seed(seed)
    layers = []
    for kind in kinds:
        layers += [Linear(width, width), makers[kind]()]
    model = Sequential(*layers).to(dtype=dtype)
    check_against_torch(model, twin_of(model, dtype), randn((batch, width), seed, dtype) * 2)


# Sequential contract ----------------------------------------------------------------

class Recorder(Layer):
    """Identity that logs its calls (and the keywords it was given) into a shared list."""

    def __init__(self, name, log):
        super().__init__()
        self.name = name
        self.log = log

    def forward(self, x, **kw):
        self.log.append(("forward", self.name, dict(kw)))
        return x + 1

    def backward(self, dout):
        self.log.append(("backward", self.name))
        return dout * 2


def test_sequential_order_and_kw():
    log = []
    model = Sequential(Recorder("a", log), Recorder("b", log), Recorder("c", log))
    out = model(torch.zeros(2), y="labels", extra=3)
    assert torch.equal(out, torch.full((2,), 3.0))
    dx = model.backward(torch.ones(2))
    assert torch.equal(dx, torch.full((2,), 8.0))
    kw = {"y": "labels", "extra": 3}
    assert log == [
        ("forward", "a", kw),
        ("forward", "b", kw),
        ("forward", "c", kw),
        ("backward", "c"),
        ("backward", "b"),
        ("backward", "a"),
    ]


def test_sequential_with_loss_is_the_loss():
    torch.manual_seed(0)
    mlp = MLP(5, 4, (6,))
    x = randn((7, 5), 1)
    labels = torch.tensor([0, 3, 1, 2, 2, 0, 3])
    model = Sequential(mlp, CrossEntropyLoss())
    loss = model(x, y=labels)
    dx = model.backward(1.0)
    grads = [grad.clone() for _, grad in mlp.params()]

    mlp.zero_grad()
    separate_loss = CrossEntropyLoss()
    expected = separate_loss(mlp(x), labels)
    expected_dx = mlp.backward(separate_loss.backward())
    assert torch.equal(loss, expected)
    assert torch.equal(dx, expected_dx)
    for grad, (_, expected_grad) in zip(grads, mlp.params()):
        assert torch.equal(grad, expected_grad)


@pytest.mark.parametrize("loss, y", [(MSELoss(), randn((3, 2), 5)), (BCEWithLogitsLoss(), torch.sigmoid(randn((3, 2), 6)))])
def test_sequential_with_other_losses(loss, y):
    torch.manual_seed(0)
    model = Sequential(Linear(4, 2), loss)
    x = randn((3, 4), 1)
    assert torch.equal(model(x, y=y), loss(model[0](x), y))


def test_sequential_params_concatenate_in_order():
    model = Sequential(Linear(3, 4), ReLU(), Linear(4, 5, bias=False), Tanh(), Linear(5, 2))
    expected = []
    for layer in model.layers:
        expected += layer.params()
    pairs = model.params()
    assert len(pairs) == 5
    for (param, grad), (want_param, want_grad) in zip(pairs, expected, strict=True):
        assert param is want_param and grad is want_grad
    assert pairs[0][0] is model[0].weight and pairs[1][0] is model[0].bias
    assert pairs[2][0] is model[2].weight and pairs[3][0] is model[4].weight


def test_sequential_indexing_len_iteration():
    layers = [Linear(3, 4), ReLU(), Linear(4, 2), Sigmoid()]
    model = Sequential(*layers)
    assert len(model) == 4
    assert list(model) == layers
    assert all(a is b for a, b in zip(model, layers))
    assert model[0] is layers[0] and model[-1] is layers[-1]
    head = model[:2]
    assert isinstance(head, Sequential) and len(head) == 2
    assert head[0] is layers[0] and head[1] is layers[1]
    tail = model[2:]
    x = randn((3, 3), 0)
    assert torch.equal(model(x), tail(head(x)))
    assert len(model[::2]) == 2 and model[::2][1] is layers[2]
    with pytest.raises(IndexError):
        model[4]
    assert len(Sequential()) == 0


def test_sequential_rejects_non_layers():
    with pytest.raises(TypeError, match=r"\[1\]"):
        Sequential(Linear(2, 2), torch.nn.ReLU())


def test_train_eval_propagate():
    model = Sequential(MLP(4, 3, (5, 5), dropout=0.5), Sequential(ReLU(), Dropout(0.2)))
    every = [model, model[0], model[0].sequence, *model[0], model[1], *model[1]]
    assert all(layer.training for layer in every)
    assert model.eval() is model
    assert not any(layer.training for layer in every)
    assert model.train() is model
    assert all(layer.training for layer in every)
    model.train(False)
    assert not any(layer.training for layer in every)


def test_to_float64_moves_params_and_grads():
    torch.manual_seed(0)
    model = Sequential(MLP(4, 3, (5,)), Tanh())
    model(randn((2, 4), 0))
    model.backward(randn((2, 3), 1))
    before = [(param.clone(), grad.clone()) for param, grad in model.params()]
    assert model.to(dtype=torch.float64) is model
    after = model.params()
    assert len(after) == len(before)
    for (param, grad), (old_param, old_grad) in zip(after, before):
        assert param.dtype == torch.float64 and grad.dtype == torch.float64
        assert torch.equal(param, old_param.double()) and torch.equal(grad, old_grad.double())
    linear = model[0][0]
    assert linear.w is linear.weight and linear.weight is after[0][0] and linear.dw is after[0][1]
    out = model(randn((2, 4), 2, torch.float64))
    assert out.dtype == torch.float64
    with pytest.raises(ValueError, match="float64"):
        model(randn((2, 4), 2, torch.float32))
    with pytest.raises(ValueError):
        model.to(dtype=torch.int64)


def test_make_activation():
    for name, kind in ACTIVATIONS.items():
        first, second = make_activation(name), make_activation(name)
        assert type(first) is kind and first is not second
    instance = Tanh()
    copy = make_activation(instance)
    assert type(copy) is Tanh and copy is not instance
    assert type(make_activation(Sigmoid)) is Sigmoid


@pytest.mark.parametrize("bad", ["relu7", "ReLu", "", 42, None, torch.nn.ReLU()])
def test_unknown_activation(bad):
    with pytest.raises(ValueError):
        make_activation(bad)
    if isinstance(bad, torch.nn.Module):
        return  # the builders take torch.nn activation modules (see test_models)
    with pytest.raises(ValueError):
        MLP(4, 2, (3,), activation=bad)


def test_sequential_repr():
    assert repr(Sequential(Linear(3, 4), Sigmoid())) == "Sequential\n\t[0] Linear(3, 4)\n\t[1] Sigmoid"


# state_dict ---------------------------------------------------------------------------

def test_state_dict_keys_like_torch():
    torch.manual_seed(0)
    model = Sequential(Linear(3, 4), ReLU(), Linear(4, 2, bias=False), Tanh(), Linear(2, 2))
    keys = list(model.state_dict())
    assert keys == list(twin(model).state_dict())
    assert keys == ["0.weight", "0.bias", "2.weight", "4.weight", "4.bias"]
    mlp = MLP(3, 2, (4,), dropout=0.5)
    assert list(mlp.state_dict()) == ["sequence.0.weight", "sequence.0.bias", "sequence.3.weight", "sequence.3.bias"]
    nested = Sequential(MLP(3, 2, (4,)), Sigmoid())
    assert list(nested.state_dict())[0] == "0.sequence.0.weight"


def test_state_dict_loads_into_torch_twin():
    torch.manual_seed(0)
    model = Sequential(Linear(3, 4), ReLU(), Linear(4, 2))
    module = twin(model)
    module.load_state_dict(model.state_dict())
    x = randn((5, 3), 1)
    with torch.no_grad():
        assert torch.allclose(module(x), model(x), atol=1e-6)


def test_state_dict_round_trip():
    torch.manual_seed(0)
    model = MLP(5, 3, (7, 4), activation="tanh")
    fresh = MLP(5, 3, (7, 4), activation="tanh")
    x = randn((6, 5), 1)
    assert not torch.equal(model(x), fresh(x))
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(model(x), fresh(x))
    for (a, _), (b, _) in zip(model.params(), fresh.params(), strict=True):
        assert torch.equal(a, b) and a is not b


def train_step(model, x, seed=0):
    model.zero_grad()
    model(x)
    model.backward(randn((x.shape[0], 3), seed))
    for param, grad in model.params():
        param -= 0.1 * grad


def test_state_dict_is_a_copy():
    torch.manual_seed(0)
    model = MLP(5, 3, (4,))
    state = model.state_dict()
    saved = {key: value.clone() for key, value in state.items()}
    for (param, _), value in zip(model.params(), state.values()):
        assert value is not param
    train_step(model, randn((4, 5), 1))
    assert any(not torch.equal(p, saved[k]) for k, p in model.sequence.named_tensors("sequence."))
    for key in saved:
        assert torch.equal(state[key], saved[key])


def test_load_state_dict_copies_in_place():
    torch.manual_seed(0)
    model = MLP(5, 3, (4,))
    source = MLP(5, 3, (4,))
    held = model.params()  # what an optimizer built earlier would hold
    ids = [(id(param), id(grad)) for param, grad in held]
    state = source.state_dict()
    model.load_state_dict(state)
    assert [(id(param), id(grad)) for param, grad in model.params()] == ids
    for (param, _), value in zip(held, state.values()):
        assert torch.equal(param, value)
        assert param is not value
    # An "optimizer" step on the held tensors changes the model; the state is untouched.
    before = {key: value.clone() for key, value in state.items()}
    train_step(model, randn((4, 5), 1))
    for key in state:
        assert torch.equal(state[key], before[key])
    assert not torch.equal(model[0].weight, state["sequence.0.weight"])


def test_load_state_dict_wrong_shape_changes_nothing():
    torch.manual_seed(0)
    model = MLP(5, 3, (4,))
    before = model.state_dict()
    state = MLP(5, 3, (4,)).state_dict()
    state["sequence.2.bias"] = torch.zeros(5)  # the last key: earlier keys are fine
    with pytest.raises(ValueError) as info:
        model.load_state_dict(state)
    message = str(info.value)
    assert "sequence.2.bias" in message and "(3,)" in message and "(5,)" in message
    after = model.state_dict()
    for key in before:
        assert torch.equal(before[key], after[key]), f"{key} changed by a failed load"


def test_load_state_dict_missing_and_unexpected_keys():
    model = Sequential(Linear(3, 4), ReLU(), Linear(4, 2))
    state = model.state_dict()
    before = model.state_dict()
    missing = dict(state)
    del missing["2.bias"]
    with pytest.raises(ValueError, match=r"2\.bias"):
        model.load_state_dict(missing)
    unexpected = dict(state)
    unexpected["5.weight"] = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r"5\.weight"):
        model.load_state_dict(unexpected)
    not_a_tensor = dict(state)
    not_a_tensor["0.bias"] = [0.0] * 4
    with pytest.raises(ValueError, match=r"0\.bias"):
        model.load_state_dict(not_a_tensor)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


# Errors ------------------------------------------------------------------------------

def test_sequential_names_failing_child():
    model = Sequential(Linear(3, 4), ReLU(), Linear(5, 2))
    with pytest.raises(ValueError) as info:
        model(torch.zeros(2, 3))
    message = str(info.value)
    assert "Sequential[2]" in message and "(Linear)" in message
    assert "Linear(5, 2)" in message and "(*, 5)" in message and "(2, 4)" in message
    assert isinstance(info.value.__cause__, ValueError)


def test_nested_containers_name_the_path():
    model = Sequential(Tanh(), MLP(3, 2, (4,)))
    with pytest.raises(ValueError) as info:
        model(torch.zeros(2, 5))
    message = str(info.value)
    assert "Sequential[1] (MLP)" in message and "Sequential[0] (Linear)" in message
    assert "(*, 3)" in message and "(2, 5)" in message


def test_sequential_names_failing_loss():
    model = Sequential(MLP(3, 2, (4,)), CrossEntropyLoss())
    with pytest.raises(ValueError) as info:
        model(torch.zeros(2, 3), y=torch.tensor([0, 2]))
    message = str(info.value)
    assert "Sequential[1] (CrossEntropyLoss)" in message and "[0, 2)" in message


def test_sequential_dtype_mismatch():
    model = MLP(3, 2, (4,))
    with pytest.raises(ValueError) as info:
        model(torch.zeros(2, 3, dtype=torch.float64))
    assert "Sequential[0] (Linear)" in str(info.value) and "float64" in str(info.value)


@pytest.mark.parametrize(
    "model, name",
    [
        (Sequential(Linear(3, 2), ReLU()), "ReLU"),
        (MLP(3, 2, (4,)), "Linear"),
        (Sequential(MLP(3, 2, (4,)), MSELoss()), "MSELoss"),
    ],
)
def test_container_backward_before_forward(model, name):
    with pytest.raises(RuntimeError) as info:
        model.backward(torch.ones(2, 2))
    message = str(info.value)
    assert name in message and "Sequential[" in message and "before forward" in message


# One layer instance at several places (issue 9, item 1) -----------------------------------


class _SumOfPaths(torch.nn.Module):
    def __init__(self, main, shortcut):
        super().__init__()
        self.main = main
        self.shortcut = shortcut

    def forward(self, x):
        return self.main(x) + (x if self.shortcut is None else self.shortcut(x))


class _TupleOfHeads(torch.nn.Module):
    def __init__(self, heads):
        super().__init__()
        self.heads = torch.nn.ModuleList(heads)

    def forward(self, x):
        return tuple(head(x) for head in self.heads)


def shared_twin(layer, made):
    """The torch twin of ``layer`` in which every nnlab instance met twice maps to one
    torch module (``made``: id -> module), so the twin shares exactly what nnlab shares."""
    if id(layer) in made:
        return made[id(layer)]
    if isinstance(layer, MLP):
        module = shared_twin(layer.sequence, made)
    elif isinstance(layer, Sequential):
        module = torch.nn.Sequential(*[shared_twin(child, made) for child in layer])
    elif isinstance(layer, Residual):
        shortcut = None if layer.shortcut is None else shared_twin(layer.shortcut, made)
        module = _SumOfPaths(shared_twin(layer.main, made), shortcut)
    elif isinstance(layer, Heads):
        module = _TupleOfHeads([shared_twin(child, made) for child in layer])
    elif isinstance(layer, BatchNorm1d):
        module = torch.nn.BatchNorm1d(layer.num_features)
    else:
        module = twin(layer)
    made[id(layer)] = module
    return module


def assert_shared_model_matches_autograd(model, x):
    """Output, input gradient and every (deduplicated) parameter gradient of ``model``
    equal those of its shared torch twin in float64."""
    model.to(dtype=torch.float64)
    module = shared_twin(model, {}).to(torch.float64)
    module.train(model.training)
    copy_params(model, module)
    x = x.double()
    outputs = model(x)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    douts = tuple(randn(o.shape, 7 + i, torch.float64) for i, o in enumerate(outputs))
    dx = model.backward(douts if len(douts) > 1 else douts[0])

    x_ref = x.clone().requires_grad_(True)
    reference = module(x_ref)
    reference = reference if isinstance(reference, tuple) else (reference,)
    grads = torch.autograd.grad(reference, [x_ref, *module.parameters()], douts)
    for out, ref in zip(outputs, reference):
        torch.testing.assert_close(out, ref.detach(), rtol=0, atol=1e-12)
    assert rel_error(dx, grads[0]) <= 1e-10
    assert len(model.params()) == len(grads) - 1
    for index, ((_, grad), ref) in enumerate(zip(model.params(), grads[1:])):
        # An absolute floor for the Linear bias before BatchNorm, whose true gradient is 0.
        torch.testing.assert_close(grad, ref, rtol=1e-10, atol=1e-12, msg=f"param#{index + 1}")


def shared_models():
    torch.manual_seed(0)
    act = ReLU()
    layer = Linear(4, 4)
    block = Sequential(Linear(4, 4), Tanh())
    mlp = MLP(4, 4, (5,), activation="tanh")
    inner = Linear(4, 4)
    norm = BatchNorm1d(4)
    return {
        "activation at two places": Sequential(Linear(4, 5), act, Linear(5, 4), act),
        "tied weights l, Tanh, l": Sequential(layer, Tanh(), layer),
        "a container twice": Sequential(block, block, Linear(4, 2)),
        "a builder twice": Sequential(mlp, Sigmoid(), mlp),
        "shared inside two sub-Sequentials": Sequential(Sequential(inner, Tanh()), Sequential(inner, Sigmoid())),
        "residual with main = shortcut": Sequential(Residual(Sequential(inner, Tanh()), inner), inner),
        "heads sharing a layer": Sequential(Linear(4, 4), Heads(Sequential(inner, ReLU()), inner)),
        "batch norm twice": Sequential(Linear(4, 4), norm, Tanh(), Linear(4, 4), norm),
    }


@pytest.mark.parametrize("name", list(shared_models()))
def test_a_layer_at_several_places_gets_the_gradients_of_autograd(name):
    assert_shared_model_matches_autograd(shared_models()[name], randn((6, 4), 1))


def test_a_shared_layer_trains_like_torch():
    torch.manual_seed(0)
    layer = Linear(3, 3)
    model = Sequential(layer, Tanh(), layer).to(dtype=torch.float64)
    module = shared_twin(model, {}).to(torch.float64)
    copy_params(model, module)
    optimizer = VanillaSGD(model.params(), learn_rate=0.1, reg=0.0)
    reference_optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    for step in range(5):
        x = randn((4, 3), step, torch.float64)
        optimizer.zero_grad()
        model(x)
        model.backward(torch.ones(4, 3, dtype=torch.float64))
        optimizer.step()
        reference_optimizer.zero_grad()
        module(x).backward(torch.ones(4, 3, dtype=torch.float64))
        reference_optimizer.step()
    torch.testing.assert_close(layer.weight, module[0].weight.detach(), rtol=0, atol=1e-12)


def test_a_layer_shared_by_two_models_run_in_turn():
    """Two models run forward, then backward in reverse order (as two losses would be):
    each backward uses its own model's call of the shared layer."""
    torch.manual_seed(0)
    shared = Linear(3, 3)
    first, second = Sequential(shared, Tanh()), Sequential(shared, Sigmoid())
    x1, x2 = randn((4, 3), 1), randn((4, 3), 2)
    first(x1)
    second(x2)
    dx2 = second.backward(torch.ones(4, 3))
    dx1 = first.backward(torch.ones(4, 3))
    with torch.no_grad():
        tanh_grad = 1 - torch.tanh(x1 @ shared.weight.T + shared.bias) ** 2
        sig = torch.sigmoid(x2 @ shared.weight.T + shared.bias)
        sigmoid_grad = sig * (1 - sig)
    torch.testing.assert_close(dx1, tanh_grad @ shared.weight)
    torch.testing.assert_close(dx2, sigmoid_grad @ shared.weight)
    torch.testing.assert_close(shared.dw, tanh_grad.T @ x1 + sigmoid_grad.T @ x2)


def test_shared_dropout_keeps_each_call_mask():
    torch.manual_seed(0)
    dropout = Dropout(0.5)
    model = Sequential(Linear(4, 4), dropout, Linear(4, 4), dropout)
    model.to(dtype=torch.float64)
    check_against_autograd(model, randn((5, 4), 3, torch.float64), seed=3)


def test_a_bare_call_between_a_containers_forward_and_backward_keeps_its_own_cache():
    """s(a); l(b); s.backward(g1); l.backward(g2): the container's backward puts back
    call a's cache for its own use only, and l.backward uses b, as autograd does."""
    torch.manual_seed(0)
    layer = Linear(3, 2).to(dtype=torch.float64)
    model = Sequential(layer)
    a, b = randn((4, 3), 1, torch.float64), randn((4, 3), 2, torch.float64)
    g1, g2 = randn((4, 2), 3, torch.float64), randn((4, 2), 4, torch.float64)
    model(a)
    layer(b)
    dx_a = model.backward(g1)
    dx_b = layer.backward(g2)

    module = torch.nn.Linear(3, 2).to(torch.float64)
    copy_params(layer, module)
    a_ref, b_ref = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    torch.autograd.backward([module(a_ref), module(b_ref)], [g1, g2])
    for name, got, expected in [
        ("dx of call a", dx_a, a_ref.grad),
        ("dx of call b", dx_b, b_ref.grad),
        ("weight gradient", layer.grad("weight"), module.weight.grad),
        ("bias gradient", layer.grad("bias"), module.bias.grad),
    ]:
        assert rel_error(got, expected) <= 1e-12, name


def test_a_layers_own_backward_after_a_container_called_it_last_is_refused():
    """l(b); s(a); l.backward(g): l's latest forward is s's call, whose backward is s's;
    torch would use b, which l no longer holds: an error, never a's gradient."""
    layer = Linear(3, 2)
    model = Sequential(layer)
    layer(randn((4, 3), 1))
    model(randn((4, 3), 2))
    with pytest.raises(RuntimeError, match=r"Linear\(3, 2\): backward\(\) called on its own.*inside a container"):
        layer.backward(torch.ones(4, 2))
    model.backward(torch.ones(4, 2))  # the container's own backward still runs


def test_a_childs_own_backward_after_only_container_calls_uses_the_latest_forward():
    """With no call of its own waiting, a child's backward is for its latest forward (the
    container's call), as the Layer contract says."""
    layer = Linear(3, 2).to(dtype=torch.float64)
    model = Sequential(layer)
    x, dout = randn((4, 3), 1, torch.float64), randn((4, 2), 2, torch.float64)
    layer(randn((4, 3), 3, torch.float64))
    layer.backward(dout)  # its own call, done
    model(x)
    layer.zero_grad()
    dx = layer.backward(dout)
    assert rel_error(dx, dout @ layer.weight) <= 1e-12
    assert rel_error(layer.grad("weight"), dout.T @ x) <= 1e-12
