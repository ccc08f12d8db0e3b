"""Memory: rnnfast leaks nothing and keeps no more activations than it needs.

* 5,000 forward + backward calls over a mix of configurations (dense, packed,
  bidirectional, batch_first, training with dropout, float64, bfloat16 and the cell)
  leave the resident set size flat (/proc/self/statm).
* Everything autograd saved for backward is released by reference counting alone
  (garbage collection disabled) once the graph is gone: after backward, or when the
  outputs are dropped without a backward.
* The tensors saved for backward by rnnfast total at most
      input + hx + weights + output + (num_layers - 1) layer outputs
      (+ the dropout masks when training with dropout, + batch_sizes when packed)
  bytes, counted per distinct storage with torch.autograd.graph.saved_tensors_hooks.
  The same count for nn.RNN is printed next to it, per T*B*H (sequence length x
  batch x hidden size), both for everything saved and for the activations alone
  (what is saved beyond the input, hx and the parameters the caller holds anyway).
"""

from __future__ import annotations

import contextlib
import gc
import os
import weakref

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnfast

PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


@contextlib.contextmanager
def _num_threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _churn_steps():
    """One step function per configuration; each allocates >= ~2 KB of tensors per call,
    so a leak of any one of them would add >= 10 MB over 5,000 calls."""
    torch.manual_seed(0)
    dense = rnnfast.RNN(16, 32, 2)
    bidir_packed = rnnfast.RNN(16, 32, 2, bidirectional=True, nonlinearity="relu")
    dropout = rnnfast.RNN(16, 32, 3, dropout=0.3, batch_first=True).train()
    double = rnnfast.RNN(16, 32, 1, dtype=torch.float64)
    half = rnnfast.RNN(16, 32, 2, dtype=torch.bfloat16)
    cell = rnnfast.RNNCell(16, 32)
    lstm = rnnfast.LSTM(16, 32, 2, proj_size=8, bidirectional=True)
    gru = rnnfast.GRU(16, 32, 2, dropout=0.3).train()
    lstm_cell, gru_cell = rnnfast.LSTMCell(16, 32), rnnfast.GRUCell(16, 32)
    lengths = torch.tensor([8, 6, 3, 1])

    def step_dense():
        x = torch.randn(8, 4, 16, requires_grad=True)
        out, h_n = dense(x, torch.randn(2, 4, 32))
        (out.sum() + h_n.sum()).backward()

    def step_packed():
        x = torch.randn(8, 4, 16, requires_grad=True)
        out, h_n = bidir_packed(pack_padded_sequence(x, lengths))
        (out.data.sum() + h_n.sum()).backward()

    def step_dropout():
        out, h_n = dropout(torch.randn(4, 8, 16, requires_grad=True))
        out.sum().backward()

    def step_double():
        out, h_n = double(torch.randn(8, 4, 16, dtype=torch.float64))
        h_n.sum().backward()

    def step_half():
        out, _ = half(torch.randn(8, 4, 16, dtype=torch.bfloat16, requires_grad=True))
        out.float().sum().backward()

    def step_cell():
        h = torch.randn(4, 32, requires_grad=True)
        for t in range(4):
            h = cell(torch.randn(4, 16), h)
        h.sum().backward()

    def step_no_backward():  # forward only, graph dropped
        dense(torch.randn(8, 4, 16, requires_grad=True))

    def step_lstm_packed():
        x = torch.randn(8, 4, 16, requires_grad=True)
        out, (h_n, c_n) = lstm(pack_padded_sequence(x, lengths))
        (out.data.sum() + h_n.sum() + c_n.sum()).backward()

    def step_gru_dropout():
        out, h_n = gru(torch.randn(8, 4, 16, requires_grad=True))
        (out.sum() + h_n.sum()).backward()

    def step_gated_cells():
        h = g = torch.randn(4, 32, requires_grad=True)
        c = torch.randn(4, 32)
        for t in range(4):
            h, c = lstm_cell(torch.randn(4, 16), (h, c))
            g = gru_cell(torch.randn(4, 16), g)
        (h.sum() + c.sum() + g.sum()).backward()

    def step_gated_inference():
        with torch.no_grad():
            lstm(torch.randn(8, 4, 16))
            gru(torch.randn(8, 4, 16))

    return [step_dense, step_packed, step_dropout, step_double, step_half, step_cell,
            step_no_backward, step_lstm_packed, step_gru_dropout, step_gated_cells,
            step_gated_inference]


