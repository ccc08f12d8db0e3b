"""The cell registry of the test suite: every recurrent module rnnfast replaces, with the
torch.nn module it must match, and helpers that run either kind the same way.

    SEQUENCE_CELLS / STEP_CELLS / CELLS: {name: (torch class, rnnfast class, extra kwargs)}

A test parametrized over cell names builds both modules with make_pair(name, ...) and
handles LSTM's (h, c) state tuple through the helpers below, so one test body covers
RNN, LSTM (with and without projections) and GRU.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnfast
from helpers import TOL, poison_heap, randn

# proj_size of the "lstm_proj" entry: every test that uses it builds hidden_size >= 3.
PROJ = 2

SEQUENCE_CELLS = {
    "rnn_tanh": (nn.RNN, rnnfast.RNN, dict(nonlinearity="tanh")),
    "rnn_relu": (nn.RNN, rnnfast.RNN, dict(nonlinearity="relu")),
    "lstm": (nn.LSTM, rnnfast.LSTM, {}),
    "lstm_proj": (nn.LSTM, rnnfast.LSTM, dict(proj_size=PROJ)),
    "gru": (nn.GRU, rnnfast.GRU, {}),
}

STEP_CELLS = {
    "rnn_cell_tanh": (nn.RNNCell, rnnfast.RNNCell, dict(nonlinearity="tanh")),
    "rnn_cell_relu": (nn.RNNCell, rnnfast.RNNCell, dict(nonlinearity="relu")),
    "lstm_cell": (nn.LSTMCell, rnnfast.LSTMCell, {}),
    "gru_cell": (nn.GRUCell, rnnfast.GRUCell, {}),
}

CELLS = {**SEQUENCE_CELLS, **STEP_CELLS}

# The new (gated) cells, the subject of test_gated_*.py.
GATED = ["lstm", "lstm_proj", "gru"]
GATED_STEP = ["lstm_cell", "gru_cell"]

# nn.RNNBase's mode string of each sequence cell (the ops' `mode` argument).
MODES = {"rnn_tanh": "RNN_TANH", "rnn_relu": "RNN_RELU", "lstm": "LSTM", "lstm_proj": "LSTM",
         "gru": "GRU"}


def is_lstm(name: str) -> bool:
    return name in ("lstm", "lstm_proj", "lstm_cell")


def make_pair(name, *args, seed=0, device="cpu", dtype=torch.float64, **kwargs):
    """The torch module and the rnnfast module of cell `name`, built from the same seed:
    bitwise-equal parameters (checked here, name by name)."""
    torch_cls, rnnfast_cls, extra = CELLS[name]
    kwargs = {**extra, **kwargs}
    torch.manual_seed(seed)
    ref = torch_cls(*args, device=device, dtype=dtype, **kwargs)
    torch.manual_seed(seed)
    new = rnnfast_cls(*args, device=device, dtype=dtype, **kwargs)
    ref_params, new_params = list(ref.named_parameters()), list(new.named_parameters())
    assert [n for n, _ in new_params] == [n for n, _ in ref_params]
    for (n, p_ref), (_, p_new) in zip(ref_params, new_params):
        assert p_ref.shape == p_new.shape and torch.equal(p_ref, p_new), n
    return ref, new


def state_width(module) -> int:
    """P: the width of h (proj_size for a projected LSTM, else hidden_size)."""
    return getattr(module, "proj_size", 0) or module.hidden_size


def random_input(module, L, N, dtype=torch.float64, device="cpu", requires_grad=True):
    """Fresh random input of a sequence module: (L, N, I), (N, L, I) with batch_first,
    or (L, I) when N is None (unbatched)."""
    if N is None:
        shape = (L, module.input_size)
    elif module.batch_first:
        shape = (N, L, module.input_size)
    else:
        shape = (L, N, module.input_size)
    return randn(*shape, dtype=dtype, device=device).requires_grad_(requires_grad)


def pack_random_lengths(x):
    """x (T, N, I) as a PackedSequence of random lengths in [1, T], the first T long,
    unsorted (rows leave the steps mid-sequence)."""
    T, N = x.shape[:2]
    lengths = torch.randint(1, T + 1, (N,))
    lengths[0] = T
    return pack_padded_sequence(x, lengths, enforce_sorted=False)


def random_hx(module, N, dtype=torch.float64, device="cpu", requires_grad=True):
    """Fresh random initial state of a sequence module for batch N (None: unbatched):
    (h0, c0) for LSTM (h0 P wide, c0 H wide), else h0."""
    D = 2 if module.bidirectional else 1
    lead = (module.num_layers * D,) + (() if N is None else (N,))
    h0 = randn(*lead, state_width(module), dtype=dtype, device=device)
    h0.requires_grad_(requires_grad)
    if module.mode != "LSTM":
        return h0
    c0 = randn(*lead, module.hidden_size, dtype=dtype, device=device)
    return h0, c0.requires_grad_(requires_grad)


def random_cell_hx(module, N, dtype=torch.float64, device="cpu", requires_grad=True):
    """Fresh random state of a step cell for batch N (None: 1-D): (h, c) for LSTMCell."""
    shape = (module.hidden_size,) if N is None else (N, module.hidden_size)
    h = randn(*shape, dtype=dtype, device=device).requires_grad_(requires_grad)
    if isinstance(module, (nn.LSTMCell, rnnfast.LSTMCell)):
        return h, randn(*shape, dtype=dtype, device=device).requires_grad_(requires_grad)
    return h


def states(hx) -> list:
    """The state tensors of hx / h_n: [h, c] for LSTM's tuple, [h] otherwise, [] for None."""
    if hx is None:
        return []
    return list(hx) if isinstance(hx, (tuple, list)) else [hx]


