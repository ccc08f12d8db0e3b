"""Runs a configuration set: guard, time (interleaved), measure memory, summarise."""

from __future__ import annotations

import gc
import itertools
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import ort as ort_baseline
from .checks import TOLERANCES, CheckResult, check_workload, probe_dtype
from .configs import Config
from .machine import device_name, machine_info
from .progress import make_progress
from .timing import Samples, interleaved
from .workloads import DTYPES, MODE_NAMES, Workload

__all__ = ["Settings", "run_benchmarks", "geomean", "SCHEMA"]

SCHEMA = "rnnfast-bench/1"
# rnnfast's GFLOP/s at the GEMM-bound shape as a fraction of torch.mm's for the same FLOPs:
# issue 5 (the Elman cell) asked for 70%, issue 14 (LSTM and GRU) for 90%.
GFLOPS_TARGET = {"rnn": 0.70, "lstm": 0.90, "gru": 0.90}
BF16_CPU_TARGET = 1.6  # the CPU-performance issue: bf16 fwd+bwd >= 1.6x our float32

# Row statuses. Only "ok" rows carry timings; FAILED / ERROR make the CLI exit non-zero.
OK, FAILED, ERROR, UNSUPPORTED = "ok", "FAILED", "ERROR", "UNSUPPORTED"
# The onnxruntime baseline's status in a row (--ort): OK (timed), FAILED (wrong output),
# ERROR (export or session failed), or one of these two without a number.
ORT_NOT_APPLICABLE = "n/a"  # forward+backward, not float32, CUDA, proj_size
ORT_NOT_RUN = "not run"  # applies, but rnnfast's row was not timed (FAILED, ERROR, ...)


@dataclass
class Settings:
    warmup: int = 1
    min_repeats: int = 5
    max_repeats: int = 50
    budget_s: float = 2.0  # per (config, dtype, mode), after warm-up
    min_block_s: float = 2e-3
    gflops: bool = True  # measure GFLOP/s of the largest config against torch.mm
    seed: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def geomean(xs: list[float]) -> float:
    xs = [x for x in xs if x and x > 0 and math.isfinite(x)]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else math.nan


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _base_row(cfg: Config, dtype: str, device: torch.device, mode: str) -> dict:
    return {
        "config": cfg.as_dict(),
        "cell": cfg.cell,
        "label": cfg.label,
        "dtype": dtype,
        "device": device.type,
        "mode": mode,
        "status": OK,
        "message": "",
        "flops": cfg.flops() * (3 if mode == "fwdbwd" else 1),
    }


def _fill_timing(row: dict, cfg: Config, s: Samples) -> None:
    t_torch, t_fast = s.median_s("torch"), s.median_s("rnnfast")
    row.update(
        torch_ms=t_torch * 1e3,
        rnnfast_ms=t_fast * 1e3,
        speedup=t_torch / t_fast,
        speedup_paired_median=s.paired_ratio("torch", "rnnfast"),
        speedup_of_minima=min(s.times["torch"]) / min(s.times["rnnfast"]),
        torch_tokens_per_s=cfg.tokens / t_torch,
        rnnfast_tokens_per_s=cfg.tokens / t_fast,
        torch_us_per_step=t_torch / cfg.T * 1e6,
        rnnfast_us_per_step=t_fast / cfg.T * 1e6,
        torch_gflops=row["flops"] / t_torch / 1e9,
        rnnfast_gflops=row["flops"] / t_fast / 1e9,
        noise=max(s.spread("torch"), s.spread("rnnfast")),
        repeats=len(s.times["torch"]),
        inner=s.inner,
        torch_ms_samples=[t * 1e3 for t in s.times["torch"]],
        rnnfast_ms_samples=[t * 1e3 for t in s.times["rnnfast"]],
    )
    if ort_baseline.ORT in s.times:
        t_ort = s.median_s(ort_baseline.ORT)
        row.update(
            ort_ms=t_ort * 1e3,
            speedup_vs_ort=t_ort / t_fast,
            speedup_vs_ort_paired_median=s.paired_ratio(ort_baseline.ORT, "rnnfast"),
            ort_tokens_per_s=cfg.tokens / t_ort,
            ort_us_per_step=t_ort / cfg.T * 1e6,
            ort_noise=s.spread(ort_baseline.ORT),
            ort_ms_samples=[t * 1e3 for t in s.times[ort_baseline.ORT]],
        )


