"""Smoke tests of the benchmark tooling (rnnfast.bench CLI) and of the examples.

Fast by design (tiny shapes, two repeats, no timing budget): they check that the CLI
writes its JSON/Markdown with the promised fields for each cell (RNN, LSTM, GRU), that
its correctness guard refuses to report a speed for a wrong implementation of any cell,
and that both examples train one epoch with either backend and give the same losses.
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
from rnnfast.bench.configs import Config, forward_flops, parse_cells

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--config", "6,2,4,8", "--device", "cpu", "--repeats", "2", "--max-repeats", "2",
        "--budget", "0", "--progress", "plain"]


def _load_json(out: pathlib.Path) -> dict:
    return json.loads((out / "results.json").read_text())


CLASSES = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def test_cli_writes_results(tmp_path, capsys):
    out = tmp_path / "res"
    assert main([*TINY, "--cell", "all", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "rnnfast ms" in text
    for cls in CLASSES.values():
        assert f"geomean speedup rnnfast.{cls} vs torch.nn.{cls} [float32, cpu]" in text

    doc = _load_json(out)
    assert doc["schema"] == "rnnfast-bench/1"
    assert doc["cells"] == ["rnn", "lstm", "gru"]
    m = doc["machine"]
    for key in ("cpu_model", "torch_num_threads", "torch", "torch_cuda", "tf32", "gpu"):
        assert key in m
    assert set(m["tf32"]) >= {"cuda_matmul_allow_tf32", "cudnn_allow_tf32"}
    rows = {(r["cell"], r["mode"]): r for r in doc["results"]}
    assert set(rows) == {(c, m) for c in CLASSES for m in ("fwd", "fwdbwd")}
    for (cell, mode), r in rows.items():
        assert r["status"] == "ok" and r["check"]["ok"], r["message"]
        assert r["label"].startswith(CLASSES[cell] + " T=6 ")
        assert r["config"] == {"T": 6, "B": 2, "I": 4, "H": 8, "layers": 1, "bidirectional": False,
                               "cell": cell, "proj_size": 0, "packed": False}
        # the final cell state is checked too
        assert ("c_n" in r["check"]["errors"]) == (cell == "lstm")
        for key in ("torch_ms", "rnnfast_ms", "speedup", "rnnfast_tokens_per_s", "repeats"):
            assert r[key] is not None and r[key] > 0, key
        assert doc["geomean"][f"{cell}/float32/{mode}"]["n"] == 1
    for cell in CLASSES:
        fb = rows[cell, "fwdbwd"]
        assert fb["check"]["grads_checked"]
        assert fb["torch_saved_bytes"] > 0 and fb["rnnfast_saved_bytes"] > 0
    # GFLOP/s per cell; the FLOP count grows with the gates (G = 1, 4, 3)
    gflops = {g["cell"]: g for g in doc["gflops"]}
    assert set(gflops) == set(CLASSES)
    for g in gflops.values():
        assert g["gflops"]["mm_same_flops"] > 0 and g["gflops"]["rnnfast_fwd"] > 0
    assert gflops["lstm"]["forward_gflop"] == pytest.approx(4 * gflops["rnn"]["forward_gflop"])
    assert gflops["gru"]["forward_gflop"] == pytest.approx(3 * gflops["rnn"]["forward_gflop"])
    # each cell's issue target: 70% of torch.mm for the Elman cell, 90% for LSTM and GRU
    assert {c: g["target_fraction"] for c, g in gflops.items()} == {"rnn": 0.7, "lstm": 0.9,
                                                                      "gru": 0.9}

    md = (out / "results.md").read_text()
    for needle in ("torch ms", "rnnfast ms", "speedup", "tokens/s", "saved torch", "saved rnnfast",
                   "geomean speedup rnnfast.LSTM", "GFLOP/s", "torch threads", "TF32",
                   "torch.nn.GRU fwd"):
        assert needle in md, needle
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "speedup.png").stat().st_size > 0


def test_cli_lstm_projection(tmp_path):
    out = tmp_path / "res"
    assert main([*TINY[2:], "--config", "6,2,4,8,2,yes,3", "--cell", "lstm", "--out", str(out),
                 "--no-plot", "--no-gflops"]) == 0
    rows = _load_json(out)["results"]
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert rows[0]["config"]["proj_size"] == 3 and rows[0]["label"] == "LSTM T=6 B=2 I=4 H=8 P=3 L=2 bi"
    assert "grad_weight_hr_l1_reverse" in rows[1]["check"]["errors"]


def test_cell_arguments(capsys):
    assert parse_cells("all") == ["rnn", "lstm", "gru"]
    assert parse_cells("gru, rnn") == ["rnn", "gru"]  # always in the order rnn, lstm, gru
    for bad in (["--cell", "elman"], ["--cell", ""],
                ["--config", "6,2,4,8,1,no,3", "--cell", "lstm,gru"]):  # proj_size: LSTM only
        with pytest.raises(SystemExit) as exc:
            main([*TINY[2:], *bad])
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --cell: expected rnn, lstm, gru" in err and "proj_size=3 is an LSTM option" in err


def test_forward_flops_count_gates_and_projection():
    T, B, I, H = 10, 2, 3, 5  # noqa: E741
    assert forward_flops(Config(T, B, I, H)) == 2 * T * B * (I * H + H * H)
    assert forward_flops(Config(T, B, I, H, cell="gru")) == 2 * T * B * (I * 3 * H + H * 3 * H)
    # LSTM with proj_size P = 2, two layers, bidirectional: layer 1 reads 2*P features
    # per step; each step also projects h = m @ w_hr^T (H*P multiply-adds)
    P = 2
    layer0 = I * 4 * H + P * 4 * H + H * P
    layer1 = 2 * P * 4 * H + P * 4 * H + H * P
    cfg = Config(T, B, I, H, 2, True, "lstm", P)
    assert forward_flops(cfg) == 2 * 2 * T * B * (layer0 + layer1)
    with pytest.raises(ValueError, match="LSTM option"):
        Config(T, B, I, H, cell="gru", proj_size=P)


def _wrong_forward(monkeypatch, cls, *, grads_only: bool):
    original = cls.forward

    def forward(self, input, hx=None):
        out, state = original(self, input, hx)
        if grads_only:  # same values, gradients scaled by 1.01
            return out + 0.01 * (out - out.detach()), state
        return out * 1.01, state

    monkeypatch.setattr(cls, "forward", forward)


@pytest.mark.parametrize("cell", list(CLASSES))
def test_guard_rejects_wrong_forward(tmp_path, monkeypatch, cell):
    _wrong_forward(monkeypatch, getattr(rnnfast, CLASSES[cell]), grads_only=False)
    out = tmp_path / "res"
    assert main([*TINY, "--cell", cell, "--out", str(out), "--no-plot", "--no-gflops"]) == 1
    doc = _load_json(out)
    assert {r["status"] for r in doc["results"]} == {"FAILED"}
    for r in doc["results"]:
        assert "rnnfast_ms" not in r and "speedup" not in r
        assert "output" in r["message"]
    assert "FAILED" in (out / "results.md").read_text()


@pytest.mark.parametrize("cell", list(CLASSES))
def test_guard_rejects_wrong_gradients(tmp_path, monkeypatch, cell):
    _wrong_forward(monkeypatch, getattr(rnnfast, CLASSES[cell]), grads_only=True)
    out = tmp_path / "res"
    assert main([*TINY, "--cell", cell, "--out", str(out), "--no-plot", "--no-gflops"]) == 1
    rows = {r["mode"]: r for r in _load_json(out)["results"]}
    assert rows["fwd"]["status"] == "ok"  # the forward is right ...
    assert rows["fwdbwd"]["status"] == "FAILED"  # ... the gradients are not
    assert "grad_" in rows["fwdbwd"]["message"] and "speedup" not in rows["fwdbwd"]


def test_packed_input_is_checked_and_timed(tmp_path, monkeypatch):
    """--packed: every shape's input is a PackedSequence of random lengths in [T/2, T];
    the rows are checked like dense ones (a wrong packed output is refused) and
    onnxruntime does not apply to them."""
    out = tmp_path / "res"
    assert main([*TINY, "--cell", "all", "--packed", "--out", str(out), "--no-plot",
                 "--no-gflops"]) == 0
    rows = _load_json(out)["results"]
    assert {r["status"] for r in rows} == {"ok"} and len(rows) == 6
    assert all(r["config"]["packed"] and r["label"].endswith(" packed") for r in rows)
    assert all(r["check"]["grads_checked"] and "grad_input" in r["check"]["errors"]
               for r in rows if r["mode"] == "fwdbwd")

    original = rnnfast.GRU.forward

    def wrong(self, input, hx=None):  # wrong for packed input only
        output, h_n = original(self, input, hx)
        if isinstance(output, torch.Tensor):
            return output, h_n
        return output._replace(data=output.data * 1.01), h_n

    monkeypatch.setattr(rnnfast.GRU, "forward", wrong)
    bad = tmp_path / "bad"
    assert main([*TINY, "--cell", "gru", "--packed", "--out", str(bad), "--no-plot",
                 "--no-gflops"]) == 1
    assert {r["status"] for r in _load_json(bad)["results"]} == {"FAILED"}


def test_reduced_precision_is_timed_against_float32(tmp_path):
    out = tmp_path / "res"
    assert main([*TINY, "--cell", "rnn", "--out", str(out), "--no-plot",
                 "--dtype", "float32,bfloat16"]) == 0
    doc = _load_json(out)
    (g,) = doc["reduced_vs_float32"]
    assert g["dtype"] == "bfloat16" and g["config"]["H"] == 8
    for mode in ("fwd", "fwdbwd"):
        assert g["speedup"][mode] > 0 and g["float32_ms"][mode] > 0 and g["reduced_ms"][mode] > 0
    assert g["target"] == 1.6 and isinstance(g["meets_target"], bool)
    assert "rnnfast bfloat16 vs rnnfast float32" in (out / "results.md").read_text()


def _fake_probe(monkeypatch, failures: dict):
    """Make the runner's probe report failures[(impl, cell)] (a message) for those pairs."""
    import rnnfast.bench.runner as runner

    def probe(impl, dtype, device, cell="rnn"):
        return failures.get((impl, cell))

    monkeypatch.setattr(runner, "probe_dtype", probe)


