"""torch.library.opcheck on every rnnfast op.

opcheck verifies the schema (no undeclared mutation or aliasing), the autograd
registration, the fake (meta) kernel against the real one, and AOT dispatch with
dynamic shapes (compile parity, backward included), for samples with and without
requires_grad: uni/bidirectional, 1 and 3 layers, bias/no-bias, packed, N=0.
"""

from __future__ import annotations

import pytest
import torch

from helpers import (  # noqa: F401  (seed_per_test: autouse fixture)
    call_rnn_double_backward,
    call_rnn_forward,
    randn,
    rnn_double_backward_args,
    rnn_backward_args,
    rnn_forward_args,
    rnn_op_inputs,
    seed_per_test,
)

ops = torch.ops.rnnfast


def _opcheck(op, args):
    result = torch.library.opcheck(op, args)
    assert all(v == "SUCCESS" for v in result.values()), result


def _grad(tensors, requires_grad):
    return [t.detach().clone().requires_grad_(requires_grad) for t in tensors]


# An orthogonal array over (bidirectional, num_layers, has_biases, packed): every pair of
# values of any two factors occurs; then dropout masks, N=0 and N=1.
RNN_SAMPLES = [
    dict(bidirectional=bi, num_layers=nl, has_biases=b, packed=pk, masks=False, N=3)
    for bi, nl, b, pk in [
        (False, 1, True, False), (False, 1, False, True), (False, 3, True, True),
        (False, 3, False, False), (True, 1, True, True), (True, 1, False, False),
        (True, 3, True, False), (True, 3, False, True),
    ]
] + [
    dict(bidirectional=True, num_layers=3, has_biases=True, packed=False, masks=True, N=3),
    dict(bidirectional=False, num_layers=2, has_biases=False, packed=True, masks=True, N=3),
    dict(bidirectional=True, num_layers=2, has_biases=True, packed=False, masks=False, N=0),
    dict(bidirectional=False, num_layers=1, has_biases=True, packed=False, masks=False, N=1),
]


def _sample_id(s):
    return "-".join([
        "bi" if s["bidirectional"] else "uni", f"L{s['num_layers']}",
        "bias" if s["has_biases"] else "nobias", "packed" if s["packed"] else "dense",
    ] + (["masks"] if s["masks"] else []) + [f"N{s['N']}"])


def _forward_args(sample, nonlinearity, requires_grad, device, seed=0):
    """An Elman rnn_forward call in the old argument order (see helpers.rnn_forward_args)."""
    x, hx, weights, batch_sizes, masks = rnn_op_inputs(
        sample["packed"], sample["bidirectional"], sample["num_layers"], sample["has_biases"],
        device=device, masks=sample["masks"], seed=seed, N=sample["N"])
    x, hx, *weights = _grad([x, hx, *weights], requires_grad)
    return (x, hx, weights, batch_sizes, masks, sample["has_biases"], sample["num_layers"],
            nonlinearity, sample["bidirectional"])


@pytest.mark.parametrize("requires_grad", [True, False], ids=["grad", "nograd"])
@pytest.mark.parametrize("sample", RNN_SAMPLES, ids=_sample_id)
def test_opcheck_rnn_forward(sample, requires_grad, device):
    """rnn_forward passes opcheck (schema, autograd registration, fake kernel, AOT dispatch)."""
    nonlinearity = "relu" if sample["num_layers"] == 3 else "tanh"
    _opcheck(ops.rnn_forward.default,
             rnn_forward_args(*_forward_args(sample, nonlinearity, requires_grad, device)))


def test_opcheck_rnn_forward_batch_first_view(device):
    """A transposed (batch-first) input view, as functional.rnn passes it, passes opcheck."""
    x, hx, weights, _, _ = rnn_op_inputs(False, True, 2, True, device=device, seed=4)
    x_bf = x.transpose(0, 1).contiguous().transpose(0, 1)  # time-major view of batch-first data
    assert not x_bf.is_contiguous()
    _opcheck(ops.rnn_forward.default,
             rnn_forward_args(x_bf.requires_grad_(), hx, weights, None, None, True, 2, "tanh",
                              True))


BACKWARD_SAMPLES = [
    (RNN_SAMPLES[i], grads)
    for i, grads in [(0, "both"), (1, "output"), (6, "h_n"), (7, "both"), (8, "both"),
                     (9, "h_n"), (10, "both")]
]


@pytest.mark.parametrize("requires_grad", [True, False], ids=["grad", "nograd"])
@pytest.mark.parametrize("sample,grads", BACKWARD_SAMPLES,
                         ids=[f"{_sample_id(s)}-{g}" for s, g in BACKWARD_SAMPLES])
