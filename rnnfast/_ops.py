"""Fake (meta) kernels and autograd formulas of the rnnfast ops.

The ops themselves are defined in C++ (csrc/ops.cpp). Registering fake kernels lets
torch.compile / torch.export trace them; registering autograd on the ops (not on a
wrapper Function) makes every caller of torch.ops.rnnfast.* differentiable.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import reference

_lib = torch.ops.rnnfast


# ---------------------------------------------------------------------------
# Fake kernels: output metadata from input metadata only (never from the device).
# ---------------------------------------------------------------------------


def _weight_names(num_layers: int, bidirectional: bool, has_biases: bool) -> list[str]:
    """nn.RNN's names of the flat weights, as the C++ checks print them."""
    kinds = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if has_biases else [])
    return [f"{k}_l{layer}{'_reverse' if d else ''}" for layer in range(num_layers)
            for d in range(2 if bidirectional else 1) for k in kinds]


def _check_batch_sizes(op: str, batch_sizes) -> None:
    if batch_sizes is not None and batch_sizes.device.type != "cpu":
        raise RuntimeError(
            f"{op}: batch_sizes must be a 1-D int64 CPU tensor, got a {batch_sizes.dim()}-D "
            f"{batch_sizes.dtype} tensor on {batch_sizes.device}"
        )


def _check_devices(op: str, input: Tensor, weight_names=None, **named) -> None:
    """The device checks of the C++ kernels, for the fake kernels too: a call that mixes
    devices (say cpu tensors and a meta one) dispatches to the fake kernel and must fail
    there rather than return uninitialised tensors."""
    for name, value in named.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        for i, t in enumerate(items):
            if isinstance(t, Tensor) and t.device != input.device:
                label = f"{name}[{i}]" if isinstance(value, (list, tuple)) else name
                if name == "weights" and weight_names is not None:
                    label = f"weights[{i}] ({weight_names[i]})"
                raise RuntimeError(
                    f"{op}: {label} must be on the device of input ({input.device}), got {t.device}"
                )


def _fail(op: str, msg: str) -> None:
    raise RuntimeError(f"{op}: {msg}")


