"""The contract every nnlab layer follows: a forward pass, a hand-written backward
pass, named parameters with gradients that accumulate, and buffers."""

import abc

import torch


class Layer(abc.ABC):
    """A differentiable function with a hand-written vector-Jacobian product.

    ``forward(x)`` computes the output and caches what ``backward`` needs;
    ``backward(dout)`` returns dL/dx for the latest forward and *adds* dL/dparam
    into each parameter's gradient (gradients accumulate, as in PyTorch, until
    ``zero_grad``). Gradient tensors are allocated once and updated in place, so an
    optimizer built from ``params()`` keeps seeing the live gradient.

    Subclasses register tensors with ``add_param`` (trainable, has a gradient) and
    ``add_buffer`` (state that is saved but not trained, e.g. running statistics),
    and list sub-layers in ``named_children``.
    """

    def __init__(self):
        self.training = True
        self._param_names = []
        self._buffer_names = []
        self._grads = {}

    def __call__(self, *args, **kw):
        return self.forward(*args, **kw)

    @abc.abstractmethod
    def forward(self, x, **kw):
        """Computes the output; keyword arguments a layer does not use are ignored."""

    @abc.abstractmethod
    def backward(self, dout):
        """Returns the gradient w.r.t. the latest forward's input."""

    def __repr__(self):
        return type(self).__name__

    # Registration -------------------------------------------------------------

    def add_param(self, name, value):
        """Makes ``value`` a trainable parameter ``self.<name>`` with a zero gradient."""
        setattr(self, name, value)
        self._param_names.append(name)
        self._grads[name] = torch.zeros_like(value)

    def add_buffer(self, name, value):
        """Makes ``value`` saved, moved and loaded state ``self.<name>`` that is not trained."""
        setattr(self, name, value)
        self._buffer_names.append(name)

    def grad(self, name):
        """The accumulated gradient of parameter ``name``."""
        return self._grads[name]

    def named_children(self):
        """(name, layer) pairs of the sub-layers; containers override this."""
        return []

    # Cache --------------------------------------------------------------------

    def cached(self, name):
        """The value ``forward`` stored in ``self.<name>``; a clear error if it has not run."""
        value = getattr(self, name, None)
        if value is None:
            raise RuntimeError(
                f"{type(self).__name__}: backward() called before forward(); "
                "run a forward pass first"
            )
        return value

    # Input checks -------------------------------------------------------------

    def check_input(self, x, expected, ok):
        """Raises ValueError naming this layer, ``expected`` and x's shape unless ``ok``."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self!r}: expected a torch.Tensor input, got {type(x).__name__}")
        if not ok:
            raise ValueError(f"{self!r}: expected input of shape {expected}, got {tuple(x.shape)}")

    def check_dtype(self, x):
        """Raises ValueError unless x has the dtype and device of this layer's parameters."""
        if not self._param_names:
            return
        param = getattr(self, self._param_names[0])
        if x.dtype != param.dtype or x.device != param.device:
            raise ValueError(
                f"{self!r}: expected a {param.dtype} input on {param.device} (the "
                f"parameters'), got {x.dtype} on {x.device}; use layer.to(...) or convert x"
            )

    # Parameters, modes, devices -------------------------------------------------

    def params(self):
        """(parameter, gradient) pairs: this layer's own, then each child's, in order."""
        pairs = [(getattr(self, name), self._grads[name]) for name in self._param_names]
        for _, child in self.named_children():
            pairs.extend(child.params())
        return pairs

    def buffers(self):
        """Buffers (saved, untrained state): this layer's own, then each child's, in order."""
        tensors = [getattr(self, name) for name in self._buffer_names]
        for _, child in self.named_children():
            tensors.extend(child.buffers())
        return tensors

    def zero_grad(self):
        for _, grad in self.params():
            grad.zero_()

    def train(self, training_mode=True):
        self.training = bool(training_mode)
        for _, child in self.named_children():
            child.train(training_mode)
        return self

    def eval(self):
        return self.train(False)

    def to(self, device=None, dtype=None):
        """Moves parameters, gradients and buffers to ``device`` and/or a floating
        ``dtype``, in place: every tensor keeps its identity (as ``torch.nn.Module.to``
        does), so an optimizer built before the move updates the moved parameters.
        Integer buffers (``num_batches_tracked``) keep their dtype."""
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"{self!r}.to: dtype must be floating point, got {dtype}")
        for name in self._param_names:
            _move_in_place(getattr(self, name), device, dtype)
            _move_in_place(self._grads[name], device, dtype)
        for name in self._buffer_names:
            buffer = getattr(self, name)
            _move_in_place(buffer, device, dtype if buffer.is_floating_point() else None)
        for _, child in self.named_children():
            child.to(device=device, dtype=dtype)
        return self

    # State --------------------------------------------------------------------

    def named_tensors(self, prefix=""):
        """(key, tensor) for every parameter and buffer, keyed like PyTorch's state_dict."""
        for name in self._param_names + self._buffer_names:
            yield prefix + name, getattr(self, name)
        for child_name, child in self.named_children():
            yield from child.named_tensors(f"{prefix}{child_name}.")

    def state_dict(self):
        """A copy of every parameter and buffer; later training does not change it."""
        return {key: tensor.clone() for key, tensor in self.named_tensors()}

    def load_state_dict(self, state):
        """Copies ``state`` into the parameters and buffers in place. Every key and
        shape is checked before anything is copied, so a bad state changes nothing."""
        targets = dict(self.named_tensors())
        missing = sorted(set(targets) - set(state))
        unexpected = sorted(set(state) - set(targets))
        if missing or unexpected:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: missing keys {missing}, "
                f"unexpected keys {unexpected}"
            )
        for key, target in targets.items():
            value = state[key]
            if not isinstance(value, torch.Tensor) or value.shape != target.shape:
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: key '{key}' expects shape "
                    f"{tuple(target.shape)}, got {got}"
                )
        for key, target in targets.items():
            target.copy_(state[key])


def _move_in_place(tensor, device, dtype):
    """Gives ``tensor`` the contents of ``tensor.to(device, dtype)`` while keeping the
    Python object (``torch.utils.swap_tensors``); nothing happens when it is already there."""
    moved = tensor.to(device=device, dtype=dtype)
    if moved is not tensor:
        torch.utils.swap_tensors(tensor, moved)
