"""rnnfast.LSTMCell / rnnfast.GRUCell are drop-in torch.nn.LSTMCell / torch.nn.GRUCell.

Specification:
  * Construction: same signature, seeded parameters (bitwise), RNG state afterwards,
    repr, attributes and __constants__ as torch's cells.
  * forward(input, hx=None): 2-D (N, I) or 1-D (I,) input; LSTMCell takes and returns
    (h, c), GRUCell h; hx None means zeros. Results and the gradients of input, hx and
    every parameter match torch: float64 within 1e-10, float32 within 1e-5, with and
    without bias, N=0 included, strided inputs included.
  * Every bad call raises torch's exception type with torch's exact message
    (lstm-gru-compat.md §4): ranks, the hx forms of LSTMCell, sizes (input, batch,
    hidden0/hidden1), weights replaced by a wrong shape (checked before the hidden
    sizes by LSTMCell, last by GRUCell), dtypes.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from cells import CELLS, GATED_STEP, compare, is_lstm, make_pair, map_states, random_cell_hx
from helpers import noncontiguous, randn, seed_per_test  # noqa: F401  (autouse fixture)

DTYPES = [torch.float64, torch.float32]


def _dtype_id(dtype):
    return str(dtype).replace("torch.", "")


# ---------------------------------------------------------------------------
# Construction
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("cell", GATED_STEP)
def test_construction_matches_torch(cell, bias):
    torch_cls, rnnfast_cls, _ = CELLS[cell]
    torch.manual_seed(5)
    ref = torch_cls(3, 7, bias)
    state_ref = torch.get_rng_state()
    torch.manual_seed(5)
    new = rnnfast_cls(3, 7, bias)
    assert torch.equal(torch.get_rng_state(), state_ref)
    assert isinstance(new, nn.RNNCellBase)
    assert [n for n, _ in new.named_parameters()] == [n for n, _ in ref.named_parameters()]
    for (name, p_new), p_ref in zip(new.named_parameters(), ref.parameters()):
        assert p_new.shape == p_ref.shape and torch.equal(p_new, p_ref), name
    assert repr(new) == repr(ref)
    assert new.__constants__ == ref.__constants__
    for attr in ("input_size", "hidden_size", "bias", "bias_ih", "bias_hh"):
        if attr.startswith("bias_") and not bias:
            assert getattr(new, attr) is None and getattr(ref, attr) is None
        else:
            assert type(getattr(new, attr)) is type(getattr(ref, attr)), attr
    assert not hasattr(new, "nonlinearity")
    # The keyword constructor, device and dtype.
    m = rnnfast_cls(input_size=2, hidden_size=3, bias=False, device="cpu", dtype=torch.float64)
    assert m.weight_ih.dtype == torch.float64 and m.bias_ih is None
    with pytest.raises(TypeError, match="nonlinearity"):
        rnnfast_cls(3, 4, nonlinearity="relu")


# ---------------------------------------------------------------------------
# Forward and backward parity
# ---------------------------------------------------------------------------

CASES = list(itertools.product(GATED_STEP, [True, False], [True, False], [True, False]))


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("cell,bias,batched,with_hx", CASES, ids=[
    f"{c}-{'bias' if b else 'nobias'}-{'2d' if bt else '1d'}-{'hx' if h else 'nohx'}"
    for c, b, bt, h in CASES])
def test_forward_backward_match_torch(cell, bias, batched, with_hx, dtype):
    """h' (and c') and the gradients of input, h, c and every parameter."""
    ref, new = make_pair(cell, 5, 7, bias=bias, seed=3, dtype=dtype)
    N = 4 if batched else None
    x = randn(*((N, 5) if batched else (5,)), dtype=dtype).requires_grad_()
    hx = random_cell_hx(new, N, dtype) if with_hx else None
    results, _ = compare(ref, new, x, hx, dtype)
    shape = (4, 7) if batched else (7,)
    assert all(r.shape == shape for r in results)
    assert len(results) == (2 if is_lstm(cell) else 1)


@pytest.mark.parametrize("cell", GATED_STEP)
def test_returns_torch_types_and_hx_none_is_zeros(cell):
    """LSTMCell returns a tuple (h, c), GRUCell a tensor; hx=None equals explicit zeros."""
    ref, new = make_pair(cell, 3, 4, seed=1)
    x = randn(2, 3)
    out, expected = new(x), ref(x)
    assert type(out) is type(expected)
    zeros = map_states(torch.zeros_like, random_cell_hx(new, 2, requires_grad=False))
    with_zeros = new(x, zeros)
    for a, b in zip(out if is_lstm(cell) else [out], with_zeros if is_lstm(cell) else [with_zeros]):
        assert torch.equal(a, b)
    if is_lstm(cell):  # hx not mutated (torch's hx=None shares one zeros tensor for h and c)
        h, c = random_cell_hx(new, 2, requires_grad=False)
        h_before, c_before = h.clone(), c.clone()
        new(x, (h, c))
        assert torch.equal(h, h_before) and torch.equal(c, c_before)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("cell", GATED_STEP)
def test_empty_batch_and_strided_inputs(cell, dtype):
    ref, new = make_pair(cell, 5, 6, seed=2, dtype=dtype)
    results, grads = compare(ref, new, randn(0, 5, dtype=dtype).requires_grad_(),
                             random_cell_hx(new, 0, dtype), dtype)
    assert results[0].shape == (0, 6)
    assert all(not g.any() for g in grads)
    x = noncontiguous(randn(3, 5, dtype=dtype).requires_grad_())
    hx = map_states(noncontiguous, random_cell_hx(new, 3, dtype))
    compare(ref, new, x, hx, dtype)
    # Batch-major data read through a transpose.
    xt = randn(5, 3, dtype=dtype).t().requires_grad_()
    compare(ref, new, xt, map_states(lambda h: h.detach().requires_grad_(), hx), dtype)


# ---------------------------------------------------------------------------
# Errors: torch's type and message
# ---------------------------------------------------------------------------


def _expected_error(fn):
    """The exception type and message torch gives (the case is wrong if it gives none)."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - any exception type is the expectation
        return type(e), str(e)
    raise AssertionError("torch did not raise: bad test case")


