"""Determinism: same inputs, same process, same thread count => bitwise-identical
outputs and gradients, every time; torch.use_deterministic_algorithms(True) is
honoured (no error, no warning, identical results).

What may vary with the intra-op thread count (torch.set_num_threads), measured and
asserted in test_what_varies_with_the_thread_count:

* float32 on AVX-512 CPUs: output, h_n and the gradients of input, hx and the biases
  are bitwise independent of the thread count: the recurrence kernels split work by
  columns (each element accumulated in the same order whatever the split), the
  row-major GEMMs (input projection, dX) split by output tile, and the bias gradients
  are torch column sums (bitwise stable across thread counts in every shape tested). The weight gradients (dW = dZ^T X, dZ^T H: a transposed A,
  computed by MKL) may differ in the last bits between thread counts (observed: 1 vs 2
  threads, and 1 vs 3-4 threads, on some shapes).
* float64 (every GEMM through MKL): every result may differ in the last bits
  (observed ~1e-16 relative) between thread counts, as for nn.RNN.
* bfloat16 on AVX512-BF16 CPUs: every GEMM is rnnfast's own kernel (tile- or
  column-split), so only the bias gradients (torch column sums) may vary; elsewhere,
  and float16, run the float32 kernels: same as float32 before the final rounding,
  which a last-bit difference can flip.

Results never depend on anything else: not on previous calls, other modules, memory
reuse, or whether deterministic algorithms are requested.

All of this holds for rnnfast.LSTM (with and without projections) and rnnfast.GRU as
for rnnfast.RNN: the configurations below with a "cell" key run them (c_n and the
gradient of c0 count with h_n and the gradient of hx).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast
from helpers import OWN_FLOAT32_GEMMS, call_rnn_forward


@pytest.fixture(autouse=True)
def _restore_global_state():
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det, warn_only=warn_only)


CONFIGS = {
    "f32-uni-team": dict(I=8, H=64, N=12, T=6, layers=1, bidirectional=False, packed=False,
                         dtype=torch.float32, nonlinearity="tanh"),
    "f32-bidir-packed-relu": dict(I=5, H=17, N=5, T=9, layers=2, bidirectional=True,
                                  packed=True, dtype=torch.float32, nonlinearity="relu"),
    "f32-3-layers-tail": dict(I=33, H=33, N=7, T=11, layers=3, bidirectional=False,
                              packed=False, dtype=torch.float32, nonlinearity="tanh"),
    "f64-bidir": dict(I=6, H=9, N=4, T=5, layers=2, bidirectional=True, packed=False,
                      dtype=torch.float64, nonlinearity="tanh"),
    "bf16-packed": dict(I=4, H=16, N=3, T=6, layers=2, bidirectional=False, packed=True,
                        dtype=torch.bfloat16, nonlinearity="relu"),
    "f16-bidir": dict(I=3, H=8, N=2, T=4, layers=1, bidirectional=True, packed=False,
                      dtype=torch.float16, nonlinearity="tanh"),
    "f32-train-dropout": dict(I=5, H=20, N=4, T=6, layers=3, bidirectional=True,
                              packed=False, dtype=torch.float32, nonlinearity="tanh",
                              dropout=0.5),
    "lstm-f32-bidir-packed": dict(cell="lstm", I=5, H=17, N=5, T=9, layers=2,
                                  bidirectional=True, packed=True, dtype=torch.float32),
    "lstm-proj-f32-3-layers": dict(cell="lstm", proj_size=5, I=8, H=24, N=7, T=6, layers=3,
                                   bidirectional=False, packed=False, dtype=torch.float32),
    "gru-f32-team": dict(cell="gru", I=8, H=64, N=12, T=6, layers=1, bidirectional=False,
                         packed=False, dtype=torch.float32),
    "gru-f32-train-dropout": dict(cell="gru", I=5, H=20, N=4, T=6, layers=3, bidirectional=True,
                                  packed=False, dtype=torch.float32, dropout=0.5),
    "lstm-f64-bidir": dict(cell="lstm", I=6, H=9, N=4, T=5, layers=2, bidirectional=True,
                           packed=False, dtype=torch.float64),
}


def _make(cfg, seed=0):
    cell = cfg.get("cell", "rnn")
    kwargs = dict(bidirectional=cfg["bidirectional"], dropout=cfg.get("dropout", 0.0),
                  dtype=cfg["dtype"])
    if cell == "rnn":
        kwargs["nonlinearity"] = cfg["nonlinearity"]
    if cell == "lstm":
        kwargs["proj_size"] = cfg.get("proj_size", 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cls = {"rnn": rnnfast.RNN, "lstm": rnnfast.LSTM, "gru": rnnfast.GRU}[cell]
        rnn = cls(cfg["I"], cfg["H"], cfg["layers"], **kwargs)
    rnn.train("dropout" in cfg)
    g = torch.Generator().manual_seed(seed + 1)
    D = 2 if cfg["bidirectional"] else 1
    dt = cfg["dtype"]
    x = torch.randn(cfg["T"], cfg["N"], cfg["I"], generator=g).to(dt).requires_grad_()
    P = cfg.get("proj_size", 0) or cfg["H"]
    hx = torch.randn(cfg["layers"] * D, cfg["N"], P, generator=g).to(dt).requires_grad_()
    if cell == "lstm":  # (h0, c0)
        c0 = torch.randn(cfg["layers"] * D, cfg["N"], cfg["H"], generator=g).to(dt)
        hx = (hx, c0.requires_grad_())
    lengths = torch.randint(1, cfg["T"] + 1, (cfg["N"],), generator=g)
    lengths[0] = cfg["T"]
    return rnn, x, hx, lengths, g


def _run(cfg, rnn, x, hx, lengths, seed=123):
    """Forward + all gradients; dropout masks are drawn after torch.manual_seed(seed)."""
    inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if cfg["packed"] else x
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out, h_n = rnn(inp, hx)
    out = out.data if cfg["packed"] else out
    results = [out, *_states(h_n)]
    g = torch.Generator().manual_seed(seed)
    cotangents = [torch.randn(r.shape, generator=g).to(r.dtype) for r in results]
    grads = torch.autograd.grad(results, [x, *_states(hx), *rnn.parameters()], cotangents)
    return [r.detach() for r in results] + list(grads)


def _states(h):
    """[h] for a state tensor, [h, c] for LSTM's (h, c)."""
    return list(h) if isinstance(h, tuple) else [h]


