"""torch.compile(fullgraph=True) of rnnfast.RNN: no graph break, results equal eager.

rnnfast.RNN subclasses nn.RNNBase (not nn.RNN), so dynamo traces it; the fused ops
stay single nodes thanks to their fake kernels and registered autograd. Also
torch.export of a model holding rnnfast.LSTM (proj_size) and rnnfast.GRU.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.testing
from torch.nn.utils.rnn import pack_sequence

import rnnfast
from helpers import randn, seed_per_test  # noqa: F401  (autouse fixture)

DT = torch.float64
TOL = dict(atol=1e-10, rtol=0.0)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _grads(module, x, hx, compiled=None):
    fn = compiled if compiled is not None else module
    out, h_n = fn(x, hx) if hx is not None else fn(x)
    loss = (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype, device=out.device)).sum()
    loss = loss + h_n.square().sum()
    wrt = [x] + ([hx] if hx is not None else []) + list(module.parameters())
    return out, h_n, torch.autograd.grad(loss, wrt)


def _assert_same(eager, compiled):
    out_e, hn_e, g_e = eager
    out_c, hn_c, g_c = compiled
    assert out_c.shape == out_e.shape and out_c.stride() == out_e.stride()
    assert hn_c.shape == hn_e.shape and hn_c.stride() == hn_e.stride()
    torch.testing.assert_close(out_c, out_e, **TOL)
    torch.testing.assert_close(hn_c, hn_e, **TOL)
    assert len(g_c) == len(g_e)
    for a, b in zip(g_c, g_e):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize(
    "cfg,with_hx",
    [
        (dict(num_layers=1, bidirectional=False, batch_first=False, nonlinearity="tanh"), True),
        (dict(num_layers=2, bidirectional=True, batch_first=True, nonlinearity="relu"), True),
        (dict(num_layers=3, bidirectional=False, batch_first=True, nonlinearity="tanh",
              bias=False), False),
    ],
    ids=["L1-uni-tm-tanh-hx", "L2-bi-bf-relu-hx", "L3-uni-bf-tanh-nobias-nohx"],
)
def test_compiled_forward_backward_equals_eager(cfg, with_hx, device):
    """fullgraph compile (inductor) gives eager's output, h_n, strides and gradients."""
    torch.manual_seed(0)
    m = rnnfast.RNN(3, 4, device=device, dtype=DT, **cfg)
    D = 2 if cfg["bidirectional"] else 1
    x = randn(*((2, 5, 3) if cfg["batch_first"] else (5, 2, 3)), device=device).requires_grad_()
    hx = randn(cfg["num_layers"] * D, 2, 4, device=device).requires_grad_() if with_hx else None
    compiled = torch.compile(m, fullgraph=True)
    _assert_same(_grads(m, x, hx), _grads(m, x, hx, compiled))


@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
def test_compiled_eval_mode_with_dropout_equals_eager(batch_first, device):
    """A module with dropout in eval mode compiles and equals eager (no dropout applied)."""
    torch.manual_seed(1)
    m = rnnfast.RNN(3, 4, 3, dropout=0.5, bidirectional=True, batch_first=batch_first,
                    device=device, dtype=DT).eval()
    x = randn(*((2, 5, 3) if batch_first else (5, 2, 3)), device=device).requires_grad_()
    hx = randn(6, 2, 4, device=device).requires_grad_()
    compiled = torch.compile(m, fullgraph=True)
    _assert_same(_grads(m, x, hx), _grads(m, x, hx, compiled))


def test_compiled_unbatched_input_equals_eager(device):
    """Unbatched (L, H_in) input with a (D*NL, H) hx compiles (aot_eager: tracing through
    the fake kernels is what is tested)."""
    torch.manual_seed(2)
    m = rnnfast.RNN(3, 4, 2, bidirectional=True, device=device, dtype=DT)
    x = randn(5, 3, device=device).requires_grad_()
    hx = randn(4, 4, device=device).requires_grad_()
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    _assert_same(_grads(m, x, hx), _grads(m, x, hx, compiled))


