"""Hostile inputs: every bad argument gives a clear Python exception, never a crash,
a hang or a silently wrong answer; NaN/Inf propagate exactly as in torch.nn.

* Modules (rnnfast.RNN / rnnfast.RNNCell): wrong rank, feature size, hx shape or dtype,
  integer / complex / bool tensors, mixed devices ('meta' against 'cpu'), parameters
  replaced by a user with a wrong shape or dtype, PackedSequences whose batch_sizes
  contradict their data. Each raises the exception type nn.RNN raises (ValueError for
  rank and input dtype, RuntimeError otherwise), with a message naming the culprit.
  Where nn.RNN silently computes something (a (1,)-shaped bias broadcast, batch_sizes
  that do not cover the data) rnnfast refuses with a RuntimeError.
* Raw ops (torch.ops.rnnfast.rnn_forward, _rnn_backward, rnn_cell_forward,
  _rnn_cell_backward): the op boundary validates its own arguments. Any single bad
  argument of an otherwise valid call raises RuntimeError naming that argument, on
  every device dispatch path (a 'meta' tensor among CPU tensors included). A
  hypothesis test feeds random garbage: the op raises, or its result is the oracle's.
* 64-bit sizes: shapes with more than 2**31 elements go through the fake kernels
  (FakeTensorMode) and the module on the meta device with exact shapes and strides.
* NaN / Inf in input, hx (h0, c0) or a weight: output, h_n (c_n) and every gradient have
  NaN and Inf at exactly the positions nn.RNN / nn.LSTM / nn.GRU (and their cells) have
  them, and equal finite values elsewhere. (For
  relu this includes torch's derivative at a NaN output: relu's backward is
  threshold_backward, `grad if not (y <= 0) else 0`, so the gradient passes through
  where y is NaN.)
"""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.utils.rnn import PackedSequence

import rnnfast
from cells import (CELLS, GATED, GATED_STEP, MODES, PROJ, grad_names, random_cell_hx, random_hx,
                   result_names, result_tensors, state_width, states)
from cells import make_pair as make_cell_pair
from helpers import call_reference_forward, call_rnn_backward, call_rnn_forward
from rnnfast import reference

ops = torch.ops.rnnfast


# ---------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------


def _rnn(**kwargs):
    return rnnfast.RNN(4, 6, 2, **kwargs)


def _set(module, name, value):
    setattr(module, name, nn.Parameter(value))
    return module


def _packed(rows, batch_sizes, dtype=torch.int64):
    return PackedSequence(torch.randn(rows, 4), torch.tensor(batch_sizes, dtype=dtype))


X = lambda *shape, **kw: torch.randn(*shape, **kw)  # noqa: E731 - fresh data per call

# (id, module factory, call(module), exception type, regex the message must match)
MODULE_CASES = [
    ("input-1d", _rnn, lambda m: m(X(4)), ValueError, "2D or 3D"),
    ("input-4d", _rnn, lambda m: m(X(1, 5, 3, 4)), ValueError, "2D or 3D"),
    ("input-features", _rnn, lambda m: m(X(5, 3, 5)), RuntimeError, "input_size"),
    ("input-empty-sequence", _rnn, lambda m: m(X(0, 3, 4)), RuntimeError, "sequence length"),
    ("input-int64", _rnn, lambda m: m(X(5, 3, 4).long()), ValueError, "dtype"),
    ("input-bool", _rnn, lambda m: m(X(5, 3, 4) > 0), ValueError, "dtype"),
    ("input-complex", _rnn, lambda m: m(X(5, 3, 4, dtype=torch.complex64)), ValueError, "dtype"),
    ("complex-module", lambda: _rnn(dtype=torch.complex64),
     lambda m: m(X(5, 3, 4, dtype=torch.complex64)), RuntimeError, "floating-point"),
    ("hx-shape", _rnn, lambda m: m(X(5, 3, 4), X(2, 3, 5)), RuntimeError, "hidden size"),
    ("hx-batch", _rnn, lambda m: m(X(5, 3, 4), X(2, 4, 6)), RuntimeError, "hidden size"),
    ("hx-layers", _rnn, lambda m: m(X(5, 3, 4), X(1, 3, 6)), RuntimeError, "hidden size"),
    ("hx-rank", _rnn, lambda m: m(X(5, 3, 4), X(2, 6)), RuntimeError, "3-D"),
    ("hx-float64", _rnn, lambda m: m(X(5, 3, 4), X(2, 3, 6, dtype=torch.float64)),
     RuntimeError, "dtype"),
    ("hx-int64", _rnn, lambda m: m(X(5, 3, 4), X(2, 3, 6).long()), RuntimeError, "dtype"),
    ("input-meta", _rnn, lambda m: m(X(5, 3, 4, device="meta")), RuntimeError, "device"),
    ("hx-meta", _rnn, lambda m: m(X(5, 3, 4), X(2, 3, 6, device="meta")), RuntimeError, "device"),
    ("weight-meta", lambda: _set(_rnn(), "weight_hh_l1", X(6, 6, device="meta")),
     lambda m: m(X(5, 3, 4)), RuntimeError, "device"),
    ("weight_hh_l0-shape", lambda: _set(_rnn(), "weight_hh_l0", X(6, 5)),
     lambda m: m(X(5, 3, 4)), RuntimeError, "weight_hh_l0"),
    ("weight_hh_l1-shape", lambda: _set(_rnn(), "weight_hh_l1", X(5, 5)),
     lambda m: m(X(5, 3, 4)), RuntimeError, "weight_hh_l1"),
    ("weight_ih_l1-shape", lambda: _set(_rnn(), "weight_ih_l1", X(6, 4)),
     lambda m: m(X(5, 3, 4)), RuntimeError, "weight_ih_l1"),
    ("bias_hh_l0-shape", lambda: _set(_rnn(), "bias_hh_l0", X(7)),
     lambda m: m(X(5, 3, 4)), RuntimeError, "bias_hh_l0"),
    # nn.RNN broadcasts this one silently; rnnfast requires the documented shape.
    ("bias_hh_l0-broadcastable", lambda: _set(_rnn(), "bias_hh_l0", X(1)),
     lambda m: m(X(5, 3, 4)), RuntimeError, "bias_hh_l0"),
    ("weight_hh_l0-float64", lambda: _set(_rnn(), "weight_hh_l0", X(6, 6, dtype=torch.float64)),
     lambda m: m(X(5, 3, 4)), RuntimeError, "weight_hh_l0.*dtype|dtype.*weight_hh_l0"),
    ("weight_ih_l0-float64", lambda: _set(_rnn(), "weight_ih_l0", X(6, 4, dtype=torch.float64)),
     lambda m: m(X(5, 3, 4)), ValueError, "dtype"),
    ("bias_ih_l1-float16", lambda: _set(_rnn(), "bias_ih_l1", X(6).half()),
     lambda m: m(X(5, 3, 4)), RuntimeError, "bias_ih_l1"),
    ("weight-in-bf16-module-float32", lambda: _set(_rnn(dtype=torch.bfloat16), "weight_hh_l0", X(6, 6)),
     lambda m: m(X(5, 3, 4, dtype=torch.bfloat16)), RuntimeError, "weight_hh_l0"),
    # PackedSequences built by hand whose batch_sizes contradict the data.
    ("batch_sizes-sum-below-rows", _rnn, lambda m: m(_packed(10, [3, 3, 3])), RuntimeError,
     "batch_sizes"),
    ("batch_sizes-sum-above-rows", _rnn, lambda m: m(_packed(8, [3, 3, 3])), RuntimeError,
     "batch_sizes"),
    ("batch_sizes-increasing", _rnn, lambda m: m(_packed(9, [2, 3, 4])), RuntimeError,
     "batch_sizes"),
    ("batch_sizes-zero", _rnn, lambda m: m(_packed(6, [3, 3, 0])), RuntimeError, "batch_sizes"),
    ("batch_sizes-negative", _rnn, lambda m: m(_packed(7, [3, 3, -1, 2])), RuntimeError,
     "batch_sizes"),
    ("batch_sizes-int32", _rnn, lambda m: m(_packed(9, [3, 3, 3], torch.int32)), RuntimeError,
     "batch_sizes"),
    ("packed-hx-batch", _rnn, lambda m: m(_packed(9, [3, 3, 3]), X(2, 4, 6)), RuntimeError,
     "hidden size"),
]


