"""One layer instance at several places, inside and outside every container and wrapper
(Sequential, Residual, Heads, the graph Model, as_module, DataParallel), called and
backpropagated in an interleaved order drawn by hypothesis, against torch autograd on
the equivalent module graph (one torch module per nnlab layer, weights copied, float64).

The one pattern the cache design cannot support must raise: a layer's own ``backward``
for its own call when a container or wrapper has called it since (torch would use the
layer's own call, whose cache nnlab no longer holds).
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import GRAD_RTOL, assert_close, gradient_floor

from nnlab.distributed import DataParallel
from nnlab.graph import Add, Input, Model
from nnlab.interop import as_module
from nnlab.layers import BatchNorm1d, Heads, Linear, Residual, Sequential, Tanh

F64 = torch.float64
FEATURES = 3
BATCH = 4
KINDS = ["bare", "sequential", "residual", "heads", "model", "as_module", "data_parallel", "nested"]


def make_pool(seed):
    """The shared layers, float64 with drawn parameters, and their torch twins with the
    same parameters: two Linears, a Tanh and a BatchNorm1d (training mode: its backward
    reads the batch statistics its forward cached)."""
    generator = torch.Generator().manual_seed(seed)
    pool = [Linear(FEATURES, FEATURES), Tanh(), BatchNorm1d(FEATURES), Linear(FEATURES, FEATURES)]
    twins = [torch.nn.Linear(FEATURES, FEATURES), torch.nn.Tanh(), torch.nn.BatchNorm1d(FEATURES)]
    twins.append(torch.nn.Linear(FEATURES, FEATURES))
    for layer, twin in zip(pool, twins):
        layer.to(dtype=F64)
        twin.to(F64)
        for (param, _), twin_param in zip(layer.params(), twin.parameters(), strict=True):
            param.copy_(torch.rand(param.shape, generator=generator, dtype=F64) * 2 - 1)
            with torch.no_grad():
                twin_param.copy_(param)
    return pool, twins


chains = st.lists(st.integers(0, 3), min_size=1, max_size=3)


@st.composite
def units(draw, kind=None):
    """A recipe of one unit: its kind (``kind``, or drawn), then what it holds."""
    kind = draw(st.sampled_from(KINDS)) if kind is None else kind
    if kind == "bare":
        return kind, draw(st.integers(0, 3))
    if kind in ("sequential", "as_module", "data_parallel"):
        return kind, draw(chains)
    if kind == "residual":
        return kind, draw(chains), draw(st.one_of(st.none(), st.integers(0, 3)))
    if kind == "heads":
        return kind, draw(chains), draw(chains)
    return kind, draw(chains), draw(st.integers(0, 3))


def without_repeated_bare_layers(recipes):
    """At most one bare call per layer: two bare calls of one layer before its backward
    are one layer's two latest forwards, and its backward is for the latest by contract."""
    seen = set()
    kept = []
    for recipe in recipes:
        if recipe[0] == "bare":
            if recipe[1] in seen:
                continue
            seen.add(recipe[1])
        kept.append(recipe)
    return kept


def build(recipe, pool, twins):
    """(the nnlab unit, the torch function computing the same, the pool indices it calls)."""
    kind = recipe[0]

    def chain(indices):
        return Sequential(*[pool[i] for i in indices])

    def twin_chain(indices):
        def run(x):
            for i in indices:
                x = twins[i](x)
            return x

        return run

    if kind == "bare":
        index = recipe[1]
        return pool[index], twins[index], [index]
    if kind == "sequential":
        return chain(recipe[1]), twin_chain(recipe[1]), recipe[1]
    if kind == "as_module":
        layer = pool[recipe[1][0]] if len(recipe[1]) == 1 else chain(recipe[1])
        return as_module(layer), twin_chain(recipe[1]), recipe[1]
    if kind == "data_parallel":
        layer = pool[recipe[1][0]] if len(recipe[1]) == 1 else chain(recipe[1])
        return DataParallel(layer), twin_chain(recipe[1]), recipe[1]
    if kind == "residual":
        _, main, shortcut = recipe
        main_ref = twin_chain(main)
        if shortcut is None:
            return Residual(chain(main)), lambda x: main_ref(x) + x, main
        return Residual(chain(main), pool[shortcut]), lambda x: main_ref(x) + twins[shortcut](x), main + [shortcut]
    if kind == "heads":
        _, first, second = recipe
        first_ref, second_ref = twin_chain(first), twin_chain(second)
        return Heads(chain(first), chain(second)), lambda x: (first_ref(x), second_ref(x)), first + second
    _, main, other = recipe
    main_ref = twin_chain(main)
    if kind == "model":
        x = Input((FEATURES,))
        h = x
        for i in main:
            h = pool[i](h)
        return Model(x, Add()(h, pool[other](x))), lambda x: main_ref(x) + twins[other](x), main + [other]
    # nested: a Residual inside a Sequential, then a shared layer after it
    return Sequential(Residual(chain(main)), pool[other]), lambda x: twins[other](main_ref(x) + x), main + [other]