def test_opcheck_rnn_backward(sample, grads, requires_grad, device):
    """_rnn_backward passes opcheck, with grad_output / grad_h_n given or None; with
    requires_grad its (double-backward) autograd formula is checked too."""
    args = _forward_args(sample, "tanh", False, device, seed=1)
    x, hx, weights, batch_sizes, masks, *attrs = args
    out, h_n, ws = call_rnn_forward(*args)
    go = randn(*out.shape, device=device) if grads in ("both", "output") else None
    gh = randn(*h_n.shape, device=device) if grads in ("both", "h_n") else None
    go, gh = [None if t is None else _grad([t], requires_grad)[0] for t in (go, gh)]
    x, hx, *weights = _grad([x, hx, *weights], requires_grad)
    _opcheck(ops._rnn_backward.default,
             rnn_backward_args(go, gh, x, hx, weights, batch_sizes, masks, out, ws, *attrs))


CELL_SAMPLES = [
    dict(bias=True, nonlinearity="tanh", N=3),
    dict(bias=False, nonlinearity="relu", N=3),
    dict(bias=True, nonlinearity="relu", N=0),
]


def _cell_id(s):
    return f"{'bias' if s['bias'] else 'nobias'}-{s['nonlinearity']}-N{s['N']}"


def _cell_args(sample, requires_grad, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    N, I, H = sample["N"], 3, 4
    x, hx = randn(N, I, device=device, gen=g), randn(N, H, device=device, gen=g)
    w_ih, w_hh = randn(H, I, device=device, gen=g), randn(H, H, device=device, gen=g) * 0.5
    tensors = [x, hx, w_ih, w_hh]
    if sample["bias"]:
        tensors += [randn(H, device=device, gen=g), randn(H, device=device, gen=g)]
    tensors = _grad(tensors, requires_grad)
    b_ih, b_hh = (tensors[4], tensors[5]) if sample["bias"] else (None, None)
    return (*tensors[:4], b_ih, b_hh, sample["nonlinearity"])


@pytest.mark.parametrize("requires_grad", [True, False], ids=["grad", "nograd"])
@pytest.mark.parametrize("sample", CELL_SAMPLES, ids=_cell_id)
def test_opcheck_rnn_cell_forward(sample, requires_grad, device):
    """rnn_cell_forward passes opcheck."""
    _opcheck(ops.rnn_cell_forward.default, _cell_args(sample, requires_grad, device))


@pytest.mark.parametrize("requires_grad", [True, False], ids=["grad", "nograd"])
@pytest.mark.parametrize("sample", CELL_SAMPLES, ids=_cell_id)
def test_opcheck_rnn_cell_backward(sample, requires_grad, device):
    """_rnn_cell_backward passes opcheck (its autograd is the cell's double backward)."""
    x, hx, w_ih, w_hh, b_ih, b_hh, act = _cell_args(sample, False, device, seed=1)
    h = ops.rnn_cell_forward(x, hx, w_ih, w_hh, b_ih, b_hh, act)
    grad_h = randn(*h.shape, device=device)
    tensors = _grad([grad_h, x, hx, w_ih, w_hh, h], requires_grad)
    _opcheck(ops._rnn_cell_backward.default, (*tensors, sample["bias"], act))


@pytest.mark.parametrize("sample", [RNN_SAMPLES[6], RNN_SAMPLES[9]], ids=_sample_id)
def test_opcheck_rnn_double_backward(sample, device):
    """_rnn_double_backward (the opaque second-order op of _ops.py) passes opcheck, and
    keeps its schema's promises: no input mutated, no output aliasing an input."""
    x, hx, weights, batch_sizes, masks, *attrs = _forward_args(sample, "tanh", False, device,
                                                               seed=2)
    out, h_n, _ = call_rnn_forward(x, hx, weights, batch_sizes, masks, *attrs)
    gg = [randn(*t.shape, device=device) for t in (x, hx, *weights)]
    gg_weights = [None if i == 1 else g for i, g in enumerate(gg[2:])]
    args = (gg[0], None, gg_weights, randn(*out.shape, device=device), None, x, hx, weights,
            batch_sizes, masks, *attrs)
    _opcheck(ops._rnn_double_backward.default, rnn_double_backward_args(*args))

    inputs = [t for t in (gg[0], *gg_weights, args[3], x, hx, *weights, masks)
              if t is not None]
    before = [t.clone() for t in inputs]
    g_go, g_ghn, g_x, g_h0, g_w = call_rnn_double_backward(*args)
    assert [t.shape for t in (g_go, g_ghn, g_x, g_h0)] == [out.shape, h_n.shape, x.shape,
                                                           hx.shape]
    assert [g.shape for g in g_w] == [w.shape for w in weights]
    for b, t in zip(before, inputs):
        assert torch.equal(b, t)
    ptrs = {t.untyped_storage().data_ptr() for t in inputs if t.numel()}
    for g in (g_go, g_ghn, g_x, g_h0, *g_w):
        assert g.untyped_storage().data_ptr() not in ptrs
