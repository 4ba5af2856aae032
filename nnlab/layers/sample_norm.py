"""Normalisations with statistics per sample: LayerNorm, RMSNorm, GroupNorm,
InstanceNorm (1-D, 2-D, 3-D) and LocalResponseNorm."""

import math
import numbers
import warnings

import torch

from .base import Layer, checked_bool, checked_int, checked_real
from .norm import add_affine_params, add_running_stats, checked_momentum, place

__all__ = [
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "LocalResponseNorm",
    "RMSNorm",
]


def row_statistics(rows, eps, nan_where_var_overflows=False):
    """(mean, 1 / sigma) of each row of the 2-D tensor ``rows``, each as (rows, 1): the
    mean and the biased ``var`` of ``rows - mean`` over the row, ``1 / sigma =
    1 / sqrt(var + eps)``. The sums are a matrix-vector product with ones and a vector
    norm, one pass over memory each (a sum over a short last dimension is slower); the
    centered rows are freed on return, so that the caller's output can take their place
    in memory (it forms ``rows - mean`` again, one pass, rather than keep two tensors of
    the rows' size alive at once).

    A row of finite values whose variance overflows (1e30 in float32) has ``var = inf``
    and so ``1 / sigma = 0``, which makes its normalised values 0: what torch's batch
    norm kernel (InstanceNorm's) gives. torch's LayerNorm and GroupNorm kernels give
    ``1 / sigma = NaN`` there instead, and so a NaN row; ``nan_where_var_overflows``
    does the same (on the small per-row tensor, not on the rows)."""
    count = rows.shape[1]
    mean = torch.mv(rows, rows.new_ones(count)).div_(count).unsqueeze(1)
    var = torch.linalg.vector_norm(rows - mean, dim=1, keepdim=True).square() / count
    inv_std = torch.rsqrt(var + eps)
    if nan_where_var_overflows:
        # + var * 0: NaN where var is inf, + 0 elsewhere, one pass with no mask to build;
        # out of place, so that autograd can still differentiate a forward built on it.
        inv_std = torch.addcmul(inv_std, var, var.new_zeros(()))
    return mean, inv_std


def normalized_shape_tuple(owner, normalized_shape):
    """torch's ``normalized_shape``: an int or a sequence of positive ints, as a tuple."""
    shape = (normalized_shape,) if isinstance(normalized_shape, numbers.Integral) else normalized_shape
    try:
        shape = tuple(checked_int(owner, "normalized_shape", size, 1) for size in shape)
    except TypeError:
        raise TypeError(f"{owner}: normalized_shape must be an int or a sequence of ints, got {normalized_shape!r}")
    if not shape:
        raise ValueError(f"{owner}: normalized_shape must have at least one dimension, got {normalized_shape!r}")
    return shape


class _TrailingNorm(Layer):
    """Shared by LayerNorm and RMSNorm: statistics over the trailing dims named by
    ``normalized_shape``, an elementwise affine map of that shape."""

    def check_trailing(self, x):
        shape = self.normalized_shape
        ok = lambda t: t.dim() >= len(shape) and tuple(t.shape[t.dim() - len(shape):]) == shape
        self.check_input(x, f"(*, {', '.join(map(str, shape))})", ok)
        self.check_dtype(x)
        return list(range(x.dim() - len(shape), x.dim()))

    def add_affine_grads(self, dout, x_hat):
        """dweight += sum(dout * x_hat), dbias += sum(dout), over the leading dims."""
        leading = list(range(dout.dim() - len(self.normalized_shape)))
        if self.weight is not None:
            self._grads["weight"] += (dout * x_hat).sum(dim=leading)
        if self.bias is not None:
            self._grads["bias"] += dout.sum(dim=leading)

    def affine(self, x_hat):
        out = x_hat * self.weight if self.weight is not None else x_hat * 1.0
        if self.bias is not None:
            out += self.bias
        return out

    def scaled_dout(self, dout):
        """g = dL/dx_hat = dout * weight."""
        return dout * self.weight if self.weight is not None else dout


