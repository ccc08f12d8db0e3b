"""pytest-benchmark: rnnfast.X vs torch.nn.X (the baseline), X = RNN, LSTM, GRU, per shape.

Groups are named "{fwd|fwdbwd}-{device}[cell-shape-dtype]": within a group torch.nn.X
and rnnfast.X run the same workload (rnnfast.bench.workloads, same weights), so
pytest-benchmark's relative column is the speedup. Every rnnfast case first passes the
correctness guard of rnnfast.bench.checks; a wrong result fails the test instead of
reporting a time. CUDA: each timed call ends with torch.cuda.synchronize().
"""

from __future__ import annotations

import math
import time

import pytest
import torch

from rnnfast.bench.checks import check_workload, probe_dtype
from rnnfast.bench.machine import device_name
from rnnfast.bench.workloads import DTYPES, IMPLS, Workload

_workloads: dict[tuple, Workload] = {}
_checks: dict[tuple, object] = {}


def _workload(cfg, dtype, device) -> Workload:
    key = (cfg, dtype, device)
    if key not in _workloads:
        _workloads.clear()  # keep one workload alive at a time (the parameter order groups them)
        _workloads[key] = Workload(cfg, DTYPES[dtype], device)
    return _workloads[key]


@pytest.mark.parametrize("impl", IMPLS)
def test_rnn(benchmark, case, impl):
    cfg, dtype, mode, device = case
    for who in IMPLS:
        err = probe_dtype(who, DTYPES[dtype], device, cfg.cell)
        # rnnfast's NotImplementedError means "no kernel for this" (as in the CLI); any
        # other error of rnnfast is a bug, and the case below fails on it
        if err and (who == "torch" or err.startswith("NotImplementedError")):
            pytest.skip(f"UNSUPPORTED: {who} does not run {cfg.cell} in {dtype} on {device}: {err}")
    wl = _workload(cfg, dtype, device)
    if impl == "rnnfast":
        key = (cfg, dtype, device, mode)
        if key not in _checks:
            _checks[key] = check_workload(wl, with_grads=mode == "fwdbwd")
        check = _checks[key]
        if not check.ok:
            pytest.fail(f"rnnfast gives a wrong result on {cfg.label} {dtype}: {check.summary()}")

    fn = wl.fn(impl, mode)
    if device == "cuda":
        inner = fn

        def fn():
            inner()
            torch.cuda.synchronize()

    fn()  # warm-up outside the measurement
    # the shortest of up to 3 calls sizes the rounds (one call alone may hit a noise spike)
    calls, spent = [], 0.0
    while len(calls) < 3 and spent < 0.5:
        t0 = time.perf_counter()
        fn()
        calls.append(time.perf_counter() - t0)
        spent += calls[-1]
    once = max(min(calls), 1e-6)
    budget = 1.0 if not benchmark.disabled else 0.0
    rounds = int(min(max(budget / once, 3), 50))
    iterations = max(1, int(math.ceil(1e-3 / once))) if device == "cpu" else 1

    benchmark.group = f"{mode}-{device}[{cfg.slug}-{dtype}]"
    benchmark.extra_info.update(
        impl=impl, mode=mode, dtype=dtype, device=device, device_name=device_name(device),
        torch=torch.__version__, cuda=torch.version.cuda, threads=torch.get_num_threads(),
        flops=cfg.flops() * (3 if mode == "fwdbwd" else 1), tokens=cfg.tokens, **cfg.as_dict(),
    )
    benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=1)
    if not benchmark.disabled and benchmark.stats is not None:
        med = benchmark.stats.stats.median
        benchmark.extra_info["tokens_per_s"] = cfg.tokens / med
        benchmark.extra_info["us_per_step"] = med / cfg.T * 1e6
        benchmark.extra_info["gflops"] = benchmark.extra_info["flops"] / med / 1e9
    if mode == "fwdbwd":
        benchmark.extra_info["saved_bytes"] = wl.saved_bytes(impl)
