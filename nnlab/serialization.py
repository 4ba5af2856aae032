"""``save(model, path)`` and ``load(path)``: a model's architecture and weights in one
file, read back without running anything from the file.

The architecture is written as the constructor calls that built the model: every
nnlab layer records the arguments its ``__init__`` was called with
(``Layer.constructor_call``), so ``MLP(784, 10, (128,))`` is saved as that call, a
``Sequential`` as a call whose arguments are other calls, and a graph model
(``nnlab.graph.Model``) as its ``Input`` nodes and the layer applied at every node.
Arguments may be numbers, strings, None, lists, tuples, dicts, torch dtypes and devices,
tensors, public layer classes and layers; a layer used at several places is written once and
referred to, so weight sharing survives. Layers a builder makes inside itself are not
written: the builder's call makes them again.

The file is written by ``torch.save`` (atomically, as the checkpoints are) and holds
only plain data: a format tag, the architecture as JSON text, the state tensors (those
of ``state_dict``), the training mode of every layer, and a SHA-256 checksum of all of
it. ``load`` reads it with ``torch.load(weights_only=True)``, which unpickles no
objects, verifies the checksum, and builds the model by calling constructors looked up
by name among the public layers (``__all__``) of ``nnlab.layers``, ``nnlab.models``,
``nnlab.graph`` and ``nnlab.classifier`` only: no other module is imported and no
other name is resolved. Anything else (a file that is not such a file, a changed byte,
an unknown class) is refused with ``ModelFileError`` naming the file.

``save`` checks that the description is faithful before writing: it builds the model
again from it and compares the layer structure (every layer's place and class) and
every state key and shape. A layer that is not public (a class of your own, a
``torch.nn`` module inside an argument) or a model changed after construction in a way
its constructor calls do not say (a layer replaced or appended) is refused with
``ValueError`` naming it. Attributes set after construction other than parameters,
buffers and the training mode are not saved (``BinaryClassifier.threshold`` is: it
reports its current value as its constructor argument).
"""

import importlib
import json
import math

import torch

from ._summary import layer_places
from .checkpoints import content_digest, write_atomically
from .layers.base import Layer

__all__ = ["ModelFileError", "load", "save"]

MODEL_FORMAT = "nnlab-model-2"
# Files of the first format, read too: their Upsample took its scale factor first (format 2
# has torch's order, size first), so their positional arguments are read by that name.
FIRST_FORMAT = "nnlab-model-1"
FIRST_FORMAT_POSITIONS = {"Upsample": ("scale_factor",)}
_FILE_KEYS = {"format", "architecture", "tensors", "checksum"}
# The modules whose public Layer classes a file may name; no other module is imported for a file.
_PUBLIC_MODULES = ("nnlab.layers", "nnlab.models", "nnlab.graph", "nnlab.classifier")


class ModelFileError(ValueError):
    """A file that ``load`` refuses: not a model file of this format, changed since it
    was saved, or describing something that is not built from public nnlab layers."""


def _public_class(module_name, name):
    """The public Layer class ``name`` of ``module_name`` (one of _PUBLIC_MODULES), or
    None; only those modules are ever imported, and only when named."""
    if module_name not in _PUBLIC_MODULES or not isinstance(name, str):
        return None
    module = importlib.import_module(module_name)
    value = getattr(module, name, None) if name in getattr(module, "__all__", ()) else None
    return value if isinstance(value, type) and issubclass(value, Layer) else None


def _class_reference(cls):
    """{"class": name, "module": public module} for a public Layer class, else None."""
    for module_name in _PUBLIC_MODULES:
        if cls.__module__ == module_name or cls.__module__.startswith(module_name + "."):
            if _public_class(module_name, cls.__name__) is cls:
                return {"class": cls.__name__, "module": module_name}
    return None


# Describing ------------------------------------------------------------------------------