class LayerNorm(_TrailingNorm):
    """Layer normalisation over the trailing dims D named by ``normalized_shape``.

    Forward, per sample (every index of the leading dims), over the M entries of D:
        ``x_hat = (x - mean(x)) / sqrt(var(x) + eps)`` (biased variance),
        ``out = weight * x_hat + bias`` (weight, bias of shape D).
    Backward, with ``g = dout * weight``, sigma = sqrt(var + eps) and means over D:
        ``dx = (g - mean(g) - x_hat * mean(g * x_hat)) / sigma``, computed as torch's
        kernel arranges it (so that NaN and infinities land where torch's do):
        ``dx = g / sigma + b * x + c`` with ``b = (sum(g) * mean - sum(g * x)) / (M sigma^3)``
        and ``c = -b * mean - sum(g) / (M sigma)``;
        ``dweight += sum(dout * x_hat)``, ``dbias += sum(dout)`` over the leading dims.
    ``elementwise_affine=False`` drops both parameters (weight = 1, bias = 0); ``bias=False``
    the bias alone. Same as ``torch.nn.LayerNorm``, in train and eval mode alike. A sample
    whose variance overflows (finite values such as 1e30 in float32) gives NaN (its output,
    dx and its share of dweight), as torch's kernel does for most sizes of D; for some
    (eight float32 values, for one) torch's gives 0 there, a wrong finite number.

    Shapes: (*, D) -> (*, D).
    Parameters: ``weight`` (D) = 1, ``bias`` (D) = 0.
    Caches: x (as rows of M), the mean and 1 / sigma (one value each per sample); x_hat
    is formed again in backward rather than kept.

    Example::

        >>> import torch
        >>> from nnlab.grad_compare import check_layer
        >>> from nnlab.layers import LayerNorm
        >>> norm = LayerNorm(6)
        >>> x = torch.randn(2, 4, 6)
        >>> torch.allclose(norm(x), torch.nn.LayerNorm(6)(x), atol=1e-6)
        True
        >>> check_layer(norm, x).passed
        True
    """

    SAVED_TENSORS = ("_x", "_mean", "_inv_std", "weight")

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, device=None, dtype=None):
        super().__init__()
        self.normalized_shape = normalized_shape_tuple("LayerNorm", normalized_shape)
        self.eps = checked_real("LayerNorm", "eps", eps, 0.0)
        self.elementwise_affine = checked_bool("LayerNorm", "elementwise_affine", elementwise_affine)
        self.has_bias = checked_bool("LayerNorm", "bias", bias)
        add_affine_params(self, self.normalized_shape, self.elementwise_affine, self.elementwise_affine and self.has_bias)
        self._x = None
        self._mean = None
        self._inv_std = None
        place(self, device, dtype)

    def __repr__(self):
        return (
            f"LayerNorm({self.normalized_shape}, eps={self.eps}, "
            f"elementwise_affine={self.elementwise_affine}, bias={self.has_bias})"
        )

    def forward(self, x, **kw):
        self.check_trailing(x)
        count = math.prod(self.normalized_shape)
        # Contiguous rows (a copy only of an input that is not), so that every view below holds.
        self._x = x.reshape(x.numel() // count, count).contiguous()
        self._mean, self._inv_std = row_statistics(self._x, self.eps, nan_where_var_overflows=True)
        out = (self._x - self._mean).mul_(self._inv_std)
        if self.weight is not None:
            out.mul_(self.weight.reshape(count))
        if self.bias is not None:
            out.add_(self.bias.reshape(count))
        return self.finish_forward(out.view(x.shape))

    def backward(self, dout):
        out_shape = self.start_backward(dout).shape
        dout = dout.reshape(self._x.shape).contiguous()
        if self.weight is not None:
            self.add_weight_grad(dout)
        if self.bias is not None:
            self._grads["bias"] += dout.sum(dim=0).view(self.bias.shape)
        if not self.needs_input_grad:
            return None
        return self.input_grad(dout).view(out_shape)

    def add_weight_grad(self, dout):
        """dweight += sum over the rows of dout * x_hat (x_hat formed again, in a fresh
        tensor updated in place)."""
        dout_x_hat = (self._x - self._mean).mul_(self._inv_std).mul_(dout)
        self._grads["weight"] += dout_x_hat.sum(dim=0).view(self.weight.shape)

    def input_grad(self, dout):
        """dx = g / sigma + b * x + c (see the class docstring), the sums per row as
        matrix-vector products with the weight."""
        x, mean, inv_std = self._x, self._mean, self._inv_std
        count = x.shape[1]
        weight = x.new_ones(count) if self.weight is None else self.weight.reshape(count)
        sum_g_x = torch.mv(dout * x, weight).unsqueeze(1)
        sum_g = torch.mv(dout, weight).unsqueeze(1)
        b = (sum_g * mean - sum_g_x) * inv_std * inv_std * inv_std / count
        c = -b * mean - sum_g * inv_std / count
        return (dout * weight).mul_(inv_std).addcmul_(x, b).add_(c)


class RMSNorm(_TrailingNorm):
    """Root-mean-square normalisation over the trailing dims D named by ``normalized_shape``.

    Forward, per sample, over the M entries of D:
        ``r = 1 / sqrt(mean(x^2) + eps)``, ``x_hat = x * r``, ``out = weight * x_hat``;
        ``eps=None`` means ``torch.finfo(x.dtype).eps``, as in torch.
    Backward, with ``g = dout * weight`` and the mean over D:
        ``dx = r * (g - x_hat * mean(g * x_hat))``; ``dweight += sum(dout * x_hat)`` over
        the leading dims.
    Same as ``torch.nn.RMSNorm`` (which has no bias). A sample whose mean square overflows
    (1e20 in float32) has r = 0, so out = 0 and dx = 0, as torch's (the exact values are
    finite: x_hat of order 1); at an entry beyond half the dtype's largest number torch's
    autograd gives dx = NaN (its 2 x overflows), where nnlab's 0 is the exact value rounded.

    Shapes: (*, D) -> (*, D).
    Parameters: ``weight`` (D) = 1 (none when ``elementwise_affine=False``).
    Caches: x_hat and r (one value per sample).
    """

    SAVED_TENSORS = ("_x_hat", "_inv_rms", "weight")

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, device=None, dtype=None):
        super().__init__()
        self.normalized_shape = normalized_shape_tuple("RMSNorm", normalized_shape)
        self.eps = None if eps is None else checked_real("RMSNorm", "eps", eps, 0.0)
        self.elementwise_affine = checked_bool("RMSNorm", "elementwise_affine", elementwise_affine)
        add_affine_params(self, self.normalized_shape, self.elementwise_affine, False)
        self._x_hat = None
        self._inv_rms = None
        place(self, device, dtype)

    def __repr__(self):
        return f"RMSNorm({self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine})"

    def forward(self, x, **kw):
        dims = self.check_trailing(x)
        eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
        self._dims = dims
        self._inv_rms = torch.rsqrt((x * x).mean(dim=dims, keepdim=True) + eps)
        self._x_hat = x * self._inv_rms
        return self.finish_forward(self.affine(self._x_hat))

    def backward(self, dout):
        self.start_backward(dout)
        self.add_affine_grads(dout, self._x_hat)
        if not self.needs_input_grad:
            return None
        g = self.scaled_dout(dout)
        mean_g_x_hat = (g * self._x_hat).mean(dim=self._dims, keepdim=True)
        return (g - self._x_hat * mean_g_x_hat) * self._inv_rms


