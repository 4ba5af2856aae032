"""The contract every nnlab layer follows: a forward pass, a hand-written backward
pass, named parameters with gradients that accumulate, and buffers."""

import abc
import functools
import itertools
import math
import numbers

import torch

__all__ = [
    "Layer",
    "Symbolic",
    "checked_int",
    "checked_real",
    "describe",
    "recall_call",
    "remember_call",
]

# Every call of a layer gets a new number, so a container can tell whether a child has
# been called again (it is used at another place too) since the call it remembers.
_CALL_IDS = itertools.count(1)


class Symbolic:
    """Marker base of symbolic values: the nodes of a graph model (``nnlab.graph.Node``).

    Calling a layer with a symbolic value as its first argument computes nothing:
    ``Layer.__call__`` hands the call to ``args[0].apply_layer(layer, args, kw)``, which
    records the layer in the graph and returns a new symbolic value. The marker lives
    here so that this package never imports ``nnlab.graph``, the module built on it; an
    ordinary call on tensors pays one ``isinstance`` check for it.
    """

    def apply_layer(self, layer, args, kw):
        raise NotImplementedError(f"{type(self).__name__} must define apply_layer")


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

    ``requires_input_grad(False)`` tells a layer that nobody needs dL/dx (its input
    is data): backward then skips that work and returns None. Every built-in layer
    reads ``needs_input_grad``; a layer that ignores it is still right, only slower.
    Otherwise backward must return dL/dx: containers raise, naming the layer, when it
    returns None, unless its class sets ``has_input_gradient = False`` (a layer whose
    input has no gradient by design, such as an embedding of integer token ids).

    Calling a layer (``layer(x)``) runs ``forward``; calling it on graph nodes
    (``layer(node)``, see ``Symbolic`` and ``nnlab.graph``) adds it to a graph instead.
    """

    # Attributes that backward reads, checked for in-place changes (see finish_forward).
    SAVED_TENSORS = ()

    # Whether backward returns the input gradient; see requires_input_grad.
    needs_input_grad = True

    # Whether a container's (or as_module's) backward of this layer is running now
    # (recall_call); whether a call of the layer's own awaits its backward, and whether
    # the latest forward, a container's (remember_call), has hidden it: the layer's own
    # backward would then use the container's cache.
    _container_backward = False
    _own_call_pending = False
    _own_call_hidden = False
    _pending_before_call = False

    # False for a layer whose input has no gradient by design (integer token ids, as an
    # embedding takes): its backward returns None, which containers then accept.
    has_input_gradient = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in vars(cls):
            cls.__init__ = _recording_constructor_call(cls.__init__)

    def constructor_call(self):
        """(args, kwargs) this layer was built with, as given (``nnlab.save`` describes
        a model by them): recorded by every subclass's ``__init__``. A layer whose
        constructor arguments no longer describe it (an attribute they set was changed
        later) overrides this to return arguments that do."""
        return self.__dict__["_constructor_call"]

    def __init__(self):
        self.training = True
        self._param_names = []
        self._buffer_names = []
        self._grads = {}
        self._call_id = None
        self._output_shapes = None
        self._saved_versions = ()

    def __call__(self, *args, **kw):
        if args and isinstance(args[0], Symbolic):
            return args[0].apply_layer(self, args, kw)
        out = self.forward(*args, **kw)
        self._call_id = next(_CALL_IDS)
        # remember_call takes these back when the call was a container's
        self._pending_before_call = self._own_call_pending
        self._own_call_pending = True
        self._own_call_hidden = False
        return out

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

    def requires_input_grad(self, flag=True):
        """Says whether ``backward`` must return the gradient w.r.t. the input, and
        returns self (what a tensor's requires-grad flag says in torch; a layer reads it
        as ``needs_input_grad``, like ``ctx.needs_input_grad`` in a torch Function).
        With False, backward still adds into the parameter gradients but returns None and
        skips the work of dx (a model's first layer, whose input is data: ``LayerTrainer``
        sets it for its backward). Containers pass the flag on to the children that see
        their input (``input_readers``); Sequential and the graph Model say more. A layer
        used at several places of the model needs its input gradient if any one of them
        does (a False reaches it only when every place it stands at reads data)."""
        if not isinstance(flag, bool):
            raise TypeError(f"{self!r}.requires_input_grad: flag must be a bool, got {flag!r}")
        needs = {}
        self.collect_input_grad_needs(flag, needs)
        for layer, needed in needs.values():
            layer.needs_input_grad = needed
        return self

    def collect_input_grad_needs(self, flag, needs):
        """Records in ``needs`` ({id(layer): (layer, needed)}) that this place of the
        layer needs its input gradient when ``flag``, then does the same for each child
        with what that child's place needs: ``flag`` for the ``input_readers``. A layer
        met at several places needs it if any place does. Containers that pass on more
        than ``flag`` override this (Sequential, the graph Model)."""
        _, needed = needs.get(id(self), (self, False))
        needs[id(self)] = (self, needed or flag)
        for child in self.input_readers():
            child.collect_input_grad_needs(flag, needs)

    def input_readers(self):
        """The sub-layers that get this layer's input as theirs (and so its
        requires_input_grad flag): none here; Residual both paths, Heads every head."""
        return []

    # Cache ----------------------------------------------------------------------

    def cached(self, name):
        """The value ``forward`` stored in ``self.<name>``; a clear error if it has not run."""
        value = getattr(self, name, None)
        if value is None:
            raise RuntimeError(
                f"{type(self).__name__}: backward() called before forward(); "
                "run a forward pass first"
            )
        return value

    def finish_forward(self, out):
        """Ends a forward pass and returns ``out``. Records what ``start_backward``
        checks: the output's shape (which dout must have) and the version counter of
        every tensor named in the class's ``SAVED_TENSORS`` (the attributes backward
        reads; one may hold a tuple of tensors, as a layer of several inputs caches
        them), so that one changed in place before backward is caught, as torch's
        autograd catches it."""
        self._output_shapes = _shapes(out)
        saved = []
        for name in self.SAVED_TENSORS:
            value = getattr(self, name)
            if isinstance(value, tuple):
                saved.extend((f"{name}[{index}]", item) for index, item in enumerate(value))
            else:
                saved.append((name, value))
        self._saved_versions = [(name, tensor, tensor._version) for name, tensor in saved if _tracked(tensor)]
        return out

    def start_backward(self, dout):
        """Begins a backward pass and returns ``dout``: RuntimeError naming the layer if
        forward has not run, or if a tensor it cached was changed in place since;
        ValueError unless dout has the output's shape (a number or a 0-d tensor for a
        scalar output; a tuple with a tensor or None per output for several outputs)."""
        if self._output_shapes is None:
            raise RuntimeError(f"{self.backward_entry()}: backward() called before forward(); run a forward pass first")
        if not self._container_backward:
            if self._own_call_hidden:
                raise RuntimeError(
                    f"{self!r}: backward() called on its own, for its own earlier call, but this layer's "
                    "latest forward ran inside a container (or as_module), whose cache it now holds; "
                    "call the layer itself (layer(x)) again right before its own backward"
                )
            self._own_call_pending = False
        for name, tensor, version in self._saved_versions:
            if tensor._version != version:
                raise RuntimeError(
                    f"{self!r}: the tensor '{name}' saved by forward was modified in place before "
                    "backward; backward would use the changed values. Change a clone instead, or "
                    "run forward again"
                )
        _check_dout(self, dout, self._output_shapes)
        return dout

    def backward_entry(self):
        """Names where backward starts, for errors: the layer's class; a container names
        its child whose backward runs first."""
        return type(self).__name__

    # Input checks -------------------------------------------------------------

    def check_input(self, x, expected, ok):
        """TypeError naming this layer unless x is a tensor; then ValueError naming this
        layer, ``expected`` and x's shape unless ``ok`` (a bool, or a function of x,
        called once x is known to be a tensor)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self!r}: expected a torch.Tensor input, got {type(x).__name__}")
        if callable(ok):
            ok = ok(x)
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
        """(parameter, gradient) pairs: this layer's own, then each child's, in order;
        a parameter of a layer used at several places is listed once, as in
        ``torch.nn.Module.parameters()``."""
        pairs = [(getattr(self, name), self._grads[name]) for name in self._param_names]
        for _, child in self.named_children():
            pairs.extend(child.params())
        return _unique(pairs, key=lambda pair: id(pair[0]))

    def buffers(self):
        """Buffers (saved, untrained state): this layer's own, then each child's, in
        order; each listed once."""
        tensors = [getattr(self, name) for name in self._buffer_names]
        for _, child in self.named_children():
            tensors.extend(child.buffers())
        return _unique(tensors, key=id)

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
        Integer buffers (``num_batches_tracked``) keep their dtype. As in torch, a dtype
        may come first: ``layer.to(torch.float64)``."""
        if isinstance(device, torch.dtype):
            if dtype is not None:
                raise TypeError(f"{self!r}.to: two dtypes given ({device} and {dtype})")
            device, dtype = None, device
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"{self!r}.to: dtype must be floating point, got {dtype}")
        for name in self._param_names:
            _move_in_place(getattr(self, name), device, dtype)
            _move_in_place(self._grads[name], device, dtype)
            _attach_grad(getattr(self, name), self._grads[name])
        for name in self._buffer_names:
            buffer = getattr(self, name)
            _move_in_place(buffer, device, dtype if buffer.is_floating_point() else None)
        for _, child in self.named_children():
            child.to(device=device, dtype=dtype)
        return self

    def double(self):
        """``to(dtype=torch.float64)``, as ``torch.nn.Module.double``."""
        return self.to(dtype=torch.float64)

    def float(self):
        """``to(dtype=torch.float32)``, as ``torch.nn.Module.float``."""
        return self.to(dtype=torch.float32)

    def parameters(self):
        """Yields the parameter tensors, each once (this layer's, then each child's), as
        ``torch.nn.Module.parameters()`` does; ``params()`` gives them with their gradients.
        An nnlab optimizer or clipping function given these tensors finds each one's
        gradient (``layer_grad``), so ``Adam(model.parameters(), lr=1e-3)`` trains as with
        ``params()``. (A ``torch.optim`` optimizer would not: the tensors have no ``.grad``.)"""
        for param, grad in self.params():
            _attach_grad(param, grad)
            yield param

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


def _recording_constructor_call(init):
    """``init`` that first records its arguments in ``self._constructor_call``; only the
    outermost ``__init__`` of a call records (a subclass's, not the super() calls in it)."""

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        if "_constructor_call" not in self.__dict__:
            self.__dict__["_constructor_call"] = (args, kwargs)
        init(self, *args, **kwargs)

    return __init__


def _attach_grad(param, grad):
    """Lets ``layer_grad(param)`` find ``grad``: a Python attribute of the tensor, set
    each time ``parameters()`` hands it out and after ``to`` moves it (a move by
    ``swap_tensors`` takes such attributes away; an optimizer keeps the gradient it
    found, which is moved in place)."""
    param._nnlab_grad = grad


def layer_grad(tensor):
    """The gradient tensor of ``tensor`` when it is an nnlab layer's parameter, else None."""
    return getattr(tensor, "_nnlab_grad", None)


def _move_in_place(tensor, device, dtype):
    """Gives ``tensor`` the contents of ``tensor.to(device, dtype)`` while keeping the
    Python object (``torch.utils.swap_tensors``); nothing happens when it is already there."""
    moved = tensor.to(device=device, dtype=dtype)
    if moved is not tensor:
        torch.utils.swap_tensors(tensor, moved)


def _tracked(value):
    """True for a tensor whose version counter can be read (not an inference tensor)."""
    return isinstance(value, torch.Tensor) and not value.is_inference()


def _unique(items, key):
    """``items`` without repeats (by ``key``), first occurrences in order."""
    seen = set()
    kept = []
    for item in items:
        if key(item) not in seen:
            seen.add(key(item))
            kept.append(item)
    return kept


def _shapes(out):
    """The shape of ``out``, or a tuple of shapes for a tuple of outputs."""
    if isinstance(out, (tuple, list)):
        return tuple(_shapes(item) for item in out)
    if isinstance(out, torch.Tensor):
        return out.shape
    return torch.Size([])


def describe(value):
    """What ``value`` is, for error messages: a tensor's shape, a sequence's length and
    item types, or the type's name."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items ({', '.join(type(i).__name__ for i in value)})"
    return f"a {type(value).__name__}"


def _check_dout(layer, dout, shapes):
    """ValueError (TypeError for a non-tensor) naming ``layer`` unless ``dout`` fits the
    output ``shapes`` recorded by ``finish_forward``."""
    if not isinstance(shapes, torch.Size):
        if not isinstance(dout, (tuple, list)) or len(dout) != len(shapes):
            raise ValueError(
                f"{type(layer).__name__}.backward: expected a tuple of {len(shapes)} gradients "
                f"(one per output, None allowed), got {describe(dout)}"
            )
        for item, shape in zip(dout, shapes):
            if item is not None:
                _check_dout(layer, item, shape)
        return
    if len(shapes) == 0 and isinstance(dout, numbers.Real) and not isinstance(dout, bool):
        return
    if not isinstance(dout, torch.Tensor):
        raise TypeError(f"{type(layer).__name__}.backward: expected dout as a torch.Tensor, got {describe(dout)}")
    if dout.shape != shapes:
        raise ValueError(
            f"{type(layer).__name__}.backward: expected dout of shape {tuple(shapes)} (the output's), "
            f"got {tuple(dout.shape)}"
        )


def remember_call(child):
    """What a container keeps of a child's forward, right after it: the call's id and
    a copy of the child's attributes (its cache; dicts and lists copied one level,
    since some layers fill a cache dict in place). Notes first that the call was the
    container's, not one of the child's own (see recall_call)."""
    child._own_call_pending = child._pending_before_call
    child._own_call_hidden = child._own_call_pending
    attributes = {name: value.copy() if type(value) in (dict, list) else value for name, value in vars(child).items()}
    return child._call_id, attributes


def recall_call(child, memory):
    """Use as ``with recall_call(child, memory): child.backward(dout)``. When the child
    has been called again since the call ``memory`` (from ``remember_call``) belongs to
    (one layer used at several places, or called on its own in between), puts back that
    call's cache for the backward, and the child's latest cache after it, so that each
    use gets the backward of its own call, including a later bare ``child.backward``.
    The training and needs_input_grad flags are left as they are now. A bare
    ``child.backward`` meant for a call of the child's own that a container's call has
    since replaced (``remember_call`` notes it) is a RuntimeError: the child no longer
    holds that call's cache."""
    return _RecalledCall(child, memory)


