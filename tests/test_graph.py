"""Graph models (nnlab.graph): backward over a DAG against autograd on torch twins and
every grad_compare checker, weight sharing consistent with Sequential, the built-in
ResidualBlock rebuilt as a graph, a U-Net-style model that learns the digits, the
construction errors, summary() and the Graphviz output."""

import os
import re
import stat

import pytest
import torch
from reference import assert_close

from nnlab import graph
from nnlab.data import Batches, load_digits, split
from nnlab.grad_compare import (
    compare_layer_to_torch,
    compare_to_module,
    finite_difference_errors,
    gradcheck,
    gradient_errors,
)
from nnlab.graph import Add, Concat, Input, Model, Multiply, plot_graph, to_dot
from nnlab.layers import (
    LSTM,
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
    Sigmoid,
    Tanh,
    Upsample,
)
from nnlab.models import count_params
from nnlab.optimizers import Adam, VanillaSGD
from nnlab.training import LayerTrainer

F64 = torch.float64


def random(*shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# The DAG: two inputs, fan-out, Add, Multiply, Concat, a shared layer, two outputs --------


def build_dag():
    """``shared`` (one Linear) is called on both branches; h1, h2 and the sum each feed
    two consumers."""
    torch.manual_seed(0)
    layers = {"shared": Linear(4, 5), "project": Linear(3, 4), "head_1": Linear(10, 3), "head_2": Linear(5, 2)}
    a = Input((4,), name="a")
    b = Input((3,), name="b")
    h1 = Tanh()(layers["shared"](a, name="shared_a"), name="h1")
    h2 = Sigmoid()(layers["shared"](layers["project"](b, name="project"), name="shared_b"), name="h2")
    total = Add()(h1, h2, name="sum")
    product = Multiply()(h1, total, name="product")
    joined = Concat()(product, h2, name="joined")
    out_1 = layers["head_1"](joined, name="out_1")
    out_2 = layers["head_2"](total, name="out_2")
    model = Model([a, b], [out_1, out_2]).to(dtype=F64)
    return model, layers


class DagTwin(torch.nn.Module):
    """The DAG in torch.nn, weights copied; its parameters in the model's params() order."""

    def __init__(self, model, layers):
        super().__init__()
        role_of = {id(layer): role for role, layer in layers.items()}
        for layer in model.layers:
            if id(layer) in role_of:
                twin = torch.nn.Linear(layer.in_features, layer.out_features, dtype=F64)
                with torch.no_grad():
                    twin.weight.copy_(layer.weight)
                    twin.bias.copy_(layer.bias)
                self.add_module(role_of[id(layer)], twin)

    def forward(self, a, b):
        h1 = torch.tanh(self.shared(a))
        h2 = torch.sigmoid(self.shared(self.project(b)))
        total = h1 + h2
        joined = torch.cat([h1 * total, h2], dim=1)
        return self.head_1(joined), self.head_2(total)


def autograd_reference(twin, xs, douts):
    """Outputs and the gradients of every input and twin parameter, by autograd."""
    refs = [x.clone().requires_grad_(True) for x in xs]
    outputs = twin(*refs)
    used = [(out, dout) for out, dout in zip(outputs, douts) if dout is not None]
    wrt = refs + list(twin.parameters())
    grads = torch.autograd.grad([out for out, _ in used], wrt, [dout for _, dout in used], allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt)]
    return [out.detach() for out in outputs], grads


@pytest.mark.parametrize("unused_output", [None, 0, 1])
def test_dag_gradients_equal_autograd_on_a_torch_twin(unused_output):
    model, layers = build_dag()
    twin = DagTwin(model, layers)
    xs = (random(6, 4, seed=1), random(6, 3, seed=2))
    douts = [random(6, 3, seed=3), random(6, 2, seed=4)]
    if unused_output is not None:
        douts[unused_output] = None

    outputs = model(*xs)
    input_grads = model.backward(tuple(douts))
    ref_outputs, ref_grads = autograd_reference(twin, xs, douts)

    assert len(model.params()) == 8, "the shared Linear's weight and bias are listed once"
    for index, (out, ref) in enumerate(zip(outputs, ref_outputs)):
        assert_close(f"output {index}", out, ref, atol=1e-12)
    assert isinstance(input_grads, tuple) and len(input_grads) == 2
    for name, grad, ref in zip(["d a", "d b"], input_grads, ref_grads[:2]):
        assert_close(name, grad, ref, rtol=1e-10)
    for index, ((_, grad), ref) in enumerate(zip(model.params(), ref_grads[2:])):
        if ref.abs().max() == 0:
            assert torch.equal(grad, ref), f"param#{index + 1:02d} should have no gradient"
        else:
            assert_close(f"param#{index + 1:02d} gradient", grad, ref, rtol=1e-10)


