"""Residual, Heads, the residual block builders, ResNet and count_params against
torch.nn twins built from the nnlab model, autograd and finite differences."""

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from nnlab.layers import (
    AvgPool2d,
    BatchNorm2d,
    Builder,
    Conv2d,
    CrossEntropyLoss,
    Dropout2d,
    Flatten,
    Heads,
    LeakyReLU,
    Linear,
    MaxPool2d,
    ReLU,
    Residual,
    ResidualBlock,
    ResidualBottleneckBlock,
    ResNet,
    Sequential,
    Sigmoid,
    Tanh,
    count_params,
)
from reference import (
    CONV_FORWARD_ATOL,
    GRAD_RTOL,
    assert_close,
    check_against_autograd,
    check_against_torch,
    check_finite_differences,
)

DTYPES = [torch.float32, torch.float64]


# torch.nn twins -------------------------------------------------------------------


class TorchResidual(torch.nn.Module):
    """main(x) + shortcut(x), the identity when shortcut is None."""

    def __init__(self, main, shortcut=None):
        super().__init__()
        self.main = main
        self.shortcut = shortcut

    def forward(self, x):
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.main(x) + skip


class TorchHeads(torch.nn.Module):
    """A tuple with one output per head."""

    def __init__(self, *heads):
        super().__init__()
        self.heads = torch.nn.ModuleList(heads)

    def forward(self, x):
        return tuple(head(x) for head in self.heads)


def copied(module, layer):
    """``module`` holding copies of ``layer``'s parameters and floating buffers, in order."""
    with torch.no_grad():
        for target, (source, _) in zip(module.parameters(recurse=False), layer.params()):
            target.copy_(source)
    return module


def torch_twin(layer):
    """A torch.nn model computing what the nnlab ``layer`` computes, with the same
    parameter values and registration order (so parameters zip one to one)."""
    if isinstance(layer, Builder):
        return torch_twin(layer.sequence)
    if isinstance(layer, Sequential):
        return torch.nn.Sequential(*[torch_twin(child) for child in layer])
    if isinstance(layer, Residual):
        shortcut = None if layer.shortcut is None else torch_twin(layer.shortcut)
        return TorchResidual(torch_twin(layer.main), shortcut)
    if isinstance(layer, Heads):
        return TorchHeads(*[torch_twin(head) for head in layer])
    dtype = layer.params()[0][0].dtype if layer.params() else torch.float64
    if isinstance(layer, Conv2d):
        module = torch.nn.Conv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            bias=layer.bias is not None,
        )
        return copied(module.to(dtype), layer)
    if isinstance(layer, Linear):
        module = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        return copied(module.to(dtype), layer)
    if isinstance(layer, BatchNorm2d):
        module = torch.nn.BatchNorm2d(layer.num_features, eps=layer.eps, momentum=layer.momentum).to(dtype)
        copied(module, layer)
        with torch.no_grad():
            module.running_mean.copy_(layer.running_mean)
            module.running_var.copy_(layer.running_var)
            module.num_batches_tracked.copy_(layer.num_batches_tracked)
        return module.train(layer.training)
    if isinstance(layer, MaxPool2d):
        return torch.nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding, layer.dilation)
    if isinstance(layer, AvgPool2d):
        return torch.nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding)
    if isinstance(layer, Dropout2d):
        return torch.nn.Dropout2d(layer.p).train(layer.training)
    if isinstance(layer, LeakyReLU):
        return torch.nn.LeakyReLU(layer.alpha)
    simple = {ReLU: torch.nn.ReLU, Tanh: torch.nn.Tanh, Sigmoid: torch.nn.Sigmoid}
    if type(layer) in simple:
        return simple[type(layer)]()
    if isinstance(layer, Flatten):
        return torch.nn.Flatten(layer.start_dim, layer.end_dim)
    raise TypeError(f"no torch twin for {layer!r}")


def random_tensor(shape, dtype, seed=7):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)


def randomize_batchnorms(model, seed=0):
    """Non-trivial affine parameters and running statistics in every BatchNorm2d."""
    generator = torch.Generator().manual_seed(seed)
    stack = [model]
    while stack:
        layer = stack.pop()
        stack.extend(child for _, child in layer.named_children())
        if isinstance(layer, BatchNorm2d):
            size = layer.num_features
            dtype = layer.weight.dtype
            layer.weight.copy_(torch.rand(size, generator=generator, dtype=dtype) + 0.5)
            layer.bias.copy_(torch.randn(size, generator=generator, dtype=dtype) * 0.1)
            layer.running_mean.copy_(torch.randn(size, generator=generator, dtype=dtype) * 0.1)
            layer.running_var.copy_(torch.rand(size, generator=generator, dtype=dtype) + 0.5)
    return model


def batchnorms(model):
    stack, found = [model], []
    while stack:
        layer = stack.pop(0)
        stack = [child for _, child in layer.named_children()] + stack
        if isinstance(layer, BatchNorm2d):
            found.append(layer)
    return found


def count_convs(model):
    stack, count = [model], 0
    while stack:
        layer = stack.pop()
        stack.extend(child for _, child in layer.named_children())
        count += isinstance(layer, Conv2d)
    return count


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
    block = ResidualBlock(2, [3, 2], [3, 3], batchnorm=True, activation="tanh").to(dtype=torch.float64)
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


# ResNet -------------------------------------------------------------------------

RESNET_OPTIONS = dict(
    in_size=(3, 16, 16),
    out_classes=5,
    channels=[8, 8, 8, 8, 8, 8, 12, 12, 12, 12],
    pool_every=3,
    hidden_dims=[16],
    batchnorm=True,
    bottleneck=True,
)


def make_resnet(dtype, **overrides):
    torch.manual_seed(8)
    model = ResNet(**{**RESNET_OPTIONS, **overrides}).to(dtype=dtype)
    return randomize_batchnorms(model)


def test_resnet_structure_with_bottlenecks():
    model = make_resnet(torch.float32)
    kinds = [type(layer).__name__ for layer in model]
    assert kinds == [
        "ResidualBlock",  # 3 -> 8: channel counts differ, a regular block with a 1x1 shortcut
        "MaxPool2d",
        "ResidualBottleneckBlock",  # 8 -> [8, 8, 8]: in == out, a bottleneck of 3 convs
        "MaxPool2d",
        "ResidualBlock",  # 8 -> 12: regular
        "MaxPool2d",
        "ResidualBlock",  # the leftover conv (12 -> 12), no pool after it
        "Flatten",
        "Linear",
        "ReLU",
        "Linear",
    ]
    assert count_convs(model) == 10 + 2  # every conv of channels, plus two 1x1 shortcuts
    assert model[8].in_features == 12 * 2 * 2
    # Building ran a forward pass in eval mode only: statistics untouched, training mode on.
    assert all(bn.num_batches_tracked.item() == 0 for bn in batchnorms(model))
    assert all(layer.training for layer in model)
    assert repr(model).startswith("ResNet, Sequential\n\t[0] ResidualBlock, Sequential\n\t\t[0] Residual")


def test_resnet_bottleneck_mapping():
    model = ResNet((4, 8, 8), 3, [2, 3, 4, 4, 4], pool_every=5, hidden_dims=[], bottleneck=True)
    block = model[0]
    assert isinstance(block, ResidualBottleneckBlock)
    assert (block.in_out_channels, block.inner_channels, block.inner_kernel_sizes) == (4, [3, 4, 4], [3, 3, 3])
    assert count_convs(model) == 5
    # Groups of fewer than 3 convs, or whose input and output channels differ, stay regular.
    model = ResNet((4, 8, 8), 3, [4, 4], pool_every=2, hidden_dims=[], bottleneck=True)
    assert type(model[0]) is ResidualBlock
    model = ResNet((3, 8, 8), 3, [4, 4, 4], pool_every=3, hidden_dims=[], bottleneck=True)
    assert type(model[0]) is ResidualBlock
    model = ResNet((4, 8, 8), 3, [4, 4, 4], pool_every=3, hidden_dims=[], bottleneck=False)
    assert type(model[0]) is ResidualBlock


