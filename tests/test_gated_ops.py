"""The LSTM / GRU ops and modules with PyTorch's tooling.

Specification:
  * Op boundary: torch.ops.rnnfast.rnn_forward / _rnn_backward reject every bad
    argument of an LSTM / GRU call with a RuntimeError naming it (bad mode, wrong number
    of states, wrong state / weight_hr / gate-row shapes, proj_size for GRU or >= H,
    a backward given the workspace of a train=False forward), on the CPU and, through
    the fake kernels, on the meta device alike.
  * torch.library.opcheck passes for each mode (dense, packed, dropout masks, N=0; with
    and without requires_grad), for both ops, and for _rnn_backward with an output mask.
  * Output mask: _rnn_backward leaves out grad_input (None) and grad_hx (an empty list)
    when asked to, with every other gradient bitwise unchanged; the autograd kernels of
    the modules (sequence and step cells) ask for exactly the gradients whose inputs
    require grad; a gradient penalty on the weights alone (double backward through a
    masked backward) equals torch.nn's.
  * cell_step (one step of a one-layer cell on 2-D tensors, the step cells' op) equals
    rnn_forward's h_n on the same step bitwise, with the same gradients; rejects input
    or states that are not 2-D naming them; opcheck passes.
  * float64 gradcheck and gradgradcheck pass through rnnfast.LSTM (with and without
    projections) and rnnfast.GRU: dense, bidirectional and packed.
  * torch.compile(fullgraph=True) of rnnfast.LSTM / GRU: one graph holding
    rnnfast.rnn_forward, a training step (input without grad) equal to eager, on
    aot_eager and inductor; packed input compiles too.
  * torch.func.grad and vmap over the modules (per-sample gradients) match torch's
    gradients (which nn.GRU / nn.LSTM cannot vmap).
  * state_dict loads both ways between torch and rnnfast (projection mismatches fail with
    torch's message); rnnfast.convert / to_torch swap all four classes; deepcopy and
    torch.save / torch.load of whole modules keep working modules.
  * On a CUDA tensor, LSTM and GRU run the CUDA kernels (no silent copy to the CPU).
"""

from __future__ import annotations

import copy
import io
import re

import pytest
import torch
import torch._dynamo.testing
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call, grad, vmap
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import rnnfast
from cells import (
    CELLS,
    GATED,
    GATED_STEP,
    MODES,
    PROJ,
    is_lstm,
    make_pair,
    map_states,
    random_cell_hx,
    random_hx,
    random_input,
    result_tensors,
    states,
)
from helpers import op_inputs, randn, seed_per_test  # noqa: F401  (autouse fixture)

ops = torch.ops.rnnfast
F64 = dict(atol=1e-10, rtol=0)


def _proj(cell):
    return PROJ if cell == "lstm_proj" else 0


# ---------------------------------------------------------------------------
# Op boundary validation
# ---------------------------------------------------------------------------

NL, H = 2, 4  # the valid calls below: 2 layers, hidden size 4, bidirectional, with biases


def _forward_call(cell, train=True):
    """A valid rnn_forward call of `cell` as a dict of its arguments."""
    mode, proj = MODES[cell], _proj(cell)
    x, hx, weights, batch_sizes, masks = op_inputs(mode, False, True, NL, True, proj,
                                                   torch.float32, masks=True, H=H)
    return dict(input=x, hx=hx, weights=weights, batch_sizes=batch_sizes, dropout_masks=masks,
                mode=mode, has_biases=True, num_layers=NL, proj_size=proj, bidirectional=True,
                train=train)


def _backward_call(cell, train=True):
    """A valid _rnn_backward call, after a forward with the given train flag."""
    a = _forward_call(cell, train)
    out, h_n, ws = ops.rnn_forward(**a)
    del a["train"]
    return dict(a, grad_output=torch.randn_like(out), grad_h_n=[torch.randn_like(h) for h in h_n],
                output=out, workspace=ws)


def _set(name, fn):
    def mutate(a):
        a[name] = fn(a[name])
    return mutate


def _set_item(name, i, fn):
    def mutate(a):
        a[name] = list(a[name])
        a[name][i] = fn(a[name][i])
    return mutate


def _zeros(*shape):
    return lambda _: torch.zeros(*shape)


