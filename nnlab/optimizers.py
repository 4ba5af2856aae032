"""Hand-written optimizers: plain SGD, SGD with (Nesterov) momentum, RMSProp, Adam and
AdamW; gradient clipping by norm or by value, as ``torch.nn.utils``; and
``OPTIMIZERS``, the course's optimizers by name (``make_optimizer``).

Every optimizer takes the ``(param, grad)`` pairs of ``Layer.params()``, the tensors of
``Layer.parameters()`` (each finds its layer's gradient), or plain tensors whose
``.grad`` is read at each ``step`` (so ``Adam(module.parameters())`` trains a
``torch.nn.Module`` too). Per-parameter state is allocated once at
construction and every update is done in place with tensor operations.

Common to all rules: ``g = grad + reg * param`` (L2 regularization, the same as
``weight_decay=reg`` in ``torch.optim``; skipped when ``reg == 0``, as torch does).
A parameter whose gradient is ``None`` at ``step`` time is skipped and its state
left unchanged, as in ``torch.optim``. The learning rate is the ``learn_rate``
attribute (schedulers in ``nnlab.schedulers`` read and set it); every constructor also
takes it as torch's ``lr=``.
"""

import abc
import collections.abc

import torch

from .layers.base import Layer, checked_real, describe, layer_grad

__all__ = [
    "OPTIMIZERS", "Adam", "AdamW", "MomentumSGD", "Optimizer", "RMSProp", "VanillaSGD", "clip_grad_norm_",
    "clip_grad_value_", "make_optimizer",
]

# Checks -------------------------------------------------------------------------


def _check_grad(owner, index, param, grad):
    """ValueError naming ``params[index]`` unless ``grad`` fits ``param``."""
    if grad.shape != param.shape:
        raise ValueError(
            f"{owner}: params[{index}]: gradient shape {tuple(grad.shape)} differs from "
            f"parameter shape {tuple(param.shape)}"
        )
    if grad.dtype != param.dtype or grad.device != param.device:
        raise ValueError(
            f"{owner}: params[{index}]: gradient is {grad.dtype} on {grad.device}, "
            f"parameter is {param.dtype} on {param.device}"
        )


def _check_scalars(owner, index, param, scalars):
    """OverflowError naming ``params[index]`` and the number, unless every one of
    ``scalars`` fits ``param``'s dtype (torch's kernels would refuse it with no name)."""
    largest = torch.finfo(param.dtype).max
    for name, value in scalars.items():
        if not abs(value) <= largest:
            raise OverflowError(
                f"{owner}: params[{index}]: the step's {name} {value:g} overflows {param.dtype} "
                f"(whose largest number is {largest:.3g}); use a lower value"
            )


def _follow(param, state):
    """Gives the state tensors (moments, velocities) the parameter's device and dtype, so
    an optimizer built before ``model.to(...)`` (the order course notebooks use) keeps
    training the moved parameters in their new precision, as torch.optim does."""
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and (value.dtype != param.dtype or value.device != param.device):
            state[key] = value.to(device=param.device, dtype=param.dtype)


def _collect(owner, params):
    """[(param, grad or None)] from pairs or tensors; ``None`` means "read param.grad".

    A parameter listed twice (a layer used at two places of a model) is kept once,
    so that one step updates it once with its accumulated gradient.
    """
    if isinstance(params, torch.Tensor):
        raise ValueError(f"{owner}: params must be an iterable of (param, grad) pairs or tensors, got one tensor")
    try:
        items = list(params)
    except TypeError:
        raise ValueError(
            f"{owner}: params must be an iterable of (param, grad) pairs or tensors, "
            f"got {describe(params)}; for a Layer pass layer.params()"
        ) from None
    if not items:
        raise ValueError(f"{owner}: params is empty; there is nothing to optimize")
    entries, seen = [], {}
    for index, item in enumerate(items):
        if isinstance(item, torch.Tensor):
            param, grad = item, layer_grad(item)
            if grad is not None:
                _check_grad(owner, index, param, grad)
        elif (
            isinstance(item, (tuple, list))
            and len(item) == 2
            and isinstance(item[0], torch.Tensor)
            and isinstance(item[1], torch.Tensor)
        ):
            param, grad = item
            _check_grad(owner, index, param, grad)
        else:
            raise ValueError(
                f"{owner}: params[{index}] must be a (param, grad) pair of tensors or a tensor, "
                f"got {describe(item)}"
            )
        if not param.is_floating_point():
            raise ValueError(f"{owner}: params[{index}] must be a floating-point tensor, got {param.dtype}")
        if id(param) in seen:
            if seen[id(param)] is not grad:
                raise ValueError(f"{owner}: params[{index}] repeats an earlier parameter with a different gradient")
            continue
        seen[id(param)] = grad
        entries.append((param, grad))
    return entries


