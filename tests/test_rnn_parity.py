"""rnnfast.RNN is a drop-in torch.nn.RNN: same parameters, outputs, h_n and gradients.

Every test builds an nn.RNN and an rnnfast.RNN from the same seed (so with bitwise-equal
parameters), feeds both the same fresh random data and compares output, h_n and the
gradients of input, hx and every parameter: float64 within 1e-10, float32 within 1e-5.
rnnfast.reference (a pure-PyTorch time loop) is a second oracle, also for packed
sequences at the op level.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import rnnfast
from cells import random_input
from helpers import (
    GRAD_TARGETS,
    assert_all_close,
    assert_close,
    call_reference_forward,
    call_rnn_backward,
    call_rnn_forward,
    forward_backward,
    grad_names,
    hidden_shape,
    loss_weights,
    make_pair,
    noncontiguous,
    poison_heap,
    randn,
    rnn_op_inputs,
    seed_per_test,  # noqa: F401  (autouse fixture)
)

DTYPES = [torch.float64, torch.float32]

# nonlinearity x bias x batch_first x bidirectional x num_layers: the full module grid.
GRID = [
    dict(nonlinearity=nl, bias=b, batch_first=bf, bidirectional=bi, num_layers=n)
    for nl, b, bf, bi, n in itertools.product(
        ["tanh", "relu"], [True, False], [False, True], [False, True], [1, 2, 3]
    )
]


def _cfg_id(cfg):
    return "-".join([
        cfg["nonlinearity"],
        "bias" if cfg["bias"] else "nobias",
        "bf" if cfg["batch_first"] else "tm",
        "bi" if cfg["bidirectional"] else "uni",
        f"L{cfg['num_layers']}",
    ])


def _dtype_id(dtype):
    return str(dtype).replace("torch.", "")


# Random input for a module: (L, N, H_in); (N, L, H_in) if batch_first; (L, H_in) if N is None.
_input = random_input


def _hx(module, N, dtype, device, requires_grad=True):
    return randn(*hidden_shape(module, N), dtype=dtype, device=device).requires_grad_(requires_grad)


def _compare(ref, new, x, hx, target, dtype):
    """Forward + backward through both modules with the same cotangents; compare everything."""
    out_ref, hn_ref = ref(x, hx) if hx is not None else ref(x)
    cot = loss_weights(out_ref.data if isinstance(out_ref, PackedSequence) else out_ref, hn_ref,
                       target)
    poison_heap()
    out_new, hn_new, g_new = forward_backward(new, x, hx, cot)
    out_ref, hn_ref, g_ref = forward_backward(ref, x, hx, cot)
    assert_close(out_new, out_ref, dtype, "output")
    assert_close(hn_new, hn_ref, dtype, "h_n")
    assert_all_close(g_new, g_ref, dtype, grad_names(new))
    for g in g_new:
        if g is not None:
            assert torch.isfinite(g).all()
    return out_new, hn_new, g_new


# ---------------------------------------------------------------------------
# Construction: parameters, RNG stream, state_dict
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", GRID, ids=_cfg_id)
def test_same_seed_gives_bitwise_equal_parameters_and_rng_state(cfg, device):
    """Seeded construction equals nn.RNN's: names, shapes, values, and the RNG state after."""
    torch.manual_seed(123)
    ref = nn.RNN(5, 6, device=device, **cfg)
    state_ref = torch.get_rng_state()
    torch.manual_seed(123)
    new = rnnfast.RNN(5, 6, device=device, **cfg)
    state_new = torch.get_rng_state()
    assert torch.equal(state_ref, state_new)
    assert [n for n, _ in new.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert list(new.state_dict().keys()) == list(ref.state_dict().keys())
    for (name, p_new), p_ref in zip(new.named_parameters(), ref.parameters()):
        assert p_new.shape == p_ref.shape and p_new.dtype == p_ref.dtype, name
        assert torch.equal(p_new, p_ref), name
    assert list(new.buffers()) == []
    assert isinstance(new, nn.RNNBase)


@pytest.mark.parametrize("cfg", GRID[::5], ids=_cfg_id)
def test_state_dict_loads_both_ways_strict(cfg, device):
    """nn.RNN -> rnnfast.RNN and rnnfast.RNN -> nn.RNN state_dicts load with strict=True."""
    torch.manual_seed(1)
    ref = nn.RNN(4, 5, device=device, dtype=torch.float64, **cfg)
    torch.manual_seed(2)
    new = rnnfast.RNN(4, 5, device=device, dtype=torch.float64, **cfg)
    assert not all(torch.equal(a, b) for a, b in zip(ref.parameters(), new.parameters()))
    new.load_state_dict(ref.state_dict(), strict=True)
    x = _input(new, 3, 2, torch.float64, device, requires_grad=False)
    for a, b in zip(new(x), ref(x)):
        assert_close(a, b, torch.float64)

    torch.manual_seed(3)
    other = rnnfast.RNN(4, 5, device=device, dtype=torch.float64, **cfg)
    ref.load_state_dict(other.state_dict(), strict=True)
    for a, b in zip(other(x), ref(x)):
        assert_close(a, b, torch.float64)
    # load_state_dict copies in place: the flat weights are still the live parameters.
    assert all(a is b for a, b in zip(other._flat_weights, other.parameters()))


# ---------------------------------------------------------------------------
# Forward and backward parity over the module grid
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("cfg", GRID, ids=_cfg_id)
def test_forward_backward_match_nn_rnn(cfg, dtype, device):
    """Output, h_n and all gradients (input, hx, every parameter) match nn.RNN."""
    ref, new = make_pair(5, 6, seed=7, device=device, dtype=dtype, **cfg)
    x = _input(new, 4, 3, dtype, device)
    hx = _hx(new, 3, dtype, device)
    _compare(ref, new, x, hx, "both", dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("target", GRAD_TARGETS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 3])
def test_gradients_through_output_only_h_n_only_or_both(num_layers, bidirectional, target, dtype,
                                                         device):
    """A loss on output alone, on h_n alone, or on both gives nn.RNN's gradients."""
    ref, new = make_pair(4, 5, num_layers, seed=11, bidirectional=bidirectional, device=device,
                         dtype=dtype)
    x = _input(new, 5, 2, dtype, device)
    hx = _hx(new, 2, dtype, device)
    _compare(ref, new, x, hx, target, dtype)


def _random_case(seed):
    rng = random.Random(seed)
    cfg = dict(
        nonlinearity=rng.choice(["tanh", "relu"]),
        bias=rng.random() < 0.5,
        batch_first=rng.random() < 0.5,
        bidirectional=rng.random() < 0.5,
        num_layers=rng.randint(1, 3),
    )
    case = dict(
        cfg=cfg,
        L=rng.choice([1, 2, 3, 7]),
        N=rng.choice([None, 0, 1, 2, 4]),  # None: unbatched input
        I=rng.randint(1, 7),
        H=rng.randint(1, 7),
        hx=rng.random() < 0.6,
        noncontig_x=rng.random() < 0.3,
        noncontig_hx=rng.random() < 0.3,
        dtype=rng.choice(DTYPES),
        target=rng.choice(GRAD_TARGETS),
    )
    return case


RANDOM_CASES = [_random_case(s) for s in range(60)]


def _case_id(case):
    return (
        f"{_cfg_id(case['cfg'])}-T{case['L']}-N{case['N']}-I{case['I']}-H{case['H']}"
        f"-{'hx' if case['hx'] else 'nohx'}{'-ncx' if case['noncontig_x'] else ''}"
        f"{'-nchx' if case['noncontig_hx'] else ''}-{_dtype_id(case['dtype'])}-{case['target']}"
    )


@pytest.mark.parametrize("case", RANDOM_CASES, ids=_case_id)
def test_random_configurations_match_nn_rnn(case, device):
    """Random mixes of every option (sizes, unbatched, N=0, T=1, hx/None, strides, loss)."""
    dtype = case["dtype"]
    ref, new = make_pair(case["I"], case["H"], seed=case["L"] * 100 + case["H"], device=device,
                         dtype=dtype, **case["cfg"])
    x = _input(new, case["L"], case["N"], dtype, device)
    if case["noncontig_x"]:
        x = noncontiguous(x)
    hx = None
    if case["hx"]:
        hx = _hx(new, case["N"], dtype, device)
        if case["noncontig_hx"]:
            hx = noncontiguous(hx)
    _compare(ref, new, x, hx, case["target"], dtype)


# ---------------------------------------------------------------------------
# Edge cases: unbatched, T=1, N=0, strides
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
def test_unbatched_input_matches_nn_rnn_and_batch_of_one(with_hx, batch_first, dtype, device):
    """(L, H_in) input with (D*NL, H) hx: nn.RNN's result, equal to the N=1 batched run."""
    ref, new = make_pair(3, 4, 2, seed=5, bidirectional=True, batch_first=batch_first,
                         device=device, dtype=dtype)
    x = _input(new, 5, None, dtype, device)
    hx = _hx(new, None, dtype, device) if with_hx else None
    out, h_n, _ = _compare(ref, new, x, hx, "both", dtype)
    assert out.shape == (5, 8) and h_n.shape == (4, 4)
    xb = x.detach().unsqueeze(0 if batch_first else 1)
    hb = hx.detach().unsqueeze(1) if with_hx else None
    out_b, hn_b = new(xb, hb) if with_hx else new(xb)
    assert torch.equal(out.detach(), out_b.squeeze(0 if batch_first else 1).detach())
    assert torch.equal(h_n.detach(), hn_b.squeeze(1).detach())


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("cfg", GRID[::3], ids=_cfg_id)
def test_single_time_step(cfg, dtype, device):
    """T=1: output equals the last layer's h_n and everything matches nn.RNN."""
    ref, new = make_pair(4, 5, seed=3, device=device, dtype=dtype, **cfg)
    x = _input(new, 1, 3, dtype, device)
    hx = _hx(new, 3, dtype, device)
    _compare(ref, new, x, hx, "both", dtype)


@pytest.mark.parametrize("cfg", GRID[::4], ids=_cfg_id)
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
def test_zero_batch_forward_and_backward(cfg, with_hx, device):
    """N=0 works as in nn.RNN: empty output and h_n, backward gives empty input/hx grads
    and zero parameter grads."""
    dtype = torch.float64
    ref, new = make_pair(3, 4, seed=2, device=device, dtype=dtype, **cfg)
    x = _input(new, 5, 0, dtype, device)
    hx = _hx(new, 0, dtype, device) if with_hx else None
    out, h_n, grads = _compare(ref, new, x, hx, "both", dtype)
    D = 2 if cfg["bidirectional"] else 1
    assert out.shape == ((0, 5, D * 4) if cfg["batch_first"] else (5, 0, D * 4))
    assert h_n.shape == (cfg["num_layers"] * D, 0, 4)
    assert grads[0].shape == x.shape
    for g in grads[2:]:
        assert torch.equal(g, torch.zeros_like(g))
    # .backward() accumulates into .grad as nn.RNN's does.
    new.zero_grad()
    out2, hn2 = new(x, hx) if with_hx else new(x)
    (out2.sum() + hn2.sum()).backward()
    assert all(p.grad is not None and not p.grad.any() for p in new.parameters())


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("cfg", GRID[::3], ids=_cfg_id)
def test_noncontiguous_input_and_hx(cfg, dtype, device):
    """Strided (non-contiguous) input and hx give nn.RNN's results and grads."""
    ref, new = make_pair(4, 5, seed=9, device=device, dtype=dtype, **cfg)
    x = noncontiguous(_input(new, 4, 3, dtype, device))
    hx = noncontiguous(_hx(new, 3, dtype, device))
    out, h_n, _ = _compare(ref, new, x, hx, "both", dtype)
    # ... and the same values as with contiguous copies.
    out_c, hn_c = new(x.detach().contiguous(), hx.detach().contiguous())
    assert torch.equal(out.detach(), out_c.detach())
    assert torch.equal(h_n.detach(), hn_c.detach())


def test_expanded_and_transposed_inputs(device):
    """Expanded (stride-0) hx and a transposed input are read correctly."""
    dtype = torch.float64
    ref, new = make_pair(4, 5, 2, seed=4, bidirectional=True, device=device, dtype=dtype)
    x = randn(3, 6, 4, dtype=dtype, device=device).transpose(0, 1).requires_grad_()  # (6, 3, 4)
    hx = randn(4, 1, 5, dtype=dtype, device=device).expand(4, 3, 5)
    assert not x.is_contiguous() and hx.stride(1) == 0
    _compare(ref, new, x, hx.detach().requires_grad_(), "both", dtype)


@pytest.mark.parametrize("cfg", GRID, ids=_cfg_id)
def test_output_strides_dtype_and_device_match_nn_rnn(cfg, device):
    """Output and h_n have nn.RNN's shape, strides, dtype and device; batch_first output is
    a transposed, non-contiguous view."""
    ref, new = make_pair(3, 4, seed=1, device=device, dtype=torch.float32, **cfg)
    for N in (2, None):
        x = _input(new, 5, N, torch.float32, device, requires_grad=False)
        for a, b in zip(new(x), ref(x)):
            assert a.shape == b.shape and a.stride() == b.stride()
            assert a.dtype == b.dtype and a.device == b.device
        if cfg["batch_first"] and N is not None:
            assert not new(x)[0].is_contiguous()


# ---------------------------------------------------------------------------
# Semantics: identities, default hx, no mutation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 3])
def test_output_h_n_identities(num_layers, bidirectional, batch_first, device):
    """output's last step is the last layer's h_n (forward direction); the reverse direction
    ends at t=0; h_n is ordered layer-major, then direction."""
    H = 5
    m = rnnfast.RNN(3, H, num_layers, bidirectional=bidirectional, batch_first=batch_first,
                    device=device, dtype=torch.float64)
    x = _input(m, 6, 4, torch.float64, device, requires_grad=False)
    out, h_n = m(x, _hx(m, 4, torch.float64, device, requires_grad=False))
    seq = out.transpose(0, 1) if batch_first else out  # (L, N, D*H)
    if bidirectional:
        assert torch.equal(seq[-1, :, :H], h_n[-2])
        assert torch.equal(seq[0, :, H:], h_n[-1])
    else:
        assert torch.equal(seq[-1], h_n[-1])
    # h_n[:D] is the first layer's final state: a 1-layer net with layer 0's weights
    # reproduces it exactly.
    D = 2 if bidirectional else 1
    one = rnnfast.RNN(3, H, 1, bidirectional=bidirectional, batch_first=batch_first,
                      device=device, dtype=torch.float64)
    one.load_state_dict({k: v for k, v in m.state_dict().items() if "_l0" in k})
    hx = _hx(m, 4, torch.float64, device, requires_grad=False)
    _, h_full = m(x, hx)
    _, h_one = one(x, hx[:D])
    assert torch.equal(h_full[:D], h_one)


@pytest.mark.parametrize("cfg", GRID[::6], ids=_cfg_id)
def test_hx_none_equals_zeros(cfg, device):
    """hx=None is the same as an all-zero hx (test_rnn_initial_hidden_state)."""
    m = rnnfast.RNN(3, 4, device=device, dtype=torch.float64, **cfg)
    for N in (3, None):
        x = _input(m, 5, N, torch.float64, device, requires_grad=False)
        zeros = torch.zeros(hidden_shape(m, N), dtype=torch.float64, device=device)
        out0, hn0 = m(x)
        out1, hn1 = m(x, zeros)
        assert torch.equal(out0, out1) and torch.equal(hn0, hn1)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_inputs_are_not_mutated(bidirectional, device):
    """Neither hx, input nor the parameters are written by forward or backward."""
    m = rnnfast.RNN(3, 4, 2, bidirectional=bidirectional, device=device, dtype=torch.float64)
    x = _input(m, 5, 2, torch.float64, device)
    hx = _hx(m, 2, torch.float64, device)
    saved = [t.detach().clone() for t in (x, hx, *m.parameters())]
    out, h_n = m(x, hx)
    (out.square().sum() + h_n.sum()).backward()
    for before, after in zip(saved, (x, hx, *m.parameters())):
        assert torch.equal(before, after.detach())
    assert h_n.data_ptr() != hx.data_ptr()
    assert hx.grad is not None and x.grad is not None


def test_double_backward_with_retain_graph_accumulates(device):
    """Two .backward(retain_graph=True) calls give twice the gradient, as in nn.RNN."""
    m = rnnfast.RNN(3, 4, 2, device=device, dtype=torch.float64)
    x = _input(m, 4, 2, torch.float64, device)
    out, h_n = m(x)
    loss = out.sum() + h_n.square().sum()
    loss.backward(retain_graph=True)
    first = [p.grad.clone() for p in m.parameters()]
    loss.backward()
    for g1, p in zip(first, m.parameters()):
        torch.testing.assert_close(p.grad, 2 * g1, atol=1e-12, rtol=0)


def test_frozen_parameters_get_no_grad(device):
    """Parameters with requires_grad=False get grad None; the others are nn.RNN's."""
    ref, new = make_pair(3, 4, 2, seed=8, device=device)
    for m in (ref, new):
        m.weight_hh_l0.requires_grad_(False)
        m.bias_ih_l1.requires_grad_(False)
    x = _input(new, 4, 2, torch.float64, device)
    for m in (ref, new):
        out, h_n = m(x)
        (out.sum() + h_n.sum()).backward()
    assert new.weight_hh_l0.grad is None and new.bias_ih_l1.grad is None
    for (name, p_new), p_ref in zip(new.named_parameters(), ref.parameters()):
        if p_ref.grad is not None:
            assert_close(p_new.grad, p_ref.grad, torch.float64, name)


# ---------------------------------------------------------------------------
# PackedSequence (module level)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_packed_sequence_matches_nn_rnn(bidirectional, with_hx, enforce_sorted, dtype, device):
    """PackedSequence input: data, h_n (at each sequence's true last step) and grads match;
    the result reuses batch_sizes and the permutation indices."""
    ref, new = make_pair(3, 4, 2, seed=6, bidirectional=bidirectional, batch_first=True,
                         device=device, dtype=dtype)
    lengths = [5, 3, 3, 1] if enforce_sorted else [2, 5, 1, 4]
    seqs = [randn(n, 3, dtype=dtype, device=device) for n in lengths]
    packed = pack_sequence(seqs, enforce_sorted=enforce_sorted)
    packed = PackedSequence(packed.data.requires_grad_(), packed.batch_sizes,
                            packed.sorted_indices, packed.unsorted_indices)
    hx = _hx(new, len(lengths), dtype, device) if with_hx else None
    out, h_n, _ = _compare(ref, new, packed, hx, "both", dtype)
    assert isinstance(out, PackedSequence)
    assert out.batch_sizes is packed.batch_sizes
    assert out.sorted_indices is packed.sorted_indices
    assert out.unsorted_indices is packed.unsorted_indices
    # Each sequence alone gives the same output and final state.
    D = 2 if bidirectional else 1
    padded, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True)
    for i, s in enumerate(seqs):
        h_i = hx[:, i : i + 1].detach() if with_hx else None
        o_i, hn_i = new(s.unsqueeze(0), h_i) if with_hx else new(s.unsqueeze(0))
        assert_close(padded[i, : len(s)].detach(), o_i[0].detach(), dtype, f"seq {i}")
        assert_close(h_n[:, i].detach(), hn_i[:, 0].detach(), dtype, f"h_n {i}")
        assert not padded[i, len(s):].any()
    assert h_n.shape == (2 * D, len(lengths), 4)