def map_states(fn, hx):
    """hx with fn applied to each state tensor, in hx's own structure."""
    if hx is None:
        return None
    if isinstance(hx, (tuple, list)):
        return type(hx)(fn(h) for h in hx)
    return fn(hx)


def result_tensors(result) -> list:
    """A module's result as a flat list: [output (.data if packed), h_n(, c_n)] for a
    sequence module, [h(, c)] for a step cell."""
    if isinstance(result, torch.Tensor):
        return [result]
    out, *rest = result
    out = out.data if isinstance(out, PackedSequence) else out
    return [out] + [t for r in rest for t in states(r)]


def result_names(module) -> list[str]:
    if isinstance(module, nn.RNNBase):
        return ["output", "h_n"] + (["c_n"] if module.mode == "LSTM" else [])
    return ["h'", "c'"] if isinstance(module, (nn.LSTMCell, rnnfast.LSTMCell)) else ["h'"]


def run(module, x, hx, loss_on="all", seed=0):
    """module(x, hx) (hx None: module(x)) and the gradients of a random linear loss of its
    results with respect to the input (packed: its data), each hx state and every
    parameter. loss_on: "all", or one result name ("output", "h_n", "c_n") alone.

    The cotangents come from a generator seeded with `seed`, so two modules with results
    of the same shapes get the same loss. Gradients that the loss does not reach are
    zeros. Returns (results, grads)."""
    result = module(x) if hx is None else module(x, hx)
    results = result_tensors(result)
    names = result_names(module)
    assert len(results) == len(names)
    gen = torch.Generator().manual_seed(seed)
    cotangents = [torch.randn(r.shape, dtype=torch.float64, generator=gen).to(r) for r in results]
    used = [i for i, n in enumerate(names) if loss_on in ("all", n)]
    assert used, f"{loss_on} is not a result of {type(module).__name__}"
    x_data = x.data if isinstance(x, PackedSequence) else x
    wrt = [x_data, *states(hx), *module.parameters()]
    grads = torch.autograd.grad([results[i] for i in used], wrt,
                                [cotangents[i] for i in used], allow_unused=True)
    grads = [torch.zeros_like(w) if g is None else g for g, w in zip(grads, wrt)]
    return [r.detach() for r in results], grads


def grad_names(module, hx) -> list[str]:
    hx_names = ["grad h0", "grad c0"][: len(states(hx))]
    return ["grad input"] + hx_names + [f"grad {n}" for n, _ in module.named_parameters()]


def assert_close(actual, expected, dtype, what, tol=None):
    """Same shape and dtype, values within TOL[dtype] (or the given tolerance)."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    torch.testing.assert_close(actual, expected, **(tol or TOL[dtype]),
                               msg=lambda m: f"{what}: {m}")


def compare(ref, new, x, hx, dtype, loss_on="all", seed=0):
    """Runs both modules on the same input, state and loss; asserts that every result
    and every gradient of `new` matches `ref`. Returns new's (results, grads)."""
    results_ref, grads_ref = run(ref, x, hx, loss_on, seed)
    poison_heap()  # an element the kernels leave unwritten then likely reads NaN
    results_new, grads_new = run(new, x, hx, loss_on, seed)
    for a, e, n in zip(results_new, results_ref, result_names(new), strict=True):
        assert_close(a, e, dtype, n)
    for a, e, n in zip(grads_new, grads_ref, grad_names(new, hx), strict=True):
        assert_close(a, e, dtype, n)
        assert torch.isfinite(a).all(), f"{n}: not finite"
    return results_new, grads_new


def float32_leaves(x):
    """x (a tensor, PackedSequence, tuple of them or None) as float32 leaves requiring grad."""
    if x is None:
        return None
    if isinstance(x, PackedSequence):
        return x._replace(data=x.data.detach().float().requires_grad_())
    if isinstance(x, tuple):
        return tuple(float32_leaves(t) for t in x)
    return x.detach().float().requires_grad_()


def assert_float32_matches(ref, new, x, hx, tol, threads=(None,)):
    """new (float32) on x, hx against ref (float64 on the same inputs): every result and
    every gradient within tol, at each thread count in threads (None: the current one).
    The caller restores the thread count."""
    expected_results, expected_grads = run(ref, x, hx)
    names = result_names(new) + grad_names(new, hx)
    for n in threads:
        if n is not None:
            torch.set_num_threads(n)
        poison_heap()
        results, grads = run(new, float32_leaves(x), float32_leaves(hx))
        where = "" if n is None else f" at {n} threads"
        for a, e, what in zip(results + grads, expected_results + expected_grads, names,
                              strict=True):
            torch.testing.assert_close(a.double(), e, **tol,
                                       msg=lambda m: f"{what}{where}: {m}")
