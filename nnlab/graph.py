"""Graph models: hand-written layers wired into any directed acyclic graph, with the
chain rule applied over it in reverse (Torch7's nngraph, Keras' functional API).

    x = Input(shape=(1, 8, 8))
    h = ReLU()(Conv2d(1, 8, 3, padding=1)(x))     # a layer called on nodes gives a node
    y = Concat()(h, x)                             # several inputs: several nodes
    model = Model(x, y)                            # a Layer: forward, backward, params, ...

A node is a layer applied to its parent nodes. Calling a layer on a node computes
nothing: ``Layer.__call__`` sees that its first argument is a ``Symbolic`` (one
``isinstance`` check; the marker lives in ``nnlab.layers.base``, so the layers never
import this module) and hands the call to ``Node.apply_layer``, which makes the node.
When the parents' shapes are known (``Input(shape)``), the layer first runs once on
zeros of those shapes (a copy of it, in eval mode, so the layer itself is untouched):
a shape mismatch is an error there, naming the node. A loss is not run so (its targets
come when the model runs: ``model(x, y=targets)``); its node's shape is unknown.

``Model`` orders the nodes once, at construction. ``forward`` evaluates them in that
order; ``backward`` walks it in reverse, runs each node's hand-written backward and adds
up the gradients of a node that feeds several consumers (the multivariate chain rule).
No autograd is involved. A layer called at several nodes (weight sharing) gets back,
before each node's backward, the cache of that node's call (``recall_call``), and its
parameter gradients add up over the calls, as in a Sequential that holds it twice.
"""

import collections
import copy
import os
import shutil
import subprocess
from typing import NamedTuple, Optional

import torch

from .layers.base import Layer, Symbolic, check_input_gradient, recall_call, remember_call
from .layers.containers import ChildErrors, indented
from .layers.loss_base import Loss
from .layers.merge import Add, Concat, Multiply

__all__ = ["Add", "Concat", "Input", "Model", "Multiply", "Node", "plot_graph", "to_dot"]

# The batch sizes of the two dry runs that find each node's output shape: the dimensions
# that differ between them are where the batch is.
_DRY_RUN_BATCHES = (2, 3)

# How many nodes of each default name exist, for Keras-style names: conv2d, conv2d_1, ...
_NAME_COUNTS = collections.Counter()


def _fresh_name(base):
    count = _NAME_COUNTS[base]
    _NAME_COUNTS[base] += 1
    return base if count == 0 else f"{base}_{count}"


# Nodes --------------------------------------------------------------------------------


