"""Gradients of rnnfast are exact: gradcheck and gradgradcheck in float64 on small shapes.

First order comes from the fused BPTT kernel (_rnn_backward); second order from the
recomputation in rnnfast/_ops.py, which is also compared value-for-value with
nn.RNN's (CPU) double backward. Every parameter, the input and hx are checked.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import rnnfast
from helpers import GRAD_TARGETS, assert_all_close, call_rnn_forward, make_pair, randn
from helpers import seed_per_test  # noqa: F401  (autouse fixture)

DT = torch.float64

ARCHS = [
    dict(num_layers=1, bidirectional=False),
    dict(num_layers=2, bidirectional=True),
]


def _arch_id(a):
    return f"L{a['num_layers']}-{'bi' if a['bidirectional'] else 'uni'}"


def _module_fn(module, wrap=None):
    """f(input, hx, *params) -> (output, h_n) through module, params substituted."""
    names = [n for n, _ in module.named_parameters()]

    def f(x, hx, *params):
        inp = wrap(x) if wrap is not None else x
        out, h_n = torch.func.functional_call(module, dict(zip(names, params)), (inp, hx))
        return (out.data if isinstance(out, PackedSequence) else out), h_n

    return f


def _leaves(module, x, hx):
    return (x.requires_grad_(), hx.requires_grad_(),
            *[p.detach().clone().requires_grad_() for p in module.parameters()])


def _hx_shape(module, N):
    D = 2 if module.bidirectional else 1
    return (module.num_layers * D, N, module.hidden_size)


@pytest.mark.parametrize("bias,batch_first", [(True, False), (False, True)],
                         ids=["bias-tm", "nobias-bf"])
@pytest.mark.parametrize("arch", ARCHS, ids=_arch_id)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_gradcheck_and_gradgradcheck_module(nonlinearity, arch, bias, batch_first, device):
    """d/d(input, hx, every parameter) of (output, h_n), first and second order."""
    torch.manual_seed(0)
    m = rnnfast.RNN(3, 3, nonlinearity=nonlinearity, bias=bias, batch_first=batch_first,
                    device=device, dtype=DT, **arch)
    L, N = 3, 2
    x = randn(*((N, L, 3) if batch_first else (L, N, 3)), device=device)
    inputs = _leaves(m, x, randn(*_hx_shape(m, N), device=device))
    f = _module_fn(m)
    assert gradcheck(f, inputs, fast_mode=True)
    assert gradgradcheck(f, inputs, fast_mode=True)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_gradcheck_and_gradgradcheck_slow_mode(nonlinearity, device):
    """The full (non-fast) Jacobian check on a tiny bidirectional 2-layer net (second order
    in full for tanh; relu's second derivative is mostly zero and is covered in fast mode)."""
    torch.manual_seed(1)
    m = rnnfast.RNN(2, 2, 2, nonlinearity=nonlinearity, bidirectional=True, device=device,
                    dtype=DT)
    inputs = _leaves(m, randn(3, 2, 2, device=device), randn(4, 2, 2, device=device))
    f = _module_fn(m)
    assert gradcheck(f, inputs)
    if nonlinearity == "tanh":
        assert gradgradcheck(f, inputs)


@pytest.mark.parametrize("nonlinearity,enforce_sorted", [("tanh", True), ("relu", False)],
                         ids=["tanh-sorted", "relu-unsorted"])
def test_gradcheck_and_gradgradcheck_packed(nonlinearity, enforce_sorted, device):
    """Packed sequences (variable lengths, sorted and unsorted) with hx."""
    torch.manual_seed(2)
    m = rnnfast.RNN(2, 3, 2, nonlinearity=nonlinearity, bidirectional=True, device=device,
                    dtype=DT)
    lengths = [4, 2, 1] if enforce_sorted else [2, 4, 1]
    packed = pack_sequence([randn(n, 2, device=device) for n in lengths],
                           enforce_sorted=enforce_sorted)

    def wrap(data):
        return PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                              packed.unsorted_indices)

    inputs = _leaves(m, packed.data.clone(), randn(4, 3, 3, device=device))
    f = _module_fn(m, wrap)
    assert gradcheck(f, inputs, fast_mode=True)
    assert gradgradcheck(f, inputs, fast_mode=True)


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_gradcheck_and_gradgradcheck_op_with_dropout_masks(packed, device):
    """The op with fixed dropout masks (train-mode dropout is a fixed linear map per draw)."""
    g = torch.Generator().manual_seed(3)
    D, H, I, NL = 2, 2, 2, 3
    weights = []
    for layer in range(NL):
        for _ in range(D):
            weights += [randn(H, I if layer == 0 else D * H, device=device, gen=g),
                        randn(H, H, device=device, gen=g),
                        randn(H, device=device, gen=g), randn(H, device=device, gen=g)]
    if packed:
        batch_sizes = torch.tensor([3, 2, 1], dtype=torch.int64)
        x, N = randn(6, I, device=device, gen=g), 3
    else:
        batch_sizes = None
        x, N = randn(3, 2, I, device=device, gen=g), 2
    rows = 6
    masks = ((torch.rand(NL - 1, rows, D * H, generator=g) > 0.3).to(DT) / 0.7).to(device)
    hx = randn(NL * D, N, H, device=device, gen=g)

    def f(x, hx, *ws):
        out, h_n, _ = call_rnn_forward(x, hx, list(ws), batch_sizes, masks, True, NL, "tanh",
                                       True)
        return out, h_n

    inputs = tuple(t.clone().requires_grad_() for t in (x, hx, *weights))
    assert gradcheck(f, inputs, fast_mode=True)
    assert gradgradcheck(f, inputs, fast_mode=True)