class _RecalledCall:
    """The context of ``recall_call``: the remembered call's cache inside, the child's
    latest outside."""

    def __init__(self, child, memory):
        call_id, attributes = memory
        self.child = child
        self.latest = None
        if child._call_id != call_id:
            self.latest = dict(vars(child))
            flags = {name: getattr(child, name) for name in ("training", "needs_input_grad")}
            vars(child).update(attributes)
            vars(child).update(flags)
        child._container_backward = True

    def __enter__(self):
        return self.child

    def __exit__(self, kind, error, traceback):
        self.child._container_backward = False
        if self.latest is not None:
            vars(self.child).update(self.latest)
        return False


def check_input_gradient(where, child, grad):
    """RuntimeError naming ``where`` (the child's place) when ``grad``, what the child's
    backward returned, is None although the child was asked for its input gradient
    (``needs_input_grad``) and has one (``has_input_gradient``): a backward that forgot
    its ``return``, which would otherwise read as a zero gradient upstream."""
    if grad is None and child.needs_input_grad and child.has_input_gradient:
        raise RuntimeError(
            f"{where}: {type(child).__name__}.backward returned None, expected the gradient with "
            "respect to its input (does its backward end with 'return dx'? A layer whose input has "
            "no gradient, such as token ids, sets the class attribute has_input_gradient = False)"
        )


def checked_int(owner, name, value, minimum):
    """``value`` as an int; ValueError naming ``owner`` and ``name`` unless it is an
    integer (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def checked_bool(owner, name, value):
    """``value`` as a bool; TypeError naming ``owner`` and ``name`` unless it is a bool
    or the int 0 or 1 (so that a string such as 'False' is not taken as true)."""
    if not isinstance(value, numbers.Integral) or value not in (0, 1):
        raise TypeError(f"{owner}: {name} must be True or False, got {value!r}")
    return bool(value)


def checked_real(owner, name, value, low=-math.inf, high=math.inf, low_open=False, high_open=True):
    """``value`` as a float; ValueError naming ``owner`` and ``name`` unless it is a
    finite real number (not a bool or a string) in the interval."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{owner}: {name} must be a real number, got {value!r}")
    value = float(value)
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (math.isfinite(value) and above and below):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{owner}: {name} must be a finite number in {interval}, got {value!r}")
    return value
