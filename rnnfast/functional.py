"""Functional API of rnnfast: thin wrappers over torch.ops.rnnfast.*.

These take nn.RNNBase's flat weight list and do only what cannot live in the kernel:
drawing dropout masks (so seeded training runs match nn.RNN/LSTM/GRU) and the
batch-first view (the kernels work on time-major data, as ATen does).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _cells, _ops

__all__ = ["rnn", "lstm", "gru", "rnn_cell"]


# torch.func transforms (grad, vjp, jacrev, vmap over them) need an autograd.Function
# with setup_context; the ops' own autograd (torch.library.register_autograd, and the
# cell's C++ kernel in csrc/autograd.cpp) is not one. Inside a transform the ops
# are called through these Functions, which reuse the ops' setup and backward
# (rnnfast/_ops.py); everywhere else the ops are called directly.


def _in_functorch_transform() -> bool:
    # torch.compile traces the ops themselves (their fake kernels and registered autograd).
    if torch.compiler.is_compiling():
        return False
    return torch._C._functorch.peek_interpreter_stack() is not None


def _split(flat, counts):
    """Cuts a flat sequence into consecutive lists of the given lengths."""
    parts, start = [], 0
    for n in counts:
        parts.append(list(flat[start : start + n]))
        start += n
    return parts


class _RNNForward(torch.autograd.Function):
    """rnn_forward; the state and weight lists travel flat (*hx, *weights), since an
    autograd.Function tracks tensor arguments only. Returns (output, *h_n, *workspace)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, batch_sizes, masks, attrs, n_states, *hx_and_weights):
        hx, weights = _split(hx_and_weights, [n_states, len(hx_and_weights) - n_states])
        output, h_n, workspace = torch.ops.rnnfast.rnn_forward(
            input, hx, weights, batch_sizes, masks, *attrs, True)
        return (output, *h_n, *workspace)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, batch_sizes, masks, attrs, n_states, *hx_and_weights = inputs
        hx, weights = _split(hx_and_weights, [n_states, len(hx_and_weights) - n_states])
        out, h_n, workspace = _split(output, [1, n_states, len(output) - 1 - n_states])
        ctx.mark_non_differentiable(*workspace)
        _ops._rnn_forward_setup(ctx, (input, hx, weights, batch_sizes, masks, *attrs, True),
                                (out[0], h_n, workspace))

    @staticmethod
    def backward(ctx, grad_output, *grads):
        input, hx, batch_sizes, masks, out, workspace, weights = _ops._rnn_forward_saved(ctx)
        S, W = len(hx), len(workspace)
        grad_h_n = grads[:S]
        result = _RNNBackward.apply(
            ctx.attrs, S, W, grad_output, *grad_h_n, input, *hx, batch_sizes, masks, out,
            *workspace, *weights)
        grad_input, grad_hx, grad_weights = _split(result, [1, S, len(weights)])
        return (grad_input[0], None, None, None, None, *grad_hx, *grad_weights)


class _RNNBackward(torch.autograd.Function):
    """_rnn_backward, differentiable once more (the double backward of _ops.py). Flat
    arguments: grad_output, *grad_h_n, input, *hx, batch_sizes, masks, output,
    *workspace, *weights. Returns (grad_input, *grad_hx, *grad_weights)."""

    generate_vmap_rule = True

    @staticmethod
    def _unflatten(attrs, S, W, flat):
        grad_output, grad_h_n, input, hx, (batch_sizes, masks, out), workspace, weights = _split(
            flat, [1, S, 1, S, 3, W, len(flat) - 5 - 2 * S - W])
        return (grad_output[0], grad_h_n, input[0], hx, weights, batch_sizes, masks, out,
                workspace, *attrs)

    @staticmethod
    def forward(attrs, S, W, *flat):
        grad_input, grad_hx, grad_weights = torch.ops.rnnfast._rnn_backward(
            *_RNNBackward._unflatten(attrs, S, W, flat))
        return (grad_input, *grad_hx, *grad_weights)

    @staticmethod
    def setup_context(ctx, inputs, output):
        attrs, S, W, *flat = inputs
        _ops._rnn_backward_setup(ctx, _RNNBackward._unflatten(attrs, S, W, flat), output)

    @staticmethod
    def backward(ctx, gg_input, *gg):
        S, W = ctx.n_states, ctx.n_workspace
        g_go, g_ghn, g_x, g_h0, g_w = _ops._rnn_backward_double(ctx, gg_input, gg[:S], gg[S:])
        # attrs, S, W, grad_output, *grad_h_n, input, *hx, batch_sizes, masks, output,
        # *workspace, *weights
        return (None, None, None, g_go, *g_ghn, g_x, *g_h0, None, None, None, *[None] * W,
                *g_w)


