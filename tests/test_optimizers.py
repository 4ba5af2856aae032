"""nnlab.optimizers against (1) the contract's formulas written out independently here,
element by element in plain Python arithmetic, and (2) torch.optim on the same
parameters and gradient sequence; then training, save/resume, torch.nn modules and
bad input."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nnlab.layers import MLP, CrossEntropyLoss, Linear, ReLU, Sequential, Tanh
from nnlab.optimizers import Adam, AdamW, MomentumSGD, Optimizer, RMSProp, VanillaSGD, clip_grad_norm_, clip_grad_value_

F64_ATOL = 1e-12
OPTIMIZERS = [VanillaSGD, MomentumSGD, RMSProp, Adam]


def random_problem(shapes, steps, seed):
    """float64 parameters and a sequence of gradients for each, from a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(shape, generator=gen, dtype=torch.float64) for shape in shapes]
    grads = [[torch.randn(shape, generator=gen, dtype=torch.float64) for shape in shapes] for _ in range(steps)]
    return params, grads


def run_nnlab(cls, params, grad_sequence, **hyper):
    """Runs an nnlab optimizer on (param, grad) pairs, copying each step's gradients in."""
    params = [p.clone() for p in params]
    grads = [torch.zeros_like(p) for p in params]
    opt = cls(list(zip(params, grads)), **hyper)
    for step_grads in grad_sequence:
        for grad, value in zip(grads, step_grads):
            grad.copy_(value)
        opt.step()
    return params, opt


def run_torch(cls, params, grad_sequence, **hyper):
    """Runs a torch.optim optimizer on leaf tensors, setting .grad each step."""
    params = [p.clone().requires_grad_() for p in params]
    opt = cls(params, **hyper)
    for step_grads in grad_sequence:
        for param, value in zip(params, step_grads):
            param.grad = value.clone()
        opt.step()
    return [p.detach() for p in params], opt


def max_diff(actual, expected):
    return max((a - e).abs().max().item() for a, e in zip(actual, expected))


# 1. The contract's formulas, element by element --------------------------------------


def reference(rule, params, grad_sequence, hyper):
    """The update rules of API.md, as plain float arithmetic on flat Python lists."""
    ps = [p.flatten().tolist() for p in params]
    state = [[0.0] * len(p) for p in ps]
    state2 = [[0.0] * len(p) for p in ps]
    lr, reg = hyper["learn_rate"], hyper["reg"]
    for t, step_grads in enumerate(grad_sequence, start=1):
        for p, s, s2, grad in zip(ps, state, state2, step_grads):
            for i, gi in enumerate(grad.flatten().tolist()):
                g = gi + reg * p[i]
                if rule == "sgd":
                    p[i] = p[i] - lr * g
                elif rule == "momentum":
                    mu = hyper["momentum"]
                    s[i] = mu * s[i] - lr * g
                    p[i] = p[i] + (mu * s[i] - lr * g if hyper["nesterov"] else s[i])
                elif rule == "rmsprop":
                    decay = hyper["decay"]
                    s[i] = decay * s[i] + (1 - decay) * g * g
                    p[i] = p[i] - lr * g / math.sqrt(s[i] + hyper["eps"])
                elif rule == "adam":
                    b1, b2 = hyper["betas"]
                    s[i] = b1 * s[i] + (1 - b1) * g
                    s2[i] = b2 * s2[i] + (1 - b2) * g * g
                    m_hat = s[i] / (1 - b1**t)
                    v_hat = s2[i] / (1 - b2**t)
                    p[i] = p[i] - lr * m_hat / (math.sqrt(v_hat) + hyper["eps"])
    return [torch.tensor(p, dtype=torch.float64).reshape(q.shape) for p, q in zip(ps, params)]


shapes_strategy = st.lists(
    st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple), min_size=1, max_size=3
)
rates = st.floats(1e-4, 0.5)
regs = st.sampled_from([0.0, 1e-3, 0.1])
fractions = st.floats(0.0, 0.999)


@given(shapes=shapes_strategy, lr=rates, reg=regs, seed=st.integers(0, 2**16))
def test_vanilla_sgd_formula(shapes, lr, reg, seed):
    params, grads = random_problem(shapes, 25, seed)
    hyper = dict(learn_rate=lr, reg=reg)
    actual, _ = run_nnlab(VanillaSGD, params, grads, **hyper)
    assert max_diff(actual, reference("sgd", params, grads, hyper)) <= F64_ATOL


