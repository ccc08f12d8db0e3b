"""rnnfast.LSTM / rnnfast.GRU are drop-in torch.nn.LSTM / torch.nn.GRU.

Specification, for each gated cell of the registry (tests/cells.py: LSTM, LSTM with
projections, GRU):
  * Seeded construction gives torch's parameters (names, shapes, values) and leaves the
    RNG where torch leaves it; repr and attributes are torch's.
  * output, h_n (and c_n) and the gradients of the input, of each initial state (h0, c0)
    and of every parameter equal torch's: float64 within 1e-10, float32 within 1e-5
    (nn.LSTM float32 runs oneDNN, which sums in its own order). This holds over the grid
    bias x batch_first x bidirectional x 1-3 layers, for packed input with unsorted random
    lengths, unbatched input, every proj_size, hx None (= zeros) or given, strided input
    and hx, and a loss on any one result alone (c_n alone included).
  * Seeded training-mode dropout draws torch's masks (same results, same RNG state after).
  * float16 / bfloat16 modules are no further from float64 math on the same rounded
    weights and inputs than torch's own module in that dtype (plus one rounding step).
  * At the op level, torch.ops.rnnfast.rnn_forward and _rnn_backward equal the float64
    oracle rnnfast.reference (itself checked against nn.LSTM / nn.GRU here), dense and
    packed, with dropout masks; the workspace has the shapes SPEC gives, train=False
    keeps only the layer outputs and does not change the results.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import rnnfast
from cells import (
    CELLS,
    GATED,
    MODES,
    PROJ,
    assert_close,
    compare,
    is_lstm,
    make_pair,
    map_states,
    random_hx,
    random_input,
    run,
    state_width,
    states,
)
from helpers import (  # noqa: F401  (seed_per_test: autouse fixture)
    noncontiguous,
    op_inputs,
    poison_heap,
    randn,
    seed_per_test,
)

DTYPES = [torch.float64, torch.float32]


def _dtype_id(dtype):
    return str(dtype).replace("torch.", "")


# ---------------------------------------------------------------------------
# Construction
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("cell", GATED)
def test_seeded_construction_matches_torch(cell, bias, bidirectional):
    """Same seed: same parameter names, shapes and values, the same RNG state afterwards,
    the same repr and attributes (weight_hr last in each group, W_hh (G*H, P))."""
    torch_cls, rnnfast_cls, extra = CELLS[cell]
    kwargs = dict(extra, bias=bias, bidirectional=bidirectional, dropout=0.25, batch_first=True)
    torch.manual_seed(11)
    ref = torch_cls(3, 5, 2, **kwargs)
    state_ref = torch.get_rng_state()
    torch.manual_seed(11)
    new = rnnfast_cls(3, 5, 2, **kwargs)
    assert torch.equal(torch.get_rng_state(), state_ref)
    assert isinstance(new, nn.RNNBase) and not isinstance(new, torch_cls)
    assert [n for n, _ in new.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert new._flat_weights_names == ref._flat_weights_names
    for (name, p_new), p_ref in zip(new.named_parameters(), ref.parameters()):
        assert p_new.shape == p_ref.shape and torch.equal(p_new, p_ref), name
    assert repr(new) == repr(ref)
    for attr in ("mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first",
                 "dropout", "bidirectional", "proj_size"):
        assert getattr(new, attr) == getattr(ref, attr), attr
        assert type(getattr(new, attr)) is type(getattr(ref, attr)), attr
    assert not hasattr(new, "nonlinearity")


# ---------------------------------------------------------------------------
# The module grid
# ---------------------------------------------------------------------------

GRID = [
    dict(bias=b, batch_first=bf, bidirectional=bi, num_layers=n)
    for b, bf, bi, n in itertools.product([True, False], [False, True], [False, True], [1, 2, 3])
]


def _cfg_id(cfg):
    return "-".join(["bias" if cfg["bias"] else "nobias", "bf" if cfg["batch_first"] else "tm",
                     "bi" if cfg["bidirectional"] else "uni", f"L{cfg['num_layers']}"])


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("cfg", GRID, ids=_cfg_id)
@pytest.mark.parametrize("cell", GATED)
def test_forward_backward_match_torch(cell, cfg, dtype):
    """output, h_n, c_n and the gradients of input, h0, c0 and every parameter."""
    ref, new = make_pair(cell, 4, 5, seed=7, dtype=dtype, **cfg)
    x = random_input(new, 4, 3, dtype)
    hx = random_hx(new, 3, dtype)
    results, _ = compare(ref, new, x, hx, dtype)
    D = 2 if cfg["bidirectional"] else 1
    P = state_width(new)
    out_shape = (3, 4, D * P) if cfg["batch_first"] else (4, 3, D * P)
    assert results[0].shape == out_shape
    assert results[1].shape == (cfg["num_layers"] * D, 3, P)
    if is_lstm(cell):
        assert results[2].shape == (cfg["num_layers"] * D, 3, 5)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("cell", GATED)
def test_hx_none_is_zeros(cell, dtype):
    """No hx: torch's results, and bitwise the results of explicit zero states."""
    ref, new = make_pair(cell, 3, 4, 2, seed=3, bidirectional=True, dtype=dtype)
    x = random_input(new, 5, 2, dtype)
    results, grads = compare(ref, new, x, None, dtype)
    zeros = map_states(lambda h: torch.zeros_like(h).requires_grad_(), random_hx(new, 2, dtype))
    results0, grads0 = run(new, x, zeros)
    for a, b in zip(results, results0):
        assert torch.equal(a, b)
    for a, b in zip(grads, [grads0[0]] + grads0[1 + len(states(zeros)):]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", GATED)
def test_packed_unsorted_random_lengths_match_torch(cell, bidirectional, num_layers, with_hx,
                                                    dtype):
    """A PackedSequence of unsorted random lengths: output data, the states at each
    sequence's true last step in the original order, and every gradient."""
    ref, new = make_pair(cell, 3, 4, num_layers, seed=5, bidirectional=bidirectional,
                         dtype=dtype)
    lengths = torch.randint(1, 8, (5,)).tolist()
    lengths[1] = 7  # the longest one not first: the pack must reorder
    seqs = [randn(n, 3, dtype=dtype).requires_grad_() for n in lengths]
    packed = pack_sequence(seqs, enforce_sorted=False)
    hx = random_hx(new, 5, dtype) if with_hx else None
    compare(ref, new, packed, hx, dtype)
    out, _ = new(packed, hx) if with_hx else new(packed)
    assert isinstance(out, PackedSequence)
    assert out.batch_sizes is packed.batch_sizes
    assert out.sorted_indices is packed.sorted_indices
    assert out.unsorted_indices is packed.unsorted_indices


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
@pytest.mark.parametrize("cell", GATED)
def test_unbatched_input_matches_torch_and_batch_of_one(cell, with_hx, batch_first, dtype):
    """(L, I) input with (D*NL, P) / (D*NL, H) states: torch's results, and bitwise the
    N=1 batched run."""
    ref, new = make_pair(cell, 3, 4, 2, seed=6, bidirectional=True, batch_first=batch_first,
                         dtype=dtype)
    x = random_input(new, 5, None, dtype)
    hx = random_hx(new, None, dtype) if with_hx else None
    results, _ = compare(ref, new, x, hx, dtype)
    P = state_width(new)
    assert results[0].shape == (5, 2 * P) and results[1].shape == (4, P)
    batch_dim = 0 if batch_first else 1
    xb = x.detach().unsqueeze(batch_dim)
    hb = map_states(lambda h: h.detach().unsqueeze(1), hx)
    batched = new(xb, hb) if with_hx else new(xb)
    out_b = batched[0].squeeze(batch_dim)
    assert torch.equal(results[0], out_b.detach())
    for a, b in zip(results[1:], states(batched[1])):
        assert torch.equal(a, b.squeeze(1).detach())


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("proj_size", [1, 4], ids=["P1", "P4"])
def test_every_proj_size_matches_torch(proj_size, bidirectional, dtype):
    """proj_size 1 and H-1 (H=5), 2 layers: h is P wide everywhere, c is H wide."""
    ref, new = make_pair("lstm", 3, 5, 2, seed=8, proj_size=proj_size,
                         bidirectional=bidirectional, dtype=dtype)
    x = random_input(new, 4, 3, dtype)
    hx = random_hx(new, 3, dtype)
    results, _ = compare(ref, new, x, hx, dtype)
    D = 2 if bidirectional else 1
    assert results[0].shape == (4, 3, D * proj_size)
    assert results[1].shape == (2 * D, 3, proj_size) and results[2].shape == (2 * D, 3, 5)
    assert new.weight_hr_l1.shape == (proj_size, 5)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("cell", GATED)
def test_noncontiguous_input_and_hx(cell, dtype):
    """Strided input and states: torch's results, bitwise equal to contiguous copies."""
    ref, new = make_pair(cell, 4, 5, 2, seed=9, bidirectional=True, dtype=dtype)
    x = noncontiguous(random_input(new, 4, 3, dtype))
    hx = map_states(noncontiguous, random_hx(new, 3, dtype))
    results, _ = compare(ref, new, x, hx, dtype)
    again = new(x.detach().contiguous(), map_states(lambda h: h.detach().contiguous(), hx))
    for a, b in zip(results, [again[0]] + states(again[1])):
        assert torch.equal(a, b.detach())
    # A transposed (batch-first data read time-major) input and an expanded h0.
    xt = randn(3, 4, 4, dtype=dtype).transpose(0, 1).requires_grad_()
    h0 = randn(4, 1, state_width(new), dtype=dtype).expand(4, 3, state_width(new))
    hx2 = (h0, states(hx)[1].detach()) if is_lstm(cell) else h0
    assert not xt.is_contiguous() and h0.stride(1) == 0
    compare(ref, new, xt, map_states(lambda h: h.detach().requires_grad_(), hx2), dtype)


def _loss_targets():
    for cell in GATED:
        for loss_on in ["output", "h_n"] + (["c_n"] if is_lstm(cell) else []):
            yield cell, loss_on


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell,loss_on", list(_loss_targets()),
                         ids=[f"{c}-{t}" for c, t in _loss_targets()])
