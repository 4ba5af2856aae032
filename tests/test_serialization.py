"""nnlab.save / nnlab.load: round trips in a fresh Python process (the same outputs, bit
for bit, and the same training modes), weight sharing and dtypes kept, files that would
run code or were changed refused without running anything, models that cannot be
described refused at save."""

import fractions
import io
import json
import math
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

import nnlab
from nnlab.checkpoints import content_digest
from nnlab.classifier import BinaryClassifier
from nnlab.graph import Add, Concat, Input, Model
from nnlab.layers import BatchNorm1d, Conv2d, Layer, LayerNorm, LeakyReLU, Linear, ReLU, Sequential, Tanh, Upsample
from nnlab.models import CNN, MLP, ResNet
from nnlab.serialization import ModelFileError


def graph_model():
    """Two inputs, a layer shared by two nodes, a merge and a concatenation."""
    a, b = Input(6, name="left"), Input(6, name="right")
    encoder = Linear(6, 5)
    merged = Add()(encoder(a), Tanh()(encoder(b)))
    return Model([a, b], Linear(11, 3)(Concat()(merged, a)))


def trained_a_little(model, x):
    """One train-mode forward pass, so BatchNorm's running statistics are not the defaults."""
    model.train()
    model(x)
    return model


def models():
    """name -> (model, inputs), built from a fixed seed."""
    torch.manual_seed(0)
    images = torch.randn(4, 3, 8, 8)
    return {
        "mlp": (MLP(10, 3, (7, 5), activation="tanh"), (torch.randn(4, 10),)),
        "cnn": (trained_a_little(CNN((3, 8, 8), 4, [4, 6], 1, [8], batchnorm=True), images).eval(), (images,)),
        "resnet": (trained_a_little(ResNet((3, 8, 8), 4, [8, 8], 2, [6], batchnorm=True), images).eval(), (images,)),
        "graph": (graph_model(), (torch.randn(4, 6), torch.randn(4, 6))),
    }


FRESH_PROCESS = textwrap.dedent(
    """
    import sys, torch, nnlab
    torch.set_num_threads(1)  # as in the test process, so that sums are taken in the same order
    folder = sys.argv[1]
    cases = torch.load(folder + "/inputs.pt")
    results = {}
    for name, inputs in cases.items():
        model = nnlab.load(f"{folder}/{name}.nnlab")
        results[name] = (type(model).__name__, model(*inputs), [layer.training for layer in [model]])
    torch.save(results, folder + "/outputs.pt")
    """
)


def test_round_trips_in_a_fresh_process(tmp_path):
    cases = models()
    expected = {}
    for name, (model, inputs) in cases.items():
        nnlab.save(model, tmp_path / f"{name}.nnlab")
        expected[name] = model(*inputs)
    torch.save({name: inputs for name, (_, inputs) in cases.items()}, tmp_path / "inputs.pt")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(tmp_path)], check=True, env=env, cwd=tmp_path)
    results = torch.load(tmp_path / "outputs.pt")
    for name, (model, _) in cases.items():
        kind, output, training = results[name]
        assert kind == type(model).__name__
        assert torch.equal(output, expected[name]), name
        assert training == [model.training], name


def round_trip(model, tmp_path, **load_args):
    path = tmp_path / "model.nnlab"
    nnlab.save(model, path)
    return nnlab.load(path, **load_args)


def test_state_modes_and_structure_are_kept(tmp_path):
    torch.manual_seed(0)
    model = trained_a_little(Sequential(Linear(3, 4), BatchNorm1d(4), ReLU(), Linear(4, 2)), torch.randn(5, 3))
    model[1].eval()  # one layer in another mode than the rest
    loaded = round_trip(model, tmp_path)
    assert [type(layer) for layer in loaded] == [type(layer) for layer in model]
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert [layer.training for layer in loaded] == [True, False, True, True]


def test_shared_layers_stay_shared(tmp_path):
    shared = Linear(3, 3)
    loaded = round_trip(Sequential(shared, Tanh(), shared), tmp_path)
    assert loaded[0] is loaded[2]
    graph = round_trip(graph_model(), tmp_path)
    assert len(graph.layers) == 5 and len(graph.nodes) == 8


def test_float64_model_and_map_location(tmp_path):
    torch.manual_seed(0)
    model = MLP(4, 2, (3,)).to(torch.float64)
    loaded = round_trip(model, tmp_path, map_location="cpu")
    assert all(param.dtype == torch.float64 for param in loaded.parameters())
    x = torch.randn(2, 4, dtype=torch.float64)
    assert torch.equal(loaded(x), model(x))


