"""RNN, LSTM, GRU, their cells and Embedding against their torch.nn namesakes (weights
copied both ways through state_dict), autograd as the judge of every gradient (input,
initial states, every parameter), finite differences in float64, and the contract."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nnlab.layers as nl
from reference import GRAD_RTOL, assert_close, gradient_floor

FORWARD_ATOL = {torch.float32: 1e-6, torch.float64: 1e-12}
DTYPES = st.sampled_from([torch.float32, torch.float64])


def flat(value):
    """The tensors of a nested output or gradient, depth first (None kept)."""
    if isinstance(value, (tuple, list)):
        return [leaf for item in value for leaf in flat(item)]
    return [value]


def nest_like(template, leaves):
    """``leaves`` (an iterator) nested like ``template``."""
    if isinstance(template, (tuple, list)):
        return tuple(nest_like(item, leaves) for item in template)
    return next(leaves)


def random_like(value, generator):
    return nest_like(value, iter([torch.randn(t.shape, generator=generator, dtype=t.dtype) for t in flat(value)]))


def compare_with_torch(layer, module, x, hx, seed=0, drop=()):
    """Forward outputs, dx, d(hx) and every parameter gradient of the nnlab layer against
    the torch module (same weights), for one random upstream gradient per output (None at
    the output positions in ``drop``: zero)."""
    dtype = x.dtype
    args = (x,) if hx is None else (x, hx)
    layer.zero_grad()
    out = layer(*args)
    generator = torch.Generator().manual_seed(seed)
    douts = random_like(out, generator)
    leaves = flat(douts)
    for position in drop:
        leaves[position] = None
    douts = nest_like(out, iter(leaves))
    grads = layer.backward(douts)

    x_ref = x.clone().requires_grad_(True)
    hx_ref = None if hx is None else nest_like(hx, iter([t.clone().requires_grad_(True) for t in flat(hx)]))
    out_ref = module(x_ref) if hx is None else module(x_ref, hx_ref)
    inputs = [x_ref] + ([] if hx is None else flat(hx_ref))
    pairs = [(o, d) for o, d in zip(flat(out_ref), leaves) if d is not None]
    ref = torch.autograd.grad([o for o, _ in pairs], inputs + list(module.parameters()), [d for _, d in pairs], allow_unused=True)
    ref = [torch.zeros_like(t) if g is None else g for g, t in zip(ref, inputs + list(module.parameters()))]

    for index, (ours, theirs) in enumerate(zip(flat(out), flat(out_ref))):
        assert_close(f"output[{index}]", ours, theirs.detach(), atol=FORWARD_ATOL[dtype])
    got = flat(grads)
    assert len(got) == len(inputs), f"backward returned {len(got)} gradients for {len(inputs)} inputs"
    floor = gradient_floor(ref)
    for index, (ours, theirs) in enumerate(zip(got, ref)):
        assert_close(f"input gradient {index}", ours, theirs, rtol=GRAD_RTOL[dtype], floor=floor)
    for (name, _), (_, ours), theirs in zip(module.named_parameters(), layer.params(), ref[len(inputs):], strict=True):
        assert_close(f"{name} gradient", ours, theirs, rtol=GRAD_RTOL[dtype], floor=floor)


def twin_pair(name, dtype, **options):
    """(nnlab layer, torch module) of ``name`` with torch's weights copied into nnlab's."""
    module = getattr(torch.nn, name)(**options).to(dtype)
    layer = getattr(nl, name)(**options).to(dtype=dtype)
    layer.load_state_dict(module.state_dict())
    return layer, module


@settings(max_examples=30)
@given(
    name=st.sampled_from(["RNN", "LSTM", "GRU"]),
    num_layers=st.integers(1, 2),
    bidirectional=st.booleans(),
    batch_first=st.booleans(),
    bias=st.booleans(),
    relu=st.booleans(),
    length=st.sampled_from([1, 3]),
    batch=st.sampled_from([None, 1, 2]),
    with_state=st.booleans(),
    drop=st.sampled_from([(), (0,), (1,)]),
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
)
def test_recurrent_layers_match_torch(name, num_layers, bidirectional, batch_first, bias, relu, length, batch, with_state, drop, dtype, seed):
    options = dict(input_size=3, hidden_size=4, num_layers=num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional)
    if name == "RNN" and relu:
        options["nonlinearity"] = "relu"
    torch.manual_seed(seed)
    layer, module = twin_pair(name, dtype, **options)
    generator = torch.Generator().manual_seed(seed)
    if batch is None:
        shape = (length, 3)
    else:
        shape = (batch, length, 3) if batch_first else (length, batch, 3)
    x = torch.randn(shape, generator=generator, dtype=dtype)
    hx = None
    if with_state:
        state_shape = (num_layers * (2 if bidirectional else 1),) + (() if batch is None else (batch,)) + (4,)
        states = [torch.randn(state_shape, generator=generator, dtype=dtype) for _ in range(2 if name == "LSTM" else 1)]
        hx = tuple(states) if name == "LSTM" else states[0]
    compare_with_torch(layer, module, x, hx, seed, drop)


@given(name=st.sampled_from(["RNNCell", "LSTMCell", "GRUCell"]), bias=st.booleans(), batch=st.sampled_from([None, 1, 3]), with_state=st.booleans(), dtype=DTYPES, seed=st.integers(0, 2**16))
def test_cells_match_torch(name, bias, batch, with_state, dtype, seed):
    torch.manual_seed(seed)
    layer, module = twin_pair(name, dtype, input_size=3, hidden_size=4, bias=bias)
    generator = torch.Generator().manual_seed(seed)
    lead = () if batch is None else (batch,)
    x = torch.randn(lead + (3,), generator=generator, dtype=dtype)
    hx = None
    if with_state:
        states = [torch.randn(lead + (4,), generator=generator, dtype=dtype) for _ in range(2 if name == "LSTMCell" else 1)]
        hx = tuple(states) if name == "LSTMCell" else states[0]
    compare_with_torch(layer, module, x, hx, seed)


def test_weights_copy_both_ways_with_torchs_keys():
    layer = nl.LSTM(3, 5, num_layers=2, bidirectional=True)
    module = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True)
    assert list(layer.state_dict()) == list(module.state_dict())
    module.load_state_dict(layer.state_dict())
    x = torch.randn(4, 2, 3)
    out, (h, c) = layer(x)
    out_ref, (h_ref, c_ref) = module(x)
    assert_close("output", out, out_ref.detach(), atol=1e-6)
    assert [tuple(p.shape) for p, _ in layer.params()] == [tuple(p.shape) for p in module.parameters()]


class FlatOutputs(nl.Layer):
    """Test scaffolding: ``layer`` with its nested output flattened into a tuple (what the
    finite-difference helper takes), backward nesting the gradients back."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def named_children(self):
        return [("layer", self.layer)]

    def forward(self, x, **kw):
        self._out = self.layer(x)
        return tuple(flat(self._out))

    def backward(self, dout):
        return self.layer.backward(nest_like(self._out, iter(dout)))


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_finite_differences_through_time(name):
    from reference import check_finite_differences

    torch.manual_seed(0)
    layer = getattr(nl, name)(2, 3, num_layers=2, bidirectional=True).to(dtype=torch.float64)
    x = torch.randn(4, 2, 2, dtype=torch.float64)
    check_finite_differences(FlatOutputs(layer), x, rtol=1e-7, max_elements=20)