def test_rss_stays_flat_over_5000_forward_backward_calls():
    # One intra-op thread: the leak check is about allocations, and this keeps the
    # 5,000 calls within ~20 s on a loaded 2-core machine (threads: test_threads.py).
    steps = _churn_steps()
    with _num_threads(1):
        for i in range(350):  # warm-up: allocator pools, autograd and dispatcher caches
            steps[i % len(steps)]()
        gc.collect()
        start = _rss_bytes()
        samples = []
        for i in range(5000):
            steps[i % len(steps)]()
            if i % 1000 == 999:
                gc.collect()
                samples.append(_rss_bytes() - start)
    growth_mb = [round(s / 2**20, 2) for s in samples]
    print(f"RSS growth every 1,000 calls (MiB): {growth_mb}")
    assert samples[-1] < 6 * 2**20, f"RSS grew by {growth_mb} MiB over 5,000 calls"
    # No steady climb either: the last 2,000 calls add less than 2 MiB.
    assert samples[-1] - samples[-3] < 2 * 2**20, f"RSS keeps growing: {growth_mb} MiB"


# ---------------------------------------------------------------------------
# Saved tensors are released with the graph
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _recording_saved():
    """Records what autograd saves in the block: each saved tensor is stored in the
    graph as a fresh alias (detach(): same storage, no grad_fn, so the hook itself
    creates no reference cycle), and a weak reference to that alias is kept. The alias
    lives exactly as long as the graph keeps the saved tensor."""
    refs = []

    def pack(t):
        alias = t.detach()
        refs.append(weakref.ref(alias))
        return alias

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield refs


def _alive(refs):
    return [tuple(r().shape) for r in refs if r() is not None]


CONFIGS = {
    "dense-2-layers": dict(kwargs=dict(num_layers=2), packed=False, train=False),
    "bidir-3-layers-batch-first": dict(kwargs=dict(num_layers=3, bidirectional=True,
                                                   batch_first=True), packed=False, train=False),
    "packed-bidir-2-layers": dict(kwargs=dict(num_layers=2, bidirectional=True), packed=True,
                                  train=False),
    "train-dropout-3-layers": dict(kwargs=dict(num_layers=3, dropout=0.4), packed=False,
                                   train=True),
}


def _inputs(cfg, T, N, I, dtype=torch.float32):
    batch_first = cfg["kwargs"].get("batch_first", False)
    x = torch.randn((N, T, I) if batch_first else (T, N, I), dtype=dtype, requires_grad=True)
    if cfg["packed"]:
        lengths = torch.randint(1, T + 1, (N,))
        lengths[0] = T
        return x, pack_padded_sequence(x, lengths, enforce_sorted=False)
    return x, x