def test_gradients_through_one_result_alone(cell, loss_on, bidirectional, num_layers, dtype):
    """A loss on output alone, on h_n alone or on c_n alone gives torch's gradients
    (c_n alone reaches h0, c0 and every weight, weight_hr included)."""
    ref, new = make_pair(cell, 3, 4, num_layers, seed=12, bidirectional=bidirectional,
                         dtype=dtype)
    x = random_input(new, 5, 2, dtype)
    hx = random_hx(new, 2, dtype)
    _, grads = compare(ref, new, x, hx, dtype, loss_on=loss_on)
    if loss_on == "c_n":
        assert all(g.abs().sum() > 0 for g in grads[:3]), "c_n reaches input, h0 and c0"


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("cell", GATED)
def test_zero_batch_and_single_step(cell, dtype):
    """N=0: empty results, zero parameter gradients; T=1: torch's results."""
    ref, new = make_pair(cell, 3, 4, 2, seed=2, bidirectional=True, dtype=dtype)
    results, grads = compare(ref, new, random_input(new, 5, 0, dtype), None, dtype)
    assert results[0].shape == (5, 0, 2 * state_width(new))
    assert all(not g.any() for g in grads[1:])
    compare(ref, new, random_input(new, 1, 3, dtype), random_hx(new, 3, dtype), dtype)


