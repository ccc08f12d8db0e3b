"""Sequence-to-sequence regression with an RNN: rnnfast.RNN as a drop-in for nn.RNN.

Each sequence is a sine wave with a random frequency and phase; at every step the model
sees sin(w*t + phi) (plus a little noise) and must output cos(w*t + phi), which needs
the frequency and phase it has to infer from the past. Model: RNN(1 -> 32, tanh,
time-major) with a Linear head on every step; loss: MSE over all steps.

    python examples/timeseries_regression.py --backend rnnfast
    python examples/timeseries_regression.py --backend torch --epochs 20 --seed 3
    python examples/timeseries_regression.py --backend both   # both backends, same seed,
                                                              # epochs interleaved: losses
                                                              # side by side and the speedup

With the same seed both backends start from identical weights (rnnfast.RNN draws its
initialisation exactly as nn.RNN does) and see identical batches, so their losses
agree to float rounding. RNN training is chaotic, though: over many epochs any rounding
difference grows. --backend both therefore also trains torch with one weight moved by
one ulp and accepts rnnfast's drift from torch up to 10x that run's drift (at least 1e-5).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch
from torch import nn

from rnnfast.bench.training import PERTURBED, compare, nudge_one_weight, rnn_class


def make_waves(n: int, seq_len: int, seed: int, noise: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """inputs and targets, both (seq_len, n, 1) (time-major, as nn.RNN's default)."""
    g = torch.Generator().manual_seed(seed)
    w = 0.1 + 0.4 * torch.rand(1, n, 1, generator=g)  # radians per step
    phi = 2 * math.pi * torch.rand(1, n, 1, generator=g)
    t = torch.arange(seq_len, dtype=torch.float32).view(seq_len, 1, 1)
    angle = w * t + phi
    x = torch.sin(angle) + noise * torch.randn(seq_len, n, 1, generator=g)
    return x, torch.cos(angle)


class Regressor(nn.Module):
    def __init__(self, rnn_cls, hidden: int = 32, layers: int = 1):
        super().__init__()
        self.rnn = rnn_cls(1, hidden, layers)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)  # (L, N, H)
        return self.head(out)  # (L, N, 1)


class Trainer:
    """Data, model and optimizer of one backend; epoch() trains one epoch."""

    def __init__(self, backend: str, *, seed: int = 0, samples: int = 512, seq_len: int = 100,
                 hidden: int = 32, layers: int = 1, batch: int = 32, lr: float = 0.1):
        self.backend, self.samples, self.batch = backend, samples, batch
        self.x, self.y = make_waves(samples, seq_len, seed)
        torch.manual_seed(seed)
        self.model = Regressor(rnn_class(backend), hidden, layers)
        if backend == PERTURBED:
            nudge_one_weight(self.model.rnn)
        # SGD with momentum, not Adam: Adam blows near-zero gradients up to lr-sized
        # steps, which would turn rounding differences between backends into different runs.
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=0.9)
        self.shuffle = torch.Generator().manual_seed(seed + 1)

    def epoch(self) -> tuple[float, float]:
        """Returns (mean training MSE, seconds)."""
        perm = torch.randperm(self.samples, generator=self.shuffle)
        t0 = time.perf_counter()
        total = 0.0
        for i in range(0, self.samples, self.batch):
            idx = perm[i : i + self.batch]
            loss = nn.functional.mse_loss(self.model(self.x[:, idx]), self.y[:, idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            total += loss.item() * len(idx)
        return total / self.samples, time.perf_counter() - t0


def run(backends=("rnnfast",), *, epochs: int = 10, verbose: bool = True, **kw) -> dict:
    """Train each backend for `epochs`; with several backends the epochs are interleaved
    (torch epoch 1, rnnfast epoch 1, torch epoch 2, ...) so machine load hits both alike.
    Returns {backend: {"losses": [...], "epoch_times": [...]}}."""
    trainers = {b: Trainer(b, **kw) for b in backends}
    res = {b: {"losses": [], "epoch_times": []} for b in backends}
    for e in range(epochs):
        for b, tr in trainers.items():
            loss, sec = tr.epoch()
            res[b]["losses"].append(loss)
            res[b]["epoch_times"].append(sec)
            if verbose:
                print(f"[{b:10s}] epoch {e + 1:2d}/{epochs}  mse {loss:.6f}  {sec:.3f} s/epoch", flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="rnnfast", choices=["torch", "rnnfast", "both"],
                   help="RNN implementation; 'both' trains torch and rnnfast (epochs interleaved), "
                   "compares their losses and prints the speedup")
    p.add_argument("--compare", action="store_true", help="same as --backend both")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--seq-len", type=int, default=100)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    both = args.compare or args.backend == "both"
    backends = ["torch", "rnnfast", PERTURBED] if both else [args.backend]
    print(f"sine -> cosine regression: {args.samples} sequences of {args.seq_len} steps, RNN "
          f"{args.layers}x{args.hidden}, batch {args.batch}, seed {args.seed}, "
          f"{torch.get_num_threads()} threads")
    results = run(backends, epochs=args.epochs, seed=args.seed, samples=args.samples,
                  seq_len=args.seq_len, hidden=args.hidden, layers=args.layers,
                  batch=args.batch, lr=args.lr)
    for b, r in results.items():
        if b == PERTURBED:
            continue
        print(f"[{b:10s}] final mse {r['losses'][-1]:.6f} (from {r['losses'][0]:.6f}), "
              f"{statistics.median(r['epoch_times']):.3f} s/epoch (median)")
    if both:
        return 0 if compare(results, metric="mse") else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
