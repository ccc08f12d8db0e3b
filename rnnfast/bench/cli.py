"""Command line of the benchmark: python -m rnnfast.bench [options]."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

import torch

from . import ort as ort_baseline
from .configs import CELL_CLASSES, CELLS, SET_DOCS, SETS, get_set, parse_cells, parse_config, with_cells
from .report import format_summary, format_tables, write_all
from .runner import ERROR, FAILED, OK, Settings, run_benchmarks
from .workloads import DTYPES, MODE_NAMES, MODES

__all__ = ["main", "build_parser"]

DEFAULT_OUT = "bench/results/latest"

# Per-set timing defaults: (min repeats, seconds per config and mode).
SET_TIMING = {
    "quick": (5, 1.5),
    "full": (5, 3.0),
    "cpu-targets": (7, 5.0),
    "gpu": (10, 1.5),
    "gpu-persistent": (10, 1.5),
    "tiny": (3, 0.2),
    "custom": (5, 2.0),
}


def _csv(choices):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {list(choices)}")
        return items

    return parse


def _cells(text: str) -> list[str]:
    try:
        return parse_cells(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _config(text: str):
    try:
        return parse_config(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rnnfast.bench",
        description="Time rnnfast.RNN, LSTM and GRU against torch.nn.RNN, LSTM and GRU (forward, "
        "and forward+backward) on a set of shapes; every shape is checked for correctness "
        "before it is timed. "
        "Writes results.json, results.md and speedup.png into --out.",
        epilog="sets: " + "; ".join(f"{k}: {v}" for k, v in SET_DOCS.items()),
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_const", const="quick", dest="set",
                       help="the quick set (default): 8 shapes per cell; the RNN cell takes about "
                       "2 minutes on 2 quiet CPU cores, LSTM and GRU longer")
    which.add_argument("--full", action="store_const", const="full", dest="set",
                       help="the full sweep (much longer)")
    which.add_argument("--set", choices=sorted(SETS), dest="set", help="a named configuration set")
    which.add_argument("--config", type=_config, action="append", dest="configs",
                       metavar="T,B,I,H[,L[,bi[,P]]]",
                       help="benchmark this shape instead of a set (repeatable), e.g. 100,16,64,128,2,yes; "
                       "P: LSTM's proj_size (needs --cell lstm)")
    p.add_argument("--cell", type=_cells, default=list(CELLS), metavar="CELL",
                   help="rnn, lstm, gru, a comma list of them, or all (default all): each shape is "
                   "run once per cell, rnnfast.X against torch.nn.X")
    p.add_argument("--packed", action="store_true",
                   help="PackedSequence input: every shape's B sequences get random lengths in "
                   "[T/2, T] (one of T), unsorted")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: cuda when available and rnnfast was built with CUDA, else cpu")
    p.add_argument("--dtype", type=_csv(DTYPES), action="append",
                   help="comma-separated, repeatable: float32 (default), bfloat16, float16, float64")
    p.add_argument("--modes", type=_csv(MODES), default=list(MODES),
                   help="fwd (inference), fwdbwd (forward+backward), or both (default)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    p.add_argument("--repeats", type=int, help="minimum interleaved repeats per row")
    p.add_argument("--max-repeats", type=int, default=50, help="maximum repeats per row (default 50)")
    p.add_argument("--budget", type=float, help="seconds of timing per row once --repeats are done")
    p.add_argument("--warmup", type=int, help="warm-up calls per implementation (default 1 CPU, 3 CUDA)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads(N) before timing")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and inputs")
    p.add_argument("--no-gflops", action="store_true",
                   help="skip the GFLOP/s comparison with torch.mm on the largest config")
    p.add_argument("--no-plot", action="store_true", help="do not write speedup.png")
    p.add_argument("--ort", action="store_true",
                   help="also time onnxruntime on the float32 CPU forward rows: the rnnfast module "
                   "exported with torch.onnx.export(dynamo=False), torch's thread count as "
                   "intra-op threads, checked against rnnfast first; adds 'ORT ms' and 'vs ORT' "
                   "(needs onnxruntime and onnx)")
    p.add_argument("--progress", default="auto", choices=["auto", "rich", "tqdm", "plain"],
                   help="progress display (auto: rich, else tqdm, else plain lines)")
    p.add_argument("--list", action="store_true", help="list the configuration sets and exit")
    return p


def _resolve_device(name: str) -> str:
    if name != "auto":
        return name
    if torch.cuda.is_available():
        try:
            import rnnfast

            if rnnfast.build_info().get("with_cuda"):
                return "cuda"
            print("rnnfast.bench: a GPU is visible but rnnfast was built without CUDA; using cpu")
        except ImportError:
            pass
    return "cpu"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status: 0 ok, 1 a row FAILED its correctness
    check or raised, 2 usage error or nothing could be measured."""
    args = build_parser().parse_args(argv)
    if args.list:
        for name in SETS:
            print(f"{name:12s} {len(get_set(name)):3d} configs  {SET_DOCS[name]}")
            for c in get_set(name):
                print(f"{'':12s} {c.shape_label}")
        return 0

    device = _resolve_device(args.device)
    if device == "cuda" and not torch.cuda.is_available():
        print("rnnfast.bench: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)

    set_name = "custom" if args.configs else (args.set or "quick")
    try:
        configs = with_cells(args.configs or get_set(set_name), args.cell)
    except ValueError as e:
        build_parser().error(str(e))
    if args.packed:
        configs = [dataclasses.replace(c, packed=True) for c in configs]
    dtypes = list(dict.fromkeys(d for group in (args.dtype or [["float32"]]) for d in group))
    min_rep, budget = SET_TIMING.get(set_name, SET_TIMING["custom"])
    settings = Settings(
        warmup=args.warmup if args.warmup is not None else (3 if device == "cuda" else 1),
        min_repeats=max(1, args.repeats if args.repeats is not None else min_rep),
        max_repeats=max(1, args.max_repeats),
        budget_s=max(0.0, args.budget if args.budget is not None else budget),
        min_block_s=1e-3 if device == "cuda" else 2e-3,
        gflops=not args.no_gflops,
        seed=args.seed,
    )
    settings.max_repeats = max(settings.max_repeats, settings.min_repeats)

    import rnnfast  # noqa: F401 - fail here, with rnnfast's own build message, if it is not built

    from .machine import device_name

    ort_note = ""
    if args.ort:
        try:
            versions = ort_baseline.require()
        except ImportError as e:
            print(f"rnnfast.bench: {e}", file=sys.stderr)
            return 2
        ort_note = (f", onnxruntime {versions['onnxruntime']} baseline "
                    f"({torch.get_num_threads()} intra-op threads)")
        if device != "cpu" or "float32" not in dtypes or "fwd" not in args.modes:
            print("rnnfast.bench: note: --ort times float32 forward rows on the CPU only; "
                  "this run has none, so every row shows '-' for onnxruntime")

    print(f"rnnfast.bench: set {set_name} ({len(configs)} configs: "
          f"{', '.join(CELL_CLASSES[c] for c in args.cell)}) on {device} "
          f"[{device_name(device)}], dtypes {','.join(dtypes)}, modes "
          f"{', '.join(MODE_NAMES[m] for m in args.modes)}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads{ort_note}", flush=True)
    doc = run_benchmarks(configs, device=device, dtypes=dtypes, modes=args.modes,
                         settings=settings, set_name=set_name, progress=args.progress,
                         ort=args.ort)
    doc["command"] = "python -m rnnfast.bench " + shlex.join(sys.argv[1:] if argv is None else argv)

    print()
    print(format_tables(doc))
    print()
    print(format_summary(doc))
    files = write_all(doc, args.out, plot=not args.no_plot)
    print()
    print("wrote " + ", ".join(files[k] for k in ("json", "markdown", "png") if k in files))
    print(f"({doc['elapsed_s']:.0f} s)")

    counts = doc["counts"]
    if counts[FAILED] or counts[ERROR]:
        print(f"rnnfast.bench: {counts[FAILED]} FAILED and {counts[ERROR]} ERROR row(s): "
              "rnnfast gave a wrong result or raised; see above", file=sys.stderr)
        return 1
    if "ort" in doc and (doc["ort"]["counts"][FAILED] or doc["ort"]["counts"][ERROR]):
        # the exported model is rnnfast's ONNX export: a wrong or failing one is a bug too
        print(f"rnnfast.bench: the onnxruntime baseline FAILED on {doc['ort']['counts'][FAILED]} "
              f"and raised on {doc['ort']['counts'][ERROR]} row(s); see above", file=sys.stderr)
        return 1
    if not counts[OK]:
        print("rnnfast.bench: nothing was measured (every row UNSUPPORTED)", file=sys.stderr)
        return 2
    return 0
