"""The independent judges every layer test uses: a torch.nn twin run under autograd,
torch autograd on the layer's own forward, and central finite differences in float64.

None of them calls nnlab's own gradient code except the ``backward`` under test.
"""

import torch

# Tolerances from the project's standards.
FORWARD_ATOL = {torch.float32: 1e-6, torch.float64: 1e-12}
CONV_FORWARD_ATOL = {torch.float32: 1e-5, torch.float64: 1e-12}
GRAD_RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def rel_error(actual, expected):
    """||actual - expected|| / max(||expected||, 1e-12)."""
    diff = (actual.double() - expected.double()).norm().item()
    return diff / max(expected.double().norm().item(), 1e-12)


def assert_close(name, actual, expected, rtol=None, atol=None):
    """Shape and dtype first, then values, naming the tensor that fails."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    if atol is not None:
        worst = (actual - expected).abs().max().item() if actual.numel() else 0.0
        assert worst <= atol, f"{name}: max abs diff {worst:.3g} > {atol:.1g}"
    if rtol is not None:
        rel = rel_error(actual, expected)
        assert rel <= rtol, f"{name}: relative error {rel:.3g} > {rtol:.1g}"


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


def _outputs(value):
    return value if isinstance(value, tuple) else (value,)


def _random_like(outputs, seed):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(o.shape, generator=generator, dtype=o.dtype).to(o.device) for o in outputs)


def _pack(douts):
    return douts if len(douts) > 1 else douts[0]


def check_against_torch(layer, module, x, y=None, forward_atol=None, grad_rtol=None, seed=0):
    """Runs the nnlab layer and its torch twin (weights already copied, same mode) on the
    same input and the same random upstream gradient; compares the output, the input
    gradient and every parameter gradient. Returns the nnlab output."""
    dtype = x.dtype
    forward_atol = FORWARD_ATOL[dtype] if forward_atol is None else forward_atol
    grad_rtol = GRAD_RTOL[dtype] if grad_rtol is None else grad_rtol
    kw = {} if y is None else {"y": y}

    layer.zero_grad()
    torch.manual_seed(seed)
    out = _outputs(layer(x.clone(), **kw))
    douts = _random_like(out, seed + 1)
    dx = layer.backward(_pack(douts))

    x_ref = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    out_ref = _outputs(module(x_ref) if y is None else module(x_ref, y))
    wrt = [x_ref] + list(module.parameters())
    grads = torch.autograd.grad(out_ref, wrt, douts, allow_unused=True)

    assert len(out) == len(out_ref), f"{len(out)} outputs != {len(out_ref)}"
    for i, (o, o_ref) in enumerate(zip(out, out_ref)):
        assert_close(f"output[{i}]", o, o_ref.detach(), atol=forward_atol)
    assert_close("input gradient", dx, grads[0], rtol=grad_rtol)
    for i, ((_, grad), grad_ref) in enumerate(zip(layer.params(), grads[1:])):
        grad_ref = torch.zeros_like(grad) if grad_ref is None else grad_ref
        assert_close(f"param#{i + 1:02d} gradient", grad, grad_ref, rtol=grad_rtol)
    return _pack(out)


def check_against_autograd(layer, x, y=None, grad_rtol=None, seed=0):
    """Compares the layer's backward with autograd run through the layer's own forward
    (for layers with no torch twin, such as Dropout: the seed fixes the mask)."""
    grad_rtol = GRAD_RTOL[x.dtype] if grad_rtol is None else grad_rtol
    kw = {} if y is None else {"y": y}
    layer.zero_grad()
    torch.manual_seed(seed)
    out = _outputs(layer(x.clone(), **kw))
    douts = _random_like(out, seed + 1)
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
    assert_close("input gradient", dx, grads[0], rtol=grad_rtol)
    for i, (own, ref) in enumerate(zip(own_grads, grads[1:])):
        ref = torch.zeros_like(own) if ref is None else ref
        assert_close(f"param#{i + 1:02d} gradient", own, ref, rtol=grad_rtol)


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
