"""nnlab layers as ``torch.nn.Module``s: ``as_module(layer)``.

The module's forward is the layer's forward, run with autograd off; its backward is the
layer's hand-written backward, handed to autograd through a ``torch.autograd.Function``.
Autograd never differentiates the layer's forward: this module is the one place outside
verification where nnlab uses autograd, and only to chain the hand-written backward into
a torch graph. So nnlab layers mix with torch.nn layers in one model and train with
``torch.optim``.
"""

import copy
import weakref

import torch
from torch.autograd.function import once_differentiable

from .layers import Layer
from .layers.base import recall_call, remember_call
from .layers.containers import indented

__all__ = ["LayerModule", "as_module"]

# {layer: {parameter name: torch Parameter}} for the layers wrapped so far: two wrappers
# of one layer (tied weights, one wrapper per place) share Parameter objects, so that
# torch.optim sees each tensor once, as in a torch model that uses one module twice.
_PARAMETERS = weakref.WeakKeyDictionary()

# Classifier methods (nnlab.classifier) that the wrapper hands to its layer.
_FORWARDED = ("classify", "classify_scores", "predict_proba", "predict_proba_scores")


class _HandWrittenBackward(torch.autograd.Function):
    """Forward: ``layer(*args, **kwargs)`` with autograd off, remembering the call (the
    layer's cache, as a container remembers a child's call). Backward: the layer's own
    ``backward`` on that call's cache, giving the gradient of each positional argument
    and, for each distinct parameter, the gradient of this one call (the layer's own
    gradient tensors are left as they were)."""

    @staticmethod
    def forward(ctx, module, kwargs, count, *args_and_params):
        layer = module.layer
        out = layer(*args_and_params[:count], **kwargs)
        ctx.module = module
        ctx.count = count
        ctx.call = remember_call(layer)
        ctx.multiple = isinstance(out, tuple)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, *douts):
        module = ctx.module
        grads = [grad for _, grad, _ in module._triples]
        saved = [grad.clone() for grad in grads]
        for grad in grads:
            grad.zero_()
        try:
            with recall_call(module.layer, ctx.call):
                result = module.layer.backward(douts if ctx.multiple else douts[0])
            call_grads = [grad.clone() for grad in grads]
        finally:
            for grad, before in zip(grads, saved):
                grad.copy_(before)
        needed = ctx.needs_input_grad[3 : 3 + ctx.count]
        return (None, None, None, *module._argument_gradients(result, needed), *call_grads)


