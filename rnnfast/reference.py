"""Pure-PyTorch reference implementation of the rnnfast ops.

A per-time-step loop written with ordinary differentiable torch operations. It has
the exact signature and semantics of ``torch.ops.rnnfast.rnn_forward`` (minus the
workspace output), so it serves as the test oracle and as a debugging fallback a
user can call explicitly. It is slow; rnnfast never falls back to it silently.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["rnn_forward", "rnn_cell_forward"]


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


def _direction(
    x: Tensor,
    batch_sizes: list[int],
    h0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    act,
    reverse: bool,
) -> tuple[Tensor, Tensor]:
    """One layer, one direction over time-major rows; returns (rows, H) and h_n (N, H)."""
    proj = torch.nn.functional.linear(x, w_ih, b_ih)
    offsets = [0]
    for b in batch_sizes[:-1]:
        offsets.append(offsets[-1] + b)
    T = len(batch_sizes)
    outs: list[Tensor | None] = [None] * T
    if not reverse:
        h = h0
        finished: list[Tensor] = []  # final states of sequences that ended, last-ending first
        for t in range(T):
            b = batch_sizes[t]
            if b < h.shape[0]:
                finished.append(h[b:])
                h = h[:b]
            h = act(torch.nn.functional.linear(h, w_hh, b_hh) + proj[offsets[t] : offsets[t] + b])
            outs[t] = h
        finished.append(h)
        h_n = torch.cat(finished[::-1], 0)
    else:
        h = h0[: batch_sizes[-1]]
        for t in range(T - 1, -1, -1):
            b = batch_sizes[t]
            if b > h.shape[0]:
                h = torch.cat([h, h0[h.shape[0] : b]], 0)
            h = act(torch.nn.functional.linear(h, w_hh, b_hh) + proj[offsets[t] : offsets[t] + b])
            outs[t] = h
        h_n = h
    return torch.cat(outs, 0), h_n  # type: ignore[arg-type]


def rnn_forward(
    input: Tensor,
    hx: Tensor,
    weights: list[Tensor],
    batch_sizes: Tensor | None,
    dropout_masks: Tensor | None,
    has_biases: bool,
    num_layers: int,
    nonlinearity: str,
    bidirectional: bool,
) -> tuple[Tensor, Tensor]:
    """Reference of ``torch.ops.rnnfast.rnn_forward``; returns (output, h_n).

    input is time-major (L, N, H_in), or packed data (rows, H_in) with batch_sizes.
    """
    act = _act(nonlinearity)
    D = 2 if bidirectional else 1
    per = 4 if has_biases else 2
    if batch_sizes is None:
        T, N = input.shape[0], input.shape[1]
        sizes = [N] * T
        x = input.reshape(T * N, input.shape[2])
    else:
        sizes = [int(b) for b in batch_sizes]
        x = input
    h_n = []
    for layer in range(num_layers):
        if layer > 0 and dropout_masks is not None:
            x = x * dropout_masks[layer - 1]
        outs = []
        for d in range(D):
            w = weights[(layer * D + d) * per : (layer * D + d + 1) * per]
            b_ih, b_hh = (w[2], w[3]) if has_biases else (None, None)
            y, hn = _direction(x, sizes, hx[layer * D + d], w[0], w[1], b_ih, b_hh, act, d == 1)
            outs.append(y)
            h_n.append(hn)
        x = torch.cat(outs, -1) if D == 2 else outs[0]
    H = weights[1].shape[0]
    # Explicit sizes, not -1: with an empty batch (N=0) -1 would be ambiguous.
    output = x if batch_sizes is not None else x.reshape(input.shape[0], input.shape[1], D * H)
    return output, torch.stack(h_n, 0)
