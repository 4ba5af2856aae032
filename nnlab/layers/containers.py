"""Sequential composition, the Builder base of models built as one Sequential, and the
activation names builders accept."""

import copy

from .activations import ELU, GELU, SELU, Mish, SiLU, Softplus
from .base import Layer, check_input_gradient, recall_call, remember_call
from .dense import LeakyReLU, ReLU, Sigmoid, Tanh
from .loss_base import several_inputs

__all__ = [
    "ACTIVATIONS",
    "Builder",
    "ChildErrors",
    "LayerList",
    "Sequential",
    "indented",
    "make_activation",
]

ACTIVATIONS = {
    "relu": ReLU, "lrelu": LeakyReLU, "sigmoid": Sigmoid, "tanh": Tanh,
    "elu": ELU, "gelu": GELU, "selu": SELU, "silu": SiLU, "mish": Mish, "softplus": Softplus,
}


class DefaultString(str):
    """A default argument that prints as its string but is not the same object as that
    string written by the caller, so ``activation='relu', activation_type='tanh'`` (a
    contradiction) is told apart from ``activation_type='tanh'`` alone."""


DEFAULT_ACTIVATION = DefaultString("relu")


def make_activation(activation):
    """A fresh activation layer from a name in ACTIVATIONS, a Layer class, or a Layer
    instance (copied, so that each position caches its own input)."""
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{activation}'; expected one of {sorted(ACTIVATIONS)} or a Layer")
        return ACTIVATIONS[activation]()
    if isinstance(activation, Layer):
        return copy.deepcopy(activation)
    if isinstance(activation, type) and issubclass(activation, Layer):
        return activation()
    raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)} or a Layer, got {activation!r}")


def indented(text):
    """Indents every line after the first by one tab, for nested container reprs."""
    return text.replace("\n", "\n\t")


class LayerList(Layer):
    """Base of the containers that hold an ordered list of layers: children named
    "0", "1", ... (the state_dict prefixes), indexing (a slice gives the same kind of
    container), ``len``, iteration, and a repr of one child a line."""

    def __init__(self, *layers):
        super().__init__()
        for index, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"{type(self).__name__}: element [{index}] must be a Layer, got {type(layer).__name__}")
        self.layers = list(layers)

    def named_children(self):
        return [(str(index), layer) for index, layer in enumerate(self.layers)]

    def child_errors(self, index):
        """A context that re-raises child ``index``'s errors with the child named."""
        return ChildErrors(f"{type(self).__name__}[{index}] ({type(self.layers[index]).__name__})")

    def backward_entry(self):
        last = len(self.layers) - 1
        return f"{type(self).__name__}[{last}] ({self.layers[last].backward_entry()})"

    def __getitem__(self, index):
        if isinstance(index, slice):
            return type(self)(*self.layers[index])
        return self.layers[index]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __repr__(self):
        lines = [type(self).__name__]
        lines += [f"\t[{index}] {indented(repr(layer))}" for index, layer in enumerate(self.layers)]
        return "\n".join(lines)


