"""Fake (meta) kernels and autograd formulas of the rnnfast ops.

The ops themselves are defined in C++ (csrc/ops.cpp). Registering fake kernels lets
torch.compile / torch.export trace them; registering autograd on the ops (not on a
wrapper Function) makes every caller of torch.ops.rnnfast.* differentiable.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import _cells, reference

_lib = torch.ops.rnnfast


# ---------------------------------------------------------------------------
# Argument checks of the fake kernels: the checks of csrc/rnn_args.cpp, with its
# messages, so that a call on meta / fake tensors rejects what the real kernels reject.
# ---------------------------------------------------------------------------

# ATen's ScalarType names, as the C++ messages print dtypes.
_SCALAR_TYPE_NAMES = {
    torch.float32: "Float", torch.float64: "Double", torch.float16: "Half",
    torch.bfloat16: "BFloat16", torch.int64: "Long", torch.int32: "Int", torch.int16: "Short",
    torch.int8: "Char", torch.uint8: "Byte", torch.bool: "Bool",
    torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble",
}


def _dtype_name(dtype: torch.dtype) -> str:
    return _SCALAR_TYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def _fail(op: str, msg: str) -> None:
    raise RuntimeError(f"{op}: {msg}")


def _check_float(op: str, name: str, t) -> None:
    if not isinstance(t, Tensor):
        _fail(op, f"{name} must be a defined tensor")
    if not t.is_floating_point():
        _fail(op, f"{name} must be a floating-point tensor (float16, bfloat16, float32 or "
                  f"float64), got {_dtype_name(t.dtype)}")


def _check_like(op: str, name: str, t, input: Tensor, shape) -> None:
    """check_same + check_shape of rnn_args.cpp: dtype, device, then shape."""
    if not isinstance(t, Tensor):
        _fail(op, f"{name} must be a tensor")
    if t.dtype != input.dtype:
        _fail(op, f"{name} must have the dtype of input ({_dtype_name(input.dtype)}), got "
                  f"{_dtype_name(t.dtype)}")
    if t.device != input.device:
        _fail(op, f"{name} must be on the device of input ({input.device}), got {t.device}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        _fail(op, f"{name} must have shape {list(shape)}, got {list(t.shape)}")


def _has_values(t: Tensor) -> bool:
    """True for a plain CPU tensor whose values may be read: a call that reaches a fake
    kernel with one (say, meta input and a real batch_sizes) gets the value checks too.
    A FakeTensor (torch.compile / export) has no values."""
    return type(t) is Tensor and t.device.type == "cpu"


def _check_batch_sizes(op: str, batch_sizes, rows: int) -> Optional[int]:
    """batch_sizes' checks; returns N (batch_sizes[0]) when its values can be read."""
    if (not isinstance(batch_sizes, Tensor) or batch_sizes.dim() != 1
            or batch_sizes.dtype != torch.int64 or batch_sizes.device.type != "cpu"):
        _fail(op, f"batch_sizes must be a 1-D int64 CPU tensor, got a {batch_sizes.dim()}-D "
                  f"{_dtype_name(batch_sizes.dtype)} tensor on {batch_sizes.device}")
    if batch_sizes.numel() == 0:
        _fail(op, "batch_sizes must not be empty")
    if not _has_values(batch_sizes):
        return None
    sizes = batch_sizes.tolist()
    total = 0
    for t, b in enumerate(sizes):
        if b <= 0:
            _fail(op, f"batch_sizes must be positive, got batch_sizes[{t}] = {b}")
        if t > 0 and b > sizes[t - 1]:
            _fail(op, f"batch_sizes must be non-increasing, got batch_sizes[{t}] = {b} > "
                      f"batch_sizes[{t - 1}] = {sizes[t - 1]}")
        total += b
        if total >= 2**63:
            _fail(op, f"sum(batch_sizes) overflows int64 at batch_sizes[{t}]")
    if total != rows:
        _fail(op, f"sum(batch_sizes) = {total} must equal the number of rows of the packed "
                  f"input, got {rows}")
    return sizes[0]


