"""Many-to-one text classification with an RNN: rnnfast.RNN as a drop-in for nn.RNN.

A synthetic "sentiment" corpus is generated here: token sequences over a small
vocabulary in which a few words are positive and a few negative; the label is 1 when
a sequence has more positive than negative words. The model is
Embedding -> multi-layer RNN (batch_first) -> Linear on the last step, trained with
cross-entropy.

    python examples/text_classifier.py --backend rnnfast
    python examples/text_classifier.py --backend torch --epochs 8 --seed 1
    python examples/text_classifier.py --backend both   # both backends, same seed, epochs
                                                        # interleaved: losses side by side
                                                        # and the speedup

With the same seed both backends start from identical weights (rnnfast.RNN draws its
initialisation exactly as nn.RNN does) and see identical batches, so their losses
agree to float rounding. RNN training is chaotic, though: over many epochs any rounding
difference grows. --backend both therefore also trains torch with one weight moved by
one ulp and accepts rnnfast's drift from torch up to 10x that run's drift (at least 1e-5).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch import nn

from rnnfast.bench.training import PERTURBED, compare, nudge_one_weight, rnn_class

POSITIVE, NEGATIVE = range(3, 8), range(8, 13)  # token ids; 13 and above are neutral


def make_corpus(n: int, seq_len: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (n, seq_len) int64 and labels (n,) int64 (1: more positive than negative)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(NEGATIVE.stop, vocab, (n, seq_len), generator=g)
    sentiment = torch.rand(n, seq_len, generator=g) < 0.2
    positive = torch.rand(n, seq_len, generator=g) < 0.5
    word = torch.randint(0, len(POSITIVE), (n, seq_len), generator=g)
    tokens = torch.where(sentiment & positive, POSITIVE.start + word, tokens)
    tokens = torch.where(sentiment & ~positive, NEGATIVE.start + word, tokens)

    def counts(t):
        pos = ((t >= POSITIVE.start) & (t < POSITIVE.stop)).sum(1)
        neg = ((t >= NEGATIVE.start) & (t < NEGATIVE.stop)).sum(1)
        return pos, neg

    pos, neg = counts(tokens)
    # Break ties by flipping the last word's sentiment (or giving it one).
    tie = pos == neg
    last = tokens[:, -1]
    last_pos = (last >= POSITIVE.start) & (last < POSITIVE.stop)
    tokens[:, -1] = torch.where(tie & last_pos, NEGATIVE.start, torch.where(tie, POSITIVE.start, last))
    pos, neg = counts(tokens)
    assert bool((pos != neg).all())
    return tokens, (pos > neg).long()


class Classifier(nn.Module):
    def __init__(self, rnn_cls, vocab: int, embed: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.rnn = rnn_cls(embed, hidden, layers, batch_first=True, dropout=dropout)
        self.head = nn.Linear(hidden, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(tokens))  # (N, L, H)
        return self.head(out[:, -1])


class Trainer:
    """Data, model and optimizer of one backend; epoch() trains one epoch."""

    def __init__(self, backend: str, *, seed: int = 0, samples: int = 1024, seq_len: int = 30,
                 vocab: int = 40, embed: int = 32, hidden: int = 64, layers: int = 2,
                 batch: int = 64, lr: float = 0.02, dropout: float = 0.0):
        self.backend, self.samples, self.batch = backend, samples, batch
        self.tokens, self.labels = make_corpus(samples, seq_len, vocab, seed)
        torch.manual_seed(seed)
        self.model = Classifier(rnn_class(backend), vocab, embed, hidden, layers, dropout)
        if backend == PERTURBED:
            nudge_one_weight(self.model.rnn)
        # SGD with momentum, not Adam: Adam blows near-zero gradients up to lr-sized
        # steps, which would turn rounding differences between backends into different runs.
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=0.9)
        self.loss_fn = nn.CrossEntropyLoss()
        self.shuffle = torch.Generator().manual_seed(seed + 1)
        # dropout masks come from the global RNG; give each backend the same stream
        self.rng_state = torch.get_rng_state()

    def epoch(self) -> tuple[float, float, float]:
        """Returns (mean training loss, training accuracy, seconds)."""
        self.model.train()
        outer_rng = torch.get_rng_state()
        torch.set_rng_state(self.rng_state)
        perm = torch.randperm(self.samples, generator=self.shuffle)
        t0 = time.perf_counter()
        total, correct = 0.0, 0
        for i in range(0, self.samples, self.batch):
            idx = perm[i : i + self.batch]
            logits = self.model(self.tokens[idx])
            loss = self.loss_fn(logits, self.labels[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            total += loss.item() * len(idx)
            correct += int((logits.argmax(1) == self.labels[idx]).sum())
        seconds = time.perf_counter() - t0
        self.rng_state = torch.get_rng_state()
        torch.set_rng_state(outer_rng)
        return total / self.samples, correct / self.samples, seconds


def run(backends=("rnnfast",), *, epochs: int = 5, verbose: bool = True, **kw) -> dict:
    """Train each backend for `epochs`; with several backends the epochs are interleaved
    (torch epoch 1, rnnfast epoch 1, torch epoch 2, ...) so machine load hits both alike.
    Returns {backend: {"losses": [...], "accuracy": [...], "epoch_times": [...]}}."""
    trainers = {b: Trainer(b, **kw) for b in backends}
    res = {b: {"losses": [], "accuracy": [], "epoch_times": []} for b in backends}
    for e in range(epochs):
        for b, tr in trainers.items():
            loss, acc, sec = tr.epoch()
            res[b]["losses"].append(loss)
            res[b]["accuracy"].append(acc)
            res[b]["epoch_times"].append(sec)
            if verbose:
                print(f"[{b:10s}] epoch {e + 1:2d}/{epochs}  loss {loss:.6f}  acc {acc:.3f}  "
                      f"{sec:.3f} s/epoch", flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="rnnfast", choices=["torch", "rnnfast", "both"],
                   help="RNN implementation; 'both' trains torch and rnnfast (epochs interleaved), "
                   "compares their losses and prints the speedup")
    p.add_argument("--compare", action="store_true", help="same as --backend both")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--samples", type=int, default=1024, help="corpus size")
    p.add_argument("--seq-len", type=int, default=30)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--dropout", type=float, default=0.0, help="between RNN layers")
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    both = args.compare or args.backend == "both"
    backends = ["torch", "rnnfast", PERTURBED] if both else [args.backend]
    print(f"text classifier: {args.samples} sequences of {args.seq_len} tokens, RNN "
          f"{args.layers}x{args.hidden}, batch {args.batch}, seed {args.seed}, "
          f"{torch.get_num_threads()} threads")
    results = run(backends, epochs=args.epochs, seed=args.seed, samples=args.samples,
                  seq_len=args.seq_len, hidden=args.hidden, layers=args.layers,
                  batch=args.batch, lr=args.lr, dropout=args.dropout)
    for b, r in results.items():
        if b == PERTURBED:
            continue
        print(f"[{b:10s}] final loss {r['losses'][-1]:.6f} (from {r['losses'][0]:.6f}), "
              f"accuracy {r['accuracy'][-1]:.3f}, {statistics.median(r['epoch_times']):.3f} "
              "s/epoch (median)")
    if both:
        return 0 if compare(results) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
