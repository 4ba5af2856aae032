"""The inputs of a layer under check, as ``nnlab.grad_compare`` reads them: the tensors of
an input that nests (an LSTM's ``(x, (h_0, c_0))``) in order, with their names, and the
gradients backward returns for them, split one per floating-point tensor.

Names: ``input`` for a layer of one input, ``input#1``, ``input#2``, ... for several; the
tensors inside a tuple or list input get its name with ``.1``, ``.2``, ... (that LSTM's
``h_0`` and ``c_0`` are ``input#2.1`` and ``input#2.2``).
"""

import torch

from .jacobians import Flat, as_tuple, clones, like

__all__ = ["copies", "flat_inputs", "floating", "input_gradients", "input_names", "leaf_names"]


def flat_inputs(x):
    """The tensors of ``x`` (the input, or a tuple of the inputs of a layer that takes
    several, each a tensor or a tuple or list of them, nested: an LSTM's
    ``(x, (h_0, c_0))``) in order, as a ``Flat`` with x's nesting, so that ``pack`` gives
    back the arguments of the forward; TypeError naming anything else in it."""
    inputs = as_tuple(x)
    parts = [_flat_input(part, name) for part, name in zip(inputs, _top_names(len(inputs)))]
    return Flat([tensor for part in parts for tensor in part], tuple(part.nesting for part in parts))


def _flat_input(value, name):
    if isinstance(value, torch.Tensor):
        return Flat((value,), None)
    if not isinstance(value, (tuple, list)) or not value:
        raise TypeError(
            f"check_layer: {name} is {_described(value)}; expected a tensor, or a tuple or list of tensors (they may nest)"
        )
    parts = [_flat_input(part, child) for part, child in zip(value, _child_names(name, len(value)))]
    # A list stays a list when the arguments are packed again.
    return Flat([tensor for part in parts for tensor in part], type(value)(part.nesting for part in parts))


def _described(value):
    """What a value is, for an error: ``a NoneType``, ``an empty tuple``."""
    return f"an empty {type(value).__name__}" if isinstance(value, (tuple, list)) else f"a {type(value).__name__}"


def _top_names(count):
    """``input``, or ``input#1``, ``input#2``, ... for a layer of several inputs."""
    if count == 1:
        return ["input"]
    return [f"input#{index}" for index in range(1, count + 1)]


def _child_names(name, count):
    """The names of the parts of a tuple or list input: an LSTM's (h_0, c_0), its input#2, has
    input#2.1 and input#2.2."""
    return [f"{name}.{index}" for index in range(1, count + 1)]


def leaf_names(nesting):
    """The name of every input tensor, in order, for inputs nested as ``nesting``."""
    return [leaf for part, name in zip(nesting, _top_names(len(nesting))) for leaf in _names_under(part, name)]


def _names_under(nesting, name):
    if nesting is None:
        return [name]
    return [leaf for part, child in zip(nesting, _child_names(name, len(nesting))) for leaf in _names_under(part, child)]


def input_names(inputs):
    """The names of the floating-point input tensors, in order (see ``flat_inputs``)."""
    return [name for name, x in zip(leaf_names(inputs.nesting), inputs) if x.is_floating_point()]


def copies(inputs):
    """Detached copies of the input tensors, nested alike."""
    return like(inputs, clones(inputs))


def floating(tensors):
    """The floating-point tensors, in order: of a layer's buffers, the running statistics
    to pair between a layer and a module (not counters such as ``num_batches_tracked``);
    of its inputs, those backward returns a gradient for (not masks, indices or labels)."""
    return [t for t in tensors if t.is_floating_point()]


def input_gradients(returned, inputs, add_problem):
    """What backward returned as one gradient (or None) per floating-point input tensor,
    each breach handed to ``add_problem(name or None, sentence)``. backward returns them
    nested like the inputs, those of no floating-point tensor left out: a tensor when
    there is one (a tuple of one input opened), None when there is none (an Embedding's
    indices), otherwise a tuple (an LSTM's ``(dx, (dh_0, dc_0))``; a
    MultiheadAttention's ``(dquery, dkey, dvalue)``, its key_padding_mask left out)."""
    names = input_names(inputs)
    tensors = floating(inputs)
    if not tensors:
        if returned is not None:
            add_problem(None, f"backward returned {_described(returned)}, not None: the layer has no floating-point input")
        return []
    expected = _expected_gradients(inputs.nesting, iter(inputs), _top_names(len(inputs.nesting)))
    if len(tensors) == 1:
        expected = None
    elif len(expected) == 1:
        expected = expected[0][1]
    gradients = _split_gradients(returned, expected, "", add_problem)
    for name, dx, x in zip(names, gradients, tensors):
        _check_dx(name, dx, x, add_problem)
    return gradients


def _expected_gradients(nesting, tensors, names):
    """The gradients backward returns for the parts nested as ``nesting`` (of the input
    tensors ``tensors``, an iterator, named ``names``): a list of (name, what it returns
    for that part): None for a floating-point tensor, such a list for a tuple or list;
    parts without a floating-point tensor left out."""
    expected = []
    for part, name in zip(nesting, names):
        if part is None:
            if next(tensors).is_floating_point():
                expected.append((name, None))
            continue
        inner = _expected_gradients(part, tensors, _child_names(name, len(part)))
        if inner:
            expected.append((name, inner))
    return expected


def _split_gradients(returned, expected, name, add_problem):
    """``returned`` split into one gradient (None where it cannot be told) per
    floating-point tensor of ``expected`` (see ``_expected_gradients``), which describes the
    part named ``name`` ("" for all the inputs)."""
    if expected is None:
        return [returned]
    if isinstance(returned, (tuple, list)) and len(returned) == len(expected):
        return [
            gradient
            for part, (child, inner) in zip(returned, expected)
            for gradient in _split_gradients(part, inner, child, add_problem)
        ]
    got = f"a {type(returned).__name__} of {len(returned)}" if isinstance(returned, (tuple, list)) else _described(returned)
    where = f" for its {name}" if name else ""
    add_problem(None, f"backward returned {got}{where}, not a tuple of {len(expected)} gradients, one per input")
    return [None] * _count(expected)


def _count(expected):
    return sum(1 if inner is None else _count(inner) for _, inner in expected)


def _check_dx(name, dx, x, add_problem):
    if dx is None:
        add_problem(name, f"backward returned None instead of the gradient w.r.t. its {name}")
    elif not isinstance(dx, torch.Tensor):
        add_problem(name, f"backward returned a {type(dx).__name__} instead of a tensor for its {name}")
    elif dx.shape != x.shape:
        add_problem(
            name, f"backward returned a gradient of shape {tuple(dx.shape)} for an {name} of shape {tuple(x.shape)}"
        )
    elif dx.dtype != x.dtype:
        add_problem(name, f"backward returned a {dx.dtype} gradient for a {x.dtype} {name}")