# ---------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("p", [0.276, 0.731, 1.0])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_train_dropout_matches_nn_rnn_under_same_seed(p, bidirectional, dtype, device):
    """Train-mode dropout draws nn.RNN's masks from the same RNG stream: with the same seed
    output, h_n and every gradient match, and the RNG state afterwards is identical."""
    ref, new = make_pair(4, 6, 3, seed=21, dropout=p, bidirectional=bidirectional,
                         device=device, dtype=dtype)
    x = _input(new, 5, 3, dtype, device)
    hx = _hx(new, 3, dtype, device)
    cot = loss_weights(*ref(x, hx), "both")
    torch.manual_seed(99)
    out_r, hn_r, g_r = forward_backward(ref, x, hx, cot)
    state_r = torch.get_rng_state()
    torch.manual_seed(99)
    out_n, hn_n, g_n = forward_backward(new, x, hx, cot)
    state_n = torch.get_rng_state()
    assert torch.equal(state_r, state_n)
    assert_close(out_n, out_r, dtype, "output")
    assert_close(hn_n, hn_r, dtype, "h_n")
    assert_all_close(g_n, g_r, dtype, grad_names(new))
    # Dropout really happened: a second draw differs (unless p == 1, which is deterministic).
    out_again, _ = new(x, hx)
    if p < 1:
        assert not torch.equal(out_again, out_n)
    else:
        assert torch.equal(out_again, out_n)