@given(shapes=shapes_strategy, lr=rates, reg=regs, mu=fractions, nesterov=st.booleans(), seed=st.integers(0, 2**16))
def test_momentum_sgd_formula(shapes, lr, reg, mu, nesterov, seed):
    params, grads = random_problem(shapes, 25, seed)
    hyper = dict(learn_rate=lr, reg=reg, momentum=mu, nesterov=nesterov)
    actual, _ = run_nnlab(MomentumSGD, params, grads, **hyper)
    assert max_diff(actual, reference("momentum", params, grads, hyper)) <= F64_ATOL


@given(shapes=shapes_strategy, lr=rates, reg=regs, decay=fractions, eps=st.sampled_from([1e-8, 1e-3, 1.0]),
       seed=st.integers(0, 2**16))
def test_rmsprop_formula(shapes, lr, reg, decay, eps, seed):
    params, grads = random_problem(shapes, 25, seed)
    hyper = dict(learn_rate=lr, reg=reg, decay=decay, eps=eps)
    actual, _ = run_nnlab(RMSProp, params, grads, **hyper)
    assert max_diff(actual, reference("rmsprop", params, grads, hyper)) <= F64_ATOL


# beta2 near 0 makes the denominator |g| itself: two correct evaluation orders then
# drift apart by rounding amplified over 25 steps (1e-8 on parameters of size 70, seen
# at beta2 = 0), so the formula check stays where Adam is used; the torch.optim
# comparison below covers every beta exactly.
second_moment_decays = st.floats(0.5, 0.9999)


@given(shapes=shapes_strategy, lr=rates, reg=regs, b1=fractions, b2=second_moment_decays,
       eps=st.sampled_from([1e-8, 1e-3]), seed=st.integers(0, 2**16))
def test_adam_formula(shapes, lr, reg, b1, b2, eps, seed):
    params, grads = random_problem(shapes, 25, seed)
    hyper = dict(learn_rate=lr, reg=reg, betas=(b1, b2), eps=eps)
    actual, _ = run_nnlab(Adam, params, grads, **hyper)
    assert max_diff(actual, reference("adam", params, grads, hyper)) <= F64_ATOL


def test_first_steps_by_hand():
    """One parameter, two steps, numbers worked out on paper."""
    p = torch.tensor([1.0], dtype=torch.float64)
    g = torch.tensor([2.0], dtype=torch.float64)
    opt = MomentumSGD([(p, g)], learn_rate=0.1, reg=0.5, momentum=0.5)
    opt.step()  # g_eff = 2.5, v = -0.25, p = 0.75
    assert p.item() == pytest.approx(0.75, abs=1e-15)
    opt.step()  # g_eff = 2.375, v = -0.125 - 0.2375 = -0.3625, p = 0.3875
    assert p.item() == pytest.approx(0.3875, abs=1e-15)
    assert opt.state[0]["velocity"].item() == pytest.approx(-0.3625, abs=1e-15)


# 2. Trajectories against torch.optim ----------------------------------------------------

TORCH_SHAPES = [(7, 5), (5,), (3, 2, 4)]


def test_vanilla_sgd_matches_torch():
    params, grads = random_problem(TORCH_SHAPES, 50, seed=1)
    ours, _ = run_nnlab(VanillaSGD, params, grads, learn_rate=0.05, reg=0.01)
    theirs, _ = run_torch(torch.optim.SGD, params, grads, lr=0.05, weight_decay=0.01)
    assert max_diff(ours, theirs) <= F64_ATOL


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_sgd_matches_torch(nesterov):
    params, grads = random_problem(TORCH_SHAPES, 50, seed=2)
    lr = 0.03
    ours, opt = run_nnlab(MomentumSGD, params, grads, learn_rate=lr, reg=0.01, momentum=0.9, nesterov=nesterov)
    theirs, topt = run_torch(
        torch.optim.SGD, params, grads, lr=lr, momentum=0.9, nesterov=nesterov, weight_decay=0.01
    )
    assert max_diff(ours, theirs) <= F64_ATOL
    # The buffers differ by the factor -lr (torch: b = mu b + g; here v = mu v - lr g).
    for state, param in zip(opt.state, topt.param_groups[0]["params"]):
        buffer = topt.state[param]["momentum_buffer"]
        assert (state["velocity"] - (-lr) * buffer).abs().max().item() <= F64_ATOL


def test_rmsprop_matches_torch_where_eps_placement_vanishes():
    """torch divides by sqrt(r) + eps, nnlab by sqrt(r + eps). With eps = 1e-300 both
    additions vanish in float64 rounding (r is ~1e-2 here), so the two rules are the
    same and the trajectories must agree to rounding."""
    params, grads = random_problem(TORCH_SHAPES, 50, seed=3)
    ours, opt = run_nnlab(RMSProp, params, grads, learn_rate=0.01, reg=0.01, decay=0.9, eps=1e-300)
    theirs, topt = run_torch(torch.optim.RMSprop, params, grads, lr=0.01, alpha=0.9, eps=1e-300, weight_decay=0.01)
    assert max_diff(ours, theirs) <= F64_ATOL
    square_avgs = [topt.state[p]["square_avg"] for p in topt.param_groups[0]["params"]]
    assert max_diff([s["square_avg"] for s in opt.state], square_avgs) <= F64_ATOL