PATH_ENV = "RNNFAST_PERSISTENT"


def _forced_path(fn: Callable[[], object], value: str) -> Callable[[], object]:
    """fn with RNNFAST_PERSISTENT=value (read by the CUDA ops at every call)."""

    def call():
        old = os.environ.get(PATH_ENV)
        os.environ[PATH_ENV] = value
        try:
            return fn()
        finally:
            if old is None:
                del os.environ[PATH_ENV]
            else:
                os.environ[PATH_ENV] = old

    return call


def _persistent_launches(fn: Callable[[], object], device: torch.device) -> int:
    """Persistent-kernel launches made by one call of fn."""
    launches = torch.ops.rnnfast._persistent_launches
    before = launches()
    fn()
    torch.cuda.synchronize(device)
    return launches() - before


def _cuda_path_fns(wl: Workload, mode: str, device: torch.device, row: dict) -> dict:
    """On CUDA, rnnfast forced onto each recurrence path, to time beside its default
    (auto) choice, which is recorded in row["rnnfast_path"]. The persistent candidate
    is left out when the shape does not fit the persistent kernels."""
    fn = wl.fn("rnnfast", mode)
    row["rnnfast_path"] = "persistent" if _persistent_launches(fn, device) else "per-step"
    fns = {"per_step": _forced_path(fn, "0")}
    persistent = _forced_path(fn, "1")
    if _persistent_launches(persistent, device):
        fns["persistent"] = persistent
    return fns


def _probe(cell: str, dtype_name: str, device: torch.device) -> tuple[str | None, str | None]:
    """(why the cell in this dtype is UNSUPPORTED, rnnfast's ERROR) from a tiny run of
    each implementation; (None, None) when both run it. UNSUPPORTED: torch cannot run it,
    or rnnfast raises NotImplementedError (its "no kernel for this" signal, e.g. a cell
    without CUDA kernels). Any other exception of rnnfast is a bug: ERROR."""
    torch_err = probe_dtype("torch", DTYPES[dtype_name], device, cell)
    fast_err = probe_dtype("rnnfast", DTYPES[dtype_name], device, cell)
    where = f"{cell} in {dtype_name} on {device.type}"
    if torch_err or (fast_err and fast_err.startswith("NotImplementedError")):
        msgs = [f"{impl} does not run {where}: {err}"
                for impl, err in (("torch", torch_err), ("rnnfast", fast_err)) if err]
        return "; ".join(msgs), None
    if fast_err:
        return None, f"rnnfast raised on a tiny {where}: {fast_err}"
    return None, None


def _ort_fields(cfg: Config, dtype_name: str, device: torch.device, mode: str) -> dict:
    """A row's onnxruntime fields before anything ran."""
    why = ort_baseline.not_applicable(cfg, dtype_name, device.type, mode)
    if why:
        return {"ort_status": ORT_NOT_APPLICABLE, "ort_message": why}
    return {"ort_status": ORT_NOT_RUN, "ort_message": "rnnfast's row was not timed"}


def _ort_candidate(wl: Workload, row: dict) -> Callable[[], object] | None:
    """One session.run of wl's rnnfast module exported to onnxruntime, to time beside
    torch and rnnfast; None, with row["ort_status"] FAILED or ERROR and the reason, when
    the export or the session fails or its output differs from rnnfast's."""
    try:
        baseline = ort_baseline.OrtBaseline(wl)
        check = baseline.check(wl)
    except Exception as e:  # noqa: BLE001 - reported in the row, the sweep goes on
        row.update(ort_status=ERROR, ort_message=f"{type(e).__name__}: {e}".splitlines()[0])
        return None
    row["ort_check"] = check
    if not check["ok"]:
        row.update(ort_status=FAILED, ort_message="WRONG RESULT: " + "; ".join(check["failures"]))
        return None
    return baseline.fn()


