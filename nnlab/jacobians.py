"""Jacobians of nnlab layers built from their hand-written backward passes, their norms,
gradient norms of torch functions, and ``preserved``: the context every tool here and in
``nnlab.grad_compare`` runs a layer in, so that it leaves the layer as it found it.

A layer's backward is its vector-Jacobian product: ``backward(dout) = J^T dout``. With
``dout`` the one-hot vector of output element i it returns row i of the Jacobian, so the
full Jacobian costs one VJP per output element. When the layer treats every sample of
the batch on its own, many rows come out of one backward: the input is repeated K times
along the batch dimension and each copy gets its own one-hot ``dout``.

``nnlab.grad_compare`` re-exports ``jacobian``, ``jacobian_norm`` and ``gradient_norm``.
"""

import contextlib
import copy
import math

import torch

from .layers import Layer

__all__ = [
    "CHUNK_ELEMENTS",
    "as_tuple",
    "Flat",
    "clones",
    "flatten",
    "forward_outputs",
    "gradient_norm",
    "is_tensor_pair",
    "jacobian",
    "jacobian_norm",
    "like",
    "pack",
    "preserved",
]

# The batched VJPs feed K copies of the input at once, K * x.numel() <= this many elements.
CHUNK_ELEMENTS = 1 << 22


def _layer_tree(layer):
    yield layer
    for _, child in layer.named_children():
        yield from _layer_tree(child)


def _shallow_copy(value):
    return copy.copy(value) if isinstance(value, (dict, list)) else value


@contextlib.contextmanager
def preserved(layer):
    """Restores on exit what running ``layer`` may change: the attributes of every layer in
    its tree (caches, and the gradient dicts' entries), the values of its parameters,
    gradients and buffers (in place, keeping the tensor objects), every parameter's
    ``requires_grad`` flag, and torch's CPU random-number state."""
    attributes = [(node, {k: _shallow_copy(v) for k, v in vars(node).items()}) for node in _layer_tree(layer)]
    pairs = [pair for pair in layer.params() if is_tensor_pair(pair)]
    saved = [(tensor, tensor.detach().clone()) for pair in pairs for tensor in pair]
    saved += [(buffer, buffer.detach().clone()) for buffer in layer.buffers()]
    flags = [(param, param.requires_grad) for param, _ in pairs]
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            for node, values in attributes:
                vars(node).clear()
                vars(node).update(values)
            for param, flag in flags:
                param.requires_grad_(flag)
            with torch.no_grad():
                for tensor, value in saved:
                    # Only what changed: a copy bumps the tensor's version counter, which
                    # a pending backward checks for in-place changes of what it saved.
                    if not torch.equal(tensor, value):
                        tensor.copy_(value)


def is_tensor_pair(pair):
    return isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(t, torch.Tensor) for t in pair)


def as_tuple(outputs):
    return outputs if isinstance(outputs, tuple) else (outputs,)


class Flat(tuple):
    """Tensors taken in order from a value of tensors nested in tuples (a layer's output,
    such as an LSTM's ``(out, (h_n, c_n))``), with that value's nesting, so that ``pack``
    can nest gradients the same way: ``nesting`` is None for a tensor, a tuple of the
    parts' nestings for a tuple."""

    def __new__(cls, tensors, nesting):
        flat = super().__new__(cls, tensors)
        flat.nesting = nesting
        return flat


def flatten(value, owner="the layer"):
    """``value`` (a tensor, or tuples of them nested) as a ``Flat``; TypeError naming
    ``owner`` when anything in it is neither."""
    if isinstance(value, torch.Tensor):
        return Flat((value,), None)
    if not isinstance(value, tuple) or not value:
        raise TypeError(
            f"{owner} returned {type(value).__name__}; expected a tensor or a tuple of tensors (tuples may nest)"
        )
    parts = [flatten(part, owner) for part in value]
    return Flat([tensor for part in parts for tensor in part], tuple(part.nesting for part in parts))


def like(flat, tensors):
    """``tensors`` (one per tensor of ``flat``) with ``flat``'s nesting: the upstream
    gradients of the outputs ``flat``, ready for ``pack``."""
    return Flat(tensors, flat.nesting)


