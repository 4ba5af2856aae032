"""The activations of ``torch.nn`` beyond the course's ReLU, LeakyReLU, Sigmoid and Tanh
(those live in ``dense``): the elementwise ones, RReLU with its random slopes, the ones along a dimension (Softmax,
LogSoftmax, Softmin, Softmax2d, GLU) and PReLU with its parameter.

Every backward is written out as torch 2.13's derivative kernel computes it, branch for
branch, so that kinks (the value at a boundary belongs to the side torch gives it) and
non-finite values (NaN and infinities in x and in dout) come out as torch's. A layer
taking ``inplace=True`` computes out of place: the same values, the input left unchanged.

nnlab's convention where torch 2.13 disagrees with itself: at a NaN input, the gradients
of ELU, CELU, SELU, Hardtanh, ReLU6, Hardswish, Hardshrink and Softshrink depend in torch
on the NaN's position. Its vectorised loop gives NaN (the ELUs, Hardswish) or 0 (the
others), and the scalar loop that finishes a tensor whose size is not a multiple of the
vector width gives dout (SELU: dout * scale). nnlab gives the vectorised loop's answer at
every position. GELU's output at +inf is +inf (torch: +inf in float64; in float32 NaN, or
+inf in the scalar loop).
"""

import math
import warnings

import torch
import torch.nn.functional as F

from .base import Layer, checked_bool, checked_int, checked_real

__all__ = [
    "CELU", "ELU", "GELU", "GLU", "Hardshrink", "Hardsigmoid", "Hardswish", "Hardtanh", "LogSigmoid", "LogSoftmax",
    "Mish", "PReLU", "RReLU", "ReLU6", "SELU", "SiLU", "Softmax", "Softmax2d", "Softmin", "Softplus", "Softshrink", "Softsign",
    "Tanhshrink", "Threshold",
]

# SELU's constants, as torch.nn.SELU has them.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_TANH_KAPPA = 0.044715