def _validate_rnn(op, input, hx, weights, batch_sizes, dropout_masks, mode, has_biases,
                  num_layers, proj_size, bidirectional):
    """check_rnn_args (csrc/rnn_args.cpp), in its order. Returns (G, H, P, D, N, rows)."""
    _cells.check_mode(mode)
    if num_layers < 1:
        _fail(op, f"num_layers must be >= 1, got {num_layers}")
    if proj_size != 0 and mode != "LSTM":
        _fail(op, f"proj_size must be 0 for mode {mode}, got {proj_size}")
    if proj_size < 0:
        _fail(op, f"proj_size must be >= 0, got {proj_size}")
    _check_float(op, "input", input)
    packed = batch_sizes is not None
    if packed and input.dim() != 2:
        _fail(op, "packed input (with batch_sizes) must be 2-D (sum of lengths, H_in), got "
                  f"{input.dim()}-D tensor of shape {list(input.shape)}")
    if not packed and input.dim() != 3:
        _fail(op, f"input must be 3-D (L, N, H_in), got {input.dim()}-D tensor of shape "
                  f"{list(input.shape)}")

    # Weights: count, then G*H and P from weight_hh_l0. (The C++ prints bools as 0/1.)
    D = 2 if bidirectional else 1
    G = _cells.gates(mode)
    expected = _cells.weight_count(num_layers, bidirectional, has_biases, proj_size)
    if len(weights) != expected:
        _fail(op, f"expected {expected} weight tensors for mode={mode}, num_layers={num_layers}"
                  f", bidirectional={int(bidirectional)}, has_biases={int(has_biases)}, "
                  f"proj_size={proj_size}, got {len(weights)}")
    w_hh = weights[1]
    if not isinstance(w_hh, Tensor) or w_hh.dim() != 2 or w_hh.shape[0] % G != 0:
        got = list(w_hh.shape) if isinstance(w_hh, Tensor) else "undefined"
        _fail(op, f"weights[1] (weight_hh_l0) must be a 2-D tensor ({G}*H, "
                  f"{'proj_size' if proj_size > 0 else 'H'}), got {got}")
    _, H, P = _cells.sizes(mode, weights, proj_size)
    if proj_size > 0 and proj_size >= H:
        _fail(op, f"proj_size must be >= 0 and < hidden_size ({H}), got {proj_size}")
    I = input.shape[-1]  # noqa: E741

    rows = input.shape[0] if packed else input.shape[0] * input.shape[1]
    if packed:
        # N = batch_sizes[0]; when a fake batch_sizes has no values, hx[0]'s batch size
        # stands in for it (the real kernels check it against batch_sizes[0]).
        N = _check_batch_sizes(op, batch_sizes, rows)
    else:
        torch._check(input.shape[0] > 0, lambda: "Expected sequence length to be larger than 0 in RNN")
        N = input.shape[1]

    S = _cells.states(mode)
    if len(hx) != S:
        _fail(op, f"hx must hold {S} tensor{'s' if S == 2 else ''} for mode {mode} "
                  f"({_cells.state_names(mode)}), got {len(hx)}")
    shapes = _cells.hidden_shapes(mode, num_layers, bidirectional, 0, H, P)
    for k, h in enumerate(hx):
        name = f"hx[{k}]"
        _check_float(op, name, h)
        _check_like(op, name, h, input, None)
        if N is None:
            if h.dim() != 3:
                _fail(op, f"{name} must have shape [{num_layers * D}, batch_sizes[0], "
                          f"{shapes[k][2]}], got {list(h.shape)}")
            N = h.shape[1]
        _check_like(op, name, h, input, (shapes[k][0], N, shapes[k][2]))

    names = _cells.weight_names(num_layers, bidirectional, has_biases, proj_size)
    for i, (w, shape) in enumerate(zip(weights, _cells.weight_shapes(
            mode, I, H, num_layers, bidirectional, has_biases, proj_size))):
        _check_like(op, f"weights[{i}] ({names[i]})", w, input, shape)

    if dropout_masks is not None:
        _check_like(op, "dropout_masks", dropout_masks, input,
                    (num_layers - 1, rows, D * P))
    return G, H, P, D, N, rows


