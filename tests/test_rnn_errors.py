"""rnnfast.RNN fails exactly as torch.nn.RNN does; the raw ops reject garbage clearly.

Module-level tests run the same bad call on nn.RNN first to obtain the expected
exception type and message, then require rnnfast.RNN to raise the same type with the
same text. Raw-op tests require a RuntimeError that names the offending argument.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import rnnfast
from helpers import (  # noqa: F401  (seed_per_test: autouse fixture)
    call_rnn_backward,
    call_rnn_forward,
    randn,
    rnn_op_inputs,
    seed_per_test,
)

ops = torch.ops.rnnfast


def _expected_error(fn):
    """The exception type and message nn.RNN gives (the test is wrong if it gives none)."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - any exception type is the expectation
        return type(e), str(e)
    raise AssertionError("the reference (torch.nn.RNN) did not raise: bad test case")


def assert_same_error(fn_ref, fn_new):
    exc_type, message = _expected_error(fn_ref)
    with pytest.raises(exc_type) as info:
        fn_new()
    assert type(info.value) is exc_type
    assert str(info.value) == message


def _check_forward(build, call):
    """build(cls) -> module; call(module) runs the bad forward."""
    assert_same_error(lambda: call(build(nn.RNN)), lambda: call(build(rnnfast.RNN)))


def _bi(cls, **kw):
    return cls(3, 4, 2, bidirectional=True, **kw)


def _packed_unsorted():
    return pack_sequence([randn(4, 3, dtype=torch.float32), randn(2, 3, dtype=torch.float32),
                          randn(3, 3, dtype=torch.float32)], enforce_sorted=False)


def _f32(*shape):
    return randn(*shape, dtype=torch.float32)