def _check_like(op: str, name: str, t, input: Tensor, shape) -> None:
    """Mirror of the C++ boundary checks (csrc/rnn_args.cpp): dtype, device, shape."""
    if not isinstance(t, Tensor):
        _fail(op, f"{name} must be a tensor")
    if t.dtype != input.dtype:
        _fail(op, f"{name} must have the dtype of input ({input.dtype}), got {t.dtype}")
    if t.device != input.device:
        _fail(op, f"{name} must be on the device of input ({input.device}), got {t.device}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        _fail(op, f"{name} must have shape {list(shape)}, got {list(t.shape)}")


def _validate_rnn(op, input, hx, weights, batch_sizes, dropout_masks, has_biases, num_layers,
                  nonlinearity, bidirectional):
    """The checks of check_rnn_args, for the fake (meta) kernels: a call on meta tensors
    must reject what the real kernels reject. Returns (D, H, N, rows)."""
    if nonlinearity not in ("tanh", "relu"):
        _fail("rnnfast", f"nonlinearity must be 'tanh' or 'relu', got '{nonlinearity}'")
    if num_layers < 1:
        _fail(op, f"num_layers must be >= 1, got {num_layers}")
    if not input.is_floating_point():
        _fail(op, "input must be a floating-point tensor (float16, bfloat16, float32 or "
                  f"float64), got {input.dtype}")
    packed = batch_sizes is not None
    if input.dim() != (2 if packed else 3):
        _fail(op, f"input must be {'2-D (sum of lengths, H_in)' if packed else '3-D (L, N, H_in)'}"
                  f", got {input.dim()}-D tensor of shape {list(input.shape)}")
    D = 2 if bidirectional else 1
    per = 4 if has_biases else 2
    if len(weights) != num_layers * D * per:
        _fail(op, f"expected {num_layers * D * per} weight tensors for num_layers={num_layers}, "
                  f"bidirectional={bidirectional}, has_biases={has_biases}, got {len(weights)}")
    if weights[1].dim() != 2:
        _fail(op, f"weights[1] (weight_hh_l0) must be a 2-D tensor (H, H), got {list(weights[1].shape)}")
    H = weights[1].shape[0]
    if packed:
        _check_batch_sizes(op, batch_sizes)
        if batch_sizes.dim() != 1 or batch_sizes.dtype != torch.int64:
            _fail(op, "batch_sizes must be a 1-D int64 CPU tensor")
        if batch_sizes.numel() == 0:
            _fail(op, "batch_sizes must not be empty")
        # N = batch_sizes[0], whose value a fake batch_sizes does not have: hx's batch
        # size stands in for it (the real kernels check it against batch_sizes[0]).
        if not isinstance(hx, Tensor) or hx.dim() != 3:
            _check_like(op, "hx", hx, input, None)
            _fail(op, f"hx must have shape [{num_layers * D}, batch_sizes[0], {H}], got "
                      f"{list(hx.shape)}")
        N, rows = hx.shape[1], input.shape[0]
    else:
        torch._check(input.shape[0] > 0, lambda: "Expected sequence length to be larger than 0 in RNN")
        N, rows = input.shape[1], input.shape[0] * input.shape[1]
    _check_like(op, "hx", hx, input, (num_layers * D, N, H))
    names = _weight_names(num_layers, bidirectional, has_biases)
    for i, w in enumerate(weights):
        layer, k = i // (D * per), i % per
        in_size = input.shape[-1] if layer == 0 else D * H
        shape = [(H, in_size), (H, H), (H,), (H,)][k]
        _check_like(op, f"weights[{i}] ({names[i]})", w, input, shape)
    if dropout_masks is not None:
        _check_like(op, "dropout_masks", dropout_masks, input, (num_layers - 1, rows, D * H))
    return D, H, N, rows


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


@torch.library.register_fake("rnnfast::rnn_forward")
def _rnn_forward_fake(
    input, hx, weights, batch_sizes, dropout_masks, has_biases, num_layers, nonlinearity,
    bidirectional,
):
    D, H, N, rows = _validate_rnn("rnnfast.rnn_forward", input, hx, weights, batch_sizes,
                                  dropout_masks, has_biases, num_layers, nonlinearity,
                                  bidirectional)
    N = hx.shape[1]
    if batch_sizes is not None:
        output = input.new_empty(rows, D * H)
    else:
        output = input.new_empty(input.shape[0], input.shape[1], D * H)
    h_n = input.new_empty(num_layers * D, N, H)
    workspace = input.new_empty(num_layers - 1, rows, D * H)
    return output, h_n, workspace


@torch.library.register_fake("rnnfast::_rnn_backward")
def _rnn_backward_fake(
    grad_output, grad_h_n, input, hx, weights, batch_sizes, dropout_masks, output, workspace,
    has_biases, num_layers, nonlinearity, bidirectional,
):
    op = "rnnfast._rnn_backward"
    D, H, N, rows = _validate_rnn(op, input, hx, weights, batch_sizes, dropout_masks,
                                  has_biases, num_layers, nonlinearity, bidirectional)
    out_shape = (rows, D * H) if batch_sizes is not None else (input.shape[0], input.shape[1], D * H)
    _check_like(op, "output", output, input, out_shape)
    _check_like(op, "workspace", workspace, input, (num_layers - 1, rows, D * H))
    if grad_output is not None:
        _check_like(op, "grad_output", grad_output, input, out_shape)
    if grad_h_n is not None:
        _check_like(op, "grad_h_n", grad_h_n, input, tuple(hx.shape))
    _check_devices(op, input,
                   _weight_names(num_layers, bidirectional, has_biases),
                   grad_output=grad_output, grad_h_n=grad_h_n,
                   hx=hx, weights=weights, dropout_masks=dropout_masks, output=output,
                   workspace=workspace)
    return (
        torch.empty_like(input, memory_format=torch.contiguous_format),
        torch.empty_like(hx, memory_format=torch.contiguous_format),
        [torch.empty_like(w, memory_format=torch.contiguous_format) for w in weights],
    )


@torch.library.register_fake("rnnfast::rnn_cell_forward")
def _rnn_cell_forward_fake(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity):
    _validate_cell("rnnfast.rnn_cell_forward", input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity)
    return input.new_empty(input.shape[0], w_hh.shape[0])


@torch.library.register_fake("rnnfast::_rnn_cell_backward")
def _rnn_cell_backward_fake(grad_h, input, hx, w_ih, w_hh, h, has_bias, nonlinearity):
    op = "rnnfast._rnn_cell_backward"
    N, _, H = _validate_cell(op, input, hx, w_ih, w_hh, None, None, nonlinearity)
    _check_like(op, "grad_h", grad_h, input, (N, H))
    _check_like(op, "h", h, input, (N, H))
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
#
# The recomputation lives in its own opaque op, rnnfast::_rnn_double_backward, with a
# fake kernel: torch.compile / AOT autograd then trace one node instead of the whole
# unrolled reference loop, which could not be traced at all for packed input (the
# loop reads the values of batch_sizes).


@torch.library.custom_op("rnnfast::_rnn_double_backward", mutates_args=())
def _rnn_double_backward(
    gg_input: Optional[Tensor], gg_hx: Optional[Tensor], gg_weights: List[Optional[Tensor]],
    grad_output: Optional[Tensor], grad_h_n: Optional[Tensor], input: Tensor, hx: Tensor,
    weights: List[Tensor], batch_sizes: Optional[Tensor], dropout_masks: Optional[Tensor],
    has_biases: bool, num_layers: int, nonlinearity: str, bidirectional: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, List[Tensor]]:
    """Derivatives of <_rnn_backward(...), (gg_input, gg_hx, gg_weights)> with respect to
    grad_output, grad_h_n, input, hx and weights (zeros where an argument is None)."""
    with _autograd_inside_kernel():
        x = input.detach().requires_grad_()
        h0 = hx.detach().requires_grad_()
        ws = [w.detach().requires_grad_() for w in weights]
        out, h_n = reference.rnn_forward(
            x, h0, ws, batch_sizes, dropout_masks, has_biases, num_layers, nonlinearity,
            bidirectional,
        )
        go = grad_output if grad_output is not None else torch.zeros_like(out)
        ghn = grad_h_n if grad_h_n is not None else torch.zeros_like(h_n)
        go = go.detach().requires_grad_()
        ghn = ghn.detach().requires_grad_()
        primals = [x, h0, *ws]
        first = torch.autograd.grad((out, h_n), primals, (go, ghn), create_graph=True,
                                    allow_unused=True)
        pairs = [(f, g) for f, g in zip(first, [gg_input, gg_hx, *gg_weights])
                 if f is not None and g is not None and f.requires_grad]
        wrt = [go, ghn, *primals]
        second = [None] * len(wrt)
        if pairs:
            second = list(torch.autograd.grad([f for f, _ in pairs], wrt,
                                              [g for _, g in pairs], allow_unused=True))
    # Fresh tensors only: a custom op must not return (a view of) one of its inputs.
    g_go, g_ghn, g_x, g_h0, *g_w = [
        torch.zeros_like(t) if s is None else s.detach().clone() for s, t in zip(second, wrt)
    ]
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


def _forward_shapes(input, hx, weights, batch_sizes, bidirectional):
    """Shapes of rnn_forward's output and h_n."""
    D = 2 if bidirectional else 1
    H = weights[1].shape[0]
    if batch_sizes is not None:
        return (input.shape[0], D * H), tuple(hx.shape)
    return (input.shape[0], input.shape[1], D * H), tuple(hx.shape)


@_rnn_double_backward.register_fake
def _rnn_double_backward_fake(
    gg_input, gg_hx, gg_weights, grad_output, grad_h_n, input, hx, weights, batch_sizes,
    dropout_masks, has_biases, num_layers, nonlinearity, bidirectional,
):
    out_shape, _ = _forward_shapes(input, hx, weights, batch_sizes, bidirectional)
    return (
        input.new_empty(out_shape),
        hx.new_empty(hx.shape),
        input.new_empty(input.shape),
        hx.new_empty(hx.shape),
        [w.new_empty(w.shape) for w in weights],
    )


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
    g_go, g_ghn, g_x, g_h0, g_w = _lib._rnn_double_backward(
        gg_input, gg_hx, list(gg_weights) if gg_weights is not None else [None] * len(weights),
        grad_output if ctx.has_go else None, grad_h_n if ctx.has_ghn else None, input, hx,
        weights, batch_sizes, dropout_masks, *ctx.attrs,
    )
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


# rnn_cell_forward's autograd kernel is in C++ (csrc/autograd.cpp: a cell runs once per
# step, and a Python formula would cost more than a small cell). _cell_setup serves
# the torch.func path (functional._RNNCellForward).


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
    return g_grad_h, g_x, g_hx, g_wi, g_wh, g_h, None, None


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
            return arg if dim is None else arg.select(dim, i)

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
