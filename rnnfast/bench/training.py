"""Shared by the example applications (examples/): comparing a torch run with an
rnnfast run of the same training, seed for seed."""

from __future__ import annotations

import statistics

import torch
from torch import nn

PERTURBED = "torch-1ulp"
CHAOS_FACTOR = 10.0  # rnnfast may drift up to this multiple of the 1-ulp run's drift
RTOL_FLOOR = 1e-5  # ... or this much, whichever is larger

# A third run in the comparison: torch with one recurrent weight moved by one ulp. RNN
# training is chaotic: after a few epochs any rounding difference (summation order, thread
# count, a different library) grows into a visible loss difference. How far this run
# drifts from plain torch measures that float tolerance; rnnfast must stay within it.


def nudge_one_weight(rnn: nn.Module) -> None:
    """Move weight_hh_l0[0, 0] up by one ulp (the PERTURBED run)."""
    with torch.no_grad():
        w = rnn.weight_hh_l0.view(-1)
        w[0] = torch.nextafter(w[0], torch.tensor(float("inf"), dtype=w.dtype))


def rnn_class(backend: str):
    """The RNN module class of a backend name: torch (and PERTURBED) or rnnfast."""
    if backend in ("torch", PERTURBED):
        return nn.RNN
    if backend == "rnnfast":
        import rnnfast

        return rnnfast.RNN
    raise ValueError(f"backend must be 'torch' or 'rnnfast', got {backend!r}")


def compare(results: dict[str, dict], metric: str = "loss") -> bool:
    """Print the losses of torch, rnnfast (and the 1-ulp torch run) and the speedup;
    True if rnnfast's losses agree with torch's within float tolerance."""
    a, b = results["torch"]["losses"], results["rnnfast"]["losses"]
    c = results.get(PERTURBED, {}).get("losses")

    def rel(x, y):
        return abs(x - y) / max(abs(x), 1e-12)

    print(f"\n{'epoch':>5}  {'torch ' + metric:>12}  {'rnnfast ' + metric:>12}  {'rel diff':>9}"
          + (f"  {'torch-1ulp rel diff':>19}" if c else ""))
    for i, (x, y) in enumerate(zip(a, b)):
        print(f"{i + 1:5d}  {x:12.6f}  {y:12.6f}  {rel(x, y):9.1e}"
              + (f"  {rel(x, c[i]):19.1e}" if c else ""))
    tt, tf = results["torch"]["epoch_times"], results["rnnfast"]["epoch_times"]
    ratios = [x / y for x, y in zip(tt, tf)][1:] or [tt[0] / tf[0]]  # epoch 1 includes warm-up
    print(f"time per epoch (median): torch {statistics.median(tt):.3f} s, rnnfast "
          f"{statistics.median(tf):.3f} s -> speedup {statistics.median(ratios):.2f}x "
          "(median of per-epoch ratios)")
    worst = max(rel(x, y) for x, y in zip(a, b))
    chaos = max((rel(x, z) for x, z in zip(a, c)), default=0.0) if c else 0.0
    tol = max(RTOL_FLOOR, CHAOS_FACTOR * chaos)
    same = worst <= tol
    print(f"losses {'match' if same else 'DIFFER'}: max relative difference {worst:.1e}, "
          f"tolerance {tol:.1e} (= max({RTOL_FLOOR:.0e}, {CHAOS_FACTOR:.0f} x the drift "
          f"{chaos:.1e} of torch with one weight moved by 1 ulp))")
    return same
