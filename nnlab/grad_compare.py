"""Checks a layer's hand-written backward pass against independent references: torch
autograd through the layer's own forward, the layer's ``torch.nn`` twin under autograd
(where it has one), and central finite differences in float64; and checks the contract
a backward must keep. Also re-exports the Jacobian tools of ``nnlab.jacobians`` and
measures equivariance.

This module (with the tests and ``TorchTrainer``) is where nnlab uses autograd: to
judge the layers, never to compute their gradients.

**The error measure.** A gradient ``a`` (the layer's) is compared with a reference ``b``
elementwise, with an absolute floor, as ``torch.allclose`` does::

    |a - b| <= atol + rtol * |b|      with atol = rtol * s

where s is the scale of that tensor (the input's gradient, or one parameter's), judged
on its own: the largest |entry| of its reference, but no less than the error the
reference itself may carry, divided by rtol. For autograd and the twin that error is
rounding: ``NOISE_ROUNDINGS`` units of rounding of the largest |entry| of every reference
tensor of the check (a gradient that is truly 0, as a bias followed by BatchNorm has, is
a sum that cancels and keeps the rounding of its terms). For finite differences it is
the rounding of the differenced objective plus, where they disagree with the layer,
the largest spread between differences of step h and 2h. The error reported is the smallest rtol that passes::

    error(a, b) = max_i |a_i - b_i| / (s + |b_i|)

so a reference of exactly 0 with a rounding-level difference passes, while a gradient
that is wrong by more than rtol of its own size fails, however small it is beside the
other gradients of the check (a bias gradient beside the weight gradient of inputs of
size 1e6). A missing or misshapen gradient has error inf.

Every check takes ``x``, the input, or a tuple of inputs for a layer that takes several
(``layer(*x)``, whose backward returns one gradient per input: ``Add``, ``Concat``, a
graph ``Model`` of several inputs); their gradients come first, named ``input#1``,
``input#2``, ... An input may itself be a tuple or list of tensors, nested (an LSTM's
``(x, (h_0, c_0))``): its tensors are named after it, ``input#2.1`` and ``input#2.2``
for that ``h_0`` and ``c_0``, and backward returns their gradients nested the same way
(``(dx, (dh_0, dc_0))``). Only floating-point input tensors have gradients: a boolean
mask, indices or labels among the inputs (a ``key_padding_mask``, an ``Embedding``'s
indices) get none and are left out of what backward returns, as the layer contract says
(``(dquery, dkey, dvalue)``; None for a layer with no floating-point input). A float mask
cannot be told from an input, so it is expected to get a gradient: hand the checks a
boolean one.

A layer may return a tensor, a tuple of them, or tuples nested (an LSTM's
``(out, (h_n, c_n))``): its output tensors are compared in that order (``output[0]``,
``output[1]``, ...), and its backward is handed their upstream gradients nested the
same way.

**The contract** every check verifies (each breach is named in the verdict):
the forward is deterministic under a fixed torch seed (one random from numpy's or
Python's RNG cannot be judged, and fails as such); the layer gets its own copies of x
and of the upstream gradient, and neither may change in place; backward returns a
gradient of each floating-point input tensor's shape and dtype; ``params()`` pairs each parameter with a gradient of
its shape; backward adds into those same gradient tensors
(two forward/backward passes leave twice the gradient of one).

Every check leaves the layer (caches, parameters, gradients, buffers, ``requires_grad``
flags), ``x`` and torch's random-number state as it found them.
"""

import copy
import math
from typing import NamedTuple

import torch

from .jacobians import (
    flatten,
    forward_outputs,
    gradient_norm,
    is_tensor_pair,
    jacobian,
    jacobian_norm,
    like,
    pack,
    preserved,
    same_values,
)
from ._equivariance import equivariance_difference, equivariance_error, rotate90, shift
from ._nested_inputs import copies, flat_inputs, floating, input_gradients, input_names, leaf_names
from ._twins import torch_twin
from . import _error_measure as measure
from ._error_measure import NOISE_ROUNDINGS, Comparison, TensorError

__all__ = [
    "Comparison",
    "TensorError",
    "Verdict",
    "backward_before_forward",
    "check_layer",
    "compare_layer_to_torch",
    "compare_to_module",
    "equivariance_difference",
    "equivariance_error",
    "finite_difference_errors",
    "gradcheck",
    "gradient_errors",
    "gradient_norm",
    "jacobian",
    "jacobian_norm",
    "rotate90",
    "shift",
    "tie_heavy",
    "torch_twin",
]

# The project's gradient tolerances (rtol in the measure above) for the autograd and
# twin comparisons, by dtype.
RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}
# Finite differences (float64, central, step 1e-6) are accurate to about 1e-9 of the scale.
FINITE_DIFFERENCE_RTOL = 1e-6
# One-sided differences that disagree by more than this fraction of the scale mark a kink.
KINK_RTOL = 1e-4