def _channel_view(tensor, dim):
    """A (C,) tensor shaped to broadcast along dim 1 of a ``dim``-dimensional tensor."""
    return tensor.reshape([1, -1] + [1] * (dim - 2))


def _sum_but_channels(tensor):
    """Sums over every dim but 1, giving (C,)."""
    return tensor.sum(dim=[0] + list(range(2, tensor.dim())))


class GroupNorm(Layer):
    """Group normalisation: the C channels of each sample split into G groups of C / G,
    each group normalised over its channels and positions, then a per-channel affine map.

    Forward, per sample and group, over its M = (C / G) * (spatial size) entries:
        ``x_hat = (x - mean) / sqrt(var + eps)`` (biased variance),
        ``out = weight[c] * x_hat + bias[c]``.
    Backward, with ``g = dout * weight[c]`` and the means over each group:
        ``dx = (g - mean(g) - x_hat * mean(g * x_hat)) / sigma``;
        ``dweight += sum(dout * x_hat)``, ``dbias += sum(dout)`` over every dim but C.
    Same as ``torch.nn.GroupNorm``, in train and eval mode alike. A group whose variance
    overflows (finite values such as 1e30 in float32) gives NaN, as torch's kernel does for
    most group sizes (for some it gives 0, a wrong finite number).

    dx is computed in torch's arrangement (so that NaN and infinities land where torch's
    do), from the sums per sample and channel of dout and dout * x; see ``input_grad``.

    Shapes: (N, C, *) -> (N, C, *).
    Parameters: ``weight`` (C,) = 1, ``bias`` (C,) = 0 (none with ``affine=False``;
    ``bias=False`` drops the bias alone).
    Caches: x (as N * G rows of M), the mean and 1 / sigma (N, G, 1).
    """

    SAVED_TENSORS = ("_x", "_mean", "_inv_std", "weight")

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, device=None, dtype=None, *, bias=True):
        super().__init__()
        self.num_groups = checked_int("GroupNorm", "num_groups", num_groups, 1)
        self.num_channels = checked_int("GroupNorm", "num_channels", num_channels, 1)
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")
        self.eps = checked_real("GroupNorm", "eps", eps, 0.0)
        self.affine = checked_bool("GroupNorm", "affine", affine)
        self.has_bias = checked_bool("GroupNorm", "bias", bias)
        add_affine_params(self, (num_channels,), self.affine, self.affine and self.has_bias)
        self._x = None
        self._mean = None
        self._inv_std = None
        place(self, device, dtype)

    def __repr__(self):
        return (
            f"GroupNorm({self.num_groups}, {self.num_channels}, eps={self.eps}, "
            f"affine={self.affine}, bias={self.has_bias})"
        )

    def forward(self, x, **kw):
        ok = lambda t: t.dim() >= 2 and t.shape[1] == self.num_channels
        self.check_input(x, f"(N, {self.num_channels}, *)", ok)
        self.check_dtype(x)
        batch, groups = x.shape[0], self.num_groups
        positions = math.prod(x.shape[2:])
        # Contiguous rows (a copy only of an input that is not), so that every view below holds.
        self._x = x.reshape(batch * groups, self.num_channels // groups * positions).contiguous()
        mean, inv_std = row_statistics(self._x, self.eps, nan_where_var_overflows=True)
        self._mean = mean.view(batch, groups, 1)
        self._inv_std = inv_std.view(batch, groups, 1)
        out = self._x - mean
        if self.weight is None:
            out.mul_(inv_std)
        else:
            # weight / sigma per sample and channel first: one pass over the values fewer.
            scale = self._inv_std * self.weight.view(groups, -1)
            out.view(batch * self.num_channels, positions).mul_(scale.view(-1, 1))
        if self.bias is not None:
            out.view(batch, self.num_channels, positions).add_(self.bias.view(-1, 1))
        return self.finish_forward(out.view(x.shape))

    def backward(self, dout):
        shape = self.start_backward(dout).shape
        batch, channels, groups = shape[0], self.num_channels, self.num_groups
        positions = math.prod(shape[2:])
        dout = dout.reshape(batch * channels, positions).contiguous()
        # Sums per sample and channel over the positions, as torch's kernel forms them,
        # arranged (N, G, C / G).
        group_shape = (batch, groups, channels // groups)
        sum_dout = dout.sum(dim=1).view(group_shape)
        sum_dout_x = None
        if self.needs_input_grad or self.weight is not None:
            sum_dout_x = (dout * self._x.view(dout.shape)).sum(dim=1).view(group_shape)
        if self.weight is not None:
            sum_dout_x_hat = (sum_dout_x - sum_dout * self._mean) * self._inv_std
            self._grads["weight"] += sum_dout_x_hat.sum(dim=0).view(channels)
        if self.bias is not None:
            self._grads["bias"] += sum_dout.sum(dim=0).view(channels)
        if not self.needs_input_grad:
            return None
        return self.input_grad(dout, sum_dout_x, sum_dout).view(shape)

    def input_grad(self, dout, sum_dout_x, sum_dout):
        """dx = c1 * dout + c2 * x + c3 in torch's arrangement: c1 = weight[c] / sigma per
        channel; per group, with g = dout * weight[c] and sums over its M values,
        ``c2 = (sum(g) * mean - sum(g * x)) / (M sigma^3)`` and
        ``c3 = -c2 * mean - sum(g) / (M sigma)``. dout comes as (N * C, positions), the
        sums per channel as (N, G, C / G)."""
        x, mean, inv_std = self._x, self._mean, self._inv_std
        c1 = inv_std
        if self.weight is not None:
            weight = self.weight.view(self.num_groups, -1)
            sum_dout_x = sum_dout_x * weight
            sum_dout = sum_dout * weight
            c1 = inv_std * weight
        sum_g_x = sum_dout_x.sum(dim=2, keepdim=True)
        sum_g = sum_dout.sum(dim=2, keepdim=True)
        count = x.shape[1]
        c2 = (sum_g * mean - sum_g_x) * inv_std * inv_std * inv_std / count
        c3 = -c2 * mean - sum_g * inv_std / count
        dx = (x * c2.view(-1, 1)).add_(c3.view(-1, 1)).view(dout.shape)
        return dx.addcmul_(dout, c1.expand(sum_dout.shape).reshape(-1, 1))


class _InstanceNorm(Layer):
    """Instance normalisation: each channel of each sample normalised over its positions.

    Forward, with input statistics (training mode, or ``track_running_stats=False``),
    per sample and channel over its M positions:
        ``x_hat = (x - mean) / sqrt(var + eps)`` (biased variance),
        ``out = weight[c] * x_hat + bias[c]`` (``affine=True``; else ``out = x_hat``).
    With ``track_running_stats=True`` training also updates
        ``running_mean = (1 - m) * running_mean + m * mean_n(mean)`` and
        ``running_var = (1 - m) * running_var + m * mean_n(var * M / (M - 1))``
    (the means over the batch of each sample's statistics, the unbiased variance), with
    m = momentum; ``momentum=None`` counts as m = 0, as in torch (the statistics keep
    their values, but a NaN of the batch reaches them through 0 * NaN), and
    ``num_batches_tracked`` stays 0. Eval mode with running statistics then uses them:
    ``out = weight[c] * (x - running_mean) / sqrt(running_var + eps) + bias[c]``.
    Backward, input statistics, with means over positions:
        ``dx = (dout - mean(dout) - x_hat * mean(dout * x_hat)) * weight[c] / sigma``;
    running statistics: ``dx = dout * weight[c] / sigma``. Both:
        ``dweight += sum(dout * x_hat)``, ``dbias += sum(dout)`` over every dim but C.
    With ``affine=False`` and no running statistics, an input whose channel count differs
    from ``num_features`` is normalised all the same, with torch's warning.
    A sample and channel whose variance overflows (1e30 in float32) has 1 / sigma = 0:
    out = x_hat = 0 and dx = 0, as torch's batch-norm kernel gives (the exact values are
    of order 1 and dout / sigma); where sum(dout * (x - mean)) overflows too, torch's
    backward gives NaN for the row and for dweight instead (inf * 0), nnlab's dx is still
    0 and the row adds its x_hat = 0 to dweight.

    Parameters: ``weight`` (C,) = 1, ``bias`` (C,) = 0 with ``affine=True`` (default off).
    Buffers: ``running_mean``, ``running_var``, ``num_batches_tracked`` with
    ``track_running_stats=True`` (default off).
    Caches: x_hat and 1 / sigma (per sample and channel, or per channel), in batched form.
    """

    SAVED_TENSORS = ("_x_hat", "_inv_std", "weight")
    SPATIAL_DIMS = None

    def __init__(
        self, num_features, eps=1e-5, momentum=0.1, affine=False, track_running_stats=False, device=None, dtype=None,
        *, bias=True,
    ):
        super().__init__()
        name = type(self).__name__
        self.num_features = checked_int(name, "num_features", num_features, 1)
        self.eps = checked_real(name, "eps", eps, 0.0)
        self.momentum = checked_momentum(name, momentum)
        self.affine = checked_bool(name, "affine", affine)
        self.track_running_stats = checked_bool(name, "track_running_stats", track_running_stats)
        self.has_bias = checked_bool(name, "bias", bias) and self.affine
        add_affine_params(self, (num_features,), self.affine, self.has_bias)
        add_running_stats(self, num_features)
        self._x_hat = None
        self._inv_std = None
        self._batched = None
        place(self, device, dtype)

    def __repr__(self):
        return (
            f"{type(self).__name__}({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats})"
        )

    def check_shape(self, x):
        spatial = self.SPATIAL_DIMS
        letters = ("L",) if spatial == 1 else ("H", "W") if spatial == 2 else ("D", "H", "W")
        expected = f"(N, C, {', '.join(letters)}) or (C, {', '.join(letters)})"
        self.check_input(x, expected, lambda t: t.dim() in (spatial + 1, spatial + 2))
        self.check_dtype(x)
        channels = x.shape[x.dim() - spatial - 1]
        if channels != self.num_features:
            if self.affine or self.track_running_stats:
                raise ValueError(
                    f"{self!r}: expected input with {self.num_features} channels (dim {x.dim() - spatial - 1}), "
                    f"got shape {tuple(x.shape)}"
                )
            warnings.warn(
                f"{type(self).__name__}: input's size at the channel dim ({channels}) does not match "
                f"num_features ({self.num_features}), which is not used because affine=False"
            )

    def forward(self, x, **kw):
        self.check_shape(x)
        self._batched = x.dim() == self.SPATIAL_DIMS + 2
        batched = x if self._batched else x.unsqueeze(0)
        dims = list(range(2, batched.dim()))
        use_input_stats = self.training or not self.track_running_stats
        if use_input_stats:
            count = math.prod(batched.shape[2:])
            if self.training and count <= 1:
                raise ValueError(
                    f"{self!r}: Expected more than 1 spatial element when training, got input size {tuple(x.shape)}"
                )
            rows = batched.reshape(batched.shape[0] * batched.shape[1], count)
            mean, inv_std = row_statistics(rows, self.eps)
            x_hat = (rows - mean).mul_(inv_std).reshape(batched.shape)
            inv_std = inv_std.view(batched.shape[:2] + (1,) * len(dims))
            if self.training and self.track_running_stats:
                self.update_running_stats(batched, dims)
        else:
            inv_std = _channel_view(torch.rsqrt(self.running_var + self.eps), batched.dim())
            x_hat = (batched - _channel_view(self.running_mean, batched.dim())) * inv_std
        self._use_input_stats = use_input_stats
        self._x_hat = x_hat
        self._inv_std = inv_std
        out = x_hat * _channel_view(self.weight, x_hat.dim()) if self.weight is not None else x_hat * 1.0
        if self.bias is not None:
            out += _channel_view(self.bias, x_hat.dim())
        return self.finish_forward(out if self._batched else out.squeeze(0))

    def update_running_stats(self, batched, dims):
        # The running statistics are state, not part of the function being differentiated.
        with torch.no_grad():
            if batched.shape[0] == 0:
                return
            momentum = 0.0 if self.momentum is None else self.momentum
            mean = batched.mean(dim=dims).mean(dim=0)
            var = batched.var(dim=dims, correction=1).mean(dim=0)
            self.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
            self.running_var.mul_(1 - momentum).add_(var, alpha=momentum)

    def backward(self, dout):
        self.start_backward(dout)
        dout = dout if self._batched else dout.unsqueeze(0)
        x_hat = self._x_hat
        if self.weight is not None:
            self._grads["weight"] += _sum_but_channels(dout * x_hat)
        if self.bias is not None:
            self._grads["bias"] += _sum_but_channels(dout)
        if not self.needs_input_grad:
            return None
        scale = self._inv_std
        if self.weight is not None:
            scale = scale * _channel_view(self.weight, dout.dim())
        if self._use_input_stats:
            # torch's batch norm arrangement (it runs instance norm as a batch norm of N * C
            # channels): (dout - mean(dout) - x_hat * mean(dout * x_hat)) * weight / sigma.
            dims = list(range(2, dout.dim()))
            mean_dout = dout.mean(dim=dims, keepdim=True)
            mean_dout_x_hat = (dout * x_hat).mean(dim=dims, keepdim=True)
            dx = (dout - mean_dout - x_hat * mean_dout_x_hat) * scale
        else:
            dx = dout * scale
        return dx if self._batched else dx.squeeze(0)


def _instance_norm_doc(spatial, torch_name):
    letters = ("L",) if spatial == 1 else ("H", "W") if spatial == 2 else ("D", "H", "W")
    dims = ", ".join(letters)
    summary = f"Instance normalisation of (N, C, {dims}) or unbatched (C, {dims}) input. Same as ``torch.nn.{torch_name}``."
    derivation = _InstanceNorm.__doc__.split("\n", 1)[1]
    return f"{summary}\n{derivation}Shapes: (N, C, {dims}) -> same; (C, {dims}) -> same.\n"


class InstanceNorm1d(_InstanceNorm):
    SPATIAL_DIMS = 1


class InstanceNorm2d(_InstanceNorm):
    SPATIAL_DIMS = 2


class InstanceNorm3d(_InstanceNorm):
    SPATIAL_DIMS = 3


InstanceNorm1d.__doc__ = _instance_norm_doc(1, "InstanceNorm1d")
InstanceNorm2d.__doc__ = _instance_norm_doc(2, "InstanceNorm2d")
InstanceNorm3d.__doc__ = _instance_norm_doc(3, "InstanceNorm3d")


def _channel_window_sum(tensor, before, after):
    """s[:, c] = sum of tensor[:, c - before : c + after + 1] along dim 1 (zeros outside)."""
    pad_shape = list(tensor.shape)
    pieces = []
    for count in (before, after):
        pad_shape[1] = count
        pieces.append(tensor.new_zeros(pad_shape))
    padded = torch.cat([pieces[0], tensor, pieces[1]], dim=1)
    return padded.unfold(1, before + after + 1, 1).sum(dim=-1)


class LocalResponseNorm(Layer):
    """Local response normalisation across channels (AlexNet's).

    Forward, with n = size and the window W(c) = channels c - n // 2 .. c + (n - 1) // 2
    (zeros beyond the edges):
        ``q_c = k + alpha * (sum_{c' in W(c)} x_{c'}^2) / n``, ``out_c = x_c / q_c^beta``.
    Backward, in torch's order of operations (so that NaN and infinities land where
    torch's autograd puts them), with ``p = q^beta``:
        ``dq_c = (-dout_c * ((x_c / p_c) / p_c)) * (beta * q_c^(beta - 1))`` (finite where
        ``p_c^2`` overflows),
        ``s_j = sum_{c : j in W(c)} dq_c * alpha / n`` (a window sum over channels
        j - (n - 1) // 2 .. j + n // 2), ``dx_j = dout_j / p_j + (s_j x_j + s_j x_j)``.
    No parameters. Same as ``torch.nn.LocalResponseNorm(size, alpha, beta, k)``.

    Shapes: (N, C, *) -> (N, C, *), at least 3 dimensions.
    Caches: x and q.
    """

    SAVED_TENSORS = ("_x", "_q")

    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0):
        super().__init__()
        self.size = checked_int("LocalResponseNorm", "size", size, 1)
        self.alpha = checked_real("LocalResponseNorm", "alpha", alpha)
        self.beta = checked_real("LocalResponseNorm", "beta", beta)
        self.k = checked_real("LocalResponseNorm", "k", k)
        self._x = None
        self._q = None

    def __repr__(self):
        return f"LocalResponseNorm({self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k})"

    def forward(self, x, **kw):
        self.check_input(x, "(N, C, *) with at least 3 dimensions", lambda t: t.dim() >= 3)
        window_mean = _channel_window_sum(x * x, self.size // 2, (self.size - 1) // 2) / self.size
        self._x = x
        self._q = window_mean * self.alpha + self.k
        return self.finish_forward(x / self._q.pow(self.beta))

    def backward(self, dout):
        self.start_backward(dout)
        if not self.needs_input_grad:
            return None
        x = self._x
        q = self._q
        p = q.pow(self.beta)
        dq = (-dout * (x / p / p)) * (self.beta * q.pow(self.beta - 1))
        spread = _channel_window_sum(dq * self.alpha / self.size, (self.size - 1) // 2, self.size // 2)
        return dout / p + (spread * x + spread * x)