def _second_order(module, x, hx, target, seed):
    """v . d/d(x, hx, params) of <first-order grads, u> for random u, v: Hessian-vector
    products of the loss <(output, h_n), cotangents>, through both the output and the
    cotangent paths."""
    g = torch.Generator().manual_seed(seed)
    out, h_n = module(x, hx)
    primals = [x, hx, *module.parameters()]
    go = torch.randn(out.shape, dtype=DT, generator=g).to(out.device).requires_grad_()
    gh = torch.randn(h_n.shape, dtype=DT, generator=g).to(out.device).requires_grad_()
    outs, cots = [], []
    if target in ("both", "output"):
        outs.append(out)
        cots.append(go)
    if target in ("both", "h_n"):
        outs.append(h_n)
        cots.append(gh)
    first = torch.autograd.grad(outs, primals, cots, create_graph=True)
    u = [torch.randn(t.shape, dtype=DT, generator=g).to(t.device) for t in first]
    second = torch.autograd.grad(first, primals + cots, u, allow_unused=True)
    return [t.detach() for t in first], [
        torch.zeros_like(p) if s is None else s for s, p in zip(second, primals + cots)]


@pytest.mark.parametrize("target", GRAD_TARGETS)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_double_backward_matches_nn_rnn(nonlinearity, target, device):
    """Second derivatives equal nn.RNN's (CPU nn.RNN supports double backward)."""
    ref, new = make_pair(3, 4, 2, seed=4, nonlinearity=nonlinearity, bidirectional=True,
                         device=device)
    x = randn(4, 2, 3, device=device).requires_grad_()
    hx = randn(4, 2, 4, device=device).requires_grad_()
    f_ref, s_ref = _second_order(ref, x, hx, target, seed=8)
    f_new, s_new = _second_order(new, x, hx, target, seed=8)
    names = ["input", "hx"] + [n for n, _ in new.named_parameters()]
    assert_all_close(f_new, f_ref, DT, [f"first {n}" for n in names])
    cot_names = ["grad_output", "grad_h_n"][: len(s_new) - len(names)]
    assert_all_close(s_new, s_ref, DT, [f"second {n}" for n in names + cot_names])


