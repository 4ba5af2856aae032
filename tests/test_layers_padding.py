"""The padding layers (nnlab.layers.padding) against their torch.nn namesakes, built from
the same arguments: the output and the input gradient for the same input and upstream
gradient, in float32 and float64, on paddings (negative ones crop), shapes (batched,
unbatched, batches of 0 and 1) and values (NaN and infinities at drawn positions, in the
input and in the upstream gradient, which the gathering modes sum) drawn by hypothesis.

Where torch refuses an input, nnlab refuses it too, with a ValueError naming the layer.
Where torch 2.13 accepts a padding that makes no sense (a circular padding that wraps
around more than what is left after cropping; a reflection or replication padding of 2 or
3 dimensions that leaves nothing, or a negative size), nnlab refuses it (documented).
"""

import inspect

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import check_against_torch, check_finite_differences
from special_values import tensors
from test_layers_parity import DTYPES, upstreams

import nnlab.layers as nl

KINDS = ["ConstantPad", "ZeroPad", "ReflectionPad", "ReplicationPad", "CircularPad"]
NAMES = [f"{kind}{dims}d" for kind in KINDS for dims in (1, 2, 3)]


def namesakes(name, args, dtype):
    return getattr(nl, name)(*args).to(dtype=dtype), getattr(torch.nn, name)(*args).to(dtype)


def sides(shape, padding):
    """(size, before, after) of each padded dimension, the last one first."""
    return [(shape[-1 - k], padding[2 * k], padding[2 * k + 1]) for k in range(len(padding) // 2)]


def nnlab_refuses_on_purpose(name, shape, padding):
    """The paddings torch 2.13 accepts and nnlab refuses (see the module docstring)."""
    if name.startswith("CircularPad"):
        kept = [size - max(-before, 0) - max(-after, 0) for size, before, after in sides(shape, padding)]
        return any(k < 0 or max(b, a) > k for k, (_, b, a) in zip(kept, sides(shape, padding)))
    if name.startswith(("ReflectionPad", "ReplicationPad")) and not name.endswith("1d"):
        return any(size + before + after < 1 for size, before, after in sides(shape, padding))
    return False


@st.composite
def cases(draw):
    """(name, constructor args, padding as a tuple, input shape)."""
    name = draw(st.sampled_from(NAMES))
    dims = int(name[-2])
    if draw(st.booleans()):
        padding = draw(st.integers(-1, 3))
        as_tuple = (padding,) * (2 * dims)
    else:
        padding = tuple(draw(st.lists(st.integers(-3, 3), min_size=2 * dims, max_size=2 * dims)))
        as_tuple = padding
    args = (padding, draw(st.sampled_from([0.0, -1.5, 2.0]))) if name.startswith("ConstantPad") else (padding,)
    spatial = draw(st.lists(st.integers(1, 4), min_size=dims, max_size=dims))
    if name.startswith(("ConstantPad", "ZeroPad")):
        leading = draw(st.lists(st.sampled_from([2, 0, 1]), max_size=2))
    else:
        leading = [draw(st.integers(1, 2))] + draw(st.lists(st.sampled_from([2, 0, 1]), max_size=1))[::-1]
    return name, args, as_tuple, tuple(leading + spatial)


def refuses(module, x):
    try:
        module(x)
    except (RuntimeError, ValueError, NotImplementedError, IndexError):
        return True
    return False


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=120)
@given(case=cases(), dout=upstreams, data=st.data())
def test_padding_matches_torch(dtype, case, dout, data):
    name, args, padding, shape = case
    layer, module = namesakes(name, args, dtype)
    x = data.draw(tensors(shape, dtype))
    if refuses(module, x) or nnlab_refuses_on_purpose(name, shape, padding):
        with pytest.raises(ValueError, match=name):
            layer(x)
        return
    check_against_torch(layer, module, x, dout=dout)


@pytest.mark.parametrize(
    "name, args, shape",
    [
        ("ReflectionPad2d", ((2, 1, 0, 2),), (2, 1, 3, 4)),
        ("ReplicationPad3d", ((1, 0, 2, -1, 0, 1),), (1, 1, 2, 3, 2)),
        ("CircularPad1d", ((-1, 2),), (2, 2, 4)),
        ("ConstantPad2d", ((1, -2, 2, 0), 0.5), (3, 2, 4)),
    ],
)
def test_padding_finite_differences(name, args, shape):
    layer = getattr(nl, name)(*args).to(dtype=torch.float64)
    check_finite_differences(layer, torch.randn(shape, dtype=torch.float64))


def test_circular_padding_crops_first_then_wraps_what_is_left_as_torch():
    x = torch.arange(1.0, 5.0).reshape(1, 1, 4)
    assert nl.CircularPad1d((-1, 2))(x).tolist() == [[[2.0, 3.0, 4.0, 2.0, 3.0]]]
    assert torch.equal(nl.CircularPad1d((-1, 2))(x), torch.nn.CircularPad1d((-1, 2))(x))


@pytest.mark.parametrize(
    "name, args, shape",
    [
        ("CircularPad1d", ((-3, 1),), (1, 1, 3)),  # torch wraps around an empty remainder
        ("ReflectionPad2d", ((-3, -1, 1, 0),), (0, 2, 3, 3)),  # torch gives a size of -1
        ("ReplicationPad2d", ((-2, -2, 0, 0),), (1, 1, 2, 4)),  # torch gives an empty width
    ],
)
def test_paddings_torch_accepts_without_meaning_are_refused(name, args, shape):
    with pytest.raises(ValueError, match=f"{name}.*does not fit"):
        getattr(nl, name)(*args)(torch.randn(shape))


@pytest.mark.parametrize("name", NAMES)
def test_constructor_state_dict_and_repr_as_torch(name):
    ours = inspect.signature(getattr(nl, name)).parameters
    theirs = inspect.signature(getattr(torch.nn, name)).parameters
    assert list(ours) == list(theirs)
    dims = int(name[-2])
    args = (1, 0.5) if name.startswith("ConstantPad") else (1,)
    layer = getattr(nl, name)(*args)
    assert layer.padding == (1,) * (2 * dims)
    assert layer.state_dict() == {} == getattr(torch.nn, name)(*args).state_dict()
    value = ", value=0.5" if name.startswith("ConstantPad") else ""
    assert repr(layer) == f"{name}(padding={(1,) * (2 * dims)}{value})"


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: nl.ZeroPad2d((1, 2)), "ZeroPad2d"),
        (lambda: nl.ReflectionPad1d(1.5), "ReflectionPad1d"),
        (lambda: nl.CircularPad3d(True), "CircularPad3d"),
        (lambda: nl.ConstantPad1d(1, "0"), "ConstantPad1d"),
    ],
)
def test_bad_paddings_raise_naming_the_layer(make, name):
    with pytest.raises(ValueError, match=name):
        make()