def test_dag_passes_every_checker(capsys):
    model, layers = build_dag()
    xs = (random(3, 4, seed=5), random(3, 3, seed=6))
    assert max(gradient_errors(model, xs)) <= 1e-10
    diffs = compare_layer_to_torch(model, xs)
    assert len(diffs) == 2 + 8 and max(diffs) <= 1e-10
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("input#1  diff=") and printed[1].startswith("input#2  diff=")
    assert printed[2].startswith("param#01 diff=")
    assert max(finite_difference_errors(model, xs)) <= 1e-7
    assert gradcheck(model, xs)
    result = compare_to_module(model, DagTwin(model, layers), xs)
    assert result.pop("output") <= 1e-12
    assert list(result)[:3] == ["input#1", "input#2", "param#01"]
    assert max(result.values()) <= 1e-10


def test_gradcheck_catches_a_wrong_gradient_inside_the_graph(monkeypatch):
    model, _ = build_dag()
    monkeypatch.setattr(Multiply, "backward", lambda self, dout: (dout * self._xs[1], dout * self._xs[1]))
    with pytest.raises(AssertionError, match="gradcheck failed"):
        gradcheck(model, (random(2, 4, seed=7), random(2, 3, seed=8)))


# Weight sharing: the same as a Sequential that holds the layer twice ----------------------


def test_shared_layer_in_sequential_and_in_graph_gives_identical_gradients():
    torch.manual_seed(0)
    shared = Linear(4, 4).to(dtype=F64)
    sequential = Sequential(shared, Tanh(), shared)
    x = Input((4,))
    graph_model = Model(x, shared(Tanh()(shared(x))))
    x_value = random(5, 4, seed=9)
    dout = random(5, 4, seed=10)

    results = []
    for model in (sequential, graph_model):
        model.zero_grad()
        out = model(x_value)
        dx = model.backward(dout)
        results.append((out, dx, [grad.clone() for _, grad in model.params()]))
    (out_s, dx_s, grads_s), (out_g, dx_g, grads_g) = results
    assert torch.equal(out_s, out_g) and torch.equal(dx_s, dx_g)
    assert len(grads_s) == len(grads_g) == 2
    for grad_s, grad_g in zip(grads_s, grads_g):
        assert torch.equal(grad_s, grad_g)

    # and both equal autograd on the tied-weight function
    weight = shared.weight.clone().requires_grad_(True)
    bias = shared.bias.clone().requires_grad_(True)
    x_ref = x_value.clone().requires_grad_(True)
    out_ref = torch.tanh(x_ref @ weight.T + bias) @ weight.T + bias
    refs = torch.autograd.grad(out_ref, [x_ref, weight, bias], dout)
    for name, mine, ref in zip(["dx", "dweight", "dbias"], [dx_g] + grads_g, refs):
        assert_close(name, mine, ref, rtol=1e-10)


def test_shared_layer_gradients_are_skipped_for_an_unused_output():
    torch.manual_seed(0)
    x = Input((3,))
    used, unused = Linear(3, 2), Linear(3, 2)
    model = Model(x, [used(x), unused(x)])
    model(torch.randn(4, 3))
    dx = model.backward((torch.ones(4, 2), None))
    assert torch.equal(unused.grad("weight"), torch.zeros(2, 3))
    assert torch.allclose(dx, torch.ones(4, 2) @ used.weight)
    model(torch.randn(4, 3))
    assert torch.equal(model.backward((None, None)), torch.zeros(4, 3))


# The built-in ResidualBlock, rebuilt as a graph ---------------------------------------------


