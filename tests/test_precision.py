"""Reduced precision: float16 / bfloat16 modules and torch.autocast.

Specification:
  * Under ``torch.autocast(device_type, dtype=bf16 or fp16)`` an rnnfast module behaves
    as nn.RNN / nn.RNNCell does on CPU: float32 input, hx and weights are cast
    (differentiably) to the autocast dtype, the kernels run in it, output and h_n
    come out in it, the "RNN input dtype ... does not match weight dtype" ValueError is
    not raised, and gradients reach the float32 parameters as float32.
  * float64 tensors are never cast (autocast leaves float64 alone).
  * Under CUDA autocast rnnfast follows the requested dtype too (bf16 gives bf16),
    unlike cuDNN nn.RNN, which always runs float16.
  * Values: within a few units in the last place of the low-precision type from
    float64 math on the same rounded inputs (the kernels accumulate in float32).

Tests that run the kernels in float16/bfloat16 need the CPU kernels' fp16/bf16
support; the dtype-plumbing tests run under FakeTensorMode or in float64.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import rnnfast

LOW = [torch.bfloat16, torch.float16]
# Max abs error allowed against float64 math on the rounded inputs (tanh outputs are
# in [-1, 1]: a few ulps of the type), and relative error for gradients.
ATOL = {torch.bfloat16: 3e-2, torch.float16: 4e-3}
GRAD_RTOL = {torch.bfloat16: 6e-2, torch.float16: 1e-2}


def randn(*shape, device="cpu", dtype=torch.float32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=dtype).to(device)


def exact_twin(module, dtype):
    """A float64 copy of `module` whose weights are the `dtype`-rounded weights."""
    twin = type(module)(*_ctor_args(module)).to(device=next(module.parameters()).device,
                                                dtype=torch.float64)
    twin.load_state_dict({k: v.to(dtype).double() for k, v in module.state_dict().items()})
    return twin.train(module.training)


def _ctor_args(m):
    if isinstance(m, nn.RNNBase):
        return (m.input_size, m.hidden_size, m.num_layers, m.nonlinearity, m.bias,
                m.batch_first, m.dropout, m.bidirectional)
    return (m.input_size, m.hidden_size, m.bias, m.nonlinearity)


def rounded(t, dtype):
    return t.detach().to(dtype).double()


def assert_grad_close(actual, expected, dtype):
    assert actual.dtype == torch.float32
    err = (actual.double() - expected).norm()
    assert err <= GRAD_RTOL[dtype] * expected.norm() + 1e-6, (err, expected.norm())


# --------------------------------------------------------------------------- autocast, RNN


RNN_CONFIGS = {
    "uni": dict(num_layers=1),
    "bi_2layer": dict(num_layers=2, bidirectional=True),
    "relu_batch_first_nobias": dict(num_layers=2, nonlinearity="relu", batch_first=True,
                                   bias=False),
}


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("config", list(RNN_CONFIGS))
def test_autocast_rnn_runs_in_the_autocast_dtype(device, dtype, config):
    torch.manual_seed(0)
    model = rnnfast.RNN(4, 8, **RNN_CONFIGS[config]).to(device)  # float32 parameters
    D = 2 if model.bidirectional else 1
    x = randn(3, 6, 4, device=device).requires_grad_()  # (L or N, N or L, H_in)
    hx = randn(model.num_layers * D, 3 if model.batch_first else 6, 8, device=device,
               seed=2).requires_grad_()
    with torch.autocast(device, dtype=dtype):
        out, h_n = model(x, hx)
    assert out.dtype == h_n.dtype == dtype  # the requested dtype, on CPU and CUDA alike

    twin = exact_twin(model, dtype)
    x64 = rounded(x, dtype).requires_grad_()
    hx64 = rounded(hx, dtype).requires_grad_()
    out64, h64 = twin(x64, hx64)
    torch.testing.assert_close(out.double(), out64, atol=ATOL[dtype], rtol=0)
    torch.testing.assert_close(h_n.double(), h64, atol=ATOL[dtype], rtol=0)

    # Backward outside autocast, as usual: float32 gradients for the float32 leaves.
    g_out = randn(*out.shape, device=device, seed=3)
    g_h = randn(*h_n.shape, device=device, seed=4)
    torch.autograd.backward((out.float(), h_n.float()), (g_out, g_h))
    torch.autograd.backward((out64, h64), (g_out.double(), g_h.double()))
    assert_grad_close(x.grad, x64.grad, dtype)
    assert_grad_close(hx.grad, hx64.grad, dtype)
    for p, p64 in zip(model.parameters(), twin.parameters(), strict=True):
        assert_grad_close(p.grad, p64.grad, dtype)


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
def test_autocast_matches_nn_rnn_output_dtype_on_cpu(dtype):
    torch.manual_seed(0)
    ref = nn.RNN(4, 8, 2)
    new = rnnfast.RNN(4, 8, 2)
    new.load_state_dict(ref.state_dict())
    x = randn(5, 2, 4)
    with torch.autocast("cpu", dtype=dtype):
        out_r, h_r = ref(x)
        out_n, h_n = new(x)
    assert (out_n.dtype, h_n.dtype) == (out_r.dtype, h_r.dtype) == (dtype, dtype)
    # nn.RNN rounds after every op; rnnfast accumulates in float32: close, not equal.
    torch.testing.assert_close(out_n.float(), out_r.float(), atol=2 * ATOL[dtype], rtol=0)


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
def test_autocast_skips_the_dtype_value_error(device, dtype):
    # A low-precision input to a float32 module: a ValueError without autocast (as
    # nn.RNN), accepted under autocast.
    model = rnnfast.RNN(4, 8).to(device)
    x = randn(5, 2, 4, device=device).to(dtype)
    with pytest.raises(ValueError, match="RNN input dtype .* does not match weight dtype"):
        model(x)
    with torch.autocast(device, dtype=dtype):
        out, h_n = model(x)
    assert out.dtype == h_n.dtype == dtype


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
def test_autocast_packed_input(device, dtype):
    torch.manual_seed(0)
    model = rnnfast.RNN(3, 5, 2, bidirectional=True).to(device)
    seqs = [randn(n, 3, device=device, seed=n) for n in (4, 2, 5)]
    packed = pack_sequence(seqs, enforce_sorted=False)
    with torch.autocast(device, dtype=dtype):
        out, h_n = model(packed)
    assert isinstance(out, PackedSequence)
    assert out.data.dtype == h_n.dtype == dtype
    out64, h64 = exact_twin(model, dtype)(
        PackedSequence(rounded(packed.data, dtype), packed.batch_sizes, packed.sorted_indices,
                       packed.unsorted_indices))
    torch.testing.assert_close(out.data.double(), out64.data, atol=ATOL[dtype], rtol=0)
    torch.testing.assert_close(h_n.double(), h64, atol=ATOL[dtype], rtol=0)


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
def test_autocast_under_torch_compile(device, dtype):
    torch.manual_seed(0)
    model = rnnfast.RNN(4, 8, 2).to(device)
    x = randn(5, 2, 4, device=device)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def run(x):
        with torch.autocast(device, dtype=dtype):
            return model(x)

    out, h_n = run(x)
    assert out.dtype == h_n.dtype == dtype
    with torch.autocast(device, dtype=dtype):
        eager = model(x)
    torch.testing.assert_close(out, eager[0], atol=0, rtol=0)


# --------------------------------------------------------------------------- autocast, cell


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("batched", [True, False], ids=["2d", "1d"])
def test_autocast_cell(device, dtype, batched):
    torch.manual_seed(0)
    cell = rnnfast.RNNCell(4, 8, nonlinearity="relu").to(device)
    x = randn(*((3, 4) if batched else (4,)), device=device).requires_grad_()
    hx = randn(*((3, 8) if batched else (8,)), device=device, seed=2)
    with torch.autocast(device, dtype=dtype):
        h = cell(x, hx)
    assert h.dtype == dtype
    twin = exact_twin(cell, dtype)
    x64 = rounded(x, dtype).requires_grad_()
    h64 = twin(x64, rounded(hx, dtype))
    torch.testing.assert_close(h.double(), h64, atol=ATOL[dtype], rtol=0)
    h.float().sum().backward()
    h64.sum().backward()
    assert_grad_close(x.grad, x64.grad, dtype)
    for p, p64 in zip(cell.parameters(), twin.parameters(), strict=True):
        assert_grad_close(p.grad, p64.grad, dtype)
    if device == "cpu":
        ref = nn.RNNCell(4, 8, nonlinearity="relu")
        with torch.autocast("cpu", dtype=dtype):
            assert ref(x, hx).dtype == h.dtype


# --------------------------------------------------------------------------- dtype plumbing
# (no fp16/bf16 kernel involved)


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
def test_autocast_casts_before_the_op_fake_tensors(dtype):
    # FakeTensorMode runs the fake kernels only: checks what dtype the ops receive.
    with FakeTensorMode():
        model = rnnfast.RNN(3, 4, 2, bidirectional=True)
        cell = rnnfast.RNNCell(3, 4)
        x = torch.randn(5, 2, 3)
        with torch.autocast("cpu", dtype=dtype):
            out, h_n = model(x)
            h = cell(x[0])
            out_f, h_f = rnnfast.functional.rnn(x, torch.zeros(4, 2, 4), model._flat_weights,
                                                num_layers=2, bidirectional=True)
        assert out.dtype == h_n.dtype == h.dtype == out_f.dtype == h_f.dtype == dtype
        out32, _ = model(x)
        assert out32.dtype == torch.float32  # autocast off again


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
def test_autocast_leaves_float64_alone(device, dtype):
    # Autocast never casts float64: a float64 model stays float64 (as nn.RNN).
    torch.manual_seed(0)
    ref = nn.RNN(3, 4, 2).double().to(device)
    new = rnnfast.RNN(3, 4, 2).double().to(device)
    new.load_state_dict(ref.state_dict())
    cell = rnnfast.RNNCell(3, 4).double().to(device)
    x = randn(5, 2, 3, device=device, dtype=torch.float64)
    with torch.autocast(device, dtype=dtype):
        out, h_n = new(x)
        h = cell(x[0])
    assert out.dtype == h_n.dtype == h.dtype == torch.float64
    torch.testing.assert_close(out, ref(x)[0], atol=1e-12, rtol=0)


def test_autocast_disabled_region_runs_in_float32(device):
    model = rnnfast.RNN(3, 4).to(device)
    x = randn(5, 2, 3, device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        with torch.autocast(device, enabled=False):
            out, h_n = model(x)
    assert out.dtype == h_n.dtype == torch.float32
    torch.testing.assert_close(out, model(x)[0], atol=0, rtol=0)
