"""Smoke tests of the per-call benchmark of cells and streaming calls (rnnfast.bench.cells).

Fast by design (tiny shapes, one repeat, no timing budget). Specification:
  * it writes results.md / results.json with one checked row per cell, size and mode
    (fwd, fwd+bwd, weights) and per streaming module and size, and a summary line per
    cell and mode;
  * its float64 guard refuses to report a speed for a wrong cell or streaming module
    (the row says FAILED and the exit status is 1).
"""

from __future__ import annotations

import json

import torch

import rnnfast
from rnnfast.bench import cells as bench_cells

TINY = ["--N", "1,3", "--H", "8", "--streaming-B", "2", "--streaming-H", "8", "--threads", "1",
        "--repeats", "1", "--budget", "0"]


def test_writes_every_row_checked(tmp_path, capsys):
    out = tmp_path / "cells"
    assert bench_cells.main([*TINY, "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    cell_rows = [r for r in rows if r["kind"] == "cell"]
    assert {(r["cell"], r["N"], r["mode"]) for r in cell_rows} == {
        (c, n, m) for c in ("RNNCell", "LSTMCell", "GRUCell") for n in (1, 3)
        for m in ("fwd", "fwd+bwd", "weights")}
    assert {r["cell"] for r in rows if r["kind"] == "streaming"} == {"RNN", "LSTM", "GRU"}
    for r in rows:
        assert r["status"] == "ok" and r["max_rel_err"] <= bench_cells.TOLERANCE, r
        assert r["torch_us"] > 0 and r["rnnfast_us"] > 0 and r["speedup"] > 0
    text = (out / "results.md").read_text()
    assert "| cell | LSTMCell | 3 | 8 | weights |" in text
    assert "cell GRUCell fwd+bwd: geomean" in capsys.readouterr().out


def test_a_wrong_cell_or_stream_is_refused(monkeypatch, capsys):
    forward = rnnfast.LSTMCell.forward

    def wrong(self, input, hx=None):
        h, c = forward(self, input, hx)
        return h * 1.01, c

    monkeypatch.setattr(rnnfast.LSTMCell, "forward", wrong)
    status = bench_cells.main([*TINY, "--cell", "lstm", "--modes", "fwd",
                               "--streaming-B", ""])
    assert status == 1
    assert "FAILED check" in capsys.readouterr().out

    gru_forward = rnnfast.GRU.forward

    def wrong_stream(self, input, hx=None):
        out, h = gru_forward(self, input, hx)
        return out, torch.zeros_like(h) + 0.5

    monkeypatch.setattr(rnnfast.GRU, "forward", wrong_stream)
    status = bench_cells.main([*TINY, "--cell", "gru", "--N", "", "--modes", "fwd"])
    assert status == 1
    assert "streaming GRU" in capsys.readouterr().out