@pytest.mark.parametrize("batchnorm", [False, True])
def test_residual_block_rebuilt_as_a_graph_is_the_same(batchnorm):
    torch.manual_seed(0)
    block = ResidualBlock(2, [3, 4], [3, 1], batchnorm=batchnorm, conv_bias=False).to(dtype=F64)
    x = Input((2, 5, 5))
    main = Conv2d(2, 3, 3, padding=1, bias=not batchnorm)(x)
    if batchnorm:
        main = BatchNorm2d(3)(main)
    main = Conv2d(3, 4, 1)(ReLU()(main))
    skip = Conv2d(2, 4, 1, bias=False)(x)
    rebuilt = Model(x, ReLU()(Add()(main, skip))).to(dtype=F64)
    assert count_params(rebuilt) == count_params(block)
    with torch.no_grad():
        for (source, _), (target, _) in zip(block.params(), rebuilt.params()):
            assert source.shape == target.shape
            target.copy_(source)

    x_value = random(3, 2, 5, 5, seed=11)
    dout = random(3, 4, 5, 5, seed=12)
    out_block = block(x_value)
    dx_block = block.backward(dout)
    out_graph = rebuilt(x_value)
    dx_graph = rebuilt.backward(dout)
    assert torch.equal(out_block, out_graph)
    assert torch.equal(dx_block, dx_graph)
    for (_, grad_block), (_, grad_graph) in zip(block.params(), rebuilt.params()):
        assert torch.equal(grad_block, grad_graph)
    for buffer_block, buffer_graph in zip(block.buffers(), rebuilt.buffers()):
        assert torch.equal(buffer_block, buffer_graph)


# A U-Net-style model learns the digits ------------------------------------------------------


def build_unet():
    """Down (conv, pool, conv), up (upsample), the skip concatenated, then a classifier."""
    x = Input((1, 8, 8))
    skip = ReLU()(Conv2d(1, 8, 3, padding=1)(x))
    down = ReLU()(Conv2d(8, 16, 3, padding=1)(MaxPool2d(2)(skip)))
    joined = Concat()(Upsample(scale_factor=2)(down), skip)
    features = ReLU()(Conv2d(24, 8, 3, padding=1)(joined))
    return Model(x, Linear(8 * 4 * 4, 10)(Flatten()(MaxPool2d(2)(features))))


def test_unet_style_graph_learns_the_digits():
    torch.manual_seed(0)
    images, labels = load_digits()
    x_train, y_train, x_test, y_test = split(images, labels, 0.8, seed=0)
    model = build_unet()
    trainer = LayerTrainer(model, CrossEntropyLoss(), Adam(model.params(), learn_rate=1e-2))
    result = trainer.fit(
        Batches(x_train, y_train, 32, shuffle=True), Batches(x_test, y_test, 256), 2, max_batches=8, verbose=False
    )
    # Measured: train loss 2.27 -> 1.86, test loss 2.16 -> 1.28, test accuracy 27% -> 64%.
    assert result.train_loss[1] < 0.9 * result.train_loss[0]
    assert result.test_loss[1] < 0.8 * result.test_loss[0]
    assert result.test_acc[1] > 40


def test_unet_checks_against_autograd_and_state_dict_round_trips():
    torch.manual_seed(0)
    model = build_unet()
    x = torch.rand(2, 1, 8, 8)
    assert max(gradient_errors(model, x)) <= 1e-5
    state = model.state_dict()
    assert list(state)[:2] == ["0.weight", "0.bias"]
    other = build_unet()
    other.load_state_dict(state)
    assert torch.equal(other(x), model(x))


# A Layer like any other: nesting, modes, dtype, optimizers ---------------------------------


def test_model_nests_in_sequential_and_in_another_graph():
    torch.manual_seed(0)
    x = Input((3,))
    inner = Model(x, Add()(Linear(3, 3)(x), x))
    outer_input = Input((3,))
    # the inner model called twice: a shared sub-graph
    outer = Model(outer_input, Tanh()(inner(Tanh()(inner(outer_input)))))
    chained = Sequential(Linear(4, 3), outer, Linear(3, 2)).to(dtype=F64)
    assert max(gradient_errors(chained, random(5, 4, seed=13))) <= 1e-10
    assert gradcheck(chained, random(2, 4, seed=14))


def test_train_and_eval_reach_every_layer_and_dropout_follows():
    torch.manual_seed(0)
    x = Input((6,))
    model = Model(x, Dropout(0.5)(Linear(6, 6)(x)))
    assert all(layer.training for layer in model.layers)
    model.eval()
    assert not any(layer.training for layer in model.layers)
    x_value = torch.randn(4, 6)
    assert torch.equal(model(x_value), model(x_value))
    model.train()
    assert max(gradient_errors(model, x_value)) <= 1e-5