class Node(Symbolic):
    """A value in a graph model: ``layer`` applied to the ``parents`` nodes; or item
    ``index`` of a parent whose layer returns a tuple (``node[index]``, or unpacking:
    ``digits, parity = Heads(a, b)(h)``); or an ``Input``.

    ``shape`` is the value's shape with None for the batch, as in Keras
    (``(None, 16, 8, 8)``); a tuple of such shapes for a tuple of outputs; None when
    it is unknown (the model's inputs were given no shape). ``name`` is unique among
    the nodes made with default names (``conv2d``, ``conv2d_1``, ...); call a layer
    with ``name=`` to choose it: ``Conv2d(1, 8, 3)(x, name="encoder")``.
    """

    def __init__(self, name, layer=None, parents=(), index=None, shape=None, dtype=None):
        self.name = name
        self.layer = layer
        self.parents = tuple(parents)
        self.index = index
        self.shape = shape
        # The value's dtype when known (a tuple of them for a tuple of outputs); dry runs
        # feed a layer zeros of it, so integer ids reach an embedding as integers.
        self.dtype = dtype
        self._items = {}

    def apply_layer(self, layer, args, kw):
        """The node of ``layer`` called on the nodes ``args`` (see ``Symbolic``)."""
        kw = dict(kw)
        name = kw.pop("name", None)
        if kw:
            raise TypeError(
                f"{_label(layer)} called on graph nodes: keyword arguments {sorted(kw)} are given "
                "when the model runs (model(x, **kw) hands them to every layer); only name= is taken here"
            )
        for position, arg in enumerate(args):
            if not isinstance(arg, Node):
                raise TypeError(
                    f"{_label(layer)} called on graph nodes: argument {position} is a "
                    f"{type(arg).__name__}, not a node; every argument must be a node (make an Input for it)"
                )
        if name is None:
            name = _fresh_name(type(layer).__name__.lower())
        elif not isinstance(name, str) or not name:
            raise ValueError(f"{_label(layer)} called on graph nodes: name must be a non-empty str, got {name!r}")
        shape, dtype = _dry_run(layer, args, name)
        return Node(name, layer, args, shape=shape, dtype=dtype)

    def __getitem__(self, index):
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"node '{self.name}': an item index must be an int, got {index!r}")
        count = None
        if self.shape is not None:
            if not _is_tuple_shape(self.shape):
                shape = _format_shape(self.shape)
                raise TypeError(f"node '{self.name}' holds one tensor of shape {shape}, not a tuple")
            count = len(self.shape)
            if not -count <= index < count:
                raise IndexError(f"node '{self.name}' holds a tuple of {count}; item {index} is out of range")
            index %= count
        if index not in self._items:
            shape = None if count is None else self.shape[index]
            dtype = self.dtype[index] if isinstance(self.dtype, tuple) else None
            self._items[index] = Node(f"{self.name}[{index}]", parents=(self,), index=index, shape=shape, dtype=dtype)
        return self._items[index]

    def __iter__(self):
        if self.shape is None:
            raise TypeError(
                f"node '{self.name}' can only be unpacked when its length is known (give the "
                "Input a shape); index it instead: node[0], node[1]"
            )
        # self[index] refuses a node that holds one tensor.
        return (self[index] for index in range(len(self.shape)))

    def __repr__(self):
        if isinstance(self, Input):
            what = "Input"
        elif self.layer is None:
            what = f"item {self.index} of '{self.parents[0].name}'"
        else:
            parents = ", ".join(f"'{parent.name}'" for parent in self.parents)
            what = f"{_label(self.layer)} of {parents}"
        return f"<Node '{self.name}': {what}, shape {_format_shape(self.shape)}>"


class Input(Node):
    """A model input: ``Input(shape=(1, 8, 8))``, the shape of one sample (without the
    batch dimension, as in Keras), or ``Input()`` to leave it open (then no dry runs
    check the layers called on it, and the model does not check its input's shape).
    ``dtype=torch.long`` says the input holds integer ids (an embedding's input), so the
    dry runs feed integers; by default it is floating point, like the first layer's
    parameters.
    """

    def __init__(self, shape=None, name=None, dtype=None):
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(f"Input: dtype must be a torch.dtype, got {dtype!r}")
        if shape is not None:
            shape = (shape,) if isinstance(shape, int) else shape
            valid = isinstance(shape, (tuple, list)) and all(
                isinstance(size, int) and not isinstance(size, bool) and size >= 1 for size in shape
            )
            if not valid:
                raise ValueError(f"Input: shape must be a tuple of ints >= 1 (without the batch), got {shape!r}")
            shape = (None, *shape)
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"Input: name must be a non-empty str, got {name!r}")
        super().__init__(_fresh_name("input") if name is None else name, shape=shape, dtype=dtype)


def _names(nodes):
    return [node.name for node in nodes]


def _is_tuple_shape(shape):
    """True for the shape of a tuple of outputs (a tuple of shapes)."""
    return len(shape) > 0 and isinstance(shape[0], tuple)


def _format_shape(shape):
    if shape is None:
        return "?"
    if _is_tuple_shape(shape):
        return "[" + ", ".join(_format_shape(item) for item in shape) + "]"
    return "(" + ", ".join(str(size) for size in shape) + ("," if len(shape) == 1 else "") + ")"


def _label(layer):
    """The first line of the layer's repr (containers print one child a line)."""
    return repr(layer).split("\n", 1)[0]


def _shape_without_batch(first, second):
    """The shape of the outputs ``first`` and ``second`` of dry runs of two batch sizes,
    with None where they differ: where the batch is (dimension 0 of most outputs,
    dimension 1 of a recurrent layer's h_n); a tuple of shapes for a tuple."""
    if isinstance(first, (tuple, list)):
        return tuple(_shape_without_batch(a, b) for a, b in zip(first, second))
    return tuple(None if a != b else a for a, b in zip(first.shape, second.shape))