def pack(douts):
    """The upstream gradient in the form backward takes: for a ``Flat``, nested like the
    output it was made for (a tensor for one output); otherwise a tensor, or a tuple for a
    layer with several outputs."""
    if isinstance(douts, Flat):
        return _nest(iter(douts), douts.nesting)
    return douts if len(douts) > 1 else douts[0]


def _nest(tensors, nesting):
    if nesting is None:
        return next(tensors)
    return type(nesting)(_nest(tensors, part) for part in nesting)


def forward_outputs(layer, inputs, y=None):
    """``layer(*inputs)`` (with ``y=y`` when given) as a ``Flat`` of its output tensors
    (tuples of outputs may nest, as an LSTM's ``(out, (h_n, c_n))``); TypeError naming the
    layer when it returns anything else."""
    outputs = layer(*inputs) if y is None else layer(*inputs, y=y)
    return flatten(outputs, f"{type(layer).__name__}.forward")


def same_values(a, b):
    """True when tensors a and b have the same shape and the same values (NaN equals NaN)."""
    if a.shape != b.shape:
        return False
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


def clones(inputs):
    """Detached copies of a tuple of tensors."""
    return tuple(x.detach().clone() for x in inputs)


def _vjp(layer, outputs, index, flat_positions, shapes):
    """backward of one-hot upstream gradients: ones at ``flat_positions`` of output
    ``index``, zeros elsewhere; the list of input gradients, checked against ``shapes``."""
    douts = [torch.zeros(o.shape, dtype=o.dtype, device=o.device) for o in outputs]
    douts[index].view(-1)[flat_positions] = 1
    returned = layer.backward(pack(like(outputs, douts)))
    gradients = [returned] if len(shapes) == 1 else returned
    ok = isinstance(gradients, (tuple, list)) and len(gradients) == len(shapes)
    if not ok or not all(isinstance(g, torch.Tensor) and g.shape == shape for g, shape in zip(gradients, shapes)):
        got = tuple(returned.shape) if isinstance(returned, torch.Tensor) else type(returned).__name__
        wanted = ", ".join(str(tuple(shape)) for shape in shapes)
        raise ValueError(f"jacobian: {type(layer).__name__}.backward returned {got} for inputs of shape {wanted}")
    return list(gradients)


def jacobian(layer, x, y=None, wrt="input"):
    """The Jacobian of ``layer``'s output w.r.t. its input (``wrt="input"``) or w.r.t. each
    of its parameters (``wrt="params"``), built from the layer's hand-written backward:
    row i is ``backward(e_i)`` for the one-hot upstream gradient e_i.

    Returns, for one output, ``J`` of shape ``out.shape + x.shape`` with
    ``J[i..., j...] = d out[i...] / d x[j...]`` (as ``torch.autograd.functional.jacobian``),
    a tuple of them for x a tuple of inputs (``layer(*x)``), or with ``wrt="params"`` a list
    with one ``out.shape + param.shape`` tensor per entry of ``params()``; a layer with
    several outputs gives a tuple of these, one per output tensor (in order, tuples nested
    in the output opened: an LSTM's ``(out, (h_n, c_n))`` gives three). ``y`` is handed to
    the forward as ``y=`` (losses' targets).

    Batched when the layer treats samples independently, which is checked, not assumed:
    the input has a batch of N >= 2, every output keeps it, the forward draws no random
    numbers (Dropout in training mode does), the forward of the input repeated twice along
    dimension 0 gives the output repeated twice (up to rounding), and two VJPs confined to sample 0
    and to the other samples give zero gradients outside them (BatchNorm in training mode
    fails this: its statistics couple the samples). Then K one-hot rows come from one
    backward over the input repeated K times, in chunks of ``CHUNK_ELEMENTS`` input
    elements. Otherwise (and for several inputs, and always for parameters) one VJP per
    output element after one forward. Leaves the layer, its gradients and torch's RNG as
    it found them.
    """
    if wrt not in ("input", "params"):
        raise ValueError(f"jacobian: wrt must be 'input' or 'params', got {wrt!r}")
    if not isinstance(layer, Layer):
        raise TypeError(f"jacobian: expected an nnlab Layer, got {type(layer).__name__}")
    inputs = as_tuple(x)
    for index, tensor in enumerate(inputs, start=1):
        if not (isinstance(tensor, torch.Tensor) and tensor.is_floating_point()):
            got = f"a {tensor.dtype} tensor" if isinstance(tensor, torch.Tensor) else f"a {type(tensor).__name__}"
            raise TypeError(
                f"jacobian: input {index} is {got}; expected floating-point tensors (nested inputs such as an "
                "LSTM's (x, (h_0, c_0)), masks and indices are not supported: check_layer judges such layers)"
            )
    with preserved(layer):
        if wrt == "params":
            jacobians = _parameter_jacobians(layer, inputs, y)
        else:
            per_output = _input_jacobians(layer, inputs, y)
            jacobians = [per_input[0] if len(inputs) == 1 else tuple(per_input) for per_input in per_output]
    return jacobians[0] if len(jacobians) == 1 else tuple(jacobians)