def test_arguments_of_every_kind(tmp_path):
    """Keyword arguments, tuples against lists, a layer class, a layer instance, dicts:
    the rebuilt layers got the same arguments."""
    model = Sequential(
        CNN((1, 10, 10), 3, [2, 3], 1, [], conv_params=dict(kernel_size=[3, (3, 1)], padding=1), activation=LeakyReLU),
        LeakyReLU(alpha=0.25),
        ResNet((3, 4, 4), 2, [4], 1, [], activation_type="lrelu", activation_params=dict(negative_slope=0.1)),
    )
    loaded = round_trip(model, tmp_path)
    for original, rebuilt in zip(model, loaded):
        assert rebuilt.constructor_call() == original.constructor_call()
    cnn_args = loaded[0].constructor_call()[1]
    assert cnn_args["conv_params"]["kernel_size"] == [3, (3, 1)] and cnn_args["activation"] is LeakyReLU


def test_torch_factory_arguments(tmp_path):
    """A dtype and a device given to a constructor, as torch.nn's take them."""
    model = Sequential(Linear(3, 4), LayerNorm(4, device=torch.device("cpu"), dtype=torch.float32))
    loaded = round_trip(model, tmp_path)
    assert loaded[1].constructor_call() == ((4,), {"device": torch.device("cpu"), "dtype": torch.float32})
    x = torch.randn(2, 3)
    assert torch.equal(loaded(x), model(x))


def test_every_kind_of_argument_value_survives_json():
    """The argument codec on its own: what is written as JSON and read back is the value
    given, with tuples and lists, non-finite numbers and tensors kept apart."""
    from nnlab.serialization import _Builder, _Describer

    tensor = torch.arange(6.0).reshape(2, 3)
    values = [
        None, True, 3, -2.5, float("inf"), "relu", [1, (2, 3)], (1, [2]), {"k": (3, 4), 5: None},
        torch.float64, torch.device("cpu"), Tanh, tensor,
    ]
    describer = _Describer()
    encoded = json.loads(json.dumps([describer.value(value, "test") for value in values], allow_nan=False))
    builder = _Builder({"layers": [], "nodes": [], "model": 0, "training": []}, describer.tensors, "test")
    decoded = [builder.value(item) for item in encoded]
    for value, back in zip(values, decoded):
        if isinstance(value, torch.Tensor):
            assert torch.equal(back, value) and back is not value
        else:
            assert back == value and type(back) is type(value), value
    assert math.isnan(builder.value(json.loads(json.dumps(describer.value(float("nan"), "test")))))


def test_binary_classifier_keeps_its_current_threshold(tmp_path):
    classifier = BinaryClassifier(MLP(2, 2, (3,)))
    classifier.threshold = 0.3
    assert round_trip(classifier, tmp_path).threshold == 0.3


def test_save_and_load_leave_the_random_generator_alone(tmp_path):
    model = MLP(4, 2, (8,))
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    round_trip(model, tmp_path)
    assert torch.equal(torch.rand(3), expected)


# Files that must be refused --------------------------------------------------------------


class RunsCode:
    """A pickled object whose unpickling would create the file ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_file_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.nnlab"
    with open(path, "wb") as file:
        torch.save({"format": "nnlab-model-1", "payload": RunsCode(str(marker))}, file)
    with open(tmp_path / "plain.pickle", "wb") as file:
        pickle.dump(RunsCode(str(marker)), file, protocol=2)
    for candidate in (path, tmp_path / "plain.pickle"):
        with pytest.raises(ModelFileError, match=f"load: {candidate}: not a model file written by nnlab.save"):
            nnlab.load(candidate)
    assert not marker.exists()


def rewritten(path, change):
    """Loads the file's plain content, applies ``change`` and writes it back with a
    correct checksum (what a deliberate tamperer would do)."""
    content = torch.load(path, weights_only=True)
    change(content)
    content["checksum"] = content_digest({key: value for key, value in content.items() if key != "checksum"})
    buffer = io.BytesIO()
    torch.save(content, buffer)
    path.write_bytes(buffer.getvalue())


def with_architecture(change):
    def apply(content):
        architecture = json.loads(content["architecture"])
        change(architecture)
        content["architecture"] = json.dumps(architecture)

    return apply


def test_a_first_format_file_reads_upsamples_first_argument_as_its_scale_factor(tmp_path):
    """Files of format nnlab-model-1 wrote Upsample(2) for twice the size, before Upsample
    took torch's order (size first): loaded, they still double the size; a file of the
    current format with Upsample(2) means an output of size 2, as torch's."""
    path = tmp_path / "model.nnlab"
    nnlab.save(Sequential(Conv2d(1, 2, 3, padding=1), Upsample(2)), path)
    x = torch.randn(1, 1, 5, 5)
    assert nnlab.load(path)(x).shape == (1, 2, 2, 2)

    def as_first_format(content):
        content["format"] = "nnlab-model-1"

    rewritten(path, as_first_format)
    model = nnlab.load(path)
    assert model(x).shape == (1, 2, 10, 10)
    assert model.layers[1].scale_factor == (2, 2) and model.layers[1].size is None
    rewritten(path, with_architecture(lambda a: a["layers"][2]["args"].append("nearest")))
    with pytest.raises(ModelFileError, match="Upsample of a nnlab-model-1 file has 2 positional arguments; it took 1"):
        nnlab.load(path)


