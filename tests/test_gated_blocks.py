"""LSTM / GRU forward with the input projection computed a block of steps at a time.

Where rnnfast runs its own float32 step products (AVX2 CPUs, T >= 8), the gated cells'
time loops compute X W_ih^T themselves, for a block of steps (about 128 KiB of the
layer's gates) just before those steps, and inference keeps no gates. Specification:
  * output, h_n (c_n) and every gradient equal float64 torch.nn's within float32
    tolerance when a sequence spans several blocks and the last is partial: both
    directions (the reverse direction's blocks run from the end), dense and packed
    input (a block's rows are those of its steps), one and two layers, 1 and 2 threads;
  * inference (no_grad) gives the training forward's output bitwise;
  * a large step (G*H = 2080 rows of the carried-gradient product, beyond L2 with 48
    batch rows) matches too: the per-step kernel then walks B by chunks first;
  * so do sequences whose whole-sequence GEMMs (the input projection of Elman and
    projected LSTM layers, the weight gradients, dX = dG W_ih) are large (2^27
    multiply-adds over 512 rows), at 1 and 2 threads.
"""

from __future__ import annotations

import pytest
import torch

from cells import (assert_float32_matches, make_pair, pack_random_lengths, random_hx,
                   random_input)
from helpers import seed_per_test  # noqa: F401  (autouse fixture)

TOL = dict(atol=2e-5, rtol=2e-5)

# (cell, T, N, I, H, layers, bidirectional): N*G*H*4 bytes of 48-64 KiB per step gives
# blocks of 2 steps (T odd: the last block is one step); the last case is the large step.
CASES = [
    ("lstm", 9, 16, 24, 256, 1, True),
    ("gru", 9, 20, 24, 256, 2, True),
    ("lstm", 11, 16, 24, 200, 2, False),
    ("lstm", 8, 48, 8, 520, 1, False),
]
IDS = [f"{c}-T{T}-N{N}-H{H}-L{L}-{'bi' if bi else 'uni'}" for c, T, N, _, H, L, bi in CASES]


@pytest.fixture(autouse=True)
def _restore_num_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _inputs(module, T, N, packed):
    x = random_input(module, T, N, dtype=torch.float64)
    hx = random_hx(module, N, dtype=torch.float64)
    if packed:
        x = pack_random_lengths(x)
    return x, hx


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_blocked_projection_matches_float64_torch(case, packed):
    cell, T, N, I, H, layers, bidirectional = case
    ref, new = make_pair(cell, I, H, layers, bidirectional=bidirectional, dtype=torch.float64)
    x, hx = _inputs(ref, T, N, packed)
    assert_float32_matches(ref, new.float(), x, hx, TOL, threads=(1, 2))


@pytest.mark.parametrize("case", CASES[:2], ids=IDS[:2])
def test_inference_equals_the_training_forward(case):
    cell, T, N, I, H, layers, bidirectional = case
    _, new = make_pair(cell, I, H, layers, bidirectional=bidirectional, dtype=torch.float32)
    x = random_input(new, T, N, dtype=torch.float32)
    trained = new(x)
    with torch.no_grad():
        inferred = new(x)
    for a, e in zip(torch.utils._pytree.tree_leaves(inferred),
                    torch.utils._pytree.tree_leaves(trained), strict=True):
        assert torch.equal(a, e.detach())


# (cell, T, N, I, H, proj_size): 512 rows; 512 x 2048 x 128 (LSTM) and 512 x 512 x 512
# (RNN, and the projected LSTM's projection) multiply-adds = 2^27.
LARGE = [("lstm", 8, 64, 128, 512, 0), ("lstm", 8, 64, 128, 512, 256),
         ("rnn_tanh", 8, 64, 512, 512, 0)]


@pytest.mark.parametrize("case", LARGE, ids=[f"{c}-I{I}-H{H}-P{P}" for c, _, _, I, H, P in LARGE])
def test_large_sequence_gemms_match_float64_torch(case):
    cell, T, N, I, H, proj = case
    kwargs = {"proj_size": proj} if proj else {}
    ref, new = make_pair(cell, I, H, dtype=torch.float64, **kwargs)
    x = random_input(ref, T, N, dtype=torch.float64)
    hx = random_hx(ref, N, dtype=torch.float64)
    assert_float32_matches(ref, new.float(), x, hx, dict(atol=5e-5, rtol=5e-5),
                           threads=(1, 2))