@pytest.mark.parametrize("p", [0.276, 1.0])
def test_train_dropout_packed_and_zero_batch_match_nn_rnn(p, device):
    """Same seed, same dropout for unsorted packed input and for N=0 (RNG state included)."""
    ref, new = make_pair(3, 4, 3, seed=22, dropout=p, bidirectional=True, device=device)
    seqs = [randn(n, 3, device=device) for n in (2, 5, 1, 4)]
    packed = pack_sequence(seqs, enforce_sorted=False)
    packed = PackedSequence(packed.data.requires_grad_(), packed.batch_sizes,
                            packed.sorted_indices, packed.unsorted_indices)
    hx = _hx(new, 4, torch.float64, device)
    cot = loss_weights(packed.data.new_empty(packed.data.shape[0], 8), hx, "both")
    results = []
    for m in (ref, new):
        torch.manual_seed(77)
        results.append(forward_backward(m, packed, hx, cot))
        results[-1] += (torch.get_rng_state(),)
    (out_r, hn_r, g_r, s_r), (out_n, hn_n, g_n, s_n) = results
    assert torch.equal(s_r, s_n)
    assert_close(out_n, out_r, torch.float64, "output")
    assert_close(hn_n, hn_r, torch.float64, "h_n")
    assert_all_close(g_n, g_r, torch.float64, grad_names(new))

    empty = _input(new, 5, 0, torch.float64, device)
    states = []
    for m in (ref, new):
        torch.manual_seed(78)
        out, h_n = m(empty)
        states.append(torch.get_rng_state())
        assert out.shape == (5, 0, 8) and h_n.shape == (6, 0, 4)
    assert torch.equal(*states)