@pytest.mark.parametrize(
    "change, message",
    [
        (with_architecture(lambda a: a["layers"][0].update({"module": "os", "class": "system"})),
         r"names 'os'.'system', which is not a public nnlab layer class"),
        (with_architecture(lambda a: a["layers"][0].update({"class": "Layer"})),
         r"layer 0 \(Layer\) cannot be built from its arguments"),
        (with_architecture(lambda a: a["layers"][0].update({"class": "save", "module": "nnlab"})),
         "which is not a public nnlab layer class"),
        (with_architecture(lambda a: a["layers"][0]["args"].append({"eval": "print(1)"})), "an argument is malformed"),
        (with_architecture(lambda a: a["layers"][1]["args"].append({"layer": 0})), "layer 0 refers to itself"),
        (with_architecture(lambda a: a.update({"training": [True]})), "training modes do not fit"),
        (lambda c: c["tensors"].pop("state.0.sequence.0.bias"), "the weights do not fit the architecture"),
        (lambda c: c.update({"format": "nnlab-model-0"}), "not a model file written by nnlab.save"),
    ],
)
def test_a_changed_file_is_refused(tmp_path, change, message):
    path = tmp_path / "model.nnlab"
    nnlab.save(Sequential(MLP(3, 2, (4,))), path)
    rewritten(path, change)
    with pytest.raises(ModelFileError, match=message):
        nnlab.load(path)


def test_a_flipped_weight_is_caught_by_the_checksum(tmp_path):
    path = tmp_path / "model.nnlab"
    nnlab.save(MLP(3, 2, (4,)), path)
    content = torch.load(path, weights_only=True)
    content["tensors"]["state.sequence.0.weight"][0, 0] += 1e-3
    torch.save(content, path)
    with pytest.raises(ModelFileError, match="checksum mismatch: the file changed after it was saved"):
        nnlab.load(path)
    path.write_bytes(b"not a torch file at all")
    with pytest.raises(ModelFileError, match="not a model file written by nnlab.save"):
        nnlab.load(path)
    with pytest.raises(FileNotFoundError):
        nnlab.load(tmp_path / "missing.nnlab")


# Models save cannot describe ----------------------------------------------------------------


class Doubler(Layer):
    """A layer of the user's own: not public, so not describable."""

    def forward(self, x):
        return 2 * x

    def backward(self, dout):
        return 2 * dout


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Sequential(Linear(2, 2), Doubler()), r"argument 1 is a Doubler .* not a public layer"),
        (lambda: Doubler(), "the model is a Doubler"),
        (lambda: MLP(2, 2, (3,), activation=torch.nn.ReLU()), "save: .*ReLU"),
        (lambda: Sequential(LeakyReLU(fractions.Fraction(1, 4))), r"argument 0 \(LeakyReLU\) argument 0 is Fraction"),
    ],
)
def test_save_refuses_what_it_cannot_describe(tmp_path, make, message):
    model = make()
    with pytest.raises(ValueError, match=message):
        nnlab.save(model, tmp_path / "model.nnlab")
    assert not (tmp_path / "model.nnlab").exists()


def test_save_refuses_a_model_changed_after_construction(tmp_path):
    model = MLP(2, 2, (3,))
    model.sequence.layers[1] = Tanh()
    with pytest.raises(ValueError, match=r"layer at 'sequence.1' \(Tanh\) is not what its constructor calls build"):
        nnlab.save(model, tmp_path / "model.nnlab")
    model = MLP(2, 2, (3,))
    model.sequence.layers.append(Linear(2, 2))
    with pytest.raises(ValueError, match="is not what its constructor calls build"):
        nnlab.save(model, tmp_path / "model.nnlab")
    with pytest.raises(TypeError, match="save: model must be an nnlab Layer"):
        nnlab.save(torch.nn.Linear(2, 2), tmp_path / "model.nnlab")