def _ort_summary(rows: list[dict], cells: list[str]) -> dict:
    """Per cell: the geometric mean and minimum of rnnfast's forward speedup over
    onnxruntime, against the targets (>= TARGET_MIN at every shape, geomean >=
    TARGET_GEOMEAN). A cell none of whose rows was timed against onnxruntime is left out."""
    out = {}
    for cell in cells:
        timed = [r for r in rows if r["cell"] == cell and r.get("ort_status") == OK]
        if not timed:
            continue
        sp = [r["speedup_vs_ort"] for r in timed]
        # every applicable row counts: one that FAILED has no speedup, so no target is met
        applicable = [r for r in rows if r["cell"] == cell
                      and r.get("ort_status") not in (None, ORT_NOT_APPLICABLE)]
        g, low = geomean(sp), min(sp)
        out[f"{cell}/float32/fwd"] = {
            "cell": cell, "dtype": "float32", "mode": "fwd",
            "geomean_speedup": g, "min_speedup": low, "n": len(sp),
            "n_applicable": len(applicable),
            "meets_target": len(sp) == len(applicable) and low >= ort_baseline.TARGET_MIN
            and g >= ort_baseline.TARGET_GEOMEAN,
        }
    return out


def _fwd_part_ok(check: CheckResult) -> bool:
    return check.error is None and not any(
        f.startswith(("output", "h_n", "c_n")) for f in check.failures
    )


def _gflops_section(
    cfg: Config, dtype_name: str, device: torch.device, modes: list[str], st: Settings,
    rows: list[dict],
) -> dict:
    """GFLOP/s of rnnfast on cfg next to torch.mm, interleaved in the same repeats.

    Two mm references: one GEMM with the forward's FLOP count, (T*B, K) @ (K, G*H)
    (K = I+H for one layer without projection; the best case for the whole FLOP volume),
    and the recurrent step's GEMM (B, P) @ (P, G*H), which the time loop must run T
    times in sequence.
    """
    dtype = DTYPES[dtype_name]
    wl = Workload(cfg, dtype, device, seed=st.seed)
    M, N = cfg.T * cfg.B, cfg.G * cfg.H
    K = max(1, round(cfg.flops() / (2 * M * N)))
    g = torch.Generator(device=device).manual_seed(1)

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device).to(dtype)

    a, b, hs, w = randn(M, K), randn(K, N), randn(cfg.B, cfg.P), randn(cfg.P, N)
    fns = {"rnnfast_fwd": wl.fn("rnnfast", "fwd")}
    if "fwdbwd" in modes:
        fns["rnnfast_fwdbwd"] = wl.fn("rnnfast", "fwdbwd")
    fns["mm_same_flops"] = lambda: torch.mm(a, b)
    fns["mm_recurrent_step"] = lambda: torch.mm(hs, w)
    s = interleaved(fns, device, warmup=st.warmup, min_repeats=st.min_repeats,
                    max_repeats=st.max_repeats, budget_s=st.budget_s, min_block_s=st.min_block_s)
    fl = cfg.flops()
    gf = {
        "rnnfast_fwd": fl / s.median_s("rnnfast_fwd") / 1e9,
        "mm_same_flops": 2 * M * K * N / s.median_s("mm_same_flops") / 1e9,
        "mm_recurrent_step": 2 * cfg.B * cfg.P * N / s.median_s("mm_recurrent_step") / 1e9,
    }
    if "fwdbwd" in modes:
        gf["rnnfast_fwdbwd"] = 3 * fl / s.median_s("rnnfast_fwdbwd") / 1e9
    out = {
        "config": cfg.as_dict(),
        "cell": cfg.cell,
        "label": cfg.label,
        "dtype": dtype_name,
        "forward_gflop": fl / 1e9,
        "mm_same_flops_shape": [M, K, N],
        "mm_recurrent_step_shape": [cfg.B, cfg.P, N],
        "gflops": gf,
        "fwd_fraction_of_mm": gf["rnnfast_fwd"] / gf["mm_same_flops"],
        "target_fraction": GFLOPS_TARGET[cfg.cell],
        "repeats": len(s.times["mm_same_flops"]),
    }
    if "fwdbwd" in modes:
        out["fwdbwd_fraction_of_mm"] = gf["rnnfast_fwdbwd"] / gf["mm_same_flops"]
    # torch's GFLOP/s on the same config (the label names the cell), from the main sweep
    for r in rows:
        if r["status"] == OK and r["label"] == cfg.label and r["dtype"] == dtype_name:
            gf[f"torch_{r['mode']}_sweep"] = r["torch_gflops"]
    fracs = [out["fwd_fraction_of_mm"]] + ([out["fwdbwd_fraction_of_mm"]] if "fwdbwd" in modes else [])
    out["meets_target"] = all(f >= out["target_fraction"] for f in fracs)
    del wl
    return out


