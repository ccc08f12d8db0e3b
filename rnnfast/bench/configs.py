"""Benchmark configurations: one RNN shape per Config, grouped into named sets.

Shape letters follow torch.nn.RNN: T (sequence length L), B (batch N), I (H_in),
H (hidden), layers, bidirectional (D = 2).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

__all__ = ["Config", "SETS", "SET_DOCS", "get_set", "parse_config", "forward_flops"]


@dataclass(frozen=True, order=True)
class Config:
    T: int
    B: int
    I: int  # noqa: E741 - the nn.RNN letter
    H: int
    layers: int = 1
    bidirectional: bool = False

    @property
    def D(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def label(self) -> str:
        bi = "bi" if self.bidirectional else "uni"
        return f"T={self.T} B={self.B} I={self.I} H={self.H} L={self.layers} {bi}"

    @property
    def slug(self) -> str:
        bi = "bi" if self.bidirectional else "uni"
        return f"T{self.T}-B{self.B}-I{self.I}-H{self.H}-L{self.layers}-{bi}"

    @property
    def tokens(self) -> int:
        """Sequence elements per call (T * B)."""
        return self.T * self.B

    def flops(self) -> int:
        return forward_flops(self)

    def as_dict(self) -> dict:
        return asdict(self)


def forward_flops(cfg: Config) -> int:
    """Multiply-add FLOPs of one forward: 2*T*B*(I_l*H + H*H) per layer and direction.

    I_l is I for the first layer and D*H above it. Pointwise work (bias, tanh) is not
    counted. A forward+backward is about 3x this (the backward has two GEMMs per GEMM).
    """
    total = 0
    for layer in range(cfg.layers):
        i_l = cfg.I if layer == 0 else cfg.D * cfg.H
        total += cfg.D * 2 * cfg.T * cfg.B * (i_l * cfg.H + cfg.H * cfg.H)
    return total


def _quick() -> list[Config]:
    # A hidden-size sweep and a batch sweep that meet at (T=100, B=16, H=128), plus one
    # stacked bidirectional model: enough for both plots, about 2 minutes on 2 cores.
    h_sweep = [Config(100, 16, 64, h) for h in (32, 64, 128, 256)]
    b_sweep = [Config(100, b, 64, 128) for b in (1, 4, 64)]
    return h_sweep + b_sweep + [Config(50, 16, 64, 128, 2, True)]


def _full() -> list[Config]:
    cfgs = [Config(100, 16, 64, h) for h in (32, 64, 128, 256, 512, 1024)]
    cfgs += [Config(100, b, 64, 256) for b in (1, 4, 16, 64, 256)]
    cfgs += [Config(t, 16, 64, 128) for t in (10, 1000)]
    cfgs += [Config(100, 16, 64, 128, layers, bi) for layers in (1, 2, 3) for bi in (False, True)]
    cfgs += [Config(100, 64, 256, 256, 2, True), Config(50, 128, 512, 512)]
    return sorted(set(cfgs), key=lambda c: (c.layers, c.bidirectional, c.T, c.H, c.B, c.I))


def _cpu_targets() -> list[Config]:
    # The shapes of the CPU-performance issue, in its order.
    return [
        Config(1000, 1, 32, 64),
        Config(500, 4, 16, 32),
        Config(200, 8, 64, 128),
        Config(100, 32, 128, 256),
        Config(100, 16, 64, 128, 2, True),
        Config(50, 128, 512, 512),
    ]


def _gpu() -> list[Config]:
    return [
        Config(t, b, h, h)
        for t, h, b in itertools.product((100, 1000), (128, 512, 1024), (1, 16, 64, 256))
    ]


def _gpu_persistent() -> list[Config]:
    return [Config(1000, b, h, h) for h in (256, 512, 1024) for b in (1, 4, 16, 64, 256)]


def _tiny() -> list[Config]:
    return [Config(8, 2, 4, 8), Config(6, 3, 5, 4, 2, True)]


SETS = {
    "quick": _quick,
    "full": _full,
    "cpu-targets": _cpu_targets,
    "gpu": _gpu,
    "gpu-persistent": _gpu_persistent,
    "tiny": _tiny,
}

SET_DOCS = {
    "quick": "H sweep 32..256 at B=16 and B sweep 1..64 at H=128 (T=100), plus 2-layer bi; ~2 min on 2 cores",
    "full": "wider H (to 1024), B (to 256), T (10, 1000), layers and bidirectional sweeps",
    "cpu-targets": "the six shapes of the CPU-performance issue",
    "gpu": "B in {1,16,64,256} x H in {128,512,1024} x T in {100,1000}, I=H, 1 layer",
    "gpu-persistent": "the persistent-kernel targets: T=1000, B in {1,4,16,64,256} x H in {256,512,1024}, I=H",
    "tiny": "two toy shapes (smoke tests)",
}


def get_set(name: str) -> list[Config]:
    try:
        return SETS[name]()
    except KeyError:
        raise ValueError(f"unknown configuration set {name!r}; choose from {sorted(SETS)}") from None


_TRUE = {"1", "yes", "y", "true", "bi", "bidirectional"}
_FALSE = {"0", "no", "n", "false", "uni", "unidirectional"}


def parse_config(text: str) -> Config:
    """'T,B,I,H[,layers[,bidirectional]]', e.g. '100,16,64,128,2,yes'."""
    parts = [p.strip() for p in text.replace("x", ",").split(",") if p.strip()]
    if not 4 <= len(parts) <= 6:
        raise ValueError(f"config {text!r}: expected T,B,I,H[,layers[,bidirectional]]")
    try:
        T, B, I, H = (int(p) for p in parts[:4])  # noqa: E741
        layers = int(parts[4]) if len(parts) > 4 else 1
    except ValueError:
        raise ValueError(f"config {text!r}: T, B, I, H and layers must be integers") from None
    bi = False
    if len(parts) > 5:
        flag = parts[5].lower()
        if flag not in _TRUE | _FALSE:
            raise ValueError(f"config {text!r}: bidirectional must be yes/no, got {parts[5]!r}")
        bi = flag in _TRUE
    if min(T, B, I, H, layers) < 1:
        raise ValueError(f"config {text!r}: all sizes must be >= 1")
    return Config(T, B, I, H, layers, bi)
