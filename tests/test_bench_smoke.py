"""Smoke tests of the benchmark tooling (rnnfast.bench CLI) and of the examples.

Fast by design (tiny shapes, two repeats, no timing budget): they check that the CLI
writes its JSON/Markdown with the promised fields, that its correctness guard refuses
to report a speed for a wrong implementation, and that both examples train one epoch
with either backend and give the same losses.
"""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib

import pytest
import torch

import rnnfast
from rnnfast.bench import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--config", "6,2,4,8", "--device", "cpu", "--repeats", "2", "--max-repeats", "2",
        "--budget", "0", "--progress", "plain"]


def _load_json(out: pathlib.Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_cli_writes_results(tmp_path, capsys):
    out = tmp_path / "res"
    assert main([*TINY, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "geomean speedup" in text and "rnnfast ms" in text

    doc = _load_json(out)
    assert doc["schema"] == "rnnfast-bench/1"
    m = doc["machine"]
    for key in ("cpu_model", "torch_num_threads", "torch", "torch_cuda", "tf32", "gpu"):
        assert key in m
    assert set(m["tf32"]) >= {"cuda_matmul_allow_tf32", "cudnn_allow_tf32"}
    rows = {r["mode"]: r for r in doc["results"]}
    assert set(rows) == {"fwd", "fwdbwd"}
    for r in rows.values():
        assert r["status"] == "ok" and r["check"]["ok"]
        assert r["config"] == {"T": 6, "B": 2, "I": 4, "H": 8, "layers": 1, "bidirectional": False}
        for key in ("torch_ms", "rnnfast_ms", "speedup", "rnnfast_tokens_per_s", "repeats"):
            assert r[key] is not None and r[key] > 0, key
    assert rows["fwdbwd"]["check"]["grads_checked"]
    assert rows["fwdbwd"]["torch_saved_bytes"] > 0 and rows["fwdbwd"]["rnnfast_saved_bytes"] > 0
    for mode in ("fwd", "fwdbwd"):
        assert doc["geomean"][f"float32/{mode}"]["n"] == 1
    (g,) = doc["gflops"]
    assert g["gflops"]["mm_same_flops"] > 0 and g["gflops"]["rnnfast_fwd"] > 0

    md = (out / "results.md").read_text()
    for needle in ("torch ms", "rnnfast ms", "speedup", "tokens/s", "saved rnnfast",
                   "geomean speedup", "GFLOP/s", "torch threads", "TF32"):
        assert needle in md, needle
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "speedup.png").stat().st_size > 0


def _wrong_forward(monkeypatch, *, grads_only: bool):
    original = rnnfast.RNN.forward

    def forward(self, input, hx=None):
        out, h = original(self, input, hx)
        if grads_only:  # same values, gradients scaled by 1.01
            return out + 0.01 * (out - out.detach()), h
        return out * 1.01, h

    monkeypatch.setattr(rnnfast.RNN, "forward", forward)


def test_guard_rejects_wrong_forward(tmp_path, monkeypatch):
    _wrong_forward(monkeypatch, grads_only=False)
    out = tmp_path / "res"
    assert main([*TINY, "--out", str(out), "--no-plot", "--no-gflops"]) == 1
    doc = _load_json(out)
    assert {r["status"] for r in doc["results"]} == {"FAILED"}
    for r in doc["results"]:
        assert "rnnfast_ms" not in r and "speedup" not in r
        assert "output" in r["message"]
    assert "FAILED" in (out / "results.md").read_text()


def test_guard_rejects_wrong_gradients(tmp_path, monkeypatch):
    _wrong_forward(monkeypatch, grads_only=True)
    out = tmp_path / "res"
    assert main([*TINY, "--out", str(out), "--no-plot", "--no-gflops"]) == 1
    rows = {r["mode"]: r for r in _load_json(out)["results"]}
    assert rows["fwd"]["status"] == "ok"  # the forward is right ...
    assert rows["fwdbwd"]["status"] == "FAILED"  # ... the gradients are not
    assert "grad_" in rows["fwdbwd"]["message"] and "speedup" not in rows["fwdbwd"]


def test_reduced_precision_is_timed_against_float32(tmp_path):
    out = tmp_path / "res"
    assert main([*TINY, "--out", str(out), "--no-plot", "--dtype", "float32,bfloat16"]) == 0
    doc = _load_json(out)
    (g,) = doc["reduced_vs_float32"]
    assert g["dtype"] == "bfloat16" and g["config"]["H"] == 8
    for mode in ("fwd", "fwdbwd"):
        assert g["speedup"][mode] > 0 and g["float32_ms"][mode] > 0 and g["reduced_ms"][mode] > 0
    assert g["target"] == 1.6 and isinstance(g["meets_target"], bool)
    assert "rnnfast bfloat16 vs rnnfast float32" in (out / "results.md").read_text()


def test_unsupported_dtype_is_reported(tmp_path, monkeypatch, capsys):
    import rnnfast.bench.runner as runner

    def probe(impl, dtype, device):
        return "RuntimeError: no kernel for this dtype" if impl == "rnnfast" else None

    monkeypatch.setattr(runner, "probe_dtype", probe)
    out = tmp_path / "res"
    assert main([*TINY, "--out", str(out), "--no-plot", "--dtype", "bfloat16"]) == 2
    assert "UNSUPPORTED" in capsys.readouterr().out
    doc = _load_json(out)
    assert {r["status"] for r in doc["results"]} == {"UNSUPPORTED"}
    assert "bfloat16" in doc["unsupported"]


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("text_classifier", dict(samples=128, seq_len=12, hidden=16, batch=32)),
        ("timeseries_regression", dict(samples=64, seq_len=20, batch=16)),
    ],
)
def test_example_backends_agree(name, kwargs):
    ex = _example(name)
    torch.manual_seed(123)
    res = ex.run(("torch", "rnnfast"), epochs=1, verbose=False, seed=7, **kwargs)
    (a,), (b,) = res["torch"]["losses"], res["rnnfast"]["losses"]
    assert math.isfinite(a) and a > 0
    assert b == pytest.approx(a, rel=1e-5)
    assert ex.compare(res)  # the script's own check agrees
