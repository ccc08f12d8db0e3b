"""The benchmark's onnxruntime baseline (python -m rnnfast.bench --ort).

With --ort, every float32 CPU forward row also times onnxruntime running the timed rnnfast
module exported with torch.onnx.export(dynamo=False), after checking its outputs against
rnnfast's forward. Rows it does not apply to show "-", never a number; a wrong onnxruntime
output gets no time and fails the run; without onnxruntime the flag fails clearly, and
without the flag nothing changes. Tiny shapes and two repeats keep these fast.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

from rnnfast.bench import main  # noqa: E402
from rnnfast.bench.configs import Config  # noqa: E402
from rnnfast.bench.ort import not_applicable  # noqa: E402
from rnnfast.bench.report import _table_rows  # noqa: E402

FAST = ["--device", "cpu", "--repeats", "2", "--max-repeats", "2", "--budget", "0",
        "--progress", "plain", "--no-plot", "--no-gflops"]
TINY = ["--config", "6,2,4,8", *FAST]
CLASSES = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def _run(tmp_path, *args) -> tuple[int, dict]:
    out = tmp_path / "res"
    status = main([*args, "--out", str(out)])
    return status, json.loads((out / "results.json").read_text())


def _ort_columns(doc: dict, mode: str) -> dict[tuple[str, str], tuple[str, str]]:
    """(label, dtype) -> the ("ORT ms", "vs ORT") cells of that mode's table."""
    header, rows = _table_rows(doc, mode)
    i, j = header.index("ORT ms"), header.index("vs ORT")
    return {(r[0], r[1]): (r[i], r[j]) for r in rows}


def test_ort_times_float32_forward_rows_and_dashes_the_rest(tmp_path, capsys):
    status, doc = _run(tmp_path, *TINY, "--cell", "all", "--ort", "--dtype", "float32,float64")
    assert status == 0
    text = capsys.readouterr().out
    assert "ORT ms" in text and "vs ORT" in text

    info = doc["ort"]
    assert info["onnxruntime"] == onnxruntime.__version__
    assert info["session_options"] == {
        "providers": ["CPUExecutionProvider"], "intra_op_num_threads": torch.get_num_threads(),
        "inter_op_num_threads": 1, "execution_mode": "ORT_SEQUENTIAL", "allow_spinning": False}
    assert info["counts"] == {"ok": 3, "FAILED": 0, "ERROR": 0, "n/a": 9, "not run": 0}

    fwd_cells = _ort_columns(doc, "fwd")
    fwdbwd_cells = _ort_columns(doc, "fwdbwd")
    for r in doc["results"]:
        assert r["status"] == "ok", r["message"]
        if r["dtype"] == "float32" and r["mode"] == "fwd":
            # timed against onnxruntime, after its outputs matched rnnfast's
            assert r["ort_status"] == "ok" and r["ort_check"]["ok"]
            names = {"output", "h_n"} | ({"c_n"} if r["cell"] == "lstm" else set())
            assert set(r["ort_check"]["errors"]) == names
            assert max(r["ort_check"]["errors"].values()) <= 1e-4
            for key in ("ort_ms", "speedup_vs_ort", "ort_tokens_per_s"):
                assert r[key] > 0, key
            assert r["speedup_vs_ort"] == pytest.approx(r["ort_ms"] / r["rnnfast_ms"])
            assert len(r["ort_ms_samples"]) == r["repeats"] == 2
            ms, vs = fwd_cells[r["label"], "float32"]
            assert float(ms) > 0 and vs.endswith("x")
        else:
            assert r["ort_status"] == "n/a"
            assert "ort_ms" not in r and "speedup_vs_ort" not in r
            why = "forward only" if r["mode"] == "fwdbwd" else "float32 only"
            assert why in r["ort_message"]
            cells = (fwdbwd_cells if r["mode"] == "fwdbwd" else fwd_cells)[r["label"], r["dtype"]]
            assert cells == ("-", "-")

    for cell, cls in CLASSES.items():
        g = doc["geomean_vs_ort"][f"{cell}/float32/fwd"]
        assert g["n"] == g["n_applicable"] == 1 and g["geomean_speedup"] > 0
        assert g["meets_target"] == (g["min_speedup"] >= 1.0 and g["geomean_speedup"] >= 1.5)
        assert f"geomean speedup rnnfast.{cls} vs onnxruntime [float32, cpu, fwd]" in text
    md = (tmp_path / "res" / "results.md").read_text()
    assert "| ORT ms | vs ORT |" in md and "geomean speedup rnnfast.GRU vs onnxruntime" in md