class _RNNCellForward(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity):
        return torch.ops.rnnfast.rnn_cell_forward(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _ops._cell_setup(ctx, inputs, output)

    @staticmethod
    def backward(ctx, grad_h):
        input, hx, w_ih, w_hh, h = ctx.saved_tensors
        gx, ghx, gwi, gwh, gb = _RNNCellBackward.apply(grad_h, input, hx, w_ih, w_hh, h,
                                                       ctx.has_bias, ctx.nonlinearity)
        return gx, ghx, gwi, gwh, gb if ctx.has_bias else None, \
            gb.clone() if ctx.has_bias else None, None


class _RNNCellBackward(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(grad_h, input, hx, w_ih, w_hh, h, has_bias, nonlinearity):
        return torch.ops.rnnfast._rnn_cell_backward(grad_h, input, hx, w_ih, w_hh, h, has_bias,
                                                    nonlinearity)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _ops._cell_backward_setup(ctx, inputs, output)

    @staticmethod
    def backward(ctx, gg_x, gg_hx, gg_wi, gg_wh, gg_b):
        return _ops._cell_backward_backward(ctx, gg_x, gg_hx, gg_wi, gg_wh, gg_b)


def _autocast(*tensors):
    """Under autocast for the first tensor's device, every floating-point tensor but
    float64 is cast (differentiably) to the autocast dtype, as autocast does for the
    linear ops inside nn.RNN: the fused kernels then run in that dtype. No-op
    otherwise. Lists of tensors are cast element-wise; None passes through."""
    device_type = tensors[0].device.type
    if not (
        torch._C._is_any_autocast_enabled()
        and torch.amp.is_autocast_available(device_type)
        and torch.is_autocast_enabled(device_type)
    ):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)

    def cast(t):
        if isinstance(t, (list, tuple)):
            return [cast(x) for x in t]
        if t is None or not t.is_floating_point() or t.dtype in (dtype, torch.float64):
            return t
        return t.to(dtype)

    return tuple(cast(t) for t in tensors)


def _dropout_masks(
    layer_shape: tuple[int, ...], num_layers: int, p: float, like: Tensor
) -> Tensor | None:
    """The masks nn.RNNBase's inter-layer dropout would draw, scaled by 1 / (1 - p).

    One bernoulli_ per layer in layer order on a tensor of the layer output's shape:
    the same random stream as torch's CPU dropout, so seeded runs match nn.RNN/LSTM/GRU.
    """
    if p == 1:
        return torch.zeros(num_layers - 1, *layer_shape, dtype=like.dtype, device=like.device)
    masks = torch.empty(num_layers - 1, *layer_shape, dtype=like.dtype, device=like.device)
    for layer in range(num_layers - 1):
        masks[layer].bernoulli_(1 - p)
    return masks.div_(1 - p)


def _keep_for_backward(input: Tensor, hx: list[Tensor], weights: list[Tensor]) -> bool:
    """The op's `train` flag: keep the workspace a backward needs only when there can be
    one (grad mode on and something requires grad, or inside a torch.func transform)."""
    if _in_functorch_transform():
        return True
    return torch.is_grad_enabled() and any(t.requires_grad for t in (input, *hx, *weights))


def _sequence(
    mode: str,
    input: Tensor,
    hx: list[Tensor],
    weights: list[Tensor],
    *,
    batch_sizes: Tensor | None,
    has_biases: bool,
    num_layers: int,
    proj_size: int,
    dropout: float,
    train: bool,
    bidirectional: bool,
    batch_first: bool,
) -> tuple[Tensor, list[Tensor]]:
    """rnn_forward for every mode (rnn, lstm and gru wrap it); returns (output, h_n list).

    hx: [h0] or, for LSTM, [h0, c0]; train: nn's training flag (inter-layer dropout).
    """
    input, hx, weights = _autocast(input, list(hx), list(weights))
    packed = batch_sizes is not None
    if batch_first and not packed:
        input = input.transpose(0, 1)
    masks = None
    if train and dropout > 0 and num_layers > 1:
        _, _, P = _cells.sizes(mode, weights, proj_size)
        layer_shape = _cells.output_shape(input.shape, packed, bidirectional, P)
        masks = _dropout_masks(layer_shape, num_layers, float(dropout), input)
        # Explicit sizes, not -1: with an empty batch (N=0) -1 would be ambiguous.
        rows = input.shape[0] if packed else input.shape[0] * input.shape[1]
        masks = masks.view(num_layers - 1, rows, layer_shape[-1])
    attrs = (mode, has_biases, num_layers, proj_size, bidirectional)
    if _in_functorch_transform():
        result = _RNNForward.apply(input, batch_sizes, masks, attrs, len(hx), *hx, *weights)
        output, h_n = result[0], list(result[1 : 1 + len(hx)])
    else:
        output, h_n, _ = torch.ops.rnnfast.rnn_forward(
            input, hx, weights, batch_sizes, masks, *attrs,
            _keep_for_backward(input, hx, weights))
    if batch_first and not packed:
        output = output.transpose(0, 1)
    return output, list(h_n)


def rnn(
    input: Tensor,
    hx: Tensor,
    weights: list[Tensor],
    *,
    batch_sizes: Tensor | None = None,
    has_biases: bool = True,
    num_layers: int = 1,
    nonlinearity: str = "tanh",
    dropout: float = 0.0,
    train: bool = False,
    bidirectional: bool = False,
    batch_first: bool = False,
) -> tuple[Tensor, Tensor]:
    """Multi-layer Elman RNN over a whole sequence; returns (output, h_n).

    Args:
        input: (L, N, H_in), or (N, L, H_in) with batch_first, or packed data
            (sum of lengths, H_in) with batch_sizes.
        hx: (num_layers * D, N, H), D = 2 if bidirectional else 1.
        weights: nn.RNN's ``_flat_weights`` order: per layer, per direction
            w_ih, w_hh[, b_ih, b_hh].
        dropout, train: inter-layer dropout probability, applied only when train.
    Returns:
        output (L, N, D*H) (batch-first: a transposed view, as nn.RNN), and
        h_n (num_layers * D, N, H).
    """
    modes = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}
    if nonlinearity not in modes:
        raise RuntimeError(f"rnnfast: nonlinearity must be 'tanh' or 'relu', got '{nonlinearity}'")
    output, h_n = _sequence(
        modes[nonlinearity], input, [hx], weights, batch_sizes=batch_sizes,
        has_biases=has_biases, num_layers=num_layers, proj_size=0, dropout=dropout, train=train,
        bidirectional=bidirectional, batch_first=batch_first)
    return output, h_n[0]