# ---------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("cell", GATED)
def test_seeded_training_dropout_matches_torch(cell, packed):
    """Training mode, dropout 0.4, 3 bidirectional layers: with the same seed rnnfast
    draws torch's masks (same results and gradients) and leaves the RNG state as torch
    does; c is never dropped."""
    dtype = torch.float64
    ref, new = make_pair(cell, 3, 4, 3, seed=4, dropout=0.4, bidirectional=True, dtype=dtype)
    if packed:
        x = pack_sequence([randn(n, 3, dtype=dtype).requires_grad_() for n in (3, 6, 4)],
                          enforce_sorted=False)
    else:
        x = random_input(new, 6, 3, dtype)
    hx = random_hx(new, 3, dtype)
    rng_states = []
    outs = []
    for module in (ref, new):
        torch.manual_seed(21)
        outs.append(run(module, x, hx))
        rng_states.append(torch.get_rng_state())
    assert torch.equal(rng_states[0], rng_states[1]), "rnnfast drew a different number of numbers"
    (res_ref, g_ref), (res_new, g_new) = outs
    for a, e in zip(res_new + g_new, res_ref + g_ref):
        assert_close(a, e, dtype, "with dropout")
    # A different seed draws other masks.
    torch.manual_seed(22)
    other, _ = run(new, x, hx)
    assert not torch.equal(other[0], res_new[0])