def _dtypes(value):
    """``value``'s dtype (a tuple of them for a tuple of outputs)."""
    if isinstance(value, (tuple, list)):
        return tuple(_dtypes(item) for item in value)
    return value.dtype if isinstance(value, torch.Tensor) else None


def _zeros(shape, like, dtype, batch):
    """Zeros of ``shape`` with ``batch`` in the place of None: of ``dtype`` when it is an
    integer one (ids), else of the dtype and device of the tensor ``like`` (the layer's
    first parameter) or torch's defaults."""
    if _is_tuple_shape(shape):
        dtypes = dtype if isinstance(dtype, tuple) else (None,) * len(shape)
        return tuple(_zeros(item, like, item_dtype, batch) for item, item_dtype in zip(shape, dtypes))
    size = tuple(batch if size is None else size for size in shape)
    device = None if like is None else like.device
    if dtype is not None and not dtype.is_floating_point:
        return torch.zeros(size, dtype=dtype, device=device)
    if like is None:
        return torch.zeros(size)
    return torch.zeros(size, dtype=like.dtype, device=like.device)


def _dry_run(layer, parents, name):
    """(shape, dtype) of ``layer``'s output on zeros of its parents' shapes, run with each
    batch size of ``_DRY_RUN_BATCHES``; (None, None) when a parent's shape is unknown or the
    layer is a loss. It runs on a copy in eval mode, so that the layer keeps its cache and
    buffers (no running statistics updated) and torch's RNG is not drawn from (no dropout)."""
    if any(parent.shape is None for parent in parents) or isinstance(layer, Loss):
        # A loss's targets come when the model runs (model(x, y=targets)): no dry run.
        return None, None
    probe = copy.deepcopy(layer).eval()
    params = probe.params()
    like = params[0][0] if params else None
    outs = []
    for batch in _DRY_RUN_BATCHES:
        try:
            outs.append(probe(*[_zeros(parent.shape, like, parent.dtype, batch) for parent in parents]))
        except (ValueError, TypeError, RuntimeError, IndexError) as error:
            given = ", ".join(f"'{parent.name}' {_format_shape(parent.shape)}" for parent in parents)
            raise ValueError(
                f"node '{name}': {_label(layer)} cannot take {given}; a dry run on zeros (batch "
                f"{batch}) says: {error}"
            ) from error
    return _shape_without_batch(*outs), _dtypes(outs[0])


# Construction checks ------------------------------------------------------------------


def _as_nodes(role, value):
    """``value`` (a node, or a list or tuple of them) as a tuple of nodes."""
    nodes = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if not nodes:
        raise ValueError(f"Model: {role} must not be empty")
    for position, node in enumerate(nodes):
        if not isinstance(node, Node):
            raise TypeError(
                f"Model: {role}[{position}] must be a graph node (an Input, or a layer called on "
                f"nodes), got {type(node).__name__}"
            )
    return nodes


def _repeated(names):
    return sorted(name for name, count in collections.Counter(names).items() if count > 1)


def _check_input_nodes(inputs):
    for node in inputs:
        if not isinstance(node, Input):
            made_by = _label(node.layer) if node.layer is not None else "an item of a tuple"
            raise ValueError(f"Model: input '{node.name}' must be an Input node, not the output of {made_by}")
    repeated = _repeated(_names(inputs))
    if repeated:
        raise ValueError(f"Model: inputs {repeated} are given more than once")


def _ancestry(outputs):
    """Every node the outputs depend on, each after its parents (a depth-first
    post-order); ValueError naming the nodes of a cycle."""
    state = {}  # node -> "open" while its parents are being visited, then "done"
    order = []
    for root in outputs:
        if root in state:
            continue
        path = [root]
        pending = [iter(root.parents)]
        state[root] = "open"
        while path:
            parent = next(pending[-1], None)
            if parent is None:
                node = path.pop()
                pending.pop()
                state[node] = "done"
                order.append(node)
            elif state.get(parent) == "open":
                cycle = path[path.index(parent):][::-1] + [path[-1]]
                raise ValueError("Model: the graph has a cycle: " + " -> ".join(f"'{node.name}'" for node in cycle))
            elif parent not in state:
                state[parent] = "open"
                path.append(parent)
                pending.append(iter(parent.parents))
    return order


