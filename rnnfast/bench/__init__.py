"""Benchmarks of rnnfast.RNN, LSTM and GRU against torch.nn.RNN, LSTM and GRU.

    python -m rnnfast.bench                 # the quick set, all three cells
    python -m rnnfast.bench --cell lstm,gru --set cpu-targets
    python -m rnnfast.bench --set cpu-targets --device cpu --out bench/results/cpu-baseline
    python -m rnnfast.bench --set gpu --device cuda --dtype float32,bfloat16
    python -m rnnfast.bench --set cpu-targets --ort   # + onnxruntime's forward (float32, CPU)
    python -m rnnfast.bench --list          # the named configuration sets

Modules: configs (cells, shapes and named sets), workloads (the timed torch / rnnfast
callables and saved-activation memory), timing (interleaved medians, CUDA events),
checks (the correctness guard), ort (the onnxruntime baseline of --ort), machine (what
ran it), report (tables, JSON, Markdown, plot), runner (the loop) and cli. The
pytest-benchmark suite in bench/ uses the same configs, workloads and checks.
"""

from .cli import main
from .configs import SETS, Config, get_set, parse_config
from .runner import Settings, run_benchmarks

__all__ = ["main", "run_benchmarks", "Settings", "Config", "SETS", "get_set", "parse_config"]
