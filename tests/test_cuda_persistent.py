"""The persistent CUDA kernels (one cooperative launch per layer for all steps) and
the heuristic that picks them (skipped without a GPU).

* Every shape class the kernels handle: H below, at and above each weights-per-thread
  step (256, 512, 1024, 2048), H not a multiple of the 8 columns a block owns, N from 1
  to the 128-row limit, packed sequences, both directions, several layers, dropout,
  tanh/relu, with and without bias; float32 against the float64 reference, float16 /
  bfloat16 against float64 on the same rounded inputs.
* Outputs land in memory poisoned with NaN first: an element the kernels never
  write fails the comparison.
* `rnnfast._persistent_launches` proves which path ran: RNNFAST_PERSISTENT=1 must
  launch (two launches per layer: forward and backward), =0 must not, and shapes
  outside the limits fall back to the per-step path with correct results.
* Bitwise determinism, agreement with the per-step path, a 100,000-step sequence.
"""

from __future__ import annotations

import pytest
import torch

import rnnfast  # noqa: F401  (registers torch.ops.rnnfast)
from helpers import call_reference_forward
from test_cuda import (  # noqa: F401  (no_tf32 is a fixture)
    assert_all_close, assert_low_precision_close, capture_and_replay, make_case, no_tf32,
    round_case, run)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ops = torch.ops.rnnfast


def set_path(monkeypatch, value: str):
    monkeypatch.setenv("RNNFAST_PERSISTENT", value)


