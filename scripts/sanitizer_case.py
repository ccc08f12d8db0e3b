"""A small forward + backward workload for compute-sanitizer (scripts/gpu_check.sh).

One small case per path, since the sanitizers slow kernels down 10-100x and the GPU
check must fit one short device call:

    compute-sanitizer --tool memcheck python scripts/sanitizer_case.py --path step
    compute-sanitizer --tool memcheck python scripts/sanitizer_case.py --path persistent

--path step forces the per-step path (RNNFAST_PERSISTENT=0) and checks that no
persistent kernel ran; --path persistent forces the persistent kernels
(RNNFAST_PERSISTENT=1) and checks that they did run. The case, in float32: a 2-layer
bidirectional relu RNN in train mode with dropout, dense (long enough that the
bias-gradient column sum has several chunks) and packed with unsorted lengths, then an
eval-mode forward with gradients through h_n only; on the per-step path also the cell
ops. LSTM (with proj_size) and GRU run a tiny forward + backward when they have CUDA
kernels; while they raise NotImplementedError they are reported as "not checked".

--full runs the older, longer sweep instead: every dtype, three RNN configurations
(uni- and bidirectional, tanh and relu, with and without biases) and the cell ops with
every nonlinearity and bias setting.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast

DEV = "cuda"
PATH_ENV = {"step": "0", "persistent": "1"}
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
RNN_CONFIGS = [
    dict(num_layers=2, nonlinearity="relu", bias=False, bidirectional=True, dropout=0.5),
    dict(num_layers=1, nonlinearity="tanh", bias=True, bidirectional=False),
    dict(num_layers=3, nonlinearity="tanh", bias=True, bidirectional=True, dropout=0.2),
]


def rnn_case(cfg: dict, dtype: torch.dtype) -> None:
    rnn = rnnfast.RNN(5, 37, **cfg).to(DEV, dtype).train()
    # Dense: T*B = 1200 rows, several chunks of the bias-gradient column sum.
    x = torch.randn(40, 30, 5, device=DEV, dtype=dtype, requires_grad=True)
    out, hn = rnn(x)
    (out.float().sum() + hn.float().square().sum()).backward()
    # Packed, unsorted lengths.
    lengths = torch.tensor([6, 2, 5, 1, 6])
    xp = torch.randn(6, 5, 5, device=DEV, dtype=dtype, requires_grad=True)
    out, hn = rnn(pack_padded_sequence(xp, lengths, enforce_sorted=False))
    (out.data.float().sum() + hn.float().sum()).backward()
    # Gradients through h_n only, after an eval-mode forward.
    rnn.eval()
    _, hn = rnn(x)
    hn.float().sum().backward()


def cell_case(dtype: torch.dtype, nonlinearity: str, bias: bool) -> None:
    cell = rnnfast.RNNCell(7, 33, bias=bias, nonlinearity=nonlinearity).to(DEV, dtype)
    x = torch.randn(9, 7, device=DEV, dtype=dtype, requires_grad=True)
    h = torch.randn(9, 33, device=DEV, dtype=dtype, requires_grad=True)
    cell(x, h).float().sum().backward()


def gated_case(name: str) -> None:
    """LSTM (with proj_size) or GRU, tiny, forward + backward; 'not checked' while the
    cell has no CUDA kernel (NotImplementedError). Any other error is a failure."""
    if name == "lstm":
        model = rnnfast.LSTM(5, 21, num_layers=2, bidirectional=True, proj_size=11)
    else:
        model = rnnfast.GRU(5, 21, num_layers=2, bidirectional=True)
    model = model.to(DEV).train()
    x = torch.randn(8, 3, 5, device=DEV, requires_grad=True)
    try:
        out, state = model(x)
    except NotImplementedError as e:
        print(f"  {name}: not checked (no CUDA kernel yet: NotImplementedError: {e})", flush=True)
        return
    hn = state[0] if isinstance(state, tuple) else state
    (out.sum() + hn.square().sum()).backward()
    print(f"  {name}: ok", flush=True)


def persistent_launches() -> int:
    return torch.ops.rnnfast._persistent_launches()


def run_path(path: str) -> int:
    """The small case on one path; 0 when it ran on that path."""
    os.environ["RNNFAST_PERSISTENT"] = PATH_ENV[path]
    before = persistent_launches()
    rnn_case(RNN_CONFIGS[0], torch.float32)
    print(f"  rnn float32 {RNN_CONFIGS[0]} --path {path}: ok", flush=True)
    if path == "step":
        cell_case(torch.float32, "tanh", True)
        print("  cell float32: ok", flush=True)
    torch.cuda.synchronize()
    launched = persistent_launches() - before
    for name in ("lstm", "gru"):
        gated_case(name)
    torch.cuda.synchronize()
    print(f"  persistent launches (rnn): {launched}")
    if path == "persistent" and launched == 0:
        print("sanitizer_case: the persistent kernels never ran", file=sys.stderr)
        return 1
    if path == "step" and launched != 0:
        print("sanitizer_case: persistent kernels ran on the per-step path", file=sys.stderr)
        return 1
    return 0


def run_full() -> int:
    """Every dtype, every RNN configuration, both paths, every cell variant."""
    before = persistent_launches()
    for dtype in DTYPES:
        for path in ("step", "persistent"):
            os.environ["RNNFAST_PERSISTENT"] = PATH_ENV[path]
            for i, cfg in enumerate(RNN_CONFIGS):
                rnn_case(cfg, dtype)
                print(f"  rnn {dtype} config {i} --path {path}: ok", flush=True)
        for nonlinearity in ("tanh", "relu"):
            for bias in (True, False):
                cell_case(dtype, nonlinearity, bias)
        print(f"  cell {dtype}: ok", flush=True)
    for name in ("lstm", "gru"):
        gated_case(name)
    torch.cuda.synchronize()
    launched = persistent_launches() - before
    print(f"  persistent launches (rnn): {launched}")
    if launched == 0:
        print("sanitizer_case: the persistent kernels never ran", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--path", choices=sorted(PATH_ENV), help="one small case on this path")
    group.add_argument("--full", action="store_true", help="the long sweep (all dtypes, both paths)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("sanitizer_case: no CUDA device", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    rc = run_full() if args.full else run_path(args.path)
    if rc == 0:
        print("sanitizer_case: OK")
    return rc


if __name__ == "__main__":
    sys.exit(main())
