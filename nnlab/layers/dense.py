"""Fully connected and bilinear layers, the course's activations (ReLU, LeakyReLU, Sigmoid,
Tanh; Softmax lives with the other activations in ``activations`` and is importable from
here too), Dropout, Flatten, Unflatten and Identity."""

import math

import torch

from .activations import Softmax
from .base import Layer, checked_bool, checked_int, checked_real

__all__ = [
    "Bilinear", "Dropout", "Flatten", "Identity", "LeakyReLU", "Linear", "ReLU", "Sigmoid", "Softmax", "TanH",
    "Tanh", "Unflatten", "dropout_mask", "keep_mask",
]


class Linear(Layer):
    """Affine map ``out = x @ W.T + b``. Same as ``torch.nn.Linear`` (for a 2-D x with a
    bias, computed as torch computes it, one ``addmm``: the same bits).

    Backward: ``dx = dout @ W``; ``dW += dout.T @ x``; ``db += dout.sum(0)``
    (leading dimensions of x and dout flattened into one batch dimension); dW accumulates
    inside one fused GEMM (``addmm_``), and dx is skipped after ``requires_input_grad(False)``.

    Shapes: x (*, in_features) -> out (*, out_features); usually (N, in) -> (N, out).
    Parameters: ``weight`` (out, in) and ``bias`` (out); ``w`` and ``b`` name the same
    tensors, ``dw`` and ``db`` their gradients.
    Init: ``wstd=None`` draws both from U(-1/sqrt(in), 1/sqrt(in)) like PyTorch;
    a float draws W ~ N(0, wstd^2) and sets b = 0.
    Caches: the input x.

    Example::

        >>> import torch
        >>> from nnlab.layers import Linear
        >>> layer = Linear(3, 2)
        >>> out = layer(torch.randn(4, 3))
        >>> dx = layer.backward(torch.ones(4, 2))   # returns dx, adds into layer.dw and layer.db
        >>> dx.shape, layer.dw.shape
        (torch.Size([4, 3]), torch.Size([2, 3]))
        >>> layer.db                                # the sum of dout over the batch
        tensor([4., 4.])
    """

    SAVED_TENSORS = ("_x", "weight")

    def __init__(self, in_features, out_features, bias=True, wstd=None):
        super().__init__()
        self.in_features = checked_int("Linear", "in_features", in_features, 1)
        self.out_features = checked_int("Linear", "out_features", out_features, 1)
        if wstd is not None:
            wstd = checked_real("Linear", "wstd", wstd, 0.0)
        if wstd is None:
            bound = 1.0 / math.sqrt(in_features)
            weight = torch.empty(out_features, in_features).uniform_(-bound, bound)
            bias_value = torch.empty(out_features).uniform_(-bound, bound)
        else:
            weight = torch.randn(out_features, in_features) * wstd
            bias_value = torch.zeros(out_features)
        self.add_param("weight", weight)
        if bias:
            self.add_param("bias", bias_value)
        else:
            self.bias = None
        self._x = None

    w = property(lambda self: self.weight)
    b = property(lambda self: self.bias)
    dw = property(lambda self: self.grad("weight"))
    db = property(lambda self: self.grad("bias") if self.bias is not None else None)

    def __repr__(self):
        bias = "" if self.bias is not None else ", bias=False"
        return f"Linear({self.in_features}, {self.out_features}{bias})"

    def forward(self, x, **kw):
        self.check_input(x, f"(*, {self.in_features})", lambda x: x.dim() >= 1 and x.shape[-1] == self.in_features)
        self.check_dtype(x)
        self._x = x
        if self.bias is None:
            return self.finish_forward(x @ self.weight.T)
        if x.dim() == 2:  # one fused GEMM, as torch's F.linear computes it (the same bits)
            return self.finish_forward(torch.addmm(self.bias, x, self.weight.T))
        return self.finish_forward(x @ self.weight.T + self.bias)

    def backward(self, dout):
        self.start_backward(dout)
        x_rows = self._x.reshape(-1, self.in_features)
        dout_rows = dout.reshape(-1, self.out_features)
        # Parameter gradients accumulate in place, the product added by the GEMM itself.
        self._grads["weight"].addmm_(dout_rows.T, x_rows)
        if self.bias is not None:
            self._grads["bias"].add_(dout_rows.sum(dim=0))

        if not self.needs_input_grad:
            return None
        return dout @ self.weight


