"""Recurrent layers with hand-written backpropagation through time: RNN, LSTM, GRU and
their one-step cells, with torch's gate layout and state_dict keys."""

import math

import torch

from .base import Layer, checked_bool, checked_int, checked_real
from .dense import dropout_mask

__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "RNN", "RNNCell"]

# Gates per mode, in torch's layout of weight_ih / weight_hh rows.
GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


# One time step ----------------------------------------------------------------------------


def input_gates(mode, x, weight_ih, bias_ih, bias_hh):
    """The input's part of every step's gate pre-activations, x W_ih^T + b_ih, for all steps
    at once; for RNN and LSTM b_hh joins it (it adds to the same pre-activations), for GRU
    it stays with the state's part (its n chunk is scaled by r)."""
    rows = x.reshape(-1, x.shape[-1])
    if bias_ih is None:
        gates = rows @ weight_ih.T
    else:
        bias = bias_ih if mode == "GRU" else bias_ih + bias_hh
        gates = torch.addmm(bias, rows, weight_ih.T)
    return gates.reshape(*x.shape[:-1], weight_ih.shape[0])


def step_forward(mode, x_gates, h, c, weight_hh, bias_hh):
    """One step from ``input_gates`` (N, G*H) and the state (h, c; c is None but for LSTM).
    Returns (h', c', saved), where saved holds what ``step_backward`` needs.

    RNN:  h' = act(x_gates + h W_hh^T), act = tanh or relu.
    LSTM: i, f, g, o = sigma, sigma, tanh, sigma of the four chunks of x_gates + h W_hh^T;
          c' = f c + i g, h' = o tanh(c').
    GRU:  r, z = sigma of the first two chunks of x_gates + h W_hh^T + b_hh;
          n = tanh(x_n + r (h W_hn^T + b_hn)), h' = (1 - z) n + z h."""
    if mode == "GRU":
        h_gates = h @ weight_hh.T if bias_hh is None else torch.addmm(bias_hh, h, weight_hh.T)
        x_r, x_z, x_n = x_gates.chunk(3, dim=-1)
        h_r, h_z, h_n = h_gates.chunk(3, dim=-1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        return (1 - z) * n + z * h, None, (r, z, n, h_n)
    pre = torch.addmm(x_gates, h, weight_hh.T)
    if mode == "LSTM":
        hidden = h.shape[-1]
        # One sigmoid over the four chunks (the g chunk's is not used): fewer calls than four.
        sigmoids = torch.sigmoid(pre)
        g = torch.tanh(pre[:, 2 * hidden:3 * hidden])
        i, f, o = sigmoids[:, :hidden], sigmoids[:, hidden:2 * hidden], sigmoids[:, 3 * hidden:]
        c_new = torch.addcmul(f * c, i, g)
        tanh_c = torch.tanh(c_new)
        return o * tanh_c, c_new, (sigmoids, g, tanh_c)
    h_new = torch.tanh(pre) if mode == "RNN_TANH" else torch.relu(pre)
    return h_new, None, (h_new,)


def step_backward(mode, dh, dc, saved, h, c, weight_hh, dx_gates, dh_gates):
    """The VJP of ``step_forward`` for the upstream (dh', dc'): writes the gradients of the
    input's gate pre-activations into ``dx_gates`` and of the state's into ``dh_gates`` (N, G*H;
    the same tensor but for GRU) and returns (dh, dc) of the previous state.

    RNN:  dpre = dh' (1 - h'^2) (tanh) or dh' [h' > 0] (relu); dh = dpre W_hh.
    LSTM: dc_total = dc' + dh' o (1 - tanh(c')^2); di = dc_total g i (1 - i); df = dc_total c f (1 - f);
          dg = dc_total i (1 - g^2); do = dh' tanh(c') o (1 - o); dc = dc_total f; dh = dgates W_hh.
    GRU:  dn_pre = dh' (1 - z) (1 - n^2); dz_pre = dh' (h - n) z (1 - z); dr_pre = dn_pre h_n r (1 - r);
          input chunks (dr_pre, dz_pre, dn_pre), state chunks (dr_pre, dz_pre, dn_pre r);
          dh = dh' z + dh_gates W_hh."""
    hidden = dh.shape[-1]
    if mode == "LSTM":
        sigmoids, g, tanh_c = saved
        i, f, o = sigmoids[:, :hidden], sigmoids[:, hidden:2 * hidden], sigmoids[:, 3 * hidden:]
        slopes = sigmoids * (1 - sigmoids)
        dc_total = torch.addcmul(dc, dh * o, 1 - tanh_c * tanh_c)
        torch.mul(dc_total * g, slopes[:, :hidden], out=dx_gates[:, :hidden])
        torch.mul(dc_total * c, slopes[:, hidden:2 * hidden], out=dx_gates[:, hidden:2 * hidden])
        torch.mul(dc_total * i, 1 - g * g, out=dx_gates[:, 2 * hidden:3 * hidden])
        torch.mul(dh * tanh_c, slopes[:, 3 * hidden:], out=dx_gates[:, 3 * hidden:])
        return dx_gates @ weight_hh, dc_total * f
    if mode == "GRU":
        r, z, n, h_n = saved
        dn_pre = torch.mul(dh * (1 - z), 1 - n * n, out=dx_gates[:, 2 * hidden:])
        torch.mul(dh * (h - n), z * (1 - z), out=dx_gates[:, hidden:2 * hidden])
        torch.mul(dn_pre * h_n, r * (1 - r), out=dx_gates[:, :hidden])
        dh_gates[:, :2 * hidden] = dx_gates[:, :2 * hidden]
        torch.mul(dn_pre, r, out=dh_gates[:, 2 * hidden:])
        return torch.addmm(dh * z, dh_gates, weight_hh), None
    (h_new,) = saved
    if mode == "RNN_TANH":
        torch.mul(dh, 1 - h_new * h_new, out=dx_gates)
    else:
        torch.mul(dh, (h_new > 0).to(dh.dtype), out=dx_gates)
    return dx_gates @ weight_hh, None


# A whole sequence in one direction -------------------------------------------------------------


def run_direction(mode, x, h0, c0, weights, reverse):
    """One layer, one direction over x (L, N, I): the input projections of every step in one
    product, then the recurrence step by step (backwards in time when ``reverse``).
    Returns (out (L, N, H), h_n, c_n, cache)."""
    weight_ih, weight_hh, bias_ih, bias_hh = weights
    x_gates = input_gates(mode, x, weight_ih, bias_ih, bias_hh)
    times = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    h, c = h0, c0
    outs, cells, saved = {}, {}, {}
    for t in times:
        h, c, saved[t] = step_forward(mode, x_gates[t], h, c, weight_hh, bias_hh)
        outs[t] = h
        cells[t] = c
    order = range(x.shape[0])
    out = torch.stack([outs[t] for t in order]) if x.shape[0] else x.new_empty(0, h0.shape[0], h0.shape[1])
    cache = (x, h0, c0, out, [cells[t] for t in order], [saved[t] for t in order], reverse)
    return out, h, c, cache


def backprop_direction(mode, dout, dh_n, dc_n, cache, weights, grads, needs_dx):
    """Backpropagation through time for ``run_direction``: adds the weight gradients into
    ``grads`` (the four gradient tensors, None for absent biases) and returns (dx, dh0, dc0).

    dW_ih += dX_gates^T x and dW_hh += dH_gates^T h_prev over every step in one product each,
    db_ih, db_hh the sums of the gate gradients, dx = dX_gates W_ih."""
    x, h0, c0, out, cells, saved, reverse = cache
    weight_ih, weight_hh, _, _ = weights
    length, batch = x.shape[:2]
    rows = weight_hh.shape[0]
    dh, dc = dh_n, dc_n
    # Every step's gate gradients go into one buffer, for the products over all steps.
    dx_gates = dout.new_empty(length, batch, rows)
    dh_gates = dout.new_empty(length, batch, rows) if mode == "GRU" else dx_gates
    times = range(length) if reverse else range(length - 1, -1, -1)
    for t in times:
        previous = t + 1 if reverse else t - 1
        inside = 0 <= previous < length
        h_prev = out[previous] if inside else h0
        c_prev = (cells[previous] if inside else c0) if mode == "LSTM" else None
        dh, dc = step_backward(mode, dh + dout[t], dc, saved[t], h_prev, c_prev, weight_hh, dx_gates[t], dh_gates[t])
    if length == 0:
        return x.new_zeros(x.shape) if needs_dx else None, dh, dc
    h_prev = torch.cat([out[1:], h0[None]]) if reverse else torch.cat([h0[None], out[:-1]])
    grad_ih, grad_hh, grad_bias_ih, grad_bias_hh = grads
    grad_ih.addmm_(dx_gates.reshape(-1, rows).T, x.reshape(-1, x.shape[-1]))
    grad_hh.addmm_(dh_gates.reshape(-1, rows).T, h_prev.reshape(-1, h_prev.shape[-1]))
    if grad_bias_ih is not None:
        grad_bias_ih.add_(dx_gates.sum(dim=(0, 1)))
        grad_bias_hh.add_(dh_gates.sum(dim=(0, 1)))
    dx = dx_gates @ weight_ih if needs_dx else None
    return dx, dh, dc


def _init_uniform(shape, hidden_size):
    """torch's recurrent init: U(-1/sqrt(H), 1/sqrt(H))."""
    bound = 1.0 / math.sqrt(hidden_size)
    return torch.empty(shape).uniform_(-bound, bound)


def _refuse_packed(owner, value):
    if isinstance(value, torch.nn.utils.rnn.PackedSequence):
        raise NotImplementedError(
            f"{owner}: packed sequences (PackedSequence) are not supported; pad the batch to one "
            "length and pass the padded tensor"
        )


class _Recurrent(Layer):
    """The multi-layer recurrent network shared by RNN, LSTM and GRU (see their docstrings)."""

    MODE = None

    def __init__(
        self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0, bidirectional=False,
        proj_size=0, device=None, dtype=None, nonlinearity="tanh",
    ):
        super().__init__()
        name = type(self).__name__
        self.input_size = checked_int(name, "input_size", input_size, 1)
        self.hidden_size = checked_int(name, "hidden_size", hidden_size, 1)
        self.num_layers = checked_int(name, "num_layers", num_layers, 1)
        self.bias = checked_bool(name, "bias", bias)
        self.batch_first = checked_bool(name, "batch_first", batch_first)
        self.dropout = checked_real(name, "dropout", dropout, 0.0, 1.0, high_open=False)
        self.bidirectional = checked_bool(name, "bidirectional", bidirectional)
        if proj_size != 0:
            raise NotImplementedError(f"{name}: proj_size={proj_size!r} is not supported (only proj_size=0)")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"{name}: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        self.mode = self.MODE if self.MODE != "RNN_TANH" or nonlinearity == "tanh" else "RNN_RELU"
        self.num_directions = 2 if self.bidirectional else 1
        rows = GATES[self.mode] * hidden_size
        self._weight_names = []
        for layer in range(self.num_layers):
            layer_input = input_size if layer == 0 else hidden_size * self.num_directions
            for direction in range(self.num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                names = [f"weight_ih{suffix}", f"weight_hh{suffix}"]
                self.add_param(names[0], _init_uniform((rows, layer_input), hidden_size))
                self.add_param(names[1], _init_uniform((rows, hidden_size), hidden_size))
                if self.bias:
                    names += [f"bias_ih{suffix}", f"bias_hh{suffix}"]
                    self.add_param(names[2], _init_uniform((rows,), hidden_size))
                    self.add_param(names[3], _init_uniform((rows,), hidden_size))
                self._weight_names.append(names)
        self._cache = None
        self._weights = None
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    SAVED_TENSORS = ("_input", "_weights")

    def __repr__(self):
        options = [f"{self.input_size}", f"{self.hidden_size}"]
        if self.num_layers != 1:
            options.append(f"num_layers={self.num_layers}")
        if self.mode == "RNN_RELU":
            options.append("nonlinearity='relu'")
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, name) != default:
                options.append(f"{name}={getattr(self, name)}")
        return f"{type(self).__name__}({', '.join(options)})"

    def direction_weights(self, index):
        """(weight_ih, weight_hh, bias_ih, bias_hh) of layer-direction ``index``; None biases."""
        names = self._weight_names[index]
        tensors = [getattr(self, name) for name in names]
        return tuple(tensors) if len(tensors) == 4 else (tensors[0], tensors[1], None, None)

    def direction_grads(self, index):
        names = self._weight_names[index]
        grads = [self._grads[name] for name in names]
        return tuple(grads) if len(grads) == 4 else (grads[0], grads[1], None, None)

    def check_inputs(self, x, hx):
        name = type(self).__name__
        _refuse_packed(name, x)
        self.check_input(x, f"(L, N, {self.input_size}) or (L, {self.input_size})", lambda t: t.dim() in (2, 3) and t.shape[-1] == self.input_size)
        self.check_dtype(x)
        batched = x.dim() == 3
        batch = (x.shape[0] if self.batch_first else x.shape[1]) if batched else None
        states = self.num_layers * self.num_directions
        expected = (states, batch, self.hidden_size) if batched else (states, self.hidden_size)
        if hx is None:
            return batched, None
        parts = hx if self.mode == "LSTM" else (hx,)
        if self.mode == "LSTM" and not (isinstance(hx, tuple) and len(hx) == 2):
            raise TypeError(f"{self!r}: hx must be a tuple (h_0, c_0), got {type(hx).__name__}")
        for part in parts:
            if not isinstance(part, torch.Tensor):
                raise TypeError(f"{self!r}: expected the initial state as a torch.Tensor, got {type(part).__name__}")
            if tuple(part.shape) != expected:
                raise ValueError(f"{self!r}: expected an initial state of shape {expected}, got {tuple(part.shape)}")
            if part.dtype != x.dtype or part.device != x.device:
                raise ValueError(f"{self!r}: expected an initial state of dtype {x.dtype} on {x.device}, got {part.dtype} on {part.device}")
        return batched, parts

    def forward(self, input, hx=None, **kw):
        batched, states = self.check_inputs(input, hx)
        x = input if batched else input.unsqueeze(1)
        if batched and self.batch_first:
            x = x.transpose(0, 1)
        shape = (self.num_layers * self.num_directions, x.shape[1], self.hidden_size)
        if states is None:
            h0 = x.new_zeros(shape)
            c0 = x.new_zeros(shape) if self.mode == "LSTM" else None
        else:
            h0 = states[0] if batched else states[0].unsqueeze(1)
            c0 = (states[1] if batched else states[1].unsqueeze(1)) if self.mode == "LSTM" else None
        caches, masks, h_n, c_n = [], [], [], []
        layer_input = x
        for layer in range(self.num_layers):
            outs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                c_start = c0[index] if c0 is not None else None
                out, h, c, cache = run_direction(
                    self.mode, layer_input, h0[index], c_start, self.direction_weights(index), direction == 1
                )
                outs.append(out)
                caches.append(cache)
                h_n.append(h)
                c_n.append(c)
            layer_output = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
            mask = None
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                mask = dropout_mask(layer_output.shape, self.dropout, layer_output)
                layer_output = layer_output * mask
            masks.append(mask)
            layer_input = layer_output
        output = layer_input
        if batched and self.batch_first:
            output = output.transpose(0, 1)
        if not batched:
            output = output.squeeze(1)
        h_n = torch.stack(h_n) if batched else torch.stack(h_n).squeeze(1)
        self._input = input
        self._weights = tuple(param for names in self._weight_names for param in (getattr(self, n) for n in names))
        self._cache = (caches, masks, batched, states is not None)
        if self.mode == "LSTM":
            c_n = torch.stack(c_n) if batched else torch.stack(c_n).squeeze(1)
            return self.finish_forward((output, (h_n, c_n)))
        return self.finish_forward((output, h_n))

    def backward(self, dout):
        self.start_backward(dout)
        caches, masks, batched, had_state = self._cache
        doutput, dstate = dout
        if self.mode == "LSTM":
            dh_n, dc_n = (None, None) if dstate is None else dstate
        else:
            dh_n, dc_n = dstate, None
        time_major = self.time_major(doutput, batched)
        dh_n = self.batched_state(dh_n, batched)
        dc_n = self.batched_state(dc_n, batched) if self.mode == "LSTM" else None
        dh_0, dc_0 = [None] * len(caches), [None] * len(caches)
        dlayer = time_major
        for layer in range(self.num_layers - 1, -1, -1):
            if masks[layer] is not None:
                dlayer = dlayer * masks[layer]
            hidden = self.hidden_size
            dinput = None
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                cache = caches[index]
                dout_direction = dlayer[..., direction * hidden:(direction + 1) * hidden]
                needs_dx = layer > 0 or self.needs_input_grad
                dx, dh_0[index], dc_0[index] = backprop_direction(
                    self.mode, dout_direction, dh_n[index], dc_n[index] if dc_n is not None else None, cache,
                    self.direction_weights(index), self.direction_grads(index), needs_dx,
                )
                if dx is not None:
                    dinput = dx if dinput is None else dinput + dx
            dlayer = dinput
        dx = self.user_layout(dlayer, batched) if dlayer is not None else None
        if not had_state:
            return dx
        dh_0 = self.user_state(torch.stack(dh_0), batched)
        if self.mode == "LSTM":
            return dx, (dh_0, self.user_state(torch.stack(dc_0), batched))
        return dx, dh_0

    def time_major(self, doutput, batched):
        """The output gradient as (L, N, D*H), zeros for None."""
        caches = self._cache[0]
        length, batch = caches[0][0].shape[:2]
        if doutput is None:
            return caches[0][0].new_zeros(length, batch, self.num_directions * self.hidden_size)
        if not batched:
            return doutput.unsqueeze(1)
        return doutput.transpose(0, 1) if self.batch_first else doutput

    def batched_state(self, dstate, batched):
        """A state gradient as (layers * directions, N, H), zeros for None."""
        caches = self._cache[0]
        batch = caches[0][0].shape[1]
        if dstate is None:
            return caches[0][0].new_zeros(self.num_layers * self.num_directions, batch, self.hidden_size)
        return dstate if batched else dstate.unsqueeze(1)

    def user_layout(self, dx, batched):
        if not batched:
            return dx.squeeze(1)
        return dx.transpose(0, 1) if self.batch_first else dx

    def user_state(self, dstate, batched):
        return dstate if batched else dstate.squeeze(1)


_SHARED_DOC = """
    Forward over the layers l = 0 .. num_layers - 1 and, with ``bidirectional=True``, both
    directions (the reverse one reads the sequence from its end); layer l + 1 reads layer l's
    output (both directions concatenated), through inverted dropout of probability
    ``dropout`` in training mode (not after the last layer). Each step's input projections
    x W_ih^T + b_ih are one product over the whole sequence; the loop runs over time steps
    only, each a few whole-tensor operations.

    Backward (backpropagation through time): each layer and direction from the last step to
    the first, the step's VJP (below) with the upstream dh_t = dout_t + dh from step t + 1;
    then dW_ih += dG_x^T x and dW_hh += dG_h^T h_prev as one product over every step,
    db_ih += sum dG_x, db_hh += sum dG_h, dx = dG_x W_ih, layer by layer down.

    Inputs: ``input`` (L, N, H_in) (``batch_first``: (N, L, H_in)) or unbatched (L, H_in);
    ``hx`` as torch: (D * num_layers, N, H) or unbatched (D * num_layers, H), zeros when None.
    ``backward`` takes gradients nested like the output (None for zero) and returns dx, or
    (dx, d_hx) nested like ``hx`` when an initial state was given. Parameters and their
    state_dict keys are torch's: ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``,
    ``bias_hh_l{k}``, with ``_reverse`` for the reverse direction, in torch's order and gate
    layout, drawn from U(-1/sqrt(H), 1/sqrt(H)). ``proj_size`` other than 0 and packed
    sequences are refused.
    Caches: per layer and direction its input, output, initial state, the step values the VJP
    reads (below), and the dropout masks.
"""


class RNN(_Recurrent):
    __doc__ = (
        """Elman recurrent network: ``h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``,
    act = tanh or relu (``nonlinearity``). Same as ``torch.nn.RNN``.

    Step VJP: ``dpre = dh_t (1 - h_t^2)`` (tanh) or ``dh_t [h_t > 0]`` (relu), dG_x = dG_h =
    dpre, dh_{t-1} = dpre W_hh. Step cache: h_t. Output ``(output, h_n)``.
"""
        + _SHARED_DOC
    )

    MODE = "RNN_TANH"

    def __init__(
        self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True, batch_first=False, dropout=0.0,
        bidirectional=False, device=None, dtype=None,
    ):
        super().__init__(
            input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0, device, dtype, nonlinearity
        )


class LSTM(_Recurrent):
    __doc__ = (
        """Long short-term memory: gates i, f, g, o = sigma, sigma, tanh, sigma of the four
    chunks of ``x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh``; ``c_t = f c_{t-1} + i g``,
    ``h_t = o tanh(c_t)``. Same as ``torch.nn.LSTM``; output ``(output, (h_n, c_n))``.

    Step VJP, with dc = dc_t + dh_t o (1 - tanh(c_t)^2): di = dc g i (1 - i),
    df = dc c_{t-1} f (1 - f), dg = dc i (1 - g^2), do = dh_t tanh(c_t) o (1 - o); dG_x = dG_h =
    (di, df, dg, do); dh_{t-1} = dG W_hh, dc_{t-1} = dc f. Step cache: i, f, g, o, tanh(c_t), c_t.
    ``hx`` is the tuple (h_0, c_0); backward returns (dx, (dh_0, dc_0)) when it was given.
"""
        + _SHARED_DOC
        + """
    Example::

        >>> import torch
        >>> from nnlab.grad_compare import check_layer
        >>> from nnlab.layers import LSTM
        >>> lstm = LSTM(4, 5, num_layers=2, batch_first=True)
        >>> x = torch.randn(3, 7, 4)                 # (batch, time, features)
        >>> output, (h_n, c_n) = lstm(x)
        >>> output.shape, h_n.shape
        (torch.Size([3, 7, 5]), torch.Size([2, 3, 5]))
        >>> dx = lstm.backward((torch.ones_like(output), None))   # None: no loss on the final state
        >>> dx.shape
        torch.Size([3, 7, 4])
        >>> check_layer(lstm, x).passed              # backward against autograd and torch.nn.LSTM
        True
        >>> state = (torch.randn(2, 3, 5), torch.randn(2, 3, 5))   # (h_0, c_0)
        >>> check_layer(lstm, (x, state)).passed     # dx, dh_0 and dc_0 too
        True
"""
    )

    MODE = "LSTM"

    def __init__(
        self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0, bidirectional=False,
        proj_size=0, device=None, dtype=None,
    ):
        super().__init__(
            input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size, device, dtype
        )


class GRU(_Recurrent):
    __doc__ = (
        """Gated recurrent unit: r, z = sigma of the first two chunks of
    ``x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh``; ``n = tanh(x_n + r (h_{t-1} W_hn^T + b_hn))``,
    ``h_t = (1 - z) n + z h_{t-1}``. Same as ``torch.nn.GRU``; output ``(output, h_n)``.

    Step VJP: dn = dh_t (1 - z)(1 - n^2), dz = dh_t (h_{t-1} - n) z (1 - z),
    dr = dn (h_{t-1} W_hn^T + b_hn) r (1 - r); dG_x = (dr, dz, dn), dG_h = (dr, dz, dn r);
    dh_{t-1} = dh_t z + dG_h W_hh. Step cache: r, z, n and h_{t-1} W_hn^T + b_hn.
"""
        + _SHARED_DOC
    )

    MODE = "GRU"

    def __init__(
        self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0, bidirectional=False,
        device=None, dtype=None,
    ):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0, device, dtype)