@pytest.mark.parametrize("cell", GATED)
def test_eval_mode_and_no_dropout_draw_no_random_numbers(cell):
    """dropout > 0 in eval mode, and dropout 0 in training mode, use no RNG and equal a
    module without dropout."""
    ref, new = make_pair(cell, 3, 4, 3, seed=4, dropout=0.6, dtype=torch.float64)
    x = random_input(new, 5, 2)
    new.eval()
    ref.eval()
    before = torch.get_rng_state()
    results, _ = compare(ref, new, x, None, torch.float64)
    assert torch.equal(before, torch.get_rng_state())
    new.train()
    new.dropout = 0.0
    train_results, _ = run(new, x, None)
    assert torch.equal(before, torch.get_rng_state())
    for a, b in zip(results, train_results):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------
# Reduced precision
# ---------------------------------------------------------------------------

LOW = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}  # dtype: relative rounding step


def _rel_errors(results, oracle):
    return [((r.double() - o).norm() / o.norm().clamp_min(1e-30)).item()
            for r, o in zip(results, oracle, strict=True)]


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("dtype", list(LOW), ids=_dtype_id)
@pytest.mark.parametrize("cell", GATED)
def test_low_precision_no_worse_than_torch(cell, dtype, packed):
    """A float16 / bfloat16 module against float64 math on the same rounded weights and
    inputs: every result and gradient within 1.5x torch's own error in that dtype plus
    one rounding step."""
    torch_cls, rnnfast_cls, extra = CELLS[cell]
    torch.manual_seed(31)
    exact = torch_cls(6, 16, 2, bidirectional=True, dtype=torch.float64, **extra)
    rounded = {k: v.to(dtype) for k, v in exact.state_dict().items()}
    exact.load_state_dict({k: v.double() for k, v in rounded.items()})
    ours = rnnfast_cls(6, 16, 2, bidirectional=True, dtype=dtype, **extra)
    theirs = torch_cls(6, 16, 2, bidirectional=True, dtype=dtype, **extra)
    ours.load_state_dict(rounded)
    theirs.load_state_dict(rounded)
    x64 = randn(7, 4, 6).to(dtype).double()
    hx64 = map_states(lambda h: h.detach().to(dtype).double(), random_hx(exact, 4))
    lengths = [7, 3, 5, 1]

    def go(module, dt):
        x = x64.to(dt).requires_grad_()
        inp = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
        hx = map_states(lambda h: h.to(dt).requires_grad_(), hx64)
        results, grads = run(module, inp, hx, seed=5)
        return results + grads

    oracle = go(exact, torch.float64)
    mine = go(ours, dtype)
    torch_low = go(theirs, dtype)
    ulp = LOW[dtype]
    for i, (e_ours, e_torch) in enumerate(zip(_rel_errors(mine, oracle),
                                              _rel_errors(torch_low, oracle))):
        assert torch.isfinite(mine[i]).all(), f"result {i}: not finite"
        assert e_ours <= 1.5 * e_torch + ulp, (i, e_ours, e_torch)


