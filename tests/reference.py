"""The independent judges every layer test uses: a torch.nn twin run under autograd,
torch autograd on the layer's own forward, and central finite differences in float64.

None of them calls nnlab's own gradient code except the ``backward`` under test.
"""

import torch

# Tolerances from the project's standards.
FORWARD_ATOL = {torch.float32: 1e-6, torch.float64: 1e-12}
CONV_FORWARD_ATOL = {torch.float32: 1e-5, torch.float64: 1e-12}
GRAD_RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def rel_error(actual, expected, floor=1e-12):
    """||actual - expected|| / max(||expected||, floor)."""
    diff = (actual.double() - expected.double()).norm().item()
    return diff / max(expected.double().norm().item(), floor)


def gradient_floor(gradients):
    """The absolute floor of a gradient comparison: the largest norm among the reference
    gradients of one check (over their finite entries). A gradient whose true value is
    (nearly) 0, such as a sum of products that cancel, is judged against the size of the
    check's gradients, not against its own rounding noise."""
    norms = [g[g.isfinite()].double().norm().item() for g in gradients if g is not None]
    return max(norms + [1e-12])


def assert_close(name, actual, expected, rtol=None, atol=None, floor=1e-12):
    """Shape and dtype first, then the non-finite entries by position (NaN where expected
    has NaN, the same infinities), then the values of the finite entries, naming the
    tensor that fails; the relative error is ||actual - expected|| / max(||expected||,
    floor) over the finite entries."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    assert_same_nonfinite(name, actual, expected)
    finite = torch.isfinite(expected)
    actual = actual[finite]
    expected = expected[finite]
    if atol is not None:
        worst = (actual - expected).abs().max().item() if actual.numel() else 0.0
        assert worst <= atol, f"{name}: max abs diff {worst:.3g} > {atol:.1g}"
    if rtol is not None:
        rel = rel_error(actual, expected, floor)
        assert rel <= rtol, f"{name}: relative error {rel:.3g} > {rtol:.1g}"


def assert_same_nonfinite(name, actual, expected):
    """NaN, +inf and -inf at the same positions in both tensors; names the first
    position that differs and both values there."""
    for kind in (torch.isnan, torch.isposinf, torch.isneginf):
        differs = kind(actual) != kind(expected)
        if differs.any():
            where = tuple(index.item() for index in differs.nonzero()[0])
            raise AssertionError(
                f"{name}: at {where} got {actual[where].item()}, expected {expected[where].item()}"
            )


def every_window_touches_input(size, count, kernel, stride, padding, dilation):
    """False when some dilated window holds only padding (torch's max_pool2d backward then
    writes out of bounds: those configurations are left out of the comparisons)."""
    for i in range(count):
        taps = [i * stride - padding + a * dilation for a in range(kernel)]
        if not any(0 <= t < size for t in taps):
            return False
    return True


def copy_params(layer, module):
    """Copies nnlab parameters, then floating buffers, into the torch module, in order."""
    module_params = list(module.parameters())
    layer_params = [p for p, _ in layer.params()]
    assert len(module_params) == len(layer_params), "parameter counts differ"
    module_buffers = [b for b in module.buffers() if b.is_floating_point()]
    layer_buffers = [b for b in layer.buffers() if b.is_floating_point()]
    assert len(module_buffers) == len(layer_buffers), "floating buffer counts differ"
    with torch.no_grad():
        for target, source in zip(module_params, layer_params):
            assert target.shape == source.shape, f"{tuple(target.shape)} != {tuple(source.shape)}"
            target.copy_(source)
        for target, source in zip(module_buffers, layer_buffers):
            target.copy_(source)


def flat_tensors(value):
    """The tensors of ``value`` in order, tuples nested in it opened (an LSTM's (out, (h, c)))."""
    if isinstance(value, torch.Tensor):
        return (value,)
    return tuple(tensor for part in value for tensor in flat_tensors(part))


def _outputs(value):
    return value if isinstance(value, tuple) else (value,)


def _random_like(outputs, seed):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(o.shape, generator=generator, dtype=o.dtype).to(o.device) for o in outputs)