class ReLU(Layer):
    """``out = max(x, 0)``. Same as ``torch.nn.ReLU``.

    Backward: ``dx = dout`` where ``out > 0`` or out is NaN, else 0 (the subgradient at
    exactly 0 is 0; a NaN input passes dout; dout = inf where x <= 0 gives 0, not NaN:
    all as PyTorch's ``threshold_backward``), computed as ``dout * sign(out)`` unless
    that makes a NaN. ``inplace=True`` is accepted and computed out of place (the same
    values; the input is left unchanged).
    Shapes: any -> same. Caches: the output.
    """

    SAVED_TENSORS = ("_out",)

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = checked_bool("ReLU", "inplace", inplace)
        self._out = None

    def forward(self, x, **kw):
        self.check_input(x, "any shape", True)
        # torch.relu rather than clamp_min: before torch 2.14, autograd of clamp_min passes
        # the gradient at exactly x = 0 (an input Dropout2d + BatchNorm produce); ReLU does not.
        self._out = torch.relu(x)
        return self.finish_forward(self._out)

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        # out >= 0, so dout * sign(out) is dout where out > 0 and 0 where out = 0, in two
        # fast passes (masked_fill and where on a bool mask are slower: `nnlab bench --cases MLP`).
        # It differs from torch in two places: 0 * inf = NaN for dout = inf at out = 0, and
        # a NaN output, where sign(NaN) is 0 (on torch 2.13), not NaN, so dx shows nothing.
        # A NaN anywhere in dx or in out makes the sum NaN; then masked_fill gives torch's
        # answer (0 where out = 0, and dout at a NaN output).
        dx = dout * torch.sign(self._out)
        if (dx.sum() + self._out.sum()).isnan():
            return dout.masked_fill(self._out <= 0, 0)
        return dx


class LeakyReLU(Layer):
    """``out = x if x > 0 else alpha * x``, alpha the negative slope.
    Same as ``torch.nn.LeakyReLU(negative_slope)``.

    ``alpha`` (the course's name) is a keyword alias of ``negative_slope``; give one of
    them. ``inplace=True`` is accepted and computed out of place (the same values; the
    input is left unchanged).
    Backward: ``dx = dout if x > 0 else alpha * dout`` (slope alpha at exactly 0 and at a
    NaN x, as in PyTorch). Shapes: any -> same. Caches: the boolean mask x > 0.
    """

    SAVED_TENSORS = ("_mask",)

    def __init__(self, negative_slope=0.01, inplace=False, *, alpha=None):
        super().__init__()
        if alpha is None:
            self.alpha = checked_real("LeakyReLU", "negative_slope", negative_slope)
        elif negative_slope != 0.01:
            raise ValueError(
                f"LeakyReLU: give negative_slope or its alias alpha, not both (got {negative_slope!r} and {alpha!r})"
            )
        else:
            self.alpha = checked_real("LeakyReLU", "alpha", alpha)
        self.inplace = checked_bool("LeakyReLU", "inplace", inplace)
        self._mask = None

    negative_slope = property(lambda self: self.alpha)

    def __repr__(self):
        return f"LeakyReLU(alpha={self.alpha})"

    def forward(self, x, **kw):
        self.check_input(x, "any shape", True)
        self._mask = x > 0
        return self.finish_forward(torch.where(self._mask, x, x * self.alpha))

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        return torch.where(self._mask, dout, dout * self.alpha)