def _validate_rnn_backward(input, grad_output, grad_h_n, output, workspace, mode, num_layers,
                           bidirectional, H, P, N, rows, packed):
    """check_rnn_backward_args (csrc/rnn_args.cpp), in its order."""
    op = "rnnfast._rnn_backward"
    out_shape = _cells.output_shape(input.shape, packed, bidirectional, P)
    _check_like(op, "output", output, input, out_shape)
    shapes = _cells.workspace_shapes(mode, num_layers, bidirectional, rows, H, P, train=True)
    if len(workspace) < len(shapes) and mode in ("LSTM", "GRU"):
        _fail(op, "the workspace has no saved gates (rnn_forward ran with train=False)")
    if len(workspace) != len(shapes):
        _fail(op, f"workspace must hold {len(shapes)} tensors for mode {mode}, "
                  f"got {len(workspace)}")
    for k, (w, shape) in enumerate(zip(workspace, shapes)):
        _check_like(op, f"workspace[{k}]", w, input, shape)
    if grad_output is not None:
        _check_like(op, "grad_output", grad_output, input, out_shape)
    S = _cells.states(mode)
    if len(grad_h_n) != S:
        _fail(op, f"grad_h_n must hold {S} entries for mode {mode}, got {len(grad_h_n)}")
    for k, (g, shape) in enumerate(zip(grad_h_n, _cells.hidden_shapes(
            mode, num_layers, bidirectional, N, H, P))):
        if g is not None:
            _check_like(op, f"grad_h_n[{k}]", g, input, shape)


def _validate_cell(op, input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity):
    if nonlinearity not in ("tanh", "relu"):
        _fail("rnnfast", f"nonlinearity must be 'tanh' or 'relu', got '{nonlinearity}'")
    if not input.is_floating_point():
        _fail(op, f"input must be a floating-point tensor, got {input.dtype}")
    if input.dim() != 2:
        _fail(op, f"input must be 2-D (N, H_in), got {input.dim()}-D tensor of shape {list(input.shape)}")
    if w_hh.dim() != 2:
        _fail(op, "w_hh must be a 2-D tensor (H, H)")
    N, I, H = input.shape[0], input.shape[1], w_hh.shape[0]
    _check_like(op, "hx", hx, input, (N, H))
    _check_like(op, "w_ih", w_ih, input, (H, I))
    _check_like(op, "w_hh", w_hh, input, (H, H))
    if (b_ih is None) != (b_hh is None):
        _fail(op, "b_ih and b_hh must both be given or both be None")
    if b_ih is not None:
        _check_like(op, "b_ih", b_ih, input, (H,))
        _check_like(op, "b_hh", b_hh, input, (H,))
    return N, I, H


# ---------------------------------------------------------------------------
# Fake kernels: output metadata from input metadata only (never from the device).
# ---------------------------------------------------------------------------


@torch.library.register_fake("rnnfast::rnn_forward")
def _rnn_forward_fake(
    input, hx, weights, batch_sizes, dropout_masks, mode, has_biases, num_layers, proj_size,
    bidirectional, train,
):
    _, H, P, _, N, rows = _validate_rnn("rnnfast.rnn_forward", input, hx, weights, batch_sizes,
                                        dropout_masks, mode, has_biases, num_layers, proj_size,
                                        bidirectional)
    packed = batch_sizes is not None
    output = input.new_empty(_cells.output_shape(input.shape, packed, bidirectional, P))
    h_n = [input.new_empty(shape)
           for shape in _cells.hidden_shapes(mode, num_layers, bidirectional, N, H, P)]
    workspace = [input.new_empty(shape) for shape in _cells.workspace_shapes(
        mode, num_layers, bidirectional, rows, H, P, train)]
    return output, h_n, workspace