def _upstream(outputs, seed, dout):
    """The upstream gradients for ``outputs`` (a tuple): random when ``dout`` is None,
    else ``dout``: a tensor, a tuple of one per output, or a function of the outputs
    (packed as the layer returned them) giving either."""
    if dout is None:
        return _random_like(outputs, seed + 1)
    if callable(dout):
        dout = dout(_pack(outputs))
    return _outputs(dout)


def _pack(douts):
    return douts if len(douts) > 1 else douts[0]


def check_against_torch(layer, module, x, y=None, forward_atol=None, grad_rtol=None, seed=0, dout=None):
    """Runs the nnlab layer and its torch twin (weights already copied, same mode) on the
    same input and the same upstream gradient (``dout``: a tensor, a tuple of one per
    output, or a function of the output giving them; random when None); compares the
    output, the input gradient and every parameter gradient, non-finite entries by
    position. Returns the nnlab output."""
    dtype = x.dtype
    forward_atol = FORWARD_ATOL[dtype] if forward_atol is None else forward_atol
    grad_rtol = GRAD_RTOL[dtype] if grad_rtol is None else grad_rtol
    kw = {} if y is None else {"y": y}

    layer.zero_grad()
    torch.manual_seed(seed)
    out = _outputs(layer(x.clone(), **kw))
    douts = _upstream(out, seed, dout)
    dx = layer.backward(_pack(douts))

    x_ref = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    out_ref = _outputs(module(x_ref) if y is None else module(x_ref, y))
    wrt = [x_ref] + list(module.parameters())
    grads = torch.autograd.grad(out_ref, wrt, douts, allow_unused=True)

    assert len(out) == len(out_ref), f"{len(out)} outputs != {len(out_ref)}"
    for i, (o, o_ref) in enumerate(zip(out, out_ref)):
        assert_close(f"output[{i}]", o, o_ref.detach(), atol=forward_atol)
    floor = gradient_floor(grads)
    assert_close("input gradient", dx, grads[0], rtol=grad_rtol, floor=floor)
    for i, ((_, grad), grad_ref) in enumerate(zip(layer.params(), grads[1:])):
        grad_ref = torch.zeros_like(grad) if grad_ref is None else grad_ref
        assert_close(f"param#{i + 1:02d} gradient", grad, grad_ref, rtol=grad_rtol, floor=floor)
    return _pack(out)


def check_against_autograd(layer, x, y=None, grad_rtol=None, seed=0, dout=None):
    """Compares the layer's backward with autograd run through the layer's own forward
    (for layers with no torch twin, such as Dropout: the seed fixes the mask); ``dout``
    as in ``check_against_torch``."""
    grad_rtol = GRAD_RTOL[x.dtype] if grad_rtol is None else grad_rtol
    kw = {} if y is None else {"y": y}
    layer.zero_grad()
    torch.manual_seed(seed)
    out = _outputs(layer(x.clone(), **kw))
    douts = _upstream(out, seed, dout)
    dx = layer.backward(_pack(douts))
    own_grads = [grad.clone() for _, grad in layer.params()]

    params = [p for p, _ in layer.params()]
    x_ref = x.clone().requires_grad_(True)
    for p in params:
        p.requires_grad_(True)
    try:
        torch.manual_seed(seed)
        out_ref = _outputs(layer(x_ref, **kw))
        grads = torch.autograd.grad(out_ref, [x_ref] + params, douts, allow_unused=True)
    finally:
        for p in params:
            p.requires_grad_(False)
    floor = gradient_floor(grads)
    assert_close("input gradient", dx, grads[0], rtol=grad_rtol, floor=floor)
    for i, (own, ref) in enumerate(zip(own_grads, grads[1:])):
        ref = torch.zeros_like(own) if ref is None else ref
        assert_close(f"param#{i + 1:02d} gradient", own, ref, rtol=grad_rtol, floor=floor)