def test_gradients_accumulate_over_backward_calls():
    torch.manual_seed(0)
    layer = nl.GRU(3, 4).to(dtype=torch.float64)
    x = torch.randn(3, 2, 3, dtype=torch.float64)
    out, h = layer(x)
    douts = (torch.randn_like(out), torch.randn_like(h))
    layer.backward(douts)
    once = [grad.clone() for _, grad in layer.params()]
    layer(x)
    layer.backward(douts)
    for first, (_, twice) in zip(once, layer.params()):
        assert_close("accumulated", twice, 2 * first, rtol=1e-12)


def test_dropout_between_layers_in_training_only():
    torch.manual_seed(0)
    layer = nl.LSTM(3, 50, num_layers=2, dropout=0.5)
    x = torch.randn(2, 4, 3)
    layer.eval()
    first, _ = layer(x)
    second, _ = layer(x)
    assert torch.equal(first, second)
    layer.train()
    layer(x)
    mask = layer._cache[1][0]
    kept = (mask != 0).double().mean().item()
    assert 0.35 < kept < 0.65 and torch.allclose(mask[mask != 0], torch.tensor(2.0))


def test_unsupported_options_are_refused_by_name():
    with pytest.raises(NotImplementedError, match="LSTM: proj_size"):
        nl.LSTM(3, 4, proj_size=2)
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(3, 2, 3), [3, 2])
    with pytest.raises(NotImplementedError, match="GRU: packed sequences"):
        nl.GRU(3, 4)(packed)
    with pytest.raises(ValueError, match=r"RNN: nonlinearity must be 'tanh' or 'relu'"):
        nl.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match=r"LSTM\(3, 4\): expected an initial state of shape \(1, 2, 4\), got \(1, 3, 4\)"):
        nl.LSTM(3, 4)(torch.randn(5, 2, 3), (torch.zeros(1, 3, 4), torch.zeros(1, 3, 4)))
    with pytest.raises(ValueError, match=r"GRU\(3, 4\): expected input of shape \(L, N, 3\)"):
        nl.GRU(3, 4)(torch.randn(5, 2, 4))