class _Describer:
    """Turns a model into JSON-able data: a table of layers (each a constructor call)
    and a table of graph nodes, referred to by index from argument values."""

    def __init__(self):
        self.layers = []
        self.layer_index = {}
        self.nodes = []
        self.node_index = {}
        self.tensors = {}

    def layer(self, layer, where):
        if id(layer) in self.layer_index:
            return self.layer_index[id(layer)]
        cls = type(layer)
        reference = _class_reference(cls)
        if reference is None:
            raise ValueError(
                f"save: {where} is a {cls.__qualname__} (module {cls.__module__}), not a public layer of "
                f"{', '.join(_PUBLIC_MODULES)}; only those can be described by their constructor calls"
            )
        args, kwargs = layer.constructor_call()
        index = len(self.layers)
        self.layer_index[id(layer)] = index
        self.layers.append(None)  # reserved: the arguments may refer to other layers first
        where = f"{where} ({cls.__name__})"
        self.layers[index] = {
            **reference,
            "args": [self.value(arg, f"{where} argument {position}") for position, arg in enumerate(args)],
            "kwargs": {name: self.value(arg, f"{where} argument {name}") for name, arg in kwargs.items()},
        }
        return index

    def value(self, value, where):
        from .graph import Node

        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return value if math.isfinite(value) else {"float": repr(value)}
        if isinstance(value, list):
            return {"list": [self.value(item, f"{where}[{i}]") for i, item in enumerate(value)]}
        if isinstance(value, tuple):
            return {"tuple": [self.value(item, f"{where}[{i}]") for i, item in enumerate(value)]}
        if isinstance(value, dict):
            return {"dict": [[self.value(key, where), self.value(item, f"{where}[{key!r}]")] for key, item in value.items()]}
        if isinstance(value, torch.dtype):
            return {"dtype": str(value).replace("torch.", "")}
        if isinstance(value, torch.device):
            return {"device": str(value)}
        if isinstance(value, torch.Tensor):
            key = f"argument.{len(self.tensors)}"
            self.tensors[key] = value.detach().clone()
            return {"tensor": key}
        if isinstance(value, Layer):
            return {"layer": self.layer(value, where)}
        if isinstance(value, type) and issubclass(value, Layer) and _class_reference(value) is not None:
            return _class_reference(value)
        if isinstance(value, Node):
            return {"node": self.node(value, where)}
        raise ValueError(
            f"save: {where} is {value!r} (a {type(value).__name__}); a saved model's constructor arguments "
            "can be numbers, strings, None, lists, tuples, dicts, torch dtypes and devices, tensors and public nnlab layers"
        )

    def node(self, node, where):
        from .graph import Input

        if id(node) in self.node_index:
            return self.node_index[id(node)]
        if isinstance(node, Input):
            shape = None if node.shape is None else list(node.shape[1:])
            entry = {"input": shape, "name": node.name}
        elif node.layer is None:
            entry = {"item": node.index, "parent": self.node(node.parents[0], where)}
        else:
            parents = [self.node(parent, where) for parent in node.parents]
            entry = {"layer": self.layer(node.layer, f"{where}: node '{node.name}'"), "parents": parents, "name": node.name}
        self.node_index[id(node)] = len(self.nodes)
        self.nodes.append(entry)
        return self.node_index[id(node)]


def _architecture(model):
    """(JSON text, argument tensors) describing ``model``."""
    describer = _Describer()
    root = describer.layer(model, "the model")
    training = [layer.training for _, layer in layer_places(model)]
    architecture = {"layers": describer.layers, "nodes": describer.nodes, "model": root, "training": training}
    return json.dumps(architecture, allow_nan=False), describer.tensors


def _structure(model):
    return [(name, type(layer)) for name, layer in layer_places(model)]


def _check_faithful(model, rebuilt):
    """ValueError unless ``rebuilt`` has ``model``'s layers at the same places and the
    same state keys and shapes."""
    ours, theirs = _structure(model), _structure(rebuilt)
    if ours != theirs:
        differ = next((a, b) for a, b in zip(ours + [None] * len(theirs), theirs + [None] * len(ours)) if a != b)
        place, kind = differ[0] if differ[0] is not None else ("(nothing)", None)
        raise ValueError(
            f"save: the model's layer at '{place}' ({getattr(kind, '__name__', kind)}) is not what its constructor "
            f"calls build ({differ[1]}); it was changed after construction, so the file could not rebuild it"
        )
    expected = {key: tuple(tensor.shape) for key, tensor in model.named_tensors()}
    got = {key: tuple(tensor.shape) for key, tensor in rebuilt.named_tensors()}
    if expected != got:
        wrong = sorted(key for key in set(expected) | set(got) if expected.get(key) != got.get(key))
        raise ValueError(
            f"save: the state of {wrong[:5]} differs from what the model's constructor calls build; it was "
            "changed after construction, so the file could not rebuild it"
        )


def save(model, path):
    """Writes ``model`` (an nnlab Layer built from public layers) to ``path``: its
    constructor calls, state tensors and training modes, with a checksum; see the
    module's description. ValueError naming the layer or argument it cannot describe.

    Example::

        >>> import torch
        >>> import nnlab
        >>> from nnlab.models import MLP
        >>> model = MLP(4, 3, hidden_features=(8,))
        >>> nnlab.save(model, "mlp.nnlab")           # architecture and weights, one file
        >>> again = nnlab.load("mlp.nnlab")          # in any process
        >>> x = torch.randn(2, 4)
        >>> torch.equal(model(x), again(x))
        True
    """
    if not isinstance(model, Layer):
        raise TypeError(f"save: model must be an nnlab Layer, got {type(model).__name__}")
    floating = {str(tensor.dtype) for _, tensor in model.named_tensors() if tensor.is_floating_point()}
    if len(floating) > 1:
        raise ValueError(f"save: the model mixes floating dtypes {sorted(floating)}; convert it with model.to(dtype)")
    text, argument_tensors = _architecture(model)
    with torch.random.fork_rng(devices=[]):  # building draws initial weights; the caller's RNG stays as it was
        architecture = json.loads(text)
        rebuilt = _Builder(architecture, argument_tensors, "save").layer(architecture["model"])
    _check_faithful(model, rebuilt)
    tensors = {f"state.{key}": tensor.detach().clone() for key, tensor in model.named_tensors()}
    content = {"format": MODEL_FORMAT, "architecture": text, "tensors": {**tensors, **argument_tensors}}
    content["checksum"] = content_digest(content)
    write_atomically(path, lambda file: torch.save(content, file))


