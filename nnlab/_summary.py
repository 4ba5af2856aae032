"""``nnlab.summary``: a model's layers with their output shapes and parameter counts,
as torchinfo's ``summary`` and Keras' ``Model.summary`` print them."""

import copy
from typing import Any, NamedTuple, Optional

import torch

from .layers.base import Layer

__all__ = ["Summary", "SummaryRow", "summary"]


class SummaryRow(NamedTuple):
    """One layer of the model: ``name`` its path of child names (``"sequence.0"``, the
    prefix of its keys in ``state_dict``; ``""`` for the model itself), ``layer`` the
    layer, ``output_shape`` the shape its call gave (batch first; a tuple of shapes for a
    tuple of outputs; None when the forward pass did not call it), ``num_params`` the
    scalars of its own parameters (not its children's) not counted in an earlier row."""

    name: str
    layer: Layer
    output_shape: Optional[Any]
    num_params: int


class Summary:
    """What ``summary`` found: ``rows`` (SummaryRow, one per place of a layer in the
    model, parents before children), ``total_params`` (every parameter once: the sum of
    the rows' counts), ``total_buffer_elements``, ``input_shape`` and ``dtype``.
    ``str()`` is the printed table."""

    def __init__(self, rows, input_shapes, dtype, total_buffer_elements):
        self.rows = rows
        self.input_shapes = input_shapes
        self.dtype = dtype
        self.total_params = sum(row.num_params for row in rows)
        self.total_buffer_elements = total_buffer_elements

    def __repr__(self):
        return f"Summary(total_params={self.total_params}, rows={len(self.rows)})"

    def __str__(self):
        header = ("Layer (type)", "Output shape", "Param #")
        first_places = {}
        for row in self.rows:
            first_places.setdefault(id(row.layer), row.name)
        cells = [header] + [
            (_label(row, first_places[id(row.layer)]), _format_shape(row.output_shape), f"{row.num_params:,}")
            for row in self.rows
        ]
        widths = [max(len(line[column]) for line in cells) for column in range(3)]
        rule = "=" * (sum(widths) + 4)
        lines = [rule, _table_line(header, widths), rule]
        lines += [_table_line(line, widths) for line in cells[1:]]
        inputs = ", ".join(_format_shape(shape) for shape in self.input_shapes)
        lines += [
            rule,
            f"Total params: {self.total_params:,}",
            f"Buffer elements (saved, not trained): {self.total_buffer_elements:,}",
            f"Input: {inputs}, {str(self.dtype).replace('torch.', '')}",
            rule,
        ]
        return "\n".join(lines)


def _table_line(cells, widths):
    first, shape, count = cells
    return f"{first.ljust(widths[0])}  {shape.ljust(widths[1])}  {count.rjust(widths[2])}"


def _label(row, first_place):
    """The row's last name and type, indented by its depth; a layer seen at an earlier
    place says where (its parameters are counted there)."""
    depth = row.name.count(".") + 1 if row.name else 0
    kind = type(row.layer).__name__
    if first_place != row.name:
        kind += f", shared with {first_place}"
    text = kind if not row.name else f"{row.name.rsplit('.', 1)[-1]} ({kind})"
    return "  " * depth + text


def _format_shape(shape):
    if shape is None:
        return "--"
    if len(shape) > 0 and not isinstance(shape[0], int):
        return "[" + ", ".join(_format_shape(item) for item in shape) + "]"
    return "(" + ", ".join(str(size) for size in shape) + ("," if len(shape) == 1 else "") + ")"


def _shape_of(value):
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)):
        return tuple(_shape_of(item) for item in value)
    return None


def layer_places(layer, name=""):
    """(path, layer) for the model and every sub-layer, parents first; a layer at
    several places is listed at each."""
    yield name, layer
    for child_name, child in layer.named_children():
        yield from layer_places(child, f"{name}.{child_name}" if name else child_name)


