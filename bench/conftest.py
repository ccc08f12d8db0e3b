"""pytest-benchmark suite of rnnfast (kept out of the default test run: pyproject's
testpaths is ["tests"]).

    pytest bench/ --benchmark-json=bench/results/latest/pytest-benchmark.json
    pytest bench/ --rnnfast-set cpu-targets --rnnfast-dtype float32,bfloat16
    pytest bench/ --rnnfast-cell lstm,gru
    pytest bench/ --benchmark-disable          # smoke: every case runs once, untimed

Options (or environment variables): --rnnfast-set (RNNFAST_BENCH_SET, default quick,
the set `make bench` runs), --rnnfast-cell (RNNFAST_BENCH_CELL: rnn, lstm, gru, a comma
list or all, the default), --rnnfast-device (RNNFAST_BENCH_DEVICE: auto|cpu|cuda),
--rnnfast-dtype (RNNFAST_BENCH_DTYPE, comma-separated), --rnnfast-modes
(RNNFAST_BENCH_MODES: fwd,fwdbwd). Files named bench_*.py are collected as tests.
"""

from __future__ import annotations

import os

import pytest
import torch


def pytest_addoption(parser):
    g = parser.getgroup("rnnfast", "rnnfast benchmarks")
    g.addoption("--rnnfast-set", default=os.environ.get("RNNFAST_BENCH_SET", "quick"),
                help="configuration set of rnnfast.bench.configs (default quick)")
    g.addoption("--rnnfast-cell", default=os.environ.get("RNNFAST_BENCH_CELL", "all"),
                help="rnn, lstm, gru, a comma list of them, or all (default)")
    g.addoption("--rnnfast-device", default=os.environ.get("RNNFAST_BENCH_DEVICE", "auto"),
                choices=["auto", "cpu", "cuda"])
    g.addoption("--rnnfast-dtype", default=os.environ.get("RNNFAST_BENCH_DTYPE", "float32"),
                help="comma-separated dtypes (float32, bfloat16, float16, float64)")
    g.addoption("--rnnfast-modes", default=os.environ.get("RNNFAST_BENCH_MODES", "fwd,fwdbwd"),
                help="comma-separated: fwd, fwdbwd")


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_configure(config):
    path = config.getoption("benchmark_json", None)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(str(path))), exist_ok=True)


def resolve_device(name: str) -> str:
    if name == "auto":
        if torch.cuda.is_available():
            import rnnfast

            return "cuda" if rnnfast.build_info().get("with_cuda") else "cpu"
        return "cpu"
    return name


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    from rnnfast.bench.configs import get_set, parse_cells, with_cells

    opt = metafunc.config.getoption
    device = resolve_device(opt("--rnnfast-device"))
    dtypes = [d.strip() for d in opt("--rnnfast-dtype").split(",") if d.strip()]
    modes = [m.strip() for m in opt("--rnnfast-modes").split(",") if m.strip()]
    cases, ids = [], []
    for cfg in with_cells(get_set(opt("--rnnfast-set")), parse_cells(opt("--rnnfast-cell"))):
        for dtype in dtypes:
            for mode in modes:
                marks = []
                if device == "cuda" and not torch.cuda.is_available():
                    marks.append(pytest.mark.skip(reason="needs a CUDA device"))
                cases.append(pytest.param((cfg, dtype, mode, device), marks=marks))
                ids.append(f"{mode}-{device}-{cfg.slug}-{dtype}")
    metafunc.parametrize("case", cases, ids=ids)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    from rnnfast.bench.machine import machine_info

    output_json["rnnfast_machine"] = machine_info(resolve_device(config.getoption("--rnnfast-device")))
