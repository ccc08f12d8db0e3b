"""The timed workloads: a torch.nn.RNN/LSTM/GRU and the rnnfast module of the same
name with identical weights.

Shared by the CLI (rnnfast.bench) and the pytest-benchmark suite (bench/).
Modes: "fwd" is inference (torch.no_grad()); "fwdbwd" is a training step's
recurrent part: forward with autograd, then backward of the output with a fixed random
gradient into the input and every parameter (grads reset to None before each call).
The models have no dropout, so train()/eval() would make no difference.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from .configs import Config

__all__ = ["MODES", "MODE_NAMES", "IMPLS", "DTYPES", "Workload", "make_model", "saved_tensor_bytes"]

MODES = ("fwd", "fwdbwd")
MODE_NAMES = {"fwd": "fwd", "fwdbwd": "fwd+bwd"}
IMPLS = ("torch", "rnnfast")
DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def make_model(impl: str, cfg: Config, **kwargs) -> nn.Module:
    """torch.nn.X (impl="torch") or rnnfast.X (impl="rnnfast") for cfg, X = RNN, LSTM or
    GRU by cfg.cell. rnnfast's class is looked up at call time, so a test can
    monkeypatch it."""
    if impl == "torch":
        module = nn
    elif impl == "rnnfast":
        import rnnfast

        module = rnnfast
    else:
        raise ValueError(f"unknown implementation {impl!r}; expected one of {IMPLS}")
    cls = getattr(module, cfg.cls_name)
    if cfg.proj_size:
        kwargs["proj_size"] = cfg.proj_size
    return cls(cfg.I, cfg.H, cfg.layers, bidirectional=cfg.bidirectional, **kwargs)


class Workload:
    """Both models, the input and the output gradient of one (config, dtype, device).

    Weights are drawn once in float32 from `seed`, cast to `dtype`, and loaded into both
    models through state_dict, so both compute with bit-identical parameters.
    """

    def __init__(self, cfg: Config, dtype: torch.dtype, device: torch.device | str, seed: int = 0):
        self.cfg, self.dtype, self.device = cfg, dtype, torch.device(device)
        torch.manual_seed(seed)
        base = make_model("torch", cfg)
        state = {k: v.to(dtype) for k, v in base.state_dict().items()}
        self.models: dict[str, nn.Module] = {}
        for impl in IMPLS:
            m = make_model(impl, cfg, device=self.device, dtype=dtype)
            m.load_state_dict(state)
            self.models[impl] = m
        self.state = state
        # drawn on the device (large GPU shapes would be slow to draw on the host)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        self.x = torch.randn(cfg.T, cfg.B, cfg.I, generator=gen, device=self.device).to(dtype)
        self.lengths = packed_lengths(cfg, seed) if cfg.packed else None
        out_rows = (int(self.lengths.sum()),) if cfg.packed else (cfg.T, cfg.B)
        self.gout = torch.randn(*out_rows, cfg.D * cfg.P, generator=gen, device=self.device).to(dtype)
        self.x_train = self.x.clone().requires_grad_(True)

    def pack(self, x: torch.Tensor):
        """x as the models' input: x itself, or packed (cfg.packed) with self.lengths."""
        if self.lengths is None:
            return x
        return pack_padded_sequence(x, self.lengths, enforce_sorted=False)

    # -- the timed callables -------------------------------------------------------

    def fn(self, impl: str, mode: str) -> Callable[[], object]:
        m = self.models[impl]
        if mode == "fwd":
            x = self.pack(self.x)

            def fwd():
                with torch.no_grad():
                    return m(x)

            return fwd
        if mode == "fwdbwd":
            x, gout = self.x_train, self.gout
            params = list(m.parameters())

            def fwdbwd():
                x.grad = None
                for p in params:
                    p.grad = None
                out, _ = m(self.pack(x))  # packing (if any) is in both sides' time
                output_data(out).backward(gout)

            return fwdbwd
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")

    # -- memory ----------------------------------------------------------------------

    def saved_bytes(self, impl: str) -> int:
        """Bytes autograd keeps for the backward of one training forward (activations,
        workspaces), not counting the parameters or the input, which exist anyway."""
        m = self.models[impl]
        exclude = {p.untyped_storage().data_ptr() for p in m.parameters()}
        exclude.add(self.x_train.untyped_storage().data_ptr())
        return saved_tensor_bytes(lambda: m(self.pack(self.x_train)), exclude)

    def cuda_peak_bytes(self, impl: str) -> int | None:
        """Peak CUDA memory above the starting allocation during one forward+backward."""
        if self.device.type != "cuda":
            return None
        fn = self.fn(impl, "fwdbwd")
        torch.cuda.synchronize(self.device)
        base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        fn()
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) - base


def packed_lengths(cfg: Config, seed: int) -> torch.Tensor:
    """B sequence lengths drawn from [ceil(T/2), T], the first one T (int64, CPU)."""
    gen = torch.Generator().manual_seed(seed + 1)
    lengths = torch.randint((cfg.T + 1) // 2, cfg.T + 1, (cfg.B,), generator=gen)
    lengths[0] = cfg.T
    return lengths


def output_data(out) -> torch.Tensor:
    """A model's output tensor: the PackedSequence's data for packed input."""
    return out.data if isinstance(out, PackedSequence) else out


def saved_tensor_bytes(fn: Callable[[], object], exclude_storages: set[int] = frozenset()) -> int:
    """Sum of the distinct storages autograd saves while running fn().

    Uses torch.autograd.graph.saved_tensors_hooks; a storage saved several times (or
    through several views) counts once, with its full size (that is what stays alive).
    """
    seen: dict[int, int] = {}

    def pack(t):
        try:
            st = t.untyped_storage()
            key = st.data_ptr()
            if key and key not in exclude_storages:
                seen[key] = st.nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without storage
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())
