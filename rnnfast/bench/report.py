"""Output of a benchmark run: console tables, results.json, results.md, speedup.png."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable

from .configs import CELL_CLASSES
from .workloads import MODE_NAMES

__all__ = ["format_tables", "format_summary", "write_json", "write_markdown", "write_plot",
           "write_all"]

JSON_NAME, MD_NAME, PNG_NAME = "results.json", "results.md", "speedup.png"


def _ms(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}" if x < 1000 else f"{x:.0f}"


def _rate(x) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:.0f}"


def _bytes(x) -> str:
    if x is None:
        return "-"
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if x >= div:
            return f"{x / div:.2f} {unit}"
    return f"{x} B"


def _status(r: dict) -> str:
    if r["status"] == "ok":
        return "ok"
    msg = r.get("message", "")
    return f"{r['status']}: {msg[:70]}{'...' if len(msg) > 70 else ''}"


def _ort_cells(r: dict) -> list[str]:
    """The "ORT ms" and "vs ORT" cells: numbers only for a timed row; FAILED / ERROR when
    onnxruntime's check or export failed; "-" where it does not apply or did not run."""
    status = r.get("ort_status")
    if status == "ok":
        return [_ms(r["ort_ms"]), f"{r['speedup_vs_ort']:.2f}x"]
    if status in ("FAILED", "ERROR"):
        return [status, "-"]
    return ["-", "-"]