def test_rmsprop_differs_from_torch_by_eps_placement():
    """With the default eps the rules really differ: nnlab damps small-r steps more."""
    params, grads = random_problem([(4, 4)], 5, seed=4)
    ours, _ = run_nnlab(RMSProp, params, grads, learn_rate=0.01, reg=0.0, decay=0.99, eps=1e-2)
    theirs, _ = run_torch(torch.optim.RMSprop, params, grads, lr=0.01, alpha=0.99, eps=1e-2)
    assert max_diff(ours, theirs) > 1e-4


@pytest.mark.parametrize("reg", [0.0, 0.01])
@pytest.mark.parametrize("foreach", [False, True])
def test_adam_matches_torch(reg, foreach):
    params, grads = random_problem(TORCH_SHAPES, 50, seed=5)
    ours, opt = run_nnlab(Adam, params, grads, learn_rate=0.01, reg=reg, betas=(0.8, 0.99), eps=1e-6)
    theirs, topt = run_torch(
        torch.optim.Adam, params, grads, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=reg, foreach=foreach
    )
    assert max_diff(ours, theirs) <= F64_ATOL
    if not foreach:  # the same single-tensor operations: equal to the last bit
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    for state, param in zip(opt.state, topt.param_groups[0]["params"]):
        assert (state["exp_avg"] - topt.state[param]["exp_avg"]).abs().max().item() <= F64_ATOL
        assert (state["exp_avg_sq"] - topt.state[param]["exp_avg_sq"]).abs().max().item() <= F64_ATOL
        assert state["step"] == int(topt.state[param]["step"])


# 3. Training an nnlab MLP -------------------------------------------------------------

TRAIN_SETTINGS = {
    VanillaSGD: dict(learn_rate=0.5, reg=1e-4),
    MomentumSGD: dict(learn_rate=0.05, reg=1e-4, momentum=0.9),
    RMSProp: dict(learn_rate=0.01, reg=1e-4),
    Adam: dict(learn_rate=0.02, reg=1e-4),
}


