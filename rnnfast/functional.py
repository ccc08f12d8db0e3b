"""Functional API of rnnfast: thin wrappers over torch.ops.rnnfast.*.

These take nn.RNN's flat weight list and do only what cannot live in the kernel:
drawing dropout masks (so seeded training runs match nn.RNN) and the batch-first
view (the kernels work on time-major data, as ATen does).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _ops

__all__ = ["rnn", "rnn_cell"]


# torch.func transforms (grad, vjp, jacrev, vmap over them) need an autograd.Function
# with setup_context; the ops' own autograd (torch.library.register_autograd, and the
# cell's C++ kernel in csrc/autograd.cpp) is not one. Inside a transform the ops are called through these Functions, which reuse the
# ops' setup and backward (rnnfast/_ops.py); everywhere else the ops are called directly.


def _in_functorch_transform() -> bool:
    # torch.compile traces the ops themselves (their fake kernels and registered autograd).
    if torch.compiler.is_compiling():
        return False
    return torch._C._functorch.peek_interpreter_stack() is not None


class _RNNForward(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(input, hx, batch_sizes, masks, has_biases, num_layers, nonlinearity,
                bidirectional, *weights):
        return torch.ops.rnnfast.rnn_forward(input, hx, list(weights), batch_sizes, masks,
                                             has_biases, num_layers, nonlinearity, bidirectional)

    @staticmethod
    def setup_context(ctx, inputs, output):
        (input, hx, batch_sizes, masks, has_biases, num_layers, nonlinearity, bidirectional,
         *weights) = inputs
        ctx.mark_non_differentiable(output[2])
        _ops._rnn_forward_setup(ctx, (input, hx, weights, batch_sizes, masks, has_biases,
                                      num_layers, nonlinearity, bidirectional), output)

    @staticmethod
    def backward(ctx, grad_output, grad_h_n, _grad_workspace):
        input, hx, batch_sizes, masks, out, workspace, *weights = ctx.saved_tensors
        grad_input, grad_hx, *grad_weights = _RNNBackward.apply(
            grad_output, grad_h_n, input, hx, batch_sizes, masks, out, workspace, *ctx.attrs,
            *weights)
        return (grad_input, grad_hx, None, None, None, None, None, None, *grad_weights)


class _RNNBackward(torch.autograd.Function):
    """_rnn_backward, differentiable once more (the double backward of _ops.py)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad_output, grad_h_n, input, hx, batch_sizes, masks, out, workspace,
                has_biases, num_layers, nonlinearity, bidirectional, *weights):
        grad_input, grad_hx, grad_weights = torch.ops.rnnfast._rnn_backward(
            grad_output, grad_h_n, input, hx, list(weights), batch_sizes, masks, out, workspace,
            has_biases, num_layers, nonlinearity, bidirectional)
        return (grad_input, grad_hx, *grad_weights)

    @staticmethod
    def setup_context(ctx, inputs, output):
        (grad_output, grad_h_n, input, hx, batch_sizes, masks, out, workspace, has_biases,
         num_layers, nonlinearity, bidirectional, *weights) = inputs
        _ops._rnn_backward_setup(ctx, (grad_output, grad_h_n, input, hx, weights, batch_sizes,
                                       masks, out, workspace, has_biases, num_layers,
                                       nonlinearity, bidirectional), output)

    @staticmethod
    def backward(ctx, gg_input, gg_hx, *gg_weights):
        g_go, g_ghn, g_x, g_h0, g_w, *_ = _ops._rnn_backward_backward(
            ctx, gg_input, gg_hx, list(gg_weights))
        return (g_go, g_ghn, g_x, g_h0, None, None, None, None, None, None, None, None, *g_w)


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
    """The masks nn.RNN's inter-layer dropout would draw, scaled by 1 / (1 - p).

    One bernoulli_ per layer in layer order on a tensor of the layer output's shape:
    the same random stream as torch's CPU dropout, so seeded runs match nn.RNN.
    """
    if p == 1:
        return torch.zeros(num_layers - 1, *layer_shape, dtype=like.dtype, device=like.device)
    masks = torch.empty(num_layers - 1, *layer_shape, dtype=like.dtype, device=like.device)
    for layer in range(num_layers - 1):
        masks[layer].bernoulli_(1 - p)
    return masks.div_(1 - p)


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
    input, hx, weights = _autocast(input, hx, weights)
    if batch_first and batch_sizes is None:
        input = input.transpose(0, 1)
    masks = None
    if train and dropout > 0 and num_layers > 1:
        D = 2 if bidirectional else 1
        H = weights[1].shape[0]
        layer_shape = (input.shape[0], D * H) if batch_sizes is not None else (
            input.shape[0], input.shape[1], D * H)
        masks = _dropout_masks(layer_shape, num_layers, float(dropout), input)
        masks = masks.view(num_layers - 1, -1, D * H)
    if _in_functorch_transform():
        output, h_n, _ = _RNNForward.apply(input, hx, batch_sizes, masks, has_biases, num_layers,
                                           nonlinearity, bidirectional, *weights)
    else:
        output, h_n, _ = torch.ops.rnnfast.rnn_forward(
            input, hx, weights, batch_sizes, masks, has_biases, num_layers, nonlinearity,
            bidirectional)
    if batch_first and batch_sizes is None:
        output = output.transpose(0, 1)
    return output, h_n


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
