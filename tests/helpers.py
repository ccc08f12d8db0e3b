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


def rnn_op_inputs(packed, bidirectional, num_layers, has_biases, dtype=torch.float64,
                  device="cpu", masks=False, seed=0, N=3, L=5, I=3, H=4):
    """Random arguments (input, hx, weights, batch_sizes, dropout_masks) of
    torch.ops.rnnfast.rnn_forward. Packed input uses batch_sizes [4, 3, 3, 1, 1]."""
    g = torch.Generator().manual_seed(seed)
    D = 2 if bidirectional else 1
    weights = []
    for layer in range(num_layers):
        for _ in range(D):
            # Scaled like nn.RNN's init so that relu stacks stay O(1).
            fan_in = I if layer == 0 else D * H
            weights.append(randn(H, fan_in, dtype=dtype, device=device, gen=g) / fan_in**0.5)
            weights.append(randn(H, H, dtype=dtype, device=device, gen=g) / H**0.5)
            if has_biases:
                weights += [randn(H, dtype=dtype, device=device, gen=g) * 0.5 for _ in range(2)]
    if packed:
        batch_sizes = torch.tensor([4, 3, 3, 1, 1], dtype=torch.int64)
        rows = int(batch_sizes.sum())
        x = randn(rows, I, dtype=dtype, device=device, gen=g)
        N = 4
    else:
        batch_sizes = None
        x = randn(L, N, I, dtype=dtype, device=device, gen=g)
        rows = L * N
    hx = randn(num_layers * D, N, H, dtype=dtype, device=device, gen=g)
    m = None
    if masks and num_layers > 1:
        keep = torch.rand(num_layers - 1, rows, D * H, generator=g) > 0.4
        m = (keep.to(dtype) / 0.6).to(device)
    return x, hx, weights, batch_sizes, m