@pytest.mark.parametrize("make, call, exc, match", [c[1:] for c in MODULE_CASES],
                         ids=[c[0] for c in MODULE_CASES])
def test_rnn_module_rejects_hostile_input(make, call, exc, match):
    module = make()
    with pytest.raises(exc, match=match) as info:
        call(module)
    assert type(info.value) is exc  # not a subclass hiding an internal error


def _cell(**kwargs):
    return rnnfast.RNNCell(4, 6, **kwargs)


CELL_CASES = [
    ("input-3d", _cell, lambda m: m(X(1, 3, 4)), ValueError, "1D or 2D"),
    ("input-0d", _cell, lambda m: m(X(())), ValueError, "1D or 2D"),
    ("hx-3d", _cell, lambda m: m(X(3, 4), X(1, 3, 6)), ValueError, "1D or 2D"),
    ("input-features", _cell, lambda m: m(X(3, 5)), RuntimeError, "input_size"),
    ("hx-batch", _cell, lambda m: m(X(3, 4), X(2, 6)), RuntimeError, "batch size"),
    ("hx-hidden", _cell, lambda m: m(X(3, 4), X(3, 5)), RuntimeError, "hidden_size"),
    ("input-int64", _cell, lambda m: m(X(3, 4).long()), RuntimeError, "dtype"),
    ("input-bool", _cell, lambda m: m(X(3, 4) > 0), RuntimeError, "dtype"),
    ("input-complex", _cell, lambda m: m(X(3, 4, dtype=torch.complex64)), RuntimeError, "dtype"),
    ("hx-float64", _cell, lambda m: m(X(3, 4), X(3, 6, dtype=torch.float64)), RuntimeError,
     "dtype"),
    ("input-meta", _cell, lambda m: m(X(3, 4, device="meta")), RuntimeError, "device"),
    ("hx-meta", _cell, lambda m: m(X(3, 4), X(3, 6, device="meta")), RuntimeError, "device"),
    ("weight-meta", lambda: _set(_cell(), "weight_hh", X(6, 6, device="meta")),
     lambda m: m(X(3, 4)), RuntimeError, "device"),
    ("weight_hh-shape", lambda: _set(_cell(), "weight_hh", X(6, 5)), lambda m: m(X(3, 4)),
     RuntimeError, "hidden_size"),
    ("weight_ih-shape", lambda: _set(_cell(), "weight_ih", X(5, 4)), lambda m: m(X(3, 4)),
     RuntimeError, "weight_ih"),
    ("bias_hh-shape", lambda: _set(_cell(), "bias_hh", X(5)), lambda m: m(X(3, 4)),
     RuntimeError, "size"),
    ("bias_hh-broadcastable", lambda: _set(_cell(), "bias_hh", X(1)), lambda m: m(X(3, 4)),
     RuntimeError, "rnnfast"),
    ("bias_hh-float64", lambda: _set(_cell(), "bias_hh", X(6, dtype=torch.float64)),
     lambda m: m(X(3, 4)), RuntimeError, "dtype"),
    ("complex-cell", lambda: _cell(dtype=torch.complex64),
     lambda m: m(X(3, 4, dtype=torch.complex64)), RuntimeError, "floating-point"),
]


@pytest.mark.parametrize("make, call, exc, match", [c[1:] for c in CELL_CASES],
                         ids=[c[0] for c in CELL_CASES])
def test_cell_module_rejects_hostile_input(make, call, exc, match):
    module = make()
    with pytest.raises(exc, match=match) as info:
        call(module)
    assert type(info.value) is exc


# ---------------------------------------------------------------------------
# Raw ops: every argument is validated at the op boundary
# ---------------------------------------------------------------------------

T_, N_, I_, H_ = 5, 3, 4, 6


def _forward_args(packed=False, layers=2):
    """A valid rnn_forward call as a dict: 2 layers, unidirectional, with biases."""
    weights = []
    for layer in range(layers):
        weights += [X(H_, I_ if layer == 0 else H_), X(H_, H_), X(H_), X(H_)]
    rows = 9 if packed else T_ * N_
    return dict(
        input=X(rows, I_) if packed else X(T_, N_, I_),
        hx=X(layers, N_, H_),
        weights=weights,
        batch_sizes=torch.tensor([3, 3, 2, 1]) if packed else None,
        dropout_masks=(torch.rand(layers - 1, rows, H_) > 0.5).float() * 2,
        has_biases=True, num_layers=layers, nonlinearity="tanh", bidirectional=False,
    )


def _call_forward(a):
    return call_rnn_forward(a["input"], a["hx"], a["weights"], a["batch_sizes"],
                            a["dropout_masks"], a["has_biases"], a["num_layers"],
                            a["nonlinearity"], a["bidirectional"])


def _backward_args(packed=False):
    a = _forward_args(packed)
    out, h_n, ws = _call_forward(a)
    a.update(grad_output=torch.randn_like(out), grad_h_n=torch.randn_like(h_n), output=out,
             workspace=ws)
    return a


def _call_backward(a):
    return call_rnn_backward(a["grad_output"], a["grad_h_n"], a["input"], a["hx"],
                             a["weights"], a["batch_sizes"], a["dropout_masks"], a["output"],
                             a["workspace"], a["has_biases"], a["num_layers"],
                             a["nonlinearity"], a["bidirectional"])


def _cell_args():
    return dict(input=X(N_, I_), hx=X(N_, H_), w_ih=X(H_, I_), w_hh=X(H_, H_), b_ih=X(H_),
                b_hh=X(H_), nonlinearity="tanh")