@st.composite
def schedules(draw, count):
    """An interleaving of the units' forward calls (in order) and backward calls (each
    after its forward, in any order)."""
    events = []
    next_forward = 0
    waiting = []
    while next_forward < count or waiting:
        choices = ([("forward", next_forward)] if next_forward < count else []) + [("backward", u) for u in waiting]
        event = choices[draw(st.integers(0, len(choices) - 1))]
        events.append(event)
        if event[0] == "forward":
            waiting.append(next_forward)
            next_forward += 1
        else:
            waiting.remove(event[1])
    return events


def random_like(value, seed):
    if isinstance(value, tuple):
        return tuple(random_like(item, seed + index) for index, item in enumerate(value))
    return torch.randn(value.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def flat(value):
    return value if isinstance(value, tuple) else (value,)


# One test per kind, whose first unit is of that kind: hypothesis, drawing the kinds
# from one list, would otherwise try the first kinds far more often than the last.
@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=12)
@given(seed=st.integers(0, 99), data=st.data())
def test_shared_layers_in_every_container_and_wrapper_match_autograd(kind, seed, data):
    recipes = [data.draw(units(kind))] + data.draw(st.lists(units(), max_size=4))
    recipes = without_repeated_bare_layers(recipes)
    pool, twins = make_pool(seed)
    built = [build(recipe, pool, twins) for recipe in recipes]
    events = data.draw(schedules(len(built)))
    xs = [torch.randn(BATCH, FEATURES, generator=torch.Generator().manual_seed(seed + 100 + u), dtype=F64) for u in range(len(built))]

    inputs, outputs, douts, dxs = {}, {}, {}, {}
    latest = {}  # pool index -> the unit whose forward called it last
    for what, u in events:
        unit, _, used = built[u]
        if what == "forward":
            inputs[u] = xs[u].clone().requires_grad_(isinstance(unit, torch.nn.Module))
            outputs[u] = unit(inputs[u])
            douts[u] = random_like(outputs[u], seed + 200 + 10 * u)
            latest.update({index: u for index in used})
        elif isinstance(unit, torch.nn.Module):
            outputs[u].backward(douts[u])
            dxs[u] = inputs[u].grad
        elif recipes[u][0] == "bare" and latest[used[0]] != u:
            with pytest.raises(RuntimeError, match=r"latest forward ran inside a container"):
                unit.backward(douts[u])
        else:
            dxs[u] = unit.backward(douts[u])

    # torch: the same forward calls in the same order, one graph, every backward at once
    refs, ref_outputs = {}, {}
    for what, u in events:
        if what == "forward":
            refs[u] = xs[u].clone().requires_grad_(True)
            ref_outputs[u] = built[u][1](refs[u])
            for i, (got, expected) in enumerate(zip(flat(outputs[u]), flat(ref_outputs[u]), strict=True)):
                assert_close(f"unit {u} {recipes[u]} output[{i}]", got.detach(), expected.detach(), atol=1e-12)
    backwarded = sorted(dxs)
    total = sum((out * dout).sum() for u in backwarded for out, dout in zip(flat(ref_outputs[u]), flat(douts[u])))
    twin_params = [param for twin in twins for param in twin.parameters()]
    if not backwarded:
        return
    grads = torch.autograd.grad(total, [refs[u] for u in backwarded] + twin_params, allow_unused=True)
    floor = gradient_floor(grads)
    for u, expected in zip(backwarded, grads):
        assert_close(f"unit {u} {recipes[u]} input gradient", dxs[u], expected, rtol=GRAD_RTOL[F64], floor=floor)

    wrapped = wrapper_gradients([unit for unit, _, _ in built if isinstance(unit, torch.nn.Module)])
    own = [(param, grad) for layer in pool for param, grad in layer.params()]
    for index, ((param, grad), expected) in enumerate(zip(own, grads[len(backwarded):], strict=True)):
        expected = torch.zeros_like(param) if expected is None else expected
        got = grad + wrapped.get(id(param), 0)
        assert_close(f"parameter #{index} gradient", got, expected, rtol=GRAD_RTOL[F64], floor=floor)
    for layer, twin in zip(pool, twins):
        for got, expected in zip(layer.buffers(), twin.buffers()):
            assert_close(f"{layer!r} buffer", got.to(expected.dtype), expected, atol=1e-12)


def wrapper_gradients(modules):
    """{id(layer parameter): the gradient torch accumulated in its Parameter} over the
    as_module wrappers (which leave the layer's own gradients alone)."""
    grads = {}
    seen = set()
    for module in modules:
        if not isinstance(module, torch.nn.Module):
            continue
        tensors = dict(module.layer.named_tensors())
        for key, parameter in module.named_parameters():
            if id(parameter) in seen or parameter.grad is None:
                continue
            seen.add(id(parameter))
            grads[id(tensors[key])] = grads.get(id(tensors[key]), 0) + parameter.grad
    return grads