@torch.library.register_fake("rnnfast::_rnn_backward")
def _rnn_backward_fake(
    grad_output, grad_h_n, input, hx, weights, batch_sizes, dropout_masks, output, workspace,
    mode, has_biases, num_layers, proj_size, bidirectional, output_mask=(True, True),
):
    _, H, P, _, N, rows = _validate_rnn("rnnfast._rnn_backward", input, hx, weights,
                                        batch_sizes, dropout_masks, mode, has_biases,
                                        num_layers, proj_size, bidirectional)
    _validate_rnn_backward(input, grad_output, grad_h_n, output, workspace, mode, num_layers,
                           bidirectional, H, P, N, rows, batch_sizes is not None)
    return (
        torch.empty_like(input, memory_format=torch.contiguous_format) if output_mask[0] else None,
        [torch.empty_like(h, memory_format=torch.contiguous_format) for h in hx]
        if output_mask[1] else [],
        [torch.empty_like(w, memory_format=torch.contiguous_format) for w in weights],
    )


@torch.library.register_fake("rnnfast::rnn_cell_forward")
def _rnn_cell_forward_fake(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity):
    _validate_cell("rnnfast.rnn_cell_forward", input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity)
    return input.new_empty(input.shape[0], w_hh.shape[0])


@torch.library.register_fake("rnnfast::_rnn_cell_backward")
def _rnn_cell_backward_fake(grad_h, input, hx, w_ih, w_hh, h, has_bias, nonlinearity,
                            output_mask=(True, True)):
    op = "rnnfast._rnn_cell_backward"
    N, _, H = _validate_cell(op, input, hx, w_ih, w_hh, None, None, nonlinearity)
    _check_like(op, "grad_h", grad_h, input, (N, H))
    _check_like(op, "h", h, input, (N, H))
    H = w_hh.shape[0]
    return (
        input.new_empty(input.shape) if output_mask[0] else None,
        hx.new_empty(hx.shape) if output_mask[1] else None,
        w_ih.new_empty(w_ih.shape),
        w_hh.new_empty(w_hh.shape),
        input.new_empty(H if has_bias else 0),
    )


# ---------------------------------------------------------------------------
# Autograd of rnn_forward
# ---------------------------------------------------------------------------


def _rnn_forward_setup(ctx, inputs, output):
    (input, hx, weights, batch_sizes, dropout_masks, mode, has_biases, num_layers, proj_size,
     bidirectional, _train) = inputs
    out, _h_n, workspace = output
    ctx.attrs = (mode, has_biases, num_layers, proj_size, bidirectional)
    ctx.n_states = len(hx)
    ctx.n_workspace = len(workspace)
    ctx.save_for_backward(input, *hx, batch_sizes, dropout_masks, out, *workspace, *weights)


def _rnn_forward_saved(ctx):
    """What _rnn_forward_setup saved: (input, hx, batch_sizes, masks, output, workspace,
    weights), the lists as lists."""
    S, W = ctx.n_states, ctx.n_workspace
    saved = ctx.saved_tensors
    input, hx = saved[0], list(saved[1 : 1 + S])
    batch_sizes, masks, out = saved[1 + S : 4 + S]
    workspace, weights = list(saved[4 + S : 4 + S + W]), list(saved[4 + S + W :])
    return input, hx, batch_sizes, masks, out, workspace, weights


# rnn_forward's autograd kernel is in C++ (csrc/autograd.cpp), the same formula:
# a streaming or cell call runs the op once per step, and a Python formula would cost
# as much as a small step. _rnn_forward_setup / _rnn_forward_saved serve the
# torch.func path (functional._RNNForward).


