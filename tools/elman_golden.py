"""Bitwise hashes of rnnfast.RNN outputs and gradients over a fixed set of configurations.

A guard for refactors that must not change the Elman cell's arithmetic:

    python tools/elman_golden.py --write /tmp/golden.json   # before
    python tools/elman_golden.py --check /tmp/golden.json   # after: exit 1 on any change

Goes through the module API only, so it runs unchanged across op-schema changes.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys

import torch
from torch import nn

import rnnfast


def _configs():
    shapes = [  # (T, N, I, H, layers, bidirectional)
        (7, 3, 5, 16, 1, False),
        (9, 4, 8, 64, 2, True),
        (6, 2, 3, 100, 2, False),
        (5, 33, 17, 40, 3, True),
    ]
    for (shape, dtype, nl, packed, threads) in itertools.product(
            shapes, (torch.float32, torch.float64, torch.bfloat16), ("tanh", "relu"),
            (False, True), (1, 2)):
        if dtype == torch.float64 and threads == 2:
            continue
        yield dict(shape=shape, dtype=dtype, nonlinearity=nl, packed=packed, threads=threads)


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def run(cfg) -> str:
    T, N, I, H, L, bi = cfg["shape"]
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(1234)
    m = rnnfast.RNN(I, H, L, nonlinearity=cfg["nonlinearity"], bidirectional=bi,
                    dtype=cfg["dtype"])
    D = 2 if bi else 1
    x = torch.randn(T, N, I, dtype=cfg["dtype"], requires_grad=True)
    h0 = torch.randn(L * D, N, H, dtype=cfg["dtype"], requires_grad=True)
    if cfg["packed"]:
        lengths = torch.randint(1, T + 1, (N,))
        lengths[0] = T
        inp = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, hn = m(inp, h0)
        out = out.data
    else:
        out, hn = m(x, h0)
    go, gh = torch.randn_like(out), torch.randn_like(hn)
    grads = torch.autograd.grad((out, hn), [x, h0, *m.parameters()], (go, gh))
    return _digest([out, hn, *grads])


def main() -> int:
    p = argparse.ArgumentParser()
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--write")
    g.add_argument("--check")
    a = p.parse_args()
    results = {json.dumps({k: str(v) for k, v in c.items()}): run(c) for c in _configs()}
    if a.write:
        with open(a.write, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {len(results)} hashes to {a.write}")
        return 0
    with open(a.check) as f:
        golden = json.load(f)
    bad = [k for k in golden if results.get(k) != golden[k]]
    print(f"{len(golden) - len(bad)} of {len(golden)} configurations bitwise unchanged")
    for k in bad:
        print("CHANGED", k)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