# (id, module builder, bad call)
FORWARD_ERRORS = [
    # input rank
    ("input-0d", _bi, lambda m: m(_f32())),
    ("input-1d", _bi, lambda m: m(_f32(3))),
    ("input-4d", _bi, lambda m: m(_f32(1, 5, 2, 3))),
    # input_size
    ("input-size-batched", _bi, lambda m: m(_f32(5, 2, 6))),
    ("input-size-unbatched", _bi, lambda m: m(_f32(5, 6))),
    ("input-size-batch-first", lambda c: _bi(c, batch_first=True), lambda m: m(_f32(2, 5, 1))),
    # hx shape: tuple expected, list got
    ("hx-batch", _bi, lambda m: m(_f32(5, 2, 3), _f32(4, 3, 4))),
    ("hx-hidden", _bi, lambda m: m(_f32(5, 2, 3), _f32(4, 2, 5))),
    ("hx-layers", _bi, lambda m: m(_f32(5, 2, 3), _f32(2, 2, 4))),
    ("hx-unbatched", _bi, lambda m: m(_f32(5, 3), _f32(4, 5))),
    ("hx-unbatched-layers", _bi, lambda m: m(_f32(5, 3), _f32(3, 4))),
    ("hx-batch-first-is-not-batch-first", lambda c: c(3, 4, 2, batch_first=True),
     lambda m: m(_f32(2, 5, 3), _f32(2, 5, 4))),
    ("hx-packed-2d", _bi, lambda m: m(_packed_unsorted(), _f32(4, 4))),
    ("hx-packed-hidden", _bi, lambda m: m(_packed_unsorted(), _f32(4, 3, 5))),
    ("hx-packed-unsorted-batch", _bi, lambda m: m(_packed_unsorted(), _f32(4, 2, 4))),
    # hx rank
    ("hx-rank-3d-for-unbatched", _bi, lambda m: m(_f32(5, 3), _f32(4, 1, 4))),
    ("hx-rank-1d-for-unbatched", _bi, lambda m: m(_f32(5, 3), _f32(4))),
    ("hx-rank-2d-for-batched", _bi, lambda m: m(_f32(5, 2, 3), _f32(4, 4))),
    ("hx-rank-4d-for-batched", _bi, lambda m: m(_f32(5, 2, 3), _f32(1, 4, 2, 4))),
    # packed data rank
    ("packed-data-3d", _bi,
     lambda m: m(PackedSequence(_f32(9, 2, 3), _packed_unsorted().batch_sizes))),
    # dtype: input vs weights (ValueError), hx vs input (matmul's RuntimeError)
    ("input-float64-model-float32", _bi, lambda m: m(randn(5, 2, 3))),
    ("input-float32-model-float64", lambda c: _bi(c, dtype=torch.float64),
     lambda m: m(_f32(5, 2, 3))),
    ("input-int64", _bi, lambda m: m(torch.randint(0, 5, (5, 2, 3)))),
    ("input-float16", _bi, lambda m: m(_f32(5, 2, 3).half())),
    ("input-unbatched-float64", _bi, lambda m: m(randn(5, 3))),
    ("hx-float64-input-float32", _bi, lambda m: m(_f32(5, 2, 3), randn(4, 2, 4))),
    ("hx-float32-input-float64", lambda c: _bi(c, dtype=torch.float64),
     lambda m: m(randn(5, 2, 3), _f32(4, 2, 4))),
    ("hx-int64", _bi, lambda m: m(_f32(5, 2, 3), torch.randint(0, 5, (4, 2, 4)))),
    ("hx-int32", _bi, lambda m: m(_f32(5, 2, 3), torch.randint(0, 5, (4, 2, 4)).int())),
    # devices ('meta' stands in for another device)
    ("hx-on-other-device", _bi, lambda m: m(_f32(5, 2, 3), torch.empty(4, 2, 4, device="meta"))),
    ("input-on-other-device", _bi, lambda m: m(torch.empty(5, 2, 3, device="meta"))),
    ("input-and-hx-on-other-device", _bi,
     lambda m: m(torch.empty(5, 2, 3, device="meta"), torch.empty(4, 2, 4, device="meta"))),
    # zero-length sequence
    ("seq-len-0", _bi, lambda m: m(_f32(0, 2, 3))),
    ("seq-len-0-batch-first", lambda c: _bi(c, batch_first=True), lambda m: m(_f32(2, 0, 3))),
    ("seq-len-0-unbatched", _bi, lambda m: m(_f32(0, 3))),
    ("seq-len-0-with-hx", _bi, lambda m: m(_f32(0, 2, 3), _f32(4, 2, 4))),
    # not tensors
    ("input-list", _bi, lambda m: m([[1.0, 2.0, 3.0]])),
    ("input-tuple", _bi, lambda m: m((1.0, 2.0))),
    ("input-int", _bi, lambda m: m(3)),
    ("input-numpy", _bi, lambda m: m(np.ones((5, 2, 3), dtype=np.float32))),
    ("hx-list", _bi, lambda m: m(_f32(5, 2, 3), [[0.0] * 4] * 2)),
    ("hx-numpy", _bi, lambda m: m(_f32(5, 2, 3), np.zeros((4, 2, 4), dtype=np.float32))),
    # mode
    ("mode-lstm", _bi, lambda m: (setattr(m, "mode", "LSTM"), m(_f32(5, 2, 3)))),
]


@pytest.mark.parametrize("build,call", [c[1:] for c in FORWARD_ERRORS],
                         ids=[c[0] for c in FORWARD_ERRORS])
def test_forward_error_matches_nn_rnn(build, call):
    """Same exception type and exact message as nn.RNN.forward (nn-rnn-compat.md §3.5)."""
    _check_forward(build, call)


def test_forward_error_order_matches_nn_rnn():
    """With several problems at once, the first one nn.RNN reports is reported."""
    # rank of hx is checked before the dtype, the dtype before input_size, input_size
    # before the hidden size, and the hidden size before devices.
    _check_forward(_bi, lambda m: m(randn(5, 2, 6), randn(4, 4)))
    _check_forward(_bi, lambda m: m(randn(5, 2, 6), randn(4, 2, 4)))
    _check_forward(_bi, lambda m: m(_f32(5, 2, 6), _f32(4, 3, 4)))
    _check_forward(_bi, lambda m: m(_f32(5, 2, 3), torch.empty(4, 3, 4, device="meta")))
    _check_forward(_bi, lambda m: m(_f32(0, 2, 3), _f32(4, 3, 4)))


