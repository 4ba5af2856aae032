"""Batch normalisation, channel-wise dropout (1-D, 2-D and 3-D) and alpha dropout."""

import math

import torch

from .base import Layer, checked_bool, checked_int, checked_real
from .dense import Dropout, keep_mask

__all__ = [
    "AlphaDropout",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "FeatureAlphaDropout",
]

# -scale * alpha of SELU: the value SELU tends to at -inf, where alpha dropout sets the
# dropped entries (torch's constant).
SELU_SATURATION = 1.7580993408473766


def add_affine_params(layer, shape, weight, bias):
    """Registers the affine ``weight`` (ones) and ``bias`` (zeros) of a normalisation
    layer, each when its flag says so; an absent one is the attribute None, as in torch."""
    layer.weight = layer.bias = None
    if weight:
        layer.add_param("weight", torch.ones(shape))
    if bias:
        layer.add_param("bias", torch.zeros(shape))


def checked_momentum(owner, momentum):
    """The momentum of running statistics: a number in [0, 1], or None (torch's
    cumulative average); ValueError naming ``owner`` otherwise."""
    if momentum is None:
        return None
    return checked_real(owner, "momentum", momentum, 0.0, 1.0, high_open=False)


def add_running_stats(layer, num_features):
    """Registers the running statistics of a layer whose ``track_running_stats`` is set:
    ``running_mean`` (zeros), ``running_var`` (ones) and ``num_batches_tracked`` (0);
    without it the three are the attribute None, as in torch."""
    layer.running_mean = layer.running_var = layer.num_batches_tracked = None
    if layer.track_running_stats:
        layer.add_buffer("running_mean", torch.zeros(num_features))
        layer.add_buffer("running_var", torch.ones(num_features))
        layer.add_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))


def place(layer, device, dtype):
    """torch's factory arguments: moves a new layer's tensors to ``device``/``dtype``."""
    if device is not None or dtype is not None:
        layer.to(device=device, dtype=dtype)