def test_an_optimizer_step_updates_every_parameter_once():
    torch.manual_seed(0)
    model, _ = build_dag()
    before = [param.clone() for param, _ in model.params()]
    optimizer = VanillaSGD(model.params(), learn_rate=0.1, reg=0.0)
    optimizer.zero_grad()
    model(random(4, 4, seed=15), random(4, 3, seed=16))
    model.backward((random(4, 3, seed=17), random(4, 2, seed=18)))
    optimizer.step()
    for (param, grad), old in zip(model.params(), before):
        assert torch.allclose(param, old - 0.1 * grad, rtol=0, atol=1e-15)


def test_heads_inside_a_graph_unpack_into_nodes():
    torch.manual_seed(0)
    x = Input((4,))
    digits, parity = Heads(Linear(4, 3), Linear(4, 2))(x)
    assert digits.shape == (None, 3) and parity.shape == (None, 2)
    model = Model(x, Concat()(Tanh()(digits), parity)).to(dtype=F64)
    assert max(gradient_errors(model, random(5, 4, seed=19))) <= 1e-10
    only_one = Model(x, Tanh()(digits)).to(dtype=F64)
    assert max(gradient_errors(only_one, random(5, 4, seed=20))) <= 1e-10


def test_keyword_arguments_reach_every_layer():
    x = Input((4,))
    model = Model(x, Linear(4, 3)(x))
    loss = Sequential(model, CrossEntropyLoss())(torch.randn(5, 4), y=torch.tensor([0, 1, 2, 0, 1]))
    assert loss.dim() == 0


# How a call on nodes is recognised ----------------------------------------------------------


def test_calling_a_layer_on_a_node_gives_a_node_and_leaves_the_layer_untouched():
    torch.manual_seed(0)
    norm = BatchNorm2d(2)
    x = Input((2, 3, 3))
    rng = torch.get_rng_state()
    node = Dropout(0.5)(norm(x))
    assert isinstance(node, graph.Node) and node.shape == (None, 2, 3, 3)
    assert torch.equal(torch.get_rng_state(), rng), "the dry run drew from torch's RNG"
    assert torch.equal(norm.running_mean, torch.zeros(2)) and int(norm.num_batches_tracked) == 0
    with pytest.raises(RuntimeError, match="before forward"):
        norm.backward(torch.zeros(1, 2, 3, 3))


def test_node_names_default_like_keras_and_can_be_chosen():
    x = Input((3,))
    first = Linear(3, 3)(x)
    second = Linear(3, 3)(first)
    named = Linear(3, 3)(second, name="classifier")
    assert re.fullmatch(r"linear(_\d+)?", first.name)
    assert second.name != first.name and second.name.startswith("linear")
    assert named.name == "classifier"
    assert repr(named) == f"<Node 'classifier': Linear(3, 3) of '{second.name}', shape (None, 3)>"


# Errors at construction, naming the nodes ---------------------------------------------------


def test_error_cycle():
    x = Input((3,), name="x")
    first = Tanh()(x, name="first")
    second = Tanh()(first, name="second")
    third = Tanh()(second, name="third")
    first.parents = (third,)  # a feedback edge: first <- third <- second <- first
    with pytest.raises(ValueError, match="cycle: 'first' -> 'second' -> 'third' -> 'first'"):
        Model(x, third)


def test_error_output_does_not_depend_on_the_inputs():
    x = Input((3,), name="x")
    other = Input((3,), name="other")
    expected = r"output 'from_other' does not depend on the model's inputs \['x'\].*\['other'\]"
    with pytest.raises(ValueError, match=expected):
        Model(x, [Tanh()(x), Tanh()(other, name="from_other")])


def test_error_input_reaching_no_output():
    x = Input((3,), name="x")
    unused = Input((3,), name="unused")
    with pytest.raises(ValueError, match=r"input \['unused'\] reaches no output \['out'\]"):
        Model([x, unused], Tanh()(x, name="out"))


def test_error_shape_mismatch_found_by_the_dry_run():
    x = Input((4,), name="x")
    with pytest.raises(ValueError, match=r"node 'bad': Linear\(5, 3\) cannot take 'x' \(None, 4\).*\(\*, 5\)"):
        Linear(5, 3)(x, name="bad")
    image = Input((3, 8, 8), name="image")
    small = MaxPool2d(2)(image, name="small")
    expected = r"node 'join': Concat\(dim=1\) cannot take 'image' \(None, 3, 8, 8\), 'small' \(None, 3, 4, 4\)"
    with pytest.raises(ValueError, match=expected):
        Concat()(image, small, name="join")
    with pytest.raises(ValueError, match=r"node 'sum': Add cannot take"):
        Add()(image, small, name="sum")


