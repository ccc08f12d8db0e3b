"""Timing helpers: wall-clock blocks on CPU, CUDA events on GPU, ABAB interleaving.

Interleaving the candidates within every repeat (A B A B ...) and taking medians makes
slow drift of a shared, noisy machine (other jobs, frequency changes) hit both sides
alike, so their ratio stays meaningful even when absolute times wander.

CUDA launches are asynchronous: a host timer around them measures launch time only.
On CUDA every block is timed with a pair of CUDA events recorded on the current stream
and read after synchronizing (the device is also synchronized before each block).
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["Samples", "time_block", "interleaved", "sync", "median"]


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def time_block(fn: Callable[[], object], inner: int, device: torch.device | str) -> float:
    """Seconds for `inner` back-to-back calls of fn (CUDA: measured with events)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return time.perf_counter() - t0


@dataclass
class Samples:
    """Per-call times in seconds, one per repeat, for each candidate."""

    inner: int
    times: dict[str, list[float]] = field(default_factory=dict)

    def median_s(self, name: str) -> float:
        return median(self.times[name])

    def paired_ratio(self, num: str, den: str) -> float:
        """Median over repeats of num/den within the same repeat."""
        pairs = [a / b for a, b in zip(self.times[num], self.times[den]) if b > 0]
        return median(pairs)

    def spread(self, name: str) -> float:
        """Half the inter-quartile range relative to the median (a noise indicator)."""
        xs = sorted(self.times[name])
        if len(xs) < 4:
            return math.nan
        q = statistics.quantiles(xs, n=4)
        return (q[2] - q[0]) / 2 / statistics.median(xs)


def interleaved(
    fns: dict[str, Callable[[], object]],
    device: torch.device | str,
    *,
    warmup: int = 1,
    min_repeats: int = 5,
    max_repeats: int = 50,
    budget_s: float = 3.0,
    min_block_s: float = 2e-3,
) -> Samples:
    """Time the callables in turn within each repeat (A B A B ...) until both
    `min_repeats` repeats are done and `budget_s` seconds have passed (or
    `max_repeats`). Every block runs the same number of calls, `inner`, chosen so that
    the fastest candidate's block lasts about `min_block_s` (timer resolution, launch
    jitter). Returns per-call seconds.
    """
    names = list(fns)
    for _ in range(max(warmup, 1)):
        for n in names:
            fns[n]()
    sync(device)
    once = {n: time_block(fns[n], 1, device) for n in names}
    fastest = max(min(once.values()), 1e-7)
    inner = int(min(max(1, math.ceil(min_block_s / fastest)), 10_000))
    samples = Samples(inner=inner, times={n: [] for n in names})
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        t_start = time.perf_counter()
        for r in range(max_repeats):
            for n in names:
                samples.times[n].append(time_block(fns[n], inner, device) / inner)
            if r + 1 >= min_repeats and time.perf_counter() - t_start >= budget_s:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples
