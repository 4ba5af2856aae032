"""The model builders of nnlab.models (MLP, CNN, ResNet, NetworkConfiguration and build)
against torch.nn twins built layer by layer (as the nnlab model, or as the course
handouts describe), autograd and finite differences; every invalid argument; the
course's own configurations; training after model.to(...)."""

import copy
from typing import NamedTuple, Tuple

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from reference import (
    CONV_FORWARD_ATOL,
    GRAD_RTOL,
    assert_close,
    batchnorms,
    check_against_autograd,
    check_against_torch,
    check_finite_differences,
    copy_params,
    count_convs,
    random_tensor,
    randomize_batchnorms,
    torch_twin,
)

from nnlab.layers import (
    ACTIVATIONS,
    BatchNorm2d,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    Dropout2d,
    Layer,
    LeakyReLU,
    Linear,
    ReLU,
    ResidualBlock,
    ResidualBottleneckBlock,
    Sequential,
    Tanh,
)
from nnlab.models import CNN, MLP, NetworkConfiguration, ResNet, build, count_params
from nnlab.optimizers import Adam

DTYPES = [torch.float32, torch.float64]


def kinds(model):
    return [type(layer).__name__ for layer in model]


# MLP --------------------------------------------------------------------------------------

MLP_CASES = [
    # (in, classes, hidden)
    (5, 3, ()),
    (4, 2, (7,)),
    (6, 4, (8, 5)),
    (3, 1, (4, 4, 3)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("in_features, classes, hidden", MLP_CASES)
def test_mlp_against_torch(in_features, classes, hidden, activation, dtype):
    torch.manual_seed(0)
    model = MLP(in_features, classes, hidden, activation=activation).to(dtype=dtype)
    module = torch_twin(model)
    for batch, seed in ((1, 1), (6, 2)):
        check_against_torch(model, module, random_tensor((batch, in_features), dtype, seed=seed))


@pytest.mark.parametrize("activation", ["lrelu", "sigmoid", "tanh"])
def test_mlp_finite_differences(activation):
    torch.manual_seed(0)
    model = MLP(4, 3, (5, 4), activation=activation).to(dtype=torch.float64)
    check_finite_differences(model, random_tensor((3, 4), torch.float64, seed=3), max_elements=20)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mlp_with_loss_against_torch(dtype):
    torch.manual_seed(0)
    mlp = MLP(5, 4, (6,), activation="tanh").to(dtype=dtype)
    model = Sequential(mlp, CrossEntropyLoss())
    module = torch_twin(mlp)
    x = random_tensor((7, 5), dtype, seed=1)
    y = torch.tensor([0, 3, 1, 2, 2, 0, 3])

    class Composite(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module

        def forward(self, x, y):
            return torch.nn.functional.cross_entropy(self.inner(x), y)

    check_against_torch(model, Composite(), x, y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mlp_with_dropout_train_against_autograd(dtype):
    torch.manual_seed(0)
    model = MLP(5, 3, (8, 6), activation="relu", dropout=0.3).to(dtype=dtype)
    check_against_autograd(model, random_tensor((4, 5), dtype, seed=1), seed=11)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mlp_with_dropout_eval_against_torch(dtype):
    torch.manual_seed(0)
    model = MLP(5, 3, (8, 6), activation="relu", dropout=0.5).to(dtype=dtype).eval()
    module = torch_twin(model)
    assert not module.training
    check_against_torch(model, module, random_tensor((4, 5), dtype, seed=1))


@settings(max_examples=15)
@given(
    in_features=st.integers(1, 6),
    classes=st.integers(1, 5),
    hidden=st.lists(st.integers(1, 6), min_size=0, max_size=3),
    activation=st.sampled_from(sorted(ACTIVATIONS)),
    batch=st.integers(1, 5),
    dtype=st.sampled_from(DTYPES),
    data=st.data(),
)
def test_mlp_random(in_features, classes, hidden, activation, batch, dtype, data):
    torch.manual_seed(in_features + 7 * classes + 31 * len(hidden))
    model = MLP(in_features, classes, tuple(hidden), activation=activation).to(dtype=dtype)
    elements = st.floats(-5, 5, allow_nan=False, allow_subnormal=False, width=32)
    x = torch.from_numpy(data.draw(hnp.arrays(np.float32, (batch, in_features), elements=elements))).to(dtype)
    check_against_torch(model, torch_twin(model), x)


def test_dropout_inside_mlp_is_identity_in_eval():
    torch.manual_seed(0)
    model = MLP(6, 3, (10, 8), dropout=0.5)
    without = MLP(6, 3, (10, 8))
    for (target, _), (source, _) in zip(without.params(), model.params(), strict=True):
        target.copy_(source)
    x = random_tensor((50, 6), torch.float32, seed=1)
    model.eval()
    first = model(x)
    second = model(x)
    assert torch.equal(first, second)
    assert torch.allclose(first, without(x), atol=1e-6)
    model.train()
    torch.manual_seed(1)
    trained = model(x)
    assert not torch.allclose(trained, first, atol=1e-3)


# MLP structure and repr -------------------------------------------------------------

@pytest.mark.parametrize("name, kind", sorted(ACTIVATIONS.items()))
@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_mlp_structure(name, kind, dropout):
    model = MLP(10, 3, (8, 6, 4), activation=name, dropout=dropout)
    per_hidden = [Linear, kind] + ([Dropout] if dropout else [])
    expected = per_hidden * 3 + [Linear]
    assert [type(layer) for layer in model] == expected
    assert len(model) == len(expected)
    assert isinstance(model.sequence, Sequential)
    linears = [layer for layer in model if isinstance(layer, Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(10, 8), (8, 6), (6, 4), (4, 3)]
    if dropout:
        assert all(layer.p == dropout for layer in model if isinstance(layer, Dropout))
    activations = [layer for layer in model if isinstance(layer, kind)]
    assert len({id(layer) for layer in activations}) == 3


def test_mlp_without_hidden_layers():
    model = MLP(7, 2)
    assert [type(layer) for layer in model] == [Linear]
    assert repr(model) == "MLP, Sequential\n\t[0] Linear(7, 2)"


@pytest.mark.parametrize("activation", [LeakyReLU(alpha=0.2), LeakyReLU])
def test_mlp_activation_layer_gets_a_copy_per_position(activation):
    model = MLP(4, 2, (5, 5, 5), activation=activation)
    activations = [model[i] for i in (1, 3, 5)]
    assert all(type(layer) is LeakyReLU for layer in activations)
    assert len({id(layer) for layer in activations}) == 3
    assert all(layer is not activation for layer in activations)
    if isinstance(activation, Layer):
        assert all(layer.alpha == 0.2 for layer in activations)
    # Each position caches its own input: gradients still match the torch twin.
    torch.manual_seed(0)
    check_against_torch(model, torch_twin(model), random_tensor((3, 4), torch.float32, seed=1))


def test_unknown_activation_message_lists_choices():
    with pytest.raises(ValueError) as info:
        MLP(4, 2, (3,), activation="relu7")
    message = str(info.value)
    assert "relu7" in message and "relu" in message and "tanh" in message


@pytest.mark.parametrize("dropout", [-0.1, 1.0])
def test_mlp_rejects_bad_dropout(dropout):
    with pytest.raises(ValueError):
        MLP(4, 2, (3,), dropout=dropout)


def test_mlp_repr():
    model = MLP(200, 10, (100, 50), activation="lrelu", dropout=0.6)
    lines = repr(model).split("\n")
    assert lines[0] == "MLP, Sequential"
    assert lines[1:] == [
        "\t[0] Linear(200, 100)",
        "\t[1] LeakyReLU(alpha=0.01)",
        "\t[2] Dropout(p=0.6)",
        "\t[3] Linear(100, 50)",
        "\t[4] LeakyReLU(alpha=0.01)",
        "\t[5] Dropout(p=0.6)",
        "\t[6] Linear(50, 10)",
    ]
    assert str(MLP(200, 10, (100,))) == "MLP, Sequential\n\t[0] Linear(200, 100)\n\t[1] ReLU\n\t[2] Linear(100, 10)"


def test_mlp_indexing_len_iteration():
    model = MLP(4, 2, (3,))
    assert len(model) == 3
    assert model[0] is model.sequence[0]
    assert list(model) == list(model.sequence)
    for (param, grad), (same_param, same_grad) in zip(model.params(), model.sequence.params(), strict=True):
        assert param is same_param and grad is same_grad




# MLP: the course spelling, per-layer activations, image input ---------------------------


def test_mlp_course_spelling_one_activation_per_layer():
    model = MLP(in_dim=6, dims=[5, 4, 3], nonlins=["relu", LeakyReLU(alpha=0.2), "softmax"])
    assert kinds(model) == ["Linear", "ReLU", "Linear", "LeakyReLU", "Linear", "Softmax"]
    assert model[3].alpha == 0.2
    positional = MLP(6, [5, 4, 3], ["tanh", "none", "none"])  # 'none': no activation layer
    assert kinds(positional) == ["Linear", "Tanh", "Linear", "Linear"]
    assert [(l.in_features, l.out_features) for l in positional if isinstance(l, Linear)] == [(6, 5), (5, 4), (4, 3)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_mlp_course_spelling_matches_torch_twin(dtype):
    torch.manual_seed(3)
    model = MLP(in_dim=5, dims=[7, 6, 4], nonlins=["lrelu", "sigmoid", "softmax"]).to(dtype=dtype)
    out = check_against_torch(model, torch_twin(model), random_tensor((4, 5), dtype, seed=2))
    assert torch.allclose(out.sum(dim=1), torch.ones(4, dtype=dtype))


def test_mlp_with_an_input_shape_flattens_image_batches():
    torch.manual_seed(4)
    model = MLP((1, 6, 5), 3, (8,)).to(dtype=torch.float64)
    assert kinds(model) == ["Flatten", "Linear", "ReLU", "Linear"]
    assert model[1].in_features == 30
    images = random_tensor((4, 1, 6, 5), torch.float64)
    check_against_torch(model, torch_twin(model), images)
    same = model(images.reshape(4, 30))  # flat rows still go through
    assert torch.equal(same, model(images))
    course = MLP(in_dim=(1, 6, 5), dims=[3], nonlins=["none"])
    assert kinds(course) == ["Flatten", "Linear"]


MLP_ERRORS = [
    (lambda: MLP(4, 2, (3,), dropout=[0.1]), "dropout"),
    (lambda: MLP(4, 2.0), "num_classes"),
    (lambda: MLP(4, 2, 3), "hidden_features must be a list"),
    (lambda: MLP(4, 2, (3, 0)), "hidden_features"),
    (lambda: MLP(0, 2), "in_features"),
    (lambda: MLP((1, 0, 28), 2), "in_features"),
    (lambda: MLP(4, 2, in_dim=4), "give in_features or in_dim"),
    (lambda: MLP(4, [3, 2], ["relu"]), "nonlins must be a list of one activation per layer"),
    (lambda: MLP(4, [3, 2], ["relu", "relu7"]), r"nonlins\[1\]"),
    (lambda: MLP(4, [3, 2], ["relu", "none"], dims=[3, 2]), "dims given twice"),
    (lambda: MLP(4, dims=[3, 2], nonlins=["relu", "none"], activation="tanh"), "activation"),
    (lambda: MLP(4, 2, dims=[2], nonlins=["none"]), "num_classes"),
    (lambda: MLP(4, dims=[3, 2], nonlins=["relu", "none"], dropout=0.5), "dropout"),
    (lambda: MLP(4, dims=[], nonlins=[]), "dims"),
    (lambda: MLP(4, 2, (3,), wstd=-0.1), "wstd"),
    (lambda: MLP(4, 2, (3,), wstd=[0.1]), "wstd"),
]


@pytest.mark.parametrize("make, message", MLP_ERRORS)
def test_mlp_invalid_arguments_name_the_argument(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# CNN ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pooling, activation, channels, pool_every, hidden_dims",
    [
        ("max", "relu", [4, 6], 1, [12]),
        ("avg", "tanh", [4, 4, 6], 2, [10, 8]),
        ("max", "lrelu", [3, 5, 5], 3, []),
        ("avg", "sigmoid", [4], 1, [6]),
    ],
)
def test_cnn_matches_torch_twin(pooling, activation, channels, pool_every, hidden_dims):
    torch.manual_seed(8)
    model = CNN((3, 12, 10), 5, channels, pool_every, hidden_dims, activation=activation, pooling=pooling)
    model.to(dtype=torch.float64)
    twin = torch_twin(model.sequence).to(torch.float64)
    copy_params(model, twin)
    out = check_against_torch(model, twin, torch.randn(3, 3, 12, 10, dtype=torch.float64))
    assert out.shape == (3, 5)


def test_cnn_layer_layout():
    model = CNN((1, 16, 16), 10, [4, 8, 8], 2, [20], pooling_params=dict(kernel_size=2))
    kinds = [type(layer).__name__ for layer in model]
    assert kinds == [
        "Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d",
        "Conv2d", "ReLU",  # leftover conv: 3 channels, pool every 2
        "Flatten", "Linear", "ReLU", "Linear",
    ]  # fmt: skip
    assert model[8].in_features == 8 * 8 * 8
    first_line = "\t[0] Conv2d(1, 4, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))"
    assert repr(model).startswith("CNN, Sequential\n" + first_line)


@pytest.mark.parametrize("pooling", ["adaptive_max", "adaptive_avg"])
def test_cnn_ending_in_adaptive_pooling_accepts_several_sizes(pooling):
    torch.manual_seed(9)
    model = CNN(
        (2, 16, 16),
        4,
        [3, 5],
        2,
        [7],
        conv_params=dict(kernel_size=3, padding=1),
        pooling=pooling,
        pooling_params=dict(output_size=(4, 4)),
    ).to(dtype=torch.float64)
    assert repr(model[4]) in ("AdaptiveMaxPool2d(output_size=(4, 4))", "AdaptiveAvgPool2d(output_size=(4, 4))")
    twin = torch_twin(model.sequence).to(torch.float64)
    copy_params(model, twin)
    for height, width in [(16, 16), (11, 9), (28, 28), (4, 5)]:
        out = check_against_torch(model, twin, torch.randn(2, 2, height, width, dtype=torch.float64))
        assert out.shape == (2, 4)


def test_cnn_with_custom_conv_and_pool_params_and_activation_layer():
    torch.manual_seed(10)
    model = CNN(
        (1, 28, 28),
        10,
        [8, 8],
        1,
        [16],
        conv_params=dict(kernel_size=3, stride=1, padding=0),
        activation=LeakyReLU(0.2),
        pooling="max",
        pooling_params=dict(kernel_size=3, stride=2, padding=1),
    )
    twin = torch_twin(model.sequence)
    copy_params(model, twin)
    check_against_torch(model, twin, torch.randn(2, 1, 28, 28), forward_atol=CONV_FORWARD_ATOL[torch.float32])


def test_cnn_errors():
    with pytest.raises(ValueError, match="CNN: pooling"):
        CNN((1, 8, 8), 2, [4], 1, [], pooling="min")
    with pytest.raises(ValueError, match="pool_every"):
        CNN((1, 8, 8), 2, [4], 0, [])
    with pytest.raises(ValueError, match="in_size"):
        CNN((8, 8), 2, [4], 1, [])
    with pytest.raises(ValueError, match="MaxPool2d.*larger than the padded input"):
        CNN((1, 4, 4), 2, [4, 4, 4], 1, [])  # 4 -> 2 -> 1 -> nothing
    model = CNN((1, 8, 8), 2, [4], 1, [])
    with pytest.raises(ValueError, match=r"Sequential\[0\] \(Conv2d\)"):
        model(torch.randn(1, 2, 8, 8))
    with pytest.raises(RuntimeError, match="before forward"):
        CNN((1, 8, 8), 2, [4], 1, []).backward(torch.randn(1, 2))


# CNN: per-layer convolutions, final pooling, batch norm, dropout, output activation -------


def convs(model):
    return [layer for layer in model if isinstance(layer, Conv2d)]


def test_cnn_list_valued_conv_params_are_per_layer():
    # Until nnlab 0.x this built one 4x5 kernel with stride (1, 2) for every conv.
    model = CNN((1, 16, 16), 3, [4, 6], 2, [], conv_params=dict(kernel_size=[4, 5], stride=[1, 2]))
    assert [conv.kernel_size for conv in convs(model)] == [(4, 4), (5, 5)]
    assert [conv.stride for conv in convs(model)] == [(1, 1), (2, 2)]
    assert [conv.padding for conv in convs(model)] == [(0, 0), (0, 0)]


def test_cnn_a_tuple_in_conv_params_is_a_pair_for_every_conv():
    model = CNN((1, 20, 30), 3, [4, 6], 2, [], conv_params=dict(kernel_size=(4, 5), stride=(1, 2)))
    assert [conv.kernel_size for conv in convs(model)] == [(4, 5), (4, 5)]
    assert [conv.stride for conv in convs(model)] == [(1, 2), (1, 2)]


def test_cnn_conv_params_as_a_list_of_dicts():
    settings = [dict(kernel_size=5, padding=2), dict(kernel_size=(3, 1), stride=2, bias=False)]
    model = CNN((2, 12, 12), 3, [4, 6], 2, [], conv_params=settings)
    first, second = convs(model)
    assert (first.kernel_size, first.padding, first.bias is None) == ((5, 5), (2, 2), False)
    assert (second.kernel_size, second.stride, second.bias is None) == ((3, 1), (2, 2), True)


def test_cnn_final_pooling_replaces_or_follows_the_last_pool():
    options = dict(pooling_params=dict(kernel_size=2), final_pooling="adaptive_max")
    every_conv = CNN((1, 32, 32), 3, [4, 4, 4], 1, [], **options)
    assert kinds(every_conv)[:9] == ["Conv2d", "ReLU", "MaxPool2d"] * 2 + ["Conv2d", "ReLU", "AdaptiveMaxPool2d"]
    assert every_conv[8].output_size == (4, 4)
    leftover = CNN((1, 32, 32), 3, [4, 4, 4], 2, [], **options)
    assert kinds(leftover)[:8] == ["Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "AdaptiveMaxPool2d"]
    avg = CNN((1, 32, 32), 3, [4], 1, [], final_pooling="avg", final_pooling_params=dict(kernel_size=4))
    assert repr(avg[2]) == "AvgPool2d(kernel_size=(4, 4), stride=(4, 4), padding=(0, 0))"


def test_cnn_batchnorm_and_dropout_placement():
    model = CNN((1, 8, 8), 3, [4, 4], 2, [5], batchnorm=True, dropout=0.25)
    unit = ["Conv2d", "BatchNorm2d", "ReLU", "Dropout2d"]
    assert kinds(model) == unit * 2 + ["MaxPool2d", "Flatten", "Linear", "ReLU", "Linear"]
    assert all(conv.bias is None for conv in convs(model))  # BatchNorm's bias takes its place
    assert all(layer.p == 0.25 for layer in model if isinstance(layer, Dropout2d))
    biased = CNN((1, 8, 8), 3, [4], 1, [], conv_params=dict(kernel_size=3, bias=True), batchnorm=True)
    assert convs(biased)[0].bias is not None  # asked for explicitly


@pytest.mark.parametrize("training", [True, False])
def test_cnn_per_layer_batchnorm_final_pooling_softmax_matches_torch_twin(training):
    torch.manual_seed(5)
    model = CNN(
        (2, 14, 12),
        4,
        [3, 5, 6],
        1,
        [7],
        conv_params=dict(kernel_size=[3, (3, 1), 1], stride=[1, 2, 1], padding=[1, 0, 0]),
        activation_type="lrelu",
        activation_params=dict(negative_slope=0.1),
        final_pooling="adaptive_max",
        batchnorm=True,
        dropout=0.2,
        output_activation="softmax",
    ).to(dtype=torch.float64)
    randomize_batchnorms(model)
    model.train(training)
    if training:  # dropout masks: autograd through the layers' own forward is the judge
        check_against_autograd(model, random_tensor((3, 2, 14, 12), torch.float64), seed=4)
        model.eval()
    twin = torch_twin(model)
    for size in [(14, 12), (18, 20)]:
        out = check_against_torch(model, twin, random_tensor((3, 2, *size), torch.float64), forward_atol=1e-12)
        assert torch.allclose(out.sum(dim=1), torch.ones(3, dtype=torch.float64))


def test_cnn_course_spelling_builds_what_the_plain_spelling_builds():
    course = CNN(
        (3, 16, 16), 4, [6, 6], 2, [8],
        conv_params=dict(kernel_size=3, stride=1, padding=1),
        activation_type="lrelu", activation_params=dict(negative_slope=0.05),
        pooling_type="avg", pooling_params=dict(kernel_size=2),
    )  # fmt: skip
    plain = CNN((3, 16, 16), 4, [6, 6], 2, [8], dict(kernel_size=3, padding=1), LeakyReLU(0.05), "avg")
    assert repr(course) == repr(plain)
    assert "LeakyReLU(alpha=0.05)" in repr(course)


# The CS236781 (hw2, part 4) notebook's test_params, and the layers it prints for each.

def conv_text(c_in, c_out, kernel, stride, padding):
    return (
        f"Conv2d({c_in}, {c_out}, kernel_size=({kernel}, {kernel}), stride=({stride}, {stride}), "
        f"padding=({padding}, {padding}))"
    )


def pool_text(kind, size):
    return f"{kind}(kernel_size=({size}, {size}), stride=({size}, {size}), padding=(0, 0))"


COURSE_CNN_PARAMS = [
    dict(
        in_size=(3, 100, 100), out_classes=10,
        channels=[32] * 4, pool_every=2, hidden_dims=[100] * 2,
        conv_params=dict(kernel_size=3, stride=1, padding=1),
        activation_type="relu", activation_params=dict(),
        pooling_type="max", pooling_params=dict(kernel_size=2),
    ),
    dict(
        in_size=(3, 100, 100), out_classes=10,
        channels=[32] * 4, pool_every=2, hidden_dims=[100] * 2,
        conv_params=dict(kernel_size=5, stride=2, padding=3),
        activation_type="lrelu", activation_params=dict(negative_slope=0.05),
        pooling_type="avg", pooling_params=dict(kernel_size=3),
    ),
    dict(
        in_size=(3, 100, 100), out_classes=3,
        channels=[16] * 5, pool_every=3, hidden_dims=[100] * 1,
        conv_params=dict(kernel_size=2, stride=2, padding=2),
        activation_type="lrelu", activation_params=dict(negative_slope=0.1),
        pooling_type="max", pooling_params=dict(kernel_size=2),
    ),
]  # fmt: skip

FLATTEN = "Flatten(start_dim=1, end_dim=-1)"
COURSE_CNN_LAYERS = [
    [
        conv_text(3, 32, 3, 1, 1), "ReLU", conv_text(32, 32, 3, 1, 1), "ReLU", pool_text("MaxPool2d", 2),
        conv_text(32, 32, 3, 1, 1), "ReLU", conv_text(32, 32, 3, 1, 1), "ReLU", pool_text("MaxPool2d", 2),
        FLATTEN, "Linear(20000, 100)", "ReLU", "Linear(100, 100)", "ReLU", "Linear(100, 10)",
    ],
    [
        conv_text(3, 32, 5, 2, 3), "LeakyReLU(alpha=0.05)", conv_text(32, 32, 5, 2, 3), "LeakyReLU(alpha=0.05)",
        pool_text("AvgPool2d", 3),
        conv_text(32, 32, 5, 2, 3), "LeakyReLU(alpha=0.05)", conv_text(32, 32, 5, 2, 3), "LeakyReLU(alpha=0.05)",
        pool_text("AvgPool2d", 3),
        FLATTEN, "Linear(32, 100)", "LeakyReLU(alpha=0.05)", "Linear(100, 100)", "LeakyReLU(alpha=0.05)",
        "Linear(100, 10)",
    ],
    [
        conv_text(3, 16, 2, 2, 2), "LeakyReLU(alpha=0.1)", conv_text(16, 16, 2, 2, 2), "LeakyReLU(alpha=0.1)",
        conv_text(16, 16, 2, 2, 2), "LeakyReLU(alpha=0.1)", pool_text("MaxPool2d", 2),
        conv_text(16, 16, 2, 2, 2), "LeakyReLU(alpha=0.1)", conv_text(16, 16, 2, 2, 2), "LeakyReLU(alpha=0.1)",
        FLATTEN, "Linear(400, 100)", "LeakyReLU(alpha=0.1)", "Linear(100, 3)",
    ],
]  # fmt: skip


@pytest.mark.parametrize("index", range(len(COURSE_CNN_PARAMS)))
def test_course_cnn_test_params_build_as_written(index):
    torch.manual_seed(42)
    params = COURSE_CNN_PARAMS[index]
    net = CNN(**params)
    expected = [f"\t[{i}] {text}" for i, text in enumerate(COURSE_CNN_LAYERS[index])]
    assert str(net).split("\n") == ["CNN, Sequential", *expected]
    assert net(torch.ones(1, 3, 100, 100)).shape == (1, params["out_classes"])


def cnn_options(**overrides):
    return {**dict(in_size=(1, 8, 8), out_classes=3, channels=[4, 4], pool_every=1, hidden_dims=[5]), **overrides}


CNN_ERRORS = [
    (dict(conv_params=dict(kernel_size=[4, 5], stride=1), channels=[4, 4, 4]), r"conv_params\['kernel_size'\] is a list of 2"),
    (dict(conv_params=dict(kernel_size=3, stride=[1, 1, 1])), r"conv_params\['stride'\] is a list of 3"),
    (dict(conv_params=dict(kernel_size=3, padd=1)), r"conv_params has unknown keys \['padd'\]"),
    (dict(conv_params=[dict(kernel_size=3)]), "conv_params is a list of 1 dicts"),
    (dict(conv_params=[dict(kernel_size=3), dict(kernel_size=3, strides=2)]), r"conv_params\[1\] has unknown keys"),
    (dict(conv_params=dict(padding=1)), "convolution 0 has no kernel_size"),
    (dict(conv_params=dict(kernel_size=[[3, 3], 3])), r"conv_params \(convolution 0\)\['kernel_size'\] is a list"),
    (dict(conv_params=dict(kernel_size=0)), "conv_params for convolution 0"),
    (dict(conv_params="3x3"), "conv_params must be a dict"),
    (dict(pooling_params=dict(kernel_size=[2, 2])), r"pooling_params\['kernel_size'\] is a list"),
    (dict(pooling_params=dict(kernel=2)), "pooling_params"),
    (dict(pooling_params=2), "pooling_params must be a dict"),
    (dict(pooling="min"), "pooling must be one of"),
    (dict(pooling_type="min"), "pooling_type must be one of"),
    (dict(pooling="avg", pooling_type="max"), "give pooling or pooling_type"),
    (dict(activation="tanh", activation_type="relu"), "give activation or activation_type"),
    (dict(activation="relu", activation_type="relu"), "give activation or activation_type"),
    (dict(activation_type="lrelu", activation_params=dict(slope=0.1)), "activation_params"),
    (dict(activation_type="lrelu", activation_params=dict(negative_slope=float("nan"))), "activation_params"),
    (dict(activation=LeakyReLU(), activation_params=dict(negative_slope=0.1)), "apply to a named activation"),
    (dict(activation_params=[0.1]), "activation_params must be a dict"),
    (dict(activation="relu7"), "activation must be one of"),
    (dict(activation_type="relu7"), "activation_type must be one of"),
    (dict(final_pooling="median"), "final_pooling must be one of"),
    (dict(final_pooling_params=dict(output_size=(4, 4))), "final_pooling_params given without final_pooling"),
    (dict(final_pooling="adaptive_max", final_pooling_params=dict(output_size=[4, 4])), r"final_pooling_params\['output_size'\]"),
    (dict(batchnorm=1), "batchnorm must be True or False"),
    (dict(dropout=1.0), "dropout"),
    (dict(dropout=[0.1]), "dropout"),
    (dict(output_activation="relu7"), "output_activation"),
    (dict(in_size=(1, 8)), "in_size"),
    (dict(in_size=(1, 8, 0)), "in_size"),
    (dict(in_size=(1, 2, 2)), r"in_size \(1, 2, 2\) shrinks to nothing"),
    (dict(out_classes=0), "out_classes"),
    (dict(out_classes=[10]), "out_classes"),
    (dict(channels=[]), "channels"),
    (dict(channels=8), "channels"),
    (dict(channels=[8, 0]), "channels"),
    (dict(pool_every=0), "pool_every"),
    (dict(pool_every=[1]), "pool_every"),
    (dict(pool_every=True), "pool_every"),
    (dict(hidden_dims=16), "hidden_dims"),
    (dict(hidden_dims=[16, -1]), "hidden_dims"),
]


@pytest.mark.parametrize("overrides, message", CNN_ERRORS)
def test_cnn_invalid_arguments_name_the_argument(overrides, message):
    with pytest.raises(ValueError, match=f"CNN: .*{message}"):
        CNN(**cnn_options(**overrides))


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




# ResNet: the course spelling and the CS236781 test_params ----------------------------------

COURSE_RESNET_PARAMS = [
    dict(
        in_size=(3, 100, 100), out_classes=10, channels=[32, 64] * 3,
        pool_every=4, hidden_dims=[100] * 2,
        activation_type="lrelu", activation_params=dict(negative_slope=0.01),
        pooling_type="avg", pooling_params=dict(kernel_size=2),
        batchnorm=True, dropout=0.1,
        bottleneck=False,
    ),
    dict(
        # create 64->16->64 bottlenecks
        in_size=(3, 100, 100), out_classes=5, channels=[64, 16, 64] * 4,
        pool_every=3, hidden_dims=[64] * 1,
        activation_type="tanh",
        pooling_type="max", pooling_params=dict(kernel_size=2),
        batchnorm=True, dropout=0.1,
        bottleneck=True,
    ),
]  # fmt: skip


def block_convs(block):
    """(in, out, kernel) of each conv on the main path, and the shortcut's, of a block."""
    residual = block.sequence[0]
    main = [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in residual.main if isinstance(c, Conv2d)]
    shortcut = residual.shortcut
    return main, None if shortcut is None else (shortcut.in_channels, shortcut.out_channels, shortcut.kernel_size[0])


def test_course_resnet_test_params_build_as_written():
    torch.manual_seed(42)
    first = ResNet(**COURSE_RESNET_PARAMS[0])
    assert kinds(first) == [
        "ResidualBlock", "AvgPool2d", "ResidualBlock",
        "Flatten", "Linear", "LeakyReLU", "Linear", "LeakyReLU", "Linear",
    ]  # fmt: skip
    # The notebook prints Conv -> Dropout2d -> BatchNorm2d -> LeakyReLU(0.01) between convs.
    assert kinds(first[0].sequence[0].main) == ["Conv2d", "Dropout2d", "BatchNorm2d", "LeakyReLU"] * 3 + ["Conv2d"]
    assert block_convs(first[0]) == ([(3, 32, 3), (32, 64, 3), (64, 32, 3), (32, 64, 3)], (3, 64, 1))
    assert block_convs(first[2]) == ([(64, 32, 3), (32, 64, 3)], None)
    assert repr(first[5]) == "LeakyReLU(alpha=0.01)" and repr(first[1]) == pool_text("AvgPool2d", 2)
    assert (first[4].in_features, first[8].out_features) == (64 * 50 * 50, 10)

    second = ResNet(**COURSE_RESNET_PARAMS[1])
    assert kinds(second) == [
        "ResidualBlock", "MaxPool2d", *["ResidualBottleneckBlock", "MaxPool2d"] * 3,
        "Flatten", "Linear", "Tanh", "Linear",
    ]  # fmt: skip
    assert block_convs(second[0]) == ([(3, 64, 3), (64, 16, 3), (16, 64, 3)], (3, 64, 1))
    assert all(block_convs(second[i]) == ([(64, 16, 1), (16, 16, 3), (16, 64, 1)], None) for i in (2, 4, 6))
    assert (second[9].in_features, second[11].out_features) == (64 * 6 * 6, 5)
    second.eval()
    assert second(torch.ones(1, 3, 100, 100)).shape == (1, 5)


def test_resnet_course_spelling_and_output_activation_match_torch_twin():
    torch.manual_seed(6)
    model = ResNet(
        (2, 8, 8), 3, [4, 4], 2, [5],
        activation_type="lrelu", activation_params=dict(negative_slope=0.2),
        pooling_type="avg", pooling_params=dict(kernel_size=2),
        batchnorm=True, output_activation="softmax",
    ).to(dtype=torch.float64)  # fmt: skip
    assert all(layer.alpha == 0.2 for layer in model if isinstance(layer, LeakyReLU))
    assert kinds(model)[-1] == "Softmax"
    randomize_batchnorms(model)
    check_against_torch(model, torch_twin(model), random_tensor((3, 2, 8, 8), torch.float64), forward_atol=1e-12)


def resnet_options(**overrides):
    return {**dict(in_size=(2, 8, 8), out_classes=3, channels=[4, 4], pool_every=2, hidden_dims=[5]), **overrides}


RESNET_ERRORS = [
    (dict(activation="tanh", activation_type="relu"), "give activation or activation_type"),
    (dict(activation_type="none"), "activation 'none' is not possible"),
    (dict(activation_type="lrelu", activation_params=dict(slope=0.1)), "activation_params"),
    (dict(pooling_type="median"), "pooling_type must be one of"),
    (dict(pooling_params=dict(kernel_size=[2, 2])), r"pooling_params\['kernel_size'\] is a list"),
    (dict(batchnorm="yes"), "batchnorm must be True or False"),
    (dict(bottleneck=1), "bottleneck must be True or False"),
    (dict(dropout=-0.1), "dropout"),
    (dict(channels=[]), "channels"),
    (dict(channels=4), "channels"),
    (dict(pool_every=[2]), "pool_every"),
    (dict(hidden_dims=4), "hidden_dims"),
    (dict(out_classes=0), "out_classes"),
    (dict(in_size=(2, 8, 8, 1)), "in_size"),
    (dict(in_size=(2, 1, 1), pool_every=1), r"in_size \(2, 1, 1\) shrinks to nothing"),
    (dict(output_activation="relu7"), "output_activation"),
]


@pytest.mark.parametrize("overrides, message", RESNET_ERRORS)
def test_resnet_invalid_arguments_name_the_argument(overrides, message):
    with pytest.raises(ValueError, match=f"ResNet: .*{message}"):
        ResNet(**resnet_options(**overrides))


# NetworkConfiguration and build: the IFT6390 / IFT3395 assignments' networks -------------------


class IFT6390Configuration(NamedTuple):
    """The IFT6390 handout's named tuple, which has no paddings field."""

    n_channels: Tuple[int, ...] = (16, 32, 48)
    kernel_sizes: Tuple[int, ...] = (3, 3, 3)
    strides: Tuple[int, ...] = (1, 1, 1)
    dense_hiddens: Tuple[int, ...] = (256, 256)


IFT6390_DEFAULT = IFT6390Configuration()
# IFT6390 homework 3, question 5: a deep CNN of 1x1 kernels and a shallow one with a
# single image-sized kernel, on 28x28 Fashion-MNIST.
IFT6390_DEEP = NetworkConfiguration(
    n_channels=(8, 16, 32, 64), kernel_sizes=(1, 1, 1, 1), strides=(1, 1, 1, 1), paddings=(0, 0, 0, 0), dense_hiddens=(256, 256)
)
IFT6390_SHALLOW = NetworkConfiguration(
    n_channels=(54,), kernel_sizes=(28,), strides=(1,), paddings=(0,), dense_hiddens=(256, 256)
)
IFT3395_DEFAULT = NetworkConfiguration()
IFT3395_STRIDED = NetworkConfiguration(
    n_channels=(8, 16), kernel_sizes=(5, 3), strides=(2, 1), paddings=(2, 1), dense_hiddens=(32,)
)
TORCH_ACTIVATIONS = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid}


def handout_dense(width, hiddens, num_classes, activation, softmax):
    layers = []
    for hidden in hiddens:
        layers += [torch.nn.Linear(width, hidden), activation()]
        width = hidden
    layers.append(torch.nn.Linear(width, num_classes))
    if softmax:
        layers.append(torch.nn.Softmax(dim=1))
    return layers


def handout_cnn(in_channels, config, num_classes, activation, softmax):
    """create_cnn as the handouts describe it, in torch.nn: each conv with its own kernel,
    stride and padding, then the activation; MaxPool2d(2) after every conv but the last,
    AdaptiveMaxPool2d((4, 4)) after the last; Flatten; the dense layers."""
    paddings = getattr(config, "paddings", (0,) * len(config.n_channels))
    rows = list(zip(config.n_channels, config.kernel_sizes, config.strides, paddings))
    layers = []
    for index, (out_channels, kernel, stride, padding) in enumerate(rows):
        layers += [torch.nn.Conv2d(in_channels, out_channels, kernel, stride, padding), activation()]
        layers.append(torch.nn.MaxPool2d(2) if index < len(rows) - 1 else torch.nn.AdaptiveMaxPool2d((4, 4)))
        in_channels = out_channels
    layers.append(torch.nn.Flatten())
    layers += handout_dense(in_channels * 4 * 4, config.dense_hiddens, num_classes, activation, softmax)
    return torch.nn.Sequential(*layers)


def handout_mlp(in_size, config, num_classes, activation, softmax):
    width = in_size[0] * in_size[1] * in_size[2]
    return torch.nn.Sequential(torch.nn.Flatten(), *handout_dense(width, config.dense_hiddens, num_classes, activation, softmax))


def hyperparameters(layer):
    """What defines a conv, pool or linear layer, with sizes as pairs."""
    pair = torch.nn.modules.utils._pair
    sizes = ("kernel_size", "stride", "padding", "output_size")
    counts = ("in_channels", "out_channels", "in_features", "out_features")
    found = {name: pair(getattr(layer, name)) for name in sizes if hasattr(layer, name)}
    found.update({name: getattr(layer, name) for name in counts if hasattr(layer, name)})
    return found


def check_handout_twin(model, twin, shapes, num_classes):
    """Same layers in the same order and settings, same parameter count; then, weights
    copied, the float32 forward within 1e-5 and, in float64, the forward within 1e-12 and
    every gradient within 1e-10, for each input shape. (Gradients are compared in float64:
    through ReLU, max-pooling and Softmax these input gradients are so ill-conditioned
    that torch's own float32 and float64 gradients differ by O(1).)"""
    assert kinds(model) == [type(module).__name__ for module in twin]
    for layer, module in zip(model, twin, strict=True):
        assert hyperparameters(layer) == hyperparameters(module), (layer, module)
    assert count_params(model) == count_params(twin)
    copy_params(model, twin)
    for seed, shape in enumerate(shapes):
        x = random_tensor(shape, torch.float32, seed=seed)
        with torch.no_grad():
            assert_close("float32 output", model(x), twin(x), atol=1e-5)
    model.to(dtype=torch.float64)
    twin.to(torch.float64)
    for seed, shape in enumerate(shapes):
        x = random_tensor(shape, torch.float64, seed=seed)
        out = check_against_torch(model, twin, x, forward_atol=1e-12, grad_rtol=GRAD_RTOL[torch.float64])
        assert out.shape == (shape[0], num_classes)


BUILD_CNN_CASES = {
    # name: (config, in_size, num_classes, activation, softmax, a second image size)
    "IFT6390 default (SVHN, one output)": (IFT6390_DEFAULT, (3, 32, 32), 1, "relu", False, (3, 24, 40)),
    "IFT6390 deep": (IFT6390_DEEP, (1, 28, 28), 10, "relu", True, (1, 36, 36)),
    "IFT6390 shallow": (IFT6390_SHALLOW, (1, 28, 28), 10, "relu", True, (1, 33, 30)),
    "IFT3395 default": (IFT3395_DEFAULT, (1, 28, 28), 10, "relu", True, (1, 32, 32)),
    "IFT3395 strides and paddings": (IFT3395_STRIDED, (1, 28, 28), 10, "tanh", True, (1, 20, 24)),
}


@pytest.mark.parametrize("case", sorted(BUILD_CNN_CASES))
def test_build_cnn_is_the_handout_network(case):
    config, in_size, num_classes, activation, softmax, other_size = BUILD_CNN_CASES[case]
    torch.manual_seed(0)
    model = build("cnn", config, in_size, num_classes, activation, "softmax" if softmax else None)
    twin = handout_cnn(in_size[0], config, num_classes, TORCH_ACTIVATIONS[activation], softmax)
    check_handout_twin(model, twin, [(3, *in_size), (2, *other_size)], num_classes)


BUILD_MLP_CASES = {
    "IFT3395": (IFT3395_DEFAULT, (1, 28, 28), 10, "relu", True),
    "IFT6390": (IFT6390_DEFAULT, (3, 32, 32), 1, "tanh", False),
    "IFT3395 sigmoid": (NetworkConfiguration(dense_hiddens=(64, 32, 16)), (1, 12, 12), 10, "sigmoid", True),
}


@pytest.mark.parametrize("case", sorted(BUILD_MLP_CASES))
def test_build_mlp_is_the_handout_network(case):
    config, in_size, num_classes, activation, softmax = BUILD_MLP_CASES[case]
    torch.manual_seed(1)
    model = build("mlp", config, in_size, num_classes, activation, "softmax" if softmax else None)
    twin = handout_mlp(in_size, config, num_classes, TORCH_ACTIVATIONS[activation], softmax)
    check_handout_twin(model, twin, [(4, *in_size)], num_classes)


def test_network_configuration_defaults_and_paddings():
    config = NetworkConfiguration()
    assert config == ((16, 32, 48), (3, 3, 3), (1, 1, 1), (0, 0, 0), (256, 256))
    assert config._fields == ("n_channels", "kernel_sizes", "strides", "paddings", "dense_hiddens")
    assert NetworkConfiguration(n_channels=(8,), kernel_sizes=(5,), strides=(2,)).paddings == (0,)
    assert copy.deepcopy(config) == config and config._replace(strides=(2, 2, 2)).paddings == (0, 0, 0)
    # The two courses put different fields fourth: a fourth positional value is refused.
    with pytest.raises(TypeError):
        NetworkConfiguration((16,), (3,), (1,), (256,))


BUILD_ERRORS = [
    (dict(network_type="rnn"), "network_type"),
    (dict(config=NetworkConfiguration(kernel_sizes=(3, 3))), r"config.kernel_sizes must hold one entry per convolution \(3"),
    (dict(config=NetworkConfiguration(strides=1)), "config.strides"),
    (dict(config=NetworkConfiguration(paddings=(0, 0))), "config.paddings"),
    (dict(config=NetworkConfiguration(n_channels=())), "config.n_channels"),
    (dict(config=NetworkConfiguration(dense_hiddens=256)), "config.dense_hiddens"),
    (dict(in_size=(28, 28)), "in_size"),
    (dict(config=IFT6390_SHALLOW, in_size=(1, 20, 20)), r"in_size \(1, 20, 20\) shrinks to nothing"),
    (dict(num_classes=0), "out_classes"),
    (dict(activation="relu7"), "activation"),
]


@pytest.mark.parametrize("overrides, message", BUILD_ERRORS)
def test_build_invalid_arguments_name_the_argument(overrides, message):
    arguments = {**dict(network_type="cnn", config=NetworkConfiguration(), in_size=(1, 28, 28), num_classes=10), **overrides}
    with pytest.raises(ValueError, match=message):
        build(**arguments)


# Training after model.to(...) ------------------------------------------------------------------


def adam_steps(model, optimizer, x, y, steps=3):
    loss_fn = CrossEntropyLoss()
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        optimizer.step()


def test_optimizer_built_before_to_float64_trains_the_moved_model():
    torch.manual_seed(2)
    model = CNN((1, 8, 8), 3, [4], 1, [6], batchnorm=True)
    twin = copy.deepcopy(model).to(dtype=torch.float64)
    optimizer = Adam(model.params(), learn_rate=0.01)  # the notebooks' order: optimizer, then .to
    model.to(dtype=torch.float64)
    x, y = random_tensor((5, 1, 8, 8), torch.float64), torch.tensor([0, 1, 2, 1, 0])
    adam_steps(model, optimizer, x, y)
    adam_steps(twin, Adam(twin.params(), learn_rate=0.01), x, y)
    for (got, _), (want, _) in zip(model.params(), twin.params(), strict=True):
        assert got.dtype == torch.float64 and torch.equal(got, want)
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), twin.buffers(), strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_optimizer_built_before_to_cuda_trains_the_moved_model():
    torch.manual_seed(2)
    model = CNN((1, 8, 8), 3, [4], 1, [6], batchnorm=True)
    twin = copy.deepcopy(model)
    optimizer = Adam(model.params(), learn_rate=0.01)
    model.to(device="cuda")
    x, y = random_tensor((5, 1, 8, 8), torch.float32), torch.tensor([0, 1, 2, 1, 0])
    adam_steps(model, optimizer, x.cuda(), y.cuda())
    adam_steps(twin, Adam(twin.params(), learn_rate=0.01), x, y)
    for (got, _), (want, _) in zip(model.params(), twin.params(), strict=True):
        assert got.is_cuda
        assert_close("parameter", got.cpu(), want, atol=1e-5)


# The course's small frictions: conv_bias, block activations, per-layer MLP activations, torch.nn activations


def course_residual_block(in_channels, channels, kernel_sizes, batchnorm, dropout, activation):
    """CS236781's ResidualBlock written in torch.nn: every main conv has a bias, the 1x1
    shortcut none."""
    main, width = [], in_channels
    for index, (out_channels, kernel) in enumerate(zip(channels, kernel_sizes)):
        main.append(torch.nn.Conv2d(width, out_channels, kernel, padding=kernel // 2, bias=True))
        if index < len(channels) - 1:
            main += [torch.nn.Dropout2d(dropout)] if dropout > 0 else []
            main += [torch.nn.BatchNorm2d(out_channels)] if batchnorm else []
            main.append(activation())
        width = out_channels
    shortcut = [] if in_channels == channels[-1] else [torch.nn.Conv2d(in_channels, channels[-1], 1, bias=False)]
    return torch.nn.ModuleList([*main, *shortcut])


@pytest.mark.parametrize(
    "in_channels, channels, kernel_sizes, batchnorm",
    [(3, [6, 4] * 2, [3, 5] * 2, True), (4, [4, 8], [1, 3], False), (8, [4, 4, 8], [1, 3, 1], True)],
)
def test_residual_block_parameter_counts_match_the_course(in_channels, channels, kernel_sizes, batchnorm):
    course = course_residual_block(in_channels, channels, kernel_sizes, batchnorm, 0.2, torch.nn.ReLU)
    block = ResidualBlock(in_channels, channels, kernel_sizes, batchnorm=batchnorm, dropout=0.2)
    assert count_params(block) == count_params(course)
    torchvision_style = ResidualBlock(in_channels, channels, kernel_sizes, batchnorm=batchnorm, conv_bias=False)
    biases_before_batchnorm = sum(channels[:-1]) if batchnorm else 0
    assert count_params(torchvision_style) == count_params(course) - biases_before_batchnorm


def test_bottleneck_block_and_resnet_take_conv_bias():
    course = course_residual_block(16, [4, 4, 4, 16], [1, 3, 3, 1], True, 0.0, torch.nn.ReLU)
    assert count_params(ResidualBottleneckBlock(16, [4, 4], [3, 3], batchnorm=True)) == count_params(course)
    without = ResidualBottleneckBlock(16, [4, 4], [3, 3], batchnorm=True, conv_bias=False)
    assert count_params(without) == count_params(course) - 3 * 4
    plain = ResNet((3, 8, 8), 4, [8, 8], 2, [], batchnorm=True)
    lean = ResNet((3, 8, 8), 4, [8, 8], 2, [], batchnorm=True, conv_bias=False)
    assert count_params(plain) - count_params(lean) == 8
    with pytest.raises(ValueError, match="ResNet: conv_bias must be True or False"):
        ResNet((3, 8, 8), 4, [8], 1, [], conv_bias=1)


def test_blocks_take_activation_type_and_params_like_the_builders():
    block = ResidualBlock(3, [4, 4], [3, 3], activation_type="lrelu", activation_params=dict(alpha=0.3))
    activations = [layer for layer in block.sequence[0].main if isinstance(layer, LeakyReLU)] + [block.sequence[1]]
    assert len(activations) == 2 and all(layer.alpha == 0.3 for layer in activations)
    assert activations[0] is not activations[1]
    bottleneck = ResidualBottleneckBlock(8, [4], [3], activation_type="tanh")
    assert isinstance(bottleneck.sequence[1], Tanh)
    for bad, message in [
        (dict(activation="tanh", activation_type="relu"), "give activation or activation_type"),
        (dict(activation_type="relu", activation_params=dict(slope=2)), "activation_params .* do not fit 'relu'"),
        (dict(activation=Tanh(), activation_params=dict(alpha=1)), "apply to a named activation"),
        (dict(activation_type="swish"), "unknown activation 'swish'"),
    ]:
        with pytest.raises(ValueError, match=message):
            ResidualBlock(3, [4], [3], **bad)


def test_mlp_takes_one_activation_per_layer_as_a_list():
    model = MLP(4, 3, (5, 6), activation=["tanh", ReLU, "none"])
    kinds = [type(layer).__name__ for layer in model]
    assert kinds == ["Linear", "Tanh", "Linear", "ReLU", "Linear"]
    with_output = MLP(4, 3, (5,), activation=["relu", "softmax"])
    assert type(with_output[-1]).__name__ == "Softmax"
    with pytest.raises(ValueError, match=r"MLP: activation as a list holds one activation per layer.*expected 3 entries"):
        MLP(4, 3, (5, 6), activation=["tanh", "relu"])


def test_torch_activation_modules_become_nnlab_layers_with_the_same_settings():
    model = MLP(4, dims=[8, 8, 3], nonlins=[torch.nn.LeakyReLU(0.314), torch.nn.Tanh(), torch.nn.Softmax(dim=1)])
    twin = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LeakyReLU(0.314), torch.nn.Linear(8, 8), torch.nn.Tanh(),
                               torch.nn.Linear(8, 3), torch.nn.Softmax(dim=1))
    assert [type(layer).__name__ for layer in model] == [type(module).__name__ for module in twin]
    twin.load_state_dict({key.replace("sequence.", ""): value for key, value in model.state_dict().items()})
    x = torch.randn(6, 4)
    assert torch.allclose(model(x), twin(x), atol=1e-6, rtol=0)
    classic = MLP(4, 3, (5,), activation=torch.nn.LeakyReLU(negative_slope=0.2, inplace=True))
    assert classic[1].alpha == 0.2 and classic[1] is not MLP(4, 3, (5,))[1]
    randomized = MLP(4, dims=[3], nonlins=[torch.nn.RReLU(0.1, 0.2)])[1]
    assert type(randomized).__name__ == "RReLU" and (randomized.lower, randomized.upper) == (0.1, 0.2)
    with pytest.raises(ValueError, match=r"MLP: nonlins\[0\] is torch.nn.AdaptiveLogSoftmaxWithLoss, which has no nnlab"):
        MLP(4, dims=[3], nonlins=[torch.nn.AdaptiveLogSoftmaxWithLoss(8, 10, [4])])
