"""A small forward + backward workload for compute-sanitizer (scripts/gpu_check.sh).

Runs every rnnfast CUDA kernel at least once, for every dtype: uni- and bidirectional,
tanh and relu, with and without biases, dense and packed sequences, several layers
with dropout masks (train mode), eval-mode backward, gradients through h_n only, and
the cell ops. The sequence cases run twice, on the per-step path and on the persistent
kernels (RNNFAST_PERSISTENT=0 / 1). Small shapes, since the sanitizers slow kernels
down 10-100x.

    compute-sanitizer --tool memcheck python scripts/sanitizer_case.py
"""

from __future__ import annotations

import os
import sys

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast


def sequence_cases(dtype, path):
    os.environ["RNNFAST_PERSISTENT"] = path
    dev = "cuda"
    configs = [
        dict(num_layers=1, nonlinearity="tanh", bias=True, bidirectional=False),
        dict(num_layers=2, nonlinearity="relu", bias=False, bidirectional=True, dropout=0.5),
        dict(num_layers=3, nonlinearity="tanh", bias=True, bidirectional=True, dropout=0.2),
    ]
    for i, cfg in enumerate(configs):
        rnn = rnnfast.RNN(5, 37, **cfg).to(dev, dtype).train()
        # Dense (long enough that the bias-gradient column sum has several chunks).
        x = torch.randn(40, 30, 5, device=dev, dtype=dtype, requires_grad=True)
        out, hn = rnn(x)
        (out.float().sum() + hn.float().square().sum()).backward()
        # Packed, unsorted lengths.
        lengths = torch.tensor([6, 2, 5, 1, 6])
        xp = torch.randn(6, 5, 5, device=dev, dtype=dtype, requires_grad=True)
        packed = pack_padded_sequence(xp, lengths, enforce_sorted=False)
        out, hn = rnn(packed)
        (out.data.float().sum() + hn.float().sum()).backward()
        # Gradients through h_n only, after an eval-mode forward.
        rnn.eval()
        _, hn = rnn(x)
        hn.float().sum().backward()
        print(f"  sequence {dtype} config {i} RNNFAST_PERSISTENT={path}: ok", flush=True)


def cell_cases(dtype):
    dev = "cuda"
    for nonlinearity in ("tanh", "relu"):
        for bias in (True, False):
            cell = rnnfast.RNNCell(7, 33, bias=bias, nonlinearity=nonlinearity).to(dev, dtype)
            x = torch.randn(9, 7, device=dev, dtype=dtype, requires_grad=True)
            h = torch.randn(9, 33, device=dev, dtype=dtype, requires_grad=True)
            cell(x, h).float().sum().backward()
    print(f"  cell {dtype}: ok", flush=True)


def main() -> int:
    if not torch.cuda.is_available():
        print("sanitizer_case: no CUDA device", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    before = torch.ops.rnnfast._persistent_launches()
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        for path in ("0", "1"):
            sequence_cases(dtype, path)
        cell_cases(dtype)
    torch.cuda.synchronize()
    launched = torch.ops.rnnfast._persistent_launches() - before
    print(f"  persistent launches: {launched}")
    if launched == 0:
        print("sanitizer_case: the persistent kernels never ran", file=sys.stderr)
        return 1
    print("sanitizer_case: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
