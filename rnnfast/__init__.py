"""rnnfast: fused RNN, LSTM and GRU kernels for PyTorch (CPU and CUDA).

    import rnnfast
    rnn = rnnfast.RNN(input_size, hidden_size, num_layers, ...)     # drop-in for nn.RNN
    lstm = rnnfast.LSTM(input_size, hidden_size, proj_size=0, ...)  # drop-in for nn.LSTM
    gru = rnnfast.GRU(input_size, hidden_size, ...)                 # drop-in for nn.GRU
    cell = rnnfast.RNNCell(input_size, hidden_size)                 # drop-in for nn.RNNCell
    # rnnfast.LSTMCell and rnnfast.GRUCell likewise for nn.LSTMCell and nn.GRUCell
    model = rnnfast.convert(model)      # swap all of them in a model (to_torch: back)
"""

from __future__ import annotations

import os
import warnings

import torch

_BUILD_CMD = "pip install --no-build-isolation -e .   (or: make build)"

try:
    from . import _C  # noqa: F401  (loading the library registers torch.ops.rnnfast)
except (ImportError, OSError) as _err:  # pragma: no cover - exercised by a subprocess test
    try:
        from . import _build_info as _bi

        _built = f"rnnfast was built for torch {_bi.torch_full_version} (cuda {_bi.cuda_version})"
    except ImportError:
        _built = "rnnfast has not been built (no rnnfast/_build_info.py)"
    raise ImportError(
        "rnnfast: the compiled extension rnnfast._C could not be loaded: "
        f"{type(_err).__name__}: {_err}\n"
        f"{_built}; the running torch is {torch.__version__}.\n"
        f"Build it from the repository root with:\n    {_BUILD_CMD}\n"
        "After changing torch, delete build/ and rebuild. rnnfast has no silent slow fallback; "
        "rnnfast.reference is the pure-PyTorch implementation if you need one explicitly."
    ) from _err

from . import _build_info, _ops  # noqa: E402,F401
from . import functional, reference  # noqa: E402,F401
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell  # noqa: E402
from .convert import convert, to_torch  # noqa: E402

if _build_info.torch_version.split(".")[:2] != torch.__version__.split("+")[0].split(".")[:2]:
    warnings.warn(
        f"rnnfast was built against torch {_build_info.torch_full_version} but torch "
        f"{torch.__version__} is running; rebuild with: {_BUILD_CMD}",
        RuntimeWarning,
        stacklevel=2,
    )

__version__ = "0.1.0"
__all__ = [
    "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell",
    "convert", "to_torch", "functional", "reference", "build_info",
]


def build_info() -> dict:
    """How this copy of rnnfast was built (for bug reports)."""
    return {k: getattr(_build_info, k) for k in dir(_build_info) if not k.startswith("_")}