# Double backward. _rnn_backward's `output` and `workspace` arguments are always
# rnn_forward's own outputs for the same (input, hx, weights). So the derivative of
# the first-order gradients can be taken as a *total* derivative with respect to
# input, hx and weights (recomputing the forward with the differentiable reference),
# with zero flowing into `output`/`workspace`: the chain rule through rnn_forward
# then adds nothing twice. Slow, but exact for every cell; orders above two are refused.
#
# The recomputation lives in its own opaque op, rnnfast::_rnn_double_backward, with a
# fake kernel: torch.compile / AOT autograd then trace one node instead of the whole
# unrolled reference loop, which could not be traced at all for packed input (the
# loop reads the values of batch_sizes).


@torch.library.custom_op("rnnfast::_rnn_double_backward", mutates_args=())
def _rnn_double_backward(
    gg_input: Optional[Tensor], gg_hx: List[Optional[Tensor]], gg_weights: List[Optional[Tensor]],
    grad_output: Optional[Tensor], grad_h_n: List[Optional[Tensor]], input: Tensor,
    hx: List[Tensor], weights: List[Tensor], batch_sizes: Optional[Tensor],
    dropout_masks: Optional[Tensor], mode: str, has_biases: bool, num_layers: int,
    proj_size: int, bidirectional: bool,
) -> Tuple[Tensor, List[Tensor], Tensor, List[Tensor], List[Tensor]]:
    """Derivatives of <_rnn_backward(...), (gg_input, gg_hx, gg_weights)> with respect to
    grad_output, grad_h_n, input, hx and weights (zeros where an argument is None)."""
    with _autograd_inside_kernel():
        x = input.detach().requires_grad_()
        h0 = [h.detach().requires_grad_() for h in hx]
        ws = [w.detach().requires_grad_() for w in weights]
        out, h_n = reference.rnn_forward(
            x, h0, ws, batch_sizes, dropout_masks, mode, has_biases, num_layers, proj_size,
            bidirectional,
        )
        go = grad_output if grad_output is not None else torch.zeros_like(out)
        ghn = [g if g is not None else torch.zeros_like(h) for g, h in zip(grad_h_n, h_n)]
        go = go.detach().requires_grad_()
        ghn = [g.detach().requires_grad_() for g in ghn]
        primals = [x, *h0, *ws]
        first = torch.autograd.grad((out, *h_n), primals, (go, *ghn), create_graph=True,
                                    allow_unused=True)
        pairs = [(f, g) for f, g in zip(first, [gg_input, *gg_hx, *gg_weights])
                 if f is not None and g is not None and f.requires_grad]
        wrt = [go, *ghn, *primals]
        second = [None] * len(wrt)
        if pairs:
            second = list(torch.autograd.grad([f for f, _ in pairs], wrt,
                                              [g for _, g in pairs], allow_unused=True))
    # Fresh tensors only: a custom op must not return (a view of) one of its inputs.
    fresh = [torch.zeros_like(t) if s is None else s.detach().clone() for s, t in zip(second, wrt)]
    S = len(hx)
    g_go, g_ghn, g_x = fresh[0], fresh[1 : 1 + S], fresh[1 + S]
    g_h0, g_w = fresh[2 + S : 2 + 2 * S], fresh[2 + 2 * S :]
    return g_go, g_ghn, g_x, g_h0, g_w


def _autograd_inside_kernel():
    """Re-enables autograd inside a custom op's kernel.

    The kernel runs below the Autograd dispatch keys (they are in the thread-local
    exclude set), where torch.autograd.grad would see no graph. This re-includes them,
    as torch's own higher-order ops do, and turns grad mode on.
    """
    import contextlib

    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in (torch._C.DispatchKey.AutogradFunctionality, torch._C.DispatchKey.ADInplaceOrView):
        exclude = exclude.remove(key)
    stack = contextlib.ExitStack()
    stack.enter_context(
        torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude))
    stack.enter_context(torch.enable_grad())
    return stack