def test_shapes_left_open_are_checked_when_the_model_runs():
    x = Input()
    model = Model(x, Linear(5, 3)(x))
    assert model.nodes[-1].shape is None
    with pytest.raises(ValueError, match=r"Model node 'linear.*' \(Linear\).*expected input of shape \(\*, 5\)"):
        model(torch.zeros(2, 4))


def test_other_construction_errors():
    x = Input((3,), name="x")
    hidden = Tanh()(x, name="hidden")
    with pytest.raises(ValueError, match="input 'hidden' must be an Input node"):
        Model(hidden, Tanh()(hidden))
    with pytest.raises(TypeError, match=r"outputs\[1\] must be a graph node.*got Tensor"):
        Model(x, [hidden, torch.zeros(1)])
    with pytest.raises(ValueError, match=r"inputs \['x'\] are given more than once"):
        Model([x, x], hidden)
    with pytest.raises(ValueError, match=r"several nodes are named \['hidden'\]"):
        Model(x, Tanh()(hidden, name="hidden"))
    with pytest.raises(TypeError, match=r"keyword arguments \['y'\] are given when the model runs"):
        Linear(3, 3)(x, y=1)
    with pytest.raises(TypeError, match="argument 1 is a Tensor, not a node"):
        Add()(x, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="Input: shape must be a tuple of ints"):
        Input((3, 0))
    with pytest.raises(TypeError, match="node 'hidden' holds one tensor"):
        hidden[0]


def test_errors_when_the_model_runs():
    x = Input((3,), name="x")
    y = Input((2,), name="y")
    model = Model([x, y], Concat()(x, y))
    with pytest.raises(TypeError, match=r"expected 2 input\(s\) \['x', 'y'\], got 1"):
        model(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"input 'y' expects shape \(None, 2\), got \(4, 5\)"):
        model(torch.zeros(4, 3), torch.zeros(4, 5))
    with pytest.raises(RuntimeError, match="backward\\(\\) called before forward"):
        model.backward(torch.zeros(4, 5))
    model(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"expected dout of shape \(4, 5\)"):
        model.backward(torch.zeros(4, 4))


def test_a_multi_input_layer_must_return_a_gradient_per_input():
    class BadAdd(Add):
        def backward(self, dout):
            self.start_backward(dout)
            return dout

    x = Input((3,), name="x")
    model = Model(x, BadAdd()(x, x, name="bad"))
    model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="node 'bad'.*BadAdd.backward returned one gradient, expected a tuple of 2"):
        model.backward(torch.ones(2, 3))


# summary() and Graphviz -----------------------------------------------------------------------


def test_summary_table_and_total():
    model, _ = build_dag()
    lines = []
    model.summary(print_fn=lines.append)
    assert lines[0] == "Model: 2 inputs, 2 outputs, 12 nodes"
    assert lines[1].split() == ["Node", "Layer", "Output", "shape", "Params", "Inputs"]
    rows = {line.split()[0]: line for line in lines[3:-2]}
    assert rows["shared_a"].split()[1:] == ["Linear", "(None,", "5)", "25", "a"]
    assert "shared with shared_a" in rows["shared_b"] and rows["shared_b"].endswith("project")
    assert rows["joined"].split()[1:] == ["Concat", "(None,", "10)", "0", "product,", "h2"]
    assert lines[-2] == f"Total parameters: {count_params(model):,}" == "Total parameters: 86"
    assert lines[-1] == "Outputs: out_1, out_2"


def test_a_recurrent_layers_final_state_has_none_where_its_batch_is():
    # torch's h_n is (num_layers * directions, N, H) whatever batch_first says.
    x = Input((5, 3))
    out, (h_n, c_n) = LSTM(3, 4, num_layers=2, batch_first=True, bidirectional=True)(x, name="lstm")
    assert out.shape == (None, 5, 8)
    assert h_n.shape == c_n.shape == (4, None, 4)
    read_out = Linear(4, 2)(h_n)
    assert read_out.shape == (4, None, 2)
    model = Model(x, read_out)
    lines = []
    model.summary(print_fn=lines.append)
    row = next(line for line in lines if line.startswith("lstm "))
    assert "[(None, 5, 8), [(4, None, 4), (4, None, 4)]]" in row
    assert model(torch.randn(7, 5, 3)).shape == (4, 7, 2)