def test_forward_keyword_arguments_are_input_and_hx():
    """forward(input=..., hx=...) works; an unknown keyword is a TypeError as in nn.RNN."""
    m = rnnfast.RNN(3, 4)
    out, h_n = m(input=_f32(5, 3), hx=_f32(1, 4))
    assert out.shape == (5, 4) and h_n.shape == (1, 4)
    _check_forward(lambda c: c(3, 4), lambda m: m(_f32(5, 3), h0=_f32(1, 4)))


# ---------------------------------------------------------------------------
# Constructor (nn-rnn-compat.md §1.1, §1.2)
# ---------------------------------------------------------------------------

CONSTRUCTOR_ERRORS = [
    ("nonlinearity-unknown", lambda c: c(3, 4, nonlinearity="sigmoid")),
    ("nonlinearity-case", lambda c: c(3, 4, nonlinearity="TANH")),
    ("nonlinearity-none", lambda c: c(3, 4, nonlinearity=None)),
    ("nonlinearity-positional", lambda c: c(3, 4, 1, "gelu")),
    ("nonlinearity-before-sizes", lambda c: c(0, 4, nonlinearity="foo")),
    ("nonlinearity-twice", lambda c: c(3, 4, 1, "relu", nonlinearity="tanh")),
    ("proj-size", lambda c: c(3, 4, proj_size=2)),
    ("proj-size-zero", lambda c: c(3, 4, proj_size=0)),
    ("ninth-positional-is-proj-size", lambda c: c(3, 4, 1, "tanh", True, False, 0.0, False,
                                                  None)),
    ("unknown-kwarg", lambda c: c(3, 4, foo=1)),
    ("mode-kwarg", lambda c: c(3, 4, mode="RNN_TANH")),
    ("missing-sizes", lambda c: c()),
    ("dropout-string", lambda c: c(3, 4, 2, dropout="abc")),
    ("dropout-none", lambda c: c(3, 4, 2, dropout=None)),
    ("dropout-negative", lambda c: c(3, 4, 2, dropout=-0.1)),
    ("dropout-above-one", lambda c: c(3, 4, 2, dropout=1.5)),
    ("dropout-bool", lambda c: c(3, 4, 2, dropout=True)),
    ("dropout-numeric-string", lambda c: c(3, 4, 2, dropout="0.5")),
    ("dropout-tensor", lambda c: c(3, 4, 2, dropout=torch.tensor(0.3))),
    ("bias-int", lambda c: c(3, 4, bias=1)),
    ("bias-none", lambda c: c(3, 4, bias=None)),
    ("bias-str", lambda c: c(3, 4, bias="True")),
    ("batch-first-int", lambda c: c(3, 4, batch_first=0)),
    ("batch-first-str", lambda c: c(3, 4, batch_first="False")),
    ("input-size-float", lambda c: c(3.0, 4)),
    ("input-size-str", lambda c: c("10", 4)),
    ("input-size-numpy-int", lambda c: c(np.int64(3), 4)),
    ("input-size-zero", lambda c: c(0, 4)),
    ("input-size-negative", lambda c: c(-1, 4)),
    ("hidden-size-float", lambda c: c(3, 5.0)),
    ("hidden-size-zero", lambda c: c(3, 0)),
    ("hidden-size-negative", lambda c: c(3, -2)),
    ("hidden-size-bool", lambda c: c(3, True)),
    ("num-layers-zero", lambda c: c(3, 4, 0)),
    ("num-layers-float", lambda c: c(3, 4, 2.0)),
    ("num-layers-str", lambda c: c(3, 4, "2")),
    ("dtype-int", lambda c: c(3, 4, dtype=torch.int64)),
    # validation order: the dropout range before the bias type, bias before batch_first,
    # batch_first before input_size, input_size before hidden_size, hidden_size before
    # num_layers
    ("order-dropout-bias", lambda c: c(3, 4, 2, dropout=2.0, bias=1)),
    ("order-bias-batch-first", lambda c: c(3, 4, bias=1, batch_first=1)),
    ("order-batch-first-input-size", lambda c: c(0, 4, batch_first=1)),
    ("order-input-hidden", lambda c: c(0, 0)),
    ("order-hidden-layers", lambda c: c(3, 0, 0)),
]