@pytest.mark.parametrize("p", [0.276, 0.731, 1.0])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_dropout_masks_are_torch_dropout_masks(p, packed, device):
    """The masks are exactly F.dropout's on the (L, N, D*H) layer output (or packed data), one
    call per non-last layer in layer order: the reference with those masks equals rnnfast."""
    dtype = torch.float64
    m = rnnfast.RNN(3, 4, 3, dropout=p, bidirectional=True, device=device, dtype=dtype)
    x = randn(5, 2, 3, dtype=dtype, device=device)
    batch_sizes = None
    if packed:
        seq = pack_sequence([randn(n, 3, dtype=dtype, device=device) for n in (5, 4, 2)])
        x, batch_sizes = seq.data, seq.batch_sizes
    N = 3 if packed else 2
    hx = _hx(m, N, dtype, device, requires_grad=False)
    layer_shape = (x.shape[0], 8) if packed else (5, 2, 8)
    torch.manual_seed(5)
    masks = torch.stack([
        F.dropout(torch.ones(layer_shape, dtype=dtype, device=device), p, True) for _ in range(2)
    ]).reshape(2, -1, 8)
    exp_out, exp_hn = call_reference_forward(
        x, hx, [w.detach() for w in m._flat_weights], batch_sizes, masks, True, 3, "tanh", True)
    torch.manual_seed(5)
    if packed:
        out, h_n = m(PackedSequence(x, batch_sizes), hx)
        out = out.data
    else:
        out, h_n = m(x, hx)
    assert_close(out.detach(), exp_out, dtype, "output")
    assert_close(h_n.detach(), exp_hn, dtype, "h_n")