# The calls are 2-layer bidirectional with biases, N=3, T=5 (15 rows), I=3, H=4, P=2.
# An LSTM with proj has 5 weights per layer and direction (w_ih, w_hh, b_ih, b_hh, w_hr):
# weights[4] is weight_hr_l0, [6] weight_hh_l0_reverse, [9] weight_hr_l0_reverse,
# [10] weight_ih_l1. Without proj: 4 (G*H = 16 rows for LSTM, 12 for GRU).
# (id, cell, op ("fwd" / "bwd"), train of the forward, mutate(args), regex)
OP_ERRORS = [
    ("mode-lowercase", "lstm", "fwd", True, _set("mode", lambda m: "lstm"),
     re.escape("rnnfast: mode must be 'RNN_TANH', 'RNN_RELU', 'LSTM' or 'GRU', got 'lstm'")),
    ("mode-unknown", "gru", "fwd", True, _set("mode", lambda m: "GRU2"),
     re.escape("rnnfast: mode must be 'RNN_TANH', 'RNN_RELU', 'LSTM' or 'GRU', got 'GRU2'")),
    ("mode-bwd", "gru", "bwd", True, _set("mode", lambda m: "gru"),
     re.escape("rnnfast: mode must be 'RNN_TANH', 'RNN_RELU', 'LSTM' or 'GRU', got 'gru'")),
    ("lstm-one-state", "lstm", "fwd", True, _set("hx", lambda hx: hx[:1]),
     r"hx must hold 2 tensors.*got 1"),
    ("lstm-three-states", "lstm", "fwd", True, _set("hx", lambda hx: hx + hx[1:]),
     r"hx must hold 2 tensors.*got 3"),
    ("gru-two-states", "gru", "fwd", True, _set("hx", lambda hx: hx + hx),
     r"hx must hold 1 tensor.*got 2"),
    ("lstm-c0-shape", "lstm", "fwd", True, _set_item("hx", 1, _zeros(4, 3, 5)),
     r"hx\[1\] must have shape \[4, 3, 4\], got \[4, 3, 5\]"),
    ("lstm-c0-dtype", "lstm", "fwd", True, _set_item("hx", 1, lambda c: c.double()),
     r"hx\[1\] must have the dtype of input"),
    ("proj-h0-is-H-wide", "lstm_proj", "fwd", True, _set_item("hx", 0, _zeros(4, 3, 4)),
     r"hx\[0\] must have shape \[4, 3, 2\], got \[4, 3, 4\]"),
    ("proj-c0-is-P-wide", "lstm_proj", "fwd", True, _set_item("hx", 1, _zeros(4, 3, 2)),
     r"hx\[1\] must have shape \[4, 3, 4\], got \[4, 3, 2\]"),
    ("proj-w_hr-shape", "lstm_proj", "fwd", True, _set_item("weights", 4, _zeros(2, 5)),
     r"weights\[4\] \(weight_hr_l0\) must have shape \[2, 4\], got \[2, 5\]"),
    ("proj-w_hr-reverse-shape", "lstm_proj", "fwd", True, _set_item("weights", 9, _zeros(4, 4)),
     r"weights\[9\] \(weight_hr_l0_reverse\) must have shape \[2, 4\]"),
    ("proj-w_hh-is-H-wide", "lstm_proj", "fwd", True, _set_item("weights", 6, _zeros(16, 4)),
     r"weights\[6\] \(weight_hh_l0_reverse\) must have shape \[16, 2\]"),
    ("proj-w_ih-layer1-width", "lstm_proj", "fwd", True, _set_item("weights", 10, _zeros(16, 8)),
     r"weights\[10\] \(weight_ih_l1\) must have shape \[16, 4\]"),
    ("proj-w_hr-missing", "lstm_proj", "fwd", True, _set("weights", lambda w: w[:4] + w[5:]),
     r"expected 20 weight tensors.*got 19"),
    ("proj-size-0-with-w_hr", "lstm_proj", "fwd", True, _set("proj_size", lambda p: 0),
     r"expected 16 weight tensors.*got 20"),
    ("proj-size-equal-H", "lstm_proj", "fwd", True, _set("proj_size", lambda p: 4),
     r"proj_size must be .*< hidden_size \(4\), got 4"),
    ("proj-size-negative", "lstm", "fwd", True, _set("proj_size", lambda p: -1),
     r"proj_size must be >= 0.*got -1"),
    ("proj-size-for-gru", "gru", "fwd", True, _set("proj_size", lambda p: 2),
     r"proj_size must be 0 for mode GRU, got 2"),
    ("proj-size-for-rnn", "rnn_tanh", "fwd", True, _set("proj_size", lambda p: 1),
     r"proj_size must be 0 for mode RNN_TANH, got 1"),
    ("lstm-w_ih-elman-rows", "lstm", "fwd", True, _set_item("weights", 0, _zeros(4, 3)),
     r"weights\[0\] \(weight_ih_l0\) must have shape \[16, 3\], got \[4, 3\]"),
    ("gru-b_hh-lstm-rows", "gru", "fwd", True, _set_item("weights", 3, _zeros(16)),
     r"weights\[3\] \(bias_hh_l0\) must have shape \[12\], got \[16\]"),
    ("gru-w_hh-rows-not-multiple", "gru", "fwd", True, _set_item("weights", 1, _zeros(11, 4)),
     r"weights\[1\] \(weight_hh_l0\)"),
    ("proj-masks-H-wide", "lstm_proj", "fwd", True, _set("dropout_masks", _zeros(1, 15, 8)),
     r"dropout_masks must have shape \[1, 15, 4\]"),
    ("lstm-bwd-eval-workspace", "lstm", "bwd", False, lambda a: None,
     re.escape("rnnfast._rnn_backward: the workspace has no saved gates "
               "(rnn_forward ran with train=False)")),
    ("gru-bwd-eval-workspace", "gru", "bwd", False, lambda a: None,
     re.escape("rnnfast._rnn_backward: the workspace has no saved gates "
               "(rnn_forward ran with train=False)")),
    ("lstm-bwd-workspace-gates-shape", "lstm", "bwd", True,
     _set_item("workspace", 1, _zeros(2, 15, 24)), r"workspace\[1\] must have shape \[2, 15, 32\]"),
    ("gru-bwd-workspace-extra", "gru", "bwd", True, _set("workspace", lambda w: w + w[:1]),
     r"workspace must hold 3 tensors.*got 4"),
    ("lstm-bwd-one-grad-state", "lstm", "bwd", True, _set("grad_h_n", lambda g: g[:1]),
     r"grad_h_n must hold 2 entries.*got 1"),
    ("lstm-bwd-grad-c_n-shape", "lstm", "bwd", True, _set_item("grad_h_n", 1, _zeros(4, 3, 5)),
     r"grad_h_n\[1\] must have shape \[4, 3, 4\]"),
    ("proj-bwd-grad-h_n-H-wide", "lstm_proj", "bwd", True,
     _set_item("grad_h_n", 0, _zeros(4, 3, 4)), r"grad_h_n\[0\] must have shape \[4, 3, 2\]"),
    ("proj-bwd-output-H-wide", "lstm_proj", "bwd", True, _set("output", _zeros(5, 3, 8)),
     r"output must have shape \[5, 3, 4\]"),
    ("lstm-bwd-one-hx-state", "lstm", "bwd", True, _set("hx", lambda hx: hx[:1]),
     r"hx must hold 2 tensors.*got 1"),
]