def _check_connections(inputs, outputs, nodes):
    """ValueError naming the nodes when an output needs an Input that is not among the
    model's inputs, when an input reaches no output, or when two nodes share a name."""
    strays = [node for node in nodes if isinstance(node, Input) and node not in inputs]
    given = _names(inputs)
    for output in outputs:
        needed = [node.name for node in _ancestry([output]) if node in strays]
        if needed:
            raise ValueError(
                f"Model: output '{output.name}' does not depend on the model's inputs {given} alone: "
                f"it needs Input {needed}, which is not among them"
            )
    unused = [node.name for node in inputs if node not in nodes]
    if unused:
        raise ValueError(f"Model: input {unused} reaches no output {_names(outputs)}")
    repeated = _repeated(_names(nodes))
    if repeated:
        raise ValueError(f"Model: several nodes are named {repeated}; node names must be unique")


# The model ----------------------------------------------------------------------------


class _Step(NamedTuple):
    """One node's work in forward: ``layer`` on the values at ``parents`` (positions in
    the model's node order), or item ``index`` of the one parent when layer is None;
    ``releases``: positions whose value is not needed after this step."""

    node: Node
    position: int
    layer: Optional[Layer]
    parents: tuple
    index: Optional[int]
    releases: tuple


class Model(Layer):
    """A graph of layers as one layer: ``Model(inputs, outputs)`` with ``inputs`` an
    ``Input`` node or a list of them and ``outputs`` a node or a list of nodes.

    Forward: ``model(x)``, or ``model(x_1, ..., x_k)`` in the order of ``inputs``;
    evaluates every node in a topological order fixed at construction and returns the
    output, or a tuple when ``outputs`` is a list or tuple. Keyword arguments reach every
    layer (as in Sequential). Each value is dropped as soon as no later node needs it.
    Backward: ``dout`` (for a tuple of outputs, a tuple with a gradient or None per
    output, as Heads takes) -> the input gradient, or a tuple of one per input. The chain
    rule over the graph: in reverse order, a node's gradient is the sum of what its
    consumers' backward passes gave it (a layer called on several nodes returns a tuple,
    one gradient per node); its layer's backward gets it after ``recall_call`` has put
    back that node's call. A node that gets no gradient at all (it feeds only outputs
    whose gradient is None) is skipped, so its layer's parameter gradients are left
    alone; an input that gets none has a zero gradient (None for an input that is not
    floating point, such as token ids). A layer's backward that returns None is an error
    naming the node, unless the layer's input has no gradient by design (its class says
    ``has_input_gradient = False``) or no one needs it. A loss given its targets as a node
    is a ValueError at backward (they would get no gradient). After
    ``requires_input_grad(False)`` the layers that read only model inputs return no
    input gradient, nor does the model (None).
    Shapes: each input as its ``Input(shape)`` says (checked when given); outputs as the
    layers make them. Caches: each node's call (``remember_call``; the layers cache
    their own tensors) and the inputs (for zero gradients).
    Children: every layer once, in order of first use, named "0", "1", ... (the
    state_dict prefixes; ``params()`` follows that order).
    Errors at construction name the nodes: a cycle, an output that needs an Input not
    among ``inputs``, an input that reaches no output, repeated node names; shape
    mismatches are found when a layer is called on nodes (see ``Node``).
    """

    def __init__(self, inputs, outputs):
        super().__init__()
        self.inputs = _as_nodes("inputs", inputs)
        self.outputs = _as_nodes("outputs", outputs)
        self._tuple_output = isinstance(outputs, (tuple, list))
        _check_input_nodes(self.inputs)
        nodes = _ancestry(self.outputs)
        _check_connections(self.inputs, self.outputs, nodes)
        self.nodes = tuple(nodes)
        positions = {node: position for position, node in enumerate(self.nodes)}
        self._input_positions = tuple(positions[node] for node in self.inputs)
        self._output_positions = tuple(positions[node] for node in self.outputs)
        self._steps = _plan(self.nodes, self.inputs, self._output_positions, positions)
        self.layers = tuple(_unique_layers(self._steps))
        self._xs = None
        self._calls = None

    def named_children(self):
        return [(str(index), layer) for index, layer in enumerate(self.layers)]

    def collect_input_grad_needs(self, flag, needs):
        """Gives ``flag`` to the layers whose every node reads model inputs only, and True
        to every other layer (see ``Layer.requires_input_grad``)."""
        super().collect_input_grad_needs(flag, needs)
        readers = {id(layer) for layer in self.input_readers()}
        for layer in self.layers:
            if id(layer) not in readers:
                layer.collect_input_grad_needs(True, needs)

    def input_readers(self):
        inputs = set(self._input_positions)
        readers = {}
        for step in self._steps:
            if step.layer is not None:
                reads_inputs_only = readers.get(id(step.layer), (None, True))[1]
                readers[id(step.layer)] = (step.layer, reads_inputs_only and inputs.issuperset(step.parents))
        return [layer for layer, reads_inputs_only in readers.values() if reads_inputs_only]

    def backward_entry(self):
        steps = [step for step in self._steps if step.layer is not None]
        if not steps:
            return "Model"
        return f"Model node '{steps[-1].node.name}' ({steps[-1].layer.backward_entry()})"

    def __repr__(self):
        lines = [f"Model(inputs={_names(self.inputs)}, outputs={_names(self.outputs)})"]
        for step in self._steps:
            parents = ", ".join(self.nodes[position].name for position in step.parents)
            if step.layer is None:
                lines.append(f"\t{step.node.name} = {parents}[{step.index}]")
            else:
                lines.append(f"\t{step.node.name} = {indented(repr(step.layer))}({parents})")
        return "\n".join(lines)

    # Forward and backward ---------------------------------------------------------

    def _check_given(self, xs):
        if len(xs) != len(self.inputs):
            raise TypeError(f"Model: expected {len(self.inputs)} input(s) {_names(self.inputs)}, got {len(xs)}")
        for node, x in zip(self.inputs, xs):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"Model: input '{node.name}' must be a torch.Tensor, got {type(x).__name__}")
            if node.shape is not None and (x.dim() != len(node.shape) or x.shape[1:] != node.shape[1:]):
                raise ValueError(
                    f"Model: input '{node.name}' expects shape {_format_shape(node.shape)}, got {tuple(x.shape)}"
                )

    def _node_errors(self, step):
        return ChildErrors(f"Model node '{step.node.name}' ({type(step.layer).__name__})")

    def forward(self, *xs, **kw):
        self._check_given(xs)
        values = [None] * len(self.nodes)
        for position, x in zip(self._input_positions, xs):
            values[position] = x
        calls = []
        for step in self._steps:
            if step.layer is None:
                whole = values[step.parents[0]]
                values[step.position] = whole[step.index]
                calls.append(len(whole))
            else:
                with self._node_errors(step):
                    values[step.position] = step.layer(*[values[position] for position in step.parents], **kw)
                calls.append(remember_call(step.layer))
            for position in step.releases:
                values[position] = None
        self._xs = xs
        self._calls = calls
        outputs = tuple(values[position] for position in self._output_positions)
        return self.finish_forward(outputs if self._tuple_output else outputs[0])

    def backward(self, dout):
        """The input gradient (a tuple for several inputs); see the class docstring."""
        self.start_backward(dout)
        grads = [None] * len(self.nodes)
        for position, grad in zip(self._output_positions, dout if self._tuple_output else (dout,)):
            grads[position] = _sum_gradients(grads[position], grad)
        for step_index in reversed(range(len(self._steps))):
            step = self._steps[step_index]
            grad = grads[step.position]
            grads[step.position] = None
            if grad is None:
                continue
            if step.layer is None:
                item_grads = [None] * self._calls[step_index]
                item_grads[step.index] = grad
                parent_grads = (tuple(item_grads),)
            else:
                with recall_call(step.layer, self._calls[step_index]), self._node_errors(step):
                    result = step.layer.backward(grad)
                if result is None:
                    self._check_no_gradient_is_needed(step)
                with self._node_errors(step):
                    parent_grads = self._per_parent(step, result)
            for position, parent_grad in zip(step.parents, parent_grads):
                grads[position] = _sum_gradients(grads[position], parent_grad)
        if not self.needs_input_grad:
            return None
        input_grads = tuple(
            _input_gradient(grads[position], x) for position, x in zip(self._input_positions, self._xs)
        )
        return input_grads if len(input_grads) > 1 else input_grads[0]

    def _check_no_gradient_is_needed(self, step):
        """RuntimeError naming the node when its layer's backward returned None although
        a gradient is needed: by a parent that is not a model input, or by the caller.
        None is right for a layer whose input has no gradient (``has_input_gradient``)."""
        where = f"Model node '{step.node.name}' ({type(step.layer).__name__})"
        check_input_gradient(where, step.layer, None)
        if not step.layer.has_input_gradient:
            return
        inputs = set(self._input_positions)
        needers = [self.nodes[position].name for position in step.parents if position not in inputs]
        if self.needs_input_grad:
            needers += [self.nodes[position].name for position in step.parents if position in inputs]
        if needers:
            raise RuntimeError(
                f"{where}: backward returned no input gradient (requires_input_grad(False)), but nodes "
                f"{needers} need it; call requires_input_grad(True) on the model"
            )

    @staticmethod
    def _per_parent(step, result):
        """A layer's backward result as one gradient per parent node (None for each after
        ``requires_input_grad(False)``)."""
        if len(step.parents) == 1 or result is None:
            return (result,) * len(step.parents)
        given = len(result) if isinstance(result, (tuple, list)) else 1
        if isinstance(step.layer, Loss) and given < len(step.parents):
            raise ValueError(
                f"{type(step.layer).__name__}.backward gives gradients for the first {given} of its "
                f"{len(step.parents)} input nodes only: its targets are data and get none (a zero would be wrong "
                "where torch differentiates them); give the targets when the model runs (model(..., y=targets)), "
                "or call the loss on the model's outputs"
            )
        if not isinstance(result, (tuple, list)) or len(result) != len(step.parents):
            got = f"a {type(result).__name__} of {len(result)}" if isinstance(result, (tuple, list)) else "one gradient"
            raise ValueError(
                f"{type(step.layer).__name__}.backward returned {got}, expected a tuple of "
                f"{len(step.parents)} gradients (one per input node)"
            )
        return result

    # Summary and drawing ----------------------------------------------------------

    def summary(self, print_fn=print):
        """Prints a table, one node a line (node, layer, output shape, parameters,
        inputs), then the total parameter count, as Keras' ``Model.summary`` does;
        ``print_fn`` gets one line at a time. A layer used at several nodes has its
        parameters counted at its first node only ("shared" at the others)."""
        first_use = _first_uses(self.nodes)
        rows = [("Node", "Layer", "Output shape", "Params", "Inputs")]
        for node in self.nodes:
            if node.layer is None:
                params = "0"
            elif first_use[id(node.layer)] is not node:
                params = f"shared with {first_use[id(node.layer)].name}"
            else:
                params = f"{_count(node.layer):,}"
            parents = ", ".join(parent.name for parent in node.parents)
            rows.append((node.name, _kind(node), _format_shape(node.shape), params, parents))
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        print_fn(f"Model: {_counted(len(self.inputs), 'input')}, {_counted(len(self.outputs), 'output')}, "
                 f"{_counted(len(self.nodes), 'node')}")
        for index, row in enumerate(rows):
            # The parameter counts (column 3) are right-aligned, the rest left-aligned.
            cells = [
                cell.rjust(width) if column == 3 else cell.ljust(width)
                for column, (cell, width) in enumerate(zip(row, widths))
            ]
            print_fn("  ".join(cells).rstrip())
            if index == 0:
                print_fn("  ".join("=" * width for width in widths))
        print_fn(f"Total parameters: {_count(self):,}")
        print_fn(f"Outputs: {', '.join(_names(self.outputs))}")