def _one_rate(owner, learn_rate, lr, default):
    """The learning rate given as ``learn_rate`` or as torch's ``lr``; ValueError when
    both are given (``learn_rate`` other than its default, and ``lr``)."""
    if lr is None:
        return learn_rate
    if learn_rate != default:
        raise ValueError(f"{owner}: give learn_rate or lr (the same argument), not both")
    return lr


# The base class -------------------------------------------------------------------


class Optimizer(abc.ABC):
    """Updates parameters in place from their gradients.

    ``params``: the ``(param, grad)`` pairs of ``Layer.params()``, or tensors whose
    ``.grad`` is read at each ``step`` (a ``None`` grad skips that tensor).
    Subclasses set ``HYPERPARAMETERS`` (names of the constructor's numbers, which
    ``state_dict`` saves) and keep per-parameter state in ``self.state``, a list
    (one dict per parameter) of tensors and ints allocated in their constructor.
    """

    HYPERPARAMETERS = ("learn_rate",)

    def __init__(self, params):
        self._entries = _collect(type(self).__name__, params)
        self.state = [{} for _ in self._entries]

    # Hyperparameters ----------------------------------------------------------------

    @abc.abstractmethod
    def checked_hyperparameters(self, values):
        """``values`` (a dict keyed by HYPERPARAMETERS) validated and normalized;
        ValueError naming the first bad one."""

    def hyperparameters(self):
        return {name: getattr(self, name) for name in self.HYPERPARAMETERS}

    def __setattr__(self, name, value):
        # ``opt.reg = -5`` is checked like the constructor's arguments.
        if name in self.HYPERPARAMETERS:
            values = self.hyperparameters()
            values[name] = value
            self._set_hyperparameters(values)
        else:
            super().__setattr__(name, value)

    def _set_hyperparameters(self, values):
        for name, value in self.checked_hyperparameters(values).items():
            object.__setattr__(self, name, value)

    def __repr__(self):
        values = ", ".join(f"{name}={value!r}" for name, value in self.hyperparameters().items())
        return f"{type(self).__name__}({values})"

    # Parameters and gradients --------------------------------------------------------

    @property
    def params(self):
        """[(param, grad)]: the gradient now (``param.grad``, maybe None, for plain tensors)."""
        return [(param, param.grad if grad is None else grad) for param, grad in self._entries]

    def live(self):
        """(params, grads, states): three lists over the parameters that have a gradient
        now. Every gradient, and every number the step multiplies into a parameter
        (``step_scalars``), is checked before any update, so a bad one changes nothing.
        The numbers are worked out and checked once per distinct (dtype, ``scalars_key``)
        (all parameters share one in the usual model), still naming the first parameter
        that a bad one would reach."""
        owner = type(self).__name__
        params, grads, states, checked = [], [], [], set()
        for index, ((param, grad), state) in enumerate(zip(self._entries, self.state)):
            if grad is None:
                grad = param.grad
                if grad is None:
                    continue
                _check_grad(owner, index, param, grad)
            key = (param.dtype, self.scalars_key(state))
            if key not in checked:
                _check_scalars(owner, index, param, self.step_scalars(state))
                checked.add(key)
            _follow(param, state)
            params.append(param)
            grads.append(grad)
            states.append(state)
        return params, grads, states

    def scalars_key(self, state):
        """What ``step_scalars(state)`` depends on beyond the hyperparameters: nothing
        here; a rule whose numbers change with the state returns that part of it."""
        return None

    def step_scalars(self, state):
        """``{name: number}``: the numbers the next step hands torch's in-place kernels
        for a parameter with this ``state`` (each must fit the parameter's dtype): here
        every hyperparameter that is a number; a rule that derives others adds them."""
        values = self.hyperparameters().items()
        return {name: value for name, value in values if isinstance(value, (int, float)) and not isinstance(value, bool)}

    def regularized(self, params, grads):
        """``g = grad + reg * param`` for each pair (new tensors), or ``grads`` itself when
        reg == 0."""
        return torch._foreach_add(grads, params, alpha=self.reg) if self.reg != 0 else grads

    def zero_grad(self):
        """Sets every gradient to zero in place (a plain tensor's None grad stays None)."""
        grads = [grad for _, grad in self.params if grad is not None]
        if grads:
            with torch.no_grad():
                torch._foreach_zero_(grads)

    @abc.abstractmethod
    def step(self):
        """Updates every parameter that has a gradient, in place."""

    # Saving and loading -----------------------------------------------------------------

    def state_dict(self):
        """Hyperparameters and per-parameter state, as copies: later steps do not change
        it, and it survives ``torch.save`` / ``torch.load``."""
        return {
            "type": type(self).__name__,
            "hyperparameters": self.hyperparameters(),
            "state": [
                {key: value.clone() if isinstance(value, torch.Tensor) else value for key, value in entry.items()}
                for entry in self.state
            ],
        }

    def load_state_dict(self, state):
        """Restores what ``state_dict`` saved. Everything is checked first (optimizer
        type, hyperparameters, parameter count, state keys, shapes), so a bad state
        raises ValueError naming what differs and changes nothing."""
        owner = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state, dict) or set(state) != {"type", "hyperparameters", "state"}:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{owner}: expected a dict with keys ['hyperparameters', 'state', 'type'], got {got}")
        if state["type"] != type(self).__name__:
            raise ValueError(f"{owner}: the state is of a {state['type']}, not of a {type(self).__name__}")
        hyper = state["hyperparameters"]
        if not isinstance(hyper, dict) or set(hyper) != set(self.HYPERPARAMETERS):
            got = sorted(hyper) if isinstance(hyper, dict) else type(hyper).__name__
            raise ValueError(f"{owner}: expected hyperparameters {sorted(self.HYPERPARAMETERS)}, got {got}")
        hyper = self.checked_hyperparameters(hyper)
        entries = state["state"]
        if not isinstance(entries, (list, tuple)) or len(entries) != len(self.state):
            got = len(entries) if isinstance(entries, (list, tuple)) else type(entries).__name__
            raise ValueError(f"{owner}: expected state for {len(self.state)} parameters, got {got}")
        for index, (saved, current) in enumerate(zip(entries, self.state)):
            if not isinstance(saved, dict) or set(saved) != set(current):
                got = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
                raise ValueError(f"{owner}: parameter {index}: expected state keys {sorted(current)}, got {got}")
            for key, target in current.items():
                value = saved[key]
                if isinstance(target, torch.Tensor):
                    if not isinstance(value, torch.Tensor) or value.shape != target.shape:
                        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                        raise ValueError(
                            f"{owner}: parameter {index}: '{key}' expects shape {tuple(target.shape)}, got {got}"
                        )
                elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"{owner}: parameter {index}: '{key}' must be an int >= 0, got {value!r}")
        for name, value in hyper.items():
            setattr(self, name, value)
        with torch.no_grad():
            for saved, current in zip(entries, self.state):
                for key, target in current.items():
                    if isinstance(target, torch.Tensor):
                        target.copy_(saved[key])
                    else:
                        current[key] = saved[key]


