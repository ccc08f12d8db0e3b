"""bfloat16 kernels of rnnfast.RNN on the CPU.

Specification:
  * On CPUs with AVX512-BF16 every product runs on bf16 operands with float32
    accumulation (vdpbf16ps); the input projection, pre-activations and gradients stay
    float32 and each state is rounded to bf16 once per step. Elsewhere bf16 runs the
    float32 kernels on upcast copies. Either way:
  * Accuracy: outputs, h_n and every gradient are within a few bf16 ulps (relative
    norm error) of float64 math on the same (bf16-rounded) weights and inputs, and no
    further from it than torch.nn.RNN in bfloat16 is on the same data (with a floor of
    one bf16 ulp). With relu, a pre-activation within rounding of 0 may switch sides and
    send a gradient down another path (nn.RNN in bf16 does this too, on other elements),
    so relu gradients are held to a looser bound.
  * Every element of every result is written (poisoned heap, sizes that exercise the
    kernels' vector tails and odd k-pairs).
  * Results are bitwise identical run to run, and across thread counts for everything
    but the bias gradients (an ATen sum).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnfast

from helpers import poison_heap, randn, seed_per_test  # noqa: F401 (autouse fixture)

BF16 = torch.bfloat16

CASES = {
    # name: (T, N, I, H, num_layers, bidirectional, nonlinearity, bias)
    "uni": (12, 5, 8, 32, 1, False, "tanh", True),
    "odd-sizes": (9, 3, 5, 19, 1, False, "tanh", True),       # odd I and H: unpaired k
    "h-tail": (7, 6, 16, 40, 2, False, "tanh", True),          # H % 16 != 0
    "bidir-2layer": (8, 4, 6, 24, 2, True, "tanh", True),
    "relu-nobias": (10, 3, 7, 33, 2, False, "relu", False),
    "T1-N1": (1, 1, 3, 5, 1, True, "tanh", True),
    "wide": (6, 9, 70, 130, 1, False, "tanh", True),           # several 64-column blocks
}


def _models(T, N, I, H, layers, bidir, nonlinearity, bias):
    """float64 nn.RNN on bf16-rounded weights (the oracle), rnnfast and nn.RNN in bf16."""
    exact = nn.RNN(I, H, layers, nonlinearity=nonlinearity, bias=bias, bidirectional=bidir,
                   dtype=torch.float64)
    state = {k: v.to(BF16) for k, v in exact.state_dict().items()}
    exact.load_state_dict({k: v.double() for k, v in state.items()})
    ours = rnnfast.RNN(I, H, layers, nonlinearity=nonlinearity, bias=bias,
                       bidirectional=bidir, dtype=BF16)
    ours.load_state_dict(state)
    theirs = nn.RNN(I, H, layers, nonlinearity=nonlinearity, bias=bias, bidirectional=bidir,
                    dtype=BF16)
    theirs.load_state_dict(state)
    return exact, ours, theirs


def _run(module, x, hx, grad_out, grad_hn, dtype, packed_lengths=None):
    """Outputs and all gradients as float64, for inputs cast to `dtype`."""
    x = x.to(dtype).detach().requires_grad_(True)
    hx = hx.to(dtype).detach().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    if packed_lengths is None:
        out, h_n = module(x, hx)
    else:
        packed = pack_padded_sequence(x, packed_lengths, enforce_sorted=False)
        out, h_n = module(packed, hx)
        out, _ = pad_packed_sequence(out, total_length=x.shape[0])
    torch.autograd.backward([out, h_n], [grad_out.to(dtype), grad_hn.to(dtype)])
    results = [out, h_n, x.grad, hx.grad] + [p.grad for p in module.parameters()]
    return [r.detach().double() for r in results]


def _rel_errors(results, oracle):
    return [((r - o).norm() / o.norm().clamp_min(1e-30)).item() for r, o in zip(results, oracle)]


ULP = 2.0 ** -8  # bf16's relative rounding step


def _check_accuracy(case, packed_lengths=None):
    T, N, I, H, layers, bidir, nonlinearity, bias = case
    exact, ours, theirs = _models(*case)
    D = 2 if bidir else 1
    x = randn(T, N, I).to(BF16).double()
    hx = randn(layers * D, N, H).to(BF16).double()
    grad_out = randn(T, N, D * H).to(BF16).double()
    grad_hn = randn(layers * D, N, H).to(BF16).double()
    if packed_lengths is not None:  # padding carries no gradient
        mask = torch.arange(T)[:, None] < torch.tensor(packed_lengths)[None, :]
        grad_out = grad_out * mask[..., None]
    poison_heap()
    oracle = _run(exact, x, hx, grad_out, grad_hn, torch.float64, packed_lengths)
    mine = _run(ours, x, hx, grad_out, grad_hn, BF16, packed_lengths)
    torch_bf16 = _run(theirs, x, hx, grad_out, grad_hn, BF16, packed_lengths)
    names = ["output", "h_n", "grad input", "grad hx"] + [n for n, _ in ours.named_parameters()]
    for name, r in zip(names, mine):
        assert torch.isfinite(r).all(), f"{name}: non-finite element (unwritten?)"
    for i, (name, e_ours, e_torch) in enumerate(
            zip(names, _rel_errors(mine, oracle), _rel_errors(torch_bf16, oracle))):
        if nonlinearity == "relu" and i >= 2:  # gradients through relu: see the docstring
            assert e_ours <= 0.5, (name, e_ours)
            continue
        assert e_ours <= 8 * ULP, (name, e_ours)
        assert e_ours <= 1.5 * e_torch + ULP, (name, e_ours, e_torch)


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bf16_matches_float64_at_least_as_well_as_nn_rnn(case):
    _check_accuracy(CASES[case])


@pytest.mark.parametrize("bidir", [False, True], ids=["uni", "bidir"])
def test_bf16_packed_unsorted(bidir):
    _check_accuracy((9, 5, 6, 21, 2, bidir, "tanh", True), packed_lengths=[9, 3, 7, 1, 9])


def test_bf16_large_shape_accuracy():
    # The largest benchmark shape class (K blocks of the tiled GEMM, thread teams).
    _check_accuracy((20, 64, 300, 256, 1, False, "tanh", True))


def _bf16_results(threads, seed=0):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(seed)
        m = rnnfast.RNN(40, 96, 2, bidirectional=True)
        m = m.to(BF16)
        x = torch.randn(15, 8, 40, generator=gen).to(BF16).requires_grad_()
        out, h_n = m(x)
        torch.autograd.backward([out, h_n], [torch.randn(out.shape, generator=gen).to(BF16),
                                             torch.randn(h_n.shape, generator=gen).to(BF16)])
        return {"output": out, "h_n": h_n, "grad input": x.grad,
                **{n: p.grad for n, p in m.named_parameters()}}
    finally:
        torch.set_num_threads(previous)


def test_bf16_bitwise_deterministic():
    torch.manual_seed(3)
    a = _bf16_results(torch.get_num_threads(), seed=3)
    torch.manual_seed(3)
    b = _bf16_results(torch.get_num_threads(), seed=3)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_bf16_independent_of_thread_count():
    torch.manual_seed(4)
    one = _bf16_results(1, seed=4)
    torch.manual_seed(4)
    two = _bf16_results(2, seed=4)
    for name in one:
        if name.startswith("bias"):  # at::sum's reduction order depends on the threads
            torch.testing.assert_close(one[name], two[name], atol=2e-2, rtol=1e-2)
        else:
            assert torch.equal(one[name], two[name]), name
