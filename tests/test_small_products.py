"""Few-row products that read the weights where they are.

A step cell, or a sequence of fewer than 8 steps, does not pack its weights: its products
x W_ih^T and h W_hh^T (and h W_hr^T with proj_size) read W in place. In float32 on AVX2
CPUs those of at most 8 rows run as dot products of rows on rnnfast's own kernel
(small_gemm.h), 8 k at a time, the last K % 8 through a masked load, four rows of W per
tile. Specification:
  * every cell's results and gradients equal float64 torch.nn's within float32 tolerance
    for 1-8 rows, widths K that are not a multiple of 8 (and below 8), output widths
    that are not a multiple of 4, with and without biases;
  * the same for sequences of 1-7 steps, where the input projection covers all T*N
    rows (up to 8 of them on this kernel, more on BLAS), including proj_size;
  * a step accumulates into what it adds to (h W_hh^T onto x W_ih^T): checked by the
    results themselves; unwritten outputs are caught by poisoned memory;
  * from 8 steps the weights are packed in 24-column panels and a step of 1-3 rows runs
    tiles of 4, 2 or 1 panels, then the 1-4 panels left (the last partial) as one tile:
    every cell matches float64 torch where G*H and H leave each of those counts.
"""

from __future__ import annotations

import pytest
import torch

from cells import assert_float32_matches, make_pair, random_cell_hx, random_hx, random_input
from helpers import seed_per_test  # noqa: F401  (autouse fixture)

TOL = dict(atol=2e-5, rtol=2e-5)
STEP_CELLS = ["rnn_cell_tanh", "rnn_cell_relu", "lstm_cell", "gru_cell"]
ROWS = [1, 2, 3, 5, 8]
# (I, H): K = I or H below 8, not a multiple of 8, and a multiple of 8; G*H not a
# multiple of 4 for the Elman cell (H = 7, 13).
WIDTHS = [(3, 7), (11, 13), (16, 24), (37, 64)]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("I,H", WIDTHS, ids=[f"I{i}-H{h}" for i, h in WIDTHS])
@pytest.mark.parametrize("N", ROWS)
@pytest.mark.parametrize("cell", STEP_CELLS)
def test_step_cells_match_float64_torch(cell, N, I, H, bias):
    ref, new = make_pair(cell, I, H, bias=bias, dtype=torch.float64)
    x = torch.randn(N, I, dtype=torch.float64, requires_grad=True)
    hx = random_cell_hx(ref, N)
    assert_float32_matches(ref, new.float(), x, hx, TOL)


SEQUENCES = ["rnn_tanh", "lstm", "lstm_proj", "gru"]


@pytest.mark.parametrize("T,N", [(1, 1), (1, 8), (2, 3), (3, 2), (7, 1), (7, 5)])
@pytest.mark.parametrize("I,H", WIDTHS[1:3], ids=[f"I{i}-H{h}" for i, h in WIDTHS[1:3]])
@pytest.mark.parametrize("cell", SEQUENCES)
def test_short_sequences_match_float64_torch(cell, I, H, T, N):
    ref, new = make_pair(cell, I, H, num_layers=2, dtype=torch.float64)
    x = random_input(ref, T, N)
    hx = random_hx(ref, N)
    assert_float32_matches(ref, new.float(), x, hx, TOL)


# (cell, H): G*H (the forward's step product) and H (the backward's) leave 1, 2, 3 and 4
# of the 24-column panels after the 1-row tiles of 4 panels.
PACKED_TAILS = [("rnn_tanh", 13), ("rnn_tanh", 40), ("rnn_tanh", 64), ("rnn_tanh", 90),
                ("lstm", 10), ("lstm", 16), ("lstm", 23), ("gru", 21), ("gru", 30)]


@pytest.mark.parametrize("N", [1, 2, 3])
@pytest.mark.parametrize("cell,H", PACKED_TAILS, ids=[f"{c}-H{h}" for c, h in PACKED_TAILS])
def test_packed_steps_of_few_rows_match_float64_torch(cell, H, N):
    ref, new = make_pair(cell, 9, H, dtype=torch.float64)
    x = random_input(ref, 9, N)
    hx = random_hx(ref, N)
    assert_float32_matches(ref, new.float(), x, hx, TOL)