def test_lstm_projection_has_no_ort_number(tmp_path):
    status, doc = _run(tmp_path, "--config", "6,2,4,8,1,no,3", *FAST, "--cell", "lstm", "--ort",
                       "--modes", "fwd")
    assert status == 0
    (r,) = doc["results"]
    assert r["status"] == "ok" and r["ort_status"] == "n/a" and "proj_size" in r["ort_message"]
    assert "ort_ms" not in r
    assert _ort_columns(doc, "fwd")[r["label"], "float32"] == ("-", "-")
    assert doc["geomean_vs_ort"] == {}


def test_where_ort_applies():
    cfg = Config(6, 2, 4, 8, cell="gru")
    assert not_applicable(cfg, "float32", "cpu", "fwd") is None
    assert "forward only" in not_applicable(cfg, "float32", "cpu", "fwdbwd")
    assert "float32 only" in not_applicable(cfg, "bfloat16", "cpu", "fwd")
    assert "CPU only" in not_applicable(cfg, "float32", "cuda", "fwd")
    projected = Config(6, 2, 4, 8, cell="lstm", proj_size=3)
    assert "proj_size" in not_applicable(projected, "float32", "cpu", "fwd")


def test_wrong_ort_output_is_caught(tmp_path, monkeypatch, capsys):
    original = onnxruntime.InferenceSession.run

    def run(self, output_names, input_feed, run_options=None):
        return [y * 1.01 for y in original(self, output_names, input_feed, run_options)]

    monkeypatch.setattr(onnxruntime.InferenceSession, "run", run)
    status, doc = _run(tmp_path, *TINY, "--cell", "gru", "--ort", "--modes", "fwd")
    assert status == 1  # a wrong exported model is reported as a failure of the run
    assert "onnxruntime baseline FAILED" in capsys.readouterr().err
    (r,) = doc["results"]
    assert r["status"] == "ok" and r["rnnfast_ms"] > 0  # rnnfast itself is right and timed
    assert r["ort_status"] == "FAILED" and not r["ort_check"]["ok"]
    assert "WRONG RESULT: output: error 1.0" in r["ort_message"]  # 1.01x: error ~1e-2
    assert "ort_ms" not in r and "speedup_vs_ort" not in r
    assert _ort_columns(doc, "fwd")[r["label"], "float32"] == ("FAILED", "-")
    assert doc["ort"]["counts"]["FAILED"] == 1 and doc["geomean_vs_ort"] == {}
    assert "1 onnxruntime baseline(s) FAILED" in (tmp_path / "res" / "results.md").read_text()


def test_without_onnxruntime_the_flag_fails_and_the_default_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    assert main([*TINY, "--cell", "rnn", "--ort", "--out", str(tmp_path / "ort")]) == 2
    err = capsys.readouterr().err
    assert "--ort needs the onnxruntime and onnx packages" in err and "pip install" in err
    assert not (tmp_path / "ort").exists()

    # without --ort, onnxruntime is not needed and the results have no onnxruntime fields
    status, doc = _run(tmp_path, *TINY, "--cell", "rnn")
    assert status == 0
    assert "ORT ms" not in capsys.readouterr().out
    assert "ort" not in doc and "geomean_vs_ort" not in doc
    assert not any(key.startswith("ort_") for r in doc["results"] for key in r)