@pytest.mark.parametrize("build", [c[1] for c in CONSTRUCTOR_ERRORS],
                         ids=[c[0] for c in CONSTRUCTOR_ERRORS])
def test_constructor_error_matches_nn_rnn(build):
    """Same exception type and exact message as nn.RNN(...) (the §1.2 table)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_same_error(lambda: build(nn.RNN), lambda: build(rnnfast.RNN))


@pytest.mark.parametrize("dropout", [0.5, 1, np.float32(0.3)])
def test_dropout_with_one_layer_warns_like_nn_rnn(dropout):
    """dropout > 0 with num_layers == 1 is a UserWarning with nn.RNN's text, not an error."""
    with pytest.warns(UserWarning) as ref_record:
        nn.RNN(3, 4, dropout=dropout)
    with pytest.warns(UserWarning) as new_record:
        m = rnnfast.RNN(3, 4, dropout=dropout)
    assert [str(w.message) for w in new_record] == [str(w.message) for w in ref_record]
    assert "non-zero dropout expects num_layers greater than 1" in str(new_record[0].message)
    assert m.dropout == nn.RNN(3, 4, 2, dropout=dropout).dropout


def test_dropout_warning_fires_before_later_errors():
    """RNN(3, 0, dropout=0.5) warns, then raises the hidden_size error, as nn.RNN."""
    with pytest.warns(UserWarning, match="dropout option adds dropout"):
        with pytest.raises(ValueError, match="^hidden_size must be greater than zero$"):
            rnnfast.RNN(3, 0, dropout=0.5)


def test_accepted_constructor_values_match_nn_rnn():
    """What nn.RNN accepts, rnnfast accepts, with the same attributes and repr."""
    cases = [
        lambda c: c(3, 4, 2, dropout=0),
        lambda c: c(3, 4, 2, dropout=1),
        lambda c: c(3, 4, 2, dropout=np.float32(0.3)),
        lambda c: c(3, 4, True),
        lambda c: c(3, 4, np.int64(2)),
        lambda c: c(3, 4, bidirectional=1),
        lambda c: c(3, 4, 1, "relu", False, True, 0.0, True),
        lambda c: c(input_size=3, hidden_size=4, num_layers=2, nonlinearity="relu"),
    ]
    for build in cases:
        ref, new = build(nn.RNN), build(rnnfast.RNN)
        for attr in ("mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first",
                     "dropout", "bidirectional", "proj_size", "nonlinearity"):
            assert getattr(new, attr) == getattr(ref, attr), attr
            assert type(getattr(new, attr)) is type(getattr(ref, attr)), attr
        assert repr(new) == repr(ref)


# ---------------------------------------------------------------------------
# The raw ops reject garbage with a RuntimeError that names the argument
# ---------------------------------------------------------------------------


def _fwd_args(**over):
    x, hx, weights, batch_sizes, masks = rnn_op_inputs(False, True, 2, True, dtype=torch.float32)
    args = dict(input=x, hx=hx, weights=weights, batch_sizes=batch_sizes, dropout_masks=masks,
                has_biases=True, num_layers=2, nonlinearity="tanh", bidirectional=True)
    args.update(over)
    return args


def _packed_args(batch_sizes, rows=None):
    x, hx, weights, _, _ = rnn_op_inputs(True, False, 1, True, dtype=torch.float32)
    if rows is not None:
        x = randn(rows, x.shape[1], dtype=torch.float32)
    return dict(input=x, hx=hx, weights=weights, batch_sizes=batch_sizes, dropout_masks=None,
                has_biases=True, num_layers=1, nonlinearity="tanh", bidirectional=False)


def _swap(weights, i, new):
    weights = list(weights)
    weights[i] = new
    return weights


_W = _fwd_args()["weights"]