def poison_cuda_cache():
    """Fill the caching allocator's free blocks with NaN, so that tensors allocated next
    start as NaN rather than zeros or old results."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    blocks = [torch.full((n,), float("nan"), device="cuda")
              for n in [2**k for k in range(6, 24)] for _ in range(3)]
    del blocks


def run_counted(case, dtype, expect_launches: int, **kw):
    poison_cuda_cache()
    before = ops._persistent_launches()
    result = run(case, "cuda", dtype, **kw)
    torch.cuda.synchronize()
    launched = ops._persistent_launches() - before
    assert launched == expect_launches, (
        f"expected {expect_launches} persistent launches, got {launched}")
    return result


# name: make_case arguments. Each shape class of the kernels at least once.
SHAPES = {
    "uni-tanh-N1-H1": dict(T=5, N=1, I=3, H=1),
    "uni-tanh-N4-H8": dict(T=6, N=4, I=5, H=8),
    "bi-relu-nobias-N37-H33": dict(T=5, N=37, I=7, H=33, bidirectional=True, nonlinearity="relu",
                                   bias=False),
    "uni-tanh-N128-H256": dict(T=4, N=128, I=9, H=256),
    "uni-relu-N5-H257": dict(T=5, N=5, I=6, H=257, nonlinearity="relu"),
    "bi-tanh-N9-H600": dict(T=4, N=9, I=11, H=600, bidirectional=True),
    "uni-tanh-N16-H1024": dict(T=4, N=16, I=8, H=1024),
    "uni-tanh-N3-H2048": dict(T=3, N=3, I=4, H=2048),
    "bi-tanh-3layers-packed-dropout": dict(num_layers=3, bidirectional=True,
                                           lengths=[7, 3, 5, 5, 1, 2], dropout=0.3),
    "uni-relu-2layers-packed": dict(num_layers=2, nonlinearity="relu", lengths=[4, 6, 1, 6]),
    "bi-tanh-packed-equal": dict(bidirectional=True, lengths=[3, 3, 3]),
    "bi-tanh-packed-N128-H300": dict(bidirectional=True, I=5, H=300,
                                     lengths=[(7 * i) % 9 + 1 for i in range(128)]),
}


def launches_for(case) -> int:
    return 2 * case.num_layers  # one forward and one backward launch per layer


@pytest.mark.parametrize("name", list(SHAPES))
def test_float32_matches_float64_reference(name, monkeypatch, no_tf32):
    set_path(monkeypatch, "1")
    case = make_case(**SHAPES[name], seed=11)
    expected = run(case, "cpu", torch.float64, use_reference=True)
    actual = run_counted(case, torch.float32, launches_for(case))
    tol = 1e-4 if case.weights[1].shape[0] >= 1024 else 5e-5
    assert_all_close(actual, expected, case, atol=tol, rtol=1e-4)


@pytest.mark.parametrize("name", ["bi-relu-nobias-N37-H33", "bi-tanh-N9-H600",
                                  "bi-tanh-3layers-packed-dropout", "uni-tanh-N16-H1024"])
@pytest.mark.parametrize(
    "dtype,fwd_tol,grad_tol", [(torch.float16, 5e-3, 1e-2), (torch.bfloat16, 3e-2, 1e-1)]
)
def test_half_precision(name, dtype, fwd_tol, grad_tol, monkeypatch):
    set_path(monkeypatch, "1")
    case = make_case(**SHAPES[name], seed=12)
    expected = run(round_case(case, dtype), "cpu", torch.float64, use_reference=True)
    actual = run_counted(case, dtype, launches_for(case))
    for t in actual:
        assert t.dtype == dtype
    assert_low_precision_close(actual, expected, case, fwd_tol, grad_tol)


@pytest.mark.parametrize("which", ["only_output", "only_h_n"])
def test_grads_through_one_output(which, monkeypatch, no_tf32):
    set_path(monkeypatch, "1")
    case = make_case(**SHAPES["bi-tanh-3layers-packed-dropout"], seed=13)
    kw = dict(use_out=which == "only_output", use_hn=which == "only_h_n")
    expected = run(case, "cpu", torch.float64, use_reference=True, **kw)
    actual = run_counted(case, torch.float32, launches_for(case), **kw)
    assert_all_close(actual, expected, case, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["bi-tanh-packed-N128-H300", "uni-tanh-N16-H1024"])
def test_agrees_with_per_step_path(name, monkeypatch, no_tf32):
    case = make_case(**SHAPES[name], seed=14)
    set_path(monkeypatch, "0")
    per_step = run_counted(case, torch.float32, 0)
    set_path(monkeypatch, "1")
    persistent = run_counted(case, torch.float32, launches_for(case))
    assert_all_close(persistent, per_step, case, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bitwise_deterministic(dtype, monkeypatch):
    set_path(monkeypatch, "1")
    case = make_case(num_layers=2, bidirectional=True, lengths=[30, 17, 30, 4, 22, 9, 30, 1],
                     dropout=0.2, I=24, H=300, seed=15)
    first = run_counted(case, dtype, launches_for(case))
    for _ in range(3):
        again = run_counted(case, dtype, launches_for(case))
        for a, b in zip(again, first):
            assert torch.equal(a, b)


# ---------------------------------------------------------------------------
# The choice of path
# ---------------------------------------------------------------------------


def test_auto_picks_persistent_at_small_batch(monkeypatch, no_tf32):
    monkeypatch.delenv("RNNFAST_PERSISTENT", raising=False)
    small = make_case(T=5, N=16, I=8, H=256, seed=16)
    run_counted(small, torch.float32, 2)
    large = make_case(T=3, N=256, I=8, H=256, seed=16)
    run_counted(large, torch.float32, 0)
    run_counted(small, torch.float64, 0)  # float64 always takes the per-step path


@pytest.mark.parametrize("shape", [dict(N=129, H=16), dict(N=2, H=2049)], ids=["N129", "H2049"])
def test_beyond_limits_falls_back(shape, monkeypatch, no_tf32):
    set_path(monkeypatch, "1")
    case = make_case(T=3, I=4, seed=17, **shape)
    expected = run(case, "cpu", torch.float64, use_reference=True)
    actual = run_counted(case, torch.float32, 0)
    assert_all_close(actual, expected, case, atol=1e-4, rtol=1e-4)


def test_env_value_is_checked(monkeypatch):
    set_path(monkeypatch, "sometimes")
    case = make_case(seed=18)
    with pytest.raises(RuntimeError, match="RNNFAST_PERSISTENT must be auto, 1 or 0"):
        run(case, "cuda", torch.float32)


def test_cuda_graph_capture(monkeypatch, no_tf32):
    # Forced on, the persistent kernels are captured (dense input; auto captures the
    # per-step path) and the replay computes the new input's result.
    set_path(monkeypatch, "1")
    case = make_case(num_layers=2, bidirectional=True, T=6, N=4, H=32, seed=20)
    (static_out, static_hn), (eager_out, eager_hn), launches = capture_and_replay(case)
    assert launches == 2
    torch.testing.assert_close(static_out, eager_out, atol=0, rtol=0)
    torch.testing.assert_close(static_hn, eager_hn, atol=0, rtol=0)


# ---------------------------------------------------------------------------
# Long sequences: no overflow of the step counters, no deadlock
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["1", "0"], ids=["persistent", "per-step"])
def test_100k_steps(path, monkeypatch):
    set_path(monkeypatch, path)
    torch.manual_seed(19)
    T, N, I, H = 100_000, 2, 3, 16
    rnn = rnnfast.RNN(I, H, bidirectional=True).cuda()
    with torch.no_grad():
        for w in (rnn.weight_hh_l0, rnn.weight_hh_l0_reverse):
            q, _ = torch.linalg.qr(torch.randn(H, H, dtype=torch.float64))
            w.copy_(0.9 * q)  # contracting: the exact answer stays bounded
    x = torch.randn(T, N, I, device="cuda", requires_grad=True)
    before = ops._persistent_launches()
    out, hn = rnn(x)
    grads = torch.autograd.grad([out, hn], [x, *rnn.parameters()],
                                [torch.randn_like(out), torch.randn_like(hn)])
    torch.cuda.synchronize()
    assert ops._persistent_launches() - before == (2 if path == "1" else 0)
    for t in [out, hn, *grads]:
        assert t.isfinite().all()
    assert torch.equal(out[-1, :, :H], hn[0]) and torch.equal(out[0, :, H:], hn[1])
    # The last steps against the float64 reference, started from the state at T - 50.
    start = T - 50
    h0 = out[start - 1, :, :H].detach().double().cpu()
    w64 = [w.detach().double().cpu() for w in rnn._flat_weights[:4]]
    ref, _ = call_reference_forward(x[start:, :, :].detach().double().cpu(), h0[None], w64,
                                    None, None, True, 1, "tanh", False)
    torch.testing.assert_close(out[start:, :, :H].double().cpu(), ref, atol=1e-4, rtol=1e-4)