# Cells ------------------------------------------------------------------------------------------


class _Cell(Layer):
    """One step of a recurrent layer (see RNNCell, LSTMCell, GRUCell)."""

    MODE = None
    SAVED_TENSORS = ("_x", "weight_ih", "weight_hh")

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None, dtype=None):
        super().__init__()
        name = type(self).__name__
        self.input_size = checked_int(name, "input_size", input_size, 1)
        self.hidden_size = checked_int(name, "hidden_size", hidden_size, 1)
        self.bias = checked_bool(name, "bias", bias)
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"{name}: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        self.mode = self.MODE if self.MODE != "RNN_TANH" or nonlinearity == "tanh" else "RNN_RELU"
        rows = GATES[self.mode] * hidden_size
        self.add_param("weight_ih", _init_uniform((rows, input_size), hidden_size))
        self.add_param("weight_hh", _init_uniform((rows, hidden_size), hidden_size))
        self.bias_ih = self.bias_hh = None
        if self.bias:
            self.add_param("bias_ih", _init_uniform((rows,), hidden_size))
            self.add_param("bias_hh", _init_uniform((rows,), hidden_size))
        self._x = None
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    def __repr__(self):
        options = "" if self.bias else ", bias=False"
        if self.mode == "RNN_RELU":
            options += ", nonlinearity='relu'"
        return f"{type(self).__name__}({self.input_size}, {self.hidden_size}{options})"

    def forward(self, input, hx=None, **kw):
        name = type(self).__name__
        self.check_input(input, f"(N, {self.input_size}) or ({self.input_size},)", lambda t: t.dim() in (1, 2) and t.shape[-1] == self.input_size)
        self.check_dtype(input)
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        state_shape = (x.shape[0], self.hidden_size) if batched else (self.hidden_size,)
        if hx is None:
            h = x.new_zeros(x.shape[0], self.hidden_size)
            c = x.new_zeros(x.shape[0], self.hidden_size) if self.mode == "LSTM" else None
        else:
            parts = hx if self.mode == "LSTM" else (hx,)
            if self.mode == "LSTM" and not (isinstance(hx, tuple) and len(hx) == 2):
                raise TypeError(f"{self!r}: hx must be a tuple (h, c), got {type(hx).__name__}")
            for part in parts:
                if not isinstance(part, torch.Tensor) or tuple(part.shape) != state_shape:
                    got = tuple(part.shape) if isinstance(part, torch.Tensor) else type(part).__name__
                    raise ValueError(f"{name}: expected a state of shape {state_shape}, got {got}")
            h = parts[0] if batched else parts[0].unsqueeze(0)
            c = (parts[1] if batched else parts[1].unsqueeze(0)) if self.mode == "LSTM" else None
        x_gates = input_gates(self.mode, x, self.weight_ih, self.bias_ih, self.bias_hh)
        h_new, c_new, saved = step_forward(self.mode, x_gates, h, c, self.weight_hh, self.bias_hh)
        self._x = x
        self._state = (h, c, saved, batched, hx is not None)
        if not batched:
            h_new = h_new.squeeze(0)
            c_new = c_new.squeeze(0) if c_new is not None else None
        return self.finish_forward((h_new, c_new) if self.mode == "LSTM" else h_new)

    def backward(self, dout):
        self.start_backward(dout)
        h, c, saved, batched, had_state = self._state
        dh, dc = dout if self.mode == "LSTM" else (dout, None)
        dh = h.new_zeros(h.shape) if dh is None else (dh if batched else dh.unsqueeze(0))
        if self.mode == "LSTM":
            dc = c.new_zeros(c.shape) if dc is None else (dc if batched else dc.unsqueeze(0))
        dx_gates = dh.new_empty(dh.shape[0], self.weight_hh.shape[0])
        dh_gates = dh.new_empty(dx_gates.shape) if self.mode == "GRU" else dx_gates
        dh_prev, dc_prev = step_backward(self.mode, dh, dc, saved, h, c, self.weight_hh, dx_gates, dh_gates)
        self._grads["weight_ih"].addmm_(dx_gates.T, self._x)
        self._grads["weight_hh"].addmm_(dh_gates.T, h)
        if self.bias:
            self._grads["bias_ih"].add_(dx_gates.sum(dim=0))
            self._grads["bias_hh"].add_(dh_gates.sum(dim=0))
        dx = dx_gates @ self.weight_ih if self.needs_input_grad else None
        unbatch = (lambda t: t) if batched else (lambda t: t.squeeze(0) if t is not None else None)
        if not had_state:
            return unbatch(dx)
        if self.mode == "LSTM":
            return unbatch(dx), (unbatch(dh_prev), unbatch(dc_prev))
        return unbatch(dx), unbatch(dh_prev)