def blobs(seed=0):
    """64 points in 2-D, 3 classes, labels from a fixed random linear-ish rule."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 2, generator=gen)
    y = (torch.atan2(x[:, 1], x[:, 0]) + math.pi).mul(3 / (2 * math.pi)).long().clamp(max=2)
    return x, y


def make_model(seed=0):
    torch.manual_seed(seed)
    return MLP(2, 3, hidden_features=(16,))


def train(model, opt, x, y, steps):
    loss_fn = CrossEntropyLoss()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_mlp_loss_goes_down(cls):
    x, y = blobs()
    model = make_model()
    losses = train(model, cls(model.params(), **TRAIN_SETTINGS[cls]), x, y, 100)
    assert losses[-1] < 0.5 * losses[0], f"{cls.__name__}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_zero_learn_rate_moves_nothing(cls):
    x, y = blobs()
    model = make_model()
    before = [p.clone() for p, _ in model.params()]
    opt = cls(model.params(), **{**TRAIN_SETTINGS[cls], "learn_rate": 0.0, "reg": 0.1})
    train(model, opt, x, y, 10)
    for old, (new, grad) in zip(before, model.params()):
        assert grad.abs().sum() > 0  # there was something to move by
        assert torch.equal(old.view(torch.int32), new.view(torch.int32))  # bit for bit


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_built_before_model_to_float64_steps_as_if_built_after(cls):
    """The order course notebooks use: optimizer, then model.to(...). The state (moments,
    velocities) must follow the moved parameters, not stay float32 beside them."""
    x, y = blobs()
    before = make_model()
    opt_before = cls(before.params(), **TRAIN_SETTINGS[cls])
    before.to(dtype=torch.float64)
    after = make_model().to(dtype=torch.float64)
    opt_after = cls(after.params(), **TRAIN_SETTINGS[cls])
    train(before, opt_before, x.double(), y, 5)
    train(after, opt_after, x.double(), y, 5)
    for (got, _), (want, _) in zip(before.params(), after.params(), strict=True):
        assert got.dtype == torch.float64
        assert torch.equal(got, want)
    for entry in opt_before.state:
        assert all(value.dtype == torch.float64 for value in entry.values() if isinstance(value, torch.Tensor))


# 4. Save and resume -----------------------------------------------------------------


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_resume_equals_uninterrupted(cls, tmp_path):
    x, y = blobs()
    hyper = TRAIN_SETTINGS[cls]
    model = make_model()
    opt = cls(model.params(), **hyper)
    train(model, opt, x, y, 20)
    expected = [p.clone() for p, _ in model.params()]

    model = make_model()
    opt = cls(model.params(), **hyper)
    train(model, opt, x, y, 7)
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
    train(model, opt, x, y, 5)  # training on must not change what was saved

    saved = torch.load(path)
    fresh_model = make_model(seed=123)
    fresh_opt = cls(fresh_model.params(), learn_rate=0.123)  # hyperparameters come from the file
    fresh_model.load_state_dict(saved["model"])
    fresh_opt.load_state_dict(saved["optimizer"])
    assert fresh_opt.hyperparameters() == opt.hyperparameters()
    train(fresh_model, fresh_opt, x, y, 13)
    for want, (got, _) in zip(expected, fresh_model.params()):
        assert torch.equal(got, want)


def test_state_dict_is_a_copy():
    p, g = torch.ones(3), torch.ones(3)
    opt = Adam([(p, g)])
    opt.step()
    state = opt.state_dict()
    snapshot = state["state"][0]["exp_avg"].clone()
    opt.step()
    assert torch.equal(state["state"][0]["exp_avg"], snapshot)
    assert state["state"][0]["step"] == 1


def bad_states():
    good = MomentumSGD([(torch.zeros(2, 3), torch.zeros(2, 3)), (torch.zeros(4), torch.zeros(4))]).state_dict()
    wrong_shape = {**good, "state": [good["state"][0], {"velocity": torch.zeros(5)}]}
    wrong_count = {**good, "state": good["state"][:1]}
    wrong_keys = {**good, "state": [good["state"][0], {"exp_avg": torch.zeros(4)}]}
    wrong_type = Adam([(torch.zeros(2, 3), torch.zeros(2, 3)), (torch.zeros(4), torch.zeros(4))]).state_dict()
    bad_hyper = {**good, "hyperparameters": {**good["hyperparameters"], "momentum": 1.5}}
    missing_hyper = {**good, "hyperparameters": {"learn_rate": 0.1}}
    return [
        (wrong_shape, "shape"),
        (wrong_count, "2 parameters"),
        (wrong_keys, "velocity"),
        (wrong_type, "Adam"),
        (bad_hyper, "momentum"),
        (missing_hyper, "hyperparameters"),
        ([1, 2], "dict"),
    ]


@pytest.mark.parametrize("index", range(7))
def test_load_state_dict_rejects_and_changes_nothing(index):
    state, words = bad_states()[index]
    params = [(torch.zeros(2, 3), torch.ones(2, 3)), (torch.zeros(4), torch.ones(4))]
    opt = MomentumSGD(params, learn_rate=0.5, momentum=0.5)
    opt.step()
    before = opt.state_dict()
    with pytest.raises(ValueError, match=words):
        opt.load_state_dict(state)
    after = opt.state_dict()
    assert after["hyperparameters"] == before["hyperparameters"]
    for a, b in zip(after["state"], before["state"]):
        assert torch.equal(a["velocity"], b["velocity"])


# 5. torch.nn modules: plain tensors whose .grad is used ----------------------------------

TORCH_TWINS = [
    (VanillaSGD, dict(learn_rate=0.1, reg=0.01), torch.optim.SGD, dict(lr=0.1, weight_decay=0.01)),
    (MomentumSGD, dict(learn_rate=0.05, reg=0.01, nesterov=True), torch.optim.SGD,
     dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (RMSProp, dict(learn_rate=0.01, reg=0.01, eps=1e-300), torch.optim.RMSprop,
     dict(lr=0.01, alpha=0.99, eps=1e-300, weight_decay=0.01)),
    (Adam, dict(learn_rate=0.01, reg=0.01), torch.optim.Adam, dict(lr=0.01, weight_decay=0.01)),
]


@pytest.mark.parametrize("ours_cls, ours_hyper, theirs_cls, theirs_hyper", TORCH_TWINS)
def test_trains_torch_module_like_torch_optim(ours_cls, ours_hyper, theirs_cls, theirs_hyper):
    x, y = blobs()
    x = x.double()
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    unused = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))  # its .grad stays None: skipped
    twin = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    twin.load_state_dict(module.state_dict())
    ours = ours_cls([*module.parameters(), unused], **ours_hyper)
    theirs = theirs_cls(twin.parameters(), **theirs_hyper)
    for step in range(30):
        for net, opt in ((module, ours), (twin, theirs)):
            if step % 2:
                opt.zero_grad()  # ours: zeros in place; torch: sets .grad to None
            else:
                net.zero_grad(set_to_none=True)  # .grad replaced by a new tensor at backward
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    for a, b in zip(module.parameters(), twin.parameters()):
        assert a.grad_fn is None and (a - b).abs().max().item() <= F64_ATOL
    assert torch.equal(unused, torch.ones(3, dtype=torch.float64))
    assert unused.grad is None
    assert all(not torch.is_tensor(v) or not v.abs().sum() for v in ours.state[-1].values())


def test_plain_tensor_grads_are_read_at_step_time():
    p = torch.zeros(3, requires_grad=True)
    opt = VanillaSGD([p], learn_rate=1.0, reg=0.0)
    assert opt.params[0][1] is None
    opt.step()  # no gradient yet: nothing happens
    assert torch.equal(p.detach(), torch.zeros(3))
    (p * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert opt.params[0][1] is p.grad
    opt.step()
    assert torch.equal(p.detach(), torch.tensor([-1.0, -2.0, -3.0]))
    opt.zero_grad()
    assert torch.equal(p.grad, torch.zeros(3))


# 6. Layer params: live gradients, shared layers, zero_grad --------------------------------


def test_uses_live_layer_gradients_and_zero_grad():
    torch.manual_seed(0)
    layer = Linear(3, 2)
    opt = VanillaSGD(layer.params(), learn_rate=0.1, reg=0.0)
    assert opt.params[0][1] is layer.dw
    before = layer.weight.clone()
    layer(torch.ones(4, 3))
    layer.backward(torch.ones(4, 2))
    opt.step()
    assert torch.allclose(layer.weight, before - 0.1 * 4.0)
    opt.zero_grad()
    assert not layer.dw.any() and not layer.db.any()


def test_shared_layer_is_updated_once():
    torch.manual_seed(0)
    shared = Linear(3, 3)
    model = Sequential(shared, ReLU(), shared)
    assert len(model.params()) == 2  # listed once, as torch.nn.Module.parameters()
    opt = VanillaSGD(model.params() + shared.params(), learn_rate=0.1, reg=0.0)
    assert len(opt.params) == 2
    before = shared.weight.clone()
    shared.dw.fill_(1.0)
    opt.step()
    assert torch.allclose(shared.weight, before - 0.1)


# 7. Hyperparameters and bad input ---------------------------------------------------------


def pairs():
    return [(torch.zeros(2, 3), torch.zeros(2, 3))]


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: VanillaSGD(pairs(), learn_rate=-0.1), "learn_rate"),
        (lambda: VanillaSGD(pairs(), learn_rate=float("nan")), "learn_rate"),
        (lambda: VanillaSGD(pairs(), learn_rate="0.1"), "learn_rate"),
        (lambda: VanillaSGD(pairs(), reg=-1e-3), "reg"),
        (lambda: MomentumSGD(pairs(), reg=float("inf")), "reg"),
        (lambda: MomentumSGD(pairs(), momentum=1.0), "momentum"),
        (lambda: MomentumSGD(pairs(), momentum=-0.1), "momentum"),
        (lambda: MomentumSGD(pairs(), nesterov="yes"), "nesterov"),
        (lambda: RMSProp(pairs(), decay=1.0), "decay"),
        (lambda: RMSProp(pairs(), decay=-0.5), "decay"),
        (lambda: RMSProp(pairs(), eps=0.0), "eps"),
        (lambda: RMSProp(pairs(), eps=-1e-8), "eps"),
        (lambda: Adam(pairs(), betas=(1.0, 0.999)), r"betas\[0\]"),
        (lambda: Adam(pairs(), betas=(0.9, -0.1)), r"betas\[1\]"),
        (lambda: Adam(pairs(), betas=0.9), "betas"),
        (lambda: Adam(pairs(), eps=0.0), "eps"),
        (lambda: Adam(pairs(), reg=-1.0), "reg"),
        (lambda: Adam([]), "params is empty"),
        (lambda: Adam(iter([])), "params is empty"),
        (lambda: Adam([(torch.zeros(2, 3), torch.zeros(3, 2))]), r"params\[0\].*gradient shape \(3, 2\)"),
        (lambda: Adam([(torch.zeros(2), torch.zeros(2, dtype=torch.float64))]), r"params\[0\].*float64"),
        (lambda: Adam([torch.zeros(2), "w"]), r"params\[1\]"),
        (lambda: Adam([(torch.zeros(2),)]), r"params\[0\]"),
        (lambda: Adam([(torch.zeros(2), torch.zeros(2), torch.zeros(2))]), r"params\[0\]"),
        (lambda: Adam([torch.zeros(2, dtype=torch.long)]), r"params\[0\].*floating"),
        (lambda: Adam(torch.zeros(2)), "params"),
        (lambda: Adam(Linear(2, 2)), "params"),
        (lambda: Adam(5), "params"),
    ],
)
def test_bad_input_names_the_argument(make, name):
    with pytest.raises(ValueError, match=name):
        make()


@given(cls=st.sampled_from(OPTIMIZERS), lr=st.floats(0.0, 10.0), reg=st.floats(0.0, 1.0))
def test_valid_hyperparameters_are_accepted_and_shown(cls, lr, reg):
    opt = cls(pairs(), learn_rate=lr, reg=reg)
    assert opt.learn_rate == lr and opt.reg == reg
    assert repr(opt).startswith(f"{cls.__name__}(learn_rate={lr!r}, reg={reg!r}")


def test_learn_rate_is_writable_for_schedules():
    p, g = torch.zeros(2), torch.ones(2)
    opt = VanillaSGD([(p, g)], learn_rate=1.0, reg=0.0)
    opt.learn_rate = 0.5
    opt.step()
    assert torch.equal(p, torch.full((2,), -0.5))
    assert opt.state_dict()["hyperparameters"]["learn_rate"] == 0.5
    with pytest.raises(ValueError, match="learn_rate"):
        opt.learn_rate = -1.0
    assert opt.learn_rate == 0.5


def test_repr():
    assert repr(Adam(pairs())) == "Adam(learn_rate=0.001, reg=0.0, betas=(0.9, 0.999), eps=1e-08)"
    assert repr(MomentumSGD(pairs())) == "MomentumSGD(learn_rate=0.001, reg=0.001, momentum=0.9, nesterov=False)"


def test_optimizer_is_abstract():
    with pytest.raises(TypeError):
        Optimizer(pairs())


# 8. AdamW, torch's lr=, gradient clipping ----------------------------------------------------


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2, 0.3])
def test_adamw_matches_torch(weight_decay):
    params, grads = random_problem(TORCH_SHAPES, 50, seed=6)
    hyper = dict(betas=(0.8, 0.99), eps=1e-6, weight_decay=weight_decay)
    ours, opt = run_nnlab(AdamW, params, grads, learn_rate=0.01, **hyper)
    theirs, topt = run_torch(torch.optim.AdamW, params, grads, lr=0.01, foreach=False, **hyper)
    assert max_diff(ours, theirs) <= F64_ATOL
    for state, param in zip(opt.state, topt.param_groups[0]["params"]):
        assert (state["exp_avg_sq"] - topt.state[param]["exp_avg_sq"]).abs().max().item() <= F64_ATOL
        assert state["step"] == int(topt.state[param]["step"])


def test_adamw_defaults_are_torchs():
    opt = AdamW(pairs())
    twin = torch.optim.AdamW([torch.zeros(1)])
    defaults = twin.defaults
    assert (opt.learn_rate, opt.betas, opt.eps, opt.weight_decay) == (
        defaults["lr"], defaults["betas"], defaults["eps"], defaults["weight_decay"]
    )


def test_adamw_decays_the_parameter_not_the_gradient():
    """With a zero gradient only the decay acts: p * (1 - lr * wd) per step, exactly."""
    p, g = torch.full((2,), 3.0, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    opt = AdamW([(p, g)], learn_rate=0.1, weight_decay=0.5)
    opt.step()
    opt.step()
    assert torch.equal(p, torch.full((2,), 3.0 * 0.95 * 0.95, dtype=torch.float64))
    assert not opt.state[0]["exp_avg"].any()


def test_adamw_resume_equals_uninterrupted(tmp_path):
    params, grads = random_problem(TORCH_SHAPES, 12, seed=7)
    expected, _ = run_nnlab(AdamW, params, grads, learn_rate=0.01)
    halfway, opt = run_nnlab(AdamW, params, grads[:5], learn_rate=0.01)
    state = opt.state_dict()
    resumed_grads = [torch.zeros_like(p) for p in halfway]
    resumed = AdamW(list(zip(halfway, resumed_grads)), learn_rate=0.5)
    resumed.load_state_dict(state)
    for step_grads in grads[5:]:
        for grad, value in zip(resumed_grads, step_grads):
            grad.copy_(value)
        resumed.step()
    assert all(torch.equal(a, b) for a, b in zip(halfway, expected))


@pytest.mark.parametrize("cls", [*OPTIMIZERS, AdamW])
def test_every_optimizer_takes_torchs_lr(cls):
    assert cls(pairs(), lr=0.25).learn_rate == 0.25
    assert cls(pairs(), 0.125).learn_rate == 0.125
    with pytest.raises(ValueError, match=f"{cls.__name__}: give learn_rate or lr"):
        cls(pairs(), learn_rate=0.5, lr=0.25)
    with pytest.raises(ValueError, match="learn_rate"):
        cls(pairs(), lr=-1.0)


def grads_pair(seed, scale=1.0, dtype=torch.float64):
    """The same random gradients on nnlab (param, grad) pairs and on torch leaves."""
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(shape, generator=gen, dtype=dtype) * scale for shape in TORCH_SHAPES]
    ours = [(torch.zeros_like(g), g.clone()) for g in grads]
    theirs = [torch.zeros_like(g, requires_grad=True) for g in grads]
    for leaf, g in zip(theirs, grads):
        leaf.grad = g.clone()
    return ours, theirs


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf"), 3])
@pytest.mark.parametrize("max_norm", [0.5, 1e3, 0.0, math.inf])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    ours, theirs = grads_pair(seed=8)
    total = clip_grad_norm_(ours, max_norm, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type, foreach=False)
    assert total.dtype == expected.dtype and abs(total.item() - expected.item()) <= F64_ATOL
    assert max_diff([g for _, g in ours], [p.grad for p in theirs]) <= F64_ATOL


def test_clip_grad_norm_by_hand():
    """Gradients (3, 4) and (0,): 2-norm 5, 1-norm 7, inf-norm 4; clipped to norm 1."""
    grads = [torch.tensor([3.0, 4.0], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64)]
    for norm_type, norm in ((2.0, 5.0), (1.0, 7.0), (float("inf"), 4.0)):
        copies = [g.clone() for g in grads]
        total = clip_grad_norm_([(torch.zeros_like(g), g) for g in copies], 1.0, norm_type)
        assert total.item() == norm
        assert torch.allclose(copies[0], grads[0] / (norm + 1e-6), rtol=0, atol=1e-15)
    small = torch.tensor([0.3], dtype=torch.float64)
    assert clip_grad_norm_([(torch.zeros(1, dtype=torch.float64), small)], 1.0).item() == pytest.approx(0.3)
    assert small.item() == 0.3  # under the limit: unchanged


def test_clip_grad_norm_on_layers_tensors_and_nothing():
    torch.manual_seed(0)
    model = Sequential(Linear(3, 4), ReLU(), Linear(4, 2))
    twin = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    for (_, grad), leaf in zip(model.params(), twin.parameters()):
        grad.copy_(torch.randn(grad.shape))
        leaf.grad = grad.clone()
    total = clip_grad_norm_(model, 0.1)
    assert abs(total.item() - torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.1).item()) <= 1e-6
    for (_, grad), leaf in zip(model.params(), twin.parameters()):
        assert torch.allclose(grad, leaf.grad, rtol=1e-6, atol=1e-7)
    lone = torch.zeros(3, requires_grad=True)
    assert clip_grad_norm_(lone, 1.0).item() == 0.0  # no .grad: nothing to clip
    assert torch.equal(clip_grad_norm_([], 1.0), torch.nn.utils.clip_grad_norm_([], 1.0))
    assert torch.equal(clip_grad_norm_(iter([]), 1.0), torch.tensor(0.0))


def test_shared_parameter_is_clipped_once():
    torch.manual_seed(0)
    shared = Linear(2, 2)
    model = Sequential(shared, Tanh(), shared)
    shared.dw.fill_(1.0)
    shared.db.fill_(1.0)
    assert clip_grad_norm_(model, 1.0).item() == pytest.approx(math.sqrt(6.0))
    assert shared.db[0].item() == pytest.approx(1 / (math.sqrt(6.0) + 1e-6))


def test_clip_grad_norm_with_nonfinite_gradients():
    ours, theirs = grads_pair(seed=9)
    ours[1][1][0] = math.inf
    theirs[1].grad[0] = math.inf
    total = clip_grad_norm_(ours, 1.0)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert math.isinf(total.item()) and math.isinf(expected.item())
    for (_, grad), leaf in zip(ours, theirs):
        assert torch.equal(grad.isnan(), leaf.grad.isnan()) and torch.equal(grad.nan_to_num(), leaf.grad.nan_to_num())
    with pytest.raises(RuntimeError, match="clip_grad_norm_: the total 2.0-norm of the gradients is inf"):
        clip_grad_norm_(grads_pair(seed=9, scale=math.inf)[0], 1.0, error_if_nonfinite=True)


@pytest.mark.parametrize("clip_value", [0.5, 0.0, 10.0])
def test_clip_grad_value_matches_torch(clip_value):
    ours, theirs = grads_pair(seed=10)
    clip_grad_value_(ours, clip_value)
    torch.nn.utils.clip_grad_value_(theirs, clip_value)
    assert max_diff([g for _, g in ours], [p.grad for p in theirs]) == 0.0
    assert max(g.abs().max().item() for _, g in ours) <= clip_value


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: clip_grad_norm_(pairs(), -1.0), "clip_grad_norm_: max_norm must be"),
        (lambda: clip_grad_norm_(pairs(), math.nan), "clip_grad_norm_: max_norm must be"),
        (lambda: clip_grad_norm_(pairs(), 1.0, norm_type=0), "clip_grad_norm_: norm_type must be a number > 0"),
        (lambda: clip_grad_norm_(pairs(), 1.0, norm_type="fro"), "norm_type"),
        (lambda: clip_grad_norm_(5, 1.0), "clip_grad_norm_: params must be"),
        (lambda: clip_grad_value_(pairs(), -0.1), "clip_grad_value_: clip_value must be"),
        (lambda: clip_grad_value_(["w"], 0.1), r"clip_grad_value_: params\[0\]"),
    ],
)
def test_clipping_bad_input_names_the_function(call, message):
    with pytest.raises(ValueError, match=message):
        call()


OVERFLOWING = [
    (lambda p: VanillaSGD(p, learn_rate=1e39), "learn_rate 1e+39"),
    (lambda p: VanillaSGD(p, learn_rate=0.1, reg=1e39), "reg 1e+39"),
    (lambda p: MomentumSGD(p, learn_rate=1e39), "learn_rate 1e+39"),
    (lambda p: RMSProp(p, learn_rate=1e39), "learn_rate 1e+39"),
    (lambda p: RMSProp(p, eps=1e39), "eps 1e+39"),
    (lambda p: Adam(p, learn_rate=1e39), "learn_rate 1e+39"),
    # 1e38 fits float32, but the first step's bias correction makes it 1e38 / (1 - 0.9).
    (lambda p: Adam(p, learn_rate=1e38), "learn_rate / (1 - beta1**t) 1e+39"),
    (lambda p: AdamW(p, learn_rate=1e38), "learn_rate / (1 - beta1**t) 1e+39"),
    (lambda p: AdamW(p, learn_rate=3e37, weight_decay=100.0), "1 - learn_rate * weight_decay -3e+39"),
]


@pytest.mark.parametrize("make, named", OVERFLOWING, ids=[named for _, named in OVERFLOWING])
def test_a_step_whose_numbers_overflow_the_parameters_dtype_is_refused_and_changes_nothing(make, named):
    """torch's in-place kernels take a Python number that does not fit the tensor's dtype
    with a bare 'value cannot be converted to type float without overflow'."""
    wide = torch.ones(3, dtype=torch.float64)
    narrow = torch.ones(2)
    optimizer = make([(wide, torch.full_like(wide, 0.5)), (narrow, torch.full_like(narrow, 0.5))])
    state = optimizer.state_dict()
    with pytest.raises(OverflowError) as error:
        optimizer.step()
    message = str(error.value)
    assert message.startswith(f"{type(optimizer).__name__}: params[1]: the step's {named} overflows torch.float32")
    assert "lower" in message
    assert torch.equal(wide, torch.ones(3, dtype=torch.float64)) and torch.equal(narrow, torch.ones(2))
    after = optimizer.state_dict()
    assert after["state"][0].keys() == state["state"][0].keys()
    for before_entry, after_entry in zip(state["state"], after["state"]):
        for key, value in before_entry.items():
            assert torch.equal(torch.as_tensor(after_entry[key]), torch.as_tensor(value))


def test_adamw_is_in_the_registry_with_reg_as_its_weight_decay():
    from nnlab.optimizers import OPTIMIZERS as REGISTRY
    from nnlab.optimizers import make_optimizer

    assert REGISTRY["adamw"] is AdamW
    torch.manual_seed(0)
    weight = torch.randn(4, 3, dtype=torch.float64)
    grad = torch.zeros_like(weight)
    reference = weight.clone().requires_grad_(True)
    optimizer = make_optimizer("adamw", [(weight, grad)], learn_rate=0.1, reg=0.05)
    twin = torch.optim.AdamW([reference], lr=0.1, weight_decay=0.05)
    for _ in range(5):
        step_grad = torch.randn(4, 3, dtype=torch.float64)
        grad.copy_(step_grad)
        reference.grad = step_grad.clone()
        optimizer.step()
        twin.step()
        torch.testing.assert_close(weight, reference.detach(), rtol=0, atol=1e-12)
    assert optimizer.weight_decay == 0.05