# Embedding --------------------------------------------------------------------------------------


@given(
    padding_idx=st.sampled_from([None, 0, 3, -1]),
    scale=st.booleans(),
    shape=st.sampled_from([(0,), (5,), (2, 3), (2, 2, 2)]),
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
)
def test_embedding_matches_torch(padding_idx, scale, shape, dtype, seed):
    torch.manual_seed(seed)
    module = torch.nn.Embedding(6, 4, padding_idx=padding_idx, scale_grad_by_freq=scale).to(dtype)
    layer = nl.Embedding(6, 4, padding_idx=padding_idx, scale_grad_by_freq=scale).to(dtype=dtype)
    layer.load_state_dict(module.state_dict())
    ids = torch.randint(0, 6, shape, generator=torch.Generator().manual_seed(seed))
    out = layer(ids)
    out_ref = module(ids)
    assert_close("output", out, out_ref.detach(), atol=0.0)
    dout = torch.randn(out.shape, dtype=dtype)
    if dout.numel():
        dout.view(-1)[0] = float("nan")  # at a padding position it must not reach the table
    assert layer.backward(dout) is None
    (ref,) = torch.autograd.grad(out_ref, [module.weight], dout)
    assert_close("weight gradient", layer.grad("weight"), ref, rtol=GRAD_RTOL[dtype])


def test_embedding_max_norm_renormalises_the_rows_it_reads_as_torch():
    module = torch.nn.Embedding(5, 3, max_norm=1.0)
    layer = nl.Embedding(5, 3, max_norm=1.0)
    with torch.no_grad():
        module.weight.mul_(3)
    layer.load_state_dict(module.state_dict())
    ids = torch.tensor([[0, 2], [2, 4]])
    assert_close("output", layer(ids), module(ids).detach(), atol=1e-6)
    assert_close("table", layer.weight, module.weight.detach(), atol=1e-6)


def test_embedding_from_pretrained_frozen_and_trainable():
    table = torch.randn(4, 3)
    frozen = nl.Embedding.from_pretrained(table)
    assert frozen.params() == [] and list(frozen.state_dict()) == ["weight"]
    assert torch.equal(frozen(torch.tensor([1, 3])), table[[1, 3]])
    trainable = nl.Embedding.from_pretrained(table, freeze=False, padding_idx=1)
    trainable(torch.tensor([1, 2, 2]))
    trainable.backward(torch.ones(3, 3))
    assert torch.equal(trainable.grad("weight"), torch.tensor([[0.0] * 3, [0.0] * 3, [2.0] * 3, [0.0] * 3]))


def test_embedding_refuses_sparse_and_bad_ids():
    with pytest.raises(NotImplementedError, match="Embedding: sparse=True"):
        nl.Embedding(3, 2, sparse=True)
    with pytest.raises(IndexError, match=r"Embedding\(3, 2\): ids must be in \[0, 3\), got values in \[0, 3\]"):
        nl.Embedding(3, 2)(torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"Embedding\(3, 2\): expected input of shape \(\*\) integer ids"):
        nl.Embedding(3, 2)(torch.tensor([0.0, 1.0]))


def test_an_embedding_feeds_an_lstm_in_a_sequential_and_trains():
    torch.manual_seed(0)
    embedding = nl.Embedding(5, 3)
    lstm = nl.LSTM(3, 4, batch_first=True)
    ids = torch.randint(0, 5, (2, 6))
    out, _ = lstm(embedding(ids))
    dx = lstm.backward((torch.ones_like(out), None))
    assert embedding.backward(dx) is None
    assert embedding.grad("weight").abs().sum() > 0
