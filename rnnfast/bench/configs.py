"""Benchmark configurations: one cell and shape per Config, grouped into named sets.

Shape letters follow torch.nn.RNN: T (sequence length L), B (batch N), I (H_in),
H (hidden), layers, bidirectional (D = 2); P is LSTM's proj_size (0: no projection).
A set holds shapes only (cell "rnn"); the CLI crosses it with the cells asked for.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import asdict, dataclass

__all__ = ["Config", "CELLS", "CELL_CLASSES", "CELL_GATES", "parse_cells", "with_cells", "SETS",
           "SET_DOCS", "get_set", "parse_config", "forward_flops"]

# The benchmarked cells: the name of the module class (torch.nn.X against rnnfast.X) and
# G, the gates per hidden unit (rows of w_ih / w_hh = G*H). "rnn" is the tanh Elman cell.
CELLS = ("rnn", "lstm", "gru")
CELL_CLASSES = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
CELL_GATES = {"rnn": 1, "lstm": 4, "gru": 3}


@dataclass(frozen=True, order=True)
class Config:
    T: int
    B: int
    I: int  # noqa: E741 - the nn.RNN letter
    H: int
    layers: int = 1
    bidirectional: bool = False
    cell: str = "rnn"
    proj_size: int = 0  # LSTM only
    # PackedSequence input: B sequences of random lengths in [ceil(T/2), T] (one of T),
    # unsorted (enforce_sorted=False), as the CLI's --packed asks.
    packed: bool = False

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; expected one of {list(CELLS)}")
        if self.proj_size and self.cell != "lstm":
            raise ValueError(f"proj_size is an LSTM option; got proj_size={self.proj_size} "
                             f"for cell {self.cell!r}")
        if not 0 <= self.proj_size < self.H:
            raise ValueError(f"proj_size must be >= 0 and smaller than H={self.H}, "
                             f"got {self.proj_size}")

    @property
    def D(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def G(self) -> int:
        return CELL_GATES[self.cell]

    @property
    def P(self) -> int:
        """Size of h (the output features per direction): proj_size, else H."""
        return self.proj_size or self.H

    @property
    def cls_name(self) -> str:
        return CELL_CLASSES[self.cell]

    @property
    def shape_label(self) -> str:
        bi = "bi" if self.bidirectional else "uni"
        proj = f" P={self.proj_size}" if self.proj_size else ""
        packed = " packed" if self.packed else ""
        return f"T={self.T} B={self.B} I={self.I} H={self.H}{proj} L={self.layers} {bi}{packed}"

    @property
    def label(self) -> str:
        return f"{self.cls_name} {self.shape_label}"

    @property
    def slug(self) -> str:
        bi = "bi" if self.bidirectional else "uni"
        proj = f"-P{self.proj_size}" if self.proj_size else ""
        packed = "-packed" if self.packed else ""
        return (f"{self.cell}-T{self.T}-B{self.B}-I{self.I}-H{self.H}{proj}-L{self.layers}-{bi}"
                f"{packed}")

    @property
    def tokens(self) -> int:
        """Sequence elements per call (T * B)."""
        return self.T * self.B

    def flops(self) -> int:
        return forward_flops(self)

    def as_dict(self) -> dict:
        return asdict(self)


def forward_flops(cfg: Config) -> int:
    """Multiply-add FLOPs of one forward, per layer and direction:
    2*T*B*(I_l*G*H + P*G*H), plus 2*T*B*H*P for LSTM's projection h = m @ w_hr^T.
    For packed input T*B counts the padded sequence: an upper bound.

    I_l is I for the first layer and D*P above it. Pointwise work (bias, gate
    activations, c and h updates) is not counted. A forward+backward is about 3x this
    (the backward has two GEMMs per GEMM).
    """
    G, H, P = cfg.G, cfg.H, cfg.P
    total = 0
    for layer in range(cfg.layers):
        i_l = cfg.I if layer == 0 else cfg.D * P
        per_step = i_l * G * H + P * G * H + (H * P if cfg.proj_size else 0)
        total += cfg.D * 2 * cfg.T * cfg.B * per_step
    return total


def parse_cells(text: str) -> list[str]:
    """'rnn', 'lstm', 'gru', a comma list of them, or 'all' -> the cells, in CELLS order."""
    items = [t.strip().lower() for t in text.split(",") if t.strip()]
    if items == ["all"]:
        return list(CELLS)
    bad = [t for t in items if t not in CELLS]
    if bad or not items:
        raise ValueError(f"expected rnn, lstm, gru, a comma list of them, or all; got {text!r}")
    return [c for c in CELLS if c in items]


def with_cells(configs: list[Config], cells: list[str]) -> list[Config]:
    """Every config once per cell, cell-major (all rnn rows, then lstm, then gru), so each
    cell's rows stay together in the tables."""
    for c in configs:
        for cell in cells:
            if c.proj_size and cell != "lstm":
                raise ValueError(f"config {c.shape_label}: proj_size={c.proj_size} is an LSTM option, "
                                 f"but cell {cell!r} was asked for (use --cell lstm)")
    return [dataclasses.replace(c, cell=cell) for cell in cells for c in configs]


def _quick() -> list[Config]:
    # A hidden-size sweep and a batch sweep that meet at (T=100, B=16, H=128), plus one
    # stacked bidirectional model: enough for both plots; about 2 minutes for the RNN
    # cell on 2 cores (LSTM and GRU take longer).
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
    # The shapes of the CPU-performance issue, in its order (T, B, I, H, layers, bidirectional).
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
    "quick": "H sweep 32..256 at B=16 and B sweep 1..64 at H=128 (T=100), plus 2-layer bi",
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
    """'T,B,I,H[,layers[,bidirectional[,proj_size]]]', e.g. '100,16,64,128,2,yes'.
    The cell is left "rnn" (with_cells sets it); a proj_size > 0 is for LSTM only."""
    parts = [p.strip() for p in text.replace("x", ",").split(",") if p.strip()]
    if not 4 <= len(parts) <= 7:
        raise ValueError(f"config {text!r}: expected T,B,I,H[,layers[,bidirectional[,proj_size]]]")
    try:
        T, B, I, H = (int(p) for p in parts[:4])  # noqa: E741
        layers = int(parts[4]) if len(parts) > 4 else 1
        proj_size = int(parts[6]) if len(parts) > 6 else 0
    except ValueError:
        raise ValueError(f"config {text!r}: T, B, I, H, layers and proj_size must be integers") from None
    bi = False
    if len(parts) > 5:
        flag = parts[5].lower()
        if flag not in _TRUE | _FALSE:
            raise ValueError(f"config {text!r}: bidirectional must be yes/no, got {parts[5]!r}")
        bi = flag in _TRUE
    if min(T, B, I, H, layers) < 1:
        raise ValueError(f"config {text!r}: all sizes must be >= 1")
    if not 0 <= proj_size < H:
        raise ValueError(f"config {text!r}: proj_size must be >= 0 and smaller than H")
    # Built as an LSTM when projected, so that Config's own check passes; with_cells
    # decides the cell, and the CLI refuses a projection for any other cell.
    return Config(T, B, I, H, layers, bi, "lstm" if proj_size else "rnn", proj_size)