class Sigmoid(Layer):
    """``out = 1 / (1 + exp(-x))``. Same as ``torch.nn.Sigmoid``.

    Backward: ``dx = dout * out * (1 - out)``, finite for any x.
    Shapes: any -> same. Caches: the output.
    """

    SAVED_TENSORS = ("_out",)

    def __init__(self):
        super().__init__()
        self._out = None

    def forward(self, x, **kw):
        self.check_input(x, "any shape", True)
        # torch.sigmoid never overflows, unlike 1 / (1 + exp(-x)) written out.
        self._out = torch.sigmoid(x)
        return self.finish_forward(self._out)

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        out = self._out
        return dout * out * (1 - out)


class Tanh(Layer):
    """``out = tanh(x)``. Same as ``torch.nn.Tanh``.

    Backward: ``dx = dout * (1 - out^2)``. Shapes: any -> same. Caches: the output.
    """

    SAVED_TENSORS = ("_out",)

    def __init__(self):
        super().__init__()
        self._out = None

    def forward(self, x, **kw):
        self.check_input(x, "any shape", True)
        self._out = torch.tanh(x)
        return self.finish_forward(self._out)

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        out = self._out
        return dout * (1 - out * out)


TanH = Tanh


def keep_mask(shape, p, like):
    """A mask of ``shape`` in ``like``'s dtype whose entries are 1 with probability
    1 - p and 0 otherwise, drawn from torch's global RNG."""
    return (torch.rand(shape, device=like.device) >= p).to(like.dtype)


def dropout_mask(shape, p, like):
    """A mask of ``shape`` (broadcastable to ``like``) whose entries are 1 / (1 - p)
    with probability 1 - p and 0 otherwise, drawn from torch's global RNG."""
    if p == 1:
        return torch.zeros(shape, dtype=like.dtype, device=like.device)
    return keep_mask(shape, p, like) / (1 - p)


class Dropout(Layer):
    """Inverted dropout: ``out = x * mask / (1 - p)`` in training mode, with each mask
    entry 0 with probability p (drawn from torch's global RNG), and ``out = x`` in eval
    mode. Distributionally the same as ``torch.nn.Dropout(p)``. ``inplace=True`` is accepted
    and computed out of place (the same values; the input is left unchanged).

    Backward: ``dx = dout * mask / (1 - p)`` (``dx = dout`` in eval mode).
    Shapes: any -> same. Caches: the scaled mask (the number 1.0 in eval mode).
    """

    SAVED_TENSORS = ("_mask",)

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        name = type(self).__name__
        self.p = checked_real(name, "p", p, 0.0, 1.0, high_open=False)
        self.inplace = checked_bool(name, "inplace", inplace)
        self._mask = None

    def __repr__(self):
        return f"{type(self).__name__}(p={self.p})"

    def check_shape(self, x):
        """The input check of forward (any shape here; the channel dropouts narrow it)."""
        self.check_input(x, "any shape", True)

    def mask_shape(self, x):
        """The shape of the mask drawn for x: one entry per entry of x here."""
        return x.shape

    def forward(self, x, **kw):
        self.check_shape(x)
        if not self.training or self.p == 0:
            self._mask = 1.0
            return self.finish_forward(x * 1.0)
        self._mask = dropout_mask(self.mask_shape(x), self.p, x)
        return self.finish_forward(x * self._mask)

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        return dout * self._mask


class Flatten(Layer):
    """Merges dimensions ``start_dim`` to ``end_dim`` into one. Same as ``torch.nn.Flatten``.

    Backward: ``dx = dout.reshape(x.shape)``.
    Shapes: (N, C, H, W) -> (N, C*H*W) with the defaults. Caches: the input shape.
    """

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        for name, value in (("start_dim", start_dim), ("end_dim", end_dim)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"Flatten: {name} must be an int, got {value!r}")
        self.start_dim = start_dim
        self.end_dim = end_dim
        self._shape = None

    def __repr__(self):
        return f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim})"

    def forward(self, x, **kw):
        ndim = x.dim() if isinstance(x, torch.Tensor) else 0
        start = self.start_dim % ndim if ndim else 0
        end = self.end_dim % ndim if ndim else 0
        valid = -ndim <= self.start_dim < ndim and -ndim <= self.end_dim < ndim and start <= end
        self.check_input(x, f"at least {max(self.start_dim, self.end_dim) + 1} dimensions", valid)
        self._shape = x.shape
        return self.finish_forward(x.flatten(self.start_dim, self.end_dim))

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        return dout.reshape(self._shape)


