"""Residual, Heads and the residual block builders against torch.nn twins built from
the nnlab layer, autograd and finite differences; a multi-task model that trains."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nnlab.layers import (
    BatchNorm2d,
    Conv2d,
    CrossEntropyLoss,
    Dropout2d,
    Flatten,
    Heads,
    Layer,
    LeakyReLU,
    Linear,
    MaxPool2d,
    ReLU,
    Residual,
    ResidualBlock,
    ResidualBottleneckBlock,
    Sequential,
    Sigmoid,
    Tanh,
)
from reference import (
    CONV_FORWARD_ATOL,
    GRAD_RTOL,
    assert_close,
    batchnorms,
    check_against_autograd,
    check_against_torch,
    check_finite_differences,
    random_tensor,
    randomize_batchnorms,
    torch_twin,
)

DTYPES = [torch.float32, torch.float64]


# Residual -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_shortcut", [False, True])
def test_residual_dense_matches_torch_twin(with_shortcut, dtype):
    torch.manual_seed(0)
    main = Sequential(Linear(6, 8), Tanh(), Linear(8, 6 if not with_shortcut else 5))
    shortcut = Linear(6, 5, bias=False) if with_shortcut else None
    layer = Residual(main, shortcut).to(dtype=dtype)
    x = random_tensor((4, 6), dtype)
    check_against_torch(layer, torch_twin(layer), x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_residual_conv_matches_torch_twin(dtype):
    torch.manual_seed(1)
    main = Sequential(Conv2d(3, 4, 3, padding=1), ReLU(), Conv2d(4, 4, 3, padding=1))
    layer = Residual(main, Conv2d(3, 4, 1, bias=False)).to(dtype=dtype)
    x = random_tensor((2, 3, 5, 5), dtype)
    check_against_torch(layer, torch_twin(layer), x, forward_atol=CONV_FORWARD_ATOL[dtype])


def test_residual_finite_differences():
    torch.manual_seed(2)
    layer = Residual(Sequential(Linear(4, 4), Tanh()), Linear(4, 4)).to(dtype=torch.float64)
    check_finite_differences(layer, random_tensor((3, 4), torch.float64))


def test_residual_identity_gradient_is_main_plus_dout():
    torch.manual_seed(3)
    layer = Residual(Linear(3, 3, bias=False))
    x = torch.randn(2, 3)
    layer(x)
    dout = torch.randn(2, 3)
    assert torch.allclose(layer.backward(dout), dout @ layer.main.weight + dout)


def test_residual_shape_mismatch_names_both_shapes():
    layer = Residual(Linear(4, 3))
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        layer(torch.randn(2, 4))


def test_residual_children_state_dict_and_repr():
    layer = Residual(Sequential(Linear(2, 3), ReLU()), Linear(2, 3))
    assert list(layer.state_dict()) == ["main.0.weight", "main.0.bias", "shortcut.weight", "shortcut.bias"]
    assert list(layer.state_dict()) == list(torch_twin(layer).state_dict())
    assert len(layer.params()) == 4
    assert repr(layer) == (
        "Residual\n\tmain: Sequential\n\t\t[0] Linear(2, 3)\n\t\t[1] ReLU\n\tshortcut: Linear(2, 3)"
    )
    assert repr(Residual(ReLU())) == "Residual\n\tmain: ReLU\n\tshortcut: Identity"
    assert list(Residual(ReLU()).state_dict()) == []


def test_residual_errors():
    with pytest.raises(TypeError, match="Residual"):
        Residual(torch.nn.ReLU())
    with pytest.raises(RuntimeError, match="Residual"):
        Residual(ReLU()).backward(torch.ones(2))
    with pytest.raises(ValueError, match=r"Residual\.main.*Linear"):
        Residual(Linear(4, 4))(torch.randn(2, 5))


def test_residual_train_eval_propagates():
    layer = Residual(Sequential(Dropout2d(0.5)), BatchNorm2d(2))
    layer.eval()
    assert not layer.main[0].training and not layer.shortcut.training
    layer.train()
    assert layer.main[0].training and layer.shortcut.training


# Heads --------------------------------------------------------------------------


def make_heads(dtype, seed=4):
    torch.manual_seed(seed)
    return Heads(Linear(5, 3), Sequential(Linear(5, 4), Tanh(), Linear(4, 2)), Sigmoid()).to(dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_heads_match_torch_twin_including_summed_input_gradient(dtype):
    layer = make_heads(dtype)
    out = check_against_torch(layer, torch_twin(layer), random_tensor((6, 5), dtype))
    assert isinstance(out, tuple) and [o.shape for o in out] == [(6, 3), (6, 2), (6, 5)]


def test_heads_input_gradient_is_sum_of_head_gradients():
    layer = make_heads(torch.float64)
    x = random_tensor((3, 5), torch.float64)
    douts = [random_tensor(o.shape, torch.float64, seed=i) for i, o in enumerate(layer(x))]
    total = layer.backward(tuple(douts))
    separately = torch.zeros_like(x)
    for head, dout in zip(layer, douts):
        head(x)
        separately += head.backward(dout)
    assert torch.allclose(total, separately, rtol=1e-12, atol=1e-14)


def test_heads_none_gradient_contributes_nothing():
    layer = make_heads(torch.float64)
    twin = torch_twin(layer)
    x = random_tensor((3, 5), torch.float64)
    outs = layer(x)
    dout = random_tensor(outs[1].shape, torch.float64, seed=9)
    dx = layer.backward((None, dout, None))
    x_ref = x.clone().requires_grad_(True)
    twin(x_ref)[1].backward(dout)
    assert_close("input gradient", dx, x_ref.grad, rtol=1e-12)
    assert all(torch.count_nonzero(g) == 0 for _, g in layer[0].params())
    for (_, grad), param in zip(layer[1].params(), twin.heads[1].parameters()):
        assert_close("head 1 gradient", grad, param.grad, rtol=1e-12)
    assert torch.equal(layer.backward((None, None, None)), torch.zeros_like(x))


def test_heads_errors_state_dict_and_repr():
    layer = Heads(Linear(2, 3), Linear(2, 1))
    assert list(layer.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert repr(layer) == "Heads\n\t[0] Linear(2, 3)\n\t[1] Linear(2, 1)"
    assert len(layer) == 2
    with pytest.raises(RuntimeError, match="Heads"):
        layer.backward((None, None))
    layer(torch.randn(4, 2))
    with pytest.raises(ValueError, match="Heads.*2 gradients"):
        layer.backward(torch.ones(4, 3))
    with pytest.raises(ValueError, match="Heads.*2 gradients"):
        layer.backward((torch.ones(4, 3),))
    with pytest.raises(ValueError, match="Heads"):
        Heads()
    with pytest.raises(ValueError, match=r"Heads\[0\] \(Linear\)"):
        layer(torch.randn(4, 3))


# Residual blocks ----------------------------------------------------------------


def test_residual_block_structure_and_repr():
    block = ResidualBlock(3, [4, 5], [3, 5], batchnorm=True, dropout=0.2, activation="lrelu")
    residual, activation = block.sequence
    assert isinstance(activation, LeakyReLU)
    kinds = [type(layer).__name__ for layer in residual.main]
    assert kinds == ["Conv2d", "Dropout2d", "BatchNorm2d", "LeakyReLU", "Conv2d"]
    assert residual.main[0].padding == (1, 1) and residual.main[4].padding == (2, 2)
    shortcut = residual.shortcut
    assert isinstance(shortcut, Conv2d) and shortcut.kernel_size == (1, 1) and shortcut.bias is None
    assert ResidualBlock(4, [3, 4], [3, 3]).sequence[0].shortcut is None
    assert repr(ResidualBlock(2, [2], [3])) == (
        "ResidualBlock, Sequential\n\t[0] Residual\n\t\tmain: Sequential\n"
        "\t\t\t[0] Conv2d(2, 2, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))\n"
        "\t\tshortcut: Identity\n\t[1] ReLU"
    )


@pytest.mark.parametrize(
    "args", [(3, [4, 4], [3, 2]), (3, [4], [3, 3]), (3, [], []), (3, [4], [0])]
)
def test_residual_block_rejects_bad_kernels(args):
    with pytest.raises(ValueError, match="ResidualBlock"):
        ResidualBlock(*args)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
def test_residual_block_with_batchnorm_matches_torch_twin(training, dtype):
    torch.manual_seed(5)
    block = ResidualBlock(3, [4, 6, 5], [3, 1, 5], batchnorm=True).to(dtype=dtype)
    randomize_batchnorms(block).train(training)
    twin = torch_twin(block)
    x = random_tensor((2, 3, 6, 6), dtype)
    check_against_torch(block, twin, x, forward_atol=CONV_FORWARD_ATOL[dtype])
    for layer, module in zip(batchnorms(block), [m for m in twin.modules() if isinstance(m, torch.nn.BatchNorm2d)]):
        assert_close("running_var", layer.running_var, module.running_var, rtol=GRAD_RTOL[dtype])


def test_residual_block_with_dropout_matches_autograd_of_own_forward():
    torch.manual_seed(6)
    block = ResidualBlock(2, [4, 4, 3], [3, 3, 3], dropout=0.5, batchnorm=True).to(dtype=torch.float64)
    check_against_autograd(block, random_tensor((2, 2, 5, 5), torch.float64), seed=3)


def test_residual_block_finite_differences_in_training_mode():
    torch.manual_seed(7)
    # Without conv biases before BatchNorm: their gradient is exactly 0 in training mode,
    # which finite differences resolve only to rounding noise (the torch twin checks them).
    block = ResidualBlock(2, [3, 2], [3, 3], batchnorm=True, activation="tanh", conv_bias=False).to(dtype=torch.float64)
    randomize_batchnorms(block)
    check_finite_differences(block, random_tensor((2, 2, 4, 4), torch.float64), max_elements=20)


def test_bottleneck_block_is_the_documented_residual_block():
    block = ResidualBottleneckBlock(8, [2, 3], [3, 5], batchnorm=True)
    main = block.sequence[0].main
    convs = [layer for layer in main if isinstance(layer, Conv2d)]
    shapes = [(c.in_channels, c.out_channels, c.kernel_size) for c in convs]
    assert shapes == [(8, 2, (1, 1)), (2, 2, (3, 3)), (2, 3, (5, 5)), (3, 8, (1, 1))]
    assert block.sequence[0].shortcut is None
    torch.manual_seed(0)
    expected = ResidualBlock(8, [2, 2, 3, 8], [1, 3, 5, 1], batchnorm=True)
    assert repr(block).split("\n")[1:] == repr(expected).split("\n")[1:]
    assert repr(block).startswith("ResidualBottleneckBlock, Sequential")
    with pytest.raises(ValueError, match="ResidualBottleneckBlock"):
        ResidualBottleneckBlock(8, [2, 3], [3])


@given(
    in_channels=st.integers(1, 3),
    channels=st.lists(st.integers(1, 3), min_size=1, max_size=3),
    kernel=st.sampled_from([1, 3]),
    batchnorm=st.booleans(),
    activation=st.sampled_from(["relu", "tanh", "lrelu", "sigmoid"]),
    size=st.integers(2, 4),
)
def test_residual_block_hypothesis(in_channels, channels, kernel, batchnorm, activation, size):
    torch.manual_seed(len(channels) + 10 * in_channels)
    block = ResidualBlock(in_channels, channels, [kernel] * len(channels), batchnorm=batchnorm, activation=activation)
    block.to(dtype=torch.float64)
    randomize_batchnorms(block)
    x = random_tensor((2, in_channels, size, size), torch.float64)
    check_against_torch(block, torch_twin(block), x, forward_atol=1e-12)


# A multi-task model ---------------------------------------------------------------


def test_multi_task_model_trains_both_heads():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(32, 1, 8, 8, generator=generator)
    # Task A: which half (top or bottom) is brighter; task B: which of 3 column bands is.
    y_a = (x[:, 0, :4].sum(dim=(1, 2)) > x[:, 0, 4:].sum(dim=(1, 2))).long()
    bands = torch.stack([x[:, 0, :, 0:3].sum(dim=(1, 2)), x[:, 0, :, 3:5].sum(dim=(1, 2)), x[:, 0, :, 5:].sum(dim=(1, 2))], 1)
    y_b = bands.argmax(dim=1)

    encoder = Sequential(
        ResidualBlock(1, [4, 4], [3, 3], batchnorm=True), MaxPool2d(2), Flatten(), Linear(64, 16), ReLU()
    )
    model = Sequential(encoder, Heads(Linear(16, 2), Linear(16, 3)))
    loss_a, loss_b = CrossEntropyLoss(), CrossEntropyLoss()
    params = model.params()
    try:
        from nnlab.optimizers import VanillaSGD

        optimizer = VanillaSGD(params, learn_rate=0.1, reg=0.0)
        step = optimizer.step
    except ImportError:

        def step():
            for param, grad in params:
                param -= 0.1 * grad

    history = []
    for _ in range(40):
        model.zero_grad()
        scores_a, scores_b = model(x)
        value_a = loss_a(scores_a, y_a).item()
        value_b = loss_b(scores_b, y_b).item()
        history.append((value_a, value_b))
        # Total loss = (loss_a + loss_b) / 2: each head gets half of its loss's gradient.
        model.backward((loss_a.backward() * 0.5, loss_b.backward() * 0.5))
        step()
    first, last = history[0], history[-1]
    assert last[0] < 0.6 * first[0], history
    assert last[1] < 0.6 * first[1], history


class ForgetsReturn(Layer):
    """The identity whose backward forgets its ``return``."""

    def forward(self, x, **kw):
        return self.finish_forward(x.clone())

    def backward(self, dout):
        self.start_backward(dout)


@pytest.mark.parametrize(
    "make, dout, where",
    [
        (lambda: Residual(ForgetsReturn()), torch.ones(2, 3), r"Residual.main \(ForgetsReturn\)"),
        (lambda: Residual(Linear(3, 3), ForgetsReturn()), torch.ones(2, 3), r"Residual.shortcut \(ForgetsReturn\)"),
        (lambda: Heads(Linear(3, 3), ForgetsReturn()), (torch.ones(2, 3), torch.ones(2, 3)), r"Heads\[1\]"),
        (lambda: Sequential(Linear(3, 3), ForgetsReturn()), torch.ones(2, 3), r"Sequential\[1\]"),
    ],
)
def test_a_backward_that_returns_nothing_is_an_error_naming_the_child(make, dout, where):
    container = make()
    container(torch.randn(2, 3))
    with pytest.raises(RuntimeError, match=where + r".*ForgetsReturn.backward returned None"):
        container.backward(dout)


def test_requires_input_grad_false_keeps_the_input_gradient_of_a_layer_another_head_needs():
    """Heads(Sequential(first, shared), shared): the second head reads data, but the first
    head's ``shared`` feeds ``first``'s parameters; one flag per layer must stay True."""
    torch.manual_seed(0)
    shared = Linear(3, 3)
    model = Heads(Sequential(Linear(3, 3), shared), shared).to(dtype=torch.float64)
    model.requires_input_grad(False)
    x = random_tensor((4, 3), torch.float64, seed=1)
    douts = (random_tensor((4, 3), torch.float64, seed=2), random_tensor((4, 3), torch.float64, seed=3))
    model(x)
    assert model.backward(douts) is None
    module = torch_twin(model)
    torch.autograd.backward(list(module(x)), list(douts))
    for index, ((_, grad), parameter) in enumerate(zip(model.params(), module.parameters(), strict=True)):
        assert_close(f"param#{index} gradient", grad, parameter.grad, rtol=1e-10)