def _names(rnn):
    lstm = rnn.mode == "LSTM"
    return (["output", "h_n"] + (["c_n"] if lstm else []) + ["grad input", "grad hx"]
            + (["grad cx"] if lstm else [])
            + [f"grad {n}" for n, _ in rnn.named_parameters()])


def _assert_bitwise(actual, expected, names, what):
    for a, e, n in zip(actual, expected, names):
        assert torch.equal(a, e), f"{what}: {n} differs (max diff {(a - e).abs().max()})"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_repeated_runs_are_bitwise_identical(name):
    cfg = CONFIGS[name]
    rnn, x, hx, lengths, _ = _make(cfg)
    first = _run(cfg, rnn, x, hx, lengths)
    # Unrelated work in between (other shapes, freed memory reused) changes nothing.
    other, ox, ohx, olen, _ = _make(CONFIGS["f32-3-layers-tail"], seed=9)
    _run(CONFIGS["f32-3-layers-tail"], other, ox, ohx, olen)
    for _ in range(3):
        _assert_bitwise(_run(cfg, rnn, x, hx, lengths), first, _names(rnn), "repeat")
    # A fresh module from the same seed, fed the same data, too.
    rnn2, x2, hx2, lengths2, _ = _make(cfg)
    _assert_bitwise(_run(cfg, rnn2, x2, hx2, lengths2), first, _names(rnn), "fresh module")


