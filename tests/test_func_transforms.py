"""torch.func transforms over rnnfast modules.

Specification:
  * First-order transforms work and agree with torch.nn: torch.func.grad / vjp / jacrev
    of rnnfast.RNN and rnnfast.RNNCell (through functional_call for parameters), and
    vmap over them (per-sample gradients), which nn.RNN itself cannot vmap.
  * RNNCell supports second order under torch.func (jacrev of jacrev).
  * Not supported, with a clear error: forward-mode AD (jvp, jacfwd, hessian) and
    second order through rnn_forward under torch.func (torch.autograd.grad with
    create_graph=True gives the RNN's second order; see test_gradcheck.py).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, jvp, vjp, vmap
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast

from helpers import randn, seed_per_test  # noqa: F401 (autouse fixture)

F64 = torch.float64


def _pair(**kwargs):
    ours = rnnfast.RNN(3, 5, dtype=F64, **kwargs)
    ref = nn.RNN(3, 5, dtype=F64, **kwargs)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _loss(module, params, x):
    out, h_n = functional_call(module, params, (x,))
    if isinstance(out, nn.utils.rnn.PackedSequence):
        out = out.data
    return (out ** 2).sum() + h_n.sum()


def _assert_dicts_close(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-10, rtol=0, msg=k)


@pytest.mark.parametrize("kwargs", [dict(), dict(num_layers=2, bidirectional=True),
                                    dict(nonlinearity="relu", bias=False, batch_first=True)],
                         ids=["uni", "bidir-2layer", "relu-nobias-batch_first"])
def test_grad_of_parameters_matches_nn_rnn(kwargs):
    ours, ref = _pair(**kwargs)
    x = randn(4, 2, 3)
    g = grad(lambda p: _loss(ours, p, x))(dict(ours.named_parameters()))
    g_ref = grad(lambda p: _loss(ref, p, x))(dict(ref.named_parameters()))
    _assert_dicts_close(g, g_ref)


def test_grad_of_parameters_with_packed_input():
    # Packing happens outside the transform: torch's pack_padded_sequence backward cannot
    # run under torch.func. nn.RNN itself fails under torch.func with packed input, so
    # the oracle is plain autograd.
    ours, ref = _pair(num_layers=2)
    packed = pack_padded_sequence(randn(5, 3, 3), [5, 2, 4], enforce_sorted=False)
    g = grad(lambda p: _loss(ours, p, packed))(dict(ours.named_parameters()))
    names, params = zip(*ref.named_parameters())
    g_ref = torch.autograd.grad(_loss(ref, dict(zip(names, params)), packed), params)
    _assert_dicts_close(g, dict(zip(names, g_ref)))


def test_per_sample_gradients_with_vmap():
    ours, ref = _pair(num_layers=2, bidirectional=True)
    xs = randn(4, 6, 1, 3)  # 4 samples, each (T=6, N=1, I=3)
    params, params_ref = dict(ours.named_parameters()), dict(ref.named_parameters())
    per_sample = vmap(grad(lambda p, x: _loss(ours, p, x)), in_dims=(None, 0))(params, xs)
    for i in range(xs.shape[0]):
        one = grad(lambda p: _loss(ref, p, xs[i]))(params_ref)
        _assert_dicts_close({k: v[i] for k, v in per_sample.items()}, one)


def test_jacrev_and_vjp_of_the_input():
    ours, ref = _pair(num_layers=2)
    x = randn(3, 2, 3)
    torch.testing.assert_close(jacrev(lambda x: ours(x)[1])(x), jacrev(lambda x: ref(x)[1])(x),
                               atol=1e-10, rtol=0)
    out, fn = vjp(lambda x: ours(x)[0], x)
    out_ref, fn_ref = vjp(lambda x: ref(x)[0], x)
    v = randn(*out.shape)
    torch.testing.assert_close(out, out_ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(fn(v)[0], fn_ref(v)[0], atol=1e-10, rtol=0)


def test_cell_first_and_second_order():
    cell = rnnfast.RNNCell(3, 4, dtype=F64)
    ref = nn.RNNCell(3, 4, dtype=F64)
    ref.load_state_dict(cell.state_dict())
    x = randn(2, 3)
    torch.testing.assert_close(grad(lambda x: cell(x).sum())(x), grad(lambda x: ref(x).sum())(x),
                               atol=1e-12, rtol=0)
    torch.testing.assert_close(jacrev(jacrev(lambda x: cell(x).sum()))(x),
                               jacrev(jacrev(lambda x: ref(x).sum()))(x), atol=1e-12, rtol=0)
    per_sample = vmap(grad(lambda x: cell(x).sum()))(x)
    torch.testing.assert_close(per_sample, torch.stack([grad(lambda x: ref(x).sum())(r) for r in x]),
                               atol=1e-12, rtol=0)


def test_unsupported_transforms_raise_clearly():
    ours, _ = _pair()
    x = randn(3, 2, 3)
    with pytest.raises(NotImplementedError, match="jvp"):
        jvp(lambda x: ours(x)[0], (x,), (torch.ones_like(x),))
    with pytest.raises(RuntimeError, match="higher than two"):
        jacrev(jacrev(lambda x: ours(x)[1].sum()))(x)
