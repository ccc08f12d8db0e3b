"""rnnfast.RNNCell is a drop-in for torch.nn.RNNCell, computed by the fused cell op.

Specification (compat §1.4, §3.6):
  * same constructor (input_size, hidden_size, bias=True, nonlinearity='tanh', device,
    dtype) that validates nothing, same parameters (bias=False registers None), same
    seeded initialisation, same repr and state_dict;
  * forward(input, hx=None): (N, H_in) or (H_in,) input, hx (N, H) / (H,) / None;
    output and every gradient equal nn.RNNCell's;
  * the same errors, type and message: dimension ValueErrors, ATen's cell checks
    ("weight_ih first dim must be 1 * hidden_size = 4, but got 5", "input has
    inconsistent input_size: got 11 expected 10", "Input batch size 3 doesn't match
    hidden0 batch size 5", "hidden0 has inconsistent hidden_size: got 21, expected 20")
    and the dtype mismatches raised by addmm;
  * the forward really runs torch.ops.rnnfast.rnn_cell_forward;
  * its backward op leaves out the input and hx gradients when the output mask says
    nobody wants them (None), with the weight gradients bitwise unchanged.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rnnfast

F64 = dict(atol=1e-12, rtol=0)


def make_pair(*args, seed=0, **kwargs):
    torch.manual_seed(seed)
    ref = nn.RNNCell(*args, **kwargs)
    torch.manual_seed(seed)
    new = rnnfast.RNNCell(*args, **kwargs)
    return ref, new


def randn(*shape, dtype=torch.float64, device="cpu", seed=1, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=gen, dtype=dtype).to(device)
    return t.requires_grad_(requires_grad)


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize(
    "args,kwargs",
    [
        ((3, 4), {}),
        ((3, 4), dict(bias=False)),
        ((3, 4), dict(nonlinearity="relu")),
        ((3, 4, False, "relu"), {}),
        ((10, 20, "relu"), {}),  # ModuleInfo's quirk: 'relu' lands in bias (truthy)
        ((5, 0), {}),
        ((0, 5), {}),
    ],
)
def test_construction_matches_nn_rnncell(args, kwargs):
    ref, new = make_pair(*args, **kwargs)
    assert repr(new) == repr(ref)
    assert new.input_size == ref.input_size and new.hidden_size == ref.hidden_size
    assert new.bias == ref.bias and new.nonlinearity == ref.nonlinearity
    assert list(new.state_dict()) == list(ref.state_dict())
    for (n_r, p_r), (n_n, p_n) in zip(ref.named_parameters(), new.named_parameters(),
                                      strict=True):
        assert n_r == n_n and torch.equal(p_r, p_n) and p_r.dtype == p_n.dtype
    for name in ("bias_ih", "bias_hh"):
        assert (getattr(new, name) is None) == (getattr(ref, name) is None)
    assert type(new).__constants__ == type(ref).__constants__
    assert isinstance(new, nn.RNNCellBase)


def test_seeded_init_consumes_the_same_random_stream():
    torch.manual_seed(7)
    nn.RNNCell(6, 9)
    after_ref = torch.rand(3)
    torch.manual_seed(7)
    rnnfast.RNNCell(6, 9)
    after_new = torch.rand(3)
    assert torch.equal(after_ref, after_new)


def test_factory_kwargs(device):
    cell = rnnfast.RNNCell(3, 4, device=device, dtype=torch.float64)
    assert all(p.device.type == device and p.dtype == torch.float64 for p in cell.parameters())
    meta = rnnfast.RNNCell(3, 4, device="meta")
    assert meta(torch.empty(2, 3, device="meta")).shape == (2, 4)


def test_unknown_nonlinearity_fails_only_at_forward():
    for bad in ("foo", None, "TANH"):
        ref, new = make_pair(3, 4, nonlinearity=bad)
        with pytest.raises(RuntimeError) as e_ref:
            ref(torch.randn(2, 3))
        with pytest.raises(RuntimeError) as e_new:
            new(torch.randn(2, 3))
        assert str(e_new.value) == str(e_ref.value) == f"Unknown nonlinearity: {bad}"


# --------------------------------------------------------------------------- forward / backward


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False], ids=["2d", "1d"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "hx_none"])
def test_forward_backward_matches_nn_rnncell(device, nonlinearity, bias, batched, with_hx):
    ref, new = make_pair(5, 7, bias=bias, nonlinearity=nonlinearity, dtype=torch.float64,
                         device=device)
    shape_x = (3, 5) if batched else (5,)
    shape_h = (3, 7) if batched else (7,)
    results = []
    for module in (ref, new):
        x = randn(*shape_x, device=device, seed=1, requires_grad=True)
        hx = randn(*shape_h, device=device, seed=2, requires_grad=True) if with_hx else None
        h = module(x, hx)
        g = randn(*h.shape, device=device, seed=3)
        wrt = [x] + ([hx] if with_hx else []) + list(module.parameters())
        results.append((h, torch.autograd.grad(h, wrt, g)))
    (h_r, g_r), (h_n, g_n) = results
    assert h_n.shape == h_r.shape == shape_h
    torch.testing.assert_close(h_n, h_r, **F64)
    for a, b in zip(g_n, g_r, strict=True):
        torch.testing.assert_close(a, b, **F64)


def test_float32_matches(device):
    ref, new = make_pair(16, 32, device=device)
    x = randn(8, 16, dtype=torch.float32, device=device)
    hx = randn(8, 32, dtype=torch.float32, device=device, seed=5)
    h = new(x, hx)
    assert h.dtype == torch.float32
    torch.testing.assert_close(h, ref(x, hx), atol=1e-6, rtol=1e-5)


def test_six_steps_through_time_with_backward(device):
    # test_nn.py's test_RNN_cell: unroll the cell, backprop through all steps.
    for bias in (True, False):
        ref, new = make_pair(10, 20, bias=bias, dtype=torch.float64, device=device)
        grads = []
        for module in (ref, new):
            x = randn(6, 3, 10, device=device, requires_grad=True)
            hx = randn(3, 20, device=device, seed=4, requires_grad=True)
            h = hx
            for t in range(6):
                h = module(x[t], h)
            h.sum().backward()
            grads.append([x.grad, hx.grad] + [p.grad for p in module.parameters()])
        for a, b in zip(*grads, strict=True):
            torch.testing.assert_close(a, b, atol=1e-11, rtol=0)


def test_hx_none_equals_zeros(device):
    _, new = make_pair(4, 6, device=device)
    x = randn(2, 4, dtype=torch.float32, device=device)
    assert torch.equal(new(x), new(x, torch.zeros(2, 6, device=device)))
    assert torch.equal(new(x[0]), new(x[0], torch.zeros(6, device=device)))


def test_zero_sizes(device):
    ref, new = make_pair(3, 0, device=device)
    assert new(randn(2, 3, dtype=torch.float32, device=device)).shape == (2, 0)
    ref, new = make_pair(3, 4, device=device)
    x = randn(0, 3, dtype=torch.float32, device=device, requires_grad=True)
    h = new(x)
    assert h.shape == (0, 4)
    h.sum().backward()
    assert x.grad.shape == (0, 3)
    ref, new = make_pair(0, 4, device=device)
    x = torch.empty(2, 0, device=device)
    torch.testing.assert_close(new(x), ref(x))


def test_non_contiguous_inputs(device):
    ref, new = make_pair(4, 6, dtype=torch.float64, device=device)
    x = randn(3, 8, device=device)[:, ::2]
    hx = randn(6, 3, device=device, seed=2).t()
    assert not x.is_contiguous() and not hx.is_contiguous()
    torch.testing.assert_close(new(x, hx), ref(x, hx), **F64)


def test_unbatched_input_with_2d_hx_broadcasts_like_torch():
    # torch quirk kept for parity: hx (H, H) with a 1-D input broadcasts the input.
    ref, new = make_pair(3, 4, dtype=torch.float64)
    x = randn(3)
    hx = randn(4, 4, seed=2)
    torch.testing.assert_close(new(x, hx), ref(x, hx), **F64)
    assert new(x, hx).shape == ref(x, hx).shape == (4, 4)


def test_forward_runs_the_fused_cell_op(monkeypatch):
    calls = []
    op = torch.ops.rnnfast.rnn_cell_forward

    def spy(*args):
        calls.append(args)
        return op(*args)

    monkeypatch.setattr(torch.ops.rnnfast, "rnn_cell_forward", spy)
    _, new = make_pair(3, 4)
    new(torch.randn(2, 3))
    assert len(calls) == 1


@pytest.mark.parametrize("mask", [[False, False], [True, False], [False, True]])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_cell_backward_output_mask(nonlinearity, mask):
    ops = torch.ops.rnnfast
    x, h = randn(3, 5, seed=2), randn(3, 4, seed=3)
    w_ih, w_hh = randn(4, 5, seed=4), randn(4, 4, seed=5)
    h1 = ops.rnn_cell_forward(x, h, w_ih, w_hh, None, None, nonlinearity)
    g = randn(3, 4, seed=6)
    full = ops._rnn_cell_backward(g, x, h, w_ih, w_hh, h1, False, nonlinearity)
    part = ops._rnn_cell_backward(g, x, h, w_ih, w_hh, h1, False, nonlinearity, mask)
    for k, wanted in enumerate(mask):
        assert (part[k] is None) == (not wanted)
        if wanted:
            assert torch.equal(part[k], full[k])
    for got, want in zip(part[2:], full[2:]):
        assert torch.equal(got, want)


def test_vmap_over_the_cell_matches_a_loop():
    _, new = make_pair(3, 4, dtype=torch.float64)
    xs = randn(5, 2, 3)
    out = torch.vmap(new)(xs)
    torch.testing.assert_close(out, torch.stack([new(x) for x in xs]), **F64)


# --------------------------------------------------------------------------- errors


def _error(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the exception itself is what is compared
        return type(e), str(e)
    return None


def _with(cell, **params):
    for name, shape in params.items():
        setattr(cell, name, nn.Parameter(torch.randn(*shape)))
    return cell


ERROR_CASES = {
    # name: (constructor args, forward(cell) -> result)
    "input_3d": ((10, 20), lambda c: c(torch.randn(2, 3, 10))),
    "input_0d": ((10, 20), lambda c: c(torch.randn(()))),
    "hidden_4d": ((10, 20), lambda c: c(torch.randn(3, 10), torch.randn(3, 1, 1, 20))),
    "weight_ih_first_dim": ((10, 4), lambda c: _with(c, weight_ih=(5, 10))(torch.randn(3, 10))),
    "weight_hh_first_dim": ((10, 4), lambda c: _with(c, weight_hh=(5, 4))(torch.randn(3, 10))),
    "weight_hh_not_square": ((10, 4), lambda c: _with(c, weight_hh=(4, 5))(torch.randn(3, 10))),
    "input_size": ((10, 20), lambda c: c(torch.randn(3, 11), torch.randn(3, 20))),
    "input_size_1d": ((10, 20), lambda c: c(torch.randn(11))),
    "batch": ((10, 20), lambda c: c(torch.randn(3, 10), torch.randn(5, 20))),
    "batch_1d_hx": ((10, 20), lambda c: c(torch.randn(3, 10), torch.randn(20))),
    "hidden_size": ((10, 20), lambda c: c(torch.randn(3, 10), torch.randn(3, 21))),
    "hidden_size_1d": ((10, 20), lambda c: c(torch.randn(10), torch.randn(21))),
    "unbatched_2d_hx": ((5, 5), lambda c: c(torch.randn(5), torch.randn(1, 5))),
    "unbatched_2d_hx_shapes": ((3, 4), lambda c: c(torch.randn(3), torch.randn(4, 3))),
    "input_double": ((10, 20), lambda c: c(torch.randn(3, 10).double())),
    "hx_double": ((10, 20), lambda c: c(torch.randn(3, 10), torch.randn(3, 20).double())),
    "input_long": ((10, 20), lambda c: c.double()(torch.ones(3, 10, dtype=torch.long))),
    "bias_float_in_double_cell": (
        (10, 20), lambda c: _with(c.double(), bias_hh=(20,))(torch.randn(3, 10).double())
    ),
    "bias_shape": ((10, 20), lambda c: _with(c, bias_ih=(21,))(torch.randn(3, 10))),
    "device": ((10, 20), lambda c: c(torch.randn(3, 10), torch.randn(3, 20, device="meta"))),
    "not_a_tensor": ((10, 20), lambda c: c([[1.0] * 10])),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_match_nn_rnncell(case):
    args, call = ERROR_CASES[case]
    ref, new = make_pair(*args)
    expected = _error(lambda: call(ref))
    assert expected is not None, "the case must be an error for nn.RNNCell"
    assert _error(lambda: call(new)) == expected


def test_module_db_error_messages():
    # The exact texts of torch's ModuleInfo error inputs (common_modules.py).
    cell = rnnfast.RNNCell(10, 20)
    with pytest.raises(RuntimeError,
                       match="^input has inconsistent input_size: got 11 expected 10$"):
        cell(torch.randn(3, 11), torch.randn(3, 20))
    with pytest.raises(RuntimeError,
                       match="^hidden0 has inconsistent hidden_size: got 21, expected 20$"):
        cell(torch.randn(3, 10), torch.randn(3, 21))
    with pytest.raises(RuntimeError,
                       match="^Input batch size 3 doesn't match hidden0 batch size 5$"):
        cell(torch.randn(3, 10), torch.randn(5, 20))
    with pytest.raises(ValueError,
                       match="^RNNCell: Expected hidden to be 1D or 2D, got 4D instead$"):
        cell(torch.randn(3, 10), torch.randn(3, 1, 1, 20))
    small = rnnfast.RNNCell(10, 4)
    small.weight_ih = nn.Parameter(torch.randn(5, 10))
    with pytest.raises(RuntimeError,
                       match=r"^weight_ih first dim must be 1 \* hidden_size = 4, but got 5$"):
        small(torch.randn(3, 10))
    with pytest.raises(RuntimeError,
                       match="^mat1 and mat2 must have the same dtype, but got Double and Float$"):
        cell(torch.randn(3, 10, dtype=torch.float64))
