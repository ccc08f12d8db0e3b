"""Long sequences (T = 100,000 steps, tiny batch and hidden size) on the CPU.

* Forward and backward run to the end with every output and gradient finite (no index
  overflow, no accumulation blow-up), with a contracting recurrent weight so that the
  exact answer is finite for relu too.
* The first steps agree with the float64 pure-PyTorch reference run on that prefix.
* Splitting the sequence in two halves and passing the first half's h_n as the second
  half's hx gives the same output and final state, bitwise, as the single run, and
  the same gradients: bitwise for the float32 input and hx gradients, within float
  rounding for the weight gradients (sums over the two halves instead of one sum over
  all steps) and in float64 (MKL GEMMs block differently for different row counts).
"""

from __future__ import annotations

import pytest
import torch

import rnnfast
from helpers import OWN_FLOAT32_GEMMS, call_reference_forward

T_LONG = 100_000
N, I, H = 2, 3, 4


def _model(nonlinearity, dtype, seed):
    torch.manual_seed(seed)
    rnn = rnnfast.RNN(I, H, nonlinearity=nonlinearity, dtype=dtype)
    with torch.no_grad():
        # Spectral norm 0.9: the state stays bounded over any length, relu included.
        q, _ = torch.linalg.qr(torch.randn(H, H, dtype=torch.float64))
        rnn.weight_hh_l0.copy_(0.9 * q)
    return rnn


def _grads(rnn, outputs, leaves, cotangents):
    return torch.autograd.grad(outputs, [*leaves, *rnn.parameters()], cotangents)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_100k_steps_forward_backward_and_chunking(nonlinearity, dtype):
    rnn = _model(nonlinearity, dtype, seed=len(nonlinearity))
    x = torch.randn(T_LONG, N, I, dtype=dtype, requires_grad=True)
    hx = torch.randn(1, N, H, dtype=dtype, requires_grad=True)
    go = torch.randn(T_LONG, N, H, dtype=dtype)
    gh = torch.randn(1, N, H, dtype=dtype)

    out, h_n = rnn(x, hx)
    grads = _grads(rnn, (out, h_n), [x, hx], (go, gh))
    names = ["output", "h_n", "grad input", "grad hx"] + [f"grad {n}" for n, _ in
                                                          rnn.named_parameters()]
    for name, t in zip(names, [out, h_n, *grads]):
        assert t.isfinite().all(), f"{name} is not finite"
    assert out.abs().max() < 100 and out.abs().amax(dim=(1, 2))[-1000:].max() > 0  # alive
    assert torch.equal(out[-1], h_n[0])

    # The first steps against the float64 oracle.
    prefix = 300
    w64 = [w.detach().double() for w in rnn._flat_weights]
    ref_out, ref_h = call_reference_forward(x[:prefix].detach().double(), hx.detach().double(),
                                            w64, None, None, True, 1, nonlinearity, False)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out[:prefix].detach().double(), ref_out, atol=tol, rtol=tol)

    # Two halves, h_n of the first as hx of the second: same graph values.
    half = T_LONG // 2
    out1, h1 = rnn(x[:half], hx)
    out2, h2 = rnn(x[half:], h1)
    assert torch.equal(torch.cat([out1, out2]), out), "chunked output differs"
    assert torch.equal(h2, h_n), "chunked final state differs"
    chunked = _grads(rnn, (out1, out2, h2), [x, hx], (go[:half], go[half:], gh))
    for name, a, e in zip(names[2:], chunked, grads):
        scale = max(1.0, e.abs().max().item())
        err = (a - e).abs().max().item()
        assert err <= (1e-4 if dtype == torch.float32 else 1e-10) * scale, (
            f"{name}: chunked gradient differs by {err:.3g}")
    if dtype == torch.float32 and OWN_FLOAT32_GEMMS:
        # The float32 kernels add the h_n gradient of a chunk boundary in the same order
        # as the single run carries it, and dX is a per-row GEMM: input and hx gradients
        # are bitwise equal. (float64 goes through MKL, whose blocking depends on the
        # number of rows: equal within rounding only.)
        assert torch.equal(chunked[0], grads[0]) and torch.equal(chunked[1], grads[1])


def test_100k_steps_bidirectional_two_layers_stays_finite(device):
    """Also the long-sequence run of the GPU check (no overflow, no deadlock on cuda)."""
    torch.manual_seed(0)
    rnn = rnnfast.RNN(I, H, 2, bidirectional=True, nonlinearity="relu")
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            if "weight_hh" in name:
                q, _ = torch.linalg.qr(torch.randn(H, H, dtype=torch.float64))
                p.copy_(0.9 * q)
    rnn = rnn.to(device)
    x = torch.randn(T_LONG, N, I, device=device, requires_grad=True)
    out, h_n = rnn(x)
    grads = torch.autograd.grad(out.sum() + h_n.sum(), [x, *rnn.parameters()])
    assert out.isfinite().all() and h_n.isfinite().all()
    assert all(g.isfinite().all() for g in grads)
    # Reverse direction: its final state is its output at t = 0; forward: at t = T-1.
    assert torch.equal(out[0, :, H:], h_n[3]) and torch.equal(out[-1, :, :H], h_n[2])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_100k_steps_lstm_and_gru(cell):
    """rnnfast.LSTM / GRU over 100,000 steps: finite results and gradients, the first
    steps equal the float64 oracle, and two chunks (h_n, c_n of the first as the second's
    initial state) give the single run's output and final states bitwise."""
    torch.manual_seed(7)
    module = (rnnfast.LSTM if cell == "lstm" else rnnfast.GRU)(I, H)
    x = torch.randn(T_LONG, N, I, requires_grad=True)
    h0 = torch.randn(1, N, H, requires_grad=True)
    hx = (h0, torch.randn(1, N, H, requires_grad=True)) if cell == "lstm" else h0
    states = list(hx) if cell == "lstm" else [hx]

    out, h_n = module(x, hx)
    finals = list(h_n) if cell == "lstm" else [h_n]
    cotangents = [torch.randn_like(out)] + [torch.randn_like(h) for h in finals]
    grads = torch.autograd.grad([out, *finals], [x, *states, *module.parameters()], cotangents)
    for t in [out, *finals, *grads]:
        assert t.isfinite().all()
    assert torch.equal(out[-1], finals[0][0])

    prefix = 300
    w64 = [w.detach().double() for w in module._flat_weights]
    ref_out, _ = rnnfast.reference.rnn_forward(
        x[:prefix].detach().double(), [s.detach().double() for s in states], w64, None, None,
        module.mode, True, 1, 0, False)
    torch.testing.assert_close(out[:prefix].detach().double(), ref_out, atol=1e-5, rtol=1e-5)

    half = T_LONG // 2
    out1, h1 = module(x[:half], hx)
    out2, h2 = module(x[half:], h1)
    assert torch.equal(torch.cat([out1, out2]), out), "chunked output differs"
    for a, b in zip(list(h2) if cell == "lstm" else [h2], finals, strict=True):
        assert torch.equal(a, b), "chunked final state differs"