# The rules ---------------------------------------------------------------------------


class VanillaSGD(Optimizer):
    """Plain stochastic gradient descent with L2 regularization:

        g = grad + reg * p
        p = p - learn_rate * g

    Same as ``torch.optim.SGD(params, lr=learn_rate, weight_decay=reg)``.
    State: none.
    """

    HYPERPARAMETERS = ("learn_rate", "reg")

    def __init__(self, params, learn_rate=1e-3, reg=1e-3, *, lr=None):
        super().__init__(params)
        learn_rate = _one_rate("VanillaSGD", learn_rate, lr, 1e-3)
        self._set_hyperparameters({"learn_rate": learn_rate, "reg": reg})

    def checked_hyperparameters(self, values):
        owner = type(self).__name__
        return {
            "learn_rate": checked_real(owner, "learn_rate", values["learn_rate"], 0.0),
            "reg": checked_real(owner, "reg", values["reg"], 0.0),
        }

    def step(self):
        params, grads, _ = self.live()
        if params:
            with torch.no_grad():
                torch._foreach_add_(params, self.regularized(params, grads), alpha=-self.learn_rate)


class MomentumSGD(Optimizer):
    """SGD with momentum, written with a velocity v (zero at the start):

        g = grad + reg * p
        v = momentum * v - learn_rate * g
        p = p + v                                  (nesterov=False)
        p = p + momentum * v - learn_rate * g      (nesterov=True, with the new v)

    Relation to ``torch.optim.SGD(params, lr=learn_rate, momentum=momentum,
    nesterov=nesterov, weight_decay=reg)``: torch keeps a buffer b = momentum * b + g
    (b = g at the first step) and steps p -= lr * b (Nesterov: p -= lr * (g + momentum * b)).
    Here v = -learn_rate * b at every step, so the parameter trajectories are the same
    (up to rounding) while the saved buffers differ by the factor -learn_rate. (A
    learning rate changed mid-run makes them differ: here the old velocity keeps its
    old scale, in torch the new lr rescales the whole buffer.)
    State: ``velocity``, one tensor like each parameter.
    """

    HYPERPARAMETERS = ("learn_rate", "reg", "momentum", "nesterov")

    def __init__(self, params, learn_rate=1e-3, reg=1e-3, momentum=0.9, nesterov=False, *, lr=None):
        super().__init__(params)
        learn_rate = _one_rate("MomentumSGD", learn_rate, lr, 1e-3)
        self._set_hyperparameters({"learn_rate": learn_rate, "reg": reg, "momentum": momentum, "nesterov": nesterov})
        for (param, _), state in zip(self._entries, self.state):
            state["velocity"] = torch.zeros_like(param)

    def checked_hyperparameters(self, values):
        owner = type(self).__name__
        if not isinstance(values["nesterov"], bool):
            raise ValueError(f"{owner}: nesterov must be True or False, got {values['nesterov']!r}")
        return {
            "learn_rate": checked_real(owner, "learn_rate", values["learn_rate"], 0.0),
            "reg": checked_real(owner, "reg", values["reg"], 0.0),
            "momentum": checked_real(owner, "momentum", values["momentum"], 0.0, 1.0),
            "nesterov": values["nesterov"],
        }

    def step(self):
        params, grads, states = self.live()
        if not params:
            return
        with torch.no_grad():
            g = self.regularized(params, grads)
            velocities = [state["velocity"] for state in states]
            torch._foreach_mul_(velocities, self.momentum)
            torch._foreach_add_(velocities, g, alpha=-self.learn_rate)
            if self.nesterov:
                ahead = torch._foreach_mul(velocities, self.momentum)
                torch._foreach_add_(ahead, g, alpha=-self.learn_rate)
                torch._foreach_add_(params, ahead)
            else:
                torch._foreach_add_(params, velocities)


