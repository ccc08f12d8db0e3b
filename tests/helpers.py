"""Shared helpers of the rnnfast test suite: model pairs, inputs, gradients, tolerances."""

from __future__ import annotations

import os
import zlib

import pytest
import torch
from torch import nn

import rnnfast

# float64 must agree with nn.RNN to 1e-10; float32 to ~1e-5 (the kernels sum in a
# different order than ATen, so float32 is not expected to be bitwise equal).
TOL = {
    torch.float64: dict(atol=1e-10, rtol=0.0),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
}

GRAD_TARGETS = ("both", "output", "h_n")

# True where the float32 CPU kernels run their GEMMs on rnnfast's own AVX-512 kernels,
# which accumulate every element in a fixed order: float32 results are then bitwise
# independent of the thread count and of how a sequence is chunked. Elsewhere (AVX2 and
# older CPUs) float32 GEMMs go through BLAS, whose blocking depends on the thread count
# and the matrix sizes: equal within rounding only.
OWN_FLOAT32_GEMMS = torch.ops.rnnfast._cpu_kernels().startswith("avx512")


@pytest.fixture(autouse=True)
def seed_per_test(request):
    """Seeds torch's RNG from the test id: every test draws its own fresh random data,
    reproducibly when run alone. RNNFAST_TEST_SEED=k shifts every seed (to draw new data)."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()) + int(
        os.environ.get("RNNFAST_TEST_SEED", "0")))


def make_pair(*args, seed=0, device="cpu", dtype=torch.float64, **kwargs):
    """nn.RNN and rnnfast.RNN built with the same seed, so with bitwise-equal parameters."""
    torch.manual_seed(seed)
    ref = nn.RNN(*args, device=device, dtype=dtype, **kwargs)
    torch.manual_seed(seed)
    new = rnnfast.RNN(*args, device=device, dtype=dtype, **kwargs)
    for (n_ref, p_ref), (n_new, p_new) in zip(ref.named_parameters(), new.named_parameters()):
        assert n_ref == n_new and torch.equal(p_ref, p_new), n_ref
    return ref, new


def randn(*shape, dtype=torch.float64, device="cpu", gen=None):
    """Fresh standard-normal data (never all zeros)."""
    t = torch.randn(*shape, dtype=dtype, generator=gen).to(device)
    assert shape == () or t.numel() == 0 or t.abs().sum() > 0
    return t


def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """The TestModule recipe: a non-contiguous view with the same values as `t`.

    Each element is repeated along the last dim, then every second one is taken.
    """
    out = t.detach().repeat_interleave(2, dim=-1)[..., ::2]
    assert torch.equal(out, t.detach())
    if t.numel() > 1 and t.shape[-1] > 0:
        assert not out.is_contiguous()
    return out.requires_grad_(t.requires_grad)


def hidden_shape(module, batch: int | None):
    D = 2 if module.bidirectional else 1
    if batch is None:
        return (module.num_layers * D, module.hidden_size)
    return (module.num_layers * D, batch, module.hidden_size)


def loss_weights(output, h_n, target, gen=None):
    """Random cotangents for (output, h_n); None for the one left out of the loss."""
    go = torch.randn(output.shape, dtype=output.dtype, generator=gen).to(output.device)
    gh = torch.randn(h_n.shape, dtype=h_n.dtype, generator=gen).to(h_n.device)
    if target == "output":
        gh = None
    elif target == "h_n":
        go = None
    return go, gh


def forward_backward(module, x, hx, cotangents):
    """Runs module(x, hx) and returns (output, h_n, grads).

    grads is [d input, d hx (or None), d param for each named parameter], computed
    with torch.autograd.grad for the given (grad_output, grad_h_n) cotangents
    (None: that output is left out of the loss).
    """
    output, h_n = module(x, hx) if hx is not None else module(x)
    data = output.data if isinstance(output, nn.utils.rnn.PackedSequence) else output
    x_data = x.data if isinstance(x, nn.utils.rnn.PackedSequence) else x
    go, gh = cotangents
    outs, grads_in = [], []
    if go is not None:
        outs.append(data)
        grads_in.append(go)
    if gh is not None:
        outs.append(h_n)
        grads_in.append(gh)
    wrt = [x_data] + ([hx] if hx is not None else []) + list(module.parameters())
    grads = torch.autograd.grad(outs, wrt, grads_in, allow_unused=True)
    grads = list(grads)
    if hx is None:
        grads.insert(1, None)
    # Parameters not reached by the loss (h_n-only of a 1-layer net reaches all) get 0.
    grads = [
        torch.zeros_like(w) if g is None and w is not None else g
        for g, w in zip(grads, [x_data, hx, *module.parameters()])
    ]
    return output, h_n, grads


def assert_close(actual, expected, dtype, msg=""):
    if isinstance(actual, nn.utils.rnn.PackedSequence):
        actual, expected = actual.data, expected.data
    assert actual.shape == expected.shape, f"{msg}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{msg}: dtype {actual.dtype} != {expected.dtype}"
    torch.testing.assert_close(actual, expected, **TOL[dtype], msg=lambda m: f"{msg}: {m}")


def assert_all_close(actual_list, expected_list, dtype, names):
    assert len(actual_list) == len(expected_list)
    for a, e, n in zip(actual_list, expected_list, names):
        if e is None:
            assert a is None, n
            continue
        assert_close(a, e, dtype, n)


def grad_names(module):
    return ["grad input", "grad hx"] + [f"grad {n}" for n, _ in module.named_parameters()]


def poison_heap(nbytes: int = 1 << 12, count: int = 8) -> None:
    """Fill and free a few NaN blocks so that outputs left uninitialised by a kernel
    (torch.empty reusing freed memory) are likely to hold NaN rather than plausible data."""
    blocks = [torch.full((max(nbytes // 8, 1) * (i + 1),), float("nan"), dtype=torch.float64)
              for i in range(count)]
    del blocks


# ---------------------------------------------------------------------------
# The sequence ops' schema in one place. The tests of the Elman RNN keep the old
# argument order (hx one tensor, nonlinearity "tanh"/"relu"); these helpers translate
# it to the generic-cell schema (hx a list, mode, proj_size, train; list outputs), so
# a schema change touches only this block.
# ---------------------------------------------------------------------------

ELMAN_MODES = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}


def elman_mode(nonlinearity):
    """The op's mode for an Elman nonlinearity. Any other value is passed on unchanged,
    for the tests of a bad mode ("gelu", "TANH", ...)."""
    return ELMAN_MODES.get(nonlinearity, nonlinearity)


def _as_list(t):
    return list(t) if isinstance(t, (list, tuple)) else [t]


def rnn_forward_args(input, hx, weights, batch_sizes, dropout_masks, has_biases, num_layers,
                     nonlinearity, bidirectional, train=True):
    """The positional arguments of torch.ops.rnnfast.rnn_forward for an Elman RNN given
    in the old order (hx a tensor, nonlinearity "tanh" or "relu")."""
    return (input, [hx], weights, batch_sizes, dropout_masks, elman_mode(nonlinearity),
            has_biases, num_layers, 0, bidirectional, train)


def call_rnn_forward(input, hx, weights, batch_sizes, dropout_masks, has_biases, num_layers,
                     nonlinearity, bidirectional, train=True):
    """torch.ops.rnnfast.rnn_forward for an Elman RNN in the old argument order;
    returns (output, h_n, workspace) with h_n and workspace single tensors, as the
    Elman op's lists hold exactly one each."""
    output, h_n, workspace = torch.ops.rnnfast.rnn_forward(*rnn_forward_args(
        input, hx, weights, batch_sizes, dropout_masks, has_biases, num_layers, nonlinearity,
        bidirectional, train))
    assert len(h_n) == 1, f"an Elman rnn_forward returned {len(h_n)} states"
    assert len(workspace) == 1, f"an Elman rnn_forward returned {len(workspace)} workspaces"
    return output, h_n[0], workspace[0]


