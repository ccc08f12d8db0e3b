"""LSTM / GRU time loops split over a team of threads.

A unidirectional layer (no proj_size) whose step is large enough (N*G*H*P >= 48K
multiply-adds, H >= 32, T >= 8) splits each step's hidden units over a team of threads
wherever rnnfast runs its own float32 step products (AVX2 CPUs): every thread computes
the gate columns of its units, their pointwise math and, backward, its columns of the
carried gradient, meeting the others at one barrier per step. Specification:
  * output, h_n (c_n) and every gradient equal float64 torch.nn's within float32
    tolerance at 1, 2 and 3 threads: H a multiple of 16 or not (a ragged last slice,
    a masked last 8-unit block), dense input and packed input with random lengths
    (rows leave the step mid-sequence), h0 given or not, with every gradient wanted
    or only the weights' (the backward then skips the first step's carried product).
  * The same call at the same thread count is bitwise repeatable: no thread reads a
    slice another is still writing.
"""

from __future__ import annotations

import pytest
import torch

from cells import (grad_names, make_pair, pack_random_lengths, random_hx, random_input,
                   result_names, run)
from helpers import poison_heap, seed_per_test  # noqa: F401  (autouse fixture)

# (cell, T, N, I, H): every step at or above the team's size at 2 and 3 threads.
CASES = [
    ("lstm", 12, 12, 8, 64),
    ("lstm", 9, 9, 7, 37),
    ("gru", 12, 12, 8, 64),
    ("gru", 10, 12, 5, 40),
]
IDS = [f"{c}-T{T}-N{N}-H{H}" for c, T, N, _, H in CASES]

# float32 against float64 torch over T <= 12 steps.
TOL = dict(atol=2e-5, rtol=2e-5)


@pytest.fixture(autouse=True)
def _restore_num_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _inputs(new, T, N, packed, with_hx):
    x = random_input(new, T, N, dtype=torch.float32)
    hx = random_hx(new, N, dtype=torch.float32) if with_hx else None
    if packed:
        x = pack_random_lengths(x)
    return x, hx


def _to64(x):
    if x is None:
        return None
    if isinstance(x, torch.nn.utils.rnn.PackedSequence):
        return x._replace(data=x.data.detach().double().requires_grad_())
    if isinstance(x, tuple):
        return tuple(_to64(t) for t in x)
    return x.detach().double().requires_grad_()


def _run(module, x, hx, weights_only):
    if weights_only:  # only the parameters need gradients
        x = x._replace(data=x.data.detach()) if hasattr(x, "batch_sizes") else x.detach()
        hx = None if hx is None else (tuple(h.detach() for h in hx) if isinstance(hx, tuple)
                                      else hx.detach())
        results = module(x) if hx is None else module(x, hx)
        out = results[0].data if hasattr(results[0], "batch_sizes") else results[0]
        gen = torch.Generator().manual_seed(0)
        grads = torch.autograd.grad(out, list(module.parameters()),
                                    torch.randn(out.shape, generator=gen).to(out))
        return [out.detach()], list(grads)
    return run(module, x, hx)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("weights_only", [False, True], ids=["all-grads", "weights-only"])
def test_team_matches_float64_torch_at_every_thread_count(case, packed, weights_only):
    cell, T, N, I, H = case
    ref, new = make_pair(cell, I, H, dtype=torch.float64)
    new = new.float()
    x, hx = _inputs(new, T, N, packed, with_hx=not weights_only)
    expected = _run(ref, _to64(x), _to64(hx), weights_only)
    names = (["output"] if weights_only else result_names(new)) + (
        [f"grad {n}" for n, _ in new.named_parameters()] if weights_only
        else grad_names(new, hx))
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        poison_heap()
        results, grads = _run(new, x, hx, weights_only)
        for a, e, what in zip(results + grads, expected[0] + expected[1], names, strict=True):
            torch.testing.assert_close(a.double(), e, **TOL,
                                       msg=lambda m: f"{what} at {threads} threads: {m}")


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("threads", [2, 3])
def test_team_results_are_bitwise_repeatable(case, threads):
    cell, T, N, I, H = case
    _, new = make_pair(cell, I, H, dtype=torch.float32)
    x, hx = _inputs(new, T, N, packed=True, with_hx=True)
    torch.set_num_threads(threads)
    first = run(new, x, hx)
    for _ in range(3):
        again = run(new, x, hx)
        for a, e in zip(again[0] + again[1], first[0] + first[1], strict=True):
            assert torch.equal(a, e)