def _plan(nodes, inputs, output_positions, positions):
    """The forward steps of the non-input nodes, in order; each releases the values that
    no later step needs (outputs are kept)."""
    computed = [node for node in nodes if node not in inputs]
    last_use = {}
    for step_index, node in enumerate(computed):
        for parent in node.parents:
            last_use[positions[parent]] = step_index
    steps = []
    for step_index, node in enumerate(computed):
        releases = tuple(
            position for position, last in last_use.items() if last == step_index and position not in output_positions
        )
        parents = tuple(positions[parent] for parent in node.parents)
        steps.append(_Step(node, positions[node], node.layer, parents, node.index, releases))
    return tuple(steps)


def _input_gradient(grad, x):
    """The gradient of the model input ``x``: ``grad``; zeros when it got none (it feeds
    only outputs whose gradient is None); None for an input that is not floating point
    (token ids), which has no gradient."""
    if not x.is_floating_point():
        return None
    return torch.zeros_like(x) if grad is None else grad


def _sum_gradients(total, grad):
    """``total + grad`` out of place, where None is "no gradient" and a tuple (the
    gradient of a tuple of outputs) adds item by item."""
    if total is None:
        return grad
    if grad is None:
        return total
    if isinstance(total, (tuple, list)):
        return tuple(_sum_gradients(a, b) for a, b in zip(total, grad))
    return total + grad