class RNNCell(_Cell):
    """One Elman step: ``h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)``, act = tanh or relu.
    Same as ``torch.nn.RNNCell``.

    Backward: ``dpre = dh' (1 - h'^2)`` (tanh) or ``dh' [h' > 0]`` (relu); dx = dpre W_ih,
    dh = dpre W_hh; dW_ih += dpre^T x, dW_hh += dpre^T h, db_ih, db_hh += sum dpre.
    Shapes: x (N, H_in) or (H_in,), h (N, H) or (H,), zeros when None -> h' like h.
    backward(dh') returns dx, or (dx, dh) when h was given.
    Caches: x, h and h'.
    """

    MODE = "RNN_TANH"


class LSTMCell(_Cell):
    """One LSTM step: i, f, g, o = sigma, sigma, tanh, sigma of the chunks of
    ``x W_ih^T + b_ih + h W_hh^T + b_hh``; ``c' = f c + i g``, ``h' = o tanh(c')``.
    Same as ``torch.nn.LSTMCell``; forward(x, (h, c)) returns (h', c').

    Backward from (dh', dc'), with dc_t = dc' + dh' o (1 - tanh(c')^2): the gate gradients
    (dc_t g i (1 - i), dc_t c f (1 - f), dc_t i (1 - g^2), dh' tanh(c') o (1 - o)) =: dG;
    dx = dG W_ih, dh = dG W_hh, dc = dc_t f; dW_ih += dG^T x, dW_hh += dG^T h, biases += sum dG.
    Shapes: x (N, H_in) or (H_in,); h, c (N, H) or (H,). backward returns dx, or
    (dx, (dh, dc)) when (h, c) was given.
    Caches: x, h, c, the gates' sigmoids, g and tanh(c').
    """

    MODE = "LSTM"

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, "tanh", device, dtype)


class GRUCell(_Cell):
    """One GRU step: r, z = sigma of the first two chunks of ``x W_ih^T + b_ih + h W_hh^T + b_hh``;
    ``n = tanh(x_n + r (h W_hn^T + b_hn))``, ``h' = (1 - z) n + z h``. Same as ``torch.nn.GRUCell``.

    Backward: dn = dh' (1 - z)(1 - n^2), dz = dh' (h - n) z (1 - z), dr = dn (h W_hn^T + b_hn) r (1 - r);
    dG_x = (dr, dz, dn), dG_h = (dr, dz, dn r); dx = dG_x W_ih, dh = dh' z + dG_h W_hh;
    dW_ih += dG_x^T x, dW_hh += dG_h^T h, db_ih += sum dG_x, db_hh += sum dG_h.
    Shapes: x (N, H_in) or (H_in,), h (N, H) or (H,) -> h'. backward returns dx, or (dx, dh)
    when h was given.
    Caches: x, h, r, z, n and h W_hn^T + b_hn.
    """

    MODE = "GRU"

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, "tanh", device, dtype)