class Unflatten(Layer):
    """Splits dimension ``dim`` into ``unflattened_size`` (one entry may be -1, inferred).
    Same as ``torch.nn.Unflatten`` (on tensors; named tensors are not supported).

    Backward: ``dx = dout.reshape(x.shape)``.
    Shapes: (*, S, *) -> (*, *unflattened_size, *) at ``dim``, the product of the sizes
    being S. Caches: the input shape.
    """

    def __init__(self, dim, unflattened_size):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise ValueError(f"Unflatten: dim must be an int (named tensors are not supported), got {dim!r}")
        sizes = unflattened_size
        if not isinstance(sizes, (tuple, list)) or not all(
            isinstance(s, int) and not isinstance(s, bool) and (s >= 0 or s == -1) for s in sizes
        ):
            raise ValueError(f"Unflatten: unflattened_size must be a tuple of ints >= 0 or -1, got {sizes!r}")
        if not sizes or list(sizes).count(-1) > 1:
            raise ValueError(f"Unflatten: unflattened_size must be non-empty with at most one -1, got {sizes!r}")
        self.dim = dim
        self.unflattened_size = tuple(sizes)
        self._shape = None

    def __repr__(self):
        return f"Unflatten(dim={self.dim}, unflattened_size={self.unflattened_size})"

    def forward(self, x, **kw):
        self.check_input(x, f"a dimension {self.dim} that splits into {self.unflattened_size}", self._splits)
        self._shape = x.shape
        return self.finish_forward(x.unflatten(self.dim, self.unflattened_size))

    def _splits(self, x):
        """Whether x has dimension ``dim`` and its size factors into ``unflattened_size``."""
        if not -x.dim() <= self.dim < max(x.dim(), 1) or x.dim() == 0:
            return False
        size = x.shape[self.dim]
        known = math.prod(s for s in self.unflattened_size if s != -1)
        if -1 not in self.unflattened_size:
            return known == size
        return known > 0 and size % known == 0

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        return dout.reshape(self._shape)


class Identity(Layer):
    """``out = x``: the input itself, as torch returns it. Same as ``torch.nn.Identity``,
    whose constructor accepts and ignores any arguments.

    Backward: ``dx = dout``. Shapes: any -> same. Caches: nothing.
    """

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x, **kw):
        self.check_input(x, "any shape", True)
        return self.finish_forward(x)

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        return dout