def _set(module, name, value):
    setattr(module, name, nn.Parameter(value))
    return module


I, H = 10, 20
X = lambda *shape: torch.randn(*shape)  # noqa: E731


def _h(*shape):
    return torch.randn(*shape)


# (id, cell, make(module) -> module, call(module))
ERRORS = [
    # LSTMCell: ranks, then the hx forms
    ("lstm-input-3d", "lstm_cell", None, lambda m: m(X(2, 3, I))),
    ("lstm-input-0d", "lstm_cell", None, lambda m: m(X())),
    ("lstm-h-3d", "lstm_cell", None, lambda m: m(X(3, I), (_h(1, 3, H), _h(3, H)))),
    ("lstm-c-3d", "lstm_cell", None, lambda m: m(X(3, I), (_h(3, H), _h(1, 3, H)))),
    ("lstm-hx-tensor", "lstm_cell", None, lambda m: m(X(3, I), _h(3, H))),
    ("lstm-hx-c-none", "lstm_cell", None, lambda m: m(X(3, I), (_h(3, H), None))),
    ("lstm-hx-one-state", "lstm_cell", None, lambda m: m(X(3, I), (_h(3, H),))),
    ("lstm-hx-three-states", "lstm_cell", None,
     lambda m: m(X(3, I), (_h(3, H), _h(3, H), _h(3, H)))),
    # LSTMCell: sizes, in ATen's order
    ("lstm-input-size", "lstm_cell", None, lambda m: m(X(3, I + 1), (_h(3, H), _h(3, H)))),
    ("lstm-batch-h", "lstm_cell", None, lambda m: m(X(3, I), (_h(5, H), _h(5, H)))),
    ("lstm-hidden0-size", "lstm_cell", None, lambda m: m(X(3, I), (_h(3, H + 1), _h(3, H)))),
    ("lstm-hidden1-size", "lstm_cell", None, lambda m: m(X(3, I), (_h(3, H), _h(3, H + 1)))),
    ("lstm-hidden1-batch", "lstm_cell", None, lambda m: m(X(3, I), (_h(3, H), _h(5, H)))),
    ("lstm-batched-input-1d-hx", "lstm_cell", None, lambda m: m(X(3, I), (_h(H), _h(H)))),
    ("lstm-unbatched-input-2d-hx", "lstm_cell", None, lambda m: m(X(I), (_h(1, H), _h(1, H)))),
    ("lstm-weight_ih-rows", "lstm_cell", lambda m: _set(m, "weight_ih", X(4 * H - 1, I)),
     lambda m: m(X(3, I))),
    ("lstm-weight_hh-rows", "lstm_cell", lambda m: _set(m, "weight_hh", X(4 * H - 1, H)),
     lambda m: m(X(3, I))),
    ("lstm-weight-before-hidden", "lstm_cell",
     lambda m: _set(m, "weight_ih", X(4 * H - 1, I)),
     lambda m: m(X(3, I), (_h(3, H + 1), _h(3, H)))),
    # LSTMCell: dtypes
    ("lstm-input-float64", "lstm_cell", None, lambda m: m(X(3, I).double())),
    ("lstm-input-int64", "lstm_cell", None, lambda m: m(X(3, I).long())),
    ("lstm-h-float64", "lstm_cell", None, lambda m: m(X(3, I), (_h(3, H).double(), _h(3, H)))),
    # GRUCell
    ("gru-input-3d", "gru_cell", None, lambda m: m(X(2, 3, I))),
    ("gru-hidden-3d", "gru_cell", None, lambda m: m(X(3, I), _h(1, 3, H))),
    ("gru-hx-tuple", "gru_cell", None, lambda m: m(X(3, I), (_h(3, H),))),
    ("gru-input-size", "gru_cell", None, lambda m: m(X(3, I + 1), _h(3, H))),
    ("gru-batch", "gru_cell", None, lambda m: m(X(3, I), _h(5, H))),
    ("gru-hidden-size", "gru_cell", None, lambda m: m(X(3, I), _h(3, H + 1))),
    ("gru-weight_ih-rows", "gru_cell", lambda m: _set(m, "weight_ih", X(3 * H - 1, I)),
     lambda m: m(X(3, I))),
    ("gru-weight_hh-rows", "gru_cell", lambda m: _set(m, "weight_hh", X(3 * H - 1, H)),
     lambda m: m(X(3, I))),
    ("gru-weights-checked-last", "gru_cell", lambda m: _set(m, "weight_ih", X(3 * H - 1, I)),
     lambda m: m(X(3, I), _h(3, H + 1))),
    ("gru-input-float64", "gru_cell", None, lambda m: m(X(3, I).double())),
    ("gru-hx-float64", "gru_cell", None, lambda m: m(X(3, I), _h(3, H).double())),
]