class Verdict:
    """The outcome of ``check_layer``: the comparisons with each reference and the
    contract breaches found. ``passed`` is True when there is no breach and every
    comparison is within its tolerance; ``str(verdict)`` explains."""

    def __init__(self, layer):
        name = repr(layer).splitlines()[0]
        # A subclass that keeps its parent's repr is named too.
        self.layer = name if name.startswith(type(layer).__name__) else f"{type(layer).__name__} ({name})"
        self.comparisons = []
        self.problems = []  # (tensor name, or None for the whole layer; sentence)
        self.tensor_names = []

    @property
    def passed(self):
        return not self.problems and all(c.passed for c in self.comparisons)

    def comparison(self, reference):
        return next((c for c in self.comparisons if c.reference == reference), None)

    def add_problem(self, name, sentence):
        if (name, sentence) not in self.problems:
            self.problems.append((name, sentence))

    def errors(self, references):
        """Per tensor (input, then each parameter), the largest error against the named
        references; inf for a tensor a contract breach concerns."""
        errors = {name: 0.0 for name in self.tensor_names}
        for comparison in self.comparisons:
            if comparison.reference in references:
                for tensor in comparison.tensors:
                    errors[tensor.name] = max(errors.get(tensor.name, 0.0), tensor.error)
        for name, _ in self.problems:
            for key in errors if name is None else [name]:
                errors[key] = math.inf
        return [errors[name] for name in self.tensor_names]

    def details(self):
        """One line per contract breach, then one per comparison."""
        return [sentence for _, sentence in self.problems] + [c.describe() for c in self.comparisons]

    def __str__(self):
        lines = [f"{self.layer}: {'ok' if self.passed else 'FAIL'}"]
        return "\n  ".join(lines + self.details())


# Running the layer ------------------------------------------------------------------------


def _run_forward(layer, inputs, y, seed):
    """The layer's forward under a fixed seed, so that Dropout draws the same mask each
    time; ``inputs`` is the ``Flat`` of its input tensors (``flat_inputs``)."""
    torch.manual_seed(seed)
    return forward_outputs(layer, pack(inputs), y)