def _reduced_vs_float32_section(
    cfg: Config, dtype_name: str, device: torch.device, modes: list[str], st: Settings,
) -> dict:
    """rnnfast in a reduced dtype against rnnfast in float32 on cfg, interleaved in the
    same repeats; speedup = median over repeats of (float32 time / reduced time)."""
    full = Workload(cfg, DTYPES["float32"], device, seed=st.seed)
    low = Workload(cfg, DTYPES[dtype_name], device, seed=st.seed)
    out = {"config": cfg.as_dict(), "cell": cfg.cell, "label": cfg.label, "dtype": dtype_name,
           "speedup": {}, "float32_ms": {}, "reduced_ms": {}}
    for mode in modes:
        s = interleaved({"float32": full.fn("rnnfast", mode), "reduced": low.fn("rnnfast", mode)},
                        device, warmup=st.warmup, min_repeats=st.min_repeats,
                        max_repeats=st.max_repeats, budget_s=st.budget_s,
                        min_block_s=st.min_block_s)
        out["speedup"][mode] = s.paired_ratio("float32", "reduced")
        out["float32_ms"][mode] = s.median_s("float32") * 1e3
        out["reduced_ms"][mode] = s.median_s("reduced") * 1e3
        out.setdefault("repeats", {})[mode] = len(s.times["float32"])
    if device.type == "cpu" and dtype_name == "bfloat16" and "fwdbwd" in modes:
        out["target"] = BF16_CPU_TARGET
        out["meets_target"] = out["speedup"]["fwdbwd"] >= BF16_CPU_TARGET
    del full, low
    return out


