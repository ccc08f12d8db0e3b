"""The activations of the CPU kernels, measured alone.

The fused kernels compute tanh and sigmoid with their own SIMD code (on AVX2 CPUs a
rational approximation, tools/fit_tanh.py). These tests read that code's output through
the modules, with weights that make the cell's output one activation exactly:

  * nn.RNN with W_ih = identity, W_hh = 0 and no bias: h_t = tanh(x_t);
  * nn.LSTM with W_hh = 0, c0 = 10, W_ih = identity on the output gate and zero
    elsewhere, and biases of 20 on the input, forget and cell gates: i = f = g = 1 in
    float32, so c_t >= 10, tanh(c_t) = 1 and h_t = o_t = sigmoid(x_t).

Specification, against float64 math over [-20, 20] (and tiny arguments):
  * tanh: absolute error <= 4e-7 (a few ulp of 1.0), relative error <= 4e-7, odd,
    tanh(0) = 0, within [-1, 1], and exactly +-1 from |x| = 9 on;
  * sigmoid: absolute error <= 2.5e-7, within [0, 1], exactly 1/2 at 0.
Sequences are long enough (T >= 8) to take the packed time loops as well as short.
"""

from __future__ import annotations

import pytest
import torch

import rnnfast

H = 64


def grid(steps: int) -> torch.Tensor:
    """(steps, B, H) float32 arguments, 64K of them: a dense sweep of [-20, 20] plus
    tiny values, shuffled."""
    B = 65536 // (steps * H)
    tiny = torch.logspace(-30, 0, 512, dtype=torch.float64)
    dense = torch.linspace(-20.0, 20.0, steps * B * H - 2 * tiny.numel(), dtype=torch.float64)
    values = torch.cat([dense, tiny, -tiny]).float()
    values = values[torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))]
    return values.reshape(steps, B, H)


def elman_tanh(x: torch.Tensor) -> torch.Tensor:
    rnn = rnnfast.RNN(H, H, bias=False)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.eye(H))
        rnn.weight_hh_l0.zero_()
        return rnn(x)[0]


def lstm_sigmoid(x: torch.Tensor) -> torch.Tensor:
    T, B, _ = x.shape
    lstm = rnnfast.LSTM(H, H).to(x.dtype)
    with torch.no_grad():
        lstm.weight_ih_l0.zero_()
        lstm.weight_ih_l0[3 * H:].copy_(torch.eye(H))  # gates i, f, g, o: o = sigmoid(x)
        lstm.weight_hh_l0.zero_()
        lstm.bias_ih_l0.copy_(torch.tensor([20.0, 20.0, 20.0, 0.0]).repeat_interleave(H))
        lstm.bias_hh_l0.zero_()
        hc0 = (torch.zeros(1, B, H, dtype=x.dtype), torch.full((1, B, H), 10.0, dtype=x.dtype))
        return lstm(x, hc0)[0]


@pytest.mark.parametrize("steps", [2, 64])
def test_tanh_is_accurate_to_a_few_ulp(steps):
    x = grid(steps)
    y = elman_tanh(x).double()
    exact = torch.tanh(x.double())
    err = (y - exact).abs()
    assert err.max().item() <= 4e-7
    nonzero = exact != 0
    assert (err[nonzero] / exact[nonzero].abs()).max().item() <= 4e-7
    assert y.abs().max().item() <= 1.0
    assert torch.equal(y[x.abs() >= 9], torch.sign(x[x.abs() >= 9]).double())


def test_tanh_is_odd_and_zero_at_zero():
    x = grid(16)
    x[0, 0, :4] = torch.tensor([0.0, -0.0, 1e-38, -1e-38])
    y = elman_tanh(x)
    assert torch.equal(elman_tanh(-x), -y)
    assert y[0, 0, 0].item() == 0.0 and y[0, 0, 1].item() == 0.0


@pytest.mark.parametrize("steps", [2, 64])
def test_sigmoid_is_accurate(steps):
    x = grid(steps)
    y = lstm_sigmoid(x).double()
    exact = torch.sigmoid(x.double())
    assert (y - exact).abs().max().item() <= 2.5e-7
    assert y.min().item() >= 0.0 and y.max().item() <= 1.0
    zero = torch.zeros(steps, 2, H)
    assert torch.equal(lstm_sigmoid(zero), torch.full_like(zero, 0.5))


def test_lstm_sigmoid_helper_reads_the_output_gate():
    # The helper's premise, in float64 (torch's own math): the output is sigmoid(x) up to
    # the 1 - sigmoid(20) ~ 2e-9 that float32 rounds away.
    x = grid(16).double()
    torch.testing.assert_close(lstm_sigmoid(x), torch.sigmoid(x), atol=1e-8, rtol=0)