def test_dot_text_and_plot_graph(tmp_path, monkeypatch):
    model, _ = build_dag()
    text = to_dot(model)
    assert text.startswith("digraph Model {") and text.rstrip().endswith("}")
    assert '"a" [label="a\\nInput\\n(None, 4)", shape=ellipse];' in text
    assert '"out_1" [label="out_1\\nLinear(10, 3)\\n(None, 3)", peripheries=2];' in text
    assert '"product" -> "joined" [label="0"];' in text and '"h2" -> "joined" [label="1"];' in text
    assert "(shared with shared_a)" in text
    plot_graph(model, tmp_path / "dag.dot")
    assert (tmp_path / "dag.dot").read_text() == text

    monkeypatch.setattr(graph.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="needs Graphviz's dot program"):
        plot_graph(model, tmp_path / "dag.png")
    with pytest.raises(ValueError, match="has no extension"):
        plot_graph(model, tmp_path / "dag")

    # a stand-in for Graphviz's dot that records its arguments and input
    fake = tmp_path / "dot"
    fake.write_text('#!/bin/sh\necho "$@" > "$0.args"\ncat > "$3"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(graph.shutil, "which", lambda name: os.fspath(fake))
    plot_graph(model, tmp_path / "dag.svg")
    assert (tmp_path / "dot.args").read_text().split() == ["-Tsvg", "-o", os.fspath(tmp_path / "dag.svg")]
    assert (tmp_path / "dag.svg").read_text() == text


def test_repr_lists_the_nodes():
    x = Input((3,), name="x")
    model = Model(x, Add()(Linear(3, 3)(x, name="dense"), x, name="skip"))
    assert repr(model) == (
        "Model(inputs=['x'], outputs=['skip'])\n\tdense = Linear(3, 3)(x)\n\tskip = Add(dense, x)"
    )


def test_symbolic_marker_does_not_import_graph():
    import nnlab.layers.base as base

    source = open(base.__file__, encoding="utf-8").read()
    assert "graph" not in re.findall(r"^(?:from|import) .*", source, flags=re.M).__str__()
    assert issubclass(graph.Node, base.Symbolic)
    assert isinstance(Layer.__call__(Tanh(), Input((2,))), graph.Node)


def test_without_input_grad_the_layers_reading_inputs_skip_it_and_parameter_gradients_stay():
    model, layers = build_dag()
    xs = (random(6, 4, seed=1), random(6, 3, seed=2))
    douts = (random(6, 3, seed=3), random(6, 2, seed=4))

    def gradients(flag):
        model.zero_grad()
        model(*xs)
        model.requires_input_grad(flag)
        dxs = model.backward(douts)
        flags = {role: layer.needs_input_grad for role, layer in layers.items()}
        model.requires_input_grad(True)
        return dxs, [grad.clone() for _, grad in model.params()], flags

    dxs, grads, _ = gradients(True)
    assert len(dxs) == 2
    skipped, grads_skipped, flags = gradients(False)
    assert skipped is None
    # "project" reads only the input b; "shared" reads a and project's output, so it needs dx.
    assert flags == {"shared": True, "project": False, "head_1": True, "head_2": True}
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_skipped))


def test_a_layer_inside_a_sequential_on_the_input_and_at_another_node_keeps_its_input_gradient():
    """requires_input_grad(False) (what LayerTrainer sets) must not reach a layer that is
    also called where its input gradient is needed: the parameter gradients stay autograd's."""
    torch.manual_seed(0)
    shared = Linear(3, 3).to(dtype=F64)
    x = Input((3,))
    model = Model(x, shared(Sequential(shared, Tanh())(x)))
    model.requires_input_grad(False)
    x_value, dout = random(4, 3, seed=1), random(4, 3, seed=2)
    model(x_value)
    assert model.backward(dout) is None

    weight = shared.weight.clone().requires_grad_(True)
    bias = shared.bias.clone().requires_grad_(True)
    out_ref = torch.tanh(x_value @ weight.T + bias) @ weight.T + bias
    refs = torch.autograd.grad(out_ref, [weight, bias], dout)
    assert_close("dweight", shared.grad("weight"), refs[0], rtol=1e-10)
    assert_close("dbias", shared.grad("bias"), refs[1], rtol=1e-10)


