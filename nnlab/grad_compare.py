"""Checks a layer's hand-written backward pass against independent references:
torch autograd through the layer's own forward, central finite differences in float64,
and a ``torch.nn`` module of the same kind with the layer's weights copied in.

This module (with the tests and ``TorchTrainer``) is where nnlab uses autograd: to
judge the layers, never to compute their gradients.

Every checker takes ``x``, the input, or a tuple of inputs for a layer that takes
several (``layer(*x)``, whose backward returns one gradient per input: ``Add``,
``Concat``, a graph ``Model`` of several inputs); their gradients come first, named
``input#1``, ``input#2``, ...
"""

import contextlib
import copy

import torch


def rel_error(actual, expected):
    """``||actual - expected|| / max(||expected||, 1e-12)``, computed in float64."""
    diff = (actual.double() - expected.double()).norm().item()
    return diff / max(expected.double().norm().item(), 1e-12)


def _as_tuple(outputs):
    return outputs if isinstance(outputs, tuple) else (outputs,)


def _tensor_names(inputs, params):
    """Names for the input gradients (``input``, or ``input#1``, ``input#2``, ... for a
    layer of several inputs), then ``param#01``, ``param#02``, ..."""
    if len(inputs) == 1:
        names = ["input"]
    else:
        names = [f"input#{index}" for index in range(1, len(inputs) + 1)]
    return names + [f"param#{index:02d}" for index in range(1, len(params) + 1)]


def _random_douts(outputs, seed):
    """One standard-normal upstream gradient per output, reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(o.shape, generator=generator, dtype=o.dtype).to(o.device) for o in outputs)


def _pack(douts):
    return douts if len(douts) > 1 else douts[0]


def _run_forward(layer, x, y, seed):
    """The layer's forward under a fixed seed, so that Dropout draws the same mask each
    time; ``x`` is the input, or a tuple of the inputs of a layer that takes several."""
    torch.manual_seed(seed)
    kw = {} if y is None else {"y": y}
    return _as_tuple(layer(*_as_tuple(x), **kw))


def _layers(layer):
    yield layer
    for _, child in layer.named_children():
        yield from _layers(child)


@contextlib.contextmanager
def _preserved(layer):
    """Restores the layer tree's attributes (caches), gradients, buffers and torch's
    RNG state on exit, so that a check leaves everything as it found it."""
    attributes = [(node, dict(vars(node))) for node in _layers(layer)]
    grads = [grad.clone() for _, grad in layer.params()]
    buffers = [buffer.clone() for buffer in layer.buffers()]
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            for (_, grad), saved in zip(layer.params(), grads):
                grad.copy_(saved)
            for buffer, saved in zip(layer.buffers(), buffers):
                buffer.copy_(saved)
            for node, saved in attributes:
                vars(node).clear()
                vars(node).update(saved)


def _own_gradients(layer, x, y, seed):
    """(outputs, douts, input gradients, parameter gradients) from the layer's own
    forward and backward; one input gradient per input."""
    layer.zero_grad()
    outputs = _run_forward(layer, x, y, seed)
    douts = _random_douts(outputs, seed + 1)
    dxs = list(_as_tuple(layer.backward(_pack(douts))))
    return outputs, douts, dxs, [grad.clone() for _, grad in layer.params()]


def _autograd_gradients(layer, x, y, seed, douts):
    """Input and parameter gradients of sum(forward * douts) by torch autograd."""
    params = [param for param, _ in layer.params()]
    x_refs = tuple(x.detach().clone().requires_grad_(True) for x in _as_tuple(x))
    for param in params:
        param.requires_grad_(True)
    try:
        outputs = _run_forward(layer, x_refs, y, seed)
        grads = torch.autograd.grad(outputs, list(x_refs) + params, douts, allow_unused=True)
    finally:
        for param in params:
            param.requires_grad_(False)
    wrt = list(x_refs) + params
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt)]


def gradient_errors(layer, x, y=None, seed=42):
    """Relative errors (input first, then each parameter in ``params()`` order) between
    the layer's backward and autograd on the same forward; leaves everything as found."""
    with _preserved(layer):
        _, douts, dxs, own = _own_gradients(layer, x, y, seed)
        reference = _autograd_gradients(layer, x, y, seed, douts)
    return [rel_error(a, b) for a, b in zip(dxs + own, reference)]


def compare_layer_to_torch(layer, x, y=None, seed=42):
    """Runs the layer forward and its own ``backward`` with a random upstream gradient,
    then the same forward under torch autograd with the same seed; returns the norm of
    the difference for the input gradient first, then for each parameter in
    ``params()`` order, printing one line for each. Leaves the layer, its gradients,
    its buffers, ``x`` and torch's RNG as it found them."""
    with _preserved(layer):
        _, douts, dxs, own = _own_gradients(layer, x, y, seed)
        reference = _autograd_gradients(layer, x, y, seed, douts)
    diffs = [(a.double() - b.double()).norm().item() for a, b in zip(dxs + own, reference)]
    for name, diff in zip(_tensor_names(dxs, own), diffs):
        print(f"{name:<8} diff={diff:.3f}")
    return diffs