class RMSProp(Optimizer):
    """RMSProp: steps scaled by a running root mean square of the gradient
    (r zero at the start):

        g = grad + reg * p
        r = decay * r + (1 - decay) * g^2
        p = p - learn_rate * g / sqrt(r + eps)

    Relation to ``torch.optim.RMSprop(params, lr=learn_rate, alpha=decay, eps=eps,
    weight_decay=reg)``: the same except where eps goes. torch divides by
    ``sqrt(r) + eps``, this rule (that of CS231n) by ``sqrt(r + eps)``; with the
    default eps=1e-8 this one damps steps where r is small far more (sqrt(1e-8) = 1e-4).
    With eps negligible against r (e.g. 1e-300) both give the same trajectory.
    eps must be > 0: it is what keeps a parameter whose gradient has always been
    exactly zero from computing 0 / 0.
    State: ``square_avg`` (r), one tensor like each parameter.
    """

    HYPERPARAMETERS = ("learn_rate", "reg", "decay", "eps")

    def __init__(self, params, learn_rate=1e-3, reg=1e-3, decay=0.99, eps=1e-8, *, lr=None):
        super().__init__(params)
        learn_rate = _one_rate("RMSProp", learn_rate, lr, 1e-3)
        self._set_hyperparameters({"learn_rate": learn_rate, "reg": reg, "decay": decay, "eps": eps})
        for (param, _), state in zip(self._entries, self.state):
            state["square_avg"] = torch.zeros_like(param)

    def checked_hyperparameters(self, values):
        owner = type(self).__name__
        return {
            "learn_rate": checked_real(owner, "learn_rate", values["learn_rate"], 0.0),
            "reg": checked_real(owner, "reg", values["reg"], 0.0),
            "decay": checked_real(owner, "decay", values["decay"], 0.0, 1.0),
            "eps": checked_real(owner, "eps", values["eps"], 0.0, low_open=True),
        }

    def step(self):
        params, grads, states = self.live()
        if not params:
            return
        with torch.no_grad():
            g = self.regularized(params, grads)
            square_avgs = [state["square_avg"] for state in states]
            torch._foreach_mul_(square_avgs, self.decay)
            torch._foreach_addcmul_(square_avgs, g, g, value=1 - self.decay)
            denominators = torch._foreach_add(square_avgs, self.eps)
            torch._foreach_sqrt_(denominators)
            torch._foreach_addcdiv_(params, g, denominators, value=-self.learn_rate)