class Bilinear(Layer):
    """Bilinear map of two inputs, ``out_k = x1 @ W_k @ x2 + b_k`` for each output k.
    Same as ``torch.nn.Bilinear``.

    Backward (leading dimensions flattened into one batch dimension n):
    ``dx1[n, i] = sum_k dout[n, k] * (sum_j W[k, i, j] x2[n, j])``,
    ``dx2[n, j] = sum_k dout[n, k] * (sum_i x1[n, i] W[k, i, j])``,
    ``dW[k, i, j] += sum_n dout[n, k] x1[n, i] x2[n, j]``, ``db += dout.sum(0)``;
    ``backward`` returns ``(dx1, dx2)``. The sums are grouped as torch's ``_trilinear``
    groups them, so that NaN and infinities land where torch's do; where dout holds a NaN
    or an infinity, dx1 is the sum of the products ``dout[n, k] W[k, i, j] x2[n, j]`` over
    k and j, as in torch (a tensor of N * out * in1 * in2 entries, for that case only).
    Shapes: x1 (*, in1_features), x2 (*, in2_features) with the same leading dimensions ->
    (*, out_features). Parameters: ``weight`` (out, in1, in2), ``bias`` (out), both drawn
    from U(-1/sqrt(in1), 1/sqrt(in1)) as in torch. Caches: both inputs.
    """

    SAVED_TENSORS = ("_xs", "weight")

    def __init__(self, in1_features, in2_features, out_features, bias=True, device=None, dtype=None):
        super().__init__()
        self.in1_features = checked_int("Bilinear", "in1_features", in1_features, 1)
        self.in2_features = checked_int("Bilinear", "in2_features", in2_features, 1)
        self.out_features = checked_int("Bilinear", "out_features", out_features, 1)
        dtype = torch.get_default_dtype() if dtype is None else dtype
        bound = 1.0 / math.sqrt(self.in1_features)
        shape = (self.out_features, self.in1_features, self.in2_features)
        self.add_param("weight", torch.empty(shape, device=device, dtype=dtype).uniform_(-bound, bound))
        if bias:
            self.add_param("bias", torch.empty(self.out_features, device=device, dtype=dtype).uniform_(-bound, bound))
        else:
            self.bias = None
        self._xs = None

    def __repr__(self):
        bias = "" if self.bias is not None else ", bias=False"
        return f"Bilinear({self.in1_features}, {self.in2_features}, {self.out_features}{bias})"

    def forward(self, x1, x2, **kw):
        self.check_input(x1, f"(*, {self.in1_features})", lambda x: x.dim() >= 1 and x.shape[-1] == self.in1_features)
        expected = f"{tuple(x1.shape[:-1]) + (self.in2_features,)} (x1's leading dimensions)"
        self.check_input(x2, expected, lambda x: x.shape == x1.shape[:-1] + (self.in2_features,))
        self.check_dtype(x1)
        self.check_dtype(x2)
        self._xs = (x1, x2)
        rows1, rows2 = self._rows()
        out = (self._x1_weight(rows1) * rows2.unsqueeze(1)).sum(dim=2)
        if self.bias is not None:
            out = out + self.bias
        return self.finish_forward(out.reshape(x1.shape[:-1] + (self.out_features,)))

    def _rows(self):
        x1, x2 = self._xs
        return x1.reshape(-1, self.in1_features), x2.reshape(-1, self.in2_features)

    def _x1_weight(self, rows1):
        """(n, out, in2): ``sum_i x1[n, i] W[k, i, j]``, one GEMM (n, i) @ (i, k*j)."""
        by_input = self.weight.transpose(0, 1).reshape(self.in1_features, -1)
        return (rows1 @ by_input).reshape(rows1.shape[0], self.out_features, self.in2_features)

    def _weight_x2(self, rows2):
        """(n, out, in1): ``sum_j W[k, i, j] x2[n, j]``, one GEMM (n, j) @ (j, k*i)."""
        by_input = self.weight.reshape(-1, self.in2_features).T
        return (rows2 @ by_input).reshape(rows2.shape[0], self.out_features, self.in1_features)

    def backward(self, dout):
        self.start_backward(dout)
        x1, x2 = self._xs
        rows1, rows2 = self._rows()
        dout_rows = dout.reshape(-1, self.out_features)
        # dW[k, i, j] = sum_n dout[n, k] x1[n, i] x2[n, j]: (k, n) @ (n, i*j).
        outer = (rows1.unsqueeze(2) * rows2.unsqueeze(1)).reshape(rows1.shape[0], self.in1_features * self.in2_features)
        self._grads["weight"].add_((dout_rows.T @ outer).reshape(self.weight.shape))
        if self.bias is not None:
            self._grads["bias"].add_(dout_rows.sum(dim=0))

        if not self.needs_input_grad:
            return None
        dx2 = (dout_rows.unsqueeze(2) * self._x1_weight(rows1)).sum(dim=1)
        if dout_rows.isfinite().all():
            # A finite dout[n, k] factors out of the sum over j without moving a NaN.
            dx1 = (dout_rows.unsqueeze(2) * self._weight_x2(rows2)).sum(dim=1)
        else:
            products = (dout_rows[:, :, None, None] * self.weight) * rows2[:, None, None, :]
            dx1 = products.sum(dim=(1, 3))
        return dx1.reshape(x1.shape), dx2.reshape(x2.shape)