@pytest.mark.parametrize("p", [0.276, 0.731, 1.0])
def test_eval_mode_applies_no_dropout_and_uses_no_rng(p, device):
    """In eval mode dropout is off: the result equals dropout=0, is repeatable, matches
    nn.RNN in eval, and the forward consumes no random numbers."""
    dtype = torch.float64
    ref, new = make_pair(3, 4, 3, seed=13, dropout=p, bidirectional=True, device=device,
                         dtype=dtype)
    ref.eval()
    new.eval()
    x = _input(new, 5, 2, dtype, device)
    hx = _hx(new, 2, dtype, device)
    out, h_n, _ = _compare(ref, new, x, hx, "both", dtype)
    state = torch.get_rng_state()
    out_again, _ = new(x, hx)
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(out_again, out)
    no_dropout = rnnfast.RNN(3, 4, 3, bidirectional=True, device=device, dtype=dtype)
    no_dropout.load_state_dict(new.state_dict())
    out0, hn0 = no_dropout(x, hx)
    assert torch.equal(out.detach(), out0.detach()) and torch.equal(h_n.detach(), hn0.detach())


def test_no_rng_use_without_dropout(device):
    """dropout=0 in train mode, and dropout>0 with one layer, draw no random numbers."""
    x = randn(4, 2, 3, device=device)
    m = rnnfast.RNN(3, 4, 3, dtype=torch.float64, device=device)
    state = torch.get_rng_state()
    m(x)
    assert torch.equal(state, torch.get_rng_state())
    with pytest.warns(UserWarning):
        one = rnnfast.RNN(3, 4, 1, dropout=0.5, dtype=torch.float64, device=device)
    state = torch.get_rng_state()
    out1, _ = one(x)
    assert torch.equal(state, torch.get_rng_state())
    one.eval()
    assert torch.equal(out1, one(x)[0])