@pytest.mark.parametrize("cell,make,call", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_errors_are_torchs(cell, make, call):
    """Same exception type and exact message as the torch cell for the same bad call."""
    torch_cls, rnnfast_cls, _ = CELLS[cell]
    modules = []
    for cls in (torch_cls, rnnfast_cls):
        torch.manual_seed(0)
        m = cls(I, H)
        modules.append(make(m) if make is not None else m)
    torch.manual_seed(1)
    exc_type, message = _expected_error(lambda: call(modules[0]))
    torch.manual_seed(1)  # the same random arguments for rnnfast
    with pytest.raises(exc_type) as info:
        call(modules[1])
    assert type(info.value) is exc_type
    assert str(info.value) == message


@pytest.mark.parametrize("cell", GATED_STEP)
def test_cells_accept_what_torch_accepts(cell):
    """Calls torch's cells accept are accepted with torch's results: a list hx for
    LSTMCell, input_size 0, hidden_size 0, float64 c for a float32 LSTMCell."""
    for I_, H_ in ((0, 3), (3, 0)):
        ref, new = make_pair(cell, I_, H_, dtype=torch.float32)
        x = torch.randn(2, I_)
        for a, b in zip(_flat(new(x)), _flat(ref(x)), strict=True):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    ref, new = make_pair(cell, 3, 4, dtype=torch.float32)
    x = torch.randn(2, 3)
    if is_lstm(cell):
        h, c = torch.randn(2, 4), torch.randn(2, 4)
        for hx in ([h, c], (h, c.double())):
            for a, b in zip(new(x, hx), ref(x, hx)):
                assert a.dtype == b.dtype
                torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def _flat(result):
    return list(result) if isinstance(result, tuple) else [result]