def _random_douts(outputs, seed):
    """One standard-normal upstream gradient per output tensor, nested like the outputs,
    reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return like(outputs, [torch.randn(o.shape, generator=generator, dtype=o.dtype).to(o.device) for o in outputs])


def _param_name(index):
    return f"param#{index:02d}"


def _checked_pairs(layer, verdict):
    """``params()`` as (param, gradient) pairs, with None for a gradient that cannot be
    used (not a tensor, or not of its parameter's shape), each such pair named a breach."""
    pairs = []
    for index, pair in enumerate(layer.params(), start=1):
        name = _param_name(index)
        param, grad = pair if isinstance(pair, (tuple, list)) and len(pair) == 2 else (None, None)
        if not isinstance(param, torch.Tensor) or not isinstance(grad, torch.Tensor):
            verdict.add_problem(name, f"params() entry {name} is not a (parameter, gradient) pair of tensors")
            grad = None
        elif grad.shape != param.shape:
            verdict.add_problem(
                name,
                f"params() pair of wrong shapes: {name} has shape {tuple(param.shape)} but its gradient "
                f"{tuple(grad.shape)}",
            )
            grad = None
        pairs.append((param, grad))
    return pairs


def _own_backward(layer, douts, verdict, stage):
    """backward on copies of douts; a breach when it raises or changes them in place.
    Returns (what backward returned, whether it returned)."""
    handed = like(douts, [d.clone() for d in douts])
    try:
        returned = layer.backward(pack(handed))
    except Exception as error:  # the layer's own code: its failure is the verdict
        verdict.add_problem(None, f"{stage}backward raised {type(error).__name__}: {error}")
        return None, False
    if not all(same_values(h, d) for h, d in zip(handed, douts)):
        verdict.add_problem(None, "backward changes dout (the upstream gradient it is handed) in place")
    return returned, True


def _check_same_gradient_tensors(layer, pairs, verdict):
    after = layer.params()
    if len(after) != len(pairs):
        verdict.add_problem(None, f"params() gave {len(pairs)} pairs before backward and {len(after)} after")
        return
    for index, ((_, before), pair) in enumerate(zip(pairs, after), start=1):
        if before is not None and (not isinstance(pair, (tuple, list)) or pair[-1] is not before):
            verdict.add_problem(
                _param_name(index),
                f"gradient tensor replaced: {_param_name(index)}'s gradient is no longer the tensor params() "
                "returned, so an optimizer built from params() never sees it (add into it in place: grad += ...)",
            )


def _check_accumulation(layer, inputs, y, seed, douts, pairs, first, verdict, rtol):
    """A second forward and backward must add the same gradient again: 2x the first."""
    _run_forward(layer, copies(inputs), y, seed)
    _, returned = _own_backward(layer, douts, verdict, "the second ")
    if not returned:
        return
    doubled = [None if g is None else 2 * g for g in first]
    scales = measure.scales(doubled, [measure.rounding_noise(doubled)] * len(doubled), rtol)
    for index, ((_, grad), once, scale) in enumerate(zip(pairs, first, scales), start=1):
        if grad is None or measure.tensor_error("", grad, 2 * once, scale).error <= rtol:
            continue
        dot = (once.double() * once.double()).sum().item()
        ratio = (grad.double() * once.double()).sum().item() / dot if dot > 0 else math.nan
        verdict.add_problem(
            _param_name(index),
            f"gradients do not accumulate: after two forward/backward passes {_param_name(index)}'s gradient is "
            f"{ratio:.3g} times that of one, not 2 (backward must add into it: grad += ...)",
        )


NONDETERMINISTIC = (
    "nondeterministic forward: two forward passes on the same input under the same torch seed gave different "
    "outputs, so no reference can judge its backward (draw random numbers from torch's generator, e.g. "
    "torch.rand, not from numpy's or Python's)"
)


def _deterministic(layer, inputs, y, seed, verdict):
    """True when two forward passes on copies of the inputs under the same torch seed give
    the same outputs; otherwise the verdict names the nondeterministic forward."""
    first = _run_forward(layer, copies(inputs), y, seed)
    second = _run_forward(layer, copies(inputs), y, seed)
    if all(same_values(a, b) for a, b in zip(first, second)):
        return True
    verdict.add_problem(None, NONDETERMINISTIC)
    return False


class _OwnRun(NamedTuple):
    outputs: tuple
    douts: tuple
    gradients: list  # each input's gradient, then each parameter's after one backward (None if unusable)


def _own_run(layer, inputs, y, seed, verdict, rtol):
    """The layer's forward and backward on copies of the inputs and of a random upstream
    gradient, checking the contract; then a second pass for accumulation. None when the
    forward is nondeterministic (a breach): nothing can judge its backward then."""
    pairs = _checked_pairs(layer, verdict)
    verdict.tensor_names = input_names(inputs) + [_param_name(i) for i in range(1, len(pairs) + 1)]
    if not _deterministic(layer, inputs, y, seed, verdict):
        return None
    for _, grad in pairs:
        if grad is not None:
            grad.zero_()
    own = copies(inputs)
    outputs = _run_forward(layer, own, y, seed)
    names = leaf_names(inputs.nesting)
    changed_by_forward = [not same_values(mine, x) for mine, x in zip(own, inputs)]
    for name, changed, x in zip(names, changed_by_forward, inputs):
        if changed:
            verdict.add_problem(_tensor_name(name, x), f"forward changes its {name} x in place")
    douts = _random_douts(outputs, seed + 1)
    returned, completed = _own_backward(layer, douts, verdict, "")
    if not completed:
        return _OwnRun(outputs, douts, [None] * (len(floating(inputs)) + len(pairs)))
    for name, changed, mine, x in zip(names, changed_by_forward, own, inputs):
        if not changed and not same_values(mine, x):
            verdict.add_problem(
                _tensor_name(name, x), f"backward changes the {name} x (or what forward cached of it) in place"
            )
    dxs = input_gradients(returned, inputs, verdict.add_problem)
    first = [None if grad is None else grad.clone() for _, grad in pairs]
    _check_same_gradient_tensors(layer, pairs, verdict)
    _check_accumulation(layer, inputs, y, seed, douts, pairs, first, verdict, rtol)
    return _OwnRun(outputs, douts, dxs + first)


def _tensor_name(name, x):
    """The name a breach about input tensor x is filed under: its own where it has a
    gradient to compare, else None (the whole layer)."""
    return name if x.is_floating_point() else None


# References --------------------------------------------------------------------------------


def _leaves(inputs):
    """Detached copies of the input tensors, nested alike, the floating-point ones
    requiring gradients."""
    return like(inputs, [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs])


def _autograd_gradients(layer, inputs, y, seed, douts, verdict):
    """Gradients (floating-point inputs, then each parameter) of sum(forward * douts) by
    torch autograd through the layer's own forward, or None (a breach) when autograd
    cannot run it."""
    params = [param for param, _ in layer.params() if isinstance(param, torch.Tensor)]
    leaves = _leaves(inputs)
    try:
        for param in params:
            param.requires_grad_(True)
        # Copies of the leaves, so that a forward that changes its input in place (a
        # breach found already) can still be differentiated.
        outputs = _run_forward(layer, like(leaves, [leaf.clone() for leaf in leaves]), y, seed)
        return _grads(outputs, douts, floating(leaves) + params)
    except RuntimeError as error:
        verdict.add_problem(None, f"autograd cannot differentiate the forward: {error}")
        return None


def _grads(outputs, douts, wrt):
    """d sum(outputs * douts) / d wrt by autograd, zeros where a tensor is unused."""
    pairs = [(o, d) for o, d in zip(outputs, douts) if o.requires_grad]
    grads = [None] * len(wrt)
    if pairs:
        grads = torch.autograd.grad([o for o, _ in pairs], wrt, [d for _, d in pairs], allow_unused=True)
    return [torch.zeros_like(t) if g is None else g.detach() for g, t in zip(grads, wrt)]


def _load_into_module(layer, module):
    """Copies the layer's parameters and floating buffers into ``module`` and puts it in
    the layer's mode; ValueError when the parameters do not match."""
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
                f"compare_to_module: {_param_name(index)} has shape {tuple(source.shape)} in "
                f"{layer!r} but {tuple(target.shape)} in {type(module).__name__}"
            )
    layer_buffers, module_buffers = floating(layer.buffers()), floating(module.buffers())
    shapes = [tuple(b.shape) for b in layer_buffers]
    if shapes != [tuple(b.shape) for b in module_buffers]:
        raise ValueError(
            f"compare_to_module: the floating-point buffers (running statistics) of {layer!r} have shapes "
            f"{shapes} but those of {type(module).__name__} {[tuple(b.shape) for b in module_buffers]}"
        )
    with torch.no_grad():
        for source, target in zip(layer_params, module_params):
            target.copy_(source)
        for source, target in zip(layer_buffers, module_buffers):
            target.copy_(source)
    module.train(layer.training)