@_rnn_double_backward.register_fake
def _rnn_double_backward_fake(
    gg_input, gg_hx, gg_weights, grad_output, grad_h_n, input, hx, weights, batch_sizes,
    dropout_masks, mode, has_biases, num_layers, proj_size, bidirectional,
):
    _, _, P = _cells.sizes(mode, weights, proj_size)
    out_shape = _cells.output_shape(input.shape, batch_sizes is not None, bidirectional, P)
    return (
        input.new_empty(out_shape),
        [h.new_empty(h.shape) for h in hx],
        input.new_empty(input.shape),
        [h.new_empty(h.shape) for h in hx],
        [w.new_empty(w.shape) for w in weights],
    )


def _n_args(inputs, output_mask) -> int:
    """How many gradients register_autograd expects back from a backward op's backward:
    one per argument the call kept. The dispatcher drops a trailing output_mask equal
    to its default [True, True] (setup_context sees it filled back in); the
    autograd.Functions of functional.py pass none."""
    if output_mask and list(output_mask[0]) == [True, True]:
        return len(inputs) - 1
    return len(inputs)


def _rnn_backward_setup(ctx, inputs, output):
    (grad_output, grad_h_n, input, hx, weights, batch_sizes, dropout_masks, _out, workspace,
     mode, has_biases, num_layers, proj_size, bidirectional, *output_mask) = inputs
    ctx.n_args = _n_args(inputs, output_mask)
    ctx.attrs = (mode, has_biases, num_layers, proj_size, bidirectional)
    ctx.has_go = grad_output is not None
    ctx.has_ghn = [g is not None for g in grad_h_n]
    ctx.n_states = len(hx)
    ctx.n_workspace = len(workspace)
    ctx.save_for_backward(grad_output, *grad_h_n, input, *hx, batch_sizes, dropout_masks,
                          *weights)