class _AdamMoments(Optimizer):
    """Base of Adam and AdamW: per parameter, the moments ``exp_avg`` (m) and
    ``exp_avg_sq`` (v), zero at the start, and the step count ``step`` (t, an int); the
    checks of ``learn_rate``, ``betas`` and ``eps``; and the numbers of a step, which
    change with t (the bias-corrected step size)."""

    def __init__(self, params, hyperparameters):
        super().__init__(params)
        self._set_hyperparameters(hyperparameters)
        for (param, _), state in zip(self._entries, self.state):
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
            state["step"] = 0

    def checked_moment_options(self, values):
        """``learn_rate``, ``betas`` and ``eps`` of ``values``, checked (eps > 0, for the
        reason given in RMSProp)."""
        owner = type(self).__name__
        return {
            "learn_rate": checked_real(owner, "learn_rate", values["learn_rate"], 0.0),
            "betas": _checked_betas(owner, values["betas"]),
            "eps": checked_real(owner, "eps", values["eps"], 0.0, low_open=True),
        }

    def step_scalars(self, state):
        """The hyperparameters, the bias-corrected step size (and AdamW's decay factor)."""
        scalars = super().step_scalars(state)
        t = float(state["step"] + 1)
        scalars["learn_rate / (1 - beta1**t)"] = _adam_step_size(self.learn_rate, self.betas[0], t)
        if "weight_decay" in scalars:
            scalars["1 - learn_rate * weight_decay"] = 1 - self.learn_rate * self.weight_decay
        return scalars

    def scalars_key(self, state):
        return state["step"]