# Building --------------------------------------------------------------------------------


class _Builder:
    """Builds the model of an architecture (parsed JSON) from public constructors."""

    def __init__(self, architecture, tensors, owner, file_format=MODEL_FORMAT):
        self.owner = owner
        self.tensors = tensors
        self.file_format = file_format
        if not isinstance(architecture, dict) or set(architecture) != {"layers", "nodes", "model", "training"}:
            raise ModelFileError(f"{owner}: the architecture is not a dict of layers, nodes, model and training")
        self.architecture = architecture
        self.layers = {}
        self.nodes = {}
        self.building = set()

    def model(self):
        """The model, its layers in their saved training modes."""
        model = self.layer(self.architecture["model"])
        flags = self.architecture["training"]
        places = list(layer_places(model))
        if not isinstance(flags, list) or len(flags) != len(places) or not all(isinstance(f, bool) for f in flags):
            raise ModelFileError(f"{self.owner}: the training modes do not fit the model's {len(places)} layers")
        for (_, layer), flag in zip(places, flags):
            layer.training = flag
        return model

    def layer(self, index):
        if index in self.layers:
            return self.layers[index]
        entries = self.architecture["layers"]
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(entries):
            raise ModelFileError(f"{self.owner}: layer reference {index!r} is not in the file's layer table")
        if index in self.building:
            raise ModelFileError(f"{self.owner}: layer {index} refers to itself through its arguments")
        entry = entries[index]
        if not isinstance(entry, dict) or set(entry) != {"class", "module", "args", "kwargs"}:
            raise ModelFileError(f"{self.owner}: layer {index} is not a constructor call (class, module, args, kwargs)")
        name = entry["class"]
        cls = self.public_class(entry)
        if not isinstance(entry["args"], list) or not isinstance(entry["kwargs"], dict):
            raise ModelFileError(f"{self.owner}: layer {index} ({name}) has malformed arguments")
        self.building.add(index)
        args = [self.value(arg) for arg in entry["args"]]
        kwargs = {key: self.value(arg) for key, arg in entry["kwargs"].items()}
        if self.file_format == FIRST_FORMAT and name in FIRST_FORMAT_POSITIONS:
            args, kwargs = _by_first_format_names(self.owner, name, args, kwargs)
        try:
            layer = cls(*args, **kwargs)
        except (TypeError, ValueError) as error:
            raise ModelFileError(f"{self.owner}: layer {index} ({name}) cannot be built from its arguments: {error}") from error
        self.building.discard(index)
        self.layers[index] = layer
        return layer

    def value(self, value):
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, dict) and set(value) == {"class", "module"}:
            return self.public_class(value)
        if not isinstance(value, dict) or len(value) != 1:
            raise ModelFileError(f"{self.owner}: an argument is malformed: {value!r:.80}")
        (kind, content), = value.items()
        if kind in ("list", "tuple") and isinstance(content, list):
            items = [self.value(item) for item in content]
            return items if kind == "list" else tuple(items)
        if kind == "dict" and isinstance(content, list) and all(isinstance(p, list) and len(p) == 2 for p in content):
            return {self.value(key): self.value(item) for key, item in content}
        if kind == "float" and content in ("inf", "-inf", "nan"):
            return float(content)
        if kind == "dtype" and isinstance(content, str) and isinstance(getattr(torch, content, None), torch.dtype):
            return getattr(torch, content)
        if kind == "device" and isinstance(content, str):
            try:
                return torch.device(content)
            except RuntimeError as error:
                raise ModelFileError(f"{self.owner}: an argument names no device: {content!r:.60}") from error
        if kind == "tensor" and isinstance(content, str) and content.startswith("argument.") and content in self.tensors:
            return self.tensors[content].clone()
        if kind == "layer":
            return self.layer(content)
        if kind == "node":
            return self.node(content)
        raise ModelFileError(f"{self.owner}: an argument is malformed: {value!r:.80}")

    def public_class(self, reference):
        cls = _public_class(reference["module"], reference["class"])
        if cls is None:
            raise ModelFileError(
                f"{self.owner}: the file names {reference['module']!r:.60}.{reference['class']!r:.60}, which is not "
                f"a public nnlab layer class (of {', '.join(_PUBLIC_MODULES)})"
            )
        return cls

    def node(self, index):
        from .graph import Input

        if index in self.nodes:
            return self.nodes[index]
        entries = self.architecture["nodes"]
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(entries):
            raise ModelFileError(f"{self.owner}: node reference {index!r} is not in the file's node table")
        entry = entries[index]
        self.nodes[index] = None  # a node that refers to itself finds None and is refused below
        try:
            if isinstance(entry, dict) and set(entry) == {"input", "name"}:
                shape = entry["input"]
                node = Input(shape=None if shape is None else tuple(shape), name=entry["name"])
            elif isinstance(entry, dict) and set(entry) == {"item", "parent"}:
                node = self._built_node(entry["parent"])[entry["item"]]
            elif isinstance(entry, dict) and set(entry) == {"layer", "parents", "name"} and isinstance(entry["parents"], list):
                parents = [self._built_node(parent) for parent in entry["parents"]]
                node = self.layer(entry["layer"])(*parents, name=entry["name"])
            else:
                raise ModelFileError(f"{self.owner}: graph node {index} is malformed")
        except (TypeError, ValueError, IndexError) as error:
            if isinstance(error, ModelFileError):
                raise
            raise ModelFileError(f"{self.owner}: graph node {index} cannot be built: {error}") from error
        self.nodes[index] = node
        return node

    def _built_node(self, index):
        node = self.node(index)
        if node is None:
            raise ModelFileError(f"{self.owner}: graph node {index} depends on itself")
        return node