def _twin_outputs_and_gradients(module, inputs, y, seed, douts):
    """The twin's outputs and its gradients (floating-point inputs, then each parameter)
    by autograd."""
    params = list(module.parameters())
    flags = [param.requires_grad for param in params]
    leaves = _leaves(inputs)
    try:
        for param in params:
            param.requires_grad_(True)
        torch.manual_seed(seed)
        arguments = pack(leaves)
        outputs = flatten(module(*arguments) if y is None else module(*arguments, y), type(module).__name__)
        grads = _grads(outputs, douts, floating(leaves) + params)
    finally:
        for param, flag in zip(params, flags):
            param.requires_grad_(flag)
    return tuple(o.detach() for o in outputs), grads


def _float64_copy(layer, verdict):
    """A float64 deep copy of the layer (made before anything runs it under autograd), or
    None (a breach) when its parameters do not all become float64."""
    layer64 = copy.deepcopy(layer).to(dtype=torch.float64)
    pairs = layer64.params()
    if not all(is_tensor_pair(pair) for pair in pairs):
        return None  # a breach _checked_pairs names
    not_moved = [i for i, (param, _) in enumerate(pairs, start=1) if param.dtype != torch.float64]
    if not_moved:
        verdict.add_problem(
            _param_name(not_moved[0]),
            f"layer.to(dtype=torch.float64) left {_param_name(not_moved[0])} as {pairs[not_moved[0] - 1][0].dtype} "
            "(register parameters with add_param so that to() moves them); no finite differences",
        )
        return None
    return layer64


class _FiniteDifferences(NamedTuple):
    """Finite differences of a float64 copy, each list over the inputs and every parameter."""

    analytic: list  # the copy's backward
    numeric: list  # central differences (0 where not differenced)
    skips: list  # bool masks: entries at a kink, or not differenced
    noises: list  # the error each tensor's differences may carry
    kinks: int  # how many differenced entries are at a kink
    left_out: int  # how many entries were not differenced (a sample of each large tensor)


def _finite_differences(layer64, inputs, y, eps, seed, verdict, entries=None, progress=None):
    """_FiniteDifferences of the float64 copy of a layer on a float64 copy of the inputs:
    the copy's backward against central differences of sum(forward * douts), at every
    entry or at ``entries`` of each tensor drawn at random (seeded), with where the
    function has a kink and the error each tensor's differences may carry (see
    ``_difference_error``). ``progress`` is called with a line before each tensor."""
    pairs = layer64.params()
    x64 = like(inputs, [_float64(x) for x in inputs])
    y64 = None if y is None else _float64(y)
    layer64.zero_grad()
    douts = _random_douts(_run_forward(layer64, x64, y64, seed), seed + 1)
    returned, completed = _own_backward(layer64, douts, verdict, "the float64 copy's ")
    if not completed:
        return None
    analytic = input_gradients(returned, x64, verdict.add_problem) + [grad.clone() for _, grad in pairs]
    tensors = floating(x64) + [param for param, _ in pairs]

    def objective():
        return _objective(layer64, x64, y64, seed, douts)

    generator = torch.Generator().manual_seed(seed)
    central, jumps, judged = [], [], []
    for name, tensor in zip(verdict.tensor_names, tensors):
        positions = _sample(tensor.numel(), entries, generator)
        _report(progress, f"finite differences of {name}: {len(positions)} of {tensor.numel()} entries")
        for results, result in zip((central, jumps, judged), _numeric_gradient(tensor, objective, eps, positions)):
            results.append(result)
    scale = measure.scale(central)
    kinks = [mask & (jump.abs() > KINK_RTOL * scale) for mask, jump in zip(judged, jumps)]
    if any(mask.any() for mask in judged) and all(bool((k == mask).all()) for k, mask in zip(kinks, judged)):
        verdict.add_problem(
            None,
            "finite differences judged nothing: every entry is at a kink (the one-sided differences disagree "
            "everywhere); check at an input away from the kinks",
        )
    # f = sum(outputs * douts) is rounded to about eps * sum |outputs * douts|, twice per difference.
    magnitude = sum((o * d).abs().sum().item() for o, d in zip(_run_forward(layer64, x64, y64, seed), douts))
    rounding = NOISE_ROUNDINGS * torch.finfo(torch.float64).eps * magnitude / eps
    skips = [k | ~mask for k, mask in zip(kinks, judged)]
    noises = [
        _difference_error(t, objective, eps, a, c, s, rounding, scale) for t, a, c, s in zip(tensors, analytic, central, skips)
    ]
    left_out = sum(int((~mask).sum()) for mask in judged)
    return _FiniteDifferences(analytic, central, skips, noises, sum(int(k.sum()) for k in kinks), left_out)