def rnn_backward_args(grad_output, grad_h_n, input, hx, weights, batch_sizes, dropout_masks,
                      output, workspace, has_biases, num_layers, nonlinearity, bidirectional):
    """The positional arguments of torch.ops.rnnfast._rnn_backward for an Elman RNN given
    in the old order (grad_h_n, hx and workspace single tensors; grad_h_n may be None)."""
    return (grad_output, [grad_h_n], input, [hx], weights, batch_sizes, dropout_masks, output,
            _as_list(workspace), elman_mode(nonlinearity), has_biases, num_layers, 0,
            bidirectional)


def call_rnn_backward(grad_output, grad_h_n, input, hx, weights, batch_sizes, dropout_masks,
                      output, workspace, has_biases, num_layers, nonlinearity, bidirectional):
    """torch.ops.rnnfast._rnn_backward for an Elman RNN in the old argument order;
    returns (grad_input, grad_hx, grad_weights) with grad_hx a single tensor."""
    grad_input, grad_hx, grad_weights = torch.ops.rnnfast._rnn_backward(*rnn_backward_args(
        grad_output, grad_h_n, input, hx, weights, batch_sizes, dropout_masks, output,
        workspace, has_biases, num_layers, nonlinearity, bidirectional))
    assert len(grad_hx) == 1, f"an Elman _rnn_backward returned {len(grad_hx)} state grads"
    return grad_input, grad_hx[0], list(grad_weights)