def _call_cell(a):
    return ops.rnn_cell_forward(a["input"], a["hx"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"],
                                a["nonlinearity"])


def _cell_backward_args(dtype=torch.float32):
    a = {k: (v.to(dtype) if isinstance(v, torch.Tensor) else v) for k, v in _cell_args().items()}
    h = _call_cell(a)
    return dict(grad_h=torch.randn_like(h), input=a["input"], hx=a["hx"], w_ih=a["w_ih"],
                w_hh=a["w_hh"], h=h, has_bias=True, nonlinearity="tanh")


def _call_cell_backward(a):
    return ops._rnn_cell_backward(a["grad_h"], a["input"], a["hx"], a["w_ih"], a["w_hh"], a["h"],
                                  a["has_bias"], a["nonlinearity"])


def _w(i, fn):
    """Replace weights[i] by fn(weights[i])."""
    def mutate(a):
        a["weights"] = list(a["weights"])
        a["weights"][i] = fn(a["weights"][i])
    return mutate


def _set_arg(name, fn):
    def mutate(a):
        a[name] = fn(a[name])
    return mutate


META = lambda t: t.to("meta")  # noqa: E731

# (id, make valid args, call, mutate(args), regex naming the argument)
OP_CASES = [
    # rnn_forward
    ("fwd-input-int64", _forward_args, _call_forward, _set_arg("input", lambda t: t.long()), "input"),
    ("fwd-input-complex", _forward_args, _call_forward,
     _set_arg("input", lambda t: t.to(torch.complex64)), "input"),
    ("fwd-input-bool", _forward_args, _call_forward, _set_arg("input", lambda t: t > 0), "input"),
    ("fwd-input-2d", _forward_args, _call_forward, _set_arg("input", lambda t: t[0]), "input"),
    ("fwd-input-4d", _forward_args, _call_forward, _set_arg("input", lambda t: t[None]), "input"),
    ("fwd-input-features", _forward_args, _call_forward,
     _set_arg("input", lambda t: X(T_, N_, I_ + 1)), "weight_ih_l0"),
    ("fwd-input-meta", _forward_args, _call_forward, _set_arg("input", META), "device"),
    ("fwd-hx-shape", _forward_args, _call_forward, _set_arg("hx", lambda t: t[:, :2]), "hx"),
    ("fwd-hx-layers", _forward_args, _call_forward, _set_arg("hx", lambda t: t[:1]), "hx"),
    ("fwd-hx-float64", _forward_args, _call_forward, _set_arg("hx", lambda t: t.double()), "hx"),
    ("fwd-hx-int64", _forward_args, _call_forward, _set_arg("hx", lambda t: t.long()), "hx"),
    ("fwd-hx-meta", _forward_args, _call_forward, _set_arg("hx", META), "hx.*device|device.*hx"),
    ("fwd-weights-missing", _forward_args, _call_forward,
     _set_arg("weights", lambda w: w[:-1]), "weight tensors"),
    ("fwd-weights-extra", _forward_args, _call_forward,
     _set_arg("weights", lambda w: w + [w[-1]]), "weight tensors"),
    ("fwd-weight_hh_l0-1d", _forward_args, _call_forward, _w(1, lambda t: t[0]), "weight_hh_l0"),
    ("fwd-weight_hh_l1-shape", _forward_args, _call_forward, _w(5, lambda t: t[:, :5]),
     "weight_hh_l1"),
    ("fwd-weight_ih_l1-shape", _forward_args, _call_forward, _w(4, lambda t: t[:, :5]),
     "weight_ih_l1"),
    ("fwd-bias_hh_l0-shape", _forward_args, _call_forward, _w(3, lambda t: t[:5]), "bias_hh_l0"),
    ("fwd-bias_ih_l1-2d", _forward_args, _call_forward, _w(6, lambda t: t[:, None]), "bias_ih_l1"),
    ("fwd-weight_ih_l1-float64", _forward_args, _call_forward, _w(4, lambda t: t.double()),
     "weight_ih_l1"),
    ("fwd-bias_hh_l1-int64", _forward_args, _call_forward, _w(7, lambda t: t.long()), "bias_hh_l1"),
    ("fwd-weight_hh_l1-meta", _forward_args, _call_forward, _w(5, META), "weight_hh_l1"),
    ("fwd-batch_sizes-float", lambda: _forward_args(True), _call_forward,
     _set_arg("batch_sizes", lambda t: t.float()), "batch_sizes"),
    ("fwd-batch_sizes-int32", lambda: _forward_args(True), _call_forward,
     _set_arg("batch_sizes", lambda t: t.int()), "batch_sizes"),
    ("fwd-batch_sizes-2d", lambda: _forward_args(True), _call_forward,
     _set_arg("batch_sizes", lambda t: t[None]), "batch_sizes"),
    ("fwd-batch_sizes-empty", lambda: _forward_args(True), _call_forward,
     _set_arg("batch_sizes", lambda t: t[:0]), "batch_sizes"),
    ("fwd-batch_sizes-zero", lambda: _forward_args(True), _call_forward,
     _set_arg("batch_sizes", lambda t: torch.tensor([3, 3, 3, 0])), "batch_sizes"),
    ("fwd-batch_sizes-negative", lambda: _forward_args(True), _call_forward,
     _set_arg("batch_sizes", lambda t: torch.tensor([3, 3, 4, -1])), "batch_sizes"),
    ("fwd-batch_sizes-increasing", lambda: _forward_args(True), _call_forward,
     _set_arg("batch_sizes", lambda t: torch.tensor([3, 2, 3, 1])), "batch_sizes"),
    ("fwd-batch_sizes-sum", lambda: _forward_args(True), _call_forward,
     _set_arg("batch_sizes", lambda t: torch.tensor([3, 3, 2, 2])), "batch_sizes"),
    ("fwd-batch_sizes-overflow", lambda: _forward_args(True), _call_forward,
     _set_arg("batch_sizes", lambda t: torch.tensor([2**62] * 4 + [9])), "batch_sizes|hx"),
    ("fwd-batch_sizes-meta", lambda: _forward_args(True), _call_forward,
     _set_arg("batch_sizes", META), "batch_sizes"),
    ("fwd-batch_sizes-on-dense", _forward_args, _call_forward,
     _set_arg("batch_sizes", lambda t: torch.tensor([3, 3, 3, 3, 3])), "input"),
    ("fwd-dropout_masks-shape", _forward_args, _call_forward,
     _set_arg("dropout_masks", lambda t: t[:, 1:]), "dropout_masks"),
    ("fwd-dropout_masks-bool", _forward_args, _call_forward,
     _set_arg("dropout_masks", lambda t: t > 0), "dropout_masks"),
    ("fwd-dropout_masks-meta", _forward_args, _call_forward, _set_arg("dropout_masks", META),
     "dropout_masks"),
    ("fwd-num_layers-0", _forward_args, _call_forward, _set_arg("num_layers", lambda n: 0),
     "num_layers"),
    ("fwd-num_layers-negative", _forward_args, _call_forward, _set_arg("num_layers", lambda n: -3),
     "num_layers"),
    ("fwd-num_layers-huge", _forward_args, _call_forward, _set_arg("num_layers", lambda n: 2**62),
     "weight tensors"),
    ("fwd-mode", _forward_args, _call_forward, _set_arg("nonlinearity", lambda s: "gelu"),
     "mode must be .* got 'gelu'"),
    ("fwd-mode-case", _forward_args, _call_forward,
     _set_arg("nonlinearity", lambda s: "TANH"), "mode must be .* got 'TANH'"),
    ("fwd-mode-elman-name", _forward_args, _call_forward,
     _set_arg("nonlinearity", lambda s: "RNN_tanh"), "mode must be .* got 'RNN_tanh'"),
    ("fwd-has_biases-mismatch", _forward_args, _call_forward,
     _set_arg("has_biases", lambda b: False), "weight tensors"),
    ("fwd-bidirectional-mismatch", _forward_args, _call_forward,
     _set_arg("bidirectional", lambda b: True), "weight tensors"),
    # _rnn_backward
    ("bwd-grad_output-shape", _backward_args, _call_backward,
     _set_arg("grad_output", lambda t: t[:, :, :5]), "grad_output"),
    ("bwd-grad_output-float64", _backward_args, _call_backward,
     _set_arg("grad_output", lambda t: t.double()), "grad_output"),
    ("bwd-grad_output-meta", _backward_args, _call_backward, _set_arg("grad_output", META),
     "grad_output"),
    ("bwd-grad_h_n-shape", _backward_args, _call_backward,
     _set_arg("grad_h_n", lambda t: t[:1]), "grad_h_n"),
    ("bwd-grad_h_n-int32", _backward_args, _call_backward,
     _set_arg("grad_h_n", lambda t: t.int()), "grad_h_n"),
    ("bwd-grad_h_n-meta", _backward_args, _call_backward, _set_arg("grad_h_n", META), "grad_h_n"),
    ("bwd-output-shape", _backward_args, _call_backward,
     _set_arg("output", lambda t: t[1:]), "output"),
    ("bwd-output-int64", _backward_args, _call_backward,
     _set_arg("output", lambda t: t.long()), "output"),
    ("bwd-output-meta", _backward_args, _call_backward, _set_arg("output", META), "output"),
    ("bwd-workspace-shape", _backward_args, _call_backward,
     _set_arg("workspace", lambda t: t[:, 1:]), "workspace"),
    ("bwd-workspace-meta", _backward_args, _call_backward, _set_arg("workspace", META),
     "workspace"),
    ("bwd-input-int64", _backward_args, _call_backward,
     _set_arg("input", lambda t: t.long()), "input"),
    ("bwd-hx-shape", _backward_args, _call_backward, _set_arg("hx", lambda t: t[:, 1:]), "hx"),
    ("bwd-batch_sizes-sum", lambda: _backward_args(True), _call_backward,
     _set_arg("batch_sizes", lambda t: torch.tensor([3, 3, 2])), "batch_sizes"),
    ("bwd-mode", _backward_args, _call_backward,
     _set_arg("nonlinearity", lambda s: "sigmoid"), "mode must be .* got 'sigmoid'"),
    # rnn_cell_forward
    ("cell-input-int64", _cell_args, _call_cell, _set_arg("input", lambda t: t.long()), "input"),
    ("cell-input-complex", _cell_args, _call_cell,
     _set_arg("input", lambda t: t.to(torch.complex64)), "input"),
    ("cell-input-1d", _cell_args, _call_cell, _set_arg("input", lambda t: t[0]), "input"),
    ("cell-input-3d", _cell_args, _call_cell, _set_arg("input", lambda t: t[None]), "input"),
    ("cell-input-meta", _cell_args, _call_cell, _set_arg("input", META), "device"),
    ("cell-hx-shape", _cell_args, _call_cell, _set_arg("hx", lambda t: t[:, 1:]), "hx"),
    ("cell-hx-bool", _cell_args, _call_cell, _set_arg("hx", lambda t: t > 0), "hx"),
    ("cell-hx-meta", _cell_args, _call_cell, _set_arg("hx", META), "hx"),
    ("cell-w_ih-shape", _cell_args, _call_cell, _set_arg("w_ih", lambda t: t[:, 1:]), "w_ih"),
    ("cell-w_ih-float64", _cell_args, _call_cell, _set_arg("w_ih", lambda t: t.double()), "w_ih"),
    ("cell-w_ih-meta", _cell_args, _call_cell, _set_arg("w_ih", META), "w_ih"),
    ("cell-w_hh-1d", _cell_args, _call_cell, _set_arg("w_hh", lambda t: t[0]), "w_hh"),
    ("cell-w_hh-shape", _cell_args, _call_cell, _set_arg("w_hh", lambda t: t[:, 1:]), "w_hh"),
    ("cell-w_hh-meta", _cell_args, _call_cell, _set_arg("w_hh", META), "w_hh"),
    ("cell-b_hh-missing", _cell_args, _call_cell, _set_arg("b_hh", lambda t: None), "b_ih and b_hh"),
    ("cell-b_ih-shape", _cell_args, _call_cell, _set_arg("b_ih", lambda t: t[1:]), "b_ih"),
    ("cell-b_hh-int64", _cell_args, _call_cell, _set_arg("b_hh", lambda t: t.long()), "b_hh"),
    ("cell-b_hh-meta", _cell_args, _call_cell, _set_arg("b_hh", META), "b_hh"),
    ("cell-nonlinearity", _cell_args, _call_cell, _set_arg("nonlinearity", lambda s: ""),
     "nonlinearity"),
    # _rnn_cell_backward
    ("cellbwd-grad_h-shape", _cell_backward_args, _call_cell_backward,
     _set_arg("grad_h", lambda t: t[1:]), "grad_h"),
    ("cellbwd-grad_h-float64", _cell_backward_args, _call_cell_backward,
     _set_arg("grad_h", lambda t: t.double()), "grad_h"),
    ("cellbwd-grad_h-meta", _cell_backward_args, _call_cell_backward, _set_arg("grad_h", META),
     "grad_h"),
    ("cellbwd-grad_h-float32-for-bfloat16", lambda: _cell_backward_args(torch.bfloat16),
     _call_cell_backward, _set_arg("grad_h", lambda t: t.float()), "grad_h"),
    ("cellbwd-h-shape", _cell_backward_args, _call_cell_backward,
     _set_arg("h", lambda t: t[:, 1:]), "h"),
    ("cellbwd-h-float16-for-bfloat16", lambda: _cell_backward_args(torch.bfloat16),
     _call_cell_backward, _set_arg("h", lambda t: t.half()), "h"),
    ("cellbwd-h-meta", _cell_backward_args, _call_cell_backward, _set_arg("h", META), "h"),
    ("cellbwd-input-int64", _cell_backward_args, _call_cell_backward,
     _set_arg("input", lambda t: t.long()), "input"),
    ("cellbwd-hx-shape", _cell_backward_args, _call_cell_backward,
     _set_arg("hx", lambda t: t[1:]), "hx"),
    ("cellbwd-w_ih-shape", _cell_backward_args, _call_cell_backward,
     _set_arg("w_ih", lambda t: t[:, 1:]), "w_ih"),
    ("cellbwd-nonlinearity", _cell_backward_args, _call_cell_backward,
     _set_arg("nonlinearity", lambda s: "relu6"), "nonlinearity"),
]


@pytest.mark.parametrize("make, call, mutate, names", [c[1:] for c in OP_CASES],
                         ids=[c[0] for c in OP_CASES])
def test_raw_op_rejects_a_bad_argument_naming_it(make, call, mutate, names):
    args = make()
    call(args)  # the unmodified call is valid
    mutate(args)
    with pytest.raises(RuntimeError, match=names):
        result = call(args)
        # Reached only when the op accepted the argument: show what came back.
        leaves = [t for t in torch.utils._pytree.tree_leaves(result) if isinstance(t, torch.Tensor)]
        pytest.fail(f"accepted; returned {[(tuple(t.shape), t.dtype, str(t.device)) for t in leaves]}")


def test_raw_op_on_meta_validates_like_on_cpu():
    """The same bad calls with every tensor on the meta device (batch_sizes stays on the
    CPU, as the schema requires): the fake kernel, which serves the meta device,
    torch.compile and FakeTensorMode, rejects each of them like the CPU kernel does,
    instead of returning made-up shapes or failing with an IndexError. (The *values* of
    batch_sizes are data, which a fake kernel does not read: those cases are left out.)"""
    failures = []
    value_cases = {"fwd-batch_sizes-zero", "fwd-batch_sizes-negative", "fwd-batch_sizes-sum",
                   "fwd-batch_sizes-increasing", "fwd-batch_sizes-overflow", "bwd-batch_sizes-sum"}
    cases = [c for c in OP_CASES if "meta" not in c[0] and c[0] not in value_cases]
    for case_id, make, call, mutate, names in cases:
        args = make()
        mutate(args)
        args = {k: v if k == "batch_sizes" else _to_meta(v) for k, v in args.items()}
        try:
            result = call(args)
        except RuntimeError as e:
            if not re.search(names, str(e)):
                failures.append(f"{case_id}: message does not name {names!r}: {e}")
        except Exception as e:  # noqa: BLE001 - any other exception type is the failure
            failures.append(f"{case_id}: {type(e).__name__}: {e}")
        else:
            shapes = [tuple(t.shape) for t in torch.utils._pytree.tree_leaves(result)
                      if isinstance(t, torch.Tensor)]
            failures.append(f"{case_id}: accepted, returned shapes {shapes}")
    assert not failures, (f"{len(failures)} of {len(cases)} invalid calls not rejected on meta:\n"
                          + "\n".join(failures))


# Garbage generator: each tensor argument of a valid call is kept (probability 1/2) or
# replaced by a random tensor of random rank, sizes, dtype, device and layout.
_GARBAGE_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
                   torch.int32, torch.bool, torch.complex64]


