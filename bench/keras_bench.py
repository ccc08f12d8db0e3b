"""Training-step time on the CPU: stock Keras 3 (torch backend) against rnnfast.keras.

    python bench/keras_bench.py            # 5 repeats per case (a few minutes)
    python bench/keras_bench.py --quick    # 3 repeats, shorter samples
    python bench/keras_bench.py --smoke    # tiny shapes, one repeat (a test runs this)
    python bench/keras_bench.py --threads 1

Model per case: Sequential([Input((T, I)), Layer(U), Dense(1)]), adam + mse, the same
initial weights for both backends; one training step = one `train_on_batch` on a fixed
(B, T, I) batch. Shapes: the tutorial (B=32, T=10, I=1, U=50) and B=64, T=200, I=32, U=128,
for SimpleRNN, LSTM and GRU. Each case first checks that both models predict the same
(else it reports the case as wrong, with no time), warms both up, then takes `repeats`
samples alternating stock/rnnfast (the order flips every repeat), each sample the mean
of enough steps to last --min-sample seconds. It reports medians and stock/rnnfast.
Writes results.json to --out (default bench/results/keras-cpu) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is first imported

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import rnnfast.keras  # noqa: E402
from rnnfast.bench.machine import machine_info  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAYERS = ("SimpleRNN", "LSTM", "GRU")
TARGETS = {"SimpleRNN": 5.0, "LSTM": 3.0, "GRU": 3.0}  # speedup asked for (issue #16)
SHAPES = {  # name: (B, T, I, U)
    "tutorial": (32, 10, 1, 50),
    "large": (64, 200, 32, 128),
}
SMOKE_SHAPES = {"tiny": (4, 3, 2, 4)}


def build(layer_module, layer: str, T: int, I: int, U: int) -> keras.Model:
    model = keras.Sequential([keras.Input((T, I)), getattr(layer_module, layer)(U),
                              keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    return model


def step_ms(model, x, y, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return 1e3 * (time.perf_counter() - start) / steps


def run_case(layer: str, shape_name: str, shape, args) -> dict:
    B, T, I, U = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    y = rng.standard_normal((B, 1)).astype(np.float32)
    keras.utils.set_random_seed(0)
    models = {"keras": build(keras.layers, layer, T, I, U)}
    models["rnnfast"] = build(rnnfast.keras, layer, T, I, U)
    models["rnnfast"].set_weights(models["keras"].get_weights())
    case = {"layer": layer, "shape": shape_name, "B": B, "T": T, "I": I, "U": U,
            "target": TARGETS[layer]}

    # Correctness guard: no time for a model that computes something else.
    expected = np.asarray(models["keras"].predict_on_batch(x))
    got = np.asarray(models["rnnfast"].predict_on_batch(x))
    case["max_abs_diff"] = float(np.max(np.abs(expected - got)))
    if not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
        case["error"] = f"rnnfast predicts differently (max abs diff {case['max_abs_diff']:.3g})"
        return case

    for model in models.values():  # the first steps build the train function and optimizer
        step_ms(model, x, y, args.warmup)
    first = step_ms(models["keras"], x, y, 1)
    steps = max(1, min(args.max_steps, math.ceil(args.min_sample * 1e3 / max(first, 1e-3))))
    samples = {"keras": [], "rnnfast": []}
    for r in range(args.repeats):
        order = ("keras", "rnnfast") if r % 2 == 0 else ("rnnfast", "keras")
        for backend in order:
            samples[backend].append(step_ms(models[backend], x, y, steps))
    case["steps_per_sample"] = steps
    case["samples_ms"] = samples
    case["keras_ms"] = statistics.median(samples["keras"])
    case["rnnfast_ms"] = statistics.median(samples["rnnfast"])
    case["speedup"] = case["keras_ms"] / case["rnnfast_ms"]
    case["target_met"] = case["speedup"] >= case["target"]
    return case


def table(cases: list[dict]) -> str:
    lines = [f"| shape (B, T, I, U) | layer | keras ms/step | rnnfast ms/step | speedup | target |",
             "|---|---|---:|---:|---:|---|"]
    for c in cases:
        shape = f"{c['shape']} ({c['B']}, {c['T']}, {c['I']}, {c['U']})"
        if "error" in c:
            lines.append(f"| {shape} | {c['layer']} | - | - | WRONG | {c['error']} |")
            continue
        met = "met" if c["target_met"] else "not met"
        lines.append(f"| {shape} | {c['layer']} | {c['keras_ms']:.2f} | {c['rnnfast_ms']:.2f} "
                     f"| {c['speedup']:.2f}x | >= {c['target']:.0f}x {met} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats, 0.3 s samples")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 1 repeat, 1 step")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's default)")
    parser.add_argument("--layers", default=",".join(LAYERS), help="comma list")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "keras-cpu"))
    args = parser.parse_args(argv)
    args.repeats, args.min_sample, args.warmup, args.max_steps = 5, 1.0, 2, 100
    shapes = SHAPES
    if args.quick:
        args.repeats, args.min_sample = 3, 0.3
    if args.smoke:
        args.repeats, args.min_sample, args.warmup, args.max_steps = 1, 0.0, 1, 1
        shapes = SMOKE_SHAPES
    if args.threads:
        torch.set_num_threads(args.threads)
    layers = [name.strip() for name in args.layers.split(",") if name.strip()]

    info = machine_info("cpu")
    print(f"{info['cpu_model']}, {info['torch_num_threads']} threads, torch {torch.__version__}, "
          f"keras {keras.__version__}, load average {info.get('loadavg')}", flush=True)
    cases = []
    for shape_name, shape in shapes.items():
        for layer in layers:
            case = run_case(layer, shape_name, shape, args)
            cases.append(case)
            done = case.get("error") or (f"keras {case['keras_ms']:.2f} ms, rnnfast "
                                         f"{case['rnnfast_ms']:.2f} ms: {case['speedup']:.2f}x")
            print(f"  {shape_name} {layer}: {done}", flush=True)
    print()
    print(table(cases))

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(os, "getloadavg"):
        info["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    result = {
        "benchmark": "keras train_on_batch step time, stock keras.layers vs rnnfast.keras",
        "machine": info,
        "keras": keras.__version__,
        "settings": {"repeats": args.repeats, "min_sample_s": args.min_sample,
                     "warmup_steps": args.warmup, "mode": "smoke" if args.smoke else
                     "quick" if args.quick else "full", "command": " ".join(sys.argv)},
        "cases": cases,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out / 'results.json'}")
    return 1 if any("error" in c for c in cases) else 0


if __name__ == "__main__":
    raise SystemExit(main())