OP_ERRORS = [
    ("weight-count", lambda: _fwd_args(weights=_W[:-1]), r"expected 16 weight tensors.*got 15"),
    ("weight-count-has-biases", lambda: _fwd_args(has_biases=False), r"expected 8 weight"),
    ("weight-shape", lambda: _fwd_args(weights=_swap(_W, 4, _f32(4, 5))),
     r"weights\[4\] \(weight_ih_l0_reverse\) must have shape \[4, 3\], got \[4, 5\]"),
    ("weight-shape-layer1", lambda: _fwd_args(weights=_swap(_W, 8, _f32(4, 4))),
     r"weights\[8\] \(weight_ih_l1\) must have shape \[4, 8\]"),
    ("bias-shape", lambda: _fwd_args(weights=_swap(_W, 3, _f32(5))),
     r"weights\[3\] \(bias_hh_l0\) must have shape \[4\]"),
    ("weight-dtype", lambda: _fwd_args(weights=_swap(_W, 1, _W[1].double())),
     r"weights\[1\] \(weight_hh_l0\) must have the dtype of input"),
    ("weight-hh-rank", lambda: _fwd_args(weights=_swap(_W, 1, _f32(4))), r"weights\[1\]"),
    ("hx-shape", lambda: _fwd_args(hx=_f32(4, 3, 5)),
     r"hx\[0\] must have shape \[4, 3, 4\], got \[4, 3, 5\]"),
    ("hx-dtype", lambda: _fwd_args(hx=randn(4, 3, 4)), r"hx\[0\] must have the dtype of input"),
    ("input-rank", lambda: _fwd_args(input=_f32(5, 3)), r"input must be 3-D"),
    ("input-dtype-int", lambda: _fwd_args(input=torch.ones(5, 3, 3, dtype=torch.int64)),
     r"input must be a floating-point tensor"),
    ("seq-len-0", lambda: _fwd_args(input=_f32(0, 3, 3)),
     r"Expected sequence length to be larger than 0"),
    ("mode", lambda: _fwd_args(nonlinearity="sigmoid"),
     r"rnnfast: mode must be 'RNN_TANH', 'RNN_RELU', 'LSTM' or 'GRU', got 'sigmoid'"),
    ("num-layers", lambda: _fwd_args(num_layers=0), r"num_layers must be >= 1"),
    ("dropout-masks-shape", lambda: _fwd_args(dropout_masks=_f32(1, 14, 8)),
     r"dropout_masks must have shape \[1, 15, 8\]"),
    ("batch-sizes-increasing", lambda: _packed_args(torch.tensor([2, 4, 3, 2, 1])),
     r"batch_sizes must be non-increasing"),
    ("batch-sizes-sum", lambda: _packed_args(torch.tensor([4, 3, 3, 1, 1]), rows=11),
     r"sum\(batch_sizes\) = 12 must equal the number of rows of the packed input, got 11"),
    ("batch-sizes-dtype", lambda: _packed_args(torch.tensor([4, 3, 3, 1, 1], dtype=torch.int32)),
     r"batch_sizes must be a 1-D int64 CPU tensor"),
    ("batch-sizes-2d", lambda: _packed_args(torch.tensor([[4, 3, 3, 1, 1]])),
     r"batch_sizes must be a 1-D int64 CPU tensor"),
    ("batch-sizes-zero", lambda: _packed_args(torch.tensor([4, 3, 3, 2, 0])),
     r"batch_sizes must be positive"),
    ("batch-sizes-empty", lambda: _packed_args(torch.tensor([], dtype=torch.int64), rows=0),
     r"batch_sizes must not be empty"),
    ("packed-input-rank", lambda: {**_packed_args(torch.tensor([4, 3, 3, 1, 1])),
                                   "input": _f32(12, 1, 3)}, r"packed input.*must be 2-D"),
]


@pytest.mark.parametrize("make_args,pattern", [c[1:] for c in OP_ERRORS],
                         ids=[c[0] for c in OP_ERRORS])
def test_rnn_forward_op_rejects_bad_arguments(make_args, pattern):
    """rnn_forward raises a RuntimeError naming the bad argument (no crash, no garbage)."""
    with pytest.raises(RuntimeError, match=pattern):
        call_rnn_forward(**make_args())