def _input_jacobians(layer, inputs, y):
    """For each output, the list of its Jacobians w.r.t. each input."""
    rng = torch.get_rng_state()
    outputs = forward_outputs(layer, clones(inputs), y)
    draws_random_numbers = not torch.equal(rng, torch.get_rng_state())
    single = len(inputs) == 1 and y is None
    if single and not draws_random_numbers and _batch_independent(layer, inputs[0], outputs):
        rows = [[_batched_rows(layer, inputs[0], index, o.numel())] for index, o in enumerate(outputs)]
    else:
        # The same random numbers (Dropout's mask) as the forward that was just run.
        torch.set_rng_state(rng)
        outputs = forward_outputs(layer, clones(inputs), y)
        rows = [_rows_one_at_a_time(layer, outputs, index, inputs) for index in range(len(outputs))]
    return [[r.reshape(o.shape + x.shape) for r, x in zip(per_input, inputs)] for per_input, o in zip(rows, outputs)]


def _rows_one_at_a_time(layer, outputs, index, inputs):
    """Jacobian rows of output ``index`` w.r.t. each input, one VJP each, from the
    forward already cached: a list with one (out.numel(), x.numel()) matrix per input."""
    shapes = [x.shape for x in inputs]
    vjps = [_vjp(layer, outputs, index, [i], shapes) for i in range(outputs[index].numel())]
    rows = []
    for k, x in enumerate(inputs):
        if vjps:
            rows.append(torch.stack([gradients[k].reshape(-1) for gradients in vjps]))
        else:
            rows.append(torch.zeros(0, x.numel(), dtype=outputs[index].dtype, device=outputs[index].device))
    return rows


def _repeat(x, copies):
    return x.repeat(copies, *([1] * (x.dim() - 1)))


def _batch_independent(layer, x, outputs):
    """True when each sample's output depends on that sample alone (see ``jacobian``)."""
    batch = x.shape[0] if x.dim() >= 1 else 0
    if batch < 2 or any(o.dim() == 0 or o.shape[0] != batch for o in outputs):
        return False
    try:
        doubled = forward_outputs(layer, (_repeat(x, 2),), None)
    except (ValueError, TypeError, RuntimeError):
        return False  # dimension 0 is not a batch dimension for this layer (e.g. channels)
    if len(doubled) != len(outputs) or not all(_same_up_to_rounding(d, _repeat(o, 2)) for d, o in zip(doubled, outputs)):
        return False
    forward_outputs(layer, (x.clone(),), None)
    generator = torch.Generator().manual_seed(0)
    for first, rest in ((slice(0, 1), slice(1, None)), (slice(1, None), slice(0, 1))):
        douts = [torch.zeros_like(o) for o in outputs]
        for dout in douts:
            dout[first] = torch.rand(dout[first].shape, generator=generator, dtype=dout.dtype).to(dout.device)
        dx = layer.backward(pack(like(outputs, douts)))
        if not isinstance(dx, torch.Tensor) or dx.shape != x.shape or dx[rest].count_nonzero() > 0:
            return False
    return True


