"""Per-call benchmark of the cells and of streaming (T = 1) calls: rnnfast against torch.nn.

    python -m rnnfast.bench.cells                      # the issue's grid, CPU, 2 threads
    python -m rnnfast.bench.cells --cell lstm --N 1,8 --H 64 --threads 1
    python -m rnnfast.bench.cells --out bench/results/cells-cpu

A cell runs once per time step from Python, so its per-call overhead matters as much as
its arithmetic. Rows:

- cells: nn.X against rnnfast.X for X = RNNCell (tanh), LSTMCell, GRUCell, input and
  state (N, H) with H_in = H, in three modes: "fwd" (torch.no_grad), "fwd+bwd" (input,
  state and weights require grad) and "weights" (fwd+bwd where only the weights do,
  as when the input and the state come from outside the graph);
- streaming: nn.X against rnnfast.X for X = RNN, LSTM, GRU with T = 1, the state
  carried from call to call, forward under torch.no_grad.

Every row is first checked against torch.nn.X in float64 (outputs, and for the
backward modes every gradient). Times are medians over interleaved repeats (A B A B),
speedup = torch / rnnfast; the geometric mean and the worst row are printed per cell
and mode.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from torch import nn

import rnnfast

from .checks import _rel_err
from .machine import machine_info
from .runner import geomean
from .timing import interleaved

CELLS = {"rnn": "RNNCell", "lstm": "LSTMCell", "gru": "GRUCell"}
STREAMING = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
MODES = ("fwd", "fwd+bwd", "weights")
TOLERANCE = 1e-4  # float32 against float64: checks._rel_err, the main bench's measure


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _cells(text: str) -> list[str]:
    names = [c.strip().lower() for c in text.split(",") if c.strip()]
    for c in names:
        if c not in CELLS:
            raise argparse.ArgumentTypeError(f"unknown cell {c!r}; expected some of {list(CELLS)}")
    return names


def _pair(cls_name: str, *args, **kwargs) -> tuple[nn.Module, nn.Module]:
    """(torch.nn.X, rnnfast.X) with the same weights."""
    ref = getattr(nn, cls_name)(*args, **kwargs)
    ours = getattr(rnnfast, cls_name)(*args, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]


# ---------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------


def _cell_inputs(cell: str, N: int, H: int, dtype=torch.float32):
    x = torch.randn(N, H, dtype=dtype)
    states = [torch.randn(N, H, dtype=dtype) for _ in range(2 if cell == "lstm" else 1)]
    return x, states


def _cell_call(module: nn.Module, x: torch.Tensor, states: list[torch.Tensor]):
    return module(x, tuple(states) if len(states) == 2 else states[0])


def _cell_step(module, x, states, grads, mode):
    """One timed call: the forward, and for the backward modes one backward."""
    if mode == "fwd":
        with torch.no_grad():
            return _cell_call(module, x, states)
    for p in module.parameters():
        p.grad = None
    outs = _flat(_cell_call(module, x, states))
    torch.autograd.backward(outs, grads)
    return outs


def _check_cell(cell: str, ref: nn.Module, ours: nn.Module, N: int, H: int, mode: str) -> float:
    """Largest relative error of rnnfast (float32) against torch.nn in float64."""
    x, states = _cell_inputs(cell, N, H)
    ref64 = ref.to(torch.float64)
    try:
        wants_input_grad = mode == "fwd+bwd"
        xs = [x.clone().requires_grad_(wants_input_grad),
              *[s.clone().requires_grad_(wants_input_grad) for s in states]]
        x64 = [t.detach().double().requires_grad_(wants_input_grad) for t in xs]
        n_out = len(states)
        grads = [torch.randn(N, H) for _ in range(n_out)]
        outs = _cell_step(ours, xs[0], xs[1:], grads, mode)
        outs64 = _cell_step(ref64, x64[0], x64[1:], [g.double() for g in grads], mode)
        err = max(_rel_err(a, b) for a, b in zip(_flat(outs), _flat(outs64)))
        if mode != "fwd":
            pairs = list(zip(ours.parameters(), ref64.parameters()))
            err = max([err] + [_rel_err(a.grad, b.grad) for a, b in pairs])
            if wants_input_grad:
                err = max([err] + [_rel_err(a.grad, b.grad) for a, b in zip(xs, x64)])
        return err
    finally:
        ref.to(torch.float32)


def bench_cell(cell: str, N: int, H: int, mode: str, **timing) -> dict:
    torch.manual_seed(N * 1000 + H)
    ref, ours = _pair(CELLS[cell], H, H)
    err = _check_cell(cell, ref, ours, N, H, mode)
    row = {"kind": "cell", "cell": CELLS[cell], "N": N, "H": H, "mode": mode, "max_rel_err": err}
    if not err <= TOLERANCE:
        row["status"] = f"FAILED check (error {err:.2e} > {TOLERANCE:.0e})"
        return row
    x, states = _cell_inputs(cell, N, H)
    if mode == "fwd+bwd":
        x.requires_grad_()
        for s in states:
            s.requires_grad_()
    grads = [torch.randn(N, H) for _ in states]
    samples = interleaved({
        "torch": lambda: _cell_step(ref, x, states, grads, mode),
        "rnnfast": lambda: _cell_step(ours, x, states, grads, mode),
    }, "cpu", **timing)
    row.update(status="ok", torch_us=samples.median_s("torch") * 1e6,
               rnnfast_us=samples.median_s("rnnfast") * 1e6,
               speedup=samples.paired_ratio("torch", "rnnfast"),
               repeats=len(samples.times["torch"]))
    return row


# ---------------------------------------------------------------------------
# Streaming: T = 1 calls carrying the state
# ---------------------------------------------------------------------------


def _stream(module: nn.Module, x: torch.Tensor, state):
    with torch.no_grad():
        _, state = module(x, state)
    return state


def bench_streaming(cell: str, B: int, H: int, steps: int = 16, **timing) -> dict:
    torch.manual_seed(B * 1000 + H)
    ref, ours = _pair(STREAMING[cell], H, H)
    lstm = cell == "lstm"

    def zeros(dtype):
        h = torch.zeros(1, B, H, dtype=dtype)
        return (h, h.clone()) if lstm else h

    # Check: a few steps of both, rnnfast float32 against torch.nn float64.
    xs = [torch.randn(1, B, H) for _ in range(steps)]
    ref64 = ref.to(torch.float64)
    s32, s64 = zeros(torch.float32), zeros(torch.float64)
    for x in xs:
        s32, s64 = _stream(ours, x, s32), _stream(ref64, x.double(), s64)
    ref.to(torch.float32)
    err = max(_rel_err(a, b) for a, b in zip(_flat(s32), _flat(s64)))
    row = {"kind": "streaming", "cell": STREAMING[cell], "N": B, "H": H, "mode": "fwd",
           "max_rel_err": err}
    if not err <= TOLERANCE:
        row["status"] = f"FAILED check (error {err:.2e} > {TOLERANCE:.0e})"
        return row
    state = {"torch": zeros(torch.float32), "rnnfast": zeros(torch.float32)}
    x = xs[0]

    def step(name, module):
        state[name] = _stream(module, x, state[name])

    samples = interleaved({"torch": lambda: step("torch", ref),
                           "rnnfast": lambda: step("rnnfast", ours)}, "cpu", **timing)
    row.update(status="ok", torch_us=samples.median_s("torch") * 1e6,
               rnnfast_us=samples.median_s("rnnfast") * 1e6,
               speedup=samples.paired_ratio("torch", "rnnfast"),
               repeats=len(samples.times["torch"]))
    return row


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def summary_lines(rows: list[dict]) -> list[str]:
    lines = []
    groups: dict[tuple[str, str, str], list[float]] = {}
    for r in rows:
        if r.get("status") == "ok":
            groups.setdefault((r["kind"], r["cell"], r["mode"]), []).append(r["speedup"])
    for (kind, cell, mode), xs in groups.items():
        lines.append(f"{kind} {cell} {mode}: geomean {geomean(xs):.2f}x, worst {min(xs):.2f}x, "
                     f"{sum(x >= 1.0 for x in xs)}/{len(xs)} rows >= 1.0x")
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        lines.append(f"{len(failed)} row(s) failed the float64 check")
    return lines


def markdown(rows: list[dict], info: dict) -> str:
    head = ["| kind | module | N | H | mode | torch us | rnnfast us | speedup | repeats | check |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    body = []
    for r in rows:
        if r.get("status") == "ok":
            body.append(f"| {r['kind']} | {r['cell']} | {r['N']} | {r['H']} | {r['mode']} | "
                        f"{r['torch_us']:.1f} | {r['rnnfast_us']:.1f} | {r['speedup']:.2f}x | "
                        f"{r['repeats']} | ok ({r['max_rel_err']:.1e}) |")
        else:
            body.append(f"| {r['kind']} | {r['cell']} | {r['N']} | {r['H']} | {r['mode']} | "
                        f"- | - | - | - | {r['status']} |")
    machine = (f"{info['cpu_model']}, {info['torch_num_threads']} threads, torch {info['torch']}, "
               f"commit {info.get('git_commit')}")
    return "\n".join([f"Machine: {machine}", "", *head, *body, "", *summary_lines(rows), ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rnnfast.bench.cells", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cell", type=_cells, default=list(CELLS), help="rnn,lstm,gru (default all)")
    p.add_argument("--N", type=_ints, default=[1, 8, 64, 256], help="batch sizes of the cells")
    p.add_argument("--H", type=_ints, default=[64, 256, 512], help="hidden sizes (H_in = H)")
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"cell modes, some of {','.join(MODES)}")
    p.add_argument("--streaming-B", type=_ints, default=[1, 8],
                   help="batch sizes of the streaming rows (empty: none)")
    p.add_argument("--streaming-H", type=_ints, default=[64, 256])
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--repeats", type=int, default=7, help="minimum interleaved repeats per row")
    p.add_argument("--budget", type=float, default=1.0, help="seconds of timing per row")
    p.add_argument("--out", help="folder for results.md and results.json")
    args = p.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r}; expected some of {list(MODES)}")

    torch.set_num_threads(args.threads)
    timing = dict(min_repeats=args.repeats, max_repeats=max(args.repeats, 50),
                  budget_s=args.budget)
    rows = []
    for cell in args.cell:
        for N in args.N:
            for H in args.H:
                for mode in modes:
                    rows.append(bench_cell(cell, N, H, mode, **timing))
                    _print_row(rows[-1])
        for B in args.streaming_B:
            for H in args.streaming_H:
                rows.append(bench_streaming(cell, B, H, **timing))
                _print_row(rows[-1])
    info = machine_info("cpu")
    print()
    print("\n".join(summary_lines(rows)))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.md"), "w") as f:
            f.write(markdown(rows, info))
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump({"machine": info, "rows": rows}, f, indent=1)
        print(f"wrote {args.out}/results.md and results.json")
    return 0 if all(r.get("status") == "ok" for r in rows) else 1


def _print_row(r: dict) -> None:
    if r.get("status") == "ok":
        print(f"{r['kind']:9s} {r['cell']:8s} N={r['N']:<4d} H={r['H']:<4d} {r['mode']:8s} "
              f"torch {r['torch_us']:9.1f} us  rnnfast {r['rnnfast_us']:9.1f} us  "
              f"{r['speedup']:.2f}x", flush=True)
    else:
        print(f"{r['kind']:9s} {r['cell']:8s} N={r['N']:<4d} H={r['H']:<4d} {r['mode']:8s} "
              f"{r['status']}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