@pytest.mark.parametrize("p", [0.276, 1.0])
def test_double_backward_with_train_dropout_matches_nn_rnn(p, device):
    """Train-mode dropout: double backward reuses the forward's masks (same seed as nn.RNN)."""
    ref, new = make_pair(3, 4, 3, seed=5, dropout=p, device=device)
    x = randn(4, 2, 3, device=device).requires_grad_()
    hx = randn(3, 2, 4, device=device).requires_grad_()
    torch.manual_seed(6)
    f_ref, s_ref = _second_order(ref, x, hx, "both", seed=9)
    torch.manual_seed(6)
    f_new, s_new = _second_order(new, x, hx, "both", seed=9)
    names = [str(i) for i in range(len(s_new))]
    assert_all_close(f_new, f_ref, DT, names[: len(f_new)])
    assert_all_close(s_new, s_ref, DT, names)


def test_gradient_penalty_backward_matches_nn_rnn(device):
    """The common double-backward pattern: grad(create_graph=True), then .backward() of a
    penalty on it, accumulates nn.RNN's parameter gradients."""
    ref, new = make_pair(3, 4, 2, seed=12, bidirectional=True, device=device)
    x = randn(5, 2, 3, device=device).requires_grad_()
    for m in (ref, new):
        out, h_n = m(x)
        (g,) = torch.autograd.grad(out.sum() + h_n.sum(), [x], create_graph=True)
        g.square().sum().backward()
    names = [n for n, _ in new.named_parameters()]
    assert_all_close([p.grad for p in new.parameters()], [p.grad for p in ref.parameters()],
                     DT, names)


def test_third_order_is_refused_with_a_clear_error(device):
    """Orders above two are not supported and say so (instead of returning wrong values)."""
    m = rnnfast.RNN(2, 3, device=device, dtype=DT)
    x = randn(3, 2, 2, device=device).requires_grad_()
    out, h_n = m(x)
    (g,) = torch.autograd.grad(out.sum() + h_n.sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError, match="order higher than two"):
        torch.autograd.grad(g.square().sum(), [x], create_graph=True)


# ---------------------------------------------------------------------------
# RNNCell / rnn_cell_forward
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_gradcheck_and_gradgradcheck_cell(nonlinearity, bias, device):
    """rnn_cell_forward: first, second (and, being written in torch ops, higher) order."""
    g = torch.Generator().manual_seed(7)
    x, hx = randn(3, 2, device=device, gen=g), randn(3, 4, device=device, gen=g)
    w_ih, w_hh = randn(4, 2, device=device, gen=g), randn(4, 4, device=device, gen=g) * 0.5
    b = [randn(4, device=device, gen=g), randn(4, device=device, gen=g)] if bias else []

    def f(x, hx, w_ih, w_hh, *b):
        bi, bh = b if b else (None, None)
        return torch.ops.rnnfast.rnn_cell_forward(x, hx, w_ih, w_hh, bi, bh, nonlinearity)

    inputs = tuple(t.requires_grad_() for t in (x, hx, w_ih, w_hh, *b))
    assert gradcheck(f, inputs)
    assert gradgradcheck(f, inputs)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_cell_double_backward_matches_nn_rnncell(nonlinearity, device):
    """rnnfast.RNNCell second derivatives equal nn.RNNCell's."""
    torch.manual_seed(10)
    ref = nn.RNNCell(3, 4, nonlinearity=nonlinearity, device=device, dtype=DT)
    new = rnnfast.RNNCell(3, 4, nonlinearity=nonlinearity, device=device, dtype=DT)
    new.load_state_dict(ref.state_dict())
    x = randn(5, 3, device=device).requires_grad_()
    hx = randn(5, 4, device=device).requires_grad_()
    results = []
    for m in (ref, new):
        primals = [x, hx, *m.parameters()]
        h = m(x, hx)
        go = torch.linspace(-1, 1, h.numel(), dtype=DT, device=device).view_as(h)
        first = torch.autograd.grad(h, primals, go, create_graph=True)
        u = [torch.cos(torch.arange(t.numel(), dtype=DT, device=device)).view_as(t)
             for t in first]
        second = torch.autograd.grad(first, primals, u, allow_unused=True)
        results.append([t.detach() for t in first] + [
            torch.zeros_like(p) if s is None else s for s, p in zip(second, primals)])
    assert_all_close(results[1], results[0], DT, [str(i) for i in range(len(results[0]))])