def check_finite_differences(layer, x, y=None, eps=1e-6, rtol=1e-7, max_elements=60, seed=0):
    """Central differences of sum(f(x) * dout) in float64 against the layer's backward,
    for the input and every parameter, on up to ``max_elements`` sampled entries each.
    The layer and x must already be float64."""
    assert x.dtype == torch.float64, "finite differences need float64"
    kw = {} if y is None else {"y": y}
    x = x.clone()

    def objective():
        torch.manual_seed(seed)
        outs = _outputs(layer(x, **kw))
        return sum((o * d).sum().item() for o, d in zip(outs, douts))

    torch.manual_seed(seed)
    douts = _random_like(_outputs(layer(x, **kw)), seed + 1)
    layer.zero_grad()
    torch.manual_seed(seed)
    layer(x, **kw)
    analytic = [layer.backward(_pack(douts))] + [grad.clone() for _, grad in layer.params()]
    tensors = [x] + [p for p, _ in layer.params()]
    names = ["input"] + [f"param#{i + 1:02d}" for i in range(len(tensors) - 1)]

    generator = torch.Generator().manual_seed(seed)
    for name, tensor, grad in zip(names, tensors, analytic):
        flat = tensor.view(-1)
        count = min(flat.numel(), max_elements)
        picks = torch.randperm(flat.numel(), generator=generator)[:count]
        numeric = torch.empty(count, dtype=torch.float64)
        for j, index in enumerate(picks.tolist()):
            original = flat[index].item()
            flat[index] = original + eps
            plus = objective()
            flat[index] = original - eps
            minus = objective()
            flat[index] = original
            numeric[j] = (plus - minus) / (2 * eps)
        expected = grad.reshape(-1)[picks].cpu()
        assert_close(f"{name} finite differences", expected, numeric, rtol=rtol)


# torch.nn twins of nnlab models ------------------------------------------------------------


class TorchResidual(torch.nn.Module):
    """main(x) + shortcut(x), the identity when shortcut is None."""

    def __init__(self, main, shortcut=None):
        super().__init__()
        self.main = main
        self.shortcut = shortcut

    def forward(self, x):
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.main(x) + skip


class TorchHeads(torch.nn.Module):
    """A tuple with one output per head."""

    def __init__(self, *heads):
        super().__init__()
        self.heads = torch.nn.ModuleList(heads)

    def forward(self, x):
        return tuple(head(x) for head in self.heads)


def torch_twin(layer):
    """A torch.nn model computing what the nnlab ``layer`` computes: the torch.nn layer of
    each kind in the same order and nesting, in the same train/eval mode and dtype, with
    every parameter and buffer copied (so parameters zip one to one with ``params()``).
    A layer used at several places gets one module used at the same places."""
    module = _twin_structure(layer, {})
    copy_params(layer, module)
    with torch.no_grad():
        layer_counts = [b for b in layer.buffers() if not b.is_floating_point()]
        module_counts = [b for b in module.buffers() if not b.is_floating_point()]
        for target, source in zip(module_counts, layer_counts, strict=True):
            target.copy_(source)
    return module


def _twin_structure(layer, made):
    """The torch.nn twin of ``layer`` (parameters not yet copied), in the layer's mode;
    ``made`` maps id(layer) to the twin already made for it (a shared layer)."""
    from nnlab import layers as nl

    if id(layer) in made:
        return made[id(layer)]
    if isinstance(layer, nl.Builder):
        module = _twin_structure(layer.sequence, made)
    elif isinstance(layer, nl.Sequential):
        module = torch.nn.Sequential(*[_twin_structure(child, made) for child in layer])
    elif isinstance(layer, nl.Residual):
        shortcut = None if layer.shortcut is None else _twin_structure(layer.shortcut, made)
        module = TorchResidual(_twin_structure(layer.main, made), shortcut)
    elif isinstance(layer, nl.Heads):
        module = TorchHeads(*[_twin_structure(head, made) for head in layer])
    else:
        floating = [p for p, _ in layer.params()] + [b for b in layer.buffers() if b.is_floating_point()]
        dtype = floating[0].dtype if floating else torch.get_default_dtype()
        module = _twin_leaf(nl, layer).to(dtype)
    module.training = layer.training  # this module's flag only: children keep their own
    made[id(layer)] = module
    return module


