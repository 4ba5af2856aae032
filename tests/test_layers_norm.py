"""BatchNorm1d, BatchNorm2d and Dropout2d against torch.nn, autograd and finite differences."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nnlab.layers import BatchNorm1d, BatchNorm2d, Dropout2d
from reference import (
    GRAD_RTOL,
    assert_close,
    check_against_autograd,
    check_against_torch,
    check_finite_differences,
    copy_params,
)

DTYPES = [torch.float32, torch.float64]
# Forward tolerance from the brief: outputs within 1e-5 in float32.
BN_FORWARD_ATOL = {torch.float32: 1e-5, torch.float64: 1e-12}

BN_CASES = [
    (BatchNorm1d, torch.nn.BatchNorm1d, (8, 5)),
    (BatchNorm1d, torch.nn.BatchNorm1d, (4, 3, 7)),
    (BatchNorm2d, torch.nn.BatchNorm2d, (3, 4, 5, 6)),
    (BatchNorm2d, torch.nn.BatchNorm2d, (1, 3, 2, 2)),
]


def make_pair(layer_cls, module_cls, channels, dtype, seed=0, **options):
    """An nnlab batch-norm layer with random affine parameters and running stats, and
    its torch twin holding the same values."""
    generator = torch.Generator().manual_seed(seed)
    layer = layer_cls(channels, **options).to(dtype=dtype)
    layer.weight.copy_(torch.rand(channels, generator=generator, dtype=dtype) + 0.5)
    layer.bias.copy_(torch.randn(channels, generator=generator, dtype=dtype))
    layer.running_mean.copy_(torch.randn(channels, generator=generator, dtype=dtype))
    layer.running_var.copy_(torch.rand(channels, generator=generator, dtype=dtype) + 0.5)
    module = module_cls(channels, **options).to(dtype)
    copy_params(layer, module)
    return layer, module


def random_input(shape, dtype, seed=7):
    """Random input; the default seed differs from the upstream-gradient seeds the
    reference helpers use (1 and seed + 1), since an upstream gradient proportional to
    x lies in the null space of the training-mode batch-norm VJP (dx ~ 0)."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator, dtype=dtype) * 2 + 0.5).to(dtype)