def _float64(x):
    """A float64 copy of a floating-point tensor; a copy of any other (a mask, indices, labels)."""
    return x.detach().to(torch.float64).clone() if x.is_floating_point() else x.detach().clone()


def _difference_error(tensor, objective, eps, analytic, central, skip, rounding, scale):
    """The error a tensor's central differences D(h) may carry: the rounding of f, plus,
    where D(h) and the analytic gradient disagree beyond that, the largest spread
    ``|D(h) - D(2h)|`` there (three times D(h)'s truncation error h^2 f''' / 6, and of
    the order of its rounding error, which rounding inside the forward can make larger
    than f's own: a signal of 1e-6 on a bias of 1 normalised by BatchNorm). A spread
    beyond KINK_RTOL of the scale means that the step 2h crosses a kink: not counted."""
    if not isinstance(analytic, torch.Tensor) or analytic.shape != central.shape:
        return rounding
    (own_scale,) = measure.scales([central], [rounding], FINITE_DIFFERENCE_RTOL)
    disagree = (analytic - central).abs() > FINITE_DIFFERENCE_RTOL * (own_scale + central.abs())
    suspects = (disagree & ~skip).reshape(-1).nonzero().reshape(-1).tolist()
    flat = tensor.view(-1)
    spreads = []
    for index in suspects:
        original = flat[index].item()
        plus2, minus2 = (_objective_at(flat, index, original + step, objective) for step in (2 * eps, -2 * eps))
        flat[index] = original
        spreads.append(abs(central.reshape(-1)[index].item() - (plus2 - minus2) / (4 * eps)))
    return rounding + max((s for s in spreads if s <= KINK_RTOL * scale), default=0.0)


def _sample(count, entries, generator):
    """Flat positions to difference: all ``count``, or ``entries`` of them at random."""
    if entries is None or count <= entries:
        return range(count)
    return torch.randperm(count, generator=generator)[:entries].sort().values.tolist()


def _objective(layer, x, y, seed, douts):
    outputs = _run_forward(layer, x, y, seed)
    return sum((o * d).sum().item() for o, d in zip(outputs, douts))


def _numeric_gradient(tensor, objective, eps, positions):
    """At the flat ``positions`` of ``tensor`` (perturbed in place one entry at a time and
    restored), central differences ``D(h) = (f(t + h) - f(t - h)) / 2h`` of
    ``objective()``; the jumps ``(f(t + h) - f(t)) / h - (f(t) - f(t - h)) / h`` between
    the one-sided differences, which are about h * f'' where f is smooth and O(1) at a
    kink (ReLU at 0, tied maxima); and the mask of the positions (the other entries of
    the first two are 0)."""
    flat = tensor.view(-1)
    central, jumps = torch.zeros_like(flat), torch.zeros_like(flat)
    judged = torch.zeros(flat.shape, dtype=torch.bool)
    at_tensor = objective()
    for index in positions:
        original = flat[index].item()
        plus, minus = (_objective_at(flat, index, original + step, objective) for step in (eps, -eps))
        flat[index] = original
        central[index] = (plus - minus) / (2 * eps)
        jumps[index] = ((plus - at_tensor) - (at_tensor - minus)) / eps
        judged[index] = True
    return tuple(t.view(tensor.shape) for t in (central, jumps, judged))


def _objective_at(flat, index, value, objective):
    flat[index] = value
    return objective()


# The checks ----------------------------------------------------------------------------------