def _by_first_format_names(owner, name, args, kwargs):
    """A first-format file's positional arguments of ``name`` passed by the names they had."""
    names = FIRST_FORMAT_POSITIONS[name]
    if len(args) > len(names):
        raise ModelFileError(
            f"{owner}: a {name} of a {FIRST_FORMAT} file has {len(args)} positional arguments; it took {len(names)}"
        )
    return [], {**dict(zip(names, args)), **kwargs}


def load(path, map_location=None):
    """The model saved at ``path`` by ``save``: built from public constructors, with its
    weights, buffers and training modes, on the device of the saved tensors (or
    ``map_location``, as ``torch.load`` takes it). Never runs code from the file;
    ``ModelFileError`` naming the file for anything it cannot trust.

    Example::

        >>> import torch
        >>> import nnlab
        >>> torch.save({"weights": torch.ones(2)}, "other.pt")
        >>> nnlab.load("other.pt")
        Traceback (most recent call last):
            ...
        nnlab.serialization.ModelFileError: load: other.pt: ...
    """
    owner = f"load: {path}"
    try:
        content = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever the restricted unpickler refuses
        raise ModelFileError(
            f"{owner}: not a model file written by nnlab.save, or changed since (it holds something other than "
            f"plain data): {str(error).splitlines()[0]}"
        ) from error
    if not isinstance(content, dict) or set(content) != _FILE_KEYS or content.get("format") not in (MODEL_FORMAT, FIRST_FORMAT):
        raise ModelFileError(f"{owner}: not a model file written by nnlab.save (format {MODEL_FORMAT} or {FIRST_FORMAT})")
    checksum = content["checksum"]
    if content_digest({key: value for key, value in content.items() if key != "checksum"}) != checksum:
        raise ModelFileError(f"{owner}: checksum mismatch: the file changed after it was saved")
    tensors = content["tensors"]
    if not isinstance(content["architecture"], str) or not isinstance(tensors, dict):
        raise ModelFileError(f"{owner}: the architecture or the tensors are malformed")
    try:
        architecture = json.loads(content["architecture"])
    except ValueError as error:
        raise ModelFileError(f"{owner}: the architecture is not valid JSON: {error}") from error
    with torch.random.fork_rng(devices=[]):  # building draws initial weights; the caller's RNG stays as it was
        model = _Builder(architecture, tensors, owner, content["format"]).model()
    _load_state(owner, model, {key[len("state."):]: value for key, value in tensors.items() if key.startswith("state.")})
    return model


def _load_state(owner, model, state):
    """Moves ``model`` to the dtype and device of the saved state, then copies it in."""
    floating = {tensor.dtype for tensor in state.values() if tensor.is_floating_point()}
    if len(floating) > 1:
        raise ModelFileError(f"{owner}: the saved tensors mix floating dtypes {sorted(map(str, floating))}")
    if state:
        device = next(iter(state.values())).device
        model.to(device=device, dtype=floating.pop() if floating else None)
    try:
        model.load_state_dict(state)
    except ValueError as error:
        raise ModelFileError(f"{owner}: the weights do not fit the architecture: {error}") from error