def _call(op, args):
    return (ops.rnn_forward if op == "fwd" else ops._rnn_backward)(**args)


def _to_meta(value):
    if isinstance(value, (list, tuple)):
        return [_to_meta(v) for v in value]
    return value.to("meta") if isinstance(value, torch.Tensor) else value


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("cell,op,train,mutate,pattern", [c[1:] for c in OP_ERRORS],
                         ids=[c[0] for c in OP_ERRORS])
def test_op_rejects_a_bad_argument_naming_it(cell, op, train, mutate, pattern, device):
    """One bad argument in an otherwise valid call: a RuntimeError naming it, from the
    CPU kernel and from the fake kernel (meta tensors) alike."""
    args = _forward_call(cell, train) if op == "fwd" else _backward_call(cell, train)
    if op == "fwd" or train:
        _call(op, args)  # the unmodified call is valid
    mutate(args)
    if device == "meta":  # batch_sizes stays on the CPU, as the schema requires
        args = {k: v if k == "batch_sizes" else _to_meta(v) for k, v in args.items()}
    with pytest.raises(RuntimeError, match=pattern):
        result = _call(op, args)
        shapes = [tuple(t.shape) for t in torch.utils._pytree.tree_leaves(result)
                  if isinstance(t, torch.Tensor)]
        pytest.fail(f"accepted; returned shapes {shapes}")