@pytest.mark.parametrize("dtype", DTYPES)
def test_resnet_bottleneck_batchnorm_matches_torch_twin_in_training_mode(dtype):
    model = make_resnet(dtype)
    assert count_convs(model) >= 8
    twin = torch_twin(model)
    x = random_tensor((2, 3, 16, 16), dtype)
    check_against_torch(model, twin, x, forward_atol=CONV_FORWARD_ATOL[dtype], grad_rtol=GRAD_RTOL[dtype])
    twin_bns = [m for m in twin.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(twin_bns) == len(batchnorms(model)) > 0
    for layer, module in zip(batchnorms(model), twin_bns):
        assert_close("running_mean", layer.running_mean, module.running_mean, rtol=GRAD_RTOL[dtype])
        assert_close("running_var", layer.running_var, module.running_var, rtol=GRAD_RTOL[dtype])
        assert layer.num_batches_tracked.item() == module.num_batches_tracked.item() == 1


def test_resnet_matches_torch_twin_in_eval_mode_with_avg_pooling():
    model = make_resnet(torch.float64, pooling="avg", activation="tanh").eval()
    twin = torch_twin(model).eval()
    check_against_torch(model, twin, random_tensor((2, 3, 16, 16), torch.float64), forward_atol=1e-12)


def test_resnet_state_dict_keys_match_the_twin():
    model = make_resnet(torch.float32)
    twin_keys = list(torch_twin(model).state_dict())
    assert [key.replace("sequence.", "") for key in model.state_dict()] == twin_keys
    assert "sequence.2.sequence.0.main.1.running_var" in model.state_dict()


def test_count_params_matches_torch_twin():
    model = make_resnet(torch.float32)
    twin = torch_twin(model)
    assert count_params(model) == sum(p.numel() for p in twin.parameters())
    assert count_params(model) == sum(p.numel() for p, _ in model.params())
    # Buffers (running statistics) are not trainable.
    assert count_params(BatchNorm2d(7)) == 14
    frozen = torch.nn.Linear(3, 2)
    frozen.bias.requires_grad_(False)
    assert count_params(frozen) == 6
    with pytest.raises(TypeError, match="count_params"):
        count_params("model")


def test_resnet_errors():
    with pytest.raises(ValueError, match="ResNet"):
        ResNet((3, 8), 2, [4], 1, [])
    with pytest.raises(ValueError, match="ResNet"):
        ResNet((3, 8, 8), 2, [4], 0, [])
    with pytest.raises(ValueError, match="ResNet"):
        ResNet((3, 8, 8), 2, [4], 1, [], pooling="median")
    with pytest.raises(ValueError, match=r"ResNet: .*\(3, 4, 4\).*MaxPool2d"):
        ResNet((3, 4, 4), 2, [4, 4, 4], 1, [])


@given(
    channels=st.lists(st.sampled_from([2, 3]), min_size=1, max_size=4),
    pool_every=st.integers(1, 3),
    pooling=st.sampled_from(["max", "avg"]),
    batchnorm=st.booleans(),
    bottleneck=st.booleans(),
)
def test_resnet_hypothesis(channels, pool_every, pooling, batchnorm, bottleneck):
    assume(len(channels) // pool_every <= 3)  # 8x8 halves at most 3 times
    torch.manual_seed(len(channels) * 7 + pool_every)
    model = ResNet(
        (2, 8, 8), 3, channels, pool_every, [4], pooling=pooling, batchnorm=batchnorm, bottleneck=bottleneck
    ).to(dtype=torch.float64)
    randomize_batchnorms(model)
    twin = torch_twin(model)
    assert count_params(model) == count_params(twin)
    check_against_torch(model, twin, random_tensor((2, 2, 8, 8), torch.float64), forward_atol=1e-12)


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