def checked_dim(owner, value):
    """``value`` if it is an int (not a bool): the dimension a layer works along."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{owner}: dim must be an int, got {value!r}")
    return value


class Pointwise(Layer):
    """Base of the elementwise activations: ``out = f(x)`` entry by entry, and
    ``dx = dout * f'(x)`` as torch's derivative kernel writes it (``gradient``).

    Shapes: any -> same. Caches: the input x (what torch's autograd saves too).
    Subclasses define ``function(x)`` and ``gradient(x, dout)``, and list their
    constructor options in ``OPTIONS`` for the repr.
    """

    SAVED_TENSORS = ("_x",)
    OPTIONS = ()

    def __init__(self):
        super().__init__()
        self._x = None

    def __repr__(self):
        options = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.OPTIONS)
        return f"{type(self).__name__}({options})" if options else type(self).__name__

    def forward(self, x, **kw):
        self.check_input(x, "any shape", True)
        self._x = x
        return self.finish_forward(self.function(x))

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        return self.gradient(self._x, dout)

    def function(self, x):
        raise NotImplementedError

    def gradient(self, x, dout):
        raise NotImplementedError


class PointwiseInplace(Pointwise):
    """Base of the elementwise activations whose only option is torch's ``inplace``: it is
    accepted and computed out of place (the same values; the input left unchanged)."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = checked_bool(type(self).__name__, "inplace", inplace)


class ELU(Pointwise):
    """``out = x if x > 0 else alpha * (exp(x) - 1)``. Same as ``torch.nn.ELU``.

    Backward: ``dx = dout if x > 0 else dout * alpha * exp(x)`` (the second branch at
    exactly 0, and at NaN, where it gives NaN: see the module docstring). ``inplace=True`` is accepted and computed
    out of place. Shapes: any -> same. Caches: the input.
    """

    OPTIONS = ("alpha",)

    def __init__(self, alpha=1.0, inplace=False):
        super().__init__()
        self.alpha = checked_real("ELU", "alpha", alpha)
        self.inplace = checked_bool("ELU", "inplace", inplace)

    def function(self, x):
        return torch.where(x <= 0, torch.expm1(x) * self.alpha, x)

    def gradient(self, x, dout):
        return torch.where(x > 0, dout, dout * self.alpha * torch.exp(x))


class RReLU(Layer):
    """Randomized leaky ReLU: negative inputs scaled by a random slope in training mode,
    by the mean slope in eval mode. Same as ``torch.nn.RReLU`` in eval mode; in training
    mode distributionally the same (its slopes come from torch's global RNG).

    Forward, training: ``out = x * a`` with ``a ~ U(lower, upper)`` drawn per entry where
    ``x <= 0`` and ``a = 1`` elsewhere (NaN included), as torch's kernel; eval:
    ``out = x if x > 0 else x * (lower + upper) / 2``.
    Backward: ``dx = dout * a`` with the slopes drawn in forward (training);
    ``dx = dout if x > 0 else dout * (lower + upper) / 2`` (eval; the second branch at 0
    and at NaN, as torch's leaky_relu_backward). ``inplace=True`` is accepted and computed
    out of place. Shapes: any -> same. Caches: the slope of every entry.
    """

    SAVED_TENSORS = ("_slopes",)

    def __init__(self, lower=1.0 / 8, upper=1.0 / 3, inplace=False):
        super().__init__()
        self.lower = checked_real("RReLU", "lower", lower)
        self.upper = checked_real("RReLU", "upper", upper)
        if self.lower > self.upper:
            raise ValueError(f"RReLU: lower must be at most upper (as torch), got lower={lower!r} > upper={upper!r}")
        self.inplace = checked_bool("RReLU", "inplace", inplace)
        self._slopes = None

    def __repr__(self):
        return f"RReLU(lower={self.lower!r}, upper={self.upper!r})"

    def forward(self, x, **kw):
        self.check_input(x, "any shape", True)
        if self.training:
            drawn = self.lower + (self.upper - self.lower) * torch.rand(x.shape, dtype=x.dtype, device=x.device)
            self._slopes = torch.where(x <= 0, drawn, 1.0)
            return self.finish_forward(x * self._slopes)
        self._slopes = torch.where(x > 0, torch.ones_like(x), (self.lower + self.upper) / 2)
        return self.finish_forward(torch.where(x > 0, x, x * ((self.lower + self.upper) / 2)))

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        return dout * self._slopes


class CELU(Pointwise):
    """``out = x if x > 0 else alpha * (exp(x / alpha) - 1)``. Same as ``torch.nn.CELU``.

    Backward: ``dx = dout if x > 0 else dout * exp(x / alpha)`` (the second branch at
    exactly 0 and at NaN). ``inplace=True`` is accepted and computed out of place.
    Shapes: any -> same. Caches: the input.
    """

    OPTIONS = ("alpha",)

    def __init__(self, alpha=1.0, inplace=False):
        super().__init__()
        self.alpha = checked_real("CELU", "alpha", alpha)
        if self.alpha == 0:
            raise ValueError("CELU: alpha cannot be 0 (it divides x)")
        self.inplace = checked_bool("CELU", "inplace", inplace)

    def function(self, x):
        return torch.where(x <= 0, torch.expm1(x / self.alpha) * self.alpha, x)

    def gradient(self, x, dout):
        return torch.where(x > 0, dout, dout * torch.exp(x / self.alpha))


class SELU(PointwiseInplace):
    """``out = scale * (x if x > 0 else alpha * (exp(x) - 1))`` with torch's constants
    alpha = 1.6733 and scale = 1.0507. Same as ``torch.nn.SELU``.

    Backward: ``dx = dout * scale if x > 0 else dout * alpha * scale * exp(x)`` (the second
    branch at exactly 0 and at NaN). ``inplace=True`` is accepted and computed out of place.
    Shapes: any -> same. Caches: the input.
    """

    def function(self, x):
        return torch.where(x <= 0, torch.expm1(x) * (SELU_ALPHA * SELU_SCALE), x * SELU_SCALE)

    def gradient(self, x, dout):
        return torch.where(x > 0, dout * SELU_SCALE, dout * (SELU_ALPHA * SELU_SCALE) * torch.exp(x))


class GELU(Pointwise):
    """Gaussian error linear unit, ``out = x * Phi(x)`` with Phi the standard normal CDF
    (``approximate='none'``), or ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``
    (``approximate='tanh'``). Same as ``torch.nn.GELU``.

    At x = +inf the output is +inf, as torch gives it in float64 (see the module docstring);
    the largest finite floats give themselves (torch's float32 kernel overflows to inf).
    Backward: 'none': ``dx = dout * (Phi(x) + x * phi(x))``, phi the normal density;
    'tanh': with ``u = sqrt(2/pi) (x + 0.044715 x^3)`` and ``t = tanh(u)``,
    ``dx = dout * (0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2))``.
    Shapes: any -> same. Caches: the input.

    Example::

        >>> import torch
        >>> from nnlab.grad_compare import check_layer
        >>> from nnlab.layers import GELU
        >>> x = torch.linspace(-3, 3, 7)
        >>> torch.allclose(GELU()(x), torch.nn.GELU()(x), atol=1e-6)
        True
        >>> check_layer(GELU(approximate="tanh"), torch.randn(4, 5)).passed   # backward against autograd and torch.nn
        True
    """

    OPTIONS = ("approximate",)

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def function(self, x):
        # torch.erf alone costs more than F.gelu's whole pass (`nnlab bench --cases GELU`),
        # so F.gelu computes the finite outputs. Where its sum is not finite, the formula
        # below computes every entry: F.gelu's float32 kernel gives NaN at +inf and
        # overflows to inf just below the largest float, the formula neither.
        out = F.gelu(x, approximate=self.approximate)
        if out.numel() and not torch.isfinite(out.sum()):
            return self.formula(x)
        return out

    def formula(self, x):
        """``x * Phi(x)`` (or its tanh approximation) written out: half_x + half_x *
        erf(x / sqrt 2), exact at +inf and at the largest finite values."""
        if self.approximate == "tanh":
            inner = (x + x * x * x * _GELU_TANH_KAPPA) * _SQRT_2_OVER_PI
            return 0.5 * x * (1 + torch.tanh(inner))
        half_x = x * 0.5
        return torch.addcmul(half_x, half_x, torch.erf(x * _SQRT_HALF))

    def gradient(self, x, dout):
        if self.approximate == "tanh":
            x_squared = x * x
            tanh_inner = torch.tanh((x + x_squared * x * _GELU_TANH_KAPPA) * _SQRT_2_OVER_PI)
            inner_derivative = (1 + x_squared * (3 * _GELU_TANH_KAPPA)) * _SQRT_2_OVER_PI
            slope = 0.5 * (1 + tanh_inner) + 0.5 * x * (1 - tanh_inner * tanh_inner) * inner_derivative
            return dout * slope
        # In place on the two fresh temporaries: fewer passes over memory and allocations.
        scaled = x * _SQRT_HALF
        slope = torch.erf(scaled).mul_(0.5).add_(0.5)  # Phi(x)
        density = scaled.square_().neg_().exp_()  # exp(-x^2 / 2) = sqrt(2 pi) phi(x)
        return slope.addcmul_(density, x, value=_INV_SQRT_2PI).mul_(dout)


class SiLU(PointwiseInplace):
    """Sigmoid linear unit (swish), ``out = x * sigmoid(x)``. Same as ``torch.nn.SiLU``.

    Backward: ``dx = dout * s * (1 + x * (1 - s))`` with ``s = sigmoid(x)``.
    ``inplace=True`` is accepted and computed out of place.
    Shapes: any -> same. Caches: the input.
    """

    def function(self, x):
        return x * torch.sigmoid(x)

    def gradient(self, x, dout):
        sigmoid = torch.sigmoid(x)
        return dout * sigmoid * (1 + x * (1 - sigmoid))


class Mish(PointwiseInplace):
    """``out = x * tanh(softplus(x))``, softplus(x) = log(1 + exp(x)). Same as ``torch.nn.Mish``.

    Backward: ``dx = dout * (t + x * sigmoid(x) * (1 - t^2))`` with ``t = tanh(softplus(x))``.
    ``inplace=True`` is accepted and computed out of place.
    Shapes: any -> same. Caches: the input.
    """

    def function(self, x):
        return x * torch.tanh(F.softplus(x))

    def gradient(self, x, dout):
        tanh_softplus = torch.tanh(torch.log1p(torch.exp(x)))
        return dout * (tanh_softplus + x * torch.sigmoid(x) * (1 - tanh_softplus * tanh_softplus))


class Softplus(Pointwise):
    """``out = log(1 + exp(beta x)) / beta``, and ``out = x`` where ``beta x > threshold``
    (for numerical stability). Same as ``torch.nn.Softplus``.

    Backward: ``dx = dout`` where ``beta x > threshold``, else ``dout * z / (z + 1)`` with
    ``z = exp(beta x)``. Shapes: any -> same. Caches: the input.
    """

    OPTIONS = ("beta", "threshold")

    def __init__(self, beta=1.0, threshold=20.0):
        super().__init__()
        self.beta = checked_real("Softplus", "beta", beta)
        if self.beta == 0:
            raise ValueError("Softplus: beta cannot be 0 (it divides the output)")
        self.threshold = checked_real("Softplus", "threshold", threshold)

    def function(self, x):
        scaled = x * self.beta
        return torch.where(scaled > self.threshold, x, torch.log1p(torch.exp(scaled)) / self.beta)

    def gradient(self, x, dout):
        scaled = x * self.beta
        z = torch.exp(scaled)
        return torch.where(scaled > self.threshold, dout, dout * z / (z + 1))


class Softsign(Pointwise):
    """``out = x / (1 + |x|)``. Same as ``torch.nn.Softsign``.

    Backward: ``dx = dout / d - dout * ((x / d) / d) * sign(x)`` with ``d = 1 + |x|``, the
    two terms autograd adds for torch's ``x / (1 + x.abs())``, in its order (finite where
    ``x / d^2`` would overflow, as at |x| = 1e30 in float32; NaN at x = +-inf, as torch's).
    Shapes: any -> same. Caches: the input.
    """

    def __init__(self, *args, **kwargs):
        super().__init__()

    def function(self, x):
        return x / (1 + x.abs())

    def gradient(self, x, dout):
        denominator = 1 + x.abs()
        return dout / denominator + (-dout * (x / denominator / denominator)) * torch.sign(x)


class Hardtanh(Pointwise):
    """``out = clamp(x, min_val, max_val)``. Same as ``torch.nn.Hardtanh`` (``min_value``
    and ``max_value`` are its deprecated spellings, accepted with a warning, as torch does).

    Backward: ``dx = dout`` where ``min_val < x < max_val``, else 0 (0 at both bounds, as in
    torch, and at a NaN x: see the module docstring). ``inplace=True`` is accepted and computed out of place.
    Shapes: any -> same. Caches: the input.
    """

    OPTIONS = ("min_val", "max_val")

    def __init__(self, min_val=-1.0, max_val=1.0, inplace=False, min_value=None, max_value=None):
        super().__init__()
        name = type(self).__name__
        if min_value is not None:
            warnings.warn(f"{name}: keyword argument min_value is deprecated; use min_val", DeprecationWarning, 2)
            min_val = min_value
        if max_value is not None:
            warnings.warn(f"{name}: keyword argument max_value is deprecated; use max_val", DeprecationWarning, 2)
            max_val = max_value
        self.min_val = checked_real(name, "min_val", min_val)
        self.max_val = checked_real(name, "max_val", max_val)
        if self.max_val <= self.min_val:
            raise ValueError(f"{name}: max_val ({self.max_val}) must be greater than min_val ({self.min_val})")
        self.inplace = checked_bool(name, "inplace", inplace)

    def function(self, x):
        # F.hardtanh rather than clamp: before torch 2.14, autograd of clamp passes dout at the
        # bounds, torch's Hardtanh does not (autograd through forward judges backward).
        return F.hardtanh(x, self.min_val, self.max_val)

    def gradient(self, x, dout):
        inside = (x > self.min_val) & (x < self.max_val)
        return torch.where(inside, dout, torch.zeros_like(dout))


class ReLU6(Hardtanh):
    """``out = min(max(x, 0), 6)``: Hardtanh(0, 6). Same as ``torch.nn.ReLU6``.

    Backward: ``dx = dout`` where ``0 < x < 6``, else 0 (also at a NaN x).
    ``inplace=True`` is accepted and computed out of place.
    Shapes: any -> same. Caches: the input.
    """

    OPTIONS = ()

    def __init__(self, inplace=False):
        super().__init__(0.0, 6.0, inplace)


class Hardswish(PointwiseInplace):
    """``out = x * min(max(x + 3, 0), 6) / 6``. Same as ``torch.nn.Hardswish``.

    Backward: ``dx = 0`` where ``x <= -3``, ``dout * (x / 3 + 0.5)`` where ``-3 < x < 3``, else
    ``dout``: torch 2.13's open interval (0 at exactly -3 and ``dout`` at exactly 3; torch 1.x
    had ``dout * -0.5`` and ``dout * 1.5`` there); NaN at a NaN x (see the module docstring).
    ``inplace=True`` is accepted and computed out of place.
    Shapes: any -> same. Caches: the input.
    """

    def function(self, x):
        # F.hardswish rather than clamp, whose autograd before torch 2.14 passes dout at the bounds.
        return F.hardswish(x)

    def gradient(self, x, dout):
        upper = torch.where(x < 3, dout * (x / 3 + 0.5), dout)
        gradient = torch.where(x <= -3, torch.zeros_like(dout), upper)
        return torch.where(x.isnan(), x, gradient)


class Hardsigmoid(PointwiseInplace):
    """``out = min(max(x + 3, 0), 6) / 6``. Same as ``torch.nn.Hardsigmoid``.

    Backward: ``dx = dout / 6`` where ``-3 < x < 3``, else 0 (0 at both bounds and at NaN,
    as in torch). The slope is exactly 1/6; torch 2.13's float64 kernel multiplies by 1/6
    rounded to float32 (a relative difference of 3e-8). ``inplace=True`` is accepted and
    computed out of place.
    Shapes: any -> same. Caches: the input.
    """

    def function(self, x):
        # x / 6 + 0.5 inside, F.hardsigmoid elsewhere: autograd of clamp before torch 2.14 would
        # pass dout at the bounds, and autograd of F.hardsigmoid has the float32 slope in float64.
        inside = (x > -3) & (x < 3)
        return torch.where(inside, x / 6 + 0.5, F.hardsigmoid(x))

    def gradient(self, x, dout):
        inside = (x > -3) & (x < 3)
        return torch.where(inside, dout / 6, torch.zeros_like(dout))


def shrink_gradient(x, dout, lambd):
    """Hardshrink's and Softshrink's VJP: dout outside [-lambd, lambd], 0 inside and at NaN."""
    alive = (x < -lambd) | (x > lambd)
    return torch.where(alive, dout, torch.zeros_like(dout))


class Hardshrink(Pointwise):
    """``out = 0`` where ``-lambd <= x <= lambd``, else ``x``. Same as ``torch.nn.Hardshrink``.

    Backward: ``dx = dout`` where ``x < -lambd`` or ``x > lambd``, else 0 (0 at the bounds,
    as in torch, and at a NaN x: see the module docstring).
    Shapes: any -> same. Caches: the input.
    """

    OPTIONS = ("lambd",)

    def __init__(self, lambd=0.5):
        super().__init__()
        self.lambd = checked_real("Hardshrink", "lambd", lambd)

    def function(self, x):
        dead = (x >= -self.lambd) & (x <= self.lambd)
        return torch.where(dead, torch.zeros_like(x), x)

    def gradient(self, x, dout):
        return shrink_gradient(x, dout, self.lambd)


class Softshrink(Pointwise):
    """``out = x - lambd`` where ``x > lambd``, ``x + lambd`` where ``x < -lambd``, else 0.
    Same as ``torch.nn.Softshrink`` (lambd >= 0).

    Backward: ``dx = dout`` where ``x < -lambd`` or ``x > lambd``, else 0 (0 at the bounds,
    as in torch, and at a NaN x: see the module docstring).
    Shapes: any -> same. Caches: the input.
    """

    OPTIONS = ("lambd",)

    def __init__(self, lambd=0.5):
        super().__init__()
        self.lambd = checked_real("Softshrink", "lambd", lambd, 0.0)

    def function(self, x):
        dead = (x >= -self.lambd) & (x <= self.lambd)
        shrunk = torch.where(x > 0, x - self.lambd, x + self.lambd)
        return torch.where(dead, torch.zeros_like(x), shrunk)

    def gradient(self, x, dout):
        return shrink_gradient(x, dout, self.lambd)


class Tanhshrink(Pointwise):
    """``out = x - tanh(x)``. Same as ``torch.nn.Tanhshrink``.

    Backward: ``dx = dout - dout * (1 - tanh(x)^2)``, the two terms autograd adds for
    torch's ``x - x.tanh()``. Shapes: any -> same. Caches: the input.
    """

    def __init__(self, *args, **kwargs):
        super().__init__()

    def function(self, x):
        return x - torch.tanh(x)

    def gradient(self, x, dout):
        tanh = torch.tanh(x)
        return dout - dout * (1 - tanh * tanh)


class Threshold(Pointwise):
    """``out = value`` where ``x <= threshold``, else ``x``. Same as ``torch.nn.Threshold``.

    Backward: ``dx = 0`` where ``x <= threshold``, else ``dout``.
    ``inplace=True`` is accepted and computed out of place.
    Shapes: any -> same. Caches: the input.
    """

    OPTIONS = ("threshold", "value")

    def __init__(self, threshold, value, inplace=False):
        super().__init__()
        self.threshold = checked_real("Threshold", "threshold", threshold)
        self.value = checked_real("Threshold", "value", value)
        self.inplace = checked_bool("Threshold", "inplace", inplace)

    def function(self, x):
        return torch.where(x <= self.threshold, torch.full_like(x, self.value), x)

    def gradient(self, x, dout):
        return torch.where(x <= self.threshold, torch.zeros_like(dout), dout)


class LogSigmoid(Pointwise):
    """``out = log(sigmoid(x)) = min(x, 0) - log(1 + exp(-|x|))``, finite for any finite x.
    Same as ``torch.nn.LogSigmoid``.

    Backward: with ``z = exp(-|x|)``, ``dx = dout * (1 - z / (1 + z))`` where ``x < 0``, else
    ``dout * z / (1 + z)``. Shapes: any -> same. Caches: the input.
    """

    def __init__(self, *args, **kwargs):
        super().__init__()

    def function(self, x):
        # F.logsigmoid rather than min(x, 0) - log1p(exp(-|x|)) written out, whose autograd
        # gives slope 1 at x = 0 (clamp's and abs' subgradients) instead of 1/2.
        return F.logsigmoid(x)

    def gradient(self, x, dout):
        z = torch.exp(-x.abs())
        fraction = z / (1 + z)
        return torch.where(x < 0, dout * (1 - fraction), dout * fraction)


# Along a dimension -----------------------------------------------------------------------


def softmax_along(x, dim):
    """``exp(x - max x) / sum(exp(x - max x))`` along ``dim``, as torch computes it."""
    if x.numel() == 0:
        # amax has no value on an empty dimension; the softmax of nothing is empty.
        return x.clone()
    exps = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return exps / exps.sum(dim=dim, keepdim=True)


def softmax_gradient(out, dout, dim):
    """The VJP of softmax along ``dim`` from its output: ``out * (dout - sum(dout * out))``."""
    return out * (dout - (dout * out).sum(dim=dim, keepdim=True))


class AlongDim(Layer):
    """Base of the layers that work along one dimension ``dim`` of any input: the check of
    ``dim`` (0 and -1 are the dimensions of a 0-d tensor, as in torch) and the repr.
    Caches: the output (every subclass's backward needs it)."""

    SAVED_TENSORS = ("_out",)

    def __init__(self, dim=-1):
        super().__init__()
        self.dim = checked_dim(type(self).__name__, dim)
        self._out = None

    def __repr__(self):
        return f"{type(self).__name__}(dim={self.dim})"

    def check_dim(self, x):
        """TypeError unless x is a tensor, ValueError unless it has dimension ``dim``."""
        self.check_input(x, f"a tensor with dimension {self.dim}", self._has_dim)

    def _has_dim(self, x):
        ndim = max(x.dim(), 1)
        return -ndim <= self.dim < ndim


class Softmax(AlongDim):
    """``out_i = exp(x_i - max x) / sum_j exp(x_j - max x)`` along ``dim``.
    Same as ``torch.nn.Softmax(dim)``; the default ``dim=-1`` replaces torch's deprecated
    implicit choice, and ``dim=None`` is refused.

    Backward: ``dx = out * (dout - sum(dout * out, dim))``.
    Shapes: any -> same. Caches: the output.
    """

    def forward(self, x, **kw):
        self.check_dim(x)
        self._out = softmax_along(x, self.dim)
        return self.finish_forward(self._out)

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        return softmax_gradient(self._out, dout, self.dim)


class Softmin(AlongDim):
    """``out = softmax(-x)`` along ``dim``. Same as ``torch.nn.Softmin(dim)``, with nnlab's
    default ``dim=-1`` as for Softmax (``dim=None`` is refused).

    Backward: ``dx = -out * (dout - sum(dout * out, dim))``.
    Shapes: any -> same. Caches: the output.
    """

    def forward(self, x, **kw):
        self.check_dim(x)
        self._out = softmax_along(-x, self.dim)
        return self.finish_forward(self._out)

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        return -softmax_gradient(self._out, dout, self.dim)


class Softmax2d(Softmax):
    """Softmax over the channels of every pixel: Softmax along dim -3 of (N, C, H, W) or
    (C, H, W). Same as ``torch.nn.Softmax2d``.

    Backward: ``dx = out * (dout - sum(dout * out, -3))``.
    Shapes: (N, C, H, W) or (C, H, W) -> same. Caches: the output.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(-3)

    def __repr__(self):
        return "Softmax2d"

    def forward(self, x, **kw):
        self.check_input(x, "(N, C, H, W) or (C, H, W)", lambda x: x.dim() in (3, 4))
        return super().forward(x)


class LogSoftmax(AlongDim):
    """``out = x - max x - log(sum(exp(x - max x)))`` along ``dim``.
    Same as ``torch.nn.LogSoftmax(dim)``, with nnlab's default ``dim=-1`` as for Softmax
    (``dim=None`` is refused).

    Backward: ``dx = dout - exp(out) * sum(dout, dim)``.
    Shapes: any -> same. Caches: the output.
    """

    def forward(self, x, **kw):
        self.check_dim(x)
        if x.numel() == 0:
            self._out = x.clone()
        else:
            shifted = x - x.amax(dim=self.dim, keepdim=True)
            self._out = shifted - torch.log(torch.exp(shifted).sum(dim=self.dim, keepdim=True))
        return self.finish_forward(self._out)

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        return dout - torch.exp(self._out) * dout.sum(dim=self.dim, keepdim=True)


class GLU(Layer):
    """Gated linear unit: x split in halves a, b along ``dim``, ``out = a * sigmoid(b)``.
    Same as ``torch.nn.GLU``.

    Backward: with ``s = sigmoid(b)``, ``da = dout * s`` and ``db = (1 - s) * s * a * dout``,
    joined along ``dim``. Shapes: (*, 2M, *) -> (*, M, *) along ``dim``. Caches: the input.
    """

    SAVED_TENSORS = ("_x",)

    def __init__(self, dim=-1):
        super().__init__()
        self.dim = checked_dim("GLU", dim)
        self._x = None

    def __repr__(self):
        return f"GLU(dim={self.dim})"

    def forward(self, x, **kw):
        self.check_input(x, f"a tensor of at least one dimension with dimension {self.dim}", self._has_dim)
        if x.shape[self.dim] % 2:
            raise ValueError(
                f"{self!r}: expected an even size along dim {self.dim} (halved into a and b), got shape {tuple(x.shape)}"
            )
        self._x = x
        first, second = x.chunk(2, dim=self.dim)
        return self.finish_forward(first * torch.sigmoid(second))

    def _has_dim(self, x):
        return x.dim() >= 1 and -x.dim() <= self.dim < x.dim()

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        first, second = self._x.chunk(2, dim=self.dim)
        sigmoid = torch.sigmoid(second)
        dfirst = dout * sigmoid
        dsecond = (1 - sigmoid) * sigmoid * first * dout
        return torch.cat([dfirst, dsecond], dim=self.dim)


class PReLU(Layer):
    """``out = x if x > 0 else a_c * x``, with a learned slope a_c per channel or one slope
    for all. Same as ``torch.nn.PReLU``.

    Backward: ``dx = dout if x > 0 else a_c * dout`` (slope a_c at exactly 0, as in torch);
    ``da_c += sum of x * dout where x <= 0 (or NaN)`` over every dimension but the channel's.
    Shapes: any -> same with one slope; with num_parameters = C > 1, an input of 2 or more
    dimensions whose dim 1 has size C (torch's channel dimension, dim 1 whatever the number
    of dimensions, so an unbatched (C, L) input does not fit, as in torch).
    Parameter: ``weight`` (num_parameters,), initialised to ``init``. Caches: the input.
    """

    SAVED_TENSORS = ("_x", "weight")

    def __init__(self, num_parameters=1, init=0.25, device=None, dtype=None):
        super().__init__()
        self.num_parameters = checked_int("PReLU", "num_parameters", num_parameters, 1)
        init = checked_real("PReLU", "init", init)
        dtype = torch.get_default_dtype() if dtype is None else dtype
        self.add_param("weight", torch.full((self.num_parameters,), init, device=device, dtype=dtype))
        self._x = None

    def __repr__(self):
        return f"PReLU(num_parameters={self.num_parameters})"

    def forward(self, x, **kw):
        channels = self.num_parameters
        self.check_input(x, f"(N, {channels}, *)", lambda x: channels == 1 or (x.dim() >= 2 and x.shape[1] == channels))
        self.check_dtype(x)
        self._x = x
        return self.finish_forward(torch.where(x > 0, x, self._slopes(x) * x))

    def _slopes(self, x):
        """The weight shaped to broadcast against x along its channel dimension."""
        if self.num_parameters == 1:
            return self.weight.reshape(())
        return self.weight.reshape((1, self.num_parameters) + (1,) * (x.dim() - 2))

    def backward(self, dout):
        self.start_backward(dout)
        x = self._x
        positive = x > 0
        dslopes = torch.where(positive, torch.zeros_like(dout), x * dout)
        if self.num_parameters == 1:
            self._grads["weight"].add_(dslopes.sum().reshape(1))
        else:
            other_dims = [d for d in range(x.dim()) if d != 1]
            self._grads["weight"].add_(dslopes.sum(dim=other_dims))

        if not self.needs_input_grad:
            return None
        return torch.where(positive, dout, self._slopes(x) * dout)