def check_layer(
    layer, x, y=None, seed=42, autograd=True, twin="auto", finite_differences=False, eps=1e-6, rtol=None, entries=None, progress=None
):
    """Checks ``layer``'s backward and its contract on input x (targets y for a loss);
    returns a ``Verdict``. x is a tensor, or a tuple of the inputs of a layer that takes
    several, which may themselves be tuples or lists of tensors (an LSTM's
    ``(x, (h_0, c_0))``; see the module docstring for how their gradients are named).

    Runs the layer's forward and its own backward with a random upstream gradient
    (seeded; Dropout draws the same mask each time), checking the contract (see the
    module docstring), and compares the input gradient and every parameter gradient
    with each reference asked for:

    * ``autograd``: torch autograd through the layer's own forward;
    * ``twin``: an independent ``torch.nn`` module under autograd, with the layer's
      parameters copied in: ``"auto"`` builds it with ``nnlab.grad_compare.torch_twin`` (None
      where there is none), or pass a module, or None; its outputs are compared too
      ("torch.nn twin (forward)");
    * ``finite_differences``: central differences in float64 on a float64 copy of layer
      and x (two forward passes per entry, and two more where a step 2h is needed to
      measure the differences' own error: use small inputs, or
      ``entries``, the number of entries of each tensor to difference, drawn at random
      and seeded; the verdict says how many were left out). Entries where the function
      has a kink (the one-sided differences disagree, as at ReLU's 0 or tied maxima) have
      no derivative to judge and are left to the other references; the verdict counts them.

    Errors use the floor-based measure of the module docstring; ``rtol`` defaults to
    1e-5 in float32 and 1e-10 in float64, finite differences to 1e-6. ``progress``, if
    given, is called with a line of text before each reference's work.

    Example::

        >>> import torch
        >>> from nnlab.grad_compare import check_layer
        >>> from nnlab.layers import Linear
        >>> verdict = check_layer(Linear(4, 3), torch.randn(5, 4), finite_differences=True)
        >>> verdict.passed
        True
        >>> [comparison.reference for comparison in verdict.comparisons]
        ['autograd', 'torch.nn twin (forward)', 'torch.nn twin', 'finite differences']
    """
    inputs = flat_inputs(x)
    rtol = _default_rtol(layer, inputs) if rtol is None else rtol
    verdict = Verdict(layer)
    if isinstance(twin, str) and twin != "auto":
        raise ValueError(f"check_layer: twin must be 'auto', a torch.nn.Module or None, got {twin!r}")
    if twin is not None and not isinstance(twin, str):
        _load_into_module(layer, twin)
    layer64 = _float64_copy(layer, verdict) if finite_differences else None
    with preserved(layer):
        # Built in here: a module's construction draws its initial weights from torch's RNG.
        module = torch_twin(layer) if isinstance(twin, str) else twin
        run = _own_run(layer, inputs, y, seed, verdict, rtol)
        if run is None:
            return verdict
        names = verdict.tensor_names
        if autograd:
            _report(progress, "autograd through the forward")
            reference = _autograd_gradients(layer, inputs, y, seed, run.douts, verdict)
            if reference is not None:
                verdict.comparisons.append(measure.compare("autograd", names, run.gradients, reference, rtol))
        if module is not None:
            _report(progress, f"the torch.nn twin {type(module).__name__}")
            outputs, reference = _twin_outputs_and_gradients(module, inputs, y, seed, run.douts)
            output_names = ["output"] if len(outputs) == 1 else [f"output[{i}]" for i in range(len(outputs))]
            verdict.comparisons.append(measure.compare("torch.nn twin (forward)", output_names, run.outputs, outputs, rtol))
            verdict.comparisons.append(measure.compare("torch.nn twin", names, run.gradients, reference, rtol))
        if layer64 is not None:
            fd = _finite_differences(layer64, inputs, y, eps, seed, verdict, entries, progress)
            if fd is not None:
                verdict.comparisons.append(
                    measure.compare(
                        "finite differences", names, fd.analytic, fd.numeric, FINITE_DIFFERENCE_RTOL, fd.skips, fd.noises, fd.kinks, fd.left_out
                    )
                )
    return verdict


def _report(progress, line):
    if progress is not None:
        progress(line)


def _default_rtol(layer, inputs):
    """The tolerance for the dtype of the first floating-point input, or for that of the
    parameters where there is none (an Embedding's indices)."""
    tensors = floating(inputs) + [param for param, _ in layer.params() if isinstance(param, torch.Tensor)]
    return RTOL.get(tensors[0].dtype, RTOL[torch.float32]) if tensors else RTOL[torch.float32]


class VerdictList(list):
    """A list of per-tensor numbers (input first, then each parameter) that also carries
    the full ``verdict`` of the check that made them."""

    def __init__(self, values, verdict):
        super().__init__(values)
        self.verdict = verdict