def test_train_dropout_applies_under_no_grad(device):
    """train() + no_grad() still drops (dropout does not depend on grad mode)."""
    ref, new = make_pair(3, 4, 2, seed=17, dropout=0.5, device=device)
    x = randn(6, 3, 3, device=device)
    with torch.no_grad():
        torch.manual_seed(4)
        out_r, _ = ref(x)
        torch.manual_seed(4)
        out_n, _ = new(x)
        out_again, _ = new(x)
    assert_close(out_n, out_r, torch.float64)
    assert not torch.equal(out_n, out_again)


def test_changing_dropout_after_construction_takes_effect(device):
    """m.dropout may be changed between calls (test_RNN_change_dropout)."""
    ref, new = make_pair(3, 4, 2, seed=18, dropout=0.0, device=device)
    x = randn(4, 2, 3, device=device)
    for p in (0.0, 0.5, 0.0, 0.7, 1.0, 0.2):
        ref.dropout = new.dropout = p
        torch.manual_seed(31)
        out_r, hn_r = ref(x)
        torch.manual_seed(31)
        out_n, hn_n = new(x)
        assert_close(out_n, out_r, torch.float64, f"p={p}")
        assert_close(hn_n, hn_r, torch.float64, f"p={p}")


@pytest.mark.parametrize("p", [0.0, 0.276, 0.731, 1.0])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_rnn_dropout_analytic_oracle(p, train, device):
    """torch's test_RNN_dropout: all-ones weights and input, relu, 2 layers of 1000 units."""
    rnn = rnnfast.RNN(10, 1000, 2, bias=False, dropout=p, nonlinearity="relu", device=device)
    rnn.train(train)
    with torch.no_grad():
        for w in rnn.parameters():
            w.fill_(1)
    x = torch.ones(1, 1, 10, device=device)
    hx = torch.zeros(2, 1, 1000, device=device)
    output, hy = rnn(x, hx)
    assert output.min() == output.max()
    val = output[0, 0, 0].item()
    if p == 0 or not train:
        assert val == 10000
    elif p == 1:
        assert val == 0
    else:
        assert 8000 < val < 12000
        denorm_mod = (val * (1 - p)) % 10
        assert min(denorm_mod, 10 - denorm_mod) < 1e-2
    assert hy[0].min() == hy[0].max() and hy[1].min() == hy[1].max()
    assert hy[0, 0, 0].item() == 10
    assert hy[1, 0, 0].item() == val