class Sequential(LayerList):
    """Layers applied in order: ``out = f_n(... f_2(f_1(x)))``. Same as ``torch.nn.Sequential``.

    Backward: the chain rule in reverse, ``dx = b_1(b_2(... b_n(dout)))`` where b_i is
    layer i's backward; after ``requires_input_grad(False)`` it stops at the first layer
    with parameters, which then adds into its parameter gradients only, and returns None. ``forward(x, **kw)`` hands ``kw`` to every layer, so
    ``Sequential(model, CrossEntropyLoss())(x, y=labels)`` is the loss.
    One layer may stand at several places (``act = ReLU(); Sequential(l1, act, l2, act)``,
    or ``Sequential(l, Tanh(), l)``, tied weights): each place gets the backward of its
    own call, and the parameter gradients of all places add up, as in PyTorch. A child
    may also be called on its own between the container's forward and backward: it
    gets its latest cache back after the container's backward (``recall_call``).
    A loss of several inputs (``MarginRankingLoss``, ...) is a TypeError at construction.
    A child's backward that returns None where a gradient is needed is a RuntimeError
    naming it.
    Shapes: those of the first layer's input and the last layer's output.
    Caches: per child, its call's id and a shallow copy of its attributes (the child's
    own cache holds the tensors), to tell the calls of a shared layer apart.

    Example::

        >>> import torch
        >>> from nnlab.grad_compare import check_layer
        >>> from nnlab.layers import Linear, ReLU, Sequential
        >>> model = Sequential(Linear(4, 8), ReLU(), Linear(8, 2))
        >>> x = torch.randn(5, 4)
        >>> model(x).shape
        torch.Size([5, 2])
        >>> model.backward(torch.ones(5, 2)).shape   # through every layer, in reverse
        torch.Size([5, 4])
        >>> len(model.params())                      # (parameter, gradient) pairs, for an optimizer
        4
        >>> check_layer(model, x).passed
        True
    """

    def __init__(self, *layers):
        super().__init__(*layers)
        for index, layer in enumerate(self.layers):
            call = several_inputs(layer)
            if call is not None:
                raise TypeError(
                    f"Sequential[{index}] ({type(layer).__name__}) takes several inputs ({call}), and a "
                    "Sequential hands each layer one; call it on the outputs of the Sequential: "
                    "loss(model(x1), model(x2), y), then backward through the model once per input"
                )
        self._calls = None

    def forward(self, x, **kw):
        calls = []
        for index, layer in enumerate(self.layers):
            with self.child_errors(index):
                x = layer(x, **kw)
            calls.append(remember_call(layer))
        self._calls = calls
        return self.finish_forward(x)

    def collect_input_grad_needs(self, flag, needs):
        """Gives ``flag`` to the children up to and including the first one with
        parameters (a parameter-free prefix such as Flatten or Dropout sees the input's
        values, so it needs no gradient either when the input needs none) and True to the
        rest (see ``Layer.requires_input_grad``)."""
        super().collect_input_grad_needs(flag, needs)
        for layer in self.layers:
            layer.collect_input_grad_needs(flag, needs)
            if layer.params():
                flag = True

    def backward(self, dout):
        self.start_backward(dout)
        for index in reversed(range(len(self.layers))):
            layer = self.layers[index]
            with recall_call(layer, self._calls[index]), self.child_errors(index):
                dout = layer.backward(dout)
            if dout is None:
                # A child that gives no input gradient ends the chain: what comes before it
                # must be a parameter-free prefix of a Sequential whose input needs none.
                self._check_chain_ends(index)
                return None
        return dout if self.needs_input_grad else None

    def _check_chain_ends(self, index):
        """RuntimeError unless the chain may end at child ``index``, which returned None."""
        layer = self.layers[index]
        check_input_gradient(f"{type(self).__name__}[{index}]", layer, None)
        with_params = [earlier for earlier in range(index) if self.layers[earlier].params()]
        if (self.needs_input_grad and layer.has_input_gradient) or with_params:
            needed_by = f"{type(self).__name__}[{with_params[-1]}]'s parameters" if with_params else "the caller"
            raise RuntimeError(
                f"{type(self).__name__}[{index}] ({type(layer).__name__}).backward returned "
                f"no input gradient (requires_input_grad(False)), but {needed_by} need it; "
                "call requires_input_grad(True) on the model"
            )


class ChildErrors:
    """Re-raises a child's ValueError, TypeError or RuntimeError with the child named
    in front, keeping the original as the cause."""

    def __init__(self, where):
        self.where = where

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind in (ValueError, TypeError, RuntimeError):
            raise kind(f"in {self.where}: {error}") from error
        return False


class Builder(Layer):
    """A model built as one Sequential, kept in ``.sequence``: forward, backward,
    indexing and iteration are the Sequential's. Prints as ``Name, Sequential`` then
    one layer a line. Subclasses set ``self.sequence`` in their constructor.
    """

    sequence: Sequential

    def named_children(self):
        return [("sequence", self.sequence)]

    def backward_entry(self):
        return self.sequence.backward_entry()

    def forward(self, x, **kw):
        out = self.sequence(x, **kw)
        self._sequence_call = remember_call(self.sequence)
        return self.finish_forward(out)

    def input_readers(self):
        return [self.sequence]

    def backward(self, dout):
        self.start_backward(dout)
        with recall_call(self.sequence, self._sequence_call):
            return self.sequence.backward(dout)

    def __getitem__(self, index):
        return self.sequence[index]

    def __len__(self):
        return len(self.sequence)

    def __iter__(self):
        return iter(self.sequence)

    def __repr__(self):
        return f"{type(self).__name__}, {self.sequence!r}"