def test_graph_keeps_the_fused_op_and_has_no_break(device):
    """Dynamo captures one graph per call containing rnnfast::rnn_forward (not nn.RNN's
    decomposition), with the module's parameters as graph inputs."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.manual_seed(3)
    m = rnnfast.RNN(3, 4, 2, batch_first=True, device=device, dtype=DT)
    x = randn(2, 5, 3, device=device)
    out, h_n = torch.compile(m, fullgraph=True, backend=backend)(x)
    assert len(graphs) == 1
    targets = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert any("rnnfast.rnn_forward" in t for t in targets), targets
    assert not any("rnn_tanh" in t for t in targets), targets
    out_e, hn_e = m(x)
    torch.testing.assert_close(out, out_e, **TOL)
    torch.testing.assert_close(h_n, hn_e, **TOL)


def test_compiled_dynamic_batch_size(device):
    """With a dynamic batch dimension one compiled graph serves several batch sizes
    (aot_eager)."""
    torch.manual_seed(4)
    m = rnnfast.RNN(3, 4, 2, bidirectional=True, device=device, dtype=DT)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(m, fullgraph=True, dynamic=True, backend=counter)
    compiled_after_first_call = None
    for N in (2, 5, 3):
        x = randn(4, N, 3, device=device).requires_grad_()
        hx = randn(4, N, 4, device=device).requires_grad_()
        _assert_same(_grads(m, x, hx), _grads(m, x, hx, compiled))
        if compiled_after_first_call is None:
            compiled_after_first_call = counter.frame_count
    assert counter.frame_count == compiled_after_first_call  # no recompilation


def test_compiled_functional_packed_equals_eager(device):
    """rnnfast.functional.rnn on packed data (batch_sizes) compiles with fullgraph
    (aot_eager)."""
    torch.manual_seed(5)
    m = rnnfast.RNN(3, 4, 2, bidirectional=True, device=device, dtype=DT)
    seq = pack_sequence([randn(n, 3, device=device) for n in (5, 3, 2)])
    weights = [w.detach().requires_grad_() for w in m._flat_weights]
    data = seq.data.clone().requires_grad_()
    hx = randn(4, 3, 4, device=device).requires_grad_()

    def f(data, hx, weights):
        return rnnfast.functional.rnn(data, hx, weights, batch_sizes=seq.batch_sizes,
                                      num_layers=2, bidirectional=True)

    results = []
    for fn in (f, torch.compile(f, fullgraph=True, backend="aot_eager")):
        out, h_n = fn(data, hx, weights)
        grads = torch.autograd.grad(out.sum() + h_n.square().sum(), [data, hx, *weights])
        results.append((out, h_n, grads))
    _assert_same(*results)


class _GatedModel(torch.nn.Module):
    """An rnnfast.LSTM with a projection feeding an rnnfast.GRU (both batch_first)."""

    def __init__(self, device):
        super().__init__()
        # LSTM output is D*P = 4 wide; h_n is P = 2 wide, c_n H = 5 wide.
        self.lstm = rnnfast.LSTM(3, 5, 2, batch_first=True, bidirectional=True, proj_size=2,
                                 device=device, dtype=DT)
        self.gru = rnnfast.GRU(4, 3, batch_first=True, device=device, dtype=DT)

    def forward(self, x, h0, c0):
        out, (h_n, c_n) = self.lstm(x, (h0, c0))
        out, g_n = self.gru(out)
        return out, h_n, c_n, g_n


def test_export_lstm_with_proj_and_gru_equals_eager(device):
    """torch.export of a model holding rnnfast.LSTM (proj_size) and rnnfast.GRU: the graph
    keeps one rnnfast::rnn_forward per module, and the exported program gives eager's
    results, on the example input and on fresh input of another batch size (dynamic)."""
    torch.manual_seed(6)
    m = _GatedModel(device)
    x, h0, c0 = randn(2, 5, 3, device=device), randn(4, 2, 2, device=device), \
        randn(4, 2, 5, device=device)
    batch = torch.export.Dim("batch")
    exported = torch.export.export(m, (x, h0, c0),
                                   dynamic_shapes=({0: batch}, {1: batch}, {1: batch}))
    targets = [str(n.target) for n in exported.graph.nodes if n.op == "call_function"]
    assert targets.count("rnnfast.rnn_forward.default") == 2, targets
    assert not any("aten.lstm" in t or "aten.gru" in t for t in targets), targets
    for N in (2, 3):
        x, h0, c0 = randn(N, 5, 3, device=device), randn(4, N, 2, device=device), \
            randn(4, N, 5, device=device)
        got, expected = exported.module()(x, h0, c0), m(x, h0, c0)
        assert [t.shape for t in got] == [(N, 5, 3), (4, N, 2), (4, N, 5), (1, N, 3)]
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, **TOL)