# ---------------------------------------------------------------------------
# The op against rnnfast.reference (second oracle), dense and packed
# ---------------------------------------------------------------------------


OP_CASES = [
    dict(packed=pk, bidirectional=bi, num_layers=nl, has_biases=b, nonlinearity=act, masks=mk)
    for pk, bi, nl, b, act, mk in itertools.product(
        [False, True], [False, True], [1, 3], [True, False], ["tanh", "relu"], [False, True]
    )
    if not (mk and nl == 1)
]


def _op_id(c):
    return "-".join([
        "packed" if c["packed"] else "dense", "bi" if c["bidirectional"] else "uni",
        f"L{c['num_layers']}", "bias" if c["has_biases"] else "nobias", c["nonlinearity"],
    ] + (["masks"] if c["masks"] else []))


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("case", OP_CASES, ids=_op_id)
def test_op_matches_reference_forward_and_backward(case, dtype, device):
    """torch.ops.rnnfast.rnn_forward (and its autograd) equals rnnfast.reference.rnn_forward,
    for dense and packed input, with and without dropout masks."""
    x, hx, weights, batch_sizes, masks = rnn_op_inputs(
        case["packed"], case["bidirectional"], case["num_layers"], case["has_biases"], dtype,
        device, masks=case["masks"])
    args = (batch_sizes, masks, case["has_biases"], case["num_layers"], case["nonlinearity"],
            case["bidirectional"])
    leaves = [t.clone().requires_grad_() for t in (x, hx, *weights)]
    poison_heap()
    out, h_n, workspace = call_rnn_forward(leaves[0], leaves[1], leaves[2:], *args)
    ref_leaves = [t.clone().requires_grad_() for t in (x, hx, *weights)]
    ref_out, ref_hn = call_reference_forward(ref_leaves[0], ref_leaves[1], ref_leaves[2:], *args)
    assert_close(out, ref_out, dtype, "output")
    assert_close(h_n, ref_hn, dtype, "h_n")
    rows = x.shape[0] if case["packed"] else x.shape[0] * x.shape[1]
    assert workspace.shape == (case["num_layers"] - 1, rows, out.shape[-1])
    go, gh = torch.randn_like(out), torch.randn_like(h_n)
    grads = torch.autograd.grad((out, h_n), leaves, (go, gh))
    ref_grads = torch.autograd.grad((ref_out, ref_hn), ref_leaves, (go, gh))
    names = ["input", "hx"] + [f"weights[{i}]" for i in range(len(weights))]
    assert_all_close(list(grads), list(ref_grads), dtype, names)