@dataclasses.dataclass(frozen=True)
class Garbage:
    """How to replace a valid tensor argument (None = keep the valid one)."""
    shape: tuple
    dtype: torch.dtype
    transposed: bool
    meta: bool


_garbage = st.one_of(
    st.none(),
    st.builds(Garbage, shape=st.lists(st.integers(0, 4), max_size=4).map(tuple),
              dtype=st.sampled_from(_GARBAGE_DTYPES), transposed=st.booleans(),
              meta=st.integers(0, 5).map(lambda k: k == 0)),
)


def _garbage_tensor(data, valid, label):
    spec = data.draw(_garbage, label=label)
    if spec is None:
        return valid
    t = torch.randn(spec.shape)
    t = t > 0 if spec.dtype == torch.bool else t.to(spec.dtype)
    if spec.transposed and t.dim() >= 2:
        t = t.transpose(0, 1)
    return t.to("meta") if spec.meta else t


def _oracle_accepts_and_matches(fn_ref, args_ref, result):
    """The reference on float64 copies must succeed and agree with the op's result."""
    expected = fn_ref(*args_ref)
    expected = (expected,) if isinstance(expected, torch.Tensor) else expected
    assert len(result) == len(expected)
    for a, e in zip(result, expected):
        torch.testing.assert_close(a.double(), e.double(), atol=1e-4, rtol=1e-4)