def _rnn_backward_double(ctx, gg_input, gg_hx, gg_weights):
    """The derivatives of _rnn_backward (saved by _rnn_backward_setup) for the cotangents
    gg_*: (g_grad_output, [g_grad_h_n], g_input, [g_hx], [g_weights]), None where
    _rnn_backward got None."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            "rnnfast: derivatives of order higher than two through rnn_forward are not supported"
        )
    S = ctx.n_states
    saved = ctx.saved_tensors
    grad_output, grad_h_n, input = saved[0], list(saved[1 : 1 + S]), saved[1 + S]
    hx = list(saved[2 + S : 2 + 2 * S])
    batch_sizes, dropout_masks = saved[2 + 2 * S : 4 + 2 * S]
    weights = list(saved[4 + 2 * S :])
    # Empty (or None) where the first backward's output_mask left grad_hx out.
    gg_hx = list(gg_hx) if gg_hx else [None] * S
    gg_weights = list(gg_weights) if gg_weights is not None else [None] * len(weights)
    g_go, g_ghn, g_x, g_h0, g_w = _lib._rnn_double_backward(
        gg_input, gg_hx, gg_weights, grad_output if ctx.has_go else None,
        [g if given else None for g, given in zip(grad_h_n, ctx.has_ghn)], input, hx, weights,
        batch_sizes, dropout_masks, *ctx.attrs,
    )
    return (g_go if ctx.has_go else None,
            [g if given else None for g, given in zip(g_ghn, ctx.has_ghn)],
            g_x, list(g_h0), list(g_w))


def _rnn_backward_backward(ctx, gg_input, gg_hx, gg_weights):
    g_go, g_ghn, g_x, g_h0, g_w = _rnn_backward_double(ctx, gg_input, gg_hx, gg_weights)
    # register_autograd treats a Tensor?[] argument holding a None as one opaque value
    # (its tensors are not autograd inputs), whose gradient must then be None.
    if not all(ctx.has_ghn):
        g_ghn = None
    grads = (g_go, g_ghn, g_x, g_h0, g_w, None, None, None, [None] * ctx.n_workspace,
             None, None, None, None, None, None)
    return grads[:ctx.n_args]


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


# rnn_cell_forward's autograd kernel is in C++ (csrc/autograd.cpp: a cell runs once per
# step, and a Python formula would cost more than a small cell). _cell_setup serves
# the torch.func path (functional._RNNCellForward).


def _cell_backward_setup(ctx, inputs, output):
    grad_h, input, hx, w_ih, w_hh, h, has_bias, nonlinearity, *output_mask = inputs
    ctx.n_args = _n_args(inputs, output_mask)
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
    dact = 1 - h * h if tanh else (h <= 0).logical_not().to(h.dtype)
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
    return (g_grad_h, g_x, g_hx, g_wi, g_wh, g_h, None, None, None)[:ctx.n_args]


torch.library.register_autograd(
    "rnnfast::_rnn_cell_backward", _cell_backward_backward, setup_context=_cell_backward_setup
)


# ---------------------------------------------------------------------------
# vmap rules: a loop over the vmapped dimension, one op call per slice.
# They make torch.vmap, torch.func transforms over the ops and gradcheck's
# check_batched_grad=True (which vmaps the backward ops over a batch of cotangents)
# work. Correct, not fast: a batched kernel would avoid the loop.
# ---------------------------------------------------------------------------


def _loop_vmap_rule(op):
    from torch.utils import _pytree as pytree

    def rule(info, in_dims, *args):
        def select(arg, dim, i):
            if isinstance(arg, (list, tuple)):
                dims = dim if isinstance(dim, (list, tuple)) else [dim] * len(arg)
                return [select(a, d, i) for a, d in zip(arg, dims)]
            return arg if dim is None or arg is None else arg.select(dim, i)

        results = [
            op(*[select(a, d, i) for a, d in zip(args, in_dims)]) for i in range(info.batch_size)
        ]
        flat, spec = zip(*[pytree.tree_flatten(r) for r in results])
        stacked = [torch.stack(ts, 0) for ts in zip(*flat)]
        out = pytree.tree_unflatten(stacked, spec[0])
        return out, pytree.tree_map(lambda _: 0, out)

    return rule


def _legacy_batched_kernel(rule):
    # gradcheck(check_batched_grad=True) still uses the legacy vmap
    # (torch._vmap_internals, dispatch key "Batched"), whose generic fallback refuses
    # ops with Tensor[] arguments. This kernel unwraps its BatchedTensors (innermost
    # level only, which is all gradcheck uses) and runs the loop rule above.
    import types

    from torch.utils import _pytree as pytree

    def kernel(*args):
        level = torch._C._vmapmode_increment_nesting() - 1  # the current legacy vmap level
        torch._C._vmapmode_decrement_nesting()
        is_batched = torch._C._functorch.is_legacy_batchedtensor
        batch_size = None

        def unwrap(arg):
            nonlocal batch_size
            if isinstance(arg, (list, tuple)):
                pairs = [unwrap(a) for a in arg]
                return [p[0] for p in pairs], [p[1] for p in pairs]
            if not isinstance(arg, Tensor) or not is_batched(arg):
                return arg, None
            physical = torch._remove_batch_dim(arg, level, 1, 0)
            batch_size = physical.shape[0]
            return physical, 0

        unwrapped, in_dims = zip(*[unwrap(a) for a in args])
        out, _ = rule(types.SimpleNamespace(batch_size=batch_size), in_dims, *unwrapped)
        return pytree.tree_map(lambda t: torch._add_batch_dim(t, 0, level), out)

    return kernel


_batched_lib = torch.library.Library("rnnfast", "IMPL")  # must stay alive: it owns the kernels
for _name in ("rnn_forward", "_rnn_backward", "rnn_cell_forward", "_rnn_cell_backward",
              "_rnn_double_backward"):
    if not hasattr(_lib, _name):
        continue
    _rule = _loop_vmap_rule(getattr(_lib, _name).default)
    torch.library.register_vmap(f"rnnfast::{_name}", _rule)
    _batched_lib.impl(_name, _legacy_batched_kernel(_rule), "Batched")