@pytest.mark.parametrize("missing", ["grad_output", "grad_h_n"])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_backward_op_treats_missing_grad_as_zero(missing, packed, device):
    """_rnn_backward with grad_output or grad_h_n None equals passing zeros, and equals the
    reference's gradients; it leaves every argument unchanged."""
    dtype = torch.float64
    x, hx, weights, batch_sizes, masks = rnn_op_inputs(packed, True, 2, True, dtype, device,
                                                  masks=True, seed=3)
    attrs = (True, 2, "tanh", True)
    out, h_n, ws = call_rnn_forward(x, hx, weights, batch_sizes, masks, *attrs)
    go, gh = torch.randn_like(out), torch.randn_like(h_n)
    if missing == "grad_output":
        go_arg, gh_arg, go_zero, gh_zero = None, gh, torch.zeros_like(out), gh
    else:
        go_arg, gh_arg, go_zero, gh_zero = go, None, go, torch.zeros_like(h_n)
    saved = [t.clone() for t in (x, hx, *weights, out, ws, go, gh)]
    poison_heap()
    gi, ghx, gw = call_rnn_backward(go_arg, gh_arg, x, hx, weights, batch_sizes, masks, out, ws,
                                    *attrs)
    gi0, ghx0, gw0 = call_rnn_backward(go_zero, gh_zero, x, hx, weights, batch_sizes, masks, out,
                                       ws, *attrs)
    for a, b in zip([gi, ghx, *gw], [gi0, ghx0, *gw0]):
        assert torch.equal(a, b)
    for before, after in zip(saved, (x, hx, *weights, out, ws, go, gh)):
        assert torch.equal(before, after)
    leaves = [t.clone().requires_grad_() for t in (x, hx, *weights)]
    r_out, r_hn = call_reference_forward(leaves[0], leaves[1], leaves[2:], batch_sizes, masks,
                                         *attrs)
    ref = torch.autograd.grad((r_out, r_hn), leaves, (go_zero, gh_zero))
    assert_all_close([gi, ghx, *gw], list(ref), dtype, ["input", "hx"] + ["w"] * len(gw))
