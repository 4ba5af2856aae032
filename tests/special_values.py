"""Hypothesis strategies for layer inputs that reach the values where layers go wrong:
NaN, +inf, -inf, signed zeros and a layer's own kinks, written at drawn positions of a
tensor that is rarely empty (and often non-contiguous or channels-last), so that most examples hold some of them (the shapes and
values of test_layers_parity.values leave a third of the tensors empty and a NaN in few).
"""

import math

import torch
from hypothesis import strategies as st

SPECIALS = [math.nan, math.inf, -math.inf, 0.0, -0.0]


def huge_values(dtype):
    """Finite values of ``dtype`` where intermediates overflow: a square past the largest
    number (1e30 in float32, 1e155 in float64) and a double or a sum past it (0.9 times the
    largest number), each with both signs."""
    largest = torch.finfo(dtype).max * 0.9
    square_overflows = 1e30 if dtype == torch.float32 else 1e155
    return [square_overflows, -square_overflows, largest, -largest]


@st.composite
def shapes(draw, min_dims=0, max_dims=4, max_size=4, batch=True):
    """A shape of min_dims to max_dims sizes in 1..max_size; with ``batch``, the first size
    is drawn from 0, 1, 2, 3 instead (batches of 0 and 1 on purpose)."""
    sizes = draw(st.lists(st.integers(1, max_size), min_size=min_dims, max_size=max_dims))
    if batch and sizes:
        sizes[0] = draw(st.sampled_from([2, 0, 1, 3]))
    return tuple(sizes)


@st.composite
def tensors(draw, shape, dtype, points=(), huge=False):
    """A tensor of ``shape``: uniform in [-3, 3] or small integers (ties); then either one
    to five entries set to NaN (drawn twice as often), +-inf, +-0, one of ``points`` (the
    layer's kinks) or, with ``huge``, one of ``huge_values(dtype)``, or
    about a third of all entries (rows and windows of them). Positions, values and the
    choices between the kinds come from a drawn seed, not from hypothesis' choices, which
    it steers towards the first alternative: every kind is reached at a known rate."""
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))

    def chance(count):
        return int(torch.randint(0, count, (), generator=generator))

    if chance(2):
        x = torch.rand(shape, generator=generator, dtype=torch.float64) * 6 - 3
    else:
        x = torch.randint(-2, 3, shape, generator=generator).to(torch.float64)
    extra = huge_values(dtype) if huge else []
    chosen = torch.tensor([math.nan] + SPECIALS + list(points) + extra, dtype=torch.float64)
    flat = x.view(-1)
    if chance(3) == 0:
        replace = torch.rand(shape, generator=generator) < 0.35
        flat[replace.view(-1)] = chosen[torch.randint(0, len(chosen), (int(replace.sum()),), generator=generator)]
    elif flat.numel():
        count = 1 + chance(5)
        flat[torch.randint(0, flat.numel(), (count,), generator=generator)] = chosen[
            torch.randint(0, len(chosen), (count,), generator=generator)
        ]
    return draw(layouts)(x.to(dtype))


def strided(x):
    """A non-contiguous tensor with x's values (every other entry of a wider buffer)."""
    buffer = torch.zeros((*x.shape, 2), dtype=x.dtype)
    view = buffer[..., 0]
    view.copy_(x)
    return view


def contiguous(x):
    return x


def channels_last(x):
    """x in channels-last memory order where it has 4 dimensions (as is, otherwise)."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


layouts = st.sampled_from([strided, contiguous, channels_last])