def rnn_double_backward_args(gg_input, gg_hx, gg_weights, grad_output, grad_h_n, input, hx,
                             weights, batch_sizes, dropout_masks, has_biases, num_layers,
                             nonlinearity, bidirectional):
    """The positional arguments of torch.ops.rnnfast._rnn_double_backward (rnnfast/_ops.py)
    for an Elman RNN given in the old order (gg_hx, grad_h_n, hx single tensors or None)."""
    return (gg_input, [gg_hx], gg_weights, grad_output, [grad_h_n], input, [hx], weights,
            batch_sizes, dropout_masks, elman_mode(nonlinearity), has_biases, num_layers, 0,
            bidirectional)


def call_rnn_double_backward(*args):
    """torch.ops.rnnfast._rnn_double_backward for an Elman RNN in the old argument order
    (see rnn_double_backward_args); returns (g_grad_output, g_grad_h_n, g_input, g_hx,
    g_weights) with the state entries single tensors."""
    g_go, g_ghn, g_x, g_h0, g_w = torch.ops.rnnfast._rnn_double_backward(
        *rnn_double_backward_args(*args))
    assert len(g_ghn) == 1 and len(g_h0) == 1
    return g_go, g_ghn[0], g_x, g_h0[0], list(g_w)


def call_reference_forward(input, hx, weights, batch_sizes, dropout_masks, has_biases,
                           num_layers, nonlinearity, bidirectional):
    """rnnfast.reference.rnn_forward for an Elman RNN in the old argument order;
    returns (output, h_n) with h_n a single tensor."""
    output, h_n = rnnfast.reference.rnn_forward(
        input, [hx], weights, batch_sizes, dropout_masks, elman_mode(nonlinearity), has_biases,
        num_layers, 0, bidirectional)
    assert len(h_n) == 1
    return output, h_n[0]


# Per mode: gates per hidden unit (G) and states ([h] or [h, c]), as SPEC's table.
GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}
STATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 2, "GRU": 1}


def op_inputs(mode, packed, bidirectional, num_layers, has_biases, proj_size=0,
              dtype=torch.float64, device="cpu", masks=False, seed=0, N=3, L=5, I=3, H=4):
    """Random arguments (input, hx list, weights, batch_sizes, dropout_masks) of
    torch.ops.rnnfast.rnn_forward for any mode. Packed input uses batch_sizes
    [4, 3, 3, 1, 1]. Weights are scaled like nn's init so that deep stacks stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    D = 2 if bidirectional else 1
    G = GATES[mode]
    P = proj_size if proj_size > 0 else H
    weights = []
    for layer in range(num_layers):
        for _ in range(D):
            fan_in = I if layer == 0 else D * P
            weights.append(randn(G * H, fan_in, dtype=dtype, device=device, gen=g) / fan_in**0.5)
            weights.append(randn(G * H, P, dtype=dtype, device=device, gen=g) / P**0.5)
            if has_biases:
                weights += [randn(G * H, dtype=dtype, device=device, gen=g) * 0.5
                            for _ in range(2)]
            if proj_size > 0:
                weights.append(randn(P, H, dtype=dtype, device=device, gen=g) / H**0.5)
    if packed:
        batch_sizes = torch.tensor([4, 3, 3, 1, 1], dtype=torch.int64)
        rows = int(batch_sizes.sum())
        x = randn(rows, I, dtype=dtype, device=device, gen=g)
        N = 4
    else:
        batch_sizes = None
        x = randn(L, N, I, dtype=dtype, device=device, gen=g)
        rows = L * N
    hx = [randn(num_layers * D, N, P, dtype=dtype, device=device, gen=g)]
    if STATES[mode] == 2:
        hx.append(randn(num_layers * D, N, H, dtype=dtype, device=device, gen=g))
    m = None
    if masks and num_layers > 1:
        keep = torch.rand(num_layers - 1, rows, D * P, generator=g) > 0.4
        m = (keep.to(dtype) / 0.6).to(device)
    return x, hx, weights, batch_sizes, m


def rnn_op_inputs(packed, bidirectional, num_layers, has_biases, dtype=torch.float64,
                  device="cpu", masks=False, seed=0, N=3, L=5, I=3, H=4):
    """Random arguments (input, hx, weights, batch_sizes, dropout_masks) of an Elman
    rnn_forward in the old order (hx one tensor). Packed input uses batch_sizes
    [4, 3, 3, 1, 1]."""
    x, hx, weights, batch_sizes, m = op_inputs(
        "RNN_TANH", packed, bidirectional, num_layers, has_biases, 0, dtype, device, masks,
        seed, N, L, I, H)
    return x, hx[0], weights, batch_sizes, m