def lstm(
    input: Tensor,
    hx: tuple[Tensor, Tensor],
    weights: list[Tensor],
    *,
    batch_sizes: Tensor | None = None,
    has_biases: bool = True,
    num_layers: int = 1,
    proj_size: int = 0,
    dropout: float = 0.0,
    train: bool = False,
    bidirectional: bool = False,
    batch_first: bool = False,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Multi-layer LSTM over a whole sequence; returns (output, (h_n, c_n)).

    Args:
        input: (L, N, H_in), or (N, L, H_in) with batch_first, or packed data
            (sum of lengths, H_in) with batch_sizes.
        hx: (h0 (num_layers * D, N, P), c0 (num_layers * D, N, H)); P = proj_size if
            proj_size > 0 else H.
        weights: nn.LSTM's ``_flat_weights`` order: per layer, per direction
            w_ih (4H, H_in or D*P), w_hh (4H, P)[, b_ih, b_hh (4H)][, w_hr (P, H)].
        dropout, train: inter-layer dropout probability, applied only when train.
    Returns:
        output (L, N, D*P) (batch-first: a transposed view, as nn.LSTM), h_n and c_n
        shaped like h0 and c0.
    """
    if isinstance(hx, Tensor):
        raise TypeError("rnnfast.functional.lstm: hx must be a tuple (h0, c0), got a Tensor")
    output, (h_n, c_n) = _sequence(
        "LSTM", input, list(hx), weights, batch_sizes=batch_sizes, has_biases=has_biases,
        num_layers=num_layers, proj_size=proj_size, dropout=dropout, train=train,
        bidirectional=bidirectional, batch_first=batch_first)
    return output, (h_n, c_n)


def gru(
    input: Tensor,
    hx: Tensor,
    weights: list[Tensor],
    *,
    batch_sizes: Tensor | None = None,
    has_biases: bool = True,
    num_layers: int = 1,
    dropout: float = 0.0,
    train: bool = False,
    bidirectional: bool = False,
    batch_first: bool = False,
) -> tuple[Tensor, Tensor]:
    """Multi-layer GRU (torch's variant) over a whole sequence; returns (output, h_n).

    Args:
        input: (L, N, H_in), or (N, L, H_in) with batch_first, or packed data
            (sum of lengths, H_in) with batch_sizes.
        hx: (num_layers * D, N, H).
        weights: nn.GRU's ``_flat_weights`` order: per layer, per direction
            w_ih (3H, H_in or D*H), w_hh (3H, H)[, b_ih, b_hh (3H)].
        dropout, train: inter-layer dropout probability, applied only when train.
    Returns:
        output (L, N, D*H) (batch-first: a transposed view, as nn.GRU), and
        h_n (num_layers * D, N, H).
    """
    output, h_n = _sequence(
        "GRU", input, [hx], weights, batch_sizes=batch_sizes, has_biases=has_biases,
        num_layers=num_layers, proj_size=0, dropout=dropout, train=train,
        bidirectional=bidirectional, batch_first=batch_first)
    return output, h_n[0]


def rnn_cell(
    input: Tensor,
    hx: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
    nonlinearity: str = "tanh",
) -> Tensor:
    """One Elman cell step: act(input @ w_ih^T + b_ih + hx @ w_hh^T + b_hh).

    input (N, H_in), hx (N, H); returns (N, H).
    """
    input, hx, w_ih, w_hh, b_ih, b_hh = _autocast(input, hx, w_ih, w_hh, b_ih, b_hh)
    return _rnn_cell_cast(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity)


def _rnn_cell_cast(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity):
    """rnn_cell on tensors already cast for autocast."""
    if _in_functorch_transform():
        return _RNNCellForward.apply(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity)
    return torch.ops.rnnfast.rnn_cell_forward(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity)