def _same_up_to_rounding(a, b):
    """Equal shapes and values within 16 units of rounding of b's largest entry (a matrix
    product over more rows may round differently; another dropout mask or batch
    statistics differ by far more)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not a.is_floating_point() or b.numel() == 0:
        return torch.equal(a, b)
    tolerance = 16 * torch.finfo(b.dtype).eps * b.abs().max()
    return bool(((a - b).abs() <= tolerance).all())


def _batched_rows(layer, x, index, count):
    """All ``count`` Jacobian rows of output ``index``, K per backward: copy k of the
    input repeated K times gets the one-hot of row k, so its input gradient is that row."""
    per_chunk = max(1, CHUNK_ELEMENTS // max(x.numel(), 1))
    rows = []
    for start in range(0, count, per_chunk):
        copies = min(per_chunk, count - start)
        outputs = forward_outputs(layer, (_repeat(x, copies),), None)
        size = outputs[index].numel() // copies
        positions = [k * size + start + k for k in range(copies)]
        (dx,) = _vjp(layer, outputs, index, positions, [(copies * x.shape[0],) + x.shape[1:]])
        rows.append(dx.reshape(copies, -1))
    return torch.cat(rows) if rows else torch.zeros(0, x.numel(), dtype=x.dtype, device=x.device)


def _parameter_jacobians(layer, inputs, y):
    """For each output, the list of Jacobians w.r.t. each parameter: one VJP per output
    element, reading the gradients it adds (zeroed before each)."""
    pairs = layer.params()
    outputs = forward_outputs(layer, clones(inputs), y)
    result = []
    for index, out in enumerate(outputs):
        rows = [torch.zeros(out.numel(), param.numel(), dtype=param.dtype, device=param.device) for param, _ in pairs]
        for i in range(out.numel()):
            for _, grad in pairs:
                grad.zero_()
            _vjp(layer, outputs, index, [i], [x.shape for x in inputs])
            for row, (_, grad) in zip(rows, pairs):
                row[i] = grad.reshape(-1)
        result.append([row.reshape(out.shape + param.shape) for row, (param, _) in zip(rows, pairs)])
    return result


def _frobenius(jacobians):
    """sqrt of the sum of squares of every entry of a tensor or of nested tuples of them."""
    if isinstance(jacobians, torch.Tensor):
        return jacobians.double().norm().item()
    return math.sqrt(sum(_frobenius(j) ** 2 for j in jacobians))


def jacobian_norm(layer_or_fn, x):
    """The Frobenius norm ``||J||_F = sqrt(sum_ij (d out_i / d x_j)^2)`` of the Jacobian at x:
    for an nnlab Layer, of ``jacobian(layer, x)`` (its hand-written backward); for any other
    callable built from torch operations, of ``torch.autograd.functional.jacobian(fn, x)``.
    Several outputs count together. Returns a float."""
    if isinstance(layer_or_fn, Layer):
        return _frobenius(jacobian(layer_or_fn, x))
    if not callable(layer_or_fn):
        raise TypeError(f"jacobian_norm: expected a Layer or a callable, got {type(layer_or_fn).__name__}")
    return _frobenius(torch.autograd.functional.jacobian(layer_or_fn, x.detach().clone()))


def gradient_norm(fn, *tensors):
    """The Euclidean norm of the gradient of the scalar ``fn(*tensors)`` w.r.t. all the
    tensors together, ``sqrt(sum_k ||d fn / d tensors[k]||^2)``, by autograd (``fn`` is any
    function of torch operations). The tensors themselves are not touched (fn gets
    copies); a tensor fn does not use contributes 0. Returns a float."""
    if not tensors:
        raise ValueError("gradient_norm: give at least one tensor")
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    value = fn(*leaves)
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"gradient_norm: fn must return a scalar tensor, got {got}")
    if not value.requires_grad:
        return 0.0
    grads = torch.autograd.grad(value.reshape(()), leaves, allow_unused=True)
    return math.sqrt(sum(g.double().square().sum().item() for g in grads if g is not None))