class ForgetsReturn(Layer):
    """The identity whose backward forgets its ``return`` (a common slip)."""

    def forward(self, x, **kw):
        return self.finish_forward(x.clone())

    def backward(self, dout):
        self.start_backward(dout)


def test_a_backward_that_returns_nothing_is_an_error_naming_the_node():
    x = Input((3,))
    model = Model(x, Linear(3, 2)(ForgetsReturn()(Linear(3, 3)(x)), name="head"))
    model(torch.randn(4, 3))
    with pytest.raises(RuntimeError, match=r"forgetsreturn.*ForgetsReturn.*returned None"):
        model.backward(torch.ones(4, 2))


class Lookup(Layer):
    """Rows of a table picked by integer ids: no gradient w.r.t. the ids, by design."""

    has_input_gradient = False

    def __init__(self):
        super().__init__()
        self.add_param("table", torch.randn(5, 3, dtype=F64))

    def forward(self, ids, **kw):
        self._ids = ids
        return self.finish_forward(self.table[ids])

    def backward(self, dout):
        self.start_backward(dout)
        self._grads["table"].index_add_(0, self._ids, dout)


def test_a_layer_without_an_input_gradient_may_return_none_in_a_graph_and_in_a_sequential():
    torch.manual_seed(0)
    ids = torch.tensor([0, 3, 3, 1])
    dout = random(4, 2, seed=1)
    for build in (lambda lookup, head: Sequential(lookup, head), lambda lookup, head: Model(x := Input(), head(lookup(x)))):
        lookup, head = Lookup(), Linear(3, 2).to(dtype=F64)
        model = build(lookup, head)
        model(ids)
        assert model.backward(dout) is None
        expected = torch.zeros(5, 3, dtype=F64).index_add_(0, ids, dout @ head.weight)
        assert_close("table gradient", lookup.grad("table"), expected, rtol=1e-12)


# Sequence layers in a graph ----------------------------------------------------------------


def test_integer_ids_and_an_lstms_nested_output_through_a_graph_match_torch():
    """Input(dtype=torch.long) feeds the dry runs integer ids (an Embedding refuses floats);
    the LSTM's (out, (h_n, c_n)) output is indexed like a tuple, and the gradients of the
    embedding table, the LSTM and the read-out equal autograd's through torch's modules."""
    from nnlab.layers import LSTM, Embedding

    torch.manual_seed(0)
    ids = Input(shape=(6,), dtype=torch.long)
    embedding, lstm, readout = Embedding(9, 4), LSTM(4, 5, batch_first=True), Linear(5, 9)
    out = lstm(embedding(ids))
    assert out[0].shape == (None, 6, 5) and out[0].dtype == torch.float32
    model = Model(ids, readout(out[0]))
    model.to(dtype=torch.float64)
    twin_embedding = torch.nn.Embedding(9, 4).double()
    twin_lstm = torch.nn.LSTM(4, 5, batch_first=True).double()
    twin_readout = torch.nn.Linear(5, 9).double()
    for layer, twin in ((embedding, twin_embedding), (lstm, twin_lstm), (readout, twin_readout)):
        twin.load_state_dict(layer.state_dict())
    x = torch.randint(0, 9, (3, 6))
    scores = model(x)
    dscores = torch.randn(scores.shape, dtype=torch.float64)
    assert model.backward(dscores) is None
    reference = twin_readout(twin_lstm(twin_embedding(x))[0])
    assert torch.allclose(scores, reference, atol=1e-12)
    reference.backward(dscores)
    twins = list(twin_embedding.parameters()) + list(twin_lstm.parameters()) + list(twin_readout.parameters())
    for (_, grad), twin in zip(model.params(), twins, strict=True):
        assert torch.allclose(grad, twin.grad, rtol=1e-10, atol=1e-12)


def test_a_float_input_to_an_embedding_is_refused_at_the_node_naming_it():
    from nnlab.layers import Embedding

    with pytest.raises(ValueError, match=r"node 'ids_node': Embedding\(9, 4\) cannot take .*integer ids"):
        Embedding(9, 4)(Input(shape=(6,)), name="ids_node")
    with pytest.raises(TypeError, match="Input: dtype must be a torch.dtype"):
        Input(shape=(6,), dtype="long")