def _twin_leaf(nl, layer):
    if isinstance(layer, nl.Conv2d):
        return torch.nn.Conv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            bias=layer.bias is not None,
            padding_mode=layer.padding_mode,
        )
    if isinstance(layer, nl.Linear):
        return torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    if isinstance(layer, (nl.BatchNorm1d, nl.BatchNorm2d, nl.BatchNorm3d)):
        return getattr(torch.nn, type(layer).__name__)(
            layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats, bias=layer.has_bias
        )
    if isinstance(layer, nl.MaxPool2d):
        return torch.nn.MaxPool2d(
            layer.kernel_size, layer.stride, layer.padding, layer.dilation, layer.return_indices, layer.ceil_mode
        )
    if isinstance(layer, nl.AvgPool2d):
        return torch.nn.AvgPool2d(
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.ceil_mode,
            count_include_pad=layer.count_include_pad,
            divisor_override=layer.divisor_override,
        )
    if isinstance(layer, nl.AdaptiveMaxPool2d):
        return torch.nn.AdaptiveMaxPool2d(layer.output_size, layer.return_indices)
    if isinstance(layer, nl.AdaptiveAvgPool2d):
        return torch.nn.AdaptiveAvgPool2d(layer.output_size)
    if isinstance(layer, nl.Dropout2d):
        return torch.nn.Dropout2d(layer.p)
    if isinstance(layer, nl.Dropout):
        return torch.nn.Dropout(layer.p)
    if isinstance(layer, nl.LeakyReLU):
        return torch.nn.LeakyReLU(layer.alpha)
    if isinstance(layer, nl.Softmax):
        return torch.nn.Softmax(layer.dim)
    if isinstance(layer, (nl.ELU, nl.GELU, nl.Softplus)):
        options = {"ELU": ("alpha",), "GELU": ("approximate",), "Softplus": ("beta", "threshold")}[type(layer).__name__]
        return getattr(torch.nn, type(layer).__name__)(*[getattr(layer, name) for name in options])
    if isinstance(layer, nl.Flatten):
        return torch.nn.Flatten(layer.start_dim, layer.end_dim)
    if isinstance(layer, nl.Upsample):
        return torch.nn.Upsample(scale_factor=layer.scale_factor, mode="nearest")
    # Layers without arguments whose torch.nn module has the same name.
    simple = (
        nl.ReLU, nl.Tanh, nl.Sigmoid, nl.CrossEntropyLoss, nl.NLLLoss, nl.MSELoss, nl.L1Loss, nl.BCELoss,
        nl.BCEWithLogitsLoss, nl.SELU, nl.SiLU, nl.Mish,
    )
    if type(layer) in simple:
        return getattr(torch.nn, type(layer).__name__)()
    raise TypeError(f"no torch twin for {layer!r}")


# Looking inside nnlab models ------------------------------------------------------------------


def sublayers(model):
    """Every layer of ``model``, itself included, depth first in order."""
    found = [model]
    for _, child in model.named_children():
        found += sublayers(child)
    return found


def randomize_batchnorms(model, seed=0):
    """Non-trivial affine parameters and running statistics in every BatchNorm2d."""
    from nnlab.layers import BatchNorm2d

    generator = torch.Generator().manual_seed(seed)
    for layer in sublayers(model):
        if isinstance(layer, BatchNorm2d):
            size = layer.num_features
            dtype = layer.weight.dtype
            layer.weight.copy_(torch.rand(size, generator=generator, dtype=dtype) + 0.5)
            layer.bias.copy_(torch.randn(size, generator=generator, dtype=dtype) * 0.1)
            layer.running_mean.copy_(torch.randn(size, generator=generator, dtype=dtype) * 0.1)
            layer.running_var.copy_(torch.rand(size, generator=generator, dtype=dtype) + 0.5)
    return model


def batchnorms(model):
    """The BatchNorm2d layers of ``model``, depth first in order."""
    from nnlab.layers import BatchNorm2d

    return [layer for layer in sublayers(model) if isinstance(layer, BatchNorm2d)]


def count_convs(model):
    from nnlab.layers import Conv2d

    return sum(isinstance(layer, Conv2d) for layer in sublayers(model))


def random_tensor(shape, dtype, seed=7):
    """Standard normal entries drawn in float64 from their own generator, then cast."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