class _BatchNorm(Layer):
    """Batch normalisation over every dimension except the channel dimension 1.

    Forward, training mode (statistics of the batch, M = numel / C values per channel):
        ``mean = mean(x)``, ``var = mean((x - mean)^2)`` (biased),
        ``x_hat = (x - mean) / sqrt(var + eps)``, ``out = weight * x_hat + bias``;
        then, outside the computation of ``out``,
        ``running_mean = (1 - m) * running_mean + m * mean`` and
        ``running_var = (1 - m) * running_var + m * var * M / (M - 1)`` (unbiased),
        with m = momentum, or m = 1 / num_batches_tracked (a cumulative average) when
        momentum is None, as in PyTorch.
    Forward, eval mode: the same with ``running_mean`` and ``running_var`` in place of
        the batch statistics; nothing is updated. An empty batch in training mode is
        treated so too, but ``num_batches_tracked`` still counts it (as torch does).

    Backward, training mode (the statistics depend on x), with sigma = sqrt(var + eps)
    and sums over all dimensions but 1:
        ``dx = (weight / sigma) / M * (M * dout - sum(dout) - x_hat * sum(dout * x_hat))``.
    Backward, eval mode (an affine map of x): ``dx = dout * weight / sigma``.
    Both modes: ``dweight += sum(dout * x_hat)``, ``dbias += sum(dout)``; dx is skipped
    after ``requires_input_grad(False)``.

    Synchronised statistics (``torch.nn.SyncBatchNorm``): when ``sum_across_processes``
    is set (``nnlab.distributed.DataParallel`` sets it), M, the sums behind ``mean``
    and ``var`` and the two sums of the backward run over the batches of every process,
    so each process normalises with the statistics of the global batch and returns its
    share of the global batch's gradient; parameter gradients stay this process's sums.

    Sums run in the input's dtype: a channel of finite values whose sum overflows (two
    3e38 in float32) has mean inf and gives NaN, as torch's CPU kernel at one thread;
    with several threads torch's sums run in float64, the mean is finite, the variance
    overflows and the channel's output is 0 (a wrong finite number: the exact x_hat is of
    order 1), which nnlab does not copy.

    Options, as in PyTorch: ``affine=False`` drops ``weight`` and ``bias`` (weight = 1,
    bias = 0 in the formulas above, no parameter gradients); ``bias=False`` (keyword
    only) drops the bias alone; ``track_running_stats=False`` keeps no running
    statistics and normalises with the batch's statistics in eval mode too.

    Parameters: ``weight`` (C,) = 1 and ``bias`` (C,) = 0.
    Buffers: ``running_mean`` (C,) = 0, ``running_var`` (C,) = 1 and
    ``num_batches_tracked`` (int64 scalar), keyed as in PyTorch's state_dict.
    Caches: x - mean (batch or running mean), 1 / sigma (both shaped to broadcast
    against x), whether the forward used batch statistics, and M.
    """

    SAVED_TENSORS = ("_centered", "_inv_std", "weight")

    def __init__(
        self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, device=None, dtype=None,
        *, bias=True,
    ):
        super().__init__()
        name = type(self).__name__
        self.num_features = checked_int(name, "num_features", num_features, 1)
        self.eps = checked_real(name, "eps", eps, 0.0, low_open=True)
        self.momentum = checked_momentum(name, momentum)
        self.affine = checked_bool(name, "affine", affine)
        self.track_running_stats = checked_bool(name, "track_running_stats", track_running_stats)
        self.has_bias = checked_bool(name, "bias", bias)
        add_affine_params(self, (num_features,), self.affine, self.affine and self.has_bias)
        add_running_stats(self, num_features)
        # None: the statistics of this process's batch alone. Data-parallel training sets a
        # function returning the sum of a tensor over every process (an all-reduce).
        self.sum_across_processes = None
        self._centered = None
        self._inv_std = None
        self._batch_stats = None
        self._count = None
        place(self, device, dtype)

    def __repr__(self):
        options = "".join(
            f", {name}={value}"
            for name, value in (("affine", self.affine), ("bias", self.has_bias), ("track_running_stats", self.track_running_stats))
            if not value
        )
        return f"{type(self).__name__}({self.num_features}, eps={self.eps}, momentum={self.momentum}{options})"

    def check_shape(self, x):
        """Raises ValueError unless x has a dimensionality this layer accepts and C channels."""
        raise NotImplementedError

    def forward(self, x, **kw):
        self.check_shape(x)
        self.check_dtype(x)
        dims = [0] + list(range(2, x.dim()))
        channel_shape = [1, self.num_features] + [1] * (x.dim() - 2)
        count = x.numel() // self.num_features
        use_batch_stats = self.training or not self.track_running_stats
        updates_running_stats = self.training and self.track_running_stats
        synchronised = self.training and self.sum_across_processes is not None
        if synchronised:
            # Every process takes part, one with an empty batch too: the sums are collective.
            count, mean = self.global_count_and_mean(x, dims)
        if updates_running_stats and count == 0:
            # torch's empty batch: an empty output, statistics untouched but the count.
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
            use_batch_stats = updates_running_stats = False
        if use_batch_stats:
            if count == 1:
                raise ValueError(
                    f"{self!r}: Expected more than 1 value per channel when training, "
                    f"got input size {tuple(x.shape)}"
                )
            if synchronised:
                centered = x - mean
                squares = (centered * centered).sum(dim=dims, keepdim=True)
                var = self.sum_across_processes(squares) / count
            else:
                mean = x.mean(dim=dims, keepdim=True)
                centered = x - mean
                var = (centered * centered).mean(dim=dims, keepdim=True)
            if updates_running_stats:
                self.update_running_stats(mean, var, count)
        else:
            centered = x - self.running_mean.reshape(channel_shape)
            var = self.running_var.reshape(channel_shape)
        inv_std = 1.0 / torch.sqrt(var + self.eps)
        self._centered = centered
        self._inv_std = inv_std
        self._batch_stats = use_batch_stats
        self._count = count
        # weight * x_hat + bias with weight / sigma per channel first (as torch does): one
        # pass over x fewer than forming x_hat; the sum in place on the fresh product.
        out = centered * self.channel_scale(inv_std, channel_shape)
        if self.bias is not None:
            out += self.bias.reshape(channel_shape)
        return self.finish_forward(out)

    def channel_scale(self, inv_std, channel_shape):
        """weight / sigma per channel (1 / sigma without an affine weight)."""
        if self.weight is None:
            return inv_std
        return self.weight.reshape(channel_shape) * inv_std

    def global_count_and_mean(self, x, dims):
        """M and the per-channel mean over every process's batch, from one sum of the
        values and the count (in float64, where counts are exact)."""
        local = torch.cat([x.sum(dim=dims).double(), x.new_tensor([x.numel() // self.num_features], dtype=torch.float64)])
        total = self.sum_across_processes(local)
        count = int(total[-1].item())
        mean = (total[:-1] / max(count, 1)).to(x.dtype)
        return count, mean.reshape([1, self.num_features] + [1] * (x.dim() - 2))

    def update_running_stats(self, mean, var, count):
        # The running statistics are state, not part of the function being
        # differentiated: keep their update out of any autograd graph built over x.
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / self.num_batches_tracked.item()
            else:
                factor = self.momentum
            unbiased_var = var * (count / (count - 1))
            self.running_mean.mul_(1 - factor).add_(mean.reshape(-1), alpha=factor)
            self.running_var.mul_(1 - factor).add_(unbiased_var.reshape(-1), alpha=factor)

    def backward(self, dout):
        self.start_backward(dout)
        centered = self._centered
        inv_std = self._inv_std
        dims = [0] + list(range(2, centered.dim()))
        channel_shape = [1, self.num_features] + [1] * (centered.dim() - 2)
        sum_dout = dout.sum(dim=dims, keepdim=True)
        # sum(dout * x_hat), computed as torch does: sum(dout * (x - mean)) / sigma.
        sum_dout_x_hat = (dout * centered).sum(dim=dims, keepdim=True) * inv_std

        # Parameter gradients accumulate in place.
        if self.weight is not None:
            self._grads["weight"] += sum_dout_x_hat.reshape(-1)
        if self.bias is not None:
            self._grads["bias"] += sum_dout.reshape(-1)

        # Input gradient.
        if not self.needs_input_grad:
            return None
        scale = self.channel_scale(inv_std, channel_shape)
        if not self._batch_stats:
            return dout * scale
        if self.sum_across_processes is not None:
            # The statistics came from every process's batch: so do the sums through them.
            both = self.sum_across_processes(torch.cat([sum_dout, sum_dout_x_hat]))
            sum_dout, sum_dout_x_hat = both[:1], both[1:]
        # (w / sigma) / M * (M * dout - sum(dout) - x_hat * sum(dout * x_hat)), written
        # with x - mean in place of x_hat = (x - mean) / sigma, in three passes over a fresh
        # tensor updated in place: dout - (x - mean) * k, times w / sigma, minus the
        # per-channel mean(dout) * w / sigma.
        count = self._count
        dx = centered * (sum_dout_x_hat * inv_std / count)
        torch.sub(dout, dx, out=dx)
        dx *= scale
        dx -= sum_dout * scale / count
        return dx


def _batchnorm_doc(summary, shapes):
    """The shared derivation of _BatchNorm under a class-specific summary and shapes."""
    derivation = _BatchNorm.__doc__.split("\n", 1)[1]
    return f"{summary}\n{derivation}{shapes}\n"


class BatchNorm1d(_BatchNorm):
    def check_shape(self, x):
        ok = isinstance(x, torch.Tensor) and x.dim() in (2, 3) and x.shape[1] == self.num_features
        self.check_input(x, f"(N, {self.num_features}) or (N, {self.num_features}, L)", ok)


BatchNorm1d.__doc__ = _batchnorm_doc(
    "Batch normalisation of (N, C) or (N, C, L) input per channel C. "
    "Same as ``torch.nn.BatchNorm1d(num_features, eps, momentum, affine, track_running_stats)``.",
    "Shapes: (N, C) -> (N, C); (N, C, L) -> (N, C, L).",
)


class BatchNorm2d(_BatchNorm):
    def check_shape(self, x):
        ok = isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] == self.num_features
        self.check_input(x, f"(N, {self.num_features}, H, W)", ok)


BatchNorm2d.__doc__ = _batchnorm_doc(
    "Batch normalisation of (N, C, H, W) input per channel C. "
    "Same as ``torch.nn.BatchNorm2d(num_features, eps, momentum, affine, track_running_stats)``.",
    "Shapes: (N, C, H, W) -> (N, C, H, W).\n"
    "\n"
    "    Example::\n"
    "\n"
    "        >>> import torch\n"
    "        >>> from nnlab.grad_compare import check_layer\n"
    "        >>> from nnlab.layers import BatchNorm2d\n"
    "        >>> norm = BatchNorm2d(3)\n"
    "        >>> x = torch.randn(4, 3, 5, 5)\n"
    "        >>> torch.allclose(norm(x), torch.nn.BatchNorm2d(3)(x), atol=1e-5)   # training mode: batch statistics\n"
    "        True\n"
    "        >>> check_layer(norm, x).passed\n"
    "        True\n"
    "        >>> norm.eval()(x).shape                     # eval mode: the running statistics\n"
    "        torch.Size([4, 3, 5, 5])",
)


class BatchNorm3d(_BatchNorm):
    def check_shape(self, x):
        ok = isinstance(x, torch.Tensor) and x.dim() == 5 and x.shape[1] == self.num_features
        self.check_input(x, f"(N, {self.num_features}, D, H, W)", ok)


BatchNorm3d.__doc__ = _batchnorm_doc(
    "Batch normalisation of (N, C, D, H, W) input per channel C. "
    "Same as ``torch.nn.BatchNorm3d(num_features, eps, momentum, affine, track_running_stats)``.",
    "Shapes: (N, C, D, H, W) -> (N, C, D, H, W).",
)


class _ChannelDropout(Dropout):
    """Channel-wise inverted dropout over ``SPATIAL_DIMS`` trailing spatial dimensions:
    one mask entry per (sample, channel), shared by the whole feature map. Subclasses set
    ``SPATIAL_DIMS`` and the docstring; the input has ``SPATIAL_DIMS + 1`` (unbatched) or
    ``SPATIAL_DIMS + 2`` (batched) dimensions."""

    SPATIAL_DIMS = 2
    SHAPES = "(N, C, H, W) or (C, H, W)"

    def check_shape(self, x):
        dims = (self.SPATIAL_DIMS + 1, self.SPATIAL_DIMS + 2)
        self.check_input(x, self.SHAPES, lambda x: x.dim() in dims)

    def mask_shape(self, x):
        return tuple(x.shape[: -self.SPATIAL_DIMS]) + (1,) * self.SPATIAL_DIMS


class Dropout1d(_ChannelDropout):
    """Channel-wise inverted dropout of sequences: ``out = x * mask / (1 - p)`` in
    training mode, with one mask entry per (sample, channel), 0 with probability p
    (torch's global RNG), so a whole channel is zeroed at once; ``out = x`` in eval mode.
    Distributionally the same as ``torch.nn.Dropout1d(p)``.

    Backward: ``dx = dout * mask / (1 - p)`` (``dx = dout`` in eval mode).
    Shapes: (N, C, L) -> same, mask (N, C, 1); or unbatched (C, L) -> same, mask (C, 1),
    as in torch (any other number of dimensions is a ValueError, as torch refuses it).
    ``inplace=True`` is accepted and computed out of place (the same values; the input is
    left unchanged).
    Caches: the scaled mask (the number 1.0 in eval mode or when p = 0).
    """

    SPATIAL_DIMS = 1
    SHAPES = "(N, C, L) or (C, L)"


class Dropout2d(_ChannelDropout):
    """Channel-wise inverted dropout: ``out = x * mask / (1 - p)`` in training mode, with
    one mask entry per (sample, channel), 0 with probability p (torch's global RNG),
    so a whole feature map is zeroed at once; ``out = x`` in eval mode.
    Distributionally the same as ``torch.nn.Dropout2d(p)`` on (N, C, H, W) input.

    Backward: ``dx = dout * mask / (1 - p)`` (``dx = dout`` in eval mode).
    Shapes: (N, C, H, W) -> same, mask (N, C, 1, 1); or unbatched (C, H, W) -> same,
    mask (C, 1, 1), i.e. channels are dropped, as torch.nn documents it. (torch 2.x
    itself still treats a 3-D input as (N, C, L) and drops rows of each channel, with a
    warning that this will change; nnlab follows the documented meaning.)
    ``inplace=True`` is accepted and computed out of place (the same values; the input is
    left unchanged).
    Caches: the scaled mask (the number 1.0 in eval mode or when p = 0).
    """


class Dropout3d(_ChannelDropout):
    """Channel-wise inverted dropout of volumes: ``out = x * mask / (1 - p)`` in training
    mode, with one mask entry per (sample, channel), 0 with probability p (torch's global
    RNG), so a whole D x H x W feature map is zeroed at once; ``out = x`` in eval mode.
    Distributionally the same as ``torch.nn.Dropout3d(p)``.

    Backward: ``dx = dout * mask / (1 - p)`` (``dx = dout`` in eval mode).
    Shapes: (N, C, D, H, W) -> same, mask (N, C, 1, 1, 1); or unbatched (C, D, H, W) ->
    same, mask (C, 1, 1, 1), as in torch. Any other number of dimensions is a ValueError
    (torch warns that it is deprecated and will become an error, and drops along the first
    dimension; nnlab refuses it now).
    ``inplace=True`` is accepted and computed out of place (the same values; the input is
    left unchanged).
    Caches: the scaled mask (the number 1.0 in eval mode or when p = 0).
    """

    SPATIAL_DIMS = 3
    SHAPES = "(N, C, D, H, W) or (C, D, H, W)"


class _AlphaDropout(Dropout):
    """Alpha dropout: dropped entries set to SELU's saturation value, then an affine map
    that keeps a zero mean and unit variance. Dropout's options, checks and backward
    (``dout`` times the cached ``_mask``, here a times the keep mask); subclasses say
    whether the mask is drawn per entry or per (sample, channel) (``mask_shape``), and
    give the docstring."""

    def __repr__(self):
        return f"{type(self).__name__}(p={self.p}, inplace={self.inplace})"

    def forward(self, x, **kw):
        self.check_shape(x)
        if not self.training or self.p == 0 or x.numel() == 0:
            self._mask = 1.0
            return self.finish_forward(x * 1.0)
        if self.p == 1:
            self._mask = 0.0
            return self.finish_forward(x * 0.0)
        keep = keep_mask(self.mask_shape(x), self.p, x)
        a = 1.0 / math.sqrt((SELU_SATURATION**2 * self.p + 1) * (1 - self.p))
        shift = (keep - 1) * (SELU_SATURATION * a) + SELU_SATURATION * a * self.p
        self._mask = keep * a
        return self.finish_forward(x * self._mask + shift)


class AlphaDropout(_AlphaDropout):
    """Alpha dropout for SELU networks: each entry dropped with probability p is set to
    SELU's saturation value -alpha' (alpha' = 1.7580993408473766), then
    ``out = a * (x * mask - alpha' (1 - mask)) + alpha' a p`` with
    ``a = ((alpha'^2 p + 1)(1 - p))^(-1/2)``, so that a zero-mean unit-variance input keeps
    its mean and variance; ``out = x`` in eval mode, when p = 0 or on an empty input;
    ``out = x * 0`` when p = 1. Torch's formula, as torch computes it
    (``x * (a mask) + ((mask - 1) alpha' a + alpha' a p)``); distributionally the same as
    ``torch.nn.AlphaDropout(p)`` (the mask comes from torch's global RNG).

    Backward: ``dx = dout * a * mask`` (``dx = dout`` in eval mode, ``dout * 0`` when p = 1).
    Shapes: any -> same, one mask entry per entry. ``inplace=True`` is accepted and
    computed out of place (the same values; the input is left unchanged).
    Caches: a times the mask (the number 1.0 or 0.0 when nothing is drawn).
    """


class FeatureAlphaDropout(_AlphaDropout):
    """Alpha dropout of whole channels: as ``AlphaDropout``, with one mask entry per
    (sample, channel) shared by the whole feature map: each dropped channel is set to
    SELU's saturation value -alpha', then
    ``out = a * (x * mask - alpha' (1 - mask)) + alpha' a p`` with
    ``a = ((alpha'^2 p + 1)(1 - p))^(-1/2)`` and alpha' = 1.7580993408473766; ``out = x`` in
    eval mode, when p = 0 or on an empty input; ``out = x * 0`` when p = 1.
    Distributionally the same as ``torch.nn.FeatureAlphaDropout(p)``.

    Backward: ``dx = dout * a * mask`` (``dx = dout`` in eval mode, ``dout * 0`` when p = 1).
    Shapes: (N, C, ...) -> same, mask (N, C, 1, ...); fewer than 2 dimensions is a
    ValueError where a mask is drawn (torch refuses them there too, and passes them
    through elsewhere). ``inplace=True`` is accepted and computed out of place.
    Caches: a times the mask (the number 1.0 or 0.0 when nothing is drawn).
    """

    def mask_shape(self, x):
        self.check_input(x, "at least 2 dimensions (N, C, ...)", x.dim() >= 2)
        return x.shape[:2] + (1,) * (x.dim() - 2)
