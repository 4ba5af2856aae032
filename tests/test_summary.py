"""nnlab.summary: output shapes and parameter counts against the torch twin of the model
(forward hooks on its leaf modules; torch's own parameter count), shapes worked out by
hand for graph models, shared parameters counted once, the model left untouched."""

import pytest
import torch

import nnlab
from nnlab.graph import Add, Concat, Input, Model
from nnlab.layers import BatchNorm1d, Conv2d, Flatten, Linear, ReLU, Sequential, Tanh
from nnlab.models import CNN, MLP, ResNet
from nnlab.grad_compare import torch_twin


def twin_leaf_shapes(model, input_shape, batch_size):
    """Output shape of every leaf module of the torch twin, in module order, from one
    forward pass on zeros, and its parameter count."""
    twin = torch_twin(model).eval()
    shapes = {}
    # The twin of a Residual without a shortcut layer holds an Identity for it.
    leaves = [
        (name, module)
        for name, module in twin.named_modules()
        if not list(module.children()) and not isinstance(module, torch.nn.Identity)
    ]
    def record(name):
        def hook(module, args, out):
            shapes.setdefault(name, tuple(out.shape))

        return hook

    for name, module in leaves:
        module.register_forward_hook(record(name))
    with torch.no_grad():
        twin(torch.zeros(batch_size, *input_shape))
    return [shapes.get(name) for name, _ in leaves], sum(p.numel() for p in twin.parameters())


MODELS = [
    ("mlp", lambda: MLP(12, 3, (7, 5)), (12,)),
    ("mlp-image", lambda: MLP((1, 4, 4), 3, (6,)), (1, 4, 4)),
    ("cnn", lambda: CNN((3, 12, 12), 5, [4, 6, 8], 2, [10], batchnorm=True), (3, 12, 12)),
    ("resnet", lambda: ResNet((3, 8, 8), 4, [8, 8, 16], 2, [6], batchnorm=True), (3, 8, 8)),
    ("resnet-bottleneck", lambda: ResNet((8, 8, 8), 4, [4, 4, 8], 3, [], bottleneck=True), (8, 8, 8)),
]


@pytest.mark.parametrize("make, input_shape", [(m, s) for _, m, s in MODELS], ids=[i for i, _, _ in MODELS])
def test_shapes_and_counts_equal_the_torch_twins(make, input_shape):
    torch.manual_seed(0)
    model = make()
    result = nnlab.summary(model, input_shape, batch_size=3, print_fn=None)
    leaf_rows = [row for row in result.rows if not row.layer.named_children()]
    expected_shapes, expected_total = twin_leaf_shapes(model, input_shape, 3)
    assert [row.output_shape for row in leaf_rows] == expected_shapes
    assert result.total_params == expected_total == sum(row.num_params for row in result.rows)
    assert result.rows[0].name == "" and result.rows[0].layer is model
    assert result.rows[0].output_shape == expected_shapes[-1]


def test_rows_name_the_state_dict_prefixes_and_own_parameters():
    torch.manual_seed(0)
    model = MLP(4, 3, (5,))
    rows = nnlab.summary(model, (4,), print_fn=None).rows
    assert [row.name for row in rows] == ["", "sequence", "sequence.0", "sequence.1", "sequence.2"]
    assert [row.num_params for row in rows] == [0, 0, 4 * 5 + 5, 0, 5 * 3 + 3]
    assert [row.output_shape for row in rows] == [(2, 3), (2, 3), (2, 5), (2, 5), (2, 3)]
    for row in rows[2:]:
        assert row.layer is model.sequence[int(row.name.rsplit(".", 1)[1])]


def test_shared_layer_is_counted_once_and_marked():
    shared = Linear(3, 3)
    model = Sequential(shared, Tanh(), shared)
    printed = []
    result = nnlab.summary(model, (3,), print_fn=printed.append)
    assert [row.num_params for row in result.rows] == [0, 12, 0, 0]
    assert result.total_params == 12
    assert "2 (Linear, shared with 0)" in printed[0]


def test_graph_model_with_several_inputs_and_a_shared_layer():
    a, b = Input(4), Input(4)
    encoder = Linear(4, 6)
    merged = Add()(encoder(a), encoder(b))
    model = Model([a, b], Concat()(merged, a))
    result = nnlab.summary(model, [(4,), (4,)], batch_size=5, print_fn=None)
    assert result.total_params == 4 * 6 + 6
    assert {row.name: row.output_shape for row in result.rows} == {
        "": (5, 10), "0": (5, 6), "1": (5, 6), "2": (5, 10)
    }


def test_graph_model_of_images():
    x = Input((1, 8, 8))
    h = ReLU()(Conv2d(1, 4, 3, padding=1)(x))
    out = Linear(5 * 8 * 8, 2)(Flatten()(Concat()(h, x)))
    result = nnlab.summary(Model(x, out), (1, 8, 8), print_fn=None)
    assert [row.output_shape for row in result.rows] == [(2, 2), (2, 4, 8, 8), (2, 4, 8, 8), (2, 5, 8, 8), (2, 320), (2, 2)]
    assert result.total_params == (1 * 9 * 4 + 4) + (320 * 2 + 2)


def test_the_model_is_left_untouched():
    torch.manual_seed(0)
    model = Sequential(Linear(3, 4), BatchNorm1d(4), ReLU())
    before = model.state_dict()
    result = nnlab.summary(model, (3,), dtype=torch.float64, print_fn=None)
    assert model.training and all(row.layer.training for row in result.rows)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]) and value.dtype == before[key].dtype, key
    assert result.total_buffer_elements == 4 + 4 + 1
    assert result.dtype == torch.float64


def test_printed_table():
    printed = []
    result = nnlab.summary(MLP(4, 3, (5,)), 4, print_fn=printed.append)
    table = printed[0]
    assert table == str(result)
    assert "    0 (Linear)" in table and "(2, 5)" in table
    assert "Total params: 43" in table
    assert "Input: (4,), float32" in table
    assert repr(result) == "Summary(total_params=43, rows=5)"


def test_summary_prints_by_default(capsys):
    nnlab.summary(Sequential(Linear(2, 2)), (2,))
    assert "Total params: 6" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (dict(input_shape="4"), "summary: input_shape must be the shape of one sample"),
        (dict(input_shape=(4,), batch_size=0), "summary: batch_size must be an int >= 1"),
        (dict(input_shape=(5,)), r"summary: Sequential cannot take zeros of shape \(2, 5\)"),
        (dict(input_shape=(4,), dtype="float32"), "summary: dtype must be a torch.dtype"),
    ],
)
def test_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        nnlab.summary(Sequential(Linear(4, 2)), print_fn=None, **args)
    with pytest.raises(TypeError, match="summary: model must be an nnlab Layer"):
        nnlab.summary(torch.nn.Linear(4, 2), (4,))