# ---------------------------------------------------------------------------
# The op against rnnfast.reference (the float64 oracle)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("cell", GATED)
def test_reference_oracle_matches_torch(cell, packed):
    """rnnfast.reference (a plain per-step loop) is itself nn.LSTM / nn.GRU in float64."""
    ref, new = make_pair(cell, 3, 4, 2, seed=13, bidirectional=True)
    hx = random_hx(ref, 3)
    if packed:
        x = pack_sequence([randn(n, 3) for n in (4, 6, 2)], enforce_sorted=False)
        data, batch_sizes = x.data, x.batch_sizes
        sorted_hx = map_states(lambda h: h.index_select(1, x.sorted_indices), hx)
    else:
        x = randn(5, 3, 3)
        data, batch_sizes, sorted_hx = x, None, hx
    expected = ref(x, hx)
    out, h_n = rnnfast.reference.rnn_forward(
        data, states(sorted_hx), [w.detach() for w in ref._flat_weights], batch_sizes, None,
        MODES[cell], True, 2, ref.proj_size, True)
    exp_out = expected[0].data if packed else expected[0]
    assert_close(out, exp_out.detach(), torch.float64, "output")
    for got, want in zip(h_n, states(expected[1]), strict=True):
        if packed:
            got = got.index_select(1, x.unsorted_indices)
        assert_close(got, want.detach(), torch.float64, "state")


OP_CASES = [
    dict(cell=c, packed=pk, bidirectional=bi, num_layers=nl, has_biases=b, masks=mk)
    for c, pk, bi, nl, b, mk in itertools.product(
        GATED, [False, True], [False, True], [1, 3], [True, False], [False, True])
    if not (mk and nl == 1)
]


def _op_id(c):
    return "-".join([c["cell"], "packed" if c["packed"] else "dense",
                     "bi" if c["bidirectional"] else "uni", f"L{c['num_layers']}",
                     "bias" if c["has_biases"] else "nobias"] + (["masks"] if c["masks"] else []))


def _workspace_shapes(mode, num_layers, D, rows, H, P, train):
    """SPEC's workspace: [0] the lower layers' outputs; with train, LSTM/GRU add the
    activated gates and c (LSTM) or W_hn h + b_hn (GRU)."""
    shapes = [(num_layers - 1, rows, D * P)]
    if train:
        G = {"LSTM": 4, "GRU": 3}[mode]
        shapes += [(num_layers, rows, D * G * H), (num_layers, rows, D * H)]
    return shapes


# float64 over every case; float32 over half of them (bias and direction varied together).
OP_PARAMS = [
    pytest.param(case, torch.float64, id=f"{_op_id(case)}-float64") for case in OP_CASES
] + [
    pytest.param(case, torch.float32, id=f"{_op_id(case)}-float32") for case in OP_CASES
    if case["has_biases"] == case["bidirectional"]
]


@pytest.mark.parametrize("case,dtype", OP_PARAMS)
def test_op_matches_reference_forward_and_backward(case, dtype):
    """rnn_forward and its autograd (_rnn_backward) against the reference, dense and
    packed, with and without dropout masks; the workspace's shapes; train=False gives
    bitwise the same output and states and keeps only the layer outputs."""
    mode = MODES[case["cell"]]
    H = 4
    proj_size = PROJ if case["cell"] == "lstm_proj" else 0
    P = proj_size or H
    x, hx, weights, batch_sizes, masks = op_inputs(
        mode, case["packed"], case["bidirectional"], case["num_layers"], case["has_biases"],
        proj_size, dtype, masks=case["masks"], H=H)
    attrs = (mode, case["has_biases"], case["num_layers"], proj_size, case["bidirectional"])
    leaves = [t.clone().requires_grad_() for t in (x, *hx, *weights)]
    S = len(hx)
    poison_heap()
    out, h_n, workspace = torch.ops.rnnfast.rnn_forward(
        leaves[0], leaves[1:1 + S], leaves[1 + S:], batch_sizes, masks, *attrs, True)
    ref_leaves = [t.clone().requires_grad_() for t in (x, *hx, *weights)]
    ref_out, ref_hn = rnnfast.reference.rnn_forward(
        ref_leaves[0], ref_leaves[1:1 + S], ref_leaves[1 + S:], batch_sizes, masks, *attrs)
    assert len(h_n) == len(ref_hn) == S
    assert_close(out, ref_out, dtype, "output")
    for k, (a, e) in enumerate(zip(h_n, ref_hn)):
        assert_close(a, e, dtype, f"h_n[{k}]")
    D = 2 if case["bidirectional"] else 1
    rows = x.shape[0] if case["packed"] else x.shape[0] * x.shape[1]
    assert [tuple(w.shape) for w in workspace] == _workspace_shapes(
        mode, case["num_layers"], D, rows, H, P, train=True)

    cotangents = [torch.randn_like(out)] + [torch.randn_like(h) for h in h_n]
    grads = torch.autograd.grad([out, *h_n], leaves, cotangents)
    ref_grads = torch.autograd.grad([ref_out, *ref_hn], ref_leaves, cotangents)
    names = ["input"] + [f"hx[{k}]" for k in range(S)] + [f"weights[{i}]"
                                                          for i in range(len(weights))]
    for a, e, n in zip(grads, ref_grads, names, strict=True):
        assert_close(a, e, dtype, f"grad {n}")

    with torch.no_grad():
        out_eval, h_n_eval, ws_eval = torch.ops.rnnfast.rnn_forward(
            x, hx, weights, batch_sizes, masks, *attrs, False)
    assert torch.equal(out_eval, out.detach())
    assert all(torch.equal(a, b.detach()) for a, b in zip(h_n_eval, h_n, strict=True))
    assert [tuple(w.shape) for w in ws_eval] == _workspace_shapes(
        mode, case["num_layers"], D, rows, H, P, train=False)