def test_unsupported_dtype_is_reported(tmp_path, monkeypatch, capsys):
    _fake_probe(monkeypatch, {("torch", "rnn"): "RuntimeError: no kernel for this dtype"})
    out = tmp_path / "res"
    assert main([*TINY, "--cell", "rnn", "--out", str(out), "--no-plot", "--dtype", "bfloat16"]) == 2
    assert "UNSUPPORTED" in capsys.readouterr().out
    doc = _load_json(out)
    assert {r["status"] for r in doc["results"]} == {"UNSUPPORTED"}
    assert "torch does not run rnn in bfloat16" in doc["unsupported"]["rnn/bfloat16"]


def test_cell_without_kernels_is_unsupported_not_an_error(tmp_path, monkeypatch):
    # rnnfast's "no kernel" signal is NotImplementedError (e.g. LSTM on CUDA): that cell
    # is UNSUPPORTED, the others are measured, and the run succeeds
    _fake_probe(monkeypatch, {("rnnfast", "lstm"): "NotImplementedError: no LSTM kernels here"})
    out = tmp_path / "res"
    assert main([*TINY, "--cell", "rnn,lstm", "--out", str(out), "--no-plot", "--no-gflops"]) == 0
    doc = _load_json(out)
    status = {(r["cell"], r["mode"]): r["status"] for r in doc["results"]}
    assert status == {("rnn", "fwd"): "ok", ("rnn", "fwdbwd"): "ok",
                      ("lstm", "fwd"): "UNSUPPORTED", ("lstm", "fwdbwd"): "UNSUPPORTED"}
    assert set(doc["unsupported"]) == {"lstm/float32"}
    assert "lstm/float32 was not benchmarked (UNSUPPORTED)" in (out / "results.md").read_text()


def test_other_probe_errors_of_rnnfast_are_errors(tmp_path, monkeypatch):
    # any other exception of rnnfast on the probe is a bug: ERROR rows, exit status 1
    _fake_probe(monkeypatch, {("rnnfast", "gru"): "RuntimeError: bad gate order"})
    out = tmp_path / "res"
    assert main([*TINY, "--cell", "gru", "--out", str(out), "--no-plot", "--no-gflops"]) == 1
    doc = _load_json(out)
    assert {r["status"] for r in doc["results"]} == {"ERROR"}
    assert "RuntimeError: bad gate order" in doc["results"][0]["message"]
    assert doc["unsupported"] == {}


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