def gradient_errors(layer, x, y=None, seed=42):
    """Errors (input first, then each parameter in ``params()`` order) of the layer's
    backward against autograd through its own forward and, where it has one, against
    its ``torch.nn`` twin: for each tensor the larger of the two, in the floor-based
    measure ``max |a - b| / (s + |b|)`` of the module docstring; inf for a tensor a
    contract breach concerns. The returned list's ``.verdict`` says which reference
    disagreed and why. Leaves everything as found.

    Example::

        >>> import torch
        >>> from nnlab.grad_compare import gradient_errors
        >>> from nnlab.layers import LayerNorm
        >>> errors = gradient_errors(LayerNorm(6), torch.randn(4, 6))   # input, weight, bias
        >>> len(errors), max(errors) <= 1e-5
        (3, True)
    """
    verdict = check_layer(layer, x, y, seed=seed)
    return VerdictList(verdict.errors(("autograd", "torch.nn twin")), verdict)


def compare_layer_to_torch(layer, x, y=None, seed=42):
    """Runs the layer forward and its own ``backward`` with a random upstream gradient,
    then the same forward under torch autograd with the same seed; returns the norm of
    the difference ``||a - b||`` for the input gradient first, then for each parameter
    in ``params()`` order, printing one line for each (``input    diff=0.000``). A
    tensor that fails for another reason (the twin disagrees, a contract breach such as
    gradients that do not accumulate or an input or dout changed in place, a missing
    gradient) returns inf: what prints FAIL never returns a passing number.

    The pass/fail criterion is the floor-based error of the module docstring, checked
    against autograd, against the layer's ``torch.nn`` twin where it has one, and for
    the contract; a failing tensor's line ends in FAIL, and the verdict's explanation
    follows. The returned list's ``.verdict`` holds it. Leaves the layer, its
    gradients, its buffers, ``x`` and torch's RNG as it found them.

    Example::

        >>> import torch
        >>> from nnlab.grad_compare import compare_layer_to_torch
        >>> from nnlab.layers import Linear
        >>> diffs = compare_layer_to_torch(Linear(4, 3), torch.randn(5, 4))
        input    diff=0.000
        param#01 diff=0.000
        param#02 diff=0.000
        >>> max(diffs) < 1e-5
        True
    """
    verdict = check_layer(layer, x, y, seed=seed)
    tolerance = _default_rtol(layer, flat_inputs(x))
    against_autograd = verdict.errors(("autograd",))
    errors = verdict.errors(("autograd", "torch.nn twin"))
    diffs = []
    width = max([8] + [len(name) for name in verdict.tensor_names])
    for name, autograd_error, error in zip(verdict.tensor_names, against_autograd, errors):
        diff = _returned_difference(verdict.comparison("autograd"), name, autograd_error, error, tolerance)
        print(f"{name:<{width}} diff={diff:.3f}" + ("" if error <= tolerance else "  FAIL"))
        diffs.append(diff)
    if not verdict.passed:
        print(verdict)
    return VerdictList(diffs, verdict)


def _returned_difference(against_autograd, name, autograd_error, error, tolerance):
    """What ``compare_layer_to_torch`` returns for one tensor: ||a - b|| against autograd
    when that comparison shows the tensor's failure (or it passes), inf when another
    reference or a contract breach fails it, so that a failing part never returns a
    passing number."""
    if error > tolerance and not (tolerance < autograd_error and math.isfinite(error)):
        return math.inf
    return next(t.difference_norm for t in against_autograd.tensors if t.name == name)


def finite_difference_errors(layer, x, y=None, eps=1e-6, seed=42):
    """Errors (input first, then each parameter) between the backward of a float64 copy
    of the layer and central finite differences, in the floor-based measure of the
    module docstring, leaving out entries at kinks (see ``check_layer``); inf for a
    tensor a contract breach concerns. ``.verdict`` holds the full verdict. The layer
    is untouched.

    Example::

        >>> import torch
        >>> from nnlab.grad_compare import finite_difference_errors
        >>> from nnlab.layers import Tanh
        >>> errors = finite_difference_errors(Tanh(), torch.randn(3, 4))
        >>> len(errors), max(errors) <= 1e-6
        (1, True)
    """
    verdict = check_layer(layer, x, y, seed=seed, autograd=False, twin=None, finite_differences=True, eps=eps)
    return VerdictList(verdict.errors(("finite differences",)), verdict)