class Adam(_AdamMoments):
    """Adam with bias-corrected moments (m, v zero at the start; t counts this
    parameter's steps, starting at 1):

        g = grad + reg * p
        m = beta1 * m + (1 - beta1) * g            (computed as m.lerp_(g, 1 - beta1))
        v = beta2 * v + (1 - beta2) * g^2
        p = p - (learn_rate / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    Exactly ``torch.optim.Adam(params, lr=learn_rate, betas=betas, eps=eps,
    weight_decay=reg)`` (its single-tensor path, operation for operation, each applied to all
    parameters at once as its foreach path does, so float64
    trajectories agree to the last bit): eps is added outside the square root of the
    bias-corrected second moment, and reg is L2 added to the gradient (Adam, not AdamW).
    eps must be > 0, for the reason given in RMSProp.
    State: ``exp_avg`` (m), ``exp_avg_sq`` (v) and ``step`` (t, an int) per parameter.

    Example::

        >>> import torch
        >>> from nnlab.layers import Linear, MSELoss
        >>> from nnlab.optimizers import Adam
        >>> layer, loss_fn = Linear(3, 1), MSELoss()
        >>> optimizer = Adam(layer.params(), learn_rate=0.1)
        >>> x, y = torch.randn(16, 3), torch.randn(16, 1)
        >>> losses = []
        >>> for step in range(20):
        ...     optimizer.zero_grad()
        ...     losses.append(loss_fn(layer(x), y).item())
        ...     _ = layer.backward(loss_fn.backward(1.0))
        ...     optimizer.step()
        >>> losses[-1] < losses[0]
        True
    """

    HYPERPARAMETERS = ("learn_rate", "reg", "betas", "eps")

    def __init__(self, params, learn_rate=1e-3, reg=0.0, betas=(0.9, 0.999), eps=1e-8, *, lr=None):
        learn_rate = _one_rate("Adam", learn_rate, lr, 1e-3)
        super().__init__(params, {"learn_rate": learn_rate, "reg": reg, "betas": betas, "eps": eps})

    def checked_hyperparameters(self, values):
        reg = checked_real(type(self).__name__, "reg", values["reg"], 0.0)
        return {**self.checked_moment_options(values), "reg": reg}

    def step(self):
        params, grads, states = self.live()
        if params:
            with torch.no_grad():
                _adam_update(params, self.regularized(params, grads), states, self.learn_rate, self.betas, self.eps)


def _checked_betas(owner, betas):
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}")
    return (checked_real(owner, "betas[0]", betas[0], 0.0, 1.0), checked_real(owner, "betas[1]", betas[1], 0.0, 1.0))


def _adam_update(params, grads, states, learn_rate, betas, eps):
    """One Adam step of every parameter in ``params`` with the gradients ``grads``:
    moments, bias corrections and the update, the operations of torch's single-tensor
    Adam (see Adam) each applied to all parameters at once, as its foreach path does."""
    beta1, beta2 = betas
    for state in states:
        state["step"] += 1
    steps = [float(state["step"]) for state in states]
    exp_avgs = [state["exp_avg"] for state in states]
    exp_avg_sqs = [state["exp_avg_sq"] for state in states]
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    denominators = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denominators, [(1 - beta2**t) ** 0.5 for t in steps])
    torch._foreach_add_(denominators, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denominators, [-_adam_step_size(learn_rate, beta1, t) for t in steps])


def _adam_step_size(learn_rate, beta1, t):
    return learn_rate / (1 - beta1**t)