def _table_rows(doc: dict, mode: str) -> tuple[list[str], list[list[str]]]:
    header = ["config", "dtype", "torch ms", "rnnfast ms", "speedup"]
    with_ort = "ort" in doc  # --ort: onnxruntime's forward time and rnnfast's speedup over it
    if with_ort:
        header += ["ORT ms", "vs ORT"]
    header += ["tokens/s", "us/step", "noise"]
    if mode == "fwdbwd":
        header += ["saved torch", "saved rnnfast"]
    cuda_paths = doc.get("device") == "cuda"
    if cuda_paths:  # rnnfast's two recurrence paths on CUDA, timed in the same repeats
        header += ["path", "per-step ms", "persistent ms"]
    header.append("status")
    out = []
    for r in doc["results"]:
        if r["mode"] != mode:
            continue
        ok = r["status"] == "ok"
        row = [
            r["label"], r["dtype"],
            _ms(r.get("torch_ms")), _ms(r.get("rnnfast_ms")),
            f"{r['speedup']:.2f}x" if ok else "-",
            *(_ort_cells(r) if with_ort else []),
            _rate(r.get("rnnfast_tokens_per_s")) if ok else "-",
            f"{r['rnnfast_us_per_step']:.1f}" if ok else "-",
            # noise is NaN under 4 repeats (None once read back from results.json)
            f"±{100 * r['noise']:.0f}%" if ok and math.isfinite(r.get("noise") or math.nan) else "-",
        ]
        if mode == "fwdbwd":
            row += [_bytes(r.get("torch_saved_bytes")), _bytes(r.get("rnnfast_saved_bytes"))]
        if cuda_paths:
            row += [r.get("rnnfast_path", "-"), _ms(r.get("per_step_ms")),
                    _ms(r.get("persistent_ms"))]
        row.append(_status(r))
        out.append(row)
    return header, out


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    right = {i for i, h in enumerate(header) if h not in ("config", "dtype", "status")}

    def fmt(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def esc(c):
        return c.replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if h in ("config", "dtype", "status") else "---:" for h in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


_TITLES = {"fwd": "Forward (inference, torch.no_grad)",
           "fwdbwd": "Forward + backward (training; saved = activation bytes kept for backward)"}


def format_tables(doc: dict) -> str:
    parts = []
    for mode in doc["modes"]:
        header, rows = _table_rows(doc, mode)
        parts.append(f"{_TITLES[mode]}\n{_text_table(header, rows)}")
    return "\n\n".join(parts)


def _geomean_lines(doc: dict) -> list[str]:
    lines = []
    for cell in doc["cells"]:
        cls = CELL_CLASSES[cell]
        for dtype in doc["dtypes"]:
            parts = []
            for mode in doc["modes"]:
                g = doc["geomean"].get(f"{cell}/{dtype}/{mode}", {})
                if g.get("n"):
                    parts.append(f"{MODE_NAMES[mode]} {g['geomean_speedup']:.2f}x (n={g['n']})")
                else:
                    parts.append(f"{MODE_NAMES[mode]} - (no valid rows)")
            lines.append(f"geomean speedup rnnfast.{cls} vs torch.nn.{cls} [{dtype}, {doc['device']}]: "
                         + ", ".join(parts))
    return lines


def _ort_lines(doc: dict) -> list[str]:
    if "ort" not in doc:
        return []
    info = doc["ort"]
    opts = info["session_options"]
    lines = []
    for cell in doc["cells"]:
        cls = CELL_CLASSES[cell]
        g = doc["geomean_vs_ort"].get(f"{cell}/float32/fwd")
        head = f"geomean speedup rnnfast.{cls} vs onnxruntime [float32, {doc['device']}, fwd]: "
        if not g:
            lines.append(head + "- (no row timed against onnxruntime)")
            continue
        missing = g["n_applicable"] - g["n"]
        verdict = "met" if g["meets_target"] else "not met"
        lines.append(head + f"{g['geomean_speedup']:.2f}x (n={g['n']}, min {g['min_speedup']:.2f}x"
                     + (f", {missing} applicable row(s) not timed" if missing else "")
                     + f"); target >= {info['target_min_speedup']:.1f}x at every shape and "
                     f"geomean >= {info['target_geomean_speedup']:.1f}x: {verdict}")
    lines.append(f"onnxruntime {info['onnxruntime']} (onnx {info['onnx']}): {info['exporter']} of "
                 f"the timed rnnfast module, {opts['intra_op_num_threads']} intra-op thread(s), "
                 f"{opts['inter_op_num_threads']} inter-op, sequential, CPU provider; float32 "
                 "CPU forward rows only")
    bad = [r for r in doc["results"] if r.get("ort_status") in ("FAILED", "ERROR")]
    if bad:
        lines.append(f"{len(bad)} onnxruntime baseline(s) FAILED or ERROR; no onnxruntime time "
                     "is reported for them:")
        lines += [f"  {r['label']} {r['dtype']}: {r['ort_status']}: {r['ort_message']}" for r in bad]
    return lines


def _gflops_lines(doc: dict) -> list[str]:
    lines = []
    for g in doc.get("gflops", []):
        gf = g["gflops"]
        m, k, n = g["mm_same_flops_shape"]
        b, p, n_step = g["mm_recurrent_step_shape"]
        lines.append(f"GFLOP/s on the largest config ({g['label']}, {g['dtype']}; "
                     f"forward = {g['forward_gflop']:.4g} GFLOP, fwd+bwd ~ 3x):")
        rows = [("rnnfast fwd", gf["rnnfast_fwd"], f"{100 * g['fwd_fraction_of_mm']:.0f}% of torch.mm")]
        if "rnnfast_fwdbwd" in gf:
            rows.append(("rnnfast fwd+bwd", gf["rnnfast_fwdbwd"],
                         f"{100 * g['fwdbwd_fraction_of_mm']:.0f}% of torch.mm"))
        for mode in ("fwd", "fwdbwd"):
            if f"torch_{mode}_sweep" in gf:
                rows.append((f"torch.nn.{CELL_CLASSES[g['cell']]} {MODE_NAMES[mode]}",
                             gf[f"torch_{mode}_sweep"],
                             "from the sweep"))
        rows.append((f"torch.mm ({m}x{k})@({k}x{n})", gf["mm_same_flops"],
                     "one GEMM with the forward's FLOPs: the reference"))
        rows.append((f"torch.mm ({b}x{p})@({p}x{n_step})", gf["mm_recurrent_step"],
                     "one recurrent step's GEMM"))
        w = max(len(r[0]) for r in rows)
        lines += [f"  {name:<{w}}  {val:9.2f} GFLOP/s  ({note})" for name, val, note in rows]
        verdict = "meets" if g["meets_target"] else "is below"
        lines.append(f"  target >= {100 * g['target_fraction']:.0f}% of torch.mm: rnnfast {verdict} it")
    return lines


def _reduced_lines(doc: dict) -> list[str]:
    lines = []
    for g in doc.get("reduced_vs_float32", []):
        lines.append(f"rnnfast {g['dtype']} vs rnnfast float32 on {g['label']} (interleaved, "
                     "median of per-repeat ratios):")
        for mode, sp in g["speedup"].items():
            lines.append(f"  {MODE_NAMES[mode]:<8} {g['float32_ms'][mode]:9.2f} ms -> "
                         f"{g['reduced_ms'][mode]:9.2f} ms  ({sp:.2f}x)")
        if "target" in g:
            verdict = "meets" if g["meets_target"] else "is below"
            lines.append(f"  target fwd+bwd >= {g['target']:.1f}x: rnnfast {verdict} it")
    return lines


NOISY = 0.15  # median row noise above which the summary warns


def format_summary(doc: dict) -> str:
    lines = _geomean_lines(doc) + _ort_lines(doc) + _gflops_lines(doc) + _reduced_lines(doc)
    noise = doc.get("median_noise")
    if noise is not None and noise > NOISY:
        m = doc["machine"]
        lines.append(
            f"warning: noisy timings (median row noise ±{100 * noise:.0f}%, load average "
            f"{m.get('loadavg_start')} -> {m.get('loadavg')} on {m['cpu_count']} CPUs). "
            "Interleaving keeps the ratios fair, but re-run on a quiet machine for "
            "numbers to publish.")
    bad = [r for r in doc["results"] if r["status"] in ("FAILED", "ERROR")]
    if bad:
        lines.append(f"{len(bad)} row(s) FAILED or ERROR; no speed is reported for them:")
        lines += [f"  {r['label']} {r['dtype']} {MODE_NAMES[r['mode']]}: {r['status']}: {r['message']}"
                  for r in bad]
    for cell_dtype, msg in doc.get("unsupported", {}).items():
        lines.append(f"{cell_dtype} was not benchmarked (UNSUPPORTED): {msg}")
    return "\n".join(lines)


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_json(doc: dict, out_dir: str) -> str:
    path = os.path.join(out_dir, JSON_NAME)
    with open(path, "w") as f:
        json.dump(_clean(doc), f, indent=2, allow_nan=False)
        f.write("\n")
    return path


def write_markdown(doc: dict, out_dir: str, plot_name: str | None) -> str:
    m = doc["machine"]
    gpu = m.get("gpu") or {}
    tf32 = m.get("tf32", {})
    lines = [
        f"# rnnfast benchmark: set `{doc['set']}` on {doc['device']}",
        "",
        f"Command: `{doc.get('command', 'python -m rnnfast.bench')}`",
        "",
        "| machine | |",
        "|---|---|",
        f"| device | {doc['device_name']} |",
        f"| CPU | {m['cpu_model']} ({m['cpu_count']} logical CPUs) |",
        f"| torch threads | {m['torch_num_threads']} |",
        f"| GPU | {gpu.get('name', '-')} {('(sm ' + gpu['capability'] + ')') if gpu else ''} |",
        f"| torch / CUDA / cuDNN | {m['torch']} / {m['torch_cuda']} / {m['cudnn']} |",
        f"| TF32 (cuda.matmul / cudnn) | {tf32.get('cuda_matmul_allow_tf32')} / {tf32.get('cudnn_allow_tf32')} |",
        f"| load average (start -> end) | {m.get('loadavg_start', '-')} -> {m.get('loadavg', '-')} |",
        f"| git commit | {m.get('git_commit')} |",
        f"| date (UTC) | {m['timestamp']} |",
        "",
        "Times are medians over repeats in which torch.nn.X and rnnfast.X (X = RNN, LSTM, "
        "GRU, as the config names) alternate (A B A B ...); speedup = torch ms / rnnfast ms; "
        "tokens/s = T*B / rnnfast time; noise = half the inter-quartile range of the "
        "samples relative to the median; saved = bytes of the distinct storages autograd "
        "saves for backward in one training forward (parameters and input excluded). "
        "Every row was checked against a float64 torch.nn.X first (outputs and final "
        "states, and for fwd+bwd all gradients).",
        "",
    ]
    if "ort" in doc:
        lines[-1:] = [
            "",
            "ORT ms: onnxruntime running the timed rnnfast module exported with "
            "torch.onnx.export(dynamo=False), in the same interleaved repeats; its outputs were "
            "checked against rnnfast's forward first. vs ORT = ORT ms / rnnfast ms. "
            "\"-\": onnxruntime does not apply to the row (forward+backward, not float32, "
            "CUDA, proj_size, packed input) or the row was not timed.",
            "",
        ]
    for mode in doc["modes"]:
        header, rows = _table_rows(doc, mode)
        lines += [f"## {_TITLES[mode]}", "", _md_table(header, rows), ""]
    lines += ["## Summary", "", "```", format_summary(doc), "```", ""]
    if plot_name:
        lines += [f"![speedup vs hidden size and batch size]({plot_name})", ""]
    path = os.path.join(out_dir, MD_NAME)
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def write_plot(doc: dict, out_dir: str, log: Callable[[str], None] = print) -> str | None:
    """speedup.png: speedup vs H and vs B (lines join configs differing only in that
    axis). Skipped with a note when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        log("note: matplotlib is not installed; skipping the speedup plot")
        return None
    ok = [r for r in doc["results"] if r["status"] == "ok"]
    if not ok:
        log("note: no valid rows; skipping the speedup plot")
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    # color: the cell; fwd solid (filled markers), fwd+bwd dashed (hollow); marker: the dtype
    colors = {"rnn": "tab:blue", "lstm": "tab:orange", "gru": "tab:green"}
    styles = {"fwd": "-", "fwdbwd": "--"}
    markers = ["o", "s", "^", "D"]
    # In sets where I = H throughout (the gpu set), I moves with H.
    i_tied = all(r["config"]["I"] == r["config"]["H"] for r in ok)
    for ax, axis in zip(axes, ("H", "B")):
        groups: dict[tuple, list[dict]] = {}
        for r in ok:
            fixed = tuple((k, v) for k, v in sorted(r["config"].items())
                          if k != axis and not (axis == "H" and k == "I" and i_tied))
            groups.setdefault((r["cell"], r["mode"], r["dtype"], fixed), []).append(r)
        labelled = set()
        for (cell, mode, dtype, _), rs in groups.items():
            rs.sort(key=lambda r: r["config"][axis])
            xs = [r["config"][axis] for r in rs]
            ys = [r["speedup"] for r in rs]
            label = f"{CELL_CLASSES[cell]} {MODE_NAMES[mode]} {dtype}"
            mk = markers[doc["dtypes"].index(dtype) % len(markers)]
            ax.plot(xs, ys, marker=mk, linestyle=styles[mode] if len(rs) > 1 else "none",
                    color=colors[cell], markerfacecolor=colors[cell] if mode == "fwd" else "none",
                    alpha=0.8, label=None if label in labelled else label)
            labelled.add(label)
        ax.axhline(1.0, color="gray", linewidth=1, linestyle="--")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        xs_all = sorted({r["config"][axis] for r in ok})
        ax.set_xticks(xs_all, [str(x) for x in xs_all])
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.set_xlabel("hidden size H" if axis == "H" else "batch size B")
        ax.set_ylabel("speedup vs torch.nn (log scale)")
        ax.set_title(f"speedup vs {'hidden size' if axis == 'H' else 'batch size'}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"rnnfast on {doc['device_name']} (set {doc['set']}; lines join configs "
                 "that differ only along the x axis)", fontsize=10)
    fig.tight_layout()
    path = os.path.join(out_dir, PNG_NAME)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_all(doc: dict, out_dir: str, plot: bool = True,
              log: Callable[[str], None] = print) -> dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    files = {}
    png = write_plot(doc, out_dir, log) if plot else None
    stale = os.path.join(out_dir, PNG_NAME)
    if not png and os.path.exists(stale):
        os.remove(stale)  # never leave a plot of an older run next to these results
    if png:
        files["png"] = png
    files["json"] = write_json(doc, out_dir)
    files["markdown"] = write_markdown(doc, out_dir, os.path.basename(png) if png else None)
    return files