def gradcheck(layer, x, y=None, eps=1e-6, atol=1e-5, rtol=1e-3, seed=42):
    """Central finite differences in float64, on a float64 copy of the layer and of x,
    against the layer's ``backward``, for the input and every parameter. Returns True,
    or raises AssertionError naming the tensor and the worst element when
    ``|analytic - numeric| > atol + rtol * |numeric|`` anywhere (torch.autograd.gradcheck's
    rule), or naming the contract breach found (see the module docstring). Entries at a
    kink (see ``check_layer``) are left out. Costs two forward passes per input and
    parameter entry: use small inputs.

    Example::

        >>> import torch
        >>> from nnlab.grad_compare import gradcheck
        >>> from nnlab.layers import Conv1d
        >>> gradcheck(Conv1d(2, 3, kernel_size=3), torch.randn(2, 2, 6))
        True
    """
    verdict = Verdict(layer)
    layer64 = _float64_copy(layer, verdict)
    with preserved(layer):
        inputs = flat_inputs(x)
        run = _own_run(layer, inputs, y, seed, verdict, _default_rtol(layer, inputs))
        result = None if layer64 is None or run is None else _finite_differences(layer64, inputs, y, eps, seed, verdict)
    if verdict.problems:
        raise AssertionError(f"gradcheck failed for {layer!r}: {verdict.problems[0][1]}")
    for name, analytic, numeric, kinks in zip(verdict.tensor_names, result.analytic, result.numeric, result.skips):
        excess = (analytic - numeric).abs() - (atol + rtol * numeric.abs())
        excess = torch.where(kinks, torch.full_like(excess, -1.0), excess)
        if excess.numel() and excess.max() > 0:
            worst = int(excess.argmax())
            index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), numeric.shape))
            raise AssertionError(
                f"gradcheck failed for {layer!r}: {name}{list(index)} analytic "
                f"{analytic.reshape(-1)[worst].item():.6g} vs numeric {numeric.reshape(-1)[worst].item():.6g}"
            )
    return True


class VerdictDict(dict):
    """``compare_to_module``'s dict that also carries the full ``verdict``."""

    def __init__(self, values, verdict):
        super().__init__(values)
        self.verdict = verdict


def compare_to_module(layer, module, x, y=None, seed=42):
    """Copies the layer's parameters (and floating buffers) into ``module``, an
    independent ``torch.nn`` module of the same kind, puts it in the layer's mode, runs
    both on x with the same random upstream gradient and returns
    ``{'output': max |a - b| / (s + |b|) over the outputs, 'input': error,
    'param#01': error, ...}`` (``'input#1'``, ``'input#2'``, ... when x is a tuple of
    inputs, ``'input#2.1'``, ... for the tensors of a nested one), the errors in the floor-based measure of the module
    docstring (inf for a tensor a contract breach concerns); ``.verdict`` holds the
    full verdict. Leaves the layer, x and torch's RNG as it found them.

    Example::

        >>> import torch
        >>> from nnlab.grad_compare import compare_to_module
        >>> from nnlab.layers import Conv1d
        >>> errors = compare_to_module(Conv1d(2, 3, 3), torch.nn.Conv1d(2, 3, 3), torch.randn(4, 2, 10))
        >>> sorted(errors)                           # the module gets the layer's weights first
        ['input', 'output', 'param#01', 'param#02']
        >>> max(errors.values()) <= 1e-5
        True
    """
    verdict = check_layer(layer, x, y, seed=seed, autograd=False, twin=module)
    result = {"output": verdict.comparison("torch.nn twin (forward)").worst.error}
    result.update(zip(verdict.tensor_names, verdict.errors(("torch.nn twin",))))
    return VerdictDict(result, verdict)


def backward_before_forward(layer, x, y=None):
    """The contract breach of a fresh ``layer`` (no forward run yet) whose backward does
    not raise RuntimeError, as a sentence; None when it raises as it should. The upstream
    gradient has the shape of the output of a forward on a copy of the layer.

    Example::

        >>> import torch
        >>> from nnlab.grad_compare import backward_before_forward
        >>> from nnlab.layers import Linear
        >>> backward_before_forward(Linear(3, 2), torch.randn(4, 3)) is None   # it raises, as it should
        True
    """
    with torch.random.fork_rng(devices=[]):
        outputs = _run_forward(copy.deepcopy(layer), copies(flat_inputs(x)), y, 0)
    douts = like(outputs, [torch.ones_like(o) for o in outputs])
    with preserved(layer):
        try:
            layer.backward(pack(douts))
        except RuntimeError:
            return None
        except Exception as error:  # the layer's own code: report what it raised instead
            return (
                f"backward before forward raised {type(error).__name__} ({error}) instead of RuntimeError "
                "naming the layer (read the cache with self.cached(name))"
            )
    return (
        "backward before forward does not raise: a fresh layer's backward must raise RuntimeError naming "
        "the layer (read the cache with self.cached(name), which does)"
    )


# Inputs with ties ------------------------------------------------------------------------------


def tie_heavy(shape, seed=0, dtype=torch.float32):
    """An input full of ties, like a real image: the left half of the last dimension is 0
    (a flat background, where a zero-padded convolution gives equal outputs and a max
    window an all-way tie; ReLU has its kink at 0), the rest integers in {-2, ..., 2}
    (so ties between neighbours and more exact zeros)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, shape, generator=generator).to(dtype)
    if len(shape) >= 1:
        x[..., : (shape[-1] + 1) // 2] = 0.0
    return x