class AdamW(_AdamMoments):
    """Adam with decoupled weight decay: the parameter shrinks by itself, the gradient
    is left alone (t counts this parameter's steps, starting at 1):

        p = p * (1 - learn_rate * weight_decay)
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad^2
        p = p - (learn_rate / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    Exactly ``torch.optim.AdamW(params, lr=learn_rate, betas=betas, eps=eps,
    weight_decay=weight_decay)`` (its single-tensor path, operation for operation).
    eps must be > 0, for the reason given in RMSProp.
    State: ``exp_avg`` (m), ``exp_avg_sq`` (v) and ``step`` (t, an int) per parameter.
    """

    HYPERPARAMETERS = ("learn_rate", "betas", "eps", "weight_decay")

    def __init__(self, params, learn_rate=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, *, lr=None):
        learn_rate = _one_rate("AdamW", learn_rate, lr, 1e-3)
        super().__init__(params, {"learn_rate": learn_rate, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    def checked_hyperparameters(self, values):
        weight_decay = checked_real(type(self).__name__, "weight_decay", values["weight_decay"], 0.0)
        return {**self.checked_moment_options(values), "weight_decay": weight_decay}

    def step(self):
        params, grads, states = self.live()
        if not params:
            return
        with torch.no_grad():
            if self.weight_decay != 0:
                torch._foreach_mul_(params, 1 - self.learn_rate * self.weight_decay)
            _adam_update(params, grads, states, self.learn_rate, self.betas, self.eps)


# Gradient clipping ------------------------------------------------------------------------


def _gradients(owner, params):
    """The gradients to clip: of a Layer's ``params()``, of (param, grad) pairs, or the
    ``.grad`` of tensors (one tensor alone too; a None ``.grad`` is skipped); a parameter
    listed twice counts once."""
    if isinstance(params, Layer):
        params = params.params()
    elif isinstance(params, torch.Tensor):
        params = [params]
    elif isinstance(params, collections.abc.Iterator):
        params = list(params)
    if isinstance(params, (list, tuple)) and not params:
        return []
    entries = _collect(owner, params)
    return [param.grad if grad is None else grad for param, grad in entries if grad is not None or param.grad is not None]


def clip_grad_norm_(params, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scales all gradients in place by ``min(1, max_norm / (total_norm + 1e-6))``, where
    ``total_norm`` is the ``norm_type``-norm of all gradients together (the norm of the
    per-gradient norms; ``float('inf')``: the largest absolute value), and returns
    ``total_norm`` (a 0-d tensor; ``tensor(0.)`` when there is no gradient).

    ``params``: a Layer, its ``params()`` pairs, or tensors whose ``.grad`` is clipped.
    ``error_if_nonfinite=True`` raises RuntimeError for a NaN or infinite total norm
    instead of scaling by it. Same as ``torch.nn.utils.clip_grad_norm_``.
    """
    norm_type = _checked_positive("norm_type", norm_type, "a number > 0 (e.g. 2.0, 1.0, float('inf'))")
    max_norm = _checked_positive("max_norm", max_norm, "a number >= 0 (float('inf'): measure, do not clip)", 0.0)
    grads = _gradients("clip_grad_norm_", params)
    if not grads:
        return torch.tensor(0.0)
    with torch.no_grad():
        norms = [torch.linalg.vector_norm(grad, norm_type) for grad in grads]
        total_norm = torch.linalg.vector_norm(torch.stack([norm.to(grads[0].device) for norm in norms]), norm_type)
        if error_if_nonfinite and not torch.isfinite(total_norm):
            raise RuntimeError(
                f"clip_grad_norm_: the total {norm_type}-norm of the gradients is {total_norm.item()}, so they "
                "cannot be clipped; pass error_if_nonfinite=False to scale by it anyway"
            )
        scale = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
        for grad in grads:
            grad.mul_(scale.to(grad.device))
    return total_norm


def _checked_positive(name, value, expected, low=None):
    """``value`` as a float, infinity allowed; ValueError naming ``name`` unless it is a
    real number > 0 (>= ``low`` when given)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    ok = ok and (value > 0 or (low is not None and value >= low))
    if not ok:
        raise ValueError(f"clip_grad_norm_: {name} must be {expected}, got {value!r}")
    return float(value)


def clip_grad_value_(params, clip_value):
    """Clamps every gradient in place to ``[-clip_value, clip_value]``; ``params`` as in
    ``clip_grad_norm_``. Same as ``torch.nn.utils.clip_grad_value_``."""
    clip_value = checked_real("clip_grad_value_", "clip_value", clip_value, 0.0)
    with torch.no_grad():
        for grad in _gradients("clip_grad_value_", params):
            grad.clamp_(min=-clip_value, max=clip_value)


# By name ------------------------------------------------------------------------

OPTIMIZERS = {"sgd": VanillaSGD, "momentum": MomentumSGD, "rmsprop": RMSProp, "adam": Adam, "adamw": AdamW}


def make_optimizer(name, params, **options):
    """The optimizer ``OPTIMIZERS[name]`` over ``params``, built with ``options``
    (``learn_rate``, ``reg``, ...; the class's defaults for the others). AdamW has no L2
    term: its ``reg`` is its decoupled ``weight_decay`` (torch's ``weight_decay=``)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"make_optimizer: unknown optimizer {name!r}; expected one of {list(OPTIMIZERS)}")
    if OPTIMIZERS[name] is AdamW and "reg" in options:
        options = dict(options)
        options["weight_decay"] = options.pop("reg")
    return OPTIMIZERS[name](params, **options)