@pytest.mark.parametrize("name", ["f32-train-dropout", "gru-f32-train-dropout"])
def test_train_dropout_masks_depend_only_on_the_seed(name):
    cfg = CONFIGS[name]
    rnn, x, hx, lengths, _ = _make(cfg)
    a = _run(cfg, rnn, x, hx, lengths, seed=1)
    b = _run(cfg, rnn, x, hx, lengths, seed=2)
    assert not torch.equal(a[0], b[0]), "different seeds must draw different masks"
    _assert_bitwise(_run(cfg, rnn, x, hx, lengths, seed=1), a, _names(rnn), "same seed")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_use_deterministic_algorithms_is_honoured(name):
    cfg = CONFIGS[name]
    rnn, x, hx, lengths, _ = _make(cfg)
    torch.use_deterministic_algorithms(False)
    free = _run(cfg, rnn, x, hx, lengths)
    torch.use_deterministic_algorithms(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even a nondeterminism warning
        strict = [_run(cfg, rnn, x, hx, lengths) for _ in range(2)]
    for s in strict:
        _assert_bitwise(s, free, _names(rnn), "deterministic mode")


def test_use_deterministic_algorithms_cell_and_raw_ops():
    torch.use_deterministic_algorithms(True)
    cell = rnnfast.RNNCell(7, 19, nonlinearity="relu")
    x, h = torch.randn(5, 7), torch.randn(5, 19, requires_grad=True)
    runs = []
    for _ in range(2):
        out = cell(x, h)
        runs.append([out, *torch.autograd.grad(out.sum(), [h, *cell.parameters()])])
    _assert_bitwise(runs[1], runs[0], ["h", "grad hx", "w_ih", "w_hh", "b_ih", "b_hh"], "cell")
    w = [torch.randn(6, 3), torch.randn(6, 6)]
    args = (torch.randn(4, 2, 3), torch.randn(1, 2, 6), w, None, None, False, 1, "tanh", False)
    a, b = call_rnn_forward(*args), call_rnn_forward(*args)
    assert all(torch.equal(p, q) for p, q in zip(a, b))


@pytest.mark.parametrize("cls", [rnnfast.LSTMCell, rnnfast.GRUCell],
                         ids=["LSTMCell", "GRUCell"])
def test_use_deterministic_algorithms_gated_cells(cls):
    torch.use_deterministic_algorithms(True)
    cell = cls(7, 19)
    x, h = torch.randn(5, 7), torch.randn(5, 19, requires_grad=True)
    hx = (h, torch.randn(5, 19, requires_grad=True)) if cls is rnnfast.LSTMCell else h
    runs = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            out = cell(x, hx)
            outs = list(out) if isinstance(out, tuple) else [out]
            leaves = (list(hx) if isinstance(hx, tuple) else [hx]) + list(cell.parameters())
            runs.append(outs + list(torch.autograd.grad(sum(o.sum() for o in outs), leaves)))
    names = [f"result {i}" for i in range(len(runs[0]))]
    _assert_bitwise(runs[1], runs[0], names, cls.__name__)


def _thread_invariant(names, dtype):
    """Names of the results asserted bitwise equal across thread counts."""
    if dtype != torch.float32 or not OWN_FLOAT32_GEMMS:
        return []
    return [n for n in names if "weight" not in n]


@pytest.mark.parametrize("name", ["f32-uni-team", "f32-bidir-packed-relu", "f32-3-layers-tail",
                                  "f64-bidir", "bf16-packed", "lstm-f32-bidir-packed",
                                  "lstm-proj-f32-3-layers", "gru-f32-team", "lstm-f64-bidir"])
def test_what_varies_with_the_thread_count(name):
    cfg = CONFIGS[name]
    rnn, x, hx, lengths, _ = _make(cfg)
    names = _names(rnn)
    torch.set_num_threads(1)
    one = _run(cfg, rnn, x, hx, lengths)
    rel = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 1e-2}[cfg["dtype"]]
    for n in (2, 3):
        torch.set_num_threads(n)
        many = _run(cfg, rnn, x, hx, lengths)
        # Within float rounding, always.
        for a, e, what in zip(many, one, names):
            scale = max(1.0, e.abs().max().item())
            assert (a - e).abs().max().item() <= rel * scale, f"{what} with {n} threads"
        # Bitwise for what the float32 kernels compute themselves.
        invariant = _thread_invariant(names, cfg["dtype"])
        _assert_bitwise([m for m, k in zip(many, names) if k in invariant],
                        [o for o, k in zip(one, names) if k in invariant], invariant,
                        f"float32 with {n} threads vs 1")
        # Same thread count again: bitwise.
        _assert_bitwise(_run(cfg, rnn, x, hx, lengths), many, names, f"repeat at {n} threads")


def test_cell_output_does_not_depend_on_the_thread_count():
    # float32 cell forward: rows in fixed blocks, one single-thread GEMM each; 100 rows
    # span several blocks, so 2-3 threads really split the work.
    cell = rnnfast.RNNCell(48, 40)
    x, h = torch.randn(100, 48), torch.randn(100, 40)
    previous = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append(cell(x, h))
    finally:
        torch.set_num_threads(previous)
    _assert_bitwise(outs[1:], [outs[0], outs[0]], ["2 threads", "3 threads"], "cell forward")
