"""rnnfast modules under torch.nn.parallel.DistributedDataParallel (CPU, gloo).

Specification: two processes, each holding half of a batch, train a model wrapped in
DDP; their averaged gradients, and the parameters after a few SGD steps, equal those of
a single process training on the combined batch. Two models: rnnfast.RNN +
rnnfast.RNNCell ("rnn"), and rnnfast.LSTM (with proj_size) + rnnfast.GRU +
rnnfast.LSTMCell + rnnfast.GRUCell ("gated": every gated class in one model, so one
pair of worker processes covers them all). The model's forward calls
``flatten_parameters()`` first (the DataParallel idiom), which must be accepted.

The workers are this file run as a script (``python test_ddp.py RANK WORLD INIT OUT KIND``),
so the model and the data are the same functions in both places.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import rnnfast

WORLD = 2
BATCH = 4  # combined; each rank gets BATCH // WORLD
STEPS = 3
LR = 0.5


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = rnnfast.RNN(3, 5, 2, batch_first=True, bidirectional=True)
        self.cell = rnnfast.RNNCell(10, 4, nonlinearity="relu")
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        self.rnn.flatten_parameters()  # DataParallel idiom: must be a harmless no-op
        out, h_n = self.rnn(x)
        h = None
        for t in range(out.shape[1]):
            h = self.cell(out[:, t], h)
        return self.head(h) + h_n.mean(0)[:, :2]


class GatedModel(nn.Module):
    def __init__(self):
        super().__init__()
        # LSTM output is D*P = 6 wide; h_n is P = 3 wide, c_n H = 5 wide.
        self.rnn = rnnfast.LSTM(3, 5, 2, batch_first=True, bidirectional=True, proj_size=3)
        self.gru = rnnfast.GRU(6, 4, batch_first=True)
        self.cell = rnnfast.LSTMCell(4, 4)
        self.gru_cell = rnnfast.GRUCell(4, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        self.rnn.flatten_parameters()  # DataParallel idiom: must be a harmless no-op
        self.gru.flatten_parameters()
        out, (h_n, c_n) = self.rnn(x)
        out, g_n = self.gru(out)
        state = g = None
        for t in range(out.shape[1]):
            state = self.cell(out[:, t], state)
            g = self.gru_cell(state[0], g)
        return (self.head(g) + h_n.mean(0)[:, :2] + c_n.mean(0)[:, :2] + g_n.mean(0)[:, :2]
                + state[1][:, :2])


MODELS = {"rnn": Model, "gated": GatedModel}


def make_model(kind="rnn"):
    torch.manual_seed(0)
    return MODELS[kind]().double()


def batch(step):
    gen = torch.Generator().manual_seed(100 + step)
    x = torch.randn(BATCH, 6, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(BATCH, 2, generator=gen, dtype=torch.float64)
    return x, y


def train(model, rank=0, world=1):
    """STEPS of SGD on this rank's share of each batch; returns the first step's grads."""
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    first_grads = None
    for step in range(STEPS):
        x, y = batch(step)
        share = BATCH // world
        x, y = x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        if first_grads is None:
            first_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
    return first_grads


def _worker(rank, world, init_file, out_file, kind):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        ddp = DDP(make_model(kind))
        grads = train(ddp, rank, world)
        grads = {n.removeprefix("module."): g for n, g in grads.items()}
        params = {n: p.detach() for n, p in ddp.module.named_parameters()}
        torch.save({"grads": grads, "params": params}, out_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("kind", list(MODELS))
def test_ddp_two_processes_match_one_process_on_the_combined_batch(tmp_path, kind):
    init_file = tmp_path / "init"
    outs = [tmp_path / f"rank{r}.pt" for r in range(WORLD)]
    repo = Path(rnnfast.__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(repo)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env["OMP_NUM_THREADS"] = "1"
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(r), str(WORLD), str(init_file), str(outs[r]), kind],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for r in range(WORLD)
    ]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=120)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)

    single = make_model(kind)
    expected_grads = train(single)
    expected_params = dict(single.named_parameters())
    results = [torch.load(o, weights_only=True) for o in outs]
    for res in results:
        assert res["grads"].keys() == expected_grads.keys()
        for name, g in expected_grads.items():
            assert g.abs().sum() > 0, name  # every parameter takes part
            torch.testing.assert_close(res["grads"][name], g, atol=1e-12, rtol=0)
        for name, p in expected_params.items():
            torch.testing.assert_close(res["params"][name], p.detach(), atol=1e-12, rtol=0)
    # And training really moved the parameters away from the initial ones.
    assert not torch.allclose(results[0]["params"]["rnn.weight_hh_l1"],
                              make_model(kind).rnn.weight_hh_l1)


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