@pytest.mark.parametrize("cell", GATED)
def test_train_false_forward_keeps_only_the_layer_outputs(cell):
    """train=False: the same output and states, a one-element workspace; train=True
    also keeps the activated gates and c (LSTM) / W_hn h + b_hn (GRU)."""
    a = _forward_call(cell, train=True)
    out, h_n, ws = ops.rnn_forward(**a)
    out_eval, h_n_eval, ws_eval = ops.rnn_forward(**dict(a, train=False))
    assert torch.equal(out, out_eval)
    assert all(torch.equal(p, q) for p, q in zip(h_n, h_n_eval, strict=True))
    assert len(ws) == 3 and len(ws_eval) == 1
    assert torch.equal(ws[0], ws_eval[0])
    G = 4 if is_lstm(cell) else 3
    assert ws[1].shape == (NL, 15, 2 * G * H) and ws[2].shape == (NL, 15, 2 * H)
    # The LSTM workspace's c at the last step of layer 0, forward direction, is c_n.
    if is_lstm(cell):
        c_last = ws[2][0, 12:15, :H]
        assert torch.equal(c_last, h_n[1][0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cell", GATED)
def test_cuda_tensors_run_on_cuda(cell):
    """LSTM / GRU on CUDA tensors run rnnfast's CUDA kernels (never a silent copy to the
    CPU): the results live on the GPU and agree with the CPU op."""
    a = _forward_call(cell)
    c = {k: (v.cuda() if isinstance(v, torch.Tensor) and k != "batch_sizes" else
             [t.cuda() for t in v] if isinstance(v, list) else v) for k, v in a.items()}
    out, h_n, _ = ops.rnn_forward(**a)
    out_c, h_n_c, ws_c = ops.rnn_forward(**c)
    assert out_c.is_cuda and all(t.is_cuda for t in (*h_n_c, *ws_c))
    torch.testing.assert_close(out_c.cpu(), out, rtol=1e-4, atol=1e-5)
    for h, h_c in zip(h_n, h_n_c, strict=True):
        torch.testing.assert_close(h_c.cpu(), h, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# opcheck
# ---------------------------------------------------------------------------

SAMPLES = [
    dict(packed=False, bidirectional=False, num_layers=1, has_biases=True, masks=False, N=3),
    dict(packed=True, bidirectional=True, num_layers=2, has_biases=True, masks=True, N=3),
    dict(packed=False, bidirectional=True, num_layers=3, has_biases=False, masks=False, N=3),
    dict(packed=False, bidirectional=True, num_layers=2, has_biases=True, masks=False, N=0),
]


def _sample_id(s):
    return "-".join(["packed" if s["packed"] else "dense", "bi" if s["bidirectional"] else "uni",
                     f"L{s['num_layers']}", "bias" if s["has_biases"] else "nobias"]
                    + (["masks"] if s["masks"] else []) + [f"N{s['N']}"])


def _opcheck(op, args):
    result = torch.library.opcheck(op, args)
    assert all(v == "SUCCESS" for v in result.values()), result


def _sample_args(cell, sample, requires_grad, seed=0):
    mode, proj = MODES[cell], _proj(cell)
    x, hx, weights, batch_sizes, masks = op_inputs(
        mode, sample["packed"], sample["bidirectional"], sample["num_layers"],
        sample["has_biases"], proj, masks=sample["masks"], seed=seed, N=sample["N"])
    x, *rest = [t.detach().clone().requires_grad_(requires_grad) for t in (x, *hx, *weights)]
    hx, weights = rest[:len(hx)], rest[len(hx):]
    return (x, hx, weights, batch_sizes, masks, mode, sample["has_biases"],
            sample["num_layers"], proj, sample["bidirectional"])


# Each opcheck costs seconds: one sample per cell with requires_grad (autograd
# registration included), rotated over the samples, and one without.
FORWARD_CHECKS = [("lstm", 1, True), ("lstm_proj", 2, True), ("gru", 3, True),
                  ("lstm", 0, False)]


@pytest.mark.parametrize("cell,sample,requires_grad", [
    (c, SAMPLES[i], g) for c, i, g in FORWARD_CHECKS],
    ids=[f"{c}-{_sample_id(SAMPLES[i])}-{'grad' if g else 'nograd'}"
         for c, i, g in FORWARD_CHECKS])
def test_opcheck_rnn_forward(cell, sample, requires_grad):
    """Schema, autograd registration, fake kernel and AOT dispatch of rnn_forward; the
    train flag follows requires_grad, as functional._sequence sets it."""
    _opcheck(ops.rnn_forward.default, (*_sample_args(cell, sample, requires_grad),
                                       requires_grad))


BACKWARD_CHECKS = [("lstm", 1, "all"), ("lstm_proj", 0, "last-state-only"),
                   ("gru", 1, "output-only")]


@pytest.mark.parametrize("cell,sample,grads", [
    (c, SAMPLES[i], g) for c, i, g in BACKWARD_CHECKS],
    ids=[f"{c}-{_sample_id(SAMPLES[i])}-{g}" for c, i, g in BACKWARD_CHECKS])
def test_opcheck_rnn_backward(cell, sample, grads):
    """_rnn_backward with every cotangent, with grad_h_n entries None, or with grad_output
    None; its autograd (the double backward) included."""
    args = _sample_args(cell, sample, False, seed=1)
    x, hx, weights, batch_sizes, masks, *attrs = args
    out, h_n, ws = ops.rnn_forward(*args, True)
    go = randn(*out.shape) if grads != "last-state-only" else None
    gh = [randn(*h.shape) if grads == "all" else None for h in h_n]
    if grads == "last-state-only":  # c_n for LSTM, h_n for GRU
        gh[-1] = randn(*h_n[-1].shape)
    leaves = [t.detach().requires_grad_() for t in (x, *hx, *weights)]
    x, hx, weights = leaves[0], leaves[1:1 + len(hx)], leaves[1 + len(hx):]
    _opcheck(ops._rnn_backward.default,
             (go, gh, x, hx, weights, batch_sizes, masks, out, ws, *attrs))


@pytest.mark.parametrize("cell", GATED_STEP)
def test_cell_step_is_one_step_of_rnn_forward(cell):
    mode = "LSTM" if is_lstm(cell) else "GRU"
    N, I, H = 3, 5, 6
    _, module = make_pair(cell, I, H, dtype=torch.float32)
    weights = [p.detach().requires_grad_() for p in module.parameters()]
    x = randn(N, I, dtype=torch.float32).requires_grad_()
    hx = [h.detach().requires_grad_() for h in states(random_cell_hx(module, N,
                                                                    dtype=torch.float32))]
    got = ops.cell_step(x, hx, weights, mode, True)
    _, h_n, _ = ops.rnn_forward(x.unsqueeze(0), [h.unsqueeze(0) for h in hx], weights, None,
                                None, mode, True, 1, 0, False, True)
    assert [g.shape for g in got] == [(N, H)] * len(hx)
    for g, e in zip(got, h_n, strict=True):
        assert torch.equal(g, e.squeeze(0))
    cotangents = [randn(N, H, dtype=torch.float32) for _ in got]
    wrt = [x, *hx, *weights]
    for a, e in zip(torch.autograd.grad(got, wrt, cotangents),
                    torch.autograd.grad([h.squeeze(0) for h in h_n], wrt, cotangents),
                    strict=True):
        assert torch.equal(a, e)


@pytest.mark.parametrize("bad,pattern", [
    ("input", r"rnnfast.cell_step: input must be 2-D \(N, H_in\), got shape \[1, 3, 5\]"),
    ("hx", r"rnnfast.cell_step: hx\[1\] must be 2-D \(N, H\), got shape \[6\]"),
])
def test_cell_step_rejects_arguments_that_are_not_2d(bad, pattern):
    _, module = make_pair("lstm_cell", 5, 6, dtype=torch.float32)
    x, h, c = randn(3, 5, dtype=torch.float32), randn(3, 6, dtype=torch.float32), \
        randn(3, 6, dtype=torch.float32)
    if bad == "input":
        x = x.unsqueeze(0)
    else:
        c = c[0]
    with pytest.raises(RuntimeError, match=pattern):
        ops.cell_step(x, [h, c], list(module.parameters()), "LSTM", False)


@pytest.mark.parametrize("cell", GATED_STEP)
def test_opcheck_cell_step(cell):
    mode = "LSTM" if is_lstm(cell) else "GRU"
    _, module = make_pair(cell, 5, 6, dtype=torch.float32)
    weights = [p.detach().requires_grad_() for p in module.parameters()]
    hx = [h.detach().requires_grad_() for h in states(random_cell_hx(module, 3,
                                                                    dtype=torch.float32))]
    _opcheck(ops.cell_step.default,
             (randn(3, 5, dtype=torch.float32).requires_grad_(), hx, weights, mode, True))


def test_opcheck_rnn_backward_with_output_mask():
    """_rnn_backward asked for the weight gradients only: schema, fake kernel (None and
    an empty list for the unwanted gradients) and AOT dispatch agree with the kernel."""
    args = _sample_args("lstm", SAMPLES[1], False, seed=2)
    x, hx, weights, batch_sizes, masks, *attrs = args
    out, h_n, ws = ops.rnn_forward(*args, True)
    _opcheck(ops._rnn_backward.default,
             (randn(*out.shape), [None] * len(h_n), x, hx, weights, batch_sizes, masks, out, ws,
              *attrs, [False, False]))


# ---------------------------------------------------------------------------
# Output mask: the backward computes only the gradients somebody wants
# ---------------------------------------------------------------------------

OUTPUT_MASKS = [[False, False], [True, False], [False, True]]


@pytest.mark.parametrize("mask", OUTPUT_MASKS, ids=lambda m: "-".join(map(str, m)))
@pytest.mark.parametrize("cell", ["rnn_tanh", *GATED])
def test_output_mask_leaves_out_only_the_unwanted_gradients(cell, mask):
    """An unwanted grad_input is None and unwanted grad_hx an empty list; every other
    gradient is bitwise the one of the full call (CPU), and the meta device (fake
    kernel) returns the same structure."""
    a = _backward_call(cell)
    full = ops._rnn_backward(**a)
    part = ops._rnn_backward(**a, output_mask=mask)
    assert (part[0] is None) == (not mask[0])
    assert len(part[1]) == (len(full[1]) if mask[1] else 0)
    if mask[0]:
        assert torch.equal(part[0], full[0])
    for got, want in zip(part[1], full[1]):
        assert torch.equal(got, want)
    for got, want in zip(part[2], full[2], strict=True):
        assert torch.equal(got, want)
    meta = {k: (v.to("meta") if isinstance(v, torch.Tensor)
                else [t.to("meta") if isinstance(t, torch.Tensor) else t for t in v]
                if isinstance(v, list) else v) for k, v in a.items()}
    meta["batch_sizes"] = a["batch_sizes"]
    fake = ops._rnn_backward(**meta, output_mask=mask)
    assert (fake[0] is None) == (not mask[0]) and len(fake[1]) == len(part[1])
    assert [w.shape for w in fake[2]] == [w.shape for w in part[2]]


class _BackwardSpy(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the output_mask of every _rnn_backward / _rnn_cell_backward call."""

    def __init__(self):
        super().__init__()
        self.masks = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (ops._rnn_backward.default, ops._rnn_cell_backward.default):
            schema_args = func._schema.arguments
            bound = dict(zip([a.name for a in schema_args], args)) | kwargs
            self.masks.append(list(bound.get("output_mask", [True, True])))
        return func(*args, **kwargs)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru", "rnn_cell_tanh", "lstm_cell",
                                  "gru_cell"])
def test_module_backward_asks_only_for_the_gradients_that_require_grad(cell):
    """Through the C++ autograd kernels: when only the weights require grad the backward
    op is told so (output_mask [False, False]) and the weight gradients are bitwise
    those of a backward that also computes the input and state gradients; with the input
    and the state requiring grad, it asks for both."""
    torch_m, m = make_pair(cell, 3, 4, dtype=torch.float32)
    step = "_cell" in cell
    x = randn(2, 3, dtype=torch.float32) if step else randn(5, 2, 3, dtype=torch.float32)
    hx = random_cell_hx(m, 2, dtype=torch.float32, requires_grad=False) if step else \
        random_hx(m, 2, dtype=torch.float32, requires_grad=False)

    def weight_grads(x, hx):
        m.zero_grad(set_to_none=True)
        spy = _BackwardSpy()
        with spy:
            out = m(x, hx)
            sum(t.sum() for t in result_tensors(out)).backward()
        return [p.grad.clone() for p in m.parameters()], spy.masks

    only_weights, masks = weight_grads(x, hx)
    assert masks == [[False, False]]
    x2 = x.clone().requires_grad_()
    hx2 = map_states(lambda t: t.clone().requires_grad_(), hx)
    everything, masks = weight_grads(x2, hx2)
    assert masks == [[True, True]]
    assert x2.grad is not None and all(t.grad is not None for t in states(hx2))
    for a, b in zip(only_weights, everything, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru", "rnn_cell_tanh", "lstm_cell"])
def test_double_backward_with_only_the_weights_requiring_grad(cell):
    """A gradient penalty on the weights (create_graph=True, input and state outside the
    graph): the first backward runs with output_mask [False, False] through the backward
    op's own autograd, and the second-order weight gradients equal torch.nn's (float64)."""
    torch_m, m = make_pair(cell, 3, 4)
    step = "_cell" in cell
    x = randn(2, 3) if step else randn(5, 2, 3)
    hx = random_cell_hx(m, 2, requires_grad=False) if step else \
        random_hx(m, 2, requires_grad=False)

    def penalty_grads(module):
        params = list(module.parameters())
        out = module(x, hx)
        loss = sum((t * t).sum() for t in result_tensors(out))
        first = torch.autograd.grad(loss, params, create_graph=True)
        return torch.autograd.grad(sum((g * g).sum() for g in first), params)

    spy = _BackwardSpy()
    with spy:
        ours = penalty_grads(m)
    assert spy.masks and spy.masks[0] == [False, False]
    for got, want in zip(ours, penalty_grads(torch_m), strict=True):
        torch.testing.assert_close(got, want, **F64)


# ---------------------------------------------------------------------------
# gradcheck / gradgradcheck (float64, tiny)
# ---------------------------------------------------------------------------

ARCHS = {
    "dense-bi-L2-batch_first": dict(num_layers=2, bidirectional=True, packed=False,
                                    batch_first=True),
    "packed-bi-L2": dict(num_layers=2, bidirectional=True, packed=True),
}
# Second order recomputes through the reference loop (seconds each): every cell with
# packed bidirectional input, and one dense batch-first case (test_module_db.py runs
# gradcheck and gradgradcheck over torch's unbatched samples of every option too).
GRADCHECK_CASES = [("lstm", "packed-bi-L2"), ("lstm_proj", "packed-bi-L2"),
                   ("gru", "packed-bi-L2"), ("lstm_proj", "dense-bi-L2-batch_first")]


@pytest.mark.parametrize("cell,arch", GRADCHECK_CASES,
                         ids=[f"{c}-{a}" for c, a in GRADCHECK_CASES])
def test_gradcheck_and_gradgradcheck_module(cell, arch):
    """First and second derivatives of output, h_n (and c_n) with respect to the input,
    every initial state and every parameter, through the module."""
    cfg = dict(ARCHS[arch])
    packed = cfg.pop("packed")
    _, m = make_pair(cell, 2, 3, seed=1, **cfg)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    hx = states(random_hx(m, 3))
    if packed:
        seq = pack_sequence([randn(n, 2) for n in (2, 3, 1)], enforce_sorted=False)
        x = seq.data.detach().clone().requires_grad_()
    else:
        x = random_input(m, 3, 3)
    S = len(hx)

    def f(x, *tensors):
        h = tuple(tensors[:S]) if S == 2 else tensors[0]
        inp = PackedSequence(x, seq.batch_sizes, seq.sorted_indices,
                             seq.unsorted_indices) if packed else x
        out = functional_call(m, dict(zip(names, tensors[S:])), (inp, h))
        return tuple(result_tensors(out))

    inputs = (x, *hx, *params)
    assert gradcheck(f, inputs, fast_mode=True)
    assert gradgradcheck(f, inputs, fast_mode=True)


@pytest.mark.parametrize("cell", GATED_STEP)
def test_gradcheck_and_gradgradcheck_cell(cell):
    _, m = make_pair(cell, 3, 4, seed=2)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    hx = states(random_cell_hx(m, 2))
    S = len(hx)

    def f(x, *tensors):
        h = tuple(tensors[:S]) if S == 2 else tensors[0]
        return tuple(result_tensors(functional_call(m, dict(zip(names, tensors[S:])), (x, h))))

    inputs = (randn(2, 3).requires_grad_(), *hx, *params)
    assert gradcheck(f, inputs, fast_mode=True)
    assert gradgradcheck(f, inputs, fast_mode=True)


# ---------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _train_step(module, x, hx):
    """Loss gradients of the parameters for an input that does not require grad (the
    usual training step, which nn.LSTM's aten::lstm fails to compile on CPU)."""
    out = module(x, hx)
    loss = sum((t * torch.linspace(-1, 1, t.shape[-1], dtype=t.dtype)).sum()
               for t in result_tensors(out))
    return [t.detach() for t in result_tensors(out)], torch.autograd.grad(
        loss, list(module.parameters()))


# aot_eager traces what inductor traces; inductor once (compiling costs seconds).
COMPILE_CASES = [(cell, "aot_eager") for cell in GATED] + [("lstm", "inductor")]


@pytest.mark.parametrize("cell,backend", COMPILE_CASES, ids=[f"{c}-{b}" for c, b in COMPILE_CASES])
def test_compiled_training_step_equals_eager(cell, backend, fresh_dynamo):
    """fullgraph compile: one graph with rnnfast.rnn_forward in it, no break, and the
    eager results and parameter gradients."""
    _, m = make_pair(cell, 3, 4, 2, seed=3, bidirectional=True, batch_first=True)
    x = randn(2, 5, 3)
    hx = map_states(lambda h: h.detach(), random_hx(m, 2))
    counter = torch._dynamo.testing.CompileCounterWithBackend(backend)
    compiled = torch.compile(m, fullgraph=True, backend=counter)
    eager = _train_step(m, x, hx)
    got = _train_step(compiled, x, hx)
    assert counter.frame_count == 1 and len(counter.graphs) == 1
    targets = [str(n.target) for n in counter.graphs[0].graph.nodes if n.op == "call_function"]
    assert any("rnnfast.rnn_forward" in t for t in targets), targets
    assert not any("lstm" in t or "gru" in t for t in targets), targets
    for a, b in zip(got[0] + list(got[1]), eager[0] + list(eager[1]), strict=True):
        torch.testing.assert_close(a, b, **F64)


@pytest.mark.parametrize("cell", GATED)
def test_compiled_packed_input_equals_eager(cell, fresh_dynamo):
    _, m = make_pair(cell, 3, 4, 2, seed=4, bidirectional=True)
    seq = pack_sequence([randn(n, 3) for n in (3, 5, 2)], enforce_sorted=False)
    hx = map_states(lambda h: h.detach(), random_hx(m, 3))
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    eager, got = _train_step(m, seq, hx), _train_step(compiled, seq, hx)
    for a, b in zip(got[0] + list(got[1]), eager[0] + list(eager[1]), strict=True):
        torch.testing.assert_close(a, b, **F64)


# ---------------------------------------------------------------------------
# torch.func
# ---------------------------------------------------------------------------


def _func_loss(module, params, x):
    results = result_tensors(functional_call(module, params, (x,)))
    return sum((r ** 2).sum() * (k + 1) for k, r in enumerate(results))


@pytest.mark.parametrize("cell", GATED)
def test_func_grad_and_per_sample_vmap_match_torch(cell):
    """torch.func.grad of the parameters equals torch's gradients; vmap(grad) gives each
    sample's gradient (torch's module cannot be vmapped: compared with a loop)."""
    ref, new = make_pair(cell, 3, 4, 2, seed=5, bidirectional=True)
    params = dict(new.named_parameters())
    names, ref_params = zip(*ref.named_parameters())
    x = randn(5, 2, 3)
    g = grad(lambda p: _func_loss(new, p, x))(params)
    g_ref = torch.autograd.grad(_func_loss(ref, dict(zip(names, ref_params)), x), ref_params)
    for n, e in zip(names, g_ref):
        torch.testing.assert_close(g[n], e, **F64, msg=n)
    xs = randn(3, 5, 1, 3)  # 3 samples of (T=5, N=1, I=3)
    per_sample = vmap(grad(lambda p, x: _func_loss(new, p, x)), in_dims=(None, 0))(params, xs)
    for i in range(xs.shape[0]):
        one = torch.autograd.grad(_func_loss(ref, dict(zip(names, ref_params)), xs[i]),
                                  ref_params)
        for n, e in zip(names, one):
            torch.testing.assert_close(per_sample[n][i], e, **F64, msg=f"sample {i} {n}")


# ---------------------------------------------------------------------------
# state_dict, convert / to_torch, deepcopy, save / load
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell", GATED + GATED_STEP)
def test_state_dict_loads_both_ways(cell):
    torch_cls, rnnfast_cls, extra = CELLS[cell]
    args = (3, 5) if cell in GATED_STEP else (3, 5, 2)
    kwargs = dict(extra) if cell in GATED_STEP else dict(extra, bidirectional=True)
    torch.manual_seed(1)
    ref = torch_cls(*args, dtype=torch.float64, **kwargs)
    torch.manual_seed(2)
    new = rnnfast_cls(*args, dtype=torch.float64, **kwargs)
    assert list(new.state_dict()) == list(ref.state_dict())
    x = randn(4, 2, 3) if cell in GATED else randn(2, 3)
    new.load_state_dict(ref.state_dict(), strict=True)
    for a, b in zip(result_tensors(new(x)), result_tensors(ref(x))):
        torch.testing.assert_close(a, b, **F64)
    torch.manual_seed(3)
    other = rnnfast_cls(*args, dtype=torch.float64, **kwargs)
    ref.load_state_dict(other.state_dict(), strict=True)
    for a, b in zip(result_tensors(other(x)), result_tensors(ref(x))):
        torch.testing.assert_close(a, b, **F64)
    if cell in GATED:  # load_state_dict copies in place: the flat weights stay live
        assert all(a is b for a, b in zip(other._flat_weights, other.parameters()))


def test_projection_mismatch_fails_with_torchs_message():
    """Loading a proj_size=2 state_dict into a proj_size=0 LSTM (and back) fails with
    torch's exact message."""
    for src, dst in ((dict(proj_size=2), {}), ({}, dict(proj_size=2))):
        messages = []
        for cls in (nn.LSTM, rnnfast.LSTM):
            with pytest.raises(RuntimeError) as info:
                cls(3, 5, **dst).load_state_dict(nn.LSTM(3, 5, **src).state_dict())
            messages.append(str(info.value))
        assert messages[1] == messages[0]


class Model(nn.Module):
    """One of each new class, plus a shared LSTMCell."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 5, 2, batch_first=True, proj_size=2)
        self.gru = nn.GRU(2, 4, bidirectional=True)
        self.blocks = nn.ModuleList([nn.Sequential(nn.LSTMCell(8, 3)), nn.GRUCell(3, 3)])
        self.shared = self.blocks[0][0]

    def forward(self, x):
        out, (h_n, c_n) = self.lstm(x)  # (N, L, 2)
        y, g_n = self.gru(out.transpose(0, 1))  # (L, N, 8)
        h, c = self.blocks[0][0](y[-1])
        h2 = self.blocks[1](h, c[:, :3])
        return h2.sum() + h_n.sum() + c_n.sum() + g_n.sum() + self.shared(y[0])[1].sum()


def _rnn_types(model):
    return sorted(f"{type(m).__module__}.{type(m).__name__}" for m in model.modules()
                  if isinstance(m, (nn.RNNBase, nn.RNNCellBase)))


def test_convert_and_to_torch_swap_all_four_classes():
    torch.manual_seed(0)
    model = Model().double()
    x = randn(2, 4, 3)
    expected = model(x)
    params = list(model.parameters())
    model = rnnfast.convert(model)
    assert _rnn_types(model) == ["rnnfast.modules.GRU", "rnnfast.modules.GRUCell",
                                 "rnnfast.modules.LSTM", "rnnfast.modules.LSTMCell"]
    assert model.shared is model.blocks[0][0]
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))
    torch.testing.assert_close(model(x), expected, **F64)
    back = rnnfast.to_torch(model)
    assert _rnn_types(back) == ["torch.nn.modules.rnn.GRU", "torch.nn.modules.rnn.GRUCell",
                                "torch.nn.modules.rnn.LSTM", "torch.nn.modules.rnn.LSTMCell"]
    assert all(a is b for a, b in zip(back.parameters(), params, strict=True))
    torch.testing.assert_close(back(x), expected, **F64)
    # A root module is replaced and returned.
    lstm = nn.LSTM(3, 4)
    assert type(rnnfast.convert(lstm)) is rnnfast.LSTM
    assert type(rnnfast.to_torch(rnnfast.GRUCell(3, 4))) is nn.GRUCell


@pytest.mark.parametrize("cell", GATED + GATED_STEP)
def test_deepcopy_and_torch_save_load(cell):
    torch_cls, rnnfast_cls, extra = CELLS[cell]
    torch.manual_seed(0)
    args = (3, 4) if cell in GATED_STEP else (3, 4, 2)
    module = rnnfast_cls(*args, **extra)
    x = (randn(2, 3, dtype=torch.float32) if cell in GATED_STEP else
         randn(5, 2, 3, dtype=torch.float32),)
    expected = result_tensors(module(*x))
    clone = copy.deepcopy(module)
    assert type(clone) is type(module) and repr(clone) == repr(module)
    for a, b in zip(result_tensors(clone(*x)), expected):
        assert torch.equal(a, b)
    with torch.no_grad():  # (a cell without hx multiplies zeros by weight_hh)
        clone.weight_ih_l0.mul_(2) if cell in GATED else clone.weight_ih.mul_(2)
    assert not torch.equal(result_tensors(clone(*x))[0], expected[0])  # an independent copy
    for a, b in zip(result_tensors(module(*x)), expected):
        assert torch.equal(a, b)
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded) is type(module) and repr(loaded) == repr(module)
    for a, b in zip(result_tensors(loaded(*x)), expected):
        assert torch.equal(a, b)
    if cell in GATED:
        params = dict(loaded.named_parameters())
        assert all(w is params[n] for n, w in zip(loaded._flat_weights_names,
                                                  loaded._flat_weights))