def run_benchmarks(
    configs: list[Config],
    *,
    device: str | torch.device = "cpu",
    dtypes: list[str] = ("float32",),
    modes: list[str] = ("fwd", "fwdbwd"),
    settings: Settings | None = None,
    set_name: str = "custom",
    progress: str = "auto",
    log: Callable[[str], None] | None = None,
    ort: bool = False,
) -> dict:
    """Benchmark every (config, dtype, mode); returns the JSON-ready result document.
    ort: also time onnxruntime on the float32 CPU forward rows (rnnfast/bench/ort.py);
    raises ImportError when onnxruntime or onnx is missing."""
    st = settings or Settings()
    device = torch.device(device)
    ort_versions = ort_baseline.require() if ort else None
    modes = [m for m in ("fwd", "fwdbwd") if m in modes]
    rows: list[dict] = []
    t0 = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    cells = list(dict.fromkeys(c.cell for c in configs))
    unsupported: dict[str, str] = {}  # "cell/dtype" -> why it was not benchmarked
    probe_errors: dict[str, str] = {}  # "cell/dtype" -> rnnfast's error on the probe
    with make_progress(len(configs) * len(dtypes) * len(modes), progress) as bar:
        say = log or bar.log
        for dtype_name in dtypes:
            dtype = DTYPES[dtype_name]
            for cell in cells:
                key = f"{cell}/{dtype_name}"
                why, err = _probe(cell, dtype_name, device)
                if why:
                    unsupported[key] = why
                    say(f"UNSUPPORTED {key}: {why}")
                elif err:
                    probe_errors[key] = err
                    say(f"ERROR {key}: {err}")
            for cfg in configs:
                new_rows = [_base_row(cfg, dtype_name, device, m) for m in modes]
                if ort:
                    for r in new_rows:
                        r.update(_ort_fields(cfg, dtype_name, device, r["mode"]))
                rows.extend(new_rows)
                key = f"{cfg.cell}/{dtype_name}"
                if key in unsupported or key in probe_errors:
                    status = UNSUPPORTED if key in unsupported else ERROR
                    for r in new_rows:
                        r.update(status=status, message=unsupported.get(key) or probe_errors[key])
                        bar.advance()
                    continue
                bar.describe(f"{cfg.label} {dtype_name}: checking")
                try:
                    wl = Workload(cfg, dtype, device, seed=st.seed)
                    check = check_workload(wl, with_grads="fwdbwd" in modes)
                except Exception as e:  # noqa: BLE001 - one bad config must not hide the rest
                    for r in new_rows:
                        r.update(status=ERROR, message=f"{type(e).__name__}: {e}".splitlines()[0])
                        bar.advance()
                    say(f"ERROR {cfg.label} {dtype_name}: {new_rows[0]['message']}")
                    _release(device)
                    continue
                for r in new_rows:
                    r["check"] = check.as_dict()
                    if check.error:
                        r.update(status=ERROR, message=check.summary())
                    elif not check.ok and (r["mode"] == "fwdbwd" or not _fwd_part_ok(check)):
                        r.update(status=FAILED, message=check.summary())
                if check.error or not check.ok:
                    say(f"{new_rows[-1]['status']} {cfg.label} {dtype_name}: {check.summary()}")
                for r in new_rows:
                    mode = r["mode"]
                    if r["status"] != OK:
                        bar.advance()
                        continue
                    bar.describe(f"{cfg.label} {dtype_name} {MODE_NAMES[mode]}")
                    try:
                        fns = {"torch": wl.fn("torch", mode), "rnnfast": wl.fn("rnnfast", mode)}
                        if device.type == "cuda":
                            fns.update(_cuda_path_fns(wl, mode, device, r))
                        if r.get("ort_status") == ORT_NOT_RUN:
                            bar.describe(f"{cfg.label} {dtype_name}: exporting to onnxruntime")
                            ort_fn = _ort_candidate(wl, r)
                            if ort_fn is None:
                                say(f"onnxruntime {r['ort_status']} {cfg.label}: {r['ort_message']}")
                            else:
                                fns[ort_baseline.ORT] = ort_fn
                            bar.describe(f"{cfg.label} {dtype_name} {MODE_NAMES[mode]}")
                        s = interleaved(
                            fns, device, warmup=st.warmup, min_repeats=st.min_repeats,
                            max_repeats=st.max_repeats, budget_s=st.budget_s,
                            min_block_s=st.min_block_s,
                        )
                        _fill_timing(r, cfg, s)
                        if "ort_ms" in r:
                            r.update(ort_status=OK, ort_message="")
                        for name in ("per_step", "persistent"):
                            if name in s.times:
                                r[f"{name}_ms"] = s.median_s(name) * 1e3
                                r[f"{name}_us_per_step"] = s.median_s(name) / cfg.T * 1e6
                        if mode == "fwdbwd":
                            r["torch_saved_bytes"] = wl.saved_bytes("torch")
                            r["rnnfast_saved_bytes"] = wl.saved_bytes("rnnfast")
                            if device.type == "cuda":
                                r["torch_cuda_peak_bytes"] = wl.cuda_peak_bytes("torch")
                                r["rnnfast_cuda_peak_bytes"] = wl.cuda_peak_bytes("rnnfast")
                    except Exception as e:  # noqa: BLE001
                        r.update(status=ERROR, message=f"{type(e).__name__}: {e}".splitlines()[0])
                        say(f"ERROR {cfg.label} {dtype_name} {MODE_NAMES[mode]}: {r['message']}")
                    bar.advance()
                del wl
                _release(device)

        gflops = []
        if st.gflops:
            for dtype_name, cell in itertools.product(dtypes, cells):
                ok_cfgs = {Config(**r["config"]) for r in rows
                           if r["dtype"] == dtype_name and r["cell"] == cell and r["status"] == OK}
                if not ok_cfgs:
                    continue
                big = max(ok_cfgs, key=lambda c: (c.flops(), c.tokens))
                bar.describe(f"GFLOP/s vs torch.mm: {big.label} {dtype_name}")
                try:
                    gflops.append(_gflops_section(big, dtype_name, device, modes, st, rows))
                except Exception as e:  # noqa: BLE001
                    say(f"GFLOP/s measurement failed: {type(e).__name__}: {e}")
                _release(device)

        # Reduced precision against float32 (both rnnfast), on each cell's largest config
        # that ran in both: what bf16/fp16 buy over float32 on this machine.
        reduced = []
        if st.gflops and "float32" in dtypes:
            for dtype_name, cell in itertools.product(dtypes, cells):
                if dtype_name not in ("bfloat16", "float16"):
                    continue
                both = [Config(**r["config"]) for r in rows if r["dtype"] == dtype_name
                        and r["cell"] == cell and r["status"] == OK and any(
                            q["dtype"] == "float32" and q["status"] == OK
                            and q["label"] == r["label"] for q in rows)]
                if not both:
                    continue
                big = max(both, key=lambda c: (c.flops(), c.tokens))
                bar.describe(f"{dtype_name} vs float32: {big.label}")
                try:
                    reduced.append(_reduced_vs_float32_section(big, dtype_name, device, modes, st))
                except Exception as e:  # noqa: BLE001
                    say(f"{dtype_name} vs float32 measurement failed: {type(e).__name__}: {e}")
                _release(device)

    summary = {}
    for cell, dtype_name, mode in itertools.product(cells, dtypes, modes):
        sp = [r["speedup"] for r in rows if r["cell"] == cell and r["dtype"] == dtype_name
              and r["mode"] == mode and r["status"] == OK]
        summary[f"{cell}/{dtype_name}/{mode}"] = {
            "cell": cell, "dtype": dtype_name, "mode": mode, "geomean_speedup": geomean(sp),
            "n": len(sp),
        }
    counts = {s: sum(r["status"] == s for r in rows) for s in (OK, FAILED, ERROR, UNSUPPORTED)}
    noise = [r["noise"] for r in rows if r["status"] == OK and math.isfinite(r.get("noise", math.nan))]
    machine = machine_info(device)
    machine["loadavg_start"] = load_start
    extra = {}
    if ort:
        extra["ort"] = {
            **ort_versions,
            "exporter": "torch.onnx.export(dynamo=False)",
            "session_options": ort_baseline.session_options(torch.get_num_threads()),
            "tolerance": TOLERANCES[torch.float32],
            "target_min_speedup": ort_baseline.TARGET_MIN,
            "target_geomean_speedup": ort_baseline.TARGET_GEOMEAN,
            "counts": {status: sum(r["ort_status"] == status for r in rows)
                       for status in (OK, FAILED, ERROR, ORT_NOT_APPLICABLE, ORT_NOT_RUN)},
        }
        extra["geomean_vs_ort"] = _ort_summary(rows, cells)
    return {
        "schema": SCHEMA,
        "set": set_name,
        "device": device.type,
        "device_name": device_name(device),
        "cells": cells,
        "dtypes": list(dtypes),
        "modes": modes,
        "settings": st.as_dict(),
        "machine": machine,
        "median_noise": statistics.median(noise) if noise else None,
        "results": rows,
        "geomean": summary,
        "gflops": gflops,
        "reduced_vs_float32": reduced,
        "unsupported": unsupported,
        "counts": counts,
        **extra,
        "elapsed_s": time.perf_counter() - t0,
    }
