"""Pure-PyTorch reference implementation of the rnnfast ops.

A per-time-step loop written with ordinary differentiable torch operations. It has
the exact signature and semantics of ``torch.ops.rnnfast.rnn_forward`` (minus the
workspace output and the ``train`` flag), so it serves as the test oracle and as a
debugging fallback a user can call explicitly. It is slow; rnnfast never falls back to
it silently.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor
from torch.nn.functional import linear

from . import _cells

__all__ = ["rnn_forward", "rnn_cell_forward"]

State = tuple[Tensor, ...]  # (h,) or, for LSTM, (h, c)


def _act(nonlinearity: str):
    if nonlinearity == "tanh":
        return torch.tanh
    if nonlinearity == "relu":
        return torch.relu
    raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")


def rnn_cell_forward(
    input: Tensor,
    hx: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    nonlinearity: str,
) -> Tensor:
    """h = act(input @ w_ih^T + b_ih + hx @ w_hh^T + b_hh); input (N, H_in), hx (N, H)."""
    z = torch.nn.functional.linear(hx, w_hh, b_hh) + torch.nn.functional.linear(input, w_ih, b_ih)
    return _act(nonlinearity)(z)


# One step of each cell: (state, x-side gates of this step, recurrent weights) -> state.
# x_gates = x_t W_ih^T + b_ih, (b, G*H); the states are (b, P) for h and (b, H) for c.


def _elman_step(act):
    def step(state: State, x_gates: Tensor, w_hh: Tensor, b_hh: Tensor | None,
             w_hr: Tensor | None) -> State:
        return (act(linear(state[0], w_hh, b_hh) + x_gates),)

    return step


def _lstm_step(state: State, x_gates: Tensor, w_hh: Tensor, b_hh: Tensor | None,
               w_hr: Tensor | None) -> State:
    h, c = state
    i, f, g, o = (linear(h, w_hh, b_hh) + x_gates).chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    m = torch.sigmoid(o) * torch.tanh(c)
    # The projection (no bias) is what the recurrence and the output see; c is never projected.
    return (m if w_hr is None else linear(m, w_hr), c)


def _gru_step(state: State, x_gates: Tensor, w_hh: Tensor, b_hh: Tensor | None,
              w_hr: Tensor | None) -> State:
    h = state[0]
    x_r, x_z, x_n = x_gates.chunk(3, 1)
    h_r, h_z, h_n = linear(h, w_hh, b_hh).chunk(3, 1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)  # torch's variant: b_hn sits inside r * (...)
    return ((h - n) * z + n,)  # (1 - z) * n + z * h, in ATen's order


def _step_function(mode: str) -> Callable:
    _cells.check_mode(mode)
    return {
        "RNN_TANH": _elman_step(torch.tanh),
        "RNN_RELU": _elman_step(torch.relu),
        "LSTM": _lstm_step,
        "GRU": _gru_step,
    }[mode]


def _direction(
    x_gates: Tensor,
    batch_sizes: list[int],
    state0: State,
    step: Callable,
    w_hh: Tensor,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, State]:
    """One layer, one direction over time-major rows of x-side gates (rows, G*H).

    Returns the h of every row (rows, P) and the final state, each sequence's at its
    true end: with packed input a sequence ends at the last step whose batch still
    holds it (forward), or at step 0 (reverse, which starts each sequence from state0).
    """
    offsets = [0]
    for b in batch_sizes[:-1]:
        offsets.append(offsets[-1] + b)
    T = len(batch_sizes)
    outs: list[Tensor | None] = [None] * T
    if not reverse:
        state = state0
        finished: list[State] = []  # final states of sequences that ended, last-ending first
        for t in range(T):
            b = batch_sizes[t]
            if b < state[0].shape[0]:
                finished.append(tuple(s[b:] for s in state))
                state = tuple(s[:b] for s in state)
            state = step(state, x_gates[offsets[t] : offsets[t] + b], w_hh, b_hh, w_hr)
            outs[t] = state[0]
        finished.append(state)
        state_n = tuple(torch.cat([f[k] for f in finished[::-1]], 0) for k in range(len(state0)))
    else:
        state = tuple(s[: batch_sizes[-1]] for s in state0)
        for t in range(T - 1, -1, -1):
            b = batch_sizes[t]
            if b > state[0].shape[0]:
                # Sequences that start here (in reverse time) begin from their rows of state0.
                state = tuple(torch.cat([s, s0[s.shape[0] : b]], 0) for s, s0 in zip(state, state0))
            state = step(state, x_gates[offsets[t] : offsets[t] + b], w_hh, b_hh, w_hr)
            outs[t] = state[0]
        state_n = state
    return torch.cat(outs, 0), state_n  # type: ignore[arg-type]


def rnn_forward(
    input: Tensor,
    hx: Sequence[Tensor],
    weights: Sequence[Tensor],
    batch_sizes: Tensor | None,
    dropout_masks: Tensor | None,
    mode: str,
    has_biases: bool,
    num_layers: int,
    proj_size: int,
    bidirectional: bool,
) -> tuple[Tensor, list[Tensor]]:
    """Reference of ``torch.ops.rnnfast.rnn_forward``; returns (output, h_n list).

    input is time-major (T, N, I), or packed data (rows, I) with batch_sizes.
    hx is [h0 (NL*D, N, P)], or [h0, c0 (NL*D, N, H)] for LSTM; weights are
    nn.RNNBase's _flat_weights; dropout_masks None or (NL-1, rows, D*P), already scaled.
    """
    step = _step_function(mode)
    if len(hx) != _cells.states(mode):
        raise ValueError(f"hx must hold {_cells.states(mode)} tensors for mode {mode} "
                         f"({_cells.state_names(mode)}), got {len(hx)}")
    D = 2 if bidirectional else 1
    _, _, P = _cells.sizes(mode, weights, proj_size)
    if batch_sizes is None:
        T, N = input.shape[0], input.shape[1]
        sizes = [N] * T
        x = input.reshape(T * N, input.shape[2])
    else:
        sizes = [int(b) for b in batch_sizes]
        x = input
    # state_n[k][layer * D + d]: the final k-th state (h or c) of each layer and direction.
    state_n: list[list[Tensor]] = [[] for _ in hx]
    for layer in range(num_layers):
        if layer > 0 and dropout_masks is not None:
            x = x * dropout_masks[layer - 1]
        outs = []
        for d in range(D):
            w_ih, w_hh, b_ih, b_hh, w_hr = _cells.layer_weights(
                weights, layer, d, bidirectional, has_biases, proj_size)
            state0 = tuple(h[layer * D + d] for h in hx)
            y, final = _direction(linear(x, w_ih, b_ih), sizes, state0, step, w_hh, b_hh, w_hr,
                                  d == 1)
            outs.append(y)
            for k, s in enumerate(final):
                state_n[k].append(s)
        x = torch.cat(outs, -1) if D == 2 else outs[0]
    # Explicit sizes, not -1: with an empty batch (N=0) -1 would be ambiguous.
    output = x if batch_sizes is not None else x.reshape(input.shape[0], input.shape[1], D * P)
    return output, [torch.stack(s, 0) for s in state_n]