def _objective(layer, x, y, seed, douts):
    outputs = _run_forward(layer, x, y, seed)
    return sum((o * d).sum().item() for o, d in zip(outputs, douts))


def _numeric_gradient(tensor, objective, eps):
    """Central differences of ``objective()`` w.r.t. every entry of ``tensor``, which is
    perturbed in place one entry at a time and restored."""
    flat = tensor.view(-1)
    numeric = torch.empty_like(flat)
    for index in range(flat.numel()):
        original = flat[index].item()
        flat[index] = original + eps
        plus = objective()
        flat[index] = original - eps
        minus = objective()
        flat[index] = original
        numeric[index] = (plus - minus) / (2 * eps)
    return numeric.view_as(tensor)


def _finite_difference_pairs(layer, x, y, eps, seed):
    """(name, tensor, analytic gradient, numeric gradient) for the input and each
    parameter of a float64 copy of the layer, the copy's backward against central
    differences of sum(forward * douts)."""
    layer64 = copy.deepcopy(layer).to(dtype=torch.float64)
    x64 = tuple(x.detach().to(torch.float64).clone() for x in _as_tuple(x))
    y64 = y.detach().to(torch.float64) if y is not None and y.is_floating_point() else y
    _, douts, dxs, own = _own_gradients(layer64, x64, y64, seed)
    params = [param for param, _ in layer64.params()]
    names = _tensor_names(x64, params)
    for name, tensor, analytic in zip(names, list(x64) + params, dxs + own):
        numeric = _numeric_gradient(tensor, lambda: _objective(layer64, x64, y64, seed, douts), eps)
        yield name, tensor, analytic, numeric


def finite_difference_errors(layer, x, y=None, eps=1e-6, seed=42):
    """Relative errors (input first, then each parameter) between the backward of a
    float64 copy of the layer and central finite differences; the layer is untouched."""
    return [rel_error(analytic, numeric) for _, _, analytic, numeric in _finite_difference_pairs(layer, x, y, eps, seed)]


def gradcheck(layer, x, y=None, eps=1e-6, atol=1e-5, rtol=1e-3, seed=42):
    """Central finite differences in float64, on a float64 copy of the layer and of x,
    against the layer's ``backward``, for the input and every parameter. Returns True,
    or raises AssertionError naming the tensor and the worst element when
    ``|analytic - numeric| > atol + rtol * |numeric|`` anywhere. Costs two forward
    passes per input and parameter entry: use small inputs."""
    for name, tensor, analytic, numeric in _finite_difference_pairs(layer, x, y, eps, seed):
        excess = (analytic - numeric).abs() - (atol + rtol * numeric.abs())
        if excess.numel() and excess.max() > 0:
            worst = int(excess.argmax())
            index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), tensor.shape))
            raise AssertionError(
                f"gradcheck failed for {layer!r}: {name}{list(index)} analytic "
                f"{analytic.reshape(-1)[worst].item():.6g} vs numeric {numeric.reshape(-1)[worst].item():.6g}"
            )
    return True


def compare_to_module(layer, module, x, y=None, seed=42):
    """Copies the layer's parameters (and floating buffers) into ``module``, an
    independent ``torch.nn`` module of the same kind, puts it in the layer's mode, runs
    both on x with the same random upstream gradient and returns
    ``{'output': max abs diff, 'input': rel error, 'param#01': rel error, ...}``
    (``'input#1'``, ``'input#2'``, ... when x is a tuple of inputs)."""
    layer_params = [param for param, _ in layer.params()]
    module_params = list(module.parameters())
    if len(layer_params) != len(module_params):
        raise ValueError(
            f"compare_to_module: {layer!r} has {len(layer_params)} parameters, "
            f"{type(module).__name__} has {len(module_params)}"
        )
    for index, (source, target) in enumerate(zip(layer_params, module_params), start=1):
        if source.shape != target.shape:
            raise ValueError(
                f"compare_to_module: param#{index:02d} has shape {tuple(source.shape)} in "
                f"{layer!r} but {tuple(target.shape)} in {type(module).__name__}"
            )
    module_buffers = [b for b in module.buffers() if b.is_floating_point()]
    with torch.no_grad():
        for source, target in zip(layer_params, module_params):
            target.copy_(source)
        for source, target in zip(layer.buffers(), module_buffers):
            target.copy_(source)
    module.train(layer.training)

    with _preserved(layer):
        outputs, douts, dxs, own = _own_gradients(layer, x, y, seed)
    x_refs = [x.detach().clone().requires_grad_(True) for x in _as_tuple(x)]
    torch.manual_seed(seed)
    reference = _as_tuple(module(*x_refs) if y is None else module(*x_refs, y))
    wrt = x_refs + module_params
    grads = torch.autograd.grad(reference, wrt, douts, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt)]

    result = {"output": max((o - r.detach()).abs().max().item() for o, r in zip(outputs, reference))}
    for name, mine, theirs in zip(_tensor_names(dxs, own), dxs + own, grads):
        result[name] = rel_error(mine, theirs)
    return result