def _to_meta(value):
    if isinstance(value, (list, tuple)):
        return [_to_meta(v) for v in value]
    return value.to("meta") if isinstance(value, torch.Tensor) else value


def _materialize(value):
    """A CPU tensor with the metadata of a meta tensor (random values)."""
    if isinstance(value, (list, tuple)):
        return [_materialize(v) for v in value]
    if not isinstance(value, torch.Tensor) or value.device.type != "meta":
        return value
    t = torch.randn(value.shape)
    return t > 0 if value.dtype == torch.bool else t.to(value.dtype)


def _check_accepted(call, args, result, ref_fn, ref_args):
    """An accepted call was a valid call: one device, one dtype, and either the float64
    oracle agrees (cpu) or, on the meta device, the real kernel accepts the same shapes
    and returns the same shapes (the fake kernel validates as the real one does)."""
    result = (result,) if isinstance(result, torch.Tensor) else result
    tensors = [t for t in torch.utils._pytree.tree_leaves(
        [args[k] for k in args if k != "batch_sizes"]) if isinstance(t, torch.Tensor)]
    assert len({t.device for t in tensors}) == 1, "accepted tensors on mixed devices"
    assert len({t.dtype for t in tensors}) == 1, "accepted tensors of mixed dtypes"
    if tensors[0].device.type == "meta":
        try:
            real = call({k: _materialize(v) for k, v in args.items()})
        except RuntimeError as e:
            pytest.fail(f"the meta (fake) kernel accepted a call that the CPU kernel rejects: {e}")
        real = (real,) if isinstance(real, torch.Tensor) else real
        assert [tuple(t.shape) for t in result] == [tuple(t.shape) for t in real][:len(result)]
    else:
        _oracle_accepts_and_matches(ref_fn, ref_args(), result)