class LayerModule(torch.nn.Module):
    """A ``torch.nn.Module`` around an nnlab ``Layer`` (see ``as_module``).

    Parameters are ``torch.nn.Parameter``s sharing storage with the layer's own
    parameter tensors, registered under the layer's state_dict keys (nested modules
    stand for the dotted prefixes), so ``torch.optim`` updates what the layer computes
    with, and ``state_dict()`` has the layer's keys; wrappers of one layer share their
    Parameter objects. Buffers (BatchNorm statistics) are the layer's own tensors.
    ``train()`` / ``eval()`` set the layer's mode; ``.to()``, ``.double()`` and
    ``.cuda()`` move the layer's tensors in place and keep every Parameter object, so
    an optimizer built before the move keeps working. ``copy.deepcopy`` gives a wrapper
    of a deep copy of the layer (so ``torch.optim.swa_utils.AveragedModel`` works).
    ``classify``, ``classify_scores``, ``predict_proba`` and ``predict_proba_scores``
    are the layer's (an ``nnlab.classifier.Classifier``).

    Every call is its own autograd node with its own copy of the layer's cache, so one
    wrapper may be called several times, several wrappers may share a layer, and the
    layer may be called on its own in between, with torch's gradients for each.
    Positional tensor arguments get gradients: a layer of several inputs (``Add``,
    a graph ``Model``, ``Bilinear``) returns one per argument; a loss returns those of its
    inputs (the first argument, both of ``MarginRankingLoss``'s, ...) and none for its
    targets, so a further argument that requires grad (a loss's targets) is a
    RuntimeError at backward, and a keyword argument that requires grad is a TypeError
    at once.
    """

    def __init__(self, layer):
        super().__init__()
        if not isinstance(layer, Layer):
            raise TypeError(f"as_module: expected an nnlab Layer, got {type(layer).__name__}")
        self.layer = layer
        self._triples = []  # distinct (layer parameter, its gradient, its torch Parameter), in params() order
        grad_of = {id(param): grad for param, grad in layer.params()}
        places = {id(tensor): place for place, tensor in _places_of_parameters(layer)}
        registered = set()
        for key, tensor in layer.named_tensors():
            owner, name = self._owner_of(key)
            if id(tensor) not in grad_of:
                owner.register_buffer(name, tensor)
                continue
            parameter = _torch_parameter(places.get(id(tensor), (layer, key)), tensor)
            if id(tensor) not in registered:
                registered.add(id(tensor))
                self._triples.append((tensor, grad_of[id(tensor)], parameter))
            owner.register_parameter(name, parameter)
        self.train(layer.training)

    def _owner_of(self, key):
        """The (nested) module that holds ``key``'s last part, created on first use."""
        *path, name = key.split(".")
        owner = self
        for part in path:
            if part not in owner._modules:
                owner.add_module(part, torch.nn.Module())
            owner = owner._modules[part]
        return owner, name

    def forward(self, *args, **kwargs):
        if not args:
            raise TypeError(f"{self!r}: expected at least one positional argument, got none")
        if torch.is_grad_enabled():
            for name, value in kwargs.items():
                if isinstance(value, torch.Tensor) and value.requires_grad:
                    raise TypeError(
                        f"{self!r}: keyword argument '{name}' requires grad, but the layer gives no "
                        f"gradient for keyword arguments; pass {name}=...detach(), or pass it positionally "
                        "to a layer of several inputs"
                    )
        params = [parameter for _, _, parameter in self._triples]
        return _HandWrittenBackward.apply(self, kwargs, len(args), *args, *params)

    def _argument_gradients(self, result, needed):
        """The layer's backward ``result`` as one gradient per positional argument
        (``needed``: which of them autograd wants); RuntimeError naming the layer and
        the argument where one that is wanted would get none."""
        count = len(needed)
        grads = list(result) if count > 1 and isinstance(result, (tuple, list)) else [result]
        if len(grads) > count:
            raise RuntimeError(
                f"{self!r}: {type(self.layer).__name__}.backward returned {len(grads)} gradients "
                f"for {count} positional arguments"
            )
        given = len(grads)
        # The arguments after those the backward gives gradients for are data (a loss's
        # targets): None, which is an error below where autograd wants one.
        grads += [None] * (count - given)
        for position, (grad, wanted) in enumerate(zip(grads, needed)):
            if not wanted or grad is not None:
                continue
            if position >= given:
                raise RuntimeError(
                    f"{self!r}: argument {position} requires grad, but {type(self.layer).__name__}.backward "
                    f"gives gradients for its first {given} argument(s) only; pass that argument detached "
                    "(.detach()), or compute this term with torch"
                )
            raise RuntimeError(
                f"{self!r}: argument 0 requires grad, but {type(self.layer).__name__}.backward returned "
                "None (the layer was told requires_input_grad(False), or its backward has no 'return')"
            )
        return [grad if wanted else None for grad, wanted in zip(grads, needed)]

    def __getattr__(self, name):
        if name in _FORWARDED:
            layer = self.__dict__["layer"]
            if not hasattr(layer, name):
                raise AttributeError(f"{self!r} has no {name}: {type(layer).__name__} is not a classifier")
            return getattr(layer, name)
        return super().__getattr__(name)

    def __deepcopy__(self, memo):
        """A wrapper of a deep copy of the layer, with the Parameters' requires-grad
        flags, gradients and the mode copied."""
        clone = LayerModule(copy.deepcopy(self.layer, memo))
        memo[id(self)] = clone
        for (_, _, parameter), (_, _, copied) in zip(self._triples, clone._triples, strict=True):
            copied.requires_grad_(parameter.requires_grad)
            if parameter.grad is not None:
                copied.grad = copy.deepcopy(parameter.grad, memo)
        return clone.train(self.training)

    def train(self, mode=True):
        super().train(mode)
        self.layer.train(mode)
        return self

    def _apply(self, fn, recurse=True):
        """Applies ``fn`` (a move or cast from ``.to()``, ``.double()``, ...) to the
        layer's parameters, gradients and buffers in place, then points each Parameter
        at its moved tensor, keeping every object's identity."""
        for param, grad, parameter in self._triples:
            _replace_contents(param, fn(param))
            _replace_contents(grad, fn(grad))
            if parameter.data_ptr() == param.data_ptr() and parameter.dtype == param.dtype:
                continue
            moved = torch.nn.Parameter(param, requires_grad=parameter.requires_grad)
            if parameter.grad is not None:
                moved.grad = fn(parameter.grad)
            _replace_contents(parameter, moved)
        for buffer in self.layer.buffers():
            _replace_contents(buffer, fn(buffer))
        return self

    def __repr__(self):
        return f"as_module({indented(repr(self.layer))})"


def _places_of_parameters(layer):
    """((owner, name), tensor) for every parameter of ``layer`` and of its sub-layers:
    the layer that registered it and its name there."""
    for name in layer._param_names:
        yield (layer, name), getattr(layer, name)
    for _, child in layer.named_children():
        yield from _places_of_parameters(child)


def _torch_parameter(place, tensor):
    """The torch Parameter of the layer parameter ``tensor`` at ``place`` (owner, name):
    the one made for it before while it still shares the tensor's storage, else a new one."""
    owner, name = place
    made = _PARAMETERS.setdefault(owner, {})
    parameter = made.get(name)
    if parameter is None or parameter.data_ptr() != tensor.data_ptr() or parameter.dtype != tensor.dtype:
        parameter = made[name] = torch.nn.Parameter(tensor)
    return parameter


def _replace_contents(tensor, new):
    """Gives ``tensor`` the contents of ``new`` while keeping the Python object."""
    if new is not tensor:
        torch.utils.swap_tensors(tensor, new)


def as_module(layer):
    """``layer`` (any nnlab Layer) as a ``torch.nn.Module`` whose forward is the layer's
    forward and whose backward is the layer's hand-written backward; see ``LayerModule``.

    Each call keeps its own cache for its backward, so a wrapper may be called more
    than once per step (as a torch module may), and wrappers of one layer tie weights.
    """
    return LayerModule(layer)