# BatchNorm ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layer_cls, module_cls, shape", BN_CASES)
def test_batchnorm_matches_torch(layer_cls, module_cls, shape, training, dtype):
    layer, module = make_pair(layer_cls, module_cls, shape[1], dtype)
    layer.train(training)
    module.train(training)
    x = random_input(shape, dtype)
    check_against_torch(layer, module, x, forward_atol=BN_FORWARD_ATOL[dtype], grad_rtol=GRAD_RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layer_cls, module_cls, shape", BN_CASES[:3])
def test_batchnorm_matches_autograd_of_own_forward(layer_cls, module_cls, shape, training, dtype):
    layer, _ = make_pair(layer_cls, module_cls, shape[1], dtype)
    layer.train(training)
    check_against_autograd(layer, random_input(shape, dtype))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layer_cls, module_cls, shape", BN_CASES)
def test_batchnorm_finite_differences(layer_cls, module_cls, shape, training):
    layer, _ = make_pair(layer_cls, module_cls, shape[1], torch.float64)
    layer.train(training)
    check_finite_differences(layer, random_input(shape, torch.float64), rtol=1e-7, max_elements=30)


@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
@pytest.mark.parametrize("layer_cls, module_cls, shape", BN_CASES[1:3])
def test_running_stats_follow_torch_over_several_steps(layer_cls, module_cls, shape, momentum):
    dtype = torch.float64
    layer, module = make_pair(layer_cls, module_cls, shape[1], dtype, momentum=momentum)
    for step in range(5):
        x = random_input(shape, dtype, seed=10 + step) * (step + 1)
        out = layer(x)
        out_ref = module(x)
        assert_close(f"step {step} output", out, out_ref.detach(), atol=1e-12)
    assert_close("running_mean", layer.running_mean, module.running_mean, atol=1e-12)
    assert_close("running_var", layer.running_var, module.running_var, atol=1e-12)
    assert layer.num_batches_tracked.item() == module.num_batches_tracked.item() == 5
    # Eval mode then uses exactly these statistics.
    layer.eval()
    module.eval()
    x = random_input(shape, dtype, seed=99)
    assert_close("eval output", layer(x), module(x).detach(), atol=1e-12)
    assert layer.num_batches_tracked.item() == 5


def test_eval_mode_leaves_running_stats_alone():
    layer = BatchNorm2d(3).eval()
    before = layer.state_dict()
    layer(torch.randn(4, 3, 2, 2))
    for key, value in layer.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_running_stats_update_is_not_recorded_by_autograd():
    layer = BatchNorm2d(3)
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    out = layer(x)
    assert out.requires_grad
    assert not layer.running_mean.requires_grad and layer.running_mean.grad_fn is None
    assert not layer.running_var.requires_grad and layer.running_var.grad_fn is None
    assert x.grad is None


def test_state_dict_keys_match_torch_and_params_exclude_buffers():
    layer = BatchNorm2d(4)
    module = torch.nn.BatchNorm2d(4)
    assert list(layer.state_dict()) == list(module.state_dict())
    assert layer.state_dict()["num_batches_tracked"].dtype == torch.int64
    assert len(layer.params()) == 2
    params = [p for p, _ in layer.params()]
    assert params[0] is layer.weight and params[1] is layer.bias
    assert all(p is not layer.running_mean and p is not layer.running_var for p in params)


def test_state_dict_round_trip_restores_running_stats():
    layer = BatchNorm1d(3)
    for seed in range(3):
        layer(random_input((6, 3), torch.float32, seed=seed))
    saved = layer.state_dict()
    other = BatchNorm1d(3)
    other.load_state_dict(saved)
    for key, value in other.state_dict().items():
        assert torch.equal(value, saved[key]), key
    # A torch module loads nnlab's state_dict as is.
    module = torch.nn.BatchNorm1d(3)
    module.load_state_dict(saved)
    assert torch.equal(module.running_var, layer.running_var)


def test_to_float64_moves_buffers_and_keeps_counter_integer():
    layer = BatchNorm2d(2).to(dtype=torch.float64)
    assert layer.running_mean.dtype == torch.float64
    assert layer.running_var.dtype == torch.float64
    assert layer.num_batches_tracked.dtype == torch.int64
    layer(torch.randn(2, 2, 3, 3, dtype=torch.float64))
    assert layer.num_batches_tracked.item() == 1


def test_gradients_accumulate_over_backward_calls():
    layer, _ = make_pair(BatchNorm2d, torch.nn.BatchNorm2d, 3, torch.float64)
    x = random_input((2, 3, 4, 4), torch.float64)
    dout = random_input((2, 3, 4, 4), torch.float64, seed=5)
    layer(x)
    layer.backward(dout)
    once = [g.clone() for _, g in layer.params()]
    layer(x)
    layer.backward(dout)
    for first, (_, twice) in zip(once, layer.params()):
        assert torch.allclose(twice, 2 * first)
    layer.zero_grad()
    assert all(torch.count_nonzero(g) == 0 for _, g in layer.params())


def test_forward_does_not_modify_input():
    layer = BatchNorm2d(3)
    x = torch.randn(2, 3, 4, 4)
    copy = x.clone()
    layer(x)
    layer.backward(torch.ones_like(x))
    assert torch.equal(x, copy)


@pytest.mark.parametrize("layer_cls, shape", [(BatchNorm1d, (1, 4)), (BatchNorm2d, (1, 4, 1, 1))])
def test_single_value_per_channel_in_training_is_an_error_like_torch(layer_cls, shape):
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        layer_cls(4)(torch.randn(shape))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        getattr(torch.nn, layer_cls.__name__)(4)(torch.randn(shape))
    # In eval mode (running statistics) a batch of one is fine.
    out = layer_cls(4).eval()(torch.randn(shape))
    assert out.shape == shape


def test_two_values_per_channel_give_a_tiny_input_gradient_like_torch():
    # With M = 2 values per channel x_hat = +-sqrt(var / (var + eps)), so dx is only of
    # order eps / var: compared with an absolute tolerance.
    layer, module = make_pair(BatchNorm1d, torch.nn.BatchNorm1d, 3, torch.float64)
    x = random_input((2, 3), torch.float64)
    dout = random_input((2, 3), torch.float64, seed=3)
    layer(x)
    dx = layer.backward(dout)
    x_ref = x.clone().requires_grad_(True)
    module(x_ref).backward(dout)
    assert_close("input gradient", dx, x_ref.grad, atol=1e-14)
    assert dx.abs().max() < 1e-4
    assert_close("weight gradient", layer.grad("weight"), module.weight.grad, rtol=1e-12)


def test_batch_of_one_with_spatial_extent_trains():
    layer, module = make_pair(BatchNorm2d, torch.nn.BatchNorm2d, 3, torch.float64)
    check_against_torch(layer, module, random_input((1, 3, 4, 4), torch.float64))


@pytest.mark.parametrize(
    "layer, shape",
    [
        (BatchNorm1d(4), (8, 3)),
        (BatchNorm1d(4), (8,)),
        (BatchNorm1d(4), (2, 4, 3, 3)),
        (BatchNorm2d(4), (2, 3, 5, 5)),
        (BatchNorm2d(4), (4, 5, 5)),
    ],
)
def test_wrong_shape_names_the_layer(layer, shape):
    with pytest.raises(ValueError) as error:
        layer(torch.randn(shape))
    message = str(error.value)
    assert message.startswith(f"{type(layer).__name__}(4")
    assert f"got {tuple(shape)}" in message


def test_wrong_dtype_is_an_error():
    with pytest.raises(ValueError, match="BatchNorm2d"):
        BatchNorm2d(2)(torch.randn(2, 2, 3, 3, dtype=torch.float64))


def test_backward_before_forward_names_the_layer():
    with pytest.raises(RuntimeError, match="BatchNorm1d"):
        BatchNorm1d(3).backward(torch.ones(2, 3))


@pytest.mark.parametrize("bad", [dict(num_features=0), dict(num_features=3, eps=0), dict(num_features=3, momentum=2)])
def test_bad_constructor_arguments(bad):
    with pytest.raises(ValueError, match="BatchNorm2d"):
        BatchNorm2d(**bad)


def test_repr():
    assert repr(BatchNorm2d(16)) == "BatchNorm2d(16, eps=1e-05, momentum=0.1)"
    assert repr(BatchNorm1d(3, eps=1e-3, momentum=0.2)) == "BatchNorm1d(3, eps=0.001, momentum=0.2)"


@given(
    batch=st.integers(1, 4),
    channels=st.integers(1, 4),
    height=st.integers(1, 4),
    width=st.integers(1, 4),
    training=st.booleans(),
    momentum=st.sampled_from([0.1, 0.3, None]),
)
def test_batchnorm2d_hypothesis(batch, channels, height, width, training, momentum):
    if training and batch * height * width <= 2:
        return  # one value per channel is an error, two give dx = 0: both tested above
    layer, module = make_pair(BatchNorm2d, torch.nn.BatchNorm2d, channels, torch.float64, momentum=momentum)
    layer.train(training)
    module.train(training)
    x = random_input((batch, channels, height, width), torch.float64)
    check_against_torch(layer, module, x)
    assert_close("running_mean", layer.running_mean, module.running_mean, atol=1e-12)
    assert_close("running_var", layer.running_var, module.running_var, atol=1e-12)


@given(batch=st.integers(3, 6), channels=st.integers(1, 4), length=st.sampled_from([None, 1, 3]))
def test_batchnorm1d_hypothesis(batch, channels, length):
    shape = (batch, channels) if length is None else (batch, channels, length)
    layer, module = make_pair(BatchNorm1d, torch.nn.BatchNorm1d, channels, torch.float32)
    check_against_torch(layer, module, random_input(shape, torch.float32), forward_atol=1e-5)


# Dropout2d ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 6, 3, 5), (6, 3, 5)])
@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_dropout2d_backward_matches_autograd(shape, p, dtype):
    x = random_input(shape, dtype)
    check_against_autograd(Dropout2d(p), x)


def test_dropout2d_finite_differences():
    check_finite_differences(Dropout2d(0.4), random_input((3, 4, 2, 2), torch.float64))


@pytest.mark.parametrize("shape", [(4, 6, 3, 5), (6, 3, 5)])
def test_dropout2d_zeroes_whole_channels_and_scales_the_rest(shape):
    torch.manual_seed(0)
    p = 0.3
    x = torch.rand(shape) + 1.0  # no zeros of its own
    out = Dropout2d(p)(x)
    per_channel = out.reshape(-1, shape[-2] * shape[-1])
    zeros = per_channel == 0
    # Every channel is all-zero or all-kept.
    assert torch.equal(zeros.all(dim=1), zeros.any(dim=1))
    kept = ~zeros.all(dim=1)
    scaled = x.reshape(-1, shape[-2] * shape[-1])[kept] / (1 - p)
    assert torch.allclose(per_channel[kept], scaled)


def test_dropout2d_drop_rate_and_mean_are_right_statistically():
    torch.manual_seed(1)
    p = 0.3
    x = torch.ones(500, 40, 2, 2)
    out = Dropout2d(p)(x)
    dropped = (out[:, :, 0, 0] == 0).double().mean().item()
    # 20000 Bernoulli(0.3) channels: standard deviation of the rate ~0.0032.
    assert abs(dropped - p) < 0.015
    assert abs(out.mean().item() - 1.0) < 0.03
    # torch's own Dropout2d drops at the same rate.
    dropped_ref = (torch.nn.Dropout2d(p)(x)[:, :, 0, 0] == 0).double().mean().item()
    assert abs(dropped - dropped_ref) < 0.02


def test_dropout2d_eval_is_identity_like_torch():
    x = random_input((2, 3, 4, 4), torch.float32)
    layer = Dropout2d(0.7).eval()
    out = layer(x)
    assert torch.equal(out, torch.nn.Dropout2d(0.7).eval()(x))
    assert torch.equal(out, x) and out is not x
    dout = torch.randn(2, 3, 4, 4)
    assert torch.equal(layer.backward(dout), dout)


def test_dropout2d_eval_matches_torch_twin():
    module = torch.nn.Dropout2d(0.5).eval()
    check_against_torch(Dropout2d(0.5).eval(), module, random_input((2, 3, 4, 4), torch.float64))


def test_dropout2d_p_one_zeroes_everything():
    out = Dropout2d(1.0)(torch.randn(2, 3, 4, 4))
    assert torch.count_nonzero(out) == 0


def test_dropout2d_same_seed_same_mask():
    x = torch.randn(4, 8, 2, 2)
    torch.manual_seed(3)
    first = Dropout2d(0.5)(x)
    torch.manual_seed(3)
    second = Dropout2d(0.5)(x)
    assert torch.equal(first, second)


def test_dropout2d_errors_and_repr():
    assert repr(Dropout2d()) == "Dropout2d(p=0.5)"
    with pytest.raises(ValueError, match="Dropout2d"):
        Dropout2d(1.5)
    with pytest.raises(ValueError, match=r"Dropout2d.*got \(4, 5\)"):
        Dropout2d()(torch.randn(4, 5))
    with pytest.raises(RuntimeError, match="Dropout2d"):
        Dropout2d().backward(torch.ones(1, 1, 1, 1))
    assert Dropout2d(0.2).params() == []


@given(
    shape=st.lists(st.integers(1, 4), min_size=3, max_size=4).map(tuple),
    p=st.sampled_from([0.0, 0.25, 0.5, 0.9]),
    seed=st.integers(0, 1000),
)
def test_dropout2d_hypothesis(shape, p, seed):
    x = random_input(shape, torch.float64, seed=seed)
    check_against_autograd(Dropout2d(p), x, seed=seed)
    torch.manual_seed(seed)
    out = Dropout2d(p)(x)
    ratio = torch.where(x != 0, out / x, torch.zeros_like(x))
    # One value per channel across its whole feature map.
    flat = ratio.reshape(-1, shape[-2] * shape[-1])
    assert torch.allclose(flat, flat[:, :1].expand_as(flat))