@settings(max_examples=60, deadline=None, report_multiple_bugs=False,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_raw_ops_on_garbage_raise_or_match_the_oracle(data):
    valid = _forward_args(packed=data.draw(st.booleans(), label="packed"), layers=1)
    valid["dropout_masks"] = None
    args = dict(valid)
    for name in ("input", "hx") + (("batch_sizes",) if valid["batch_sizes"] is not None else ()):
        args[name] = _garbage_tensor(data, valid[name], name)
    args["weights"] = [_garbage_tensor(data, w, f"weights[{i}]")
                       for i, w in enumerate(valid["weights"])]
    if data.draw(st.booleans(), label="whole call on meta"):  # the fake kernel's checks
        args = {k: v if k == "batch_sizes" else _to_meta(v) for k, v in args.items()}
    try:
        out, h_n, _ = _call_forward(args)
    except RuntimeError as e:
        assert "rnnfast" in str(e) or "sequence length" in str(e), f"unclear error: {e}"
    else:
        _check_accepted(_call_forward, args, (out, h_n), call_reference_forward, lambda: [
            args["input"].double(), args["hx"].double(), [w.double() for w in args["weights"]],
            args["batch_sizes"], None, True, 1, "tanh", False])

    cell = _cell_args()
    cell_args = {k: (_garbage_tensor(data, v, f"cell {k}") if isinstance(v, torch.Tensor) else v)
                 for k, v in cell.items()}
    if data.draw(st.booleans(), label="whole cell call on meta"):
        cell_args = {k: _to_meta(v) for k, v in cell_args.items()}
    try:
        h = _call_cell(cell_args)
    except RuntimeError as e:
        assert "rnnfast" in str(e), f"unclear error: {e}"
    else:
        _check_accepted(_call_cell, cell_args, h, reference.rnn_cell_forward, lambda: [
            cell_args[k].double() if isinstance(cell_args[k], torch.Tensor) else cell_args[k]
            for k in ("input", "hx", "w_ih", "w_hh", "b_ih", "b_hh")] + ["tanh"])


def _gated_forward_args(name, packed):
    """A valid 1-layer rnn_forward call of LSTM / LSTM with proj_size / GRU, by keyword."""
    mode, proj = MODES[name], (PROJ if name == "lstm_proj" else 0)
    G, P = (4 if mode == "LSTM" else 3), (proj or H_)
    weights = [X(G * H_, I_), X(G * H_, P), X(G * H_), X(G * H_)] + ([X(P, H_)] if proj else [])
    hx = [X(1, N_, P)] + ([X(1, N_, H_)] if mode == "LSTM" else [])
    return dict(input=X(9, I_) if packed else X(T_, N_, I_), hx=hx, weights=weights,
                batch_sizes=torch.tensor([3, 3, 2, 1]) if packed else None, dropout_masks=None,
                mode=mode, has_biases=True, num_layers=1, proj_size=proj, bidirectional=False,
                train=False)


def _call_gated_forward(a):
    """(output, *h_n) of the op."""
    output, h_n, _ = ops.rnn_forward(**a)
    return (output, *h_n)


def _call_gated_reference(*args):
    output, h_n = reference.rnn_forward(*args)
    return (output, *h_n)


@settings(max_examples=40, deadline=None, report_multiple_bugs=False,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_raw_op_on_garbage_raises_or_matches_the_oracle_lstm_and_gru(data):
    """The garbage test above for LSTM (with and without proj_size) and GRU: each of
    input, h0, c0, batch_sizes and every weight kept or replaced by a random tensor; the
    op raises a RuntimeError, or the call was valid and the oracle agrees."""
    name = data.draw(st.sampled_from(GATED), label="cell")
    valid = _gated_forward_args(name, packed=data.draw(st.booleans(), label="packed"))
    args = dict(valid)
    for key in ("input",) + (("batch_sizes",) if valid["batch_sizes"] is not None else ()):
        args[key] = _garbage_tensor(data, valid[key], key)
    args["hx"] = [_garbage_tensor(data, h, f"hx[{i}]") for i, h in enumerate(valid["hx"])]
    args["weights"] = [_garbage_tensor(data, w, f"weights[{i}]")
                       for i, w in enumerate(valid["weights"])]
    if data.draw(st.booleans(), label="whole call on meta"):  # the fake kernel's checks
        args = {k: v if k == "batch_sizes" else _to_meta(v) for k, v in args.items()}
    try:
        result = _call_gated_forward(args)
    except RuntimeError as e:
        assert "rnnfast" in str(e) or "sequence length" in str(e), f"unclear error: {e}"
    else:
        _check_accepted(_call_gated_forward, args, result, _call_gated_reference, lambda: [
            args["input"].double(), [h.double() for h in args["hx"]],
            [w.double() for w in args["weights"]], args["batch_sizes"], None, args["mode"],
            True, 1, args["proj_size"], False])


# ---------------------------------------------------------------------------
# Sizes beyond 32-bit indexing (no memory is allocated)
# ---------------------------------------------------------------------------

BIG_T, BIG_N, BIG_H = 2**20, 2**12, 2**10  # T*N*H = 2**42 elements


def test_fake_kernels_compute_64_bit_shapes():
    with FakeTensorMode():
        x = torch.empty(BIG_T, BIG_N, 3)
        hx = torch.empty(2, BIG_N, BIG_H)
        w = [torch.empty(BIG_H, 3), torch.empty(BIG_H, BIG_H), torch.empty(BIG_H),
             torch.empty(BIG_H)] * 2
        out, h_n, ws = call_rnn_forward(x, hx, w, None, None, True, 1, "relu", True)
        assert out.shape == (BIG_T, BIG_N, 2 * BIG_H) and out.numel() == 2**43
        assert out.stride() == (BIG_N * 2 * BIG_H, 2 * BIG_H, 1)
        assert h_n.shape == (2, BIG_N, BIG_H) and ws.shape == (0, BIG_T * BIG_N, 2 * BIG_H)
        gx, ghx, gw = call_rnn_backward(out, h_n, x, hx, w, None, None, out, ws, True, 1,
                                        "relu", True)
        assert gx.shape == x.shape and ghx.shape == hx.shape
        assert [g.shape for g in gw] == [t.shape for t in w]

        rows = 3 * 2**31  # packed: one sequence per row, more rows than an int32 holds
        out, h_n, _ = call_rnn_forward(torch.empty(rows, 3), torch.empty(1, rows, 4),
                                       [torch.empty(4, 3), torch.empty(4, 4)],
                                       torch.ones(1, dtype=torch.int64), None, False, 1,
                                       "tanh", False)
        assert out.shape == (rows, 4) and h_n.shape == (1, rows, 4)

        h = ops.rnn_cell_forward(torch.empty(2**17, 2**15), torch.empty(2**17, 2**15),
                                 torch.empty(2**15, 2**15), torch.empty(2**15, 2**15), None,
                                 None, "tanh")
        assert h.shape == (2**17, 2**15) and h.numel() == 2**32


@pytest.mark.parametrize("batch_first", [False, True])
def test_module_on_meta_device_handles_64_bit_sizes(batch_first):
    rnn = rnnfast.RNN(3, BIG_H, 2, bidirectional=True, batch_first=batch_first, device="meta")
    shape = (BIG_N, BIG_T, 3) if batch_first else (BIG_T, BIG_N, 3)
    x = torch.empty(shape, device="meta", requires_grad=True)
    out, h_n = rnn(x)
    expected = (BIG_N, BIG_T, 2 * BIG_H) if batch_first else (BIG_T, BIG_N, 2 * BIG_H)
    assert out.shape == expected and out.device.type == "meta" and out.numel() > 2**31
    assert h_n.shape == (4, BIG_N, BIG_H)
    (out.sum() + h_n.sum()).backward()
    assert x.grad.shape == x.shape
    assert all(p.grad.shape == p.shape for p in rnn.parameters())

    cell = rnnfast.RNNCell(2**16, 2**16, device="meta")
    assert cell(torch.empty(2**16, 2**16, device="meta")).shape == (2**16, 2**16)


# ---------------------------------------------------------------------------
# NaN / Inf propagate exactly as in torch.nn
# ---------------------------------------------------------------------------


def _assert_same_nonfinite(actual, expected, what, tol):
    assert torch.equal(actual.isnan(), expected.isnan()), (
        f"{what}: NaN at {actual.isnan().nonzero().tolist()}, "
        f"nn has NaN at {expected.isnan().nonzero().tolist()}")
    assert torch.equal(actual.isinf(), expected.isinf()), f"{what}: Inf positions differ"
    assert torch.equal(actual[actual.isinf()], expected[expected.isinf()]), f"{what}: Inf signs"
    finite = expected.isfinite()
    torch.testing.assert_close(actual[finite], expected[finite], **tol,
                               msg=lambda m: f"{what}, finite entries: {m}")


POISON = [("input", float("nan")), ("input", float("inf")), ("input", -float("inf")),
          ("hx", float("nan")), ("hx", float("inf")), ("weight_hh_l0", float("nan")),
          ("weight_ih_l1", -float("inf")), ("bias_ih_l0", float("inf"))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_nan_and_inf_propagate_like_nn_rnn(nonlinearity, dtype):
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-9)
    failures = []
    for bidirectional in (False, True):
        for where, value in POISON:
            torch.manual_seed(len(failures))
            kwargs = dict(num_layers=2, nonlinearity=nonlinearity, bidirectional=bidirectional,
                          dtype=dtype)
            ref = nn.RNN(3, 5, **kwargs)
            new = rnnfast.RNN(3, 5, **kwargs)
            new.load_state_dict(ref.state_dict())
            D = 2 if bidirectional else 1
            x = torch.randn(6, 4, 3, dtype=dtype)
            hx = torch.randn(2 * D, 4, 5, dtype=dtype)
            with torch.no_grad():
                if where == "input":
                    x[2, 1, 0] = value
                elif where == "hx":
                    hx[0, 2, 3] = value
                else:
                    for m in (ref, new):
                        getattr(m, where).view(-1)[1] = value
            x.requires_grad_()
            hx.requires_grad_()
            results = []
            for m in (ref, new):
                out, h_n = m(x, hx)
                grads = torch.autograd.grad((out, h_n), [x, hx, *m.parameters()],
                                            (torch.ones_like(out), torch.ones_like(h_n)))
                results.append([out, h_n, *grads])
            names = ["output", "h_n", "grad input", "grad hx"] + [
                f"grad {n}" for n, _ in ref.named_parameters()]
            for name, e, a in zip(names, *results):
                try:
                    _assert_same_nonfinite(a, e, name, tol)
                except AssertionError as err:
                    failures.append(f"{where}={value} bidirectional={bidirectional}: "
                                    f"{str(err).splitlines()[0]}")
    assert not failures, f"{len(failures)} mismatches with nn.RNN:\n" + "\n".join(failures[:12])


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("where", ["input", "hx", "weight_hh"])
def test_cell_nan_and_inf_propagate_like_nn_rnncell(nonlinearity, where):
    ref = nn.RNNCell(3, 5, nonlinearity=nonlinearity)
    new = rnnfast.RNNCell(3, 5, nonlinearity=nonlinearity)
    new.load_state_dict(ref.state_dict())
    x, hx = torch.randn(4, 3), torch.randn(4, 5)
    with torch.no_grad():
        if where == "input":
            x[1, 0], x[2, 2] = float("nan"), float("inf")
        elif where == "hx":
            hx[1, 0], hx[3, 4] = float("nan"), -float("inf")
        else:
            for m in (ref, new):
                m.weight_hh[2, 1] = float("nan")
    x.requires_grad_()
    hx.requires_grad_()
    results = []
    for m in (ref, new):
        h = m(x, hx)
        results.append([h, *torch.autograd.grad(h, [x, hx, *m.parameters()], torch.ones_like(h))])
    names = ["h", "grad input", "grad hx", "grad weight_ih", "grad weight_hh", "grad bias_ih",
             "grad bias_hh"]
    for name, e, a in zip(names, *results):
        _assert_same_nonfinite(a, e, name, dict(atol=1e-5, rtol=1e-4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_huge_finite_input_saturates_tanh_without_nan(dtype):
    """|x| ~ 1e30: tanh saturates to +-1, and every result stays finite and equal to nn.RNN's."""
    ref = nn.RNN(3, 5, 2, dtype=dtype)
    new = rnnfast.RNN(3, 5, 2, dtype=dtype)
    new.load_state_dict(ref.state_dict())
    x = (torch.randn(6, 4, 3, dtype=dtype) * 1e30).requires_grad_()
    results = []
    for m in (ref, new):
        out, h_n = m(x)
        results.append([out, h_n, *torch.autograd.grad(out.sum() + h_n.sum(), [x, *m.parameters()])])
    for e, a in zip(*results):
        assert a.isfinite().all() == e.isfinite().all()
        _assert_same_nonfinite(a, e, "saturated", dict(atol=1e-5, rtol=1e-4))
    assert results[1][0].abs().max() <= 1.0
    assert not math.isnan(results[1][0].sum().item())


# ---------------------------------------------------------------------------
# LSTM (with and without proj_size) and GRU: the same NaN / Inf and size checks
# ---------------------------------------------------------------------------

# Where to poison, per cell name: the states and weights each module has.
GATED_POISON = {
    "lstm": POISON + [("c0", float("nan")), ("c0", -float("inf"))],
    "lstm_proj": POISON + [("c0", float("inf")), ("weight_hr_l0", float("nan")),
                           ("weight_hr_l1", -float("inf"))],
    "gru": POISON + [("bias_hh_l1", float("nan"))],
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", GATED)
def test_nan_and_inf_propagate_like_nn_lstm_and_gru(name, dtype):
    """NaN / Inf in the input, h0, c0 or a weight: output, h_n, c_n and every gradient
    have NaN and Inf exactly where torch.nn.LSTM / GRU have them."""
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-9)
    failures = []
    for bidirectional in (False, True):
        for where, value in GATED_POISON[name]:
            ref, new = make_cell_pair(name, 3, 5, num_layers=2, bidirectional=bidirectional,
                                      dtype=dtype, seed=len(failures))
            x = torch.randn(6, 4, 3, dtype=dtype)
            hx = random_hx(new, 4, dtype=dtype, requires_grad=False)
            with torch.no_grad():
                if where == "input":
                    x[2, 1, 0] = value
                elif where == "hx":
                    states(hx)[0][0, 2, 1] = value
                elif where == "c0":
                    hx[1][1, 3, 4] = value
                else:
                    for m in (ref, new):
                        getattr(m, where).view(-1)[1] = value
            x.requires_grad_()
            for h in states(hx):
                h.requires_grad_()
            results = []
            for m in (ref, new):
                out, h_n = m(x, hx)
                outs = [out, *states(h_n)]
                wrt = [x, *states(hx), *m.parameters()]
                grads = torch.autograd.grad(outs, wrt, [torch.ones_like(t) for t in outs])
                results.append([*outs, *grads])
            names = result_names(new) + grad_names(new, hx)
            for what, e, a in zip(names, *results, strict=True):
                try:
                    _assert_same_nonfinite(a, e, what, tol)
                except AssertionError as err:
                    failures.append(f"{where}={value} bidirectional={bidirectional}: "
                                    f"{str(err).splitlines()[0]}")
    assert not failures, (f"{len(failures)} mismatches with nn.{type(new).__name__}:\n"
                          + "\n".join(failures[:12]))


@pytest.mark.parametrize("name, where", [(n, w) for n in GATED_STEP for w in (
    ["input", "hx", "c", "weight_hh"] if n == "lstm_cell" else ["input", "hx", "weight_hh",
                                                                 "bias_hh"])])
def test_cell_nan_and_inf_propagate_like_nn_lstmcell_and_grucell(name, where):
    ref, new = make_cell_pair(name, 3, 5, dtype=torch.float32)
    x = torch.randn(4, 3)
    hx = random_cell_hx(new, 4, dtype=torch.float32, requires_grad=False)
    with torch.no_grad():
        if where == "input":
            x[1, 0], x[2, 2] = float("nan"), float("inf")
        elif where == "hx":
            h = states(hx)[0]
            h[1, 0], h[3, 4] = float("nan"), -float("inf")
        elif where == "c":
            hx[1][0, 2], hx[1][2, 1] = float("inf"), float("nan")
        else:
            for m in (ref, new):
                getattr(m, where).view(-1)[7] = float("nan")
    x.requires_grad_()
    for h in states(hx):
        h.requires_grad_()
    results = []
    for m in (ref, new):
        outs = states(m(x, hx))
        grads = torch.autograd.grad(outs, [x, *states(hx), *m.parameters()],
                                    [torch.ones_like(t) for t in outs])
        results.append([*outs, *grads])
    names = result_names(new) + grad_names(new, hx)
    for what, e, a in zip(names, *results, strict=True):
        _assert_same_nonfinite(a, e, what, dict(atol=1e-5, rtol=1e-4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", GATED)
def test_huge_finite_input_saturates_lstm_and_gru_gates_without_nan(name, dtype):
    """|x| ~ 1e30: sigmoid and tanh saturate, and every result stays finite and equal
    to torch.nn's."""
    ref, new = make_cell_pair(name, 3, 5, num_layers=2, dtype=dtype)
    x = (torch.randn(6, 4, 3, dtype=dtype) * 1e30).requires_grad_()
    results = []
    for m in (ref, new):
        outs = result_tensors(m(x))
        results.append([*outs, *torch.autograd.grad(sum(t.sum() for t in outs),
                                                    [x, *m.parameters()])])
    for e, a in zip(*results, strict=True):
        assert a.isfinite().all() == e.isfinite().all()
        _assert_same_nonfinite(a, e, "saturated", dict(atol=1e-5, rtol=1e-4))
    assert results[1][0].isfinite().all()


@pytest.mark.parametrize("name", GATED)
def test_fake_kernels_compute_64_bit_shapes_lstm_and_gru(name):
    """rnn_forward / _rnn_backward of LSTM (proj) and GRU under FakeTensorMode: more
    than 2**31 elements, exact shapes of output, states, workspace and gradients."""
    mode = MODES[name]
    G = 4 if mode == "LSTM" else 3
    P = 2 if name == "lstm_proj" else BIG_H
    NL, D = 2, 2
    with FakeTensorMode():
        x = torch.empty(BIG_T, BIG_N, 3)
        hx = [torch.empty(NL * D, BIG_N, P)] + (
            [torch.empty(NL * D, BIG_N, BIG_H)] if mode == "LSTM" else [])
        w = []
        for layer in range(NL):
            for _ in range(D):
                w += [torch.empty(G * BIG_H, 3 if layer == 0 else D * P),
                      torch.empty(G * BIG_H, P), torch.empty(G * BIG_H), torch.empty(G * BIG_H)]
                w += [torch.empty(P, BIG_H)] if name == "lstm_proj" else []
        proj = 2 if name == "lstm_proj" else 0
        out, h_n, ws = ops.rnn_forward(x, hx, w, None, None, mode, True, NL, proj, True, True)
        rows = BIG_T * BIG_N
        assert out.shape == (BIG_T, BIG_N, D * P) and out.stride() == (BIG_N * D * P, D * P, 1)
        assert [tuple(h.shape) for h in h_n] == [tuple(h.shape) for h in hx]
        assert [tuple(t.shape) for t in ws] == [(NL - 1, rows, D * P), (NL, rows, D * G * BIG_H),
                                                (NL, rows, D * BIG_H)]
        assert ws[1].numel() > 2**31
        gx, ghx, gw = ops._rnn_backward(out, list(h_n), x, hx, w, None, None, out, ws, mode,
                                        True, NL, proj, True)
        assert gx.shape == x.shape
        assert [g.shape for g in ghx] == [h.shape for h in hx]
        assert [g.shape for g in gw] == [t.shape for t in w]


@pytest.mark.parametrize("name", GATED)
def test_lstm_and_gru_on_meta_device_handle_64_bit_sizes(name):
    _, rnnfast_cls, extra = CELLS[name]
    module = rnnfast_cls(3, BIG_H, 2, bidirectional=True, device="meta", **extra)
    x = torch.empty(BIG_T, BIG_N, 3, device="meta", requires_grad=True)
    out, h_n = module(x)
    P = state_width(module)
    assert out.shape == (BIG_T, BIG_N, 2 * P) and out.device.type == "meta"
    assert [h.shape for h in states(h_n)] == [(4, BIG_N, P)] + (
        [(4, BIG_N, BIG_H)] if module.mode == "LSTM" else [])
    (out.sum() + sum(h.sum() for h in states(h_n))).backward()
    assert x.grad.shape == x.shape
    assert all(p.grad.shape == p.shape for p in module.parameters())
    cell_cls = rnnfast.LSTMCell if module.mode == "LSTM" else rnnfast.GRUCell
    cell = cell_cls(2**14, 2**14, device="meta")
    assert all(h.shape == (2**16, 2**14) for h in states(cell(torch.empty(2**16, 2**14,
                                                                          device="meta"))))