def _unique_layers(steps):
    seen = set()
    for step in steps:
        if step.layer is not None and id(step.layer) not in seen:
            seen.add(id(step.layer))
            yield step.layer


def _first_uses(nodes):
    """{id(layer): the first node that calls it}."""
    first = {}
    for node in nodes:
        if node.layer is not None:
            first.setdefault(id(node.layer), node)
    return first


def _counted(number, noun):
    return f"{number} {noun}{'s' if number != 1 else ''}"


def _count(layer):
    return sum(param.numel() for param, _ in layer.params())


def _kind(node):
    if isinstance(node, Input):
        return "Input"
    if node.layer is None:
        return f"item {node.index}"
    return type(node.layer).__name__


# Graphviz -----------------------------------------------------------------------------


def _quoted(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(model):
    """The model's graph as Graphviz DOT text (render it with ``dot -Tpng graph.dot -o
    graph.png``, or paste it into any DOT viewer): one box per node with its name, layer
    and output shape; inputs as ellipses, outputs with a double border; an edge from
    each parent, labelled with the argument position when a node has several."""
    first_use = _first_uses(model.nodes)
    lines = ["digraph Model {", "    rankdir=TB;", '    node [shape=box, fontname="Helvetica"];']
    for node in model.nodes:
        layer = "Input" if isinstance(node, Input) else _kind(node) if node.layer is None else _label(node.layer)
        label = [node.name, layer, _format_shape(node.shape)]
        if node.layer is not None and first_use[id(node.layer)] is not node:
            label.append(f"(shared with {first_use[id(node.layer)].name})")
        attributes = ["label=" + _quoted("\n".join(label)).replace("\n", "\\n")]
        if isinstance(node, Input):
            attributes.append("shape=ellipse")
        if node in model.outputs:
            attributes.append("peripheries=2")
        lines.append(f"    {_quoted(node.name)} [{', '.join(attributes)}];")
    for node in model.nodes:
        for position, parent in enumerate(node.parents):
            label = f' [label="{position}"]' if len(node.parents) > 1 else ""
            lines.append(f"    {_quoted(parent.name)} -> {_quoted(node.name)}{label};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def plot_graph(model, path):
    """Draws the model's graph into ``path``: DOT text for a ``.dot`` or ``.gv`` path,
    else an image rendered by Graphviz's ``dot`` program in the format the extension
    names (``.png``, ``.svg``, ``.pdf``), which needs Graphviz installed (as Keras'
    ``plot_model`` does)."""
    path = os.fspath(path)
    extension = os.path.splitext(path)[1].lower().lstrip(".")
    if not extension:
        raise ValueError(f"plot_graph: '{path}' has no extension; use .dot, .gv, .png, .svg or .pdf")
    text = to_dot(model)
    if extension in ("dot", "gv"):
        with open(path, "w", encoding="utf-8") as file:
            file.write(text)
        return
    program = shutil.which("dot")
    if program is None:
        raise RuntimeError(
            f"plot_graph: rendering '{path}' needs Graphviz's dot program, which is not on PATH; "
            "install Graphviz, or write a .dot file and render it elsewhere"
        )
    result = subprocess.run([program, f"-T{extension}", "-o", path], input=text, text=True, capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"plot_graph: dot failed to write '{path}': {result.stderr.strip()}")