def test_rnn_forward_op_rejects_half_on_cpu_or_runs_it():
    """float16 input either runs (finite results) or is refused with a clear message."""
    args = _fwd_args()
    args["input"], args["hx"] = args["input"].half(), args["hx"].half()
    args["weights"] = [w.half() for w in args["weights"]]
    try:
        out, h_n, _ = call_rnn_forward(**args)
    except RuntimeError as e:
        assert "float32 and float64" in str(e)
    else:
        assert out.dtype == torch.float16 and torch.isfinite(out).all()


def _backward_args(**over):
    args = _fwd_args()
    out, h_n, ws = call_rnn_forward(**args)
    bw = dict(grad_output=torch.randn_like(out), grad_h_n=torch.randn_like(h_n),
              input=args["input"], hx=args["hx"], weights=args["weights"], batch_sizes=None,
              dropout_masks=None, output=out, workspace=ws, has_biases=True, num_layers=2,
              nonlinearity="tanh", bidirectional=True)
    bw.update(over)
    return bw


BACKWARD_ERRORS = [
    ("grad-output-shape", lambda: _backward_args(grad_output=_f32(5, 3, 4)),
     r"grad_output must have shape \[5, 3, 8\]"),
    ("grad-h-n-shape", lambda: _backward_args(grad_h_n=_f32(4, 3, 5)),
     r"grad_h_n\[0\] must have shape \[4, 3, 4\]"),
    ("grad-output-dtype", lambda: _backward_args(grad_output=randn(5, 3, 8)),
     r"grad_output must have the dtype of input"),
    ("workspace-shape", lambda: _backward_args(workspace=_f32(2, 15, 8)),
     r"workspace\[0\] must have shape \[1, 15, 8\]"),
    ("output-shape", lambda: _backward_args(output=_f32(5, 3, 4)),
     r"output must have shape \[5, 3, 8\]"),
    ("weight-count", lambda: _backward_args(weights=_W[:3]), r"expected 16 weight tensors"),
]


@pytest.mark.parametrize("make_args,pattern", [c[1:] for c in BACKWARD_ERRORS],
                         ids=[c[0] for c in BACKWARD_ERRORS])
def test_rnn_backward_op_rejects_bad_arguments(make_args, pattern):
    """_rnn_backward raises a RuntimeError naming the bad argument."""
    with pytest.raises(RuntimeError, match=pattern):
        call_rnn_backward(**make_args())


def _cell(**over):
    args = dict(input=_f32(3, 2), hx=_f32(3, 4), w_ih=_f32(4, 2), w_hh=_f32(4, 4), b_ih=_f32(4),
                b_hh=_f32(4), nonlinearity="tanh")
    args.update(over)
    return args


CELL_ERRORS = [
    ("w-ih-shape", lambda: _cell(w_ih=_f32(4, 3)), r"w_ih must have shape \[4, 2\]"),
    ("w-hh-shape", lambda: _cell(w_hh=_f32(4, 5)), r"w_hh must have shape \[4, 4\]"),
    ("hx-shape", lambda: _cell(hx=_f32(2, 4)), r"hx must have shape \[3, 4\]"),
    ("b-ih-shape", lambda: _cell(b_ih=_f32(5)), r"b_ih must have shape \[4\]"),
    ("one-bias-only", lambda: _cell(b_hh=None), r"b_ih and b_hh must both be given or both"),
    ("input-rank", lambda: _cell(input=_f32(2)), r"input must be 2-D"),
    ("dtype", lambda: _cell(hx=randn(3, 4)), r"hx must have the dtype of input"),
    ("nonlinearity", lambda: _cell(nonlinearity="gelu"), r"nonlinearity must be 'tanh' or"),
]


@pytest.mark.parametrize("make_args,pattern", [c[1:] for c in CELL_ERRORS],
                         ids=[c[0] for c in CELL_ERRORS])
def test_rnn_cell_forward_op_rejects_bad_arguments(make_args, pattern):
    """rnn_cell_forward raises a RuntimeError naming the bad argument."""
    with pytest.raises(RuntimeError, match=pattern):
        ops.rnn_cell_forward(**make_args())