MISSING = [(cell, missing) for cell in GATED
           for missing in ["output", "h_n[0]"] + (["h_n[1]"] if is_lstm(cell) else [])]


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("cell,missing", MISSING, ids=[f"{c}-no-grad-{m}" for c, m in MISSING])
def test_backward_op_treats_missing_grads_as_zero(cell, missing, packed):
    """_rnn_backward with grad_output or one grad_h_n entry None equals passing zeros,
    leaves every argument unchanged, and equals the reference's gradients."""
    dtype = torch.float64
    mode = MODES[cell]
    proj_size = PROJ if cell == "lstm_proj" else 0
    x, hx, weights, batch_sizes, masks = op_inputs(mode, packed, True, 2, True, proj_size,
                                                   dtype, masks=True, seed=3)
    attrs = (mode, True, 2, proj_size, True)
    out, h_n, ws = torch.ops.rnnfast.rnn_forward(x, hx, weights, batch_sizes, masks, *attrs,
                                                 True)
    go = torch.randn_like(out)
    gh = [torch.randn_like(h) for h in h_n]
    go_arg, gh_arg = go, list(gh)
    go_zero, gh_zero = go, list(gh)
    if missing == "output":
        go_arg, go_zero = None, torch.zeros_like(out)
    else:
        k = int(missing[4])  # "h_n[k]"
        gh_arg[k], gh_zero[k] = None, torch.zeros_like(gh[k])
    saved = [t.clone() for t in (x, *hx, *weights, out, *ws, go, *gh)]
    poison_heap()
    gi, ghx, gw = torch.ops.rnnfast._rnn_backward(go_arg, gh_arg, x, hx, weights, batch_sizes,
                                                  masks, out, ws, *attrs)
    gi0, ghx0, gw0 = torch.ops.rnnfast._rnn_backward(go_zero, gh_zero, x, hx, weights,
                                                     batch_sizes, masks, out, ws, *attrs)
    assert len(ghx) == len(hx) and len(gw) == len(weights)
    for a, b in zip([gi, *ghx, *gw], [gi0, *ghx0, *gw0], strict=True):
        assert torch.equal(a, b)
    for before, after in zip(saved, (x, *hx, *weights, out, *ws, go, *gh)):
        assert torch.equal(before, after)
    leaves = [t.clone().requires_grad_() for t in (x, *hx, *weights)]
    S = len(hx)
    r_out, r_hn = rnnfast.reference.rnn_forward(leaves[0], leaves[1:1 + S], leaves[1 + S:],
                                                batch_sizes, masks, *attrs)
    expected = torch.autograd.grad([r_out, *r_hn], leaves, [go_zero, *gh_zero])
    for a, e in zip([gi, *ghx, *gw], expected, strict=True):
        assert_close(a, e, dtype, "gradient")
