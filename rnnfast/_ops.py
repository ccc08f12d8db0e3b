"""Fake (meta) kernels and autograd formulas of the rnnfast ops.

The ops themselves are defined in C++ (csrc/ops.cpp). Registering fake kernels lets
torch.compile / torch.export trace them; registering autograd on the ops (not on a
wrapper Function) makes every caller of torch.ops.rnnfast.* differentiable.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import reference

_lib = torch.ops.rnnfast


# ---------------------------------------------------------------------------
# Fake kernels: output metadata from input metadata only (never from the device).
# ---------------------------------------------------------------------------


@torch.library.register_fake("rnnfast::rnn_forward")
def _rnn_forward_fake(
    input, hx, weights, batch_sizes, dropout_masks, has_biases, num_layers, nonlinearity,
    bidirectional,
):
    D = 2 if bidirectional else 1
    H = weights[1].shape[0]
    packed = batch_sizes is not None
    torch._check(input.dim() == (2 if packed else 3), lambda: "rnnfast.rnn_forward: bad input rank")
    N = hx.shape[1]
    if packed:
        rows = input.shape[0]
        output = input.new_empty(rows, D * H)
    else:
        torch._check(input.shape[0] > 0, lambda: "Expected sequence length to be larger than 0 in RNN")
        rows = input.shape[0] * input.shape[1]
        output = input.new_empty(input.shape[0], input.shape[1], D * H)
    h_n = input.new_empty(num_layers * D, N, H)
    workspace = input.new_empty(num_layers - 1, rows, D * H)
    return output, h_n, workspace


@torch.library.register_fake("rnnfast::_rnn_backward")
def _rnn_backward_fake(
    grad_output, grad_h_n, input, hx, weights, batch_sizes, dropout_masks, output, workspace,
    has_biases, num_layers, nonlinearity, bidirectional,
):
    return (
        torch.empty_like(input, memory_format=torch.contiguous_format),
        torch.empty_like(hx, memory_format=torch.contiguous_format),
        [torch.empty_like(w, memory_format=torch.contiguous_format) for w in weights],
    )


@torch.library.register_fake("rnnfast::rnn_cell_forward")
def _rnn_cell_forward_fake(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity):
    return input.new_empty(input.shape[0], w_hh.shape[0])


@torch.library.register_fake("rnnfast::_rnn_cell_backward")
def _rnn_cell_backward_fake(grad_h, input, hx, w_ih, w_hh, h, has_bias, nonlinearity):
    H = w_hh.shape[0]
    return (
        input.new_empty(input.shape),
        hx.new_empty(hx.shape),
        w_ih.new_empty(w_ih.shape),
        w_hh.new_empty(w_hh.shape),
        input.new_empty(H if has_bias else 0),
    )


# ---------------------------------------------------------------------------
# Autograd of rnn_forward
# ---------------------------------------------------------------------------


def _rnn_forward_setup(ctx, inputs, output):
    (input, hx, weights, batch_sizes, dropout_masks, has_biases, num_layers, nonlinearity,
     bidirectional) = inputs
    out, _h_n, workspace = output
    ctx.attrs = (has_biases, num_layers, nonlinearity, bidirectional)
    ctx.n_weights = len(weights)
    ctx.save_for_backward(input, hx, batch_sizes, dropout_masks, out, workspace, *weights)


def _rnn_forward_backward(ctx, grad_output, grad_h_n, _grad_workspace):
    input, hx, batch_sizes, dropout_masks, out, workspace, *weights = ctx.saved_tensors
    grad_input, grad_hx, grad_weights = _lib._rnn_backward(
        grad_output, grad_h_n, input, hx, weights, batch_sizes, dropout_masks, out, workspace,
        *ctx.attrs,
    )
    return grad_input, grad_hx, grad_weights, None, None, None, None, None, None


torch.library.register_autograd(
    "rnnfast::rnn_forward", _rnn_forward_backward, setup_context=_rnn_forward_setup
)


# Double backward. _rnn_backward's `output` and `workspace` arguments are always
# rnn_forward's own outputs for the same (input, hx, weights). So the derivative of
# the first-order gradients can be taken as a *total* derivative with respect to
# input, hx and weights (recomputing the forward with the differentiable reference),
# with zero flowing into `output`/`workspace`: the chain rule through rnn_forward
# then adds nothing twice. Slow, but exact; orders above two are refused.


def _rnn_backward_setup(ctx, inputs, output):
    (grad_output, grad_h_n, input, hx, weights, batch_sizes, dropout_masks, _out, _ws,
     has_biases, num_layers, nonlinearity, bidirectional) = inputs
    ctx.attrs = (has_biases, num_layers, nonlinearity, bidirectional)
    ctx.has_go = grad_output is not None
    ctx.has_ghn = grad_h_n is not None
    ctx.save_for_backward(grad_output, grad_h_n, input, hx, batch_sizes, dropout_masks, *weights)


def _rnn_backward_backward(ctx, gg_input, gg_hx, gg_weights):
    if torch.is_grad_enabled():
        raise RuntimeError(
            "rnnfast: derivatives of order higher than two through rnn_forward are not supported"
        )
    grad_output, grad_h_n, input, hx, batch_sizes, dropout_masks, *weights = ctx.saved_tensors
    has_biases, num_layers, nonlinearity, bidirectional = ctx.attrs
    with torch.enable_grad():
        x = input.detach().requires_grad_()
        h0 = hx.detach().requires_grad_()
        ws = [w.detach().requires_grad_() for w in weights]
        out, h_n = reference.rnn_forward(
            x, h0, ws, batch_sizes, dropout_masks, has_biases, num_layers, nonlinearity,
            bidirectional,
        )
        go = (grad_output if ctx.has_go else torch.zeros_like(out)).detach().requires_grad_()
        ghn = (grad_h_n if ctx.has_ghn else torch.zeros_like(h_n)).detach().requires_grad_()
        primals = [x, h0, *ws]
        first = torch.autograd.grad((out, h_n), primals, (go, ghn), create_graph=True,
                                    allow_unused=True)
        pairs = [(f, g) for f, g in zip(first, [gg_input, gg_hx, *gg_weights])
                 if f is not None and g is not None and f.requires_grad]
        wrt = [go, ghn, *primals]
        if pairs:
            second = torch.autograd.grad([f for f, _ in pairs], wrt, [g for _, g in pairs],
                                         allow_unused=True)
        else:
            second = [None] * len(wrt)
    g_go, g_ghn, g_x, g_h0, *g_w = second
    return (
        g_go if ctx.has_go else None,
        g_ghn if ctx.has_ghn else None,
        g_x, g_h0, list(g_w), None, None, None, None, None, None, None, None,
    )


torch.library.register_autograd(
    "rnnfast::_rnn_backward", _rnn_backward_backward, setup_context=_rnn_backward_setup
)


# ---------------------------------------------------------------------------
# Autograd of rnn_cell_forward
# ---------------------------------------------------------------------------


def _cell_setup(ctx, inputs, output):
    input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity = inputs
    ctx.nonlinearity = nonlinearity
    ctx.has_bias = b_ih is not None
    ctx.save_for_backward(input, hx, w_ih, w_hh, output)


def _cell_backward(ctx, grad_h):
    input, hx, w_ih, w_hh, h = ctx.saved_tensors
    gx, ghx, gwi, gwh, gb = _lib._rnn_cell_backward(
        grad_h, input, hx, w_ih, w_hh, h, ctx.has_bias, ctx.nonlinearity
    )
    gb_ih = gb if ctx.has_bias else None
    gb_hh = gb.clone() if ctx.has_bias else None
    return gx, ghx, gwi, gwh, gb_ih, gb_hh, None


torch.library.register_autograd(
    "rnnfast::rnn_cell_forward", _cell_backward, setup_context=_cell_setup
)


def _cell_backward_setup(ctx, inputs, output):
    grad_h, input, hx, w_ih, w_hh, h, has_bias, nonlinearity = inputs
    ctx.nonlinearity = nonlinearity
    ctx.has_bias = has_bias
    ctx.save_for_backward(grad_h, input, hx, w_ih, w_hh, h)


def _cell_backward_backward(ctx, gg_x, gg_hx, gg_wi, gg_wh, gg_b):
    # Partial derivatives of the cell backward (dz = grad_h * act'(h); gx = dz W_ih;
    # ghx = dz W_hh; gW_ih = dz^T x; gW_hh = dz^T hx; gb = sum dz) with respect to each
    # of its inputs, h included: autograd chains the h part through the forward.
    # Written with differentiable torch ops, so higher orders work too.
    grad_h, input, hx, w_ih, w_hh, h = ctx.saved_tensors
    tanh = ctx.nonlinearity == "tanh"
    dact = 1 - h * h if tanh else (h > 0).to(h.dtype)
    dz = grad_h * dact
    g_dz = torch.zeros_like(dz)
    if gg_x is not None:
        g_dz = g_dz + gg_x @ w_ih.t()
    if gg_hx is not None:
        g_dz = g_dz + gg_hx @ w_hh.t()
    if gg_wi is not None:
        g_dz = g_dz + input @ gg_wi.t()
    if gg_wh is not None:
        g_dz = g_dz + hx @ gg_wh.t()
    if gg_b is not None and ctx.has_bias:
        g_dz = g_dz + gg_b
    g_grad_h = g_dz * dact
    g_h = g_dz * grad_h * (-2 * h) if tanh else torch.zeros_like(h)
    g_x = dz @ gg_wi if gg_wi is not None else None
    g_hx = dz @ gg_wh if gg_wh is not None else None
    g_wi = dz.t() @ gg_x if gg_x is not None else None
    g_wh = dz.t() @ gg_hx if gg_hx is not None else None
    return g_grad_h, g_x, g_hx, g_wi, g_wh, g_h, None, None


torch.library.register_autograd(
    "rnnfast::_rnn_cell_backward", _cell_backward_backward, setup_context=_cell_backward_setup
)