@pytest.mark.parametrize("backward", [True, False], ids=["after-backward", "outputs-dropped"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_saved_tensors_are_released_with_the_graph(name, backward):
    cfg = CONFIGS[name]
    rnn = rnnfast.RNN(5, 8, **cfg["kwargs"]).train(cfg["train"])
    leaf, x = _inputs(cfg, T=7, N=3, I=5)
    hx = torch.randn(rnn.num_layers * (2 if rnn.bidirectional else 1), 3, 8, requires_grad=True)
    gc.disable()  # whatever is not freed by reference counting counts as held
    try:
        with _recording_saved() as refs:
            out, h_n = rnn(x, hx)
        out_data = out.data if isinstance(out, PackedSequence) else out
        assert refs and len(_alive(refs)) == len(refs)  # the graph holds what it saved
        if backward:
            (out_data.sum() + h_n.sum()).backward()
            # The outputs are still alive, but the graph's saved tensors are released.
            assert not _alive(refs), f"saved tensors outlive backward: {_alive(refs)}"
        del out, h_n, out_data
        assert not _alive(refs), f"saved tensors outlive the graph: {_alive(refs)}"
    finally:
        gc.enable()


def test_cell_saved_tensors_are_released_with_the_graph():
    cell = rnnfast.RNNCell(5, 8)
    x, hx = torch.randn(3, 5, requires_grad=True), torch.randn(3, 8, requires_grad=True)
    gc.disable()
    try:
        with _recording_saved() as refs:
            h = hx
            for _ in range(4):
                h = cell(x, h)
        assert refs and len(_alive(refs)) == len(refs)
        h.sum().backward()
        assert not _alive(refs)
        del h
        assert not _alive(refs)
    finally:
        gc.enable()


# ---------------------------------------------------------------------------
# How much is saved for backward
# ---------------------------------------------------------------------------


def _saved_bytes(module, x, hx):
    """Bytes of the distinct storages autograd saves during module(x, hx)."""
    storages = {}
    with _recording_saved() as refs:
        out, h_n = module(x, hx)
    for r in refs:  # all alive: the graph (held through out and h_n) keeps them
        s = r().untyped_storage()
        storages[s.data_ptr()] = max(storages.get(s.data_ptr(), 0), s.nbytes())
    return sum(storages.values()), out


def _nbytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


SIZES = dict(T=40, N=6, I=10, H=16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_saved_activations_are_no_larger_than_needed(name, dtype, capsys):
    cfg = CONFIGS[name]
    T, N, I, H = SIZES["T"], SIZES["N"], SIZES["I"], SIZES["H"]
    kwargs = dict(cfg["kwargs"], dtype=dtype)
    torch.manual_seed(1)
    ref = nn.RNN(I, H, **kwargs).train(cfg["train"])
    new = rnnfast.RNN(I, H, **kwargs).train(cfg["train"])
    new.load_state_dict(ref.state_dict())
    D = 2 if new.bidirectional else 1
    L = new.num_layers
    leaf, x = _inputs(cfg, T, N, I, dtype)
    hx = torch.randn(L * D, N, H, dtype=dtype, requires_grad=True)
    data = x.data if isinstance(x, PackedSequence) else x
    rows = data.shape[0] if isinstance(x, PackedSequence) else T * N
    el = torch.empty((), dtype=dtype).element_size()

    saved_new, out = _saved_bytes(new, x, hx)
    saved_ref, _ = _saved_bytes(ref, x, hx)

    held = _nbytes(data, hx, *new.parameters())  # what the caller holds anyway
    layer_out = rows * D * H * el
    bound = held + layer_out + (L - 1) * layer_out  # + output + lower layers' outputs
    if cfg["train"] and new.dropout > 0:
        bound += (L - 1) * layer_out  # masks, in the input's dtype
    if isinstance(x, PackedSequence):  # batch_sizes, and the permutations of hx and h_n
        bound += _nbytes(x.batch_sizes, x.sorted_indices, x.unsorted_indices)
    per = T * N * H
    with capsys.disabled():
        print(f"\n[saved for backward] {name} {str(dtype)[6:]}: bytes per T*B*H "
              f"rnnfast {saved_new / per:.2f} (activations {(saved_new - held) / per:.2f}) | "
              f"nn.RNN {saved_ref / per:.2f} (activations {(saved_ref - held) / per:.2f}) | "
              f"bound {bound / per:.2f}")
    assert saved_new <= bound, (
        f"rnnfast saves {saved_new} bytes, more than input + hx + weights + output + "
        f"{L - 1} layer outputs (+ masks) = {bound}")
    # The count is not vacuous: the output and the lower layers' outputs are in it.
    assert saved_new >= L * layer_out
