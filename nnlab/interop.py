"""nnlab layers as ``torch.nn.Module``s: ``as_module(layer)``.

The module's forward is the layer's forward, run with autograd off; its backward is the
layer's hand-written backward, handed to autograd through a ``torch.autograd.Function``.
Autograd never differentiates the layer's forward: this module is the one place outside
verification where nnlab uses autograd, and only to chain the hand-written backward into
a torch graph. So nnlab layers mix with torch.nn layers in one model and train with
``torch.optim``.
"""

import torch
from torch.autograd.function import once_differentiable

from .layers import Layer
from .layers.containers import indented


class _HandWrittenBackward(torch.autograd.Function):
    """Forward: ``layer(x, *extra, **kw)`` with autograd off. Backward: the layer's own
    ``backward``, giving dL/dx and, for each distinct parameter, the gradient of this one
    call (the layer's own gradient tensors are left as they were)."""

    @staticmethod
    def forward(ctx, module, x, call, *params):
        args, kwargs = call
        ctx.module = module
        ctx.call_id = module._start_call()
        out = module.layer(x, *args, **kwargs)
        ctx.multiple = isinstance(out, tuple)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, *douts):
        module = ctx.module
        if ctx.call_id != module._latest_call:
            raise RuntimeError(
                f"as_module({module.layer!r}): backward through an earlier forward; an nnlab layer "
                "keeps only its latest forward's cache, so wrap one layer per use"
            )
        grads = [grad for _, grad in module._pairs]
        saved = [grad.clone() for grad in grads]
        for grad in grads:
            grad.zero_()
        dx = module.layer.backward(douts if ctx.multiple else douts[0])
        call_grads = [grad.clone() for grad in grads]
        for grad, before in zip(grads, saved):
            grad.copy_(before)
        return (None, dx, None, *call_grads)


class LayerModule(torch.nn.Module):
    """A ``torch.nn.Module`` around an nnlab ``Layer`` (see ``as_module``).

    Parameters are ``torch.nn.Parameter``s sharing storage with the layer's own
    parameter tensors, registered under the layer's state_dict keys (nested modules
    stand for the dotted prefixes), so ``torch.optim`` updates what the layer computes
    with, and ``state_dict()`` has the layer's keys. Buffers (BatchNorm statistics) are
    the layer's own tensors. ``train()`` / ``eval()`` set the layer's mode; ``.to()``,
    ``.double()`` and ``.cuda()`` move the layer's tensors in place and keep every
    Parameter object, so an optimizer built before the move keeps working.
    """

    def __init__(self, layer):
        super().__init__()
        if not isinstance(layer, Layer):
            raise TypeError(f"as_module: expected an nnlab Layer, got {type(layer).__name__}")
        self.layer = layer
        self._latest_call = 0
        self._pairs = []  # distinct (layer parameter, layer gradient), in params() order
        self._parameters_of = {}  # id(layer parameter) -> its torch Parameter
        grad_of = {id(param): grad for param, grad in layer.params()}
        for key, tensor in layer.named_tensors():
            owner, name = self._owner_of(key)
            if id(tensor) not in grad_of:
                owner.register_buffer(name, tensor)
                continue
            if id(tensor) not in self._parameters_of:
                self._parameters_of[id(tensor)] = torch.nn.Parameter(tensor)
                self._pairs.append((tensor, grad_of[id(tensor)]))
            owner.register_parameter(name, self._parameters_of[id(tensor)])
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

    def _start_call(self):
        self._latest_call += 1
        return self._latest_call

    def forward(self, x, *args, **kwargs):
        params = [self._parameters_of[id(param)] for param, _ in self._pairs]
        return _HandWrittenBackward.apply(self, x, (args, kwargs), *params)

    def train(self, mode=True):
        super().train(mode)
        self.layer.train(mode)
        return self

    def _apply(self, fn, recurse=True):
        """Applies ``fn`` (a move or cast from ``.to()``, ``.double()``, ...) to the
        layer's parameters, gradients and buffers in place, then points each Parameter
        at its moved tensor, keeping every object's identity."""
        for param, grad in self._pairs:
            _replace_contents(param, fn(param))
            _replace_contents(grad, fn(grad))
            parameter = self._parameters_of[id(param)]
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


def _replace_contents(tensor, new):
    """Gives ``tensor`` the contents of ``new`` while keeping the Python object."""
    if new is not tensor:
        torch.utils.swap_tensors(tensor, new)


def as_module(layer):
    """``layer`` (any nnlab Layer) as a ``torch.nn.Module`` whose forward is the layer's
    forward and whose backward is the layer's hand-written backward; see ``LayerModule``.

    One wrapper per use: an nnlab layer caches only its latest forward, so backward
    through an earlier call of the same wrapper raises RuntimeError.
    """
    return LayerModule(layer)