def _input_shapes(input_shape):
    """A list of shapes (without the batch) from one shape, an int, or a list of shapes."""
    if isinstance(input_shape, int) and not isinstance(input_shape, bool):
        return [(input_shape,)]
    if isinstance(input_shape, (tuple, list)) and input_shape and all(isinstance(s, (tuple, list)) for s in input_shape):
        return [tuple(shape) for shape in input_shape]
    if isinstance(input_shape, (tuple, list)) and all(
        isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in input_shape
    ):
        return [tuple(input_shape)]
    raise ValueError(
        f"summary: input_shape must be the shape of one sample without the batch, e.g. (1, 28, 28), or a list "
        f"of such shapes for a model of several inputs; got {input_shape!r}"
    )


def _recording(layer, calls):
    """Makes ``layer`` (a throwaway copy) append each call's output shape to ``calls``."""
    forward = layer.forward

    def recorded_forward(*args, **kw):
        out = forward(*args, **kw)
        calls.append(_shape_of(out))
        return out

    layer.forward = recorded_forward


def summary(model, input_shape, batch_size=2, dtype=torch.float32, print_fn=print):
    """Prints and returns a ``Summary`` of ``model``: every layer (at each place it has
    in the model, parents before children) with its output shape and parameter count,
    then the totals; a parameter shared by several places is counted at its first.

    The shapes come from one forward pass of ``batch_size`` zero samples of
    ``input_shape`` (one sample's shape, without the batch; a list of shapes for a
    graph model of several inputs) in ``dtype``, run on a copy of the model in eval
    mode: the model itself, its caches and running statistics are untouched.
    ``print_fn`` gets the table (None: nothing printed). Works for any Layer:
    Sequential, the builders (MLP, CNN, ResNet), graph models (``nnlab.graph.Model``).

    Example::

        >>> from nnlab import summary
        >>> from nnlab.models import MLP
        >>> table = summary(MLP(64, 10, hidden_features=(128,)), (64,))
        ==============================================
        Layer (type)             Output shape  Param #
        ==============================================
        MLP                      (2, 10)             0
          sequence (Sequential)  (2, 10)             0
            0 (Linear)           (2, 128)        8,320
            1 (ReLU)             (2, 128)            0
            2 (Linear)           (2, 10)         1,290
        ==============================================
        Total params: 9,610
        Buffer elements (saved, not trained): 0
        Input: (64,), float32
        ==============================================
        >>> table.total_params
        9610
    """
    if not isinstance(model, Layer):
        raise TypeError(f"summary: model must be an nnlab Layer, got {type(model).__name__}")
    shapes = _input_shapes(input_shape)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"summary: batch_size must be an int >= 1, got {batch_size!r}")
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"summary: dtype must be a torch.dtype, got {dtype!r}")
    probe = copy.deepcopy(model).eval()
    if dtype.is_floating_point:
        probe.to(dtype=dtype)
    calls = {}
    for _, layer in layer_places(probe):
        if id(layer) not in calls:
            calls[id(layer)] = []
            _recording(layer, calls[id(layer)])
    device = next((param.device for param in probe.parameters()), torch.device("cpu"))
    inputs = [torch.zeros((batch_size, *shape), dtype=dtype, device=device) for shape in shapes]
    try:
        probe(*inputs)
    except (ValueError, TypeError, RuntimeError, IndexError) as error:
        given = ", ".join(_format_shape((batch_size, *shape)) for shape in shapes)
        raise ValueError(f"summary: {type(model).__name__} cannot take zeros of shape {given}: {error}") from error
    result = Summary(_rows(model, probe, calls), shapes, dtype, sum(buffer.numel() for buffer in model.buffers()))
    if print_fn is not None:
        print_fn(str(result))
    return result


def _rows(model, probe, calls):
    """The rows, walking the model and its probe (the same structure) side by side."""
    rows = []
    counted = set()
    visits = {}
    for (name, layer), (_, copied) in zip(layer_places(model), layer_places(probe)):
        children = {id(param) for _, child in layer.named_children() for param in child.parameters()}
        own = [param for param in layer.parameters() if id(param) not in children and id(param) not in counted]
        counted.update(id(param) for param in own)
        shapes = calls[id(copied)]
        visit = visits.get(id(copied), 0)
        visits[id(copied)] = visit + 1
        shape = shapes[min(visit, len(shapes) - 1)] if shapes else None
        rows.append(SummaryRow(name, layer, shape, sum(param.numel() for param in own)))
    return rows
